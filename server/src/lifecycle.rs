//! The job's life, one function per event (ARCHITECTURE.md's table): a worker claims, reports,
//! finishes or releases; a user cancels; the clock expires a lease. Each runs its store transition
//! and then what must follow it, so no path can forget a step: a job that has ended loses its
//! checkpoint (nothing will resume it), and every change is published to the dashboard. The HTTP
//! handlers and the lease reaper call these, never the store's transitions themselves.
use protocol::{
    Claim, ClaimRequest, FinishRequest, JobChange, JobStatus, MetricsReply, MetricsReport,
};

use crate::http::events::Event;
use crate::state::AppState;
use crate::store::Result;
use crate::sweep::early_stop::EarlyStop;

/// Hands the oldest pending job that fits to `req.worker` under a lease (None: nothing fits).
pub async fn claim(state: &AppState, req: &ClaimRequest) -> Result<Option<Claim>> {
    let now = state.clock.now_ms();
    let claim = state
        .store
        .claim_next(
            &req.worker,
            req.capacity,
            req.accepts_commands,
            now,
            state.lease_ms,
        )
        .await?;
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

/// Records one epoch's report and, under the sweep's early-stopping rule, judges the job on it
/// (in the same transaction); the reply says whether the job is to stop.
pub async fn report(state: &AppState, job: i64, m: MetricsReport) -> Result<MetricsReply> {
    let now = state.clock.now_ms();
    let rule = state.store.early_stop_rule_of_job(job).await?;
    let (sweep_id, stop) = match (judged_on(rule.as_ref(), &m), rule) {
        (Some(value), Some(rule)) => {
            state
                .store
                .record_and_judge(job, &m, now, value, rule)
                .await?
        }
        // Not judged: the stop flag as an earlier report left it (only a rule sets it).
        (_, rule) => {
            let sweep = state.store.record_metrics(job, &m, now).await?;
            let stop = rule.is_some() && state.store.stop_requested(job).await?;
            (sweep, stop)
        }
    };
    state.publish(Event::Metrics {
        job_id: job,
        sweep_id,
        metrics: m,
    });
    Ok(MetricsReply { ok: true, stop })
}

/// The value a report is judged on under the rule, if it can be judged: one without the rule's
/// metric (no evaluation that epoch) or marked `diverged` (its loss was non-finite: the run ends
/// itself) is not.
fn judged_on(rule: Option<&EarlyStop>, m: &MetricsReport) -> Option<f64> {
    let rule = rule?;
    m.get(&rule.metric).filter(|x| x.is_finite() && !m.diverged)
}

/// Ends an attempt as its worker says (`error` already cut to size).
pub async fn finish(
    state: &AppState,
    job: i64,
    req: &FinishRequest,
    error: Option<&str>,
) -> Result<JobChange> {
    let now = state.clock.now_ms();
    let change = state
        .store
        .finish(
            job,
            req.attempt,
            req.status,
            req.summary.as_ref(),
            error,
            now,
        )
        .await?;
    changed(state, change.clone()).await;
    Ok(change)
}

/// Gives a running job back without failing it (a worker shutting down after a checkpoint).
pub async fn release(state: &AppState, job: i64, attempt: i64, reason: &str) -> Result<JobChange> {
    let now = state.clock.now_ms();
    let change = state.store.release(job, attempt, reason, now).await?;
    changed(state, change.clone()).await;
    Ok(change)
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
        crate::http::artifacts::forget(state, change.job_id).await;
    }
    state.publish(Event::Job(change));
}
