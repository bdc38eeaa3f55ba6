//! Early stopping's transition: a running job judged on its epoch's report, and the stop flag it
//! sets (`stop_requested`, never cleared). The flag reaches the worker in the metrics reply and in
//! every heartbeat; however the attempt then ends (finish, release, lease expiry), the job ends
//! `pruned` (see [`lease`](super::lease)). The rules themselves are in [`crate::sweep::early_stop`].
use super::ranks::{Ranks, SweepRanks};
use super::*;
use crate::sweep::early_stop::{self, EarlyStop, MaxEpochs, Method};
use protocol::MetricsReport;

impl Store {
    /// Whether the job has been told to stop.
    pub async fn stop_requested(&self, job: i64) -> Result<bool> {
        let flag = sqlx::query_scalar!("SELECT stop_requested FROM jobs WHERE id = ?", job)
            .fetch_optional(&self.worker_read)
            .await?;
        Ok(flag.unwrap_or(0) != 0)
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
        let ranks = self.ranks.clone();
        let done = self
            .writer
            .run_many(move |c| {
                async move {
                    let Some(sweep) =
                        super::lease::insert_metrics(One::within(&mut *c), job, &report, now)
                            .await?
                    else {
                        return Ok(None);
                    };
                    let judged = Judged {
                        job,
                        sweep,
                        epoch: report.epoch,
                        value,
                    };
                    let stop = judge_in(c, &ranks, judged, &rule).await?;
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

/// One report to judge: the job, its sweep, the epoch and the rule's metric in it.
#[derive(Debug, Clone, Copy)]
struct Judged {
    job: i64,
    sweep: i64,
    epoch: i64,
    value: f64,
}

/// Judges a running job on its report of `epoch` and sets the stop flag when it is to stop; true
/// when it is to stop (decided now or before). Inside the caller's transaction, so two reports
/// arriving together are judged one after the other, each seeing the other's rung value.
async fn judge_in(
    c: &mut SqliteConnection,
    ranks: &Ranks,
    r: Judged,
    rule: &EarlyStop,
) -> Result<bool> {
    let row = sqlx::query!(
        "SELECT status, stop_requested FROM jobs WHERE id = ?",
        r.job
    )
    .fetch_optional(&mut *c)
    .await?;
    let Some(row) = row else {
        return Err(StoreError::NotFound(format!("job {}", r.job)));
    };
    if row.stop_requested != 0 || row.status != JobStatus::Running.as_str() {
        return Ok(row.stop_requested != 0);
    }
    let stop = match rule.method {
        Method::Asha { reduction_factor } => {
            let plain = Bracket { rate: 0, key: 0 };
            asha(c, ranks, rule, r, reduction_factor, plain).await?
        }
        Method::Hyperband {
            reduction_factor,
            max_epochs,
        } => match bracket(c, rule, r, reduction_factor, max_epochs).await? {
            Some(b) => asha(c, ranks, rule, r, reduction_factor, b).await?,
            None => false,
        },
        Method::Median { startup_trials } => median(c, ranks, rule, r, startup_trials).await?,
    };
    if stop {
        sqlx::query!(
            "UPDATE jobs SET stop_requested = 1 WHERE id = ? AND status = 'running'",
            r.job
        )
        .execute(&mut *c)
        .await?;
    }
    Ok(stop)
}

/// Which successive halving a job is in: ASHA's one, or a Hyperband bracket's.
#[derive(Debug, Clone, Copy)]
struct Bracket {
    /// Optuna's `min_early_stopping_rate`: the bracket's first rung is `min_epochs * eta^rate`.
    rate: u32,
    /// Added to the rung number where it is stored (`rungs.rung` and the in-memory rungs), so
    /// each bracket's rungs hold only its own jobs' values: `rate * BRACKET_RUNGS`.
    key: i64,
}

/// Room for a bracket's rungs in the stored rung number (a job has at most
/// log2(MAX_EPOCHS) + 1 rungs).
const BRACKET_RUNGS: i64 = 1000;

/// Hyperband: the job's bracket as Optuna draws it (`early_stop::bracket_of`), once the largest
/// resource is known; None when nothing is to be judged yet ("auto" before a job completed) or ever
/// (no bracket: `max_epochs` below `min_epochs`).
async fn bracket(
    c: &mut SqliteConnection,
    rule: &EarlyStop,
    r: Judged,
    eta: i64,
    max_epochs: MaxEpochs,
) -> Result<Option<Bracket>> {
    let row = sqlx::query!(
        "SELECT j.idx, j.epochs, s.name, s.hyperband_max
         FROM jobs j JOIN sweeps s ON s.id = j.sweep_id WHERE j.id = ?",
        r.job
    )
    .fetch_one(&mut *c)
    .await?;
    let max = match max_epochs {
        MaxEpochs::Jobs => row.epochs,
        MaxEpochs::Fixed(n) => n,
        MaxEpochs::Auto => match row.hyperband_max {
            Some(n) => n,
            None => match auto_max(c, r.sweep).await? {
                Some(n) => n,
                None => return Ok(None),
            },
        },
    };
    let budgets = early_stop::bracket_budgets(rule.min_epochs, max, eta);
    Ok(
        early_stop::bracket_of(&row.name, row.idx, &budgets).map(|b| Bracket {
            rate: b,
            key: i64::from(b) * BRACKET_RUNGS,
        }),
    )
}

/// Optuna's "auto": the largest last epoch of the sweep's completed jobs + 1 (its steps count from
/// 0), fixed in the sweep's row the first time a job is judged after one completed.
async fn auto_max(c: &mut SqliteConnection, sweep: i64) -> Result<Option<i64>> {
    let last = sqlx::query_scalar!(
        r#"SELECT max(epoch) AS "last: i64" FROM jobs WHERE sweep_id = ? AND status = 'completed'"#,
        sweep
    )
    .fetch_one(&mut *c)
    .await?;
    let Some(last) = last else {
        return Ok(None);
    };
    let max = last + 1;
    sqlx::query!(
        "UPDATE sweeps SET hyperband_max = ? WHERE id = ? AND hyperband_max IS NULL",
        max,
        sweep
    )
    .execute(&mut *c)
    .await?;
    Ok(Some(max))
}

/// Successive halving: records the job's value at each rung its epoch has reached (its next rung
/// is the number it has recorded), and stops it at the first rung where it is not in the top.
/// The comparison is the in-memory rung's ([`Ranks`]): O(log n) in the values at the rung.
async fn asha(
    c: &mut SqliteConnection,
    ranks: &Ranks,
    rule: &EarlyStop,
    r: Judged,
    eta: i64,
    bracket: Bracket,
) -> Result<bool> {
    let (job, sweep, value) = (r.job, r.sweep, r.value);
    if !ranks.is_loaded(sweep) {
        let rows = sqlx::query!(
            r#"SELECT job_id, rung, value AS "value!: f64" FROM rungs WHERE sweep_id = ?"#,
            sweep
        )
        .fetch_all(&mut *c)
        .await?;
        ranks.load(
            sweep,
            SweepRanks::asha(rows.into_iter().map(|x| (x.job_id, x.rung, x.value))),
        );
    }
    let mut rung = sqlx::query_scalar!("SELECT count(*) FROM rungs WHERE job_id = ?", job)
        .fetch_one(&mut *c)
        .await?;
    let max = rule.mode == early_stop::Mode::Max;
    loop {
        let at = u32::try_from(rung)
            .ok()
            .and_then(|k| rule.rung_epoch(k, bracket.rate));
        let Some(at) = at else {
            return Ok(false);
        };
        if r.epoch < at {
            return Ok(false);
        }
        let key = bracket.key + rung;
        let added = sqlx::query!(
            "INSERT INTO rungs (job_id, sweep_id, rung, value) VALUES (?, ?, ?, ?)
             ON CONFLICT (job_id, rung) DO NOTHING",
            job,
            sweep,
            key,
            value
        )
        .execute(&mut *c)
        .await?
        .rows_affected();
        // Every value at the rung, this one included (a diverged job's left when it ended), and
        // how many are better than this one.
        let (n, better) = ranks
            .with(sweep, |s| {
                if added == 1 {
                    s.add_rung_value(job, key, value);
                }
                s.rung_counts(key, value, max)
            })
            .unwrap_or((0, 0));
        if !early_stop::goes_on(n, better, eta) {
            return Ok(true);
        }
        rung += 1;
    }
}

/// The median rule: the job's best value so far against the median, at this epoch, of the sweep's
/// completed jobs (kept ordered in memory, [`Ranks`]: O(log n) in the completed jobs).
async fn median(
    c: &mut SqliteConnection,
    ranks: &Ranks,
    rule: &EarlyStop,
    r: Judged,
    startup_trials: i64,
) -> Result<bool> {
    let (job, sweep) = (r.job, r.sweep);
    let metric = rule.metric.as_str();
    if !ranks.is_loaded(sweep) {
        load_median(c, ranks, sweep, metric).await?;
    } else {
        ranks.with(sweep, |s| s.add_open_value(job, r.epoch, r.value));
    }
    if r.epoch < rule.min_epochs {
        return Ok(false);
    }
    let (completed, threshold) = ranks
        .with(sweep, |s| s.median_at(r.epoch))
        .unwrap_or((0, None));
    if completed == 0 || completed < startup_trials {
        return Ok(false);
    }
    let max = rule.mode == early_stop::Mode::Max;
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
    Ok(match (best, threshold) {
        (Some(best), Some(threshold)) => early_stop::below_median(rule, best, threshold),
        _ => false,
    })
}

/// The median rule's values of one sweep from SQLite: every epoch's value of the completed jobs,
/// and of the jobs not ended yet (this report's included: it is in the transaction).
async fn load_median(
    c: &mut SqliteConnection,
    ranks: &Ranks,
    sweep: i64,
    metric: &str,
) -> Result<()> {
    let completed = sqlx::query_scalar!(
        "SELECT count(*) FROM jobs WHERE sweep_id = ? AND status = 'completed'",
        sweep
    )
    .fetch_one(&mut *c)
    .await?;
    let rows = sqlx::query!(
        r#"SELECT m.job_id, m.epoch, j.status = 'completed' AS "done!: bool",
                  CASE ?2 WHEN 'accuracy' THEN m.accuracy WHEN 'test_loss' THEN m.test_loss
                          WHEN 'train_loss' THEN m.train_loss WHEN 'precision' THEN m.precision
                          WHEN 'recall' THEN m.recall WHEN 'f1' THEN m.f1 WHEN 'lr' THEN m.lr
                          WHEN 'images_per_sec' THEN m.images_per_sec WHEN 'seconds' THEN m.seconds
                          ELSE json_extract(m.extra, '$."' || ?2 || '"') END AS "v: f64"
           FROM jobs j
           JOIN metrics m ON m.job_id = j.id
           WHERE j.sweep_id = ?1
             AND j.status IN ('completed', 'running', 'pending')"#,
        sweep,
        metric
    )
    .fetch_all(&mut *c)
    .await?;
    let values = rows.into_iter().filter_map(|x| {
        // A missing or NaN value never counts (nanpercentile ignores it).
        let v = x.v.filter(|v| !v.is_nan())?;
        Some((x.job_id, x.epoch, v, x.done))
    });
    ranks.load(sweep, SweepRanks::median(completed, values));
    Ok(())
}
