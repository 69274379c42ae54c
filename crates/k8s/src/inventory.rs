//! What the reconciler judges and start-up reports: every object of this resource manager found by label,
//! deleted one by one, and whether a controller accepted the Gateway's class.

use std::time::Duration;

use gateway_api::experimental::listenersets::ListenerSet;
use itg_core::cluster::{ClassStatus, ClusterError, Inventory, ObjectKind, OwnedObject};
use itg_core::names;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::DynamicObject;

use crate::KubeGateway;
use crate::apply::delete_listed;
use crate::client::classify;

fn owned<K: kube::Resource>(kind: ObjectKind, o: &K) -> Option<OwnedObject> {
    let m = o.meta();
    Some(OwnedObject {
        kind,
        namespace: m.namespace.clone()?,
        name: m.name.clone()?,
        created: m.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second()),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
    })
}

impl Inventory for KubeGateway {
    /// Every Service and TCPRoute of this resource manager, by label: in each of `namespaces`, or in all
    /// namespaces when `None` (which needs cluster-wide list rights).
    ///
    /// # Errors
    /// [`ClusterError`] when a list fails.
    async fn owned_objects(
        &self,
        namespaces: Option<&[String]>,
    ) -> Result<Vec<OwnedObject>, ClusterError> {
        let lp = kube::api::ListParams::default().labels(&names::owned_selector(&self.rm));
        let scopes: Vec<Option<&str>> = match namespaces {
            Some(list) => list.iter().map(|n| Some(n.as_str())).collect(),
            None => vec![None],
        };
        let mut out = Vec::new();
        for ns in scopes {
            let (svcs, routes): (Api<Service>, Api<DynamicObject>) = match ns {
                Some(ns) => (Api::namespaced(self.client.clone(), ns), self.routes(ns)),
                None => (
                    Api::all(self.client.clone()),
                    Api::all_with(self.client.clone(), &self.route_resource),
                ),
            };
            let what = format!("listing Services in {}", ns.unwrap_or("all namespaces"));
            self.list_owned(&svcs, &lp, &what, ObjectKind::Service, &mut out)
                .await?;
            let what = format!("listing TCPRoutes in {}", ns.unwrap_or("all namespaces"));
            self.list_owned(&routes, &lp, &what, ObjectKind::TcpRoute, &mut out)
                .await?;
        }
        Ok(out)
    }

    /// Deletes one object found by [`KubeGateway::owned_objects`].
    ///
    /// # Errors
    /// [`ClusterError`] when the delete fails (a missing object is not a failure).
    async fn delete_object(&self, o: &OwnedObject) -> Result<(), ClusterError> {
        let what = format!("deleting {:?} {}/{}", o.kind, o.namespace, o.name);
        let call = what.clone();
        self.bounded(&call, async {
            match o.kind {
                ObjectKind::Service => {
                    let api: Api<Service> = Api::namespaced(self.client.clone(), &o.namespace);
                    delete_listed(api, o, what).await
                }
                ObjectKind::TcpRoute => delete_listed(self.routes(&o.namespace), o, what).await,
                ObjectKind::ListenerSet => {
                    let api: Api<ListenerSet> = Api::namespaced(self.client.clone(), &o.namespace);
                    delete_listed(api, o, what).await
                }
            }
        })
        .await
    }

    /// Removes a listener the worker owns by its name.
    ///
    /// # Errors
    /// [`ClusterError`] when the apply fails.
    async fn remove_owned_listener(&self, name: &str) -> Result<(), ClusterError> {
        self.remove_listener(name).await
    }

    /// Whether the Gateway's class is accepted by a controller, read once (for the start-up report).
    async fn class_status(&self) -> ClassStatus {
        let Some(class) = self.gateway().map(|g| g.spec.gateway_class_name.clone()) else {
            return ClassStatus::Unknown {
                class: String::new(),
                why: "the Gateway is not found".into(),
            };
        };
        let api: Api<gateway_api::experimental::gatewayclasses::GatewayClass> =
            Api::all(self.client.clone());
        match api.get_opt(&class).await {
            Ok(Some(gc)) => {
                let controller = gc.spec.controller_name.clone();
                let accepted = gc
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Accepted"));
                match accepted {
                    Some(c) if c.status == "True" => ClassStatus::Accepted { class, controller },
                    // The CRD's default status (Unknown, Pending): no controller has written one.
                    Some(c) if c.status == "Unknown" && c.reason == "Pending" => {
                        ClassStatus::Unwritten { class, controller }
                    }
                    Some(c) => ClassStatus::NotAccepted {
                        class,
                        controller,
                        why: format!("Accepted={}: {}: {}", c.status, c.reason, c.message),
                    },
                    None => ClassStatus::Unwritten { class, controller },
                }
            }
            Ok(None) => ClassStatus::Unknown {
                class,
                why: "no such GatewayClass".into(),
            },
            Err(e) => ClassStatus::Unknown {
                class,
                why: e.to_string(),
            },
        }
    }

    async fn check(&self) -> Result<(), String> {
        let limit = Duration::from_secs(5);
        match tokio::time::timeout(limit, self.client.apiserver_version()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer in {} s", limit.as_secs())),
        }
    }

    fn describe(&self) -> String {
        format!("TCPRoute {}", self.route_version())
    }
}

/// Objects listed per page: a page is one bounded call, however many objects the resource manager has.
const PAGE: u32 = 500;

impl KubeGateway {
    /// Adds what `api` lists under `lp` to `out`, metadata only (the reconciler judges names, ages and
    /// versions, never specs), a page at a time.
    pub(crate) async fn list_owned<K>(
        &self,
        api: &Api<K>,
        lp: &kube::api::ListParams,
        what: &str,
        kind: ObjectKind,
        out: &mut Vec<OwnedObject>,
    ) -> Result<(), ClusterError>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let mut lp = lp.clone().limit(PAGE);
        loop {
            let page = self
                .bounded(what, async {
                    api.list_metadata(&lp).await.map_err(|e| classify(what, e))
                })
                .await?;
            out.extend(page.items.iter().filter_map(|m| owned(kind, m)));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => lp = lp.continue_token(&token),
                None => return Ok(()),
            }
        }
    }
}
