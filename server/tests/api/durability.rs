use protocol::JobStatus;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};

/// A coordinator process, killed when dropped: a failing assertion leaves none running.
struct Served(Child);

impl std::ops::Deref for Served {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real `server` binary on a random port; returns it and its base URL.
fn start(db: &std::path::Path) -> (Served, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--token", "t", "--db"])
        .arg(db)
        .stderr(Stdio::null());
    let (child, base) = protocol::listening::start_coordinator(cmd).unwrap();
    (Served(child), base)
}

/// A POST with the admin token and, for a job's write, its claim's lease secret.
async fn post(
    http: &reqwest::Client,
    url: String,
    secret: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = http.post(url);
    if let Some(secret) = secret {
        req = req.header(protocol::LEASE_SECRET_HEADER, secret);
    }
    let r = req.bearer_auth("t").json(&body).send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn claim_one(http: &reqwest::Client, base: &str) -> Value {
    let url = format!("{base}/api/jobs/claim");
    post(http, url, None, json!({"worker": "w"})).await.1
}

/// Everything acknowledged before a SIGKILL is there after a restart, and the running job's worker
/// can carry on heartbeating.
#[tokio::test]
async fn sigkill_and_restart_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let http = reqwest::Client::new();
    let (mut child, base) = start(&db);
    let r = http
        .post(format!("{base}/api/sweeps"))
        .bearer_auth("t")
        .header("content-type", "application/toml")
        .body("name = \"durable\"\n[grid]\nseed = [1, 2, 3]\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let c = claim_one(&http, &base).await;
    let claim = serde_json::from_value::<protocol::Claim>(c).unwrap();
    let (job, secret) = (claim.id, claim.lease_secret.as_str());
    let mut acked = 0;
    for epoch in 1..=50 {
        let (s, _) = post(
            &http,
            format!("{base}/api/jobs/{job}/metrics"),
            Some(secret),
            json!({"attempt": 1, "epoch": epoch, "accuracy": epoch as f64 / 100.0}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        acked = epoch;
    }
    let c2 = claim_one(&http, &base).await;
    let (s, _) = post(
        &http,
        format!("{base}/api/jobs/{}/finish", c2["id"]),
        c2["lease_secret"].as_str(),
        serde_json::to_value(protocol::FinishRequest {
            node_rank: None,
            attempt: 1,
            status: protocol::Outcome::Completed,
            summary: None,
            error: None,
        })
        .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    child.kill().unwrap(); // SIGKILL: no shutdown path runs
    child.wait().unwrap();

    let (mut child, base) = start(&db);
    let job_doc: Value = http
        .get(format!("{base}/api/jobs/{job}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job_doc["status"], JobStatus::Running.as_str());
    assert_eq!(job_doc["metrics"].as_array().unwrap().len(), acked as usize);
    assert_eq!(job_doc["epoch"], acked);
    let (s, hb) = post(
        &http,
        format!("{base}/api/jobs/{job}/heartbeat"),
        Some(secret),
        json!({"attempt": 1}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{hb}");
    let done: Value = http
        .get(format!("{base}/api/jobs/{}", c2["id"]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], JobStatus::Completed.as_str());
    let c3 = claim_one(&http, &base).await;
    assert!(
        c3["id"]
            .as_i64()
            .is_some_and(|id| id != job && id != c2["id"].as_i64().unwrap()),
        "the third job is still pending"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// SIGTERM: the server stops accepting, lets in-flight requests finish, and exits 0.
#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = start(&dir.path().join("g.db"));
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "did not stop"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}

/// Stored data that does not read back is an error (500), never a default: a command that does
/// not parse would otherwise hand out a command job as a trainer job, unreadable params would
/// show as null.
#[tokio::test]
async fn stored_data_that_does_not_read_is_an_error_not_a_default() {
    use sqlx::Connection;
    let app = crate::helpers::spawn_app().await;
    let sweep = app
        .submit("name = \"c\"\n[command]\nargv = [\"true\", \"{lr}\"]\n[grid]\nlr = [0.1, 0.2]\n")
        .await
        .id;
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", app.db.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE sweeps SET command = '{\"argv\": 5}'")
        .execute(&mut db)
        .await
        .unwrap();
    let (status, body) = app
        .post(
            "/api/jobs/claim",
            json!({"worker": "w", "accepts_commands": true}),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let (status, _) = app.get(&format!("/api/sweeps/{sweep}")).await;
    assert_eq!(status, StatusCode::OK, "the rest of the sweep still reads");
    sqlx::query("UPDATE jobs SET params = 'not json'")
        .execute(&mut db)
        .await
        .unwrap();
    let (status, body) = app.get(&format!("/api/sweeps/{sweep}")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(
        body["error"], "internal error",
        "no detail reaches the client"
    );
}
