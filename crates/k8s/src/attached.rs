//! ListenerSets of others attached to a Gateway: an operator's, another installation's, another resource
//! manager's. Their listeners hold ports on the Gateway as surely as its own listeners do, so their ports
//! are foreign in both listener modes.
//!
//! The watch covers every namespace the Gateway takes sets from (`spec.allowedListeners`): its own for
//! `Same`, all of them for `All` and `Selector`. It selects by label every set that is not this resource
//! manager's, so the worker's own sets are never held twice. Where a cluster-wide list is forbidden it
//! falls back to the Gateway's namespace and says so; where the ListenerSet kind is not served there is
//! nothing to watch.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use gateway_api::experimental::gateways::{Gateway, GatewayAllowedListenersNamespacesFrom};
use gateway_api::experimental::listenersets::ListenerSet;
use itg_core::names;
use kube::api::ListParams;
use kube::runtime::reflector::{self, Store as Reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

/// A watch of the sets that may attach to one Gateway, other than this resource manager's.
#[derive(Clone)]
pub struct AttachedSets {
    gateway_namespace: String,
    gateway_name: String,
    reflector: Reflector<ListenerSet>,
    /// What the watch covers, for the start-up report.
    pub scope: Arc<String>,
}

/// Where the Gateway takes sets from: `None` when it takes none, `Some(None)` for every namespace.
fn scope_of(gw: &Gateway) -> Option<Option<String>> {
    let from = gw
        .spec
        .allowed_listeners
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
        .and_then(|n| n.from.as_ref())?;
    match from {
        GatewayAllowedListenersNamespacesFrom::Same => {
            Some(Some(gw.metadata.namespace.clone().unwrap_or_default()))
        }
        GatewayAllowedListenersNamespacesFrom::All
        | GatewayAllowedListenersNamespacesFrom::Selector => Some(None),
        GatewayAllowedListenersNamespacesFrom::None => None,
    }
}

impl AttachedSets {
    /// Starts the watch for `gw` (as first read) and returns once its first list is in; `None` when the
    /// Gateway takes no sets or the apiserver serves no ListenerSet. Every change ticks `tick`.
    pub(crate) async fn start(
        client: &Client,
        gw: &Gateway,
        rm: &str,
        tick: Arc<tokio::sync::watch::Sender<u64>>,
    ) -> Option<AttachedSets> {
        let gateway_namespace = gw.metadata.namespace.clone().unwrap_or_default();
        let gateway_name = gw.metadata.name.clone().unwrap_or_default();
        let wanted = scope_of(gw)?;
        // Sets without this resource manager's label (a `!=` selector also matches sets without the key).
        let selector = format!("{}!={}", names::rm_label_key(), names::rm_label_value(rm));
        let probe = ListParams::default().labels(&selector).limit(1);
        let mut api: Api<ListenerSet> = match &wanted {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let mut scope = wanted.clone().map_or_else(
            || "all namespaces".to_owned(),
            |ns| format!("namespace {ns}"),
        );
        match api.list_metadata(&probe).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return None,
            Err(kube::Error::Api(s)) if s.code == 403 && wanted.is_none() => {
                tracing::warn!(
                    gateway = %format!("{gateway_namespace}/{gateway_name}"),
                    "listing ListenerSets in all namespaces is forbidden: only those in the Gateway's namespace are seen, and ports of sets elsewhere may be handed out; grant list and watch on listenersets cluster-wide"
                );
                api = Api::namespaced(client.clone(), &gateway_namespace);
                scope = format!(
                    "namespace {gateway_namespace} only (a cluster-wide list is forbidden)"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the ListenerSets that may attach to the Gateway; their ports may be handed out");
                return None;
            }
        }
        let (reader, writer) = reflector::store();
        let stream = watcher(api, watcher::Config::default().labels(&selector))
            .default_backoff()
            .reflect(writer);
        let what = scope.clone();
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(_) => tick.send_modify(|n| *n = n.wrapping_add(1)),
                    Err(e) => {
                        tracing::warn!(scope = %what, error = %e, "attached ListenerSet watch error; retrying");
                    }
                }
            }
        });
        let what = format!("watching the ListenerSets attached to the Gateway ({scope})");
        if let Err(e) = crate::watch::synced(&reader, &what).await {
            tracing::warn!(error = %e, "their ports may be handed out until the watch catches up");
        }
        Some(AttachedSets {
            gateway_namespace,
            gateway_name,
            reflector: reader,
            scope: Arc::new(scope),
        })
    }

    /// The ports of every listener of every set attached to the Gateway: none of them is ours.
    pub fn ports(&self) -> BTreeSet<u16> {
        let mut out = BTreeSet::new();
        for set in self.reflector.state() {
            if !attaches_to(&set, &self.gateway_namespace, &self.gateway_name) {
                continue;
            }
            out.extend(
                set.spec
                    .listeners
                    .iter()
                    .filter_map(|l| u16::try_from(l.port).ok()),
            );
        }
        out
    }
}

/// Whether `set`'s parent is the Gateway `ns/name` (the parent's namespace defaults to the set's own).
pub(crate) fn attaches_to(set: &ListenerSet, ns: &str, name: &str) -> bool {
    let p = &set.spec.parent_ref;
    let set_ns = set.metadata.namespace.as_deref().unwrap_or_default();
    p.name == name
        && p.namespace.as_deref().unwrap_or(set_ns) == ns
        && p.kind.as_deref().unwrap_or("Gateway") == "Gateway"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_set(ns: &str, parent_ns: Option<&str>, parent: &str) -> ListenerSet {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "ListenerSet",
            "metadata": {"name": "ops", "namespace": ns},
            "spec": {
                "parentRef": {"name": parent, "namespace": parent_ns},
                "listeners": [{"name": "db", "port": 40000, "protocol": "TCP"}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_set_attaches_to_its_parent_gateway_only() {
        assert!(attaches_to(&mk_set("gw", None, "itg"), "gw", "itg"));
        assert!(attaches_to(&mk_set("ops", Some("gw"), "itg"), "gw", "itg"));
        assert!(!attaches_to(&mk_set("ops", None, "itg"), "gw", "itg"));
        assert!(!attaches_to(&mk_set("gw", None, "other"), "gw", "itg"));
    }
}
