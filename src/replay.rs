//! Replay: serves `ITG_EVENTS` again from a sequence or a time, through the same handler as the consumer,
//! without a durable consumer of its own. Handling is idempotent, so a replay changes nothing that is
//! already right and repairs what is not; the summary tells which was which by whether the allocation's
//! record changed.

use std::cell::RefCell;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::answers::Handled;
use crate::cluster::Cluster;
use crate::contract::{self, EventKind, FailureReason, Reply};
use crate::names;
use crate::sink::Replier;
use crate::store::Store;
use crate::worker::Handler;

/// Where a replay starts.
#[derive(Debug, Clone, Copy)]
pub enum From {
    /// This `ITG_EVENTS` sequence, inclusive.
    Sequence(u64),
    /// The first event stored at or after this time.
    Since(jiff::Timestamp),
}

/// What a replay did. Every event's objects are applied again either way (which restores any that went
/// missing); the counts say whether the allocation's record had to change.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Events read.
    pub seen: u64,
    /// Served with the allocation's record unchanged, or given the same refusal as before (an invalid
    /// event, a namespace not allowed, a started after its ended).
    pub already_right: u64,
    /// Served with the record changed: something was repaired or done for the first time.
    pub repaired: u64,
    /// Not served now (capacity, apiserver or NATS trouble); the live consumer keeps its own retries.
    pub failed: u64,
}

/// A replay failure before or while reading the stream.
#[derive(Debug, thiserror::Error)]
#[error("replaying {stream}: {message}")]
pub struct ReplayError {
    pub stream: &'static str,
    pub message: String,
}

/// An ordered read of the events on `subject` from `deliver_policy`, and how many there are to read.
async fn ordered_events(
    stream: &jetstream::stream::Stream,
    subject: String,
    deliver_policy: consumer::DeliverPolicy,
) -> Result<(u64, consumer::pull::Ordered), ReplayError> {
    let mut ordered = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(err)?;
    let total = ordered.info().await.map_err(err)?.num_pending;
    Ok((total, ordered.messages().await.map_err(err)?))
}

impl ReplayError {
    /// The same failure, saying where in the range the replay stopped.
    fn at(self, sequence: u64, last: u64) -> ReplayError {
        ReplayError {
            message: format!(
                "{} (serving sequence {sequence} of {last}): the replay is incomplete; check the NATS connection and run it again",
                self.message
            ),
            ..self
        }
    }
}

fn err(e: impl std::fmt::Display) -> ReplayError {
    ReplayError {
        stream: contract::EVENTS_STREAM,
        message: e.to_string(),
    }
}

/// Replays one resource manager's events from `from` to the end of the stream as it was when the replay
/// began. `progress(done, total)` is called after each event.
///
/// # Errors
/// [`ReplayError`] when the stream cannot be read.
pub async fn replay<S: Store, C: Cluster, R: Replier>(
    js: &jetstream::Context,
    handler: &Handler<S, C>,
    store: &S,
    replier: &R,
    from: From,
    progress: impl FnMut(u64, u64),
) -> Result<Summary, ReplayError> {
    let rm = handler.rm().name.clone();
    let mut stream = js.get_stream(contract::EVENTS_STREAM).await.map_err(err)?;
    let last = stream.info().await.map_err(err)?.state.last_sequence;
    let deliver_policy = match from {
        From::Sequence(s) => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: s.max(1),
        },
        From::Since(t) => consumer::DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp(t.as_second()).map_err(err)?,
        },
    };
    // A started is served before its ended: if the state was lost, it would expose the allocation again.
    let (ended_total, ended) = ordered_events(
        &stream,
        contract::event_subject(&rm, EventKind::Ended),
        deliver_policy,
    )
    .await?;
    tombstone_ended(
        handler,
        read_range(ended, ended_total, last, "the ended events"),
    )
    .await?;
    let (total, messages) =
        ordered_events(&stream, contract::events_filter(&rm), deliver_policy).await?;
    serve_in_order(
        handler,
        store,
        replier,
        read_range(messages, total, last, "the events"),
        total,
        last,
        progress,
    )
    .await
}

/// One event of `ITG_EVENTS` as the replay serves it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub sequence: u64,
    pub subject: String,
    pub payload: bytes::Bytes,
}

impl StoredEvent {
    fn of(msg: &jetstream::Message) -> StoredEvent {
        StoredEvent {
            sequence: msg.info().map(|i| i.stream_sequence).unwrap_or(0),
            subject: msg.subject.to_string(),
            payload: msg.payload.clone(),
        }
    }

    fn kind(&self) -> Option<EventKind> {
        contract::parse_event_subject(&self.subject).map(|(_, k)| k)
    }
}

/// The events of an ordered read up to the range's `last` sequence, `total` of them at most.
fn read_range(
    messages: consumer::pull::Ordered,
    total: u64,
    last: u64,
    what: &'static str,
) -> impl futures::Stream<Item = Result<StoredEvent, ReplayError>> {
    futures::stream::try_unfold(
        (messages, 0u64, 0u64),
        move |(mut messages, read, reached)| async move {
            if read >= total || reached >= last {
                return Ok(None);
            }
            let msg = next_or_stalled(&mut messages, what, reached, last).await?;
            let ev = StoredEvent::of(&msg);
            let sequence = ev.sequence;
            // Published after the replay began: the live consumer serves it.
            if sequence > last {
                return Ok(None);
            }
            Ok(Some((ev, (messages, read + 1, sequence))))
        },
    )
}

/// Replays `events`, already read, as [`replay`] replays the stream: the `ended`s leave their tombstones
/// first, then every event is served in order, one allocation's on one lane. For the simulator, which has
/// no stream.
///
/// # Errors
/// [`ReplayError`] when the store cannot be read or written.
pub async fn replay_events<S: Store, C: Cluster, R: Replier>(
    handler: &Handler<S, C>,
    store: &S,
    replier: &R,
    events: &[StoredEvent],
) -> Result<Summary, ReplayError> {
    let last = events.iter().map(|e| e.sequence).max().unwrap_or(0);
    let ended = events
        .iter()
        .filter(|e| e.kind() == Some(EventKind::Ended))
        .cloned()
        .map(Ok);
    tombstone_ended(handler, futures::stream::iter(ended)).await?;
    let all = futures::stream::iter(events.iter().cloned().map(Ok));
    serve_in_order(
        handler,
        store,
        replier,
        all,
        events.len() as u64,
        last,
        |_, _| {},
    )
    .await
}

/// Serves `events` (`total` of them, up to sequence `last`): events of one allocation stay in order on one
/// lane; lanes run at once, so a replay waits on many round trips together instead of one after the other.
async fn serve_in_order<S: Store, C: Cluster, R: Replier>(
    handler: &Handler<S, C>,
    store: &S,
    replier: &R,
    events: impl futures::Stream<Item = Result<StoredEvent, ReplayError>>,
    total: u64,
    last: u64,
    progress: impl FnMut(u64, u64),
) -> Result<Summary, ReplayError> {
    let rm = handler.rm().name.clone();
    let summary = RefCell::new(Summary::default());
    let progress = RefCell::new(progress);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..LANES)
        .map(|_| mpsc::channel::<StoredEvent>(LANE_DEPTH))
        .unzip();
    let read = async move {
        futures::pin_mut!(events);
        while let Some(ev) = events.try_next().await? {
            if senders[lane(&ev)].send(ev).await.is_err() {
                break;
            }
        }
        Ok::<(), ReplayError>(())
    };
    let lanes = futures::future::join_all(receivers.into_iter().map(|mut rx| {
        let (rm, summary, progress) = (&rm, &summary, &progress);
        async move {
            while let Some(ev) = rx.recv().await {
                let outcome = serve(handler, store, replier, rm, &ev)
                    .await
                    .map_err(|e| e.at(ev.sequence, last))?;
                let mut s = summary.borrow_mut();
                s.seen += 1;
                match outcome {
                    Outcome::AlreadyRight => s.already_right += 1,
                    Outcome::Repaired => s.repaired += 1,
                    Outcome::Failed => s.failed += 1,
                }
                (progress.borrow_mut())(s.seen, total);
            }
            Ok::<(), ReplayError>(())
        }
    }));
    let (read, lanes) = tokio::join!(read, lanes);
    read?;
    lanes.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(summary.into_inner())
}

/// Writes a tombstone for every allocation whose `ended` is among `ended` and that has no record, so that
/// no started of it served afterwards exposes anything (after the KV bucket was lost, say).
async fn tombstone_ended<S: Store, C: Cluster>(
    handler: &Handler<S, C>,
    ended: impl futures::Stream<Item = Result<StoredEvent, ReplayError>>,
) -> Result<u64, ReplayError> {
    // Read in order, written LANES at a time: each is a KV round trip of its own allocation's key, and one
    // after another they took longer than the replay that follows.
    let written = ended
        .map_ok(|ev| async move {
            match contract::decode_event(EventKind::Ended, &ev.payload) {
                Ok(contract::Event::Ended(e)) => handler
                    .tombstone(&e)
                    .await
                    .map_err(|e| err(e).at(ev.sequence, ev.sequence)),
                _ => Ok(false),
            }
        })
        .try_buffer_unordered(LANES)
        .try_fold(0u64, |n, w| futures::future::ready(Ok(n + u64::from(w))))
        .await?;
    if written > 0 {
        tracing::info!(
            written,
            "tombstones written for ended allocations without a record"
        );
    }
    Ok(written)
}

/// How long a read may wait for its next event before the replay is called stalled.
const STALL: Duration = Duration::from_secs(10);

/// The next event of an ordered read. A read that stalls or ends before the range's last sequence is an
/// error naming the sequence reached: a replay that stopped early would leave later `ended`s without
/// tombstones, or later events unserved, and must not look like one that finished.
async fn next_or_stalled(
    messages: &mut consumer::pull::Ordered,
    what: &str,
    reached: u64,
    last: u64,
) -> Result<jetstream::Message, ReplayError> {
    let stopped = |how: &str| ReplayError {
        stream: contract::EVENTS_STREAM,
        message: format!(
            "reading {what} {how} at sequence {reached} of {last}: the replay is incomplete; check the NATS connection and run it again"
        ),
    };
    match tokio::time::timeout(STALL, messages.next()).await {
        Ok(Some(msg)) => msg.map_err(err),
        Ok(None) => Err(stopped("ended early")),
        Err(_) => Err(stopped(&format!(
            "stalled for {}",
            humantime::format_duration(STALL)
        ))),
    }
}

/// How many lanes serve a replay at once, and how many events each may have waiting.
const LANES: usize = 32;
const LANE_DEPTH: usize = 64;

/// The lane of an event: by its allocation, so one allocation's events are served in stream order.
fn lane(ev: &StoredEvent) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let kind = ev.kind().unwrap_or(EventKind::Started);
    contract::decode_event(kind, &ev.payload)
        .map(|ev| ev.allocation_id().to_owned())
        .unwrap_or_default()
        .hash(&mut h);
    usize::try_from(h.finish() % LANES as u64).unwrap_or(0)
}

enum Outcome {
    AlreadyRight,
    Repaired,
    Failed,
}

/// Serves one event again and says whether it found things right.
async fn serve<S: Store, C: Cluster, R: Replier>(
    handler: &Handler<S, C>,
    store: &S,
    replier: &R,
    rm: &str,
    msg: &StoredEvent,
) -> Result<Outcome, ReplayError> {
    let sequence = msg.sequence;
    let kind = msg.kind();
    let key = contract::decode_event(kind.unwrap_or(EventKind::Started), &msg.payload)
        .ok()
        .map(|ev| names::allocation_key(rm, ev.allocation_id()));
    let before = match &key {
        Some(k) => store.get(k).await.map_err(err)?.map(|e| e.revision),
        None => None,
    };
    let handled = match kind {
        Some(kind) => handler.handle(kind, &msg.payload).await,
        None => Handled::Retry {
            why: "not an event subject".into(),
        },
    };
    Ok(match handled {
        Handled::Answer { reply, msg_id } => {
            match replier.publish(&reply, &msg_id).await {
                Ok(()) => {
                    if let Err(e) = handler.stored(&reply).await {
                        tracing::warn!(sequence, error = %e, "could not note the stored ready");
                    }
                }
                Err(e) => tracing::warn!(sequence, error = %e, "replayed reply not stored"),
            }
            let after = match &key {
                Some(k) => store.get(k).await.map_err(err)?.map(|e| e.revision),
                None => None,
            };
            match reply {
                // The same answer the event got the first time: nothing to repair.
                Reply::Failed(f)
                    if matches!(
                        f.reason,
                        FailureReason::InvalidEvent | FailureReason::NamespaceNotAllowed
                    ) =>
                {
                    Outcome::AlreadyRight
                }
                Reply::Failed(_) => Outcome::Failed,
                _ if before.is_some() && before == after => Outcome::AlreadyRight,
                _ => Outcome::Repaired,
            }
        }
        Handled::Done => Outcome::AlreadyRight,
        Handled::Retry { why } | Handled::Defer { why } => {
            tracing::warn!(sequence, why = %why, "replayed event not served");
            Outcome::Failed
        }
    })
}
