//! TPE's trials: a placeholder job drawn when a claim reaches it. The store finds the next
//! placeholder, reads the history the sampler learns from, and writes the drawn point into the
//! placeholder; the drawing itself happens outside the writer ([`crate::lifecycle::draw`]).
use super::*;
use std::collections::BTreeMap;

/// What a claim found.
#[derive(Debug)]
pub enum ClaimNext {
    Claimed(Box<Claim>),
    /// The oldest job that fits is a trial of this sweep still to be drawn.
    Undrawn(i64),
    Nothing,
}

/// One trial of a history, as stored: its parameters and where it stands.
#[derive(Debug, Clone)]
pub struct StoredTrial {
    /// Its job, and its trial number in its sweep.
    pub job: i64,
    pub idx: i64,
    /// None when the caller already knows them.
    pub params: Option<Map<String, Value>>,
    pub status: JobStatus,
    /// The last epoch it reported, and each asked metric's finite value there.
    pub epoch: i64,
    pub values: Vec<Option<f64>>,
    /// NSGA-II: the generation it was drawn in.
    pub generation: Option<i64>,
}

/// Fronts computed, by (sweep, what was asked), each with the completed trials' values it was
/// computed from: a completed trial's values never change, so when trials complete only theirs
/// are read (those finished since the last read, less a minute for finishes still committing,
/// each once), and while none has the front is kept as it is (the dashboard and `server status`
/// ask every few seconds). Bounded: past [`FrontCache::CAPACITY`] entries it starts over.
#[derive(Debug, Default)]
pub(super) struct FrontCache(std::sync::Mutex<std::collections::HashMap<(i64, String), Kept>>);

#[derive(Debug, Clone)]
struct Kept {
    /// The sweep's completed count when read.
    completed: i64,
    /// The latest `finished_at` among `rows`.
    finished: i64,
    rows: std::sync::Arc<Vec<crate::results::front::Completed>>,
    view: std::sync::Arc<protocol::views::ParetoView>,
}

impl FrontCache {
    /// A 100,000-trial sweep's values take about 10 MB.
    pub(super) const CAPACITY: usize = 16;
    /// How long a finish may take from its timestamp to its commit and still be read.
    const SETTLE_MS: i64 = 60_000;
}

impl Store {
    /// A sweep's front on `objectives` under `constraints` (with `all`, every trial too), without
    /// parameters: computed from its completed trials' values, or kept from the last time while no
    /// trial has completed since.
    pub async fn front(
        &self,
        sweep: i64,
        objectives: &[(String, crate::sweep::early_stop::Mode)],
        constraints: &[crate::sweep::objectives::Constraint],
        all: bool,
    ) -> Result<std::sync::Arc<protocol::views::ParetoView>> {
        let completed = sqlx::query_scalar!(
            "SELECT completed FROM sweep_counts WHERE sweep_id = ?",
            sweep
        )
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("sweep {sweep}")))?;
        let key = (sweep, format!("{objectives:?} {constraints:?} {all}"));
        let kept = {
            let cache = self.fronts.0.lock().unwrap_or_else(|e| e.into_inner());
            cache.get(&key).cloned()
        };
        if let Some(k) = kept.as_ref().filter(|k| k.completed == completed) {
            return Ok(k.view.clone());
        }
        let mut metrics: Vec<String> = objectives.iter().map(|o| o.0.clone()).collect();
        metrics.extend(constraints.iter().map(|c| c.metric.clone()));
        let since = kept.as_ref().map_or(i64::MIN, |k| {
            k.finished.saturating_sub(FrontCache::SETTLE_MS)
        });
        let (fresh, finished) = self.completed_values(sweep, &metrics, since).await?;
        let (o, c) = (objectives.to_vec(), constraints.to_vec());
        let old = kept.map(|k| (k.rows, k.finished));
        // Linear in the trials (a 100,000-trial sweep takes tens of ms): off the async threads.
        let (rows, finished, view) = tokio::task::spawn_blocking(move || {
            let (rows, finished) = match old {
                Some((rows, was)) => {
                    let seen: std::collections::HashSet<i64> = rows.iter().map(|r| r.0).collect();
                    let mut all = (*rows).clone();
                    all.extend(fresh.into_iter().filter(|r| !seen.contains(&r.0)));
                    (all, finished.max(was))
                }
                None => (fresh, finished),
            };
            let view = crate::results::front::front(&o, &c, &rows, all);
            (
                std::sync::Arc::new(rows),
                finished,
                std::sync::Arc::new(view),
            )
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("the front's computation stopped: {e}")))?;
        let mut cache = self.fronts.0.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= FrontCache::CAPACITY {
            cache.clear();
        }
        let k = Kept {
            completed,
            finished,
            rows,
            view: view.clone(),
        };
        cache.insert(key, k);
        Ok(view)
    }

    /// A sweep's validated spec, as stored.
    pub async fn sweep_spec(&self, sweep: i64) -> Result<SweepSpec> {
        Ok(self.stored_spec(sweep).await?.1)
    }

    /// A sweep's spec as stored (its JSON, which the dashboard and the exports' layout read) and
    /// as read back (the typed spec), from one read.
    pub async fn stored_spec(&self, sweep: i64) -> Result<(Value, SweepSpec)> {
        let text = sqlx::query_scalar!("SELECT spec FROM sweeps WHERE id = ?", sweep)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("sweep {sweep}")))?;
        let v: Value = parse_json("sweeps.spec", &text)?;
        let spec = SweepSpec::from_value(&v)
            .map_err(|e| StoreError::Corrupt(format!("sweep {sweep}: {e}")))?;
        Ok((v, spec))
    }

    /// The sweep's next placeholder (job id, trial number), if any is left pending.
    pub async fn next_undrawn(&self, sweep: i64) -> Result<Option<(i64, i64)>> {
        let row = sqlx::query!(
            r#"SELECT id AS "id!", idx FROM jobs WHERE sweep_id = ? AND drawn_at IS NULL AND status = 'pending'
               ORDER BY idx LIMIT 1"#,
            sweep
        )
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| (r.id, r.idx)))
    }

    /// The drawn trials of `sweep` in trial order, each with `metrics` at the last epoch it
    /// reported. Failed and cancelled trials are left out; with `finished_only` (a warm start's
    /// history) so are trials still pending or running. A trial's params come back only if its
    /// number is not in `known` (drawn params never change: the caller keeps them).
    ///
    /// One row: SQLite builds the history as one JSON array, because a 10,000-trial history read
    /// as rows costs the driver more than everything else a draw does.
    pub async fn trial_history(
        &self,
        sweep: i64,
        metrics: &[String],
        finished_only: bool,
        known: &[i64],
    ) -> Result<Vec<StoredTrial>> {
        let known = serde_json::to_string(known).expect("plain data");
        let names = serde_json::to_string(metrics).expect("plain data");
        let text = sqlx::query_scalar!(
            r#"SELECT json_group_array(json_array(j.id, j.idx, j.status, j.epoch, j.generation,
                      (SELECT json_group_array(
                              -- Clamped: JSON has no infinity (read back as not finite).
                              min(max(CASE n.value WHEN 'accuracy' THEN m.accuracy WHEN 'test_loss' THEN m.test_loss
                                    WHEN 'train_loss' THEN m.train_loss WHEN 'precision' THEN m.precision
                                    WHEN 'recall' THEN m.recall WHEN 'f1' THEN m.f1 WHEN 'lr' THEN m.lr
                                    WHEN 'images_per_sec' THEN m.images_per_sec WHEN 'seconds' THEN m.seconds
                                    ELSE json_extract(m.extra, '$."' || n.value || '"') END, -1.7e308), 1.7e308))
                       FROM json_each(?2) n),
                      CASE WHEN j.idx IN (SELECT value FROM json_each(?3)) THEN NULL ELSE json(j.params) END)) AS "history!: String"
               FROM jobs j LEFT JOIN metrics m ON m.job_id = j.id AND m.epoch = j.epoch
               WHERE j.sweep_id = ?1 AND j.drawn_at IS NOT NULL
                 AND j.status IN ('completed', 'pruned', 'diverged', 'pending', 'running')"#,
            sweep,
            names,
            known
        )
        .fetch_one(&self.read)
        .await?;
        type Row = (
            i64,
            i64,
            String,
            i64,
            Option<i64>,
            Vec<Option<f64>>,
            Option<Map<String, Value>>,
        );
        let mut rows: Vec<Row> = parse_json("the trial history", &text)?;
        rows.sort_by_key(|r| r.1);
        let mut out = Vec::with_capacity(rows.len());
        for (job, idx, status, epoch, generation, values, params) in rows {
            let status = status_of(&status)?;
            if finished_only && !status.is_final() {
                continue;
            }
            out.push(StoredTrial {
                job,
                idx,
                params,
                status,
                epoch,
                values: values.into_iter().map(finite).collect(),
                generation,
            });
        }
        Ok(out)
    }

    /// Every completed trial of `sweep` that finished at or after `since`: (job, trial number,
    /// `metrics` at its last epoch, finite or None), and the latest `finished_at` among them. Read
    /// three metrics at a time, each a column of one JSON array SQLite builds (a front of 100,000
    /// trials reads them all; a row of its own per metric costs SQLite twice the time).
    pub async fn completed_values(
        &self,
        sweep: i64,
        metrics: &[String],
        since: i64,
    ) -> Result<(Vec<crate::results::front::Completed>, i64)> {
        let mut out: Vec<crate::results::front::Completed> = vec![];
        let mut latest = i64::MIN;
        for (k, chunk) in metrics.chunks(3).enumerate() {
            let (rows, finished) = self.three_values(sweep, chunk, since).await?;
            if k == 0 {
                (out, latest) = (rows, finished);
                continue;
            }
            // A trial completed between two reads is left out until the next.
            let mut by_job: std::collections::HashMap<i64, Vec<Option<f64>>> =
                rows.into_iter().map(|r| (r.0, r.2)).collect();
            out.retain_mut(|r| match by_job.remove(&r.0) {
                Some(more) => {
                    r.2.extend(more);
                    true
                }
                None => false,
            });
        }
        Ok((out, latest))
    }

    /// [`Store::completed_values`] of up to three metrics (a missing slot reads NULL).
    async fn three_values(
        &self,
        sweep: i64,
        metrics: &[String],
        since: i64,
    ) -> Result<(Vec<crate::results::front::Completed>, i64)> {
        let slot = |i: usize| metrics.get(i).cloned();
        let (a, b, c) = (slot(0), slot(1), slot(2));
        let text = sqlx::query_scalar!(
            r#"SELECT json_group_array(json_array(j.id, j.idx, j.finished_at,
                      -- Clamped: JSON has no infinity (read back as not finite).
                      min(max(CASE ?2 WHEN 'accuracy' THEN m.accuracy WHEN 'test_loss' THEN m.test_loss
                            WHEN 'train_loss' THEN m.train_loss WHEN 'precision' THEN m.precision
                            WHEN 'recall' THEN m.recall WHEN 'f1' THEN m.f1 WHEN 'lr' THEN m.lr
                            WHEN 'images_per_sec' THEN m.images_per_sec WHEN 'seconds' THEN m.seconds
                            ELSE json_extract(m.extra, '$."' || ?2 || '"') END, -1.7e308), 1.7e308),
                      min(max(CASE ?3 WHEN 'accuracy' THEN m.accuracy WHEN 'test_loss' THEN m.test_loss
                            WHEN 'train_loss' THEN m.train_loss WHEN 'precision' THEN m.precision
                            WHEN 'recall' THEN m.recall WHEN 'f1' THEN m.f1 WHEN 'lr' THEN m.lr
                            WHEN 'images_per_sec' THEN m.images_per_sec WHEN 'seconds' THEN m.seconds
                            ELSE json_extract(m.extra, '$."' || ?3 || '"') END, -1.7e308), 1.7e308),
                      min(max(CASE ?4 WHEN 'accuracy' THEN m.accuracy WHEN 'test_loss' THEN m.test_loss
                            WHEN 'train_loss' THEN m.train_loss WHEN 'precision' THEN m.precision
                            WHEN 'recall' THEN m.recall WHEN 'f1' THEN m.f1 WHEN 'lr' THEN m.lr
                            WHEN 'images_per_sec' THEN m.images_per_sec WHEN 'seconds' THEN m.seconds
                            ELSE json_extract(m.extra, '$."' || ?4 || '"') END, -1.7e308), 1.7e308))) AS "rows!: String"
               FROM jobs j JOIN metrics m ON m.job_id = j.id AND m.epoch = j.epoch
               WHERE j.sweep_id = ?1 AND j.status = 'completed' AND coalesce(j.finished_at, 0) >= ?5"#,
            sweep,
            a,
            b,
            c,
            since
        )
        .fetch_one(&self.read)
        .await?;
        type Row = (i64, i64, Option<i64>, Option<f64>, Option<f64>, Option<f64>);
        let rows: Vec<Row> = parse_json("the completed trials", &text)?;
        let latest = rows.iter().filter_map(|r| r.2).max().unwrap_or(i64::MIN);
        let mut out: Vec<crate::results::front::Completed> = rows
            .into_iter()
            .map(|(job, idx, _, x, y, z)| {
                let values = [x, y, z][..metrics.len()]
                    .iter()
                    .map(|v| finite(*v))
                    .collect();
                (job, idx, values)
            })
            .collect();
        out.sort_by_key(|r| r.1);
        Ok((out, latest))
    }

    /// The parameters of these jobs, by id.
    pub async fn params_of(&self, jobs: &[i64]) -> Result<std::collections::HashMap<i64, Value>> {
        let ids = serde_json::to_string(jobs).expect("plain data");
        let rows = sqlx::query!(
            r#"SELECT id AS "id!", params FROM jobs WHERE id IN (SELECT value FROM json_each(?))"#,
            ids
        )
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.id, parse_json("jobs.params", &r.params)?)))
            .collect()
    }

    /// An NSGA-II sweep's parents, by generation, as chosen so far (job ids).
    pub async fn nsga2_parents(&self, sweep: i64) -> Result<BTreeMap<i64, Vec<i64>>> {
        let rows = sqlx::query!(
            "SELECT generation, parents FROM nsga2_parents WHERE sweep_id = ?",
            sweep
        )
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    r.generation,
                    parse_json("nsga2_parents.parents", &r.parents)?,
                ))
            })
            .collect()
    }

    /// Keeps the parents chosen for a generation (the first choice stands).
    pub async fn keep_nsga2_parents(
        &self,
        sweep: i64,
        generation: i64,
        parents: &[i64],
    ) -> Result<()> {
        let text = serde_json::to_string(parents).expect("plain data");
        self.writer
            .run(move |one| {
                async move {
                    one.execute(sqlx::query!(
                        "INSERT OR IGNORE INTO nsga2_parents (sweep_id, generation, parents) VALUES (?, ?, ?)",
                        sweep,
                        generation,
                        text
                    ))
                    .await?;
                    Ok(())
                }
                .boxed()
            })
            .await
    }

    /// Writes the drawn point into the placeholder (still pending and undrawn); false if it is
    /// gone meanwhile (its sweep cancelled).
    pub async fn write_drawn(
        &self,
        job: i64,
        params: &Map<String, Value>,
        shape: JobShape,
        generation: Option<i64>,
        now: i64,
    ) -> Result<bool> {
        let text = Value::Object(params.clone()).to_string();
        self.writer
            .run(move |one| {
                async move {
                    let r = one.execute(sqlx::query!(
                        "UPDATE jobs SET params = ?, batch_size = ?, nproc = ?, epochs = ?, nnodes = ?, drawn_at = ?, generation = ?
                         WHERE id = ? AND drawn_at IS NULL AND status = 'pending'",
                        text,
                        shape.batch_size,
                        shape.nproc_per_node,
                        shape.epochs,
                        shape.nnodes,
                        now,
                        generation,
                        job
                    ))
                    .await?;
                    Ok(r.rows_affected() == 1)
                }
                .boxed()
            })
            .await
    }
}

/// A value read through the clamped JSON: the clamp's bounds stand for infinities.
pub(crate) fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.abs() < 1.7e308)
}
