//! The epoch loop of one run. It reports each evaluated epoch through a callback and writes its files
//! under `out`; it knows nothing of HTTP or of the coordinator.
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

/// Configuration keys that do not change the numbers a run produces; a resume may differ in them.
const RESUME_NEUTRAL: [&str; 8] = [
    "threads",
    "save_predictions",
    "data_dir",
    "data_url",
    "data_md5",
    "init_from",
    "dist_backend",
    "dist_timeout",
];

/// What must match for a resume: the configuration less the neutral keys, and the world size
/// (a different number of ranks is a different global batch).
fn fingerprint(cfg: &TrainConfig, world: usize) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(cfg)?;
    if let Some(m) = v.as_object_mut() {
        for k in RESUME_NEUTRAL {
            m.remove(k);
        }
        m.insert("world_size".into(), world.into());
    }
    Ok(v)
}

fn write_json_atomic<T: Serialize>(value: &T, path: &Path) -> Result<()> {
    let tmp = checkpoint::tmp_path(path);
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn write_metrics_file(history: &[EpochMetrics], path: &Path) -> Result<()> {
    let tmp = checkpoint::tmp_path(path);
    let mut text = String::new();
    for m in history {
        text.push_str(&serde_json::to_string(m)?);
        text.push('\n');
    }
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn append_metrics(m: &EpochMetrics, path: &Path) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{}", serde_json::to_string(m)?)?;
    f.flush()?;
    Ok(())
}

const CONTRACT_METRICS: &str = protocol::command::env::METRICS;

/// `worker train` run as a command job (a sweep's `[command]`, e.g. beside another program):
/// each epoch's line also goes to `$SWEEP_METRICS`, after its checkpoint is committed, as the
/// environment contract asks (`--out` defaults to `$SWEEP_CHECKPOINT_DIR`).
fn report_to_contract(m: Option<&EpochMetrics>) -> Result<()> {
    match (m, std::env::var_os(CONTRACT_METRICS)) {
        (Some(m), Some(path)) => append_metrics(m, Path::new(&path)),
        _ => Ok(()),
    }
}

/// Result of evaluating the whole test split.
#[derive(Debug)]
pub struct Evaluation {
    pub loss: f64,
    pub confusion: Confusion,
    pub predictions: Vec<i64>,
}

/// Evaluates the whole test split. With a process group, rank r takes batches r, r + world, ...
/// (the very batches one process would see, so each sample's logits are computed the same way),
/// and the per-sample predictions and the loss sum are gathered: every rank gets exactly the
/// single-process metrics.
pub fn evaluate(
    model: &SeedNet,
    split: &Split,
    device: Device,
    batch: usize,
    bf16: bool,
    input_kind: Kind,
    pg: Option<&ProcessGroup>,
) -> Result<Evaluation> {
    let n = split.len();
    let (rank, world) = pg.map_or((0, 1), |g| (g.rank(), g.world()));
    let aug = Augmenter::new(device);
    let mut predictions = vec![0i64; n];
    let starts: Vec<usize> = (0..n).step_by(batch).skip(rank).step_by(world).collect();
    let (mut preds, mut sums) = (vec![], vec![]);
    tch::no_grad(|| -> Result<()> {
        for &start in &starts {
            let len = batch.min(n - start) as i64;
            let images = split.images.narrow(0, start as i64, len);
            let x = aug
                .normalize_u8(&images.to_device(device))
                .to_kind(input_kind);
            let y = split.labels.narrow(0, start as i64, len).to_device(device);
            let logits =
                autocast(bf16, device, || model.try_forward_t(&x, false))??.to_kind(input_kind);
            let loss = logits.cross_entropy_loss::<Tensor>(&y, None, Reduction::Sum, -100, 0.0);
            sums.push(loss.to_kind(Kind::Double).view([1]));
            preds.push(logits.argmax(-1, false));
        }
        Ok(())
    })?;
    // One read back for the whole pass: the batches' results stayed on the device. The sums are
    // added on the host in batch order, in f64, as before.
    let mut loss_sum = 0.0;
    if !starts.is_empty() {
        let sums = Vec::<f64>::try_from(&Tensor::cat(&sums, 0).to_device(Device::Cpu))?;
        let all = Vec::<i64>::try_from(&Tensor::cat(&preds, 0).to_device(Device::Cpu))?;
        let mut at = 0;
        for (&start, sum) in starts.iter().zip(sums) {
            let len = batch.min(n - start);
            predictions[start..start + len].copy_from_slice(&all[at..at + len]);
            loss_sum += sum;
            at += len;
        }
    }
    if let Some(g) = pg {
        // Each index was written by one rank and is 0 elsewhere: a sum gathers them.
        let preds = Tensor::from_slice(&predictions);
        let loss = Tensor::from_slice(&[loss_sum]);
        g.all_reduce_sum(&[&preds])?;
        g.all_reduce_sum(&[&loss])?;
        predictions = Vec::try_from(&preds)?;
        loss_sum = loss.double_value(&[0]);
    }
    let truth: Vec<i64> = Vec::try_from(&split.labels.to_device(Device::Cpu))?;
    let mut confusion = Confusion::new(10);
    confusion.add(&truth, &predictions);
    Ok(Evaluation {
        loss: loss_sum / n as f64,
        confusion,
        predictions,
    })
}

/// Runs `f` under bf16 autocast on `device` when `bf16` (the trainer's and the benchmark's).
pub(crate) fn autocast<T>(bf16: bool, device: Device, f: impl FnOnce() -> T) -> Result<T> {
    if !bf16 {
        return Ok(f());
    }
    crate::shim::set_autocast_bf16(true, device)?;
    let out = f();
    crate::shim::set_autocast_bf16(false, device)?;
    Ok(out)
}

fn write_predictions(split: &Split, preds: &[i64], path: &Path) -> Result<()> {
    let labels: Vec<i64> = Vec::try_from(&split.labels)?;
    let mut text = String::from("index,label,prediction\n");
    for (i, (l, p)) in labels.iter().zip(preds).enumerate() {
        text.push_str(&format!("{i},{l},{p}\n"));
    }
    let tmp = checkpoint::tmp_path(path);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// This process's place in a data-parallel run; a plain run is rank 0 of 1 with no group.
struct Ranks {
    rank: usize,
    world: usize,
    local_rank: usize,
    pg: Option<Rc<ProcessGroup>>,
}

impl Ranks {
    fn is_main(&self) -> bool {
        self.rank == 0
    }

    fn pg(&self) -> Option<&ProcessGroup> {
        self.pg.as_deref()
    }
}

/// What rank 0 found in `out` and every rank agreed on: how this run starts.
#[derive(Debug)]
enum Start {
    /// Nothing there: a fresh run.
    Fresh,
    /// A resume state: its parameters, momentum and metadata are loaded (on rank 0).
    Resumed,
    /// The run has finished (its summary, when this rank read it).
    Finished(Option<Box<Summary>>),
}

impl Start {
    /// The code rank 0 broadcasts (3: it refused `out`).
    const REFUSED: i64 = 3;

    fn code(&self) -> i64 {
        match self {
            Start::Fresh => 0,
            Start::Resumed => 1,
            Start::Finished(_) => 2,
        }
    }
}

/// The files of a run under `--out`.
struct RunFiles {
    out: std::path::PathBuf,
    summary: std::path::PathBuf,
    metrics: std::path::PathBuf,
    resume: std::path::PathBuf,
}

impl RunFiles {
    /// Only rank 0 writes files, so only it creates the folder.
    fn create(out: &Path, main: bool) -> Result<Self> {
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

/// Under torchrun's environment, joins the process group; otherwise rank 0 of 1.
fn join_group(
    cfg: &TrainConfig,
    env: Option<&RankEnv>,
    device: Device,
) -> Result<(Ranks, Option<ProcessGroup>)> {
    let mut ranks = Ranks {
        rank: 0,
        world: 1,
        local_rank: 0,
        pg: None,
    };
    let Some(e) = env else {
        return Ok((ranks, None));
    };
    let backend = Backend::choose(cfg.dist_backend.as_deref(), device)?;
    let g = ProcessGroup::from_env(e, backend, Duration::from_secs(cfg.dist_timeout), device)?;
    tracing::info!(
        rank = e.rank,
        world = e.world,
        ?backend,
        "joined the process group"
    );
    ranks.rank = e.rank;
    ranks.world = e.world;
    ranks.local_rank = e.local_rank;
    Ok((ranks, Some(g)))
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

/// Rank 0 reads `out` (a fresh run, a resume, a finished run, or a refusal) and tells the others,
/// with the epoch and step counts to continue from.
fn agree_on_start(
    files: &RunFiles,
    model: &mut Model,
    meta: &mut ResumeMeta,
    group: Option<&ProcessGroup>,
    main: bool,
) -> Result<Start> {
    let found = if main {
        inspect_out(files, model, meta)
    } else {
        Ok(Start::Fresh)
    };
    let code = found.as_ref().map_or(Start::REFUSED, Start::code);
    let told = Tensor::from_slice(&[code, meta.epoch as i64, meta.steps]);
    if let Some(g) = group {
        g.broadcast(&[&told], 0)?;
    }
    let told: Vec<i64> = Vec::try_from(&told)?;
    let found = found?;
    meta.epoch = told[1] as u32;
    meta.steps = told[2];
    Ok(match (told[0], found) {
        (Start::REFUSED, _) => bail!("rank 0 refused {}", files.out.display()),
        (2, Start::Finished(done)) => Start::Finished(done),
        (2, _) => Start::Finished(None),
        (1, _) => Start::Resumed,
        _ => Start::Fresh,
    })
}

/// DDP's start: every rank takes rank 0's parameters and buffers (after a resume, also its
/// momentum), whatever its own init or files were; then gradients are averaged from here on.
fn start_data_parallel(g: &mut ProcessGroup, model: &mut Model, resumed: bool) -> Result<()> {
    let all: Vec<&Tensor> = model.params.all.iter().map(|(_, t)| t).collect();
    tch::no_grad(|| g.broadcast(&all, 0))?;
    if resumed {
        for (slot, p) in model.sgd.buffers.iter_mut().zip(&model.trainable) {
            slot.get_or_insert_with(|| p.detach().zeros_like());
        }
        let bufs: Vec<&Tensor> = model.sgd.buffers.iter().flatten().collect();
        g.broadcast(&bufs, 0)?;
    }
    g.sync_gradients(&model.trainable, 25)
}

/// DistributedSampler: the epoch's order padded (by wrapping) to a multiple of the world size,
/// rank r taking positions r, r + world, ... ; one process takes them all.
struct Sampler {
    positions: Vec<usize>,
    batch: usize,
    steps_per_epoch: usize,
}

impl Sampler {
    fn new(n_train: usize, ranks: &Ranks, batch: usize) -> Self {
        let per_rank = n_train.div_ceil(ranks.world);
        let positions = (ranks.rank..per_rank * ranks.world)
            .step_by(ranks.world)
            .map(|p| p % n_train)
            .collect();
        Sampler {
            positions,
            batch,
            steps_per_epoch: per_rank.div_ceil(batch),
        }
    }
}

/// Steps between the host's looks at the device's running loss and divergence flag: one blocking
/// read per this many steps, and one at the epoch's end.
pub const CHECK_EVERY: usize = 50;

/// What an epoch's steps leave on the device for the host to read every [`CHECK_EVERY`] steps.
struct StepTally {
    /// 1.0 from the first step whose (global) loss was not finite: that step's update and every
    /// later one are skipped by the fused SGD kernel itself (its `found_inf`), so the weights stay
    /// those before it, as when the host stopped at once; the epoch ends at the next read.
    halted: Tensor,
    /// Sum of loss x samples over the steps, in f64 (the host's arithmetic, done on the device).
    loss_sum: Tensor,
    /// Steps taken while halted (their updates skipped), in f32 (exact up to 2^24 steps).
    skipped: Tensor,
    /// Steps taken (the host counts them: no device op).
    steps: u64,
}

impl StepTally {
    fn new(device: Device) -> Self {
        StepTally {
            halted: Tensor::zeros([1], (Kind::Float, device)),
            loss_sum: Tensor::zeros([1], (Kind::Double, device)),
            skipped: Tensor::zeros([1], (Kind::Float, device)),
            steps: 0,
        }
    }

    /// One step's global mean loss `lv` (an f64 scalar on the device) and `weighted`, that loss
    /// times the step's global sample count: 7 device ops.
    fn add(&mut self, lv: &Tensor, weighted: &Tensor) {
        let bad = lv.isfinite().logical_not().to_kind(Kind::Float);
        self.halted = self.halted.maximum(&bad);
        self.loss_sum = &self.loss_sum + weighted;
        self.skipped = &self.skipped + &self.halted;
        self.steps += 1;
    }

    /// (halted, loss sum, updates): one device-to-host copy, the step loop's only sync.
    fn read(&self) -> Result<(bool, f64, u64)> {
        let t = Tensor::cat(
            &[
                self.halted.to_kind(Kind::Double),
                self.loss_sum.shallow_clone(),
                self.skipped.to_kind(Kind::Double),
            ],
            0,
        )
        .to_device(Device::Cpu);
        let v = Vec::<f64>::try_from(&t)?;
        Ok((v[0] != 0.0, v[1], self.steps - v[2] as u64))
    }
}

/// One epoch's training, before evaluation.
struct EpochTrained {
    started: Instant,
    loss_sum: f64,
    seen: usize,
    diverged: bool,
    /// Training time alone (images/s are measured on it).
    seconds: f64,
    first_step_at: Option<i64>,
}

/// The epoch loop: what stays fixed across epochs, and the step counter's first use.
struct Trainer<'a> {
    cfg: &'a TrainConfig,
    device: Device,
    data: &'a data::Dataset,
    /// The splits on the training device, uploaded once as u8 where they fit (the host's otherwise).
    train: Split,
    test: Split,
    augmenter: Augmenter,
    sampler: Sampler,
    ranks: &'a Ranks,
    sync_bn: bool,
    files: &'a RunFiles,
    schedule: LrSchedule,
    bar: Option<indicatif::ProgressBar>,
    first_step_at: Option<i64>,
    /// The previous epoch's checkpoint being written (rank 0), off the training's critical path.
    writing: Option<std::thread::JoinHandle<Result<()>>>,
}

impl<'a> Trainer<'a> {
    fn new(
        cfg: &'a TrainConfig,
        device: Device,
        data: &'a data::Dataset,
        ranks: &'a Ranks,
        files: &'a RunFiles,
        schedule: LrSchedule,
    ) -> Self {
        Trainer {
            cfg,
            device,
            data,
            train: data.train.resident(device),
            test: data.test.resident(device),
            augmenter: Augmenter::new(device),
            sampler: Sampler::new(data.train.len(), ranks, cfg.batch_size as usize),
            ranks,
            sync_bn: ranks.world > 1 && !cfg.no_sync_bn,
            files,
            schedule,
            bar: None,
            first_step_at: None,
            writing: None,
        }
    }

    fn progress_bar(&self) -> Option<indicatif::ProgressBar> {
        (self.ranks.is_main() && std::io::stderr().is_terminal()).then(|| {
            let pb = indicatif::ProgressBar::new(self.sampler.steps_per_epoch as u64);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            pb
        })
    }

    /// Every remaining epoch: train, evaluate (and report), commit, and agree whether to stop.
    fn epochs(
        &mut self,
        model: &mut Model,
        meta: &mut ResumeMeta,
        on_epoch: &mut dyn FnMut(&EpochMetrics),
    ) -> Result<Status> {
        let stop = stop_on_signals()?;
        let mut status = Status::Completed;
        for epoch in meta.epoch + 1..=self.cfg.epochs {
            let lr = self.schedule.lr_at(epoch);
            let trained = self.train_epoch(model, meta, epoch, lr)?;
            self.first_step_at = self.first_step_at.or(trained.first_step_at);
            let last = epoch == self.cfg.epochs;
            if trained.diverged || epoch % self.cfg.eval_interval == 0 || last {
                let m = self.evaluate_epoch(model, epoch, lr, &trained)?;
                if self.ranks.is_main() {
                    on_epoch(&m);
                }
                meta.history.push(m);
            }
            let line = meta.history.last().filter(|m| m.epoch == epoch);
            if trained.diverged {
                status = Status::Diverged;
                if self.ranks.is_main() {
                    self.wait_for_checkpoint()?; // or it would write the file back
                    let _ = std::fs::remove_file(&self.files.resume);
                    report_to_contract(line)?;
                }
                break;
            }
            meta.epoch = epoch;
            self.commit(model, meta)?;
            if self.ranks.is_main() && std::env::var_os(CONTRACT_METRICS).is_some() {
                // As a command job the line follows its checkpoint (the worker archives the
                // directory when it sees the line).
                self.wait_for_checkpoint()?;
                report_to_contract(meta.history.last().filter(|m| m.epoch == epoch))?;
            }
            if self.agree_to_stop(&stop)? && !last {
                tracing::info!(epoch, "stopping after a committed epoch (signal)");
                status = Status::Interrupted;
                break;
            }
        }
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
        self.wait_for_checkpoint()?;
        Ok(status)
    }

    /// One pass over this rank's shard. A non-finite loss stops the weights at once (the update is
    /// skipped on the device) and ends the epoch diverged at the next read of the tally.
    fn train_epoch(
        &self,
        model: &mut Model,
        meta: &mut ResumeMeta,
        epoch: u32,
        lr: f64,
    ) -> Result<EpochTrained> {
        let plan = self.epoch_plan(epoch);
        if let Some(pb) = &self.bar {
            pb.set_prefix(format!("{epoch}/{}", self.cfg.epochs));
            pb.reset();
        }
        let mut e = EpochTrained {
            started: Instant::now(),
            loss_sum: 0.0,
            seen: 0,
            diverged: false,
            seconds: 0.0,
            first_step_at: None,
        };
        let mut tally = StepTally::new(self.device);
        let (steps_before, last) = (meta.steps, plan.steps());
        for i in 0..last {
            self.step(model, &plan, i, lr, &mut tally)?;
            e.first_step_at.get_or_insert_with(unix_ms);
            // Every rank's shard has the same length, so every step's global batch is this.
            e.seen += plan.step_len(i) * self.ranks.world;
            if (i + 1) % CHECK_EVERY != 0 && i + 1 != last {
                continue;
            }
            let (halted, loss_sum, updates) = tally.read()?;
            meta.steps = steps_before + updates as i64;
            e.loss_sum = loss_sum;
            if halted {
                tracing::warn!(
                    epoch,
                    step = meta.steps,
                    "non-finite loss: the run diverged"
                );
                e.diverged = true;
                break;
            }
            if let Some(pb) = &self.bar {
                pb.set_position((i + 1) as u64);
                pb.set_message(format!(
                    "loss {:.4} lr {lr:.2e} {:.1} img/s",
                    e.loss_sum / e.seen as f64,
                    e.seen as f64 / e.started.elapsed().as_secs_f64()
                ));
            }
        }
        e.seconds = e.started.elapsed().as_secs_f64();
        Ok(e)
    }

    /// This rank's share of `epoch`'s order and augmentation, sent to the device in one go.
    fn epoch_plan(&self, epoch: u32) -> DevicePlan {
        let plan = EpochPlan::new(self.cfg.seed, epoch, self.data.train.len());
        DevicePlan::new(
            &plan,
            &self.sampler.positions,
            self.sampler.batch,
            self.device,
        )
    }

    /// One optimiser step on step `i`'s batch of the epoch's plan, its global batch's mean loss
    /// added to `tally` on the device; when that loss (or an earlier one of the epoch) is not
    /// finite, the update is skipped there. No host sync, and no copy when the data are resident.
    fn step(
        &self,
        model: &mut Model,
        plan: &DevicePlan,
        i: usize,
        lr: f64,
        tally: &mut StepTally,
    ) -> Result<()> {
        let kind = model.kind;
        let (x, labels) = self.augmenter.batch(&self.train, plan, i);
        let x = x.to_kind(kind);
        if let Some(pg) = self.ranks.pg() {
            // Without SyncBatchNorm each rank's running statistics drift apart; DDP then
            // broadcasts rank 0's buffers before every forward, and so do we.
            if !self.sync_bn && self.ranks.world > 1 {
                tch::no_grad(|| pg.broadcast(&model.buffers(), 0))?;
            }
            pg.prepare_step()?;
        }
        let logits = autocast(self.cfg.bf16, self.device, || {
            model.net.try_forward_t(&x, true)
        })??;
        // tch's cross_entropy_for_logits computes in fp32 whatever the input; this keeps `kind`.
        let loss = logits.to_kind(kind).cross_entropy_loss::<Tensor>(
            &labels,
            None,
            Reduction::Mean,
            -100,
            0.0,
        );
        // The global batch's mean loss (what one process with batch world x b would see), in f64
        // on the device: every rank gets the same value, so all skip a non-finite step together.
        // The count is filled on the device: no host-to-device copy in the step.
        let n = plan.step_len(i) as f64;
        let lv = loss.detach().to_kind(Kind::Double).view([1]);
        let (lv, weighted) = match self.ranks.pg() {
            None => (lv.shallow_clone(), lv * n),
            Some(pg) => {
                let n = Tensor::full([1], n, (Kind::Double, self.device));
                let t = Tensor::cat(&[&lv * &n, n], 0);
                pg.all_reduce_sum(&[&t])?;
                let n_all = t.narrow(0, 1, 1);
                let lv = t.narrow(0, 0, 1) / &n_all;
                let weighted = &lv * &n_all;
                (lv, weighted)
            }
        };
        tally.add(&lv, &weighted);
        Sgd::clear_grads(&model.trainable)?;
        // With a process group, the reducer all-reduces gradients bucket by bucket during this.
        loss.f_backward()
            .context("backward pass (with its gradient all-reduce) failed")?;
        model
            .sgd
            .step_unless(&model.trainable, lr, Some(&tally.halted))?;
        Ok(())
    }

    /// Synchronisation point 3: the test split, sharded across ranks and gathered. Rank 0 writes
    /// the epoch's line (and predictions) before it is reported.
    fn evaluate_epoch(
        &self,
        model: &Model,
        epoch: u32,
        lr: f64,
        trained: &EpochTrained,
    ) -> Result<EpochMetrics> {
        let cfg = self.cfg;
        let ev = evaluate(
            &model.net,
            &self.test,
            self.device,
            cfg.eval_batch_size as usize,
            cfg.bf16,
            model.kind,
            self.ranks.pg(),
        )?;
        let s = ev.confusion.scores();
        let diverged = trained.diverged;
        let m = EpochMetrics {
            epoch,
            lr,
            train_loss: if diverged {
                f64::NAN
            } else {
                trained.loss_sum / trained.seen.max(1) as f64
            },
            test_loss: if diverged { f64::NAN } else { ev.loss },
            accuracy: s.accuracy,
            precision: s.precision,
            recall: s.recall,
            f1: s.f1,
            images_per_sec: trained.seen as f64 / trained.seconds,
            // The whole epoch, evaluation included.
            seconds: trained.started.elapsed().as_secs_f64(),
        };
        if self.ranks.is_main() {
            if cfg.save_predictions {
                let path = self.files.out.join(PREDICTIONS_FILE);
                write_predictions(&self.data.test, &ev.predictions, &path)?;
            }
            append_metrics(&m, &self.files.metrics)?;
            self.log_epoch(&m);
        }
        Ok(m)
    }

    fn log_epoch(&self, m: &EpochMetrics) {
        match &self.bar {
            Some(pb) => pb.println(format!(
                "epoch {}: train loss {:.4}, test loss {:.4}, accuracy {:.2}%, lr {:.2e}, {:.1} img/s",
                m.epoch,
                m.train_loss,
                m.test_loss,
                100.0 * m.accuracy,
                m.lr,
                m.images_per_sec
            )),
            None => tracing::info!(
                epoch = m.epoch,
                train_loss = m.train_loss,
                test_loss = m.test_loss,
                accuracy = m.accuracy,
                lr = m.lr,
                images_per_sec = m.images_per_sec,
                "epoch done"
            ),
        }
    }

    /// The epoch's commit: rank 0 copies the weights, momentum and metadata off the model and a
    /// thread writes them (the weights, then the resume state: the commit point) while the next
    /// epoch trains. One write at a time, in epoch order; the run waits for the last one.
    fn commit(&mut self, model: &Model, meta: &ResumeMeta) -> Result<()> {
        if !self.ranks.is_main() {
            return Ok(());
        }
        self.wait_for_checkpoint()?;
        let snapshot = checkpoint::Snapshot::take(&model.params, &model.sgd.buffers, meta)?;
        let (weights, resume) = (self.files.out.join(WEIGHTS_FILE), self.files.resume.clone());
        self.writing = Some(std::thread::spawn(move || {
            snapshot.write(&weights, &resume)
        }));
        Ok(())
    }

    fn wait_for_checkpoint(&mut self) -> Result<()> {
        match self.writing.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the checkpoint writer panicked"))?
                .context("writing the epoch's checkpoint"),
            None => Ok(()),
        }
    }

    /// Synchronisation point 4: ranks stop together; a signal seen by any of them stops all after
    /// this committed epoch.
    fn agree_to_stop(&self, stop: &AtomicBool) -> Result<bool> {
        let mut stopping = stop.load(Ordering::SeqCst);
        if let Some(pg) = self.ranks.pg() {
            let t = Tensor::from_slice(&[stopping as i64]);
            pg.all_reduce_sum(&[&t])?;
            stopping = t.int64_value(&[0]) > 0;
        }
        Ok(stopping)
    }
}

/// The ATen ops of one step of this trainer (the batch gathered from the split, augmented, forward,
/// the loss read back, backward, SGD) at `cfg`'s batch size on its data, after two warm-up steps
/// (momentum buffers exist, as in a long run). `worker bench --ops` reports it beside PyTorch's.
pub fn count_step_ops(cfg: &TrainConfig) -> Result<crate::shim::OpCount> {
    let device = parse_device(&cfg.device)?;
    let ranks = Ranks {
        rank: 0,
        world: 1,
        local_rank: 0,
        pg: None,
    };
    let data = data::load(cfg)?;
    let mut model = Model::build(cfg, device)?;
    let files = RunFiles::create(&std::env::temp_dir(), false)?;
    let schedule = LrSchedule {
        base: cfg.lr,
        warmup_epochs: 0,
        warmup_factor: 1.0,
        milestones: vec![],
        gamma: 1.0,
    };
    let trainer = Trainer::new(cfg, device, &data, &ranks, &files, schedule);
    let plan = trainer.epoch_plan(1);
    anyhow::ensure!(plan.steps() >= 3, "three batches of data are needed");
    let mut tally = StepTally::new(device);
    for i in 0..2 {
        trainer.step(&mut model, &plan, i, cfg.lr, &mut tally)?;
    }
    let (step, count) =
        crate::shim::count_ops(|| trainer.step(&mut model, &plan, 2, cfg.lr, &mut tally))?;
    step?;
    Ok(count)
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

fn barrier(g: Option<&ProcessGroup>) -> Result<()> {
    g.map_or(Ok(()), ProcessGroup::barrier)
}

/// Rank 0's reading of `out`: a fresh run, a resume (state loaded), a finished run, or why it
/// refuses the folder.
fn inspect_out(files: &RunFiles, model: &mut Model, meta: &mut ResumeMeta) -> Result<Start> {
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
        if meta.config != fp {
            bail!("{out} holds a run with another configuration; use another --out");
        }
        tracing::info!(epoch = meta.epoch, "resuming after epoch {}", meta.epoch);
        return Ok(Start::Resumed);
    }
    Ok(Start::Fresh)
}

/// The largest difference between this rank's parameters and buffers and rank 0's, over all
/// ranks: 0 when data parallelism kept the replicas identical, as it must.
fn param_spread(pg: &ProcessGroup, params: &Params) -> Result<f64> {
    let flat = Tensor::cat(
        &params
            .all
            .iter()
            .map(|(_, t)| t.detach().to_kind(Kind::Double).flatten(0, -1))
            .collect::<Vec<_>>(),
        0,
    );
    let theirs = flat.copy();
    pg.broadcast(&[&theirs], 0)?;
    let mine = (&flat - &theirs).abs().max().to_device(Device::Cpu);
    let all = pg.all_gather(&mine.reshape([1]))?;
    Ok(all.max().double_value(&[]))
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
