//! `GET /v1/tasks/{id}/logs`: the container's output as NDJSON (`{"time", "stream",
//! "message"}` per line), from `since`, and with `follow=true` streamed until the task stopped
//! and its log is read to the end.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{blocking, ApiError, App, Caller};
use crate::executor::logs::{read_since, LogEntry, LogPosition};
use crate::executor::Executor;
use crate::service::model::rfc3339;

/// Bytes read from the log per step.
const READ_STEP: usize = 1 << 20;
/// How often a follower looks for more when nothing woke it.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogQuery {
    /// RFC 3339 or seconds since the epoch: only entries from then.
    since: Option<String>,
    follow: Option<bool>,
    /// `stdout` or `stderr` only.
    stream: Option<String>,
}

fn render(entries: &[LogEntry], since: Option<i64>, stream: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if since.is_some_and(|s| e.at < s) || stream.is_some_and(|s| s != e.stream) {
            continue;
        }
        if serde_json::to_writer(&mut out, e).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

pub async fn task_logs<E: Executor>(
    State(app): State<App<E>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let since = q
        .since
        .as_deref()
        .map(|s| {
            rfc3339::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!("since {s:?}: RFC 3339 or epoch seconds"))
            })
        })
        .transpose()?;
    let stream = match q.stream.as_deref() {
        None => None,
        Some(s @ ("stdout" | "stderr")) => Some(s.to_owned()),
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "stream {s:?}: stdout or stderr"
            )))
        }
    };
    let (service, t, i) = (app.service.clone(), tenant.clone(), id.clone());
    let files = blocking(move || service.log_files(&t, &i)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let follow = q.follow.unwrap_or(false);
    let service = app.service.clone();
    tokio::spawn(async move {
        let mut pos = LogPosition::default();
        let mut changes = service.subscribe();
        let mut finishing = false;
        loop {
            let (cur, old) = (files.current.clone(), files.rotated.clone());
            let read =
                tokio::task::spawn_blocking(move || read_since(&cur, &old, pos, READ_STEP)).await;
            let Ok(Ok((entries, next))) = read else {
                return;
            };
            pos = next;
            let got = !entries.is_empty();
            if got {
                let chunk = render(&entries, since, stream.as_deref());
                if !chunk.is_empty() && tx.send(chunk).await.is_err() {
                    return; // the client went away
                }
                continue;
            }
            if !follow || finishing {
                return;
            }
            let (s, t, i) = (service.clone(), tenant.clone(), id.clone());
            let stopped =
                tokio::task::spawn_blocking(move || s.task(&t, &i).map(|t| t.is_stopped()))
                    .await
                    .map_or(true, |r| r.unwrap_or(true));
            if stopped {
                finishing = true; // one more read: what was written before it stopped
                continue;
            }
            let _ = tokio::time::timeout(FOLLOW_POLL, changes.recv()).await;
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}
