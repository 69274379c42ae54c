//! The reply sink: publishes replies, requeued events and dead letters to JetStream and waits for the
//! stream's acknowledgement, deduplicated by message id.

use async_nats::HeaderMap;
use async_nats::jetstream;
use itg_core::contract::{self, Reply};
use itg_core::names;
use itg_core::sink::{DeadLetter, Replier, SinkError};

/// Publishes replies to `ITG_REPLIES` and waits for the stream's acknowledgement.
#[derive(Clone)]
pub struct JetStreamReplier {
    js: jetstream::Context,
    /// Serving a site (`jetstream.hub_domain`): events are queued again at the site, not through the hub.
    site: bool,
}

impl JetStreamReplier {
    /// Wraps a JetStream context.
    pub fn new(js: jetstream::Context) -> Self {
        JetStreamReplier { js, site: false }
    }

    /// Wraps a site's JetStream context: an event queued again is stored by the site's own
    /// `ITG_EVENTS`, so it does not depend on the WAN link, and its message id (the site's sequence) is
    /// compared only with the site's own.
    pub fn at_site(js: jetstream::Context) -> Self {
        JetStreamReplier { js, site: true }
    }
}

impl JetStreamReplier {
    /// Publishes `payload` to `subject` with `headers` and waits until the stream has stored it.
    async fn stored(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Vec<u8>,
    ) -> Result<(), SinkError> {
        let fail = |e: &dyn std::fmt::Display| SinkError {
            what: format!("publishing {subject}"),
            message: e.to_string(),
        };
        self.js
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .map_err(|e| fail(&e))?
            .await
            .map_err(|e| fail(&e))?;
        Ok(())
    }
}

impl Replier for JetStreamReplier {
    async fn requeue(
        &self,
        subject: &str,
        payload: &[u8],
        original_sequence: u64,
    ) -> Result<(), SinkError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            names::requeue_msg_id(original_sequence).as_str(),
        );
        let subject = if self.site {
            itg_core::sites::requeue_subject(subject)
        } else {
            subject.to_owned()
        };
        self.stored(subject, headers, payload.to_vec()).await
    }

    async fn dead_letter(&self, d: &DeadLetter<'_>) -> Result<(), SinkError> {
        let subject = contract::dead_letter_subject(d.resource_manager, d.kind);
        let mut headers = HeaderMap::new();
        // One dead letter per event, however often this is retried.
        headers.insert(
            "Nats-Msg-Id",
            names::dead_letter_msg_id(d.original_sequence).as_str(),
        );
        headers.insert(contract::DEAD_LETTER_SUBJECT_HEADER, d.original_subject);
        headers.insert(
            contract::DEAD_LETTER_SEQUENCE_HEADER,
            d.original_sequence.to_string().as_str(),
        );
        // Header values are one line.
        let error: String = d
            .error
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        headers.insert(contract::DEAD_LETTER_ERROR_HEADER, error.as_str());
        self.stored(subject, headers, d.payload.to_vec()).await
    }

    async fn publish(&self, reply: &Reply, msg_id: &str) -> Result<(), SinkError> {
        let subject = contract::reply_subject(reply.resource_manager(), reply.kind());
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        self.stored(subject, headers, reply.to_json()).await
    }
}
