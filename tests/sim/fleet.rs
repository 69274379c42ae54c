//! The fleet: workers serving the events stream through the real handler and the consumer's real decision,
//! their reconcilers, a replay beside them, the master publishing events, and the chaos that kills and
//! restarts workers and loses the bucket.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use itg::answers::Handled;
use itg::config::{Config, WorkerConfig};
use itg::contract::EventKind;
use itg::delivery::{self, Deliveries, Next, Served};
use itg::reconciler::Reconciler;
use itg::resource_manager::RmContext;
use itg::sink::{DeadLetter, Replier};
use itg::worker::Handler;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::world::{GW_NS, NS, RM, SimCluster, SimDataPlane, SimReplier, SimStore, World};

pub type SimHandler = Handler<SimStore, SimCluster>;

/// The resource manager's config, as the worker would load it.
fn config(w: &World) -> (RmContext, WorkerConfig) {
    let p = &w.p;
    let pool: String = (1..p.pool)
        .map(|at| {
            format!(
                "{{gateway_name: itg-{at}, gateway_namespace: {GW_NS}, gateway_ip: 203.0.113.{}}}",
                10 + at
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = format!(
        "nats: {{url: 'nats://127.0.0.1:4222'}}\nresource_managers:\n  - name: {RM}\n    listener_mode: {}\n    listener_limit: {}\n    data_plane_probe: {{enabled: {}, grace: 3s, deadline: 40s}}\n    internal_task_gateway: {{gateway_name: itg-0, gateway_namespace: {GW_NS}, gateway_ip: 203.0.113.10, gateway_port_range_start: {}, gateway_port_range_end: {}}}\n    gateway_pool: [{pool}]\n",
        if p.listenerset {
            "listenerset"
        } else {
            "gateway"
        },
        p.listener_limit + 3,
        p.probe,
        p.range_start,
        p.range_start + p.range_len - 1,
    );
    let cfg =
        Config::parse(&yaml, "sim").unwrap_or_else(|e| panic!("the simulated config: {e}\n{yaml}"));
    let mut timing = cfg.worker.clone();
    timing.capacity_deadline.0 = Duration::from_secs(30);
    timing.kubernetes_deadline.0 = Duration::from_secs(40);
    timing.controller_deadline.0 = Duration::from_secs(20);
    timing.retry_min.0 = Duration::from_millis(250);
    timing.retry_max.0 = Duration::from_secs(4);
    timing.reconcile_interval.0 = Duration::from_secs(5);
    timing.reconcile_hold_off.0 = Duration::from_secs(10);
    (RmContext::new(&cfg.resource_managers[0]), timing)
}

pub fn handler(w: &Arc<World>) -> SimHandler {
    let (rm, timing) = config(w);
    let clusters = (0..w.p.pool)
        .map(|at| SimCluster {
            w: Arc::clone(w),
            at,
        })
        .collect();
    Handler::with_pool(rm, SimStore(Arc::clone(w)), clusters, timing)
        .with_data_plane(Arc::new(SimDataPlane(Arc::clone(w))))
}

/// One worker process: its consumer lanes and its reconciler loop.
pub struct Worker {
    pub tasks: Vec<JoinHandle<()>>,
}

impl Worker {
    pub fn start(w: &Arc<World>, id: usize, gen_: u64) -> Worker {
        let h = handler(w);
        let mut tasks = Vec::new();
        for lane in 0..w.p.lanes {
            let (w, h) = (Arc::clone(w), h.clone());
            tasks.push(tokio::spawn(
                async move { serve(&w, &h, id, gen_, lane).await },
            ));
        }
        if w.p.reconcile {
            let (w, h) = (Arc::clone(w), h.clone());
            tasks.push(tokio::spawn(async move { reconcile(&w, &h, id).await }));
        }
        w.sched
            .note(|| format!("worker {id} starts (generation {gen_})"));
        Worker { tasks }
    }

    /// Kills the worker: its tasks are dropped wherever they wait.
    pub fn kill(self, w: &World, id: usize) {
        for t in &self.tasks {
            t.abort();
        }
        w.sched.note(|| format!("worker {id} KILLED"));
        w.crashed(id);
    }
}

/// One consumer lane: pull, serve, and do what the consumer's decision says.
async fn serve(w: &Arc<World>, h: &SimHandler, id: usize, gen_: u64, lane: usize) {
    let timing = config(w).1;
    let replier = SimReplier(Arc::clone(w));
    loop {
        let msg = loop {
            let notified = w.arrivals.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match w.take(id, gen_) {
                Ok(m) => break m,
                Err(next) => {
                    let wait =
                        next.unwrap_or_else(|| itg::clock::instant() + Duration::from_secs(3600));
                    tokio::select! {
                        biased;
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(wait) => {}
                    }
                }
            }
        };
        w.sched.note(|| {
            format!(
                "worker {id}.{lane} takes {} #{} {} (delivery {})",
                msg.kind.as_str(),
                msg.seq,
                msg.alloc,
                msg.delivered
            )
        });
        let handled = tokio::time::timeout(
            timing.kubernetes_deadline.0,
            h.handle(msg.kind, &msg.payload),
        )
        .await;
        let deliveries = Deliveries {
            max_deliver: w.p.max_deliver,
        };
        let next = match &handled {
            Err(_) => delivery::next(
                msg.kind,
                Served::Overran,
                msg.delivered,
                deliveries,
                &timing,
            ),
            Ok(Handled::Answer { reply, msg_id }) => {
                let stored = replier
                    .publish(reply, msg_id)
                    .await
                    .map_err(|e| e.to_string());
                let noted = match &stored {
                    Ok(()) => h.stored(reply).await.is_ok(),
                    Err(_) => true,
                };
                let served = match &stored {
                    Ok(()) if !noted => Served::StoredUnnoted,
                    Ok(()) => Served::Answered { stored: Ok(()) },
                    Err(e) => Served::Answered {
                        stored: Err(e.as_str()),
                    },
                };
                delivery::next(msg.kind, served, msg.delivered, deliveries, &timing)
            }
            Ok(Handled::Done) => Next::Ack,
            Ok(Handled::Retry { why }) => {
                w.sched
                    .note(|| format!("worker {id}.{lane} retry {}: {why}", msg.alloc));
                delivery::next(
                    msg.kind,
                    Served::Retry { why },
                    msg.delivered,
                    deliveries,
                    &timing,
                )
            }
            Ok(Handled::Defer { why }) => delivery::next(
                msg.kind,
                Served::Defer { why },
                msg.delivered,
                deliveries,
                &timing,
            ),
        };
        w.sched
            .note(|| format!("worker {id}.{lane} #{} {} -> {next:?}", msg.seq, msg.alloc));
        // A lost acknowledgement: JetStream delivers the event again after the ack wait.
        let lost = w.p.ack_lost > 0.0 && w.sched.with_rng(|r| r.chance(w.p.ack_lost));
        match next {
            Next::Ack if lost => w.settle(msg.seq, Some(w.p.ack_wait)),
            Next::Ack => w.settle(msg.seq, None),
            Next::Nak(d) => w.settle(msg.seq, Some(d)),
            Next::Requeue { why } => {
                let subject = itg::contract::event_subject(RM, msg.kind);
                let _ = replier.requeue(&subject, &msg.payload, msg.seq).await;
                w.sched.note(|| format!("requeued #{}: {why}", msg.seq));
                w.settle(msg.seq, None);
            }
            Next::GiveUp { cause, why } => {
                let letter = DeadLetter {
                    resource_manager: RM,
                    kind: msg.kind,
                    original_subject: "sim",
                    original_sequence: msg.seq,
                    error: &why,
                    payload: &msg.payload,
                };
                let _ = replier.dead_letter(&letter).await;
                if msg.kind == EventKind::Started
                    && let Some(Handled::Answer { reply, msg_id }) =
                        h.given_up(&msg.payload, &why, msg.seq, cause).await
                    && replier.publish(&reply, &msg_id).await.is_ok()
                {
                    let _ = h.stored(&reply).await;
                }
                w.settle(msg.seq, None);
            }
        }
    }
}

/// The worker's reconciler: a pass per Gateway of the pool every interval.
async fn reconcile(w: &Arc<World>, h: &SimHandler, id: usize) {
    let timing = config(w).1;
    let mut passes: Vec<_> = (0..w.p.pool)
        .map(|at| {
            Reconciler::new(
                h.clone(),
                SimStore(Arc::clone(w)),
                SimCluster {
                    w: Arc::clone(w),
                    at,
                },
                timing.reconcile_hold_off.0,
            )
            .judging(at)
        })
        .collect();
    loop {
        let jitter = w.sched.with_rng(|r| r.below(2_000));
        tokio::time::sleep(timing.reconcile_interval.0 + Duration::from_millis(jitter)).await;
        for (at, r) in passes.iter_mut().enumerate() {
            match r.pass(false).await {
                Ok(actions) if !actions.is_empty() => {
                    w.sched
                        .note(|| format!("worker {id} reconciled gw{at}: {actions:?}"));
                }
                Ok(_) => {}
                Err(e) => w
                    .sched
                    .note(|| format!("worker {id} reconcile gw{at} failed: {e}")),
            }
        }
    }
}

/// Runs a replay of everything published so far, as `itgctl replay` does.
pub async fn replay(w: &Arc<World>, why: &str) {
    let h = handler(w);
    let events = w.stream();
    w.sched
        .note(|| format!("replay ({why}) of {} events begins", events.len()));
    let store = SimStore(Arc::clone(w));
    let replier = SimReplier(Arc::clone(w));
    // An incomplete replay says to run it again, and the operator does, as often as it takes.
    for run in 1..=10 {
        let summary = itg::replay::replay_events(&h, &store, &replier, &events).await;
        w.sched
            .note(|| format!("replay ({why}) run {run} ends: {summary:?}"));
        if summary.is_ok() {
            break;
        }
    }
}

/// The events the master publishes, in order, each with its time.
pub fn script(w: &World) -> Vec<(Duration, EventKind, String, Bytes, Option<String>)> {
    let p = &w.p;
    let mut out = Vec::new();
    let id = |w: &World| {
        Uuid::from_u64_pair(
            w.sched.with_rng(|r| r.next()),
            w.sched.with_rng(|r| r.next()),
        )
    };
    #[allow(clippy::cast_possible_truncation)]
    let span_ms = p.span.as_millis() as u64;
    for i in 0..p.allocs {
        let a = format!("a{i}");
        let n = w.sched.with_rng(|r| r.range(1, p.proxies as u64));
        let ports: Vec<_> = (0..n)
            .map(|j| (format!("p{j}"), 8000 + u16::try_from(j).unwrap()))
            .collect();
        let start_at = w.sched.with_rng(|r| r.below(span_ms + 1));
        let started = |eid: Uuid| {
            let body = serde_json::json!({
                "schema_version": itg::contract::SCHEMA_VERSION,
                "event_id": eid,
                "allocation_id": a,
                "namespace": NS,
                "pod_selector": {"app": a},
                "proxy_ports": ports.iter().map(|(n, p)| serde_json::json!({"name": n, "port": p})).collect::<Vec<_>>(),
                "occurred_at": "2026-12-08T00:00:00Z",
            });
            Bytes::from(serde_json::to_vec(&body).unwrap())
        };
        let eid = id(w);
        out.push((
            Duration::from_millis(start_at),
            EventKind::Started,
            a.clone(),
            started(eid),
            Some(eid.to_string()),
        ));
        // The same event again, past the duplicate window (a resend, a master retrying late).
        if w.sched.with_rng(|r| r.chance(p.dup_same)) {
            let at = start_at + w.sched.with_rng(|r| r.below(span_ms + 20_000));
            out.push((
                Duration::from_millis(at),
                EventKind::Started,
                a.clone(),
                started(eid),
                None,
            ));
        }
        // Another started for the same allocation, with an event id of its own.
        if w.sched.with_rng(|r| r.chance(p.dup_new)) {
            let eid2 = id(w);
            let at = start_at + w.sched.with_rng(|r| r.below(span_ms + 30_000));
            out.push((
                Duration::from_millis(at),
                EventKind::Started,
                a.clone(),
                started(eid2),
                Some(eid2.to_string()),
            ));
        }
        if w.sched.with_rng(|r| r.chance(p.ended)) {
            let early = w.sched.with_rng(|r| r.chance(p.ended_early));
            let at = if early {
                start_at.saturating_sub(w.sched.with_rng(|r| r.below(2_000)))
            } else {
                start_at + w.sched.with_rng(|r| r.below(span_ms + 60_000))
            };
            let eid = id(w);
            let body = serde_json::json!({
                "schema_version": itg::contract::SCHEMA_VERSION,
                "event_id": eid,
                "allocation_id": a,
                "occurred_at": "2026-12-08T00:00:00Z",
            });
            out.push((
                Duration::from_millis(at),
                EventKind::Ended,
                a.clone(),
                Bytes::from(serde_json::to_vec(&body).unwrap()),
                Some(eid.to_string()),
            ));
        }
    }
    out.sort_by_key(|e| e.0);
    out
}

/// The master: publishes the script at its times.
pub async fn master(
    w: Arc<World>,
    script: Vec<(Duration, EventKind, String, Bytes, Option<String>)>,
) {
    let t0 = w.t0;
    for (at, kind, alloc, payload, msg_id) in script {
        tokio::time::sleep_until(t0 + at).await;
        w.publish_event(kind, &alloc, payload, msg_id);
    }
}
