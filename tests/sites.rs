//! Many sites, one master: the master publishes at a NATS hub, and each resource manager's worker runs
//! beside its own cluster on a leaf node with a JetStream domain of its own (`jetstream.hub_domain: hub`).
//! Real nats-servers (`scripts/testenv up --topology sites`), real apiservers, real worker processes; the
//! WAN link between a site and the hub is delayed and cut in the kernel.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::history::{History, Watched};
use common::process::WorkerProcess;
use common::sites::{self, Sites, Stored, WanGuard, site_yaml, stored_replies, wan};
use common::{Env, Master, TestRm, config_yaml, observe};
use itg::contract::EventKind;
use uuid::Uuid;

async fn ended_with(m: &Master, id: Uuid, alloc: &str) {
    let body = itg::ctl::ended_payload(id, alloc);
    m.publish_raw(
        EventKind::Ended,
        Some(id),
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
}

/// Polls the replies of `rm` stored at `env` until `done` holds of them; panics with them after `secs`.
async fn replies_until(
    env: &Env,
    rm: &str,
    secs: u64,
    what: &str,
    done: impl Fn(&[Stored]) -> bool,
) -> Vec<Stored> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let all = stored_replies(env, rm).await;
        if done(&all) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}; replies of {rm} so far: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (allocation, kind) -> how many replies of that kind it got.
fn counts(all: &[Stored]) -> BTreeMap<(String, String), usize> {
    let mut m = BTreeMap::new();
    for s in all {
        *m.entry((s.alloc().to_owned(), s.kind().to_owned()))
            .or_insert(0) += 1;
    }
    m
}

fn has(all: &[Stored], alloc: &str, kind: &str) -> bool {
    all.iter().any(|s| s.alloc() == alloc && s.kind() == kind)
}

fn site_worker(env: &Env, rms: &[&TestRm]) -> WorkerProcess {
    WorkerProcess::spawn(|admin| site_yaml(config_yaml(env, rms, "", admin)), &[])
}

/// Every key of the site's bucket that names `rm`.
async fn keys_naming(env: &Env, rm: &str) -> Vec<String> {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(env.nats().await);
    let Ok(kv) = js.get_key_value("ITG_STATE").await else {
        return Vec::new();
    };
    let mut keys = kv.keys().await.expect("keys");
    let mut out = Vec::new();
    while let Some(Ok(k)) = keys.next().await {
        if k.contains(rm) {
            out.push(k);
        }
    }
    out
}

/// Three lifecycles of `rm`, one after the other, published at `master` and answered where `replies` is
/// read. One port in the range and one at a time: every run picks the same port, so the replies of two
/// runs can be compared byte for byte.
async fn three_lifecycles(
    master: &Env,
    replies: &Env,
    rm: &TestRm,
    ids: &[(Uuid, Uuid)],
) -> Vec<Stored> {
    let m = Master::new(master, &rm.name).await;
    for (i, (started, ended)) in ids.iter().enumerate() {
        let a = format!("a{i}");
        m.started_with(*started, &a, &rm.task_ns, &[("http", 8080)])
            .await;
        replies_until(replies, &rm.name, 60, &format!("{a}'s ready"), |all| {
            has(all, &a, "ready")
        })
        .await;
        ended_with(&m, *ended, &a).await;
        replies_until(replies, &rm.name, 60, &format!("{a}'s removed"), |all| {
            has(all, &a, "removed")
        })
        .await;
    }
    stored_replies(replies, &rm.name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_answer_at_the_hub_with_the_payloads_and_ids_of_one_server() {
    let _wan = sites::WAN.lock().await;
    let s = Sites::load();
    let west = TestRm::new(&s.west, "west", (41000, 41000)).await;
    let east = TestRm::new(&s.east, "east", (41000, 41000)).await;
    let mut ww = site_worker(&s.west, &[&west]);
    let mut we = site_worker(&s.east, &[&east]);
    ww.ready(60).await;
    we.ready(60).await;

    // An event id is unique per published event (the hub drops a second one), so each resource manager
    // gets its own; west's are given to one server below.
    let fresh =
        || -> Vec<(Uuid, Uuid)> { (0..3).map(|_| (Uuid::new_v4(), Uuid::new_v4())).collect() };
    let ids = fresh();
    let hub = three_lifecycles(&s.hub, &s.hub, &west, &ids).await;
    let hub_east = three_lifecycles(&s.hub, &s.hub, &east, &fresh()).await;
    for (rm, site, all) in [(&west, &s.west, &hub), (&east, &s.east, &hub_east)] {
        assert_eq!(all.len(), 6, "{all:#?}");
        for ((alloc, kind), n) in counts(all) {
            assert_eq!(n, 1, "{alloc} got {n} {kind} at the hub: {all:#?}");
        }
        let left = observe(site, rm).await;
        assert!(left.is_empty(), "{} left {left:?}", rm.name);
    }

    // Each site's bucket holds only its own resource manager's keys.
    assert!(keys_naming(&s.west, &east.name).await.is_empty());
    assert!(keys_naming(&s.east, &west.name).await.is_empty());
    assert!(!keys_naming(&s.west, &west.name).await.is_empty());

    // Both resource managers in west's config by mistake: refused, since the hub sources east's from east.
    let mut both = site_worker(&s.west, &[&west, &east]);
    let status = both.exited(60).await;
    let log = both.log().join("\n");
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "resource manager {} is served at site east",
            east.name
        )),
        "{log}"
    );
    println!(
        "a west worker given east's resource manager too: refused ({})",
        log.lines()
            .find(|l| l.contains("is served at site"))
            .unwrap_or_default()
    );
    drop(ww);
    drop(we);

    // The same events for west's resource manager on one server: the same replies, ids and bodies.
    let one = Env::load();
    let mut w1 = WorkerProcess::spawn(|admin| config_yaml(&one, &[&west], "", admin), &[]);
    w1.ready(60).await;
    let single = three_lifecycles(&one, &one, &west, &ids).await;
    let key = |v: &[Stored]| {
        let mut v: Vec<(String, String, String)> = v
            .iter()
            .map(|r| (r.subject.clone(), r.msg_id.clone(), r.body.to_string()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        key(&hub),
        key(&single),
        "the hub's replies differ from one server's"
    );
    println!(
        "two sites: {} replies of {} and {} of {} at the hub, each once; west's have the subject, Nats-Msg-Id and body one server gives",
        hub.len(),
        west.name,
        hub_east.len(),
        east.name
    );
    drop(w1);
    west.teardown(&s.west).await;
    east.teardown(&s.east).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_wan_link_loses_nothing_and_answers_each_event_once_after_it_heals() {
    let _wan = sites::WAN.lock().await;
    let s = Sites::load();
    let _guard = WanGuard("west");
    wan(&["delay", "west", "50"]);
    let rm = TestRm::new(&s.west, "cut", (41100, 41131)).await;
    let history = History::start(
        &s.west,
        "ITG_STATE",
        vec![Watched {
            rm: rm.name.clone(),
            gateway_ns: rm.gateway_ns.clone(),
            gateway: rm.gateway.clone(),
        }],
    )
    .await;
    let mut w = site_worker(&s.west, &[&rm]);
    w.ready(60).await;
    let m = Master::new(&s.hub, &rm.name).await;
    let port = [("http", 8080)];

    // Live allocations before the cut.
    for i in 0..4 {
        m.started(&format!("live{i}"), &rm.task_ns, &port).await;
    }
    replies_until(
        &s.hub,
        &rm.name,
        60,
        "the live allocations' readies",
        |all| (0..4).all(|i| has(all, &format!("live{i}"), "ready")),
    )
    .await;

    // 30 s cut; events keep coming at the hub: new starteds, the live allocations' endeds, and one
    // allocation that starts and ends within the cut.
    wan(&["cut", "west"]);
    let cut_at = Instant::now();
    let mut during = Vec::new();
    for i in 0..5 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let a = format!("during{i}");
        m.started(&a, &rm.task_ns, &port).await;
        during.push(a);
        if i < 4 {
            m.ended(&format!("live{i}")).await;
        }
    }
    m.ended("during0").await;
    let before_heal = stored_replies(&s.hub, &rm.name).await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(cut_at.elapsed())).await;
    wan(&["heal", "west"]);
    let healed = Instant::now();
    println!(
        "link cut for {:.1} s; replies at the hub for events published during the cut, before the heal: {}",
        cut_at.elapsed().as_secs_f64(),
        before_heal
            .iter()
            .filter(|r| r.alloc().starts_with("during") || r.kind() == "removed")
            .count()
    );

    let answered = |all: &[Stored]| {
        during
            .iter()
            .all(|a| has(all, a, "ready") || has(all, a, "failed"))
            && (0..4).all(|i| has(all, &format!("live{i}"), "removed"))
            && has(all, "during0", "removed")
    };
    let all = replies_until(
        &s.hub,
        &rm.name,
        180,
        "every answer after the heal",
        answered,
    )
    .await;
    let last = healed.elapsed();
    println!(
        "heal -> last reply of the cut's events at the hub: {:.2} s (50 ms WAN round trip)",
        last.as_secs_f64()
    );

    // The rest ends; then nothing is left, and every allocation was answered once of each kind.
    for a in &during[1..] {
        m.ended(a).await;
    }
    let all_done = replies_until(&s.hub, &rm.name, 120, "every removed", |all| {
        during.iter().all(|a| has(all, a, "removed"))
    })
    .await;
    // Between the two reads only the removed of the allocations ended since were stored: the first read
    // is a prefix of the second, and each allocation has one answer to its started and one removed.
    assert_eq!(
        all_done[..all.len()],
        all[..],
        "replies stored before the last endeds changed"
    );
    let since: Vec<(&str, &str)> = all_done[all.len()..]
        .iter()
        .map(|r| (r.alloc(), r.kind()))
        .collect();
    let mut want: Vec<(&str, &str)> = during[1..]
        .iter()
        .map(|a| (a.as_str(), "removed"))
        .collect();
    let mut got = since.clone();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "replies after the last endeds: {since:?}");
    assert_eq!(
        all_done.len(),
        2 * (4 + during.len()),
        "one answer and one removed per allocation: {all_done:#?}"
    );
    for ((alloc, kind), n) in counts(&all_done) {
        assert_eq!(n, 1, "{alloc} got {n} {kind} replies: {all_done:#?}");
    }
    let mut ids: Vec<&str> = all_done.iter().map(|r| r.msg_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all_done.len(), "a Nats-Msg-Id stored twice");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = observe(&s.west, &rm).await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind after the cut: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = history.finish().await;
    println!("across the cut: {}", report.summary());
    assert!(
        report.violations.is_empty(),
        "{}",
        report.details.join("\n")
    );
    drop(w);
    rm.teardown(&s.west).await;
}

/// What of `rm` stands on the cluster and in the bucket: each owned listener's port, the port claims, the
/// Services and the routes.
async fn standing(
    env: &Env,
    rm: &TestRm,
) -> (
    BTreeMap<String, u16>,
    BTreeMap<u16, String>,
    Vec<String>,
    Vec<String>,
) {
    let mut o = observe(env, rm).await;
    o.services.sort();
    o.routes.sort();
    (o.listeners, o.claims, o.services, o.routes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_site_is_rebuilt_by_a_replay_from_the_hub_with_the_same_ports() {
    let _wan = sites::WAN.lock().await;
    let s = Sites::load();
    let rm = TestRm::new(&s.west, "lost", (41200, 41215)).await;
    let mut w = site_worker(&s.west, &[&rm]);
    w.ready(60).await;
    let m = Master::new(&s.hub, &rm.name).await;
    let ports = [("http", 8080), ("ssh", 22)];

    // Two allocations that started and ended, then three live ones, two ports each.
    for i in 0..2 {
        let a = format!("gone{i}");
        m.started(&a, &rm.task_ns, &ports).await;
        replies_until(&s.hub, &rm.name, 60, &format!("{a}'s ready"), |all| {
            has(all, &a, "ready")
        })
        .await;
        m.ended(&a).await;
        replies_until(&s.hub, &rm.name, 60, &format!("{a}'s removed"), |all| {
            has(all, &a, "removed")
        })
        .await;
    }
    let live: Vec<String> = (0..3).map(|i| format!("live{i}")).collect();
    for a in &live {
        m.started(a, &rm.task_ns, &ports).await;
    }
    let before_replies = replies_until(&s.hub, &rm.name, 60, "the live readies", |all| {
        live.iter().all(|a| has(all, a, "ready"))
    })
    .await;
    let before = standing(&s.west, &rm).await;
    assert_eq!(before.0.len(), 6, "{before:?}");
    assert_eq!(before.1.len(), 6, "{before:?}");

    // The site is lost for good: its worker goes, its leaf server loses its store and starts empty.
    drop(w);
    let lost_at = Instant::now();
    wan(&["lose", "west"]);
    let js = async_nats::jetstream::new(s.west.nats().await);
    assert!(
        js.get_stream(itg::contract::EVENTS_STREAM).await.is_err(),
        "the leaf kept its streams"
    );
    assert!(keys_naming(&s.west, &rm.name).await.is_empty());

    // Recovery: the replay from the hub's ITG_EVENTS with the site worker's config, then the worker.
    let config = tempfile::NamedTempFile::new().unwrap();
    let admin = format!("127.0.0.1:{}", common::free_port());
    std::fs::write(
        config.path(),
        site_yaml(config_yaml(&s.west, &[&rm], "", &admin)),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_itgctl"))
        .args(["replay", "--config"])
        .arg(config.path())
        .args(["--rm", &rm.name, "--from-seq", "1", "--output", "json"])
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // Exit code 4 when an event could not be served: the starteds of the ended allocations are answered
    // `failed` (a started after its ended), which counts as already right, so 0 is expected.
    assert!(
        out.status.success(),
        "itgctl replay: {summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed = lost_at.elapsed();
    let after = standing(&s.west, &rm).await;
    assert_eq!(
        after, before,
        "the listeners, claims, Services and routes after the replay differ from before the loss"
    );
    // The worker's new consumer serves the site's new ITG_EVENTS from its first event, as the stream
    // sources them from the hub again: all already right. Recovered once it has caught up.
    let mut w = site_worker(&s.west, &[&rm]);
    w.ready(60).await;
    let consumer = itg::names::consumer_name("itg-worker", &rm.name);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut events = js.get_stream(itg::contract::EVENTS_STREAM).await.unwrap();
        let sourced = events.info().await.unwrap().state.messages;
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            events.get_consumer(&consumer).await.unwrap();
        let info = c.info().await.unwrap();
        if sourced >= 7 && info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not catch up: {sourced} events sourced, consumer {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered = lost_at.elapsed();
    assert_eq!(
        standing(&s.west, &rm).await,
        before,
        "the worker's catch-up changed what stands"
    );
    println!(
        "site lost: replay {summary}; lose -> replayed {:.2} s, lose -> worker caught up with the same {} ports claimed {:.2} s",
        replayed.as_secs_f64(),
        after.1.len(),
        recovered.as_secs_f64()
    );

    // The replies source works again: an ended at the hub removes everything of a live allocation, a new
    // started is answered ready at the hub.
    m.ended(&live[0]).await;
    m.started("fresh", &rm.task_ns, &ports).await;
    let all = replies_until(
        &s.hub,
        &rm.name,
        90,
        "live0's removed and fresh's ready",
        |all| has(all, &live[0], "removed") && has(all, "fresh", "ready"),
    )
    .await;
    println!(
        "after the loss: {}'s removed and a new started's ready at the hub {:.2} s after the lose",
        live[0],
        lost_at.elapsed().as_secs_f64()
    );
    let now = standing(&s.west, &rm).await;
    assert!(
        now.1.values().all(|k| !k.ends_with(&live[0])),
        "{}'s ports still claimed: {now:?}",
        live[0]
    );

    // Nothing answered twice: each allocation has at most one reply of each kind at the hub, the live
    // ones one `ready` each (the replay's copy dropped by its Nats-Msg-Id), with the addresses of before.
    // The ended ones' starteds, replayed after their endeds, are answered `failed` (docs/contract.md).
    for ((alloc, kind), n) in counts(&all) {
        assert_eq!(n, 1, "{alloc} got {n} {kind} replies at the hub: {all:#?}");
    }
    for a in &live {
        let was: Vec<&Stored> = before_replies
            .iter()
            .filter(|r| r.alloc() == a && r.kind() == "ready")
            .collect();
        let is: Vec<&Stored> = all
            .iter()
            .filter(|r| r.alloc() == a && r.kind() == "ready")
            .collect();
        assert_eq!(was, is, "{a}'s ready changed");
    }
    let failed: Vec<&str> = all
        .iter()
        .filter(|r| r.kind() == "failed")
        .map(|r| r.alloc())
        .collect();
    assert!(
        failed.iter().all(|a| a.starts_with("gone")),
        "failed: {all:#?}"
    );
    println!(
        "replies at the hub after the loss: {} ({} before it); each allocation's ready once, with its ports of before; `failed` for the ended allocations' replayed starteds: {:?}",
        all.len(),
        before_replies.len(),
        failed
    );

    // The rest ends; nothing is left.
    for a in live[1..].iter().map(String::as_str).chain(["fresh"]) {
        m.ended(a).await;
    }
    let end = replies_until(&s.hub, &rm.name, 90, "every removed", |all| {
        live.iter().all(|a| has(all, a, "removed")) && has(all, "fresh", "removed")
    })
    .await;
    for ((alloc, kind), n) in counts(&end) {
        assert_eq!(n, 1, "{alloc} got {n} {kind} replies at the hub: {end:#?}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = observe(&s.west, &rm).await;
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(w);
    rm.teardown(&s.west).await;
}
