//! `itgctl replay`: serve a resource manager's events again from a sequence or a time.

use std::process::ExitCode;

use anyhow::{Context as _, bail};

use super::Output;

pub(super) async fn run(
    output: Output,
    config: &crate::config::Config,
    rm: &str,
    from_seq: Option<u64>,
    since: Option<jiff::Timestamp>,
) -> anyhow::Result<ExitCode> {
    let servers = crate::app::connect(config).await?;
    // A replay at a site reads the hub's stream: it needs the link, so the hub's side is laid out now.
    if let Some(hub) = &servers.hub {
        hub.lay_out().await?;
    }
    let c = servers
        .rms
        .iter()
        .find(|c| c.config.name == rm)
        .with_context(|| format!("resource manager {rm:?} is not in the config"))?;
    let handler = crate::worker::Handler::with_pool(
        crate::resource_manager::RmContext::new(&c.config),
        servers.store.clone(),
        c.pool.clone(),
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
    // At a site the events are read from the hub's ITG_EVENTS, which holds every event the master
    // published: the site's own stream may be new (its leaf lost its store) and still filling from it.
    let events = match &config.jetstream.hub_domain {
        Some(hub) => async_nats::jetstream::with_domain(servers.nats.clone(), hub),
        None => servers.js.clone(),
    };
    let summary = crate::replay::replay(
        &events,
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
