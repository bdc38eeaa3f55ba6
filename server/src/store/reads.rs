//! Read models, from the read pool: never the writer.
use super::*;
use crate::sweep::early_stop::Mode;
use crate::sweep::objectives::{Constraint, Objective};

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
    drawn_at: Option<i64>,
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
    extra: Option<String>,
}

/// A program's own metrics as `metrics.extra` stores them (a JSON object; absent: none).
pub(super) fn own_metrics(
    stored: Option<&str>,
) -> Result<std::collections::BTreeMap<String, Option<f64>>> {
    stored.map_or(Ok(Default::default()), |e| parse_json("metrics.extra", e))
}

impl TryFrom<JobSql> for JobRow {
    type Error = StoreError;

    fn try_from(r: JobSql) -> Result<Self> {
        let latest_extra = own_metrics(r.extra.as_deref())?;
        Ok(JobRow {
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
                extra: latest_extra,
                diverged: false,
            }),
            id: r.id,
            sweep_id: r.sweep_id,
            params: parse_json("jobs.params", &r.params)?,
            status: status_of(&r.status)?,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            epoch: r.epoch,
            epochs: r.epochs,
            worker: r.worker,
            error: r.error,
            summary: r
                .summary
                .as_deref()
                .map(|t| parse_json("jobs.summary", t))
                .transpose()?,
            started_at: r.started_at,
            finished_at: r.finished_at,
            drawn_at: r.drawn_at,
        })
    }
}

/// What a sweep's search judges its trials by, as its stored spec says.
struct Judged {
    metric: Option<String>,
    mode: Option<String>,
    objectives: Option<String>,
    constraints: Option<String>,
}

/// `text` for a LIKE pattern with `ESCAPE '\'`: its `%`, `_` and `\` match themselves.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for ch in text.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

impl Store {
    pub async fn list_sweeps(&self) -> Result<Vec<SweepRow>> {
        self.sweeps(None).await
    }

    /// All sweeps, or only `only`: one query either way, its counts kept by triggers
    /// (`sweep_counts`), so a sweep costs one row however many jobs it has. The best accuracy is
    /// the one figure still read from every job: an index to find it would cost every metrics
    /// report a write at a random place (and idle workers ask `/api/jobs/unfinished`, not this).
    async fn sweeps(&self, only: Option<i64>) -> Result<Vec<SweepRow>> {
        let rows = sqlx::query!(
            r#"SELECT s.id AS "id!", s.name, s.created_at, s.cancelled_at,
                 c.total AS "total!: i64", c.pending AS "pending!: i64", c.running AS "running!: i64",
                 c.completed AS "completed!: i64", c.diverged AS "diverged!: i64", c.failed AS "failed!: i64",
                 c.cancelled AS "cancelled!: i64", c.pruned AS "pruned!: i64",
                 c.epochs_spent AS "epochs_spent!: i64", c.epochs_budget AS "epochs_budget!: i64",
                 (SELECT max(m.accuracy) FROM jobs j JOIN metrics m ON m.job_id = j.id AND m.epoch = j.epoch
                  WHERE j.sweep_id = s.id) AS "best_accuracy: f64",
                 (SELECT max(j.finished_at) FROM jobs j WHERE j.sweep_id = s.id) AS "last_finished_at: i64",
                 c.drawn AS "drawn!: i64",
                 json_extract(s.spec, '$.search.method') AS "method: String",
                 json_extract(s.spec, '$.search.metric') AS "metric: String",
                 json_extract(s.spec, '$.search.mode') AS "mode: String",
                 json_extract(s.spec, '$.search.objectives') AS "objectives: String",
                 json_extract(s.spec, '$.search.constraints') AS "constraints: String"
               FROM sweeps s JOIN sweep_counts c ON c.sweep_id = s.id
               WHERE ?1 IS NULL OR s.id = ?1
               ORDER BY s.id DESC"#,
            only
        )
        .fetch_all(&self.read)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let judged = Judged {
                metric: r.metric,
                mode: r.mode,
                objectives: r.objectives,
                constraints: r.constraints,
            };
            let tpe = match r.method.filter(|m| m != "grid") {
                Some(method) => {
                    let counts = (r.drawn, r.total);
                    self.search_progress(r.id, method, judged, counts).await?
                }
                None => None,
            };
            out.push(SweepRow {
                status: SweepStatus::of(r.cancelled_at.is_some(), r.pending, r.running, r.total),
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
                pruned: r.pruned,
                epochs_spent: r.epochs_spent,
                epochs_budget: r.epochs_budget,
                best_accuracy: r.best_accuracy,
                last_finished_at: r.last_finished_at,
                tpe,
            });
        }
        Ok(out)
    }

    /// A search's progress: its best trial on its one objective, or the size of its front on
    /// several; None for a search that names no objective.
    async fn search_progress(
        &self,
        sweep: i64,
        method: String,
        judged: Judged,
        (drawn, trials): (i64, i64),
    ) -> Result<Option<TpeProgress>> {
        let progress = |metric: String, mode: String| TpeProgress {
            method: method.clone(),
            metric,
            mode,
            drawn,
            trials,
            best_job: None,
            best_value: None,
            objectives: None,
            front: None,
        };
        if let (Some(metric), Some(mode)) = (judged.metric, judged.mode) {
            let best = self.best_trial(sweep, &metric, mode == "max").await?;
            return Ok(Some(TpeProgress {
                best_job: best.map(|b| b.0),
                best_value: best.map(|b| b.1),
                ..progress(metric, mode)
            }));
        }
        let Some(text) = judged.objectives else {
            return Ok(None);
        };
        let objectives: Vec<Objective> = parse_json("sweeps.spec objectives", &text)?;
        let constraints: Vec<Constraint> = match judged.constraints {
            Some(text) => parse_json("sweeps.spec constraints", &text)?,
            None => vec![],
        };
        let modes: Vec<(String, Mode)> = objectives
            .iter()
            .map(|o| (o.metric.clone(), o.mode()))
            .collect();
        let view = self.front(sweep, &modes, &constraints, false).await?;
        Ok(Some(TpeProgress {
            objectives: Some(view.objectives.clone()),
            front: Some(view.front_size),
            ..progress(modes[0].0.clone(), modes[0].1.as_str().to_string())
        }))
    }

    /// The best completed trial of a sweep on `metric` at its last epoch: (job, value).
    pub async fn best_trial(
        &self,
        sweep: i64,
        metric: &str,
        max: bool,
    ) -> Result<Option<(i64, f64)>> {
        let row = sqlx::query!(
            r#"SELECT j.id AS "id!", CASE ?2 WHEN 'accuracy' THEN m.accuracy WHEN 'test_loss' THEN m.test_loss
                              WHEN 'train_loss' THEN m.train_loss WHEN 'precision' THEN m.precision
                              WHEN 'recall' THEN m.recall WHEN 'f1' THEN m.f1 WHEN 'lr' THEN m.lr
                              WHEN 'images_per_sec' THEN m.images_per_sec WHEN 'seconds' THEN m.seconds
                              ELSE json_extract(m.extra, '$."' || ?2 || '"') END AS "value!: f64"
               FROM jobs j JOIN metrics m ON m.job_id = j.id AND m.epoch = j.epoch
               WHERE j.sweep_id = ?1 AND j.status = 'completed' AND "value!: f64" IS NOT NULL
               ORDER BY CASE WHEN ?3 THEN -"value!: f64" ELSE "value!: f64" END, j.idx LIMIT 1"#,
            sweep,
            metric,
            max
        )
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| (r.id, r.value)))
    }

    /// Ok when the sweep exists (by its key: its counts are not computed), else NotFound.
    pub async fn sweep_exists(&self, sweep: i64) -> Result<()> {
        self.sweep_name(sweep).await.map(|_| ())
    }

    /// How many jobs a sweep has (its kept count), or NotFound.
    pub async fn sweep_jobs(&self, sweep: i64) -> Result<i64> {
        sqlx::query_scalar!("SELECT total FROM sweep_counts WHERE sweep_id = ?", sweep)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("sweep {sweep}")))
    }

    /// How many of a sweep's jobs are running (its kept count), or NotFound.
    pub async fn running_of(&self, sweep: i64) -> Result<i64> {
        sqlx::query_scalar!("SELECT running FROM sweep_counts WHERE sweep_id = ?", sweep)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("sweep {sweep}")))
    }

    /// The sweep's name (by its key), or NotFound.
    pub async fn sweep_name(&self, sweep: i64) -> Result<String> {
        sqlx::query_scalar!("SELECT name FROM sweeps WHERE id = ?", sweep)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("sweep {sweep}")))
    }

    /// A sweep's summary row (no jobs); NotFound if there is no such sweep.
    pub async fn get_sweep_row(&self, sweep: i64) -> Result<SweepRow> {
        self.sweeps(Some(sweep))
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("sweep {sweep}")))
    }

    /// A sweep with every job: for tests and small sweeps (exports and figures read keys, then pages).
    pub async fn get_sweep(&self, sweep: i64) -> Result<SweepDetail> {
        self.sweep_detail(sweep, i64::MAX).await
    }

    /// A sweep with its spec and its first `jobs` jobs in grid order (0: none; the dashboard pages them).
    pub async fn sweep_detail(&self, sweep: i64, jobs: i64) -> Result<SweepDetail> {
        let s = sqlx::query!("SELECT spec FROM sweeps WHERE id = ?", sweep)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("sweep {sweep}")))?;
        let row = self
            .sweeps(Some(sweep))
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("sweep {sweep}")))?;
        let ids = sqlx::query_scalar!(
            r#"SELECT id AS "id!" FROM jobs WHERE sweep_id = ? ORDER BY idx LIMIT ?"#,
            sweep,
            jobs
        )
        .fetch_all(&self.read)
        .await?;
        let jobs = self.jobs_by_id(&ids).await?;
        Ok(SweepDetail {
            sweep: row,
            spec: parse_json("sweeps.spec", &s.spec)?,
            jobs,
        })
    }

    /// The jobs whose ids a JSON array lists, in no particular order.
    pub(super) async fn jobs_where_ids(&self, ids: &str) -> Result<Vec<JobRow>> {
        let rows = sqlx::query_as!(
            JobSql,
            r#"SELECT j.id AS "id!", j.sweep_id, j.params, j.status, j.attempt, j.max_attempts, j.epoch, j.epochs,
                      j.worker, j.error, j.summary, j.started_at, j.finished_at, j.drawn_at,
                      m.epoch AS "m_epoch?", m.attempt AS "m_attempt?", m.lr, m.train_loss, m.test_loss, m.accuracy,
                      m.precision, m.recall, m.f1, m.images_per_sec, m.seconds, m.extra
               FROM jobs j LEFT JOIN metrics m ON m.job_id = j.id AND m.epoch = j.epoch
               WHERE j.id IN (SELECT value FROM json_each(?1))"#,
            ids
        )
        .fetch_all(&self.read)
        .await?;
        rows.into_iter().map(JobRow::try_from).collect()
    }

    /// One page of a sweep's jobs, filtered and sorted in SQL so a 10,000-job sweep costs one page.
    pub async fn jobs_page(&self, sweep: i64, q: &JobQuery) -> Result<JobPage> {
        self.sweep_exists(sweep).await?;
        let status = q.status.as_deref().filter(|s| !s.is_empty());
        // Matched as a literal (its wildcards escaped), ASCII case ignored as LIKE does; its length
        // is bounded at the edge (`protocol::views::MAX_QUERY_TEXT`), so one search costs a scan
        // of the sweep's rows, never more.
        let text =
            q.q.as_deref()
                .filter(|s| !s.is_empty())
                .map(|t| format!("%{}%", escape_like(t)));
        let text = text.as_deref();
        let sort = q.sort.as_deref().unwrap_or("idx");
        let desc = q.desc as i64;
        let limit = if q.limit <= 0 { 50 } else { q.limit.min(500) };
        let offset = q.offset.max(0);
        // Without a text search the total is the kept count; a search counts what it matches.
        let total = match text {
            None => sqlx::query_scalar!(
                r#"SELECT CASE WHEN ?2 IS NULL THEN total WHEN ?2 = 'pending' THEN pending
                          WHEN ?2 = 'running' THEN running WHEN ?2 = 'completed' THEN completed
                          WHEN ?2 = 'diverged' THEN diverged WHEN ?2 = 'failed' THEN failed
                          WHEN ?2 = 'cancelled' THEN cancelled WHEN ?2 = 'pruned' THEN pruned ELSE 0 END AS "n!: i64"
                   FROM sweep_counts WHERE sweep_id = ?1"#,
                sweep,
                status
            )
            .fetch_one(&self.read)
            .await?,
            Some(_) => sqlx::query_scalar!(
                r#"SELECT count(*) AS "n!: i64" FROM jobs j
                   WHERE j.sweep_id = ?1 AND (?2 IS NULL OR j.status = ?2)
                     AND (?3 IS NULL OR j.params LIKE ?3 ESCAPE '\' OR coalesce(j.worker, '') LIKE ?3 ESCAPE '\')"#,
                sweep,
                status,
                text
            )
            .fetch_one(&self.read)
            .await?,
        };
        // The sort key is chosen by CASE so the statement stays one compile-checked query; unknown
        // keys fall back to grid order. `param:NAME` and `metric:NAME` (a program's own) are read
        // by name from the stored JSON (the name checked at the edge: no quote can reach the path).
        let rows = sqlx::query_as!(
            JobSql,
            r#"SELECT j.id AS "id!", j.sweep_id, j.params, j.status, j.attempt, j.max_attempts, j.epoch, j.epochs,
                      j.worker, j.error, j.summary, j.started_at, j.finished_at, j.drawn_at,
                      m.epoch AS "m_epoch?", m.attempt AS "m_attempt?", m.lr, m.train_loss, m.test_loss, m.accuracy,
                      m.precision, m.recall, m.f1, m.images_per_sec, m.seconds, m.extra
               FROM jobs j LEFT JOIN metrics m ON m.job_id = j.id AND m.epoch = j.epoch
               WHERE j.sweep_id = ?1 AND (?2 IS NULL OR j.status = ?2)
                 AND (?3 IS NULL OR j.params LIKE ?3 ESCAPE '\' OR coalesce(j.worker, '') LIKE ?3 ESCAPE '\')
               ORDER BY
                 CASE WHEN ?5 = 0 THEN (CASE WHEN ?4 LIKE 'param:%' THEN json_extract(j.params, '$."' || substr(?4, 7) || '"')
                   WHEN ?4 LIKE 'metric:%' THEN json_extract(m.extra, '$."' || substr(?4, 8) || '"') ELSE (CASE ?4
                   WHEN 'batch_size' THEN json_extract(j.params, '$.batch_size') WHEN 'lr' THEN json_extract(j.params, '$.lr')
                   WHEN 'status' THEN j.status WHEN 'attempt' THEN j.attempt WHEN 'epoch' THEN j.epoch
                   WHEN 'test_loss' THEN m.test_loss WHEN 'train_loss' THEN m.train_loss WHEN 'accuracy' THEN m.accuracy
                   WHEN 'precision' THEN m.precision WHEN 'recall' THEN m.recall WHEN 'f1' THEN m.f1
                   WHEN 'images_per_sec' THEN m.images_per_sec WHEN 'worker' THEN j.worker ELSE j.idx END) END) END ASC,
                 CASE WHEN ?5 = 1 THEN (CASE WHEN ?4 LIKE 'param:%' THEN json_extract(j.params, '$."' || substr(?4, 7) || '"')
                   WHEN ?4 LIKE 'metric:%' THEN json_extract(m.extra, '$."' || substr(?4, 8) || '"') ELSE (CASE ?4
                   WHEN 'batch_size' THEN json_extract(j.params, '$.batch_size') WHEN 'lr' THEN json_extract(j.params, '$.lr')
                   WHEN 'status' THEN j.status WHEN 'attempt' THEN j.attempt WHEN 'epoch' THEN j.epoch
                   WHEN 'test_loss' THEN m.test_loss WHEN 'train_loss' THEN m.train_loss WHEN 'accuracy' THEN m.accuracy
                   WHEN 'precision' THEN m.precision WHEN 'recall' THEN m.recall WHEN 'f1' THEN m.f1
                   WHEN 'images_per_sec' THEN m.images_per_sec WHEN 'worker' THEN j.worker ELSE j.idx END) END) END DESC,
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
            jobs: rows
                .into_iter()
                .map(JobRow::try_from)
                .collect::<Result<_>>()?,
        })
    }

    /// The batch size x lr grid of a sweep: per cell its jobs, how many diverged, the best final
    /// (or latest) accuracy. Jobs that leave a key out run with the trainer's default.
    pub async fn grid(&self, sweep: i64) -> Result<Vec<GridCell>> {
        let (bs, lr) = (crate::sweep::DEFAULT_BATCH_SIZE, crate::sweep::DEFAULT_LR);
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
        let (dbs, dlr) = (crate::sweep::DEFAULT_BATCH_SIZE, crate::sweep::DEFAULT_LR);
        let epochs = sqlx::query_scalar!(
            r#"SELECT max(epochs) AS "n: i64" FROM jobs WHERE sweep_id = ?"#,
            sweep
        )
        .fetch_one(&self.read)
        .await?
        .unwrap_or(1);
        // Saturating: a database written before epochs were bounded may hold any number.
        let stride = epochs.saturating_add(points.max(2) - 1) / points.max(2);
        let rows = sqlx::query!(
            r#"WITH reps AS (
                 SELECT min(j.id) AS job_id, coalesce(json_extract(j.params, '$.batch_size'), ?3) AS bs
                 FROM jobs j
                 WHERE j.sweep_id = ?1 AND abs(coalesce(json_extract(j.params, '$.lr'), ?4) - ?2) <= 1e-9 * abs(?2)
                 GROUP BY bs)
               SELECT r.bs AS "batch_size!: i64", r.job_id AS "job_id!: i64", j.status, m.epoch, m.lr,
                      m.train_loss, m.test_loss, m.accuracy, m.extra
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
                    status: status_of(&r.status)?,
                    epoch: vec![],
                    lr: vec![],
                    train_loss: vec![],
                    test_loss: vec![],
                    accuracy: vec![],
                    extra: Default::default(),
                });
            }
            let s = out.last_mut().expect("pushed above");
            s.epoch.push(r.epoch);
            s.lr.push(r.lr);
            s.train_loss.push(r.train_loss);
            s.test_loss.push(r.test_loss);
            s.accuracy.push(r.accuracy);
            let own = own_metrics(r.extra.as_deref())?;
            let n = s.epoch.len();
            for (name, v) in own {
                // A metric first seen at this epoch is absent (null) at the earlier ones.
                let column = s.extra.entry(name).or_default();
                column.resize(n - 1, None);
                column.push(v);
            }
            for column in s.extra.values_mut() {
                column.resize(n, None);
            }
        }
        Ok(out)
    }

    /// A job with its metrics and a page of its attempts (`offset` attempts skipped, at most
    /// `limit`, oldest first): a job given back thousands of times still answers in one page.
    pub async fn get_job(&self, job: i64, offset: i64, limit: i64) -> Result<JobDetail> {
        let row = self
            .jobs_by_id(&[job])
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("job {job}")))?;
        let metrics = sqlx::query!(
            "SELECT epoch, attempt, lr, train_loss, test_loss, accuracy, precision, recall, f1, images_per_sec, seconds, extra
             FROM metrics WHERE job_id = ? ORDER BY epoch",
            job
        )
        .fetch_all(&self.read)
        .await?
        .into_iter()
        .map(|r| {
            Ok(MetricsReport {
            epoch: r.epoch,
            attempt: r.attempt,
            lr: r.lr,
            train_loss: r.train_loss,
            test_loss: r.test_loss,
            accuracy: r.accuracy,
            precision: r.precision,
            recall: r.recall,
            f1: r.f1,
            images_per_sec: r.images_per_sec,
            seconds: r.seconds,
            extra: own_metrics(r.extra.as_deref())?,
            diverged: false,
            })
        })
        .collect::<Result<_>>()?;
        let mut attempts: Vec<AttemptRow> = sqlx::query!(
            "SELECT attempt, worker, started_at, ended_at, outcome, error FROM attempts WHERE job_id = ?
             ORDER BY attempt LIMIT ? OFFSET ?",
            job,
            limit,
            offset
        )
        .fetch_all(&self.read)
        .await?
        .into_iter()
        .map(|r| AttemptRow {
            attempt: r.attempt,
            worker: r.worker,
            started_at: r.started_at,
            ended_at: r.ended_at,
            outcome: r.outcome,
            error: r.error,
            members: vec![],
        })
        .collect();
        // The running attempt lives in the job row until it ends (the last: on the last page).
        let page = (offset + 1)..=(offset + limit);
        if row.status == JobStatus::Running && page.contains(&row.attempt) {
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
                members: vec![],
            });
        }
        for (attempt, member) in self.members_of(job, *page.start(), *page.end()).await? {
            if let Some(a) = attempts.iter_mut().find(|a| a.attempt == attempt) {
                a.members.push(member);
            }
        }
        let waiting = self.gang_waiting(&row).await?;
        let segments = self.segments_of(job).await?;
        Ok(JobDetail {
            attempts_total: row.attempt,
            job: row,
            metrics,
            attempts,
            waiting,
            segments,
        })
    }

    /// A PBT member's segments, each with the epochs of the segment before it that it replaced.
    async fn segments_of(&self, job: i64) -> Result<Vec<protocol::views::Segment>> {
        let rows = sqlx::query!(
            "SELECT segment, from_epoch, at_epoch, donor, params, decided_at FROM pbt_segments
             WHERE job_id = ? AND segment > 0 ORDER BY segment",
            job
        )
        .fetch_all(&self.read)
        .await?;
        if rows.is_empty() {
            return Ok(vec![]);
        }
        let archived = sqlx::query!(
            "SELECT segment, epoch, attempt, lr, train_loss, test_loss, accuracy, precision, recall, f1,
                    images_per_sec, seconds, extra
             FROM metrics_archive WHERE job_id = ? ORDER BY segment, epoch",
            job
        )
        .fetch_all(&self.read)
        .await?;
        let mut segments = rows
            .into_iter()
            .map(|r| {
                Ok(protocol::views::Segment {
                    segment: r.segment,
                    from_epoch: r.from_epoch,
                    at_epoch: r.at_epoch,
                    donor: r.donor,
                    params: parse_json("pbt_segments.params", &r.params)?,
                    decided_at: r.decided_at,
                    replaced: vec![],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        for r in archived {
            // Filed under the segment that replaced them: segment n is at index n - 1.
            let Some(s) = segments.get_mut((r.segment - 1) as usize) else {
                continue;
            };
            s.replaced.push(MetricsReport {
                epoch: r.epoch,
                attempt: r.attempt,
                lr: r.lr,
                train_loss: r.train_loss,
                test_loss: r.test_loss,
                accuracy: r.accuracy,
                precision: r.precision,
                recall: r.recall,
                f1: r.f1,
                images_per_sec: r.images_per_sec,
                seconds: r.seconds,
                extra: own_metrics(r.extra.as_deref())?,
                diverged: false,
            });
        }
        Ok(segments)
    }

    /// What a forming gang waits for, or why a worker near its end passed a pending job over, in
    /// words; None when neither.
    async fn gang_waiting(&self, row: &JobRow) -> Result<Option<String>> {
        if row.status == JobStatus::Pending {
            let passed = sqlx::query!(
                r#"SELECT passed_need_ms AS "need!", passed_left_ms AS "left!" FROM jobs
                   WHERE id = ? AND passed_need_ms IS NOT NULL AND passed_left_ms IS NOT NULL"#,
                row.id
            )
            .fetch_optional(&self.read)
            .await?;
            return Ok(passed.map(|p| protocol::views::passed_over(p.need, p.left)));
        }
        if row.status != JobStatus::Running {
            return Ok(None);
        }
        let gang = sqlx::query!(
            r#"SELECT nnodes, nproc, (SELECT count(*) FROM gang_members m WHERE m.job_id = j.id AND m.attempt = j.attempt) AS "joined!: i64"
               FROM jobs j WHERE j.id = ? AND j.gang_until IS NOT NULL"#,
            row.id
        )
        .fetch_optional(&self.read)
        .await?;
        Ok(gang.map(|g| {
            let more = g.nnodes - g.joined;
            let (workers, ranks) = (
                if more == 1 { "worker" } else { "workers" },
                if g.nproc == 1 { "rank" } else { "ranks" },
            );
            format!(
                "waiting for {more} more {workers} with {} free {ranks} ({} of {} joined)",
                g.nproc, g.joined, g.nnodes
            )
        }))
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

    /// Jobs by status over every sweep (for Prometheus), from the counts kept per sweep.
    pub async fn job_counts(&self) -> Result<Map<String, Value>> {
        Ok(self
            .status_totals()
            .await?
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| (s.as_str().to_string(), Value::from(n)))
            .collect())
    }

    /// Pending and running jobs over every sweep a worker may run: an external sweep's trials are
    /// asked for by its own loop, and no idle worker waits for them.
    pub async fn unfinished(&self) -> Result<Unfinished> {
        let r = sqlx::query!(
            r#"SELECT coalesce(sum(c.pending), 0) AS "pending!: i64", coalesce(sum(c.running), 0) AS "running!: i64"
               FROM sweep_counts c JOIN sweeps s ON s.id = c.sweep_id WHERE s.external = 0"#
        )
        .fetch_one(&self.read)
        .await?;
        Ok(Unfinished {
            pending: r.pending,
            running: r.running,
        })
    }

    /// Pending jobs a worker may run, counted by what they need of a worker allocation (nodes,
    /// ranks per node, a command or not, GPUs), with the longest epoch expected of each shape. One
    /// pass over the pending jobs' index, on the read pool (for an autoscaler's polls).
    pub async fn pending_shapes(&self) -> Result<Vec<protocol::PendingShape>> {
        let rows = sqlx::query!(
            r#"SELECT nnodes AS "nnodes!", nproc AS "nproc!", is_command AS "is_command!",
                      CASE WHEN json_extract(params, '$.device') LIKE 'cuda%' THEN nproc
                           WHEN json_extract(params, '$.device') = 'cpu' THEN 0 END AS "gpus: i64",
                      count(*) AS "jobs!: i64",
                      max(coalesce(epoch_ms, (SELECT e.epoch_ms FROM epoch_estimates e
                          WHERE e.sweep_id = j.sweep_id AND e.nproc = j.nproc AND e.batch_size = j.batch_size
                            AND e.is_command = j.is_command AND e.nnodes = j.nnodes))) AS "epoch_ms: i64"
               FROM jobs j INDEXED BY jobs_pending_shape
               WHERE status = 'pending' AND is_command < 2 AND cancel_requested = 0 AND stop_requested = 0
               GROUP BY 1, 2, 3, 4 ORDER BY 1 DESC, 2 DESC, 3, 4"#
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| protocol::PendingShape {
                nnodes: r.nnodes,
                nproc_per_node: r.nproc,
                command: r.is_command == 1,
                gpus_per_node: r.gpus,
                jobs: r.jobs,
                epoch_seconds: r.epoch_ms.map(|ms| ms as f64 / 1000.0),
            })
            .collect())
    }

    /// Every status's total over every sweep, summed from the counts kept per sweep.
    async fn status_totals(&self) -> Result<[(JobStatus, i64); 7]> {
        let r = sqlx::query!(
            r#"SELECT coalesce(sum(pending), 0) AS "pending!: i64", coalesce(sum(running), 0) AS "running!: i64",
                      coalesce(sum(completed), 0) AS "completed!: i64", coalesce(sum(diverged), 0) AS "diverged!: i64",
                      coalesce(sum(failed), 0) AS "failed!: i64", coalesce(sum(cancelled), 0) AS "cancelled!: i64",
                      coalesce(sum(pruned), 0) AS "pruned!: i64"
               FROM sweep_counts"#
        )
        .fetch_one(&self.read)
        .await?;
        Ok([
            (JobStatus::Pending, r.pending),
            (JobStatus::Running, r.running),
            (JobStatus::Completed, r.completed),
            (JobStatus::Diverged, r.diverged),
            (JobStatus::Failed, r.failed),
            (JobStatus::Cancelled, r.cancelled),
            (JobStatus::Pruned, r.pruned),
        ])
    }
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
