//! Errors: the structured error object carried in responses, and the crate's own encode/decode errors.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Well-known error codes. Negative codes follow JSON-RPC's meaning; positive ones are plugd's own.
pub mod codes {
    /// The frame body was not a valid message.
    pub const PARSE_ERROR: i32 = -32700;
    /// The message was well-formed MessagePack but not a valid envelope.
    pub const INVALID_REQUEST: i32 = -32600;
    /// The receiver does not implement the method.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// The method's parameters could not be decoded.
    pub const INVALID_PARAMS: i32 = -32602;
    /// The receiver failed for a reason of its own.
    pub const INTERNAL: i32 = -32603;
    /// The request was cancelled by its sender.
    pub const CANCELLED: i32 = 1;
    /// The request's deadline passed.
    pub const DEADLINE_EXCEEDED: i32 = 2;
    /// The handler panicked; the plugin goes on serving other requests.
    pub const HANDLER_PANICKED: i32 = 3;
    /// The receiver is shutting down and takes no new work.
    pub const SHUTTING_DOWN: i32 = 4;
    /// The plugin has no route for this method and path.
    pub const NO_ROUTE: i32 = 5;
    /// No running plugin provides the service.
    pub const NOT_AVAILABLE: i32 = 6;
    /// The chain of hook and service calls is deeper than the supervisor allows.
    pub const DEPTH_EXCEEDED: i32 = 7;
    /// The receiver has as many of the sender's calls in flight as it allows; try again later.
    pub const BUSY: i32 = 8;
    /// The sender's quota (for example of key-value bytes or keys) is used up.
    pub const QUOTA_EXCEEDED: i32 = 9;
    /// The handshake was refused (for example a protocol major mismatch).
    pub const HANDSHAKE_REFUSED: i32 = 10;
    /// The handshake's token or epoch did not match what the supervisor issued.
    pub const UNAUTHORIZED: i32 = 11;
}

/// A structured error, as carried in a response's error slot: `{code, message, data}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// One of [`codes`], or an application-defined code.
    pub code: i32,
    /// A human-readable explanation that names what was wrong.
    pub message: String,
    /// Optional machine-readable detail.
    #[serde(default)]
    pub data: Option<rmpv::Value>,
}

impl ErrorObject {
    /// An error with a code and message and no data.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        ErrorObject {
            code,
            message: message.into(),
            data: None,
        }
    }
}

impl fmt::Display for ErrorObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for ErrorObject {}

/// A frame or message that could not be decoded. Every variant names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix announced more bytes than the receiver accepts; the body was not read.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Announced body length.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// A zero-length frame, which can never hold a message.
    #[error("empty frame: a frame must hold one MessagePack value")]
    EmptyFrame,
    /// The frame body was not a valid envelope.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The envelope was valid but its parameters or result did not match the expected type.
    #[error("invalid payload for {what}: {source}")]
    Payload {
        /// Which method or result was being decoded.
        what: String,
        /// The underlying MessagePack error.
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
    /// The underlying reader failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A message that could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The encoded message would exceed the peer's frame limit.
    #[error("message of {len} bytes exceeds the maximum frame of {max} bytes")]
    FrameTooLarge {
        /// Encoded body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value could not be represented in MessagePack.
    #[error("cannot encode message: {0}")]
    Serialize(#[from] rmp_serde::encode::Error),
    /// The underlying writer failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}
