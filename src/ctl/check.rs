//! `itgctl config check FILE`: the worker's config checked offline, by the same parser and rules the worker
//! applies at start, reaching no server, so a pipeline that holds the config can refuse a bad one before it
//! ships.

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use super::Output;
use crate::config::Config;

/// Checks `path`; exit 0 when the worker would accept it, 1 (with the key, value and rule) when not.
pub(super) fn run(output: Output, path: &Path) -> anyhow::Result<ExitCode> {
    let file = path.display().to_string();
    match Config::load(path) {
        Ok(cfg) => {
            let rms: Vec<_> = cfg
                .resource_managers
                .iter()
                .map(|rm| {
                    let range = rm.port_range();
                    json!({
                        "name": rm.name,
                        "gateways": rm.gateways().iter()
                            .map(|g| format!("{}/{}", g.gateway_namespace, g.gateway_name))
                            .collect::<Vec<_>>(),
                        "ports": format!("{}-{}", range.start(), range.end()),
                        "listener_capacity": rm.listener_capacity(),
                    })
                })
                .collect();
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "file": file, "valid": true, "resource_managers": rms })
                    )?
                ),
                Output::Table => {
                    println!(
                        "{file}: valid ({} resource managers)",
                        cfg.resource_managers.len()
                    );
                    for rm in rms {
                        println!(
                            "  {:<16} {} ports {} listeners {}",
                            rm["name"].as_str().unwrap_or(""),
                            rm["gateways"],
                            rm["ports"].as_str().unwrap_or(""),
                            rm["listener_capacity"]
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "file": file, "valid": false, "error": e.to_string() })
                    )?
                ),
                Output::Table => eprintln!("{file}: invalid: {e}"),
            }
            Ok(ExitCode::from(1))
        }
    }
}
