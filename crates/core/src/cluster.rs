//! The seam to the cluster that exposes a port: what the worker, the reconciler, the health checks and
//! `itgctl` need from it, and nothing of how. The Gateway-listener backend of the Kubernetes adapter is its
//! first implementation; another way of exposing a port (a ListenerSet per allocation, say) is a second.
//!
//! Two traits: [`Cluster`] is the hot path (expose, withdraw, the controller's verdict), [`Inventory`] what
//! the reconciler lists and removes and what start-up and `/readyz` report.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use crate::readiness::Verdict;
use crate::state::{Binding, Spec};

/// Why a cluster step did not complete. The variant tells the worker whether to retry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// The apiserver is unreachable, overloaded or the write conflicted: retry with backoff.
    #[error("{0}")]
    Transient(String),
    /// The Gateway has no room for another listener, or the port is taken there: wait for capacity.
    #[error("{0}")]
    Capacity(String),
    /// The request can never succeed as it is (invalid, namespace missing).
    #[error("{0}")]
    Permanent(String),
    /// The apiserver refused the call as forbidden (403): the worker's RBAC lacks it.
    #[error("{0}")]
    Forbidden(String),
}

impl ClusterError {
    /// Whether the apiserver refused the call as forbidden (RBAC).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, ClusterError::Forbidden(_))
    }

    /// Whether a capacity refusal says the port is taken on the Gateway, rather than that no slot is left.
    pub fn is_port_taken(&self) -> bool {
        matches!(self, ClusterError::Capacity(m) if m.contains("port, protocol") || m.contains("unique"))
    }
}

/// What the worker needs to know of its Gateway to choose ports and count listener slots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayView {
    /// Whether the Gateway exists.
    pub present: bool,
    /// Ports of listeners the worker does not own.
    pub foreign_ports: BTreeSet<u16>,
    /// Names of every listener, ours and others'.
    pub listeners: BTreeSet<String>,
    /// Ports of the listeners the worker owns.
    pub owned_ports: BTreeSet<u16>,
    /// The port of each listener in `owned`, by name: an allocation whose record lost its ports (a
    /// state rebuilt by a replay) finds the port its listener stands on.
    pub owned_port_of: BTreeMap<String, u16>,
    /// Names of the listeners this resource manager provably owns ([`crate::names::owns_listener`]): the
    /// only ones its reconciler may remove.
    pub owned: BTreeSet<String>,
}

/// One proxy port of one allocation, as the cluster sees it.
#[derive(Debug, Clone)]
pub struct Exposure<'a> {
    pub rm: &'a str,
    pub allocation_id: &'a str,
    pub spec: &'a Spec,
    pub binding: &'a Binding,
}

/// The hot path: what serving an event needs from the cluster.
pub trait Cluster: Clone + Send + Sync + 'static {
    /// The Gateway as last seen by the watch. Shared, not copied: in ListenerSet mode it is built from
    /// every set on the Gateway, and the hot path reads it twice per exposure.
    fn view(&self) -> std::sync::Arc<GatewayView>;
    /// Makes the Service, listener and route of one proxy port exist (idempotent), in that order.
    fn expose(&self, e: &Exposure<'_>) -> impl Future<Output = Result<(), ClusterError>> + Send;
    /// Makes them not exist (idempotent), in the order route, listener, Service.
    fn withdraw(
        &self,
        rm: &str,
        allocation_id: &str,
        namespace: Option<&str>,
        binding: &Binding,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;
    /// What the Gateway's controller reports for these exposures, from the watches. A cluster without a
    /// controller's status to read answers reachable.
    fn controller_verdict(&self, _e: &[Exposure<'_>]) -> Verdict {
        Verdict::Reachable
    }
    /// Ticks whenever the Gateway or a route changes, so a waiting pass looks again at once. A cluster
    /// without watches returns a receiver that never ticks.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        tokio::sync::watch::channel(0).1
    }
}

/// Which kind of object the worker made in a task namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ObjectKind {
    Service,
    TcpRoute,
    /// An allocation's ListenerSet, in `listenerset` mode.
    ListenerSet,
}

/// An object the worker made, as found by its labels.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OwnedObject {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
    /// Unix seconds of its creation.
    pub created: i64,
    /// The uid and resourceVersion it was listed with: its delete is conditional on them, so an object
    /// re-made or changed since the listing is not lost to a stale judgement. An identical re-apply keeps
    /// the resourceVersion; the reconciler covers that by judging again on the records just before it
    /// removes, and repairing an allocation whose record was written in between.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// Whether a GatewayClass is accepted by a controller, as the start-up report says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassStatus {
    /// `Accepted=True`: a controller took the class.
    Accepted { class: String, controller: String },
    /// The class carries no `Accepted` condition: no controller took it, or its controller writes none.
    Unwritten { class: String, controller: String },
    /// The class carries `Accepted` other than `True`: its controller refused it.
    NotAccepted {
        class: String,
        controller: String,
        why: String,
    },
    /// The class could not be read.
    Unknown { class: String, why: String },
}

impl std::fmt::Display for ClassStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClassStatus::Accepted { class, controller } => {
                write!(f, "GatewayClass {class} accepted by {controller}")
            }
            ClassStatus::Unwritten { class, controller } => write!(
                f,
                "GatewayClass {class} ({controller}) not accepted by a controller (no status written)"
            ),
            ClassStatus::NotAccepted {
                class,
                controller,
                why,
            } => write!(
                f,
                "GatewayClass {class} ({controller}) not accepted by a controller ({why})"
            ),
            ClassStatus::Unknown { class, why } => {
                write!(f, "GatewayClass {class:?}: cannot tell ({why})")
            }
        }
    }
}

impl ClassStatus {
    /// Whether a controller accepted the class.
    pub fn accepted(&self) -> bool {
        matches!(self, ClassStatus::Accepted { .. })
    }

    /// Whether a controller can be expected to serve the Gateway: it accepted the class, or the class carries
    /// no status and its controller is one known to write none ([`crate::controllers`]).
    pub fn may_be_served(&self) -> bool {
        match self {
            ClassStatus::Accepted { .. } => true,
            ClassStatus::Unwritten { controller, .. } => {
                crate::controllers::known(controller).is_some_and(|c| !c.writes_class_status)
            }
            ClassStatus::NotAccepted { .. } | ClassStatus::Unknown { .. } => false,
        }
    }

    /// The class's `controllerName`, where the class could be read: the key of [`crate::controllers`].
    pub fn controller(&self) -> Option<&str> {
        match self {
            ClassStatus::Accepted { controller, .. }
            | ClassStatus::Unwritten { controller, .. }
            | ClassStatus::NotAccepted { controller, .. } => Some(controller),
            ClassStatus::Unknown { .. } => None,
        }
    }
}

/// What the reconciler lists and removes, and what start-up and `/readyz` report.
pub trait Inventory: Cluster {
    /// Whether the cluster's apiserver answers now.
    fn check(&self) -> impl Future<Output = Result<(), String>> + Send;
    /// Whether the Gateway's class is accepted by a controller, read once (for the start-up report).
    fn class_status(&self) -> impl Future<Output = ClassStatus> + Send;
    /// How this backend writes an exposure, for the start-up report (for example `TCPRoute v1`).
    fn describe(&self) -> String;
    /// Every object of this resource manager, by label: in each of `namespaces`, or in all namespaces when
    /// `None` (which needs cluster-wide list rights).
    fn owned_objects(
        &self,
        namespaces: Option<&[String]>,
    ) -> impl Future<Output = Result<Vec<OwnedObject>, ClusterError>> + Send;
    /// Deletes one object found by [`Inventory::owned_objects`] (a missing object is not a failure).
    fn delete_object(
        &self,
        o: &OwnedObject,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;
    /// Removes a listener this resource manager owns, by its name.
    fn remove_owned_listener(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;
}
