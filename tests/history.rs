//! The history checker of `common/history.rs` on synthetic histories: it passes the legitimate order
//! (claim, listener, listener removed, release) even when the Gateway watch lags, and fails each planted
//! violation. No server is needed.

mod common;

use std::collections::BTreeMap;

use common::history::{Log, Watched};
use serde_json::json;

const RM: &str = "rm";
const GW_NS: &str = "gateway-system";
const GW: &str = "gw";
const PORT: u16 = 44000;

fn log() -> Log {
    Log::new(vec![Watched {
        rm: RM.into(),
        gateway_ns: GW_NS.into(),
        gateway: GW.into(),
    }])
}

fn gw() -> String {
    format!("{GW_NS}/{GW}")
}

fn port_key() -> String {
    itg::names::port_key(RM, GW_NS, GW, PORT)
}

fn claim(alloc: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "allocation": itg::names::allocation_key(RM, alloc),
        "proxy": "jupyter",
        "claimed_at": 0
    }))
    .unwrap()
}

fn listener(alloc: &str) -> String {
    itg::names::object_name(RM, alloc, "jupyter")
}

/// The Gateway's listeners: the placeholder, and `alloc`'s on PORT when given.
fn listeners(alloc: Option<&str>) -> BTreeMap<String, u16> {
    let mut l = BTreeMap::from([("placeholder".to_owned(), 39999)]);
    if let Some(a) = alloc {
        l.insert(listener(a), PORT);
    }
    l
}

/// A hands the port to B in the legitimate order, and the Gateway watch delivers A's listener removal
/// late, after B's claim (a lagging watch).
fn legitimate_handover_with_a_late_watch(log: &mut Log) {
    log.watched(&gw(), 10, 0.5, listeners(None), true);
    log.kv(&port_key(), 1, 1.0, Some(&claim("a")));
    log.watched(&gw(), 20, 1.3, listeners(Some("a")), false);
    log.probed(&gw(), 20, 1.4, 1.5, listeners(Some("a")));
    log.kv(&port_key(), 2, 2.0, None);
    log.kv(&port_key(), 3, 2.2, Some(&claim("b")));
    // Removed at about 1.9 in truth; the watch shows it only at 2.6, after B's claim.
    log.watched(&gw(), 30, 2.6, listeners(None), false);
    log.watched(&gw(), 40, 2.7, listeners(Some("b")), false);
    log.probed(&gw(), 40, 2.8, 2.9, listeners(Some("b")));
}

#[test]
fn the_legitimate_order_passes_even_when_the_watch_lags() {
    let mut log = log();
    legitimate_handover_with_a_late_watch(&mut log);
    let r = log.check();
    println!("{}", r.summary());
    assert!(r.violations.is_empty(), "{:#?}", r.violations);
    assert_eq!((r.claims, r.releases), (2, 1));
    assert_eq!((r.listener_adds, r.listener_removes), (2, 1));
    assert!(r.pinned > 0, "no listener was ever checked against KV");
    assert_eq!(r.max_holders, BTreeMap::from([(1, 1)]));
}

#[test]
fn a_listener_probed_while_another_allocation_holds_the_port_is_a_violation() {
    let mut log = log();
    legitimate_handover_with_a_late_watch(&mut log);
    // Planted: A's listener is still there when a read at [3.0, 3.1] looks, and B has held the port since 2.2.
    log.probed(&gw(), 50, 3.0, 3.1, {
        let mut l = listeners(Some("b"));
        l.remove(&listener("b"));
        l.insert(listener("a"), PORT);
        l
    });
    let r = log.check();
    println!("{}", r.summary());
    assert_eq!(r.violations.len(), 1, "{:#?}", r.violations);
    assert!(
        r.violations[0].contains(&listener("a")),
        "{}",
        r.violations[0]
    );
    assert_eq!(r.max_holders, BTreeMap::from([(2, 1)]));
}

#[test]
fn a_listener_pinned_by_watch_and_probe_after_its_release_is_a_violation() {
    let mut log = log();
    log.watched(&gw(), 10, 0.5, listeners(None), true);
    log.kv(&port_key(), 1, 1.0, Some(&claim("a")));
    log.watched(&gw(), 20, 1.1, listeners(Some("a")), false);
    // Planted: the claim is released and taken by B while A's listener stands; a read at [1.6, 1.7]
    // still sees version 20, and the watch delivers the removal only later.
    log.kv(&port_key(), 2, 1.2, None);
    log.kv(&port_key(), 3, 1.3, Some(&claim("b")));
    log.probed(&gw(), 20, 1.6, 1.7, listeners(Some("a")));
    log.watched(&gw(), 30, 2.0, listeners(None), false);
    let r = log.check();
    println!("{}", r.summary());
    assert!(!r.violations.is_empty(), "the overlap was not found");
    assert!(
        r.violations.iter().any(|v| v.contains("throughout")),
        "{:#?}",
        r.violations
    );
}

#[test]
fn a_port_key_claimed_over_a_live_claim_is_a_violation() {
    let mut log = log();
    log.kv(&port_key(), 1, 1.0, Some(&claim("a")));
    log.kv(&port_key(), 2, 1.1, Some(&claim("b")));
    let r = log.check();
    println!("{}", r.summary());
    assert_eq!(r.violations.len(), 1, "{:#?}", r.violations);
    assert!(r.violations[0].contains("while"), "{}", r.violations[0]);
}

#[test]
fn two_listeners_on_one_port_are_a_violation() {
    let mut log = log();
    let mut l = listeners(Some("a"));
    l.insert(listener("b"), PORT);
    log.watched(&gw(), 10, 0.5, l, true);
    let r = log.check();
    assert_eq!(r.violations.len(), 1, "{:#?}", r.violations);
    assert!(r.violations[0].contains("on port"), "{}", r.violations[0]);
}

#[test]
fn a_release_whose_claim_was_never_seen_is_counted_not_failed() {
    let mut log = log();
    log.kv(&port_key(), 2, 1.2, None);
    let r = log.check();
    assert!(r.violations.is_empty());
    assert_eq!(r.unseen_claims, 1);
}
