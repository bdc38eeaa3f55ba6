//! The launch of a claimed job: its gang forms, the coordinator's checkpoint is restored, and the
//! program starts (our trainer's command line is built here).
use super::{Fault, Supervisor};
use crate::service::coordinator::CallError;
use crate::service::output::Output;
use crate::service::program::{self, Program};
use crate::service::slots::Placement;
use protocol::GangPart;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Builds `worker train` arguments from the job's params and where it was placed.
pub fn train_command(
    opts: &super::JobOptions,
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
pub(crate) fn relative_name<'a>(key: &str, name: &'a str) -> anyhow::Result<&'a Path> {
    protocol::check_relative_path(name)
        .map_err(|why| anyhow::anyhow!("{key} {name:?}: {}", why.message()))
}

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
    /// The coordinator's checkpoint is the truth: an empty output directory, then its checkpoint
    /// (if it has one), retried while the coordinator is unreachable.
    pub(super) fn restore_checkpoint(&mut self, stopping: &AtomicBool) -> Result<(), Fault> {
        let (id, attempt) = (self.claim.id, self.claim.attempt);
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
                let why = format!("cannot start the {what} ({}): {e}", self.opts.exe.display());
                match self.program() {
                    Program::Trainer => Fault::Worker(why),
                    Program::Command { .. } => Fault::Job(why),
                }
            })?;
        self.read.output = Output::capture(&mut child, self.job());
        Ok(child)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::job::JobOptions;
    use crate::service::slots::DeviceKind;

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
