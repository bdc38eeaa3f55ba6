//! The coordinator's state in SQLite. Every state change is one transaction; every worker write is
//! fenced by attempt inside the statement that makes it, never by a read followed by a write.
//!
//! Writes go through one connection owned by the group-commit [`Writer`] (SQLite has one writer
//! anyway); reads through a pool of several (WAL lets them run alongside).
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::spec::{self, SweepSpec};
use crate::writer::Writer;
use futures::FutureExt;
use sqlx::{ConnectOptions, SqliteConnection};

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
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub struct Store {
    read: SqlitePool,
    writer: Writer,
}

/// Job statuses that end a job.
pub const FINAL: [&str; 4] = ["completed", "diverged", "failed", "cancelled"];

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Claim {
    pub id: i64,
    pub sweep_id: i64,
    pub attempt: i64,
    #[schema(value_type = Object)]
    pub params: Value,
    pub lease_expires_at: i64,
    /// The lease's length: a worker heartbeats well inside it (its clock need not agree with ours).
    pub lease_ms: i64,
}

/// What a worker has free; a claim only hands out a job that fits.
#[derive(Debug, Clone, Copy, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct Capacity {
    /// Free ranks (devices or CPU rank slots): a job needs `nproc_per_node` of them.
    pub ranks: i64,
    /// Largest per-process batch size the free slot takes (packing small jobs); none: any.
    pub max_batch_size: Option<i64>,
}

/// One epoch's metrics: what a worker reports, and what is stored and served (with the attempt that
/// recorded it). A non-finite number is `null`.
#[derive(Debug, Clone, serde::Deserialize, Serialize, utoipa::ToSchema)]
pub struct MetricsReport {
    pub attempt: i64,
    pub epoch: i64,
    pub lr: Option<f64>,
    pub train_loss: Option<f64>,
    pub test_loss: Option<f64>,
    pub accuracy: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub images_per_sec: Option<f64>,
    pub seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AttemptRow {
    pub attempt: i64,
    pub worker: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub outcome: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct JobRow {
    pub id: i64,
    pub sweep_id: i64,
    #[schema(value_type = Object)]
    pub params: Value,
    pub status: String,
    pub attempt: i64,
    pub max_attempts: i64,
    pub epoch: i64,
    pub epochs: i64,
    pub worker: Option<String>,
    pub error: Option<String>,
    #[schema(value_type = Object)]
    pub summary: Option<Value>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The last recorded epoch's metrics.
    pub latest: Option<MetricsReport>,
}

/// A jobs row as SQL returns it (shared by the queries that list jobs).
struct JobSql {
    id: i64,
    sweep_id: i64,
    params: String,
    status: String,
    attempt: i64,
    max_attempts: i64,
    epoch: i64,
    epochs: i64,
    worker: Option<String>,
    error: Option<String>,
    summary: Option<String>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    m_epoch: Option<i64>,
    m_attempt: Option<i64>,
    lr: Option<f64>,
    train_loss: Option<f64>,
    test_loss: Option<f64>,
    accuracy: Option<f64>,
    precision: Option<f64>,
    recall: Option<f64>,
    f1: Option<f64>,
    images_per_sec: Option<f64>,
    seconds: Option<f64>,
}

impl From<JobSql> for JobRow {
    fn from(r: JobSql) -> Self {
        JobRow {
            latest: r.m_epoch.map(|epoch| MetricsReport {
                epoch,
                attempt: r.m_attempt.unwrap_or(0),
                lr: r.lr,
                train_loss: r.train_loss,
                test_loss: r.test_loss,
                accuracy: r.accuracy,
                precision: r.precision,
                recall: r.recall,
                f1: r.f1,
                images_per_sec: r.images_per_sec,
                seconds: r.seconds,
            }),
            id: r.id,
            sweep_id: r.sweep_id,
            params: serde_json::from_str(&r.params).unwrap_or(Value::Null),
            status: r.status,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            epoch: r.epoch,
            epochs: r.epochs,
            worker: r.worker,
            error: r.error,
            summary: parse_json(r.summary.as_deref()),
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

/// Which page of a sweep's jobs, in what order, with what filter.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(default)]
pub struct JobQuery {
    pub offset: i64,
    /// At most 500 (default 50).
    pub limit: i64,
    /// idx (grid order), batch_size, lr, status, attempt, epoch, test_loss, train_loss, accuracy,
    /// images_per_sec or worker.
    pub sort: Option<String>,
    pub desc: bool,
    /// Only jobs with this status.
    pub status: Option<String>,
    /// Only jobs whose params or worker contain this text.
    pub q: Option<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct JobPage {
    /// Jobs matching the filter, over all pages.
    pub total: i64,
    pub offset: i64,
    pub jobs: Vec<JobRow>,
}

/// One batch size x lr cell of a sweep.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct GridCell {
    pub batch_size: i64,
    pub lr: f64,
    pub jobs: i64,
    pub completed: i64,
    pub diverged: i64,
    pub running: i64,
    /// Best final (or latest) accuracy over the cell's jobs.
    pub accuracy: Option<f64>,
    pub epoch: i64,
    pub epochs: i64,
}

/// One learning curve, column-wise (downsampled epochs).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Series {
    pub batch_size: i64,
    pub job_id: i64,
    pub status: String,
    pub epoch: Vec<i64>,
    pub lr: Vec<Option<f64>>,
    pub train_loss: Vec<Option<f64>>,
    pub test_loss: Vec<Option<f64>>,
    pub accuracy: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobRow,
    pub metrics: Vec<MetricsReport>,
    pub attempts: Vec<AttemptRow>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SweepRow {
    pub id: i64,
    pub name: String,
    pub status: String,
    pub created_at: i64,
    /// Number of jobs (the sweep document's `jobs` is the list of them).
    pub total: i64,
    pub pending: i64,
    pub running: i64,
    pub completed: i64,
    pub diverged: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub best_accuracy: Option<f64>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SweepDetail {
    #[serde(flatten)]
    pub sweep: SweepRow,
    #[schema(value_type = Object)]
    pub spec: Value,
    pub jobs: Vec<JobRow>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HeartbeatReply {
    pub cancel: bool,
    pub lease_expires_at: i64,
}

/// One epoch of one job, as figures need it.
#[derive(Debug, Clone)]
pub struct CurvePoint {
    pub job_id: i64,
    pub epoch: i64,
    pub lr: Option<f64>,
    pub train_loss: Option<f64>,
    pub test_loss: Option<f64>,
    pub accuracy: Option<f64>,
}

/// A job whose state changed, for the event stream.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct JobChange {
    pub job_id: i64,
    pub sweep_id: i64,
    pub status: String,
    pub attempt: i64,
}

fn sweep_status(cancelled: bool, pending: i64, running: i64, total: i64) -> String {
    if cancelled {
        "cancelled"
    } else if running > 0 || (pending > 0 && pending < total) {
        "running"
    } else if pending > 0 {
        "pending"
    } else {
        "finished"
    }
    .into()
}

fn parse_json(text: Option<&str>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(t).ok())
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
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(Store {
            read,
            writer: Writer::spawn(write),
        })
    }

    /// The write connection's `PRAGMA synchronous` (2 is FULL): what durability an answer promises.
    pub async fn synchronous(&self) -> Result<i64> {
        self.writer
            .run(|c| {
                async move {
                    Ok(sqlx::query_scalar::<_, i64>("PRAGMA synchronous")
                        .fetch_one(&mut *c)
                        .await?)
                }
                .boxed()
            })
            .await
    }

    /// After a restart, running jobs get a fresh lease: their workers could not heartbeat while the
    /// coordinator was down, and must not lose their jobs for it.
    pub async fn extend_running_leases(&self, now: i64, lease_ms: i64) -> Result<u64> {
        let until = now + lease_ms;
        self.writer
            .run(move |c| {
                async move {
                    let r = sqlx::query!("UPDATE jobs SET lease_expires_at = max(lease_expires_at, ?) WHERE status = 'running'", until)
                        .execute(&mut *c)
                        .await?;
                    Ok(r.rows_affected())
                }
                .boxed()
            })
            .await
    }

    pub async fn create_sweep(&self, spec: &SweepSpec, now: i64) -> Result<(i64, usize)> {
        let jobs = spec.expand();
        let spec_json = spec.to_value().to_string();
        let (name, max_attempts) = (spec.name.clone(), spec.max_attempts);
        // The sweep and all its jobs commit together (the writer's batch is one transaction).
        self.writer
            .run(move |c| {
                async move {
                    let sweep_id = sqlx::query_scalar!(
                        r#"INSERT INTO sweeps (name, spec, created_at) VALUES (?, ?, ?) RETURNING id AS "id!""#,
                        name,
                        spec_json,
                        now
                    )
                    .fetch_one(&mut *c)
                    .await?;
                    for (idx, params) in jobs.iter().enumerate() {
                        let (batch_size, nproc, epochs) = spec::job_shape(params);
                        let idx = idx as i64;
                        let params = Value::Object(params.clone()).to_string();
                        sqlx::query!(
                            "INSERT INTO jobs (sweep_id, idx, params, attempt, max_attempts, batch_size, nproc, epochs, created_at)
                             VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?)",
                            sweep_id,
                            idx,
                            params,
                            max_attempts,
                            batch_size,
                            nproc,
                            epochs,
                            now
                        )
                        .execute(&mut *c)
                        .await?;
                    }
                    Ok((sweep_id, jobs.len()))
                }
                .boxed()
            })
            .await
    }

    /// Hands the oldest pending job that fits `capacity` to `worker`, under a lease. One statement
    /// picks and takes the job, so two claims can never get the same one.
    pub async fn claim_next(
        &self,
        worker: &str,
        capacity: Option<Capacity>,
        now: i64,
        lease_ms: i64,
    ) -> Result<Option<Claim>> {
        let until = now + lease_ms;
        let (ranks, max_batch) = match capacity {
            Some(c) => (Some(c.ranks), c.max_batch_size),
            None => (None, None),
        };
        let worker = worker.to_string();
        let row = self.writer.run(move |c| async move { Ok(sqlx::query!(
            // A cancel sticks: a job whose sweep was cancelled is never handed out again, whatever
            // raced the cancel (cancel_requested is never cleared).
            // The claim takes the next attempt number (the fencing token) in the same statement.
            r#"UPDATE jobs SET status = 'running', attempt = attempt + 1, worker = ?1, lease_expires_at = ?2, claimed_at = ?3,
                   started_at = coalesce(started_at, ?3)
               WHERE id = (SELECT j.id FROM jobs j
                           WHERE j.status = 'pending'
                             AND j.cancel_requested = 0
                             AND (?4 IS NULL OR j.nproc <= ?4)
                             AND (?5 IS NULL OR j.batch_size <= ?5)
                             AND NOT EXISTS (SELECT 1 FROM sweeps s WHERE s.id = j.sweep_id AND s.cancelled_at IS NOT NULL)
                           ORDER BY j.id LIMIT 1)
               RETURNING id AS "id!", sweep_id AS "sweep_id!", attempt AS "attempt!", params AS "params!""#,
            worker,
            until,
            now,
            ranks,
            max_batch
        )
        .fetch_optional(&mut *c)
        .await?) }.boxed())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(Claim {
            id: row.id,
            sweep_id: row.sweep_id,
            attempt: row.attempt,
            params: serde_json::from_str(&row.params).unwrap_or(Value::Null),
            lease_expires_at: until,
            lease_ms,
        }))
    }

    /// The fence: Ok if `attempt` holds `job` (running), else why not.
    async fn fence_error(&self, job: i64, attempt: i64) -> StoreError {
        match sqlx::query!("SELECT status, attempt FROM jobs WHERE id = ?", job)
            .fetch_optional(&self.read)
            .await
        {
            Ok(None) => StoreError::NotFound(format!("job {job}")),
            Ok(Some(r)) if r.attempt != attempt => StoreError::Conflict(format!(
                "job {job}: attempt {attempt} no longer holds the lease (current attempt {})",
                r.attempt
            )),
            Ok(Some(r)) => StoreError::Conflict(format!(
                "job {job} is {}, not running: attempt {attempt} no longer holds it",
                r.status
            )),
            Err(e) => e.into(),
        }
    }

    pub async fn heartbeat(
        &self,
        job: i64,
        attempt: i64,
        now: i64,
        lease_ms: i64,
    ) -> Result<HeartbeatReply> {
        let until = now + lease_ms;
        let row = self
            .writer
            .run(move |c| {
                async move {
                    Ok(sqlx::query!(
                        r#"UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND attempt = ? AND status = 'running'
                           RETURNING cancel_requested AS "cancel!""#,
                        until,
                        job,
                        attempt
                    )
                    .fetch_optional(&mut *c)
                    .await?)
                }
                .boxed()
            })
            .await?;
        match row {
            Some(r) => Ok(HeartbeatReply {
                cancel: r.cancel != 0,
                lease_expires_at: until,
            }),
            None => Err(self.fence_error(job, attempt).await),
        }
    }

    /// Stores one epoch's metrics. The same epoch reported twice is stored once; a later attempt's
    /// report of an epoch replaces an earlier attempt's (it is the trajectory that continues).
    pub async fn record_metrics(&self, job: i64, m: &MetricsReport, now: i64) -> Result<i64> {
        // One statement: the fence is the SELECT's WHERE, the idempotence the primary key, and the
        // job's epoch follows by trigger.
        let m = m.clone();
        let attempt = m.attempt;
        let stored = self
            .writer
            .run(move |c| {
                async move {
                    Ok(sqlx::query_scalar!(
                        r#"INSERT INTO metrics (job_id, sweep_id, epoch, attempt, lr, train_loss, test_loss, accuracy, precision,
                                                recall, f1, images_per_sec, seconds, recorded_at)
                           SELECT id, sweep_id, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13 FROM jobs
                           WHERE id = ?1 AND attempt = ?3 AND status = 'running' AND ?2 <= epochs
                           ON CONFLICT (job_id, epoch) DO UPDATE SET
                              attempt = excluded.attempt, lr = excluded.lr, train_loss = excluded.train_loss,
                              test_loss = excluded.test_loss, accuracy = excluded.accuracy, precision = excluded.precision,
                              recall = excluded.recall, f1 = excluded.f1, images_per_sec = excluded.images_per_sec,
                              seconds = excluded.seconds, recorded_at = excluded.recorded_at
                           WHERE excluded.attempt > metrics.attempt
                           RETURNING sweep_id AS "sweep_id!""#,
                        job,
                        m.epoch,
                        m.attempt,
                        m.lr,
                        m.train_loss,
                        m.test_loss,
                        m.accuracy,
                        m.precision,
                        m.recall,
                        m.f1,
                        m.images_per_sec,
                        m.seconds,
                        now
                    )
                    .fetch_optional(&mut *c)
                    .await?)
                }
                .boxed()
            })
            .await?;
        if let Some(sweep_id) = stored {
            return Ok(sweep_id);
        }
        // Nothing stored: a repeat of an epoch (fine) or a write from an attempt without the lease.
        let row = sqlx::query!(
            "SELECT sweep_id, status, attempt, epochs FROM jobs WHERE id = ?",
            job
        )
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("job {job}")))?;
        if row.attempt != attempt || row.status != "running" {
            return Err(self.fence_error(job, attempt).await);
        }
        if m.epoch > row.epochs {
            return Err(StoreError::Invalid(format!(
                "epoch: {} is past the job's last epoch ({})",
                m.epoch, row.epochs
            )));
        }
        Ok(row.sweep_id)
    }

    /// Ends an attempt. `completed`, `diverged` and `cancelled` end the job; `failed` sends it back to
    /// pending (the next claim takes the next attempt) unless it has used all of them. A repeated
    /// finish is a no-op.
    pub async fn finish(
        &self,
        job: i64,
        attempt: i64,
        outcome: &str,
        summary: Option<&Value>,
        error: Option<&str>,
        now: i64,
    ) -> Result<JobChange> {
        let summary = summary.map(Value::to_string);
        let (outcome_s, error_s) = (outcome.to_string(), error.map(str::to_string));
        let row = self.writer.run(move |c| async move { let (outcome, error) = (outcome_s, error_s); Ok(sqlx::query!(
            // `failed` with attempts left goes back to pending, unless the job's sweep was cancelled
            // meanwhile: then it ends cancelled (a retry would run a cancelled job).
            r#"UPDATE jobs SET
                 status = CASE WHEN ?3 = 'failed' AND attempt < max_attempts AND cancel_requested = 0 THEN 'pending'
                               WHEN ?3 = 'failed' AND cancel_requested = 1 THEN 'cancelled'
                               ELSE ?3 END,
                 finished_at = CASE WHEN ?3 = 'failed' AND attempt < max_attempts AND cancel_requested = 0 THEN NULL
                                    ELSE ?4 END,
                 summary = coalesce(?5, summary),
                 error = coalesce(?6, error),
                 worker = CASE WHEN ?3 = 'failed' AND attempt < max_attempts AND cancel_requested = 0 THEN NULL
                               ELSE worker END,
                 lease_expires_at = NULL,
                 attempt_ended_at = ?4, attempt_outcome = ?3, attempt_error = ?6
               WHERE id = ?1 AND attempt = ?2 AND status = 'running'
               RETURNING sweep_id AS "sweep_id!", status AS "status!", attempt AS "attempt!""#,
            job,
            attempt,
            outcome,
            now,
            summary,
            error
        )
        .fetch_optional(&mut *c)
        .await?) }.boxed())
        .await?;
        if let Some(row) = row {
            return Ok(JobChange {
                job_id: job,
                sweep_id: row.sweep_id,
                status: row.status,
                attempt: row.attempt,
            });
        }
        // Idempotent: the same attempt finishing the same way again changes nothing.
        let done = sqlx::query!(
            r#"SELECT a.outcome AS "outcome?", j.sweep_id, j.status, j.attempt FROM attempts a JOIN jobs j ON j.id = a.job_id
               WHERE a.job_id = ? AND a.attempt = ?"#,
            job,
            attempt
        )
        .fetch_optional(&self.read)
        .await?;
        match done {
            Some(d) if d.outcome.as_deref() == Some(outcome) => Ok(JobChange {
                job_id: job,
                sweep_id: d.sweep_id,
                status: d.status,
                attempt: d.attempt,
            }),
            _ => Err(self.fence_error(job, attempt).await),
        }
    }

    /// Gives a running job back without counting it as a failure (a worker shutting down after a
    /// checkpoint): pending again with the next attempt, and one more attempt allowed.
    pub async fn release(
        &self,
        job: i64,
        attempt: i64,
        reason: &str,
        now: i64,
    ) -> Result<JobChange> {
        let reason = reason.to_string();
        let row = self
            .writer
            .run(move |c| {
                async move {
                    Ok(sqlx::query!(
                        // Released after a cancel: the job ends cancelled instead of waiting for a claim.
                        r#"UPDATE jobs SET
                             status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'pending' END,
                             max_attempts = CASE WHEN cancel_requested = 1 THEN max_attempts ELSE max_attempts + 1 END,
                             finished_at = CASE WHEN cancel_requested = 1 THEN ?3 ELSE finished_at END,
                             worker = CASE WHEN cancel_requested = 1 THEN worker END,
                             lease_expires_at = NULL,
                             attempt_ended_at = ?3, attempt_outcome = 'released', attempt_error = ?4
                           WHERE id = ?1 AND attempt = ?2 AND status = 'running'
                           RETURNING sweep_id AS "sweep_id!", status AS "status!", attempt AS "attempt!""#,
                        job,
                        attempt,
                        now,
                        reason
                    )
                    .fetch_optional(&mut *c)
                    .await?)
                }
                .boxed()
            })
            .await?;
        match row {
            Some(r) => Ok(JobChange {
                job_id: job,
                sweep_id: r.sweep_id,
                status: r.status,
                attempt: r.attempt,
            }),
            None => Err(self.fence_error(job, attempt).await),
        }
    }

    /// Ok when `attempt` holds `job` now (for writes outside the database, like checkpoint files).
    pub async fn check_fence(&self, job: i64, attempt: i64) -> Result<()> {
        let row = sqlx::query!("SELECT status, attempt FROM jobs WHERE id = ?", job)
            .fetch_optional(&self.read)
            .await?;
        match row {
            Some(r) if r.attempt == attempt && r.status == "running" => Ok(()),
            _ => Err(self.fence_error(job, attempt).await),
        }
    }

    pub async fn job_exists(&self, job: i64) -> Result<bool> {
        Ok(sqlx::query_scalar!("SELECT id FROM jobs WHERE id = ?", job)
            .fetch_optional(&self.read)
            .await?
            .is_some())
    }

    /// Returns every running job whose lease ran out before `now` to pending (its next claim takes the
    /// next attempt), or fails it when it has used all its attempts.
    pub async fn requeue_expired(&self, now: i64) -> Result<Vec<JobChange>> {
        let rows = self.writer.run(move |c| async move { Ok(sqlx::query!(
            // A cancelled job whose worker vanished ends cancelled, not pending or failed.
            r#"UPDATE jobs SET
                 status = CASE WHEN cancel_requested = 1 THEN 'cancelled'
                               WHEN attempt < max_attempts THEN 'pending'
                               ELSE 'failed' END,
                 error = CASE WHEN cancel_requested = 1 THEN 'cancelled; its worker stopped heartbeating'
                              WHEN attempt < max_attempts THEN error
                              ELSE 'lease expired on attempt ' || attempt || ' of ' || max_attempts || ' (worker ' || coalesce(worker, '?') || ' stopped heartbeating)' END,
                 finished_at = CASE WHEN attempt < max_attempts AND cancel_requested = 0 THEN NULL ELSE ?1 END,

                 worker = NULL, lease_expires_at = NULL,
                 attempt_ended_at = ?1, attempt_outcome = 'lease expired',
                 attempt_error = 'no heartbeat before the lease ran out'
               WHERE status = 'running' AND lease_expires_at < ?1
               RETURNING id AS "id!", sweep_id AS "sweep_id!", status AS "status!", attempt AS "attempt!""#,
            now
        )
        .fetch_all(&mut *c)
        .await?) }.boxed())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| JobChange {
                job_id: r.id,
                sweep_id: r.sweep_id,
                status: r.status,
                attempt: r.attempt,
            })
            .collect())
    }

    /// Cancels pending jobs at once; running ones learn it on their next heartbeat.
    pub async fn cancel_sweep(&self, sweep: i64, now: i64) -> Result<Vec<JobChange>> {
        let rows = self
            .writer
            .run(move |c| {
                async move {
                    let found = sqlx::query!("UPDATE sweeps SET cancelled_at = coalesce(cancelled_at, ?) WHERE id = ?", now, sweep)
                        .execute(&mut *c)
                        .await?;
                    if found.rows_affected() == 0 {
                        return Err(StoreError::NotFound(format!("sweep {sweep}")));
                    }
                    let rows = sqlx::query!(
                        r#"UPDATE jobs SET status = 'cancelled', finished_at = ?, error = 'cancelled before it started'
                           WHERE sweep_id = ? AND status = 'pending'
                           RETURNING id AS "id!", attempt AS "attempt!""#,
                        now,
                        sweep
                    )
                    .fetch_all(&mut *c)
                    .await?;
                    sqlx::query!("UPDATE jobs SET cancel_requested = 1 WHERE sweep_id = ? AND status = 'running'", sweep)
                        .execute(&mut *c)
                        .await?;
                    Ok(rows)
                }
                .boxed()
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| JobChange {
                job_id: r.id,
                sweep_id: sweep,
                status: "cancelled".into(),
                attempt: r.attempt,
            })
            .collect())
    }

    pub async fn list_sweeps(&self) -> Result<Vec<SweepRow>> {
        self.sweeps(None).await
    }

    /// All sweeps, or only `only`: one query either way, so a single sweep costs a single sweep.
    async fn sweeps(&self, only: Option<i64>) -> Result<Vec<SweepRow>> {
        let rows = sqlx::query!(
            r#"SELECT s.id AS "id!", s.name, s.created_at, s.cancelled_at,
                 count(j.id) AS "total!: i64",
                 coalesce(sum(j.status = 'pending'), 0) AS "pending!: i64",
                 coalesce(sum(j.status = 'running'), 0) AS "running!: i64",
                 coalesce(sum(j.status = 'completed'), 0) AS "completed!: i64",
                 coalesce(sum(j.status = 'diverged'), 0) AS "diverged!: i64",
                 coalesce(sum(j.status = 'failed'), 0) AS "failed!: i64",
                 coalesce(sum(j.status = 'cancelled'), 0) AS "cancelled!: i64",
                 (SELECT max(m.accuracy) FROM metrics m JOIN jobs j2 ON j2.id = m.job_id WHERE j2.sweep_id = s.id
                    AND m.epoch = j2.epoch) AS "best_accuracy: f64"
               FROM sweeps s LEFT JOIN jobs j ON j.sweep_id = s.id
               WHERE ?1 IS NULL OR s.id = ?1
               GROUP BY s.id ORDER BY s.id DESC"#,
            only
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| SweepRow {
                status: sweep_status(r.cancelled_at.is_some(), r.pending, r.running, r.total),
                id: r.id,
                name: r.name,
                created_at: r.created_at,
                total: r.total,
                pending: r.pending,
                running: r.running,
                completed: r.completed,
                diverged: r.diverged,
                failed: r.failed,
                cancelled: r.cancelled,
                best_accuracy: r.best_accuracy,
            })
            .collect())
    }

    /// Scale testing (`server synth`): gives every job of `sweep` `epochs` epochs of made-up
    /// metrics and marks it completed, in one statement per table (millions of rows in seconds).
    pub async fn fill_synthetic(&self, sweep: i64, epochs: i64, now: i64) -> Result<u64> {
        self.writer
            .run(move |c| {
                async move {
                    let n = sqlx::query!(
                        r#"WITH RECURSIVE e(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM e WHERE n < ?2)
                           INSERT INTO metrics (job_id, sweep_id, epoch, attempt, lr, train_loss, test_loss, accuracy,
                                                precision, recall, f1, images_per_sec, seconds, recorded_at)
                           SELECT j.id, j.sweep_id, e.n, 1, json_extract(j.params, '$.lr'),
                                  2.3 * 30.0 / (30.0 + e.n), 2.3 * 35.0 / (35.0 + e.n),
                                  0.1 + 0.8 * e.n / (e.n + 30.0) * (0.85 + 0.15 * ((j.id * 7919) % 100) / 100.0),
                                  0.5, 0.5, 0.5, 1000.0, 30.0, ?3
                           FROM jobs j, e WHERE j.sweep_id = ?1"#,
                        sweep,
                        epochs,
                        now
                    )
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                    sqlx::query!(
                        "UPDATE jobs SET status = 'completed', attempt = 1, finished_at = ?2, worker = 'synth' WHERE sweep_id = ?1",
                        sweep,
                        now
                    )
                    .execute(&mut *c)
                    .await?;
                    Ok(n)
                }
                .boxed()
            })
            .await
    }

    /// A sweep's summary row (no jobs); NotFound if there is no such sweep.
    pub async fn get_sweep_row(&self, sweep: i64) -> Result<SweepRow> {
        self.sweeps(Some(sweep))
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("sweep {sweep}")))
    }

    pub async fn get_sweep(&self, sweep: i64) -> Result<SweepDetail> {
        self.sweep_detail(sweep, true).await
    }

    /// A sweep with its spec; its jobs too unless `with_jobs` is false (the dashboard pages them).
    pub async fn sweep_detail(&self, sweep: i64, with_jobs: bool) -> Result<SweepDetail> {
        let s = sqlx::query!("SELECT spec FROM sweeps WHERE id = ?", sweep)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("sweep {sweep}")))?;
        let row = self
            .sweeps(Some(sweep))
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("sweep {sweep}")))?;
        let jobs = if with_jobs {
            self.jobs_of(sweep, None).await?
        } else {
            vec![]
        };
        Ok(SweepDetail {
            sweep: row,
            spec: serde_json::from_str(&s.spec).unwrap_or(Value::Null),
            jobs,
        })
    }

    /// The jobs of a sweep in grid order (or only job `only`), each with its latest epoch's metrics.
    async fn jobs_of(&self, sweep: i64, only: Option<i64>) -> Result<Vec<JobRow>> {
        let rows = sqlx::query_as!(
            JobSql,
            r#"SELECT j.id AS "id!", j.sweep_id, j.params, j.status, j.attempt, j.max_attempts, j.epoch, j.epochs,
                      j.worker, j.error, j.summary, j.started_at, j.finished_at,
                      m.epoch AS "m_epoch?", m.attempt AS "m_attempt?", m.lr, m.train_loss, m.test_loss, m.accuracy,
                      m.precision, m.recall, m.f1, m.images_per_sec, m.seconds
               FROM jobs j LEFT JOIN metrics m ON m.job_id = j.id AND m.epoch = j.epoch
               WHERE j.sweep_id = ?1 AND (?2 IS NULL OR j.id = ?2) ORDER BY j.idx"#,
            sweep,
            only
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(JobRow::from).collect())
    }

    /// One page of a sweep's jobs, filtered and sorted in SQL so a 10,000-job sweep costs one page.
    pub async fn jobs_page(&self, sweep: i64, q: &JobQuery) -> Result<JobPage> {
        self.get_sweep_row(sweep).await?;
        let status = q.status.as_deref().filter(|s| !s.is_empty());
        let text = q.q.as_deref().filter(|s| !s.is_empty());
        let sort = q.sort.as_deref().unwrap_or("idx");
        let desc = q.desc as i64;
        let limit = if q.limit <= 0 { 50 } else { q.limit.min(500) };
        let offset = q.offset.max(0);
        let total = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!: i64" FROM jobs j
               WHERE j.sweep_id = ?1 AND (?2 IS NULL OR j.status = ?2)
                 AND (?3 IS NULL OR j.params LIKE '%' || ?3 || '%' OR coalesce(j.worker, '') LIKE '%' || ?3 || '%')"#,
            sweep,
            status,
            text
        )
        .fetch_one(&self.read)
        .await?;
        // The sort key is chosen by CASE so the statement stays one compile-checked query; unknown
        // keys fall back to grid order.
        let rows = sqlx::query_as!(
            JobSql,
            r#"SELECT j.id AS "id!", j.sweep_id, j.params, j.status, j.attempt, j.max_attempts, j.epoch, j.epochs,
                      j.worker, j.error, j.summary, j.started_at, j.finished_at,
                      m.epoch AS "m_epoch?", m.attempt AS "m_attempt?", m.lr, m.train_loss, m.test_loss, m.accuracy,
                      m.precision, m.recall, m.f1, m.images_per_sec, m.seconds
               FROM jobs j LEFT JOIN metrics m ON m.job_id = j.id AND m.epoch = j.epoch
               WHERE j.sweep_id = ?1 AND (?2 IS NULL OR j.status = ?2)
                 AND (?3 IS NULL OR j.params LIKE '%' || ?3 || '%' OR coalesce(j.worker, '') LIKE '%' || ?3 || '%')
               ORDER BY
                 CASE WHEN ?5 = 0 THEN (CASE ?4
                   WHEN 'batch_size' THEN json_extract(j.params, '$.batch_size') WHEN 'lr' THEN json_extract(j.params, '$.lr')
                   WHEN 'status' THEN j.status WHEN 'attempt' THEN j.attempt WHEN 'epoch' THEN j.epoch
                   WHEN 'test_loss' THEN m.test_loss WHEN 'train_loss' THEN m.train_loss WHEN 'accuracy' THEN m.accuracy
                   WHEN 'images_per_sec' THEN m.images_per_sec WHEN 'worker' THEN j.worker ELSE j.idx END) END ASC,
                 CASE WHEN ?5 = 1 THEN (CASE ?4
                   WHEN 'batch_size' THEN json_extract(j.params, '$.batch_size') WHEN 'lr' THEN json_extract(j.params, '$.lr')
                   WHEN 'status' THEN j.status WHEN 'attempt' THEN j.attempt WHEN 'epoch' THEN j.epoch
                   WHEN 'test_loss' THEN m.test_loss WHEN 'train_loss' THEN m.train_loss WHEN 'accuracy' THEN m.accuracy
                   WHEN 'images_per_sec' THEN m.images_per_sec WHEN 'worker' THEN j.worker ELSE j.idx END) END DESC,
                 j.idx
               LIMIT ?6 OFFSET ?7"#,
            sweep,
            status,
            text,
            sort,
            desc,
            limit,
            offset
        )
        .fetch_all(&self.read)
        .await?;
        Ok(JobPage {
            total,
            offset,
            jobs: rows.into_iter().map(JobRow::from).collect(),
        })
    }

    /// The batch size x lr grid of a sweep: per cell its jobs, how many diverged, the best final
    /// (or latest) accuracy. Jobs that leave a key out run with the trainer's default.
    pub async fn grid(&self, sweep: i64) -> Result<Vec<GridCell>> {
        let (bs, lr) = (crate::spec::DEFAULT_BATCH_SIZE, crate::spec::DEFAULT_LR);
        Ok(sqlx::query_as!(
            GridCell,
            r#"SELECT coalesce(json_extract(j.params, '$.batch_size'), ?2) AS "batch_size!: i64",
                      coalesce(json_extract(j.params, '$.lr'), ?3) AS "lr!: f64",
                      count(*) AS "jobs!: i64",
                      sum(j.status = 'completed') AS "completed!: i64",
                      sum(j.status = 'diverged') AS "diverged!: i64",
                      sum(j.status = 'running') AS "running!: i64",
                      max(m.accuracy) AS "accuracy: f64",
                      max(j.epoch) AS "epoch!: i64", max(j.epochs) AS "epochs!: i64"
               FROM jobs j LEFT JOIN metrics m ON m.job_id = j.id AND m.epoch = j.epoch
               WHERE j.sweep_id = ?1 GROUP BY 1, 2 ORDER BY 1, 2"#,
            sweep,
            bs,
            lr
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// Learning curves at one lr, one line per batch size (its first job), at most about `points`
    /// epochs per line (every k-th epoch, plus the first and the latest).
    pub async fn curves(&self, sweep: i64, lr: f64, points: i64) -> Result<Vec<Series>> {
        let (dbs, dlr) = (crate::spec::DEFAULT_BATCH_SIZE, crate::spec::DEFAULT_LR);
        let epochs = sqlx::query_scalar!(
            r#"SELECT max(epochs) AS "n: i64" FROM jobs WHERE sweep_id = ?"#,
            sweep
        )
        .fetch_one(&self.read)
        .await?
        .unwrap_or(1);
        let stride = (epochs + points.max(2) - 1) / points.max(2);
        let rows = sqlx::query!(
            r#"WITH reps AS (
                 SELECT min(j.id) AS job_id, coalesce(json_extract(j.params, '$.batch_size'), ?3) AS bs
                 FROM jobs j
                 WHERE j.sweep_id = ?1 AND abs(coalesce(json_extract(j.params, '$.lr'), ?4) - ?2) <= 1e-9 * abs(?2)
                 GROUP BY bs)
               SELECT r.bs AS "batch_size!: i64", r.job_id AS "job_id!: i64", j.status, m.epoch, m.lr,
                      m.train_loss, m.test_loss, m.accuracy
               FROM reps r JOIN jobs j ON j.id = r.job_id JOIN metrics m ON m.job_id = r.job_id
               WHERE m.epoch % ?5 = 0 OR m.epoch = 1 OR m.epoch = j.epoch
               ORDER BY r.bs, m.epoch"#,
            sweep,
            lr,
            dbs,
            dlr,
            stride
        )
        .fetch_all(&self.read)
        .await?;
        let mut out: Vec<Series> = Vec::new();
        for r in rows {
            if out.last().is_none_or(|s| s.job_id != r.job_id) {
                out.push(Series {
                    batch_size: r.batch_size,
                    job_id: r.job_id,
                    status: r.status.clone(),
                    ..Default::default()
                });
            }
            let s = out.last_mut().expect("pushed above");
            s.epoch.push(r.epoch);
            s.lr.push(r.lr);
            s.train_loss.push(r.train_loss);
            s.test_loss.push(r.test_loss);
            s.accuracy.push(r.accuracy);
        }
        Ok(out)
    }

    pub async fn get_job(&self, job: i64) -> Result<JobDetail> {
        let sweep = sqlx::query_scalar!("SELECT sweep_id FROM jobs WHERE id = ?", job)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("job {job}")))?;
        let row = self
            .jobs_of(sweep, Some(job))
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("job {job}")))?;
        let metrics = sqlx::query_as!(
            MetricsReport,
            "SELECT epoch, attempt, lr, train_loss, test_loss, accuracy, precision, recall, f1, images_per_sec, seconds
             FROM metrics WHERE job_id = ? ORDER BY epoch",
            job
        )
        .fetch_all(&self.read)
        .await?;
        let mut attempts = sqlx::query_as!(
            AttemptRow,
            "SELECT attempt, worker, started_at, ended_at, outcome, error FROM attempts WHERE job_id = ? ORDER BY attempt",
            job
        )
        .fetch_all(&self.read)
        .await?;
        // The running attempt lives in the job row until it ends.
        if row.status == "running" {
            let claimed_at = sqlx::query_scalar!("SELECT claimed_at FROM jobs WHERE id = ?", job)
                .fetch_one(&self.read)
                .await?;
            attempts.push(AttemptRow {
                attempt: row.attempt,
                worker: row.worker.clone().unwrap_or_default(),
                started_at: claimed_at.unwrap_or_default(),
                ended_at: None,
                outcome: None,
                error: None,
            });
        }
        Ok(JobDetail {
            job: row,
            metrics,
            attempts,
        })
    }

    /// Every recorded epoch of a sweep as (job id, epoch, lr, train loss, test loss, accuracy), for figures.
    /// The epochs of these jobs only (by primary key), for figures.
    pub async fn job_curves(&self, jobs: &[i64]) -> Result<Vec<CurvePoint>> {
        let mut all = vec![];
        for &job in jobs {
            let rows = sqlx::query_as!(
                CurvePoint,
                "SELECT job_id, epoch, lr, train_loss, test_loss, accuracy
                 FROM metrics
                 WHERE job_id = ?
                 ORDER BY epoch",
                job
            )
            .fetch_all(&self.read)
            .await?;
            all.extend(rows);
        }
        Ok(all)
    }

    pub async fn sweep_curves(&self, sweep: i64) -> Result<Vec<CurvePoint>> {
        Ok(sqlx::query_as!(
            CurvePoint,
            "SELECT job_id, epoch, lr, train_loss, test_loss, accuracy FROM metrics WHERE sweep_id = ? ORDER BY job_id, epoch",
            sweep
        )
        .fetch_all(&self.read)
        .await?)
    }

    pub async fn job_counts(&self) -> Result<Map<String, Value>> {
        let rows =
            sqlx::query!(r#"SELECT status, count(*) AS "n!: i64" FROM jobs GROUP BY status"#)
                .fetch_all(&self.read)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.status, Value::from(r.n)))
            .collect())
    }
}
