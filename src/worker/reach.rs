//! Reaching: after the controller's verdict, whether its data plane serves each port of an allocation.

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
    /// Why the data plane of the pool's Gateway `at` does not serve `rec`'s ports, or `None` when it serves
    /// every one (or cannot be reached from here, where the controller's status stands). The ports it
    /// refused are avoided on that Gateway for a while, as a conflicted port is.
    pub(super) async fn unserved(&self, at: usize, rec: &Record) -> Option<String> {
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
            match served {
                Served::Yes => {}
                Served::No => refused.push(port),
                Served::CannotTell(why) => {
                    tracing::warn!(address = %host, %why, "the data plane probe cannot reach the Gateway's address; ready rests on the controller's status for a minute. Set data_plane_probe.address to an address the worker reaches, or data_plane_probe.enabled: false");
                    self.mark_unreachable(at);
                }
            }
        }
        if refused.is_empty() {
            return None;
        }
        let g = &self.rm.pool[at].gateway;
        crate::metrics::get()
            .data_plane_refused
            .get_or_create(&crate::metrics::gateway(
                &self.rm.name,
                &g.namespace,
                &g.name,
            ))
            .inc_by(refused.len() as u64);
        for &port in &refused {
            self.unserved_ports
                .note(at, port, self.timing.capacity_deadline.0);
        }
        Some(format!(
            "the Gateway's data plane refused every connection to {} for {} although its controller reports the listener programmed (its envoy is down, or could not bind the port)",
            refused
                .iter()
                .map(|p| probe::socket_address(host, *p))
                .collect::<Vec<_>>()
                .join(", "),
            humantime::format_duration(cfg.grace.0)
        ))
    }

    fn unreachable_now(&self, at: usize) -> bool {
        self.unreachable.lock().is_ok_and(|mut m| {
            let now = clock::instant();
            m.retain(|_, until| *until > now);
            m.contains_key(&at)
        })
    }

    fn mark_unreachable(&self, at: usize) {
        if let Ok(mut m) = self.unreachable.lock() {
            m.insert(at, clock::instant() + UNREACHABLE_FOR);
        }
    }
}
