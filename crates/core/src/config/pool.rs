//! `resource_managers[].gateway_pool`: more Gateways for one resource manager, and the rule that resource
//! managers sharing a Gateway do not share its ports.

use serde::Deserialize;

use super::rules::rule;
use super::{ConfigError, ResourceManagerConfig};

/// One more Gateway of a resource manager's pool: it shares the port range of `internal_task_gateway`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolGateway {
    pub gateway_name: String,
    pub gateway_namespace: String,
    pub gateway_ip: String,
    /// Where the data plane probe connects for this Gateway's ports, when not `gateway_ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_address: Option<String>,
}

/// Resource managers may share a Gateway, but not its ports: overlapping ranges would hand one port to
/// two claims kept under different keys.
pub(super) fn validate_shared_gateways(rms: &[ResourceManagerConfig]) -> Result<(), ConfigError> {
    for (i, a) in rms.iter().enumerate() {
        for (j, b) in rms.iter().enumerate().skip(i + 1) {
            let same_cluster = a.kubeconfig == b.kubeconfig && a.kube_context == b.kube_context;
            let shared = a.gateways().into_iter().find(|ga| {
                b.gateways().iter().any(|gb| {
                    ga.gateway_namespace == gb.gateway_namespace
                        && ga.gateway_name == gb.gateway_name
                })
            });
            let (ra, rb) = (a.port_range(), b.port_range());
            if let Some(ga) = shared.filter(|_| same_cluster)
                && ra.start() <= rb.end()
                && rb.start() <= ra.end()
            {
                return Err(rule(
                    format!(
                        "resource_managers[{j}].internal_task_gateway.gateway_port_range_start"
                    ),
                    format!("{}-{}", rb.start(), rb.end()),
                    format!(
                        "resource managers {} and {} share Gateway {}/{} and their port ranges overlap ({}-{} and {}-{}); give each its own range",
                        a.name,
                        b.name,
                        ga.gateway_namespace,
                        ga.gateway_name,
                        ra.start(),
                        ra.end(),
                        rb.start(),
                        rb.end()
                    ),
                ));
            }
            let _ = i;
        }
    }
    Ok(())
}
