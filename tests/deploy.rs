//! The deployment artifacts against the real apiserver: every manifest under `deploy/` is accepted by a
//! server-side dry run, the Deployment is hardened and admitted, and the container files hold together.

mod common;

use common::deploy::*;

#[test]
fn the_kustomizations_list_plain_files_that_are_every_manifest_under_deploy() {
    let mut listed = BTreeMap::<PathBuf, usize>::new();
    for dir in kustomizations() {
        let k = documents(&dir.join("kustomization.yaml"));
        assert_eq!(k.len(), 1, "{}: one document", dir.display());
        let keys: BTreeSet<&str> = k[0]
            .as_object()
            .expect("a mapping")
            .keys()
            .map(String::as_str)
            .collect();
        // No namespace, prefixes, labels, patches or generators: the files are what is applied, but for the
        // image a base may name (the registry the operator pushed it to).
        let mut keys = keys;
        keys.remove("images");
        assert_eq!(
            keys,
            BTreeSet::from(["apiVersion", "kind", "resources"]),
            "{}",
            dir.display()
        );
        assert_eq!(k[0]["kind"], "Kustomization", "{}", dir.display());
        for r in strs(&k[0]["resources"]) {
            let p = dir.join(r);
            assert!(
                p.is_file(),
                "{} lists {r}, which is not a file",
                dir.display()
            );
            *listed.entry(p).or_default() += 1;
        }
    }
    let on_disk: BTreeSet<PathBuf> = yaml_files(&root().join("deploy"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        // The worker config for docker-compose.yml is not a Kubernetes manifest, nor is the Helm chart (its
        // renders are tested in tests/helm.rs).
        .filter(|p| !p.starts_with(root().join("deploy/compose")))
        .filter(|p| !p.starts_with(root().join("deploy/helm")))
        // Prometheus rules for a plain Prometheus, not a manifest (tests/alerts.rs checks them).
        .filter(|p| !p.starts_with(root().join("deploy/prometheus")))
        // A one-off Job an operator applies by hand to run itgctl beside the worker (tests/ctl.rs checks it).
        .filter(|p| *p != root().join("deploy/samples/itgctl-job.yaml"))
        .collect();
    assert_eq!(
        listed.keys().cloned().collect::<BTreeSet<_>>(),
        on_disk,
        "every manifest is listed by a kustomization, and only manifests are"
    );
    assert!(
        listed.values().all(|n| *n == 1),
        "a manifest is listed twice: {listed:?}"
    );
    for p in &on_disk {
        for o in documents(p) {
            for key in ["apiVersion", "kind"] {
                assert!(o[key].is_string(), "{}: no {key}", p.display());
            }
            assert!(
                o["metadata"]["name"].is_string(),
                "{}: no metadata.name",
                p.display()
            );
        }
    }
}

#[tokio::test]
async fn every_manifest_under_deploy_is_accepted_by_a_server_side_dry_run() {
    let env = Env::load();
    let admin = env.kube().await;
    let objects: Vec<(PathBuf, Value)> =
        kustomizations().iter().flat_map(|d| kustomize(d)).collect();
    assert!(
        objects.len() >= 15,
        "the manifests are found: {}",
        objects.len()
    );
    // A dry run into a missing namespace is refused, so the namespaces are made for real first.
    for (_, o) in &objects {
        if let Some(ns) = o["metadata"]["namespace"].as_str() {
            make_namespace(&admin, ns).await;
        }
    }
    let mut refused = Vec::new();
    for (path, o) in &objects {
        if let Err(e) = apply(&admin, o, true).await {
            refused.push(format!(
                "{} {} {}: {e}",
                path.strip_prefix(root()).unwrap().display(),
                o["kind"],
                o["metadata"]["name"]
            ));
        }
    }
    assert!(refused.is_empty(), "refused:\n{}", refused.join("\n"));
}

#[test]
fn the_deployment_runs_two_hardened_workers_probed_on_the_admin_port() {
    let objects = base();
    let d = find(&objects, "Deployment", "itg-worker");
    assert_eq!(d["metadata"]["namespace"], "itg-system");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "itg-worker");
    assert_eq!(pod["terminationGracePeriodSeconds"], 60);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    // The image is a value of the kustomization (`images`), tagged with this version.
    let k = documents(&root().join("deploy/base/kustomization.yaml")).remove(0);
    let image = &k["images"][0];
    assert_eq!(image["name"], "internal-task-gateway");
    assert_eq!(
        image["newTag"],
        env!("CARGO_PKG_VERSION"),
        "the tag is the crate's version"
    );
    let raw = documents(&root().join("deploy/base/deployment.yaml")).remove(0);
    assert_eq!(
        raw["spec"]["template"]["spec"]["containers"][0]["image"], image["name"],
        "the Deployment names the image the kustomization sets"
    );
    assert_eq!(
        c["image"].as_str().unwrap(),
        format!(
            "{}:{}",
            image["newName"].as_str().unwrap(),
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(strs(&c["args"]), ["--config", "/etc/itg/config.yaml"]);
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .contains(&json!({ "name": "RUST_LOG", "value": "info" }))
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(sc["capabilities"]["add"].is_null(), "no capability added");
    for (kind, q) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "cpu"),
        ("limits", "memory"),
    ] {
        assert!(c["resources"][kind][q].is_string(), "resources.{kind}.{q}");
    }
    // The probes hit the admin port, which is where the config tells the worker to listen.
    let ports = c["ports"].as_array().expect("ports");
    let admin = ports
        .iter()
        .find(|p| p["name"] == "admin")
        .expect("a port named admin");
    assert_eq!(admin["containerPort"], 9464);
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    let config = configmap_config();
    let listen: std::net::SocketAddr = config.admin.address.parse().unwrap();
    assert!(
        listen.ip().is_unspecified(),
        "the kubelet probes the pod IP, so admin listens on all of them"
    );
    assert_eq!(admin["containerPort"], listen.port());
    // The config file the args name is the ConfigMap's key, mounted read-only.
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/etc/itg")
        .expect("/etc/itg mounted");
    assert_eq!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert_eq!(volume["configMap"]["name"], "itg-worker-config");
    // The disruption budget covers exactly these pods.
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&d["spec"]["selector"]["matchLabels"], labels);
    let pdb = find(&objects, "PodDisruptionBudget", "itg-worker");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
}

/// The pod the Deployment makes, created (as a dry run) where the apiserver enforces the `restricted` Pod
/// Security Standard; and, to show the check bites, the same pod allowed to escalate privileges.
#[tokio::test]
async fn the_worker_pod_is_admitted_under_the_restricted_pod_security_standard() {
    let env = Env::load();
    let admin = env.kube().await;
    let ns = format!("itg-psa-{}", suffix());
    let namespace = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": ns, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest"
        }}
    });
    apply(&admin, &namespace, false).await.expect("namespace");
    let sa = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": { "name": "itg-worker", "namespace": ns }
    });
    apply(&admin, &sa, false).await.expect("service account");
    let objects = base();
    let template = &find(&objects, "Deployment", "itg-worker")["spec"]["template"];
    let pod = |spec: &Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "itg-worker", "namespace": ns, "labels": template["metadata"]["labels"] },
            "spec": spec
        })
    };
    let admitted = apply(&admin, &pod(&template["spec"]), true).await;
    let mut lax = template["spec"].clone();
    lax["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true);
    let refused = apply(&admin, &pod(&lax), true).await;
    delete_namespace(&admin, &ns).await;
    admitted.expect("the worker's pod meets the restricted standard");
    assert_eq!(
        code(&refused),
        Some(403),
        "PodSecurity refuses a lax pod: {refused:?}"
    );
}

#[test]
fn the_configmap_holds_an_in_cluster_config_that_matches_the_rbac() {
    let config = configmap_config();
    assert_eq!(config.nats.url, "nats://nats.itg-system:4222");
    assert_eq!(config.resource_managers.len(), 1);
    let rm = &config.resource_managers[0];
    assert_eq!(rm.name, "local");
    assert!(
        rm.kubeconfig.is_none(),
        "in the cluster the ServiceAccount is used"
    );
    let g = &rm.internal_task_gateway;
    assert_eq!(
        (g.gateway_name.as_str(), g.gateway_namespace.as_str()),
        ("itg", "gateway-system")
    );
    assert_eq!(
        (g.gateway_port_range_start, g.gateway_port_range_end),
        (40000, 40063)
    );
    // The Role names exactly this Gateway, in its namespace.
    let objects = base();
    let role = find(&objects, "Role", "itg-worker-gateway");
    assert_eq!(role["metadata"]["namespace"], g.gateway_namespace.as_str());
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(strs(&rule["resourceNames"]), [g.gateway_name.as_str()]);
    }
    // The worker is allowed exactly the namespaces it has a RoleBinding in.
    let allowed: BTreeSet<String> = rm
        .allowed_namespaces
        .clone()
        .expect("allowed_namespaces set")
        .into_iter()
        .collect();
    assert_eq!(allowed, bound_task_namespaces());
    assert!(allowed.contains("team-a"));
}

// ------------------------------------------------------------------------------------------ RBAC

#[test]
fn the_compose_file_runs_nats_with_jetstream_and_a_worker_built_here_with_a_valid_config() {
    let compose = documents(&root().join("docker-compose.yml")).remove(0);
    let services = compose["services"].as_object().expect("services");
    assert_eq!(
        services.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(["nats", "worker"])
    );
    let nats = &services["nats"];
    assert!(
        nats["image"].as_str().unwrap().starts_with("nats:2.15"),
        "{nats}"
    );
    assert!(
        strs(&nats["command"]).contains(&"-js"),
        "JetStream on: {nats}"
    );

    let worker = &services["worker"];
    let context = root().join(worker["build"]["context"].as_str().expect("build.context"));
    let dockerfile = worker["build"]["dockerfile"]
        .as_str()
        .unwrap_or("Dockerfile");
    assert!(
        context.join(dockerfile).is_file(),
        "the build's Dockerfile exists"
    );
    assert_eq!(
        strs(&worker["command"]),
        ["--config", "/etc/itg/config.yaml"]
    );
    assert!(strs(&worker["depends_on"]).contains(&"nats"));
    let mounts: BTreeMap<&str, &str> = strs(&worker["volumes"])
        .into_iter()
        .map(|v| {
            // host:container[:mode]; the host side may hold a ${VAR:-default} with a colon of its own.
            let v = v
                .strip_suffix(":ro")
                .or_else(|| v.strip_suffix(":rw"))
                .unwrap_or(v);
            let (host, inside) = v.rsplit_once(':').expect("host:container");
            (inside, host)
        })
        .collect();
    assert_eq!(
        mounts.get("/etc/itg/kubeconfig"),
        Some(&"${KUBECONFIG:-~/.kube/config}")
    );
    let host = mounts
        .get("/etc/itg/config.yaml")
        .expect("the config is mounted");
    let host = context.join(host);
    assert!(host.is_file(), "{} exists", host.display());
    // The worker's own loader accepts it (it does not look for the kubeconfig file).
    let config = Config::load(&host).expect("the compose config is valid");
    assert_eq!(config.nats.url, "nats://nats:4222");
    let rm = &config.resource_managers[0];
    assert_eq!(
        rm.kubeconfig.as_deref(),
        Some(Path::new("/etc/itg/kubeconfig"))
    );
    let published = strs(&worker["ports"]);
    let admin_port = config
        .admin
        .address
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .port();
    assert!(
        published
            .iter()
            .any(|p| p.ends_with(&format!(":{admin_port}"))),
        "the admin port is published: {published:?}"
    );
}

/// A memory quantity in MiB (`128Mi`, `1Gi`).
fn mebibytes(q: &str) -> f64 {
    let (n, unit) = q.split_at(q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len()));
    let n: f64 = n.parse().unwrap_or_else(|_| panic!("a quantity: {q}"));
    match unit {
        "Mi" => n,
        "Gi" => n * 1024.0,
        "Ki" => n / 1024.0,
        _ => panic!("a binary unit: {q}"),
    }
}

/// The worker's RSS measured in BENCHMARKS.md (62 MiB at 1,000 live allocations, 124 MiB at 10,000) and the
/// sizing line drawn through them: the base's request covers 10,000 live, its limit is twice that, and
/// the line the manifests and docs give meets both measurements.
#[test]
fn the_memory_request_covers_the_rss_measured_at_ten_thousand_live_allocations() {
    let objects = base();
    let c =
        &find(&objects, "Deployment", "itg-worker")["spec"]["template"]["spec"]["containers"][0];
    let request = mebibytes(c["resources"]["requests"]["memory"].as_str().unwrap());
    let limit = mebibytes(c["resources"]["limits"]["memory"].as_str().unwrap());
    let (base_mib, per_thousand) = (56.0, 7.0);
    let line = |live: f64| base_mib + per_thousand * live / 1000.0;
    for (live, measured) in [(1000.0, 62.0), (10_000.0, 124.0)] {
        assert!(
            line(live) >= measured && line(live) - measured < 8.0,
            "the sizing line gives {} MiB at {live} live, measured {measured}",
            line(live)
        );
    }
    assert!(
        request >= 124.0,
        "request {request} MiB is below the 124 MiB measured at 10,000 live"
    );
    assert!(
        limit >= 2.0 * request,
        "limit {limit} MiB is less than twice the request"
    );
    let sizing = "56 MiB + 7 MiB per 1,000 live";
    for file in [
        "deploy/base/deployment.yaml",
        "deploy/helm/internal-task-gateway/values.yaml",
        "docs/operations.md",
    ] {
        assert!(
            read(&root().join(file)).contains(sizing),
            "{file} does not give the sizing line {sizing:?}"
        );
    }
}

/// The Dockerfile's instructions, with continuation lines joined and comments dropped.
fn dockerfile_instructions() -> Vec<String> {
    let text = read(&root().join("Dockerfile"));
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines
}

#[test]
fn the_dockerfile_builds_both_binaries_and_runs_the_worker_as_nonroot() {
    let lines = dockerfile_instructions();
    let froms: Vec<&String> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "two stages: {froms:?}");
    // Each base image is pinned by digest, so a rebuild starts from the same bytes.
    for (from, image) in froms
        .iter()
        .zip(["rust:1-bookworm@", "gcr.io/distroless/cc-debian12:nonroot@"])
    {
        let reference = from.split_whitespace().nth(1).unwrap_or_default();
        let digest = reference
            .strip_prefix(image)
            .and_then(|d| d.strip_prefix("sha256:"))
            .unwrap_or_else(|| panic!("{from}: {image}sha256:<digest>"));
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{from}: a sha256 digest of 64 hex digits"
        );
    }
    assert!(froms[0].ends_with(" AS builder"), "{}", froms[0]);
    let final_stage = lines
        .iter()
        .position(|l| l.starts_with("FROM gcr.io/"))
        .unwrap();
    let (build, run) = lines.split_at(final_stage);
    assert!(
        build.iter().any(|l| l.starts_with("RUN ")
            && l.contains("cargo build --release --locked --bin itg-worker --bin itgctl")),
        "the builder builds both binaries from the lock file"
    );
    // What the builder copies exists and is not kept out of the context by .dockerignore.
    let ignored: Vec<String> = read(&root().join(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for must in ["target", ".itg", ".git"] {
        assert!(
            ignored.iter().any(|i| i == must),
            ".dockerignore keeps out {must}"
        );
    }
    for l in build.iter().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = l.split_whitespace().skip(1).collect();
        for src in &words[..words.len() - 1] {
            assert!(root().join(src).exists(), "COPY source {src} exists");
            assert!(
                !ignored.iter().any(|i| i == src),
                "COPY source {src} is not ignored"
            );
        }
    }
    let copied = run
        .iter()
        .find(|l| l.starts_with("COPY --from=builder"))
        .expect("binaries copied from the builder");
    assert!(
        copied.contains("itg-worker") && copied.contains("itgctl"),
        "{copied}"
    );
    let user = run
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("USER");
    assert!(
        user == "USER 65532" || user.starts_with("USER 65532:"),
        "runs as the nonroot user: {user}"
    );
    let entrypoint = run
        .iter()
        .find(|l| l.starts_with("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    let entrypoint: Vec<String> =
        serde_json::from_str(entrypoint.trim_start_matches("ENTRYPOINT ")).expect("exec form");
    assert!(
        entrypoint.len() == 1 && entrypoint[0].ends_with("/itg-worker"),
        "{entrypoint:?}"
    );
}

/// Copies `from` (a file or a directory, recursively) to `to`.
fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
}

/// The builder stage's COPY lines are carried out in an empty folder, and its `cargo build` is run there:
/// a file the build needs that the Dockerfile does not copy fails it, as it would fail `docker build`.
/// Affordable on two cores: the build runs without `--release` (the profile changes how the code is
/// optimised, not which files are read) and in this checkout's target directory, where `cargo build --bins`
/// (scripts/demo) has built the same dependencies; only the workspace's own crates are compiled again.
#[test]
fn the_files_the_dockerfile_copies_build_both_binaries_in_an_empty_folder() {
    let lines = dockerfile_instructions();
    let stage_end = lines
        .iter()
        .skip(1)
        .position(|l| l.starts_with("FROM "))
        .map_or(lines.len(), |i| i + 1);
    let builder = &lines[..stage_end];
    let workdir = builder
        .iter()
        .find_map(|l| l.strip_prefix("WORKDIR "))
        .expect("the builder has a WORKDIR");
    let dir = tempfile::tempdir().unwrap();
    let mut copied = Vec::new();
    for l in builder.iter().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = l.split_whitespace().skip(1).collect();
        assert!(
            !words[0].starts_with("--"),
            "a plain COPY from the context: {l}"
        );
        let dest = words[words.len() - 1];
        for src in &words[..words.len() - 1] {
            let target = if dest.ends_with('/') && !root().join(src).is_dir() {
                dir.path().join(dest).join(src)
            } else {
                dir.path().join(dest)
            };
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            copy_tree(&root().join(src), &target);
            copied.push(*src);
        }
    }
    println!("copied into an empty folder (WORKDIR {workdir}): {copied:?}");
    let run = builder
        .iter()
        .find(|l| l.starts_with("RUN ") && l.contains("cargo build"))
        .expect("the builder runs cargo build");
    let command = run[run.find("cargo build").unwrap()..]
        .split("&&")
        .next()
        .unwrap()
        .trim();
    let args: Vec<&str> = command
        .split_whitespace()
        .skip(1)
        .filter(|a| *a != "--release")
        .collect();
    assert!(
        args.contains(&"--locked"),
        "the build keeps to Cargo.lock: {command}"
    );
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(dir.path())
        .env("CARGO_TARGET_DIR", &target_dir)
        // scripts/test's runner sets it for libtest's timings; a build must not see it.
        .env_remove("RUSTC_BOOTSTRAP")
        .output()
        .expect("cargo runs");
    println!(
        "cargo {} in {}: {:.0?} (target dir {})",
        args.join(" "),
        dir.path().display(),
        started.elapsed(),
        target_dir.display()
    );
    assert!(
        out.status.success(),
        "the Dockerfile's build fails on the files it copies:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_task_rbac_comments_deny_no_verb_that_the_role_grants() {
    let path = root().join("deploy/base/rbac-tasks.yaml");
    let granted: BTreeSet<String> = documents(&path)
        .iter()
        .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
        .flat_map(|r| {
            strs(&r["verbs"])
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    // Every "(no a/b/c)" in the comments names verbs the role must not grant.
    for line in read(&path)
        .lines()
        .filter(|l| l.trim_start().starts_with('#'))
    {
        for part in line.split("(no ").skip(1) {
            let denied = part.split(')').next().unwrap_or("");
            for verb in denied.split(['/', ',', ' ']).filter(|v| !v.is_empty()) {
                assert!(
                    !granted.contains(verb),
                    "{}: the comment says {verb:?} is not granted, but the role grants {granted:?}: {line}",
                    path.display()
                );
            }
        }
    }
}
