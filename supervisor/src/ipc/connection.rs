//! One multiplexed protocol connection per plugin instance.
//!
//! After the handshake, a [`Connection`] lets many callers have requests in flight at once:
//! each call registers under a fresh id in the shared pending map, a reader task routes each
//! response to its caller, and the connection's [deferred](Outbox::deferred) outbox writes
//! the frames that callers queued together in one go (a call alone on an idle connection
//! writes its own frame: nothing could share the write). When the plugin sends a
//! bad frame or the socket closes, every waiting caller is told at once why; nobody waits for a
//! timeout on a dead plugin. Requests the plugin makes to plugd are answered by [`Calls`].
//!
//! What a plugin can make plugd spend here is bounded: at most [`MAX_PLUGIN_CALLS`] of its calls
//! are worked on at once (more are answered `BUSY` at once, without a task), at most
//! [`MAX_QUEUED_BYTES`] of frames wait to be written to it, and answers to calls plugd never
//! made or already gave up on are tolerated only up to [`STRAY_ALLOWANCE`] beyond the calls it
//! cancelled; past that the plugin is cut off as a protocol violation. So is a plugin that keeps
//! sending requests without reading the answers ([`MAX_DROPPED_ANSWERS`]).

use super::calls::Calls;
use super::stream::{Routed, Streams};
use bytes::Bytes;
use futures_util::StreamExt;
use plugd_protocol::envelope::{
    encode_error, encode_notification, encode_request, encode_request_packed, encode_response,
};
use plugd_protocol::message::control::{Cancel, CancelParams, Empty, Ping, Shutdown};
use plugd_protocol::message::Method;
use plugd_protocol::outbox::{self, Outbox};
use plugd_protocol::pending::{Call, Pending};
use plugd_protocol::socket::{ReadHalf, WriteHalf};
use plugd_protocol::when_woken::WhenWoken;
use plugd_protocol::{codes, EncodeError, ErrorObject, FrameCodec, Message, Response};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

/// Calls from one plugin that plugd works on at once (key-value, services, hooks); more are
/// answered with a `BUSY` error straight away.
pub const MAX_PLUGIN_CALLS: usize = 64;

/// Bytes of frames that may wait to be written to one plugin. A plugin that stops reading makes
/// its callers wait (within their deadlines) and its own calls' answers get dropped, instead of
/// making plugd buffer without limit.
pub const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;

/// Answers to the plugin's own requests that may be dropped because it does not read them;
/// past that the plugin is cut off (it sends requests and never reads the answers).
pub const MAX_DROPPED_ANSWERS: u64 = 1024;

/// Answers with an unknown id tolerated beyond one per call plugd cancelled (a late answer to a
/// cancelled call is normal); past that the plugin is cut off.
pub const STRAY_ALLOWANCE: u64 = 64;

/// What a queued frame is, for the shutdown gate of [`Connection::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outgoing {
    /// A request of plugd's.
    Request,
    /// plugd's shutdown request.
    Shutdown,
    /// An answer to the plugin's own call.
    Answer,
    /// A message on an open stream (it may go on while the plugin drains).
    Stream,
}

/// Who writes a call's request frame.
#[derive(Debug, Clone, Copy)]
enum Write {
    /// The connection's flusher, after letting every ready task queue its frame, so that
    /// frames queued together leave in one write.
    Flusher,
    /// The caller itself when it is the only call in flight and nothing is queued: with no
    /// other frame to share the write, the hop through the flusher task is pure cost.
    AtOnceWhenAlone,
}

/// Why a frame was not queued.
#[derive(Debug)]
enum Unsent {
    /// The shutdown request is queued already.
    Stopping,
    /// The writer has stopped (the connection is closed).
    Closed(String),
}

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

/// Why a call ended without the plugin's answer.
#[derive(Debug)]
enum Ended {
    /// The connection closed, for this reason.
    Closed(String),
    /// The call's deadline passed.
    TimedOut,
}

/// A live connection to one plugin instance.
#[derive(Debug)]
pub struct Connection {
    plugin: String,
    out: Arc<Outbox>,
    pending: Pending<Result<Response, Ended>>,
    max_frame: usize,
    closed: CancellationToken,
    close_reason: Mutex<Option<String>>,
    /// Set once `close_reason` is, before `closed` is cancelled: the checks made per call and
    /// per request read this flag, not a lock (the token's flag sits behind a mutex).
    is_closing: AtomicBool,
    cut_off: AtomicBool,
    /// Set when plugd queues its shutdown request, under the outbox's lock with the queueing
    /// itself: no request is queued behind the shutdown (see [`Connection::send`]).
    stopping: AtomicBool,
    calls: Option<Arc<Calls>>,
    /// Permits for the plugin's own calls in flight.
    working: Arc<Semaphore>,
    /// Calls plugd gave up on and cancelled: each may still get one late answer.
    cancelled: AtomicU64,
    /// Frames dropped because the plugin was not reading.
    dropped: AtomicU64,
    /// Open streams (streamed bodies and WebSockets), by request id.
    streams: Streams,
    /// Of those, answers to the plugin's own requests.
    answers_dropped: AtomicU64,
}

impl Connection {
    /// Starts the reader and writer tasks of a connection whose handshake is done.
    pub(super) fn start(
        plugin: String,
        frames: FramedRead<ReadHalf, FrameCodec>,
        wr: WriteHalf,
        max_frame: usize,
        calls: Option<Arc<Calls>>,
    ) -> Arc<Connection> {
        // Deferred: each HTTP request's task sends one frame, and under load many are ready
        // together; one write carries them and wakes the plugin once.
        let out = Outbox::deferred(wr, MAX_QUEUED_BYTES);
        tokio::spawn(out.flusher());
        let conn = Arc::new(Connection {
            plugin,
            out,
            // Id 0 was the handshake.
            pending: Pending::new(1),
            max_frame,
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
            is_closing: AtomicBool::new(false),
            cut_off: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            calls,
            working: Arc::new(Semaphore::new(MAX_PLUGIN_CALLS)),
            cancelled: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            streams: Streams::default(),
            answers_dropped: AtomicU64::new(0),
        });
        tokio::spawn(read_loop(conn.clone(), frames));
        tokio::spawn(expire_calls(conn.clone()));
        conn
    }

    /// A connection whose other end is already closed, for tests that need an instance without
    /// a plugin process.
    #[cfg(test)]
    pub(crate) fn detached(plugin: &str) -> Arc<Connection> {
        Connection::with_peer(plugin).0
    }

    /// A connection and the socket at its other end, which stays open while it is held.
    #[cfg(test)]
    fn with_peer(plugin: &str) -> (Arc<Connection>, std::os::unix::net::UnixStream) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
        ours.set_nonblocking(true).expect("non-blocking");
        let stream = tokio::net::UnixStream::from_std(ours).expect("a tokio socket");
        let (rd, wr) = plugd_protocol::socket::split(stream).expect("split");
        let frames = FramedRead::new(rd, FrameCodec::new(1 << 20));
        let conn = Connection::start(plugin.to_owned(), frames, wr, 1 << 20, None);
        (conn, theirs)
    }

    /// Sends request `M` and waits at most `timeout` for its result. On timeout the plugin is
    /// sent a `cancel` for the request.
    pub async fn call<M: Method>(
        &self,
        params: &M::Params,
        timeout: Duration,
    ) -> Result<M::Result, CallError> {
        let response = self
            .call_with::<M>(|id, max| encode_request::<M>(id, params, max), timeout)
            .await?;
        decode_answer::<M>(&response)
    }

    /// [`Connection::call`] with parameters encoded already (`rmp_serde`, named fields): a
    /// hook fanned out to many plugins encodes its parameters once for all of them.
    ///
    /// With no `timeout` the call has no deadline of its own: its caller gives up on it by
    /// dropping it, which cancels it (a hook's handlers called together share one deadline,
    /// and one timer). Such a call is one of several made together, so its frame is always
    /// left to the connection's flusher; a call with a deadline of its own writes its frame
    /// itself when it is alone on the connection.
    pub async fn call_encoded<M: Method>(
        &self,
        params: &[u8],
        timeout: Option<Duration>,
    ) -> Result<M::Result, CallError> {
        let pack = |id, max| {
            encode_request_packed::<M>(id, 32 + params.len(), max, |buf| {
                buf.extend_from_slice(params)
            })
        };
        // Calls fanned out together (no deadline of their own) leave their writes to each
        // connection's flusher: the firing task does not write to ten sockets in turn, and the
        // flushers run on whichever threads are free.
        let write = if timeout.is_some() {
            Write::AtOnceWhenAlone
        } else {
            Write::Flusher
        };
        let response = self.call_inner::<M>(pack, timeout, write).await?;
        decode_answer::<M>(&response)
    }

    /// [`Connection::call`] with the request's frame built by `encode` from the call's id and
    /// the largest frame allowed, and the answer left undecoded: the proxy path packs borrowed
    /// parts straight into the frame and reads the answer in place. The response returned is
    /// a result; an error answer is [`CallError::Remote`].
    pub async fn call_with<M: Method>(
        &self,
        encode: impl FnOnce(u64, usize) -> Result<Bytes, EncodeError>,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        self.call_inner::<M>(encode, Some(timeout), Write::AtOnceWhenAlone)
            .await
    }

    async fn call_inner<M: Method>(
        &self,
        encode: impl FnOnce(u64, usize) -> Result<Bytes, EncodeError>,
        timeout: Option<Duration>,
        write: Write,
    ) -> Result<Response, CallError> {
        if let Some(reason) = self.close_reason() {
            return Err(CallError::NotSent(reason));
        }
        // No timer per call: the connection's `expire_calls` task answers a call whose
        // deadline passed.
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut guard = CancelOnDrop {
            conn: self,
            call: Some(match deadline {
                Some(deadline) => self.pending.register_until(deadline),
                None => self.pending.register(),
            }),
        };
        let Some(call) = guard.call.as_mut() else {
            return Err(CallError::Protocol("no call registered".into()));
        };
        let frame = match encode(call.id(), self.max_frame) {
            Ok(frame) => frame,
            Err(e) => {
                guard.forget();
                return Err(CallError::Protocol(e.to_string()));
            }
        };
        // A close that drained the map before our registration would never answer us.
        if let Some(reason) = self.close_reason() {
            guard.forget();
            return Err(CallError::NotSent(reason));
        }
        let what = if M::NAME == Shutdown::NAME {
            Outgoing::Shutdown
        } else {
            Outgoing::Request
        };
        let at_once = matches!(write, Write::AtOnceWhenAlone) && call.alone();
        // The deadline covers queueing the frame too: a plugin that stopped reading fills the
        // socket and the queue, and its callers must still get their timeout. The frame is
        // queued at once unless the outbox is full; only then is a timer armed for the wait.
        let mut send = std::pin::pin!(self.send(frame, what, at_once));
        let sent = match futures_util::poll!(send.as_mut()) {
            std::task::Poll::Ready(sent) => sent,
            std::task::Poll::Pending => match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, send).await {
                    Ok(sent) => sent,
                    // The guard removes the pending entry and sends the cancel.
                    Err(_) => return Err(CallError::Timeout(timeout.unwrap_or_default())),
                },
                None => send.await,
            },
        };
        match sent {
            Ok(()) => {}
            Err(Unsent::Stopping) => {
                guard.forget();
                return Err(CallError::NotSent("the plugin is being stopped".into()));
            }
            Err(Unsent::Closed(reason)) => {
                guard.forget();
                return Err(CallError::Closed(reason));
            }
        }
        let answer = call.answer().await;
        guard.forget();
        match answer {
            Some(Ok(response)) => match response.outcome {
                Err(error) => Err(CallError::Remote(error)),
                Ok(_) => Ok(response),
            },
            Some(Err(Ended::Closed(reason))) => Err(CallError::Closed(reason)),
            // `expire_calls` took the entry out and sent the cancel.
            Some(Err(Ended::TimedOut)) => Err(CallError::Timeout(timeout.unwrap_or_default())),
            None => Err(CallError::Closed("connection dropped".into())),
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
            self.is_closing.store(true, Ordering::Release);
        }
        // Nobody waits for room in the outbox any more, and the plugin reads the end.
        self.out.close();
        // The callers first: on a current-thread runtime tasks run in the order they are woken,
        // and a caller may take its request elsewhere (a warm standby) while those who watch
        // for the close (the instance's bookkeeping) can wait a moment.
        for tx in self.pending.drain() {
            let _ = tx.send(Err(Ended::Closed(reason.to_owned())));
        }
        self.streams.close_all(reason);
        self.closed.cancel();
    }

    /// Why the connection closed, if it has.
    pub fn close_reason(&self) -> Option<String> {
        if !self.is_closed() {
            return None;
        }
        self.close_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the supervisor closed the connection because the plugin broke the protocol.
    pub fn was_cut_off(&self) -> bool {
        self.cut_off.load(Ordering::SeqCst)
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.is_closing.load(Ordering::Acquire)
    }

    /// Resolves once the connection has closed.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// How many calls are waiting for an answer.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// How many streams are open.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    pub(super) fn streams(&self) -> &Streams {
        &self.streams
    }

    pub(super) fn fresh_id(&self) -> u64 {
        self.pending.fresh_id()
    }

    pub(super) fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Counts a call plugd gave up on (its late answer is allowed).
    pub(super) fn count_cancel(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues a frame without waiting; false when it was dropped.
    pub(super) fn try_send_frame(&self, frame: Bytes) -> bool {
        self.try_send(frame)
    }

    /// Queues `frame`, waiting for room; an error says why it was not sent.
    pub(super) async fn queue(&self, frame: Bytes, what: Outgoing) -> Result<(), CallError> {
        match self.send(frame, what, false).await {
            Ok(()) => Ok(()),
            Err(Unsent::Stopping) => Err(CallError::NotSent("the plugin is being stopped".into())),
            Err(Unsent::Closed(reason)) => Err(CallError::NotSent(reason)),
        }
    }

    /// Sends the plugin a `cancel` for request `id`, without waiting.
    fn send_cancel(&self, id: u64) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
        if let Ok(frame) = encode_notification::<Cancel>(&CancelParams { id }, self.max_frame) {
            self.try_send(frame);
        }
    }

    /// Queues `frame`, waiting while the outbox holds [`MAX_QUEUED_BYTES`] already. Nothing
    /// but answers is queued after the shutdown request: the check and the queueing happen
    /// under the outbox's lock, so a request either goes before the shutdown (and the plugin
    /// finishes it while draining) or is refused here (`Stopping`, which the caller may retry
    /// on another instance). A request queued behind the shutdown could reach a plugin that
    /// already stopped reading, and its caller would see the plugin exit instead.
    ///
    /// With `at_once` the caller writes the frame itself when nothing is queued ahead of it
    /// (see [`Outbox::send_gated_at_once`]).
    async fn send(&self, frame: Bytes, what: Outgoing, at_once: bool) -> Result<(), Unsent> {
        let gate = || match what {
            Outgoing::Request if self.stopping.load(Ordering::SeqCst) => Err(()),
            Outgoing::Shutdown => {
                self.stopping.store(true, Ordering::SeqCst);
                Ok(())
            }
            Outgoing::Request | Outgoing::Answer | Outgoing::Stream => Ok(()),
        };
        let sent = if at_once {
            self.out.send_gated_at_once(frame, gate).await
        } else {
            self.out.send_gated(frame, gate).await
        };
        match sent {
            Ok(()) => Ok(()),
            Err(outbox::Unsent::Gated(())) => Err(Unsent::Stopping),
            Err(outbox::Unsent::Closed) => Err(Unsent::Closed(
                self.close_reason()
                    .unwrap_or_else(|| "the connection is closed".into()),
            )),
        }
    }

    /// Queues `frame` if there is room now; otherwise drops it (the plugin is not reading) and
    /// says so.
    fn try_send(&self, frame: Bytes) -> bool {
        if self.out.try_send(frame).is_ok() {
            return true;
        }
        // Logged at 1, 2, 4, 8, … drops: a plugin that never reads must not flood the log.
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if dropped.is_power_of_two() {
            tracing::warn!(plugin = %self.plugin, dropped, "the plugin is not reading: outgoing queue full, {dropped} frames dropped so far");
        }
        false
    }

    /// Queues an answer to the plugin's own request `id` without waiting; one that cannot be
    /// queued counts towards [`MAX_DROPPED_ANSWERS`].
    fn answer_now(&self, frame: Result<Bytes, EncodeError>) {
        if let Ok(frame) = frame {
            if !self.try_send(frame) {
                self.answers_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Answers the plugin's request `id` with `error`, without waiting.
    fn refuse(&self, id: u64, error: &ErrorObject) {
        self.answer_now(encode_error(id, error, self.max_frame));
    }
}

/// A response's result decoded as method `M`'s.
fn decode_answer<M: Method>(response: &Response) -> Result<M::Result, CallError> {
    match response.decode_result::<M>() {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(error)) => Err(CallError::Remote(error)),
        Err(e) => Err(CallError::Protocol(e.to_string())),
    }
}

/// Tells the plugin to stop working on a call that ends without an answer: on timeout, or
/// when the caller itself went away (an HTTP client hung up). The pending entry goes with it.
struct CancelOnDrop<'a> {
    conn: &'a Connection,
    call: Option<Call<'a, Result<Response, Ended>>>,
}

impl CancelOnDrop<'_> {
    /// The call ended with an answer (or was never sent): nothing to cancel.
    fn forget(&mut self) {
        if let Some(call) = self.call.take() {
            call.abandon();
        }
    }
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        let id = call.id();
        if call.abandon() && self.conn.close_reason().is_none() {
            self.conn.send_cancel(id);
        }
    }
}

/// Answers each call whose deadline passed with [`Ended::TimedOut`] and tells the plugin to
/// stop working on it, until the connection closes (which answers the rest).
async fn expire_calls(conn: Arc<Connection>) {
    loop {
        let expired = tokio::select! {
            () = conn.closed() => return,
            expired = conn.pending.expired() => expired,
        };
        for (id, tx) in expired {
            let _ = tx.send(Err(Ended::TimedOut));
            if conn.close_reason().is_none() {
                conn.send_cancel(id);
            }
        }
    }
}

async fn read_loop(conn: Arc<Connection>, mut frames: FramedRead<ReadHalf, FrameCodec>) {
    let mut stray: u64 = 0;
    // One wait for the whole loop, polled only when the token wakes it (not one registered
    // and dropped per frame).
    let mut closed = WhenWoken::new(conn.closed.cancelled());
    let reason = loop {
        tokio::select! {
            _ = &mut closed => return,
            message = frames.next() => match message {
                Some(Ok(Message::Response(response))) => {
                    let id = response.id;
                    let answered = match conn.pending.answer_or_return(id, Ok(response)) {
                        None => true,
                        // Not a call: perhaps a stream's head (rarer, so looked up second).
                        Some(Ok(response)) => conn.streams.head(id, response),
                        Some(Err(_)) => false,
                    };
                    if !answered {
                        stray += 1;
                        let allowed = conn.cancelled.load(Ordering::Relaxed) + STRAY_ALLOWANCE;
                        if stray > allowed {
                            let reason = format!(
                                "the plugin was cut off: it sent {stray} answers to calls plugd never made or had given up on (at most {STRAY_ALLOWANCE} more than the {} it cancelled are allowed)",
                                allowed - STRAY_ALLOWANCE
                            );
                            tracing::error!(plugin = %conn.plugin, "{reason}");
                            conn.cut_off.store(true, Ordering::SeqCst);
                            break reason;
                        }
                        tracing::debug!(plugin = %conn.plugin, id, "late answer to a call that already ended");
                    }
                }
                Some(Ok(Message::Request(request))) => {
                    on_request(&conn, request);
                    let dropped = conn.answers_dropped.load(Ordering::Relaxed);
                    if dropped > MAX_DROPPED_ANSWERS {
                        let reason = format!(
                            "the plugin was cut off: it sends requests but does not read the answers ({dropped} answers could not be queued)"
                        );
                        tracing::error!(plugin = %conn.plugin, "{reason}");
                        conn.cut_off.store(true, Ordering::SeqCst);
                        break reason;
                    }
                }
                Some(Ok(Message::Notification(note))) => match conn.streams.route(&conn.plugin, &note) {
                    Routed::Done => {}
                    Routed::Overrun(id) => conn.send_cancel(id),
                    Routed::NotMine => {
                        tracing::debug!(plugin = %conn.plugin, method = %note.method, "ignoring notification");
                    }
                },
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

/// Answers a request from the plugin. Pings, unknown methods and calls past
/// [`MAX_PLUGIN_CALLS`] are answered here without waiting (the reader must never block, or
/// answers to plugd's own calls would stop flowing); the rest get a task each, holding one of
/// the plugin's call permits until its answer is queued.
fn on_request(conn: &Arc<Connection>, request: plugd_protocol::Request) {
    if request.method == Ping::NAME {
        conn.answer_now(encode_response(request.id, &Empty {}, conn.max_frame));
        return;
    }
    let Some(calls) = conn
        .calls
        .clone()
        .filter(|_| Calls::handles(&request.method))
    else {
        let error = ErrorObject::new(
            codes::METHOD_NOT_FOUND,
            format!(
                "the supervisor does not implement method {:?}",
                request.method
            ),
        );
        conn.refuse(request.id, &error);
        return;
    };
    let Ok(permit) = conn.working.clone().try_acquire_owned() else {
        let error = ErrorObject::new(
            codes::BUSY,
            format!("the plugin already has {MAX_PLUGIN_CALLS} calls to plugd in flight; try again when one has ended"),
        );
        conn.refuse(request.id, &error);
        return;
    };
    let conn = conn.clone();
    tokio::spawn(async move {
        let answer = async {
            let frame = calls.answer(&conn.plugin, &request, conn.max_frame).await;
            // The plugin's only call in flight (this one holds the sole permit taken): no other
            // answer is coming to share the write, so it is written here, not by the flusher.
            let alone = conn.working.available_permits() == MAX_PLUGIN_CALLS - 1;
            let _ = conn.send(frame, Outgoing::Answer, alone).await;
        };
        tokio::select! {
            _ = answer => {}
            _ = conn.closed.cancelled() => {}
        }
        drop(permit);
    });
}

#[cfg(test)]
mod tests;
