//! Drives workers as the master does and times their answers: a core NATS subscription on the reply
//! subjects notes the instant each reply arrives, so no polling adds to a measured latency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::common::Master;

type Slot = oneshot::Sender<(String, Instant)>;

/// Hands each reply to whoever waits for it, keyed by allocation and by which event it answers.
#[derive(Clone)]
pub struct Waiter {
    pending: Arc<Mutex<HashMap<String, Slot>>>,
}

fn slot_key(alloc: &str, answers_ended: bool) -> String {
    format!("{alloc}/{}", if answers_ended { "end" } else { "start" })
}

impl Waiter {
    /// Subscribes to every reply subject before anything is published.
    pub async fn start(client: async_nats::Client) -> Waiter {
        let mut sub = client
            .subscribe("itg.replies.>")
            .await
            .expect("subscribe to replies");
        client.flush().await.expect("flush subscription");
        let pending: Arc<Mutex<HashMap<String, Slot>>> = Arc::default();
        let sink = pending.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let at = Instant::now();
                let kind = m.subject.rsplit('.').next().unwrap_or("").to_owned();
                let body: serde_json::Value =
                    serde_json::from_slice(&m.payload).unwrap_or_default();
                let Some(alloc) = body["allocation_id"].as_str() else {
                    continue;
                };
                let key = slot_key(alloc, kind == "removed");
                if let Some(tx) = sink.lock().expect("waiters").remove(&key) {
                    let _ = tx.send((kind, at));
                }
            }
        });
        Waiter { pending }
    }

    fn expect(&self, alloc: &str, answers_ended: bool) -> oneshot::Receiver<(String, Instant)> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("waiters")
            .insert(slot_key(alloc, answers_ended), tx);
        rx
    }
}

async fn answer(rx: oneshot::Receiver<(String, Instant)>, what: &str) -> (String, Instant) {
    tokio::time::timeout(Duration::from_secs(300), rx)
        .await
        .unwrap_or_else(|_| panic!("no reply to {what} within 300 s"))
        .expect("reply waiter alive")
}

/// Publishes a started and waits for its ready; the time from just before the publish to the reply.
pub async fn expose(m: &Master, w: &Waiter, alloc: &str, ns: &str) -> Result<Duration, String> {
    expose_from(m, w, alloc, ns, Instant::now()).await
}

/// [`expose`], timed from `t0`, an instant the caller took just before, so that something it starts at the
/// same time is timed from the same instant.
pub async fn expose_from(
    m: &Master,
    w: &Waiter,
    alloc: &str,
    ns: &str,
    t0: Instant,
) -> Result<Duration, String> {
    let rx = w.expect(alloc, false);
    m.started_with(Uuid::new_v4(), alloc, ns, &[("jupyter", 8888)])
        .await;
    let (kind, at) = answer(rx, &format!("started {alloc}")).await;
    if kind == "ready" {
        Ok(at - t0)
    } else {
        Err(format!("started {alloc} answered {kind}"))
    }
}

/// Publishes an ended and waits for its removed.
pub async fn end(m: &Master, w: &Waiter, alloc: &str) -> Duration {
    let rx = w.expect(alloc, true);
    let t0 = Instant::now();
    m.ended(alloc).await;
    answer(rx, &format!("ended {alloc}")).await.1 - t0
}

/// A fresh allocation id, unique across runs.
pub fn alloc_id(tag: &str) -> String {
    format!("{}.{tag}", &Uuid::new_v4().simple().to_string()[..12])
}

/// Runs `total` lifecycles (started, ready, ended, removed), `in_flight` at a time per resource manager;
/// returns the wall time and how many starts were refused.
pub async fn lifecycles(
    targets: &[(Master, String)],
    w: &Waiter,
    total: usize,
    in_flight: usize,
) -> (Duration, usize) {
    let left = Arc::new(AtomicUsize::new(total));
    let refused = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (m, ns) in targets {
        for _ in 0..in_flight {
            let (m, ns, w, left, refused) = (
                m.clone(),
                ns.clone(),
                w.clone(),
                left.clone(),
                refused.clone(),
            );
            tasks.spawn(async move {
                while left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let a = alloc_id("life");
                    if expose(&m, &w, &a, &ns).await.is_err() {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    end(&m, &w, &a).await;
                }
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("lifecycle task");
    }
    (t0.elapsed(), refused.load(Ordering::SeqCst))
}

/// Exposes `n` allocations spread round-robin over `targets`, `in_flight` at a time; returns their ids per
/// target.
pub async fn fill(
    targets: &[(Master, String)],
    w: &Waiter,
    n: usize,
    in_flight: usize,
) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new(); targets.len()];
    let mut jobs = Vec::new();
    for i in 0..n {
        let t = i % targets.len();
        let a = alloc_id(&format!("live{i}"));
        out[t].push(a.clone());
        jobs.push((t, a));
    }
    futures::stream::iter(jobs)
        .for_each_concurrent(in_flight, |(t, a)| {
            let (m, ns) = &targets[t];
            async move {
                expose(m, w, &a, ns).await.expect("live allocation exposed");
            }
        })
        .await;
    out
}

/// Ends every allocation of `fill`.
pub async fn drain(
    targets: &[(Master, String)],
    w: &Waiter,
    live: &[Vec<String>],
    in_flight: usize,
) {
    let jobs: Vec<(usize, &String)> = live
        .iter()
        .enumerate()
        .flat_map(|(t, v)| v.iter().map(move |a| (t, a)))
        .collect();
    futures::stream::iter(jobs)
        .for_each_concurrent(in_flight, |(t, a)| {
            let m = &targets[t].0;
            async move {
                end(m, w, a).await;
            }
        })
        .await;
}

/// Latency percentiles of a sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pcts {
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
}

/// Nearest-rank percentiles.
pub fn pcts(sample: &[Duration]) -> Pcts {
    let mut s = sample.to_vec();
    s.sort();
    let at = |q: f64| {
        if s.is_empty() {
            return Duration::ZERO;
        }
        let rank = (q * s.len() as f64).ceil() as usize;
        s[rank.clamp(1, s.len()) - 1]
    };
    Pcts {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    }
}
