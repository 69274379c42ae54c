//! Gateway pools: a resource manager that names several Gateways places each allocation's ports on one of
//! them, answers `ready` with that Gateway and its address, keeps claims per Gateway, and removes
//! everything from the Gateway that held it. Against the real apiserver (the controller-less class: in the
//! test servers every envoy binds the host's ports, so two Gateways of a pool could not share a port there;
//! tests/e2e.rs sends bytes through one Gateway in each listener mode).

mod common;

use std::collections::BTreeMap;

use common::{Env, Master, Replies, TestRm, Worker, config, make_gateway, observe, suffix};
use gateway_api::experimental::gateways::Gateway;
use kube::Api;
use kube::api::DeleteParams;

/// Listener name -> port on Gateway `name`, of the listeners the worker owns.
async fn owned_listeners(env: &Env, ns: &str, name: &str) -> BTreeMap<String, u16> {
    let gw = Api::<Gateway>::namespaced(env.kube().await, ns)
        .get(name)
        .await
        .expect("gateway");
    gw.spec
        .listeners
        .into_iter()
        .filter(|l| itg::names::is_owned_listener_name(&l.name))
        .map(|l| (l.name, l.port as u16))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_spread_over_the_pool_and_each_ready_names_its_gateway() {
    let env = Env::load();
    // Three ports per Gateway: six allocations fill both.
    let mut rm = TestRm::new(&env, "pool", (41300, 41302)).await;
    let second = format!("gw2-{}", suffix());
    make_gateway(&env.kube().await, &rm.gateway_ns, &second, 39999).await;
    rm.extra.push_str(&format!(
        "    gateway_pool:\n      - gateway_name: {second}\n        gateway_namespace: {}\n        gateway_ip: 203.0.113.11\n",
        rm.gateway_ns
    ));
    let worker = Worker::start(config(&env, &[&rm], "")).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;

    let allocs: Vec<String> = (0..6)
        .map(|i| format!("{}.{i}", uuid::Uuid::new_v4()))
        .collect();
    let mut placed: BTreeMap<String, Vec<(String, u16)>> = BTreeMap::new();
    for a in &allocs {
        master.started(a, &rm.task_ns, &[("jupyter", 8888)]).await;
        let ready = replies.first(60, a, "ready").await;
        let gw = ready.body["gateway"]["name"].as_str().unwrap().to_owned();
        let address = ready.addresses()[0].clone();
        let want_ip = if gw == rm.gateway {
            "203.0.113.10"
        } else {
            "203.0.113.11"
        };
        assert!(
            address.starts_with(&format!("jupyter={want_ip}:")),
            "ready on {gw} carries {address}"
        );
        placed
            .entry(gw)
            .or_default()
            .push((a.clone(), ready.ports()[0]));
    }
    println!(
        "pool: placed {:?}",
        placed.iter().map(|(g, v)| (g, v.len())).collect::<Vec<_>>()
    );
    assert_eq!(
        placed.len(),
        2,
        "both Gateways of the pool are used: {placed:?}"
    );
    assert!(placed.values().all(|v| v.len() == 3), "{placed:?}");
    // Each Gateway holds the listeners of its own allocations, and its claims are its own.
    for (gw, held) in &placed {
        let listeners = owned_listeners(&env, &rm.gateway_ns, gw).await;
        let mut want: BTreeMap<String, u16> = held
            .iter()
            .map(|(a, p)| (itg::names::object_name(&rm.name, a, "jupyter"), *p))
            .collect();
        assert_eq!(listeners, std::mem::take(&mut want), "listeners of {gw}");
        let js = async_nats::jetstream::new(env.nats().await);
        let kv = js.get_key_value("ITG_STATE").await.unwrap();
        for (a, p) in held {
            let key = itg::names::port_key(&rm.name, &rm.gateway_ns, gw, *p);
            let claim = kv.get(&key).await.unwrap().expect("claim on its Gateway");
            let claim: serde_json::Value = serde_json::from_slice(&claim).unwrap();
            assert_eq!(claim["allocation"], itg::names::allocation_key(&rm.name, a));
        }
    }
    // Full: a seventh waits for capacity (neither Gateway has a port).
    let capacity = itg::app::capacity(&itg::app::connect(&config(&env, &[&rm], "")).await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        capacity.len(),
        2,
        "one capacity row per Gateway: {capacity:?}"
    );
    assert!(
        capacity.iter().all(|c| c.free == 0 && c.claimed == 3),
        "{capacity:?}"
    );

    for a in &allocs {
        master.ended(a).await;
    }
    for a in &allocs {
        replies.first(60, a, "removed").await;
    }
    for gw in placed.keys() {
        assert_eq!(
            owned_listeners(&env, &rm.gateway_ns, gw).await,
            BTreeMap::new(),
            "{gw}"
        );
    }
    let left = observe(&env, &rm).await;
    assert!(left.is_empty(), "left behind: {left:#?}");
    let capacity = itg::app::capacity(&itg::app::connect(&config(&env, &[&rm], "")).await.unwrap())
        .await
        .unwrap();
    assert!(capacity.iter().all(|c| c.claimed == 0), "{capacity:?}");
    worker.stop().await;
    let _ = Api::<Gateway>::namespaced(env.kube().await, &rm.gateway_ns)
        .delete(&second, &DeleteParams::default())
        .await;
    rm.teardown(&env).await;
}
