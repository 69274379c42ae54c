//! The streams and the durable consumers: created when absent, brought up to date when present, never
//! deleted.

use async_nats::jetstream::{self, consumer, stream};
use itg_core::config::JetStreamConfig;
use itg_core::sites::{self, SourceLayout};
use itg_core::{contract, names};

use crate::client::{NatsError, js_err};

pub(crate) fn stream_config(
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
    for want in contract_streams(cfg, true) {
        ensure_stream(js, want, false).await?;
    }
    Ok(())
}

/// The streams of the contract as one server keeps them; `dead_letters` adds `ITG_DEADLETTER`.
pub(crate) fn contract_streams(cfg: &JetStreamConfig, dead_letters: bool) -> Vec<stream::Config> {
    let mut v = vec![
        stream_config(
            contract::EVENTS_STREAM,
            contract::EVENTS_SUBJECTS,
            cfg.events_max_age.0,
            cfg,
        ),
        stream_config(
            contract::REPLIES_STREAM,
            contract::REPLIES_SUBJECTS,
            cfg.replies_max_age.0,
            cfg,
        ),
    ];
    if dead_letters {
        v.push(stream_config(
            contract::DEAD_LETTER_STREAM,
            contract::DEAD_LETTER_SUBJECTS,
            cfg.events_max_age.0,
            cfg,
        ));
    }
    v
}

/// The stream `want.name` created when absent, its owned settings brought up to date when present; with
/// `layout`, its subjects and sources too (a site's streams, whose layout follows the config).
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    want: stream::Config,
    layout: bool,
) -> Result<(), NatsError> {
    let name = want.name.clone();
    match js.get_stream(&name).await {
        Ok(mut s) => {
            let have = s
                .info()
                .await
                .map_err(|e| js_err(format!("reading stream {name}"), e))?
                .config
                .clone();
            // A site's layout only grows: another worker of the site may serve other resource managers.
            let subjects = union(&have.subjects, &want.subjects);
            let sources = union_sources(&have.sources, &want.sources);
            let stale_layout = layout
                && (subjects.len() != have.subjects.len()
                    || have.subject_transform != want.subject_transform
                    || sources.as_ref().map_or(0, Vec::len)
                        != have.sources.as_ref().map_or(0, Vec::len));
            if have.max_age != want.max_age
                || have.duplicate_window != want.duplicate_window
                || have.num_replicas != want.num_replicas
                || stale_layout
            {
                let mut next = have;
                next.max_age = want.max_age;
                next.duplicate_window = want.duplicate_window;
                next.num_replicas = want.num_replicas;
                if layout {
                    next.subjects = subjects;
                    next.subject_transform = want.subject_transform;
                    next.sources = sources;
                }
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
    Ok(())
}

fn union(have: &[String], want: &[String]) -> Vec<String> {
    let mut v = have.to_vec();
    v.extend(want.iter().filter(|w| !have.contains(w)).cloned());
    v
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

/// A source as the core describes it.
fn source_layout(s: &stream::Source) -> SourceLayout {
    SourceLayout {
        name: s.name.clone(),
        api: s
            .external
            .as_ref()
            .map(|e| e.api_prefix.clone())
            .or_else(|| s.domain.as_deref().map(sites::domain_api))
            .unwrap_or_default(),
        filter: s.filter_subject.clone().unwrap_or_default(),
    }
}

/// The sources of a stream's config as the core describes them, sorted.
pub(crate) fn layout_of(sources: &Option<Vec<stream::Source>>) -> Vec<SourceLayout> {
    let mut v: Vec<SourceLayout> = sources.iter().flatten().map(source_layout).collect();
    v.sort();
    v
}

/// `have`'s sources and those of `want` it lacks (compared as the core describes them).
fn union_sources(
    have: &Option<Vec<stream::Source>>,
    want: &Option<Vec<stream::Source>>,
) -> Option<Vec<stream::Source>> {
    let known = layout_of(have);
    let mut v: Vec<stream::Source> = have.clone().unwrap_or_default();
    for w in want.iter().flatten() {
        if !known.contains(&source_layout(w)) {
            v.push(w.clone());
        }
    }
    (!v.is_empty()).then_some(v)
}
