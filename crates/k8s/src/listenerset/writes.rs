//! The writes to the sets: a listener applied under a field manager of its own, and removed by an apply
//! without it, or by a delete of the set when it is the last.

use std::sync::Arc;

use itg_core::cluster::{ClusterError, Exposure};
use itg_core::names;
use kube::Resource;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};

use crate::client::classify;
use crate::objects::{listenerset_patch, listenerset_removal};

use super::ListenerSets;

impl ListenerSets {
    pub(super) async fn apply_listener(
        &self,
        e: &Exposure<'_>,
        set: &str,
        name: &str,
    ) -> Result<(), ClusterError> {
        let body = listenerset_patch(
            &self.namespace,
            set,
            &self.base.gateway_namespace,
            &self.base.gateway_name,
            e,
            name,
        );
        let pp = PatchParams::apply(&names::listener_field_manager(&self.base.rm, name)).force();
        let what = format!(
            "applying listener {name} (port {}) to ListenerSet {}/{set}",
            e.binding.gateway_port, self.namespace
        );
        self.base
            .bounded(&what, async {
                self.sets
                    .patch(set, &pp, &Patch::Apply(&body))
                    .await
                    .map(drop)
                    .map_err(|err| classify(&what, err))
            })
            .await
    }

    /// Removes listener `name` from set `set`: a delete of the set when it is the last one there (the
    /// watch's copy says so, and its resourceVersion guards the delete), else an apply that drops it. When
    /// the watch's copy lacks the listener, the apiserver is asked.
    pub(super) async fn remove_listener(&self, set: &str, name: &str) -> Result<(), ClusterError> {
        let what = format!(
            "removing listener {name} from ListenerSet {}/{set}",
            self.namespace
        );
        let current = match self.set(set) {
            // The watch's copy is trusted only to act on the listener it shows: it may lag a listener
            // just applied, and releasing that port while the listener stands would hand it out twice.
            Some(s) if s.spec.listeners.iter().any(|l| l.name == name) => Some(s),
            _ => {
                self.base
                    .bounded(&what, async {
                        self.sets
                            .get_opt(set)
                            .await
                            .map(|s| s.map(Arc::new))
                            .map_err(|err| classify(&what, err))
                    })
                    .await?
            }
        };
        let Some(current) = current else {
            return Ok(());
        };
        let listeners: Vec<&str> = current
            .spec
            .listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        if !listeners.contains(&name) {
            return Ok(());
        }
        if listeners.len() == 1 {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: current.meta().resource_version.clone(),
                    uid: current.meta().uid.clone(),
                }),
                ..DeleteParams::background()
            };
            return self
                .base
                .bounded(&what, async {
                    match self.sets.delete(set, &dp).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                        // The set changed since the watch saw it (a listener was added): the next try reads
                        // it again.
                        Err(kube::Error::Api(s)) if s.code == 409 => {
                            Err(ClusterError::Transient(format!(
                                "{what}: the ListenerSet changed meanwhile ({}); retrying",
                                s.message
                            )))
                        }
                        Err(err) => Err(classify(&what, err)),
                    }
                })
                .await;
        }
        let pp = PatchParams::apply(&names::listener_field_manager(&self.base.rm, name)).force();
        let body = listenerset_removal(&self.namespace, set);
        let after = self
            .base
            .bounded(&what, async {
                match self.sets.patch(set, &pp, &Patch::Apply(&body)).await {
                    Ok(s) => Ok(Some(s)),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                    Err(err) => Err(classify(&what, err)),
                }
            })
            .await?;
        match after {
            Some(s) if s.spec.listeners.iter().any(|l| l.name == name) => {
                Err(ClusterError::Transient(format!(
                    "{what}: it is still there, other field managers own it too; remove it from the ListenerSet, or have them stop managing it"
                )))
            }
            _ => Ok(()),
        }
    }
}
