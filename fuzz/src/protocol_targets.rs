//! The bodies of the protocol fuzz targets (`frame`, `envelope`, `messages`).
//!
//! Shared by the cargo-fuzz binaries in `fuzz/fuzz_targets/` (through the `plugd_fuzz` library)
//! and by the corpus replay in `protocol/tests/fuzz_corpus.rs` (which includes this file with
//! `#[path]`), so a stable `cargo test` runs every seed through exactly what the fuzzer runs.
//! Besides "never panic", each body asserts a few properties the decoder promises; a failed
//! assertion is a finding just like a panic inside the crate.

use bytes::{Bytes, BytesMut};
use plugd_protocol::envelope::{encode_notification, encode_request, encode_response};
use plugd_protocol::frame::{split_frame, HEADER_LEN};
use plugd_protocol::message::control::{Cancel, Ping, Shutdown};
use plugd_protocol::message::handshake::Handshake;
use plugd_protocol::message::hook::{HookCall, HookFire};
use plugd_protocol::message::http::Http;
use plugd_protocol::message::kv::{KvCas, KvDelete, KvGet, KvList, KvSet};
use plugd_protocol::message::service::ServiceCall;
use plugd_protocol::{DecodeError, FrameCodec, Message, Method, NotificationKind};
use tokio_util::codec::Decoder;

/// The frame limit the `frame` target decodes with: small, so oversized prefixes are cheap to hit.
pub const FRAME_MAX_LEN: usize = 4096;

/// What the `frame` target saw when it split its input into frames.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FrameOutcome {
    /// Frames split off the input.
    pub frames: usize,
    /// Frames whose body decoded as a message with a well-formed payload.
    pub messages: usize,
    /// The framing error that stopped the split (oversized or empty frame), if any.
    pub error: Option<String>,
    /// Bytes left over once no whole frame was left (an incomplete frame).
    pub leftover: usize,
}

/// `frame`: splits `data` into frames with [`split_frame`], decoding each body, then runs the
/// same bytes through [`FrameCodec`] twice, all at once and in small chunks, and checks that
/// both runs see the same messages and the same error.
pub fn frame(data: &[u8]) -> FrameOutcome {
    let mut out = FrameOutcome::default();
    let mut src = BytesMut::from(data);
    loop {
        let before = src.len();
        match split_frame(&mut src, FRAME_MAX_LEN) {
            Ok(Some(body)) => {
                assert!(!body.is_empty(), "an empty body was split off");
                assert!(body.len() <= FRAME_MAX_LEN, "a body over the limit");
                assert_eq!(
                    src.len(),
                    before - HEADER_LEN - body.len(),
                    "split_frame consumed something other than one frame"
                );
                out.frames += 1;
                if decode_checked(body).is_ok() {
                    out.messages += 1;
                }
            }
            Ok(None) => {
                assert_eq!(src.len(), before, "waiting for more consumed bytes");
                break;
            }
            Err(e) => {
                assert_eq!(src.len(), before, "a refused frame consumed bytes");
                out.error = Some(e.to_string());
                break;
            }
        }
    }
    out.leftover = src.len();

    let whole = codec_run(data, data.len().max(1));
    let chunk = 1 + usize::from(data.first().copied().unwrap_or(0) % 13);
    let chunked = codec_run(data, chunk);
    assert_eq!(
        whole, chunked,
        "chunked decoding differs (chunks of {chunk})"
    );
    out
}

/// Feeds `data` to a [`FrameCodec`] `chunk` bytes at a time, then ends the stream. Returns every
/// message (re-encoded, so values that are not equal to themselves, like NaN, still compare) and
/// the error that ended the run, if any.
fn codec_run(data: &[u8], chunk: usize) -> Vec<Result<Bytes, String>> {
    let mut codec = FrameCodec::new(FRAME_MAX_LEN);
    let mut src = BytesMut::new();
    let mut seen = Vec::new();
    for piece in data.chunks(chunk) {
        src.extend_from_slice(piece);
        loop {
            match codec.decode(&mut src) {
                Ok(Some(message)) => seen.push(Ok(message.to_frame())),
                Ok(None) => break,
                Err(e) => {
                    seen.push(Err(e.to_string()));
                    return seen;
                }
            }
        }
    }
    loop {
        match codec.decode_eof(&mut src) {
            Ok(Some(message)) => seen.push(Ok(message.to_frame())),
            Ok(None) => return seen,
            Err(e) => {
                seen.push(Err(e.to_string()));
                return seen;
            }
        }
    }
}

/// A frame body decoded and its payload checked, as a receiver that decodes the payload sees it.
fn decode_checked(body: Bytes) -> Result<Message, DecodeError> {
    let message = Message::decode(body)?;
    message.check_payload()?;
    Ok(message)
}

/// `envelope`: decodes `data` as one frame body and checks its payload
/// ([`Message::check_payload`]). A message that decodes must re-encode
/// ([`Message::to_frame`]) to a frame that decodes to the same message, and re-encoding that
/// one must give the same bytes again.
pub fn envelope(data: &[u8]) -> Result<Message, DecodeError> {
    let result = decode_checked(Bytes::copy_from_slice(data));
    if let Ok(message) = &result {
        let frame = message.to_frame();
        let prefix = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        assert_eq!(
            prefix as usize,
            frame.len() - HEADER_LEN,
            "wrong length prefix"
        );
        let again = Message::decode(frame.slice(HEADER_LEN..))
            .unwrap_or_else(|e| panic!("a decoded message re-encodes to garbage: {e}"));
        assert_eq!(again.to_frame(), frame, "re-encoding is not stable");
        match (message, &again) {
            // The error object is re-serialized, and its `data` may hold a NaN: compare fields.
            (Message::Response(a), Message::Response(b)) if a.outcome.is_err() => {
                assert_eq!(a.id, b.id);
                let (Err(ea), Err(eb)) = (&a.outcome, &b.outcome) else {
                    panic!("an error response came back as a result");
                };
                assert_eq!((ea.code, &ea.message), (eb.code, &eb.message));
            }
            // Everything else is copied raw, so it must come back equal.
            _ => assert_eq!(&again, message, "the message changed on the way round"),
        }
    }
    result
}

/// What the `messages` target decoded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MessagesOutcome {
    /// Whether the envelope decoded.
    pub envelope: bool,
    /// The method or notification name the envelope carried (none for a response).
    pub name: Option<String>,
    /// The names of the message types whose typed decode accepted the payload.
    pub typed: Vec<&'static str>,
}

/// `messages`: decodes the envelope, then tries the payload against every message type of every
/// family (whatever name the envelope carries). A payload a type accepts must re-encode through
/// the typed `encode_*` functions to a frame that decodes to a value that encodes the same.
pub fn messages(data: &[u8]) -> MessagesOutcome {
    let mut out = MessagesOutcome::default();
    let Ok(message) = Message::decode(Bytes::copy_from_slice(data)) else {
        return out;
    };
    out.envelope = true;
    match &message {
        Message::Request(request) => out.name = Some(request.method.clone()),
        Message::Notification(note) => out.name = Some(note.method.clone()),
        Message::Response(_) => {}
    }
    method::<Handshake>(&message, &mut out.typed);
    method::<Ping>(&message, &mut out.typed);
    method::<Shutdown>(&message, &mut out.typed);
    method::<Http>(&message, &mut out.typed);
    method::<HookCall>(&message, &mut out.typed);
    method::<HookFire>(&message, &mut out.typed);
    method::<ServiceCall>(&message, &mut out.typed);
    method::<KvGet>(&message, &mut out.typed);
    method::<KvSet>(&message, &mut out.typed);
    method::<KvDelete>(&message, &mut out.typed);
    method::<KvList>(&message, &mut out.typed);
    method::<KvCas>(&message, &mut out.typed);
    notification::<Cancel>(&message, &mut out.typed);
    out
}

/// Tries method `M`'s typed decode on a request's params or a response's result.
fn method<M: Method>(message: &Message, typed: &mut Vec<&'static str>) {
    match message {
        Message::Request(request) => {
            if let Ok(params) = request.decode_params::<M>() {
                typed.push(M::NAME);
                let frame = encode_request::<M>(request.id, &params, usize::MAX)
                    .unwrap_or_else(|e| panic!("{} params decode but do not encode: {e}", M::NAME));
                let Message::Request(back) = reread(&frame, M::NAME) else {
                    panic!("{} request re-read as another kind", M::NAME);
                };
                let params = back
                    .decode_params::<M>()
                    .unwrap_or_else(|e| panic!("{} params do not decode again: {e}", M::NAME));
                let again = encode_request::<M>(request.id, &params, usize::MAX).expect("encodes");
                assert_stable(&frame, &again, M::NAME);
            }
        }
        Message::Response(response) => {
            if let Ok(Ok(result)) = response.decode_result::<M>() {
                typed.push(M::NAME);
                roundtrip_result::<M>(response.id, &result);
            }
        }
        Message::Notification(_) => {}
    }
}

/// Re-encodes a result method `M` accepted, and checks it reads back and encodes the same.
fn roundtrip_result<M: Method>(id: u64, result: &M::Result) {
    let frame = encode_response(id, result, usize::MAX)
        .unwrap_or_else(|e| panic!("{} result decodes but does not encode: {e}", M::NAME));
    let Message::Response(back) = reread(&frame, M::NAME) else {
        panic!("{} response re-read as another kind", M::NAME);
    };
    let result = back
        .decode_result::<M>()
        .unwrap_or_else(|e| panic!("{} result does not decode again: {e}", M::NAME))
        .unwrap_or_else(|e| panic!("{} result came back as an error: {e}", M::NAME));
    let again = encode_response(id, &result, usize::MAX).expect("encodes");
    assert_stable(&frame, &again, M::NAME);
}

/// Tries notification `N`'s typed decode on a notification's params.
fn notification<N: NotificationKind>(message: &Message, typed: &mut Vec<&'static str>) {
    let Message::Notification(note) = message else {
        return;
    };
    if let Ok(params) = note.decode_params::<N>() {
        typed.push(N::NAME);
        let frame = encode_notification::<N>(&params, usize::MAX)
            .unwrap_or_else(|e| panic!("{} params decode but do not encode: {e}", N::NAME));
        let Message::Notification(back) = reread(&frame, N::NAME) else {
            panic!("{} notification re-read as another kind", N::NAME);
        };
        let params = back
            .decode_params::<N>()
            .unwrap_or_else(|e| panic!("{} params do not decode again: {e}", N::NAME));
        let again = encode_notification::<N>(&params, usize::MAX).expect("encodes");
        assert_stable(&frame, &again, N::NAME);
    }
}

/// Decodes a frame this process just encoded; it must decode.
fn reread(frame: &Bytes, what: &str) -> Message {
    Message::decode(frame.slice(HEADER_LEN..))
        .unwrap_or_else(|e| panic!("{what}: an encoded frame does not decode: {e}"))
}

/// Encoding a value read back from an encoding must give the same bytes.
fn assert_stable(first: &Bytes, second: &Bytes, what: &str) {
    assert!(first == second, "{what}: encoding is not stable");
}
