//! `itgctl`: publish started/ended events, watch replies, and run a demo lifecycle. Exit codes: 0 done,
//! 1 an error, 2 bad arguments (clap), 3 a demo reply did not arrive in time, 4 a replay could not serve
//! some events.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::contract::{self, EventKind};
use crate::nats;

/// Publishes events to, and reads replies from, the Internal Task Gateway's streams.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:
  itgctl publish started --rm k8s-west --allocation-id 6f1c.1 --namespace team-a \\
      --selector app=notebook --port jupyter=8888
  itgctl publish ended --rm k8s-west --allocation-id 6f1c.1
  itgctl watch --rm k8s-west --output json
  itgctl demo --rm local --namespace default"
)]
pub struct Args {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    nats_url: String,
    /// How to print replies.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// Reply output format.
#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Publish one event, as the master would.
    #[command(
        after_help = "Examples:\n  itgctl publish started --rm k8s-west --allocation-id 6f1c.1 --namespace team-a --selector app=nb --port jupyter=8888\n  itgctl publish ended --rm k8s-west --allocation-id 6f1c.1"
    )]
    #[command(subcommand)]
    Publish(Publish),
    /// Print replies as they arrive.
    #[command(
        after_help = "Examples:\n  itgctl watch --rm k8s-west\n  itgctl watch --all --count 10 --output json"
    )]
    Watch {
        /// Only this resource manager's replies.
        #[arg(long)]
        rm: Option<String>,
        /// Also print replies stored before the watch started.
        #[arg(long)]
        all: bool,
        /// Stop after this many replies.
        #[arg(long)]
        count: Option<usize>,
    },
    /// List allocations, their phase and ports, from the KV bucket.
    #[command(
        after_help = "Examples:\n  itgctl allocations --rm k8s-west\n  itgctl allocations --output json"
    )]
    Allocations {
        /// Only this resource manager's.
        #[arg(long)]
        rm: Option<String>,
        /// The KV bucket (jetstream.state_bucket).
        #[arg(long, default_value = "ITG_STATE")]
        bucket: String,
    },
    /// Show, per Gateway, the ports free in the range and the listener slots free under the cap.
    #[command(after_help = "Example:\n  itgctl capacity --config config.yaml --output json")]
    Capacity {
        /// The worker's config file: it names the Gateways and how to reach them.
        #[arg(long, env = "ITG_CONFIG")]
        config: std::path::PathBuf,
    },
    /// Serve a resource manager's events again from a sequence or a time; prints what was already right
    /// and what was repaired. Exit code 4 when some events could not be served.
    #[command(
        after_help = "Examples:\n  itgctl replay --config config.yaml --rm k8s-west --from-seq 1\n  itgctl replay --config config.yaml --rm k8s-west --since 2026-11-23T08:00:00Z --output json"
    )]
    Replay {
        /// The worker's config file.
        #[arg(long, env = "ITG_CONFIG")]
        config: std::path::PathBuf,
        /// The resource manager whose events to replay.
        #[arg(long)]
        rm: String,
        /// The first ITG_EVENTS sequence to replay.
        #[arg(long, conflicts_with = "since", required_unless_present = "since")]
        from_seq: Option<u64>,
        /// Replay events stored at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<jiff::Timestamp>,
    },
    /// Compare KV, the Gateways and the objects once; repair live allocations and remove orphans.
    #[command(
        after_help = "Examples:\n  itgctl reconcile --config config.yaml --dry-run\n  itgctl reconcile --config config.yaml"
    )]
    Reconcile {
        /// The worker's config file.
        #[arg(long, env = "ITG_CONFIG")]
        config: std::path::PathBuf,
        /// Only print what would be done.
        #[arg(long)]
        dry_run: bool,
        /// Leave alone what was touched more recently than this (default: the config's
        /// worker.reconcile_hold_off). Shorter than the config allows acts on what was just left behind:
        /// only with every worker of these resource managers stopped.
        #[arg(long, value_parser = humantime::parse_duration)]
        hold_off: Option<std::time::Duration>,
    },
    /// Inspect and send back events given up on after the consumer's maximum deliveries.
    #[command(
        after_help = "Examples:\n  itgctl deadletter list --rm k8s-west\n  itgctl deadletter resend --seq 42"
    )]
    #[command(subcommand)]
    Deadletter(DeadLetterCommand),
    /// Run a few task lifecycles end to end: started, wait for ready, ended, wait for removed.
    #[command(after_help = "Example:\n  itgctl demo --rm local --namespace default --tasks 3")]
    Demo {
        #[arg(long)]
        rm: String,
        #[arg(long, default_value = "default")]
        namespace: String,
        /// How many tasks to start.
        #[arg(long, default_value_t = 3)]
        tasks: usize,
        /// Seconds to wait for each reply.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// A shell command to run once every task is exposed, before they are ended (to look around).
        #[arg(long)]
        between: Option<String>,
    },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// List the dead letters, oldest first, with why each was given up on.
    List {
        /// Only this resource manager's.
        #[arg(long)]
        rm: Option<String>,
    },
    /// Publish a dead letter's event again to its original subject, then delete the dead letter.
    Resend {
        /// The dead letter's sequence in ITG_DEADLETTER (from `itgctl deadletter list`).
        #[arg(long)]
        seq: u64,
    },
}

#[derive(Subcommand)]
enum Publish {
    /// A task started: expose its proxy ports.
    Started {
        #[command(flatten)]
        common: Common,
        /// Namespace of the task's pods.
        #[arg(long)]
        namespace: String,
        /// Pod label `key=value`; repeat for more.
        #[arg(long = "selector", required = true)]
        selector: Vec<String>,
        /// Proxy port `name=port`; repeat for more.
        #[arg(long = "port", required = true)]
        ports: Vec<String>,
    },
    /// The task ended: remove everything made for it.
    Ended {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(ClapArgs)]
struct Common {
    /// Resource manager (subject token).
    #[arg(long)]
    rm: String,
    /// Allocation id.
    #[arg(long)]
    allocation_id: String,
    /// Event id; a new UUID when absent. Reuse one to test deduplication.
    #[arg(long)]
    event_id: Option<Uuid>,
}

fn pairs(items: &[String], what: &str) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("{what} {s:?} must be written key=value"))
        })
        .collect()
}

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

async fn publish(
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

async fn replies(
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
                |rm| format!("itg.replies.{rm}.>"),
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

fn print_reply(output: Output, subject: &str, payload: &[u8]) {
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

async fn allocations(
    js: &jetstream::Context,
    output: Output,
    rm: Option<&str>,
    bucket: &str,
) -> anyhow::Result<()> {
    let kv = js
        .get_key_value(bucket)
        .await
        .with_context(|| format!("no KV bucket {bucket}; has a worker run?"))?;
    let prefix = rm.map_or_else(|| "alloc.".to_owned(), crate::names::allocation_key_prefix);
    let mut keys = kv.keys().await?;
    let mut records = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k?;
        if !k.starts_with(&prefix) {
            continue;
        }
        if let Some(v) = kv.get(&k).await? {
            match serde_json::from_slice::<crate::state::Record>(&v) {
                Ok(r) => records.push(r),
                Err(e) => eprintln!("{k}: not a record ({e})"),
            }
        }
    }
    records.sort_by(|a, b| {
        (&a.resource_manager, &a.allocation_id).cmp(&(&b.resource_manager, &b.allocation_id))
    });
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&records)?),
        Output::Table => {
            println!(
                "{:<12} {:<40} {:<9} {:<12} PORTS",
                "RM", "ALLOCATION", "PHASE", "NAMESPACE"
            );
            for r in &records {
                let ports: Vec<String> = r
                    .ports
                    .iter()
                    .map(|b| format!("{}={}", b.name, b.gateway_port))
                    .collect();
                let phase = serde_json::to_value(r.phase)?
                    .as_str()
                    .unwrap_or("?")
                    .to_owned();
                let ns = r.spec.as_ref().map_or("-", |s| s.namespace.as_str());
                println!(
                    "{:<12} {:<40} {:<9} {:<12} {}",
                    r.resource_manager,
                    r.allocation_id,
                    phase,
                    ns,
                    ports.join(" ")
                );
            }
        }
    }
    Ok(())
}

async fn capacity(output: Output, path: &std::path::Path) -> anyhow::Result<()> {
    let config = crate::config::Config::load(path)?;
    let servers = crate::app::connect(&config).await?;
    let rows = crate::app::capacity(&servers).await?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => {
            println!(
                "{:<12} {:<28} {:<12} {:>5} {:>8} {:>5} FOREIGN",
                "RM", "GATEWAY", "RANGE", "FREE", "CLAIMED", "SLOTS"
            );
            for c in rows {
                let slots = format!(
                    "{}/{}",
                    c.listener_limit.saturating_sub(c.listeners),
                    c.listener_limit
                );
                println!(
                    "{:<12} {:<28} {:<12} {:>5} {:>8} {:>5} {:?}",
                    c.resource_manager,
                    c.gateway,
                    c.range,
                    c.free,
                    c.claimed,
                    slots,
                    c.foreign_ports
                );
            }
        }
    }
    Ok(())
}

fn header(m: &async_nats::jetstream::message::StreamMessage, name: &str) -> String {
    m.headers
        .get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

async fn dead_letters(
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
                    .is_some_and(|rm| !m.subject.starts_with(&format!("itg.deadletter.{rm}.")))
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
            headers.insert("Nats-Msg-Id", format!("resend-{seq}").as_str());
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

async fn replay(
    output: Output,
    path: &std::path::Path,
    rm: &str,
    from_seq: Option<u64>,
    since: Option<jiff::Timestamp>,
) -> anyhow::Result<ExitCode> {
    let config = crate::config::Config::load(path)?;
    let servers = crate::app::connect(&config).await?;
    let c = servers
        .rms
        .iter()
        .find(|c| c.config.name == rm)
        .with_context(|| format!("resource manager {rm:?} is not in {}", path.display()))?;
    let handler = crate::worker::Handler::new(
        crate::resource_manager::RmContext::new(&c.config),
        servers.store.clone(),
        c.gateway.clone(),
        config.worker.clone(),
    );
    let replier = crate::nats::JetStreamReplier::new(servers.js.clone());
    let from = match (from_seq, since) {
        (Some(s), _) => crate::replay::From::Sequence(s),
        (None, Some(t)) => crate::replay::From::Since(t),
        (None, None) => bail!("give --from-seq or --since"),
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} events, {per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let summary = crate::replay::replay(
        &servers.js,
        &handler,
        &servers.store,
        &replier,
        from,
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .await?;
    bar.finish_and_clear();
    match output {
        Output::Json => println!("{}", serde_json::to_string(&summary)?),
        Output::Table => println!(
            "events seen {}, already right {}, repaired {}, failed {}",
            summary.seen, summary.already_right, summary.repaired, summary.failed
        ),
    }
    Ok(if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(4)
    })
}

/// Runs one `itgctl` command.
///
/// # Errors
/// NATS unreachable, a stream missing, or a malformed argument.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Command::Capacity { config } = &args.command {
        capacity(args.output, config).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Replay {
        config,
        rm,
        from_seq,
        since,
    } = &args.command
    {
        return replay(args.output, config, rm, *from_seq, *since).await;
    }
    if let Command::Reconcile {
        config,
        dry_run,
        hold_off,
    } = &args.command
    {
        let cfg = crate::config::Config::load(config)?;
        let servers = crate::app::connect(&cfg).await?;
        let hold_off = hold_off.unwrap_or(cfg.worker.reconcile_hold_off.0);
        let done = crate::app::reconcile_once_with(&cfg, &servers, *dry_run, hold_off)
            .await
            .map_err(anyhow::Error::msg)?;
        match args.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&done)?),
            Output::Table => {
                for (rm, actions) in done {
                    for a in actions {
                        println!(
                            "{rm:<12} {}{}",
                            if *dry_run { "would " } else { "" },
                            serde_json::to_string(&a)?
                        );
                    }
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let addrs = nats::server_addrs(&args.nats_url).map_err(anyhow::Error::msg)?;
    let client = async_nats::connect(addrs)
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))?;
    let js = jetstream::new(client);
    match args.command {
        Command::Publish(Publish::Started {
            common,
            namespace,
            selector,
            ports,
        }) => {
            let selector: BTreeMap<String, String> =
                pairs(&selector, "--selector")?.into_iter().collect();
            let ports = pairs(&ports, "--port")?
                .into_iter()
                .map(|(n, p)| {
                    Ok((
                        n,
                        p.parse::<u16>()
                            .with_context(|| format!("--port {p:?} is not a port number"))?,
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let id = common.event_id.unwrap_or_else(Uuid::new_v4);
            let body = started_payload(id, &common.allocation_id, &namespace, &selector, &ports);
            let seq = publish(&js, &common.rm, EventKind::Started, id, &body).await?;
            println!("published started {id} as sequence {seq}");
        }
        Command::Publish(Publish::Ended { common }) => {
            let id = common.event_id.unwrap_or_else(Uuid::new_v4);
            let seq = publish(
                &js,
                &common.rm,
                EventKind::Ended,
                id,
                &ended_payload(id, &common.allocation_id),
            )
            .await?;
            println!("published ended {id} as sequence {seq}");
        }
        Command::Allocations { rm, bucket } => {
            allocations(&js, args.output, rm.as_deref(), &bucket).await?
        }
        Command::Capacity { .. } | Command::Reconcile { .. } | Command::Replay { .. } => {}
        Command::Deadletter(cmd) => dead_letters(&js, args.output, cmd).await?,
        Command::Watch { rm, all, count } => {
            let mut msgs = replies(&js, rm.as_deref(), all).await?;
            let mut seen = 0;
            while let Some(m) = msgs.next().await {
                let m = m?;
                print_reply(args.output, &m.subject, &m.payload);
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
        }
        Command::Demo {
            rm,
            namespace,
            tasks,
            timeout,
            between,
        } => {
            let d = Demo {
                rm: &rm,
                ns: &namespace,
                tasks,
                timeout: Duration::from_secs(timeout),
                between,
            };
            return demo(&js, args.output, d).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `itgctl demo` runs.
struct Demo<'a> {
    rm: &'a str,
    ns: &'a str,
    tasks: usize,
    timeout: Duration,
    between: Option<String>,
}

async fn demo(js: &jetstream::Context, output: Output, d: Demo<'_>) -> anyhow::Result<ExitCode> {
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
