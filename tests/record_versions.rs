//! Records other worker versions left in the bucket. The golden fixtures of tests/fixtures/records-v1 (record
//! version 1, written by a22e5a6) are loaded into the bucket before a current worker starts, and each is
//! read, served, ended and purged. A record of a newer version is left as it is, answered nothing, and
//! counted in `itg_records_newer_version_total`.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use common::{Env, Master, Replies, TestRm, Worker, config_yaml, observe};
use futures::StreamExt as _;
use itg::config::Config;
use serde_json::Value;

/// The fixtures' clock: created_at and the like are this plus a few seconds.
const T0: i64 = 1_796_601_600;

/// One fixture, moved onto a test resource manager: its record's key and bytes, and its claims.
struct Fixture {
    allocation_id: String,
    record: (String, Vec<u8>),
    claims: Vec<(String, Vec<u8>)>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

/// `tests/fixtures/records-v1/<name>.json` with the names of `rm` put in for the fixtures' own, and its
/// times moved so that T0 is `t0`. Nothing else of the stored bytes changes.
fn fixture(name: &str, rm: &TestRm, t0: i64) -> Fixture {
    let path = format!(
        "{}/tests/fixtures/records-v1/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    let rename = |s: &str| {
        s.replace("golden-rm", &rm.name)
            .replace("gw-golden", &rm.gateway)
            .replace("tasks-golden", &rm.task_ns)
    };
    let retime = |v: &str| -> Vec<u8> {
        let mut v: Value = serde_json::from_str(&rename(v)).unwrap();
        for k in ["created_at", "updated_at", "claimed_at"] {
            if let Some(t) = v[k].as_i64() {
                v[k] = (t - T0 + t0).into();
            }
        }
        serde_json::to_vec(&v).unwrap()
    };
    let entry = |e: &Value| {
        (
            rename(e["key"].as_str().unwrap()),
            retime(e["value"].as_str().unwrap()),
        )
    };
    let record = entry(&file["record"]);
    let value: Value = serde_json::from_slice(&record.1).unwrap();
    assert!(
        value.get("version").is_none(),
        "{name}: a version-1 fixture carries no version field"
    );
    Fixture {
        allocation_id: value["allocation_id"].as_str().unwrap().to_owned(),
        record,
        claims: file["claims"]
            .as_array()
            .unwrap()
            .iter()
            .map(entry)
            .collect(),
    }
}

async fn bucket(env: &Env, cfg: &Config) -> jetstream::kv::Store {
    let js = jetstream::new(env.nats().await);
    itg::nats::KvStore::open(&js, &cfg.jetstream)
        .await
        .expect("bucket");
    js.get_key_value(&cfg.jetstream.state_bucket).await.unwrap()
}

async fn put(kv: &jetstream::kv::Store, f: &Fixture) {
    kv.put(&f.record.0, f.record.1.clone().into())
        .await
        .unwrap();
    for (k, v) in &f.claims {
        kv.put(k, v.clone().into()).await.unwrap();
    }
}

fn ports(seen: &common::Seen) -> Vec<(String, u64)> {
    seen.body["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["gateway_port"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn released(seen: &common::Seen) -> Vec<u64> {
    let mut r: Vec<u64> = seen.body["released"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["gateway_port"].as_u64().unwrap())
        .collect();
    r.sort_unstable();
    r
}

const PORTS: [(&str, u16); 2] = [("jupyter", 8888), ("tb", 6006)];

#[tokio::test]
async fn records_of_version_one_are_read_served_ended_and_purged() {
    let env = Env::load();
    let rm = TestRm::new(&env, "golden", (41000, 41009)).await;
    let yaml = config_yaml(&env, &[&rm], "  reconcile_interval: 1s\n", "127.0.0.1:0");
    let cfg = Config::parse(&yaml, "record_versions").unwrap();
    let kv = bucket(&env, &cfg).await;
    let live = now() - 60;
    let ready = fixture("ready", &rm, live);
    let exposing = fixture("exposing", &rm, live);
    let ending = fixture("ending", &rm, live);
    let tombstone = fixture("tombstone", &rm, live);
    let removed = fixture("removed", &rm, live);
    for f in [&ready, &exposing, &ending, &tombstone, &removed] {
        put(&kv, f).await;
    }
    let replies = Replies::watch(&env, &rm.name).await;
    let worker = Worker::start(cfg).await;
    let master = Master::new(&env, &rm.name).await;

    // Ready: served again on the ports it holds, its objects applied there.
    master
        .started(&ready.allocation_id, &rm.task_ns, &PORTS)
        .await;
    let seen = replies.first(30, &ready.allocation_id, "ready").await;
    assert_eq!(
        ports(&seen),
        [("jupyter".to_owned(), 41000), ("tb".to_owned(), 41001)]
    );
    let o = observe(&env, &rm).await;
    assert!(
        o.listeners.values().any(|p| *p == 41000) && o.listeners.values().any(|p| *p == 41001),
        "{o:?}"
    );
    assert_eq!(o.services.len(), 2, "{o:?}");

    // Exposing: keeps the port it had bound and binds the other.
    master
        .started(&exposing.allocation_id, &rm.task_ns, &PORTS)
        .await;
    let seen = replies.first(30, &exposing.allocation_id, "ready").await;
    let got = ports(&seen);
    assert_eq!(got[0], ("jupyter".to_owned(), 41002), "{got:?}");
    assert!(
        ![41000, 41001, 41002, 41003, 41004].contains(&got[1].1),
        "a port another record holds was handed out: {got:?}"
    );

    // Ending: its ended (again) finishes the cleanup and reports the ports it held.
    master.ended(&ending.allocation_id).await;
    let seen = replies.first(30, &ending.allocation_id, "removed").await;
    assert_eq!(released(&seen), [41003, 41004]);

    // The live ones end.
    master.ended(&ready.allocation_id).await;
    let seen = replies.first(30, &ready.allocation_id, "removed").await;
    assert_eq!(released(&seen), [41000, 41001]);
    master.ended(&exposing.allocation_id).await;
    replies.first(30, &exposing.allocation_id, "removed").await;

    // Tombstones still block a late started, until they are purged.
    for f in [&tombstone, &removed] {
        master.started(&f.allocation_id, &rm.task_ns, &PORTS).await;
        let seen = replies.first(30, &f.allocation_id, "failed").await;
        assert!(
            seen.body["message"].as_str().unwrap().contains("ended"),
            "{:?}",
            seen.body
        );
    }
    // The same tombstones, left long ago: older than jetstream.events_max_age (7 days), past any replay,
    // so the reconciler purges them.
    let old = now() - 8 * 24 * 3600;
    let (tombstone, removed) = (fixture("tombstone", &rm, old), fixture("removed", &rm, old));
    put(&kv, &tombstone).await;
    put(&kv, &removed).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<&str> = {
            let mut left = Vec::new();
            for f in [&tombstone, &removed] {
                if kv.entry(&f.record.0).await.unwrap().is_some() {
                    left.push(f.allocation_id.as_str());
                }
            }
            left
        };
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tombstones not purged: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Everything the fixtures held is gone, and each ended record is now written in today's version.
    let o = observe(&env, &rm).await;
    assert!(o.is_empty(), "{o:?}");
    for f in [&ready, &exposing, &ending] {
        let e = kv.get(&f.record.0).await.unwrap().expect("tombstone kept");
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["phase"], "removed");
        assert_eq!(v["version"], itg::state::RECORD_VERSION);
    }
    worker.stop().await;
    rm.teardown(&env).await;
}

#[tokio::test]
async fn a_record_of_a_newer_version_is_left_untouched_and_answered_nothing() {
    let env = Env::load();
    let rm = TestRm::new(&env, "newer", (41010, 41019)).await;
    let yaml = config_yaml(&env, &[&rm], "  reconcile_interval: 1s\n", "127.0.0.1:0");
    let cfg = Config::parse(&yaml, "record_versions").unwrap();
    let kv = bucket(&env, &cfg).await;
    // A ready record as a newer worker might write it: a higher version and a phase unknown here.
    let mut f = fixture("ready", &rm, now() - 60);
    let mut v: Value = serde_json::from_slice(&f.record.1).unwrap();
    v["version"] = (itg::state::RECORD_VERSION + 1).into();
    v["phase"] = "draining".into();
    v["ports"][0]["gateway_port"] = 41010.into();
    v["ports"][1]["gateway_port"] = 41011.into();
    f.record.1 = serde_json::to_vec(&v).unwrap();
    f.claims = f
        .claims
        .iter()
        .zip([41010, 41011])
        .map(|((k, c), p)| {
            let k = k.rsplit_once('.').unwrap().0.to_owned() + &format!(".{p}");
            (k, c.clone())
        })
        .collect();
    put(&kv, &f).await;
    let before: Vec<u64> = {
        let mut revs = vec![kv.entry(&f.record.0).await.unwrap().unwrap().revision];
        for (k, _) in &f.claims {
            revs.push(kv.entry(k).await.unwrap().unwrap().revision);
        }
        revs
    };
    let replies = Replies::watch(&env, &rm.name).await;
    let worker = Worker::start(cfg).await;
    let master = Master::new(&env, &rm.name).await;
    master.started(&f.allocation_id, &rm.task_ns, &PORTS).await;
    master.ended(&f.allocation_id).await;
    // Long enough for many deliveries (retry_max 500 ms) and several reconciler passes (1 s).
    tokio::time::sleep(Duration::from_secs(8)).await;

    assert!(
        replies.for_alloc(&f.allocation_id).is_empty(),
        "answered: {:?}",
        replies.all()
    );
    let mut after = vec![kv.entry(&f.record.0).await.unwrap().unwrap().revision];
    for (k, _) in &f.claims {
        after.push(kv.entry(k).await.unwrap().unwrap().revision);
    }
    assert_eq!(before, after, "the record or its claims were written");
    assert_eq!(
        kv.get(&f.record.0).await.unwrap().unwrap().to_vec(),
        f.record.1
    );
    let o = observe(&env, &rm).await;
    assert!(
        o.listeners.is_empty() && o.services.is_empty() && o.routes.is_empty(),
        "{o:?}"
    );
    assert_eq!(o.claims.len(), 2, "its claims stay: {o:?}");
    let metrics = itg::metrics::get().encode();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("itg_records_newer_version_total")
                && l.contains(&format!("resource_manager=\"{}\"", rm.name))
        })
        .unwrap_or_else(|| panic!("no series for {}:\n{metrics}", rm.name));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 2.0, "{line}");
    eprintln!("{line}");
    // The dead-letter stream holds nothing of it: the events wait for a newer worker.
    let js = jetstream::new(env.nats().await);
    if let Ok(s) = js.get_stream(itg::contract::DEAD_LETTER_STREAM).await {
        let subjects = s
            .info_with_subjects(itg::contract::dead_letter_prefix(&rm.name) + ">")
            .await
            .unwrap()
            .next()
            .await;
        assert!(subjects.is_none(), "dead-lettered: {subjects:?}");
    }
    worker.stop().await;
    // A newer worker would take it from here; clean up as it would.
    let _ = kv.purge(&f.record.0).await;
    for (k, _) in &f.claims {
        let _ = kv.purge(k).await;
    }
    rm.teardown(&env).await;
}
