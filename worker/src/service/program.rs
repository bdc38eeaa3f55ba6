//! What a claimed job runs: our trainer (`worker train` with the job's settings), or a command job
//! (any program under the environment contract of [`protocol::command::env`]). The supervisor
//! treats both alike; this module holds where they differ: how each starts, how its metric lines
//! read, what its checkpoint is, and how it is asked to stop.
use super::coordinator::Claim;
use super::settings::{relative_name, train_command, JobOptions, RestoreLimits};
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

    /// The last epoch the opened checkpoint holds (the trainer's resume metadata, a command
    /// archive's epoch entry), read from this handle so a file replaced meanwhile cannot answer
    /// for it; the handle is put back at its start. None when it cannot be read.
    pub fn checkpoint_epoch(&self, f: &mut std::fs::File) -> Option<i64> {
        use std::io::{Seek, SeekFrom};
        let epoch = match self {
            Program::Trainer => crate::checkpoint::read_resume_meta_from(&mut *f)
                .ok()
                .map(|m| i64::from(m.epoch)),
            Program::Command { .. } => archive_epoch(&mut *f),
        };
        f.seek(SeekFrom::Start(0)).ok()?;
        epoch
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
            Program::Trainer => {
                train_command(opts, &claim.params, claim.gang.as_ref(), placement, out)?
            }
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
        Some(w) => root.join(relative_name("command.workdir", w)?),
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
    // torchrun's rendezvous: the gang's, or this machine alone.
    let (addr, port, nnodes, node_rank) = match &claim.gang {
        Some(g) => (g.master.addr.clone(), g.master.port, g.nnodes, g.node_rank),
        None => ("127.0.0.1".into(), crate::ddp::launch::free_port()?, 1, 0),
    };
    cmd.env(env::MASTER_ADDR, addr)
        .env(env::MASTER_PORT, port.to_string())
        .env(env::NNODES, nnodes.to_string())
        .env(env::NODE_RANK, node_rank.to_string());
    Ok(cmd)
}

/// The worker's variables every command job gets (Slurm's too: where the worker runs under Slurm,
/// its job, node and allocation).
fn passed_to_commands(name: &str) -> bool {
    matches!(
        name,
        "PATH" | "HOME" | "LANG" | "TMPDIR" | "OMP_NUM_THREADS"
    ) || ["LC_", "CUDA_", "NCCL_", "SLURM_", "SLURMD_"]
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
/// uploaded. None when the program has left nothing there. Only directories and regular files
/// go in, and no link is followed (the directory itself included): a link would upload whatever
/// it points to, a FIFO would block the read and a device never end.
pub fn pack_checkpoint(out: &Path, epoch: i64) -> std::io::Result<Option<PathBuf>> {
    let dir = out.join(CHECKPOINT_DIR);
    match std::fs::symlink_metadata(&dir) {
        Err(_) => return Ok(None),
        Ok(m) if !m.is_dir() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is not a directory (a link?): not archived",
                    dir.display()
                ),
            ))
        }
        Ok(_) => {}
    }
    if std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none()) {
        return Ok(None);
    }
    let archive = out.join(ARCHIVE);
    let tmp = crate::checkpoint::tmp_path(&archive);
    let mut tar = tar::Builder::new(std::fs::File::create(&tmp)?);
    let stamp = epoch.to_string();
    tar.append_data(
        &mut entry_header(tar::EntryType::Regular, stamp.len() as u64, 0o644),
        EPOCH_ENTRY,
        stamp.as_bytes(),
    )?;
    append_tree(&mut tar, &dir)?;
    tar.into_inner()?.sync_all()?;
    std::fs::rename(&tmp, &archive)?;
    Ok(Some(archive))
}

fn entry_header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h
}

/// Appends `dir` as `checkpoint/...`: its directories and regular files, in name order; anything
/// else (links, FIFOs, sockets, devices) is left out.
fn append_tree(tar: &mut tar::Builder<std::fs::File>, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut todo = vec![(dir.to_path_buf(), PathBuf::from(CHECKPOINT_DIR))];
    while let Some((path, name)) = todo.pop() {
        tar.append_data(
            &mut entry_header(tar::EntryType::Directory, 0, 0o755),
            &name,
            std::io::empty(),
        )?;
        let mut children: Vec<_> = std::fs::read_dir(&path)?.collect::<Result<_, _>>()?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let (path, name) = (child.path(), name.join(child.file_name()));
            let kind = child.file_type()?; // the entry itself, never a link's target
            if kind.is_dir() {
                todo.push((path, name));
            } else if kind.is_file() {
                // Replaced meanwhile by a link or a FIFO, it is not read.
                let Some((file, meta)) = open_regular(&path)? else {
                    continue;
                };
                let mode = meta.permissions().mode() & 0o777;
                let mut h = entry_header(tar::EntryType::Regular, meta.len(), mode);
                h.set_mtime(meta.mtime().max(0) as u64);
                tar.append_data(&mut h, &name, std::io::Read::take(file, meta.len()))?;
            } else {
                tracing::warn!(path = %path.display(), "not a file or directory: left out of the checkpoint archive");
            }
        }
    }
    Ok(())
}

/// The epoch entry of a packed checkpoint (written first, so only the archive's head is read).
fn archive_epoch(f: &mut std::fs::File) -> Option<i64> {
    use std::io::Read;
    let mut tar = tar::Archive::new(f);
    let mut entry = tar.entries().ok()?.next()?.ok()?;
    if entry.path().ok()?.as_os_str() != EPOCH_ENTRY || entry.size() > 64 {
        return None;
    }
    let mut text = String::new();
    entry.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Puts a downloaded archive back as the checkpoint directory; the epoch it was taken after.
/// Only directories and regular files are restored, within `limits`; any other entry (a link, a
/// device, a FIFO, a sparse file) refuses the whole archive, naming it.
pub fn unpack_checkpoint(
    out: &Path,
    archive: &Path,
    limits: RestoreLimits,
) -> std::io::Result<i64> {
    let staging = out.join(".restore");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let refused = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let (mut entries, mut bytes) = (0u64, 0u64);
    let mut tar = tar::Archive::new(std::fs::File::open(archive)?);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.display().to_string();
        // The cheapest signals first: the count, the kind, the size the header declares.
        entries += 1;
        if entries > limits.max_entries {
            return Err(refused(format!(
                "more than {} entries (worker run --restore-max-entries)",
                limits.max_entries
            )));
        }
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            other => {
                return Err(refused(format!(
                    "`{name}` is {}: only regular files and directories are restored",
                    kind_name(other)
                )))
            }
        }
        bytes = bytes.saturating_add(entry.size());
        if bytes > limits.max_bytes {
            return Err(refused(format!(
                "more than {} MiB unpacked (worker run --restore-max-mib)",
                limits.max_bytes >> 20
            )));
        }
        // unpack_in refuses entries that would land outside `staging` (absolute paths, `..`);
        // with no link restored, none can lead outside either.
        entry.unpack_in(&staging)?;
    }
    let epoch = read_small(&staging.join(EPOCH_ENTRY))
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

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "a symbolic link",
        tar::EntryType::Link => "a hard link",
        tar::EntryType::Char | tar::EntryType::Block => "a device",
        tar::EntryType::Fifo => "a FIFO",
        tar::EntryType::GNUSparse => "a sparse file",
        _ => "neither a file nor a directory",
    }
}

/// `path` opened for reading when it is a regular file (Ok(None) for anything else): never through
/// a link, and never blocking on a FIFO (O_NOFOLLOW | O_NONBLOCK, then checked with fstat).
fn open_regular(path: &Path) -> std::io::Result<Option<(std::fs::File, std::fs::Metadata)>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    Ok(meta.is_file().then_some((file, meta)))
}

/// A small regular file's text (at most 64 bytes read), None for anything else.
fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let (file, _) = open_regular(path).ok()??;
    let mut s = String::new();
    file.take(64).read_to_string(&mut s).ok()?;
    Some(s)
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
        assert_eq!(
            unpack_checkpoint(b.path(), &archive, RestoreLimits::default()).unwrap(),
            7
        );
        assert_eq!(
            std::fs::read(b.path().join("checkpoint/sub/state.bin")).unwrap(),
            b"weights"
        );
    }

    /// An archive of `(name, kind, size)` entries (each file `size` zero bytes, a link to `/etc`).
    fn archive_of(dir: &Path, entries: &[(&str, tar::EntryType, u64)]) -> PathBuf {
        let path = dir.join("evil.tar");
        let mut tar = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for &(name, kind, size) in entries {
            let mut h = entry_header(kind, size, 0o644);
            if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                h.set_link_name("/etc").unwrap();
            }
            if kind == tar::EntryType::GNUSparse {
                // 100 GiB from one byte of data: the restore bomb.
                let gnu = h.as_gnu_mut().unwrap();
                gnu.set_real_size(100 << 30);
                gnu.sparse[0].set_offset((100 << 30) - size);
                gnu.sparse[0].set_length(size);
            }
            let data = vec![0u8; size as usize];
            tar.append_data(&mut h, name, &data[..]).unwrap();
        }
        tar.into_inner().unwrap();
        path
    }

    #[test]
    fn a_restore_refuses_links_devices_fifos_sparse_files_and_too_much() {
        use tar::EntryType::*;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let limits = RestoreLimits::default();
        for (entries, why) in [
            (
                vec![("checkpoint", Symlink, 0)],
                "`checkpoint` is a symbolic link",
            ),
            (
                vec![(".sweep-epoch", Symlink, 0)],
                "`.sweep-epoch` is a symbolic link",
            ),
            (vec![("checkpoint/passwd", Link, 0)], "is a hard link"),
            (vec![("checkpoint/pipe", Fifo, 0)], "is a FIFO"),
            (vec![("checkpoint/zero", Char, 0)], "is a device"),
            (vec![("checkpoint/big", GNUSparse, 1)], "is a sparse file"),
        ] {
            let archive = archive_of(dir.path(), &entries);
            let e = unpack_checkpoint(&out, &archive, limits).unwrap_err();
            assert!(e.to_string().contains(why), "{e} (wanted {why})");
            assert!(!out.join("checkpoint").exists(), "nothing restored");
        }
        let files: Vec<(String, tar::EntryType, u64)> = (0..5)
            .map(|i| (format!("checkpoint/{i}"), Regular, 100))
            .collect();
        let files: Vec<_> = files.iter().map(|(n, k, s)| (n.as_str(), *k, *s)).collect();
        let archive = archive_of(dir.path(), &files);
        let few = RestoreLimits {
            max_entries: 4,
            ..limits
        };
        let e = unpack_checkpoint(&out, &archive, few).unwrap_err();
        assert!(e.to_string().contains("more than 4 entries"), "{e}");
        let small = RestoreLimits {
            max_bytes: 450,
            ..limits
        };
        let e = unpack_checkpoint(&out, &archive, small).unwrap_err();
        assert!(e.to_string().contains("unpacked"), "{e}");
        let fits = RestoreLimits {
            max_bytes: 500,
            max_entries: 5,
        };
        assert_eq!(unpack_checkpoint(&out, &archive, fits).unwrap(), 0);
        assert_eq!(std::fs::read(out.join("checkpoint/4")).unwrap().len(), 100);
    }

    #[test]
    fn packing_follows_no_link_and_leaves_out_what_is_not_a_file() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("outside");
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("key"), b"host secret").unwrap();
        // The checkpoint directory itself a link: refused, nothing archived.
        let a = dir.path().join("a");
        std::fs::create_dir_all(&a).unwrap();
        symlink(&secret, a.join(CHECKPOINT_DIR)).unwrap();
        let e = pack_checkpoint(&a, 1).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(!a.join(ARCHIVE).exists());
        // Links and a FIFO inside: left out, the files kept.
        let b = dir.path().join("b");
        let ck = b.join(CHECKPOINT_DIR);
        std::fs::create_dir_all(&ck).unwrap();
        std::fs::write(ck.join("state"), b"weights").unwrap();
        symlink(secret.join("key"), ck.join("link")).unwrap();
        symlink(&secret, ck.join("dirlink")).unwrap();
        let fifo = std::ffi::CString::new(ck.join("pipe").to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let archive = pack_checkpoint(&b, 3).unwrap().unwrap();
        let names: Vec<String> = tar::Archive::new(std::fs::File::open(&archive).unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, [".sweep-epoch", "checkpoint", "checkpoint/state"]);
        let c = dir.path().join("c");
        assert_eq!(
            unpack_checkpoint(&c, &archive, RestoreLimits::default()).unwrap(),
            3
        );
        assert_eq!(
            std::fs::read(c.join("checkpoint/state")).unwrap(),
            b"weights"
        );
    }
}
