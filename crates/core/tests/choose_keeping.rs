//! The port choice with preferred ports (`claims::choose_keeping`): a proxy keeps the port its listener
//! stands on where it may, every other proxy gets a distinct free port, and too few free ports answer
//! none. Over a store in memory whose calls complete at once.
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use proptest::prelude::*;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use itg_core::allocator::{self, PortView};
use itg_core::claims::{choose_keeping, claim};
use itg_core::resource_manager::RmContext;
use itg_core::store::{Entry, Outcome, Store, StoreError};

/// Keys and values in memory; every call completes at once, so a test polls it to the end in one go.
#[derive(Clone, Default)]
struct Mem(Arc<Mutex<BTreeMap<String, Bytes>>>);

impl Store for Mem {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let m = self.0.lock().map_err(|_| poisoned())?;
        Ok(m.get(key).map(|v| Entry {
            value: v.clone(),
            revision: 1,
        }))
    }
    async fn create(&self, key: &str, value: Bytes) -> Result<Outcome, StoreError> {
        let mut m = self.0.lock().map_err(|_| poisoned())?;
        if m.contains_key(key) {
            return Ok(Outcome::Conflict);
        }
        m.insert(key.to_owned(), value);
        Ok(Outcome::Written(1))
    }
    async fn update(&self, key: &str, value: Bytes, _rev: u64) -> Result<Outcome, StoreError> {
        let mut m = self.0.lock().map_err(|_| poisoned())?;
        m.insert(key.to_owned(), value);
        Ok(Outcome::Written(1))
    }
    async fn delete(&self, key: &str, _rev: u64) -> Result<Outcome, StoreError> {
        let mut m = self.0.lock().map_err(|_| poisoned())?;
        m.remove(key);
        Ok(Outcome::Written(1))
    }
    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let m = self.0.lock().map_err(|_| poisoned())?;
        Ok(m.keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
}

fn poisoned() -> StoreError {
    StoreError {
        bucket: "mem".into(),
        op: "lock",
        key: String::new(),
        message: "poisoned".into(),
    }
}

/// Runs a future that never waits to its end.
fn now<T>(f: impl std::future::Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the in-memory store never waits"),
    }
}

fn rm() -> RmContext {
    let cfg = itg_core::config::Config::parse(
        "nats: {url: 'nats://127.0.0.1:4222'}\nresource_managers:\n  - name: rm\n    internal_task_gateway: {gateway_name: itg, gateway_namespace: gw, gateway_ip: 203.0.113.10, gateway_port_range_start: 40000, gateway_port_range_end: 40009}\n",
        "test",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    RmContext::new(&cfg.resource_managers[0])
}

fn claimed(store: &Mem, rm: &RmContext, port: u16) {
    let on = rm.pool[0].gateway.clone();
    assert!(now(claim(store, rm, &on, "alloc.rm.x", "p", port, 0)).unwrap());
}

#[test]
fn a_standing_port_is_kept_unless_another_claim_holds_it() {
    let (store, rm) = (Mem::default(), rm());
    let on = rm.pool[0].gateway.clone();
    claimed(&store, &rm, 40003);
    let view = PortView::default();
    let got = now(choose_keeping(
        &store,
        &rm,
        &on,
        &view,
        &[Some(40005), Some(40003), None],
        0,
        Duration::ZERO,
    ))
    .unwrap()
    .unwrap();
    assert_eq!(got[0], 40005, "kept");
    assert!(
        got[1] != 40003 && got[2] != 40003,
        "a claimed port is never kept: {got:?}"
    );
    assert!(
        !got[1..].contains(&40005),
        "a kept port is chosen twice: {got:?}"
    );
}

#[test]
fn too_few_free_ports_answer_none_even_with_a_kept_one() {
    let (store, rm) = (Mem::default(), rm());
    let on = rm.pool[0].gateway.clone();
    for p in 40000..=40008 {
        claimed(&store, &rm, p);
    }
    let view = PortView::default();
    let one = now(choose_keeping(
        &store,
        &rm,
        &on,
        &view,
        &[Some(40009)],
        0,
        Duration::ZERO,
    ))
    .unwrap();
    assert_eq!(one, Some(vec![40009]));
    let two = now(choose_keeping(
        &store,
        &rm,
        &on,
        &view,
        &[Some(40009), None],
        0,
        Duration::ZERO,
    ))
    .unwrap();
    assert_eq!(two, None);
}

proptest! {
    #[test]
    fn the_choice_is_distinct_unclaimed_allowed_and_keeps_what_it_may(
        claimed_ports in proptest::collection::btree_set(40000u16..=40009, 0..10),
        taken in proptest::collection::btree_set(40000u16..=40009, 0..4),
        preferred in proptest::collection::vec(proptest::option::of(39998u16..=40011), 0..5),
        start in any::<u32>(),
    ) {
        let (store, rm) = (Mem::default(), rm());
        let on = rm.pool[0].gateway.clone();
        for p in &claimed_ports {
            claimed(&store, &rm, *p);
        }
        let view = PortView { taken: taken.clone(), ..PortView::default() };
        let got = now(choose_keeping(&store, &rm, &on, &view, &preferred, start, Duration::ZERO)).unwrap();
        let free = (40000u16..=40009).filter(|p| !claimed_ports.contains(p) && !taken.contains(p)).count();
        match got {
            None => prop_assert!(free < preferred.len(), "{} free for {} proxies", free, preferred.len()),
            Some(got) => {
                prop_assert_eq!(got.len(), preferred.len());
                let set: BTreeSet<u16> = got.iter().copied().collect();
                prop_assert_eq!(set.len(), got.len(), "a port twice: {:?}", got);
                for p in &got {
                    prop_assert!(!claimed_ports.contains(p) && !taken.contains(p) && rm.range.contains(p));
                }
                let keepable = allocator::keepable(rm.range.clone(), &view, &preferred);
                for (k, g) in keepable.iter().zip(&got) {
                    if let Some(k) = k && !claimed_ports.contains(k) {
                        prop_assert_eq!(k, g, "a free preferred port was not kept");
                    }
                }
            }
        }
    }
}
