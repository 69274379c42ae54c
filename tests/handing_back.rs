//! Handing ports back, pass against pass: a pass that decided to give an allocation's ports back from a
//! record that has moved since must change nothing, whichever branch decided it (the data plane probe, a
//! conflicted listener, a port refused on apply); a probe cut short by an `ended` marks no port unserved;
//! the probe's deadline counts from when the ports were bound; and in a pool, what was given back on one
//! Gateway is withdrawn there. The passes are ordered with pauses on in-memory seams, so each test prints
//! the same thing on every run.

mod mem;

use itg::contract::EventKind;
use itg::readiness::Verdict;
use itg::store::encode;
use mem::*;

/// Another allocation whose claim lands on a port the moment it is freed.
const OTHER: &str = "2a0000ff.1";

/// What the test prints and checks after a stale pass ran: the stale pass's answer, where A's listener
/// stands, and who holds the port A was made ready on.
fn report(
    what: &str,
    fresh: &itg::answers::Handled,
    late: &itg::answers::Handled,
    gw: &MemCluster,
    store: &MemStore,
    h: &itg::worker::Handler<MemStore, MemCluster>,
    a: &str,
) {
    let p = port(&addresses(fresh)[0]);
    let key = h.rm().port_key(&h.rm().pool[0].gateway, p);
    let holder = store.claims().get(&key).cloned();
    let late_addresses = (kind_of(late) == "ready").then(|| addresses(late));
    let rec = store.record("rm", a);
    println!(
        "{what}: fresh ready {:?}; stale pass answered {} {:?}; A's listener on {:?}; port {p} held by {holder:?}; record {:?} on {:?}",
        addresses(fresh),
        kind_of(late),
        late_addresses,
        gw.port_of(a, "jupyter"),
        rec.phase,
        rec.ports.iter().map(|b| b.gateway_port).collect::<Vec<_>>()
    );
    if let Some(l) = late_addresses {
        assert_eq!(l, addresses(fresh), "A was answered ready on two addresses");
    }
    assert_eq!(
        gw.port_of(a, "jupyter"),
        Some(p),
        "A's listener left its port"
    );
    assert_eq!(
        holder.as_deref(),
        Some(itg::names::allocation_key("rm", a).as_str()),
        "A's port was freed and taken"
    );
    assert_eq!(rec.ports.len(), 1);
    assert_eq!(
        rec.ports[0].gateway_port, p,
        "A's record moved to another port"
    );
}

#[tokio::test]
async fn a_probe_that_saw_the_port_refused_gives_nothing_back_once_another_pass_made_it_ready() {
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
        "grace: 100ms",
        "",
    );
    let a = "2a000001.1";
    let (reached, resume) = pause();
    *plane.hold.lock().unwrap() = Some((reached.clone(), resume.clone()));
    let stale = {
        let (h, body) = (h.clone(), started(a));
        tokio::spawn(async move { h.handle(EventKind::Started, &body).await })
    };
    // The first pass probes A's port at the revision that recorded it; a duplicate with another event id
    // makes A ready on it meanwhile.
    reached.notified().await;
    let fresh = h.handle(EventKind::Started, &started(a)).await;
    assert_eq!(kind_of(&fresh), "ready", "{fresh:?}");
    let p = port(&addresses(&fresh)[0]);
    // The first pass's probe now sees the port refused through the grace; the moment the port's claim is
    // freed another allocation claims it.
    plane.refuse("*", p);
    let key = h.rm().port_key(&h.rm().pool[0].gateway, p);
    *store.after_delete.lock().unwrap() = Some((key, claim_of("rm", OTHER, "jupyter")));
    resume.notify_one();
    let late = stale.await.unwrap();
    report("probe", &fresh, &late, &gw, &store, &h, a);
}

#[tokio::test]
async fn a_conflict_seen_by_a_stale_pass_gives_nothing_back_once_another_pass_made_it_ready() {
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
    let a = "2a000002.1";
    *gw.verdict.lock().unwrap() = Verdict::Pending("listener not programmed yet".into());
    let stale = {
        let (h, body) = (h.clone(), started(a));
        tokio::spawn(async move { h.handle(EventKind::Started, &body).await })
    };
    // The first pass waits for the controller at the revision that recorded A's port.
    gw.waiting.notified().await;
    *gw.verdict.lock().unwrap() = Verdict::Reachable;
    let fresh = h.handle(EventKind::Started, &started(a)).await;
    assert_eq!(kind_of(&fresh), "ready", "{fresh:?}");
    let p = port(&addresses(&fresh)[0]);
    // Then the controller calls A's listener conflicted, and the waiting pass sees it.
    let key = h.rm().port_key(&h.rm().pool[0].gateway, p);
    *store.after_delete.lock().unwrap() = Some((key, claim_of("rm", OTHER, "jupyter")));
    gw.conflicted_ports.lock().unwrap().insert(p);
    gw.tick();
    let late = stale.await.unwrap();
    gw.conflicted_ports.lock().unwrap().clear();
    report("conflicted", &fresh, &late, &gw, &store, &h, a);
}

#[tokio::test]
async fn a_port_refused_on_a_stale_apply_gives_nothing_back_once_another_pass_made_it_ready() {
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
    let a = "2a000003.1";
    let (paused, resume) = pause();
    *gw.pause.lock().unwrap() = Some((a.to_owned(), (paused.clone(), resume.clone())));
    let stale = {
        let (h, body) = (h.clone(), started(a));
        tokio::spawn(async move { h.handle(EventKind::Started, &body).await })
    };
    // The first pass is about to apply A's listener at the revision that recorded its port.
    paused.notified().await;
    let fresh = h.handle(EventKind::Started, &started(a)).await;
    assert_eq!(kind_of(&fresh), "ready", "{fresh:?}");
    let p = port(&addresses(&fresh)[0]);
    // Its apply is then refused: a listener nobody claims stands on the port.
    gw.stray("2a0000fe.1", p);
    let key = h.rm().port_key(&h.rm().pool[0].gateway, p);
    *store.after_delete.lock().unwrap() = Some((key, claim_of("rm", OTHER, "jupyter")));
    resume.notify_one();
    let late = stale.await.unwrap();
    gw.withdraw_stray("2a0000fe.1");
    report("capacity", &fresh, &late, &gw, &store, &h, a);
}

#[tokio::test]
async fn an_ended_during_a_probe_does_not_mark_the_freed_port_unserved() {
    let (store, gw, plane) = (
        MemStore::default(),
        MemCluster::default(),
        MemDataPlane::default(),
    );
    let h = handler(
        &store,
        std::slice::from_ref(&gw),
        &plane,
        40001,
        "grace: 100ms",
        "",
    );
    let a = "2a000004.1";
    let (reached, resume) = pause();
    *plane.hold.lock().unwrap() = Some((reached.clone(), resume.clone()));
    let probing = {
        let (h, body) = (h.clone(), started(a));
        tokio::spawn(async move { h.handle(EventKind::Started, &body).await })
    };
    reached.notified().await;
    let p = store.record("rm", a).ports[0].gateway_port;
    // The ended withdraws the listener the probe connects to, so its port refuses from now on.
    assert_eq!(
        kind_of(&h.handle(EventKind::Ended, &ended(a)).await),
        "removed"
    );
    plane.refuse("*", p);
    resume.notify_one();
    let answer = probing.await.unwrap();
    plane.refused.lock().unwrap().clear();
    // On a two-port range, a port wrongly avoided shows as every later allocation landing on the other.
    let mut on_p = 0;
    for i in 0..20 {
        let b = format!("2a000004.{}", i + 2);
        let ready = serve(&h, EventKind::Started, &started(&b)).await;
        if port(&addresses(&ready)[0]) == p {
            on_p += 1;
        }
        assert_eq!(
            kind_of(&serve(&h, EventKind::Ended, &ended(&b)).await),
            "removed"
        );
    }
    println!(
        "ended during the probe: the probing pass answered {}; later allocations on the freed port {p}: {on_p} of 20",
        kind_of(&answer)
    );
    assert!(
        on_p > 0,
        "port {p} was marked unserved by a probe an ended cut short"
    );
}

#[tokio::test]
async fn the_probe_deadline_counts_from_when_the_ports_were_bound_not_from_the_record() {
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
        "grace: 100ms",
        "",
    );
    let a = "2a000005.1";
    // The started waited five minutes for a port (its record was created then) before one was free.
    let body = started(a);
    let Ok(itg::contract::Event::Started(ev)) =
        itg::contract::decode_event(EventKind::Started, &body)
    else {
        panic!("a started")
    };
    let now = jiff::Timestamp::now().as_second();
    let itg::state::StartedStep::Create(rec) = itg::state::on_started(None, "rm", &ev, now - 300)
    else {
        panic!("a new record")
    };
    store.put(&itg::names::allocation_key("rm", a), encode(&*rec));
    // The first port it gets is one envoy could not bind; the others are served.
    plane
        .refuse_first
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let answer = serve(&h, EventKind::Started, &body).await;
    let refused: Vec<u16> = plane
        .refused
        .lock()
        .unwrap()
        .iter()
        .map(|(_, p)| *p)
        .collect();
    println!(
        "a started that waited 300 s for a port, its first port refused {refused:?}: answered {} {}",
        kind_of(&answer),
        if kind_of(&answer) == "ready" {
            format!("{:?}", addresses(&answer))
        } else {
            format!("{answer:?}")
        }
    );
    assert_eq!(kind_of(&answer), "ready", "{answer:?}");
    assert!(!refused.contains(&port(&addresses(&answer)[0])));
}

#[tokio::test]
async fn in_a_pool_a_port_given_back_on_one_gateway_is_withdrawn_there_by_the_ended() {
    let (store, gw0, gw1, plane) = (
        MemStore::default(),
        MemCluster::default(),
        MemCluster::default(),
        MemDataPlane::default(),
    );
    // The second Gateway has less room, so the allocation goes to the first.
    gw1.foreign.lock().unwrap().extend(40000..=40004);
    let h = handler(
        &store,
        &[gw0.clone(), gw1.clone()],
        &plane,
        40009,
        "grace: 100ms",
        "",
    );
    let a = "2a000006.1";
    plane
        .refuse_first
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let first = h.handle(EventKind::Started, &started(a)).await;
    assert_eq!(kind_of(&first), "retry", "{first:?}");
    let rec = store.record_json("rm", a);
    let given_back = rec["given_back"].as_array().unwrap();
    assert_eq!(given_back.len(), 1, "{rec}");
    let p = u16::try_from(given_back[0]["gateway_port"].as_u64().unwrap()).unwrap();
    // The first Gateway fills up, so the allocation is placed again on the second; meanwhile a late apply
    // of the pass that gave the port back lands on the first.
    gw0.foreign.lock().unwrap().extend(40000..=40007);
    gw0.stray(a, p);
    let ready = serve(&h, EventKind::Started, &started(a)).await;
    assert_eq!(kind_of(&ready), "ready", "{ready:?}");
    assert!(addresses(&ready)[0].starts_with(GW1_IP), "{ready:?}");
    assert_eq!(
        kind_of(&serve(&h, EventKind::Ended, &ended(a)).await),
        "removed"
    );
    let (left0, left1) = (gw0.objects_of(a), gw1.objects_of(a));
    println!(
        "given back on the first Gateway (port {p}), ready on the second, then ended: left on the first {left0:?}, on the second {left1:?}"
    );
    assert!(left0.is_empty() && left1.is_empty());
}
