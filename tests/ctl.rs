//! `itgctl` as an operator runs it: the real binary against the real servers.

mod common;

use common::{Env, Replies, TestRm, Worker, config, itgctl};

#[tokio::test]
async fn itgctl_lists_allocations_and_capacity_as_json() {
    let env = Env::load();
    let rm = TestRm::new(&env, "ctl", (41700, 41709)).await;
    let cfg = config(&env, &[&rm], "");
    let w = Worker::start(cfg).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let a = format!("{}.1", uuid::Uuid::new_v4());
    // Published by the binary, as a demo or an operator would.
    let (code, out, err) = itgctl(
        &env,
        &[
            "publish",
            "started",
            "--rm",
            &rm.name,
            "--allocation-id",
            &a,
            "--namespace",
            &rm.task_ns,
            "--selector",
            "app=nb",
            "--port",
            "jupyter=8888",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let ready = replies.first(30, &a, "ready").await;
    let (code, out, err) = itgctl(&env, &["allocations", "--rm", &rm.name, "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rec = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["allocation_id"] == a.as_str())
        .expect("listed");
    assert_eq!(rec["phase"], "ready");
    assert_eq!(
        rec["ports"][0]["gateway_port"],
        ready.body["proxies"][0]["gateway_port"]
    );

    let file = tempfile::NamedTempFile::new().unwrap();
    let yaml = format!(
        "nats:\n  url: {}\nresource_managers:\n{}",
        env.nats_url,
        rm.yaml(&env)
    );
    std::fs::write(file.path(), yaml).unwrap();
    let (code, out, err) = itgctl(
        &env,
        &[
            "capacity",
            "--config",
            file.path().to_str().unwrap(),
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let cap: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cap[0]["claimed"], 1);
    assert_eq!(cap[0]["free"], 9);
    assert_eq!(cap[0]["listeners"], 2);

    let (code, _, err) = itgctl(
        &env,
        &[
            "publish",
            "started",
            "--rm",
            &rm.name,
            "--allocation-id",
            &a,
            "--namespace",
            "x",
            "--selector",
            "novalue",
            "--port",
            "a=1",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("--selector \"novalue\" must be written key=value"),
        "{err}"
    );
    w.stop().await;
    rm.teardown(&env).await;
}

/// `itgctl` with the given args and no NATS or config variables: the config check must reach nothing.
fn itgctl_offline(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_itgctl"))
        .args(args)
        .env_remove("ITG_CONFIG")
        // Nothing listens here: a command that tried to connect would fail.
        .env("NATS_URL", "nats://127.0.0.1:1")
        .output()
        .expect("itgctl runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[test]
fn the_config_check_accepts_a_good_config_and_names_the_bad_key_offline() {
    let good = "nats:\n  url: nats://nats.example:4222\nresource_managers:\n  - name: k8s-west\n    kubeconfig: /nonexistent/kubeconfig\n    internal_task_gateway:\n      gateway_name: itg\n      gateway_namespace: gateway-system\n      gateway_ip: 203.0.113.10\n      gateway_port_range_start: 40000\n      gateway_port_range_end: 40063\n";
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ok = write("good.yaml", good);
    let (code, out, err) = itgctl_offline(&["config", "check", &ok]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("valid") && out.contains("k8s-west"), "{out}");
    let (code, out, _) = itgctl_offline(&["config", "check", &ok, "--output", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["resource_managers"][0]["ports"], "40000-40063");

    // A rule broken: the key, its value and the rule are named.
    let reversed = write(
        "reversed.yaml",
        &good.replace(
            "gateway_port_range_end: 40063",
            "gateway_port_range_end: 39000",
        ),
    );
    let (code, _, err) = itgctl_offline(&["config", "check", &reversed]);
    assert_eq!(code, 1);
    assert!(
        err.contains("gateway_port_range_end") && err.contains("39000"),
        "{err}"
    );
    // A key the worker does not know (a typo) is named too.
    let typo = write("typo.yaml", &good.replace("  url: nats", "  urll: nats"));
    let (code, out, _) = itgctl_offline(&["config", "check", &typo, "--output", "json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], false);
    assert!(v["error"].as_str().unwrap().contains("urll"), "{v}");
}

#[test]
fn the_itgctl_job_sample_mounts_what_the_worker_mounts() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |p: &str| -> serde_json::Value {
        serde_norway::from_str(&std::fs::read_to_string(format!("{root}/{p}")).unwrap()).unwrap()
    };
    let job = read("deploy/samples/itgctl-job.yaml");
    let worker = read("deploy/base/deployment.yaml");
    let (jp, wp) = (
        &job["spec"]["template"]["spec"],
        &worker["spec"]["template"]["spec"],
    );
    assert_eq!(jp["serviceAccountName"], wp["serviceAccountName"]);
    assert_eq!(
        jp["volumes"][0]["configMap"]["name"],
        wp["volumes"][0]["configMap"]["name"]
    );
    let c = &jp["containers"][0];
    assert_eq!(c["command"][0], "/usr/local/bin/itgctl");
    assert_eq!(c["args"][0], "--config");
    assert_eq!(c["args"][1], "/etc/itg/config.yaml");
    assert_eq!(
        c["volumeMounts"][0]["mountPath"],
        wp["containers"][0]["volumeMounts"][0]["mountPath"]
    );
    // The Dockerfile puts itgctl where the Job runs it.
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    assert!(dockerfile.contains("/usr/local/bin/"), "{dockerfile}");
}

fn describe(env: &common::Env, config: &str, alloc: &str) -> serde_json::Value {
    let (code, out, err) = itgctl(
        env,
        &["--config", config, "describe", alloc, "--output", "json"],
    );
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// One port, so a second allocation waits for capacity, then fails when the deadline passes.
#[tokio::test]
async fn describe_explains_a_ready_a_waiting_and_a_failed_allocation() {
    let env = Env::load();
    let rm = TestRm::new(&env, "desc", (41720, 41720)).await;
    let worker_yaml = "  capacity_deadline: 12s\n";
    let w = Worker::start(config(&env, &[&rm], worker_yaml)).await;
    let master = common::Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        common::config_yaml(&env, &[&rm], worker_yaml, "127.0.0.1:0"),
    )
    .unwrap();
    let cfg = file.path().to_str().unwrap();

    let a = format!("{}.1", uuid::Uuid::new_v4());
    master.started(&a, &rm.task_ns, &[("jupyter", 8888)]).await;
    replies.first(30, &a, "ready").await;
    let v = describe(&env, cfg, &a);
    // The `itg` class has no data plane: ready was sent without a probe, and the verdict says that
    // nothing serves the address now.
    let verdict = v["verdict"].as_str().unwrap();
    assert!(verdict.starts_with("ready"), "{v:#}");
    let answer = v["data_plane"][0]["answer"].as_str().unwrap();
    assert!(
        !answer.starts_with("refused")
            || verdict.contains("the data plane refuses 203.0.113.10:41720"),
        "{v:#}"
    );
    assert_eq!(v["record"]["value"]["phase"], "ready");
    assert_eq!(v["claims"].as_array().unwrap().len(), 1, "{v:#}");
    let port = &v["kubernetes"]["ports"][0];
    assert_eq!(port["gateway_port"], 41720);
    assert_eq!(port["listener"]["found"], true, "{v:#}");
    assert_eq!(port["listener"]["port"], 41720);
    assert_eq!(port["service"]["found"], true);
    assert_eq!(port["route"]["found"], true);
    assert_eq!(v["data_plane"][0]["address"], "203.0.113.10:41720");
    assert_eq!(v["events"][0]["kind"], "started");
    assert_eq!(v["replies"][0]["kind"], "ready");
    // The table says the same.
    let (code, out, err) = itgctl(&env, &["--config", cfg, "describe", &a]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("VERDICT      ready"), "{out}");

    // The only port is taken: the next allocation waits for one.
    let b = format!("{}.2", uuid::Uuid::new_v4());
    master.started(&b, &rm.task_ns, &[("jupyter", 8888)]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let v = loop {
        let v = describe(&env, cfg, &b);
        if v["record"]["found"] == true || std::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(v["record"]["value"]["phase"], "exposing", "{v:#}");
    let verdict = v["verdict"].as_str().unwrap();
    assert!(
        verdict.starts_with("exposing, waiting for") && verdict.contains("a free port for jupyter"),
        "{verdict}"
    );
    assert!(v["claims"].as_array().unwrap().is_empty(), "{v:#}");
    assert!(v["replies"].as_array().unwrap().is_empty(), "{v:#}");

    // Past capacity_deadline it fails, and says why.
    replies.first(40, &b, "failed").await;
    let v = describe(&env, cfg, &b);
    assert_eq!(v["record"]["value"]["phase"], "failed", "{v:#}");
    let verdict = v["verdict"].as_str().unwrap();
    assert!(
        verdict.starts_with("failed (capacity_exhausted)"),
        "{verdict}"
    );
    assert_eq!(v["replies"][0]["kind"], "failed");
    assert_eq!(v["replies"][0]["body"]["reason"], "capacity_exhausted");

    // An allocation nobody asked for.
    let v = describe(&env, cfg, "never-started.1");
    assert_eq!(v["record"]["found"], false);
    assert!(
        v["verdict"]
            .as_str()
            .unwrap()
            .starts_with("no record and no event"),
        "{v:#}"
    );
    w.stop().await;
    rm.teardown(&env).await;
}
