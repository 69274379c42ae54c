//! Hostile input against the real servers: allocation ids and port names that look like paths, wildcards,
//! subjects or other objects' names are encoded wherever they land (KV keys, object names, labels,
//! annotations, subjects); ids that break the contract are refused by name; and each listener admits only
//! the task's own namespace.

mod common;

use common::{Scenario, observe};
use gateway_api::experimental::gateways::Gateway;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::ListParams;

#[tokio::test]
async fn hostile_but_valid_ids_are_encoded_in_every_sink_and_touch_nothing_else() {
    let s = Scenario::start("hos", (41900, 41963), "").await;
    let (env, rm, master, replies) = (&s.env, &s.rm, &s.master, &s.replies);
    let ids = [
        "a.b.c",
        "a/b/../../etc",
        "*",
        ">",
        "itg.events.other.started",
        "x=y&z",
        "placeholder",
        "itg-0123456789abcdef0123",
        "kube-system",
        "\"quoted\"",
    ];
    for id in ids {
        // A port named like the operator's listener: names are derived, never taken from input.
        master
            .started(id, &rm.task_ns, &[("placeholder", 8888)])
            .await;
    }
    for id in ids {
        let r = replies.first(30, id, "ready").await;
        assert_eq!(r.body["allocation_id"], id);
    }
    let o = observe(env, rm).await;
    assert_eq!(
        o.foreign.get("placeholder"),
        Some(&39999),
        "the operator's listener is untouched"
    );
    assert_eq!(o.listeners.len(), ids.len());
    let lp = ListParams::default().labels(&itg::names::owned_selector(&rm.name));
    let svcs = Api::<Service>::namespaced(env.kube().await, &rm.task_ns)
        .list(&lp)
        .await
        .unwrap();
    let mut annotated: Vec<String> = svcs
        .items
        .iter()
        .map(|s| {
            s.metadata.annotations.as_ref().unwrap()["internal-task-gateway.io/allocation-id"]
                .clone()
        })
        .collect();
    annotated.sort();
    let mut want: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(
        annotated, want,
        "the full ids are kept, verbatim, in annotations"
    );
    for id in ids {
        let key = itg::names::allocation_key(&rm.name, id);
        assert_eq!(key.matches('.').count(), 2, "{key}");
        assert_eq!(
            itg::names::parse_allocation_key(&key),
            Some((rm.name.clone(), id.to_owned()))
        );
        assert!(
            o.claims.values().any(|owner| *owner == key),
            "{id} holds its port under its encoded key"
        );
    }
    s.finish().await;
}

#[tokio::test]
async fn ids_that_break_the_contract_are_refused_naming_the_field() {
    let s = Scenario::start("hbad", (42000, 42009), "").await;
    let (rm, master, replies) = (&s.rm, &s.master, &s.replies);
    let long = "a".repeat(10 * 1024);
    let bad = ["with space", "tab\there", "ünïcode", long.as_str(), ""];
    let mut ids = Vec::new();
    for id in bad {
        ids.push(master.started(id, &rm.task_ns, &[("jupyter", 8888)]).await);
    }
    let all = replies
        .wait(30, "a failed per bad id", |r| {
            ids.iter()
                .all(|e| r.iter().any(|s| s.body["source_event_id"] == e.to_string()))
        })
        .await;
    for e in &ids {
        let f = all
            .iter()
            .find(|s| s.body["source_event_id"] == e.to_string())
            .unwrap();
        assert_eq!(f.kind, "failed");
        assert_eq!(f.body["reason"], "invalid_event");
        assert_eq!(
            f.body["allocation_id"],
            serde_json::Value::Null,
            "a bad id is never echoed as an id"
        );
        assert!(
            f.body["message"]
                .as_str()
                .unwrap()
                .contains("allocation_id"),
            "{}",
            f.body["message"]
        );
        assert!(
            f.body["message"].as_str().unwrap().len() < 1024,
            "a 10 KB id is not echoed whole"
        );
    }
    assert!(observe(&s.env, rm).await.listeners.is_empty());
    s.finish().await;
}

#[tokio::test]
async fn each_listener_admits_only_tcproutes_from_the_tasks_own_namespace() {
    let s = Scenario::start("scope", (42100, 42109), "").await;
    let (env, rm, master, replies) = (&s.env, &s.rm, &s.master, &s.replies);
    let a = format!("{}.1", uuid::Uuid::new_v4());
    master.started(&a, &rm.task_ns, &[("jupyter", 8888)]).await;
    replies.first(30, &a, "ready").await;
    let gw = Api::<Gateway>::namespaced(env.kube().await, &rm.gateway_ns)
        .get(&rm.gateway)
        .await
        .unwrap();
    let ours = gw
        .spec
        .listeners
        .iter()
        .find(|l| itg::names::is_owned_listener_name(&l.name))
        .unwrap();
    let v = serde_json::to_value(ours).unwrap();
    assert_eq!(v["protocol"], "TCP");
    assert_eq!(
        v["allowedRoutes"]["kinds"],
        serde_json::json!([{"group": "gateway.networking.k8s.io", "kind": "TCPRoute"}])
    );
    assert_eq!(v["allowedRoutes"]["namespaces"]["from"], "Selector");
    assert_eq!(
        v["allowedRoutes"]["namespaces"]["selector"]["matchLabels"]["kubernetes.io/metadata.name"],
        rm.task_ns.as_str()
    );
    s.finish().await;
}
