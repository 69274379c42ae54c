//! `itg-worker --config <file>`: serves task-started and task-ended events. See the README.

use std::path::PathBuf;

use clap::Parser;

/// Exposes tasks running inside Kubernetes clusters through the Gateway API, driven by NATS JetStream events.
#[derive(Parser)]
#[command(
    version,
    after_help = "Example:\n  itg-worker --config deploy/compose/config.yaml\n  itg-worker --config deploy/compose/config.yaml --check"
)]
struct Args {
    /// The YAML (or JSON) config file.
    #[arg(long, short, env = "ITG_CONFIG")]
    config: PathBuf,
    /// Check the servers and the Gateways, print what was found, and exit.
    #[arg(long)]
    check: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match itg::cli::worker_main(&args.config, args.check).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("itg-worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
