//! The dashboard: the files of `dashboards/` compiled into the binary (it works offline, with no
//! CDN), and the read-only views it needs at scale: a page of jobs, the batch x lr grid, and
//! downsampled curves, so a 10,000-job x 300-epoch sweep never ships whole to the browser.
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::http::error::ApiError;
use crate::state::AppState;
use protocol::views::{GridCell, JobPage, JobQuery, Series};

const INDEX: &str = include_str!("../../../dashboards/index.html");
const APP_JS: &str = include_str!("../../../dashboards/app.js");
const ANALYSIS_JS: &str = include_str!("../../../dashboards/analysis.js");
const STYLE: &str = include_str!("../../../dashboards/style.css");
/// The API explorer at `/docs`: RapiDoc, vendored gzip-compressed (dashboards/README.md).
const DOCS: &str = include_str!("../../../dashboards/docs.html");
const RAPIDOC_GZ: &[u8] = include_bytes!("../../../dashboards/vendor/rapidoc-min.js.gz");

fn asset(ctype: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ctype),
            // Assets change only with the binary; a restart must not serve a stale page.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// The analysis views' drawing (slice, contour, runs, compare), loaded before `app.js`.
pub async fn analysis_js() -> Response {
    asset("text/javascript; charset=utf-8", ANALYSIS_JS)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

pub async fn docs() -> Response {
    asset("text/html; charset=utf-8", DOCS)
}

/// RapiDoc's script as stored (gzip) to a client that accepts it, every browser does; else
/// decompressed once and kept.
pub async fn rapidoc(headers: axum::http::HeaderMap) -> Response {
    static PLAIN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let js = "text/javascript; charset=utf-8";
    if gzip {
        let h = [
            (header::CONTENT_TYPE, js),
            (header::CONTENT_ENCODING, "gzip"),
            (header::VARY, "accept-encoding"),
            (header::CACHE_CONTROL, "no-cache"),
        ];
        return (h, RAPIDOC_GZ).into_response();
    }
    let plain = PLAIN.get_or_init(|| {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(RAPIDOC_GZ), &mut out)
            .expect("the vendored script is valid gzip (a test reads it)");
        out
    });
    let h = [
        (header::CONTENT_TYPE, js),
        (header::VARY, "accept-encoding"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (h, plain.as_slice()).into_response()
}

/// A page of a sweep's jobs, filtered and sorted.
#[utoipa::path(get, path = "/api/sweeps/{id}/jobs", tag = "dashboard", params(("id" = i64, Path), JobQuery),
    responses((status = 200, body = JobPage), (status = 404)))]
pub async fn jobs_page(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<JobQuery>,
) -> Result<Json<JobPage>, ApiError> {
    if q.q
        .as_ref()
        .is_some_and(|t| t.len() > protocol::views::MAX_QUERY_TEXT)
    {
        return Err(ApiError::Unprocessable(format!(
            "q: at most {} bytes of text to look for",
            protocol::views::MAX_QUERY_TEXT
        )));
    }
    let named = q.sort.as_deref().and_then(|s| {
        s.strip_prefix("param:")
            .or_else(|| s.strip_prefix("metric:"))
    });
    if let Some(name) = named.filter(|n| !protocol::is_metric_name(n)) {
        return Err(ApiError::Unprocessable(format!(
            "sort: {name:?} is not a name to sort by (letters, digits and _.-/, at most 64)"
        )));
    }
    Ok(Json(state.store.jobs_page(id, &q).await?))
}

/// The batch size x lr grid with each cell's best final (or latest) accuracy.
#[utoipa::path(get, path = "/api/sweeps/{id}/grid", tag = "dashboard", params(("id" = i64, Path)),
    responses((status = 200, body = Vec<GridCell>), (status = 404)))]
pub async fn grid(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Vec<GridCell>>, ApiError> {
    state.store.sweep_exists(id).await?;
    Ok(Json(state.store.grid(id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CurvesQuery {
    /// The lr whose runs to draw (default 1e-2).
    #[param(exclusive_minimum = 0)]
    pub lr: Option<f64>,
    /// About how many epochs per line (default 150; clamped to 2..=2000).
    pub points: Option<i64>,
}

/// Learning curves at one lr, one line per batch size, downsampled.
#[utoipa::path(get, path = "/api/sweeps/{id}/curves", tag = "dashboard", params(("id" = i64, Path), CurvesQuery),
    responses((status = 200, body = Vec<Series>), (status = 404)))]
pub async fn curves(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<CurvesQuery>,
) -> Result<Json<Vec<Series>>, ApiError> {
    state.store.sweep_exists(id).await?;
    let lr = q.lr.unwrap_or(crate::sweep::DEFAULT_LR);
    if !(lr.is_finite() && lr > 0.0) {
        return Err(ApiError::Unprocessable(format!(
            "lr: must be a positive number, got {lr}"
        )));
    }
    let points = q.points.unwrap_or(150).clamp(2, 2000);
    Ok(Json(state.store.curves(id, lr, points).await?))
}
