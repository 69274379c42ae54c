//! What the worker's writes leave on the shared Gateway: nothing of a listener once it is removed, not even
//! its field manager's managedFields entry, so the hot object does not grow with every allocation served.

mod common;

use common::Scenario;
use gateway_api::experimental::gateways::Gateway;
use kube::Api;
use kube::api::{Patch, PatchParams};

#[tokio::test]
async fn a_removed_listener_leaves_no_field_manager_on_the_gateway() {
    let s = Scenario::start("mf", (40000, 40063), "").await;
    for i in 0..3 {
        let alloc = format!("mf.{i}");
        s.master
            .started(&alloc, &s.rm.task_ns, &[("jupyter", 8888)])
            .await;
        s.replies.first(60, &alloc, "ready").await;
        s.master.ended(&alloc).await;
        s.replies.first(60, &alloc, "removed").await;
    }
    let client = s.env.kube().await;
    let gw = Api::<Gateway>::namespaced(client, &s.rm.gateway_ns)
        .get(&s.rm.gateway)
        .await
        .expect("gateway");
    let managers: Vec<String> = gw
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.iter().all(|m| !m.starts_with(itg::names::MANAGER)),
        "field managers left behind: {managers:?}"
    );
    assert_eq!(gw.spec.listeners.len(), 1, "only the placeholder remains");
    s.finish().await;
}

#[tokio::test]
async fn a_listener_co_owned_by_another_manager_keeps_its_port_claimed_until_it_is_gone() {
    let s = Scenario::start("coown", (40070, 40079), "").await;
    let alloc = "coown.1";
    s.master
        .started(alloc, &s.rm.task_ns, &[("jupyter", 8888)])
        .await;
    let port = s.replies.first(60, alloc, "ready").await.ports()[0];
    // As `kubectl get -o yaml | kubectl apply` does: another field manager applies the listener as it is,
    // and so co-owns every field of it.
    let api = Api::<Gateway>::namespaced(s.env.kube().await, &s.rm.gateway_ns);
    let name = itg::names::object_name(&s.rm.name, alloc, "jupyter");
    let gw = api.get(&s.rm.gateway).await.expect("gateway");
    let listener = gw
        .spec
        .listeners
        .iter()
        .find(|l| l.name == name)
        .expect("the allocation's listener");
    let body = |spec: Option<serde_json::Value>| {
        let mut b = serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": { "name": s.rm.gateway, "namespace": s.rm.gateway_ns },
        });
        if let Some(spec) = spec {
            b["spec"] = spec;
        }
        b
    };
    let other = PatchParams::apply("kubectl-client-side-apply");
    let spec = serde_json::json!({ "listeners": [serde_json::to_value(listener).unwrap()] });
    api.patch(&s.rm.gateway, &other, &Patch::Apply(body(Some(spec))))
        .await
        .expect("co-own the listener");

    s.master.ended(alloc).await;
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let o = common::observe(&s.env, &s.rm).await;
    let key = itg::names::allocation_key(&s.rm.name, alloc);
    assert!(
        o.listeners.contains_key(&name),
        "the co-owned listener stays: {o:?}"
    );
    assert_eq!(
        o.claims.get(&port),
        Some(&key),
        "port {port} was released while its listener still stands: {o:?}; replies {:?}",
        s.replies.for_alloc(alloc)
    );

    // The other manager lets go: the listener is gone, and only then is the port released.
    api.patch(&s.rm.gateway, &other, &Patch::Apply(body(None)))
        .await
        .expect("release the co-ownership");
    s.replies.first(60, alloc, "removed").await;
    let o = common::observe(&s.env, &s.rm).await;
    assert!(o.is_empty(), "{o:?}");
    s.finish().await;
}
