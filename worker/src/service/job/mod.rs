//! One claimed job: its program (our trainer or a command job, see [`super::program`]), and
//! everything that flows to the coordinator. Its phases, each in a file of its own: the launch
//! (`launch.rs`: the gang forms, the checkpoint is restored, the program starts), the watch
//! (`watch.rs`: heartbeats, stops, how the attempt ended) and the reading of what the program
//! writes (`collect.rs`); this file sequences them and delivers the writes.
//!
//! Each epoch the program appends a line to `metrics.jsonl` and then leaves its checkpoint (the
//! trainer commits `resume.safetensors`; a command job's checkpoint directory is archived after
//! each line); its output is read as it is written. The supervisor forwards lines, log chunks and
//! checkpoints, in the order they were produced, through an outbox that keeps every write until
//! the coordinator has acknowledged it (retrying with backoff while it is unreachable). A 409
//! means this attempt lost the job: the program is stopped at once.
mod collect;
mod launch;
mod watch;

use super::coordinator::{Claim, Coordinator};
use super::outbox::{Outbox, Write};
pub use super::program::Program;
pub use super::settings::JobOptions;
use super::slots::Placement;
use collect::Reading;
use protocol::{JobShape, MetricsReport, Outcome};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
pub use watch::last_error;
use watch::Stops;

/// Exit code of a trainer stopped by SIGTERM after committing its epoch (see `train.rs`).
pub const EXIT_INTERRUPTED: i32 = crate::EXIT_INTERRUPTED;

/// Log a worker holds for an unreachable coordinator; the oldest is dropped beyond it (the
/// coordinator keeps only the newest output anyway).
const MAX_LOG_QUEUED: usize = 16 << 20;

/// What the supervisor reports to the worker's main loop as it goes.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub epoch: u32,
    /// The epochs the job runs; 0 when its program does not say (a command job without `epochs`).
    pub epochs: u32,
    pub accuracy: Option<f64>,
    /// How the supervision ended (set once its writes are delivered).
    pub done: Option<End>,
    /// While its gang forms: how many of how many workers have joined.
    pub forming: Option<protocol::GangState>,
}

/// How a job's supervision ended: what the worker's log says of it, and what its circuit breaker
/// counts.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// Reported to the coordinator with this outcome (and the error of a failure).
    Reported(Outcome, Option<String>),
    /// Given back to run later or elsewhere (a shutdown, a stop while its gang formed).
    Released(String),
    /// Given back because this worker cannot run it (its data is missing, the trainer cannot
    /// start): no attempt spent, and the worker is told what to fix.
    WorkerFault(String),
    /// The coordinator took the job from this attempt (its lease ran out, its gang dissolved).
    Lost(String),
}

/// Giving a job back because this worker cannot run it: the release the coordinator records (its
/// attempt's error says why) and the end the worker counts.
fn worker_fault(why: String) -> (Write, End) {
    let reason = format!("this worker cannot run the job: {why}");
    (Write::Release(reason), End::WorkerFault(why))
}

/// Whose trouble it is when a job cannot start: the job's (it fails, as it would anywhere) or this
/// worker's (the job goes back, see [`End::WorkerFault`]).
#[derive(Debug)]
enum Fault {
    Job(String),
    Worker(String),
}

#[derive(Debug)]
pub struct Supervisor {
    claim: Claim,
    coord: Coordinator,
    opts: JobOptions,
    out: PathBuf,
    program: Result<Program, String>,
    outbox: Outbox,
    progress: Arc<Mutex<Progress>>,
    /// What has been read of the program's files and output.
    read: Reading,
    /// Why, and how far, the program is being stopped.
    stops: Stops,
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
        // One directory per attempt: a job handed back to this worker while its old attempt's
        // program is still being stopped (population-based training's exploit ends an attempt
        // from the coordinator's side) never shares files with it.
        let out = opts
            .work_dir
            .join(format!("job-{}-{}", claim.id, claim.attempt));
        Supervisor {
            program,
            claim,
            coord,
            opts,
            out,
            outbox: Outbox::new(MAX_LOG_QUEUED),
            progress,
            read: Reading::default(),
            stops: Stops::default(),
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

    /// The epochs the progress line counts to: a command job's only when its parameters name them.
    fn epochs(&self) -> u32 {
        let named = self.claim.params.get("epochs").is_some();
        match self.program() {
            Program::Command { .. } if !named => 0,
            _ => JobShape::of_value(&self.claim.params).epochs as u32,
        }
    }

    /// Runs the job to its end: the gang forms, the checkpoint is restored, the program runs
    /// under watch, and its end is reported. `stopping` asks it to checkpoint and give the job back.
    pub fn run(mut self, placement: Placement, stopping: Arc<AtomicBool>) {
        self.progress.lock().expect("not poisoned").epochs = self.epochs();
        if let Err(e) = self.program.clone() {
            return self.end_early(Fault::Job(e));
        }
        match self.wait_for_gang(&stopping) {
            launch::GangWait::Formed => {}
            launch::GangWait::GiveBack(reason) => {
                self.outbox.push(Write::Release(reason.clone()));
                return self.drain_until_done(&stopping, End::Released(reason));
            }
            launch::GangWait::Gone(why) => {
                tracing::info!(job = self.job(), %why, "the gang will not run here");
                self.progress.lock().expect("not poisoned").done =
                    Some(End::Lost(format!("its gang dissolved: {why}")));
                return;
            }
        }
        if let Err(fault) = self.restore_checkpoint(&stopping) {
            return self.end_early(fault);
        }
        // Rank 0 binds the port now.
        self.rendezvous_port = None;
        let mut child = match self.start(&placement) {
            Ok(c) => c,
            Err(fault) => return self.end_early(fault),
        };
        let code = match self.watch(&mut child, &stopping) {
            Ok(code) => code,
            Err(lease_lost) => return self.abandon(&mut child, &lease_lost),
        };
        // Whatever the program wrote last goes out before the job ends.
        self.read.output.wait_closed(Duration::from_secs(5));
        self.collect();
        let (write, end) = self.outcome(code, stopping.load(Ordering::SeqCst));
        self.outbox.push(write);
        self.drain_until_done(&stopping, end);
    }

    /// Sends queued writes in order until one cannot be (see [`Outbox::flush`]). Err only when
    /// the lease is lost.
    fn flush(&mut self) -> Result<(), String> {
        let (lease, attempt) = (self.claim.lease(), self.claim.attempt);
        let checkpoint = match &self.program {
            Ok(p) => p.checkpoint_file(&self.out),
            Err(_) => self.out.clone(), // never uploaded: a job that did not start has none
        };
        let (coord, pruned) = (&self.coord, &mut self.stops.pruned);
        let program = self.program.as_ref().ok();
        self.outbox.flush(Instant::now(), |w| match w {
            Write::Metrics(m) => {
                let m = MetricsReport {
                    attempt,
                    ..m.clone()
                };
                *pruned |= coord.metrics(lease, &m)?.stop;
                Ok(())
            }
            Write::Upload => coord.upload_checkpoint(lease, &checkpoint, |f| {
                program.and_then(|p| p.checkpoint_epoch(f))
            }),
            Write::Log { offset, gap, data } => coord.append_log(lease, *offset, *gap, data),
            Write::Finish {
                status,
                summary,
                error,
            } => coord.finish(lease, *status, summary.as_ref(), error.as_deref()),
            Write::Release(reason) => coord.release(lease, reason),
        })
    }

    /// Delivers what is queued (for at most 30 s more once the worker is stopping), then says how
    /// the job ended.
    fn drain_until_done(mut self, stopping: &AtomicBool, end: End) {
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
        self.progress.lock().expect("not poisoned").done = Some(end);
    }

    /// A job that could not start: the job's fault fails it (as it would on any worker); this
    /// worker's gives it back, with what to fix, and spends no attempt (the coordinator's free
    /// releases; the worker's circuit breaker stops it claiming after a few).
    fn end_early(mut self, fault: Fault) {
        // Said once, when the worker reaps the job (its `End` carries the reason).
        let (write, end) = match fault {
            Fault::Job(error) => {
                let write = Write::Finish {
                    status: Outcome::Failed,
                    summary: None,
                    error: Some(error.clone()),
                };
                (write, End::Reported(Outcome::Failed, Some(error)))
            }
            Fault::Worker(why) => worker_fault(why),
        };
        self.outbox.push(write);
        self.drain_until_done(&AtomicBool::new(false), end);
    }

    fn abandon(self, child: &mut std::process::Child, why: &str) {
        tracing::warn!(job = self.job(), %why, "lease lost: stopping the program at once");
        if self.program().is_command() {
            // SAFETY: kill(2) on our child's own process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        }
        let _ = child.kill();
        let _ = child.wait();
        self.progress.lock().expect("not poisoned").done = Some(End::Lost(why.to_string()));
    }
}
