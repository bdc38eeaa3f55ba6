//! Where checkpoints live and what they may take: `<artifacts>/job-<id>/resume.safetensors` (the
//! path from the job id alone, never from a client), deleted when the job ends (nothing will resume
//! it) unless the coordinator keeps them, and counted against a global quota
//! (`serve --max-checkpoints-gib`) whose use Prometheus shows. The HTTP layer streams the bytes;
//! `lifecycle` deletes a checkpoint when its job ends.
use std::path::{Path, PathBuf};

use crate::state::AppState;

pub const FILE: &str = "resume.safetensors";

pub fn job_dir(artifacts: &Path, job: i64) -> PathBuf {
    artifacts.join(format!("job-{job}"))
}

/// The bytes of every checkpoint stored under `artifacts` (read once at start).
pub fn stored_bytes(artifacts: &Path) -> u64 {
    let Ok(dirs) = std::fs::read_dir(artifacts) else {
        return 0;
    };
    dirs.flatten()
        .filter_map(|d| std::fs::metadata(d.path().join(FILE)).ok())
        .map(|m| m.len())
        .sum()
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
    let size = size_of(state, job).await;
    let dir = job_dir(&state.artifacts, job);
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {
            replaced(state, size, 0);
            tracing::debug!(job, "checkpoint deleted");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(job, error = %e, "cannot delete the checkpoint"),
    }
}
