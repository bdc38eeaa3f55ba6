//! Early stopping's transition: a running job judged on its epoch's report, and the stop flag it
//! sets (`stop_requested`, never cleared). The flag reaches the worker in the metrics reply and in
//! every heartbeat; however the attempt then ends (finish, release, lease expiry), the job ends
//! `pruned` (see [`lease`](super::lease)). The rules themselves are in [`crate::sweep::early_stop`].
use super::*;
use crate::sweep::early_stop::{self, EarlyStop, Method};
use protocol::MetricsReport;

impl Store {
    /// Whether the job has been told to stop.
    pub async fn stop_requested(&self, job: i64) -> Result<bool> {
        let flag = sqlx::query_scalar!("SELECT stop_requested FROM jobs WHERE id = ?", job)
            .fetch_optional(&self.read)
            .await?;
        Ok(flag.unwrap_or(0) != 0)
    }

    /// The rule of the sweep `job` belongs to, if it has one (None also for no such job: the
    /// metrics write then says why).
    pub async fn early_stop_rule_of_job(&self, job: i64) -> Result<Option<EarlyStop>> {
        let text = sqlx::query_scalar!(
            "SELECT s.early_stop FROM jobs j JOIN sweeps s ON s.id = j.sweep_id WHERE j.id = ?",
            job
        )
        .fetch_optional(&self.read)
        .await?
        .flatten();
        text.as_deref()
            .map(EarlyStop::from_stored)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("sweep of job {job}: {e}")))
    }

    /// Stores one epoch's metrics (as [`Store::record_metrics`]) and judges the job on them, in
    /// one transaction: the decision costs no second trip through the writer. `value` is the
    /// rule's metric in `m`. Returns the sweep and whether the job is to stop (now or before).
    pub async fn record_and_judge(
        &self,
        job: i64,
        m: &MetricsReport,
        now: i64,
        value: f64,
        rule: EarlyStop,
    ) -> Result<(i64, bool)> {
        let report = m.clone();
        let done = self
            .writer
            .run_many(move |c| {
                async move {
                    let Some(sweep) = super::lease::insert_metrics(c, job, &report, now).await?
                    else {
                        return Ok(None);
                    };
                    let stop = judge_in(c, job, sweep, report.epoch, value, &rule).await?;
                    Ok(Some((sweep, stop)))
                }
                .boxed()
            })
            .await?;
        match done {
            Some(done) => Ok(done),
            // A repeated epoch (judged when it first came) or an error: as record_metrics says.
            None => {
                let sweep = self.metrics_not_stored(job, m).await?;
                Ok((sweep, self.stop_requested(job).await?))
            }
        }
    }
}

/// Judges a running job on its report of `epoch` and sets the stop flag when it is to stop; true
/// when it is to stop (decided now or before). Inside the caller's transaction, so two reports
/// arriving together are judged one after the other, each seeing the other's rung value.
async fn judge_in(
    c: &mut SqliteConnection,
    job: i64,
    sweep: i64,
    epoch: i64,
    value: f64,
    rule: &EarlyStop,
) -> Result<bool> {
    let row = sqlx::query!("SELECT status, stop_requested FROM jobs WHERE id = ?", job)
        .fetch_optional(&mut *c)
        .await?;
    let Some(row) = row else {
        return Err(StoreError::NotFound(format!("job {job}")));
    };
    if row.stop_requested != 0 || row.status != JobStatus::Running.as_str() {
        return Ok(row.stop_requested != 0);
    }
    let stop = match rule.method {
        Method::Asha { reduction_factor } => {
            asha(c, rule, job, sweep, epoch, value, reduction_factor).await?
        }
        Method::Median { startup_trials } => {
            median(c, rule, job, sweep, epoch, startup_trials).await?
        }
    };
    if stop {
        sqlx::query!(
            "UPDATE jobs SET stop_requested = 1 WHERE id = ? AND status = 'running'",
            job
        )
        .execute(&mut *c)
        .await?;
    }
    Ok(stop)
}

/// Successive halving: records the job's value at each rung its epoch has reached (its next rung
/// is the number it has recorded), and stops it at the first rung where it is not in the top.
async fn asha(
    c: &mut SqliteConnection,
    rule: &EarlyStop,
    job: i64,
    sweep: i64,
    epoch: i64,
    value: f64,
    eta: i64,
) -> Result<bool> {
    let mut rung = sqlx::query_scalar!("SELECT count(*) FROM rungs WHERE job_id = ?", job)
        .fetch_one(&mut *c)
        .await?;
    let max = rule.mode == early_stop::Mode::Max;
    loop {
        let Some(at) = u32::try_from(rung).ok().and_then(|k| rule.rung_epoch(k)) else {
            return Ok(false);
        };
        if epoch < at {
            return Ok(false);
        }
        sqlx::query!(
            "INSERT INTO rungs (job_id, sweep_id, rung, value) VALUES (?, ?, ?, ?)
             ON CONFLICT (job_id, rung) DO NOTHING",
            job,
            sweep,
            rung,
            value
        )
        .execute(&mut *c)
        .await?;
        // Every value at the rung, this one included (a diverged job's left by trigger), and how
        // many are better than this one: one scan of the covering index, no table row read.
        let counts = sqlx::query!(
            r#"SELECT count(*) AS "n!: i64",
                      coalesce(sum(CASE WHEN ?3 THEN value > ?4 ELSE value < ?4 END), 0) AS "better!: i64"
               FROM rungs
               WHERE sweep_id = ?1
                 AND rung = ?2"#,
            sweep,
            rung,
            max,
            value
        )
        .fetch_one(&mut *c)
        .await?;
        if !early_stop::goes_on(counts.n as usize, counts.better as usize, eta) {
            return Ok(true);
        }
        rung += 1;
    }
}

/// The median rule: the job's best value so far against the median, at this epoch, of the sweep's
/// completed jobs.
async fn median(
    c: &mut SqliteConnection,
    rule: &EarlyStop,
    job: i64,
    sweep: i64,
    epoch: i64,
    startup_trials: i64,
) -> Result<bool> {
    if epoch < rule.min_epochs {
        return Ok(false);
    }
    let completed = sqlx::query_scalar!(
        "SELECT count(*) FROM jobs WHERE sweep_id = ? AND status = 'completed'",
        sweep
    )
    .fetch_one(&mut *c)
    .await?;
    if completed == 0 || completed < startup_trials {
        return Ok(false);
    }
    let (metric, max) = (rule.metric.as_str(), rule.mode == early_stop::Mode::Max);
    // The metric is a column chosen by name: one CASE over the columns, bound as a parameter; a
    // command's own metric is read from `extra` (its name is checked to need no quoting).
    let best = sqlx::query_scalar!(
        r#"SELECT CASE WHEN ?2 THEN max(v) ELSE min(v) END AS "best: f64"
           FROM (SELECT CASE ?3 WHEN 'accuracy' THEN accuracy WHEN 'test_loss' THEN test_loss
                                WHEN 'train_loss' THEN train_loss WHEN 'precision' THEN precision
                                WHEN 'recall' THEN recall WHEN 'f1' THEN f1 WHEN 'lr' THEN lr
                                WHEN 'images_per_sec' THEN images_per_sec WHEN 'seconds' THEN seconds
                                ELSE json_extract(extra, '$."' || ?3 || '"') END AS v
                 FROM metrics
                 WHERE job_id = ?1)"#,
        job,
        max,
        metric
    )
    .fetch_one(&mut *c)
    .await?;
    let at_epoch = sqlx::query_scalar!(
        r#"SELECT CASE ?3 WHEN 'accuracy' THEN m.accuracy WHEN 'test_loss' THEN m.test_loss
                          WHEN 'train_loss' THEN m.train_loss WHEN 'precision' THEN m.precision
                          WHEN 'recall' THEN m.recall WHEN 'f1' THEN m.f1 WHEN 'lr' THEN m.lr
                          WHEN 'images_per_sec' THEN m.images_per_sec WHEN 'seconds' THEN m.seconds
                          ELSE json_extract(m.extra, '$."' || ?3 || '"') END AS "v: f64"
           FROM jobs j
           JOIN metrics m ON m.job_id = j.id AND m.epoch = ?2
           WHERE j.sweep_id = ?1
             AND j.status = 'completed'"#,
        sweep,
        epoch,
        metric
    )
    .fetch_all(&mut *c)
    .await?;
    Ok(match (best, early_stop::median(&at_epoch)) {
        (Some(best), Some(threshold)) => early_stop::below_median(rule, best, threshold),
        _ => false,
    })
}
