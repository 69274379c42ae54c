//! A worker at a site (`jetstream.hub_domain`): what it lays out before serving, and the hub's side, laid
//! out in the background while the site's leaf-node link is down. A site whose own streams exist is
//! served from them at once; `/readyz` and `itg_site_waiting_for_hub` say what it still waits for.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;

use crate::admin::Health;
use crate::config::JetStreamConfig;
use crate::metrics;
use crate::nats::{self, NatsError};

/// The hub's side of a site, still to be laid out: its streams when absent, and this site's reply
/// sources on its `ITG_REPLIES`.
pub struct HubSide {
    hub: jetstream::Context,
    hub_domain: String,
    site_domain: String,
    cfg: JetStreamConfig,
    rms: Vec<String>,
}

/// Lays out a site before its worker serves. When the site's streams already serve every resource manager,
/// only they are brought up to date, and the hub's side is returned to be laid out in the background: the
/// leaf-node link may be down. Otherwise (a new site, a new resource manager, a site whose store was lost)
/// the hub is needed first, to refuse a resource manager served elsewhere and to make the lost site's
/// sources again, and everything is laid out now.
///
/// # Errors
/// [`NatsError`] naming the stream, the hub or the resource manager served elsewhere.
pub async fn prepare(
    client: &async_nats::Client,
    site: &jetstream::Context,
    hub_domain: &str,
    site_domain: &str,
    cfg: &JetStreamConfig,
    rms: Vec<String>,
) -> Result<Option<HubSide>, NatsError> {
    let hub = jetstream::with_domain(client.clone(), hub_domain);
    if nats::site_laid_out(site, hub_domain, &rms).await? {
        nats::ensure_site_streams(site, hub_domain, cfg, &rms).await?;
        return Ok(Some(HubSide {
            hub,
            hub_domain: hub_domain.to_owned(),
            site_domain: site_domain.to_owned(),
            cfg: cfg.clone(),
            rms,
        }));
    }
    nats::ensure_site(site, &hub, hub_domain, site_domain, cfg, &rms).await?;
    Ok(None)
}

impl HubSide {
    /// One attempt at the hub's side.
    ///
    /// # Errors
    /// [`NatsError::Hub`] while the leaf-node link is down; [`NatsError::ServedElsewhere`].
    pub async fn lay_out(&self) -> Result<(), NatsError> {
        nats::ensure_hub_side(
            &self.hub,
            &self.hub_domain,
            &self.site_domain,
            &self.cfg,
            &self.rms,
        )
        .await
    }

    /// Lays out the hub's side, trying again every few seconds until the leaf-node link lets it through;
    /// meanwhile `/readyz` and `itg_site_waiting_for_hub` say so. Ends with an error only for one that no
    /// retry mends: a resource manager the hub sources from another site.
    ///
    /// # Errors
    /// [`NatsError::ServedElsewhere`].
    pub async fn lay_out_until_done(self, health: Arc<Health>) -> Result<(), NatsError> {
        let gauge = metrics::get().site_waiting_for_hub(&self.site_domain, &self.hub_domain);
        let mut delay = Duration::from_millis(500);
        // Waiting from the start: the first attempt may take a request timeout to fail.
        gauge.set(1);
        health.waiting_for(Some(format!(
            "the hub's side of site {}, over the leaf-node link to the hub (JetStream domain {}): not laid out yet",
            self.site_domain, self.hub_domain
        )));
        loop {
            match self.lay_out().await {
                Ok(()) => {
                    gauge.set(0);
                    health.waiting_for(None);
                    tracing::info!(site = %self.site_domain, hub = %self.hub_domain, "the hub's side of this site is laid out: its replies reach the hub");
                    return Ok(());
                }
                Err(e @ NatsError::ServedElsewhere { .. }) => {
                    gauge.set(1);
                    health.waiting_for(Some(e.to_string()));
                    return Err(e);
                }
                Err(e) => {
                    gauge.set(1);
                    let why = format!("the hub's side of site {}: {e}", self.site_domain);
                    tracing::warn!(error = %e, retry_in = ?delay, "serving this site's own streams; the hub's side is laid out once the leaf-node link is up");
                    health.waiting_for(Some(why));
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
