//! The replies the workers publish: `ready` with the addresses, `failed` with a reason from a closed set,
//! `removed`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ReplyKind;

/// Which Gateway a reply's addresses belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRef {
    pub namespace: String,
    pub name: String,
}

/// One exposed proxy port in a `ready` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proxy {
    pub name: String,
    pub container_port: u16,
    pub gateway_port: u16,
    /// `gateway_ip:gateway_port`, or `[v6]:port` for an IPv6 literal.
    pub address: String,
}

/// `itg.replies.<rm>.ready`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub schema_version: u64,
    pub resource_manager: String,
    pub allocation_id: String,
    pub source_event_id: String,
    pub gateway: GatewayRef,
    pub proxies: Vec<Proxy>,
}

/// The contract's closed set of failure reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    InvalidEvent,
    UnknownResourceManager,
    NamespaceNotAllowed,
    CapacityExhausted,
    KubernetesError,
    Timeout,
    /// (added) The Gateway's controller refused the listener or the route; the message carries its reason.
    GatewayRejected,
}

impl FailureReason {
    /// Every reason, for series created at zero before the first failure.
    pub const ALL: [FailureReason; 7] = [
        FailureReason::InvalidEvent,
        FailureReason::UnknownResourceManager,
        FailureReason::NamespaceNotAllowed,
        FailureReason::CapacityExhausted,
        FailureReason::KubernetesError,
        FailureReason::Timeout,
        FailureReason::GatewayRejected,
    ];
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            FailureReason::InvalidEvent => "invalid_event",
            FailureReason::UnknownResourceManager => "unknown_resource_manager",
            FailureReason::NamespaceNotAllowed => "namespace_not_allowed",
            FailureReason::CapacityExhausted => "capacity_exhausted",
            FailureReason::KubernetesError => "kubernetes_error",
            FailureReason::Timeout => "timeout",
            FailureReason::GatewayRejected => "gateway_rejected",
        };
        f.write_str(s)
    }
}

/// `itg.replies.<rm>.failed`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub schema_version: u64,
    pub resource_manager: String,
    pub allocation_id: Option<String>,
    pub source_event_id: Option<String>,
    pub reason: FailureReason,
    pub message: String,
    pub retryable: bool,
}

/// One freed port in a `removed` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub name: String,
    pub gateway_port: u16,
}

/// `itg.replies.<rm>.removed`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub schema_version: u64,
    pub resource_manager: String,
    pub allocation_id: String,
    pub source_event_id: String,
    pub released: Vec<Released>,
}

/// A reply of any kind, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ready(Ready),
    Failed(Failed),
    Removed(Removed),
}

impl Reply {
    /// Which subject the reply goes to.
    pub fn kind(&self) -> ReplyKind {
        match self {
            Reply::Ready(_) => ReplyKind::Ready,
            Reply::Failed(_) => ReplyKind::Failed,
            Reply::Removed(_) => ReplyKind::Removed,
        }
    }

    /// The resource manager the reply is for.
    pub fn resource_manager(&self) -> &str {
        match self {
            Reply::Ready(r) => &r.resource_manager,
            Reply::Failed(r) => &r.resource_manager,
            Reply::Removed(r) => &r.resource_manager,
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        let v = match self {
            Reply::Ready(r) => serde_json::to_vec(r),
            Reply::Failed(r) => serde_json::to_vec(r),
            Reply::Removed(r) => serde_json::to_vec(r),
        };
        // Plain structs of strings and integers always serialize.
        v.unwrap_or_default()
    }
}

/// `host:port` for an IPv4 address or DNS name, `[host]:port` for an IPv6 literal.
pub fn proxy_address(gateway_ip: &str, port: u16) -> String {
    if gateway_ip.contains(':') {
        format!("[{gateway_ip}]:{port}")
    } else {
        format!("{gateway_ip}:{port}")
    }
}
