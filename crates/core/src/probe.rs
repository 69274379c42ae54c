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
//! - no answer within the connect timeout, or no route to the host: the worker cannot reach the address, and
//!   the probe cannot tell anything.

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
    /// No answer, or no route: the worker cannot reach the address. The text says what failed.
    Unreachable(String),
}

/// What the probe of one port concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// The data plane serves the port.
    Yes,
    /// Connections were refused for the whole grace: the data plane does not serve it.
    No,
    /// The address cannot be reached from the worker: the probe proves nothing, the status stands.
    CannotTell(String),
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
/// and routed as far as the Gateway goes, and whether the task listens yet is the task's business.
pub fn conclude(last: &Reach, elapsed: Duration, grace: Duration) -> Option<Served> {
    match last {
        Reach::Accepted => Some(Served::Yes),
        Reach::Unreachable(why) => Some(Served::CannotTell(why.clone())),
        Reach::Closed if elapsed >= grace => Some(Served::Yes),
        Reach::Refused if elapsed >= grace => Some(Served::No),
        Reach::Closed | Reach::Refused => None,
    }
}

/// The pause before the next attempt on a port, after `attempt` attempts: short first, since envoy binds
/// a listener within a fraction of a second of the controller's update.
pub fn next_pause(attempt: u32) -> Duration {
    Duration::from_millis(25u64.saturating_mul(1 << attempt.min(4))).min(Duration::from_millis(250))
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
                &Reach::Unreachable("timed out".into()),
                Duration::ZERO,
                GRACE
            ),
            Some(Served::CannotTell("timed out".into()))
        );
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
