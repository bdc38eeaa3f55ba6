//! Several objectives through the coordinator: NSGA-II and multi-objective TPE drawn when claimed
//! (reproducible for a seed, exactly `trials` distinct trials to concurrent claimers), the front
//! endpoint against a brute-force front with ties and constraints, the front where a user looks
//! (sweep row, status line, exports), and bad input refused naming the field.
use crate::helpers::*;
use protocol::{routes, Outcome};
use reqwest::StatusCode;
use serde_json::{Map, Value};
use std::collections::HashSet;

const NSGA2: &str = r#"
name = "nsga2"
[train]
dataset = "synthetic"
epochs = 1
[search]
method = "nsga2"
trials = 24
seed = 5
population = 6
objectives = [
  { metric = "accuracy", mode = "max" },
  { metric = "seconds", mode = "min" },
]
[search.space]
lr = { log_uniform = [1e-5, 1.0] }
momentum = { uniform = [0.5, 0.99] }
"#;

/// What a trial "reports": accuracy best at lr = 1e-2, seconds falling with lr (a trade-off),
/// both on a coarse lattice so trials tie; images_per_sec below 100 for small momentum, and not
/// reported at all at the largest lrs (an infinite violation).
fn outcome(p: &Map<String, Value>) -> (f64, f64, Option<f64>) {
    let lr = p["lr"].as_f64().unwrap();
    let m = p["momentum"].as_f64().unwrap();
    let acc = (1.0 - 0.1 * (lr.log10() + 2.0).powi(2)).clamp(0.0, 1.0);
    let secs = (-lr.log10()).round();
    let speed = (lr < 0.5).then_some((m * 200.0).round());
    ((acc * 20.0).round() / 20.0, secs, speed)
}

/// Claims, reports one epoch with the trial's outcome and finishes it.
async fn run_one(app: &TestApp, worker: &str) -> Option<Map<String, Value>> {
    let c = app.claim(worker).await?;
    let params = c.params.as_object().unwrap().clone();
    let (acc, secs, speed) = outcome(&params);
    let report = protocol::MetricsReport {
        seconds: Some(secs),
        images_per_sec: speed,
        ..TestApp::report(c.attempt, 1, Some(1.0), acc)
    };
    let (s, body) = app.send(&routes::metrics(c.id), &report).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = app.finish(c.id, c.attempt, Outcome::Completed).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    Some(params)
}

async fn drain(app: &TestApp) -> Vec<Map<String, Value>> {
    let mut out = vec![];
    while let Some(p) = run_one(app, "w").await {
        out.push(p);
    }
    out
}

/// NSGA-II's trials are drawn when claimed, generation after generation, and the same seed gives
/// the same trials; its children come from the elite (after the first generation, most trials
/// lie near earlier good ones rather than anywhere in the space).
#[tokio::test]
async fn nsga2_trials_are_drawn_when_claimed_and_reproducible() {
    let app = spawn_app().await;
    let a = app.submit(NSGA2).await;
    assert_eq!(a.jobs, 24);
    let sweep = app.sweep(a.id).await;
    assert!(sweep.jobs.iter().all(|j| j.params.get("lr").is_none()));
    let first = drain(&app).await;
    assert_eq!(first.len(), 24);
    app.submit(NSGA2).await;
    let second = drain(&app).await;
    assert_eq!(first, second, "same seed, same trials");
    app.submit(&NSGA2.replace("seed = 5", "seed = 6")).await;
    assert_ne!(drain(&app).await[..6], first[..6]);
    // A child copies each parameter from a parent unless mutated: in later generations most lr
    // values are values some earlier trial had.
    let seen: Vec<String> = first[..6].iter().map(|p| p["lr"].to_string()).collect();
    let inherited = first[6..]
        .iter()
        .filter(|p| first.iter().any(|q| q["lr"] == p["lr"] && q != *p))
        .count();
    assert!(
        inherited >= 9,
        "{inherited} of 18 children inherit an lr ({seen:?})"
    );
    let row = app
        .sweep(a.id)
        .await
        .sweep
        .tpe
        .expect("a search's progress");
    assert_eq!(row.method, "nsga2");
    assert_eq!((row.drawn, row.trials), (24, 24));
    assert!(row.front.is_some_and(|f| f >= 1) && row.best_value.is_none());
}

/// Eight workers claim at once, again and again, on an NSGA-II and a multi-objective TPE sweep:
/// exactly `trials` trials each, each claimed once, all completed; TPE's all distinct points
/// (NSGA-II's children may repeat a parent's point, as Optuna's do).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_get_exactly_the_trials() {
    let app = std::sync::Arc::new(spawn_app().await);
    let tpe = NSGA2
        .replace("method = \"nsga2\"", "method = \"tpe\"")
        .replace("population = 6", "startup_trials = 4");
    for (toml, points_distinct) in [
        (NSGA2.replace("trials = 24", "trials = 40"), false),
        (tpe, true),
    ] {
        let created = app.submit(&toml).await;
        let mut tasks = vec![];
        for w in 0..8 {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = vec![];
                while let Some(p) = run_one(&app, &format!("w{w}")).await {
                    mine.push(p);
                }
                mine
            }));
        }
        let mut all = vec![];
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let sweep = app.sweep(created.id).await;
        assert_eq!(all.len() as i64, sweep.sweep.total, "{toml}");
        assert_eq!(sweep.sweep.completed, sweep.sweep.total);
        assert!(
            sweep.jobs.iter().all(|j| j.attempt == 1),
            "each trial claimed once"
        );
        let distinct: HashSet<String> = all
            .iter()
            .map(|p| format!("{}:{}", p["lr"], p["momentum"]))
            .collect();
        if points_distinct {
            assert_eq!(
                distinct.len(),
                all.len(),
                "no two TPE trials the same point"
            );
        }
    }
}

/// A random search with two objectives and a constraint: the front the coordinator serves is the
/// brute-force front (feasible trials no feasible trial dominates; ties both kept), in the sweep
/// row, the status line, `?all`, the exports' `pareto` column and `server export --pareto`.
#[tokio::test]
async fn the_front_is_the_brute_force_front_everywhere_a_user_looks() {
    let app = spawn_app().await;
    let toml = NSGA2
        .replace("method = \"nsga2\"", "method = \"random\"")
        .replace("population = 6\n", "")
        .replace("trials = 24", "trials = 60")
        .replace(
            "[search.space]",
            "[[search.constraints]]\nmetric = \"images_per_sec\"\nmin = 140\n[search.space]",
        );
    let created = app.submit(&toml).await;
    let trials = drain(&app).await;
    let d = app.sweep(created.id).await;
    let job_of = |p: &Map<String, Value>| {
        d.jobs
            .iter()
            .find(|j| j.params["lr"] == p["lr"])
            .unwrap()
            .id
    };
    let feasible: Vec<(i64, f64, f64)> = trials
        .iter()
        .filter(|p| outcome(p).2.is_some_and(|s| s >= 140.0))
        .map(|p| (job_of(p), outcome(p).0, outcome(p).1))
        .collect();
    let front: HashSet<i64> = feasible
        .iter()
        .filter(|a| {
            !feasible
                .iter()
                .any(|b| b.1 >= a.1 && b.2 <= a.2 && (b.1 > a.1 || b.2 < a.2))
        })
        .map(|a| a.0)
        .collect();
    assert!(front.len() >= 2, "a front of several: {front:?}");
    let (s, v) = app.get(&format!("/api/sweeps/{}/pareto", created.id)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let view: protocol::views::ParetoView = serde_json::from_value(v).unwrap();
    let got: HashSet<i64> = view.trials.iter().map(|t| t.job_id).collect();
    assert_eq!(got, front);
    assert_eq!(view.constraints, vec!["images_per_sec >= 140".to_string()]);
    assert!(view.trials.iter().all(|t| t.feasible && t.params.is_some()));
    assert!(view
        .trials
        .windows(2)
        .all(|w| w[0].values[0] >= w[1].values[0]));
    let (_, all) = app
        .get(&format!("/api/sweeps/{}/pareto?all=true", created.id))
        .await;
    let all: protocol::views::ParetoView = serde_json::from_value(all).unwrap();
    assert_eq!(all.trials.len(), 60);
    let marked: HashSet<i64> = all
        .trials
        .iter()
        .filter(|t| t.front)
        .map(|t| t.job_id)
        .collect();
    assert_eq!(marked, front);
    assert!(
        all.trials
            .iter()
            .any(|t| !t.feasible && t.violation.is_none()),
        "unreported: infinite"
    );
    where_a_user_looks(&app, &d, &front, &view).await;
    // Any sweep's front on metrics asked for; a sweep without objectives must name them.
    let grid = app.submit(TWO_JOBS).await;
    let (s, body) = app.get(&format!("/api/sweeps/{}/pareto", grid.id)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (s, body) = app
        .get(&format!(
            "/api/sweeps/{}/pareto?objectives=accuracy,seconds:min",
            created.id
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

/// Each bad input of several objectives, and the field its error names.
fn bad_cases() -> Vec<(String, &'static str)> {
    let five = (0..5)
        .map(|i| format!("{{ metric = \"m{i}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    let objectives = "objectives = [\n  { metric = \"accuracy\", mode = \"max\" },\n  { metric = \"seconds\", mode = \"min\" },\n]";
    let with = |new: &str| NSGA2.replace(objectives, new);
    vec![
        (with("objectives = []"), "search.objectives"),
        (with(&format!("objectives = [{five}]")), "search.objectives"),
        (
            with("objectives = [{ metric = \"accuracy\" }, { metric = \"accuracy\" }]"),
            "search.objectives[1].metric",
        ),
        (
            with("objectives = [{ metric = \"accuracy\", mode = \"up\" }]"),
            "search.objectives",
        ),
        (
            with("objectives = [{ metric = \"val acc\" }]"),
            "search.objectives[0].metric",
        ),
        (
            with("objectives = [{ metric = \"bleu\" }]"),
            "search.objectives[0].metric",
        ),
        (
            with(&format!("metric = \"accuracy\"\n{objectives}")),
            "search.objectives",
        ),
        (
            NSGA2.replace("population = 6", "population = 1"),
            "search.population",
        ),
        (
            NSGA2.replace("population = 6", "population = 10001"),
            "search.population",
        ),
        (
            NSGA2.replace("population = 6", "population = 30"),
            "search.population",
        ),
        (
            NSGA2.replace("population = 6", "population = 6\ncrossover_prob = 1.5"),
            "search.crossover_prob",
        ),
        (
            NSGA2.replace("population = 6", "population = 6\nswapping_prob = -0.1"),
            "search.swapping_prob",
        ),
        (
            NSGA2.replace("population = 6", "population = 6\nmutation_prob = 2"),
            "search.mutation_prob",
        ),
        (
            NSGA2.replace("population = 6", "population = 6\nstartup_trials = 3"),
            "search.startup_trials",
        ),
        (
            NSGA2.replace("method = \"nsga2\"", "method = \"tpe\""),
            "search.population",
        ),
        (
            NSGA2.replace("method = \"nsga2\"", "method = \"random\""),
            "search.population",
        ),
        (
            NSGA2.replace("method = \"nsga2\"", "method = \"grid\""),
            "search.trials",
        ),
        (
            NSGA2.replace(
                "[search.space]",
                "[[search.constraints]]\nmetric = \"seconds\"\n[search.space]",
            ),
            "search.constraints[0]",
        ),
        (
            NSGA2.replace(
                "[search.space]",
                "[[search.constraints]]\nmetric = \"seconds\"\nmin = 1\nmax = 2\n[search.space]",
            ),
            "search.constraints[0]",
        ),
        (
            NSGA2.replace(
                "[search.space]",
                "[[search.constraints]]\nmetric = \"bleu\"\nmax = 2\n[search.space]",
            ),
            "search.constraints[0].metric",
        ),
        (
            format!("{NSGA2}[early_stop]\nmethod = \"median\"\n"),
            "early_stop.metric",
        ),
        (format!("{NSGA2}[run]\nrepeats = 2\n"), "run.repeats"),
    ]
}

/// The front's size in the sweep row and status line; the exports' `pareto` column (the front's
/// rows first); `server export --pareto`'s table.
async fn where_a_user_looks(
    app: &TestApp,
    d: &protocol::views::SweepDetail,
    front: &HashSet<i64>,
    view: &protocol::views::ParetoView,
) {
    // The sweep row and the status line give the front's size.
    let row = d.sweep.tpe.clone().expect("progress");
    assert_eq!(row.front, Some(front.len() as i64));
    let line = server::cli::client::sweep_status(d);
    assert!(
        line.contains(&format!(
            "front of {} on accuracy (max), seconds (min)",
            front.len()
        )),
        "{line}"
    );
    // Exports: front first, marked; the markdown front table has a row per trial on it.
    let (_, records) = app
        .get(&format!("/api/sweeps/{}/results?format=json", d.sweep.id))
        .await;
    let records = records.as_array().unwrap();
    let flagged: Vec<bool> = records.iter().map(|r| r["pareto"] == true).collect();
    assert_eq!(flagged.iter().filter(|f| **f).count(), front.len());
    assert!(
        flagged.windows(2).all(|w| w[0] || !w[1]),
        "the front's rows first"
    );
    let md = app
        .get_text(&format!("/api/sweeps/{}/results", d.sweep.id))
        .await;
    assert!(
        md.lines().next().unwrap().contains(
            "| pareto | accuracy (%) (objective, max) | epoch time (s) (objective, min) |"
        ),
        "{md}"
    );
    assert_eq!(md.matches("| yes |").count(), front.len(), "{md}");
    let table = server::results::front::markdown(view);
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| job"))
            .count(),
        front.len(),
        "{table}"
    );
}

/// A finished random search of 30 trials on accuracy and seconds (and whatever `more` adds to
/// the objectives' list, which it ends), feasible when images_per_sec >= 140: its id.
pub(crate) async fn finished_front_search(app: &TestApp, more: &str) -> i64 {
    let toml = NSGA2
        .replace("method = \"nsga2\"", "method = \"random\"")
        .replace("population = 6\n", "")
        .replace("trials = 24", "trials = 30")
        .replace(
            "  { metric = \"seconds\", mode = \"min\" },\n]",
            &format!("  {{ metric = \"seconds\", mode = \"min\" }},\n{more}"),
        )
        .replace(
            "[search.space]",
            "[[search.constraints]]\nmetric = \"images_per_sec\"\nmin = 140\n[search.space]",
        );
    let id = app.submit(&toml).await.id;
    assert_eq!(drain(app).await.len(), 30);
    id
}

/// Every bad input of several objectives is a 422 naming the field, and nothing is stored.
#[tokio::test]
async fn bad_multi_objective_searches_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let cases = bad_cases();
    let before = app.get("/api/sweeps").await.1.as_array().unwrap().len();
    for (toml, field) in &cases {
        let (status, body) = app.submit_toml(toml).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}: {body}\n{toml}"
        );
        assert!(
            body["error"].as_str().unwrap_or("").contains(field),
            "{field}: {body}"
        );
    }
    assert_eq!(
        app.get("/api/sweeps").await.1.as_array().unwrap().len(),
        before,
        "nothing stored"
    );
    // The same rule named explicitly is fine; a command sweep may name its own metrics.
    let ok = format!("{NSGA2}[early_stop]\nmethod = \"median\"\nmetric = \"accuracy\"\n");
    assert_eq!(app.submit_toml(&ok).await.0, StatusCode::CREATED);
}
