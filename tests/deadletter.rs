//! Poison events: after the consumer's maximum deliveries an event goes to the dead-letter stream with its
//! error, a started is answered `failed`, and an operator can send it back once the cause is fixed.

mod common;

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
