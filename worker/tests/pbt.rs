//! Population-based training with real processes: the PBT paper's toy problem
//! (`fixtures/pbt_toy.py`, a command job) on a real coordinator and a real `worker run`. An exploit
//! ends the member's attempt, the coordinator copies the donor's pinned checkpoint into the
//! member's slot, and the next claim runs the program again with the donor's explored parameters
//! from the donor's epoch.
mod cluster;

use cluster::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const EPOCHS: i64 = 16;
const POPULATION: i64 = 4;
/// A member alone shrinks one coordinate only: Q = 1.2 - 0.81 - (what is left of the other) is at
/// most this.
const ONE_AXIS_BEST: f64 = 0.39;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn toy(name: &str, search: Value) -> Value {
    json!({
        "name": name,
        "command": {"argv": ["python3", "pbt_toy.py", "--epochs", "{epochs}", "--axis", "{axis}",
                             "--eta", "{eta}"]},
        "train": {"epochs": EPOCHS},
        "search": search,
    })
}

/// Which coordinate a member shrinks, and its step size (a slow member falls to the bottom).
fn space() -> Value {
    json!({"axis": {"choice": [0, 1]}, "eta": {"log_uniform": [0.005, 0.05]}})
}

fn pbt(seed: i64, quantile: f64) -> Value {
    json!({"method": "pbt", "population": POPULATION, "interval": 1, "quantile": quantile,
           "metric": "q", "mode": "max", "seed": seed, "space": space()})
}

/// The sweeps' jobs run at once by one worker, which leaves when nothing is left.
fn run_all(c: &Coordinator, work: &Path, sweeps: &[i64]) -> Vec<Value> {
    let root = fixtures();
    let ranks = (sweeps.len() as i64 * POPULATION).to_string();
    let mut w = worker(
        &c.url,
        work,
        &[
            "--allow-commands",
            "--command-root",
            root.to_str().unwrap(),
            "--cpu-ranks",
            &ranks,
            "--exit-when-idle",
        ],
    );
    let done = sweeps.iter().map(|s| c.wait_sweep(*s, STALL)).collect();
    assert!(w.wait().unwrap().success());
    done
}

/// Each job's detail, every one completed at the last epoch.
fn members(c: &Coordinator, sweep: &Value) -> Vec<Value> {
    sweep["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            assert_eq!(j["status"], JobStatus::Completed.as_str(), "{j}");
            c.get(&format!("/api/jobs/{}", j["id"]))
        })
        .collect()
}

/// A member's Q at the last epoch.
fn final_q(detail: &Value) -> f64 {
    let last = detail["metrics"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["epoch"], EPOCHS, "{detail}");
    last["extra"]["q"].as_f64().unwrap()
}

fn best_q(details: &[Value]) -> f64 {
    details.iter().map(final_q).fold(f64::MIN, f64::max)
}

#[test]
fn the_pbt_papers_toy_problem_beats_random_search_and_pbt_without_exploitation() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&dir.path().join("s.db"), "127.0.0.1:0", 30);
    let seeds = [0, 1, 2];
    let mut sweeps = vec![];
    for seed in seeds {
        sweeps.push(c.submit(toy(&format!("pbt-{seed}"), pbt(seed, 0.5))));
        sweeps.push(c.submit(toy(&format!("no-exploit-{seed}"), pbt(seed, 0.0))));
        let random = json!({"method": "random", "trials": POPULATION, "seed": seed + 100,
                            "space": space()});
        sweeps.push(c.submit(toy(&format!("random-{seed}"), random)));
    }
    let done = run_all(&c, &dir.path().join("w"), &sweeps);
    for (i, seed) in seeds.iter().enumerate() {
        let (with, without, random) = (
            members(&c, &done[3 * i]),
            members(&c, &done[3 * i + 1]),
            members(&c, &done[3 * i + 2]),
        );
        // The same budget (4 members x 16 epochs) on each side; one axis alone stays below 0.39.
        // PBT's best over 24 seeds at once ran 0.88 to 1.19 (docs/pbt.md): a margin of 0.3.
        let (q_pbt, q_off, q_random) = (best_q(&with), best_q(&without), best_q(&random));
        assert!(q_off <= ONE_AXIS_BEST + 1e-9 && q_random <= ONE_AXIS_BEST + 1e-9);
        assert!(
            q_pbt > ONE_AXIS_BEST + 0.3,
            "seed {seed}: PBT's best Q {q_pbt}, without exploitation {q_off}, random {q_random}"
        );
        for d in &without {
            assert!(d.get("segments").is_none(), "no exploit without a quantile");
        }
        check_segments(&with);
    }
}

/// Every segment names a donor of its own population and begins at an epoch the donor had
/// reached; the job's params are its last segment's; epochs it replaced are past that point.
fn check_segments(population: &[Value]) {
    let ids: Vec<&Value> = population.iter().map(|d| &d["id"]).collect();
    let mut exploits = 0;
    for d in population {
        let Some(segments) = d["segments"].as_array() else {
            continue;
        };
        for s in segments {
            exploits += 1;
            assert!(ids.contains(&&s["donor"]) && s["donor"] != d["id"], "{s}");
            let from = s["from_epoch"].as_i64().unwrap();
            assert!((1..EPOCHS).contains(&from), "a donor's point: {s}");
            for m in s["replaced"].as_array().unwrap() {
                assert!(m["epoch"].as_i64().unwrap() > from, "{s}");
            }
        }
        let last = segments.last().unwrap();
        assert_eq!(last["params"]["axis"], d["params"]["axis"], "{d}");
        // The record after the last jump: every epoch from its point to the end, once.
        let from = last["from_epoch"].as_i64().unwrap();
        let after: Vec<i64> = d["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["epoch"].as_i64().unwrap())
            .filter(|e| *e > from)
            .collect();
        assert_eq!(after, (from + 1..=EPOCHS).collect::<Vec<_>>(), "{d}");
    }
    assert!(exploits > 0, "no member exploited another");
}
