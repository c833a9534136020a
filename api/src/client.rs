//! The `skiff` CLI's client of the `/v1` API: HTTP/1.1 (hyper) over skiffd's Unix socket or TCP,
//! with the bearer token, and the API's errors as one line.

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

/// Errors talking to skiffd.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("SKIFF_HOST {0:?}: expected unix:///PATH or http://HOST:PORT")]
    Host(String),
    #[error("cannot reach skiffd at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to skiffd: {0}")]
    Http(#[from] hyper::Error),
    #[error("talking to skiffd: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("skiffd answered {status}: {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("skiffd's answer is not what was expected: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Where skiffd is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    Tcp(String),
}

impl std::str::FromStr for Target {
    type Err = ClientError;
    fn from_str(s: &str) -> Result<Self, ClientError> {
        if let Some(path) = s.strip_prefix("unix://") {
            return Ok(Target::Unix(path.into()));
        }
        if let Some(rest) = s.strip_prefix("http://") {
            let authority = rest.trim_end_matches('/');
            if !authority.is_empty() && !authority.contains('/') {
                return Ok(Target::Tcp(authority.to_owned()));
            }
        }
        if s.starts_with('/') {
            return Ok(Target::Unix(s.into()));
        }
        Err(ClientError::Host(s.to_owned()))
    }
}

/// A client of one skiffd.
#[derive(Debug, Clone)]
pub struct Client {
    pub target: Target,
    pub token: Option<String>,
}

type Response = hyper::Response<hyper::body::Incoming>;

impl Client {
    async fn send(&self, request: Request<Full<Bytes>>) -> Result<Response, ClientError> {
        let target = format!("{:?}", self.target);
        let connect_err = |source| ClientError::Connect {
            target: target.clone(),
            source,
        };
        macro_rules! over {
            ($stream:expr) => {{
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new($stream)).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok(sender.send_request(request).await?)
            }};
        }
        match &self.target {
            Target::Unix(path) => over!(tokio::net::UnixStream::connect(path)
                .await
                .map_err(connect_err)?),
            Target::Tcp(addr) => over!(tokio::net::TcpStream::connect(addr)
                .await
                .map_err(connect_err)?),
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let host = match &self.target {
            Target::Tcp(addr) => addr.as_str(),
            Target::Unix(_) => "skiffd",
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        if let Some(token) = &self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(json) => {
                builder = builder.header("content-type", "application/json");
                Full::new(Bytes::from(serde_json::to_vec(json)?))
            }
            None => Full::new(Bytes::new()),
        };
        Ok(builder.body(body)?)
    }

    /// Sends a request; an error status becomes [`ClientError::Api`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, ClientError> {
        let response = self.send(self.request(method, path, body)?).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.into_body().collect().await?.to_bytes();
        let error: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        Err(ClientError::Api {
            status: status.as_u16(),
            code: error["code"]
                .as_str()
                .unwrap_or(status.canonical_reason().unwrap_or(""))
                .to_owned(),
            message: error["message"].as_str().map_or_else(
                || String::from_utf8_lossy(&bytes).into_owned(),
                str::to_owned,
            ),
        })
    }

    /// A JSON call.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        let response = self.call(method, path, body).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(serde_json::from_value(serde_json::Value::Null)?);
        }
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// A GET whose answer is NDJSON, each line passed on as it arrives.
    pub async fn lines(
        &self,
        path: &str,
        mut on_line: impl FnMut(serde_json::Value),
    ) -> Result<(), ClientError> {
        let mut body = self.call(Method::GET, path, None).await?.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(n) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=n).collect();
                if let Ok(value) = serde_json::from_slice(&line) {
                    on_line(value);
                }
            }
        }
        Ok(())
    }
}

/// Percent-encodes a query value or path segment.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse() {
        assert_eq!(
            "unix:///run/s.sock".parse::<Target>().unwrap(),
            Target::Unix("/run/s.sock".into())
        );
        assert_eq!(
            "http://127.0.0.1:7070/".parse::<Target>().unwrap(),
            Target::Tcp("127.0.0.1:7070".into())
        );
        assert!("ftp://x".parse::<Target>().is_err());
        assert_eq!(encode("a:b/c d"), "a%3Ab%2Fc%20d");
    }
}
