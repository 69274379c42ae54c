//! What the worker's writes leave on the shared Gateway: nothing of a listener once it is removed, not even
//! its field manager's managedFields entry, so the hot object does not grow with every allocation served.

mod common;

use common::Scenario;
use gateway_api::experimental::gateways::Gateway;
use kube::Api;

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
