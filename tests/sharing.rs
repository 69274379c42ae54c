//! Two resource managers on one Gateway, as docs/migrating.md allows when their names differ and their ranges
//! do not overlap: each one's reconciler and port search leave the other's listeners alone.

mod common;

use std::time::Duration;

use common::{Env, Master, Replies, TestRm, Worker, config, make_namespace, suffix};
use gateway_api::experimental::gateways::Gateway;
use kube::Api;

/// The port of every listener on the Gateway, by name.
async fn listeners(env: &Env, rm: &TestRm) -> std::collections::BTreeMap<String, u16> {
    let gw = Api::<Gateway>::namespaced(env.kube().await, &rm.gateway_ns)
        .get(&rm.gateway)
        .await
        .expect("gateway");
    gw.spec
        .listeners
        .into_iter()
        .map(|l| (l.name, l.port as u16))
        .collect()
}

#[tokio::test]
async fn two_resource_managers_sharing_a_gateway_keep_each_others_listeners() {
    let env = Env::load();
    let a = TestRm::new(&env, "sha", (43600, 43603)).await;
    // The second resource manager uses the first one's Gateway, with its own range and task namespace.
    let s = suffix();
    let b = TestRm {
        name: format!("shb-{s}"),
        gateway: a.gateway.clone(),
        gateway_ns: a.gateway_ns.clone(),
        task_ns: format!("tasks-{s}"),
        range: (43604, 43607),
        extra: String::new(),
        gateway_ip: a.gateway_ip.clone(),
    };
    make_namespace(&env.kube().await, &b.task_ns).await;
    // Each in its own worker, as two installations would run; the reconcilers pass every second with the
    // shortest hold-off the config accepts, so an orphan listener would go within a few passes.
    let fast = "  reconcile_interval: 1s\n  reconcile_hold_off: 5s\n";
    let wa = Worker::start(config(&env, &[&a], fast)).await;
    let wb = Worker::start(config(&env, &[&b], fast)).await;
    let (ma, mb) = (
        Master::new(&env, &a.name).await,
        Master::new(&env, &b.name).await,
    );
    let (ra, rb) = (
        Replies::watch(&env, &a.name).await,
        Replies::watch(&env, &b.name).await,
    );
    let (ida, idb) = (
        format!("{}.1", uuid::Uuid::new_v4()),
        format!("{}.1", uuid::Uuid::new_v4()),
    );
    ma.started(&ida, &a.task_ns, &[("jupyter", 8888)]).await;
    mb.started(&idb, &b.task_ns, &[("jupyter", 8888)]).await;
    let pa = ra.first(30, &ida, "ready").await.ports()[0];
    let pb = rb.first(30, &idb, "ready").await.ports()[0];
    let name_a = itg::names::object_name(&a.name, &ida, "jupyter");
    let name_b = itg::names::object_name(&b.name, &idb, "jupyter");

    // Four hold-offs' worth of passes: long enough for either reconciler to remove what it takes for its own.
    let mut lost = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = listeners(&env, &a).await;
        for (name, port) in [(&name_a, pa), (&name_b, pb)] {
            if now.get(name) != Some(&port) && !lost.contains(name) {
                lost.push(name.clone());
            }
        }
    }
    println!(
        "shared Gateway: {} on {pa}, {} on {pb}; listeners lost during 20 s of 1 s reconcile passes: {lost:?}",
        a.name, b.name
    );
    assert!(lost.is_empty(), "live listeners were removed: {lost:?}");

    // Each side's port search sees the other's listener as foreign.
    let servers = itg::app::connect(&config(&env, &[&a], "")).await.unwrap();
    let cap = itg::app::capacity(&servers).await.unwrap();
    assert!(
        cap[0].foreign_ports.contains(&pb),
        "resource manager {} counts {}'s listener on {pb} as its own: foreign {:?}",
        a.name,
        b.name,
        cap[0].foreign_ports
    );

    ma.ended(&ida).await;
    mb.ended(&idb).await;
    ra.first(30, &ida, "removed").await;
    rb.first(30, &idb, "removed").await;
    let left = listeners(&env, &a).await;
    assert!(
        !left.contains_key(&name_a) && !left.contains_key(&name_b),
        "{left:?}"
    );
    wa.stop().await;
    wb.stop().await;
    common::delete_namespace(&env.kube().await, &b.task_ns).await;
    a.teardown(&env).await;
}
