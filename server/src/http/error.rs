//! The one error type of the HTTP boundary, turned into a response in one place. Database errors are
//! logged here once and reach clients only as "internal error".
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// 401 with the reason (a revoked credential, a refused shared token).
    #[error("{0}")]
    UnauthorizedBecause(String),
    /// A valid token without the right (the worker token outside the worker protocol).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// What was asked for is over for good (an external sweep with no trial left to ask).
    #[error("{0}")]
    Gone(String),
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// A global quota is full (413: a worker drops the write and goes on, rather than retrying).
    #[error("{0}")]
    QuotaFull(String),
    /// Nothing was stored (the database could not take the write); the client may retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            StoreError::Conflict(why) => ApiError::Conflict(why),
            StoreError::Forbidden(why) => ApiError::Forbidden(why),
            StoreError::Invalid(why) => ApiError::Unprocessable(why),
            StoreError::NotCommitted => ApiError::Unavailable(
                "the database could not take the write (busy or locked); nothing was stored: retry"
                    .into(),
            ),
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<crate::sweep::ParseError> for ApiError {
    fn from(e: crate::sweep::ParseError) -> Self {
        match e {
            crate::sweep::ParseError::Syntax { .. } => ApiError::BadRequest(e.to_string()),
            crate::sweep::ParseError::Invalid(e) => ApiError::Unprocessable(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized | ApiError::UnauthorizedBecause(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::TooLarge(_) | ApiError::QuotaFull(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(cause) => {
                tracing::error!(error = ?cause, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

/// `Json<T>` whose rejections are JSON errors too (400 for unreadable bodies, 422 for wrong fields).
#[derive(Debug)]
pub struct AppJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for AppJson<T>
where
    axum::Json<T>:
        axum::extract::FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(AppJson(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Unprocessable(e.body_text())),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}
