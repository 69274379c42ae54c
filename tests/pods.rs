//! The worker's Services with real Pods behind them: Pods on the Nodes kwok plays, the endpoints made by
//! Kubernetes' own EndpointSlice controller, not by hand. No Gateway controller is involved (the `itg`
//! class, which nothing serves): what is proven is that the Service the worker made selects the task's
//! Pods, and that the endpoint the controller lists is a place bytes really reach.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::backend::Netns;
use common::pods::{
    CONTROLLER_MANAGER, endpoints, kwok_nodes, mk_pod, wait_pod_ip, wait_pod_ready, wait_slices,
};
use common::{Scenario, suffix};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;

/// The label the test's Pods carry and the started's `pod_selector` names: one value per test.
fn selector() -> BTreeMap<String, String> {
    BTreeMap::from([("tests.internal-task-gateway.io/task".to_owned(), suffix())])
}

/// The slices' `(port name, port)` pairs.
fn slice_ports(slices: &[EndpointSlice]) -> Vec<(Option<String>, Option<i32>)> {
    slices
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| (p.name.clone(), p.port))
        .collect()
}

/// Every endpoint address of the slices, with its readiness.
fn addresses(slices: &[EndpointSlice]) -> Vec<(String, Option<bool>)> {
    slices
        .iter()
        .flat_map(endpoints)
        .map(|e| (e.address, e.ready))
        .collect()
}

/// Publishes a `started` of one port whose `pod_selector` is `sel`, waits for its `ready`, and returns the
/// name of the Service the worker made for that port.
async fn expose_selecting(
    s: &Scenario,
    sel: &BTreeMap<String, String>,
    port: (&str, u16),
) -> String {
    let alloc = format!("{}.1", uuid::Uuid::new_v4());
    s.master
        .started_selecting(uuid::Uuid::new_v4(), &alloc, &s.rm.task_ns, sel, &[port])
        .await;
    s.replies.first(30, &alloc, "ready").await;
    itg::names::object_name(&s.rm.name, &alloc, port.0)
}

/// Waits until the Service's slices list exactly `ip` with readiness `ready`, and returns them.
async fn wait_endpoint(
    s: &Scenario,
    service: &str,
    ip: Ipv4Addr,
    ready: bool,
    secs: u64,
    what: &str,
) -> Vec<EndpointSlice> {
    let client = s.env.kube().await;
    wait_slices(&client, &s.rm.task_ns, service, secs, what, |ss| {
        addresses(ss) == [(ip.to_string(), Some(ready))]
    })
    .await
}

/// Sends `line` to `to` and returns the answer; panics naming `what` when nothing answers.
async fn ask(to: SocketAddr, line: &'static str, what: &str) -> String {
    common::backend::ask(to, line)
        .await
        .unwrap_or_else(|e| panic!("connecting to {what} {to}: {e}"))
}

#[tokio::test]
async fn the_endpointslice_controller_lists_the_selected_pod_under_the_services_port_and_bytes_reach_it()
 {
    let nodes = kwok_nodes();
    let s = Scenario::start("pods", (44500, 44509), "").await;
    let (env, rm) = (&s.env, &s.rm);
    let client = env.kube().await;
    let sel = selector();
    let pod = format!("task-{}", suffix());
    mk_pod(&pod, &nodes[0])
        .labels(&sel)
        .port("jupyter", 8888)
        .create(&client, &rm.task_ns)
        .await;
    let ip = wait_pod_ready(&client, &rm.task_ns, &pod, 30).await;
    println!("Pod {}/{pod} on {} is Ready at {ip}", rm.task_ns, nodes[0]);

    let service = expose_selecting(&s, &sel, ("jupyter", 8888)).await;
    let svc = Api::<Service>::namespaced(client.clone(), &rm.task_ns)
        .get(&service)
        .await
        .expect("the worker's Service");
    let svc_port = svc
        .spec
        .and_then(|s| s.ports)
        .and_then(|ps| ps.into_iter().next())
        .expect("the Service's port");
    let slices = wait_endpoint(&s, &service, ip, true, 30, "ready endpoint at the Pod's IP").await;
    for slice in &slices {
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels
                .get("endpointslice.kubernetes.io/managed-by")
                .map(String::as_str),
            Some(CONTROLLER_MANAGER),
            "slice {:?} is not the EndpointSlice controller's: {labels:?}",
            slice.metadata.name
        );
    }
    assert_eq!(
        slice_ports(&slices),
        [(svc_port.name.clone(), Some(8888))],
        "the slice's port must be the Service port's name with the Pod's container port"
    );
    assert_eq!(svc_port.name.as_deref(), Some("jupyter"));
    let endpoint = endpoints(&slices[0]).remove(0);
    assert_eq!(endpoint.node.as_deref(), Some(nodes[0].as_str()));
    assert_eq!(
        endpoint.target.as_deref(),
        Some(format!("{}/{pod}", rm.task_ns).as_str())
    );
    println!(
        "EndpointSlice of {service}: {endpoint:?}, ports {:?}",
        slice_ports(&slices)
    );

    // What the controller lists is where bytes go: a backend answering on the Pod's IP.
    let mut backend = Netns::create();
    backend.serve_pod(ip, 8888, "task-a");
    let to = SocketAddr::from((
        endpoint
            .address
            .parse::<std::net::Ipv4Addr>()
            .expect("IPv4"),
        8888,
    ));
    let reply = ask(to, "hello", "the slice's endpoint").await;
    assert_eq!(reply, "task-a hello");
    println!("{to} answered {reply:?}");
    drop(backend);
    s.finish().await;
}

#[tokio::test]
async fn a_pod_whose_readiness_is_delayed_is_listed_not_ready_then_ready() {
    let nodes = kwok_nodes();
    let s = Scenario::start("podsdelay", (44510, 44519), "").await;
    let (env, rm) = (&s.env, &s.rm);
    let client = env.kube().await;
    let sel = selector();
    let service = expose_selecting(&s, &sel, ("tensorboard", 6006)).await;

    let delay = Duration::from_secs(10);
    let pod = format!("task-{}", suffix());
    let created = mk_pod(&pod, &nodes[1])
        .labels(&sel)
        .port("tensorboard", 6006)
        .ready_after(delay)
        .create(&client, &rm.task_ns)
        .await;
    let ip = wait_pod_ip(&client, &rm.task_ns, &pod, 30).await;
    // Listed while not ready: the controller publishes the address with ready false.
    wait_endpoint(
        &s,
        &service,
        ip,
        false,
        30,
        "not-ready endpoint at the Pod's IP",
    )
    .await;
    println!("{ip} listed with ready: false");
    wait_endpoint(&s, &service, ip, true, 60, "ready endpoint at the Pod's IP").await;
    // kwok held readiness back for the delay: the Pod's own record says when it turned Ready.
    let ready = wait_pod_ready(&client, &rm.task_ns, &pod, 5).await;
    assert_eq!(ready, ip);
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &rm.task_ns);
    let now = pods.get(&pod).await.expect("the Pod");
    let born = created
        .metadata
        .creation_timestamp
        .expect("creationTimestamp")
        .0;
    let turned = now
        .status
        .and_then(|s| s.conditions)
        .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time)
        .expect("Ready's lastTransitionTime")
        .0;
    let after = turned.duration_since(born);
    println!("{ip} listed with ready: true; the Pod turned Ready {after} after its creation");
    // Timestamps have whole seconds: allow one.
    assert!(
        after.as_secs() + 1 >= delay.as_secs() as i64,
        "the Pod turned Ready {after} after its creation, before its {delay:?} delay"
    );
    s.finish().await;
}

#[tokio::test]
async fn a_pod_deleted_and_made_again_elsewhere_gets_a_new_ip_and_the_slice_follows() {
    let nodes = kwok_nodes();
    let s = Scenario::start("podsmove", (44520, 44529), "").await;
    let (env, rm) = (&s.env, &s.rm);
    let client = env.kube().await;
    let sel = selector();
    let service = expose_selecting(&s, &sel, ("ssh", 2222)).await;

    let first = format!("task-{}", suffix());
    mk_pod(&first, &nodes[0])
        .labels(&sel)
        .port("ssh", 2222)
        .create(&client, &rm.task_ns)
        .await;
    let ip1 = wait_pod_ready(&client, &rm.task_ns, &first, 30).await;
    wait_endpoint(&s, &service, ip1, true, 30, "the first Pod").await;
    let mut backend = Netns::create();
    backend.serve_pod(ip1, 2222, "first");
    println!("first Pod at {ip1}, listed and answering");

    common::pods::delete_pod(&client, &rm.task_ns, &first, 30).await;
    wait_slices(
        &client,
        &rm.task_ns,
        &service,
        30,
        "slice without the deleted Pod",
        |ss| addresses(ss).is_empty(),
    )
    .await;
    println!("first Pod gone, and with it its endpoint");
    drop(backend);

    // Made again on the other Node, as a rescheduled Pod would be: an IP of that Node's podCIDR.
    let second = format!("task-{}", suffix());
    mk_pod(&second, &nodes[1])
        .labels(&sel)
        .port("ssh", 2222)
        .create(&client, &rm.task_ns)
        .await;
    let ip2 = wait_pod_ready(&client, &rm.task_ns, &second, 30).await;
    assert_ne!(ip1, ip2, "the Pod made again kept the deleted one's IP");
    let slices = wait_endpoint(&s, &service, ip2, true, 30, "the second Pod").await;
    let endpoint = endpoints(&slices[0]).remove(0);
    assert_eq!(endpoint.node.as_deref(), Some(nodes[1].as_str()));
    let mut backend = Netns::create();
    backend.serve_pod(ip2, 2222, "second");
    let to = SocketAddr::from((ip2, 2222));
    let reply = ask(to, "hello", "the new endpoint").await;
    assert_eq!(reply, "second hello");
    println!(
        "second Pod at {ip2}, listed on {}; {to} answered {reply:?}",
        nodes[1]
    );
    drop(backend);
    s.finish().await;
}
