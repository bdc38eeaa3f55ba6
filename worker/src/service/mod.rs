//! `worker run`: turns this machine into capacity for a coordinator. It claims jobs while it has
//! free devices, runs each as `worker train` child processes under a supervisor thread (the parent
//! never builds a model, so a crashing child cannot take it down), and claims the next.
pub mod allocation;
pub mod checks;
pub mod coordinator;
pub mod job;
pub mod outbox;
pub mod output;
pub mod program;
pub mod settings;
pub mod slots;

use crate::ddp::launch::PortHold;
use anyhow::{bail, Context, Result};
use coordinator::{Claim, Coordinator};
use slots::{DeviceKind, Slots};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The coordinator's root URL, as `server serve` printed it (e.g. http://127.0.0.1:8080; no
    /// scheme means http://).
    #[arg(long, env = "SWEEP_SERVER", value_parser = checks::parse_server)]
    pub server: String,
    /// The worker token this worker speaks with (not the admin token): its own credential
    /// (`server worker add NAME` prints it; give the name as --name) or the coordinator's shared
    /// worker token (the file `<db>.worker-token` beside its database).
    #[arg(
        long,
        env = "SWEEP_TOKEN",
        hide_env_values = true,
        required_unless_present = "enroll_token_file"
    )]
    pub token: Option<String>,
    /// A file holding an enrollment credential (`server worker add PREFIX --enrollment ...`): at
    /// start the worker mints a credential of its own, named PREFIX-<its name>, and speaks with it
    /// (what the Slurm recipes use: one admin-issued secret for a whole array, each task its own
    /// identity).
    #[arg(long, env = "SWEEP_ENROLL_TOKEN_FILE", conflicts_with = "token")]
    pub enroll_token_file: Option<PathBuf>,
    /// GPUs to use, e.g. 0,1 (one rank per GPU), or `auto`: those this process was given
    /// (`CUDA_VISIBLE_DEVICES`, else `SLURM_JOB_GPUS`, as Slurm sets them for a task).
    #[arg(long, value_parser = parse_gpus, conflicts_with = "cpu_ranks")]
    pub gpus: Option<Gpus>,
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
    /// business; default: data/cifar-10-batches-bin under the directory the worker starts in).
    /// A sweep's `data_dir` names a directory below it (relative, never `..`).
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
    /// Where the other workers of a job that spans nodes reach this one's ranks when it is that
    /// job's node 0 (a host name or address; default: this machine's address on the route to the
    /// coordinator). The port is one this worker holds until such a job's ranks start.
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Seconds between a running job's heartbeats, at most (at least three per lease).
    #[arg(long, default_value_t = 5.0)]
    pub heartbeat_seconds: f64,
    /// Seconds between claims while idle.
    #[arg(long, default_value_t = 1.0)]
    pub idle_seconds: f64,
    /// Exit once the coordinator has no pending or running job left (for scripts and tests).
    #[arg(long)]
    pub exit_when_idle: bool,
    /// Exit once nothing this worker can run has been pending for this many seconds, while it
    /// runs nothing (`--exit-when-idle` waits for every job of every shape): what an autoscaler's
    /// workers use, so each shape's allocations end when its work is done.
    #[arg(long, value_name = "SECONDS")]
    pub exit_when_nothing_fits: Option<f64>,
    /// When this worker's allocation ends: RFC 3339 (2026-12-07T18:00:00Z) or Unix seconds, or
    /// `none`. Default: under Slurm, the job's end (SLURM_JOB_END_TIME, else what squeue or
    /// scontrol report). The worker claims only jobs whose next epoch is expected to commit
    /// before its end less --end-margin-seconds, gives back what it runs at that point less
    /// --stop-grace-seconds, and exits 0.
    #[arg(long, env = "SWEEP_END_TIME", value_parser = allocation::parse_end_flag)]
    pub end_time: Option<allocation::EndFlag>,
    /// Seconds kept free before the end: a job's process start and checkpoint restore, and what a
    /// give-back needs to reach the coordinator.
    #[arg(long, default_value_t = 30.0)]
    pub end_margin_seconds: f64,
    /// With an end time: claim nothing once fewer than this many seconds are left before the
    /// end less its margin (the coordinator already passes over jobs that are expected not to
    /// fit; this is for operators who want more).
    #[arg(long, default_value_t = 0.0)]
    pub min_claim_seconds: f64,
    /// Stop claiming (and exit, once running jobs end) after this many jobs in a row failed
    /// before their first epoch: a worker that cannot work stops instead of failing a sweep. 0:
    /// never. (A job this machine cannot run at all, its data missing or the trainer unable to
    /// start, is given back free and stops the worker at once.)
    #[arg(long, default_value_t = 3)]
    pub max_early_failures: u32,
    /// Run command jobs (a sweep's `[command]`: any program its submitter names). Without this
    /// flag the worker is never handed one.
    #[arg(long)]
    pub allow_commands: bool,
    /// The directory command jobs run under: a sweep's `command.workdir` is relative to it.
    #[arg(long, default_value = ".", requires = "allow_commands")]
    pub command_root: PathBuf,
    /// A variable of this worker's environment that command jobs also get (repeatable). They get
    /// only the contract's variables and PATH, HOME, LANG, LC_*, TMPDIR, CUDA_*, NCCL_* and
    /// OMP_NUM_THREADS otherwise: never the worker's token or coordinator address unless named.
    #[arg(long = "pass-env", value_name = "NAME", requires = "allow_commands")]
    pub pass_env: Vec<String>,
    /// Seconds a command job has to exit after its stop file appears (cancel, early stop, worker
    /// shutdown) before it gets SIGTERM, and as long again before SIGKILL. On a shutdown (SIGTERM
    /// to the worker, as Slurm's preemption sends) our trainer has this long to commit its epoch;
    /// then it is killed and the job given back, its partial epoch redone from the last checkpoint.
    #[arg(long, default_value_t = 10.0)]
    pub stop_grace_seconds: f64,
    /// Most a command job's checkpoint archive may unpack to when it is restored, in MiB (only
    /// directories and regular files are restored at all).
    #[arg(long, default_value_t = 4096, requires = "allow_commands")]
    pub restore_max_mib: u64,
    /// Most entries (files and directories) a restored checkpoint archive may hold.
    #[arg(long, default_value_t = 100_000, requires = "allow_commands")]
    pub restore_max_entries: u64,
}

/// `--gpus`: listed device indices, or `auto`.
#[derive(Debug, Clone, PartialEq)]
pub enum Gpus {
    Listed(Vec<usize>),
    Auto,
}

fn parse_gpus(s: &str) -> Result<Gpus, String> {
    if s == "auto" {
        return Ok(Gpus::Auto);
    }
    indices(s)
        .map(Gpus::Listed)
        .map_err(|x| format!("`{x}` is not a GPU index (a list such as 0,1, or auto)"))
}

/// The indices of a comma-separated list; Err(the entry that is not one).
fn indices(list: &str) -> Result<Vec<usize>, String> {
    list.split(',')
        .map(|x| x.trim().parse::<usize>().map_err(|_| x.trim().to_string()))
        .collect()
}

/// The GPUs `--gpus auto` takes: `CUDA_VISIBLE_DEVICES`, else `SLURM_JOB_GPUS` (`env` reads a
/// variable). The worker hands each job its devices as `CUDA_VISIBLE_DEVICES` again, so the
/// indices stay those its own environment names.
pub fn gpus_given(env: impl Fn(&str) -> Option<String>) -> Result<Vec<usize>> {
    let named = ["CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS"]
        .into_iter()
        .find_map(|name| {
            env(name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (name, v))
        });
    let Some((name, list)) = named else {
        bail!("--gpus auto: neither CUDA_VISIBLE_DEVICES nor SLURM_JOB_GPUS names a GPU");
    };
    indices(&list).map_err(|x| {
        anyhow::anyhow!(
            "--gpus auto: {name}={list}: `{x}` is not a GPU index (UUIDs and MIG names are not \
             supported: list the indices with --gpus)"
        )
    })
}

/// This machine's address on the route to the coordinator at `server` (a URL).
fn route_address(server: &str) -> Result<String> {
    let peer = url::Url::parse(server)
        .ok()
        .and_then(|u| u.socket_addrs(|| None).ok())
        .and_then(|a| a.into_iter().next())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "cannot resolve the coordinator's address {server:?} (or give --advertise-addr)"
            )
        })?;
    Ok(crate::ddp::launch::source_address(peer)?.to_string())
}

/// The worker's name unless `--name` gives one: under Slurm its node, job, array task and task
/// (`gpu7-slurm-4242_3-0`: array job 4242's task 3, as `squeue` writes it; each array task also has
/// a job id of its own, which is not the one users see), elsewhere its host and process id.
/// Mints this worker's own credential with the enrollment credential in `file`: its name (the
/// enrollment's name, a dash, `suffix`) and its token, kept in memory only.
fn enroll(server: &str, file: &std::path::Path, suffix: &str) -> Result<(String, String)> {
    let secret = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the enrollment credential {}", file.display()))?;
    let issued = Coordinator::new(server, secret.trim())
        .enroll(suffix)
        .with_context(|| format!("enrolling at {server} with {}", file.display()))?;
    tracing::info!(name = %issued.name, "enrolled: this worker speaks with its own credential");
    Ok((issued.name, issued.token))
}

fn default_name(env: impl Fn(&str) -> Option<String>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    match env("SLURM_JOB_ID") {
        Some(job) => {
            let node = env("SLURMD_NODENAME").unwrap_or(host);
            let (job, task) = match (env("SLURM_ARRAY_JOB_ID"), env("SLURM_ARRAY_TASK_ID")) {
                (Some(array), Some(t)) => (array, format!("_{t}")),
                _ => (job, String::new()),
            };
            let rank = env("SLURM_PROCID").unwrap_or_else(|| "0".into());
            format!("{node}-slurm-{job}{task}-{rank}")
        }
        None => format!("{host}-{}", std::process::id()),
    }
}

#[derive(Debug)]
struct Running {
    progress: Arc<Mutex<job::Progress>>,
    thread: std::thread::JoinHandle<()>,
}

/// `worker run`: claim jobs that fit the free slots, supervise each on its own thread, and report
/// progress, until stopped (SIGTERM/SIGINT: running jobs commit an epoch and are released) or, with
/// `--exit-when-idle`, until the coordinator has nothing left.
pub fn run(a: &RunArgs) -> Result<()> {
    let mut service = Service::start(a)?;
    loop {
        service.give_back_when_due();
        service.reap_finished();
        if service.stopping() && service.running.is_empty() {
            tracing::info!("stopped");
            return Ok(());
        }
        if let (Some(why), true) = (&service.halted, service.running.is_empty()) {
            bail!("this worker stopped claiming: {why}");
        }
        let round = service.claim_when_due();
        if round == Round::Empty && service.done_when_idle() {
            tracing::info!("nothing left to do: exiting (--exit-when-idle)");
            return Ok(());
        }
        if service.nothing_fits_for_long(round) {
            tracing::info!(
                "nothing this worker can run is pending: exiting (--exit-when-nothing-fits)"
            );
            return Ok(());
        }
        service.report_progress();
        if round != Round::Claimed {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What a pass of the claim loop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// Not time to ask yet (or stopping).
    NotDue,
    Claimed,
    /// Asked, and nothing fits us now.
    Empty,
}

/// The claim loop's state: the free slots, the jobs running, and when to claim or report next.
#[derive(Debug)]
struct Service {
    args: RunArgs,
    slots: Slots,
    name: String,
    coord: Coordinator,
    stopping: Arc<AtomicBool>,
    opts: job::JobOptions,
    running: HashMap<i64, Running>,
    /// The address offered for gangs' rendezvous (`--advertise-addr`).
    advertise: String,
    /// The port offered with it, held from claim to claim until a gang's node 0 takes it.
    offered_port: Option<PortHold>,
    tty: bool,
    last_line: Instant,
    claim_after: Instant,
    /// Jobs failing before their first epoch, in a row (`--max-early-failures`).
    breaker: checks::Breaker,
    /// Backoff while the coordinator is unreachable, and what its refusals mean.
    contact: checks::Contact,
    /// Why this worker claims no more (its breaker tripped, or the coordinator refused it for
    /// good): it exits with this once its running jobs end.
    halted: Option<String>,
    /// When its allocation ends (`--end-time`, or Slurm's).
    end: Option<allocation::End>,
    /// Since when it has run nothing and found nothing to claim (`--exit-when-nothing-fits`).
    idle_since: Option<Instant>,
}

impl Service {
    fn start(a: &RunArgs) -> Result<Self> {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let gpus = match &a.gpus {
            None => vec![],
            Some(Gpus::Listed(g)) => g.clone(),
            Some(Gpus::Auto) => gpus_given(|k| std::env::var(k).ok())?,
        };
        let kinds: Vec<DeviceKind> = if gpus.is_empty() {
            (0..a.cpu_ranks.unwrap_or(1)).map(DeviceKind::Cpu).collect()
        } else {
            gpus.iter().map(|&g| DeviceKind::Gpu(g)).collect()
        };
        if kinds.is_empty() {
            bail!("--cpu-ranks must be at least 1");
        }
        checks::preflight(a)?;
        let stopping = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, stopping.clone())?;
        }
        let name = a
            .name
            .clone()
            .unwrap_or_else(|| default_name(|k| std::env::var(k).ok()));
        let advertise = match &a.advertise_addr {
            Some(addr) => addr.clone(),
            None => route_address(&a.server)?,
        };
        let (name, token) = match (&a.enroll_token_file, &a.token) {
            (Some(file), _) => enroll(&a.server, file, &name)?,
            (None, Some(token)) => (name, token.clone()),
            (None, None) => bail!("give --token (or SWEEP_TOKEN) or --enroll-token-file"),
        };
        let end = allocation::discover(
            a.end_time,
            |k| std::env::var(k).ok(),
            allocation::run_program,
        )?;
        tracing::info!(%name, server = %a.server, cores, %advertise, "worker started");
        if let Some(e) = &end {
            let left = protocol::views::duration_words(e.at_ms - allocation::now_ms());
            tracing::info!(source = %e.source, "the allocation ends in {left}: jobs that do not fit are left to others, and what runs is given back before the end");
        }
        Ok(Service {
            args: a.clone(),
            slots: Slots::new(kinds, a.slots_per_device, a.pack_max_batch, cores),
            name,
            coord: Coordinator::new(&a.server, &token),
            stopping,
            opts: job::JobOptions {
                exe: std::env::current_exe()?,
                work_dir: a.work_dir.clone(),
                data_dir: a.data_dir.clone(),
                data_url: a.data_url.clone(),
                data_md5: a.data_md5.clone(),
                heartbeat: Duration::from_secs_f64(a.heartbeat_seconds),
                poll: Duration::from_millis(200),
                command_root: a
                    .allow_commands
                    .then(|| std::path::absolute(&a.command_root))
                    .transpose()?,
                stop_grace: Duration::from_secs_f64(a.stop_grace_seconds.max(0.0)),
                pass_env: a.pass_env.clone(),
                restore: settings::RestoreLimits {
                    max_bytes: a.restore_max_mib.saturating_mul(1 << 20),
                    max_entries: a.restore_max_entries,
                },
            },
            running: HashMap::new(),
            advertise,
            offered_port: None,
            tty: std::io::stderr().is_terminal(),
            last_line: Instant::now(),
            claim_after: Instant::now(),
            breaker: checks::Breaker::new(a.max_early_failures),
            contact: checks::Contact::default(),
            halted: None,
            end,
            idle_since: None,
        })
    }

    /// Unix ms when running jobs are given back: the claims' deadline less the stop grace, so the
    /// epoch in progress has the grace to commit before the deadline.
    fn give_back_at(&self) -> Option<i64> {
        let grace = self.args.stop_grace_seconds.max(0.0) * 1000.0;
        self.deadline().map(|d| d - grace as i64)
    }

    /// The claim's deadline: by when a job's next epoch must have committed (the end less the
    /// margin); None without an end.
    fn deadline(&self) -> Option<i64> {
        let margin = self.args.end_margin_seconds.max(0.0) * 1000.0;
        self.end.as_ref().map(|e| e.at_ms - margin as i64)
    }

    /// At the give-back point, stops as a SIGTERM would: each running job commits its epoch and
    /// is released (no attempt used), and the worker exits 0 once they have.
    fn give_back_when_due(&mut self) {
        let Some(at) = self.give_back_at() else {
            return;
        };
        if self.stopping() || allocation::now_ms() < at {
            return;
        }
        tracing::info!(
            jobs = self.running.len(),
            "the allocation's end is near: giving back what runs and exiting"
        );
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// `--exit-when-nothing-fits`: nothing running and nothing claimed for that long.
    fn nothing_fits_for_long(&mut self, round: Round) -> bool {
        let Some(secs) = self.args.exit_when_nothing_fits else {
            return false;
        };
        if !self.running.is_empty() || self.slots.busy() || round == Round::Claimed {
            self.idle_since = None;
            return false;
        }
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        since.elapsed().as_secs_f64() >= secs
    }

    /// Whether too little is left before the deadline to claim anything (`--min-claim-seconds`).
    fn too_late_to_claim(&self) -> bool {
        self.deadline().is_some_and(|d| {
            (d - allocation::now_ms()) as f64 / 1000.0 < self.args.min_claim_seconds.max(0.0)
        })
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Joins supervisors that have ended, frees their slots, says how each ended (a failure at
    /// WARN, with its reason), and feeds the circuit breaker.
    fn reap_finished(&mut self) {
        let done: Vec<i64> = self
            .running
            .iter()
            .filter(|(_, r)| r.thread.is_finished())
            .map(|(&id, _)| id)
            .collect();
        for id in done {
            let Some(r) = self.running.remove(&id) else {
                continue;
            };
            let _ = r.thread.join();
            self.slots.release(id);
            let p = r.progress.lock().expect("not poisoned").clone();
            let end = p
                .done
                .unwrap_or(job::End::Lost("its supervisor ended early".into()));
            log_end(id, p.epoch, &end);
            if let Some(why) = self.breaker.record(&end, p.epoch) {
                tracing::error!("stopping claiming: {why}");
                self.halted.get_or_insert(why);
            }
        }
    }

    /// Asks for one job per round, for the largest slot first. After a round with nothing, waits
    /// `--idle-seconds` before asking again.
    fn claim_when_due(&mut self) -> Round {
        if self.stopping() || self.halted.is_some() || Instant::now() < self.claim_after {
            return Round::NotDue;
        }
        if self.too_late_to_claim() {
            self.claim_after = Instant::now() + Duration::from_secs_f64(self.args.idle_seconds);
            return Round::Empty;
        }
        let deadline = self.deadline();
        for ask in self.slots.asks() {
            let rendezvous = self.rendezvous();
            match self.coord.claim(
                &self.name,
                ask.ranks,
                ask.max_batch_size,
                self.args.allow_commands,
                rendezvous,
                deadline,
            ) {
                Ok(Some(claim)) => {
                    self.contact.reached();
                    if self.supervise(claim) {
                        return Round::Claimed;
                    }
                }
                Ok(None) => self.contact.reached(),
                Err(e) => {
                    match self.contact.failed(&self.coord, &e) {
                        Ok(wait) => self.claim_after = Instant::now() + wait,
                        Err(why) => {
                            tracing::error!("{why}");
                            self.halted = Some(why);
                        }
                    }
                    return Round::NotDue;
                }
            }
        }
        self.claim_after = Instant::now() + Duration::from_secs_f64(self.args.idle_seconds);
        Round::Empty
    }

    /// This worker's offer of a rendezvous for a gang it may start: its advertised address and a
    /// port it holds (the same from claim to claim; node 0's rank 0 binds it once the gang has
    /// formed). None when no port is free: the claim then takes no multi-node job.
    fn rendezvous(&mut self) -> Option<protocol::Rendezvous> {
        if self.offered_port.is_none() {
            let bind = self.advertise.parse().unwrap_or([0, 0, 0, 0].into());
            self.offered_port = PortHold::on(bind)
                .map_err(|e| tracing::warn!(error = %e, "no port to offer for a gang"))
                .ok();
        }
        Some(protocol::Rendezvous {
            addr: self.advertise.clone(),
            port: self.offered_port.as_ref()?.port(),
        })
    }

    /// The held port goes with a claim that made this worker a gang's node 0 (the gang meets at
    /// the rendezvous this claim offered; its supervisor lets the port go just before the ranks
    /// start); the next claim offers a new one.
    fn port_for(&mut self, claim: &Claim) -> Option<PortHold> {
        let node0 = claim.gang.as_ref().is_some_and(|g| g.node_rank == 0);
        node0.then(|| self.offered_port.take()).flatten()
    }

    /// Places a claimed job on free slots and starts its supervisor; false (and the job given back)
    /// when it does not fit, which the coordinator's capacity check makes a should-not-happen.
    fn supervise(&mut self, claim: Claim) -> bool {
        let program = job::Program::of(&claim);
        let (nproc, batch_size) = program
            .as_ref()
            .map(|p| p.shape(&claim.params))
            .unwrap_or((1, i64::MAX));
        let Some(placement) = self.slots.place(claim.id, nproc, batch_size) else {
            let _ = self.coord.release(claim.lease(), "did not fit this worker");
            return false;
        };
        tracing::info!(job = claim.id, attempt = claim.attempt, %placement, params = %claim.params, "claimed");
        let progress = Arc::new(Mutex::new(job::Progress::default()));
        let id = claim.id;
        let held = self.port_for(&claim);
        let sup = job::Supervisor::new(
            claim,
            program,
            self.coord.clone(),
            self.opts.clone(),
            progress.clone(),
        )
        .holding(held);
        let stopping = self.stopping.clone();
        let thread = std::thread::spawn(move || sup.run(placement, stopping));
        self.running.insert(id, Running { progress, thread });
        true
    }

    /// `--exit-when-idle`: the coordinator has nothing left at all, not merely nothing for us right
    /// now (a job leased to a worker that died comes back when its lease runs out).
    fn done_when_idle(&self) -> bool {
        self.args.exit_when_idle
            && self.running.is_empty()
            && !self.slots.busy()
            && self.coord.unfinished_jobs().is_ok_and(|n| n == 0)
    }

    /// A line per running job every 2 s on a terminal, every 30 s in a log.
    fn report_progress(&mut self) {
        let every = Duration::from_secs(if self.tty { 2 } else { 30 });
        if self.running.is_empty() || self.last_line.elapsed() < every {
            return;
        }
        self.last_line = Instant::now();
        let left = self
            .end
            .as_ref()
            .map(|e| {
                let words = protocol::views::duration_words(e.at_ms - allocation::now_ms());
                format!(" ({words} left in the allocation)")
            })
            .unwrap_or_default();
        for (id, r) in &self.running {
            let p = r.progress.lock().expect("not poisoned");
            let acc = p
                .accuracy
                .map(|x| format!("{:.2}%", 100.0 * x))
                .unwrap_or_else(|| "-".into());
            if let Some(g) = p.forming {
                let line = format!(
                    "waiting for its gang: {} of {} workers joined",
                    g.joined, g.nnodes
                );
                match self.tty {
                    true => eprintln!("job {id}: {line}{left}"),
                    false => tracing::info!(job = id, "{line}{left}"),
                }
            } else if self.tty {
                let of = match p.epochs {
                    0 => String::new(), // a command job that names no epochs
                    n => format!("/{n}"),
                };
                eprintln!("job {id}: epoch {}{of} accuracy {acc}{left}", p.epoch);
            } else {
                tracing::info!(job = id, epoch = p.epoch, epochs = p.epochs, accuracy = %acc, "progress{left}");
            }
        }
    }
}

/// A job's end in the worker's log: a failure, or a job this worker could not run, at WARN with
/// its reason; the others at INFO.
fn log_end(id: i64, epoch: u32, end: &job::End) {
    use protocol::Outcome;
    match end {
        job::End::Reported(Outcome::Failed, error) => tracing::warn!(
            job = id,
            epoch,
            outcome = Outcome::Failed.as_str(),
            error = error.as_deref().unwrap_or("no error given"),
            "job failed"
        ),
        job::End::Reported(outcome, _) => {
            tracing::info!(job = id, epoch, outcome = outcome.as_str(), "job ended")
        }
        job::End::Released(why) => tracing::info!(job = id, epoch, %why, "job given back"),
        job::End::WorkerFault(why) => tracing::warn!(
            job = id,
            %why,
            "this worker could not run the job: given back (no attempt spent)"
        ),
        job::End::Lost(why) => tracing::warn!(job = id, epoch, %why, "job taken from this worker"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn gpus_are_listed_or_taken_from_what_slurm_gave() {
        assert_eq!(parse_gpus("0,1"), Ok(Gpus::Listed(vec![0, 1])));
        assert_eq!(parse_gpus("auto"), Ok(Gpus::Auto));
        assert!(parse_gpus("0,x").unwrap_err().contains("`x`"));
        let given = |vars| gpus_given(env(vars)).map_err(|e| e.to_string());
        assert_eq!(given(&[("CUDA_VISIBLE_DEVICES", "2,3")]), Ok(vec![2, 3]));
        assert_eq!(
            given(&[("CUDA_VISIBLE_DEVICES", " "), ("SLURM_JOB_GPUS", "5")]),
            Ok(vec![5]),
            "an empty CUDA_VISIBLE_DEVICES gives way to Slurm's list"
        );
        assert_eq!(
            given(&[("CUDA_VISIBLE_DEVICES", "0"), ("SLURM_JOB_GPUS", "5")]),
            Ok(vec![0]),
            "what CUDA will see comes first"
        );
        assert!(given(&[]).unwrap_err().contains("neither"));
        let uuid = given(&[("CUDA_VISIBLE_DEVICES", "GPU-8f2c")]).unwrap_err();
        assert!(
            uuid.contains("`GPU-8f2c`") && uuid.contains("--gpus"),
            "{uuid}"
        );
    }

    #[test]
    fn the_advertised_address_is_the_one_on_the_route_to_the_coordinator() {
        assert_eq!(route_address("http://127.0.0.1:8080").unwrap(), "127.0.0.1");
        assert_eq!(
            route_address("http://127.0.0.1:8080/x").unwrap(),
            "127.0.0.1"
        );
        assert!(route_address("http://no-such-host.invalid:1").is_err());
    }

    #[test]
    fn under_slurm_the_name_says_node_job_array_task_and_task() {
        let vars = [
            ("SLURM_JOB_ID", "4245"),
            ("SLURM_ARRAY_JOB_ID", "4242"),
            ("SLURMD_NODENAME", "gpu7"),
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_PROCID", "1"),
        ];
        assert_eq!(default_name(env(&vars)), "gpu7-slurm-4242_3-1");
        assert_eq!(
            default_name(env(&[("SLURM_JOB_ID", "9"), ("SLURMD_NODENAME", "n1")])),
            "n1-slurm-9-0"
        );
        assert!(default_name(env(&[])).ends_with(&format!("-{}", std::process::id())));
    }
}
