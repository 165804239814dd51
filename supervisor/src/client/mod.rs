//! `plugd` as a client of a running plugd's admin API: the verbs `plugins`, `plugin`,
//! `enable`, `disable`, `reload`, `restart`, `install`, `uninstall`, `logs`, `events`,
//! `workers` and `stats`, built on the same `plugd-api` types as the server.
//!
//! Exit codes scripts can rely on ([`Failure::code`]): 0 ok, 1 error (unreachable, refused,
//! server error), 2 usage (a bad flag, or a request the server calls malformed), 3 not found,
//! 4 conflict. Every failure is one line on stderr naming what failed.

mod follow;
mod releases;
mod settings;
mod sse;
pub mod verbs;

use plugd_api::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use std::time::Duration;

pub use verbs::{run, ClientArgs, Verb};

/// Time to connect to plugd.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time one ordinary request may take (a `--wait` adds its own).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time an install may take (uploading up to 64 MiB and unpacking it).
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a verb failed, with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// The exit code: 1, 2, 3 or 4.
    pub code: u8,
    /// One line naming what failed.
    pub message: String,
}

impl Failure {
    /// A failure with exit code 1.
    pub fn error(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }

    /// A usage failure (exit code 2).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    /// The failure an error answer of the server means.
    fn from_answer(status: StatusCode, body: &str) -> Failure {
        let (error, detail) = match serde_json::from_str::<ErrorBody>(body) {
            Ok(e) => (e.error, e.detail),
            Err(_) => (
                status.canonical_reason().unwrap_or("error").to_owned(),
                body.trim().chars().take(300).collect(),
            ),
        };
        let mut message = format!("{} {error}: {detail}", status.as_u16());
        if status == StatusCode::UNAUTHORIZED {
            message.push_str(" (set --token or PLUGD_TOKEN to an admin or viewer token)");
        }
        let code = match status {
            StatusCode::BAD_REQUEST => 2,
            StatusCode::NOT_FOUND => 3,
            StatusCode::CONFLICT => 4,
            _ => 1,
        };
        Failure { code, message }
    }
}

/// A connection to one plugd's admin API.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token never appears in a debug print.
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A client of the plugd at `url` (such as `http://127.0.0.1:8080`) with `token`.
    pub fn new(url: &str, token: Option<String>) -> Result<Client, Failure> {
        let base = url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::usage(format!(
                "--url must be an http:// address such as http://127.0.0.1:8080, not {url:?}"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| Failure::error(format!("cannot build an HTTP client: {e}")))?;
        Ok(Client { http, base, token })
    }

    /// The address of plugd.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}/admin{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request` (`what` names it in errors) and reads its JSON answer.
    async fn send<T: DeserializeOwned>(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, Failure> {
        let response = request
            .send()
            .await
            .map_err(|e| self.unreachable(what, e))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| self.unreachable(what, e))?;
        if !status.is_success() {
            let failure = Failure::from_answer(status, &body);
            return Err(Failure {
                message: format!("{what}: {}", failure.message),
                ..failure
            });
        }
        serde_json::from_str(&body).map_err(|e| {
            Failure::error(format!(
                "{what}: the answer of {} is not what this plugd client understands ({e}); are client and server the same version?",
                self.base
            ))
        })
    }

    fn unreachable(&self, what: &str, e: reqwest::Error) -> Failure {
        let why = if e.is_timeout() {
            "timed out".to_owned()
        } else if e.is_connect() {
            // The innermost cause says it best ("Connection refused").
            let mut source: &dyn std::error::Error = &e;
            while let Some(inner) = source.source() {
                source = inner;
            }
            source.to_string()
        } else {
            e.to_string()
        };
        Failure::error(format!(
            "{what}: cannot reach plugd at {}: {why} (set --url or PLUGD_URL)",
            self.base
        ))
    }

    /// `GET /admin{path}` with `query`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        query: &impl serde::Serialize,
    ) -> Result<T, Failure> {
        let request = self
            .request(Method::GET, path)
            .query(query)
            .timeout(REQUEST_TIMEOUT);
        self.send(what, request).await
    }

    /// `POST /admin{path}` with `query` and no body; `wait` extends the timeout.
    pub async fn post<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        query: &impl serde::Serialize,
        wait: Duration,
    ) -> Result<T, Failure> {
        let request = self
            .request(Method::POST, path)
            .query(query)
            .timeout(REQUEST_TIMEOUT + wait);
        self.send(what, request).await
    }

    /// `GET /admin{path}` with `query`, answered with bytes: the body and its `ETag`.
    pub async fn download(
        &self,
        what: &str,
        path: &str,
        query: &impl serde::Serialize,
    ) -> Result<(Vec<u8>, Option<String>), Failure> {
        let response = self
            .request(Method::GET, path)
            .query(query)
            .timeout(INSTALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(what, e))?;
        let status = response.status();
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_owned());
        let body = response
            .bytes()
            .await
            .map_err(|e| self.unreachable(what, e))?;
        if !status.is_success() {
            let failure = Failure::from_answer(status, &String::from_utf8_lossy(&body));
            return Err(Failure {
                message: format!("{what}: {}", failure.message),
                ..failure
            });
        }
        Ok((body.to_vec(), etag))
    }

    /// `POST /admin/plugins/install` (with `query`) with the bundle's bytes.
    pub async fn install<T: DeserializeOwned>(
        &self,
        what: &str,
        bundle: Vec<u8>,
        query: &impl serde::Serialize,
    ) -> Result<T, Failure> {
        let request = self
            .request(Method::POST, "/plugins/install")
            .query(query)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bundle)
            .timeout(INSTALL_TIMEOUT);
        self.send(what, request).await
    }

    /// `PATCH /admin{path}` with a JSON body; with `generation`, `If-Match` on it.
    pub async fn patch_if<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        body: &impl serde::Serialize,
        generation: Option<i64>,
    ) -> Result<T, Failure> {
        let mut request = self
            .request(Method::PATCH, path)
            .json(body)
            .timeout(REQUEST_TIMEOUT);
        if let Some(generation) = generation {
            request = request.header(reqwest::header::IF_MATCH, format!("\"{generation}\""));
        }
        self.send(what, request).await
    }

    /// `DELETE /admin{path}`.
    pub async fn delete<T: DeserializeOwned>(&self, what: &str, path: &str) -> Result<T, Failure> {
        let request = self.request(Method::DELETE, path).timeout(REQUEST_TIMEOUT);
        self.send(what, request).await
    }

    /// Opens `GET /admin/stream` with `query` and waits for its `hello`: every event after
    /// that is delivered by [`Subscription::next`].
    pub async fn subscribe(
        &self,
        what: &str,
        query: &plugd_api::StreamQuery,
    ) -> Result<Subscription, Failure> {
        let response = self
            .request(Method::GET, "/stream")
            .query(query)
            .send()
            .await
            .map_err(|e| self.unreachable(what, e))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let failure = Failure::from_answer(status, &body);
            return Err(Failure {
                message: format!("{what}: {}", failure.message),
                ..failure
            });
        }
        let mut subscription = Subscription {
            client: self.clone(),
            what: what.to_owned(),
            body: Box::pin(response.bytes_stream()),
            parser: sse::Parser::default(),
            ready: std::collections::VecDeque::new(),
        };
        match subscription.next().await? {
            plugd_api::StreamEvent::Hello { .. } => Ok(subscription),
            other => Err(Failure::error(format!(
                "{what}: the stream began with {:?}, not hello",
                other.kind()
            ))),
        }
    }
}

/// Time without a byte from the stream after which plugd is taken for gone (it sends a
/// keep-alive every 15 s).
pub const STREAM_SILENCE: Duration = Duration::from_secs(45);

/// An open `GET /admin/stream`.
pub struct Subscription {
    client: Client,
    what: String,
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    parser: sse::Parser,
    ready: std::collections::VecDeque<plugd_api::StreamEvent>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next event; an error when the stream ends or goes silent.
    pub async fn next(&mut self) -> Result<plugd_api::StreamEvent, Failure> {
        use futures_util::StreamExt;
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(event);
            }
            let what = &self.what;
            let chunk = match tokio::time::timeout(STREAM_SILENCE, self.body.next()).await {
                Err(_) => {
                    return Err(Failure::error(format!(
                        "{what}: nothing from plugd at {} for {STREAM_SILENCE:?}",
                        self.client.base
                    )))
                }
                Ok(None) => {
                    return Err(Failure::error(format!(
                        "{what}: plugd at {} ended the stream (it is shutting down?)",
                        self.client.base
                    )))
                }
                Ok(Some(chunk)) => chunk.map_err(|e| self.client.unreachable(what, e))?,
            };
            let events = self
                .parser
                .push(&chunk)
                .map_err(|e| Failure::error(format!("{what}: {e}")))?;
            // A kind this client does not know comes from a newer server: skipped.
            self.ready.extend(
                events
                    .iter()
                    .filter_map(|data| serde_json::from_str(data).ok()),
            );
        }
    }
}
