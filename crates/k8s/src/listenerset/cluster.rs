//! The seams: [`Cluster`] (the view, expose, withdraw, the controller's verdict) and [`Inventory`] (what the
//! reconciler lists and removes) on the ListenerSets.

use std::sync::Arc;

use itg_core::cluster::{
    ClassStatus, Cluster, ClusterError, Exposure, GatewayView, Inventory, ObjectKind, OwnedObject,
};
use itg_core::names;
use itg_core::readiness::{self, Observed, Verdict};
use itg_core::state::Binding;
use kube::api::ListParams;

use crate::watch::{conditions_of, route_parent_conditions};

use super::ListenerSets;

impl Cluster for ListenerSets {
    fn view(&self) -> Arc<GatewayView> {
        let Some(gw) = self.base.gateway() else {
            return Arc::default();
        };
        let attached = self.base.attached_ports();
        let key = (
            gw.metadata.resource_version.clone().unwrap_or_default(),
            attached.clone(),
        );
        self.sets_view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .view(key, || self.base_view(&gw, attached))
    }

    async fn expose(&self, e: &Exposure<'_>) -> Result<(), ClusterError> {
        let name = names::object_name(e.rm, e.allocation_id, &e.binding.name);
        let set = names::listenerset_name(e.rm, e.allocation_id);
        let parent = self.parent(&set);
        self.base
            .expose_with(e, &name, &parent, self.apply_listener(e, &set, &name))
            .await
    }

    async fn withdraw(
        &self,
        rm: &str,
        allocation_id: &str,
        namespace: Option<&str>,
        binding: &Binding,
    ) -> Result<(), ClusterError> {
        let name = names::object_name(rm, allocation_id, &binding.name);
        let set = names::listenerset_name(rm, allocation_id);
        self.base
            .withdraw_with(&name, namespace, self.remove_listener(&set, &name))
            .await
    }

    fn controller_verdict(&self, exposures: &[Exposure<'_>]) -> Verdict {
        let observed: Vec<Observed> = exposures
            .iter()
            .map(|e| {
                let name = names::object_name(e.rm, e.allocation_id, &e.binding.name);
                let set_name = names::listenerset_name(e.rm, e.allocation_id);
                let set = self.set(&set_name);
                let listener_generation = self
                    .generations
                    .lock()
                    .ok()
                    .and_then(|g| g.get(&set_name, &name))
                    .filter(|(port, _)| *port == e.binding.gateway_port)
                    .map(|(_, generation)| generation);
                let status = set.as_ref().and_then(|s| s.status.as_ref());
                let listener_status = status
                    .and_then(|s| s.listeners.as_ref())
                    .and_then(|ls| ls.iter().find(|l| l.name == name))
                    .map(|l| readiness::ListenerStatus {
                        conditions: conditions_of(
                            &serde_json::to_value(&l.conditions).unwrap_or_default(),
                        ),
                        attached_routes: i64::from(l.attached_routes),
                    });
                let set_conditions = status
                    .and_then(|s| s.conditions.as_ref())
                    .map(|c| conditions_of(&serde_json::to_value(c).unwrap_or_default()));
                let route = self.base.route(&e.spec.namespace, &name);
                Observed {
                    listener: name.clone(),
                    listener_generation,
                    listener_status,
                    route_generation: route.as_ref().map(|r| r.metadata.generation.unwrap_or(0)),
                    route_parent: route.as_ref().and_then(|r| {
                        route_parent_conditions(r, "ListenerSet", &self.namespace, &set_name, &name)
                    }),
                    set_conditions: Some(set_conditions.unwrap_or_default()),
                }
            })
            .collect();
        readiness::evaluate_all(&observed)
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.base.changes()
    }
}

impl Inventory for ListenerSets {
    async fn check(&self) -> Result<(), String> {
        self.base.check().await
    }

    async fn class_status(&self) -> ClassStatus {
        self.base.class_status().await
    }

    fn describe(&self) -> String {
        format!(
            "ListenerSets in {} ({}); {}",
            self.namespace,
            self.allowed,
            self.base.describe()
        )
    }

    async fn owned_objects(
        &self,
        namespaces: Option<&[String]>,
    ) -> Result<Vec<OwnedObject>, ClusterError> {
        let mut out = self.base.owned_objects(namespaces).await?;
        let lp = ListParams::default().labels(&names::owned_selector(&self.base.rm));
        let what = format!("listing ListenerSets in {}", self.namespace);
        self.base
            .list_owned(&self.sets, &lp, &what, ObjectKind::ListenerSet, &mut out)
            .await?;
        Ok(out)
    }

    async fn delete_object(&self, o: &OwnedObject) -> Result<(), ClusterError> {
        self.base.delete_object(o).await
    }

    async fn remove_owned_listener(&self, name: &str) -> Result<(), ClusterError> {
        match self.set_holding(name) {
            Some(set) => self.remove_listener(&set, name).await,
            // Not in a set: one of ours on the Gateway, left from `gateway` mode.
            None => self.base.remove_listener(name).await,
        }
    }
}
