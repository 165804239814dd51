//! HTTP messages: the supervisor forwards a request for one of the plugin's routes and the plugin
//! answers with a response.

use super::{is_false, Method};
use crate::envelope::{encode_request_packed, encode_response_packed};
use crate::error::EncodeError;
use crate::pack;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

mod buf;
pub use buf::HttpRequestBuf;

/// `http`: supervisor → plugin, one per proxied HTTP request.
#[derive(Debug)]
pub struct Http;

impl Method for Http {
    const NAME: &'static str = "http";
    type Params = HttpRequest;
    type Result = HttpResponse;

    fn read_params(raw: &Bytes) -> Option<HttpRequest> {
        HttpRequest::read_in_place(raw)
    }
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

impl HttpRequest {
    /// Reads a request in its usual shape (a map of the known fields, each once) from its raw
    /// MessagePack, the body a slice of it (no copy). `None` means another shape: `serde`
    /// decodes it then, and names what is wrong.
    pub fn read_in_place(raw: &Bytes) -> Option<HttpRequest> {
        HttpRequestBuf::read_in_place(raw).map(|buf| HttpRequest::from(&buf))
    }
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
            pack::key(buf, "request_id");
            pack::str(buf, self.request_id);
            pack::key(buf, "method");
            pack::str(buf, self.method);
            pack::key(buf, "path");
            pack::str(buf, self.path);
            pack::key(buf, "route");
            pack::str(buf, self.route);
            pack::key(buf, "params");
            pack::map_len(buf, self.params.len());
            for (k, v) in self.params {
                pack::str(buf, k);
                pack::str(buf, v);
            }
            pack::key(buf, "query");
            pack::str(buf, self.query);
            pack::key(buf, "headers");
            pack::array_len(buf, self.headers.len());
            for (k, v) in self.headers {
                pack::array_len(buf, 2);
                pack::str(buf, k);
                pack::str(buf, v);
            }
            pack::key(buf, "body");
            pack::bin(buf, self.body);
            pack::key(buf, "deadline_unix_ms");
            pack::uint(buf, self.deadline_unix_ms);
            if self.stream {
                pack::key(buf, "stream");
                pack::bool(buf, true);
            }
            if self.websocket {
                pack::key(buf, "websocket");
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

/// An [`HttpResponse`] read in place from its raw MessagePack: header names and values borrowed
/// from it, the body a slice of it (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponseRef<'a> {
    /// See [`HttpResponse::status`].
    pub status: u16,
    /// See [`HttpResponse::headers`].
    pub headers: Vec<(&'a str, &'a str)>,
    /// See [`HttpResponse::body`].
    pub body: Bytes,
    /// See [`HttpResponse::stream`].
    pub stream: bool,
}

impl HttpResponse {
    /// Encodes this as the answer to request `id`, a complete frame, packed by hand: the same
    /// bytes `encode_response` writes, without `serde` on the plugin's hot path.
    pub fn encode_answer(&self, id: u64, max_len: usize) -> Result<Bytes, EncodeError> {
        let mut capacity = 64 + self.body.len();
        for (k, v) in &self.headers {
            capacity += k.len() + v.len() + 11;
        }
        encode_response_packed(id, capacity, max_len, |buf| {
            pack::map_len(buf, 3 + usize::from(self.stream));
            pack::key(buf, "status");
            pack::uint(buf, u64::from(self.status));
            pack::key(buf, "headers");
            pack::array_len(buf, self.headers.len());
            for (k, v) in &self.headers {
                pack::array_len(buf, 2);
                pack::str(buf, k);
                pack::str(buf, v);
            }
            pack::key(buf, "body");
            pack::bin(buf, &self.body);
            if self.stream {
                pack::key(buf, "stream");
                pack::bool(buf, true);
            }
        })
    }

    /// Reads a response in its usual shape (a map of the known fields, each at most once) in
    /// place. `None` means another shape: decode `raw` as an [`HttpResponse`] then, which
    /// accepts every form the protocol allows and names what is wrong.
    pub fn read_in_place(raw: &Bytes) -> Option<HttpResponseRef<'_>> {
        let mut r = pack::Cursor::new(raw);
        let mut status = None;
        let mut headers = None;
        let mut body = None;
        let mut stream = None;
        for _ in 0..r.map_len()? {
            match r.str_bytes()? {
                b"status" if status.is_none() => {
                    status = Some(u16::try_from(r.uint()?).ok()?);
                }
                b"headers" if headers.is_none() => {
                    let mut list = Vec::new();
                    if !r.nil() {
                        let n = r.array_len()?;
                        // Each pair takes at least three bytes: a count beyond that is a lie.
                        list.reserve(n.min(raw.len() / 3));
                        for _ in 0..n {
                            if r.array_len()? != 2 {
                                return None;
                            }
                            list.push((r.str()?, r.str()?));
                        }
                    }
                    headers = Some(list);
                }
                b"body" if body.is_none() => {
                    body = Some(if r.nil() {
                        Bytes::new()
                    } else {
                        let (start, end) = r.bin_range()?;
                        raw.slice(start..end)
                    });
                }
                b"stream" if stream.is_none() => stream = Some(r.bool()?),
                _ => return None,
            }
        }
        if !r.at_end() {
            return None;
        }
        Some(HttpResponseRef {
            status: status?,
            headers: headers.unwrap_or_default(),
            body: body.unwrap_or_default(),
            stream: stream.unwrap_or(false),
        })
    }
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
        // (query, headers, body, stream, websocket)
        type Case<'a> = (&'a str, Vec<(&'a str, Cow<'a, str>)>, Bytes, bool, bool);
        let cases: [Case<'_>; 4] = [
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
            let params = Bytes::from(rmp_serde::to_vec_named(&owned).unwrap());
            assert_eq!(HttpRequest::read_in_place(&params).as_ref(), Some(&owned));
        }
    }

    /// What `rmp_serde` decodes, in the borrowed form, to compare with the reader's.
    fn by_serde(raw: &Bytes) -> Option<HttpResponse> {
        rmp_serde::from_slice(raw).ok()
    }

    fn in_place(raw: &Bytes) -> Option<HttpResponse> {
        let r = HttpResponse::read_in_place(raw)?;
        let headers = r
            .headers
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        Some(HttpResponse {
            status: r.status,
            headers,
            body: r.body,
            stream: r.stream,
        })
    }

    #[test]
    fn a_response_read_in_place_is_what_serde_decodes() {
        let full = HttpResponse {
            status: 201,
            headers: vec![
                ("content-type".into(), "text/plain".into()),
                ("x-long".into(), "v".repeat(300)),
            ],
            body: Bytes::from(vec![9u8; 70_000]),
            stream: true,
        };
        let plain = HttpResponse {
            status: 200,
            headers: vec![],
            body: Bytes::from_static(b"hi"),
            stream: false,
        };
        for response in [full, plain] {
            let packed = response.encode_answer(9, usize::MAX).unwrap();
            let by_serde_frame =
                crate::envelope::encode_response(9, &response, usize::MAX).unwrap();
            assert_eq!(packed, by_serde_frame);
            let raw = Bytes::from(rmp_serde::to_vec_named(&response).unwrap());
            assert_eq!(in_place(&raw), by_serde(&raw));
            assert!(in_place(&raw).is_some());
        }
        // Other shapes serde accepts, each read in place alike or left to serde.
        let maps: Vec<Vec<(&str, rmpv::Value)>> = vec![
            vec![("status", 204.into())],
            vec![
                ("status", 200.into()),
                ("headers", rmpv::Value::Nil),
                ("body", rmpv::Value::Nil),
            ],
            vec![("body", "as a string".into()), ("status", 200.into())],
            vec![("status", 200.into()), ("extra", 1.into())],
            vec![("status", 200.into()), ("status", 201.into())],
            vec![("status", 70_000.into())],
            vec![("status", (-1).into())],
            vec![
                ("headers", rmpv::Value::Array(vec![])),
                ("status", 200.into()),
            ],
            vec![(
                "headers",
                rmpv::Value::Array(vec![rmpv::Value::Array(vec!["a".into()])]),
            )],
        ];
        for map in maps {
            let value = rmpv::Value::Map(map.into_iter().map(|(k, v)| (k.into(), v)).collect());
            let mut raw = Vec::new();
            rmpv::encode::write_value(&mut raw, &value).unwrap();
            let raw = Bytes::from(raw);
            if let Some(read) = in_place(&raw) {
                assert_eq!(Some(read), by_serde(&raw), "{value}");
            }
        }
        // The array form, and bytes that are not a response at all, go to serde.
        let array = Bytes::from(
            rmp_serde::to_vec(&(200u16, Vec::<(String, String)>::new(), Bytes::new(), false))
                .unwrap(),
        );
        assert!(in_place(&array).is_none());
        assert!(by_serde(&array).is_some());
        for junk in [
            &b""[..],
            b"\x81",
            b"\x81\xa6status",
            b"\x81\xa6status\xcd\x01",
            b"\xc1",
        ] {
            assert!(
                in_place(&Bytes::copy_from_slice(junk)).is_none(),
                "{junk:?}"
            );
        }
        // Trailing bytes after the map.
        let mut raw = rmp_serde::to_vec_named(&HttpResponse {
            status: 200,
            headers: vec![],
            body: Bytes::new(),
            stream: false,
        })
        .unwrap();
        raw.push(0xc0);
        assert!(in_place(&Bytes::from(raw)).is_none());
    }

    #[test]
    fn a_request_in_another_shape_is_left_to_serde() {
        let owned = HttpRequest {
            request_id: "r".into(),
            method: "GET".into(),
            path: "/".into(),
            route: "/".into(),
            params: BTreeMap::new(),
            query: String::new(),
            headers: vec![],
            body: Bytes::new(),
            deadline_unix_ms: 5,
            stream: false,
            websocket: false,
        };
        let named = rmp_serde::to_vec_named(&owned).unwrap();
        let mut value: rmpv::Value = rmpv::decode::read_value(&mut &named[..]).unwrap();
        let mut variants = vec![Bytes::from(rmp_serde::to_vec(&owned).unwrap())];
        let rmpv::Value::Map(fields) = &mut value else {
            panic!("a map")
        };
        let encode = |v: &rmpv::Value| {
            let mut out = Vec::new();
            rmpv::encode::write_value(&mut out, v).unwrap();
            Bytes::from(out)
        };
        // An unknown field, a field twice, a missing field, a nil body, a body as a list.
        let mut with = fields.clone();
        with.push(("future".into(), 1.into()));
        variants.push(encode(&rmpv::Value::Map(with)));
        let mut twice = fields.clone();
        twice.push(("path".into(), "/other".into()));
        variants.push(encode(&rmpv::Value::Map(twice)));
        variants.push(encode(&rmpv::Value::Map(fields[1..].to_vec())));
        for replacement in [rmpv::Value::Nil, rmpv::Value::Array(vec![1.into()])] {
            let mut odd = fields.clone();
            for (k, v) in &mut odd {
                if k.as_str() == Some("body") {
                    *v = replacement.clone();
                }
            }
            variants.push(encode(&rmpv::Value::Map(odd)));
        }
        for raw in variants {
            assert!(HttpRequest::read_in_place(&raw).is_none(), "{raw:?}");
        }
        // In place, the fields may come in any order.
        fields.reverse();
        assert_eq!(HttpRequest::read_in_place(&encode(&value)), Some(owned));
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
