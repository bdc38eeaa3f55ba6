//! Where checkpoints live and what they may take: `<artifacts>/job-<id>/resume.safetensors` (the
//! path from the job id alone, never from a client), deleted when the job ends (nothing will resume
//! it) unless the coordinator keeps them, and counted against a global quota
//! (`serve --max-checkpoints-gib`) whose use Prometheus shows. The HTTP layer streams the bytes;
//! `lifecycle` deletes a checkpoint when its job ends.
//!
//! Population-based training adds two things here. A **pin**: a member in the top at its
//! perturbation point keeps that epoch's checkpoint as `job-<id>/pinned-<epoch>` (a hard link to
//! the upload of that epoch, made when it arrives), deleted once no member can still copy it. A
//! **copy**: an exploit owes the member the donor's pin in its own slot (a lease secret never reads
//! another job's files); it is made after the exploit commits, and made again, before anything
//! reads the slot, while `pbt_members.copy_from` says it is owed (a crash mid-copy leaves the old
//! slot whole: the copy is written aside, synced and renamed in).
use std::path::{Path, PathBuf};

use crate::state::AppState;

pub const FILE: &str = "resume.safetensors";

pub fn job_dir(artifacts: &Path, job: i64) -> PathBuf {
    artifacts.join(format!("job-{job}"))
}

/// A pinned checkpoint's file name.
fn pin_file(epoch: i64) -> String {
    format!("{PIN_PREFIX}{epoch}")
}

const PIN_PREFIX: &str = "pinned-";

/// The bytes of every checkpoint (and pin) stored under `artifacts` (read once at start).
pub fn stored_bytes(artifacts: &Path) -> u64 {
    let Ok(dirs) = std::fs::read_dir(artifacts) else {
        return 0;
    };
    dirs.flatten().map(|d| dir_bytes(&d.path()).0).sum()
}

/// The bytes of a job directory's checkpoint and pins, and the pins' epochs.
fn dir_bytes(dir: &Path) -> (u64, Vec<i64>) {
    let (mut bytes, mut pins) = (0, vec![]);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pin: Option<i64> = name.strip_prefix(PIN_PREFIX).and_then(|e| e.parse().ok());
        if name == FILE || pin.is_some() {
            bytes += entry.metadata().map_or(0, |m| m.len());
        }
        pins.extend(pin);
    }
    (bytes, pins)
}

/// The size of job `job`'s stored checkpoint (0 when none).
pub async fn size_of(state: &AppState, job: i64) -> u64 {
    let path = job_dir(&state.artifacts, job).join(FILE);
    tokio::fs::metadata(path).await.map_or(0, |m| m.len())
}

/// Whether `adding` more bytes, replacing `replacing`, fit the global quota: Err says why not.
pub fn room_for(state: &AppState, adding: u64, replacing: u64) -> Result<(), String> {
    let Some(max) = state.max_checkpoints_total else {
        return Ok(());
    };
    let used = state.telemetry.checkpoint_bytes.get().max(0) as u64;
    match used.saturating_sub(replacing).saturating_add(adding) <= max {
        true => Ok(()),
        false => Err(format!(
            "the coordinator's checkpoint quota is full ({used} of {max} bytes stored; serve \
             --max-checkpoints-gib): the job goes on from its last stored checkpoint"
        )),
    }
}

/// A checkpoint of `new` bytes replaced one of `old` bytes: the quota's count follows.
pub fn replaced(state: &AppState, old: u64, new: u64) {
    let g = &state.telemetry.checkpoint_bytes;
    g.inc_by(new as i64);
    g.dec_by(old as i64);
}

/// Deletes the checkpoint of a job that has ended, unless the coordinator keeps them. Failure to
/// delete is logged, never an error for the worker that finished the job.
pub async fn forget(state: &AppState, job: i64) {
    if state.keep_checkpoints {
        return;
    }
    let dir = job_dir(&state.artifacts, job);
    let size = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || dir_bytes(&dir).0)
            .await
            .unwrap_or(0)
    };
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {
            replaced(state, size, 0);
            tracing::debug!(job, "checkpoint deleted");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(job, error = %e, "cannot delete the checkpoint"),
    }
}

/// `job`'s checkpoint of `epoch` was just stored: kept as its pin if PBT wants it (the member was
/// in the top at that point). A failure is logged: the member is then no donor at that point.
pub async fn pin_if_wanted(state: &AppState, job: i64, epoch: i64) {
    match state.store.pin_wanted(job, epoch).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => return tracing::warn!(job, epoch, error = %e, "cannot read whether to pin"),
    }
    let _files = state.pbt_files.lock().await;
    let dir = job_dir(&state.artifacts, job);
    let (from, to) = (dir.join(FILE), dir.join(pin_file(epoch)));
    let linked = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let _ = std::fs::remove_file(&to);
        std::fs::hard_link(&from, &to)?;
        std::fs::File::open(to.parent().expect("a job's directory"))?.sync_all()?;
        Ok(std::fs::metadata(&to)?.len())
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    match linked {
        Ok(size) => {
            replaced(state, 0, size);
            if let Err(e) = state.store.pin_arrived(job, epoch).await {
                tracing::warn!(job, epoch, error = %e, "cannot record the pin");
            }
        }
        Err(e) => tracing::warn!(job, epoch, error = %e, "cannot pin the checkpoint"),
    }
}

/// Makes the copy `job` is owed (an exploit's), if any: the donor's pin written beside the slot,
/// synced and renamed over it, then the debt cleared. Before the slot is read, after the exploit
/// commits, at start-up; failures are logged and leave the debt for the next try.
pub async fn settle_copy(state: &AppState, job: i64) {
    let _files = state.pbt_files.lock().await;
    let owed = match state.store.copy_owed(job).await {
        Ok(Some(owed)) => owed,
        Ok(None) => return,
        Err(e) => return tracing::warn!(job, error = %e, "cannot read the copy owed"),
    };
    let (donor, epoch) = owed;
    let from = job_dir(&state.artifacts, donor).join(pin_file(epoch));
    let dir = job_dir(&state.artifacts, job);
    let old = size_of(state, job).await;
    let copied = tokio::task::spawn_blocking(move || copy_into(&from, &dir))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
    match copied {
        Ok(size) => {
            replaced(state, old, size);
            if let Err(e) = state.store.copy_done(job, donor, epoch).await {
                tracing::warn!(job, error = %e, "cannot record the copy");
            }
        }
        Err(e) => {
            tracing::error!(job, donor, epoch, error = %e, "cannot copy the donor's pinned checkpoint")
        }
    }
}

/// `from` as `dir`'s checkpoint, whole or not at all: its bytes.
fn copy_into(from: &Path, dir: &Path) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{FILE}.copy.{:016x}.partial",
        rand::random::<u64>()
    ));
    let result = (|| {
        let size = std::fs::copy(from, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dir.join(FILE))?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(size)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Every copy owed from `donor` (one that is about to end and lose its files), or, with None, every
/// copy owed (at start-up).
pub async fn settle_copies_from(state: &AppState, donor: impl Into<Option<i64>>) {
    let donor = donor.into();
    let owed = match state.store.copies_owed(donor).await {
        Ok(owed) => owed,
        Err(e) => return tracing::warn!(error = %e, "cannot read the copies owed"),
    };
    for job in owed {
        settle_copy(state, job).await;
    }
}

/// Deletes `job`'s pins that nothing can copy any more (neither its current pin nor one owed).
pub async fn prune_pins(state: &AppState, job: i64) {
    let dir = job_dir(&state.artifacts, job);
    let _files = state.pbt_files.lock().await;
    let pins = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || dir_bytes(&dir).1)
            .await
            .unwrap_or_default()
    };
    if pins.is_empty() {
        return;
    }
    let keep = match state.store.pins_in_use(job).await {
        Ok(keep) => keep,
        Err(e) => return tracing::warn!(job, error = %e, "cannot read the pins in use"),
    };
    for epoch in pins.into_iter().filter(|e| !keep.contains(e)) {
        let path = dir.join(pin_file(epoch));
        let size = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
        if tokio::fs::remove_file(&path).await.is_ok() {
            replaced(state, size, 0);
        }
    }
}
