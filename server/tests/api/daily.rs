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
