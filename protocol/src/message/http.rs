//! HTTP messages: the supervisor forwards a request for one of the plugin's routes and the plugin
//! answers with a response.

use super::{is_false, Method};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `http`: supervisor → plugin, one per proxied HTTP request.
#[derive(Debug)]
pub struct Http;

impl Method for Http {
    const NAME: &'static str = "http";
    type Params = HttpRequest;
    type Result = HttpResponse;
}

/// An HTTP request for one of the plugin's routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// An id for logs and tracing, unique per request (also sent as `x-request-id`).
    pub request_id: String,
    /// HTTP method in upper case.
    pub method: String,
    /// The path below the plugin's mount point, starting with `/`.
    pub path: String,
    /// The route pattern that matched, as the plugin declared it.
    pub route: String,
    /// Values captured by the pattern's `{name}` segments.
    pub params: BTreeMap<String, String>,
    /// The raw query string without `?` (empty when there is none).
    pub query: String,
    /// Header names (lower case) and values, in order; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// The request body (empty when `stream` is set: the body follows in chunks).
    pub body: Bytes,
    /// When the supervisor stops waiting, in milliseconds since the Unix epoch (for a stream,
    /// for the response head).
    pub deadline_unix_ms: u64,
    /// 1.2: the body follows as `stream.data` chunks and a `stream.end` (routes declared with
    /// `stream`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
    /// 1.2: the client asks for a WebSocket on a route declared with `websocket`; answer 101 to
    /// accept it, any other status to refuse.
    #[serde(default, skip_serializing_if = "is_false")]
    pub websocket: bool,
}

/// The plugin's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// Header names and values, in order; may be omitted or nil (no headers).
    #[serde(default, deserialize_with = "nil_as_default")]
    pub headers: Vec<(String, String)>,
    /// The response body; may be omitted or nil (empty). With `stream`, the body's first bytes.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub body: Bytes,
    /// 1.2: the rest of the body follows as `stream.data` chunks and a `stream.end` (only on a
    /// route declared with `stream`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
}

/// Reads nil as the field's default, as if it had been omitted.
fn nil_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}
