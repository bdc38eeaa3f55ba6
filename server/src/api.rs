//! The REST API: users' sweeps and results, and the worker protocol (claim, heartbeat, metrics,
//! finish), public so a worker in any language can take part.
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Instant;
use utoipa::{OpenApi, ToSchema};

use crate::error::{ApiError, AppJson};
use crate::events::{self, Event};
use crate::export::{self, Format, TableOptions};
use crate::spec::{SweepSpec, MAX_BODY};
use crate::state::AppState;
use crate::views::{JobDetail, SweepDetail, SweepRow};
use protocol::{
    Capacity, Claim, ClaimRequest, FinishRequest, HeartbeatReply, HeartbeatRequest, JobChange,
    JobStatus, MetricsReply, MetricsReport, Outcome, ReleaseRequest,
};

type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "sweep coordinator", description = "Hyperparameter sweeps of the study's CIFAR-10 trainer: sweeps, jobs under leases, metrics, results."),
    paths(submit_sweep, list_sweeps, get_sweep, cancel_sweep, get_job, results, figure, claim, heartbeat, report_metrics, finish, release,
          crate::dashboard::jobs_page, crate::dashboard::grid, crate::dashboard::curves,
          crate::artifacts::upload, crate::artifacts::download, crate::logs::append, crate::logs::read,
          events::stream, healthz, prometheus, openapi, crate::auth::create_session),
    components(schemas(SweepFile, SweepRow, SweepDetail, JobDetail, Claim, Capacity, ClaimRequest, HeartbeatRequest,
                       HeartbeatReply, MetricsReport, MetricsReply, FinishRequest, ReleaseRequest, JobChange, JobStatus, protocol::SweepStatus, Outcome, Created, crate::views::JobRow,
                        crate::views::AttemptRow, crate::views::JobPage, crate::auth::SessionRequest, crate::views::GridCell, crate::views::Series)),
    modifiers(&BearerAuth, &CommonResponses)
)]
pub struct ApiDoc;

/// The answers every operation can give besides its own, stated once: a request that cannot be
/// read (400), credentials missing or wrong (401) or not enough (403) where the operation needs
/// them, no such sweep or job (404) where the path names one, a value out of range (422), the
/// coordinator busy or shutting down (503) and a request that took too long (408).
struct CommonResponses;

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::ResponseBuilder;
        let answer = |d: &str| ResponseBuilder::new().description(d).build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                let r = &mut op.responses.responses;
                let mut add = |code: &str, d: &str| {
                    r.entry(code.to_string())
                        .or_insert_with(|| answer(d).into());
                };
                add(
                    "400",
                    "the request could not be read (a malformed body, query or path)",
                );
                add("408", "the request took too long");
                add("422", "a value is out of range; the error names it");
                add("503", "the coordinator is busy or shutting down; retry");
                if path.contains('{') {
                    add("404", "no such sweep or job");
                }
                if op.security.is_some() {
                    add("401", "missing or wrong bearer token");
                    add("403", "the worker token is for the worker protocol only");
                }
            }
        }
    }
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The REST API, the worker protocol and the dashboard. Every request is answered within
/// `request_timeout` (408 otherwise) except those that stream by design: the event stream and
/// checkpoint transfers (up to a gigabyte). tower-http traces each request (`RUST_LOG=tower_http=debug`).
pub fn router(state: AppState, request_timeout: std::time::Duration) -> Router {
    let streaming = Router::new()
        .route(
            "/api/jobs/{id}/checkpoint",
            axum::routing::put(crate::artifacts::upload)
                .get(crate::artifacts::download)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/api/events", get(events::stream));
    let logs = Router::new().route(
        "/api/jobs/{id}/log",
        post(crate::logs::append).get(crate::logs::read).layer(
            axum::extract::DefaultBodyLimit::max(crate::store::logs::MAX_CHUNK),
        ),
    );
    Router::new()
        .route(
            "/api/sweeps",
            post(submit_sweep)
                .get(list_sweeps)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/api/sweeps/{id}", get(get_sweep))
        .route("/api/sweeps/{id}/cancel", post(cancel_sweep))
        .route("/api/sweeps/{id}/results", get(results))
        .route("/api/sweeps/{id}/figures/{file}", get(figure))
        .route("/api/sweeps/{id}/jobs", get(crate::dashboard::jobs_page))
        .route("/api/sweeps/{id}/grid", get(crate::dashboard::grid))
        .route("/api/sweeps/{id}/curves", get(crate::dashboard::curves))
        .route("/", get(crate::dashboard::index))
        .route("/app.js", get(crate::dashboard::app_js))
        .route("/style.css", get(crate::dashboard::style))
        .route("/api/jobs/claim", post(claim))
        .route("/api/jobs/{id}", get(get_job))
        .route("/api/jobs/{id}/heartbeat", post(heartbeat))
        .route("/api/jobs/{id}/metrics", post(report_metrics))
        .route("/api/jobs/{id}/finish", post(finish))
        .route("/api/jobs/{id}/release", post(release))
        .route("/api/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/metrics", get(prometheus))
        .route("/api/session", post(crate::auth::create_session))
        .merge(logs)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .merge(streaming)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::guard_host_and_headers,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe_latency,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn observe_latency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let res = next.run(req).await;
    state.telemetry.observe(t0.elapsed().as_secs_f64());
    res
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Created {
    pub id: i64,
    pub jobs: usize,
}

/// Submit a sweep: JSON, or TOML with `Content-Type: application/toml`. Rejected whole (422, the field
/// named) if any part is wrong; nothing is stored then.
/// A sweep file's structure, for the OpenAPI document: the spec is validated as a whole, each
/// refused field named in the 422 (docs/sweep-files.md).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SweepFile {
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// Settings every job shares (`worker train` options).
    #[schema(value_type = Object, required = false)]
    train: Option<Value>,
    /// Axes (option -> list of values), or a list of such tables.
    #[schema(value_type = Object, required = false)]
    grid: Option<Value>,
    /// `method` grid or random, with `trials`, `seed` and `space`.
    #[schema(value_type = Object, required = false)]
    search: Option<Value>,
    /// `method` asha or median, `metric`, `mode`, `min_epochs`, ...
    #[schema(value_type = Object, required = false)]
    early_stop: Option<Value>,
    /// `max_attempts`, `repeats`.
    #[schema(value_type = Object, required = false)]
    run: Option<Value>,
    /// Run this program instead of `worker train`: `argv` (with `{name}` placeholders), `workdir`,
    /// `ranks`.
    #[schema(value_type = Object, required = false)]
    command: Option<Value>,
}

#[utoipa::path(post, path = "/api/sweeps", tag = "sweeps", request_body(content = SweepFile, description = "sweep spec (JSON, or TOML with Content-Type: application/toml)"),
    responses((status = 201, body = Created), (status = 400), (status = 401), (status = 422)),
    security(("bearer" = [])))]
async fn submit_sweep(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<Created>)> {
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
    let spec = tokio::task::spawn_blocking(move || {
        if toml {
            SweepSpec::from_toml(&text)
        } else {
            SweepSpec::from_json(&text)
        }
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    let (id, jobs) = state
        .store
        .create_sweep(&spec, state.clock.now_ms())
        .await?;
    tracing::info!(sweep = id, name = %spec.name, jobs, "sweep submitted");
    state.publish(Event::Sweep {
        sweep_id: id,
        status: protocol::SweepStatus::Pending,
    });
    Ok((StatusCode::CREATED, Json(Created { id, jobs })))
}

#[utoipa::path(get, path = "/api/sweeps", tag = "sweeps", responses((status = 200, body = Vec<SweepRow>)))]
async fn list_sweeps(State(state): State<AppState>) -> ApiResult<Json<Vec<SweepRow>>> {
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
async fn get_sweep(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<SweepQuery>,
) -> ApiResult<Json<SweepDetail>> {
    let limit = q.limit.unwrap_or(DEFAULT_JOBS_INLINE);
    if !(1..=crate::spec::MAX_JOBS).contains(&limit) {
        return Err(ApiError::Unprocessable(format!(
            "limit: must be between 1 and {}",
            crate::spec::MAX_JOBS
        )));
    }
    let mut detail = state.store.sweep_detail(id, q.jobs.unwrap_or(true)).await?;
    detail.jobs.truncate(limit);
    Ok(Json(detail))
}

/// Cancel a sweep: pending jobs at once, running jobs on their next heartbeat.
#[utoipa::path(post, path = "/api/sweeps/{id}/cancel", tag = "sweeps", params(("id" = i64, Path)),
    responses((status = 200), (status = 404)), security(("bearer" = [])))]
async fn cancel_sweep(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    let changed = state.store.cancel_sweep(id, state.clock.now_ms()).await?;
    let n = changed.len();
    for c in changed {
        state.job_changed(c).await;
    }
    state.publish(Event::Sweep {
        sweep_id: id,
        status: protocol::SweepStatus::Cancelled,
    });
    Ok(Json(serde_json::json!({ "cancelled_pending": n })))
}

#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, body = JobDetail), (status = 404)))]
async fn get_job(State(state): State<AppState>, Path(id): Path<i64>) -> ApiResult<Json<JobDetail>> {
    Ok(Json(state.store.get_job(id).await?))
}

/// The formats of `/results` (documentation only: an unknown one gets a 422 naming it).
#[derive(Debug, utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ResultsFormat {
    Markdown,
    Csv,
    Json,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ResultsQuery {
    /// markdown (default), csv or json.
    #[param(value_type = Option<ResultsFormat>, inline)]
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
async fn results(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<ResultsQuery>,
) -> ApiResult<Response> {
    let format = match q.format.as_deref().unwrap_or("markdown") {
        "markdown" | "md" => Format::Markdown,
        "csv" => Format::Csv,
        "json" => Format::Json,
        other => {
            return Err(ApiError::Unprocessable(format!(
                "format: unknown format {other:?} (markdown, csv, json)"
            )))
        }
    };
    let detail = state.store.get_sweep(id).await?;
    let opts = TableOptions {
        extra: q.extra,
        chinese: q.chinese,
        compare: q.compare,
    };
    let (ctype, body) = export::render(&detail, format, &opts);
    Ok(([(header::CONTENT_TYPE, ctype)], body).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct FigureQuery {
    /// The headline run of lr/loss/acc (default: batch 32 at lr 1e-2, else the best run).
    pub job: Option<i64>,
    /// The lr of batch_and_loss/batch_and_acc (default: 1e-2 when present).
    #[param(exclusive_minimum = 0)]
    pub lr: Option<f64>,
}

/// A figure as PNG: lr.png, loss.png, acc.png, batch_and_loss.png, batch_and_acc.png.
#[utoipa::path(get, path = "/api/sweeps/{id}/figures/{file}", tag = "sweeps",
    params(("id" = i64, Path), ("file" = String, Path, description = "e.g. batch_and_acc.png"), FigureQuery),
    responses((status = 200, content_type = "image/png"), (status = 404)))]
async fn figure(
    State(state): State<AppState>,
    Path((id, file)): Path<(i64, String)>,
    Query(q): Query<FigureQuery>,
) -> ApiResult<Response> {
    use crate::figures::{self, FigureError};
    let name = file.strip_suffix(".png").unwrap_or(&file).to_string();
    let detail = state.store.get_sweep(id).await?;
    let opts = figures::FigureOptions {
        job: q.job,
        lr: q.lr,
    };
    let drawn = figures::drawn_jobs(&name, &detail.jobs, &opts)
        .map_err(|e| ApiError::NotFound(e.to_string()))?;
    let stamp = figures::FigureCache::stamp(&detail.jobs);
    if let Some(png) = state.figure_cache.get(id, &name, &opts, stamp) {
        return Ok(([(header::CONTENT_TYPE, "image/png")], png.to_vec()).into_response());
    }
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
        figures::render(&name_c, &detail.sweep.name, &detail.jobs, &points, &opts_c)
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

/// Take the oldest pending job that fits; 204 when none does.
#[utoipa::path(post, path = "/api/jobs/claim", tag = "worker protocol", request_body = ClaimRequest,
    responses((status = 200, body = Claim), (status = 204)), security(("bearer" = [])))]
async fn claim(
    State(state): State<AppState>,
    AppJson(req): AppJson<ClaimRequest>,
) -> ApiResult<Response> {
    if req.worker.trim().is_empty() || req.worker.len() > 200 {
        return Err(ApiError::Unprocessable(
            "worker: must be a non-empty name of at most 200 bytes".into(),
        ));
    }
    let now = state.clock.now_ms();
    match state
        .store
        .claim_next(
            &req.worker,
            req.capacity,
            req.accepts_commands,
            now,
            state.lease_ms,
        )
        .await?
    {
        Some(c) => {
            state.telemetry.claims.inc();
            state.publish(Event::Job(JobChange {
                job_id: c.id,
                sweep_id: c.sweep_id,
                status: JobStatus::Running,
                attempt: c.attempt,
            }));
            Ok(Json(c).into_response())
        }
        None => {
            state.telemetry.empty_claims.inc();
            Ok(StatusCode::NO_CONTENT.into_response())
        }
    }
}

/// Renew the lease; the reply says whether the job was cancelled.
#[utoipa::path(post, path = "/api/jobs/{id}/heartbeat", tag = "worker protocol", params(("id" = i64, Path)),
    request_body = HeartbeatRequest, responses((status = 200, body = HeartbeatReply), (status = 409)), security(("bearer" = [])))]
async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    AppJson(req): AppJson<HeartbeatRequest>,
) -> ApiResult<Json<HeartbeatReply>> {
    Ok(Json(
        state
            .store
            .heartbeat(id, req.attempt, state.clock.now_ms(), state.lease_ms)
            .await?,
    ))
}

/// Record one epoch's metrics (idempotent per epoch; 409 from an attempt that lost the lease).
#[utoipa::path(post, path = "/api/jobs/{id}/metrics", tag = "worker protocol", params(("id" = i64, Path)),
    request_body = MetricsReport, responses((status = 200, body = MetricsReply), (status = 409), (status = 422)), security(("bearer" = [])))]
async fn report_metrics(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    AppJson(m): AppJson<MetricsReport>,
) -> ApiResult<Json<MetricsReply>> {
    check_metrics(&m)?;
    let now = state.clock.now_ms();
    let rule = state.store.early_stop_rule_of_job(id).await?;
    let (sweep_id, stop) = match (judged_on(rule.as_ref(), &m), rule) {
        (Some(value), Some(rule)) => {
            state
                .store
                .record_and_judge(id, &m, now, value, rule)
                .await?
        }
        // Not judged: the stop flag as an earlier report left it (only a rule sets it).
        (_, rule) => {
            let sweep = state.store.record_metrics(id, &m, now).await?;
            let stop = rule.is_some() && state.store.stop_requested(id).await?;
            (sweep, stop)
        }
    };
    state.publish(Event::Metrics {
        job_id: id,
        sweep_id,
        metrics: m,
    });
    Ok(Json(MetricsReply { ok: true, stop }))
}

/// The value this report is judged on under the sweep's early-stopping rule, if it can be judged:
/// one without the rule's metric (no evaluation that epoch) or marked `diverged` (its loss was
/// non-finite: the run ends itself) is not.
fn judged_on(rule: Option<&crate::early_stop::EarlyStop>, m: &MetricsReport) -> Option<f64> {
    let rule = rule?;
    crate::early_stop::value_of(m, &rule.metric).filter(|_| !m.diverged)
}

/// Every reported value is checked before it is stored: a wrong number would otherwise reach the
/// figures, the exports and the early-stopping decisions of every later reader. (The epoch's upper
/// bound, the job's own epochs, is checked by the store.)
fn check_metrics(m: &MetricsReport) -> ApiResult<()> {
    if m.epoch < 1 {
        return Err(ApiError::Unprocessable("epoch: must be at least 1".into()));
    }
    // Largest value an fp32 trainer can report.
    let big = f32::MAX as f64;
    let checks: [(&str, Option<f64>, f64, f64); 9] = [
        ("lr", m.lr, 0.0, big),
        ("train_loss", m.train_loss, 0.0, big),
        ("test_loss", m.test_loss, 0.0, big),
        ("accuracy", m.accuracy, 0.0, 1.0),
        ("precision", m.precision, 0.0, 1.0),
        ("recall", m.recall, 0.0, 1.0),
        ("f1", m.f1, 0.0, 1.0),
        ("images_per_sec", m.images_per_sec, 0.0, 1e12),
        ("seconds", m.seconds, 0.0, 1e9),
    ];
    if m.extra.len() > protocol::MAX_EXTRA_METRICS {
        return Err(ApiError::Unprocessable(format!(
            "extra: at most {} metrics of its own per epoch",
            protocol::MAX_EXTRA_METRICS
        )));
    }
    for (name, value) in &m.extra {
        if !protocol::is_metric_name(name) || crate::early_stop::METRICS.contains(&name.as_str()) {
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
    for (name, value, lo, hi) in checks {
        if let Some(x) = value {
            if !(lo..=hi).contains(&x) {
                return Err(ApiError::Unprocessable(format!(
                    "{name}: {x} is outside {lo}..={hi} (a non-finite loss is sent as null)"
                )));
            }
        }
    }
    Ok(())
}

/// End the attempt. `failed` is retried until the job's attempts run out; a repeat is a no-op.
#[utoipa::path(post, path = "/api/jobs/{id}/finish", tag = "worker protocol", params(("id" = i64, Path)),
    request_body = FinishRequest, responses((status = 200, body = JobChange), (status = 409), (status = 422)), security(("bearer" = [])))]
async fn finish(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    AppJson(req): AppJson<FinishRequest>,
) -> ApiResult<Json<JobChange>> {
    let error = req.error.as_deref().map(|e| truncate(e, 8192));
    let change = state
        .store
        .finish(
            id,
            req.attempt,
            req.status,
            req.summary.as_ref(),
            error,
            state.clock.now_ms(),
        )
        .await?;
    state.job_changed(change.clone()).await;
    Ok(Json(change))
}

/// Give the job back without failing it (a worker shutting down after a checkpoint): it is pending
/// again and resumes from its last uploaded checkpoint; the attempt does not count against it.
#[utoipa::path(post, path = "/api/jobs/{id}/release", tag = "worker protocol", params(("id" = i64, Path)),
    request_body = ReleaseRequest, responses((status = 200, body = JobChange), (status = 409)), security(("bearer" = [])))]
async fn release(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    AppJson(req): AppJson<ReleaseRequest>,
) -> ApiResult<Json<JobChange>> {
    let reason = req
        .reason
        .as_deref()
        .map(|r| truncate(r, 2000))
        .unwrap_or("released by its worker");
    let change = state
        .store
        .release(id, req.attempt, reason, state.clock.now_ms())
        .await?;
    state.job_changed(change.clone()).await;
    Ok(Json(change))
}

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200)))]
async fn healthz() -> &'static str {
    "ok"
}

/// Prometheus text: jobs by status, claims, lease expiries, request latency.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
async fn prometheus(State(state): State<AppState>) -> ApiResult<Response> {
    let counts = state.store.job_counts().await?;
    let body = state.telemetry.render(&counts);
    Ok((
        [(header::CONTENT_TYPE, crate::telemetry::CONTENT_TYPE)],
        body,
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/openapi.json", tag = "operations", responses((status = 200, description = "this document")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// At most `max` bytes of `s`, cut at a character boundary (errors carry stderr tails of any size).
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
