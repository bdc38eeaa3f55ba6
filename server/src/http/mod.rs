//! The HTTP boundary: the router, the OpenAPI document, and one module per resource (sweeps, the
//! worker protocol's jobs, logs, checkpoints, the dashboard's views, events), with auth and the one
//! error type.
pub mod analysis;
pub mod artifacts;
pub mod asks;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod jobs;
pub mod logs;
pub mod sweeps;
pub mod workers;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::time::Instant;
use utoipa::OpenApi;

use crate::state::AppState;
use error::ApiError;
use protocol::views::{JobDetail, SweepDetail, SweepRow};
use protocol::{
    Capacity, Claim, ClaimRequest, FinishRequest, HeartbeatReply, HeartbeatRequest, JobChange,
    JobStatus, MetricsReply, MetricsReport, Outcome, ReleaseRequest,
};

pub(crate) type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "sweep coordinator", description = "Hyperparameter sweeps of the study's CIFAR-10 trainer: sweeps, jobs under leases, metrics, results."),
    paths(sweeps::submit_sweep, sweeps::list_sweeps, sweeps::get_sweep, sweeps::cancel_sweep, jobs::get_job, sweeps::results, sweeps::figure,
          asks::ask, asks::tell, jobs::claim, jobs::unfinished, jobs::pending_shapes, jobs::heartbeat, jobs::report_metrics, jobs::finish, jobs::release,
          dashboard::jobs_page, dashboard::grid, dashboard::curves, analysis::shape, analysis::importance, analysis::slice, analysis::contour, analysis::runs, analysis::pareto, analysis::schedule, analysis::population, analysis::compare,
          artifacts::upload, artifacts::download, logs::append, logs::read,
          events::stream, healthz, prometheus, openapi, auth::create_session, auth::end_session,
          workers::add, workers::list, workers::revoke, workers::enroll),
    components(schemas(crate::sweep::SweepFile, protocol::AskRequest, protocol::TellRequest, protocol::TellState, SweepRow, SweepDetail, JobDetail, Claim, Capacity, ClaimRequest, HeartbeatRequest,
                       HeartbeatReply, MetricsReport, MetricsReply, FinishRequest, ReleaseRequest, JobChange, JobStatus, protocol::SweepStatus, Outcome, protocol::views::Created, protocol::views::JobRow,
                        protocol::views::AttemptRow, protocol::views::Segment, protocol::views::ScheduleView, protocol::views::ScheduleStep, protocol::views::PopulationView, protocol::views::PopulationMember, protocol::views::PopulationSegment, protocol::views::JobPage, auth::SessionRequest, protocol::views::GridCell, protocol::views::Series, protocol::views::Unfinished,
                        protocol::Rendezvous, protocol::GangPart, protocol::GangState, protocol::views::GangMember, protocol::PendingShape,
                        protocol::credentials::NewCredential, protocol::credentials::EnrollmentLimits, protocol::credentials::EnrollRequest,
                        protocol::credentials::IssuedCredential, protocol::credentials::CredentialKind, protocol::credentials::CredentialRow,
                        protocol::credentials::Revoked, protocol::views::Importance, protocol::views::ParetoView, protocol::views::ParetoTrial, protocol::views::ObjectiveView, protocol::views::LeftOut, protocol::views::BestTrial, protocol::views::DryRun,
                        protocol::views::SweepShape, protocol::views::Axis, protocol::views::MetricInfo, protocol::views::Point, protocol::views::Slice, protocol::views::Contour, protocol::views::Compared, protocol::views::Comparison, protocol::views::RunLine, protocol::views::Runs)),
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
        // The API's own version, not the crate's: what a client checks itself against.
        openapi.info.version = protocol::API_VERSION.to_string();
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
            axum::routing::put(artifacts::upload)
                .get(artifacts::download)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/api/events", get(events::stream));
    let logs = Router::new().route(
        "/api/jobs/{id}/log",
        post(logs::append)
            .get(logs::read)
            .layer(axum::extract::DefaultBodyLimit::max(
                crate::store::logs::MAX_CHUNK,
            )),
    );
    Router::new()
        .route(
            "/api/sweeps",
            post(sweeps::submit_sweep)
                .get(sweeps::list_sweeps)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/api/sweeps/{id}", get(sweeps::get_sweep))
        .route("/api/sweeps/{id}/cancel", post(sweeps::cancel_sweep))
        .route("/api/sweeps/{id}/ask", post(asks::ask))
        .route("/api/sweeps/{id}/tell", post(asks::tell))
        .route("/api/sweeps/{id}/results", get(sweeps::results))
        .route("/api/sweeps/{id}/figures/{file}", get(sweeps::figure))
        .route("/api/sweeps/{id}/jobs", get(dashboard::jobs_page))
        .route("/api/sweeps/{id}/grid", get(dashboard::grid))
        .route("/api/sweeps/{id}/curves", get(dashboard::curves))
        .route("/api/sweeps/{id}/shape", get(analysis::shape))
        .route("/api/sweeps/{id}/importance", get(analysis::importance))
        .route("/api/sweeps/{id}/slice", get(analysis::slice))
        .route("/api/sweeps/{id}/contour", get(analysis::contour))
        .route("/api/sweeps/{id}/runs", get(analysis::runs))
        .route("/api/sweeps/{id}/pareto", get(analysis::pareto))
        .route("/api/sweeps/{id}/schedule", get(analysis::schedule))
        .route("/api/sweeps/{id}/population", get(analysis::population))
        .route("/api/compare", get(analysis::compare))
        .route("/", get(dashboard::index))
        .route("/app.js", get(dashboard::app_js))
        .route("/analysis.js", get(dashboard::analysis_js))
        .route("/style.css", get(dashboard::style))
        .route("/docs", get(dashboard::docs))
        .route("/docs/rapidoc-min.js", get(dashboard::rapidoc))
        .route("/api/jobs/claim", post(jobs::claim))
        .route("/api/jobs/unfinished", get(jobs::unfinished))
        .route(protocol::routes::PENDING_SHAPES, get(jobs::pending_shapes))
        .route("/api/jobs/{id}", get(jobs::get_job))
        .route("/api/jobs/{id}/heartbeat", post(jobs::heartbeat))
        .route("/api/jobs/{id}/metrics", post(jobs::report_metrics))
        .route("/api/jobs/{id}/finish", post(jobs::finish))
        .route("/api/jobs/{id}/release", post(jobs::release))
        .route(
            protocol::routes::WORKERS,
            post(workers::add).get(workers::list),
        )
        .route(protocol::routes::ENROLL, post(workers::enroll))
        .route("/api/workers/{name}/revoke", post(workers::revoke))
        .route("/api/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/metrics", get(prometheus))
        .route(
            "/api/session",
            post(auth::create_session).delete(auth::end_session),
        )
        .merge(logs)
        .fallback(no_such_route)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .merge(streaming)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            bound_reads,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard_host_and_headers,
        ))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe_latency,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// How long an anonymous or dashboard read may wait for its turn, and then take.
const READ_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
const READ_TIME: std::time::Duration = std::time::Duration::from_secs(15);

/// Reads that anyone may make (anonymous, or a dashboard session) run at most half the cores at
/// once (`AppState::read_permits`; 503 when none frees within a second) and answer within 15 s
/// (503 past it). They use the users' read pool; the worker protocol's writes read through a pool
/// of their own and write through the writer, so no number of such reads holds a worker up.
async fn bound_reads(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let anyone = matches!(
        req.extensions().get::<auth::Access>(),
        None | Some(
            auth::Access::Anonymous | auth::Access::Session | auth::Access::RefusedSharedToken
        )
    );
    let path = req.uri().path();
    let bounded = anyone && path.starts_with("/api/") && path != "/api/events";
    if !bounded {
        return next.run(req).await;
    }
    let permit = tokio::time::timeout(READ_WAIT, state.read_permits.clone().acquire_owned()).await;
    let Ok(Ok(_permit)) = permit else {
        state.telemetry.reads_refused.inc();
        return ApiError::Unavailable("too many reads at once; retry in a moment".into())
            .into_response();
    };
    match tokio::time::timeout(READ_TIME, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            state.telemetry.reads_refused.inc();
            ApiError::Unavailable(format!(
                "the read took longer than {} s; narrow it (a page, a filter) or retry",
                READ_TIME.as_secs()
            ))
            .into_response()
        }
    }
}

/// Every error a client gets is JSON with an `error` field, also those no handler of ours wrote
/// (axum's 405 and its extractors' rejections, the timeout's 408): their text, or the status's
/// reason when they have none, with the method and path of a 405.
async fn json_errors(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    // Such bodies are a line of text; more is not an error message.
    let text = axum::body::to_bytes(body, 16 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    let error = match (status, text.is_empty()) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            format!("{reason}: {method} {path} (the API's routes are in /api/openapi.json)")
        }
        (_, true) => reason,
        (_, false) => text,
    };
    let mut res = (status, Json(serde_json::json!({ "error": error }))).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            res.headers_mut().append(name.clone(), value.clone());
        }
    }
    res
}

async fn observe_latency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let res = next.run(req).await;
    state.telemetry.observe(t0.elapsed().as_secs_f64());
    res
}

/// Every error is JSON, a path that names nothing included (a client reading `error` finds it).
async fn no_such_route(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no such route: {} {} (the API's routes are in /api/openapi.json)",
        req.method(),
        req.uri().path()
    ))
}

/// `ok`, with the API's version in `x-api-version`; asked for JSON (`Accept: application/json`),
/// `{"status": "ok", "api_version": ...}` (a client checks it against its own before anything else).
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200)))]
async fn healthz(headers: axum::http::HeaderMap) -> Response {
    let version = [(protocol::API_VERSION_HEADER, protocol::API_VERSION)];
    let json = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    match json {
        true => (
            version,
            Json(serde_json::json!({"status": "ok", "api_version": protocol::API_VERSION})),
        )
            .into_response(),
        false => (version, "ok").into_response(),
    }
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
