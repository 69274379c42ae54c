//! Others' ListenerSets attached to a Gateway that did not exist when the worker started: their ports are
//! foreign once the Gateway appears, because the attached-set watch is made when the Gateway is first seen.

mod common;

use std::time::{Duration, Instant};

use common::{Env, TestRm, config, make_gateway};
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::listenersets::ListenerSet;
use itg::cluster::Cluster;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

#[tokio::test]
async fn a_set_attached_to_a_gateway_missing_at_start_holds_its_port() {
    let env = Env::load();
    let rm = TestRm::new(&env, "late", (42300, 42309)).await;
    let client = env.kube().await;
    let gws: Api<Gateway> = Api::namespaced(client.clone(), &rm.gateway_ns);
    gws.delete(&rm.gateway, &DeleteParams::default())
        .await
        .expect("delete the Gateway before the worker starts");
    let cfg = config(&env, &[&rm], "");
    let (pool, _) = itg::k8s::connect(&cfg.resource_managers[0], Duration::from_secs(15))
        .await
        .expect("the worker's view of a missing Gateway starts");
    let gateway = &pool[0];
    assert!(!gateway.view().present);

    // The Gateway comes (taking sets from its own namespace), and an operator's set attaches to it.
    make_gateway(&client, &rm.gateway_ns, &rm.gateway, 39999).await;
    let sets: Api<ListenerSet> = Api::namespaced(client.clone(), &rm.gateway_ns);
    let set = format!("ops-{}", rm.name);
    let body = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "ListenerSet",
        "metadata": { "name": set, "namespace": rm.gateway_ns },
        "spec": {
            "parentRef": { "name": rm.gateway },
            "listeners": [{ "name": "db", "port": 42305, "protocol": "TCP" }]
        }
    });
    sets.patch(&set, &PatchParams::apply("operator"), &Patch::Apply(&body))
        .await
        .expect("an operator's ListenerSet");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = gateway.view();
        if view.foreign_ports.contains(&42305) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the set's port 42305 is not foreign after 60 s; the view last held: present {}, foreign {:?}",
            view.present,
            view.foreign_ports
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = sets.delete(&set, &DeleteParams::default()).await;
    rm.teardown(&env).await;
}
