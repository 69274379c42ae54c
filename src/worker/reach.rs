//! Reaching: after the controller's verdict, whether its data plane serves each port of an allocation.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Handler;
use crate::clock;
use crate::cluster::Cluster;
use crate::probe::{self, Served};
use crate::state::Record;
use crate::store::Store;

/// How long a Gateway whose address the probe cannot reach is not probed again.
const UNREACHABLE_FOR: Duration = Duration::from_secs(60);

impl<S: Store, C: Cluster> Handler<S, C> {
    /// The ports of `rec` the data plane of the pool's Gateway `at` refused, and why that is told, or
    /// `None` when it serves every one (or cannot be reached from here, where the controller's status
    /// stands). Nothing is noted here: the caller notes the refused ports once it won the give-back that
    /// follows ([`Handler::note_unserved`]), so a probe cut short by an `ended` marks no port.
    pub(super) async fn unserved(&self, at: usize, rec: &Record) -> Option<(Vec<u16>, String)> {
        if self.unreachable_now(at) {
            return None;
        }
        let cfg = &self.rm.config.data_plane_probe;
        let host = self.rm.pool[at].probe_host.as_str();
        let probes = rec.ports.iter().map(|b| async move {
            let start = clock::instant();
            let mut attempt = 0;
            loop {
                let reach = self
                    .data_plane
                    .connect(host, b.gateway_port, cfg.connect_timeout.0)
                    .await;
                if let Some(served) = probe::conclude(&reach, start.elapsed(), cfg.grace.0) {
                    return (b.gateway_port, served);
                }
                tokio::time::sleep(probe::next_pause(attempt)).await;
                attempt += 1;
            }
        });
        let results = futures::future::join_all(probes).await;
        let mut refused = Vec::new();
        for (port, served) in results {
            // One port's silence, or the worker's own shortage, is not the address's: only no route, or
            // several silent ports with no answer between them, stop the probing of the whole Gateway.
            if self.note_heard(at, port, &served) {
                tracing::warn!(address = %host, why = ?served, "the data plane probe cannot reach the Gateway's address; ready rests on the controller's status for a minute. Set data_plane_probe.address to an address the worker reaches, or data_plane_probe.enabled: false");
                self.mark_unreachable(at);
            }
            match served {
                Served::Yes => {}
                Served::No => refused.push(port),
                Served::CannotTell { why, .. } => {
                    tracing::info!(address = %host, port, %why, "the data plane probe could not tell whether this port is served; its ready rests on the controller's status");
                }
            }
        }
        if refused.is_empty() {
            if let Ok(mut m) = self.refusals.lock() {
                m.remove(&at);
            }
            return None;
        }
        let why = format!(
            "the Gateway's data plane refused every connection to {} for {} although its controller reports the listener programmed (its envoy is down, or could not bind the port)",
            refused
                .iter()
                .map(|p| probe::socket_address(host, *p))
                .collect::<Vec<_>>()
                .join(", "),
            humantime::format_duration(cfg.grace.0)
        );
        Some((refused, why))
    }

    /// Notes ports the data plane of Gateway `at` refused: the port search there avoids them for a while,
    /// as a conflicted port, and a Gateway that refused ports one after another with none served since
    /// looks down to the pool's placement.
    pub(super) fn note_unserved(&self, at: usize, refused: &[u16]) {
        let g = &self.rm.pool[at].gateway;
        crate::metrics::get()
            .data_plane_refused
            .get_or_create(&crate::metrics::gateway(
                &self.rm.name,
                &g.namespace,
                &g.name,
            ))
            .inc_by(refused.len() as u64);
        for &port in refused {
            self.unserved_ports
                .note(at, port, self.timing.capacity_deadline.0);
        }
        if let Ok(mut m) = self.refusals.lock() {
            let e = m.entry(at).or_insert((0, clock::instant()));
            *e = (e.0.saturating_add(refused.len()), clock::instant());
        }
    }

    /// Whether the data plane of Gateway `at` looks down: it refused more than one port lately (one port
    /// envoy could not bind is not a Gateway down) and served none since.
    pub(super) fn down_now(&self, at: usize) -> bool {
        self.refusals.lock().is_ok_and(|m| {
            m.get(&at)
                .is_some_and(|(n, last)| *n > 1 && last.elapsed() < self.timing.capacity_deadline.0)
        })
    }

    pub(super) fn unreachable_now(&self, at: usize) -> bool {
        self.unreachable.lock().is_ok_and(|mut m| {
            let now = clock::instant();
            m.until.retain(|_, until| *until > now);
            m.until.contains_key(&at)
        })
    }

    /// Takes in what the probe heard from one port of Gateway `at`; `true` when its address now counts as
    /// unreachable.
    fn note_heard(&self, at: usize, port: u16, served: &Served) -> bool {
        self.unreachable
            .lock()
            .is_ok_and(|mut m| m.heard.entry(at).or_default().note(port, served))
    }

    fn mark_unreachable(&self, at: usize) {
        if let Ok(mut m) = self.unreachable.lock() {
            m.until.insert(at, clock::instant() + UNREACHABLE_FOR);
            m.heard.remove(&at);
        }
    }
}

/// Which Gateways of the pool the probe cannot reach, until when, and what it heard from each lately.
#[derive(Debug, Default)]
pub(super) struct Unreachable {
    until: BTreeMap<usize, clock::Instant>,
    heard: BTreeMap<usize, probe::Silence>,
}
