//! What the streams hold for one allocation: its events, the replies sent for it and its dead letters.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::contract;

/// How long one stream read may wait for the next stored message before the scan ends with a note.
const NEXT: Duration = Duration::from_secs(5);

/// The messages of `stream` under `filter` whose body names `allocation_id`, oldest first, each with its
/// sequence, time and subject (and, for a dead letter, why it was given up on). A stream that is absent
/// gives an empty list and a note.
pub(super) async fn matching(
    js: &jetstream::Context,
    stream: &str,
    filter: String,
    allocation_id: &str,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Value>> {
    let Ok(s) = js.get_stream(stream).await else {
        notes.push(format!("no {stream} stream: no worker has created it here"));
        return Ok(Vec::new());
    };
    let mut consumer = s
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut pending = consumer.info().await?.num_pending;
    let mut out = Vec::new();
    if pending == 0 {
        return Ok(out);
    }
    let mut msgs = consumer.messages().await?;
    while pending > 0 {
        let Ok(next) = tokio::time::timeout(NEXT, msgs.next()).await else {
            notes.push(format!(
                "{stream}: {pending} messages left unread after {} without one arriving",
                humantime::format_duration(NEXT)
            ));
            break;
        };
        let Some(m) = next else { break };
        let m = m.map_err(|e| anyhow::anyhow!("reading {stream}: {e}"))?;
        let info = m.info().map_err(|e| anyhow::anyhow!("{stream}: {e}"))?;
        pending = info.pending;
        let body: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        if body["allocation_id"].as_str() != Some(allocation_id) {
            continue;
        }
        let at = jiff::Timestamp::from_second(info.published.unix_timestamp())
            .map(|t| t.to_string())
            .unwrap_or_default();
        let mut row = json!({
            "sequence": info.stream_sequence,
            "time": at,
            "subject": m.subject.as_str(),
            "kind": m.subject.rsplit('.').next().unwrap_or(""),
            "body": body,
        });
        if let Some(h) = &m.headers {
            let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
            if let Some(why) = get(contract::DEAD_LETTER_ERROR_HEADER) {
                row["error"] = json!(why);
                row["original_subject"] = json!(get(contract::DEAD_LETTER_SUBJECT_HEADER));
                row["kind"] = json!(
                    get(contract::DEAD_LETTER_SUBJECT_HEADER)
                        .and_then(|s| s.rsplit('.').next().map(str::to_owned))
                );
            }
        }
        out.push(row);
    }
    Ok(out)
}

/// The allocation's events, replies and dead letters, in that order.
pub(super) async fn all(
    js: &jetstream::Context,
    rm: &str,
    allocation_id: &str,
    notes: &mut Vec<String>,
) -> anyhow::Result<[Vec<Value>; 3]> {
    Ok([
        matching(
            js,
            contract::EVENTS_STREAM,
            contract::events_filter(rm),
            allocation_id,
            notes,
        )
        .await?,
        matching(
            js,
            contract::REPLIES_STREAM,
            contract::replies_filter(rm),
            allocation_id,
            notes,
        )
        .await?,
        matching(
            js,
            contract::DEAD_LETTER_STREAM,
            format!("{}>", contract::dead_letter_prefix(rm)),
            allocation_id,
            notes,
        )
        .await?,
    ])
}
