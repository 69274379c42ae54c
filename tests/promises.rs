//! The contract's promises 1 to 7, each proven against the real servers with in-process workers.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::history::{History, ListenerMode, Watched};
use common::{Env, Master, Replies, Scenario, TestRm, Worker, alloc, config, observe};
use itg::contract::EventKind;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use uuid::Uuid;

/// Promise 1 and 2 under load: two workers, 200 allocations with every started published twice. A history
/// checker watches the port keys and the Gateway throughout: no port has two live holders at any instant,
/// not only at the end of each wave.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_200_allocations_with_duplicates_never_share_a_port() {
    two_workers_200(ListenerMode::Gateway, (40000, 40099)).await;
}

/// The same in `listener_mode: listenerset`, where the listeners are in a ListenerSet per allocation and
/// the checker watches the sets attached to the Gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_listenerset_mode_two_workers_200_allocations_with_duplicates_never_share_a_port() {
    two_workers_200(ListenerMode::ListenerSet, (40100, 40199)).await;
}

async fn two_workers_200(mode: ListenerMode, range: (u16, u16)) {
    let env = Env::load();
    let mut rm = TestRm::new(&env, "p1", range).await;
    if mode == ListenerMode::ListenerSet {
        rm.extra.push_str("    listener_mode: listenerset\n");
    }
    let history = History::start_with_modes(
        &env,
        "ITG_STATE",
        vec![(
            Watched {
                rm: rm.name.clone(),
                gateway_ns: rm.gateway_ns.clone(),
                gateway: rm.gateway.clone(),
            },
            mode,
        )],
    )
    .await;
    let cfg = config(&env, &[&rm], "");
    let (w1, w2) = (Worker::start(cfg.clone()).await, Worker::start(cfg).await);
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let allocs: Vec<String> = (0..200).map(|_| alloc()).collect();
    let mut started_ids = Vec::new();
    // Waves of 50: 50 live allocations fit under the 64-listener cap with the placeholder.
    for wave in allocs.chunks(50) {
        for a in wave {
            started_ids.push(master.started(a, &rm.task_ns, &[("jupyter", 8888)]).await);
            started_ids.push(master.started(a, &rm.task_ns, &[("jupyter", 8888)]).await);
        }
        replies
            .wait(120, "ready for the wave", |r| {
                wave.iter()
                    .all(|a| r.iter().any(|s| s.alloc() == Some(a) && s.kind == "ready"))
            })
            .await;
        // While they are live: no port held twice, and Kubernetes matches KV exactly.
        let o = observe(&env, &rm).await;
        let live: BTreeMap<u16, String> = wave
            .iter()
            .map(|a| {
                let ready = replies
                    .for_alloc(a)
                    .into_iter()
                    .find(|s| s.kind == "ready")
                    .unwrap();
                (ready.ports()[0], a.clone())
            })
            .collect();
        assert_eq!(
            live.len(),
            wave.len(),
            "two live allocations got the same port"
        );
        assert_eq!(
            o.claims.keys().copied().collect::<BTreeSet<_>>(),
            live.keys().copied().collect(),
            "KV claims = ready ports"
        );
        assert_eq!(
            o.listeners.values().copied().collect::<BTreeSet<_>>(),
            live.keys().copied().collect(),
            "listeners = ready ports"
        );
        assert_eq!(o.services.len(), wave.len());
        assert_eq!(o.routes.len(), wave.len());
        for a in wave {
            master.ended(a).await;
        }
        replies
            .wait(120, "removed for the wave", |r| {
                wave.iter().all(|a| {
                    r.iter()
                        .any(|s| s.alloc() == Some(a) && s.kind == "removed")
                })
            })
            .await;
    }
    // Every started is answered; a duplicate served only after its allocation ended is refused, never exposed.
    let all = replies
        .wait(60, "an answer to every started", |r| {
            started_ids.iter().all(|id| {
                r.iter()
                    .any(|s| s.body["source_event_id"] == id.to_string() && s.kind != "removed")
            })
        })
        .await;
    for a in &allocs {
        let ready: Vec<_> = replies
            .for_alloc(a)
            .into_iter()
            .filter(|s| s.kind == "ready")
            .collect();
        let first = ready[0].addresses();
        assert!(
            ready.iter().all(|s| s.addresses() == first),
            "every ready of {a} carries the same addresses"
        );
        for f in replies.for_alloc(a).iter().filter(|s| s.kind == "failed") {
            assert!(
                f.body["message"]
                    .as_str()
                    .unwrap()
                    .contains("already ended"),
                "{a} failed: {:?}",
                f.body
            );
        }
    }
    assert!(all.iter().filter(|s| s.kind == "ready").count() >= allocs.len());
    let o = observe(&env, &rm).await;
    assert!(o.is_empty(), "leaked: {o:?}");
    let report = history.finish().await;
    println!(
        "two workers, 200 allocations ({mode:?} mode): {}",
        report.summary()
    );
    assert!(
        report.violations.is_empty(),
        "a port had two live holders:\n{}",
        report.violations.join("\n")
    );
    w1.stop().await;
    w2.stop().await;
    rm.teardown(&env).await;
}

/// Promise 2: a duplicated started (a new event id, same allocation) gets the same addresses.
#[tokio::test]
async fn repeated_started_gets_the_same_addresses() {
    let s = Scenario::start("p2", (40100, 40199), "").await;
    let (env, rm, master, replies) = (&s.env, &s.rm, &s.master, &s.replies);
    let a = alloc();
    master
        .started(&a, &rm.task_ns, &[("jupyter", 8888), ("tensorboard", 6006)])
        .await;
    let first = replies.first(30, &a, "ready").await;
    // A second started with other ports must not expose the allocation twice.
    let id = master.started(&a, &rm.task_ns, &[("shell", 2222)]).await;
    let again = replies
        .wait(30, "second ready", |r| {
            r.iter()
                .any(|s| s.body["source_event_id"] == id.to_string())
        })
        .await
        .into_iter()
        .find(|s| s.body["source_event_id"] == id.to_string())
        .unwrap();
    assert_eq!(again.kind, "ready");
    assert_eq!(again.addresses(), first.addresses());
    assert_eq!(first.addresses().len(), 2);
    assert!(
        first
            .addresses()
            .iter()
            .all(|a| a.contains("203.0.113.10:401")),
        "{:?}",
        first.addresses()
    );
    assert_eq!(observe(env, rm).await.listeners.len(), 2);
    s.finish().await;
}

/// Promise 3: an ended before its started leaves a tombstone; the late started exposes nothing.
#[tokio::test]
async fn ended_before_started_then_late_started_exposes_nothing() {
    let s = Scenario::start("p3", (40200, 40299), "").await;
    let (env, rm, master, replies) = (&s.env, &s.rm, &s.master, &s.replies);
    let a = alloc();
    master.ended(&a).await;
    let removed = replies.first(30, &a, "removed").await;
    assert_eq!(removed.body["released"], json!([]));
    master.started(&a, &rm.task_ns, &[("jupyter", 8888)]).await;
    let failed = replies.first(30, &a, "failed").await;
    assert_eq!(failed.body["reason"], "invalid_event");
    assert!(
        failed.body["message"]
            .as_str()
            .unwrap()
            .contains("already ended")
    );
    assert!(replies.for_alloc(&a).iter().all(|s| s.kind != "ready"));
    let o = observe(env, rm).await;
    assert!(
        o.listeners.is_empty() && o.services.is_empty() && o.claims.is_empty(),
        "{o:?}"
    );
    s.finish().await;
}

/// Promise 3 again: a started published after its allocation ended (and was cleaned up) exposes nothing.
#[tokio::test]
async fn late_started_after_ended_exposes_nothing() {
    let s = Scenario::start("p3b", (40300, 40399), "").await;
    let (env, rm, master, replies) = (&s.env, &s.rm, &s.master, &s.replies);
    let a = alloc();
    let first = master.started(&a, &rm.task_ns, &[("jupyter", 8888)]).await;
    replies.first(30, &a, "ready").await;
    master.ended(&a).await;
    replies.first(30, &a, "removed").await;
    // The very first started again, byte for byte with its event id, as the master's retry after the
    // duplicate window stores it: without a Nats-Msg-Id the stream keeps it without waiting two minutes.
    let body = itg::ctl::started_payload(
        first,
        &a,
        &rm.task_ns,
        &common::pods::task_selector(&a),
        &[("jupyter".to_owned(), 8888)],
    );
    master
        .publish_raw(EventKind::Started, None, serde_json::to_vec(&body).unwrap())
        .await;
    let failed = replies.first(30, &a, "failed").await;
    assert_eq!(failed.body["reason"], "invalid_event", "{:?}", failed.body);
    assert_eq!(failed.body["source_event_id"], first.to_string());
    assert!(
        failed.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already ended"),
        "{:?}",
        failed.body
    );
    let kinds: Vec<String> = replies.for_alloc(&a).into_iter().map(|s| s.kind).collect();
    assert_eq!(kinds, ["ready", "removed", "failed"]);
    let o = observe(env, rm).await;
    assert!(o.is_empty(), "{o:?}");
    s.finish().await;
}

/// Promise 4: after ended, nothing of the allocation remains, even when a worker was killed mid-way.
#[tokio::test]
async fn ended_removes_everything_even_after_a_worker_is_killed() {
    let env = Env::load();
    let rm = TestRm::new(&env, "p4", (40400, 40499)).await;
    // One event at a time, so that the batch takes a while and the kill lands inside it.
    let cfg = config(&env, &[&rm], "  concurrency: 1\n");
    let w1 = Worker::start(cfg.clone()).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let allocs: Vec<String> = (0..10).map(|_| alloc()).collect();
    for a in &allocs {
        master
            .started(a, &rm.task_ns, &[("jupyter", 8888), ("tensorboard", 6006)])
            .await;
    }
    // Kill the worker once it has answered some of the batch and not all: a fresh one picks up the rest.
    replies
        .wait(60, "a first ready", |r| r.iter().any(|s| s.kind == "ready"))
        .await;
    w1.kill();
    let at_kill = replies.all().iter().filter(|s| s.kind == "ready").count();
    assert!(
        (1..allocs.len()).contains(&at_kill),
        "the kill did not land mid-batch: {at_kill} of {} ready when it was killed",
        allocs.len()
    );
    println!("killed with {at_kill} of {} ready", allocs.len());
    let w2 = Worker::start(cfg).await;
    replies
        .wait(60, "all ready", |r| {
            allocs
                .iter()
                .all(|a| r.iter().any(|s| s.alloc() == Some(a) && s.kind == "ready"))
        })
        .await;
    for a in &allocs {
        master.ended(a).await;
    }
    replies
        .wait(60, "all removed", |r| {
            allocs.iter().all(|a| {
                r.iter()
                    .any(|s| s.alloc() == Some(a) && s.kind == "removed")
            })
        })
        .await;
    let o = observe(&env, &rm).await;
    assert!(o.is_empty(), "leaked: {o:?}");
    assert_eq!(o.foreign.len(), 1, "the placeholder stays");
    w2.stop().await;
    rm.teardown(&env).await;
}

/// Promise 5: publishing a started again repairs a deleted Service and changes nothing else.
#[tokio::test]
async fn republished_started_repairs_what_is_missing_and_changes_nothing_else() {
    let s = Scenario::start("p5", (40500, 40599), "").await;
    let (env, rm, master, replies) = (&s.env, &s.rm, &s.master, &s.replies);
    let a = alloc();
    master.started(&a, &rm.task_ns, &[("jupyter", 8888)]).await;
    let first = replies.first(30, &a, "ready").await;
    let before = observe(env, rm).await;
    let client = env.kube().await;
    let svc = &before.services[0];
    Api::<Service>::namespaced(client.clone(), &rm.task_ns)
        .delete(svc, &DeleteParams::default())
        .await
        .unwrap();
    let id = master.started(&a, &rm.task_ns, &[("jupyter", 8888)]).await;
    let again = replies
        .wait(30, "second ready", |r| {
            r.iter()
                .any(|s| s.body["source_event_id"] == id.to_string())
        })
        .await
        .into_iter()
        .find(|s| s.body["source_event_id"] == id.to_string())
        .unwrap();
    assert_eq!(again.addresses(), first.addresses());
    assert_eq!(
        observe(env, rm).await,
        before,
        "repaired to exactly the state before"
    );
    s.finish().await;
}

/// Promise 6: malformed events are answered `failed` and acknowledged; the events behind them are served.
#[tokio::test]
async fn malformed_events_are_answered_and_do_not_block_good_ones() {
    // One event at a time: an event held back would hold up every one behind it.
    let s = Scenario::start("p6", (40600, 40699), "  concurrency: 1\n").await;
    let (rm, master, replies) = (&s.rm, &s.master, &s.replies);
    let bad_alloc = alloc();
    master
        .publish_raw(EventKind::Started, None, b"{not json".to_vec())
        .await;
    let bad_ns = Uuid::new_v4();
    let body = json!({"schema_version": 1, "event_id": bad_ns, "allocation_id": bad_alloc, "namespace": "Not_A_Label",
        "pod_selector": {"a": "b"}, "proxy_ports": [{"name": "jupyter", "port": 8888}]});
    master
        .publish_raw(
            EventKind::Started,
            Some(bad_ns),
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    let denied = alloc();
    master
        .started(&denied, "kube-system", &[("jupyter", 8888)])
        .await;
    let good = alloc();
    master
        .started(&good, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    replies.first(30, &good, "ready").await;
    let all = replies
        .wait(30, "three failures", |r| {
            r.iter().filter(|s| s.kind == "failed").count() >= 3
        })
        .await;
    let failed: Vec<_> = all.iter().filter(|s| s.kind == "failed").collect();
    let unreadable = failed
        .iter()
        .find(|s| s.body["allocation_id"].is_null())
        .expect("a failed for the unreadable event");
    assert_eq!(unreadable.body["reason"], "invalid_event");
    assert_eq!(unreadable.body["source_event_id"], serde_json::Value::Null);
    let ns = failed
        .iter()
        .find(|s| s.alloc() == Some(&bad_alloc))
        .unwrap();
    assert_eq!(ns.body["reason"], "invalid_event");
    assert!(
        ns.body["message"].as_str().unwrap().contains("namespace"),
        "{}",
        ns.body["message"]
    );
    let d = failed.iter().find(|s| s.alloc() == Some(&denied)).unwrap();
    assert_eq!(d.body["reason"], "namespace_not_allowed");
    assert_eq!(d.body["retryable"], false);
    // Each bad event was answered on its first delivery, in order, before the good one behind it, and
    // every event was acknowledged: none waits for a redelivery.
    let order: Vec<(String, Option<String>)> = all
        .iter()
        .map(|s| (s.kind.clone(), s.alloc().map(str::to_owned)))
        .collect();
    assert_eq!(
        order,
        [
            ("failed".to_owned(), None),
            ("failed".to_owned(), Some(bad_alloc.clone())),
            ("failed".to_owned(), Some(denied.clone())),
            ("ready".to_owned(), Some(good.clone())),
        ],
        "the replies in stream order"
    );
    let js = async_nats::jetstream::new(s.env.nats().await);
    let mut c: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(itg::contract::EVENTS_STREAM)
        .await
        .unwrap()
        .get_consumer(&itg::names::consumer_name("itg-worker", &rm.name))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let info = loop {
        let info = c.info().await.unwrap().clone();
        if info.num_ack_pending == 0 || tokio::time::Instant::now() > deadline {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (
            info.num_pending,
            info.num_ack_pending,
            info.num_redelivered,
            info.delivered.consumer_sequence
        ),
        (0, 0, 0, 4),
        "four events, each delivered once and acknowledged: {info:?}"
    );
    s.finish().await;
}

/// Promise 7: a foreign listener inside the range keeps its port, and that port is never handed out.
#[tokio::test]
async fn a_foreign_listener_inside_the_range_is_left_alone_and_its_port_never_handed_out() {
    let env = Env::load();
    let rm = TestRm::new(&env, "p7", (40700, 40703)).await;
    let client = env.kube().await;
    let gws: Api<gateway_api::experimental::gateways::Gateway> =
        Api::namespaced(client.clone(), &rm.gateway_ns);
    let foreign = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": { "name": rm.gateway, "namespace": rm.gateway_ns },
        "spec": { "listeners": [{ "name": "ops-debug", "port": 40701, "protocol": "TCP" }] }
    });
    gws.patch(
        &rm.gateway,
        &PatchParams::apply("ops"),
        &Patch::Apply(&foreign),
    )
    .await
    .unwrap();
    let w = Worker::start(config(&env, &[&rm], "")).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let allocs: Vec<String> = (0..3).map(|_| alloc()).collect();
    for a in &allocs {
        master.started(a, &rm.task_ns, &[("jupyter", 8888)]).await;
    }
    let mut ports = BTreeSet::new();
    for a in &allocs {
        ports.extend(replies.first(30, a, "ready").await.ports());
    }
    assert_eq!(ports, BTreeSet::from([40700, 40702, 40703]));
    let o = observe(&env, &rm).await;
    assert_eq!(o.foreign.get("ops-debug"), Some(&40701));
    assert_eq!(o.foreign.get("placeholder"), Some(&39999));
    w.stop().await;
    rm.teardown(&env).await;
}

/// Promise 4 when the operator deleted the Gateway first: the ended still removes the Service, the route
/// and the port claim, and answers `removed`.
#[tokio::test]
async fn ended_completes_after_the_gateway_was_deleted() {
    let s = Scenario::start("p4gw", (40800, 40809), "").await;
    let (env, rm, master, replies) = (&s.env, &s.rm, &s.master, &s.replies);
    let a = alloc();
    master.started(&a, &rm.task_ns, &[("jupyter", 8888)]).await;
    replies.first(30, &a, "ready").await;
    let client = env.kube().await;
    let gws: Api<gateway_api::experimental::gateways::Gateway> =
        Api::namespaced(client, &rm.gateway_ns);
    gws.delete(&rm.gateway, &DeleteParams::default())
        .await
        .unwrap();
    master.ended(&a).await;
    let removed = replies.first(30, &a, "removed").await;
    assert_eq!(removed.body["released"].as_array().unwrap().len(), 1);
    let lp = kube::api::ListParams::default().labels(&itg::names::owned_selector(&rm.name));
    let svcs = Api::<Service>::namespaced(env.kube().await, &rm.task_ns)
        .list(&lp)
        .await
        .unwrap();
    assert!(
        svcs.items.is_empty(),
        "Services left: {:?}",
        svcs.items.len()
    );
    s.finish().await;
}

/// Every reply published for `rm` (a core subscription sees each publish, also one the stream drops as a
/// duplicate): (kind, Nats-Msg-Id, source event id).
async fn published(
    env: &Env,
    rm: &str,
) -> std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>> {
    let nats = env.nats().await;
    let mut sub = nats.subscribe(format!("itg.replies.{rm}.>")).await.unwrap();
    nats.flush().await.unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        let _keep = nats;
        while let Some(m) = futures::StreamExt::next(&mut sub).await {
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            let kind = m.subject.rsplit('.').next().unwrap_or("").to_owned();
            let source = body["source_event_id"].as_str().unwrap_or("").to_owned();
            sink.lock().unwrap().push((kind, id, source));
        }
    });
    seen
}

/// The contract's reply message ids: the same outcome of the same event, published twice (the event
/// stored twice, as a redelivery or a second worker serves it), carries one `Nats-Msg-Id` and is stored
/// once; a new event about the same allocation gets an id of its own and is stored too.
#[tokio::test]
async fn the_same_outcome_of_one_event_is_published_under_one_message_id_and_stored_once() {
    let s = Scenario::start("p8", (40900, 40909), "").await;
    let (rm, master, replies) = (&s.rm, &s.master, &s.replies);
    let published = published(&s.env, &rm.name).await;
    let a = alloc();
    let first = master.started(&a, &rm.task_ns, &[("jupyter", 8888)]).await;
    replies.first(30, &a, "ready").await;
    // The very same started again, without a Nats-Msg-Id, so that the events stream keeps it.
    let body = itg::ctl::started_payload(
        first,
        &a,
        &rm.task_ns,
        &common::pods::task_selector(&a),
        &[("jupyter".to_owned(), 8888)],
    );
    master
        .publish_raw(EventKind::Started, None, serde_json::to_vec(&body).unwrap())
        .await;
    // A new started of the same allocation: a new event, a reply of its own.
    let second = master.started(&a, &rm.task_ns, &[("jupyter", 8888)]).await;
    replies
        .wait(30, "the second started's ready", |r| {
            r.iter()
                .any(|s| s.body["source_event_id"] == second.to_string())
        })
        .await;
    let wait = tokio::time::Instant::now() + Duration::from_secs(30);
    while published.lock().unwrap().len() < 3 {
        assert!(
            tokio::time::Instant::now() < wait,
            "{:?}",
            published.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = published.lock().unwrap().clone();
    let of = |id: Uuid| -> Vec<String> {
        seen.iter()
            .filter(|(k, _, src)| k == "ready" && *src == id.to_string())
            .map(|(_, m, _)| m.clone())
            .collect()
    };
    let (firsts, seconds) = (of(first), of(second));
    println!("published readies: first event {firsts:?}, second event {seconds:?}");
    assert_eq!(
        firsts.len(),
        2,
        "the first event was served twice: {seen:?}"
    );
    assert_eq!(firsts[0], firsts[1], "one outcome, two message ids");
    assert!(firsts[0].starts_with("ready-"), "{}", firsts[0]);
    assert_eq!(seconds.len(), 1, "{seen:?}");
    assert_ne!(
        seconds[0], firsts[0],
        "a new event shares the first one's message id"
    );
    // Stored: one ready per event.
    let stored: Vec<String> = replies
        .for_alloc(&a)
        .iter()
        .filter(|s| s.kind == "ready")
        .map(|s| s.body["source_event_id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(stored, [first.to_string(), second.to_string()]);
    s.finish().await;
}
