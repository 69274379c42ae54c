//! Writes the golden fixtures of KV records and port claims in the record format of commit a22e5a6, the
//! last without a record version. Run once, on that format, with
//! `ITG_WRITE_GOLDEN=tests/fixtures/records-v0 cargo test -p itg-core --test golden_records -- --ignored`;
//! the files it wrote are committed, and the tests read them as an older worker left them.

use itg_core::claims::PortClaim;
use itg_core::contract::{ProxyPort, Started};
use itg_core::names;
use itg_core::state::{self, Binding, EndedStep, Phase, Record, StartedStep};
use itg_core::store::encode;
use uuid::Uuid;

const RM: &str = "golden-rm";
const GW_NS: &str = "gateway-system";
const GW: &str = "gw-golden";
const TASK_NS: &str = "tasks-golden";
/// 2026-12-07T00:00:00Z: the fixtures' clock.
const T0: i64 = 1_796_601_600;

fn started(alloc: &str, event: &str) -> Started {
    Started {
        event_id: Uuid::parse_str(event).unwrap(),
        allocation_id: alloc.into(),
        task_id: Some("task-7".into()),
        namespace: TASK_NS.into(),
        pod_selector: [("app".to_owned(), "nb".to_owned())].into(),
        proxy_ports: vec![
            ProxyPort {
                name: "jupyter".into(),
                port: 8888,
            },
            ProxyPort {
                name: "tb".into(),
                port: 6006,
            },
        ],
        occurred_at: None,
    }
}

fn created(alloc: &str, event: &str) -> Record {
    match state::on_started(None, RM, &started(alloc, event), T0) {
        StartedStep::Create(r) => *r,
        other => panic!("{other:?}"),
    }
}

fn bind(r: &mut Record, name: &str, container_port: u16, gateway_port: u16) {
    r.ports.push(Binding {
        name: name.into(),
        container_port,
        gateway_port,
    });
}

fn claims(r: &Record) -> Vec<serde_json::Value> {
    let key = names::allocation_key(RM, &r.allocation_id);
    r.ports
        .iter()
        .map(|b| {
            let claim = PortClaim {
                allocation: key.clone(),
                proxy: b.name.clone(),
                claimed_at: T0 + 1,
            };
            entry(&names::port_key(RM, GW_NS, GW, b.gateway_port), &encode(&claim))
        })
        .collect()
}

fn entry(key: &str, value: &[u8]) -> serde_json::Value {
    serde_json::json!({ "key": key, "value": String::from_utf8(value.to_vec()).unwrap() })
}

fn fixture(r: &Record) -> serde_json::Value {
    serde_json::json!({
        "record": entry(&names::allocation_key(RM, &r.allocation_id), &encode(r)),
        "claims": claims(r),
    })
}

#[test]
#[ignore = "writes the committed fixtures; run once, on the format they stand for"]
fn write_golden_records() {
    let dir = std::path::PathBuf::from(std::env::var("ITG_WRITE_GOLDEN").expect("ITG_WRITE_GOLDEN"));
    std::fs::create_dir_all(&dir).unwrap();

    let mut ready = created(
        "5f0e9a41-7c2d-4b8e-9d11-2a6c3e4b5d01.1",
        "11111111-2222-4333-8444-555555555501",
    );
    bind(&mut ready, "jupyter", 8888, 41000);
    bind(&mut ready, "tb", 6006, 41001);
    ready.phase = Phase::Ready;
    ready.updated_at = T0 + 2;

    let mut exposing = created(
        "5f0e9a41-7c2d-4b8e-9d11-2a6c3e4b5d02.1",
        "11111111-2222-4333-8444-555555555502",
    );
    bind(&mut exposing, "jupyter", 8888, 41002);
    exposing.updated_at = T0 + 1;

    let mut before = created(
        "5f0e9a41-7c2d-4b8e-9d11-2a6c3e4b5d03.1",
        "11111111-2222-4333-8444-555555555503",
    );
    bind(&mut before, "jupyter", 8888, 41003);
    bind(&mut before, "tb", 6006, 41004);
    before.phase = Phase::Ready;
    let ending = match state::on_ended(
        Some(&before),
        RM,
        &before.allocation_id,
        Uuid::parse_str("11111111-2222-4333-8444-555555555513").unwrap(),
        T0 + 3,
    ) {
        EndedStep::MarkEnding(r) => r,
        other => panic!("{other:?}"),
    };

    let tombstone = match state::on_ended(
        None,
        RM,
        "5f0e9a41-7c2d-4b8e-9d11-2a6c3e4b5d04.1",
        Uuid::parse_str("11111111-2222-4333-8444-555555555514").unwrap(),
        T0,
    ) {
        EndedStep::Tombstone(r) => r,
        other => panic!("{other:?}"),
    };

    let mut served = created(
        "5f0e9a41-7c2d-4b8e-9d11-2a6c3e4b5d05.1",
        "11111111-2222-4333-8444-555555555505",
    );
    bind(&mut served, "jupyter", 8888, 41005);
    served.phase = Phase::Ending;
    served.ended_event_id = Some(Uuid::parse_str("11111111-2222-4333-8444-555555555515").unwrap());
    let removed = served.cleaned(T0 + 4);

    for (name, r) in [
        ("ready", &ready),
        ("exposing", &exposing),
        ("ending", &ending),
        ("tombstone", &tombstone),
        ("removed", &removed),
    ] {
        let text = serde_json::to_string_pretty(&fixture(r)).unwrap();
        std::fs::write(dir.join(format!("{name}.json")), format!("{text}\n")).unwrap();
    }
}
