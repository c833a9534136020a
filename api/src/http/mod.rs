//! The HTTP front ends: `/v1` (routes, JSON bodies and queries, bearer-token auth, errors) and
//! ECS's JSON 1.1 protocol ([`ecs`], SigV4-signed). Both thin: every handler checks its input's
//! shape and calls the service (in a blocking thread: the service's calls wait for the disk).

pub mod ecs;
pub mod error;
mod logs;
mod v1;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
pub use axum::Router;

use crate::config::{token_hash, DEFAULT_TENANT};
use crate::executor::Executor;
use crate::service::{Service, ServiceError, Tenant};
pub use error::ApiError;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// The OpenAPI 3 document of the `/v1` API.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

/// Who may call: token hashes → tenants. `open` (no tenants configured at all): every caller
/// is the default tenant (skiffd then serves its Unix socket only).
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub tenants: HashMap<String, Tenant>,
    pub open: bool,
}

/// What every handler gets.
pub struct App<E: Executor> {
    pub service: Arc<Service<E>>,
    pub auth: Auth,
    /// ECS access keys (none: no ECS front end).
    pub ecs: Option<Arc<ecs::Keys>>,
}

impl<E: Executor> Clone for App<E> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            auth: self.auth.clone(),
            ecs: self.ecs.clone(),
        }
    }
}

/// The caller's tenant, from `Authorization: Bearer <token>`.
pub struct Caller(pub Tenant);

impl<E: Executor> FromRequestParts<App<E>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App<E>) -> Result<Self, ApiError> {
        if app.auth.open {
            return Ok(Caller(Tenant::unlimited(DEFAULT_TENANT)));
        }
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", m);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing Authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header must be Bearer <token>"))?;
        app.auth
            .tenants
            .get(&token_hash(token))
            .cloned()
            .map(Caller)
            .ok_or_else(|| unauthorized("unknown token"))
    }
}

/// Runs a service call on a blocking thread.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(format!(
            "the request's work failed: {e}"
        ))),
    }
}

/// The whole `/v1` API, and ECS's `POST /` when ECS keys are configured.
pub fn router<E: Executor>(app: App<E>) -> Router {
    let mut routes = v1::routes::<E>();
    if app.ecs.is_some() {
        routes = routes.merge(ecs::routes::<E>());
    }
    routes
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

/// ECS's `POST /` alone (its own listener).
pub fn ecs_router<E: Executor>(app: App<E>) -> Router {
    ecs::routes::<E>()
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

#[cfg(test)]
mod tests;
