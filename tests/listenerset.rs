//! `listener_mode: listenerset` against the real apiserver and the Gateway API CRDs (the controller-less
//! class: these tests are about what is written; tests/e2e.rs sends bytes through envoy): each allocation
//! gets a ListenerSet of its own, the Gateway object is never written, more than 64 ports are served on one
//! Gateway, and the reconciler removes a set no allocation wants.

mod common;

use std::time::{Duration, Instant};

use common::{Env, Master, Replies, TestRm, Worker, config, observe};
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::listenersets::ListenerSet;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

const LISTENERSET: &str = "    listener_mode: listenerset\n";

async fn listenerset_rm(env: &Env, prefix: &str, range: (u16, u16)) -> TestRm {
    let mut rm = TestRm::new(env, prefix, range).await;
    rm.extra.push_str(LISTENERSET);
    rm
}

/// The Gateway as the apiserver holds it: (resourceVersion, generation, managers of its listeners).
async fn gateway_state(env: &Env, rm: &TestRm) -> (String, i64, Vec<String>) {
    let gw = Api::<Gateway>::namespaced(env.kube().await, &rm.gateway_ns)
        .get(&rm.gateway)
        .await
        .expect("gateway");
    let managers = gw
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    (
        gw.metadata.resource_version.unwrap_or_default(),
        gw.metadata.generation.unwrap_or_default(),
        managers,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_than_64_ports_on_one_gateway_and_the_gateway_never_written() {
    let env = Env::load();
    // 96 ports: more than a Gateway's 64 listeners.
    let rm = listenerset_rm(&env, "ls", (41000, 41095)).await;
    let before = gateway_state(&env, &rm).await;
    let worker = Worker::start(config(&env, &[&rm], "")).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;

    let n = 90;
    let t = Instant::now();
    let allocs: Vec<String> = (0..n)
        .map(|i| format!("{}.{i}", uuid::Uuid::new_v4()))
        .collect();
    for a in &allocs {
        master.started(a, &rm.task_ns, &[("jupyter", 8888)]).await;
    }
    let mut ports = std::collections::BTreeSet::new();
    for a in &allocs {
        let ready = replies.first(120, a, "ready").await;
        ports.extend(ready.ports());
    }
    println!(
        "listenerset: {n} allocations ready on one Gateway in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(ports.len(), n, "every allocation got its own port");
    assert!(
        ports.iter().all(|p| (41000..=41095).contains(p)),
        "{ports:?}"
    );
    let o = observe(&env, &rm).await;
    assert_eq!(o.sets.len(), n, "one ListenerSet per allocation");
    assert_eq!(o.listeners.len(), n, "one listener per proxy port");
    assert_eq!(o.services.len(), n);
    assert_eq!(o.routes.len(), n);
    assert_eq!(o.claims.len(), n);
    let during = gateway_state(&env, &rm).await;
    assert_eq!(during, before, "the Gateway object was written");

    // A route attaches to its own listener in its allocation's set.
    let routes: Api<kube::api::DynamicObject> = Api::namespaced_with(
        env.kube().await,
        &rm.task_ns,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1alpha2", "TCPRoute"),
            "tcproutes",
        ),
    );
    let name = itg::names::object_name(&rm.name, &allocs[0], "jupyter");
    let route = routes.get(&name).await.expect("route");
    let parent = &route.data["spec"]["parentRefs"][0];
    assert_eq!(parent["kind"], "ListenerSet", "{parent}");
    assert_eq!(
        parent["name"],
        itg::names::listenerset_name(&rm.name, &allocs[0])
    );
    assert_eq!(parent["sectionName"], name.as_str());

    let t = Instant::now();
    for a in &allocs {
        master.ended(a).await;
    }
    for a in &allocs {
        replies.first(120, a, "removed").await;
    }
    println!(
        "listenerset: {n} allocations removed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let after = observe(&env, &rm).await;
    assert!(after.is_empty(), "left behind: {after:#?}");
    assert_eq!(
        gateway_state(&env, &rm).await,
        before,
        "the Gateway object was written"
    );
    worker.stop().await;
    rm.teardown(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_with_two_ports_keeps_one_when_the_other_is_removed_and_goes_with_the_last() {
    let env = Env::load();
    let rm = listenerset_rm(&env, "ls2", (41100, 41109)).await;
    let worker = Worker::start(config(&env, &[&rm], "")).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let a = format!("{}.1", uuid::Uuid::new_v4());
    master
        .started(&a, &rm.task_ns, &[("jupyter", 8888), ("tensorboard", 6006)])
        .await;
    replies.first(60, &a, "ready").await;
    let sets: Api<ListenerSet> = Api::namespaced(env.kube().await, &rm.gateway_ns);
    let set = itg::names::listenerset_name(&rm.name, &a);
    let names = |s: &ListenerSet| -> Vec<String> {
        let mut v: Vec<String> = s.spec.listeners.iter().map(|l| l.name.clone()).collect();
        v.sort();
        v
    };
    let mut both = vec![
        itg::names::object_name(&rm.name, &a, "jupyter"),
        itg::names::object_name(&rm.name, &a, "tensorboard"),
    ];
    both.sort();
    assert_eq!(names(&sets.get(&set).await.expect("set")), both);
    // Each listener is held by its own field manager, so removing one leaves the other.
    let gone = itg::names::object_name(&rm.name, &a, "jupyter");
    let pp = PatchParams::apply(&itg::names::listener_field_manager(&rm.name, &gone)).force();
    let body = itg::k8s::objects::listenerset_removal(&rm.gateway_ns, &set);
    let left = sets
        .patch(&set, &pp, &Patch::Apply(&body))
        .await
        .expect("remove one");
    assert_eq!(
        names(&left),
        vec![itg::names::object_name(&rm.name, &a, "tensorboard")]
    );
    master.ended(&a).await;
    replies.first(60, &a, "removed").await;
    assert!(
        sets.get_opt(&set).await.expect("get").is_none(),
        "the set outlived its allocation"
    );
    let after = observe(&env, &rm).await;
    assert!(after.is_empty(), "left behind: {after:#?}");
    worker.stop().await;
    rm.teardown(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_deletes_a_listenerset_no_allocation_wants() {
    let env = Env::load();
    let rm = listenerset_rm(&env, "lsr", (41200, 41209)).await;
    let cfg = config(&env, &[&rm], "");
    let servers = itg::app::connect(&cfg).await.expect("connect");
    // A set of this resource manager's shape, with no record behind it: what a crash between the set's
    // create and the record's cleanup could leave.
    let orphan = itg::names::listenerset_name(&rm.name, "gone.1");
    let listener = itg::names::object_name(&rm.name, "gone.1", "jupyter");
    let sets: Api<ListenerSet> = Api::namespaced(env.kube().await, &rm.gateway_ns);
    let body = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "ListenerSet",
        "metadata": {
            "name": orphan,
            "namespace": rm.gateway_ns,
            "labels": itg::names::labels(&rm.name, "gone.1"),
        },
        "spec": {
            "parentRef": { "name": rm.gateway, "namespace": rm.gateway_ns },
            "listeners": [{ "name": listener, "port": 41201, "protocol": "TCP" }]
        }
    });
    sets.patch(
        &orphan,
        &PatchParams::apply(&itg::names::listener_field_manager(&rm.name, &listener)),
        &Patch::Apply(&body),
    )
    .await
    .expect("plant a set");
    let planned = itg::app::reconcile_once_with(&cfg, &servers, true, Duration::ZERO)
        .await
        .expect("dry run");
    let text = serde_json::to_string(&planned).unwrap();
    assert!(
        text.contains("ListenerSet") && text.contains(&orphan),
        "{text}"
    );
    assert!(
        sets.get_opt(&orphan).await.unwrap().is_some(),
        "a dry run deleted"
    );
    itg::app::reconcile_once_with(&cfg, &servers, false, Duration::ZERO)
        .await
        .expect("pass");
    assert!(
        sets.get_opt(&orphan).await.unwrap().is_none(),
        "the orphan set is still there"
    );
    rm.teardown(&env).await;
}
