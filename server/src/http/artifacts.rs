//! Job checkpoints (the trainer's resume state) uploaded by workers after each epoch, so a job
//! claimed again resumes on any machine. Stored as `<artifacts>/job-<id>/resume.safetensors`: the path
//! comes from the job id alone, never from the client. Uploads are fenced by attempt, streamed to a
//! temporary file of their own (two uploads never share one), size-limited, renamed into place whole,
//! and the directory is fsynced so the rename survives a power loss. A job's checkpoint is deleted
//! when the job ends (it only serves resumes), unless the coordinator runs with `--keep-checkpoints`.
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::http::auth::{Access, LeaseSecret};
use crate::http::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct UploadQuery {
    pub attempt: i64,
    /// The last epoch the checkpoint holds, when the worker knows it: population-based training
    /// keeps a member's checkpoint of its perturbation point for others to copy.
    pub epoch: Option<i64>,
}

fn job_dir(state: &AppState, job: i64) -> std::path::PathBuf {
    crate::checkpoints::job_dir(&state.artifacts, job)
}

use crate::checkpoints::FILE;

/// Upload the job's latest checkpoint (raw bytes).
#[utoipa::path(put, path = "/api/jobs/{id}/checkpoint", tag = "worker protocol", params(("id" = i64, Path), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200), (status = 403), (status = 409), (status = 413)), security(("bearer" = [])))]
pub async fn upload(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<UploadQuery>,
    LeaseSecret(secret): LeaseSecret,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    crate::lifecycle::check_lease(&state, id, q.attempt, secret.as_deref()).await?;
    crate::lifecycle::check_holds(&state, id, q.attempt).await?;
    // The global quota from the cheapest signal first: the declared length, before any byte.
    let old = crate::checkpoints::size_of(&state, id).await;
    let declared = content_length(&headers).unwrap_or(0);
    crate::checkpoints::room_for(&state, declared, old).map_err(ApiError::QuotaFull)?;
    let dir = job_dir(&state, id);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let unique: u64 = rand::random();
    let tmp = dir.join(format!(".{FILE}.{}.{unique:016x}.partial", q.attempt));
    let result = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        let mut stream = body.into_data_stream();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadRequest(format!("upload broke off: {e}")))?;
            size += chunk.len() as u64;
            if size > state.max_checkpoint_bytes {
                return Err(ApiError::TooLarge(state.max_checkpoint_bytes as usize));
            }
            if size > declared {
                crate::checkpoints::room_for(&state, size, old).map_err(ApiError::QuotaFull)?;
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| ApiError::Internal(e.into()))?;
        }
        file.sync_all()
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        // The attempt may have lost its lease while uploading: then the file is not kept.
        crate::lifecycle::check_holds(&state, id, q.attempt).await?;
        tokio::fs::rename(&tmp, dir.join(FILE))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        sync_dir(&dir)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        Ok(size)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    let size = result?;
    crate::checkpoints::replaced(&state, old, size);
    if let Some(epoch) = q.epoch {
        crate::checkpoints::pin_if_wanted(&state, id, epoch).await;
    }
    Ok(axum::Json(serde_json::json!({ "bytes": size })).into_response())
}

/// The job's latest checkpoint, or 404 when none was uploaded: for the holder of its lease (the
/// claim's secret in `X-Lease-Secret`) or the admin token, never anyone else.
#[utoipa::path(get, path = "/api/jobs/{id}/checkpoint", tag = "worker protocol", params(("id" = i64, Path)),
    responses((status = 200, content_type = "application/octet-stream"), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn download(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    access: Option<axum::Extension<Access>>,
    LeaseSecret(secret): LeaseSecret,
) -> Result<Response, ApiError> {
    if !state.store.job_exists(id).await? {
        return Err(ApiError::NotFound(format!("job {id} not found")));
    }
    if access.map(|a| a.0) != Some(Access::Admin) {
        crate::lifecycle::check_lease_holder(&state, id, secret.as_deref()).await?;
    }
    // An exploit's copy still owed is made first: the member resumes from its donor's weights.
    crate::checkpoints::settle_copy(&state, id).await;
    let path = job_dir(&state, id).join(FILE);
    match tokio::fs::File::open(&path).await {
        Ok(f) => {
            let stream = tokio_util::io::ReaderStream::new(f);
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/octet-stream")],
                Body::from_stream(stream),
            )
                .into_response())
        }
        Err(_) => Err(ApiError::NotFound(format!("job {id} has no checkpoint"))),
    }
}

/// Makes a rename in `dir` durable.
async fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(std::io::Error::other)?
}

/// The request's declared body length, if it says one.
fn content_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
