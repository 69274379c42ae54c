//! A deterministic simulator of the fleet: the real handler, consumer decision, reconciler and replay,
//! run against an in-memory world on one thread with tokio's clock paused, every seam call a scheduling
//! point drawn from one seeded generator. A seed fixes the fleet's shape, the faults and the schedule, so a
//! failing seed replays exactly.
//!
//! Run any number of seeds, or one with its whole trace:
//!
//! ```text
//! ITG_SIM_SEEDS=100000 cargo test --release --test sim seeds_from_the_environment -- --nocapture
//! ITG_SIM_SEED=42 ITG_SIM_PARAMS='crash=0' cargo test --test sim seeds_from_the_environment -- --nocapture
//! ```
//!
//! docs/design.md ("Simulation") says what is simulated and what is not.

mod checker;
mod faults;
mod fleet;
mod sched;
mod world;

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use itg::clock::{self, Instant};
use itg::guards::{self, Guard};

use crate::faults::Params;
use crate::fleet::Worker;
use crate::sched::Sched;
use crate::world::World;

thread_local! {
    static T0: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Milliseconds of virtual time since the simulation began, for the trace.
pub fn now_ms() -> u64 {
    T0.with(|t| t.get()).map_or(0, |t0| {
        u64::try_from((clock::instant() - t0).as_millis()).unwrap_or(u64::MAX)
    })
}

/// How long a simulation may run in virtual time before it is called unsettled.
const CAP: Duration = Duration::from_secs(30 * 60);

/// What one simulation did.
struct Report {
    seed: u64,
    params: String,
    violations: Vec<String>,
    hash: u64,
    lines: u64,
    tail: Vec<String>,
    full: Option<Vec<String>>,
    virtual_secs: u64,
    replies: usize,
}

/// Runs seed `seed` with `overrides` applied to its drawn parameters and `off` guards turned off.
fn run(seed: u64, overrides: &str, off: &[Guard], full_trace: bool) -> Report {
    let mut params = Params::draw(seed);
    if let Err(e) = params.apply(overrides) {
        panic!("ITG_SIM_PARAMS: {e}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&rt, async move {
        let epoch = UNIX_EPOCH + Duration::from_secs(1_796_688_000);
        let _clock = clock::simulate(epoch, seed);
        T0.with(|t| t.set(Some(clock::instant())));
        for g in off {
            guards::set_off(*g, true);
        }
        let sched = Sched::new(seed, full_trace, 0.3, Duration::from_millis(50));
        let described = params.describe();
        sched.note(|| format!("seed {seed}: {described}"));
        let w = World::new(params, sched);
        let script = fleet::script(&w);
        let master = tokio::spawn(fleet::master(Arc::clone(&w), script));
        let n = w.p.workers;
        let mut gens = vec![0u64; n];
        let mut workers: Vec<Option<Worker>> =
            (0..n).map(|i| Some(Worker::start(&w, i, 0))).collect();
        let mut restart_at: Vec<Option<Instant>> = vec![None; n];
        let (mut replayed, mut lost) = (false, false);
        let mut replay: Option<tokio::task::JoinHandle<()>> = None;
        let t0 = w.t0;
        let mut settled = false;
        loop {
            let step = w.sched.with_rng(|r| r.range(100, 2_000));
            tokio::time::sleep(Duration::from_millis(step)).await;
            let now = clock::instant();
            #[allow(clippy::cast_precision_loss)]
            let p_crash = w.p.crash * step as f64 / 60_000.0;
            for i in 0..n {
                if workers[i].is_some() && p_crash > 0.0 && w.sched.with_rng(|r| r.chance(p_crash))
                {
                    if let Some(worker) = workers[i].take() {
                        worker.kill(&w, i);
                    }
                    let back = w.sched.with_rng(|r| r.range(500, 5_000));
                    restart_at[i] = Some(now + Duration::from_millis(back));
                }
                if workers[i].is_none() && restart_at[i].is_some_and(|t| t <= now) {
                    gens[i] += 1;
                    workers[i] = Some(Worker::start(&w, i, gens[i]));
                    restart_at[i] = None;
                }
            }
            if let Some(at) = w.p.replay_at
                && !replayed
                && now >= t0 + at
            {
                replayed = true;
                let w2 = Arc::clone(&w);
                // The replay is not Send (it keeps its summary in a RefCell): a local task, on this same thread.
                replay = Some(tokio::task::spawn_local(async move {
                    fleet::replay(&w2, "beside the workers").await
                }));
            }
            if let Some(at) = w.p.bucket_lost_at
                && !lost
                && now >= t0 + at
            {
                lost = true;
                for (i, slot) in workers.iter_mut().enumerate() {
                    if let Some(worker) = slot.take() {
                        worker.kill(&w, i);
                    }
                }
                w.lose_bucket();
                fleet::replay(&w, "after the bucket was lost").await;
                for i in 0..n {
                    gens[i] += 1;
                    workers[i] = Some(Worker::start(&w, i, gens[i]));
                    restart_at[i] = None;
                }
            }
            let replay_done = replay
                .as_ref()
                .is_none_or(tokio::task::JoinHandle::is_finished);
            let faults_done =
                (w.p.replay_at.is_none() || replayed) && (w.p.bucket_lost_at.is_none() || lost);
            if master.is_finished() && faults_done && replay_done && w.settled() {
                settled = true;
                break;
            }
            if now >= t0 + CAP {
                break;
            }
        }
        if !settled {
            let line = format!(
                "t={}ms: the events did not settle within {CAP:?}",
                w.now_ms()
            );
            w.st.lock().unwrap().violations.push(line);
        }
        // At rest: every worker up, no more faults, the reconcilers given time to finish what crashes left.
        for i in 0..n {
            if workers[i].is_none() {
                gens[i] += 1;
                workers[i] = Some(Worker::start(&w, i, gens[i]));
            }
        }
        w.sched.note(|| "at rest".into());
        tokio::time::sleep(Duration::from_secs(45)).await;
        for (i, slot) in workers.iter_mut().enumerate() {
            if let Some(worker) = slot.take() {
                for t in &worker.tasks {
                    t.abort();
                }
                let _ = i;
            }
        }
        if let Some(r) = replay {
            r.abort();
        }
        master.abort();
        let rest = checker::at_rest(&w);
        let mut st = w.st.lock().unwrap();
        for v in rest {
            let line = format!("at rest: {v}");
            w.sched.note(|| format!("VIOLATION {line}"));
            st.violations.push(line);
        }
        for g in off {
            guards::set_off(*g, false);
        }
        let trace = w.sched.trace.lock().unwrap();
        Report {
            seed,
            params: w.p.describe(),
            violations: st.violations.clone(),
            hash: trace.hash(),
            lines: trace.lines,
            tail: trace.tail(),
            full: trace.full.clone(),
            virtual_secs: (clock::instant() - t0).as_secs(),
            replies: st.replies.len(),
        }
    });
    drop(local);
    drop(rt);
    report
}

/// Cuts a failing seed's run down: each simplification that still fails is kept.
fn shrink(seed: u64, overrides: &str, off: &[Guard]) -> (String, Report) {
    let mut kept = overrides.to_owned();
    let mut best = run(seed, &kept, off, false);
    let mut tries = 0;
    'outer: while tries < 60 {
        let mut p = Params::draw(seed);
        let _ = p.apply(&kept);
        for s in p.simpler() {
            tries += 1;
            let candidate = if kept.is_empty() {
                s.clone()
            } else {
                format!("{kept},{s}")
            };
            let r = run(seed, &candidate, off, false);
            if !r.violations.is_empty() && r.lines <= best.lines.max(1) * 2 {
                kept = candidate;
                best = r;
                continue 'outer;
            }
            if tries >= 60 {
                break 'outer;
            }
        }
        break;
    }
    (kept, best)
}

/// Prints a failing seed: what it found, a shrunk run's last trace lines, and the command that replays it.
fn explain(r: &Report, overrides: &str, off: &[Guard]) -> String {
    let (kept, small) = shrink(r.seed, overrides, off);
    let mut s = format!(
        "seed {} FAILED ({} violations)\n  params: {}\n",
        r.seed,
        r.violations.len(),
        r.params
    );
    for v in r.violations.iter().take(8) {
        s.push_str(&format!("  - {v}\n"));
    }
    s.push_str(&format!(
        "shrunk to overrides '{kept}' ({} trace lines, was {}): {}\n",
        small.lines,
        r.lines,
        small.violations.first().map_or("", String::as_str)
    ));
    for l in &small.tail {
        s.push_str(&format!("    {l}\n"));
    }
    s.push_str(&format!(
        "replay it: ITG_SIM_SEED={} ITG_SIM_PARAMS='{kept}'{} cargo test --test sim seeds_from_the_environment -- --nocapture\n",
        r.seed,
        if off.is_empty() { String::new() } else { format!(" ITG_SIM_GUARDS_OFF={}", guard_names(off)) }
    ));
    s
}

fn guard_names(off: &[Guard]) -> String {
    off.iter()
        .map(|g| format!("{g:?}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn guards_from_env() -> Vec<Guard> {
    std::env::var("ITG_SIM_GUARDS_OFF")
        .unwrap_or_default()
        .split(',')
        .filter_map(|g| match g.trim() {
            "KeepReady" => Some(Guard::KeepReady),
            "" => None,
            other => panic!("ITG_SIM_GUARDS_OFF: no guard {other}"),
        })
        .collect()
}

/// Runs `seeds` on every core; returns the failing reports, in seed order.
fn sweep(
    seeds: std::ops::Range<u64>,
    overrides: &str,
    off: &[Guard],
    stop_at_first: bool,
) -> Vec<Report> {
    let next = AtomicU64::new(seeds.start);
    let found = std::sync::Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    if stop_at_first && !found.lock().unwrap().is_empty() {
                        return;
                    }
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= seeds.end {
                        return;
                    }
                    let r = run(seed, overrides, off, false);
                    if !r.violations.is_empty() {
                        found.lock().unwrap().push(r);
                    }
                }
            });
        }
    });
    let mut found = found.into_inner().unwrap();
    found.sort_by_key(|r| r.seed);
    found
}

/// The tests of this file take turns, so that each sweep has the cores to itself.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn one_seed_run_twice_gives_the_same_trace() {
    let _turn = turn();
    // A seed with crashes, duplicates, a stale controller and reply failures, so the schedule is busy.
    let busy = "crash=2,dup_same=0.5,dup_new=0.5,stale=1,lag=2000,reply_fail=0.3,workers=3,lanes=2";
    for seed in [3, 17] {
        let a = run(seed, busy, &[], true);
        let b = run(seed, busy, &[], true);
        let (fa, fb) = (
            a.full.clone().unwrap_or_default(),
            b.full.clone().unwrap_or_default(),
        );
        if let Some(i) = (0..fa.len().min(fb.len())).find(|i| fa[*i] != fb[*i]) {
            panic!(
                "seed {seed}: the second run differs at line {i}:\n{}\n{}",
                fa[i], fb[i]
            );
        }
        assert!(
            a.lines > 200,
            "seed {seed} made only {} trace lines",
            a.lines
        );
        assert_eq!(
            (a.hash, a.lines, a.replies),
            (b.hash, b.lines, b.replies),
            "seed {seed} gave two traces; last lines:\n{}\n---\n{}",
            a.tail.join("\n"),
            b.tail.join("\n")
        );
    }
}

/// The seeds CI runs: fast enough for a debug build on a busy machine.
const CI_SEEDS: std::ops::Range<u64> = 0..120;

/// Seeds of the CI range that find a defect of issue 31 not fixed yet, with the item. Remove a seed once
/// its fix lands; a seed failing that is not listed here fails the test.
const KNOWN: &[(u64, &str)] = &[
    (
        96,
        "item 3: after the bucket is lost, the replayed started counts its own standing listeners against the limit and is failed after its ready",
    ),
    (
        113,
        "item 3: after the bucket is lost, a ready allocation served again is failed (the apiserver deadline, counted from the rebuilt record) while the master holds its ready",
    ),
];

#[test]
fn a_fixed_range_of_seeds_keeps_every_promise() {
    let _turn = turn();
    let failed: Vec<Report> = sweep(CI_SEEDS, "", &[], false)
        .into_iter()
        .filter(|r| {
            let known = KNOWN.iter().find(|(s, _)| *s == r.seed);
            if let Some((seed, item)) = known {
                eprintln!("seed {seed} (known, {item}): {}", r.violations[0]);
            }
            known.is_none()
        })
        .collect();
    let text: Vec<String> = failed.iter().take(3).map(|r| explain(r, "", &[])).collect();
    assert!(
        failed.is_empty(),
        "{} of {} seeds broke a promise ({:?}):\n{}",
        failed.len(),
        CI_SEEDS.end - CI_SEEDS.start,
        failed.iter().map(|r| r.seed).collect::<Vec<_>>(),
        text.join("\n")
    );
}

/// With the guard that keeps a `ready` allocation when a started of it is given up on turned off, the
/// simulator must find the `failed` that then follows a `ready`, within a bounded number of seeds.
#[test]
fn without_the_keep_ready_guard_the_simulator_finds_a_failed_after_ready() {
    let _turn = turn();
    let aimed = "dup_new=0.6,stale=1,lag=8000,max_deliver=2,crash=0,bucket_lost=none";
    let failed = sweep(0..200, aimed, &[Guard::KeepReady], true);
    let first = failed
        .first()
        .unwrap_or_else(|| panic!("no seed of 0..200 found the missing guard"));
    assert!(
        first
            .violations
            .iter()
            .any(|v| v.contains("a failed after its ready") || v.contains("last word is ready")),
        "seed {} found something else: {:?}",
        first.seed,
        first.violations
    );
    eprintln!("seed {} found it: {}", first.seed, first.violations[0]);
}

/// `ITG_SIM_SEED=n` runs one seed and prints its whole trace; `ITG_SIM_SEEDS=n` (from `ITG_SIM_FROM`, 0
/// unless set) runs n seeds on every core. `ITG_SIM_PARAMS` overrides parameters, `ITG_SIM_GUARDS_OFF`
/// turns guards off. Without them, this test does nothing.
#[test]
fn seeds_from_the_environment() {
    let _turn = turn();
    let overrides = std::env::var("ITG_SIM_PARAMS").unwrap_or_default();
    let off = guards_from_env();
    if let Ok(seed) = std::env::var("ITG_SIM_SEED") {
        let seed: u64 = seed.parse().expect("ITG_SIM_SEED is a number");
        let r = run(seed, &overrides, &off, true);
        if std::env::var("ITG_SIM_TWICE").is_ok() {
            let again = run(seed, &overrides, &off, true);
            let (a, b) = (
                r.full.clone().unwrap_or_default(),
                again.full.clone().unwrap_or_default(),
            );
            if let Some(i) = (0..a.len().min(b.len())).find(|i| a[*i] != b[*i]) {
                panic!("the second run differs at line {i}:\n{}\n{}", a[i], b[i]);
            }
            assert_eq!(
                (a.len(), r.hash),
                (b.len(), again.hash),
                "the second run's trace differs"
            );
        }
        for l in r.full.as_deref().unwrap_or_default() {
            println!("{l}");
        }
        println!(
            "seed {seed}: {} trace lines, hash {:016x}, {} replies, {} s virtual",
            r.lines, r.hash, r.replies, r.virtual_secs
        );
        assert!(r.violations.is_empty(), "{}", r.violations.join("\n"));
        return;
    }
    let Ok(n) = std::env::var("ITG_SIM_SEEDS") else {
        return;
    };
    let n: u64 = n.parse().expect("ITG_SIM_SEEDS is a number");
    let from: u64 =
        std::env::var("ITG_SIM_FROM").map_or(0, |f| f.parse().expect("ITG_SIM_FROM is a number"));
    let started = std::time::Instant::now();
    let failed = sweep(from..from + n, &overrides, &off, false);
    println!(
        "{n} seeds from {from} in {:.1} s: {} failed",
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    for r in &failed {
        println!(
            "seed {}: {}",
            r.seed,
            r.violations.first().map_or("", String::as_str)
        );
    }
    if let Some(r) = failed.first() {
        println!("{}", explain(r, &overrides, &off));
    }
    assert!(failed.is_empty(), "{} seeds failed", failed.len());
}
