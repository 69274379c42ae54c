//! The resident memory of a real `itg-worker` process holding many live allocations.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};

use crate::common::{Env, Master, TestRm};
use crate::drive::{self, Waiter};

fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("status field")
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// VmRSS and VmHWM (MiB) of a worker serving `rms` once `live` allocations are exposed over them.
pub async fn worker_rss(env: &Env, w: &Waiter, rms: &[&TestRm], live: usize) -> (f64, f64) {
    let mut yaml = format!(
        "nats:\n  url: {}\nadmin:\n  address: 127.0.0.1:0\nlog_format: json\nresource_managers:\n",
        env.nats_url
    );
    for rm in rms {
        yaml.push_str(&rm.yaml(env));
    }
    let mut file = tempfile::NamedTempFile::new().expect("config file");
    file.write_all(yaml.as_bytes()).expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_itg-worker"))
        .arg("--config")
        .arg(file.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("itg-worker starts");
    let proc = Proc(child);
    let mut targets = Vec::new();
    for rm in rms {
        targets.push((Master::new(env, &rm.name).await, rm.task_ns.clone()));
    }
    let held = drive::fill(&targets, w, live, 32).await;
    // Let the worker settle (allocator arenas, idle pull requests) before reading.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let pid = proc.0.id();
    let rss = status_kib(pid, "VmRSS:") as f64 / 1024.0;
    let hwm = status_kib(pid, "VmHWM:") as f64 / 1024.0;
    drive::drain(&targets, w, &held, 32).await;
    drop(proc);
    (rss, hwm)
}
