//! HTTP messages: the supervisor forwards a request for one of the plugin's routes and the plugin
//! answers with a response.

use super::{is_false, Method};
use crate::envelope::encode_request_packed;
use crate::error::EncodeError;
use crate::pack;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
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

/// An [`HttpRequest`] made of borrowed parts, packed straight into its frame: the proxy path
/// encodes the client's request without copying its headers into owned strings first. The
/// frame is byte for byte the one [`HttpRequest`] encodes to.
#[derive(Debug, Clone)]
pub struct HttpRequestView<'a> {
    /// See [`HttpRequest::request_id`].
    pub request_id: &'a str,
    /// See [`HttpRequest::method`].
    pub method: &'a str,
    /// See [`HttpRequest::path`].
    pub path: &'a str,
    /// See [`HttpRequest::route`].
    pub route: &'a str,
    /// See [`HttpRequest::params`].
    pub params: &'a BTreeMap<String, String>,
    /// See [`HttpRequest::query`].
    pub query: &'a str,
    /// See [`HttpRequest::headers`].
    pub headers: &'a [(&'a str, Cow<'a, str>)],
    /// See [`HttpRequest::body`].
    pub body: &'a Bytes,
    /// See [`HttpRequest::deadline_unix_ms`].
    pub deadline_unix_ms: u64,
    /// See [`HttpRequest::stream`].
    pub stream: bool,
    /// See [`HttpRequest::websocket`].
    pub websocket: bool,
}

impl HttpRequestView<'_> {
    /// The owned request these parts make.
    pub fn to_owned_request(&self) -> HttpRequest {
        HttpRequest {
            request_id: self.request_id.to_owned(),
            method: self.method.to_owned(),
            path: self.path.to_owned(),
            route: self.route.to_owned(),
            params: self.params.clone(),
            query: self.query.to_owned(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone().into_owned()))
                .collect(),
            body: self.body.clone(),
            deadline_unix_ms: self.deadline_unix_ms,
            stream: self.stream,
            websocket: self.websocket,
        }
    }

    /// Encodes the `http` request with id `id` as a complete frame.
    pub fn encode(&self, id: u64, max_len: usize) -> Result<Bytes, EncodeError> {
        // Field names, markers and lengths take less than this; the frame grows if not.
        let mut capacity = 192 + self.request_id.len() + self.method.len() + self.path.len();
        capacity += self.route.len() + self.query.len() + self.body.len();
        for (k, v) in self.params {
            capacity += k.len() + v.len() + 10;
        }
        for (k, v) in self.headers {
            capacity += k.len() + v.len() + 11;
        }
        encode_request_packed::<Http>(id, capacity, max_len, |buf| {
            // The fields in `HttpRequest`'s order, as `rmp_serde` writes a struct: a map.
            let fields = 9 + usize::from(self.stream) + usize::from(self.websocket);
            pack::map_len(buf, fields);
            pack::str(buf, "request_id");
            pack::str(buf, self.request_id);
            pack::str(buf, "method");
            pack::str(buf, self.method);
            pack::str(buf, "path");
            pack::str(buf, self.path);
            pack::str(buf, "route");
            pack::str(buf, self.route);
            pack::str(buf, "params");
            pack::map_len(buf, self.params.len());
            for (k, v) in self.params {
                pack::str(buf, k);
                pack::str(buf, v);
            }
            pack::str(buf, "query");
            pack::str(buf, self.query);
            pack::str(buf, "headers");
            pack::array_len(buf, self.headers.len());
            for (k, v) in self.headers {
                pack::array_len(buf, 2);
                pack::str(buf, k);
                pack::str(buf, v);
            }
            pack::str(buf, "body");
            pack::bin(buf, self.body);
            pack::str(buf, "deadline_unix_ms");
            pack::uint(buf, self.deadline_unix_ms);
            if self.stream {
                pack::str(buf, "stream");
                pack::bool(buf, true);
            }
            if self.websocket {
                pack::str(buf, "websocket");
                pack::bool(buf, true);
            }
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::encode_request;

    #[test]
    fn a_view_encodes_to_the_frame_of_the_owned_request() {
        let params = BTreeMap::from([
            ("id".to_owned(), "42".to_owned()),
            ("name".to_owned(), "ü".repeat(40)),
        ]);
        let many: Vec<(String, String)> = (0..20)
            .map(|i| (format!("x-h{i}"), "v".repeat(i * 20)))
            .collect();
        let cases: [(&str, Vec<(&str, Cow<'_, str>)>, Bytes, bool, bool); 4] = [
            ("", vec![], Bytes::new(), false, false),
            (
                "q=1",
                vec![
                    ("host", Cow::Borrowed("example")),
                    ("x-odd", Cow::Owned("caf\u{fffd}".to_owned())),
                ],
                Bytes::from_static(b"body"),
                true,
                false,
            ),
            (
                &"a".repeat(300),
                many.iter()
                    .map(|(k, v)| (k.as_str(), Cow::Borrowed(v.as_str())))
                    .collect(),
                Bytes::from(vec![7u8; 70_000]),
                false,
                true,
            ),
            (
                "z",
                vec![("a", Cow::Borrowed(""))],
                Bytes::new(),
                true,
                true,
            ),
        ];
        for (query, headers, body, stream, websocket) in cases {
            let view = HttpRequestView {
                request_id: "req-1",
                method: "POST",
                path: "/items/42",
                route: "/items/{id}",
                params: &params,
                query,
                headers: &headers,
                body: &body,
                deadline_unix_ms: 1_790_000_000_123,
                stream,
                websocket,
            };
            let owned = view.to_owned_request();
            let expected = encode_request::<Http>(77, &owned, usize::MAX).unwrap();
            assert_eq!(view.encode(77, usize::MAX).unwrap(), expected);
        }
    }

    #[test]
    fn a_view_over_the_frame_limit_is_refused() {
        let params = BTreeMap::new();
        let body = Bytes::from(vec![0u8; 4096]);
        let view = HttpRequestView {
            request_id: "r",
            method: "GET",
            path: "/",
            route: "/",
            params: &params,
            query: "",
            headers: &[],
            body: &body,
            deadline_unix_ms: 0,
            stream: false,
            websocket: false,
        };
        let err = view.encode(1, 1024).unwrap_err();
        assert!(
            matches!(err, EncodeError::FrameTooLarge { max: 1024, .. }),
            "{err}"
        );
    }
}
