//! The worker binary as an operator runs it: JSON logs carrying the allocation and event ids, readiness,
//! and a clean exit on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::readyz;
use common::{Env, Master, Replies, TestRm, free_port};

#[tokio::test]
async fn the_worker_logs_json_with_ids_and_exits_cleanly_on_sigterm() {
    let env = Env::load();
    let rm = TestRm::new(&env, "proc", (42300, 42309)).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let yaml = format!(
        "nats:\n  url: {}\nadmin:\n  address: {addr}\nlog_format: json\nworker:\n  shutdown_timeout: 2s\nresource_managers:\n{}",
        env.nats_url,
        rm.yaml(&env)
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_itg-worker"))
        .args(["--config", file.path().to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });

    let deadline = Instant::now() + Duration::from_secs(30);
    while readyz(&addr) != Some(200) {
        assert!(Instant::now() < deadline, "the worker never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replies = Replies::watch(&env, &rm.name).await;
    let a = format!("{}.1", uuid::Uuid::new_v4());
    let event_id = Master::new(&env, &rm.name)
        .await
        .started(&a, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    replies.first(30, &a, "ready").await;

    let sent = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(20),
            "no exit 20 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    let lines = lines.join().unwrap();
    let json: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!json.is_empty(), "no JSON log lines in: {lines:?}");
    let answered = json
        .iter()
        .find(|l| l["fields"]["message"] == "answered")
        .unwrap_or_else(|| panic!("no 'answered' line in {json:#?}"));
    let text = answered.to_string();
    assert!(
        text.contains(&a) && text.contains(&event_id.to_string()),
        "ids missing from {text}"
    );
    assert!(
        json.iter().any(|l| l.to_string().contains("shutting down")),
        "no shutdown line"
    );
    rm.teardown(&env).await;
}
