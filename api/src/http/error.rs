//! The `/v1` API's one error shape: `{"code": ..., "message": ...}` (and `reason` for capacity
//! refusals, as ECS names them), with the HTTP status that goes with it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::service::ServiceError;
use crate::state::Refusal;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub reason: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            reason: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidParameter", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "ServerError", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            code: self.code,
            message: &self.message,
            reason: self.reason,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::Invalid(_) => Self::bad_request(message),
            ServiceError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "NotFound", message),
            ServiceError::Refused(Refusal::Capacity { resource, .. }) => Self {
                reason: Some(resource),
                ..Self::new(StatusCode::CONFLICT, "CapacityExceeded", message)
            },
            ServiceError::Refused(Refusal::Quota { .. }) => {
                Self::new(StatusCode::CONFLICT, "QuotaExceeded", message)
            }
            ServiceError::Refused(Refusal::ClientTokenUsed) => {
                Self::new(StatusCode::CONFLICT, "Conflict", message)
            }
            ServiceError::Refused(Refusal::Uids) => {
                Self::new(StatusCode::CONFLICT, "CapacityExceeded", message)
            }
            ServiceError::Conflict(_) => Self::new(StatusCode::CONFLICT, "Conflict", message),
            ServiceError::Unprocessable(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "UnprocessableEntity",
                message,
            ),
            ServiceError::State(_) | ServiceError::Executor(_) => Self::internal(message),
        }
    }
}
