//! The admin endpoint of a running worker: health, readiness and Prometheus metrics, over real TCP.

mod common;

use common::{Env, Master, Replies, TestRm, Worker, config, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(addr: &str, path: &str) -> (u16, String) {
    // The worker binds in its own task; give it a moment.
    let mut tries = 0;
    let mut s = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(_) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("admin endpoint {addr} does not listen: {e}"),
        }
    };
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn the_worker_serves_health_readiness_and_metrics_of_what_it_did() {
    let env = Env::load();
    let rm = TestRm::new(&env, "adm", (41600, 41609)).await;
    let mut cfg = config(&env, &[&rm], "");
    let addr = format!("127.0.0.1:{}", free_port());
    cfg.admin.address = addr.clone();
    let w = Worker::start(cfg).await;
    assert_eq!(http_get(&addr, "/healthz").await, (200, "ok".into()));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, body) = http_get(&addr, "/readyz").await;
        if code == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {code} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    let a = format!("{}.1", uuid::Uuid::new_v4());
    master.started(&a, &rm.task_ns, &[("jupyter", 8888)]).await;
    replies.first(30, &a, "ready").await;
    let (code, text) = http_get(&addr, "/metrics").await;
    assert_eq!(code, 200);
    let ready_line = format!(
        "itg_events_total{{resource_manager=\"{}\",kind=\"started\",outcome=\"ready\"}} 1",
        rm.name
    );
    assert!(
        text.contains(&ready_line),
        "{ready_line} missing from:\n{text}"
    );
    assert!(
        text.contains(&format!(
            "itg_started_to_ready_seconds_count{{resource_manager=\"{}\"}} 1",
            rm.name
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "itg_kube_call_seconds_count{{resource_manager=\"{}\",call=\"apply_listener\"}} 1",
            rm.name
        )),
        "{text}"
    );
    w.stop().await;
    rm.teardown(&env).await;
}
