//! Ask and tell: an external sweep's trials taken by the caller's own loop (the take itself is the
//! claim's, scoped to the sweep: see [`super::lease`]), and a told value written where the trial's
//! last epoch is.
use super::*;

/// An external sweep's jobs that are not over: what tells "nothing to ask now" from "done".
#[derive(Debug, Clone, Copy)]
pub struct Open {
    pub pending: i64,
    pub running: i64,
    pub cancelled: bool,
}

impl Store {
    /// The sweep's pending and running jobs, from the counts kept per sweep (one row).
    pub async fn open_jobs(&self, sweep: i64) -> Result<Open> {
        let row = sqlx::query!(
            r#"SELECT c.pending AS "pending!: i64", c.running AS "running!: i64",
                      s.cancelled_at IS NOT NULL AS "cancelled!: bool"
               FROM sweeps s JOIN sweep_counts c ON c.sweep_id = s.id WHERE s.id = ?"#,
            sweep
        )
        .fetch_optional(&self.worker_read)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("sweep {sweep}")))?;
        Ok(Open {
            pending: row.pending,
            running: row.running,
            cancelled: row.cancelled,
        })
    }

    /// The sweep a job belongs to.
    pub async fn sweep_of_job(&self, job: i64) -> Result<i64> {
        sqlx::query_scalar!("SELECT sweep_id FROM jobs WHERE id = ?", job)
            .fetch_optional(&self.worker_read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("job {job}")))
    }

    /// A told trial's values, merged into its last reported epoch (epoch 1 when it reported none):
    /// what it reported there stays, the told metrics replace theirs. Fenced by attempt like every
    /// worker write; the same tell again writes the same values.
    pub async fn tell_values(&self, job: i64, m: &MetricsReport, now: i64) -> Result<i64> {
        let extra = (!m.extra.is_empty())
            .then(|| serde_json::to_string(&m.extra).expect("a map of numbers serialises"));
        let m2 = m.clone();
        let stored = self
            .writer
            .run(move |one| {
                async move {
                    let m = m2;
                    Ok(one.fetch_optional_scalar(sqlx::query_scalar!(
                        r#"INSERT INTO metrics (job_id, sweep_id, epoch, attempt, lr, train_loss, test_loss, accuracy, precision,
                                                recall, f1, images_per_sec, seconds, recorded_at, extra)
                           SELECT id, sweep_id, max(epoch, 1), ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13 FROM jobs
                           WHERE id = ?1 AND attempt = ?2 AND status = 'running'
                           ON CONFLICT (job_id, epoch) DO UPDATE SET
                              attempt = excluded.attempt, lr = coalesce(excluded.lr, metrics.lr),
                              train_loss = coalesce(excluded.train_loss, metrics.train_loss),
                              test_loss = coalesce(excluded.test_loss, metrics.test_loss),
                              accuracy = coalesce(excluded.accuracy, metrics.accuracy),
                              precision = coalesce(excluded.precision, metrics.precision),
                              recall = coalesce(excluded.recall, metrics.recall), f1 = coalesce(excluded.f1, metrics.f1),
                              images_per_sec = coalesce(excluded.images_per_sec, metrics.images_per_sec),
                              seconds = coalesce(excluded.seconds, metrics.seconds), recorded_at = excluded.recorded_at,
                              extra = CASE WHEN excluded.extra IS NULL THEN metrics.extra
                                           ELSE json_patch(coalesce(metrics.extra, '{}'), excluded.extra) END
                           WHERE excluded.attempt >= metrics.attempt
                           RETURNING sweep_id AS "sweep_id!""#,
                        job,
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
                        now,
                        extra
                    ))
                    .await?)
                }
                .boxed()
            })
            .await?;
        match stored {
            Some(sweep) => Ok(sweep),
            None => Err(self.fence_error(job, m.attempt).await),
        }
    }
}
