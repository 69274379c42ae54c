//! Workers as separate `itg-worker` processes, for the tests that kill them with SIGKILL: nothing of a
//! killed process survives, unlike a task aborted inside the test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The status code of `GET /readyz` on an admin address, if it answers.
pub fn readyz(addr: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// One `itg-worker` process; killed when dropped.
pub struct WorkerProcess {
    child: Child,
    /// The admin endpoint's address.
    pub admin: String,
    config: tempfile::NamedTempFile,
    env: Vec<(String, String)>,
    log: Arc<Mutex<Vec<String>>>,
}

impl WorkerProcess {
    /// Starts a worker from a config made by `yaml(admin_address)`, with extra environment variables.
    pub fn spawn(yaml: impl FnOnce(&str) -> String, env: &[(&str, &str)]) -> WorkerProcess {
        let admin = format!("127.0.0.1:{}", super::free_port());
        let config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(config.path(), yaml(&admin)).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let log = Arc::new(Mutex::new(Vec::new()));
        let child = start(&config, &env, &log);
        WorkerProcess {
            child,
            admin,
            config,
            env,
            log,
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&mut self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while readyz(&self.admin) != Some(200) {
            if let Some(s) = self.child.try_wait().unwrap() {
                panic!(
                    "the worker exited ({s}) before it was ready:\n{}",
                    self.log().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "the worker was not ready within {secs} s:\n{}",
                self.log().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the process has exited by itself (a failed start, say).
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// Waits until `/readyz` answers 200, starting the worker again whenever it exits, as a supervisor
    /// (Kubernetes, systemd) would after a failed start.
    pub async fn keep_ready(&mut self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while readyz(&self.admin) != Some(200) {
            if self.has_exited() {
                self.restart();
            }
            assert!(
                Instant::now() < deadline,
                "the worker was not ready within {secs} s:\n{}",
                self.log().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends a signal (`TERM`, `INT`) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} failed");
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same worker again (same config and environment) after it died or was killed.
    pub fn restart(&mut self) {
        self.kill();
        self.child = start(&self.config, &self.env, &self.log);
    }

    /// Starts it again with other extra environment variables.
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.restart();
    }

    /// Waits for the process to exit by itself.
    pub async fn exited(&mut self, secs: u64) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // The reader thread may not have drained the dead process's stderr yet: wait until the
                // log stops growing, so a caller reading it next sees the last lines.
                let mut seen = usize::MAX;
                for _ in 0..20 {
                    let n = self.log.lock().unwrap().len();
                    if n == seen {
                        break;
                    }
                    seen = n;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the worker still runs after {secs} s:\n{}",
                self.log().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its stderr so far, across restarts.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start(
    config: &tempfile::NamedTempFile,
    env: &[(String, String)],
    log: &Arc<Mutex<Vec<String>>>,
) -> Child {
    // ITG_TEST_WORKER_BIN: a copy of the binary, so a long run survives a rebuild meanwhile.
    let bin = std::env::var("ITG_TEST_WORKER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_itg-worker").to_owned());
    let mut child = Command::new(bin)
        .args(["--config", config.path().to_str().unwrap()])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("itg-worker starts");
    let stderr = child.stderr.take().unwrap();
    let log = log.clone();
    // ITG_TEST_WORKER_LOG: a file that collects every worker's stderr, for a long run's post-mortem.
    let mut file = std::env::var_os("ITG_TEST_WORKER_LOG").and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let pid = child.id();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(f) = file.as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "[{pid}] {line}");
            }
            log.lock().unwrap().push(line);
        }
    });
    child
}
