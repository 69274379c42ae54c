//! Helpers of the deployment tests (tests/deploy.rs and tests/rbac.rs): reading the manifests under
//! `deploy/`, applying them, and checking what the worker's ServiceAccount may do. Its `use` lines are a
//! prelude for those two files, so every test binary that does not use them would warn.
#![allow(unused_imports)]

pub use std::collections::{BTreeMap, BTreeSet};
pub use std::path::{Path, PathBuf};
pub use std::time::Duration;

pub use super::{
    Env, Master, Replies, Worker, delete_namespace, make_gateway, make_namespace, suffix,
};
pub use futures::{StreamExt, TryStreamExt};
pub use gateway_api::experimental::gateways::Gateway;
pub use gateway_api::experimental::tcproutes::TcpRoute;
pub use itg::config::Config;
pub use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
pub use k8s_openapi::api::core::v1::{Secret, Service};
pub use kube::api::{
    DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    WatchParams,
};
pub use kube::discovery::Scope;
pub use kube::{Api, Client};
pub use serde::Deserialize;
pub use serde_json::{Value, json};

/// The user the apiserver sees for the worker's pods.
pub const WORKER: &str = "system:serviceaccount:itg-system:itg-worker";
/// The field manager of every apply made here.
pub const MANAGER: &str = "itg-deploy-test";
pub const GROUP: &str = "gateway.networking.k8s.io";

// ------------------------------------------------------------------------------------------ the files

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a YAML file (empty ones skipped).
pub fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every `*.yaml` under `dir`, sorted.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = entry.expect("directory entry").path();
            if p.is_dir() {
                todo.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The directories under `deploy/` that `kubectl apply -k` takes.
pub fn kustomizations() -> Vec<PathBuf> {
    yaml_files(&root().join("deploy"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"))
        .map(|p| p.parent().expect("parent").to_owned())
        .collect()
}

/// What `kubectl apply -k dir` applies, each object with the file it comes from. The kustomizations list
/// files and, at most, the image to run (checked by a test), so the files are the output but for the
/// containers' `image`, which `images` names as Kustomize does.
pub fn kustomize(dir: &Path) -> Vec<(PathBuf, Value)> {
    let k = documents(&dir.join("kustomization.yaml"));
    let resources = k[0]["resources"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no resources list", dir.display()));
    let images: BTreeMap<&str, String> = k[0]["images"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let name = i["name"].as_str().expect("images[].name");
            let new_name = i["newName"].as_str().unwrap_or(name);
            let tag = i["newTag"].as_str().expect("images[].newTag");
            (name, format!("{new_name}:{tag}"))
        })
        .collect();
    let mut out = Vec::new();
    for r in resources {
        let p = dir.join(r.as_str().expect("a resource is a file"));
        for mut v in documents(&p) {
            // pointer_mut, not indexing: IndexMut would insert the missing keys into every object.
            if let Some(cs) = v
                .pointer_mut("/spec/template/spec/containers")
                .and_then(Value::as_array_mut)
            {
                for c in cs {
                    if let Some(image) = c["image"].as_str().and_then(|i| images.get(i)) {
                        c["image"] = json!(image);
                    }
                }
            }
            out.push((p.clone(), v));
        }
    }
    out
}

pub fn base() -> Vec<Value> {
    kustomize(&root().join("deploy/base"))
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

pub fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The worker config held by the ConfigMap, parsed by the worker's own loader.
pub fn configmap_config() -> Config {
    let objects = base();
    let cm = find(&objects, "ConfigMap", "itg-worker-config");
    let text = cm["data"]["config.yaml"]
        .as_str()
        .expect("ConfigMap data config.yaml");
    Config::parse(text, "deploy/base/configmap.yaml").expect("the ConfigMap's config is valid")
}

/// The namespaces a RoleBinding in `deploy/task-namespaces` lets the worker act in.
pub fn bound_task_namespaces() -> BTreeSet<String> {
    kustomize(&root().join("deploy/task-namespaces"))
        .into_iter()
        .filter(|(_, o)| o["kind"] == "RoleBinding" && o["roleRef"]["name"] == "itg-worker-tasks")
        .map(|(_, o)| o["metadata"]["namespace"].as_str().unwrap().to_owned())
        .collect()
}

// ------------------------------------------------------------------------------------------ the apiserver

/// Server-side applies one manifest, for real or as a dry run, as whoever `client` is.
pub async fn apply(
    client: &Client,
    object: &Value,
    dry_run: bool,
) -> Result<DynamicObject, kube::Error> {
    let api_version = object["apiVersion"].as_str().expect("apiVersion");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, object["kind"].as_str().expect("kind"));
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    let name = object["metadata"]["name"].as_str().expect("metadata.name");
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = object["metadata"]["namespace"].as_str().unwrap_or_else(|| {
                panic!("{api_version} {name} is namespaced and must name its namespace")
            });
            Api::namespaced_with(client.clone(), ns, &ar)
        }
        Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    let mut pp = PatchParams::apply(MANAGER).force();
    if dry_run {
        pp = pp.dry_run();
    }
    api.patch(name, &pp, &Patch::Apply(object)).await
}

pub fn code<T>(r: &Result<T, kube::Error>) -> Option<u16> {
    match r {
        Ok(_) => None,
        Err(kube::Error::Api(s)) => Some(s.code),
        Err(_) => Some(0),
    }
}

pub fn forbidden<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) {
    assert_eq!(code(&r), Some(403), "{what} must be forbidden: {r:?}");
}

/// A client that acts as the worker's ServiceAccount (the admin impersonates it).
pub async fn as_worker(env: &Env) -> Client {
    let kc = kube::config::Kubeconfig::read_from(&env.kubeconfig).expect("kubeconfig readable");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig valid");
    cfg.auth_info.impersonate = Some(WORKER.into());
    Client::try_from(cfg).expect("kube client")
}

/// Whether the client's user may do `verb` (SelfSubjectAccessReview: the apiserver's own answer).
pub async fn may(
    client: &Client,
    verb: &str,
    resource: &str,
    ns: Option<&str>,
    name: Option<&str>,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (resource, None),
    };
    let (group, resource) = match resource.split_once('.') {
        Some((r, g)) => (g, r),
        None => ("", resource),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                verb: Some(verb.into()),
                namespace: ns.map(Into::into),
                name: name.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectAccessReview")
        .status
        .is_some_and(|s| s.allowed)
}

/// Waits until the authorizer has caught up with RBAC just written.
pub async fn until_may(
    client: &Client,
    want: bool,
    verb: &str,
    resource: &str,
    ns: &str,
    name: Option<&str>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while may(client, verb, resource, Some(ns), name).await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "RBAC did not settle: {verb} {resource} in {ns} still not {want} after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One question for the authorizer: may the user `verb` `resource` (`name` in `ns`)? And the answer wanted.
pub struct Access {
    want: bool,
    verb: &'static str,
    resource: String,
    ns: Option<String>,
    name: Option<String>,
}

pub fn allowed(verb: &'static str, resource: &str, ns: Option<&str>, name: Option<&str>) -> Access {
    Access {
        want: true,
        verb,
        resource: resource.to_owned(),
        ns: ns.map(Into::into),
        name: name.map(Into::into),
    }
}

pub fn denied(verb: &'static str, resource: &str, ns: Option<&str>, name: Option<&str>) -> Access {
    Access {
        want: false,
        ..allowed(verb, resource, ns, name)
    }
}

/// Asks every question at once and fails with every wrong answer.
pub async fn assert_access(client: &Client, checks: &[Access]) {
    let answers = futures::future::join_all(checks.iter().map(|a| {
        may(
            client,
            a.verb,
            &a.resource,
            a.ns.as_deref(),
            a.name.as_deref(),
        )
    }))
    .await;
    let wrong: Vec<String> = checks
        .iter()
        .zip(answers)
        .filter(|(a, got)| a.want != *got)
        .map(|(a, _)| {
            format!(
                "{} {} {} in {}: wanted {}",
                a.verb,
                a.resource,
                a.name.as_deref().unwrap_or("(any)"),
                a.ns.as_deref().unwrap_or("(cluster)"),
                if a.want { "allowed" } else { "denied" }
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "the worker account's access is wrong:\n{}",
        wrong.join("\n")
    );
}

/// Applies the worker's ServiceAccount and RBAC (deploy/base and deploy/task-namespaces) for real, with
/// their namespaces, and waits until the authorizer grants them.
pub async fn apply_rbac(env: &Env) {
    let admin = env.kube().await;
    let mut objects = base();
    objects.extend(
        kustomize(&root().join("deploy/task-namespaces"))
            .into_iter()
            .map(|(_, v)| v),
    );
    for o in &objects {
        if let Some(ns) = o["metadata"]["namespace"].as_str() {
            make_namespace(&admin, ns).await;
        }
    }
    for o in objects.iter().filter(|o| {
        matches!(
            o["kind"].as_str(),
            Some(
                "Namespace"
                    | "ServiceAccount"
                    | "Role"
                    | "RoleBinding"
                    | "ClusterRole"
                    | "ClusterRoleBinding"
            )
        )
    }) {
        apply(&admin, o, false)
            .await
            .unwrap_or_else(|e| panic!("apply {} {}: {e}", o["kind"], o["metadata"]["name"]));
    }
    // The authorizer learns of new RBAC within moments. Wait for it without asserting: what the worker
    // may do is for the tests to check, each with its own message.
    let worker = as_worker(env).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline
        && !(may(
            &worker,
            "patch",
            "gateways.gateway.networking.k8s.io",
            Some("gateway-system"),
            Some("itg"),
        )
        .await
            && may(&worker, "patch", "services", Some("team-a"), None).await)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn service(ns: &str, name: &str, port: i32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "type": "ClusterIP", "selector": { "app": name },
                  "ports": [{ "name": "p", "port": port, "protocol": "TCP" }] }
    })
}

pub fn tcproute(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1alpha2"), "kind": "TCPRoute",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "parentRefs": [{ "group": GROUP, "kind": "Gateway", "name": "itg", "namespace": "gateway-system" }],
            "rules": [{ "backendRefs": [{ "group": "", "kind": "Service", "name": name, "port": 8888 }] }]
        }
    })
}

pub fn listener(gateway_ns: &str, name: &str, port: u16) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "Gateway",
        "metadata": { "name": "itg", "namespace": gateway_ns },
        "spec": { "listeners": [{ "name": name, "port": port, "protocol": "TCP" }] }
    })
}

// ------------------------------------------------------------------------------------------ manifests
