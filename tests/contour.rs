//! Bytes through Contour, as tests/e2e.rs sends them through Envoy Gateway: Contour programs its envoy from
//! what the worker writes, and each task's backend is a small server in a network namespace
//! (tests/common/backend.rs). Every address in a `ready` must carry bytes to its own task's backend from
//! the first connection, and refuse connections once the task has ended.
//!
//! Contour has no ListenerSet, so this is `gateway` mode only. It serves the one Gateway its config names
//! (testenv's `gateway-system/itg-contour`), so every test here shares that Gateway, each as its own resource
//! manager with a range of its own inside testenv's block (`ITG_CONTOUR_PORTS`, whose first port is the
//! placeholder's): 21101-21109 and 21110-21119. Envoy listens on the listener port + 8000; testenv maps the
//! Gateway's address to it as a LoadBalancer Service would, and the tests connect to the address in `ready`.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::backend::{Netns, endpoint_slice, exchange, first_answer_at, refused_at};
use common::{Env, Master, Replies, Seen, Worker, config_yaml, env_var, make_namespace, suffix};
use itg::config::Config;
use kube::Api;
use kube::api::{Patch, PatchParams};
use uuid::Uuid;

/// The one envoy every test here shares: the tests that send bytes take it shared, the one that stops it
/// takes it alone.
static ENVOY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// testenv's Contour Gateway: where it is, its address and its block of ports.
struct ContourGateway {
    namespace: String,
    name: String,
    address: Ipv4Addr,
    ports: (u16, u16),
}

/// The Contour Gateway; fails with testenv's reason when Contour is not running.
fn contour() -> ContourGateway {
    if let Some(why) = env_var("ITG_CONTOUR_UNAVAILABLE") {
        panic!("Contour is not running: {why}");
    }
    let get = |k: &str| {
        env_var(k).unwrap_or_else(|| {
            panic!("{k} unknown: run `scripts/testenv up` first (it writes .itg/env)")
        })
    };
    let gateway = get("ITG_CONTOUR_GATEWAY");
    let (namespace, name) = gateway
        .split_once('/')
        .expect("ITG_CONTOUR_GATEWAY is ns/name");
    let ports = get("ITG_CONTOUR_PORTS");
    let (lo, hi) = ports.split_once('-').expect("ITG_CONTOUR_PORTS is a-b");
    ContourGateway {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        address: get("ITG_CONTOUR_ADDRESS")
            .parse()
            .expect("ITG_CONTOUR_ADDRESS"),
        ports: (lo.parse().expect("port"), hi.parse().expect("port")),
    }
}

/// One resource manager on the Contour Gateway, with its own task namespace and range.
struct ContourRm {
    name: String,
    task_ns: String,
    range: (u16, u16),
}

impl ContourRm {
    async fn new(env: &Env, gw: &ContourGateway, prefix: &str, range: (u16, u16)) -> ContourRm {
        assert!(
            gw.ports.0 < range.0 && range.1 <= gw.ports.1,
            "range {range:?} is outside testenv's Contour block {:?} (its first port is the placeholder's)",
            gw.ports
        );
        clear_listeners(env, gw, range).await;
        let s = suffix();
        let rm = ContourRm {
            name: format!("{prefix}-{s}"),
            task_ns: format!("tasks-{s}"),
            range,
        };
        make_namespace(&env.kube().await, &rm.task_ns).await;
        rm
    }

    /// A worker config serving only this resource manager; Contour writes listener and route status, so
    /// `ready` waits for it.
    fn config(&self, env: &Env, gw: &ContourGateway) -> Config {
        let mut y = config_yaml(env, &[], "", "127.0.0.1:0");
        y.push_str(&format!(
            "  - name: {}\n    kubeconfig: {}\n    wait_for_controller: true\n    internal_task_gateway:\n      gateway_name: {}\n      gateway_namespace: {}\n      gateway_ip: {}\n      gateway_port_range_start: {}\n      gateway_port_range_end: {}\n",
            self.name,
            env.kubeconfig.display(),
            gw.name,
            gw.namespace,
            gw.address,
            self.range.0,
            self.range.1
        ));
        Config::parse(&y, "contour test config").expect("test config valid")
    }

    /// The shared Gateway stays; only the task namespace goes.
    async fn teardown(&self, env: &Env) {
        common::delete_namespace(&env.kube().await, &self.task_ns).await;
    }
}

/// A test that failed before `ended` leaves its listeners on the shared Gateway, where they would count as
/// foreign to the next run: removes every listener in `range` (never the placeholder) and waits until
/// their addresses refuse.
async fn clear_listeners(env: &Env, gw: &ContourGateway, range: (u16, u16)) {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway"),
        "gateways",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(env.kube().await, &gw.namespace, &ar);
    let inside = |l: &serde_json::Value| {
        l["port"]
            .as_u64()
            .is_some_and(|p| (u64::from(range.0)..=u64::from(range.1)).contains(&p))
    };
    for _ in 0..20 {
        let g = api.get(&gw.name).await.expect("the Contour Gateway");
        let listeners = g.data["spec"]["listeners"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let (stale, kept): (Vec<serde_json::Value>, Vec<serde_json::Value>) =
            listeners.into_iter().partition(inside);
        if stale.is_empty() {
            break;
        }
        println!(
            "removing listeners left by an earlier run: {:?}",
            stale.iter().map(|l| &l["name"]).collect::<Vec<_>>()
        );
        // Conditional on the resourceVersion read, so a Gateway changed meanwhile refuses the patch.
        let body = serde_json::json!({
            "metadata": { "resourceVersion": g.metadata.resource_version },
            "spec": { "listeners": kept }
        });
        if api
            .patch(&gw.name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in range.0..=range.1 {
        refused_at(SocketAddr::from((gw.address, p)), Instant::now(), 30).await;
    }
}

/// `ready` for `alloc`, and when this test first saw it.
async fn ready(replies: &Replies, alloc: &str) -> (Seen, Instant) {
    let r = replies.first(120, alloc, "ready").await;
    (r, Instant::now())
}

/// The `address` of proxy `name` in a `ready`, exactly as sent.
fn address_of(ready: &Seen, name: &str) -> SocketAddr {
    ready.body["proxies"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["address"].as_str())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address for proxy {name} in {:?}", ready.body))
}

/// One line through `to`, at once: the backend that answered, or why nothing did.
async fn one_exchange(to: SocketAddr, line: String) -> Result<String, String> {
    tokio::task::spawn_blocking(move || exchange(to, &line))
        .await
        .expect("exchange task")
        .map_err(|e| e.to_string())
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
    let mut backend = BTreeMap::new();
    for (t, (alloc, ports)) in tasks.iter().enumerate() {
        for (name, cport) in ports {
            let b = format!("task{t}-{name}");
            ns.serve(*cport, &b);
            let svc = itg::names::object_name(&rm.name, alloc, name);
            endpoint_slice(&client, &rm.task_ns, &svc, name, ns.addr, *cport).await;
            backend.insert((alloc.clone(), *name), b);
        }
    }
    let worker = Worker::start(rm.config(&env, &gw)).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    for (alloc, ports) in &tasks {
        master.started(alloc, &rm.task_ns, ports).await;
    }
    let mut addresses = Vec::new();
    let mut first_failed = Vec::new();
    for (alloc, ports) in &tasks {
        let (r, at) = ready(&replies, alloc).await;
        let targets: Vec<(SocketAddr, &String)> = ports
            .iter()
            .map(|(name, _)| (address_of(&r, name), &backend[&(alloc.clone(), *name)]))
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
    ns.serve(7001, "ending");
    let svc = itg::names::object_name(&rm.name, &alloc, "web");
    endpoint_slice(&client, &rm.task_ns, &svc, "web", ns.addr, 7001).await;
    let worker = Worker::start(rm.config(&env, &gw)).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    master.started(&alloc, &rm.task_ns, &[("web", 7001)]).await;
    let (r, at) = ready(&replies, &alloc).await;
    let to = address_of(&r, "web");
    let (after, failures) = first_answer_at(to, "ending", at, 60, Duration::from_millis(10)).await;
    println!(
        "contour: {to} first answered {} ms after ready (failed before: {failures:?})",
        after.as_millis()
    );

    master.ended(&alloc).await;
    replies.first(60, &alloc, "removed").await;
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
    let answers = replies
        .wait(120, "an answer", |seen| {
            seen.iter()
                .any(|s| s.alloc() == Some(alloc.as_str()) && s.kind != "removed")
        })
        .await;
    let answer = answers
        .iter()
        .find(|s| s.alloc() == Some(alloc.as_str()))
        .expect("an answer");
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
    let (r, _) = ready(&replies, &again).await;
    println!("contour, envoy back: ready at {}", address_of(&r, "web"));
    master.ended(&again).await;
    replies.first(60, &again, "removed").await;
    worker.stop().await;
    rm.teardown(&env).await;
}
