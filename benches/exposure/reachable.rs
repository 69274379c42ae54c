//! Time to reachable: from the instant `started` is published to the first byte echoed back through envoy
//! from the task's backend, with one worker behind a Gateway of Envoy Gateway's class (`wait_for_controller`
//! on, as for any class a controller serves). Beside it, in the same samples, the time to `ready`, and the
//! floor: the floor's own calls (floor.rs) on the same Gateway, timed from just before them to the first
//! byte through envoy, which is what Envoy Gateway and envoy take to program a port with no worker at all.
//!
//! Each sample's task has a Pod of its own, made and Ready (kwok) before the clock starts and deleted after
//! the sample; the backend is a server in a network namespace answering on the Pod's IP, as in
//! tests/e2e.rs (tests/common/pods.rs). Its EndpointSlice is the EndpointSlice controller's, made once the
//! worker's (or the floor's) Service exists: that step is inside the figures, as in a cluster. Probing starts with the publish (or the floor's first call): connect, send a
//! line, read the answer, every 2 ms until the backend's answer comes back.
//!
//! The worker's range is one port and the floor has one port of its own, so the port to probe is known
//! before the worker answers; after each sample the bench waits, untimed, until the port refuses
//! connections again, so no sample can be answered by the listener of the one before.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use kube::Client;

use crate::common::Master;
use crate::common::backend::{self, Netns, first_answer_at, refused_at};
use crate::common::pods::{self, serve_task_pod, task_selector};
use crate::drive::{self, Waiter};
use crate::floor::Floor;

/// The ports of the Contour run, in testenv's Contour block (tests/contour.rs and tests/pod_lifecycle.rs
/// take 21101-21179): the worker's whole range, and the floor's listener.
pub const CONTOUR_WORKER_PORT: u16 = 21190;
pub const CONTOUR_FLOOR_PORT: u16 = 21191;

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

/// Why the Contour run cannot run on this machine, or `None`.
pub fn contour_unavailable() -> Option<String> {
    if let Some(why) = crate::common::env_var("ITG_CONTOUR_UNAVAILABLE") {
        return Some(format!("Contour is not running: {why}"));
    }
    if crate::common::env_var("ITG_CONTOUR_GATEWAY").is_none() {
        return Some("ITG_CONTOUR_GATEWAY unknown: run `scripts/testenv up` first".into());
    }
    None
}

/// `127.0.0.1:port`: where a Host-mode Envoy Gateway envoy listens.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Why this section cannot run on this machine, or `None`.
pub fn unavailable() -> Option<String> {
    if let Some(why) = crate::common::env_var("ITG_ENVOY_UNAVAILABLE") {
        return Some(format!("Envoy Gateway is not running: {why}"));
    }
    if let Some(why) = crate::common::env_var("ITG_KWOK_UNAVAILABLE") {
        return Some(format!("kwok is not running: {why}"));
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

/// One exposure by the worker, from publish to first byte at `to` (the address its `ready` will name),
/// then its end (untimed) until `to` refuses.
pub async fn worker(
    client: &Client,
    ns: &mut Netns,
    m: &Master,
    w: &Waiter,
    task_ns: &str,
    to: SocketAddr,
) -> Sample {
    let alloc = drive::alloc_id("reach");
    let sel = task_selector(&alloc);
    let backend = [("jupyter", BACKEND_PORT, BACKEND)];
    let (pod, _) = serve_task_pod(client, task_ns, &sel, &backend, ns).await;
    let t0 = Instant::now();
    let (ready, (reachable, failures)) = tokio::join!(
        drive::expose_from(m, w, &alloc, task_ns, t0),
        first_answer_at(to, BACKEND, t0, 300, EVERY),
    );
    let ready = ready.unwrap_or_else(|e| panic!("time to reachable: {e}"));
    let ended = Instant::now();
    drive::end(m, w, &alloc).await;
    refused_at(to, ended, 60).await;
    pods::delete_pod(client, task_ns, &pod, 30).await;
    Sample {
        answered: ready,
        reachable,
        failures,
    }
}

/// The floor's calls for its listener on `to`'s port, from just before the first to the first byte at
/// `to`, then its withdrawal (untimed) until `to` refuses.
pub async fn floor(
    client: &Client,
    ns: &mut Netns,
    fl: &Floor,
    task_ns: &str,
    to: SocketAddr,
) -> Sample {
    let alloc = drive::alloc_id("reachfloor");
    let backend = [("jupyter", BACKEND_PORT, BACKEND)];
    let (pod, _) = serve_task_pod(client, task_ns, fl.pod_selector(), &backend, ns).await;
    let t0 = Instant::now();
    let (calls, (reachable, failures)) = tokio::join!(
        fl.expose(&alloc, to.port()),
        first_answer_at(to, BACKEND, t0, 300, EVERY),
    );
    let withdrawn = Instant::now();
    fl.withdraw(&alloc, to.port()).await;
    refused_at(to, withdrawn, 60).await;
    pods::delete_pod(client, task_ns, &pod, 30).await;
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
