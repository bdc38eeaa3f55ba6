//! The run's files under `--out`: what a resume must match, atomic writes of the summary, metrics and
//! predictions, the command-job contract's metrics line, and rank 0's reading of what `--out` holds.
use super::*;

/// Configuration keys that do not change the numbers a run produces; a resume may differ in them.
pub(super) const RESUME_NEUTRAL: [&str; 8] = [
    "threads",
    "save_predictions",
    "data_dir",
    "data_url",
    "data_md5",
    "init_from",
    "dist_backend",
    "dist_timeout",
];

/// Optimiser settings a resume may change: population-based training continues a run from a
/// checkpoint with new values of these (docs/trainer.md, "Changing the optimiser's settings"). The run goes
/// on from the checkpoint's epoch with the new values; the lr schedule (warm-up, milestones x gamma)
/// applies to the new base lr as if it had been the base from the start: epoch e runs at
/// `new_lr x warm-up(e) x gamma^(milestones before e)`. A finished run is never continued.
pub(super) const RESUME_CHANGEABLE: [&str; 3] = protocol::train::CHANGEABLE_ON_RESUME;

/// Whether a resume state written under `saved` continues under `now` (both fingerprints): equal
/// but for [`RESUME_CHANGEABLE`]. Returns the settings that changed, as "lr 0.01 -> 0.012".
pub(super) fn continues(saved: &serde_json::Value, now: &serde_json::Value) -> Option<Vec<String>> {
    let strip = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            for k in RESUME_CHANGEABLE {
                m.remove(k);
            }
        }
        v
    };
    if strip(saved) != strip(now) {
        return None;
    }
    Some(
        RESUME_CHANGEABLE
            .iter()
            .filter(|k| saved.get(**k) != now.get(**k))
            .map(|k| {
                let shown = |v: Option<&serde_json::Value>| v.map_or("-".into(), |v| v.to_string());
                format!("{k} {} -> {}", shown(saved.get(*k)), shown(now.get(*k)))
            })
            .collect(),
    )
}

/// What must match for a resume: the configuration less the neutral keys, and the world size
/// (a different number of ranks is a different global batch).
pub(super) fn fingerprint(cfg: &TrainConfig, world: usize) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(cfg)?;
    if let Some(m) = v.as_object_mut() {
        for k in RESUME_NEUTRAL {
            m.remove(k);
        }
        m.insert("world_size".into(), world.into());
    }
    Ok(v)
}

/// Writes `bytes` to `path` through a temporary file and a rename: a reader (the supervisor tailing
/// `metrics.jsonl`, a resume) never sees half a file. Every whole-file write of a run goes here.
pub(super) fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = checkpoint::tmp_path(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename onto {}", path.display()))?;
    Ok(())
}

pub(super) fn write_json_atomic<T: Serialize>(value: &T, path: &Path) -> Result<()> {
    write_file_atomic(path, &serde_json::to_vec_pretty(value)?)
}

pub(super) fn write_metrics_file(history: &[EpochMetrics], path: &Path) -> Result<()> {
    let mut text = String::new();
    for m in history {
        text.push_str(&serde_json::to_string(m)?);
        text.push('\n');
    }
    write_file_atomic(path, text.as_bytes())
}

pub(super) fn append_metrics(m: &EpochMetrics, path: &Path) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{}", serde_json::to_string(m)?)?;
    f.flush()?;
    Ok(())
}

pub(super) const CONTRACT_METRICS: &str = protocol::command::env::METRICS;

/// `worker train` run as a command job (a sweep's `[command]`, e.g. beside another program):
/// each epoch's line also goes to `$SWEEP_METRICS`, after its checkpoint is committed, as the
/// environment contract asks (`--out` defaults to `$SWEEP_CHECKPOINT_DIR`).
pub(super) fn report_to_contract(m: Option<&EpochMetrics>) -> Result<()> {
    match (m, std::env::var_os(CONTRACT_METRICS)) {
        (Some(m), Some(path)) => append_metrics(m, Path::new(&path)),
        _ => Ok(()),
    }
}

pub(super) fn write_predictions(split: &Split, preds: &[i64], path: &Path) -> Result<()> {
    let labels: Vec<i64> = Vec::try_from(&split.labels)?;
    let mut text = String::from("index,label,prediction\n");
    for (i, (l, p)) in labels.iter().zip(preds).enumerate() {
        text.push_str(&format!("{i},{l},{p}\n"));
    }
    write_file_atomic(path, text.as_bytes())
}

/// What rank 0 found in `out` and every rank agreed on: how this run starts.
#[derive(Debug)]
pub(super) enum Start {
    /// Nothing there: a fresh run.
    Fresh,
    /// A resume state: its parameters, momentum and metadata are loaded (on rank 0).
    Resumed,
    /// The run has finished (its summary, when this rank read it).
    Finished(Option<Box<Summary>>),
}

impl Start {
    /// The code rank 0 broadcasts (3: it refused `out`).
    pub(super) const REFUSED: i64 = 3;

    pub(super) fn code(&self) -> i64 {
        match self {
            Start::Fresh => 0,
            Start::Resumed => 1,
            Start::Finished(_) => 2,
        }
    }
}

/// The files of a run under `--out`.
pub(super) struct RunFiles {
    pub(super) out: std::path::PathBuf,
    pub(super) summary: std::path::PathBuf,
    pub(super) metrics: std::path::PathBuf,
    pub(super) resume: std::path::PathBuf,
}

impl RunFiles {
    /// Only rank 0 writes files, so only it creates the folder.
    pub(super) fn create(out: &Path, main: bool) -> Result<Self> {
        if main {
            std::fs::create_dir_all(out)
                .with_context(|| format!("cannot create --out {}", out.display()))?;
        }
        Ok(RunFiles {
            out: out.to_path_buf(),
            summary: out.join(SUMMARY_FILE),
            metrics: out.join(METRICS_FILE),
            resume: out.join(RESUME_FILE),
        })
    }
}

/// Rank 0's reading of `out`: a fresh run, a resume (state loaded), a finished run, or why it
/// refuses the folder.
pub(super) fn inspect_out(
    files: &RunFiles,
    model: &mut Model,
    meta: &mut ResumeMeta,
) -> Result<Start> {
    let fp = meta.config.clone();
    let out = files.out.display();
    if files.summary.exists() && !files.resume.exists() {
        // A diverged run keeps no resume state: starting it again would only diverge again.
        let done: Summary = serde_json::from_slice(&std::fs::read(&files.summary)?)?;
        if fingerprint(&done.config, done.world_size as usize)? == fp {
            tracing::info!(status = ?done.status, "run already finished in {out}");
            return Ok(Start::Finished(Some(Box::new(done))));
        }
        bail!("{out} holds a finished run with another configuration; use another --out");
    }
    if files.resume.exists() {
        *meta = checkpoint::load_resume(&model.params, &mut model.sgd.buffers, &files.resume)?;
        let Some(changed) = continues(&meta.config, &fp) else {
            bail!("{out} holds a run with another configuration; use another --out");
        };
        if changed.is_empty() {
            tracing::info!(epoch = meta.epoch, "resuming after epoch {}", meta.epoch);
        } else {
            tracing::info!(
                epoch = meta.epoch,
                "resuming after epoch {} with {}",
                meta.epoch,
                changed.join(", ")
            );
        }
        // Later commits record the settings the run now goes on with.
        meta.config = fp;
        return Ok(Start::Resumed);
    }
    Ok(Start::Fresh)
}
