//! `itgctl capacity`: per Gateway, the ports free in the range and the listener slots free under the cap.

use super::Output;

pub(super) async fn run(output: Output, config: &crate::config::Config) -> anyhow::Result<()> {
    let servers = crate::app::connect(config).await?;
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
