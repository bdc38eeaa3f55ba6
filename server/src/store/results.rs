//! What exports and figures read, so that a 100,000-job sweep is never loaded whole: first a compact
//! key per job (what orders the rows, picks the bold ones, the CSV's columns and the runs a figure
//! draws), then the full rows a page at a time, by id.
use std::collections::HashMap;

use futures::TryStreamExt;

use super::reads::own_metrics;
use super::*;
use crate::results::shape::MetricFacts;

/// One job as exports and figures decide on it: its grid point, status, and final values.
#[derive(Debug, Clone, PartialEq)]
pub struct JobKey {
    pub id: i64,
    /// The job's `batch_size` and `lr` params as set (None: left to the trainer's default).
    pub batch_size: Option<i64>,
    pub lr: Option<f64>,
    pub status: JobStatus,
    pub attempt: i64,
    pub epoch: i64,
    pub drawn_at: Option<i64>,
    /// Whether an epoch was recorded, and the latest epoch's accuracy and test loss.
    pub reported: bool,
    pub accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    /// Its latest value of the sweep's objective (what a search's rows are ordered by), when the
    /// keys were read with one ([`KeyParts::metrics`]).
    pub objective: Option<f64>,
    /// Index into [`SweepKeys::shapes`]: the names of its params and of its program's own metrics.
    pub shape: usize,
}

/// An ended job as analysis reads it: its parameters and its final value of one metric.
#[derive(Debug, Clone)]
pub struct AnalysisTrial {
    pub id: i64,
    /// When its point was drawn (its trial number is its rank by this).
    pub drawn_at: Option<i64>,
    pub status: JobStatus,
    pub value: Option<f64>,
    pub params: Map<String, Value>,
}

/// A sweep's keys: one per job in grid order, the distinct (param names, own metric names) of its
/// jobs (a handful, however many jobs), which the CSV's columns come from, and what its jobs
/// reported metric by metric (an export's columns and bold cells).
#[derive(Debug, Clone, Default)]
pub struct SweepKeys {
    pub jobs: Vec<JobKey>,
    pub shapes: Vec<(Vec<String>, Vec<String>)>,
    pub facts: MetricFacts,
}

/// What [`Store::job_keys`] reads beyond each job's point, status, accuracy and test loss: each
/// reading costs the read of every job (a few tenths of a second at 100,000 jobs), so a caller
/// asks for what it uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyParts<'a> {
    /// The names each job's row has (the CSV's columns).
    pub names: bool,
    /// Some(objective): every metric of each latest epoch, gathered into the keys' facts, and
    /// each job's value of the objective (an export's columns, bold cells and order; figures and
    /// the comparison need only accuracy and loss).
    pub metrics: Option<&'a str>,
}

impl JobKey {
    /// The key of a job already read whole, its names being `shape`.
    pub fn of(j: &JobRow, shape: usize, objective: Option<&str>) -> JobKey {
        let latest = j.latest.as_ref();
        JobKey {
            id: j.id,
            batch_size: j.params.get("batch_size").and_then(Value::as_i64),
            lr: j.params.get("lr").and_then(Value::as_f64),
            status: j.status,
            attempt: j.attempt,
            epoch: j.epoch,
            drawn_at: j.drawn_at,
            reported: latest.is_some(),
            accuracy: latest.and_then(|m| m.accuracy),
            test_loss: latest.and_then(|m| m.test_loss),
            objective: objective.and_then(|o| latest?.get(o)),
            shape,
        }
    }
}

impl SweepKeys {
    /// The keys of jobs already in memory (tests, and sweeps small enough to have been read
    /// whole), with every metric's facts and each job's value of `objective`.
    pub fn of(jobs: &[JobRow], objective: &str) -> SweepKeys {
        let mut keys = SweepKeys::default();
        for j in jobs {
            let params = j.params.as_object().into_iter().flatten();
            let own = j.latest.iter().flat_map(|m| m.extra.keys());
            let shape = keys.shape((
                params.map(|(k, _)| k.clone()).collect(),
                own.cloned().collect(),
            ));
            if let Some(m) = &j.latest {
                keys.facts.add(j.status, m);
            }
            keys.jobs.push(JobKey::of(j, shape, Some(objective)));
        }
        keys
    }

    /// The index of these names among the shapes, added if new (shapes are few: a search is
    /// cheaper than a hash of every job's names).
    fn shape(&mut self, names: (Vec<String>, Vec<String>)) -> usize {
        match self.shapes.iter().position(|s| *s == names) {
            Some(i) => i,
            None => {
                self.shapes.push(names);
                self.shapes.len() - 1
            }
        }
    }
}

/// A job's key as read, before its names are matched to the sweep's shapes.
struct KeyRow {
    id: i64,
    batch_size: Option<i64>,
    lr: Option<f64>,
    status: JobStatus,
    attempt: i64,
    epoch: i64,
    drawn_at: Option<i64>,
    latest: Option<MetricsReport>,
    /// Its params' names as a JSON array (`[]` when not asked for).
    params: String,
}

/// Builds a sweep's keys one row at a time as they stream in: each job's names matched to the
/// sweep's shapes (most jobs share their names, stored alike, so each distinct pair is parsed and
/// looked up once), its latest metrics folded into the facts and dropped (only the keys are ever
/// held, never 100,000 rows of metrics).
struct Assembler<'a> {
    keys: SweepKeys,
    seen: HashMap<(String, String), usize>,
    objective: Option<&'a str>,
}

impl<'a> Assembler<'a> {
    fn new(objective: Option<&'a str>) -> Self {
        Assembler {
            keys: SweepKeys::default(),
            seen: HashMap::new(),
            objective,
        }
    }

    fn push(&mut self, r: KeyRow) -> Result<()> {
        let latest = r.latest.as_ref();
        let own: Vec<&String> = latest.iter().flat_map(|m| m.extra.keys()).collect();
        let own_key = own
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join("\0");
        let shape = match self.seen.entry((r.params, own_key)) {
            std::collections::hash_map::Entry::Occupied(e) => *e.get(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let params: Vec<String> = parse_json("jobs.params", &e.key().0)?;
                let own = own.into_iter().cloned().collect();
                *e.insert(self.keys.shape((params, own)))
            }
        };
        if let (Some(m), Some(_)) = (latest, self.objective) {
            self.keys.facts.add(r.status, m);
        }
        self.keys.jobs.push(JobKey {
            id: r.id,
            batch_size: r.batch_size,
            lr: r.lr,
            status: r.status,
            attempt: r.attempt,
            epoch: r.epoch,
            drawn_at: r.drawn_at,
            reported: latest.is_some(),
            accuracy: latest.and_then(|m| m.accuracy),
            test_loss: latest.and_then(|m| m.test_loss),
            objective: self.objective.and_then(|o| latest?.get(o)),
            shape,
        });
        Ok(())
    }
}

/// Full rows fetched per page: bounded memory, and each query short.
pub const ROWS_PER_PAGE: usize = 1000;

impl Store {
    /// The keys of a sweep's jobs in grid order (about 100 bytes a job, more with their metrics);
    /// NotFound without the sweep. `parts` says what beyond the accuracy and test loss they carry.
    pub async fn job_keys(&self, sweep: i64, parts: KeyParts<'_>) -> Result<SweepKeys> {
        self.sweep_exists(sweep).await?;
        let mut keys = Assembler::new(parts.metrics);
        match parts.metrics {
            Some(_) => {
                self.key_rows_with_metrics(sweep, parts.names, &mut keys)
                    .await?
            }
            None => self.key_rows(sweep, parts.names, &mut keys).await?,
        };
        Ok(keys.keys)
    }

    /// Each job's key with its latest accuracy and test loss only. Two queries rather than one
    /// with optional columns: sqlx allocates every column of every row, so columns a caller does
    /// not use cost it all the same (a third of a second at 100,000 jobs). Rows are converted as
    /// they stream in: only the keys are ever held, never 100,000 rows of SQL values.
    async fn key_rows(&self, sweep: i64, names: bool, keys: &mut Assembler<'_>) -> Result<()> {
        let mut rows = sqlx::query!(
            r#"SELECT j.id AS "id!",
                  CASE json_type(j.params, '$.batch_size') WHEN 'integer' THEN json_extract(j.params, '$.batch_size') END
                    AS "batch_size: i64",
                  CASE WHEN json_type(j.params, '$.lr') IN ('integer', 'real') THEN CAST(json_extract(j.params, '$.lr') AS REAL) END
                    AS "lr: f64",
                  j.status, j.attempt, j.epoch, j.drawn_at, m.epoch AS "m_epoch?", m.test_loss, m.accuracy,
                  CASE WHEN ?2 THEN (SELECT json_group_array(key) FROM json_each(j.params)) ELSE '[]' END AS "params!: String"
               FROM jobs j LEFT JOIN metrics m ON m.job_id = j.id AND m.epoch = j.epoch
               WHERE j.sweep_id = ?1 ORDER BY j.idx"#,
            sweep,
            names
        )
        .fetch(&self.read);
        while let Some(r) = rows.try_next().await? {
            keys.push(KeyRow {
                latest: r.m_epoch.map(|epoch| MetricsReport {
                    epoch,
                    test_loss: r.test_loss,
                    accuracy: r.accuracy,
                    ..Default::default()
                }),
                id: r.id,
                batch_size: r.batch_size,
                lr: r.lr,
                status: status_of(&r.status)?,
                attempt: r.attempt,
                epoch: r.epoch,
                drawn_at: r.drawn_at,
                params: r.params,
            })?;
        }
        Ok(())
    }

    /// Each job's key with every metric of its latest epoch (an export's columns and order).
    async fn key_rows_with_metrics(
        &self,
        sweep: i64,
        names: bool,
        keys: &mut Assembler<'_>,
    ) -> Result<()> {
        let mut rows = sqlx::query!(
            r#"SELECT j.id AS "id!",
                  CASE json_type(j.params, '$.batch_size') WHEN 'integer' THEN json_extract(j.params, '$.batch_size') END
                    AS "batch_size: i64",
                  CASE WHEN json_type(j.params, '$.lr') IN ('integer', 'real') THEN CAST(json_extract(j.params, '$.lr') AS REAL) END
                    AS "lr: f64",
                  j.status, j.attempt, j.epoch, j.drawn_at, m.epoch AS "m_epoch?", m.attempt AS "m_attempt?",
                  m.lr AS m_lr, m.train_loss, m.test_loss, m.accuracy, m.precision, m.recall, m.f1,
                  m.images_per_sec, m.seconds, m.extra,
                  CASE WHEN ?2 THEN (SELECT json_group_array(key) FROM json_each(j.params)) ELSE '[]' END AS "params!: String"
               FROM jobs j LEFT JOIN metrics m ON m.job_id = j.id AND m.epoch = j.epoch
               WHERE j.sweep_id = ?1 ORDER BY j.idx"#,
            sweep,
            names
        )
        .fetch(&self.read);
        while let Some(r) = rows.try_next().await? {
            let latest = match r.m_epoch {
                Some(epoch) => Some(MetricsReport {
                    epoch,
                    attempt: r.m_attempt.unwrap_or(0),
                    lr: r.m_lr,
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
                }),
                None => None,
            };
            keys.push(KeyRow {
                latest,
                id: r.id,
                batch_size: r.batch_size,
                lr: r.lr,
                status: status_of(&r.status)?,
                attempt: r.attempt,
                epoch: r.epoch,
                drawn_at: r.drawn_at,
                params: r.params,
            })?;
        }
        Ok(())
    }

    /// The full rows of these jobs (at most a page), in the order given; ids without a job are
    /// left out.
    pub async fn jobs_by_id(&self, ids: &[i64]) -> Result<Vec<JobRow>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let list = serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut rows: HashMap<i64, JobRow> = self
            .jobs_where_ids(&list)
            .await?
            .into_iter()
            .map(|j| (j.id, j))
            .collect();
        Ok(ids.iter().filter_map(|id| rows.remove(id)).collect())
    }

    /// Each metric some job of the sweep reported at its latest epoch: (name, jobs with a value,
    /// min, max); the named ones in their order, then a program's own by name. Two aggregate
    /// queries (a scan of the sweep's latest epochs in SQLite), whatever the sweep's size.
    pub async fn metric_ranges(&self, sweep: i64) -> Result<Vec<(String, usize, f64, f64)>> {
        self.sweep_exists(sweep).await?;
        let named = sqlx::query!(
            r#"SELECT json_array(
                 json_array(count(m.lr), min(m.lr), max(m.lr)),
                 json_array(count(m.train_loss), min(m.train_loss), max(m.train_loss)),
                 json_array(count(m.test_loss), min(m.test_loss), max(m.test_loss)),
                 json_array(count(m.accuracy), min(m.accuracy), max(m.accuracy)),
                 json_array(count(m.precision), min(m.precision), max(m.precision)),
                 json_array(count(m.recall), min(m.recall), max(m.recall)),
                 json_array(count(m.f1), min(m.f1), max(m.f1)),
                 json_array(count(m.images_per_sec), min(m.images_per_sec), max(m.images_per_sec)),
                 json_array(count(m.seconds), min(m.seconds), max(m.seconds))) AS "ranges!: String"
               FROM jobs j JOIN metrics m ON m.job_id = j.id AND m.epoch = j.epoch
               WHERE j.sweep_id = ?"#,
            sweep
        )
        .fetch_one(&self.read)
        .await?;
        type Range = (usize, Option<f64>, Option<f64>);
        let ranges: Vec<Range> = parse_json("metric ranges", &named.ranges)?;
        let mut out: Vec<(String, usize, f64, f64)> = protocol::NAMED_METRICS
            .iter()
            .zip(ranges)
            .filter_map(|(m, (n, lo, hi))| Some((m.name.to_string(), n, lo?, hi?)))
            .filter(|r| r.1 > 0)
            .collect();
        // One text (sqlx cannot type json_each's columns directly): [[name, n, min, max], ...].
        let own = sqlx::query_scalar!(
            r#"SELECT json_group_array(json_array(k, n, lo, hi)) AS "own!: String" FROM (
                 SELECT key AS k, count(value) AS n, min(value) AS lo, max(value) AS hi
                 FROM (SELECT m.extra FROM jobs j JOIN metrics m ON m.job_id = j.id AND m.epoch = j.epoch
                       WHERE j.sweep_id = ? AND m.extra IS NOT NULL) x, json_each(x.extra)
                 WHERE type IN ('integer', 'real')
                 GROUP BY key ORDER BY key)"#,
            sweep
        )
        .fetch_one(&self.read)
        .await?;
        let own: Vec<(String, usize, f64, f64)> = parse_json("own metric ranges", &own)?;
        out.extend(own);
        Ok(out)
    }

    /// The jobs of a sweep with a value of `metric` at their latest epoch (how many), and the best
    /// `limit` of them (lowest first when `lower`): (job id, value). The ranking is SQLite's.
    pub async fn best_runs(
        &self,
        sweep: i64,
        metric: &str,
        lower: bool,
        limit: i64,
    ) -> Result<(usize, Vec<(i64, f64)>)> {
        let rows = sqlx::query!(
            r#"WITH v AS (
                 SELECT j.id, CASE ?2 WHEN 'accuracy' THEN m.accuracy WHEN 'test_loss' THEN m.test_loss
                                   WHEN 'train_loss' THEN m.train_loss WHEN 'precision' THEN m.precision
                                   WHEN 'recall' THEN m.recall WHEN 'f1' THEN m.f1 WHEN 'lr' THEN m.lr
                                   WHEN 'images_per_sec' THEN m.images_per_sec WHEN 'seconds' THEN m.seconds
                                   ELSE json_extract(m.extra, '$."' || ?2 || '"') END AS value
                 FROM jobs j JOIN metrics m ON m.job_id = j.id AND m.epoch = j.epoch
                 WHERE j.sweep_id = ?1)
               SELECT v.id AS "id!: i64", v.value AS "value!: f64", (SELECT count(*) FROM v WHERE value IS NOT NULL) AS "total!: i64"
               FROM v WHERE v.value IS NOT NULL
               ORDER BY CASE WHEN ?3 THEN v.value END ASC, CASE WHEN NOT ?3 THEN v.value END DESC, v.id
               LIMIT ?4"#,
            sweep,
            metric,
            lower,
            limit
        )
        .fetch_all(&self.read)
        .await?;
        let total = rows.first().map_or(0, |r| r.total as usize);
        Ok((total, rows.into_iter().map(|r| (r.id, r.value)).collect()))
    }

    /// One metric of these jobs, epoch by epoch (every `stride`-th epoch, plus the first and the
    /// latest): (job id, epoch, value; None where not reported or not finite). A query per job,
    /// by its key: a few hundred jobs at most.
    pub async fn run_curves(
        &self,
        jobs: &[i64],
        metric: &str,
        stride: i64,
    ) -> Result<Vec<(i64, Vec<i64>, Vec<Option<f64>>)>> {
        let mut out = Vec::with_capacity(jobs.len());
        for &job in jobs {
            let rows = sqlx::query!(
                r#"SELECT m.epoch,
                          CASE ?2 WHEN 'accuracy' THEN m.accuracy WHEN 'test_loss' THEN m.test_loss
                                  WHEN 'train_loss' THEN m.train_loss WHEN 'precision' THEN m.precision
                                  WHEN 'recall' THEN m.recall WHEN 'f1' THEN m.f1 WHEN 'lr' THEN m.lr
                                  WHEN 'images_per_sec' THEN m.images_per_sec WHEN 'seconds' THEN m.seconds
                                  ELSE json_extract(m.extra, '$."' || ?2 || '"') END AS "value: f64"
                   FROM metrics m JOIN jobs j ON j.id = m.job_id
                   WHERE m.job_id = ?1 AND (m.epoch % ?3 = 0 OR m.epoch = 1 OR m.epoch = j.epoch)
                   ORDER BY m.epoch"#,
                job,
                metric,
                stride
            )
            .fetch_all(&self.read)
            .await?;
            let epochs = rows.iter().map(|r| r.epoch).collect();
            let values = rows
                .iter()
                .map(|r| r.value.filter(|v| v.is_finite()))
                .collect();
            out.push((job, epochs, values));
        }
        Ok(out)
    }

    /// The ended jobs of a sweep as analysis reads them (importance, slice, contour): id, status,
    /// the parameters named in `axes` (the others dropped as each row is read), and the value of
    /// `metric` at the last epoch each reported (None when it reported none, or none finite).
    /// SQLite builds the list as one JSON text, as the TPE history does (a row at a time through
    /// sqlx costs twice the time); each row's parameters are parsed from it one at a time, so
    /// only the trials are held, each with its few axes.
    pub async fn analysis_trials(
        &self,
        sweep: i64,
        metric: &str,
        axes: &[String],
    ) -> Result<Vec<AnalysisTrial>> {
        let text = sqlx::query_scalar!(
            r#"SELECT json_group_array(json_array(j.id, j.status,
                      CASE WHEN v BETWEEN -1.7e308 AND 1.7e308 THEN v END, json(j.params), j.drawn_at)) AS "trials!: String"
               FROM (SELECT j.id, j.status, j.params, j.drawn_at,
                            CASE ?2 WHEN 'accuracy' THEN m.accuracy WHEN 'test_loss' THEN m.test_loss
                                    WHEN 'train_loss' THEN m.train_loss WHEN 'precision' THEN m.precision
                                    WHEN 'recall' THEN m.recall WHEN 'f1' THEN m.f1 WHEN 'lr' THEN m.lr
                                    WHEN 'images_per_sec' THEN m.images_per_sec WHEN 'seconds' THEN m.seconds
                                    ELSE json_extract(m.extra, '$."' || ?2 || '"') END AS v
                     FROM jobs j LEFT JOIN metrics m ON m.job_id = j.id AND m.epoch = j.epoch
                     WHERE j.sweep_id = ?1 AND j.status IN ('completed', 'pruned', 'diverged')) j"#,
            sweep,
            metric
        )
        .fetch_one(&self.read)
        .await?;
        // Each row's parameters left as text until their turn (borrowed from `text`).
        type Row<'a> = (
            i64,
            String,
            Option<f64>,
            &'a serde_json::value::RawValue,
            Option<i64>,
        );
        let rows: Vec<Row> = serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("the sweep's ended jobs: {e}")))?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, status, value, params, drawn_at) in rows {
            let all: Map<String, Value> = parse_json("jobs.params", params.get())?;
            out.push(AnalysisTrial {
                id,
                drawn_at,
                status: status_of(&status)?,
                value: value.filter(|v| v.is_finite()),
                params: all.into_iter().filter(|(k, _)| axes.contains(k)).collect(),
            });
        }
        out.sort_by_key(|t| t.id);
        Ok(out)
    }
}
