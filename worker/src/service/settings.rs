//! What a worker gives every job it runs (`JobOptions`: its roots, where data comes from, its
//! timings), and our trainer's command line built from a job's parameters under those roots.
//! Both the supervisor (`job/`) and the programs (`program.rs`) read them; neither owns them.
use super::slots::Placement;
use protocol::GangPart;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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
    pub restore: RestoreLimits,
}

/// What a restored archive may unpack to (`worker run --restore-max-mib`, `--restore-max-entries`):
/// the archive comes from the coordinator, where any holder of a job's lease may have put it.
#[derive(Debug, Clone, Copy)]
pub struct RestoreLimits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Default for RestoreLimits {
    fn default() -> Self {
        RestoreLimits {
            max_bytes: 4 << 30,
            max_entries: 100_000,
        }
    }
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
pub(crate) fn relative_name<'a>(key: &str, name: &'a str) -> anyhow::Result<&'a Path> {
    protocol::check_relative_path(name)
        .map_err(|why| anyhow::anyhow!("{key} {name:?}: {}", why.message()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::slots::DeviceKind;
    use std::time::Duration;

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
            restore: RestoreLimits::default(),
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
