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
