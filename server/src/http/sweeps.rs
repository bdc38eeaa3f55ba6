//! Users' sweeps: submit, list, read, cancel, and their results and figures.
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use super::ApiResult;
use crate::results::export::{Export, Format, TableOptions};
use crate::state::AppState;
use crate::store::KeyParts;
use crate::sweep::{SweepSpec, MAX_BODY};
use protocol::views::{Created, DryRun, SweepDetail, SweepRow};

/// Submit a sweep: JSON, or TOML with `Content-Type: application/toml`. Rejected whole (422, the field
/// named) if any part is wrong; nothing is stored then. `?dry_run=true` checks it and answers the
/// jobs it would make (200, a [`DryRun`]), storing nothing.
#[utoipa::path(post, path = "/api/sweeps", tag = "sweeps", request_body(content = crate::sweep::SweepFile, description = "sweep spec (JSON, or TOML with Content-Type: application/toml)"),
    params(("dry_run" = Option<bool>, Query, description = "check the spec and list its jobs; store nothing")),
    responses((status = 201, body = Created), (status = 200, body = DryRun, description = "with dry_run=true"), (status = 400), (status = 401), (status = 422)),
    security(("bearer" = [])))]
pub(super) async fn submit_sweep(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SubmitQuery>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    // Read at most one byte past the limit ourselves, so an oversized spec gets the same JSON 422
    // naming the field as every other bad spec (axum's own limit answers 413 in plain text).
    let too_big = || ApiError::Unprocessable(format!("body: larger than {MAX_BODY} bytes (1 MiB)"));
    let body: Bytes = axum::body::to_bytes(body, MAX_BODY + 1)
        .await
        .map_err(|_| too_big())?;
    if body.len() > MAX_BODY {
        return Err(too_big());
    }
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::BadRequest("the body is not UTF-8".into()))?;
    let toml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("toml"));
    // Parsing and validating up to a megabyte is CPU work (linear, but not free): off the async
    // threads, so other requests keep being answered meanwhile.
    let spec = tokio::task::spawn_blocking(move || parse_spec(&text, toml))
        .await
        .map_err(|e| ApiError::Internal(e.into()))??;
    check_warm_start(&state, &spec).await?;
    if q.dry_run {
        return Ok(Json(spec.dry_run()).into_response());
    }
    let (id, jobs) = crate::lifecycle::submit(&state, &spec).await?;
    let warnings = spec.warnings();
    Ok((StatusCode::CREATED, Json(Created { id, jobs, warnings })).into_response())
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct SubmitQuery {
    #[serde(default)]
    dry_run: bool,
}

/// The spec in a submit's body, with the two usual slips of a hand-made request named: TOML sent
/// without its content type, and TOML whose line breaks were lost (`curl -d @file` strips them).
fn parse_spec(text: &str, toml: bool) -> ApiResult<SweepSpec> {
    const SEND_TOML: &str = "send it with `Content-Type: application/toml` \
        (curl: -H 'Content-Type: application/toml' --data-binary @sweep.toml)";
    if toml && lost_its_newlines(text) {
        return Err(ApiError::BadRequest(format!(
            "this TOML has no line breaks: curl's -d strips them; {SEND_TOML}"
        )));
    }
    if toml {
        return Ok(SweepSpec::from_toml(text)?);
    }
    match SweepSpec::from_json(text) {
        Err(crate::sweep::ParseError::Syntax { .. }) if looks_like_toml(text) => {
            Err(ApiError::BadRequest(format!(
                "the body is not valid JSON, and it looks like TOML: {SEND_TOML}"
            )))
        }
        other => Ok(other?),
    }
}

/// TOML's shapes at the start of a line: `[table]`, `[[table]]` or `key = value`.
fn looks_like_toml(text: &str) -> bool {
    let t = text.trim_start();
    if t.starts_with('{') {
        return false;
    }
    t.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .take(3)
        .any(|l| {
            let table = l.starts_with('[') && l.ends_with(']');
            let key = l
                .split_once('=')
                .is_some_and(|(k, _)| !k.trim().is_empty() && !k.contains(['"', '{', ':']));
            table || key
        })
}

/// A TOML sweep file always spans lines; one on a single line with a table header or a comment
/// after its start, or several `key =`, lost its line breaks on the way.
fn lost_its_newlines(text: &str) -> bool {
    let t = text.trim();
    if t.contains('\n') || t.is_empty() {
        return false;
    }
    let tables = t.get(1..).is_some_and(|rest| {
        rest.contains("[train]") || rest.contains("[grid]") || rest.contains("[search")
    });
    tables || t.starts_with('#') || t.matches(" = ").count() > 1
}

/// A drawn search's `warm_start` names sweeps that exist and search the same keys (their finished
/// trials become history): what the spec alone cannot tell.
async fn check_warm_start(state: &AppState, spec: &SweepSpec) -> ApiResult<()> {
    let Some(search) = &spec.search else {
        return Ok(());
    };
    let Some(model) = search.model.as_ref() else {
        return Ok(());
    };
    let warm = &search.warm_start[..];
    let keys = |s: &crate::sweep::search::Search| -> std::collections::BTreeSet<String> {
        s.space.iter().map(|(k, _)| k.clone()).collect()
    };
    // What one draw may cost, from the cheapest signal: the history's size times the candidates.
    let mut history = search.trials;
    for &other in warm {
        history += state.store.sweep_jobs(other).await.unwrap_or(0);
    }
    let ei_candidates = match model {
        crate::sweep::search::Model::Tpe(tpe) => tpe.ei_candidates,
        // NSGA-II reads its history once and ranks one generation: far below TPE's candidates.
        crate::sweep::search::Model::Nsga2(_) => 1,
    };
    let cost = history.saturating_mul(ei_candidates);
    let budget = crate::sweep::tpe::Options::MAX_DRAW_COST;
    if cost > budget {
        return Err(ApiError::Unprocessable(format!(
            "search.ei_candidates: a draw would weigh {history} trials of history (its own and \
             warm_start's) against {} candidates, {cost} units, above the budget of {budget}; \
             fewer candidates or a smaller history",
            ei_candidates
        )));
    }
    for (i, &other) in warm.iter().enumerate() {
        let field = format!("search.warm_start[{i}]");
        let other_spec = match state.store.sweep_spec(other).await {
            Ok(s) => s,
            Err(crate::store::StoreError::NotFound(_)) => {
                return Err(ApiError::Unprocessable(format!(
                    "{field}: no sweep {other}"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let same = other_spec
            .search
            .as_ref()
            .is_some_and(|o| keys(o) == keys(search));
        if !same {
            return Err(ApiError::Unprocessable(format!(
                "{field}: sweep {other} does not search the same keys ({})",
                keys(search).into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/sweeps", tag = "sweeps", responses((status = 200, body = Vec<SweepRow>)))]
pub(super) async fn list_sweeps(State(state): State<AppState>) -> ApiResult<Json<Vec<SweepRow>>> {
    Ok(Json(state.store.list_sweeps().await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SweepQuery {
    /// `false`: leave the job list out (`/api/sweeps/{id}/jobs` pages it).
    pub jobs: Option<bool>,
    /// At most this many jobs, in grid order (default 1000, at most 10000); the sweep's `total`
    /// says how many there are.
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<usize>,
}

/// Jobs listed inline by `GET /api/sweeps/{id}` unless `limit` says otherwise: a 10,000-job sweep
/// is paged through `/api/sweeps/{id}/jobs`, not sent whole to every anonymous reader.
pub const DEFAULT_JOBS_INLINE: usize = 1000;

#[utoipa::path(get, path = "/api/sweeps/{id}", tag = "sweeps", params(("id" = i64, Path), SweepQuery),
    responses((status = 200, body = SweepDetail), (status = 404)))]
pub(super) async fn get_sweep(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<SweepQuery>,
) -> ApiResult<Json<SweepDetail>> {
    let limit = q.limit.unwrap_or(DEFAULT_JOBS_INLINE);
    if !(1..=crate::sweep::MAX_JOBS_INLINE).contains(&limit) {
        return Err(ApiError::Unprocessable(format!(
            "limit: must be between 1 and {} (page larger sweeps with /jobs)",
            crate::sweep::MAX_JOBS_INLINE
        )));
    }
    let inline = if q.jobs.unwrap_or(true) { limit } else { 0 };
    Ok(Json(state.store.sweep_detail(id, inline as i64).await?))
}

/// Cancel a sweep: pending jobs at once (`cancelled_pending`), running jobs on their next
/// heartbeat (`stopping_running`: they end `cancelled` once their workers hear of it).
#[utoipa::path(post, path = "/api/sweeps/{id}/cancel", tag = "sweeps", params(("id" = i64, Path)),
    responses((status = 200), (status = 404)), security(("bearer" = [])))]
pub(super) async fn cancel_sweep(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    let n = crate::lifecycle::cancel_sweep(&state, id).await?;
    let running = state.store.running_of(id).await?;
    Ok(Json(
        serde_json::json!({ "cancelled_pending": n, "stopping_running": running }),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ResultsQuery {
    /// markdown (default), csv or json.
    #[param(value_type = Option<Format>, inline)]
    pub format: Option<String>,
    /// Add precision, recall, F1, epochs and wall time columns (markdown).
    #[serde(default)]
    pub extra: bool,
    /// The study's Chinese headings (markdown).
    #[serde(default)]
    pub chinese: bool,
    /// The study's table (its first README) beside this sweep's results, cell by cell (markdown).
    #[serde(default)]
    pub compare: bool,
}

/// Results in the study's format.
#[utoipa::path(get, path = "/api/sweeps/{id}/results", tag = "sweeps", params(("id" = i64, Path), ResultsQuery),
    responses((status = 200, description = "markdown, CSV or JSON"), (status = 404)))]
pub(super) async fn results(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<ResultsQuery>,
) -> ApiResult<Response> {
    let format: Format = match q.format.as_deref() {
        None => Format::Markdown,
        Some(f) => f
            .parse()
            .map_err(|e| ApiError::Unprocessable(format!("format: {e}")))?,
    };
    let opts = TableOptions {
        extra: q.extra,
        chinese: q.chinese,
        compare: q.compare,
    };
    let d = state.store.sweep_detail(id, 0).await?;
    // The study's comparison is of the study's kind of sweep; any other gets its own table.
    if format == Format::Markdown && opts.compare && crate::results::shape::is_study_grid(&d.spec) {
        // The study's comparison reads accuracy and loss only.
        let keys = state.store.job_keys(id, KeyParts::default()).await?;
        let table = crate::results::study::compare(&keys.jobs);
        return Ok(([(header::CONTENT_TYPE, format.content_type())], table).into_response());
    }
    // An export: every metric's facts and each job's value of the objective (its order).
    let objective = crate::results::export::objective_of(&d.spec).0;
    let parts = KeyParts {
        names: format == Format::Csv,
        metrics: Some(&objective),
    };
    let keys = state.store.job_keys(id, parts).await?;
    let mut export = Export::plan(&d.sweep, &d.spec, &keys, format, &opts);
    if !crate::results::shape::is_study_grid(&d.spec) {
        // The typed spec from the stored one already read (not a second read of the sweep).
        let spec = SweepSpec::from_value(&d.spec)
            .map_err(|e| crate::store::StoreError::Corrupt(format!("sweep {id}: {e}")))?;
        if let Some(front) = super::analysis::front_jobs(&state, id, &spec).await? {
            export = export.with_front(front);
        }
        if let Some((keys, rows)) = state.store.pbt_schedule_rows(id).await? {
            let cells = crate::results::export::schedule_cells(&keys, &rows);
            export = export.with_schedules(cells);
        }
    }
    let ctype = export.content_type();
    Ok((
        [(header::CONTENT_TYPE, ctype)],
        stream_export(state, export),
    )
        .into_response())
}

/// The export's text as a streamed body, its rows fetched a page at a time: memory stays at a page
/// whatever the sweep's size, and a client that stops reading stops the fetching (the channel is
/// bounded). A page that fails to read ends the body early, so the client sees a broken transfer,
/// never a table that silently lacks rows.
fn stream_export(state: AppState, mut export: Export) -> axum::body::Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        if tx.send(Ok(export.head().into())).await.is_err() {
            return;
        }
        let order = std::mem::take(&mut export.order);
        for page in order.chunks(crate::store::ROWS_PER_PAGE) {
            let text = match state.store.jobs_by_id(page).await {
                Ok(rows) => Ok(export.rows(&rows).into()),
                Err(e) => {
                    tracing::warn!(error = %e, "export: a page of rows did not read");
                    Err(std::io::Error::other(e.to_string()))
                }
            };
            let failed = text.is_err();
            if tx.send(text).await.is_err() || failed {
                return;
            }
        }
        let _ = tx.send(Ok(export.tail().into())).await;
    });
    axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct FigureQuery {
    /// The headline run of lr/loss/acc (default: batch 32 at lr 1e-2, else the best run).
    pub job: Option<i64>,
    /// The lr of batch_and_loss/batch_and_acc (default: 1e-2 when present).
    #[param(exclusive_minimum = 0)]
    pub lr: Option<f64>,
}

/// `pareto.png`: a search's front on its first two objectives (404 without several objectives).
async fn front_figure(state: &AppState, id: i64) -> ApiResult<Response> {
    let spec = state.store.sweep_spec(id).await?;
    let Some(search) = spec.search.filter(|s| s.objectives.len() > 1) else {
        return Err(ApiError::NotFound(format!(
            "sweep {id} has no front: its search names fewer than two objectives"
        )));
    };
    let view =
        super::analysis::front_view(state, id, search.objectives, search.constraints, true).await?;
    let png = tokio::task::spawn_blocking(move || crate::results::figures::front_png(&view))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| ApiError::NotFound(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// A figure as PNG: lr.png, loss.png, acc.png, batch_and_loss.png, batch_and_acc.png; and a
/// search's front, pareto.png.
#[utoipa::path(get, path = "/api/sweeps/{id}/figures/{file}", tag = "sweeps",
    params(("id" = i64, Path), ("file" = String, Path, description = "e.g. batch_and_acc.png"), FigureQuery),
    responses((status = 200, content_type = "image/png"), (status = 404)))]
pub(super) async fn figure(
    State(state): State<AppState>,
    Path((id, file)): Path<(i64, String)>,
    Query(q): Query<FigureQuery>,
) -> ApiResult<Response> {
    use crate::results::figures::{self, FigureError};
    let name = file.strip_suffix(".png").unwrap_or(&file).to_string();
    if name == "pareto" {
        return front_figure(&state, id).await;
    }
    let keys = state.store.job_keys(id, KeyParts::default()).await?;
    let opts = figures::FigureOptions {
        job: q.job,
        lr: q.lr,
    };
    let drawn = figures::drawn_jobs(&name, &keys.jobs, &opts)
        .map_err(|e| ApiError::NotFound(e.to_string()))?;
    let stamp = figures::FigureCache::stamp(&keys.jobs);
    if let Some(png) = state.figure_cache.get(id, &name, &opts, stamp) {
        return Ok(([(header::CONTENT_TYPE, "image/png")], png.to_vec()).into_response());
    }
    let sweep_name = state.store.sweep_name(id).await?;
    // Drawing is CPU work: off the async workers, and at most FIGURE_PERMITS at a time; a request
    // that cannot get a turn soon is told to come back rather than queue without bound.
    let permit = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        state.figure_permits.clone().acquire_owned(),
    )
    .await
    .map_err(|_| ApiError::Unavailable("figures are busy; try again".into()))?
    .map_err(|e| ApiError::Internal(e.into()))?;
    let points = state.store.job_curves(&drawn).await?;
    let (name_c, opts_c) = (name.clone(), opts.clone());
    let png = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        figures::render(&name_c, &sweep_name, &keys.jobs, &points, &opts_c)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
    .map_err(|e| match e {
        FigureError::Unknown(_) | FigureError::NoData(_) => ApiError::NotFound(e.to_string()),
        FigureError::Draw(_) => ApiError::Internal(e.into()),
    })?;
    let png = std::sync::Arc::new(png);
    state.figure_cache.put(id, &name, &opts, stamp, png.clone());
    Ok(([(header::CONTENT_TYPE, "image/png")], png.to_vec()).into_response())
}
