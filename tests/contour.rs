//! Bytes through Contour, as tests/e2e.rs sends them through Envoy Gateway: Contour programs its envoy from
//! what the worker writes, and each task's backend is a small server in a network namespace
//! (tests/common/backend.rs) answering on its kwok Pod's IP (tests/common/pods.rs). Every address in a `ready` must carry bytes to its own task's backend from
//! the first connection, and refuse connections once the task has ended.
//!
//! Contour has no ListenerSet, so this is `gateway` mode only. It serves the one Gateway its config names
//! (testenv's `gateway-system/itg-contour`), so every test here shares that Gateway, each as its own resource
//! manager with a range of its own inside testenv's block (`ITG_CONTOUR_PORTS`, whose first port is the
//! placeholder's): 21101-21109 and 21110-21119. Envoy listens on the listener port + 8000; testenv maps the
//! Gateway's address to it as a LoadBalancer Service would, and the tests connect to the address in `ready`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::backend::{Netns, ask, first_answer_at, refused_at};
use common::contour::{ContourRm, contour};
use common::pods::{serve_task_pod, serve_tasks, task_selector};
use common::{Env, Master, Replies, Worker, end, suffix};
use uuid::Uuid;

/// The one envoy every test here shares: the tests that send bytes take it shared, the one that stops it
/// takes it alone.
static ENVOY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// One line through `to`, at once: the backend that answered, or why nothing did.
async fn one_exchange(to: SocketAddr, line: String) -> Result<String, String> {
    ask(to, &line).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_of_every_task_reaches_its_own_backend_through_contour_from_the_first_connection()
 {
    let _envoy = ENVOY.read().await;
    let env = Env::load();
    let gw = contour();
    let rm = ContourRm::new(&env, &gw, "contour", (21101, 21109)).await;
    let client = env.kube().await;
    let mut ns = Netns::create();
    // Three tasks with two ports each: six backends, told apart by name.
    let tasks: Vec<(String, Vec<(&str, u16)>)> = (0..3u16)
        .map(|t| {
            (
                format!("{}.{t}", Uuid::new_v4()),
                vec![("web", 7001 + 2 * t), ("ssh", 7002 + 2 * t)],
            )
        })
        .collect();
    let backend = serve_tasks(&client, &rm.task_ns, &tasks, &mut ns).await;
    let worker = Worker::start(rm.config(&env, &gw)).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    for (alloc, ports) in &tasks {
        master.started(alloc, &rm.task_ns, ports).await;
    }
    let mut addresses = Vec::new();
    let mut first_failed = Vec::new();
    for (alloc, ports) in &tasks {
        let (r, at) = replies.ready(alloc).await;
        let targets: Vec<(SocketAddr, &String)> = ports
            .iter()
            .map(|(name, _)| (r.address(name), &backend[&(alloc.clone(), *name)]))
            .collect();
        // The first connection to each address, all at once, as a master's client would make them.
        let firsts = futures::future::join_all(
            targets
                .iter()
                .map(|(to, b)| one_exchange(*to, format!("first {b}"))),
        )
        .await;
        for ((to, b), first) in targets.into_iter().zip(firsts) {
            assert_eq!(
                to.ip(),
                std::net::IpAddr::V4(gw.address),
                "ready names the Gateway's address"
            );
            match first {
                Ok(reply) => assert_eq!(reply, format!("{b} first {b}"), "{to} reached {reply:?}"),
                Err(e) => first_failed.push(format!("{to} ({b}): {e}")),
            }
            let (after, failures) = first_answer_at(to, b, at, 60, Duration::from_millis(10)).await;
            println!(
                "contour: {b} through {to} answered {} ms after ready (failed before: {failures:?})",
                after.as_millis()
            );
            addresses.push(to);
        }
    }
    println!(
        "contour: {} of {} first connections made at ready were answered",
        addresses.len() - first_failed.len(),
        addresses.len()
    );
    assert!(
        first_failed.is_empty(),
        "first connections at ready that were not answered: {first_failed:?}"
    );
    addresses.sort_unstable();
    addresses.dedup();
    assert_eq!(addresses.len(), 6, "six distinct addresses");
    for (alloc, _) in &tasks {
        master.ended(alloc).await;
    }
    for (alloc, _) in &tasks {
        replies.first(60, alloc, "removed").await;
    }
    worker.stop().await;
    rm.teardown(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_contour_an_ended_task_s_address_refuses_connections_after_removed() {
    let _envoy = ENVOY.read().await;
    let env = Env::load();
    let gw = contour();
    let rm = ContourRm::new(&env, &gw, "contourend", (21110, 21119)).await;
    let client = env.kube().await;
    let mut ns = Netns::create();
    let alloc = format!("{}.1", Uuid::new_v4());
    let web = [("web", 7001, "ending")];
    serve_task_pod(&client, &rm.task_ns, &task_selector(&alloc), &web, &mut ns).await;
    let worker = Worker::start(rm.config(&env, &gw)).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    master.started(&alloc, &rm.task_ns, &[("web", 7001)]).await;
    let (r, at) = replies.ready(&alloc).await;
    let to = r.address("web");
    let (after, failures) = first_answer_at(to, "ending", at, 60, Duration::from_millis(10)).await;
    println!(
        "contour: {to} first answered {} ms after ready (failed before: {failures:?})",
        after.as_millis()
    );

    end(&master, &replies, &alloc).await;
    let removed_at = Instant::now();
    // The spec's bound on a controller reaching consistency is 30 s.
    let took = refused_at(to, removed_at, 30).await;
    println!(
        "contour: {to} refused connections {} ms after removed",
        took.as_millis()
    );
    worker.stop().await;
    rm.teardown(&env).await;
}

/// The start-up report names the Gateway's controller as Contour and says what the worker does about it:
/// ports of the range whose envoy ports collide are excluded and named. No exposure is made, so the range
/// may lie outside testenv's block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_report_names_contour_and_the_ports_it_cannot_serve() {
    let env = Env::load();
    let gw = contour();
    let s = suffix();
    let rm = ContourRm {
        name: format!("contourcheck-{s}"),
        task_ns: format!("tasks-{s}"),
        range: (57536, 58560),
    };
    let cfg = rm.config(&env, &gw);
    let servers = itg::app::connect(&cfg).await.expect("connect");
    let report = itg::app::report(&cfg, &servers).await.expect("report");
    println!("{report}");
    assert!(
        report.contains(&format!(
            "Gateway {}/{}: Contour (envoy listens on the listener port + 8000",
            gw.namespace, gw.name
        )),
        "the report does not name Contour:\n{report}"
    );
    assert!(
        report.contains(
            "excluded 2 port(s): 58559-58560 share their data-plane ports with 57536-57537 (kept)"
        ),
        "the report does not name the excluded ports:\n{report}"
    );
    // Contour writes no class status: the class carries only the CRD's default, and that is no warning.
    assert!(
        servers.rms[0].class.may_be_served(),
        "the class of a Contour Gateway is taken for unserved: {}",
        servers.rms[0].class
    );
    assert!(
        report.contains("(no status written)"),
        "the report does not say the class carries no status:\n{report}"
    );
    let excluded = servers.rms[0].config.excluded_port_set();
    assert_eq!(excluded, [58559, 58560].into_iter().collect());
}

/// Contour writes status from its own model and never waits for envoy: with envoy stopped it still reports
/// every listener programmed and every route accepted. The data plane probe makes `ready` wait, then answers
/// `failed` naming the data plane; once envoy is back, the same worker answers `ready`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_contour_s_envoy_stopped_ready_waits_then_fails_naming_the_data_plane() {
    let _alone = ENVOY.write().await;
    let env = Env::load();
    let gw = contour();
    let rm = ContourRm::new(&env, &gw, "contourdown", (21120, 21121)).await;
    let root = env!("CARGO_MANIFEST_DIR");
    let pid_file = format!("{root}/.itg/run/contour-envoy.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{pid_file}: {e}"))
        .trim()
        .to_owned();
    let killed = std::process::Command::new("kill")
        .arg(&pid)
        .status()
        .expect("kill runs");
    assert!(killed.success(), "could not stop envoy {pid}");
    let gone = Instant::now() + Duration::from_secs(20);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < gone, "envoy {pid} still runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut cfg = rm.config(&env, &gw);
    cfg.resource_managers[0].data_plane_probe.grace = itg::config::Dur(Duration::from_secs(1));
    cfg.resource_managers[0].data_plane_probe.deadline = itg::config::Dur(Duration::from_secs(10));
    let worker = Worker::start(cfg).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let alloc = format!("{}.1", Uuid::new_v4());
    let t0 = Instant::now();
    master.started(&alloc, &rm.task_ns, &[("web", 7001)]).await;
    let answer = replies.answer(120, &alloc).await;
    println!(
        "contour, envoy stopped: answered {} after {} ms: {}",
        answer.kind,
        t0.elapsed().as_millis(),
        answer.body["message"]
    );
    // Bring envoy back before asserting, so a failure here leaves the servers as the other tests need them.
    let up = tokio::task::spawn_blocking(move || {
        std::process::Command::new(format!("{root}/scripts/testenv"))
            .arg("up")
            .output()
            .expect("scripts/testenv up runs")
    })
    .await
    .unwrap();
    assert!(
        up.status.success(),
        "scripts/testenv up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert_eq!(answer.kind, "failed", "{:?}", answer.body);
    assert_eq!(answer.body["reason"], "timeout", "{:?}", answer.body);
    let message = answer.body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("data plane") && message.contains(&gw.address.to_string()),
        "{message}"
    );
    // With envoy back, the same worker serves the next started.
    let again = format!("{}.2", Uuid::new_v4());
    master.started(&again, &rm.task_ns, &[("web", 7001)]).await;
    let (r, _) = replies.ready(&again).await;
    println!("contour, envoy back: ready at {}", r.address("web"));
    master.ended(&again).await;
    replies.first(60, &again, "removed").await;
    worker.stop().await;
    rm.teardown(&env).await;
}
