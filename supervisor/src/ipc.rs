//! One multiplexed protocol connection per plugin.
//!
//! [`handshake`] reads and checks the plugin's first message and answers it. After that, a
//! [`Connection`] lets many callers have requests in flight at once: each call registers a
//! one-shot channel under a fresh id, a reader task routes each response to its caller, and a
//! writer task batches outgoing frames. When the plugin sends a bad frame or the socket closes,
//! every waiting caller is told at once why; nobody waits for a timeout on a dead plugin.

use crate::kv::PluginCalls;
use bytes::Bytes;
use futures_util::StreamExt;
use plugd_protocol::envelope::{
    encode_error, encode_notification, encode_request, encode_response,
};
use plugd_protocol::message::control::{Cancel, CancelParams, Empty, Ping};
use plugd_protocol::message::handshake::{Handshake, Hello, Welcome};
use plugd_protocol::message::Method;
use plugd_protocol::{codes, ErrorObject, FrameCodec, Message, ProtocolVersion, Response};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

/// Outgoing frames that may queue before callers wait for the writer.
const OUTGOING_QUEUE: usize = 1024;

/// Why a call to a plugin did not produce a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The connection closed while the request was in flight (the plugin exited or was cut off).
    #[error("connection to the plugin closed: {0}")]
    Closed(String),
    /// The connection was already closed, so the request was never sent: safe to retry
    /// elsewhere.
    #[error("connection to the plugin closed before the request was sent: {0}")]
    NotSent(String),
    /// No answer within the deadline; the plugin was sent a cancel.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The plugin answered with an error.
    #[error("the plugin answered with an error: {0}")]
    Remote(ErrorObject),
    /// The request or its answer could not be encoded or decoded.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Why a handshake failed; `fatal` when the same program will fail the same way again (a
/// protocol version, name or route table plugd cannot accept).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandshakeError {
    /// What was wrong.
    pub message: String,
    /// Whether a restart is pointless.
    pub fatal: bool,
}

impl From<String> for HandshakeError {
    fn from(message: String) -> Self {
        HandshakeError {
            message,
            fatal: false,
        }
    }
}

fn fatal(message: String) -> HandshakeError {
    HandshakeError {
        message,
        fatal: true,
    }
}

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
    calls: Option<PluginCalls>,
    accept: impl FnOnce(&Hello) -> Result<T, String>,
) -> Result<(Hello, T, Arc<Connection>), HandshakeError> {
    let (rd, mut wr) = stream.into_split();
    let mut frames = FramedRead::new(rd, FrameCodec::new(expected.max_frame));
    let request = match frames.next().await {
        Some(Ok(Message::Request(req))) if req.method == Handshake::NAME => req,
        Some(Ok(other)) => {
            return Err(format!("first message was not a handshake: {other:?}").into())
        }
        Some(Err(e)) => return Err(format!("bad handshake frame: {e}").into()),
        None => {
            return Err("closed the connection before sending its handshake"
                .to_string()
                .into())
        }
    };
    let id = request.id;
    let max = expected.max_frame;
    let hello = match request.decode_params::<Handshake>() {
        Ok(hello) => hello,
        Err(e) => {
            let message = format!("bad handshake: {e}");
            return Err(fatal(
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
        return Err(fatal(
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
        return Err(
            refuse(&mut wr, id, codes::UNAUTHORIZED, message.into(), max)
                .await
                .into(),
        );
    }
    if hello.epoch != expected.epoch {
        let message = format!(
            "handshake refused: epoch {} is not this instance's epoch {}",
            hello.epoch, expected.epoch
        );
        return Err(refuse(&mut wr, id, codes::UNAUTHORIZED, message, max)
            .await
            .into());
    }
    if hello.name != expected.name {
        let message = format!(
            "handshake refused: the plugin calls itself {:?} but its manifest names it {:?}",
            hello.name, expected.name
        );
        return Err(fatal(
            refuse(&mut wr, id, codes::HANDSHAKE_REFUSED, message, max).await,
        ));
    }
    let accepted = match accept(&hello) {
        Ok(accepted) => accepted,
        Err(message) => {
            return Err(fatal(
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
    let frame = encode_response(id, &welcome, expected.max_frame).map_err(|e| e.to_string())?;
    wr.write_all(&frame)
        .await
        .map_err(|e| format!("cannot answer the handshake: {e}"))?;
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

/// A live connection to one plugin instance.
#[derive(Debug)]
pub struct Connection {
    plugin: String,
    out: mpsc::Sender<Bytes>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Response, String>>>>,
    next_id: AtomicU64,
    max_frame: usize,
    closed: CancellationToken,
    close_reason: Mutex<Option<String>>,
    cut_off: AtomicBool,
    calls: Option<PluginCalls>,
}

impl Connection {
    fn start(
        plugin: String,
        frames: FramedRead<OwnedReadHalf, FrameCodec>,
        wr: OwnedWriteHalf,
        max_frame: usize,
        calls: Option<PluginCalls>,
    ) -> Arc<Connection> {
        let (out, out_rx) = mpsc::channel(OUTGOING_QUEUE);
        let conn = Arc::new(Connection {
            plugin,
            out,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            max_frame,
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
            cut_off: AtomicBool::new(false),
            calls,
        });
        let token = conn.closed.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = plugd_protocol::frame::write_frames(out_rx, wr) => {}
                _ = token.cancelled() => {}
            }
        });
        tokio::spawn(read_loop(conn.clone(), frames));
        conn
    }

    /// Sends request `M` and waits at most `timeout` for its result. On timeout the plugin is
    /// sent a `cancel` for the request.
    pub async fn call<M: Method>(
        &self,
        params: &M::Params,
        timeout: Duration,
    ) -> Result<M::Result, CallError> {
        if let Some(reason) = self.close_reason() {
            return Err(CallError::NotSent(reason));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_request::<M>(id, params, self.max_frame)
            .map_err(|e| CallError::Protocol(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(id, tx);
        let mut guard = PendingGuard {
            conn: self,
            id,
            armed: true,
        };
        // A close that drained the map before our insert would never answer us.
        if let Some(reason) = self.close_reason() {
            guard.armed = false;
            self.lock_pending().remove(&id);
            return Err(CallError::NotSent(reason));
        }
        // The deadline covers queueing the frame too: a plugin that stopped reading fills the
        // socket and the queue, and its callers must still get their timeout.
        let answer = tokio::time::timeout(timeout, async {
            self.out
                .send(frame)
                .await
                .map_err(|_| "the writer stopped".to_string())?;
            rx.await
                .unwrap_or_else(|_| Err("connection dropped".into()))
        })
        .await;
        match answer {
            Ok(Ok(response)) => {
                guard.armed = false;
                match response.decode_result::<M>() {
                    Ok(Ok(result)) => Ok(result),
                    Ok(Err(error)) => Err(CallError::Remote(error)),
                    Err(e) => Err(CallError::Protocol(e.to_string())),
                }
            }
            Ok(Err(reason)) => {
                guard.armed = false;
                Err(CallError::Closed(reason))
            }
            // The guard removes the pending entry and sends the cancel.
            Err(_) => Err(CallError::Timeout(timeout)),
        }
    }

    /// Pings the plugin; `Ok` when it answered within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), CallError> {
        self.call::<Ping>(&Empty {}, timeout).await.map(|_| ())
    }

    /// Closes the connection: every caller waiting now or later gets `reason`.
    pub fn close(&self, reason: &str) {
        {
            let mut slot = self.close_reason.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_some() {
                return;
            }
            *slot = Some(reason.to_owned());
        }
        self.closed.cancel();
        let waiting: Vec<_> = self.lock_pending().drain().collect();
        for (_, tx) in waiting {
            let _ = tx.send(Err(reason.to_owned()));
        }
    }

    /// Why the connection closed, if it has.
    pub fn close_reason(&self) -> Option<String> {
        self.close_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the supervisor closed the connection because the plugin broke the protocol.
    pub fn was_cut_off(&self) -> bool {
        self.cut_off.load(Ordering::SeqCst)
    }

    /// Resolves once the connection has closed.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// How many calls are waiting for an answer.
    pub fn in_flight(&self) -> usize {
        self.lock_pending().len()
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<Response, String>>>> {
        // Only inserts and removals happen under this lock, so a poisoned map is still whole.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn try_send(&self, frame: Bytes) {
        if self.out.try_send(frame).is_err() {
            tracing::debug!(plugin = %self.plugin, "outgoing queue full or closed; frame dropped");
        }
    }
}

/// Removes a call's pending entry and tells the plugin to stop working on it when the call ends
/// without an answer: on timeout, or when the caller itself went away (an HTTP client hung up).
struct PendingGuard<'a> {
    conn: &'a Connection,
    id: u64,
    armed: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.conn.lock_pending().remove(&self.id).is_some() && self.conn.close_reason().is_none()
        {
            let params = CancelParams { id: self.id };
            if let Ok(frame) = encode_notification::<Cancel>(&params, self.conn.max_frame) {
                self.conn.try_send(frame);
            }
        }
    }
}

async fn read_loop(conn: Arc<Connection>, mut frames: FramedRead<OwnedReadHalf, FrameCodec>) {
    let reason = loop {
        tokio::select! {
            _ = conn.closed.cancelled() => return,
            message = frames.next() => match message {
                Some(Ok(Message::Response(response))) => {
                    let waiter = conn.lock_pending().remove(&response.id);
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(Ok(response));
                        }
                        None => tracing::debug!(plugin = %conn.plugin, id = response.id, "late answer to a call that already ended"),
                    }
                }
                Some(Ok(Message::Request(request))) => {
                    if request.method == Ping::NAME {
                        if let Ok(frame) = encode_response(request.id, &Empty {}, conn.max_frame) {
                            // Never block the reader on a full queue: responses to our callers
                            // must keep flowing.
                            conn.try_send(frame);
                        }
                    } else if let Some(calls) = conn.calls.clone() {
                        // Answered on a task of its own: a slow store never stalls the reader.
                        let conn = conn.clone();
                        tokio::spawn(async move {
                            let frame = calls.call(conn.plugin.clone(), request, conn.max_frame).await;
                            let _ = conn.out.send(frame).await;
                        });
                    } else {
                        let error = ErrorObject::new(
                            codes::METHOD_NOT_FOUND,
                            format!("the supervisor does not implement method {:?}", request.method),
                        );
                        if let Ok(frame) = encode_error(request.id, &error, conn.max_frame) {
                            conn.try_send(frame);
                        }
                    }
                }
                Some(Ok(Message::Notification(note))) => {
                    tracing::debug!(plugin = %conn.plugin, method = %note.method, "ignoring notification");
                }
                Some(Err(plugd_protocol::DecodeError::Io(e))) => {
                    break format!("the connection to the plugin failed: {e}");
                }
                Some(Err(e)) => {
                    let reason = format!("the plugin sent a bad frame and was cut off: {e}");
                    tracing::error!(plugin = %conn.plugin, "{reason}");
                    conn.cut_off.store(true, Ordering::SeqCst);
                    break reason;
                }
                None => break "the plugin closed the connection".to_owned(),
            }
        }
    };
    conn.close(&reason);
}
