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
use crate::common::{TestRm, Worker};
use crate::drive::{self, Waiter, pcts};
use crate::floor::Floor;
use crate::report::{info, ms};
use crate::{Bench, calls, common, floor};

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

impl Bench {
    /// Time to reachable through Envoy Gateway, with one worker, beside the time to ready in the same
    /// samples and the floor's own time to reachable on the same Gateway, the two interleaved.
    pub(crate) async fn reachable(&mut self) {
        if let Some(why) = unavailable() {
            if self.size.name == "ci" {
                panic!("time to reachable: {why} (at --size ci, as in the tests, it must run)");
            }
            self.rows
                .push(info("time to reachable", format!("skipped: {why}")));
            return;
        }
        let class = common::envoy_class();
        common::backend::clear_ports(&self.env, &class, PORTS).await;
        let port = WORKER_PORT;
        let rm = TestRm::on_class(&self.env, "reach", (port, port), &class, PLACEHOLDER).await;
        self.rms.push(rm);
        let i = self.rms.len() - 1;
        // The same, on a Gateway of its own, with the data plane probe off: what the probe costs.
        let mut off = TestRm::on_class(
            &self.env,
            "reachoff",
            (UNPROBED_PORT, UNPROBED_PORT),
            &class,
            UNPROBED_PLACEHOLDER,
        )
        .await;
        off.extra
            .push_str("    data_plane_probe: {enabled: false}\n");
        self.rms.push(off);
        let k = self.rms.len() - 1;
        let mut ns = backend();
        let client = self.env.kube().await;
        let mut ws = self.workers(&[i], 1).await;
        ws.extend(self.workers(&[k], 1).await);
        let (rm, off) = (&self.rms[i], &self.rms[k]);
        let m_off = Master::new(&self.env, &off.name).await;
        let m = Master::new(&self.env, &rm.name).await;
        // After the worker has started: it creates the state bucket.
        let fl = floor::Floor::new(
            self.env.nats().await,
            client.clone(),
            &rm.gateway_ns,
            &rm.gateway,
            &rm.task_ns,
        )
        .await;
        let calls = calls::snapshot();
        let (mut wk, mut fr, mut unprobed) = (Vec::new(), Vec::new(), Vec::new());
        let mut cold = None;
        const WARM_UP: usize = 2;
        let n = self.size.reachable;
        let to = loopback(WORKER_PORT);
        let floor_to = loopback(FLOOR_PORT);
        for j in 0..n + WARM_UP {
            // Alternate which goes first, as the latency section does.
            let (w, f) = if j % 2 == 0 {
                let w = worker(&client, &mut ns, &m, &self.waiter, &rm.task_ns, to).await;
                let f = floor(&client, &mut ns, &fl, &rm.task_ns, floor_to).await;
                (w, f)
            } else {
                let f = floor(&client, &mut ns, &fl, &rm.task_ns, floor_to).await;
                let w = worker(&client, &mut ns, &m, &self.waiter, &rm.task_ns, to).await;
                (w, f)
            };
            let u = worker(
                &client,
                &mut ns,
                &m_off,
                &self.waiter,
                &off.task_ns,
                loopback(UNPROBED_PORT),
            )
            .await;
            if j == 0 {
                cold = Some((w.answered, w.reachable));
            }
            if j >= WARM_UP {
                wk.push(w);
                fr.push(f);
                unprobed.push(u);
            }
        }
        let calls = calls.since();
        for w in ws {
            w.stop().await;
        }
        let steps = fl.breakdown();
        let ready = self.reach_rows("Envoy Gateway", "envoy", &wk, &fr, steps);
        let p =
            |s: &[Sample], f: fn(&Sample) -> Duration| pcts(&s.iter().map(f).collect::<Vec<_>>());
        let both = |x: drive::Pcts| format!("{} / {}", ms(x.p50), ms(x.p99));
        let off_ready = p(&unprobed, |s| s.answered);
        let off_reach = p(&unprobed, |s| s.reachable);
        let off_before = unprobed.iter().filter(|s| s.reachable < s.answered).count();
        let mut r = info(
            "  ready p50 / p99 with the data plane probe off (a Gateway of its own, same run)",
            both(off_ready),
        );
        r.reference = format!(
            "time to reachable p50 {}; first byte before ready in {off_before} of {n}",
            ms(off_reach.p50)
        );
        r.ratio = Some(ready.p50.as_secs_f64() / off_ready.p50.as_secs_f64());
        self.rows.push(r);
        if let Some((ready, reach)) = cold {
            self.rows.push(info(
                "  first exposure on the new Gateway (warm-up, not counted): ready / first byte",
                format!("{} / {}", ms(ready), ms(reach)),
            ));
        }
        self.rows
            .push(info("  worker's apiserver calls (count x mean)", calls));
        self.reachable_contour(&mut ns).await;
    }

    /// Time to reachable through Contour's envoy, beside the floor's on the same Gateway: testenv's one
    /// Contour Gateway, whose address is mapped to envoy as a LoadBalancer Service would map it; every
    /// probe connects to the address the `ready` names.
    async fn reachable_contour(&mut self, ns: &mut common::backend::Netns) {
        if let Some(why) = contour_unavailable() {
            if self.size.name == "ci" {
                panic!(
                    "time to reachable through Contour: {why} (at --size ci, as in the tests, it must run)"
                );
            }
            self.rows.push(info(
                "time to reachable, Contour",
                format!("skipped: {why}"),
            ));
            return;
        }
        let gw = common::contour::contour();
        let (wp, fp) = (CONTOUR_WORKER_PORT, CONTOUR_FLOOR_PORT);
        let mut rm = common::contour::ContourRm::new(&self.env, &gw, "reachct", (wp, fp)).await;
        // The floor's port was cleared with the worker's; the worker's range is its one port.
        rm.range = (wp, wp);
        let client = self.env.kube().await;
        let worker = Worker::start(rm.config(&self.env, &gw)).await;
        let m = Master::new(&self.env, &rm.name).await;
        let fl = floor::Floor::new(
            self.env.nats().await,
            client.clone(),
            &gw.namespace,
            &gw.name,
            &rm.task_ns,
        )
        .await;
        let to = std::net::SocketAddr::from((gw.address, wp));
        let floor_to = std::net::SocketAddr::from((gw.address, fp));
        let (mut wk, mut fr) = (Vec::new(), Vec::new());
        const WARM_UP: usize = 2;
        for j in 0..self.size.reachable + WARM_UP {
            let (w, f) = if j % 2 == 0 {
                let w = self::worker(&client, ns, &m, &self.waiter, &rm.task_ns, to).await;
                let f = floor(&client, ns, &fl, &rm.task_ns, floor_to).await;
                (w, f)
            } else {
                let f = floor(&client, ns, &fl, &rm.task_ns, floor_to).await;
                let w = self::worker(&client, ns, &m, &self.waiter, &rm.task_ns, to).await;
                (w, f)
            };
            if j >= WARM_UP {
                wk.push(w);
                fr.push(f);
            }
        }
        worker.stop().await;
        let steps = fl.breakdown();
        self.reach_rows("Contour", "Contour's envoy", &wk, &fr, steps);
        rm.teardown(&self.env).await;
    }

    /// The rows every controller's run of the reachable section prints: time to reachable beside the
    /// floor, time to ready in the same samples, the floor's calls and steps, and the failures met.
    /// Returns the worker's time to ready.
    fn reach_rows(
        &mut self,
        controller: &str,
        plane: &str,
        wk: &[Sample],
        fr: &[Sample],
        steps: String,
    ) -> drive::Pcts {
        let n = wk.len();
        let p =
            |s: &[Sample], f: fn(&Sample) -> Duration| pcts(&s.iter().map(f).collect::<Vec<_>>());
        let reach = p(wk, |s| s.reachable);
        let ready = p(wk, |s| s.answered);
        let floor_reach = p(fr, |s| s.reachable);
        let floor_calls = p(fr, |s| s.answered);
        let before = wk.iter().filter(|s| s.reachable < s.answered).count();
        let both = |x: drive::Pcts| format!("{} / {}", ms(x.p50), ms(x.p99));
        let mut r = info(
            format!(
                "time to reachable p50 / p99, 1 worker, {controller} ({n} samples): started published -> first byte through {plane}"
            ),
            both(reach),
        );
        r.reference = format!(
            "floor p50 {} / p99 {}",
            ms(floor_reach.p50),
            ms(floor_reach.p99)
        );
        r.ratio = Some(reach.p50.as_secs_f64() / floor_reach.p50.as_secs_f64());
        self.rows.push(r);
        let mut r = info(
            "  ready p50 / p99, same samples: started published -> ready",
            both(ready),
        );
        let mut gaps: Vec<f64> = wk
            .iter()
            .map(|s| (s.answered.as_secs_f64() - s.reachable.as_secs_f64()) * 1e3)
            .collect();
        gaps.sort_by(f64::total_cmp);
        let gap = gaps
            .get(gaps.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0.0);
        r.reference = format!(
            "time to reachable p50 {}; first byte before ready in {before} of {n}, ready - first byte p50 {gap:+.2} ms",
            ms(reach.p50)
        );
        r.ratio = Some(ready.p50.as_secs_f64() / reach.p50.as_secs_f64());
        self.rows.push(r);
        let mut r = info(
            format!(
                "floor p50 / p99: its calls (KV, Service, listener, TCPRoute, reply), from the first -> first byte through {plane}"
            ),
            both(floor_reach),
        );
        r.reference = format!(
            "the floor's calls alone p50 {} / p99 {}",
            ms(floor_calls.p50),
            ms(floor_calls.p99)
        );
        self.rows.push(r);
        self.rows.push(info("  floor steps p50", steps));
        self.rows.push(info(
            "  failures before the first byte, in how many samples",
            format!("worker: {}; floor: {}", failures(wk), failures(fr)),
        ));
        ready
    }
}
