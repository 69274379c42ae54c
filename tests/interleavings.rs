//! Interleavings the real servers make hard to hit on purpose: an `ended` served while a `started` for the
//! same allocation is half-way through applying its objects, and a controller whose verdict changes while a
//! started waits for it. The handler is generic over its store and
//! cluster, so these tests drive it with in-memory ones that pause at a chosen step. They test the
//! handler's decisions, not NATS or Kubernetes (the integration tests do that).
//!
//! The runtime is multi-threaded and every store and cluster call yields (or sleeps a little) before it
//! acts, so another handler runs between a read and the compare-and-set that follows it: the store counts
//! the refused compare-and-sets, and the concurrent tests assert that some happened.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use itg::answers::Handled;
use itg::cluster::{Cluster, ClusterError, Exposure, GatewayView};
use itg::config::Config;
use itg::contract::EventKind;
use itg::probe::{DataPlane, Reach};
use itg::readiness::Verdict;
use itg::resource_manager::RmContext;
use itg::state::Binding;
use itg::store::{Entry, Outcome, Store, StoreError};
use itg::worker::Handler;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

/// The bucket's last revision, and each key's value and revision.
type Bucket = (u64, BTreeMap<String, (Bytes, u64)>);
/// A pause point: notified when reached, waits to be resumed.
type Pause = Option<(Arc<Notify>, Arc<Notify>)>;

/// Lets other tasks run: mostly a yield, sometimes a sleep, so a read and the write after it are apart.
async fn interleave() {
    if rand::random_ratio(1, 8) {
        tokio::time::sleep(Duration::from_micros(rand::random_range(50..500))).await;
    } else {
        tokio::task::yield_now().await;
    }
}

/// Compare-and-set over a map, with one revision counter for the whole bucket as JetStream has. Every call
/// yields first; `conflicts` counts the writes it refused because the key moved after the writer read it:
/// an update or delete at a stale revision, or a record created since the writer found none. (A port key's
/// create is tried without a read, and a duplicate finds it held by its own allocation: no race.)
#[derive(Clone, Default)]
struct MemStore {
    inner: Arc<Mutex<Bucket>>,
    conflicts: Arc<AtomicUsize>,
}

impl MemStore {
    fn conflicts(&self) -> usize {
        self.conflicts.load(Ordering::SeqCst)
    }

    fn refused(&self) -> Result<Outcome, StoreError> {
        self.conflicts.fetch_add(1, Ordering::SeqCst);
        Ok(Outcome::Conflict)
    }
}

impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        interleave().await;
        let g = self.inner.lock().unwrap();
        Ok(g.1.get(key).map(|(v, r)| Entry {
            value: v.clone(),
            revision: *r,
        }))
    }
    async fn create(&self, key: &str, value: Bytes) -> Result<Outcome, StoreError> {
        interleave().await;
        let mut g = self.inner.lock().unwrap();
        if g.1.contains_key(key) {
            if key.starts_with("alloc.") {
                return self.refused();
            }
            return Ok(Outcome::Conflict);
        }
        g.0 += 1;
        let rev = g.0;
        g.1.insert(key.to_owned(), (value, rev));
        Ok(Outcome::Written(rev))
    }
    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<Outcome, StoreError> {
        interleave().await;
        let mut g = self.inner.lock().unwrap();
        if g.1.get(key).map(|e| e.1) != Some(revision) {
            return self.refused();
        }
        g.0 += 1;
        let rev = g.0;
        g.1.insert(key.to_owned(), (value, rev));
        Ok(Outcome::Written(rev))
    }
    async fn delete(&self, key: &str, revision: u64) -> Result<Outcome, StoreError> {
        interleave().await;
        let mut g = self.inner.lock().unwrap();
        if g.1.get(key).map(|e| e.1) != Some(revision) {
            return self.refused();
        }
        g.1.remove(key);
        Ok(Outcome::Written(revision))
    }
    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        interleave().await;
        Ok(self
            .inner
            .lock()
            .unwrap()
            .1
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
}

/// Objects as a set of `kind/name`, a pause before the route of the first exposure, and the controller's
/// verdict (reachable unless a test sets it), with a tick for each change as the watches give. Like the
/// Gateway's rule that listener ports are unique, a listener on a port another listener has is refused,
/// and noted in `shared`.
#[derive(Clone)]
struct MemCluster {
    objects: Arc<Mutex<BTreeSet<String>>>,
    ports: Arc<Mutex<BTreeMap<String, u16>>>,
    shared: Arc<Mutex<Vec<String>>>,
    pause: Arc<Mutex<Pause>>,
    verdict: Arc<Mutex<Verdict>>,
    tick: Arc<watch::Sender<u64>>,
}

impl Default for MemCluster {
    fn default() -> Self {
        MemCluster {
            objects: Arc::default(),
            ports: Arc::default(),
            shared: Arc::default(),
            pause: Arc::default(),
            verdict: Arc::new(Mutex::new(Verdict::Reachable)),
            tick: Arc::new(watch::channel(0).0),
        }
    }
}

impl MemCluster {
    /// The controller changes its mind; the watches report it.
    fn set_verdict(&self, v: Verdict) {
        *self.verdict.lock().unwrap() = v;
        self.tick.send_modify(|n| *n += 1);
    }

    fn listeners(&self) -> BTreeSet<String> {
        self.objects
            .lock()
            .unwrap()
            .iter()
            .filter_map(|o| o.strip_prefix("listener/").map(str::to_owned))
            .collect()
    }
}

impl Cluster for MemCluster {
    fn view(&self) -> std::sync::Arc<GatewayView> {
        let mut listeners = self.listeners();
        listeners.insert("placeholder".into());
        std::sync::Arc::new(GatewayView {
            present: true,
            foreign_ports: BTreeSet::from([39999]),
            listeners,
            ..Default::default()
        })
    }

    async fn expose(&self, e: &Exposure<'_>) -> Result<(), ClusterError> {
        interleave().await;
        let name = itg::names::object_name(e.rm, e.allocation_id, &e.binding.name);
        {
            let mut ports = self.ports.lock().unwrap();
            let port = e.binding.gateway_port;
            if let Some((other, _)) = ports.iter().find(|(n, p)| **p == port && **n != name) {
                let clash = format!("{name} and {other} on port {port}");
                self.shared.lock().unwrap().push(clash.clone());
                return Err(ClusterError::Capacity(clash));
            }
            ports.insert(name.clone(), port);
        }
        self.objects
            .lock()
            .unwrap()
            .insert(format!("service/{name}"));
        self.objects
            .lock()
            .unwrap()
            .insert(format!("listener/{name}"));
        let pause = self.pause.lock().unwrap().take();
        if let Some((paused, resume)) = pause {
            paused.notify_one();
            resume.notified().await;
        }
        self.objects.lock().unwrap().insert(format!("route/{name}"));
        Ok(())
    }

    async fn withdraw(
        &self,
        rm: &str,
        alloc: &str,
        _ns: Option<&str>,
        b: &Binding,
    ) -> Result<(), ClusterError> {
        interleave().await;
        let name = itg::names::object_name(rm, alloc, &b.name);
        self.ports.lock().unwrap().remove(&name);
        let mut o = self.objects.lock().unwrap();
        for kind in ["route", "listener", "service"] {
            o.remove(&format!("{kind}/{name}"));
        }
        Ok(())
    }

    fn controller_verdict(&self, _e: &[Exposure<'_>]) -> Verdict {
        self.verdict.lock().unwrap().clone()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
    }
}

/// The data plane: every port accepts connections except those a test makes it refuse, as an envoy that
/// could not bind them (or is down) does.
#[derive(Clone, Default)]
struct MemDataPlane {
    refused: Arc<Mutex<BTreeSet<u16>>>,
    /// Ports that give no answer within the connect timeout.
    silent: Arc<Mutex<BTreeSet<u16>>>,
}

impl DataPlane for MemDataPlane {
    fn connect<'a>(
        &'a self,
        _host: &'a str,
        port: u16,
        _timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reach> + Send + 'a>> {
        // Answers at once: the tests here interleave at the store and the cluster, and a yield more per pass
        // would only widen the window of the stray apply that `racing_duplicates_...` counts as a clash.
        Box::pin(async move {
            if self.silent.lock().unwrap().contains(&port) {
                return Reach::Silent(format!("no answer from {port}"));
            }
            if self.refused.lock().unwrap().contains(&port) {
                Reach::Refused
            } else {
                Reach::Accepted
            }
        })
    }
}

fn handler(store: &MemStore, cluster: &MemCluster) -> Handler<MemStore, MemCluster> {
    handler_probing(store, cluster, &MemDataPlane::default(), "")
}

/// A handler whose data plane probe goes to `plane`, with `probe` as its `data_plane_probe` settings.
fn handler_probing(
    store: &MemStore,
    cluster: &MemCluster,
    plane: &MemDataPlane,
    probe: &str,
) -> Handler<MemStore, MemCluster> {
    let cfg = Config::parse(
        &format!("nats: {{url: 'nats://127.0.0.1:4222'}}\nresource_managers:\n  - name: rm\n    data_plane_probe: {{{probe}}}\n    internal_task_gateway: {{gateway_name: itg, gateway_namespace: gw, gateway_ip: 203.0.113.10, gateway_port_range_start: 40000, gateway_port_range_end: 40009}}\n"),
        "test",
    )
    .unwrap();
    Handler::new(
        RmContext::new(&cfg.resource_managers[0]),
        store.clone(),
        cluster.clone(),
        cfg.worker.clone(),
    )
    .with_data_plane(Arc::new(plane.clone()))
}

fn started(alloc: &str) -> Vec<u8> {
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

fn ended(alloc: &str) -> Vec<u8> {
    serde_json::to_vec(&itg::ctl::ended_payload(Uuid::new_v4(), alloc)).unwrap()
}

fn kind_of(h: &Handled) -> &'static str {
    match h {
        Handled::Answer { reply, .. } => reply.kind().as_str(),
        Handled::Done => "done",
        Handled::Retry { .. } => "retry",
        Handled::Defer { .. } => "defer",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ended_served_while_the_started_applies_its_objects_leaves_nothing_behind() {
    let (store, cluster) = (MemStore::default(), MemCluster::default());
    let (paused, resume) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    *cluster.pause.lock().unwrap() = Some((paused.clone(), resume.clone()));
    let h = handler(&store, &cluster);
    let a = "6f1c2d3e.1";
    let first = {
        let (h, body) = (h.clone(), started(a));
        tokio::spawn(async move { h.handle(EventKind::Started, &body).await })
    };
    paused.notified().await;
    // The started holds a Service and a listener and is about to apply the route: the ended runs to the end.
    let end = h.handle(EventKind::Ended, &ended(a)).await;
    assert_eq!(kind_of(&end), "removed");
    resume.notify_one();
    let start = first.await.unwrap();
    assert_eq!(
        kind_of(&start),
        "failed",
        "the started must not report ready for an ended allocation"
    );
    assert!(
        cluster.objects.lock().unwrap().is_empty(),
        "left behind: {:?}",
        cluster.objects.lock().unwrap()
    );
    let claims = store.keys("port.").await.unwrap();
    assert!(claims.is_empty(), "ports still claimed: {claims:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_started_racing_an_ended_on_a_ready_allocation_leaves_nothing_behind() {
    let (store, cluster) = (MemStore::default(), MemCluster::default());
    let h = handler(&store, &cluster);
    let a = "6f1c2d3e.2";
    assert_eq!(
        kind_of(&h.handle(EventKind::Started, &started(a)).await),
        "ready"
    );
    let (paused, resume) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    *cluster.pause.lock().unwrap() = Some((paused.clone(), resume.clone()));
    let dup = {
        let (h, body) = (h.clone(), started(a));
        tokio::spawn(async move { h.handle(EventKind::Started, &body).await })
    };
    paused.notified().await;
    assert_eq!(
        kind_of(&h.handle(EventKind::Ended, &ended(a)).await),
        "removed"
    );
    resume.notify_one();
    assert_eq!(kind_of(&dup.await.unwrap()), "failed");
    assert!(
        cluster.objects.lock().unwrap().is_empty(),
        "left behind: {:?}",
        cluster.objects.lock().unwrap()
    );
    assert!(store.keys("port.").await.unwrap().is_empty());
}

/// Serves one delivery and its redeliveries, as the consumer would, until it is answered.
async fn serve(h: &Handler<MemStore, MemCluster>, kind: EventKind, body: &[u8]) -> Handled {
    for _ in 0..50 {
        match h.handle(kind, body).await {
            Handled::Retry { .. } => tokio::task::yield_now().await,
            done => return done,
        }
    }
    panic!("{kind:?} still retried after 50 deliveries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_of_one_started_agree_on_the_ports() {
    let (store, cluster) = (MemStore::default(), MemCluster::default());
    let h = handler(&store, &cluster);
    for round in 0..20 {
        let a = format!("6f1c2d3e.3.{round}");
        let runs: Vec<_> = (0..8)
            .map(|_| {
                let (h, body) = (h.clone(), started(&a));
                tokio::spawn(async move { serve(&h, EventKind::Started, &body).await })
            })
            .collect();
        let mut ports = BTreeSet::new();
        for r in runs {
            match r.await.unwrap() {
                Handled::Answer {
                    reply: itg::contract::Reply::Ready(r),
                    ..
                } => {
                    ports.insert(r.proxies[0].gateway_port);
                }
                other => panic!("expected ready, got {other:?}"),
            }
        }
        assert_eq!(
            ports.len(),
            1,
            "every duplicate reports the same port: {ports:?}"
        );
        assert_eq!(
            store.keys("port.").await.unwrap().len(),
            1,
            "exactly one port claimed"
        );
        assert_eq!(cluster.listeners().len(), 1);
        assert_eq!(
            kind_of(&serve(&h, EventKind::Ended, &ended(&a)).await),
            "removed"
        );
        assert!(cluster.objects.lock().unwrap().is_empty());
    }
    let conflicts = store.conflicts();
    println!(
        "interleavings: 20 rounds of 8 concurrent duplicates: {conflicts} compare-and-sets refused"
    );
    assert!(
        conflicts > 0,
        "no compare-and-set was ever refused: the duplicates did not race"
    );
}

/// Duplicated starteds and endeds of several allocations, all at once on a 10-port range: each allocation
/// gets one set of ports whatever the order, two allocations never hold a port together, and once every
/// ended is answered nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_duplicates_of_many_allocations_share_no_port_and_leave_nothing() {
    let (store, cluster) = (MemStore::default(), MemCluster::default());
    let h = handler(&store, &cluster);
    let allocs: Vec<String> = (0..6).map(|i| format!("6f1c2d3e.4.{i}")).collect();
    let mut runs = Vec::new();
    for a in &allocs {
        for kind in [
            EventKind::Started,
            EventKind::Started,
            EventKind::Started,
            EventKind::Ended,
            EventKind::Ended,
        ] {
            let body = match kind {
                EventKind::Started => started(a),
                EventKind::Ended => ended(a),
            };
            let h = h.clone();
            let a = a.clone();
            runs.push(tokio::spawn(
                async move { (a, serve(&h, kind, &body).await) },
            ));
        }
    }
    let mut ports: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for r in runs {
        let (a, done) = r.await.unwrap();
        match done {
            Handled::Answer {
                reply: itg::contract::Reply::Ready(r),
                ..
            } => {
                ports
                    .entry(a)
                    .or_default()
                    .insert(r.proxies[0].gateway_port);
            }
            other => assert!(
                matches!(kind_of(&other), "removed" | "failed"),
                "{a}: {other:?}"
            ),
        }
    }
    for (a, p) in &ports {
        assert_eq!(p.len(), 1, "{a} was ready on several ports: {p:?}");
    }
    assert!(
        cluster.shared.lock().unwrap().is_empty(),
        "two listeners wanted one port: {:?}",
        cluster.shared.lock().unwrap()
    );
    assert!(
        cluster.objects.lock().unwrap().is_empty(),
        "left behind: {:?}",
        cluster.objects.lock().unwrap()
    );
    assert!(store.keys("port.").await.unwrap().is_empty());
    let conflicts = store.conflicts();
    println!(
        "interleavings: 6 allocations x (3 started + 2 ended) at once: {} were ready, {conflicts} compare-and-sets refused",
        ports.len()
    );
    assert!(conflicts > 0, "no compare-and-set was ever refused");
}

async fn phase(store: &MemStore, alloc: &str) -> String {
    let e = store
        .get(&itg::names::allocation_key("rm", alloc))
        .await
        .unwrap()
        .expect("a record");
    let rec: serde_json::Value = serde_json::from_slice(&e.value).unwrap();
    rec["phase"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn ready_waits_for_the_controller_and_a_redelivery_waits_again_instead_of_answering_from_memory()
 {
    let (store, cluster) = (MemStore::default(), MemCluster::default());
    let h = handler(&store, &cluster);
    let a = "6f1c2d3e.4";
    cluster.set_verdict(Verdict::Pending("listener not programmed yet".into()));
    let first = h.handle(EventKind::Started, &started(a)).await;
    assert_eq!(kind_of(&first), "retry", "{first:?}");
    assert_eq!(phase(&store, a).await, "exposing");
    assert_eq!(
        cluster.listeners().len(),
        1,
        "the objects are applied meanwhile"
    );
    // The redelivery waits on the watches and answers as soon as the controller agrees.
    let again = {
        let (h, body) = (h.clone(), started(a));
        tokio::spawn(async move { h.handle(EventKind::Started, &body).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !again.is_finished(),
        "answered before the controller agreed"
    );
    let agreed = std::time::Instant::now();
    cluster.set_verdict(Verdict::Reachable);
    let ready = again.await.unwrap();
    println!(
        "answered {:.0?} after the controller agreed",
        agreed.elapsed()
    );
    assert_eq!(kind_of(&ready), "ready");
    assert_eq!(phase(&store, a).await, "ready");
    // A ready allocation asked again waits again; it is never torn down for it.
    cluster.set_verdict(Verdict::Pending("route status lost".into()));
    let dup = h.handle(EventKind::Started, &started(a)).await;
    assert_eq!(kind_of(&dup), "retry");
    assert_eq!(phase(&store, a).await, "ready");
    assert_eq!(cluster.listeners().len(), 1);
}

#[tokio::test]
async fn a_refusal_is_answered_only_once_it_stands_and_then_withdraws_everything() {
    let (store, cluster) = (MemStore::default(), MemCluster::default());
    let h = handler(&store, &cluster);
    let refused = Verdict::Refused {
        reason: "NoMatchingParent".into(),
        message: "the route of listener x: Accepted=False (no listener matches)".into(),
    };
    // A refusal the controller corrects within moments is not answered.
    cluster.set_verdict(refused.clone());
    let a = "6f1c2d3e.5";
    let run = {
        let (h, body) = (h.clone(), started(a));
        tokio::spawn(async move { h.handle(EventKind::Started, &body).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    cluster.set_verdict(Verdict::Reachable);
    assert_eq!(kind_of(&run.await.unwrap()), "ready");
    // One that stands is answered with the controller's reason, and nothing is kept.
    cluster.set_verdict(refused);
    let b = "6f1c2d3e.6";
    let failed = h.handle(EventKind::Started, &started(b)).await;
    let Handled::Answer {
        reply: itg::contract::Reply::Failed(f),
        ..
    } = failed
    else {
        panic!("expected failed, got {failed:?}")
    };
    assert_eq!(f.reason, itg::contract::FailureReason::GatewayRejected);
    assert!(!f.retryable);
    assert!(f.message.contains("NoMatchingParent"), "{}", f.message);
    assert_eq!(phase(&store, b).await, "failed");
    assert_eq!(
        cluster.listeners().len(),
        1,
        "only the first allocation's listener"
    );
    let claims = store.keys("port.").await.unwrap();
    assert_eq!(
        claims.len(),
        1,
        "only the first allocation's port: {claims:?}"
    );
}

#[tokio::test]
async fn a_started_given_up_on_for_a_ready_allocation_keeps_it_ready_with_its_listener() {
    let (store, cluster) = (MemStore::default(), MemCluster::default());
    let h = handler(&store, &cluster);
    let a = "6f1c2d3e.7";
    let Handled::Answer {
        reply: itg::contract::Reply::Ready(first),
        ..
    } = h.handle(EventKind::Started, &started(a)).await
    else {
        panic!("not ready")
    };
    // A duplicate arrives while the controller's status is stale: each delivery is a retry, and the last
    // one is given up on.
    cluster.set_verdict(Verdict::Pending("status not seen since the restart".into()));
    let dup = started(a);
    assert_eq!(kind_of(&h.handle(EventKind::Started, &dup).await), "retry");
    let answer = h
        .given_up(
            &dup,
            "waiting for the Gateway's controller",
            7,
            itg::worker::GaveUp::Unserved,
        )
        .await
        .expect("an answer for a readable started");
    let Handled::Answer {
        reply: itg::contract::Reply::Ready(again),
        ..
    } = answer
    else {
        panic!("a live allocation was answered {answer:?}, not ready")
    };
    assert_eq!(again.proxies, first.proxies, "the same addresses");
    assert_eq!(phase(&store, a).await, "ready");
    assert_eq!(cluster.listeners().len(), 1, "the listener stays");
    assert_eq!(
        store.keys("port.").await.unwrap().len(),
        1,
        "the port stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_port_given_back_while_a_racing_pass_applies_it_is_withdrawn_by_the_ended() {
    let (store, cluster) = (MemStore::default(), MemCluster::default());
    let h = handler(&store, &cluster);
    // Nine of the ten ports are held, so the allocation gets the last one and nothing else is free.
    for i in 0..9 {
        let other = format!("0a0b0c0d.{i}");
        assert_eq!(
            kind_of(&h.handle(EventKind::Started, &started(&other)).await),
            "ready"
        );
    }
    let x = "6f1c2d3e.8";
    let listener = itg::names::object_name("rm", x, "jupyter");
    let (paused, resume) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    *cluster.pause.lock().unwrap() = Some((paused.clone(), resume.clone()));
    let late = {
        let (h, body) = (h.clone(), started(x));
        tokio::spawn(async move { h.handle(EventKind::Started, &body).await })
    };
    // The first pass holds the Service and the listener and is about to apply the route.
    paused.notified().await;
    cluster.set_verdict(Verdict::Conflicted {
        listener: listener.clone(),
        reason: "PortConflict".into(),
        message: "another listener has the port".into(),
    });
    // A second delivery of the same started sees the conflict and gives the port back.
    let second = h.handle(EventKind::Started, &started(x)).await;
    assert_eq!(kind_of(&second), "retry", "{second:?}");
    cluster.set_verdict(Verdict::Reachable);
    // The first pass's apply lands after the give-back; it then finds no free port.
    resume.notify_one();
    assert_eq!(kind_of(&late.await.unwrap()), "retry");
    assert_eq!(
        kind_of(&h.handle(EventKind::Ended, &ended(x)).await),
        "removed"
    );
    let left: Vec<String> = cluster
        .objects
        .lock()
        .unwrap()
        .iter()
        .filter(|o| o.ends_with(&format!("/{listener}")))
        .cloned()
        .collect();
    assert!(
        left.is_empty(),
        "left behind of the ended allocation: {left:?}"
    );
    let key = itg::names::allocation_key("rm", x);
    for k in store.keys("port.").await.unwrap() {
        let owner = store.get(&k).await.unwrap().unwrap().value;
        assert!(
            !String::from_utf8_lossy(&owner).contains(&key),
            "port {k} still claimed by the ended allocation"
        );
    }
}

/// The ports of the allocation's `ready`.
fn ready_ports(h: &Handled) -> Vec<u16> {
    let Handled::Answer { reply, .. } = h else {
        panic!("not an answer: {h:?}")
    };
    let body: serde_json::Value = serde_json::from_slice(&reply.to_json()).unwrap();
    body["proxies"]
        .as_array()
        .unwrap_or_else(|| panic!("no proxies in {body}"))
        .iter()
        .map(|p| u16::try_from(p["gateway_port"].as_u64().unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_port_the_data_plane_refuses_is_given_back_and_the_allocation_is_ready_on_one_it_serves()
{
    let (store, cluster, plane) = (
        MemStore::default(),
        MemCluster::default(),
        MemDataPlane::default(),
    );
    // The controller says every listener is programmed; the data plane serves only 40007.
    plane
        .refused
        .lock()
        .unwrap()
        .extend((40000..=40009).filter(|p| *p != 40007));
    let h = handler_probing(&store, &cluster, &plane, "grace: 100ms");
    let a = "6f1c2d3e.9";
    let ready = serve(&h, EventKind::Started, &started(a)).await;
    assert_eq!(kind_of(&ready), "ready", "{ready:?}");
    assert_eq!(ready_ports(&ready), vec![40007], "{ready:?}");
    let name = itg::names::object_name("rm", a, "jupyter");
    assert_eq!(
        *cluster.objects.lock().unwrap(),
        BTreeSet::from([
            format!("listener/{name}"),
            format!("route/{name}"),
            format!("service/{name}")
        ]),
    );
    assert_eq!(cluster.ports.lock().unwrap().get(&name), Some(&40007));
    let claims = store.keys("port.").await.unwrap();
    assert_eq!(
        claims.len(),
        1,
        "only the served port stays claimed: {claims:?}"
    );
    // Its ended still finds everything, the ports it gave back included.
    assert_eq!(
        kind_of(&serve(&h, EventKind::Ended, &ended(a)).await),
        "removed"
    );
    assert!(cluster.objects.lock().unwrap().is_empty());
    assert!(store.keys("port.").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_data_plane_that_serves_no_port_fails_the_started_naming_it_and_leaves_nothing() {
    let (store, cluster, plane) = (
        MemStore::default(),
        MemCluster::default(),
        MemDataPlane::default(),
    );
    // Envoy is down: the controller still reports everything programmed.
    plane.refused.lock().unwrap().extend(40000..=40009);
    let h = handler_probing(&store, &cluster, &plane, "grace: 100ms, deadline: 1s");
    let a = "6f1c2d3e.10";
    let answer = loop {
        match h.handle(EventKind::Started, &started(a)).await {
            Handled::Retry { why } => {
                assert!(why.contains("data plane"), "{why}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            done => break done,
        }
    };
    assert_eq!(kind_of(&answer), "failed", "{answer:?}");
    let Handled::Answer { reply, .. } = &answer else {
        unreachable!()
    };
    let body: serde_json::Value = serde_json::from_slice(&reply.to_json()).unwrap();
    assert_eq!(body["reason"], "timeout", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("data plane") && message.contains("203.0.113.10:"),
        "{message}"
    );
    assert!(
        cluster.objects.lock().unwrap().is_empty(),
        "left behind: {:?}",
        cluster.objects.lock().unwrap()
    );
    assert!(store.keys("port.").await.unwrap().is_empty());
}

#[tokio::test]
async fn one_silent_port_does_not_stop_the_probing_of_its_gateway() {
    let (store, cluster, plane) = (
        MemStore::default(),
        MemCluster::default(),
        MemDataPlane::default(),
    );
    // Every port is silent for the first allocation (a firewall dropping them, say): its ready rests on
    // the controller's status.
    plane.silent.lock().unwrap().extend(40000..=40009);
    let h = handler_probing(&store, &cluster, &plane, "grace: 100ms, deadline: 1s");
    let a = "6f1c2d3e.11";
    let first = serve(&h, EventKind::Started, &started(a)).await;
    assert_eq!(kind_of(&first), "ready", "{first:?}");
    // Then envoy answers again, but refuses every port: the next allocation must be probed, not answered
    // on status alone because one port was silent a moment ago.
    plane.silent.lock().unwrap().clear();
    plane.refused.lock().unwrap().extend(40000..=40009);
    let b = "6f1c2d3e.12";
    let answer = loop {
        match h.handle(EventKind::Started, &started(b)).await {
            Handled::Retry { why } => {
                assert!(why.contains("data plane"), "{why}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            done => break done,
        }
    };
    println!("after one silent port, an allocation on a refusing data plane: {answer:?}");
    assert_eq!(kind_of(&answer), "failed", "{answer:?}");
}

/// A record a newer worker wrote (a higher record version, a phase unknown here) is neither written nor
/// answered: every event of it is deferred to a worker that reads it, and nothing is applied.
#[tokio::test]
async fn a_record_of_a_newer_version_is_deferred_and_left_as_it_is() {
    let (store, cluster) = (MemStore::default(), MemCluster::default());
    let h = handler(&store, &cluster);
    // A phase this build reads (so the record would parse and be acted on) and one it does not.
    for (a, phase) in [("6f1c2d3e.20", "ready"), ("6f1c2d3e.21", "draining")] {
        let key = itg::names::allocation_key("rm", a);
        let newer = serde_json::json!({
            "version": itg::state::RECORD_VERSION + 1, "allocation_id": a, "resource_manager": "rm",
            "phase": phase,
            "spec": {"namespace": "team-a", "pod_selector": {"app": "nb"}, "proxy_ports": [{"name": "jupyter", "port": 8888}]},
            "ports": [{"name": "jupyter", "container_port": 8888, "gateway_port": 40001}],
        });
        let bytes = Bytes::from(serde_json::to_vec(&newer).unwrap());
        store.create(&key, bytes.clone()).await.unwrap();
        let rev = store.get(&key).await.unwrap().unwrap().revision;
        for (kind, body) in [
            (EventKind::Started, started(a)),
            (EventKind::Ended, ended(a)),
        ] {
            let handled = h.handle(kind, &body).await;
            assert!(
                matches!(&handled, Handled::Defer { why } if why.contains("newer worker")),
                "{phase} {kind:?}: {handled:?}"
            );
        }
        let e = store.get(&key).await.unwrap().unwrap();
        assert_eq!(
            (e.value, e.revision),
            (bytes, rev),
            "{phase}: the record was written"
        );
    }
    assert!(
        cluster.objects.lock().unwrap().is_empty(),
        "objects were applied"
    );
}
