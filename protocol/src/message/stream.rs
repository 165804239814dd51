//! Streams (1.2): a request or response body sent in chunks after its head, and the messages of
//! a WebSocket bridged by plugd. Every message here is a notification tied to the `id` of plugd's
//! `http` request; the direction tells which body it belongs to (from plugd: the request's, from
//! the plugin: the response's).
//!
//! Flow control is by credit: each side may have at most [`crate::stream::DEFAULT_WINDOW`] (or
//! the `stream_window` of the `Welcome`) bytes of credit outstanding per stream and direction. A
//! `stream.data` or `ws.message` costs its data's length plus [`CHUNK_OVERHEAD`]; the receiver
//! gives credit back with `stream.credit` as it consumes what it received. A sender never sends
//! past its credit; a message past it is a protocol error that ends that stream.

use super::{is_false, NotificationKind};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// What one `stream.data` or `ws.message` costs beyond its data, so a flood of empty messages
/// cannot be queued for free.
pub const CHUNK_OVERHEAD: u64 = 64;

/// The credit cost of a message carrying `len` bytes of data.
pub fn cost(len: usize) -> u64 {
    len as u64 + CHUNK_OVERHEAD
}

/// `stream.data`: the next chunk of a streamed body.
#[derive(Debug)]
pub struct StreamData;

/// Parameters of [`StreamData`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataParams {
    /// The `http` request this body belongs to.
    pub id: u64,
    /// The chunk (never empty).
    pub data: Bytes,
}

impl NotificationKind for StreamData {
    const NAME: &'static str = "stream.data";
    type Params = DataParams;
}

/// `stream.end`: the streamed body is complete.
#[derive(Debug)]
pub struct StreamEnd;

/// Parameters of [`StreamEnd`] and [`StreamCredit`]'s stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndParams {
    /// The `http` request this body belongs to.
    pub id: u64,
}

impl NotificationKind for StreamEnd {
    const NAME: &'static str = "stream.end";
    type Params = EndParams;
}

/// `stream.abort`: the streamed body (or WebSocket) ends in failure; the receiver must not take
/// what it got as complete.
#[derive(Debug)]
pub struct StreamAbort;

/// Parameters of [`StreamAbort`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortParams {
    /// The `http` request this stream belongs to.
    pub id: u64,
    /// Why, for logs.
    pub message: String,
}

impl NotificationKind for StreamAbort {
    const NAME: &'static str = "stream.abort";
    type Params = AbortParams;
}

/// `stream.credit`: the receiver consumed what it got and lets the sender send `bytes` more.
#[derive(Debug)]
pub struct StreamCredit;

/// Parameters of [`StreamCredit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditParams {
    /// The `http` request this stream belongs to.
    pub id: u64,
    /// Credit added, in bytes (costs as [`cost`] counts them).
    pub bytes: u64,
}

impl NotificationKind for StreamCredit {
    const NAME: &'static str = "stream.credit";
    type Params = CreditParams;
}

/// The kind of a WebSocket message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WsKind {
    /// A text message (its data is UTF-8).
    Text,
    /// A binary message.
    Binary,
    /// A ping (plugd answers a client's pings itself; this tells the plugin).
    Ping,
    /// A pong.
    Pong,
}

/// `ws.message`: one WebSocket message, either direction.
#[derive(Debug)]
pub struct WsMessage;

/// Parameters of [`WsMessage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsMessageParams {
    /// The `http` request that opened the WebSocket.
    pub id: u64,
    /// What kind of message.
    pub kind: WsKind,
    /// Its payload (may be empty), or one piece of it.
    pub data: Bytes,
    /// More pieces of this message follow: a message too big for one chunk is sent in pieces
    /// of the same kind, each within credit, the last one without `more`. Omitted when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub more: bool,
}

impl NotificationKind for WsMessage {
    const NAME: &'static str = "ws.message";
    type Params = WsMessageParams;
}

/// `ws.close`: the WebSocket closes, with a close code and reason, either direction.
#[derive(Debug)]
pub struct WsClose;

/// Parameters of [`WsClose`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsCloseParams {
    /// The `http` request that opened the WebSocket.
    pub id: u64,
    /// The close code (RFC 6455 §7.4), such as 1000 (normal) or 1009 (message too big).
    pub code: u16,
    /// The reason, at most 123 bytes.
    pub reason: String,
}

impl NotificationKind for WsClose {
    const NAME: &'static str = "ws.close";
    type Params = WsCloseParams;
}
