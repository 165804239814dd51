//! Streams on a plugin connection: an `http` request to a streaming or WebSocket route, whose
//! head, body chunks and WebSocket messages travel as separate messages tied to its id
//! (PROTOCOL.md §5, "Streams").
//!
//! The reader task routes what the plugin sends for a stream (its answer head, `stream.*` and
//! `ws.*` messages) to the stream's [`StreamReceiver`], after checking it against the credit plugd
//! gave: a message past it ends that stream (the plugin is sent a `cancel`) and nothing else.
//! So what waits unread for one stream is bounded by its window, whatever the plugin does.
//! The [`StreamSender`] sends the request body or plugd's WebSocket messages within the credit
//! the plugin gives. When both halves are gone before the stream ended (the client hung up),
//! the plugin is sent a `cancel`.

use super::connection::{CallError, Connection, Outgoing};
use bytes::Bytes;
use plugd_protocol::envelope::{encode_notification, encode_notification_sized};
use plugd_protocol::message::control::{Cancel, CancelParams};
use plugd_protocol::message::http::{Http, HttpRequest};
use plugd_protocol::message::stream::{
    cost, AbortParams, CreditParams, DataParams, EndParams, StreamAbort, StreamCredit, StreamData,
    StreamEnd, WsClose, WsCloseParams, WsKind, WsMessage, WsMessageParams,
};
use plugd_protocol::message::NotificationKind;
use plugd_protocol::stream::{chunk_limit, Consumption, RecvWindow, SendCredit};
use plugd_protocol::{Notification, Response};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// What the plugin sent on a stream.
#[derive(Debug)]
pub enum Inbound {
    /// The answer to the `http` request (its head, for a streamed body).
    Head(Response),
    /// The next chunk of the response body.
    Data(Bytes),
    /// The response body is complete.
    End,
    /// The stream failed; what the client got so far is not complete.
    Abort(String),
    /// A WebSocket message, or one piece of it (`true`: more pieces follow).
    Ws(WsKind, Bytes, bool),
    /// The plugin closed the WebSocket.
    Close(u16, String),
}

/// One open stream, as the reader task sees it.
struct Entry {
    tx: mpsc::UnboundedSender<Inbound>,
    window: RecvWindow,
    credit: Arc<SendCredit>,
}

/// The open streams of one connection.
#[derive(Default)]
pub(super) struct Streams {
    open: Mutex<HashMap<u64, Entry>>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("open", &self.lock().len())
            .finish()
    }
}

/// Whether a message was a stream's, and whether the plugin overran its credit.
pub(super) enum Routed {
    /// Not a stream's message.
    NotMine,
    /// Delivered, or for a stream that already ended (ignored).
    Done,
    /// Past the credit: the stream was ended; the plugin gets a cancel for this id.
    Overrun(u64),
}

impl Streams {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many streams are open.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Delivers an answer to stream `id`'s request; false when no such stream is open.
    pub(super) fn head(&self, id: u64, response: Response) -> bool {
        match self.lock().get(&id) {
            Some(entry) => {
                let _ = entry.tx.send(Inbound::Head(response));
                true
            }
            None => false,
        }
    }

    /// Routes a `stream.*` or `ws.*` notification from the plugin.
    pub(super) fn route(&self, plugin: &str, note: &Notification) -> Routed {
        let (id, inbound, charge) = match note.method.as_str() {
            StreamData::NAME => match note.decode_params::<StreamData>() {
                Ok(p) => (p.id, Inbound::Data(p.data.clone()), cost(p.data.len())),
                Err(e) => return bad(plugin, note, e),
            },
            StreamEnd::NAME => match note.decode_params::<StreamEnd>() {
                Ok(p) => (p.id, Inbound::End, 0),
                Err(e) => return bad(plugin, note, e),
            },
            StreamAbort::NAME => match note.decode_params::<StreamAbort>() {
                Ok(p) => (p.id, Inbound::Abort(p.message), 0),
                Err(e) => return bad(plugin, note, e),
            },
            WsMessage::NAME => match note.decode_params::<WsMessage>() {
                Ok(p) => {
                    let charge = cost(p.data.len());
                    (p.id, Inbound::Ws(p.kind, p.data, p.more), charge)
                }
                Err(e) => return bad(plugin, note, e),
            },
            WsClose::NAME => match note.decode_params::<WsClose>() {
                Ok(p) => (p.id, Inbound::Close(p.code, p.reason), 0),
                Err(e) => return bad(plugin, note, e),
            },
            StreamCredit::NAME => match note.decode_params::<StreamCredit>() {
                Ok(p) => {
                    if let Some(entry) = self.lock().get(&p.id) {
                        entry.credit.grant(p.bytes);
                    }
                    return Routed::Done;
                }
                Err(e) => return bad(plugin, note, e),
            },
            _ => return Routed::NotMine,
        };
        let mut open = self.lock();
        let Some(entry) = open.get_mut(&id) else {
            // It ended here already (the client went away): the plugin will see the cancel.
            tracing::debug!(plugin, id, method = %note.method, "message for a stream that ended");
            return Routed::Done;
        };
        if matches!(inbound, Inbound::Data(_)) && charge == cost(0) {
            let reason = format!(
                "the plugin sent an empty {} on stream {id}, which the protocol forbids",
                StreamData::NAME
            );
            return end_stream(&mut open, plugin, id, reason);
        }
        if let Err(overrun) = entry.window.receive(charge) {
            let reason = format!("the plugin overran its credit on stream {id}: {overrun}");
            return end_stream(&mut open, plugin, id, reason);
        }
        let last = matches!(inbound, Inbound::End | Inbound::Abort(_));
        let _ = entry.tx.send(inbound);
        if last {
            if let Some(entry) = open.remove(&id) {
                entry.credit.close();
            }
        }
        Routed::Done
    }

    /// Counts credit given to the plugin for stream `id`, before it is sent.
    pub(super) fn give(&self, id: u64, bytes: u64) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.window.give(bytes);
        }
    }

    /// Ends every open stream: the connection closed.
    pub(super) fn close_all(&self, reason: &str) {
        for (_, entry) in self.lock().drain() {
            entry.credit.close();
            let _ = entry.tx.send(Inbound::Abort(format!(
                "the connection to the plugin closed: {reason}"
            )));
        }
    }
}

fn bad(plugin: &str, note: &Notification, e: plugd_protocol::DecodeError) -> Routed {
    tracing::warn!(plugin, method = %note.method, "ignoring an undecodable stream message: {e}");
    Routed::Done
}

fn end_stream(open: &mut HashMap<u64, Entry>, plugin: &str, id: u64, reason: String) -> Routed {
    tracing::warn!(plugin, id, "{reason}; the stream is ended");
    if let Some(entry) = open.remove(&id) {
        entry.credit.close();
        let _ = entry.tx.send(Inbound::Abort(reason.clone()));
    }
    Routed::Overrun(id)
}

/// What both halves of a stream share; the last one dropped closes the stream.
struct Shared {
    conn: Arc<Connection>,
    id: u64,
    credit: Arc<SendCredit>,
    chunk: usize,
    /// The stream ended as the protocol says (end, abort, close, or a whole answer): no cancel.
    finished: AtomicBool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.credit.close();
        let was_open = self.conn.streams().lock().remove(&self.id).is_some();
        if was_open && !self.finished.load(Ordering::SeqCst) && self.conn.close_reason().is_none() {
            self.conn.count_cancel();
            let params = CancelParams { id: self.id };
            if let Ok(frame) = encode_notification::<Cancel>(&params, self.conn.max_frame()) {
                self.conn.try_send_frame(frame);
            }
        }
    }
}

/// Sends the request body, or plugd's WebSocket messages, within the plugin's credit.
pub struct StreamSender {
    shared: Arc<Shared>,
}

/// Takes what the plugin sends on the stream, giving credit back as it is consumed.
pub struct StreamReceiver {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Inbound>,
    consumed: Consumption,
}

impl std::fmt::Debug for StreamSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSender")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl std::fmt::Debug for StreamReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReceiver")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl Drop for StreamReceiver {
    fn drop(&mut self) {
        // Nobody takes the plugin's answer any more: the sender stops too.
        self.shared.credit.close();
    }
}

impl Connection {
    /// Opens a stream: sends `request` (an `http` request to a streaming or WebSocket route)
    /// and returns its two halves. The answer arrives on the receiver as [`Inbound::Head`].
    pub async fn open_stream(
        self: &Arc<Self>,
        request: &HttpRequest,
        window: u32,
    ) -> Result<(StreamSender, StreamReceiver), CallError> {
        if let Some(reason) = self.close_reason() {
            return Err(CallError::NotSent(reason));
        }
        let id = self.fresh_id();
        let frame = plugd_protocol::envelope::encode_request::<Http>(id, request, self.max_frame())
            .map_err(|e| CallError::Protocol(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(SendCredit::new(window));
        self.streams().lock().insert(
            id,
            Entry {
                tx,
                window: RecvWindow::new(window),
                credit: credit.clone(),
            },
        );
        let shared = Arc::new(Shared {
            conn: self.clone(),
            id,
            credit,
            chunk: chunk_limit(window, self.max_frame()),
            finished: AtomicBool::new(false),
        });
        // A close that drained the streams before our registration would never answer us.
        if let Some(reason) = self.close_reason() {
            shared.finished.store(true, Ordering::SeqCst);
            return Err(CallError::NotSent(reason));
        }
        self.queue(frame, Outgoing::Request)
            .await
            .inspect_err(|_| {
                shared.finished.store(true, Ordering::SeqCst);
            })?;
        Ok((
            StreamSender {
                shared: shared.clone(),
            },
            StreamReceiver {
                shared,
                rx,
                consumed: Consumption::new(window),
            },
        ))
    }
}

/// The stream ended (or the connection closed) before a message could be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream has ended")]
pub struct StreamEnded;

impl StreamSender {
    /// Sends `data` as one or more `stream.data` chunks, waiting for credit as needed.
    pub async fn data(&self, data: Bytes) -> Result<(), StreamEnded> {
        if data.is_empty() {
            return Ok(());
        }
        let id = self.shared.id;
        self.pieces::<StreamData>(data, |data, _| DataParams { id, data })
            .await
    }

    /// Sends `data` in pieces of at most a chunk (at least one piece), each within credit;
    /// `params` builds a piece's message, told whether more pieces follow.
    async fn pieces<N: NotificationKind>(
        &self,
        mut data: Bytes,
        params: impl Fn(Bytes, bool) -> N::Params,
    ) -> Result<(), StreamEnded> {
        loop {
            let piece = data.split_to(data.len().min(self.shared.chunk));
            let len = piece.len();
            self.shared
                .credit
                .take(cost(len))
                .await
                .map_err(|_| StreamEnded)?;
            self.send::<N>(&params(piece, !data.is_empty()), len)
                .await?;
            if data.is_empty() {
                return Ok(());
            }
        }
    }

    /// Ends the request body.
    pub async fn end(&self) -> Result<(), StreamEnded> {
        self.send::<StreamEnd>(&EndParams { id: self.shared.id }, 0)
            .await
    }

    /// Aborts the request body (the client's upload failed or was too large).
    pub async fn abort(&self, message: String) -> Result<(), StreamEnded> {
        let params = AbortParams {
            id: self.shared.id,
            message,
        };
        self.send::<StreamAbort>(&params, 0).await
    }

    /// Sends one WebSocket message, waiting for credit; one bigger than a chunk goes in
    /// pieces.
    pub async fn ws(&self, kind: WsKind, data: Bytes) -> Result<(), StreamEnded> {
        let id = self.shared.id;
        self.pieces::<WsMessage>(data, |data, more| WsMessageParams {
            id,
            kind,
            data,
            more,
        })
        .await
    }

    /// Closes the WebSocket towards the plugin.
    pub async fn close(&self, code: u16, reason: String) -> Result<(), StreamEnded> {
        self.shared.finished.store(true, Ordering::SeqCst);
        let params = WsCloseParams {
            id: self.shared.id,
            code,
            reason,
        };
        self.send::<WsClose>(&params, 0).await
    }

    /// Resolves once the stream can take no more (it ended, or the connection closed).
    pub async fn ended(&self) {
        // Credit for more than the window never comes, so this waits for the close alone.
        let _ = self.shared.credit.take(u64::MAX).await;
    }

    /// Sends one message; `data` is the length of the bytes it carries, so its frame is built
    /// in one buffer of the right size.
    async fn send<N: NotificationKind>(
        &self,
        params: &N::Params,
        data: usize,
    ) -> Result<(), StreamEnded> {
        let frame = encode_notification_sized::<N>(params, data + 96, self.shared.conn.max_frame())
            .map_err(|_| StreamEnded)?;
        self.shared
            .conn
            .queue(frame, Outgoing::Stream)
            .await
            .map_err(|_| StreamEnded)
    }
}

impl StreamReceiver {
    /// The next thing the plugin sent; `None` once the stream is over. Taking a chunk or a
    /// WebSocket message counts it as consumed, and gives the plugin credit back.
    pub async fn next(&mut self) -> Option<Inbound> {
        let inbound = self.rx.recv().await?;
        let charge = match &inbound {
            Inbound::Data(data) | Inbound::Ws(_, data, _) => cost(data.len()),
            Inbound::End | Inbound::Abort(_) | Inbound::Close(..) => {
                self.finish();
                0
            }
            Inbound::Head(_) => 0,
        };
        if charge > 0 {
            if let Some(bytes) = self.consumed.consume(charge) {
                self.shared.conn.streams().give(self.shared.id, bytes);
                let params = CreditParams {
                    id: self.shared.id,
                    bytes,
                };
                if let Ok(frame) =
                    encode_notification::<StreamCredit>(&params, self.shared.conn.max_frame())
                {
                    let _ = self.shared.conn.queue(frame, Outgoing::Stream).await;
                }
            }
        }
        Some(inbound)
    }

    /// Marks the stream as ended by the protocol: dropping it sends no cancel.
    pub fn finish(&self) {
        self.shared.finished.store(true, Ordering::SeqCst);
    }

    /// The request id of the stream.
    pub fn id(&self) -> u64 {
        self.shared.id
    }
}
