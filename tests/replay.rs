//! Replay on the real servers: events served again change nothing that is right, repair what is not, and
//! never resurrect an ended allocation.

mod common;

use std::process::Command;

use async_nats::jetstream;
use common::{Env, Master, Replies, TestRm, Worker, config, observe};
use itg::contract::EventKind;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::DeleteParams;

#[tokio::test]
async fn a_replay_repairs_a_deleted_service_resurrects_nothing_and_counts_what_it_saw() {
    let env = Env::load();
    let rm = TestRm::new(&env, "rpl", (42400, 42409)).await;
    let js = jetstream::new(env.nats().await);
    let from = js
        .get_stream("ITG_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence
        + 1;
    let w = Worker::start(config(&env, &[&rm], "")).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let (live, ended) = (
        format!("{}.1", uuid::Uuid::new_v4()),
        format!("{}.1", uuid::Uuid::new_v4()),
    );
    master
        .started(&live, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    master
        .started(&ended, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    replies.first(30, &ended, "ready").await;
    master.ended(&ended).await;
    master
        .publish_raw(EventKind::Started, None, b"not json".to_vec())
        .await;
    replies.first(30, &live, "ready").await;
    replies.first(30, &ended, "removed").await;
    replies
        .wait(30, "the invalid event's answer", |r| {
            r.iter().any(|s| s.kind == "failed")
        })
        .await;
    w.stop().await;
    let name = itg::names::object_name(&rm.name, &live, "jupyter");
    Api::<Service>::namespaced(env.kube().await, &rm.task_ns)
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();

    let file = tempfile::NamedTempFile::new().unwrap();
    let yaml = format!(
        "nats:\n  url: {}\nresource_managers:\n{}",
        env.nats_url,
        rm.yaml(&env)
    );
    std::fs::write(file.path(), yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_itgctl"))
        .args([
            "replay",
            "--config",
            file.path().to_str().unwrap(),
            "--rm",
            &rm.name,
            "--from-seq",
            &from.to_string(),
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["seen"], 4, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(
        summary["already_right"], 4,
        "every record was right already: {summary}"
    );
    let o = observe(&env, &rm).await;
    assert_eq!(
        o.services,
        vec![name.clone()],
        "the deleted Service is back, the ended one is not"
    );
    assert_eq!(o.listeners.len(), 1);
    assert_eq!(o.claims.len(), 1);
    rm.teardown(&env).await;
}

#[tokio::test]
async fn a_replay_after_the_state_is_lost_answers_no_ended_allocation_ready() {
    let env = Env::load();
    let rm = TestRm::new(&env, "dr", (42410, 42419)).await;
    let w = Worker::start(config(&env, &[&rm], "")).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let ended: Vec<String> = (0..3)
        .map(|_| format!("{}.1", uuid::Uuid::new_v4()))
        .collect();
    for a in &ended {
        master.started(a, &rm.task_ns, &[("jupyter", 8888)]).await;
        replies.first(30, a, "ready").await;
        master.ended(a).await;
        replies.first(30, a, "removed").await;
    }
    let live = format!("{}.1", uuid::Uuid::new_v4());
    master
        .started(&live, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    replies.first(30, &live, "ready").await;
    w.stop().await;

    // The state is lost: every record and claim of this resource manager goes (other tests share the
    // bucket, so only this resource manager's keys are purged).
    let nats = env.nats().await;
    let kv = jetstream::new(nats.clone())
        .get_key_value("ITG_STATE")
        .await
        .unwrap();
    let mut keys = kv.keys().await.unwrap();
    let mut lost = Vec::new();
    while let Some(k) = futures::StreamExt::next(&mut keys).await {
        let k = k.unwrap();
        if k.starts_with(&format!("alloc.{}.", rm.name))
            || k.starts_with(&format!("port.{}.", rm.name))
        {
            lost.push(k);
        }
    }
    for k in &lost {
        kv.purge(k).await.unwrap();
    }
    assert!(lost.len() >= 5, "records and the live claim: {lost:?}");

    // Every reply published from now on, deduplicated by the stream or not.
    let mut sub = nats
        .subscribe(format!("itg.replies.{}.>", rm.name))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    let yaml = format!(
        "nats:\n  url: {}\nresource_managers:\n{}",
        env.nats_url,
        rm.yaml(&env)
    );
    std::fs::write(file.path(), yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_itgctl"))
        .args([
            "replay",
            "--config",
            file.path().to_str().unwrap(),
            "--rm",
            &rm.name,
            "--from-seq",
            "1",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    // Exit code 4: some event could not be served now, which the assertions below tell apart.
    assert!(
        matches!(out.status.code(), Some(0 | 4)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut readies = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        futures::StreamExt::next(&mut sub),
    )
    .await
    {
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        if m.subject.ends_with(".ready") {
            readies.push(body["allocation_id"].as_str().unwrap_or("").to_owned());
        }
    }
    let resurrected: Vec<&String> = readies.iter().filter(|a| ended.contains(a)).collect();
    assert!(
        resurrected.is_empty(),
        "the replay answered `ready` for ended allocations: {resurrected:?}"
    );
    assert!(
        readies.contains(&live),
        "the live one is served: {readies:?}"
    );
    let o = observe(&env, &rm).await;
    assert_eq!(o.claims.len(), 1, "{o:?}");
    assert_eq!(o.listeners.len(), 1, "{o:?}");
    rm.teardown(&env).await;
}
