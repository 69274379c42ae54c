//! The allocator alone against raw `kv.create`, both `ways`-way concurrent on the same bucket.
//!
//! An allocation is what the worker does for one proxy port: search the range from a random point for a
//! port whose key holds no claim ([`itg::claims::unclaimed`]), then create that key; a lost race searches
//! again. The range is twice the number of allocations, so it ends half full.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use itg::allocator::{self, PortView};
use itg::names;
use itg::nats::KvStore;
use itg::store::{Outcome, Store};

fn claim() -> bytes::Bytes {
    bytes::Bytes::from_static(br#"{"allocation":"alloc.bench.x","proxy":"jupyter","claimed_at":0}"#)
}

/// Allocations per second and the number of lost races.
pub async fn allocator(store: &KvStore, raw: &kv::Store, n: usize, ways: usize) -> (f64, usize) {
    let rm = format!("alloc-{}", crate::common::suffix());
    let prefix = names::port_key_prefix(&rm, "gateway-system", "bench");
    let lo = 20000u16;
    let hi = lo + u16::try_from(2 * n - 1).expect("range fits");
    let left = Arc::new(AtomicUsize::new(n));
    let lost = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..ways {
        let (store, prefix, left, lost) =
            (store.clone(), prefix.clone(), left.clone(), lost.clone());
        tasks.spawn(async move {
            let view = PortView::default();
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                loop {
                    let start: u32 = rand::random();
                    let cands = allocator::candidates(lo..=hi, &view, start);
                    let ports = itg::claims::unclaimed(&store, &prefix, cands, 1)
                        .await
                        .expect("search");
                    let port = *ports.first().expect("a free port");
                    match store.create(&format!("{prefix}{port}"), claim()).await {
                        Ok(Outcome::Written(_)) => break,
                        Ok(Outcome::Conflict) => {
                            lost.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("claim: {e}"),
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("allocator task");
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    purge(raw, (lo..=hi).map(|p| format!("{prefix}{p}"))).await;
    (rate, lost.load(Ordering::SeqCst))
}

/// Raw creates of distinct keys per second.
pub async fn raw_create(raw: &kv::Store, n: usize, ways: usize) -> f64 {
    let prefix = format!("bench.raw.{}.", crate::common::suffix());
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
