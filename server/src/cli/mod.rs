//! The `server` command line: `serve`, and the terminal clients.
pub mod autoscale;
pub mod client;
pub mod loadgen;
pub mod pareto_bench;
pub mod pbt_bench;
pub mod tpe_bench;

/// Runs a Python script that reads one JSON document on stdin and writes one on stdout (the Optuna
/// references of the tests and benchmarks), and returns its answer.
pub fn python_json(
    python: &std::path::Path,
    script: &std::path::Path,
    input: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    use std::process::{Command, Stdio};
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {} (make setup installs it)", python.display()))?;
    let mut stdin = child.stdin.take().context("a piped stdin")?;
    std::io::Write::write_all(&mut stdin, input.to_string().as_bytes())?;
    drop(stdin);
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed (its error is above; make setup installs optuna into .venv)",
        script.display()
    );
    serde_json::from_slice(&out.stdout).with_context(|| format!("{}'s answer", script.display()))
}

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use protocol::routes;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cli::client::Client;
use crate::startup::{Application, ServeConfig};

#[derive(Debug, Parser)]
#[command(
    name = "server",
    version,
    about = "The sweep coordinator: sweeps and jobs in SQLite, a REST API, a dashboard, results",
    after_help = "Benchmarks and scale tests (each with its own --help): loadgen, tpe-bench, synth.\n\
                  The daily loop, step by step: docs/running.md (\"The first hour\")."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct Remote {
    /// The coordinator's root URL, as `server serve` printed it (no scheme means http://).
    #[arg(long, env = "SWEEP_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The admin token: `serve --token`, or the one it generated into <db>.token beside its
    /// database (reads need none unless it serves with --private).
    #[arg(long, env = "SWEEP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `server serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The SQLite database file (created when missing); its tokens are kept beside it
    /// (<db>.token, <db>.worker-token) and its checkpoints in <db>.artifacts/.
    #[arg(long, default_value = "sweeps.db")]
    db: PathBuf,
    /// Address and port to listen on (port 0: any free one; the URL is printed as stdout's first
    /// line). 0.0.0.0 makes it reachable from other machines.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin bearer token (every right). Prefer the SWEEP_TOKEN environment variable or
    /// --token-file: a flag's value shows in `ps`. Generated at first start into <db>.token
    /// (mode 0600) when none is given.
    #[arg(long, env = "SWEEP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the admin token (refused when empty or readable by group or others).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Worker token: the worker protocol and reads only (give this one to worker hosts).
    /// Generated at first start into <db>.worker-token when none is given.
    #[arg(long, env = "SWEEP_WORKER_TOKEN", hide_env_values = true)]
    worker_token: Option<String>,
    /// A file holding the worker token.
    #[arg(long, conflicts_with = "worker_token")]
    worker_token_file: Option<PathBuf>,
    /// Refuse the shared worker token: only per-worker credentials (`server worker add`) speak the
    /// worker protocol (docs/security.md says what each credential can do).
    #[arg(long)]
    no_shared_worker_token: bool,
    /// Host names (in the Host header) this coordinator answers to; repeat for several.
    /// Default: the loopback names when listening on loopback, any name otherwise.
    #[arg(long = "allowed-host")]
    allowed_hosts: Vec<String>,
    /// Where uploaded checkpoints are kept (default: <db>.artifacts/).
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// How long a claimed job stays its worker's without a heartbeat before it is given to another.
    #[arg(long, default_value_t = 30)]
    lease_seconds: u64,
    /// How long a job that spans nodes waits for all its workers to join before its gang is
    /// dissolved (the job pending again, no attempt counted).
    #[arg(long, default_value_t = 120)]
    gang_seconds: u64,
    /// Releases a job gets free while they follow no progress (no epoch committed since their
    /// claim); past these, a release charges its attempt as a failure does. A release after
    /// progress (preemption, the end of an allocation) is always free.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i64).range(0..=1_000_000))]
    free_idle_releases: i64,
    /// A network (CIDR, e.g. 10.20.0.0/16) where a gang's node 0 may name its rendezvous besides
    /// the address its claim came from; repeat for several. c10d's rendezvous is unauthenticated:
    /// name only the cluster's isolated network (docs/security.md).
    #[arg(long = "rendezvous-network", value_parser = clap::value_parser!(crate::rendezvous::Network))]
    rendezvous_networks: Vec<crate::rendezvous::Network>,
    /// Reads need the token too.
    #[arg(long)]
    private: bool,
    /// Mark the dashboard's session cookie `Secure` (set it when users reach the coordinator
    /// through a TLS proxy; the coordinator itself speaks plain HTTP).
    #[arg(long)]
    secure_cookie: bool,
    /// Keep the checkpoints of ended jobs (default: deleted when the job ends; they only serve
    /// resumes, and the study's network makes them about 125 MB each).
    #[arg(long)]
    keep_checkpoints: bool,
    /// Largest checkpoint a worker may upload, in MiB.
    #[arg(long, default_value_t = 1024)]
    max_checkpoint_mib: u64,
    /// Every stored checkpoint together at most, in GiB (default: no cap). Past it, uploads are
    /// refused (413) and jobs go on from their last stored checkpoint.
    #[arg(long)]
    max_checkpoints_gib: Option<f64>,
    /// Every job's kept log together at most, in GiB (default: no cap). Past it, appends are
    /// refused (413) and the worker counts the output as dropped.
    #[arg(long)]
    max_logs_gib: Option<f64>,
    /// Log kept per job (stdout and stderr of all its attempts), in MiB: the oldest output is
    /// dropped first.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_log_mib: u64,
    /// How long a dashboard session (`--private`: the cookie a typed token is traded for) lasts.
    #[arg(long, default_value_t = 12.0)]
    session_hours: f64,
    /// Event streams (`/api/events`) one client address may hold open at once (behind a proxy
    /// every viewer has the proxy's address: raise it there).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_event_streams_per_client: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator (and its dashboard, at the URL it prints).
    Serve(ServeArgs),
    /// Submit a sweep file (TOML, or JSON by extension).
    Submit {
        /// The sweep file (sweeps/ has examples; docs/sweep-files.md describes each field).
        file: PathBuf,
        /// Print only the new sweep's id (for scripts).
        #[arg(long)]
        print_id: bool,
        /// Check the file and show the jobs it would make, storing nothing.
        #[arg(long, conflicts_with = "print_id")]
        dry_run: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Sweeps, or the jobs of one sweep (the parameters that vary first).
    Status {
        /// A sweep's id (default: every sweep, a line each).
        sweep: Option<i64>,
        /// Redraw until the sweep has ended (Ctrl-C stops it sooner).
        #[arg(long, short)]
        watch: bool,
        /// Seconds between redraws.
        #[arg(long, default_value_t = 2.0, requires = "watch")]
        every: f64,
        #[command(flatten)]
        remote: Remote,
    },
    /// A job's log (stdout and stderr of its attempt, the latest by default).
    Logs {
        /// The job's id (`server status SWEEP` lists them).
        job: i64,
        /// Which attempt's log (default: the latest).
        #[arg(long)]
        attempt: Option<i64>,
        /// Keep printing as the job produces output, until it ends.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cancel a sweep: its pending jobs end at once, its running ones at their next heartbeat.
    Cancel {
        /// The sweep's id.
        sweep: i64,
        #[command(flatten)]
        remote: Remote,
    },
    /// A sweep's results: markdown (the study's table), csv or json; or rewrite a README's results block.
    Export(ExportArgs),
    /// Draw the study's figures of a sweep (lr, loss, acc, batch_and_loss, batch_and_acc) as PNG files.
    Plot {
        /// The sweep's id.
        sweep: i64,
        /// The directory the PNG files go to.
        #[arg(long, default_value = "images")]
        out: PathBuf,
        /// Headline run of lr/loss/acc (a job id).
        #[arg(long)]
        job: Option<i64>,
        /// lr of the per-batch-size figures.
        #[arg(long)]
        lr: Option<f64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Refresh a README from a sweep in one go: its results block (the provenance line, then the
    /// study's table beside ours, cell by cell) and the five figures.
    Publish {
        /// The sweep's id.
        sweep: i64,
        /// The README whose results block is rewritten.
        #[arg(long, default_value = "README.md")]
        readme: PathBuf,
        /// A named block (`<!-- results:NAME:begin -->` ... `<!-- results:NAME:end -->`) instead of
        /// the unnamed one, so one README holds several sweeps' results.
        #[arg(long)]
        block: Option<String>,
        /// Where the figures go (default: images, or images/NAME for a named block).
        #[arg(long)]
        images: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Per-worker credentials (admin): add, list, revoke.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Size a cluster to the pending jobs: `autoscale slurm` submits worker allocations where a
    /// shape of pending job lacks workers and cancels queued ones whose work has gone
    /// (docs/cluster.md#a-coordinator-that-sizes-the-cluster).
    #[command(subcommand)]
    Autoscale(crate::cli::autoscale::AutoscaleCommand),
    /// Benchmark: simulated workers (claim, 3 metrics, finish) against a real coordinator.
    #[command(hide = true)]
    Loadgen(crate::cli::loadgen::LoadArgs),
    /// Benchmark: one TPE draw at N finished trials beside Optuna's TPESampler, a whole TPE claim
    /// through a real coordinator, and other sweeps' claim rate while TPE draws.
    #[command(hide = true)]
    TpeBench(crate::cli::tpe_bench::TpeBenchArgs),
    /// Benchmark: a population-based training decision at N members, by the rules alone and as a
    /// metrics report through a real coordinator beside a plain sweep's.
    #[command(hide = true)]
    PbtBench(crate::cli::pbt_bench::PbtBenchArgs),
    /// One multi-objective draw (TPE, NSGA-II) beside Optuna's samplers on the same histories,
    /// and the front endpoint of a large sweep (docs/search.md#several-objectives).
    ParetoBench(crate::cli::pareto_bench::ParetoBenchArgs),
    /// Scale testing: add a finished synthetic sweep (the study's 10 batch sizes x 2 lrs, repeated
    /// up to --jobs jobs, each with --epochs epochs of made-up metrics) to a database file.
    #[command(hide = true)]
    Synth {
        /// The database file to add the sweep to.
        #[arg(long, default_value = "sweeps.db")]
        db: PathBuf,
        /// Jobs in the synthetic sweep.
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        /// Epochs of made-up metrics per job.
        #[arg(long, default_value_t = 300)]
        epochs: i64,
    },
}

/// `--format`: the results' formats from their one list, each named in `--help`.
fn format_parser() -> impl clap::builder::TypedValueParser<Value = crate::results::export::Format> {
    use crate::results::export::Format;
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Format::ALL.map(Format::as_str))
        .map(|s| s.parse::<Format>().expect("one of Format::ALL"))
}

/// `server worker ...`: each a thin client of the admin API (`/api/workers`).
#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// Add a worker's own credential and print its token (shown this once; only its hash is kept).
    /// The worker's claims must name NAME, or NAME and a suffix (NAME-1234).
    Add {
        /// The worker's name (`worker run --name NAME`), or an enrollment's prefix.
        name: String,
        /// Jobs this worker may hold at once (default: no cap).
        #[arg(long)]
        max_in_flight: Option<i64>,
        /// An enrollment credential instead: it mints worker credentials named NAME-SUFFIX
        /// (`worker run --enroll-token-file`), --uses times, until --expires-hours from now.
        #[arg(long, requires_all = ["uses", "expires_hours"])]
        enrollment: bool,
        /// With --enrollment: how many worker credentials it may mint.
        #[arg(long, requires = "enrollment")]
        uses: Option<i64>,
        /// With --enrollment: hours it stays valid.
        #[arg(long, requires = "enrollment")]
        expires_hours: Option<f64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Every credential (never its token), with the jobs each holds now.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a credential: its jobs go back to pending at once (no attempt charged) and its
    /// token is refused from then on.
    Revoke {
        /// The credential's name (`server worker list`).
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

async fn worker_command(cmd: WorkerCommand) -> Result<()> {
    use protocol::credentials::{CredentialRow, EnrollmentLimits, IssuedCredential, NewCredential};
    match cmd {
        WorkerCommand::Add {
            name,
            max_in_flight,
            enrollment,
            uses,
            expires_hours,
            remote,
        } => {
            let enrollment = match (enrollment, uses, expires_hours) {
                (true, Some(uses), Some(h)) => Some(EnrollmentLimits {
                    uses,
                    expires_in_seconds: (h * 3600.0).round() as i64,
                    max_in_flight,
                }),
                _ => None,
            };
            let body = NewCredential {
                name,
                max_in_flight: max_in_flight.filter(|_| enrollment.is_none()),
                enrollment,
            };
            let client = Client::new(&remote.server, remote.token);
            let issued: IssuedCredential =
                serde_json::from_value(client.post_json(routes::WORKERS, &body).await?)?;
            eprintln!(
                "{} credential {} added; its token (shown once):",
                issued.kind.as_str(),
                issued.name
            );
            println!("{}", issued.token);
            Ok(())
        }
        WorkerCommand::List { remote } => {
            let client = Client::new(&remote.server, remote.token);
            let rows: Vec<CredentialRow> =
                serde_json::from_value(client.get_json(routes::WORKERS).await?)?;
            println!(
                "{:<32} {:<10} {:>8} {:>8}  state",
                "name", "kind", "holds", "cap"
            );
            for r in rows {
                let state = match (r.revoked_at, r.uses_left, &r.enrolled_by) {
                    (Some(_), _, _) => "revoked".to_string(),
                    (None, Some(n), _) => format!("{n} uses left"),
                    (None, None, Some(by)) => format!("enrolled by {by}"),
                    (None, None, None) => "live".to_string(),
                };
                let cap = r.max_in_flight.map_or("-".into(), |c| c.to_string());
                println!(
                    "{:<32} {:<10} {:>8} {:>8}  {state}",
                    r.name,
                    r.kind.as_str(),
                    r.running,
                    cap
                );
            }
            Ok(())
        }
        WorkerCommand::Revoke { name, remote } => {
            let client = Client::new(&remote.server, remote.token);
            let v = client
                .post_json(&routes::revoke_worker(&name), &serde_json::json!({}))
                .await?;
            let r: protocol::credentials::Revoked = serde_json::from_value(v)?;
            println!(
                "revoked {}; {} job(s) it held went back to pending",
                r.name, r.released
            );
            Ok(())
        }
    }
}

/// `server submit FILE`: the new sweep (and what its file may not mean as written), or with
/// `--dry-run` the jobs it would make.
async fn submit(
    file: &std::path::Path,
    print_id: bool,
    dry_run: bool,
    remote: Remote,
) -> Result<()> {
    let client = Client::new(&remote.server, remote.token);
    if dry_run {
        let plan = client.dry_run(file).await?;
        print!("{}", crate::cli::client::dry_run_text(&plan));
        return Ok(());
    }
    let r = client.submit(file).await?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if print_id {
        println!("{}", r.id);
    } else {
        println!("submitted sweep {} with {} jobs", r.id, r.jobs);
        println!(
            "follow it: server status {} --watch, or the dashboard at {}/#/sweeps/{}",
            r.id,
            remote.server.trim_end_matches('/'),
            r.id
        );
    }
    Ok(())
}

/// `server export SWEEP --importance`: which parameter mattered, as a markdown table.
async fn print_importance(
    client: &Client,
    sweep: i64,
    metric: Option<&str>,
    mode: Option<&str>,
) -> Result<()> {
    let mut query = vec![];
    if let Some(m) = metric {
        query.push(format!("metric={m}"));
    }
    if let Some(m) = mode {
        query.push(format!("mode={m}"));
    }
    print!(
        "{}",
        importance_table(client, sweep, &query.join("&")).await?
    );
    Ok(())
}

/// The importance of a sweep's parameters as markdown (`query`: its metric and mode, if asked).
async fn importance_table(client: &Client, sweep: i64, query: &str) -> Result<String> {
    let path = format!("{}/importance?{query}", routes::sweep(sweep));
    let imp: protocol::views::Importance = serde_json::from_value(client.get_json(&path).await?)
        .context("unexpected answer to an importance")?;
    Ok(crate::results::importance::markdown(&imp))
}

/// `server export`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The sweep's id.
    sweep: i64,
    /// markdown (the study's table), csv (a row per job) or json.
    #[arg(long, default_value = "markdown", value_parser = format_parser())]
    format: crate::results::export::Format,
    /// Precision, recall, F1, epochs and wall-time columns.
    #[arg(long)]
    extra: bool,
    /// The study's Chinese headings.
    #[arg(long)]
    chinese: bool,
    /// The study's table (its first README, SEED.md) beside this sweep's, cell by cell, with the
    /// difference in points.
    #[arg(long)]
    compare: bool,
    /// Rewrite the block between <!-- results:begin --> and <!-- results:end --> of this file.
    #[arg(long)]
    readme: Option<PathBuf>,
    /// With --readme: the named block (<!-- results:NAME:begin -->) instead.
    #[arg(long, requires = "readme")]
    block: Option<String>,
    /// Which parameter mattered instead (PED-ANOVA, as Optuna computes it): a markdown table.
    #[arg(long, conflicts_with_all = ["readme", "compare"])]
    importance: bool,
    /// With --importance: the metric (default: the sweep's objective, else accuracy).
    #[arg(long, requires = "importance")]
    metric: Option<String>,
    /// With --importance: min or max (default: the metric's).
    #[arg(long, requires = "importance", value_parser = ["min", "max"])]
    mode: Option<String>,
    /// The front instead (the trials no feasible trial dominates on the objectives): a
    /// markdown table sorted by the first objective.
    #[arg(long, conflicts_with_all = ["readme", "compare", "importance"])]
    pareto: bool,
    /// With --pareto: the objectives, as metric[:max|min],... (default: the search's).
    #[arg(long, requires = "pareto")]
    objectives: Option<String>,
    /// A PBT sweep's best member's schedule instead (its params by epoch range, through the
    /// checkpoints it copied): a markdown table, then a sweep file that replays it as one run.
    #[arg(long, conflicts_with_all = ["readme", "compare", "importance", "pareto"])]
    schedule: bool,
    #[command(flatten)]
    remote: Remote,
}

/// `server export`: the results (or a README's block rewritten), the importance, or the front.
async fn export(a: ExportArgs) -> Result<()> {
    let client = Client::new(&a.remote.server, a.remote.token);
    if a.importance {
        return print_importance(&client, a.sweep, a.metric.as_deref(), a.mode.as_deref()).await;
    }
    if a.pareto {
        return print_front(&client, a.sweep, a.objectives.as_deref()).await;
    }
    if a.schedule {
        return print_schedule(&client, a.sweep).await;
    }
    let query = format!(
        "extra={}&chinese={}&compare={}",
        a.extra, a.chinese, a.compare
    );
    match a.readme {
        None => {
            let path = format!("{}?format={}&{query}", routes::results(a.sweep), a.format);
            print!("{}", client.get_text(&path).await?);
            Ok(())
        }
        Some(file) => rewrite_readme(&client, a.sweep, &file, a.block.as_deref(), &query).await,
    }
}

/// `server export SWEEP --pareto`: the front as a markdown table.
async fn print_front(client: &Client, sweep: i64, objectives: Option<&str>) -> Result<()> {
    let query = match objectives {
        Some(o) => format!("?objectives={}", urlencoding(o)),
        None => String::new(),
    };
    let path = format!("{}/pareto{query}", routes::sweep(sweep));
    let view: protocol::views::ParetoView = serde_json::from_value(client.get_json(&path).await?)
        .context("unexpected answer to a front")?;
    print!("{}", crate::results::front::markdown(&view));
    Ok(())
}

/// A query value's reserved characters escaped (metric names are letters, digits, `_ . - /`).
/// A PBT sweep's best member's schedule: a table of epoch ranges, then the replay sweep file.
async fn print_schedule(client: &Client, sweep: i64) -> Result<()> {
    let path = format!("{}/schedule", routes::sweep(sweep));
    let v: protocol::views::ScheduleView = serde_json::from_str(&client.get_text(&path).await?)?;
    let keys: Vec<&String> = v
        .steps
        .first()
        .map(|s| s.params.keys().collect())
        .unwrap_or_default();
    let value = match (v.value, crate::results::shape::is_fraction(&v.metric)) {
        (Some(x), true) => format!("{:.2}%", 100.0 * x),
        (Some(x), false) => format!("{x}"),
        (None, _) => "-".into(),
    };
    println!(
        "The best member: job {} ({} {} {value}); its weights came from this schedule:\n",
        v.job_id, v.metric, v.mode
    );
    let head: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    println!("| epochs | trained by job | {} |", head.join(" | "));
    println!("|---|---:|{}", "---:|".repeat(keys.len()));
    for s in &v.steps {
        let values: Vec<String> = keys
            .iter()
            .map(|k| s.params.get(*k).map_or("".into(), |x| x.to_string()))
            .collect();
        println!(
            "| {}-{} | {} | {} |",
            s.first_epoch,
            s.last_epoch,
            s.job_id,
            values.join(" | ")
        );
    }
    match v.replay {
        Some(toml) => println!("\n{toml}"),
        None => println!("\n(a command sweep: no replay file; its program reads no schedule)"),
    }
    Ok(())
}

fn urlencoding(s: &str) -> String {
    s.replace('%', "%25")
        .replace('/', "%2F")
        .replace(' ', "%20")
}

/// `server cancel SWEEP`: what ended now, and what stops at its next heartbeat.
async fn cancel(sweep: i64, remote: Remote) -> Result<()> {
    let client = Client::new(&remote.server, remote.token);
    let v = client
        .post_json(
            &format!("{}/cancel", routes::sweep(sweep)),
            &serde_json::json!({}),
        )
        .await?;
    println!(
        "sweep {sweep} cancelled: {} pending job(s) ended now, {} running job(s) stop at their next heartbeat",
        v["cancelled_pending"], v["stopping_running"]
    );
    Ok(())
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Worker(cmd) => worker_command(cmd).await,
        Command::Autoscale(crate::cli::autoscale::AutoscaleCommand::Slurm(args)) => {
            crate::cli::autoscale::run(&args).await
        }
        Command::Cancel { sweep, remote } => cancel(sweep, remote).await,
        Command::Serve(args) => serve(args).await,
        Command::Loadgen(args) => crate::cli::loadgen::run(&args).await,
        Command::TpeBench(args) => crate::cli::tpe_bench::run(&args).await,
        Command::PbtBench(args) => crate::cli::pbt_bench::run(&args).await,
        Command::ParetoBench(args) => crate::cli::pareto_bench::run(&args).await,
        Command::Synth { db, jobs, epochs } => synth(&db, jobs, epochs).await,
        Command::Plot {
            sweep,
            out,
            job,
            lr,
            remote,
        } => {
            let client = Client::new(&remote.server, remote.token);
            write_figures(&client, sweep, &out, job, lr).await
        }
        Command::Publish {
            sweep,
            readme,
            block,
            images,
            remote,
        } => {
            let client = Client::new(&remote.server, remote.token);
            let block = block.as_deref();
            let images = images.unwrap_or_else(|| match block {
                Some(name) => PathBuf::from("images").join(name),
                None => PathBuf::from("images"),
            });
            rewrite_readme(&client, sweep, &readme, block, "compare=true").await?;
            write_figures(&client, sweep, &images, None, None).await
        }
        Command::Submit {
            file,
            print_id,
            dry_run,
            remote,
        } => submit(&file, print_id, dry_run, remote).await,
        Command::Logs {
            job,
            attempt,
            follow,
            remote,
        } => {
            Client::new(&remote.server, remote.token)
                .logs(job, attempt, follow, &mut std::io::stdout())
                .await
        }
        Command::Status {
            sweep,
            watch,
            every,
            remote,
        } => {
            let client = Client::new(&remote.server, remote.token);
            if watch {
                let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
                let every = std::time::Duration::from_secs_f64(every.clamp(0.2, 3600.0));
                return client
                    .watch(sweep, every, tty, &mut std::io::stdout())
                    .await;
            }
            print!("{}", client.status(sweep).await?);
            Ok(())
        }
        Command::Export(args) => export(args).await,
    }
}

/// `server serve`: builds the coordinator, prints `listening on URL` as stdout's first line (scripts
/// wait for it; generated tokens go to stderr), serves until SIGTERM/ctrl-c.
async fn serve(a: ServeArgs) -> Result<()> {
    let mut cfg = ServeConfig::new(a.db);
    cfg.listen = a.listen;
    cfg.token = a.token;
    cfg.token_file = a.token_file;
    cfg.worker_token = a.worker_token;
    cfg.worker_token_file = a.worker_token_file;
    cfg.allowed_hosts = a.allowed_hosts;
    if let Some(dir) = a.artifacts {
        cfg.artifacts = dir;
    }
    cfg.lease_ms = a.lease_seconds as i64 * 1000;
    cfg.gang_ms = a.gang_seconds.min(7 * 24 * 3600) as i64 * 1000;
    cfg.rendezvous_networks = a.rendezvous_networks.clone();
    cfg.free_idle_releases = a.free_idle_releases;
    let gib = |g: f64| (g.max(0.0) * (1u64 << 30) as f64) as u64;
    cfg.max_checkpoints_total = a.max_checkpoints_gib.map(gib);
    cfg.max_logs_total = a.max_logs_gib.map(|g| gib(g).min(i64::MAX as u64) as i64);
    cfg.shared_worker_token = !a.no_shared_worker_token;
    cfg.secure_cookie = a.secure_cookie;
    cfg.private = a.private;
    cfg.max_checkpoint_bytes = a.max_checkpoint_mib << 20;
    cfg.keep_checkpoints = a.keep_checkpoints;
    cfg.max_log_bytes = (a.max_log_mib << 20) as i64;
    if !(a.session_hours > 0.0 && a.session_hours <= 24.0 * 365.0) {
        anyhow::bail!("--session-hours: more than 0, at most a year");
    }
    cfg.session_ttl = std::time::Duration::from_secs_f64(a.session_hours * 3600.0);
    cfg.max_event_streams_per_client = a.max_event_streams_per_client as usize;
    let app = Application::build(cfg.clone()).await?;
    if app.new_token {
        eprintln!(
            "generated token (stored in {}): {}",
            crate::startup::token_path(&cfg.db).display(),
            app.token()
        );
    }
    if app.new_worker_token {
        eprintln!(
            "generated worker token (stored in {}): {}",
            crate::startup::worker_token_path(&cfg.db).display(),
            app.worker_token()
        );
    }
    tracing::info!(db = %cfg.db.display(), port = app.port(), "coordinator listening on {}", cfg.listen.ip());
    let url = format!("http://{}:{}", cfg.listen.ip(), app.port());
    println!("{}", protocol::listening::line(&url));
    app.run_until_stopped(crate::startup::shutdown_signal())
        .await
}

/// `server synth`: a finished synthetic sweep of `jobs` jobs x `epochs` epochs, for scale tests.
async fn synth(db: &std::path::Path, jobs: usize, epochs: i64) -> Result<()> {
    // The study's 20 cells, each with as many seeds as make up `jobs` (repeats stop at 1,000).
    let seeds = jobs.div_ceil(20).clamp(1, crate::sweep::MAX_JOBS / 20);
    let seed_axis: Vec<String> = (0..seeds).map(|s| s.to_string()).collect();
    let spec = crate::sweep::SweepSpec::from_toml(&format!(
        "name = \"synthetic {} x {epochs}\"\n[train]\ndataset = \"synthetic\"\nepochs = {epochs}\n\
         [grid]\nbatch_size = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]\nlr = [0.01, 0.0001]\nseed = [{}]\n",
        seeds * 20,
        seed_axis.join(", ")
    ))?;
    let store = crate::store::Store::open(db).await?;
    let now = crate::state::Clock::System.now_ms();
    let t0 = std::time::Instant::now();
    let (id, n) = store.create_sweep(&spec, now).await?;
    let rows = store.fill_synthetic(id, epochs, now).await?;
    // One transaction of hundreds of MB leaves a log as large: folded into the file and emptied
    // now (on a connection of its own, outside the writer's transactions), so reads do not go
    // through it.
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(db);
    let mut c = sqlx::ConnectOptions::connect(&opts).await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut c)
        .await?;
    println!(
        "sweep {id}: {n} jobs, {rows} metric rows in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Draws the study's five figures of `sweep` into `out` (through the coordinator's figure route).
async fn write_figures(
    client: &Client,
    sweep: i64,
    out: &std::path::Path,
    job: Option<i64>,
    lr: Option<f64>,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut query = vec![];
    if let Some(j) = job {
        query.push(format!("job={j}"));
    }
    if let Some(l) = lr {
        query.push(format!("lr={l}"));
    }
    // The study's five figures are of the study's kind of sweep (a grid over batch size and lr).
    let spec = client
        .get_json(&format!("{}?jobs=false", routes::sweep(sweep)))
        .await?;
    let study = crate::results::shape::is_study_grid(&spec["spec"]);
    for name in crate::results::figures::NAMES.into_iter().filter(|_| study) {
        let bytes = client
            .get_bytes(&format!(
                "{}?{}",
                routes::figure(sweep, name),
                query.join("&")
            ))
            .await?;
        let path = out.join(format!("{name}.png"));
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    // A search with several objectives: its front too (a sweep without one has no such figure).
    if let Ok(bytes) = client.get_bytes(&routes::figure(sweep, "pareto")).await {
        let path = out.join("pareto.png");
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Rewrites the block between the results markers of `file` (the unnamed block's or `block`'s) with
/// the sweep's provenance and table.
async fn rewrite_readme(
    client: &Client,
    sweep: i64,
    file: &std::path::Path,
    block: Option<&str>,
    query: &str,
) -> Result<()> {
    // A bad block name fails before any request.
    crate::results::export::markers(block).map_err(|e| anyhow::anyhow!(e))?;
    let table = client
        .get_text(&format!(
            "{}?format=markdown&{query}",
            routes::results(sweep)
        ))
        .await?;
    let detail: protocol::views::SweepDetail = serde_json::from_value(
        client
            .get_json(&format!("{}?limit=10000", routes::sweep(sweep)))
            .await?,
    )
    .context("unexpected sweep document")?;
    let mut body = format!("{}\n\n{table}", crate::results::export::provenance(&detail));
    // A sweep over more than one parameter: which of them mattered, under its table. Without an
    // answer (fewer than 2 completed jobs), the block says so rather than failing the publish.
    let axes = crate::sweep::SweepSpec::from_value(&detail.spec)
        .map(|s| crate::results::importance::axes(&s).len())
        .unwrap_or(0);
    // Several objectives: the front under the table (the trade-off, not one winner).
    let several = crate::sweep::SweepSpec::from_value(&detail.spec)
        .ok()
        .and_then(|s| s.search)
        .is_some_and(|s| s.objectives.len() > 1);
    if several {
        let path = format!("{}/pareto", routes::sweep(sweep));
        let view: protocol::views::ParetoView =
            serde_json::from_value(client.get_json(&path).await?).context("unexpected front")?;
        body.push_str(&format!("\n{}", crate::results::front::markdown(&view)));
    }
    if axes > 1 {
        match importance_table(client, sweep, "").await {
            Ok(t) => body.push_str(&format!("\n{t}")),
            Err(e) => body.push_str(&format!("\nNo importance yet: {e:#}.\n")),
        }
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let new = crate::results::export::rewrite_block(&text, block, &body)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    std::fs::write(file, new)?;
    println!("updated the results block of {}", file.display());
    Ok(())
}
