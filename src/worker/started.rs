//! A started: create the record, expose, answer `ready` once reachable, or `failed` with the reason once
//! a deadline passed; and the answer for a started given up on after the maximum deliveries.

use std::time::Duration;

use super::{
    DriveError, Handler, MAX_ROUNDS, Pass, Placed, Purpose, ReadError, add_touched, drive_msg, now,
    refused_ns,
};
use crate::answers::{self, Handled};
use crate::cluster::Cluster;
use crate::contract::{self, Event, EventKind, FailureReason, Started};
use crate::crashpoint;
use crate::delivery::GaveUp;
use crate::guards::{self, Guard};
use crate::state::{self, Failure, Phase, Record, StartedStep};
use crate::store::{Outcome, Store, encode};

impl<S: Store, C: Cluster> Handler<S, C> {
    pub(super) async fn started(&self, ev: &Started) -> Result<Handled, String> {
        let key = self.rm.allocation_key(&ev.allocation_id);
        let mut touched: Vec<Placed> = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let current = match self.read(&key).await {
                Ok(c) => c,
                Err(e) => return e.handled(),
            };
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
                    for (at, b) in &touched {
                        add_touched(&mut all, *at, b);
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
                            status: None,
                        },
                    };
                    return Ok(answers::failed(
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
                Ok(Pass::Settled(rec)) => return Ok(answers::ready(&self.rm, ev.event_id, &rec)),
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
                        status: None,
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
                        status: None,
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
                        status: None,
                    }
                }
                Err(DriveError::Unserved(m)) if self.probe_past(&rec) => Failure {
                    reason: FailureReason::Timeout,
                    message: format!(
                        "no port was served by the Gateway's data plane within {}: {m}. Check that the Gateway's envoy runs and can bind ports of the range (keep the range out of its host's ephemeral ports, or reserve it in net.ipv4.ip_local_reserved_ports); where the worker cannot reach gateway_ip, set data_plane_probe.address",
                        humantime::format_duration(self.rm.config.data_plane_probe.deadline.0)
                    ),
                    retryable: true,
                    status: None,
                },
                Err(DriveError::Capacity(m) | DriveError::Kube(m) | DriveError::Unserved(m)) => {
                    return Err(m);
                }
                Err(DriveError::Waiting { message, .. }) => {
                    return Err(format!("waiting for the Gateway's controller: {message}"));
                }
            };
            // The pass may have written the record since it was read (a give-back): fail what it left.
            let (rec, rev) = if self.moved(&key, rev).await.map_err(|e| e.to_string())? {
                match self.read(&key).await {
                    Ok(Some((r, v))) if r.phase == Phase::Exposing => (r, v),
                    Ok(_) => continue,
                    Err(e) => return e.handled(),
                }
            } else {
                (rec, rev)
            };
            match self
                .fail(&key, &rec, rev, failure.clone(), &mut touched)
                .await
            {
                Ok(Pass::Settled(_)) => {
                    return Ok(answers::failed(
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

    pub(super) fn past(&self, rec: &Record, deadline: Duration) -> bool {
        rec.phase == Phase::Exposing
            && now().saturating_sub(rec.created_at)
                >= i64::try_from(deadline.as_secs()).unwrap_or(i64::MAX)
    }

    /// Whether the data plane probe's deadline passed. It counts from when the allocation was first given
    /// ports, not from its record's creation: a started that waited long for a port still has the probe's
    /// whole time to find one served. A record never given ports (or from before that was kept) has it
    /// all ahead.
    fn probe_past(&self, rec: &Record) -> bool {
        rec.phase == Phase::Exposing
            && rec.bound_at != 0
            && now().saturating_sub(rec.bound_at)
                >= i64::try_from(self.rm.config.data_plane_probe.deadline.0.as_secs())
                    .unwrap_or(i64::MAX)
    }

    /// The answer for a started given up on after the maximum deliveries; `None` when the payload is not a
    /// readable started (it was answered as invalid on its first delivery).
    ///
    /// An allocation already `ready` is live: the delivery given up on was a duplicate or a redelivery
    /// that could not be driven again (the apiserver away, the controller's status stale), and it is
    /// answered `ready` again with the addresses it already has, nothing withdrawn. The exception is
    /// [`GaveUp::AnswerLost`] for an allocation no `ready` of which was ever stored (`ready_stored`, see
    /// [`Handler::stored`]): the master never learned of it, and it is failed like one still exposing. One
    /// whose `ready` was stored (by this event or another) stays ready whatever the cause. Any other is answered
    /// `failed`: its objects are withdrawn, its ports released, and its record kept as a `failed` tombstone
    /// (purged with the other tombstones), so a replay of the event repeats that answer instead of exposing
    /// it; `itgctl deadletter resend` clears the tombstone before it sends the event back. What cannot be
    /// withdrawn now stays recorded as failed, for the reconciler.
    pub async fn given_up(
        &self,
        payload: &[u8],
        why: &str,
        sequence: u64,
        cause: GaveUp,
    ) -> Option<Handled> {
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
            status: None,
        };
        match self
            .abandon(&ev.allocation_id, &f, cause == GaveUp::Unserved)
            .await
        {
            Ok(Abandoned::Live(rec)) => {
                tracing::warn!(why = %why, "a started of a ready allocation was given up on; it stays ready");
                return Some(answers::ready(&self.rm, ev.event_id, &rec));
            }
            // A stored value that is no record at all was never answered `ready` from (workers write only
            // records): the master is told, as for any poison event.
            Ok(Abandoned::Failed | Abandoned::NotARecord) => {}
            // The record could not be read or written, or a newer worker wrote it: the allocation may be
            // ready, and a `failed` would then follow a `ready` the master holds. Nothing is answered; a
            // resend finds it as it is.
            Err(e) => {
                tracing::warn!(error = %e, "the given-up allocation could not be recorded as failed; it is not answered");
                return Some(Handled::Retry { why: e });
            }
        }
        Some(answers::failed(
            &self.rm,
            &ev.allocation_id,
            ev.event_id,
            &f,
        ))
    }

    /// Notes that `reply` was stored in the replies stream: for a `ready`, the allocation's record keeps
    /// that the master may hold it (written once; a conflict reads again). Called after each stored reply.
    ///
    /// # Errors
    /// The KV bucket could not be read or written; the caller logs it, and a later `ready` notes it again.
    pub async fn stored(&self, reply: &contract::Reply) -> Result<(), String> {
        let contract::Reply::Ready(ready) = reply else {
            return Ok(());
        };
        let key = self.rm.allocation_key(&ready.allocation_id);
        for _ in 0..MAX_ROUNDS {
            let Some((rec, rev)) = self.read(&key).await.map_err(|e| e.to_string())? else {
                return Ok(());
            };
            if rec.phase != Phase::Ready || rec.ready_stored {
                return Ok(());
            }
            let mut next = rec;
            next.ready_stored = true;
            match self
                .store
                .update(&key, encode(&next), rev)
                .await
                .map_err(|e| e.to_string())?
            {
                Outcome::Written(_) => return Ok(()),
                Outcome::Conflict => {}
            }
        }
        Err(format!(
            "allocation {:?}: the record kept changing",
            ready.allocation_id
        ))
    }

    /// Fails an allocation that is still exposing (or finishes the cleanup of a failed one) and leaves its
    /// record as a `failed` tombstone; a `ready` one is left as it is when `keep_ready` or when a `ready` of
    /// it was stored, else failed too.
    pub(super) async fn abandon(
        &self,
        allocation_id: &str,
        f: &Failure,
        keep_ready: bool,
    ) -> Result<Abandoned, String> {
        let key = self.rm.allocation_key(allocation_id);
        for _ in 0..MAX_ROUNDS {
            let (rec, rev) = match self.read(&key).await {
                Ok(Some(current)) => current,
                Ok(None) => return Ok(Abandoned::Failed),
                Err(ReadError::Invalid { .. }) => return Ok(Abandoned::NotARecord),
                Err(e) => return Err(e.to_string()),
            };
            let pass = match rec.phase {
                // A live allocation is never torn down by a delivery that could not confirm it.
                Phase::Ready
                    if (keep_ready || rec.ready_stored) && !guards::off(Guard::KeepReady) =>
                {
                    return Ok(Abandoned::Live(Box::new(rec)));
                }
                // Ending or removed: the ended's own cleanup owns the record.
                Phase::Ending | Phase::Removed => return Ok(Abandoned::Failed),
                Phase::Failed => self.cleanup(&key, &rec, rev, &mut Vec::new()).await,
                Phase::Exposing | Phase::Ready => {
                    self.fail(&key, &rec, rev, f.clone(), &mut Vec::new()).await
                }
            };
            match pass.map_err(drive_msg)? {
                Pass::Moved => continue,
                Pass::Settled(_) => return Ok(Abandoned::Failed),
            }
        }
        Err(format!(
            "allocation {allocation_id:?}: the record kept changing"
        ))
    }
}

/// What giving up on a started left.
pub(super) enum Abandoned {
    /// The allocation is `ready` and stays so.
    Live(Box<Record>),
    /// The allocation is failed (or ended) and holds nothing, or never had a record.
    Failed,
    /// The allocation's key holds a value that is no record of any version: nothing was ever answered
    /// from it, and it is left for an operator to inspect.
    NotARecord,
}
