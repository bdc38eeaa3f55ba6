//! Weights in the study's PyTorch names, and the resume state.
//!
//! `checkpoint.safetensors` holds exactly the seed's `state_dict` (names, shapes, dtypes; BN running
//! statistics and `num_batches_tracked` included), so the seed's own code loads it with `strict=True`.
//! `resume.safetensors` holds everything an exact resume needs in one file (weights, momentum buffers
//! and a JSON blob with the epoch, step count and metric history), so one rename commits an epoch.
use crate::metrics::EpochMetrics;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

pub const WEIGHTS_FILE: &str = "checkpoint.safetensors";
pub const RESUME_FILE: &str = "resume.safetensors";

/// The variables of a `VarStore`, sorted by name so every listing (and the optimiser) agrees.
#[derive(Debug)]
pub struct Params {
    pub all: Vec<(String, Tensor)>,
    /// Indices into `all` of the trainable ones.
    pub trainable: Vec<usize>,
}

impl Params {
    pub fn of(vs: &nn::VarStore) -> Self {
        let mut all: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let trainable = (0..all.len())
            .filter(|&i| all[i].1.requires_grad())
            .collect();
        Params { all, trainable }
    }

    pub fn trainable_tensors(&self) -> Vec<Tensor> {
        self.trainable
            .iter()
            .map(|&i| self.all[i].1.shallow_clone())
            .collect()
    }

    pub fn trainable_names(&self) -> Vec<&str> {
        self.trainable
            .iter()
            .map(|&i| self.all[i].0.as_str())
            .collect()
    }
}

fn cpu(t: &Tensor) -> Tensor {
    t.detach().to_device(Device::Cpu).contiguous()
}

/// A host copy the model's later steps cannot change (on the CPU `cpu` may alias the tensor).
fn owned(t: &Tensor) -> Tensor {
    let c = cpu(t);
    if t.device() == Device::Cpu {
        c.copy()
    } else {
        c
    }
}

/// Writes `tensors` to `path` through a temporary file and a rename, so readers never see half a file.
pub fn write_atomic(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let tmp = tmp_path(path);
    Tensor::write_safetensors(tensors, &tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename onto {}", path.display()))?;
    Ok(())
}

pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The study-named state dict: our variables plus `num_batches_tracked` for every BatchNorm.
/// Every BN layer runs once per training step, so each one's count is the number of steps taken.
pub fn study_state_dict(params: &Params, steps: i64) -> Vec<(String, Tensor)> {
    study_tensors(params, steps, cpu)
}

fn study_tensors(
    params: &Params,
    steps: i64,
    take: fn(&Tensor) -> Tensor,
) -> Vec<(String, Tensor)> {
    let mut out: BTreeMap<String, Tensor> = params
        .all
        .iter()
        .map(|(n, t)| (n.clone(), take(t)))
        .collect();
    let bns: Vec<String> = out
        .keys()
        .filter_map(|n| {
            n.strip_suffix(".running_mean")
                .map(|p| format!("{p}.num_batches_tracked"))
        })
        .collect();
    for name in bns {
        out.insert(
            name,
            Tensor::scalar_tensor(steps as f64, (Kind::Int64, Device::Cpu)),
        );
    }
    out.into_iter().collect()
}

pub fn save_weights(params: &Params, steps: i64, path: &Path) -> Result<()> {
    write_atomic(&study_state_dict(params, steps), path)
}

/// Loads a study-named checkpoint into the model, strictly: every name present with its exact shape
/// and dtype, nothing unexpected. Returns the `num_batches_tracked` it carried (0 if none).
pub fn load_weights(params: &Params, path: &Path) -> Result<i64> {
    let file = Tensor::read_safetensors(path)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let ours: BTreeMap<&str, &Tensor> = params.all.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut seen = HashSet::new();
    let mut steps = 0;
    for (name, t) in &file {
        if let Some(prefix) = name.strip_suffix(".num_batches_tracked") {
            if !ours.contains_key(format!("{prefix}.running_mean").as_str()) {
                bail!("{}: unexpected tensor {name}", path.display());
            }
            if t.kind() != Kind::Int64 || t.numel() != 1 {
                bail!("{}: {name} must be an int64 scalar", path.display());
            }
            steps = steps.max(t.int64_value(&[]));
            continue;
        }
        let Some(dst) = ours.get(name.as_str()) else {
            bail!(
                "{}: unexpected tensor {name} (not part of this model configuration)",
                path.display()
            );
        };
        if t.size() != dst.size() || t.kind() != dst.kind() {
            bail!(
                "{}: {name} is {:?} {:?}, the model expects {:?} {:?} (another --model-widths/--model-depth?)",
                path.display(),
                t.size(),
                t.kind(),
                dst.size(),
                dst.kind()
            );
        }
        tch::no_grad(|| dst.shallow_clone().copy_(t));
        seen.insert(name.as_str());
    }
    if let Some(missing) = ours.keys().find(|n| !seen.contains(*n)) {
        bail!("{}: missing tensor {missing}", path.display());
    }
    Ok(steps)
}

/// What a resumed run needs besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResumeMeta {
    /// Last completed epoch (1-based).
    pub epoch: u32,
    /// Optimiser steps taken so far (also BN's `num_batches_tracked`).
    pub steps: i64,
    /// Every evaluated epoch so far.
    pub history: Vec<EpochMetrics>,
    /// The training configuration, as JSON: a resume with another configuration is refused.
    pub config: serde_json::Value,
    /// Data order and augmentation derive from (seed, epoch) alone, so this names the scheme
    /// instead of storing generator state.
    pub rng: String,
}

/// The resume state's tensors, copied to the host: every variable, every momentum buffer, the
/// metadata as JSON bytes.
fn resume_tensors(
    params: &Params,
    momentum: &[Option<Tensor>],
    meta: &ResumeMeta,
) -> Result<Vec<(String, Tensor)>> {
    let mut tensors: Vec<(String, Tensor)> = params
        .all
        .iter()
        .map(|(n, t)| (format!("model.{n}"), owned(t)))
        .collect();
    for (name, buf) in params.trainable_names().into_iter().zip(momentum) {
        if let Some(buf) = buf {
            tensors.push((format!("momentum.{name}"), owned(buf)));
        }
    }
    let json = serde_json::to_vec(meta)?;
    tensors.push(("meta".into(), Tensor::from_slice(&json)));
    Ok(tensors)
}

/// An epoch's checkpoint copied off the model, to be written while the next epoch trains: the
/// study-named weights, then the resume state (the commit point), each written whole by rename.
#[derive(Debug)]
pub struct Snapshot {
    weights: Vec<(String, Tensor)>,
    resume: Vec<(String, Tensor)>,
}

impl Snapshot {
    pub fn take(params: &Params, momentum: &[Option<Tensor>], meta: &ResumeMeta) -> Result<Self> {
        Ok(Snapshot {
            weights: study_tensors(params, meta.steps, owned),
            resume: resume_tensors(params, momentum, meta)?,
        })
    }

    pub fn write(&self, weights: &Path, resume: &Path) -> Result<()> {
        write_atomic(&self.weights, weights)?;
        write_atomic(&self.resume, resume)
    }
}

/// The metadata of a resume file alone, read from the safetensors layout (an 8-byte little-endian
/// header length, a JSON header giving each entry's byte range, then the data) without loading
/// the ~125 MB of tensors: the worker only needs to know which epoch it restores.
pub fn read_resume_meta(path: &Path) -> Result<ResumeMeta> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    read_resume_meta_from(&mut f).with_context(|| path.display().to_string())
}

/// [`read_resume_meta`] from an open file, read from its start.
pub fn read_resume_meta_from(mut f: impl std::io::Read + std::io::Seek) -> Result<ResumeMeta> {
    use std::io::SeekFrom;
    f.seek(SeekFrom::Start(0))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    anyhow::ensure!(len <= 100 << 20, "implausible header");
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).context("bad safetensors header")?;
    let range = header
        .pointer("/meta/data_offsets")
        .and_then(serde_json::Value::as_array)
        .and_then(|r| Some((r.first()?.as_u64()?, r.get(1)?.as_u64()?)))
        .context("no meta entry")?;
    anyhow::ensure!(
        range.0 <= range.1 && range.1 - range.0 <= 100 << 20,
        "bad meta range"
    );
    f.seek(SeekFrom::Start(8 + len + range.0))?;
    let mut bytes = vec![0u8; (range.1 - range.0) as usize];
    f.read_exact(&mut bytes)?;
    serde_json::from_slice(&bytes).context("bad meta")
}

/// Restores weights and momentum; returns the metadata.
pub fn load_resume(
    params: &Params,
    momentum: &mut [Option<Tensor>],
    path: &Path,
) -> Result<ResumeMeta> {
    let file = Tensor::read_safetensors(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut by_name: BTreeMap<String, Tensor> = file.into_iter().collect();
    let meta_t = by_name
        .remove("meta")
        .with_context(|| format!("{}: no meta entry", path.display()))?;
    let bytes: Vec<u8> = Vec::<u8>::try_from(&meta_t)?;
    let meta: ResumeMeta =
        serde_json::from_slice(&bytes).with_context(|| format!("{}: bad meta", path.display()))?;
    for (name, t) in &params.all {
        let src = by_name
            .get(&format!("model.{name}"))
            .with_context(|| format!("{}: missing {name}", path.display()))?;
        tch::no_grad(|| t.shallow_clone().copy_(src));
    }
    for ((name, t), slot) in params
        .trainable_names()
        .into_iter()
        .zip(params.trainable_tensors())
        .zip(momentum)
    {
        *slot = by_name.get(&format!("momentum.{name}")).map(|b| {
            // Same device and memory format as the parameter.
            let dst = t.detach().zeros_like();
            tch::no_grad(|| dst.shallow_clone().copy_(b));
            dst
        });
    }
    Ok(meta)
}
