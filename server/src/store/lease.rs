//! A job's lease: claimed (one statement picks and takes the job, incrementing its attempt),
//! renewed by heartbeats, written to by the attempt that holds it (each write fenced by attempt in
//! its own WHERE), and ended by finish, release or an expired lease. A cancelled sweep's job ends
//! `cancelled` on every one of those paths, and a job an early-stopping decision stopped ends
//! `pruned` on every one of them.
use super::*;

impl Store {
    /// After a restart, running jobs get a fresh lease: their workers could not heartbeat while the
    /// coordinator was down, and must not lose their jobs for it.
    pub async fn extend_running_leases(&self, now: i64, lease_ms: i64) -> Result<u64> {
        let until = now + lease_ms;
        // Two statements: both or neither.
        self.writer
            .run_many(move |c| {
                async move {
                    let r = sqlx::query!("UPDATE jobs SET lease_expires_at = max(lease_expires_at, ?) WHERE status = 'running'", until)
                        .execute(&mut *c)
                        .await?;
                    // A gang's members too: the job's lease is recomputed from theirs at each heartbeat.
                    sqlx::query!(
                        "UPDATE gang_members SET lease_expires_at = max(lease_expires_at, ?)
                         WHERE lease_expires_at IS NOT NULL
                           AND (job_id, attempt) IN (SELECT id, attempt FROM jobs WHERE status = 'running' AND nnodes > 1)",
                        until
                    )
                    .execute(&mut *c)
                    .await?;
                    Ok(r.rows_affected())
                }
                .boxed()
            })
            .await
    }

    /// Hands the oldest pending job that fits `capacity` to `worker`, under a lease. The job is
    /// picked and taken on the writer's one connection, so two claims can never get the same one.
    /// A worker that offers a rendezvous first joins a forming gang that fits (see [`super::gangs`]);
    /// a multi-node job it takes starts a gang, with `gang_ms` to form. When the oldest that fits is
    /// a TPE trial not yet drawn, nothing is taken and its sweep is named instead: the caller draws
    /// it (outside the writer) and claims again. `skip_undrawn` passes over such trials (a claim
    /// that has drawn enough for others).
    pub async fn claim_next(
        &self,
        req: &protocol::ClaimRequest,
        credential: Option<&crate::credentials::Credential>,
        secret_hash: &[u8],
        terms: ClaimTerms,
    ) -> Result<ClaimNext> {
        let ClaimTerms {
            skip_undrawn,
            now,
            lease_ms,
            gang_ms,
            sweep,
        } = terms;
        let until = now + lease_ms;
        let secret_hash = secret_hash.to_vec();
        let req = req.clone();
        let credential = credential.cloned();
        // Several statements (the probes, the take, a gang member's row, the command): under a
        // savepoint, and the reply is built inside, so a claim whose reply cannot be made leaves
        // nothing behind (no attempt handed out that no worker ever learns of).
        self.writer
            .run_many(move |c| {
                async move {
                    let asked = Asked {
                        req: &req,
                        credential: credential.as_ref(),
                        secret_hash: &secret_hash,
                        skip_undrawn,
                        now,
                        until,
                        gang_ms,
                    };
                    let (taken, undrawn) = match sweep {
                        Some(sweep) => take_asked(c, &asked, sweep).await?,
                        None => take_next(c, &asked).await?,
                    };
                    match (taken, undrawn) {
                        (Some(row), _) => Ok(ClaimNext::Claimed(Box::new(
                            claim_reply(c, row, until, lease_ms).await?,
                        ))),
                        (None, Some(sweep)) => Ok(ClaimNext::Undrawn(sweep)),
                        (None, None) => Ok(ClaimNext::Nothing),
                    }
                }
                .boxed()
            })
            .await
    }

    /// A job's current attempt and the hash of that attempt's lease secret (None before its first
    /// claim); NotFound when there is no such job.
    pub async fn lease_of(&self, job: i64) -> Result<(i64, Option<Vec<u8>>)> {
        let row = sqlx::query!(
            "SELECT attempt, lease_secret_hash FROM jobs WHERE id = ?",
            job
        )
        .fetch_optional(&self.worker_read)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("job {job}")))?;
        Ok((row.attempt, row.lease_secret_hash))
    }

    /// Why `attempt` does not hold `job` (409), for a write whose attempt is not the current one.
    pub async fn lease_lost(&self, job: i64, attempt: i64) -> StoreError {
        self.fence_error(job, attempt).await
    }

    /// The fence: Ok if `attempt` holds `job` (running), else why not.
    pub(super) async fn fence_error(&self, job: i64, attempt: i64) -> StoreError {
        match sqlx::query!("SELECT status, attempt FROM jobs WHERE id = ?", job)
            .fetch_optional(&self.worker_read)
            .await
        {
            Ok(None) => StoreError::NotFound(format!("job {job}")),
            Ok(Some(r)) => not_holding(job, attempt, &r.status, r.attempt),
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
            .run(move |one| {
                async move {
                    Ok(one.fetch_optional(sqlx::query!(
                        // Never shortened: an ask may have taken a longer lease than a heartbeat renews.
                        r#"UPDATE jobs SET lease_expires_at = max(coalesce(lease_expires_at, 0), ?1) WHERE id = ?2 AND attempt = ?3 AND status = 'running'
                           RETURNING cancel_requested AS "cancel!", stop_requested AS "stop!", lease_expires_at AS "until!""#,
                        until,
                        job,
                        attempt
                    ))
                    .await?)
                }
                .boxed()
            })
            .await?;
        match row {
            Some(r) => Ok(HeartbeatReply {
                cancel: r.cancel != 0,
                stop: r.stop != 0,
                lease_expires_at: r.until,
                gang: None,
            }),
            None => Err(self.fence_error(job, attempt).await),
        }
    }

    /// Stores one epoch's metrics. The same epoch reported twice is stored once; a later attempt's
    /// report of an epoch replaces an earlier attempt's (it is the trajectory that continues).
    pub async fn record_metrics(&self, job: i64, m: &MetricsReport, now: i64) -> Result<i64> {
        let report = m.clone();
        let stored = self
            .writer
            .run(move |one| async move { insert_metrics(one, job, &report, now).await }.boxed())
            .await?;
        match stored {
            Some(sweep_id) => Ok(sweep_id),
            None => self.metrics_not_stored(job, m).await,
        }
    }

    /// Why a report stored nothing: a repeat of an epoch (fine: its sweep), or an error (an attempt
    /// without the lease, an epoch past the job's last).
    pub(super) async fn metrics_not_stored(&self, job: i64, m: &MetricsReport) -> Result<i64> {
        let attempt = m.attempt;
        let row = sqlx::query!(
            "SELECT sweep_id, status, attempt, epochs FROM jobs WHERE id = ?",
            job
        )
        .fetch_optional(&self.worker_read)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("job {job}")))?;
        if row.attempt != attempt || row.status != JobStatus::Running.as_str() {
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
        outcome: protocol::Outcome,
        summary: Option<&Value>,
        error: Option<&str>,
        now: i64,
    ) -> Result<JobChange> {
        let summary = summary.map(Value::to_string);
        let outcome = outcome.as_str();
        let (outcome_s, error_s) = (outcome.to_string(), error.map(str::to_string));
        let ranks = self.ranks.clone();
        let row = self.writer.run(move |one| async move { let (outcome, error) = (outcome_s, error_s); let row = one.fetch_optional(sqlx::query!(
            // `failed` with attempts left goes back to pending, unless the job's sweep was cancelled
            // meanwhile (then it ends cancelled: a retry would run a cancelled job) or an early-stopping
            // decision stopped it (then it ends pruned, as does a run that completed after the stop
            // was decided: Optuna's pruned trials are those the rule stopped, whatever came after).
            r#"UPDATE jobs SET
                 status = CASE WHEN ?3 = 'failed' AND cancel_requested = 1 THEN 'cancelled'
                               WHEN ?3 IN ('completed', 'failed') AND stop_requested = 1 THEN 'pruned'
                               WHEN ?3 = 'failed' AND attempt < max_attempts THEN 'pending'
                               ELSE ?3 END,
                 finished_at = CASE WHEN ?3 = 'failed' AND attempt < max_attempts AND cancel_requested = 0
                                         AND stop_requested = 0 THEN NULL
                                    ELSE ?4 END,
                 summary = coalesce(?5, summary),
                 error = coalesce(?6, error),
                 worker = CASE WHEN ?3 = 'failed' AND attempt < max_attempts AND cancel_requested = 0
                                    AND stop_requested = 0 THEN NULL
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
        ))
        .await?;
        if let Some(row) = &row {
            attempt_ended(&ranks, row.sweep_id, job, status_of(&row.status)?);
        }
        Ok(row) }.boxed())
        .await?;
        if let Some(row) = row {
            let change = change_of(job, row.sweep_id, &row.status, row.attempt)?;
            self.settle(&change).await?;
            return Ok(change);
        }
        // Idempotent: the same attempt finishing the same way again changes nothing.
        let done = sqlx::query!(
            r#"SELECT a.outcome AS "outcome?", j.sweep_id, j.status, j.attempt FROM attempts a JOIN jobs j ON j.id = a.job_id
               WHERE a.job_id = ? AND a.attempt = ?"#,
            job,
            attempt
        )
        .fetch_optional(&self.worker_read)
        .await?;
        match done {
            Some(d) if d.outcome.as_deref() == Some(outcome) => {
                change_of(job, d.sweep_id, &d.status, d.attempt)
            }
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
        rules: Release,
        now: i64,
    ) -> Result<JobChange> {
        let reason = reason.to_string();
        let ranks = self.ranks.clone();
        let row = self
            .writer
            .run(move |one| {
                async move {
                    let row = one.fetch_optional(sqlx::query!(
                        // Released after a cancel or a stop: the job ends (cancelled or pruned) instead of
                        // waiting for a claim. An idle release (no epoch committed since the claim) past
                        // the free ones is charged: its attempt counts, and the last one fails the job.
                        r#"UPDATE jobs SET
                             status = CASE WHEN cancel_requested = 1 THEN 'cancelled'
                                           WHEN stop_requested = 1 THEN 'pruned'
                                           WHEN epoch <= claim_epoch AND idle_releases >= ?7 AND attempt >= max_attempts THEN 'failed'
                                           ELSE 'pending' END,
                             max_attempts = CASE WHEN cancel_requested = 1 OR stop_requested = 1 THEN max_attempts
                                                 WHEN epoch <= claim_epoch AND idle_releases >= ?7 THEN max_attempts
                                                 ELSE max_attempts + 1 END,
                             idle_releases = idle_releases + (epoch <= claim_epoch),
                             finished_at = CASE WHEN cancel_requested = 1 OR stop_requested = 1 THEN ?3
                                                WHEN epoch <= claim_epoch AND idle_releases >= ?7 AND attempt >= max_attempts THEN ?3
                                                ELSE finished_at END,
                             error = CASE WHEN cancel_requested = 0 AND stop_requested = 0 AND epoch <= claim_epoch
                                               AND idle_releases >= ?7 AND attempt >= max_attempts
                                          THEN 'given back ' || (idle_releases + 1) || ' times with no epoch committed since its claim; the last ' ||
                                               (idle_releases + 1 - ?7) || ' of them charged an attempt (serve --free-idle-releases ' || ?7 || ')'
                                          ELSE error END,
                             worker = CASE WHEN cancel_requested = 1 OR stop_requested = 1 THEN worker
                                           WHEN epoch <= claim_epoch AND idle_releases >= ?7 AND attempt >= max_attempts THEN worker END,
                             lease_expires_at = NULL,
                             attempt_ended_at = ?3, attempt_outcome = 'released', attempt_error = ?4,
                             gang_barred = CASE WHEN nnodes > 1 THEN
                                 (SELECT m.worker FROM gang_members m WHERE m.job_id = ?1 AND m.attempt = ?2 AND m.node_rank = ?5)
                                 ELSE gang_barred END,
                             gang_barred_until = CASE WHEN nnodes > 1 THEN ?6 ELSE gang_barred_until END
                           WHERE id = ?1 AND attempt = ?2 AND status = 'running'
                           RETURNING sweep_id AS "sweep_id!", status AS "status!", attempt AS "attempt!""#,
                        job,
                        attempt,
                        now,
                        reason,
                        rules.node_rank,
                        rules.barred_until,
                        rules.free_idle_releases
                    ))
                    .await?;
                    if let Some(r) = &row {
                        attempt_ended(&ranks, r.sweep_id, job, status_of(&r.status)?);
                    }
                    Ok(row)
                }
                .boxed()
            })
            .await?;
        match row {
            Some(r) => {
                let change = change_of(job, r.sweep_id, &r.status, r.attempt)?;
                self.settle(&change).await?;
                Ok(change)
            }
            None => Err(self.fence_error(job, attempt).await),
        }
    }

    /// Ok when `attempt` holds `job` now (for writes outside the database, like checkpoint files).
    pub async fn check_fence(&self, job: i64, attempt: i64) -> Result<()> {
        let row = sqlx::query!("SELECT status, attempt FROM jobs WHERE id = ?", job)
            .fetch_optional(&self.worker_read)
            .await?;
        match row {
            Some(r) if r.attempt == attempt && r.status == JobStatus::Running.as_str() => Ok(()),
            _ => Err(self.fence_error(job, attempt).await),
        }
    }

    pub async fn job_exists(&self, job: i64) -> Result<bool> {
        Ok(sqlx::query_scalar!("SELECT id FROM jobs WHERE id = ?", job)
            .fetch_optional(&self.worker_read)
            .await?
            .is_some())
    }

    /// Returns every running job whose lease ran out before `now` to pending (its next claim takes the
    /// next attempt), or fails it when it has used all its attempts.
    pub async fn requeue_expired(&self, now: i64) -> Result<Vec<JobChange>> {
        let ranks = self.ranks.clone();
        let rows = self.writer.run(move |one| async move { let rows = one.fetch_all(sqlx::query!(
            // A cancelled (or stopped) job whose worker vanished ends cancelled (or pruned), not pending
            // or failed. A gang still forming (`gang_until` set) never started: a member lost then
            // costs no attempt, as a dissolution does not.
            r#"UPDATE jobs SET
                 status = CASE WHEN cancel_requested = 1 THEN 'cancelled'
                               WHEN stop_requested = 1 THEN 'pruned'
                               WHEN attempt < max_attempts OR gang_until IS NOT NULL THEN 'pending'
                               ELSE 'failed' END,
                 max_attempts = CASE WHEN gang_until IS NOT NULL AND cancel_requested = 0 AND stop_requested = 0
                                     THEN max_attempts + 1 ELSE max_attempts END,
                 error = CASE WHEN cancel_requested = 1 THEN 'cancelled; its worker stopped heartbeating'
                              WHEN stop_requested = 1 THEN error
                              WHEN attempt < max_attempts OR gang_until IS NOT NULL THEN error
                              ELSE 'lease expired on attempt ' || attempt || ' of ' || max_attempts || ' (' ||
                                   coalesce((SELECT 'node ' || m.node_rank || ' of its gang, worker ' || m.worker
                                             FROM gang_members m WHERE m.job_id = jobs.id AND m.attempt = jobs.attempt
                                               AND m.lease_expires_at < ?1 ORDER BY m.lease_expires_at, m.node_rank LIMIT 1),
                                            'worker ' || coalesce(worker, '?')) || ', stopped heartbeating)' END,
                 finished_at = CASE WHEN (attempt < max_attempts OR gang_until IS NOT NULL) AND cancel_requested = 0
                                         AND stop_requested = 0 THEN NULL
                                    ELSE ?1 END,

                 worker = NULL, lease_expires_at = NULL,
                 attempt_ended_at = ?1, attempt_outcome = 'lease expired',
                 -- A gang's attempt names the member that lapsed (its lease is the one that ran
                 -- out), never a node that kept heartbeating.
                 attempt_error = coalesce(
                     (SELECT 'node ' || m.node_rank || ' of the gang (worker ' || m.worker || ') stopped heartbeating'
                             || CASE WHEN gang_until IS NOT NULL THEN ' while it formed' ELSE '' END
                      FROM gang_members m WHERE m.job_id = jobs.id AND m.attempt = jobs.attempt
                        AND m.lease_expires_at < ?1 ORDER BY m.lease_expires_at, m.node_rank LIMIT 1),
                     CASE WHEN gang_until IS NOT NULL THEN 'a member of its forming gang stopped heartbeating'
                          ELSE 'no heartbeat before the lease ran out' END)
               WHERE status = 'running' AND lease_expires_at < ?1
               RETURNING id AS "id!", sweep_id AS "sweep_id!", status AS "status!", attempt AS "attempt!""#,
            now
        ))
        .await?;
        for r in &rows {
            attempt_ended(&ranks, r.sweep_id, r.id, status_of(&r.status)?);
        }
        Ok(rows) }.boxed())
        .await?;
        self.ended(
            rows.into_iter()
                .map(|r| (r.id, r.sweep_id, r.status, r.attempt)),
        )
        .await
    }
}

/// The terms of a claim: whether it passes over TPE trials still to be drawn, when it is made,
/// how long its lease lasts and how long a gang it starts may take to form.
#[derive(Debug, Clone, Copy)]
pub struct ClaimTerms {
    pub skip_undrawn: bool,
    pub now: i64,
    pub lease_ms: i64,
    pub gang_ms: i64,
    /// An ask: only this sweep's trials (an external sweep's), whatever their shape.
    pub sweep: Option<i64>,
}

/// What a claim asks for, inside the writer.
struct Asked<'a> {
    req: &'a protocol::ClaimRequest,
    /// The worker's own credential (None: a shared token).
    credential: Option<&'a crate::credentials::Credential>,
    secret_hash: &'a [u8],
    skip_undrawn: bool,
    now: i64,
    until: i64,
    gang_ms: i64,
}

/// The claim's steps on the writer's connection: join a forming gang that fits, else take the
/// oldest pending job that fits (a multi-node one starts a gang). (None, Some(sweep)) when that
/// job is a TPE trial still to be drawn.
async fn take_next(
    c: &mut SqliteConnection,
    a: &Asked<'_>,
) -> Result<(Option<gangs::Taken>, Option<i64>)> {
    if !within_cap(c, a.credential).await? {
        return Ok((None, None));
    }
    let (ranks, max_batch) = match a.req.capacity {
        Some(cap) => (Some(cap.ranks), cap.max_batch_size),
        None => (None, None),
    };
    let w = a.req.rendezvous.as_ref().map(|rendezvous| gangs::Claimant {
        worker: &a.req.worker,
        ranks,
        max_batch,
        accepts_commands: a.req.accepts_commands,
        rendezvous,
        credential: a.credential.map(|c| c.name.as_str()),
        secret_hash: a.secret_hash,
        now: a.now,
        until: a.until,
        left: a.req.deadline.map(|d| d - a.now),
    });
    // A worker waits in at most one forming gang; while it does, multi-node jobs are not for it.
    let gangs_ok = match &w {
        Some(w) => !gangs::waiting_in_a_gang(c, w.worker).await?,
        None => false,
    };
    if let (true, Some(w)) = (gangs_ok, &w) {
        if let Some(joined) = gangs::join_forming(c, w).await? {
            return Ok((Some(joined), None));
        }
    }
    let oldest = match a.req.deadline {
        None => oldest_fitting(c, a, ranks, max_batch, gangs_ok).await?,
        Some(deadline) => {
            let left = deadline - a.now;
            let oldest = oldest_in_time(c, a, (ranks, max_batch, gangs_ok), left).await?;
            passed_over(c, a, (ranks, max_batch, gangs_ok), left).await?;
            oldest
        }
    };
    let Some(oldest) = oldest else {
        return Ok((None, None));
    };
    // The oldest that fits is still to be drawn: its sweep is named, nothing is taken.
    if !oldest.drawn {
        return Ok((None, Some(oldest.sweep_id)));
    }
    Ok((take(c, a, oldest.id, w.as_ref()).await?, None))
}

/// The oldest pending job a claim may take: per shape of pending job that fits the worker, its
/// oldest job (one index probe each), and the oldest of those. A cancel sticks: a job whose sweep
/// was cancelled is never handed out again, whatever raced the cancel.
async fn oldest_fitting(
    c: &mut SqliteConnection,
    a: &Asked<'_>,
    ranks: Option<i64>,
    max_batch: Option<i64>,
    gangs_ok: bool,
) -> Result<Option<Oldest>> {
    Ok(sqlx::query_as!(
        Oldest,
        r#"SELECT j.id AS "id!", j.sweep_id AS "sweep_id!", j.drawn_at IS NOT NULL AS "drawn!: bool"
           FROM jobs j WHERE j.id = (SELECT min(first) FROM (
             SELECT (SELECT k.id FROM jobs k INDEXED BY jobs_pending_shape
                     WHERE k.status = 'pending' AND k.nproc = p.nproc AND k.batch_size = p.batch_size
                       AND k.is_command = p.is_command AND k.drawn = p.drawn AND k.nnodes = p.nnodes
                       AND k.cancel_requested = 0 AND k.stop_requested = 0
                       AND NOT EXISTS (SELECT 1 FROM sweeps s WHERE s.id = k.sweep_id AND s.cancelled_at IS NOT NULL)
                       AND NOT (k.nnodes > 1 AND k.gang_barred IS ?6 AND coalesce(k.gang_barred_until > ?7, 0))
                     ORDER BY k.id LIMIT 1) AS first
             FROM pending_shapes p
             WHERE p.jobs > 0 AND (?1 IS NULL OR p.nproc <= ?1) AND (?2 IS NULL OR p.batch_size <= ?2)
               AND (p.is_command = 0 OR (?3 AND p.is_command = 1)) AND (?4 = 0 OR p.drawn = 1) AND (?5 OR p.nnodes = 1)))"#,
        ranks,
        max_batch,
        a.req.accepts_commands,
        a.skip_undrawn,
        gangs_ok,
        a.req.worker,
        a.now
    )
    .fetch_optional(&mut *c)
    .await?)
}

/// Pending jobs a claim with a deadline looks at in each shape before it gives the shape up: jobs
/// of one sweep and shape share an estimate, so only a queue of many long jobs ahead of short ones
/// in the same shape hides the short ones (bounded, so no claim scans a sweep of 100,000 jobs).
const FIT_LOOKAHEAD: i64 = 256;

/// [`oldest_fitting`] for a worker that gives its jobs back `left` ms from now: the oldest job of
/// each shape whose expected time to its next epoch (its own, else its sweep's for its shape,
/// else none: it fits) is at most `left`, among the first [`FIT_LOOKAHEAD`] of the shape.
async fn oldest_in_time(
    c: &mut SqliteConnection,
    a: &Asked<'_>,
    (ranks, max_batch, gangs_ok): (Option<i64>, Option<i64>, bool),
    left: i64,
) -> Result<Option<Oldest>> {
    Ok(sqlx::query_as!(
        Oldest,
        r#"SELECT j.id AS "id!", j.sweep_id AS "sweep_id!", j.drawn_at IS NOT NULL AS "drawn!: bool"
           FROM jobs j WHERE j.id = (SELECT min(first) FROM (
             SELECT (SELECT f.id FROM (
                       SELECT k.id, k.sweep_id, k.epoch_ms FROM jobs k INDEXED BY jobs_pending_shape
                       WHERE k.status = 'pending' AND k.nproc = p.nproc AND k.batch_size = p.batch_size
                         AND k.is_command = p.is_command AND k.drawn = p.drawn AND k.nnodes = p.nnodes
                         AND k.cancel_requested = 0 AND k.stop_requested = 0
                         AND NOT EXISTS (SELECT 1 FROM sweeps s WHERE s.id = k.sweep_id AND s.cancelled_at IS NOT NULL)
                         AND NOT (k.nnodes > 1 AND k.gang_barred IS ?6 AND coalesce(k.gang_barred_until > ?7, 0))
                       ORDER BY k.id LIMIT ?9) f
                     WHERE coalesce(f.epoch_ms, (SELECT e.epoch_ms FROM epoch_estimates e
                                                 WHERE e.sweep_id = f.sweep_id AND e.nproc = p.nproc AND e.batch_size = p.batch_size
                                                   AND e.is_command = p.is_command AND e.nnodes = p.nnodes), 0) <= ?8
                     ORDER BY f.id LIMIT 1) AS first
             FROM pending_shapes p
             WHERE p.jobs > 0 AND (?1 IS NULL OR p.nproc <= ?1) AND (?2 IS NULL OR p.batch_size <= ?2)
               AND (p.is_command = 0 OR (?3 AND p.is_command = 1)) AND (?4 = 0 OR p.drawn = 1) AND (?5 OR p.nnodes = 1)))"#,
        ranks,
        max_batch,
        a.req.accepts_commands,
        a.skip_undrawn,
        gangs_ok,
        a.req.worker,
        a.now,
        left,
        FIT_LOOKAHEAD
    )
    .fetch_optional(&mut *c)
    .await?)
}

/// Says on the oldest pending job of each shape the worker could run why it was passed over, when
/// its next epoch is expected to take longer than the `left` ms the worker had. Rounded as shown
/// (seconds under two minutes, else minutes) and written only when that changes, not per claim.
async fn passed_over(
    c: &mut SqliteConnection,
    a: &Asked<'_>,
    (ranks, max_batch, gangs_ok): (Option<i64>, Option<i64>, bool),
    left: i64,
) -> Result<()> {
    let heads = sqlx::query!(
        r#"SELECT f.id AS "id!", coalesce(f.epoch_ms, (SELECT e.epoch_ms FROM epoch_estimates e
                     WHERE e.sweep_id = f.sweep_id AND e.nproc = f.nproc AND e.batch_size = f.batch_size
                       AND e.is_command = f.is_command AND e.nnodes = f.nnodes)) AS "need: i64"
           FROM pending_shapes p JOIN jobs f ON f.id = (
             SELECT k.id FROM jobs k INDEXED BY jobs_pending_shape
             WHERE k.status = 'pending' AND k.nproc = p.nproc AND k.batch_size = p.batch_size
               AND k.is_command = p.is_command AND k.drawn = p.drawn AND k.nnodes = p.nnodes
             ORDER BY k.id LIMIT 1)
           WHERE p.jobs > 0 AND p.drawn = 1 AND (?1 IS NULL OR p.nproc <= ?1) AND (?2 IS NULL OR p.batch_size <= ?2)
             AND (p.is_command = 0 OR (?3 AND p.is_command = 1)) AND (?4 OR p.nnodes = 1)"#,
        ranks,
        max_batch,
        a.req.accepts_commands,
        gangs_ok,
    )
    .fetch_all(&mut *c)
    .await?;
    let shown_left = protocol::views::shown_ms(left.max(0));
    for head in heads {
        let Some(need) = head.need.filter(|&n| n > left) else {
            continue;
        };
        let shown_need = protocol::views::shown_ms(need);
        sqlx::query!(
            "UPDATE jobs SET passed_need_ms = ?2, passed_left_ms = ?3
             WHERE id = ?1 AND status = 'pending' AND (passed_need_ms IS NOT ?2 OR passed_left_ms IS NOT ?3)",
            head.id,
            shown_need,
            shown_left
        )
        .execute(&mut *c)
        .await?;
    }
    Ok(())
}

/// The oldest pending job a claim found.
struct Oldest {
    id: i64,
    sweep_id: i64,
    drawn: bool,
}

/// An ask's take: the oldest pending trial of `sweep` (an external sweep's: no worker claims them,
/// so shapes do not matter), drawn first when it is still to be drawn (then its sweep is named).
async fn take_asked(
    c: &mut SqliteConnection,
    a: &Asked<'_>,
    sweep: i64,
) -> Result<(Option<gangs::Taken>, Option<i64>)> {
    if !within_cap(c, a.credential).await? {
        return Ok((None, None));
    }
    let oldest = sqlx::query!(
        r#"SELECT j.id AS "id!", j.drawn_at IS NOT NULL AS "drawn!: bool" FROM jobs j INDEXED BY jobs_sweep_status
           WHERE j.sweep_id = ?1 AND j.status = 'pending' AND j.cancel_requested = 0 AND j.stop_requested = 0
             AND NOT EXISTS (SELECT 1 FROM sweeps s WHERE s.id = ?1 AND s.cancelled_at IS NOT NULL)
           ORDER BY j.id LIMIT 1"#,
        sweep
    )
    .fetch_optional(&mut *c)
    .await?;
    match oldest {
        None => Ok((None, None)),
        Some(o) if !o.drawn => Ok((None, Some(sweep))),
        Some(o) => Ok((take(c, a, o.id, None).await?, None)),
    }
}

/// Whether a claim under `credential` may take one more job: the credential is still live (a
/// revoke that committed between the request's check and this claim wins) and holds fewer jobs
/// than its cap, as node 0 or as any other live member of a gang.
async fn within_cap(
    c: &mut SqliteConnection,
    credential: Option<&crate::credentials::Credential>,
) -> Result<bool> {
    let Some(cred) = credential else {
        return Ok(true);
    };
    let row = sqlx::query!(
        r#"SELECT (SELECT revoked_at IS NULL FROM credentials WHERE name = ?1) AS "live: bool",
                  (SELECT count(*) FROM jobs INDEXED BY jobs_running_by_credential WHERE credential = ?1 AND status = 'running')
                  + (SELECT count(*) FROM gang_members m INDEXED BY gang_members_live_by_credential
                     WHERE m.credential = ?1 AND m.lease_expires_at IS NOT NULL AND m.node_rank > 0) AS "held!: i64""#,
        cred.name
    )
    .fetch_one(&mut *c)
    .await?;
    if row.live != Some(true) {
        return Err(StoreError::Forbidden(format!(
            "worker credential {} was revoked",
            cred.name
        )));
    }
    Ok(cred.max_in_flight.is_none_or(|cap| row.held < cap))
}

/// Takes pending job `id`: the next attempt number (the fencing token) in the same statement; a
/// multi-node job's gang starts forming with `w` as node 0, with a deadline.
async fn take(
    c: &mut SqliteConnection,
    a: &Asked<'_>,
    id: i64,
    w: Option<&gangs::Claimant<'_>>,
) -> Result<Option<gangs::Taken>> {
    let gang_until = a.now + a.gang_ms;
    let credential = a.credential.map(|c| c.name.as_str());
    let row = sqlx::query!(
        r#"UPDATE jobs SET status = 'running', attempt = attempt + 1, worker = ?1, lease_expires_at = ?2, claimed_at = ?3,
               started_at = coalesce(started_at, ?3), lease_secret_hash = ?4,
               gang_until = CASE WHEN nnodes > 1 THEN ?6 END, credential = ?7, claim_epoch = epoch,
               passed_need_ms = NULL, passed_left_ms = NULL
           WHERE id = ?5 AND status = 'pending' AND drawn_at IS NOT NULL
           RETURNING id AS "id!", sweep_id AS "sweep_id!", attempt AS "attempt!", params AS "params!",
                     is_command = 1 AS "is_command!: bool", nnodes AS "nnodes!""#,
        a.req.worker,
        a.until,
        a.now,
        a.secret_hash,
        id,
        gang_until,
        credential
    )
    .fetch_optional(&mut *c)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let gang = match (w, row.nnodes > 1) {
        (Some(w), true) => {
            gangs::add_member(c, row.id, row.attempt, 0, w).await?;
            Some(protocol::GangPart {
                nnodes: row.nnodes,
                node_rank: 0,
                master: w.rendezvous.clone(),
            })
        }
        _ => None,
    };
    Ok(Some(gangs::Taken {
        id: row.id,
        sweep_id: row.sweep_id,
        attempt: row.attempt,
        params: row.params,
        is_command: row.is_command,
        gang,
    }))
}

/// The claim's reply, built inside its transaction from the job it took: the params and, for a
/// command job, its sweep's command (a command job handed out without its command would run as a
/// trainer job: an error, and the claim with it).
async fn claim_reply(
    c: &mut SqliteConnection,
    row: gangs::Taken,
    until: i64,
    lease_ms: i64,
) -> Result<Claim> {
    let command = match row.is_command {
        true => {
            let text = sqlx::query_scalar!("SELECT command FROM sweeps WHERE id = ?", row.sweep_id)
                .fetch_optional(&mut *c)
                .await?
                .flatten()
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("sweep {}'s command is missing", row.sweep_id))
                })?;
            Some(parse_json("sweeps.command", &text)?)
        }
        false => None,
    };
    Ok(Claim {
        id: row.id,
        sweep_id: row.sweep_id,
        attempt: row.attempt,
        params: parse_json("jobs.params", &row.params)?,
        lease_expires_at: until,
        lease_ms: Some(lease_ms),
        command,
        // The caller, which made the secret, fills it in.
        lease_secret: String::new(),
        gang: row.gang,
    })
}

/// Early stopping's values follow an attempt's end (finish, release, lease expiry), inside the
/// batch that ended it: a job that ended for good leaves the open values (in memory: nothing there
/// can fail). Once committed, [`Store::settle`] drops a finished sweep's values altogether.
pub(super) fn attempt_ended(ranks: &ranks::Ranks, sweep: i64, job: i64, status: JobStatus) {
    ranks.with(sweep, |s| s.job_ended(job, status));
}

impl Store {
    /// After a job ended for good: a sweep with no job left pending or running drops early
    /// stopping's values (its kept counts say so: one row, read after the commit; a sweep whose
    /// jobs have all ended never gets an open one again, so the read cannot be overtaken).
    pub(super) async fn settle(&self, change: &JobChange) -> Result<()> {
        // The cheapest signal first: only a sweep whose values are in memory has any to drop.
        if !change.status.is_final() || !self.ranks.is_loaded(change.sweep_id) {
            return Ok(());
        }
        let open = sqlx::query_scalar!(
            r#"SELECT pending + running AS "n!: i64" FROM sweep_counts WHERE sweep_id = ?"#,
            change.sweep_id
        )
        .fetch_optional(&self.worker_read)
        .await?;
        if open == Some(0) {
            self.ranks.forget(change.sweep_id);
        }
        Ok(())
    }

    /// The changes a bulk transition's rows (job, sweep, status, attempt) stand for, with
    /// [`Store::settle`] run once for each sweep a job of them ended for good.
    pub(super) async fn ended(
        &self,
        rows: impl IntoIterator<Item = (i64, i64, String, i64)>,
    ) -> Result<Vec<JobChange>> {
        let changes = rows
            .into_iter()
            .map(|(job, sweep, status, attempt)| change_of(job, sweep, &status, attempt))
            .collect::<Result<Vec<_>>>()?;
        let mut seen = std::collections::HashSet::new();
        for c in changes.iter().filter(|c| c.status.is_final()) {
            if seen.insert(c.sweep_id) {
                self.settle(c).await?;
            }
        }
        Ok(changes)
    }
}

/// Why `attempt` does not hold `job`, from the job's status and current attempt.
pub(super) fn not_holding(job: i64, attempt: i64, status: &str, current: i64) -> StoreError {
    if current != attempt {
        StoreError::Conflict(format!(
            "job {job}: attempt {attempt} no longer holds the lease (current attempt {current})"
        ))
    } else {
        StoreError::Conflict(format!(
            "job {job} is {status}, not running: attempt {attempt} no longer holds it"
        ))
    }
}

/// One epoch's metrics, inserted in one statement: the fence is the SELECT's WHERE, the idempotence
/// the primary key, and the job's epoch follows by trigger (`epoch_recorded`). The sweep's id when
/// a row was written; None when nothing was (see [`Store::metrics_not_stored`]).
pub(super) async fn insert_metrics(
    one: One<'_>,
    job: i64,
    m: &MetricsReport,
    now: i64,
) -> Result<Option<i64>> {
    let extra = (!m.extra.is_empty())
        .then(|| serde_json::to_string(&m.extra).expect("a map of numbers serialises"));
    Ok(one.fetch_optional_scalar(sqlx::query_scalar!(
                        r#"INSERT INTO metrics (job_id, sweep_id, epoch, attempt, lr, train_loss, test_loss, accuracy, precision,
                                                recall, f1, images_per_sec, seconds, recorded_at, extra)
                           SELECT id, sweep_id, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14 FROM jobs
                           WHERE id = ?1 AND attempt = ?3 AND status = 'running' AND ?2 <= epochs
                           ON CONFLICT (job_id, epoch) DO UPDATE SET
                              attempt = excluded.attempt, lr = excluded.lr, train_loss = excluded.train_loss,
                              test_loss = excluded.test_loss, accuracy = excluded.accuracy, precision = excluded.precision,
                              recall = excluded.recall, f1 = excluded.f1, images_per_sec = excluded.images_per_sec,
                              seconds = excluded.seconds, recorded_at = excluded.recorded_at, extra = excluded.extra
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
                        now,
                        extra
                    ))
    .await?)
}
