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
mod reachable;
mod report;
mod rss;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::{Env, Master, TestRm, Worker};
use drive::{Waiter, pcts};
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

/// Live allocations per Gateway: the range and listener cap are 64, one slot is the operator's placeholder
/// and a few stay free for the timed exposures.
const PER_GATEWAY: usize = 58;
const RANGE: (u16, u16) = (40000, 40063);
const IN_FLIGHT: usize = 32;
/// Lifecycles in flight per Gateway: half the listener cap, a busy Gateway.
const LIFE_IN_FLIGHT: usize = 16;

struct Bench {
    env: Env,
    waiter: Waiter,
    size: Size,
    rms: Vec<TestRm>,
    rows: Vec<Row>,
}

impl Bench {
    async fn rms(&mut self, prefix: &str, n: usize) -> Vec<usize> {
        let mut idx = Vec::new();
        for _ in 0..n {
            self.rms.push(TestRm::new(&self.env, prefix, RANGE).await);
            idx.push(self.rms.len() - 1);
        }
        idx
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

    /// Exposure latency with 1 and 4 workers, each interleaved with the floor on the same Gateway.
    async fn latency(&mut self) -> usize {
        let idx = self.rms("lat", 1).await;
        let targets = self.targets(&idx).await;
        let (m, ns) = &targets[0];
        let mut fl = None;
        for workers in [1, 4] {
            let ws = self.workers(&idx, workers).await;
            if fl.is_none() {
                // After a worker has started: it creates the state bucket.
                let rm = &self.rms[idx[0]];
                let (nats, kube) = (self.env.nats().await, self.env.kube().await);
                fl = Some(
                    floor::Floor::new(nats, kube, &rm.gateway_ns, &rm.gateway, &rm.task_ns).await,
                );
            }
            let Some(fl) = fl.as_ref() else { continue };
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
            let tag = format!("{workers} worker{}", if workers == 1 { "" } else { "s" });
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
        idx[0]
    }

    /// Lifecycles per second at 1, 2 and 4 workers, on one Gateway and over eight.
    async fn lifecycles(&mut self) {
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
    }

    async fn allocator(&mut self) {
        let js = jetstream::new(self.env.nats().await);
        let store = itg::nats::KvStore::open(&js, &Default::default())
            .await
            .expect("state bucket");
        let raw = js.get_key_value("ITG_STATE").await.expect("state bucket");
        let n = self.size.allocations;
        let creates = alloc::raw_create(&raw, n, 8).await;
        let (allocs, lost) = alloc::allocator(&store, &raw, n, 8).await;
        self.rows.push(at_least(
            "port allocations/s, 8-way (range ends half full)",
            format!("{allocs:.0}/s ({lost} lost races)"),
            format!("raw kv.create {creates:.0}/s"),
            allocs / creates,
            0.8,
        ));
    }

    /// Replays the events of a resource manager whose allocations have all ended: first at once, while the
    /// handler still withdraws what their cleanups released (a late apply can land within the reconciler's
    /// hold-off), then once the hold-off (5 s here, the shortest allowed) has passed, as a recovery replay of older events finds them.
    async fn replay(&mut self, rm: usize) {
        for (when, hold_off) in [
            ("just ended", "120s"),
            ("ended over the hold-off ago", "5s"),
        ] {
            let extra = format!("  reconcile_hold_off: {hold_off}\n");
            let config = common::config(&self.env, &[&self.rms[rm]], &extra);
            if hold_off == "5s" {
                tokio::time::sleep(Duration::from_secs(6)).await;
            }
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
    }

    async fn memory(&mut self) {
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

    /// Exposure p50 with few live allocations, then with many, on the same worker.
    async fn growth(&mut self) {
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
        let grow = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        self.rows.push(at_most(
            format!("exposure p50 at {many} live over {gateways} Gateways / at {few} live"),
            ms(p_many.0),
            format!("{} at {few} live", ms(p_few.0)),
            grow(p_many.0, p_few.0),
            1.2,
        ));
        let mut r = info(
            format!("floor p50 on that Gateway, at {many} live / at {few} live"),
            ms(p_many.1),
        );
        r.reference = format!("{} at {few} live", ms(p_few.1));
        r.ratio = Some(grow(p_many.1, p_few.1));
        self.rows.push(r);
        self.rows
            .push(info(format!("floor steps p50 at {few} live"), steps_few));
        self.rows
            .push(info(format!("floor steps p50 at {many} live"), steps_many));
        self.rows.push(info(
            format!("  worker's apiserver calls at {few} live"),
            calls_few,
        ));
        self.rows.push(info(
            format!("  worker's apiserver calls at {many} live"),
            calls_many,
        ));
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
        let ns = reachable::backend();
        let client = self.env.kube().await;
        let ws = self.workers(&[i], 1).await;
        let rm = &self.rms[i];
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
        let (mut wk, mut fr) = (Vec::new(), Vec::new());
        let mut cold = None;
        const WARM_UP: usize = 2;
        let n = self.size.reachable;
        for j in 0..n + WARM_UP {
            // Alternate which goes first, as the latency section does.
            let (w, f) = if j % 2 == 0 {
                let w = reachable::worker(&client, &ns, &m, &self.waiter, rm).await;
                let f = reachable::floor(&client, &ns, &fl, &rm.task_ns).await;
                (w, f)
            } else {
                let f = reachable::floor(&client, &ns, &fl, &rm.task_ns).await;
                let w = reachable::worker(&client, &ns, &m, &self.waiter, rm).await;
                (w, f)
            };
            if j == 0 {
                cold = Some((w.answered, w.reachable));
            }
            if j >= WARM_UP {
                wk.push(w);
                fr.push(f);
            }
        }
        let calls = calls.since();
        for w in ws {
            w.stop().await;
        }
        let steps = fl.breakdown();
        let p = |s: &[reachable::Sample], f: fn(&reachable::Sample) -> Duration| {
            pcts(&s.iter().map(f).collect::<Vec<_>>())
        };
        let reach = p(&wk, |s| s.reachable);
        let ready = p(&wk, |s| s.answered);
        let floor_reach = p(&fr, |s| s.reachable);
        let floor_calls = p(&fr, |s| s.answered);
        let before = wk.iter().filter(|s| s.reachable < s.answered).count();
        let both = |x: drive::Pcts| format!("{} / {}", ms(x.p50), ms(x.p99));
        let mut r = info(
            format!(
                "time to reachable p50 / p99, 1 worker, Envoy Gateway ({n} samples): started published -> first byte through envoy"
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
            "floor p50 / p99: its calls (KV, Service, listener, TCPRoute, reply), from the first -> first byte through envoy",
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
                reachable::failures(&wk),
                reachable::failures(&fr)
            ),
        ));
        if let Some((ready, reach)) = cold {
            self.rows.push(info(
                "  first exposure on the new Gateway (warm-up, not counted): ready / first byte",
                format!("{} / {}", ms(ready), ms(reach)),
            ));
        }
        self.rows
            .push(info("  worker's apiserver calls (count x mean)", calls));
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
    let only = value("--only");
    let want = |s: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == s));
    let env = Env::load();
    let waiter = Waiter::start(env.nats().await).await;
    let mut b = Bench {
        env,
        waiter,
        size: size_v,
        rms: Vec::new(),
        rows: Vec::new(),
    };
    let t0 = Instant::now();
    let mut lat_rm = None;
    if want("latency") {
        eprintln!("[bench] latency ({:.0} s)", t0.elapsed().as_secs_f64());
        lat_rm = Some(b.latency().await);
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
    if want("reachable") {
        eprintln!("[bench] reachable ({:.0} s)", t0.elapsed().as_secs_f64());
        b.reachable().await;
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
