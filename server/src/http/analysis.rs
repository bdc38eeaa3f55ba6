//! Analysis of a sweep beyond its table: which parameter mattered (importance). Each view has
//! its route and is computed here, so what the dashboard draws the API also gives.
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::ApiResult;
use crate::results::importance;
use crate::state::AppState;
use crate::sweep::early_stop::Mode;
use protocol::views::Importance;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ImportanceQuery {
    /// The metric (a named one such as `accuracy` or `test_loss`, or a command job's own; default:
    /// the sweep's objective, else accuracy).
    pub metric: Option<String>,
    /// `min` or `max` (default: the objective's mode; for another metric, min for a loss or
    /// `seconds`, else max).
    pub mode: Option<String>,
}

/// Which parameter mattered for a metric: PED-ANOVA over the sweep's completed jobs, as Optuna
/// 5.0's default importance evaluator computes it (shares summing to 1, largest first).
#[utoipa::path(get, path = "/api/sweeps/{id}/importance", tag = "analysis", params(("id" = i64, Path), ImportanceQuery),
    responses((status = 200, body = Importance), (status = 404), (status = 422, description = "an unknown metric or mode, or fewer than 2 completed jobs with a value")))]
pub(super) async fn importance(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<ImportanceQuery>,
) -> ApiResult<Json<Importance>> {
    let spec = state.store.sweep_spec(id).await?;
    let (objective, objective_mode) = importance::objective(&spec);
    let metric = match q.metric {
        Some(m) => checked_metric(m)?,
        None => objective.clone(),
    };
    let mode = match q.mode.as_deref() {
        Some("min") => Mode::Min,
        Some("max") => Mode::Max,
        Some(other) => {
            return Err(ApiError::Unprocessable(format!(
                "mode: {other:?} is neither min nor max"
            )))
        }
        None if metric == objective => objective_mode,
        None => Mode::default_for(&metric),
    };
    let trials = state.store.analysis_trials(id, &metric).await?;
    // Linear in the jobs (a grid of at most 50 cells a parameter): off the async threads all the same.
    let answer =
        tokio::task::spawn_blocking(move || importance::of_sweep(&spec, &trials, &metric, mode))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
    answer.map(Json).map_err(ApiError::Unprocessable)
}

/// A metric's name as a report may carry it ([`protocol::is_metric_name`]): it is read from the
/// stored JSON by name.
fn checked_metric(m: String) -> ApiResult<String> {
    match protocol::is_metric_name(&m) {
        true => Ok(m),
        false => Err(ApiError::Unprocessable(format!(
            "metric: {m:?} is not a metric's name (letters, digits and _.-/, at most 64)"
        ))),
    }
}
