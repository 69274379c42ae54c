//! What JetStream holds for one resource manager and has not finished: the events its durable consumer has
//! not delivered or not had acknowledged, and the dead letters kept for it. Read periodically for the
//! metrics, never on an event's path.

use async_nats::jetstream;
use futures::TryStreamExt;
use itg_core::config::JetStreamConfig;
use itg_core::{contract, names};

use crate::client::{NatsError, js_err};

/// One reading of a resource manager's backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Events of the stream the consumer has not delivered yet (`num_pending`).
    pub pending: u64,
    /// Events delivered and not acknowledged yet (`num_ack_pending`): in flight or awaiting redelivery.
    pub ack_pending: u64,
    /// Messages kept in the dead-letter stream for this resource manager.
    pub dead_letters: u64,
}

/// Reads the consumer's info and the dead-letter stream's per-subject counts.
///
/// # Errors
/// [`NatsError::JetStream`] naming the consumer or stream that could not be read.
pub async fn backlog(
    js: &jetstream::Context,
    cfg: &JetStreamConfig,
    rm: &str,
) -> Result<Backlog, NatsError> {
    let name = names::consumer_name(&cfg.consumer_prefix, rm);
    let events = js
        .get_stream(contract::EVENTS_STREAM)
        .await
        .map_err(|e| js_err(format!("reading stream {}", contract::EVENTS_STREAM), e))?;
    let info = events
        .consumer_info(&name)
        .await
        .map_err(|e| js_err(format!("reading consumer {name}"), e))?;
    let letters = js
        .get_stream(contract::DEAD_LETTER_STREAM)
        .await
        .map_err(|e| {
            js_err(
                format!("reading stream {}", contract::DEAD_LETTER_STREAM),
                e,
            )
        })?;
    let filter = format!("{}*", contract::dead_letter_prefix(rm));
    let what = || format!("counting {filter} in {}", contract::DEAD_LETTER_STREAM);
    let mut subjects = letters
        .info_with_subjects(&filter)
        .await
        .map_err(|e| js_err(what(), e))?;
    let mut dead_letters = 0u64;
    while let Some((_, count)) = subjects.try_next().await.map_err(|e| js_err(what(), e))? {
        dead_letters += u64::try_from(count).unwrap_or(u64::MAX);
    }
    Ok(Backlog {
        pending: info.num_pending,
        ack_pending: u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX),
        dead_letters,
    })
}
