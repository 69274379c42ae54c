//! A half-open apiserver: a TCP proxy between the worker and the real apiserver that goes silent, as a load
//! balancer that drops packets without a reset does. Connections stay open, bytes go nowhere, and a
//! connection that carried a request while silent never answers, even after the path heals. The worker
//! must not hang on it: events wait without being lost, `/readyz` says unready, and once the path heals
//! every event is served.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::process::readyz;
use common::{
    Env, Master, Replies, TestRm, Worker, apiserver_addr, config_yaml, free_port, through,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// A loopback TCP proxy to `upstream` that can go silent: while silent, a new connection is accepted and
/// then ignored, and bytes on an open one are swallowed, that connection then staying mute for ever.
struct SilentProxy {
    addr: String,
    silent: Arc<AtomicBool>,
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, silent: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        // A silent path forwards nothing, not even a close: neither peer learns of the other's end.
        if silent.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if n == 0 {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl SilentProxy {
    async fn start(upstream: String) -> SilentProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let silent = Arc::new(AtomicBool::new(false));
        let flag = silent.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((inbound, _)) = listener.accept().await {
                if flag.load(Ordering::SeqCst) {
                    held.push(inbound);
                    continue;
                }
                let (upstream, flag) = (upstream.clone(), flag.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    tokio::join!(pump(ir, ow, flag.clone()), pump(or, iw, flag));
                });
            }
        });
        SilentProxy { addr, silent }
    }

    fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::SeqCst);
    }
}

async fn readiness(admin: &str) -> Option<u16> {
    let admin = admin.to_owned();
    tokio::task::spawn_blocking(move || readyz(&admin))
        .await
        .unwrap()
}

async fn wait_readiness(admin: &str, want: u16, secs: u64) -> Duration {
    let start = Instant::now();
    loop {
        let got = readiness(admin).await;
        if got == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "/readyz answered {got:?}, not {want}, for {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_silent_apiserver_path_loses_nothing_turns_unready_and_every_event_is_served_once_it_heals()
 {
    let env = Env::load();
    let rm = TestRm::new(&env, "hang", (42800, 42809)).await;
    let proxy = SilentProxy::start(apiserver_addr(&env)).await;
    let (_kubeconfig, through_proxy) = through(&env, &proxy.addr);
    let admin = format!("127.0.0.1:{}", free_port());
    let yaml = config_yaml(&through_proxy, &[&rm], "", &admin);
    let cfg = itg::config::Config::parse(&yaml, "hang test").unwrap();
    let w = Worker::start(cfg).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    wait_readiness(&admin, 200, 30).await;

    // One lifecycle through the healthy path first, so the client holds open connections when it goes silent.
    let first = format!("{}.1", uuid::Uuid::new_v4());
    master
        .started(&first, &rm.task_ns, &[("jupyter", 8888)])
        .await;
    replies.first(30, &first, "ready").await;

    proxy.set_silent(true);
    let silent_at = Instant::now();
    master.ended(&first).await;
    let allocs: Vec<String> = (0..3)
        .map(|_| format!("{}.1", uuid::Uuid::new_v4()))
        .collect();
    for a in &allocs {
        master.started(a, &rm.task_ns, &[("jupyter", 8888)]).await;
    }
    let unready = wait_readiness(&admin, 503, 30).await;
    eprintln!(
        "/readyz unready {unready:?} after the events, {:?} after the path went silent",
        silent_at.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    let answered: Vec<_> = replies
        .all()
        .into_iter()
        .filter(|s| s.alloc() != Some(first.as_str()) || s.kind != "ready")
        .collect();
    assert!(
        answered.is_empty(),
        "answered while the apiserver was silent: {answered:?}"
    );

    proxy.set_silent(false);
    let healed = Instant::now();
    // A request sent while silent is never answered: it must be abandoned and retried, not wait for the
    // client's pool to give up on its connection. 40 s covers the default call timeout (15 s) and a retry.
    replies.first(40, &first, "removed").await;
    for a in &allocs {
        replies.first(40, a, "ready").await;
    }
    eprintln!(
        "every event served {:?} after the path healed",
        healed.elapsed()
    );
    assert!(
        replies.all().iter().all(|s| s.kind != "failed"),
        "{:?}",
        replies.all()
    );
    wait_readiness(&admin, 200, 30).await;
    w.stop().await;
    rm.teardown(&env).await;
}

#[tokio::test]
async fn a_duplicate_started_given_up_on_while_the_apiserver_is_silent_leaves_the_ready_allocation_ready()
 {
    let env = Env::load();
    let rm = TestRm::new(&env, "hangdup", (42810, 42819)).await;
    let proxy = SilentProxy::start(apiserver_addr(&env)).await;
    let (_kubeconfig, through_proxy) = through(&env, &proxy.addr);
    let admin = format!("127.0.0.1:{}", free_port());
    let yaml = config_yaml(
        &through_proxy,
        &[&rm],
        "  kubernetes_call_timeout: 2s\n",
        &admin,
    );
    let mut cfg = itg::config::Config::parse(&yaml, "hang test").unwrap();
    // Few deliveries, so the duplicate is given up on while the path is silent.
    cfg.jetstream.max_deliver = 3;
    cfg.worker.retry_min = itg::config::Dur(Duration::from_secs(1));
    cfg.worker.retry_max = itg::config::Dur(Duration::from_secs(2));
    let w = Worker::start(cfg).await;
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;
    wait_readiness(&admin, 200, 30).await;
    let a = format!("{}.1", uuid::Uuid::new_v4());
    master.started(&a, &rm.task_ns, &[("jupyter", 8888)]).await;
    let first = replies.first(30, &a, "ready").await;

    proxy.set_silent(true);
    master.started(&a, &rm.task_ns, &[("jupyter", 8888)]).await;
    // Its deliveries cannot re-apply the objects; the last one is given up on and answered.
    let answers = replies
        .wait(90, "an answer to the duplicate", |seen| {
            seen.iter()
                .filter(|s| s.alloc() == Some(a.as_str()))
                .count()
                >= 2
        })
        .await;
    let mine: Vec<_> = answers
        .iter()
        .filter(|s| s.alloc() == Some(a.as_str()))
        .collect();
    println!(
        "answers for the live allocation: {:?}",
        mine.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>()
    );
    assert!(
        mine.iter().all(|s| s.kind == "ready"),
        "a `failed` followed the `ready` of a live allocation: {mine:?}"
    );
    assert!(
        mine.iter().all(|s| s.addresses() == first.addresses()),
        "every ready carries the same addresses: {mine:?}"
    );

    proxy.set_silent(false);
    // Past the heal the allocation is still whole: its record, its claim and its objects.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let o = common::observe(&env, &rm).await;
    assert_eq!(o.claims.len(), 1, "{o:?}");
    assert_eq!(o.services.len(), 1, "{o:?}");
    assert_eq!(o.routes.len(), 1, "{o:?}");
    assert!(
        replies.for_alloc(&a).iter().all(|s| s.kind == "ready"),
        "{:?}",
        replies.for_alloc(&a)
    );
    w.stop().await;
    rm.teardown(&env).await;
}
