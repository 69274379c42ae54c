//! Crash points for the fault tests. A worker started with `ITG_CRASH_AT=<point>` kills itself with
//! SIGKILL the moment it reaches that point, so a test can stop it between any two steps of an exposure or
//! a removal and prove that a restart, or another worker, finishes the job. Unset, as in production, a
//! point costs one comparison.

use std::sync::OnceLock;

/// Every point, in the order an exposure and then a removal reach them.
pub const POINTS: &[&str] = &[
    "started.record_created",
    "expose.ports_recorded",
    "expose.port_claimed",
    "expose.service_applied",
    "expose.listener_applied",
    "expose.route_applied",
    "expose.ready_recorded",
    "reply.ready_published",
    "ended.ending_recorded",
    "withdraw.route_deleted",
    "withdraw.listener_removed",
    "withdraw.service_deleted",
    "withdraw.port_released",
    "cleanup.record_cleaned",
    "reply.removed_published",
];

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("ITG_CRASH_AT").ok().filter(|p| !p.is_empty()))
        .as_deref()
}

/// `ITG_CRASH_AT` names a point that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("ITG_CRASH_AT={0:?} is not a crash point; unset it, or use one of: {points}", points = POINTS.join(", "))]
pub struct UnknownPoint(String);

/// Refuses an `ITG_CRASH_AT` that names no point, so a misspelt fault test fails instead of passing.
///
/// # Errors
/// [`UnknownPoint`] naming the value and the points there are.
pub fn check() -> Result<(), UnknownPoint> {
    match armed() {
        Some(p) if !POINTS.contains(&p) => Err(UnknownPoint(p.to_owned())),
        _ => Ok(()),
    }
}

/// Dies here, at once and without any cleanup, if this is the armed point.
pub fn reach(point: &'static str) {
    debug_assert!(POINTS.contains(&point), "unknown crash point {point}");
    if armed() == Some(point) {
        eprintln!("crash point {point} reached: killing this process");
        // SAFETY: kill(2) on our own pid with a constant signal touches no memory.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_unique_and_dotted() {
        let mut seen = std::collections::BTreeSet::new();
        for p in POINTS {
            assert!(seen.insert(p), "{p} listed twice");
            assert!(
                p.split_once('.')
                    .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty()),
                "{p}"
            );
        }
    }
}
