//! `itgctl deadletter`: list the events given up on, and send one back to its subject.

use anyhow::{Context as _, bail};
use async_nats::HeaderMap;
use async_nats::jetstream;
use serde_json::{Value, json};

use super::{DeadLetterCommand, Output};
use crate::{contract, names};

fn header(m: &async_nats::jetstream::message::StreamMessage, name: &str) -> String {
    m.headers
        .get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

pub(super) async fn run(
    js: &jetstream::Context,
    output: Output,
    cmd: DeadLetterCommand,
) -> anyhow::Result<()> {
    let mut stream = js
        .get_stream(contract::DEAD_LETTER_STREAM)
        .await
        .with_context(|| {
            format!(
                "no {} stream; has a worker run?",
                contract::DEAD_LETTER_STREAM
            )
        })?;
    match cmd {
        DeadLetterCommand::List { rm } => {
            let state = stream.info().await?.state.clone();
            let mut rows = Vec::new();
            for seq in state.first_sequence..=state.last_sequence {
                let Ok(m) = stream.get_raw_message(seq).await else {
                    continue;
                };
                if rm
                    .as_ref()
                    .is_some_and(|rm| !m.subject.starts_with(&contract::dead_letter_prefix(rm)))
                {
                    continue;
                }
                let body: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                rows.push(json!({
                    "sequence": seq,
                    "subject": m.subject.as_str(),
                    "original_subject": header(&m, contract::DEAD_LETTER_SUBJECT_HEADER),
                    "original_sequence": header(&m, contract::DEAD_LETTER_SEQUENCE_HEADER),
                    "allocation_id": body["allocation_id"],
                    "event_id": body["event_id"],
                    "error": header(&m, contract::DEAD_LETTER_ERROR_HEADER),
                }));
            }
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Table => {
                    for r in rows {
                        println!(
                            "{:<6} {:<32} {:<40} {}",
                            r["sequence"],
                            r["original_subject"].as_str().unwrap_or(""),
                            r["allocation_id"].as_str().unwrap_or("-"),
                            r["error"].as_str().unwrap_or("")
                        );
                    }
                }
            }
        }
        DeadLetterCommand::Resend { seq, bucket } => {
            let m = stream
                .get_raw_message(seq)
                .await
                .with_context(|| format!("no dead letter with sequence {seq}"))?;
            let subject = header(&m, contract::DEAD_LETTER_SUBJECT_HEADER);
            let Some((rm, kind)) = contract::parse_event_subject(&subject) else {
                bail!("dead letter {seq} names no event subject ({subject:?})");
            };
            if kind == contract::EventKind::Started {
                let bucket = bucket.as_deref().unwrap_or("ITG_STATE");
                clear_failed_tombstone(js, bucket, rm, &m.payload).await?;
            }
            let mut headers = HeaderMap::new();
            // A second resend of the same letter within the duplicate window is dropped.
            headers.insert("Nats-Msg-Id", names::resend_msg_id(seq).as_str());
            let ack = js
                .publish_with_headers(subject.clone(), headers, m.payload.clone())
                .await?
                .await?;
            stream.delete_message(seq).await?;
            println!(
                "sent dead letter {seq} back to {subject} as events sequence {}",
                ack.sequence
            );
        }
    }
    Ok(())
}

/// A started given up on leaves its allocation's record as a `failed` tombstone, so that a replay repeats
/// that answer; the operator's resend is the one way back, so it purges the tombstone first. A record that
/// is anything else (or a failed one still holding ports) is left alone: the resent event is then served
/// against it as any delivery would be.
async fn clear_failed_tombstone(
    js: &jetstream::Context,
    bucket: &str,
    rm: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let Ok(contract::Event::Started(ev)) =
        contract::decode_event(contract::EventKind::Started, payload)
    else {
        return Ok(());
    };
    let kv = js.get_key_value(bucket).await.with_context(|| {
        format!("no KV bucket {bucket:?}; pass the worker's jetstream.state_bucket with --bucket")
    })?;
    let key = names::allocation_key(rm, &ev.allocation_id);
    let Some(entry) = kv.entry(&key).await? else {
        return Ok(());
    };
    if entry.operation != async_nats::jetstream::kv::Operation::Put {
        return Ok(());
    }
    // A record of a newer version is left to the workers that wrote it.
    let Ok(rec) = crate::state::decode(&entry.value) else {
        return Ok(());
    };
    if rec.phase != crate::state::Phase::Failed {
        return Ok(());
    }
    if !rec.ports.is_empty() {
        bail!(
            "allocation {:?} is failed but still holds ports {:?}; wait for the worker's reconciler to free them, then resend",
            ev.allocation_id,
            rec.ports.iter().map(|b| b.gateway_port).collect::<Vec<_>>()
        );
    }
    // Purged below the revision read, as the worker purges tombstones: no delete marker is left, and a write
    // made since survives.
    kv.stream
        .purge()
        .filter(format!("$KV.{bucket}.{key}"))
        .sequence(entry.revision + 1)
        .await
        .with_context(|| {
            format!(
                "clearing the failed record of allocation {:?}",
                ev.allocation_id
            )
        })?;
    Ok(())
}
