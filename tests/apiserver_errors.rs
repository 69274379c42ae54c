//! Which apiserver errors the worker retries and which it answers at once: each sorted by the adapter's
//! `classify` as the real apiserver returns it (a missing namespace, a conflict, an invalid object, a
//! Gateway past its listener limit), and 429 and 5xx, which an apiserver returns only under load, as
//! their status. Then the whole path: a started into a namespace that does not exist is answered `failed`
//! on its first delivery, never retried.

mod common;

use std::time::Duration;

use common::{Env, Scenario, make_gateway, suffix};
use itg::cluster::ClusterError;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

fn sorted(e: &ClusterError) -> &'static str {
    match e {
        ClusterError::Transient(_) => "retried",
        ClusterError::Capacity(_) => "waits for capacity",
        ClusterError::Permanent(_) => "answered failed",
        ClusterError::Forbidden(_) => "answered failed (forbidden)",
    }
}

fn configmap(ns: &str, name: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": name, "namespace": ns },
        "data": { "k": "v" }
    }))
    .unwrap()
}

#[tokio::test]
async fn the_real_apiservers_errors_are_sorted_into_retried_waiting_and_answered() {
    let env = Env::load();
    let client = env.kube().await;
    let s = suffix();
    let ns = format!("errs-{s}");
    common::make_namespace(&client, &ns).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut seen = Vec::new();
    let mut check = |label: &str, what: &str, err: kube::Error, want: &str| {
        let code = match &err {
            kube::Error::Api(s) => s.code,
            _ => 0,
        };
        let c = itg::k8s::classify(what, err);
        seen.push(format!("{label}: {code} -> {}", sorted(&c)));
        assert_eq!(sorted(&c), want, "{label}: {c}");
    };

    // A missing namespace: 404, answered at once.
    let missing: Api<ConfigMap> = Api::namespaced(client.clone(), &format!("missing-{s}"));
    let e = missing
        .create(
            &PostParams::default(),
            &configmap(&format!("missing-{s}"), "a"),
        )
        .await
        .unwrap_err();
    check(
        "missing namespace",
        &format!("applying Service missing-{s}/a"),
        e,
        "answered failed",
    );

    // A conflict: 409, retried (an object that already exists, and a write with a stale resourceVersion).
    let made = cms
        .create(&PostParams::default(), &configmap(&ns, "a"))
        .await
        .unwrap();
    let e = cms
        .create(&PostParams::default(), &configmap(&ns, "a"))
        .await
        .unwrap_err();
    check("already exists", "applying Service", e, "retried");
    let mut stale = made.clone();
    let mut changed = made.clone();
    changed.data = Some([("k".to_owned(), "x".to_owned())].into());
    cms.replace("a", &PostParams::default(), &changed)
        .await
        .unwrap();
    stale.data = Some([("k".to_owned(), "w".to_owned())].into());
    let e = cms
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    check("stale resourceVersion", "applying Service", e, "retried");

    // An invalid object: 422, answered at once.
    let e = cms
        .create(&PostParams::default(), &configmap(&ns, "Not_A_Name"))
        .await
        .unwrap_err();
    check("invalid object", "applying Service", e, "answered failed");

    // A Gateway past its 64 listeners: 422 from the CRD's rule, which waits for capacity.
    let gw = format!("gw-{s}");
    make_gateway(&client, &ns, &gw, 39999).await;
    let listeners: Vec<serde_json::Value> = (0..65)
        .map(|i| json!({"name": format!("l{i}"), "port": 30000 + i, "protocol": "TCP"}))
        .collect();
    let gws: Api<gateway_api::experimental::gateways::Gateway> =
        Api::namespaced(client.clone(), &ns);
    let e = gws
        .patch(
            &gw,
            &PatchParams::apply("itg-test"),
            &Patch::Apply(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": { "name": gw, "namespace": ns },
                "spec": { "listeners": listeners }
            })),
        )
        .await
        .unwrap_err();
    check(
        "65 listeners",
        &format!("applying listener of {gw}"),
        e,
        "waits for capacity",
    );

    // Overload and server errors, as the apiserver's status says them.
    for (code, reason) in [
        (429, "TooManyRequests"),
        (500, "InternalError"),
        (503, "ServiceUnavailable"),
        (504, "Timeout"),
    ] {
        let e = kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            message: "the server is busy".into(),
            ..Default::default()
        }));
        check(reason, "applying Service", e, "retried");
    }
    println!("{}", seen.join("\n"));
    common::delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_started_into_a_missing_namespace_is_answered_failed_on_its_first_delivery() {
    let sc = Scenario::start("nons", (41400, 41409), "").await;
    let a = format!("{}.1", uuid::Uuid::new_v4());
    let missing = format!("missing-{}", suffix());
    sc.master.started(&a, &missing, &[("jupyter", 8888)]).await;
    let failed = sc.replies.first(30, &a, "failed").await;
    println!("a started into {missing}: {}", failed.body);
    assert_eq!(failed.body["reason"], "kubernetes_error", "{}", failed.body);
    assert_eq!(failed.body["retryable"], false);
    assert!(
        failed.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&missing),
        "{}",
        failed.body
    );
    let js = async_nats::jetstream::new(sc.env.nats().await);
    let mut c: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(itg::contract::EVENTS_STREAM)
        .await
        .unwrap()
        .get_consumer(&itg::names::consumer_name("itg-worker", &sc.rm.name))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let info = c.info().await.unwrap().clone();
    assert_eq!(
        (
            info.num_ack_pending,
            info.num_redelivered,
            info.delivered.consumer_sequence
        ),
        (0, 0, 1),
        "delivered once and acknowledged: {info:?}"
    );
    sc.finish().await;
}
