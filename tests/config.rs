//! Config loading: every rule is refused with a message naming the key, the value and the rule, and where
//! the rule can be written in JSON Schema, `schemas/config.schema.json` refuses the same config.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::LazyLock;

use itg::config::{Config, ConfigError, ResourceManagerConfig};
use serde_json::{Value, json};

static SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/config.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::draft202012::new(&schema).unwrap()
});

fn base() -> Value {
    json!({
        "nats": { "url": "nats://127.0.0.1:4222" },
        "resource_managers": [{
            "name": "k8s-west",
            "internal_task_gateway": {
                "gateway_name": "itg",
                "gateway_namespace": "gateway-system",
                "gateway_ip": "203.0.113.10",
                "gateway_port_range_start": 40000,
                "gateway_port_range_end": 40063
            }
        }]
    })
}

/// A key as the loader names it, with the abbreviations `rm.` for `resource_managers[0].` and `itg.` for
/// `resource_managers[0].internal_task_gateway.`.
fn full_key(key: &str) -> String {
    if let Some(k) = key.strip_prefix("itg.") {
        format!("resource_managers[0].internal_task_gateway.{k}")
    } else if let Some(k) = key.strip_prefix("rm.") {
        format!("resource_managers[0].{k}")
    } else {
        key.to_owned()
    }
}

/// Sets the value at a key (`nats.tls.ca_file`, `rm.excluded_ports[1]`), creating objects on the way.
fn set(doc: &mut Value, key: &str, value: Value) {
    let mut at = doc;
    for k in full_key(key).replace('[', ".").replace(']', "").split('.') {
        at = match at {
            Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
            other => other
                .as_object_mut()
                .unwrap()
                .entry(k.to_owned())
                .or_insert(json!({})),
        };
    }
    *at = value;
}

/// The base config with values set: `key = JSON; key = JSON`.
fn config(settings: &str) -> Value {
    let mut doc = base();
    for setting in settings.split("; ").filter(|s| !s.trim().is_empty()) {
        let (key, value) = setting.split_once(" = ").unwrap();
        set(
            &mut doc,
            key.trim(),
            serde_json::from_str(value.trim()).unwrap(),
        );
    }
    doc
}

fn parse(doc: &Value) -> Result<Config, ConfigError> {
    // JSON text is YAML: every config in this file travels as JSON.
    Config::parse(&doc.to_string(), "itg.json")
}

#[track_caller]
fn accepted(settings: &str) -> Config {
    let doc = config(settings);
    assert!(SCHEMA.is_valid(&doc), "the schema refuses {doc}");
    parse(&doc).unwrap_or_else(|e| panic!("refused {doc}: {e}"))
}

/// Asserts a rule refusal naming `key`, showing `value` and stating `rule`. `schema` says whether the
/// schema refuses it too (`both`) or cannot state the rule (`rust`).
#[track_caller]
fn refused(doc: &Value, key: &str, value: &str, rule: &str, schema: &str) {
    let e = parse(doc).err().unwrap_or_else(|| panic!("accepted {doc}"));
    let text = e.to_string();
    let ConfigError::Rule {
        key: k,
        value: v,
        rule: r,
    } = &e
    else {
        panic!("expected a rule refusal of {key}, got {e}")
    };
    assert_eq!(*k, full_key(key), "{text}");
    assert!(
        v.contains(value),
        "value {v:?} should show {value:?}: {text}"
    );
    assert!(r.contains(rule), "rule {r:?} should say {rule:?}: {text}");
    assert!(
        text.contains(k) && text.contains(v) && text.contains(r),
        "{text}"
    );
    let by_schema = if SCHEMA.is_valid(doc) { "rust" } else { "both" };
    assert_eq!(by_schema, schema, "who refuses {doc}");
}

/// Runs a table of refusals, one per line: `settings | key blamed | value shown | rule | both or rust`.
#[track_caller]
fn refusals(table: &str) {
    for line in table.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = line.split(" | ").map(str::trim).collect();
        let [settings, key, value, rule, schema] = cols[..] else {
            panic!("bad table line {line:?}")
        };
        refused(&config(settings), key, value, rule, schema);
    }
}

/// Asserts a refusal before validation (unknown key, wrong type) whose message names `key`.
#[track_caller]
fn malformed(doc: &Value, key: &str) {
    match parse(doc) {
        Err(e @ ConfigError::Parse { .. }) => {
            let text = e.to_string();
            assert!(text.contains(key) && text.contains("itg.json"), "{text}");
        }
        other => panic!("expected a malformed config naming {key}: {other:?}"),
    }
    assert!(!SCHEMA.is_valid(doc), "the schema accepts {doc}");
}

#[test]
fn the_base_config_is_accepted_so_each_refusal_below_is_about_its_one_change() {
    let c = accepted("");
    assert_eq!(c.resource_managers[0].port_range(), 40000..=40063);
}

#[test]
fn config_refuses_a_port_range_below_1025_naming_the_key() {
    refusals(
        r#"
        itg.gateway_port_range_start = 1024 | itg.gateway_port_range_start | 1024 | 1025 to 65535 | both
        itg.gateway_port_range_start = 80   | itg.gateway_port_range_start | 80   | 1025 to 65535 | both
        itg.gateway_port_range_start = -1   | itg.gateway_port_range_start | -1   | 1025 to 65535 | both"#,
    );
    let c = accepted("itg.gateway_port_range_start = 1025");
    assert_eq!(c.resource_managers[0].port_range(), 1025..=40063);
}

#[test]
fn config_refuses_a_port_range_above_65535_naming_the_key() {
    refusals(
        r#"
        itg.gateway_port_range_end = 65536 | itg.gateway_port_range_end | 65536 | 1025 to 65535 | both"#,
    );
    let c = accepted("itg.gateway_port_range_end = 65535");
    assert_eq!(c.resource_managers[0].port_range(), 40000..=65535);
}

#[test]
fn config_refuses_a_port_range_ending_before_it_starts_and_accepts_a_range_of_one() {
    refusals(
        r#"
        itg.gateway_port_range_end = 39999 | itg.gateway_port_range_end | 39999 | >= gateway_port_range_start (40000) | rust"#,
    );
    let c = accepted("itg.gateway_port_range_end = 40000");
    assert_eq!(c.resource_managers[0].port_range(), 40000..=40000);
}

#[test]
fn config_refuses_resource_manager_names_that_are_not_one_subject_token() {
    refusals(
        r#"
        rm.name = "k8s.west" | rm.name | "k8s.west" | 1 to 64 characters of A-Z | both
        rm.name = "k8s-*"    | rm.name | "k8s-*"    | 1 to 64 characters of A-Z | both
        rm.name = ">"        | rm.name | ">"        | 1 to 64 characters of A-Z | both
        rm.name = "k8s west" | rm.name | "k8s west" | 1 to 64 characters of A-Z | both
        rm.name = ""         | rm.name | ""         | 1 to 64 characters of A-Z | both"#,
    );
    let long = format!("{:?}", "r".repeat(65));
    let doc = config(&format!("rm.name = {long}"));
    refused(&doc, "rm.name", &long, "1 to 64", "both");
    let ok = accepted(&format!("rm.name = {:?}", "r".repeat(64)));
    assert_eq!(ok.resource_managers[0].name.len(), 64);
    accepted(r#"rm.name = "K8s_West-2""#);
}

#[test]
fn config_refuses_duplicate_resource_manager_names() {
    let mut doc = base();
    let rm = doc["resource_managers"][0].clone();
    doc["resource_managers"].as_array_mut().unwrap().push(rm);
    refused(
        &doc,
        "resource_managers[1].name",
        "\"k8s-west\"",
        "unique",
        "rust",
    );
    doc["resource_managers"][1]["name"] = json!("k8s-east");
    // On the same Gateway, so it needs a range of its own.
    doc["resource_managers"][1]["internal_task_gateway"]["gateway_port_range_start"] = json!(40064);
    doc["resource_managers"][1]["internal_task_gateway"]["gateway_port_range_end"] = json!(40127);
    assert!(SCHEMA.is_valid(&doc));
    assert_eq!(parse(&doc).unwrap().resource_managers.len(), 2);
    refusals(
        r#"
        resource_managers = [] | resource_managers | [] | at least one | both"#,
    );
}

#[test]
fn config_refuses_a_gateway_ip_that_is_neither_an_ip_nor_a_dns_name() {
    // The schema's `format`s are annotations by default: it tells only what its pattern catches.
    refusals(
        r#"
        itg.gateway_ip = "not an ip!"       | itg.gateway_ip | "not an ip!"       | IPv4 or IPv6 | both
        itg.gateway_ip = ""                 | itg.gateway_ip | ""                 | IPv4 or IPv6 | both
        itg.gateway_ip = "[2001:db8::1]"    | itg.gateway_ip | "[2001:db8::1]"    | IPv4 or IPv6 | both
        itg.gateway_ip = "gw_1.example.com" | itg.gateway_ip | "gw_1.example.com" | IPv4 or IPv6 | both
        itg.gateway_ip = "-gw.example.com"  | itg.gateway_ip | "-gw.example.com"  | IPv4 or IPv6 | rust"#,
    );
    for ip in [
        "2001:db8::10",
        "::1",
        "198.51.100.7",
        "gw.example.com",
        "GW.Example.com",
    ] {
        let c = accepted(&format!("itg.gateway_ip = {ip:?}"));
        assert_eq!(c.resource_managers[0].internal_task_gateway.gateway_ip, ip);
    }
}

#[test]
fn config_refuses_a_gateway_name_or_namespace_kubernetes_would_refuse() {
    refusals(
        r#"
        itg.gateway_name = "ITG"       | itg.gateway_name | "ITG"       | DNS-1123 subdomain | both
        itg.gateway_name = "itg_1"     | itg.gateway_name | "itg_1"     | DNS-1123 subdomain | both
        itg.gateway_name = "-itg"      | itg.gateway_name | "-itg"      | DNS-1123 subdomain | both
        itg.gateway_name = "itg..east" | itg.gateway_name | "itg..east" | DNS-1123 subdomain | both
        itg.gateway_name = ""          | itg.gateway_name | ""          | DNS-1123 subdomain | both
        itg.gateway_namespace = "Gateway" | itg.gateway_namespace | "Gateway" | DNS-1123 label | both
        itg.gateway_namespace = "gw.sys"  | itg.gateway_namespace | "gw.sys"  | DNS-1123 label | both
        itg.gateway_namespace = "gw_sys"  | itg.gateway_namespace | "gw_sys"  | DNS-1123 label | both"#,
    );
    let doc = config(&format!("itg.gateway_namespace = {:?}", "n".repeat(64)));
    refused(
        &doc,
        "itg.gateway_namespace",
        "nnnn",
        "DNS-1123 label",
        "both",
    );
    accepted(r#"itg.gateway_name = "itg.east-1"; itg.gateway_namespace = "0-a""#);
}

#[test]
fn config_refuses_an_unknown_key_at_any_level_naming_it() {
    for key in [
        "log_fromat",
        "nats.conection_name",
        "nats.tls.ca_fle",
        "jetstream.replica",
        "worker.concurency",
        "admin.adress",
        "rm.kube_contxt",
        "itg.gateway_nmae",
    ] {
        let doc = config(&format!("{key} = \"x\""));
        malformed(&doc, key.rsplit('.').next().unwrap());
    }
}

#[test]
fn config_refuses_a_malformed_value_naming_its_key() {
    malformed(&config(r#"worker.retry_min = "soon""#), "worker.retry_min");
    malformed(
        &config(r#"jetstream.replicas = "three""#),
        "jetstream.replicas",
    );
    malformed(&config(r#"log_format = "xml""#), "log_format");
    let mut doc = base();
    doc["nats"].as_object_mut().unwrap().remove("url");
    malformed(&doc, "url");
}

#[test]
fn config_refuses_nats_user_and_password_apart() {
    refusals(
        r#"
        nats.user = "worker"     | nats.user | "worker" | nats.password go together | both
        nats.password = "secret" | nats.user | None     | nats.password go together | both"#,
    );
    let c = accepted(r#"nats.user = "worker"; nats.password = "s""#);
    assert_eq!(c.nats.user.as_deref(), Some("worker"));
}

#[test]
fn config_refuses_two_ways_to_authenticate() {
    refusals(
        r#"
        nats.user = "w"; nats.password = "s"; nats.token = "t"          | nats | token | at most one | both
        nats.user = "w"; nats.password = "s"; nats.nkey_seed_file = "/s" | nats | token | at most one | both
        nats.user = "w"; nats.password = "s"; nats.creds_file = "/c"     | nats | token | at most one | both
        nats.token = "t"; nats.creds_file = "/c"                         | nats | token | at most one | both
        nats.nkey_seed_file = "/s"; nats.creds_file = "/c"               | nats | token | at most one | both"#,
    );
    for one in [
        r#"nats.token = "t""#,
        r#"nats.creds_file = "/c""#,
        r#"nats.nkey_seed_file = "/s""#,
    ] {
        accepted(one);
    }
}

#[test]
fn config_refuses_a_tls_client_certificate_without_its_key() {
    refusals(
        r#"
        nats.tls.cert_file = "/c.pem" | nats.tls.cert_file | "/c.pem" | key_file go together | both"#,
    );
    accepted(r#"nats.tls.cert_file = "/c.pem"; nats.tls.key_file = "/k.pem""#);
}

#[test]
fn config_refuses_excluded_ports_that_are_not_ports_or_ranges() {
    refusals(
        r#"
        rm.excluded_ports = ["5-3"]          | rm.excluded_ports[0] | "5-3"     | must not exceed its end | rust
        rm.excluded_ports = ["1-70000"]      | rm.excluded_ports[0] | "1-70000" | 1 to 65535              | rust
        rm.excluded_ports = [40001, "abc"]   | rm.excluded_ports[1] | "abc"     | written "a-b"           | both
        rm.excluded_ports = ["40010"]        | rm.excluded_ports[0] | "40010"   | written "a-b"           | both
        rm.excluded_ports = ["x-40010"]      | rm.excluded_ports[0] | "x-40010" | whole numbers           | both
        rm.excluded_ports = [1, 2, 0]        | rm.excluded_ports[2] | 0         | 1 to 65535              | both
        rm.excluded_ports = [65536]          | rm.excluded_ports[0] | 65536     | 1 to 65535              | both"#,
    );
}

#[test]
fn excluded_port_set_expands_ranges_and_merges_overlaps() {
    let c = accepted(
        r#"rm.excluded_ports = [40010, "40020-40023", "40022-40024", "40030-40030", 40010]"#,
    );
    let want: BTreeSet<u16> = [40010, 40020, 40021, 40022, 40023, 40024, 40030].into();
    assert_eq!(c.resource_managers[0].excluded_port_set(), want);
    let all = accepted(r#"rm.excluded_ports = ["1-65535"]"#)
        .resource_managers
        .remove(0);
    assert_eq!(all.excluded_port_set().len(), 65535);
}

#[test]
fn config_refuses_a_listener_limit_outside_1_to_64() {
    refusals(
        r#"
        rm.listener_limit = 65 | rm.listener_limit | 65 | 1 to 64 | both
        rm.listener_limit = 0  | rm.listener_limit | 0  | 1 to 64 | both"#,
    );
    assert_eq!(
        accepted("rm.listener_limit = 50").resource_managers[0].listener_limit,
        50
    );
}

#[test]
fn config_refuses_a_zero_duration_naming_each_key() {
    refusals(
        r#"
        jetstream.events_max_age = "0s"   | jetstream.events_max_age   | 0ns | longer than zero | rust
        jetstream.replies_max_age = "0s"  | jetstream.replies_max_age  | 0ns | longer than zero | rust
        jetstream.duplicate_window = "0s" | jetstream.duplicate_window | 0ns | longer than zero | rust
        jetstream.ack_wait = "0ms"        | jetstream.ack_wait         | 0ns | longer than zero | rust
        worker.capacity_deadline = "0s"   | worker.capacity_deadline   | 0ns | longer than zero | rust
        worker.kubernetes_deadline = "0m" | worker.kubernetes_deadline | 0ns | longer than zero | rust
        worker.retry_min = "0s"           | worker.retry_min           | 0ns | longer than zero | rust
        worker.retry_max = "0s"           | worker.retry_max           | 0ns | longer than zero | rust
        worker.shutdown_timeout = "0s"    | worker.shutdown_timeout    | 0ns | longer than zero | rust"#,
    );
}

#[test]
fn config_refuses_worker_concurrency_outside_1_to_1024() {
    refusals(
        r#"
        worker.concurrency = 0    | worker.concurrency | 0    | 1 to 1024 | both
        worker.concurrency = 1025 | worker.concurrency | 1025 | 1 to 1024 | both"#,
    );
    assert_eq!(
        accepted("worker.concurrency = 1024").worker.concurrency,
        1024
    );
}

#[test]
fn config_refuses_a_duplicate_window_longer_than_either_streams_max_age() {
    refusals(
        r#"
        jetstream.duplicate_window = "2h"; jetstream.events_max_age = "1h" | jetstream.duplicate_window | 7200s | jetstream.events_max_age  | rust
        jetstream.replies_max_age = "1m"                                    | jetstream.duplicate_window | 120s  | jetstream.replies_max_age | rust"#,
    );
    let c = accepted(r#"jetstream.duplicate_window = "1h"; jetstream.events_max_age = "1h""#);
    assert_eq!(c.jetstream.duplicate_window.0.as_secs(), 3600);
}

#[test]
fn config_refuses_other_out_of_range_values_naming_the_key() {
    refusals(
        r#"
        jetstream.replicas = 0                              | jetstream.replicas     | 0         | 1 to 5 | both
        jetstream.replicas = 6                              | jetstream.replicas     | 6         | 1 to 5 | both
        jetstream.max_deliver = 0                           | jetstream.max_deliver  | 0         | -1 for unlimited | both
        jetstream.max_deliver = -2                          | jetstream.max_deliver  | -2        | -1 for unlimited | both
        jetstream.state_bucket = "ITG.STATE"                | jetstream.state_bucket | ITG.STATE | 1 to 64 | both
        worker.retry_min = "1m"; worker.retry_max = "30s"   | worker.retry_min       | 60s       | worker.retry_max | rust
        admin.address = "localhost:9464"                    | admin.address | localhost:9464 | IP address and port | both
        nats.url = "http://127.0.0.1:4222"                  | nats.url | http://127.0.0.1:4222 | nats:// | both
        nats.url = "nats://a:4222,"                         | nats.url | ""                    | nats:// | both"#,
    );
    accepted(r#"jetstream.max_deliver = -1; admin.address = "[::]:9464""#);
    accepted(r#"nats.url = "tls://n1:4222, tls://n2:4222""#);
}

#[test]
fn config_accepts_json_and_yaml_text_alike() {
    let from_json = Config::parse(&base().to_string(), "itg.json").unwrap();
    let yaml = serde_norway::to_string(&base()).unwrap();
    assert!(!yaml.trim_start().starts_with('{'), "{yaml}");
    let from_yaml = Config::parse(&yaml, "itg.yaml").unwrap();
    assert_eq!(format!("{from_json:?}"), format!("{from_yaml:?}"));
}

fn rm(settings: &str) -> ResourceManagerConfig {
    accepted(settings).resource_managers.remove(0)
}

#[test]
fn namespace_allowed_refuses_control_plane_and_gateway_namespaces_by_default() {
    let west = rm("");
    for ns in [
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "gateway-system",
    ] {
        assert!(!west.namespace_allowed(ns), "{ns}");
    }
    for ns in ["default", "team-vision", "kube-systemx"] {
        assert!(west.namespace_allowed(ns), "{ns}");
    }
}

#[test]
fn namespace_allowed_with_a_list_allows_exactly_the_list() {
    let west = rm(r#"rm.allowed_namespaces = ["team-vision", "kube-system"]"#);
    assert!(west.namespace_allowed("team-vision"));
    assert!(west.namespace_allowed("kube-system"), "listed, so allowed");
    assert!(!west.namespace_allowed("team-nlp"));
    assert!(!west.namespace_allowed("default"));
    let none = rm("rm.allowed_namespaces = []");
    assert!(
        !none.namespace_allowed("default"),
        "an empty list allows none"
    );
    refusals(
        r#"
        rm.allowed_namespaces = ["ok", "Not_OK"] | rm.allowed_namespaces[1] | Not_OK | DNS-1123 label | both"#,
    );
}

#[test]
fn config_refuses_overlapping_ranges_on_one_gateway_naming_both_resource_managers() {
    let mut doc = base();
    let mut east = doc["resource_managers"][0].clone();
    east["name"] = json!("k8s-east");
    east["internal_task_gateway"]["gateway_port_range_start"] = json!(40063);
    east["internal_task_gateway"]["gateway_port_range_end"] = json!(40100);
    doc["resource_managers"].as_array_mut().unwrap().push(east);
    let text = parse(&doc).unwrap_err().to_string();
    for want in [
        "k8s-west",
        "k8s-east",
        "40000-40063",
        "40063-40100",
        "gateway-system/itg",
    ] {
        assert!(text.contains(want), "{want} missing from: {text}");
    }
    refused(
        &doc,
        "resource_managers[1].internal_task_gateway.gateway_port_range_start",
        "40063-40100",
        "overlap",
        "rust",
    );
    // The same range on another Gateway is fine.
    doc["resource_managers"][1]["internal_task_gateway"]["gateway_name"] = json!("other");
    assert_eq!(parse(&doc).unwrap().resource_managers.len(), 2);
}

#[test]
fn config_refuses_a_reconcile_hold_off_below_the_safe_minimum_and_says_why() {
    refusals(
        r#"
        worker = {"reconcile_hold_off": "0s"} | worker.reconcile_hold_off | 0ns | at least 5s | rust
        worker = {"reconcile_hold_off": "4s"} | worker.reconcile_hold_off | 4s | in flight | rust"#,
    );
    accepted(r#"worker = {"reconcile_hold_off": "5s"}"#);
}

#[test]
fn the_delivery_budget_counts_the_backoff_ramp_not_retry_max_for_every_delivery() {
    let timing = r#"worker.retry_min = "250ms"; worker.retry_max = "30s"; worker.capacity_deadline = "300s"; worker.kubernetes_deadline = "300s""#;
    // 12 deliveries leave 11 waits: 0.25+0.5+1+2+4+8+16 s while the delay doubles, then 4 x 30 s, about
    // 152 s in all, not 12 x 30 s = 360 s: the events stop before the 300 s deadline.
    refused(
        &config(&format!("jetstream.max_deliver = 12; {timing}")),
        "jetstream.max_deliver",
        "12",
        "redeliveries",
        "rust",
    );
    // 18 deliveries leave 17 waits: 31.75 s of ramp, then 10 x 30 s, which covers 300 s.
    accepted(&format!("jetstream.max_deliver = 18; {timing}"));
}

#[test]
fn a_gateway_pool_lists_each_gateway_once_and_shares_no_ports_with_another_resource_manager() {
    let mut doc = base();
    doc["resource_managers"][0]["gateway_pool"] = json!([
        {"gateway_name": "itg-2", "gateway_namespace": "gateway-system", "gateway_ip": "203.0.113.11"},
    ]);
    let c = parse(&doc).unwrap();
    let names: Vec<String> = c.resource_managers[0]
        .gateways()
        .into_iter()
        .map(|g| {
            format!(
                "{}/{} {}",
                g.gateway_namespace, g.gateway_name, g.gateway_ip
            )
        })
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[1].starts_with("gateway-system/itg-2 203.0.113.11"),
        "{names:?}"
    );
    // The resource manager's own Gateway again, or one twice, is refused naming it.
    let mut again = doc.clone();
    again["resource_managers"][0]["gateway_pool"][0]["gateway_name"] = json!("itg");
    let text = parse(&again).unwrap_err().to_string();
    assert!(
        text.contains("resource_managers[0].gateway_pool[0].gateway_name") && text.contains("once"),
        "{text}"
    );
    // A pool member's address must be an address.
    let mut bad = doc.clone();
    bad["resource_managers"][0]["gateway_pool"][0]["gateway_ip"] = json!("not an address!");
    let text = parse(&bad).unwrap_err().to_string();
    assert!(text.contains("gateway_pool[0].gateway_ip"), "{text}");
    // Another resource manager whose own Gateway is in this pool must not overlap its range.
    let mut east = doc["resource_managers"][0].clone();
    east["name"] = json!("k8s-east");
    east["gateway_pool"] = json!([]);
    east["internal_task_gateway"]["gateway_name"] = json!("itg-2");
    doc["resource_managers"].as_array_mut().unwrap().push(east);
    let text = parse(&doc).unwrap_err().to_string();
    assert!(
        text.contains("gateway-system/itg-2") && text.contains("overlap"),
        "{text}"
    );
}

#[test]
fn config_refuses_a_data_plane_probe_that_cannot_work_naming_the_key() {
    refusals(
        r#"
        rm.data_plane_probe.grace = "0s"            | rm.data_plane_probe.grace           | 0ns          | longer than zero | rust
        rm.data_plane_probe.connect_timeout = "0s"  | rm.data_plane_probe.connect_timeout | 0ns          | longer than zero | rust
        rm.data_plane_probe.grace = "5m"            | rm.data_plane_probe.grace           | 300s         | must not exceed data_plane_probe.deadline | rust
        rm.data_plane_probe.address = "not a host!" | rm.data_plane_probe.address         | "not a host!" | IPv4 or IPv6 address or a DNS name | rust"#,
    );
    malformed(&config("rm.data_plane_probe.port = 1"), "port");
    // On wherever the worker waits for the controller, unless said otherwise.
    let on = accepted(r#"rm.data_plane_probe.address = "envoy.gateway-system.svc""#);
    assert!(on.resource_managers[0].probes_data_plane());
    assert_eq!(
        on.resource_managers[0].gateways()[0]
            .probe_address
            .as_deref(),
        Some("envoy.gateway-system.svc")
    );
    assert!(!accepted("rm.wait_for_controller = false").resource_managers[0].probes_data_plane());
    assert!(
        accepted("rm.wait_for_controller = false; rm.data_plane_probe.enabled = true")
            .resource_managers[0]
            .probes_data_plane()
    );
    assert!(
        !accepted("rm.data_plane_probe.enabled = false").resource_managers[0].probes_data_plane()
    );
}

#[test]
fn config_refuses_a_jetstream_domain_that_is_not_one_subject_token_or_both_domains_at_once() {
    refusals(
        r#"
        jetstream.domain = "hub.eu"                          | jetstream.domain     | "hub.eu" | a JetStream domain: 1 to 64 characters | both
        jetstream.hub_domain = ""                            | jetstream.hub_domain | ""       | a JetStream domain: 1 to 64 characters | both
        jetstream.domain = "hub"; jetstream.hub_domain = "hub" | jetstream.hub_domain | "hub" | excludes jetstream.domain | both"#,
    );
    assert_eq!(
        accepted(r#"jetstream.domain = "hub""#)
            .jetstream
            .domain
            .as_deref(),
        Some("hub")
    );
    let site = accepted(r#"jetstream.hub_domain = "hub""#);
    assert_eq!(site.jetstream.hub_domain.as_deref(), Some("hub"));
    assert_eq!(accepted("").jetstream.hub_domain, None);
}
