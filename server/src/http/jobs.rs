//! The worker protocol (claim, heartbeat, metrics, finish, release) and a job's detail: public, so a
//! worker in any language can take part.
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::LeaseSecret;
use super::error::{ApiError, AppJson};
use super::ApiResult;
use crate::state::AppState;
use protocol::views::JobDetail;
use protocol::{
    Claim, ClaimRequest, FinishRequest, HeartbeatReply, HeartbeatRequest, JobChange, MetricsReply,
    MetricsReport, ReleaseRequest,
};

/// Which attempts of a job to list.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct AttemptsPage {
    /// Attempts to skip, oldest first (default 0).
    pub attempts_offset: Option<i64>,
    /// At most this many (default 100, at most 1,000).
    pub attempts_limit: Option<i64>,
}

/// A job, its metrics and a page of its attempts.
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs", params(("id" = i64, Path), AttemptsPage),
    responses((status = 200, body = JobDetail), (status = 404)))]
pub(super) async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    axum::extract::Query(page): axum::extract::Query<AttemptsPage>,
) -> ApiResult<Json<JobDetail>> {
    let offset = page.attempts_offset.unwrap_or(0).max(0);
    let limit = page.attempts_limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(state.store.get_job(id, offset, limit).await?))
}

/// How many jobs are pending and running over every sweep: what an idle worker asks before it
/// exits (`--exit-when-idle`), at the cost of one row per sweep, not of every job.
#[utoipa::path(get, path = "/api/jobs/unfinished", tag = "worker protocol",
    responses((status = 200, body = protocol::views::Unfinished)))]
pub(super) async fn unfinished(
    State(state): State<AppState>,
) -> ApiResult<Json<protocol::views::Unfinished>> {
    Ok(Json(state.store.unfinished().await?))
}

/// Pending jobs by what they need of a worker allocation (nodes, ranks per node, command, GPUs):
/// what `server autoscale slurm` sizes the cluster from.
#[utoipa::path(get, path = "/api/jobs/pending-shapes", tag = "worker protocol",
    responses((status = 200, body = Vec<protocol::PendingShape>)), security(("bearer" = [])))]
pub(super) async fn pending_shapes(
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<protocol::PendingShape>>> {
    Ok(Json(state.store.pending_shapes().await?))
}

/// Take the oldest pending job that fits; 204 when none does.
#[utoipa::path(post, path = "/api/jobs/claim", tag = "worker protocol", request_body = ClaimRequest,
    responses((status = 200, body = Claim), (status = 204)), security(("bearer" = [])))]
pub(super) async fn claim(
    State(state): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    access: Option<axum::Extension<super::auth::Access>>,
    AppJson(req): AppJson<ClaimRequest>,
) -> ApiResult<Response> {
    if req.worker.trim().is_empty() || req.worker.len() > 200 {
        return Err(ApiError::Unprocessable(
            "worker: must be a non-empty name of at most 200 bytes".into(),
        ));
    }
    let credential = claimant(&state, access.map(|a| a.0), &req.worker)?;
    if let Some(r) = &req.rendezvous {
        let bad = |c: char| c.is_whitespace() || c.is_control() || "/?#@".contains(c);
        if r.addr.is_empty() || r.addr.len() > 255 || r.addr.contains(bad) || r.port == 0 {
            return Err(ApiError::Unprocessable(
                "rendezvous: a host name or address of at most 255 bytes, and a port from 1".into(),
            ));
        }
        // Only where the claimant is (or the operator's gang network): see `rendezvous`.
        let peer = peer.map(|p| p.0 .0.ip());
        crate::rendezvous::check(&r.addr, peer, &state.rendezvous_networks)
            .await
            .map_err(ApiError::Unprocessable)?;
    }
    match crate::lifecycle::claim(&state, &req, credential.as_deref()).await? {
        Some(c) => Ok(Json(c).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// The credential a claim is made under, checked against the name it gives: a worker's own
/// credential claims under its name (or its name and a suffix) only; a shared token may not pass for
/// a worker that has a credential of its own (that name would block the worker's gangs, or hide
/// behind it).
pub(super) fn claimant(
    state: &AppState,
    access: Option<super::auth::Access>,
    worker: &str,
) -> ApiResult<Option<std::sync::Arc<crate::credentials::Credential>>> {
    match access {
        Some(super::auth::Access::Credential(c)) if !protocol::credentials::name_fits(&c.name, worker) => {
            Err(ApiError::Forbidden(format!(
                "worker: this credential is worker {name}'s; its claims name {name} or {name}-SUFFIX, not {worker}",
                name = c.name
            )))
        }
        Some(super::auth::Access::Credential(c)) => Ok(Some(c)),
        _ => match state.credentials.owner_of(worker) {
            Some(owner) => Err(ApiError::Forbidden(format!(
                "worker: the name {worker} belongs to worker credential {owner}; claim with that credential"
            ))),
            None => Ok(None),
        },
    }
}

/// Renew the lease; the reply says whether the job was cancelled (and, to a gang member, how far
/// its gang has formed).
#[utoipa::path(post, path = "/api/jobs/{id}/heartbeat", tag = "worker protocol", params(("id" = i64, Path)),
    request_body = HeartbeatRequest, responses((status = 200, body = HeartbeatReply), (status = 403), (status = 409)), security(("bearer" = [])))]
pub(super) async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    LeaseSecret(secret): LeaseSecret,
    AppJson(req): AppJson<HeartbeatRequest>,
) -> ApiResult<Json<HeartbeatReply>> {
    crate::lifecycle::check_member_lease(&state, id, req.attempt, req.node_rank, secret.as_deref())
        .await?;
    Ok(Json(crate::lifecycle::heartbeat(&state, id, &req).await?))
}

/// Record one epoch's metrics (idempotent per epoch; 409 from an attempt that lost the lease).
#[utoipa::path(post, path = "/api/jobs/{id}/metrics", tag = "worker protocol", params(("id" = i64, Path)),
    request_body = MetricsReport, responses((status = 200, body = MetricsReply), (status = 403), (status = 409), (status = 422)), security(("bearer" = [])))]
pub(super) async fn report_metrics(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    LeaseSecret(secret): LeaseSecret,
    AppJson(m): AppJson<MetricsReport>,
) -> ApiResult<Json<MetricsReply>> {
    crate::lifecycle::check_lease(&state, id, m.attempt, secret.as_deref()).await?;
    check_metrics(&m)?;
    Ok(Json(crate::lifecycle::report(&state, id, m).await?))
}

/// Every reported value is checked before it is stored: a wrong number would otherwise reach the
/// figures, the exports and the early-stopping decisions of every later reader. (The epoch's upper
/// bound, the job's own epochs, is checked by the store.)
pub(super) fn check_metrics(m: &MetricsReport) -> ApiResult<()> {
    if m.epoch < 1 {
        return Err(ApiError::Unprocessable("epoch: must be at least 1".into()));
    }
    if m.extra.len() > protocol::MAX_EXTRA_METRICS {
        return Err(ApiError::Unprocessable(format!(
            "extra: at most {} metrics of its own per epoch",
            protocol::MAX_EXTRA_METRICS
        )));
    }
    for (name, value) in &m.extra {
        if !protocol::is_metric_name(name) || protocol::is_named_metric(name) {
            return Err(ApiError::Unprocessable(format!(
                "extra.{name}: a metric of its own is named with letters, digits, _ . - / (at most 64 bytes) and is not one of the named metrics"
            )));
        }
        if value.is_some_and(|x| x.abs() > 1e300) {
            return Err(ApiError::Unprocessable(format!(
                "extra.{name}: must be a finite number below 1e300 (a non-finite one is sent as null)"
            )));
        }
    }
    for (metric, value) in m.named() {
        if let Some(x) = value.filter(|x| !(0.0..=metric.max).contains(x)) {
            return Err(ApiError::Unprocessable(format!(
                "{}: {x} is outside 0..={} (a non-finite loss is sent as null)",
                metric.name, metric.max
            )));
        }
    }
    Ok(())
}

/// End the attempt. `failed` is retried until the job's attempts run out; a repeat is a no-op.
#[utoipa::path(post, path = "/api/jobs/{id}/finish", tag = "worker protocol", params(("id" = i64, Path)),
    request_body = FinishRequest, responses((status = 200, body = JobChange), (status = 403), (status = 409), (status = 422)), security(("bearer" = [])))]
pub(super) async fn finish(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    LeaseSecret(secret): LeaseSecret,
    AppJson(req): AppJson<FinishRequest>,
) -> ApiResult<Json<JobChange>> {
    crate::lifecycle::check_member_lease(&state, id, req.attempt, req.node_rank, secret.as_deref())
        .await?;
    let error = req.error.as_deref().map(|e| truncate(e, 8192));
    Ok(Json(
        crate::lifecycle::finish(&state, id, &req, error).await?,
    ))
}

/// Give the job back without failing it (a worker shutting down after a checkpoint): it is pending
/// again and resumes from its last uploaded checkpoint; the attempt does not count against it.
/// From any member of a gang, the whole gang's attempt is given back.
#[utoipa::path(post, path = "/api/jobs/{id}/release", tag = "worker protocol", params(("id" = i64, Path)),
    request_body = ReleaseRequest, responses((status = 200, body = JobChange), (status = 403), (status = 409)), security(("bearer" = [])))]
pub(super) async fn release(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    LeaseSecret(secret): LeaseSecret,
    AppJson(req): AppJson<ReleaseRequest>,
) -> ApiResult<Json<JobChange>> {
    crate::lifecycle::check_member_lease(&state, id, req.attempt, req.node_rank, secret.as_deref())
        .await?;
    let reason = req
        .reason
        .as_deref()
        .map(|r| truncate(r, 2000))
        .unwrap_or("released by its worker");
    Ok(Json(
        crate::lifecycle::release(&state, id, req.attempt, req.node_rank, reason).await?,
    ))
}

/// At most `max` bytes of `s`, cut at a character boundary (errors carry stderr tails of any size).
pub(super) fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
