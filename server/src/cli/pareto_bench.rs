//! `server pareto-bench`: what one multi-objective draw costs, beside Optuna's samplers on the
//! same histories in the same run, and what the front endpoint costs on a large sweep. Two parts:
//! 1. the samplers alone: one draw of multi-objective TPE and of NSGA-II (population 50, parents
//!    already chosen: Optuna caches them in the study as we keep them in the database) from N
//!    finished trials with 5 parameters and 2 or 3 objectives; Optuna's `ask` + 5 suggests on an
//!    in-memory study holding the same trials (and generations);
//! 2. `GET /api/sweeps/{id}/pareto` of a real coordinator over a sweep of N completed trials with
//!    two objectives and a constraint: the first request after start (cold) and the median of the
//!    next ones (warm: SQLite's pages cached).
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::sweep::early_stop::Mode;
use crate::sweep::nsga2::{Member, Nsga2, Options as NsgaOptions};
use crate::sweep::search::Distribution;
use crate::sweep::tpe::{Options, Outcome, Tpe, Trial};

#[derive(Debug, Clone, clap::Args)]
pub struct ParetoBenchArgs {
    /// History sizes (finished trials), one measurement per value and objective count.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub sizes: Vec<usize>,
    /// Objective counts.
    #[arg(long, value_delimiter = ',', default_value = "2,3")]
    pub objectives: Vec<usize>,
    /// Draws timed per size (the median is reported).
    #[arg(long, default_value_t = 9)]
    pub draws: usize,
    /// Completed trials of part 2's sweep.
    #[arg(long, default_value_t = 100_000)]
    pub front_trials: usize,
    #[arg(long, default_value = ".venv/bin/python")]
    pub python: PathBuf,
    #[arg(long, default_value = "server/tests/api/optuna_moo.py")]
    pub optuna_script: PathBuf,
    /// Leave out part 2 (no coordinator).
    #[arg(long)]
    pub sampler_only: bool,
}

/// The bench's parameters: tpe-bench's 5.
fn space() -> Vec<(String, Distribution)> {
    super::tpe_bench::space()
}

/// `n` finished trials at tpe-bench's random points, with `m` conflicting objectives (all
/// minimised), each in generation `i / 50` as NSGA-II would have drawn them.
fn history(n: usize, m: usize) -> Vec<(Vec<f64>, Vec<f64>)> {
    super::tpe_bench::history(n)
        .into_iter()
        .map(|t| {
            let x = t.x;
            let a = (x[0].log10() + 2.0).powi(2) + (x[2] - 0.9).powi(2);
            let values = [a, -x[0].log10() + 0.1 * x[4], x[3] + x[1] * 100.0][..m].to_vec();
            (x, values)
        })
        .collect()
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn time(draws: usize, mut f: impl FnMut(i64)) -> f64 {
    median_ms(
        (0..draws)
            .map(|i| {
                let t0 = Instant::now();
                f(i as i64);
                t0.elapsed()
            })
            .collect(),
    )
}

/// Ours: the median of `draws` draws of each sampler (TPE, NSGA-II) from `h`.
fn our_draws_ms(h: &[(Vec<f64>, Vec<f64>)], m: usize, draws: usize) -> (f64, f64) {
    let modes = vec![Mode::Min; m];
    let o = Options {
        startup_trials: 10,
        ei_candidates: 24,
        multivariate: false,
        constant_liar: true,
    };
    let tpe = Tpe::new(&space(), 0, &o, &modes);
    let trials: Vec<Trial> = h
        .iter()
        .map(|(x, v)| Trial {
            x: x.clone(),
            outcome: Outcome::Complete(v.clone()),
            violation: 0.0,
        })
        .collect();
    let n = h.len() as i64;
    let tpe_ms = time(draws, |i| {
        std::hint::black_box(tpe.suggest(&trials, n + i));
    });
    let options = NsgaOptions {
        population: 50,
        crossover_prob: 0.9,
        swapping_prob: 0.5,
        mutation_prob: None,
    };
    let nsga2 = Nsga2::new(&space(), 0, &options, &modes);
    let members: Vec<Member> = h
        .iter()
        .enumerate()
        .map(|(i, (x, v))| Member {
            number: i as i64,
            generation: i as i64 / 50,
            x: x.clone(),
            values: v.clone(),
            violation: None,
        })
        .collect();
    // The parents of every generation chosen once, before timing, as a running sweep has them.
    let mut chosen = BTreeMap::new();
    nsga2.parents_of(nsga2.generation_of(&members), &members, &mut chosen);
    let nsga2_ms = time(draws, |i| {
        std::hint::black_box(nsga2.draw(&members, &mut chosen, n + i));
    });
    (tpe_ms, nsga2_ms)
}

/// Optuna's: the script's median time of one ask with its 5 suggests, per sampler.
fn optuna_ms(
    a: &ParetoBenchArgs,
    h: &[(Vec<f64>, Vec<f64>)],
    m: usize,
    sampler: &str,
) -> Result<f64> {
    let trials: Vec<Value> = h
        .iter()
        .enumerate()
        .map(|(i, (x, v))| json!({"x": x, "values": v, "generation": i / 50}))
        .collect();
    let req = json!({"op": "time", "sampler": sampler, "space": super::tpe_bench::optuna_space(),
        "directions": vec!["minimize"; m], "trials": trials, "draws": a.draws});
    super::python_json(&a.python, &a.optuna_script, &req)?["median_ms"]
        .as_f64()
        .context("the script's answer has no median_ms")
}

pub async fn run(a: &ParetoBenchArgs) -> Result<()> {
    println!(
        "Part 1: one draw from N finished trials, 5 parameters (median of {} draws)\n",
        a.draws
    );
    println!("| finished trials | objectives | ours TPE ms | Optuna TPE ms | Optuna / ours | ours NSGA-II ms | Optuna NSGA-II ms | Optuna / ours |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &m in &a.objectives {
        for &n in &a.sizes {
            let h = history(n, m);
            let (tpe, nsga2) = our_draws_ms(&h, m, a.draws);
            let (their_tpe, their_nsga2) =
                (optuna_ms(a, &h, m, "tpe")?, optuna_ms(a, &h, m, "nsga2")?);
            println!(
                "| {n} | {m} | {tpe:.2} | {their_tpe:.2} | {:.1}x | {nsga2:.3} | {their_nsga2:.2} | {:.1}x |",
                their_tpe / tpe,
                their_nsga2 / nsga2
            );
        }
    }
    if a.sampler_only {
        return Ok(());
    }
    front_endpoint(a.front_trials).await
}

/// Part 2: a sweep of `n` completed trials written straight into a database file, then served.
async fn front_endpoint(n: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("front.db");
    let id = {
        let spec = crate::sweep::SweepSpec::from_toml(&format!(
            "name = \"front bench\"\n[train]\ndataset = \"synthetic\"\nepochs = 3\n[search]\n\
             method = \"random\"\ntrials = {n}\nobjectives = [{{ metric = \"accuracy\", mode = \"max\" }}, \
             {{ metric = \"seconds\", mode = \"min\" }}]\n[[search.constraints]]\nmetric = \"images_per_sec\"\nmin = 500\n\
             [search.space]\nlr = {{ log_uniform = [1e-5, 1.0] }}\nbatch_size = {{ choice = [16, 32, 64, 128] }}\n"
        ))?;
        let store = crate::store::Store::open(&db).await?;
        let now = crate::state::Clock::System.now_ms();
        let (id, _) = store.create_sweep(&spec, now).await?;
        // Finished an hour ago: a front read after a trial completes now reads that trial alone.
        store.fill_synthetic(id, 3, now - 3_600_000).await?;
        store.vary_seconds_for_bench(id).await?;
        id
    };
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--token",
        "bench",
        "--db",
    ])
    .arg(&db)
    .stderr(std::process::Stdio::null());
    let (mut child, base) =
        protocol::listening::start_coordinator(cmd).context("cannot start the coordinator")?;
    let http = reqwest::Client::new();
    let url = format!("{base}/api/sweeps/{id}/pareto");
    let get = || async {
        let t0 = Instant::now();
        let r = http.get(&url).send().await?.error_for_status()?;
        let v: Value = r.json().await?;
        anyhow::Ok((t0.elapsed(), v["front_size"].as_i64().unwrap_or(0)))
    };
    let (cold, size) = get().await?;
    let mut warm = vec![];
    for _ in 0..5 {
        warm.push(get().await?.0);
    }
    let _ = child.kill();
    let _ = child.wait();
    // After a trial completes (what a dashboard's request costs then): the front kept, one job
    // set running and completed again, the front asked for again.
    let store = crate::store::Store::open(&db).await?;
    let search = store.sweep_spec(id).await?.search.context("a search")?;
    let front = || store.front(id, &search.objectives, &search.constraints, false);
    let t0 = Instant::now();
    front().await?;
    let full = t0.elapsed();
    let mut again = vec![];
    for job in 1..=5 {
        let now = crate::state::Clock::System.now_ms();
        store.flip_for_bench(job, false, now).await?;
        front().await?;
        store.flip_for_bench(job, true, now).await?;
        let t0 = Instant::now();
        front().await?;
        again.push(t0.elapsed());
    }
    println!("\nPart 2: GET /api/sweeps/{{id}}/pareto over {n} completed trials (2 objectives, 1 constraint; a front of {size})\n");
    println!("| first request after start ms | again, nothing changed ms (median of 5) | whole read, pages warm ms | after a trial completes ms (median of 5) |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {:.0} | {:.0} | {:.0} | {:.0} |",
        cold.as_secs_f64() * 1e3,
        median_ms(warm),
        full.as_secs_f64() * 1e3,
        median_ms(again)
    );
    Ok(())
}
