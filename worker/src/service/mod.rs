//! `worker run`: turns this machine into capacity for a coordinator. It claims jobs while it has
//! free devices, runs each as `worker train` child processes under a supervisor thread (the parent
//! never builds a model, so a crashing child cannot take it down), and claims the next.
pub mod client;
pub mod job;
pub mod slots;

use anyhow::{bail, Result};
use client::Coordinator;
use slots::{DeviceKind, Slots};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The coordinator, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "SWEEP_SERVER")]
    pub server: String,
    #[arg(long, env = "SWEEP_TOKEN", hide_env_values = true)]
    pub token: String,
    /// GPUs to use, e.g. 0,1 (one rank per GPU).
    #[arg(long, value_delimiter = ',', conflicts_with = "cpu_ranks")]
    pub gpus: Vec<usize>,
    /// CPU rank slots (the cores are split between them); default when no --gpus: 1.
    #[arg(long)]
    pub cpu_ranks: Option<usize>,
    /// Jobs that may share one device (packing of small-batch jobs).
    #[arg(long, default_value_t = 1)]
    pub slots_per_device: usize,
    /// Largest per-process batch size that may share a device.
    #[arg(long, default_value_t = 64)]
    pub pack_max_batch: i64,
    /// Where jobs' outputs live while they run.
    #[arg(long, default_value = "runs")]
    pub work_dir: PathBuf,
    /// This machine's CIFAR-10 directory, passed to every job (data location is the machine's
    /// business). A sweep's `data_dir` names a directory below it (relative, never `..`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where jobs fetch CIFAR-10 from when their data directory is empty (the worker's setting,
    /// never a sweep's).
    #[arg(long, default_value = crate::data::CIFAR10_URL)]
    pub data_url: String,
    /// Expected md5 of that archive.
    #[arg(long, default_value = crate::data::CIFAR10_MD5)]
    pub data_md5: String,
    /// Name reported to the coordinator (default: hostname-pid).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value_t = 5.0)]
    pub heartbeat_seconds: f64,
    /// Seconds between claims while idle.
    #[arg(long, default_value_t = 1.0)]
    pub idle_seconds: f64,
    /// Exit once the coordinator has no pending or running job left (for scripts and tests).
    #[arg(long)]
    pub exit_when_idle: bool,
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

struct Running {
    progress: Arc<Mutex<job::Progress>>,
    thread: std::thread::JoinHandle<()>,
}

pub fn run(a: &RunArgs) -> Result<()> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kinds: Vec<DeviceKind> = if a.gpus.is_empty() {
        (0..a.cpu_ranks.unwrap_or(1)).map(DeviceKind::Cpu).collect()
    } else {
        a.gpus.iter().map(|&g| DeviceKind::Gpu(g)).collect()
    };
    if kinds.is_empty() {
        bail!("--cpu-ranks must be at least 1");
    }
    let mut slots = Slots::new(kinds, a.slots_per_device, a.pack_max_batch, cores);
    let name = a.name.clone().unwrap_or_else(default_name);
    let coord = Coordinator::new(&a.server, &a.token);
    let stopping = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stopping.clone())?;
    }
    let opts = job::JobOptions {
        exe: std::env::current_exe()?,
        work_dir: a.work_dir.clone(),
        data_dir: a.data_dir.clone(),
        data_url: a.data_url.clone(),
        data_md5: a.data_md5.clone(),
        heartbeat: Duration::from_secs_f64(a.heartbeat_seconds),
        poll: Duration::from_millis(200),
    };
    std::fs::create_dir_all(&a.work_dir)?;
    tracing::info!(%name, server = %a.server, cores, "worker started");
    let tty = std::io::stderr().is_terminal();
    let mut running: HashMap<i64, Running> = HashMap::new();
    let mut last_line = Instant::now();
    let mut claim_after = Instant::now();
    loop {
        // Reap finished supervisors and free their devices.
        let done: Vec<i64> = running
            .iter()
            .filter(|(_, r)| r.thread.is_finished())
            .map(|(&id, _)| id)
            .collect();
        for id in done {
            if let Some(r) = running.remove(&id) {
                let _ = r.thread.join();
                slots.release(id);
                let p = r.progress.lock().expect("not poisoned");
                tracing::info!(
                    job = id,
                    epoch = p.epoch,
                    outcome = p.done.as_deref().unwrap_or("?"),
                    "job ended"
                );
            }
        }
        let stop = stopping.load(Ordering::SeqCst);
        if stop && running.is_empty() {
            tracing::info!("stopped");
            return Ok(());
        }
        let mut claimed_any = false;
        if !stop && Instant::now() >= claim_after {
            for ask in slots.asks() {
                match coord.claim(&name, ask.ranks, ask.max_batch_size) {
                    Ok(Some(claim)) => {
                        let shape = protocol::JobShape::of_value(&claim.params);
                        let (batch, nproc) =
                            (shape.batch_size, shape.nproc_per_node.max(1) as usize);
                        let Some(placement) = slots.place(claim.id, nproc, batch) else {
                            // The coordinator honoured our capacity, so this does not happen; give it back.
                            let _ =
                                coord.release(claim.id, claim.attempt, "did not fit this worker");
                            continue;
                        };
                        tracing::info!(job = claim.id, attempt = claim.attempt, ?placement, params = %claim.params, "claimed");
                        let progress = Arc::new(Mutex::new(job::Progress::default()));
                        let sup = job::Supervisor::new(
                            claim.clone(),
                            coord.clone(),
                            opts.clone(),
                            progress.clone(),
                        );
                        let stopping = stopping.clone();
                        let thread = std::thread::spawn(move || sup.run(placement, stopping));
                        running.insert(claim.id, Running { progress, thread });
                        claimed_any = true;
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "claim failed");
                        break;
                    }
                }
            }
            if !claimed_any {
                claim_after = Instant::now() + Duration::from_secs_f64(a.idle_seconds);
                // Idle means the coordinator has nothing left, not merely nothing for us right now: a
                // job leased to a worker that died comes back when its lease runs out.
                if a.exit_when_idle
                    && running.is_empty()
                    && !slots.busy()
                    && coord.unfinished_jobs().is_ok_and(|n| n == 0)
                {
                    tracing::info!("nothing left to do: exiting (--exit-when-idle)");
                    return Ok(());
                }
            }
        }
        if last_line.elapsed() >= Duration::from_secs(if tty { 2 } else { 30 })
            && !running.is_empty()
        {
            last_line = Instant::now();
            for (id, r) in &running {
                let p = r.progress.lock().expect("not poisoned");
                let acc = p
                    .accuracy
                    .map(|x| format!("{:.2}%", 100.0 * x))
                    .unwrap_or_else(|| "-".into());
                if tty {
                    eprintln!("job {id}: epoch {}/{} accuracy {acc}", p.epoch, p.epochs);
                } else {
                    tracing::info!(job = id, epoch = p.epoch, epochs = p.epochs, accuracy = %acc, "progress");
                }
            }
        }
        if !claimed_any {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
