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
    // The bucket keeps each release's time on its delete marker: the same cooling as the index's.
    let now = crate::clock::system_now();
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
