//! The daily loop from a terminal, as a newcomer meets it: cancel from the CLI (saying what it
//! stopped), a 401 that says where the token comes from, and JSON errors for every path.
use crate::helpers::*;
use reqwest::StatusCode;

/// `server` with these arguments against the test coordinator, `token` as SWEEP_TOKEN: success,
/// stdout and stderr. (A runtime of several threads: the command blocks one.)
fn cli(app: &TestApp, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_server"));
    cmd.args(args)
        .args(["--server", &app.base])
        .env_remove("SWEEP_TOKEN");
    if let Some(t) = token {
        cmd.env("SWEEP_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_cancel_says_what_it_ended_and_what_will_stop() {
    let app = spawn_app().await;
    let sweep = app.submit(TWO_JOBS).await.id;
    app.claim("w").await.unwrap();
    let (ok, out, err) = cli(&app, Some(TOKEN), &["cancel", &sweep.to_string()]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        format!("sweep {sweep} cancelled: 1 pending job(s) ended now, 1 running job(s) stop at their next heartbeat")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_names_where_the_token_comes_from() {
    let app = spawn_app().await;
    let sweep = app.submit(TWO_JOBS).await.id;
    let (ok, _, err) = cli(&app, None, &["cancel", &sweep.to_string()]);
    assert!(!ok);
    assert!(
        err.contains("401") && err.contains("SWEEP_TOKEN") && err.contains("<db>.token"),
        "{err}"
    );
}

#[tokio::test]
async fn a_path_that_names_nothing_is_a_json_404() {
    let app = spawn_app().await;
    for path in ["/api/nope", "/api/sweeps/1/nope", "/nope"] {
        let (s, v) = app.get(path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .starts_with("no such route: GET"),
            "{path}: {v}"
        );
    }
}

/// A raw submit, as curl sends one: this body, with this content type (or none).
async fn submit_raw(
    app: &TestApp,
    body: &str,
    ctype: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut req = app
        .http
        .post(format!("{}/api/sweeps", app.base))
        .bearer_auth(TOKEN)
        .body(body.to_string());
    if let Some(c) = ctype {
        req = req.header("content-type", c);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

/// The two usual curl slips: a TOML file sent as JSON (or with no content type), and a TOML file
/// whose line breaks `curl -d @file` stripped. Each a 400 that says what to send; nothing stored.
#[tokio::test]
async fn toml_sent_as_json_or_without_its_newlines_gets_a_hint() {
    let app = spawn_app().await;
    for ctype in [Some("application/json"), None] {
        let (s, v) = submit_raw(&app, TWO_JOBS, ctype).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let e = v["error"].as_str().unwrap();
        assert!(
            e.contains("looks like TOML") && e.contains("Content-Type: application/toml"),
            "{e}"
        );
    }
    let flat = "# the study's grid\nname = \"x\"\n[train]\nepochs = 2\n".replace('\n', "");
    let (s, v) = submit_raw(&app, &flat, Some("application/toml")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("no line breaks") && e.contains("--data-binary"),
        "{e}"
    );
    // JSON that is merely broken is not told it is TOML.
    let (s, v) = submit_raw(&app, "{\"name\": ", Some("application/json")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(!v["error"].as_str().unwrap().contains("TOML"), "{v}");
    let (_, sweeps) = app.get("/api/sweeps").await;
    assert_eq!(sweeps.as_array().unwrap().len(), 0, "nothing stored");
    // And the right request goes through.
    let (s, v) = submit_raw(&app, TWO_JOBS, Some("application/toml")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// `submit --dry-run` shows the jobs (the parameters that vary) and stores nothing; a file with
/// no `[grid]` and no `[search]` is said to be one job, on a dry run and on a real submit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_shows_the_jobs_and_stores_nothing() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("grid.toml");
    std::fs::write(
        &file,
        "name = \"bs x lr\"\n[train]\ndataset = \"synthetic\"\n[grid]\nbatch_size = [32, 64]\nlr = [0.01, 0.0001]\n",
    )
    .unwrap();
    let (ok, out, err) = cli(
        &app,
        Some(TOKEN),
        &["submit", file.to_str().unwrap(), "--dry-run"],
    );
    assert!(ok, "{err}");
    assert!(
        out.starts_with("bs x lr: 4 job(s); nothing was stored"),
        "{out}"
    );
    assert!(out.contains("batch_size=64 lr=0.0001"), "{out}");
    assert!(!out.contains("dataset="), "only what varies: {out}");
    let (_, sweeps) = app.get("/api/sweeps").await;
    assert_eq!(
        sweeps.as_array().unwrap().len(),
        0,
        "a dry run stores nothing"
    );

    let one = dir.path().join("one.toml");
    std::fs::write(&one, "name = \"one\"\n[train]\nepochs = 2\n").unwrap();
    let (ok, out, _) = cli(
        &app,
        Some(TOKEN),
        &["submit", one.to_str().unwrap(), "--dry-run"],
    );
    assert!(
        ok && out.contains("1 job(s)") && out.contains("warning: no [grid] and no [search]"),
        "{out}"
    );
    let (ok, out, err) = cli(&app, Some(TOKEN), &["submit", one.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        err.contains("warning: no [grid] and no [search]") && err.contains("50,000"),
        "{err}"
    );
    assert!(out.contains("server status 1 --watch"), "{out}");
}

/// `status SWEEP --watch` into a pipe: a frame each time the sweep changes, the parameters that
/// vary first on each job's line, and it ends once the sweep has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_follows_a_sweep_to_its_end() {
    use std::io::BufRead;
    let app = spawn_app().await;
    let sweep = app.submit(TWO_JOBS).await.id;
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["status", &sweep.to_string(), "--watch", "--every", "0.2"])
        .args(["--server", &app.base])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = watch.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    // The first frame (all pending) is out before anything changes.
    let first = rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
    assert!(first.starts_with(&format!("sweep {sweep} two")), "{first}");
    for _ in 0..2 {
        let c = app.claim("w").await.unwrap();
        app.finish(c.id, c.attempt, protocol::Outcome::Completed)
            .await;
    }
    let status = tokio::task::spawn_blocking(move || watch.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "it ends once the sweep has");
    reader.join().unwrap();
    let text = std::iter::once(first)
        .chain(rx.try_iter())
        .collect::<Vec<_>>()
        .join("\n");
    let frames: Vec<&str> = text
        .split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .collect();
    assert!(frames.len() >= 2, "a frame per change: {text}");
    let last = frames.last().unwrap();
    let done = protocol::SweepStatus::Finished.as_str();
    let completed = protocol::JobStatus::Completed.as_str();
    assert!(
        last.contains(&format!("({done})")) && last.contains(&format!("2 {completed}")),
        "{last}"
    );
    assert!(
        last.contains("every job: dataset=synthetic epochs=2"),
        "{last}"
    );
    let job_line = last
        .lines()
        .find(|l| l.trim_start().starts_with("job"))
        .unwrap();
    let (lr, state) = (
        job_line.find("lr=").unwrap(),
        job_line.find(completed).unwrap(),
    );
    assert!(lr < state, "the varying parameter comes first: {job_line}");
}

/// Every error is JSON, those axum writes included (405); the API explorer at /docs is served
/// with its script from the binary (its rendering: the browser test).
#[tokio::test]
async fn a_wrong_method_is_json_and_docs_are_served() {
    let app = spawn_app().await;
    let r = app
        .http
        .get(format!("{}/api/sweeps/1/cancel", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("GET /api/sweeps/1/cancel"),
        "{v}"
    );
    let page = app
        .http
        .get(format!("{}/docs", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("spec-url=\"/api/openapi.json\""));
    // reqwest without its gzip feature asks for no encoding: the plain script.
    let js = app
        .http
        .get(format!("{}/docs/rapidoc-min.js", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), StatusCode::OK);
    assert!(js.headers().get("content-encoding").is_none());
    assert!(js.text().await.unwrap().starts_with("/*! RapiDoc"));
    let gz = app
        .http
        .get(format!("{}/docs/rapidoc-min.js", app.base))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
}
