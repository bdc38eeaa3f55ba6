//! Importance as Optuna computes it: PED-ANOVA over a sweep's completed jobs equals
//! `optuna.importance.get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())` on a
//! study made of the same trials, to 1e-9, for every kind of parameter and both modes; through the
//! API, with its left-out jobs counted and its bad inputs refused.
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Map, Value};
use server::results::importance::{ped_anova, Trial};
use server::sweep::search::Distribution;

/// A small deterministic generator (xorshift64*): the same trials on every machine.
struct Gen(u64);

impl Gen {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Our space, and the same as the reference script declares it.
fn space() -> (Vec<(String, Distribution)>, Value) {
    let ours = vec![
        ("x".to_string(), Distribution::Uniform(-5.0, 5.0)),
        ("lr".to_string(), Distribution::LogUniform(1e-4, 1.0)),
        ("depth".to_string(), Distribution::Int(1, 8)),
        (
            "opt".to_string(),
            Distribution::Choice(vec![json!("sgd"), json!("adam"), json!("rmsprop")]),
        ),
        ("noise".to_string(), Distribution::Uniform(0.0, 1.0)),
    ];
    let theirs = json!([
        {"name": "x", "kind": "float", "lo": -5.0, "hi": 5.0},
        {"name": "lr", "kind": "log", "lo": 1e-4, "hi": 1.0},
        {"name": "depth", "kind": "int", "lo": 1, "hi": 8},
        {"name": "opt", "kind": "choice", "choices": ["sgd", "adam", "rmsprop"]},
        {"name": "noise", "kind": "float", "lo": 0.0, "hi": 1.0},
    ]);
    (ours, theirs)
}

/// `n` trials of a function that depends on x, lr and opt strongly, depth weakly, noise not at
/// all; `round` coarsens the values so that ties cross the top quantile's cut.
fn trials(seed: u64, n: usize, round: bool) -> Vec<Trial> {
    let mut g = Gen(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..n)
        .map(|_| {
            let x = -5.0 + 10.0 * g.unit();
            let lr = (1e-4f64.ln() + g.unit() * (1.0f64.ln() - 1e-4f64.ln())).exp();
            let depth = 1 + (g.unit() * 8.0) as i64 % 8;
            let opt = ["sgd", "adam", "rmsprop"][(g.unit() * 3.0) as usize % 3];
            let noise = g.unit();
            let mut v = (x - 1.0).powi(2)
                + 3.0 * (lr.ln() - 0.01f64.ln()).abs()
                + if opt == "adam" { 0.0 } else { 2.0 }
                + 0.05 * depth as f64;
            if round {
                v = v.round();
            }
            let params = json!({"x": x, "lr": lr, "depth": depth, "opt": opt, "noise": noise});
            Trial {
                params: params.as_object().unwrap().clone(),
                value: v,
            }
        })
        .collect()
}

fn reference(space: &Value, trials: &[Trial], mode: &str) -> Map<String, Value> {
    let t: Vec<Value> = trials
        .iter()
        .map(|t| json!({"params": t.params, "value": t.value}))
        .collect();
    let out = python_reference(
        "optuna_importance.py",
        &json!({"space": space, "mode": mode, "trials": t}),
    );
    out["importances"].as_object().unwrap().clone()
}

fn assert_same(ours: &[(String, f64)], theirs: &Map<String, Value>, what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: {ours:?} vs {theirs:?}");
    for (name, v) in ours {
        let t = theirs[name].as_f64().unwrap();
        assert!(
            (v - t).abs() <= 1e-9,
            "{what}: {name} ours {v} Optuna {t}\nours {ours:?}\nOptuna {theirs:?}"
        );
    }
}

/// Every kind of parameter (float, log-float, int, choice, one that does not matter), several
/// seeds and sizes, both modes, ties at the cut: our importances are Optuna's to 1e-9.
#[test]
fn importances_equal_optunas_ped_anova() {
    let (ours, theirs) = space();
    for (seed, n, round) in [
        (1, 40, false),
        (2, 100, false),
        (3, 7, false),
        (4, 60, true),
        (5, 2, false),
    ] {
        let t = trials(seed, n, round);
        for (mode, lower) in [("min", true), ("max", false)] {
            let got = ped_anova(&t, &ours, lower).unwrap();
            let want = reference(&theirs, &t, mode);
            assert_same(
                &got.importances,
                &want,
                &format!("seed {seed}, {n} trials, {mode}"),
            );
        }
    }
    // On a large sample the two parameters the value turns on lead, and the one it ignores
    // weighs little.
    let got = ped_anova(&trials(2, 100, false), &ours, true).unwrap();
    let top: Vec<&str> = got.importances[..2]
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert!(top.contains(&"lr") && top.contains(&"x"), "{got:?}");
    let noise = got
        .importances
        .iter()
        .find(|(k, _)| k == "noise")
        .unwrap()
        .1;
    assert!(noise < 0.05, "{got:?}");
}

/// A grid's axes are choices among the values it lists (numbers included), as an Optuna study of
/// the same trials declares them.
#[test]
fn a_grids_axes_are_choices_as_optuna_declares_them() {
    let bs = [1, 4, 8, 16, 32];
    let lrs = [0.01, 0.0001];
    let mut t = vec![];
    for (i, b) in bs.iter().enumerate() {
        for (k, lr) in lrs.iter().enumerate() {
            let acc = 0.5 + 0.08 * i as f64 - 0.2 * k as f64 + 0.001 * (i * k) as f64;
            let params = json!({"batch_size": b, "lr": lr});
            t.push(Trial {
                params: params.as_object().unwrap().clone(),
                value: acc,
            });
        }
    }
    let ours = vec![
        (
            "batch_size".into(),
            Distribution::Choice(bs.iter().map(|b| json!(b)).collect()),
        ),
        (
            "lr".into(),
            Distribution::Choice(lrs.iter().map(|l| json!(l)).collect()),
        ),
    ];
    let theirs = json!([
        {"name": "batch_size", "kind": "choice", "choices": bs},
        {"name": "lr", "kind": "choice", "choices": lrs},
    ]);
    let got = ped_anova(&t, &ours, false).unwrap();
    assert_same(&got.importances, &reference(&theirs, &t, "max"), "grid");
}

const SEARCH: &str = r#"
name = "imp"
[train]
dataset = "synthetic"
epochs = 1
[search]
method = "random"
trials = 30
seed = 3
[search.space]
lr = { log_uniform = [1e-4, 1e-1] }
momentum = { uniform = [0.8, 0.99] }
warmup_epochs = { int = [0, 5] }
batch_size = { choice = [16, 32, 64, 128] }
"#;

/// Through the API: the sweep's completed jobs judged on its objective (accuracy, max) equal
/// Optuna on the same trials; the diverged job is left out and counted; the best job named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweeps_importance_through_the_api_is_optunas() {
    let app = spawn_app().await;
    let sweep = app.submit(SEARCH).await.id;
    let (s, v) = app.get(&format!("/api/sweeps/{sweep}/importance")).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"].as_str().unwrap().contains("at least 2"), "{v}");
    let mut counted = vec![];
    while let Some(c) = app.claim("w").await {
        let p = c.params.as_object().unwrap();
        if counted.len() == 3 {
            app.finish(c.id, c.attempt, protocol::Outcome::Diverged)
                .await;
            counted.push(None);
            continue;
        }
        let lr = p["lr"].as_f64().unwrap();
        let acc = 0.9
            - 0.1 * (lr.log10() + 2.5).abs()
            - 0.002 * p["warmup_epochs"].as_f64().unwrap()
            - if p["batch_size"] == 128 { 0.05 } else { 0.0 };
        app.metrics(c.id, c.attempt, 1, Some(1.0), acc).await;
        app.finish(c.id, c.attempt, protocol::Outcome::Completed)
            .await;
        counted.push(Some(Trial {
            params: p.clone(),
            value: acc,
        }));
    }
    let counted: Vec<Trial> = counted.into_iter().flatten().collect();
    let (s, v) = app.get(&format!("/api/sweeps/{sweep}/importance")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (
            v["method"].as_str(),
            v["metric"].as_str(),
            v["mode"].as_str()
        ),
        (Some("ped_anova"), Some("accuracy"), Some("max"))
    );
    assert_eq!(v["trials"], 29);
    assert_eq!(v["left_out"]["diverged"], 1);
    let theirs = json!([
        {"name": "lr", "kind": "log", "lo": 1e-4, "hi": 1e-1},
        {"name": "momentum", "kind": "float", "lo": 0.8, "hi": 0.99},
        {"name": "warmup_epochs", "kind": "int", "lo": 0, "hi": 5},
        {"name": "batch_size", "kind": "choice", "choices": [16, 32, 64, 128]},
    ]);
    let ours: Vec<(String, f64)> = v["importances"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, x)| (k.clone(), x.as_f64().unwrap()))
        .collect();
    assert!(
        ours.windows(2).all(|w| w[0].1 >= w[1].1),
        "largest first: {ours:?}"
    );
    // Optuna's study holds only the search space's parameters, not [train]'s.
    let only_space: Vec<Trial> = counted
        .iter()
        .map(|t| Trial {
            params: ["lr", "momentum", "warmup_epochs", "batch_size"]
                .iter()
                .map(|k| (k.to_string(), t.params[*k].clone()))
                .collect(),
            value: t.value,
        })
        .collect();
    assert_same(&ours, &reference(&theirs, &only_space, "max"), "the API");
    assert_eq!(ours[0].0, "lr", "{ours:?}");
    let best = counted.iter().map(|t| t.value).fold(f64::MIN, f64::max);
    assert_eq!(v["best"]["value"].as_f64(), Some(best), "{v}");
    assert!(
        v["best"]["params"].get("lr").is_some() && v["best"]["params"].get("dataset").is_none(),
        "{v}"
    );
    // The same from the terminal, as a markdown table, largest first.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args([
            "export",
            &sweep.to_string(),
            "--importance",
            "--server",
            &app.base,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("PED-ANOVA over 29 completed job(s); left out: 1 diverged"),
        "{text}"
    );
    let first_row = text
        .lines()
        .find(|l| l.starts_with("| ") && !l.starts_with("| parameter"))
        .unwrap();
    assert!(first_row.starts_with("| lr | "), "{text}");
}

/// An unknown metric, a mode that is neither min nor max, a sweep that does not exist: each a
/// clear error naming what, never an empty answer.
#[tokio::test]
async fn bad_importance_requests_are_refused_naming_what() {
    let app = spawn_app().await;
    let sweep = app.submit(TWO_JOBS).await.id;
    for _ in 0..2 {
        let c = app.claim("w").await.unwrap();
        app.metrics(c.id, c.attempt, 1, Some(1.0), 0.5).await;
        app.finish(c.id, c.attempt, protocol::Outcome::Completed)
            .await;
    }
    let cases = [
        (
            "metric=score",
            StatusCode::UNPROCESSABLE_ENTITY,
            "no ended job reported `score`",
        ),
        (
            "metric=a%22b",
            StatusCode::UNPROCESSABLE_ENTITY,
            "not a metric's name",
        ),
        (
            "mode=up",
            StatusCode::UNPROCESSABLE_ENTITY,
            "neither min nor max",
        ),
    ];
    for (q, status, says) in cases {
        let (s, v) = app
            .get(&format!("/api/sweeps/{sweep}/importance?{q}"))
            .await;
        assert_eq!(s, status, "{q}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{q}: {v}");
    }
    let (s, _) = app.get("/api/sweeps/999/importance").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Two completed jobs with equal values: an answer (equal shares), with its warning.
    let (s, v) = app.get(&format!("/api/sweeps/{sweep}/importance")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["warning"].as_str().unwrap().contains("unstable"), "{v}");
}
