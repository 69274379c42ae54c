//! The allocation's state machine. One record per allocation lives in the KV bucket and is only ever
//! changed by compare-and-set; this module decides, from the record as read, what an event does to it.
//!
//! ```text
//!  started:  (none) ──► Exposing ──► Ready
//!                          │           │
//!  capacity/k8s deadline   ▼           │
//!                        Failed        │
//!  ended:   (none) ──────────────────────────► Removed (tombstone: a later started exposes nothing)
//!           Exposing | Ready | Failed ──► Ending ──► Removed
//! ```
//!
//! The record is the desired state: `Exposing`/`Ready` want the ports exposed, every other phase wants
//! nothing to exist. A handler drives Kubernetes and the port keys toward it, then writes back with
//! compare-and-set; if the record moved meanwhile it reads again and drives again. A crash anywhere is
//! repaired by the next delivery or replay.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::contract::{FailureReason, GatewayRef, ProxyPort, Released, Started};

/// The record format this build writes, and the newest it reads. Records written before the field
/// existed carry none and are version 1. Raise it only for a change that a worker of the previous version
/// would misread (a field whose absence means something else, a new phase); a new field with a serde
/// default keeps the version, since older workers ignore it. docs/operations.md says which versions may
/// run side by side.
pub const RECORD_VERSION: u32 = 1;

fn version_one() -> u32 {
    1
}

/// Every write stamps the writer's format: a record this build could read, it rewrites in its own.
fn write_current_version<S: serde::Serializer>(_: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(RECORD_VERSION)
}

/// Why a stored record was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A newer worker wrote it: this one may misread it, so it leaves it untouched.
    #[error(
        "record version {found} was written by a newer worker; this one reads up to version {RECORD_VERSION} and leaves it untouched: finish rolling out the newer version (or roll back every worker that writes version {found})"
    )]
    Newer { found: u32 },
    /// Not a record at all.
    #[error(
        "the record is not valid JSON of an allocation record ({0}); inspect it with `itgctl describe` and fix or delete it by hand"
    )]
    Invalid(String),
}

/// Reads a stored record, refusing one of a newer version before anything else: such a record may not
/// parse as this build's [`Record`], and one that does would be misread (serde ignores what it does not
/// know).
///
/// # Errors
/// [`DecodeError::Newer`] or [`DecodeError::Invalid`].
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    #[derive(Deserialize)]
    struct Versioned {
        #[serde(default = "version_one")]
        version: u32,
    }
    let v: Versioned =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    if v.version > RECORD_VERSION {
        return Err(DecodeError::Newer { found: v.version });
    }
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Invalid(e.to_string()))
}

/// Where an allocation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A started was accepted; ports are being claimed and objects applied.
    Exposing,
    /// Everything is applied and `ready` was (or is being) replied.
    Ready,
    /// The allocation could not be served; nothing of it may exist.
    Failed,
    /// An ended was accepted; objects and ports are being removed.
    Ending,
    /// Nothing of the allocation exists. Kept as a tombstone so late or replayed events do nothing.
    Removed,
}

impl Phase {
    /// Whether this phase wants the allocation's ports exposed.
    pub fn wants_exposure(self) -> bool {
        matches!(self, Phase::Exposing | Phase::Ready)
    }
}

/// What a started asked for; kept from the first started, so a replay or duplicate with other content
/// cannot expose an allocation twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub namespace: String,
    pub pod_selector: BTreeMap<String, String>,
    pub proxy_ports: Vec<ProxyPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
}

/// One proxy port bound to one gateway port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub name: String,
    pub container_port: u16,
    pub gateway_port: u16,
}

/// A binding an exposing allocation gave back, and the Gateway of the pool it was on: after a give-back
/// the allocation may be placed on another Gateway, and its cleanup withdraws each where it was.
/// Stored flat, so a worker that knows only [`Binding`] still reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GivenBack {
    #[serde(flatten)]
    pub binding: Binding,
    /// Absent in records from before pools kept it: the Gateway the record names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayRef>,
}

/// Why an allocation failed; replayed to every later started of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub reason: FailureReason,
    pub message: String,
    pub retryable: bool,
    /// The apiserver's HTTP status behind a `kubernetes_error`, where one answered: a 403 from the task
    /// namespace means nothing of the allocation was made there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// The KV record of one allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The format the record was read in; it is always written as [`RECORD_VERSION`]. Absent (version 1)
    /// in records written before versions.
    #[serde(default = "version_one", serialize_with = "write_current_version")]
    pub version: u32,
    pub allocation_id: String,
    pub resource_manager: String,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Spec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_event_id: Option<Uuid>,
    /// The Gateway of the resource manager's pool that holds this allocation's ports, recorded with them;
    /// absent means the resource manager's own (`internal_task_gateway`), as in records from before pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayRef>,
    /// Ports this allocation holds or is claiming. Every port key owned by the allocation is listed here
    /// before it is created, so cleanup always finds it.
    #[serde(default)]
    pub ports: Vec<Binding>,
    /// Ports freed by cleanup, for the `removed` reply.
    #[serde(default)]
    pub released: Vec<Released>,
    /// Ports an exposing allocation gave back to choose again (a conflict, a port taken, no room). A
    /// racing pass of the same allocation may still apply an object there after the give-back, so cleanup
    /// withdraws these too; they are never reported as released.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub given_back: Vec<GivenBack>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_event_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Unix seconds of the record's creation: capacity and Kubernetes deadlines count from here.
    #[serde(default)]
    pub created_at: i64,
    /// Unix seconds of the last change, for the reconciler's hold-off and tombstone expiry.
    #[serde(default)]
    pub updated_at: i64,
    /// Unix seconds when the allocation was first given ports, where the data plane probe's deadline
    /// counts from: a started that waited long for a port still has the probe's whole time to find one
    /// served. 0 until then, and in records from before it was kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bound_at: i64,
    /// Whether a `ready` of this allocation was stored in the replies stream: the master may hold it, so a
    /// started given up on because its own answer could not be stored never fails the allocation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ready_stored: bool,
}

fn is_zero(t: &i64) -> bool {
    *t == 0
}

/// What a `started` does, given the record as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartedStep {
    /// No record yet: create one in `Exposing`.
    Create(Box<Record>),
    /// The allocation wants exposure: drive it (again) and reply `ready`.
    Expose,
    /// The allocation failed before: repeat that answer.
    RepeatFailure(Failure),
    /// The allocation has ended: expose nothing, answer `failed`.
    AlreadyEnded,
}

/// Decides what a started does.
pub fn on_started(record: Option<&Record>, rm: &str, ev: &Started, now: i64) -> StartedStep {
    match record {
        None => StartedStep::Create(Box::new(Record {
            version: RECORD_VERSION,
            allocation_id: ev.allocation_id.clone(),
            resource_manager: rm.to_owned(),
            phase: Phase::Exposing,
            spec: Some(Spec {
                namespace: ev.namespace.clone(),
                pod_selector: ev.pod_selector.clone(),
                proxy_ports: ev.proxy_ports.clone(),
                task_id: ev.task_id.clone(),
            }),
            started_event_id: Some(ev.event_id),
            gateway: None,
            ports: Vec::new(),
            released: Vec::new(),
            given_back: Vec::new(),
            ended_event_id: None,
            failure: None,
            created_at: now,
            updated_at: now,
            bound_at: 0,
            ready_stored: false,
        })),
        Some(r) => match r.phase {
            Phase::Exposing | Phase::Ready => StartedStep::Expose,
            Phase::Failed => StartedStep::RepeatFailure(r.failure.clone().unwrap_or(Failure {
                reason: FailureReason::KubernetesError,
                message: "the allocation failed earlier".into(),
                retryable: true,
                status: None,
            })),
            Phase::Ending | Phase::Removed => StartedStep::AlreadyEnded,
        },
    }
}

/// What an `ended` does, given the record as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndedStep {
    /// No record yet: leave a tombstone so a later started exposes nothing.
    Tombstone(Record),
    /// Move the record to `Ending` (the returned record), then clean up.
    MarkEnding(Record),
    /// Already ending or ended: clean up (idempotent) and reply `removed`.
    Cleanup,
}

/// Decides what an ended does.
pub fn on_ended(
    record: Option<&Record>,
    rm: &str,
    allocation_id: &str,
    event_id: Uuid,
    now: i64,
) -> EndedStep {
    match record {
        None => EndedStep::Tombstone(Record {
            version: RECORD_VERSION,
            allocation_id: allocation_id.to_owned(),
            resource_manager: rm.to_owned(),
            phase: Phase::Removed,
            spec: None,
            started_event_id: None,
            gateway: None,
            ports: Vec::new(),
            released: Vec::new(),
            given_back: Vec::new(),
            ended_event_id: Some(event_id),
            failure: None,
            created_at: now,
            updated_at: now,
            bound_at: 0,
            ready_stored: false,
        }),
        Some(r) => match r.phase {
            Phase::Exposing | Phase::Ready | Phase::Failed => {
                let mut next = r.clone();
                next.phase = Phase::Ending;
                next.ended_event_id = Some(event_id);
                next.updated_at = now;
                EndedStep::MarkEnding(next)
            }
            Phase::Ending | Phase::Removed => EndedStep::Cleanup,
        },
    }
}

impl Record {
    /// Proxy ports of the spec that have no gateway port yet.
    pub fn unbound(&self) -> Vec<&ProxyPort> {
        self.spec
            .as_ref()
            .map(|s| {
                s.proxy_ports
                    .iter()
                    .filter(|p| !self.ports.iter().any(|b| b.name == p.name))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The record after its objects and ports are gone: ports move to `released`, `Ending` becomes
    /// `Removed`, `Failed` stays.
    pub fn cleaned(&self, now: i64) -> Record {
        let mut next = self.clone();
        for b in next.ports.drain(..) {
            if !next.released.iter().any(|r| r.name == b.name) {
                next.released.push(Released {
                    name: b.name,
                    gateway_port: b.gateway_port,
                });
            }
        }
        if next.phase == Phase::Ending {
            next.phase = Phase::Removed;
        }
        next.updated_at = now;
        next
    }

    /// The record moved to `Failed` for `failure`; its ports stay listed until cleanup frees them.
    pub fn failed(&self, failure: Failure, now: i64) -> Record {
        let mut next = self.clone();
        next.phase = Phase::Failed;
        next.failure = Some(failure);
        next.updated_at = now;
        next
    }

    /// Whether nothing of the allocation remains to remove.
    pub fn is_clean(&self) -> bool {
        self.ports.is_empty()
    }
}

/// Seconds since the oldest `exposing` record among `records` was created (0 when none is exposing): an
/// exposure that stays `exposing` for long waits on capacity, a controller or an apiserver.
pub fn oldest_exposing_age<'a>(records: impl IntoIterator<Item = &'a Record>, now: i64) -> i64 {
    records
        .into_iter()
        .filter(|r| r.phase == Phase::Exposing)
        .map(|r| now.saturating_sub(r.created_at).max(0))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_started(alloc: &str) -> Started {
        Started {
            event_id: Uuid::new_v4(),
            allocation_id: alloc.into(),
            task_id: None,
            namespace: "team-a".into(),
            pod_selector: [("app".to_owned(), "nb".to_owned())].into(),
            proxy_ports: vec![
                ProxyPort {
                    name: "jupyter".into(),
                    port: 8888,
                },
                ProxyPort {
                    name: "tb".into(),
                    port: 6006,
                },
            ],
            occurred_at: None,
        }
    }

    fn created(alloc: &str) -> Record {
        match on_started(None, "rm", &mk_started(alloc), 1) {
            StartedStep::Create(r) => *r,
            other => panic!("expected Create, got {other:?}"),
        }
    }

    #[test]
    fn first_started_creates_an_exposing_record() {
        let r = created("a.1");
        assert_eq!(r.phase, Phase::Exposing);
        assert_eq!(r.unbound().len(), 2);
    }

    #[test]
    fn repeated_started_exposes_again_with_the_same_record() {
        let mut r = created("a.1");
        r.phase = Phase::Ready;
        assert_eq!(
            on_started(Some(&r), "rm", &mk_started("a.1"), 2),
            StartedStep::Expose
        );
    }

    #[test]
    fn ended_before_started_leaves_a_tombstone_that_blocks_resurrection() {
        let id = Uuid::new_v4();
        let EndedStep::Tombstone(t) = on_ended(None, "rm", "a.1", id, 1) else {
            panic!("expected a tombstone")
        };
        assert_eq!(t.phase, Phase::Removed);
        assert_eq!(
            on_started(Some(&t), "rm", &mk_started("a.1"), 2),
            StartedStep::AlreadyEnded
        );
    }

    #[test]
    fn late_started_after_ended_exposes_nothing() {
        let r = created("a.1");
        let EndedStep::MarkEnding(ending) = on_ended(Some(&r), "rm", "a.1", Uuid::new_v4(), 2)
        else {
            panic!("expected MarkEnding")
        };
        assert_eq!(
            on_started(Some(&ending), "rm", &mk_started("a.1"), 3),
            StartedStep::AlreadyEnded
        );
        let removed = ending.cleaned(4);
        assert_eq!(removed.phase, Phase::Removed);
        assert_eq!(
            on_started(Some(&removed), "rm", &mk_started("a.1"), 5),
            StartedStep::AlreadyEnded
        );
    }

    #[test]
    fn cleanup_moves_ports_to_released_once() {
        let mut r = created("a.1");
        r.ports.push(Binding {
            name: "jupyter".into(),
            container_port: 8888,
            gateway_port: 40001,
        });
        r.phase = Phase::Ending;
        let c = r.cleaned(2);
        assert!(c.is_clean());
        assert_eq!(
            c.released,
            vec![Released {
                name: "jupyter".into(),
                gateway_port: 40001
            }]
        );
        assert_eq!(c.cleaned(3).released.len(), 1);
    }

    #[test]
    fn repeated_ended_only_cleans_up() {
        let mut r = created("a.1");
        r.phase = Phase::Removed;
        assert_eq!(
            on_ended(Some(&r), "rm", "a.1", Uuid::new_v4(), 2),
            EndedStep::Cleanup
        );
    }

    #[test]
    fn failed_allocations_repeat_their_failure_and_can_still_end() {
        let r = created("a.1").failed(
            Failure {
                reason: FailureReason::CapacityExhausted,
                message: "full".into(),
                retryable: true,
                status: None,
            },
            2,
        );
        assert!(
            matches!(on_started(Some(&r), "rm", &mk_started("a.1"), 3), StartedStep::RepeatFailure(f) if f.reason == FailureReason::CapacityExhausted)
        );
        assert!(matches!(
            on_ended(Some(&r), "rm", "a.1", Uuid::new_v4(), 3),
            EndedStep::MarkEnding(_)
        ));
    }

    #[test]
    fn records_round_trip_through_json() {
        let r = created("a.1");
        let back: Record = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_record_without_a_version_is_version_one_and_is_written_in_the_current_one() {
        let mut v: serde_json::Value = serde_json::to_value(created("a.1")).unwrap();
        assert_eq!(v["version"], RECORD_VERSION);
        v.as_object_mut().unwrap().remove("version");
        let old = decode(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(old.version, 1);
        assert_eq!(
            serde_json::to_value(&old).unwrap()["version"],
            RECORD_VERSION
        );
    }

    #[test]
    fn a_record_of_a_newer_version_is_refused_even_when_it_would_parse() {
        let mut v: serde_json::Value = serde_json::to_value(created("a.1")).unwrap();
        v["version"] = (RECORD_VERSION + 1).into();
        assert_eq!(
            decode(&serde_json::to_vec(&v).unwrap()),
            Err(DecodeError::Newer {
                found: RECORD_VERSION + 1
            })
        );
        // A phase this build does not know, in a newer record, is still named as a newer record.
        v["phase"] = "parked".into();
        assert!(matches!(
            decode(&serde_json::to_vec(&v).unwrap()),
            Err(DecodeError::Newer { .. })
        ));
        assert!(matches!(
            decode(b"{\"version\":\"x\"}"),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn a_given_back_binding_names_its_gateway_and_reads_as_a_plain_binding_too() {
        let mut r = created("a.1");
        r.given_back.push(GivenBack {
            binding: Binding {
                name: "jupyter".into(),
                container_port: 8888,
                gateway_port: 40001,
            },
            gateway: Some(GatewayRef {
                namespace: "gw".into(),
                name: "b".into(),
            }),
        });
        r.bound_at = 5;
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["given_back"][0]["gateway_port"], 40001);
        assert_eq!(json["given_back"][0]["gateway"]["name"], "b");
        // A worker that reads given_back as plain bindings, and one that reads a record without either field.
        let plain: Vec<Binding> = serde_json::from_value(json["given_back"].clone()).unwrap();
        assert_eq!(plain[0], r.given_back[0].binding);
        let mut old = json.clone();
        old["given_back"][0]
            .as_object_mut()
            .unwrap()
            .remove("gateway");
        old.as_object_mut().unwrap().remove("bound_at");
        let back: Record = serde_json::from_value(old).unwrap();
        assert_eq!(back.given_back[0].gateway, None);
        assert_eq!(back.bound_at, 0);
    }

    #[test]
    fn the_oldest_exposing_age_ignores_every_other_phase() {
        let mut old = created("a.1");
        old.created_at = 100;
        old.phase = Phase::Ready;
        let mut young = created("a.2");
        young.created_at = 150;
        assert_eq!(oldest_exposing_age([&old, &young], 160), 10);
        young.phase = Phase::Removed;
        assert_eq!(oldest_exposing_age([&old, &young], 160), 0);
        old.phase = Phase::Exposing;
        assert_eq!(oldest_exposing_age([&old, &young], 160), 60);
    }
}
