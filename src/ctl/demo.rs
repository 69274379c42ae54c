//! `itgctl demo`: a few task lifecycles end to end: started, wait for ready, ended, wait for removed.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use async_nats::jetstream;
use futures::StreamExt;
use serde_json::Value;
use uuid::Uuid;

use super::Output;
use super::publish::{ended_payload, publish, started_payload};
use super::watch::{print_reply, replies};
use crate::contract::EventKind;

/// What `itgctl demo` runs.
pub(super) struct Demo<'a> {
    pub(super) rm: &'a str,
    pub(super) ns: &'a str,
    pub(super) tasks: usize,
    pub(super) timeout: Duration,
    pub(super) between: Option<String>,
}

pub(super) async fn run(
    js: &jetstream::Context,
    output: Output,
    d: Demo<'_>,
) -> anyhow::Result<ExitCode> {
    let Demo {
        rm,
        ns,
        tasks,
        timeout,
        between,
    } = d;
    let mut msgs = replies(js, Some(rm), false).await?;
    let allocs: Vec<String> = (0..tasks)
        .map(|_| format!("{}.1", Uuid::new_v4()))
        .collect();
    for (kind, want) in [(EventKind::Started, "ready"), (EventKind::Ended, "removed")] {
        for (i, a) in allocs.iter().enumerate() {
            let id = Uuid::new_v4();
            let body = match kind {
                EventKind::Started => {
                    let sel = BTreeMap::from([(
                        "determined.ai/allocation".to_owned(),
                        format!("demo-{i}"),
                    )]);
                    started_payload(
                        id,
                        a,
                        ns,
                        &sel,
                        &[("jupyter".into(), 8888), ("tensorboard".into(), 6006)],
                    )
                }
                EventKind::Ended => ended_payload(id, a),
            };
            publish(js, rm, kind, id, &body).await?;
            eprintln!("published {} for {a}", kind.as_str());
        }
        let mut pending: Vec<&String> = allocs.iter().collect();
        while !pending.is_empty() {
            let m = match tokio::time::timeout(timeout, msgs.next()).await {
                Ok(Some(m)) => m?,
                Ok(None) => bail!("the reply stream closed"),
                Err(_) => {
                    eprintln!(
                        "no {want} reply within {timeout:?} for {} allocation(s); is the worker running?",
                        pending.len()
                    );
                    return Ok(ExitCode::from(3));
                }
            };
            print_reply(output, &m.subject, &m.payload);
            let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            if m.subject.ends_with(want) {
                pending.retain(|a| Some(a.as_str()) != v["allocation_id"].as_str());
            } else if m.subject.ends_with("failed")
                && pending
                    .iter()
                    .any(|a| Some(a.as_str()) == v["allocation_id"].as_str())
            {
                eprintln!("an allocation failed; see the reply above");
                return Ok(ExitCode::from(3));
            }
        }
        if kind == EventKind::Started {
            eprintln!("all {tasks} task(s) exposed");
            if let Some(cmd) = &between {
                let status = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .status()
                    .await?;
                if !status.success() {
                    eprintln!("`{cmd}` exited with {status}");
                }
            }
            eprintln!("ending them");
        }
    }
    eprintln!("all {tasks} task(s) removed");
    Ok(ExitCode::SUCCESS)
}
