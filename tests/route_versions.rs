//! TCPRoute in the version the apiserver serves. Each CRD set runs on its own apiserver (started by
//! `scripts/testenv up`, kubeconfigs `KUBECONFIG_V15` and `KUBECONFIG_V16STD` in `.itg/env`): the v1.5.1
//! experimental CRDs serve `v1alpha2` only, the v1.6 standard ones `v1` only. The main apiserver's v1.6
//! experimental CRDs serve both, from one storage.

mod common;

use std::path::PathBuf;

use common::{Env, Master, Replies, TestRm, Worker, config, make_namespace};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

const GROUP: &str = "gateway.networking.k8s.io";

/// A variable of `.itg/env` (or `ITG_TEST_<name>` in the environment).
fn itg_env(name: &str) -> String {
    if let Ok(v) = std::env::var(format!("ITG_TEST_{name}")) {
        return v;
    }
    common::env_var(name).unwrap_or_else(|| {
        panic!("{name} unknown: run `scripts/testenv up` first (it writes .itg/env)")
    })
}

fn routes(client: &Client, ns: &str, version: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(GROUP, version, "TCPRoute");
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "tcproutes"),
    )
}

async fn serves_tcproute(client: &Client, version: &str) -> bool {
    client
        .list_api_group_resources(&format!("{GROUP}/{version}"))
        .await
        .is_ok_and(|l| l.resources.iter().any(|r| r.name == "tcproutes"))
}

/// A started is exposed and an ended removes it, on the apiserver of `kubeconfig`; the route is read back
/// in `served`, the one version that apiserver serves.
async fn exposes_and_removes_through(kubeconfig: PathBuf, served: &str, other: &str) {
    let main = Env::load();
    let env = Env {
        nats_url: main.nats_url.clone(),
        kubeconfig,
    };
    let client = env.kube().await;
    assert!(
        serves_tcproute(&client, served).await && !serves_tcproute(&client, other).await,
        "the apiserver of {} must serve TCPRoute {served} and not {other}",
        env.kubeconfig.display()
    );
    make_namespace(&client, "gateway-system").await;
    let rm = TestRm::new(&env, &format!("ver-{served}"), (41600, 41609)).await;
    let worker = Worker::start(config(&env, &[&rm], "")).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;

    let alloc = format!("{}.1", uuid::Uuid::new_v4());
    master
        .started(&alloc, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    let ready = replies.first(60, &alloc, "ready").await;
    let name = itg::names::object_name(&rm.name, &alloc, "jupyter");
    let route = routes(&client, &rm.task_ns, served)
        .get(&name)
        .await
        .unwrap_or_else(|e| panic!("TCPRoute {name} readable as {served}: {e}"));
    println!(
        "{}: ready on port {:?}, route read back as {}",
        env.kubeconfig.display(),
        ready.ports(),
        route.types.as_ref().map_or("?", |t| t.api_version.as_str())
    );
    assert_eq!(
        route.types.as_ref().map(|t| t.api_version.clone()),
        Some(format!("{GROUP}/{served}"))
    );
    assert_eq!(
        route.data["spec"]["parentRefs"][0]["sectionName"],
        json!(name)
    );
    assert_eq!(
        route.data["spec"]["parentRefs"][0]["port"],
        json!(ready.ports()[0])
    );

    master.ended(&alloc).await;
    replies.first(60, &alloc, "removed").await;
    assert!(
        routes(&client, &rm.task_ns, served)
            .get_opt(&name)
            .await
            .expect("list routes")
            .is_none(),
        "the route is removed"
    );
    worker.stop().await;
    rm.teardown(&env).await;
}

#[tokio::test]
async fn on_the_v1_5_experimental_crds_routes_are_written_and_removed_as_v1alpha2() {
    exposes_and_removes_through(PathBuf::from(itg_env("KUBECONFIG_V15")), "v1alpha2", "v1").await;
}

#[tokio::test]
async fn on_the_v1_6_standard_crds_routes_are_written_and_removed_as_v1() {
    exposes_and_removes_through(
        PathBuf::from(itg_env("KUBECONFIG_V16STD")),
        "v1",
        "v1alpha2",
    )
    .await;
}

/// Where both versions are served, the worker writes `v1` and still finds, takes over and removes a route an
/// older worker wrote as `v1alpha2`: one storage, listed and deleted through either version.
#[tokio::test]
async fn a_route_written_as_v1alpha2_is_taken_over_and_removed_through_v1() {
    let env = Env::load();
    let client = env.kube().await;
    assert!(
        serves_tcproute(&client, "v1").await && serves_tcproute(&client, "v1alpha2").await,
        "the main apiserver must serve TCPRoute v1 and v1alpha2 (the v1.6 experimental CRDs)"
    );
    let rm = TestRm::new(&env, "ver-both", (41610, 41619)).await;
    let alloc = format!("{}.1", uuid::Uuid::new_v4());
    let name = itg::names::object_name(&rm.name, &alloc, "jupyter");
    // What an older worker left: the same route, by the same field manager, as v1alpha2.
    let old = json!({
        "apiVersion": format!("{GROUP}/v1alpha2"),
        "kind": "TCPRoute",
        "metadata": {
            "name": name,
            "namespace": rm.task_ns,
            "labels": itg::names::labels(&rm.name, &alloc),
        },
        "spec": {
            "parentRefs": [{ "name": rm.gateway, "namespace": rm.gateway_ns, "sectionName": name }],
            "rules": [{ "backendRefs": [{ "name": name, "port": 8888 }] }]
        }
    });
    routes(&client, &rm.task_ns, "v1alpha2")
        .patch(
            &name,
            &PatchParams::apply(itg::names::OBJECT_FIELD_MANAGER).force(),
            &Patch::Apply(&old),
        )
        .await
        .expect("an old worker's v1alpha2 route");
    let worker = Worker::start(config(&env, &[&rm], "")).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    master
        .started(&alloc, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    let ready = replies.first(60, &alloc, "ready").await;
    let route = routes(&client, &rm.task_ns, "v1")
        .get(&name)
        .await
        .expect("read as v1");
    // The worker's apply took the old route over: it now names our listener's port.
    assert_eq!(
        route.data["spec"]["parentRefs"][0]["port"],
        json!(ready.ports()[0])
    );
    master.ended(&alloc).await;
    replies.first(60, &alloc, "removed").await;
    for version in ["v1", "v1alpha2"] {
        assert!(
            routes(&client, &rm.task_ns, version)
                .get_opt(&name)
                .await
                .expect("read routes")
                .is_none(),
            "the route is gone, read as {version}"
        );
    }
    worker.stop().await;
    rm.teardown(&env).await;
}
