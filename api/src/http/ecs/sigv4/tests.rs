//! Signatures botocore itself made (boto3 1.44.8, `ListClusters` and `DescribeTasks` against a
//! capturing server, the clock fixed at 2026-11-30T01:02:03Z): they must verify, and every
//! change of the request must not.

use super::*;

const SECRET: &str = "skiff/secret+KEY/example";
const HOST: &str = "127.0.0.1:46621";
const DATE: &str = "20261130T010203Z";
const LIST_CLUSTERS_SIG: &str = "8d7a95a5f0920c6e969e83eab5af05d72b84c14746b568a2580aa2a669601f16";
const DESCRIBE_TASKS_SIG: &str = "fc19476e8f02e06f4191b04d7381325d45acc4375e3b45bc867cfd3ce44184c8";
const DESCRIBE_TASKS_BODY: &str = r#"{"cluster": "default", "tasks": ["0123456789abcdef", "arn:aws:ecs:eu-west-1:1:task/default/x y"], "include": ["TAGS"]}"#;

fn keys() -> Keys {
    let mut keys = HashMap::new();
    keys.insert(
        "AKIDSKIFFTEST".to_owned(),
        AccessKey {
            secret: SECRET.into(),
            tenant: Tenant::unlimited("alice"),
            account: "111122223333".into(),
        },
    );
    Keys {
        region: "eu-west-1".into(),
        keys,
    }
}

fn headers(action: &str, signature: &str, body: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        h.insert(name, value.parse().unwrap());
    };
    put("host", HOST.into());
    put("accept-encoding", "identity".into());
    put(
        "x-amz-target",
        format!("AmazonEC2ContainerServiceV20141113.{action}"),
    );
    put("content-type", "application/x-amz-json-1.1".into());
    put("user-agent", "Boto3/1.44.8 md/Botocore#1.44.8".into());
    put("x-amz-date", DATE.into());
    put(
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIDSKIFFTEST/20261130/eu-west-1/ecs/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature={signature}"
        ),
    );
    put("content-length", body.len().to_string());
    h
}

fn at(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).unwrap()
}

fn check(h: &HeaderMap, body: &str, now: SystemTime) -> Result<String, AuthError> {
    let keys = keys();
    verify(
        &keys,
        &Method::POST,
        &Uri::from_static("/"),
        h,
        body.as_bytes(),
        now,
    )
    .map(|k| k.tenant.name.clone())
}

#[test]
fn botocore_signatures_verify() {
    let now = at("2026-11-30T01:05:00Z");
    let h = headers("ListClusters", LIST_CLUSTERS_SIG, "{}");
    assert_eq!(check(&h, "{}", now).unwrap(), "alice");
    let h = headers("DescribeTasks", DESCRIBE_TASKS_SIG, DESCRIBE_TASKS_BODY);
    assert_eq!(check(&h, DESCRIBE_TASKS_BODY, now).unwrap(), "alice");
}

#[test]
fn any_change_breaks_the_signature() {
    let now = at("2026-11-30T01:05:00Z");
    let mismatch = |r: Result<String, AuthError>| matches!(r, Err(AuthError::Invalid(m)) if m.contains("does not match"));
    let h = headers("DescribeTasks", DESCRIBE_TASKS_SIG, DESCRIBE_TASKS_BODY);
    assert!(
        mismatch(check(&h, &DESCRIBE_TASKS_BODY.replace("TAGS", "TAGX"), now)),
        "body"
    );
    let h = headers("StopTask", DESCRIBE_TASKS_SIG, DESCRIBE_TASKS_BODY);
    assert!(mismatch(check(&h, DESCRIBE_TASKS_BODY, now)), "target");
    let mut h = headers("DescribeTasks", DESCRIBE_TASKS_SIG, DESCRIBE_TASKS_BODY);
    h.insert("host", "127.0.0.1:1".parse().unwrap());
    assert!(mismatch(check(&h, DESCRIBE_TASKS_BODY, now)), "host");
    // An unsigned header may change: the user agent is not signed.
    let mut h = headers("DescribeTasks", DESCRIBE_TASKS_SIG, DESCRIBE_TASKS_BODY);
    h.insert("user-agent", "curl".parse().unwrap());
    assert!(check(&h, DESCRIBE_TASKS_BODY, now).is_ok());
    // Another secret.
    let mut other = keys();
    other.keys.get_mut("AKIDSKIFFTEST").unwrap().secret = "wrong".into();
    let h = headers("ListClusters", LIST_CLUSTERS_SIG, "{}");
    let r = verify(
        &other,
        &Method::POST,
        &Uri::from_static("/"),
        &h,
        b"{}",
        now,
    );
    assert!(matches!(r, Err(AuthError::Invalid(m)) if m.contains("does not match")));
}

#[test]
fn the_date_must_be_within_fifteen_minutes() {
    let h = headers("ListClusters", LIST_CLUSTERS_SIG, "{}");
    assert!(check(&h, "{}", at("2026-11-30T01:17:03Z")).is_ok());
    let late = check(&h, "{}", at("2026-11-30T01:17:04Z"));
    assert!(
        matches!(&late, Err(AuthError::Invalid(m)) if m.starts_with("Signature expired: 20261130T010203Z is now earlier than 20261130T010204Z")),
        "{late:?}"
    );
    let early = check(&h, "{}", at("2026-11-30T00:47:02Z"));
    assert!(
        matches!(&early, Err(AuthError::Invalid(m)) if m.starts_with("Signature not yet current")),
        "{early:?}"
    );
}

#[test]
fn keys_scopes_and_headers_are_checked_before_the_signature() {
    let now = at("2026-11-30T01:05:00Z");
    let mut h = headers("ListClusters", LIST_CLUSTERS_SIG, "{}");
    h.remove("authorization");
    assert_eq!(check(&h, "{}", now), Err(AuthError::Missing));

    let with_auth = |auth: &str| {
        let mut h = headers("ListClusters", LIST_CLUSTERS_SIG, "{}");
        h.insert("authorization", auth.parse().unwrap());
        check(&h, "{}", now)
    };
    let sig = LIST_CLUSTERS_SIG;
    let signed = "SignedHeaders=content-type;host;x-amz-date;x-amz-target";
    assert_eq!(
        with_auth(&format!(
            "AWS4-HMAC-SHA256 Credential=AKIDOTHER/20261130/eu-west-1/ecs/aws4_request, {signed}, Signature={sig}"
        )),
        Err(AuthError::UnknownKey)
    );
    for (scope, needle) in [
        ("20261130/us-east-1/ecs/aws4_request", "valid region"),
        ("20261130/eu-west-1/s3/aws4_request", "correct service"),
        (
            "20261129/eu-west-1/ecs/aws4_request",
            "Date in Credential scope",
        ),
        ("20261130/eu-west-1/ecs/aws5_request", "terminator"),
    ] {
        let r = with_auth(&format!(
            "AWS4-HMAC-SHA256 Credential=AKIDSKIFFTEST/{scope}, {signed}, Signature={sig}"
        ));
        assert!(
            matches!(&r, Err(AuthError::Invalid(m)) if m.contains(needle)),
            "{scope}: {r:?}"
        );
    }
    for bad in [
        "AWS4-HMAC-SHA1 Credential=AKIDSKIFFTEST/20261130/eu-west-1/ecs/aws4_request".to_owned(),
        format!("AWS4-HMAC-SHA256 Credential=AKIDSKIFFTEST/20261130/eu-west-1/ecs/aws4_request, {signed}"),
        format!("AWS4-HMAC-SHA256 Credential=AKIDSKIFFTEST/eu-west-1/ecs/aws4_request, {signed}, Signature={sig}"),
        format!("AWS4-HMAC-SHA256 Credential=AKIDSKIFFTEST/20261130/eu-west-1/ecs/aws4_request, {signed}, Signature=xyz"),
    ] {
        assert!(matches!(with_auth(&bad), Err(AuthError::Incomplete(_))), "{bad}");
    }
    // The host and the date must be signed; every signed header must be there.
    let r = with_auth(&format!(
        "AWS4-HMAC-SHA256 Credential=AKIDSKIFFTEST/20261130/eu-west-1/ecs/aws4_request, SignedHeaders=content-type;x-amz-date, Signature={sig}"
    ));
    assert!(
        matches!(&r, Err(AuthError::Invalid(m)) if m.contains("'host'")),
        "{r:?}"
    );
    let r = with_auth(&format!(
        "AWS4-HMAC-SHA256 Credential=AKIDSKIFFTEST/20261130/eu-west-1/ecs/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={sig}"
    ));
    assert!(
        matches!(&r, Err(AuthError::Invalid(m)) if m.contains("'x-amz-target'")),
        "the action must be signed: {r:?}"
    );
    let r = with_auth(&format!(
        "AWS4-HMAC-SHA256 Credential=AKIDSKIFFTEST/20261130/eu-west-1/ecs/aws4_request, SignedHeaders=host;x-amz-date;x-amz-target;x-missing, Signature={sig}"
    ));
    assert!(
        matches!(&r, Err(AuthError::Invalid(m)) if m.contains("x-missing")),
        "{r:?}"
    );
    let mut h = headers("ListClusters", LIST_CLUSTERS_SIG, "{}");
    h.insert("x-amz-date", "2026-11-30".parse().unwrap());
    assert!(matches!(
        check(&h, "{}", now),
        Err(AuthError::Incomplete(_))
    ));
}

#[test]
fn amz_dates_parse_strictly() {
    assert_eq!(parse_amz_date(DATE), Some(at("2026-11-30T01:02:03Z")));
    assert_eq!(format_amz_date(at("2026-11-30T01:02:03Z")), DATE);
    for bad in [
        "20261130T010203",
        "2026113xT010203Z",
        "20261330T010203Z",
        "",
        "20261130 010203Z",
    ] {
        assert_eq!(parse_amz_date(bad), None, "{bad}");
    }
}
