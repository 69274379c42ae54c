//! `itgctl reconcile`: one pass over every resource manager; with `--dry-run`, only what it would do.

use std::time::Duration;

use super::Output;

/// Runs one pass and prints its actions.
pub(super) async fn run(
    output: Output,
    cfg: &crate::config::Config,
    dry_run: bool,
    hold_off: Option<Duration>,
) -> anyhow::Result<()> {
    let servers = crate::app::connect(cfg).await?;
    let hold_off = hold_off.unwrap_or(cfg.worker.reconcile_hold_off.0);
    let done = crate::app::reconcile_once_with(cfg, &servers, dry_run, hold_off)
        .await
        .map_err(anyhow::Error::msg)?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&done)?),
        Output::Table => {
            for (rm, actions) in done {
                for a in actions {
                    println!(
                        "{rm:<12} {}{}",
                        if dry_run { "would " } else { "" },
                        serde_json::to_string(&a)?
                    );
                }
            }
        }
    }
    Ok(())
}
