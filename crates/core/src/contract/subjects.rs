//! Subjects and streams: where events, replies and dead letters are published. Every subject string is
//! built here.

use crate::validate;

/// Stream holding every event the master publishes.
pub const EVENTS_STREAM: &str = "ITG_EVENTS";
/// Stream holding every reply the workers publish.
pub const REPLIES_STREAM: &str = "ITG_REPLIES";
/// Subjects captured by [`EVENTS_STREAM`].
pub const EVENTS_SUBJECTS: &str = "itg.events.>";
/// Subjects captured by [`REPLIES_STREAM`].
pub const REPLIES_SUBJECTS: &str = "itg.replies.>";
/// Stream holding events given up on after the consumer's maximum deliveries, for an operator to inspect
/// and send back.
pub const DEAD_LETTER_STREAM: &str = "ITG_DEADLETTER";
/// Subjects captured by [`DEAD_LETTER_STREAM`]: `itg.deadletter.<rm>.<kind>`.
pub const DEAD_LETTER_SUBJECTS: &str = "itg.deadletter.>";
/// Header of a dead letter: why the event could not be served.
pub const DEAD_LETTER_ERROR_HEADER: &str = "Itg-Error";
/// Header of a dead letter: the subject the event was published to.
pub const DEAD_LETTER_SUBJECT_HEADER: &str = "Itg-Original-Subject";
/// Header of a dead letter: the event's sequence in `ITG_EVENTS`.
pub const DEAD_LETTER_SEQUENCE_HEADER: &str = "Itg-Original-Sequence";
/// The two events the master publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A task started: expose its proxy ports.
    Started,
    /// The task ended: remove everything made for it.
    Ended,
}

impl EventKind {
    /// The last token of the event's subject.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Ended => "ended",
        }
    }
}

/// The three replies a worker publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// The allocation's ports are exposed.
    Ready,
    /// An event could not be served.
    Failed,
    /// Everything made for an allocation is gone.
    Removed,
}

impl ReplyKind {
    /// The last token of the reply's subject.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyKind::Ready => "ready",
            ReplyKind::Failed => "failed",
            ReplyKind::Removed => "removed",
        }
    }
}

/// `itg.events.<rm>.<kind>`
pub fn event_subject(rm: &str, kind: EventKind) -> String {
    format!("itg.events.{rm}.{}", kind.as_str())
}

/// `itg.replies.<rm>.<kind>`
pub fn reply_subject(rm: &str, kind: ReplyKind) -> String {
    format!("itg.replies.{rm}.{}", kind.as_str())
}

/// Splits an event subject into its resource manager and kind; `None` for any other subject.
pub fn parse_event_subject(subject: &str) -> Option<(&str, EventKind)> {
    let rest = subject.strip_prefix("itg.events.")?;
    let (rm, kind) = rest.split_once('.')?;
    let kind = match kind {
        "started" => EventKind::Started,
        "ended" => EventKind::Ended,
        _ => return None,
    };
    validate::is_subject_token(rm).then_some((rm, kind))
}

/// Every event subject of one resource manager: `itg.events.<rm>.>`.
pub fn events_filter(rm: &str) -> String {
    format!("itg.events.{rm}.>")
}

/// Every reply subject of one resource manager: `itg.replies.<rm>.>`.
pub fn replies_filter(rm: &str) -> String {
    format!("itg.replies.{rm}.>")
}

/// `itg.deadletter.<rm>.<kind>`
pub fn dead_letter_subject(rm: &str, kind: EventKind) -> String {
    format!("{}{}", dead_letter_prefix(rm), kind.as_str())
}

/// The start of every dead-letter subject of one resource manager: `itg.deadletter.<rm>.`.
pub fn dead_letter_prefix(rm: &str) -> String {
    format!("itg.deadletter.{rm}.")
}
