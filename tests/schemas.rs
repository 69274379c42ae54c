//! The JSON Schemas in `schemas/` and the Rust side agree: every schema is a valid draft 2020-12 document,
//! every example validates and is read by the Rust types, every invalid example is refused by both for the
//! same rule, every reply the Rust types write conforms, and the documented config defaults are the ones
//! the loader applies.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use itg::config::{Config, ConfigError, LogFormat};
use itg::contract::{
    self, Event, EventKind, Failed, FailureReason, GatewayRef, Proxy, Ready, Released, Removed,
    Reply,
};
use jsonschema::Validator;
use serde_json::{Value, json};

const SCHEMAS: [&str; 6] = ["started", "ended", "ready", "failed", "removed", "config"];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(dir().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn schema(name: &str) -> Value {
    serde_json::from_str(&read(&format!("{name}.schema.json"))).unwrap()
}

/// Formats asserted: what a strict consumer checks.
fn strict(name: &str) -> Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema(name))
        .unwrap_or_else(|e| panic!("{name}.schema.json does not compile: {e}"))
}

/// Formats as annotations, the 2020-12 default: the patterns alone must hold the line.
fn lenient(name: &str) -> Validator {
    jsonschema::draft202012::new(&schema(name))
        .unwrap_or_else(|e| panic!("{name}.schema.json does not compile: {e}"))
}

/// An example as JSON, whether it is written in JSON or YAML.
fn document(rel: &str) -> Value {
    let text = read(rel);
    if rel.ends_with(".yaml") {
        serde_norway::from_str(&text).unwrap()
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

/// The distinct instance locations (JSON pointers) the schema complains about.
fn error_locations(v: &Validator, doc: &Value) -> BTreeSet<String> {
    v.iter_errors(doc)
        .map(|e| e.instance_path().as_str().to_owned())
        .collect()
}

fn assert_conforms(name: &str, doc: &Value) {
    for v in [strict(name), lenient(name)] {
        let errors: Vec<String> = v.iter_errors(doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {doc}\n{errors:#?}");
    }
}

/// `proxy_ports[1].port` as a JSON pointer: `/proxy_ports/1/port`.
fn field_to_pointer(field: &str) -> String {
    format!("/{}", field.replace(']', "").replace(['[', '.'], "/"))
}

/// The names of the files in a directory under `schemas/`.
fn files(sub: &str) -> BTreeSet<String> {
    let entries = std::fs::read_dir(dir().join(sub))
        .unwrap()
        .map(Result::unwrap);
    let files = entries.filter(|e| e.file_type().unwrap().is_file());
    files
        .map(|e| e.file_name().into_string().unwrap())
        .collect()
}

/// The schema an example file belongs to: the part of its name before the first '.'.
fn schema_of(file: &str) -> &str {
    file.split('.').next().unwrap()
}

#[test]
fn every_schema_is_a_draft_2020_12_document_that_compiles() {
    let mut on_disk = files("");
    on_disk.retain(|n| n.ends_with(".schema.json"));
    let known = SCHEMAS.map(|s| format!("{s}.schema.json")).into();
    assert_eq!(
        on_disk, known,
        "a schema without a test or a test without a schema"
    );
    for name in SCHEMAS {
        let s = schema(name);
        let draft = "https://json-schema.org/draft/2020-12/schema";
        assert_eq!(s["$schema"], draft, "{name}");
        if let Err(e) = jsonschema::draft202012::meta::validate(&s) {
            panic!("{name}.schema.json breaks the 2020-12 meta-schema: {e}");
        }
        strict(name);
        lenient(name);
    }
}

#[test]
fn every_valid_example_validates_against_its_schema() {
    let examples = files("examples");
    assert_eq!(examples.len(), 7, "{examples:?}");
    for file in &examples {
        assert!(SCHEMAS.contains(&schema_of(file)), "{file} has no schema");
        assert_conforms(schema_of(file), &document(&format!("examples/{file}")));
    }
}

#[test]
fn the_event_examples_decode_to_the_values_they_hold() {
    let read_as = |kind, file: &str| {
        let doc = document(&format!("examples/{file}"));
        let event = contract::decode_event(kind, doc.to_string().as_bytes()).unwrap();
        assert_eq!(event.event_id().to_string(), doc["event_id"], "{file}");
        assert_eq!(event.allocation_id(), doc["allocation_id"], "{file}");
        (event, doc)
    };
    let (Event::Started(s), doc) = read_as(EventKind::Started, "started.json") else {
        panic!("started.json decoded as another kind")
    };
    assert_eq!(s.task_id.as_deref(), doc["task_id"].as_str());
    assert_eq!(s.namespace, doc["namespace"]);
    assert_eq!(json!(s.pod_selector), doc["pod_selector"]);
    assert_eq!(json!(s.proxy_ports), doc["proxy_ports"]);
    assert_eq!(s.occurred_at.as_deref(), doc["occurred_at"].as_str());
    let (Event::Ended(e), doc) = read_as(EventKind::Ended, "ended.json") else {
        panic!("ended.json decoded as another kind")
    };
    assert_eq!(e.occurred_at.as_deref(), doc["occurred_at"].as_str());
}

fn round_trip<T: serde::de::DeserializeOwned>(name: &str, wrap: fn(T) -> Reply) {
    let doc = document(&format!("examples/{name}.json"));
    let typed: T = serde_json::from_value(doc.clone()).unwrap();
    let again: Value = serde_json::from_slice(&wrap(typed).to_json()).unwrap();
    assert_eq!(again, doc, "{name} changed in the Rust type");
    assert_conforms(name, &again);
}

#[test]
fn reply_examples_round_trip_through_the_rust_types_unchanged() {
    round_trip::<Ready>("ready", Reply::Ready);
    round_trip::<Failed>("failed", Reply::Failed);
    round_trip::<Removed>("removed", Reply::Removed);
}

#[test]
fn both_config_examples_load_with_the_rust_loader() {
    let full = Config::parse(&read("examples/config.yaml"), "config.yaml").unwrap();
    assert_eq!(full.resource_managers.len(), 3);
    let west = &full.resource_managers[0];
    let allowed = json!(["team-vision", "team-nlp"]);
    assert_eq!(json!(west.allowed_namespaces), allowed);
    assert_eq!(west.excluded_port_set().len(), 11);
    assert_eq!(full.resource_managers[1].port_range(), 40000..=40000);
    let minimal = Config::parse(&read("examples/config.minimal.yaml"), "minimal").unwrap();
    assert_eq!(minimal.resource_managers[0].name, "k8s-west");
    assert_eq!(minimal.resource_managers[0].port_range(), 40000..=40063);
}

/// Each invalid example, and where it breaks its one rule (a JSON pointer into the document). For the
/// unknown key, the schema blames the object holding the typo; both messages name the typo itself.
const INVALID: &str = "
    config.bad-rm-name.yaml               /resource_managers/0/name
    config.port-range-too-low.yaml        /resource_managers/0/internal_task_gateway/gateway_port_range_start
    config.unknown-key.yaml               /resource_managers/0/internal_task_gateway
    failed.unknown-reason.json            /reason
    started.allocation-id-whitespace.json /allocation_id
    started.bad-namespace.json            /namespace
    started.no-proxy-ports.json           /proxy_ports
    started.port-zero.json                /proxy_ports/1/port
    started.wrong-schema-version.json     /schema_version";

/// What the Rust side says about an invalid example: the JSON pointer it blames, and its message.
fn rust_refusal(file: &str, doc: &Value) -> (String, String) {
    let text = read(&format!("examples/invalid/{file}"));
    match schema_of(file) {
        "started" => {
            let e = contract::decode_event(EventKind::Started, text.as_bytes()).unwrap_err();
            // One rule is broken, so the ids are valid and must be carried for the failed reply.
            let event_id = e.event_id.map(|u| u.to_string());
            assert_eq!(event_id.as_deref(), doc["event_id"].as_str(), "{file}");
            if e.field != "allocation_id" {
                assert_eq!(e.allocation_id.as_deref(), doc["allocation_id"].as_str());
            }
            (field_to_pointer(&e.field), e.to_string())
        }
        "failed" => {
            let e = serde_json::from_str::<Failed>(&text).unwrap_err();
            // serde names the variant it could not read, not the key; the variant is unique to `reason`.
            let e = e.to_string();
            let at = if e.contains("`quota_exceeded`") {
                "/reason"
            } else {
                "?"
            };
            (at.to_owned(), e)
        }
        "config" => match Config::parse(&text, file).unwrap_err() {
            ConfigError::Rule { key, value, rule } => {
                (field_to_pointer(&key), format!("{key} = {value}: {rule}"))
            }
            ConfigError::Parse { message, .. } => {
                let path = message.split(": ").next().unwrap_or_default();
                (field_to_pointer(path), message)
            }
            e @ ConfigError::Read { .. } => panic!("{e}"),
        },
        other => panic!("no Rust reader for invalid {other} examples: {file}"),
    }
}

#[test]
fn every_invalid_example_is_refused_by_the_schema_and_the_rust_side_at_the_same_place() {
    let lines = INVALID.lines().filter_map(|l| l.trim().split_once(' '));
    let table: Vec<(&str, &str)> = lines.map(|(file, at)| (file, at.trim())).collect();
    let listed: BTreeSet<String> = table.iter().map(|(f, _)| f.to_string()).collect();
    let on_disk = files("examples/invalid");
    assert_eq!(on_disk, listed, "an invalid example without an expectation");
    for (file, at) in table {
        let name = schema_of(file);
        let doc = document(&format!("examples/invalid/{file}"));
        // Refused even when formats are mere annotations, and at exactly one place.
        let schema_at = error_locations(&lenient(name), &doc);
        assert_eq!(schema_at, BTreeSet::from([at.to_owned()]), "{file}");
        assert!(!strict(name).is_valid(&doc), "{file}");
        let (rust_at, message) = rust_refusal(file, &doc);
        assert_eq!(rust_at, at, "{file}: Rust says {message}");
    }
}

#[test]
fn invalid_config_examples_are_refused_with_a_message_naming_the_key() {
    let keys = "bad-rm-name: resource_managers[0].name,
        port-range-too-low: resource_managers[0].internal_task_gateway.gateway_port_range_start,
        unknown-key: resource_managers[0].internal_task_gateway: unknown field `gateway_nmae`";
    for (file, key) in keys.split(',').filter_map(|l| l.trim().split_once(": ")) {
        let file = format!("examples/invalid/config.{file}.yaml");
        let e = Config::parse(&read(&file), &file).unwrap_err();
        assert!(e.to_string().contains(key), "{file}: {e}");
    }
    let doc = document("examples/invalid/config.unknown-key.yaml");
    let e = lenient("config").validate(&doc).unwrap_err().to_string();
    assert!(e.contains("gateway_nmae"), "the schema's complaint: {e}");
}

fn ready(gateway_ip: &str) -> Ready {
    let proxy = |(name, container_port, gateway_port): (&str, u16, u16)| Proxy {
        name: name.into(),
        container_port,
        gateway_port,
        address: contract::proxy_address(gateway_ip, gateway_port),
    };
    let proxies = vec![
        proxy(("jupyter", 2988, 40000)),
        proxy(("tensorboard", 6006, 40001)),
    ];
    Ready {
        schema_version: contract::SCHEMA_VERSION,
        resource_manager: "k8s-west".into(),
        allocation_id: "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e.1".into(),
        source_event_id: "0b7e4c52-9a1d-4f3e-8c2a-5d6e7f801234".into(),
        gateway: GatewayRef {
            namespace: "gateway-system".into(),
            name: "itg.east".into(),
        },
        proxies,
    }
}

fn emitted(reply: Reply) -> Value {
    serde_json::from_slice(&reply.to_json()).unwrap()
}

#[test]
fn ready_replies_written_by_rust_conform_for_ipv4_ipv6_and_dns_gateways() {
    for ip in ["203.0.113.10", "2001:db8::1", "gw.example.com"] {
        assert_conforms("ready", &emitted(Reply::Ready(ready(ip))));
    }
    let v6 = emitted(Reply::Ready(ready("2001:db8::1")));
    assert_eq!(v6["proxies"][0]["address"], "[2001:db8::1]:40000");
}

#[test]
fn failed_replies_written_by_rust_conform_for_every_reason_and_for_unreadable_events() {
    use FailureReason::*;
    let reasons = [
        InvalidEvent,
        UnknownResourceManager,
        NamespaceNotAllowed,
        CapacityExhausted,
        KubernetesError,
        Timeout,
        GatewayRejected,
    ];
    let documented = &schema("failed")["properties"]["reason"]["enum"];
    let written: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        json!(written),
        *documented,
        "the Rust reasons and the schema's enum differ"
    );
    for (i, reason) in reasons.into_iter().enumerate() {
        let readable = i % 2 == 0;
        let failed = Failed {
            schema_version: contract::SCHEMA_VERSION,
            resource_manager: "k8s-west".into(),
            allocation_id: readable.then(|| "6f1c2d3e.1".into()),
            source_event_id: readable.then(|| "0b7e4c52-9a1d-4f3e-8c2a-5d6e7f801234".into()),
            reason,
            message: format!("field `namespace`: the rule behind {reason}"),
            retryable: matches!(reason, FailureReason::CapacityExhausted),
        };
        let v = emitted(Reply::Failed(failed));
        assert_eq!(
            v["reason"],
            reason.to_string(),
            "serde and Display disagree"
        );
        assert_eq!(v["source_event_id"].is_null(), !readable);
        assert_conforms("failed", &v);
    }
}

#[test]
fn removed_replies_written_by_rust_conform_with_and_without_released_ports() {
    let jupyter = Released {
        name: "jupyter".into(),
        gateway_port: 40000,
    };
    for released in [vec![], vec![jupyter]] {
        let removed = Removed {
            schema_version: contract::SCHEMA_VERSION,
            resource_manager: "k8s_west-2".into(),
            allocation_id: "a/b*c>d.1".into(),
            source_event_id: "c3a9e1f0-27b4-4d8a-9f61-0e2d3c4b5a69".into(),
            released,
        };
        assert_conforms("removed", &emitted(Reply::Removed(removed)));
    }
}

/// The `default` the config schema documents for a key: `jetstream/replicas`, `resource_managers/*/...`.
fn documented_default(key: &str) -> Value {
    let step = |k| {
        if k == "*" {
            "/items".to_owned()
        } else {
            format!("/properties/{k}")
        }
    };
    let at: String = key.split('/').map(step).collect();
    schema("config")
        .pointer(&format!("{at}/default"))
        .unwrap_or_else(|| panic!("{key} documents no default"))
        .clone()
}

fn documented_duration(key: &str) -> Duration {
    humantime::parse_duration(documented_default(key).as_str().unwrap()).unwrap()
}

/// Every key the config schema gives a default (objects whose default is `{}` aside), as `a/b`.
fn keys_with_defaults(node: &Value, at: &str, out: &mut BTreeSet<String>) {
    if node.get("default").is_some_and(|d| d != &json!({})) {
        out.insert(at.trim_start_matches('/').to_owned());
    }
    for (k, child) in node["properties"].as_object().into_iter().flatten() {
        keys_with_defaults(child, &format!("{at}/{k}"), out);
    }
    if node.get("items").is_some() {
        keys_with_defaults(&node["items"], &format!("{at}/*"), out);
    }
}

#[test]
fn the_config_schemas_documented_defaults_are_the_loaders_defaults() {
    let c = Config::parse(&read("examples/config.minimal.yaml"), "minimal").unwrap();
    let (js, w, rm) = (&c.jetstream, &c.worker, &c.resource_managers[0]);
    let log_format: LogFormat = serde_json::from_value(documented_default("log_format")).unwrap();
    assert_eq!(c.log_format, log_format);
    let mode: itg::config::ListenerMode =
        serde_json::from_value(documented_default("resource_managers/*/listener_mode")).unwrap();
    assert_eq!(rm.listener_mode, mode);
    let values = [
        ("jetstream/replicas", json!(js.replicas)),
        ("jetstream/state_bucket", json!(js.state_bucket)),
        ("jetstream/consumer_prefix", json!(js.consumer_prefix)),
        ("jetstream/max_deliver", json!(js.max_deliver)),
        ("worker/concurrency", json!(w.concurrency)),
        ("admin/address", json!(c.admin.address)),
        ("nats/connection_name", json!(c.nats.connection_name)),
        (
            "resource_managers/*/listener_limit",
            json!(rm.listener_limit),
        ),
        (
            "resource_managers/*/excluded_ports",
            json!(rm.excluded_port_set()),
        ),
        (
            "resource_managers/*/wait_for_controller",
            json!(rm.wait_for_controller),
        ),
        ("resource_managers/*/gateway_pool", json!(rm.gateway_pool)),
    ];
    for (key, got) in &values {
        assert_eq!(*got, documented_default(key), "{key}");
    }
    let durations = [
        ("jetstream/events_max_age", js.events_max_age),
        ("jetstream/replies_max_age", js.replies_max_age),
        ("jetstream/duplicate_window", js.duplicate_window),
        ("jetstream/ack_wait", js.ack_wait),
        ("worker/capacity_deadline", w.capacity_deadline),
        ("worker/kubernetes_deadline", w.kubernetes_deadline),
        ("worker/kubernetes_call_timeout", w.kubernetes_call_timeout),
        ("worker/controller_deadline", w.controller_deadline),
        ("worker/retry_min", w.retry_min),
        ("worker/retry_max", w.retry_max),
        ("worker/shutdown_timeout", w.shutdown_timeout),
        ("worker/reconcile_interval", w.reconcile_interval),
        ("worker/reconcile_hold_off", w.reconcile_hold_off),
        (
            "resource_managers/*/data_plane_probe/grace",
            rm.data_plane_probe.grace,
        ),
        (
            "resource_managers/*/data_plane_probe/deadline",
            rm.data_plane_probe.deadline,
        ),
        (
            "resource_managers/*/data_plane_probe/connect_timeout",
            rm.data_plane_probe.connect_timeout,
        ),
    ];
    for (key, got) in durations {
        assert_eq!(got.0, documented_duration(key), "{key}");
    }
    // A default documented for a new key must be checked here too.
    let mut documented = BTreeSet::new();
    keys_with_defaults(&schema("config"), "", &mut documented);
    let checked = values
        .iter()
        .map(|(k, _)| *k)
        .chain(durations.map(|(k, _)| k));
    let checked: BTreeSet<String> = checked
        .chain(["log_format", "resource_managers/*/listener_mode"])
        .map(str::to_owned)
        .collect();
    assert_eq!(documented, checked);
}

mod differential {
    //! Generated started events, each one or two fields away from the example: the schema and the Rust
    //! decoder reach the same verdict. The one rule the schema cannot state, unique names and ports within
    //! proxy_ports, is the only place the decoder may be stricter.

    use std::sync::LazyLock;

    use itg::contract::EventKind;
    use proptest::prelude::*;
    use proptest::strategy::Union;
    use serde_json::{Map, Value, json};
    use uuid::Uuid;

    use super::{contract, strict};

    static STARTED: LazyLock<jsonschema::Validator> = LazyLock::new(|| strict("started"));

    /// Strings matching a regex, compiled once (a `&str` strategy compiles it for every value).
    fn re(regex: &str) -> BoxedStrategy<Value> {
        let strings = proptest::string::string_regex(regex).unwrap();
        strings.prop_map(Value::from).boxed()
    }

    /// UUIDs in every spelling `uuid` reads, and near misses.
    fn event_id() -> BoxedStrategy<Value> {
        let spelled = (any::<u128>(), 0..5).prop_map(|(n, form)| {
            let u = Uuid::from_u128(n);
            json!(match form {
                0 => u.hyphenated().to_string(),
                1 => u.hyphenated().to_string().to_uppercase(),
                2 => u.simple().to_string(),
                3 => u.braced().to_string(),
                _ => u.urn().to_string(),
            })
        });
        prop_oneof![4 => spelled, 1 => re("[0-9a-fA-F-]{34,38}")].boxed()
    }

    fn pod_selector() -> BoxedStrategy<Value> {
        let key = re(
            "([a-z0-9]{1,4}\\.){0,2}[a-z0-9]{1,4}/[A-Za-z0-9]([-A-Za-z0-9_.]{0,8}[A-Za-z0-9])?\
                      |[A-Za-z0-9]([-A-Za-z0-9_.]{0,62}[A-Za-z0-9])?|[A-Za-z0-9/._ -]{0,66}",
        );
        let key = key.prop_map(|k| k.as_str().unwrap_or_default().to_owned());
        let value = re("(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?|[A-Za-z0-9._ -]{0,65}");
        let value = prop_oneof![5 => value, 1 => Just(json!(5)), 1 => Just(Value::Null)];
        let pairs = prop::collection::btree_map(key, value, 0..18);
        let object = |m: std::collections::BTreeMap<_, _>| Value::Object(m.into_iter().collect());
        pairs.prop_map(object).boxed()
    }

    fn proxy_ports() -> BoxedStrategy<Value> {
        let name = re("[a-z0-9]{0,2}[a-z](-?[a-z0-9]){0,6}|[a-cA-C0-9-]{0,4}|[a-z-]{14,17}");
        let (any_port, small) = (
            (-1i64..=65536).prop_map(Value::from),
            (1i64..=4).prop_map(Value::from),
        );
        let port = prop_oneof![4 => any_port, 2 => small, 1 => Just(json!("80"))];
        let item = (
            prop::option::weighted(0.95, name),
            prop::option::weighted(0.95, port),
        );
        let item = item.prop_map(|(name, port)| {
            let mut o = Map::new();
            o.extend(name.map(|n| ("name".to_owned(), n)));
            o.extend(port.map(|p| ("port".to_owned(), p)));
            Value::Object(o)
        });
        prop::collection::vec(item, 0..18)
            .prop_map(Value::Array)
            .boxed()
    }

    /// A field of the started example and what to put there (`None`: remove it).
    fn change() -> impl Strategy<Value = (&'static str, Option<Value>)> {
        let version = prop_oneof![(-1i64..3).prop_map(Value::from), Just(json!("1"))];
        let at = re(
            "20[0-9]{2}-[01][0-9]-[0-3][0-9][Tt ][0-2][0-9]:[0-5][0-9](:[0-5][0-9])?\
                     (\\.[0-9]{0,12})?([Zz]|[+-][0-2][0-9]:?[0-6][0-9])?",
        );
        let at = prop_oneof![3 => at, 1 => any::<i64>().prop_map(Value::from)];
        let allocation_id = re("[!-~]{1,255}|[ -~]{0,4}|[!-~]{254,258}|\\PC{0,8}");
        let namespace = re("[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?|[a-zA-Z0-9_.-]{0,65}|\\PC{0,8}");
        let fields = [
            ("schema_version", version.boxed()),
            ("event_id", event_id()),
            ("allocation_id", allocation_id),
            (
                "task_id",
                prop_oneof![re("\\PC{0,8}"), Just(json!(7))].boxed(),
            ),
            ("namespace", namespace),
            ("pod_selector", pod_selector()),
            ("proxy_ports", proxy_ports()),
            ("occurred_at", at.boxed()),
        ];
        let change = |(field, s): (&'static str, BoxedStrategy<Value>)| {
            prop::option::weighted(0.95, s).prop_map(move |v| (field, v))
        };
        Union::new(fields.map(change))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        #[test]
        fn the_schema_and_the_decoder_agree_on_generated_started_events(
            changes in prop::collection::vec(change(), 1..3)
        ) {
            let mut doc = super::document("examples/started.json");
            for (field, value) in changes {
                match value {
                    Some(v) => doc[field] = v,
                    None => drop(doc.as_object_mut().unwrap().remove(field)),
                }
            }
            let by_schema = STARTED.is_valid(&doc);
            match contract::decode_event(EventKind::Started, doc.to_string().as_bytes()) {
                Ok(_) if !by_schema => {
                    let why: Vec<String> = STARTED.iter_errors(&doc).map(|e| e.to_string()).collect();
                    prop_assert!(false, "only the schema refuses {doc}: {why:?}");
                }
                Err(e) if by_schema => prop_assert!(
                    e.problem.contains("appears twice"),
                    "only the decoder refuses {doc}: {e}"
                ),
                _ => {}
            }
        }
    }
}

/// Every leaf key of a schema node (arrays of objects as `key[]`).
fn schema_leaves(node: &Value, path: &str, out: &mut BTreeSet<String>) {
    if node["type"] == "array" && node["items"]["properties"].is_object() {
        return schema_leaves(&node["items"], &format!("{path}[]"), out);
    }
    let Some(props) = node["properties"].as_object() else {
        out.insert(path.to_owned());
        return;
    };
    for (k, v) in props {
        let p = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        schema_leaves(v, &p, out);
    }
}

/// Every leaf key a document sets, in the same notation.
fn document_leaves(node: &Value, path: &str, out: &mut BTreeSet<String>) {
    match node {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                document_leaves(v, &p, out);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for item in items {
                document_leaves(item, &format!("{path}[]"), out);
            }
        }
        _ => {
            out.insert(path.to_owned());
        }
    }
}

#[test]
fn the_full_config_example_sets_every_key_of_the_schema_or_names_its_alternative() {
    let schema_keys = {
        let mut out = BTreeSet::new();
        schema_leaves(&schema("config"), "", &mut out);
        out
    };
    let text = read("examples/config.yaml");
    let doc = document("examples/config.yaml");
    assert_conforms("config", &doc);
    let set = {
        let mut out = BTreeSet::new();
        document_leaves(&doc, "", &mut out);
        out
    };
    for key in &set {
        assert!(
            schema_keys.contains(key),
            "the example sets {key}, which the schema lacks"
        );
    }
    // A key the example cannot set beside another (two ways to authenticate, two domains) is named in
    // full in a comment of the file, as the alternative to the one set.
    let comments: String = text
        .lines()
        .filter_map(|l| l.split_once('#').map(|(_, c)| c))
        .collect::<Vec<_>>()
        .join(" ");
    let mut alternatives = Vec::new();
    for key in schema_keys.difference(&set) {
        assert!(
            comments.contains(key.as_str()),
            "schemas/examples/config.yaml neither sets {key} nor names it as an alternative"
        );
        alternatives.push(key.as_str());
    }
    println!(
        "set: {}; named as alternatives: {alternatives:?}",
        set.len()
    );
    assert!(
        alternatives.len() <= 5,
        "only keys that exclude a key set here may be left to comments: {alternatives:?}"
    );
    for claim in ["README.md", "../deploy/base/configmap.yaml"] {
        assert!(
            read(claim).contains("every key"),
            "{claim} no longer says where every key is shown"
        );
    }
}
