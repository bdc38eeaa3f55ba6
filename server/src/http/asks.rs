//! Ask and tell: an external sweep's trials for the caller's own loop (Optuna's `study.ask()` and
//! `study.tell()`), on the worker protocol's guarantees: an ask is a claim (exactly once, under a
//! lease with its secret), a tell is a fenced report and finish.
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::auth::LeaseSecret;
use super::error::{ApiError, AppJson};
use super::ApiResult;
use crate::lifecycle::Asked;
use crate::state::AppState;
use protocol::{
    AskRequest, Claim, ClaimRequest, JobChange, MetricsReport, Outcome, TellRequest, TellState,
};

/// The longest lease an ask may take (a day): a loop that needs longer heartbeats.
const MAX_LEASE_SECONDS: i64 = 86_400;

/// Take the next trial of an external sweep (`[run] external = true`): 204 while none is free (others'
/// trials are out and may come back), 410 once the sweep is done.
#[utoipa::path(post, path = "/api/sweeps/{id}/ask", tag = "ask and tell", params(("id" = i64, Path)),
    request_body = AskRequest, responses((status = 200, body = Claim), (status = 204), (status = 410), (status = 422)),
    security(("bearer" = [])))]
pub(super) async fn ask(
    State(state): State<AppState>,
    Path(sweep): Path<i64>,
    access: Option<axum::Extension<super::auth::Access>>,
    AppJson(req): AppJson<AskRequest>,
) -> ApiResult<Response> {
    let lease_ms = match req.lease_seconds {
        None => state.lease_ms,
        Some(s) if (1..=MAX_LEASE_SECONDS).contains(&s) => s * 1000,
        Some(_) => {
            return Err(ApiError::Unprocessable(format!(
                "lease_seconds: between 1 and {MAX_LEASE_SECONDS} (heartbeats renew a lease)"
            )))
        }
    };
    let access = access.map(|a| a.0);
    let worker = match (&req.worker, &access) {
        (Some(w), _) => w.clone(),
        (None, Some(super::auth::Access::Credential(c))) => c.name.clone(),
        (None, _) => "ask".to_string(),
    };
    if worker.trim().is_empty() || worker.len() > 200 {
        return Err(ApiError::Unprocessable(
            "worker: a non-empty name of at most 200 bytes".into(),
        ));
    }
    let credential = super::jobs::claimant(&state, access, &worker)?;
    let claim = ClaimRequest {
        deadline: None,
        worker,
        capacity: None,
        accepts_commands: false,
        rendezvous: None,
    };
    match crate::lifecycle::ask(&state, sweep, &claim, credential.as_deref(), lease_ms).await? {
        Asked::Trial(c) => Ok(Json(*c).into_response()),
        Asked::NotNow => Ok(StatusCode::NO_CONTENT.into_response()),
        Asked::Done(why) => Err(ApiError::Gone(why)),
    }
}

/// A trial's value(s) and end, with its ask's `X-Lease-Secret`: the values are recorded as the sweep's
/// objectives at the trial's last reported epoch (1 when it reported none), then the trial ends
/// (`null`, NaN, ends it `diverged`). Intermediate values go through `/api/jobs/{id}/metrics`.
#[utoipa::path(post, path = "/api/sweeps/{id}/tell", tag = "ask and tell", params(("id" = i64, Path)),
    request_body = TellRequest, responses((status = 200, body = JobChange), (status = 403), (status = 404), (status = 409), (status = 422)),
    security(("bearer" = [])))]
pub(super) async fn tell(
    State(state): State<AppState>,
    Path(sweep): Path<i64>,
    LeaseSecret(secret): LeaseSecret,
    AppJson(req): AppJson<TellRequest>,
) -> ApiResult<Json<JobChange>> {
    let of = state.store.sweep_of_job(req.job_id).await?;
    if of != sweep {
        return Err(ApiError::Unprocessable(format!(
            "job_id: job {} is a trial of sweep {of}, not of sweep {sweep}",
            req.job_id
        )));
    }
    crate::lifecycle::check_lease(&state, req.job_id, req.attempt, secret.as_deref()).await?;
    let spec = state.store.sweep_spec(sweep).await?;
    let metrics = crate::lifecycle::told_metrics(&spec);
    let values = told(&req, &metrics)?;
    let outcome = match (req.state, values.as_ref().is_some_and(|m| m.diverged)) {
        (TellState::Completed, true) => Outcome::Diverged,
        (TellState::Completed, false) => Outcome::Completed,
        (TellState::Failed, _) => Outcome::Failed,
        (TellState::Pruned, _) => Outcome::Pruned,
    };
    let error = req.error.as_deref().map(|e| super::jobs::truncate(e, 8192));
    Ok(Json(
        crate::lifecycle::tell(&state, req.job_id, req.attempt, values, outcome, error).await?,
    ))
}

/// The told values as the report of the trial's attempt, each under its objective's name and within
/// its bounds; None when nothing was told (a failed or pruned trial may tell nothing).
fn told(req: &TellRequest, metrics: &[String]) -> ApiResult<Option<MetricsReport>> {
    let names = metrics.join(", ");
    let given: Vec<(String, &Value)> = match (&req.value, &req.values) {
        (Some(_), Some(_)) => {
            return Err(ApiError::Unprocessable(
                "value: give value or values, not both".into(),
            ))
        }
        (Some(_), None) if metrics.len() > 1 => {
            return Err(ApiError::Unprocessable(format!(
                "value: this sweep has {} objectives ({names}): tell them as values",
                metrics.len()
            )))
        }
        (Some(v), None) => vec![("value".into(), v)],
        (None, Some(vs)) if vs.len() != metrics.len() => {
            return Err(ApiError::Unprocessable(format!(
                "values: {} values for the objectives ({names}), got {}",
                metrics.len(),
                vs.len()
            )))
        }
        (None, Some(vs)) => vs
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("values[{i}]"), v))
            .collect(),
        (None, None) if req.state == TellState::Completed => {
            return Err(ApiError::Unprocessable(format!(
                "value: a completed trial is told its value for {names} (null for NaN)"
            )))
        }
        (None, None) => return Ok(None),
    };
    let mut m = MetricsReport {
        attempt: req.attempt,
        epoch: 1,
        ..Default::default()
    };
    for ((field, v), name) in given.iter().zip(metrics) {
        let x = match v {
            Value::Null => None,
            Value::Number(n) => n.as_f64(),
            _ => {
                return Err(ApiError::Unprocessable(format!(
                    "{field}: must be a number for {name} (null for NaN: the trial diverged)"
                )))
            }
        };
        m.diverged |= x.is_none();
        match m.named_mut(name) {
            Some(slot) => *slot = x,
            None => {
                m.extra.insert(name.clone(), x);
            }
        }
    }
    super::jobs::check_metrics(&m).map_err(|e| match e {
        ApiError::Unprocessable(why) => ApiError::Unprocessable(format!("value: {why}")),
        other => other,
    })?;
    Ok(Some(m))
}
