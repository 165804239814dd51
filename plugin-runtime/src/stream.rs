//! Streams (protocol 1.2): a streaming route's request body as it arrives ([`BodyStream`]), a
//! response body sent as the handler produces it ([`Response::stream`], [`Response::channel`],
//! [`Response::sse`]), and WebSockets ([`WebSocket`]).
//!
//! Flow control is real in both directions: the runtime gives plugd credit for the request body
//! only as the handler reads it, and a handler's sends wait while plugd has no credit left for
//! the response (because the client reads slowly). What one stream holds in this process is
//! bounded by the stream window either way.
//!
//! [`Response::stream`]: crate::Response::stream
//! [`Response::channel`]: crate::Response::channel
//! [`Response::sse`]: crate::Response::sse

use bytes::Bytes;
use plugd_protocol::envelope::encode_notification_sized;
use plugd_protocol::message::stream::{
    cost, AbortParams, CreditParams, DataParams, EndParams, StreamAbort, StreamCredit, StreamData,
    StreamEnd, WsClose, WsCloseParams, WsKind, WsMessage as WsMessageKind, WsMessageParams,
};
use plugd_protocol::message::NotificationKind;
use plugd_protocol::stream::{chunk_limit, Consumption, Pieces, RecvWindow, SendCredit};
use plugd_protocol::Notification;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// What plugd sent on a stream.
#[derive(Debug)]
pub(crate) enum Inbound {
    Data(Bytes),
    End,
    Abort(String),
    /// A WebSocket message or a piece of one (`true`: more pieces follow).
    Ws(WsKind, Bytes, bool),
    Close(u16, String),
}

struct Entry {
    tx: mpsc::UnboundedSender<Inbound>,
    window: RecvWindow,
    credit: Arc<SendCredit>,
}

/// The open streams of the connection, by plugd's request id.
#[derive(Default)]
pub(crate) struct Streams {
    open: Mutex<HashMap<u64, Entry>>,
}

impl Streams {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers stream `id` (before its request's handler runs, so nothing plugd sends next
    /// is missed).
    pub(crate) fn open(
        &self,
        id: u64,
        window: u32,
    ) -> (mpsc::UnboundedReceiver<Inbound>, Arc<SendCredit>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(SendCredit::new(window));
        self.lock().insert(
            id,
            Entry {
                tx,
                window: RecvWindow::new(window),
                credit: credit.clone(),
            },
        );
        (rx, credit)
    }

    /// Counts credit given to plugd for stream `id`, before it is sent.
    fn give(&self, id: u64, bytes: u64) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.window.give(bytes);
        }
    }

    /// Forgets stream `id` (its handler ended).
    pub(crate) fn remove(&self, id: u64) {
        if let Some(entry) = self.lock().remove(&id) {
            entry.credit.close();
        }
    }

    /// Routes a `stream.*` or `ws.*` notification; false when it is not one.
    pub(crate) fn route(&self, note: &Notification) -> bool {
        let decoded = match note.method.as_str() {
            StreamData::NAME => note
                .decode_params::<StreamData>()
                .map(|p| (p.id, cost(p.data.len()), Inbound::Data(p.data))),
            StreamEnd::NAME => note
                .decode_params::<StreamEnd>()
                .map(|p| (p.id, 0, Inbound::End)),
            StreamAbort::NAME => note
                .decode_params::<StreamAbort>()
                .map(|p| (p.id, 0, Inbound::Abort(p.message))),
            WsMessageKind::NAME => note.decode_params::<WsMessageKind>().map(|p| {
                (
                    p.id,
                    cost(p.data.len()),
                    Inbound::Ws(p.kind, p.data, p.more),
                )
            }),
            WsClose::NAME => note
                .decode_params::<WsClose>()
                .map(|p| (p.id, 0, Inbound::Close(p.code, p.reason))),
            StreamCredit::NAME => {
                match note.decode_params::<StreamCredit>() {
                    Ok(p) => {
                        if let Some(entry) = self.lock().get(&p.id) {
                            entry.credit.grant(p.bytes);
                        }
                    }
                    Err(e) => tracing::warn!("bad {} message: {e}", note.method),
                }
                return true;
            }
            _ => return false,
        };
        let (id, charge, inbound) = match decoded {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::warn!("bad {} message: {e}", note.method);
                return true;
            }
        };
        let mut open = self.lock();
        let Some(entry) = open.get_mut(&id) else {
            return true;
        };
        if let Err(overrun) = entry.window.receive(charge) {
            tracing::error!(
                id,
                "the supervisor overran its credit: {overrun}; ending the stream"
            );
            let _ = entry
                .tx
                .send(Inbound::Abort(format!("credit overrun: {overrun}")));
            open.remove(&id);
            return true;
        }
        let _ = entry.tx.send(inbound);
        true
    }
}

/// Sends one stream's messages to plugd.
pub(crate) struct Link {
    pub(crate) id: u64,
    pub(crate) out: Arc<plugd_protocol::outbox::Outbox>,
    pub(crate) max_frame: usize,
    pub(crate) credit: Arc<SendCredit>,
    pub(crate) window: u32,
    /// A WebSocket's close was sent.
    pub(crate) closed: std::sync::atomic::AtomicBool,
    /// The connection's streams, told of the credit this stream gives.
    pub(crate) streams: Arc<Streams>,
}

/// The stream ended (the client went away, or the connection closed) before a send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stream has ended")]
pub struct StreamClosed;

impl Link {
    /// Sends one message; `data` is the length of the bytes it carries, so its frame is built
    /// in one buffer of the right size.
    pub(crate) async fn send<N: NotificationKind>(
        &self,
        params: &N::Params,
        data: usize,
    ) -> Result<(), StreamClosed> {
        let frame = encode_notification_sized::<N>(params, data + 96, self.max_frame)
            .map_err(|_| StreamClosed)?;
        self.out.send(frame).await.map_err(|_| StreamClosed)
    }

    /// Sends `data` as chunks within the credit.
    pub(crate) async fn data(&self, data: Bytes) -> Result<(), StreamClosed> {
        if data.is_empty() {
            return Ok(());
        }
        let id = self.id;
        self.pieces::<StreamData>(data, |data, _| DataParams { id, data })
            .await
    }

    /// Sends `data` in pieces of at most a chunk (at least one piece), each within credit;
    /// `params` builds a piece's message, told whether more pieces follow.
    pub(crate) async fn pieces<N: NotificationKind>(
        &self,
        mut data: Bytes,
        params: impl Fn(Bytes, bool) -> N::Params,
    ) -> Result<(), StreamClosed> {
        let chunk = chunk_limit(self.window, self.max_frame);
        loop {
            let piece = data.split_to(data.len().min(chunk));
            let len = piece.len();
            self.credit
                .take(cost(len))
                .await
                .map_err(|_| StreamClosed)?;
            self.send::<N>(&params(piece, !data.is_empty()), len)
                .await?;
            if data.is_empty() {
                return Ok(());
            }
        }
    }

    pub(crate) async fn end(&self) -> Result<(), StreamClosed> {
        self.send::<StreamEnd>(&EndParams { id: self.id }, 0).await
    }

    /// Closes a WebSocket with `code` and `reason`, once.
    pub(crate) async fn close(&self, code: u16, reason: &str) -> Result<(), StreamClosed> {
        if self.closed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(StreamClosed);
        }
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.send::<WsClose>(
            &WsCloseParams {
                id: self.id,
                code,
                reason: reason[..end].to_owned(),
            },
            0,
        )
        .await
    }

    pub(crate) async fn abort(&self, message: String) -> Result<(), StreamClosed> {
        self.send::<StreamAbort>(
            &AbortParams {
                id: self.id,
                message,
            },
            0,
        )
        .await
    }

    /// Gives plugd `bytes` more credit.
    async fn grant(&self, bytes: u64) {
        self.streams.give(self.id, bytes);
        let _ = self
            .send::<StreamCredit>(&CreditParams { id: self.id, bytes }, 0)
            .await;
    }
}

/// Why reading a request body stream failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// plugd aborted the body: the client's upload failed, was too large, or went quiet.
    #[error("the request body was aborted: {0}")]
    Aborted(String),
    /// The body is larger than the handler accepts.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
}

impl From<BodyError> for crate::HttpError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge(_) => crate::HttpError::new(413, e.to_string()),
            BodyError::Aborted(_) => crate::HttpError::bad_request(e.to_string()),
        }
    }
}

/// A streaming route's request body, chunk by chunk as the client sends it. Reading a chunk
/// gives plugd credit for more; a handler that stops reading makes the client wait.
pub struct BodyStream {
    rx: mpsc::UnboundedReceiver<Inbound>,
    consumed: Consumption,
    link: Arc<Link>,
    done: bool,
}

impl std::fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyStream")
            .field("id", &self.link.id)
            .field("done", &self.done)
            .finish()
    }
}

impl BodyStream {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<Inbound>, link: Arc<Link>) -> BodyStream {
        BodyStream {
            rx,
            consumed: Consumption::new(link.window),
            link,
            done: false,
        }
    }

    /// The next chunk; `None` once the whole body has arrived.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, BodyError>> {
        if self.done {
            return None;
        }
        let inbound = self.rx.recv().await;
        match inbound {
            Some(Inbound::Data(data)) => {
                if let Some(bytes) = self.consumed.consume(cost(data.len())) {
                    self.link.grant(bytes).await;
                }
                Some(Ok(data))
            }
            Some(Inbound::End) => {
                self.done = true;
                None
            }
            Some(Inbound::Abort(reason)) => {
                self.done = true;
                Some(Err(BodyError::Aborted(reason)))
            }
            Some(other) => {
                self.done = true;
                Some(Err(BodyError::Aborted(format!(
                    "unexpected {other:?} in a request body"
                ))))
            }
            None => {
                self.done = true;
                Some(Err(BodyError::Aborted("the stream ended".into())))
            }
        }
    }

    /// Reads the whole body into memory, refusing one larger than `max` bytes.
    pub async fn collect(mut self, max: usize) -> Result<Bytes, BodyError> {
        let mut all = bytes::BytesMut::new();
        while let Some(chunk) = self.chunk().await {
            let chunk = chunk?;
            if all.len() + chunk.len() > max {
                return Err(BodyError::TooLarge(max));
            }
            all.extend_from_slice(&chunk);
        }
        Ok(all.freeze())
    }
}

/// A WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
    /// A ping (plugd has already answered the client's).
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// The other side closed the socket with this code and reason.
    Close(u16, String),
}

/// A WebSocket bridged by plugd to one client. Receive with [`WebSocket::recv`], send with
/// [`WebSocket::send`] (which waits while the client is behind), close with
/// [`WebSocket::close`]; returning from the handler closes it with 1000.
pub struct WebSocket {
    rx: mpsc::UnboundedReceiver<Inbound>,
    consumed: Consumption,
    /// A message arriving in pieces, kept across receives.
    pieces: Pieces,
    link: Arc<Link>,
    closed: bool,
}

impl std::fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("id", &self.link.id)
            .field("closed", &self.closed)
            .finish()
    }
}

impl WebSocket {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<Inbound>, link: Arc<Link>) -> WebSocket {
        WebSocket {
            rx,
            consumed: Consumption::new(link.window),
            pieces: Pieces::default(),
            link,
            closed: false,
        }
    }

    /// The next message from the client; `None` once the socket is closed. A close from the
    /// client arrives as [`WsMessage::Close`] first.
    pub async fn recv(&mut self) -> Option<WsMessage> {
        if self.closed {
            return None;
        }
        let inbound = loop {
            match self.rx.recv().await {
                Some(Inbound::Ws(kind, data, more)) => {
                    if let Some(bytes) = self.consumed.consume(cost(data.len())) {
                        self.link.grant(bytes).await;
                    }
                    // plugd sends no message over the plugin's `max_ws_message` (it closes the
                    // socket with 1009 instead), so the pieces gathered here are bounded.
                    if let Some(whole) = self.pieces.add(data, more) {
                        break Some(Inbound::Ws(kind, whole, false));
                    }
                }
                other => break other,
            }
        };
        match inbound {
            Some(Inbound::Ws(kind, data, _)) => Some(match kind {
                WsKind::Text => WsMessage::Text(String::from_utf8_lossy(&data).into_owned()),
                WsKind::Binary => WsMessage::Binary(data),
                WsKind::Ping => WsMessage::Ping(data),
                WsKind::Pong => WsMessage::Pong(data),
            }),
            Some(Inbound::Close(code, reason)) => {
                // The client closed it: plugd has ended the socket, nothing to close back.
                self.closed = true;
                self.link
                    .closed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                Some(WsMessage::Close(code, reason))
            }
            Some(Inbound::Abort(reason)) => {
                self.closed = true;
                Some(WsMessage::Close(1011, reason))
            }
            _ => {
                self.closed = true;
                None
            }
        }
    }

    /// Sends a message to the client, waiting while plugd has no credit for it (the client
    /// reads slowly). Sending [`WsMessage::Close`] closes the socket.
    pub async fn send(&mut self, message: WsMessage) -> Result<(), StreamClosed> {
        let (kind, data) = match message {
            WsMessage::Text(text) => (WsKind::Text, Bytes::from(text)),
            WsMessage::Binary(data) => (WsKind::Binary, data),
            WsMessage::Ping(data) => (WsKind::Ping, data),
            WsMessage::Pong(data) => (WsKind::Pong, data),
            WsMessage::Close(code, reason) => return self.close(code, &reason).await,
        };
        if self.closed || self.link.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StreamClosed);
        }
        // A message bigger than a chunk goes in pieces, each within the credit.
        let id = self.link.id;
        self.link
            .pieces::<WsMessageKind>(data, |data, more| WsMessageParams {
                id,
                kind,
                data,
                more,
            })
            .await
    }

    /// Closes the socket with `code` (such as 1000) and `reason` (at most 123 bytes).
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), StreamClosed> {
        self.closed = true;
        self.link.close(code, reason).await
    }

    /// Whether the socket is closed (either side closed it).
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// One Server-Sent Event: `event`, `data` (split on newlines), `id` and `retry` fields, or a
/// comment line (a keep-alive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
    comment: Option<String>,
}

impl SseEvent {
    /// An event carrying `data`.
    pub fn data(data: impl Into<String>) -> SseEvent {
        SseEvent {
            data: Some(data.into()),
            ..SseEvent::default()
        }
    }

    /// A comment line, which clients ignore: send one now and then to keep a quiet stream from
    /// timing out.
    pub fn comment(text: impl Into<String>) -> SseEvent {
        SseEvent {
            comment: Some(text.into()),
            ..SseEvent::default()
        }
    }

    /// Names the event (the client's `addEventListener` type).
    pub fn event(mut self, name: impl Into<String>) -> SseEvent {
        self.event = Some(name.into());
        self
    }

    /// Sets the event's id (the client's `Last-Event-ID` on reconnect).
    pub fn id(mut self, id: impl Into<String>) -> SseEvent {
        self.id = Some(id.into());
        self
    }

    /// Tells the client how long to wait before reconnecting, in milliseconds.
    pub fn retry(mut self, ms: u64) -> SseEvent {
        self.retry = Some(ms);
        self
    }

    /// The event as it goes on the wire, blank line included. Newlines in a field other than
    /// `data` would end it early, so they are dropped there.
    pub fn to_bytes(&self) -> Bytes {
        let clean = |s: &str| s.replace(['\r', '\n'], "");
        let mut out = String::new();
        if let Some(comment) = &self.comment {
            for line in comment.lines() {
                out.push_str(": ");
                out.push_str(line);
                out.push('\n');
            }
            if comment.is_empty() {
                out.push_str(":\n");
            }
        }
        if let Some(event) = &self.event {
            out.push_str(&format!("event: {}\n", clean(event)));
        }
        if let Some(id) = &self.id {
            out.push_str(&format!("id: {}\n", clean(id)));
        }
        if let Some(retry) = self.retry {
            out.push_str(&format!("retry: {retry}\n"));
        }
        if let Some(data) = &self.data {
            for line in data.split('\n') {
                out.push_str("data: ");
                out.push_str(line.strip_suffix('\r').unwrap_or(line));
                out.push('\n');
            }
        }
        out.push('\n');
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_framed_line_by_line() {
        let event = SseEvent::data("a\nb").event("tick").id("7").retry(500);
        assert_eq!(
            event.to_bytes(),
            "event: tick\nid: 7\nretry: 500\ndata: a\ndata: b\n\n"
        );
        assert_eq!(SseEvent::comment("ping").to_bytes(), ": ping\n\n");
        assert_eq!(
            SseEvent::data("x").event("bad\nname").to_bytes(),
            "event: badname\ndata: x\n\n"
        );
    }
}
