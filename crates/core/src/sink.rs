//! The seam to where replies and given-up events go: the NATS adapter's JetStream publisher implements it.

use std::future::Future;

use crate::contract::{self, Reply};

/// A reply or an event that was not stored, naming what and why.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct SinkError {
    pub what: String,
    pub message: String,
}

/// Where replies go; the worker is generic over it.
pub trait Replier: Clone + Send + Sync + 'static {
    /// Stores one reply, deduplicated by `msg_id`.
    fn publish(
        &self,
        reply: &Reply,
        msg_id: &str,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Publishes an event again to its own subject, as a new message: for an `ended` that reached the
    /// maximum deliveries and must not give up. Deduplicated by the sequence it copies.
    fn requeue(
        &self,
        subject: &str,
        payload: &[u8],
        original_sequence: u64,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Stores an event given up on in the dead-letter stream, with why and where it came from.
    fn dead_letter(
        &self,
        letter: &DeadLetter<'_>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// An event given up on after the consumer's maximum deliveries.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub resource_manager: &'a str,
    pub kind: contract::EventKind,
    pub original_subject: &'a str,
    pub original_sequence: u64,
    pub error: &'a str,
    pub payload: &'a [u8],
}
