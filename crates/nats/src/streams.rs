//! The streams and the durable consumers: created when absent, brought up to date when present, never
//! deleted.

use async_nats::jetstream::{self, consumer, stream};
use itg_core::config::JetStreamConfig;
use itg_core::{contract, names};

use crate::client::{NatsError, js_err};

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
    let name = names::consumer_name(&cfg.consumer_prefix, rm);
    let config = consumer::pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!(
            "Internal Task Gateway workers of resource manager {rm}"
        )),
        filter_subject: contract::events_filter(rm),
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
