//! In-memory seams for the handler, steered step by step: a compare-and-set store that can let another
//! allocation's claim land the moment a port key is freed, a Gateway per pool member that knows which
//! port each listener stands on, and a data plane whose first connection can be held. Nothing here yields
//! at random: the tests order the passes with pauses, so each one prints the same thing on every run.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use itg::answers::Handled;
use itg::cluster::{
    ClassStatus, Cluster, ClusterError, Exposure, GatewayView, Inventory, ObjectKind, OwnedObject,
};
use itg::config::Config;
use itg::contract::EventKind;
use itg::probe::{DataPlane, Reach};
use itg::readiness::Verdict;
use itg::resource_manager::RmContext;
use itg::state::{Binding, Record};
use itg::store::{Entry, Outcome, Store, StoreError};
use itg::worker::Handler;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

/// A pause point: notified when reached, waits to be resumed.
pub type Pause = (Arc<Notify>, Arc<Notify>);

pub fn pause() -> Pause {
    (Arc::new(Notify::new()), Arc::new(Notify::new()))
}

/// The bucket's last revision, and each key's value and revision.
type Bucket = (u64, BTreeMap<String, (Bytes, u64)>);

/// Compare-and-set over a map, one revision counter for the bucket. `after_delete` lets a value be written
/// to a key the moment it is deleted: another allocation's claim winning the freed port.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Bucket>>,
    pub after_delete: Arc<Mutex<Option<(String, Bytes)>>>,
}

impl MemStore {
    /// The bucket is lost: every record and claim is gone.
    pub fn clear(&self) {
        self.inner.lock().unwrap().1.clear();
    }

    pub fn put(&self, key: &str, value: Bytes) {
        let mut g = self.inner.lock().unwrap();
        g.0 += 1;
        let rev = g.0;
        g.1.insert(key.to_owned(), (value, rev));
    }

    pub fn record(&self, rm: &str, alloc: &str) -> Record {
        let g = self.inner.lock().unwrap();
        let (v, _) =
            g.1.get(&itg::names::allocation_key(rm, alloc))
                .expect("a record");
        serde_json::from_slice(v).unwrap()
    }

    /// The record as stored, as JSON.
    pub fn record_json(&self, rm: &str, alloc: &str) -> serde_json::Value {
        serde_json::to_value(self.record(rm, alloc)).unwrap()
    }

    /// Which allocation key holds each claimed port, over every Gateway.
    pub fn claims(&self) -> BTreeMap<String, String> {
        let g = self.inner.lock().unwrap();
        g.1.iter()
            .filter(|(k, _)| k.starts_with("port."))
            .map(|(k, (v, _))| {
                let c: serde_json::Value = serde_json::from_slice(v).unwrap();
                (k.clone(), c["allocation"].as_str().unwrap_or("").to_owned())
            })
            .collect()
    }
}

impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        tokio::task::yield_now().await;
        let g = self.inner.lock().unwrap();
        Ok(g.1.get(key).map(|(v, r)| Entry {
            value: v.clone(),
            revision: *r,
        }))
    }
    async fn create(&self, key: &str, value: Bytes) -> Result<Outcome, StoreError> {
        tokio::task::yield_now().await;
        let mut g = self.inner.lock().unwrap();
        if g.1.contains_key(key) {
            return Ok(Outcome::Conflict);
        }
        g.0 += 1;
        let rev = g.0;
        g.1.insert(key.to_owned(), (value, rev));
        Ok(Outcome::Written(rev))
    }
    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<Outcome, StoreError> {
        tokio::task::yield_now().await;
        let mut g = self.inner.lock().unwrap();
        if g.1.get(key).map(|e| e.1) != Some(revision) {
            return Ok(Outcome::Conflict);
        }
        g.0 += 1;
        let rev = g.0;
        g.1.insert(key.to_owned(), (value, rev));
        Ok(Outcome::Written(rev))
    }
    async fn delete(&self, key: &str, revision: u64) -> Result<Outcome, StoreError> {
        tokio::task::yield_now().await;
        let mut g = self.inner.lock().unwrap();
        if g.1.get(key).map(|e| e.1) != Some(revision) {
            return Ok(Outcome::Conflict);
        }
        g.1.remove(key);
        let landing = self.after_delete.lock().unwrap().take();
        match landing {
            Some((k, v)) if k == key => {
                g.0 += 1;
                let rev = g.0;
                g.1.insert(k, (v, rev));
            }
            other => *self.after_delete.lock().unwrap() = other,
        }
        Ok(Outcome::Written(revision))
    }
    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        tokio::task::yield_now().await;
        let g = self.inner.lock().unwrap();
        Ok(g.1
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
}

/// A port claim's value, as another allocation's claim would be written.
pub fn claim_of(rm: &str, alloc: &str, proxy: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&itg::claims::PortClaim {
            allocation: itg::names::allocation_key(rm, alloc),
            proxy: proxy.into(),
            claimed_at: 0,
        })
        .unwrap(),
    )
}

/// One Gateway: objects as `kind/name`, the port each listener stands on (a second listener on a port is
/// refused, as the Gateway's uniqueness rule does), foreign ports, and the controller's verdict, which can
/// call a listener on a chosen port conflicted. `waiting` is notified whenever a pass starts waiting on the
/// watches; `pause` holds the next expose of the named allocation before it applies anything.
#[derive(Clone)]
pub struct MemCluster {
    pub objects: Arc<Mutex<BTreeSet<String>>>,
    pub ports: Arc<Mutex<BTreeMap<String, u16>>>,
    pub foreign: Arc<Mutex<BTreeSet<u16>>>,
    pub verdict: Arc<Mutex<Verdict>>,
    pub conflicted_ports: Arc<Mutex<BTreeSet<u16>>>,
    pub pause: Arc<Mutex<Option<(String, Pause)>>>,
    pub waiting: Arc<Notify>,
    tick: Arc<watch::Sender<u64>>,
}

impl Default for MemCluster {
    fn default() -> Self {
        MemCluster {
            objects: Arc::default(),
            ports: Arc::default(),
            foreign: Arc::new(Mutex::new(BTreeSet::from([39999]))),
            verdict: Arc::new(Mutex::new(Verdict::Reachable)),
            conflicted_ports: Arc::default(),
            pause: Arc::default(),
            waiting: Arc::default(),
            tick: Arc::new(watch::channel(0).0),
        }
    }
}

impl MemCluster {
    /// The watches report a change.
    pub fn tick(&self) {
        self.tick.send_modify(|n| *n += 1);
    }

    /// The port the listener of `alloc`'s `proxy` stands on.
    pub fn port_of(&self, alloc: &str, proxy: &str) -> Option<u16> {
        let name = itg::names::object_name("rm", alloc, proxy);
        self.ports.lock().unwrap().get(&name).copied()
    }

    /// What of `alloc` stands here.
    pub fn objects_of(&self, alloc: &str) -> Vec<String> {
        let name = itg::names::object_name("rm", alloc, "jupyter");
        self.objects
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.ends_with(&format!("/{name}")))
            .cloned()
            .collect()
    }

    /// A listener of `alloc` applied on `port` by a pass nobody waits for any more.
    pub fn stray(&self, alloc: &str, port: u16) {
        let name = itg::names::object_name("rm", alloc, "jupyter");
        self.ports.lock().unwrap().insert(name.clone(), port);
        let mut o = self.objects.lock().unwrap();
        for kind in ["service", "listener", "route"] {
            o.insert(format!("{kind}/{name}"));
        }
    }
}

impl MemCluster {
    /// The stray listener of `alloc` is taken away.
    pub fn withdraw_stray(&self, alloc: &str) {
        let name = itg::names::object_name("rm", alloc, "jupyter");
        self.ports.lock().unwrap().remove(&name);
        let mut o = self.objects.lock().unwrap();
        for kind in ["service", "listener", "route"] {
            o.remove(&format!("{kind}/{name}"));
        }
    }
}

impl Cluster for MemCluster {
    fn view(&self) -> Arc<GatewayView> {
        let ports = self.ports.lock().unwrap().clone();
        let owned: BTreeSet<String> = ports.keys().cloned().collect();
        let mut listeners = owned.clone();
        listeners.insert("placeholder".into());
        Arc::new(GatewayView {
            present: true,
            foreign_ports: self.foreign.lock().unwrap().clone(),
            listeners,
            owned_ports: ports.values().copied().collect(),
            owned_port_of: ports,
            owned,
        })
    }

    async fn expose(&self, e: &Exposure<'_>) -> Result<(), ClusterError> {
        tokio::task::yield_now().await;
        let held = {
            let mut p = self.pause.lock().unwrap();
            match p.take() {
                Some((alloc, pause)) if alloc == e.allocation_id => Some(pause),
                other => {
                    *p = other;
                    None
                }
            }
        };
        if let Some((paused, resume)) = held {
            paused.notify_one();
            resume.notified().await;
        }
        let name = itg::names::object_name(e.rm, e.allocation_id, &e.binding.name);
        {
            let mut ports = self.ports.lock().unwrap();
            let port = e.binding.gateway_port;
            if let Some((other, _)) = ports.iter().find(|(n, p)| **p == port && **n != name) {
                return Err(ClusterError::Capacity(format!(
                    "{name} and {other} on port {port}"
                )));
            }
            ports.insert(name.clone(), port);
        }
        let mut o = self.objects.lock().unwrap();
        for kind in ["service", "listener", "route"] {
            o.insert(format!("{kind}/{name}"));
        }
        Ok(())
    }

    async fn withdraw(
        &self,
        rm: &str,
        alloc: &str,
        _ns: Option<&str>,
        b: &Binding,
    ) -> Result<(), ClusterError> {
        tokio::task::yield_now().await;
        let name = itg::names::object_name(rm, alloc, &b.name);
        self.ports.lock().unwrap().remove(&name);
        let mut o = self.objects.lock().unwrap();
        for kind in ["route", "listener", "service"] {
            o.remove(&format!("{kind}/{name}"));
        }
        Ok(())
    }

    fn controller_verdict(&self, e: &[Exposure<'_>]) -> Verdict {
        let conflicted = self.conflicted_ports.lock().unwrap();
        for x in e {
            if conflicted.contains(&x.binding.gateway_port) {
                return Verdict::Conflicted {
                    listener: itg::names::object_name(x.rm, x.allocation_id, &x.binding.name),
                    reason: "PortConflict".into(),
                    message: "another listener has the port".into(),
                };
            }
        }
        self.verdict.lock().unwrap().clone()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.waiting.notify_one();
        self.tick.subscribe()
    }
}

impl Inventory for MemCluster {
    async fn check(&self) -> Result<(), String> {
        Ok(())
    }
    async fn class_status(&self) -> ClassStatus {
        ClassStatus::Unknown {
            class: "mem".into(),
            why: "in memory".into(),
        }
    }
    fn describe(&self) -> String {
        "in memory".into()
    }
    async fn owned_objects(
        &self,
        _namespaces: Option<&[String]>,
    ) -> Result<Vec<OwnedObject>, ClusterError> {
        let o = self.objects.lock().unwrap();
        Ok(o.iter()
            .filter_map(|x| {
                let (kind, name) = x.split_once('/')?;
                let kind = match kind {
                    "service" => ObjectKind::Service,
                    "route" => ObjectKind::TcpRoute,
                    _ => return None,
                };
                Some(OwnedObject {
                    kind,
                    namespace: "team-a".into(),
                    name: name.into(),
                    created: 0,
                    uid: None,
                    resource_version: None,
                })
            })
            .collect())
    }
    async fn delete_object(&self, o: &OwnedObject) -> Result<(), ClusterError> {
        let kind = match o.kind {
            ObjectKind::Service => "service",
            _ => "route",
        };
        self.objects
            .lock()
            .unwrap()
            .remove(&format!("{kind}/{}", o.name));
        Ok(())
    }
    async fn remove_owned_listener(&self, name: &str) -> Result<(), ClusterError> {
        self.ports.lock().unwrap().remove(name);
        self.objects
            .lock()
            .unwrap()
            .remove(&format!("listener/{name}"));
        Ok(())
    }
}

/// The data plane of every Gateway: it refuses connections to the `(host, port)`s in `refused` (a host
/// of `*` refuses that port everywhere). `hold`, when set, holds the next connection until resumed.
#[derive(Clone, Default)]
pub struct MemDataPlane {
    pub refused: Arc<Mutex<BTreeSet<(String, u16)>>>,
    pub hold: Arc<Mutex<Option<Pause>>>,
    /// Refuse, from now on, the first port a connection is tried to (a port envoy could not bind).
    pub refuse_first: Arc<std::sync::atomic::AtomicBool>,
}

impl MemDataPlane {
    pub fn refuse(&self, host: &str, port: u16) {
        self.refused.lock().unwrap().insert((host.into(), port));
    }
}

impl DataPlane for MemDataPlane {
    fn connect<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        _timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reach> + Send + 'a>> {
        Box::pin(async move {
            let held = self.hold.lock().unwrap().take();
            if let Some((reached, resume)) = held {
                reached.notify_one();
                resume.notified().await;
            }
            if self
                .refuse_first
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                self.refuse(host, port);
            }
            let r = self.refused.lock().unwrap();
            if r.contains(&(host.to_owned(), port)) || r.contains(&("*".to_owned(), port)) {
                Reach::Refused
            } else {
                Reach::Accepted
            }
        })
    }
}

/// The address of the resource manager's own Gateway; the pool's second is `GW1_IP`.
pub const GW0_IP: &str = "203.0.113.10";
pub const GW1_IP: &str = "203.0.113.11";

/// A handler of resource manager `rm` on ports 40000-`last`, with one cluster per Gateway given (a pool
/// when two), `probe` as its `data_plane_probe` settings and `worker` as its worker settings.
pub fn handler(
    store: &MemStore,
    clusters: &[MemCluster],
    plane: &MemDataPlane,
    last: u16,
    probe: &str,
    worker: &str,
) -> Handler<MemStore, MemCluster> {
    let pool = if clusters.len() > 1 {
        format!(
            "    gateway_pool: [{{gateway_name: itg-b, gateway_namespace: gw, gateway_ip: {GW1_IP}}}]\n"
        )
    } else {
        String::new()
    };
    let cfg = Config::parse(
        &format!(
            "nats: {{url: 'nats://127.0.0.1:4222'}}\nworker: {{{worker}}}\nresource_managers:\n  - name: rm\n    data_plane_probe: {{{probe}}}\n    internal_task_gateway: {{gateway_name: itg, gateway_namespace: gw, gateway_ip: {GW0_IP}, gateway_port_range_start: 40000, gateway_port_range_end: {last}}}\n{pool}"
        ),
        "test",
    )
    .unwrap();
    Handler::with_pool(
        RmContext::new(&cfg.resource_managers[0]),
        store.clone(),
        clusters.to_vec(),
        cfg.worker.clone(),
    )
    .with_data_plane(Arc::new(plane.clone()))
}

pub fn started(alloc: &str) -> Vec<u8> {
    let sel = BTreeMap::from([("app".to_owned(), "nb".to_owned())]);
    serde_json::to_vec(&itg::ctl::started_payload(
        Uuid::new_v4(),
        alloc,
        "team-a",
        &sel,
        &[("jupyter".into(), 8888)],
    ))
    .unwrap()
}

pub fn ended(alloc: &str) -> Vec<u8> {
    serde_json::to_vec(&itg::ctl::ended_payload(Uuid::new_v4(), alloc)).unwrap()
}

/// `ready`, `failed`, `removed`, `retry`, `defer` or `done`.
pub fn kind_of(h: &Handled) -> &'static str {
    match h {
        Handled::Answer { reply, .. } => reply.kind().as_str(),
        Handled::Done => "done",
        Handled::Retry { .. } => "retry",
        Handled::Defer { .. } => "defer",
    }
}

/// The addresses of a `ready`, `ip:port` each.
pub fn addresses(h: &Handled) -> Vec<String> {
    let Handled::Answer { reply, .. } = h else {
        panic!("not an answer: {h:?}")
    };
    let body: serde_json::Value = serde_json::from_slice(&reply.to_json()).unwrap();
    body["proxies"]
        .as_array()
        .unwrap_or_else(|| panic!("no proxies in {body}"))
        .iter()
        .map(|p| p["address"].as_str().unwrap().to_owned())
        .collect()
}

/// The port of an `ip:port` address.
pub fn port(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// Serves one delivery and its redeliveries, as the consumer would, until it is answered.
pub async fn serve(h: &Handler<MemStore, MemCluster>, kind: EventKind, body: &[u8]) -> Handled {
    for _ in 0..50 {
        match h.handle(kind, body).await {
            Handled::Retry { .. } => tokio::time::sleep(Duration::from_millis(20)).await,
            done => return done,
        }
    }
    panic!("{kind:?} still retried after 50 deliveries");
}
