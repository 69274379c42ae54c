//! Where an allocation is placed, and that it keeps its address: a replay after the KV bucket was lost
//! gives each live allocation the address it had (on one Gateway and in a pool) even while new allocations
//! are served beside it; a pool Gateway whose data plane serves nothing takes no allocation; and a listener
//! a stale pass moved off its allocation's port is put back by the reconciler. In-memory seams, passes
//! ordered with pauses, so each test prints the same thing on every run.

mod mem;

use std::time::Duration;

use itg::contract::EventKind;
use itg::reconciler::Reconciler;
use mem::*;

#[tokio::test]
async fn a_replay_after_the_bucket_was_lost_keeps_a_live_allocation_s_address_beside_a_new_one() {
    let (store, gw, plane) = (
        MemStore::default(),
        MemCluster::default(),
        MemDataPlane::default(),
    );
    let h = handler(
        &store,
        std::slice::from_ref(&gw),
        &plane,
        40009,
        "enabled: false",
        "",
    );
    let (b, c) = ("3b000001.1", "3b000001.2");
    let before = serve(&h, EventKind::Started, &started(b)).await;
    let p = port(&addresses(&before)[0]);
    // The bucket is lost; B's objects stand. Every other port of the range is taken by others' listeners,
    // so the only port that looks free to a new allocation is B's.
    store.clear();
    gw.foreign
        .lock()
        .unwrap()
        .extend((40000..=40009).filter(|x| *x != p));
    // The replay serves a new allocation C first; B's replayed started is served while C's pass is on its
    // way to the Gateway.
    let (paused, resume) = pause();
    *gw.pause.lock().unwrap() = Some((c.to_owned(), (paused.clone(), resume.clone())));
    let mut first = {
        let (h, body) = (h.clone(), started(c));
        tokio::spawn(async move { h.handle(EventKind::Started, &body).await })
    };
    let c_done = tokio::select! {
        () = paused.notified() => None,
        done = &mut first => Some(done.unwrap()),
    };
    let after = h.handle(EventKind::Started, &started(b)).await;
    resume.notify_one();
    let c_answer = match c_done {
        Some(done) => done,
        None => first.await.unwrap(),
    };
    let after_addresses = (kind_of(&after) == "ready").then(|| addresses(&after));
    println!(
        "bucket lost: B was ready on {:?}; C (served first) answered {}; B's replayed started answered {} {after_addresses:?}",
        addresses(&before),
        kind_of(&c_answer),
        kind_of(&after)
    );
    assert_eq!(
        after_addresses,
        Some(addresses(&before)),
        "B's address changed: {after:?}"
    );
}

#[tokio::test]
async fn in_a_pool_a_replay_after_the_bucket_was_lost_keeps_the_gateway_and_port_of_a_live_allocation()
 {
    let (store, gw0, gw1, plane) = (
        MemStore::default(),
        MemCluster::default(),
        MemCluster::default(),
        MemDataPlane::default(),
    );
    // The first Gateway is nearly full, so B goes to the second.
    gw0.foreign.lock().unwrap().extend(40000..=40007);
    let h = handler(
        &store,
        &[gw0.clone(), gw1.clone()],
        &plane,
        40009,
        "enabled: false",
        "",
    );
    let b = "3b000002.1";
    let before = serve(&h, EventKind::Started, &started(b)).await;
    assert!(addresses(&before)[0].starts_with(GW1_IP), "{before:?}");
    // The bucket is lost, and the first Gateway has room again: it is now the roomiest.
    store.clear();
    gw0.foreign.lock().unwrap().retain(|p| *p == 39999);
    let after = serve(&h, EventKind::Started, &started(b)).await;
    println!(
        "pool, bucket lost: B was ready on {:?}; its replayed started answered {} {:?}",
        addresses(&before),
        kind_of(&after),
        addresses(&after)
    );
    assert_eq!(addresses(&after), addresses(&before));
    assert!(
        gw0.objects_of(b).is_empty(),
        "B was exposed on the first Gateway as well"
    );
}

#[tokio::test]
async fn a_pool_gateway_whose_data_plane_serves_nothing_takes_no_allocation() {
    let (store, gw0, gw1, plane) = (
        MemStore::default(),
        MemCluster::default(),
        MemCluster::default(),
        MemDataPlane::default(),
    );
    // The first Gateway has the most room, and its envoy is down: its controller still says programmed.
    gw1.foreign.lock().unwrap().extend(40000..=40004);
    for p in 40000..=40009 {
        plane.refuse(GW0_IP, p);
    }
    let h = handler(
        &store,
        &[gw0.clone(), gw1.clone()],
        &plane,
        40009,
        "grace: 100ms, deadline: 2s",
        "",
    );
    let mut answers = Vec::new();
    for i in 0..3 {
        let a = format!("3b000003.{i}");
        let answer = serve(&h, EventKind::Started, &started(&a)).await;
        answers.push(if kind_of(&answer) == "ready" {
            format!("ready {:?}", addresses(&answer))
        } else {
            format!("{} {answer:?}", kind_of(&answer))
        });
    }
    println!("the first Gateway's data plane is down: {answers:#?}");
    for a in &answers {
        assert!(a.starts_with(&format!("ready [\"{GW1_IP}:")), "{a}");
    }
}

#[tokio::test]
async fn a_listener_moved_off_its_allocation_s_port_is_put_back_by_the_reconciler() {
    let (store, gw, plane) = (
        MemStore::default(),
        MemCluster::default(),
        MemDataPlane::default(),
    );
    let h = handler(
        &store,
        std::slice::from_ref(&gw),
        &plane,
        40009,
        "enabled: false",
        "",
    );
    let a = "3b000004.1";
    let ready = serve(&h, EventKind::Started, &started(a)).await;
    let q = port(&addresses(&ready)[0]);
    // A stale pass of A, from before A moved to q, applies A's listener on its old port and is killed.
    let p = if q == 40000 { 40001 } else { 40000 };
    gw.stray(a, p);
    let mut r = Reconciler::new(h.clone(), store.clone(), gw.clone(), Duration::ZERO);
    let actions = r.pass(false).await.unwrap();
    println!(
        "A ready on {q}, its listener moved to {p}: the reconciler did {actions:?}; the listener now stands on {:?}",
        gw.port_of(a, "jupyter")
    );
    assert_eq!(gw.port_of(a, "jupyter"), Some(q));
}
