//! The history checker of `common/history.rs` on synthetic histories: it passes the legitimate order
//! (claim, listener, listener removed, release) even when the Gateway watch lags, and fails each planted
//! violation. The same in ListenerSet mode, where the listeners are in one ListenerSet per allocation and a
//! version is that of the collection of sets attached to the Gateway. No server is needed.

mod common;

use std::collections::BTreeMap;

use common::history::{ListenerMode, Log, Watched};
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

// ListenerSet mode: each allocation's listener in a ListenerSet of its own, attached to the Gateway.

fn sets_log() -> Log {
    Log::with_modes(vec![(
        Watched {
            rm: RM.into(),
            gateway_ns: GW_NS.into(),
            gateway: GW.into(),
        },
        ListenerMode::ListenerSet,
    )])
}

fn set(alloc: &str) -> String {
    itg::names::listenerset_name(RM, alloc)
}

/// The listeners of `alloc`'s set: one, on PORT.
fn set_listeners(alloc: &str) -> BTreeMap<String, u16> {
    BTreeMap::from([(listener(alloc), PORT)])
}

/// A set of another resource manager in the namespace, attached to the Gateway on another port.
fn foreign() -> (String, BTreeMap<String, u16>) {
    (
        "foreign".to_owned(),
        BTreeMap::from([("admin".to_owned(), 39998)]),
    )
}

/// A hands the port to B in the legitimate order, each with its own set; the watch delivers the deletion
/// of A's set late, after B's claim (a lagging watch).
fn legitimate_handover_in_sets_with_a_late_watch(log: &mut Log) {
    let (f, fl) = foreign();
    log.sets_relisted(&gw(), 0.5, vec![(f.clone(), 5, Some(fl.clone()))]);
    log.kv(&port_key(), 1, 1.0, Some(&claim("a")));
    log.set_watched(&gw(), &set("a"), 20, 1.3, Some(set_listeners("a")));
    log.sets_probed(
        &gw(),
        25,
        1.4,
        1.5,
        vec![(f.clone(), fl.clone()), (set("a"), set_listeners("a"))],
    );
    // A set of another Gateway changes meanwhile: no version of this one.
    log.set_watched(&gw(), "elsewhere", 26, 1.6, None);
    log.kv(&port_key(), 2, 2.0, None);
    log.kv(&port_key(), 3, 2.2, Some(&claim("b")));
    // Deleted at about 1.9 in truth; the watch shows it only at 2.6, after B's claim.
    log.set_watched(&gw(), &set("a"), 30, 2.6, None);
    log.set_watched(&gw(), &set("b"), 40, 2.7, Some(set_listeners("b")));
    log.sets_probed(
        &gw(),
        45,
        2.8,
        2.9,
        vec![(f, fl), (set("b"), set_listeners("b"))],
    );
}

#[test]
fn in_listenersets_the_legitimate_order_passes_even_when_the_watch_lags() {
    let mut log = sets_log();
    legitimate_handover_in_sets_with_a_late_watch(&mut log);
    let r = log.check();
    println!("{}", r.summary());
    assert!(r.violations.is_empty(), "{:#?}", r.violations);
    assert_eq!((r.claims, r.releases), (2, 1));
    assert_eq!((r.listener_adds, r.listener_removes), (2, 1));
    assert_eq!((r.versions, r.set_versions, r.listener_sets), (4, 4, 3));
    assert!(r.pinned > 0, "no listener was ever checked against KV");
    assert_eq!(r.max_holders, BTreeMap::from([(1, 1)]));
}

#[test]
fn in_listenersets_two_sets_with_a_listener_on_one_port_at_once_are_a_violation() {
    let mut log = sets_log();
    log.sets_relisted(&gw(), 0.5, vec![]);
    log.set_watched(&gw(), &set("a"), 10, 0.6, Some(set_listeners("a")));
    // Planted: B's set on the same port while A's stands, seen by the watch and by a list.
    log.set_watched(&gw(), &set("b"), 11, 0.7, Some(set_listeners("b")));
    log.sets_probed(
        &gw(),
        12,
        0.8,
        0.9,
        vec![
            (set("a"), set_listeners("a")),
            (set("b"), set_listeners("b")),
        ],
    );
    let r = log.check();
    println!("{}", r.summary());
    assert_eq!(r.violations.len(), 2, "{:#?}", r.violations);
    assert!(
        r.violations.iter().all(|v| v.contains("on port")
            && v.contains(&listener("a"))
            && v.contains(&listener("b"))),
        "{:#?}",
        r.violations
    );
}

#[test]
fn in_listenersets_one_listener_in_two_sets_is_a_violation() {
    let mut log = sets_log();
    log.sets_relisted(
        &gw(),
        0.5,
        vec![
            (set("a"), 7, Some(set_listeners("a"))),
            ("copy".to_owned(), 8, Some(set_listeners("a"))),
        ],
    );
    let r = log.check();
    assert_eq!(r.violations.len(), 1, "{:#?}", r.violations);
    assert!(
        r.violations[0].contains("more than one ListenerSet"),
        "{}",
        r.violations[0]
    );
}

#[test]
fn in_listenersets_a_listener_listed_while_another_allocation_holds_the_port_is_a_violation() {
    let mut log = sets_log();
    legitimate_handover_in_sets_with_a_late_watch(&mut log);
    // Planted: a list at [3.0, 3.1] shows A's set with its listener, and B has held the port since 2.2.
    log.sets_probed(&gw(), 50, 3.0, 3.1, vec![(set("a"), set_listeners("a"))]);
    let r = log.check();
    println!("{}", r.summary());
    assert_eq!(r.violations.len(), 1, "{:#?}", r.violations);
    assert!(
        r.violations[0].contains(&listener("a")) && r.violations[0].contains("within"),
        "{}",
        r.violations[0]
    );
    assert_eq!(r.max_holders, BTreeMap::from([(2, 1)]));
}

#[test]
fn in_listenersets_a_listener_pinned_by_watch_and_list_after_its_release_is_a_violation() {
    let mut log = sets_log();
    log.sets_relisted(&gw(), 0.5, vec![]);
    log.kv(&port_key(), 1, 1.0, Some(&claim("a")));
    log.set_watched(&gw(), &set("a"), 20, 1.1, Some(set_listeners("a")));
    // Planted: the claim is released and taken by B while A's set stands; a list at [1.6, 1.7] still
    // sees it, and the watch delivers its deletion only later.
    log.kv(&port_key(), 2, 1.2, None);
    log.kv(&port_key(), 3, 1.3, Some(&claim("b")));
    log.sets_probed(&gw(), 25, 1.6, 1.7, vec![(set("a"), set_listeners("a"))]);
    log.set_watched(&gw(), &set("a"), 30, 2.0, None);
    let r = log.check();
    println!("{}", r.summary());
    assert!(
        r.violations.iter().any(|v| v.contains("throughout")),
        "{:#?}",
        r.violations
    );
}

#[test]
fn in_listenersets_a_relisting_watch_never_stretches_a_listener_it_did_not_see_removed() {
    let mut log = sets_log();
    log.sets_relisted(&gw(), 0.5, vec![]);
    log.kv(&port_key(), 1, 1.0, Some(&claim("a")));
    log.set_watched(&gw(), &set("a"), 20, 1.1, Some(set_listeners("a")));
    // The watch fails; A's set is deleted (rv 30, unseen), the port released and claimed by B, whose set
    // the new list shows; the watch goes on with an unrelated change.
    log.sets_watch_failed(&gw());
    log.kv(&port_key(), 2, 1.5, None);
    log.kv(&port_key(), 3, 1.7, Some(&claim("b")));
    log.sets_relisted(&gw(), 2.5, vec![(set("b"), 40, Some(set_listeners("b")))]);
    log.set_watched(&gw(), &set("c"), 50, 3.0, Some(BTreeMap::new()));
    let r = log.check();
    println!("{}", r.summary());
    assert!(r.violations.is_empty(), "{:#?}", r.violations);
    assert_eq!(r.relists, 2);
}
