//! Event decoding against the wire contract: every rule is refused naming the field, the ids of a bad event
//! are kept for the failed reply, subjects are built and parsed exactly, and no input makes the decoder
//! panic or lets a hostile allocation id reach a key or an object name unencoded.

use itg::contract::{self, Event, EventKind, InvalidEvent, MAX_PAYLOAD_BYTES, ReplyKind, Started};
use itg::{names, validate};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use uuid::Uuid;

const EVENT_ID: &str = "0b7e4c52-9a1d-4f3e-8c2a-5d6e7f801234";
const ALLOCATION_ID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e.1";

fn started() -> Value {
    json!({
        "schema_version": 1,
        "event_id": EVENT_ID,
        "allocation_id": ALLOCATION_ID,
        "task_id": "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e",
        "namespace": "team-vision",
        "pod_selector": { "determined.ai/allocation_id": ALLOCATION_ID },
        "proxy_ports": [ { "name": "jupyter", "port": 2988 }, { "name": "tensorboard", "port": 6006 } ],
        "occurred_at": "2025-03-14T09:26:53.589Z"
    })
}

/// The reference event with one field set (`None`: removed).
fn with(field: &str, value: impl Into<Option<Value>>) -> Value {
    let mut v = started();
    match value.into() {
        Some(value) => v[field] = value,
        None => drop(v.as_object_mut().unwrap().remove(field)),
    }
    v
}

fn decode(kind: EventKind, v: &Value) -> Result<Event, InvalidEvent> {
    contract::decode_event(kind, v.to_string().as_bytes())
}

#[track_caller]
fn decode_started(v: &Value) -> Started {
    match decode(EventKind::Started, v) {
        Ok(Event::Started(s)) => s,
        other => panic!("{v}: {other:?}"),
    }
}

/// Asserts the started event is refused blaming `field`, with a problem that says `word`.
#[track_caller]
fn refused(v: &Value, field: &str, word: &str) -> InvalidEvent {
    match decode(EventKind::Started, v) {
        Err(e) => {
            assert_eq!(e.field, field, "{v}: {e}");
            assert!(e.problem.contains(word), "{v}: {e} should say {word:?}");
            assert!(e.to_string().contains(field), "{e}");
            e
        }
        Ok(ev) => panic!("accepted {v}: {ev:?}"),
    }
}

/// Runs a table of refusals, one rule per line: `field | values | blamed | word`. `values` is a
/// comma-separated list of JSON values to put in `field` (`-`: remove it); each must be refused blaming
/// `blamed`, with a problem that says `word`.
#[track_caller]
fn refusals(table: &str) {
    for line in table.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = line.split(" | ").map(str::trim).collect();
        let [field, values, blamed, word] = cols[..] else {
            panic!("bad table line {line:?}")
        };
        let values = match values {
            "-" => vec![None],
            _ => list(&format!("[{values}]")).into_iter().map(Some).collect(),
        };
        for value in values {
            refused(&with(field, value), blamed, word);
        }
    }
}

/// Asserts each value is accepted in `field`.
#[track_caller]
fn accepted_in(field: &str, values: impl IntoIterator<Item = Value>) -> Vec<Started> {
    values
        .into_iter()
        .map(|v| decode_started(&with(field, v)))
        .collect()
}

fn list(json: &str) -> Vec<Value> {
    serde_json::from_str(json).unwrap()
}

fn selector(n: usize) -> Value {
    Value::Object((0..n).map(|i| (format!("k{i}"), json!("v"))).collect())
}

fn ports(n: usize) -> Value {
    let port = |i| json!({ "name": format!("p{i}"), "port": 8000 + i });
    Value::Array((0..n).map(port).collect())
}

#[test]
fn the_reference_event_decodes_so_each_refusal_below_is_about_its_one_change() {
    let s = decode_started(&started());
    assert_eq!(s.event_id.to_string(), EVENT_ID);
    assert_eq!(s.allocation_id, ALLOCATION_ID);
    assert_eq!(json!(s.proxy_ports), started()["proxy_ports"]);
}

#[test]
fn started_refuses_any_schema_version_but_1() {
    refusals(
        r#"
        schema_version | 2, 0, -1, "1", 1.5, null | schema_version | must be 1
        schema_version | -                        | schema_version | missing"#,
    );
}

#[test]
fn started_refuses_a_missing_or_non_uuid_event_id() {
    // Other spellings of a UUID are refused too: replies echo the id, so it has one way to be written.
    refusals(
        r#"
        event_id | -                                    | event_id | missing
        event_id | 42, null                             | event_id | string
        event_id | "not-a-uuid", "", "{EVENT}"          | event_id | UUID
        event_id | "0b7e4c529a1d4f3e8c2a5d6e7f801234"   | event_id | UUID
        event_id | "urn:uuid:0b7e4c52-9a1d-4f3e-8c2a-5d6e7f801234" | event_id | UUID
        event_id | "0b7e4c52-9a1d-4f3e-8c2a-5d6e7f80123g" | event_id | UUID"#
            .replace("EVENT", EVENT_ID)
            .as_str(),
    );
    let upper = accepted_in("event_id", [json!(EVENT_ID.to_uppercase())]);
    assert_eq!(upper[0].event_id.to_string(), EVENT_ID);
}

#[test]
fn started_refuses_allocation_ids_that_are_not_1_to_255_printable_ascii() {
    refusals(
        r#"
        allocation_id | -                            | allocation_id | missing
        allocation_id | 7, null                      | allocation_id | string
        allocation_id | "a b", "", "alloc-é"         | allocation_id | printable ASCII
        allocation_id | "tab\there", "nl\n", "\u007f" | allocation_id | printable ASCII"#,
    );
    let long = with("allocation_id", json!("x".repeat(256)));
    assert_eq!(refused(&long, "allocation_id", "255").allocation_id, None);
    let good = list(r#"["!~/*>.=", "a", "6f1c.1"]"#);
    let good = [good, vec![json!("x".repeat(255))]].concat();
    let ids = accepted_in("allocation_id", good);
    assert_eq!(ids[3].allocation_id.len(), 255);
}

#[test]
fn started_refuses_a_namespace_that_is_not_a_dns1123_label() {
    refusals(
        r#"
        namespace | -                                   | namespace | missing
        namespace | 5                                   | namespace | string
        namespace | "Team", "-team", "team-", ""        | namespace | DNS-1123
        namespace | "team_vision", "team.vision", "a b" | namespace | DNS-1123"#,
    );
    let long = with("namespace", json!("n".repeat(64)));
    refused(&long, "namespace", "DNS-1123");
    accepted_in("namespace", [json!("n".repeat(63)), json!("0-a")]);
}

#[test]
fn started_refuses_pod_selectors_outside_1_to_16_valid_label_pairs() {
    refusals(
        r#"
        pod_selector | -                       | pod_selector                 | missing
        pod_selector | {}                      | pod_selector                 | 1 to 16
        pod_selector | ["app"], "app=x"        | pod_selector                 | object
        pod_selector | {"bad key": "v"}        | pod_selector."bad key"       | key
        pod_selector | {"-app": "v"}           | pod_selector."-app"          | key
        pod_selector | {"a/b/c": "v"}          | pod_selector."a/b/c"         | key
        pod_selector | {"/app": "v"}           | pod_selector."/app"          | key
        pod_selector | {"Example.com/a": "v"}  | pod_selector."Example.com/a" | key
        pod_selector | {"app": "has space"}    | pod_selector."app"           | value
        pod_selector | {"app": "-v"}, {"app": 5}, {"app": null} | pod_selector."app" | value"#,
    );
    let seventeen = with("pod_selector", selector(17));
    refused(&seventeen, "pod_selector", "1 to 16");
    let long_key = json!({ "k".repeat(64): "v" });
    let field = format!("pod_selector.{:?}", "k".repeat(64));
    refused(&with("pod_selector", long_key), &field, "key");
    let long_value = with("pod_selector", json!({ "app": "v".repeat(64) }));
    refused(&long_value, "pod_selector.\"app\"", "value");
    let pairs = json!({ "example.com/app": "", "a": "b.c_d-e", "app.kubernetes.io/name": "nb" });
    let ok = accepted_in("pod_selector", [pairs.clone(), selector(16)]);
    assert_eq!(json!(ok[0].pod_selector), pairs);
    assert_eq!(ok[1].pod_selector.len(), 16);
}

#[test]
fn started_refuses_proxy_ports_outside_1_to_16_entries() {
    refusals(
        r#"
        proxy_ports | -                        | proxy_ports    | missing
        proxy_ports | []                       | proxy_ports    | 1 to 16
        proxy_ports | {"name": "a", "port": 1} | proxy_ports    | array
        proxy_ports | ["jupyter"], [null]      | proxy_ports[0] | object"#,
    );
    refused(&with("proxy_ports", ports(17)), "proxy_ports", "1 to 16");
    let sixteen = accepted_in("proxy_ports", [ports(16)]);
    assert_eq!(sixteen[0].proxy_ports.len(), 16);
}

#[test]
fn started_refuses_duplicate_proxy_port_names_and_ports_naming_the_second() {
    refusals(
        r#"
        proxy_ports | [{"name": "a", "port": 80}, {"name": "a", "port": 81}] | proxy_ports[1].name | unique
        proxy_ports | [{"name": "a", "port": 80}, {"name": "b", "port": 80}] | proxy_ports[1].port | unique"#,
    );
}

#[test]
fn started_refuses_proxy_ports_outside_1_to_65535() {
    refusals(
        r#"
        proxy_ports | [{"name": "web", "port": 0}], [{"name": "web", "port": 65536}] | proxy_ports[0].port | 1 to 65535
        proxy_ports | [{"name": "web", "port": -1}], [{"name": "web", "port": "80"}] | proxy_ports[0].port | 1 to 65535
        proxy_ports | [{"name": "web", "port": 80.5}], [{"name": "web"}]            | proxy_ports[0].port | 1 to 65535"#,
    );
    let edges = list(r#"[[{"name": "a", "port": 1}], [{"name": "a", "port": 65535}]]"#);
    let ok = accepted_in("proxy_ports", edges);
    assert_eq!(ok[0].proxy_ports[0].port, 1);
    assert_eq!(ok[1].proxy_ports[0].port, 65535);
}

#[test]
fn started_refuses_proxy_port_names_that_are_not_iana_service_names() {
    let bad = r#"["6006", "a--b", "UPPER", "sixteen-chars-xx", "-web", "web-", "", "wéb", "a b"]"#;
    for name in list(bad) {
        let doc = with("proxy_ports", json!([{ "name": name, "port": 80 }]));
        refused(&doc, "proxy_ports[0].name", "IANA");
    }
    refusals(
        r#"
        proxy_ports | [{"name": 5, "port": 80}], [{"port": 80}] | proxy_ports[0].name | string"#,
    );
    let one = |n| json!([{ "name": n, "port": 80 }]);
    let good = ["tb-6006", "fifteen-chars-x", "a", "6006x"].map(one);
    accepted_in("proxy_ports", good);
}

#[test]
fn started_refuses_an_occurred_at_that_is_not_rfc3339() {
    refusals(
        r#"
        occurred_at | 1741944413, true                                     | occurred_at | string
        occurred_at | "yesterday", "2025-03-14", "2025-03-14 09:26:53Z"    | occurred_at | RFC 3339
        occurred_at | "2025-03-14T09:26Z", "2025-03-14T09:26:53"           | occurred_at | RFC 3339
        occurred_at | "2025-03-14T09:26:53.Z", "2025-03-14T09:26:53+0100"  | occurred_at | RFC 3339
        occurred_at | "2025-03-14T09:26:53+24:00", "20250314T092653Z"      | occurred_at | RFC 3339
        occurred_at | "2025-03-14T09:26:53Z[Europe/Paris]"                 | occurred_at | RFC 3339
        occurred_at | "2025-13-14T09:26:53Z", "2025-02-30T09:26:53Z"       | occurred_at | RFC 3339"#,
    );
    let good = list(
        r#"["2025-03-14T09:26:53Z", "2025-03-14t09:26:53z", "2025-03-14T09:26:53.589+01:00",
            "2025-03-14T09:26:53-00:00", "2025-03-14T09:26:53.123456789123Z"]"#,
    );
    for (s, at) in accepted_in("occurred_at", good.clone()).iter().zip(&good) {
        assert_eq!(s.occurred_at.as_deref(), at.as_str());
    }
    assert_eq!(decode_started(&with("occurred_at", None)).occurred_at, None);
}

#[test]
fn task_id_is_optional_but_must_be_a_string() {
    assert_eq!(decode_started(&with("task_id", None)).task_id, None);
    refused(&with("task_id", json!(7)), "task_id", "string");
}

#[test]
fn a_payload_that_is_not_a_json_object_is_refused_as_payload() {
    let texts = ["", "{", "not json", "[1, 2]", "\"started\"", "42", "null"];
    let mut payloads: Vec<Vec<u8>> = texts.map(|t| t.as_bytes().to_vec()).to_vec();
    payloads.push(b"{\"schema_version\": 1, \xff}".to_vec());
    for bytes in &payloads {
        for kind in [EventKind::Started, EventKind::Ended] {
            let e = contract::decode_event(kind, bytes).unwrap_err();
            assert_eq!(e.field, "payload", "{}", String::from_utf8_lossy(bytes));
            assert_eq!((e.event_id, e.allocation_id), (None, None));
        }
    }
}

#[test]
fn a_payload_over_64_kib_is_refused_before_it_is_parsed() {
    // Valid JSON padded with spaces: had it been parsed, it would have been accepted.
    let body = started().to_string();
    let padded = |len: usize| format!("{body}{}", " ".repeat(len - body.len())).into_bytes();
    assert_eq!(MAX_PAYLOAD_BYTES, 64 * 1024);
    assert!(contract::decode_event(EventKind::Started, &padded(MAX_PAYLOAD_BYTES)).is_ok());
    let e = contract::decode_event(EventKind::Started, &padded(MAX_PAYLOAD_BYTES + 1)).unwrap_err();
    assert_eq!(e.field, "payload");
    assert!(e.problem.contains("65537"), "{e}");
    assert_eq!((e.event_id, e.allocation_id), (None, None));
}

#[test]
fn refusals_carry_the_event_and_allocation_ids_that_were_valid() {
    let ids = |e: InvalidEvent| (e.event_id.map(|u| u.to_string()), e.allocation_id);
    let both = (Some(EVENT_ID.to_owned()), Some(ALLOCATION_ID.to_owned()));
    let refuse = |field: &str, v: Value| ids(refused(&with(field, v), field, ""));
    assert_eq!(refuse("namespace", json!("Bad")), both);
    assert_eq!(refuse("schema_version", json!(2)), both);
    assert_eq!(refuse("proxy_ports", json!([])), both);
    assert_eq!(refuse("event_id", json!("nope")), (None, both.1.clone()));
    assert_eq!(
        refuse("allocation_id", json!("a b")),
        (both.0.clone(), None)
    );
    let mut ended =
        json!({ "schema_version": 3, "event_id": EVENT_ID, "allocation_id": ALLOCATION_ID });
    let e = decode(EventKind::Ended, &ended).unwrap_err();
    assert_eq!(ids(e), both);
    ended["event_id"] = json!(7);
    assert_eq!(ids(decode(EventKind::Ended, &ended).unwrap_err()).0, None);
}

#[test]
fn unknown_top_level_fields_are_accepted_and_ignored() {
    let mut v = started();
    v["priority"] = json!(42);
    v["labels"] = json!({ "nested": [1, 2, { "deep": null }] });
    assert_eq!(decode_started(&v), decode_started(&started()));
    let ended =
        json!({ "schema_version": 1, "event_id": EVENT_ID, "allocation_id": "a.1", "why": "done" });
    assert!(decode(EventKind::Ended, &ended).is_ok());
}

#[test]
fn ended_needs_only_schema_version_event_id_and_allocation_id() {
    let minimal =
        json!({ "schema_version": 1, "event_id": EVENT_ID, "allocation_id": ALLOCATION_ID });
    let Ok(Event::Ended(e)) = decode(EventKind::Ended, &minimal) else {
        panic!("minimal ended refused")
    };
    let got = (e.event_id.to_string(), e.allocation_id, e.occurred_at);
    assert_eq!(got, (EVENT_ID.into(), ALLOCATION_ID.into(), None));
    for field in ["schema_version", "event_id", "allocation_id"] {
        let mut v = minimal.clone();
        v.as_object_mut().unwrap().remove(field);
        assert_eq!(decode(EventKind::Ended, &v).unwrap_err().field, field);
    }
    let mut late = minimal.clone();
    late["occurred_at"] = json!("soon");
    let e = decode(EventKind::Ended, &late).unwrap_err();
    assert_eq!(e.field, "occurred_at");
    // A started body read as ended: its started-only fields are not looked at.
    let bad_started = with("namespace", json!("Not A Label"));
    let as_ended = decode(EventKind::Ended, &bad_started);
    assert!(matches!(as_ended, Ok(Event::Ended(_))), "{as_ended:?}");
}

#[test]
fn subjects_are_built_from_the_resource_manager_and_kind() {
    let started = contract::event_subject("k8s-west", EventKind::Started);
    let ended = contract::event_subject("k8s-west", EventKind::Ended);
    assert_eq!(started, "itg.events.k8s-west.started");
    assert_eq!(ended, "itg.events.k8s-west.ended");
    let replies = [ReplyKind::Ready, ReplyKind::Failed, ReplyKind::Removed]
        .map(|kind| contract::reply_subject("rm_1", kind));
    let want = ["ready", "failed", "removed"].map(|k| format!("itg.replies.rm_1.{k}"));
    assert_eq!(replies, want);
    assert_eq!(contract::EVENTS_SUBJECTS, "itg.events.>");
    assert_eq!(contract::REPLIES_SUBJECTS, "itg.replies.>");
}

#[test]
fn event_subjects_parse_back_and_nothing_else_does() {
    for kind in [EventKind::Started, EventKind::Ended] {
        let subject = contract::event_subject("k8s_west-2", kind);
        let parsed = contract::parse_event_subject(&subject);
        assert_eq!(parsed, Some(("k8s_west-2", kind)));
    }
    let long = format!("itg.events.{}.started", "r".repeat(65));
    let others = "itg.replies.k8s-west.ready itg.events.k8s-west.ready itg.events.k8s-west \
        itg.events.*.started itg.events.>.started itg.events.k8s-west.> itg.events.k8s-west.* \
        itg.events.a.b.started itg.events.k8s-west.started.extra itg.events..started \
        xitg.events.k8s-west.started ITG.EVENTS.k8s-west.started";
    let odd = [
        "",
        "itg.events.k8s west.started",
        "itg.events.k8s\twest.started",
        &long,
    ];
    for other in others.split_whitespace().chain(odd) {
        assert_eq!(contract::parse_event_subject(other), None, "{other}");
    }
}

/// A regex strategy compiled once: a `&str` strategy parses its regex for every value it makes.
fn re(regex: &str) -> proptest::string::RegexGeneratorStrategy<String> {
    proptest::string::string_regex(regex).unwrap()
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        re("\\PC{0,12}").prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let object = prop::collection::btree_map(re("\\PC{0,8}"), inner.clone(), 0..6);
        prop_oneof![
            prop::collection::vec(inner, 0..6).prop_map(Value::Array),
            object.prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

const FIELDS: &str =
    "schema_version event_id allocation_id task_id namespace pod_selector proxy_ports occurred_at";

/// A started event that keeps every rule, as JSON.
fn valid_started() -> impl Strategy<Value = Value> {
    let key = re(
        "(([a-z0-9]([-a-z0-9]{0,6}[a-z0-9])?\\.){0,2}[a-z0-9]{1,6}/)?\
                  [A-Za-z0-9]([-A-Za-z0-9_.]{0,12}[A-Za-z0-9])?",
    );
    let value = re("(([A-Za-z0-9][-A-Za-z0-9_.]{0,20})?[A-Za-z0-9])?");
    let name = std::sync::Arc::new(re("[a-z0-9]{0,2}[a-z](-?[a-z0-9]){0,6}"));
    let ports = (1usize..=16).prop_flat_map(move |n| {
        let names = prop::collection::btree_set(name.clone(), n);
        (names, prop::collection::hash_set(1u16..=65535, n))
    });
    let at = re(
        "20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:\
                 [0-5][0-9](\\.[0-9]{1,12})?([Zz]|[+-](0[0-9]|1[0-4]):[0-5][0-9])",
    );
    let allocation_id = prop_oneof![4 => re("[!-~]{1,40}"), 1 => re("[!-~]{250,255}")];
    let ids = (
        any::<u128>(),
        allocation_id,
        prop::option::of(re("\\PC{0,20}")),
    );
    let namespace = re("[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?");
    let selector = prop::collection::btree_map(key, value, 1..=16);
    let parts = (ids, namespace, selector, ports, prop::option::of(at));
    parts.prop_map(
        |((id, allocation_id, task_id), namespace, selector, (names, ports), at)| {
            let port = |(n, p)| json!({ "name": n, "port": p });
            let ports: Vec<Value> = names.into_iter().zip(ports).map(port).collect();
            let mut doc = json!({
                "schema_version": 1, "event_id": Uuid::from_u128(id).to_string(),
                "allocation_id": allocation_id, "namespace": namespace,
                "pod_selector": selector, "proxy_ports": ports,
            });
            for (field, v) in [("task_id", task_id), ("occurred_at", at)] {
                if let Some(v) = v {
                    doc[field] = json!(v);
                }
            }
            doc
        },
    )
}

fn hostile_allocation_id() -> impl Strategy<Value = String> {
    let chars = "./*> \ta9Z=-_é\u{0}😀%".chars().collect::<Vec<_>>();
    let chars = prop::sample::select(chars);
    prop_oneof![
        re("[./*> ]{0,20}"),
        re("\\PC{0,40}"),
        re("[!-~]{1,300}"),
        prop::collection::vec(chars.clone(), 0..64).prop_map(String::from_iter),
        prop::collection::vec(chars, 10_000..=10_240).prop_map(String::from_iter),
        Just(".".repeat(255)),
        Just("a.b.c/../*>".to_owned()),
    ]
}

/// Cases per property: 2,000 in every test run; `ITG_FUZZ_CASES=200000` for a long fuzzing run.
fn fuzz_cases() -> u32 {
    std::env::var("ITG_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::string::bytes_regex("(?s-u:.{0,512})").unwrap()) {
        for kind in [EventKind::Started, EventKind::Ended] {
            if let Err(e) = contract::decode_event(kind, &bytes) {
                prop_assert!(!e.field.is_empty());
            }
        }
    }

    #[test]
    fn arbitrary_json_never_panics_the_decoder_and_a_bad_field_is_blamed_by_name(
        doc in arbitrary_json(),
        field in prop::sample::select(FIELDS.split(' ').collect::<Vec<_>>()),
    ) {
        for kind in [EventKind::Started, EventKind::Ended] {
            let _ = contract::decode_event(kind, doc.to_string().as_bytes());
        }
        // The same value in one field of a valid event: accepted, or refused naming that field.
        if let Err(e) = decode(EventKind::Started, &with(field, doc)) {
            prop_assert!(e.field.starts_with(field), "{field} changed, {} blamed", e.field);
        }
    }

    #[test]
    fn any_valid_started_decodes_to_the_values_it_was_made_from(doc in valid_started()) {
        let s = decode_started(&doc);
        prop_assert_eq!(s.event_id.to_string(), doc["event_id"].as_str().unwrap());
        prop_assert_eq!(&s.allocation_id, &doc["allocation_id"]);
        prop_assert_eq!(s.task_id.as_deref(), doc["task_id"].as_str());
        prop_assert_eq!(&s.namespace, &doc["namespace"]);
        prop_assert_eq!(json!(s.pod_selector), doc["pod_selector"].clone());
        prop_assert_eq!(json!(s.proxy_ports), doc["proxy_ports"].clone());
        prop_assert_eq!(s.occurred_at.as_deref(), doc["occurred_at"].as_str());
    }

    #[test]
    fn hostile_allocation_ids_are_refused_or_become_safe_keys_and_names(id in hostile_allocation_id()) {
        match decode(EventKind::Started, &with("allocation_id", json!(id))) {
            Err(e) => {
                prop_assert_eq!(e.field, "allocation_id");
                prop_assert!(!validate::is_allocation_id(&id));
            }
            Ok(ev) => {
                prop_assert_eq!(ev.allocation_id(), id.as_str());
                let key = names::allocation_key("k8s-west", &id);
                prop_assert!(
                    key.bytes().all(|c| c.is_ascii_alphanumeric() || b"-/_=.".contains(&c)),
                    "{}", key
                );
                prop_assert_eq!(key.matches('.').count(), 2, "{}", key);
                prop_assert_eq!(names::parse_allocation_key(&key), Some(("k8s-west".to_owned(), id.clone())));
                let name = names::object_name("k8s-west", &id, "jupyter");
                prop_assert!(validate::is_dns1123_label(&name), "{}", name);
            }
        }
    }
}
