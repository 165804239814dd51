//! The envelope around every message, in msgpack-rpc's three shapes:
//!
//! - request: `[0, id, method, params]`
//! - response: `[1, id, error, result]` (exactly one of `error` and `result` is nil)
//! - notification: `[2, method, params]`
//!
//! Incoming messages keep their `params` and `result` as raw MessagePack (a zero-copy slice of the
//! frame), so the envelope can be read before anyone knows which type the payload has; the typed
//! `decode_*` methods turn them into a message family's structs. A payload is checked when it is
//! decoded, not before: a reader that takes the whole payload apart itself (`http`'s) checks it
//! as it goes, and everything else is first walked to make sure it is exactly one well-formed
//! value within [`MAX_DEPTH`] before serde sees it. So a malformed payload costs its own call (an
//! error answer naming what is wrong), not the connection, and a well-formed one is read once. Outgoing messages are encoded
//! straight into a complete frame, length prefix included, by the `encode_*` functions.

use crate::error::{DecodeError, EncodeError, ErrorObject};
use crate::frame::HEADER_LEN;
use crate::message::{Method, NotificationKind};
use bytes::{BufMut, Bytes, BytesMut};
use rmp::Marker;
use serde::de::DeserializeOwned;
use serde::Serialize;

const TYPE_REQUEST: u8 = 0;
const TYPE_RESPONSE: u8 = 1;
const TYPE_NOTIFICATION: u8 = 2;
use crate::depth::MAX_DEPTH;

/// One decoded envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A call that expects a response with the same id.
    Request(Request),
    /// The answer to a request.
    Response(Response),
    /// A one-way message.
    Notification(Notification),
}

/// A request: the sender picks `id`, unique among its own requests in flight on the connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The sender's request id.
    pub id: u64,
    /// The method name, such as `http` or `ping`.
    pub method: String,
    /// The parameters: the raw MessagePack after the method name, not yet checked (see
    /// [`Request::decode_params`]).
    pub params: Bytes,
}

/// A response to the request with the same `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The id of the request this answers.
    pub id: u64,
    /// The raw MessagePack result (not yet checked; see [`Response::decode_result`]), or the
    /// error.
    pub outcome: Result<Bytes, ErrorObject>,
}

/// A notification: no id, no response.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The notification name, such as `cancel`.
    pub method: String,
    /// The parameters: the raw MessagePack after the method name, not yet checked (see
    /// [`Notification::decode_params`]).
    pub params: Bytes,
}

impl Request {
    /// Decodes the parameters as method `M`'s; an error names what is wrong with them, whether
    /// their MessagePack is malformed or they are not `M`'s.
    pub fn decode_params<M: Method>(&self) -> Result<M::Params, DecodeError> {
        if let Some(params) = M::read_params(&self.params) {
            return Ok(params);
        }
        decode_payload(&self.params, M::NAME)
    }
}

impl Response {
    /// Decodes the result as method `M`'s, or returns the peer's error. A malformed result is a
    /// [`DecodeError`].
    pub fn decode_result<M: Method>(&self) -> Result<Result<M::Result, ErrorObject>, DecodeError> {
        match &self.outcome {
            Ok(raw) => decode_payload(raw, M::NAME).map(Ok),
            Err(error) => Ok(Err(error.clone())),
        }
    }
}

impl Notification {
    /// Decodes the parameters as notification `N`'s.
    pub fn decode_params<N: NotificationKind>(&self) -> Result<N::Params, DecodeError> {
        decode_payload(&self.params, N::NAME)
    }
}

/// Checks that `raw` is exactly one well-formed value within [`MAX_DEPTH`] (so serde's recursion
/// stays bounded, and trailing bytes are refused), then decodes it.
pub(crate) fn decode_payload<T: DeserializeOwned>(
    raw: &[u8],
    what: &str,
) -> Result<T, DecodeError> {
    check_one_value(raw)?;
    rmp_serde::from_slice(raw).map_err(|source| DecodeError::Payload {
        what: what.to_owned(),
        source,
    })
}

/// Checks that `raw` is exactly one well-formed MessagePack value, nested at most
/// [`MAX_DEPTH`] levels, with nothing after it. It never allocates and never recurses.
pub fn check_one_value(raw: &[u8]) -> Result<(), DecodeError> {
    let mut r = Reader { buf: raw, pos: 0 };
    r.skip_value()?;
    r.expect_end()
}

/// The end of the one well-formed value that starts at `start` in `buf`, nested at most `limit`
/// (≤ [`MAX_DEPTH`]) levels: where the next value would begin. Like [`check_one_value`], it
/// never allocates and never recurses.
pub(crate) fn value_end(buf: &[u8], start: usize, limit: usize) -> Result<usize, DecodeError> {
    let mut r = Reader { buf, pos: start };
    r.skip_value_within(limit)?;
    Ok(r.pos)
}

impl Message {
    /// Decodes one frame body (without its length prefix).
    pub fn decode(body: Bytes) -> Result<Message, DecodeError> {
        let mut r = Reader { buf: &body, pos: 0 };
        let len = r.array_len()?;
        let kind = r.uint("message type")?;
        let message = match (kind, len) {
            (k, 4) if k == u64::from(TYPE_REQUEST) => {
                let id = r.uint("request id")?;
                let method = r.string("method")?;
                let params = r.rest(&body, "params")?;
                Message::Request(Request { id, method, params })
            }
            (k, 4) if k == u64::from(TYPE_RESPONSE) => {
                let id = r.uint("response id")?;
                let outcome = if r.take_nil() {
                    Ok(r.rest(&body, "result")?)
                } else {
                    let start = r.pos;
                    r.skip_value()?;
                    let error: ErrorObject = rmp_serde::from_slice(&body[start..r.pos])
                        .map_err(|e| DecodeError::Malformed(format!("bad error object: {e}")))?;
                    if !r.take_nil() {
                        return Err(DecodeError::Malformed(
                            "response carries both an error and a result".into(),
                        ));
                    }
                    r.expect_end()?;
                    Err(error)
                };
                Message::Response(Response { id, outcome })
            }
            (k, 3) if k == u64::from(TYPE_NOTIFICATION) => {
                let method = r.string("notification method")?;
                let params = r.rest(&body, "params")?;
                Message::Notification(Notification { method, params })
            }
            (k @ 0..=2, n) => {
                return Err(DecodeError::Malformed(format!(
                    "message type {k} needs {} elements, got {n}",
                    if k == 2 { 3 } else { 4 }
                )))
            }
            (k, _) => {
                return Err(DecodeError::Malformed(format!(
                    "unknown message type {k} (expected 0 request, 1 response, 2 notification)"
                )))
            }
        };
        Ok(message)
    }

    /// Checks the raw payload (a request's or notification's params, a response's result) the
    /// way decoding it would: exactly one well-formed value within [`MAX_DEPTH`]. For a
    /// message relayed without being decoded.
    pub fn check_payload(&self) -> Result<(), DecodeError> {
        match self {
            Message::Request(Request { params, .. })
            | Message::Notification(Notification { params, .. })
            | Message::Response(Response {
                outcome: Ok(params),
                ..
            }) => check_one_value(params),
            Message::Response(_) => Ok(()),
        }
    }

    /// Encodes this message as a complete frame, copying the raw payloads as they are (unchecked:
    /// see [`Message::check_payload`]).
    pub fn to_frame(&self) -> Bytes {
        let mut w = FrameWriter::new();
        match self {
            Message::Request(req) => {
                w.header(4, TYPE_REQUEST);
                w.uint(req.id);
                w.str(&req.method);
                w.raw(&req.params);
            }
            Message::Response(resp) => {
                w.header(4, TYPE_RESPONSE);
                w.uint(resp.id);
                match &resp.outcome {
                    Ok(raw) => {
                        w.nil();
                        w.raw(raw);
                    }
                    Err(error) => {
                        w.value(error).expect("an ErrorObject always encodes");
                        w.nil();
                    }
                }
            }
            Message::Notification(note) => {
                w.header(3, TYPE_NOTIFICATION);
                w.str(&note.method);
                w.raw(&note.params);
            }
        }
        w.finish(usize::MAX).expect("no limit to exceed")
    }
}

/// Encodes a request for method `M` as a complete frame.
pub fn encode_request<M: Method>(
    id: u64,
    params: &M::Params,
    max_len: usize,
) -> Result<Bytes, EncodeError> {
    request_frame::<M>(id, 256, max_len, |w| w.value(params))
}

/// Encodes a request for method `M` whose params `pack` writes straight into the frame, for a
/// hot path that packs borrowed parts by hand instead of building `M::Params` (see
/// [`crate::message::http::HttpRequestView`]). `capacity` is the frame's first allocation.
pub fn encode_request_packed<M: Method>(
    id: u64,
    capacity: usize,
    max_len: usize,
    pack: impl FnOnce(&mut BytesMut),
) -> Result<Bytes, EncodeError> {
    request_frame::<M>(id, capacity, max_len, |w| {
        pack(w.buf.get_mut());
        Ok(())
    })
}

/// A request frame for method `M` whose params `params` writes.
fn request_frame<M: Method>(
    id: u64,
    capacity: usize,
    max_len: usize,
    params: impl FnOnce(&mut FrameWriter) -> Result<(), EncodeError>,
) -> Result<Bytes, EncodeError> {
    let mut w = FrameWriter::with_capacity(capacity);
    w.header(4, TYPE_REQUEST);
    w.uint(id);
    w.str(M::NAME);
    params(&mut w)?;
    w.finish(max_len)
}

/// Encodes a successful response carrying `result` as a complete frame.
pub fn encode_response<T: Serialize + ?Sized>(
    id: u64,
    result: &T,
    max_len: usize,
) -> Result<Bytes, EncodeError> {
    result_frame(id, 256, max_len, |w| w.value(result))
}

/// Encodes a successful response whose result `pack` writes straight into the frame (see
/// [`encode_request_packed`]).
pub fn encode_response_packed(
    id: u64,
    capacity: usize,
    max_len: usize,
    pack: impl FnOnce(&mut BytesMut),
) -> Result<Bytes, EncodeError> {
    result_frame(id, capacity, max_len, |w| {
        pack(w.buf.get_mut());
        Ok(())
    })
}

/// A successful response frame whose result `result` writes.
fn result_frame(
    id: u64,
    capacity: usize,
    max_len: usize,
    result: impl FnOnce(&mut FrameWriter) -> Result<(), EncodeError>,
) -> Result<Bytes, EncodeError> {
    let mut w = FrameWriter::with_capacity(capacity);
    w.header(4, TYPE_RESPONSE);
    w.uint(id);
    w.nil();
    result(&mut w)?;
    w.finish(max_len)
}

/// Encodes an error response as a complete frame.
pub fn encode_error(id: u64, error: &ErrorObject, max_len: usize) -> Result<Bytes, EncodeError> {
    let mut w = FrameWriter::new();
    w.header(4, TYPE_RESPONSE);
    w.uint(id);
    w.value(error)?;
    w.nil();
    w.finish(max_len)
}

/// Encodes notification `N` as a complete frame.
pub fn encode_notification<N: NotificationKind>(
    params: &N::Params,
    max_len: usize,
) -> Result<Bytes, EncodeError> {
    encode_notification_sized::<N>(params, 256, max_len)
}

/// Encodes notification `N` as a complete frame into a buffer of `capacity` bytes at first: a
/// stream chunk's frame is built without growing its buffer again and again.
pub fn encode_notification_sized<N: NotificationKind>(
    params: &N::Params,
    capacity: usize,
    max_len: usize,
) -> Result<Bytes, EncodeError> {
    let mut w = FrameWriter::with_capacity(capacity);
    w.header(3, TYPE_NOTIFICATION);
    w.str(N::NAME);
    w.value(params)?;
    w.finish(max_len)
}

/// Builds one frame in place: reserves the length prefix, writes the body, then fills the prefix in.
struct FrameWriter {
    buf: bytes::buf::Writer<BytesMut>,
}

impl FrameWriter {
    fn new() -> Self {
        FrameWriter::with_capacity(256)
    }

    fn with_capacity(capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity.max(HEADER_LEN));
        buf.put_u32(0);
        FrameWriter { buf: buf.writer() }
    }

    // The envelope's fields are packed by `pack`, the hot paths' encoder, which writes what
    // `rmp` writes (its tests check every width) without going through `io::Write`.
    fn header(&mut self, len: usize, kind: u8) {
        crate::pack::array_len(self.buf.get_mut(), len);
        crate::pack::uint(self.buf.get_mut(), u64::from(kind));
    }

    fn uint(&mut self, v: u64) {
        crate::pack::uint(self.buf.get_mut(), v);
    }

    fn str(&mut self, s: &str) {
        crate::pack::str(self.buf.get_mut(), s);
    }

    fn nil(&mut self) {
        self.buf.get_mut().put_u8(0xc0);
    }

    fn raw(&mut self, raw: &[u8]) {
        self.buf.get_mut().extend_from_slice(raw);
    }

    fn value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), EncodeError> {
        rmp_serde::encode::write_named(&mut self.buf, v)?;
        Ok(())
    }

    fn finish(self, max_len: usize) -> Result<Bytes, EncodeError> {
        let mut buf = self.buf.into_inner();
        let len = buf.len() - HEADER_LEN;
        if len > max_len || len > u32::MAX as usize {
            return Err(EncodeError::FrameTooLarge { len, max: max_len });
        }
        buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(buf.freeze())
    }
}

/// A cursor over a frame body that reads the envelope's fixed fields and measures raw values.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn need(&self, n: usize, what: &str) -> Result<(), DecodeError> {
        if self.buf.len() - self.pos < n {
            Err(DecodeError::Malformed(format!(
                "message ends inside {what}"
            )))
        } else {
            Ok(())
        }
    }

    fn byte(&mut self, what: &str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(b)
    }

    fn be(&mut self, n: usize, what: &str) -> Result<u64, DecodeError> {
        self.need(n, what)?;
        let v = self.buf[self.pos..self.pos + n]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        self.pos += n;
        Ok(v)
    }

    fn array_len(&mut self) -> Result<usize, DecodeError> {
        match Marker::from_u8(self.byte("envelope")?) {
            Marker::FixArray(n) => Ok(n as usize),
            Marker::Array16 => Ok(self.be(2, "envelope")? as usize),
            Marker::Array32 => Ok(self.be(4, "envelope")? as usize),
            other => Err(DecodeError::Malformed(format!(
                "a message must be a MessagePack array, found {other:?}"
            ))),
        }
    }

    fn uint(&mut self, what: &str) -> Result<u64, DecodeError> {
        match Marker::from_u8(self.byte(what)?) {
            Marker::FixPos(v) => Ok(u64::from(v)),
            Marker::U8 => self.be(1, what),
            Marker::U16 => self.be(2, what),
            Marker::U32 => self.be(4, what),
            Marker::U64 => self.be(8, what),
            other => Err(DecodeError::Malformed(format!(
                "{what} must be an unsigned integer, found {other:?}"
            ))),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        let len = match Marker::from_u8(self.byte(what)?) {
            Marker::FixStr(n) => n as usize,
            Marker::Str8 => self.be(1, what)? as usize,
            Marker::Str16 => self.be(2, what)? as usize,
            Marker::Str32 => self.be(4, what)? as usize,
            other => {
                return Err(DecodeError::Malformed(format!(
                    "{what} must be a string, found {other:?}"
                )))
            }
        };
        self.need(len, what)?;
        let s = std::str::from_utf8(&self.buf[self.pos..self.pos + len])
            .map_err(|_| DecodeError::Malformed(format!("{what} is not valid UTF-8")))?;
        self.pos += len;
        Ok(s.to_owned())
    }

    fn take_nil(&mut self) -> bool {
        if self.buf.get(self.pos) == Some(&0xc0) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_end(&self) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(format!(
                "{} trailing bytes after the message",
                self.buf.len() - self.pos
            )))
        }
    }

    /// The rest of the body, the message's payload, which must not be empty. It is checked when
    /// it is decoded ([`check_one_value`]).
    fn rest(&mut self, body: &Bytes, what: &str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        if start == self.buf.len() {
            return Err(DecodeError::Malformed(format!("message has no {what}")));
        }
        self.pos = self.buf.len();
        Ok(body.slice(start..))
    }

    /// Moves past one MessagePack value, checking lengths against the buffer and the nesting
    /// against [`MAX_DEPTH`]. It never allocates and never recurses: the containers still open
    /// are counted in a fixed array, so a hostile value cannot exhaust the stack. Every message
    /// crosses this once, so the one-byte forms (small integers, short strings, small arrays
    /// and maps, nil and booleans) are read without the general marker table.
    fn skip_value(&mut self) -> Result<(), DecodeError> {
        self.skip_value_within(MAX_DEPTH)
    }

    /// [`Reader::skip_value`] for a value that may nest at most `limit` (≤ [`MAX_DEPTH`]) levels.
    fn skip_value_within(&mut self, limit: usize) -> Result<(), DecodeError> {
        // `open[d]`: elements still to skip inside the container open at depth `d`.
        let mut open = [0usize; MAX_DEPTH + 1];
        let limit = limit.min(MAX_DEPTH);
        let mut depth = 0usize;
        loop {
            if depth > limit {
                return Err(DecodeError::Malformed(format!(
                    "values nest deeper than {limit} levels"
                )));
            }
            let marker = self.byte("a value")?;
            let (skip, children) = match marker {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
                0xa0..=0xbf => (usize::from(marker & 0x1f), 0),
                0x90..=0x9f => (0, usize::from(marker & 0x0f)),
                0x80..=0x8f => (0, 2 * usize::from(marker & 0x0f)),
                _ => self.wide_marker(marker)?,
            };
            self.need(skip, "a value")?;
            self.pos += skip;
            // Every element takes at least one byte, so a count beyond the bytes left is a lie.
            if children > self.buf.len() - self.pos {
                return Err(DecodeError::Malformed(format!(
                    "container announces {children} elements but only {} bytes remain",
                    self.buf.len() - self.pos
                )));
            }
            if children > 0 {
                open[depth] = children;
                depth += 1;
                continue;
            }
            // A value ended: so does every container whose last element it was.
            loop {
                let Some(parent) = depth.checked_sub(1) else {
                    return Ok(());
                };
                open[parent] -= 1;
                if open[parent] > 0 {
                    break;
                }
                depth = parent;
            }
        }
    }

    /// The bytes to skip and the elements that follow for a marker other than the one-byte
    /// forms [`Reader::skip_value`] reads itself.
    fn wide_marker(&mut self, marker: u8) -> Result<(usize, usize), DecodeError> {
        let what = "a value";
        Ok(match Marker::from_u8(marker) {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                (0, 0)
            }
            Marker::U8 | Marker::I8 => (1, 0),
            Marker::U16 | Marker::I16 => (2, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
            Marker::FixStr(n) => (n as usize, 0),
            Marker::Str8 | Marker::Bin8 => (self.be(1, what)? as usize, 0),
            Marker::Str16 | Marker::Bin16 => (self.be(2, what)? as usize, 0),
            Marker::Str32 | Marker::Bin32 => (self.be(4, what)? as usize, 0),
            Marker::FixArray(n) => (0, n as usize),
            Marker::Array16 => (0, self.be(2, what)? as usize),
            Marker::Array32 => (0, self.be(4, what)? as usize),
            Marker::FixMap(n) => (0, 2 * n as usize),
            Marker::Map16 => (0, 2 * self.be(2, what)? as usize),
            Marker::Map32 => (0, 2 * self.be(4, what)? as usize),
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Ext8 => (self.be(1, what)? as usize + 1, 0),
            Marker::Ext16 => (self.be(2, what)? as usize + 1, 0),
            Marker::Ext32 => (self.be(4, what)? as usize + 1, 0),
            Marker::Reserved => {
                return Err(DecodeError::Malformed(
                    "reserved MessagePack marker 0xc1".into(),
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests;
