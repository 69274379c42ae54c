//! The state bucket: its settings are checked at start, and finished allocations' records are purged once
//! no event about them can be served again, so the bucket stays flat however many lifecycles go by.

mod common;
#[path = "common/nats_server.rs"]
mod nats_server;

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use common::{Env, Master, Replies, TestRm, Worker, config_yaml, suffix};
use futures::StreamExt;
use itg::config::Config;
use nats_server::NatsServer;

#[tokio::test]
async fn a_bucket_with_a_ttl_is_refused_at_start_naming_the_setting() {
    let env = Env::load();
    let rm = TestRm::new(&env, "ttl", (43900, 43901)).await;
    let bucket = format!("ITG_TTL_{}", suffix());
    let js = jetstream::new(env.nats().await);
    js.create_key_value(kv::Config {
        bucket: bucket.clone(),
        history: 1,
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let yaml = config_yaml(&env, &[&rm], "", "127.0.0.1:0").replace(
        "jetstream:\n",
        &format!("jetstream:\n  state_bucket: {bucket}\n"),
    );
    let cfg = Config::parse(&yaml, "test config").unwrap();
    let refused = itg::app::connect(&cfg).await.err().map(|e| e.to_string());
    println!("a worker on a bucket with a 1 h TTL: {refused:?}");
    js.delete_key_value(&bucket).await.unwrap();
    rm.teardown(&env).await;
    let text = refused.expect("the start is refused");
    assert!(
        text.contains(&bucket) && text.contains("max_age") && text.contains("1h"),
        "{text}"
    );
}

/// The records of one resource manager in the bucket.
async fn records(kv: &kv::Store, rm: &str) -> usize {
    let prefix = itg::names::allocation_key_prefix(rm);
    let mut keys = kv.keys().await.unwrap();
    let mut n = 0;
    while let Some(k) = keys.next().await {
        if k.unwrap().starts_with(&prefix) {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_count_stays_flat_over_many_lifecycles() {
    // A server of its own: the events streams' max age is shortened to seconds here, which the shared
    // streams of the other tests must not get.
    let nats = NatsServer::start(|dir| format!("jetstream {{ store_dir: {:?} }}", dir.display()));
    let shared = Env::load();
    let env = Env {
        nats_url: nats.nats_url(),
        kubeconfig: shared.kubeconfig.clone(),
    };
    let rm = TestRm::new(&env, "flat", (44000, 44015)).await;
    let yaml = config_yaml(
        &env,
        &[&rm],
        "  reconcile_interval: 1s\n  reconcile_hold_off: 5s\n",
        "127.0.0.1:0",
    )
    .replace(
        "jetstream:\n",
        "jetstream:\n  events_max_age: 4s\n  replies_max_age: 4s\n  duplicate_window: 1s\n",
    );
    let w = Worker::start(Config::parse(&yaml, "test config").unwrap()).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let kv = jetstream::new(env.nats().await)
        .get_key_value("ITG_STATE")
        .await
        .unwrap();
    let mut counts = Vec::new();
    for round in 0..5 {
        let ids: Vec<String> = (0..10).map(|i| format!("r{round}.{i}")).collect();
        for id in &ids {
            master.started(id, &rm.task_ns, &[("jupyter", 8888)]).await;
        }
        for id in &ids {
            replies.first(60, id, "ready").await;
            master.ended(id).await;
        }
        for id in &ids {
            replies.first(60, id, "removed").await;
        }
        // Past the events' max age and the reconciler's hold-off, plus a pass.
        tokio::time::sleep(Duration::from_secs(7)).await;
        counts.push(records(&kv, &rm.name).await);
    }
    println!(
        "records in the bucket after each round of 10 lifecycles (events kept 4 s): {counts:?}"
    );
    w.stop().await;
    rm.teardown(&env).await;
    assert!(
        counts.iter().all(|c| *c <= 10),
        "finished records pile up: {counts:?}"
    );
}

/// Every key of one resource manager's records in the bucket's stream, delete markers included.
async fn record_subjects(js: &jetstream::Context, rm: &str) -> usize {
    let stream = js.get_stream("KV_ITG_STATE").await.unwrap();
    let filter = format!("$KV.ITG_STATE.{}>", itg::names::allocation_key_prefix(rm));
    let info = stream.info_with_subjects(filter).await.unwrap();
    let mut n = 0;
    futures::pin_mut!(info);
    while let Some(s) = info.next().await {
        s.unwrap();
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_up_allocations_leave_no_marker_and_a_replayed_started_repeats_its_failed() {
    let nats = NatsServer::start(|dir| format!("jetstream {{ store_dir: {:?} }}", dir.display()));
    let shared = Env::load();
    let env = Env {
        nats_url: nats.nats_url(),
        kubeconfig: shared.kubeconfig.clone(),
    };
    // One port, held by a live allocation: every other started waits for capacity until it is given up.
    let rm = TestRm::new(&env, "gaveup", (44020, 44020)).await;
    let yaml = config_yaml(
        &env,
        &[&rm],
        "  reconcile_interval: 1s\n  reconcile_hold_off: 5s\n",
        "127.0.0.1:0",
    )
    .replace(
        "jetstream:\n",
        "jetstream:\n  events_max_age: 4s\n  replies_max_age: 60s\n  duplicate_window: 1s\n",
    );
    let mut cfg = Config::parse(&yaml, "test config").unwrap();
    cfg.jetstream.max_deliver = 3;
    cfg.worker.retry_min = itg::config::Dur(Duration::from_millis(200));
    cfg.worker.retry_max = itg::config::Dur(Duration::from_millis(400));
    let w = Worker::start(cfg).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let js = jetstream::new(env.nats().await);
    master
        .started("holder.1", &rm.task_ns, &[("jupyter", 8888)])
        .await;
    replies.first(60, "holder.1", "ready").await;
    let mut counts = Vec::new();
    for round in 0..3 {
        let ids: Vec<String> = (0..5).map(|i| format!("g{round}.{i}")).collect();
        for id in &ids {
            master.started(id, &rm.task_ns, &[("jupyter", 8888)]).await;
        }
        for id in &ids {
            let f = replies.first(60, id, "failed").await;
            assert_eq!(f.body["reason"], "timeout", "{:?}", f.body);
        }
        tokio::time::sleep(Duration::from_secs(7)).await;
        counts.push(record_subjects(&js, &rm.name).await);
    }
    println!(
        "record keys in the bucket's stream (markers included) after each round of 5 given-up starteds: {counts:?}"
    );
    assert!(
        counts.iter().all(|c| *c <= 6),
        "given-up allocations leave keys behind: {counts:?}"
    );

    // The port frees; a started of a given-up allocation served again (as a replay serves it) repeats its
    // `failed` instead of exposing it after that answer.
    let gave_up = "g9.1";
    master
        .started(gave_up, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    replies.first(60, gave_up, "failed").await;
    master.ended("holder.1").await;
    replies.first(60, "holder.1", "removed").await;
    master
        .started(gave_up, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    let answers = replies
        .wait(30, "the started served again", |seen| {
            seen.iter()
                .filter(|s| s.alloc() == Some(gave_up) && s.kind == "failed")
                .count()
                >= 2
                || seen
                    .iter()
                    .any(|s| s.alloc() == Some(gave_up) && s.kind == "ready")
        })
        .await;
    let kinds: Vec<&str> = answers
        .iter()
        .filter(|s| s.alloc() == Some(gave_up))
        .map(|s| s.kind.as_str())
        .collect();
    assert!(
        !kinds.contains(&"ready"),
        "a ready after its failed: {kinds:?}"
    );
    w.stop().await;
    rm.teardown(&env).await;
}
