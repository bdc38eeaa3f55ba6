//! The epoch loop of one run. It reports each evaluated epoch through a callback and writes its files
//! under `out`; it knows nothing of HTTP or of the coordinator.
use crate::augment::{self, EpochPlan};
use crate::checkpoint::{self, Params, ResumeMeta, RESUME_FILE, WEIGHTS_FILE};
use crate::config::TrainConfig;
use crate::data::{self, Split};
use crate::metrics::{Confusion, EpochMetrics};
use crate::model::{self, SeedNet};
use crate::optim::{LrSchedule, Sgd};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
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
const RESUME_NEUTRAL: [&str; 6] = [
    "threads",
    "save_predictions",
    "data_dir",
    "data_url",
    "data_md5",
    "init_from",
];

fn fingerprint(cfg: &TrainConfig) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(cfg)?;
    if let Some(m) = v.as_object_mut() {
        for k in RESUME_NEUTRAL {
            m.remove(k);
        }
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
pub struct Evaluation {
    pub loss: f64,
    pub confusion: Confusion,
    pub predictions: Vec<i64>,
}

pub fn evaluate(
    model: &SeedNet,
    split: &Split,
    device: Device,
    batch: usize,
    bf16: bool,
) -> Result<Evaluation> {
    let n = split.len();
    let mut confusion = Confusion::new(10);
    let mut predictions = Vec::with_capacity(n);
    let mut loss_sum = 0.0;
    tch::no_grad(|| -> Result<()> {
        for start in (0..n).step_by(batch) {
            let len = batch.min(n - start) as i64;
            let x = augment::normalize_u8(&split.images.narrow(0, start as i64, len), device);
            let y = split.labels.narrow(0, start as i64, len);
            let logits = autocast(bf16, || model.forward_t(&x, false))?
                .to_kind(Kind::Float)
                .to_device(Device::Cpu);
            let loss = logits.cross_entropy_loss::<Tensor>(&y, None, Reduction::Sum, -100, 0.0);
            loss_sum += loss.double_value(&[]);
            let pred: Vec<i64> = Vec::try_from(&logits.argmax(-1, false))?;
            let truth: Vec<i64> = Vec::try_from(&y)?;
            confusion.add(&truth, &pred);
            predictions.extend(pred);
        }
        Ok(())
    })?;
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

/// Runs (or resumes) the training run configured by `cfg` with its files in `out`, calling
/// `on_epoch` after each evaluated epoch has been written. Errors are crashes; a non-finite loss is
/// a result (`Status::Diverged`).
pub fn run(
    cfg: &TrainConfig,
    out: &Path,
    on_epoch: &mut dyn FnMut(&EpochMetrics),
) -> Result<Summary> {
    cfg.validate()?;
    let started = Instant::now();
    let device = parse_device(&cfg.device)?;
    if let Device::Cuda(i) = device {
        if !tch::Cuda::is_available() || i >= tch::Cuda::device_count() as usize {
            bail!(
                "--device {}: no such CUDA device is visible (found {})",
                cfg.device,
                tch::Cuda::device_count()
            );
        }
    }
    if let Some(t) = cfg.threads {
        tch::set_num_threads(t as i32);
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create --out {}", out.display()))?;
    let summary_path = out.join(SUMMARY_FILE);
    let metrics_path = out.join(METRICS_FILE);
    let resume_path = out.join(RESUME_FILE);

    let data = data::load(cfg)?;
    tracing::info!(
        train = data.train.len(),
        test = data.test.len(),
        "data loaded"
    );

    // Model init is the one use of libtorch's generator; data randomness has its own (augment.rs).
    tch::manual_seed(cfg.seed as i64);
    let vs = nn::VarStore::new(device);
    let mut net = SeedNet::new(&vs.root(), &cfg.model());
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

    let fp = fingerprint(cfg)?;
    let mut meta = ResumeMeta {
        epoch: 0,
        steps: 0,
        history: vec![],
        config: fp.clone(),
        rng: "chacha8(seed, stream=epoch)".into(),
    };
    if summary_path.exists() && !resume_path.exists() {
        // A diverged run keeps no resume state: starting it again would only diverge again.
        let done: Summary = serde_json::from_slice(&std::fs::read(&summary_path)?)?;
        if fingerprint(&done.config)? == fp {
            tracing::info!(status = ?done.status, "run already finished in {}", out.display());
            return Ok(done);
        }
        bail!(
            "{} holds a finished run with another configuration; use another --out",
            out.display()
        );
    }
    if resume_path.exists() {
        meta = checkpoint::load_resume(&params, &mut sgd.buffers, &resume_path)?;
        if meta.config != fp {
            bail!(
                "{} holds a run with another configuration; use another --out",
                out.display()
            );
        }
        tracing::info!(epoch = meta.epoch, "resuming after epoch {}", meta.epoch);
    }
    // The resume state is the commit point: drop metric lines written after it.
    write_metrics_file(&meta.history, &metrics_path)?;

    let n_train = data.train.len();
    let bs = cfg.batch_size as usize;
    let steps_per_epoch = n_train.div_ceil(bs);
    let bar = std::io::stderr().is_terminal().then(|| {
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
        for start in (0..n_train).step_by(bs) {
            let end = (start + bs).min(n_train);
            let idx = Tensor::from_slice(&plan.order[start..end]);
            let images = data.train.images.index_select(0, &idx);
            let labels = data.train.labels.index_select(0, &idx).to_device(device);
            let x = augment::augment(&images, &plan.aug[start..end], device);
            let logits = autocast(cfg.bf16, || net.forward_t(&x, true))?;
            let loss = logits
                .to_kind(Kind::Float)
                .cross_entropy_for_logits(&labels);
            let lv = loss.double_value(&[]);
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
            loss.backward();
            sgd.step(&trainable, lr);
            meta.steps += 1;
            first_step_at.get_or_insert_with(unix_ms);
            loss_sum += lv * (end - start) as f64;
            seen += end - start;
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
            if cfg.save_predictions {
                write_predictions(&data.test, &ev.predictions, &out.join(PREDICTIONS_FILE))?;
            }
            append_metrics(&m, &metrics_path)?;
            meta.history.push(m.clone());
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
        if diverged {
            status = Status::Diverged;
            let _ = std::fs::remove_file(&resume_path);
            break;
        }
        meta.epoch = epoch;
        checkpoint::save_weights(&params, meta.steps, &out.join(WEIGHTS_FILE))?;
        checkpoint::save_resume(&params, &sgd.buffers, &meta, &resume_path)?;
        if stop.load(Ordering::SeqCst) && epoch < cfg.epochs {
            tracing::info!(epoch, "stopping after a committed epoch (signal)");
            status = Status::Interrupted;
            break;
        }
    }
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }

    let summary = Summary {
        status,
        epochs_completed: meta.epoch,
        final_metrics: meta.history.last().cloned(),
        config: cfg.clone(),
        parameters: n_params,
        device: format!("{device:?}"),
        seed: cfg.seed,
        world_size: 1,
        git_commit: env!("SEED_GIT_COMMIT").to_string(),
        threads: tch::get_num_threads(),
        wall_seconds: started.elapsed().as_secs_f64(),
        first_step_at,
    };
    if status != Status::Interrupted {
        write_json_atomic(&summary, &summary_path)?;
    }
    Ok(summary)
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
