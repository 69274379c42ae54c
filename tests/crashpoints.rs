//! Half-way crashes: a worker process is killed (SIGKILL, from a crash point it reaches) between each pair
//! of steps of an exposure and of a removal. Its restart finishes the job, with the addresses the allocation
//! first got and nothing left behind. One test per crash point; each prints what it saw.
//!
//! The module `listenerset` runs the same in `listener_mode: listenerset`, whose backend shares the expose
//! and withdraw path: there the allocation's listeners are in its own ListenerSet, which must be there
//! after the recovery and gone after the removal.

mod common;

use std::collections::BTreeSet;
use std::time::Instant;

use common::process::WorkerProcess;
use common::{Env, Master, Observed, Replies, TestRm, config_yaml, observe};
use itg::crashpoint::POINTS;

const PORTS: &[(&str, u16)] = &[("jupyter", 8888), ("tensorboard", 6006)];

/// Where the worker writes listeners.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Gateway,
    ListenerSet,
}

/// `sets`: the ListenerSets there must be (none in Gateway mode).
fn exposed(o: &Observed, key: &str, sets: &[String]) -> bool {
    let claimed: BTreeSet<u16> = o.claims.keys().copied().collect();
    let listened: BTreeSet<u16> = o.listeners.values().copied().collect();
    o.sets == sets
        && o.listeners.len() == PORTS.len()
        && o.services.len() == PORTS.len()
        && o.routes.len() == PORTS.len()
        && o.claims.values().all(|k| k == key)
        && claimed == listened
}

async fn crash_at(point: &'static str, mode: Mode) {
    assert!(POINTS.contains(&point), "{point} is not a crash point");
    let in_removal = POINTS.iter().position(|p| *p == point)
        >= POINTS.iter().position(|p| *p == "ended.ending_recorded");
    let env = Env::load();
    let mut rm = TestRm::new(&env, "crash", (43000, 43049)).await;
    if mode == Mode::ListenerSet {
        rm.extra.push_str("    listener_mode: listenerset\n");
    }
    let yaml = |admin: &str| config_yaml(&env, &[&rm], "", admin);
    let a = format!("{}.1", uuid::Uuid::new_v4());
    let key = itg::names::allocation_key(&rm.name, &a);
    let sets = match mode {
        Mode::Gateway => vec![],
        Mode::ListenerSet => vec![itg::names::listenerset_name(&rm.name, &a)],
    };

    let armed = [("ITG_CRASH_AT", point)];
    let mut worker = WorkerProcess::spawn(yaml, if in_removal { &[] } else { &armed });
    worker.ready(60).await;
    // After the worker is up: it creates the streams on a fresh server.
    let replies = Replies::watch(&env, &rm.name).await;
    let master = Master::new(&env, &rm.name).await;
    master.started(&a, &rm.task_ns, PORTS).await;
    if in_removal {
        replies.first(60, &a, "ready").await;
        worker.restart_with(&armed);
        worker.ready(60).await;
    }
    let before = replies.for_alloc(&a);
    if in_removal {
        master.ended(&a).await;
    }
    let crashed = Instant::now();
    let status = worker.exited(60).await;
    let log = worker.log();
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("crash point {point} reached"))),
        "the worker exited ({status}) without reaching {point}:\n{}",
        log.join("\n")
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );
    let at_crash = observe(&env, &rm).await;

    worker.restart_with(&[]);
    worker.ready(60).await;
    let ready = replies.first(90, &a, "ready").await;
    let o = if in_removal {
        replies.first(90, &a, "removed").await;
        observe(&env, &rm).await
    } else {
        let o = observe(&env, &rm).await;
        assert!(
            exposed(&o, &key, &sets),
            "after the restart, not exposed: {o:#?}"
        );
        o
    };
    let recovered = crashed.elapsed();
    // Every ready, before the crash or after it, carries the same addresses.
    let readies: Vec<_> = replies
        .for_alloc(&a)
        .into_iter()
        .filter(|s| s.kind == "ready")
        .collect();
    assert!(
        readies.iter().all(|r| r.addresses() == ready.addresses()),
        "{readies:#?}"
    );
    // The one failed allowed is the documented refusal of a started redelivered after its ended: the
    // worker replaced before the ended may not have had its ack of the started stored.
    assert!(
        replies
            .for_alloc(&a)
            .iter()
            .all(|s| s.kind != "failed" || (in_removal && s.body["reason"] == "invalid_event")),
        "{:#?}",
        replies.for_alloc(&a)
    );

    if !in_removal {
        master.ended(&a).await;
        replies.first(90, &a, "removed").await;
    }
    let end = observe(&env, &rm).await;
    assert!(end.is_empty(), "left behind after removal: {end:#?}");
    println!(
        "crash point {point} ({mode:?} mode): at the crash {} listeners ({} ListenerSets), {} Services, {} \
         routes, {} port claims, {} replies; recovered by the restart in {:.1} s; ready {:?}; {} listeners \
         after the recovery; nothing left after removal",
        at_crash.listeners.len(),
        at_crash.sets.len(),
        at_crash.services.len(),
        at_crash.routes.len(),
        at_crash.claims.len(),
        before.len(),
        recovered.as_secs_f64(),
        ready.addresses(),
        o.listeners.len(),
    );
    drop(worker);
    rm.teardown(&env).await;
}

macro_rules! crash_tests {
    ($($name:ident => $point:literal,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                crash_at($point, Mode::Gateway).await;
            }
        )*

        /// Every crash point again, in `listener_mode: listenerset`.
        mod listenerset {
            use super::{Mode, crash_at};
            $(
                #[tokio::test]
                async fn $name() {
                    crash_at($point, Mode::ListenerSet).await;
                }
            )*
        }

        #[test]
        fn every_crash_point_has_a_test() {
            let tested = [$($point),*];
            for p in POINTS {
                assert!(tested.contains(p), "no test crashes at {p}");
            }
        }
    };
}

crash_tests! {
    killed_after_the_record_is_created => "started.record_created",
    killed_after_the_ports_are_recorded => "expose.ports_recorded",
    killed_after_the_first_port_is_claimed => "expose.port_claimed",
    killed_after_the_service_is_applied => "expose.service_applied",
    killed_after_the_listener_is_applied => "expose.listener_applied",
    killed_after_the_route_is_applied => "expose.route_applied",
    killed_after_ready_is_recorded => "expose.ready_recorded",
    killed_after_ready_is_published => "reply.ready_published",
    killed_after_ending_is_recorded => "ended.ending_recorded",
    killed_after_the_route_is_deleted => "withdraw.route_deleted",
    killed_after_the_listener_is_removed => "withdraw.listener_removed",
    killed_after_the_service_is_deleted => "withdraw.service_deleted",
    killed_after_a_port_is_released => "withdraw.port_released",
    killed_after_the_record_is_cleaned => "cleanup.record_cleaned",
    killed_after_removed_is_published => "reply.removed_published",
}
