//! Replay: serves `ITG_EVENTS` again from a sequence or a time, through the same handler as the consumer,
//! without a durable consumer of its own. Handling is idempotent, so a replay changes nothing that is
//! already right and repairs what is not; the summary tells which was which by whether the allocation's
//! record changed.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde::Serialize;

use crate::contract::{self, EventKind, FailureReason, Reply};
use crate::gateway::Cluster;
use crate::names;
use crate::nats::Replier;
use crate::store::Store;
use crate::worker::{Handled, Handler};

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
    mut progress: impl FnMut(u64, u64),
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
    let mut ordered = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("itg.events.{rm}.>"),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(err)?;
    let total = ordered.info().await.map_err(err)?.num_pending;
    let mut messages = ordered.messages().await.map_err(err)?;
    let mut summary = Summary::default();
    while summary.seen < total {
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await
        else {
            break;
        };
        let msg = msg.map_err(err)?;
        let sequence = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        summary.seen += 1;
        let kind = contract::parse_event_subject(&msg.subject).map(|(_, k)| k);
        let key = contract::decode_event(kind.unwrap_or(EventKind::Started), &msg.payload)
            .ok()
            .map(|ev| names::allocation_key(&rm, ev.allocation_id()));
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
        match handled {
            Handled::Answer { reply, msg_id } => {
                if let Err(e) = replier.publish(&reply, &msg_id).await {
                    tracing::warn!(sequence, error = %e, "replayed reply not stored");
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
                        summary.already_right += 1;
                    }
                    Reply::Failed(_) => summary.failed += 1,
                    _ if before.is_some() && before == after => summary.already_right += 1,
                    _ => summary.repaired += 1,
                }
            }
            Handled::Done => summary.already_right += 1,
            Handled::Retry { why } => {
                tracing::warn!(sequence, why = %why, "replayed event not served");
                summary.failed += 1;
            }
        }
        progress(summary.seen, total);
        if sequence >= last {
            break;
        }
    }
    Ok(summary)
}
