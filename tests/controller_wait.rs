//! `ready` means reachable: with `wait_for_controller` on, the worker answers only once the Gateway's
//! controller reports the listener programmed and the route accepted. A Gateway whose class no controller
//! serves never gets there, and the started is answered `failed` with `timeout` at the deadline.

mod common;

use std::time::{Duration, Instant};

use common::{Env, Master, Replies, TestRm, Worker, config, envoy_class, observe};

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
        .wait(120, "an answer to started", |r| {
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
    replies.first(120, &alloc, "removed").await;
    worker.stop().await;
    rm.teardown(&env).await;
}

// ------------------------------------------------------------------------------ through Envoy Gateway

/// A resource manager whose own Gateway is of Envoy Gateway's class, with the wait on. Its placeholder
/// listener really binds on the host: `placeholder` must be free, and the range below the ephemeral range
/// (32768 and up here), where the servers' own connections may hold a port envoy must bind.
async fn envoy_rm(env: &Env, prefix: &str, range: (u16, u16), placeholder: u16) -> TestRm {
    let rm = TestRm::on_class(env, prefix, range, &envoy_class(), placeholder).await;
    assert!(rm.yaml(env).contains("wait_for_controller: true"));
    rm
}

/// An EndpointSlice for the Service `service`, as the task's pods would get: one ready endpoint.
async fn endpoint_slice(
    env: &Env,
    ns: &str,
    service: &str,
    suffix: &str,
    address_type: &str,
    address: &str,
) {
    let api: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        kube::Api::namespaced(env.kube().await, ns);
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-{suffix}"),
            "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "itg-tests",
            }
        },
        "addressType": address_type,
        "endpoints": [{ "addresses": [address], "conditions": { "ready": true } }],
        "ports": [{ "name": "jupyter", "port": 8888, "protocol": "TCP" }]
    });
    api.patch(
        &format!("{service}-{suffix}"),
        &kube::api::PatchParams::apply("itg-tests"),
        &kube::api::Patch::Apply(&slice),
    )
    .await
    .expect("apply an EndpointSlice");
}

/// Within 120 s (what a loaded two-core machine meets), the first reply to `alloc` that `done` accepts.
/// On a timeout the message says what the worker waits on: the replies so far, and the controller's last
/// status of the allocation's listener on the Gateway and of its route.
async fn answered(
    env: &Env,
    rm: &TestRm,
    replies: &Replies,
    alloc: &str,
    done: impl Fn(&common::Seen) -> bool,
) -> common::Seen {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(s) = replies.for_alloc(alloc).into_iter().find(|s| done(s)) {
            return s;
        }
        if Instant::now() > deadline {
            panic!(
                "no answer for {alloc} in 120 s; replies: {:?}; {}",
                replies.for_alloc(alloc),
                controller_status(env, rm, alloc).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The controller's last word on the allocation's listener and route, for a timeout's message.
async fn controller_status(env: &Env, rm: &TestRm, alloc: &str) -> String {
    let client = env.kube().await;
    let name = itg::names::object_name(&rm.name, alloc, "jupyter");
    let gw = kube::Api::<gateway_api::experimental::gateways::Gateway>::namespaced(
        client.clone(),
        &rm.gateway_ns,
    )
    .get_opt(&rm.gateway)
    .await;
    let listener = match gw {
        Ok(Some(gw)) => {
            let generation = gw.metadata.generation;
            let status = gw
                .status
                .and_then(|s| s.listeners)
                .and_then(|ls| ls.into_iter().find(|l| l.name == name))
                .map(|l| {
                    let conds: Vec<_> = l
                        .conditions
                        .iter()
                        .map(|c| {
                            (
                                c.type_.clone(),
                                c.status.clone(),
                                c.reason.clone(),
                                c.observed_generation,
                            )
                        })
                        .collect();
                    format!("attachedRoutes {}, {conds:?}", l.attached_routes)
                });
            format!("Gateway generation {generation:?}, listener {name}: {status:?}")
        }
        other => format!("Gateway: {other:?}"),
    };
    let route = kube::Api::<gateway_api::experimental::tcproutes::TcpRoute>::namespaced(
        client,
        &rm.task_ns,
    )
    .get_opt(&name)
    .await;
    let route = match route {
        Ok(Some(r)) => {
            let parents: Vec<_> = r
                .status
                .map(|s| s.parents)
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    p.conditions
                        .iter()
                        .map(|c| {
                            (
                                c.type_.clone(),
                                c.status.clone(),
                                c.reason.clone(),
                                c.message.clone(),
                                c.observed_generation,
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            format!("route generation {:?}: {parents:?}", r.metadata.generation)
        }
        other => format!("route: {other:?}"),
    };
    format!("{listener}; {route}")
}

async fn wait_until_empty(env: &Env, rm: &TestRm) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = observe(env, rm).await;
        if o.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left behind: {o:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn through_envoy_gateway_ready_comes_once_the_listener_is_programmed_and_the_route_accepted()
{
    let env = Env::load();
    let rm = envoy_rm(&env, "egok", (31700, 31707), 31709).await;
    let worker = Worker::start(config(&env, &[&rm], "")).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;

    // No endpoints: Envoy Gateway says ResolvedRefs=False (EndpointsNotFound), which counts as reachable.
    let alloc = format!("{}.1", uuid::Uuid::new_v4());
    let sent = Instant::now();
    master
        .started(&alloc, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    let ready = answered(&env, &rm, &replies, &alloc, |s| s.kind != "removed").await;
    assert_eq!(ready.kind, "ready", "{:?}", ready.body);
    println!("Envoy Gateway: started to ready in {:.2?}", sent.elapsed());
    // What the worker waited for is there now: the controller's own status, read as an operator would.
    let client = env.kube().await;
    let name = itg::names::object_name(&rm.name, &alloc, "jupyter");
    let gw = kube::Api::<gateway_api::experimental::gateways::Gateway>::namespaced(
        client.clone(),
        &rm.gateway_ns,
    )
    .get(&rm.gateway)
    .await
    .expect("the Gateway");
    let listener = gw
        .status
        .and_then(|s| s.listeners)
        .and_then(|ls| ls.into_iter().find(|l| l.name == name))
        .expect("the controller wrote our listener's status");
    let programmed = listener.conditions.iter().find(|c| c.type_ == "Programmed");
    println!(
        "listener {name} on port {:?}: attachedRoutes {}, Programmed {:?}",
        ready.ports(),
        listener.attached_routes,
        programmed.map(|c| (&c.status, &c.reason))
    );
    assert_eq!(programmed.map(|c| c.status.as_str()), Some("True"));
    assert!(listener.attached_routes >= 1);
    let route = kube::Api::<gateway_api::experimental::tcproutes::TcpRoute>::namespaced(
        client.clone(),
        &rm.task_ns,
    )
    .get(&name)
    .await
    .expect("the route");
    let parent = route
        .status
        .map(|s| s.parents)
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.parent_ref.name == rm.gateway)
        .expect("the route's status for our Gateway");
    let conds: Vec<(String, String, String)> = parent
        .conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect();
    println!("route {name}: {conds:?}");
    assert!(conds.contains(&("Accepted".into(), "True".into(), "Accepted".into())));

    master.ended(&alloc).await;
    replies.first(120, &alloc, "removed").await;
    wait_until_empty(&env, &rm).await;
    worker.stop().await;
    rm.teardown(&env).await;
}

#[tokio::test]
async fn a_route_envoy_gateway_refuses_is_answered_gateway_rejected_with_its_reason() {
    let env = Env::load();
    let rm = envoy_rm(&env, "egno", (31710, 31717), 31719).await;
    let worker = Worker::start(config(&env, &[&rm], "")).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;

    // The task's Service is served by IP and by FQDN endpoints at once, which Envoy Gateway refuses for a
    // backend (ResolvedRefs=False, UnsupportedAddressType): waiting will not change it.
    let alloc = format!("{}.1", uuid::Uuid::new_v4());
    let service = itg::names::object_name(&rm.name, &alloc, "jupyter");
    endpoint_slice(&env, &rm.task_ns, &service, "ip", "IPv4", "198.18.0.2").await;
    endpoint_slice(
        &env,
        &rm.task_ns,
        &service,
        "fqdn",
        "FQDN",
        "backend.example.com",
    )
    .await;
    let sent = Instant::now();
    master
        .started(&alloc, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    let answer = answered(&env, &rm, &replies, &alloc, |_| true).await;
    println!(
        "refused by Envoy Gateway: {} after {:.2?}: {}",
        answer.kind,
        sent.elapsed(),
        answer.body["message"]
    );
    assert_eq!(answer.kind, "failed", "{:?}", answer.body);
    assert_eq!(
        answer.body["reason"], "gateway_rejected",
        "{:?}",
        answer.body
    );
    assert_eq!(answer.body["retryable"], false);
    let message = answer.body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("UnsupportedAddressType") && message.contains("ResolvedRefs=False"),
        "the controller's reason and condition: {message}"
    );
    wait_until_empty(&env, &rm).await;
    master.ended(&alloc).await;
    replies.first(120, &alloc, "removed").await;
    worker.stop().await;
    rm.teardown(&env).await;
}
