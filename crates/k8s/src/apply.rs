//! Writes and removals: one exposure is applied Service, listener, route, and withdrawn route, listener,
//! Service, each idempotent. A listener removal is verified: a listener another field manager co-owns stays,
//! and its port is not released.

use gateway_api::experimental::gateways::Gateway;
use itg_core::cluster::{Cluster, ClusterError, Exposure, GatewayView};
use itg_core::crashpoint;
use itg_core::names;
use itg_core::readiness::Verdict;
use itg_core::state::Binding;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};

use crate::KubeGateway;
use crate::client::classify;
use crate::objects::{
    Parent, listener_patch, listener_removal, route_body, route_object_to, service_object,
};
use crate::watch::listener_managers;

impl KubeGateway {
    /// The Gateway as the parent of this resource manager's listeners, in `gateway` mode.
    fn gateway_parent(&self) -> Parent {
        Parent {
            kind: "Gateway",
            namespace: self.gateway_namespace.clone(),
            name: self.gateway_name.clone(),
        }
    }

    /// Exposes one proxy port: its Service, then its listener (`listener`, which each backend writes in its
    /// own way), then its route to `parent`. Service first, else the route reports BackendNotFound;
    /// listener before route, else NoMatchingParent.
    pub(crate) async fn expose_with(
        &self,
        e: &Exposure<'_>,
        name: &str,
        parent: &Parent,
        listener: impl std::future::Future<Output = Result<(), ClusterError>>,
    ) -> Result<(), ClusterError> {
        self.timed("apply_service", self.apply_service(e, name))
            .await?;
        crashpoint::reach("expose.service_applied");
        self.timed("apply_listener", listener).await?;
        crashpoint::reach("expose.listener_applied");
        self.timed("apply_route", self.apply_route(e, name, parent))
            .await?;
        crashpoint::reach("expose.route_applied");
        Ok(())
    }

    /// Withdraws one proxy port: its route, its listener (`listener`), its Service. A delete the namespace
    /// forbids does not stop the rest: the listener still goes, then the refusal is reported.
    pub(crate) async fn withdraw_with(
        &self,
        name: &str,
        namespace: Option<&str>,
        listener: impl std::future::Future<Output = Result<(), ClusterError>>,
    ) -> Result<(), ClusterError> {
        let mut forbidden = None;
        let mut keep_forbidden = |r: Result<(), ClusterError>| match r {
            Err(e) if e.is_forbidden() => {
                forbidden = Some(e);
                Ok(())
            }
            other => other,
        };
        if let Some(ns) = namespace {
            let what = format!("deleting TCPRoute {ns}/{name}");
            let delete = self.bounded(
                &what,
                delete_ignoring_absent(self.routes(ns), name, what.clone()),
            );
            keep_forbidden(self.timed("delete_route", delete).await)?;
            crashpoint::reach("withdraw.route_deleted");
        }
        self.timed("remove_listener", listener).await?;
        crashpoint::reach("withdraw.listener_removed");
        if let Some(ns) = namespace {
            let services: Api<Service> = Api::namespaced(self.client.clone(), ns);
            let what = format!("deleting Service {ns}/{name}");
            let delete = self.bounded(&what, delete_ignoring_absent(services, name, what.clone()));
            keep_forbidden(self.timed("delete_service", delete).await)?;
            crashpoint::reach("withdraw.service_deleted");
        }
        forbidden.map_or(Ok(()), Err)
    }

    async fn apply_service(&self, e: &Exposure<'_>, name: &str) -> Result<(), ClusterError> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), &e.spec.namespace);
        let what = format!("applying Service {}/{name}", e.spec.namespace);
        self.bounded(
            &what,
            apply_whole(api, name, &service_object(e, name), what.clone()),
        )
        .await
    }

    async fn apply_listener(&self, e: &Exposure<'_>, name: &str) -> Result<(), ClusterError> {
        let body = listener_patch(&self.gateway_namespace, &self.gateway_name, e, name);
        let pp = PatchParams::apply(&names::listener_field_manager(&self.rm, name)).force();
        let what = format!(
            "applying listener {name} (port {}) to Gateway {}/{}",
            e.binding.gateway_port, self.gateway_namespace, self.gateway_name
        );
        // The deadline is the request's, not the wait for the lock: a queue of writers is not a hang.
        let _one_writer = self.write_lock.lock().await;
        self.bounded(&what, async {
            self.gateways
                .patch(&self.gateway_name, &pp, &Patch::Apply(&body))
                .await
                .map(drop)
                .map_err(|err| classify(&what, err))
        })
        .await
    }

    async fn apply_route(
        &self,
        e: &Exposure<'_>,
        name: &str,
        parent: &Parent,
    ) -> Result<(), ClusterError> {
        let route = route_body(
            &self.route_resource.api_version,
            &route_object_to(parent, e, name),
        );
        let pp = PatchParams::apply(names::OBJECT_FIELD_MANAGER).force();
        let what = format!(
            "applying TCPRoute {}/{name} ({})",
            e.spec.namespace, self.route_resource.api_version
        );
        self.bounded(&what, async {
            self.routes(&e.spec.namespace)
                .patch(name, &pp, &Patch::Apply(&route))
                .await
                .map(drop)
                .map_err(|err| classify(&what, err))
        })
        .await
    }

    pub(crate) async fn remove_listener(&self, name: &str) -> Result<(), ClusterError> {
        let legacy = names::legacy_listener_field_manager(name);
        let mut gw = self
            .remove_listener_as(name, &names::listener_field_manager(&self.rm, name))
            .await?;
        // A listener written before field managers named the resource manager is still held by the legacy
        // manager: drop that hold too, or the listener outlives its allocation.
        if let Some(g) = &gw
            && listener_managers(g)
                .get(name)
                .is_some_and(|ms| ms.contains(&legacy))
        {
            gw = self.remove_listener_as(name, &legacy).await?;
        }
        // The apply only drops what our managers owned: a listener another manager co-owns (say after
        // `kubectl get -o yaml | kubectl apply`) stays, and its port must not be released.
        let Some(gw) = gw else { return Ok(()) };
        match gw.spec.listeners.iter().find(|l| l.name == name) {
            None => Ok(()),
            Some(l) => Err(ClusterError::Transient(format!(
                "listener {name} (port {}) is still on Gateway {}/{}: other field managers own it too ({}); remove it from the Gateway, or have them stop managing it",
                l.port,
                self.gateway_namespace,
                self.gateway_name,
                listener_managers(&gw)
                    .remove(name)
                    .unwrap_or_default()
                    .join(", ")
            ))),
        }
    }

    /// Applies no spec under `manager`, which drops exactly the fields it owned. Returns the Gateway as the
    /// apiserver left it, or `None` when there is no Gateway.
    async fn remove_listener_as(
        &self,
        name: &str,
        manager: &str,
    ) -> Result<Option<Gateway>, ClusterError> {
        let body = listener_removal(&self.gateway_namespace, &self.gateway_name);
        let pp = PatchParams::apply(manager).force();
        let _one_writer = self.write_lock.lock().await;
        let what = format!("removing listener {name}");
        self.bounded(&what, self.removal_answer(name, &pp, &body))
            .await
    }

    async fn removal_answer(
        &self,
        name: &str,
        pp: &PatchParams,
        body: &serde_json::Value,
    ) -> Result<Option<Gateway>, ClusterError> {
        match self
            .gateways
            .patch(&self.gateway_name, pp, &Patch::Apply(body))
            .await
        {
            Ok(gw) => Ok(Some(gw)),
            // Applying onto a Gateway that is gone is refused as invalid (it lacks its required fields),
            // not as missing: either way, no Gateway means no listener to remove.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => {
                match self.gateways.get_opt(&self.gateway_name).await {
                    Ok(None) => Ok(None),
                    _ => Err(classify(
                        &format!("removing listener {name}"),
                        kube::Error::Api(s),
                    )),
                }
            }
            Err(err) => Err(classify(&format!("removing listener {name}"), err)),
        }
    }
}

/// Server-side applies a whole object the worker alone owns (a Service or a TCPRoute).
async fn apply_whole<K>(api: Api<K>, name: &str, obj: &K, what: String) -> Result<(), ClusterError>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let pp = PatchParams::apply(names::OBJECT_FIELD_MANAGER).force();
    api.patch(name, &pp, &Patch::Apply(obj))
        .await
        .map(drop)
        .map_err(|err| classify(&what, err))
}

pub(crate) async fn delete_ignoring_absent<K>(
    api: Api<K>,
    name: &str,
    what: String,
) -> Result<(), ClusterError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    deleted(
        api.delete(name, &DeleteParams::background())
            .await
            .map(drop),
        &what,
    )
}

/// Deletes an object the reconciler judged from a listing, only if it is still the one listed (same uid and
/// resourceVersion): one re-made or changed since then is left, and the next pass judges it again. An
/// identical re-apply changes no resourceVersion and is not seen here (see the reconciler's pass).
pub(crate) async fn delete_listed<K>(
    api: Api<K>,
    o: &itg_core::cluster::OwnedObject,
    what: String,
) -> Result<(), ClusterError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: o.uid.clone(),
            resource_version: o.resource_version.clone(),
        }),
        ..DeleteParams::background()
    };
    match api.delete(&o.name, &dp).await.map(drop) {
        Err(kube::Error::Api(s)) if s.code == 409 => {
            tracing::debug!(object = %what, "changed since it was listed; left for the next pass");
            Ok(())
        }
        answer => deleted(answer, &what),
    }
}

/// What the answer to a delete means: done when the object is gone or was never there.
fn deleted(answer: Result<(), kube::Error>, what: &str) -> Result<(), ClusterError> {
    match answer {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        // Forbidden says nothing of whether the object is there: the worker may have created it before its
        // rights were cut. Releasing its port now could hand the port out twice.
        Err(err) => Err(classify(what, err)),
    }
}

impl Cluster for KubeGateway {
    fn view(&self) -> std::sync::Arc<GatewayView> {
        std::sync::Arc::new(self.gateway_view())
    }

    async fn expose(&self, e: &Exposure<'_>) -> Result<(), ClusterError> {
        let name = names::object_name(e.rm, e.allocation_id, &e.binding.name);
        let parent = self.gateway_parent();
        self.expose_with(e, &name, &parent, self.apply_listener(e, &name))
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
        self.withdraw_with(&name, namespace, self.remove_listener(&name))
            .await
    }

    fn controller_verdict(&self, exposures: &[Exposure<'_>]) -> Verdict {
        self.verdict(exposures)
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(&format!("{reason} for the test"), reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_forbidden_delete_is_an_error_and_only_a_missing_object_counts_as_gone() {
        assert!(deleted(Err(api_error(404, "NotFound")), "deleting Service a/b").is_ok());
        match deleted(Err(api_error(403, "Forbidden")), "deleting Service a/b") {
            Err(ClusterError::Forbidden(m)) => {
                assert!(
                    m.contains("deleting Service a/b") && m.contains("403"),
                    "{m}"
                );
            }
            other => panic!("a 403 on delete was taken as {other:?}"),
        }
    }
}
