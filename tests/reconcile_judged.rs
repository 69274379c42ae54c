//! The reconciler's removals against what changes between its judgement and its act. A listener's removal
//! has no precondition of its own, and an object's (the uid and resourceVersion it was listed with) does not
//! see an identical re-apply, which keeps the resourceVersion: a record written back in between (a replay
//! after the bucket was lost writes its record, then applies the same objects) must not leave its
//! allocation without them. In-memory seams; the race is placed by a hook, so every run prints the same.

mod mem;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use itg::cluster::{
    ClassStatus, Cluster, ClusterError, Exposure, GatewayView, Inventory, OwnedObject,
};
use itg::config::Config;
use itg::contract::EventKind;
use itg::readiness::Verdict;
use itg::reconciler::Reconciler;
use itg::resource_manager::RmContext;
use itg::state::Binding;
use itg::store::Store;
use itg::worker::Handler;
use mem::*;

/// The Gateway, with what another worker does between the pass's judgement and its first removal: the
/// records it writes back. Its apply of the same objects, identical, would change nothing, so none is made.
#[derive(Clone)]
struct Racing {
    inner: MemCluster,
    store: MemStore,
    written_back: Arc<Mutex<Vec<(String, Bytes)>>>,
}

impl Racing {
    fn race(&self) {
        for (key, value) in self.written_back.lock().unwrap().drain(..) {
            self.store.put(&key, value);
        }
    }
}

impl Cluster for Racing {
    fn view(&self) -> Arc<GatewayView> {
        self.inner.view()
    }
    async fn expose(&self, e: &Exposure<'_>) -> Result<(), ClusterError> {
        self.inner.expose(e).await
    }
    async fn withdraw(
        &self,
        rm: &str,
        alloc: &str,
        ns: Option<&str>,
        b: &Binding,
    ) -> Result<(), ClusterError> {
        self.inner.withdraw(rm, alloc, ns, b).await
    }
    fn controller_verdict(&self, e: &[Exposure<'_>]) -> Verdict {
        self.inner.controller_verdict(e)
    }
}

impl Inventory for Racing {
    async fn check(&self) -> Result<(), String> {
        self.inner.check().await
    }
    async fn class_status(&self) -> ClassStatus {
        self.inner.class_status().await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn owned_objects(&self, ns: Option<&[String]>) -> Result<Vec<OwnedObject>, ClusterError> {
        self.inner.owned_objects(ns).await
    }
    async fn delete_object(&self, o: &OwnedObject) -> Result<(), ClusterError> {
        self.race();
        self.inner.delete_object(o).await
    }
    async fn remove_owned_listener(&self, name: &str) -> Result<(), ClusterError> {
        self.race();
        self.inner.remove_owned_listener(name).await
    }
}

fn handler(store: &MemStore, racing: &Racing) -> Handler<MemStore, Racing> {
    let cfg = Config::parse(
        &format!(
            "nats: {{url: 'nats://127.0.0.1:4222'}}\nresource_managers:\n  - name: rm\n    data_plane_probe: {{enabled: false}}\n    internal_task_gateway: {{gateway_name: itg, gateway_namespace: gw, gateway_ip: {GW0_IP}, gateway_port_range_start: 40000, gateway_port_range_end: 40009}}\n"
        ),
        "test",
    )
    .unwrap();
    Handler::new(
        RmContext::new(&cfg.resource_managers[0]),
        store.clone(),
        racing.clone(),
        cfg.worker.clone(),
    )
}

#[tokio::test]
async fn a_removal_judged_before_a_record_came_back_leaves_its_allocation_exposed() {
    let store = MemStore::default();
    let racing = Racing {
        inner: MemCluster::default(),
        store: store.clone(),
        written_back: Arc::default(),
    };
    let h = handler(&store, &racing);
    let a = "6f1c2d3e.21";
    let ready = h.handle(EventKind::Started, &started(a)).await;
    assert_eq!(kind_of(&ready), "ready", "{ready:?}");
    let exposed = racing.inner.objects_of(a);
    assert_eq!(exposed.len(), 3, "{exposed:?}");

    // The bucket loses the record and the claim; the replay will write them back once the pass has
    // judged the objects orphaned.
    let mut lost = Vec::new();
    for prefix in [
        itg::names::allocation_key("rm", a),
        itg::names::port_key_prefix("rm", "gw", "itg"),
    ] {
        for key in store.keys(&prefix).await.unwrap() {
            lost.push((key.clone(), store.get(&key).await.unwrap().unwrap().value));
        }
    }
    assert_eq!(lost.len(), 2, "the record and its claim");
    store.clear();
    *racing.written_back.lock().unwrap() = lost;

    let mut reconciler = Reconciler::new(h, store.clone(), racing.clone(), Duration::ZERO);
    let done = reconciler.pass(false).await.unwrap();
    let after = racing.inner.objects_of(a);
    println!("the pass did: {done:?}\nwhat of the allocation stands after it: {after:?}");
    assert!(
        store
            .get(&itg::names::allocation_key("rm", a))
            .await
            .unwrap()
            .is_some(),
        "the record is back"
    );
    assert_eq!(
        after, exposed,
        "the allocation whose record came back keeps its listener, Service and route"
    );
}
