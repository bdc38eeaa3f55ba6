//! The coordinator's state in SQLite. Every state change is one transaction; every worker write is
//! fenced by attempt inside the statement that makes it, never by a read followed by a write.
//!
//! Writes go through one connection owned by the group-commit [`Writer`] (SQLite has one writer
//! anyway); reads through a pool of several (WAL lets them run alongside).
//!
//! The statements are grouped by what they change:
//! - [`asks`]: ask and tell: an external sweep's open jobs, a told value merged into the
//!   trial's last epoch.
//! - [`lease`]: the lease state machine of a job: claim, heartbeat, metrics, finish, release,
//!   requeue of expired leases, and the fence every worker write passes.
//! - [`gangs`]: jobs that span nodes: a forming gang joined, members' heartbeats and ends, a
//!   gang dissolved when it does not form in time.
//! - [`stopping`]: early stopping's decision on a metrics report, and the stop flag it sets; the
//!   ordered values it decides on are kept in memory by [`ranks`], beside SQLite.
//! - [`sweeps`]: sweeps created (with their jobs) and cancelled.
//! - [`trials`]: TPE's trials drawn when claimed: the next placeholder, the history, the drawn
//!   point written.
//! - [`reads`]: the read models: sweeps with counts, job pages, the grid, curves, a job's history.
//! - [`results`]: what exports and figures read: a compact key per job, then full rows by page.
//!
//! Triggers act inside these statements (see the migrations): `attempt_ended` files a row in
//! `attempts` whenever a job leaves `running`, `epoch_recorded` moves `jobs.epoch` forward on each
//! metrics insert (so every hot write is one statement), and `diverged_leaves_the_rungs` takes a
//! diverged job's values out of ASHA's comparisons.
use serde_json::{Map, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::store::writer::{One, Writer};
use crate::sweep::SweepSpec;
use futures::FutureExt;
use protocol::{Claim, HeartbeatReply, JobChange, JobShape, JobStatus, MetricsReport, SweepStatus};
use sqlx::{ConnectOptions, SqliteConnection};

mod asks;
pub use asks::Open;
pub mod credentials;
mod gangs;
mod lease;
pub use lease::ClaimTerms;
pub mod logs;
mod pbt;
pub use pbt::{BestMember, Judges, LineageInputs, PbtOutcome, ScheduleRow};
mod ranks;
mod reads;
pub use reads::CurvePoint;
mod results;
pub use results::{AnalysisTrial, JobKey, KeyParts, SweepKeys, ROWS_PER_PAGE};
mod stopping;
mod sweeps;
mod trials;
pub use trials::{ClaimNext, StoredTrial};
pub mod writer;

use protocol::views::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    /// A write from an attempt that no longer holds the job (or a job no longer running).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The write's batch did not commit (or the writer is gone): nothing of it was stored.
    #[error("the write was not committed")]
    NotCommitted,
    /// A value the job's own state rules out (an epoch past the job's last).
    #[error("{0}")]
    Invalid(String),
    /// A worker write without the lease's secret (or with another): refused, nothing stored.
    #[error("{0}")]
    Forbidden(String),
    /// A stored value that does not read as what was written (never papered over with a default).
    #[error("stored data does not read: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Connections of the users' read pool: what the HTTP edge lets run at once (`http::reads`).
pub const READ_CONNECTIONS: u32 = 8;

#[derive(Clone, Debug)]
pub struct Store {
    /// Reads of users and the dashboard (bounded at the HTTP edge, see `http::reads`).
    read: SqlitePool,
    /// Reads of the worker protocol's writes (fences, lease checks): a small pool of their own, so
    /// no number of slow user reads can keep a worker's write waiting for a connection.
    worker_read: SqlitePool,
    writer: Writer,
    /// Early stopping's ordered values, changed only inside the writer's batches.
    ranks: std::sync::Arc<ranks::Ranks>,
    /// Fronts of several objectives, each kept while its sweep's completed count is unchanged.
    fronts: std::sync::Arc<trials::FrontCache>,
}

/// A release's rules (see [`Store::release`]): who gives a gang's attempt back (its node) and
/// until when that worker may not be the same job's node 0 again; how many idle releases (no
/// epoch committed since the claim) a job gets free before they charge their attempt.
#[derive(Debug, Clone, Copy)]
pub struct Release {
    pub node_rank: i64,
    pub barred_until: i64,
    pub free_idle_releases: i64,
}

/// A stored status word as the enum. The table's CHECK constraint admits only these words; another
/// (a database edited by hand, or by a newer version) is an error, never a guess.
fn status_of(s: &str) -> Result<JobStatus> {
    JobStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("job status {s:?}")))
}

/// A job's change as a transition's statement returned it (its status as stored).
fn change_of(job_id: i64, sweep_id: i64, status: &str, attempt: i64) -> Result<JobChange> {
    Ok(JobChange {
        job_id,
        sweep_id,
        status: status_of(status)?,
        attempt,
    })
}

/// A stored JSON column (written by serde_json) read back; unreadable is an error.
fn parse_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

impl Store {
    /// Opens (creating if needed) the database file and applies the migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Duration::from_secs(10)).await
    }

    /// `open`, waiting at most `busy_timeout` for a lock another process holds on the file.
    pub async fn open_with(path: &Path, busy_timeout: Duration) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: every acknowledged write (a claim, a finish, a submitted sweep) is on disk
            // before its answer, power loss included; a lost claim would otherwise hand the same
            // (job, attempt) fencing token to a second worker. Group commit pays one fsync per batch.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(busy_timeout);
        let mut write: SqliteConnection = opts.clone().connect().await?;
        sqlx::migrate!("../migrations").run(&mut write).await?;
        // No ping before each acquire: on a local file it only adds a round trip to every request.
        // Reads map the file (up to 1 GiB) instead of copying pages into each connection's own
        // 2 MB cache: a read that scans a 100,000-job sweep is served from the OS's pages.
        let read_opts = opts.read_only(true).pragma("mmap_size", "1073741824");
        let read = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .test_before_acquire(false)
            .connect_with(read_opts.clone())
            .await?;
        let worker_read = SqlitePoolOptions::new()
            .max_connections(2)
            .test_before_acquire(false)
            .connect_with(read_opts)
            .await?;
        let ranks = std::sync::Arc::new(ranks::Ranks::default());
        Ok(Store {
            read,
            worker_read,
            writer: Writer::spawn_observed(write, ranks.clone()),
            ranks,
            fronts: Default::default(),
        })
    }

    /// The write connection's `PRAGMA synchronous` (2 is FULL): what durability an answer promises.
    pub async fn synchronous(&self) -> Result<i64> {
        self.writer
            .run_many(|c| {
                async move {
                    Ok(sqlx::query_scalar::<_, i64>("PRAGMA synchronous")
                        .fetch_one(&mut *c)
                        .await?)
                }
                .boxed()
            })
            .await
    }
}
