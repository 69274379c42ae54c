//! A worker at a site of its own (`jetstream.hub_domain`): the site's streams laid out as
//! [`itg_core::sites`] decides, the hub's streams created when absent, and the hub's `ITG_REPLIES` told to
//! source this site's replies. Everything else (consumer, bucket, replies) is the one-server code, on the
//! site's JetStream.

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
    c.sources = (!l.sources.is_empty()).then(|| l.sources.iter().map(to_source).collect());
    c
}

/// Sets up a site: the hub's `ITG_EVENTS` and `ITG_REPLIES` when absent, the site's streams as
/// [`sites::site_streams`] lays them out, and this site's reply sources on the hub's `ITG_REPLIES`.
///
/// # Errors
/// [`NatsError::ServedElsewhere`] when the hub already sources one of `rms` from another site;
/// [`NatsError::JetStream`] naming the stream that could not be read or changed (the hub's, when the
/// leaf-node link is down).
pub async fn ensure_site(
    site: &jetstream::Context,
    hub: &jetstream::Context,
    hub_domain: &str,
    site_domain: &str,
    cfg: &JetStreamConfig,
    rms: &[String],
) -> Result<(), NatsError> {
    for want in contract_streams(cfg, false) {
        ensure_stream(hub, want, false).await?;
    }
    // Refused before anything of the site changes: a resource manager of another site stays out of it.
    let config = hub
        .get_stream(contract::REPLIES_STREAM)
        .await
        .map_err(|e| js_err("reading the hub's replies stream", e))?
        .info()
        .await
        .map_err(|e| js_err("reading the hub's replies stream", e))?
        .config
        .clone();
    if let Some((rm, other)) =
        sites::served_elsewhere(&layout_of(&config.sources), site_domain, rms)
            .into_iter()
            .next()
    {
        return Err(NatsError::ServedElsewhere { rm, site: other });
    }
    // A site whose store was lost gets its replies stream anew, from sequence 1: a source the hub keeps
    // from before would wait for the old sequence and stall, so this site's sources are made again.
    let fresh = site.get_stream(contract::REPLIES_STREAM).await.is_err();
    for l in sites::site_streams(hub_domain, rms) {
        ensure_stream(site, site_config(&l, cfg), true).await?;
    }
    let mut want = sites::hub_reply_sources(site_domain, rms);
    let mine = sites::domain_api(site_domain);
    // A stream update replaces the whole config: two sites starting at once can each drop the other's
    // source, so read it back until this site's sources are there.
    let mut reset = fresh;
    for attempt in 0..5u64 {
        let mut replies = hub
            .get_stream(contract::REPLIES_STREAM)
            .await
            .map_err(|e| {
                js_err(
                    format!("reading the hub's stream {}", contract::REPLIES_STREAM),
                    e,
                )
            })?;
        let config = replies
            .info()
            .await
            .map_err(|e| js_err("reading the hub's replies stream", e))?
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
                js_err(
                    "resetting this site's sources on the hub's replies stream",
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
        hub.update_stream(update)
            .await
            .map_err(|e| js_err("adding this site's sources to the hub's replies stream", e))?;
        tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
    }
    Ok(())
}
