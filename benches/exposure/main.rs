//! What an exposure costs, against the calls it cannot avoid, on the real servers of `scripts/testenv`.
//!
//! `scripts/bench` runs it (`scripts/bench --help` for its arguments); see BENCHMARKS.md. Workers
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
mod growth;
mod gwwrites;
mod latency;
mod lifecycles;
mod memory;
mod reachable;
mod replay;
mod report;
mod rss;
mod scale;
mod sites;

use std::time::Instant;

use async_nats::jetstream;
use common::{Env, Master, TestRm, Worker};
use drive::Waiter;
use floor::{Floor, Mode};
use report::Row;

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

/// The sections `--only` names, in the order they run.
const SECTIONS: [&str; 9] = [
    "latency",
    "lifecycles",
    "allocator",
    "replay",
    "memory",
    "growth",
    "scale",
    "reachable",
    "sites",
];

/// The bench's arguments. `scripts/bench` starts the servers first (`scripts/testenv up`), passes these
/// through and adds `--size full` when no size is given.
#[derive(Debug, clap::Parser)]
#[command(
    name = "scripts/bench",
    bin_name = "scripts/bench",
    about = "What an exposure costs, against the calls it cannot avoid, on the servers of scripts/testenv (see BENCHMARKS.md).",
    after_help = "scripts/bench starts the servers first (scripts/testenv up), gives --size full when no size is named, and builds with the release profile; BENCH_PROFILE=dev reuses the test build (its figures then mean little). `--only sites` needs `scripts/testenv up --topology sites`."
)]
struct Args {
    /// How much of everything to do: ci (seconds, what scripts/test runs), small, full (the BENCHMARKS.md
    /// figures).
    #[arg(long, value_parser = ["ci", "small", "full"], default_value = "small")]
    size: String,
    /// Lifecycles per throughput figure, instead of the size's.
    #[arg(long, value_name = "N")]
    lifecycles: Option<usize>,
    /// The many-live size of the ListenerSet-mode memory, growth and scale sections: above the size's few
    /// live, at most 22000.
    #[arg(long, value_name = "N")]
    live: Option<usize>,
    /// The sections to run, comma-separated; every one but `sites` by default.
    #[arg(long, value_delimiter = ',', value_parser = SECTIONS)]
    only: Option<Vec<String>>,
    /// The listener modes the latency, lifecycles, memory and growth sections run, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = ["gateway", "listenerset"], default_value = "gateway,listenerset")]
    modes: Vec<String>,
    /// Prints the rows as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Given by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() {
    use clap::{CommandFactory, Parser};
    // `cargo test --all-targets` runs this binary too, with the test harness's arguments and neither
    // `--bench` nor a size: that run is not a benchmark.
    let asked = std::env::args().skip(1).any(|a| {
        ["--bench", "--size", "--help", "-h"].contains(&a.as_str()) || a.starts_with("--size=")
    });
    if !asked {
        println!("exposure bench: skipped (run it with scripts/bench)");
        return;
    }
    let args = Args::parse();
    let size_name = args.size.clone();
    let mut size_v = Size::named(&size_name);
    if let Some(n) = args.lifecycles {
        size_v.lifecycles = n;
    }
    // `--live N`: the many-live size of the ListenerSet-mode memory, growth and scale sections.
    if let Some(n) = args.live {
        if n <= size_v.live_few || n > 22000 {
            Args::command()
                .error(
                    clap::error::ErrorKind::ValueValidation,
                    format!(
                        "--live {n}: a number of live allocations above {} and at most 22000",
                        size_v.live_few
                    ),
                )
                .exit();
        }
        size_v.live_many = n;
    }
    let only = args.only;
    let modes: Vec<Mode> = args
        .modes
        .iter()
        .map(|m| match m.as_str() {
            "listenerset" => Mode::ListenerSet,
            _ => Mode::Gateway,
        })
        .collect();
    let want = |s: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == s));
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
        .as_ref()
        .is_some_and(|o| o.iter().any(|x| x == "sites"))
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
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&b.rows).expect("rows serialize")
        );
    } else {
        print!("{}", report::markdown(&b.rows));
    }
}
