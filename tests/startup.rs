//! Start-up: the worker reports what it found, and refuses to start naming the server or the Gateway that
//! is missing and where it looked. Real servers, plus addresses where nothing listens.

mod common;

use common::{Env, TestRm, config, kubeconfig_server};

#[tokio::test]
async fn the_report_names_jetstream_the_gateway_its_listeners_and_free_ports() {
    let env = Env::load();
    let rm = TestRm::new(&env, "rep", (41500, 41509)).await;
    let cfg = config(&env, &[&rm], "");
    let servers = itg::app::connect(&cfg).await.expect("connects");
    let report = itg::app::report(&cfg, &servers).await.expect("report");
    rm.teardown(&env).await;
    assert!(report.contains("JetStream available"), "{report}");
    assert!(
        report.contains(&format!(
            "Gateway gateway-system/{} present with 1 listener(s)",
            rm.gateway
        )),
        "{report}"
    );
    assert!(
        report.contains("41500-41509: 10 free, 0 claimed"),
        "{report}"
    );
    assert!(report.contains("foreign on ports [39999]"), "{report}");
}

#[tokio::test]
async fn a_missing_gateway_stops_start_up_naming_it_and_the_kubeconfig() {
    let env = Env::load();
    let mut rm = TestRm::new(&env, "nogw", (41500, 41509)).await;
    rm.gateway = "no-such-gateway".into();
    let err = itg::app::connect(&config(&env, &[&rm], ""))
        .await
        .err()
        .expect("must fail");
    rm.teardown(&env).await;
    let msg = err.to_string();
    assert!(
        msg.contains("Gateway gateway-system/no-such-gateway not found"),
        "{msg}"
    );
    assert!(
        msg.contains(&env.kubeconfig.display().to_string()),
        "names the kubeconfig: {msg}"
    );
    assert!(msg.contains(&rm.name), "names the resource manager: {msg}");
}

#[tokio::test]
async fn an_unreachable_nats_stops_start_up_naming_the_url() {
    let env = Env::load();
    let rm = TestRm::new(&env, "nonats", (41500, 41509)).await;
    let mut cfg = config(&env, &[&rm], "");
    cfg.nats.url = "nats://127.0.0.1:1".into();
    let err = itg::app::connect(&cfg).await.err().expect("must fail");
    rm.teardown(&env).await;
    let msg = err.to_string();
    assert!(msg.contains("nats://127.0.0.1:1"), "{msg}");
}

#[tokio::test]
async fn an_unreachable_apiserver_stops_start_up_naming_the_server() {
    let env = Env::load();
    let rm = TestRm::new(&env, "noapi", (41500, 41509)).await;
    let (text, server) = kubeconfig_server(&env);
    let dead = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(dead.path(), text.replace(&server, "https://127.0.0.1:1")).unwrap();
    let cfg = config(&env, &[&rm], "");
    let mut cfg = cfg;
    cfg.resource_managers[0].kubeconfig = Some(dead.path().to_owned());
    let err = itg::app::connect(&cfg).await.err().expect("must fail");
    rm.teardown(&env).await;
    let msg = err.to_string();
    assert!(msg.contains("https://127.0.0.1:1"), "{msg}");
    assert!(msg.contains("does not answer"), "{msg}");
}
