//! Building and running the coordinator: `Application::build` binds (port 0 works), opens and
//! migrates the database and knows its port; `run_until_stopped` serves until `shutdown` resolves,
//! letting in-flight requests finish.
use anyhow::{Context, Result};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

use crate::state::{AppState, Clock};
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub db: PathBuf,
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub artifacts: PathBuf,
    pub lease_ms: i64,
    pub private: bool,
    /// How often expired leases are looked for.
    pub reap_every: Duration,
    pub clock: Clock,
    pub max_checkpoint_bytes: u64,
}

impl ServeConfig {
    pub fn new(db: PathBuf) -> Self {
        let artifacts = db.with_extension("artifacts");
        ServeConfig {
            db,
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            token: None,
            artifacts,
            lease_ms: 30_000,
            private: false,
            reap_every: Duration::from_secs(1),
            clock: Clock::System,
            // The full network's resume state (weights + momentum) is about 125 MB.
            max_checkpoint_bytes: 1 << 30,
        }
    }
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    reap_every: Duration,
    /// The token was generated at this start and should be shown once.
    pub new_token: bool,
}

/// `<db>.token`: the generated token, readable by its owner only.
pub fn token_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".token");
    db.with_file_name(name)
}

fn load_or_create_token(db: &Path) -> Result<(String, bool)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = token_path(db);
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok((t.trim().to_string(), false));
    }
    let token: String = {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        (0..32)
            .map(|_| format!("{:x}", rng.gen_range(0..16u8)))
            .collect()
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "{token}")?;
    Ok((token, true))
}

impl Application {
    pub async fn build(cfg: ServeConfig) -> Result<Self> {
        if let Some(dir) = cfg.db.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let store = Store::open(&cfg.db)
            .await
            .with_context(|| format!("cannot open database {}", cfg.db.display()))?;
        let extended = store
            .extend_running_leases(cfg.clock.now_ms(), cfg.lease_ms)
            .await?;
        if extended > 0 {
            tracing::info!(
                jobs = extended,
                "renewed the leases of running jobs after a restart"
            );
        }
        let (token, new_token) = match &cfg.token {
            Some(t) if !t.is_empty() => (t.clone(), false),
            _ => load_or_create_token(&cfg.db)?,
        };
        std::fs::create_dir_all(&cfg.artifacts)
            .with_context(|| format!("cannot create {}", cfg.artifacts.display()))?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let (events, _) = tokio::sync::broadcast::channel(4096);
        let state = AppState {
            store,
            clock: cfg.clock,
            lease_ms: cfg.lease_ms,
            token: token.into(),
            private: cfg.private,
            events,
            telemetry: Arc::new(Default::default()),
            artifacts: cfg.artifacts.clone().into(),
            max_checkpoint_bytes: cfg.max_checkpoint_bytes,
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
        };
        Ok(Application {
            listener,
            state,
            reap_every: cfg.reap_every,
            new_token,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn token(&self) -> &str {
        &self.state.token
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let reaper = tokio::spawn(reap_forever(self.state.clone(), self.reap_every));
        let stopping = self.state.stopping.clone();
        let app = crate::api::router(self.state);
        let result = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                stopping.send_replace(true);
            })
            .await;
        reaper.abort();
        result.context("server error")
    }
}

/// Requeues expired leases once; what the background task does every `reap_every`.
pub async fn reap_once(state: &AppState) -> Result<usize> {
    let changed = state.store.requeue_expired(state.clock.now_ms()).await?;
    let n = changed.len();
    for c in changed {
        tracing::warn!(job = c.job_id, status = %c.status, attempt = c.attempt, "lease expired");
        state
            .telemetry
            .lease_expiries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        state.publish(crate::events::Event::Job(c));
    }
    Ok(n)
}

async fn reap_forever(state: AppState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = reap_once(&state).await {
            tracing::error!(error = %e, "requeueing expired leases failed");
        }
    }
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight requests");
}
