//! A worker at a site of its own (`jetstream.hub_domain`): the site's streams laid out as
//! [`itg_core::sites`] decides, the hub's streams created when absent, and the hub's `ITG_REPLIES` told to
//! source this site's replies. Everything else (consumer, bucket, replies) is the one-server code, on the
//! site's JetStream.
//!
//! The hub is reached over the site's leaf-node link, which may be down when the worker starts. A site
//! whose own streams are laid out already is served without it: [`site_laid_out`] says so, and
//! [`ensure_hub_side`] is then retried in the background until the link is up.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use itg_core::config::JetStreamConfig;
use itg_core::contract;
use itg_core::sites::{self, SourceLayout, StreamLayout};

use crate::client::{NatsError, js_err};
use crate::streams::{contract_streams, ensure_stream, layout_of, stream_config};

fn to_source(s: &SourceLayout) -> stream::Source {
    stream::Source {
        name: s.name.clone(),
        filter_subject: Some(s.filter.clone()),
        external: Some(stream::External {
            api_prefix: s.api.clone(),
            delivery_prefix: None,
        }),
        ..Default::default()
    }
}

fn site_config(l: &StreamLayout, cfg: &JetStreamConfig) -> stream::Config {
    let age = if l.name == contract::REPLIES_STREAM {
        cfg.replies_max_age.0
    } else {
        cfg.events_max_age.0
    };
    let mut c = stream_config(l.name, "", age, cfg);
    c.subjects = l.subjects.clone();
    c.subject_transform =
        l.transform
            .as_ref()
            .map(|(source, destination)| stream::SubjectTransform {
                source: source.clone(),
                destination: destination.clone(),
            });
    c.sources = (!l.sources.is_empty()).then(|| l.sources.iter().map(to_source).collect());
    c
}

/// An error of a call to the hub's JetStream, which crosses the leaf-node link.
fn hub_err(hub_domain: &str, what: impl Into<String>, e: impl std::fmt::Display) -> NatsError {
    NatsError::Hub {
        hub: hub_domain.to_owned(),
        what: what.into(),
        message: e.to_string(),
    }
}

/// A failed layout of the hub's stream `name`, named as a call over the leaf-node link.
fn on_hub(hub_domain: &str, name: &str, e: NatsError) -> NatsError {
    match e {
        NatsError::JetStream { message, .. } => {
            hub_err(hub_domain, format!("laying out stream {name}"), message)
        }
        other => other,
    }
}

/// Whether the site's replies stream is gone (the site's store was lost): only the server's "stream not
/// found" says so. Any other error (a timeout while the leaf node recovers) is returned, never read as
/// a loss, since a loss makes this site's sources on the hub anew, and they would read old replies again.
///
/// # Errors
/// [`NatsError::JetStream`] when the stream cannot be read.
pub async fn replies_lost(site: &jetstream::Context) -> Result<bool, NatsError> {
    match site.get_stream(contract::REPLIES_STREAM).await {
        Ok(_) => Ok(false),
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(true)
        }
        Err(e) => Err(js_err(
            format!("reading this site's stream {}", contract::REPLIES_STREAM),
            e,
        )),
    }
}

/// Whether the site's streams are there and source the events of every one of `rms` from the hub: then
/// the site can be served before the hub is reached.
///
/// # Errors
/// [`NatsError::JetStream`] when a site stream cannot be read.
pub async fn site_laid_out(
    site: &jetstream::Context,
    hub_domain: &str,
    rms: &[String],
) -> Result<bool, NatsError> {
    if replies_lost(site).await? {
        return Ok(false);
    }
    let mut events = match site.get_stream(contract::EVENTS_STREAM).await {
        Ok(s) => s,
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Ok(false);
        }
        Err(e) => return Err(js_err("reading this site's stream ITG_EVENTS", e)),
    };
    let have = layout_of(
        &events
            .info()
            .await
            .map_err(|e| js_err("reading this site's stream ITG_EVENTS", e))?
            .config
            .sources,
    );
    let want = sites::site_streams(hub_domain, rms);
    Ok(want
        .iter()
        .filter(|l| l.name == contract::EVENTS_STREAM)
        .flat_map(|l| &l.sources)
        .all(|s| have.contains(s)))
}

/// The site's own streams as [`sites::site_streams`] lays them out; never touches the hub.
///
/// # Errors
/// [`NatsError::JetStream`] naming the stream.
pub async fn ensure_site_streams(
    site: &jetstream::Context,
    hub_domain: &str,
    cfg: &JetStreamConfig,
    rms: &[String],
) -> Result<(), NatsError> {
    for l in sites::site_streams(hub_domain, rms) {
        ensure_stream(site, site_config(&l, cfg), true).await?;
    }
    Ok(())
}

/// Refuses a resource manager that the hub already sources from another site.
async fn check_served_here(
    hub: &jetstream::Context,
    hub_domain: &str,
    site_domain: &str,
    rms: &[String],
) -> Result<(), NatsError> {
    let config = hub
        .get_stream(contract::REPLIES_STREAM)
        .await
        .map_err(|e| hub_err(hub_domain, "reading the replies stream", e))?
        .info()
        .await
        .map_err(|e| hub_err(hub_domain, "reading the replies stream", e))?
        .config
        .clone();
    match sites::served_elsewhere(&layout_of(&config.sources), site_domain, rms)
        .into_iter()
        .next()
    {
        Some((rm, other)) => Err(NatsError::ServedElsewhere { rm, site: other }),
        None => Ok(()),
    }
}

/// Sets up a site from nothing: the hub's `ITG_EVENTS` and `ITG_REPLIES` when absent, the site's streams
/// as [`sites::site_streams`] lays them out, and this site's reply sources on the hub's `ITG_REPLIES`.
///
/// # Errors
/// [`NatsError::ServedElsewhere`] when the hub already sources one of `rms` from another site;
/// [`NatsError::Hub`] when the hub cannot be reached over the leaf-node link; [`NatsError::JetStream`]
/// naming the site's stream that could not be read or changed.
pub async fn ensure_site(
    site: &jetstream::Context,
    hub: &jetstream::Context,
    hub_domain: &str,
    site_domain: &str,
    cfg: &JetStreamConfig,
    rms: &[String],
) -> Result<(), NatsError> {
    for want in contract_streams(cfg, false) {
        let name = want.name.clone();
        ensure_stream(hub, want, false)
            .await
            .map_err(|e| on_hub(hub_domain, &name, e))?;
    }
    // Refused before anything of the site changes: a resource manager of another site stays out of it.
    check_served_here(hub, hub_domain, site_domain, rms).await?;
    let fresh = replies_lost(site).await?;
    ensure_site_streams(site, hub_domain, cfg, rms).await?;
    hub_sources(site_domain, hub, hub_domain, rms, fresh).await
}

/// The hub's side of a site whose own streams are laid out: the hub's streams when absent, and this
/// site's reply sources on the hub's `ITG_REPLIES`. Changes nothing of the site.
///
/// # Errors
/// As [`ensure_site`].
pub async fn ensure_hub_side(
    hub: &jetstream::Context,
    hub_domain: &str,
    site_domain: &str,
    cfg: &JetStreamConfig,
    rms: &[String],
) -> Result<(), NatsError> {
    for want in contract_streams(cfg, false) {
        let name = want.name.clone();
        ensure_stream(hub, want, false)
            .await
            .map_err(|e| on_hub(hub_domain, &name, e))?;
    }
    check_served_here(hub, hub_domain, site_domain, rms).await?;
    hub_sources(site_domain, hub, hub_domain, rms, false).await
}

/// This site's sources on the hub's `ITG_REPLIES`; with `fresh` (the site's replies stream is new), made
/// again.
async fn hub_sources(
    site_domain: &str,
    hub: &jetstream::Context,
    hub_domain: &str,
    rms: &[String],
    fresh: bool,
) -> Result<(), NatsError> {
    let mut want = sites::hub_reply_sources(site_domain, rms);
    let mine = sites::domain_api(site_domain);
    // A stream update replaces the whole config: two sites starting at once can each drop the other's
    // source, so read it back until this site's sources are there.
    let mut reset = fresh;
    for attempt in 0..5u64 {
        let mut replies = hub
            .get_stream(contract::REPLIES_STREAM)
            .await
            .map_err(|e| hub_err(hub_domain, "reading the replies stream", e))?;
        let config = replies
            .info()
            .await
            .map_err(|e| hub_err(hub_domain, "reading the replies stream", e))?
            .config
            .clone();
        let mut have = layout_of(&config.sources);
        if let Some((rm, other)) = sites::served_elsewhere(&have, site_domain, rms)
            .into_iter()
            .next()
        {
            return Err(NatsError::ServedElsewhere { rm, site: other });
        }
        if std::mem::take(&mut reset) && have.iter().any(|s| s.api == mine) {
            // Every source from this site reads the same new stream: all of them are made again, those
            // of the site's other resource managers too.
            let others: Vec<SourceLayout> = have
                .iter()
                .filter(|s| s.api == mine && !want.contains(s))
                .cloned()
                .collect();
            want.extend(others);
            have.retain(|s| s.api != mine);
            let mut update = config.clone();
            update.sources = (!have.is_empty()).then(|| have.iter().map(to_source).collect());
            hub.update_stream(update).await.map_err(|e| {
                hub_err(
                    hub_domain,
                    "resetting this site's sources on the replies stream",
                    e,
                )
            })?;
            tracing::info!(site = %site_domain, "this site's replies stream is new: its sources on the hub's ITG_REPLIES are made again");
            continue;
        }
        let Some(next) = sites::with_sources(&have, &want) else {
            break;
        };
        let mut update = config;
        update.sources = Some(next.iter().map(to_source).collect());
        hub.update_stream(update).await.map_err(|e| {
            hub_err(
                hub_domain,
                "adding this site's sources to the replies stream",
                e,
            )
        })?;
        tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
    }
    Ok(())
}
