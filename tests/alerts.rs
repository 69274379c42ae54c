//! The alert rules (`deploy/prometheus/alerts.yaml`, the chart's `files/alerts.yaml`) checked by promtool,
//! which `scripts/testenv up` builds (ITG_PROMTOOL in `.itg/env`): the rules parse, every alert fires on the
//! series that should fire it and stays silent on a blip (tests/prometheus/alerts_test.yaml), those unit
//! tests notice when the rules lose their `for:` durations, and every alert has its runbook entry.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

const RULES: &str = "deploy/prometheus/alerts.yaml";
const CHART_RULES: &str = "deploy/helm/internal-task-gateway/files/alerts.yaml";
const UNIT_TESTS: &str = "tests/prometheus/alerts_test.yaml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn promtool() -> String {
    common::env_var("ITG_PROMTOOL").expect(
        "ITG_PROMTOOL unknown: run `scripts/testenv up` first (it builds promtool into the cache)",
    )
}

/// Runs promtool; returns whether it succeeded and what it printed.
fn run_promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn yaml(path: &Path) -> Value {
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn alert_names() -> BTreeSet<String> {
    let rules = yaml(&root().join(RULES));
    rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let (ok, out) = run_promtool(&["check", "rules", RULES], &root());
    println!("promtool check rules {RULES}:\n{out}");
    assert!(ok, "promtool check rules failed:\n{out}");
    let (ok, out) = run_promtool(&["test", "rules", UNIT_TESTS], &root());
    println!("promtool test rules {UNIT_TESTS}:\n{out}");
    assert!(ok, "promtool test rules failed:\n{out}");
}

#[test]
fn every_alert_has_a_unit_test_that_fires_it_and_one_that_finds_it_silent() {
    let tests = yaml(&root().join(UNIT_TESTS));
    let (mut fires, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for case in tests["tests"].as_sequence().unwrap() {
        for t in case["alert_rule_test"].as_sequence().unwrap() {
            let name = t["alertname"].as_str().unwrap().to_owned();
            if t["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty()) {
                fires.insert(name);
            } else {
                silent.insert(name);
            }
        }
    }
    let alerts = alert_names();
    assert!(alerts.len() >= 8, "too few alerts: {alerts:?}");
    assert_eq!(fires, alerts, "alerts with a unit test that fires them");
    assert_eq!(
        silent, alerts,
        "alerts with a unit test that finds them silent"
    );
}

#[test]
fn the_unit_tests_fail_when_the_rules_lose_their_for_durations() {
    // Without `for:` every blip fires: the silent cases must notice.
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(root().join(RULES)).unwrap();
    let hasty: String = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with("for:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(hasty, rules);
    std::fs::write(dir.path().join("alerts.yaml"), hasty).unwrap();
    let tests = std::fs::read_to_string(root().join(UNIT_TESTS))
        .unwrap()
        .replace("../../deploy/prometheus/alerts.yaml", "alerts.yaml");
    std::fs::write(dir.path().join("alerts_test.yaml"), tests).unwrap();
    let (ok, out) = run_promtool(&["test", "rules", "alerts_test.yaml"], dir.path());
    println!("promtool test rules on rules without for:\n{out}");
    assert!(
        !ok,
        "the unit tests passed rules that fire on blips:\n{out}"
    );
    let failed: BTreeSet<String> = alert_names()
        .into_iter()
        .filter(|a| out.contains(&format!("alertname: {a},")))
        .collect();
    println!("alerts whose unit tests failed: {failed:?}");
    assert!(failed.len() >= 5, "{failed:?}");
}

#[test]
fn the_plain_rules_file_is_the_charts() {
    let plain = std::fs::read(root().join(RULES)).unwrap();
    let chart = std::fs::read(root().join(CHART_RULES)).unwrap();
    assert_eq!(
        plain, chart,
        "{RULES} and {CHART_RULES} differ: keep one a link to the other"
    );
    let plain = std::fs::read(root().join("deploy/grafana/dashboard.json")).unwrap();
    let chart =
        std::fs::read(root().join("deploy/helm/internal-task-gateway/files/dashboard.json"))
            .unwrap();
    assert_eq!(
        plain, chart,
        "the dashboard under deploy/grafana and the chart's differ"
    );
}

#[test]
fn every_alert_has_a_runbook_entry_its_annotation_names() {
    let doc = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let rules = yaml(&root().join(RULES));
    for rule in rules["groups"][0]["rules"].as_sequence().unwrap() {
        let name = rule["alert"].as_str().unwrap();
        let heading = format!("\n### {name}\n");
        assert!(
            doc.contains(&heading),
            "docs/operations.md has no `### {name}` runbook entry"
        );
        assert_eq!(
            rule["annotations"]["runbook"].as_str(),
            Some(format!("docs/operations.md#{}", name.to_lowercase()).as_str()),
            "{name}'s runbook annotation"
        );
        let entry = doc.split(&heading).nth(1).unwrap();
        let body = entry.split("\n#").next().unwrap().trim();
        assert!(
            body.len() > 80,
            "{name}'s runbook entry says too little: {body}"
        );
    }
}
