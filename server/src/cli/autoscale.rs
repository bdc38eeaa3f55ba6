//! `server autoscale slurm`: a process beside the coordinator that asks Slurm for exactly the
//! workers the pending jobs need. Each round it reads the pending work by shape from the
//! coordinator (`GET /api/jobs/pending-shapes`) and its own allocations from `squeue` (their job
//! names start with `--job-name`, and say the shape they were submitted for), then submits N-node
//! allocations of the worker template where a shape lacks workers and cancels its allocations still
//! queued for work that has gone. Its workers exit once nothing they can run is pending
//! (`worker run --exit-when-nothing-fits`), so each shape scales to zero by itself.
//!
//! It never holds more than `--max-workers` nodes nor `--max-pending-allocations` queued
//! allocations; a refused `sbatch` backs off (the refusal in its log); with the coordinator or
//! Slurm unreachable it submits nothing. Every decision is logged with its reason and counted
//! (`--metrics-listen` serves the counts to Prometheus).
use anyhow::{bail, Context, Result};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use protocol::PendingShape;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Subcommand)]
pub enum AutoscaleCommand {
    /// Size a Slurm cluster's worker allocations to the pending jobs (sbatch, squeue, scancel).
    Slurm(SlurmArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct SlurmArgs {
    /// The coordinator's root URL (no scheme means http://).
    #[arg(long, env = "SWEEP_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// A token that may read the coordinator (needed only when it serves with --private): the
    /// worker token will do. Never handed to the workers.
    #[arg(long, env = "SWEEP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The enrollment credential the workers enroll with (`server worker add PREFIX --enrollment
    /// ...`): each worker mints a credential of its own.
    #[arg(long, env = "SWEEP_ENROLL_TOKEN_FILE")]
    pub enroll_token_file: Option<PathBuf>,
    /// Or a file holding the worker token they all share.
    #[arg(long, conflicts_with = "enroll_token_file")]
    pub worker_token_file: Option<PathBuf>,
    /// The batch script each allocation runs: one `worker run` per node.
    #[arg(long, default_value = "deploy/slurm/worker-nodes.sbatch")]
    pub template: PathBuf,
    /// Slurm partition to submit to (default: Slurm's).
    #[arg(long)]
    pub partition: Option<String>,
    /// `--gres` of every allocation (default: `gpu:N` for a shape whose jobs need N GPUs per
    /// node, none otherwise).
    #[arg(long)]
    pub gres: Option<String>,
    /// Time limit of each allocation (Slurm's format: minutes, or [D-]HH:MM:SS). Its workers
    /// learn it from Slurm and give their jobs back before it.
    #[arg(long)]
    pub time: Option<String>,
    /// Most nodes its allocations hold at once, queued or running.
    #[arg(long, default_value_t = 4)]
    pub max_workers: usize,
    /// Most of its allocations waiting in Slurm's queue at once.
    #[arg(long, default_value_t = 2)]
    pub max_pending_allocations: usize,
    /// Seconds between rounds.
    #[arg(long, default_value_t = 15.0)]
    pub interval: f64,
    /// The prefix of its allocations' job names (how it tells its own in `squeue`).
    #[arg(long, default_value = "sweep-auto")]
    pub job_name: String,
    /// Seconds a worker it started waits with nothing it can run before it exits.
    #[arg(long, default_value_t = 60.0)]
    pub nothing_fits_seconds: f64,
    /// An allocation that started less than this long ago counts as about to claim a pending job
    /// of its shape (so one job does not get two allocations while a worker starts).
    #[arg(long, default_value_t = 60.0)]
    pub startup_seconds: f64,
    /// Start workers that run command jobs (`worker run --allow-commands`); without it, pending
    /// command jobs get no allocation (said in the log).
    #[arg(long)]
    pub allow_commands: bool,
    /// More options for every worker (`WORKER_ARGS`), e.g. "--data-dir /scratch/cifar10".
    #[arg(long, default_value = "")]
    pub worker_args: String,
    /// More options for every `sbatch` (repeatable), e.g. --sbatch-arg=--account=ml.
    #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// Print what one round would submit and cancel, and do nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Serve the decisions' counts for Prometheus at http://ADDR/metrics.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// What a pending job needs of an allocation: its shape, as the job name carries it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShapeKey {
    pub nnodes: i64,
    pub nproc: i64,
    pub command: bool,
    pub gpus: Option<i64>,
}

impl ShapeKey {
    fn of(s: &PendingShape) -> ShapeKey {
        ShapeKey {
            nnodes: s.nnodes,
            nproc: s.nproc_per_node,
            command: s.command,
            gpus: s.gpus_per_node,
        }
    }

    /// The job name of an allocation for this shape: `PREFIX-n2-r4-t-g4` (2 nodes, 4 ranks each,
    /// trainer jobs, 4 GPUs per node; `c` for command jobs, `g-` when the jobs name no device).
    fn job_name(&self, prefix: &str) -> String {
        let kind = if self.command { "c" } else { "t" };
        let gpus = self.gpus.map_or("-".to_string(), |g| g.to_string());
        format!("{prefix}-n{}-r{}-{kind}-g{gpus}", self.nnodes, self.nproc)
    }

    fn parse(name: &str, prefix: &str) -> Option<ShapeKey> {
        let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
        let parts: Vec<&str> = rest.split('-').collect();
        let [n, r, kind, g @ ..] = parts.as_slice() else {
            return None;
        };
        let gpus = match *g {
            ["g", ""] => None,
            [g] => Some(g.strip_prefix('g')?.parse().ok()?),
            _ => return None,
        };
        Some(ShapeKey {
            nnodes: n.strip_prefix('n')?.parse().ok()?,
            nproc: r.strip_prefix('r')?.parse().ok()?,
            command: match *kind {
                "c" => true,
                "t" => false,
                _ => return None,
            },
            gpus,
        })
    }
}

impl std::fmt::Display for ShapeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.command { "command" } else { "trainer" };
        write!(
            f,
            "{} node(s) x {} rank(s), {kind}",
            self.nnodes, self.nproc
        )?;
        match self.gpus {
            Some(g) => write!(f, ", {g} GPU(s) per node"),
            None => Ok(()),
        }
    }
}

/// One of its allocations, as `squeue` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    pub job_id: String,
    pub shape: ShapeKey,
    pub nodes: usize,
    /// Still waiting in Slurm's queue.
    pub queued: bool,
    /// Seconds it has run (0 while queued).
    pub running_seconds: f64,
}

/// What a round decided, each with its reason.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Submit { shape: ShapeKey, why: String },
    Cancel { job_id: String, why: String },
    Hold { shape: ShapeKey, why: String },
}

/// The limits a plan keeps to.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_workers: usize,
    pub max_pending_allocations: usize,
    pub startup_seconds: f64,
    pub allow_commands: bool,
    /// The allocations' time limit, in seconds, if known.
    pub time_limit_seconds: Option<f64>,
}

/// One round's decisions from the pending work and its own allocations: per shape, the pending
/// jobs not yet covered by an allocation of that shape (queued, or started within
/// `startup_seconds`) get one allocation each, shapes taking turns, within both caps; queued
/// allocations beyond what their shape still needs are cancelled.
pub fn plan(shapes: &[PendingShape], ours: &[Allocation], limits: &Limits) -> Vec<Decision> {
    let mut decisions = vec![];
    let mut nodes: usize = ours.iter().map(|a| a.nodes).sum();
    let mut queued = ours.iter().filter(|a| a.queued).count();
    let covering = |key: &ShapeKey| {
        ours.iter()
            .filter(|a| &a.shape == key && (a.queued || a.running_seconds < limits.startup_seconds))
            .count() as i64
    };
    // What each runnable shape still lacks.
    let mut lacking: Vec<(ShapeKey, i64)> = vec![];
    for s in shapes.iter().filter(|s| s.jobs > 0) {
        let key = ShapeKey::of(s);
        if s.command && !limits.allow_commands {
            let why = "command jobs pending: start the autoscaler with --allow-commands".into();
            decisions.push(Decision::Hold { shape: key, why });
            continue;
        }
        if let (Some(limit), Some(epoch)) = (limits.time_limit_seconds, s.epoch_seconds) {
            if epoch >= limit {
                let why = format!("an epoch takes about {epoch:.0} s, longer than --time ({limit:.0} s): no allocation of this length can commit one");
                decisions.push(Decision::Hold { shape: key, why });
                continue;
            }
        }
        let lack = s.jobs - covering(&key);
        if lack > 0 {
            lacking.push((key, lack));
        }
    }
    // Shapes take turns, one allocation each, until the caps or the lack run out.
    let mut held: BTreeMap<ShapeKey, String> = BTreeMap::new();
    loop {
        let mut progressed = false;
        for (key, lack) in lacking.iter_mut().filter(|(_, l)| *l > 0) {
            let need = key.nnodes as usize;
            if nodes + need > limits.max_workers {
                let why = format!(
                    "at --max-workers: {nodes} of {} nodes held, this shape needs {need}",
                    limits.max_workers
                );
                held.insert(key.clone(), why);
                continue;
            }
            if queued >= limits.max_pending_allocations {
                let why =
                    format!("at --max-pending-allocations: {queued} allocations already queued");
                held.insert(key.clone(), why);
                continue;
            }
            nodes += need;
            queued += 1;
            *lack -= 1;
            progressed = true;
            let why = format!("{} pending job(s) of this shape lack a worker", *lack + 1);
            decisions.push(Decision::Submit {
                shape: key.clone(),
                why,
            });
        }
        if !progressed {
            break;
        }
    }
    for (key, lack) in &lacking {
        if *lack > 0 {
            if let Some(why) = held.remove(key) {
                decisions.push(Decision::Hold {
                    shape: key.clone(),
                    why,
                });
            }
        }
    }
    decisions.extend(surplus_queued(shapes, ours));
    decisions
}

/// Queued allocations beyond their shape's pending jobs (newest first): the work they were for
/// has gone (done by others, or cancelled).
fn surplus_queued(shapes: &[PendingShape], ours: &[Allocation]) -> Vec<Decision> {
    let mut decisions = vec![];
    let mut by_shape: BTreeMap<&ShapeKey, Vec<&Allocation>> = BTreeMap::new();
    for a in ours.iter().filter(|a| a.queued) {
        by_shape.entry(&a.shape).or_default().push(a);
    }
    for (key, mut queued) in by_shape {
        let pending = shapes
            .iter()
            .filter(|s| &ShapeKey::of(s) == key)
            .map(|s| s.jobs)
            .sum::<i64>()
            .max(0) as usize;
        // Newest (highest job id) first.
        queued.sort_by_key(|a| std::cmp::Reverse(a.job_id.parse::<u64>().unwrap_or(0)));
        let surplus = queued.len().saturating_sub(pending);
        for a in queued.into_iter().take(surplus) {
            let why = format!("still queued, and its shape ({key}) has {pending} pending job(s) for its queued allocations");
            decisions.push(Decision::Cancel {
                job_id: a.job_id.clone(),
                why,
            });
        }
    }
    decisions
}

/// `squeue -h --me -o '%i|%j|%T|%D|%M'` lines: its own allocations (names with `prefix`).
pub fn parse_squeue(text: &str, prefix: &str) -> Vec<Allocation> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.trim().split('|').collect();
            let [id, name, state, nodes, used] = f.as_slice() else {
                return None;
            };
            let shape = ShapeKey::parse(name, prefix)?;
            // Ending allocations no longer count: their workers have given back what they ran.
            if matches!(
                *state,
                "COMPLETING" | "COMPLETED" | "CANCELLED" | "FAILED" | "TIMEOUT"
            ) {
                return None;
            }
            Some(Allocation {
                job_id: id.to_string(),
                shape,
                nodes: nodes.parse().unwrap_or(1),
                queued: *state == "PENDING",
                running_seconds: slurm_seconds(used).unwrap_or(0.0),
            })
        })
        .collect()
}

/// Slurm's durations: `M:SS`, `H:MM:SS`, `D-HH:MM:SS`, or minutes alone (`--time=2`).
pub fn slurm_seconds(s: &str) -> Option<f64> {
    let s = s.trim();
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<f64>().ok()?, r),
        None => (0.0, s),
    };
    let parts: Vec<f64> = rest
        .split(':')
        .map(|p| p.parse::<f64>().ok())
        .collect::<Option<_>>()?;
    let secs = match (parts.as_slice(), days > 0.0) {
        ([m], false) => m * 60.0,
        ([h], true) => h * 3600.0,
        ([m, s], false) => m * 60.0 + s,
        ([h, m], true) => h * 3600.0 + m * 60.0,
        ([h, m, s], _) => h * 3600.0 + m * 60.0 + s,
        _ => return None,
    };
    Some(days * 86_400.0 + secs)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// The counts `--metrics-listen` serves.
#[derive(Debug, Default)]
struct Counts {
    decisions: Family<DecisionLabel, Counter>,
    allocations: Family<StateLabel, Gauge>,
}

impl Counts {
    fn count(&self, decision: &str) {
        let label = DecisionLabel {
            decision: decision.into(),
        };
        self.decisions.get_or_create(&label).inc();
    }

    fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::default();
        r.register(
            "autoscale_decisions",
            "Decisions: submit, cancel, hold, refused (sbatch or scancel failed), unreachable (the coordinator or squeue)",
            self.decisions.clone(),
        );
        r.register(
            "autoscale_allocations",
            "Its allocations in squeue: queued, or started",
            self.allocations.clone(),
        );
        r
    }
}

/// `server autoscale slurm`.
pub async fn run(args: &SlurmArgs) -> Result<()> {
    let workers_auth = workers_auth(args)?;
    if !args.template.is_file() {
        bail!(
            "--template {}: no such batch script (deploy/slurm/worker-nodes.sbatch is the default, relative to where the autoscaler starts)",
            args.template.display()
        );
    }
    let counts = Arc::new(Counts::default());
    if let Some(addr) = args.metrics_listen {
        serve_metrics(addr, counts.clone()).await?;
    }
    let client = crate::cli::client::Client::new(&args.server, args.token.clone());
    let limits = Limits {
        max_workers: args.max_workers,
        max_pending_allocations: args.max_pending_allocations,
        startup_seconds: args.startup_seconds,
        allow_commands: args.allow_commands,
        time_limit_seconds: args.time.as_deref().and_then(slurm_seconds),
    };
    let mut backoff = Backoff::new(Duration::from_secs_f64(args.interval.max(0.1)));
    tracing::info!(server = %args.server, template = %args.template.display(), max_workers = args.max_workers,
                   "autoscaling Slurm allocations of workers");
    loop {
        let round = Round {
            args,
            client: &client,
            limits: &limits,
            counts: &counts,
            auth: &workers_auth,
        };
        round.run(&mut backoff).await;
        if args.dry_run {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(args.interval.max(0.1))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// What the workers it starts authenticate with: (variable, value) for `sbatch`'s environment.
fn workers_auth(args: &SlurmArgs) -> Result<(&'static str, String)> {
    match (&args.enroll_token_file, &args.worker_token_file) {
        (Some(f), _) => Ok(("SWEEP_ENROLL_TOKEN_FILE", std::path::absolute(f)?.display().to_string())),
        (None, Some(f)) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read --worker-token-file {}", f.display()))?;
            Ok(("SWEEP_TOKEN", t.trim().to_string()))
        }
        (None, None) => bail!(
            "the workers need a credential: give --enroll-token-file (an enrollment credential: `server worker add PREFIX --enrollment ...`) or --worker-token-file"
        ),
    }
}

/// Refused submissions wait longer each time (up to 10 minutes), so a Slurm that refuses is not
/// asked again every round.
#[derive(Debug)]
struct Backoff {
    base: Duration,
    failures: u32,
    until: Option<Instant>,
}

impl Backoff {
    fn new(base: Duration) -> Self {
        Backoff {
            base,
            failures: 0,
            until: None,
        }
    }

    fn waiting(&self) -> bool {
        self.until.is_some_and(|t| Instant::now() < t)
    }

    fn failed(&mut self) -> Duration {
        self.failures += 1;
        let wait = (self.base * 2u32.saturating_pow(self.failures)).min(Duration::from_secs(600));
        self.until = Some(Instant::now() + wait);
        wait
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.until = None;
    }
}

/// One round's inputs.
struct Round<'a> {
    args: &'a SlurmArgs,
    client: &'a crate::cli::client::Client,
    limits: &'a Limits,
    counts: &'a Arc<Counts>,
    auth: &'a (&'static str, String),
}

impl Round<'_> {
    /// Reads both sides, plans, and carries the plan out (or prints it, with --dry-run).
    async fn run(&self, backoff: &mut Backoff) {
        let shapes = match self.client.pending_shapes().await {
            Ok(s) => s,
            Err(e) => {
                self.counts.count("unreachable");
                tracing::warn!(
                    "the coordinator did not answer ({e:#}): submitting nothing this round"
                );
                return;
            }
        };
        let ours = match squeue(&self.args.job_name) {
            Ok(a) => a,
            Err(e) => {
                self.counts.count("unreachable");
                tracing::warn!("squeue failed ({e:#}): submitting nothing this round");
                return;
            }
        };
        for (state, n) in [
            ("queued", ours.iter().filter(|a| a.queued).count()),
            ("started", ours.iter().filter(|a| !a.queued).count()),
        ] {
            let label = StateLabel {
                state: state.into(),
            };
            self.counts.allocations.get_or_create(&label).set(n as i64);
        }
        for d in plan(&shapes, &ours, self.limits) {
            self.carry_out(d, backoff);
        }
    }

    fn carry_out(&self, d: Decision, backoff: &mut Backoff) {
        match d {
            Decision::Hold { shape, why } => {
                self.counts.count("hold");
                tracing::info!(%shape, "holding: {why}");
            }
            Decision::Cancel { job_id, why } => {
                self.counts.count("cancel");
                if self.args.dry_run {
                    println!("would cancel {job_id}: {why}");
                    return;
                }
                match run_slurm("scancel", &[job_id.as_str()], &[]) {
                    Ok(_) => tracing::info!(job = %job_id, "cancelled: {why}"),
                    Err(e) => {
                        self.counts.count("refused");
                        tracing::warn!(job = %job_id, "scancel refused: {e:#}");
                    }
                }
            }
            Decision::Submit { shape, why } => {
                let argv = self.sbatch_argv(&shape);
                if self.args.dry_run {
                    self.counts.count("submit");
                    println!("would submit: sbatch {} ({shape}: {why})", argv.join(" "));
                    return;
                }
                if backoff.waiting() {
                    self.counts.count("hold");
                    tracing::info!(%shape, "holding: backing off after Slurm refused a submission");
                    return;
                }
                let args: Vec<&str> = argv.iter().map(String::as_str).collect();
                match run_slurm("sbatch", &args, &self.environment()) {
                    Ok(out) => {
                        backoff.succeeded();
                        self.counts.count("submit");
                        tracing::info!(job = %out.trim(), %shape, "submitted: {why}");
                    }
                    Err(e) => {
                        let wait = backoff.failed();
                        self.counts.count("refused");
                        tracing::warn!(%shape, "sbatch refused ({e:#}): no submission for {wait:?}");
                    }
                }
            }
        }
    }

    /// sbatch's arguments for an allocation of `shape`.
    fn sbatch_argv(&self, shape: &ShapeKey) -> Vec<String> {
        let a = self.args;
        let mut v = vec![
            "--parsable".to_string(),
            format!("--job-name={}", shape.job_name(&a.job_name)),
            format!("--nodes={}", shape.nnodes),
            "--ntasks-per-node=1".into(),
        ];
        if let Some(p) = &a.partition {
            v.push(format!("--partition={p}"));
        }
        if let Some(t) = &a.time {
            v.push(format!("--time={t}"));
        }
        match (&a.gres, shape.gpus) {
            (Some(g), _) => v.push(format!("--gres={g}")),
            (None, Some(g)) if g > 0 => v.push(format!("--gres=gpu:{g}")),
            // CPU ranks: one core each.
            _ => v.push(format!("--cpus-per-task={}", shape.nproc)),
        }
        v.extend(a.sbatch_args.iter().cloned());
        v.push(a.template.display().to_string());
        v
    }

    /// The environment sbatch passes to the allocation: the coordinator's address, the workers'
    /// credential (never the autoscaler's own token) and their options.
    fn environment(&self) -> Vec<(String, Option<String>)> {
        let a = self.args;
        let mut worker_args = format!("--exit-when-nothing-fits {}", a.nothing_fits_seconds);
        if a.allow_commands {
            worker_args.push_str(" --allow-commands");
        }
        if !a.worker_args.trim().is_empty() {
            worker_args = format!("{worker_args} {}", a.worker_args.trim());
        }
        vec![
            ("SWEEP_SERVER".into(), Some(a.server.clone())),
            ("SWEEP_TOKEN".into(), None),
            ("SWEEP_ENROLL_TOKEN_FILE".into(), None),
            (self.auth.0.into(), Some(self.auth.1.clone())),
            ("WORKER_ARGS".into(), Some(worker_args)),
        ]
    }
}

/// Its own allocations, from `squeue`.
fn squeue(prefix: &str) -> Result<Vec<Allocation>> {
    let out = run_slurm("squeue", &["-h", "--me", "-o", "%i|%j|%T|%D|%M"], &[])?;
    Ok(parse_squeue(&out, prefix))
}

/// Runs a Slurm command with these variables set (Some) or removed (None); its standard output,
/// or its standard error as the error.
fn run_slurm(program: &str, args: &[&str], env: &[(String, Option<String>)]) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {program} (is Slurm's client installed?)"))?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `GET /metrics` with the decisions' counts, on a listener of its own.
async fn serve_metrics(addr: std::net::SocketAddr, counts: Arc<Counts>) -> Result<()> {
    let registry = Arc::new(counts.registry());
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut text = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        crate::telemetry::CONTENT_TYPE,
                    )],
                    text,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-listen {addr}"))?;
    tracing::info!("metrics at http://{}/metrics", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(nnodes: i64, nproc: i64, jobs: i64) -> PendingShape {
        PendingShape {
            nnodes,
            nproc_per_node: nproc,
            command: false,
            gpus_per_node: None,
            jobs,
            epoch_seconds: None,
        }
    }

    fn limits(max_workers: usize, max_pending: usize) -> Limits {
        Limits {
            max_workers,
            max_pending_allocations: max_pending,
            startup_seconds: 60.0,
            allow_commands: false,
            time_limit_seconds: None,
        }
    }

    fn submits(d: &[Decision]) -> Vec<i64> {
        d.iter()
            .filter_map(|d| match d {
                Decision::Submit { shape, .. } => Some(shape.nnodes),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn names_carry_the_shape_both_ways() {
        for key in [
            ShapeKey {
                nnodes: 2,
                nproc: 4,
                command: false,
                gpus: Some(4),
            },
            ShapeKey {
                nnodes: 1,
                nproc: 1,
                command: true,
                gpus: None,
            },
        ] {
            let name = key.job_name("sweep-auto");
            assert_eq!(
                ShapeKey::parse(&name, "sweep-auto"),
                Some(key.clone()),
                "{name}"
            );
        }
        assert_eq!(ShapeKey::parse("other-n1-r1-t-g-", "sweep-auto"), None);
        assert_eq!(ShapeKey::parse("sweep-auto-nx-r1-t-g-", "sweep-auto"), None);
    }

    #[test]
    fn shapes_take_turns_within_both_caps() {
        let shapes = [shape(2, 1, 1), shape(1, 1, 3)];
        let d = plan(&shapes, &[], &limits(4, 10));
        assert_eq!(
            submits(&d),
            vec![2, 1, 1],
            "2 + 1 + 1 nodes: at --max-workers"
        );
        assert!(
            d.iter()
                .any(|d| matches!(d, Decision::Hold { why, .. } if why.contains("--max-workers"))),
            "{d:?}"
        );
        let d = plan(&shapes, &[], &limits(10, 1));
        assert_eq!(submits(&d), vec![2], "one queued allocation at most");
    }

    #[test]
    fn queued_and_starting_allocations_cover_their_shapes_and_surplus_queued_ones_are_cancelled() {
        let key = ShapeKey {
            nnodes: 1,
            nproc: 1,
            command: false,
            gpus: None,
        };
        let alloc = |id: &str, queued, running_seconds| Allocation {
            job_id: id.into(),
            shape: key.clone(),
            nodes: 1,
            queued,
            running_seconds,
        };
        let ours = [
            alloc("7", true, 0.0),
            alloc("8", false, 5.0),
            alloc("9", false, 600.0),
        ];
        let d = plan(&[shape(1, 1, 3)], &ours, &limits(10, 10));
        assert_eq!(
            submits(&d),
            vec![1],
            "3 pending, 2 covered (queued, starting): 1 more"
        );
        let d = plan(&[], &ours, &limits(10, 10));
        assert_eq!(
            d,
            vec![Decision::Cancel { job_id: "7".into(), why: "still queued, and its shape (1 node(s) x 1 rank(s), trainer) has 0 pending job(s) for its queued allocations".into() }]
        );
    }

    #[test]
    fn what_no_allocation_can_run_is_held_with_its_reason() {
        let mut cmd = shape(1, 1, 2);
        cmd.command = true;
        let mut long = shape(1, 2, 1);
        long.epoch_seconds = Some(4000.0);
        let mut l = limits(10, 10);
        l.time_limit_seconds = Some(3600.0);
        let d = plan(&[cmd, long], &[], &l);
        assert!(submits(&d).is_empty(), "{d:?}");
        let whys: Vec<String> = d
            .iter()
            .map(|d| match d {
                Decision::Hold { why, .. } => why.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(
            whys[0].contains("--allow-commands") && whys[1].contains("longer than --time"),
            "{whys:?}"
        );
    }

    #[test]
    fn squeue_lines_and_slurm_durations_parse() {
        let text = "12|sweep-auto-n2-r1-t-g-|RUNNING|2|1:05\n13|sweep-auto-n1-r1-t-g-|PENDING|1|0:00\n14|mine|RUNNING|1|3:00\n15|sweep-auto-n1-r1-t-g-|COMPLETING|1|2:00\n";
        let ours = parse_squeue(text, "sweep-auto");
        assert_eq!(ours.len(), 2);
        assert_eq!(
            (ours[0].nodes, ours[0].queued, ours[0].running_seconds),
            (2, false, 65.0)
        );
        assert!(ours[1].queued);
        assert_eq!(slurm_seconds("2"), Some(120.0));
        assert_eq!(slurm_seconds("1:02:03"), Some(3723.0));
        assert_eq!(slurm_seconds("1-00:00:10"), Some(86_410.0));
        assert_eq!(slurm_seconds("1-2"), Some(93_600.0));
        assert_eq!(slurm_seconds("UNLIMITED"), None);
    }
}
