//! The floor: the calls one exposure cannot avoid, made directly with the worker's crates and bodies and
//! no worker in between. KV create of the allocation record and of its port key, server-side apply of the
//! Service, the listener and the TCPRoute, and the reply's JetStream publish with a message id.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::tcproutes::TcpRoute;
use itg::cluster::Exposure;
use itg::contract::ProxyPort;
use itg::k8s;
use itg::names;
use itg::state::{Binding, Spec};
use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};

/// Everything the floor writes to, fixed at start.
pub struct Floor {
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
        let js = jetstream::new(nats);
        let kv = js.get_key_value("ITG_STATE").await.expect("state bucket");
        Floor {
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
    pub fn object_name(&self, alloc: &str) -> String {
        format!(
            "floor-{}",
            &names::object_name(&self.rm, alloc, "jupyter")[4..]
        )
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
        let body = k8s::listener_patch(&self.gateway_ns, &self.gateway, &e, &name);
        gateways
            .patch(&self.gateway, &lpp, &Patch::Apply(&body))
            .await
            .expect("floor: listener");
        marks[3] = Instant::now();
        let route = k8s::route_object(&self.gateway_ns, &self.gateway, &e, &name);
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
        let names = ["KV creates", "Service", "listener", "TCPRoute", "reply"];
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

    /// Removes what [`Floor::expose`] made (not timed).
    pub async fn withdraw(&self, alloc: &str, port: u16) {
        let name = self.object_name(alloc);
        let dp = DeleteParams::background();
        let _ = Api::<TcpRoute>::namespaced(self.client.clone(), &self.task_ns)
            .delete(&name, &dp)
            .await;
        let lpp = PatchParams::apply(&names::listener_field_manager(&self.rm, &name)).force();
        Api::<Gateway>::namespaced(self.client.clone(), &self.gateway_ns)
            .patch(
                &self.gateway,
                &lpp,
                &Patch::Apply(&k8s::listener_removal(&self.gateway_ns, &self.gateway)),
            )
            .await
            .expect("floor: remove listener");
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
