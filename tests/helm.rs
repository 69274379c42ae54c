//! The Helm chart in `deploy/helm/internal-task-gateway`, rendered by the helm binary `scripts/testenv up`
//! builds (HELM in `.itg/env`): `helm lint`; the default render and a render with every value set, each
//! accepted by a server-side dry run on the real apiserver; and the default render granting exactly the
//! RBAC of the Kustomize manifests, compared object by object.

mod common;

use std::process::Command;

use common::deploy::*;

const CHART: &str = "deploy/helm/internal-task-gateway";
const FULL_VALUES: &str = "deploy/helm/internal-task-gateway/ci/full-values.yaml";
/// The Prometheus Operator release whose ServiceMonitor CRD the full render is checked against, from the
/// Go module proxy (the module holds the upstream CRD YAML), as the Gateway API CRDs are.
const PROMETHEUS_OPERATOR: &str = "github.com/prometheus-operator/prometheus-operator@v0.85.0";

/// A variable of `.itg/env` (or `ITG_TEST_<name>`): the test fails, saying what to run, when it is missing.
fn env_var(name: &str) -> String {
    if let Ok(v) = std::env::var(format!("ITG_TEST_{name}")) {
        return v;
    }
    common::env_var(name).unwrap_or_else(|| {
        panic!(
            "{name} unknown: run `scripts/testenv up` first (it builds helm and writes .itg/env)"
        )
    })
}

/// Runs helm from the repository root; fails with its output when it fails.
fn helm(args: &[&str]) -> String {
    let bin = env_var("HELM");
    let out = Command::new(&bin)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e} (run `scripts/testenv up` to build it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helm {}: {text}", args.join(" "));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template` into namespace itg-system, as deploy/base installs, parsed into objects.
fn render(values: Option<&str>) -> Vec<Value> {
    let mut args = vec!["template", "itg", CHART, "--namespace", "itg-system"];
    if let Some(v) = values {
        args.extend(["--values", v]);
    }
    let text = helm(&args);
    serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("helm renders YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(objects: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::<String, Vec<String>>::new();
    for o in objects {
        let ns = o["metadata"]["namespace"].as_str().unwrap_or("");
        out.entry(o["kind"].as_str().expect("kind").to_owned())
            .or_default()
            .push(format!(
                "{ns}/{}",
                o["metadata"]["name"].as_str().expect("name")
            ));
    }
    out.values_mut().for_each(|v| v.sort());
    out
}

/// The worker config a rendered ConfigMap holds, parsed by the worker's own loader.
fn chart_config(objects: &[Value], name: &str) -> (Value, Config) {
    let cm = find(objects, "ConfigMap", name);
    let text = cm["data"]["config.yaml"].as_str().expect("config.yaml");
    let config =
        Config::parse(text, "the chart's ConfigMap").expect("the rendered config is valid");
    (serde_norway::from_str(text).expect("YAML"), config)
}

/// The worker config a rendered ConfigMap holds, as YAML.
fn raw_config_of(objects: &[Value], name: &str) -> Value {
    chart_config(objects, name).0
}

/// Server-side dry run of every object, into namespaces made for real first (a dry run into a missing
/// namespace is refused).
async fn dry_run(objects: &[Value]) {
    let admin = Env::load().kube().await;
    for o in objects {
        if let Some(ns) = o["metadata"]["namespace"].as_str() {
            make_namespace(&admin, ns).await;
        }
    }
    let mut refused = Vec::new();
    for o in objects {
        if let Err(e) = apply(&admin, o, true).await {
            refused.push(format!("{} {}: {e}", o["kind"], o["metadata"]["name"]));
        }
    }
    assert!(refused.is_empty(), "refused:\n{}", refused.join("\n"));
}

#[test]
fn helm_lint_passes_with_the_default_and_the_full_values() {
    for extra in [vec![], vec!["--values", FULL_VALUES]] {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend(extra);
        println!("helm {}:\n{}", args.join(" "), helm(&args));
    }
}

#[tokio::test]
async fn the_default_render_installs_what_deploy_base_installs_and_is_accepted_by_a_dry_run() {
    let objects = render(None);
    let got = kinds(&objects);
    println!("default render: {got:#?}");
    let want: BTreeMap<String, Vec<String>> = [
        (
            "ClusterRole",
            vec!["/itg-worker-gatewayclasses", "/itg-worker-tasks"],
        ),
        ("ClusterRoleBinding", vec!["/itg-worker-gatewayclasses"]),
        ("ConfigMap", vec!["itg-system/itg-worker-config"]),
        ("Deployment", vec!["itg-system/itg-worker"]),
        ("PodDisruptionBudget", vec!["itg-system/itg-worker"]),
        (
            "Role",
            vec![
                "gateway-system/itg-worker-gateway",
                "gateway-system/itg-worker-listenersets",
            ],
        ),
        (
            "RoleBinding",
            vec![
                "gateway-system/itg-worker-gateway",
                "gateway-system/itg-worker-listenersets",
                "team-a/itg-worker-tasks",
            ],
        ),
        ("ServiceAccount", vec!["itg-system/itg-worker"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        got, want,
        "the objects of deploy/base and deploy/task-namespaces"
    );

    // The same config as the base's ConfigMap, key for key.
    let base_objects = base();
    let base_cm = find(&base_objects, "ConfigMap", "itg-worker-config");
    let base_config: Value =
        serde_norway::from_str(base_cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let (config, _) = chart_config(&objects, "itg-worker-config");
    assert_eq!(config, base_config, "the default config is deploy/base's");

    // The same container, pod security and disruption budget.
    let d = find(&objects, "Deployment", "itg-worker");
    let b = find(&base_objects, "Deployment", "itg-worker");
    assert_eq!(d["spec"]["replicas"], b["spec"]["replicas"]);
    let (pod, base_pod) = (
        &d["spec"]["template"]["spec"],
        &b["spec"]["template"]["spec"],
    );
    for key in [
        "containers",
        "securityContext",
        "serviceAccountName",
        "terminationGracePeriodSeconds",
        "volumes",
    ] {
        assert_eq!(pod[key], base_pod[key], "pod spec {key}");
    }
    assert_eq!(d["spec"]["strategy"], b["spec"]["strategy"]);
    let pdb = find(&objects, "PodDisruptionBudget", "itg-worker");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"], d["spec"]["selector"]["matchLabels"],
        "the budget covers the workers"
    );
    assert_eq!(
        d["spec"]["selector"]["matchLabels"],
        only_keys_of(
            &d["spec"]["template"]["metadata"]["labels"],
            &d["spec"]["selector"]["matchLabels"]
        ),
        "the pods carry the selector's labels"
    );
    dry_run(&objects).await;
}

#[tokio::test]
async fn the_full_values_render_is_accepted_by_a_dry_run_and_carries_every_value() {
    install_servicemonitor_crd().await;
    let objects = render(Some(FULL_VALUES));
    println!("full render: {:#?}", kinds(&objects));

    let d = find(&objects, "Deployment", "itg-full");
    assert_eq!(d["spec"]["replicas"], 3);
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        c["image"],
        "registry.example.internal/internal-task-gateway:0.2.0"
    );
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(c["ports"][0]["containerPort"], 9500);
    assert_eq!(pod["imagePullSecrets"][0]["name"], "registry-credentials");
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    assert!(pod["affinity"]["nodeAffinity"].is_object());
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["team"],
        "platform"
    );
    let nats_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "nats")
        .expect("the NATS secret's volume");
    assert_eq!(nats_volume["secret"]["secretName"], "itg-nats");
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({ "name": "nats", "mountPath": "/etc/itg/nats", "readOnly": true }))
    );
    assert_eq!(
        find(&objects, "PodDisruptionBudget", "itg-full")["spec"]["minAvailable"],
        2
    );

    // The config the worker reads names the mounted files and every resource manager.
    let (_, config) = chart_config(&objects, "itg-full-config");
    let creds = config.nats.creds_file.clone().expect("creds_file");
    assert_eq!(creds, Path::new("/etc/itg/nats/worker.creds"));
    let tls = config.nats.tls.clone().expect("tls");
    assert_eq!(
        tls.ca_file.as_deref(),
        Some(Path::new("/etc/itg/nats/ca.pem"))
    );
    assert_eq!(config.admin.address, "[::]:9500");
    assert_eq!(config.nats.connection_name, "itg-full-west");
    assert_eq!(
        raw_config_of(&objects, "itg-full-config")["log_format"],
        "text"
    );
    let allowed: BTreeMap<&str, Vec<String>> = config
        .resource_managers
        .iter()
        .map(|rm| {
            (
                rm.name.as_str(),
                rm.allowed_namespaces.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        allowed["k8s-west"],
        ["team-vision", "team-nlp"],
        "taskNamespaces by default"
    );
    assert_eq!(
        allowed["k8s-west-gpu"],
        ["team-vision"],
        "a resource manager's own list wins"
    );

    // RBAC: a Role per Gateway namespace naming its Gateways, a RoleBinding per task namespace.
    let roles: BTreeMap<&str, Vec<&str>> = objects
        .iter()
        .filter(|o| o["kind"] == "Role")
        .map(|o| {
            (
                o["metadata"]["namespace"].as_str().unwrap(),
                strs(&o["rules"][0]["resourceNames"]),
            )
        })
        .collect();
    let roles: BTreeMap<&str, Vec<&str>> = roles
        .into_iter()
        .filter(|(_, names)| !names.is_empty())
        .collect();
    assert_eq!(
        roles,
        BTreeMap::from([
            ("edge-gateways", vec!["edge"]),
            ("gateway-system", vec!["itg", "itg-gpu"])
        ])
    );
    // ListenerSet RBAC only where a resource manager makes sets (rbac.listenerSets is false here).
    let set_roles: Vec<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "Role" && o["rules"][0]["resources"][0] == "listenersets")
        .map(|o| o["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(set_roles, ["edge-sets"]);
    let task_bindings: BTreeSet<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" && o["roleRef"]["kind"] == "ClusterRole")
        .map(|o| o["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(task_bindings, BTreeSet::from(["team-nlp", "team-vision"]));

    let sm = find(&objects, "ServiceMonitor", "itg-full");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "admin");
    assert_eq!(sm["spec"]["endpoints"][0]["interval"], "15s");
    let svc = find(&objects, "Service", "itg-full-metrics");
    assert_eq!(
        svc["spec"]["selector"],
        d["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        only_keys_of(
            &svc["metadata"]["labels"],
            &sm["spec"]["selector"]["matchLabels"]
        ),
        "the ServiceMonitor selects the metrics Service"
    );

    // The alert rules and the dashboard are the files under deploy/, read by the templates, not copies.
    let rule = find(&objects, "PrometheusRule", "itg-full");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let rules: Value = serde_norway::from_str(
        &std::fs::read_to_string(root().join("deploy/prometheus/alerts.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(rule["spec"]["groups"], rules["groups"]);
    let board = find(&objects, "ConfigMap", "itg-full-dashboard");
    assert_eq!(board["metadata"]["namespace"], "monitoring");
    assert_eq!(board["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(board["metadata"]["labels"]["team"], "platform");
    assert_eq!(
        board["metadata"]["annotations"]["grafana_folder"],
        "Platform"
    );
    let json: Value = serde_json::from_str(
        board["data"]["internal-task-gateway.json"]
            .as_str()
            .expect("the dashboard's JSON"),
    )
    .unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json, file);
    dry_run(&objects).await;
}

/// The upstream ServiceMonitor and PrometheusRule CRDs, applied for real, so the dry run checks their fields.
async fn install_servicemonitor_crd() {
    let out = Command::new("go")
        .args(["mod", "download", "-json", PROMETHEUS_OPERATOR])
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("go is installed (scripts/testenv needs it too)");
    assert!(
        out.status.success(),
        "go mod download {PROMETHEUS_OPERATOR}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).expect("go mod download -json");
    let dir = PathBuf::from(info["Dir"].as_str().expect("Dir"));
    let admin = Env::load().kube().await;
    for (file, kind) in [
        ("servicemonitors", "ServiceMonitor"),
        ("prometheusrules", "PrometheusRule"),
    ] {
        let crd = documents(&dir.join(format!(
            "example/prometheus-operator-crd/monitoring.coreos.com_{file}.yaml"
        )))
        .remove(0);
        apply(&admin, &crd, false)
            .await
            .unwrap_or_else(|e| panic!("apply the {kind} CRD: {e}"));
        let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", kind);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while kube::discovery::pinned_kind(&admin, &gvk).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the {kind} CRD was not served in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// An RBAC object reduced to what it grants: rules (each list sorted, the rules sorted), or roleRef and
/// subjects. Labels and annotations grant nothing and are left out.
fn grants(o: &Value) -> Value {
    let sorted = |v: &Value| {
        let mut s: Vec<&str> = strs(v);
        s.sort();
        json!(s)
    };
    match o["kind"].as_str() {
        Some("Role" | "ClusterRole") => {
            let mut rules: Vec<Value> = o["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    json!({
                        "apiGroups": sorted(&r["apiGroups"]),
                        "resources": sorted(&r["resources"]),
                        "resourceNames": sorted(&r["resourceNames"]),
                        "nonResourceURLs": sorted(&r["nonResourceURLs"]),
                        "verbs": sorted(&r["verbs"]),
                    })
                })
                .collect();
            rules.sort_by_key(|r| r.to_string());
            json!({ "rules": rules })
        }
        _ => {
            let mut subjects: Vec<Value> = o["subjects"].as_array().cloned().unwrap_or_default();
            subjects.sort_by_key(|s| s.to_string());
            json!({ "roleRef": o["roleRef"], "subjects": subjects })
        }
    }
}

fn rbac(objects: impl IntoIterator<Item = Value>) -> BTreeMap<String, Value> {
    objects
        .into_iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding")
            )
        })
        .map(|o| {
            let key = format!(
                "{} {}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap()
            );
            (key, grants(&o))
        })
        .collect()
}

#[test]
fn the_default_render_grants_exactly_the_rbac_of_the_kustomize_manifests() {
    let chart = rbac(render(None));
    // deploy/base, and deploy/task-namespaces for the task namespaces the base's config allows.
    let kustomize = rbac(
        base().into_iter().chain(
            kustomize(&root().join("deploy/task-namespaces"))
                .into_iter()
                .map(|(_, v)| v),
        ),
    );
    let keys: BTreeSet<&String> = chart.keys().chain(kustomize.keys()).collect();
    let mut differ = 0;
    println!(
        "RBAC, object by object (chart default render vs deploy/base + deploy/task-namespaces):"
    );
    for k in keys {
        let verdict = match (chart.get(k), kustomize.get(k)) {
            (Some(a), Some(b)) if a == b => "same",
            (Some(_), Some(_)) => "DIFFERENT",
            (Some(_), None) => "ONLY IN THE CHART",
            (None, _) => "ONLY IN KUSTOMIZE",
        };
        if verdict != "same" {
            differ += 1;
        }
        println!("  {verdict:<17} {k}");
        for (side, v) in [("chart", chart.get(k)), ("kustomize", kustomize.get(k))] {
            if let Some(v) = v.filter(|_| verdict != "same" || side == "chart") {
                println!("      {side}: {v}");
            }
        }
    }
    assert!(!chart.is_empty(), "the chart renders RBAC");
    assert_eq!(
        differ, 0,
        "the chart grants what the Kustomize manifests grant, and nothing else"
    );
}

/// The labels of `labels` whose keys `selector` names: what a selector sees of them.
fn only_keys_of(labels: &Value, selector: &Value) -> Value {
    let picked = labels
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| selector.get(k.as_str()).is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<serde_json::Map<_, _>>();
    Value::Object(picked)
}

/// `helm template` with `--set` values, returning (success, stdout and stderr).
fn helm_try(sets: &[&str]) -> (bool, String) {
    let bin = env_var("HELM");
    let mut args = vec!["template", "itg", CHART, "--namespace", "itg-system"];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = Command::new(&bin)
        .args(&args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn helm_refuses_a_wrong_value_and_names_it() {
    // Each wrong value, and the word helm's refusal must name.
    for (set, named) in [
        ("replicas=two", "replicas"),
        ("replica=3", "replica"),
        ("logFormat=xml", "logFormat"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("image.repository=", "repository"),
        ("nats.url=http://nats:4222", "url"),
        ("adminPort=70000", "adminPort"),
        ("adminHost=nats.example", "adminHost"),
        (
            "resourceManagers[0].internal_task_gateway.gateway_port_range_start=80",
            "gateway_port_range_start",
        ),
        ("resourceManagers[0].listener_mode=sets", "listener_mode"),
        ("worker.concurrency=0", "concurrency"),
        ("resources.requests.memory=lots", "memory"),
    ] {
        let (ok, text) = helm_try(&[set]);
        println!("--set {set}: {}", text.lines().next().unwrap_or_default());
        assert!(!ok, "helm accepted --set {set}");
        assert!(
            text.contains("values don't meet the specifications of the schema")
                && text.contains(named),
            "helm refused --set {set} without naming {named}: {text}"
        );
    }
    // The values the schema allows render, so the refusals above are the schema's and not the template's.
    for set in [
        "logFormat=text",
        "nats.connectionName=itg-west",
        "adminHost=::",
        "rbac.listenerSets=false",
    ] {
        let (ok, text) = helm_try(&[set]);
        assert!(ok, "helm refused --set {set}: {text}");
    }
}

#[test]
fn the_values_schema_holds_the_worker_config_schema_and_the_chart_s_own_values() {
    let read = |p: &str| std::fs::read_to_string(root().join(p)).unwrap();
    let values_schema: Value =
        serde_json::from_str(&read(&format!("{CHART}/values.schema.json"))).unwrap();
    let config_schema: Value = serde_json::from_str(&read("schemas/config.schema.json")).unwrap();
    // The worker's own sections are its config schema, word for word.
    for (value, key) in [
        ("resourceManagers", "resource_managers"),
        ("jetstream", "jetstream"),
        ("worker", "worker"),
    ] {
        assert_eq!(
            values_schema["properties"][value], config_schema["properties"][key],
            "values.schema.json's {value} is not schemas/config.schema.json's {key}: copy it again"
        );
    }
    assert_eq!(
        values_schema["properties"]["nats"]["properties"]["url"],
        config_schema["properties"]["nats"]["properties"]["url"]
    );
    // values.yaml and the full values meet it, and every key of values.yaml is in it.
    let validator = jsonschema::validator_for(&values_schema).expect("a valid JSON Schema");
    for file in [format!("{CHART}/values.yaml"), FULL_VALUES.to_owned()] {
        let values: Value = serde_norway::from_str(&read(&file)).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&values)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{file}: {errors:#?}");
    }
    let defaults: Value = serde_norway::from_str(&read(&format!("{CHART}/values.yaml"))).unwrap();
    for key in defaults.as_object().unwrap().keys() {
        assert!(
            values_schema["properties"].get(key).is_some(),
            "values.yaml's {key} is not in values.schema.json"
        );
    }
}

#[test]
fn the_chart_claims_the_kubernetes_version_the_tests_run() {
    let chart: Value = serde_norway::from_str(
        &std::fs::read_to_string(root().join(CHART).join("Chart.yaml")).unwrap(),
    )
    .unwrap();
    let claimed = chart["kubeVersion"].as_str().expect("kubeVersion");
    let gomod = std::fs::read_to_string(root().join("tools/testcluster/go.mod")).unwrap();
    let tested = gomod
        .lines()
        .find_map(|l| l.trim().strip_prefix("k8s.io/kubernetes v"))
        .and_then(|v| v.split_whitespace().next())
        .expect("tools/testcluster pins k8s.io/kubernetes");
    let minor: Vec<&str> = tested.split('.').take(2).collect();
    assert_eq!(
        claimed,
        format!(">={}.0-0", minor.join(".")),
        "kubeVersion is the minor the tests run (kube-apiserver {tested})"
    );
}
