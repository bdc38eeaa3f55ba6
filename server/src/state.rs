//! The application state: cheap handles shared by every request.
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;

use crate::store::Store;
use crate::telemetry::Telemetry;

/// Where "now" comes from. Scheduling code takes `now` as an argument; only handlers read the clock,
/// so tests can move time forward by hand.
#[derive(Clone, Debug)]
pub enum Clock {
    System,
    Manual(Arc<AtomicI64>),
}

impl Clock {
    pub fn manual(start_ms: i64) -> Self {
        Clock::Manual(Arc::new(AtomicI64::new(start_ms)))
    }

    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            Clock::Manual(t) => t.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward (no-op on the system clock).
    pub fn advance_ms(&self, ms: i64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(ms, Ordering::SeqCst);
        }
    }
}

/// What every request shares, behind one `Arc`: axum clones the state for each extractor and
/// middleware of every request, and a struct of ~25 handles cost as many contended atomic
/// increments and decrements per clone (8% of the coordinator's samples under 64 workers, `perf`);
/// one `Arc` costs one. Fields are reached through `Deref` (`state.store`).
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

/// The application state's handles and settings (see [`AppState`]).
#[derive(Debug)]
pub struct Shared {
    pub store: Store,
    pub clock: Clock,
    pub lease_ms: i64,
    /// How long a multi-node job's gang may take to form (`serve --gang-seconds`).
    pub gang_ms: i64,
    /// Idle releases (no epoch committed since the claim) a job gets before they charge an attempt.
    pub free_idle_releases: i64,
    /// Networks where a gang's node 0 may name its rendezvous besides its own address
    /// (`serve --rendezvous-network`).
    pub rendezvous_networks: Arc<[crate::rendezvous::Network]>,
    /// The admin and worker tokens (see `auth`).
    pub tokens: Arc<crate::http::auth::Tokens>,
    /// Per-worker credentials, the live ones by their token's hash.
    pub credentials: Arc<crate::credentials::Registry>,
    /// The shared worker token opens the worker protocol (`serve --no-shared-worker-token`: no).
    pub shared_worker_token: bool,
    /// Dashboard sessions (read-only) for `--private`.
    pub sessions: Arc<crate::http::auth::Sessions>,
    /// The session cookie is marked `Secure` (served behind TLS).
    pub secure_cookie: bool,
    /// Host names served (None: any).
    pub allowed_hosts: Arc<Option<Vec<String>>>,
    /// Reads need a token (or a session) too.
    pub private: bool,
    /// Figures drawn at once (each holds a core while it draws).
    pub figure_permits: Arc<tokio::sync::Semaphore>,
    /// Drawn figures, reused while their sweep is unchanged.
    pub figure_cache: Arc<crate::results::figures::FigureCache>,
    /// Anonymous and dashboard reads allowed at once (`http::bound_reads`).
    pub read_permits: Arc<tokio::sync::Semaphore>,
    /// Open event streams allowed at once.
    pub sse_permits: Arc<tokio::sync::Semaphore>,
    /// Open event streams per client address (one client cannot take them all).
    pub sse_clients: Arc<crate::http::events::ClientStreams>,
    pub events: broadcast::Sender<crate::events::Event>,
    pub telemetry: Arc<Telemetry>,
    /// PBT's pins and copies, one at a time (they are rare: one per decision at most).
    pub pbt_files: tokio::sync::Mutex<()>,
    /// Uploaded checkpoints, one folder per job id.
    pub artifacts: Arc<std::path::Path>,
    pub max_checkpoint_bytes: u64,
    /// Global quotas: every stored checkpoint together, every kept log together (None: none).
    pub max_checkpoints_total: Option<u64>,
    pub max_logs_total: Option<i64>,
    /// Keep checkpoints of ended jobs (default: deleted when the job ends).
    pub keep_checkpoints: bool,
    /// Log bytes kept per job (all its attempts); the oldest output is dropped first.
    pub max_log_bytes: i64,
    /// Turns true when shutdown begins: open event streams end, so graceful shutdown does not
    /// wait forever on a dashboard's never-ending response.
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// One lock per TPE sweep: its trials are drawn one at a time, each seeing the others.
    pub draws: Arc<crate::draw::DrawLocks>,
    /// Each claimed job's attempt and lease-secret hash, so a worker write's check reads no row.
    pub leases: Arc<crate::lifecycle::Leases>,
}

impl AppState {
    /// Publishes an event; nobody listening is fine.
    pub fn publish(&self, e: crate::events::Event) {
        let _ = self.events.send(e);
    }
}
