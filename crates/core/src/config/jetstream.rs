//! `jetstream`: the streams, the KV bucket and the consumer.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::rules::{Dur, rule};

/// Streams, KV bucket and consumer settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    pub replicas: usize,
    pub events_max_age: Dur,
    pub replies_max_age: Dur,
    pub duplicate_window: Dur,
    pub state_bucket: String,
    pub consumer_prefix: String,
    pub ack_wait: Dur,
    pub max_deliver: i64,
    /// The JetStream domain the streams, the consumers and the bucket live in, when it is not the domain
    /// of the server the worker connects to (a leaf node reaching the hub's JetStream, say).
    pub domain: Option<String>,
    /// Where the master's streams live, for a worker at a site of its own (see `sites`): the site keeps
    /// its own streams and bucket, sources its events from this domain and has its replies sourced there.
    pub hub_domain: Option<String>,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            replicas: 1,
            events_max_age: Dur(Duration::from_secs(7 * 24 * 3600)),
            replies_max_age: Dur(Duration::from_secs(7 * 24 * 3600)),
            duplicate_window: Dur(Duration::from_secs(120)),
            state_bucket: "ITG_STATE".into(),
            consumer_prefix: "itg-worker".into(),
            ack_wait: Dur(Duration::from_secs(30)),
            max_deliver: 50,
            domain: None,
            hub_domain: None,
        }
    }
}

impl JetStreamConfig {
    /// The rules of `jetstream` that need no other section; its durations are checked with the worker's.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let js = self;
        if !(1..=5).contains(&js.replicas) {
            return Err(rule("jetstream.replicas", js.replicas, "must be 1 to 5"));
        }
        for (key, v) in [
            ("jetstream.state_bucket", &js.state_bucket, 64),
            ("jetstream.consumer_prefix", &js.consumer_prefix, 32),
        ]
        .map(|(k, v, n)| (k, (v, n)))
        {
            let (v, max) = v;
            if v.is_empty()
                || v.len() > max
                || !v
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
            {
                return Err(rule(
                    key,
                    v,
                    format!("1 to {max} characters of A-Z, a-z, 0-9, '_' and '-'"),
                ));
            }
        }
        for (key, v) in [
            ("jetstream.domain", &js.domain),
            ("jetstream.hub_domain", &js.hub_domain),
        ] {
            if let Some(v) = v
                && (v.is_empty()
                    || v.len() > 64
                    || !v
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'))
            {
                return Err(rule(
                    key,
                    v,
                    "a JetStream domain: 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'",
                ));
            }
        }
        if let (Some(_), Some(hub)) = (&js.domain, &js.hub_domain) {
            return Err(rule(
                "jetstream.hub_domain",
                hub,
                "excludes jetstream.domain: set domain to keep everything in that domain, or hub_domain to keep the streams and the bucket at the site and source them from the hub",
            ));
        }
        if js.max_deliver == 0 || js.max_deliver < -1 {
            return Err(rule(
                "jetstream.max_deliver",
                js.max_deliver,
                "must be at least 1, or -1 for unlimited",
            ));
        }
        Ok(())
    }
}
