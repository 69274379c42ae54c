//! What a withdrawal touches: the objects where the allocation's record put them, whatever a late event
//! says.

mod common;

use common::Scenario;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::PostParams;

#[tokio::test]
async fn a_started_after_the_ended_withdraws_in_the_records_namespace_not_the_events() {
    let s = Scenario::start("wns", (42700, 42709), "").await;
    let (env, rm, master, replies) = (&s.env, &s.rm, &s.master, &s.replies);
    let alloc = format!("{}.1", uuid::Uuid::new_v4());
    master
        .started(&alloc, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    replies.first(30, &alloc, "ready").await;
    master.ended(&alloc).await;
    replies.first(30, &alloc, "removed").await;
    // An apply from a pass that gave up lands after the cleanup: the Service is back in the task namespace.
    let name = itg::names::object_name(&rm.name, &alloc, "jupyter");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "namespace": rm.task_ns },
        "spec": { "type": "ClusterIP", "ports": [{ "port": 8888 }] }
    }))
    .unwrap();
    let services = Api::<Service>::namespaced(env.kube().await, &rm.task_ns);
    services
        .create(&PostParams::default(), &svc)
        .await
        .expect("late Service");
    // A started for the ended allocation that names another namespace: refused, and the late Service,
    // where the record says the allocation lived, is withdrawn.
    let other_ns = format!("{}-elsewhere", rm.task_ns);
    master
        .started(&alloc, &other_ns, &[("jupyter", 8888)])
        .await;
    replies
        .wait(30, "the refusal of the late started", |r| {
            r.iter()
                .any(|x| x.alloc() == Some(alloc.as_str()) && x.kind == "failed")
        })
        .await;
    let left = services.get_opt(&name).await.unwrap();
    assert!(
        left.is_none_or(|s| s.metadata.deletion_timestamp.is_some()),
        "the late Service {}/{name} was left standing",
        rm.task_ns
    );
    s.finish().await;
}
