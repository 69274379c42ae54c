//! A 3-node NATS cluster with R3 streams and KV. Mid-run the `ITG_EVENTS` stream leader is killed
//! (SIGKILL): nothing is lost, the workers resume by themselves, and the test prints the stall it saw.
//! The cluster is this test's own (three nodes of the nats-server `scripts/testenv` installs); Kubernetes is
//! the shared apiserver.

mod common;
#[path = "common/nats_server.rs"]
mod nats_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::{Env, Master, Replies, TestRm, Worker, config_yaml, free_port, observe};
use itg::config::Config;
use nats_server::NatsServer;

const NODES: usize = 3;
const LIFECYCLES: usize = 60;

fn start_cluster() -> Vec<NatsServer> {
    let cluster_ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    (0..NODES)
        .map(|i| {
            let routes: Vec<String> = cluster_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            NatsServer::start(|dir| {
                format!(
                    "server_name: n{}\njetstream {{ store_dir: {:?} }}\ncluster {{ name: itgtest, listen: \"127.0.0.1:{}\", routes: [{}] }}",
                    i + 1,
                    dir.join("js").display().to_string(),
                    cluster_ports[i],
                    routes.join(", ")
                )
            })
        })
        .collect()
}

/// Waits until the cluster has elected its JetStream meta leader.
async fn meta_leader(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(c) = async_nats::connect(itg::nats::server_addrs(url).unwrap()).await
            && jetstream::new(c).query_account().await.is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no JetStream meta leader within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn stream_leader(js: &jetstream::Context) -> Option<String> {
    let mut s = js.get_stream(itg::contract::EVENTS_STREAM).await.ok()?;
    s.info().await.ok()?.cluster.as_ref()?.leader.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_stream_leader_loses_nothing_and_the_workers_resume() {
    let mut nodes = start_cluster();
    let shared = Env::load();
    let env = Env {
        nats_url: nodes
            .iter()
            .map(NatsServer::nats_url)
            .collect::<Vec<_>>()
            .join(","),
        kubeconfig: shared.kubeconfig.clone(),
    };
    meta_leader(&env.nats_url).await;
    let rm = TestRm::new(&env, "cluster", (45000, 45099)).await;
    let yaml = config_yaml(&env, &[&rm], "", "127.0.0.1:0")
        .replace("jetstream:\n", "jetstream:\n  replicas: 3\n");
    let config = || Config::parse(&yaml, "cluster test config").unwrap();
    let workers = [Worker::start(config()).await, Worker::start(config()).await];
    let js = jetstream::new(env.nats().await);
    let info = js
        .get_stream(itg::contract::EVENTS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, 3, "ITG_EVENTS is not R3");
    let kv = js
        .get_key_value("ITG_STATE")
        .await
        .unwrap()
        .status()
        .await
        .unwrap();
    println!(
        "cluster: ITG_STATE bucket replicas {}",
        kv.info.config.num_replicas
    );
    assert_eq!(kv.info.config.num_replicas, 3, "the state bucket is not R3");

    let master = Arc::new(Master::new(&env, &rm.name).await);
    let replies = Arc::new(Replies::watch(&env, &rm.name).await);
    let began = Instant::now();
    let mut tasks = Vec::new();
    let mut killed = None;
    for i in 0..LIFECYCLES {
        if i == LIFECYCLES / 2 {
            let leader = stream_leader(&js).await.expect("ITG_EVENTS has a leader");
            let n: usize = leader.trim_start_matches('n').parse().unwrap();
            nodes[n - 1].kill();
            println!(
                "cluster: killed the ITG_EVENTS leader {leader} after {:.1} s",
                began.elapsed().as_secs_f64()
            );
            killed = Some((leader, Instant::now()));
        }
        let (master, replies, ns) = (master.clone(), replies.clone(), rm.task_ns.clone());
        tasks.push(tokio::spawn(async move {
            let a = format!("{}.{i}", uuid::Uuid::new_v4());
            let t = Instant::now();
            master.started(&a, &ns, &[("jupyter", 8888)]).await;
            let ready = replies.first(120, &a, "ready").await;
            let to_ready = t.elapsed();
            master.ended(&a).await;
            replies.first(120, &a, "removed").await;
            (a, ready, to_ready, t.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.expect("a lifecycle was lost"));
    }
    let (leader, at) = killed.unwrap();
    // The stall: the slowest lifecycle that was in flight when the leader died, beside the usual one.
    let mut before: Vec<Duration> = done[..LIFECYCLES / 2 - 5].iter().map(|d| d.3).collect();
    before.sort();
    let stall = done[LIFECYCLES / 2 - 5..]
        .iter()
        .map(|d| d.2)
        .max()
        .unwrap();
    let new_leader = stream_leader(&js).await;
    for (a, ready, _, _) in &done {
        for r in replies.for_alloc(a).iter().filter(|s| s.kind == "ready") {
            assert_eq!(r.addresses(), ready.addresses(), "{a}: two readies differ");
        }
        // A started whose ack was lost with the leader comes back after its ended: refused, never exposed.
        assert!(
            replies
                .for_alloc(a)
                .iter()
                .all(|s| s.kind != "failed" || s.body["reason"] == "invalid_event"),
            "{a}: {:#?}",
            replies.for_alloc(a)
        );
    }
    let o = observe(&env, &rm).await;
    assert!(o.is_empty(), "left behind: {o:#?}");
    println!(
        "cluster: {LIFECYCLES} lifecycles, every one ready and removed, nothing left; leader {leader} killed, \
         new leader {new_leader:?}; a lifecycle took {:.2} s (median) before the kill, the slowest started \
         around it waited {:.2} s for ready (the stall); run {:.1} s, {:.1} s of it after the kill",
        before[before.len() / 2].as_secs_f64(),
        stall.as_secs_f64(),
        began.elapsed().as_secs_f64(),
        at.elapsed().as_secs_f64()
    );
    for w in workers {
        w.stop().await;
    }
    rm.teardown(&env).await;
}
