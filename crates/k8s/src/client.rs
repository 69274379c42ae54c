//! The apiserver client: built from the resource manager's kubeconfig, checked at start, and every call
//! bounded by `worker.kubernetes_call_timeout`, timed into the metrics and its errors sorted into retry,
//! capacity or give-up.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gateway_api::experimental::gateways::Gateway;
use itg_core::cluster::ClusterError;
use itg_core::config::{ListenerMode, ResourceManagerConfig};
use itg_core::metrics;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};

use crate::objects::{GATEWAY_GROUP, TCPROUTE_VERSIONS};
use crate::{Backend, KubeGateway, ListenerSets};

/// Builds the client for a resource manager: its kubeconfig when set, else in-cluster config, else
/// `$KUBECONFIG` / `~/.kube/config`.
///
/// # Errors
/// A message naming the kubeconfig that could not be used.
pub async fn client_for(rm: &ResourceManagerConfig) -> Result<(Client, String), String> {
    let options = kube::config::KubeConfigOptions {
        context: rm.kube_context.clone(),
        ..Default::default()
    };
    let config = match &rm.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None if rm.kube_context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("kubeconfig ($KUBECONFIG or ~/.kube/config): {e}"))?,
        None => kube::Config::infer().await.map_err(|e| {
            format!("no kubeconfig set, and neither in-cluster config nor $KUBECONFIG works: {e}")
        })?,
    };
    let where_ = format!(
        "{} from {}",
        config.cluster_url,
        rm.kubeconfig.as_ref().map_or_else(
            || "the inferred kubeconfig".to_owned(),
            |p| p.display().to_string()
        )
    );
    let client =
        Client::try_from(config).map_err(|e| format!("Kubernetes client for {where_}: {e}"))?;
    Ok((client, where_))
}

/// Sorts a kube error into retry, capacity or give-up.
pub fn classify(what: &str, err: kube::Error) -> ClusterError {
    match err {
        kube::Error::Api(s) => {
            let msg = format!("{what}: {} ({} {})", s.message, s.code, s.reason);
            let m = s.message.as_str();
            match s.code {
                422 if m.contains("must have at most") || m.contains("Too many") => {
                    ClusterError::Capacity(msg)
                }
                422 if m.contains("port, protocol") || m.contains("unique") => {
                    ClusterError::Capacity(msg)
                }
                403 => ClusterError::Forbidden(msg),
                409 | 429 | 500..=599 => ClusterError::Transient(msg),
                // The Gateway may be re-created by its operator: keep retrying until the deadline.
                404 if what.contains("listener") => ClusterError::Transient(msg),
                _ => ClusterError::Permanent(msg),
            }
        }
        other => ClusterError::Transient(format!("{what}: {other}")),
    }
}

/// Connects to the apiserver of `rm`, checks that it answers and that each Gateway of its pool exists, and
/// starts the watches of the backend its `listener_mode` chooses, one per Gateway (the resource manager's
/// own first). Returns the backends and where the apiserver was found.
///
/// # Errors
/// A message naming the apiserver or the Gateway, and what to fix.
pub async fn connect(
    rm: &ResourceManagerConfig,
    call_timeout: Duration,
) -> Result<(Vec<Backend>, String), String> {
    let (client, server) = client_for(rm).await?;
    let silent = || format!("apiserver from {server} gave no answer in {call_timeout:?}");
    tokio::time::timeout(call_timeout, client.apiserver_version())
        .await
        .map_err(|_| silent())?
        .map_err(|e| format!("apiserver from {server} does not answer: {e}"))?;
    let mut backends = Vec::new();
    for (i, g) in rm.gateways().iter().enumerate() {
        let at = if i == 0 {
            "internal_task_gateway".to_owned()
        } else {
            format!("gateway_pool[{}]", i - 1)
        };
        let api: Api<Gateway> = Api::namespaced(client.clone(), &g.gateway_namespace);
        let found = tokio::time::timeout(call_timeout, api.get_opt(&g.gateway_name))
            .await
            .map_err(|_| silent())?;
        match found {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(format!(
                    "Gateway {}/{} not found in the cluster of {server}; create it (with a placeholder listener) or fix {at}",
                    g.gateway_namespace, g.gateway_name
                ));
            }
            Err(e) => {
                return Err(format!(
                    "reading Gateway {}/{} via {server}: {e}",
                    g.gateway_namespace, g.gateway_name
                ));
            }
        }
        let gateway = KubeGateway::start(client.clone(), rm, g)
            .await
            .map_err(|e| e.to_string())?
            .with_call_timeout(call_timeout);
        backends.push(match rm.listener_mode {
            ListenerMode::Gateway => Backend::Gateway(Box::new(gateway)),
            ListenerMode::Listenerset => Backend::ListenerSets(Box::new(
                ListenerSets::start(gateway, rm)
                    .await
                    .map_err(|e| e.to_string())?,
            )),
        });
    }
    Ok((backends, server))
}

/// Finds which TCPRoute version the apiserver serves, preferring `v1`.
///
/// # Errors
/// [`ClusterError::Permanent`] when it serves neither, [`ClusterError::Transient`] when discovery fails.
pub async fn route_resource(client: &Client) -> Result<ApiResource, ClusterError> {
    for version in TCPROUTE_VERSIONS {
        match client
            .list_api_group_resources(&format!("{GATEWAY_GROUP}/{version}"))
            .await
        {
            Ok(list) if list.resources.iter().any(|r| r.name == "tcproutes") => {
                let gvk = GroupVersionKind::gvk(GATEWAY_GROUP, version, "TCPRoute");
                return Ok(ApiResource::from_gvk_with_plural(&gvk, "tcproutes"));
            }
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(ClusterError::Transient(format!(
                    "discovering {GATEWAY_GROUP}/{version}: {e}"
                )));
            }
        }
    }
    Err(ClusterError::Permanent(format!(
        "the apiserver serves TCPRoute in neither {} of {GATEWAY_GROUP}; install the Gateway API CRDs (v1.6 standard or experimental, or v1.5 experimental)",
        TCPROUTE_VERSIONS.join(" nor ")
    )))
}

impl KubeGateway {
    /// Bounds every apiserver request to `call_timeout` (`worker.kubernetes_call_timeout`).
    #[must_use]
    pub fn with_call_timeout(mut self, call_timeout: std::time::Duration) -> Self {
        self.call_timeout = call_timeout;
        self
    }

    /// `f`, or a transient error once it has taken longer than one request may.
    pub(crate) async fn bounded<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, ClusterError>>,
    ) -> Result<T, ClusterError> {
        tokio::time::timeout(self.call_timeout, f)
            .await
            .unwrap_or_else(|_| {
                Err(ClusterError::Transient(format!(
                    "{what}: no answer from the apiserver in {:?} (worker.kubernetes_call_timeout); retrying. Check the network path to the apiserver",
                    self.call_timeout
                )))
            })
    }

    /// The TCPRoute version this worker reads and writes (`v1` or `v1alpha2`).
    pub fn route_version(&self) -> &str {
        &self.route_resource.version
    }

    pub(crate) fn routes(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &self.route_resource)
    }

    pub(crate) async fn timed(
        &self,
        call: &str,
        f: impl Future<Output = Result<(), ClusterError>>,
    ) -> Result<(), ClusterError> {
        let start = std::time::Instant::now();
        let result = f.await;
        metrics::get().kube_call(&self.rm, call, start.elapsed(), result.is_ok());
        result
    }

    /// The apiserver client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn gateway(&self) -> Option<Arc<Gateway>> {
        self.reflector
            .state()
            .into_iter()
            .find(|g| g.metadata.name.as_deref() == Some(&self.gateway_name))
    }
}
