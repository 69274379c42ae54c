//! ListenerSets of others attached to a Gateway: an operator's, another installation's, another resource
//! manager's. Their listeners hold ports on the Gateway as surely as its own listeners do, so their ports
//! are foreign in both listener modes.
//!
//! The watch covers every namespace the Gateway takes sets from (`spec.allowedListeners`): its own for
//! `Same`, all of them for `All` and `Selector`. It selects by label every set that is not this resource
//! manager's, so the worker's own sets are never held twice. Where a cluster-wide list is forbidden it
//! falls back to the Gateway's namespace and says so; where the ListenerSet kind is not served there is
//! nothing to watch.
//!
//! The watch is made when the Gateway is first seen (at start, or later when it was missing then) and made
//! again when its `allowedListeners` change. It keeps, of each set, only the ports of those that attach to
//! this Gateway: every other tenant's sets cluster-wide cost a look, not a copy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use gateway_api::experimental::gateways::{Gateway, GatewayAllowedListenersNamespacesFrom};
use gateway_api::experimental::listenersets::ListenerSet;
use itg_core::names;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

/// How long the first list of the sets may take before the worker goes on without it.
const FIRST_LIST: std::time::Duration = std::time::Duration::from_secs(30);

/// Where the Gateway takes sets from: `None` when it takes none, `Some(None)` for every namespace.
pub(crate) type Wanted = Option<Option<String>>;

/// The attached sets of one Gateway, following the Gateway: cheap to clone, shared by the worker's view.
#[derive(Clone)]
pub struct Attached {
    gateway_namespace: String,
    gateway_name: String,
    client: Client,
    rm: String,
    tick: Arc<tokio::sync::watch::Sender<u64>>,
    slot: Arc<Mutex<Slot>>,
}

#[derive(Default)]
struct Slot {
    /// The scope last asked for; `None` until the Gateway has been seen.
    wanted: Option<Wanted>,
    sets: Option<AttachedSets>,
}

impl Attached {
    /// Follows the sets attached to the Gateway `namespace/name` once [`Attached::follow`] sees it.
    pub(crate) fn new(
        client: Client,
        namespace: &str,
        name: &str,
        rm: &str,
        tick: Arc<tokio::sync::watch::Sender<u64>>,
    ) -> Attached {
        Attached {
            gateway_namespace: namespace.to_owned(),
            gateway_name: name.to_owned(),
            client,
            rm: rm.to_owned(),
            tick,
            slot: Arc::default(),
        }
    }

    /// Makes the watch for `gw` as just read, unless one for the same scope is made already, and returns
    /// once its first list is in. For the start; later changes go through [`Attached::retarget`].
    pub(crate) async fn follow(&self, gw: &Gateway) {
        if let Some(wanted) = self.retarget(gw) {
            self.settle(wanted).await;
        }
    }

    /// Notes the scope `gw` asks for, in the order the Gateway's changes come; when it differs from the
    /// last one, the old watch is dropped and the new scope is returned for [`Attached::settle`].
    pub(crate) fn retarget(&self, gw: &Gateway) -> Option<Wanted> {
        let wanted = scope_of(gw);
        let mut slot = self.slot.lock().ok()?;
        if slot.wanted.as_ref() == Some(&wanted) {
            return None;
        }
        slot.wanted = Some(wanted.clone());
        // The old watch ends with its last clone.
        slot.sets = None;
        Some(wanted)
    }

    /// Starts the watch of `wanted` and keeps it, unless the Gateway has asked for another scope since.
    pub(crate) async fn settle(&self, wanted: Wanted) {
        let sets = match &wanted {
            Some(scope) => self.start(scope.clone()).await,
            None => None,
        };
        if let Ok(mut slot) = self.slot.lock()
            && slot.wanted.as_ref() == Some(&wanted)
        {
            slot.sets = sets;
        }
        self.tick.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The ports of every listener of every set attached to the Gateway: none of them is ours.
    pub fn ports(&self) -> BTreeSet<u16> {
        let Ok(slot) = self.slot.lock() else {
            return BTreeSet::new();
        };
        slot.sets
            .as_ref()
            .map(AttachedSets::ports)
            .unwrap_or_default()
    }

    /// Starts the watch of the sets in `wanted` (`None`: every namespace) and returns once its first list
    /// is in; `None` when the apiserver serves no ListenerSet or the sets cannot be listed.
    async fn start(&self, wanted: Option<String>) -> Option<AttachedSets> {
        let (gateway_namespace, gateway_name) = (&self.gateway_namespace, &self.gateway_name);
        // Sets without this resource manager's label (a `!=` selector also matches sets without the key).
        let selector = format!(
            "{}!={}",
            names::rm_label_key(),
            names::rm_label_value(&self.rm)
        );
        let probe = ListParams::default().labels(&selector).limit(1);
        let mut api: Api<ListenerSet> = match &wanted {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let mut scope = wanted.clone().map_or_else(
            || "all namespaces".to_owned(),
            |ns| format!("namespace {ns}"),
        );
        match api.list_metadata(&probe).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return None,
            Err(kube::Error::Api(s)) if s.code == 403 && wanted.is_none() => {
                tracing::warn!(
                    gateway = %format!("{gateway_namespace}/{gateway_name}"),
                    "listing ListenerSets in all namespaces is forbidden: only those in the Gateway's namespace are seen, and ports of sets elsewhere may be handed out; grant list and watch on listenersets cluster-wide"
                );
                api = Api::namespaced(self.client.clone(), gateway_namespace);
                scope = format!(
                    "namespace {gateway_namespace} only (a cluster-wide list is forbidden)"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the ListenerSets that may attach to the Gateway; their ports may be handed out");
                return None;
            }
        }
        let kept = Arc::new(Kept::new(gateway_namespace, gateway_name));
        let (synced_tx, mut synced) = tokio::sync::watch::channel(false);
        let stream = watcher(api, watcher::Config::default().labels(&selector)).default_backoff();
        let (what, tick, into) = (scope.clone(), self.tick.clone(), kept.clone());
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(ev) => {
                        if into.apply(ev) {
                            synced_tx.send_replace(true);
                        }
                        tick.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    Err(e) => {
                        tracing::warn!(scope = %what, error = %e, "attached ListenerSet watch error; retrying");
                    }
                }
            }
        });
        if !matches!(
            tokio::time::timeout(FIRST_LIST, synced.wait_for(|s| *s)).await,
            Ok(Ok(_))
        ) {
            tracing::warn!(
                scope = %scope,
                "no first list of the attached ListenerSets in 30 s: their ports may be handed out until the watch catches up"
            );
        }
        Some(AttachedSets {
            kept,
            _task: Arc::new(AbortOnDrop(task.abort_handle())),
        })
    }
}

/// A watch of the sets that may attach to one Gateway, other than this resource manager's.
#[derive(Clone)]
struct AttachedSets {
    kept: Arc<Kept>,
    _task: Arc<AbortOnDrop>,
}

impl AttachedSets {
    fn ports(&self) -> BTreeSet<u16> {
        self.kept.ports()
    }
}

/// Ends the watch task with the last clone of its sets.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the watch keeps: the listener ports of each set attached to the Gateway, by `namespace/name`.
/// Sets attached elsewhere are not kept at all.
#[derive(Debug, Default)]
pub(crate) struct Kept {
    gateway_namespace: String,
    gateway_name: String,
    state: RwLock<KeptState>,
}

#[derive(Debug, Default)]
struct KeptState {
    sets: BTreeMap<String, Vec<u16>>,
    /// The union of `sets`, kept current, so that a view reads it without a walk.
    ports: BTreeSet<u16>,
    /// A relist in progress: it replaces `sets` when it ends.
    relist: Option<BTreeMap<String, Vec<u16>>>,
}

impl Kept {
    pub(crate) fn new(gateway_namespace: &str, gateway_name: &str) -> Kept {
        Kept {
            gateway_namespace: gateway_namespace.to_owned(),
            gateway_name: gateway_name.to_owned(),
            state: RwLock::default(),
        }
    }

    /// Takes one watch event in; `true` when a (re)list has just ended.
    pub(crate) fn apply(&self, ev: watcher::Event<ListenerSet>) -> bool {
        let Ok(mut st) = self.state.write() else {
            return false;
        };
        let entry = |set: &ListenerSet| {
            let key = format!(
                "{}/{}",
                set.metadata.namespace.as_deref().unwrap_or_default(),
                set.metadata.name.as_deref().unwrap_or_default()
            );
            let ports = attaches_to(set, &self.gateway_namespace, &self.gateway_name).then(|| {
                set.spec
                    .listeners
                    .iter()
                    .filter_map(|l| u16::try_from(l.port).ok())
                    .collect::<Vec<u16>>()
            });
            (key, ports)
        };
        let done = match ev {
            watcher::Event::Init => {
                st.relist = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(set) => {
                if let ((key, Some(ports)), Some(relist)) = (entry(&set), st.relist.as_mut()) {
                    relist.insert(key, ports);
                }
                false
            }
            watcher::Event::InitDone => {
                if let Some(relist) = st.relist.take() {
                    st.sets = relist;
                }
                true
            }
            watcher::Event::Apply(set) => {
                // A set whose parent changed away from this Gateway is dropped here too.
                match entry(&set) {
                    (key, Some(ports)) => st.sets.insert(key, ports),
                    (key, None) => st.sets.remove(&key),
                };
                false
            }
            watcher::Event::Delete(set) => {
                let (key, _) = entry(&set);
                st.sets.remove(&key);
                false
            }
        };
        st.ports = st.sets.values().flatten().copied().collect();
        done
    }

    /// The ports of every listener of the kept sets.
    pub(crate) fn ports(&self) -> BTreeSet<u16> {
        self.state
            .read()
            .map(|st| st.ports.clone())
            .unwrap_or_default()
    }

    /// How many sets are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.state
            .read()
            .map(|st| st.sets.len())
            .unwrap_or_default()
    }
}

/// Where the Gateway takes sets from: `None` when it takes none, `Some(None)` for every namespace.
fn scope_of(gw: &Gateway) -> Wanted {
    let from = gw
        .spec
        .allowed_listeners
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
        .and_then(|n| n.from.as_ref())?;
    match from {
        GatewayAllowedListenersNamespacesFrom::Same => {
            Some(Some(gw.metadata.namespace.clone().unwrap_or_default()))
        }
        GatewayAllowedListenersNamespacesFrom::All
        | GatewayAllowedListenersNamespacesFrom::Selector => Some(None),
        GatewayAllowedListenersNamespacesFrom::None => None,
    }
}

/// Whether `set`'s parent is the Gateway `ns/name` (the parent's namespace defaults to the set's own).
pub(crate) fn attaches_to(set: &ListenerSet, ns: &str, name: &str) -> bool {
    let p = &set.spec.parent_ref;
    let set_ns = set.metadata.namespace.as_deref().unwrap_or_default();
    p.name == name
        && p.namespace.as_deref().unwrap_or(set_ns) == ns
        && p.kind.as_deref().unwrap_or("Gateway") == "Gateway"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_set(ns: &str, parent_ns: Option<&str>, parent: &str) -> ListenerSet {
        mk_named("ops", ns, parent_ns, parent, 40000)
    }

    fn mk_named(
        name: &str,
        ns: &str,
        parent_ns: Option<&str>,
        parent: &str,
        port: u16,
    ) -> ListenerSet {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "ListenerSet",
            "metadata": {
                "name": name, "namespace": ns,
                "managedFields": [{"manager": "ops", "operation": "Apply", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:listeners": {}}}}]
            },
            "spec": {
                "parentRef": {"name": parent, "namespace": parent_ns},
                "listeners": [{"name": "db", "port": port, "protocol": "TCP"}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_set_attaches_to_its_parent_gateway_only() {
        assert!(attaches_to(&mk_set("gw", None, "itg"), "gw", "itg"));
        assert!(attaches_to(&mk_set("ops", Some("gw"), "itg"), "gw", "itg"));
        assert!(!attaches_to(&mk_set("ops", None, "itg"), "gw", "itg"));
        assert!(!attaches_to(&mk_set("gw", None, "other"), "gw", "itg"));
    }

    #[test]
    fn only_the_ports_of_sets_attached_to_the_gateway_are_kept() {
        let kept = Kept::new("gw", "itg");
        kept.apply(watcher::Event::Init);
        kept.apply(watcher::Event::InitApply(mk_named(
            "a", "gw", None, "itg", 40001,
        )));
        for i in 0..500 {
            // Another tenant's sets, cluster-wide.
            let ns = format!("tenant-{i}");
            kept.apply(watcher::Event::InitApply(mk_named(
                "t", &ns, None, "theirs", 41000,
            )));
        }
        assert!(kept.apply(watcher::Event::InitDone));
        assert_eq!(
            kept.len(),
            1,
            "only the one set attached to the Gateway is kept"
        );
        assert_eq!(kept.ports(), BTreeSet::from([40001]));
        // A set moved to another parent goes; a new one comes; a deleted one goes.
        kept.apply(watcher::Event::Apply(mk_named(
            "b",
            "ops",
            Some("gw"),
            "itg",
            40002,
        )));
        kept.apply(watcher::Event::Apply(mk_named(
            "a", "gw", None, "other", 40001,
        )));
        assert_eq!(kept.ports(), BTreeSet::from([40002]));
        kept.apply(watcher::Event::Delete(mk_named(
            "b",
            "ops",
            Some("gw"),
            "itg",
            40002,
        )));
        assert!(kept.ports().is_empty());
        assert_eq!(kept.len(), 0);
    }

    #[test]
    fn a_relist_replaces_what_was_kept() {
        let kept = Kept::new("gw", "itg");
        kept.apply(watcher::Event::Apply(mk_named(
            "a", "gw", None, "itg", 40001,
        )));
        kept.apply(watcher::Event::Init);
        kept.apply(watcher::Event::InitApply(mk_named(
            "b", "gw", None, "itg", 40002,
        )));
        assert_eq!(
            kept.ports(),
            BTreeSet::from([40001]),
            "kept until the relist ends"
        );
        kept.apply(watcher::Event::InitDone);
        assert_eq!(kept.ports(), BTreeSet::from([40002]));
    }
}
