//! `ready` means reachable: with `wait_for_controller` on, the worker answers only once the Gateway's
//! controller reports the listener programmed and the route accepted. A Gateway whose class no controller
//! serves never gets there, and the started is answered `failed` with `timeout` at the deadline.

mod common;

use std::time::{Duration, Instant};

use common::{Env, Master, Replies, TestRm, Worker, config, observe};

#[tokio::test]
async fn a_controller_less_gateway_with_the_wait_on_times_out_at_the_deadline_and_keeps_nothing() {
    let env = Env::load();
    let mut rm = TestRm::new(&env, "wait", (41500, 41509)).await;
    rm.extra = "    wait_for_controller: true\n".into();
    let cfg = config(&env, &[&rm], "  controller_deadline: 3s\n");
    let worker = Worker::start(cfg).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;

    let alloc = format!("{}.1", uuid::Uuid::new_v4());
    let sent = Instant::now();
    master
        .started(&alloc, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    let answer = replies
        .wait(60, "an answer to started", |r| {
            r.iter().any(|s| s.alloc() == Some(alloc.as_str()))
        })
        .await;
    let elapsed = sent.elapsed();
    let answer = answer
        .into_iter()
        .find(|s| s.alloc() == Some(alloc.as_str()))
        .unwrap();
    println!(
        "controller-less Gateway, controller_deadline 3s: {} after {elapsed:.2?}: {}",
        answer.kind, answer.body["message"]
    );
    assert_eq!(answer.kind, "failed", "{:?}", answer.body);
    assert_eq!(answer.body["reason"], "timeout", "{:?}", answer.body);
    assert_eq!(answer.body["retryable"], true);
    let message = answer.body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("did not report the exposure reachable within 3s")
            && message.contains("wait_for_controller"),
        "{message}"
    );

    // The failure withdrew everything: a failed allocation keeps no port, listener, Service or route.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = observe(&env, &rm).await;
        if o.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {o:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    master.ended(&alloc).await;
    replies.first(60, &alloc, "removed").await;
    worker.stop().await;
    rm.teardown(&env).await;
}
