//! The event handler: turns one validated event into KV compare-and-sets, Kubernetes calls and one reply.
//!
//! It is generic over [`Store`] and [`Cluster`], and level-triggered: each pass reads the allocation's
//! record, drives the port claims and Kubernetes toward what the record wants, and writes back with
//! compare-and-set. When the record moved underneath (another worker, a duplicate, an `ended`), the pass
//! starts again from the new record and undoes whatever this pass applied that is no longer wanted.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::allocator::{self, PortView};
use crate::config::{ResourceManagerConfig, WorkerConfig};
use crate::contract::{self, Ended, Event, EventKind, FailureReason, GatewayRef, Reply, Started};
use crate::crashpoint;
use crate::gateway::{Cluster, Exposure, KubeError};
use crate::names;
use crate::readiness::Verdict;
use crate::replies;
use crate::state::{self, Binding, EndedStep, Failure, Phase, Record, StartedStep};
use crate::store::{Outcome, Store, StoreError};

/// Compare-and-set rounds one delivery may spend before it gives the event back for redelivery.
const MAX_ROUNDS: usize = 16;
/// How long one delivery waits for the Gateway's controller before it gives the event back with a delay: a
/// controller usually answers within it, and a longer wait would hold a handler slot that other events need.
const WAIT_SLICE: Duration = Duration::from_secs(5);
/// How long a refusal must stand before it is answered: a controller that sees the route before the
/// listener it names reports `NoMatchingParent` for a moment, then corrects it.
const REFUSAL_SETTLE: Duration = Duration::from_secs(2);

/// What one resource manager's handler needs to know, fixed at start.
#[derive(Debug, Clone)]
pub struct RmContext {
    pub name: String,
    pub gateway: GatewayRef,
    pub gateway_ip: String,
    pub range: RangeInclusive<u16>,
    pub excluded: BTreeSet<u16>,
    pub listener_limit: usize,
    pub config: ResourceManagerConfig,
}

impl RmContext {
    /// Builds the context from a validated resource manager config.
    pub fn new(config: &ResourceManagerConfig) -> RmContext {
        let g = &config.internal_task_gateway;
        RmContext {
            name: config.name.clone(),
            gateway: GatewayRef {
                namespace: g.gateway_namespace.clone(),
                name: g.gateway_name.clone(),
            },
            gateway_ip: g.gateway_ip.clone(),
            range: config.port_range(),
            excluded: config.excluded_port_set(),
            listener_limit: config.listener_limit,
            config: config.clone(),
        }
    }

    fn port_key(&self, port: u16) -> String {
        names::port_key(
            &self.name,
            &self.gateway.namespace,
            &self.gateway.name,
            port,
        )
    }
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Publish this reply under this message id, then acknowledge.
    Answer { reply: Reply, msg_id: String },
    /// The event was served and needs no reply; acknowledge.
    Done,
    /// Not served yet (capacity, apiserver or NATS trouble); redeliver later.
    Retry { why: String },
}

/// Who holds a port: the value of a port key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortClaim {
    /// The allocation record's key.
    pub allocation: String,
    /// The proxy port name within the allocation.
    pub proxy: String,
    /// Unix seconds of the claim, for the reconciler's hold-off.
    #[serde(default)]
    pub claimed_at: i64,
}

impl PortClaim {
    /// Whether this claim is held by `allocation_key` for `proxy`.
    pub fn held_by(&self, allocation_key: &str, proxy: &str) -> bool {
        self.allocation == allocation_key && self.proxy == proxy
    }
}

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
    /// NATS failed.
    Store(StoreError),
}

impl From<StoreError> for DriveError {
    fn from(e: StoreError) -> Self {
        DriveError::Store(e)
    }
}

impl From<KubeError> for DriveError {
    fn from(e: KubeError) -> Self {
        match e {
            KubeError::Capacity(m) => DriveError::Capacity(m),
            KubeError::Transient(m) => DriveError::Kube(m),
            KubeError::Permanent(m) => DriveError::Fail(Failure {
                reason: FailureReason::KubernetesError,
                message: format!("{m}; fix the cause and publish the started event again"),
                retryable: false,
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
    rm: std::sync::Arc<RmContext>,
    store: S,
    cluster: C,
    timing: WorkerConfig,
    refused: Refused,
}

/// Ports the Gateway refused as taken (a listener no claim accounts for stands there), each until a time:
/// the port search skips them, shared by every clone of a handler.
#[derive(Clone, Default)]
struct Refused(
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<u16, std::time::Instant>>>,
);

impl Refused {
    fn note(&self, port: u16, for_: Duration) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(port, std::time::Instant::now() + for_);
        }
    }

    fn current(&self) -> Vec<u16> {
        let now = std::time::Instant::now();
        self.0.lock().map_or_else(
            |_| Vec::new(),
            |mut m| {
                m.retain(|_, until| *until > now);
                m.keys().copied().collect()
            },
        )
    }
}

/// Whether a capacity refusal says the port is taken on the Gateway, rather than that no slot is left.
fn port_taken(message: &str) -> bool {
    message.contains("port, protocol") || message.contains("unique")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn encode<T: Serialize>(v: &T) -> Bytes {
    // Records and claims are plain structs of strings and numbers: serializing them cannot fail.
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Every binding the record knows of: the ports it holds and those its cleanup released.
fn known_bindings(rec: &Record) -> Vec<Binding> {
    let mut all = rec.ports.clone();
    for r in &rec.released {
        let container_port = rec
            .spec
            .as_ref()
            .and_then(|s| s.proxy_ports.iter().find(|p| p.name == r.name))
            .map_or(0, |p| p.port);
        add_touched(
            &mut all,
            &Binding {
                name: r.name.clone(),
                container_port,
                gateway_port: r.gateway_port,
            },
        );
    }
    all
}

fn add_touched(touched: &mut Vec<Binding>, b: &Binding) {
    if !touched.contains(b) {
        touched.push(b.clone());
    }
}

impl<S: Store, C: Cluster> Handler<S, C> {
    /// A handler for one resource manager.
    pub fn new(rm: RmContext, store: S, cluster: C, timing: WorkerConfig) -> Self {
        Handler {
            rm: std::sync::Arc::new(rm),
            store,
            cluster,
            timing,
            refused: Refused::default(),
        }
    }

    /// The resource manager this handler serves.
    pub fn rm(&self) -> &RmContext {
        &self.rm
    }

    /// Serves one delivery of an event payload.
    pub async fn handle(&self, kind: EventKind, payload: &[u8]) -> Handled {
        let event = match contract::decode_event(kind, payload) {
            Ok(ev) => ev,
            Err(invalid) => return replies::invalid(&self.rm, &invalid, payload),
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
                    };
                    return replies::failed(&self.rm, &ev.allocation_id, ev.event_id, &f);
                }
                self.started(ev).await
            }
            Event::Ended(ev) => self.ended(ev).await,
        };
        result.unwrap_or_else(|why| Handled::Retry { why })
    }

    /// The `failed` answer for a started given up on after the maximum deliveries; `None` when the payload
    /// is not a readable started (it was answered as invalid on its first delivery). Answered `failed`, the
    /// allocation keeps nothing: its objects are withdrawn, its ports released and its record removed, so a
    /// resend starts afresh. What cannot be withdrawn now stays recorded as failed, for the reconciler.
    pub async fn given_up(&self, payload: &[u8], why: &str, sequence: u64) -> Option<Handled> {
        let Ok(Event::Started(ev)) = contract::decode_event(EventKind::Started, payload) else {
            return None;
        };
        let f = Failure {
            reason: FailureReason::Timeout,
            message: format!(
                "gave up after the maximum deliveries: {why}; the event is kept in {} (events sequence {sequence}): fix the cause and send it back with `itgctl deadletter resend`",
                contract::DEAD_LETTER_STREAM
            ),
            retryable: true,
        };
        if let Err(e) = self.abandon(&ev.allocation_id, &f).await {
            tracing::warn!(error = %e, "the given-up allocation is recorded as failed; the reconciler withdraws what it holds");
        }
        Some(replies::failed(
            &self.rm,
            &ev.allocation_id,
            ev.event_id,
            &f,
        ))
    }

    async fn abandon(&self, allocation_id: &str, f: &Failure) -> Result<(), String> {
        let key = names::allocation_key(&self.rm.name, allocation_id);
        for _ in 0..MAX_ROUNDS {
            let Some((rec, rev)) = self.read(&key).await.map_err(|e| e.to_string())? else {
                return Ok(());
            };
            if !rec.phase.wants_exposure() && rec.phase != Phase::Failed {
                // Ending or removed: the ended's own cleanup owns the record.
                return Ok(());
            }
            let pass = if rec.phase == Phase::Failed {
                self.cleanup(&key, &rec, rev, &mut Vec::new()).await
            } else {
                self.fail(&key, &rec, rev, f.clone(), &mut Vec::new()).await
            };
            match pass.map_err(drive_msg)? {
                Pass::Moved => continue,
                Pass::Settled(_) => {}
            }
            let Some(entry) = self.store.get(&key).await.map_err(|e| e.to_string())? else {
                return Ok(());
            };
            let deleted = self.store.delete(&key, entry.revision).await;
            if let Outcome::Written(_) = deleted.map_err(|e| e.to_string())? {
                return Ok(());
            }
        }
        Err(format!(
            "allocation {allocation_id:?}: the record kept changing"
        ))
    }

    /// Leaves the tombstone an `ended` leaves when the allocation has no record, and nothing else; `true`
    /// when it wrote one. For a replay, before it serves any started.
    ///
    /// # Errors
    /// The KV bucket could not be read or written.
    pub async fn tombstone(&self, ev: &Ended) -> Result<bool, StoreError> {
        let key = names::allocation_key(&self.rm.name, &ev.allocation_id);
        if self.store.get(&key).await?.is_some() {
            return Ok(false);
        }
        match state::on_ended(None, &self.rm.name, &ev.allocation_id, ev.event_id, now()) {
            EndedStep::Tombstone(t) => Ok(matches!(
                self.store.create(&key, encode(&t)).await?,
                Outcome::Written(_)
            )),
            _ => Ok(false),
        }
    }

    /// Drives one allocation toward its record without an event: exposes what a live allocation lacks,
    /// finishes the cleanup of an ending one. For the reconciler; nothing is replied.
    ///
    /// # Errors
    /// Why the pass did not complete (it is tried again on the next reconcile).
    pub async fn repair(&self, allocation_id: &str) -> Result<(), String> {
        let key = names::allocation_key(&self.rm.name, allocation_id);
        for _ in 0..MAX_ROUNDS {
            let Some((rec, rev)) = self.read(&key).await.map_err(|e| e.to_string())? else {
                return Ok(());
            };
            let pass = if rec.phase.wants_exposure() {
                self.expose(&key, rec, rev, &mut Vec::new(), Purpose::Repair)
                    .await
            } else {
                self.cleanup(&key, &rec, rev, &mut Vec::new()).await
            };
            match pass {
                Ok(Pass::Settled(_)) => return Ok(()),
                Ok(Pass::Moved) => continue,
                Err(e) => return Err(drive_msg(e)),
            }
        }
        Err(format!(
            "allocation {allocation_id:?}: the record kept changing"
        ))
    }

    async fn read(&self, key: &str) -> Result<Option<(Record, u64)>, StoreError> {
        let Some(entry) = self.store.get(key).await? else {
            return Ok(None);
        };
        match serde_json::from_slice::<Record>(&entry.value) {
            Ok(r) => Ok(Some((r, entry.revision))),
            Err(e) => Err(StoreError {
                bucket: String::new(),
                op: "decode",
                key: key.to_owned(),
                message: format!(
                    "the record is not valid JSON ({e}); inspect it with `nats kv get`"
                ),
            }),
        }
    }

    async fn started(&self, ev: &Started) -> Result<Handled, String> {
        let key = names::allocation_key(&self.rm.name, &ev.allocation_id);
        let mut touched: Vec<Binding> = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let current = self.read(&key).await.map_err(|e| e.to_string())?;
            let step = state::on_started(current.as_ref().map(|c| &c.0), &self.rm.name, ev, now());
            let (rec, rev) = match (step, current) {
                (StartedStep::Create(r), _) => match self
                    .store
                    .create(&key, encode(&r))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Outcome::Written(rev) => {
                        crashpoint::reach("started.record_created");
                        (*r, rev)
                    }
                    Outcome::Conflict => continue,
                },
                (StartedStep::Expose, Some(cur)) => cur,
                (StartedStep::Expose, None) => continue,
                (step @ (StartedStep::RepeatFailure(_) | StartedStep::AlreadyEnded), cur) => {
                    // An earlier pass (this one, or one that gave up mid-way and whose apply the apiserver
                    // finished late) may have applied objects after the cleanup: withdraw them all again.
                    let mut all = cur
                        .as_ref()
                        .map(|(r, _)| self.to_withdraw(r))
                        .unwrap_or_default();
                    for b in &touched {
                        add_touched(&mut all, b);
                    }
                    // Where the objects were applied: the record's namespace, not what this event says.
                    let ns = cur
                        .as_ref()
                        .and_then(|(r, _)| r.spec.as_ref())
                        .map_or(ev.namespace.as_str(), |s| s.namespace.as_str());
                    let refused = cur.as_ref().is_some_and(|(r, _)| refused_ns(r));
                    self.withdraw_all(&ev.allocation_id, &all, Some(ns), refused)
                        .await
                        .map_err(drive_msg)?;
                    let f = match step {
                        StartedStep::RepeatFailure(f) => f,
                        _ => Failure {
                            reason: FailureReason::InvalidEvent,
                            message: format!(
                                "allocation {:?} has already ended{}; a started after its ended exposes nothing",
                                ev.allocation_id,
                                cur.and_then(|(r, _)| r.ended_event_id)
                                    .map(|id| format!(" (ended event {id})"))
                                    .unwrap_or_default()
                            ),
                            retryable: false,
                        },
                    };
                    return Ok(replies::failed(
                        &self.rm,
                        &ev.allocation_id,
                        ev.event_id,
                        &f,
                    ));
                }
            };
            let failure = match self
                .expose(&key, rec.clone(), rev, &mut touched, Purpose::Answer)
                .await
            {
                Ok(Pass::Settled(rec)) => return Ok(replies::ready(&self.rm, ev.event_id, &rec)),
                Ok(Pass::Moved) => continue,
                Err(DriveError::Store(e)) => return Err(e.to_string()),
                Err(DriveError::Fail(f)) if rec.phase == Phase::Exposing => f,
                // A live allocation is never torn down by a failed repair: retry it instead.
                Err(DriveError::Fail(f)) => return Err(f.message),
                Err(DriveError::Capacity(m))
                    if self.past(&rec, self.timing.capacity_deadline.0) =>
                {
                    Failure {
                        reason: FailureReason::CapacityExhausted,
                        message: format!(
                            "{m}; waited {} for capacity. End idle tasks or widen the port range",
                            humantime::format_duration(self.timing.capacity_deadline.0)
                        ),
                        retryable: true,
                    }
                }
                Err(DriveError::Kube(m)) if self.past(&rec, self.timing.kubernetes_deadline.0) => {
                    Failure {
                        reason: FailureReason::KubernetesError,
                        message: format!(
                            "{m}; retried for {}. Check the apiserver and the worker's RBAC",
                            humantime::format_duration(self.timing.kubernetes_deadline.0)
                        ),
                        retryable: true,
                    }
                }
                Err(DriveError::Waiting { message, since })
                    if rec.phase == Phase::Exposing
                        && now().saturating_sub(since)
                            >= i64::try_from(self.timing.controller_deadline.0.as_secs())
                                .unwrap_or(i64::MAX) =>
                {
                    Failure {
                        reason: FailureReason::Timeout,
                        message: format!(
                            "the Gateway's controller did not report the exposure reachable within {}: {message}. Check that a controller serves the Gateway's class and read the Gateway's and the TCPRoute's status; for a controller that writes no status set wait_for_controller: false",
                            humantime::format_duration(self.timing.controller_deadline.0)
                        ),
                        retryable: true,
                    }
                }
                Err(DriveError::Capacity(m) | DriveError::Kube(m)) => return Err(m),
                Err(DriveError::Waiting { message, .. }) => {
                    return Err(format!("waiting for the Gateway's controller: {message}"));
                }
            };
            match self
                .fail(&key, &rec, rev, failure.clone(), &mut touched)
                .await
            {
                Ok(Pass::Settled(_)) => {
                    return Ok(replies::failed(
                        &self.rm,
                        &ev.allocation_id,
                        ev.event_id,
                        &failure,
                    ));
                }
                Ok(Pass::Moved) => continue,
                Err(e) => return Err(drive_msg(e)),
            }
        }
        Err(format!(
            "allocation {:?}: the record kept changing for {MAX_ROUNDS} rounds",
            ev.allocation_id
        ))
    }

    fn past(&self, rec: &Record, deadline: Duration) -> bool {
        rec.phase == Phase::Exposing
            && now().saturating_sub(rec.created_at)
                >= i64::try_from(deadline.as_secs()).unwrap_or(i64::MAX)
    }

    async fn ended(&self, ev: &Ended) -> Result<Handled, String> {
        let key = names::allocation_key(&self.rm.name, &ev.allocation_id);
        for _ in 0..MAX_ROUNDS {
            let current = self.read(&key).await.map_err(|e| e.to_string())?;
            let step = state::on_ended(
                current.as_ref().map(|c| &c.0),
                &self.rm.name,
                &ev.allocation_id,
                ev.event_id,
                now(),
            );
            let (rec, rev) = match (step, current) {
                (EndedStep::Tombstone(t), _) => match self
                    .store
                    .create(&key, encode(&t))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Outcome::Written(_) => return Ok(replies::removed(&self.rm, ev.event_id, &t)),
                    Outcome::Conflict => continue,
                },
                (EndedStep::MarkEnding(next), Some((_, rev))) => match self
                    .store
                    .update(&key, encode(&next), rev)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Outcome::Written(rev) => {
                        crashpoint::reach("ended.ending_recorded");
                        (next, rev)
                    }
                    Outcome::Conflict => continue,
                },
                (EndedStep::Cleanup, Some(cur)) => cur,
                (_, None) => continue,
            };
            match self.cleanup(&key, &rec, rev, &mut Vec::new()).await {
                Ok(Pass::Settled(rec)) => return Ok(replies::removed(&self.rm, ev.event_id, &rec)),
                Ok(Pass::Moved) => continue,
                // An ended never gives up: giving up would leak. It is redelivered until it succeeds.
                Err(e) => return Err(drive_msg(e)),
            }
        }
        Err(format!(
            "allocation {:?}: the record kept changing for {MAX_ROUNDS} rounds",
            ev.allocation_id
        ))
    }

    /// Claims ports for every proxy port of the record, applies the Kubernetes objects and, once the
    /// Gateway's controller reports them reachable (or the resource manager does not wait for it), marks it
    /// Ready.
    async fn expose(
        &self,
        key: &str,
        mut rec: Record,
        mut rev: u64,
        touched: &mut Vec<Binding>,
        purpose: Purpose,
    ) -> Result<Pass, DriveError> {
        let Some(spec) = rec.spec.clone() else {
            return Err(DriveError::Fail(Failure {
                reason: FailureReason::InvalidEvent,
                message: "the allocation record has no spec; publish ended and started again"
                    .into(),
                retryable: false,
            }));
        };
        loop {
            let unbound: Vec<_> = rec.unbound().into_iter().cloned().collect();
            if !unbound.is_empty() {
                let chosen = match self.choose_ports(&rec, unbound.len()).await {
                    Ok(chosen) => chosen,
                    // All or none: an allocation that waits gives back what it holds, so two half-served
                    // allocations never wait on each other.
                    Err(DriveError::Capacity(m))
                        if !rec.ports.is_empty() && rec.phase == Phase::Exposing =>
                    {
                        let ns = rec.spec.as_ref().map(|s| s.namespace.clone());
                        return self.give_back(key, &rec, rev, ns.as_deref(), m).await;
                    }
                    Err(e) => return Err(e),
                };
                let mut next = rec.clone();
                for (p, port) in unbound.iter().zip(chosen) {
                    next.ports.push(Binding {
                        name: p.name.clone(),
                        container_port: p.port,
                        gateway_port: port,
                    });
                }
                next.updated_at = now();
                // Intent first: a port key is only ever created after the record lists it, so cleanup finds it.
                match self.store.update(key, encode(&next), rev).await? {
                    Outcome::Written(r) => (rec, rev) = (next, r),
                    Outcome::Conflict => return Ok(Pass::Moved),
                }
                crashpoint::reach("expose.ports_recorded");
            }
            let mut lost = Vec::new();
            for b in &rec.ports {
                add_touched(touched, b);
                if !self.claim(key, b).await? {
                    lost.push(b.name.clone());
                }
                crashpoint::reach("expose.port_claimed");
            }
            if lost.is_empty() {
                break;
            }
            let mut next = rec.clone();
            next.ports.retain(|b| !lost.contains(&b.name));
            match self.store.update(key, encode(&next), rev).await? {
                Outcome::Written(r) => (rec, rev) = (next, r),
                Outcome::Conflict => return Ok(Pass::Moved),
            }
        }
        if !self.cluster.view().present {
            let g = &self.rm.gateway;
            return Err(DriveError::Kube(format!(
                "Gateway {}/{} was not found; create it or fix internal_task_gateway",
                g.namespace, g.name
            )));
        }
        let exposures: Vec<Exposure<'_>> = rec
            .ports
            .iter()
            .map(|b| Exposure {
                rm: &self.rm.name,
                allocation_id: &rec.allocation_id,
                spec: &spec,
                binding: b,
            })
            .collect();
        for e in &exposures {
            match self.cluster.expose(e).await {
                Ok(()) => {}
                // The Gateway refused a listener (no slot left, or the port is taken there): an allocation
                // still exposing gives back everything it holds, as when no port is free, so two of them
                // never wait on each other's slots; a port found taken is not chosen again for a while.
                Err(KubeError::Capacity(m)) if rec.phase == Phase::Exposing => {
                    if port_taken(&m) {
                        self.refused
                            .note(e.binding.gateway_port, self.timing.capacity_deadline.0);
                    }
                    return self
                        .give_back(key, &rec, rev, Some(&spec.namespace), m)
                        .await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let waits = self.rm.config.wait_for_controller;
        match purpose {
            // The started's own delivery moves it to Ready once the controller agrees; a repair only
            // puts objects back.
            Purpose::Repair if waits && rec.phase == Phase::Exposing => {
                return Ok(Pass::Settled(Box::new(rec.clone())));
            }
            Purpose::Answer if waits => {
                // A Ready allocation asked again waits a whole slice; an exposing one no longer than its
                // deadline allows.
                let since = (rec.phase == Phase::Exposing).then_some(rec.updated_at);
                match self.await_controller(&exposures, since).await {
                    Verdict::Reachable => {}
                    Verdict::Refused { reason, message } => {
                        return Err(DriveError::Fail(Failure {
                            reason: FailureReason::GatewayRejected,
                            message: format!(
                                "the Gateway's controller refused it ({reason}): {message}; fix the Gateway or the task's Service, then publish the started event again"
                            ),
                            retryable: false,
                        }));
                    }
                    Verdict::Pending(message) => {
                        return Err(DriveError::Waiting {
                            message,
                            since: rec.updated_at,
                        });
                    }
                }
            }
            _ => {}
        }
        // The record must not have moved while the objects were applied: if an ended slipped in, its
        // cleanup may have run before these applies, and the next pass must undo them.
        if rec.phase == Phase::Exposing {
            let mut next = rec.clone();
            next.phase = Phase::Ready;
            next.updated_at = now();
            match self.store.update(key, encode(&next), rev).await? {
                Outcome::Written(_) => rec = next,
                Outcome::Conflict => return Ok(Pass::Moved),
            }
            crashpoint::reach("expose.ready_recorded");
        } else if self.store.get(key).await?.map(|e| e.revision) != Some(rev) {
            return Ok(Pass::Moved);
        }
        Ok(Pass::Settled(Box::new(rec)))
    }

    /// Waits, for at most one slice (less when the deadline counted from `since` is nearer), until the
    /// controller's verdict on `exposures` is reachable or a refusal has stood for [`REFUSAL_SETTLE`].
    /// It reads the watches' views on every change they report; it neither polls the apiserver nor holds
    /// the Gateway write lock.
    async fn await_controller(&self, exposures: &[Exposure<'_>], since: Option<i64>) -> Verdict {
        let budget = since.map_or(WAIT_SLICE, |since| {
            let waited = u64::try_from(now().saturating_sub(since)).unwrap_or(0);
            self.timing
                .controller_deadline
                .0
                .saturating_sub(Duration::from_secs(waited))
                .min(WAIT_SLICE)
        });
        let start = tokio::time::Instant::now();
        let mut changes = self.cluster.changes();
        let mut refused_at: Option<tokio::time::Instant> = None;
        loop {
            changes.borrow_and_update();
            let verdict = self.cluster.controller_verdict(exposures);
            let until = match &verdict {
                Verdict::Reachable => return verdict,
                Verdict::Refused { .. } => {
                    let at = *refused_at.get_or_insert_with(tokio::time::Instant::now);
                    at + REFUSAL_SETTLE
                }
                Verdict::Pending(_) => {
                    refused_at = None;
                    start + budget
                }
            };
            if tokio::time::Instant::now() >= until {
                return verdict;
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(until).await;
                    }
                }
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Picks `n` ports that look free: allowed by config, not a foreign listener's, not claimed in KV.
    async fn choose_ports(&self, rec: &Record, n: usize) -> Result<Vec<u16>, DriveError> {
        let view = self.cluster.view();
        let g = &self.rm.gateway;
        if !view.present {
            return Err(DriveError::Kube(format!(
                "Gateway {}/{} was not found; create it or fix internal_task_gateway",
                g.namespace, g.name
            )));
        }
        let ours_present = rec
            .ports
            .iter()
            .filter(|b| {
                view.listeners.contains(&names::object_name(
                    &self.rm.name,
                    &rec.allocation_id,
                    &b.name,
                ))
            })
            .count();
        let wanted = rec.spec.as_ref().map_or(0, |s| s.proxy_ports.len());
        if view.listeners.len() + wanted.saturating_sub(ours_present) > self.rm.listener_limit {
            return Err(DriveError::Capacity(format!(
                "Gateway {}/{} has {} of {} listeners in use",
                g.namespace,
                g.name,
                view.listeners.len(),
                self.rm.listener_limit
            )));
        }
        let mut taken: BTreeSet<u16> = rec.ports.iter().map(|b| b.gateway_port).collect();
        taken.extend(self.refused.current());
        let pv = PortView {
            excluded: self.rm.excluded.clone(),
            foreign: view.foreign_ports,
            taken,
        };
        let start: u32 = rand::random();
        let prefix = names::port_key_prefix(&self.rm.name, &g.namespace, &g.name);
        let candidates = allocator::candidates(self.rm.range.clone(), &pv, start);
        let chosen = crate::store::unclaimed(&self.store, &prefix, candidates, n).await?;
        if chosen.len() < n {
            return Err(DriveError::Capacity(format!(
                "no free port in {}-{} on Gateway {}/{} ({} usable)",
                self.rm.range.start(),
                self.rm.range.end(),
                g.namespace,
                g.name,
                allocator::capacity(self.rm.range.clone(), &pv)
            )));
        }
        Ok(chosen)
    }

    /// Makes the port key of `b` owned by this allocation. `false` when someone else holds it.
    async fn claim(&self, key: &str, b: &Binding) -> Result<bool, StoreError> {
        let pkey = self.rm.port_key(b.gateway_port);
        let claim = PortClaim {
            allocation: key.to_owned(),
            proxy: b.name.clone(),
            claimed_at: now(),
        };
        for _ in 0..MAX_ROUNDS {
            if let Outcome::Written(_) = self.store.create(&pkey, encode(&claim)).await? {
                return Ok(true);
            }
            match self.store.get(&pkey).await? {
                Some(e) => {
                    return Ok(serde_json::from_slice::<PortClaim>(&e.value)
                        .is_ok_and(|c| c.held_by(key, &b.name)));
                }
                None => continue,
            }
        }
        Ok(false)
    }

    /// Frees the port key of `b` only if this allocation still holds it.
    async fn release(&self, key: &str, b: &Binding) -> Result<(), StoreError> {
        let pkey = self.rm.port_key(b.gateway_port);
        for _ in 0..MAX_ROUNDS {
            let Some(e) = self.store.get(&pkey).await? else {
                return Ok(());
            };
            let ours = serde_json::from_slice::<PortClaim>(&e.value)
                .is_ok_and(|c| c.held_by(key, &b.name));
            if !ours {
                return Ok(());
            }
            if let Outcome::Written(_) = self.store.delete(&pkey, e.revision).await? {
                crashpoint::reach("withdraw.port_released");
                return Ok(());
            }
        }
        Err(StoreError {
            bucket: String::new(),
            op: "release",
            key: pkey,
            message: "the port key kept changing".into(),
        })
    }

    /// Withdraws the objects of `bindings` and frees their ports where this allocation still holds them.
    /// With `refused_ns`, the task namespace refused the allocation's applies, so nothing of it is there
    /// and a forbidden delete there is not a leak; anywhere else a 403 is an error, retried.
    /// Gives back every binding of an allocation still exposing, and asks for redelivery once capacity
    /// frees: one holding some ports while it waits for others could wait on another doing the same.
    async fn give_back(
        &self,
        key: &str,
        rec: &Record,
        rev: u64,
        ns: Option<&str>,
        why: String,
    ) -> Result<Pass, DriveError> {
        self.withdraw_all(&rec.allocation_id, &rec.ports, ns, false)
            .await?;
        let mut next = rec.clone();
        next.ports.clear();
        next.updated_at = now();
        if self.store.update(key, encode(&next), rev).await? == Outcome::Conflict {
            return Ok(Pass::Moved);
        }
        Err(DriveError::Capacity(why))
    }

    async fn withdraw_all(
        &self,
        allocation_id: &str,
        bindings: &[Binding],
        ns: Option<&str>,
        refused_ns: bool,
    ) -> Result<(), DriveError> {
        for b in bindings {
            match self
                .cluster
                .withdraw(&self.rm.name, allocation_id, ns, b)
                .await
            {
                Ok(()) => {}
                Err(e) if refused_ns && e.is_forbidden() => {
                    tracing::debug!(error = %e, "the task namespace refused the allocation; nothing of it is there");
                }
                Err(KubeError::Transient(m) | KubeError::Capacity(m) | KubeError::Permanent(m)) => {
                    return Err(DriveError::Kube(m));
                }
            }
        }
        let key = names::allocation_key(&self.rm.name, allocation_id);
        for b in bindings {
            self.release(&key, b).await?;
        }
        Ok(())
    }

    /// What a pass withdraws: the ports the record holds, and those its cleanup released while a late apply
    /// from a pass that gave up can still land (within the reconciler's hold-off). Past that, stray objects
    /// are the reconciler's, and a duplicate or replayed event about a long-finished allocation costs no
    /// apiserver call.
    fn to_withdraw(&self, rec: &Record) -> Vec<Binding> {
        let hold_off =
            i64::try_from(self.timing.reconcile_hold_off.0.as_secs()).unwrap_or(i64::MAX);
        if now().saturating_sub(rec.updated_at) < hold_off {
            known_bindings(rec)
        } else {
            rec.ports.clone()
        }
    }

    /// Removes everything of the allocation, in the order route, listener, Service, then frees its ports.
    async fn cleanup(
        &self,
        key: &str,
        rec: &Record,
        rev: u64,
        touched: &mut Vec<Binding>,
    ) -> Result<Pass, DriveError> {
        let ns = rec.spec.as_ref().map(|s| s.namespace.clone());
        let mut all = self.to_withdraw(rec);
        for b in touched.iter() {
            add_touched(&mut all, b);
        }
        self.withdraw_all(&rec.allocation_id, &all, ns.as_deref(), refused_ns(rec))
            .await?;
        touched.clear();
        if rec.is_clean() && rec.phase != Phase::Ending {
            return Ok(Pass::Settled(Box::new(rec.clone())));
        }
        let next = rec.cleaned(now());
        match self.store.update(key, encode(&next), rev).await? {
            Outcome::Written(_) => {
                crashpoint::reach("cleanup.record_cleaned");
                Ok(Pass::Settled(Box::new(next)))
            }
            Outcome::Conflict => Ok(Pass::Moved),
        }
    }

    async fn fail(
        &self,
        key: &str,
        rec: &Record,
        rev: u64,
        failure: Failure,
        touched: &mut Vec<Binding>,
    ) -> Result<Pass, DriveError> {
        let next = rec.failed(failure, now());
        let rev = match self.store.update(key, encode(&next), rev).await? {
            Outcome::Written(r) => r,
            Outcome::Conflict => return Ok(Pass::Moved),
        };
        self.cleanup(key, &next, rev, touched).await
    }
}

/// Whether the allocation failed because its task namespace refused it (403): then nothing of it is there.
fn refused_ns(rec: &Record) -> bool {
    rec.phase == Phase::Failed
        && rec
            .failure
            .as_ref()
            .is_some_and(|f| f.message.contains("(403 "))
}

fn drive_msg(e: DriveError) -> String {
    match e {
        DriveError::Capacity(m) | DriveError::Kube(m) => m,
        DriveError::Waiting { message, .. } => message,
        DriveError::Fail(f) => f.message,
        DriveError::Store(e) => e.to_string(),
    }
}
