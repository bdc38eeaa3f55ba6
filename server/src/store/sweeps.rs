//! Sweeps: created with all their jobs in one atomic write, cancelled (pending jobs at once,
//! running ones told on their next heartbeat), and synthetic ones for scale tests.
use super::*;

impl Store {
    pub async fn create_sweep(&self, spec: &SweepSpec, now: i64) -> Result<(i64, usize)> {
        let jobs = spec.expand();
        let spec_json = spec.to_value().to_string();
        let (name, max_attempts) = (spec.name.clone(), spec.max_attempts);
        let external = spec.external;
        let early_stop = spec
            .early_stop
            .as_ref()
            .map(|r| serde_json::to_string(&r.to_file()).expect("plain data"));
        let command = spec
            .command
            .as_ref()
            .map(|c| serde_json::to_string(c).expect("plain data"));
        let pbt = spec
            .search
            .as_ref()
            .and_then(|s| s.pbt_stored())
            .map(|p| serde_json::to_string(&p).expect("plain data"));
        // The job's kind, in the column the claim's shapes index: 0 our trainer, 1 a command, 2 a
        // trial of the caller's own loop (asked for, never claimed by a worker).
        let is_command: i64 = match (spec.external, command.is_some()) {
            (true, _) => 2,
            (false, true) => 1,
            (false, false) => 0,
        };
        // TPE: the trials not enqueued are placeholders, drawn when claimed. Their shape is the
        // smallest a draw can have, so every worker that could run some draw can claim them.
        let undrawn = spec.search.as_ref().map_or(0, |s| s.undrawn());
        let placeholder = spec
            .search
            .as_ref()
            .map(|s| s.smallest_point(&spec.train))
            .unwrap_or_default();
        let shared = Value::Object(spec.train.clone()).to_string();
        // Every job as [params, batch_size, nproc, epochs, drawn, nnodes], in one JSON array that one
        // statement inserts: SQLite walks it in C (100,000 jobs in about a second), where a
        // statement per job held the writer several times as long.
        let row = |params: String, shape: JobShape, drawn: bool| {
            serde_json::json!([
                params,
                shape.batch_size,
                shape.nproc_per_node,
                shape.epochs,
                drawn,
                shape.nnodes
            ])
        };
        let mut rows: Vec<Value> = jobs
            .iter()
            .map(|p| {
                let params = Value::Object(p.clone()).to_string();
                row(params, Self::shape_of(spec, p), true)
            })
            .collect();
        let placeholder_shape = Self::shape_of(spec, &placeholder);
        rows.extend((0..undrawn).map(|_| row(shared.clone(), placeholder_shape, false)));
        let count = rows.len();
        let rows = Value::Array(rows).to_string();
        // The sweep and all its jobs commit together, or nothing of them does (run_many: a savepoint).
        self.writer
            .run_many(move |c| {
                async move {
                    let sweep_id = sqlx::query_scalar!(
                        r#"INSERT INTO sweeps (name, spec, early_stop, command, created_at, external, pbt) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id AS "id!""#,
                        name,
                        spec_json,
                        early_stop,
                        command,
                        now,
                        external,
                        pbt
                    )
                    .fetch_one(&mut *c)
                    .await?;
                    sqlx::query!(
                        "INSERT INTO jobs (sweep_id, idx, params, attempt, max_attempts, batch_size, nproc, epochs,
                                           created_at, is_command, drawn_at, nnodes)
                         SELECT ?1, j.key, json_extract(j.value, '$[0]'), 0, ?2, json_extract(j.value, '$[1]'),
                                json_extract(j.value, '$[2]'), json_extract(j.value, '$[3]'), ?3, ?4,
                                CASE WHEN json_extract(j.value, '$[4]') THEN ?3 END, json_extract(j.value, '$[5]')
                         FROM json_each(?5) AS j",
                        sweep_id,
                        max_attempts,
                        now,
                        is_command,
                        rows
                    )
                    .execute(&mut *c)
                    .await?;
                    if pbt.is_some() {
                        sqlx::query!(
                            "INSERT INTO pbt_members (job_id, sweep_id) SELECT id, sweep_id FROM jobs WHERE sweep_id = ?",
                            sweep_id
                        )
                        .execute(&mut *c)
                        .await?;
                    }
                    Ok((sweep_id, count))
                }
                .boxed()
            })
            .await
    }

    /// Cancels pending jobs at once; running ones learn it on their next heartbeat.
    pub async fn cancel_sweep(&self, sweep: i64, now: i64) -> Result<Vec<JobChange>> {
        let ranks = self.ranks.clone();
        let rows = self
            .writer
            .run_many(move |c| {
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
                    // Pending jobs with values from an earlier attempt leave early stopping's memory.
                    ranks.with(sweep, |s| {
                        for r in &rows {
                            s.job_ended(r.id, JobStatus::Cancelled);
                        }
                    });
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
                status: JobStatus::Cancelled,
                attempt: r.attempt,
            })
            .collect())
    }

    /// The scheduling shape of a job of `spec` with these params (a command's ranks, or the
    /// trainer's options).
    pub fn shape_of(spec: &SweepSpec, params: &Map<String, Value>) -> JobShape {
        match &spec.command {
            Some(c) => command_shape(params, c.ranks, c.nnodes),
            None if spec.external => command_shape(params, 1, 1),
            None => JobShape::of(params),
        }
    }

    /// Scale testing (`server synth`): gives every job of `sweep` `epochs` epochs of made-up
    /// metrics and marks it completed, in one statement per table (millions of rows in seconds).
    pub async fn fill_synthetic(&self, sweep: i64, epochs: i64, now: i64) -> Result<u64> {
        self.writer
            .run_many(move |c| {
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
}

impl Store {
    /// `pareto-bench`: one job of a synthetic sweep set running (`done` false) or completed again,
    /// finished at `now` (`done` true): a trial completing, as far as a front can tell.
    pub async fn flip_for_bench(&self, job: i64, done: bool, now: i64) -> Result<()> {
        self.writer
            .run_many(move |c| {
                async move {
                    sqlx::query!(
                        "UPDATE jobs SET status = CASE WHEN ?2 THEN 'completed' ELSE 'running' END,
                                         claimed_at = ?3, attempt_ended_at = ?3,
                                         finished_at = CASE WHEN ?2 THEN ?3 END
                         WHERE id = ?1",
                        job,
                        done,
                        now
                    )
                    .execute(&mut *c)
                    .await?;
                    Ok(())
                }
                .boxed()
            })
            .await
    }

    /// `pareto-bench`: a synthetic sweep's epoch time and throughput varied by job (the synthetic
    /// fill writes one of each), so its front is a trade-off and its constraint bites.
    pub async fn vary_seconds_for_bench(&self, sweep: i64) -> Result<u64> {
        self.writer
            .run_many(move |c| {
                async move {
                    let r = sqlx::query!(
                        "UPDATE metrics SET seconds = 10.0 + ((job_id * 7919) % 997) / 10.0,
                                            images_per_sec = 400.0 + (job_id * 31) % 300
                         WHERE sweep_id = ?",
                        sweep
                    )
                    .execute(&mut *c)
                    .await?;
                    Ok(r.rows_affected())
                }
                .boxed()
            })
            .await
    }
}

/// What the scheduler reads from a command job: its `[command] ranks` and `nnodes`; the epochs its parameters
/// name (else any number of them, so no report of such a program is refused for its epoch); and
/// a batch size that never fits a shared device (an arbitrary program is not packed beside
/// another job).
fn command_shape(params: &Map<String, Value>, ranks: i64, nnodes: i64) -> JobShape {
    JobShape {
        batch_size: i64::MAX,
        nproc_per_node: ranks,
        nnodes,
        epochs: params
            .get("epochs")
            .and_then(Value::as_i64)
            .filter(|n| (1..=crate::sweep::MAX_EPOCHS).contains(n))
            .unwrap_or(crate::sweep::MAX_EPOCHS),
    }
}
