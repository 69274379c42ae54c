//! An apiserver outage, made by cutting a TCP proxy the worker reaches the real apiserver through: events
//! wait and are retried, none is answered `failed` before the deadline, and all are served once it is back.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Env, Master, Replies, TestRm, Worker, apiserver_addr, config, through};
use tokio::net::{TcpListener, TcpStream};

/// A loopback TCP proxy to `upstream` that can be cut (refusing and dropping connections) and restored.
struct Proxy {
    addr: String,
    up: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed
                }
                let (upstream, flag) = (upstream.clone(), flag.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    // Copy until either side closes or the proxy is cut.
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = async { while flag.load(Ordering::SeqCst) { tokio::time::sleep(Duration::from_millis(50)).await } } => {}
                    }
                });
            }
        });
        Proxy { addr, up }
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn during_an_apiserver_outage_events_wait_and_are_served_when_it_returns() {
    let env = Env::load();
    let mut rm = TestRm::new(&env, "out", (42500, 42509)).await;
    let proxy = Proxy::start(apiserver_addr(&env)).await;
    let (_kubeconfig, through_proxy) = through(&env, &proxy.addr);
    rm.extra = String::new();
    let w = Worker::start(config(&through_proxy, &[&rm], "")).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;

    proxy.set(false);
    // The proxy drops its open connections within 50 ms; on a loaded machine a request already on one
    // could still pass, so publish only once they are surely gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let allocs: Vec<String> = (0..3)
        .map(|_| format!("{}.1", uuid::Uuid::new_v4()))
        .collect();
    for a in &allocs {
        master.started(a, &rm.task_ns, &[("jupyter", 8888)]).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        replies.all().is_empty(),
        "no answer while the apiserver is away: {:?}",
        replies.all()
    );
    proxy.set(true);
    for a in &allocs {
        replies.first(60, a, "ready").await;
    }
    assert!(
        replies.all().iter().all(|s| s.kind == "ready"),
        "{:?}",
        replies.all()
    );
    w.stop().await;
    rm.teardown(&env).await;
}
