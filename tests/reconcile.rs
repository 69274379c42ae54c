//! The reconciler on the real servers: what a crash or a hand leaves behind is found by a dry run without
//! being touched, then repaired by a real pass, and nothing the worker does not own is touched.

mod common;

use async_nats::jetstream;
use common::{Env, Master, Replies, TestRm, Worker, config, observe};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_pass_removes_orphans_restores_what_a_live_allocation_lacks_and_a_dry_run_changes_nothing()
 {
    let env = Env::load();
    let rm = TestRm::new(&env, "rec", (42200, 42208)).await;
    // The worker keeps the default hold-off (its own pass at start must not race the allocation it is
    // exposing); the passes below use none, to act on what was just planted.
    let w = Worker::start(config(&env, &[&rm], "  reconcile_interval: 1h\n")).await;
    let cfg = config(&env, &[&rm], "  reconcile_interval: 1h\n");
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let live = format!("{}.1", uuid::Uuid::new_v4());
    master
        .started(&live, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    replies.first(30, &live, "ready").await;
    w.stop().await;

    // What a crash or a careless hand leaves (on port 42209, outside the live allocation's range, so the
    // planted listener cannot collide with the live one): the live allocation's Service deleted, and the Service,
    // route, listener and port claim of an allocation that no longer exists.
    let client = env.kube().await;
    let live_name = itg::names::object_name(&rm.name, &live, "jupyter");
    let svcs: Api<Service> = Api::namespaced(client.clone(), &rm.task_ns);
    svcs.delete(&live_name, &DeleteParams::default())
        .await
        .unwrap();
    let gone = "gone.1";
    let orphan = itg::names::object_name(&rm.name, gone, "jupyter");
    let meta = json!({ "name": orphan, "namespace": rm.task_ns, "labels": itg::names::labels(&rm.name, gone) });
    let svc = json!({ "apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": { "ports": [{ "port": 80 }] } });
    svcs.patch(&orphan, &PatchParams::apply("by-hand"), &Patch::Apply(&svc))
        .await
        .unwrap();
    let gws: Api<gateway_api::experimental::gateways::Gateway> =
        Api::namespaced(client.clone(), &rm.gateway_ns);
    let listener = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": { "name": rm.gateway, "namespace": rm.gateway_ns },
        "spec": { "listeners": [{ "name": orphan, "port": 42209, "protocol": "TCP" }] }
    });
    let manager = itg::names::listener_field_manager(&rm.name, &orphan);
    gws.patch(
        &rm.gateway,
        &PatchParams::apply(&manager),
        &Patch::Apply(&listener),
    )
    .await
    .unwrap();
    let kv = jetstream::new(env.nats().await)
        .get_key_value("ITG_STATE")
        .await
        .unwrap();
    let claim = json!({ "allocation": itg::names::allocation_key(&rm.name, gone), "proxy": "jupyter", "claimed_at": 0 });
    let claim_key = itg::names::port_key(&rm.name, &rm.gateway_ns, &rm.gateway, 42209);
    kv.put(&claim_key, serde_json::to_vec(&claim).unwrap().into())
        .await
        .unwrap();
    // The worker's Gateway watch must see the planted listener before the pass reads it.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let servers = itg::app::connect(&cfg).await.unwrap();
    let before = observe(&env, &rm).await;
    let planned = itg::app::reconcile_once_with(&cfg, &servers, true, Duration::ZERO)
        .await
        .unwrap();
    let text = serde_json::to_string(&planned).unwrap();
    for want in [
        "release_claim",
        "remove_listener",
        "delete_object",
        "repair",
        orphan.as_str(),
    ] {
        assert!(text.contains(want), "dry run lacks {want}: {text}");
    }
    assert_eq!(
        observe(&env, &rm).await,
        before,
        "a dry run changes nothing"
    );

    itg::app::reconcile_once_with(&cfg, &servers, false, Duration::ZERO)
        .await
        .unwrap();
    let after = observe(&env, &rm).await;
    assert_eq!(
        after.services,
        vec![live_name.clone()],
        "the orphan Service is gone, the live one is back"
    );
    assert_eq!(
        after.listeners.keys().cloned().collect::<Vec<_>>(),
        vec![live_name.clone()]
    );
    assert_eq!(
        after.claims.len(),
        1,
        "only the live allocation's port is claimed: {after:?}"
    );
    assert_eq!(after.foreign.get("placeholder"), Some(&39999));
    rm.teardown(&env).await;
}

#[tokio::test]
async fn an_undecodable_record_stops_the_pass_and_its_claims_stay() {
    let env = Env::load();
    let rm = TestRm::new(&env, "recbad", (43800, 43803)).await;
    let cfg = config(&env, &[&rm], "  reconcile_interval: 1h\n");
    let kv = jetstream::new(env.nats().await)
        .get_key_value("ITG_STATE")
        .await
        .unwrap();
    // A record written by a newer or broken worker, and the port claim it holds.
    let key = itg::names::allocation_key(&rm.name, "odd.1");
    kv.put(&key, "{\"phase\": \"from-the-future\"".into())
        .await
        .unwrap();
    let claim = json!({ "allocation": key, "proxy": "jupyter", "claimed_at": 0 });
    let claim_key = itg::names::port_key(&rm.name, &rm.gateway_ns, &rm.gateway, 43801);
    kv.put(&claim_key, serde_json::to_vec(&claim).unwrap().into())
        .await
        .unwrap();

    let servers = itg::app::connect(&cfg).await.unwrap();
    let done = itg::app::reconcile_once_with(&cfg, &servers, false, Duration::ZERO).await;
    println!("a pass over an undecodable record: {done:?}");
    let err = done.expect_err("the pass stops");
    assert!(err.contains(&key), "the error names the record: {err}");
    assert!(
        kv.get(&claim_key).await.unwrap().is_some(),
        "the claim of the record that could not be read is kept"
    );
    kv.purge(&key).await.unwrap();
    kv.purge(&claim_key).await.unwrap();
    rm.teardown(&env).await;
}

#[tokio::test]
async fn a_delete_judged_from_a_stale_listing_spares_an_object_made_again_since() {
    use itg::cluster::{Inventory, ObjectKind};
    let env = Env::load();
    let rm = TestRm::new(&env, "recpre", (42230, 42233)).await;
    let cfg = config(&env, &[&rm], "  reconcile_interval: 1h\n");
    let w = Worker::start(cfg.clone()).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let a = format!("{}.1", uuid::Uuid::new_v4());
    master.started(&a, &rm.task_ns, &[("jupyter", 8888)]).await;
    replies.first(30, &a, "ready").await;
    w.stop().await;

    let servers = itg::app::connect(&cfg).await.unwrap();
    let inventory = &servers.rms[0].gateway;
    let listed = inventory
        .owned_objects(Some(std::slice::from_ref(&rm.task_ns)))
        .await
        .unwrap();
    let svc = listed
        .iter()
        .find(|o| o.kind == ObjectKind::Service)
        .expect("the allocation's Service is listed")
        .clone();
    assert!(svc.uid.is_some(), "listed with its uid: {svc:?}");
    // Between the listing and the delete, the Service is made again (as a resend would): a new uid.
    let api: Api<Service> = Api::namespaced(env.kube().await, &rm.task_ns);
    let mut again = api.get(&svc.name).await.unwrap();
    api.delete(&svc.name, &DeleteParams::default())
        .await
        .unwrap();
    again.metadata.uid = None;
    again.metadata.resource_version = None;
    again.metadata.creation_timestamp = None;
    again.metadata.managed_fields = None;
    if let Some(spec) = again.spec.as_mut() {
        spec.cluster_ip = None;
        spec.cluster_ips = None;
    }
    for _ in 0..50 {
        match api.create(&Default::default(), &again).await {
            Ok(_) => break,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("make the Service again: {e}"),
        }
    }
    inventory.delete_object(&svc).await.unwrap();
    let now = api.get_opt(&svc.name).await.unwrap();
    assert!(
        now.is_some_and(|s| s.metadata.uid != svc.uid),
        "the Service made again after the listing was deleted by it"
    );
    // The listing's own object, unchanged, is deleted as before.
    let fresh = inventory
        .owned_objects(Some(std::slice::from_ref(&rm.task_ns)))
        .await
        .unwrap();
    let svc = fresh
        .into_iter()
        .find(|o| o.kind == ObjectKind::Service)
        .unwrap();
    inventory.delete_object(&svc).await.unwrap();
    assert!(api.get_opt(&svc.name).await.unwrap().is_none());
    rm.teardown(&env).await;
}
