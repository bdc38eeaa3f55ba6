//! Per-worker credentials over HTTP: the admin adds, lists and revokes them; a worker holding an
//! enrollment credential mints its own. The rules live in `lifecycle` and `protocol::credentials`.
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::auth::Access;
use super::error::{ApiError, AppJson};
use super::ApiResult;
use crate::state::AppState;
use protocol::credentials::{
    is_name, name_fits, CredentialRow, EnrollRequest, IssuedCredential, NewCredential, Revoked,
    MAX_NAME,
};

fn check_name(field: &str, name: &str) -> ApiResult<()> {
    match is_name(name) {
        true => Ok(()),
        false => Err(ApiError::Unprocessable(format!(
            "{field}: 1 to {MAX_NAME} bytes of letters, digits and -._:@/, starting with a letter or digit"
        ))),
    }
}

fn check_new(req: &NewCredential) -> ApiResult<()> {
    check_name("name", &req.name)?;
    let cap = req
        .enrollment
        .map_or(req.max_in_flight, |e| e.max_in_flight);
    if cap.is_some_and(|c| !(1..=1_000_000).contains(&c)) {
        return Err(ApiError::Unprocessable(
            "max_in_flight: from 1 to 1000000 jobs (leave it out for no cap)".into(),
        ));
    }
    if let Some(e) = req.enrollment {
        if req.max_in_flight.is_some() {
            return Err(ApiError::Unprocessable(
                "max_in_flight: an enrollment credential's cap goes in enrollment.max_in_flight (for the credentials it mints)".into(),
            ));
        }
        if !(1..=1_000_000).contains(&e.uses) {
            return Err(ApiError::Unprocessable(
                "enrollment.uses: from 1 to 1000000".into(),
            ));
        }
        if !(1..=365 * 24 * 3600).contains(&e.expires_in_seconds) {
            return Err(ApiError::Unprocessable(
                "enrollment.expires_in_seconds: from 1 to 31536000 (a year)".into(),
            ));
        }
    }
    Ok(())
}

/// Add a per-worker credential (or, with `enrollment`, an enrollment credential). Its token is in
/// this answer only.
#[utoipa::path(post, path = "/api/workers", tag = "workers", request_body = NewCredential,
    responses((status = 201, body = IssuedCredential), (status = 409)), security(("bearer" = [])))]
pub(super) async fn add(
    State(state): State<AppState>,
    AppJson(req): AppJson<NewCredential>,
) -> ApiResult<(StatusCode, Json<IssuedCredential>)> {
    check_new(&req)?;
    let issued = crate::lifecycle::add_credential(&state, &req).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// Every credential (never a token), newest first, with the jobs each holds now.
#[utoipa::path(get, path = "/api/workers", tag = "workers",
    responses((status = 200, body = Vec<CredentialRow>)), security(("bearer" = [])))]
pub(super) async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<CredentialRow>>> {
    Ok(Json(state.store.list_credentials().await?))
}

/// Revoke a credential: its jobs go back to pending at once (no attempt charged) and its token is
/// refused (401) from then on. Repeating it changes nothing.
#[utoipa::path(post, path = "/api/workers/{name}/revoke", tag = "workers", params(("name" = String, Path)),
    responses((status = 200, body = Revoked)), security(("bearer" = [])))]
pub(super) async fn revoke(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Revoked>> {
    check_name("name", &name)?;
    Ok(Json(crate::lifecycle::revoke(&state, &name).await?))
}

/// Mint this worker's own credential with an enrollment credential (a Slurm array task at its
/// start), named after the enrollment credential: `ENROLLMENT-SUFFIX`.
#[utoipa::path(post, path = "/api/workers/enroll", tag = "workers", request_body = EnrollRequest,
    responses((status = 201, body = IssuedCredential), (status = 403), (status = 409)), security(("bearer" = [])))]
pub(super) async fn enroll(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    AppJson(req): AppJson<EnrollRequest>,
) -> ApiResult<(StatusCode, Json<IssuedCredential>)> {
    let Access::Enrollment(by) = access else {
        return Err(ApiError::Forbidden(
            "enrolling takes an enrollment credential (server worker add NAME --enrollment ...)"
                .into(),
        ));
    };
    let name = format!("{}-{}", by.name, req.suffix);
    check_name("suffix", &name)?;
    debug_assert!(name_fits(&by.name, &name));
    let issued = crate::lifecycle::enroll(&state, &by, &name).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}
