//! `itgctl`: publish started/ended events, watch replies, inspect allocations, capacity and dead letters,
//! replay, reconcile, and run a demo lifecycle; one file per subcommand. Exit codes: 0 done, 1 an error,
//! 2 bad arguments (clap), 3 a demo reply did not arrive in time, 4 a replay could not serve some events.

mod allocations;
mod capacity;
mod check;
mod connect;
mod deadletter;
mod demo;
mod describe;
mod publish;
mod reconcile;
mod replay;
mod watch;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use uuid::Uuid;

use crate::contract::EventKind;

pub use connect::NatsArgs;
pub use publish::{ended_payload, started_payload};

/// Publishes events to, and reads replies from, the Internal Task Gateway's streams.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:
  itgctl publish started --rm k8s-west --allocation-id 6f1c.1 --namespace team-a \\
      --selector app=notebook --port jupyter=8888
  itgctl publish ended --rm k8s-west --allocation-id 6f1c.1
  itgctl watch --rm k8s-west --output json
  itgctl demo --rm local --namespace default
  itgctl --config /etc/itg/config.yaml allocations --rm k8s-west

Every command connects as the worker does: --config reuses the worker's config file (its nats and
jetstream sections), and the --nats-* flags (or NATS_URL, NATS_USER, NATS_PASSWORD, NATS_TOKEN,
NATS_NKEY, NATS_CREDS, NATS_CA, NATS_CERT, NATS_KEY) give or override each option."
)]
pub struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    /// How to print replies.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// Reply output format.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Output {
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
        /// The KV bucket [default: the config's jetstream.state_bucket, else ITG_STATE].
        #[arg(long)]
        bucket: Option<String>,
    },
    /// Why an allocation is (or is not) ready, in one view.
    ///
    /// Its KV record and port claims, its Kubernetes objects with their conditions (with --config), what
    /// the data plane answers on each address now, and the events, replies and dead letters the streams
    /// hold for it, ending with a verdict. Changes nothing.
    #[command(
        visible_alias = "inspect",
        after_help = "Examples:\n  itgctl describe --config config.yaml 6f1c.1\n  itgctl describe --rm k8s-west 6f1c.1 --output json"
    )]
    Describe {
        /// The allocation id, as the master sent it.
        allocation_id: String,
        /// Its resource manager [default: the config's only one].
        #[arg(long)]
        rm: Option<String>,
    },
    /// Show, per Gateway, the ports free in the range and the listener slots free under the cap.
    /// Needs --config: it names the Gateways and how to reach them.
    #[command(after_help = "Example:\n  itgctl capacity --config config.yaml --output json")]
    Capacity,
    /// Serve a resource manager's events again from a sequence or a time; prints what was already right
    /// and what was repaired. Exit code 4 when some events could not be served.
    #[command(
        after_help = "Examples:\n  itgctl replay --config config.yaml --rm k8s-west --from-seq 1\n  itgctl replay --config config.yaml --rm k8s-west --since 2026-11-23T08:00:00Z --output json"
    )]
    Replay {
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
    /// Work with the worker's config file without any server.
    #[command(subcommand)]
    Config(ConfigCommand),
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
        /// Connect to every address of each ready and print, per task, the time from its started to
        /// the first byte that came back (a backend must answer there).
        #[arg(long)]
        first_byte: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a worker config file offline, with the worker's own parser and rules; reaches no server.
    /// Exit code 1 names the key, the value and the rule it breaks.
    #[command(
        after_help = "Examples:\n  itgctl config check deploy/config.yaml\n  itgctl config check config.yaml --output json"
    )]
    Check {
        /// The config file [default: --config, or ITG_CONFIG].
        file: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum DeadLetterCommand {
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
        /// The KV bucket (jetstream.state_bucket; default: the config's, else ITG_STATE): a started's
        /// `failed` tombstone there is cleared first, so the event is served afresh.
        #[arg(long)]
        bucket: Option<String>,
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

/// Runs one `itgctl` command.
///
/// # Errors
/// NATS unreachable, a stream missing, or a malformed argument.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match &args.command {
        Command::Config(ConfigCommand::Check { file }) => {
            let Some(path) = file.as_deref().or(args.nats.config.as_deref()) else {
                anyhow::bail!("itgctl config check needs a file: itgctl config check FILE");
            };
            return check::run(args.output, path);
        }
        Command::Capacity => {
            capacity::run(args.output, &args.nats.required_config("capacity")?).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Replay {
            rm,
            from_seq,
            since,
        } => {
            let cfg = args.nats.required_config("replay")?;
            return replay::run(args.output, &cfg, rm, *from_seq, *since).await;
        }
        Command::Reconcile { dry_run, hold_off } => {
            let cfg = args.nats.required_config("reconcile")?;
            reconcile::run(args.output, &cfg, *dry_run, *hold_off).await?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let connected = args.nats.jetstream().await?;
    let js = connected.js.clone();
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
            let body =
                publish::started_payload(id, &common.allocation_id, &namespace, &selector, &ports);
            let seq = publish::publish(&js, &common.rm, EventKind::Started, id, &body).await?;
            println!("published started {id} as sequence {seq}");
        }
        Command::Publish(Publish::Ended { common }) => {
            let id = common.event_id.unwrap_or_else(Uuid::new_v4);
            let seq = publish::publish(
                &js,
                &common.rm,
                EventKind::Ended,
                id,
                &publish::ended_payload(id, &common.allocation_id),
            )
            .await?;
            println!("published ended {id} as sequence {seq}");
        }
        Command::Describe { allocation_id, rm } => {
            describe::run(&connected, args.output, rm.as_deref(), &allocation_id).await?
        }
        Command::Allocations { rm, bucket } => {
            let bucket = bucket.unwrap_or(connected.bucket);
            allocations::run(&js, args.output, rm.as_deref(), &bucket).await?
        }
        Command::Capacity
        | Command::Reconcile { .. }
        | Command::Replay { .. }
        | Command::Config(_) => {}
        Command::Deadletter(mut cmd) => {
            if let DeadLetterCommand::Resend { bucket, .. } = &mut cmd
                && bucket.is_none()
            {
                *bucket = Some(connected.bucket);
            }
            deadletter::run(&js, args.output, cmd).await?
        }
        Command::Watch { rm, all, count } => {
            let mut msgs = watch::replies(&js, rm.as_deref(), all).await?;
            let mut seen = 0;
            while let Some(m) = msgs.next().await {
                let m = m?;
                watch::print_reply(args.output, &m.subject, &m.payload);
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
            first_byte,
        } => {
            let d = demo::Demo {
                rm: &rm,
                ns: &namespace,
                tasks,
                timeout: Duration::from_secs(timeout),
                between,
                first_byte,
            };
            return demo::run(&js, args.output, d).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Each proxy of a `ready` reply's body, read as the contract's [`Ready`](crate::contract::Ready): its
/// name, host and Gateway port. None when the body is not a `ready` this build reads.
fn ready_addresses(body: &serde_json::Value) -> Vec<(String, String, u16)> {
    let Ok(ready) = serde_json::from_value::<crate::contract::Ready>(body.clone()) else {
        return Vec::new();
    };
    ready
        .proxies
        .into_iter()
        .filter_map(|p| {
            let host = p.address.strip_suffix(&format!(":{}", p.gateway_port))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            Some((p.name, host, p.gateway_port))
        })
        .collect()
}
