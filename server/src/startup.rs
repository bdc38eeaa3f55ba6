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
    /// The admin token; else `token_file`; else generated into `<db>.token`.
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// The worker-protocol token; else `worker_token_file`; else generated into `<db>.worker-token`.
    pub worker_token: Option<String>,
    pub worker_token_file: Option<PathBuf>,
    /// Accept the shared worker token (false: only per-worker credentials speak the protocol).
    pub shared_worker_token: bool,
    /// Host names served; empty: loopback names when bound to loopback, else any.
    pub allowed_hosts: Vec<String>,
    pub artifacts: PathBuf,
    pub lease_ms: i64,
    /// How long a multi-node job's gang may take to form before it is dissolved.
    pub gang_ms: i64,
    /// Idle releases (no epoch committed since the claim) a job gets before they charge an attempt.
    pub free_idle_releases: i64,
    /// Where a gang's node 0 may name its rendezvous besides the address its claim came from.
    pub rendezvous_networks: Vec<crate::rendezvous::Network>,
    pub private: bool,
    /// Mark the dashboard's session cookie `Secure` (behind a TLS proxy).
    pub secure_cookie: bool,
    /// How often expired leases are looked for.
    pub reap_every: Duration,
    pub clock: Clock,
    pub max_checkpoint_bytes: u64,
    /// Every stored checkpoint together, and every kept log together, at most (None: no cap).
    pub max_checkpoints_total: Option<u64>,
    pub max_logs_total: Option<i64>,
    /// Keep the checkpoints of ended jobs (about 125 MB each for the study's network).
    pub keep_checkpoints: bool,
    pub max_log_bytes: i64,
    /// How long a write waits for a lock another process holds on the database file.
    pub busy_timeout: Duration,
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Event streams (`/api/events`) open at once; more get 503.
    pub max_event_streams: usize,
    /// Event streams one client address may hold open at once; more get 503.
    pub max_event_streams_per_client: usize,
    /// How long a dashboard session lasts.
    pub session_ttl: Duration,
    /// A client must send a request's headers within this (slow clients hold no connection long).
    pub header_timeout: Duration,
    /// A request (body included) must be answered within this, event streams and checkpoint
    /// transfers excepted.
    pub request_timeout: Duration,
}

impl ServeConfig {
    pub fn new(db: PathBuf) -> Self {
        let artifacts = db.with_extension("artifacts");
        ServeConfig {
            db,
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            token: None,
            token_file: None,
            worker_token: None,
            worker_token_file: None,
            shared_worker_token: true,
            allowed_hosts: vec![],
            artifacts,
            lease_ms: 30_000,
            gang_ms: 120_000,
            free_idle_releases: 3,
            rendezvous_networks: vec![],
            private: false,
            secure_cookie: false,
            reap_every: Duration::from_secs(1),
            clock: Clock::System,
            // The full network's resume state (weights + momentum) is about 125 MB.
            max_checkpoint_bytes: 1 << 30,
            max_checkpoints_total: None,
            max_logs_total: None,
            keep_checkpoints: false,
            max_log_bytes: 8 << 20,
            busy_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_event_streams: 256,
            max_event_streams_per_client: 32,
            session_ttl: Duration::from_secs(12 * 3600),
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Creates `dir` (and its parents) readable by the owner only where it does not exist yet: the
/// database and checkpoints hold every sweep's results and lease hashes. An existing directory is
/// left as the operator made it.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Creates the database file mode 0600 before SQLite opens it (SQLite gives its `-wal` and `-shm`
/// files the database file's mode); an existing file is left as it is.
fn private_file(db: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", db.display())),
    }
}

/// Anonymous and dashboard reads served at once: half the cores (at least one), so the heaviest of
/// them (a search over a 100,000-job sweep is a scan) leave the other half to the workers' writes.
fn anonymous_reads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores / 2).clamp(1, crate::store::READ_CONNECTIONS as usize)
}

/// Figures drawn at once: drawing is single-threaded CPU work, so this bounds the cores they take.
pub const FIGURE_PERMITS: usize = 2;

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
    reap_every: Duration,
    limits: Limits,
    /// The token was generated at this start and should be shown once.
    pub new_token: bool,
    /// Likewise the worker token.
    pub new_worker_token: bool,
}

/// `<db>.token`: the generated admin token, readable by its owner only.
pub fn token_path(db: &Path) -> PathBuf {
    crate::http::auth::sidecar(db, ".token")
}

/// `<db>.worker-token`: the generated worker token.
pub fn worker_token_path(db: &Path) -> PathBuf {
    crate::http::auth::sidecar(db, ".worker-token")
}

impl Application {
    pub async fn build(cfg: ServeConfig) -> Result<Self> {
        if let Some(dir) = cfg.db.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_dir(dir)?;
        }
        private_file(&cfg.db)?;
        let store = Store::open_with(&cfg.db, cfg.busy_timeout)
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
        let (token, new_token) = crate::http::auth::load_token(
            cfg.token.as_deref(),
            cfg.token_file.as_deref(),
            &token_path(&cfg.db),
        )?;
        let (worker_token, new_worker_token) = crate::http::auth::load_token(
            cfg.worker_token.as_deref(),
            cfg.worker_token_file.as_deref(),
            &worker_token_path(&cfg.db),
        )?;
        if worker_token == token {
            anyhow::bail!("the worker token must differ from the admin token");
        }
        private_dir(&cfg.artifacts)?;
        let credentials = crate::credentials::Registry::load(store.live_credentials().await?);
        let listener = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let (events, _) = tokio::sync::broadcast::channel(4096);
        let state = AppState::new(crate::state::Shared {
            store,
            clock: cfg.clock,
            lease_ms: cfg.lease_ms,
            gang_ms: cfg.gang_ms,
            rendezvous_networks: cfg.rendezvous_networks.clone().into(),
            free_idle_releases: cfg.free_idle_releases,
            tokens: Arc::new(crate::http::auth::Tokens {
                admin: token,
                worker: worker_token,
            }),
            credentials: Arc::new(credentials),
            shared_worker_token: cfg.shared_worker_token,
            sessions: Arc::new(crate::http::auth::Sessions::new(cfg.session_ttl)),
            secure_cookie: cfg.secure_cookie,
            allowed_hosts: Arc::new(crate::http::auth::default_allowed_hosts(
                &cfg.listen,
                &cfg.allowed_hosts,
            )),
            private: cfg.private,
            figure_permits: Arc::new(tokio::sync::Semaphore::new(FIGURE_PERMITS)),
            figure_cache: Arc::default(),
            read_permits: Arc::new(tokio::sync::Semaphore::new(anonymous_reads())),
            sse_permits: Arc::new(tokio::sync::Semaphore::new(cfg.max_event_streams)),
            sse_clients: Arc::new(crate::http::events::ClientStreams::new(
                cfg.max_event_streams_per_client,
            )),
            events,
            telemetry: Arc::new(Default::default()),
            artifacts: cfg.artifacts.clone().into(),
            max_checkpoint_bytes: cfg.max_checkpoint_bytes,
            max_checkpoints_total: cfg.max_checkpoints_total,
            max_logs_total: cfg.max_logs_total,
            keep_checkpoints: cfg.keep_checkpoints,
            max_log_bytes: cfg.max_log_bytes,
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
            draws: Default::default(),
            leases: Default::default(),
            pbt_files: Default::default(),
        });
        // The quotas' counts start from what is stored.
        let checkpoints = crate::checkpoints::stored_bytes(&cfg.artifacts);
        state.telemetry.checkpoint_bytes.set(checkpoints as i64);
        // An exploit's copy a crash interrupted is made before any worker can read the slot.
        crate::checkpoints::settle_copies_from(&state, None).await;
        state
            .telemetry
            .log_bytes
            .set(state.store.log_bytes_total().await?);
        Ok(Application {
            listener,
            state,
            reap_every: cfg.reap_every,
            limits: Limits {
                max_connections: cfg.max_connections.max(1),
                header_timeout: cfg.header_timeout,
                request_timeout: cfg.request_timeout,
            },
            new_token,
            new_worker_token,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn token(&self) -> &str {
        &self.state.tokens.admin
    }

    pub fn worker_token(&self) -> &str {
        &self.state.tokens.worker
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let reaper = tokio::spawn(reap_forever(self.state.clone(), self.reap_every));
        let stopping = self.state.stopping.clone();
        let app = crate::http::router(self.state.clone(), self.limits.request_timeout);
        let result = serve(self.listener, app, &self.limits, async move {
            shutdown.await;
            stopping.send_replace(true);
        })
        .await;
        reaper.abort();
        result
    }
}

/// What bounds each client: connections at once, time to send headers, time to be answered.
#[derive(Debug, Clone)]
struct Limits {
    max_connections: usize,
    header_timeout: Duration,
    request_timeout: Duration,
}

/// The accept loop. A connection slot is taken *before* accepting, so past the limit new clients
/// wait in the kernel's queue instead of holding our file descriptors; a client that does not send
/// its headers within `header_timeout` is dropped (slow-loris). Shutdown stops accepting and lets
/// the connections in flight finish.
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.context("connection slots closed")?,
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the slot is given back.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Handlers that limit per client (event streams) read the peer's address from here.
        let app = tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            },
        );
        let service = hyper_util::service::TowerToHyperService::new(app);
        // No upgrades: nothing here speaks WebSocket (server-sent events are a plain response).
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Requeues expired leases once; what the background task does every `reap_every`.
pub async fn reap_once(state: &AppState) -> Result<usize> {
    let expired = crate::lifecycle::expire_leases(state).await?;
    Ok(expired + crate::lifecycle::dissolve_unformed_gangs(state).await?)
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
