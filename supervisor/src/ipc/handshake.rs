//! The handshake: the plugin's first message, checked (protocol version, the one-time token in
//! constant time, the epoch, the name) and answered. What the plugin declares is handed to the
//! caller to accept or refuse (the route table is built there); a refusal names its reason to
//! the plugin and to the log alike.

use super::calls::Calls;
use super::connection::Connection;
use crate::error::Failure;
use futures_util::StreamExt;
use plugd_protocol::envelope::{encode_error, encode_response};
use plugd_protocol::message::handshake::{Handshake, Hello, Welcome};
use plugd_protocol::message::Method;
use plugd_protocol::{codes, ErrorObject, FrameCodec, Message, ProtocolVersion};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio_util::codec::FramedRead;

/// What the supervisor expects of a plugin's handshake.
#[derive(Debug)]
pub struct Expected<'a> {
    /// The name in the plugin's manifest.
    pub name: &'a str,
    /// The one-time token passed to the process.
    pub token: &'a str,
    /// The instance epoch passed to the process.
    pub epoch: u64,
    /// The supervisor's frame limit.
    pub max_frame: usize,
}

/// Reads the plugin's handshake from `stream`, checks it, lets `accept` inspect it (for example
/// to build the route table) and answers. On any failure the plugin is sent the reason, the
/// socket is closed, and the same reason is returned.
pub async fn handshake<T>(
    stream: UnixStream,
    expected: &Expected<'_>,
    calls: Option<Arc<Calls>>,
    accept: impl FnOnce(&Hello) -> Result<T, String>,
) -> Result<(Hello, T, Arc<Connection>), Failure> {
    let (rd, mut wr) = stream.into_split();
    let mut frames = FramedRead::new(rd, FrameCodec::new(expected.max_frame));
    let request = match frames.next().await {
        Some(Ok(Message::Request(req))) if req.method == Handshake::NAME => req,
        Some(Ok(other)) => {
            return Err(Failure::later(format!(
                "first message was not a handshake: {other:?}"
            )))
        }
        Some(Err(e)) => return Err(Failure::later(format!("bad handshake frame: {e}"))),
        None => {
            return Err(Failure::later(
                "closed the connection before sending its handshake",
            ))
        }
    };
    let id = request.id;
    let max = expected.max_frame;
    let hello = match request.decode_params::<Handshake>() {
        Ok(hello) => hello,
        Err(e) => {
            let message = format!("bad handshake: {e}");
            return Err(Failure::never(
                refuse(&mut wr, id, codes::INVALID_PARAMS, message, max).await,
            ));
        }
    };
    let ours = ProtocolVersion::CURRENT;
    if !ours.is_compatible_with(hello.protocol) {
        let message = format!(
            "protocol version mismatch: the plugin speaks {}, the supervisor speaks {ours}",
            hello.protocol
        );
        return Err(Failure::never(
            refuse(&mut wr, id, codes::HANDSHAKE_REFUSED, message, max).await,
        ));
    }
    let token_ok: bool = hello
        .token
        .as_bytes()
        .ct_eq(expected.token.as_bytes())
        .into();
    if !token_ok {
        let message = "handshake refused: wrong token (it must be the PLUGD_TOKEN this process was started with)";
        return Err(Failure::later(
            refuse(&mut wr, id, codes::UNAUTHORIZED, message.into(), max).await,
        ));
    }
    if hello.epoch != expected.epoch {
        let message = format!(
            "handshake refused: epoch {} is not this instance's epoch {}",
            hello.epoch, expected.epoch
        );
        return Err(Failure::later(
            refuse(&mut wr, id, codes::UNAUTHORIZED, message, max).await,
        ));
    }
    if hello.name != expected.name {
        let message = format!(
            "handshake refused: the plugin calls itself {:?} but its manifest names it {:?}",
            hello.name, expected.name
        );
        return Err(Failure::never(
            refuse(&mut wr, id, codes::HANDSHAKE_REFUSED, message, max).await,
        ));
    }
    let accepted = match accept(&hello) {
        Ok(accepted) => accepted,
        Err(message) => {
            return Err(Failure::never(
                refuse(&mut wr, id, codes::HANDSHAKE_REFUSED, message, max).await,
            ))
        }
    };
    let max_frame = expected.max_frame.min(hello.max_frame as usize);
    let welcome = Welcome {
        protocol: ours,
        supervisor: format!("plugd {}", env!("CARGO_PKG_VERSION")),
        max_frame: u32::try_from(max_frame).unwrap_or(u32::MAX),
    };
    let frame = encode_response(id, &welcome, expected.max_frame)
        .map_err(|e| Failure::later(e.to_string()))?;
    wr.write_all(&frame)
        .await
        .map_err(|e| Failure::later(format!("cannot answer the handshake: {e}")))?;
    frames.decoder_mut().clone_from(&FrameCodec::new(max_frame));
    let conn = Connection::start(expected.name.to_owned(), frames, wr, max_frame, calls);
    Ok((hello, accepted, conn))
}

/// Sends the plugin an error answer to its handshake, closes our side, and returns the message.
async fn refuse(
    wr: &mut OwnedWriteHalf,
    id: u64,
    code: i32,
    message: String,
    max: usize,
) -> String {
    let error = ErrorObject::new(code, message.clone());
    if let Ok(frame) = encode_error(id, &error, max) {
        let _ = wr.write_all(&frame).await;
        let _ = wr.shutdown().await;
    }
    message
}
