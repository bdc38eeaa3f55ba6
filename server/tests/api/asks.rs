//! Ask and tell (#38) through the real server: an external sweep's trials are never a worker's, an
//! ask is a claim scoped to the sweep (a TPE trial drawn then), "nothing now" and "done" are told
//! apart, a tell records the value at the trial's last epoch and ends it, and the API states its
//! version. (The Python package's tests drive the same routes from outside: clients/python/tests.)
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

const EXTERNAL: &str = r#"
name = "mine"
[run]
external = true
[search]
method = "tpe"
trials = 3
startup_trials = 1
metric = "val_loss"
mode = "min"
[search.space]
x = { uniform = [0.0, 1.0] }
"#;

#[tokio::test]
async fn no_worker_claims_an_external_sweeps_trials_and_an_ask_takes_them_once() {
    let app = spawn_app().await;
    let sweep = app.submit(EXTERNAL).await.id;
    let commands = protocol::ClaimRequest {
        deadline: None,
        worker: "w".into(),
        capacity: None,
        accepts_commands: true,
        rendezvous: None,
    };
    assert!(app.claim("plain").await.is_none());
    assert!(app.claim_with(&commands).await.is_none());
    let (_, idle) = app.get("/api/jobs/unfinished").await;
    assert_eq!(
        idle,
        json!({"pending": 0, "running": 0}),
        "no idle worker waits for them"
    );
    let mut asked = vec![];
    for _ in 0..3 {
        let (status, trial) = app
            .post(&format!("/api/sweeps/{sweep}/ask"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{trial}");
        assert!(
            trial["params"]["x"].as_f64().is_some(),
            "drawn at the ask: {trial}"
        );
        asked.push(trial);
    }
    let ids: std::collections::BTreeSet<i64> =
        asked.iter().map(|t| t["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 3, "each trial once");
    let (status, _) = app
        .post(&format!("/api/sweeps/{sweep}/ask"), json!({}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "all out: nothing now");
    for (i, t) in asked.iter().enumerate() {
        let (job, attempt) = (t["id"].as_i64().unwrap(), t["attempt"].as_i64().unwrap());
        if i == 0 {
            let m =
                json!({"attempt": attempt, "epoch": 2, "extra": {"val_loss": 5.0, "other": 1.0}});
            let r = app
                .http
                .post(format!("{}/api/jobs/{job}/metrics", app.base))
                .bearer_auth(TOKEN)
                .header(
                    protocol::LEASE_SECRET_HEADER,
                    t["lease_secret"].as_str().unwrap(),
                )
                .json(&m)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
        let r = app
            .http
            .post(format!("{}/api/sweeps/{sweep}/tell", app.base))
            .bearer_auth(TOKEN)
            .header(
                protocol::LEASE_SECRET_HEADER,
                t["lease_secret"].as_str().unwrap(),
            )
            .json(&json!({"job_id": job, "attempt": attempt, "value": 0.5 + i as f64}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let first = app.job_detail(asked[0]["id"].as_i64().unwrap()).await;
    assert_eq!(first.metrics.len(), 1, "told at its last reported epoch");
    assert_eq!(
        (
            first.metrics[0].epoch,
            first.metrics[0].get("val_loss"),
            first.metrics[0].get("other")
        ),
        (2, Some(0.5), Some(1.0))
    );
    let second = app.job_detail(asked[1]["id"].as_i64().unwrap()).await;
    assert_eq!(
        (second.metrics[0].epoch, second.metrics[0].get("val_loss")),
        (1, Some(1.5))
    );
    let (status, body) = app
        .post(&format!("/api/sweeps/{sweep}/ask"), json!({}))
        .await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("done"), "{body}");
}

#[tokio::test]
async fn bad_asks_and_external_specs_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let (status, body) = app
        .submit_toml("name = \"x\"\n[run]\nexternal = true\n[command]\nargv = [\"x\"]\n")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"].as_str().unwrap().contains("run.external"),
        "{body}"
    );
    let sweep = app.submit(EXTERNAL).await.id;
    let (status, body) = app
        .post(
            &format!("/api/sweeps/{sweep}/ask"),
            json!({"lease_seconds": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"].as_str().unwrap().contains("lease_seconds"),
        "{body}"
    );
    let plain = app.submit(TWO_JOBS).await.id;
    let (status, body) = app
        .post(&format!("/api/sweeps/{plain}/ask"), json!({}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"].as_str().unwrap().contains("external"),
        "{body}"
    );
    // A long lease is not shortened by a heartbeat.
    let (_, trial) = app
        .post(
            &format!("/api/sweeps/{sweep}/ask"),
            json!({"lease_seconds": 3600}),
        )
        .await;
    let until = trial["lease_expires_at"].as_i64().unwrap();
    let r = app
        .http
        .post(format!("{}/api/jobs/{}/heartbeat", app.base, trial["id"]))
        .bearer_auth(TOKEN)
        .header(
            protocol::LEASE_SECRET_HEADER,
            trial["lease_secret"].as_str().unwrap(),
        )
        .json(&json!({"attempt": trial["attempt"]}))
        .send()
        .await
        .unwrap();
    let beat: serde_json::Value = r.json().await.unwrap();
    assert_eq!(beat["lease_expires_at"].as_i64().unwrap(), until, "{beat}");
}

#[tokio::test]
async fn the_api_states_its_version() {
    let app = spawn_app().await;
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()[protocol::API_VERSION_HEADER],
        protocol::API_VERSION
    );
    assert_eq!(r.text().await.unwrap(), "ok", "older workers read ok");
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["api_version"], protocol::API_VERSION);
    let (_, doc) = app.get("/api/openapi.json").await;
    assert_eq!(doc["info"]["version"], protocol::API_VERSION);
    assert!(doc["paths"]["/api/sweeps/{id}/ask"]["post"].is_object());
    assert!(doc["paths"]["/api/sweeps/{id}/tell"]["post"].is_object());
}
