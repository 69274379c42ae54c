//! The allocator alone against raw `kv.create`, both `ways`-way concurrent on the same bucket.
//!
//! An allocation is what the worker does for one proxy port: search the range from a random point for a
//! port whose key holds no claim ([`itg::claims::unclaimed`]), then create that key; a lost race searches
//! again. The range is twice the number of allocations, so it ends half full.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use itg::allocator::{self, PortView};
use itg::names;
use itg::nats::KvStore;
use itg::store::{Outcome, Store};

use crate::Bench;
use crate::report::{Target, compared, info, ms};

fn claim() -> bytes::Bytes {
    bytes::Bytes::from_static(br#"{"allocation":"alloc.bench.x","proxy":"jupyter","claimed_at":0}"#)
}

/// Where the allocator's time went, summed over its tasks.
#[derive(Debug, Default, Clone, Copy)]
pub struct Spent {
    /// In the port search (`claims::unclaimed`), the first one included (it starts the index's watch).
    pub search: Duration,
    /// The first search alone.
    pub first_search: Duration,
    /// In the creates.
    pub create: Duration,
}

/// Allocations per second, the number of lost races and where the time went. With `warm`, the Gateway's
/// port index is started before the clock (as in a worker that has served the Gateway before).
pub async fn allocator(
    store: &KvStore,
    raw: &kv::Store,
    n: usize,
    ways: usize,
    warm: bool,
) -> (f64, usize, Spent) {
    let rm = format!("alloc-{}", crate::common::suffix());
    let prefix = names::port_key_prefix(&rm, "gateway-system", "bench");
    if warm {
        let _ = store.port_index(&prefix).await;
    }
    let lo = 20000u16;
    let hi = lo + u16::try_from(2 * n - 1).expect("range fits");
    let left = Arc::new(AtomicUsize::new(n));
    let lost = Arc::new(AtomicUsize::new(0));
    let spent = Arc::new(std::sync::Mutex::new(Spent::default()));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..ways {
        let (store, prefix, left, lost, spent) = (
            store.clone(),
            prefix.clone(),
            left.clone(),
            lost.clone(),
            spent.clone(),
        );
        tasks.spawn(async move {
            let view = PortView::default();
            let cooling = itg::config::WorkerConfig::default().reconcile_hold_off.0;
            let mut mine = Spent::default();
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                loop {
                    let t = Instant::now();
                    let start: u32 = rand::random();
                    let cands = allocator::candidates(lo..=hi, &view, start);
                    let ports = itg::claims::unclaimed(&store, &prefix, cands, 1, cooling)
                        .await
                        .expect("search");
                    let port = *ports.first().expect("a free port");
                    let searched = t.elapsed();
                    if mine.search.is_zero() {
                        mine.first_search = searched;
                    }
                    mine.search += searched;
                    let t = Instant::now();
                    let made = store.create(&format!("{prefix}{port}"), claim()).await;
                    mine.create += t.elapsed();
                    match made {
                        Ok(Outcome::Written(_)) => break,
                        Ok(Outcome::Conflict) => {
                            lost.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("claim: {e}"),
                    }
                }
            }
            let mut all = spent.lock().expect("spent");
            all.search += mine.search;
            all.create += mine.create;
            all.first_search = all.first_search.max(mine.first_search);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("allocator task");
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    purge(raw, (lo..=hi).map(|p| format!("{prefix}{p}"))).await;
    let spent = *spent.lock().expect("spent");
    (rate, lost.load(Ordering::SeqCst), spent)
}

/// Raw creates of distinct keys per second. With `watched`, the keys are followed meanwhile by the same
/// watch as a Gateway's port index (started before the clock), to price the watch alone.
pub async fn raw_create(raw: &kv::Store, n: usize, ways: usize, watched: Option<&KvStore>) -> f64 {
    let prefix = format!("bench.raw.{}.", crate::common::suffix());
    if let Some(store) = watched {
        let _ = store.port_index(&prefix).await;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..ways {
        let (raw, prefix, next) = (raw.clone(), prefix.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                raw.create(format!("{prefix}{i}"), claim())
                    .await
                    .expect("raw create");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("raw task");
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    purge(raw, (0..n).map(|i| format!("{prefix}{i}"))).await;
    rate
}

async fn purge(raw: &kv::Store, keys: impl Iterator<Item = String>) {
    let keys: Vec<String> = keys.collect();
    futures::future::join_all(keys.chunks(256).map(|chunk| async move {
        for k in chunk {
            let _ = raw.purge(k).await;
        }
    }))
    .await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

impl Bench {
    pub(crate) async fn allocator(&mut self) {
        let js = jetstream::new(self.env.nats().await);
        let store = itg::nats::KvStore::open(&js, &Default::default())
            .await
            .expect("state bucket");
        let raw = js.get_key_value("ITG_STATE").await.expect("state bucket");
        let n = self.size.allocations;
        let creates = raw_create(&raw, n, 8, None).await;
        let (allocs, lost, spent) = allocator(&store, &raw, n, 8, false).await;
        self.rows.push(compared(
            "port allocations/s, 8-way (range ends half full)",
            format!("{allocs:.0}/s ({lost} lost races)"),
            format!("raw kv.create {creates:.0}/s"),
            allocs / creates,
            Target::AtLeast(0.8),
        ));
        // The profile: the same again in the other order, with the index's watch started untimed, and raw
        // creates under the same watch the index keeps (so the watch's own price shows).
        let (warm, warm_lost, warm_spent) = allocator(&store, &raw, n, 8, true).await;
        let watched = raw_create(&raw, n, 8, Some(&store)).await;
        let again = raw_create(&raw, n, 8, None).await;
        let share = |s: Spent| {
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
}
