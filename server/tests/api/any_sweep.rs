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
async fn command_sweep(app: &TestApp) -> i64 {
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
