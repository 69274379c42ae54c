//! The claim protocol: which ports look free, how one is claimed and released, with compare-and-set on
//! one key per Gateway port. Exclusivity comes from the create alone; everything else (the allocator's
//! order, the store's [`PortIndex`](crate::store::PortIndex) hint) only makes a free port likely to be found first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::allocator::{self, PortView};
use crate::contract::GatewayRef;
use crate::crashpoint;
use crate::names;
use crate::resource_manager::RmContext;
use crate::store::{KeyState, Outcome, Store, StoreError, encode};

/// Compare-and-set rounds a claim or a release may spend before it reports the key as contended.
const MAX_ROUNDS: usize = 16;

/// Who holds a port: the value of a port key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortClaim {
    /// The allocation record's key.
    pub allocation: String,
    /// The proxy port name within the allocation.
    pub proxy: String,
    /// Unix seconds of the claim, for the reconciler's hold-off.
    #[serde(default)]
    pub claimed_at: i64,
}

impl PortClaim {
    /// Whether this claim is held by `allocation_key` for `proxy`.
    pub fn held_by(&self, allocation_key: &str, proxy: &str) -> bool {
        self.allocation == allocation_key && self.proxy == proxy
    }
}

/// Up to `n` ports of the resource manager's range that look free: allowed by config, not in `view`'s
/// foreign or taken ports, and unclaimed. The search starts at `start`, so concurrent workers spread out,
/// and passes over ports released less than `cooling` ago while others are free (see [`unclaimed`]).
///
/// # Errors
/// [`StoreError`] when the bucket cannot be read.
pub async fn choose<S: Store>(
    store: &S,
    rm: &RmContext,
    on: &GatewayRef,
    view: &PortView,
    start: u32,
    n: usize,
    cooling: Duration,
) -> Result<Vec<u16>, StoreError> {
    let candidates = allocator::candidates(rm.range.clone(), view, start);
    unclaimed(store, &rm.port_key_prefix(on), candidates, n, cooling).await
}

/// Up to `n` ports of `candidates`, in order, whose key (`prefix` and the port) holds no live claim. A hint
/// for the port search: the create that follows is what makes a claim exclusive.
///
/// A port released less than `cooling` ago comes after every other (in the same order): an apply its last
/// holder sent before it gave the port up can still land (or stand, from a worker killed mid-pass, until
/// the reconciler removes it), and on a port nobody else holds that stray listener harms no one. Not the
/// longest-released first: every search would then pick the same port, and all but one lose the create.
///
/// # Errors
/// [`StoreError`] when the bucket cannot be read.
pub async fn unclaimed<S: Store>(
    store: &S,
    prefix: &str,
    candidates: impl Iterator<Item = u16> + Clone,
    n: usize,
    cooling: Duration,
) -> Result<Vec<u16>, StoreError> {
    if let Some(index) = store.port_index(prefix).await {
        let now = SystemTime::now();
        let mut hinted = Vec::with_capacity(n);
        let mut cool = Vec::new();
        for port in candidates.clone().filter(|p| !index.is_claimed(*p)) {
            if hinted.len() == n {
                break;
            }
            if index.released_within(port, cooling, now).is_some() {
                cool.push(port);
            } else {
                hinted.push(port);
            }
        }
        let short = n - hinted.len();
        hinted.extend(cool.into_iter().take(short));
        if hinted.len() == n {
            return Ok(hinted);
        }
        // Too few look free: the index may not have seen a release yet, and nobody is told to wait for
        // capacity on a hint, so the bucket itself is asked.
    }
    // The bucket keeps each release's time on its delete marker: the same cooling as the index's.
    let now = SystemTime::now();
    let (mut chosen, mut cool) = (Vec::with_capacity(n), Vec::new());
    for port in candidates {
        if chosen.len() == n {
            break;
        }
        match store.state_of(&names::port_key_at(prefix, port)).await? {
            KeyState::Live => {}
            KeyState::Free(Some(at)) if now.duration_since(at).unwrap_or_default() < cooling => {
                cool.push(port);
            }
            KeyState::Free(_) => chosen.push(port),
        }
    }
    let short = n - chosen.len();
    chosen.extend(cool.into_iter().take(short));
    Ok(chosen)
}

/// Makes the port key of `port` on Gateway `on` owned by `allocation_key` for `proxy`. `false` when someone else holds it.
///
/// # Errors
/// [`StoreError`] when the bucket cannot be read or written.
pub async fn claim<S: Store>(
    store: &S,
    rm: &RmContext,
    on: &GatewayRef,
    allocation_key: &str,
    proxy: &str,
    port: u16,
    now: i64,
) -> Result<bool, StoreError> {
    let pkey = rm.port_key(on, port);
    let claim = PortClaim {
        allocation: allocation_key.to_owned(),
        proxy: proxy.to_owned(),
        claimed_at: now,
    };
    for _ in 0..MAX_ROUNDS {
        if let Outcome::Written(_) = store.create(&pkey, encode(&claim)).await? {
            return Ok(true);
        }
        match store.get(&pkey).await? {
            Some(e) => {
                return Ok(serde_json::from_slice::<PortClaim>(&e.value)
                    .is_ok_and(|c| c.held_by(allocation_key, proxy)));
            }
            None => continue,
        }
    }
    Ok(false)
}

/// Frees the port key of `port` only if `allocation_key` still holds it for `proxy`.
///
/// # Errors
/// [`StoreError`] when the bucket cannot be read or written, or the key kept changing.
pub async fn release<S: Store>(
    store: &S,
    rm: &RmContext,
    on: &GatewayRef,
    allocation_key: &str,
    proxy: &str,
    port: u16,
) -> Result<(), StoreError> {
    let pkey = rm.port_key(on, port);
    for _ in 0..MAX_ROUNDS {
        let Some(e) = store.get(&pkey).await? else {
            return Ok(());
        };
        let ours = serde_json::from_slice::<PortClaim>(&e.value)
            .is_ok_and(|c| c.held_by(allocation_key, proxy));
        if !ours {
            return Ok(());
        }
        if let Outcome::Written(_) = store.delete(&pkey, e.revision).await? {
            crashpoint::reach("withdraw.port_released");
            return Ok(());
        }
    }
    Err(StoreError {
        bucket: String::new(),
        op: "release",
        key: pkey,
        message: "the port key kept changing".into(),
    })
}

/// Frees the claim of `port` whoever holds it, only if it is still at `revision`: for the reconciler,
/// which decided from that revision that its holder is gone.
///
/// # Errors
/// [`StoreError`] when the bucket cannot be written.
pub async fn release_at<S: Store>(
    store: &S,
    rm: &RmContext,
    on: &GatewayRef,
    port: u16,
    revision: u64,
) -> Result<Outcome, StoreError> {
    store.delete(&rm.port_key(on, port), revision).await
}

/// The ports claimed on Gateway `on` of the resource manager's pool.
///
/// # Errors
/// [`StoreError`] when the bucket cannot be read.
pub async fn claimed_ports<S: Store>(
    store: &S,
    rm: &RmContext,
    on: &GatewayRef,
) -> Result<BTreeSet<u16>, StoreError> {
    let prefix = rm.port_key_prefix(on);
    Ok(store
        .keys(&prefix)
        .await?
        .iter()
        .filter_map(|k| names::parse_port_key(k, &prefix))
        .collect())
}

/// Every readable claim on Gateway `on` of the resource manager's pool, with its revision. A claim that cannot be read
/// is left out: it is never released, which is the safe side.
///
/// # Errors
/// [`StoreError`] when the bucket cannot be read.
pub async fn claims<S: Store>(
    store: &S,
    rm: &RmContext,
    on: &GatewayRef,
) -> Result<BTreeMap<u16, (PortClaim, u64)>, StoreError> {
    let prefix = rm.port_key_prefix(on);
    let mut out = BTreeMap::new();
    for (key, e) in store.entries(&prefix).await? {
        let Some(port) = names::parse_port_key(&key, &prefix) else {
            continue;
        };
        if let Ok(c) = serde_json::from_slice::<PortClaim>(&e.value) {
            out.insert(port, (c, e.revision));
        }
    }
    Ok(out)
}

/// Ports for proxies that may each prefer one (the port its listener already stands on): a preferred
/// port that [`allocator::keepable`] allows and no live claim holds is kept, so an allocation whose record
/// lost its ports keeps its address; every other proxy gets a port from the search ([`choose`]), never one
/// kept for another. `None` when too few ports look free.
///
/// # Errors
/// [`StoreError`] when the bucket cannot be read.
pub async fn choose_keeping<S: Store>(
    store: &S,
    rm: &RmContext,
    on: &GatewayRef,
    view: &PortView,
    preferred: &[Option<u16>],
    start: u32,
    cooling: Duration,
) -> Result<Option<Vec<u16>>, StoreError> {
    let prefix = rm.port_key_prefix(on);
    let mut kept = allocator::keepable(rm.range.clone(), view, preferred);
    for k in &mut kept {
        if let Some(p) = *k
            && unclaimed(store, &prefix, std::iter::once(p), 1, Duration::ZERO)
                .await?
                .is_empty()
        {
            *k = None;
        }
    }
    let mut rest_view = view.clone();
    rest_view.taken.extend(kept.iter().flatten());
    let rest = kept.iter().filter(|k| k.is_none()).count();
    let chosen = choose(store, rm, on, &rest_view, start, rest, cooling).await?;
    if chosen.len() < rest {
        return Ok(None);
    }
    let mut chosen = chosen.into_iter();
    Ok(Some(
        kept.into_iter()
            .filter_map(|k| k.or_else(|| chosen.next()))
            .collect(),
    ))
}

#[cfg(test)]
mod keeping_tests {
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::store::Entry;

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
        let cfg = crate::config::Config::parse(
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
}
