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

pub struct Proc(Child);

impl Proc {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real `itg-worker` process serving `rms`; the config file lives as long as the process is needed.
pub fn spawn_worker(env: &Env, rms: &[&TestRm]) -> (Proc, tempfile::NamedTempFile) {
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
    (Proc(child), file)
}

/// VmRSS and VmHWM (MiB) of `proc`, once it has settled (allocator arenas, idle pull requests).
pub async fn settled_mib(proc: &Proc) -> (f64, f64) {
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let pid = proc.0.id();
    (
        status_kib(pid, "VmRSS:") as f64 / 1024.0,
        status_kib(pid, "VmHWM:") as f64 / 1024.0,
    )
}

async fn masters(env: &Env, rms: &[&TestRm]) -> Vec<(Master, String)> {
    let mut targets = Vec::new();
    for rm in rms {
        targets.push((Master::new(env, &rm.name).await, rm.task_ns.clone()));
    }
    targets
}

/// VmRSS and VmHWM (MiB) of a worker serving `rms` once `live` allocations are exposed over them.
pub async fn worker_rss(env: &Env, w: &Waiter, rms: &[&TestRm], live: usize) -> (f64, f64) {
    let (proc, _config) = spawn_worker(env, rms);
    let targets = masters(env, rms).await;
    let held = drive::fill(&targets, w, live, 32).await;
    let figures = settled_mib(&proc).await;
    drive::drain(&targets, w, &held, 32).await;
    figures
}

/// VmRSS (MiB) of one worker after `first` lifecycles and again after `total`, none of them left live: what
/// served and ended allocations leave behind in the process.
pub async fn worker_rss_after_churn(
    env: &Env,
    w: &Waiter,
    rms: &[&TestRm],
    first: usize,
    total: usize,
) -> (f64, f64) {
    let (proc, _config) = spawn_worker(env, rms);
    let targets = masters(env, rms).await;
    drive::lifecycles(&targets, w, first, 16).await;
    let (after_first, _) = settled_mib(&proc).await;
    drive::lifecycles(&targets, w, total.saturating_sub(first), 16).await;
    let (after_total, _) = settled_mib(&proc).await;
    (after_first, after_total)
}
