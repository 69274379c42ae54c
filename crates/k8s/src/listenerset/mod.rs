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
//!
//! This module starts the watch and reads the sets; `writes` applies and removes listeners, `cluster`
//! implements the seams, and `generations` keeps the generation each listener was first seen in.

mod cluster;
mod generations;
mod writes;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use gateway_api::experimental::gateways::{Gateway, GatewayAllowedListenersNamespacesFrom};
use gateway_api::experimental::listenersets::ListenerSet;
use itg_core::cluster::{ClusterError, GatewayView};
use itg_core::config::ResourceManagerConfig;
use itg_core::names;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::runtime::reflector::{self, Store as Reflector};
use kube::runtime::{WatchStreamExt, watcher};

use crate::KubeGateway;
use crate::objects::Parent;
use crate::setsview::{Scope, SetsView};
use generations::Generations;

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
        self.base.shadow(&mut v.foreign_ports);
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
