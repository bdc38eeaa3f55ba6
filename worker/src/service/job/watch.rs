//! The watch over a running program: heartbeats inside the lease, stops passed on (cancel, early
//! stop, divergence, shutdown), and how the attempt ended, from its exit code.
use super::{End, Supervisor, EXIT_INTERRUPTED};
use crate::service::coordinator::CallError;
use crate::service::outbox::Write;
use crate::service::program::Program;
use crate::train::SUMMARY_FILE;
use protocol::Outcome;
use serde_json::Value;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

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
pub(super) struct Halt {
    since: Instant,
    termed: bool,
    killed: bool,
}

/// What has asked the program to stop, and how far its stop has gone.
#[derive(Debug, Default)]
pub(super) struct Stops {
    /// The sweep's early-stopping rule stopped the job (a metrics reply or a heartbeat said so).
    pub pruned: bool,
    pub cancelled: bool,
    /// A metrics line had a non-finite loss.
    pub diverged: bool,
    pub halt: Option<Halt>,
}

impl Supervisor {
    /// Until the program exits: forwards its epochs, output and checkpoints, heartbeats inside
    /// the lease, and passes stops on (see [`Self::stop_program`]).
    /// Ok(exit code); Err(why) when this attempt lost the job.
    pub(super) fn watch(
        &mut self,
        child: &mut Child,
        stopping: &AtomicBool,
    ) -> Result<i32, String> {
        let id = self.claim.id;
        let mut last_beat = Instant::now();
        loop {
            self.collect();
            self.stop_program(child, stopping);
            if last_beat.elapsed() >= self.heartbeat_every() {
                last_beat = Instant::now();
                match self.coord.heartbeat(self.claim.lease()) {
                    Ok(reply) => {
                        self.stops.cancelled |= reply.cancel;
                        self.stops.pruned |= reply.stop;
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
            (self.stops.cancelled, StopReason::Cancelled),
            (self.stops.diverged, StopReason::Diverged),
            (self.stops.pruned, StopReason::Pruned),
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
        if self.stops.halt.is_none() {
            tracing::info!(job = self.job(), ?reason, "stopping the job's program");
            if is_command {
                let stop_file = Program::stop_file(&self.out);
                let _ = std::fs::write(stop_file, format!("{reason:?}\n").to_lowercase());
            }
        }
        let halt = self.stops.halt.get_or_insert(Halt {
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

    /// The program has reported the job's last epoch (a command job that names its epochs).
    fn last_epoch_in(&self) -> bool {
        let p = self.progress.lock().expect("not poisoned");
        p.epochs > 0 && p.epoch >= p.epochs
    }

    /// How the attempt ends, from the program's exit code and what it reported: the write that
    /// says so, and what the worker's log and circuit breaker make of it.
    pub(super) fn outcome(&self, code: i32, stopping: bool) -> (Write, End) {
        let summary: Option<Value> = std::fs::read(self.out.join(SUMMARY_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let finish = |status, error: Option<String>| {
            let write = Write::Finish {
                status,
                summary: summary.clone(),
                error: error.clone(),
            };
            (write, End::Reported(status, error))
        };
        let release = |reason: &str| {
            (
                Write::Release(reason.to_string()),
                End::Released(reason.to_string()),
            )
        };
        let command = self.program().is_command();
        let diverged = self.stops.diverged || code == crate::EXIT_DIVERGED;
        match code {
            _ if self.stops.cancelled => {
                finish(Outcome::Cancelled, Some("cancelled by the user".into()))
            }
            _ if diverged => finish(Outcome::Diverged, Some("non-finite loss".into())),
            _ if self.stops.pruned => finish(Outcome::Pruned, None),
            // Told to stop by a shutdown, a command may exit 0 early: it resumes elsewhere. Unless
            // its last epoch is in: then it is done (a give-back would leave a job with nothing
            // left to run pending).
            _ if command && stopping && self.stops.halt.is_some() && !self.last_epoch_in() => {
                release("the worker shut down; the job resumes from its checkpoint")
            }
            0 => finish(Outcome::Completed, None),
            // A gang's ranks stop together, whichever got the signal: node 0 gives the job back
            // after its checkpoint, this member's part is merely over.
            EXIT_INTERRUPTED if !command && self.claim.is_gang_member() => {
                finish(Outcome::Completed, None)
            }
            EXIT_INTERRUPTED if !command => release("the worker shut down after a checkpoint"),
            // Stopped by a shutdown before it could commit: killed at the end of the grace, by a
            // SIGTERM that arrived while it started, or at once by a second SIGTERM (Slurm signals
            // every process of the job, and the worker signals its trainer too). Not the program's
            // failure: the job resumes elsewhere from its last checkpoint.
            _ if stopping && self.stops.halt.is_some() => {
                release("the worker shut down mid-epoch; the job resumes from its last checkpoint")
            }
            // Our trainer found no data on this machine and could not fetch it: the machine's
            // trouble, not the job's. It goes back, and the worker learns what to fix.
            crate::EXIT_NO_DATA if !command => {
                super::worker_fault(last_error(&self.read.output.tail()))
            }
            c => {
                let what = self.program().name();
                let tail = self.read.output.tail().join("\n");
                let error = match c {
                    c if c < 0 => format!("{what} was killed by signal {}:\n{tail}", -c),
                    c => format!("{what} exited with code {c}:\n{tail}"),
                };
                finish(Outcome::Failed, Some(error))
            }
        }
    }
}

/// The program's own account of its failure: from its last `error: ...` line to its end, on one
/// line (our trainer ends with one), else its last line.
pub fn last_error(tail: &[String]) -> String {
    let lines: Vec<&str> = tail
        .iter()
        .flat_map(|chunk| chunk.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.iter().rposition(|l| l.starts_with("error: ")) {
        Some(at) => lines[at..]
            .join(" ")
            .trim_start_matches("error: ")
            .to_string(),
        None => lines.last().map_or("no output".into(), |l| l.to_string()),
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
    #[test]
    fn the_reason_is_the_programs_last_error_line() {
        let tail = vec![
            "INFO downloading CIFAR-10\nerror: no CIFAR-10 in /d".to_string(),
            "".to_string(),
        ];
        assert_eq!(super::last_error(&tail), "no CIFAR-10 in /d");
        let wrapped = ["error: no data (\nDns failed): fix it".to_string()];
        assert_eq!(super::last_error(&wrapped), "no data ( Dns failed): fix it");
        assert_eq!(super::last_error(&["a\nb".to_string()]), "b");
        assert_eq!(super::last_error(&[]), "no output");
    }
}
