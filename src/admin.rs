//! The admin endpoint: `/healthz` (the process runs), `/readyz` (NATS, every apiserver and every Gateway
//! watch answer, and no shutdown has begun) and `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::allocator::{self, PortView};
use crate::cluster::Inventory;
use crate::metrics;
use crate::resource_manager::RmContext;

/// What `/readyz` answers, refreshed by [`Health::watch`].
#[derive(Default)]
pub struct Health {
    /// Why the worker is not ready; empty when it is.
    problems: Mutex<Vec<String>>,
    checked: AtomicBool,
    /// Set once every resource manager's consumer exists: before that the worker serves nothing.
    serving: AtomicBool,
    shutting_down: AtomicBool,
    /// What the worker still waits for while it serves (a site's hub, over its leaf-node link).
    waiting: Mutex<Option<String>>,
}

impl Health {
    /// Marks the start of shutdown: `/readyz` turns false so no new traffic is routed here.
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Marks that every resource manager's consumer exists and is pulled.
    pub fn serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    /// Sets what the worker waits for, or `None` once it waits for nothing.
    pub fn waiting_for(&self, what: Option<String>) {
        if let Ok(mut w) = self.waiting.lock() {
            *w = what;
        }
    }

    fn readiness(&self) -> Result<(), String> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        if let Some(what) = self.waiting.lock().ok().and_then(|w| w.clone()) {
            return Err(format!("waiting for {what}"));
        }
        if !self.serving.load(Ordering::SeqCst) {
            return Err("the consumers are not all created yet".into());
        }
        if !self.checked.load(Ordering::SeqCst) {
            return Err("not checked yet".into());
        }
        let problems = self.problems.lock().map(|p| p.clone()).unwrap_or_default();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Checks NATS, each apiserver and each Gateway every `every`, and refreshes the port gauges. `rms`
    /// holds each resource manager with its pool's clusters, in the order of [`RmContext::pool`].
    pub async fn watch<C: Inventory>(
        self: Arc<Self>,
        nats: async_nats::Client,
        rms: Vec<(RmContext, Vec<C>)>,
        every: Duration,
    ) {
        loop {
            let mut problems = Vec::new();
            if nats.connection_state() != async_nats::connection::State::Connected {
                problems.push(format!("NATS is {}", nats.connection_state()));
            }
            let nats_problems = problems.len();
            for (rm, pool) in &rms {
                let before = problems.len();
                // One apiserver per resource manager: its pool's Gateways are all in that cluster.
                if let Some(first) = pool.first()
                    && let Err(e) = first.check().await
                {
                    problems.push(format!("apiserver of {}: {e}", rm.name));
                }
                for (gw, target) in pool.iter().zip(&rm.pool) {
                    let g = &target.gateway;
                    let view = gw.view();
                    if !view.present {
                        problems.push(format!(
                            "Gateway {}/{} of {} not found",
                            g.namespace, g.name, rm.name
                        ));
                    }
                    let labels = metrics::gateway(&rm.name, &g.namespace, &g.name);
                    let in_use = view.owned_ports.len();
                    let pv = PortView {
                        excluded: rm.excluded.clone(),
                        foreign: view.foreign_ports.clone(),
                        taken: view.owned_ports.clone(),
                    };
                    let free = allocator::candidates(rm.range.clone(), &pv, 0).count();
                    let m = metrics::get();
                    m.ports_in_use
                        .get_or_create(&labels)
                        .set(i64::try_from(in_use).unwrap_or(i64::MAX));
                    m.ports_free
                        .get_or_create(&labels)
                        .set(i64::try_from(free).unwrap_or(i64::MAX));
                    let slots = rm.listener_limit.saturating_sub(view.listeners.len());
                    m.listener_slots_free
                        .get_or_create(&labels)
                        .set(i64::try_from(slots).unwrap_or(i64::MAX));
                }
                let serves = nats_problems == 0
                    && problems.len() == before
                    && self.serving.load(Ordering::SeqCst)
                    && !self.shutting_down.load(Ordering::SeqCst);
                metrics::get()
                    .rm_ready
                    .get_or_create(&metrics::rm(&rm.name))
                    .set(i64::from(serves));
            }
            if let Ok(mut p) = self.problems.lock() {
                *p = problems;
            }
            self.checked.store(true, Ordering::SeqCst);
            tokio::time::sleep(every).await;
        }
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    match health.readiness() {
        Ok(()) => (StatusCode::OK, "ok".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn metrics_text() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::get().encode(),
    )
}

/// Binds the admin address. Returns the bound address (useful with port 0) and the server future.
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(
    address: &str,
    health: Arc<Health>,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>> + Send + use<>,
)> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(health);
    Ok((bound, async move { axum::serve(listener, app).await }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_once_checked_and_serving_and_not_while_shutting_down() {
        let h = Health::default();
        h.checked.store(true, Ordering::SeqCst);
        assert!(h.readiness().unwrap_err().contains("consumers"));
        h.serving();
        assert_eq!(h.readiness(), Ok(()));
        h.waiting_for(Some("the hub".into()));
        assert_eq!(h.readiness(), Err("waiting for the hub".into()));
        h.waiting_for(None);
        assert_eq!(h.readiness(), Ok(()));
        h.shutting_down();
        assert_eq!(h.readiness(), Err("shutting down".into()));
    }
}
