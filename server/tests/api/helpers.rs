pub(crate) use protocol::views::{JobDetail, SweepDetail};
pub(crate) use protocol::{
    routes, FinishRequest, HeartbeatReply, HeartbeatRequest, JobStatus, MetricsReport, Outcome,
    ReleaseRequest, SweepStatus,
};
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
    /// The lease secret of each job's latest claim through these helpers: their writes to a job
    /// carry it, as its worker's would.
    secrets: std::sync::Mutex<std::collections::HashMap<i64, String>>,
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
    let (base, state) = start(&db, &clock, tweak).await;
    TestApp {
        base,
        http: reqwest::Client::new(),
        state,
        clock,
        db,
        secrets: Default::default(),
        _dir: dir,
    }
}

/// A coordinator on `db`, serving on a random port: its URL and state.
async fn start(
    db: &std::path::Path,
    clock: &Clock,
    tweak: impl FnOnce(&mut ServeConfig),
) -> (String, AppState) {
    let mut cfg = ServeConfig::new(db.to_path_buf());
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
    (base, state)
}

/// The job a worker-protocol path writes to (`/api/jobs/{id}/...`).
fn job_of(path: &str) -> Option<i64> {
    let rest = path.strip_prefix("/api/jobs/")?;
    rest.split(['/', '?']).next()?.parse().ok()
}

impl TestApp {
    /// A new coordinator on the same SQLite file and clock, with nothing in memory, as after a
    /// restart: these helpers talk to it from now on (the first one stays up, unused).
    pub(crate) async fn restart(&mut self) {
        (self.base, self.state) = start(&self.db, &self.clock, |_| {}).await;
    }

    /// A request with these credentials (None: anonymous), answered with its status and JSON body.
    /// The lease secret of `job`'s latest claim made through these helpers.
    pub(crate) fn secret(&self, job: i64) -> String {
        self.secrets
            .lock()
            .unwrap()
            .get(&job)
            .cloned()
            .unwrap_or_default()
    }

    /// `req` with the lease secret of the job `path` writes to, when a claim here got one.
    pub(crate) fn holding(
        &self,
        req: reqwest::RequestBuilder,
        path: &str,
    ) -> reqwest::RequestBuilder {
        match job_of(path).and_then(|j| self.secrets.lock().unwrap().get(&j).cloned()) {
            Some(secret) => req.header(protocol::LEASE_SECRET_HEADER, secret),
            None => req,
        }
    }

    /// Keeps the secret of a claim answered with `body`.
    fn remember(&self, path: &str, status: StatusCode, body: &Value) {
        if path == routes::CLAIM && status == StatusCode::OK {
            if let (Some(id), Some(secret)) = (body["id"].as_i64(), body["lease_secret"].as_str()) {
                self.secrets.lock().unwrap().insert(id, secret.to_string());
            }
        }
    }

    pub(crate) async fn send_as(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let req = self.http.request(method, format!("{}{path}", self.base));
        let mut req = self.holding(req, path);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let body = r.json().await.unwrap_or(Value::Null);
        self.remember(path, status, &body);
        (status, body)
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let req = self.http.post(format!("{}{path}", self.base));
        let r = self
            .holding(req, path)
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.json().await.unwrap_or(Value::Null);
        self.remember(path, status, &body);
        (status, body)
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
    pub(crate) async fn submit(&self, toml: &str) -> protocol::views::Created {
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

    /// A typed body posted as JSON; the answer's status and body.
    pub(crate) async fn send<B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> (StatusCode, Value) {
        self.post(path, serde_json::to_value(body).expect("a protocol body"))
            .await
    }

    /// A claim with the request's capacity and flags; None on 204.
    pub(crate) async fn claim_with(&self, req: &protocol::ClaimRequest) -> Option<protocol::Claim> {
        let (status, body) = self.send("/api/jobs/claim", req).await;
        match status {
            StatusCode::OK => Some(serde_json::from_value(body).expect("a claim")),
            StatusCode::NO_CONTENT => None,
            other => panic!("claim: {other} {body}"),
        }
    }

    /// One epoch's report of the shape every test uses: `acc` for accuracy, precision, recall and
    /// F1, `loss` (None: diverged) for both losses.
    pub(crate) fn report(attempt: i64, epoch: i64, loss: Option<f64>, acc: f64) -> MetricsReport {
        MetricsReport {
            attempt,
            epoch,
            lr: Some(0.01),
            train_loss: loss,
            test_loss: loss,
            accuracy: Some(acc),
            precision: Some(acc),
            recall: Some(acc),
            f1: Some(acc),
            images_per_sec: Some(100.0),
            seconds: Some(1.0),
            ..Default::default()
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
        let report = Self::report(attempt, epoch, loss, acc);
        self.send(&routes::metrics(job), &report).await.0
    }

    /// A heartbeat of `attempt`: the status, and the reply when it is 200.
    pub(crate) async fn heartbeat(
        &self,
        job: i64,
        attempt: i64,
    ) -> (StatusCode, Option<HeartbeatReply>) {
        let (status, body) = self
            .send(
                &routes::heartbeat(job),
                &HeartbeatRequest {
                    attempt,
                    node_rank: None,
                },
            )
            .await;
        (status, serde_json::from_value(body).ok())
    }

    /// Gives the job back (as a worker shutting down does).
    pub(crate) async fn release(&self, job: i64, attempt: i64) -> (StatusCode, Value) {
        let req = ReleaseRequest {
            node_rank: None,
            attempt,
            reason: None,
        };
        self.send(&routes::release(job), &req).await
    }

    pub(crate) async fn finish(
        &self,
        job: i64,
        attempt: i64,
        status: Outcome,
    ) -> (StatusCode, Value) {
        let req = FinishRequest {
            node_rank: None,
            attempt,
            status,
            summary: Some(json!({"device": "Cpu", "git_commit": "abc123"})),
            error: None,
        };
        self.send(&routes::finish(job), &req).await
    }

    /// A job's document (it must exist).
    pub(crate) async fn job(&self, id: i64) -> Value {
        let (s, v) = self.get(&format!("/api/jobs/{id}")).await;
        assert_eq!(s, StatusCode::OK);
        v
    }

    /// A job's document as the API's own type.
    pub(crate) async fn job_detail(&self, id: i64) -> JobDetail {
        serde_json::from_value(self.job(id).await).expect("a job document")
    }

    /// A sweep's document as the API's own type.
    pub(crate) async fn sweep(&self, id: i64) -> SweepDetail {
        let (s, v) = self.get(&format!("/api/sweeps/{id}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        serde_json::from_value(v).expect("a sweep document")
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

/// Runs a reference script of this directory (`optuna_pruners.py`, `optuna_tpe.py`) with the
/// project's `.venv` Python on `input`; its JSON answer.
pub(crate) fn python_reference(script: &str, input: &Value) -> Value {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let here = root.join("server/tests/api").join(script);
    server::cli::python_json(&root.join(".venv/bin/python"), &here, input)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// A finished synthetic sweep of `epochs` epochs a job, then `updates` (SQL on the database file)
/// to vary it; the whole sweep read back at once, checked to span several pages of rows.
pub(crate) async fn synthetic_sweep(
    app: &TestApp,
    id: i64,
    epochs: i64,
    updates: &[&str],
) -> protocol::views::SweepDetail {
    use sqlx::Connection;
    let store = &app.state.store;
    store
        .fill_synthetic(id, epochs, 1_800_000_000_000)
        .await
        .unwrap();
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", app.db.display()))
        .await
        .unwrap();
    for sql in updates {
        sqlx::query(sql).execute(&mut db).await.unwrap();
    }
    let whole = store.get_sweep(id).await.unwrap();
    assert!(
        whole.jobs.len() > 2 * server::store::ROWS_PER_PAGE,
        "several pages"
    );
    whole
}

/// Each export the API streams a page at a time equals the whole sweep rendered at once in
/// memory; the texts, by query.
pub(crate) async fn paged_exports_equal_the_whole(
    app: &TestApp,
    whole: &protocol::views::SweepDetail,
    cases: Vec<(
        &str,
        server::results::export::Format,
        server::results::export::TableOptions,
    )>,
) -> Vec<(String, String)> {
    let id = whole.sweep.id;
    let mut out = vec![];
    for (query, format, opts) in cases {
        let got = app
            .get_text(&format!("/api/sweeps/{id}/results?{query}"))
            .await;
        let (_, want) = server::results::export::render(whole, format, &opts);
        assert!(
            got == want,
            "{query}: the paged export differs from the whole"
        );
        out.push((query.to_string(), got));
    }
    out
}
