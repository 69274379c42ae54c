//! A password written into `nats.url` never reaches what the worker binary prints: not the start report,
//! not the error when JetStream is missing. Each case runs `itg-worker --check` against its own nats-server
//! that wants that password, and greps stdout and stderr.

mod common;
#[path = "common/nats_server.rs"]
mod nats_server;

use std::process::Command;

use common::{Env, TestRm};
use nats_server::{NatsServer, quoted};

const PASSWORD: &str = "pw-never-print-5e1d";

/// A user with that password, required: the worker logs in with the credentials of its URL.
fn users() -> String {
    format!(
        "authorization {{\n  users = [ {{ user: itg, password: {} }} ]\n}}\n",
        quoted(PASSWORD)
    )
}

/// Runs `itg-worker --check` with the password in the URL; returns its exit success and all it printed.
fn check(env: &Env, rm: &TestRm, server: &NatsServer) -> (bool, String) {
    let url = format!("nats://itg:{PASSWORD}@127.0.0.1:{}", server.port);
    let yaml = format!(
        "nats:\n  url: {}\nresource_managers:\n{}",
        quoted(&url),
        rm.yaml(env)
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_itg-worker"))
        .args(["--config", file.path().to_str().unwrap(), "--check"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

fn leaks(printed: &str) -> Vec<&str> {
    printed.lines().filter(|l| l.contains(PASSWORD)).collect()
}

#[tokio::test]
async fn the_start_report_does_not_print_the_url_password() {
    let env = Env::load();
    let rm = TestRm::new(&env, "sec", (42900, 42909)).await;
    let server = NatsServer::start(|dir| {
        format!(
            "jetstream {{ store_dir: {} }}\n{}",
            quoted(&dir.display().to_string()),
            users()
        )
    });
    let (ok, printed) = check(&env, &rm, &server);
    eprintln!("{printed}");
    assert!(
        ok,
        "the check failed:\n{printed}\nserver log:\n{}",
        server.log()
    );
    assert!(printed.contains("JetStream available"), "{printed}");
    assert!(
        leaks(&printed).is_empty(),
        "printed the password: {:?}",
        leaks(&printed)
    );
    rm.teardown(&env).await;
}

#[tokio::test]
async fn the_jetstream_error_does_not_print_the_url_password() {
    let env = Env::load();
    let rm = TestRm::new(&env, "secjs", (42910, 42919)).await;
    // No JetStream on this server: the account query fails after the password was accepted.
    let server = NatsServer::start(|_| users());
    let (ok, printed) = check(&env, &rm, &server);
    eprintln!("{printed}");
    assert!(!ok, "the check passed without JetStream:\n{printed}");
    assert!(printed.contains("JetStream"), "{printed}");
    assert!(
        leaks(&printed).is_empty(),
        "printed the password: {:?}",
        leaks(&printed)
    );
    rm.teardown(&env).await;
}
