//! The watches: the one Gateway (its listeners, their managers and status) and, where the controller's
//! verdict is awaited, the worker's TCPRoutes. They feed the view the port search reads and the verdict
//! that `ready` waits for; the hot path lists nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use gateway_api::experimental::gateways::Gateway;
use itg_core::cluster::{ClusterError, Exposure, GatewayView};
use itg_core::config::{PoolGateway, ResourceManagerConfig};
use itg_core::names;
use itg_core::readiness::{self, Observed, Verdict};
use kube::api::DynamicObject;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::KubeGateway;
use crate::client::route_resource;

impl KubeGateway {
    /// Starts watching the Gateway of `rm`. Returns once the first list has been seen.
    ///
    /// # Errors
    /// [`ClusterError`] when the watch cannot start (apiserver unreachable or forbidden).
    pub async fn start(
        client: Client,
        rm: &ResourceManagerConfig,
        g: &PoolGateway,
    ) -> Result<KubeGateway, ClusterError> {
        let route_resource = route_resource(&client).await?;
        let gateways: Api<Gateway> = Api::namespaced(client.clone(), &g.gateway_namespace);
        let (reader, writer) = reflector::store();
        let (tick, changes) = tokio::sync::watch::channel(0u64);
        let tick = Arc::new(tick);
        let listener_generations: Arc<Mutex<BTreeMap<String, (u16, i64)>>> = Arc::default();
        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", g.gateway_name));
        let stream = watcher(gateways.clone(), cfg)
            .default_backoff()
            .reflect(writer);
        let name = format!("{}/{}", g.gateway_namespace, g.gateway_name);
        let attached = crate::attached::Attached::new(
            client.clone(),
            &g.gateway_namespace,
            &g.gateway_name,
            &rm.name,
            tick.clone(),
        );
        // Set once the start has made the attached-set watch: from then on the Gateway's changes remake it.
        let following = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (tick, generations) = (tick.clone(), listener_generations.clone());
            let (attached, following) = (attached.clone(), following.clone());
            tokio::spawn(async move {
                futures::pin_mut!(stream);
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(ev) => {
                            if let watcher::Event::Apply(gw) | watcher::Event::InitApply(gw) = &ev {
                                note_listener_generations(gw, &generations);
                                // A Gateway missing at start, or whose allowedListeners changed.
                                if following.load(std::sync::atomic::Ordering::SeqCst)
                                    && let Some(wanted) = attached.retarget(gw)
                                {
                                    let attached = attached.clone();
                                    tokio::spawn(async move { attached.settle(wanted).await });
                                }
                            }
                            // Every event counts, the end of a relist too: the store changes then.
                            tick.send_modify(|n| *n = n.wrapping_add(1));
                        }
                        Err(e) => {
                            tracing::warn!(gateway = %name, error = %e, "Gateway watch error; retrying");
                        }
                    }
                }
            });
        }
        synced(
            &reader,
            &format!(
                "watching Gateway {}/{}",
                g.gateway_namespace, g.gateway_name
            ),
        )
        .await?;
        if let Some(gw) = reader.state().first() {
            attached.follow(gw).await;
        }
        following.store(true, std::sync::atomic::Ordering::SeqCst);
        // A change seen between the read above and the flag is not lost.
        if let Some(gw) = reader.state().first()
            && let Some(wanted) = attached.retarget(gw)
        {
            let attached = attached.clone();
            tokio::spawn(async move { attached.settle(wanted).await });
        }
        let mut route_stores = Vec::new();
        if rm.wait_for_controller {
            let scopes: Vec<Option<String>> = match &rm.allowed_namespaces {
                Some(list) => list.iter().cloned().map(Some).collect(),
                None => vec![None],
            };
            for scope in scopes {
                let api: Api<DynamicObject> = match &scope {
                    Some(ns) => Api::namespaced_with(client.clone(), ns, &route_resource),
                    None => Api::all_with(client.clone(), &route_resource),
                };
                let writer = reflector::store::Writer::new(route_resource.clone());
                let store = writer.as_reader();
                let cfg = watcher::Config::default().labels(&names::owned_selector(&rm.name));
                // The verdict reads a route's generation and status, never its managedFields.
                let stream = watcher(api, cfg)
                    .default_backoff()
                    .modify(|r| r.metadata.managed_fields = None)
                    .reflect(writer);
                let (tick, what) = (
                    tick.clone(),
                    scope.clone().unwrap_or_else(|| "all namespaces".into()),
                );
                tokio::spawn(async move {
                    futures::pin_mut!(stream);
                    while let Some(ev) = stream.next().await {
                        match ev {
                            Ok(_) => tick.send_modify(|n| *n = n.wrapping_add(1)),
                            Err(e) => {
                                tracing::warn!(scope = %what, error = %e, "TCPRoute watch error; retrying");
                            }
                        }
                    }
                });
                let what = format!(
                    "watching the worker's TCPRoutes ({}) in {}; the worker needs list and watch on tcproutes there, or wait_for_controller: false",
                    route_resource.api_version,
                    scope.as_deref().unwrap_or("all namespaces")
                );
                synced(&store, &what).await?;
                route_stores.push(store);
            }
        }
        Ok(KubeGateway {
            rm: rm.name.clone(),
            range: rm.port_range(),
            client,
            gateway_namespace: g.gateway_namespace.clone(),
            gateway_name: g.gateway_name.clone(),
            gateways,
            reflector: reader,
            route_resource,
            route_stores,
            listener_generations,
            changes,
            tick,
            write_lock: Arc::default(),
            call_timeout: std::time::Duration::from_secs(15),
            attached,
            controller: Arc::default(),
        })
    }

    /// The Gateway as the watch last saw it: which listeners are this resource manager's, which ports are
    /// others'.
    pub(crate) fn gateway_view(&self) -> GatewayView {
        let Some(gw) = self.gateway() else {
            return GatewayView::default();
        };
        let mut v = GatewayView {
            present: true,
            ..Default::default()
        };
        let managers = listener_managers(&gw);
        for l in &gw.spec.listeners {
            v.listeners.insert(l.name.clone());
            if let Ok(p) = u16::try_from(l.port) {
                let held_by: Vec<&str> = managers
                    .get(&l.name)
                    .map(|ms| ms.iter().map(String::as_str).collect())
                    .unwrap_or_default();
                if names::owns_listener(&self.rm, &l.name, p, &held_by, &self.range) {
                    v.owned_ports.insert(p);
                    v.owned.insert(l.name.clone());
                    v.owned_port_of.insert(l.name.clone(), p);
                } else {
                    v.foreign_ports.insert(p);
                }
            }
        }
        v.foreign_ports.extend(self.attached_ports());
        self.shadow(&mut v.foreign_ports);
        v
    }

    /// Notes the Gateway's controller, as the start looked it up from its class.
    pub fn know_controller(&self, c: &'static itg_core::controllers::Controller) {
        let _ = self.controller.set(c);
    }

    /// Adds to `foreign` the ports of the range whose data-plane port a listener on a `foreign` port binds
    /// already (Contour's wrapped ports, Envoy Gateway's privileged ports + 10000).
    pub(crate) fn shadow(&self, foreign: &mut BTreeSet<u16>) {
        if let Some(c) = self.controller.get() {
            let shadowed = c.shadowed(self.range.clone(), foreign);
            foreign.extend(shadowed);
        }
    }

    /// Ports of others' ListenerSets attached to the Gateway.
    pub(crate) fn attached_ports(&self) -> BTreeSet<u16> {
        self.attached.ports()
    }

    /// The controller's verdict on `exposures`, from the Gateway's and the routes' status as watched.
    pub(crate) fn verdict(&self, exposures: &[Exposure<'_>]) -> Verdict {
        let gw = self.gateway();
        let observed: Vec<Observed> = exposures
            .iter()
            .map(|e| {
                let name = names::object_name(e.rm, e.allocation_id, &e.binding.name);
                let listener_generation = self
                    .listener_generations
                    .lock()
                    .ok()
                    .and_then(|g| g.get(&name).copied())
                    .filter(|(port, _)| *port == e.binding.gateway_port)
                    .map(|(_, generation)| generation);
                let listener_status = gw
                    .as_ref()
                    .and_then(|gw| gw.status.as_ref()?.listeners.as_ref())
                    .and_then(|ls| ls.iter().find(|l| l.name == name))
                    .map(|l| readiness::ListenerStatus {
                        conditions: conditions_of(
                            &serde_json::to_value(&l.conditions).unwrap_or_default(),
                        ),
                        attached_routes: i64::from(l.attached_routes),
                    });
                let route = self.route(&e.spec.namespace, &name);
                Observed {
                    listener: name.clone(),
                    listener_generation,
                    listener_status,
                    route_generation: route.as_ref().map(|r| r.metadata.generation.unwrap_or(0)),
                    route_parent: route.as_ref().and_then(|r| {
                        route_parent_conditions(
                            r,
                            "Gateway",
                            &self.gateway_namespace,
                            &self.gateway_name,
                            &name,
                        )
                    }),
                    set_conditions: None,
                }
            })
            .collect();
        readiness::evaluate_all(&observed)
    }

    /// The worker's route `ns/name` as its watch last saw it.
    pub(crate) fn route(&self, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        let key = reflector::ObjectRef::new_with(name, self.route_resource.clone()).within(ns);
        self.route_stores.iter().find_map(|s| s.get(&key))
    }
}

/// Records, for each listener of the worker's shape, the Gateway generation in which it was first seen with
/// its port. A watch may skip generations, so this is never older than the real one: safe for telling
/// current conditions from stale ones.
fn note_listener_generations(gw: &Gateway, seen: &Mutex<BTreeMap<String, (u16, i64)>>) {
    let generation = gw.metadata.generation.unwrap_or(0);
    let Ok(mut seen) = seen.lock() else {
        return;
    };
    let mut present = BTreeSet::new();
    for l in &gw.spec.listeners {
        let (Ok(port), true) = (
            u16::try_from(l.port),
            names::is_owned_listener_name(&l.name),
        ) else {
            continue;
        };
        present.insert(l.name.clone());
        match seen.get(&l.name) {
            Some((p, _)) if *p == port => {}
            _ => {
                seen.insert(l.name.clone(), (port, generation));
            }
        }
    }
    seen.retain(|name, _| present.contains(name));
}

pub(crate) fn conditions_of(v: &serde_json::Value) -> Vec<readiness::Condition> {
    let text = |c: &serde_json::Value, k: &str| c[k].as_str().unwrap_or_default().to_owned();
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|c| readiness::Condition {
                    type_: text(c, "type"),
                    status: text(c, "status"),
                    reason: text(c, "reason"),
                    message: text(c, "message"),
                    observed_generation: c["observedGeneration"].as_i64(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The conditions of a route's parent entry for `listener` on the parent `parent_ns/parent_name` of kind
/// `parent_kind` (a Gateway, or a ListenerSet).
pub(crate) fn route_parent_conditions(
    route: &DynamicObject,
    parent_kind: &str,
    parent_ns: &str,
    parent_name: &str,
    listener: &str,
) -> Option<Vec<readiness::Condition>> {
    let route_ns = route.metadata.namespace.as_deref().unwrap_or_default();
    route.data["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| {
            let r = &p["parentRef"];
            r["name"].as_str() == Some(parent_name)
                && r["namespace"].as_str().unwrap_or(route_ns) == parent_ns
                && r["kind"].as_str().unwrap_or("Gateway") == parent_kind
                && r["sectionName"].as_str().is_none_or(|s| s == listener)
        })
        .map(|p| conditions_of(&p["conditions"]))
}

/// Listener name -> the field managers that own fields of it, read from the Gateway's managedFields
/// (`f:spec` / `f:listeners` / `k:{"name":…}`).
pub fn listener_managers(gw: &Gateway) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for entry in gw.metadata.managed_fields.iter().flatten() {
        let (Some(manager), Some(fields)) = (&entry.manager, &entry.fields_v1) else {
            continue;
        };
        let Some(listeners) = fields
            .0
            .get("f:spec")
            .and_then(|s| s.get("f:listeners"))
            .and_then(|l| l.as_object())
        else {
            continue;
        };
        for key in listeners.keys() {
            let name = key
                .strip_prefix("k:")
                .and_then(|k| serde_json::from_str::<serde_json::Value>(k).ok())
                .and_then(|k| k.get("name").and_then(|n| n.as_str()).map(str::to_owned));
            if let Some(name) = name {
                out.entry(name).or_default().push(manager.clone());
            }
        }
    }
    out
}

/// Waits until a watch's store has seen its first list, for at most 30 s.
pub(crate) async fn synced<K>(store: &reflector::Store<K>, what: &str) -> Result<(), ClusterError>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    match tokio::time::timeout(std::time::Duration::from_secs(30), store.wait_until_ready()).await {
        Ok(r) => r.map_err(|e| ClusterError::Transient(format!("{what}: {e}"))),
        Err(_) => Err(ClusterError::Transient(format!(
            "{what}: no answer from the apiserver in 30 s"
        ))),
    }
}
