//! `itgctl demo`: a few task lifecycles end to end: started, wait for ready, ended, wait for removed.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use async_nats::jetstream;
use futures::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
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
    /// Connect to each address of a `ready` and time its first byte from the `started`.
    pub(super) first_byte: bool,
}

/// How long each task took: `started` published -> `ready` received, and -> the first byte of each address.
struct Timing {
    ready: Duration,
    first_bytes: JoinHandle<Vec<(String, Option<Duration>)>>,
}

/// Sends a line to each address until one answers, and returns when each first byte came, counted from
/// `started`; `None` for an address that gave no byte within `timeout`.
async fn first_bytes(
    proxies: Vec<(String, String)>,
    started: Instant,
    timeout: Duration,
) -> Vec<(String, Option<Duration>)> {
    let probes = proxies.into_iter().map(|(name, address)| async move {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let attempt = async {
                let mut s = tokio::net::TcpStream::connect(&address).await?;
                s.write_all(format!("hello {name}\n").as_bytes()).await?;
                let mut byte = [0u8; 1];
                s.read_exact(&mut byte).await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
                return (name, Some(started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (name, None)
    });
    futures::future::join_all(probes).await
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
        first_byte,
    } = d;
    let mut started_at: HashMap<String, Instant> = HashMap::new();
    let mut timings: BTreeMap<usize, (String, Timing)> = BTreeMap::new();
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
            if kind == EventKind::Started {
                started_at.insert(a.clone(), Instant::now());
            }
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
                let alloc = v["allocation_id"].as_str().unwrap_or_default();
                if let (Some(i), Some(&t0)) = (
                    allocs.iter().position(|a| a == alloc),
                    started_at.get(alloc).filter(|_| want == "ready"),
                ) {
                    let proxies = if first_byte {
                        super::ready_addresses(&v)
                            .into_iter()
                            .map(|(name, host, port)| {
                                (name, crate::probe::socket_address(&host, port))
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let first_bytes = tokio::spawn(first_bytes(proxies, t0, timeout));
                    let timing = Timing {
                        ready: t0.elapsed(),
                        first_bytes,
                    };
                    timings.entry(i).or_insert((alloc.to_owned(), timing));
                }
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
            print_timings(std::mem::take(&mut timings), first_byte).await;
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

/// One line per task: the time from its `started` to its `ready` and to each address's first byte.
async fn print_timings(timings: BTreeMap<usize, (String, Timing)>, first_byte: bool) {
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    for (i, (alloc, t)) in timings {
        let mut line = format!("task {i} ({alloc}): started -> ready {}", ms(t.ready));
        if first_byte {
            let bytes = t.first_bytes.await.unwrap_or_default();
            let each: Vec<String> = bytes
                .into_iter()
                .map(|(name, d)| format!("{name} {}", d.map_or("no byte".to_owned(), ms)))
                .collect();
            line.push_str(&format!(", started -> first byte: {}", each.join(", ")));
        }
        eprintln!("{line}");
    }
}
