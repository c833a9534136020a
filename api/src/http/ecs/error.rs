//! ECS errors in the JSON 1.1 shape botocore parses: `{"__type": "<Code>", "message": "…"}`
//! with the HTTP status AWS uses.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::sigv4::AuthError;
use crate::service::ServiceError;

/// The content type of every ECS request and answer.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// An ECS error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl EcsError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// A parameter the caller sent is wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameterException",
            message,
        )
    }

    /// A request that cannot be done as asked (unknown task definition, …).
    pub fn client(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ClientException", message)
    }

    pub fn cluster_not_found() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "ClusterNotFoundException",
            "Cluster not found.",
        )
    }

    pub fn access_denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "AccessDeniedException", message)
    }

    pub fn server(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServerException",
            message,
        )
    }

    /// An ECS action Skiff does not implement.
    pub fn unsupported_action(action: &str, supported: &[&str]) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "UnsupportedFeatureException",
            format!(
                "Skiff does not support the ECS action {action} (it answers {})",
                supported.join(", ")
            ),
        )
    }

    /// A target that is no ECS action at all.
    pub fn unknown_operation(target: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("unknown operation {target:?}: X-Amz-Target must be AmazonEC2ContainerServiceV20141113.<Action>"),
        )
    }

    /// A body that is not a JSON object, or a wrong content type.
    pub fn serialization(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "SerializationException", message)
    }
}

impl From<AuthError> for EcsError {
    fn from(e: AuthError) -> Self {
        let message = e.to_string();
        match e {
            AuthError::Missing => Self::new(
                StatusCode::FORBIDDEN,
                "MissingAuthenticationTokenException",
                message,
            ),
            AuthError::Incomplete(_) => Self::new(
                StatusCode::BAD_REQUEST,
                "IncompleteSignatureException",
                message,
            ),
            AuthError::UnknownKey => Self::new(
                StatusCode::BAD_REQUEST,
                "UnrecognizedClientException",
                message,
            ),
            AuthError::Invalid(_) => {
                Self::new(StatusCode::FORBIDDEN, "InvalidSignatureException", message)
            }
        }
    }
}

impl From<ServiceError> for EcsError {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::Invalid(_) => Self::invalid(message),
            ServiceError::NotFound(_)
            | ServiceError::Refused(_)
            | ServiceError::Unprocessable(_)
            | ServiceError::Conflict(_) => Self::client(message),
            ServiceError::State(_) | ServiceError::Executor(_) => Self::server(message),
        }
    }
}

impl IntoResponse for EcsError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "__type": self.code, "message": self.message });
        let mut response = (self.status, body.to_string()).into_response();
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static(CONTENT_TYPE));
        response
    }
}
