use crate::helpers::*;

const GRID: &str = r#"
name = "golden"
[train]
dataset = "synthetic"
epochs = 2
[grid]
batch_size = [1, 16, 32]
lr = [1e-2, 1e-4]
"#;

/// Drives the six jobs to the study's kind of outcomes: one diverged, four completed, one running.
pub async fn golden_sweep(app: &TestApp) -> i64 {
    let (_, c) = app.submit_toml(GRID).await;
    let outcomes = [
        // (batch, lr) -> final (loss, acc) and status
        ((1, 1e-2), None, 0.10, "diverged"),
        ((16, 1e-2), Some(0.2), 0.9452, "completed"),
        ((32, 1e-2), Some(0.242), 0.9429, "completed"),
        ((1, 1e-4), Some(0.332), 0.8953, "completed"),
        ((16, 1e-4), Some(0.466), 0.8462, "completed"),
        ((32, 1e-4), Some(0.7), 0.75, "running"),
    ];
    while let Some(claim) = app.claim("w").await {
        let id = claim["id"].as_i64().unwrap();
        let key = (
            claim["params"]["batch_size"].as_i64().unwrap(),
            claim["params"]["lr"].as_f64().unwrap(),
        );
        let (_, loss, acc, status) = outcomes.iter().find(|o| o.0 == key).unwrap();
        if *status == "running" {
            app.metrics(id, 1, 1, *loss, *acc).await;
            continue;
        }
        app.metrics(id, 1, 1, loss.map(|l| l + 0.5), acc / 2.0)
            .await;
        app.metrics(id, 1, 2, *loss, *acc).await;
        app.finish(id, 1, status).await;
    }
    c["id"].as_i64().unwrap()
}

#[tokio::test]
async fn markdown_results_match_the_study_format() {
    let app = spawn_app().await;
    let sweep = golden_sweep(&app).await;
    let md = app
        .get_text(&format!("/api/sweeps/{sweep}/results?format=markdown"))
        .await;
    assert_eq!(md, include_str!("../golden/results.md"));
    let zh = app
        .get_text(&format!("/api/sweeps/{sweep}/results?chinese=true"))
        .await;
    assert_eq!(zh, include_str!("../golden/results-zh.md"));
    let extra = app
        .get_text(&format!("/api/sweeps/{sweep}/results?extra=true"))
        .await;
    assert!(extra.starts_with("| initial lr | batch_size | final loss | final accuracy (%) | precision (%) | recall (%) | F1 (%) | epochs | wall time |"), "{extra}");
    assert!(
        extra.contains("| 1e-2 | 16 | **0.200** | **94.52** | 94.52 | 94.52 | 94.52 | 2/2 |"),
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
    assert_eq!(lines.count(), 6);
    let (_, json) = app
        .get(&format!("/api/sweeps/{sweep}/results?format=json"))
        .await;
    assert_eq!(json.as_array().unwrap().len(), 6);
    assert_eq!(json[0]["status"], "diverged");
    assert!(json[0]["test_loss"].is_null());
    let (s, _) = app
        .get(&format!("/api/sweeps/{sweep}/results?format=xlsx"))
        .await;
    assert_eq!(s.as_u16(), 422);
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
    let args = |sweep: i64| {
        let s = sweep.to_string();
        vec![
            "export".into(),
            s.into(),
            "--server".into(),
            app.base.clone().into(),
            "--readme".into(),
            readme.clone().into_os_string(),
        ]
    };
    server_cli(args(sweep)).await;
    let once = std::fs::read_to_string(&readme).unwrap();
    server_cli(args(sweep)).await;
    let twice = std::fs::read_to_string(&readme).unwrap();
    assert_eq!(once, twice, "idempotent");
    assert!(once.starts_with("# Title\n\nbefore\n\n<!-- results:begin -->\n"));
    assert!(once.ends_with("<!-- results:end -->\n\nafter\n"));
    assert!(!once.contains("old table"));
    assert!(once.contains(include_str!("../golden/results.md").trim_end()));
    assert!(
        once.contains("Sweep `golden`")
            && once.contains("device Cpu")
            && once.contains("commit abc123"),
        "{once}"
    );
    assert!(server::export::rewrite_block("no markers", "x").is_err());
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
    server_cli(vec![
        "publish".into(),
        sweep.to_string().into(),
        "--server".into(),
        app.base.clone().into(),
        "--readme".into(),
        readme.clone().into_os_string(),
        "--images".into(),
        images.clone().into_os_string(),
    ])
    .await;
    let text = std::fs::read_to_string(&readme).unwrap();
    assert!(text.contains(include_str!("../golden/results.md").trim_end()));
    for name in server::figures::NAMES {
        let png = std::fs::read(images.join(format!("{name}.png"))).unwrap();
        assert_eq!(&png[1..4], b"PNG", "{name}");
    }
}

/// Runs the `server` binary's command line (off the async runtime) and insists it succeeds.
async fn server_cli(args: Vec<std::ffi::OsString>) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_server"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
