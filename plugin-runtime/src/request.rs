//! The request a handler receives: the proxied HTTP request plus convenient accessors.

use crate::kv::{Host, Kv};
use crate::response::HttpError;
use crate::stream::BodyStream;
use plugd_protocol::message::http::HttpRequestBuf;
use serde::de::DeserializeOwned;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// An HTTP request forwarded by the supervisor to one of this plugin's routes.
#[derive(Debug, Clone)]
pub struct Request {
    inner: HttpRequestBuf,
    host: Host,
    kv: Kv,
    stream: Option<Arc<Mutex<Option<BodyStream>>>>,
}

impl Request {
    pub(crate) fn new(inner: HttpRequestBuf, host: Host) -> Self {
        Request {
            inner,
            kv: host.kv(),
            host,
            stream: None,
        }
    }

    pub(crate) fn with_body_stream(mut self, body: BodyStream) -> Self {
        self.stream = Some(Arc::new(Mutex::new(Some(body))));
        self
    }

    /// On a streaming route ([`crate::Plugin::stream`]), the request body as it arrives; the
    /// first call takes it, later ones (and other routes) get `None`. [`Request::body`] is empty
    /// there.
    pub fn body_stream(&self) -> Option<BodyStream> {
        self.stream
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The plugin's key-value store, kept by the supervisor.
    pub fn kv(&self) -> &Kv {
        &self.kv
    }

    /// The supervisor: other plugins' services and hooks.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The HTTP method, in upper case.
    pub fn method(&self) -> &str {
        self.inner.method()
    }

    /// The path below the plugin's mount point, such as `/items/42`.
    pub fn path(&self) -> &str {
        self.inner.path()
    }

    /// The route pattern that matched, such as `/items/{id}`.
    pub fn route(&self) -> &str {
        self.inner.route()
    }

    /// The value captured by `{name}` in the route pattern.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.inner.param(name)
    }

    /// The raw query string, without `?`.
    pub fn query_string(&self) -> &str {
        self.inner.query()
    }

    /// The first value of query parameter `name`, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.inner.query().as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner
            .headers()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// All headers as (name, value) pairs, names in lower case, in the order received; a name
    /// may repeat.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + Clone + '_ {
        self.inner.headers()
    }

    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        &self.inner.body
    }

    /// The body as UTF-8 text, or a 400 error.
    pub fn text(&self) -> Result<&str, HttpError> {
        std::str::from_utf8(&self.inner.body)
            .map_err(|e| HttpError::bad_request(format!("request body is not UTF-8: {e}")))
    }

    /// The body parsed as JSON, or a 400 error that says what was wrong with it.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.inner.body)
            .map_err(|e| HttpError::bad_request(format!("request body is not valid JSON: {e}")))
    }

    /// The name of the token the caller presented, when the route required a permission (set
    /// by plugd from a verified token; a client cannot forge it).
    pub fn caller(&self) -> Option<&str> {
        self.header("x-plugd-caller")
    }

    /// The permissions granted to the caller's token, when the route required one.
    pub fn caller_permissions(&self) -> Vec<&str> {
        self.header("x-plugd-permissions")
            .map(|p| p.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }

    /// The request id the supervisor assigned (also in the `x-request-id` header).
    pub fn request_id(&self) -> &str {
        self.inner.request_id()
    }

    /// Time left before the supervisor stops waiting for the answer.
    pub fn time_left(&self) -> Duration {
        let deadline = plugd_protocol::time::from_unix_ms(self.inner.deadline_unix_ms);
        deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}
