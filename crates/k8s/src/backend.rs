//! The backend a resource manager's config chooses (`listener_mode`): listeners on the Gateway, or a
//! ListenerSet per allocation. One type for the wiring, so every resource manager's handler, reconciler and
//! health check has the same type whatever its mode.

use itg_core::cluster::{
    ClassStatus, Cluster, ClusterError, Exposure, GatewayView, Inventory, OwnedObject,
};
use itg_core::readiness::Verdict;
use itg_core::state::Binding;

use crate::{KubeGateway, ListenerSets};

/// One resource manager's way of exposing a port.
#[derive(Clone)]
pub enum Backend {
    /// `listener_mode: gateway`: a listener per proxy port on the shared Gateway.
    Gateway(Box<KubeGateway>),
    /// `listener_mode: listenerset`: a ListenerSet per allocation, attached to the Gateway.
    ListenerSets(Box<ListenerSets>),
}

impl Backend {
    /// The Gateway-and-routes part both modes share.
    pub fn gateway(&self) -> &KubeGateway {
        match self {
            Backend::Gateway(g) => g,
            Backend::ListenerSets(s) => s.base(),
        }
    }
}

impl Cluster for Backend {
    fn view(&self) -> std::sync::Arc<GatewayView> {
        match self {
            Backend::Gateway(g) => g.view(),
            Backend::ListenerSets(s) => s.view(),
        }
    }

    async fn expose(&self, e: &Exposure<'_>) -> Result<(), ClusterError> {
        match self {
            Backend::Gateway(g) => g.expose(e).await,
            Backend::ListenerSets(s) => s.expose(e).await,
        }
    }

    async fn withdraw(
        &self,
        rm: &str,
        allocation_id: &str,
        namespace: Option<&str>,
        binding: &Binding,
    ) -> Result<(), ClusterError> {
        match self {
            Backend::Gateway(g) => g.withdraw(rm, allocation_id, namespace, binding).await,
            Backend::ListenerSets(s) => s.withdraw(rm, allocation_id, namespace, binding).await,
        }
    }

    fn controller_verdict(&self, e: &[Exposure<'_>]) -> Verdict {
        match self {
            Backend::Gateway(g) => g.controller_verdict(e),
            Backend::ListenerSets(s) => s.controller_verdict(e),
        }
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        match self {
            Backend::Gateway(g) => g.changes(),
            Backend::ListenerSets(s) => s.changes(),
        }
    }
}

impl Inventory for Backend {
    async fn check(&self) -> Result<(), String> {
        self.gateway().check().await
    }

    async fn class_status(&self) -> ClassStatus {
        self.gateway().class_status().await
    }

    fn describe(&self) -> String {
        match self {
            Backend::Gateway(g) => g.describe(),
            Backend::ListenerSets(s) => s.describe(),
        }
    }

    async fn owned_objects(
        &self,
        namespaces: Option<&[String]>,
    ) -> Result<Vec<OwnedObject>, ClusterError> {
        match self {
            Backend::Gateway(g) => g.owned_objects(namespaces).await,
            Backend::ListenerSets(s) => s.owned_objects(namespaces).await,
        }
    }

    async fn delete_object(&self, o: &OwnedObject) -> Result<(), ClusterError> {
        self.gateway().delete_object(o).await
    }

    async fn remove_owned_listener(&self, name: &str) -> Result<(), ClusterError> {
        match self {
            Backend::Gateway(g) => g.remove_owned_listener(name).await,
            Backend::ListenerSets(s) => s.remove_owned_listener(name).await,
        }
    }
}
