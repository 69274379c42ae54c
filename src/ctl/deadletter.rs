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
        DeadLetterCommand::Resend { seq } => {
            let m = stream
                .get_raw_message(seq)
                .await
                .with_context(|| format!("no dead letter with sequence {seq}"))?;
            let subject = header(&m, contract::DEAD_LETTER_SUBJECT_HEADER);
            if contract::parse_event_subject(&subject).is_none() {
                bail!("dead letter {seq} names no event subject ({subject:?})");
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
