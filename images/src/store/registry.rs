//! Pulling an image from an OCI distribution registry (the `/v2/` API) into the store.
//!
//! A reference is `HOST[:PORT]/REPOSITORY[:TAG][@sha256:…]`; there is no default registry, so the
//! host must be given. HTTPS by default (rustls, the Mozilla roots plus an optional CA file),
//! plain HTTP when asked for. A 401 answered with a `Bearer` challenge fetches a token from its
//! realm and retries; a `Basic` challenge retries with the credentials. Credentials go to a
//! token realm only over HTTPS on the registry's own host or a host the user allowed
//! ([`PullOptions::token_hosts`]) — or over plain HTTP to the registry's own host when the user
//! chose plain HTTP for it; a realm elsewhere is asked for an anonymous token only.
//!
//! The manifest is asked for in the OCI and Docker v2 media types; an index or manifest list
//! resolves to its linux/amd64 manifest, as for an OCI layout (`oci::fetch_image`, shared). Every
//! blob is verified against its digest and size while it streams into the store
//! ([`Store::put_blob`]); the manifest named by a tag is hashed and recorded (and checked against
//! the registry's `Docker-Content-Digest`), one named by digest must match it. Blobs already
//! stored are not downloaded again. A failed pull leaves no new blob and does not touch the name.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use super::oci::{
    fetch_image, is_index, BlobSource, Descriptor, ImportError, MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST,
};
use super::{Digest, ImageRecord, Store, StoreError, Stored, MAX_JSON_BLOB};

/// What a manifest request accepts.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";
/// Most bytes of a token response or an error body we read.
const MAX_SMALL_BODY: u64 = 64 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the next bytes of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// An image reference: `HOST[:PORT]/REPOSITORY[:TAG][@sha256:…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` of the registry.
    pub registry: String,
    /// `a/b/c`: lowercase path components.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// A malformed image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {reference:?}: {why}")]
pub struct ReferenceError {
    pub reference: String,
    pub why: String,
}

impl Reference {
    /// The tag, `latest` when the reference names none.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// What the manifest endpoint is asked for: the digest if given, else the tag.
    pub fn manifest_reference(&self) -> String {
        match &self.digest {
            Some(d) => d.to_string(),
            None => self.tag_or_latest().to_owned(),
        }
    }
}

/// The reference in full, `latest` filled in when it names neither tag nor digest: the store name
/// a pull uses unless told another.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        match (&self.tag, &self.digest) {
            (Some(tag), Some(d)) => write!(f, ":{tag}@{d}"),
            (Some(tag), None) => write!(f, ":{tag}"),
            (None, Some(d)) => write!(f, "@{d}"),
            (None, None) => write!(f, ":latest"),
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ReferenceError {
            reference: s.chars().take(200).collect(),
            why: why.to_owned(),
        };
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| bad("the digest must be sha256:<64 lowercase hex digits>"))?,
                ),
            ),
            None => (s, None),
        };
        let no_host = "no registry host: write HOST[:PORT]/REPOSITORY[:TAG] \
                       (there is no default registry)";
        let (registry, path) = rest.split_once('/').ok_or_else(|| bad(no_host))?;
        if !(registry.contains(['.', ':']) || registry == "localhost") {
            return Err(bad(no_host));
        }
        let host_ok = |c: char| c.is_ascii_alphanumeric() || ".-:[]".contains(c);
        if registry.is_empty() || !registry.chars().all(host_ok) {
            return Err(bad(
                "the registry host has characters a host name cannot have",
            ));
        }
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (path, None),
        };
        let component_ok = |c: &str| {
            let sep = |b: u8| matches!(b, b'.' | b'_' | b'-');
            let bytes = c.as_bytes();
            !bytes.is_empty()
                && bytes
                    .iter()
                    .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || sep(b))
                && !sep(bytes[0])
                && !sep(bytes[bytes.len() - 1])
        };
        if !repository.split('/').all(component_ok) {
            return Err(bad(
                "the repository must be lowercase letters, digits and . _ - \
                 between / (not at either end of a component)",
            ));
        }
        if let Some(tag) = tag {
            let tag_ok = (1..=128).contains(&tag.len())
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                && !tag.starts_with(['.', '-']);
            if !tag_ok {
                return Err(bad("the tag must be 1 to 128 of A-Z a-z 0-9 . _ - \
                     (not starting with . or -)"));
            }
        }
        Ok(Self {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }
}

/// A user name and password for the registry (or its token service).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    fn basic(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Plain HTTP instead of HTTPS (a registry on a trusted network, a test).
    pub plain_http: bool,
    /// A PEM file of CA certificates trusted besides the Mozilla roots (HTTPS only).
    pub ca_file: Option<PathBuf>,
    /// For a `Basic` challenge, or sent to a `Bearer` challenge's token service.
    pub credentials: Option<Credentials>,
    /// Hosts (`host[:port]`) besides the registry's own whose token service may receive the
    /// credentials (e.g. `auth.docker.io` for `registry-1.docker.io`), over HTTPS.
    pub token_hosts: Vec<String>,
}

/// What a pull transferred.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PullReport {
    /// Manifests and indexes asked of the registry (the one a tag names always is).
    pub manifests_fetched: usize,
    /// Configs and layers downloaded (`/blobs/`), and their bytes.
    pub downloaded_blobs: usize,
    pub downloaded_bytes: u64,
    /// Manifests, configs and layers found in the store, not downloaded again.
    pub reused_blobs: usize,
}

impl fmt::Display for PullReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} manifests fetched, {} blobs downloaded ({} bytes), {} blobs already stored",
            self.manifests_fetched, self.downloaded_blobs, self.downloaded_bytes, self.reused_blobs
        )
    }
}

/// Errors pulling an image.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("CA file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
    #[error("GET {url}: HTTP {status}{message}")]
    Status {
        url: String,
        status: u16,
        /// The registry's explanation (`: CODE: message`), or empty.
        message: String,
    },
    /// No HTTP answer: connection, TLS, protocol or timeout failures.
    #[error("GET {url}: {message}")]
    Transport { url: String, message: String },
    #[error("GET {url}: reading the response: {source}")]
    Read {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("GET {url}: unauthorized ({why}); challenge: {challenge:?}")]
    Unauthorized {
        url: String,
        why: String,
        challenge: String,
    },
    #[error("token from {url}: {message}")]
    Token { url: String, message: String },
    #[error("GET {url}: the manifest is larger than {max} bytes; refused")]
    ManifestTooLarge { url: String, max: u64 },
    #[error(
        "GET {url}: the manifest's digest is {actual}, not {expected}; rejected, nothing stored"
    )]
    ManifestDigest {
        url: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "GET {url}: {served} bytes served for blob {digest}, whose descriptor says {expected}; \
         refused, nothing stored"
    )]
    Length {
        url: String,
        digest: Digest,
        expected: u64,
        served: u64,
    },
    /// A blob that failed verification while being stored.
    #[error("GET {url}: {source}")]
    Blob {
        url: String,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Image(#[from] ImportError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Pulls `reference` into `store` as `name`: the image's manifest, config and layers, each
/// verified; blobs already stored are not downloaded. On failure nothing new stays in the store
/// and `name` is untouched.
pub fn pull(
    store: &Store,
    reference: &Reference,
    name: &str,
    options: &PullOptions,
) -> Result<(ImageRecord, PullReport), RegistryError> {
    // Checked again where it is stored; here so that a bad name fails before any download.
    super::check_name(name).map_err(StoreError::from)?;
    let mut client = Client::new(reference, options)?;
    store.all_or_nothing(|added| {
        let top = client.top_manifest(store, reference)?;
        let record = fetch_image(store, &mut client, top, reference.tag_or_latest(), added)?;
        store.tag(name, record.clone())?;
        Ok((record, client.report))
    })
}

/// Talks to one repository of a registry, keeping the authorization it earned.
struct Client<'a> {
    agent: ureq::Agent,
    /// `host[:port]` of the registry, whether it is plain HTTP, and the other hosts whose token
    /// service may have the credentials.
    registry: String,
    plain_http: bool,
    token_hosts: &'a [String],
    /// `https://host:port/v2/repository`
    base: String,
    repository: String,
    credentials: Option<&'a Credentials>,
    /// The `Authorization` header value, once a challenge was answered.
    authorization: Option<String>,
    /// The manifest fetched by the reference (digest, bytes), stored when the image is resolved.
    top: Option<(Digest, Vec<u8>)>,
    report: PullReport,
}

impl<'a> Client<'a> {
    fn new(reference: &Reference, options: &'a PullOptions) -> Result<Self, RegistryError> {
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(READ_TIMEOUT)
            .user_agent(concat!("skiff-image/", env!("CARGO_PKG_VERSION")));
        let scheme = if options.plain_http {
            "http"
        } else {
            if let Some(path) = &options.ca_file {
                builder = builder.tls_config(Arc::new(tls_config(path)?));
            }
            "https"
        };
        Ok(Self {
            agent: builder.build(),
            registry: reference.registry.clone(),
            plain_http: options.plain_http,
            token_hosts: &options.token_hosts,
            base: format!(
                "{scheme}://{}/v2/{}",
                reference.registry, reference.repository
            ),
            repository: reference.repository.clone(),
            credentials: options.credentials.as_ref(),
            authorization: None,
            top: None,
            report: PullReport::default(),
        })
    }

    /// GET `url`, answering one authentication challenge.
    fn get(&mut self, url: &str, accept: Option<&str>) -> Result<ureq::Response, RegistryError> {
        let mut challenged = false;
        loop {
            let mut request = self.agent.get(url);
            if let Some(accept) = accept {
                request = request.set("Accept", accept);
            }
            if let Some(auth) = &self.authorization {
                request = request.set("Authorization", auth);
            }
            match request.call() {
                Ok(response) => return Ok(response),
                Err(ureq::Error::Status(401, response)) => {
                    let challenges: Vec<String> = response
                        .all("WWW-Authenticate")
                        .into_iter()
                        .map(str::to_owned)
                        .collect();
                    let unauthorized = |why: &str| RegistryError::Unauthorized {
                        url: url.to_owned(),
                        why: why.to_owned(),
                        challenge: challenges.join(", "),
                    };
                    if challenged {
                        return Err(unauthorized("the credentials or token were refused"));
                    }
                    challenged = true;
                    let auth = self.answer(&challenges).map_err(|e| match e {
                        Answer::Failed(e) => e,
                        Answer::Unanswerable(why) => unauthorized(why),
                    })?;
                    self.authorization = Some(auth);
                }
                Err(e) => return Err(http_error(url, e)),
            }
        }
    }

    /// The `Authorization` header that answers the challenges of a 401.
    fn answer(&self, challenges: &[String]) -> Result<String, Answer> {
        let parsed: Vec<_> = challenges.iter().map(|c| parse_challenge(c)).collect();
        if let Some((_, params)) = parsed.iter().find(|(scheme, _)| scheme == "bearer") {
            return Ok(format!("Bearer {}", self.token(params)?));
        }
        if parsed.iter().any(|(scheme, _)| scheme == "basic") {
            return match self.credentials {
                Some(c) => Ok(c.basic()),
                None => Err(Answer::Unanswerable(
                    "the registry asks for a user name and password",
                )),
            };
        }
        Err(Answer::Unanswerable(
            "no Bearer or Basic challenge to answer",
        ))
    }

    /// A token from a `Bearer` challenge's realm.
    fn token(&self, params: &BTreeMap<String, String>) -> Result<String, Answer> {
        let realm = params
            .get("realm")
            .ok_or(Answer::Unanswerable("the Bearer challenge names no realm"))?;
        let mut request = self.agent.get(realm);
        if let Some(service) = params.get("service") {
            request = request.query("service", service);
        }
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        request = request.query("scope", &scope);
        if let Some(c) = self.credentials {
            match realm_may_have_credentials(
                realm,
                &self.registry,
                self.plain_http,
                self.token_hosts,
            ) {
                Ok(()) => request = request.set("Authorization", &c.basic()),
                Err(why) => {
                    return Err(Answer::Failed(RegistryError::Token {
                        url: realm.clone(),
                        message: format!("credentials not sent: {why}"),
                    }))
                }
            }
        }
        let failed = |message: String| {
            Answer::Failed(RegistryError::Token {
                url: realm.clone(),
                message,
            })
        };
        let response = request.call().map_err(|e| match e {
            ureq::Error::Status(status, response) => {
                failed(format!("HTTP {status}{}", error_message(response)))
            }
            e => Answer::Failed(http_error(realm, e)),
        })?;
        let body = read_small(response, MAX_SMALL_BODY)
            .map_err(|e| failed(format!("reading the response: {e}")))?;
        #[derive(Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| failed(format!("not a token response: {e}")))?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| failed("the response holds no token".to_owned()))
    }

    fn url(&self, endpoint: &str, reference: &str) -> String {
        format!("{}/{endpoint}/{reference}", self.base)
    }

    /// GET a manifest or index, at most [`MAX_JSON_BLOB`] bytes: its bytes, content type and
    /// `Docker-Content-Digest`.
    fn get_manifest(
        &mut self,
        url: &str,
    ) -> Result<(Vec<u8>, String, Option<String>), RegistryError> {
        let response = self.get(url, Some(MANIFEST_ACCEPT))?;
        self.report.manifests_fetched += 1;
        let too_large = || RegistryError::ManifestTooLarge {
            url: url.to_owned(),
            max: MAX_JSON_BLOB,
        };
        if content_length(&response).is_some_and(|n| n > MAX_JSON_BLOB) {
            return Err(too_large());
        }
        let content_type = response
            .header("Content-Type")
            .and_then(|t| t.split(';').next())
            .unwrap_or("")
            .trim()
            .to_owned();
        let digest = response.header("Docker-Content-Digest").map(str::to_owned);
        let mut data = Vec::new();
        response
            .into_reader()
            .take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut data)
            .map_err(|source| RegistryError::Read {
                url: url.to_owned(),
                source,
            })?;
        if data.len() as u64 > MAX_JSON_BLOB {
            return Err(too_large());
        }
        Ok((data, content_type, digest))
    }

    /// The descriptor of the manifest (or index) the reference names: fetched and hashed (and,
    /// named by digest, checked), or, named by a digest already stored, read from the store.
    fn top_manifest(
        &mut self,
        store: &Store,
        reference: &Reference,
    ) -> Result<Descriptor, RegistryError> {
        let descriptor = |media_type, digest, size| Descriptor {
            media_type,
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
        };
        if let Some(digest) = reference.digest.filter(|d| store.has_blob(d)) {
            let data = store.read_json_blob(&digest)?;
            return Ok(descriptor(
                manifest_type("", &data),
                digest,
                data.len() as u64,
            ));
        }
        let url = self.url("manifests", &reference.manifest_reference());
        let (data, content_type, announced) = self.get_manifest(&url)?;
        let actual = Digest::of(&data);
        let announced = announced.and_then(|d| d.parse::<Digest>().ok());
        if let Some(expected) = reference.digest.or(announced) {
            if expected != actual {
                return Err(RegistryError::ManifestDigest {
                    url,
                    expected,
                    actual,
                });
            }
        }
        let desc = descriptor(
            manifest_type(&content_type, &data),
            actual,
            data.len() as u64,
        );
        self.top = Some((actual, data));
        Ok(desc)
    }
}

/// Why a challenge got no answer.
enum Answer {
    /// Nothing to answer it with (no credentials, no realm, an unknown scheme).
    Unanswerable(&'static str),
    /// Asking for a token failed.
    Failed(RegistryError),
}

impl BlobSource for Client<'_> {
    type Error = RegistryError;

    fn fetch(
        &mut self,
        store: &Store,
        desc: &Descriptor,
        added: &mut Vec<Digest>,
    ) -> Result<(), RegistryError> {
        if let Some((digest, data)) = self.top.take_if(|(d, _)| *d == desc.digest) {
            if store.put_blob(&digest, Some(data.len() as u64), &mut &data[..])? == Stored::New {
                added.push(digest);
            }
            return Ok(());
        }
        if store.has_blob(&desc.digest) {
            self.report.reused_blobs += 1;
            return Ok(());
        }
        let manifest = is_index(&desc.media_type)
            || matches!(
                desc.media_type.as_str(),
                MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST
            );
        let stored = if manifest {
            let url = self.url("manifests", &desc.digest.to_string());
            let (data, _, _) = self.get_manifest(&url)?;
            store
                .put_blob(&desc.digest, Some(desc.size), &mut &data[..])
                .map_err(|source| RegistryError::Blob { url, source })?
        } else {
            let url = self.url("blobs", &desc.digest.to_string());
            let response = self.get(&url, None)?;
            if let Some(served) = content_length(&response).filter(|&n| n != desc.size) {
                return Err(RegistryError::Length {
                    url,
                    digest: desc.digest,
                    expected: desc.size,
                    served,
                });
            }
            let mut body = NetReader {
                inner: response.into_reader(),
                error: None,
            };
            let stored = store.put_blob(&desc.digest, Some(desc.size), &mut body);
            match (stored, body.error) {
                (Ok(stored), _) => {
                    if stored == Stored::New {
                        self.report.downloaded_blobs += 1;
                        self.report.downloaded_bytes += desc.size;
                    }
                    stored
                }
                (Err(_), Some(source)) => return Err(RegistryError::Read { url, source }),
                (Err(source), None) => return Err(RegistryError::Blob { url, source }),
            }
        };
        match stored {
            Stored::New => added.push(desc.digest),
            // Stored meanwhile by a concurrent pull.
            Stored::Existing => self.report.reused_blobs += 1,
        }
        Ok(())
    }
}

/// A response body that remembers the error it failed with, to tell a network failure from a
/// store failure.
struct NetReader {
    inner: Box<dyn Read + Send + Sync>,
    error: Option<std::io::Error>,
}

impl Read for NetReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            self.error = Some(std::io::Error::new(e.kind(), e.to_string()));
        })
    }
}

/// The media type of a manifest: from its `Content-Type` if that is a manifest type, else its
/// `mediaType` field, else its shape (`manifests`: an index; `config`: a manifest).
fn manifest_type(content_type: &str, data: &[u8]) -> String {
    if matches!(
        content_type,
        MEDIA_OCI_INDEX | MEDIA_OCI_MANIFEST | MEDIA_DOCKER_LIST | MEDIA_DOCKER_MANIFEST
    ) {
        return content_type.to_owned();
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Shape {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        schema_version: Option<u64>,
        #[serde(default)]
        manifests: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        config: Option<serde::de::IgnoredAny>,
    }
    let Ok(shape) = serde_json::from_slice::<Shape>(data) else {
        return content_type.to_owned(); // refused later, by its type or as bad JSON
    };
    match shape {
        Shape {
            media_type: Some(t),
            ..
        } => t,
        Shape {
            manifests: Some(_), ..
        } => MEDIA_OCI_INDEX.to_owned(),
        Shape {
            config: Some(_), ..
        } => MEDIA_OCI_MANIFEST.to_owned(),
        Shape {
            schema_version: Some(1),
            ..
        } => "application/vnd.docker.distribution.manifest.v1+json".to_owned(),
        _ => content_type.to_owned(),
    }
}

fn content_length(response: &ureq::Response) -> Option<u64> {
    response
        .header("Content-Length")
        .and_then(|n| n.trim().parse().ok())
}

fn read_small(response: ureq::Response, max: u64) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    response.into_reader().take(max).read_to_end(&mut data)?;
    Ok(data)
}

fn http_error(url: &str, e: ureq::Error) -> RegistryError {
    match e {
        ureq::Error::Status(status, response) => RegistryError::Status {
            url: url.to_owned(),
            status,
            message: error_message(response),
        },
        ureq::Error::Transport(t) => {
            // Its Display starts with the URL, which the error names already.
            let mut message = t.kind().to_string();
            if let Some(m) = t.message() {
                message = format!("{message}: {m}");
            }
            if let Some(source) = std::error::Error::source(&t) {
                message = format!("{message}: {source}");
            }
            if let Some(at) = t.url().filter(|at| at.as_str() != url) {
                message = format!("{message} (at {at})");
            }
            RegistryError::Transport {
                url: url.to_owned(),
                message,
            }
        }
    }
}

/// Whether a token realm may receive the credentials meant for `registry`: over HTTPS to the
/// registry's host or one of `token_hosts`; over plain HTTP only to the registry's own host, and
/// only when the user chose plain HTTP for it.
fn realm_may_have_credentials(
    realm: &str,
    registry: &str,
    plain_http: bool,
    token_hosts: &[String],
) -> Result<(), String> {
    let (scheme, rest) = realm
        .split_once("://")
        .ok_or_else(|| format!("the realm {realm:?} is no URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!("the realm {realm:?} carries user information"));
    }
    let host_of = |a: &str| {
        a.rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            .map_or(a, |(h, _)| h)
            .to_ascii_lowercase()
    };
    let same_host = host_of(authority) == host_of(registry);
    let allowed = token_hosts.iter().any(|h| {
        h.eq_ignore_ascii_case(authority) || host_of(h) == host_of(authority) && !h.contains(':')
    });
    match scheme.to_ascii_lowercase().as_str() {
        "https" if same_host || allowed => Ok(()),
        "https" => Err(format!(
            "the token service {authority} is not the registry's host {registry} (allow it in the registry's token_hosts)"
        )),
        "http" if plain_http && same_host => Ok(()),
        "http" => Err(format!(
            "the token service {authority} is plain HTTP{}",
            if same_host { " and the registry is not" } else { " on another host" }
        )),
        other => Err(format!("the realm's scheme {other:?} is neither https nor http")),
    }
}

/// `: CODE: message` from a registry's error body (`{"errors":[{"code","message"}]}`), else
/// `: ` and the start of the body, else nothing.
fn error_message(response: ureq::Response) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let body = read_small(response, 4096).unwrap_or_default();
    if let Ok(errors) = serde_json::from_slice::<Errors>(&body) {
        let text: Vec<String> = errors
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect();
        if !text.is_empty() {
            let text: String = text
                .join("; ")
                .chars()
                .filter(|c| !c.is_control())
                .take(300)
                .collect();
            return format!(": {text}");
        }
    }
    let text: String = String::from_utf8_lossy(&body)
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if text.is_empty() {
        text
    } else {
        format!(": {text}")
    }
}

/// A `WWW-Authenticate` challenge: its scheme (lowercase) and its parameters (keys lowercase,
/// quoted values unquoted). Public for the fuzzer.
pub fn parse_challenge(header: &str) -> (String, BTreeMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.next_if(|&c| c == ',' || c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|&c| c != '=' && c != ',') {
            key.push(c);
        }
        if key.is_empty() && chars.peek().is_none() {
            break;
        }
        if chars.next_if_eq(&'=').is_none() {
            continue; // a token68 or a bare word: not ours
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|&c| c != ',') {
                value.push(c);
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    (scheme.to_ascii_lowercase(), params)
}

/// A TLS configuration trusting the Mozilla roots and the certificates in the PEM file `path`.
fn tls_config(path: &std::path::Path) -> Result<rustls::ClientConfig, RegistryError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |message: String| RegistryError::CaFile {
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".to_owned()));
    }
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in certs {
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::oci::{
        MEDIA_DOCKER_LAYER, MEDIA_LAYER_GZIP, MEDIA_LAYER_TAR, MEDIA_LAYER_ZSTD,
    };
    use crate::store::tests::temp_store;
    use serde_json::json;
    use std::collections::{BTreeSet, HashMap};
    use std::fs;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::Path;
    use std::sync::Mutex;

    const TOKEN: &str = "t0ken";

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Auth {
        Open,
        /// `/v2/` wants a bearer token, which `/token` gives for alice's basic credentials.
        Bearer,
        /// `/v2/` wants alice's basic credentials.
        Basic,
    }

    fn alice() -> Credentials {
        Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        }
    }

    /// What the test registry serves, and the requests it saw.
    struct Served {
        auth: Auth,
        /// Tag or digest → (content type, manifest).
        manifests: HashMap<String, (String, Vec<u8>)>,
        blobs: HashMap<Digest, Vec<u8>>,
        /// A Content-Length announced instead of the true one.
        lengths: HashMap<Digest, u64>,
        log: Vec<String>,
    }

    /// A registry on 127.0.0.1 serving `/v2/<repo>/manifests/<ref>`, `/v2/<repo>/blobs/<digest>`
    /// and `/token`, one thread a connection, every response `Connection: close`.
    struct TestRegistry {
        addr: SocketAddr,
        served: Arc<Mutex<Served>>,
    }

    impl TestRegistry {
        fn start(auth: Auth) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let served = Arc::new(Mutex::new(Served {
                auth,
                manifests: HashMap::new(),
                blobs: HashMap::new(),
                lengths: HashMap::new(),
                log: Vec::new(),
            }));
            let shared = served.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let served = shared.clone();
                    std::thread::spawn(move || {
                        let _ = serve(stream, addr, &served);
                    });
                }
            });
            Self { addr, served }
        }

        fn reference(&self, rest: &str) -> Reference {
            format!("{}/{rest}", self.addr).parse().unwrap()
        }

        fn blob(&self, data: &[u8]) -> Digest {
            let d = Digest::of(data);
            self.served.lock().unwrap().blobs.insert(d, data.to_vec());
            d
        }

        fn manifest(&self, key: &str, media_type: &str, data: &[u8]) {
            self.served
                .lock()
                .unwrap()
                .manifests
                .insert(key.to_owned(), (media_type.to_owned(), data.to_vec()));
        }

        /// Serves a linux/`arch` image (manifest by digest, config, layers) and returns the
        /// manifest's descriptor.
        fn image(
            &self,
            arch: &str,
            manifest_type: &str,
            layers: &[(&str, &[u8])],
        ) -> serde_json::Value {
            let config = json!({"architecture": arch, "os": "linux",
                "config": {"Cmd": ["/bin/true"]}, "rootfs": {"type": "layers", "diff_ids": []}})
            .to_string();
            let desc = |media_type: &str, data: &[u8]| {
                json!({"mediaType": media_type, "digest": self.blob(data).to_string(),
                    "size": data.len()})
            };
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": manifest_type,
                "config": desc("application/vnd.oci.image.config.v1+json", config.as_bytes()),
                "layers": layers.iter().map(|(t, l)| desc(t, l)).collect::<Vec<_>>(),
            })
            .to_string();
            let digest = Digest::of(manifest.as_bytes());
            self.manifest(&digest.to_string(), manifest_type, manifest.as_bytes());
            json!({"mediaType": manifest_type, "digest": digest.to_string(),
                "size": manifest.len(), "platform": {"architecture": arch, "os": "linux"}})
        }

        /// The requests since the last call.
        fn requests(&self) -> Vec<String> {
            std::mem::take(&mut self.served.lock().unwrap().log)
        }
    }

    fn serve(stream: TcpStream, addr: SocketAddr, served: &Mutex<Served>) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut authorization = String::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                if k.eq_ignore_ascii_case("authorization") {
                    authorization = v.trim().to_owned();
                }
            }
        }
        let mut served = served.lock().unwrap();
        served.log.push(path.clone());
        let (status, headers, body, length) = route(&path, &authorization, addr, &served);
        drop(served);
        let mut out = stream;
        let mut head = format!(
            "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\n",
            length.unwrap_or(body.len() as u64)
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        out.write_all(&body)?;
        out.flush()
    }

    type Response = (u16, Vec<(String, String)>, Vec<u8>, Option<u64>);

    fn route(path: &str, authorization: &str, addr: SocketAddr, s: &Served) -> Response {
        let json_error = |status: u16, code: &str| -> Response {
            let body = json!({"errors": [{"code": code, "message": "test registry says no"}]});
            (status, vec![], body.to_string().into_bytes(), None)
        };
        let basic = alice().basic();
        if let Some(query) = path.strip_prefix("/token?") {
            if authorization != basic || !query.contains("scope=repository") {
                return json_error(401, "DENIED");
            }
            let body = json!({"token": TOKEN}).to_string().into_bytes();
            return (200, vec![], body, None);
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return json_error(404, "NOT_FOUND");
        };
        let challenge = match s.auth {
            Auth::Bearer if authorization != format!("Bearer {TOKEN}") => Some(format!(
                "Bearer realm=\"http://{addr}/token\",service=\"test-registry\",\
                 scope=\"repository:test/img:pull\""
            )),
            Auth::Basic if authorization != basic => Some("Basic realm=\"test\"".to_owned()),
            _ => None,
        };
        if let Some(challenge) = challenge {
            let (status, _, body, _) = json_error(401, "UNAUTHORIZED");
            return (
                status,
                vec![("WWW-Authenticate".into(), challenge)],
                body,
                None,
            );
        }
        if let Some((_, reference)) = rest.rsplit_once("/manifests/") {
            return match s.manifests.get(reference) {
                Some((media_type, data)) => (
                    200,
                    vec![("Content-Type".into(), media_type.clone())],
                    data.clone(),
                    None,
                ),
                None => json_error(404, "MANIFEST_UNKNOWN"),
            };
        }
        let blob = rest
            .rsplit_once("/blobs/")
            .and_then(|(_, d)| d.parse::<Digest>().ok());
        match blob.and_then(|d| Some((d, s.blobs.get(&d)?))) {
            Some((d, data)) => (200, vec![], data.clone(), s.lengths.get(&d).copied()),
            None => json_error(404, "BLOB_UNKNOWN"),
        }
    }

    fn plain(credentials: Option<Credentials>) -> PullOptions {
        PullOptions {
            token_hosts: Vec::new(),
            plain_http: true,
            ca_file: None,
            credentials,
        }
    }

    /// The store's blob files.
    fn blob_files(root: &Path) -> BTreeSet<String> {
        fs::read_dir(root.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_pull_answers_a_token_challenge_picks_amd64_and_downloads_blobs_once() {
        let (root, store) = temp_store("pull-token");
        let registry = TestRegistry::start(Auth::Bearer);
        let arm = registry.image("arm64", MEDIA_OCI_MANIFEST, &[(MEDIA_LAYER_GZIP, b"arm")]);
        let layers: [(&str, &[u8]); 3] = [
            (MEDIA_LAYER_GZIP, b"\x1f\x8bgzip layer"),
            (MEDIA_LAYER_ZSTD, b"\x28\xb5\x2f\xfdzstd layer"),
            (MEDIA_LAYER_TAR, b"plain tar layer"),
        ];
        let amd = registry.image("amd64", MEDIA_OCI_MANIFEST, &layers);
        let index = json!({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX,
            "manifests": [arm, amd]})
        .to_string();
        registry.manifest("1.0", MEDIA_OCI_INDEX, index.as_bytes());

        let reference = registry.reference("test/img:1.0");
        let options = plain(Some(alice()));
        let (record, report) = pull(&store, &reference, "img:1", &options).unwrap();
        assert_eq!(record.manifest.to_string(), amd["digest"].as_str().unwrap());
        let got: Vec<Digest> = record.layers.iter().map(|l| l.digest).collect();
        let want: Vec<Digest> = layers.iter().map(|(_, l)| Digest::of(l)).collect();
        assert_eq!(got, want);
        assert_eq!(record.layers[1].media_type, MEDIA_LAYER_ZSTD);
        assert_eq!(store.get("img:1").unwrap(), record);
        let layer_bytes: u64 = layers.iter().map(|(_, l)| l.len() as u64).sum();
        assert_eq!(
            report.manifests_fetched, 2,
            "the index and the amd64 manifest"
        );
        assert_eq!(report.downloaded_blobs, 4, "the config and three layers");
        assert!(report.downloaded_bytes > layer_bytes);
        assert_eq!(report.reused_blobs, 0);
        let requests = registry.requests();
        assert!(
            requests.iter().any(|r| r.starts_with("/token?")),
            "{requests:?}"
        );
        let arm_layer = Digest::of(b"arm").to_string();
        assert!(!requests.iter().any(|r| r.contains(&arm_layer)));

        // Again: only the index is asked for; the token is fetched anew (a new client).
        let (again, report) = pull(&store, &reference, "img:2", &options).unwrap();
        assert_eq!(again, record);
        assert_eq!(
            report,
            PullReport {
                manifests_fetched: 1,
                downloaded_blobs: 0,
                downloaded_bytes: 0,
                reused_blobs: 5,
            }
        );
        assert_eq!(
            report.to_string(),
            "1 manifests fetched, 0 blobs downloaded (0 bytes), 5 blobs already stored"
        );
        let requests = registry.requests();
        assert!(
            !requests.iter().any(|r| r.contains("/blobs/")),
            "{requests:?}"
        );

        // By digest, stored: nothing is asked at all.
        let by_digest = registry.reference(&format!("test/img@{}", record.manifest));
        let (_, report) = pull(&store, &by_digest, "img:3", &options).unwrap();
        assert_eq!(report.manifests_fetched, 0);
        assert_eq!(registry.requests(), Vec::<String>::new());

        // Without credentials the token service refuses, and says so.
        let err = pull(&store, &reference, "img:4", &plain(None)).unwrap_err();
        assert!(matches!(err, RegistryError::Token { .. }), "{err}");
        assert!(err.to_string().contains("HTTP 401: DENIED"), "{err}");
        assert!(matches!(
            store.get("img:4"),
            Err(StoreError::NoSuchImage(_))
        ));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn docker_media_types_and_basic_auth() {
        let (root, store) = temp_store("pull-docker");
        let registry = TestRegistry::start(Auth::Basic);
        let desc = registry.image(
            "amd64",
            MEDIA_DOCKER_MANIFEST,
            &[(MEDIA_DOCKER_LAYER, b"\x1f\x8bdocker layer")],
        );
        let digest = desc["digest"].as_str().unwrap();
        let manifest = registry.served.lock().unwrap().manifests[digest].1.clone();
        // Served as plain JSON: the type comes from the manifest's mediaType.
        registry.manifest("latest", "application/json", &manifest);
        let reference = registry.reference("test/img");
        assert_eq!(
            reference.to_string(),
            format!("{}/test/img:latest", registry.addr)
        );

        let err = pull(&store, &reference, "d", &plain(None)).unwrap_err();
        assert!(
            matches!(&err, RegistryError::Unauthorized { why, .. } if why.contains("user name")),
            "{err}"
        );
        let wrong = Credentials {
            username: "alice".into(),
            password: "guess".into(),
        };
        let err = pull(&store, &reference, "d", &plain(Some(wrong))).unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        assert!(format!("{:?}", plain(Some(alice()))).contains("<redacted>"));

        let (record, report) = pull(&store, &reference, "d", &plain(Some(alice()))).unwrap();
        assert_eq!(record.manifest.to_string(), digest);
        assert_eq!(record.layers[0].media_type, MEDIA_DOCKER_LAYER);
        assert_eq!((report.manifests_fetched, report.downloaded_blobs), (1, 2));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_tampered_blob_is_rejected_nothing_is_stored_and_the_name_is_kept() {
        let (root, store) = temp_store("pull-tamper");
        let registry = TestRegistry::start(Auth::Open);
        let good = registry.image("amd64", MEDIA_OCI_MANIFEST, &[(MEDIA_LAYER_TAR, b"v1")]);
        let good_digest = good["digest"].as_str().unwrap().to_owned();
        let good_manifest = registry.served.lock().unwrap().manifests[&good_digest]
            .1
            .clone();
        registry.manifest("1", MEDIA_OCI_MANIFEST, &good_manifest);
        let reference = registry.reference("test/img:1");
        let (before, _) = pull(&store, &reference, "img", &plain(None)).unwrap();
        let fail =
            |reference: &Reference| pull(&store, reference, "img", &plain(None)).unwrap_err();
        let files = blob_files(&root);

        // A new version whose second layer the registry serves altered (same length).
        let layers: [(&str, &[u8]); 2] =
            [(MEDIA_LAYER_TAR, b"v2 base"), (MEDIA_LAYER_TAR, b"v2 top")];
        let bad = registry.image("amd64", MEDIA_OCI_MANIFEST, &layers);
        let bad_digest = bad["digest"].as_str().unwrap().to_owned();
        let bad_manifest = registry.served.lock().unwrap().manifests[&bad_digest]
            .1
            .clone();
        registry.manifest("1", MEDIA_OCI_MANIFEST, &bad_manifest);
        let top = Digest::of(b"v2 top");
        registry
            .served
            .lock()
            .unwrap()
            .blobs
            .insert(top, b"v2 TOP".to_vec());
        let err = fail(&reference);
        assert!(
            matches!(&err, RegistryError::Blob { source: StoreError::DigestMismatch { expected, .. }, .. } if *expected == top),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("/v2/test/img/blobs/{top}")),
            "{err}"
        );
        assert_eq!(
            blob_files(&root),
            files,
            "the manifest, config and base layer are gone"
        );
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        assert_eq!(store.get("img").unwrap(), before, "the name still names v1");

        // Served with a length other than its descriptor's: refused before reading.
        registry
            .served
            .lock()
            .unwrap()
            .blobs
            .insert(top, b"v2 top".to_vec());
        registry.served.lock().unwrap().lengths.insert(top, 1 << 30);
        let err = fail(&reference);
        assert!(
            matches!(err, RegistryError::Length { served, expected: 6, .. } if served == 1 << 30),
            "{err}"
        );
        // Missing: the HTTP status and the registry's words.
        registry.served.lock().unwrap().blobs.remove(&top);
        let err = fail(&reference);
        assert!(
            matches!(&err, RegistryError::Status { status: 404, message, .. } if message.contains("BLOB_UNKNOWN")),
            "{err}"
        );
        assert_eq!(blob_files(&root), files);

        // A manifest named by a digest it does not have.
        let wrong = registry.reference(&format!("test/img@{}", Digest::of(b"other")));
        registry.manifest(
            &Digest::of(b"other").to_string(),
            MEDIA_OCI_MANIFEST,
            &good_manifest,
        );
        let err = fail(&wrong);
        assert!(matches!(err, RegistryError::ManifestDigest { .. }), "{err}");
        // Too large a manifest, and not JSON.
        registry.manifest(
            "big",
            MEDIA_OCI_MANIFEST,
            &vec![b' '; (MAX_JSON_BLOB + 1) as usize],
        );
        let err = fail(&registry.reference("test/img:big"));
        assert!(
            matches!(err, RegistryError::ManifestTooLarge { .. }),
            "{err}"
        );
        registry.manifest("junk", MEDIA_OCI_MANIFEST, b"<html>");
        let err = fail(&registry.reference("test/img:junk"));
        assert!(
            matches!(err, RegistryError::Image(ImportError::Json { .. })),
            "{err}"
        );
        let err = fail(&registry.reference("test/img:none"));
        assert!(
            err.to_string().contains("HTTP 404: MANIFEST_UNKNOWN"),
            "{err}"
        );

        assert_eq!(blob_files(&root), files);
        assert_eq!(store.get("img").unwrap(), before);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn concurrent_pulls_of_one_image_all_succeed() {
        let (root, store) = temp_store("pull-concurrent");
        let store = Arc::new(store);
        let registry = TestRegistry::start(Auth::Open);
        let big: Vec<u8> = (0..(2 << 20)).map(|i| (i % 253) as u8).collect();
        let desc = registry.image("amd64", MEDIA_OCI_MANIFEST, &[(MEDIA_LAYER_TAR, &big)]);
        let digest = desc["digest"].as_str().unwrap().to_owned();
        let reference = registry.reference(&format!("test/img@{digest}"));
        let pulls: Vec<_> = (0..4)
            .map(|i| {
                let (store, reference) = (store.clone(), reference.clone());
                std::thread::spawn(move || {
                    pull(&store, &reference, &format!("c:{i}"), &plain(None))
                })
            })
            .collect();
        for p in pulls {
            let (record, _) = p.join().unwrap().unwrap();
            assert_eq!(record.manifest.to_string(), digest);
        }
        assert_eq!(fs::read(store.blob_path(&Digest::of(&big))).unwrap(), big);
        assert_eq!(store.list().unwrap().len(), 4);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn references_parse_and_bad_ones_say_why() {
        let r: Reference = "127.0.0.1:5000/busybox:latest".parse().unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.tag.as_deref(),
                r.digest
            ),
            ("127.0.0.1:5000", "busybox", Some("latest"), None)
        );
        let d = Digest::of(b"x");
        let r: Reference = format!("localhost:5000/a/b-c/d_e@{d}").parse().unwrap();
        assert_eq!(
            (r.repository.as_str(), r.tag.as_deref(), r.digest),
            ("a/b-c/d_e", None, Some(d))
        );
        assert_eq!(r.manifest_reference(), d.to_string());
        assert_eq!(r.to_string(), format!("localhost:5000/a/b-c/d_e@{d}"));
        let r: Reference = format!("registry.example/x:v1.2@{d}").parse().unwrap();
        assert_eq!((r.tag.as_deref(), r.digest), (Some("v1.2"), Some(d)));
        let r: Reference = "localhost/x".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.tag_or_latest()),
            ("localhost", "latest")
        );

        for (bad, why) in [
            ("busybox", "no registry host"),
            ("library/busybox:1", "no registry host"),
            ("127.0.0.1:5000/Busybox", "lowercase"),
            ("127.0.0.1:5000/a//b", "lowercase"),
            ("127.0.0.1:5000/a/../b", "lowercase"),
            ("127.0.0.1:5000/a?x=1", "lowercase"),
            ("127.0.0.1:5000/a:-x", "tag"),
            ("127.0.0.1:5000/a:b c", "tag"),
            ("127.0.0.1:5000/a@sha256:abc", "digest"),
            ("127.0.0.1:5000/a@md5:abc", "digest"),
            ("ho st:5/a", "host"),
        ] {
            let err = bad.parse::<Reference>().unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn credentials_go_only_to_realms_the_user_trusts() {
        let ok = |realm: &str, plain: bool, hosts: &[&str]| {
            let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
            realm_may_have_credentials(realm, "reg.example:5000", plain, &hosts)
        };
        assert!(
            ok("https://reg.example/token", false, &[]).is_ok(),
            "the registry's host"
        );
        assert!(ok("https://REG.example:443/token?x=1", false, &[]).is_ok());
        assert!(
            ok("https://auth.example/token", false, &[]).is_err(),
            "another host"
        );
        assert!(
            ok("https://auth.example/token", false, &["auth.example"]).is_ok(),
            "allowed"
        );
        assert!(ok("https://auth.example:8443/t", false, &["auth.example:8443"]).is_ok());
        assert!(ok("https://auth.example:8443/t", false, &["auth.example:9000"]).is_err());
        assert!(
            ok("http://reg.example:5000/token", true, &[]).is_ok(),
            "plain registry"
        );
        assert!(
            ok("http://reg.example/token", false, &[]).is_err(),
            "plain realm, TLS registry"
        );
        assert!(
            ok("http://auth.example/token", true, &["auth.example"]).is_err(),
            "plain, elsewhere"
        );
        assert!(
            ok("https://reg.example@evil.example/token", false, &[]).is_err(),
            "userinfo"
        );
        assert!(ok("ftp://reg.example/token", false, &[]).is_err());
        assert!(ok("reg.example/token", false, &[]).is_err());
    }

    #[test]
    fn a_token_realm_on_another_host_gets_no_credentials() {
        let (root, store) = temp_store("realm-elsewhere");
        let registry = TestRegistry::start(Auth::Bearer);
        let index = json!({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX,
            "manifests": [registry.image("amd64", MEDIA_OCI_MANIFEST, &[(MEDIA_LAYER_TAR, b"x")])]})
        .to_string();
        registry.manifest("1.0", MEDIA_OCI_INDEX, index.as_bytes());
        // The realm names 127.0.0.1; reached as "localhost", the registry is another host.
        let reference = registry.reference("test/img:1.0");
        let elsewhere = Reference {
            registry: reference.registry.replace("127.0.0.1", "localhost"),
            ..reference.clone()
        };
        let mut options = plain(Some(alice()));
        let err = pull(&store, &elsewhere, "img:1", &options).unwrap_err();
        assert!(err.to_string().contains("credentials not sent"), "{err}");
        assert!(
            registry.requests().iter().all(|r| !r.contains("/token")),
            "no token request: {:?}",
            registry.requests()
        );
        // Allowed, it gets them (over plain HTTP only because it is the registry's own host
        // by address and the registry is plain HTTP: here the allowed host list names it).
        options.token_hosts = vec!["127.0.0.1".to_owned()];
        let err = pull(&store, &elsewhere, "img:1", &options).unwrap_err();
        assert!(
            err.to_string().contains("plain HTTP on another host"),
            "{err}"
        );
        pull(&store, &reference, "img:1", &plain(Some(alice()))).unwrap();
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn challenges_parse() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        assert_eq!(p["service"], "reg");
        let (scheme, p) = parse_challenge(r#"Basic realm="a \"quoted\" realm", charset=UTF-8"#);
        assert_eq!(scheme, "basic");
        assert_eq!(p["realm"], r#"a "quoted" realm"#);
        assert_eq!(p["charset"], "UTF-8");
        assert_eq!(parse_challenge("Negotiate abc==").0, "negotiate");
        assert!(parse_challenge("").1.is_empty());
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let path = std::env::temp_dir().join(format!("skiff-ca-{}.pem", std::process::id()));
        fs::write(&path, "not a certificate\n").unwrap();
        let err = tls_config(&path).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        fs::remove_file(&path).unwrap();
        let err = tls_config(&path).unwrap_err();
        assert!(matches!(err, RegistryError::CaFile { .. }), "{err}");
    }
}
