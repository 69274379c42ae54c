//! `itgctl` against a secured NATS, as an operator runs it where the worker's NATS requires credentials:
//! every subcommand connects with the worker's options, from the worker's config file (`--config`) or
//! from flags and `NATS_*` variables, to servers that require a token, a user and password, an nkey, a
//! credentials file or mutual TLS (the setups of tests/nats_security.rs, with JetStream on). Without the
//! credentials each command is refused, naming the server and showing no secret.
//!
//! The `capacity`, `reconcile` and `replay` case also needs the test apiserver (`scripts/testenv up`).

mod common;
#[path = "common/nats_server.rs"]
mod nats_server;

use std::path::{Path, PathBuf};
use std::process::Command;

use async_nats::HeaderMap;
use async_nats::jetstream;
use itg::config::Config;
use nats_server::{Ca, NatsServer, Operator, quoted, sign_jwt, user_creds, write};
use serde_json::{Value, json};

const RM: &str = "rm1";

/// A server with JetStream and the given authorization block.
fn js_server(auth: impl FnOnce(&Path) -> String) -> NatsServer {
    NatsServer::start(|dir| {
        let store = dir.join("js");
        format!(
            "jetstream {{\n  store_dir: {}\n}}\n{}",
            quoted(&store.display().to_string()),
            auth(dir)
        )
    })
}

/// The worker's config for `url` with `nats_lines` under `nats:`, written next to the server.
fn worker_config(server: &NatsServer, url: &str, nats_lines: &str, rm_yaml: &str) -> PathBuf {
    let rm = if rm_yaml.is_empty() {
        format!(
            "  - name: {RM}\n    kubeconfig: /nonexistent/kubeconfig\n    internal_task_gateway: {{gateway_name: gw, gateway_namespace: gateway-system, gateway_ip: 127.0.0.1, gateway_port_range_start: 30000, gateway_port_range_end: 30009}}\n"
        )
    } else {
        rm_yaml.to_owned()
    };
    let text = format!(
        "nats:\n  url: {}\n{nats_lines}resource_managers:\n{rm}",
        quoted(url)
    );
    Config::parse(&text, "ctl_secured").unwrap_or_else(|e| panic!("{e}\n{text}"));
    write(
        server.dir.path(),
        &format!("worker-{}.yaml", uuid::Uuid::new_v4().simple()),
        &text,
    )
}

/// Runs the real `itgctl` with `args` and only the variables in `env` (none inherited that name NATS).
fn itgctl(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_itgctl"));
    for k in [
        "NATS_URL",
        "NATS_USER",
        "NATS_PASSWORD",
        "NATS_TOKEN",
        "NATS_NKEY",
        "NATS_CREDS",
        "NATS_CA",
        "NATS_CERT",
        "NATS_KEY",
        "NATS_JS_DOMAIN",
        "ITG_CONFIG",
    ] {
        cmd.env_remove(k);
    }
    let out = cmd.args(args).envs(env.iter().copied()).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// Creates the streams and the bucket as a worker would (with the worker's own connection), and puts
/// what the commands read: a record, a reply and a dead letter for allocation `alloc`.
async fn seed(config: &Path, alloc: &str) {
    let cfg = Config::load(config).unwrap();
    let client = itg::nats::connect(&cfg.nats)
        .await
        .expect("worker connects");
    let js = jetstream::new(client);
    itg::nats::ensure_streams(&js, &cfg.jetstream)
        .await
        .expect("streams");
    let kv = itg::nats::KvStore::open(&js, &cfg.jetstream)
        .await
        .expect("bucket");
    drop(kv);
    let kv = js.get_key_value(&cfg.jetstream.state_bucket).await.unwrap();
    let record = json!({
        "allocation_id": alloc, "resource_manager": RM, "phase": "ready",
        "spec": {"namespace": "team-a", "pod_selector": {"app": "nb"}, "proxy_ports": [{"name": "jupyter", "port": 8888}]},
        "ports": [{"name": "jupyter", "container_port": 8888, "gateway_port": 30001}],
        "released": [], "created_at": 1, "updated_at": 2,
    });
    kv.put(
        itg::names::allocation_key(RM, alloc),
        serde_json::to_vec(&record).unwrap().into(),
    )
    .await
    .unwrap();
    let ready = json!({
        "schema_version": 1, "resource_manager": RM, "allocation_id": alloc,
        "source_event_id": uuid::Uuid::new_v4(), "gateway": {"namespace": "gateway-system", "name": "gw"},
        "proxies": [{"name": "jupyter", "container_port": 8888, "gateway_port": 30001, "address": "127.0.0.1:30001"}],
    });
    js.publish(
        format!("itg.replies.{RM}.ready"),
        serde_json::to_vec(&ready).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        itg::contract::DEAD_LETTER_SUBJECT_HEADER,
        format!("itg.events.{RM}.ended").as_str(),
    );
    headers.insert(itg::contract::DEAD_LETTER_SEQUENCE_HEADER, "99");
    headers.insert(
        itg::contract::DEAD_LETTER_ERROR_HEADER,
        "given up after 5 deliveries",
    );
    let ended = serde_json::to_vec(&itg::ctl::ended_payload(uuid::Uuid::new_v4(), alloc)).unwrap();
    js.publish_with_headers(format!("itg.deadletter.{RM}.ended"), headers, ended.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Every NATS-only subcommand, with `auth` (flags before the subcommand) and `env`, succeeds and reads
/// what [`seed`] put; the same commands without `auth` are refused, naming `url`, showing none of
/// `secrets`.
fn every_command(
    case: &str,
    auth: &[&str],
    env: &[(&str, &str)],
    url: &str,
    secrets: &[&str],
    alloc: &str,
) {
    let run = |args: &[&str]| {
        let all: Vec<&str> = auth.iter().chain(args).copied().collect();
        let (code, out, err) = itgctl(&all, env);
        assert_eq!(code, 0, "{case}: itgctl {all:?}\n{out}\n{err}");
        out
    };
    let out = run(&[
        "publish",
        "started",
        "--rm",
        RM,
        "--allocation-id",
        alloc,
        "--namespace",
        "team-a",
        "--selector",
        "app=nb",
        "--port",
        "jupyter=8888",
    ]);
    assert!(out.contains("published started"), "{case}: {out}");
    let out = run(&["publish", "ended", "--rm", RM, "--allocation-id", alloc]);
    assert!(out.contains("published ended"), "{case}: {out}");
    let out = run(&[
        "watch", "--rm", RM, "--all", "--count", "1", "--output", "json",
    ]);
    let reply: Value = serde_json::from_str(out.trim()).expect("one reply as JSON");
    assert_eq!(reply["allocation_id"], alloc, "{case}");
    let out = run(&["allocations", "--rm", RM, "--output", "json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["allocation_id"], alloc, "{case}: {out}");
    let out = run(&["deadletter", "list", "--rm", RM, "--output", "json"]);
    let letters: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(letters[0]["allocation_id"], alloc, "{case}: {out}");
    let out = run(&["describe", "--rm", RM, alloc, "--output", "json"]);
    let view: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(view["record"]["value"]["phase"], "ready", "{case}: {out}");
    let kinds: Vec<&str> = view["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    // Each case of a server publishes its own pair: the latest is this one's.
    assert!(kinds.ends_with(&["started", "ended"]), "{case}: {out}");
    assert_eq!(view["replies"].as_array().unwrap().len(), 1, "{case}");
    assert_eq!(view["dead_letters"].as_array().unwrap().len(), 1, "{case}");

    // Without the credentials: refused, naming the server, no secret shown.
    for args in [
        vec!["allocations"],
        vec!["deadletter", "list"],
        vec!["watch", "--count", "1"],
        vec!["publish", "ended", "--rm", RM, "--allocation-id", alloc],
        vec!["describe", "--rm", RM, alloc],
    ] {
        let mut all = vec!["--nats-url", url];
        all.extend(args.iter().copied());
        let (code, out, err) = itgctl(&all, &[]);
        assert_eq!(code, 1, "{case}: {all:?} without credentials\n{out}\n{err}");
        assert!(
            err.contains("cannot connect to NATS") && err.contains(url),
            "{case}: {err}"
        );
        for s in secrets {
            assert!(
                !err.contains(s) && !out.contains(s),
                "{case}: secret shown: {err}"
            );
        }
    }
}

#[tokio::test]
async fn every_command_connects_with_a_token_from_the_config_a_flag_or_the_variable() {
    let secret = "tok-ctl-51f0aa";
    let server = js_server(|_| format!("authorization {{\n  token: {}\n}}", quoted(secret)));
    let url = server.nats_url();
    let config = worker_config(&server, &url, &format!("  token: {secret}\n"), "");
    seed(&config, "tok.1").await;
    let c = config.to_str().unwrap();
    every_command("config", &["--config", c], &[], &url, &[secret], "tok.1");
    every_command(
        "flag",
        &["--nats-url", &url, "--nats-token", secret],
        &[],
        &url,
        &[secret],
        "tok.1",
    );
    every_command(
        "variable",
        &[],
        &[("NATS_URL", &url), ("NATS_TOKEN", secret)],
        &url,
        &[secret],
        "tok.1",
    );
    // A wrong token on the command line overrides the config's right one, and is not shown.
    let (code, _, err) = itgctl(
        &["--config", c, "--nats-token", "tok-wrong-77", "allocations"],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        !err.contains("tok-wrong-77") && !err.contains(secret),
        "{err}"
    );
}

#[tokio::test]
async fn every_command_connects_with_a_user_and_password() {
    let secret = "pw-ctl-c4fe";
    let server = js_server(|_| {
        format!(
            "authorization {{\n  users = [ {{ user: itg, password: {} }} ]\n}}",
            quoted(secret)
        )
    });
    let url = server.nats_url();
    let config = worker_config(
        &server,
        &url,
        &format!("  user: itg\n  password: {secret}\n"),
        "",
    );
    seed(&config, "pw.1").await;
    every_command(
        "config",
        &["--config", config.to_str().unwrap()],
        &[],
        &url,
        &[secret],
        "pw.1",
    );
    every_command(
        "flags and variable",
        &["--nats-url", &url, "--nats-user", "itg"],
        &[("NATS_PASSWORD", secret)],
        &url,
        &[secret],
        "pw.1",
    );
}

#[tokio::test]
async fn every_command_connects_with_an_nkey() {
    let user = nkeys::KeyPair::new_user();
    let public = user.public_key();
    let server = js_server(|_| format!("authorization {{\n  users = [ {{ nkey: {public} }} ]\n}}"));
    let url = server.nats_url();
    let seed_file = write(server.dir.path(), "user.nk", &user.seed().unwrap());
    let config = worker_config(
        &server,
        &url,
        &format!("  nkey_seed_file: {}\n", seed_file.display()),
        "",
    );
    seed(&config, "nk.1").await;
    let secret = user.seed().unwrap();
    every_command(
        "config",
        &["--config", config.to_str().unwrap()],
        &[],
        &url,
        &[&secret],
        "nk.1",
    );
    every_command(
        "flag",
        &[
            "--nats-url",
            &url,
            "--nats-nkey-seed-file",
            seed_file.to_str().unwrap(),
        ],
        &[],
        &url,
        &[&secret],
        "nk.1",
    );
}

#[tokio::test]
async fn every_command_connects_with_a_credentials_file() {
    let op = Operator::new();
    // The account of tests/nats_security.rs, with JetStream allowed.
    let account_jwt = sign_jwt(
        json!({
            "sub": op.account.public_key(),
            "name": "itg-test-account",
            "nats": {
                "type": "account", "version": 2,
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
                },
            },
        }),
        &op.operator,
    );
    // JetStream in operator mode needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = sign_jwt(
        json!({
            "sub": system.public_key(), "name": "SYS",
            "nats": { "type": "account", "version": 2, "limits": { "conn": -1, "subs": -1, "data": -1, "payload": -1 } },
        }),
        &op.operator,
    );
    let server = js_server(|dir| {
        let opf = write(dir, "operator.jwt", &op.operator_jwt);
        format!(
            "operator: {}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {}\n  {}: {}\n}}\n",
            quoted(&opf.display().to_string()),
            system.public_key(),
            op.account.public_key(),
            quoted(&account_jwt),
            system.public_key(),
            quoted(&system_jwt)
        )
    });
    let url = server.nats_url();
    let creds = write(
        server.dir.path(),
        "user.creds",
        &user_creds(&op.account, "itg-worker"),
    );
    let config = worker_config(
        &server,
        &url,
        &format!("  creds_file: {}\n", creds.display()),
        "",
    );
    seed(&config, "creds.1").await;
    every_command(
        "config",
        &["--config", config.to_str().unwrap()],
        &[],
        &url,
        &[],
        "creds.1",
    );
    every_command(
        "variable",
        &["--nats-url", &url],
        &[("NATS_CREDS", creds.to_str().unwrap())],
        &url,
        &[],
        "creds.1",
    );
}

#[tokio::test]
async fn every_command_connects_with_mutual_tls() {
    let ca = Ca::new("itg ctl CA");
    let cert = ca.server();
    let ca_pem = ca.pem();
    let server = js_server(|dir| {
        let c = write(dir, "server.pem", &cert.cert_pem);
        let k = write(dir, "server-key.pem", &cert.key_pem);
        let a = write(dir, "ca.pem", &ca_pem);
        format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: true\n  timeout: 2\n}}",
            quoted(&c.display().to_string()),
            quoted(&k.display().to_string()),
            quoted(&a.display().to_string()),
        )
    });
    let url = server.tls_url();
    let dir = server.dir.path();
    let client = ca.client("itgctl");
    let (ca_file, cert_file, key_file) = (
        server.path("ca.pem"),
        write(dir, "client.pem", &client.cert_pem),
        write(dir, "client-key.pem", &client.key_pem),
    );
    let config = worker_config(
        &server,
        &url,
        &format!(
            "  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
            ca_file.display(),
            cert_file.display(),
            key_file.display()
        ),
        "",
    );
    seed(&config, "tls.1").await;
    every_command(
        "config",
        &["--config", config.to_str().unwrap()],
        &[],
        &url,
        &[],
        "tls.1",
    );
    every_command(
        "flags",
        &[
            "--nats-url",
            &url,
            "--nats-tls-ca-file",
            ca_file.to_str().unwrap(),
            "--nats-tls-cert-file",
            cert_file.to_str().unwrap(),
            "--nats-tls-key-file",
            key_file.to_str().unwrap(),
        ],
        &[],
        &url,
        &[],
        "tls.1",
    );
}

/// The commands that also reach Kubernetes take the secured NATS from the same config.
#[tokio::test]
async fn capacity_reconcile_and_replay_use_the_configs_credentials() {
    let env = common::Env::load();
    let rm = common::TestRm::new(&env, "ctlsec", (41760, 41769)).await;
    let secret = "tok-ctl-k8s-9d2e";
    let server = js_server(|_| format!("authorization {{\n  token: {}\n}}", quoted(secret)));
    let url = server.nats_url();
    let config = worker_config(
        &server,
        &url,
        &format!("  token: {secret}\n"),
        &rm.yaml(&env),
    );
    let cfg = Config::load(&config).unwrap();
    let js = jetstream::new(itg::nats::connect(&cfg.nats).await.unwrap());
    itg::nats::ensure_streams(&js, &cfg.jetstream)
        .await
        .unwrap();
    let c = config.to_str().unwrap();
    let (code, out, err) = itgctl(&["--config", c, "capacity", "--output", "json"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let cap: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cap[0]["free"], 10, "{out}");
    let (code, out, err) = itgctl(&["reconcile", "--config", c, "--dry-run"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = itgctl(
        &["replay", "--config", c, "--rm", &rm.name, "--from-seq", "1"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    // The same config without its token is refused by the secured server.
    let bare = worker_config(&server, &url, "", &rm.yaml(&env));
    let (code, _, err) = itgctl(&["capacity", "--config", bare.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot connect to NATS") && !err.contains(secret),
        "{err}"
    );
    rm.teardown(&env).await;
}
