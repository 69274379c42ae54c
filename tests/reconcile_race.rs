//! The reconciler beside live traffic: passes every 100 ms, with no hold-off at all, while hundreds of
//! lifecycles claim and free the ports of a small range. A pass reads a snapshot that takes time to read;
//! whatever moved while it read must not look orphaned, so no claim that a live allocation lists is ever
//! released, and nothing is left at the end.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use common::{Env, Master, Replies, TestRm, Worker, config, observe};
use itg::plan::Action;
use itg::state::Record;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconciler_passing_every_100_ms_never_releases_a_claim_a_live_allocation_lists() {
    let env = Env::load();
    let rm = TestRm::new(&env, "race", (43700, 43715)).await;
    // The worker's own reconciler stays out of the way; the passes below use no hold-off, so only the order
    // in which a pass reads protects what is in flight.
    let w = Worker::start(config(&env, &[&rm], "  reconcile_interval: 1h\n")).await;
    let cfg = config(&env, &[&rm], "  reconcile_interval: 1h\n");
    let servers = itg::app::connect(&cfg).await.unwrap();
    let kv = jetstream::new(env.nats().await)
        .get_key_value("ITG_STATE")
        .await
        .unwrap();
    let master = Master::new(&env, &rm.name).await;
    let replies = Replies::watch(&env, &rm.name).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wrong: Arc<Mutex<Vec<String>>> = Arc::default();
    let passes = {
        let (stop, wrong, rm_name) = (stop.clone(), wrong.clone(), rm.name.clone());
        tokio::spawn(async move {
            let (mut passes, mut released) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let done = itg::app::reconcile_once_with(&cfg, &servers, false, Duration::ZERO)
                    .await
                    .unwrap_or_default();
                passes += 1;
                for a in done.into_iter().flat_map(|(_, actions)| actions) {
                    let Action::ReleaseClaim { port, owner, .. } = a else {
                        continue;
                    };
                    released += 1;
                    // The owner's record now: live and listing the port means a live claim was released.
                    let Some(v) = kv.get(&owner).await.unwrap() else {
                        continue;
                    };
                    let r: Record = serde_json::from_slice(&v).unwrap();
                    if r.phase.wants_exposure() && r.ports.iter().any(|b| b.gateway_port == port) {
                        wrong.lock().unwrap().push(format!(
                            "{rm_name}: released port {port} of {} ({:?})",
                            r.allocation_id, r.phase
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (passes, released)
        })
    };

    // 240 lifecycles, 12 at a time, on 16 ports: every port is claimed and freed many times over.
    let t0 = std::time::Instant::now();
    let ids: Vec<String> = (0..240)
        .map(|i| format!("{}.{i}", uuid::Uuid::new_v4()))
        .collect();
    for wave in ids.chunks(12) {
        for id in wave {
            master.started(id, &rm.task_ns, &[("jupyter", 8888)]).await;
        }
        for id in wave {
            replies.first(60, id, "ready").await;
        }
        for id in wave {
            master.ended(id).await;
        }
        for id in wave {
            replies.first(60, id, "removed").await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (passes, released) = passes.await.unwrap();
    let wrong = wrong.lock().unwrap().clone();
    println!(
        "240 lifecycles on 16 ports in {:.1} s beside {passes} reconcile passes with no hold-off: {released} claims released by the reconciler, {} of them listed by a live allocation",
        t0.elapsed().as_secs_f64(),
        wrong.len()
    );
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Every lifecycle answered ready once, with one address each, and nothing is left.
    for id in &ids {
        let ready = replies.for_alloc(id);
        let addrs: std::collections::BTreeSet<Vec<String>> = ready
            .iter()
            .filter(|s| s.kind == "ready")
            .map(|s| s.addresses())
            .collect();
        assert_eq!(addrs.len(), 1, "{id}: {ready:?}");
    }
    w.stop().await;
    let left = observe(&env, &rm).await;
    assert!(left.is_empty(), "left behind: {left:?}");
    rm.teardown(&env).await;
}
