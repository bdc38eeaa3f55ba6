//! One claimed job: its `worker train` child, and everything that flows to the coordinator.
//!
//! Each epoch the trainer appends a line to `metrics.jsonl` and then commits `resume.safetensors`;
//! the supervisor forwards the line and uploads the file, in that order, through an outbox that
//! keeps every write until the coordinator has acknowledged it (retrying with backoff while it is
//! unreachable). A 409 means this attempt lost the job: the child is stopped at once.
use super::client::{CallError, Claim, Coordinator};
use super::slots::{DeviceKind, Placement};
use crate::checkpoint::RESUME_FILE;
use crate::metrics::EpochMetrics;
use crate::train::{METRICS_FILE, SUMMARY_FILE};
use protocol::{JobShape, Outcome};
use serde_json::Value;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Exit code of a trainer stopped by SIGTERM after committing its epoch (see `train.rs`).
pub const EXIT_INTERRUPTED: i32 = crate::EXIT_INTERRUPTED;
const STDERR_TAIL: usize = 30;

#[derive(Debug, Clone)]
pub struct JobOptions {
    pub exe: PathBuf,
    pub work_dir: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub data_url: String,
    pub data_md5: String,
    pub heartbeat: Duration,
    pub poll: Duration,
}

/// What the supervisor reports to the worker's main loop as it goes.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub epoch: u32,
    pub epochs: u32,
    pub accuracy: Option<f64>,
    pub done: Option<String>,
}

#[derive(Debug)]
enum Write {
    Metrics(EpochMetrics),
    Upload,
    Finish {
        status: Outcome,
        summary: Option<Value>,
        error: Option<String>,
    },
    Release(String),
}

/// Builds `worker train` arguments from the job's params and where it was placed.
pub fn train_command(
    opts: &JobOptions,
    params: &Value,
    placement: &Placement,
    out: &Path,
) -> anyhow::Result<Command> {
    let mut cfg: crate::config::TrainConfig = serde_json::from_value(params.clone())
        .map_err(|e| anyhow::anyhow!("the job's params are not valid train options: {e}"))?;
    cfg.threads = Some(placement.threads);
    // Paths in a sweep are names under this worker's roots; where data comes from is this worker's
    // setting. The coordinator checks the same, but a worker does not trust what it is sent.
    let data_root = opts
        .data_dir
        .clone()
        .unwrap_or_else(|| crate::config::TrainConfig::default().data_dir);
    cfg.data_dir = match params.get("data_dir").and_then(Value::as_str) {
        Some(name) => data_root.join(relative_name("data_dir", name)?),
        None => data_root,
    };
    if let Some(name) = params.get("init_from").and_then(Value::as_str) {
        cfg.init_from = Some(opts.work_dir.join(relative_name("init_from", name)?));
    }
    cfg.data_url = opts.data_url.clone();
    cfg.data_md5 = opts.data_md5.clone();
    let mut cmd = Command::new(&opts.exe);
    cmd.args(cfg.to_args()).arg("--out").arg(out);
    // A trainer must not outlive its worker: if the worker is killed, nobody would report its epochs
    // while it kept a device busy. Its checkpoint is on the coordinator; another worker resumes it.
    // SAFETY: prctl in the child between fork and exec touches no Rust state.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let gpus: Vec<String> = placement
        .devices
        .iter()
        .filter_map(|d| match d {
            DeviceKind::Gpu(i) => Some(i.to_string()),
            DeviceKind::Cpu(_) => None,
        })
        .collect();
    if !gpus.is_empty() {
        cmd.env("CUDA_VISIBLE_DEVICES", gpus.join(","));
    }
    // Keep libraries' own thread pools to the job's share as well.
    cmd.env("OMP_NUM_THREADS", placement.threads.to_string());
    Ok(cmd)
}

/// A path from a sweep, checked to stay under the root it is joined to.
fn relative_name<'a>(key: &str, name: &'a str) -> anyhow::Result<&'a Path> {
    protocol::check_relative_path(name)
        .map_err(|why| anyhow::anyhow!("{key} {name:?}: {}", why.message()))
}

#[derive(Debug)]
pub struct Supervisor {
    claim: Claim,
    coord: Coordinator,
    opts: JobOptions,
    out: PathBuf,
    outbox: VecDeque<Write>,
    metrics_offset: u64,
    /// The last epoch of the checkpoint this attempt resumed from: the trainer rewrites those
    /// epochs into metrics.jsonl, but they were computed (and reported) by an earlier attempt.
    restored_epoch: u32,
    resume_seen: Option<(SystemTime, u64)>,
    retry_at: Instant,
    backoff: Duration,
    progress: Arc<Mutex<Progress>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// The sweep's early-stopping rule stopped the job (a metrics reply or a heartbeat said so).
    pruned: bool,
}

impl Supervisor {
    pub fn new(
        claim: Claim,
        coord: Coordinator,
        opts: JobOptions,
        progress: Arc<Mutex<Progress>>,
    ) -> Self {
        let out = opts.work_dir.join(format!("job-{}", claim.id));
        Supervisor {
            claim,
            coord,
            opts,
            out,
            outbox: VecDeque::new(),
            metrics_offset: 0,
            restored_epoch: 0,
            resume_seen: None,
            retry_at: Instant::now(),
            backoff: Duration::from_millis(200),
            progress,
            stderr_tail: Arc::default(),
            pruned: false,
        }
    }

    fn job(&self) -> i64 {
        self.claim.id
    }

    /// Heartbeats come at most every `--heartbeat-seconds`, and at least three times per lease the
    /// coordinator granted (whatever its `--lease-seconds`): one late or lost heartbeat never costs
    /// a healthy worker its job.
    fn heartbeat_every(&self) -> Duration {
        match self.claim.lease_ms {
            Some(ms) if ms > 0 => self
                .opts
                .heartbeat
                .min(Duration::from_millis(ms as u64 / 3)),
            _ => self.opts.heartbeat,
        }
    }

    /// Runs the job to its end; `stopping` asks it to checkpoint and give the job back.
    pub fn run(mut self, placement: Placement, stopping: Arc<AtomicBool>) {
        self.progress.lock().expect("not poisoned").epochs =
            JobShape::of_value(&self.claim.params).epochs as u32;
        if let Err(e) = self.restore_checkpoint(&stopping) {
            return self.end_without_child(e);
        }
        let mut child = match self.start_trainer(&placement) {
            Ok(c) => c,
            Err(e) => return self.end_without_child(e),
        };
        let (code, cancelled) = match self.watch(&mut child, &stopping) {
            Ok(ended) => ended,
            Err(lease_lost) => return self.abandon(&mut child, &lease_lost),
        };
        // Whatever the trainer wrote last goes out before the job ends.
        self.collect();
        let end = self.outcome(code, cancelled);
        self.outbox.push_back(end);
        self.drain_until_done(&stopping);
    }

    /// The coordinator's checkpoint is the truth: an empty output directory, then its checkpoint
    /// (if it has one), retried while the coordinator is unreachable.
    fn restore_checkpoint(&mut self, stopping: &AtomicBool) -> Result<(), String> {
        let (id, attempt) = (self.claim.id, self.claim.attempt);
        let _ = std::fs::remove_dir_all(&self.out);
        std::fs::create_dir_all(&self.out)
            .map_err(|e| format!("cannot create {}: {e}", self.out.display()))?;
        let path = self.out.join(RESUME_FILE);
        loop {
            match self.coord.download_checkpoint(id, &path) {
                Ok(false) => return Ok(()),
                Ok(true) => {
                    // Unreadable: the trainer will say why; nothing is skipped then.
                    self.restored_epoch = crate::checkpoint::read_resume_meta(&path)
                        .map(|m| m.epoch)
                        .unwrap_or(0);
                    tracing::info!(
                        job = id,
                        attempt,
                        epoch = self.restored_epoch,
                        "resuming from the coordinator's checkpoint"
                    );
                    return Ok(());
                }
                Err(CallError::Unavailable(e)) if !stopping.load(Ordering::SeqCst) => {
                    tracing::warn!(job = id, error = %e, "coordinator unavailable; retrying the checkpoint download");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(format!("checkpoint download failed: {e}")),
            }
        }
    }

    fn start_trainer(&mut self, placement: &Placement) -> Result<Child, String> {
        let mut child = train_command(&self.opts, &self.claim.params, placement, &self.out)
            .and_then(|mut c| {
                c.stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(Into::into)
            })
            .map_err(|e| format!("cannot start the trainer: {e}"))?;
        self.capture_stderr(&mut child);
        Ok(child)
    }

    /// Until the trainer exits: forwards its epochs and checkpoints, heartbeats inside the lease,
    /// passes a stop (SIGTERM: commit the epoch, exit 4), an early stop (the same SIGTERM: the
    /// pruned job keeps its last epoch) and a cancel (kill: nothing to keep) on.
    /// Ok((exit code, cancelled)); Err(why) when this attempt lost the job.
    fn watch(&mut self, child: &mut Child, stopping: &AtomicBool) -> Result<(i32, bool), String> {
        let (id, attempt) = (self.claim.id, self.claim.attempt);
        let mut last_beat = Instant::now();
        let (mut signalled, mut cancelled) = (false, false);
        loop {
            self.collect();
            if (stopping.load(Ordering::SeqCst) || self.pruned) && !signalled {
                if self.pruned {
                    tracing::info!(
                        job = id,
                        "stopped early by the sweep's rule: stopping the trainer"
                    );
                }
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                signalled = true;
            }
            if last_beat.elapsed() >= self.heartbeat_every() {
                last_beat = Instant::now();
                match self.coord.heartbeat(id, attempt) {
                    Ok(reply) if reply.cancel && !cancelled => {
                        tracing::info!(job = id, "cancelled: stopping the trainer");
                        cancelled = true;
                        let _ = child.kill();
                    }
                    Ok(reply) => self.pruned |= reply.stop,
                    Err(CallError::LeaseLost(why)) => return Err(why),
                    Err(e) => {
                        tracing::warn!(job = id, error = %e, "heartbeat failed; training goes on")
                    }
                }
            }
            self.flush()?;
            match child.try_wait() {
                Ok(Some(status)) => return Ok((status.code().unwrap_or(-1), cancelled)),
                Ok(None) => std::thread::sleep(self.opts.poll),
                Err(e) => {
                    tracing::error!(job = id, error = %e, "cannot wait for the trainer");
                    return Ok((-1, cancelled));
                }
            }
        }
    }

    /// How the attempt ends, from the trainer's exit code (see `train.rs`) and its summary.
    fn outcome(&self, code: i32, cancelled: bool) -> Write {
        let summary: Option<Value> = std::fs::read(self.out.join(SUMMARY_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let finish = |status, error: Option<String>| Write::Finish {
            status,
            summary: summary.clone(),
            error,
        };
        match code {
            _ if cancelled => finish(Outcome::Cancelled, Some("cancelled by the user".into())),
            c if self.pruned && c != crate::EXIT_DIVERGED => finish(Outcome::Pruned, None),
            0 => finish(Outcome::Completed, None),
            c if c == crate::EXIT_DIVERGED => {
                finish(Outcome::Diverged, Some("non-finite loss".into()))
            }
            c if c == EXIT_INTERRUPTED => {
                Write::Release("the worker shut down after a checkpoint".into())
            }
            c => {
                let tail: Vec<String> = self
                    .stderr_tail
                    .lock()
                    .expect("not poisoned")
                    .iter()
                    .cloned()
                    .collect();
                let error = format!("trainer exited with code {c}:\n{}", tail.join("\n"));
                finish(Outcome::Failed, Some(error))
            }
        }
    }

    fn capture_stderr(&mut self, child: &mut Child) {
        let Some(stderr) = child.stderr.take() else {
            return;
        };
        let tail = self.stderr_tail.clone();
        let job = self.job();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                tracing::debug!(job, "trainer: {line}");
                let mut t = tail.lock().expect("not poisoned");
                if t.len() == STDERR_TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
    }

    /// New metric lines and a newly committed checkpoint, queued in the order they were written.
    fn collect(&mut self) {
        let path = self.out.join(METRICS_FILE);
        if let Ok(mut f) = std::fs::File::open(&path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < self.metrics_offset {
                // Rewritten on resume from the checkpoint's history: read it again (the coordinator
                // stores each epoch once).
                self.metrics_offset = 0;
            }
            let mut text = String::new();
            if f.seek(SeekFrom::Start(self.metrics_offset)).is_ok()
                && f.read_to_string(&mut text).is_ok()
            {
                // Only whole lines: the trainer may be half-way through one.
                let whole = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
                for line in text[..whole].lines() {
                    if let Ok(m) = serde_json::from_str::<EpochMetrics>(line) {
                        let mut p = self.progress.lock().expect("not poisoned");
                        p.epoch = m.epoch;
                        p.accuracy = Some(m.accuracy);
                        drop(p);
                        // Restored epochs keep the record of the attempt that computed them.
                        if m.epoch > self.restored_epoch {
                            self.outbox.push_back(Write::Metrics(m));
                        }
                    }
                }
                self.metrics_offset += whole as u64;
            }
        }
        if let Ok(meta) = std::fs::metadata(self.out.join(RESUME_FILE)) {
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            if self.resume_seen != Some(stamp) {
                self.resume_seen = Some(stamp);
                // Only the latest checkpoint matters: drop an older upload still queued.
                self.outbox.retain(|w| !matches!(w, Write::Upload));
                self.outbox.push_back(Write::Upload);
            }
        }
    }

    /// Sends queued writes in order until one fails. Err only when the lease is lost.
    fn flush(&mut self) -> Result<(), String> {
        if Instant::now() < self.retry_at {
            return Ok(());
        }
        let (id, attempt) = (self.claim.id, self.claim.attempt);
        while let Some(w) = self.outbox.front() {
            let r = match w {
                Write::Metrics(m) => self.coord.metrics(id, attempt, m).map(|reply| {
                    self.pruned |= reply.stop;
                }),
                Write::Upload => {
                    self.coord
                        .upload_checkpoint(id, attempt, &self.out.join(RESUME_FILE))
                }
                Write::Finish {
                    status,
                    summary,
                    error,
                } => self
                    .coord
                    .finish(id, attempt, *status, summary.as_ref(), error.as_deref()),
                Write::Release(reason) => self.coord.release(id, attempt, reason),
            };
            match r {
                Ok(()) => {
                    self.outbox.pop_front();
                    self.backoff = Duration::from_millis(200);
                }
                Err(CallError::LeaseLost(why)) => return Err(why),
                Err(CallError::Unavailable(e)) => {
                    tracing::warn!(job = id, error = %e, pending = self.outbox.len(), "coordinator unavailable; will retry");
                    self.retry_at = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(10));
                    return Ok(());
                }
                Err(CallError::Refused(e)) => {
                    tracing::error!(job = id, error = %e, "the coordinator refused a write; dropping it");
                    self.outbox.pop_front();
                }
            }
        }
        Ok(())
    }

    fn drain_until_done(mut self, stopping: &AtomicBool) {
        let deadline_after_stop = Duration::from_secs(30);
        let mut stop_seen: Option<Instant> = None;
        while !self.outbox.is_empty() {
            if self.flush().is_err() {
                break;
            }
            if stopping.load(Ordering::SeqCst) {
                let t = *stop_seen.get_or_insert_with(Instant::now);
                if t.elapsed() > deadline_after_stop {
                    tracing::error!(
                        job = self.job(),
                        "giving up on {} undelivered writes at shutdown",
                        self.outbox.len()
                    );
                    break;
                }
            }
            if !self.outbox.is_empty() {
                std::thread::sleep(self.opts.poll);
            }
        }
        self.progress.lock().expect("not poisoned").done = Some("done".into());
    }

    fn end_without_child(mut self, error: String) {
        tracing::error!(job = self.job(), %error, "job failed before training");
        self.outbox.push_back(Write::Finish {
            status: Outcome::Failed,
            summary: None,
            error: Some(error),
        });
        self.drain_until_done(&AtomicBool::new(false));
    }

    fn abandon(self, child: &mut Child, why: &str) {
        tracing::warn!(job = self.job(), %why, "lease lost: stopping the trainer at once");
        let _ = child.kill();
        let _ = child.wait();
        self.progress.lock().expect("not poisoned").done = Some("lease lost".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::slots::{DeviceKind, Placement};

    fn opts() -> JobOptions {
        JobOptions {
            exe: "worker".into(),
            work_dir: "/srv/work".into(),
            data_dir: Some("/srv/data".into()),
            data_url: "http://mirror.local/cifar.tgz".into(),
            data_md5: "abc".into(),
            heartbeat: Duration::from_secs(5),
            poll: Duration::from_millis(200),
        }
    }

    fn args(params: Value) -> anyhow::Result<Vec<String>> {
        let placement = Placement {
            devices: vec![DeviceKind::Cpu(0)],
            threads: 1,
        };
        let cmd = train_command(&opts(), &params, &placement, Path::new("/srv/work/job-1"))?;
        Ok(cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect())
    }

    fn value_of(args: &[String], flag: &str) -> String {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1].clone()
    }

    /// Paths in a sweep are names under this worker's roots; data source is the worker's own.
    #[test]
    fn sweep_paths_resolve_under_the_workers_roots() {
        let a = args(serde_json::json!({"data_dir": "mini", "init_from": "w/start.safetensors"}))
            .unwrap();
        assert_eq!(value_of(&a, "--data-dir"), "/srv/data/mini");
        assert_eq!(value_of(&a, "--init-from"), "/srv/work/w/start.safetensors");
        assert_eq!(value_of(&a, "--data-url"), "http://mirror.local/cifar.tgz");
        assert_eq!(value_of(&a, "--data-md5"), "abc");
        let a = args(serde_json::json!({})).unwrap();
        assert_eq!(value_of(&a, "--data-dir"), "/srv/data");
        for bad in [
            serde_json::json!({"data_dir": "/etc"}),
            serde_json::json!({"data_dir": "../.."}),
            serde_json::json!({"init_from": "/root/.ssh/id_rsa"}),
        ] {
            assert!(args(bad.clone()).is_err(), "{bad}");
        }
    }
}
