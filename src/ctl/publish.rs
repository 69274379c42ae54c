//! `itgctl publish`: one event, as the master would publish it.

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use uuid::Uuid;

use crate::contract::{self, EventKind};

/// Builds a started payload.
pub fn started_payload(
    event_id: Uuid,
    allocation_id: &str,
    namespace: &str,
    selector: &BTreeMap<String, String>,
    ports: &[(String, u16)],
) -> Value {
    json!({
        "schema_version": contract::SCHEMA_VERSION,
        "event_id": event_id,
        "allocation_id": allocation_id,
        "namespace": namespace,
        "pod_selector": selector,
        "proxy_ports": ports.iter().map(|(n, p)| json!({"name": n, "port": p})).collect::<Vec<_>>(),
        "occurred_at": jiff::Timestamp::now().to_string(),
    })
}

/// Builds an ended payload.
pub fn ended_payload(event_id: Uuid, allocation_id: &str) -> Value {
    json!({
        "schema_version": contract::SCHEMA_VERSION,
        "event_id": event_id,
        "allocation_id": allocation_id,
        "occurred_at": jiff::Timestamp::now().to_string(),
    })
}

pub(super) async fn publish(
    js: &jetstream::Context,
    rm: &str,
    kind: EventKind,
    event_id: Uuid,
    body: &Value,
) -> anyhow::Result<u64> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", event_id.to_string().as_str());
    let ack = js
        .publish_with_headers(contract::event_subject(rm, kind), headers, serde_json::to_vec(body)?.into())
        .await?
        .await
        .context("the events stream did not store the event; is a worker (which creates ITG_EVENTS) running?")?;
    Ok(ack.sequence)
}
