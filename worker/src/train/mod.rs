//! The epoch loop of one run. It reports each evaluated epoch through a callback and writes its files
//! under `out`; it knows nothing of HTTP or of the coordinator.
mod epoch;
mod eval;
mod files;
mod ops;
mod ranks;

use self::{epoch::*, files::*, ranks::*};
pub use epoch::CHECK_EVERY;
pub(crate) use eval::autocast;
pub use eval::{evaluate, Evaluation};
pub use ops::count_step_ops;

use crate::augment::{Augmenter, DevicePlan, EpochPlan};
use crate::checkpoint::{self, Params, ResumeMeta, RESUME_FILE, WEIGHTS_FILE};
use crate::config::TrainConfig;
use crate::data::{self, Split};
use crate::ddp::launch::RankEnv;
use crate::ddp::{Backend, ProcessGroup};
use crate::metrics::{Confusion, EpochMetrics};
use crate::model::{self, SeedNet};
use crate::optim::{LrSchedule, Sgd};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{nn, Device, Kind, Reduction, Tensor};

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";
pub const PREDICTIONS_FILE: &str = "predictions.csv";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Completed,
    Diverged,
    /// Stopped by SIGTERM/SIGINT after committing an epoch; running again resumes.
    Interrupted,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub status: Status,
    pub epochs_completed: u32,
    /// The last evaluated epoch's metrics (the study reports epoch 300's, not the best epoch's).
    #[serde(rename = "final")]
    pub final_metrics: Option<EpochMetrics>,
    pub config: TrainConfig,
    pub parameters: i64,
    pub device: String,
    pub seed: u64,
    pub world_size: u32,
    pub git_commit: String,
    pub threads: i32,
    /// Wall time of this process's share of the run.
    pub wall_seconds: f64,
    /// When this process took its first training step (Unix ms): start latency for benchmarks.
    pub first_step_at: Option<i64>,
    /// Data-parallel runs: the largest difference, at the end, between any rank's parameters and
    /// buffers and rank 0's (0 when the replicas stayed identical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_param_max_diff: Option<f64>,
    /// Which data the run used (absent in summaries written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<data::DataInfo>,
}

pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Device::Cuda(n)),
            _ => bail!("--device must be cpu, cuda or cuda:N, got {s:?}"),
        },
    }
}

/// The network with its parameters and optimiser state.
struct Model {
    /// Owns the variables `params` and `net` use.
    _vs: nn::VarStore,
    net: SeedNet,
    params: Params,
    /// Shallow handles of the trainable parameters, in `params` order.
    trainable: Vec<Tensor>,
    sgd: Sgd,
    /// The input and loss precision: fp32, or fp64 with `--fp64`.
    kind: Kind,
    n_params: i64,
}

impl Model {
    /// Builds the network from the seed (model init is the one use of libtorch's generator; data
    /// randomness has its own, augment.rs), with `--init-from` weights and `--channels-last`.
    fn build(cfg: &TrainConfig, device: Device) -> Result<Self> {
        tch::manual_seed(cfg.seed as i64);
        let mut vs = nn::VarStore::new(device);
        let mut net = SeedNet::new(&vs.root(), &cfg.model());
        let kind = if cfg.fp64 { Kind::Double } else { Kind::Float };
        if cfg.fp64 {
            vs.double();
        }
        let params = Params::of(&vs);
        let n_params = model::parameter_count(&vs);
        if let Some(path) = &cfg.init_from {
            checkpoint::load_weights(&params, path)?;
        }
        if cfg.channels_last {
            net.use_channels_last(&vs);
        }
        let trainable = params.trainable_tensors();
        let sgd = Sgd::new(trainable.len(), cfg.momentum, cfg.weight_decay);
        Ok(Model {
            _vs: vs,
            net,
            params,
            trainable,
            sgd,
            kind,
            n_params,
        })
    }

    /// The buffers (BatchNorm statistics): what DDP broadcasts before each forward without
    /// SyncBatchNorm.
    fn buffers(&self) -> Vec<&Tensor> {
        self.params
            .all
            .iter()
            .filter(|(_, t)| !t.requires_grad())
            .map(|(_, t)| t)
            .collect()
    }
}

/// What a summary needs beyond the run's outcome, fixed once the run is set up.
struct SummaryOf<'a> {
    cfg: &'a TrainConfig,
    started: Instant,
    device: Device,
    n_params: i64,
    world: usize,
    data: data::DataInfo,
}

impl SummaryOf<'_> {
    fn summary(
        &self,
        status: Status,
        epochs_completed: u32,
        final_metrics: Option<EpochMetrics>,
        first_step_at: Option<i64>,
        rank_param_max_diff: Option<f64>,
    ) -> Summary {
        Summary {
            status,
            epochs_completed,
            final_metrics,
            config: self.cfg.clone(),
            parameters: self.n_params,
            device: format!("{:?}", self.device),
            seed: self.cfg.seed,
            world_size: self.world as u32,
            git_commit: env!("SEED_GIT_COMMIT").to_string(),
            threads: tch::get_num_threads(),
            wall_seconds: self.started.elapsed().as_secs_f64(),
            first_step_at,
            rank_param_max_diff,
            data: Some(self.data.clone()),
        }
    }
}

/// Runs (or resumes) the training run configured by `cfg` with its files in `out`, calling
/// `on_epoch` after each evaluated epoch has been written. Errors are crashes; a non-finite loss is
/// a result (`Status::Diverged`).
///
/// Under torchrun's environment (WORLD_SIZE, RANK, ...) this process is one rank of a DDP run: it
/// joins the process group, trains on its shard with gradients averaged by c10d's reducer and
/// SyncBatchNorm, and only rank 0 writes files and calls `on_epoch`.
pub fn run(
    cfg: &TrainConfig,
    out: &Path,
    on_epoch: &mut dyn FnMut(&EpochMetrics),
) -> Result<Summary> {
    cfg.validate()?;
    let started = Instant::now();
    let env = RankEnv::from_env()?;
    let device = choose_device(cfg, env.as_ref())?;
    set_threads(cfg, env.as_ref(), device);
    let (mut ranks, mut group) = join_group(cfg, env.as_ref(), device)?;
    let files = RunFiles::create(out, ranks.is_main())?;
    let data = load_data(cfg, &ranks, group.as_ref())?;
    let mut model = Model::build(cfg, device)?;
    let report = SummaryOf {
        cfg,
        started,
        device,
        n_params: model.n_params,
        world: ranks.world,
        data: data.info.clone(),
    };
    let mut meta = ResumeMeta {
        epoch: 0,
        steps: 0,
        history: vec![],
        config: fingerprint(cfg, ranks.world)?,
        rng: "chacha8(seed, stream=epoch)".into(),
    };
    // Synchronisation point 1: every rank learns how the run starts from rank 0.
    let start = agree_on_start(
        &files,
        &mut model,
        &mut meta,
        group.as_ref(),
        ranks.is_main(),
    )?;
    if let Start::Finished(done) = start {
        tracing::info!("the run in {} has finished", out.display());
        return Ok(done
            .map(|d| *d)
            .unwrap_or_else(|| report.summary(Status::Completed, meta.epoch, None, None, None)));
    }
    // Synchronisation point 2: every rank takes rank 0's state.
    if let Some(g) = &mut group {
        start_data_parallel(g, &mut model, matches!(start, Start::Resumed))?;
    }
    ranks.pg = group.map(Rc::new);
    if ranks.is_main() {
        // The resume state is the commit point: drop metric lines written after it.
        write_metrics_file(&meta.history, &files.metrics)?;
    }
    let schedule = LrSchedule {
        base: cfg.lr,
        warmup_epochs: cfg.warmup_epochs,
        warmup_factor: cfg.warmup_factor,
        milestones: cfg.milestones.clone(),
        gamma: cfg.gamma,
    };
    let mut trainer = Trainer::new(cfg, device, &data, &ranks, &files, schedule);
    if let (true, Some(pg)) = (trainer.sync_bn, &ranks.pg) {
        model.net.use_sync_batch_norm(pg.clone());
    }
    trainer.bar = trainer.progress_bar();
    let status = trainer.epochs(&mut model, &mut meta, on_epoch)?;
    let first_step_at = trainer.first_step_at;
    // Synchronisation point 5: the replicas' spread, for the summary.
    let rank_param_max_diff = match ranks.pg() {
        Some(pg) if ranks.world > 1 => Some(param_spread(pg, &model.params)?),
        _ => None,
    };
    let summary = report.summary(
        status,
        meta.epoch,
        meta.history.last().cloned(),
        first_step_at,
        rank_param_max_diff,
    );
    if ranks.is_main() && status != Status::Interrupted {
        write_json_atomic(&summary, &files.summary)?;
    }
    Ok(summary)
}

/// `--device`, where a rank of a CUDA run takes the GPU of its local rank.
fn choose_device(cfg: &TrainConfig, env: Option<&RankEnv>) -> Result<Device> {
    let mut device = parse_device(&cfg.device)?;
    if let (Some(e), Device::Cuda(_), "cuda") = (env, device, cfg.device.as_str()) {
        // One GPU per local rank; ranks share GPUs when there are fewer (gloo only).
        device = Device::Cuda(e.local_rank % tch::Cuda::device_count().max(1) as usize);
    }
    if let Device::Cuda(i) = device {
        if !tch::Cuda::is_available() || i >= tch::Cuda::device_count() as usize {
            bail!(
                "--device {}: no such CUDA device is visible (found {})",
                cfg.device,
                tch::Cuda::device_count()
            );
        }
        // Every step has the same shapes (the last partial batch aside): let cuDNN time its
        // algorithms once and keep the fastest, as `torch.backends.cudnn.benchmark = True` does.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    crate::shim::set_tf32(cfg.tf32 && device.is_cuda())?;
    Ok(device)
}

fn set_threads(cfg: &TrainConfig, env: Option<&RankEnv>, device: Device) {
    match (cfg.threads, env) {
        (Some(t), _) => tch::set_num_threads(t as i32),
        // Ranks on one machine share its cores (torchrun sets OMP_NUM_THREADS for the same reason).
        (None, Some(e)) if device == Device::Cpu => {
            tch::set_num_threads(crate::ddp::launch::threads_per_rank(e.local_world) as i32);
        }
        _ => {}
    }
}

/// The machine's first rank loads (and, if need be, downloads) the data before the others read it.
fn load_data(
    cfg: &TrainConfig,
    ranks: &Ranks,
    group: Option<&ProcessGroup>,
) -> Result<data::Dataset> {
    if ranks.local_rank != 0 {
        barrier(group)?;
    }
    let data = data::load(cfg)?;
    if ranks.local_rank == 0 {
        barrier(group)?;
    }
    tracing::info!(
        train = data.train.len(),
        test = data.test.len(),
        "data loaded"
    );
    Ok(data)
}

/// SIGTERM or ctrl-c: finish and commit the running epoch, then stop (a second one stops at once).
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
