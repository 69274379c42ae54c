//! The event handler: turns one validated event into compare-and-sets on the store, calls on the cluster
//! and one answer. One file per way in: `started.rs` exposes, `ended.rs` removes, `repair.rs` puts back
//! what the reconciler finds missing; `expose.rs` and `withdraw.rs` are the two directions they drive the
//! cluster in.
//!
//! It is generic over the core's [`Store`] and [`Cluster`] seams, and level-triggered: each pass reads the
//! allocation's record, drives the port claims and the cluster toward what the record wants, and writes
//! back with compare-and-set. When the record moved underneath (another worker, a duplicate, an `ended`),
//! the pass starts again from the new record and undoes whatever this pass applied that is no longer
//! wanted.

mod ended;
mod expose;
mod reach;
mod repair;
mod started;

pub use crate::delivery::GaveUp;
mod withdraw;

use std::sync::Arc;
use std::time::Duration;

use crate::answers::{self, Handled};
use crate::cluster::{Cluster, ClusterError};
use crate::config::WorkerConfig;
use crate::contract::{self, Event, EventKind, FailureReason};
use crate::probe::DataPlane;
use crate::resource_manager::RmContext;
use crate::state::{Binding, Failure, Phase, Record};
use crate::store::{Store, StoreError};

/// Compare-and-set rounds one delivery may spend before it gives the event back for redelivery.
const MAX_ROUNDS: usize = 16;
/// How long one delivery waits for the Gateway's controller before it gives the event back with a delay: a
/// controller usually answers within it, and a longer wait would hold a handler slot that other events need.
const WAIT_SLICE: Duration = Duration::from_secs(5);
/// How long a refusal must stand before it is answered: a controller that sees the route before the
/// listener it names reports `NoMatchingParent` for a moment, then corrects it.
const REFUSAL_SETTLE: Duration = Duration::from_secs(2);

enum DriveError {
    /// Wait for a free port or listener slot.
    Capacity(String),
    /// The apiserver failed in a way that may pass.
    Kube(String),
    /// The request can never succeed.
    Fail(Failure),
    /// The objects are applied; the Gateway's controller has not reported them reachable yet. `since` is
    /// when the allocation's ports were bound (unix seconds), where the controller deadline counts from.
    Waiting { message: String, since: i64 },
    /// The data plane refused connections to a port the controller reports programmed; the allocation
    /// gave its ports back to choose others.
    Unserved(String),
    /// NATS failed.
    Store(StoreError),
}

impl From<StoreError> for DriveError {
    fn from(e: StoreError) -> Self {
        DriveError::Store(e)
    }
}

impl From<ClusterError> for DriveError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Capacity(m) => DriveError::Capacity(m),
            ClusterError::Transient(m) => DriveError::Kube(m),
            ClusterError::Permanent(m) => DriveError::Fail(Failure {
                reason: FailureReason::KubernetesError,
                message: format!("{m}; fix the cause and publish the started event again"),
                retryable: false,
                status: None,
            }),
            ClusterError::Forbidden(m) => DriveError::Fail(Failure {
                reason: FailureReason::KubernetesError,
                message: format!(
                    "{m}; grant the worker's RBAC what it lacks and publish the started event again"
                ),
                retryable: false,
                status: Some(403),
            }),
        }
    }
}

/// Why a pass drives an allocation: to answer its started (and wait for the controller) or, for the
/// reconciler, only to put its objects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Answer,
    Repair,
}

/// Where a pass left the record.
enum Pass {
    /// Done; the record as written.
    Settled(Box<Record>),
    /// The record changed underneath; read it again.
    Moved,
}

/// Serves the events of one resource manager.
#[derive(Clone)]
pub struct Handler<S, C> {
    rm: Arc<RmContext>,
    store: S,
    /// One cluster per Gateway of the resource manager's pool, in the order of [`RmContext::pool`].
    clusters: Arc<Vec<C>>,
    timing: WorkerConfig,
    refused: Refused,
    /// Ports the data plane refused connections to, avoided by the port search while others are free.
    unserved_ports: Refused,
    /// Where the data plane probe connects; the real network unless a test gives another.
    data_plane: Arc<dyn DataPlane>,
    /// Gateways (by place in the pool) whose address the probe could not reach, each until a time: their
    /// exposures rest on the controller's status alone meanwhile, without paying a connect timeout each.
    unreachable: Arc<std::sync::Mutex<reach::Unreachable>>,
    /// Per Gateway (by place in the pool): how many ports its data plane refused since it last served
    /// one, and when the last was refused. The pool's placement passes over a Gateway that looks down.
    refusals:
        Arc<std::sync::Mutex<std::collections::BTreeMap<usize, (usize, crate::clock::Instant)>>>,
}

/// Ports a Gateway refused as taken (a listener no claim accounts for stands there), each until a time:
/// the port search on that Gateway skips them, shared by every clone of a handler. Keyed by the Gateway's
/// place in the pool as well as the port: a port taken on one Gateway may be free on another.
#[derive(Clone, Default)]
struct Refused(
    Arc<std::sync::Mutex<std::collections::BTreeMap<(usize, u16), crate::clock::Instant>>>,
);

impl Refused {
    fn note(&self, at: usize, port: u16, for_: Duration) {
        if let Ok(mut m) = self.0.lock() {
            m.insert((at, port), crate::clock::instant() + for_);
        }
    }

    /// The ports refused on the pool's Gateway `at` and not yet past their time.
    fn current(&self, at: usize) -> Vec<u16> {
        let now = crate::clock::instant();
        self.0.lock().map_or_else(
            |_| Vec::new(),
            |mut m| {
                m.retain(|_, until| *until > now);
                m.keys()
                    .filter(|(g, _)| *g == at)
                    .map(|(_, p)| *p)
                    .collect()
            },
        )
    }
}

fn now() -> i64 {
    crate::clock::unix_secs()
}

/// A binding and the Gateway of the pool (by place) it is on: what a withdrawal needs to reach it.
type Placed = (usize, Binding);

fn add_touched(touched: &mut Vec<Placed>, at: usize, b: &Binding) {
    if !touched.iter().any(|(a, t)| *a == at && t == b) {
        touched.push((at, b.clone()));
    }
}

impl<S: Store, C: Cluster> Handler<S, C> {
    /// A handler for one resource manager with one Gateway.
    pub fn new(rm: RmContext, store: S, cluster: C, timing: WorkerConfig) -> Self {
        Handler::with_pool(rm, store, vec![cluster], timing)
    }

    /// A handler for one resource manager with a pool of Gateways: `clusters` in the order of
    /// [`RmContext::pool`] (the resource manager's own Gateway first). Allocations are placed only on the
    /// Gateways a cluster is given for.
    pub fn with_pool(rm: RmContext, store: S, clusters: Vec<C>, timing: WorkerConfig) -> Self {
        Handler {
            rm: Arc::new(rm),
            store,
            clusters: Arc::new(clusters),
            timing,
            refused: Refused::default(),
            unserved_ports: Refused::default(),
            data_plane: Arc::new(crate::dataplane::Tcp),
            unreachable: Arc::default(),
            refusals: Arc::default(),
        }
    }

    /// The same handler, probing the data plane through `data_plane` instead of the network.
    pub fn with_data_plane(mut self, data_plane: Arc<dyn DataPlane>) -> Self {
        self.data_plane = data_plane;
        self
    }

    /// Which Gateway of the pool holds `rec`'s ports (the resource manager's own for a record naming
    /// none, or a Gateway no longer in the pool).
    fn placement(&self, rec: Option<&Record>) -> usize {
        rec.and_then(|r| self.rm.placed(r.gateway.as_ref()))
            .filter(|at| *at < self.clusters.len())
            .unwrap_or(0)
    }

    /// Every binding the record knows of, each with its Gateway: the ports it holds, those it gave back to
    /// choose again (on the Gateway they were given back on), and those its cleanup released.
    fn known_bindings(&self, rec: &Record) -> Vec<Placed> {
        let at = self.placement(Some(rec));
        let mut all = Vec::new();
        for b in &rec.ports {
            add_touched(&mut all, at, b);
        }
        for g in &rec.given_back {
            let on = g
                .gateway
                .as_ref()
                .and_then(|g| self.rm.placed(Some(g)))
                .filter(|on| *on < self.clusters.len())
                .unwrap_or(at);
            add_touched(&mut all, on, &g.binding);
        }
        for r in &rec.released {
            let container_port = rec
                .spec
                .as_ref()
                .and_then(|s| s.proxy_ports.iter().find(|p| p.name == r.name))
                .map_or(0, |p| p.port);
            add_touched(
                &mut all,
                at,
                &Binding {
                    name: r.name.clone(),
                    container_port,
                    gateway_port: r.gateway_port,
                },
            );
        }
        all
    }

    /// The resource manager this handler serves.
    pub fn rm(&self) -> &RmContext {
        &self.rm
    }

    /// Serves one delivery of an event payload.
    pub async fn handle(&self, kind: EventKind, payload: &[u8]) -> Handled {
        let event = match contract::decode_event(kind, payload) {
            Ok(ev) => ev,
            Err(invalid) => return answers::invalid(&self.rm, &invalid, payload),
        };
        let span = tracing::Span::current();
        span.record("allocation_id", event.allocation_id());
        span.record("event_id", event.event_id().to_string());
        let result = match &event {
            Event::Started(ev) => {
                if !self.rm.config.namespace_allowed(&ev.namespace) {
                    let f = Failure {
                        reason: FailureReason::NamespaceNotAllowed,
                        message: format!(
                            "namespace {:?} is not allowed for resource manager {}; add it to allowed_namespaces or run the task elsewhere",
                            ev.namespace, self.rm.name
                        ),
                        retryable: false,
                        status: None,
                    };
                    return answers::failed(&self.rm, &ev.allocation_id, ev.event_id, &f);
                }
                self.started(ev).await
            }
            Event::Ended(ev) => self.ended(ev).await,
        };
        result.unwrap_or_else(|why| Handled::Retry { why })
    }

    /// Whether the record at `key` is no longer at `rev`.
    async fn moved(&self, key: &str, rev: u64) -> Result<bool, StoreError> {
        Ok(self.store.get(key).await?.map(|e| e.revision) != Some(rev))
    }

    /// The record at `key` and its revision; `None` when the key holds nothing.
    async fn read(&self, key: &str) -> Result<Option<(Record, u64)>, ReadError> {
        let Some(entry) = self.store.get(key).await.map_err(ReadError::Store)? else {
            return Ok(None);
        };
        match crate::state::decode(&entry.value) {
            Ok(r) => Ok(Some((r, entry.revision))),
            Err(crate::state::DecodeError::Newer { found }) => {
                crate::metrics::newer_record(
                    &self.rm.name,
                    key,
                    found,
                    "left untouched and not answered",
                );
                Err(ReadError::Newer { found })
            }
            Err(crate::state::DecodeError::Invalid(why)) => Err(ReadError::Invalid {
                key: key.to_owned(),
                why,
            }),
        }
    }
}

impl ReadError {
    /// What a handler that could not read the record gives back: a newer worker's record is deferred to
    /// it, without asking the store again; anything else is retried.
    fn handled(self) -> Result<Handled, String> {
        match self {
            ReadError::Newer { .. } => Ok(Handled::Defer {
                why: self.to_string(),
            }),
            e => Err(e.to_string()),
        }
    }
}

/// Why an allocation's record could not be read. The kinds are kept apart because each is answered
/// differently: a newer worker's record is deferred to it, a value that is no record is poison, a store
/// error may pass.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// NATS failed; the read may succeed later.
    #[error(transparent)]
    Store(StoreError),
    /// A newer worker wrote the record; this one leaves it untouched.
    #[error("{}", crate::state::DecodeError::Newer { found: *found })]
    Newer { found: u32 },
    /// The key holds a value that is no record of any version.
    #[error("allocation record {key}: {}", crate::state::DecodeError::Invalid(why.clone()))]
    Invalid { key: String, why: String },
}

/// Whether the allocation failed because its task namespace refused it (403): then nothing of it is there.
fn refused_ns(rec: &Record) -> bool {
    rec.phase == Phase::Failed
        && rec.failure.as_ref().is_some_and(|f| {
            // Records failed before the status was kept say it only in their message.
            f.status == Some(403) || (f.status.is_none() && f.message.contains("(403 "))
        })
}

fn drive_msg(e: DriveError) -> String {
    match e {
        DriveError::Capacity(m) | DriveError::Kube(m) | DriveError::Unserved(m) => m,
        DriveError::Waiting { message, .. } => message,
        DriveError::Fail(f) => f.message,
        DriveError::Store(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_refused_on_one_gateway_of_a_pool_is_still_chosen_on_another() {
        let r = Refused::default();
        r.note(0, 40001, Duration::from_secs(60));
        r.note(1, 40002, Duration::ZERO);
        assert_eq!(r.current(0), vec![40001]);
        assert!(
            r.current(1).is_empty(),
            "another Gateway's refusal, or one past its time"
        );
    }

    #[test]
    fn a_namespace_refusal_is_told_by_the_status_kept_not_by_the_message() {
        let failed = |status: Option<u16>, message: &str| -> Record {
            serde_json::from_value(serde_json::json!({
                "allocation_id": "a.1",
                "resource_manager": "rm",
                "phase": "failed",
                "failure": {
                    "reason": "kubernetes_error",
                    "message": message,
                    "retryable": false,
                    "status": status,
                },
            }))
            .unwrap()
        };
        assert!(refused_ns(&failed(Some(403), "forbidden")));
        assert!(!refused_ns(&failed(
            Some(500),
            "a message quoting (403 Forbidden)"
        )));
        assert!(refused_ns(&failed(None, "from before: (403 Forbidden)")));
    }
}
