//! The `/v1` routes and their JSON shapes.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{blocking, ApiError, App, Caller, MAX_BODY, OPENAPI};
use crate::executor::{Executor, ImageInfo};
use crate::service::model::{
    DefinitionStatus, DesiredStatus, StopCode, Task, TaskDefinition, TaskEvent, TaskStatus,
};
use crate::service::validate::TaskDefinitionInput;
use crate::service::{Capacity, RunTaskInput};
use crate::state::{DefinitionFilter, Page, TaskFilter};

pub fn routes<E: Executor>() -> Router<App<E>> {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.yaml", get(openapi))
        .route(
            "/v1/task-definitions",
            post(register_task_definition::<E>).get(list_task_definitions::<E>),
        )
        .route(
            "/v1/task-definitions/{reference}",
            get(describe_task_definition::<E>).delete(deregister_task_definition::<E>),
        )
        .route("/v1/tasks", post(run_task::<E>).get(list_tasks::<E>))
        .route("/v1/tasks/{id}", get(describe_task::<E>))
        .route("/v1/tasks/{id}/stop", post(stop_task::<E>))
        .route("/v1/tasks/{id}/events", get(task_events::<E>))
        .route("/v1/tasks/{id}/wait", get(wait_task::<E>))
        .route("/v1/tasks/{id}/logs", get(super::logs::task_logs::<E>))
        .route("/v1/capacity", get(capacity::<E>))
        .route("/v1/images", get(list_images::<E>))
        .route("/v1/images/pull", post(pull_image::<E>))
        .route(
            "/v1/images/{*name}",
            axum::routing::delete(remove_image::<E>),
        )
        .fallback(not_found)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such route")
}

/// A JSON body: at most [`MAX_BODY`] bytes, JSON content (when a type is named), every field
/// known and of its type.
pub(crate) fn json_body<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                format!("the request body is larger than {MAX_BODY} bytes"),
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        }
    })?;
    if let Some(kind) = headers.get(axum::http::header::CONTENT_TYPE) {
        let kind = kind.to_str().unwrap_or("");
        if !kind.starts_with("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("Content-Type {kind:?}: send application/json"),
            ));
        }
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))
}

/// `maxResults` and `nextToken`.
fn page(max_results: Option<usize>, next_token: Option<String>) -> Result<Page, ApiError> {
    if let Some(t) = &next_token {
        let ok = (1..=600).contains(&t.len())
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_:".contains(c));
        if !ok {
            return Err(ApiError::bad_request(
                "nextToken: not a token this API gave",
            ));
        }
    }
    match max_results {
        Some(n) if !(1..=100).contains(&n) => {
            Err(ApiError::bad_request("maxResults: must be 1-100"))
        }
        n => Ok(Page {
            after: next_token,
            limit: n.unwrap_or(100),
        }),
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/yaml")],
        OPENAPI,
    )
        .into_response()
}

async fn register_task_definition<E: Executor>(
    State(app): State<App<E>>,
    Caller(tenant): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<TaskDefinition>), ApiError> {
    let input: TaskDefinitionInput = json_body(&headers, body)?;
    let def = blocking(move || app.service.register_task_definition(&tenant, input)).await?;
    Ok((StatusCode::CREATED, Json(def)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DefinitionQuery {
    family: Option<String>,
    /// ACTIVE (default), INACTIVE or ALL.
    status: Option<String>,
    max_results: Option<usize>,
    next_token: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DefinitionList {
    task_definitions: Vec<TaskDefinition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

async fn list_task_definitions<E: Executor>(
    State(app): State<App<E>>,
    Caller(tenant): Caller,
    q: Result<Query<DefinitionQuery>, QueryRejection>,
) -> Result<Json<DefinitionList>, ApiError> {
    let q = query(q)?;
    let status = match q.status.as_deref() {
        None | Some("ACTIVE") => Some(DefinitionStatus::Active),
        Some("INACTIVE") => Some(DefinitionStatus::Inactive),
        Some("ALL") => None,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "status {other:?}: ACTIVE, INACTIVE or ALL"
            )))
        }
    };
    let page = page(q.max_results, q.next_token)?;
    let filter = DefinitionFilter {
        family: q.family,
        status,
        ..Default::default()
    };
    let (defs, next) =
        blocking(move || app.service.list_task_definitions(&tenant, &filter, page)).await?;
    Ok(Json(DefinitionList {
        task_definitions: defs,
        next_token: next,
    }))
}

async fn describe_task_definition<E: Executor>(
    State(app): State<App<E>>,
    Caller(tenant): Caller,
    Path(reference): Path<String>,
) -> Result<Json<TaskDefinition>, ApiError> {
    Ok(Json(
        blocking(move || app.service.task_definition(&tenant, &reference)).await?,
    ))
}

async fn deregister_task_definition<E: Executor>(
    State(app): State<App<E>>,
    Caller(tenant): Caller,
    Path(reference): Path<String>,
) -> Result<Json<TaskDefinition>, ApiError> {
    Ok(Json(
        blocking(move || app.service.deregister_task_definition(&tenant, &reference)).await?,
    ))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TaskList {
    tasks: Vec<Task>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

async fn run_task<E: Executor>(
    State(app): State<App<E>>,
    Caller(tenant): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<TaskList>), ApiError> {
    let input: RunTaskInput = json_body(&headers, body)?;
    let service = app.service.clone();
    let tasks = blocking(move || service.run_task(&tenant, input)).await?;
    Ok((
        StatusCode::CREATED,
        Json(TaskList {
            tasks,
            next_token: None,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TaskQuery {
    family: Option<String>,
    desired_status: Option<String>,
    started_by: Option<String>,
    max_results: Option<usize>,
    next_token: Option<String>,
}

async fn list_tasks<E: Executor>(
    State(app): State<App<E>>,
    Caller(tenant): Caller,
    q: Result<Query<TaskQuery>, QueryRejection>,
) -> Result<Json<TaskList>, ApiError> {
    let q = query(q)?;
    let desired_status = q
        .desired_status
        .as_deref()
        .map(|s| {
            DesiredStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!("desiredStatus {s:?}: RUNNING or STOPPED"))
            })
        })
        .transpose()?;
    let filter = TaskFilter {
        family: q.family,
        desired_status,
        started_by: q.started_by,
    };
    let page = page(q.max_results, q.next_token)?;
    let (tasks, next_token) =
        blocking(move || app.service.list_tasks(&tenant, &filter, page)).await?;
    Ok(Json(TaskList { tasks, next_token }))
}

async fn describe_task<E: Executor>(
    State(app): State<App<E>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(
        blocking(move || app.service.task(&tenant, &id)).await?,
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StopInput {
    reason: Option<String>,
}

async fn stop_task<E: Executor>(
    State(app): State<App<E>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Task>, ApiError> {
    let input: StopInput = match &body {
        Ok(b) if b.is_empty() => StopInput::default(),
        _ => json_body(&headers, body)?,
    };
    Ok(Json(
        blocking(move || {
            app.service
                .stop_task(&tenant, &id, input.reason, StopCode::UserInitiated)
        })
        .await?,
    ))
}

#[derive(Serialize)]
struct EventList {
    events: Vec<TaskEvent>,
}

async fn task_events<E: Executor>(
    State(app): State<App<E>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Json<EventList>, ApiError> {
    let events = blocking(move || app.service.events(&tenant, &id)).await?;
    Ok(Json(EventList { events }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WaitQuery {
    /// The status to wait for (reached or passed); STOPPED by default.
    status: Option<String>,
    /// At most this long (1-300 s, 60 by default).
    timeout_seconds: Option<u64>,
}

/// Answers once the task reached `status` (or passed it), or when the timeout ends, with the
/// task as it is then.
async fn wait_task<E: Executor>(
    State(app): State<App<E>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Json<Task>, ApiError> {
    let q = query(q)?;
    let target = match q.status.as_deref() {
        None => TaskStatus::Stopped,
        Some(s) => TaskStatus::parse(s)
            .ok_or_else(|| ApiError::bad_request(format!("status {s:?} is not a task status")))?,
    };
    let timeout = std::time::Duration::from_secs(q.timeout_seconds.unwrap_or(60).clamp(1, 300));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut changes = app.service.subscribe();
    loop {
        let (service, tenant2, id2) = (app.service.clone(), tenant.clone(), id.clone());
        let task = blocking(move || service.task(&tenant2, &id2)).await?;
        if task.last_status >= target || tokio::time::Instant::now() >= deadline {
            return Ok(Json(task));
        }
        // Woken by any task's change (or a lagging channel); re-read either way.
        let _ = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + std::time::Duration::from_secs(1)),
            changes.recv(),
        )
        .await;
    }
}

async fn capacity<E: Executor>(
    State(app): State<App<E>>,
    Caller(_): Caller,
) -> Result<Json<Capacity>, ApiError> {
    Ok(Json(blocking(move || app.service.capacity()).await?))
}

#[derive(Serialize)]
struct ImageList {
    images: Vec<ImageInfo>,
}

async fn list_images<E: Executor>(
    State(app): State<App<E>>,
    Caller(tenant): Caller,
) -> Result<Json<ImageList>, ApiError> {
    let images = blocking(move || app.service.images(&tenant)).await?;
    Ok(Json(ImageList { images }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PullInput {
    image: String,
    credentials_parameter: Option<String>,
}

async fn pull_image<E: Executor>(
    State(app): State<App<E>>,
    Caller(tenant): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ImageInfo>, ApiError> {
    let input: PullInput = json_body(&headers, body)?;
    Ok(Json(
        blocking(move || {
            app.service.pull_image(
                &tenant,
                &input.image,
                input.credentials_parameter.as_deref(),
            )
        })
        .await?,
    ))
}

async fn remove_image<E: Executor>(
    State(app): State<App<E>>,
    Caller(tenant): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(move || app.service.remove_image(&tenant, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}
