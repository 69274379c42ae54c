//! Authenticated NATS: each test starts its own nats-server configured for one way to authenticate, then
//! proves that `itg::nats::connect` with a parsed config gets in with the right credentials (and can
//! publish), is refused with the wrong or missing ones (fast, naming the URL), and never shows a secret.
//!
//! Needs only the nats-server binary `scripts/testenv up` installs (no running test environment).

#[path = "common/nats_server.rs"]
mod nats_server;

use std::time::{Duration, Instant};

use itg::config::Config;
use itg::nats::NatsError;
use nats_server::{Ca, NatsServer, Operator, quoted, user_creds, write};

/// A refused connection must not wait out the 10 s meant for a server that is not up yet.
const FAIL_FAST: Duration = Duration::from_secs(5);

/// A full config whose `nats` section is `url` plus `nats_lines` (YAML, two-space indented keys).
fn config(url: &str, nats_lines: &str) -> Config {
    let text = format!(
        "nats:\n  url: {}\n{nats_lines}resource_managers:\n  - name: rm1\n    kubeconfig: /nonexistent/kubeconfig\n    internal_task_gateway:\n      gateway_name: gw\n      gateway_namespace: gateway-system\n      gateway_ip: 203.0.113.10\n      gateway_port_range_start: 30000\n      gateway_port_range_end: 30099\n",
        quoted(url)
    );
    Config::parse(&text, "nats_security test").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Connects, publishes and flushes: the server accepted the credentials.
async fn connects(server: &NatsServer, cfg: &Config) {
    let start = Instant::now();
    let client = itg::nats::connect(&cfg.nats)
        .await
        .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", server.log()));
    client
        .publish("itg.test.auth", "hello".into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    eprintln!("connected in {:?}", start.elapsed());
}

/// Expects a refusal naming the URL, quickly; returns the error text.
async fn refused(server: &NatsServer, cfg: &Config, case: &str) -> String {
    let start = Instant::now();
    let result = itg::nats::connect(&cfg.nats).await;
    let took = start.elapsed();
    let err = match result {
        Ok(_) => panic!(
            "{case}: connected, expected a refusal\nserver log:\n{}",
            server.log()
        ),
        Err(e) => e,
    };
    let NatsError::Connect { url, .. } = &err else {
        panic!("{case}: expected NatsError::Connect, got {err:?}");
    };
    assert_eq!(url, &cfg.nats.url, "{case}");
    let text = err.to_string();
    assert!(
        text.contains(&cfg.nats.url),
        "{case}: error does not name the URL: {text}"
    );
    eprintln!("{case}: refused in {took:?}: {text}");
    assert!(
        took < FAIL_FAST,
        "{case}: refusal took {took:?}, expected under {FAIL_FAST:?}: {text}"
    );
    text
}

#[tokio::test]
async fn user_and_password() {
    let server = NatsServer::start(|_| {
        "authorization {\n  users = [ { user: itg, password: \"pw-right-7f3a\" } ]\n}".into()
    });
    let url = server.nats_url();
    connects(
        &server,
        &config(&url, "  user: itg\n  password: pw-right-7f3a\n"),
    )
    .await;
    let text = refused(
        &server,
        &config(&url, "  user: itg\n  password: pw-wrong-91c2\n"),
        "wrong password",
    )
    .await;
    assert!(text.contains("authorization"), "{text}");
    refused(
        &server,
        &config(&url, "  user: someone\n  password: pw-right-7f3a\n"),
        "unknown user",
    )
    .await;
    refused(&server, &config(&url, ""), "no credentials").await;
}

#[tokio::test]
async fn token() {
    let server = NatsServer::start(|_| "authorization {\n  token: \"tok-right-55e1\"\n}".into());
    let url = server.nats_url();
    connects(&server, &config(&url, "  token: tok-right-55e1\n")).await;
    refused(
        &server,
        &config(&url, "  token: tok-wrong-0b9d\n"),
        "wrong token",
    )
    .await;
    refused(&server, &config(&url, ""), "no token").await;
}

#[tokio::test]
async fn nkey() {
    let user = nkeys::KeyPair::new_user();
    let public = user.public_key();
    let server =
        NatsServer::start(|_| format!("authorization {{\n  users = [ {{ nkey: {public} }} ]\n}}"));
    let url = server.nats_url();
    // A trailing newline, as an editor leaves it: the seed is trimmed.
    let seed = write(
        server.dir.path(),
        "user.nk",
        &format!("{}\n", user.seed().unwrap()),
    );
    connects(
        &server,
        &config(&url, &format!("  nkey_seed_file: {}\n", seed.display())),
    )
    .await;

    let stranger = write(
        server.dir.path(),
        "stranger.nk",
        &nkeys::KeyPair::new_user().seed().unwrap(),
    );
    refused(
        &server,
        &config(&url, &format!("  nkey_seed_file: {}\n", stranger.display())),
        "unknown nkey",
    )
    .await;
    refused(&server, &config(&url, ""), "no nkey").await;

    // A seed file that cannot be read is named in the error.
    let missing = server.path("missing.nk");
    let cfg = config(&url, &format!("  nkey_seed_file: {}\n", missing.display()));
    let err = itg::nats::connect(&cfg.nats)
        .await
        .expect_err("missing seed file refused");
    let text = err.to_string();
    assert!(
        matches!(err, NatsError::Connect { .. })
            && text.contains(&url)
            && text.contains(&missing.display().to_string()),
        "{text}"
    );
}

#[tokio::test]
async fn creds_file() {
    let op = Operator::new();
    let server = NatsServer::start(|dir| op.server_config(dir));
    let url = server.nats_url();
    let creds = write(
        server.dir.path(),
        "user.creds",
        &user_creds(&op.account, "itg-worker"),
    );
    connects(
        &server,
        &config(&url, &format!("  creds_file: {}\n", creds.display())),
    )
    .await;

    // A well-formed user of an account this server does not know.
    let other = write(
        server.dir.path(),
        "other.creds",
        &user_creds(&nkeys::KeyPair::new_account(), "intruder"),
    );
    refused(
        &server,
        &config(&url, &format!("  creds_file: {}\n", other.display())),
        "user of an unknown account",
    )
    .await;
    // The right JWT with another user's seed: the nonce signature does not match the JWT's subject.
    let right = std::fs::read_to_string(&creds).unwrap();
    let jwt = right.lines().nth(1).unwrap();
    let forged = write(
        server.dir.path(),
        "forged.creds",
        &nats_server::creds_file_text(jwt, &nkeys::KeyPair::new_user().seed().unwrap()),
    );
    refused(
        &server,
        &config(&url, &format!("  creds_file: {}\n", forged.display())),
        "JWT with a foreign seed",
    )
    .await;
    refused(&server, &config(&url, ""), "no creds").await;
}

/// A server with TLS from a generated CA; `verify` asks for client certificates of that CA.
fn tls_server(ca: &Ca, verify: bool) -> NatsServer {
    let cert = ca.server();
    let ca_pem = ca.pem();
    NatsServer::start(|dir| {
        let c = write(dir, "server.pem", &cert.cert_pem);
        let k = write(dir, "server-key.pem", &cert.key_pem);
        let a = write(dir, "ca.pem", &ca_pem);
        format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: {verify}\n  timeout: 2\n}}",
            quoted(&c.display().to_string()),
            quoted(&k.display().to_string()),
            quoted(&a.display().to_string()),
        )
    })
}

#[tokio::test]
async fn tls_server_certificate() {
    let ca = Ca::new("itg test CA");
    let server = tls_server(&ca, false);
    let ca_file = server.path("ca.pem");
    let tls = format!("  tls:\n    ca_file: {}\n", ca_file.display());
    connects(&server, &config(&server.tls_url(), &tls)).await;
    // nats:// with a tls section requires TLS all the same.
    connects(&server, &config(&server.nats_url(), &tls)).await;

    // Another CA does not vouch for the server.
    let other = write(
        server.dir.path(),
        "other-ca.pem",
        &Ca::new("other CA").pem(),
    );
    refused(
        &server,
        &config(
            &server.tls_url(),
            &format!("  tls:\n    ca_file: {}\n", other.display()),
        ),
        "server certificate of an unknown CA",
    )
    .await;
    // The system roots do not either.
    refused(
        &server,
        &config(&server.tls_url(), "  tls: {}\n"),
        "TLS without the CA",
    )
    .await;
}

#[tokio::test]
async fn mutual_tls() {
    let ca = Ca::new("itg test CA");
    let server = tls_server(&ca, true);
    let ca_file = server.path("ca.pem");
    let dir = server.dir.path();
    let client = ca.client("itg-worker");
    let cert = write(dir, "client.pem", &client.cert_pem);
    let key = write(dir, "client-key.pem", &client.key_pem);
    connects(
        &server,
        &config(
            &server.tls_url(),
            &format!(
                "  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
                ca_file.display(),
                cert.display(),
                key.display()
            ),
        ),
    )
    .await;

    refused(
        &server,
        &config(
            &server.tls_url(),
            &format!("  tls:\n    ca_file: {}\n", ca_file.display()),
        ),
        "no client certificate",
    )
    .await;

    let stranger = Ca::new("other CA").client("itg-worker");
    let cert = write(dir, "stranger.pem", &stranger.cert_pem);
    let key = write(dir, "stranger-key.pem", &stranger.key_pem);
    refused(
        &server,
        &config(
            &server.tls_url(),
            &format!(
                "  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
                ca_file.display(),
                cert.display(),
                key.display()
            ),
        ),
        "client certificate of an unknown CA",
    )
    .await;
}

#[tokio::test]
async fn secrets_never_shown() {
    let server = NatsServer::start(|_| {
        "authorization {\n  users = [ { user: itg, password: \"pw-right-c0ffee\" } ]\n}".into()
    });
    let url = server.nats_url();
    let secrets = ["pw-wrong-deadbeef", "tok-wrong-feedface"];
    for cfg in [
        config(&url, &format!("  user: itg\n  password: {}\n", secrets[0])),
        config(&url, &format!("  token: {}\n", secrets[1])),
    ] {
        let err = itg::nats::connect(&cfg.nats)
            .await
            .expect_err("wrong secret refused");
        for shown in [
            err.to_string(),
            format!("{err:?}"),
            format!("{cfg:?}"),
            format!("{:?}", cfg.nats),
            format!("{cfg:#?}"),
        ] {
            for s in secrets {
                assert!(!shown.contains(s), "secret {s} shown in: {shown}");
            }
        }
        // Debug still says a secret is set, without its value.
        assert!(format!("{:?}", cfg.nats).contains("redacted"));
    }

    // Credentials written into the URL are kept out of errors and Debug as well.
    let secret = "pw-in-url-abad1dea";
    let cfg = config(
        &format!("nats://itg:{secret}@127.0.0.1:{}", server.port),
        "",
    );
    let err = itg::nats::connect(&cfg.nats)
        .await
        .expect_err("wrong password in URL refused");
    for shown in [
        err.to_string(),
        format!("{err:?}"),
        format!("{cfg:?}"),
        format!("{:?}", cfg.nats),
    ] {
        assert!(!shown.contains(secret), "secret shown in: {shown}");
    }
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{}", server.port)),
        "{err}"
    );
}

#[tokio::test]
async fn the_worker_binary_shows_no_secret_in_its_output_or_help() {
    let server = NatsServer::start(|_| {
        "authorization {\n  users = [ { user: itg, password: \"pw-right-c0ffee\" } ]\n}".into()
    });
    let secret = "pw-wrong-5ca1ab1e";
    let yaml = format!(
        "nats:\n  url: {}\n  user: itg\n  password: {secret}\nresource_managers:\n  - name: rm1\n    kubeconfig: /nonexistent\n    internal_task_gateway: {{gateway_name: gw, gateway_namespace: gateway-system, gateway_ip: 203.0.113.10, gateway_port_range_start: 30000, gateway_port_range_end: 30099}}\n",
        server.nats_url()
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), yaml).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_itg-worker"))
            .args(args)
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = run(&["--config", file.path().to_str().unwrap()]);
    assert!(!ok, "a wrong password must stop start-up");
    assert!(text.contains("cannot connect to NATS"), "{text}");
    assert!(
        !text.contains(secret),
        "the password leaked into the output: {text}"
    );
    let (_, help) = run(&["--help"]);
    assert!(help.contains("--config") && !help.contains(secret));
}
