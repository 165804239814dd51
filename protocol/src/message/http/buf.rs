//! [`HttpRequestBuf`]: an `http` request read in place, every string of it in one buffer.

use super::{Http, HttpRequest};
use crate::envelope::decode_payload;
use crate::message::Method;
use crate::pack;
use crate::DecodeError;
use bytes::Bytes;
use std::collections::BTreeMap;

/// A string's place in [`HttpRequestBuf`]'s text. A frame is at most 4 GiB (its length prefix
/// is 32 bits), so its offsets fit in 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

/// An [`HttpRequest`] as a plugin receives it: the same fields, with every string (the id,
/// method, path, route, query, parameters and headers) copied once into one buffer instead of
/// one allocation each, and the body a slice of the frame. Reading a request this way costs
/// three allocations however many headers it has; [`HttpRequest`] costs two per header.
#[derive(Debug, Clone)]
pub struct HttpRequestBuf {
    text: String,
    request_id: Span,
    method: Span,
    path: Span,
    route: Span,
    query: Span,
    /// In the order received (the encoder's is the name order).
    params: Vec<(Span, Span)>,
    headers: Vec<(Span, Span)>,
    /// The request body (empty when `stream` is set: the body follows in chunks).
    pub body: Bytes,
    /// See [`HttpRequest::deadline_unix_ms`].
    pub deadline_unix_ms: u64,
    /// See [`HttpRequest::stream`].
    pub stream: bool,
    /// See [`HttpRequest::websocket`].
    pub websocket: bool,
}

/// Builds the text buffer, a string at a time.
struct Text(Vec<u8>);

impl Text {
    fn push(&mut self, s: &[u8]) -> Option<Span> {
        let start = u32::try_from(self.0.len()).ok()?;
        self.0.extend_from_slice(s);
        let end = u32::try_from(self.0.len()).ok()?;
        Some(Span { start, end })
    }

    /// The text, once all of it is UTF-8 and every span starts and ends on a character
    /// boundary: then each span is UTF-8 on its own. (Checking the whole once costs a fraction
    /// of checking twenty short strings one by one; the boundaries catch two invalid strings
    /// that happen to make a valid one together.)
    fn finish<'a>(self, spans: impl IntoIterator<Item = &'a Span>) -> Option<String> {
        let text = String::from_utf8(self.0).ok()?;
        spans
            .into_iter()
            .all(|s| {
                text.is_char_boundary(s.start as usize) && text.is_char_boundary(s.end as usize)
            })
            .then_some(text)
    }
}

impl HttpRequestBuf {
    fn get(&self, span: Span) -> &str {
        // Spans are made by `Text::push` on this very text, so they are always in range and
        // on character boundaries.
        self.text
            .get(span.start as usize..span.end as usize)
            .unwrap_or_default()
    }

    /// See [`HttpRequest::request_id`].
    pub fn request_id(&self) -> &str {
        self.get(self.request_id)
    }

    /// See [`HttpRequest::method`].
    pub fn method(&self) -> &str {
        self.get(self.method)
    }

    /// See [`HttpRequest::path`].
    pub fn path(&self) -> &str {
        self.get(self.path)
    }

    /// See [`HttpRequest::route`].
    pub fn route(&self) -> &str {
        self.get(self.route)
    }

    /// See [`HttpRequest::query`].
    pub fn query(&self) -> &str {
        self.get(self.query)
    }

    /// The value captured by the pattern's `{name}` segment (see [`HttpRequest::params`]).
    pub fn param(&self, name: &str) -> Option<&str> {
        // The last of a repeated name, as a map decoded by serde keeps it.
        self.params
            .iter()
            .rev()
            .find(|(k, _)| self.get(*k) == name)
            .map(|(_, v)| self.get(*v))
    }

    /// The headers, names in lower case, in order; a name may repeat (see
    /// [`HttpRequest::headers`]).
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + Clone + '_ {
        self.headers
            .iter()
            .map(|(k, v)| (self.get(*k), self.get(*v)))
    }

    /// Reads a request in its usual shape (a map of the known fields, each once) from its raw
    /// MessagePack, checking it as it goes: every string UTF-8, every length within the bytes,
    /// nothing after the map. `None` means another shape or a malformed one: decode it with
    /// `serde` then (through [`crate::Request::decode_params`]), which accepts every form and
    /// names what is wrong, and turn it into this type with `From`.
    pub fn read_in_place(raw: &Bytes) -> Option<HttpRequestBuf> {
        let mut r = pack::Cursor::new(raw);
        let mut text = Text(Vec::with_capacity(raw.len().min(1024)));
        let mut request_id = None;
        let mut method = None;
        let mut path = None;
        let mut route = None;
        let mut params = None;
        let mut query = None;
        let mut headers = None;
        let mut body = None;
        let mut deadline_unix_ms = None;
        let mut stream = None;
        let mut websocket = None;
        fn once<T>(slot: &mut Option<T>, value: Option<T>) -> Option<()> {
            match slot {
                Some(_) => None,
                None => {
                    *slot = Some(value?);
                    Some(())
                }
            }
        }
        // Each map entry or header pair takes at least three bytes: a count beyond that is a
        // lie, and no room is reserved for it.
        let most = raw.len() / 3;
        for _ in 0..r.map_len()? {
            match r.str_bytes()? {
                b"request_id" => once(&mut request_id, text.push(r.str_bytes()?))?,
                b"method" => once(&mut method, text.push(r.str_bytes()?))?,
                b"path" => once(&mut path, text.push(r.str_bytes()?))?,
                b"route" => once(&mut route, text.push(r.str_bytes()?))?,
                b"query" => once(&mut query, text.push(r.str_bytes()?))?,
                b"params" => {
                    let n = r.map_len()?;
                    let mut list = Vec::with_capacity(n.min(most));
                    for _ in 0..n {
                        list.push((text.push(r.str_bytes()?)?, text.push(r.str_bytes()?)?));
                    }
                    once(&mut params, Some(list))?;
                }
                b"headers" => {
                    let n = r.array_len()?;
                    let mut list = Vec::with_capacity(n.min(most));
                    for _ in 0..n {
                        if r.array_len()? != 2 {
                            return None;
                        }
                        list.push((text.push(r.str_bytes()?)?, text.push(r.str_bytes()?)?));
                    }
                    once(&mut headers, Some(list))?;
                }
                b"body" => {
                    let slice = r.bin_range().map(|(start, end)| raw.slice(start..end));
                    once(&mut body, slice)?;
                }
                b"deadline_unix_ms" => once(&mut deadline_unix_ms, r.uint())?,
                b"stream" => once(&mut stream, r.bool())?,
                b"websocket" => once(&mut websocket, r.bool())?,
                _ => return None,
            }
        }
        if !r.at_end() {
            return None;
        }
        let fields = [request_id?, method?, path?, route?, query?];
        let (params, headers) = (params?, headers?);
        let pairs = params.iter().chain(&headers).flat_map(|(k, v)| [k, v]);
        let text = text.finish(fields.iter().chain(pairs))?;
        let [request_id, method, path, route, query] = fields;
        Some(HttpRequestBuf {
            text,
            request_id,
            method,
            path,
            route,
            params,
            query,
            headers,
            body: body?,
            deadline_unix_ms: deadline_unix_ms?,
            stream: stream.unwrap_or(false),
            websocket: websocket.unwrap_or(false),
        })
    }
}

/// Equal when every field reads the same, wherever its text sits in the buffer.
impl PartialEq for HttpRequestBuf {
    fn eq(&self, other: &Self) -> bool {
        let params = |r: &'_ HttpRequestBuf| -> Vec<(String, String)> {
            r.params
                .iter()
                .map(|(k, v)| (r.get(*k).to_owned(), r.get(*v).to_owned()))
                .collect()
        };
        (self.request_id(), self.method(), self.path(), self.route())
            == (
                other.request_id(),
                other.method(),
                other.path(),
                other.route(),
            )
            && self.query() == other.query()
            && params(self) == params(other)
            && self.headers().eq(other.headers())
            && (
                &self.body,
                self.deadline_unix_ms,
                self.stream,
                self.websocket,
            ) == (
                &other.body,
                other.deadline_unix_ms,
                other.stream,
                other.websocket,
            )
    }
}

impl Eq for HttpRequestBuf {}

impl HttpRequestBuf {
    /// The params of an `http` request: read in place in the usual shape, decoded by `serde`
    /// in any other (which names what is wrong with a malformed one).
    pub fn decode(request: &crate::Request) -> Result<HttpRequestBuf, DecodeError> {
        match HttpRequestBuf::read_in_place(&request.params) {
            Some(buf) => Ok(buf),
            None => decode_payload::<HttpRequest>(&request.params, Http::NAME).map(Self::from),
        }
    }
}

impl From<HttpRequest> for HttpRequestBuf {
    fn from(owned: HttpRequest) -> Self {
        let mut text = String::new();
        // Only a request over 4 GiB of text fails to fit, and no frame holds one.
        let mut push = |s: &str| {
            let start = text.len();
            text.push_str(s);
            let span = |at: usize| u32::try_from(at).unwrap_or(u32::MAX);
            Span {
                start: span(start),
                end: span(text.len()),
            }
        };
        let request_id = push(&owned.request_id);
        let method = push(&owned.method);
        let path = push(&owned.path);
        let route = push(&owned.route);
        let query = push(&owned.query);
        let params = owned
            .params
            .iter()
            .map(|(k, v)| (push(k), push(v)))
            .collect();
        let headers = owned
            .headers
            .iter()
            .map(|(k, v)| (push(k), push(v)))
            .collect();
        HttpRequestBuf {
            text,
            request_id,
            method,
            path,
            route,
            query,
            params,
            headers,
            body: owned.body,
            deadline_unix_ms: owned.deadline_unix_ms,
            stream: owned.stream,
            websocket: owned.websocket,
        }
    }
}

impl From<&HttpRequestBuf> for HttpRequest {
    fn from(buf: &HttpRequestBuf) -> Self {
        HttpRequest {
            request_id: buf.request_id().to_owned(),
            method: buf.method().to_owned(),
            path: buf.path().to_owned(),
            route: buf.route().to_owned(),
            params: buf
                .params
                .iter()
                .map(|(k, v)| (buf.get(*k).to_owned(), buf.get(*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            query: buf.query().to_owned(),
            headers: buf
                .headers()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            body: buf.body.clone(),
            deadline_unix_ms: buf.deadline_unix_ms,
            stream: buf.stream,
            websocket: buf.websocket,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned() -> HttpRequest {
        HttpRequest {
            request_id: "req-1".into(),
            method: "POST".into(),
            path: "/items/42/ü".into(),
            route: "/items/{id}/{name}".into(),
            params: BTreeMap::from([
                ("id".to_owned(), "42".to_owned()),
                ("name".to_owned(), "ü".to_owned()),
            ]),
            query: "a=1&b=2".into(),
            headers: vec![
                ("host".into(), "example".into()),
                ("x-many".into(), "one".into()),
                ("x-many".into(), "two".into()),
                ("x-empty".into(), String::new()),
            ],
            body: Bytes::from_static(b"the body"),
            deadline_unix_ms: 1_234_567,
            stream: true,
            websocket: false,
        }
    }

    #[test]
    fn a_request_read_in_place_has_every_field_of_the_owned_one() {
        let owned = owned();
        let raw = Bytes::from(rmp_serde::to_vec_named(&owned).unwrap());
        let buf = HttpRequestBuf::read_in_place(&raw).expect("the usual shape");
        assert_eq!(buf.request_id(), "req-1");
        assert_eq!(buf.method(), "POST");
        assert_eq!(buf.path(), "/items/42/ü");
        assert_eq!(buf.route(), "/items/{id}/{name}");
        assert_eq!(buf.query(), "a=1&b=2");
        assert_eq!(
            (buf.param("id"), buf.param("name")),
            (Some("42"), Some("ü"))
        );
        assert_eq!(buf.param("other"), None);
        let headers: Vec<_> = buf.headers().collect();
        assert_eq!(
            headers,
            [
                ("host", "example"),
                ("x-many", "one"),
                ("x-many", "two"),
                ("x-empty", "")
            ]
        );
        assert_eq!(buf.headers().len(), 4);
        assert_eq!(&buf.body[..], b"the body");
        assert_eq!(
            (buf.deadline_unix_ms, buf.stream, buf.websocket),
            (1_234_567, true, false)
        );
        // Both ways between the owned form and this one lose nothing.
        assert_eq!(HttpRequest::from(&buf), owned);
        assert_eq!(HttpRequestBuf::from(owned.clone()), buf);
    }

    #[test]
    fn decode_reads_the_usual_shape_in_place_and_any_other_through_serde() {
        let owned = owned();
        let request = |params: Vec<u8>| crate::Request {
            id: 1,
            method: Http::NAME.into(),
            params: Bytes::from(params),
        };
        // The usual shape (a map), and the array form serde also writes, decode alike.
        let named = request(rmp_serde::to_vec_named(&owned).unwrap());
        assert!(HttpRequestBuf::read_in_place(&named.params).is_some());
        let positional = request(rmp_serde::to_vec(&owned).unwrap());
        assert!(HttpRequestBuf::read_in_place(&positional.params).is_none());
        for r in [named, positional] {
            assert_eq!(
                HttpRequest::from(&HttpRequestBuf::decode(&r).unwrap()),
                owned
            );
        }
        // A malformed one is an error that says what is wrong.
        let error = HttpRequestBuf::decode(&request(vec![0x92, 0x01])).unwrap_err();
        assert!(matches!(error, DecodeError::Malformed(_)), "{error}");
    }

    #[test]
    fn a_repeated_parameter_name_reads_as_serde_reads_it() {
        // serde keeps the last value of a name a map repeats.
        let pairs = [("id", "1"), ("id", "2")];
        let mut raw = Vec::new();
        let value = rmpv::Value::Map(
            [
                ("request_id", rmpv::Value::from("r")),
                ("method", "GET".into()),
                ("path", "/".into()),
                ("route", "/".into()),
                (
                    "params",
                    rmpv::Value::Map(
                        pairs
                            .iter()
                            .map(|(k, v)| ((*k).into(), (*v).into()))
                            .collect(),
                    ),
                ),
                ("query", "".into()),
                ("headers", rmpv::Value::Array(vec![])),
                ("body", rmpv::Value::Binary(vec![])),
                ("deadline_unix_ms", 1.into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.into(), v))
            .collect(),
        );
        rmpv::encode::write_value(&mut raw, &value).unwrap();
        let raw = Bytes::from(raw);
        let by_serde: HttpRequest = rmp_serde::from_slice(&raw).unwrap();
        let buf = HttpRequestBuf::read_in_place(&raw).expect("the usual shape");
        assert_eq!(
            buf.param("id"),
            by_serde.params.get("id").map(String::as_str)
        );
        assert_eq!(buf.param("id"), Some("2"));
    }

    #[test]
    fn a_cut_or_non_utf8_request_is_not_read_in_place() {
        let raw = rmp_serde::to_vec_named(&owned()).unwrap();
        for cut in 1..raw.len() {
            assert!(
                HttpRequestBuf::read_in_place(&Bytes::copy_from_slice(&raw[..cut])).is_none(),
                "cut at {cut}"
            );
        }
        // The method's "POST" with its first letter made an invalid UTF-8 byte.
        let at = raw.windows(4).position(|w| w == b"POST").unwrap();
        let mut bad = raw.clone();
        bad[at] = 0xff;
        assert!(HttpRequestBuf::read_in_place(&Bytes::from(bad)).is_none());
    }

    #[test]
    fn two_invalid_strings_that_make_valid_utf8_together_are_refused() {
        // The id ends with the first byte of "é" and the method starts with its second: side by
        // side in the text they are valid UTF-8, but neither string is.
        let mut owned = owned();
        owned.request_id = "r\u{1}".into();
        owned.method = "\u{2}GET".into();
        let mut raw = rmp_serde::to_vec_named(&owned).unwrap();
        for b in &mut raw {
            match *b {
                1 => *b = 0xc3,
                2 => *b = 0xa9,
                _ => {}
            }
        }
        let raw = Bytes::from(raw);
        assert!(rmp_serde::from_slice::<HttpRequest>(&raw).is_err());
        assert!(HttpRequestBuf::read_in_place(&raw).is_none());
    }
}
