//! The claim protocol: which ports look free, how one is claimed and released, with compare-and-set on
//! one key per Gateway port. Exclusivity comes from the create alone; everything else (the allocator's
//! order, the store's [`PortIndex`](crate::store::PortIndex) hint) only makes a free port likely to be found first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::allocator::{self, PortView};
use crate::contract::GatewayRef;
use crate::crashpoint;
use crate::names;
use crate::resource_manager::RmContext;
use crate::store::{KeyState, Outcome, Store, StoreError, encode};

/// Compare-and-set rounds a claim or a release may spend before it reports the key as contended.
const MAX_ROUNDS: usize = 16;

/// Bucket reads a search past the index may spend on lately released ports, beyond the ones it wants.
const COOLING_PROBES: usize = 8;

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
/// When the index has too few, the bucket is asked: one listing of the Gateway's claims and at most
/// `n` and a few more gets, whatever the size of the range.
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
        let now = crate::clock::system_now();
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
    // One listing of the live keys, not a get per candidate: at capacity that was a round trip per port of
    // the range. The listing is a hint as the index is; the create still decides.
    let live: BTreeSet<u16> = store
        .keys(prefix)
        .await?
        .iter()
        .filter_map(|k| names::parse_port_key(k, prefix))
        .collect();
    // The bucket keeps each release's time on its delete marker: the same cooling as the index's. Asking
    // it costs a get per port, so only the first few free ones are asked; past them, free counts as cool.
    let now = crate::clock::system_now();
    let (mut chosen, mut cool) = (Vec::with_capacity(n), Vec::new());
    let mut asks = n + COOLING_PROBES;
    for port in candidates.filter(|p| !live.contains(p)) {
        if chosen.len() == n {
            break;
        }
        if asks == 0 {
            chosen.push(port);
            continue;
        }
        asks -= 1;
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
    claims_under(store, &rm.port_key_prefix(on)).await
}

/// Every readable claim under one Gateway's port key `prefix` ([`names::port_key_prefix`]), with its
/// revision: [`claims`] for a reader that knows the resource manager by name only.
///
/// # Errors
/// [`StoreError`] when the bucket cannot be read.
pub async fn claims_under<S: Store>(
    store: &S,
    prefix: &str,
) -> Result<BTreeMap<u16, (PortClaim, u64)>, StoreError> {
    let mut out = BTreeMap::new();
    for (key, e) in store.entries(prefix).await? {
        let Some(port) = names::parse_port_key(&key, prefix) else {
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
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    /// A bucket in memory that counts its round trips by kind.
    #[derive(Clone, Default)]
    struct Counting {
        live: Arc<Mutex<BTreeMap<String, Entry>>>,
        released: Arc<Mutex<BTreeMap<String, SystemTime>>>,
        gets: Arc<AtomicUsize>,
        listings: Arc<AtomicUsize>,
    }

    use crate::store::Entry;

    impl Store for Counting {
        async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            Ok(self.live.lock().unwrap().get(key).cloned())
        }
        async fn state_of(&self, key: &str) -> Result<KeyState, StoreError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            if self.live.lock().unwrap().contains_key(key) {
                return Ok(KeyState::Live);
            }
            Ok(KeyState::Free(
                self.released.lock().unwrap().get(key).copied(),
            ))
        }
        async fn create(&self, key: &str, value: bytes::Bytes) -> Result<Outcome, StoreError> {
            let mut live = self.live.lock().unwrap();
            if live.contains_key(key) {
                return Ok(Outcome::Conflict);
            }
            live.insert(key.to_owned(), Entry { value, revision: 1 });
            Ok(Outcome::Written(1))
        }
        async fn update(&self, _: &str, _: bytes::Bytes, _: u64) -> Result<Outcome, StoreError> {
            Ok(Outcome::Conflict)
        }
        async fn delete(&self, key: &str, _: u64) -> Result<Outcome, StoreError> {
            self.live.lock().unwrap().remove(key);
            self.released
                .lock()
                .unwrap()
                .insert(key.to_owned(), SystemTime::now());
            Ok(Outcome::Written(2))
        }
        async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
            self.listings.fetch_add(1, Ordering::SeqCst);
            Ok(self
                .live
                .lock()
                .unwrap()
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect())
        }
    }

    /// Runs a future whose every await is ready at once, as the store's above are.
    fn run<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    const PREFIX: &str = "port.rm.gateway-system.gw.";
    const RANGE: std::ops::RangeInclusive<u16> = 40000..=40999;

    fn claimed_all_but(free: &[u16]) -> Counting {
        let s = Counting::default();
        for port in RANGE.filter(|p| !free.contains(p)) {
            run(s.create(&names::port_key_at(PREFIX, port), bytes::Bytes::new())).unwrap();
        }
        s
    }

    #[test]
    fn a_search_of_a_full_range_makes_no_get_per_port() {
        let s = claimed_all_but(&[]);
        let got = run(unclaimed(&s, PREFIX, RANGE, 1, Duration::ZERO)).unwrap();
        assert!(got.is_empty());
        let (gets, listings) = (
            s.gets.load(Ordering::SeqCst),
            s.listings.load(Ordering::SeqCst),
        );
        println!(
            "full range of {} ports: {gets} gets, {listings} listings",
            RANGE.len()
        );
        assert!(
            gets + listings <= 1,
            "{gets} gets and {listings} listings for a range of {} ports",
            RANGE.len()
        );
    }

    #[test]
    fn the_last_free_port_of_a_nearly_full_range_is_found_in_bounded_gets() {
        let s = claimed_all_but(&[40999]);
        let got = run(unclaimed(&s, PREFIX, RANGE, 1, Duration::ZERO)).unwrap();
        assert_eq!(got, vec![40999]);
        let gets = s.gets.load(Ordering::SeqCst);
        println!("one free port of {}: {gets} gets", RANGE.len());
        assert!(gets <= 1 + COOLING_PROBES, "{gets} gets");
    }

    #[test]
    fn lately_released_ports_cost_bounded_gets_and_still_come_last() {
        // Every port but 40999 released just now: a search may not ask the bucket about each one.
        let s = claimed_all_but(&[]);
        for port in RANGE.filter(|p| *p != 40999) {
            run(s.delete(&names::port_key_at(PREFIX, port), 1)).unwrap();
        }
        s.gets.store(0, Ordering::SeqCst);
        let got = run(unclaimed(&s, PREFIX, RANGE, 2, Duration::from_secs(60))).unwrap();
        assert_eq!(got.len(), 2);
        let gets = s.gets.load(Ordering::SeqCst);
        println!("{} ports released lately: {gets} gets", RANGE.len() - 1);
        assert!(gets <= 2 + COOLING_PROBES, "{gets} gets");
        let s = claimed_all_but(&[40000, 40001]);
        run(s.delete(&names::port_key_at(PREFIX, 40002), 1)).unwrap();
        let got = run(unclaimed(
            &s,
            PREFIX,
            [40002, 40000, 40001].into_iter(),
            2,
            Duration::from_secs(60),
        ))
        .unwrap();
        assert_eq!(
            got,
            vec![40000, 40001],
            "the lately released one comes last"
        );
    }
}
