//! `worker bench-ddp`: all-reduce bandwidth and the cost of a DDP training step (reducer and
//! SyncBatchNorm) against the same step without DDP. Not a test: figures for the README.
use super::launch::{self, RankEnv};
use super::{Backend, ProcessGroup};
use crate::checkpoint::Params;
use crate::model::{ModelConfig, SeedNet};
use crate::optim::Sgd;
use anyhow::{Context, Result};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tch::{nn, Device, Kind, Tensor};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchDdpArgs {
    /// Ranks to launch on this machine. With --no-ddp: one plain process.
    #[arg(long, default_value_t = 2)]
    pub nproc: usize,
    /// The same step with no process group at all (the baseline).
    #[arg(long)]
    pub no_ddp: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Default: the backend for the device (nccl on CUDA, gloo on CPU).
    #[arg(long)]
    pub backend: Option<String>,
    /// All-reduce message sizes, MiB (float32).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub sizes_mb: Vec<usize>,
    /// Skip the all-reduce table.
    #[arg(long)]
    pub no_allreduce: bool,
    /// Per-rank batch of the training-step measurement (0: skip it).
    #[arg(long, default_value_t = 32)]
    pub batch_size: i64,
    /// `full` (the study's network) or `tiny`.
    #[arg(long, default_value = "full")]
    pub model: String,
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Intra-op threads per rank (default: cores / ranks).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(a: &BenchDdpArgs) -> Result<()> {
    let env = RankEnv::from_env()?;
    if env.is_none() && !a.no_ddp {
        let code = launch::launch(&launch::LaunchPlan {
            nproc_per_node: a.nproc,
            nnodes: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 0,
        })?;
        anyhow::ensure!(code == 0, "a rank failed (exit {code})");
        return Ok(());
    }
    let device = crate::train::parse_device(&a.device)?;
    let local_world = env.as_ref().map_or(1, |e| e.local_world);
    tch::set_num_threads(a.threads.unwrap_or(launch::threads_per_rank(local_world)) as i32);
    let pg = match &env {
        Some(e) => Some(ProcessGroup::from_env(
            e,
            Backend::choose(a.backend.as_deref(), device)?,
            Duration::from_secs(300),
            device,
        )?),
        None => None,
    };
    let rank = pg.as_ref().map_or(0, |g| g.rank());
    // Only rank 0 prints.
    let say = |s: String| {
        if rank == 0 {
            println!("{s}");
        }
    };
    let mode = match &pg {
        None => "no DDP".to_string(),
        Some(g) => format!("DDP world {}", g.world()),
    };
    say(format!(
        "# {mode}, {} thread(s) per rank, device {}",
        tch::get_num_threads(),
        a.device
    ));
    if let (Some(g), false) = (&pg, a.no_allreduce) {
        all_reduce_table(a, g, device, &say)?;
    }
    if a.batch_size > 0 {
        training_step(a, pg, device, &say)?;
    }
    Ok(())
}

/// All-reduce time and bandwidth at each of `--sizes-mb`.
fn all_reduce_table(
    a: &BenchDdpArgs,
    g: &ProcessGroup,
    device: Device,
    say: &dyn Fn(String),
) -> Result<()> {
    let world = g.world();
    say("| MiB | ms per all-reduce | algbw GB/s | busbw GB/s |".into());
    say("| ---: | ---: | ---: | ---: |".into());
    for &mb in &a.sizes_mb {
        let t = Tensor::ones([(mb * 1024 * 1024 / 4) as i64], (Kind::Float, device));
        let iters = (64 / mb.max(1)).clamp(5, 50);
        for _ in 0..3 {
            g.all_reduce_sum(&[&t])?;
        }
        g.barrier()?;
        let t0 = Instant::now();
        for _ in 0..iters {
            g.all_reduce_sum(&[&t])?;
        }
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        let secs = t0.elapsed().as_secs_f64() / iters as f64;
        let alg = (mb * 1024 * 1024) as f64 / secs / 1e9;
        // NCCL-tests' bus bandwidth: what each link carries in a ring all-reduce.
        let bus = alg * 2.0 * (world as f64 - 1.0) / world as f64;
        say(format!(
            "| {mb} | {:.2} | {alg:.2} | {bus:.2} |",
            secs * 1e3
        ));
    }
    Ok(())
}

/// The time of one training step of the network on random data, gradients averaged by the reducer.
fn training_step(
    a: &BenchDdpArgs,
    pg: Option<ProcessGroup>,
    device: Device,
    say: &dyn Fn(String),
) -> Result<()> {
    let world = pg.as_ref().map_or(1, |g| g.world());
    let cfg = match a.model.as_str() {
        "full" => ModelConfig::default(),
        "tiny" => ModelConfig::tiny(),
        m => anyhow::bail!("--model must be full or tiny, got {m:?}"),
    };
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let net = SeedNet::new(&vs.root(), &cfg);
    let params = Params::of(&vs);
    let trainable = params.trainable_tensors();
    let mut sgd = Sgd::new(trainable.len(), 0.9, 1e-4);
    let pg = match pg {
        Some(mut g) => {
            g.sync_gradients(&trainable, 25)?;
            let g = Rc::new(g);
            if world > 1 {
                net.use_sync_batch_norm(g.clone());
            }
            Some(g)
        }
        None => None,
    };
    let x = Tensor::randn([a.batch_size, 3, 32, 32], (Kind::Float, device));
    let y = Tensor::randint(10, [a.batch_size], (Kind::Int64, device));
    let mut step = || -> Result<()> {
        if let Some(g) = &pg {
            g.prepare_step()?;
        }
        let loss = net.try_forward_t(&x, true)?.cross_entropy_for_logits(&y);
        Sgd::clear_grads(&trainable)?;
        loss.f_backward().context("backward")?;
        sgd.step(&trainable, 1e-3)?;
        Ok(())
    };
    for _ in 0..2 {
        step()?;
    }
    if let Some(g) = &pg {
        g.barrier()?;
    }
    let t0 = Instant::now();
    for _ in 0..a.steps {
        step()?;
    }
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
    let secs = t0.elapsed().as_secs_f64() / a.steps as f64;
    say(format!(
        "step ({} model, batch {} per rank, {world} rank(s)): {:.1} ms, {:.1} images/s in total",
        a.model,
        a.batch_size,
        secs * 1e3,
        (a.batch_size as usize * world) as f64 / secs
    ));
    Ok(())
}
