//! What the consumer does with one delivery once it is served: acknowledge it, give it back with a delay,
//! or give up on it. Pure, so the consumer loop and the simulator take the same decision.

use std::time::Duration;

use backon::BackoffBuilder;

use crate::clock;
use crate::config::WorkerConfig;
use crate::contract::EventKind;

/// Why the consumer gave up on an event's last delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// The handler could not serve it (it asked for a retry, or ran past its deadline).
    Unserved,
    /// The handler answered, and the answer could not be stored.
    AnswerLost,
}

/// How one delivery went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served<'a> {
    /// The handler answered; `stored` says whether the reply was stored, or why not.
    Answered { stored: Result<(), &'a str> },
    /// The handler answered `ready`, it was stored, and the allocation's record could not note that: given
    /// back so that a redelivery notes it (the reply is stored once), acknowledged on the last delivery.
    StoredUnnoted,
    /// The handler had nothing to answer.
    Done,
    /// The handler asked for a retry.
    Retry { why: &'a str },
    /// The handler left the event for a newer worker: retried, and never given up on.
    Defer { why: &'a str },
    /// The handler ran past `worker.kubernetes_deadline`.
    Overran,
}

/// What the consumer does next with the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Acknowledge: answered and stored, or nothing to answer.
    Ack,
    /// Give it back, to come again after the delay.
    Nak(Duration),
    /// The last delivery of an `ended` (giving up would leak) or of an event left for a newer worker:
    /// queue it again as a new message.
    Requeue { why: String },
    /// The last delivery of any other event: keep it as a dead letter; a started is then answered by the
    /// handler's give-up path with this cause.
    GiveUp { cause: GaveUp, why: String },
}

/// The consumer's maximum deliveries, and whether a delivery is the last JetStream makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deliveries {
    /// The consumer's maximum deliveries; -1 for unlimited.
    pub max_deliver: i64,
}

impl Deliveries {
    /// Whether JetStream will not deliver an event again after this delivery.
    pub fn last(&self, delivered: i64) -> bool {
        self.max_deliver > 0 && delivered >= self.max_deliver
    }
}

/// What to do with the `delivered`-th delivery of an event of `kind` that was served as `served`.
pub fn next(
    kind: EventKind,
    served: Served<'_>,
    delivered: i64,
    deliveries: Deliveries,
    timing: &WorkerConfig,
) -> Next {
    let (cause, why) = match served {
        Served::Answered { stored: Ok(()) } | Served::Done => return Next::Ack,
        Served::StoredUnnoted if deliveries.last(delivered) => return Next::Ack,
        Served::StoredUnnoted => return Next::Nak(redelivery_delay(timing, delivered)),
        Served::Answered { stored: Err(e) } => (
            GaveUp::AnswerLost,
            format!("the reply could not be stored: {e}"),
        ),
        Served::Retry { why } => (GaveUp::Unserved, why.to_owned()),
        Served::Defer { why } if deliveries.last(delivered) => {
            return Next::Requeue {
                why: why.to_owned(),
            };
        }
        Served::Defer { why } => (GaveUp::Unserved, why.to_owned()),
        Served::Overran => (
            GaveUp::Unserved,
            format!(
                "not served within worker.kubernetes_deadline ({:?})",
                timing.kubernetes_deadline.0
            ),
        ),
    };
    if !deliveries.last(delivered) {
        return Next::Nak(redelivery_delay(timing, delivered));
    }
    if kind == EventKind::Ended {
        Next::Requeue { why }
    } else {
        Next::GiveUp { cause, why }
    }
}

/// How long to wait before the `delivered`-th redelivery: exponential between the configured bounds, with
/// jitter so a crowd of waiting events does not come back at once.
pub fn redelivery_delay(timing: &WorkerConfig, delivered: i64) -> Duration {
    let n = usize::try_from(delivered.max(1) - 1).unwrap_or(0).min(32);
    timing
        .redelivery_backoff()
        .with_jitter()
        .with_jitter_seed(clock::random_u64())
        .build()
        .nth(n)
        .unwrap_or(timing.retry_max.0)
        .min(timing.retry_max.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> WorkerConfig {
        WorkerConfig::default()
    }

    const FIVE: Deliveries = Deliveries { max_deliver: 5 };

    #[test]
    fn a_stored_answer_or_nothing_to_answer_is_acknowledged() {
        for served in [Served::Answered { stored: Ok(()) }, Served::Done] {
            assert_eq!(
                next(EventKind::Started, served, 5, FIVE, &timing()),
                Next::Ack
            );
        }
    }

    #[test]
    fn before_the_last_delivery_every_failure_is_given_back_with_a_delay() {
        for served in [
            Served::Answered {
                stored: Err("down"),
            },
            Served::Retry { why: "waiting" },
            Served::Overran,
        ] {
            assert!(matches!(
                next(EventKind::Started, served, 4, FIVE, &timing()),
                Next::Nak(d) if d > Duration::ZERO
            ));
        }
    }

    #[test]
    fn the_last_delivery_gives_up_with_its_cause_and_an_ended_is_queued_again() {
        let last = |kind, served| next(kind, served, 5, FIVE, &timing());
        assert!(matches!(
            last(EventKind::Started, Served::Answered { stored: Err("down") }),
            Next::GiveUp { cause: GaveUp::AnswerLost, why } if why.contains("down")
        ));
        assert!(matches!(
            last(EventKind::Started, Served::Retry { why: "waiting" }),
            Next::GiveUp { cause: GaveUp::Unserved, why } if why == "waiting"
        ));
        assert!(matches!(
            last(EventKind::Started, Served::Overran),
            Next::GiveUp {
                cause: GaveUp::Unserved,
                ..
            }
        ));
        assert!(matches!(
            last(EventKind::Ended, Served::Retry { why: "apiserver" }),
            Next::Requeue { .. }
        ));
        assert!(matches!(
            last(EventKind::Started, Served::Defer { why: "newer" }),
            Next::Requeue { .. }
        ));
    }

    #[test]
    fn a_stored_ready_the_record_could_not_note_comes_back_unless_it_was_the_last_delivery() {
        assert!(matches!(
            next(
                EventKind::Started,
                Served::StoredUnnoted,
                4,
                FIVE,
                &timing()
            ),
            Next::Nak(_)
        ));
        assert_eq!(
            next(
                EventKind::Started,
                Served::StoredUnnoted,
                5,
                FIVE,
                &timing()
            ),
            Next::Ack
        );
    }

    #[test]
    fn unlimited_deliveries_never_give_up() {
        let unlimited = Deliveries { max_deliver: -1 };
        assert!(matches!(
            next(
                EventKind::Started,
                Served::Overran,
                1_000,
                unlimited,
                &timing()
            ),
            Next::Nak(_)
        ));
    }

    #[test]
    fn a_seeded_jitter_repeats() {
        let draw = |seed| {
            let _g = clock::simulate(std::time::UNIX_EPOCH, seed);
            redelivery_delay(&timing(), 3)
        };
        assert_eq!(draw(11), draw(11));
    }
}
