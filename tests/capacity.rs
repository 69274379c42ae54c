//! Capacity: ports and listener slots run out, allocations wait for them, and a deadline turns waiting into
//! `capacity_exhausted`. Also several resource managers served by one worker. Real servers throughout.

mod common;

use std::collections::BTreeSet;

use common::{Env, Master, Replies, Scenario, TestRm, Worker, alloc, config, observe};

#[tokio::test]
async fn a_four_port_range_exhausted_then_released_serves_the_waiting_allocation() {
    let s = Scenario::start("cap", (41000, 41003), "").await;
    let (rm, master, replies) = (&s.rm, &s.master, &s.replies);
    let first: Vec<String> = (0..4).map(|_| alloc()).collect();
    for a in &first {
        master.started(a, &rm.task_ns, &[("jupyter", 8888)]).await;
    }
    let mut ports = BTreeSet::new();
    for a in &first {
        ports.extend(replies.first(30, a, "ready").await.ports());
    }
    assert_eq!(ports, (41000..=41003).collect());
    let waiting = alloc();
    master
        .started(&waiting, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        replies.for_alloc(&waiting).is_empty(),
        "no port is free, so no answer yet: {:?}",
        replies.for_alloc(&waiting)
    );
    master.ended(&first[2]).await;
    let freed = replies.first(30, &first[2], "removed").await.body["released"][0]["gateway_port"]
        .as_u64()
        .unwrap();
    let ready = replies.first(30, &waiting, "ready").await;
    assert_eq!(
        ready.ports(),
        vec![freed as u16],
        "the waiting allocation gets the freed port"
    );
    s.finish().await;
}

#[tokio::test]
async fn waiting_past_the_capacity_deadline_answers_capacity_exhausted_and_leaves_nothing() {
    let s = Scenario::start("dl", (41100, 41101), "  capacity_deadline: 2s\n").await;
    let (env, rm, master, replies) = (&s.env, &s.rm, &s.master, &s.replies);
    s.ready_one(&[("jupyter", 8888), ("tensorboard", 6006)])
        .await;
    let late = alloc();
    master
        .started(&late, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    let failed = replies.first(30, &late, "failed").await;
    assert_eq!(failed.body["reason"], "capacity_exhausted");
    assert_eq!(failed.body["retryable"], true);
    assert!(
        failed.body["message"]
            .as_str()
            .unwrap()
            .contains("41100-41101"),
        "{}",
        failed.body["message"]
    );
    let o = observe(env, rm).await;
    assert_eq!(
        o.claims.len(),
        2,
        "only the holder's ports are claimed: {o:?}"
    );
    assert_eq!(o.listeners.len(), 2);
    // The same started again gets the same answer; it is not exposed later by surprise.
    master
        .started(&late, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    replies
        .wait(30, "a second failed", |r| {
            r.iter()
                .filter(|s| s.alloc() == Some(late.as_str()) && s.kind == "failed")
                .count()
                == 2
        })
        .await;
    s.finish().await;
}

#[tokio::test]
async fn the_listener_limit_makes_allocations_wait_even_with_free_ports() {
    let env = Env::load();
    let mut rm = TestRm::new(&env, "ll", (41200, 41299)).await;
    // The placeholder takes one of three slots: two allocations fit.
    rm.extra = "    listener_limit: 3\n".into();
    let w = Worker::start(config(&env, &[&rm], "  capacity_deadline: 3s\n")).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let allocs: Vec<String> = (0..3).map(|_| alloc()).collect();
    for a in &allocs[..2] {
        master.started(a, &rm.task_ns, &[("jupyter", 8888)]).await;
        replies.first(30, a, "ready").await;
    }
    master
        .started(&allocs[2], &rm.task_ns, &[("jupyter", 8888)])
        .await;
    let failed = replies.first(30, &allocs[2], "failed").await;
    assert_eq!(failed.body["reason"], "capacity_exhausted");
    assert!(
        failed.body["message"]
            .as_str()
            .unwrap()
            .contains("listeners"),
        "{}",
        failed.body["message"]
    );
    assert_eq!(observe(&env, &rm).await.listeners.len(), 2);
    w.stop().await;
    rm.teardown(&env).await;
}

#[tokio::test]
async fn two_resource_managers_on_two_gateways_are_served_independently_by_one_worker() {
    let env = Env::load();
    let full = TestRm::new(&env, "rma", (41300, 41300)).await;
    let free = TestRm::new(&env, "rmb", (41300, 41310)).await;
    let w = Worker::start(config(&env, &[&full, &free], "")).await;
    let (ma, mb) = (
        Master::new(&env, &full.name).await,
        Master::new(&env, &free.name).await,
    );
    let (ra, rb) = (
        Replies::watch(&env, &full.name).await,
        Replies::watch(&env, &free.name).await,
    );
    let a1 = alloc();
    ma.started(&a1, &full.task_ns, &[("jupyter", 8888)]).await;
    assert_eq!(ra.first(30, &a1, "ready").await.ports(), vec![41300]);
    // rm A is now full: its next allocation waits, and rm B is served meanwhile, on the same port number
    // because it is another Gateway.
    let a2 = alloc();
    ma.started(&a2, &full.task_ns, &[("jupyter", 8888)]).await;
    let bs: Vec<String> = (0..3).map(|_| alloc()).collect();
    for b in &bs {
        mb.started(b, &free.task_ns, &[("jupyter", 8888)]).await;
    }
    for b in &bs {
        let r = rb.first(30, b, "ready").await;
        assert_eq!(r.body["gateway"]["name"], free.gateway.as_str());
        assert_eq!(r.body["resource_manager"], free.name.as_str());
    }
    assert!(
        ra.for_alloc(&a2).is_empty(),
        "rm A's second allocation still waits"
    );
    ma.ended(&a1).await;
    assert_eq!(ra.first(30, &a2, "ready").await.ports(), vec![41300]);
    let (oa, ob) = (observe(&env, &full).await, observe(&env, &free).await);
    assert_eq!(oa.listeners.len(), 1);
    assert_eq!(ob.listeners.len(), 3);
    w.stop().await;
    full.teardown(&env).await;
    free.teardown(&env).await;
}

#[tokio::test]
async fn an_allocation_gets_all_its_ports_or_none_while_it_waits() {
    let s = Scenario::start("aon", (41400, 41402), "").await;
    let (env, rm, master, replies) = (&s.env, &s.rm, &s.master, &s.replies);
    let (holder, _) = s
        .ready_one(&[("jupyter", 8888), ("tensorboard", 6006)])
        .await;
    // Two ports wanted, one free: the allocation waits holding nothing.
    let both = alloc();
    master
        .started(
            &both,
            &rm.task_ns,
            &[("jupyter", 8888), ("tensorboard", 6006)],
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let o = observe(env, rm).await;
    assert_eq!(
        o.claims.len(),
        2,
        "the waiting allocation claims no port: {o:?}"
    );
    let holder_key = itg::names::allocation_key(&rm.name, &holder);
    assert!(o.claims.values().all(|owner| *owner == holder_key), "{o:?}");
    master.ended(&holder).await;
    let ready = replies.first(30, &both, "ready").await;
    assert_eq!(ready.ports().len(), 2);
    s.finish().await;
}

#[tokio::test]
async fn a_port_refused_by_the_gateway_is_given_back_and_avoided_and_the_allocation_is_served() {
    let s = Scenario::start(
        "refused",
        (42600, 42602),
        "  capacity_deadline: 90s\n  reconcile_interval: 1h\n",
    )
    .await;
    let (env, rm, master, replies) = (&s.env, &s.rm, &s.master, &s.replies);
    let (holder, ready) = s.ready_one(&[("jupyter", 8888)]).await;
    let held = ready.ports()[0];
    let free: Vec<u16> = (42600..=42602).filter(|p| *p != held).collect();
    // A listener no claim accounts for (left by a crash, say) on one of the two free ports: the Gateway
    // refuses a second listener there with a 422.
    let stray = itg::names::object_name(&rm.name, "stray.1", "jupyter");
    let body = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": { "name": rm.gateway, "namespace": rm.gateway_ns },
        "spec": { "listeners": [{ "name": stray, "port": free[0], "protocol": "TCP" }] }
    });
    kube::Api::<gateway_api::experimental::gateways::Gateway>::namespaced(
        env.kube().await,
        &rm.gateway_ns,
    )
    .patch(
        &rm.gateway,
        &kube::api::PatchParams::apply(&itg::names::listener_field_manager(&rm.name, &stray)),
        &kube::api::Patch::Apply(&body),
    )
    .await
    .expect("stray listener");
    // Two ports wanted, two look free: the search must take the refused one.
    let both = alloc();
    master
        .started(
            &both,
            &rm.task_ns,
            &[("jupyter", 8888), ("tensorboard", 6006)],
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let o = observe(env, rm).await;
    let holder_key = itg::names::allocation_key(&rm.name, &holder);
    assert!(
        o.claims.values().all(|owner| *owner == holder_key),
        "the refused allocation still holds ports while it waits: {o:?}"
    );
    assert_eq!(o.services.len(), 1, "{o:?}");
    assert!(replies.for_alloc(&both).is_empty());
    master.ended(&holder).await;
    replies.first(30, &holder, "removed").await;
    let answer = replies
        .wait(60, "an answer to the waiting allocation", |r| {
            r.iter().any(|x| x.alloc() == Some(both.as_str()))
        })
        .await;
    let answer = answer
        .iter()
        .find(|x| x.alloc() == Some(both.as_str()))
        .unwrap();
    assert_eq!(answer.kind, "ready", "{}", answer.body);
    let mut ports = answer.ports();
    ports.sort_unstable();
    let mut expected = vec![held, free[1]];
    expected.sort_unstable();
    assert_eq!(ports, expected, "the refused port {} is avoided", free[0]);
    s.finish().await;
}
