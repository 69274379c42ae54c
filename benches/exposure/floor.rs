//! The floor: the calls one exposure cannot avoid, made directly with the worker's crates and bodies and
//! no worker in between. KV create of the allocation record and of its port key, server-side apply of the
//! Service, the listener and the TCPRoute, and the reply's JetStream publish with a message id.
//!
//! In `listenerset` mode the listener is applied as the first (creating) apply of a ListenerSet of the
//! allocation's own (`listenerset_patch`, under the listener's field manager), the route's parent is that
//! set's listener, and the removal deletes the set: the Gateway object is never written.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::listenersets::ListenerSet;
use gateway_api::experimental::tcproutes::TcpRoute;
use itg::cluster::Exposure;
use itg::contract::ProxyPort;
use itg::k8s;
use itg::k8s::objects::Parent;
use itg::names;
use itg::state::{Binding, Spec};
use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};

/// Where a listener goes: `listener_mode` of the worker it is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A listener on the shared Gateway.
    Gateway,
    /// A ListenerSet per allocation, attached to the Gateway.
    ListenerSet,
}

impl Mode {
    /// The label of a row.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Gateway => "Gateway mode",
            Mode::ListenerSet => "ListenerSet mode",
        }
    }

    /// The YAML a `TestRm` gets in `extra` for the worker to run in this mode.
    pub fn extra(self) -> &'static str {
        match self {
            Mode::Gateway => "",
            Mode::ListenerSet => "    listener_mode: listenerset\n",
        }
    }
}

/// Everything the floor writes to, fixed at start.
pub struct Floor {
    mode: Mode,
    kv: kv::Store,
    js: jetstream::Context,
    client: Client,
    gateway_ns: String,
    gateway: String,
    task_ns: String,
    /// A resource manager token of its own, so nothing of the floor is ever taken for the worker's.
    rm: String,
    spec: Spec,
    /// Per exposure, the time of each step: KV, Service, listener, route, reply.
    steps: std::sync::Mutex<Vec<[Duration; 5]>>,
}

impl Floor {
    pub async fn new(
        nats: async_nats::Client,
        client: Client,
        gateway_ns: &str,
        gateway: &str,
        task_ns: &str,
    ) -> Floor {
        Floor::with_mode(Mode::Gateway, nats, client, gateway_ns, gateway, task_ns).await
    }

    /// A floor whose listener goes where `mode` puts it.
    pub async fn with_mode(
        mode: Mode,
        nats: async_nats::Client,
        client: Client,
        gateway_ns: &str,
        gateway: &str,
        task_ns: &str,
    ) -> Floor {
        let js = jetstream::new(nats);
        let kv = js.get_key_value("ITG_STATE").await.expect("state bucket");
        Floor {
            mode,
            kv,
            js,
            client,
            gateway_ns: gateway_ns.into(),
            gateway: gateway.into(),
            task_ns: task_ns.into(),
            rm: format!("floor-{}", crate::common::suffix()),
            spec: Spec {
                namespace: task_ns.into(),
                pod_selector: BTreeMap::from([(
                    "determined.ai/allocation".to_owned(),
                    "x".to_owned(),
                )]),
                proxy_ports: vec![ProxyPort {
                    name: "jupyter".into(),
                    port: 8888,
                }],
                task_id: None,
            },
            steps: std::sync::Mutex::default(),
        }
    }

    fn binding(port: u16) -> Binding {
        Binding {
            name: "jupyter".into(),
            container_port: 8888,
            gateway_port: port,
        }
    }

    /// The name of the Service, listener and TCPRoute the floor makes for `alloc` (its port is `jupyter`).
    /// The `pod_selector` of every exposure of the floor's.
    pub fn pod_selector(&self) -> &BTreeMap<String, String> {
        &self.spec.pod_selector
    }

    pub fn object_name(&self, alloc: &str) -> String {
        format!(
            "floor-{}",
            &names::object_name(&self.rm, alloc, "jupyter")[4..]
        )
    }

    /// The ListenerSet of `alloc` in `listenerset` mode (in the Gateway's namespace, as the worker makes it).
    fn set_name(&self, alloc: &str) -> String {
        names::listenerset_name(&self.rm, alloc)
    }

    /// One exposure's unavoidable calls, timed end to end.
    pub async fn expose(&self, alloc: &str, port: u16) -> Duration {
        let b = Self::binding(port);
        let e = Exposure {
            rm: &self.rm,
            allocation_id: alloc,
            spec: &self.spec,
            binding: &b,
        };
        let name = self.object_name(alloc);
        let record = serde_json::json!({
            "allocation_id": alloc, "resource_manager": self.rm, "phase": "ready",
            "spec": self.spec, "ports": [b], "released": [],
        });
        let claim = serde_json::json!({ "allocation": alloc, "proxy": "jupyter", "claimed_at": 0 });
        let pp = PatchParams::apply(names::OBJECT_FIELD_MANAGER).force();
        let lpp = PatchParams::apply(&names::listener_field_manager(&self.rm, &name)).force();
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.task_ns);
        let routes: Api<TcpRoute> = Api::namespaced(self.client.clone(), &self.task_ns);
        let gateways: Api<Gateway> = Api::namespaced(self.client.clone(), &self.gateway_ns);

        let t0 = Instant::now();
        let mut marks = [t0; 6];
        self.kv
            .create(
                names::allocation_key(&self.rm, alloc),
                record.to_string().into(),
            )
            .await
            .expect("floor: record");
        let pkey = names::port_key(&self.rm, &self.gateway_ns, &self.gateway, port);
        self.kv
            .create(pkey, claim.to_string().into())
            .await
            .expect("floor: port key");
        marks[1] = Instant::now();
        services
            .patch(&name, &pp, &Patch::Apply(&k8s::service_object(&e, &name)))
            .await
            .expect("floor: Service");
        marks[2] = Instant::now();
        let route = match self.mode {
            Mode::Gateway => {
                let body = k8s::listener_patch(&self.gateway_ns, &self.gateway, &e, &name);
                gateways
                    .patch(&self.gateway, &lpp, &Patch::Apply(&body))
                    .await
                    .expect("floor: listener");
                k8s::route_object(&self.gateway_ns, &self.gateway, &e, &name)
            }
            Mode::ListenerSet => {
                let set = self.set_name(alloc);
                let body = k8s::objects::listenerset_patch(
                    &self.gateway_ns,
                    &set,
                    &self.gateway_ns,
                    &self.gateway,
                    &e,
                    &name,
                );
                Api::<ListenerSet>::namespaced(self.client.clone(), &self.gateway_ns)
                    .patch(&set, &lpp, &Patch::Apply(&body))
                    .await
                    .expect("floor: ListenerSet");
                let parent = Parent {
                    kind: "ListenerSet",
                    namespace: self.gateway_ns.clone(),
                    name: set,
                };
                k8s::objects::route_object_to(&parent, &e, &name)
            }
        };
        marks[3] = Instant::now();
        routes
            .patch(&name, &pp, &Patch::Apply(&route))
            .await
            .expect("floor: TCPRoute");
        marks[4] = Instant::now();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("floor-{alloc}").as_str());
        let reply = serde_json::json!({
            "schema_version": 1, "resource_manager": self.rm, "allocation_id": alloc,
            "gateway": { "namespace": self.gateway_ns, "name": self.gateway },
            "proxies": [{ "name": "jupyter", "container_port": 8888, "gateway_port": port,
                          "address": format!("203.0.113.10:{port}") }],
        });
        self.js
            .publish_with_headers(
                format!("itg.replies.{}.ready", self.rm),
                headers,
                reply.to_string().into(),
            )
            .await
            .expect("floor: publish")
            .await
            .expect("floor: stored");
        marks[5] = Instant::now();
        let step = |i: usize| marks[i + 1] - marks[i];
        self.steps
            .lock()
            .expect("steps")
            .push([step(0), step(1), step(2), step(3), step(4)]);
        t0.elapsed()
    }

    /// The median of each step so far, and forgets them.
    pub fn breakdown(&self) -> String {
        let all = std::mem::take(&mut *self.steps.lock().expect("steps"));
        let listener = match self.mode {
            Mode::Gateway => "listener",
            Mode::ListenerSet => "ListenerSet",
        };
        let names = ["KV creates", "Service", listener, "TCPRoute", "reply"];
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let s: Vec<Duration> = all.iter().map(|a| a[i]).collect();
                format!("{n} {}", crate::report::ms(crate::drive::pcts(&s).p50))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Removes what [`Floor::expose`] made (not timed here; [`lifecycles`] times it).
    pub async fn withdraw(&self, alloc: &str, port: u16) {
        let name = self.object_name(alloc);
        let dp = DeleteParams::background();
        let _ = Api::<TcpRoute>::namespaced(self.client.clone(), &self.task_ns)
            .delete(&name, &dp)
            .await;
        match self.mode {
            Mode::Gateway => {
                let lpp =
                    PatchParams::apply(&names::listener_field_manager(&self.rm, &name)).force();
                Api::<Gateway>::namespaced(self.client.clone(), &self.gateway_ns)
                    .patch(
                        &self.gateway,
                        &lpp,
                        &Patch::Apply(&k8s::listener_removal(&self.gateway_ns, &self.gateway)),
                    )
                    .await
                    .expect("floor: remove listener");
            }
            Mode::ListenerSet => {
                Api::<ListenerSet>::namespaced(self.client.clone(), &self.gateway_ns)
                    .delete(&self.set_name(alloc), &dp)
                    .await
                    .expect("floor: delete ListenerSet");
            }
        }
        let _ = Api::<Service>::namespaced(self.client.clone(), &self.task_ns)
            .delete(&name, &dp)
            .await;
        let _ = self.kv.purge(names::allocation_key(&self.rm, alloc)).await;
        let _ = self
            .kv
            .purge(names::port_key(
                &self.rm,
                &self.gateway_ns,
                &self.gateway,
                port,
            ))
            .await;
    }
}

/// Runs `total` of the floor's lifecycles (its exposure's calls, then its removal's), `in_flight` at a time
/// spread over `floors` (each with its own NATS and apiserver clients, as each worker has); returns the wall
/// time. Each lane reuses one port of its own from `first_port` on.
pub async fn lifecycles(
    floors: &[std::sync::Arc<Floor>],
    total: usize,
    in_flight: usize,
    first_port: u16,
) -> Duration {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let left = std::sync::Arc::new(AtomicUsize::new(total));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..in_flight {
        let fl = floors[lane % floors.len()].clone();
        let left = left.clone();
        let port = first_port + u16::try_from(lane).expect("lanes fit");
        tasks.spawn(async move {
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                let a = crate::drive::alloc_id("floorlife");
                fl.expose(&a, port).await;
                fl.withdraw(&a, port).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("floor lifecycle task");
    }
    // The steps of these exposures are not what `breakdown` reports.
    for fl in floors {
        fl.steps.lock().expect("steps").clear();
    }
    t0.elapsed()
}
