//! Poison events: after the consumer's maximum deliveries an event goes to the dead-letter stream with its
//! error, a started is answered `failed`, and an operator can send it back once the cause is fixed.

mod common;
#[path = "common/nats_server.rs"]
mod nats_server;

use async_nats::jetstream;
use common::{Env, Master, Replies, TestRm, Worker, config, itgctl};

#[tokio::test]
async fn a_poison_started_is_dead_lettered_answered_and_can_be_sent_back() {
    let env = Env::load();
    let rm = TestRm::new(&env, "dlq", (41800, 41809)).await;
    let mut cfg = config(&env, &[&rm], "");
    cfg.jetstream.max_deliver = 3;
    let w = Worker::start(cfg).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let a = format!("{}.1", uuid::Uuid::new_v4());
    // A record no worker can read makes every delivery fail: a poison event.
    let kv = jetstream::new(env.nats().await)
        .get_key_value("ITG_STATE")
        .await
        .unwrap();
    let key = itg::names::allocation_key(&rm.name, &a);
    kv.put(&key, "not a record".into()).await.unwrap();
    master.started(&a, &rm.task_ns, &[("jupyter", 8888)]).await;

    let failed = replies.first(30, &a, "failed").await;
    assert_eq!(failed.body["reason"], "timeout");
    assert_eq!(failed.body["retryable"], true);
    let message = failed.body["message"].as_str().unwrap();
    assert!(
        message.contains("ITG_DEADLETTER") && message.contains("not valid JSON"),
        "{message}"
    );

    let (code, out, err) = itgctl(
        &env,
        &["deadletter", "list", "--rm", &rm.name, "--output", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let letters: serde_json::Value = serde_json::from_str(&out).unwrap();
    let letter = letters
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["allocation_id"] == a.as_str())
        .expect("dead letter listed");
    assert_eq!(
        letter["original_subject"],
        format!("itg.events.{}.started", rm.name)
    );
    assert!(
        letter["error"].as_str().unwrap().contains("not valid JSON"),
        "{letter}"
    );

    // The operator fixes the cause and sends the event back: it is served, and the letter is gone.
    kv.purge(&key).await.unwrap();
    let seq = letter["sequence"].to_string();
    let (code, out, err) = itgctl(&env, &["deadletter", "resend", "--seq", &seq]);
    assert_eq!(code, 0, "{out}{err}");
    replies.first(30, &a, "ready").await;
    let (_, out, _) = itgctl(
        &env,
        &["deadletter", "list", "--rm", &rm.name, "--output", "json"],
    );
    let left: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        left.as_array()
            .unwrap()
            .iter()
            .all(|l| l["allocation_id"] != a.as_str()),
        "{left}"
    );
    w.stop().await;
    rm.teardown(&env).await;
}

/// The dead letters of one allocation, as `itgctl deadletter list` shows them.
fn letters_of(env: &Env, rm: &str, alloc: &str) -> Vec<serde_json::Value> {
    let (code, out, err) = itgctl(env, &["deadletter", "list", "--rm", rm, "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let all: serde_json::Value = serde_json::from_str(&out).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .filter(|l| l["allocation_id"] == alloc)
        .cloned()
        .collect()
}

#[tokio::test]
async fn an_ended_is_never_dead_lettered_and_is_served_once_the_cause_is_fixed() {
    let env = Env::load();
    let rm = TestRm::new(&env, "dle", (41810, 41819)).await;
    let mut cfg = config(&env, &[&rm], "");
    cfg.jetstream.max_deliver = 3;
    let w = Worker::start(cfg).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let a = format!("{}.1", uuid::Uuid::new_v4());
    let kv = jetstream::new(env.nats().await)
        .get_key_value("ITG_STATE")
        .await
        .unwrap();
    let key = itg::names::allocation_key(&rm.name, &a);
    kv.put(&key, "not a record".into()).await.unwrap();
    master.ended(&a).await;
    // Three deliveries 50-500 ms apart are over within a few seconds; wait well past them.
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    let letters = letters_of(&env, &rm.name, &a);
    assert!(
        letters.is_empty(),
        "an ended was dead-lettered at max_deliver: {letters:?}"
    );
    kv.purge(&key).await.unwrap();
    let removed = replies.first(30, &a, "removed").await;
    eprintln!("served after the cause was fixed: {}", removed.body);
    assert!(letters_of(&env, &rm.name, &a).is_empty());
    w.stop().await;
    rm.teardown(&env).await;
}

#[tokio::test]
async fn a_reply_that_cannot_be_stored_on_the_last_delivery_is_dead_lettered_and_leaves_nothing() {
    // A server of its own, where publishing this resource manager's `ready` replies is denied, so every
    // `ready` fails to be stored while everything else works.
    let rm_name = format!("dlr-{}", common::suffix());
    let server = nats_server::NatsServer::start(|dir| {
        format!(
            "jetstream {{ store_dir: {} }}\nauthorization {{\n  users = [ {{ user: itg, password: pw, permissions: {{ publish: {{ allow: [\">\"], deny: [\"itg.replies.{rm_name}.ready\"] }} }} }} ]\n}}\nno_auth_user: itg\n",
            nats_server::quoted(&dir.display().to_string())
        )
    });
    let shared = Env::load();
    let env = Env {
        nats_url: server.nats_url(),
        kubeconfig: shared.kubeconfig.clone(),
    };
    let mut rm = TestRm::new(&env, "dlr", (41820, 41829)).await;
    rm.name = rm_name;
    let mut cfg = config(&env, &[&rm], "");
    cfg.jetstream.max_deliver = 2;
    // A denied publish is only known when its acknowledgement times out (5 s): keep the event meanwhile.
    cfg.jetstream.ack_wait = itg::config::Dur(std::time::Duration::from_secs(20));
    let w = Worker::start(cfg).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let a = format!("{}.1", uuid::Uuid::new_v4());
    master.started(&a, &rm.task_ns, &[("jupyter", 8888)]).await;
    let failed = replies.first(60, &a, "failed").await;
    assert_eq!(failed.body["reason"], "timeout", "{}", failed.body);
    let letters = letters_of(&env, &rm.name, &a);
    assert_eq!(letters.len(), 1, "{letters:?}");
    // Answered `failed`, so nothing of the allocation may stay behind.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let o = common::observe(&env, &rm).await;
        if o.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a dead-lettered started kept its ports and objects after `failed`: {o:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    w.stop().await;
    rm.teardown(&env).await;
}
