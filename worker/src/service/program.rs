//! What a claimed job runs: our trainer (`worker train` with the job's settings), or a command job
//! (any program under the environment contract of [`protocol::command::env`]). The supervisor
//! treats both alike; this module holds where they differ: how each starts, how its metric lines
//! read, what its checkpoint is, and how it is asked to stop.
use super::coordinator::Claim;
use super::job::JobOptions;
use super::slots::{DeviceKind, Placement};
use crate::checkpoint::RESUME_FILE;
use protocol::command::env;
use protocol::{CommandSpec, MetricsReport};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Inside a command job's output directory: the program's checkpoint directory, the archive of it
/// that goes to the coordinator, and the stop file.
pub const CHECKPOINT_DIR: &str = "checkpoint";
const ARCHIVE: &str = "checkpoint.tar";
const STOP_FILE: &str = "STOP";
/// The archive's entry that says which epoch's line the checkpoint was taken after.
const EPOCH_ENTRY: &str = ".sweep-epoch";

#[derive(Debug, Clone)]
pub enum Program {
    Trainer,
    /// argv rendered with the job's parameters.
    Command {
        spec: CommandSpec,
        argv: Vec<String>,
    },
}

impl Program {
    pub fn of(claim: &Claim) -> Result<Self, String> {
        let Some(spec) = &claim.command else {
            return Ok(Program::Trainer);
        };
        let params = claim.params.as_object().cloned().unwrap_or_default();
        let argv = protocol::command::render(&spec.argv, &params)
            .map_err(|e| format!("command.argv[{}]: {e}", e.index()))?;
        Ok(Program::Command {
            spec: spec.clone(),
            argv,
        })
    }

    pub fn is_command(&self) -> bool {
        matches!(self, Program::Command { .. })
    }

    /// What it is called in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Program::Trainer => "trainer",
            Program::Command { .. } => "command",
        }
    }

    /// Ranks it needs, and the batch size it packs by (a command is never packed).
    pub fn shape(&self, params: &Value) -> (usize, i64) {
        match self {
            Program::Trainer => {
                let s = protocol::JobShape::of_value(params);
                (s.nproc_per_node.max(1) as usize, s.batch_size)
            }
            Program::Command { spec, .. } => (spec.ranks.max(1) as usize, i64::MAX),
        }
    }

    /// The file uploaded as the job's checkpoint.
    pub fn checkpoint_file(&self, out: &Path) -> PathBuf {
        match self {
            Program::Trainer => out.join(RESUME_FILE),
            Program::Command { .. } => out.join(ARCHIVE),
        }
    }

    pub fn stop_file(out: &Path) -> PathBuf {
        out.join(STOP_FILE)
    }

    /// The process to start, with its output piped.
    pub fn command(
        &self,
        opts: &JobOptions,
        claim: &Claim,
        placement: &Placement,
        out: &Path,
    ) -> anyhow::Result<Command> {
        let mut cmd = match self {
            Program::Trainer => super::job::train_command(opts, &claim.params, placement, out)?,
            Program::Command { spec, argv } => command_job(opts, claim, spec, argv, out)?,
        };
        // It must not outlive its worker: if the worker is killed, nobody would report its epochs
        // while it kept a device busy (another worker resumes it from the coordinator's
        // checkpoint). A command runs in a process group of its own, so a stop reaches what it
        // started too.
        let own_group = self.is_command();
        // SAFETY: prctl and setpgid in the child between fork and exec touch no Rust state.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if own_group {
                    libc::setpgid(0, 0);
                }
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
        } else if self.is_command() {
            // A CPU slot: the program must not find (and take) a GPU another slot owns.
            cmd.env("CUDA_VISIBLE_DEVICES", "");
        }
        // Keep libraries' own thread pools to the job's share as well.
        cmd.env("OMP_NUM_THREADS", placement.threads.to_string());
        Ok(cmd)
    }
}

/// A command job: its argv (no shell), run in `--command-root`/workdir with the contract's
/// environment.
fn command_job(
    opts: &JobOptions,
    claim: &Claim,
    spec: &CommandSpec,
    argv: &[String],
    out: &Path,
) -> anyhow::Result<Command> {
    let Some(root) = &opts.command_root else {
        anyhow::bail!("this worker does not run command jobs (worker run --allow-commands)");
    };
    let dir = match &spec.workdir {
        Some(w) => root.join(super::job::relative_name("command.workdir", w)?),
        None => root.clone(),
    };
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("command.argv is empty"))?;
    let checkpoint = out.join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&checkpoint)?;
    let mut cmd = Command::new(program);
    // The program gets the contract and an allowlist, never the worker's whole environment: the
    // worker's token would end in any log that prints it (#24).
    cmd.env_clear();
    for (name, value) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if passed_to_commands(&n) || opts.pass_env.iter().any(|p| *p == n) {
            cmd.env(&name, value);
        }
    }
    cmd.args(args)
        .current_dir(&dir)
        .env(env::JOB_ID, claim.id.to_string())
        .env(env::ATTEMPT, claim.attempt.to_string())
        .env(env::PARAMS, claim.params.to_string())
        .env(env::METRICS, out.join(crate::train::METRICS_FILE))
        .env(env::CHECKPOINT_DIR, &checkpoint)
        .env(env::STOP_FILE, Program::stop_file(out));
    Ok(cmd)
}

/// The worker's variables every command job gets.
fn passed_to_commands(name: &str) -> bool {
    matches!(
        name,
        "PATH" | "HOME" | "LANG" | "TMPDIR" | "OMP_NUM_THREADS"
    ) || ["LC_", "CUDA_", "NCCL_"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// One line of a metrics file as the protocol carries it (attempt left 0), and whether it says the
/// run diverged. Our trainer's lines are its `EpochMetrics`; a command's are any JSON object with
/// `epoch`, where Python's `NaN` and `Infinity` are accepted.
pub fn read_line(program: &Program, line: &str) -> Option<MetricsReport> {
    match program {
        Program::Trainer => {
            let m: crate::metrics::EpochMetrics = serde_json::from_str(line).ok()?;
            Some(super::coordinator::report(0, &m))
        }
        Program::Command { .. } => read_command_line(line).ok(),
    }
}

/// Stands for a non-finite number while the line is parsed (JSON has none).
const NON_FINITE: &str = "\u{0}non-finite";

pub fn read_command_line(line: &str) -> Result<MetricsReport, String> {
    let v: Value = serde_json::from_str(&non_finite_as_marker(line))
        .map_err(|e| format!("not a JSON object: {e}"))?;
    let Some(obj) = v.as_object() else {
        return Err("not a JSON object".into());
    };
    let epoch = obj
        .get("epoch")
        .and_then(Value::as_i64)
        .filter(|&e| e >= 1)
        .ok_or("no `epoch` (an integer from 1)")?;
    let mut m = MetricsReport {
        epoch,
        ..Default::default()
    };
    for (name, v) in obj.iter().filter(|(k, _)| *k != "epoch") {
        let value = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) if s == NON_FINITE => None,
            _ => continue, // strings and flags are not metrics
        };
        m.diverged |= value.is_none() && name.ends_with("loss");
        set_metric(&mut m, name, value);
    }
    Ok(m)
}

fn set_metric(m: &mut MetricsReport, name: &str, value: Option<f64>) {
    if let Some(slot) = m.named_mut(name) {
        *slot = value;
    } else if protocol::is_metric_name(name) && m.extra.len() < protocol::MAX_EXTRA_METRICS {
        m.extra.insert(name.to_string(), value);
    }
}

/// Rewrites the bare `NaN`, `Infinity` and `-Infinity` Python's json module writes (outside
/// strings) as a marker string, so the line parses and the value is known to be non-finite.
fn non_finite_as_marker(line: &str) -> String {
    let marker = serde_json::to_string(NON_FINITE).expect("a string");
    let (mut out, mut rest) = (String::with_capacity(line.len()), line);
    let (mut in_string, mut escaped) = (false, false);
    while let Some(c) = rest.chars().next() {
        if !in_string {
            if let Some(t) = ["-Infinity", "Infinity", "NaN"]
                .iter()
                .find(|t| rest.starts_with(**t))
            {
                out.push_str(&marker);
                rest = &rest[t.len()..];
                continue;
            }
        }
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Packs the command's checkpoint directory, with the epoch it follows, into the archive that is
/// uploaded. None when the program has left nothing there.
pub fn pack_checkpoint(out: &Path, epoch: i64) -> std::io::Result<Option<PathBuf>> {
    let dir = out.join(CHECKPOINT_DIR);
    if std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none()) {
        return Ok(None);
    }
    let archive = out.join(ARCHIVE);
    let tmp = crate::checkpoint::tmp_path(&archive);
    let mut tar = tar::Builder::new(std::fs::File::create(&tmp)?);
    tar.follow_symlinks(false);
    let stamp = epoch.to_string();
    let mut header = tar::Header::new_gnu();
    header.set_size(stamp.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, EPOCH_ENTRY, stamp.as_bytes())?;
    tar.append_dir_all(CHECKPOINT_DIR, &dir)?;
    tar.into_inner()?.sync_all()?;
    std::fs::rename(&tmp, &archive)?;
    Ok(Some(archive))
}

/// Puts a downloaded archive back as the checkpoint directory; the epoch it was taken after.
pub fn unpack_checkpoint(out: &Path, archive: &Path) -> std::io::Result<i64> {
    let staging = out.join(".restore");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    // unpack_in refuses entries that would land outside `staging` (absolute paths, `..`).
    let mut tar = tar::Archive::new(std::fs::File::open(archive)?);
    for entry in tar.entries()? {
        entry?.unpack_in(&staging)?;
    }
    let epoch = std::fs::read_to_string(staging.join(EPOCH_ENTRY))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let dir = out.join(CHECKPOINT_DIR);
    let _ = std::fs::remove_dir_all(&dir);
    if staging.join(CHECKPOINT_DIR).is_dir() {
        std::fs::rename(staging.join(CHECKPOINT_DIR), &dir)?;
    } else {
        std::fs::create_dir_all(&dir)?;
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_read_named_metrics_their_own_and_python_nan() {
        let m = read_command_line(
            r#"{"epoch": 2, "train_loss": 0.5, "accuracy": 0.8, "val_bleu": 31.5, "note": "NaN here", "ok": true}"#,
        )
        .unwrap();
        assert_eq!(
            (m.epoch, m.train_loss, m.accuracy),
            (2, Some(0.5), Some(0.8))
        );
        assert_eq!(m.extra.get("val_bleu"), Some(&Some(31.5)));
        assert!(!m.diverged && !m.extra.contains_key("note"));
        let m = read_command_line(r#"{"epoch": 3, "train_loss": NaN, "grad": -Infinity}"#).unwrap();
        assert!(m.diverged && m.train_loss.is_none());
        assert_eq!(m.extra.get("grad"), Some(&None));
        let m = read_command_line(r#"{"epoch": 3, "weird": Infinity}"#).unwrap();
        assert!(!m.diverged, "only a loss diverges");
        assert!(read_command_line(r#"{"loss": 1}"#).is_err());
        assert!(read_command_line(r#"{"epoch": 0}"#).is_err());
        assert!(read_command_line("not json").is_err());
    }

    #[test]
    fn a_checkpoint_directory_round_trips_with_its_epoch() {
        let a = tempfile::tempdir().unwrap();
        assert!(
            pack_checkpoint(a.path(), 1).unwrap().is_none(),
            "nothing to pack"
        );
        std::fs::create_dir_all(a.path().join("checkpoint/sub")).unwrap();
        std::fs::write(a.path().join("checkpoint/sub/state.bin"), b"weights").unwrap();
        let archive = pack_checkpoint(a.path(), 7).unwrap().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_eq!(unpack_checkpoint(b.path(), &archive).unwrap(), 7);
        assert_eq!(
            std::fs::read(b.path().join("checkpoint/sub/state.bin")).unwrap(),
            b"weights"
        );
    }
}
