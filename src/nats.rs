//! The NATS adapter: connection, the two streams, one durable pull consumer per resource manager, and the
//! reply publisher.

use std::future::Future;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{ConnectOptions, HeaderMap};

use crate::config::{JetStreamConfig, NatsConfig};
use crate::contract::{self, Reply};

/// A NATS or JetStream failure, naming what was being done and where.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The server could not be reached or refused the credentials.
    #[error("cannot connect to NATS at {url}: {message}; check nats.url and the credentials")]
    Connect { url: String, message: String },
    /// A stream or consumer could not be created or read.
    #[error("JetStream {what}: {message}; check that the server runs with JetStream enabled")]
    JetStream { what: String, message: String },
    /// A reply was not stored.
    #[error("publishing {subject}: {message}")]
    Publish { subject: String, message: String },
}

fn js_err(what: impl Into<String>, e: impl std::fmt::Display) -> NatsError {
    NatsError::JetStream {
        what: what.into(),
        message: e.to_string(),
    }
}

/// Connects with the configured credentials and TLS.
///
/// # Errors
/// [`NatsError::Connect`] naming the URL.
pub async fn connect(cfg: &NatsConfig) -> Result<async_nats::Client, NatsError> {
    let url = crate::config::redacted_url(&cfg.url);
    // The client's own message may quote the URL, credentials included.
    let fail = |message: String| NatsError::Connect {
        message: message.replace(&cfg.url, &url),
        url: url.clone(),
    };
    let mut opts = ConnectOptions::new()
        .name(&cfg.connection_name)
        .connection_timeout(std::time::Duration::from_secs(5))
        .max_reconnects(None);
    if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &cfg.token {
        opts = opts.token(t.clone());
    }
    if let Some(path) = &cfg.nkey_seed_file {
        let seed = std::fs::read_to_string(path).map_err(|e| {
            fail(format!(
                "reading nats.nkey_seed_file {}: {e}",
                path.display()
            ))
        })?;
        opts = opts.nkey(seed.trim().to_owned());
    }
    if let Some(path) = &cfg.creds_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| fail(format!("reading nats.creds_file {}: {e}", path.display())))?;
    }
    if let Some(tls) = &cfg.tls {
        opts = opts.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(c), Some(k)) = (&tls.cert_file, &tls.key_file) {
            opts = opts.add_client_certificate(c.clone(), k.clone());
        }
    }
    let addrs = server_addrs(&cfg.url).map_err(fail)?;
    // The client never logs in with credentials written in a URL: use them, unless the config names others.
    let other_auth = cfg.user.is_some()
        || cfg.token.is_some()
        || cfg.nkey_seed_file.is_some()
        || cfg.creds_file.is_some();
    if !other_auth && let Some((user, password)) = url_credentials(&addrs) {
        opts = opts.user_and_password(user, password);
    }
    // The first connection is tried once, so a wrong URL, credential or certificate fails start-up at once
    // with the server's reason; once connected, the client reconnects for ever.
    opts.connect(addrs).await.map_err(|e| fail(e.to_string()))
}

/// The user and password of the first URL that holds them (`nats://user:password@host`), percent-decoded.
pub fn url_credentials(addrs: &[async_nats::ServerAddr]) -> Option<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    addrs.iter().find_map(|a| {
        let user = a.username()?;
        Some((decode(user), decode(a.password().unwrap_or_default())))
    })
}

/// The servers of a comma-separated URL list (the client's own parser takes one URL only).
///
/// # Errors
/// The URL that does not parse, and why.
pub fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("{}: {e}", crate::config::redacted_url(u)))
        })
        .collect()
}

fn stream_config(
    name: &str,
    subjects: &str,
    max_age: std::time::Duration,
    cfg: &JetStreamConfig,
) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        // Limits, never work-queue: the streams must stay replayable after acks.
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age,
        duplicate_window: cfg.duplicate_window.0,
        num_replicas: cfg.replicas,
        ..Default::default()
    }
}

/// Creates `ITG_EVENTS` and `ITG_REPLIES` when absent, and brings the settings this worker owns (retention
/// age, duplicate window, replicas) up to date when present. Never deletes anything.
///
/// # Errors
/// [`NatsError::JetStream`] naming the stream.
pub async fn ensure_streams(
    js: &jetstream::Context,
    cfg: &JetStreamConfig,
) -> Result<(), NatsError> {
    for (name, subjects, age) in [
        (
            contract::EVENTS_STREAM,
            contract::EVENTS_SUBJECTS,
            cfg.events_max_age.0,
        ),
        (
            contract::REPLIES_STREAM,
            contract::REPLIES_SUBJECTS,
            cfg.replies_max_age.0,
        ),
        (
            contract::DEAD_LETTER_STREAM,
            contract::DEAD_LETTER_SUBJECTS,
            cfg.events_max_age.0,
        ),
    ] {
        let want = stream_config(name, subjects, age, cfg);
        match js.get_stream(name).await {
            Ok(mut s) => {
                let have = s
                    .info()
                    .await
                    .map_err(|e| js_err(format!("reading stream {name}"), e))?
                    .config
                    .clone();
                if have.max_age != want.max_age
                    || have.duplicate_window != want.duplicate_window
                    || have.num_replicas != want.num_replicas
                {
                    let mut next = have;
                    next.max_age = want.max_age;
                    next.duplicate_window = want.duplicate_window;
                    next.num_replicas = want.num_replicas;
                    js.update_stream(next)
                        .await
                        .map_err(|e| js_err(format!("updating stream {name}"), e))?;
                }
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                js.create_stream(want)
                    .await
                    .map_err(|e| js_err(format!("creating stream {name}"), e))?;
            }
            Err(e) => return Err(js_err(format!("reading stream {name}"), e)),
        }
    }
    Ok(())
}

/// The durable consumer name every worker of a resource manager shares.
pub fn consumer_name(cfg: &JetStreamConfig, rm: &str) -> String {
    format!("{}-{rm}", cfg.consumer_prefix)
}

/// Creates or updates the shared durable pull consumer of one resource manager.
///
/// # Errors
/// [`NatsError::JetStream`] naming the consumer.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    cfg: &JetStreamConfig,
    rm: &str,
    max_ack_pending: i64,
) -> Result<consumer::PullConsumer, NatsError> {
    let name = consumer_name(cfg, rm);
    let config = consumer::pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!(
            "Internal Task Gateway workers of resource manager {rm}"
        )),
        filter_subject: format!("itg.events.{rm}.>"),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cfg.ack_wait.0,
        max_deliver: cfg.max_deliver,
        max_ack_pending,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    };
    let stream = js
        .get_stream(contract::EVENTS_STREAM)
        .await
        .map_err(|e| js_err(format!("reading stream {}", contract::EVENTS_STREAM), e))?;
    match stream.get_consumer::<consumer::pull::Config>(&name).await {
        Ok(_) => stream
            .update_consumer(config)
            .await
            .map_err(|e| js_err(format!("updating consumer {name}"), e))?,
        Err(_) => stream
            .create_consumer(config)
            .await
            .map_err(|e| js_err(format!("creating consumer {name}"), e))?,
    };
    stream
        .get_consumer(&name)
        .await
        .map_err(|e| js_err(format!("opening consumer {name}"), e))
}

/// Where replies go; the worker is generic over it.
pub trait Replier: Clone + Send + Sync + 'static {
    /// Stores one reply, deduplicated by `msg_id`.
    fn publish(
        &self,
        reply: &Reply,
        msg_id: &str,
    ) -> impl Future<Output = Result<(), NatsError>> + Send;

    /// Publishes an event again to its own subject, as a new message: for an `ended` that reached the
    /// maximum deliveries and must not give up. Deduplicated by the sequence it copies.
    fn requeue(
        &self,
        subject: &str,
        payload: &[u8],
        original_sequence: u64,
    ) -> impl Future<Output = Result<(), NatsError>> + Send;

    /// Stores an event given up on in the dead-letter stream, with why and where it came from.
    fn dead_letter(
        &self,
        letter: &DeadLetter<'_>,
    ) -> impl Future<Output = Result<(), NatsError>> + Send;
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

/// Publishes replies to `ITG_REPLIES` and waits for the stream's acknowledgement.
#[derive(Clone)]
pub struct JetStreamReplier {
    js: jetstream::Context,
}

impl JetStreamReplier {
    /// Wraps a JetStream context.
    pub fn new(js: jetstream::Context) -> Self {
        JetStreamReplier { js }
    }
}

impl Replier for JetStreamReplier {
    async fn requeue(
        &self,
        subject: &str,
        payload: &[u8],
        original_sequence: u64,
    ) -> Result<(), NatsError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("requeue-{original_sequence}").as_str(),
        );
        let fail = |e: &dyn std::fmt::Display| NatsError::Publish {
            subject: subject.to_owned(),
            message: e.to_string(),
        };
        self.js
            .publish_with_headers(subject.to_owned(), headers, payload.to_vec().into())
            .await
            .map_err(|e| fail(&e))?
            .await
            .map_err(|e| fail(&e))?;
        Ok(())
    }

    async fn dead_letter(&self, d: &DeadLetter<'_>) -> Result<(), NatsError> {
        let subject = format!("itg.deadletter.{}.{}", d.resource_manager, d.kind.as_str());
        let mut headers = HeaderMap::new();
        // One dead letter per event, however often this is retried.
        headers.insert(
            "Nats-Msg-Id",
            format!("dl-{}", d.original_sequence).as_str(),
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
        let fail = |e: &dyn std::fmt::Display| NatsError::Publish {
            subject: subject.clone(),
            message: e.to_string(),
        };
        self.js
            .publish_with_headers(subject.clone(), headers, d.payload.to_vec().into())
            .await
            .map_err(|e| fail(&e))?
            .await
            .map_err(|e| fail(&e))?;
        Ok(())
    }

    async fn publish(&self, reply: &Reply, msg_id: &str) -> Result<(), NatsError> {
        let subject = contract::reply_subject(reply.resource_manager(), reply.kind());
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        let fail = |e: &dyn std::fmt::Display| NatsError::Publish {
            subject: subject.clone(),
            message: e.to_string(),
        };
        self.js
            .publish_with_headers(subject.clone(), headers, reply.to_json().into())
            .await
            .map_err(|e| fail(&e))?
            .await
            .map_err(|e| fail(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::server_addrs;

    #[test]
    fn a_url_list_names_every_server_and_a_bad_one_is_named() {
        let addrs = server_addrs("nats://a:4222, tls://b:4223").unwrap();
        assert_eq!(addrs.len(), 2);
        assert_eq!(addrs[1].port(), 4223);
        let err = server_addrs("nats://a:4222,nats://u:secret@b:notaport").unwrap_err();
        assert!(
            err.contains("b:notaport") && !err.contains("secret"),
            "{err}"
        );
    }
}
