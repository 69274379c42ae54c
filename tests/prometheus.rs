//! A real Prometheus scraping a real worker process under load, with the alert rules loaded (their `for:`
//! shortened to seconds in a copy made here): a small port range filled until capacity is exhausted,
//! starteds answered `capacity_exhausted`, and a started that dead-letters make the matching alerts pending
//! or firing, seen through Prometheus's HTTP API; every query of the Grafana dashboard runs there without
//! error and returns series. The panels' data is written out for `scripts/plot-dashboard`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::process::WorkerProcess;
use common::prometheus::Prometheus;
use common::{Env, Master, Replies, TestRm, config_yaml};
use serde_json::{Value, json};

const RULES: &str = "deploy/prometheus/alerts.yaml";
const DASHBOARD: &str = "deploy/grafana/dashboard.json";

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The production rules with every `for:` cut to `secs` seconds, so a test of a minute can meet them.
fn rules_with_short_for(secs: u64) -> String {
    let text = read(RULES);
    let out: String = text
        .lines()
        .map(|l| match l.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: {secs}s\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    assert!(out.matches(&format!("for: {secs}s")).count() >= 8, "{out}");
    out
}

/// Every PromQL expression of the dashboard with its panel's title, template variables substituted.
fn dashboard_queries(rm: &str, gateway: &str) -> Vec<(String, String)> {
    let board: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let subst = |e: &str| {
        e.replace("$resource_manager", rm)
            .replace("$gateway", gateway)
            .replace("$__rate_interval", "30s")
    };
    let mut out = Vec::new();
    for p in board["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push((
                p["title"].as_str().unwrap().to_owned(),
                subst(t["expr"].as_str().unwrap()),
            ));
        }
    }
    // The variables' label_values(metric, label): the metric must have series carrying the label.
    for v in board["templating"]["list"].as_array().unwrap() {
        if let Some(def) = v["definition"].as_str() {
            let inner = def
                .strip_prefix("label_values(")
                .and_then(|d| d.strip_suffix(')'))
                .expect("label_values(metric, label)");
            let (metric, label) = inner.rsplit_once(", ").unwrap();
            out.push((
                format!("variable {}", v["name"]),
                subst(&format!("count by ({label}) ({metric})")),
            ));
        }
    }
    out
}

/// Waits until the alerts matching each of `want` (name and labels) are pending or firing; returns them.
async fn alerts_become_active(p: &Prometheus, want: &[(&str, Value)], secs: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let alerts = p.alerts();
        let found: Vec<Value> = want
            .iter()
            .filter_map(|(name, labels)| {
                alerts
                    .iter()
                    .find(|a| {
                        a["labels"]["alertname"] == *name
                            && labels
                                .as_object()
                                .unwrap()
                                .iter()
                                .all(|(k, v)| a["labels"][k] == *v)
                    })
                    .cloned()
            })
            .collect();
        if found.len() == want.len() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "within {secs} s not all of {want:?} were pending or firing; active: {alerts:#?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn a_full_range_failures_and_a_dead_letter_raise_their_alerts_and_every_dashboard_query_answers()
 {
    let env = Env::load();
    let rm = TestRm::new(&env, "prom", (44100, 44103)).await;
    let gateway = format!("{}/{}", rm.gateway_ns, rm.gateway);
    let mut worker = WorkerProcess::spawn(
        |admin| {
            config_yaml(
                &env,
                &[&rm],
                "  capacity_deadline: 2s\n  kubernetes_deadline: 3s\n  kubernetes_call_timeout: 3s\n  controller_deadline: 3s\n",
                admin,
            )
            .replace("max_deliver: -1", "max_deliver: 10")
        },
        &[],
    );
    worker.ready(60).await;
    let prom = Prometheus::start(&[&worker.admin], &rules_with_short_for(3)).await;
    // Targets are discovered a few seconds after start: the counters must be seen at 0 before the load,
    // or increase() misses what happened before the first scrape.
    let deadline = Instant::now() + Duration::from_secs(30);
    while prom.query(r#"up{job="itg"} == 1"#).is_empty() {
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape the worker in 30 s:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started_at = jiff::Timestamp::now();
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;

    // Load: four allocations fill the range of four ports.
    let filling: Vec<String> = (0..4)
        .map(|i| format!("{}.{i}", uuid::Uuid::new_v4()))
        .collect();
    for a in &filling {
        master.started(a, &rm.task_ns, &[("jupyter", 8888)]).await;
    }
    for a in &filling {
        replies.first(30, a, "ready").await;
    }
    // Four more wait for a port and are answered capacity_exhausted after the deadline.
    let waiting: Vec<String> = (0..4)
        .map(|i| format!("{}.{i}", uuid::Uuid::new_v4()))
        .collect();
    for a in &waiting {
        master.started(a, &rm.task_ns, &[("jupyter", 8888)]).await;
    }
    for a in &waiting {
        let f = replies.first(30, a, "failed").await;
        assert_eq!(f.body["reason"], "capacity_exhausted", "{}", f.body);
    }
    // A record no worker can read makes every delivery fail: the started is dead-lettered.
    let poison = format!("{}.1", uuid::Uuid::new_v4());
    let kv = jetstream::new(env.nats().await)
        .get_key_value("ITG_STATE")
        .await
        .unwrap();
    kv.put(
        itg::names::allocation_key(&rm.name, &poison),
        "not a record".into(),
    )
    .await
    .unwrap();
    master
        .started(&poison, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    let f = replies.first(60, &poison, "failed").await;
    assert_eq!(f.body["reason"], "timeout", "{}", f.body);

    let r = json!({ "resource_manager": rm.name });
    let g = json!({ "resource_manager": rm.name, "gateway": gateway });
    let want = [
        ("ITGPortRangeExhausted", g.clone()),
        ("ITGPortRangeNearlyFull", g.clone()),
        ("ITGDeadLetters", r.clone()),
        (
            "ITGExposuresFailing",
            json!({ "resource_manager": rm.name, "reason": "capacity_exhausted" }),
        ),
    ];
    let active = alerts_become_active(&prom, &want, 60).await;
    for a in &active {
        println!(
            "alert {} {} {}: {}",
            a["labels"]["alertname"], a["state"], a["labels"], a["annotations"]["summary"]
        );
    }
    // The worker serves and reconciles: those alerts stay silent.
    let names: BTreeSet<String> = prom
        .alerts()
        .iter()
        .filter(|a| a["labels"]["resource_manager"] == rm.name.as_str())
        .map(|a| {
            a["labels"]["alertname"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    println!("active alerts of {}: {names:?}", rm.name);
    for quiet in [
        "ITGNoWorkerReady",
        "ITGReconcilerNotCompleting",
        "ITGApiserverErrors",
    ] {
        assert!(!names.contains(quiet), "{quiet} fired for a healthy worker");
    }
    // The rules themselves, as Prometheus loaded them: none failed to evaluate.
    let groups = prom.api("/api/v1/rules", &[]);
    for group in groups["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
        }
    }

    // Every dashboard query runs and returns series for this resource manager.
    let queries = dashboard_queries(&rm.name, &gateway);
    for (panel, expr) in &queries {
        let result = prom.query(expr);
        println!("{panel}: {} series <- {expr}", result.len());
        assert!(!result.is_empty(), "panel {panel}: no series for {expr}");
    }

    // The tasks end: Prometheus sees the ports come back. Then the panels' data, load and recovery, is
    // written out for scripts/plot-dashboard.
    for a in filling.iter().chain(&waiting).chain([&poison]) {
        master.ended(a).await;
    }
    kv.purge(itg::names::allocation_key(&rm.name, &poison))
        .await
        .unwrap();
    let free = format!(
        "max(itg_ports_free{{resource_manager=\"{}\"}}) == 4",
        rm.name
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while prom.query(&free).is_empty() {
        assert!(
            Instant::now() < deadline,
            "Prometheus did not see the four ports free again"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let end = jiff::Timestamp::now();
    let mut data = Vec::new();
    for (panel, expr) in queries.iter().filter(|(p, _)| !p.starts_with("variable")) {
        let range = prom.api(
            "/api/v1/query_range",
            &[
                ("query", expr),
                ("start", &started_at.as_second().to_string()),
                ("end", &end.as_second().to_string()),
                ("step", "1"),
            ],
        );
        data.push(json!({ "panel": panel, "expr": expr, "result": range["result"] }));
    }
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-data.json");
    std::fs::write(&out, serde_json::to_string_pretty(&data).unwrap()).unwrap();
    println!("the panels' data: {}", out.display());
    worker.kill();
    rm.teardown(&env).await;
}
