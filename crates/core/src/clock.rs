//! Time and chance for the deciding code: the real clocks and the thread's random numbers in production, a
//! virtual clock and one seeded generator in the simulator, so that a seed replays the same schedule.
//!
//! Monotonic time is tokio's [`Instant`]: real time unless the runtime's clock is paused, and a paused
//! clock is the simulator's. Wall time and randomness have no such switch, so a simulation installs one on
//! its thread with [`simulate`]; every other thread (and every production thread) sees the real ones.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use tokio::time::Instant;

/// A simulation's wall clock and generator, installed on its thread.
struct Virtual {
    /// The wall time at `base`.
    epoch: SystemTime,
    base: Instant,
    /// splitmix64 state.
    rng: u64,
}

thread_local! {
    static VIRTUAL: RefCell<Option<Virtual>> = const { RefCell::new(None) };
}

/// Keeps the thread's virtual clock installed; dropping it restores the real one.
#[must_use = "the virtual clock is removed when this is dropped"]
pub struct Simulated(());

impl Drop for Simulated {
    fn drop(&mut self) {
        VIRTUAL.with(|v| v.borrow_mut().take());
    }
}

/// Installs on this thread a wall clock that reads `epoch` now and advances with tokio's (paused) clock,
/// and a generator seeded with `seed`. For the simulator: call it inside its single-threaded runtime.
pub fn simulate(epoch: SystemTime, seed: u64) -> Simulated {
    VIRTUAL.with(|v| {
        *v.borrow_mut() = Some(Virtual {
            epoch,
            base: Instant::now(),
            rng: seed,
        });
    });
    Simulated(())
}

/// The monotonic now.
pub fn instant() -> Instant {
    Instant::now()
}

/// The wall-clock now.
pub fn system_now() -> SystemTime {
    VIRTUAL.with(|v| {
        v.borrow()
            .as_ref()
            .map_or_else(SystemTime::now, |v| v.epoch + (Instant::now() - v.base))
    })
}

/// The wall-clock now in unix seconds, as records and claims keep it.
pub fn unix_secs() -> i64 {
    system_now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A random number: the port search's start, a jitter's seed.
pub fn random_u64() -> u64 {
    VIRTUAL.with(|v| match v.borrow_mut().as_mut() {
        Some(v) => splitmix(&mut v.rng),
        None => fallback(),
    })
}

/// A random number below 2^32.
pub fn random_u32() -> u32 {
    u32::try_from(random_u64() >> 32).unwrap_or(0)
}

/// One step of splitmix64: small, and good enough to spread ports and jitter.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Outside a simulation: the hasher's per-process random keys, mixed with the time and a counter, so two
/// calls in one nanosecond still differ. No dependency of its own for a number that only spreads load.
fn fallback() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos(),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_generator_repeats_and_the_real_one_varies() {
        let draw = |seed| {
            let _g = simulate(UNIX_EPOCH, seed);
            (random_u64(), random_u64())
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert_ne!(random_u64(), random_u64(), "outside a simulation");
    }

    #[test]
    fn the_virtual_wall_clock_starts_at_its_epoch_and_is_removed_on_drop() {
        let epoch = UNIX_EPOCH + Duration::from_secs(1_000);
        {
            let _g = simulate(epoch, 1);
            assert!(system_now() >= epoch && system_now() < epoch + Duration::from_secs(5));
            assert!(unix_secs() >= 1_000 && unix_secs() < 1_005);
        }
        assert!(unix_secs() > 1_600_000_000, "the real clock again");
    }
}
