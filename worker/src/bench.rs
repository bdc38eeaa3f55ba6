//! Throughput of the full network beside PyTorch eager (`torch_throughput.py`), same machine, same
//! thread count, same pattern: random CIFAR-shaped batches, cross-entropy, SGD(momentum, wd) steps.
use crate::checkpoint::Params;
use crate::model::{ModelConfig, SeedNet};
use crate::optim::Sgd;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    pub batch_sizes: Vec<i64>,
    #[arg(long, default_value_t = 512)]
    pub eval_batch: i64,
    /// Seconds of timed steps per row (after 2 warm-up steps, at least 3 steps).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    #[arg(long)]
    pub channels_last: bool,
    #[arg(long)]
    pub bf16: bool,
    /// PyTorch's side: the reference script, run with this Python in the same command.
    #[arg(long, default_value = "../shared/reference/torch_throughput.py")]
    pub reference: PathBuf,
    #[arg(long, default_value = ".venv/bin/python")]
    pub python: PathBuf,
    /// Measure only the Rust side.
    #[arg(long)]
    pub no_reference: bool,
    /// Alternate the two sides this many times (Rust, PyTorch, Rust, ...) and report each row's
    /// median and the range of the per-round ratios: a shared machine drifts by more than the
    /// difference between two runs of the same kernels.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Also count ATen ops and blocking syncs per training step, ours and PyTorch's (its GPU
    /// default: foreach SGD, gradients set to None), with `--ops-script`.
    #[arg(long)]
    pub ops: bool,
    #[arg(long, default_value = "scripts/torch_ops.py")]
    pub ops_script: PathBuf,
    /// With `--ops`: also list the top-level ops by name at the first batch size, ours beside
    /// PyTorch's (where the counts differ, and by how much).
    #[arg(long, requires = "ops")]
    pub op_names: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub mode: String,
    pub batch: i64,
    pub steps: usize,
    pub images_per_sec: f64,
}

fn timed(seconds: f64, device: Device, mut step: impl FnMut()) -> (usize, f64) {
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    for _ in 0..2 {
        step();
    }
    sync();
    let t0 = Instant::now();
    let mut n = 0;
    while n < 3 || t0.elapsed().as_secs_f64() < seconds {
        step();
        n += 1;
    }
    sync();
    (n, t0.elapsed().as_secs_f64())
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The full network with SGD(momentum 0.9, wd 1e-4), as both benchmarks train it.
struct BenchNet {
    /// Owns the variables `net` and `trainable` use.
    _vs: nn::VarStore,
    net: SeedNet,
    trainable: Vec<Tensor>,
    sgd: Sgd,
}

impl BenchNet {
    fn new(device: Device, channels_last: bool) -> Self {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(device);
        let mut net = SeedNet::new(&vs.root(), &ModelConfig::default());
        let trainable = Params::of(&vs).trainable_tensors();
        if channels_last {
            net.use_channels_last(&vs);
        }
        let sgd = Sgd::new(trainable.len(), 0.9, 1e-4);
        BenchNet {
            _vs: vs,
            net,
            trainable,
            sgd,
        }
    }

    /// One training step on (x, y): gradients cleared, forward, cross-entropy, backward, SGD.
    fn step(&mut self, x: &Tensor, y: &Tensor, bf16_on: bool) {
        Sgd::clear_grads(&self.trainable).expect("gradients cleared");
        let logits = bf16(bf16_on, x.device(), || self.net.forward_t(x, true));
        // Under bf16 the loss is taken in fp32; in fp32 there is nothing to convert.
        let logits = if bf16_on {
            logits.to_kind(Kind::Float)
        } else {
            logits
        };
        // One op, as F.cross_entropy (tch's cross_entropy_for_logits is log_softmax + nll_loss).
        logits
            .cross_entropy_loss::<Tensor>(y, None, tch::Reduction::Mean, -100, 0.0)
            .backward();
        self.sgd.step(&self.trainable, 1e-2).expect("an SGD step");
    }
}

pub fn rust_rows(a: &BenchArgs) -> Result<(Vec<Row>, Option<f64>)> {
    let device = crate::train::parse_device(&a.device)?;
    tch::set_num_threads(a.threads as i32);
    let mut model = BenchNet::new(device, a.channels_last);
    let mut rows = Vec::new();
    for &bs in &a.batch_sizes {
        let x = Tensor::randn([bs, 3, 32, 32], (Kind::Float, device));
        let y = Tensor::randint(10, [bs], (Kind::Int64, device));
        let (n, dt) = timed(a.seconds, device, || model.step(&x, &y, a.bf16));
        rows.push(Row {
            mode: "train".into(),
            batch: bs,
            steps: n,
            images_per_sec: n as f64 * bs as f64 / dt,
        });
    }
    let rss = peak_rss_mib();
    let x = Tensor::randn([a.eval_batch, 3, 32, 32], (Kind::Float, device));
    let (n, dt) = timed(a.seconds, device, || {
        let _ = tch::no_grad(|| {
            bf16(a.bf16, device, || model.net.forward_t(&x, false)).argmax(-1, false)
        });
    });
    rows.push(Row {
        mode: "eval".into(),
        batch: a.eval_batch,
        steps: n,
        images_per_sec: n as f64 * a.eval_batch as f64 / dt,
    });
    Ok((rows, rss))
}

fn bf16<T>(on: bool, device: Device, f: impl FnOnce() -> T) -> T {
    crate::train::autocast(on, device, f).expect("bf16 autocast")
}

fn torch_rows(a: &BenchArgs) -> Result<Vec<Row>> {
    let json = std::env::temp_dir().join(format!("torch-throughput-{}.json", std::process::id()));
    let bs: Vec<String> = a.batch_sizes.iter().map(|b| b.to_string()).collect();
    let mut cmd = std::process::Command::new(&a.python);
    cmd.arg(&a.reference)
        .args([
            "--device",
            &a.device,
            "--threads",
            &a.threads.to_string(),
            "--batch-sizes",
            &bs.join(","),
        ])
        .args([
            "--eval-batch",
            &a.eval_batch.to_string(),
            "--seconds",
            &a.seconds.to_string(),
        ])
        .arg("--json")
        .arg(&json);
    if a.bf16 {
        cmd.arg("--bf16");
    }
    if a.channels_last {
        cmd.arg("--channels-last");
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", a.python.display()))?;
    anyhow::ensure!(
        status.success(),
        "{} {} failed",
        a.python.display(),
        a.reference.display()
    );
    let rows = serde_json::from_slice(&std::fs::read(&json)?)?;
    let _ = std::fs::remove_file(&json);
    Ok(rows)
}

/// Ops per step. Ours twice: the model step alone (what PyTorch's step is) and the trainer's whole
/// step (data gather, augmentation and the loss tally too); each also by op name.
#[derive(Debug, Clone)]
struct OpsRow {
    batch: i64,
    model: crate::shim::OpCount,
    trainer: crate::shim::OpCount,
    model_names: Vec<(String, i64)>,
    trainer_names: Vec<(String, i64)>,
}

/// PyTorch's side of a row: (batch, ops, syncs, ops by name).
type TorchOps = (i64, i64, i64, Vec<(String, i64)>);

fn rust_ops(a: &BenchArgs) -> Result<Vec<OpsRow>> {
    let device = crate::train::parse_device(&a.device)?;
    let mut net = BenchNet::new(device, false);
    let mut rows = vec![];
    for &bs in &a.batch_sizes {
        let x = Tensor::randn([bs, 3, 32, 32], (Kind::Float, device));
        let y = Tensor::randint(10, [bs], (Kind::Int64, device));
        // Two steps first: momentum buffers exist from then on, as in a long run.
        net.step(&x, &y, false);
        net.step(&x, &y, false);
        let ((), model) = crate::shim::count_ops(|| net.step(&x, &y, false))?;
        let model_names = crate::shim::counted_op_names();
        let cfg = crate::config::TrainConfig {
            dataset: crate::config::DatasetKind::Synthetic,
            batch_size: bs as u32,
            limit_train: Some(3 * bs as usize),
            limit_test: Some(10),
            device: a.device.clone(),
            ..Default::default()
        };
        let trainer = crate::train::count_step_ops(&cfg)?;
        rows.push(OpsRow {
            batch: bs,
            model,
            trainer,
            model_names,
            trainer_names: crate::shim::counted_op_names(),
        });
    }
    Ok(rows)
}

/// PyTorch's counts, from `--ops-script` run with `--python`.
fn torch_ops(a: &BenchArgs) -> Result<Vec<TorchOps>> {
    let bs: Vec<String> = a.batch_sizes.iter().map(|b| b.to_string()).collect();
    let reference = a.reference.parent().unwrap_or(std::path::Path::new("."));
    let out = std::process::Command::new(&a.python)
        .arg(&a.ops_script)
        .arg("--reference")
        .arg(reference)
        .args([
            "--batch-sizes",
            &bs.join(","),
            "--threads",
            &a.threads.to_string(),
            "--names",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", a.python.display()))?;
    anyhow::ensure!(out.status.success(), "{} failed", a.ops_script.display());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    Ok(rows
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_i64().unwrap_or(-1);
            let names = r["names"].as_object().map_or(vec![], |m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(0)))
                    .collect()
            });
            (n("batch"), n("ops"), n("syncs"), names)
        })
        .collect())
}

fn print_ops(a: &BenchArgs) -> Result<()> {
    let ours = rust_ops(a)?;
    let theirs = if a.no_reference {
        vec![]
    } else {
        torch_ops(a)?
    };
    println!(
        "\nATen ops and blocking syncs per training step, device {}",
        a.device
    );
    println!("(top-level aten:: ops as torch.profiler's tree shows them; syncs: _local_scalar_dense, nonzero)");
    println!("| mode | batch | Rust ops/step | PyTorch ops/step | Rust syncs/step | PyTorch syncs/step |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &ours {
        let peer = theirs.iter().find(|t| t.0 == r.batch);
        let (po, ps) = peer.map_or(("-".into(), "-".into()), |t| {
            (t.1.to_string(), t.2.to_string())
        });
        println!(
            "| model step | {} | {} | {po} | {} | {ps} |",
            r.batch, r.model.top, r.model.syncs
        );
        println!(
            "| trainer step | {} | {} | {po} | {} | {ps} |",
            r.batch, r.trainer.top, r.trainer.syncs
        );
    }
    if let (true, Some(first)) = (a.op_names, ours.first()) {
        let peer = theirs.iter().find(|t| t.0 == first.batch);
        print_op_names(first, peer.map_or(&[][..], |t| &t.3[..]));
    }
    Ok(())
}

/// Top-level ops by name at one batch size, ours beside PyTorch's, the rows that differ first.
fn print_op_names(ours: &OpsRow, theirs: &[(String, i64)]) {
    let count = |list: &[(String, i64)], name: &str| {
        list.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c)
    };
    let mut names: Vec<&str> = ours
        .model_names
        .iter()
        .chain(&ours.trainer_names)
        .chain(theirs)
        .map(|(n, _)| n.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut rows: Vec<(&str, i64, i64, i64)> = names
        .into_iter()
        .map(|n| {
            let (m, t) = (count(&ours.model_names, n), count(&ours.trainer_names, n));
            (n, m, t, count(theirs, n))
        })
        .collect();
    rows.sort_by_key(|&(n, m, t, p)| (-(m - p).abs(), -t.max(p), n));
    println!("\nTop-level ops by name, batch {}", ours.batch);
    println!("| op | Rust model step | Rust trainer step | PyTorch step | model - PyTorch |");
    println!("|---|---:|---:|---:|---:|");
    for (n, m, t, p) in rows {
        println!("| {n} | {m} | {t} | {p} | {:+} |", m - p);
    }
}

pub fn run(a: &BenchArgs) -> Result<()> {
    print_throughput(a)?;
    if a.ops {
        print_ops(a)?;
    }
    Ok(())
}

fn print_throughput(a: &BenchArgs) -> Result<()> {
    let (mut ours, mut theirs, mut rss) = (vec![], vec![], None);
    for round in 1..=a.rounds {
        if a.rounds > 1 {
            eprintln!("round {round} of {}", a.rounds);
        }
        let (rows, peak) = rust_rows(a)?;
        ours.push(rows);
        rss = rss.or(peak);
        if !a.no_reference {
            theirs.push(torch_rows(a)?);
        }
    }
    println!(
        "\nSeedNet throughput, device {}, {} threads, channels_last {}, bf16 {}, {} round(s)",
        a.device, a.threads, a.channels_last, a.bf16, a.rounds
    );
    println!("| mode | batch | Rust (tch) images/s | PyTorch eager images/s | ratio | ratio per round (min-max) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &ours[0] {
        let rate = |rows: &[Row]| {
            rows.iter()
                .find(|t| t.mode == r.mode && t.batch == r.batch)
                .map(|t| t.images_per_sec)
        };
        let mine: Vec<f64> = ours.iter().filter_map(|rows| rate(rows)).collect();
        let peer: Vec<f64> = theirs.iter().filter_map(|rows| rate(rows)).collect();
        let (m, p) = (median(&mine), median(&peer));
        let per_round: Vec<f64> = mine.iter().zip(&peer).map(|(m, p)| m / p).collect();
        let (lo, hi) = per_round.iter().fold((f64::INFINITY, 0f64), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        });
        let (p, ratio, range) = match p {
            Some(p) => (
                format!("{p:.1}"),
                format!("{:.2}x", m.unwrap_or(0.0) / p),
                format!("{lo:.2}x-{hi:.2}x"),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {:.1} | {p} | {ratio} | {range} |",
            r.mode,
            r.batch,
            m.unwrap_or(0.0)
        );
    }
    if let Some(mib) = rss {
        println!("peak RSS of the Rust process after the training rows: {mib:.0} MiB");
    }
    Ok(())
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(super::median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(super::median(&[]), None);
    }
}
