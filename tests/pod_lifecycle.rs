//! Pods coming and going behind a live exposure, through both controllers' data planes: Envoy Gateway
//! (its own Gateway per test, Host mode) and Contour (testenv's shared Gateway, its address mapped as a
//! LoadBalancer Service would map it). The Pods are kwok's (tests/common/pods.rs); their endpoints are the
//! EndpointSlice controller's; what answers on a Pod's IP is a backend in a network namespace.
//!
//! What is proven, as docs/contract.md ("Pods behind an exposure") states it:
//! - a task whose Pod is not Ready yet is answered `ready` all the same (a route without endpoints counts
//!   as reachable), no byte reaches the not-ready Pod, and bytes flow once it turns Ready;
//! - a Pod deleted and made again with a new IP is followed by the data plane, and the worker writes
//!   nothing for it;
//! - a selector matching no Pod, or Pods of another namespace only, is answered `ready`, and no byte
//!   reaches a Pod of another namespace;
//! - two Pods behind one selector both receive connections.
//!
//! Ports: Envoy Gateway's Gateways take 31500-31599 (placeholders at 315x0), Contour's resource managers
//! 21130-21179 of testenv's Contour block.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::backend::{Netns, ask, clear_ports, first_answer_at};
use common::contour::{ContourRm, contour};
use common::pods::{
    delete_pod, is_ready, kwok_nodes, mk_pod, wait_pod_ip, wait_pod_ready, wait_slices,
};
use common::{Env, Master, Replies, Seen, TestRm, Worker, config, end, envoy_class, suffix};
use itg::config::Config;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use uuid::Uuid;

/// Whose data plane carries the test's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Through {
    EnvoyGateway,
    Contour,
}

/// A resource manager behind one controller, and what its worker is configured with.
struct Target {
    name: String,
    task_ns: String,
    config: Config,
    rm: Rm,
}

enum Rm {
    Envoy(TestRm),
    Contour(ContourRm),
}

impl Target {
    /// The test's resource manager: for Envoy Gateway a Gateway of its own with placeholder
    /// `31500 + 10 * slot` and the nine ports above it; for Contour the ports `21130 + 10 * slot` to `+ 9`.
    async fn new(env: &Env, through: Through, prefix: &str, slot: u16) -> Target {
        match through {
            Through::EnvoyGateway => {
                let class = envoy_class();
                let base = 31500 + 10 * slot;
                clear_ports(env, &class, (base, base + 9)).await;
                let rm = TestRm::on_class(env, prefix, (base + 1, base + 9), &class, base).await;
                Target {
                    name: rm.name.clone(),
                    task_ns: rm.task_ns.clone(),
                    config: config(env, &[&rm], ""),
                    rm: Rm::Envoy(rm),
                }
            }
            Through::Contour => {
                let gw = contour();
                let base = 21130 + 10 * slot;
                let rm = ContourRm::new(env, &gw, prefix, (base, base + 9)).await;
                Target {
                    name: rm.name.clone(),
                    task_ns: rm.task_ns.clone(),
                    config: rm.config(env, &gw),
                    rm: Rm::Contour(rm),
                }
            }
        }
    }

    async fn teardown(&self, env: &Env) {
        match &self.rm {
            Rm::Envoy(rm) => rm.teardown(env).await,
            Rm::Contour(rm) => rm.teardown(env).await,
        }
    }
}

/// A worker, the master and the reply collector of one target.
async fn serve(env: &Env, t: &Target) -> (Worker, Master, Replies) {
    let worker = Worker::start(t.config.clone()).await;
    let master = Master::new(env, &t.name).await;
    let replies = Replies::watch(env, &t.name).await;
    (worker, master, replies)
}

/// A label of the test's own, for a selector.
fn selector() -> BTreeMap<String, String> {
    BTreeMap::from([("tests.internal-task-gateway.io/task".to_owned(), suffix())])
}

/// Publishes a started of one port `web` (container port 7001) selecting `sel`, and waits for its
/// `ready`: the reply, and how long after the publish it came.
async fn expose(
    master: &Master,
    replies: &Replies,
    alloc: &str,
    ns: &str,
    sel: &BTreeMap<String, String>,
) -> (Seen, Duration) {
    let t0 = Instant::now();
    master
        .started_selecting(Uuid::new_v4(), alloc, ns, sel, &[("web", 7001)])
        .await;
    let r = replies.first(120, alloc, "ready").await;
    (r, t0.elapsed())
}

/// One line through `to`: the answer, or the kind of failure.
async fn try_once(to: SocketAddr, line: &str) -> Result<String, String> {
    ask(to, line).await.map_err(|e| e.kind().to_string())
}

/// `n` lines through `to`, `every` apart: how often each answer or failure came.
async fn tally(to: SocketAddr, n: usize, every: Duration) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let got = try_once(to, &format!("n{i}")).await;
        let key = match got {
            // The backend's name: its answer is "<name> n<i>".
            Ok(a) => a.split_whitespace().next().unwrap_or_default().to_owned(),
            Err(kind) => format!("failed: {kind}"),
        };
        *seen.entry(key).or_default() += 1;
        tokio::time::sleep(every).await;
    }
    seen
}

/// Polls the Pod until it is Ready: the instant this test saw it so.
async fn seen_ready(client: &kube::Client, ns: &str, pod: &str, secs: u64) -> Instant {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if api.get(pod).await.is_ok_and(|p| is_ready(&p)) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "Pod {ns}/{pod} not Ready within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the worker has written for one allocation, as versions that change with any write of its: the
/// Service's resourceVersion, the TCPRoute's generation and the Gateway listener's managed-fields entry.
async fn written(env: &Env, t: &Target, alloc: &str) -> (String, i64, String) {
    use gateway_api::experimental::gateways::Gateway;
    use gateway_api::experimental::tcproutes::TcpRoute;
    let client = env.kube().await;
    let name = itg::names::object_name(&t.name, alloc, "web");
    let svc = Api::<Service>::namespaced(client.clone(), &t.task_ns)
        .get(&name)
        .await
        .expect("the worker's Service");
    let route = Api::<TcpRoute>::namespaced(client.clone(), &t.task_ns)
        .get(&name)
        .await
        .expect("the worker's TCPRoute");
    let (gw_ns, gw) = match &t.rm {
        Rm::Envoy(rm) => (rm.gateway_ns.clone(), rm.gateway.clone()),
        Rm::Contour(_) => {
            let g = contour();
            (g.namespace, g.name)
        }
    };
    let gateway = Api::<Gateway>::namespaced(client, &gw_ns)
        .get(&gw)
        .await
        .expect("the Gateway");
    let manager = itg::names::listener_field_manager(&t.name, &name);
    let entry = gateway
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.manager.as_deref() == Some(manager.as_str()))
        .map(|m| format!("{:?} {:?}", m.time, m.fields_v1))
        .unwrap_or_else(|| panic!("no managed-fields entry of {manager} on {gw_ns}/{gw}"));
    (
        svc.metadata.resource_version.expect("resourceVersion"),
        route.metadata.generation.expect("generation"),
        entry,
    )
}

const LATE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_envoy_gateway_a_pod_ready_60_s_after_started_is_answered_ready_first_and_reached_once_ready()
 {
    pod_ready_late(Through::EnvoyGateway, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_contour_a_pod_ready_60_s_after_started_is_answered_ready_first_and_reached_once_ready()
 {
    pod_ready_late(Through::Contour, 0).await;
}

/// The Pod is made with the started, as a resource manager makes it, and turns Ready `LATE` later. Its
/// backend answers on its IP from the start, so only the data plane's readiness keeps bytes from it.
async fn pod_ready_late(through: Through, slot: u16) {
    let env = Env::load();
    let t = Target::new(&env, through, "podlate", slot).await;
    let client = env.kube().await;
    let (worker, master, replies) = serve(&env, &t).await;
    let alloc = format!("{}.1", Uuid::new_v4());
    let sel = selector();
    let pod = format!("task-{}", suffix());
    let started = Instant::now();
    let (net, (r, after)) = tokio::join!(
        async {
            mk_pod(&pod, &kwok_nodes()[0])
                .labels(&sel)
                .port("web", 7001)
                .ready_after(LATE)
                .create(&client, &t.task_ns)
                .await;
            let ip = wait_pod_ip(&client, &t.task_ns, &pod, 30).await;
            let mut net = Netns::create();
            net.serve_pod(ip, 7001, "late");
            net
        },
        expose(&master, &replies, &alloc, &t.task_ns, &sel),
    );
    let pods = Api::<Pod>::namespaced(client.clone(), &t.task_ns);
    let still_unready = !is_ready(&pods.get(&pod).await.expect("the Pod"));
    println!(
        "{through:?}: a started whose Pod turns Ready {LATE:?} later was answered ready after {} ms, \
         the Pod not Ready yet: {still_unready}",
        after.as_millis()
    );
    assert!(
        still_unready,
        "the Pod turned Ready before the ready reply: the test proves nothing"
    );
    let to = r.address("web");
    let service = itg::names::object_name(&t.name, &alloc, "web");
    // Kubernetes lists the not-Ready Pod in the slice, as not ready.
    let slices = wait_slices(
        &client,
        &t.task_ns,
        &service,
        30,
        "the Pod, not ready",
        |ss| {
            ss.iter()
                .flat_map(common::pods::endpoints)
                .any(|e| e.ready == Some(false))
        },
    )
    .await;
    let listed: Vec<_> = slices.iter().flat_map(common::pods::endpoints).collect();
    // While the Pod is not Ready, the address is served. Contour leaves a not-ready endpoint out; Envoy
    // Gateway's envoy reaches it all the same (seen here; likely envoy balancing over unhealthy hosts when
    // none is healthy, not checked in its config).
    let before = tally(to, 20, Duration::from_millis(100)).await;
    println!("{through:?}: {to} while the Pod is not Ready (its slice: {listed:?}): {before:?}");
    match through {
        Through::Contour => assert!(
            !before.contains_key("late"),
            "Contour sent bytes to a not-Ready Pod: {before:?}"
        ),
        Through::EnvoyGateway => assert_eq!(
            before.get("late"),
            Some(&20),
            "Envoy Gateway no longer reaches a lone not-Ready Pod (docs/contract.md says it does): \
             {before:?}"
        ),
    }
    assert!(
        !before.keys().any(|k| k.contains("refused")),
        "the address refused connections: the port is not served: {before:?}"
    );
    let turned = seen_ready(&client, &t.task_ns, &pod, LATE.as_secs() + 30).await;
    let (first, failures) =
        first_answer_at(to, "late", turned, 30, Duration::from_millis(10)).await;
    println!(
        "{through:?}: Pod Ready {} s after the started; its first byte through {to} came {} ms after the \
         Pod was seen Ready (tries every 10 ms; failed before: {failures:?})",
        turned.duration_since(started).as_secs(),
        first.as_millis()
    );
    end(&master, &replies, &alloc).await;
    drop(net);
    worker.stop().await;
    t.teardown(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_envoy_gateway_a_pod_made_again_with_a_new_ip_is_followed_and_the_worker_writes_nothing()
 {
    pod_restart(Through::EnvoyGateway, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_contour_a_pod_made_again_with_a_new_ip_is_followed_and_the_worker_writes_nothing()
{
    pod_restart(Through::Contour, 1).await;
}

/// A restart as a resource manager does it: the Pod deleted, and one with the same labels made on the other
/// Node, with an IP of that Node's podCIDR. The old IP stops answering with its Pod.
async fn pod_restart(through: Through, slot: u16) {
    let env = Env::load();
    let t = Target::new(&env, through, "podmove", slot).await;
    let client = env.kube().await;
    let nodes = kwok_nodes();
    let (worker, master, replies) = serve(&env, &t).await;
    let alloc = format!("{}.1", Uuid::new_v4());
    let sel = selector();
    let first = format!("task-{}", suffix());
    mk_pod(&first, &nodes[0])
        .labels(&sel)
        .port("web", 7001)
        .create(&client, &t.task_ns)
        .await;
    let ip1 = wait_pod_ready(&client, &t.task_ns, &first, 30).await;
    let mut net1 = Netns::create();
    net1.serve_pod(ip1, 7001, "first");
    let (r, _) = expose(&master, &replies, &alloc, &t.task_ns, &sel).await;
    let to = r.address("web");
    first_answer_at(to, "first", Instant::now(), 30, Duration::from_millis(10)).await;
    // Settle: the worker's own follow-up (status reads, the probe) is over once ready is sent.
    let before = written(&env, &t, &alloc).await;

    let deleted = Instant::now();
    delete_pod(&client, &t.task_ns, &first, 30).await;
    drop(net1);
    let second = format!("task-{}", suffix());
    mk_pod(&second, &nodes[1])
        .labels(&sel)
        .port("web", 7001)
        .create(&client, &t.task_ns)
        .await;
    let ip2 = wait_pod_ip(&client, &t.task_ns, &second, 30).await;
    assert_ne!(ip1, ip2, "the Pod made again kept the old IP");
    let mut net2 = Netns::create();
    net2.serve_pod(ip2, 7001, "second");
    let turned = seen_ready(&client, &t.task_ns, &second, 30).await;
    let (after, failures) =
        first_answer_at(to, "second", turned, 30, Duration::from_millis(10)).await;
    println!(
        "{through:?}: Pod {ip1} deleted and made again at {ip2}: the new Pod was Ready {} ms after the \
         deletion began, and answered through {to} {} ms after it was seen Ready ({} ms after the \
         deletion began; failed before: {failures:?})",
        turned.duration_since(deleted).as_millis(),
        after.as_millis(),
        (turned + after).duration_since(deleted).as_millis()
    );
    let now = tally(to, 20, Duration::from_millis(20)).await;
    assert_eq!(
        now,
        BTreeMap::from([("second".to_owned(), 20)]),
        "after the restart every connection reaches the new Pod"
    );
    assert_eq!(
        written(&env, &t, &alloc).await,
        before,
        "the worker wrote its Service, route or listener for a Pod's restart"
    );
    let kinds: Vec<String> = replies
        .for_alloc(&alloc)
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(
        kinds,
        vec!["ready".to_owned()],
        "the master was told something of a Pod's restart"
    );
    println!(
        "{through:?}: the worker's Service, TCPRoute and listener are unchanged by the restart, and its \
         only reply is the first ready"
    );
    end(&master, &replies, &alloc).await;
    drop(net2);
    worker.stop().await;
    t.teardown(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_envoy_gateway_a_selector_of_no_pod_or_of_another_namespaces_pods_is_ready_and_reaches_nothing()
 {
    selector_matches_nothing_here(Through::EnvoyGateway, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_contour_a_selector_of_no_pod_or_of_another_namespaces_pods_is_ready_and_reaches_nothing()
 {
    selector_matches_nothing_here(Through::Contour, 2).await;
}

/// Two allocations: one selecting no Pod anywhere, one selecting only a Pod of another namespace, which
/// is Ready and whose backend answers on its IP.
async fn selector_matches_nothing_here(through: Through, slot: u16) {
    let env = Env::load();
    let t = Target::new(&env, through, "podnone", slot).await;
    let client = env.kube().await;
    let (worker, master, replies) = serve(&env, &t).await;
    let other_ns = format!("other-{}", suffix());
    common::make_namespace(&client, &other_ns).await;
    let elsewhere = selector();
    let pod = format!("task-{}", suffix());
    mk_pod(&pod, &kwok_nodes()[0])
        .labels(&elsewhere)
        .port("web", 7001)
        .create(&client, &other_ns)
        .await;
    let ip = wait_pod_ready(&client, &other_ns, &pod, 30).await;
    let mut net = Netns::create();
    net.serve_pod(ip, 7001, "elsewhere");

    for (what, sel) in [
        ("no Pod at all", selector()),
        ("only a Pod of another namespace", elsewhere.clone()),
    ] {
        let alloc = format!("{}.1", Uuid::new_v4());
        let (r, after) = expose(&master, &replies, &alloc, &t.task_ns, &sel).await;
        let to = r.address("web");
        let service = itg::names::object_name(&t.name, &alloc, "web");
        // The controller makes the Service's slice, with no endpoint in it.
        let slices = wait_slices(
            &client,
            &t.task_ns,
            &service,
            30,
            "a slice of the Service",
            |ss| !ss.is_empty(),
        )
        .await;
        let listed: Vec<_> = slices.iter().flat_map(common::pods::endpoints).collect();
        assert!(listed.is_empty(), "{what}: endpoints listed: {listed:?}");
        let seen = tally(to, 20, Duration::from_millis(50)).await;
        println!(
            "{through:?}: a selector of {what} was answered {} after {} ms at {to}; its slice lists no \
             endpoint; 20 connections: {seen:?}",
            r.kind,
            after.as_millis()
        );
        assert!(
            seen.keys().all(|k| k.starts_with("failed")),
            "{what}: a connection reached a backend: {seen:?}"
        );
        assert!(
            !seen.keys().any(|k| k.contains("refused")),
            "{what}: the address refused connections, so it is not served: {seen:?}"
        );
        end(&master, &replies, &alloc).await;
    }
    drop(net);
    worker.stop().await;
    common::delete_namespace(&client, &other_ns).await;
    t.teardown(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_envoy_gateway_two_pods_behind_one_selector_both_receive_connections() {
    two_pods(Through::EnvoyGateway, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_contour_two_pods_behind_one_selector_both_receive_connections() {
    two_pods(Through::Contour, 3).await;
}

/// A task of two Pods, one on each Node, both selected and both Ready.
async fn two_pods(through: Through, slot: u16) {
    let env = Env::load();
    let t = Target::new(&env, through, "podtwo", slot).await;
    let client = env.kube().await;
    let nodes = kwok_nodes();
    let (worker, master, replies) = serve(&env, &t).await;
    let sel = selector();
    // Each Pod's backend in a namespace of its own: both listen on the same container port.
    let mut nets = Vec::new();
    let mut ips = Vec::new();
    for (i, node) in nodes.iter().take(2).enumerate() {
        let pod = format!("task-{}", suffix());
        mk_pod(&pod, node)
            .labels(&sel)
            .port("web", 7001)
            .create(&client, &t.task_ns)
            .await;
        let ip = wait_pod_ready(&client, &t.task_ns, &pod, 30).await;
        let mut net = Netns::create();
        net.serve_pod(ip, 7001, &format!("pod{i}"));
        nets.push(net);
        ips.push(ip.to_string());
    }
    let alloc = format!("{}.1", Uuid::new_v4());
    let (r, _) = expose(&master, &replies, &alloc, &t.task_ns, &sel).await;
    let to = r.address("web");
    let service = itg::names::object_name(&t.name, &alloc, "web");
    wait_slices(
        &client,
        &t.task_ns,
        &service,
        30,
        "both Pods, ready",
        |ss| {
            let mut ready: Vec<String> = ss
                .iter()
                .flat_map(common::pods::endpoints)
                .filter(|e| e.ready == Some(true))
                .map(|e| e.address)
                .collect();
            ready.sort();
            let mut want = ips.clone();
            want.sort();
            ready == want
        },
    )
    .await;
    first_answer_any(to).await;
    let seen = tally(to, 40, Duration::from_millis(20)).await;
    println!("{through:?}: 40 connections through {to} to a task of two Pods ({ips:?}): {seen:?}");
    for i in 0..2 {
        assert!(
            seen.get(&format!("pod{i}")).copied().unwrap_or(0) > 0,
            "pod{i} received no connection: {seen:?}"
        );
    }
    end(&master, &replies, &alloc).await;
    drop(nets);
    worker.stop().await;
    t.teardown(&env).await;
}

/// Waits until `to` is answered by any backend (the data plane may take a moment to list both Pods).
async fn first_answer_any(to: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while try_once(to, "hello").await.is_err() {
        assert!(Instant::now() < deadline, "{to} answered nothing in 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
