//! Real Pods for the tests, on the Nodes whose kubelets kwok plays (`scripts/testenv.d/kwok.bash`): a Pod
//! bound to one gets an IP from the Node's podCIDR and turns Ready, at once or after a delay of its own, and
//! the kube-controller-manager's EndpointSlice controller lists it in the slices of the Services selecting
//! it. Nothing runs in a Pod: a test that connects to one serves its IP from a backend's network namespace
//! ([`super::backend::Netns::serve_pod`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;

use super::backend::Netns;
use super::env_var;

/// The label a test's `started` selects its allocation's Pods by.
pub const TASK_LABEL: &str = "tests.internal-task-gateway.io/allocation";

/// The `pod_selector` a test's `started` for `alloc` carries ([`super::Master::started`] sends it): a label
/// of the allocation's own, a hash because an allocation ID need not be a valid label value, so each
/// allocation's Services select its own Pods and no other's.
pub fn task_selector(alloc: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(
        TASK_LABEL.to_owned(),
        itg::names::allocation_hash("tests", alloc),
    )])
}

/// The kwok Node for the next Pod: the Nodes in turn, so a test's Pods are spread over both.
fn next_node() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nodes = kwok_nodes();
    let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    nodes[i % nodes.len()].clone()
}

/// A task's Pod, made as the master's would be: it carries the labels `sel` and declares `ports`
/// (`(port name, container port, backend name)`), and once kwok has made it Ready, `net` answers on its IP
/// at each container port as the backend of that name. Returns the Pod's name and IP. The EndpointSlices
/// are the EndpointSlice controller's, made from the worker's Service and this Pod.
pub async fn serve_task_pod(
    client: &kube::Client,
    ns: &str,
    sel: &BTreeMap<String, String>,
    ports: &[(&str, u16, &str)],
    net: &mut Netns,
) -> (String, Ipv4Addr) {
    let name = format!("task-{}", super::suffix());
    let mut pod = mk_pod(&name, &next_node()).labels(sel);
    for (port_name, cport, _) in ports {
        pod = pod.port(port_name, *cport);
    }
    pod.create(client, ns).await;
    let ip = wait_pod_ready(client, ns, &name, 30).await;
    for (_, cport, backend) in ports {
        net.serve_pod(ip, *cport, backend);
    }
    (name, ip)
}

/// The `endpointslice.kubernetes.io/managed-by` of the slices Kubernetes' own EndpointSlice controller makes.
pub const CONTROLLER_MANAGER: &str = "endpointslice-controller.k8s.io";

/// The Nodes kwok manages, from `.itg/env`; fails with testenv's reason when kwok is not running.
pub fn kwok_nodes() -> Vec<String> {
    if let Some(why) = env_var("ITG_KWOK_UNAVAILABLE") {
        panic!("kwok is not running: {why}");
    }
    let nodes = env_var("ITG_KWOK_NODES")
        .expect("ITG_KWOK_NODES unknown: run `scripts/testenv up` first (it writes .itg/env)");
    nodes.split(',').map(str::to_owned).collect()
}

/// The annotation kwok's `pod-ready` Stage reads a Pod's readiness delay from.
fn ready_delay_annotation() -> String {
    env_var("ITG_KWOK_READY_DELAY_ANNOTATION")
        .expect("ITG_KWOK_READY_DELAY_ANNOTATION unknown: run `scripts/testenv up` first")
}

/// A Pod to make: `mk_pod(name, node).label(..).port(..)`, then [`TestPod::create`].
pub struct TestPod {
    pub name: String,
    pub node: String,
    labels: BTreeMap<String, String>,
    ports: Vec<(String, u16)>,
    ready_after: Option<Duration>,
}

/// A Pod named `name` bound to the kwok Node `node` (no scheduler runs: the Pod names its Node itself).
pub fn mk_pod(name: &str, node: &str) -> TestPod {
    TestPod {
        name: name.to_owned(),
        node: node.to_owned(),
        labels: BTreeMap::new(),
        ports: Vec::new(),
        ready_after: None,
    }
}

impl TestPod {
    pub fn label(mut self, key: &str, value: &str) -> TestPod {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn labels(mut self, labels: &BTreeMap<String, String>) -> TestPod {
        self.labels.extend(labels.clone());
        self
    }

    /// A named TCP container port.
    pub fn port(mut self, name: &str, port: u16) -> TestPod {
        self.ports.push((name.to_owned(), port));
        self
    }

    /// The Pod has its IP at once but turns Ready only `delay` after kwok first sees it.
    pub fn ready_after(mut self, delay: Duration) -> TestPod {
        self.ready_after = Some(delay);
        self
    }

    /// Creates the Pod in `ns` and returns it as the apiserver stored it.
    pub async fn create(&self, client: &kube::Client, ns: &str) -> Pod {
        let mut annotations = BTreeMap::new();
        if let Some(d) = self.ready_after {
            annotations.insert(ready_delay_annotation(), format!("{}ms", d.as_millis()));
        }
        let ports: Vec<_> = self
            .ports
            .iter()
            .map(|(n, p)| json!({ "name": n, "containerPort": p, "protocol": "TCP" }))
            .collect();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": self.name,
                "namespace": ns,
                "labels": self.labels,
                "annotations": annotations,
            },
            "spec": {
                "nodeName": self.node,
                // Nothing runs it: kwok plays its status. No token is mounted, so none is minted.
                "automountServiceAccountToken": false,
                "containers": [{ "name": "task", "image": "task.invalid/none", "ports": ports }],
            }
        }))
        .expect("Pod body");
        // In a namespace just made, the ServiceAccount controller may not have made `default` yet, and
        // admission refuses the Pod until it has (kubectl waits the same way).
        let api = Api::<Pod>::namespaced(client.clone(), ns);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match api.create(&PostParams::default(), &pod).await {
                Ok(p) => return p,
                Err(kube::Error::Api(e))
                    if e.code == 403
                        && e.message.contains("serviceaccount")
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("create Pod {ns}/{}: {e}", self.name),
            }
        }
    }
}

/// The Pod's IP, if kwok has given it one.
pub fn pod_ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

/// Whether the Pod's `Ready` condition is true.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Polls the Pod `ns/name` until `pred` holds of it; returns it. Panics after `secs`, with what it saw.
pub async fn wait_pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    secs: u64,
    what: &str,
    pred: impl Fn(&Pod) -> bool,
) -> Pod {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let pod = api.get_opt(name).await.expect("get Pod");
        if let Some(p) = &pod
            && pred(p)
        {
            return p.clone();
        }
        assert!(
            Instant::now() < deadline,
            "Pod {ns}/{name}: no {what} within {secs} s; last seen: {:#?}",
            pod.map(|p| p.status)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the Pod's IP (kwok gives it at once, before readiness).
pub async fn wait_pod_ip(client: &kube::Client, ns: &str, name: &str, secs: u64) -> Ipv4Addr {
    let pod = wait_pod(client, ns, name, secs, "IP", |p| pod_ip(p).is_some()).await;
    pod_ip(&pod).expect("an IP")
}

/// Waits until the Pod is Ready; returns its IP.
pub async fn wait_pod_ready(client: &kube::Client, ns: &str, name: &str, secs: u64) -> Ipv4Addr {
    let pod = wait_pod(client, ns, name, secs, "readiness with an IP", |p| {
        is_ready(p) && pod_ip(p).is_some()
    })
    .await;
    pod_ip(&pod).expect("an IP")
}

/// Deletes the Pod and waits until the apiserver no longer has it (kwok removes it as a kubelet would).
pub async fn delete_pod(client: &kube::Client, ns: &str, name: &str, secs: u64) {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return,
        Err(e) => panic!("delete Pod {ns}/{name}: {e}"),
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    while api.get_opt(name).await.expect("get Pod").is_some() {
        assert!(
            Instant::now() < deadline,
            "Pod {ns}/{name} still exists {secs} s after its deletion"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One endpoint of a slice, flattened for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub address: String,
    pub ready: Option<bool>,
    pub node: Option<String>,
    /// `namespace/name` of the Pod it stands for.
    pub target: Option<String>,
}

/// The EndpointSlices of the Service `ns/service`, as they are now.
pub async fn service_slices(client: &kube::Client, ns: &str, service: &str) -> Vec<EndpointSlice> {
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .expect("list EndpointSlices")
        .items
}

/// The endpoints of a slice.
pub fn endpoints(slice: &EndpointSlice) -> Vec<SliceEndpoint> {
    slice
        .endpoints
        .iter()
        .flatten()
        .flat_map(|e| {
            e.addresses.iter().map(move |a| SliceEndpoint {
                address: a.clone(),
                ready: e.conditions.as_ref().and_then(|c| c.ready),
                node: e.node_name.clone(),
                target: e.target_ref.as_ref().map(|t| {
                    format!(
                        "{}/{}",
                        t.namespace.clone().unwrap_or_default(),
                        t.name.clone().unwrap_or_default()
                    )
                }),
            })
        })
        .collect()
}

/// Polls the Service's EndpointSlices until `pred` holds of them; returns them. Panics after `secs` with
/// the slices last seen.
pub async fn wait_slices(
    client: &kube::Client,
    ns: &str,
    service: &str,
    secs: u64,
    what: &str,
    pred: impl Fn(&[EndpointSlice]) -> bool,
) -> Vec<EndpointSlice> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let slices = service_slices(client, ns, service).await;
        if pred(&slices) {
            return slices;
        }
        assert!(
            Instant::now() < deadline,
            "EndpointSlices of {ns}/{service}: no {what} within {secs} s; last seen: {slices:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One Pod per task of `tasks` (its allocation ID and its ports), through [`serve_task_pod`], the backend of
/// each port named `task<i>-<port name>`; returns the backends' names by (allocation ID, port name).
pub async fn serve_tasks<'a>(
    client: &kube::Client,
    ns: &str,
    tasks: &'a [(String, Vec<(&'a str, u16)>)],
    net: &mut Netns,
) -> BTreeMap<(String, &'a str), String> {
    let mut backend = BTreeMap::new();
    for (t, (alloc, ports)) in tasks.iter().enumerate() {
        let names: Vec<String> = ports.iter().map(|(n, _)| format!("task{t}-{n}")).collect();
        let declared: Vec<(&str, u16, &str)> = ports
            .iter()
            .zip(&names)
            .map(|((n, p), b)| (*n, *p, b.as_str()))
            .collect();
        serve_task_pod(client, ns, &task_selector(alloc), &declared, net).await;
        for ((name, _), b) in ports.iter().zip(names) {
            backend.insert((alloc.clone(), *name), b);
        }
    }
    backend
}
