//! `itgctl watch`: replies as they arrive, as a table or JSON lines; the demo reads them the same way.

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use serde_json::Value;
use uuid::Uuid;

use super::Output;
use crate::contract;

pub(super) async fn replies(
    js: &jetstream::Context,
    rm: Option<&str>,
    all: bool,
) -> anyhow::Result<consumer::push::Ordered> {
    let stream = js
        .get_stream(contract::REPLIES_STREAM)
        .await
        .context("no ITG_REPLIES stream; start a worker first")?;
    Ok(stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: js_inbox(),
            filter_subject: rm.map_or_else(
                || contract::REPLIES_SUBJECTS.to_owned(),
                contract::replies_filter,
            ),
            deliver_policy: if all {
                consumer::DeliverPolicy::All
            } else {
                consumer::DeliverPolicy::New
            },
            ..Default::default()
        })
        .await?
        .messages()
        .await?)
}

fn js_inbox() -> String {
    format!("_INBOX.itgctl.{}", Uuid::new_v4().simple())
}

pub(super) fn print_reply(output: Output, subject: &str, payload: &[u8]) {
    match output {
        Output::Json => println!("{}", String::from_utf8_lossy(payload)),
        Output::Table => {
            let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
            let kind = subject.rsplit('.').next().unwrap_or("?");
            let detail = match kind {
                "ready" => v["proxies"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .map(|p| {
                                format!(
                                    "{}={}",
                                    p["name"].as_str().unwrap_or(""),
                                    p["address"].as_str().unwrap_or("")
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default(),
                "failed" => format!(
                    "{}: {}",
                    v["reason"].as_str().unwrap_or(""),
                    v["message"].as_str().unwrap_or("")
                ),
                "removed" => format!("released {}", v["released"]),
                _ => String::new(),
            };
            println!(
                "{:<8} {:<12} {:<40} {}",
                kind,
                v["resource_manager"].as_str().unwrap_or(""),
                v["allocation_id"].as_str().unwrap_or("-"),
                detail
            );
        }
    }
}
