//! Any sweep, not only the study's grid: exports whose columns are a sweep's own axes and metrics
//! (a command sweep over `alpha x depth` reporting its own `score`), a search's rows best first to
//! 4 significant digits, and the analysis views (slice, contour, compare) with their bad inputs.
use crate::helpers::*;
use protocol::{MetricsReport, Outcome};

/// A command sweep over two keys of its own (one a string), reporting only `score` and `tokens`.
const COMMAND_GRID: &str = r#"
name = "alpha-depth"
[command]
argv = ["python3", "fit.py", "--alpha", "{alpha}", "--depth", "{depth}"]
[train]
epochs = 2
[run]
max_attempts = 1
[grid]
alpha = [0.1, 0.25]
depth = ["shallow", "deep"]
"#;

/// A report carrying only a program's own metrics.
fn own(attempt: i64, epoch: i64, metrics: &[(&str, Option<f64>)]) -> MetricsReport {
    MetricsReport {
        attempt,
        epoch,
        extra: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..Default::default()
    }
}

/// Runs the command grid: (alpha, depth) scores 0.5 + alpha (+0.2 when deep); (0.25, shallow)
/// fails having reported nothing, (0.25, deep) stays running after one epoch; the first job's
/// tokens differ from the second's. Returns the sweep id.
pub(crate) async fn command_sweep(app: &TestApp) -> i64 {
    let sweep = app.submit(COMMAND_GRID).await.id;
    while let Some(c) = app.claim_with(&commands_allowed("w")).await {
        let alpha = c.params["alpha"].as_f64().unwrap();
        let deep = c.params["depth"] == "deep";
        let score = 0.5 + alpha + if deep { 0.2 } else { 0.0 };
        match (alpha == 0.25, deep) {
            (true, false) => {
                let failed = protocol::FinishRequest {
                    node_rank: None,
                    attempt: c.attempt,
                    status: Outcome::Failed,
                    summary: None,
                    error: Some("exit status 1".into()),
                };
                app.send(&protocol::routes::finish(c.id), &failed).await;
            }
            (true, true) => {
                let r = own(c.attempt, 1, &[("score", Some(score))]);
                app.send(&protocol::routes::metrics(c.id), &r).await;
            }
            _ => {
                for epoch in 1..=2 {
                    let r = own(
                        c.attempt,
                        epoch,
                        &[
                            ("score", Some(score)),
                            ("tokens", Some(1e6 * (epoch as f64 + alpha))),
                        ],
                    );
                    app.send(&protocol::routes::metrics(c.id), &r).await;
                }
                app.finish(c.id, c.attempt, Outcome::Completed).await;
            }
        }
    }
    sweep
}

/// A claim from a worker that runs command jobs.
fn commands_allowed(worker: &str) -> protocol::ClaimRequest {
    protocol::ClaimRequest {
        deadline: None,
        worker: worker.into(),
        capacity: None,
        accepts_commands: true,
        rendezvous: None,
    }
}

#[tokio::test]
async fn a_command_sweeps_exports_have_its_own_columns_and_nothing_invented() {
    let app = spawn_app().await;
    let sweep = command_sweep(&app).await;
    let md = app
        .get_text(&format!("/api/sweeps/{sweep}/results?format=markdown"))
        .await;
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(
        lines[0], "| job | alpha | depth | status | score | tokens |",
        "{md}"
    );
    assert_eq!(lines.len(), 2 + 4, "{md}");
    for invented in [
        "batch_size",
        "initial lr",
        "NaN",
        "\"shallow\"",
        "loss",
        "precision",
    ] {
        assert!(!md.contains(invented), "{invented} in\n{md}");
    }
    // Grid order; the best completed score of the column bold, the failed job blank, the running
    // one at its epoch; 2.1e6 to 4 significant digits.
    assert_eq!(
        lines[2], "| 1 | 0.1 | shallow | completed | 0.6 | 2.1e6 |",
        "{md}"
    );
    assert_eq!(
        lines[3], "| 2 | 0.1 | deep | completed | **0.8** | 2.1e6 |",
        "{md}"
    );
    assert_eq!(lines[4], "| 3 | 0.25 | shallow | failed | | |", "{md}");
    assert_eq!(
        lines[5], "| 4 | 0.25 | deep | running (epoch 1/2) | 0.95 | |",
        "{md}"
    );
    let extra = app
        .get_text(&format!("/api/sweeps/{sweep}/results?extra=true"))
        .await;
    assert!(
        extra.starts_with("| job | alpha | depth | status | score | tokens | epochs | wall time |"),
        "{extra}"
    );
    // CSV and JSON: the same jobs, full precision, no column for a metric nobody reported.
    let csv = app
        .get_text(&format!("/api/sweeps/{sweep}/results?format=csv"))
        .await;
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    for col in ["job_id", "alpha", "depth", "score", "tokens", "status"] {
        assert!(header.contains(&col), "{col} missing: {header:?}");
    }
    for col in [
        "accuracy",
        "test_loss",
        "precision",
        "recall",
        "f1",
        "batch_size",
    ] {
        assert!(!header.contains(&col), "{col} invented: {header:?}");
    }
    assert!(csv.contains(",shallow,"), "{csv}");
    assert!(!csv.contains("NaN"), "{csv}");
    let (_, rows) = app
        .get(&format!("/api/sweeps/{sweep}/results?format=json"))
        .await;
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[1]["depth"], "deep");
    assert!((rows[1]["score"].as_f64().unwrap() - 0.8).abs() < 1e-12);
    assert!(
        rows[2]["score"].is_null() && rows[2].get("accuracy").is_none(),
        "{rows:?}"
    );
}

const RANDOM: &str = r#"
name = "random"
[train]
dataset = "synthetic"
epochs = 1
[search]
method = "random"
trials = 8
seed = 5
[search.space]
lr = { log_uniform = [1e-4, 1e-1] }
momentum = { uniform = [0.8, 0.99] }
"#;

/// A search's rows come best first by its objective (accuracy, max), with a job id column and
/// values to 4 significant digits; the diverged run after the ranked ones, blank where it has no
/// finite value; bold is each column's best, column by column.
#[tokio::test]
async fn a_searchs_exports_are_best_first_to_four_digits() {
    let app = spawn_app().await;
    let sweep = app.submit(RANDOM).await.id;
    let mut accs = vec![];
    while let Some(c) = app.claim("w").await {
        let lr = c.params["lr"].as_f64().unwrap();
        if accs.len() == 2 {
            app.metrics(c.id, c.attempt, 1, None, 0.1).await;
            app.finish(c.id, c.attempt, Outcome::Diverged).await;
            accs.push((c.id, None, lr));
            continue;
        }
        // Accuracy rises with lr; the loss is lowest for the second-best job.
        let acc = 0.5 + 0.1 * (lr.log10() + 4.0);
        let loss = (acc - 0.75).abs();
        app.metrics(c.id, c.attempt, 1, Some(loss), acc).await;
        app.finish(c.id, c.attempt, Outcome::Completed).await;
        accs.push((c.id, Some(acc), lr));
    }
    let mut ranked: Vec<(i64, f64, f64)> = accs
        .iter()
        .filter_map(|(id, a, lr)| a.map(|a| (*id, a, *lr)))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let md = app.get_text(&format!("/api/sweeps/{sweep}/results")).await;
    let lines: Vec<&str> = md.lines().collect();
    assert!(
        lines[0].starts_with("| job | lr | momentum | status | accuracy (%) (objective, max) | test loss | train loss |"),
        "{md}"
    );
    let ids: Vec<i64> = lines[2..]
        .iter()
        .map(|l| l.split('|').nth(1).unwrap().trim().parse().unwrap())
        .collect();
    let mut want: Vec<i64> = ranked.iter().map(|r| r.0).collect();
    want.push(accs[2].0);
    assert_eq!(ids, want, "{md}");
    let top = lines[2];
    assert!(
        top.contains(&format!("**{:.2}**", 100.0 * ranked[0].1)),
        "{md}"
    );
    let lr_cell = top.split('|').nth(2).unwrap().trim();
    let digits = lr_cell.trim_start_matches("0.").trim_start_matches('0');
    assert!(
        digits.split('e').next().unwrap().replace('.', "").len() <= 4,
        "lr to 4 significant digits: {lr_cell}"
    );
    // The lowest loss is bold in its own column, on another row than the best accuracy.
    let lowest = ranked
        .iter()
        .map(|r| (r.1 - 0.75).abs())
        .fold(f64::MAX, f64::min);
    let bold_loss: Vec<&&str> = lines[2..]
        .iter()
        .filter(|l| l.split('|').nth(6).unwrap().contains("**"))
        .collect();
    assert_eq!(bold_loss.len(), 1, "{md}");
    assert!(
        bold_loss[0].contains(&format!("**{}**", server::results::shape::short(lowest))),
        "{md}"
    );
    let last = lines.last().unwrap();
    assert!(last.contains("| diverged | 10.00 | |"), "{md}");
    // CSV and JSON in the same order, lr at full precision.
    let (_, rows) = app
        .get(&format!("/api/sweeps/{sweep}/results?format=json"))
        .await;
    let json_ids: Vec<i64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["job_id"].as_i64().unwrap())
        .collect();
    assert_eq!(json_ids, want);
    assert_eq!(rows[0]["lr"].as_f64(), Some(ranked[0].2));
}

/// A finished random search over lr (log) and momentum: accuracy rises with lr, momentum does
/// not matter; one job diverged. Returns the sweep id and the completed (job, accuracy) pairs.
pub(crate) async fn random_search(app: &TestApp) -> (i64, Vec<(i64, f64)>) {
    let sweep = app
        .submit(&RANDOM.replace("trials = 8", "trials = 24"))
        .await
        .id;
    let mut done = vec![];
    while let Some(c) = app.claim("w").await {
        if done.len() == 5 {
            app.metrics(c.id, c.attempt, 1, None, 0.1).await;
            app.finish(c.id, c.attempt, Outcome::Diverged).await;
            done.push((c.id, f64::NAN));
            continue;
        }
        let lr = c.params["lr"].as_f64().unwrap();
        let acc = 0.5 + 0.1 * (lr.log10() + 4.0);
        app.metrics(c.id, c.attempt, 1, Some(1.0 - acc), acc).await;
        app.finish(c.id, c.attempt, Outcome::Completed).await;
        done.push((c.id, acc));
    }
    done.retain(|(_, a)| !a.is_nan());
    (sweep, done)
}

#[tokio::test]
async fn a_sweeps_shape_names_its_own_axes_and_metrics() {
    let app = spawn_app().await;
    let sweep = command_sweep(&app).await;
    let (s, v) = app.get(&format!("/api/sweeps/{sweep}/shape")).await;
    assert_eq!(s, reqwest::StatusCode::OK, "{v}");
    let axes: Vec<(&str, &str)> = v["axes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["scale"].as_str().unwrap()))
        .collect();
    assert_eq!(axes, [("alpha", "linear"), ("depth", "choice")], "{v}");
    let metrics: Vec<&str> = v["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(metrics, ["score", "tokens"], "{v}");
    assert_eq!(
        (v["objective"].as_str(), v["study_grid"].as_bool()),
        (Some("score"), Some(false))
    );
    assert_eq!(v["metrics"][0]["max"], 0.95, "{v}");
    // The study's grid is laid out as the study's.
    let study = crate::results::golden_sweep(&app).await;
    let (_, v) = app.get(&format!("/api/sweeps/{study}/shape")).await;
    assert_eq!(v["study_grid"], true, "{v}");
    assert_eq!(v["axes"][1]["scale"], "log", "lr spans two decades: {v}");
    assert_eq!(v["metrics"][0]["name"], "accuracy", "{v}");
    assert_eq!(v["metrics"][0]["percent"], true, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slice_plots_each_parameter_best_first_and_keep_the_best() {
    let app = spawn_app().await;
    let (sweep, done) = random_search(&app).await;
    let (s, v) = app.get(&format!("/api/sweeps/{sweep}/slice")).await;
    assert_eq!(s, reqwest::StatusCode::OK, "{v}");
    assert_eq!(v["trials"], done.len());
    assert_eq!(v["left_out"]["diverged"], 1);
    assert_eq!(
        (
            v["axes"][0]["name"].as_str(),
            v["axes"][0]["scale"].as_str()
        ),
        (Some("lr"), Some("log"))
    );
    assert_eq!(v["axes"][1]["scale"], "linear");
    let values: Vec<f64> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values.len(), done.len());
    assert!(
        values.windows(2).all(|w| w[0] >= w[1]),
        "best first: {values:?}"
    );
    let mut trials: Vec<i64> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["trial"].as_i64().unwrap())
        .collect();
    trials.sort();
    trials.dedup();
    assert_eq!(trials.len(), done.len(), "one trial number each");
    assert!(v["points"][0]["params"]["lr"].is_number());
    // At most `points`, keeping the best.
    let (_, few) = app
        .get(&format!("/api/sweeps/{sweep}/slice?points=3"))
        .await;
    assert_eq!(
        (few["kept"].as_u64(), few["trials"].as_u64()),
        (Some(3), Some(done.len() as u64))
    );
    let mut best: Vec<f64> = done.iter().map(|d| d.1).collect();
    best.sort_by(|a, b| b.total_cmp(a));
    // (SQLite writes a real in JSON to 15 significant digits.)
    assert!((few["points"][2]["value"].as_f64().unwrap() - best[2]).abs() < 1e-12);
    // Another metric, its own mode.
    let (_, loss) = app
        .get(&format!("/api/sweeps/{sweep}/slice?metric=test_loss"))
        .await;
    assert_eq!(loss["mode"], "min");
    assert!((loss["points"][0]["value"].as_f64().unwrap() - (1.0 - best[0])).abs() < 1e-12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contour_is_measured_where_jobs_ran_and_interpolated_between() {
    let app = spawn_app().await;
    let (sweep, done) = random_search(&app).await;
    let (s, v) = app.get(&format!("/api/sweeps/{sweep}/contour")).await;
    assert_eq!(s, reqwest::StatusCode::OK, "{v}");
    assert_eq!(
        (v["x"]["name"].as_str(), v["y"]["name"].as_str()),
        (Some("lr"), Some("momentum"))
    );
    let z = v["z"].as_array().unwrap();
    assert_eq!((z.len(), z[0].as_array().unwrap().len()), (30, 30));
    let counts: u64 = v["counts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|c| c.as_u64().unwrap()))
        .sum();
    assert_eq!(counts, done.len() as u64, "every counted job in one cell");
    assert!(v["method"].as_str().unwrap().contains("harmonic"), "{v}");
    // Every value of the surface lies within the measured range (an interpolation, not a model).
    let (lo, hi) = done
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), d| (l.min(d.1), h.max(d.1)));
    for row in z {
        for c in row.as_array().unwrap() {
            let c = c.as_f64().unwrap();
            assert!(c >= lo - 1e-9 && c <= hi + 1e-9, "{c} outside {lo}..{hi}");
        }
    }
    // lr matters: the surface rises along x (its left column below its right, row by row).
    let first = z[15].as_array().unwrap();
    assert!(first[0].as_f64() < first[29].as_f64(), "{first:?}");
    let (_, small) = app
        .get(&format!(
            "/api/sweeps/{sweep}/contour?x=momentum&y=lr&size=5"
        ))
        .await;
    assert_eq!(small["xs"].as_array().unwrap().len(), 5, "{small}");
    assert_eq!(small["x"]["name"], "momentum");
    // The study's grid: lr across, batch size up, a cell per grid value.
    let study = crate::results::golden_sweep(&app).await;
    let (s, g) = app.get(&format!("/api/sweeps/{study}/contour")).await;
    assert_eq!(s, reqwest::StatusCode::OK, "{g}");
    assert_eq!(
        (g["x"]["name"].as_str(), g["y"]["name"].as_str()),
        (Some("lr"), Some("batch_size"))
    );
    assert_eq!(g["xs"], serde_json::json!([1e-4, 1e-2]));
    assert_eq!(g["ys"].as_array().unwrap().len(), 9);
}

#[tokio::test]
async fn compare_puts_jobs_side_by_side_and_marks_what_differs() {
    let app = spawn_app().await;
    let sweep = command_sweep(&app).await;
    let jobs = app.sweep(sweep).await.jobs;
    let (a, b) = (jobs[0].id, jobs[1].id);
    let (s, v) = app.get(&format!("/api/compare?jobs={a},{b}")).await;
    assert_eq!(s, reqwest::StatusCode::OK, "{v}");
    assert_eq!(v["differing"], serde_json::json!(["depth"]), "{v}");
    assert_eq!(v["jobs"][0]["id"], a);
    assert_eq!(v["jobs"][0]["sweep_name"], "alpha-depth");
    assert_eq!(
        v["jobs"][1]["metrics"].as_array().unwrap().len(),
        2,
        "every epoch"
    );
    assert_eq!(v["jobs"][1]["metrics"][1]["extra"]["score"], 0.8);
}

/// Every run's curve of one metric, overlaid: the best by their latest value, running ones too.
#[tokio::test]
async fn the_runs_overlay_is_the_best_curves_of_a_metric() {
    let app = spawn_app().await;
    let sweep = command_sweep(&app).await;
    let (s, v) = app
        .get(&format!("/api/sweeps/{sweep}/runs?metric=score"))
        .await;
    assert_eq!(s, reqwest::StatusCode::OK, "{v}");
    assert_eq!(
        (v["total"].as_u64(), v["mode"].as_str()),
        (Some(3), Some("max"))
    );
    let lines = v["lines"].as_array().unwrap();
    let lasts: Vec<f64> = lines.iter().map(|l| l["last"].as_f64().unwrap()).collect();
    assert_eq!(lasts.len(), 3);
    assert!(
        (lasts[0] - 0.95).abs() < 1e-12,
        "the running job leads: {v}"
    );
    assert!(lasts.windows(2).all(|w| w[0] >= w[1]), "{lasts:?}");
    assert_eq!(lines[0]["status"], protocol::JobStatus::Running.as_str());
    assert_eq!(lines[1]["epoch"], serde_json::json!([1, 2]));
    assert_eq!(lines[1]["params"]["depth"], "deep");
    let (_, one) = app
        .get(&format!("/api/sweeps/{sweep}/runs?metric=tokens&limit=1"))
        .await;
    assert_eq!(one["lines"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["mode"], "max");
}

/// Each bad request is refused naming what is wrong: never a blank plot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_view_requests_are_refused_naming_what() {
    let app = spawn_app().await;
    let (sweep, done) = random_search(&app).await;
    let one_axis = app
        .submit("name = \"one\"\n[train]\ndataset = \"synthetic\"\nepochs = 1\n[grid]\nlr = [0.1, 0.01]\n")
        .await
        .id;
    while let Some(c) = app.claim("w").await {
        app.metrics(c.id, c.attempt, 1, Some(1.0), 0.5).await;
        app.finish(c.id, c.attempt, Outcome::Completed).await;
    }
    let fresh = app.submit(RANDOM).await.id;
    let (a, b) = (done[0].0, done[1].0);
    let cases = [
        (
            format!("/api/sweeps/{sweep}/slice?metric=bleu"),
            422,
            "no ended job reported `bleu`",
        ),
        (
            format!("/api/sweeps/{sweep}/slice?mode=up"),
            422,
            "neither min nor max",
        ),
        (format!("/api/sweeps/{sweep}/slice?points=0"), 422, "points"),
        (
            format!("/api/sweeps/{fresh}/slice"),
            422,
            "at least 2 completed jobs",
        ),
        (
            format!("/api/sweeps/{sweep}/contour?x=depth&y=lr"),
            422,
            "\"depth\" is not one of the sweep's: lr, momentum",
        ),
        (
            format!("/api/sweeps/{sweep}/contour?x=lr&y=lr"),
            422,
            "two parameters",
        ),
        (format!("/api/sweeps/{sweep}/contour?size=1"), 422, "size"),
        (
            format!("/api/sweeps/{one_axis}/contour"),
            422,
            "needs two parameters; this sweep has one (lr)",
        ),
        ("/api/sweeps/999/slice".to_string(), 404, "999"),
        ("/api/sweeps/999/contour".to_string(), 404, "999"),
        ("/api/sweeps/999/shape".to_string(), 404, "999"),
        (format!("/api/sweeps/{sweep}/runs?limit=0"), 422, "limit"),
        (
            format!("/api/sweeps/{sweep}/jobs?sort=param:a%22b"),
            422,
            "not a name to sort by",
        ),
        (
            format!("/api/sweeps/{sweep}/runs?metric=a%20b"),
            422,
            "not a metric's name",
        ),
        (format!("/api/compare?jobs={a}"), 422, "2 to 5"),
        ("/api/compare?jobs=1,2,3,4,5,6".to_string(), 422, "got 6"),
        (
            "/api/compare?jobs=1,x".to_string(),
            422,
            "\"x\" is not a job id",
        ),
        (format!("/api/compare?jobs={a},{b},9999"), 404, "job 9999"),
    ];
    for (path, status, says) in cases {
        let (s, v) = app.get(&path).await;
        assert_eq!(s.as_u16(), status, "{path}: {v}");
        assert!(
            v["error"].as_str().unwrap_or_default().contains(says),
            "{path}: {v}"
        );
    }
}

/// A search's exports, planned from keys and facts gathered as they stream and written a page at
/// a time, equal the whole sweep rendered at once in memory: same order (best first), same bold
/// cells, same columns (own metrics included), in every format.
#[tokio::test]
async fn a_searchs_paged_exports_equal_the_whole_sweep_rendered_at_once() {
    use server::results::export::{Format, TableOptions};
    let app = spawn_app().await;
    let id = app
        .submit(&RANDOM.replace("trials = 8", "trials = 2500"))
        .await
        .id;
    let whole = synthetic_sweep(
        &app,
        id,
        2,
        &[
            "UPDATE jobs SET status = 'diverged' WHERE id % 97 = 0",
            "UPDATE jobs SET status = 'running' WHERE id % 89 = 0",
            "UPDATE metrics SET extra = '{\"bleu\": 0.25}' WHERE job_id % 7 = 0 AND epoch = 2",
            "UPDATE metrics SET precision = NULL, recall = NULL",
        ],
    )
    .await;
    let extra = TableOptions {
        extra: true,
        ..Default::default()
    };
    let cases = vec![
        ("format=markdown", Format::Markdown, TableOptions::default()),
        ("format=markdown&extra=true", Format::Markdown, extra),
        ("format=csv", Format::Csv, TableOptions::default()),
        ("format=json", Format::Json, TableOptions::default()),
    ];
    for (query, got) in paged_exports_equal_the_whole(&app, &whole, cases).await {
        if query.starts_with("format=markdown") {
            let head = got.lines().next().unwrap();
            assert!(
                head.contains("bleu") && !head.contains("precision"),
                "{head}"
            );
            assert!(got.contains("**"), "bold cells");
        }
    }
}
