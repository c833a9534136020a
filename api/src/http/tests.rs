//! The `/v1` front end in process (the service on a fake executor): the OpenAPI document against
//! the real routes, auth and tenants, bad input without state change, capacity refusals.

use std::collections::{BTreeSet, HashMap};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::config::token_hash;
use crate::service::tests::{settings, Fake};
use crate::state::sqlite::SqliteStore;

fn app() -> Router {
    let service = Service::new(
        Box::new(SqliteStore::in_memory().unwrap()),
        Fake::default(),
        settings(),
    );
    let mut tenants = HashMap::new();
    tenants.insert(token_hash("token-a"), Tenant::unlimited("a"));
    tenants.insert(token_hash("token-b"), Tenant::unlimited("b"));
    router(App {
        service,
        auth: Auth {
            tenants,
            open: false,
        },
        ecs: None,
    })
}

async fn call(
    app: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(body.map_or_else(Body::empty, Body::from)).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn body(v: Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(&v).unwrap())
}

fn definition() -> Value {
    json!({"family": "echo", "cpu": 256, "memory": 512,
           "containerDefinitions": [{"name": "app", "image": "busybox:latest", "command": ["echo", "hi"]}]})
}

#[test]
fn the_openapi_document_lists_exactly_the_routes() {
    let doc: serde_yaml::Value = serde_yaml::from_str(OPENAPI).unwrap();
    let documented: BTreeSet<String> = doc["paths"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    // The routes as v1.rs declares them (`{*name}` is documented as `{name}`).
    let source = include_str!("v1.rs");
    let routed: BTreeSet<String> = source
        .split(".route(")
        .skip(1)
        .map(|rest| {
            rest.trim_start()
                .trim_start_matches('"')
                .split('"')
                .next()
                .unwrap()
                .replace("{*", "{")
        })
        .collect();
    assert_eq!(documented, routed);
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let app = app();
    let doc: serde_yaml::Value = serde_yaml::from_str(OPENAPI).unwrap();
    for (path, ops) in doc["paths"].as_mapping().unwrap() {
        let path = path
            .as_str()
            .unwrap()
            .replace("{reference}", "echo")
            .replace("{id}", "0123")
            .replace("{name}", "x:1");
        for method in ops.as_mapping().unwrap().keys().filter_map(|m| m.as_str()) {
            if method == "parameters" {
                continue;
            }
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, answer) = call(&app, m, &path, Some("token-a"), None).await;
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(
                answer["message"] != "no such route",
                "{method} {path} is not routed"
            );
        }
    }
}

#[tokio::test]
async fn tokens_map_to_tenants_and_tenants_are_apart() {
    let app = app();
    assert_eq!(
        call(&app, Method::GET, "/v1/health", None, None).await.0,
        StatusCode::OK
    );
    let (status, err) = call(&app, Method::GET, "/v1/tasks", None, None).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("Unauthorized"))
    );
    assert_eq!(
        call(&app, Method::GET, "/v1/tasks", Some("wrong"), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    let (status, def) = call(
        &app,
        Method::POST,
        "/v1/task-definitions",
        Some("token-a"),
        body(definition()),
    )
    .await;
    assert_eq!(
        (status, def["revision"].as_u64()),
        (StatusCode::CREATED, Some(1))
    );
    let (status, run) = call(
        &app,
        Method::POST,
        "/v1/tasks",
        Some("token-a"),
        body(json!({"taskDefinition": "echo"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let id = run["tasks"][0]["taskId"].as_str().unwrap().to_owned();
    assert!(
        run["tasks"][0].get("tenant").is_none(),
        "the tenant is not shown"
    );

    for (method, path) in [
        (Method::GET, format!("/v1/tasks/{id}")),
        (Method::POST, format!("/v1/tasks/{id}/stop")),
        (Method::GET, format!("/v1/tasks/{id}/logs")),
        (Method::GET, format!("/v1/tasks/{id}/events")),
        (Method::GET, "/v1/task-definitions/echo".to_owned()),
    ] {
        let (status, _) = call(&app, method.clone(), &path, Some("token-b"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "tenant b: {method} {path}");
    }
    let (_, list) = call(&app, Method::GET, "/v1/tasks", Some("token-b"), None).await;
    assert_eq!(list["tasks"], json!([]));
    let (status, task) = call(
        &app,
        Method::GET,
        &format!("/v1/tasks/{id}"),
        Some("token-a"),
        None,
    )
    .await;
    assert_eq!(
        (status, task["taskId"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let app = app();
    let a = Some("token-a");
    let cases: Vec<(Option<Vec<u8>>, StatusCode, &str)> = vec![
        (
            Some(b"{not json".to_vec()),
            StatusCode::BAD_REQUEST,
            "not valid",
        ),
        (
            body(json!({"family": "x", "containerDefinitions": [], "bogus": 1})),
            StatusCode::BAD_REQUEST,
            "unknown field `bogus`",
        ),
        (
            body(json!({"family": 7, "containerDefinitions": []})),
            StatusCode::BAD_REQUEST,
            "invalid type",
        ),
        (
            body(
                json!({"family": "x", "cpu": 256, "memory": 4096, "containerDefinitions": [{"name": "a", "image": "b"}]}),
            ),
            StatusCode::BAD_REQUEST,
            "memory",
        ),
        (
            Some(vec![b' '; 10 << 20]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
    ];
    for (b, want, text) in cases {
        let (status, err) = call(&app, Method::POST, "/v1/task-definitions", a, b).await;
        assert_eq!(status, want, "{err}");
        assert!(err["message"].as_str().unwrap().contains(text), "{err}");
        assert!(err["code"].is_string());
    }
    let (_, list) = call(
        &app,
        Method::GET,
        "/v1/task-definitions?status=ALL",
        a,
        None,
    )
    .await;
    assert_eq!(list["taskDefinitions"], json!([]), "nothing was stored");
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/tasks",
        a,
        body(json!({"taskDefinition": "nope"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&app, Method::GET, "/v1/tasks?desiredStatus=MAYBE", a, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&app, Method::GET, "/v1/tasks?colour=red", a, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, tasks) = call(&app, Method::GET, "/v1/tasks", a, None).await;
    assert_eq!(tasks["tasks"], json!([]));
}

#[tokio::test]
async fn over_capacity_is_409_with_the_resource() {
    let app = app();
    let a = Some("token-a");
    call(
        &app,
        Method::POST,
        "/v1/task-definitions",
        a,
        body(definition()),
    )
    .await;
    for _ in 0..10 {
        let (status, _) = call(
            &app,
            Method::POST,
            "/v1/tasks",
            a,
            body(json!({"taskDefinition": "echo:1"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, err) = call(
        &app,
        Method::POST,
        "/v1/tasks",
        a,
        body(json!({"taskDefinition": "echo:1"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["reason"], "RESOURCE:CPU");
    let (_, cap) = call(&app, Method::GET, "/v1/capacity", a, None).await;
    assert_eq!(
        (cap["used"]["cpu"].as_u64(), cap["free"]["cpu"].as_u64()),
        (Some(2560), Some(0))
    );
}
