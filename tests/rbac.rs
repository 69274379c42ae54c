//! The worker's RBAC grants what the worker does and nothing more, proven against the real apiserver by
//! impersonating its ServiceAccount, down to a whole task lifecycle served under it.

mod common;

use common::deploy::*;

#[tokio::test]
async fn the_worker_account_may_get_watch_and_patch_only_its_gateway() {
    let env = Env::load();
    apply_rbac(&env).await;
    let worker = as_worker(&env).await;
    let gw = "gateways.gateway.networking.k8s.io";
    let ns = Some("gateway-system");
    let mut checks = Vec::new();
    for verb in ["get", "list", "watch", "patch"] {
        checks.push(allowed(verb, gw, ns, Some("itg")));
        checks.push(denied(verb, gw, ns, Some("other")));
        checks.push(denied(verb, gw, Some("default"), Some("itg")));
    }
    for verb in ["create", "update", "delete", "deletecollection"] {
        checks.push(denied(verb, gw, ns, Some("itg")));
    }
    checks.push(denied("list", gw, ns, None));
    checks.push(denied("watch", gw, ns, None));
    checks.push(denied("patch", &format!("{gw}/status"), ns, Some("itg")));
    // The start-up report says whether a controller accepted the Gateway's class.
    checks.push(allowed(
        "get",
        "gatewayclasses.gateway.networking.k8s.io",
        None,
        Some("itg"),
    ));
    assert_access(&worker, &checks).await;

    // The calls the worker makes, made as the worker.
    let api: Api<Gateway> = Api::namespaced(worker.clone(), "gateway-system");
    api.get("itg")
        .await
        .expect("get Gateway itg (the start-up check)");
    forbidden("get Gateway other", api.get("other").await);
    let by_name = ListParams::default().fields("metadata.name=itg");
    let listed = api
        .list(&by_name)
        .await
        .expect("list with metadata.name=itg (the watch's list)");
    assert_eq!(listed.items.len(), 1);
    forbidden("list every Gateway", api.list(&ListParams::default()).await);
    forbidden(
        "list Gateway other by name",
        api.list(&ListParams::default().fields("metadata.name=other"))
            .await,
    );
    let wp = WatchParams::default()
        .fields("metadata.name=itg")
        .timeout(5);
    let mut events = api.watch(&wp, "0").await.expect("watch itg").boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), events.try_next()).await;
    assert!(
        matches!(first, Ok(Ok(Some(_)))),
        "the watch of itg delivers its events: {first:?}"
    );
    let mut denied = api
        .watch(&WatchParams::default().timeout(5), "0")
        .await
        .expect("the watch request is sent")
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), denied.next()).await;
    assert!(
        matches!(&first, Ok(Some(Err(kube::Error::Api(s)))) if s.code == 403),
        "a watch of every Gateway is refused: {first:?}"
    );

    // A listener applied as the worker (dry run: gateway-system/itg is the shared fixture).
    let body = listener("gateway-system", "itg-deploy-dry-run", 40999);
    let pp = PatchParams::apply("internal-task-gateway/itg-deploy-dry-run")
        .force()
        .dry_run();
    let applied = api
        .patch("itg", &pp, &Patch::Apply(&body))
        .await
        .expect("apply a listener to itg");
    assert!(
        applied
            .spec
            .listeners
            .iter()
            .any(|l| l.name == "itg-deploy-dry-run")
    );
    let stored = env.kube().await;
    let stored = Api::<Gateway>::namespaced(stored, "gateway-system")
        .get("itg")
        .await
        .unwrap();
    assert!(
        !stored
            .spec
            .listeners
            .iter()
            .any(|l| l.name == "itg-deploy-dry-run"),
        "a dry run only"
    );
    let mut other = body.clone();
    other["metadata"]["name"] = json!("other");
    forbidden(
        "apply a listener to Gateway other",
        api.patch("other", &pp, &Patch::Apply(&other)).await,
    );
    let dry_delete = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    forbidden("delete Gateway itg", api.delete("itg", &dry_delete).await);
}

#[tokio::test]
async fn the_worker_account_applies_and_deletes_services_and_routes_only_in_bound_namespaces() {
    let env = Env::load();
    apply_rbac(&env).await;
    let worker = as_worker(&env).await;
    let kinds = ["services", "tcproutes.gateway.networking.k8s.io"];
    let mut checks = Vec::new();
    for ns in bound_task_namespaces() {
        for r in kinds {
            for verb in ["create", "patch", "delete"] {
                checks.push(allowed(verb, r, Some(&ns), Some("x")));
            }
            // The reconciler lists them by label to find orphans.
            checks.push(allowed("list", r, Some(&ns), None));
            // Ready waits on a watch of the routes' status; Services are never watched.
            if r == "services" {
                checks.push(denied("watch", r, Some(&ns), Some("x")));
            } else {
                checks.push(allowed("watch", r, Some(&ns), None));
            }
            // It never reads one by name, nor replaces them with PUT.
            for verb in ["get", "update", "deletecollection"] {
                checks.push(denied(verb, r, Some(&ns), Some("x")));
            }
        }
    }
    for ns in [
        "team-b",
        "kube-system",
        "default",
        "itg-system",
        "gateway-system",
    ] {
        for r in kinds {
            for verb in ["create", "patch", "delete"] {
                checks.push(denied(verb, r, Some(ns), Some("x")));
            }
        }
    }
    // No Secrets, ConfigMaps or Pods anywhere, and nothing cluster-wide.
    for ns in [
        Some("team-a"),
        Some("gateway-system"),
        Some("itg-system"),
        Some("kube-system"),
        None,
    ] {
        for r in ["secrets", "configmaps", "pods", "services"] {
            for verb in ["get", "list", "watch"] {
                // Listing Services in a bound namespace is the reconciler's one read.
                if r == "services"
                    && verb == "list"
                    && ns.is_some_and(|n| bound_task_namespaces().contains(n))
                {
                    continue;
                }
                checks.push(denied(verb, r, ns, None));
            }
        }
    }
    for r in [
        "namespaces",
        "nodes",
        "clusterroles.rbac.authorization.k8s.io",
    ] {
        checks.push(denied("list", r, None, None));
    }
    // The start-up report reads the Gateway's class; nothing else of it.
    for verb in ["list", "watch", "patch", "update", "delete"] {
        checks.push(denied(
            verb,
            "gatewayclasses.gateway.networking.k8s.io",
            None,
            Some("itg"),
        ));
    }
    assert_access(&worker, &checks).await;
    forbidden(
        "list Secrets in team-a",
        Api::<Secret>::namespaced(worker.clone(), "team-a")
            .list(&ListParams::default())
            .await,
    );
    forbidden(
        "get a Secret in gateway-system",
        Api::<Secret>::namespaced(worker.clone(), "gateway-system")
            .get("x")
            .await,
    );

    // The worker's own calls, made as the worker: apply (creating, then changing), then delete.
    let name = format!("itg-deploy-{}", suffix());
    let services: Api<Service> = Api::namespaced(worker.clone(), "team-a");
    let routes: Api<TcpRoute> = Api::namespaced(worker.clone(), "team-a");
    let pp = PatchParams::apply(MANAGER).force();
    services
        .patch(&name, &pp, &Patch::Apply(service("team-a", &name, 8888)))
        .await
        .expect("apply a new Service");
    services
        .patch(&name, &pp, &Patch::Apply(service("team-a", &name, 8889)))
        .await
        .expect("change it");
    routes
        .patch(&name, &pp, &Patch::Apply(tcproute("team-a", &name)))
        .await
        .expect("apply a new TCPRoute");
    forbidden("read a Service back", services.get(&name).await);
    routes
        .delete(&name, &DeleteParams::background())
        .await
        .expect("delete the TCPRoute");
    services
        .delete(&name, &DeleteParams::background())
        .await
        .expect("delete the Service");
    // Elsewhere the same calls are refused (as dry runs, should the RBAC ever be wrong).
    let dry = pp.clone().dry_run();
    for ns in ["kube-system", "team-b", "itg-system"] {
        forbidden(
            &format!("apply a Service in {ns}"),
            Api::<Service>::namespaced(worker.clone(), ns)
                .patch(&name, &dry, &Patch::Apply(service(ns, &name, 1)))
                .await,
        );
        forbidden(
            &format!("apply a TCPRoute in {ns}"),
            Api::<TcpRoute>::namespaced(worker.clone(), ns)
                .patch(&name, &dry, &Patch::Apply(tcproute(ns, &name)))
                .await,
        );
    }
}

/// Why the ClusterRole grants `create`: a server-side apply that makes a new object is authorized as a
/// create too, though the request is a PATCH. Changing an existing object needs only `patch`.
#[tokio::test]
async fn server_side_apply_needs_create_to_make_an_object_and_only_patch_to_change_it() {
    let env = Env::load();
    apply_rbac(&env).await;
    let admin = env.kube().await;
    let worker = as_worker(&env).await;
    let ns = format!("itg-ssa-{}", suffix());
    make_namespace(&admin, &ns).await;
    let role = |verbs: &[&str]| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": { "name": "probe", "namespace": ns },
            "rules": [{ "apiGroups": [""], "resources": ["services"], "verbs": verbs }]
        })
    };
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": { "name": "probe", "namespace": ns },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "probe" },
        "subjects": [{ "kind": "ServiceAccount", "name": "itg-worker", "namespace": "itg-system" }]
    });
    apply(&admin, &role(&["patch", "delete"]), false)
        .await
        .unwrap();
    apply(&admin, &binding, false).await.unwrap();
    until_may(&worker, true, "patch", "services", &ns, None).await;
    let services: Api<Service> = Api::namespaced(worker.clone(), &ns);
    let pp = PatchParams::apply(MANAGER).force();

    let refused = services
        .patch("probe", &pp, &Patch::Apply(service(&ns, "probe", 8888)))
        .await;
    let message = match &refused {
        Err(kube::Error::Api(s)) if s.code == 403 => s.message.clone(),
        other => panic!("applying a new Service with patch alone must be forbidden: {other:?}"),
    };
    assert!(
        message.contains("cannot create"),
        "refused as a create: {message}"
    );

    apply(&admin, &role(&["create", "patch", "delete"]), false)
        .await
        .unwrap();
    until_may(&worker, true, "create", "services", &ns, None).await;
    services
        .patch("probe", &pp, &Patch::Apply(service(&ns, "probe", 8888)))
        .await
        .expect("created by apply");

    apply(&admin, &role(&["patch", "delete"]), false)
        .await
        .unwrap();
    until_may(&worker, false, "create", "services", &ns, None).await;
    services
        .patch("probe", &pp, &Patch::Apply(service(&ns, "probe", 8889)))
        .await
        .expect("an existing Service is changed by apply with patch alone");
    services
        .delete("probe", &DeleteParams::background())
        .await
        .expect("deleted");
    delete_namespace(&admin, &ns).await;
}

/// A kubeconfig that is the admin's, impersonating the worker's ServiceAccount (`as:`), for a worker run
/// in this process through its own config loading.
fn worker_kubeconfig(env: &Env) -> tempfile::NamedTempFile {
    let mut kc = kube::config::Kubeconfig::read_from(&env.kubeconfig).expect("kubeconfig readable");
    for a in &mut kc.auth_infos {
        if let Some(info) = a.auth_info.as_mut() {
            info.impersonate = Some(WORKER.into());
        }
    }
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        file.path(),
        serde_norway::to_string(&kc).expect("kubeconfig YAML"),
    )
    .expect("write");
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_running_as_its_service_account_serves_a_task_and_is_refused_elsewhere() {
    let env = Env::load();
    apply_rbac(&env).await;
    let admin = env.kube().await;
    let s = suffix();
    // A Gateway itg of its own, with the deployed Role, so the shared fixture is left alone.
    let gateway_ns = format!("itg-gw-{s}");
    make_namespace(&admin, &gateway_ns).await;
    make_gateway(&admin, &gateway_ns, "itg", 39999).await;
    for o in documents(&root().join("deploy/base/rbac-gateway.yaml")) {
        let mut o = o;
        o["metadata"]["namespace"] = json!(gateway_ns);
        apply(&admin, &o, false).await.expect("the Gateway Role");
    }
    let worker_client = as_worker(&env).await;
    until_may(
        &worker_client,
        true,
        "patch",
        "gateways.gateway.networking.k8s.io",
        &gateway_ns,
        Some("itg"),
    )
    .await;
    let unbound = format!("team-b-{s}");
    make_namespace(&admin, &unbound).await;

    let kubeconfig = worker_kubeconfig(&env);
    let rm = format!("deploy-{s}");
    let yaml = format!(
        "nats:\n  url: {}\nadmin:\n  address: 127.0.0.1:0\njetstream:\n  ack_wait: 3s\n  max_deliver: -1\nworker:\n  retry_min: 50ms\n  retry_max: 500ms\nresource_managers:\n  - name: {rm}\n    kubeconfig: {}\n    wait_for_controller: false\n    internal_task_gateway:\n      gateway_name: itg\n      gateway_namespace: {gateway_ns}\n      gateway_ip: 203.0.113.10\n      gateway_port_range_start: 40000\n      gateway_port_range_end: 40009\n",
        env.nats_url,
        kubeconfig.path().display()
    );
    let config = Config::parse(&yaml, "test config").expect("config");
    let worker = Worker::start(config.clone()).await;
    let master = Master::new(&env, &rm).await;
    let replies = Replies::watch(&env, &rm).await;

    let alloc = format!("{}.1", uuid::Uuid::new_v4());
    master.started(&alloc, "team-a", &[("jupyter", 8888)]).await;
    let answer = replies
        .wait(60, "an answer to started", |r| {
            r.iter().any(|s| s.alloc() == Some(alloc.as_str()))
        })
        .await;
    let ready = answer
        .into_iter()
        .find(|s| s.alloc() == Some(alloc.as_str()))
        .unwrap();
    assert_eq!(ready.kind, "ready", "served in team-a: {:?}", ready.body);
    let port = ready.ports()[0];
    let name = itg::names::object_name(&rm, &alloc, "jupyter");
    Api::<Service>::namespaced(admin.clone(), "team-a")
        .get(&name)
        .await
        .expect("the Service exists");
    Api::<TcpRoute>::namespaced(admin.clone(), "team-a")
        .get(&name)
        .await
        .expect("the TCPRoute exists");
    let gw = Api::<Gateway>::namespaced(admin.clone(), &gateway_ns)
        .get("itg")
        .await
        .unwrap();
    assert!(
        gw.spec
            .listeners
            .iter()
            .any(|l| l.name == name && l.port == i32::from(port))
    );
    master.ended(&alloc).await;
    replies.first(60, &alloc, "removed").await;
    assert!(
        Api::<Service>::namespaced(admin.clone(), "team-a")
            .get_opt(&name)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<TcpRoute>::namespaced(admin.clone(), "team-a")
            .get_opt(&name)
            .await
            .unwrap()
            .is_none()
    );
    let gw = Api::<Gateway>::namespaced(admin.clone(), &gateway_ns)
        .get("itg")
        .await
        .unwrap();
    assert!(!gw.spec.listeners.iter().any(|l| l.name == name));

    // A namespace without the RoleBinding: the apiserver refuses, the worker answers failed.
    let elsewhere = format!("{}.1", uuid::Uuid::new_v4());
    master
        .started(&elsewhere, &unbound, &[("jupyter", 8888)])
        .await;
    let failed = replies.first(60, &elsewhere, "failed").await;
    assert_eq!(failed.body["reason"], "kubernetes_error", "{failed:?}");
    assert!(
        failed.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("forbidden"),
        "{failed:?}"
    );
    let made = Api::<Service>::namespaced(admin.clone(), &unbound)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(made.items.is_empty(), "nothing made in {unbound}");

    // The reconciler under the same account: it may not list cluster-wide, so it lists per task namespace
    // (one it may not list in, like the unbound one, is skipped) and still removes an orphan.
    let orphan = itg::names::object_name(&rm, "gone.1", "jupyter");
    let svc = json!({ "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": orphan, "namespace": "team-a", "labels": itg::names::labels(&rm, "gone.1") },
        "spec": { "ports": [{ "port": 80 }] } });
    Api::<Service>::namespaced(admin.clone(), "team-a")
        .patch(&orphan, &PatchParams::apply("by-hand"), &Patch::Apply(&svc))
        .await
        .expect("orphan Service");
    let servers = itg::app::connect(&config)
        .await
        .expect("connects as the worker");
    let done = itg::app::reconcile_once_with(&config, &servers, false, Duration::ZERO).await;
    println!("a reconcile pass as the worker's account: {done:?}");
    let done = done.expect("a pass under the shipped RBAC completes");
    assert!(
        serde_json::to_string(&done).unwrap().contains(&orphan),
        "the orphan was found: {done:?}"
    );
    assert!(
        Api::<Service>::namespaced(admin.clone(), "team-a")
            .get_opt(&orphan)
            .await
            .unwrap()
            .is_none(),
        "the orphan Service is gone"
    );

    worker.stop().await;
    delete_namespace(&admin, &unbound).await;
    delete_namespace(&admin, &gateway_ns).await;
}

// ------------------------------------------------------------------------------------------ containers
