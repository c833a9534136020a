//! AWS Signature Version 4 verification of an ECS request: the `Authorization` header is parsed
//! and checked (key, scope, date within the skew window), then the signature the request should
//! carry is computed with the `aws-sigv4` crate (the AWS SDK's own canonicalisation) over
//! exactly the headers the client signed, and compared in constant time.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use axum::http::{HeaderMap, Method, Uri};

use crate::service::Tenant;

/// How far a request's `X-Amz-Date` may be from now, either way (as AWS).
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// The service name requests are signed for.
pub const SERVICE: &str = "ecs";

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// An access key: its secret, whose it is and the account id in its ARNs.
#[derive(Clone)]
pub struct AccessKey {
    pub secret: String,
    pub tenant: Tenant,
    pub account: String,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessKey({}, <redacted>)", self.tenant.name)
    }
}

/// Access key ids → keys, and the region requests must be scoped to.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub region: String,
    pub keys: HashMap<String, AccessKey>,
}

/// Why a request is not authenticated, in AWS's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("Missing Authentication Token")]
    Missing,
    /// A malformed `Authorization` header or missing date.
    #[error("{0}")]
    Incomplete(String),
    /// The access key id is unknown.
    #[error("The security token included in the request is invalid.")]
    UnknownKey,
    /// Wrong scope, stale date or a signature that does not match.
    #[error("{0}")]
    Invalid(String),
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
#[derive(Debug, PartialEq, Eq)]
struct Authorization<'a> {
    key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(header: &str) -> Result<Authorization<'_>, AuthError> {
    let rest = header
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| {
            AuthError::Incomplete(format!(
                "Authorization header: the only algorithm supported is {ALGORITHM}"
            ))
        })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        match part.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {
                return Err(AuthError::Incomplete(format!(
                    "Authorization header: unexpected part {part:?}"
                )))
            }
        }
    }
    let missing = |what: &str| {
        AuthError::Incomplete(format!(
            "Authorization header requires '{what}' parameter. Authorization={header}"
        ))
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, terminator] = scope[..] else {
        return Err(AuthError::Incomplete(format!(
            "Credential should have five slash-separated parts, not {credential:?}"
        )));
    };
    if terminator != "aws4_request" {
        return Err(AuthError::Invalid(
            "Credential should be scoped with a valid terminator: 'aws4_request'".into(),
        ));
    }
    let valid_signature = signature.len() == 64 && signature.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid_signature {
        return Err(AuthError::Incomplete(
            "Signature must be 64 hexadecimal digits".into(),
        ));
    }
    Ok(Authorization {
        key_id,
        date,
        region,
        service,
        signed_headers: signed.split(';').collect(),
        signature,
    })
}

/// `YYYYMMDDTHHMMSSZ` → a time.
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let shape = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    if !shape {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &text[0..4],
        &text[4..6],
        &text[6..8],
        &text[9..11],
        &text[11..13],
        &text[13..15]
    );
    humantime::parse_rfc3339(&rfc3339).ok()
}

fn format_amz_date(t: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(t).to_string();
    text.chars().filter(|c| !matches!(c, '-' | ':')).collect()
}

/// Equal, in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the request's signature at `now`; gives the key it was signed with.
pub fn verify<'k>(
    keys: &'k Keys,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<&'k AccessKey, AuthError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Incomplete("Authorization header is not ASCII".into()))?;
    let auth = parse_authorization(header)?;
    let key = keys.keys.get(auth.key_id).ok_or(AuthError::UnknownKey)?;
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            AuthError::Incomplete(
                "Authorization header requires existence of a 'X-Amz-Date' header.".into(),
            )
        })?;
    let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
        AuthError::Incomplete(format!(
            "X-Amz-Date {amz_date:?} is not in the form YYYYMMDD'T'HHMMSS'Z'"
        ))
    })?;
    if auth.date != &amz_date[..8] {
        return Err(AuthError::Invalid(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from \
             HTTP: '{}' != '{}', from '{amz_date}'.",
            auth.date,
            &amz_date[..8]
        )));
    }
    if auth.region != keys.region {
        return Err(AuthError::Invalid(format!(
            "Credential should be scoped to a valid region, not '{}'. This endpoint is region \
             '{}'.",
            auth.region, keys.region
        )));
    }
    if auth.service != SERVICE {
        return Err(AuthError::Invalid(format!(
            "Credential should be scoped to correct service: '{SERVICE}'."
        )));
    }
    if signed_at + MAX_SKEW < now {
        return Err(AuthError::Invalid(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - 15 min.)",
            format_amz_date(now - MAX_SKEW),
            format_amz_date(now)
        )));
    }
    if signed_at > now + MAX_SKEW {
        return Err(AuthError::Invalid(format!(
            "Signature not yet current: {amz_date} is still later than {} ({} + 15 min.)",
            format_amz_date(now + MAX_SKEW),
            format_amz_date(now)
        )));
    }
    // The action is in X-Amz-Target: unsigned, a captured request could be replayed as another.
    for needed in ["host", "x-amz-date", "x-amz-target"] {
        if !auth.signed_headers.contains(&needed) {
            return Err(AuthError::Invalid(format!(
                "'{needed}' must be a signed header"
            )));
        }
    }
    let mut signed = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        let values = headers.get_all(*name);
        if values.iter().next().is_none() {
            return Err(AuthError::Invalid(format!(
                "the signed header '{name}' is not in the request"
            )));
        }
        for value in values {
            let value = value.to_str().map_err(|_| {
                AuthError::Invalid(format!("the signed header '{name}' is not ASCII"))
            })?;
            signed.push((*name, value));
        }
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let expected = expected_signature(
        key,
        auth.key_id,
        &keys.region,
        method,
        path,
        signed,
        body,
        signed_at,
    )
    .ok_or_else(|| AuthError::Invalid("the request cannot be canonicalised".into()))?;
    if !constant_time_eq(
        expected.as_bytes(),
        auth.signature.to_ascii_lowercase().as_bytes(),
    ) {
        return Err(AuthError::Invalid(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details."
                .into(),
        ));
    }
    Ok(key)
}

/// The signature a request signed with `key` at `at` carries, computed by `aws-sigv4`.
#[allow(clippy::too_many_arguments)]
fn expected_signature(
    key: &AccessKey,
    key_id: &str,
    region: &str,
    method: &Method,
    path: &str,
    signed: Vec<(&str, &str)>,
    body: &[u8],
    at: SystemTime,
) -> Option<String> {
    let identity: Identity = Credentials::new(key_id, &key.secret, None, None, "skiffd").into();
    let mut settings = SigningSettings::default();
    // Exactly what the client signed: nothing left out, nothing added.
    settings.excluded_headers = Some(Vec::new());
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(at)
        .settings(settings)
        .build()
        .ok()?
        .into();
    let request = SignableRequest::new(
        method.as_str(),
        // The signed Host header is what is signed; the URI gives the path and query only.
        format!("http://localhost{path}"),
        signed.into_iter(),
        SignableBody::Bytes(body),
    )
    .ok()?;
    let (_, signature) = sign(request, &params).ok()?.into_parts();
    Some(signature)
}

#[cfg(test)]
mod tests;
