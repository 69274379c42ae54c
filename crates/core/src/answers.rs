//! What a handler answers for one delivery: the reply and its message id, or "done", or "retry". The same
//! outcome of the same event always gets the same `Nats-Msg-Id`, so a redelivered or raced event stores its
//! reply once.

use uuid::Uuid;

use crate::contract::{self, Failed, FailureReason, InvalidEvent, Proxy, Ready, Removed, Reply};
use crate::names;
use crate::resource_manager::RmContext;
use crate::state::{Failure, Record};

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Publish this reply under this message id, then acknowledge.
    Answer { reply: Reply, msg_id: String },
    /// The event was served and needs no reply; acknowledge.
    Done,
    /// Not served yet (capacity, apiserver or NATS trouble); redeliver later.
    Retry { why: String },
    /// Not this worker's to serve: the allocation's record is of a newer version. Redeliver for ever, so a
    /// newer worker serves it; never give it up, dead-letter it or answer it from here.
    Defer { why: String },
}

/// `failed` for an event that could not be read or broke the contract.
pub fn invalid(rm: &RmContext, invalid: &InvalidEvent, payload: &[u8]) -> Handled {
    let identity = match invalid.event_id {
        Some(id) => id.to_string(),
        None => names::allocation_hash("payload", &String::from_utf8_lossy(payload)),
    };
    let alloc = invalid.allocation_id.clone();
    let reply = Reply::Failed(Failed {
        schema_version: contract::SCHEMA_VERSION,
        resource_manager: rm.name.clone(),
        allocation_id: alloc.clone(),
        source_event_id: invalid.event_id.map(|id| id.to_string()),
        reason: FailureReason::InvalidEvent,
        message: format!(
            "the event was refused: {invalid}; fix the publisher and send a new event"
        ),
        retryable: false,
    });
    let msg_id = names::reply_msg_id(
        "failed",
        &rm.name,
        alloc.as_deref().unwrap_or(""),
        &identity,
    );
    Handled::Answer { reply, msg_id }
}

/// `failed` for a served event.
pub fn failed(rm: &RmContext, allocation_id: &str, event_id: Uuid, f: &Failure) -> Handled {
    let reply = Reply::Failed(Failed {
        schema_version: contract::SCHEMA_VERSION,
        resource_manager: rm.name.clone(),
        allocation_id: Some(allocation_id.to_owned()),
        source_event_id: Some(event_id.to_string()),
        reason: f.reason,
        message: f.message.clone(),
        retryable: f.retryable,
    });
    let msg_id = names::reply_msg_id(
        "failed",
        &rm.name,
        allocation_id,
        &format!("{event_id}:{}", f.reason),
    );
    Handled::Answer { reply, msg_id }
}

/// `ready`, with the record's addresses in the order the started listed its ports, on the Gateway of the
/// pool that holds them.
pub fn ready(rm: &RmContext, event_id: Uuid, rec: &Record) -> Handled {
    let target = rm
        .placed(rec.gateway.as_ref())
        .and_then(|i| rm.pool.get(i))
        .unwrap_or_else(|| rm.home());
    let order = rec
        .spec
        .as_ref()
        .map(|s| s.proxy_ports.clone())
        .unwrap_or_default();
    let proxies: Vec<Proxy> = order
        .iter()
        .filter_map(|p| rec.ports.iter().find(|b| b.name == p.name))
        .map(|b| Proxy {
            name: b.name.clone(),
            container_port: b.container_port,
            gateway_port: b.gateway_port,
            address: contract::proxy_address(&target.ip, b.gateway_port),
        })
        .collect();
    let mut outcome: Vec<String> = proxies
        .iter()
        .map(|p| format!("{}={}", p.name, p.gateway_port))
        .collect();
    // Ports on another Gateway of the pool are another outcome; on the resource manager's own Gateway the
    // id stays what it was before pools.
    if let Some(g) = &rec.gateway
        && *g != rm.home().gateway
    {
        outcome.insert(0, format!("{}/{}", g.namespace, g.name));
    }
    let msg_id = names::reply_msg_id(
        "ready",
        &rm.name,
        &rec.allocation_id,
        &format!("{event_id}:{}", outcome.join(",")),
    );
    let reply = Reply::Ready(Ready {
        schema_version: contract::SCHEMA_VERSION,
        resource_manager: rm.name.clone(),
        allocation_id: rec.allocation_id.clone(),
        source_event_id: event_id.to_string(),
        gateway: target.gateway.clone(),
        proxies,
    });
    Handled::Answer { reply, msg_id }
}

/// `removed`, with what cleanup released.
pub fn removed(rm: &RmContext, event_id: Uuid, rec: &Record) -> Handled {
    let reply = Reply::Removed(Removed {
        schema_version: contract::SCHEMA_VERSION,
        resource_manager: rm.name.clone(),
        allocation_id: rec.allocation_id.clone(),
        source_event_id: event_id.to_string(),
        released: rec.released.clone(),
    });
    let msg_id = names::reply_msg_id(
        "removed",
        &rm.name,
        &rec.allocation_id,
        &event_id.to_string(),
    );
    Handled::Answer { reply, msg_id }
}
