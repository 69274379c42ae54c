//! Whether the data plane serves a port: the controller's status is its opinion, a connection is proof.
//! Both Contour and Envoy Gateway report a listener `Programmed` that their envoy never bound (envoy down,
//! or the port taken on its host), so `ready` waits for a connection to the address it reports.
//!
//! The seam is [`DataPlane`] (one connection attempt); what a series of attempts means is [`conclude`].
//! What a connect can tell, as both controllers' envoys behave:
//! - refused: nothing listens on the port (no listener bound, or no envoy at all);
//! - accepted, then closed at once: a listener is bound, but it has no route yet, or the route's backend
//!   does not answer (the task may not listen yet);
//! - accepted and kept open: routed; envoy holds the connection while it reaches the backend;
//! - no answer within the connect timeout: this port is silent (a dropped SYN, a firewall on the port) or
//!   the whole address is; it is tried again through the grace, and the address counts as unreachable only
//!   when several ports are silent and none answers ([`Silence`]);
//! - no route to the host: the worker cannot reach the address, and the probe cannot tell anything;
//! - the worker's own host fails the attempt (out of file descriptors or local ports): that says nothing
//!   of the Gateway, and is tried again through the grace.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// What one connection attempt to `address:port` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Accepted, and still open (or sending) after a short settle.
    Accepted,
    /// Accepted, then closed or reset within the settle.
    Closed,
    /// Refused: nothing listens there.
    Refused,
    /// No answer within the connect timeout, from this port at least. The text says what failed.
    Silent(String),
    /// No route to the address: the worker cannot reach the Gateway. The text says what failed.
    Unreachable(String),
    /// The worker's own host failed the attempt (`EMFILE`, `EADDRNOTAVAIL`...): nothing is known of the
    /// Gateway. The text says what failed.
    Local(String),
}

/// What the probe of one port concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// The data plane serves the port.
    Yes,
    /// Connections were refused for the whole grace: the data plane does not serve it.
    No,
    /// The probe proves nothing, the status stands: `why`, and what failed.
    CannotTell { why: String, cause: Blind },
}

/// Why a probe could tell nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blind {
    /// No route to the Gateway's address.
    NoRoute,
    /// This port gave no answer through the grace.
    Silent,
    /// The worker's own host kept failing the attempt.
    Local,
}

/// One connection attempt, the seam the worker probes through.
pub trait DataPlane: Send + Sync + 'static {
    /// Connects to `host:port` within `timeout` and says what it saw.
    fn connect<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Reach> + Send + 'a>>;
}

/// What the attempts so far on one port mean, `elapsed` after the first; `None` to try again.
///
/// A refusal is given the grace because a controller reports a listener programmed a moment before its
/// envoy binds it. A listener that accepts and closes at once past the grace is served: the port is bound
/// and routed as far as the Gateway goes, and whether the task listens yet is the task's business. A silent
/// port and the worker's own failures are tried through the grace too: one lost SYN or one moment out of
/// file descriptors proves nothing.
pub fn conclude(last: &Reach, elapsed: Duration, grace: Duration) -> Option<Served> {
    let past = elapsed >= grace;
    match last {
        Reach::Accepted => Some(Served::Yes),
        Reach::Unreachable(why) => Some(Served::CannotTell {
            why: why.clone(),
            cause: Blind::NoRoute,
        }),
        Reach::Silent(why) if past => Some(Served::CannotTell {
            why: why.clone(),
            cause: Blind::Silent,
        }),
        Reach::Local(why) if past => Some(Served::CannotTell {
            why: why.clone(),
            cause: Blind::Local,
        }),
        Reach::Closed if past => Some(Served::Yes),
        Reach::Refused if past => Some(Served::No),
        Reach::Closed | Reach::Refused | Reach::Silent(_) | Reach::Local(_) => None,
    }
}

/// Distinct silent ports, with no port answering in between, after which a Gateway's address counts as
/// unreachable: one port's silence is that port's (a firewall rule, a lost SYN), not the address's.
pub const SILENT_PORTS_FOR_UNREACHABLE: usize = 3;

/// What the probe has lately heard from one Gateway's address: the ports that were silent since any port
/// last answered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Silence {
    ports: std::collections::BTreeSet<u16>,
}

impl Silence {
    /// Takes in what the probe of `port` concluded; `true` when the address now counts as unreachable.
    pub fn note(&mut self, port: u16, served: &Served) -> bool {
        match served {
            Served::Yes | Served::No => {
                self.ports.clear();
                false
            }
            Served::CannotTell {
                cause: Blind::NoRoute,
                ..
            } => true,
            Served::CannotTell {
                cause: Blind::Silent,
                ..
            } => {
                self.ports.insert(port);
                self.ports.len() >= SILENT_PORTS_FOR_UNREACHABLE
            }
            Served::CannotTell {
                cause: Blind::Local,
                ..
            } => false,
        }
    }
}

/// The pause before the next attempt on a port, after `attempt` attempts: short first, since envoy binds
/// a listener within a fraction of a second of the controller's update.
pub fn next_pause(attempt: u32) -> Duration {
    Duration::from_millis(25u64.saturating_mul(1 << attempt.min(4))).min(Duration::from_millis(250))
}

/// Whether a connect's OS error is the worker's own shortage (file descriptors, local ports, buffers,
/// memory), which says nothing of the address it connects to.
pub fn is_local_errno(errno: i32) -> bool {
    [
        libc::EMFILE,
        libc::ENFILE,
        libc::EADDRNOTAVAIL,
        libc::EADDRINUSE,
        libc::ENOBUFS,
        libc::ENOMEM,
    ]
    .contains(&errno)
}

/// `host:port` for a connect: an IPv6 literal in brackets.
pub fn socket_address(host: &str, port: u16) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(3);

    #[test]
    fn an_accepted_connection_is_served_at_once() {
        assert_eq!(
            conclude(&Reach::Accepted, Duration::ZERO, GRACE),
            Some(Served::Yes)
        );
    }

    #[test]
    fn a_refusal_is_retried_through_the_grace_then_not_served() {
        assert_eq!(
            conclude(&Reach::Refused, Duration::from_millis(500), GRACE),
            None
        );
        assert_eq!(conclude(&Reach::Refused, GRACE, GRACE), Some(Served::No));
    }

    #[test]
    fn a_listener_that_closes_at_once_is_waited_on_then_served() {
        assert_eq!(
            conclude(&Reach::Closed, Duration::from_secs(1), GRACE),
            None
        );
        assert_eq!(
            conclude(&Reach::Closed, GRACE + Duration::from_secs(1), GRACE),
            Some(Served::Yes)
        );
    }

    #[test]
    fn an_unreachable_address_proves_nothing() {
        assert_eq!(
            conclude(
                &Reach::Unreachable("no route".into()),
                Duration::ZERO,
                GRACE
            ),
            Some(Served::CannotTell {
                why: "no route".into(),
                cause: Blind::NoRoute
            })
        );
    }

    #[test]
    fn a_silent_port_or_a_local_failure_is_tried_through_the_grace() {
        for r in [Reach::Silent("t".into()), Reach::Local("EMFILE".into())] {
            assert_eq!(conclude(&r, Duration::from_secs(1), GRACE), None, "{r:?}");
            assert!(matches!(
                conclude(&r, GRACE, GRACE),
                Some(Served::CannotTell { .. })
            ));
        }
    }

    #[test]
    fn an_address_is_unreachable_after_several_silent_ports_with_no_answer_between() {
        let silent = |p: u16| Served::CannotTell {
            why: format!("no answer from {p}"),
            cause: Blind::Silent,
        };
        let local = Served::CannotTell {
            why: "EMFILE".into(),
            cause: Blind::Local,
        };
        let mut s = Silence::default();
        assert!(!s.note(40001, &silent(40001)));
        assert!(!s.note(40001, &silent(40001)), "the same port again");
        assert!(!s.note(40002, &local), "the worker's own failure");
        assert!(!s.note(40002, &silent(40002)));
        assert!(!s.note(40003, &Served::No), "a refusal is an answer");
        assert!(!s.note(40004, &silent(40004)));
        assert!(!s.note(40005, &silent(40005)));
        assert!(s.note(40006, &silent(40006)));
        let no_route = Served::CannotTell {
            why: "no route".into(),
            cause: Blind::NoRoute,
        };
        assert!(Silence::default().note(40001, &no_route));
    }

    #[test]
    fn pauses_grow_to_a_quarter_second() {
        assert_eq!(next_pause(0), Duration::from_millis(25));
        assert_eq!(next_pause(2), Duration::from_millis(100));
        assert_eq!(next_pause(10), Duration::from_millis(250));
    }

    #[test]
    fn ipv6_literals_are_bracketed() {
        assert_eq!(socket_address("::1", 80), "[::1]:80");
        assert_eq!(socket_address("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(socket_address("gw.example", 80), "gw.example:80");
    }
}
