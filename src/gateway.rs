//! The Kubernetes adapter: per proxy port a Service, a listener on the shared Gateway and a TCPRoute.
//!
//! Listeners are written with server-side apply of a partial Gateway holding only that listener, under a
//! field manager of its own: the apiserver merges listeners by name, so workers never read-modify-write the
//! whole Gateway and never touch listeners they do not own. A watch of the one Gateway feeds an in-memory
//! view (foreign ports, listener count) so the hot path lists nothing. Where the Gateway's controller writes
//! status, a watch of the worker's TCPRoutes joins it, and [`crate::readiness`] reads both to tell when an
//! exposure is reachable.
//!
//! TCPRoute is written in the version the apiserver serves, found by discovery at start: `v1` (Gateway API
//! v1.6 and later) where served, else `v1alpha2`. Every read, write and delete goes through that one version:
//! an apiserver serving both keeps one storage, so routes written in the other version are listed, read and
//! deleted through it as well.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::tcproutes::{
    TcpRoute, TcpRouteParentRefs, TcpRouteRules, TcpRouteRulesBackendRefs, TcpRouteSpec,
};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store as Reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;

use crate::config::ResourceManagerConfig;
use crate::crashpoint;
use crate::names;
use crate::readiness::{self, Observed, Verdict};
use crate::state::{Binding, Spec};

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// TCPRoute versions the worker can write, most preferred first.
pub const TCPROUTE_VERSIONS: [&str; 2] = ["v1", "v1alpha2"];

/// Why a Kubernetes step did not complete. The variant tells the worker whether to retry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KubeError {
    /// The apiserver is unreachable, overloaded or the write conflicted: retry with backoff.
    #[error("{0}")]
    Transient(String),
    /// The Gateway has no room for another listener, or the port is taken there: wait for capacity.
    #[error("{0}")]
    Capacity(String),
    /// The request can never succeed as it is (forbidden, invalid, namespace missing).
    #[error("{0}")]
    Permanent(String),
}

impl KubeError {
    /// Whether the apiserver refused the call as forbidden (RBAC), as [`classify`] words it.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, KubeError::Permanent(m) if m.contains("(403 "))
    }
}

/// What the worker needs to know of its Gateway to choose ports and count listener slots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayView {
    /// Whether the Gateway exists.
    pub present: bool,
    /// Ports of listeners the worker does not own.
    pub foreign_ports: BTreeSet<u16>,
    /// Names of every listener, ours and others'.
    pub listeners: BTreeSet<String>,
    /// Ports of the listeners the worker owns.
    pub owned_ports: BTreeSet<u16>,
    /// Names of the listeners this resource manager provably owns ([`names::owns_listener`]): the only
    /// ones its reconciler may remove.
    pub owned: BTreeSet<String>,
}

/// One proxy port of one allocation, as Kubernetes sees it.
#[derive(Debug, Clone)]
pub struct Exposure<'a> {
    pub rm: &'a str,
    pub allocation_id: &'a str,
    pub spec: &'a Spec,
    pub binding: &'a Binding,
}

/// The Kubernetes side of the worker; implemented by [`KubeGateway`] against a real apiserver.
pub trait Cluster: Clone + Send + Sync + 'static {
    /// The Gateway as last seen by the watch.
    fn view(&self) -> GatewayView;
    /// Makes the Service, listener and route of one proxy port exist (idempotent), in that order.
    fn expose(&self, e: &Exposure<'_>) -> impl Future<Output = Result<(), KubeError>> + Send;
    /// Makes them not exist (idempotent), in the order route, listener, Service.
    fn withdraw(
        &self,
        rm: &str,
        allocation_id: &str,
        namespace: Option<&str>,
        binding: &Binding,
    ) -> impl Future<Output = Result<(), KubeError>> + Send;
    /// What the Gateway's controller reports for these exposures, from the watches. A cluster without a
    /// controller's status to read answers reachable.
    fn controller_verdict(&self, _e: &[Exposure<'_>]) -> Verdict {
        Verdict::Reachable
    }
    /// Ticks whenever the Gateway or a route changes, so a waiting pass looks again at once. A cluster
    /// without watches returns a receiver that never ticks.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        tokio::sync::watch::channel(0).1
    }
}

/// A resource manager's apiserver and Gateway.
#[derive(Clone)]
pub struct KubeGateway {
    rm: String,
    /// The resource manager's port range: a legacy listener is taken as its own only inside it.
    range: std::ops::RangeInclusive<u16>,
    client: Client,
    gateway_namespace: String,
    gateway_name: String,
    gateways: Api<Gateway>,
    reflector: Reflector<Gateway>,
    /// The TCPRoute resource in the version the apiserver serves.
    route_resource: ApiResource,
    /// The worker's routes, one store per watched scope (a namespace, or all namespaces); empty when the
    /// resource manager does not wait for its controller.
    route_stores: Vec<Reflector<DynamicObject>>,
    /// Listener name -> (port, the Gateway generation in which the watch first saw it with that port).
    listener_generations: Arc<Mutex<BTreeMap<String, (u16, i64)>>>,
    changes: tokio::sync::watch::Receiver<u64>,
    /// One Gateway write at a time from this process. Concurrent applies to the one object make the
    /// apiserver retry each against the others, re-running the listener validation every time; measured,
    /// removals went from ~0.2 s to ~30 s with 32 in flight.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// The longest one apiserver request may take: a half-open connection answers nothing, never.
    call_timeout: std::time::Duration,
}

/// Builds the client for a resource manager: its kubeconfig when set, else in-cluster config, else
/// `$KUBECONFIG` / `~/.kube/config`.
///
/// # Errors
/// A message naming the kubeconfig that could not be used.
pub async fn client_for(rm: &ResourceManagerConfig) -> Result<(Client, String), String> {
    let options = kube::config::KubeConfigOptions {
        context: rm.kube_context.clone(),
        ..Default::default()
    };
    let config = match &rm.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None if rm.kube_context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("kubeconfig ($KUBECONFIG or ~/.kube/config): {e}"))?,
        None => kube::Config::infer().await.map_err(|e| {
            format!("no kubeconfig set, and neither in-cluster config nor $KUBECONFIG works: {e}")
        })?,
    };
    let where_ = format!(
        "{} from {}",
        config.cluster_url,
        rm.kubeconfig.as_ref().map_or_else(
            || "the inferred kubeconfig".to_owned(),
            |p| p.display().to_string()
        )
    );
    let client =
        Client::try_from(config).map_err(|e| format!("Kubernetes client for {where_}: {e}"))?;
    Ok((client, where_))
}

/// Sorts a kube error into retry, capacity or give-up.
pub fn classify(what: &str, err: kube::Error) -> KubeError {
    match err {
        kube::Error::Api(s) => {
            let msg = format!("{what}: {} ({} {})", s.message, s.code, s.reason);
            let m = s.message.as_str();
            match s.code {
                422 if m.contains("must have at most") || m.contains("Too many") => {
                    KubeError::Capacity(msg)
                }
                422 if m.contains("port, protocol") || m.contains("unique") => {
                    KubeError::Capacity(msg)
                }
                409 | 429 | 500..=599 => KubeError::Transient(msg),
                // The Gateway may be re-created by its operator: keep retrying until the deadline.
                404 if what.contains("listener") => KubeError::Transient(msg),
                _ => KubeError::Permanent(msg),
            }
        }
        other => KubeError::Transient(format!("{what}: {other}")),
    }
}

impl KubeGateway {
    /// Starts watching the Gateway of `rm`. Returns once the first list has been seen.
    ///
    /// # Errors
    /// [`KubeError`] when the watch cannot start (apiserver unreachable or forbidden).
    pub async fn start(
        client: Client,
        rm: &ResourceManagerConfig,
    ) -> Result<KubeGateway, KubeError> {
        let g = &rm.internal_task_gateway;
        let route_resource = route_resource(&client).await?;
        let gateways: Api<Gateway> = Api::namespaced(client.clone(), &g.gateway_namespace);
        let (reader, writer) = reflector::store();
        let (tick, changes) = tokio::sync::watch::channel(0u64);
        let tick = Arc::new(tick);
        let listener_generations: Arc<Mutex<BTreeMap<String, (u16, i64)>>> = Arc::default();
        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", g.gateway_name));
        let stream = watcher(gateways.clone(), cfg)
            .default_backoff()
            .reflect(writer)
            .touched_objects();
        let name = format!("{}/{}", g.gateway_namespace, g.gateway_name);
        {
            let (tick, generations) = (tick.clone(), listener_generations.clone());
            tokio::spawn(async move {
                futures::pin_mut!(stream);
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(gw) => {
                            note_listener_generations(&gw, &generations);
                            tick.send_modify(|n| *n = n.wrapping_add(1));
                        }
                        Err(e) => {
                            tracing::warn!(gateway = %name, error = %e, "Gateway watch error; retrying");
                        }
                    }
                }
            });
        }
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            reader.wait_until_ready(),
        )
        .await
        .map_err(|_| {
            KubeError::Transient(format!(
                "watching Gateway {}/{}: no answer from the apiserver in 30 s",
                g.gateway_namespace, g.gateway_name
            ))
        })?
        .map_err(|e| KubeError::Transient(format!("watching Gateway: {e}")))?;
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
                let cfg = watcher::Config::default().labels(&owned_selector(&rm.name));
                let stream = watcher(api, cfg)
                    .default_backoff()
                    .reflect(writer)
                    .touched_objects();
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
                match tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    store.wait_until_ready(),
                )
                .await
                {
                    Ok(r) => r.map_err(|e| KubeError::Transient(format!("{what}: {e}")))?,
                    Err(_) => {
                        return Err(KubeError::Transient(format!(
                            "{what}: no answer from the apiserver in 30 s"
                        )));
                    }
                }
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
            write_lock: Arc::default(),
            call_timeout: std::time::Duration::from_secs(15),
        })
    }

    /// Bounds every apiserver request to `call_timeout` (`worker.kubernetes_call_timeout`).
    #[must_use]
    pub fn with_call_timeout(mut self, call_timeout: std::time::Duration) -> Self {
        self.call_timeout = call_timeout;
        self
    }

    /// `f`, or a transient error once it has taken longer than one request may.
    async fn bounded<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, KubeError>>,
    ) -> Result<T, KubeError> {
        tokio::time::timeout(self.call_timeout, f)
            .await
            .unwrap_or_else(|_| {
                Err(KubeError::Transient(format!(
                    "{what}: no answer from the apiserver in {:?} (worker.kubernetes_call_timeout); retrying. Check the network path to the apiserver",
                    self.call_timeout
                )))
            })
    }

    /// The TCPRoute version this worker reads and writes (`v1` or `v1alpha2`).
    pub fn route_version(&self) -> &str {
        &self.route_resource.version
    }

    fn routes(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &self.route_resource)
    }

    async fn timed(
        &self,
        call: &str,
        f: impl Future<Output = Result<(), KubeError>>,
    ) -> Result<(), KubeError> {
        let start = std::time::Instant::now();
        let result = f.await;
        crate::metrics::get().kube_call(&self.rm, call, start.elapsed(), result.is_ok());
        result
    }

    /// The apiserver client, for health checks.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn gateway(&self) -> Option<Arc<Gateway>> {
        self.reflector
            .state()
            .into_iter()
            .find(|g| g.metadata.name.as_deref() == Some(&self.gateway_name))
    }

    async fn apply_service(&self, e: &Exposure<'_>, name: &str) -> Result<(), KubeError> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), &e.spec.namespace);
        let what = format!("applying Service {}/{name}", e.spec.namespace);
        self.bounded(
            &what,
            apply_whole(api, name, &service_object(e, name), what.clone()),
        )
        .await
    }

    async fn apply_listener(&self, e: &Exposure<'_>, name: &str) -> Result<(), KubeError> {
        let body = listener_patch(&self.gateway_namespace, &self.gateway_name, e, name);
        let pp = PatchParams::apply(&names::listener_field_manager(&self.rm, name)).force();
        let what = format!(
            "applying listener {name} (port {}) to Gateway {}/{}",
            e.binding.gateway_port, self.gateway_namespace, self.gateway_name
        );
        // The deadline is the request's, not the wait for the lock: a queue of writers is not a hang.
        let _one_writer = self.write_lock.lock().await;
        self.bounded(&what, async {
            self.gateways
                .patch(&self.gateway_name, &pp, &Patch::Apply(&body))
                .await
                .map(drop)
                .map_err(|err| classify(&what, err))
        })
        .await
    }

    async fn apply_route(&self, e: &Exposure<'_>, name: &str) -> Result<(), KubeError> {
        let route = route_body(
            &self.route_resource.api_version,
            &route_object(&self.gateway_namespace, &self.gateway_name, e, name),
        );
        let pp = PatchParams::apply(names::OBJECT_FIELD_MANAGER).force();
        let what = format!(
            "applying TCPRoute {}/{name} ({})",
            e.spec.namespace, self.route_resource.api_version
        );
        self.bounded(&what, async {
            self.routes(&e.spec.namespace)
                .patch(name, &pp, &Patch::Apply(&route))
                .await
                .map(drop)
                .map_err(|err| classify(&what, err))
        })
        .await
    }

    async fn remove_listener(&self, name: &str) -> Result<(), KubeError> {
        let legacy = names::legacy_listener_field_manager(name);
        let mut gw = self
            .remove_listener_as(name, &names::listener_field_manager(&self.rm, name))
            .await?;
        // A listener written before field managers named the resource manager is still held by the legacy
        // manager: drop that hold too, or the listener outlives its allocation.
        if let Some(g) = &gw
            && listener_managers(g)
                .get(name)
                .is_some_and(|ms| ms.contains(&legacy))
        {
            gw = self.remove_listener_as(name, &legacy).await?;
        }
        // The apply only drops what our managers owned: a listener another manager co-owns (say after
        // `kubectl get -o yaml | kubectl apply`) stays, and its port must not be released.
        let Some(gw) = gw else { return Ok(()) };
        match gw.spec.listeners.iter().find(|l| l.name == name) {
            None => Ok(()),
            Some(l) => Err(KubeError::Transient(format!(
                "listener {name} (port {}) is still on Gateway {}/{}: other field managers own it too ({}); remove it from the Gateway, or have them stop managing it",
                l.port,
                self.gateway_namespace,
                self.gateway_name,
                listener_managers(&gw)
                    .remove(name)
                    .unwrap_or_default()
                    .join(", ")
            ))),
        }
    }

    /// Applies no spec under `manager`, which drops exactly the fields it owned. Returns the Gateway as the
    /// apiserver left it, or `None` when there is no Gateway.
    async fn remove_listener_as(
        &self,
        name: &str,
        manager: &str,
    ) -> Result<Option<Gateway>, KubeError> {
        let body = listener_removal(&self.gateway_namespace, &self.gateway_name);
        let pp = PatchParams::apply(manager).force();
        let _one_writer = self.write_lock.lock().await;
        let what = format!("removing listener {name}");
        self.bounded(&what, self.removal_answer(name, &pp, &body))
            .await
    }

    async fn removal_answer(
        &self,
        name: &str,
        pp: &PatchParams,
        body: &serde_json::Value,
    ) -> Result<Option<Gateway>, KubeError> {
        match self
            .gateways
            .patch(&self.gateway_name, pp, &Patch::Apply(body))
            .await
        {
            Ok(gw) => Ok(Some(gw)),
            // Applying onto a Gateway that is gone is refused as invalid (it lacks its required fields),
            // not as missing: either way, no Gateway means no listener to remove.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => {
                match self.gateways.get_opt(&self.gateway_name).await {
                    Ok(None) => Ok(None),
                    _ => Err(classify(
                        &format!("removing listener {name}"),
                        kube::Error::Api(s),
                    )),
                }
            }
            Err(err) => Err(classify(&format!("removing listener {name}"), err)),
        }
    }
}

/// The Service of one proxy port, exactly as the worker applies it.
pub fn service_object(e: &Exposure<'_>, name: &str) -> Service {
    Service {
        metadata: exposure_meta(e, name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(e.spec.pod_selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some(e.binding.name.clone()),
                protocol: Some("TCP".into()),
                port: i32::from(e.binding.container_port),
                target_port: Some(IntOrString::Int(i32::from(e.binding.container_port))),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A partial Gateway holding only one listener: the apiserver merges it into `spec.listeners` by name.
pub fn listener_patch(
    gateway_namespace: &str,
    gateway_name: &str,
    e: &Exposure<'_>,
    name: &str,
) -> serde_json::Value {
    json!({
        "apiVersion": format!("{GATEWAY_GROUP}/v1"),
        "kind": "Gateway",
        "metadata": { "name": gateway_name, "namespace": gateway_namespace },
        "spec": { "listeners": [{
            "name": name,
            "port": e.binding.gateway_port,
            "protocol": "TCP",
            "allowedRoutes": {
                "kinds": [{ "group": GATEWAY_GROUP, "kind": "TCPRoute" }],
                "namespaces": {
                    "from": "Selector",
                    "selector": { "matchLabels": { "kubernetes.io/metadata.name": e.spec.namespace } }
                }
            }
        }]}
    })
}

/// The body that, applied under a listener's own field manager, drops exactly that listener. It holds no
/// `spec` at all: an empty `spec: {}` would leave the manager owning `f:spec`, and one such managedFields
/// entry per listener ever removed made the Gateway, and every write to it, grow without end.
pub fn listener_removal(gateway_namespace: &str, gateway_name: &str) -> serde_json::Value {
    json!({
        "apiVersion": format!("{GATEWAY_GROUP}/v1"),
        "kind": "Gateway",
        "metadata": { "name": gateway_name, "namespace": gateway_namespace }
    })
}

/// The TCPRoute of one proxy port: parent is our listener, backend our Service.
pub fn route_object(
    gateway_namespace: &str,
    gateway_name: &str,
    e: &Exposure<'_>,
    name: &str,
) -> TcpRoute {
    TcpRoute {
        metadata: exposure_meta(e, name),
        spec: TcpRouteSpec {
            parent_refs: Some(vec![TcpRouteParentRefs {
                group: Some(GATEWAY_GROUP.into()),
                kind: Some("Gateway".into()),
                name: gateway_name.to_owned(),
                namespace: Some(gateway_namespace.to_owned()),
                section_name: Some(name.to_owned()),
                port: Some(i32::from(e.binding.gateway_port)),
            }]),
            rules: vec![TcpRouteRules {
                backend_refs: vec![TcpRouteRulesBackendRefs {
                    group: Some(String::new()),
                    kind: Some("Service".into()),
                    name: name.to_owned(),
                    port: Some(i32::from(e.binding.container_port)),
                    ..Default::default()
                }],
                name: None,
            }],
            ..Default::default()
        },
        status: None,
    }
}

/// The TCPRoute as applied: `route` (whose type knows only `v1alpha2`) under the served `api_version`. The
/// two versions have the same fields for what the worker writes (one rule, one backend).
pub fn route_body(api_version: &str, route: &TcpRoute) -> serde_json::Value {
    let mut v = serde_json::to_value(route).unwrap_or_default();
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!("TCPRoute");
    v
}

/// Finds which TCPRoute version the apiserver serves, preferring `v1`.
///
/// # Errors
/// [`KubeError::Permanent`] when it serves neither, [`KubeError::Transient`] when discovery fails.
pub async fn route_resource(client: &Client) -> Result<ApiResource, KubeError> {
    for version in TCPROUTE_VERSIONS {
        match client
            .list_api_group_resources(&format!("{GATEWAY_GROUP}/{version}"))
            .await
        {
            Ok(list) if list.resources.iter().any(|r| r.name == "tcproutes") => {
                let gvk = GroupVersionKind::gvk(GATEWAY_GROUP, version, "TCPRoute");
                return Ok(ApiResource::from_gvk_with_plural(&gvk, "tcproutes"));
            }
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(KubeError::Transient(format!(
                    "discovering {GATEWAY_GROUP}/{version}: {e}"
                )));
            }
        }
    }
    Err(KubeError::Permanent(format!(
        "the apiserver serves TCPRoute in neither {} of {GATEWAY_GROUP}; install the Gateway API CRDs (v1.6 standard or experimental, or v1.5 experimental)",
        TCPROUTE_VERSIONS.join(" nor ")
    )))
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

fn conditions_of(v: &serde_json::Value) -> Vec<readiness::Condition> {
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

/// The conditions of a route's parent entry for `listener` on Gateway `gw_ns/gw_name`.
fn route_parent_conditions(
    route: &DynamicObject,
    gw_ns: &str,
    gw_name: &str,
    listener: &str,
) -> Option<Vec<readiness::Condition>> {
    let route_ns = route.metadata.namespace.as_deref().unwrap_or_default();
    route.data["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| {
            let r = &p["parentRef"];
            r["name"].as_str() == Some(gw_name)
                && r["namespace"].as_str().unwrap_or(route_ns) == gw_ns
                && r["kind"].as_str().unwrap_or("Gateway") == "Gateway"
                && r["sectionName"].as_str().is_none_or(|s| s == listener)
        })
        .map(|p| conditions_of(&p["conditions"]))
}

/// Whether a GatewayClass is accepted by a controller, as the start-up report says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassStatus {
    /// `Accepted=True`: a controller took the class.
    Accepted { class: String, controller: String },
    /// The class carries no `Accepted=True`: no controller took it (or it refused it).
    NotAccepted {
        class: String,
        controller: String,
        why: String,
    },
    /// The class could not be read.
    Unknown { class: String, why: String },
}

impl std::fmt::Display for ClassStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClassStatus::Accepted { class, controller } => {
                write!(f, "GatewayClass {class} accepted by {controller}")
            }
            ClassStatus::NotAccepted {
                class,
                controller,
                why,
            } => write!(
                f,
                "GatewayClass {class} ({controller}) not accepted by a controller ({why})"
            ),
            ClassStatus::Unknown { class, why } => {
                write!(f, "GatewayClass {class:?}: cannot tell ({why})")
            }
        }
    }
}

impl ClassStatus {
    /// Whether a controller accepted the class.
    pub fn accepted(&self) -> bool {
        matches!(self, ClassStatus::Accepted { .. })
    }
}

/// The metadata of one proxy port's Service or route.
fn exposure_meta(e: &Exposure<'_>, name: &str) -> ObjectMeta {
    object_meta(
        name,
        &e.spec.namespace,
        e.rm,
        e.allocation_id,
        &e.binding.name,
    )
}

fn object_meta(name: &str, ns: &str, rm: &str, alloc: &str, port_name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ns.to_owned()),
        labels: Some(names::labels(rm, alloc)),
        annotations: Some(names::annotations(rm, alloc, port_name)),
        ..Default::default()
    }
}

/// Server-side applies a whole object the worker alone owns (a Service or a TCPRoute).
async fn apply_whole<K>(api: Api<K>, name: &str, obj: &K, what: String) -> Result<(), KubeError>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let pp = PatchParams::apply(names::OBJECT_FIELD_MANAGER).force();
    api.patch(name, &pp, &Patch::Apply(obj))
        .await
        .map(drop)
        .map_err(|err| classify(&what, err))
}

async fn delete_ignoring_absent<K>(api: Api<K>, name: &str, what: String) -> Result<(), KubeError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    deleted(
        api.delete(name, &DeleteParams::background())
            .await
            .map(drop),
        &what,
    )
}

/// What the answer to a delete means: done when the object is gone or was never there.
fn deleted(answer: Result<(), kube::Error>, what: &str) -> Result<(), KubeError> {
    match answer {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        // Forbidden says nothing of whether the object is there: the worker may have created it before its
        // rights were cut. Releasing its port now could hand the port out twice.
        Err(err) => Err(classify(what, err)),
    }
}

impl Cluster for KubeGateway {
    fn view(&self) -> GatewayView {
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
                } else {
                    v.foreign_ports.insert(p);
                }
            }
        }
        v
    }

    async fn expose(&self, e: &Exposure<'_>) -> Result<(), KubeError> {
        let name = names::object_name(e.rm, e.allocation_id, &e.binding.name);
        // Service first (else the route reports BackendNotFound), listener before route (else NoMatchingParent).
        self.timed("apply_service", self.apply_service(e, &name))
            .await?;
        crashpoint::reach("expose.service_applied");
        self.timed("apply_listener", self.apply_listener(e, &name))
            .await?;
        crashpoint::reach("expose.listener_applied");
        self.timed("apply_route", self.apply_route(e, &name))
            .await?;
        crashpoint::reach("expose.route_applied");
        Ok(())
    }

    async fn withdraw(
        &self,
        rm: &str,
        allocation_id: &str,
        namespace: Option<&str>,
        binding: &Binding,
    ) -> Result<(), KubeError> {
        let name = names::object_name(rm, allocation_id, &binding.name);
        // A delete the namespace forbids does not stop the rest: the listener still goes, then the refusal
        // is reported.
        let mut forbidden = None;
        let mut keep_forbidden = |r: Result<(), KubeError>| match r {
            Err(e) if e.is_forbidden() => {
                forbidden = Some(e);
                Ok(())
            }
            other => other,
        };
        if let Some(ns) = namespace {
            let what = format!("deleting TCPRoute {ns}/{name}");
            let delete = self.bounded(
                &what,
                delete_ignoring_absent(self.routes(ns), &name, what.clone()),
            );
            keep_forbidden(self.timed("delete_route", delete).await)?;
            crashpoint::reach("withdraw.route_deleted");
        }
        self.timed("remove_listener", self.remove_listener(&name))
            .await?;
        crashpoint::reach("withdraw.listener_removed");
        if let Some(ns) = namespace {
            let services: Api<Service> = Api::namespaced(self.client.clone(), ns);
            let what = format!("deleting Service {ns}/{name}");
            let delete = self.bounded(&what, delete_ignoring_absent(services, &name, what.clone()));
            keep_forbidden(self.timed("delete_service", delete).await)?;
            crashpoint::reach("withdraw.service_deleted");
        }
        forbidden.map_or(Ok(()), Err)
    }

    fn controller_verdict(&self, exposures: &[Exposure<'_>]) -> Verdict {
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
                            &self.gateway_namespace,
                            &self.gateway_name,
                            &name,
                        )
                    }),
                }
            })
            .collect();
        readiness::evaluate_all(&observed)
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.clone()
    }
}

impl KubeGateway {
    /// The worker's route `ns/name` as its watch last saw it.
    fn route(&self, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        let key = reflector::ObjectRef::new_with(name, self.route_resource.clone()).within(ns);
        self.route_stores.iter().find_map(|s| s.get(&key))
    }

    /// Whether the Gateway's class is accepted by a controller, read once (for the start-up report).
    pub async fn class_status(&self) -> ClassStatus {
        let Some(class) = self.gateway().map(|g| g.spec.gateway_class_name.clone()) else {
            return ClassStatus::Unknown {
                class: String::new(),
                why: "the Gateway is not found".into(),
            };
        };
        let api: Api<gateway_api::experimental::gatewayclasses::GatewayClass> =
            Api::all(self.client.clone());
        match api.get_opt(&class).await {
            Ok(Some(gc)) => {
                let controller = gc.spec.controller_name.clone();
                let accepted = gc
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Accepted"));
                match accepted {
                    Some(c) if c.status == "True" => ClassStatus::Accepted { class, controller },
                    Some(c) => ClassStatus::NotAccepted {
                        class,
                        controller,
                        why: format!("Accepted={}: {}: {}", c.status, c.reason, c.message),
                    },
                    None => ClassStatus::NotAccepted {
                        class,
                        controller,
                        why: "no status written".into(),
                    },
                }
            }
            Ok(None) => ClassStatus::Unknown {
                class,
                why: "no such GatewayClass".into(),
            },
            Err(e) => ClassStatus::Unknown {
                class,
                why: e.to_string(),
            },
        }
    }
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

/// Labels selecting every object the worker made for one resource manager.
pub fn owned_selector(rm: &str) -> String {
    format!(
        "app.kubernetes.io/managed-by={},{}={}",
        names::MANAGER,
        names::rm_label_key(),
        names::rm_label_value(rm)
    )
}

/// Which kind of object the worker made in a task namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ObjectKind {
    Service,
    TcpRoute,
}

/// An object the worker made, as found by its labels.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OwnedObject {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
    /// Unix seconds of its creation.
    pub created: i64,
}

fn owned<K: kube::Resource>(kind: ObjectKind, o: &K) -> Option<OwnedObject> {
    let m = o.meta();
    Some(OwnedObject {
        kind,
        namespace: m.namespace.clone()?,
        name: m.name.clone()?,
        created: m.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second()),
    })
}

impl KubeGateway {
    /// Every Service and TCPRoute of this resource manager, by label: in each of `namespaces`, or in all
    /// namespaces when `None` (which needs cluster-wide list rights).
    ///
    /// # Errors
    /// [`KubeError`] when a list fails.
    pub async fn owned_objects(
        &self,
        namespaces: Option<&[String]>,
    ) -> Result<Vec<OwnedObject>, KubeError> {
        let lp = kube::api::ListParams::default().labels(&owned_selector(&self.rm));
        let scopes: Vec<Option<&str>> = match namespaces {
            Some(list) => list.iter().map(|n| Some(n.as_str())).collect(),
            None => vec![None],
        };
        let mut out = Vec::new();
        for ns in scopes {
            let (svcs, routes): (Api<Service>, Api<DynamicObject>) = match ns {
                Some(ns) => (Api::namespaced(self.client.clone(), ns), self.routes(ns)),
                None => (
                    Api::all(self.client.clone()),
                    Api::all_with(self.client.clone(), &self.route_resource),
                ),
            };
            let what = format!("listing Services in {}", ns.unwrap_or("all namespaces"));
            let found = self
                .bounded(&what, async {
                    svcs.list(&lp).await.map_err(|e| classify(&what, e))
                })
                .await?;
            for s in found {
                out.extend(owned(ObjectKind::Service, &s));
            }
            let what = format!("listing TCPRoutes in {}", ns.unwrap_or("all namespaces"));
            let found = self
                .bounded(&what, async {
                    routes.list(&lp).await.map_err(|e| classify(&what, e))
                })
                .await?;
            for r in found {
                out.extend(owned(ObjectKind::TcpRoute, &r));
            }
        }
        Ok(out)
    }

    /// Deletes one object found by [`KubeGateway::owned_objects`].
    ///
    /// # Errors
    /// [`KubeError`] when the delete fails (a missing object is not a failure).
    pub async fn delete_object(&self, o: &OwnedObject) -> Result<(), KubeError> {
        let what = format!("deleting {:?} {}/{}", o.kind, o.namespace, o.name);
        let call = what.clone();
        self.bounded(&call, async {
            match o.kind {
                ObjectKind::Service => {
                    let api: Api<Service> = Api::namespaced(self.client.clone(), &o.namespace);
                    delete_ignoring_absent(api, &o.name, what).await
                }
                ObjectKind::TcpRoute => {
                    delete_ignoring_absent(self.routes(&o.namespace), &o.name, what).await
                }
            }
        })
        .await
    }

    /// Removes a listener the worker owns by its name.
    ///
    /// # Errors
    /// [`KubeError`] when the apply fails.
    pub async fn remove_owned_listener(&self, name: &str) -> Result<(), KubeError> {
        self.remove_listener(name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(&format!("{reason} for the test"), reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_forbidden_delete_is_an_error_and_only_a_missing_object_counts_as_gone() {
        assert!(deleted(Err(api_error(404, "NotFound")), "deleting Service a/b").is_ok());
        match deleted(Err(api_error(403, "Forbidden")), "deleting Service a/b") {
            Err(KubeError::Permanent(m)) => {
                assert!(
                    m.contains("deleting Service a/b") && m.contains("403"),
                    "{m}"
                );
            }
            other => panic!("a 403 on delete was taken as {other:?}"),
        }
    }
}
