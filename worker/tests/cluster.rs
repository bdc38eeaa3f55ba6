//! A real coordinator process and real `worker run` processes, for the service tests of both
//! kinds of job (`service.rs`: our trainer; `commands.rs`: command jobs).
#![allow(dead_code)]
// For the suites that include this module (not every one uses both).
#[allow(unused_imports)]
pub(crate) use protocol::{JobStatus, SweepStatus};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const TOKEN: &str = "svc-token";

/// One test at a time: each starts trainers sized to own the machine's cores, and two tests' worth
/// of OpenMP threads spinning on 2 cores slows epochs by orders of magnitude (seen as a timeout).
pub(crate) static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The coordinator binary, built on demand when this package's tests run alone.
pub(crate) fn server_bin() -> PathBuf {
    let bin = worker_bin().with_file_name("server");
    if !bin.exists() {
        let ok = Command::new(env!("CARGO"))
            .args(["build", "-p", "server", "--bin", "server"])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    bin
}

pub(crate) struct Coordinator {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl Coordinator {
    pub(crate) fn start(db: &Path, listen: &str, lease_seconds: u32) -> Self {
        let mut cmd = Command::new(server_bin());
        cmd.args([
            "serve",
            "--listen",
            listen,
            "--token",
            TOKEN,
            "--lease-seconds",
            &lease_seconds.to_string(),
            "--db",
        ])
        .arg(db)
        .stderr(Stdio::null());
        let (child, url) = protocol::listening::start_coordinator(cmd).unwrap();
        Coordinator { child, url }
    }

    pub(crate) fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn post(&self, path: &str, body: Value) -> Value {
        ureq::post(&format!("{}{path}", self.url))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .send_json(body)
            .unwrap()
            .into_json()
            .unwrap_or(Value::Null)
    }

    pub(crate) fn get(&self, path: &str) -> Value {
        ureq::get(&format!("{}{path}", self.url))
            .call()
            .unwrap()
            .into_json()
            .unwrap()
    }

    pub(crate) fn submit(&self, spec: Value) -> i64 {
        self.post("/api/sweeps", spec)["id"].as_i64().unwrap()
    }

    /// Until the sweep's first job has recorded an epoch.
    pub(crate) fn wait_first_epoch(&self, sweep: i64) {
        let mut stall = Stall::new(STALL);
        loop {
            let s = self.get(&format!("/api/sweeps/{sweep}"));
            if s["jobs"][0]["epoch"].as_i64().unwrap_or(0) >= 1 {
                return;
            }
            stall.check(&s, "no epoch recorded");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Until the sweep is finished or cancelled. Fails only when its jobs stop moving for `stall`
    /// (a busy or slow machine makes every epoch longer; it does not make the test wrong).
    pub(crate) fn wait_sweep(&self, sweep: i64, stall: Duration) -> Value {
        let mut stall = Stall::new(stall);
        loop {
            let s = self.get(&format!("/api/sweeps/{sweep}"));
            if s["status"] == SweepStatus::Finished.as_str()
                || s["status"] == SweepStatus::Cancelled.as_str()
            {
                return s;
            }
            stall.check(&s, "sweep not done");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// How long a sweep's jobs may show no change (status, attempt or epoch) before a wait fails. An
/// epoch of the tiny network takes a second or two on 2 free cores; this allows for a machine a
/// hundred times slower, and for the trainer's start-up.
pub(crate) const STALL: Duration = Duration::from_secs(180);

/// A wait that follows progress: the deadline moves each time the watched jobs change.
pub(crate) struct Stall {
    last: String,
    since: Instant,
    limit: Duration,
}

impl Stall {
    pub(crate) fn new(limit: Duration) -> Self {
        Stall {
            last: String::new(),
            since: Instant::now(),
            limit,
        }
    }

    /// Notes the sweep's state; panics with `what` when nothing has moved for the limit.
    pub(crate) fn check(&mut self, sweep: &Value, what: &str) {
        let now: String = sweep["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|j| {
                format!(
                    "{}:{}:{}:{};",
                    j["id"], j["status"], j["attempt"], j["epoch"]
                )
            })
            .collect();
        if now != self.last {
            self.last = now;
            self.since = Instant::now();
        }
        assert!(
            self.since.elapsed() < self.limit,
            "{what}: nothing moved for {:?}: {sweep}",
            self.limit
        );
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `worker run` process, killed if the test ends first (a failing test must not leave it behind).
pub(crate) struct Worker(pub Child);

impl Worker {
    pub(crate) fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }

    pub(crate) fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn worker(url: &str, work: &Path, extra: &[&str]) -> Worker {
    worker_beating(url, work, Some("0.5"), extra)
}

/// `worker run` with `--heartbeat-seconds` (None: the worker's default).
pub(crate) fn worker_beating(
    url: &str,
    work: &Path,
    heartbeat: Option<&str>,
    extra: &[&str],
) -> Worker {
    let mut cmd = Command::new(worker_bin());
    cmd.args(["run", "--server", url, "--token", TOKEN]);
    if let Some(h) = heartbeat {
        cmd.args(["--heartbeat-seconds", h]);
    }
    Worker(
        cmd.args(["--idle-seconds", "0.2", "--work-dir"])
            .arg(work)
            .args(extra)
            .stderr(Stdio::from(
                std::fs::File::create(work.with_extension("log")).unwrap(),
            ))
            .spawn()
            .unwrap(),
    )
}

pub(crate) fn epochs_of(c: &Coordinator, job: i64) -> Vec<i64> {
    c.get(&format!("/api/jobs/{job}"))["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["epoch"].as_i64().unwrap())
        .collect()
}

pub(crate) fn worker_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_worker"))
}
