//! `itgctl allocations`: the records in the KV bucket, their phase and ports.

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt;

use super::Output;
use crate::names;

pub(super) async fn run(
    js: &jetstream::Context,
    output: Output,
    rm: Option<&str>,
    bucket: &str,
) -> anyhow::Result<()> {
    let kv = js
        .get_key_value(bucket)
        .await
        .with_context(|| format!("no KV bucket {bucket}; has a worker run?"))?;
    let prefix = rm.map_or_else(names::all_allocations_prefix, names::allocation_key_prefix);
    let mut keys = kv.keys().await?;
    let mut records = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k?;
        if !k.starts_with(&prefix) {
            continue;
        }
        if let Some(v) = kv.get(&k).await? {
            match crate::state::decode(&v) {
                Ok(r) => records.push(r),
                Err(e) => eprintln!("{k}: {e}"),
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
