use crate::helpers::*;
use std::ffi::{OsStr, OsString};
use std::path::Path;

use server::results::study::{StudyResult, FIRST_README};

/// The study's 12 cells as one sweep: the union of two grids (batch 1, 4, 8 at both lrs; 16..512 at
/// lr 1e-2).
const STUDY_CELLS: &str = r#"
name = "golden"
[train]
dataset = "synthetic"
epochs = 2
[[grid]]
batch_size = [1, 4, 8]
lr = [1e-2, 1e-4]
[[grid]]
batch_size = [16, 32, 64, 128, 256, 512]
lr = [1e-2]
"#;

/// Claims every job of the sweep and reports, through the worker protocol, what the study printed
/// for its cell: two epochs and `completed` for a final result; an epoch with a NaN loss (JSON null)
/// and the diverged weights' accuracy, then `diverged`, for a diverged one; nothing for a row the
/// study left empty (the job stays claimed and silent).
pub(crate) async fn golden_sweep(app: &TestApp) -> i64 {
    let created = app.submit(STUDY_CELLS).await;
    assert_eq!(created.jobs, 12);
    while let Some(claim) = app.claim("w").await {
        let id = claim.id;
        let (bs, lr) = (
            claim.params["batch_size"].as_i64().unwrap(),
            claim.params["lr"].as_f64().unwrap(),
        );
        let row = FIRST_README
            .iter()
            .find(|r| r.batch_size == bs && r.lr == lr)
            .unwrap();
        match row.result {
            StudyResult::Final { loss, accuracy } => {
                app.metrics(id, 1, 1, Some(loss + 0.5), accuracy / 200.0)
                    .await;
                app.metrics(id, 1, 2, Some(loss), accuracy / 100.0).await;
                app.finish(id, 1, Outcome::Completed).await;
            }
            StudyResult::Diverged { accuracy } => {
                app.metrics(id, 1, 1, None, accuracy / 100.0).await;
                app.finish(id, 1, Outcome::Diverged).await;
            }
            StudyResult::Empty => {}
        }
    }
    created.id
}

#[tokio::test]
async fn the_study_results_come_back_as_the_study_table() {
    let app = spawn_app().await;
    let sweep = golden_sweep(&app).await;
    let md = app
        .get_text(&format!("/api/sweeps/{sweep}/results?format=markdown"))
        .await;
    assert_eq!(md, include_str!("../golden/results.md"));
    // The golden file is the specification's own table, verbatim.
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/SEED.md");
    if let Ok(text) = std::fs::read_to_string(&seed) {
        assert!(
            text.contains(md.trim_end()),
            "SEED.md's table differs:\n{md}"
        );
    }
    let zh = app
        .get_text(&format!("/api/sweeps/{sweep}/results?chinese=true"))
        .await;
    assert_eq!(zh, include_str!("../golden/results-zh.md"));
    let extra = app
        .get_text(&format!("/api/sweeps/{sweep}/results?extra=true"))
        .await;
    assert!(extra.starts_with("| batch_size | initial lr | final loss | final accuracy (%) | precision (%) | recall (%) | F1 (%) | status | epochs | wall time |"), "{extra}");
    assert!(
        extra.contains(
            "| 16 | 1e-2 | **0.200** | **94.52** | 94.52 | 94.52 | 94.52 | completed | 2/2 |"
        ),
        "{extra}"
    );
    assert!(
        extra.contains("| 4 | 1e-4 | | | | | | running | 0/2 | |"),
        "{extra}"
    );

    let csv = app
        .get_text(&format!("/api/sweeps/{sweep}/results?format=csv"))
        .await;
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    for col in [
        "job_id",
        "status",
        "lr",
        "batch_size",
        "test_loss",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "epoch",
        "wall_seconds",
    ] {
        assert!(
            header.split(',').any(|c| c == col),
            "{col} missing from {header}"
        );
    }
    assert_eq!(lines.count(), 12);
    let (_, json) = app
        .get(&format!("/api/sweeps/{sweep}/results?format=json"))
        .await;
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 12);
    assert_eq!(rows[0]["status"], JobStatus::Diverged.as_str());
    assert!(rows[0]["test_loss"].is_null());
    assert_eq!(
        rows[0]["accuracy"], 0.1,
        "the diverged weights' accuracy is kept"
    );
    let (s, _) = app
        .get(&format!("/api/sweeps/{sweep}/results?format=xlsx"))
        .await;
    assert_eq!(s.as_u16(), 422);
}

#[tokio::test]
async fn a_running_job_shows_its_latest_epoch_marked() {
    let app = spawn_app().await;
    let sweep = app
        .submit("name = \"r\"\n[train]\nepochs = 2\n[grid]\nbatch_size = [16, 32]\n")
        .await
        .id;
    let first = app.claim("w").await.unwrap();
    let id = first.id;
    app.metrics(id, 1, 1, Some(0.7), 0.75).await;
    let md = app.get_text(&format!("/api/sweeps/{sweep}/results")).await;
    assert!(
        md.contains("| 16 | 1e-2 | 0.700† | 75.00† (epoch 1/2) |"),
        "{md}"
    );
    assert!(md.contains("| 32 | 1e-2 | | |"), "{md}");
    assert!(
        md.ends_with("\n† unfinished: the latest recorded epoch's values.\n"),
        "{md}"
    );
}

/// Our results beside the study's, for a sweep whose numbers differ from the study's by known amounts.
#[tokio::test]
async fn the_comparison_puts_each_cell_beside_the_study_with_the_difference() {
    let app = spawn_app().await;
    let sweep = app.submit("name = \"cmp\"\n[train]\nepochs = 1\n[grid]\nbatch_size = [1, 2, 16, 32]\nlr = [1e-2]\n",).await.id;
    while let Some(claim) = app.claim("w").await {
        let id = claim.id;
        match claim.params["batch_size"].as_i64().unwrap() {
            1 => {
                app.metrics(id, 1, 1, None, 0.1).await;
                app.finish(id, 1, Outcome::Diverged).await;
            }
            2 => {
                app.metrics(id, 1, 1, Some(0.5), 0.9).await;
                app.finish(id, 1, Outcome::Completed).await;
            }
            16 => {
                app.metrics(id, 1, 1, Some(0.21), 0.95).await; // study 94.52
                app.finish(id, 1, Outcome::Completed).await;
            }
            _ => {
                app.metrics(id, 1, 1, Some(0.3), 0.9304).await; // study 94.04
                app.finish(id, 1, Outcome::Completed).await;
            }
        }
    }
    let md = app
        .get_text(&format!("/api/sweeps/{sweep}/results?compare=true"))
        .await;
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(
        rows[0],
        "| batch_size | initial lr | study: final loss | study: final accuracy (%) | ours: diverged | ours: final loss | ours: final accuracy (%) | difference (points) |"
    );
    for want in [
        "| 1 | 1e-2 | NaN | 10.00 | 1/1 NaN | NaN | 10.00 | +0.00 |",
        "| 1 | 1e-4 | 0.332 | 89.53 | | | | |",
        "| 2 | 1e-2 | | | 0/1 | 0.500 | 90.00 | |",
        "| 4 | 1e-4 | | | | | | |",
        "| 16 | 1e-2 | 0.200 | 94.52 | 0/1 | 0.210 | 95.00 | +0.48 |",
        "| 32 | 1e-2 | 0.234 | 94.04 | 0/1 | 0.300 | 93.04 | -1.00 |",
        "| 512 | 1e-2 | 0.423 | 85.74 | | | | |",
    ] {
        assert!(rows.contains(&want), "missing {want:?} in\n{md}");
    }
    // The study's 12 cells plus our batch 2: batch ascending, then lr descending.
    assert_eq!(rows.len(), 1 + 13, "{md}");
    let order: Vec<String> = rows[1..]
        .iter()
        .map(|r| r.split(" | ").take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(order[..4], ["| 1 1e-2", "| 1 1e-4", "| 2 1e-2", "| 4 1e-2"]);

    // The same through the command line.
    let args = [
        "export",
        &sweep.to_string(),
        "--compare",
        "--server",
        &app.base,
    ];
    let out = run_cli(args.iter().map(OsString::from).collect()).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), md);
}

/// The provenance line says which data the runs used, from the trainer's `summary.json`.
#[tokio::test]
async fn provenance_names_the_data_the_runs_used() {
    let app = spawn_app().await;
    let sweep = app
        .submit("name = \"p\"\n[train]\nepochs = 1\n[grid]\nbatch_size = [8, 16, 32]\n")
        .await
        .id;
    for (avail, used) in [
        ((5000, 1000), (2000, 1000)),
        ((50000, 10000), (50000, 10000)),
        ((5000, 1000), (3000, 1000)),
    ] {
        let claim = app.claim("w").await.unwrap();
        let id = claim.id;
        app.metrics(id, 1, 1, Some(1.0), 0.5).await;
        let done = FinishRequest {
            node_rank: None,
            attempt: 1,
            status: Outcome::Completed,
            summary: Some(serde_json::json!({"device": "Cpu", "git_commit": "abc",
                "data": {"dataset": "cifar10", "train_available": avail.0, "test_available": avail.1,
                         "train_used": used.0, "test_used": used.1}})),
            error: None,
        };
        let (s, _) = app.send(&routes::finish(id), &done).await;
        assert_eq!(s, 200);
    }
    let line = provenance_of(&app, sweep).await;
    assert!(
        line.contains("the CIFAR-10 mini set (5,000 training / 1,000 test images, ../shared/data/cifar10-mini), not the full CIFAR-10, of which 2,000 to 3,000 / 1,000 used"),
        "{line}"
    );
    assert!(
        line.contains("the full CIFAR-10 (50,000 training / 10,000 test images)"),
        "{line}"
    );
}

#[tokio::test]
async fn the_readme_block_is_rewritten_in_place_and_idempotently() {
    let app = spawn_app().await;
    let sweep = golden_sweep(&app).await;
    let dir = tempfile::tempdir().unwrap();
    let readme = dir.path().join("README.md");
    std::fs::write(
        &readme,
        "# Title\n\nbefore\n\n<!-- results:begin -->\nold table\n<!-- results:end -->\n\nafter\n",
    )
    .unwrap();
    let args = |sweep: i64| readme_cli("export", sweep, &app, &readme, &[]);
    server_cli(args(sweep)).await;
    let once = std::fs::read_to_string(&readme).unwrap();
    server_cli(args(sweep)).await;
    let twice = std::fs::read_to_string(&readme).unwrap();
    assert_eq!(once, twice, "idempotent");
    assert!(once.starts_with("# Title\n\nbefore\n\n<!-- results:begin -->\n"));
    assert!(once.ends_with("<!-- results:end -->\n\nafter\n"));
    assert!(!once.contains("old table"));
    assert!(once.contains(include_str!("../golden/results.md").trim_end()));
    assert!(once.contains("Data: "), "{once}");
    // Over two parameters: which of them mattered, under the table.
    assert!(
        once.contains("| parameter | importance | the best job's value |")
            && once.contains("PED-ANOVA over 7 completed job(s)"),
        "{once}"
    );
    assert!(
        once.contains("Sweep `golden`")
            && once.contains("device Cpu")
            && once.contains("commit abc123"),
        "{once}"
    );
    assert!(server::results::export::rewrite_block("no markers", None, "x").is_err());
    assert!(server::results::export::rewrite_block(
        "<!-- results:begin -->\n<!-- results:end -->",
        Some("other"),
        "x"
    )
    .is_err());
}

#[tokio::test]
async fn publish_refreshes_the_readme_block_and_the_five_figures_in_one_command() {
    let app = spawn_app().await;
    let sweep = golden_sweep(&app).await;
    let dir = tempfile::tempdir().unwrap();
    let readme = dir.path().join("README.md");
    std::fs::write(
        &readme,
        "x\n<!-- results:begin -->\nold\n<!-- results:end -->\n",
    )
    .unwrap();
    let images = dir.path().join("images");
    server_cli(readme_cli(
        "publish",
        sweep,
        &app,
        &readme,
        &["--images".as_ref(), images.as_os_str()],
    ))
    .await;
    let text = std::fs::read_to_string(&readme).unwrap();
    // publish writes the comparison: the study's 12 results beside themselves differ by nothing.
    assert!(
        text.contains("| 16 | 1e-2 | 0.200 | 94.52 | 0/1 | 0.200 | 94.52 | +0.00 |"),
        "{text}"
    );
    assert!(text.contains("| 4 | 1e-4 | | | | | | |"), "{text}");
    for name in server::results::figures::NAMES {
        let png = std::fs::read(images.join(format!("{name}.png"))).unwrap();
        assert_eq!(&png[1..4], b"PNG", "{name}");
    }
}

/// Several seeds per cell, as the divergence-boundary sweep runs them: the comparison counts the
/// diverged ones beside the study's NaN or accuracy, and averages loss and accuracy over the seeds
/// that did not diverge (over all of them, the diverged weights' accuracy, when every one did).
#[tokio::test]
async fn the_comparison_counts_diverged_seeds_per_cell() {
    let app = spawn_app().await;
    let sweep = app
        .submit("name = \"seeds\"\n[train]\nepochs = 3\n[grid]\nbatch_size = [1, 8, 16]\nlr = [1e-2]\nseed = [0, 1, 2]\n")
        .await
        .id;
    while let Some(claim) = app.claim("w").await {
        let id = claim.id;
        let batch = claim.params["batch_size"].as_i64().unwrap();
        let seed = claim.params["seed"].as_i64().unwrap() as f64;
        // Batch 1 diverges with every seed, batch 8 with seeds 0 and 1, batch 16 with none.
        if batch == 1 || (batch == 8 && seed < 2.0) {
            app.metrics(id, 1, 2, None, 0.1).await;
            app.finish(id, 1, Outcome::Diverged).await;
        } else {
            app.metrics(id, 1, 3, Some(1.5 + 0.1 * seed), 0.30 + 0.02 * seed)
                .await;
            app.finish(id, 1, Outcome::Completed).await;
        }
    }
    let md = app
        .get_text(&format!("/api/sweeps/{sweep}/results?compare=true"))
        .await;
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
    for want in [
        // All diverged, as the study's: NaN beside the diverged weights' mean accuracy.
        "| 1 | 1e-2 | NaN | 10.00 | 3/3 NaN | NaN | 10.00 (mean of 3) | +0.00 |",
        // Some diverged where the study's diverged: the seed that trained, no difference.
        "| 8 | 1e-2 | NaN | 10.00 | 2/3 NaN | 1.700 | 34.00 | |",
        // None diverged: the mean of three.
        "| 16 | 1e-2 | 0.200 | 94.52 | 0/3 | 1.600 | 32.00 (mean of 3) | -62.52 |",
    ] {
        assert!(rows.contains(&want), "missing {want:?} in\n{md}");
    }
    assert!(md.contains("A cell with several runs"), "{md}");
    // The provenance says a 3-epoch sweep is not the study's 300.
    let line = provenance_of(&app, sweep).await;
    assert!(
        line.contains("A short schedule: 3 epochs at most against the study's 300"),
        "{line}"
    );
}

/// Two sweeps in one README: `publish --block NAME` rewrites its own block and figures, and leaves
/// the unnamed block (and a wrong name) alone.
#[tokio::test]
async fn publish_into_a_named_block_leaves_the_other_block_alone() {
    let app = spawn_app().await;
    let sweep = golden_sweep(&app).await;
    let dir = tempfile::tempdir().unwrap();
    let readme = dir.path().join("README.md");
    let before = "a\n<!-- results:begin -->\ndemo table\n<!-- results:end -->\nb\n\
                  <!-- results:divergence:begin -->\nSTALE\n<!-- results:divergence:end -->\nc\n";
    std::fs::write(&readme, before).unwrap();
    let images = dir.path().join("figures");
    let publish = |block: &str| {
        let rest = [
            "--block".as_ref(),
            block.as_ref(),
            "--images".as_ref(),
            images.as_os_str(),
        ];
        readme_cli("publish", sweep, &app, &readme, &rest)
    };
    server_cli(publish("divergence")).await;
    let text = std::fs::read_to_string(&readme).unwrap();
    assert!(
        text.starts_with("a\n<!-- results:begin -->\ndemo table\n<!-- results:end -->\nb\n<!-- results:divergence:begin -->\nSweep `golden`"),
        "{text}"
    );
    assert!(text.ends_with("<!-- results:divergence:end -->\nc\n") && !text.contains("STALE"));
    assert!(images.join("batch_and_acc.png").exists());
    // A name that is not a block, or not a name: an error, and the file as it was.
    for bad in ["gone", "Bad Name"] {
        let out = run_cli(publish(bad)).await;
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("results:gone:begin") || err.contains("block name"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&readme).unwrap(), text);
    }
}

/// The provenance line of a sweep as the API serves it.
async fn provenance_of(app: &TestApp, sweep: i64) -> String {
    let (_, detail) = app.get(&format!("/api/sweeps/{sweep}")).await;
    let detail: protocol::views::SweepDetail = serde_json::from_value(detail).unwrap();
    server::results::export::provenance(&detail)
}

/// `server COMMAND SWEEP --server BASE --readme README`, then `rest`.
fn readme_cli(
    command: &str,
    sweep: i64,
    app: &TestApp,
    readme: &Path,
    rest: &[&OsStr],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        command.into(),
        sweep.to_string().into(),
        "--server".into(),
        app.base.clone().into(),
        "--readme".into(),
        readme.into(),
    ];
    args.extend(rest.iter().map(|a| a.to_os_string()));
    args
}

/// Runs the `server` binary's command line off the async runtime (the server under test answers
/// it on this test's runtime).
async fn run_cli(args: Vec<OsString>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_server"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// [`run_cli`], insisting it succeeds.
async fn server_cli(args: Vec<OsString>) {
    let out = run_cli(args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Exports are written a page of rows at a time: a sweep of several pages, with every kind of row
/// (completed, diverged, pending, running, errors with formula characters, a program's own metrics
/// that clash with a parameter's name), exports exactly as the whole sweep rendered in memory, and
/// the CSV's columns, planned from names alone, are those the JSON rows have, in order.
#[tokio::test]
async fn paged_exports_equal_the_whole_sweep_rendered_at_once() {
    use serde_json::Value;
    use server::results::export::{Format, TableOptions};
    let app = spawn_app().await;
    let seeds: Vec<String> = (1..=330).map(|s| s.to_string()).collect();
    let id = app
        .submit(&format!(
            "name = \"pages\"\n[train]\ndataset = \"synthetic\"\nepochs = 3\n[grid]\nbatch_size = [8, 16, 32, 64]\nlr = [0.01, 0.001]\nseed = [{}]\n",
            seeds.join(", ")
        ))
        .await
        .id;
    let whole = synthetic_sweep(
        &app,
        id,
        3,
        &[
            "UPDATE jobs SET status = 'diverged' WHERE id % 97 = 0",
            "UPDATE jobs SET status = 'running' WHERE id % 89 = 0",
            "UPDATE jobs SET status = 'pending', error = '=cmd|x, \"quoted\"' WHERE id % 83 = 0",
            "UPDATE metrics SET extra = '{\"seed\": 1.5, \"val/bleu\": 0.25}' WHERE job_id % 7 = 0 AND epoch = 3",
            "UPDATE metrics SET accuracy = 0.9 WHERE job_id % 11 = 0",
        ],
    )
    .await;
    let cases = [
        ("format=markdown", Format::Markdown, TableOptions::default()),
        (
            "format=markdown&extra=true&chinese=true",
            Format::Markdown,
            TableOptions {
                extra: true,
                chinese: true,
                compare: false,
            },
        ),
        (
            "compare=true",
            Format::Markdown,
            TableOptions {
                compare: true,
                ..Default::default()
            },
        ),
        ("format=csv", Format::Csv, TableOptions::default()),
        ("format=json", Format::Json, TableOptions::default()),
    ];
    paged_exports_equal_the_whole(&app, &whole, cases.into()).await;
    let json: Vec<serde_json::Map<String, Value>> = serde_json::from_str(
        &app.get_text(&format!("/api/sweeps/{id}/results?format=json"))
            .await,
    )
    .unwrap();
    let mut columns: Vec<String> = vec![];
    for r in &json {
        for k in r.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    assert!(columns.contains(&"seed_last".to_string()), "{columns:?}");
    let csv = app
        .get_text(&format!("/api/sweeps/{id}/results?format=csv"))
        .await;
    assert_eq!(csv.lines().next().unwrap(), columns.join(","));
    assert_eq!(csv.lines().count(), json.len() + 1);
}
