//! The lifecycles section: lifecycles per second in each mode, at 1, 2 and 4 workers, each beside the floor
//! at the same number in flight.

use std::sync::Arc;
use std::time::Duration;

use crate::drive;
use crate::floor::Mode;
use crate::report::{Target, compared, info};
use crate::{Bench, FLOOR_LIFE_PORTS, LIFE_IN_FLIGHT, RANGE, apiserver, calls, cpu, floor, plural};

impl Bench {
    /// Lifecycles per second in each mode, each beside its floor.
    pub(crate) async fn lifecycles(&mut self) {
        if self.wants(Mode::Gateway) {
            let first = self.lifecycles_gateway().await;
            self.floor_lifecycles_gateway(first).await;
        }
        if self.wants(Mode::ListenerSet) {
            self.lifecycles_listenerset().await;
        }
    }

    /// `n` of the floor's lifecycles of `mode` on resource manager `i`'s Gateway, LIFE_IN_FLIGHT at a time
    /// over `clients` floors (each with its own NATS and apiserver clients, as each worker has).
    async fn floor_lifecycles(&self, mode: Mode, i: usize, clients: usize, n: usize) -> Duration {
        let mut floors = Vec::new();
        for _ in 0..clients {
            floors.push(Arc::new(self.floor(mode, i).await));
        }
        floor::lifecycles(&floors, n, LIFE_IN_FLIGHT, FLOOR_LIFE_PORTS).await
    }

    /// The Gateway mode's floor at the one-Gateway figures' concurrency, on the same Gateway, run after
    /// them (not interleaved: the rows above are kept as they were), with 1 and 4 sets of clients.
    async fn floor_lifecycles_gateway(&mut self, (i, w1, w4): (usize, f64, f64)) {
        let n = self.size.lifecycles;
        let mut floor_rates = Vec::new();
        for (clients, worker_rate) in [(1, w1), (4, w4)] {
            let took = self.floor_lifecycles(Mode::Gateway, i, clients, n).await;
            let f = n as f64 / took.as_secs_f64();
            floor_rates.push(f);
            self.rows.push(compared(
                format!(
                    "lifecycles/s, {}, 1 Gateway, Gateway mode / its floor ({LIFE_IN_FLIGHT} in flight)",
                    plural(clients, "worker")
                ),
                format!("{worker_rate:.1}/s"),
                format!(
                    "floor {f:.1}/s ({n} in {:.1} s, {}, run after the worker's)",
                    took.as_secs_f64(),
                    plural(clients, "client set")
                ),
                worker_rate / f,
                Target::AtLeast(0.8),
            ));
        }
        let (fs, ws) = (floor_rates[1] / floor_rates[0], w4 / w1);
        let mut r = info(
            "lifecycles/s at 4 workers / at 1 worker, 1 Gateway, Gateway mode",
            format!("{ws:.2}"),
        );
        r.reference = format!("floor 4 client sets / 1: {fs:.2}");
        r.ratio = Some(ws / fs);
        self.rows.push(r);
    }

    /// Lifecycles per second in ListenerSet mode on one Gateway, at 1 and 4 workers, each interleaved
    /// with its floor at the same number in flight (worker, floor, floor, worker: half the lifecycles in
    /// each), and the Gateway's writes meanwhile.
    async fn lifecycles_listenerset(&mut self) {
        let mode = Mode::ListenerSet;
        let idx = self.rms_in(mode, "lifels", 1, RANGE).await;
        let targets = self.targets(&idx).await;
        let writes = self.count_writes(&idx).await;
        let kube = self.env.kube().await;
        let api = apiserver::snapshot(&kube).await;
        let n = self.size.lifecycles;
        let (h, rest) = (n / 2, n - n / 2);
        let mut exposures = 0;
        let mut rates = Vec::new();
        for workers in [1, 4] {
            let ws = self.workers(&idx, workers).await;
            let calls = calls::snapshot();
            let (t1, r1) = drive::lifecycles(&targets, &self.waiter, h, LIFE_IN_FLIGHT).await;
            let f1 = self.floor_lifecycles(mode, idx[0], workers, h).await;
            let f2 = self.floor_lifecycles(mode, idx[0], workers, rest).await;
            let (t2, r2) = drive::lifecycles(&targets, &self.waiter, rest, LIFE_IN_FLIGHT).await;
            let calls = calls.since();
            for w in ws {
                w.stop().await;
            }
            exposures += n;
            let (took, ftook, refused) = (t1 + t2, f1 + f2, r1 + r2);
            let (w, f) = (
                n as f64 / took.as_secs_f64(),
                n as f64 / ftook.as_secs_f64(),
            );
            rates.push((w, f));
            let mut reference = format!(
                "floor {f:.1}/s ({n} in {:.1} s, {}, interleaved)",
                ftook.as_secs_f64(),
                plural(workers, "client set")
            );
            if refused > 0 {
                reference.push_str(&format!("; {refused} refused"));
            }
            self.rows.push(compared(
                format!(
                    "lifecycles/s, {}, 1 Gateway, ListenerSet mode / its floor ({LIFE_IN_FLIGHT} in flight)",
                    plural(workers, "worker")
                ),
                format!("{w:.1}/s ({n} in {:.1} s)", took.as_secs_f64()),
                reference,
                w / f,
                Target::AtLeast(0.8),
            ));
            self.rows.push(info(
                format!(
                    "  worker's apiserver calls, {workers} worker(s), 1 Gateway, ListenerSet mode"
                ),
                calls,
            ));
        }
        self.rows.push(info(
            "  apiserver writes during the ListenerSet-mode lifecycles, worker's and floor's (count x mean)",
            api.since(&kube).await,
        ));
        let (ws, fs) = (rates[1].0 / rates[0].0, rates[1].1 / rates[0].1);
        self.rows.push(compared(
            "lifecycles/s at 4 workers / at 1 worker, 1 Gateway, ListenerSet mode / the same of its floor",
            format!("{ws:.2} ({:.1}/s / {:.1}/s)", rates[1].0, rates[0].0),
            format!(
                "floor 4 client sets / 1: {fs:.2} ({:.1}/s / {:.1}/s)",
                rates[1].1, rates[0].1
            ),
            ws / fs,
            Target::AtLeast(0.8),
        ));
        self.note_writes("lifecycles", writes, exposures).await;
    }

    /// Lifecycles per second at 1, 2 and 4 workers, on one Gateway and over eight. Returns the first
    /// resource manager and its rates at 1 and 4 workers, for the floor's figures.
    async fn lifecycles_gateway(&mut self) -> (usize, f64, f64) {
        let idx = self.rms("life", 8).await;
        let kube = self.env.kube().await;
        let writes = apiserver::snapshot(&kube).await;
        let mut rates = Vec::new();
        for gateways in [1, 8] {
            let on = &idx[..gateways];
            let targets = self.targets(on).await;
            for workers in [1, 2, 4] {
                let ws = self.workers(on, workers).await;
                let n = self.size.lifecycles;
                let cpu = cpu::start();
                let calls = calls::snapshot();
                let (took, refused) =
                    drive::lifecycles(&targets, &self.waiter, n, LIFE_IN_FLIGHT).await;
                let shares = cpu.shares();
                for w in ws {
                    w.stop().await;
                }
                let rate = n as f64 / took.as_secs_f64();
                rates.push(((gateways, workers), rate));
                let mut r = info(
                    format!(
                        "lifecycles/s, {workers} worker{}, {gateways} Gateway{}",
                        if workers == 1 { "" } else { "s" },
                        if gateways == 1 { "" } else { "s" }
                    ),
                    format!("{rate:.1}/s ({n} in {:.1} s)", took.as_secs_f64()),
                );
                r.reference = format!("CPU of one core: {shares}");
                if refused > 0 {
                    r.reference.push_str(&format!("; {refused} refused"));
                }
                self.rows.push(r);
                if workers != 2 {
                    self.rows.push(info(
                        format!(
                            "  worker's apiserver calls, {workers} worker(s), {gateways} Gateway(s)"
                        ),
                        calls.since(),
                    ));
                }
            }
        }
        self.rows.push(info(
            "  apiserver writes during all lifecycles (count x mean)",
            writes.since(&kube).await,
        ));
        let rm = &self.rms[idx[0]];
        let gw = kube::Api::<gateway_api::experimental::gateways::Gateway>::namespaced(
            self.env.kube().await,
            &rm.gateway_ns,
        )
        .get(&rm.gateway)
        .await
        .expect("gateway");
        let entries = gw.metadata.managed_fields.as_ref().map_or(0, Vec::len);
        let bytes = serde_json::to_vec(&gw).map_or(0, |b| b.len());
        self.rows.push(info(
            "first Gateway after all its lifecycles",
            format!(
                "{entries} managedFields entries, {:.1} KiB",
                bytes as f64 / 1024.0
            ),
        ));
        let rate = |k| rates.iter().find(|(c, _)| *c == k).map_or(0.0, |(_, r)| *r);
        let top = rate((8, 4));
        self.rows.push(compared(
            "lifecycles/s, 4 workers over 8 Gateways / 1 worker over 8",
            format!("{top:.1}/s"),
            format!("{:.1}/s", rate((8, 1))),
            top / rate((8, 1)),
            Target::AtLeast(2.5),
        ));
        self.rows.push(info(
            "lifecycles/s, 4 workers over 8 Gateways / 1 worker on 1",
            format!("{:.2}x (of {:.1}/s)", top / rate((1, 1)), rate((1, 1))),
        ));
        (idx[0], rate((1, 1)), rate((1, 4)))
    }
}
