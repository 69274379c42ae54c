//! Entry points of the binaries, kept here so `main` stays a screenful.

use std::path::Path;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::app;
use crate::config::{Config, LogFormat};

/// Sets up logging: `RUST_LOG` filters, default `info`.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Loads the config, connects, reports, then serves until SIGTERM or SIGINT (a second signal aborts).
///
/// # Errors
/// The config or a server could not be used.
pub async fn worker_main(config_path: &Path, check_only: bool) -> anyhow::Result<()> {
    crate::crashpoint::check()?;
    let config = Config::load(config_path)?;
    init_logging(config.log_format);
    let servers = app::connect(&config).await?;
    let report = app::report(&config, &servers).await?;
    print!("{report}");
    if check_only {
        return Ok(());
    }
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: no new events are pulled; events in flight finish");
        let _ = tx.send(true);
        wait_for_signal().await;
        tracing::warn!("second signal: aborting");
        std::process::exit(130);
    });
    app::run(config, servers, rx)
        .await
        .context("serving events")?;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
