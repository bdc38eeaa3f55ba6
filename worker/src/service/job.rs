//! One claimed job: its program (our trainer or a command job, see [`super::program`]), and
//! everything that flows to the coordinator.
//!
//! Each epoch the program appends a line to `metrics.jsonl` and then leaves its checkpoint (the
//! trainer commits `resume.safetensors`; a command job's checkpoint directory is archived after
//! each line); its output is read as it is written. The supervisor forwards lines, log chunks and
//! checkpoints, in the order they were produced, through an outbox that keeps every write until
//! the coordinator has acknowledged it (retrying with backoff while it is unreachable). A 409
//! means this attempt lost the job: the program is stopped at once.
use super::coordinator::{CallError, Claim, Coordinator};
use super::outbox::{Outbox, Write};
use super::output::Output;
use super::program;
pub use super::program::Program;
use super::slots::Placement;
use crate::train::{METRICS_FILE, SUMMARY_FILE};
use protocol::{GangPart, JobShape, MetricsReport, Outcome};
use serde_json::Value;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Exit code of a trainer stopped by SIGTERM after committing its epoch (see `train.rs`).
pub const EXIT_INTERRUPTED: i32 = crate::EXIT_INTERRUPTED;
/// Largest log chunk sent at once.
const LOG_CHUNK: usize = 64 << 10;
/// Most bytes of the metrics file read in one poll, and the longest line taken as metrics.
const METRICS_READ: usize = 1 << 20;
const MAX_METRICS_LINE: usize = 64 << 10;

/// Log a worker holds for an unreachable coordinator; the oldest is dropped beyond it (the
/// coordinator keeps only the newest output anyway).
const MAX_LOG_QUEUED: usize = 16 << 20;

#[derive(Debug, Clone)]
pub struct JobOptions {
    pub exe: PathBuf,
    pub work_dir: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub data_url: String,
    pub data_md5: String,
    pub heartbeat: Duration,
    pub poll: Duration,
    /// Where command jobs run (`--command-root`); None: this worker runs none.
    pub command_root: Option<PathBuf>,
    /// How long a command job has to exit after its stop file appears, before SIGTERM (and as
    /// long again before SIGKILL).
    pub stop_grace: Duration,
    /// Variables of the worker's environment a command job also gets, beyond the allowlist
    /// (`--pass-env NAME`).
    pub pass_env: Vec<String>,
    /// Caps on a restored command checkpoint (`--restore-max-mib`, `--restore-max-entries`).
    pub restore: program::RestoreLimits,
}

/// What the supervisor reports to the worker's main loop as it goes.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub epoch: u32,
    pub epochs: u32,
    pub accuracy: Option<f64>,
    pub done: Option<String>,
    /// While its gang forms: how many of how many workers have joined.
    pub forming: Option<protocol::GangState>,
}

/// Builds `worker train` arguments from the job's params and where it was placed.
pub fn train_command(
    opts: &JobOptions,
    params: &Value,
    gang: Option<&GangPart>,
    placement: &Placement,
    out: &Path,
) -> anyhow::Result<Command> {
    // `nnodes` places the ranks (the gang says where they meet); it is no option of the run.
    let mut run_params = params.clone();
    if let Some(p) = run_params.as_object_mut() {
        p.remove(protocol::train::NNODES);
    }
    let mut cfg: crate::config::TrainConfig = serde_json::from_value(run_params)
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
    if let Some(g) = gang {
        cmd.args(["--nnodes", &g.nnodes.to_string()])
            .args(["--node-rank", &g.node_rank.to_string()])
            .args(["--master-addr", &g.master.addr])
            .args(["--master-port", &g.master.port.to_string()]);
    }
    Ok(cmd)
}

/// A path from a sweep, checked to stay under the root it is joined to.
pub(super) fn relative_name<'a>(key: &str, name: &'a str) -> anyhow::Result<&'a Path> {
    protocol::check_relative_path(name)
        .map_err(|why| anyhow::anyhow!("{key} {name:?}: {}", why.message()))
}

/// How waiting for a gang ended.
#[derive(Debug)]
enum GangWait {
    /// Every node has joined (or the job is single-node): run.
    Formed,
    /// Give the job back (the whole gang's attempt), for this reason.
    GiveBack(String),
    /// The gang was dissolved or its attempt ended: nothing to send.
    Gone(String),
}

/// Why the job's program is being stopped; the first that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancelled,
    Diverged,
    Pruned,
    Shutdown,
}

/// How far a stop has gone (it exists once the program has been told).
#[derive(Debug, Clone, Copy)]
struct Halt {
    since: Instant,
    termed: bool,
    killed: bool,
}

#[derive(Debug)]
pub struct Supervisor {
    claim: Claim,
    coord: Coordinator,
    opts: JobOptions,
    out: PathBuf,
    program: Result<Program, String>,
    outbox: Outbox,
    metrics_offset: u64,
    /// The metrics line being read is too long and is skipped to its end.
    metrics_overlong: bool,
    /// The last epoch of the checkpoint this attempt resumed from: the program may write those
    /// epochs again, but they were computed (and reported) by an earlier attempt.
    restored_epoch: i64,
    resume_seen: Option<(SystemTime, u64)>,
    progress: Arc<Mutex<Progress>>,
    output: Output,
    /// The sweep's early-stopping rule stopped the job (a metrics reply or a heartbeat said so).
    pruned: bool,
    cancelled: bool,
    /// A metrics line had a non-finite loss.
    diverged: bool,
    halt: Option<Halt>,
    /// Node 0's rendezvous port, kept from other processes until its ranks start.
    rendezvous_port: Option<crate::ddp::launch::PortHold>,
}

impl Supervisor {
    pub fn new(
        claim: Claim,
        program: Result<Program, String>,
        coord: Coordinator,
        opts: JobOptions,
        progress: Arc<Mutex<Progress>>,
    ) -> Self {
        let out = opts.work_dir.join(format!("job-{}", claim.id));
        Supervisor {
            program,
            claim,
            coord,
            opts,
            out,
            outbox: Outbox::new(MAX_LOG_QUEUED),
            metrics_offset: 0,
            metrics_overlong: false,
            restored_epoch: 0,
            resume_seen: None,
            progress,
            output: Output::default(),
            pruned: false,
            cancelled: false,
            diverged: false,
            halt: None,
            rendezvous_port: None,
        }
    }

    /// Holds the gang's rendezvous port (this worker is its node 0) until the ranks start.
    pub fn holding(mut self, port: Option<crate::ddp::launch::PortHold>) -> Self {
        self.rendezvous_port = port;
        self
    }

    fn job(&self) -> i64 {
        self.claim.id
    }

    fn program(&self) -> &Program {
        self.program.as_ref().unwrap_or(&Program::Trainer)
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
        if let Err(e) = self.program.clone() {
            return self.end_without_child(e);
        }
        match self.wait_for_gang(&stopping) {
            GangWait::Formed => {}
            GangWait::GiveBack(reason) => {
                self.outbox.push(Write::Release(reason));
                return self.drain_until_done(&stopping);
            }
            GangWait::Gone(why) => {
                tracing::info!(job = self.job(), %why, "the gang will not run here");
                self.progress.lock().expect("not poisoned").done = Some("gang dissolved".into());
                return;
            }
        }
        if let Err(e) = self.restore_checkpoint(&stopping) {
            return self.end_without_child(e);
        }
        // Rank 0 binds the port now.
        self.rendezvous_port = None;
        let mut child = match self.start(&placement) {
            Ok(c) => c,
            Err(e) => return self.end_without_child(e),
        };
        let code = match self.watch(&mut child, &stopping) {
            Ok(code) => code,
            Err(lease_lost) => return self.abandon(&mut child, &lease_lost),
        };
        // Whatever the program wrote last goes out before the job ends.
        self.output.wait_closed(Duration::from_secs(5));
        self.collect();
        let end = self.outcome(code, stopping.load(Ordering::SeqCst));
        self.outbox.push(end);
        self.drain_until_done(&stopping);
    }

    /// The coordinator's checkpoint is the truth: an empty output directory, then its checkpoint
    /// (if it has one), retried while the coordinator is unreachable.
    fn restore_checkpoint(&mut self, stopping: &AtomicBool) -> Result<(), String> {
        let (id, attempt) = (self.claim.id, self.claim.attempt);
        let _ = std::fs::remove_dir_all(&self.out);
        std::fs::create_dir_all(&self.out)
            .map_err(|e| format!("cannot create {}: {e}", self.out.display()))?;
        if self.claim.is_gang_member() {
            // Node 0's rank 0 reads the checkpoint and hands the state to every rank.
            return Ok(());
        }
        let path = self.program().checkpoint_file(&self.out);
        loop {
            match self.coord.download_checkpoint(self.claim.lease(), &path) {
                Ok(false) => return Ok(()),
                Ok(true) => {
                    self.restored_epoch = match self.program() {
                        // Unreadable: the trainer will say why; nothing is skipped then.
                        Program::Trainer => crate::checkpoint::read_resume_meta(&path)
                            .map(|m| i64::from(m.epoch))
                            .unwrap_or(0),
                        Program::Command { .. } => {
                            program::unpack_checkpoint(&self.out, &path, self.opts.restore)
                                .map_err(|e| format!("cannot unpack the job's checkpoint: {e}"))?
                        }
                    };
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

    /// A gang's member waits until every node has joined, heartbeating its own lease (at least
    /// every second, so the gang starts soon after its last member joins).
    fn wait_for_gang(&mut self, stopping: &AtomicBool) -> GangWait {
        let Some(gang) = self.claim.gang.clone() else {
            return GangWait::Formed;
        };
        tracing::info!(job = self.job(), node_rank = gang.node_rank, nnodes = gang.nnodes, master = %format!("{}:{}", gang.master.addr, gang.master.port), "joined a gang");
        let every = self.heartbeat_every().min(Duration::from_secs(1));
        loop {
            match self.coord.heartbeat(self.claim.lease()) {
                Ok(reply) if reply.cancel || reply.stop => {
                    return GangWait::GiveBack(
                        "the job was cancelled or stopped while its gang formed".into(),
                    )
                }
                Ok(reply) if reply.gang.is_some_and(|g| g.formed()) => {
                    self.progress.lock().expect("not poisoned").forming = None;
                    return GangWait::Formed;
                }
                Ok(reply) => self.progress.lock().expect("not poisoned").forming = reply.gang,
                Err(CallError::LeaseLost(why)) => return GangWait::Gone(why),
                Err(e) => {
                    tracing::warn!(job = self.job(), error = %e, "heartbeat failed while the gang forms")
                }
            }
            if stopping.load(Ordering::SeqCst) {
                return GangWait::GiveBack("the worker shut down while the gang formed".into());
            }
            std::thread::sleep(every);
        }
    }

    fn start(&mut self, placement: &Placement) -> Result<Child, String> {
        let what = self.program().name();
        let mut child = self
            .program()
            .command(&self.opts, &self.claim, placement, &self.out)
            .and_then(|mut c| {
                c.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(Into::into)
            })
            .map_err(|e| format!("cannot start the {what}: {e}"))?;
        self.output = Output::capture(&mut child, self.job());
        Ok(child)
    }

    /// Until the program exits: forwards its epochs, output and checkpoints, heartbeats inside
    /// the lease, and passes stops on (see [`Self::stop_program`]).
    /// Ok(exit code); Err(why) when this attempt lost the job.
    fn watch(&mut self, child: &mut Child, stopping: &AtomicBool) -> Result<i32, String> {
        let id = self.claim.id;
        let mut last_beat = Instant::now();
        loop {
            self.collect();
            self.stop_program(child, stopping);
            if last_beat.elapsed() >= self.heartbeat_every() {
                last_beat = Instant::now();
                match self.coord.heartbeat(self.claim.lease()) {
                    Ok(reply) => {
                        self.cancelled |= reply.cancel;
                        self.pruned |= reply.stop;
                    }
                    Err(CallError::LeaseLost(why)) => return Err(why),
                    Err(e) => {
                        tracing::warn!(job = id, error = %e, "heartbeat failed; training goes on")
                    }
                }
            }
            self.flush()?;
            match child.try_wait() {
                Ok(Some(status)) => return Ok(exit_code(status)),
                Ok(None) => std::thread::sleep(self.opts.poll),
                Err(e) => {
                    tracing::error!(job = id, error = %e, "cannot wait for the program");
                    return Ok(-1);
                }
            }
        }
    }

    fn stop_reason(&self, stopping: &AtomicBool) -> Option<StopReason> {
        [
            (self.cancelled, StopReason::Cancelled),
            (self.diverged, StopReason::Diverged),
            (self.pruned, StopReason::Pruned),
            (stopping.load(Ordering::SeqCst), StopReason::Shutdown),
        ]
        .into_iter()
        .find_map(|(yes, why)| yes.then_some(why))
    }

    /// Our trainer: SIGTERM on a stop or an early stop (it commits its epoch), SIGKILL on a cancel
    /// (nothing to keep), and on a shutdown whose epoch has not committed within the grace; it ends
    /// a diverged run itself. A command job: its stop file, then SIGTERM to its process group after
    /// the grace period, then SIGKILL after as long again.
    fn stop_program(&mut self, child: &Child, stopping: &AtomicBool) {
        let Some(reason) = self.stop_reason(stopping) else {
            return;
        };
        let pid = child.id() as i32;
        let grace = self.opts.stop_grace;
        let is_command = self.program().is_command();
        if self.halt.is_none() {
            tracing::info!(job = self.job(), ?reason, "stopping the job's program");
            if is_command {
                let stop_file = Program::stop_file(&self.out);
                let _ = std::fs::write(stop_file, format!("{reason:?}\n").to_lowercase());
            }
        }
        let halt = self.halt.get_or_insert(Halt {
            since: Instant::now(),
            termed: false,
            killed: false,
        });
        let signal = |group: bool, sig: i32| {
            // SAFETY: kill(2) on our own child (or its process group, which setpgid made its own).
            unsafe { libc::kill(if group { -pid } else { pid }, sig) };
        };
        if is_command {
            if !halt.termed && halt.since.elapsed() >= grace {
                signal(true, libc::SIGTERM);
                halt.termed = true;
            }
            if !halt.killed && halt.since.elapsed() >= grace * 2 {
                signal(true, libc::SIGKILL);
                halt.killed = true;
            }
        } else if reason == StopReason::Cancelled && !halt.killed {
            signal(false, libc::SIGKILL);
            halt.killed = true;
        } else if reason != StopReason::Diverged && !halt.termed {
            signal(false, libc::SIGTERM);
            halt.termed = true;
        } else if reason == StopReason::Shutdown && !halt.killed && halt.since.elapsed() >= grace {
            // A shutdown has a deadline (Slurm's KillWait after its SIGTERM): an epoch that has not
            // committed within the grace is given up and redone elsewhere from the last checkpoint.
            signal(false, libc::SIGKILL);
            halt.killed = true;
        }
    }

    /// How the attempt ends, from the program's exit code and what it reported.
    fn outcome(&self, code: i32, stopping: bool) -> Write {
        let summary: Option<Value> = std::fs::read(self.out.join(SUMMARY_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let finish = |status, error: Option<String>| Write::Finish {
            status,
            summary: summary.clone(),
            error,
        };
        let command = self.program().is_command();
        let diverged = self.diverged || code == crate::EXIT_DIVERGED;
        match code {
            _ if self.cancelled => finish(Outcome::Cancelled, Some("cancelled by the user".into())),
            _ if diverged => finish(Outcome::Diverged, Some("non-finite loss".into())),
            _ if self.pruned => finish(Outcome::Pruned, None),
            // Told to stop by a shutdown, a command may exit 0 early: it resumes elsewhere.
            _ if command && stopping && self.halt.is_some() => {
                Write::Release("the worker shut down; the job resumes from its checkpoint".into())
            }
            0 => finish(Outcome::Completed, None),
            // A gang's ranks stop together, whichever got the signal: node 0 gives the job back
            // after its checkpoint, this member's part is merely over.
            EXIT_INTERRUPTED if !command && self.claim.is_gang_member() => {
                finish(Outcome::Completed, None)
            }
            EXIT_INTERRUPTED if !command => {
                Write::Release("the worker shut down after a checkpoint".into())
            }
            // Stopped by a shutdown before it could commit: killed at the end of the grace, by a
            // SIGTERM that arrived while it started, or at once by a second SIGTERM (Slurm signals
            // every process of the job, and the worker signals its trainer too). Not the program's
            // failure: the job resumes elsewhere from its last checkpoint.
            _ if stopping && self.halt.is_some() => Write::Release(
                "the worker shut down mid-epoch; the job resumes from its last checkpoint".into(),
            ),
            c => {
                let what = self.program().name();
                let tail = self.output.tail().join("\n");
                let error = match c {
                    c if c < 0 => format!("{what} was killed by signal {}:\n{tail}", -c),
                    c => format!("{what} exited with code {c}:\n{tail}"),
                };
                finish(Outcome::Failed, Some(error))
            }
        }
    }

    /// New output, new metric lines and a new checkpoint, queued in the order they were written.
    /// A gang member other than node 0 sends none of them (node 0 reports for the gang); its
    /// output is read and only its tail kept, for the error of a failure.
    fn collect(&mut self) {
        if self.claim.is_gang_member() {
            let _ = self.output.take(usize::MAX);
            return;
        }
        let last_new_epoch = self.collect_metrics();
        // After the metrics: a note about a skipped metrics line goes out in this same pass, even
        // when it is the job's last.
        self.collect_output();
        self.collect_checkpoint(last_new_epoch);
    }

    fn collect_output(&mut self) {
        for (offset, data) in self.output.take(LOG_CHUNK) {
            let dropped = self.outbox.push(Write::Log {
                offset,
                gap: 0,
                data,
            });
            if dropped > 0 {
                tracing::warn!(
                    job = self.job(),
                    bytes = dropped,
                    "coordinator unreachable for long: dropping old output"
                );
            }
        }
    }

    /// Forwards whole new lines of metrics.jsonl; the last new epoch forwarded. Read as bytes, at
    /// most [`METRICS_READ`] a poll: a line that is not UTF-8 JSON with an epoch, or longer than
    /// [`MAX_METRICS_LINE`], is skipped with a note in the job's log, and the lines after it count.
    fn collect_metrics(&mut self) -> Option<i64> {
        let mut f = std::fs::File::open(self.out.join(METRICS_FILE)).ok()?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.metrics_offset {
            // Rewritten on resume from the checkpoint's history: read it again (the coordinator
            // stores each epoch once).
            self.metrics_offset = 0;
        }
        f.seek(SeekFrom::Start(self.metrics_offset)).ok()?;
        let mut bytes = Vec::new();
        (&mut f)
            .take(METRICS_READ as u64)
            .read_to_end(&mut bytes)
            .ok()?;
        let mut last = None;
        let mut rest = &bytes[..];
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let line = &rest[..end];
            rest = &rest[end + 1..];
            self.metrics_offset += end as u64 + 1;
            if std::mem::take(&mut self.metrics_overlong) {
                continue; // the end of a line already skipped as too long
            }
            if let Some(epoch) = self.forward_metrics_line(line) {
                last = Some(epoch);
            }
        }
        // No newline in a whole read: a line too long to be metrics. Skip it to its end.
        if rest.len() == METRICS_READ.min(bytes.len()) && rest.len() >= MAX_METRICS_LINE {
            self.metrics_offset += rest.len() as u64;
            if !std::mem::replace(&mut self.metrics_overlong, true) {
                self.metrics_note(&format!(
                    "a metrics line longer than {MAX_METRICS_LINE} bytes: skipped"
                ));
            }
        }
        last
    }

    /// One line of metrics: forwarded (its epoch returned when new) or skipped with a note.
    fn forward_metrics_line(&mut self, line: &[u8]) -> Option<i64> {
        if line.len() > MAX_METRICS_LINE {
            self.metrics_note(&format!(
                "a metrics line longer than {MAX_METRICS_LINE} bytes: skipped"
            ));
            return None;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            self.metrics_note("a metrics line that is not UTF-8: skipped");
            return None;
        };
        if text.trim().is_empty() {
            return None;
        }
        let Some(m) = program::read_line(self.program(), text) else {
            self.metrics_note(&format!(
                "a metrics line without an integer epoch >= 1 (or not JSON): skipped: {}",
                text.chars().take(200).collect::<String>()
            ));
            return None;
        };
        let mut p = self.progress.lock().expect("not poisoned");
        p.epoch = m.epoch.max(0) as u32;
        p.accuracy = m.accuracy.or(p.accuracy);
        drop(p);
        self.diverged |= m.diverged;
        // Restored epochs keep the record of the attempt that computed them.
        if m.epoch <= self.restored_epoch {
            return None;
        }
        let epoch = m.epoch;
        self.outbox.push(Write::Metrics(m));
        Some(epoch)
    }

    fn metrics_note(&self, why: &str) {
        tracing::warn!(job = self.job(), "{why}");
        self.output.note(why);
    }

    /// The trainer's newly committed resume file; a command's checkpoint directory archived after
    /// each new line (with that line's epoch, so a resume knows which epochs it holds).
    fn collect_checkpoint(&mut self, last_new_epoch: Option<i64>) {
        let changed = match self.program() {
            Program::Trainer => {
                let Ok(meta) = std::fs::metadata(self.program().checkpoint_file(&self.out)) else {
                    return;
                };
                let stamp = (
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    meta.len(),
                );
                let changed = self.resume_seen != Some(stamp);
                self.resume_seen = Some(stamp);
                changed
            }
            Program::Command { .. } => match last_new_epoch {
                None => false,
                Some(epoch) => match program::pack_checkpoint(&self.out, epoch) {
                    Ok(packed) => packed.is_some(),
                    Err(e) => {
                        tracing::warn!(job = self.job(), error = %e, "cannot archive the checkpoint directory");
                        false
                    }
                },
            },
        };
        if changed {
            self.outbox.push(Write::Upload);
        }
    }

    /// Sends queued writes in order until one cannot be (see [`Outbox::flush`]). Err only when
    /// the lease is lost.
    fn flush(&mut self) -> Result<(), String> {
        let (lease, attempt) = (self.claim.lease(), self.claim.attempt);
        let checkpoint = match &self.program {
            Ok(p) => p.checkpoint_file(&self.out),
            Err(_) => self.out.clone(), // never uploaded: a job that did not start has none
        };
        let (coord, pruned) = (&self.coord, &mut self.pruned);
        self.outbox.flush(Instant::now(), |w| match w {
            Write::Metrics(m) => {
                let m = MetricsReport {
                    attempt,
                    ..m.clone()
                };
                *pruned |= coord.metrics(lease, &m)?.stop;
                Ok(())
            }
            Write::Upload => coord.upload_checkpoint(lease, &checkpoint),
            Write::Log { offset, gap, data } => coord.append_log(lease, *offset, *gap, data),
            Write::Finish {
                status,
                summary,
                error,
            } => coord.finish(lease, *status, summary.as_ref(), error.as_deref()),
            Write::Release(reason) => coord.release(lease, reason),
        })
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
        tracing::error!(job = self.job(), %error, "job failed before it started");
        self.outbox.push(Write::Finish {
            status: Outcome::Failed,
            summary: None,
            error: Some(error),
        });
        self.drain_until_done(&AtomicBool::new(false));
    }

    fn abandon(self, child: &mut Child, why: &str) {
        tracing::warn!(job = self.job(), %why, "lease lost: stopping the program at once");
        if self.program().is_command() {
            // SAFETY: kill(2) on our child's own process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        }
        let _ = child.kill();
        let _ = child.wait();
        self.progress.lock().expect("not poisoned").done = Some("lease lost".into());
    }
}

/// The exit code, or minus the signal that killed it.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| -s))
        .unwrap_or(-1)
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
            command_root: None,
            stop_grace: Duration::from_secs(10),
            pass_env: vec![],
            restore: program::RestoreLimits::default(),
        }
    }

    fn args(params: Value) -> anyhow::Result<Vec<String>> {
        let placement = Placement {
            devices: vec![DeviceKind::Cpu(0)],
            threads: 1,
        };
        let cmd = train_command(
            &opts(),
            &params,
            None,
            &placement,
            Path::new("/srv/work/job-1"),
        )?;
        Ok(cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect())
    }

    fn value_of(args: &[String], flag: &str) -> String {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1].clone()
    }

    /// A gang member's trainer: `nnodes` leaves the run's options and becomes the launch's, with
    /// the node's rank and the gang's rendezvous.
    #[test]
    fn a_gang_member_launches_its_node_of_the_run() {
        let placement = Placement {
            devices: vec![DeviceKind::Cpu(0)],
            threads: 1,
        };
        let gang = GangPart {
            nnodes: 2,
            node_rank: 1,
            master: protocol::Rendezvous {
                addr: "10.0.0.7".into(),
                port: 29500,
            },
        };
        let params = serde_json::json!({"nnodes": 2, "nproc_per_node": 4});
        let cmd = train_command(&opts(), &params, Some(&gang), &placement, Path::new("/w"))
            .expect("nnodes is no option of the run");
        let a: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(value_of(&a, "--nnodes"), "2");
        assert_eq!(value_of(&a, "--node-rank"), "1");
        assert_eq!(value_of(&a, "--master-addr"), "10.0.0.7");
        assert_eq!(value_of(&a, "--master-port"), "29500");
        assert_eq!(value_of(&a, "--nproc-per-node"), "4");
        assert_eq!(a.iter().filter(|x| *x == "--nnodes").count(), 1);
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
