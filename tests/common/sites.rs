//! The multi-site topology `scripts/testenv up --topology sites` runs: a hub nats-server (JetStream domain
//! `hub`) where the master publishes, and a leaf nats-server per site (domain `west`, `east`) whose worker
//! serves that site's cluster. West's cluster is testenv's main apiserver, east's the `v15` one. The WAN
//! link of each site is delayed and cut by `scripts/testenv sites ...`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::Value;

use super::{Env, env_var};

/// The sites and the hub, from `.itg/env`.
pub struct Sites {
    pub hub: Env,
    pub west: Env,
    pub east: Env,
}

/// The tests of one binary share the WAN links: one at a time may delay or cut them.
pub static WAN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Sites {
    /// The topology; fails with testenv's reason when it is not running.
    pub fn load() -> Sites {
        if let Some(why) = env_var("ITG_SITES_UNAVAILABLE") {
            panic!("the sites topology is not running: {why}");
        }
        let get = |k: &str| {
            env_var(k).unwrap_or_else(|| {
                panic!("{k} unknown: run `scripts/testenv up --topology sites` first")
            })
        };
        let main = PathBuf::from(get("KUBECONFIG"));
        Sites {
            hub: Env {
                nats_url: get("ITG_HUB_URL"),
                kubeconfig: main.clone(),
            },
            west: Env {
                nats_url: get("ITG_SITE_WEST_URL"),
                kubeconfig: main,
            },
            east: Env {
                nats_url: get("ITG_SITE_EAST_URL"),
                kubeconfig: PathBuf::from(get("KUBECONFIG_V15")),
            },
        }
    }
}

/// Runs `scripts/testenv sites ARGS` (delay, cut, heal).
pub fn wan(args: &[&str]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join("scripts/testenv"))
        .arg("sites")
        .args(args)
        .output()
        .expect("scripts/testenv runs");
    assert!(
        out.status.success(),
        "scripts/testenv sites {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Puts a site's WAN link back as testenv starts it (no delay, not cut) when dropped, also when a test
/// fails half-way.
pub struct WanGuard(pub &'static str);

impl Drop for WanGuard {
    fn drop(&mut self) {
        wan(&["heal", self.0]);
        wan(&["delay", self.0, "0"]);
    }
}

/// A worker config for a site: `config_yaml`'s with `jetstream.hub_domain: hub`.
pub fn site_yaml(yaml: String) -> String {
    yaml.replacen("jetstream:\n", "jetstream:\n  hub_domain: hub\n", 1)
}

/// One stored reply: its subject, its `Nats-Msg-Id` and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub subject: String,
    pub msg_id: String,
    pub body: Value,
}

impl Stored {
    pub fn kind(&self) -> &str {
        self.subject.rsplit('.').next().unwrap_or("")
    }

    pub fn alloc(&self) -> &str {
        self.body["allocation_id"].as_str().unwrap_or("")
    }
}

/// Every reply of `rm` stored in `ITG_REPLIES` of the server `env` names, in stream order: read with a
/// fresh ordered consumer until a second passes without one more.
pub async fn stored_replies(env: &Env, rm: &str) -> Vec<Stored> {
    let js = jetstream::new(env.nats().await);
    let stream = js
        .get_stream(itg::contract::REPLIES_STREAM)
        .await
        .expect("replies stream");
    let c = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: format!("_INBOX.sites.{}", super::suffix()),
            filter_subject: format!("itg.replies.{rm}.>"),
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut msgs = c.messages().await.expect("messages");
    let mut out = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(1), msgs.next()).await {
        let msg_id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        out.push(Stored {
            subject: m.subject.to_string(),
            msg_id,
            body: serde_json::from_slice(&m.payload).unwrap_or(Value::Null),
        });
    }
    out
}
