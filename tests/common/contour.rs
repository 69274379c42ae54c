//! testenv's Contour Gateway (`scripts/testenv.d/contour.bash`) and resource managers on it: Contour serves
//! the one Gateway its config names, so every test shares it, each as its own resource manager with a range
//! of its own inside testenv's block.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use itg::config::Config;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::backend::refused_at;
use super::{Env, config_yaml, env_var, make_namespace, suffix};

/// testenv's Contour Gateway: where it is, its address and its block of ports.
pub struct ContourGateway {
    pub namespace: String,
    pub name: String,
    pub address: Ipv4Addr,
    pub ports: (u16, u16),
}

/// The Contour Gateway; fails with testenv's reason when Contour is not running.
pub fn contour() -> ContourGateway {
    if let Some(why) = env_var("ITG_CONTOUR_UNAVAILABLE") {
        panic!("Contour is not running: {why}");
    }
    let get = |k: &str| {
        env_var(k).unwrap_or_else(|| {
            panic!("{k} unknown: run `scripts/testenv up` first (it writes .itg/env)")
        })
    };
    let gateway = get("ITG_CONTOUR_GATEWAY");
    let (namespace, name) = gateway
        .split_once('/')
        .expect("ITG_CONTOUR_GATEWAY is ns/name");
    let ports = get("ITG_CONTOUR_PORTS");
    let (lo, hi) = ports.split_once('-').expect("ITG_CONTOUR_PORTS is a-b");
    ContourGateway {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        address: get("ITG_CONTOUR_ADDRESS")
            .parse()
            .expect("ITG_CONTOUR_ADDRESS"),
        ports: (lo.parse().expect("port"), hi.parse().expect("port")),
    }
}

/// One resource manager on the Contour Gateway, with its own task namespace and range.
pub struct ContourRm {
    pub name: String,
    pub task_ns: String,
    pub range: (u16, u16),
}

impl ContourRm {
    pub async fn new(env: &Env, gw: &ContourGateway, prefix: &str, range: (u16, u16)) -> ContourRm {
        assert!(
            gw.ports.0 < range.0 && range.1 <= gw.ports.1,
            "range {range:?} is outside testenv's Contour block {:?} (its first port is the placeholder's)",
            gw.ports
        );
        clear_listeners(env, gw, range).await;
        let s = suffix();
        let rm = ContourRm {
            name: format!("{prefix}-{s}"),
            task_ns: format!("tasks-{s}"),
            range,
        };
        make_namespace(&env.kube().await, &rm.task_ns).await;
        rm
    }

    /// A worker config serving only this resource manager; Contour writes listener and route status, so
    /// `ready` waits for it.
    pub fn config(&self, env: &Env, gw: &ContourGateway) -> Config {
        let mut y = config_yaml(env, &[], "", "127.0.0.1:0");
        y.push_str(&format!(
            "  - name: {}\n    kubeconfig: {}\n    wait_for_controller: true\n    internal_task_gateway:\n      gateway_name: {}\n      gateway_namespace: {}\n      gateway_ip: {}\n      gateway_port_range_start: {}\n      gateway_port_range_end: {}\n",
            self.name,
            env.kubeconfig.display(),
            gw.name,
            gw.namespace,
            gw.address,
            self.range.0,
            self.range.1
        ));
        Config::parse(&y, "contour test config").expect("test config valid")
    }

    /// The shared Gateway stays; only the task namespace goes.
    pub async fn teardown(&self, env: &Env) {
        super::delete_namespace(&env.kube().await, &self.task_ns).await;
    }
}

/// A test that failed before `ended` leaves its listeners on the shared Gateway, where they would count as
/// foreign to the next run: removes every listener in `range` (never the placeholder) and waits until
/// their addresses refuse.
async fn clear_listeners(env: &Env, gw: &ContourGateway, range: (u16, u16)) {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway"),
        "gateways",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(env.kube().await, &gw.namespace, &ar);
    let inside = |l: &serde_json::Value| {
        l["port"]
            .as_u64()
            .is_some_and(|p| (u64::from(range.0)..=u64::from(range.1)).contains(&p))
    };
    for _ in 0..20 {
        let g = api.get(&gw.name).await.expect("the Contour Gateway");
        let listeners = g.data["spec"]["listeners"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let (stale, kept): (Vec<serde_json::Value>, Vec<serde_json::Value>) =
            listeners.into_iter().partition(inside);
        if stale.is_empty() {
            break;
        }
        println!(
            "removing listeners left by an earlier run: {:?}",
            stale.iter().map(|l| &l["name"]).collect::<Vec<_>>()
        );
        // Conditional on the resourceVersion read, so a Gateway changed meanwhile refuses the patch.
        let body = serde_json::json!({
            "metadata": { "resourceVersion": g.metadata.resource_version },
            "spec": { "listeners": kept }
        });
        if api
            .patch(&gw.name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in range.0..=range.1 {
        refused_at(SocketAddr::from((gw.address, p)), Instant::now(), 30).await;
    }
}
