//! What an exposure costs, against the calls it cannot avoid, on the real servers of `scripts/testenv`.
//!
//! `scripts/bench [--size ci|small|full] [--json] [--only <sections>]` runs it; see BENCHMARKS.md. Workers
//! run in this process (each with its own NATS and apiserver clients), except for the memory figure, which
//! is read from a real `itg-worker` process. Every ratio is taken within one run, because the machine is
//! noisy.

mod alloc;
mod apiserver;
mod calls;
#[path = "../../tests/common/mod.rs"]
mod common;
mod cpu;
mod drive;
mod floor;
mod gwwrites;
mod reachable;
mod report;
mod rss;
mod scale;
mod sites;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::{Env, Master, TestRm, Worker};
use drive::{Waiter, pcts};
use floor::{Floor, Mode};
use report::{Row, at_least, at_most, bound, info, ms};

/// How much of everything to do.
#[derive(Debug, Clone, Copy)]
struct Size {
    /// Timed exposures per latency sample (after a warm-up of 5).
    latency: usize,
    /// Lifecycles per throughput figure.
    lifecycles: usize,
    /// Allocations (and raw creates) for the allocator figure.
    allocations: usize,
    /// Live allocations for the memory figure, over `rss_gateways`.
    rss_live: usize,
    rss_gateways: usize,
    /// Lifecycles after which the worker's RSS is read, then read again after the second figure.
    churn: (usize, usize),
    /// Live allocations for the "how cost grows" figure: few, then many.
    live_few: usize,
    live_many: usize,
    /// Timed exposures at each of those.
    probes: usize,
    /// Timed exposures through envoy, each beside one of the floor's (after a warm-up of 2 each).
    reachable: usize,
    /// The size's name: at `ci`, what `scripts/test` runs, a section that cannot run fails instead of
    /// printing why it was skipped, as the tests do.
    name: &'static str,
}

impl Size {
    fn named(s: &str) -> Size {
        match s {
            "ci" => Size {
                latency: 10,
                lifecycles: 24,
                allocations: 200,
                rss_live: 20,
                churn: (20, 200),
                rss_gateways: 2,
                live_few: 10,
                live_many: 40,
                probes: 5,
                reachable: 5,
                name: "ci",
            },
            "small" => Size {
                latency: 100,
                lifecycles: 400,
                allocations: 1000,
                rss_live: 250,
                churn: (200, 1000),
                rss_gateways: 4,
                live_few: 10,
                live_many: 500,
                probes: 50,
                reachable: 50,
                name: "small",
            },
            "full" => Size {
                latency: 300,
                lifecycles: 2000,
                allocations: 4000,
                rss_live: 1000,
                churn: (200, 2000),
                rss_gateways: 16,
                live_few: 10,
                live_many: 2000,
                probes: 100,
                reachable: 300,
                name: "full",
            },
            other => panic!("unknown --size {other:?}: ci, small or full"),
        }
    }
}

/// What a growth section measured: p50s (worker, floor) at few and at many live, the floor's steps and the
/// worker's apiserver calls at each.
struct Growth {
    few: usize,
    many: usize,
    p: ((Duration, Duration), (Duration, Duration)),
    steps: (String, String),
    calls: (String, String),
}

/// Live allocations per Gateway: the range and listener cap are 64, one slot is the operator's placeholder
/// and a few stay free for the timed exposures.
const PER_GATEWAY: usize = 58;
const RANGE: (u16, u16) = (40000, 40063);
const IN_FLIGHT: usize = 32;
/// Lifecycles in flight per Gateway: half the listener cap, a busy Gateway.
const LIFE_IN_FLIGHT: usize = 16;
/// The range of a ListenerSet-mode Gateway that holds `live` allocations: no 64-listener cap there, so the
/// range bounds them (3,000 ports at least, a thousand more than `live` above that).
fn ls_range(live: usize) -> (u16, u16) {
    let len = u16::try_from(live.saturating_add(1000).max(3000)).unwrap_or(u16::MAX);
    (42000, 42000u16.saturating_add(len - 1).min(65000))
}
/// The floor's ports in the lifecycles figures, one per lane (outside every worker's range).
const FLOOR_LIFE_PORTS: u16 = 41600;

struct Bench {
    env: Env,
    waiter: Waiter,
    size: Size,
    rms: Vec<TestRm>,
    rows: Vec<Row>,
    /// The listener modes to run (`--modes`, both by default).
    modes: Vec<Mode>,
    /// Writes to the Gateway objects and the worker's exposures, over the ListenerSet-mode sections.
    ls_writes: (u64, usize, Vec<String>),
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

impl Bench {
    async fn rms(&mut self, prefix: &str, n: usize) -> Vec<usize> {
        self.rms_in(Mode::Gateway, prefix, n, RANGE).await
    }

    /// `n` resource managers of `mode`, each with a Gateway of its own and `range`.
    async fn rms_in(
        &mut self,
        mode: Mode,
        prefix: &str,
        n: usize,
        range: (u16, u16),
    ) -> Vec<usize> {
        let mut idx = Vec::new();
        for _ in 0..n {
            let mut rm = TestRm::new(&self.env, prefix, range).await;
            rm.extra.push_str(mode.extra());
            self.rms.push(rm);
            idx.push(self.rms.len() - 1);
        }
        idx
    }

    fn wants(&self, mode: Mode) -> bool {
        self.modes.contains(&mode)
    }

    /// A floor of `mode` on resource manager `i`'s Gateway, with clients of its own. After a worker has
    /// started: it creates the state bucket.
    async fn floor(&self, mode: Mode, i: usize) -> Floor {
        let rm = &self.rms[i];
        let (nats, kube) = (self.env.nats().await, self.env.kube().await);
        Floor::with_mode(mode, nats, kube, &rm.gateway_ns, &rm.gateway, &rm.task_ns).await
    }

    /// Starts counting writes to the Gateways of `idx`.
    async fn count_writes(&self, idx: &[usize]) -> gwwrites::Counter {
        let gws: Vec<(String, String)> = idx
            .iter()
            .map(|&i| (self.rms[i].gateway_ns.clone(), self.rms[i].gateway.clone()))
            .collect();
        gwwrites::start(&self.env.kube().await, &gws).await
    }

    /// Adds a ListenerSet-mode section's Gateway writes and exposures to the row of [`Bench::ls_row`].
    async fn note_writes(&mut self, section: &str, c: gwwrites::Counter, exposures: usize) {
        let (n, per) = c.stop().await;
        self.ls_writes.0 += n;
        self.ls_writes.1 += exposures;
        let per = if per.is_empty() {
            String::new()
        } else {
            format!(" ({per:?})")
        };
        self.ls_writes
            .2
            .push(format!("{section}: {n} over {exposures}{per}"));
    }

    /// The row of Gateway writes per exposure in ListenerSet mode, once those sections have run.
    fn ls_row(&mut self) {
        let (n, exposures, parts) = std::mem::take(&mut self.ls_writes);
        if exposures == 0 {
            return;
        }
        self.rows.push(Row {
            figure: "Gateway writes per exposure, ListenerSet mode (watch of each Gateway)".into(),
            value: format!("{:.3}", n as f64 / exposures as f64),
            reference: format!(
                "{n} writes over {exposures} exposures; {}",
                parts.join("; ")
            ),
            ratio: None,
            target: "0".into(),
            met: Some(n == 0),
        });
    }

    async fn targets(&self, idx: &[usize]) -> Vec<(Master, String)> {
        let mut out = Vec::new();
        for &i in idx {
            let rm = &self.rms[i];
            out.push((Master::new(&self.env, &rm.name).await, rm.task_ns.clone()));
        }
        out
    }

    async fn workers(&self, idx: &[usize], n: usize) -> Vec<Worker> {
        let rms: Vec<&TestRm> = idx.iter().map(|&i| &self.rms[i]).collect();
        let mut ws = Vec::new();
        for _ in 0..n {
            ws.push(Worker::start(common::config(&self.env, &rms, "")).await);
        }
        ws
    }

    /// Exposure latency in each mode; returns a resource manager of the section for the replay.
    async fn latency(&mut self) -> Option<usize> {
        let mut first = None;
        for mode in [Mode::Gateway, Mode::ListenerSet] {
            if self.wants(mode) {
                let rm = self.latency_in(mode).await;
                first = first.or(Some(rm));
            }
        }
        first
    }

    /// Exposure latency with 1 and 4 workers, each interleaved with the floor on the same Gateway.
    async fn latency_in(&mut self, mode: Mode) -> usize {
        let idx = self.rms_in(mode, "lat", 1, RANGE).await;
        let targets = self.targets(&idx).await;
        let (m, ns) = &targets[0];
        // The Gateway-mode rows keep their names; the others say their mode.
        let sfx = match mode {
            Mode::Gateway => String::new(),
            m => format!(", {}", m.label()),
        };
        let writes = self.count_writes(&idx).await;
        let mut exposures = 0;
        let mut fl = None;
        for workers in [1, 4] {
            let ws = self.workers(&idx, workers).await;
            if fl.is_none() {
                fl = Some(self.floor(mode, idx[0]).await);
            }
            let Some(fl) = fl.as_ref() else { continue };
            exposures += self.size.latency + 5;
            let calls = calls::snapshot();
            let (mut wk, mut fr) = (Vec::new(), Vec::new());
            for i in 0..self.size.latency + 5 {
                let port = 41000 + u16::try_from(i % 500).expect("port");
                let a = drive::alloc_id("lat");
                let fa = drive::alloc_id("floor");
                // Alternate which goes first, so neither always follows the other's cleanup.
                let (w, f) = if i % 2 == 0 {
                    let w = drive::expose(m, &self.waiter, &a, ns).await.expect("ready");
                    drive::end(m, &self.waiter, &a).await;
                    let f = fl.expose(&fa, port).await;
                    fl.withdraw(&fa, port).await;
                    (w, f)
                } else {
                    let f = fl.expose(&fa, port).await;
                    fl.withdraw(&fa, port).await;
                    let w = drive::expose(m, &self.waiter, &a, ns).await.expect("ready");
                    drive::end(m, &self.waiter, &a).await;
                    (w, f)
                };
                if i >= 5 {
                    wk.push(w);
                    fr.push(f);
                }
            }
            for w in ws {
                w.stop().await;
            }
            let (w, f) = (pcts(&wk), pcts(&fr));
            let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
            let tag = format!("{}{sfx}", plural(workers, "worker"));
            self.rows.push(info(
                format!("floor steps p50, run with {tag}"),
                fl.breakdown(),
            ));
            self.rows.push(info(
                format!("worker's apiserver calls (count x mean), run with {tag}"),
                calls.since(),
            ));
            if workers == 1 {
                self.rows.push(at_most(
                    format!("exposure p50, {tag}"),
                    ms(w.p50),
                    format!("floor p50 {}", ms(f.p50)),
                    ratio(w.p50, f.p50),
                    1.3,
                ));
                self.rows
                    .push(info(format!("exposure p95, {tag}"), ms(w.p95)));
                self.rows.push(at_most(
                    format!("exposure p99, {tag}"),
                    ms(w.p99),
                    format!("floor p99 {}", ms(f.p99)),
                    ratio(w.p99, f.p99),
                    2.0,
                ));
            } else {
                let mut r = info(
                    format!("exposure p50 / p95 / p99, {tag}"),
                    format!("{} / {} / {}", ms(w.p50), ms(w.p95), ms(w.p99)),
                );
                r.reference = format!("floor p50 {} / p99 {}", ms(f.p50), ms(f.p99));
                r.ratio = Some(ratio(w.p50, f.p50));
                self.rows.push(r);
            }
        }
        if mode == Mode::ListenerSet {
            self.note_writes("latency", writes, exposures).await;
        } else {
            drop(writes.stop().await);
        }
        idx[0]
    }

    /// Lifecycles per second in each mode, each beside its floor.
    async fn lifecycles(&mut self) {
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
            self.rows.push(at_least(
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
                0.8,
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
            self.rows.push(at_least(
                format!(
                    "lifecycles/s, {}, 1 Gateway, ListenerSet mode / its floor ({LIFE_IN_FLIGHT} in flight)",
                    plural(workers, "worker")
                ),
                format!("{w:.1}/s ({n} in {:.1} s)", took.as_secs_f64()),
                reference,
                w / f,
                0.8,
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
        self.rows.push(at_least(
            "lifecycles/s at 4 workers / at 1 worker, 1 Gateway, ListenerSet mode / the same of its floor",
            format!("{ws:.2} ({:.1}/s / {:.1}/s)", rates[1].0, rates[0].0),
            format!(
                "floor 4 client sets / 1: {fs:.2} ({:.1}/s / {:.1}/s)",
                rates[1].1, rates[0].1
            ),
            ws / fs,
            0.8,
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
        self.rows.push(at_least(
            "lifecycles/s, 4 workers over 8 Gateways / 1 worker over 8",
            format!("{top:.1}/s"),
            format!("{:.1}/s", rate((8, 1))),
            top / rate((8, 1)),
            2.5,
        ));
        self.rows.push(info(
            "lifecycles/s, 4 workers over 8 Gateways / 1 worker on 1",
            format!("{:.2}x (of {:.1}/s)", top / rate((1, 1)), rate((1, 1))),
        ));
        (idx[0], rate((1, 1)), rate((1, 4)))
    }

    async fn allocator(&mut self) {
        let js = jetstream::new(self.env.nats().await);
        let store = itg::nats::KvStore::open(&js, &Default::default())
            .await
            .expect("state bucket");
        let raw = js.get_key_value("ITG_STATE").await.expect("state bucket");
        let n = self.size.allocations;
        let creates = alloc::raw_create(&raw, n, 8, None).await;
        let (allocs, lost, spent) = alloc::allocator(&store, &raw, n, 8, false).await;
        self.rows.push(at_least(
            "port allocations/s, 8-way (range ends half full)",
            format!("{allocs:.0}/s ({lost} lost races)"),
            format!("raw kv.create {creates:.0}/s"),
            allocs / creates,
            0.8,
        ));
        // The profile: the same again in the other order, with the index's watch started untimed, and raw
        // creates under the same watch the index keeps (so the watch's own price shows).
        let (warm, warm_lost, warm_spent) = alloc::allocator(&store, &raw, n, 8, true).await;
        let watched = alloc::raw_create(&raw, n, 8, Some(&store)).await;
        let again = alloc::raw_create(&raw, n, 8, None).await;
        let share = |s: alloc::Spent| {
            let all = (s.search + s.create).as_secs_f64().max(1e-9);
            format!(
                "search {:.0}% (first search {}), create {:.0}%",
                s.search.as_secs_f64() / all * 100.0,
                ms(s.first_search),
                s.create.as_secs_f64() / all * 100.0
            )
        };
        self.rows.push(info(
            "  allocator's time, summed over its tasks",
            share(spent),
        ));
        let mut r = info(
            "  allocator with the index's watch started before the clock",
            format!(
                "{warm:.0}/s ({warm_lost} lost races; {})",
                share(warm_spent)
            ),
        );
        r.reference = format!("raw kv.create {again:.0}/s (run after it)");
        r.ratio = Some(warm / again);
        self.rows.push(r);
        let mut r = info(
            "  raw kv.create while the index's watch follows its keys",
            format!("{watched:.0}/s"),
        );
        r.reference = format!("raw kv.create {again:.0}/s (run after it)");
        r.ratio = Some(watched / again);
        self.rows.push(r);
    }

    /// Replays the events of a resource manager whose allocations have all ended: first at once, while the
    /// handler still withdraws what their cleanups released (a late apply can land within the reconciler's
    /// hold-off), then once the hold-off (5 s here, the shortest allowed) has passed, as a recovery replay of older events finds them.
    async fn replay(&mut self, rm: usize) {
        for (when, hold_off) in [
            ("just ended", "120s"),
            ("ended over the hold-off ago", "5s"),
        ] {
            if hold_off == "5s" {
                tokio::time::sleep(Duration::from_secs(6)).await;
            }
            self.replay_pass(rm, when, hold_off).await;
        }
    }

    /// One replay from sequence 1 over resource manager `rm`'s events, with `hold_off` as the worker's
    /// `reconcile_hold_off`: its rate and the worker's apiserver calls meanwhile.
    async fn replay_pass(&mut self, rm: usize, when: &str, hold_off: &str) {
        let extra = format!("  reconcile_hold_off: {hold_off}\n");
        let config = common::config(&self.env, &[&self.rms[rm]], &extra);
        let servers = itg::app::connect(&config).await.expect("connect");
        let c = &servers.rms[0];
        let handler = itg::worker::Handler::new(
            itg::resource_manager::RmContext::new(&c.config),
            servers.store.clone(),
            c.gateway.clone(),
            config.worker.clone(),
        );
        let replier = itg::nats::JetStreamReplier::new(servers.js.clone());
        let calls = calls::snapshot();
        let t0 = Instant::now();
        let summary = itg::replay::replay(
            &servers.js,
            &handler,
            &servers.store,
            &replier,
            itg::replay::From::Sequence(1),
            |_, _| {},
        )
        .await
        .expect("replay");
        let rate = summary.seen as f64 / t0.elapsed().as_secs_f64();
        self.rows.push(bound(
            format!(
                "replay of done events, {when} ({} events, {} already right)",
                summary.seen, summary.already_right
            ),
            rate,
            "events/s",
            ">= 5000".into(),
            rate >= 5000.0,
        ));
        self.rows.push(info(
            "  worker's apiserver calls during the replay",
            calls.since(),
        ));
    }

    async fn memory(&mut self) {
        if self.wants(Mode::Gateway) {
            self.memory_gateway().await;
        }
        if self.wants(Mode::ListenerSet) {
            // One Gateway: in ListenerSet mode the listener cap does not bound it, the range does.
            let live = self.size.live_many;
            let idx = self
                .rms_in(Mode::ListenerSet, "rssls", 1, ls_range(self.size.live_many))
                .await;
            let rms: Vec<&TestRm> = idx.iter().map(|&i| &self.rms[i]).collect();
            let (rss, hwm) = rss::worker_rss(&self.env, &self.waiter, &rms, live).await;
            self.rows.push(bound(
                format!(
                    "itg-worker RSS, {live} live allocations on 1 Gateway, ListenerSet mode (peak {hwm:.1} MiB)"
                ),
                rss,
                "MiB",
                "<= 64 MiB".into(),
                rss <= 64.0,
            ));
            // What ended allocations leave behind: nothing of theirs should stay in the process.
            let (first, total) = self.size.churn;
            let idx = self
                .rms_in(
                    Mode::ListenerSet,
                    "churnls",
                    1,
                    ls_range(self.size.live_many),
                )
                .await;
            let rms: Vec<&TestRm> = idx.iter().map(|&i| &self.rms[i]).collect();
            let (at_first, at_total) =
                rss::worker_rss_after_churn(&self.env, &self.waiter, &rms, first, total).await;
            self.rows.push(info(
                format!("itg-worker RSS after {first} lifecycles, ListenerSet mode, none live"),
                format!("{at_first:.1} MiB"),
            ));
            self.rows.push(bound(
                format!(
                    "itg-worker RSS after {total} lifecycles, same process (+{:.1} MiB)",
                    at_total - at_first
                ),
                at_total,
                "MiB",
                format!("<= {:.1} MiB (first figure + 10%)", at_first * 1.1),
                at_total <= at_first * 1.1,
            ));
        }
    }

    async fn memory_gateway(&mut self) {
        let idx = self.rms("rss", self.size.rss_gateways).await;
        let rms: Vec<&TestRm> = idx.iter().map(|&i| &self.rms[i]).collect();
        let (rss, hwm) = rss::worker_rss(&self.env, &self.waiter, &rms, self.size.rss_live).await;
        self.rows.push(bound(
            format!(
                "itg-worker RSS, {} live allocations over {} Gateways (peak {hwm:.1} MiB)",
                self.size.rss_live, self.size.rss_gateways
            ),
            rss,
            "MiB",
            "<= 64 MiB".into(),
            rss <= 64.0,
        ));
    }

    /// How cost grows with live allocations, in each mode.
    async fn growth(&mut self) {
        if self.wants(Mode::Gateway) {
            self.growth_gateway().await;
        }
        if self.wants(Mode::ListenerSet) {
            self.growth_listenerset().await;
        }
    }

    /// The worker's exposure and the floor's in turn on `target` (the first Gateway of the section):
    /// `n` timed pairs after 5 warm-ups; their p50s.
    async fn probe(&self, target: &(Master, String), fl: &Floor) -> (Duration, Duration) {
        let (m, ns) = target;
        let (mut s, mut f) = (Vec::new(), Vec::new());
        for i in 0..self.size.probes + 5 {
            let a = drive::alloc_id("probe");
            let d = drive::expose(m, &self.waiter, &a, ns)
                .await
                .expect("probe ready");
            drive::end(m, &self.waiter, &a).await;
            let fa = drive::alloc_id("floor");
            let fd = fl.expose(&fa, 41000).await;
            fl.withdraw(&fa, 41000).await;
            if i >= 5 {
                s.push(d);
                f.push(fd);
            }
        }
        (pcts(&s).p50, pcts(&f).p50)
    }

    /// Exposure p50 with few live allocations, then with many, on ONE Gateway in ListenerSet mode (no
    /// listener cap there), each beside the floor on that Gateway.
    async fn growth_listenerset(&mut self) {
        let mode = Mode::ListenerSet;
        let (few, many) = (self.size.live_few, self.size.live_many);
        let idx = self
            .rms_in(mode, "growls", 1, ls_range(self.size.live_many))
            .await;
        let targets = self.targets(&idx).await;
        let writes = self.count_writes(&idx).await;
        let ws = self.workers(&idx, 1).await;
        let fl = self.floor(mode, idx[0]).await;
        let t = Instant::now();
        let mut live = drive::fill(&targets, &self.waiter, few, IN_FLIGHT).await;
        let calls_few = calls::snapshot();
        // CPU per probe (a worker lifecycle and a floor one), by process: the profile of the growth.
        let cpu_few = cpu::start();
        let p_few = self.probe(&targets[0], &fl).await;
        let cpu_few = cpu_few.per_op(self.size.probes + 5);
        let steps_few = fl.breakdown();
        let calls_few = calls_few.since();
        let more = drive::fill(&targets, &self.waiter, many - few, IN_FLIGHT).await;
        live[0].extend(more.into_iter().flatten());
        let filled = t.elapsed();
        let calls_many = calls::snapshot();
        let cpu_many = cpu::start();
        let p_many = self.probe(&targets[0], &fl).await;
        let cpu_many = cpu_many.per_op(self.size.probes + 5);
        let steps_many = fl.breakdown();
        let calls_many = calls_many.since();
        drive::drain(&targets, &self.waiter, &live, IN_FLIGHT).await;
        for w in ws {
            w.stop().await;
        }
        let exposures = many + 2 * (self.size.probes + 5);
        let grow = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        let mut r = info(
            format!("worker p50 / floor p50 at {few} live and at {many} live, ListenerSet mode"),
            format!(
                "{:.2} / {:.2}",
                grow(p_few.0, p_few.1),
                grow(p_many.0, p_many.1)
            ),
        );
        r.reference = format!(
            "filling {many} took {:.1} s ({IN_FLIGHT} in flight)",
            filled.as_secs_f64()
        );
        self.growth_rows(
            Growth {
                few,
                many,
                p: (p_few, p_many),
                steps: (steps_few, steps_many),
                calls: (calls_few, calls_many),
            },
            "on 1 Gateway",
            ", ListenerSet mode",
            vec![r],
        );
        for (live, cpu) in [(few, cpu_few), (many, cpu_many)] {
            self.rows.push(info(
                format!(
                    "  CPU per probe (a worker lifecycle and a floor one) at {live} live, ListenerSet mode"
                ),
                cpu,
            ));
        }
        self.note_writes("growth", writes, exposures).await;
    }

    /// Exposure p50 with few live allocations, then with many, on the same worker.
    async fn growth_gateway(&mut self) {
        let (few, many) = (self.size.live_few, self.size.live_many);
        let gateways = many.div_ceil(PER_GATEWAY);
        let idx = self.rms("grow", gateways).await;
        let targets = self.targets(&idx).await;
        let ws = self.workers(&idx, 1).await;
        let rm = &self.rms[idx[0]];
        let (nats, kube) = (self.env.nats().await, self.env.kube().await);
        let fl = floor::Floor::new(nats, kube, &rm.gateway_ns, &rm.gateway, &rm.task_ns).await;
        // The worker and the floor in turn on the first Gateway: the floor shows what the apiserver's own
        // cost does as the Gateway fills.
        let probe = |targets: &[(Master, String)]| {
            let (m, ns) = (targets[0].0.clone(), targets[0].1.clone());
            let (w, n, fl) = (self.waiter.clone(), self.size.probes, &fl);
            async move {
                let (mut s, mut f) = (Vec::new(), Vec::new());
                for i in 0..n + 5 {
                    let a = drive::alloc_id("probe");
                    let d = drive::expose(&m, &w, &a, &ns).await.expect("probe ready");
                    drive::end(&m, &w, &a).await;
                    let fa = drive::alloc_id("floor");
                    let fd = fl.expose(&fa, 41000).await;
                    fl.withdraw(&fa, 41000).await;
                    if i >= 5 {
                        s.push(d);
                        f.push(fd);
                    }
                }
                (pcts(&s).p50, pcts(&f).p50)
            }
        };
        let mut live = drive::fill(&targets[..1], &self.waiter, few, IN_FLIGHT).await;
        let calls_few = calls::snapshot();
        let p_few = probe(&targets).await;
        let steps_few = fl.breakdown();
        let calls_few = calls_few.since();
        // Bring every Gateway to its share of `many` (the first one already holds `few`).
        let mut rest = Vec::new();
        for (t, target) in targets.iter().enumerate() {
            let share = many / gateways + usize::from(t < many % gateways);
            let have = if t == 0 { few } else { 0 };
            let more = drive::fill(
                std::slice::from_ref(target),
                &self.waiter,
                share.saturating_sub(have),
                IN_FLIGHT,
            );
            rest.push(more.await.remove(0));
        }
        live[0].extend(rest.remove(0));
        live.extend(rest);
        let calls_many = calls::snapshot();
        let p_many = probe(&targets).await;
        let steps_many = fl.breakdown();
        let calls_many = calls_many.since();
        drive::drain(&targets, &self.waiter, &live, IN_FLIGHT).await;
        for w in ws {
            w.stop().await;
        }
        self.growth_rows(
            Growth {
                few,
                many,
                p: (p_few, p_many),
                steps: (steps_few, steps_many),
                calls: (calls_few, calls_many),
            },
            &format!("over {gateways} Gateways"),
            "",
            Vec::new(),
        );
    }

    /// The rows of a growth section: exposure p50 at many live against few (the target), the floor's the
    /// same way, `extra`, then the floor's steps and the worker's calls at each. `place` says where the
    /// live allocations are, `mode` ends every row's name.
    fn growth_rows(&mut self, g: Growth, place: &str, mode: &str, extra: Vec<Row>) {
        let (few, many) = (g.few, g.many);
        let grow = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        self.rows.push(at_most(
            format!("exposure p50 at {many} live {place} / at {few} live{mode}"),
            ms(g.p.1.0),
            format!("{} at {few} live", ms(g.p.0.0)),
            grow(g.p.1.0, g.p.0.0),
            1.2,
        ));
        let mut r = info(
            format!("floor p50 on that Gateway, at {many} live / at {few} live{mode}"),
            ms(g.p.1.1),
        );
        r.reference = format!("{} at {few} live", ms(g.p.0.1));
        r.ratio = Some(grow(g.p.1.1, g.p.0.1));
        self.rows.push(r);
        self.rows.extend(extra);
        for (live, steps) in [(few, g.steps.0), (many, g.steps.1)] {
            self.rows
                .push(info(format!("floor steps p50 at {live} live{mode}"), steps));
        }
        // A worker in another process has no call counts here.
        for (live, calls) in [(few, g.calls.0), (many, g.calls.1)] {
            if calls.is_empty() {
                continue;
            }
            self.rows.push(info(
                format!("  worker's apiserver calls at {live} live{mode}"),
                calls,
            ));
        }
    }

    /// Time to reachable through Envoy Gateway, with one worker, beside the time to ready in the same
    /// samples and the floor's own time to reachable on the same Gateway, the two interleaved.
    async fn reachable(&mut self) {
        if let Some(why) = reachable::unavailable() {
            if self.size.name == "ci" {
                panic!("time to reachable: {why} (at --size ci, as in the tests, it must run)");
            }
            self.rows
                .push(info("time to reachable", format!("skipped: {why}")));
            return;
        }
        let class = common::envoy_class();
        common::backend::clear_ports(&self.env, &class, reachable::PORTS).await;
        let port = reachable::WORKER_PORT;
        let rm = TestRm::on_class(
            &self.env,
            "reach",
            (port, port),
            &class,
            reachable::PLACEHOLDER,
        )
        .await;
        self.rms.push(rm);
        let i = self.rms.len() - 1;
        // The same, on a Gateway of its own, with the data plane probe off: what the probe costs.
        let mut off = TestRm::on_class(
            &self.env,
            "reachoff",
            (reachable::UNPROBED_PORT, reachable::UNPROBED_PORT),
            &class,
            reachable::UNPROBED_PLACEHOLDER,
        )
        .await;
        off.extra
            .push_str("    data_plane_probe: {enabled: false}\n");
        self.rms.push(off);
        let k = self.rms.len() - 1;
        let mut ns = reachable::backend();
        let client = self.env.kube().await;
        let mut ws = self.workers(&[i], 1).await;
        ws.extend(self.workers(&[k], 1).await);
        let (rm, off) = (&self.rms[i], &self.rms[k]);
        let m_off = Master::new(&self.env, &off.name).await;
        let m = Master::new(&self.env, &rm.name).await;
        // After the worker has started: it creates the state bucket.
        let fl = floor::Floor::new(
            self.env.nats().await,
            client.clone(),
            &rm.gateway_ns,
            &rm.gateway,
            &rm.task_ns,
        )
        .await;
        let calls = calls::snapshot();
        let (mut wk, mut fr, mut unprobed) = (Vec::new(), Vec::new(), Vec::new());
        let mut cold = None;
        const WARM_UP: usize = 2;
        let n = self.size.reachable;
        let to = reachable::loopback(reachable::WORKER_PORT);
        let floor_to = reachable::loopback(reachable::FLOOR_PORT);
        for j in 0..n + WARM_UP {
            // Alternate which goes first, as the latency section does.
            let (w, f) = if j % 2 == 0 {
                let w =
                    reachable::worker(&client, &mut ns, &m, &self.waiter, &rm.task_ns, to).await;
                let f = reachable::floor(&client, &mut ns, &fl, &rm.task_ns, floor_to).await;
                (w, f)
            } else {
                let f = reachable::floor(&client, &mut ns, &fl, &rm.task_ns, floor_to).await;
                let w =
                    reachable::worker(&client, &mut ns, &m, &self.waiter, &rm.task_ns, to).await;
                (w, f)
            };
            let u = reachable::worker(
                &client,
                &mut ns,
                &m_off,
                &self.waiter,
                &off.task_ns,
                reachable::loopback(reachable::UNPROBED_PORT),
            )
            .await;
            if j == 0 {
                cold = Some((w.answered, w.reachable));
            }
            if j >= WARM_UP {
                wk.push(w);
                fr.push(f);
                unprobed.push(u);
            }
        }
        let calls = calls.since();
        for w in ws {
            w.stop().await;
        }
        let steps = fl.breakdown();
        let ready = self.reach_rows("Envoy Gateway", "envoy", &wk, &fr, steps);
        let p = |s: &[reachable::Sample], f: fn(&reachable::Sample) -> Duration| {
            pcts(&s.iter().map(f).collect::<Vec<_>>())
        };
        let both = |x: drive::Pcts| format!("{} / {}", ms(x.p50), ms(x.p99));
        let off_ready = p(&unprobed, |s| s.answered);
        let off_reach = p(&unprobed, |s| s.reachable);
        let off_before = unprobed.iter().filter(|s| s.reachable < s.answered).count();
        let mut r = info(
            "  ready p50 / p99 with the data plane probe off (a Gateway of its own, same run)",
            both(off_ready),
        );
        r.reference = format!(
            "time to reachable p50 {}; first byte before ready in {off_before} of {n}",
            ms(off_reach.p50)
        );
        r.ratio = Some(ready.p50.as_secs_f64() / off_ready.p50.as_secs_f64());
        self.rows.push(r);
        if let Some((ready, reach)) = cold {
            self.rows.push(info(
                "  first exposure on the new Gateway (warm-up, not counted): ready / first byte",
                format!("{} / {}", ms(ready), ms(reach)),
            ));
        }
        self.rows
            .push(info("  worker's apiserver calls (count x mean)", calls));
        self.reachable_contour(&mut ns).await;
    }

    /// Time to reachable through Contour's envoy, beside the floor's on the same Gateway: testenv's one
    /// Contour Gateway, whose address is mapped to envoy as a LoadBalancer Service would map it; every
    /// probe connects to the address the `ready` names.
    async fn reachable_contour(&mut self, ns: &mut common::backend::Netns) {
        if let Some(why) = reachable::contour_unavailable() {
            if self.size.name == "ci" {
                panic!(
                    "time to reachable through Contour: {why} (at --size ci, as in the tests, it must run)"
                );
            }
            self.rows.push(info(
                "time to reachable, Contour",
                format!("skipped: {why}"),
            ));
            return;
        }
        let gw = common::contour::contour();
        let (wp, fp) = (
            reachable::CONTOUR_WORKER_PORT,
            reachable::CONTOUR_FLOOR_PORT,
        );
        let mut rm = common::contour::ContourRm::new(&self.env, &gw, "reachct", (wp, fp)).await;
        // The floor's port was cleared with the worker's; the worker's range is its one port.
        rm.range = (wp, wp);
        let client = self.env.kube().await;
        let worker = Worker::start(rm.config(&self.env, &gw)).await;
        let m = Master::new(&self.env, &rm.name).await;
        let fl = floor::Floor::new(
            self.env.nats().await,
            client.clone(),
            &gw.namespace,
            &gw.name,
            &rm.task_ns,
        )
        .await;
        let to = std::net::SocketAddr::from((gw.address, wp));
        let floor_to = std::net::SocketAddr::from((gw.address, fp));
        let (mut wk, mut fr) = (Vec::new(), Vec::new());
        const WARM_UP: usize = 2;
        for j in 0..self.size.reachable + WARM_UP {
            let (w, f) = if j % 2 == 0 {
                let w = reachable::worker(&client, ns, &m, &self.waiter, &rm.task_ns, to).await;
                let f = reachable::floor(&client, ns, &fl, &rm.task_ns, floor_to).await;
                (w, f)
            } else {
                let f = reachable::floor(&client, ns, &fl, &rm.task_ns, floor_to).await;
                let w = reachable::worker(&client, ns, &m, &self.waiter, &rm.task_ns, to).await;
                (w, f)
            };
            if j >= WARM_UP {
                wk.push(w);
                fr.push(f);
            }
        }
        worker.stop().await;
        let steps = fl.breakdown();
        self.reach_rows("Contour", "Contour's envoy", &wk, &fr, steps);
        rm.teardown(&self.env).await;
    }

    /// The rows every controller's run of the reachable section prints: time to reachable beside the
    /// floor, time to ready in the same samples, the floor's calls and steps, and the failures met.
    /// Returns the worker's time to ready.
    fn reach_rows(
        &mut self,
        controller: &str,
        plane: &str,
        wk: &[reachable::Sample],
        fr: &[reachable::Sample],
        steps: String,
    ) -> drive::Pcts {
        let n = wk.len();
        let p = |s: &[reachable::Sample], f: fn(&reachable::Sample) -> Duration| {
            pcts(&s.iter().map(f).collect::<Vec<_>>())
        };
        let reach = p(wk, |s| s.reachable);
        let ready = p(wk, |s| s.answered);
        let floor_reach = p(fr, |s| s.reachable);
        let floor_calls = p(fr, |s| s.answered);
        let before = wk.iter().filter(|s| s.reachable < s.answered).count();
        let both = |x: drive::Pcts| format!("{} / {}", ms(x.p50), ms(x.p99));
        let mut r = info(
            format!(
                "time to reachable p50 / p99, 1 worker, {controller} ({n} samples): started published -> first byte through {plane}"
            ),
            both(reach),
        );
        r.reference = format!(
            "floor p50 {} / p99 {}",
            ms(floor_reach.p50),
            ms(floor_reach.p99)
        );
        r.ratio = Some(reach.p50.as_secs_f64() / floor_reach.p50.as_secs_f64());
        self.rows.push(r);
        let mut r = info(
            "  ready p50 / p99, same samples: started published -> ready",
            both(ready),
        );
        let mut gaps: Vec<f64> = wk
            .iter()
            .map(|s| (s.answered.as_secs_f64() - s.reachable.as_secs_f64()) * 1e3)
            .collect();
        gaps.sort_by(f64::total_cmp);
        let gap = gaps
            .get(gaps.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0.0);
        r.reference = format!(
            "time to reachable p50 {}; first byte before ready in {before} of {n}, ready - first byte p50 {gap:+.2} ms",
            ms(reach.p50)
        );
        r.ratio = Some(ready.p50.as_secs_f64() / reach.p50.as_secs_f64());
        self.rows.push(r);
        let mut r = info(
            format!(
                "floor p50 / p99: its calls (KV, Service, listener, TCPRoute, reply), from the first -> first byte through {plane}"
            ),
            both(floor_reach),
        );
        r.reference = format!(
            "the floor's calls alone p50 {} / p99 {}",
            ms(floor_calls.p50),
            ms(floor_calls.p99)
        );
        self.rows.push(r);
        self.rows.push(info("  floor steps p50", steps));
        self.rows.push(info(
            "  failures before the first byte, in how many samples",
            format!(
                "worker: {}; floor: {}",
                reachable::failures(wk),
                reachable::failures(fr)
            ),
        ));
        ready
    }

    async fn teardown(&self) {
        let js = jetstream::new(self.env.nats().await);
        for rm in &self.rms {
            rm.teardown(&self.env).await;
            if let Ok(s) = js.get_stream(itg::contract::EVENTS_STREAM).await {
                let _ = s.delete_consumer(&format!("itg-worker-{}", rm.name)).await;
            }
        }
    }
}

fn versions() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0.0, |kib| kib as f64 / 1024.0 / 1024.0);
    format!("{cores} cores, {mem:.1} GiB memory")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let size = value("--size");
    // `cargo test --all-targets` runs this binary too, with no size: that run is not a benchmark.
    if size.is_none() && !args.iter().any(|a| a == "--bench") {
        println!("exposure bench: skipped (run it with scripts/bench)");
        return;
    }
    let size_name = size.unwrap_or_else(|| "small".into());
    let mut size_v = Size::named(&size_name);
    if let Some(n) = value("--lifecycles").and_then(|v| v.parse().ok()) {
        size_v.lifecycles = n;
    }
    // `--live N`: the many-live size of the ListenerSet-mode memory, growth and scale sections.
    if let Some(n) = value("--live") {
        size_v.live_many = n
            .parse()
            .ok()
            .filter(|&n: &usize| n > size_v.live_few && n <= 22000)
            .unwrap_or_else(|| {
                panic!(
                    "--live {n:?}: a number of live allocations above {} and at most 22000",
                    size_v.live_few
                )
            });
    }
    let only = value("--only");
    // `--modes gateway,listenerset` (both by default): which listener modes the sections run.
    let modes: Vec<Mode> = value("--modes")
        .unwrap_or_else(|| "gateway,listenerset".into())
        .split(',')
        .map(|m| match m {
            "gateway" => Mode::Gateway,
            "listenerset" => Mode::ListenerSet,
            other => panic!("unknown --modes entry {other:?}: gateway or listenerset"),
        })
        .collect();
    let want = |s: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == s));
    let env = Env::load();
    let waiter = Waiter::start(env.nats().await).await;
    let mut b = Bench {
        env,
        waiter,
        size: size_v,
        rms: Vec::new(),
        rows: Vec::new(),
        modes,
        ls_writes: (0, 0, Vec::new()),
    };
    let t0 = Instant::now();
    let mut lat_rm = None;
    if want("latency") {
        eprintln!("[bench] latency ({:.0} s)", t0.elapsed().as_secs_f64());
        lat_rm = b.latency().await;
    }
    if want("lifecycles") {
        eprintln!("[bench] lifecycles ({:.0} s)", t0.elapsed().as_secs_f64());
        b.lifecycles().await;
    }
    if want("allocator") {
        eprintln!("[bench] allocator ({:.0} s)", t0.elapsed().as_secs_f64());
        b.allocator().await;
    }
    if let Some(rm) = lat_rm.filter(|_| want("replay")) {
        eprintln!("[bench] replay ({:.0} s)", t0.elapsed().as_secs_f64());
        b.replay(rm).await;
    }
    if want("memory") {
        eprintln!("[bench] memory ({:.0} s)", t0.elapsed().as_secs_f64());
        b.memory().await;
    }
    if want("growth") {
        eprintln!("[bench] growth ({:.0} s)", t0.elapsed().as_secs_f64());
        b.growth().await;
    }
    if want("scale") && b.wants(Mode::ListenerSet) {
        eprintln!("[bench] scale ({:.0} s)", t0.elapsed().as_secs_f64());
        b.scale().await;
    }
    b.ls_row();
    if want("reachable") {
        eprintln!("[bench] reachable ({:.0} s)", t0.elapsed().as_secs_f64());
        b.reachable().await;
    }
    // Only when named: it needs `scripts/testenv up --topology sites`.
    if only
        .as_deref()
        .is_some_and(|o| o.split(',').any(|x| x == "sites"))
    {
        eprintln!("[bench] sites ({:.0} s)", t0.elapsed().as_secs_f64());
        b.rows
            .extend(sites::sites(b.size.latency, b.size.lifecycles).await);
    }
    b.teardown().await;
    let nats = b.env.nats().await.server_info().version;
    println!(
        "\nexposure bench, size {size_name} ({} lifecycles per figure), {}, nats-server {nats}, took {:.0} s\n",
        b.size.lifecycles,
        versions(),
        t0.elapsed().as_secs_f64()
    );
    if args.iter().any(|a| a == "--json") {
        println!(
            "{}",
            serde_json::to_string_pretty(&b.rows).expect("rows serialize")
        );
    } else {
        print!("{}", report::markdown(&b.rows));
    }
}
