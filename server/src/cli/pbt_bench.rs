//! Population-based training's decision at scale: the rules alone over N members in memory, then
//! a metrics report through a real coordinator (loopback HTTP, the commit synced) of a PBT sweep of
//! N members beside the same report of a plain sweep, in one run (docs/benchmarks.md).
use anyhow::{Context, Result};
use protocol::{routes, Claim, MetricsReport};
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

use crate::sweep::early_stop::Mode;
use crate::sweep::pbt::{self, Member, Rules, Seeded};
use crate::sweep::search::Distribution;

#[derive(Debug, Clone, clap::Args)]
pub struct PbtBenchArgs {
    /// Population sizes, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub members: Vec<usize>,
    /// Reports timed per size (each a due report of a member of the full population).
    #[arg(long, default_value_t = 500)]
    pub reports: usize,
    #[arg(long, default_value = "pbt-bench-token")]
    pub token: String,
}

pub async fn run(a: &PbtBenchArgs) -> Result<()> {
    println!("Part 1: one decision by the rules over N members in memory (median, p99 of 2,000)\n");
    println!("| members | median | p99 |\n|---:|---:|---:|");
    for &n in &a.members {
        let (p50, p99) = rules_alone(n, 2000);
        println!("| {n} | {:.3} ms | {:.3} ms |", ms(p50), ms(p99));
    }
    println!(
        "\nPart 2: a metrics report through the coordinator, the population complete (median, p99 of {})\n",
        a.reports
    );
    println!("| members | PBT sweep | plain sweep |\n|---:|---:|---:|");
    for &n in &a.members {
        // Leases long enough for the whole population to be claimed before it reports.
        let served =
            crate::cli::loadgen::start_server_with(&a.token, &["--lease-seconds", "3600"])?;
        let pbt = through_coordinator(&served.base, &a.token, n, a.reports, true).await?;
        let plain = through_coordinator(&served.base, &a.token, n, a.reports, false).await?;
        println!(
            "| {n} | {:.2} / {:.2} ms | {:.2} / {:.2} ms |",
            ms(pbt.0),
            ms(pbt.1),
            ms(plain.0),
            ms(plain.1)
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn rules() -> Rules {
    Rules {
        interval: 1,
        quantile: 0.25,
        resample_probability: 0.25,
        perturb: vec![1.2, 0.8],
        mode: Mode::Max,
        space: vec![
            ("lr".into(), Distribution::LogUniform(1e-4, 1e-1)),
            ("momentum".into(), Distribution::Uniform(0.8, 0.99)),
        ],
    }
}

/// `pbt::decide` on a scored population of `n`: a random member reports a random value.
fn rules_alone(n: usize, decisions: usize) -> (Duration, Duration) {
    let r = rules();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut members: Vec<Member> = (0..n as i64)
        .map(|job| Member {
            job,
            score: Some(rng.gen()),
            perturbed_at: 1,
            pinned: rng.gen_bool(0.25),
            finished: false,
        })
        .collect();
    let mut params = Map::new();
    params.insert("lr".into(), json!(0.01));
    params.insert("momentum".into(), json!(0.9));
    let mut times = Vec::with_capacity(decisions);
    for d in 0..decisions {
        let i = rng.gen_range(0..n);
        let epoch = members[i].perturbed_at + 1;
        let value: f64 = rng.gen();
        let mut draws = Seeded::new(0, d as u64);
        let t = Instant::now();
        let decision = pbt::decide(
            &mut members,
            i,
            epoch,
            value,
            &r,
            |_| params.clone(),
            &mut draws,
        );
        times.push(t.elapsed());
        std::hint::black_box(decision);
    }
    percentiles(times)
}

fn percentiles(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

/// A sweep of `n` members (PBT, or a plain random search of the same size), every member claimed
/// and scored once, then `reports` timed reports of random members.
async fn through_coordinator(
    base: &str,
    token: &str,
    n: usize,
    reports: usize,
    pbt: bool,
) -> Result<(Duration, Duration)> {
    let http = reqwest::Client::new();
    let search = match pbt {
        true => json!({"method": "pbt", "population": n, "interval": 1, "quantile": 0.25,
                       "space": {"lr": {"log_uniform": [1e-4, 1e-1]}}}),
        false => json!({"method": "random", "trials": n,
                        "space": {"lr": {"log_uniform": [1e-4, 1e-1]}}}),
    };
    let spec = json!({"name": format!("bench-{n}-{pbt}"),
                      "train": {"dataset": "synthetic", "epochs": 100000}, "search": search});
    crate::cli::loadgen::submit(&http, base, token, &spec).await?;
    let mut claims = Vec::with_capacity(n);
    for w in 0..n {
        let request = crate::cli::loadgen::claim_request(w, false, false);
        let r = http
            .post(format!("{base}{}", routes::CLAIM))
            .bearer_auth(token)
            .json(&request)
            .send()
            .await?;
        claims.push(r.json::<Claim>().await.context("a claim")?);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let mut epochs = vec![0i64; n];
    let mut times = Vec::with_capacity(reports);
    for k in 0..n + reports {
        // First every member once (the population fills), then random members, timed.
        let i = if k < n { k } else { rng.gen_range(0..n) };
        epochs[i] += 1;
        let c = &claims[i];
        let m = MetricsReport {
            attempt: c.attempt,
            epoch: epochs[i],
            accuracy: Some(rng.gen()),
            ..Default::default()
        };
        let t = Instant::now();
        let r = http
            .post(format!("{base}{}", routes::metrics(c.id)))
            .bearer_auth(token)
            .header(protocol::LEASE_SECRET_HEADER, &c.lease_secret)
            .json(&m)
            .send()
            .await?;
        let elapsed = t.elapsed();
        // No checkpoint is uploaded, so no member is ever a donor: every report is decided and
        // none exploits (an exploit's own cost is its copy, file work after the commit).
        if !r.status().is_success() {
            anyhow::bail!("report of job {}: {}", c.id, r.status());
        }
        if k >= n {
            times.push(elapsed);
        }
        let _: Value = r.json().await?;
    }
    Ok(percentiles(times))
}
