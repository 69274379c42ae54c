//! One allocation's Kubernetes objects with their conditions, and what its addresses answer: the parts of
//! `itgctl describe` that need the resource manager's kubeconfig and the network.

use std::time::Duration;

use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::listenersets::ListenerSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::config::{ListenerMode, ResourceManagerConfig};
use crate::contract::GatewayRef;
use crate::names;
use crate::probe::{DataPlane as _, Reach, Served};
use crate::state::Record;

/// How long one connection to an address may take.
const CONNECT: Duration = Duration::from_secs(2);

/// `type=status` of each condition, with the reason where it is not the obvious one, as one line.
pub(super) fn summary(conditions: &Value) -> String {
    conditions
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let (t, s, r) = (
                        c["type"].as_str().unwrap_or("?"),
                        c["status"].as_str().unwrap_or("?"),
                        c["reason"].as_str().unwrap_or(""),
                    );
                    if r.is_empty() || r == t {
                        format!("{t}={s}")
                    } else {
                        format!("{t}={s}({r})")
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Just the fields an operator reads of each condition.
fn conditions(v: &Value) -> Value {
    let cs = v.as_array().cloned().unwrap_or_default();
    Value::Array(
        cs.into_iter()
            .map(|c| {
                json!({
                    "type": c["type"], "status": c["status"], "reason": c["reason"],
                    "message": c["message"], "observedGeneration": c["observedGeneration"],
                })
            })
            .collect(),
    )
}

async fn get<K>(api: Api<K>, name: &str) -> Result<Option<Value>, String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.get_opt(name).await {
        Ok(Some(o)) => serde_json::to_value(&o)
            .map(Some)
            .map_err(|e| e.to_string()),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|l| l["name"] == name)
}

/// The Gateway, and per bound port its listener, Service (with ready endpoints) and route, with their
/// conditions; a missing object is `null`, an unreadable one names the error.
pub(super) async fn objects(rm: &ResourceManagerConfig, rec: &Record, on: &GatewayRef) -> Value {
    let (client, where_) = match crate::k8s::client_for(rm).await {
        Ok(c) => c,
        Err(e) => return json!({ "error": e }),
    };
    let gateway = get(
        Api::<Gateway>::namespaced(client.clone(), &on.namespace),
        &on.name,
    )
    .await;
    let mut out = json!({
        "apiserver": where_,
        "gateway": {
            "namespace": on.namespace, "name": on.name,
            "found": matches!(gateway, Ok(Some(_))),
            "conditions": gateway.as_ref().ok().and_then(Option::as_ref).map(|g| conditions(&g["status"]["conditions"])),
            "error": gateway.as_ref().err(),
        },
    });
    // In listenerset mode the allocation's listeners live in its own ListenerSet.
    let holder = match rm.listener_mode {
        ListenerMode::Gateway => gateway.ok().flatten(),
        ListenerMode::Listenerset => {
            let ns = rm
                .listenerset_namespace
                .clone()
                .unwrap_or_else(|| on.namespace.clone());
            let set = names::listenerset_name(&rm.name, &rec.allocation_id);
            let found = get(Api::<ListenerSet>::namespaced(client.clone(), &ns), &set).await;
            out["listenerset"] = json!({
                "namespace": ns, "name": set,
                "found": matches!(found, Ok(Some(_))),
                "conditions": found.as_ref().ok().and_then(Option::as_ref).map(|s| conditions(&s["status"]["conditions"])),
                "error": found.as_ref().err(),
            });
            found.ok().flatten()
        }
    };
    let route_api = crate::k8s::route_resource(&client).await;
    let ns = rec.spec.as_ref().map(|s| s.namespace.clone());
    let mut ports = Vec::new();
    for b in &rec.ports {
        let name = names::object_name(&rm.name, &rec.allocation_id, &b.name);
        let listener = holder.as_ref().map(|h| {
            let spec = named(&h["spec"]["listeners"], &name);
            let status = named(&h["status"]["listeners"], &name);
            json!({
                "name": name,
                "found": spec.is_some(),
                "port": spec.map(|l| l["port"].clone()),
                "attachedRoutes": status.map(|s| s["attachedRoutes"].clone()),
                "conditions": status.map(|s| conditions(&s["conditions"])),
            })
        });
        let (service, endpoints, route) = match &ns {
            Some(ns) => (
                object(get(Api::<Service>::namespaced(client.clone(), ns), &name).await),
                ready_endpoints(&client, ns, &name).await,
                route(&client, &route_api, ns, &name, on).await,
            ),
            None => (Value::Null, Value::Null, Value::Null),
        };
        ports.push(json!({
            "name": b.name,
            "gateway_port": b.gateway_port,
            "container_port": b.container_port,
            "listener": listener,
            "service": service,
            "ready_endpoints": endpoints,
            "route": route,
        }));
    }
    out["ports"] = Value::Array(ports);
    out
}

fn object(found: Result<Option<Value>, String>) -> Value {
    match found {
        Ok(Some(o)) => json!({ "found": true, "name": o["metadata"]["name"] }),
        Ok(None) => json!({ "found": false }),
        Err(e) => json!({ "error": e }),
    }
}

async fn ready_endpoints(client: &Client, ns: &str, service: &str) -> Value {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    match slices.list(&lp).await {
        Ok(list) => {
            let ready = list
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                .count();
            json!(ready)
        }
        Err(e) => json!({ "error": e.to_string() }),
    }
}

async fn route(
    client: &Client,
    api: &Result<kube::api::ApiResource, crate::cluster::ClusterError>,
    ns: &str,
    name: &str,
    on: &GatewayRef,
) -> Value {
    let ar = match api {
        Ok(ar) => ar,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    match routes.get_opt(name).await {
        Ok(Some(r)) => {
            let parent = r.data["status"]["parents"].as_array().and_then(|ps| {
                ps.iter()
                    .find(|p| p["parentRef"]["name"] == on.name.as_str())
            });
            json!({
                "found": true,
                "version": ar.version,
                "conditions": parent.map(|p| conditions(&p["conditions"])),
            })
        }
        Ok(None) => json!({ "found": false }),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

/// What one address answered to describe's single connection.
pub(super) struct Look {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub reach: Reach,
}

impl Look {
    /// `host:port`, as a client dials it.
    pub fn address(&self) -> String {
        crate::probe::socket_address(&self.host, self.port)
    }

    /// The worker's conclusion from this one look. A single look is at the start of the worker's grace,
    /// so only an accepted connection proves the port served (and no route proves nothing); a refusal or
    /// an accept-then-close decides nothing yet, as it would not for the worker.
    pub fn served(&self) -> Option<Served> {
        crate::probe::conclude(&self.reach, Duration::ZERO, CONNECT)
    }

    /// Why this look does not prove the address served, or `None` when it does.
    pub fn unproven(&self) -> Option<String> {
        let at = self.address();
        match self.served() {
            Some(Served::Yes) => None,
            Some(Served::No) => Some(format!("the data plane refuses {at}")),
            Some(Served::CannotTell { why, .. }) => Some(format!("cannot tell of {at}: {why}")),
            None => Some(match &self.reach {
                Reach::Refused => format!("the data plane refuses {at} now"),
                Reach::Closed => format!(
                    "{at} accepted, then closed (no route yet, or the task does not answer)"
                ),
                Reach::Silent(why) | Reach::Local(why) | Reach::Unreachable(why) => {
                    format!("cannot tell of {at}: {why}")
                }
                Reach::Accepted => format!("{at} accepted, but not concluded"),
            }),
        }
    }

    /// The look as the view shows it.
    pub fn view(&self) -> Value {
        let answer = match &self.reach {
            Reach::Accepted => "accepted".to_owned(),
            Reach::Closed => {
                "accepted, then closed (no route yet, or the task does not answer)".to_owned()
            }
            Reach::Refused => "refused (nothing listens: the listener is not bound)".to_owned(),
            Reach::Unreachable(why) => format!("cannot tell: {why}"),
            Reach::Silent(why) => format!("cannot tell, no answer: {why}"),
            Reach::Local(why) => format!("cannot tell, this host failed the attempt: {why}"),
        };
        let served = match self.served() {
            Some(Served::Yes) => "yes",
            Some(Served::No) => "no",
            Some(Served::CannotTell { .. }) => "cannot tell",
            None => "not proven by one look",
        };
        json!({ "name": self.name, "address": self.address(), "answer": answer, "served": served })
    }
}

/// One connection to each `(name, host, port)`: what the data plane answers there now.
pub(super) async fn probe(targets: Vec<(String, String, u16)>) -> Vec<Look> {
    let tcp = crate::dataplane::Tcp;
    let mut out = Vec::new();
    for (name, host, port) in targets {
        let reach = tcp.connect(&host, port, CONNECT).await;
        out.push(Look {
            name,
            host,
            port,
            reach,
        });
    }
    out
}
