//! Every name the worker derives: Kubernetes object and listener names, labels, field managers, KV keys and
//! reply message ids. Each is a pure function of (resource manager, allocation id, port name), so any worker
//! can finish or undo another's work, and hostile ids can never reach a sink unencoded.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::validate;

/// Value of `app.kubernetes.io/managed-by` on everything the worker creates.
pub const MANAGER: &str = "internal-task-gateway";
/// Prefix of the worker's labels and annotations.
pub const LABEL_PREFIX: &str = "internal-task-gateway.io";
/// Prefix of every object and listener name the worker owns.
pub const NAME_PREFIX: &str = "itg-";
/// Hex digits of the hash in an object name: 80 bits keeps collisions out of reach for any realistic
/// number of allocations while the name stays short enough to read.
const HASH_HEX: usize = 20;

fn sha_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A short stable hash of an allocation, used in labels (an allocation id is not a valid label value).
pub fn allocation_hash(rm: &str, allocation_id: &str) -> String {
    sha_hex(&["alloc", rm, allocation_id])[..HASH_HEX].to_owned()
}

/// The name shared by the Service, the TCPRoute and the Gateway listener of one proxy port.
pub fn object_name(rm: &str, allocation_id: &str, port_name: &str) -> String {
    format!(
        "{NAME_PREFIX}{}",
        &sha_hex(&["port", rm, allocation_id, port_name])[..HASH_HEX]
    )
}

/// The name of an allocation's ListenerSet, in `listenerset` mode: one per allocation, holding a listener
/// per proxy port (each named by [`object_name`]).
pub fn listenerset_name(rm: &str, allocation_id: &str) -> String {
    format!(
        "{NAME_PREFIX}{}",
        &sha_hex(&["listenerset", rm, allocation_id])[..HASH_HEX]
    )
}

/// Whether a listener name has the shape of one the worker creates. Anything else on the Gateway belongs to
/// someone else: the worker neither touches it nor hands out its port.
pub fn is_owned_listener_name(name: &str) -> bool {
    name.strip_prefix(NAME_PREFIX).is_some_and(|h| {
        h.len() == HASH_HEX
            && h.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    })
}

/// The server-side-apply field manager that owns one listener, so listeners merge instead of replacing
/// each other. It names the resource manager too: several resource managers (or installations) may share a
/// Gateway, and a listener's manager is how each proves which listeners are its own.
pub fn listener_field_manager(rm: &str, listener_name: &str) -> String {
    format!("{MANAGER}/{}/{listener_name}", rm_label_value(rm))
}

/// The field manager listeners had before it named the resource manager. Still read, so an upgrade neither
/// removes a live listener nor leaves an old one behind.
pub fn legacy_listener_field_manager(listener_name: &str) -> String {
    format!("{MANAGER}/{listener_name}")
}

/// Whether a listener on the Gateway provably belongs to resource manager `rm`, from its name, its port and
/// the field managers that own it. Its own manager proves it; a listener under the legacy manager, which
/// names no resource manager, is taken as this one's only within its own range (ranges of resource managers
/// sharing a Gateway must not overlap). Anything else is foreign: never touched, its port never handed out.
pub fn owns_listener(
    rm: &str,
    name: &str,
    port: u16,
    managers: &[&str],
    range: &std::ops::RangeInclusive<u16>,
) -> bool {
    if !is_owned_listener_name(name) {
        return false;
    }
    let mine = listener_field_manager(rm, name);
    let legacy = legacy_listener_field_manager(name);
    managers.iter().any(|m| *m == mine)
        || (range.contains(&port) && managers.iter().any(|m| *m == legacy))
}

/// Field manager for the Services and TCPRoutes, which each worker applies whole.
pub const OBJECT_FIELD_MANAGER: &str = MANAGER;

/// A label value for a resource manager name: itself when valid, else a hash (names may be 64 characters
/// or end in '_', which label values refuse).
pub fn rm_label_value(rm: &str) -> String {
    if validate::is_label_value(rm) && rm.len() <= 63 {
        rm.to_owned()
    } else {
        sha_hex(&["rm", rm])[..HASH_HEX].to_owned()
    }
}

/// Label key for the resource manager.
pub fn rm_label_key() -> String {
    format!("{LABEL_PREFIX}/resource-manager")
}

/// Label key for the allocation hash.
pub fn allocation_label_key() -> String {
    format!("{LABEL_PREFIX}/allocation")
}

/// Labels on every object made for an allocation: what selects them for cleanup and reconciliation.
pub fn labels(rm: &str, allocation_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGER.to_owned(),
        ),
        (rm_label_key(), rm_label_value(rm)),
        (allocation_label_key(), allocation_hash(rm, allocation_id)),
    ])
}

/// Annotations carrying what labels cannot hold: the full ids.
pub fn annotations(rm: &str, allocation_id: &str, port_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            format!("{LABEL_PREFIX}/allocation-id"),
            allocation_id.to_owned(),
        ),
        (format!("{LABEL_PREFIX}/resource-manager"), rm.to_owned()),
        (format!("{LABEL_PREFIX}/proxy-port"), port_name.to_owned()),
    ])
}

/// Annotations of an allocation's ListenerSet: the full ids, as on its other objects.
pub fn set_annotations(rm: &str, allocation_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            format!("{LABEL_PREFIX}/allocation-id"),
            allocation_id.to_owned(),
        ),
        (format!("{LABEL_PREFIX}/resource-manager"), rm.to_owned()),
    ])
}

/// KV key of an allocation's record: `alloc.<rm>.<base64url(allocation id)>`. KV keys allow only
/// `[-/_=.a-zA-Z0-9]`, and an allocation id may hold any printable character.
pub fn allocation_key(rm: &str, allocation_id: &str) -> String {
    format!("alloc.{rm}.{}", URL_SAFE_NO_PAD.encode(allocation_id))
}

/// Decodes the allocation id from an [`allocation_key`]; `None` when the key is not one.
pub fn parse_allocation_key(key: &str) -> Option<(String, String)> {
    let rest = key.strip_prefix("alloc.")?;
    let (rm, enc) = rest.split_once('.')?;
    let id = URL_SAFE_NO_PAD.decode(enc).ok()?;
    Some((rm.to_owned(), String::from_utf8(id).ok()?))
}

/// KV key prefix of every allocation record of every resource manager.
pub fn all_allocations_prefix() -> String {
    "alloc.".to_owned()
}

/// KV key prefix of every allocation record of one resource manager.
pub fn allocation_key_prefix(rm: &str) -> String {
    format!("alloc.{rm}.")
}

/// KV key of one port of one Gateway: `port.<rm>.<gateway ns>.<gateway name>.<port>`. Dots in the Gateway
/// name become `_`, which DNS names never hold, so the mapping stays one-to-one.
pub fn port_key(rm: &str, gateway_namespace: &str, gateway_name: &str, port: u16) -> String {
    port_key_at(&port_key_prefix(rm, gateway_namespace, gateway_name), port)
}

/// KV key prefix of every port of one Gateway.
pub fn port_key_prefix(rm: &str, gateway_namespace: &str, gateway_name: &str) -> String {
    format!(
        "port.{rm}.{gateway_namespace}.{}.",
        gateway_name.replace('.', "_")
    )
}

/// KV key of `port` under a [`port_key_prefix`].
pub fn port_key_at(prefix: &str, port: u16) -> String {
    format!("{prefix}{port}")
}

/// The port of a KV key under a [`port_key_prefix`]; `None` when the key is not one.
pub fn parse_port_key(key: &str, prefix: &str) -> Option<u16> {
    key.strip_prefix(prefix)?.parse().ok()
}

/// Message id of a reply: the same outcome of the same event always gets the same id, so JetStream drops a
/// retried publish (a redelivery, a second worker racing) inside the duplicate window, while a new event
/// about the same allocation still gets its own reply. `outcome` carries the source event id.
pub fn reply_msg_id(kind: &str, rm: &str, allocation_id: &str, outcome: &str) -> String {
    format!(
        "{kind}-{}",
        &sha_hex(&["reply", kind, rm, allocation_id, outcome])[..32]
    )
}

/// Labels selecting every object the worker made for one resource manager.
pub fn owned_selector(rm: &str) -> String {
    format!(
        "app.kubernetes.io/managed-by={},{}={}",
        MANAGER,
        rm_label_key(),
        rm_label_value(rm)
    )
}

/// The durable consumer every worker of a resource manager shares: `<prefix>-<rm>`.
pub fn consumer_name(prefix: &str, rm: &str) -> String {
    format!("{prefix}-{rm}")
}

/// Message id of an `ended` published again after its maximum deliveries: one per original event.
pub fn requeue_msg_id(original_sequence: u64) -> String {
    format!("requeue-{original_sequence}")
}

/// Message id of a dead letter sent back by an operator: a second resend within the duplicate window is
/// dropped.
pub fn resend_msg_id(dead_letter_sequence: u64) -> String {
    format!("resend-{dead_letter_sequence}")
}

/// Message id of a dead letter: one per original event, however often storing it is retried.
pub fn dead_letter_msg_id(original_sequence: u64) -> String {
    format!("dl-{original_sequence}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_short_valid_and_distinct_per_port() {
        let a = object_name("k8s-west", "6f1c.1", "jupyter");
        let b = object_name("k8s-west", "6f1c.1", "tensorboard");
        let c = object_name("k8s-east", "6f1c.1", "jupyter");
        assert!(validate::is_dns1123_label(&a), "{a}");
        assert_eq!(a.len(), NAME_PREFIX.len() + HASH_HEX);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, object_name("k8s-west", "6f1c.1", "jupyter"));
        assert!(is_owned_listener_name(&a));
    }

    #[test]
    fn a_listener_is_owned_only_by_the_resource_manager_its_manager_names() {
        let name = object_name("west", "a.1", "jupyter");
        let range = 40000..=40009;
        let west = listener_field_manager("west", &name);
        let east = listener_field_manager("east", &name);
        assert!(owns_listener("west", &name, 40001, &[&west], &range));
        assert!(!owns_listener("east", &name, 40001, &[&west], &range));
        assert!(owns_listener(
            "east",
            &name,
            40001,
            &[&east, "kubectl"],
            &range
        ));
        // Co-owned by someone else as well (a re-applied Gateway): still ours.
        assert!(owns_listener(
            "west",
            &name,
            40001,
            &["kubectl", &west],
            &range
        ));
        assert!(!owns_listener(
            "west",
            "placeholder",
            40001,
            &[&west],
            &range
        ));
        assert!(!owns_listener("west", &name, 40001, &["kubectl"], &range));
    }

    #[test]
    fn a_legacy_listener_is_owned_only_inside_the_range() {
        let name = object_name("west", "a.1", "jupyter");
        let legacy = legacy_listener_field_manager(&name);
        assert!(owns_listener(
            "west",
            &name,
            40005,
            &[&legacy],
            &(40000..=40009)
        ));
        assert!(!owns_listener(
            "west",
            &name,
            40010,
            &[&legacy],
            &(40000..=40009)
        ));
    }

    #[test]
    fn listener_field_managers_fit_the_apiservers_limit() {
        let name = object_name(&"x".repeat(64), "a", "b");
        assert!(listener_field_manager(&"x".repeat(64), &name).len() <= 128);
        assert_ne!(
            listener_field_manager("a", &name),
            listener_field_manager("b", &name)
        );
    }

    #[test]
    fn hash_input_framing_prevents_concatenation_collisions() {
        assert_ne!(object_name("a", "bc", "d"), object_name("ab", "c", "d"));
    }

    #[test]
    fn foreign_listener_names_are_not_ours() {
        for n in [
            "placeholder",
            "itg-",
            "itg-XYZ",
            "itg-0123456789abcdef012",
            "tcp-40000",
        ] {
            assert!(!is_owned_listener_name(n), "{n}");
        }
    }

    #[test]
    fn allocation_keys_round_trip_hostile_ids() {
        for id in ["6f1c.1", "a/b", "*", ">", "x.y.z", "=+/?", &"z".repeat(255)] {
            let key = allocation_key("rm", id);
            assert!(
                key.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-/_=.".contains(&c)),
                "{key}"
            );
            assert_eq!(key.matches('.').count(), 2, "{key}");
            assert_eq!(parse_allocation_key(&key), Some(("rm".into(), id.into())));
        }
    }

    #[test]
    fn rm_label_values_fall_back_to_a_hash_when_invalid() {
        assert_eq!(rm_label_value("k8s-west"), "k8s-west");
        let odd = rm_label_value("ends_with_");
        assert!(validate::is_label_value(&odd));
        assert!(validate::is_label_value(&rm_label_value(&"x".repeat(64))));
    }

    #[test]
    fn port_keys_keep_gateway_names_unambiguous() {
        assert_eq!(
            port_key("rm", "gw-ns", "a.b", 40000),
            "port.rm.gw-ns.a_b.40000"
        );
        assert_ne!(
            port_key("rm", "ns", "a.b", 1),
            port_key("rm", "ns", "a-b", 1)
        );
    }
}
