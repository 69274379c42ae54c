//! Time to reachable: from the instant `started` is published to the first byte echoed back through envoy
//! from the task's backend, with one worker behind a Gateway of Envoy Gateway's class (`wait_for_controller`
//! on, as for any class a controller serves). Beside it, in the same samples, the time to `ready`, and the
//! floor: the floor's own calls (floor.rs) on the same Gateway, timed from just before them to the first
//! byte through envoy, which is what Envoy Gateway and envoy take to program a port with no worker at all.
//!
//! The backend is a server in a network namespace behind a hand-made EndpointSlice, as in tests/e2e.rs
//! (tests/common/backend.rs). Probing starts with the publish (or the floor's first call): connect, send a
//! line, read the answer, every 2 ms until the backend's answer comes back.
//!
//! The worker's range is one port and the floor has one port of its own, so the port to probe is known
//! before the worker answers; after each sample the bench waits, untimed, until the port refuses
//! connections again, so no sample can be answered by the listener of the one before.

use std::time::{Duration, Instant};

use kube::Client;

use crate::common::backend::{self, Netns, first_answer_every, refused};
use crate::common::{Master, TestRm};
use crate::drive::{self, Waiter};
use crate::floor::Floor;

/// The host ports of this section, disjoint from tests/e2e.rs's 32100-32399: in Host mode every listener
/// of a Gateway of the envoy class binds 0.0.0.0:<port>.
pub const PORTS: (u16, u16) = (32400, 32499);
/// The operator's placeholder listener of the section's Gateway.
pub const PLACEHOLDER: u16 = 32400;
/// The worker's whole range.
pub const WORKER_PORT: u16 = 32401;
/// The floor's listener.
pub const FLOOR_PORT: u16 = 32402;
/// The range of a second worker, with the data plane probe off, and its Gateway's placeholder.
pub const UNPROBED_PORT: u16 = 32403;
pub const UNPROBED_PLACEHOLDER: u16 = 32404;
/// The backend's port in its namespace: the container port of the worker's and the floor's Service.
const BACKEND_PORT: u16 = 8888;
/// What the backend calls itself in its answers.
const BACKEND: &str = "reach";
/// Time between two tries of the probe: the figures' resolution.
const EVERY: Duration = Duration::from_millis(2);

/// Why this section cannot run on this machine, or `None`.
pub fn unavailable() -> Option<String> {
    if let Some(why) = crate::common::env_var("ITG_ENVOY_UNAVAILABLE") {
        return Some(format!("Envoy Gateway is not running: {why}"));
    }
    if crate::common::env_var("ITG_ENVOY_CLASS").is_none() {
        return Some("ITG_ENVOY_CLASS unknown: run `scripts/testenv up` first".into());
    }
    backend::unavailable().map(|why| format!("cannot run task backends: {why}"))
}

/// The backend every sample reaches.
pub fn backend() -> Netns {
    let mut ns = Netns::create();
    ns.serve(BACKEND_PORT, BACKEND);
    ns
}

/// One sample: how long to the reply (for the floor: to the end of its calls), and to the first byte
/// through envoy, both from the same instant; and the kinds of failure the probe met before that byte.
pub struct Sample {
    pub answered: Duration,
    pub reachable: Duration,
    pub failures: Vec<String>,
}

/// One exposure by the worker, from publish to first byte, then its end (untimed) until the port refuses.
pub async fn worker(
    client: &Client,
    ns: &Netns,
    m: &Master,
    w: &Waiter,
    rm: &TestRm,
    port: u16,
) -> Sample {
    let alloc = drive::alloc_id("reach");
    let service = itg::names::object_name(&rm.name, &alloc, "jupyter");
    backend::endpoint_slice(
        client,
        &rm.task_ns,
        &service,
        "jupyter",
        ns.addr,
        BACKEND_PORT,
    )
    .await;
    let t0 = Instant::now();
    let (ready, (reachable, failures)) = tokio::join!(
        drive::expose_from(m, w, &alloc, &rm.task_ns, t0),
        first_answer_every(port, BACKEND, t0, 300, EVERY),
    );
    let ready = ready.unwrap_or_else(|e| panic!("time to reachable: {e}"));
    let ended = Instant::now();
    drive::end(m, w, &alloc).await;
    refused(port, ended, 60).await;
    backend::delete_endpoint_slice(client, &rm.task_ns, &service).await;
    Sample {
        answered: ready,
        reachable,
        failures,
    }
}

/// The floor's calls for one port, from just before the first to the first byte, then its withdrawal
/// (untimed) until the port refuses.
pub async fn floor(client: &Client, ns: &Netns, fl: &Floor, task_ns: &str) -> Sample {
    let alloc = drive::alloc_id("reachfloor");
    let service = fl.object_name(&alloc);
    backend::endpoint_slice(client, task_ns, &service, "jupyter", ns.addr, BACKEND_PORT).await;
    let t0 = Instant::now();
    let (calls, (reachable, failures)) = tokio::join!(
        fl.expose(&alloc, FLOOR_PORT),
        first_answer_every(FLOOR_PORT, BACKEND, t0, 300, EVERY),
    );
    let withdrawn = Instant::now();
    fl.withdraw(&alloc, FLOOR_PORT).await;
    refused(FLOOR_PORT, withdrawn, 60).await;
    backend::delete_endpoint_slice(client, task_ns, &service).await;
    Sample {
        answered: calls,
        reachable,
        failures,
    }
}

/// The distinct kinds of failure the probes met before their first byte, with how many samples met each.
pub fn failures(samples: &[Sample]) -> String {
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    for s in samples {
        let mut seen: Vec<&str> = s.failures.iter().map(String::as_str).collect();
        seen.sort_unstable();
        seen.dedup();
        for k in seen {
            *kinds.entry(k).or_default() += 1;
        }
    }
    if kinds.is_empty() {
        return "none".into();
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{k} in {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
