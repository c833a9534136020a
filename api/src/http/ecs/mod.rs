//! The Amazon ECS front end: the JSON 1.1 protocol (`POST /`, `X-Amz-Target:
//! AmazonEC2ContainerServiceV20141113.<Action>`, `Content-Type: application/x-amz-json-1.1`),
//! every request signed with AWS Signature Version 4 by a tenant's access key. Thin like `/v1`:
//! it authenticates, reads the action's fields and calls the same service.

mod actions;
pub mod error;
pub mod shapes;
pub mod sigv4;

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use super::App;
use crate::executor::Executor;
use actions::Ctx;
pub use error::EcsError;
use error::CONTENT_TYPE;
use shapes::{Arns, Fields};
pub use sigv4::{AccessKey, Keys};

/// The `X-Amz-Target` prefix of ECS's actions.
pub const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";

/// `POST /` answering ECS (when `app.ecs` has keys).
pub fn routes<E: Executor>() -> Router<App<E>> {
    Router::new().route("/", post(handle::<E>))
}

async fn handle<E: Executor>(
    State(app): State<App<E>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let result = answer(app, method, uri, headers, body).await;
    let mut response = match result {
        Ok(value) => {
            let mut r = shapes::compact(value).to_string().into_response();
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static(CONTENT_TYPE));
            r
        }
        Err(e) => e.into_response(),
    };
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-amzn-requestid", id);
    }
    response
}

async fn answer<E: Executor>(
    app: App<E>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<serde_json::Value, EcsError> {
    let Some(keys) = app.ecs.clone() else {
        return Err(EcsError::unknown_operation(
            "(this skiffd has no ECS access keys configured)",
        ));
    };
    let body = body.map_err(|e| EcsError::serialization(format!("the request body: {e}")))?;
    let key = sigv4::verify(&keys, &method, &uri, &headers, &body, SystemTime::now())?;
    let target = headers
        .get("x-amz-target")
        .and_then(|t| t.to_str().ok())
        .unwrap_or_default();
    let action = target
        .strip_prefix(TARGET_PREFIX)
        .filter(|a| !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric()))
        .ok_or_else(|| EcsError::unknown_operation(target))?
        .to_owned();
    let content_type = headers
        .get("content-type")
        .and_then(|t| t.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with(CONTENT_TYPE) {
        return Err(EcsError::serialization(format!(
            "Content-Type must be {CONTENT_TYPE}, not {content_type:?}"
        )));
    }
    let value: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| EcsError::serialization(format!("the request body is not JSON: {e}")))?
    };
    let fields = Fields::new("", value)?;
    let ctx = Ctx {
        service: app.service.clone(),
        tenant: key.tenant.clone(),
        arns: Arns {
            region: keys.region.clone(),
            account: key.account.clone(),
        },
    };
    match tokio::task::spawn_blocking(move || {
        actions::dispatch(&ctx, &action, fields)
            .unwrap_or_else(|| Err(EcsError::unsupported_action(&action, &actions::SUPPORTED)))
    })
    .await
    {
        Ok(result) => result,
        Err(e) => Err(EcsError::server(format!("the request's work failed: {e}"))),
    }
}

/// Keys for `app.ecs` (a shared handle).
pub fn keys(keys: Keys) -> Option<Arc<Keys>> {
    (!keys.keys.is_empty()).then(|| Arc::new(keys))
}

#[cfg(test)]
mod tests;
