//! Chaos: 4 worker processes serve lifecycles with duplicate and out-of-order events while a random worker
//! is SIGKILLed and restarted every few hundred milliseconds, and nats-server and kube-apiserver are each
//! restarted once mid-run. Once it quiesces: no leaked port, listener, route or Service; no port held twice;
//! every allocation that has not ended is ready with the addresses it first got.
//!
//! Throughout the run a history checker (`common/history.rs`) watches the port keys and the Gateways, and
//! afterwards proves that no port had two live holders at any instant.
//!
//! The same runs in `listener_mode: listenerset`: each allocation's listeners are in a ListenerSet of its
//! own, the Gateway is never written and its 64-listener cap does not apply (the range is the capacity);
//! once it quiesces, the sets are exactly the live allocations' ones, and the history checker watches the
//! sets attached to each Gateway.
//!
//! `ITG_CHAOS_LIFECYCLES` sets the size (120 by default; the long run is 1000) and `ITG_CHAOS_SEED` the
//! schedule; `ITG_CHAOS_LISTENERSET_LIFECYCLES` sets the ListenerSet run's size apart (by default the same).
//! The servers are those of `scripts/testenv up`, which this test also uses to bring them back. The two runs
//! take turns: each restarts the shared servers.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::history::{History, ListenerMode, Watched};
use common::process::{WorkerProcess, readyz};
use common::{Env, Master, Observed, Replies, TestRm, config_yaml, observe};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Mutex, Semaphore};

const RMS: usize = 4;
const WORKERS: usize = 4;
/// Lifecycles in flight (started, not yet answered to the end), per resource manager. Each worker writes its
/// Gateways one change at a time, and a worker lives about 1.6 s between kills: a deeper queue would rarely
/// finish before the next kill. A live allocation leaves the count once ready; it is counted apart.
const IN_FLIGHT: usize = 8;
/// Proxy ports of one allocation, at most.
const MAX_PORTS: usize = 2;
/// Listener slots of a Gateway (the CRD's `maxItems`); the operator's placeholder takes one.
const LISTENER_SLOTS: usize = 64 - 1;
/// Ports held by live allocations, at most, per resource manager: with the in-flight ones they must fit in
/// the Gateway's listener slots, or the run waits on capacity for ever. A live roll past it runs normally.
const LIVE_PORTS: usize = LISTENER_SLOTS - IN_FLIGHT * MAX_PORTS - 7;
/// Ports beyond the live and in-flight ones, for claims and stray listeners the reconciler has yet to free.
const SPARE_PORTS: usize = 24;
/// Waiting for one reply, through kills and restarts.
const REPLY_SECS: u64 = 300;

/// One run at a time in this binary: each stops and restarts the servers every test shares.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// started (maybe twice), ready, ended (maybe twice), removed.
    Normal,
    /// ended first, then started: removed, then failed.
    Reversed,
    /// started and never ended: must stay ready.
    Live,
}

struct Plan {
    rm: usize,
    alloc: String,
    shape: Shape,
    ports: Vec<(&'static str, u16)>,
    dup_started: bool,
    dup_ended: bool,
    hold_ms: u64,
}

/// `live_cap`: ports held by live allocations, at most, per resource manager.
fn plans(n: usize, rng: &mut StdRng, live_cap: usize) -> Vec<Plan> {
    let mut live_ports = [0usize; RMS];
    (0..n)
        .map(|i| {
            let roll: f64 = rng.random();
            let mut ports = vec![("jupyter", 8888)];
            if rng.random_bool(0.5) {
                ports.push(("tensorboard", 6006));
            }
            let shape = if roll < 0.05 && live_ports[i % RMS] + ports.len() <= live_cap {
                live_ports[i % RMS] += ports.len();
                Shape::Live
            } else if roll < 0.15 {
                Shape::Reversed
            } else {
                Shape::Normal
            };
            Plan {
                rm: i % RMS,
                alloc: format!("{}.{i}", uuid::Uuid::new_v4()),
                shape,
                ports,
                dup_started: rng.random_bool(0.2),
                dup_ended: rng.random_bool(0.1),
                hold_ms: rng.random_range(0..400),
            }
        })
        .collect()
}

/// Runs one lifecycle to its end; returns the addresses of its first ready, if it should have one.
async fn run(p: &Plan, master: &Master, replies: &Replies, ns: &str) -> Option<Vec<String>> {
    match p.shape {
        Shape::Reversed => {
            master.ended(&p.alloc).await;
            master.started(&p.alloc, ns, &p.ports).await;
            replies.first(REPLY_SECS, &p.alloc, "removed").await;
            // Two workers may take the pair at once and serve the started first: then it is ready, and
            // removed by the ended. Otherwise the late started is refused.
            let deadline = Instant::now() + Duration::from_secs(REPLY_SECS);
            loop {
                let mine = replies.for_alloc(&p.alloc);
                if let Some(f) = mine.iter().find(|s| s.kind == "failed") {
                    assert_eq!(f.body["reason"], "invalid_event", "{:#?}", f.body);
                    return None;
                }
                if let Some(r) = mine.iter().find(|s| s.kind == "ready") {
                    return Some(r.addresses());
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: no answer to the late started: {mine:#?}",
                    p.alloc
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Shape::Normal | Shape::Live => {
            master.started(&p.alloc, ns, &p.ports).await;
            if p.dup_started {
                master.started(&p.alloc, ns, &p.ports).await;
            }
            let ready = replies.first(REPLY_SECS, &p.alloc, "ready").await;
            if p.shape == Shape::Live {
                return Some(ready.addresses());
            }
            tokio::time::sleep(Duration::from_millis(p.hold_ms)).await;
            master.ended(&p.alloc).await;
            if p.dup_ended {
                master.ended(&p.alloc).await;
            }
            replies.first(REPLY_SECS, &p.alloc, "removed").await;
            Some(ready.addresses())
        }
    }
}

/// Stops a server of `scripts/testenv` with `signal` and brings it back with `scripts/testenv up`;
/// returns how long it was gone.
async fn restart_server(name: &str, signal: &str) -> Duration {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let pid = std::fs::read_to_string(root.join(format!(".itg/run/{name}.pid")))
        .unwrap_or_else(|e| panic!("{name} pid file: {e}; run `scripts/testenv up`"));
    let pid = pid.trim().to_owned();
    let began = Instant::now();
    let killed = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.clone()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -{signal} {name} ({pid})");
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let up = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg(root.join("scripts/testenv"))
            .arg("up")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        up.status.success(),
        "testenv up after killing {name}: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    began.elapsed()
}

/// What the Gateway (or the ListenerSets), the task namespace and KV must hold once everything has settled:
/// the live allocations' objects, at the ports of their first ready, and nothing else.
fn expected(rm: &TestRm, mode: ListenerMode, live: &[(&Plan, Vec<String>)]) -> Observed {
    let mut o = Observed::default();
    for (p, addresses) in live {
        if mode == ListenerMode::ListenerSet {
            o.sets
                .push(itg::names::listenerset_name(&rm.name, &p.alloc));
        }
        let key = itg::names::allocation_key(&rm.name, &p.alloc);
        for (name, _) in &p.ports {
            let object = itg::names::object_name(&rm.name, &p.alloc, name);
            let port: u16 = addresses
                .iter()
                .find_map(|a| a.strip_prefix(&format!("{name}=")))
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no address for {name} in {addresses:?}"));
            assert!(
                o.claims.insert(port, key.clone()).is_none(),
                "port {port} handed to two live allocations"
            );
            o.listeners.insert(object.clone(), port);
            o.services.push(object.clone());
            o.routes.push(object);
        }
    }
    o.sets.sort();
    o.services.sort();
    o.routes.sort();
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_killed_and_servers_restarted_lose_nothing_and_leak_nothing() {
    chaos(ListenerMode::Gateway).await;
}

/// The same in `listener_mode: listenerset`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_listenerset_mode_workers_killed_and_servers_restarted_lose_nothing_and_leak_nothing() {
    chaos(ListenerMode::ListenerSet).await;
}

fn size_from(var: &str) -> Option<usize> {
    std::env::var(var).ok().and_then(|v| v.parse().ok())
}

async fn chaos(mode: ListenerMode) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let sets = mode == ListenerMode::ListenerSet;
    let n: usize = if sets {
        size_from("ITG_CHAOS_LISTENERSET_LIFECYCLES")
    } else {
        None
    }
    .or_else(|| size_from("ITG_CHAOS_LIFECYCLES"))
    .unwrap_or(120);
    let seed: u64 = std::env::var("ITG_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!(
        "chaos ({mode:?} mode): {n} lifecycles, seed {seed} (ITG_CHAOS_SEED={seed} repeats the schedule)"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let env = Env::load();
    // Without the Gateway's listener slots to share, the live allocations are bounded by the range alone.
    let live_cap = if sets { usize::MAX } else { LIVE_PORTS };
    let plans: Arc<Vec<Plan>> = Arc::new(plans(n, &mut rng, live_cap));
    // Each range holds the resource manager's live allocations, its in-flight ones and some spare.
    let mut rms = Vec::new();
    for i in 0..RMS {
        let live: usize = plans
            .iter()
            .filter(|p| p.rm == i && p.shape == Shape::Live)
            .map(|p| p.ports.len())
            .sum();
        let size = u16::try_from(live + IN_FLIGHT * MAX_PORTS + SPARE_PORTS).unwrap();
        let start = 44000 + 100 * u16::try_from(i).unwrap();
        let mut rm = TestRm::new(&env, "chaos", (start, start + size - 1)).await;
        if sets {
            rm.extra.push_str("    listener_mode: listenerset\n");
        }
        rms.push(rm);
    }
    let rm_refs: Vec<&TestRm> = rms.iter().collect();
    let history = History::start_with_modes(
        &env,
        "ITG_STATE",
        rms.iter()
            .map(|rm| {
                let w = Watched {
                    rm: rm.name.clone(),
                    gateway_ns: rm.gateway_ns.clone(),
                    gateway: rm.gateway.clone(),
                };
                (w, mode)
            })
            .collect(),
    )
    .await;
    // Deadlines far beyond the outages: nothing may be answered failed because a server was away.
    let worker_yaml = "  capacity_deadline: 10m\n  kubernetes_deadline: 10m\n  reconcile_interval: 5s\n  reconcile_hold_off: 20s\n";
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let mut w =
            WorkerProcess::spawn(|admin| config_yaml(&env, &rm_refs, worker_yaml, admin), &[]);
        w.keep_ready(120).await;
        workers.push(w);
    }
    let mut masters = Vec::new();
    let mut watchers = Vec::new();
    for rm in &rms {
        masters.push(Arc::new(Master::new(&env, &rm.name).await));
        watchers.push(Arc::new(Replies::watch(&env, &rm.name).await));
    }
    let began = Instant::now();

    // A random serving worker is killed and restarted every few hundred milliseconds until the lifecycles end.
    let workers = Arc::new(Mutex::new(workers));
    let done = Arc::new(AtomicUsize::new(0));
    let storm = {
        let workers = workers.clone();
        let done = done.clone();
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        tokio::spawn(async move {
            let mut kills = 0usize;
            while done.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(rng.random_range(200..600))).await;
                let mut ws = workers.lock().await;
                // A worker whose start failed (a server away) is started again, as a supervisor would.
                for w in ws.iter_mut() {
                    if w.has_exited() {
                        w.restart();
                    }
                }
                // The victim is a random worker, if it got as far as serving: on a loaded machine one still
                // starting would be killed again and again and nothing would progress.
                let i = rng.random_range(0..WORKERS);
                if readyz(&ws[i].admin) != Some(200) {
                    continue;
                }
                ws[i].restart();
                kills += 1;
            }
            kills
        })
    };
    // The servers: nats-server a third of the way in, kube-apiserver two thirds of the way in.
    let restarts = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut gone = Vec::new();
            for (at, name, signal) in [(n / 3, "nats-n1", "TERM"), (2 * n / 3, "apiserver", "KILL")]
            {
                while done.load(Ordering::SeqCst) < at {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let d = restart_server(name, signal).await;
                println!(
                    "chaos ({mode:?} mode): {name} stopped with SIG{signal} and back in {:.1} s",
                    d.as_secs_f64()
                );
                gone.push((name, d));
            }
            gone
        })
    };

    let gates: Vec<Arc<Semaphore>> = (0..RMS)
        .map(|_| Arc::new(Semaphore::new(IN_FLIGHT)))
        .collect();
    let live_now: Arc<Vec<AtomicUsize>> = Arc::new((0..RMS).map(|_| AtomicUsize::new(0)).collect());
    let mut tasks = Vec::new();
    for i in 0..n {
        let (plans, done, live_now) = (plans.clone(), done.clone(), live_now.clone());
        let p = &plans[i];
        let (master, replies) = (masters[p.rm].clone(), watchers[p.rm].clone());
        let gate = gates[p.rm].clone();
        let ns = rms[p.rm].task_ns.clone();
        let permit = gate.acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let p = &plans[i];
            let first = run(p, &master, &replies, &ns).await;
            // Answered: no longer in flight. A live allocation still holds its ports, within its range's
            // share for live ones.
            drop(permit);
            if p.shape == Shape::Live {
                live_now[p.rm].fetch_add(1, Ordering::SeqCst);
            }
            let answered = done.fetch_add(1, Ordering::SeqCst) + 1;
            if answered % 50 == 0 {
                println!(
                    "chaos ({mode:?} mode): {answered} of {n} lifecycles answered after {:.0} s; live per resource manager {:?}",
                    began.elapsed().as_secs_f64(),
                    live_now
                        .iter()
                        .map(|l| l.load(Ordering::SeqCst))
                        .collect::<Vec<_>>()
                );
            }
            first
        }));
    }
    let mut first = Vec::new();
    for t in tasks {
        first.push(t.await.expect("a lifecycle failed"));
    }
    let kills = storm.await.unwrap();
    let outages = restarts.await.unwrap();
    let served = began.elapsed();

    // Quiesced: every worker alive, every lifecycle answered. Objects settle, orphans (if any) go after the
    // reconciler's hold-off.
    for w in workers.lock().await.iter_mut() {
        w.keep_ready(120).await;
    }
    let settle = Instant::now();
    let mut wanted = Vec::new();
    for (r, rm) in rms.iter().enumerate() {
        let live: Vec<(&Plan, Vec<String>)> = plans
            .iter()
            .zip(&first)
            .filter(|(p, _)| p.rm == r && p.shape == Shape::Live)
            .map(|(p, f)| (p, f.clone().unwrap()))
            .collect();
        wanted.push(expected(rm, mode, &live));
    }
    let mut seen = Vec::new();
    loop {
        seen.clear();
        for rm in &rms {
            seen.push(observe(&env, rm).await);
        }
        if seen.iter().zip(&wanted).all(|(s, w)| {
            s.listeners == w.listeners
                && s.sets == w.sets
                && s.services == w.services
                && s.routes == w.routes
                && s.claims == w.claims
        }) {
            break;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(120),
            "the state did not settle to the live allocations within 120 s after the run:\n{}",
            seen.iter()
                .zip(&wanted)
                .map(|(s, w)| format!("seen {s:#?}\nwanted {w:#?}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // Every ready of an allocation carries its first addresses; only the reversed ones were refused.
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (p, f) in plans.iter().zip(&first) {
        let mine = watchers[p.rm].for_alloc(&p.alloc);
        for s in &mine {
            *kinds.entry(s.kind.clone()).or_default() += 1;
            if s.kind == "ready" {
                assert_eq!(
                    Some(s.addresses()),
                    *f,
                    "{}: a ready with other addresses",
                    p.alloc
                );
            }
            // A started served after its ended (a duplicate held by a killed worker comes back late) is
            // refused, as the contract says; nothing else may fail.
            if s.kind == "failed" {
                assert!(
                    p.shape != Shape::Live && s.body["reason"] == "invalid_event",
                    "{}: failed {:#?}",
                    p.alloc,
                    s.body
                );
            }
        }
    }
    let live = plans.iter().filter(|p| p.shape == Shape::Live).count();
    let reversed = plans.iter().filter(|p| p.shape == Shape::Reversed).count();
    let dups = plans.iter().filter(|p| p.dup_started).count()
        + plans.iter().filter(|p| p.dup_ended).count();
    let ports: BTreeSet<u16> = wanted
        .iter()
        .flat_map(|w| w.claims.keys().copied())
        .collect();
    println!(
        "chaos ({mode:?} mode): {n} lifecycles ({live} left live, {reversed} out of order, {dups} duplicate \
         events) over {RMS} Gateways by {WORKERS} workers in {:.1} s; {kills} worker kills; outages {:?}; \
         replies {kinds:?}; settled {:.1} s after the last reply with {} listeners ({} ListenerSets) and \
         ports held by the live allocations, no leak, no port held twice",
        served.as_secs_f64(),
        outages
            .iter()
            .map(|(n, d)| format!("{n} {:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>(),
        settle.elapsed().as_secs_f64(),
        ports.len(),
        wanted.iter().map(|w| w.sets.len()).sum::<usize>(),
    );

    for p in plans.iter().filter(|p| p.shape == Shape::Live) {
        masters[p.rm].ended(&p.alloc).await;
        watchers[p.rm].first(REPLY_SECS, &p.alloc, "removed").await;
    }
    let report = history.finish().await;
    println!(
        "chaos ({mode:?} mode): live allocations per resource manager {:?} (ranges {:?}); {}",
        live_now
            .iter()
            .map(|l| l.load(Ordering::SeqCst))
            .collect::<Vec<_>>(),
        rms.iter().map(|rm| rm.range).collect::<Vec<_>>(),
        report.summary()
    );
    if !report.violations.is_empty() {
        // The workers' logs, to follow what they did on those ports.
        let path = std::env::temp_dir().join(format!("itg-chaos-{mode:?}-{seed}-workers.log"));
        let logs: Vec<String> = workers
            .lock()
            .await
            .iter()
            .enumerate()
            .flat_map(|(i, w)| w.log().into_iter().map(move |l| format!("worker {i}: {l}")))
            .collect();
        let _ = std::fs::write(&path, logs.join("\n"));
        println!("chaos: the workers' logs are in {}", path.display());
    }
    assert!(
        report.violations.is_empty(),
        "a port had two live holders:\n{}\nwhat happened on those ports:\n{}",
        report.violations.join("\n"),
        report.details.join("\n")
    );
    drop(workers);
    for rm in &rms {
        rm.teardown(&env).await;
    }
}
