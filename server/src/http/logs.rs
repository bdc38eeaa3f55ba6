//! `POST /api/jobs/{id}/log?attempt=N&offset=K`: a worker appends a chunk of an attempt's output
//! (fenced like every worker write; a retried chunk is stored once). `GET` reads it back as plain
//! text from any offset, so a reader resumes where it stopped (`server logs --follow`, the
//! dashboard's job page on each `log` event).
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use protocol::{log_headers, LogPosition};

use crate::http::error::ApiError;
use crate::state::AppState;

/// Most bytes one read returns (a client reads on from `x-log-next`).
pub const MAX_READ: usize = 1 << 20;

/// Append a chunk of the attempt's output at `offset` (raw bytes, at most 256 KiB: the route's body
/// limit answers 413 to more before it is read). An offset past the log's end is refused (422)
/// unless `gap` declares the bytes between as dropped by the worker; `x-log-stored` says how many
/// of the chunk's bytes were new (0 for a retry), `x-log-next` where the log ends.
#[utoipa::path(post, path = "/api/jobs/{id}/log", tag = "worker protocol", params(("id" = i64, Path), LogPosition),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204), (status = 403), (status = 409), (status = 413), (status = 422)), security(("bearer" = [])))]
pub async fn append(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(at): Query<LogPosition>,
    super::auth::LeaseSecret(secret): super::auth::LeaseSecret,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (Some(attempt), Some(offset)) = (at.attempt, at.offset) else {
        return Err(ApiError::Unprocessable(
            "attempt and offset: both are required to append".into(),
        ));
    };
    crate::lifecycle::check_lease(&state, id, attempt, secret.as_deref()).await?;
    check_offset(offset)?;
    let gap = at.gap.unwrap_or(0);
    if gap < 0 || gap > offset {
        return Err(ApiError::Unprocessable(
            "gap: the bytes dropped before offset, from 0 to offset".into(),
        ));
    }
    let at = crate::lifecycle::LogAt {
        attempt,
        offset,
        gap,
    };
    let done = crate::lifecycle::append_log(&state, id, at, body.to_vec())
        .await
        .map_err(|e| match e {
            crate::lifecycle::LogError::Full(why) => ApiError::QuotaFull(why),
            crate::lifecycle::LogError::Store(e) => e.into(),
        })?;
    Ok((
        axum::http::StatusCode::NO_CONTENT,
        [
            (log_headers::STORED, done.stored.to_string()),
            (log_headers::NEXT, done.end.to_string()),
        ],
    )
        .into_response())
}

/// Offsets are bytes from 0; the bound keeps `offset + length` far from overflow.
fn check_offset(offset: i64) -> Result<(), ApiError> {
    match (0..=i64::MAX / 2).contains(&offset) {
        true => Ok(()),
        false => Err(ApiError::Unprocessable(
            "offset: must be a byte offset from 0".into(),
        )),
    }
}

/// The attempt's output (default: the latest attempt) from `offset`, as text: at most 1 MiB a read;
/// `x-log-offset` is where the bytes start (later than asked when older output was dropped),
/// `x-log-next` where to read on from.
#[utoipa::path(get, path = "/api/jobs/{id}/log", tag = "jobs", params(("id" = i64, Path), LogPosition),
    responses((status = 200, content_type = "text/plain"), (status = 404)))]
pub async fn read(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(at): Query<LogPosition>,
) -> Result<Response, ApiError> {
    let offset = at.offset.unwrap_or(0);
    check_offset(offset)?;
    let log = state
        .store
        .read_log(id, at.attempt, offset, MAX_READ)
        .await?;
    let mut res = String::from_utf8_lossy(&log.data)
        .into_owned()
        .into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in [
        (log_headers::OFFSET, log.offset),
        (log_headers::NEXT, log.next),
        (log_headers::ATTEMPT, log.attempt),
    ] {
        h.insert(name, HeaderValue::from(value));
    }
    Ok(res)
}
