//! The ECS front end in process (the service on a fake executor), requests signed with
//! `aws-sigv4` as the AWS SDKs sign them: actions and their shapes, tenants apart, errors as
//! botocore reads them. (The AWS CLI and boto3 themselves drive a real skiffd in
//! `tests/tests/nested_ecs.rs`.)

use std::collections::HashMap;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::http::{router, Auth};
use crate::service::tests::{settings, Fake};
use crate::service::{Service, Tenant};
use crate::state::sqlite::SqliteStore;

const REGION: &str = "eu-west-1";

fn app() -> (Router, Fake) {
    let fake = Fake::default();
    let service = Service::new(
        Box::new(SqliteStore::in_memory().unwrap()),
        fake.clone(),
        settings(),
    );
    let mut keys = HashMap::new();
    for (id, tenant, account) in [
        ("AKIDA", "a", "111111111111"),
        ("AKIDB", "b", "222222222222"),
    ] {
        keys.insert(
            id.to_owned(),
            AccessKey {
                secret: format!("secret-{tenant}"),
                tenant: Tenant::unlimited(tenant),
                account: account.into(),
            },
        );
    }
    let app = App {
        service,
        auth: Auth::default(),
        ecs: super::keys(Keys {
            region: REGION.into(),
            keys,
        }),
    };
    (router(app), fake)
}

/// A request signed as botocore signs it.
fn signed(key: &str, secret: &str, action: &str, body: &Value, at: SystemTime) -> Request<Body> {
    let body = body.to_string();
    let target = format!("{TARGET_PREFIX}{action}");
    let headers = [
        ("content-type", CONTENT_TYPE),
        ("host", "127.0.0.1:7071"),
        ("x-amz-target", target.as_str()),
    ];
    let identity: Identity = Credentials::new(key, secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("ecs")
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        "POST",
        "http://127.0.0.1:7071/",
        headers.iter().copied(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut request = Request::builder().method("POST").uri("/");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let mut request = request.body(Body::from(body)).unwrap();
    instructions.apply_to_request_http1x(&mut request);
    request
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    assert_eq!(response.headers()["content-type"], CONTENT_TYPE);
    assert!(response.headers().contains_key("x-amzn-requestid"));
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn call(app: &Router, tenant: &str, action: &str, body: Value) -> (StatusCode, Value) {
    let key = if tenant == "a" { "AKIDA" } else { "AKIDB" };
    let request = signed(
        key,
        &format!("secret-{tenant}"),
        action,
        &body,
        SystemTime::now(),
    );
    send(app, request).await
}

async fn ok(app: &Router, tenant: &str, action: &str, body: Value) -> Value {
    let (status, value) = call(app, tenant, action, body).await;
    assert_eq!(status, StatusCode::OK, "{action}: {value}");
    value
}

async fn error(
    app: &Router,
    tenant: &str,
    action: &str,
    body: Value,
) -> (StatusCode, String, String) {
    let (status, value) = call(app, tenant, action, body).await;
    assert_ne!(status, StatusCode::OK, "{action}: {value}");
    (
        status,
        value["__type"].as_str().unwrap().to_owned(),
        value["message"].as_str().unwrap().to_owned(),
    )
}

fn definition(family: &str) -> Value {
    json!({
        "family": family,
        "requiresCompatibilities": ["FARGATE"],
        "networkMode": "awsvpc",
        "cpu": "256",
        "memory": "512",
        "executionRoleArn": "arn:aws:iam::111111111111:role/ecsTaskExecutionRole",
        "containerDefinitions": [{
            "name": "app",
            "image": "busybox:latest",
            "command": ["sh", "-c", "exit 3"],
            "essential": true,
            "portMappings": [{"containerPort": 80, "protocol": "tcp", "name": "http"}],
            "logConfiguration": {"logDriver": "awslogs", "options": {}},
            "mountPoints": [],
            "environment": [{"name": "A", "value": "1"}],
        }],
        "tags": [{"key": "team", "value": "red"}],
    })
}

#[tokio::test]
async fn task_definitions_register_describe_list_and_deregister() {
    let (app, _) = app();
    let out = ok(&app, "a", "RegisterTaskDefinition", definition("web")).await;
    let def = &out["taskDefinition"];
    assert_eq!(
        def["taskDefinitionArn"],
        "arn:aws:ecs:eu-west-1:111111111111:task-definition/web:1"
    );
    assert_eq!(def["cpu"], "256");
    assert_eq!(def["memory"], "512");
    assert_eq!(def["status"], "ACTIVE");
    assert_eq!(
        def["containerDefinitions"][0]["portMappings"][0]["containerPort"],
        80
    );
    assert!(def["registeredAt"].is_f64(), "epoch seconds: {def}");
    assert_eq!(out["tags"][0]["key"], "team");
    for family in ["web", "worker", "db"] {
        ok(&app, "a", "RegisterTaskDefinition", definition(family)).await;
    }
    let described = ok(
        &app,
        "a",
        "DescribeTaskDefinition",
        json!({"taskDefinition": "web"}),
    )
    .await;
    assert_eq!(described["taskDefinition"]["revision"], 2);
    assert!(described.get("tags").is_none(), "tags only when asked");
    let by_arn = ok(
        &app,
        "a",
        "DescribeTaskDefinition",
        json!({"taskDefinition": "arn:aws:ecs:eu-west-1:111111111111:task-definition/web:1", "include": ["TAGS"]}),
    )
    .await;
    assert_eq!(by_arn["taskDefinition"]["revision"], 1);
    assert_eq!(by_arn["tags"], json!([{"key": "team", "value": "red"}]));

    ok(&app, "a", "RegisterTaskDefinition", definition("webapp")).await;
    // ECS's familyPrefix is the whole family name: "web" is not "webapp".
    let page = ok(
        &app,
        "a",
        "ListTaskDefinitions",
        json!({"familyPrefix": "web", "sort": "DESC", "maxResults": 1}),
    )
    .await;
    let arns = page["taskDefinitionArns"].as_array().unwrap();
    assert!(
        arns.len() == 1 && arns[0].as_str().unwrap().ends_with("task-definition/web:2"),
        "{arns:?}"
    );
    let rest = ok(
        &app,
        "a",
        "ListTaskDefinitions",
        json!({"familyPrefix": "web", "sort": "DESC", "nextToken": page["nextToken"]}),
    )
    .await;
    assert!(rest["taskDefinitionArns"][0]
        .as_str()
        .unwrap()
        .ends_with("web:1"));
    assert!(
        rest.get("nextToken").is_none(),
        "no token after the last page: {rest}"
    );

    let gone = ok(
        &app,
        "a",
        "DeregisterTaskDefinition",
        json!({"taskDefinition": "db:1"}),
    )
    .await;
    assert_eq!(gone["taskDefinition"]["status"], "INACTIVE");
    assert!(gone["taskDefinition"]["deregisteredAt"].is_f64());
    let families = ok(
        &app,
        "a",
        "ListTaskDefinitionFamilies",
        json!({"status": "ACTIVE", "familyPrefix": "w"}),
    )
    .await;
    assert_eq!(families["families"], json!(["web", "webapp", "worker"]));
    let families = ok(&app, "a", "ListTaskDefinitionFamilies", json!({})).await;
    assert_eq!(
        families["families"],
        json!(["db", "web", "webapp", "worker"]),
        "ACTIVE and INACTIVE by default"
    );
    let families = ok(
        &app,
        "a",
        "ListTaskDefinitionFamilies",
        json!({"status": "INACTIVE"}),
    )
    .await;
    assert_eq!(families["families"], json!(["db"]));
    let inactive = ok(
        &app,
        "a",
        "ListTaskDefinitions",
        json!({"status": "INACTIVE"}),
    )
    .await;
    assert_eq!(inactive["taskDefinitionArns"].as_array().unwrap().len(), 1);

    // Tenant b sees none of it; its ARNs carry its own account.
    let families = ok(
        &app,
        "b",
        "ListTaskDefinitionFamilies",
        json!({"status": "ALL"}),
    )
    .await;
    assert_eq!(families["families"], json!([]));
    let (_, code, _) = error(
        &app,
        "b",
        "DescribeTaskDefinition",
        json!({"taskDefinition": "web"}),
    )
    .await;
    assert_eq!(code, "ClientException");
    let (_, code, _) = error(
        &app,
        "b",
        "DescribeTaskDefinition",
        json!({"taskDefinition": "arn:aws:ecs:eu-west-1:111111111111:task-definition/web:1"}),
    )
    .await;
    assert_eq!(code, "AccessDeniedException");
    let out = ok(&app, "b", "RegisterTaskDefinition", definition("web")).await;
    assert_eq!(
        out["taskDefinition"]["taskDefinitionArn"],
        "arn:aws:ecs:eu-west-1:222222222222:task-definition/web:1"
    );
}

#[tokio::test]
async fn unsupported_fields_and_bad_values_are_named() {
    let (app, _) = app();
    let mut def = definition("web");
    def["containerDefinitions"][0]["healthCheck"] = json!({"command": ["true"]});
    let (status, code, message) = error(&app, "a", "RegisterTaskDefinition", def).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "InvalidParameterException")
    );
    assert!(
        message.contains("containerDefinitions[0].healthCheck"),
        "{message}"
    );
    let mut def = definition("web");
    def["volumes"] = json!([{"name": "data"}]);
    let (_, _, message) = error(&app, "a", "RegisterTaskDefinition", def).await;
    assert!(message.contains("volumes"), "{message}");
    let mut def = definition("web");
    def["memory"] = json!("300");
    let (_, code, message) = error(&app, "a", "RegisterTaskDefinition", def).await;
    assert_eq!(code, "InvalidParameterException");
    assert!(message.contains("memory"), "{message}");
    let (_, code, _) = error(&app, "a", "RegisterTaskDefinition", json!({"family": "x"})).await;
    assert_eq!(code, "InvalidParameterException");
    let (_, code, _) = error(&app, "a", "ListTasks", json!({"cluster": "prod"})).await;
    assert_eq!(code, "ClusterNotFoundException");
    let (_, code, _) = error(&app, "a", "ListTasks", json!({"maxResults": 500})).await;
    assert_eq!(code, "InvalidParameterException");
    let (_, code, message) = error(&app, "a", "CreateService", json!({})).await;
    assert_eq!(code, "UnsupportedFeatureException");
    assert!(message.contains("CreateService"));
    let (_, code, _) = error(&app, "a", "RunTask", json!({"taskDefinition": "nope"})).await;
    assert_eq!(code, "ClientException");
}

fn arns(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn tasks_run_describe_list_stop_and_fail_for_capacity() {
    let (app, fake) = app();
    ok(&app, "a", "RegisterTaskDefinition", definition("web")).await;
    let out = ok(
        &app,
        "a",
        "RunTask",
        json!({"cluster": "default", "taskDefinition": "web", "count": 2, "launchType": "FARGATE",
               "startedBy": "ci", "tags": [{"key": "run", "value": "1"}],
               "networkConfiguration": {"awsvpcConfiguration": {"subnets": ["subnet-1"]}},
               "overrides": {"cpu": "512", "memory": "1024",
                             "containerOverrides": [{"name": "app", "command": ["sleep", "9"]}]}}),
    )
    .await;
    assert_eq!(out["failures"], json!([]));
    let tasks = out["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    let t = &tasks[0];
    let arn = t["taskArn"].as_str().unwrap().to_owned();
    assert!(
        arn.starts_with("arn:aws:ecs:eu-west-1:111111111111:task/default/"),
        "{arn}"
    );
    assert_eq!(
        t["clusterArn"],
        "arn:aws:ecs:eu-west-1:111111111111:cluster/default"
    );
    assert_eq!(
        t["taskDefinitionArn"],
        "arn:aws:ecs:eu-west-1:111111111111:task-definition/web:1"
    );
    assert_eq!(
        (t["cpu"].as_str(), t["memory"].as_str()),
        (Some("512"), Some("1024"))
    );
    assert_eq!(t["desiredStatus"], "RUNNING");
    assert_eq!(t["launchType"], "FARGATE");
    assert_eq!(
        t["overrides"]["containerOverrides"][0]["command"],
        json!(["sleep", "9"])
    );
    assert_eq!(t["containers"][0]["name"], "app");
    assert!(t["createdAt"].is_f64());
    let id = arn.rsplit('/').next().unwrap().to_owned();

    // Capacity: 2560 units in all, 1024 held; three more 1024-unit tasks do not fit.
    let out = ok(&app, "a", "RunTask", json!({"taskDefinition": "web:1", "count": 3, "overrides": {"cpu": "1024", "memory": "2048"}})).await;
    assert_eq!(out["tasks"], json!([]));
    assert_eq!(out["failures"][0]["reason"], "RESOURCE:CPU", "{out}");

    let described = ok(&app, "a", "DescribeTasks", json!({"tasks": [arn, id, "feedface", "arn:aws:ecs:eu-west-1:111111111111:task/default/0000"], "include": ["TAGS"]})).await;
    assert_eq!(described["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(
        described["tasks"][0]["tags"],
        json!([{"key": "run", "value": "1"}])
    );
    assert_eq!(described["failures"].as_array().unwrap().len(), 2);
    assert_eq!(
        described["failures"][0],
        json!({"arn": "feedface", "reason": "MISSING"})
    );
    // Tenant b cannot see a's task, not even by its ARN.
    let other = ok(&app, "b", "DescribeTasks", json!({"tasks": [id.clone()]})).await;
    assert_eq!(other["tasks"], json!([]));
    assert_eq!(other["failures"][0]["reason"], "MISSING");
    let (_, code, _) = error(&app, "b", "StopTask", json!({"task": id.clone()})).await;
    assert_eq!(code, "InvalidParameterException");

    let listed = ok(&app, "a", "ListTasks", json!({"maxResults": 1})).await;
    assert_eq!(arns(&listed["taskArns"]).len(), 1);
    let rest = ok(
        &app,
        "a",
        "ListTasks",
        json!({"nextToken": listed["nextToken"]}),
    )
    .await;
    assert_eq!(arns(&rest["taskArns"]).len(), 1);
    assert_eq!(
        arns(
            &ok(
                &app,
                "a",
                "ListTasks",
                json!({"startedBy": "ci", "family": "web"})
            )
            .await["taskArns"]
        )
        .len(),
        2
    );
    assert_eq!(
        arns(&ok(&app, "a", "ListTasks", json!({"startedBy": "cd"})).await["taskArns"]).len(),
        0
    );
    assert_eq!(
        arns(&ok(&app, "b", "ListTasks", json!({})).await["taskArns"]).len(),
        0
    );

    let stopped = ok(
        &app,
        "a",
        "StopTask",
        json!({"task": arn, "reason": "done here"}),
    )
    .await;
    assert_eq!(stopped["task"]["desiredStatus"], "STOPPED");
    assert_eq!(stopped["task"]["stoppedReason"], "done here");
    assert_eq!(stopped["task"]["stopCode"], "UserInitiated");
    assert_eq!(
        arns(&ok(&app, "a", "ListTasks", json!({"desiredStatus": "STOPPED"})).await["taskArns"]),
        std::slice::from_ref(&arn)
    );
    assert_eq!(
        arns(&ok(&app, "a", "ListTasks", json!({})).await["taskArns"]).len(),
        1
    );
    drop(fake);

    let clusters = ok(
        &app,
        "a",
        "DescribeClusters",
        json!({"clusters": ["default", "prod"]}),
    )
    .await;
    assert_eq!(clusters["clusters"][0]["clusterName"], "default");
    let counted = clusters["clusters"][0]["runningTasksCount"]
        .as_u64()
        .unwrap()
        + clusters["clusters"][0]["pendingTasksCount"]
            .as_u64()
            .unwrap();
    assert!(counted <= 2, "{clusters}");
    assert_eq!(
        clusters["failures"][0],
        json!({"arn": "prod", "reason": "MISSING"})
    );
    let listed = ok(&app, "a", "ListClusters", json!({})).await;
    assert_eq!(
        listed["clusterArns"],
        json!(["arn:aws:ecs:eu-west-1:111111111111:cluster/default"])
    );
}

#[tokio::test]
async fn tags_are_added_listed_and_removed() {
    let (app, _) = app();
    ok(&app, "a", "RegisterTaskDefinition", definition("web")).await;
    let def_arn = "arn:aws:ecs:eu-west-1:111111111111:task-definition/web:1";
    ok(&app, "a", "TagResource", json!({"resourceArn": def_arn, "tags": [{"key": "team", "value": "blue"}, {"key": "env", "value": "dev"}]})).await;
    let tags = ok(
        &app,
        "a",
        "ListTagsForResource",
        json!({"resourceArn": def_arn}),
    )
    .await;
    assert_eq!(
        tags["tags"],
        json!([{"key": "team", "value": "blue"}, {"key": "env", "value": "dev"}])
    );
    ok(
        &app,
        "a",
        "UntagResource",
        json!({"resourceArn": def_arn, "tagKeys": ["team"]}),
    )
    .await;
    let tags = ok(
        &app,
        "a",
        "ListTagsForResource",
        json!({"resourceArn": def_arn}),
    )
    .await;
    assert_eq!(tags["tags"], json!([{"key": "env", "value": "dev"}]));

    let token = json!({"taskDefinition": "web", "clientToken": "0f8b-retry"});
    let run = ok(&app, "a", "RunTask", token.clone()).await;
    let task_arn = run["tasks"][0]["taskArn"].as_str().unwrap().to_owned();
    // botocore retries RunTask with the same clientToken: the same task answers.
    let again = ok(&app, "a", "RunTask", token).await;
    assert_eq!(again["tasks"][0]["taskArn"], task_arn.as_str());
    assert_eq!(again["tasks"].as_array().unwrap().len(), 1);
    ok(
        &app,
        "a",
        "TagResource",
        json!({"resourceArn": task_arn, "tags": [{"key": "k", "value": "v"}]}),
    )
    .await;
    let tags = ok(
        &app,
        "a",
        "ListTagsForResource",
        json!({"resourceArn": task_arn}),
    )
    .await;
    assert_eq!(tags["tags"], json!([{"key": "k", "value": "v"}]));
    // Another account's resource, and too many tags.
    let (_, code, _) = error(
        &app,
        "b",
        "TagResource",
        json!({"resourceArn": task_arn, "tags": [{"key": "x"}]}),
    )
    .await;
    assert_eq!(code, "AccessDeniedException");
    let (_, code, message) = error(
        &app,
        "a",
        "TagResource",
        json!({"resourceArn": task_arn, "tags": [{"key": "aws:owner", "value": "x"}]}),
    )
    .await;
    assert_eq!(code, "InvalidParameterException", "{message}");
    let many: Vec<Value> = (0..51)
        .map(|i| json!({"key": format!("k{i}"), "value": ""}))
        .collect();
    let (_, code, _) = error(
        &app,
        "a",
        "TagResource",
        json!({"resourceArn": task_arn, "tags": many}),
    )
    .await;
    assert_eq!(code, "InvalidParameterException");
}

#[tokio::test]
async fn unsigned_stale_and_unknown_requests_are_refused() {
    let (app, _) = app();
    let body = json!({});
    let now = SystemTime::now();
    let (status, v) = send(&app, signed("AKIDA", "wrong", "ListClusters", &body, now)).await;
    assert_eq!(
        (status, v["__type"].as_str()),
        (StatusCode::FORBIDDEN, Some("InvalidSignatureException"))
    );
    let (status, v) = send(
        &app,
        signed("AKIDX", "secret-a", "ListClusters", &body, now),
    )
    .await;
    assert_eq!(
        (status, v["__type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("UnrecognizedClientException"))
    );
    let stale = now - std::time::Duration::from_secs(16 * 60);
    let (_, v) = send(
        &app,
        signed("AKIDA", "secret-a", "ListClusters", &body, stale),
    )
    .await;
    assert_eq!(v["__type"], "InvalidSignatureException");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Signature expired"),
        "{v}"
    );
    let unsigned = Request::builder()
        .method("POST")
        .uri("/")
        .header("x-amz-target", format!("{TARGET_PREFIX}ListClusters"))
        .header("content-type", CONTENT_TYPE)
        .body(Body::from("{}"))
        .unwrap();
    let (status, v) = send(&app, unsigned).await;
    assert_eq!(
        (status, v["__type"].as_str()),
        (
            StatusCode::FORBIDDEN,
            Some("MissingAuthenticationTokenException")
        )
    );
    let (_, v) = send(
        &app,
        signed("AKIDA", "secret-a", "../ListClusters", &body, now),
    )
    .await;
    assert_eq!(v["__type"], "UnknownOperationException");
}
