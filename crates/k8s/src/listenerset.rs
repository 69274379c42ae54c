//! The ListenerSet backend (`listener_mode: listenerset`): each allocation gets one ListenerSet attached to
//! the Gateway, with a listener per proxy port; its TCPRoutes attach to their own listener in it. The
//! Gateway object itself is never written, so exposures no longer queue on it and its 64-listener cap is
//! no limit: the capacity is the port range.
//!
//! Listeners are applied into the set under a field manager each, as on the Gateway, so two passes over one
//! allocation merge instead of replacing each other; the first apply creates the set. A set may not be
//! empty, so the last listener goes with a delete of the whole set (guarded by its resourceVersion). The
//! sets live in one namespace (`listenerset_namespace`, by default the Gateway's), which the Gateway must
//! allow (`spec.allowedListeners`); start-up says whether it does.
//!
//! Port exclusivity stays with the KV claims. A watch of the sets in that namespace feeds the view (ports
//! of other sets attached to the Gateway are foreign) and the controller's verdict, read from each set's
//! status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use gateway_api::experimental::gateways::{Gateway, GatewayAllowedListenersNamespacesFrom};
use gateway_api::experimental::listenersets::ListenerSet;
use itg_core::cluster::{
    ClassStatus, Cluster, ClusterError, Exposure, GatewayView, Inventory, ObjectKind, OwnedObject,
};
use itg_core::config::ResourceManagerConfig;
use itg_core::names;
use itg_core::readiness::{self, Observed, Verdict};
use itg_core::state::Binding;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store as Reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};

use crate::KubeGateway;
use crate::client::classify;
use crate::objects::{Parent, listenerset_patch, listenerset_removal};
use crate::setsview::{Scope, SetsView};
use crate::watch::{conditions_of, route_parent_conditions};

/// A resource manager's apiserver, Gateway and ListenerSets.
#[derive(Clone)]
pub struct ListenerSets {
    base: KubeGateway,
    /// Where the sets are made.
    namespace: String,
    sets: Api<ListenerSet>,
    reflector: Reflector<ListenerSet>,
    /// For each set of ours, its listeners' ports and the generation each was first seen with.
    generations: Arc<Mutex<Generations>>,
    /// Whether the Gateway allows sets from `namespace`, as read at start, for the report.
    allowed: Arc<String>,
    /// The view, kept up to date by the sets' watch one event at a time.
    sets_view: Arc<Mutex<SetsView>>,
}

impl ListenerSets {
    /// Starts watching the sets of `rm`'s namespace for ListenerSets. Returns once the first list has
    /// been seen.
    ///
    /// # Errors
    /// [`ClusterError`] when the watch cannot start.
    pub async fn start(
        base: KubeGateway,
        rm: &ResourceManagerConfig,
    ) -> Result<ListenerSets, ClusterError> {
        // By default the set goes in its Gateway's namespace (each Gateway of a pool has its own).
        let namespace = rm
            .listenerset_namespace
            .clone()
            .unwrap_or_else(|| base.gateway_namespace.clone());
        let sets: Api<ListenerSet> = Api::namespaced(base.client.clone(), &namespace);
        let (reader, writer) = reflector::store();
        let generations: Arc<Mutex<Generations>> = Arc::default();
        let sets_view = Arc::new(Mutex::new(SetsView::new(Scope::new(
            &namespace,
            &base.gateway_namespace,
            &base.gateway_name,
            &rm.name,
        ))));
        // Every set in the namespace, not only ours: another's listeners on the same Gateway hold ports.
        let stream = watcher(sets.clone(), watcher::Config::default())
            .default_backoff()
            // Nothing reads a set's managedFields, and at thousands of sets they are most of the cache.
            .modify(|s| s.metadata.managed_fields = None)
            .reflect(writer);
        {
            let (tick, generations, rm) = (base.tick.clone(), generations.clone(), rm.name.clone());
            let sets_view = sets_view.clone();
            let what = namespace.clone();
            tokio::spawn(async move {
                futures::pin_mut!(stream);
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(ev) => {
                            if let Ok(mut g) = generations.lock() {
                                g.on_event(&ev, &rm);
                            }
                            sets_view
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .on_event(&ev);
                            // Every event counts, the end of a relist too: the store changes then, and a
                            // view built before it must not be kept.
                            tick.send_modify(|n| *n = n.wrapping_add(1));
                        }
                        Err(e) => {
                            tracing::warn!(namespace = %what, error = %e, "ListenerSet watch error; retrying");
                        }
                    }
                }
            });
        }
        let what = format!(
            "watching ListenerSets in {namespace}; the worker needs get, list, watch, create, patch and delete on listenersets there"
        );
        crate::watch::synced(&reader, &what).await?;
        let allowed = Arc::new(allows(&base, &namespace).await);
        Ok(ListenerSets {
            base,
            namespace,
            sets,
            reflector: reader,
            generations,
            allowed,
            sets_view,
        })
    }

    /// The Gateway-and-routes part this backend shares with the Gateway mode.
    pub fn base(&self) -> &KubeGateway {
        &self.base
    }

    /// Whether the Gateway allows ListenerSets from the namespace where they are made, as read at start.
    pub fn allowed(&self) -> &str {
        &self.allowed
    }

    fn set(&self, name: &str) -> Option<Arc<ListenerSet>> {
        let key = reflector::ObjectRef::new(name).within(&self.namespace);
        self.reflector.get(&key)
    }

    fn parent(&self, set: &str) -> Parent {
        Parent {
            kind: "ListenerSet",
            namespace: self.namespace.clone(),
            name: set.to_owned(),
        }
    }

    async fn apply_listener(
        &self,
        e: &Exposure<'_>,
        set: &str,
        name: &str,
    ) -> Result<(), ClusterError> {
        let body = listenerset_patch(
            &self.namespace,
            set,
            &self.base.gateway_namespace,
            &self.base.gateway_name,
            e,
            name,
        );
        let pp = PatchParams::apply(&names::listener_field_manager(&self.base.rm, name)).force();
        let what = format!(
            "applying listener {name} (port {}) to ListenerSet {}/{set}",
            e.binding.gateway_port, self.namespace
        );
        self.base
            .bounded(&what, async {
                self.sets
                    .patch(set, &pp, &Patch::Apply(&body))
                    .await
                    .map(drop)
                    .map_err(|err| classify(&what, err))
            })
            .await
    }

    /// Removes listener `name` from set `set`: a delete of the set when it is the last one there (the
    /// watch's copy says so, and its resourceVersion guards the delete), else an apply that drops it. When
    /// the watch's copy lacks the listener, the apiserver is asked.
    async fn remove_listener(&self, set: &str, name: &str) -> Result<(), ClusterError> {
        let what = format!(
            "removing listener {name} from ListenerSet {}/{set}",
            self.namespace
        );
        let current = match self.set(set) {
            // The watch's copy is trusted only to act on the listener it shows: it may lag a listener
            // just applied, and releasing that port while the listener stands would hand it out twice.
            Some(s) if s.spec.listeners.iter().any(|l| l.name == name) => Some(s),
            _ => {
                self.base
                    .bounded(&what, async {
                        self.sets
                            .get_opt(set)
                            .await
                            .map(|s| s.map(Arc::new))
                            .map_err(|err| classify(&what, err))
                    })
                    .await?
            }
        };
        let Some(current) = current else {
            return Ok(());
        };
        let listeners: Vec<&str> = current
            .spec
            .listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        if !listeners.contains(&name) {
            return Ok(());
        }
        if listeners.len() == 1 {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: current.meta().resource_version.clone(),
                    uid: current.meta().uid.clone(),
                }),
                ..DeleteParams::background()
            };
            return self
                .base
                .bounded(&what, async {
                    match self.sets.delete(set, &dp).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                        // The set changed since the watch saw it (a listener was added): the next try reads
                        // it again.
                        Err(kube::Error::Api(s)) if s.code == 409 => {
                            Err(ClusterError::Transient(format!(
                                "{what}: the ListenerSet changed meanwhile ({}); retrying",
                                s.message
                            )))
                        }
                        Err(err) => Err(classify(&what, err)),
                    }
                })
                .await;
        }
        let pp = PatchParams::apply(&names::listener_field_manager(&self.base.rm, name)).force();
        let body = listenerset_removal(&self.namespace, set);
        let after = self
            .base
            .bounded(&what, async {
                match self.sets.patch(set, &pp, &Patch::Apply(&body)).await {
                    Ok(s) => Ok(Some(s)),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                    Err(err) => Err(classify(&what, err)),
                }
            })
            .await?;
        match after {
            Some(s) if s.spec.listeners.iter().any(|l| l.name == name) => {
                Err(ClusterError::Transient(format!(
                    "{what}: it is still there, other field managers own it too; remove it from the ListenerSet, or have them stop managing it"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The set holding listener `name`, among this resource manager's.
    fn set_holding(&self, name: &str) -> Option<String> {
        self.reflector
            .state()
            .into_iter()
            .filter(|s| ours(s, &self.base.rm))
            .find(|s| s.spec.listeners.iter().any(|l| l.name == name))
            .and_then(|s| s.metadata.name.clone())
    }

    /// The Gateway's own listeners and the others' attached sets: the part of the view that is not kept
    /// from the sets' watch.
    fn base_view(&self, gw: &Gateway, attached: BTreeSet<u16>) -> GatewayView {
        let mut v = GatewayView {
            present: true,
            ..Default::default()
        };
        let managers = crate::watch::listener_managers(gw);
        // The Gateway's own listeners are foreign, except ours from a time in `gateway` mode, which the
        // reconciler may still remove.
        for l in &gw.spec.listeners {
            let Ok(p) = u16::try_from(l.port) else {
                continue;
            };
            let held_by: Vec<&str> = managers
                .get(&l.name)
                .map(|ms| ms.iter().map(String::as_str).collect())
                .unwrap_or_default();
            if names::owns_listener(&self.base.rm, &l.name, p, &held_by, &self.base.range) {
                v.listeners.insert(l.name.clone());
                v.owned.insert(l.name.clone());
                v.owned_ports.insert(p);
                v.owned_port_of.insert(l.name.clone(), p);
            } else {
                v.foreign_ports.insert(p);
            }
        }
        // Sets of others in every namespace the Gateway takes them from, not only where ours are made.
        v.foreign_ports.extend(attached);
        v
    }
}

/// Whether `set` was made by resource manager `rm` (by its labels).
fn ours(set: &ListenerSet, rm: &str) -> bool {
    let labels = set.metadata.labels.as_ref();
    labels.is_some_and(|l| {
        l.get("app.kubernetes.io/managed-by").map(String::as_str) == Some(names::MANAGER)
            && l.get(&names::rm_label_key()) == Some(&names::rm_label_value(rm))
    })
}

/// For each set of ours, listener name -> (port, the set's generation in which the watch first saw it
/// with that port): never older than the real one, so conditions written before it are known stale. A
/// set's entry follows the set: replaced on each change, dropped on delete, and a relist keeps only the
/// sets it listed, so the map holds no more than the sets that exist.
#[derive(Debug, Default)]
pub(crate) struct Generations {
    sets: BTreeMap<String, BTreeMap<String, (u16, i64)>>,
    /// The sets listed so far by a relist in progress.
    relisted: Option<std::collections::BTreeSet<String>>,
}

impl Generations {
    pub(crate) fn on_event(&mut self, ev: &watcher::Event<ListenerSet>, rm: &str) {
        match ev {
            watcher::Event::Init => self.relisted = Some(Default::default()),
            watcher::Event::InitApply(set) | watcher::Event::Apply(set) => {
                let name = set.metadata.name.clone().unwrap_or_default();
                if let (watcher::Event::InitApply(_), Some(seen)) = (ev, self.relisted.as_mut()) {
                    seen.insert(name.clone());
                }
                if ours(set, rm) {
                    self.note(&name, set);
                } else {
                    self.sets.remove(&name);
                }
            }
            watcher::Event::Delete(set) => {
                self.sets
                    .remove(set.metadata.name.as_deref().unwrap_or_default());
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relisted.take() {
                    self.sets.retain(|name, _| seen.contains(name));
                }
            }
        }
    }

    fn note(&mut self, set_name: &str, set: &ListenerSet) {
        let generation = set.metadata.generation.unwrap_or(0);
        let before = self.sets.remove(set_name).unwrap_or_default();
        let mut now = BTreeMap::new();
        for l in &set.spec.listeners {
            let Ok(port) = u16::try_from(l.port) else {
                continue;
            };
            let first_seen = match before.get(&l.name) {
                Some((p, g)) if *p == port => *g,
                _ => generation,
            };
            now.insert(l.name.clone(), (port, first_seen));
        }
        self.sets.insert(set_name.to_owned(), now);
    }

    fn get(&self, set_name: &str, listener: &str) -> Option<(u16, i64)> {
        self.sets.get(set_name)?.get(listener).copied()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sets.values().map(BTreeMap::len).sum()
    }
}

/// What the Gateway's `spec.allowedListeners` says of sets made in `namespace`.
async fn allows(base: &KubeGateway, namespace: &str) -> String {
    let Some(gw) = base.gateway() else {
        return "cannot tell: the Gateway is not found".into();
    };
    let from = gw
        .spec
        .allowed_listeners
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    let gw_ns = &base.gateway_namespace;
    match from.and_then(|n| n.from.as_ref()) {
        Some(GatewayAllowedListenersNamespacesFrom::All) => "allowed (from: All)".into(),
        Some(GatewayAllowedListenersNamespacesFrom::Same) if namespace == gw_ns => {
            "allowed (from: Same)".into()
        }
        Some(GatewayAllowedListenersNamespacesFrom::Same) => format!(
            "NOT allowed: the Gateway takes ListenerSets only from its own namespace {gw_ns}; set listenerset_namespace: {gw_ns}"
        ),
        Some(GatewayAllowedListenersNamespacesFrom::Selector) => {
            let wanted = from
                .and_then(|n| n.selector.as_ref())
                .and_then(|s| s.match_labels.clone())
                .unwrap_or_default();
            let api: Api<Namespace> = Api::all(base.client.clone());
            match api.get_opt(namespace).await {
                Ok(Some(ns)) => {
                    let have = ns.metadata.labels.unwrap_or_default();
                    if wanted.iter().all(|(k, v)| have.get(k) == Some(v)) {
                        "allowed (from: Selector, its matchLabels match)".into()
                    } else {
                        format!(
                            "NOT allowed: namespace {namespace} lacks the Gateway's allowedListeners labels {wanted:?}"
                        )
                    }
                }
                Ok(None) => format!("NOT allowed: namespace {namespace} does not exist"),
                Err(e) => format!("cannot tell (reading namespace {namespace}: {e})"),
            }
        }
        Some(GatewayAllowedListenersNamespacesFrom::None) | None => format!(
            "NOT allowed: the Gateway has no spec.allowedListeners; set allowedListeners.namespaces.from: Same (sets are made in {namespace})"
        ),
    }
}

impl Cluster for ListenerSets {
    fn view(&self) -> Arc<GatewayView> {
        let Some(gw) = self.base.gateway() else {
            return Arc::default();
        };
        let attached = self.base.attached_ports();
        let key = (
            gw.metadata.resource_version.clone().unwrap_or_default(),
            attached.clone(),
        );
        self.sets_view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .view(key, || self.base_view(&gw, attached))
    }

    async fn expose(&self, e: &Exposure<'_>) -> Result<(), ClusterError> {
        let name = names::object_name(e.rm, e.allocation_id, &e.binding.name);
        let set = names::listenerset_name(e.rm, e.allocation_id);
        let parent = self.parent(&set);
        self.base
            .expose_with(e, &name, &parent, self.apply_listener(e, &set, &name))
            .await
    }

    async fn withdraw(
        &self,
        rm: &str,
        allocation_id: &str,
        namespace: Option<&str>,
        binding: &Binding,
    ) -> Result<(), ClusterError> {
        let name = names::object_name(rm, allocation_id, &binding.name);
        let set = names::listenerset_name(rm, allocation_id);
        self.base
            .withdraw_with(&name, namespace, self.remove_listener(&set, &name))
            .await
    }

    fn controller_verdict(&self, exposures: &[Exposure<'_>]) -> Verdict {
        let observed: Vec<Observed> = exposures
            .iter()
            .map(|e| {
                let name = names::object_name(e.rm, e.allocation_id, &e.binding.name);
                let set_name = names::listenerset_name(e.rm, e.allocation_id);
                let set = self.set(&set_name);
                let listener_generation = self
                    .generations
                    .lock()
                    .ok()
                    .and_then(|g| g.get(&set_name, &name))
                    .filter(|(port, _)| *port == e.binding.gateway_port)
                    .map(|(_, generation)| generation);
                let status = set.as_ref().and_then(|s| s.status.as_ref());
                let listener_status = status
                    .and_then(|s| s.listeners.as_ref())
                    .and_then(|ls| ls.iter().find(|l| l.name == name))
                    .map(|l| readiness::ListenerStatus {
                        conditions: conditions_of(
                            &serde_json::to_value(&l.conditions).unwrap_or_default(),
                        ),
                        attached_routes: i64::from(l.attached_routes),
                    });
                let set_conditions = status
                    .and_then(|s| s.conditions.as_ref())
                    .map(|c| conditions_of(&serde_json::to_value(c).unwrap_or_default()));
                let route = self.base.route(&e.spec.namespace, &name);
                Observed {
                    listener: name.clone(),
                    listener_generation,
                    listener_status,
                    route_generation: route.as_ref().map(|r| r.metadata.generation.unwrap_or(0)),
                    route_parent: route.as_ref().and_then(|r| {
                        route_parent_conditions(r, "ListenerSet", &self.namespace, &set_name, &name)
                    }),
                    set_conditions: Some(set_conditions.unwrap_or_default()),
                }
            })
            .collect();
        readiness::evaluate_all(&observed)
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.base.changes()
    }
}

impl Inventory for ListenerSets {
    async fn check(&self) -> Result<(), String> {
        self.base.check().await
    }

    async fn class_status(&self) -> ClassStatus {
        self.base.class_status().await
    }

    fn describe(&self) -> String {
        format!(
            "ListenerSets in {} ({}); {}",
            self.namespace,
            self.allowed,
            self.base.describe()
        )
    }

    async fn owned_objects(
        &self,
        namespaces: Option<&[String]>,
    ) -> Result<Vec<OwnedObject>, ClusterError> {
        let mut out = self.base.owned_objects(namespaces).await?;
        let lp = ListParams::default().labels(&names::owned_selector(&self.base.rm));
        let what = format!("listing ListenerSets in {}", self.namespace);
        self.base
            .list_owned(&self.sets, &lp, &what, ObjectKind::ListenerSet, &mut out)
            .await?;
        Ok(out)
    }

    async fn delete_object(&self, o: &OwnedObject) -> Result<(), ClusterError> {
        self.base.delete_object(o).await
    }

    async fn remove_owned_listener(&self, name: &str) -> Result<(), ClusterError> {
        match self.set_holding(name) {
            Some(set) => self.remove_listener(&set, name).await,
            // Not in a set: one of ours on the Gateway, left from `gateway` mode.
            None => self.base.remove_listener(name).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_set(name: &str, generation: i64, ports: &[(&str, u16)], rm: &str) -> ListenerSet {
        let listeners: Vec<_> = ports
            .iter()
            .map(|(n, p)| serde_json::json!({"name": n, "port": p, "protocol": "TCP"}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "ListenerSet",
            "metadata": {
                "name": name, "namespace": "gw", "generation": generation,
                "labels": {
                    "app.kubernetes.io/managed-by": names::MANAGER,
                    (names::rm_label_key()): names::rm_label_value(rm),
                }
            },
            "spec": {"parentRef": {"name": "itg"}, "listeners": listeners}
        }))
        .unwrap()
    }

    #[test]
    fn generations_follow_the_sets_and_are_empty_once_they_are_deleted() {
        let mut g = Generations::default();
        let a = mk_set("a", 1, &[("a-web", 40000), ("a-ssh", 40001)], "rm");
        g.on_event(&watcher::Event::Apply(a.clone()), "rm");
        assert_eq!(g.get("a", "a-web"), Some((40000, 1)));
        // A listener dropped from the set goes with it; one kept keeps the generation it was first seen in.
        let a2 = mk_set("a", 2, &[("a-web", 40000)], "rm");
        g.on_event(&watcher::Event::Apply(a2.clone()), "rm");
        assert_eq!((g.len(), g.get("a", "a-web")), (1, Some((40000, 1))));
        g.on_event(&watcher::Event::Delete(a2), "rm");
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn a_relist_forgets_the_sets_deleted_while_the_watch_was_away() {
        let mut g = Generations::default();
        for n in ["a", "b"] {
            g.on_event(
                &watcher::Event::Apply(mk_set(n, 1, &[(n, 40000)], "rm")),
                "rm",
            );
        }
        g.on_event(&watcher::Event::Init, "rm");
        g.on_event(
            &watcher::Event::InitApply(mk_set("b", 1, &[("b", 40000)], "rm")),
            "rm",
        );
        g.on_event(&watcher::Event::InitDone, "rm");
        assert_eq!((g.len(), g.get("a", "a")), (1, None));
        // Another resource manager's sets are never held.
        g.on_event(
            &watcher::Event::Apply(mk_set("c", 1, &[("c", 40001)], "other")),
            "rm",
        );
        assert_eq!(g.len(), 1);
    }
}
