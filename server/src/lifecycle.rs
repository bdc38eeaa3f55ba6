//! The job's life, one function per event (ARCHITECTURE.md's table): a worker claims, reports,
//! finishes or releases; a user cancels; the clock expires a lease. Each runs its store transition
//! and then what must follow it, so no path can forget a step: a job that has ended loses its
//! checkpoint (nothing will resume it), and every change is published to the dashboard. The HTTP
//! handlers and the lease reaper call these, never the store's transitions themselves.
use protocol::{
    Claim, ClaimRequest, FinishRequest, HeartbeatRequest, JobChange, JobStatus, MetricsReply,
    MetricsReport,
};

use crate::events::Event;
use crate::state::AppState;
use std::collections::HashMap;

use crate::store::{ClaimNext, Judges, PbtOutcome, Result, StoreError};

/// Hands the oldest pending job that fits to `req.worker` under a lease (None: nothing fits).
/// A TPE trial is drawn when a claim reaches it: the claim draws it and claims again. A drawn point
/// that does not fit this worker stays pending for another; after [`MAX_DRAWS_PER_CLAIM`] draws
/// the claim takes only jobs already drawn, so one claim never drains a sweep.
pub async fn claim(
    state: &AppState,
    req: &ClaimRequest,
    credential: Option<&crate::credentials::Credential>,
) -> Result<Option<Claim>> {
    claim_in(state, req, credential, None, state.lease_ms).await
}

/// A claim, of any sweep's job a worker may run (`sweep` None) or of one external sweep's trial
/// (an ask), under a lease of `lease_ms`.
async fn claim_in(
    state: &AppState,
    req: &ClaimRequest,
    credential: Option<&crate::credentials::Credential>,
    sweep: Option<i64>,
    lease_ms: i64,
) -> Result<Option<Claim>> {
    // The lease's secret: 256 random bits, kept only as a hash.
    let secret = crate::secrets::random_hex(32);
    let secret_hash = crate::secrets::hash_secret(&secret);
    let mut draws = 0;
    let mut claim = loop {
        let next = state
            .store
            .claim_next(
                req,
                credential,
                &secret_hash,
                crate::store::ClaimTerms {
                    skip_undrawn: draws >= MAX_DRAWS_PER_CLAIM,
                    now: state.clock.now_ms(),
                    lease_ms,
                    gang_ms: state.gang_ms,
                    sweep,
                },
            )
            .await?;
        match next {
            ClaimNext::Claimed(c) => break Some(*c),
            ClaimNext::Nothing => break None,
            ClaimNext::Undrawn(sweep) => {
                crate::draw::draw(state, sweep).await?;
                draws += 1;
            }
        }
    };
    if let Some(c) = &mut claim {
        // The job's own secret is node 0's (it alone reports and finishes); a gang's other members
        // hold theirs in their member rows.
        if c.gang.as_ref().is_none_or(|g| g.node_rank == 0) {
            state.leases.set(c.id, c.attempt, secret_hash);
        }
        c.lease_secret = secret;
    }
    match &claim {
        Some(c) => {
            state.telemetry.claims.inc();
            state.publish(Event::Job(JobChange {
                job_id: c.id,
                sweep_id: c.sweep_id,
                status: JobStatus::Running,
                attempt: c.attempt,
            }));
        }
        None => {
            state.telemetry.empty_claims.inc();
        }
    }
    Ok(claim)
}

/// The lease check of a worker write, before the write (which stays fenced by attempt in its own
/// statement): `attempt` must be the job's current one (else 409: the lease is gone) and `secret`
/// that claim's (else 403, whoever holds the worker token). An ended attempt keeps its secret until
/// the next claim, so a retried write of it is answered as before. From memory, as the last claim
/// left it; a job not there (after a restart) is read from the store once.
pub async fn check_lease(
    state: &AppState,
    job: i64,
    attempt: i64,
    secret: Option<&str>,
) -> Result<()> {
    check_member_lease(state, job, attempt, None, secret).await
}

/// [`check_lease`] for a write that names a gang member's node: a member other than node 0 holds a
/// secret of its own (and may only heartbeat, say its part is over, or end the attempt).
pub async fn check_member_lease(
    state: &AppState,
    job: i64,
    attempt: i64,
    node_rank: Option<i64>,
    secret: Option<&str>,
) -> Result<()> {
    let (current, mut hash) = lease_of(state, job).await?;
    if current != attempt {
        return Err(state.store.lease_lost(job, attempt).await);
    }
    if let Some(rank) = node_rank.filter(|&r| r != 0) {
        hash = state.store.member_secret(job, attempt, rank).await?;
    }
    match crate::secrets::secret_matches(hash.as_deref(), secret) {
        true => Ok(()),
        false => Err(StoreError::Forbidden(format!(
            "job {job}: a write of attempt {attempt} must carry that claim's lease secret"
        ))),
    }
}

/// A checkpoint read by a worker: `secret` must be the current attempt's, and that attempt must
/// hold the job now (the admin token is checked by the caller). A released or ended attempt's
/// secret reads nothing: claiming a job only to read its checkpoint then leaves a claim behind.
pub async fn check_lease_holder(state: &AppState, job: i64, secret: Option<&str>) -> Result<()> {
    let (attempt, hash) = lease_of(state, job).await?;
    let refused = || {
        StoreError::Forbidden(format!(
            "job {job}: its checkpoint is for the attempt that holds its lease now (or the admin token)"
        ))
    };
    if !crate::secrets::secret_matches(hash.as_deref(), secret) {
        return Err(refused());
    }
    state
        .store
        .check_fence(job, attempt)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => refused(),
            other => other,
        })
}

/// Ok when `attempt` holds `job` now (a checkpoint upload's fence, before and after its bytes).
pub async fn check_holds(state: &AppState, job: i64, attempt: i64) -> Result<()> {
    state.store.check_fence(job, attempt).await
}

/// The job's current attempt and its lease secret's hash, from memory as the last claim left
/// them, or read from the store once (after a restart).
async fn lease_of(state: &AppState, job: i64) -> Result<(i64, Option<Vec<u8>>)> {
    if let Some((attempt, hash)) = state.leases.get(job) {
        return Ok((attempt, Some(hash)));
    }
    let (attempt, hash) = state.store.lease_of(job).await?;
    if let Some(h) = &hash {
        state.leases.set(job, attempt, h.clone());
    }
    Ok((attempt, hash))
}

/// Each claimed job's current attempt and lease-secret hash (see [`check_lease`]). Only a claim
/// changes them, and every claim goes through [`claim`].
#[derive(Debug, Default)]
pub struct Leases(std::sync::Mutex<HashMap<i64, (i64, Vec<u8>)>>);

impl Leases {
    fn get(&self, job: i64) -> Option<(i64, Vec<u8>)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&job).cloned()
    }

    fn set(&self, job: i64, attempt: i64, hash: Vec<u8>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(job, (attempt, hash));
    }

    fn forget(&self, job: i64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&job);
    }
}

/// Draws a claim may make before it takes only jobs already drawn.
pub const MAX_DRAWS_PER_CLAIM: usize = 4;

/// Records one epoch's report and, under the sweep's early-stopping rule, judges the job on it
/// (in the same transaction); the reply says whether the job is to stop.
pub async fn report(state: &AppState, job: i64, m: MetricsReport) -> Result<MetricsReply> {
    let now = state.clock.now_ms();
    let (sweep_id, stop) = match state.store.judges_of_job(job).await? {
        Judges::Stop(rule) => match judged_on(&rule.metric, &m) {
            Some(value) => {
                state
                    .store
                    .record_and_judge(job, &m, now, value, rule)
                    .await?
            }
            // Not judged: the stop flag as an earlier report left it (only a rule sets it).
            None => {
                let sweep = state.store.record_metrics(job, &m, now).await?;
                (sweep, state.store.stop_requested(job).await?)
            }
        },
        Judges::Pbt(rules) => (pbt_step(state, job, &m, now, *rules).await?, false),
        Judges::None => (state.store.record_metrics(job, &m, now).await?, false),
    };
    state.publish(Event::Metrics {
        job_id: job,
        sweep_id,
        metrics: m,
    });
    Ok(MetricsReply { ok: true, stop })
}

/// A PBT member's report: stored and decided; an exploit ends the attempt (the old worker's next
/// write gets 409) and the donor's pinned checkpoint is copied into the member's slot before
/// anyone can read it (`checkpoints::settle_copy`, also redone when read and at start-up).
async fn pbt_step(
    state: &AppState,
    job: i64,
    m: &MetricsReport,
    now: i64,
    rules: crate::sweep::pbt::Stored,
) -> Result<i64> {
    let Some(value) = judged_on(&rules.metric, m) else {
        return state.store.record_metrics(job, m, now).await;
    };
    let (sweep, outcome) = state
        .store
        .record_and_decide(job, m, now, value, rules)
        .await?;
    if let PbtOutcome::Exploited {
        change,
        donor,
        epoch,
    } = outcome
    {
        tracing::info!(
            job,
            donor,
            epoch,
            "exploit: the member continues from its donor's checkpoint"
        );
        crate::checkpoints::settle_copy(state, job).await;
        changed(state, change).await;
    }
    crate::checkpoints::prune_pins(state, job).await;
    Ok(sweep)
}

/// The judged metric's value in a report; none when missing, not finite or diverged.
fn judged_on(metric: &str, m: &MetricsReport) -> Option<f64> {
    m.get(metric).filter(|x| x.is_finite() && !m.diverged)
}

/// Renews a lease: the job's, or a gang member's own (then the reply says how far the gang has
/// formed).
pub async fn heartbeat(
    state: &AppState,
    job: i64,
    req: &HeartbeatRequest,
) -> Result<protocol::HeartbeatReply> {
    let now = state.clock.now_ms();
    match req.node_rank {
        None => {
            state
                .store
                .heartbeat(job, req.attempt, now, state.lease_ms)
                .await
        }
        Some(rank) => {
            state
                .store
                .heartbeat_member(job, req.attempt, rank, now, state.lease_ms)
                .await
        }
    }
}

/// Ends an attempt as its worker says (`error` already cut to size). A gang member other than
/// node 0 ends it for the whole gang only when it failed; otherwise only its part is over.
pub async fn finish(
    state: &AppState,
    job: i64,
    req: &FinishRequest,
    error: Option<&str>,
) -> Result<JobChange> {
    let now = state.clock.now_ms();
    let member = req.node_rank.filter(|&r| r != 0);
    if let (Some(rank), false) = (member, req.status == protocol::Outcome::Failed) {
        return state.store.member_done(job, req.attempt, rank).await;
    }
    let node_error = member.map(|rank| {
        format!(
            "node {rank} of the gang: {}",
            error.unwrap_or("its ranks failed")
        )
    });
    let change = state
        .store
        .finish(
            job,
            req.attempt,
            req.status,
            req.summary.as_ref().filter(|_| member.is_none()),
            node_error.as_deref().or(error),
            now,
        )
        .await?;
    changed(state, change.clone()).await;
    Ok(change)
}

/// Gangs that did not form in time go back to pending; what the reaper does after expiring leases.
pub async fn dissolve_unformed_gangs(state: &AppState) -> Result<usize> {
    let changes = state.store.dissolve_unformed(state.clock.now_ms()).await?;
    let n = changes.len();
    for c in changes {
        tracing::warn!(job = c.job_id, "gang did not form in time: dissolved");
        state.telemetry.gangs_dissolved.inc();
        changed(state, c).await;
    }
    Ok(n)
}

/// Gives a running job back without failing it (a worker shutting down after a checkpoint). A
/// gang's member (node `node_rank`, 0 when none is named) that gives it back may not be node 0 of
/// the same job again for a gang window. A release with no epoch committed since its claim is
/// idle; past `--free-idle-releases` of them, a release charges its attempt.
pub async fn release(
    state: &AppState,
    job: i64,
    attempt: i64,
    node_rank: Option<i64>,
    reason: &str,
) -> Result<JobChange> {
    let now = state.clock.now_ms();
    let rules = crate::store::Release {
        node_rank: node_rank.unwrap_or(0),
        barred_until: now + state.gang_ms,
        free_idle_releases: state.free_idle_releases,
    };
    let change = state
        .store
        .release(job, attempt, reason, rules, now)
        .await?;
    changed(state, change.clone()).await;
    Ok(change)
}

/// Stores a validated sweep with its jobs, and says so to listeners: its id and job count.
pub async fn submit(state: &AppState, spec: &crate::sweep::SweepSpec) -> Result<(i64, usize)> {
    let (id, jobs) = state.store.create_sweep(spec, state.clock.now_ms()).await?;
    tracing::info!(sweep = id, name = %spec.name, jobs, "sweep submitted");
    state.publish(Event::Sweep {
        sweep_id: id,
        status: protocol::SweepStatus::Pending,
    });
    Ok((id, jobs))
}

/// Cancels a sweep: its pending jobs at once, its running ones on their next heartbeat. Returns
/// how many jobs changed now.
pub async fn cancel_sweep(state: &AppState, sweep: i64) -> Result<usize> {
    let now = state.clock.now_ms();
    let changes = state.store.cancel_sweep(sweep, now).await?;
    let n = changes.len();
    for c in changes {
        changed(state, c).await;
    }
    state.publish(Event::Sweep {
        sweep_id: sweep,
        status: protocol::SweepStatus::Cancelled,
    });
    Ok(n)
}

/// Requeues (or ends) every job whose lease has run out; what the reaper does every `reap_every`.
pub async fn expire_leases(state: &AppState) -> Result<usize> {
    let changes = state.store.requeue_expired(state.clock.now_ms()).await?;
    let n = changes.len();
    for c in changes {
        tracing::warn!(job = c.job_id, status = %c.status, attempt = c.attempt, "lease expired");
        state.telemetry.lease_expiries.inc();
        changed(state, c).await;
    }
    Ok(n)
}

/// What follows every change of a job's state, whichever path made it.
async fn changed(state: &AppState, change: JobChange) {
    if change.status.is_final() {
        // Read from the store again if a late retry of its writes comes.
        state.leases.forget(change.job_id);
        // A PBT donor's pin a member is still owed is copied before the donor's files go.
        crate::checkpoints::settle_copies_from(state, change.job_id).await;
        crate::checkpoints::forget(state, change.job_id).await;
    }
    state.publish(Event::Job(change));
}

/// Adds a credential (the admin's `server worker add`): its token is returned this once, and opens
/// the coordinator as soon as this returns.
pub async fn add_credential(
    state: &AppState,
    req: &protocol::credentials::NewCredential,
) -> Result<protocol::credentials::IssuedCredential> {
    use protocol::credentials::CredentialKind;
    let kind = match req.enrollment {
        Some(_) => CredentialKind::Enrollment,
        None => CredentialKind::Worker,
    };
    let token = crate::credentials::new_token(kind);
    let hash = crate::secrets::hash_secret(&token);
    let now = state.clock.now_ms();
    let e = req.enrollment;
    let row = crate::store::credentials::NewRow {
        name: req.name.clone(),
        kind,
        secret_hash: hash.clone(),
        max_in_flight: e.map_or(req.max_in_flight, |e| e.max_in_flight),
        uses_left: e.map(|e| e.uses),
        expires_at: e.map(|e| now + e.expires_in_seconds * 1000),
    };
    state.store.add_credential(row.clone(), now).await?;
    state.credentials.insert(
        hash,
        crate::credentials::Credential {
            name: row.name.clone(),
            kind,
            // An enrollment credential holds no jobs; its cap is for those it mints.
            max_in_flight: row.max_in_flight.filter(|_| kind == CredentialKind::Worker),
        },
    );
    Ok(protocol::credentials::IssuedCredential {
        name: row.name,
        kind,
        token,
    })
}

/// A worker mints its own credential through an enrollment credential (`by`).
pub async fn enroll(
    state: &AppState,
    by: &crate::credentials::Credential,
    name: &str,
) -> Result<protocol::credentials::IssuedCredential> {
    use protocol::credentials::CredentialKind;
    let token = crate::credentials::new_token(CredentialKind::Worker);
    let hash = crate::secrets::hash_secret(&token);
    let now = state.clock.now_ms();
    let minted = state
        .store
        .enroll(&by.name, name, hash.clone(), now)
        .await?;
    state.credentials.insert(hash, minted);
    Ok(protocol::credentials::IssuedCredential {
        name: name.to_string(),
        kind: CredentialKind::Worker,
        token,
    })
}

/// Revokes a credential: it opens nothing from the moment this returns, and every job it held is
/// pending again without an attempt charged (its worker's later writes are refused).
pub async fn revoke(state: &AppState, name: &str) -> Result<protocol::credentials::Revoked> {
    let changes = state.store.revoke(name, state.clock.now_ms()).await?;
    state.credentials.remove(name);
    let released = changes.len();
    for c in changes {
        tracing::warn!(
            job = c.job_id,
            credential = name,
            "credential revoked: job given back"
        );
        changed(state, c).await;
    }
    Ok(protocol::credentials::Revoked {
        name: name.to_string(),
        released,
    })
}

/// Where a log chunk goes: its attempt, its byte offset, and the bytes the worker dropped before it.
#[derive(Debug, Clone, Copy)]
pub struct LogAt {
    pub attempt: i64,
    pub offset: i64,
    pub gap: i64,
}

/// Why a log chunk was not stored.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The global log quota (`serve --max-logs-gib`) is full.
    #[error("{0}")]
    Full(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Appends a chunk of an attempt's output (the lease already checked): refused while every job's
/// kept log together is at the global quota (read from memory, before anything else), counted
/// against it once stored, and published.
pub async fn append_log(
    state: &AppState,
    job: i64,
    at: LogAt,
    data: Vec<u8>,
) -> std::result::Result<crate::store::logs::Appended, LogError> {
    let used = state.telemetry.log_bytes.get();
    if let Some(max) = state.max_logs_total.filter(|&m| used >= m) {
        return Err(LogError::Full(format!(
            "the coordinator's log quota is full ({used} of {max} bytes kept; serve --max-logs-gib): \
             this output is dropped"
        )));
    }
    let done = state
        .store
        .append_log(
            job,
            at.attempt,
            at.offset,
            at.gap,
            data,
            state.max_log_bytes,
        )
        .await?;
    state.telemetry.log_bytes.inc_by(done.grown);
    state.publish(Event::Log {
        job_id: job,
        sweep_id: done.sweep_id,
        attempt: at.attempt,
        next: done.end,
    });
    Ok(done)
}

/// What an ask gets: a trial, nothing now (others' trials are out and may come back), or nothing
/// ever again (the sweep is done or cancelled).
#[derive(Debug)]
pub enum Asked {
    Trial(Box<Claim>),
    NotNow,
    Done(String),
}

/// A trial of external sweep `sweep` for the caller's own loop: the claim's exactly-once take, scoped
/// to the sweep (a TPE or NSGA-II trial drawn at that moment), under a lease of `lease_ms`.
pub async fn ask(
    state: &AppState,
    sweep: i64,
    req: &ClaimRequest,
    credential: Option<&crate::credentials::Credential>,
    lease_ms: i64,
) -> Result<Asked> {
    let spec = state.store.sweep_spec(sweep).await?;
    if !spec.external {
        return Err(StoreError::Invalid(format!(
            "sweep {sweep} is run by workers; only a sweep with [run] external = true is asked for trials"
        )));
    }
    if let Some(c) = claim_in(state, req, credential, Some(sweep), lease_ms).await? {
        return Ok(Asked::Trial(Box::new(c)));
    }
    let open = state.store.open_jobs(sweep).await?;
    Ok(match open {
        o if o.cancelled => Asked::Done(format!("sweep {sweep} was cancelled")),
        o if o.pending + o.running == 0 => {
            Asked::Done(format!("sweep {sweep} is done: every trial has ended"))
        }
        _ => Asked::NotNow,
    })
}

/// The metrics a told value is recorded as: the sweep's objectives, else its early-stopping
/// metric, else `value` (Optuna's name for a study's one value).
pub fn told_metrics(spec: &crate::sweep::SweepSpec) -> Vec<String> {
    let objectives: Vec<String> = spec
        .search
        .iter()
        .flat_map(|s| s.objectives.iter().map(|(m, _)| m.clone()))
        .collect();
    if !objectives.is_empty() {
        return objectives;
    }
    match &spec.early_stop {
        Some(rule) => vec![rule.metric.clone()],
        None => vec!["value".into()],
    }
}

/// A tell: the trial's value(s) (already checked, at its attempt) merged into its last reported
/// epoch, then its end. Two writes, each fenced by the attempt: a tell retried after the first
/// committed writes the same values again and then finishes.
pub async fn tell(
    state: &AppState,
    job: i64,
    attempt: i64,
    values: Option<MetricsReport>,
    outcome: protocol::Outcome,
    error: Option<&str>,
) -> Result<JobChange> {
    if let Some(m) = values {
        let now = state.clock.now_ms();
        let sweep_id = state.store.tell_values(job, &m, now).await?;
        state.publish(Event::Metrics {
            job_id: job,
            sweep_id,
            metrics: m,
        });
    }
    let req = FinishRequest {
        attempt,
        status: outcome,
        summary: None,
        error: error.map(str::to_string),
        node_rank: None,
    };
    finish(state, job, &req, error).await
}
