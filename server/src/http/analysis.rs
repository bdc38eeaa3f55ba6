//! Analysis of a sweep beyond its table: its shape, which parameter mattered (importance), the
//! metric against each parameter (slice) and over two (contour), and jobs side by side (compare).
//! Each view has its route and is computed here, so what the dashboard draws the API also gives.
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::ApiResult;
use crate::results::{front, importance, views};
use crate::state::AppState;
use crate::sweep::early_stop::Mode;
use crate::sweep::SweepSpec;
use protocol::views::{
    Compared, Comparison, Contour, Importance, ParetoView, RunLine, Runs, Slice, SweepShape,
};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct MetricQuery {
    /// The metric (a named one such as `accuracy` or `test_loss`, or a command job's own; default:
    /// the sweep's objective, else accuracy).
    pub metric: Option<String>,
    /// `min` or `max` (default: the objective's mode; for another metric, min for a loss or
    /// `seconds`, else max).
    pub mode: Option<String>,
}

/// The metric and mode a view judges by: those asked for, else the sweep's objective.
fn metric_and_mode(
    spec: &SweepSpec,
    metric: Option<&str>,
    mode: Option<&str>,
) -> ApiResult<(String, Mode)> {
    let (objective, objective_mode) = importance::objective(spec);
    let metric = match metric {
        Some(m) => checked_metric(m.to_string())?,
        None => objective.clone(),
    };
    let mode = match mode {
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
    Ok((metric, mode))
}

/// Runs a view's computation off the async threads (it is linear in the jobs, and a 100,000-job
/// sweep takes a good part of a second); its Err is why there is no view (422).
async fn compute<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(ApiError::Unprocessable)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ParetoQuery {
    /// The objectives, as `metric[:max|min],...` (default: the search's; a sweep without
    /// objectives, a grid for one, must name them).
    pub objectives: Option<String>,
    /// Every completed trial that reported each objective too, not only the front (at most
    /// 5,000, by non-domination rank), each marked `front` or not.
    #[serde(default)]
    pub all: bool,
}

/// The front: the completed trials no other feasible completed trial dominates on the
/// objectives, feasible ones only, with their parameters; by the first objective, best first.
#[utoipa::path(get, path = "/api/sweeps/{id}/pareto", tag = "analysis", params(("id" = i64, Path), ParetoQuery),
    responses((status = 200, body = ParetoView), (status = 404), (status = 422)))]
pub(super) async fn pareto(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<ParetoQuery>,
) -> ApiResult<Json<ParetoView>> {
    let spec = state.store.sweep_spec(id).await?;
    let search = spec.search.as_ref();
    let objectives = match q.objectives.as_deref() {
        Some(text) => front::parse_objectives(text).map_err(ApiError::Unprocessable)?,
        None => match search.map(|s| s.objectives.clone()).unwrap_or_default() {
            o if !o.is_empty() => o,
            _ => {
                return Err(ApiError::Unprocessable(format!(
                "objectives: sweep {id} names none; ask for some, as objectives=accuracy,seconds"
            )))
            }
        },
    };
    let constraints = search.map(|s| s.constraints.clone()).unwrap_or_default();
    let mut view = front_view(&state, id, objectives, constraints, q.all).await?;
    let ids: Vec<i64> = view
        .trials
        .iter()
        .filter(|t| t.front)
        .map(|t| t.job_id)
        .collect();
    let mut params = state.store.params_of(&ids).await?;
    for t in view.trials.iter_mut().filter(|t| t.front) {
        t.params = params.remove(&t.job_id);
    }
    Ok(Json(view))
}

/// A sweep's front on `objectives` under `constraints` (without parameters).
pub(super) async fn front_view(
    state: &AppState,
    sweep: i64,
    objectives: Vec<(String, Mode)>,
    constraints: Vec<crate::sweep::objectives::Constraint>,
    all: bool,
) -> ApiResult<ParetoView> {
    let view = state
        .store
        .front(sweep, &objectives, &constraints, all)
        .await?;
    Ok((*view).clone())
}

/// A search with several objectives: its front's jobs (the exports' `pareto` column).
pub(super) async fn front_jobs(
    state: &AppState,
    sweep: i64,
    spec: &SweepSpec,
) -> ApiResult<Option<std::collections::HashSet<i64>>> {
    let Some(search) = spec.search.as_ref().filter(|s| s.objectives.len() > 1) else {
        return Ok(None);
    };
    let (objectives, constraints) = (search.objectives.clone(), search.constraints.clone());
    let view = front_view(state, sweep, objectives, constraints, false).await?;
    Ok(Some(view.trials.iter().map(|t| t.job_id).collect()))
}

/// What a sweep varies (its axes, each with its scale) and what its jobs reported (each metric
/// with its range and which way is better): the columns of every view and export.
#[utoipa::path(get, path = "/api/sweeps/{id}/shape", tag = "analysis", params(("id" = i64, Path)),
    responses((status = 200, body = SweepShape), (status = 404)))]
pub(super) async fn shape(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<SweepShape>> {
    // One read of the spec (the sweep's row would also scan its jobs for a best accuracy).
    let (stored, spec) = state.store.stored_spec(id).await?;
    let ranges = state.store.metric_ranges(id).await?;
    Ok(Json(views::shape(&stored, &spec, &ranges)))
}

/// Which parameter mattered for a metric: PED-ANOVA over the sweep's completed jobs, as Optuna
/// 5.0's default importance evaluator computes it (shares summing to 1, largest first).
#[utoipa::path(get, path = "/api/sweeps/{id}/importance", tag = "analysis", params(("id" = i64, Path), MetricQuery),
    responses((status = 200, body = Importance), (status = 404), (status = 422, description = "an unknown metric or mode, or fewer than 2 completed jobs with a value")))]
pub(super) async fn importance(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<MetricQuery>,
) -> ApiResult<Json<Importance>> {
    let spec = state.store.sweep_spec(id).await?;
    let (metric, mode) = metric_and_mode(&spec, q.metric.as_deref(), q.mode.as_deref())?;
    let trials = state
        .store
        .analysis_trials(id, &metric, &axis_names(&spec))
        .await?;
    compute(move || importance::of_sweep(&spec, &trials, &metric, mode))
        .await
        .map(Json)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SliceQuery {
    /// The metric (default: the sweep's objective, else accuracy).
    pub metric: Option<String>,
    /// `min` or `max` (default: the objective's mode; for another metric, min for a loss or
    /// `seconds`, else max).
    pub mode: Option<String>,
    /// Points at most (default and largest 2,000): beyond, the best are kept.
    #[param(minimum = 1, maximum = 2000)]
    pub points: Option<usize>,
}

/// The metric against each parameter: one point per completed job (the best 2,000 at most), each
/// with its trial number, and each axis with its scale (log for a log space, categories for
/// choices).
#[utoipa::path(get, path = "/api/sweeps/{id}/slice", tag = "analysis", params(("id" = i64, Path), SliceQuery),
    responses((status = 200, body = Slice), (status = 404), (status = 422, description = "an unknown metric or mode, or fewer than 2 completed jobs with a value")))]
pub(super) async fn slice(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<SliceQuery>,
) -> ApiResult<Json<Slice>> {
    let spec = state.store.sweep_spec(id).await?;
    let (metric, mode) = metric_and_mode(&spec, q.metric.as_deref(), q.mode.as_deref())?;
    let limit = points_limit(q.points)?;
    let trials = state
        .store
        .analysis_trials(id, &metric, &axis_names(&spec))
        .await?;
    compute(move || views::slice(&spec, &trials, &metric, mode, limit))
        .await
        .map(Json)
}

fn points_limit(points: Option<usize>) -> ApiResult<usize> {
    match points.unwrap_or(views::MAX_POINTS) {
        n @ 1..=views::MAX_POINTS => Ok(n),
        n => Err(ApiError::Unprocessable(format!(
            "points: {n} is not within 1..={}",
            views::MAX_POINTS
        ))),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ContourQuery {
    /// The metric (default: the sweep's objective, else accuracy).
    pub metric: Option<String>,
    /// `min` or `max` (default: the objective's mode; for another metric, min for a loss or
    /// `seconds`, else max).
    pub mode: Option<String>,
    /// The parameter across (default: the most important; lr for the study's grid).
    pub x: Option<String>,
    /// The parameter up (default: the second most important; batch_size for the study's grid).
    pub y: Option<String>,
    /// Cells along a numerical axis (default 30, at most 100; a choice has a cell per value).
    #[param(minimum = 2, maximum = 100)]
    pub size: Option<usize>,
    /// Points at most (default and largest 2,000).
    #[param(minimum = 1, maximum = 2000)]
    pub points: Option<usize>,
}

/// The metric over two parameters: the completed jobs' values averaged per cell of a fixed grid,
/// the empty cells interpolated (harmonically) on the server; the method and size say so.
#[utoipa::path(get, path = "/api/sweeps/{id}/contour", tag = "analysis", params(("id" = i64, Path), ContourQuery),
    responses((status = 200, body = Contour), (status = 404), (status = 422, description = "an unknown metric, mode or parameter, fewer than two parameters, or fewer than 2 completed jobs with a value")))]
pub(super) async fn contour(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<ContourQuery>,
) -> ApiResult<Json<Contour>> {
    let spec = state.store.sweep_spec(id).await?;
    let (metric, mode) = metric_and_mode(&spec, q.metric.as_deref(), q.mode.as_deref())?;
    let limit = points_limit(q.points)?;
    let size = match q.size.unwrap_or(views::CONTOUR_SIZE) {
        n @ 2..=views::MAX_CONTOUR_SIZE => n,
        n => {
            return Err(ApiError::Unprocessable(format!(
                "size: {n} is not within 2..={}",
                views::MAX_CONTOUR_SIZE
            )))
        }
    };
    let trials = state
        .store
        .analysis_trials(id, &metric, &axis_names(&spec))
        .await?;
    compute(move || {
        let (x, y) = match (q.x, q.y) {
            (Some(x), Some(y)) => (x, y),
            (x, y) => {
                let (dx, dy) = contour_axes(&spec, &trials, &metric, mode)?;
                (x.unwrap_or(dx), y.unwrap_or(dy))
            }
        };
        views::contour(&spec, &trials, &metric, mode, (&x, &y), size, limit)
    })
    .await
    .map(Json)
}

/// The two parameters a contour shows unless asked: lr across and batch size up for the study's
/// grid, the only two of a sweep that has two, else the two most important.
fn contour_axes(
    spec: &SweepSpec,
    trials: &[crate::store::AnalysisTrial],
    metric: &str,
    mode: Mode,
) -> Result<(String, String), String> {
    let names: Vec<String> = importance::axes(spec).into_iter().map(|(k, _)| k).collect();
    let has = |k: &str| names.iter().any(|n| n == k);
    match names.len() {
        0 | 1 => Err(format!(
            "a contour needs two parameters; this sweep has {}",
            match names.first() {
                Some(n) => format!("one ({n})"),
                None => "none".into(),
            }
        )),
        _ if has("lr") && has("batch_size") && spec.search.is_none() => {
            Ok(("lr".into(), "batch_size".into()))
        }
        2 => Ok((names[0].clone(), names[1].clone())),
        _ => {
            let imp = importance::of_sweep(spec, trials, metric, mode)?;
            let mut top = imp.importances.keys();
            let x = top.next().cloned().unwrap_or_default();
            Ok((x, top.next().cloned().unwrap_or_default()))
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RunsQuery {
    /// The metric (default: the sweep's objective, else accuracy).
    pub metric: Option<String>,
    /// `min` or `max` (default: the objective's mode; for another metric, min for a loss or
    /// `seconds`, else max).
    pub mode: Option<String>,
    /// Lines at most (default 50, at most 200): the best by their latest value.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    /// About how many epochs per line (default 150; 2 to 2,000).
    #[param(minimum = 2, maximum = 2000)]
    pub points: Option<i64>,
}

/// Most lines one overlay draws.
pub const MAX_RUNS: usize = 200;

/// The curves of a sweep's runs for one metric, overlaid: the best `limit` jobs by their latest
/// value (running ones included), each downsampled to about `points` epochs.
#[utoipa::path(get, path = "/api/sweeps/{id}/runs", tag = "analysis", params(("id" = i64, Path), RunsQuery),
    responses((status = 200, body = Runs), (status = 404), (status = 422, description = "an unknown metric or mode, or a limit out of range")))]
pub(super) async fn runs(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<RunsQuery>,
) -> ApiResult<Json<Runs>> {
    let spec = state.store.sweep_spec(id).await?;
    let (metric, mode) = metric_and_mode(&spec, q.metric.as_deref(), q.mode.as_deref())?;
    let limit = match q.limit.unwrap_or(50) {
        n @ 1..=MAX_RUNS => n,
        n => {
            return Err(ApiError::Unprocessable(format!(
                "limit: {n} is not within 1..={MAX_RUNS}"
            )))
        }
    };
    let (total, best) = state
        .store
        .best_runs(id, &metric, mode == Mode::Min, limit as i64)
        .await?;
    let ids: Vec<i64> = best.iter().map(|(id, _)| *id).collect();
    let rows = state.store.jobs_by_id(&ids).await?;
    let epochs = rows.iter().map(|j| j.epoch).max().unwrap_or(1);
    let points = q.points.unwrap_or(150).clamp(2, 2000);
    let stride = epochs.saturating_add(points - 1) / points;
    let curves = state.store.run_curves(&ids, &metric, stride.max(1)).await?;
    let lines = rows
        .into_iter()
        .zip(curves)
        .zip(best)
        .map(|((row, (_, epoch, value)), (_, last))| RunLine {
            job: row.id,
            status: row.status,
            params: row.params,
            last,
            epoch,
            value,
        })
        .collect();
    Ok(Json(Runs {
        metric,
        mode: mode.as_str().into(),
        total,
        lines,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CompareQuery {
    /// 2 to 5 job ids, comma-separated (`1,7,12`).
    pub jobs: String,
}

/// Jobs side by side, from any sweeps: each with its parameters, summary and every epoch it
/// recorded, and the parameters that differ among them.
#[utoipa::path(get, path = "/api/compare", tag = "analysis", params(CompareQuery),
    responses((status = 200, body = Comparison), (status = 404, description = "a job that does not exist"), (status = 422, description = "not 2 to 5 job ids")))]
pub(super) async fn compare(
    State(state): State<AppState>,
    Query(q): Query<CompareQuery>,
) -> ApiResult<Json<Comparison>> {
    let ids = compared_ids(&q.jobs)?;
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids {
        let detail = state.store.get_job(id, 0, 1).await?;
        let sweep_name = state.store.sweep_name(detail.job.sweep_id).await?;
        jobs.push(Compared {
            job: detail.job,
            sweep_name,
            metrics: detail.metrics,
        });
    }
    let rows: Vec<&protocol::views::JobRow> = jobs.iter().map(|c| &c.job).collect();
    let differing = views::differing(&rows);
    Ok(Json(Comparison { jobs, differing }))
}

/// Most jobs one comparison shows (more lines than that on one chart cannot be told apart).
pub const MAX_COMPARED: usize = 5;

/// `1,7,12` as distinct ids, 2 to [`MAX_COMPARED`] of them.
fn compared_ids(list: &str) -> ApiResult<Vec<i64>> {
    let mut ids: Vec<i64> = vec![];
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let id: i64 = part
            .parse()
            .map_err(|_| ApiError::Unprocessable(format!("jobs: {part:?} is not a job id")))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    match ids.len() {
        2..=MAX_COMPARED => Ok(ids),
        n => Err(ApiError::Unprocessable(format!(
            "jobs: compare takes 2 to {MAX_COMPARED} distinct job ids, got {n}"
        ))),
    }
}

/// The names of a sweep's axes: the only parameters analysis reads.
fn axis_names(spec: &SweepSpec) -> Vec<String> {
    importance::axes(spec).into_iter().map(|(k, _)| k).collect()
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

/// A PBT sweep's best completed member and the schedule behind its weights, with a sweep file that
/// replays it as one run of our trainer (docs/pbt.md, "The schedule"). 404 for another sweep or
/// before a member completes.
#[utoipa::path(get, path = "/api/sweeps/{id}/schedule", tag = "analysis", params(("id" = i64, Path)),
    responses((status = 200, body = protocol::views::ScheduleView), (status = 404)))]
pub(super) async fn schedule(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<protocol::views::ScheduleView>> {
    let Some(inputs) = state.store.pbt_lineage_inputs(id).await? else {
        return Err(ApiError::NotFound(format!(
            "sweep {id} is not a population-based training sweep (method = \"pbt\")"
        )));
    };
    let Some(crate::store::BestMember {
        job,
        value,
        last_epoch: last,
        params,
    }) = inputs.best
    else {
        return Err(ApiError::NotFound(format!(
            "sweep {id} has no completed member yet"
        )));
    };
    let space: Vec<String> = inputs
        .stored
        .rules
        .space
        .iter()
        .map(|(k, _)| k.clone())
        .collect();
    let steps = crate::sweep::pbt::lineage(&inputs.segments, job, last);
    let spec = state.store.sweep_spec(id).await?;
    let replay = spec.command.is_none().then(|| {
        let mut train = params.clone();
        train.retain(|k, _| !space.contains(k));
        let name = format!("{}-replay-job-{job}", spec.name);
        crate::sweep::pbt::replay_toml(&name, &train, &space, &steps)
    });
    let steps = steps
        .into_iter()
        .map(|s| protocol::views::ScheduleStep {
            first_epoch: s.first,
            last_epoch: s.last,
            job_id: s.job,
            params: s
                .params
                .into_iter()
                .filter(|(k, _)| space.contains(k))
                .collect(),
        })
        .collect();
    Ok(Json(protocol::views::ScheduleView {
        sweep_id: id,
        job_id: job,
        metric: inputs.stored.metric.clone(),
        mode: inputs.stored.rules.mode.as_str().to_string(),
        value,
        steps,
        replay,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PopulationQuery {
    /// The metric drawn (default: the rules').
    pub metric: Option<String>,
    /// Members, the first by job id (100 by default, at most 1,000).
    pub limit: Option<i64>,
}

/// A PBT sweep's population for the dashboard: each member's metric by epoch and its segments.
#[utoipa::path(get, path = "/api/sweeps/{id}/population", tag = "analysis", params(("id" = i64, Path), PopulationQuery),
    responses((status = 200, body = protocol::views::PopulationView), (status = 404)))]
pub(super) async fn population(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<PopulationQuery>,
) -> ApiResult<Json<protocol::views::PopulationView>> {
    let metric = q.metric.as_deref();
    if metric
        .is_some_and(|m| m.len() > 64 || !m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err(ApiError::Unprocessable(
            "metric: a metric's name (letters, digits, _)".into(),
        ));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match state.store.pbt_population(id, metric, limit).await? {
        Some(view) => Ok(Json(view)),
        None => Err(ApiError::NotFound(format!(
            "sweep {id} is not a population-based training sweep (method = \"pbt\")"
        ))),
    }
}
