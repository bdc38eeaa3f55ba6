//! The epoch loop of one run. It reports each evaluated epoch through a callback and writes its files
//! under `out`; it knows nothing of HTTP or of the coordinator.
use crate::augment::{self, EpochPlan};
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
    let mut predictions = vec![0i64; n];
    let mut loss_sum = 0.0;
    tch::no_grad(|| -> Result<()> {
        for start in (0..n).step_by(batch).skip(rank).step_by(world) {
            let len = batch.min(n - start);
            let x =
                augment::normalize_u8(&split.images.narrow(0, start as i64, len as i64), device)
                    .to_kind(input_kind);
            let y = split.labels.narrow(0, start as i64, len as i64);
            let logits = autocast(bf16, || model.try_forward_t(&x, false))??
                .to_kind(input_kind)
                .to_device(Device::Cpu);
            let loss = logits.cross_entropy_loss::<Tensor>(&y, None, Reduction::Sum, -100, 0.0);
            loss_sum += loss.double_value(&[]);
            let pred: Vec<i64> = Vec::try_from(&logits.argmax(-1, false))?;
            predictions[start..start + len].copy_from_slice(&pred);
        }
        Ok(())
    })?;
    if let Some(g) = pg {
        // Each index was written by one rank and is 0 elsewhere: a sum gathers them.
        let preds = Tensor::from_slice(&predictions);
        let loss = Tensor::from_slice(&[loss_sum]);
        g.all_reduce_sum(&[&preds])?;
        g.all_reduce_sum(&[&loss])?;
        predictions = Vec::try_from(&preds)?;
        loss_sum = loss.double_value(&[0]);
    }
    let truth: Vec<i64> = Vec::try_from(&split.labels)?;
    let mut confusion = Confusion::new(10);
    confusion.add(&truth, &predictions);
    Ok(Evaluation {
        loss: loss_sum / n as f64,
        confusion,
        predictions,
    })
}

fn autocast<T>(bf16: bool, f: impl FnOnce() -> T) -> Result<T> {
    if !bf16 {
        return Ok(f());
    }
    crate::shim::set_autocast_bf16(true)?;
    let out = f();
    crate::shim::set_autocast_bf16(false)?;
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

/// What rank 0 found in `out`, told to the other ranks.
const FRESH: i64 = 0;
const RESUMED: i64 = 1;
const FINISHED: i64 = 2;
const REFUSED: i64 = 3;

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
    let mut device = parse_device(&cfg.device)?;
    if let (Some(e), Device::Cuda(_), "cuda") = (&env, device, cfg.device.as_str()) {
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
    }
    match (cfg.threads, &env) {
        (Some(t), _) => tch::set_num_threads(t as i32),
        // Ranks on one machine share its cores (torchrun sets OMP_NUM_THREADS for the same reason).
        (None, Some(e)) if device == Device::Cpu => {
            tch::set_num_threads(crate::ddp::launch::threads_per_rank(e.local_world) as i32);
        }
        _ => {}
    }
    let mut ranks = Ranks {
        rank: 0,
        world: 1,
        local_rank: 0,
        pg: None,
    };
    let mut group = None;
    if let Some(e) = &env {
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
        group = Some(g);
    }
    let main = ranks.is_main();
    if main {
        std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create --out {}", out.display()))?;
    }
    let summary_path = out.join(SUMMARY_FILE);
    let metrics_path = out.join(METRICS_FILE);
    let resume_path = out.join(RESUME_FILE);

    // The machine's first rank loads (and, if need be, downloads) the data before the others read it.
    if ranks.local_rank != 0 {
        barrier(group.as_ref())?;
    }
    let data = data::load(cfg)?;
    if ranks.local_rank == 0 {
        barrier(group.as_ref())?;
    }
    tracing::info!(
        train = data.train.len(),
        test = data.test.len(),
        "data loaded"
    );

    // Model init is the one use of libtorch's generator; data randomness has its own (augment.rs).
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
    let mut sgd = Sgd::new(trainable.len(), cfg.momentum, cfg.weight_decay);
    let schedule = LrSchedule {
        base: cfg.lr,
        warmup_epochs: cfg.warmup_epochs,
        warmup_factor: cfg.warmup_factor,
        milestones: cfg.milestones.clone(),
        gamma: cfg.gamma,
    };

    let fp = fingerprint(cfg, ranks.world)?;
    let mut meta = ResumeMeta {
        epoch: 0,
        steps: 0,
        history: vec![],
        config: fp.clone(),
        rng: "chacha8(seed, stream=epoch)".into(),
    };
    let world = ranks.world;
    let summary_of =
        |status, epochs_completed, final_metrics, first_step_at, rank_param_max_diff| Summary {
            status,
            epochs_completed,
            final_metrics,
            config: cfg.clone(),
            parameters: n_params,
            device: format!("{device:?}"),
            seed: cfg.seed,
            world_size: world as u32,
            git_commit: env!("SEED_GIT_COMMIT").to_string(),
            threads: tch::get_num_threads(),
            wall_seconds: started.elapsed().as_secs_f64(),
            first_step_at,
            rank_param_max_diff,
            data: Some(data.info.clone()),
        };
    // Rank 0 reads `out`; the others learn the outcome from it.
    let mut found = (FRESH, None::<Summary>, None::<anyhow::Error>);
    if main {
        found = inspect_out(
            &summary_path,
            &resume_path,
            &fp,
            out,
            &params,
            &mut sgd,
            &mut meta,
        );
    }
    let told = Tensor::from_slice(&[found.0, meta.epoch as i64, meta.steps]);
    if let Some(g) = &group {
        g.broadcast(&[&told], 0)?;
    }
    let told: Vec<i64> = Vec::try_from(&told)?;
    match (told[0], found) {
        (_, (_, _, Some(e))) => return Err(e),
        (REFUSED, _) => bail!("rank 0 refused {}", out.display()),
        (FINISHED, (_, Some(done), _)) => return Ok(done),
        (FINISHED, _) => {
            tracing::info!("rank 0 found the run finished");
            return Ok(summary_of(
                Status::Completed,
                told[1] as u32,
                None,
                None,
                None,
            ));
        }
        _ => {}
    }
    meta.epoch = told[1] as u32;
    meta.steps = told[2];
    if let Some(g) = &mut group {
        // DDP's start: every rank takes rank 0's parameters and buffers (after a resume, also its
        // momentum), whatever its own init or files were.
        let all: Vec<&Tensor> = params.all.iter().map(|(_, t)| t).collect();
        tch::no_grad(|| g.broadcast(&all, 0))?;
        if told[0] == RESUMED {
            for (slot, p) in sgd.buffers.iter_mut().zip(&trainable) {
                slot.get_or_insert_with(|| p.detach().zeros_like());
            }
            let bufs: Vec<&Tensor> = sgd.buffers.iter().flatten().collect();
            g.broadcast(&bufs, 0)?;
        }
        g.sync_gradients(&trainable, 25)?;
    }
    ranks.pg = group.map(Rc::new);
    let sync_bn = ranks.world > 1 && !cfg.no_sync_bn;
    if let (true, Some(pg)) = (sync_bn, &ranks.pg) {
        net.use_sync_batch_norm(pg.clone());
    }
    // Without SyncBatchNorm each rank's running statistics drift apart; DDP then broadcasts rank 0's
    // buffers before every forward, and so do we.
    let buffers: Vec<&Tensor> = params
        .all
        .iter()
        .filter(|(_, t)| !t.requires_grad())
        .map(|(_, t)| t)
        .collect();
    if main {
        // The resume state is the commit point: drop metric lines written after it.
        write_metrics_file(&meta.history, &metrics_path)?;
    }

    let n_train = data.train.len();
    let bs = cfg.batch_size as usize;
    // DistributedSampler: the epoch's order padded (by wrapping) to a multiple of the world size,
    // rank r taking positions r, r + world, ... ; one process takes them all.
    let per_rank = n_train.div_ceil(ranks.world);
    let positions: Vec<usize> = (ranks.rank..per_rank * ranks.world)
        .step_by(ranks.world)
        .map(|p| p % n_train)
        .collect();
    let steps_per_epoch = per_rank.div_ceil(bs);
    let bar = (main && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(steps_per_epoch as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb
    });

    // SIGTERM or ctrl-c: finish and commit the running epoch, then stop (a second one stops at once).
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let mut status = Status::Completed;
    let mut first_step_at = None;
    for epoch in meta.epoch + 1..=cfg.epochs {
        let t0 = Instant::now();
        let lr = schedule.lr_at(epoch);
        let plan = EpochPlan::new(cfg.seed, epoch, n_train);
        if let Some(pb) = &bar {
            pb.set_prefix(format!("{epoch}/{}", cfg.epochs));
            pb.reset();
        }
        let (mut loss_sum, mut seen, mut diverged) = (0.0f64, 0usize, false);
        for chunk in positions.chunks(bs) {
            let order: Vec<i64> = chunk.iter().map(|&p| plan.order[p]).collect();
            let aug: Vec<_> = chunk.iter().map(|&p| plan.aug[p]).collect();
            let idx = Tensor::from_slice(&order);
            let images = data.train.images.index_select(0, &idx);
            let labels = data.train.labels.index_select(0, &idx).to_device(device);
            let x = augment::augment(&images, &aug, device).to_kind(kind);
            if let Some(pg) = ranks.pg() {
                if !sync_bn && ranks.world > 1 {
                    tch::no_grad(|| pg.broadcast(&buffers, 0))?;
                }
                pg.prepare_step()?;
            }
            let logits = autocast(cfg.bf16, || net.try_forward_t(&x, true))??;
            // tch's cross_entropy_for_logits computes in fp32 whatever the input; this keeps `kind`.
            let loss = logits.to_kind(kind).cross_entropy_loss::<Tensor>(
                &labels,
                None,
                Reduction::Mean,
                -100,
                0.0,
            );
            // The global batch's mean loss: what one process with batch world * b would see.
            let (mut lv, mut n) = (loss.double_value(&[]), chunk.len() as f64);
            if let Some(pg) = ranks.pg() {
                let t = Tensor::from_slice(&[lv * n, n]);
                pg.all_reduce_sum(&[&t])?;
                n = t.double_value(&[1]);
                lv = t.double_value(&[0]) / n;
            }
            tracing::debug!(epoch, step = meta.steps, loss = lv, "step");
            if !lv.is_finite() {
                tracing::warn!(
                    epoch,
                    step = meta.steps,
                    "non-finite loss {lv}: the run diverged"
                );
                diverged = true;
                break;
            }
            Sgd::zero_grad(&trainable);
            // With a process group, the reducer all-reduces gradients bucket by bucket during this.
            loss.f_backward()
                .context("backward pass (with its gradient all-reduce) failed")?;
            sgd.step(&trainable, lr);
            meta.steps += 1;
            first_step_at.get_or_insert_with(unix_ms);
            loss_sum += lv * n;
            seen += n as usize;
            if let Some(pb) = &bar {
                pb.inc(1);
                pb.set_message(format!(
                    "loss {:.4} lr {lr:.2e} {:.1} img/s",
                    loss_sum / seen as f64,
                    seen as f64 / t0.elapsed().as_secs_f64()
                ));
            }
        }
        let train_seconds = t0.elapsed().as_secs_f64();
        let evaluate_now = diverged || epoch % cfg.eval_interval == 0 || epoch == cfg.epochs;
        if evaluate_now {
            let ev = evaluate(
                &net,
                &data.test,
                device,
                cfg.eval_batch_size as usize,
                cfg.bf16,
                kind,
                ranks.pg(),
            )?;
            let s = ev.confusion.scores();
            let m = EpochMetrics {
                epoch,
                lr,
                train_loss: if diverged {
                    f64::NAN
                } else {
                    loss_sum / seen.max(1) as f64
                },
                test_loss: if diverged { f64::NAN } else { ev.loss },
                accuracy: s.accuracy,
                precision: s.precision,
                recall: s.recall,
                f1: s.f1,
                images_per_sec: seen as f64 / train_seconds,
                seconds: t0.elapsed().as_secs_f64(),
            };
            if main {
                if cfg.save_predictions {
                    write_predictions(&data.test, &ev.predictions, &out.join(PREDICTIONS_FILE))?;
                }
                append_metrics(&m, &metrics_path)?;
                match &bar {
                    Some(pb) => pb.println(format!(
                        "epoch {epoch}: train loss {:.4}, test loss {:.4}, accuracy {:.2}%, lr {lr:.2e}, {:.1} img/s",
                        m.train_loss,
                        m.test_loss,
                        100.0 * m.accuracy,
                        m.images_per_sec
                    )),
                    None => tracing::info!(
                        epoch,
                        train_loss = m.train_loss,
                        test_loss = m.test_loss,
                        accuracy = m.accuracy,
                        lr,
                        images_per_sec = m.images_per_sec,
                        "epoch done"
                    ),
                }
                on_epoch(&m);
            }
            meta.history.push(m);
        }
        if diverged {
            status = Status::Diverged;
            if main {
                let _ = std::fs::remove_file(&resume_path);
            }
            break;
        }
        meta.epoch = epoch;
        if main {
            checkpoint::save_weights(&params, meta.steps, &out.join(WEIGHTS_FILE))?;
            checkpoint::save_resume(&params, &sgd.buffers, &meta, &resume_path)?;
        }
        // Ranks stop together: a signal seen by any of them stops all after this committed epoch.
        let mut stopping = stop.load(Ordering::SeqCst);
        if let Some(pg) = ranks.pg() {
            let t = Tensor::from_slice(&[stopping as i64]);
            pg.all_reduce_sum(&[&t])?;
            stopping = t.int64_value(&[0]) > 0;
        }
        if stopping && epoch < cfg.epochs {
            tracing::info!(epoch, "stopping after a committed epoch (signal)");
            status = Status::Interrupted;
            break;
        }
    }
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }
    let rank_param_max_diff = match ranks.pg() {
        Some(pg) if ranks.world > 1 => Some(param_spread(pg, &params)?),
        _ => None,
    };

    let summary = summary_of(
        status,
        meta.epoch,
        meta.history.last().cloned(),
        first_step_at,
        rank_param_max_diff,
    );
    if main && status != Status::Interrupted {
        write_json_atomic(&summary, &summary_path)?;
    }
    Ok(summary)
}

fn barrier(g: Option<&ProcessGroup>) -> Result<()> {
    g.map_or(Ok(()), ProcessGroup::barrier)
}

/// Rank 0's reading of `out`: a fresh run, a resume (state loaded), a finished run, or a refusal.
#[allow(clippy::type_complexity)]
fn inspect_out(
    summary_path: &Path,
    resume_path: &Path,
    fp: &serde_json::Value,
    out: &Path,
    params: &Params,
    sgd: &mut Sgd,
    meta: &mut ResumeMeta,
) -> (i64, Option<Summary>, Option<anyhow::Error>) {
    let result = (|| -> Result<(i64, Option<Summary>)> {
        if summary_path.exists() && !resume_path.exists() {
            // A diverged run keeps no resume state: starting it again would only diverge again.
            let done: Summary = serde_json::from_slice(&std::fs::read(summary_path)?)?;
            if fingerprint(&done.config, done.world_size as usize)? == *fp {
                tracing::info!(status = ?done.status, "run already finished in {}", out.display());
                return Ok((FINISHED, Some(done)));
            }
            bail!(
                "{} holds a finished run with another configuration; use another --out",
                out.display()
            );
        }
        if resume_path.exists() {
            *meta = checkpoint::load_resume(params, &mut sgd.buffers, resume_path)?;
            if meta.config != *fp {
                bail!(
                    "{} holds a run with another configuration; use another --out",
                    out.display()
                );
            }
            tracing::info!(epoch = meta.epoch, "resuming after epoch {}", meta.epoch);
            return Ok((RESUMED, None));
        }
        Ok((FRESH, None))
    })();
    match result {
        Ok((code, done)) => (code, done, None),
        Err(e) => (REFUSED, None, Some(e)),
    }
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
