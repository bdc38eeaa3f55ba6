//! The coordinator's load generator: N simulated workers, each cycling claim -> 3 metrics -> finish
//! against a real server over loopback HTTP, counting duplicate claims and lost jobs. Optional: the
//! same pattern in Optuna on SQLite (`optuna_peer.py`), run in the same command, for comparison.
use anyhow::{bail, Context, Result};
use protocol::{routes, Claim, ClaimRequest, FinishRequest, MetricsReply, MetricsReport, Outcome};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Concurrent simulated workers, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub workers: Vec<usize>,
    /// Jobs per run (a sweep of this many jobs, drained completely).
    #[arg(long, default_value_t = 5000)]
    pub jobs: usize,
    /// Target this coordinator instead of starting one (`server serve` on a temporary database).
    #[arg(long)]
    pub server: Option<String>,
    #[arg(long, default_value = "loadgen-token")]
    pub token: String,
    /// Also run Optuna on SQLite with the same pattern (ask, 3 reports, tell).
    #[arg(long)]
    pub optuna: bool,
    #[arg(long, default_value = ".venv/bin/python")]
    pub python: PathBuf,
    #[arg(long, default_value = "../shared/reference/optuna_peer.py")]
    pub optuna_script: PathBuf,
    #[arg(long, default_value_t = 300)]
    pub optuna_trials: usize,
    /// Early-stopping rules to run each level under, one run per value: none, asha, median,
    /// hyperband (the decision is taken at every report; pruned jobs stop reporting, as a
    /// worker's would).
    #[arg(long, value_delimiter = ',', default_value = "none")]
    pub early_stop: Vec<String>,
    /// Also submit, before each run, a sweep of this many 2-rank jobs that the simulated workers
    /// (1 free rank each) never fit: older pending jobs every claim must pass over. Cancelled after.
    #[arg(long, default_value_t = 0)]
    pub unfit: usize,
    /// Whether the simulated workers' claims offer a rendezvous for multi-node jobs (as every
    /// `worker run` does), one run per value: none, offered. The load has no multi-node job: this
    /// measures what the gang checks cost every claim.
    #[arg(long, value_delimiter = ',', default_value = "none")]
    pub rendezvous: Vec<String>,
    /// Anonymous readers running beside the workers, one run per value: each repeats the heaviest
    /// read anyone may make (a 200-byte search that matches nothing over a sweep of
    /// --reader-jobs jobs, a page of 500) until the run ends.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub readers: Vec<usize>,
    /// Jobs of the sweep the readers search (submitted once, cancelled).
    #[arg(long, default_value_t = 100_000)]
    pub reader_jobs: usize,
}

#[derive(Debug, Clone)]
pub struct LoadResult {
    pub workers: usize,
    /// How long submitting the sweep took.
    pub submit_seconds: f64,
    pub early_stop: String,
    pub rendezvous: bool,
    pub cycles: usize,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub duplicates: usize,
    pub pruned: usize,
    pub lost: usize,
    pub errors: usize,
    pub readers: usize,
    /// Reads answered, and refused (503: too many at once, or too long).
    pub reads: usize,
    pub reads_refused: usize,
}

pub(crate) struct Served {
    child: Child,
    pub(crate) base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_server(token: &str) -> Result<Served> {
    start_server_with(token, &[])
}

/// `start_server` with more `serve` options.
pub(crate) fn start_server_with(token: &str, extra: &[&str]) -> Result<Served> {
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--token", token])
        .args(extra)
        .arg("--db")
        .arg(dir.path().join("load.db"))
        .stderr(Stdio::null());
    let (child, base) =
        protocol::listening::start_coordinator(cmd).context("cannot start the coordinator")?;
    Ok(Served {
        child,
        base,
        _dir: dir,
    })
}

/// One run: submit `jobs` jobs, drain them with `workers` concurrent clients.
/// One simulated worker: claim (as `request`), three epochs of metrics, finish, until no job is
/// left. Returns each cycle's latency and the number of failed calls.
pub(crate) async fn simulated_worker(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    request: ClaimRequest,
    claimed: &Mutex<HashMap<i64, usize>>,
) -> (Vec<Duration>, usize) {
    let (mut latencies, mut errors) = (Vec::new(), 0usize);
    // A write of a held job carries its claim's secret (empty for the claim itself).
    let post = |path: String, secret: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(token)
            .header(protocol::LEASE_SECRET_HEADER, secret)
            .json(&body)
            .send()
    };
    loop {
        let c0 = Instant::now();
        let Ok(r) = post(routes::CLAIM.into(), "", json!(request)).await else {
            errors += 1;
            continue;
        };
        if r.status() == reqwest::StatusCode::NO_CONTENT {
            break;
        }
        let Ok(claim) = r.json::<Claim>().await else {
            errors += 1;
            continue;
        };
        *claimed
            .lock()
            .expect("not poisoned")
            .entry(claim.id)
            .or_default() += 1;
        let mut status = Outcome::Completed;
        for epoch in 1..=3 {
            // A different accuracy per job, so an early-stopping rule has something to decide.
            let m = MetricsReport {
                attempt: claim.attempt,
                epoch,
                lr: Some(0.01),
                train_loss: Some(1.0 / epoch as f64),
                test_loss: Some(1.0 / epoch as f64),
                accuracy: Some((claim.id * 7919 % 100) as f64 / 100.0),
                ..Default::default()
            };
            let reply = match post(routes::metrics(claim.id), &claim.lease_secret, json!(m)).await {
                Ok(r) if r.status().is_success() => r.json::<MetricsReply>().await.ok(),
                _ => None,
            };
            match reply {
                Some(r) if r.stop => {
                    status = Outcome::Pruned;
                    break;
                }
                Some(_) => {}
                None => errors += 1,
            }
        }
        let f = FinishRequest {
            attempt: claim.attempt,
            status,
            summary: None,
            error: None,
            node_rank: None,
        };
        let ok = post(routes::finish(claim.id), &claim.lease_secret, json!(f)).await;
        if !ok.is_ok_and(|r| r.status().is_success()) {
            errors += 1;
        }
        latencies.push(c0.elapsed());
    }
    (latencies, errors)
}

/// Submits a sweep spec (JSON); its id.
pub(crate) async fn submit(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    spec: &Value,
) -> Result<i64> {
    let r = http
        .post(format!("{base}{}", routes::SWEEPS))
        .bearer_auth(token)
        .json(spec)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "submitting a sweep failed: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok(r.json::<protocol::views::Created>().await?.id)
}

/// The load sweep: `jobs` 3-epoch jobs under the early-stopping rule named.
fn load_spec(workers: usize, jobs: usize, early_stop: &str) -> Result<Value> {
    let seeds: Vec<usize> = (0..jobs).collect();
    let mut spec =
        json!({"name": format!("load-{workers}"), "train": {"epochs": 3}, "grid": {"seed": seeds}});
    match early_stop {
        "none" => {}
        "asha" => {
            spec["early_stop"] = json!({"method": "asha", "min_epochs": 1, "reduction_factor": 3})
        }
        "median" => {
            spec["early_stop"] = json!({"method": "median", "startup_trials": 5, "min_epochs": 1})
        }
        "hyperband" => {
            spec["early_stop"] =
                json!({"method": "hyperband", "min_epochs": 1, "reduction_factor": 3})
        }
        other => bail!("--early-stop: {other} (expected none, asha, median or hyperband)"),
    }
    Ok(spec)
}

/// One run's load: how many workers, which early-stopping rule, whether claims offer a rendezvous.
#[derive(Debug, Clone, Copy)]
pub struct Level<'a> {
    pub workers: usize,
    pub early_stop: &'a str,
    pub rendezvous: bool,
    /// Anonymous readers beside the workers, and the sweep they search.
    pub readers: usize,
    pub read_sweep: Option<i64>,
}

/// A simulated worker's claim: `unfit` says it has one rank free (so 2-rank jobs never fit it); a
/// rendezvous on a port nothing binds (no multi-node job is ever submitted).
pub(crate) fn claim_request(w: usize, unfit: bool, rendezvous: bool) -> ClaimRequest {
    ClaimRequest {
        deadline: None,
        worker: format!("load-{w}"),
        capacity: unfit.then_some(protocol::Capacity {
            ranks: 1,
            max_batch_size: None,
        }),
        accepts_commands: false,
        rendezvous: rendezvous.then(|| protocol::Rendezvous {
            addr: "127.0.0.1".into(),
            port: 20_000 + (w % 40_000) as u16,
        }),
    }
}

pub async fn run_level(
    base: &str,
    token: &str,
    level: Level<'_>,
    jobs: usize,
    unfit: usize,
) -> Result<LoadResult> {
    let Level {
        workers,
        early_stop,
        rendezvous,
        readers,
        read_sweep,
    } = level;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(workers.max(1))
        .build()?;
    let unfit_sweep = match unfit {
        0 => None,
        n => {
            let seeds: Vec<usize> = (0..n).collect();
            let spec =
                json!({"name": "unfit", "train": {"nproc_per_node": 2}, "grid": {"seed": seeds}});
            Some(submit(&http, base, token, &spec).await?)
        }
    };
    let spec = load_spec(workers, jobs, early_stop)?;
    let submitted = Instant::now();
    let sweep = submit(&http, base, token, &spec).await?;
    let submit_seconds = submitted.elapsed().as_secs_f64();
    let claimed: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (http, base, token, claimed) = (
            http.clone(),
            base.to_string(),
            token.to_string(),
            claimed.clone(),
        );
        // With jobs that must not fit, the workers say they have one rank free.
        let request = claim_request(w, unfit_sweep.is_some(), rendezvous);
        tasks.push(tokio::spawn(async move {
            simulated_worker(&http, &base, &token, request, &claimed).await
        }));
    }
    let reading = Readers::start(&http, base, read_sweep.map(|s| (s, readers)));
    let (mut latencies, mut errors) = (Vec::<Duration>::new(), 0);
    for t in tasks {
        let (l, e) = t.await?;
        latencies.extend(l);
        errors += e;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let (reads, reads_refused) = reading.finish().await?;
    if let Some(id) = unfit_sweep {
        http.post(format!("{base}{}/cancel", routes::sweep(id)))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?;
    }
    let (p50_ms, p99_ms) = percentiles(&mut latencies);
    let duplicates = claimed
        .lock()
        .expect("not poisoned")
        .values()
        .filter(|&&n| n > 1)
        .count();
    // The sweep's own count: its job list is paged.
    let detail: protocol::views::SweepDetail = http
        .get(format!("{base}{}?jobs=false", routes::sweep(sweep)))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    let (completed, pruned) = (
        detail.sweep.completed as usize,
        detail.sweep.pruned as usize,
    );
    Ok(LoadResult {
        workers,
        submit_seconds,
        early_stop: early_stop.to_string(),
        rendezvous,
        cycles: latencies.len(),
        seconds,
        p50_ms,
        p99_ms,
        duplicates,
        pruned,
        lost: jobs.saturating_sub(completed + pruned),
        errors,
        readers,
        reads,
        reads_refused,
    })
}

/// The 50th and 99th percentiles of `latencies`, in ms (0 for none).
fn percentiles(latencies: &mut [Duration]) -> (f64, f64) {
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0)
    };
    (pct(0.50), pct(0.99))
}

/// The anonymous readers of a run, until it ends.
struct Readers {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(usize, usize)>>,
}

impl Readers {
    /// `n` readers of sweep `s` (from `read`), or none.
    fn start(http: &reqwest::Client, base: &str, read: Option<(i64, usize)>) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = match read {
            Some((sweep, n)) => (0..n)
                .map(|_| tokio::spawn(reader(http.clone(), base.to_string(), sweep, stop.clone())))
                .collect(),
            None => vec![],
        };
        Readers { stop, tasks }
    }

    /// Stops them; the reads answered and refused.
    async fn finish(self) -> Result<(usize, usize)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut refused) = (0, 0);
        for t in self.tasks {
            let (o, r) = t.await?;
            ok += o;
            refused += r;
        }
        Ok((ok, refused))
    }
}

/// One anonymous reader: the heaviest read anyone may make, again and again until `stop`; how
/// many were answered and how many refused (503).
async fn reader(
    http: reqwest::Client,
    base: String,
    sweep: i64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (usize, usize) {
    // 200 bytes that no job's params or worker contain: every row is scanned.
    let q = "~".repeat(protocol::views::MAX_QUERY_TEXT);
    let url = format!("{base}/api/sweeps/{sweep}/jobs?limit=500&sort=accuracy&q={q}");
    let (mut ok, mut refused) = (0, 0);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match http.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                ok += 1;
            }
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => refused += 1,
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    (ok, refused)
}

/// A process's peak resident memory (`VmHWM`), in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn optuna(a: &LoadArgs, workers: usize) -> Result<String> {
    let out = Command::new(&a.python)
        .arg(&a.optuna_script)
        .args([
            "--trials",
            &a.optuna_trials.to_string(),
            "--workers",
            &workers.to_string(),
        ])
        .output()
        .with_context(|| format!("cannot run {}", a.python.display()))?;
    if !out.status.success() {
        bail!(
            "optuna_peer.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A sweep of `jobs` jobs for the readers to search, cancelled at once; its id.
async fn reader_sweep(base: &str, token: &str, jobs: usize) -> Result<i64> {
    let http = reqwest::Client::new();
    let seeds: Vec<usize> = (0..jobs).collect();
    let spec = json!({"name": "searched", "train": {"epochs": 3}, "grid": {"seed": seeds}});
    let id = submit(&http, base, token, &spec).await?;
    http.post(format!("{base}{}/cancel", routes::sweep(id)))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?;
    Ok(id)
}

pub async fn run(a: &LoadArgs) -> Result<()> {
    let served = match &a.server {
        Some(_) => None,
        None => Some(start_server(&a.token)?),
    };
    let base = a
        .server
        .clone()
        .or_else(|| served.as_ref().map(|s| s.base.clone()))
        .expect("a server");
    println!(
        "| workers | early stop | rendezvous | readers | submit s | cycles | cycles/s | p50 ms | p99 ms | duplicate claims | pruned | lost jobs | errors | reads (refused) | coordinator peak RSS MiB |"
    );
    println!("|---:|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // The sweep the readers search: submitted once (cancelled, so no worker claims its jobs).
    let read_sweep = match a.readers.iter().any(|&r| r > 0) {
        true => Some(reader_sweep(&base, &a.token, a.reader_jobs).await?),
        false => None,
    };
    let offers = a
        .rendezvous
        .iter()
        .map(|r| match r.as_str() {
            "none" => Ok(false),
            "offered" => Ok(true),
            other => bail!("--rendezvous: {other} (expected none or offered)"),
        })
        .collect::<Result<Vec<bool>>>()?;
    let mut levels = vec![];
    for &workers in &a.workers {
        for early_stop in &a.early_stop {
            for &rendezvous in &offers {
                for &readers in &a.readers {
                    levels.push(Level {
                        workers,
                        early_stop,
                        rendezvous,
                        readers,
                        read_sweep,
                    });
                }
            }
        }
    }
    for level in levels {
        let r = run_level(&base, &a.token, level, a.jobs, a.unfit).await?;
        // The coordinator's peak so far (this run's and those before it on the same server).
        let rss = served
            .as_ref()
            .and_then(|s| peak_rss_mib(s.child.id()))
            .map_or("-".into(), |m| format!("{m:.0}"));
        println!(
            "| {} | {} | {} | {} | {:.2} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} | {} ({}) | {rss} |",
            r.workers,
            r.early_stop,
            if r.rendezvous { "offered" } else { "none" },
            r.readers,
            r.submit_seconds,
            r.cycles,
            r.cycles as f64 / r.seconds,
            r.p50_ms,
            r.p99_ms,
            r.duplicates,
            r.pruned,
            r.lost,
            r.errors,
            r.reads,
            r.reads_refused
        );
    }
    drop(served);
    if a.optuna {
        for w in [1, 16] {
            println!("{}", optuna(a, w)?);
        }
    }
    Ok(())
}
