use crate::helpers::*;
use reqwest::StatusCode;

/// Each bad spec is rejected whole with the field named, and nothing is stored.
#[tokio::test]
async fn bad_specs_are_rejected_with_the_field_named() {
    let app = spawn_app().await;
    let cases: &[(&str, &str, u16, &str)] = &[
        ("toml", "name = \"x\"\n[train]\nepochz = 3\n", 422, "train.epochz"),
        ("toml", "name = \"x\"\ncolour = \"red\"\n", 422, "colour"),
        ("toml", "name = \"x\"\n[train]\nepochs = \"many\"\n", 422, "train.epochs"),
        ("toml", "name = \"x\"\n[train]\nepochs = 0\n", 422, "train.epochs"),
        ("toml", "name = \"x\"\n[grid]\nbatch_size = [32, 0]\n", 422, "grid.batch_size[1]"),
        ("toml", "name = \"x\"\n[grid]\nbatch_size = []\n", 422, "grid.batch_size"),
        ("toml", "name = \"x\"\n[grid]\nlr = [0.1, 0.1]\n", 422, "grid.lr[1]"),
        ("toml", "name = \"x\"\n[grid]\nlr = [0.1, -0.1]\n", 422, "grid.lr[1]"),
        ("toml", "name = \"x\"\n[grid]\nlr = [0.1, nan]\n", 422, "grid.lr[1]"),
        ("toml", "name = \"x\"\n[grid]\nlr = [0.1, inf]\n", 422, "grid.lr[1]"),
        ("toml", "name = \"x\"\n[grid]\nlr = 0.1\n", 422, "grid.lr"),
        ("toml", "name = \"x\"\n[train]\nlr = 0.1\n[grid]\nlr = [0.2]\n", 422, "grid.lr"),
        ("toml", "name = \"x\"\n[train]\nmilestones = [60, 60]\n", 422, "train.milestones"),
        ("toml", "name = \"x\"\n[train]\nmodel_widths = [8, 16]\n", 422, "train.model_widths"),
        ("toml", "name = \"x\"\n[train]\nschedule = [{ epoch = 3, batch_size = 8 }]\n", 422, "train.schedule"),
        ("toml", "name = \"x\"\n[train]\nschedule = [{ epoch = 3, lr = 0.1 }, { epoch = 2, lr = 0.2 }]\n", 422, "train.schedule"),
        ("toml", "name = \"x\"\n[train]\ndataset = \"mnist\"\n", 422, "train.dataset"),
        ("toml", "name = \"x\"\n[run]\nmax_attempts = 0\n", 422, "run.max_attempts"),
        ("toml", "name = \"x\"\n[run]\nretries = 2\n", 422, "run.retries"),
        ("toml", "[train]\nepochs = 1\n", 422, "name"),
        ("toml", &format!("name = \"{}\"\n", "n".repeat(101)), 422, "name"),
        (
            "toml",
            "name = \"x\"\n[grid]\nseed = [1,2,3,4,5,6,7,8,9,10]\nbatch_size = [1,2,3,4,5,6,7,8,9,10]\nepochs = [1,2,3,4,5,6,7,8,9,10]\nlimit_train = [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101]\n",
            422,
            "grid",
        ),
        ("toml", "name = \"x\"\n[train\n", 400, "TOML"),
        ("json", "{\"name\": \"x\", \"train\": {\"lr\": \"fast\"}}", 422, "train.lr"),
        ("json", "{\"name\": ", 400, "JSON"),
        ("json", "[1, 2]", 422, "(root)"),
    ];
    for (format, body, want, field) in cases {
        let ctype = if *format == "toml" {
            "application/toml"
        } else {
            "application/json"
        };
        let r = app
            .http
            .post(format!("{}/api/sweeps", app.base))
            .bearer_auth(TOKEN)
            .header("content-type", ctype)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let msg = r.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!(status, *want, "{body:?} -> {msg}");
        assert!(
            msg.contains(field),
            "{body:?}: error {msg:?} does not name {field}"
        );
    }
    // Bodies over 1 MiB, just over and far over (past axum's own 2 MB default limit).
    for size in [1 << 20, 3 << 20] {
        let big = format!("name = \"x\"\n# {}\n", "x".repeat(size));
        let (status, body) = app.submit_toml(&big).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            body["error"].as_str().unwrap().starts_with("body:"),
            "{body}"
        );
    }
    let (_, list) = app.get("/api/sweeps").await;
    assert_eq!(list.as_array().unwrap().len(), 0, "nothing stored");
    assert!(app.claim("w").await.is_none());
}

/// A `schedule` (the optimiser's settings from set epochs on) reaches the job's params as
/// written, for `worker train --schedule`.
#[tokio::test]
async fn a_schedule_in_train_reaches_the_jobs_params() {
    let app = spawn_app().await;
    let (status, body) = app
        .submit_toml(
            "name = \"replay\"\n[train]\nepochs = 9\nlr = 0.01\nschedule = [{ epoch = 4, lr = 0.012, momentum = 0.85 }]\n",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let job = app.claim("w").await.expect("the job");
    assert_eq!(
        job.params["schedule"],
        serde_json::json!([{"epoch": 4, "lr": 0.012, "momentum": 0.85}])
    );
}

#[tokio::test]
async fn the_repository_sweep_files_are_valid() {
    let app = spawn_app().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sweeps");
    let study = std::fs::read_to_string(dir.join("cifar10-bs-lr.toml")).unwrap();
    let (s, c) = app.submit_toml(&study).await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    assert_eq!(c["jobs"], 18, "the study's 18 runs");
    let (_, sw) = app.get(&format!("/api/sweeps/{}", c["id"])).await;
    for j in sw["jobs"].as_array().unwrap() {
        assert_eq!(j["params"]["epochs"], 300);
        assert_eq!(j["params"]["nproc_per_node"], 2);
        assert_eq!(j["params"]["gamma"], 0.1, "the study's step factor");
    }
    let later = std::fs::read_to_string(dir.join("cifar10-bs-lr-gamma05.toml")).unwrap();
    let (s, c) = app.submit_toml(&later).await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    assert_eq!(c["jobs"], 18);
    let (_, sw) = app.get(&format!("/api/sweeps/{}", c["id"])).await;
    assert!(sw["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["params"]["gamma"] == 0.5));
    let demo = std::fs::read_to_string(dir.join("demo-cpu.toml")).unwrap();
    let (s, c) = app.submit_toml(&demo).await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    // Every other file in sweeps/ is a valid sweep too.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (s, c) = app
                .submit_toml(&std::fs::read_to_string(&path).unwrap())
                .await;
            assert_eq!(s, StatusCode::CREATED, "{}: {c}", path.display());
        }
    }
    let asha = std::fs::read_to_string(dir.join("cifar10-lr-asha.toml")).unwrap();
    let (_, c) = app.submit_toml(&asha).await;
    let (_, sw) = app.get(&format!("/api/sweeps/{}", c["id"])).await;
    assert_eq!(sw["spec"]["early_stop"]["method"], "asha");
    assert_eq!(sw["total"], 27);
}

/// Every sweep file the project ships parses, and expands to the jobs its comments promise for the
/// divergence-boundary sweep (equal steps at every batch size: limit_train = 2 ranks x batch x 60).
#[test]
fn every_shipped_sweep_file_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sweeps");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let spec = server::sweep::SweepSpec::from_toml(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
        if spec.name == "cpu-divergence-boundary" {
            let jobs = spec.expand();
            assert_eq!(jobs.len(), 16);
            for p in &jobs {
                let (batch, limit) = (
                    p["batch_size"].as_i64().unwrap(),
                    p["limit_train"].as_i64().unwrap(),
                );
                assert_eq!(limit, 2 * batch * 60, "{p:?}");
            }
        }
    }
    assert!(seen >= 8, "{seen} sweep files");
}

/// A job `worker train` would refuse (its options together, not one by one) is refused at submit.
#[tokio::test]
async fn a_combination_the_trainer_refuses_is_refused_at_submit() {
    let app = spawn_app().await;
    let (status, body) = app
        .submit_toml("name = \"x\"\n[train]\nmodel_heads = 3\n[grid]\nlr = [0.1]\n")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("train.model_heads"),
        "{body}"
    );
    let (status, body) = app
        .submit_toml("name = \"x\"\n[train]\nbf16 = true\n[grid]\nfp64 = [false, true]\n")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("grid"),
        "{body}"
    );
}
