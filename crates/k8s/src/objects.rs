//! What is applied, built as values: the Service, the partial Gateway holding one listener, the TCPRoute
//! and their metadata. Pure; [`crate::apply`] writes them.

use gateway_api::experimental::tcproutes::{
    TcpRoute, TcpRouteParentRefs, TcpRouteRules, TcpRouteRulesBackendRefs, TcpRouteSpec,
};
use itg_core::cluster::Exposure;
use itg_core::names;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// TCPRoute versions the worker can write, most preferred first.
pub const TCPROUTE_VERSIONS: [&str; 2] = ["v1", "v1alpha2"];

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
        "spec": { "listeners": [tcp_listener(e, name)] }
    })
}

/// One proxy port's TCP listener, taking TCPRoutes from the task's namespace only.
fn tcp_listener(e: &Exposure<'_>, name: &str) -> serde_json::Value {
    json!({
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
    })
}

/// A body of `kind` that names the object and holds nothing else: applied under a listener's own field
/// manager, it drops exactly what that manager owned.
fn bare(kind: &str, namespace: &str, name: &str) -> serde_json::Value {
    json!({
        "apiVersion": format!("{GATEWAY_GROUP}/v1"),
        "kind": kind,
        "metadata": { "name": name, "namespace": namespace }
    })
}

/// The body that, applied under a listener's own field manager, drops exactly that listener. It holds no
/// `spec` at all: an empty `spec: {}` would leave the manager owning `f:spec`, and one such managedFields
/// entry per listener ever removed made the Gateway, and every write to it, grow without end.
pub fn listener_removal(gateway_namespace: &str, gateway_name: &str) -> serde_json::Value {
    bare("Gateway", gateway_namespace, gateway_name)
}

/// What a listener belongs to, and so what a route names as its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// `Gateway` or `ListenerSet`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

/// The TCPRoute of one proxy port: parent is our listener on the Gateway, backend our Service.
pub fn route_object(
    gateway_namespace: &str,
    gateway_name: &str,
    e: &Exposure<'_>,
    name: &str,
) -> TcpRoute {
    let parent = Parent {
        kind: "Gateway",
        namespace: gateway_namespace.to_owned(),
        name: gateway_name.to_owned(),
    };
    route_object_to(&parent, e, name)
}

/// The TCPRoute of one proxy port: parent is our listener in `parent`, backend our Service.
pub fn route_object_to(parent: &Parent, e: &Exposure<'_>, name: &str) -> TcpRoute {
    TcpRoute {
        metadata: exposure_meta(e, name),
        spec: TcpRouteSpec {
            parent_refs: Some(vec![TcpRouteParentRefs {
                group: Some(GATEWAY_GROUP.into()),
                kind: Some(parent.kind.into()),
                name: parent.name.clone(),
                namespace: Some(parent.namespace.clone()),
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

/// A partial ListenerSet holding one listener of an allocation, attached to the Gateway: applied under the
/// listener's own field manager, so the apiserver merges the allocation's listeners by name and the first
/// apply creates the set.
pub fn listenerset_patch(
    set_namespace: &str,
    set_name: &str,
    gateway_namespace: &str,
    gateway_name: &str,
    e: &Exposure<'_>,
    name: &str,
) -> serde_json::Value {
    json!({
        "apiVersion": format!("{GATEWAY_GROUP}/v1"),
        "kind": "ListenerSet",
        "metadata": {
            "name": set_name,
            "namespace": set_namespace,
            "labels": names::labels(e.rm, e.allocation_id),
            "annotations": names::set_annotations(e.rm, e.allocation_id),
        },
        "spec": {
            "parentRef": {
                "group": GATEWAY_GROUP,
                "kind": "Gateway",
                "name": gateway_name,
                "namespace": gateway_namespace,
            },
            "listeners": [tcp_listener(e, name)]
        }
    })
}

/// The body that, applied under a listener's own field manager, drops exactly that listener from its
/// ListenerSet (the others stay; the last one goes with a delete of the set, which may not be empty).
pub fn listenerset_removal(set_namespace: &str, set_name: &str) -> serde_json::Value {
    bare("ListenerSet", set_namespace, set_name)
}

/// The TCPRoute as applied: `route` (whose type knows only `v1alpha2`) under the served `api_version`. The
/// two versions have the same fields for what the worker writes (one rule, one backend).
pub fn route_body(api_version: &str, route: &TcpRoute) -> serde_json::Value {
    let mut v = serde_json::to_value(route).unwrap_or_default();
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!("TCPRoute");
    v
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
