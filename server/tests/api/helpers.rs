use reqwest::StatusCode;
use serde_json::{json, Value};
use server::startup::{Application, ServeConfig};
use server::state::{AppState, Clock};

pub(crate) const TOKEN: &str = "test-token";
pub(crate) const WORKER_TOKEN: &str = "test-worker-token";
pub(crate) const LEASE_MS: i64 = 30_000;

pub(crate) struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub state: AppState,
    pub clock: Clock,
    /// The coordinator's SQLite file.
    pub db: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

/// Starts the real server on port 0 over a fresh SQLite file, with a clock the test moves by hand
/// and the reaper effectively off (tests call `reap`).
pub(crate) async fn spawn_with(tweak: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sweeps.db");
    let clock = Clock::manual(1_800_000_000_000);
    let mut cfg = ServeConfig::new(db.clone());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.token = Some(TOKEN.into());
    cfg.worker_token = Some(WORKER_TOKEN.into());
    cfg.lease_ms = LEASE_MS;
    cfg.clock = clock.clone();
    cfg.reap_every = std::time::Duration::from_secs(3600);
    tweak(&mut cfg);
    let app = Application::build(cfg).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    TestApp {
        base,
        http: reqwest::Client::new(),
        state,
        clock,
        db,
        _dir: dir,
    }
}

impl TestApp {
    /// A request with these credentials (None: anonymous), answered with its status and JSON body.
    pub(crate) async fn send_as(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn get_text(&self, path: &str) -> String {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.text().await.unwrap()
    }

    /// Submits a sweep that must be accepted; the answer as the API's own type.
    pub(crate) async fn submit(&self, toml: &str) -> server::http::sweeps::Created {
        let (status, body) = self.submit_toml(toml).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        serde_json::from_value(body).expect("the submit answer")
    }

    pub(crate) async fn submit_toml(&self, toml: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/api/sweeps", self.base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/toml")
            .body(toml.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A claim through the worker protocol, read as the protocol's own type.
    pub(crate) async fn claim(&self, worker: &str) -> Option<protocol::Claim> {
        let (status, body) = self
            .post("/api/jobs/claim", json!({ "worker": worker }))
            .await;
        match status {
            StatusCode::OK => Some(serde_json::from_value(body).expect("a claim")),
            StatusCode::NO_CONTENT => None,
            other => panic!("claim: {other} {body}"),
        }
    }

    pub(crate) async fn metrics(
        &self,
        job: i64,
        attempt: i64,
        epoch: i64,
        loss: Option<f64>,
        acc: f64,
    ) -> StatusCode {
        let body = json!({"attempt": attempt, "epoch": epoch, "lr": 0.01, "train_loss": loss, "test_loss": loss,
                          "accuracy": acc, "precision": acc, "recall": acc, "f1": acc, "images_per_sec": 100.0, "seconds": 1.0});
        self.post(&format!("/api/jobs/{job}/metrics"), body).await.0
    }

    pub(crate) async fn finish(&self, job: i64, attempt: i64, status: &str) -> (StatusCode, Value) {
        self.post(
            &format!("/api/jobs/{job}/finish"),
            json!({"attempt": attempt, "status": status,
            "summary": {"device": "Cpu", "git_commit": "abc123"}}),
        )
        .await
    }

    pub(crate) async fn job(&self, id: i64) -> Value {
        let (s, v) = self.get(&format!("/api/jobs/{id}")).await;
        assert_eq!(s, StatusCode::OK);
        v
    }

    /// Moves time past the lease and runs the reaper once.
    pub(crate) async fn expire_leases(&self) -> usize {
        self.clock.advance_ms(LEASE_MS + 1);
        server::startup::reap_once(&self.state).await.unwrap()
    }
}

pub(crate) const TWO_JOBS: &str = r#"
name = "two"
[train]
dataset = "synthetic"
epochs = 2
[grid]
lr = [0.01, 0.0001]
"#;
