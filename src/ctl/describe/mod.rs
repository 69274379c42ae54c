//! `itgctl describe`: why an allocation is (or is not) ready, in one view. It puts together the KV record
//! and the port claims, the Kubernetes objects with their conditions, what the data plane answers on each
//! address now, and the events, replies and dead letters the streams hold for the allocation, and ends
//! with a verdict. Read-only: it changes nothing anywhere.

mod kube;
mod streams;

use anyhow::Context as _;
use futures::StreamExt;
use serde_json::{Value, json};

use super::Output;
use super::connect::Connected;
use crate::contract::GatewayRef;
use crate::names;
use crate::resource_manager::RmContext;
use crate::state::{Phase, Record};

/// Describes `allocation_id` of `rm` (or of the config's only resource manager).
///
/// # Errors
/// No resource manager could be chosen, or NATS could not be read.
pub(super) async fn run(
    conn: &Connected,
    output: Output,
    rm: Option<&str>,
    allocation_id: &str,
) -> anyhow::Result<()> {
    let rm_cfg = conn.config.as_ref().and_then(|c| match rm {
        Some(rm) => c.resource_managers.iter().find(|r| r.name == rm),
        None if c.resource_managers.len() == 1 => c.resource_managers.first(),
        None => None,
    });
    let rm = match (rm, rm_cfg) {
        (Some(rm), _) => rm.to_owned(),
        (None, Some(c)) => c.name.clone(),
        (None, None) => anyhow::bail!(
            "which resource manager? pass --rm (or --config with a single resource manager)"
        ),
    };
    let mut notes = Vec::new();
    if conn.config.is_some() && rm_cfg.is_none() {
        notes.push(format!(
            "resource manager {rm} is not in the config: Kubernetes objects not read"
        ));
    }
    let key = names::allocation_key(&rm, allocation_id);
    let kv = conn
        .js
        .get_key_value(&conn.bucket)
        .await
        .with_context(|| format!("no KV bucket {}; has a worker run here?", conn.bucket))?;
    let (record_view, record) = read_record(&kv, &key, &mut notes).await?;
    let [events, replies, dead_letters] =
        streams::all(&conn.js, &rm, allocation_id, &mut notes).await?;
    let last_ready = replies.iter().rev().find(|r| r["kind"] == "ready");

    // The Gateway that holds the ports: the record's, else the resource manager's own, else the reply's.
    let ctx = rm_cfg.map(RmContext::new);
    let target = ctx.as_ref().and_then(|c| {
        let at = c.placed(record.as_ref().and_then(|r| r.gateway.as_ref()))?;
        c.pool.get(at).cloned()
    });
    let gateway: Option<GatewayRef> = record
        .as_ref()
        .and_then(|r| r.gateway.clone())
        .or_else(|| target.as_ref().map(|t| t.gateway.clone()))
        .or_else(|| {
            last_ready.and_then(|r| serde_json::from_value(r["body"]["gateway"].clone()).ok())
        });
    let claims = claims(
        &kv,
        &rm,
        &key,
        record.as_ref(),
        gateway.as_ref(),
        &mut notes,
    )
    .await?;

    let kubernetes = match (rm_cfg, &record, &gateway) {
        (Some(c), Some(r), Some(g)) => kube::objects(c, r, g).await,
        (None, _, _) => json!({ "skipped": "needs --config: the resource manager's kubeconfig" }),
        _ => json!({ "skipped": "no record: nothing was made for this allocation" }),
    };
    let looks = kube::probe(addresses(record.as_ref(), target.as_ref(), last_ready)).await;
    let data_plane: Vec<Value> = looks.iter().map(kube::Look::view).collect();
    let verdict = verdict(
        record.as_ref(),
        &record_view,
        &kubernetes,
        &looks,
        &events,
        &dead_letters,
    );
    let view = json!({
        "resource_manager": rm,
        "allocation_id": allocation_id,
        "verdict": verdict,
        "record": record_view,
        "claims": claims,
        "kubernetes": kubernetes,
        "data_plane": data_plane,
        "events": events,
        "replies": replies,
        "dead_letters": dead_letters,
        "notes": notes,
    });
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&view)?),
        Output::Table => print_table(&view),
    }
    Ok(())
}

/// The record as stored (key, revision, version, the JSON itself) and, when this build can read it, the
/// record.
async fn read_record(
    kv: &async_nats::jetstream::kv::Store,
    key: &str,
    notes: &mut Vec<String>,
) -> anyhow::Result<(Value, Option<Record>)> {
    let Some(entry) = kv.entry(key).await? else {
        return Ok((json!({ "key": key, "found": false }), None));
    };
    if entry.operation != async_nats::jetstream::kv::Operation::Put {
        return Ok((
            json!({ "key": key, "found": false, "deleted_at_revision": entry.revision }),
            None,
        ));
    }
    let raw: Value = serde_json::from_slice(&entry.value).unwrap_or(Value::Null);
    let record = match crate::state::decode(&entry.value) {
        Ok(r) => Some(r),
        Err(e) => {
            notes.push(format!("record {key}: {e}"));
            None
        }
    };
    Ok((
        json!({
            "key": key,
            "found": true,
            "revision": entry.revision,
            "written": jiff::Timestamp::from_second(entry.created.unix_timestamp())
                .map(|t| t.to_string()).unwrap_or_default(),
            "value": raw,
        }),
        record,
    ))
}

/// The port claims that name this allocation, and a note for each recorded port whose claim is missing or
/// held by another.
async fn claims(
    kv: &async_nats::jetstream::kv::Store,
    rm: &str,
    key: &str,
    record: Option<&Record>,
    gateway: Option<&GatewayRef>,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Value>> {
    let prefix = format!("port.{rm}.");
    let mut keys = kv.keys().await?;
    let mut out = Vec::new();
    let mut holders = std::collections::BTreeMap::new();
    while let Some(k) = keys.next().await {
        let k = k?;
        if !k.starts_with(&prefix) {
            continue;
        }
        let Some(v) = kv.get(&k).await? else { continue };
        let claim: Value = serde_json::from_slice(&v).unwrap_or(Value::Null);
        let holder = claim["allocation"].as_str().unwrap_or("").to_owned();
        if holder == key {
            out.push(
                json!({ "key": k, "proxy": claim["proxy"], "claimed_at": claim["claimed_at"] }),
            );
        }
        holders.insert(k, holder);
    }
    if let (Some(r), Some(g)) = (record, gateway) {
        for b in &r.ports {
            let pk = names::port_key(rm, &g.namespace, &g.name, b.gateway_port);
            match holders.get(&pk) {
                Some(h) if h == key => {}
                Some(h) => notes.push(format!(
                    "port {} ({}) is in the record but its claim {pk} is held by {h}",
                    b.gateway_port, b.name
                )),
                None => notes.push(format!(
                    "port {} ({}) is in the record but not claimed ({pk} is free)",
                    b.gateway_port, b.name
                )),
            }
        }
    }
    Ok(out)
}

/// Where to connect for each bound port: the configured Gateway's probe address, else the addresses of
/// the last `ready`.
fn addresses(
    record: Option<&Record>,
    target: Option<&crate::resource_manager::GatewayTarget>,
    last_ready: Option<&Value>,
) -> Vec<(String, String, u16)> {
    if let (Some(r), Some(t)) = (record, target) {
        return r
            .ports
            .iter()
            .map(|b| (b.name.clone(), t.probe_host.clone(), b.gateway_port))
            .collect();
    }
    let proxies = last_ready
        .and_then(|r| r["body"]["proxies"].as_array().cloned())
        .unwrap_or_default();
    proxies
        .iter()
        .filter_map(|p| {
            let addr = p["address"].as_str()?;
            let (host, port) = addr.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some((
                p["name"].as_str()?.to_owned(),
                host.to_owned(),
                port.parse().ok()?,
            ))
        })
        .collect()
}

/// One sentence: what the allocation is waiting on, or why it failed.
fn verdict(
    record: Option<&Record>,
    record_view: &Value,
    kubernetes: &Value,
    looks: &[kube::Look],
    events: &[Value],
    dead_letters: &[Value],
) -> String {
    // Proof from the data plane: at least one address, and every one served.
    let unproven: Vec<String> = if looks.is_empty() {
        vec!["no address to connect to (pass --config for the Gateway's probe address)".into()]
    } else {
        looks.iter().filter_map(kube::Look::unproven).collect()
    };
    let Some(r) = record else {
        if record_view["found"] == true {
            return "the record cannot be read by this itgctl (see notes): leave it to the workers that wrote it".into();
        }
        if let Some(d) = dead_letters.last() {
            return format!(
                "given up on: dead letter {} ({})",
                d["sequence"],
                d["error"].as_str().unwrap_or("")
            );
        }
        return if events.is_empty() {
            "no record and no event: no started for this allocation reached this resource manager (check the id and --rm)".into()
        } else {
            "no record yet: its events are stored but no worker has served them (is a worker of this resource manager running?)".into()
        };
    };
    match r.phase {
        Phase::Ready if unproven.is_empty() => "ready".into(),
        Phase::Ready => format!(
            "ready per the record; not proven from here: {}",
            unproven.join("; ")
        ),
        Phase::Failed => r.failure.as_ref().map_or_else(
            || "failed".into(),
            |f| format!("failed ({}): {}", f.reason, f.message),
        ),
        Phase::Ending => "ending: its objects and ports are being removed".into(),
        Phase::Removed => {
            "removed: nothing of it exists, and a later started is answered failed".into()
        }
        Phase::Exposing => {
            let mut waits = Vec::new();
            let unbound: Vec<&str> = r.unbound().iter().map(|p| p.name.as_str()).collect();
            if !unbound.is_empty() {
                waits.push(format!("a free port for {} (capacity)", unbound.join(", ")));
            }
            for p in kubernetes["ports"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap_or("");
                if p["listener"]["found"] == false {
                    waits.push(format!("{name}: its listener to be applied"));
                } else if !kube::summary(&p["listener"]["conditions"]).contains("Programmed=True") {
                    waits.push(format!(
                        "{name}: the controller to report its listener programmed (it reports {})",
                        kube::summary(&p["listener"]["conditions"])
                    ));
                }
                if p["service"]["found"] == false {
                    waits.push(format!("{name}: its Service to be applied"));
                } else if p["ready_endpoints"] == 0 {
                    waits.push(format!("{name}: a ready pod behind its Service (the task's pods match the selector and are ready)"));
                }
                let route = kube::summary(&p["route"]["conditions"]);
                if p["route"]["found"] == false {
                    waits.push(format!("{name}: its TCPRoute to be applied"));
                } else if !(route.contains("Accepted=True") && route.contains("ResolvedRefs=True"))
                {
                    waits.push(format!(
                        "{name}: the controller to report its TCPRoute accepted (it reports {route})"
                    ));
                }
            }
            if !waits.is_empty() {
                let data: Vec<String> = looks.iter().filter_map(kube::Look::unproven).collect();
                if !data.is_empty() {
                    waits.push(format!("the data plane to serve ({})", data.join("; ")));
                }
                return format!("exposing, waiting for: {}", waits.join("; "));
            }
            // The conditions are the controller's opinion; only the data plane's answer proves it.
            if unproven.is_empty() {
                "exposing: the controller reports its objects in place and the data plane serves every address; the worker's next pass replies ready".into()
            } else {
                format!(
                    "exposing: the controller reports its objects in place (its opinion); not proven from here: {}",
                    unproven.join("; ")
                )
            }
        }
    }
}

fn print_table(v: &Value) {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    println!(
        "ALLOCATION   {} (resource manager {})",
        s(&v["allocation_id"]),
        s(&v["resource_manager"])
    );
    println!("VERDICT      {}", s(&v["verdict"]));
    let r = &v["record"];
    if r["found"] == true {
        let val = &r["value"];
        println!(
            "RECORD       {} revision {}, phase {}, written {}",
            s(&r["key"]),
            s(&r["revision"]),
            s(&val["phase"]),
            s(&r["written"])
        );
        for b in val["ports"].as_array().into_iter().flatten() {
            println!(
                "  port       {} {} -> {}",
                s(&b["name"]),
                s(&b["container_port"]),
                s(&b["gateway_port"])
            );
        }
        if !val["failure"].is_null() {
            println!(
                "  failure    {}: {}",
                s(&val["failure"]["reason"]),
                s(&val["failure"]["message"])
            );
        }
    } else {
        println!("RECORD       {} not found", s(&r["key"]));
    }
    println!("CLAIMS");
    for c in v["claims"].as_array().into_iter().flatten() {
        println!("  {} {}", s(&c["key"]), s(&c["proxy"]));
    }
    let k = &v["kubernetes"];
    if let Some(why) = k["skipped"].as_str().or(k["error"].as_str()) {
        println!("KUBERNETES   {why}");
    } else {
        println!("KUBERNETES   {}", s(&k["apiserver"]));
        let g = &k["gateway"];
        println!(
            "  Gateway    {}/{} {}",
            s(&g["namespace"]),
            s(&g["name"]),
            kube::summary(&g["conditions"])
        );
        if !k["listenerset"].is_null() {
            let l = &k["listenerset"];
            println!(
                "  ListenerSet {}/{} found={} {}",
                s(&l["namespace"]),
                s(&l["name"]),
                s(&l["found"]),
                kube::summary(&l["conditions"])
            );
        }
        for p in k["ports"].as_array().into_iter().flatten() {
            let l = &p["listener"];
            println!(
                "  {:<10} listener found={} {} attachedRoutes={} | Service found={} ready endpoints={} | route found={} {}",
                s(&p["name"]),
                s(&l["found"]),
                kube::summary(&l["conditions"]),
                s(&l["attachedRoutes"]),
                s(&p["service"]["found"]),
                s(&p["ready_endpoints"]),
                s(&p["route"]["found"]),
                kube::summary(&p["route"]["conditions"])
            );
        }
    }
    println!("DATA PLANE");
    for d in v["data_plane"].as_array().into_iter().flatten() {
        println!(
            "  {:<10} {} {}",
            s(&d["name"]),
            s(&d["address"]),
            s(&d["answer"])
        );
    }
    for (title, list) in [
        ("EVENTS", "events"),
        ("REPLIES", "replies"),
        ("DEAD LETTERS", "dead_letters"),
    ] {
        println!("{title}");
        for m in v[list].as_array().into_iter().flatten() {
            let detail = match m["kind"].as_str() {
                Some("failed") => {
                    format!("{}: {}", s(&m["body"]["reason"]), s(&m["body"]["message"]))
                }
                Some("ready") => m["body"]["proxies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| format!("{}={}", s(&p["name"]), s(&p["address"])))
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => m["error"]
                    .as_str()
                    .map_or_else(|| s(&m["body"]["event_id"]), str::to_owned),
            };
            println!(
                "  {:<6} {} {:<8} {}",
                s(&m["sequence"]),
                s(&m["time"]),
                s(&m["kind"]),
                detail
            );
        }
    }
    for n in v["notes"].as_array().into_iter().flatten() {
        println!("NOTE         {}", s(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Reach;

    fn record(phase: &str) -> Record {
        serde_json::from_value(json!({
            "allocation_id": "a.1", "resource_manager": "rm", "phase": phase,
        }))
        .unwrap()
    }

    fn look(port: u16, reach: Reach) -> kube::Look {
        kube::Look {
            name: format!("p{port}"),
            host: "192.0.2.1".into(),
            port,
            reach,
        }
    }

    fn say(phase: &str, looks: &[kube::Look]) -> String {
        let kubernetes = json!({ "ports": [] });
        verdict(
            Some(&record(phase)),
            &json!({ "found": true }),
            &kubernetes,
            looks,
            &[],
            &[],
        )
    }

    #[test]
    fn ready_is_said_only_when_every_address_is_served() {
        assert_eq!(
            say(
                "ready",
                &[look(1, Reach::Accepted), look(2, Reach::Accepted)]
            ),
            "ready"
        );
        let unproven = [
            (vec![], "no address"),
            (vec![look(1, Reach::Closed)], "accepted, then closed"),
            (
                vec![look(1, Reach::Silent("timed out".into()))],
                "cannot tell",
            ),
            (
                vec![look(1, Reach::Unreachable("no route".into()))],
                "cannot tell",
            ),
            (
                vec![look(1, Reach::Accepted), look(2, Reach::Refused)],
                "the data plane refuses 192.0.2.1:2",
            ),
        ];
        for (looks, why) in unproven {
            let v = say("ready", &looks);
            assert!(
                v.starts_with("ready per the record; not proven from here: "),
                "{v}"
            );
            assert!(v.contains(why), "{v}");
        }
    }

    #[test]
    fn exposing_with_the_objects_in_place_is_the_controllers_opinion_until_the_data_plane_answers()
    {
        let v = say("exposing", &[look(1, Reach::Closed)]);
        assert!(v.contains("(its opinion); not proven from here"), "{v}");
        assert!(!v.contains("serves every address"), "{v}");
        let v = say("exposing", &[look(1, Reach::Accepted)]);
        assert!(v.contains("the data plane serves every address"), "{v}");
    }
}
