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
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    // Every event is served: the starteds of the ended allocations get the refusal they would get now (a
    // started after its ended), which is already right, so nothing is left unserved and the exit code is 0.
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        summary["seen"], 7,
        "3 started and ended, 1 started: {summary}"
    );
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(
        summary["repaired"].as_u64() >= Some(1),
        "the live allocation's record was lost, so it is repaired: {summary}"
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

/// A loopback TCP proxy to NATS that, once, holds everything the server sends for `pause` after the
/// `nth` occurrence of `needle` in that direction (the bytes before it pass), then passes the rest: a path
/// that stalls and recovers, losing nothing.
async fn stalling_proxy(
    upstream: String,
    needle: String,
    nth: usize,
    pause: std::time::Duration,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let (upstream, needle) = (upstream.clone(), needle.clone());
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut ir, mut iw) = inbound.into_split();
                let (mut or, mut ow) = outbound.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut ir, &mut ow).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                let (mut seen, mut tail, mut stalled) = (0usize, Vec::<u8>::new(), false);
                loop {
                    let n = or.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    let mut chunk = &buf[..n];
                    if !stalled {
                        // Search the new bytes with the end of the last read before them, so a needle
                        // split across reads is found.
                        let mut hay = std::mem::take(&mut tail);
                        let carried = hay.len();
                        hay.extend_from_slice(chunk);
                        let mut from = 0;
                        while let Some(i) = hay[from..]
                            .windows(needle.len())
                            .position(|w| w == needle.as_bytes())
                        {
                            seen += 1;
                            let at = from + i;
                            if seen == nth {
                                let cut = at.saturating_sub(carried).min(chunk.len());
                                if iw.write_all(&chunk[..cut]).await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(pause).await;
                                chunk = &chunk[cut..];
                                stalled = true;
                                break;
                            }
                            from = at + 1;
                        }
                        let keep = hay.len().min(needle.len());
                        tail = hay[hay.len() - keep..].to_vec();
                    }
                    if iw.write_all(chunk).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_replay_whose_read_stalls_fails_loudly_and_answers_no_ended_allocation_ready() {
    let env = Env::load();
    let rm = TestRm::new(&env, "drstall", (42420, 42429)).await;
    let w = Worker::start(config(&env, &[&rm], "")).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let ended: Vec<String> = (0..6)
        .map(|_| format!("{}.1", uuid::Uuid::new_v4()))
        .collect();
    for a in &ended {
        master.started(a, &rm.task_ns, &[("jupyter", 8888)]).await;
        replies.first(30, a, "ready").await;
        master.ended(a).await;
        replies.first(30, a, "removed").await;
    }
    w.stop().await;
    // The state is lost (only this resource manager's keys: other tests share the bucket).
    let nats = env.nats().await;
    let kv = jetstream::new(nats.clone())
        .get_key_value("ITG_STATE")
        .await
        .unwrap();
    let mut keys = kv.keys().await.unwrap();
    while let Some(k) = futures::StreamExt::next(&mut keys).await {
        let k = k.unwrap();
        if k.starts_with(&format!("alloc.{}.", rm.name))
            || k.starts_with(&format!("port.{}.", rm.name))
        {
            kv.purge(&k).await.unwrap();
        }
    }
    let mut sub = nats
        .subscribe(format!("itg.replies.{}.>", rm.name))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    // The replay's path to NATS stalls for 12 s in the middle of the ended events (the consumer's own
    // replies name the subject twice before the first event does).
    let upstream = env
        .nats_url
        .trim_start_matches("nats://")
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    let proxy = stalling_proxy(
        upstream,
        format!("itg.events.{}.ended", rm.name),
        5,
        std::time::Duration::from_secs(12),
    )
    .await;
    let file = tempfile::NamedTempFile::new().unwrap();
    let yaml = format!(
        "nats:\n  url: nats://{proxy}\nresource_managers:\n{}",
        rm.yaml(&env)
    );
    std::fs::write(file.path(), yaml).unwrap();
    let rm_name = rm.name.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_itgctl"))
            .args([
                "replay",
                "--config",
                file.path().to_str().unwrap(),
                "--rm",
                &rm_name,
                "--from-seq",
                "1",
                "--output",
                "json",
            ])
            .output()
            .unwrap()
    });
    let out = out.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "replay through a stalling path: exit {:?}, stdout {}, stderr {stderr}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
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
        "the stalled replay answered `ready` for ended allocations: {resurrected:?}"
    );
    assert!(
        !out.status.success() && out.status.code() != Some(4),
        "a replay that stopped early must fail as such, not exit {:?}",
        out.status.code()
    );
    // Whichever request the stall caught (the read itself, or a KV call of an event being served), the
    // error says that the replay is incomplete and where it stopped.
    assert!(
        stderr.contains("the replay is incomplete") && stderr.contains("sequence"),
        "{stderr}"
    );
    rm.teardown(&env).await;
}
