//! The launch of a claimed job: its gang forms, the coordinator's checkpoint is restored, and the
//! program starts.
use super::{Fault, Supervisor};
use crate::service::coordinator::CallError;
use crate::service::output::Output;
use crate::service::program::{self, Program};
use crate::service::slots::Placement;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How waiting for a gang ended.
#[derive(Debug)]
pub(super) enum GangWait {
    /// Every node has joined (or the job is single-node): run.
    Formed,
    /// Give the job back (the whole gang's attempt), for this reason.
    GiveBack(String),
    /// The gang was dissolved or its attempt ended: nothing to send.
    Gone(String),
}

impl Supervisor {
    /// This job's directories of earlier attempts: nothing will read them again (a program still
    /// writing there is being stopped; its attempt's writes are refused).
    fn remove_earlier_attempts(&self) {
        let prefix = format!("job-{}-", self.claim.id);
        let Ok(entries) = std::fs::read_dir(&self.opts.work_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let earlier = name
                .strip_prefix(&prefix)
                .and_then(|a| a.parse::<i64>().ok())
                .is_some_and(|a| a < self.claim.attempt);
            if earlier {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// The coordinator's checkpoint is the truth: an empty output directory, then its checkpoint
    /// (if it has one), retried while the coordinator is unreachable.
    pub(super) fn restore_checkpoint(&mut self, stopping: &AtomicBool) -> Result<(), Fault> {
        let (id, attempt) = (self.claim.id, self.claim.attempt);
        self.remove_earlier_attempts();
        let _ = std::fs::remove_dir_all(&self.out);
        // The work directory is this worker's: a failure there is its own.
        std::fs::create_dir_all(&self.out).map_err(|e| {
            Fault::Worker(format!(
                "cannot create {} (--work-dir): {e}",
                self.out.display()
            ))
        })?;
        if self.claim.is_gang_member() {
            // Node 0's rank 0 reads the checkpoint and hands the state to every rank.
            return Ok(());
        }
        let path = self.program().checkpoint_file(&self.out);
        loop {
            match self.coord.download_checkpoint(self.claim.lease(), &path) {
                Ok(false) => return Ok(()),
                Ok(true) => {
                    self.read.restored_epoch = match self.program() {
                        // Unreadable: the trainer will say why; nothing is skipped then.
                        Program::Trainer => crate::checkpoint::read_resume_meta(&path)
                            .map(|m| i64::from(m.epoch))
                            .unwrap_or(0),
                        Program::Command { .. } => {
                            program::unpack_checkpoint(&self.out, &path, self.opts.restore)
                                .map_err(|e| {
                                    Fault::Job(format!("cannot unpack the job's checkpoint: {e}"))
                                })?
                        }
                    };
                    tracing::info!(
                        job = id,
                        attempt,
                        epoch = self.read.restored_epoch,
                        "resuming from the coordinator's checkpoint"
                    );
                    return Ok(());
                }
                Err(CallError::Unavailable(e)) if !stopping.load(Ordering::SeqCst) => {
                    tracing::warn!(job = id, error = %e, "coordinator unavailable; retrying the checkpoint download");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(Fault::Job(format!("checkpoint download failed: {e}"))),
            }
        }
    }

    /// A gang's member waits until every node has joined, heartbeating its own lease (at least
    /// every second, so the gang starts soon after its last member joins).
    pub(super) fn wait_for_gang(&mut self, stopping: &AtomicBool) -> GangWait {
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

    /// Starts the program. Its command line failing is the job's fault (its parameters); our
    /// trainer failing to spawn is this worker's (its own executable), a command's the job's.
    pub(super) fn start(&mut self, placement: &Placement) -> Result<Child, Fault> {
        let what = self.program().name();
        let mut cmd = self
            .program()
            .command(&self.opts, &self.claim, placement, &self.out)
            .map_err(|e| Fault::Job(format!("cannot start the {what}: {e}")))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                let exe = cmd.get_program().to_string_lossy();
                let why = format!("cannot start the {what} ({exe}): {e}");
                match self.program() {
                    Program::Trainer => Fault::Worker(why),
                    Program::Command { .. } => Fault::Job(why),
                }
            })?;
        self.read.output = Output::capture(&mut child, self.job());
        Ok(child)
    }
}
