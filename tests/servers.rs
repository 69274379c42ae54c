//! The servers are real: each test here relies on behaviour only the real nats-server and kube-apiserver
//! (with the upstream Gateway API CRDs) have, and would fail against a stand-in.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use common::{Env, make_gateway, suffix};
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::tcproutes::TcpRoute;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn listener_body(gw: &str, name: &str, port: u16) -> serde_json::Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": { "name": gw, "namespace": "gateway-system" },
        "spec": { "listeners": [{ "name": name, "port": port, "protocol": "TCP" }] }
    })
}

async fn listener_names(api: &Api<Gateway>, gw: &str) -> Vec<String> {
    let mut v: Vec<String> = api
        .get(gw)
        .await
        .unwrap()
        .spec
        .listeners
        .into_iter()
        .map(|l| l.name)
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn concurrent_kv_creates_of_one_key_have_exactly_one_winner() {
    let env = Env::load();
    let bucket = format!("TEST_CREATE_{}", suffix());
    let js = jetstream::new(env.nats().await);
    js.create_key_value(kv::Config {
        bucket: bucket.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let env_url = env.nats_url.clone();
        let bucket = bucket.clone();
        tasks.push(tokio::spawn(async move {
            // Separate connections, as separate workers would have.
            let js = jetstream::new(async_nats::connect(env_url.as_str()).await.unwrap());
            let kv = js.get_key_value(&bucket).await.unwrap();
            kv.create("port.40000", format!("writer-{i}").into())
                .await
                .is_ok()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await.unwrap() {
            winners += 1;
        }
    }
    js.delete_key_value(&bucket).await.unwrap();
    assert_eq!(winners, 1, "exactly one create may succeed");
}

#[tokio::test]
async fn a_publish_repeated_with_the_same_msg_id_is_stored_once() {
    let env = Env::load();
    let js = jetstream::new(env.nats().await);
    let name = format!("TEST_DEDUP_{}", suffix());
    let subject = format!("test.dedup.{}", suffix());
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        duplicate_window: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .unwrap();
    for body in ["first", "second", "third"] {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", "event-1");
        js.publish_with_headers(subject.clone(), h, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut s = js.get_stream(&name).await.unwrap();
    let count = s.info().await.unwrap().state.messages;
    js.delete_stream(&name).await.unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn listeners_applied_by_two_field_managers_merge_and_remove_independently() {
    let env = Env::load();
    let client = env.kube().await;
    let gw = format!("gw-ssa-{}", suffix());
    make_gateway(&client, "gateway-system", &gw, 39999).await;
    let api: Api<Gateway> = Api::namespaced(client, "gateway-system");
    for (mgr, name, port) in [
        ("itg-a", "listener-a", 40001),
        ("itg-b", "listener-b", 40002),
    ] {
        api.patch(
            &gw,
            &PatchParams::apply(mgr).force(),
            &Patch::Apply(&listener_body(&gw, name, port)),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        listener_names(&api, &gw).await,
        ["listener-a", "listener-b", "placeholder"]
    );
    let empty = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": { "name": gw, "namespace": "gateway-system" }, "spec": {}
    });
    api.patch(
        &gw,
        &PatchParams::apply("itg-a").force(),
        &Patch::Apply(&empty),
    )
    .await
    .unwrap();
    let after = listener_names(&api, &gw).await;
    api.delete(&gw, &DeleteParams::default()).await.unwrap();
    assert_eq!(after, ["listener-b", "placeholder"]);
}

#[tokio::test]
async fn a_65th_listener_is_refused_by_the_crd_max_items() {
    let env = Env::load();
    let client = env.kube().await;
    let gw = format!("gw-cap-{}", suffix());
    make_gateway(&client, "gateway-system", &gw, 39999).await;
    let api: Api<Gateway> = Api::namespaced(client, "gateway-system");
    let listeners: Vec<_> = (0..64u16)
        .map(|i| json!({ "name": format!("l{i}"), "port": 41000 + i, "protocol": "TCP" }))
        .collect();
    // 63 more under one manager: 64 with the placeholder, the CRD's maximum.
    let body = |ls: &[serde_json::Value]| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": { "name": gw, "namespace": "gateway-system" },
            "spec": { "listeners": ls }
        })
    };
    api.patch(
        &gw,
        &PatchParams::apply("bulk").force(),
        &Patch::Apply(&body(&listeners[..63])),
    )
    .await
    .expect("64 listeners fit");
    let err = api
        .patch(
            &gw,
            &PatchParams::apply("one-more").force(),
            &Patch::Apply(&listener_body(&gw, "l64", 42000)),
        )
        .await
        .expect_err("the 65th listener must be refused");
    api.delete(&gw, &DeleteParams::default()).await.unwrap();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("must have at most 64 items"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn a_tcproute_v1alpha2_round_trips() {
    let env = Env::load();
    let client = env.kube().await;
    let ns = format!("rt-{}", suffix());
    common::make_namespace(&client, &ns).await;
    let api: Api<TcpRoute> = Api::namespaced(client.clone(), &ns);
    let route: TcpRoute = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
        "metadata": { "name": "r1", "namespace": ns },
        "spec": {
            "parentRefs": [{ "name": "itg", "namespace": "gateway-system", "sectionName": "placeholder", "port": 39999 }],
            "rules": [{ "backendRefs": [{ "name": "svc", "port": 8888 }] }]
        }
    }))
    .unwrap();
    api.create(&PostParams::default(), &route).await.unwrap();
    let back = api.get("r1").await.unwrap();
    common::delete_namespace(&client, &ns).await;
    assert_eq!(
        back.spec.parent_refs.unwrap()[0].section_name.as_deref(),
        Some("placeholder")
    );
    assert_eq!(back.spec.rules[0].backend_refs[0].port, Some(8888));
    // Defaulted by the CRD's schema, which a stand-in would not do.
    assert_eq!(back.spec.rules[0].backend_refs[0].weight, Some(1));
}
