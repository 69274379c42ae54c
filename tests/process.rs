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

/// The consumer of `rm` as JetStream counts it: (delivered, acknowledgement pending).
async fn consumer_counts(env: &Env, rm: &str) -> (u64, usize) {
    let js = async_nats::jetstream::new(env.nats().await);
    let mut c: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(itg::contract::EVENTS_STREAM)
        .await
        .unwrap()
        .get_consumer(&itg::names::consumer_name("itg-worker", rm))
        .await
        .unwrap();
    let info = c.info().await.unwrap();
    (info.delivered.consumer_sequence, info.num_ack_pending)
}

/// Waits until the consumer has delivered `n` events of which `pending` are unacknowledged: in flight.
async fn in_flight(env: &Env, rm: &str, n: u64, pending: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = consumer_counts(env, rm).await;
        if got == (n, pending) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not {n} delivered with {pending} in flight: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn exit_of(
    w: &mut common::process::WorkerProcess,
    secs: u64,
) -> (std::process::ExitStatus, f64) {
    let sent = Instant::now();
    let status = w.exited(secs).await;
    (status, sent.elapsed().as_secs_f64())
}

/// The shutdown drain, on a worker process whose apiserver path the test slows and silences: an event in
/// flight at SIGTERM finishes and is answered before the exit; one that cannot finish within
/// `worker.shutdown_timeout` is given back (negatively acknowledged, so another worker serves it at once
/// rather than after the acknowledgement wait); and a second signal exits at once, whatever is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_or_gives_back_what_is_in_flight_and_a_second_signal_exits_at_once() {
    let env = Env::load();
    let rm = TestRm::new(&env, "drain", (42320, 42329)).await;
    let link = common::link::Link::start(common::apiserver_addr(&env)).await;
    let (_kubeconfig, via) = common::through(&env, &link.addr);
    // An acknowledgement wait far past the test's bounds: an event comes back early only if given back.
    let yaml = |grace: &str| {
        let rm = &rm;
        let via = &via;
        let grace = grace.to_owned();
        move |admin: &str| {
            common::config_yaml(
                via,
                &[rm],
                &format!("  shutdown_timeout: {grace}\n  kubernetes_call_timeout: 120s\n"),
                admin,
            )
            .replace("ack_wait: 3s", "ack_wait: 120s")
        }
    };
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let port = [("jupyter", 8888)];
    let new_alloc = || format!("{}.1", uuid::Uuid::new_v4());

    // 1. In flight on a slow path at SIGTERM, with a 60 s grace: it finishes, is answered, and the exit
    //    is clean.
    let mut w = common::process::WorkerProcess::spawn(yaml("60s"), &[]);
    w.ready(60).await;
    link.delay(Duration::from_millis(400));
    let a = new_alloc();
    master.started(&a, &rm.task_ns, &port).await;
    in_flight(&env, &rm.name, 1, 1).await;
    w.signal("TERM");
    let (status, took) = exit_of(&mut w, 90).await;
    link.delay(Duration::ZERO);
    println!("in flight at SIGTERM on a slow apiserver path: {status} after {took:.2} s");
    assert!(status.success(), "{status}\n{}", w.log().join("\n"));
    assert_eq!(
        replies
            .for_alloc(&a)
            .iter()
            .map(|s| s.kind.as_str())
            .collect::<Vec<_>>(),
        ["ready"]
    );
    in_flight(&env, &rm.name, 1, 0).await;

    // 2. In flight on a silent path at SIGTERM, with a 2 s grace: given back, then served by the next
    //    worker well before the acknowledgement wait would have brought it back.
    let mut w = common::process::WorkerProcess::spawn(yaml("2s"), &[]);
    w.ready(60).await;
    link.silence();
    let b = new_alloc();
    master.started(&b, &rm.task_ns, &port).await;
    in_flight(&env, &rm.name, 2, 1).await;
    w.signal("TERM");
    let (status, took) = exit_of(&mut w, 30).await;
    println!(
        "in flight at SIGTERM on a silent apiserver path, 2 s grace: {status} after {took:.2} s"
    );
    assert!(status.success(), "{status}\n{}", w.log().join("\n"));
    let log = w.log().join("\n");
    assert!(log.contains("giving the event back"), "{log}");
    assert!(replies.for_alloc(&b).is_empty());
    link.heal();
    let started = Instant::now();
    let w = common::process::WorkerProcess::spawn(yaml("2s"), &[]);
    let served = replies.first(60, &b, "ready").await;
    println!(
        "given back, served by the next worker {:.2} s after it started (acknowledgement wait 120 s)",
        started.elapsed().as_secs_f64()
    );
    assert!(served.kind == "ready");

    // 3. A second signal while an event is in flight with a 120 s grace: the process exits at once.
    in_flight(&env, &rm.name, 3, 0).await;
    drop(w);
    let mut w = common::process::WorkerProcess::spawn(yaml("120s"), &[]);
    w.ready(60).await;
    link.silence();
    let c = new_alloc();
    master.started(&c, &rm.task_ns, &port).await;
    in_flight(&env, &rm.name, 4, 1).await;
    w.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !w.has_exited(),
        "the first signal alone ended it with an event in flight"
    );
    w.signal("TERM");
    let (status, took) = exit_of(&mut w, 20).await;
    println!("second signal: {status} after {took:.2} s (grace 120 s)");
    assert_eq!(status.code(), Some(130), "{}", w.log().join("\n"));
    assert!(w.log().join("\n").contains("second signal"));
    link.heal();
    drop(w);
    rm.teardown(&env).await;
}

/// `worker.concurrency` bounds the events served at once. Every apiserver call of the worker is slowed, so
/// each started stays `exposing` for seconds; eight are published at once; a watch of the bucket replays
/// every revision of the records in order and counts the allocations `exposing` at the same time. With
/// concurrency 2 that is never more than 2, and 2 is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_events_are_served_at_once_than_worker_concurrency() {
    use futures::StreamExt;
    let env = Env::load();
    let rm = TestRm::new(&env, "conc", (42330, 42349)).await;
    let link = common::link::Link::start(common::apiserver_addr(&env)).await;
    let (_kubeconfig, via) = common::through(&env, &link.addr);
    let mut w = common::process::WorkerProcess::spawn(
        |admin| common::config_yaml(&via, &[&rm], "  concurrency: 2\n", admin),
        &[],
    );
    w.ready(60).await;
    let kv = async_nats::jetstream::new(env.nats().await)
        .get_key_value("ITG_STATE")
        .await
        .unwrap();
    let mut watch = kv
        .watch(format!("{}>", itg::names::allocation_key_prefix(&rm.name)))
        .await
        .unwrap();
    link.delay(Duration::from_millis(150));
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let allocs: Vec<String> = (0..8)
        .map(|_| format!("{}.1", uuid::Uuid::new_v4()))
        .collect();
    for a in &allocs {
        master.started(a, &rm.task_ns, &[("jupyter", 8888)]).await;
    }
    let mut exposing = std::collections::BTreeSet::new();
    let (mut most, mut ready) = (0, std::collections::BTreeSet::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while ready.len() < allocs.len() {
        let entry = tokio::time::timeout_at(deadline, watch.next())
            .await
            .expect("every allocation ready within 180 s")
            .unwrap()
            .unwrap();
        let record: serde_json::Value = serde_json::from_slice(&entry.value).unwrap_or_default();
        let phase = record["phase"].as_str().unwrap_or("").to_owned();
        if phase == "exposing" {
            exposing.insert(entry.key.clone());
        } else {
            exposing.remove(&entry.key);
        }
        if phase == "ready" {
            ready.insert(entry.key.clone());
        }
        most = most.max(exposing.len());
    }
    link.delay(Duration::ZERO);
    println!("8 starteds, worker.concurrency 2: at most {most} exposing at once");
    assert_eq!(most, 2, "allocations exposing at the same time");
    for a in &allocs {
        replies.first(30, a, "ready").await;
    }
    drop(w);
    rm.teardown(&env).await;
}
