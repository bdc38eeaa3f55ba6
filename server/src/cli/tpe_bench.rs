//! `server tpe-bench`: what one TPE draw costs, beside Optuna's TPESampler on the same histories in
//! the same run, and whether drawing holds up other sweeps' claims. Three parts:
//! 1. the sampler alone: one draw from a history of N finished trials with 5 parameters (ours in
//!    process; Optuna's `ask` + 5 suggests on an in-memory study holding the same trials);
//! 2. the whole claim through a real coordinator: a TPE sweep warm-started from a finished random
//!    sweep of N trials, each claim reading the history from SQLite, drawing and handing it out;
//! 3. claim cycles/s of a random sweep's workers, alone and while a TPE sweep with the largest
//!    history is drawn continuously beside it.
use anyhow::{bail, Context, Result};
use protocol::{routes, Capacity, ClaimRequest};
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::loadgen::{simulated_worker, start_server};
use crate::sweep::search::Distribution;
use crate::sweep::tpe::{Options, Outcome, Tpe, Trial};

#[derive(Debug, Clone, clap::Args)]
pub struct TpeBenchArgs {
    /// History sizes (finished trials), one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub sizes: Vec<usize>,
    /// Draws timed per size (the median is reported).
    #[arg(long, default_value_t = 15)]
    pub draws: usize,
    /// Simulated workers of the random sweep in part 3.
    #[arg(long, default_value_t = 16)]
    pub workers: usize,
    /// Jobs of the random sweep in part 3 (each run drains a sweep of this many).
    #[arg(long, default_value_t = 3000)]
    pub jobs: usize,
    #[arg(long, default_value = ".venv/bin/python")]
    pub python: PathBuf,
    #[arg(long, default_value = "server/tests/api/optuna_tpe.py")]
    pub optuna_script: PathBuf,
    /// Leave out parts 2 and 3 (no coordinator).
    #[arg(long)]
    pub sampler_only: bool,
}

/// The bench's 5 parameters: two log scales, a float, an integer and a choice of 9.
pub(crate) fn space() -> Vec<(String, Distribution)> {
    vec![
        ("lr".into(), Distribution::LogUniform(1e-5, 1.0)),
        ("weight_decay".into(), Distribution::LogUniform(1e-6, 1e-2)),
        ("momentum".into(), Distribution::Uniform(0.5, 0.99)),
        ("warmup_epochs".into(), Distribution::Int(0, 10)),
        (
            "batch_size".into(),
            Distribution::Choice(
                [1, 4, 8, 16, 32, 64, 128, 256, 512]
                    .into_iter()
                    .map(Value::from)
                    .collect(),
            ),
        ),
    ]
}

pub(crate) fn optuna_space() -> Value {
    json!([
        {"name": "lr", "kind": "log", "lo": 1e-5, "hi": 1.0},
        {"name": "weight_decay", "kind": "log", "lo": 1e-6, "hi": 1e-2},
        {"name": "momentum", "kind": "float", "lo": 0.5, "hi": 0.99},
        {"name": "warmup_epochs", "kind": "int", "lo": 0, "hi": 10},
        {"name": "batch_size", "kind": "choice", "n": 9},
    ])
}

/// A history of `n` completed trials at random points, valued by a smooth function of them.
pub(crate) fn history(n: usize) -> Vec<Trial> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
    (0..n)
        .map(|_| {
            let x = vec![
                rng.gen_range(1e-5f64.ln()..0.0).exp(),
                rng.gen_range(1e-6f64.ln()..1e-2f64.ln()).exp(),
                rng.gen_range(0.5..0.99),
                rng.gen_range(0..=10) as f64,
                rng.gen_range(0..9) as f64,
            ];
            let value = (x[0].log10() + 2.0).powi(2) + (x[2] - 0.9).powi(2) + 0.01 * x[4];
            Trial {
                x,
                outcome: Outcome::Complete(vec![value]),
                violation: 0.0,
            }
        })
        .collect()
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Part 1, ours: the median time of `draws` draws from `history`.
fn our_draw_ms(history: &[Trial], draws: usize) -> f64 {
    let options = Options {
        startup_trials: 10,
        ei_candidates: 24,
        multivariate: true,
        constant_liar: true,
    };
    let tpe = Tpe::new(
        &space(),
        0,
        &options,
        &[crate::sweep::early_stop::Mode::Min],
    );
    let times = (0..draws)
        .map(|i| {
            let t0 = Instant::now();
            std::hint::black_box(tpe.suggest(history, (history.len() + i) as i64));
            t0.elapsed()
        })
        .collect();
    median_ms(times)
}

/// Part 1, Optuna: the script's median time of one ask with its 5 suggests.
fn optuna_draw_ms(a: &TpeBenchArgs, history: &[Trial]) -> Result<f64> {
    let trials: Vec<Value> = history
        .iter()
        .map(|t| match &t.outcome {
            Outcome::Complete(v) => {
                json!({"x": t.x, "state": protocol::JobStatus::Completed.as_str(), "value": v[0]})
            }
            _ => unreachable!("the bench's histories are completed trials"),
        })
        .collect();
    let req = json!({"op": "time", "space": optuna_space(), "trials": trials, "draws": a.draws});
    super::python_json(&a.python, &a.optuna_script, &req)?["median_ms"]
        .as_f64()
        .context("the script's answer has no median_ms")
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn submit(&self, spec: Value) -> Result<i64> {
        super::loadgen::submit(&self.http, &self.base, &self.token, &spec).await
    }

    /// Claims with `ranks` free; true if a job came back.
    async fn claim(&self, worker: &str, ranks: i64) -> Result<bool> {
        let req = ClaimRequest {
            deadline: None,
            worker: worker.into(),
            capacity: Some(Capacity {
                ranks,
                max_batch_size: None,
            }),
            accepts_commands: false,
            rendezvous: None,
        };
        let r = self
            .http
            .post(format!("{}{}", self.base, routes::CLAIM))
            .bearer_auth(&self.token)
            .json(&req)
            .send()
            .await?;
        Ok(r.status() == reqwest::StatusCode::OK)
    }

    /// Drains every pending job that fits `ranks` with `workers` simulated workers (claim, 3
    /// reports, finish); returns (cycles, seconds, p50 ms, p99 ms of a cycle).
    async fn drain(&self, workers: usize, ranks: i64) -> Result<(usize, f64, f64, f64)> {
        let claimed: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
        let t0 = Instant::now();
        let mut tasks = vec![];
        for w in 0..workers {
            let (http, base, token, claimed) = (
                self.http.clone(),
                self.base.clone(),
                self.token.clone(),
                claimed.clone(),
            );
            let request = protocol::ClaimRequest {
                deadline: None,
                worker: format!("w{w}"),
                capacity: Some(Capacity {
                    ranks,
                    max_batch_size: None,
                }),
                accepts_commands: false,
                rendezvous: None,
            };
            tasks.push(tokio::spawn(async move {
                simulated_worker(&http, &base, &token, request, &claimed).await
            }));
        }
        let mut latencies = vec![];
        for t in tasks {
            latencies.extend(t.await?.0);
        }
        let seconds = t0.elapsed().as_secs_f64();
        latencies.sort();
        let pct = |p: f64| {
            let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
            latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        Ok((latencies.len(), seconds, pct(0.5), pct(0.99)))
    }
}

/// A random sweep of `trials` points of the bench's space (one rank each).
fn random_sweep(name: &str, trials: usize, seed: usize) -> Value {
    let space: Map<String, Value> = space()
        .into_iter()
        .map(|(k, d)| (k, serde_json::to_value(d).expect("plain data")))
        .collect();
    json!({"name": name, "train": {"epochs": 3},
           "search": {"method": "random", "trials": trials, "seed": seed, "space": space}})
}

/// A TPE sweep of the bench's space that needs 2 ranks (so only the drawing client claims it),
/// learning from `warm` (every draw reads its whole history).
fn tpe_sweep(trials: usize, warm: i64) -> Value {
    let mut s = random_sweep("tpe-bench", trials, 0);
    s["name"] = "tpe-bench".into();
    s["train"]["nproc_per_node"] = 2.into();
    s["search"]["method"] = "tpe".into();
    s["search"]["startup_trials"] = 0.into();
    s["search"]["warm_start"] = json!([warm]);
    s
}

pub async fn run(a: &TpeBenchArgs) -> Result<()> {
    println!(
        "Part 1: one draw from N finished trials, 5 parameters (median of {} draws)\n",
        a.draws
    );
    println!("| finished trials | ours ms | Optuna TPESampler ms | Optuna / ours |");
    println!("|---:|---:|---:|---:|");
    for &n in &a.sizes {
        let h = history(n);
        let ours = our_draw_ms(&h, a.draws);
        let theirs = optuna_draw_ms(a, &h)?;
        println!("| {n} | {ours:.2} | {theirs:.2} | {:.1}x |", theirs / ours);
    }
    if a.sampler_only {
        return Ok(());
    }
    let served = start_server("tpe-bench")?;
    let api = Api {
        http: reqwest::Client::new(),
        base: served.base.clone(),
        token: "tpe-bench".into(),
    };
    println!("\nPart 2: a whole claim of a TPE trial (history read from SQLite, draw, hand-out), median of {}\n", a.draws);
    println!("| finished trials | claim ms |");
    println!("|---:|---:|");
    let mut largest = None;
    for &n in &a.sizes {
        let warm = api
            .submit(random_sweep(&format!("history-{n}"), n, n))
            .await?;
        api.drain(a.workers, 1).await?;
        api.submit(tpe_sweep(a.draws, warm)).await?;
        let mut times = vec![];
        for i in 0..a.draws {
            let t0 = Instant::now();
            if !api.claim(&format!("tpe-{i}"), 2).await? {
                bail!("the TPE sweep had no trial left to claim");
            }
            times.push(t0.elapsed());
        }
        println!("| {n} | {:.2} |", median_ms(times));
        largest = Some(warm);
    }
    let warm = largest.context("no sizes")?;
    println!(
        "\nPart 3: claim cycles/s of a random sweep ({} jobs, {} workers)\n",
        a.jobs, a.workers
    );
    println!("| beside it | cycles/s | cycle p50 ms | cycle p99 ms | TPE trials drawn meanwhile |");
    println!("|:---|---:|---:|---:|---:|");
    api.submit(random_sweep("alone", a.jobs, 1)).await?;
    let (cycles, secs, p50, p99) = api.drain(a.workers, 1).await?;
    println!(
        "| nothing | {:.0} | {p50:.1} | {p99:.1} | 0 |",
        cycles as f64 / secs
    );
    // Enough trials for the run, not more: the random sweep's claims skip the TPE sweep's older
    // pending trials (they need 2 ranks) inside the claim statement, and 10,000 of them would make
    // that scan, not the drawing, what slows the claims (docs/search.md#what-it-costs).
    api.submit(tpe_sweep(300, warm)).await?;
    api.submit(random_sweep("beside", a.jobs, 2)).await?;
    let (stop, drawn) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let drawer = {
        let (stop, drawn) = (stop.clone(), drawn.clone());
        let api = Api {
            http: api.http.clone(),
            base: api.base.clone(),
            token: api.token.clone(),
        };
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && api.claim("drawer", 2).await.unwrap_or(false) {
                drawn.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let (cycles, secs, p50, p99) = api.drain(a.workers, 1).await?;
    stop.store(true, Ordering::Relaxed);
    drawer.await?;
    println!(
        "| a TPE sweep drawn continuously (history {} trials) | {:.0} | {p50:.1} | {p99:.1} | {} |",
        a.sizes.iter().max().unwrap_or(&0),
        cycles as f64 / secs,
        drawn.load(Ordering::Relaxed)
    );
    drop(served);
    Ok(())
}
