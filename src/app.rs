//! Wiring: connects NATS and every resource manager's apiserver, checks what is there, and runs one
//! consumer loop per resource manager until shutdown. The one place where adapters meet.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::watch;

use crate::admin::{self, Health};
use crate::allocator::{self, PortView};
use crate::claims;
use crate::cluster::{ClassStatus, Cluster, Inventory};
use crate::config::{Config, PortOrRange, ResourceManagerConfig};
use crate::controllers;
use crate::k8s::Backend;
use crate::nats::{self, JetStreamReplier, KvStore};
use crate::plan::Action;
use crate::reconciler::Reconciler;
use crate::resource_manager::RmContext;
use crate::worker::Handler;

/// A start-up check that failed, naming the server and where it was looked for.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Nats(#[from] nats::NatsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Bucket(#[from] nats::OpenError),
    /// The admin endpoint could not listen.
    #[error("admin.address {address}: {message}; choose a free address")]
    Admin { address: String, message: String },
    /// An apiserver or the Gateway could not be reached or found.
    #[error("resource manager {rm}: {message}")]
    Kubernetes { rm: String, message: String },
}

/// One resource manager, connected.
pub struct Connected {
    pub config: ResourceManagerConfig,
    /// Its own Gateway (`internal_task_gateway`): the first of `pool`.
    pub gateway: Backend,
    /// Every Gateway of its pool, in the order of `RmContext::pool`.
    pub pool: Vec<Backend>,
    pub server: String,
    /// Whether a controller accepted the Gateway's class, read at start.
    pub class: ClassStatus,
    /// What is known of each pool Gateway's controller, and the ports excluded for it, for the report.
    pub controllers: Vec<String>,
}

/// Everything connected and checked.
pub struct Servers {
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub store: KvStore,
    pub rms: Vec<Connected>,
    /// At a site whose streams were laid out already: the hub's side, laid out while serving.
    pub hub: Option<crate::site::HubSide>,
}

/// Connects to NATS (creating the streams and the KV bucket when absent) and to every apiserver, and waits
/// for each Gateway watch to sync.
///
/// # Errors
/// [`StartError`] naming the first server that could not be used.
pub async fn connect(config: &Config) -> Result<Servers, StartError> {
    let client = nats::connect(&config.nats).await?;
    // A leaf node's worker reaches another domain's JetStream through its `$JS.<domain>.API` prefix.
    let js = match &config.jetstream.domain {
        Some(domain) => jetstream::with_domain(client.clone(), domain),
        None => jetstream::new(client.clone()),
    };
    let url = crate::config::redacted_url(&config.nats.url);
    let account = js
        .query_account()
        .await
        .map_err(|e| nats::NatsError::JetStream {
            what: format!("account info at {url}"),
            message: crate::config::redact_in(&e.to_string(), &config.nats.url),
        })?;
    let mut hub_side = None;
    match &config.jetstream.hub_domain {
        None => nats::ensure_streams(&js, &config.jetstream).await?,
        Some(hub) => {
            let Some(site) = account.domain.filter(|d| !d.is_empty() && d != hub) else {
                return Err(nats::NatsError::JetStream {
                    what: format!("jetstream.hub_domain {hub} at {url}"),
                    message: "the server this worker connects to has no JetStream domain of its own (or it is the hub's): a site's worker connects to the site's leaf node, whose jetstream block sets a domain".into(),
                }
                .into());
            };
            let rms: Vec<String> = config
                .resource_managers
                .iter()
                .map(|rm| rm.name.clone())
                .collect();
            hub_side =
                crate::site::prepare(&client, &js, hub, &site, &config.jetstream, rms.clone())
                    .await?;
            tracing::info!(site = %site, hub = %hub, resource_managers = ?rms, "serving at a site: events sourced from the hub, replies sourced by it");
        }
    }
    let store = KvStore::open(&js, &config.jetstream).await?;
    let mut rms = Vec::new();
    for rm in &config.resource_managers {
        let kerr = |message: String| StartError::Kubernetes {
            rm: rm.name.clone(),
            message,
        };
        let (pool, server) = crate::k8s::connect(rm, config.worker.kubernetes_call_timeout.0)
            .await
            .map_err(kerr)?;
        let Some(gateway) = pool.first().cloned() else {
            return Err(kerr("no Gateway configured".into()));
        };
        let class = gateway.class_status().await;
        let mut classes = vec![class.clone()];
        for member in pool.iter().skip(1) {
            classes.push(member.class_status().await);
        }
        for (member, class) in pool.iter().zip(&classes) {
            if let Some(c) = class.controller().and_then(controllers::known) {
                member.gateway().know_controller(c);
            }
        }
        let (rm, known) = apply_known_controllers(rm, &classes);
        if rm.wait_for_controller && !class.may_be_served() {
            tracing::warn!(resource_manager = %rm.name, class = %class, "ready waits for a controller that may not be there: every exposure will time out unless one accepts the class; set wait_for_controller: false for a controller that writes no status");
        } else {
            tracing::info!(resource_manager = %rm.name, class = %class, wait_for_controller = rm.wait_for_controller, exposes = %gateway.describe(), "Gateway class");
        }
        for member in &pool {
            if let Backend::ListenerSets(sets) = member
                && sets.allowed().starts_with("NOT")
            {
                tracing::warn!(resource_manager = %rm.name, allowed = %sets.allowed(), "a Gateway does not take this resource manager's ListenerSets: every exposure placed there will be refused or time out until it allows them");
            }
        }
        rms.push(Connected {
            config: rm,
            gateway,
            pool,
            server,
            class,
            controllers: known,
        });
    }
    Ok(Servers {
        nats: client,
        js,
        store,
        rms,
        hub: hub_side,
    })
}

/// `rm` with the ports that the known controllers of its Gateways cannot serve added to `excluded_ports`
/// (logged, naming them), and a report line per Gateway whose controller is known. `classes` is in the
/// order of `rm.gateways()`.
fn apply_known_controllers(
    rm: &ResourceManagerConfig,
    classes: &[ClassStatus],
) -> (ResourceManagerConfig, Vec<String>) {
    let mut out = rm.clone();
    let mut lines = Vec::new();
    for (class, target) in classes.iter().zip(rm.gateways()) {
        let Some(known) = class.controller().and_then(controllers::known) else {
            continue;
        };
        let found = known.unservable(out.port_range(), &out.excluded_port_set());
        let gateway = format!("{}/{}", target.gateway_namespace, target.gateway_name);
        let mut line = format!("Gateway {gateway}: {} ({})", known.name, known.note);
        if !found.is_empty() {
            let why = controllers::describe(known, &found);
            tracing::warn!(resource_manager = %rm.name, gateway = %gateway, controller = known.name, excluded = %why, "excluding ports of the range that the Gateway's controller cannot serve");
            let _ = write!(line, "; excluded {} port(s): {why}", found.len());
            out.excluded_ports
                .extend(found.keys().map(|p| PortOrRange::Port(i64::from(*p))));
        }
        lines.push(line);
    }
    (out, lines)
}

/// What one Gateway has room for: the answer to "why is my task waiting".
#[derive(Debug, Clone, serde::Serialize)]
pub struct Capacity {
    pub resource_manager: String,
    pub apiserver: String,
    pub gateway: String,
    pub listeners: usize,
    pub listener_limit: usize,
    pub foreign_ports: Vec<u16>,
    pub range: String,
    pub excluded: usize,
    pub claimed: usize,
    pub free: usize,
}

/// Capacity of every configured Gateway: listeners from the watch, claims from the KV bucket.
///
/// # Errors
/// [`StartError`] when the KV bucket cannot be read.
pub async fn capacity(servers: &Servers) -> Result<Vec<Capacity>, StartError> {
    let mut out = Vec::new();
    for c in &servers.rms {
        let g = &c.config.internal_task_gateway;
        let rm = RmContext::new(&c.config);
        for (member, target) in c.pool.iter().zip(&rm.pool) {
            let on = &target.gateway;
            let view = member.view();
            let claimed = claims::claimed_ports(&servers.store, &rm, on).await?;
            let pv = PortView {
                excluded: c.config.excluded_port_set(),
                foreign: view.foreign_ports.clone(),
                taken: claimed.clone(),
            };
            out.push(Capacity {
                resource_manager: c.config.name.clone(),
                apiserver: c.server.clone(),
                gateway: format!("{}/{}", on.namespace, on.name),
                listeners: view.listeners.len(),
                listener_limit: rm.listener_limit,
                foreign_ports: view.foreign_ports.iter().copied().collect(),
                range: format!(
                    "{}-{}",
                    g.gateway_port_range_start, g.gateway_port_range_end
                ),
                excluded: pv.excluded.len(),
                claimed: claimed.len(),
                free: allocator::candidates(c.config.port_range(), &pv, 0).count(),
            });
        }
    }
    Ok(out)
}

/// One reconcile pass over every resource manager, for `itgctl reconcile`. With `dry_run`, nothing changes.
///
/// # Errors
/// A server could not be read.
pub async fn reconcile_once(
    config: &Config,
    servers: &Servers,
    dry_run: bool,
) -> Result<Vec<(String, Vec<Action>)>, String> {
    reconcile_once_with(config, servers, dry_run, config.worker.reconcile_hold_off.0).await
}

/// [`reconcile_once`] with another hold-off: one shorter than the config accepts acts on what was just
/// left behind, and is safe only while no worker serves these resource managers.
///
/// # Errors
/// A server could not be read.
pub async fn reconcile_once_with(
    config: &Config,
    servers: &Servers,
    dry_run: bool,
    hold_off: std::time::Duration,
) -> Result<Vec<(String, Vec<Action>)>, String> {
    let mut out = Vec::new();
    for c in &servers.rms {
        let mut actions = Vec::new();
        for mut r in reconcilers(config, servers, c, hold_off) {
            actions.extend(r.pass(dry_run).await?);
        }
        out.push((c.config.name.clone(), actions));
    }
    Ok(out)
}

/// The handler of one resource manager, over every Gateway of its pool.
fn handler(config: &Config, servers: &Servers, c: &Connected) -> Handler<KvStore, Backend> {
    Handler::with_pool(
        RmContext::new(&c.config),
        servers.store.clone(),
        c.pool.clone(),
        config.worker.clone(),
    )
}

/// One reconciler per Gateway of the resource manager's pool, its own Gateway's first.
fn reconcilers(
    config: &Config,
    servers: &Servers,
    c: &Connected,
    hold_off: Duration,
) -> Vec<Reconciler<KvStore, Backend>> {
    let handler = handler(config, servers, c);
    c.pool
        .iter()
        .enumerate()
        .map(|(at, member)| {
            Reconciler::new(
                handler.clone(),
                servers.store.clone(),
                member.clone(),
                hold_off,
            )
            .purging_tombstones_after(config.jetstream.events_max_age.0)
            .judging(at)
        })
        .collect()
}

/// A human-readable report of what was found: JetStream, each Gateway, its listeners and free ports.
///
/// # Errors
/// [`StartError`] when the KV bucket cannot be read.
pub async fn report(config: &Config, servers: &Servers) -> Result<String, StartError> {
    let mut out = String::new();
    let info = servers.nats.server_info();
    let _ = writeln!(
        out,
        "NATS {} at {}: JetStream available (server {})",
        info.version,
        crate::config::redacted_url(&config.nats.url),
        info.server_name
    );
    let rows = capacity(servers).await?;
    for rm in &servers.rms {
        let _ = writeln!(
            out,
            "resource manager {}: {}; {}; ready {}",
            rm.config.name,
            rm.class,
            rm.gateway.describe(),
            if rm.config.wait_for_controller {
                "waits for the controller"
            } else {
                "does not wait for a controller (wait_for_controller: false)"
            }
        );
        for line in &rm.controllers {
            let _ = writeln!(out, "resource manager {}: {line}", rm.config.name);
        }
        for c in rows.iter().filter(|c| c.resource_manager == rm.config.name) {
            let _ = writeln!(
                out,
                "resource manager {}: apiserver via {}; Gateway {} present with {} listener(s) ({} foreign on ports {:?}); ports {}: {} free, {} claimed, listener slots {} of {}",
                c.resource_manager,
                c.apiserver,
                c.gateway,
                c.listeners,
                c.foreign_ports.len(),
                c.foreign_ports,
                c.range,
                c.free,
                c.claimed,
                c.listeners,
                c.listener_limit,
            );
        }
    }
    Ok(out)
}

/// Runs the worker until `shutdown` turns true, then until every consumer loop has let its events in
/// flight finish. A consumer loop that panics is logged; the others keep serving.
///
/// # Errors
/// [`StartError`] from start-up.
pub async fn run(
    config: Config,
    servers: Servers,
    shutdown: watch::Receiver<bool>,
) -> Result<(), StartError> {
    let replier = if config.jetstream.hub_domain.is_some() {
        JetStreamReplier::at_site(servers.js.clone())
    } else {
        JetStreamReplier::new(servers.js.clone())
    };
    let health = Arc::new(Health::default());
    let (admin, serve_admin) = admin::bind(&config.admin.address, health.clone())
        .await
        .map_err(|e| StartError::Admin {
            address: config.admin.address.clone(),
            message: e.to_string(),
        })?;
    tracing::info!(%admin, "serving /healthz, /readyz and /metrics");
    let side = tokio::spawn(async move {
        if let Err(e) = serve_admin.await {
            tracing::error!(error = %e, "admin endpoint stopped");
        }
    });
    let watched = servers
        .rms
        .iter()
        .map(|c| (RmContext::new(&c.config), c.pool.clone()))
        .collect();
    let checks = tokio::spawn(health.clone().watch(
        servers.nats.clone(),
        watched,
        Duration::from_secs(5),
    ));
    let backlog = tokio::spawn(watch_backlog(
        servers.js.clone(),
        config.jetstream.clone(),
        servers.rms.iter().map(|c| c.config.name.clone()).collect(),
        Duration::from_secs(5),
    ));
    {
        let (health, mut shutdown) = (health.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _ = shutdown.wait_for(|s| *s).await;
            health.shutting_down();
        });
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut side_tasks = Vec::new();
    let pacing = crate::consumer::Pacing {
        worker: config.worker.clone(),
        ack_wait: config.jetstream.ack_wait.0,
        max_deliver: config.jetstream.max_deliver,
    };
    for c in &servers.rms {
        let max_ack_pending = i64::try_from(config.worker.concurrency * 64).unwrap_or(i64::MAX);
        let consumer = nats::ensure_consumer(
            &servers.js,
            &config.jetstream,
            &c.config.name,
            max_ack_pending,
        )
        .await?;
        let handler = handler(&config, &servers, c);
        let mut reconcilers = reconcilers(&config, &servers, c, config.worker.reconcile_hold_off.0);
        let (every, mut stop) = (config.worker.reconcile_interval.0, shutdown.clone());
        let rm_name = c.config.name.clone();
        crate::metrics::get().register_rm(&rm_name);
        side_tasks.push(tokio::spawn(tracing::Instrument::instrument(
            async move {
                // At start, then every interval, until shutdown.
                loop {
                    let mut ok = true;
                    for reconciler in &mut reconcilers {
                        if let Err(e) = reconciler.pass(false).await {
                            ok = false;
                            tracing::warn!(error = %e, "reconcile pass failed; next pass retries");
                        }
                    }
                    #[allow(clippy::cast_precision_loss)]
                    let now = jiff::Timestamp::now().as_millisecond() as f64 / 1e3;
                    crate::metrics::get().reconcile_pass(&rm_name, ok, now);
                    tokio::select! {
                        () = tokio::time::sleep(every) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
            },
            tracing::info_span!("reconciler", resource_manager = %c.config.name),
        )));
        let span = tracing::info_span!("consumer", resource_manager = %c.config.name);
        tasks.spawn(tracing::Instrument::instrument(
            crate::consumer::run(
                handler,
                consumer,
                replier.clone(),
                pacing.clone(),
                shutdown.clone(),
            ),
            span,
        ));
        tracing::info!(resource_manager = %c.config.name, "serving events");
    }
    // Ready only now: a worker counted ready while its later consumers are still being made serves only
    // some resource managers.
    let mut hub = servers
        .hub
        .map(|h| tokio::spawn(h.lay_out_until_done(health.clone())));
    health.serving();
    loop {
        tokio::select! {
            res = tasks.join_next() => match res {
                None => break,
                Some(Err(e)) => tracing::error!(error = %e, "a consumer task panicked"),
                Some(Ok(())) => {}
            },
            Some(done) = async { Some(hub.as_mut()?.await) }, if hub.is_some() => {
                hub = None;
                // Only a refusal no retry mends ends the laying out: the worker stops as it would at start.
                if let Ok(Err(e)) = done {
                    return Err(e.into());
                }
            }
        }
    }
    side.abort();
    checks.abort();
    backlog.abort();
    for t in side_tasks {
        t.abort();
    }
    Ok(())
}

/// Reads each resource manager's backlog (its consumer's pending and unacknowledged events, its dead
/// letters) every `every` into the metrics: off the event path, one request per stream and resource manager.
/// A failed reading is logged and keeps the last values.
async fn watch_backlog(
    js: async_nats::jetstream::Context,
    cfg: crate::config::JetStreamConfig,
    rms: Vec<String>,
    every: Duration,
) {
    loop {
        for rm in &rms {
            match nats::backlog(&js, &cfg, rm).await {
                Ok(b) => {
                    let m = crate::metrics::get();
                    let labels = crate::metrics::rm(rm);
                    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                    m.consumer_pending.get_or_create(&labels).set(n(b.pending));
                    m.consumer_ack_pending
                        .get_or_create(&labels)
                        .set(n(b.ack_pending));
                    m.dead_letters.get_or_create(&labels).set(n(b.dead_letters));
                }
                Err(e) => {
                    tracing::warn!(resource_manager = %rm, error = %e, "could not read the backlog; the metrics keep the last reading");
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rm(range: (u16, u16)) -> ResourceManagerConfig {
        let yaml = format!(
            "nats: {{url: \"nats://127.0.0.1:4222\"}}\nresource_managers:\n  - name: rm\n    internal_task_gateway: {{gateway_name: gw, gateway_namespace: ns, gateway_ip: 203.0.113.1, gateway_port_range_start: {}, gateway_port_range_end: {}}}\n",
            range.0, range.1
        );
        Config::parse(&yaml, "test config")
            .expect("valid")
            .resource_managers
            .remove(0)
    }

    fn class(controller: &str) -> ClassStatus {
        ClassStatus::Unwritten {
            class: "c".into(),
            controller: controller.into(),
        }
    }

    #[test]
    fn ports_a_known_controller_cannot_serve_are_excluded_and_reported() {
        let (out, lines) = apply_known_controllers(
            &rm((18999, 19004)),
            &[class(controllers::ENVOY_GATEWAY.controller_name)],
        );
        assert_eq!(
            out.excluded_port_set(),
            [19000, 19001, 19002, 19003].into_iter().collect()
        );
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("Gateway ns/gw: Envoy Gateway (")
                && lines[0].ends_with("; excluded 4 port(s): 19000-19003 land on Envoy Gateway's own port(s) 19000-19003"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn an_unknown_or_unreadable_class_changes_nothing() {
        let unread = ClassStatus::Unknown {
            class: "c".into(),
            why: "no such GatewayClass".into(),
        };
        for c in [class("internal-task-gateway.io/none"), unread] {
            let (out, lines) = apply_known_controllers(&rm((19000, 19003)), &[c]);
            assert!(out.excluded_port_set().is_empty());
            assert!(lines.is_empty());
        }
    }
}
