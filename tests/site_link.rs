//! A site whose leaf-node link to the hub is down, on a hub and a leaf of this test's own (real
//! nats-servers, the topology `scripts/testenv up --topology sites` runs, with domains `hub` and `west`),
//! so that cutting the link never disturbs the shared topology. The link is cut by closing it, as a leaf
//! sees a broken WAN once its pings go unanswered; the worker is a real process on the real apiserver.

mod common;
#[path = "common/nats_server.rs"]
mod nats_server;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::Env;
use common::link::Link;
use nats_server::NatsServer;

/// A hub, a leaf of domain `west` linked to it through a [`Link`], and the two as test servers.
struct Site {
    _hub: NatsServer,
    hub_leaf_port: u16,
    leaf: NatsServer,
    link: Link,
    hub_env: Env,
    site_env: Env,
}

/// A leaf of JetStream domain `domain`, linked through a [`Link`] of its own to the hub's leaf-node port.
/// As docs/deploy.md configures a site's leaf: the replies reach the hub only by its sourcing.
async fn leaf(domain: &str, hub_leaf_port: u16) -> (NatsServer, Link) {
    let link = Link::start(format!("127.0.0.1:{hub_leaf_port}")).await;
    let leaf = NatsServer::start(|dir| {
        format!(
            "server_name: {domain}\nping_interval: \"2s\"\nping_max: 3\njetstream {{ store_dir: {}, domain: {domain} }}\nleafnodes {{\n  reconnect: \"1s\"\n  remotes: [ {{ url: \"nats-leaf://{}\", deny_exports: [\"itg.replies.>\", \"$KV.>\"], deny_imports: [\"$KV.>\"] }} ]\n}}\n",
            nats_server::quoted(&dir.join("js").display().to_string()),
            link.addr
        )
    });
    (leaf, link)
}

impl Site {
    async fn start(kubeconfig: std::path::PathBuf) -> Site {
        // Port -1: the hub binds a free leaf-node port itself, so two tests never race for one.
        let hub = NatsServer::start(|dir| {
            format!(
                "server_name: hub\njetstream {{ store_dir: {}, domain: hub }}\nleafnodes {{ listen: \"127.0.0.1:-1\" }}\n",
                nats_server::quoted(&dir.join("js").display().to_string())
            )
        });
        let leaf_port: u16 = hub
            .log()
            .lines()
            .find_map(|l| l.split("Listening for leafnode connections on ").nth(1))
            .and_then(|a| a.trim().rsplit(':').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no leaf-node port in the hub's log:\n{}", hub.log()));
        let (leaf, link) = leaf("west", leaf_port).await;
        let site = Site {
            hub_env: Env {
                nats_url: hub.nats_url(),
                kubeconfig: kubeconfig.clone(),
            },
            site_env: Env {
                nats_url: leaf.nats_url(),
                kubeconfig,
            },
            _hub: hub,
            hub_leaf_port: leaf_port,
            leaf,
            link,
        };
        site.wait_linked(true, 30).await;
        site
    }

    /// A second site, `east`, on the same hub.
    async fn east(&self) -> (NatsServer, Link, Env) {
        let (leaf, link) = leaf("east", self.hub_leaf_port).await;
        let env = Env {
            nats_url: leaf.nats_url(),
            kubeconfig: self.site_env.kubeconfig.clone(),
        };
        let js = jetstream::with_domain(env.nats().await, "hub");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(
            tokio::time::timeout(Duration::from_secs(2), js.query_account()).await,
            Ok(Ok(a)) if a.domain.as_deref() == Some("hub")
        ) {
            assert!(
                Instant::now() < deadline,
                "east not linked:\n{}",
                leaf.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (leaf, link, env)
    }

    /// Whether the leaf reaches the hub's JetStream: an account info request through `$JS.hub.API`.
    async fn linked(&self) -> bool {
        let js = jetstream::with_domain(self.site_env.nats().await, "hub");
        matches!(
            tokio::time::timeout(Duration::from_secs(2), js.query_account()).await,
            Ok(Ok(a)) if a.domain.as_deref() == Some("hub")
        )
    }

    async fn wait_linked(&self, up: bool, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.linked().await != up {
            assert!(
                Instant::now() < deadline,
                "the leaf link is not {} after {secs} s; leaf log:\n{}",
                if up { "up" } else { "down" },
                self.leaf.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// How many messages of `rm` the stream `ITG_EVENTS` of `env` holds.
    async fn events(env: &Env, rm: &str) -> u64 {
        let js = jetstream::new(env.nats().await);
        let Ok(s) = js.get_stream(itg::contract::EVENTS_STREAM).await else {
            return 0;
        };
        let Ok(mut per_subject) = s.info_with_subjects(format!("itg.events.{rm}.>")).await else {
            return 0;
        };
        let mut n = 0;
        while let Some(Ok((_, c))) = futures::StreamExt::next(&mut per_subject).await {
            n += c as u64;
        }
        n
    }

    async fn wait_events(env: &Env, rm: &str, n: u64, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let have = Self::events(env, rm).await;
            if have >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {have} of {n} events after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Issue 31, item 15: only "stream not found" says a site's replies stream was lost. An error reading it
/// (here a domain no server answers for, as a leaf that is still recovering may not) is an error, never a
/// loss, which would make the site's sources on the hub anew and read its old replies again.
#[tokio::test]
async fn an_error_reading_the_sites_replies_stream_is_not_a_lost_site() {
    // NATS only: no worker runs, so no apiserver is named.
    let site = Site::start(std::path::PathBuf::new()).await;
    let client = site.site_env.nats().await;
    let js = jetstream::new(client.clone());
    assert!(
        itg::nats::replies_lost(&js).await.unwrap(),
        "no stream yet: lost"
    );
    js.create_stream(jetstream::stream::Config {
        name: itg::contract::REPLIES_STREAM.into(),
        subjects: vec!["itg.replies.x.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!itg::nats::replies_lost(&js).await.unwrap());
    let unanswered = jetstream::with_domain(client, "nowhere");
    let read = itg::nats::replies_lost(&unanswered).await;
    println!("reading through a domain no server answers for: {read:?}");
    assert!(read.is_err(), "counted as lost: {read:?}");
    drop(site);
}

/// Issue 31, item 7, on NATS alone: at a site, an event queued again is stored by the site's own
/// `ITG_EVENTS` under its event subject, with the link down; and two sites queueing again the same site
/// sequence both keep theirs, since each message id is compared only within its own site's stream.
#[tokio::test]
async fn a_site_queues_an_event_again_at_the_site_with_the_link_down_and_two_sites_keep_theirs() {
    use itg::sink::Replier;
    let site = Site::start(std::path::PathBuf::new()).await;
    let (_east_leaf, _east_link, east) = site.east().await;
    let cfg = itg::config::JetStreamConfig::default();
    for (env, domain, rm) in [
        (&site.site_env, "west", "rq-west"),
        (&east, "east", "rq-east"),
    ] {
        let client = env.nats().await;
        let js = jetstream::new(client.clone());
        let hub = jetstream::with_domain(client, "hub");
        itg::nats::ensure_site(&js, &hub, "hub", domain, &cfg, &[rm.to_owned()])
            .await
            .unwrap();
    }
    // Both sites queue again "their sequence 5", then, with west's link cut, "their sequence 6".
    let requeue = |env: &Env, rm: &'static str, seq: u64| {
        let env = Env {
            nats_url: env.nats_url.clone(),
            kubeconfig: env.kubeconfig.clone(),
        };
        async move {
            let replier = itg::nats::JetStreamReplier::at_site(jetstream::new(env.nats().await));
            let sent = tokio::time::timeout(
                Duration::from_secs(20),
                replier.requeue(&format!("itg.events.{rm}.ended"), b"{}", seq),
            )
            .await;
            format!("{rm} {seq}: {sent:?}")
        }
    };
    let mut outcomes = Vec::new();
    for (env, rm) in [(&site.site_env, "rq-west"), (&east, "rq-east")] {
        outcomes.push(requeue(env, rm, 5).await);
    }
    println!("requeue of sequence 5 at each site: {outcomes:?}");
    for (env, rm) in [(&site.site_env, "rq-west"), (&east, "rq-east")] {
        Site::wait_events(
            env,
            rm,
            1,
            &format!("{rm}'s sequence 5 at its site ({outcomes:?})"),
        )
        .await;
    }
    site.link.cut();
    site.wait_linked(false, 30).await;
    let cut = requeue(&site.site_env, "rq-west", 6).await;
    println!("requeue of sequence 6 at west, its link cut: {cut}");
    Site::wait_events(
        &site.site_env,
        "rq-west",
        2,
        &format!("west's sequence 6 at west ({cut})"),
    )
    .await;
    site.link.heal();
    site.wait_linked(true, 30).await;
    for rm in ["rq-west", "rq-east"] {
        assert_eq!(
            Site::events(&site.hub_env, rm).await,
            0,
            "{rm}'s event queued again went to the hub"
        );
    }
}

/// Issue 31, item 8, on NATS alone: what a site's worker does at start. A site laid out already is
/// prepared with its link down (its streams only), and its hub side, refused meanwhile with a message
/// naming the leaf-node link, is laid out once the link is back. A site not laid out yet needs the hub
/// first, and says so naming the link.
#[tokio::test]
async fn a_laid_out_site_starts_without_its_link_and_lays_out_the_hub_side_after_the_heal() {
    let site = Site::start(std::path::PathBuf::new()).await;
    let client = site.site_env.nats().await;
    let js = jetstream::new(client.clone());
    let cfg = itg::config::JetStreamConfig::default();
    let rms = vec!["prep".to_owned()];
    itg::nats::ensure_site(
        &js,
        &jetstream::with_domain(client.clone(), "hub"),
        "hub",
        "west",
        &cfg,
        &rms,
    )
    .await
    .unwrap();
    site.link.cut();
    site.wait_linked(false, 30).await;
    let prepared = tokio::time::timeout(
        Duration::from_secs(30),
        itg::site::prepare(&client, &js, "hub", "west", &cfg, rms.clone()),
    )
    .await
    .expect("prepared within 30 s");
    let side = match prepared {
        Ok(Some(side)) => side,
        Ok(None) => panic!("the hub's side was laid out with the link cut"),
        Err(e) => panic!("a laid-out site is refused with its link cut: {e}"),
    };
    let refused = side.lay_out().await.unwrap_err().to_string();
    println!("the hub's side with the link cut: {refused}");
    assert!(refused.contains("leaf-node link"), "{refused}");
    assert!(!refused.contains("JetStream enabled"), "{refused}");

    // A resource manager the site does not serve yet needs the hub first.
    let more = vec!["prep".to_owned(), "prep2".to_owned()];
    let err = itg::site::prepare(&client, &js, "hub", "west", &cfg, more)
        .await
        .err()
        .expect("a new resource manager is not laid out without the hub")
        .to_string();
    println!("a new resource manager with the link cut: {err}");
    assert!(err.contains("leaf-node link"), "{err}");

    site.link.heal();
    site.wait_linked(true, 30).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = side.lay_out().await {
        assert!(
            Instant::now() < deadline,
            "not laid out 30 s after the heal: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let hub = jetstream::new(site.hub_env.nats().await);
    let sources = hub
        .get_stream(itg::contract::REPLIES_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .sources
        .clone()
        .unwrap_or_default();
    assert!(
        sources
            .iter()
            .any(|s| s.filter_subject.as_deref() == Some("itg.replies.prep.>")),
        "{sources:?}"
    );
}
