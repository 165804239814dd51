//! Streaming routes and WebSockets (PROTOCOL.md §5, "Streams").
//!
//! A route the plugin declared with `stream` gets its request body as it arrives, in chunks
//! within the plugin's credit, and may answer with a body that plugd writes to the client as the
//! plugin produces it (flushed chunk by chunk, so Server-Sent Events arrive one by one). A
//! route declared with `websocket` takes upgrades: plugd asks the plugin (a 101 answer accepts),
//! upgrades the client, and bridges messages both ways.
//!
//! What one stream may make plugd hold is its window in each direction: plugd reads the client
//! only as fast as the plugin gives credit, and gives the plugin credit only as fast as the
//! client reads. A client that goes away cancels the stream in the plugin; a plugin that dies or
//! aborts mid-stream aborts the client's response (no final chunk), so a cut-off body cannot be
//! taken for a whole one. A stream with no data either way for the plugin's
//! `stream_idle_timeout` is ended.

use super::error::ApiError;
use super::proxy::{build_response, call_error, response_with};
use crate::ipc::stream::{Inbound, StreamReceiver, StreamSender};
use crate::ipc::CallError;
use crate::supervise::instance::Instance;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::http::header::{CONNECTION, CONTENT_LENGTH};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use plugd_protocol::message::http::{Http, HttpRequest, HttpResponse};
use plugd_protocol::message::stream::WsKind;
use plugd_protocol::stream::Pieces;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit};

/// Forwards a request to a streaming route.
pub(super) async fn forward(
    name: &str,
    instance: &Arc<Instance>,
    wire: HttpRequest,
    headers: &HeaderMap,
    body: Body,
    limit: Option<u64>,
) -> Result<Response, ApiError> {
    let too_large = |limit: u64| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
            format!(
                "route {} of plugin {name:?} accepts request bodies of at most {limit} bytes",
                wire.route
            ),
        )
        .with_header(CONNECTION, HeaderValue::from_static("close"))
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let (Some(limit), Some(len)) = (limit, declared) {
        if len > limit {
            return Err(too_large(limit));
        }
    }
    let permit = stream_permit(name, instance)?;
    let limits = &instance.limits;
    let (sender, mut receiver) = open(name, instance, &wire).await?;
    let (over_tx, over_rx) = oneshot::channel();
    tokio::spawn(pump(
        body,
        sender,
        limit,
        limits.stream_idle_timeout,
        over_tx,
    ));
    let head = tokio::select! {
        head = tokio::time::timeout(limits.request_timeout, receiver.next()) => head,
        Ok(limit) = over_rx => return Err(too_large(limit)),
    };
    let answer = head_of(name, head, limits.request_timeout)?;
    if !answer.stream {
        receiver.finish();
        return build_response(answer).map_err(|detail| invalid(name, detail));
    }
    let first = answer.body;
    let body = Body::from_stream(futures_util::stream::unfold(
        Body_ {
            receiver,
            first: Some(first).filter(|b| !b.is_empty()),
            idle: limits.stream_idle_timeout,
            plugin: name.to_owned(),
            _permit: permit,
        },
        next_chunk,
    ));
    response_with(answer.status, answer.headers, body, true).map_err(|detail| invalid(name, detail))
}

/// A streamed response body as the client reads it.
struct Body_ {
    receiver: StreamReceiver,
    first: Option<Bytes>,
    idle: Duration,
    plugin: String,
    _permit: OwnedSemaphorePermit,
}

async fn next_chunk(mut body: Body_) -> Option<(Result<Bytes, std::io::Error>, Body_)> {
    if let Some(first) = body.first.take() {
        return Some((Ok(first), body));
    }
    let failed = |body: Body_, why: String| {
        tracing::warn!(plugin = %body.plugin, id = body.receiver.id(), "streamed response aborted: {why}");
        Some((Err(std::io::Error::other(why)), body))
    };
    match tokio::time::timeout(body.idle, body.receiver.next()).await {
        Ok(Some(Inbound::Data(data))) => Some((Ok(data), body)),
        Ok(Some(Inbound::End)) => None,
        Ok(Some(Inbound::Abort(reason))) => failed(body, format!("the plugin aborted: {reason}")),
        Ok(Some(other)) => failed(
            body,
            format!("the plugin sent {} in a response body", kind_of(&other)),
        ),
        Ok(None) => failed(body, "the stream ended without its end".into()),
        Err(_) => {
            let idle = body.idle;
            failed(body, format!("no data for {idle:?} (stream_idle_timeout)"))
        }
    }
}

/// Sends the client's body to the plugin as it arrives, within the plugin's credit; stops when
/// the stream ends. A body over `limit` is aborted and reported on `over`.
async fn pump(
    body: Body,
    sender: StreamSender,
    limit: Option<u64>,
    idle: Duration,
    over: oneshot::Sender<u64>,
) {
    let mut body = body.into_data_stream();
    let mut sent: u64 = 0;
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(idle, body.next()) => next,
            () = sender.ended() => return,
        };
        let chunk = match next {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(None) => {
                let _ = sender.end().await;
                return;
            }
            Ok(Some(Err(e))) => {
                let _ = sender.abort(format!("the client's body failed: {e}")).await;
                return;
            }
            Err(_) => {
                let message = format!("the client sent no body data for {idle:?}");
                let _ = sender.abort(message).await;
                return;
            }
        };
        sent += chunk.len() as u64;
        if let Some(limit) = limit.filter(|&l| sent > l) {
            let message = format!("the request body is larger than {limit} bytes");
            let _ = sender.abort(message).await;
            let _ = over.send(limit);
            return;
        }
        if chunk.is_empty() {
            continue;
        }
        tokio::select! {
            sent = sender.data(chunk) => if sent.is_err() { return },
            () = sender.ended() => return,
        }
    }
}

/// Opens the stream of `wire` to the plugin.
async fn open(
    name: &str,
    instance: &Arc<Instance>,
    wire: &HttpRequest,
) -> Result<(StreamSender, StreamReceiver), ApiError> {
    instance
        .conn
        .open_stream(wire, instance.limits.stream_window)
        .await
        .map_err(|e| call_error(name, e))
}

/// One of the plugin's stream permits, or a 503.
fn stream_permit(name: &str, instance: &Arc<Instance>) -> Result<OwnedSemaphorePermit, ApiError> {
    instance.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(
            "plugin busy",
            format!(
                "plugin {name:?} already has {} streams open, its limit (max_streams)",
                instance.limits.max_streams
            ),
        )
    })
}

/// The plugin's answer head, or the client's error.
fn head_of(
    name: &str,
    head: Result<Option<Inbound>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> Result<HttpResponse, ApiError> {
    let head = match head {
        Err(_) => return Err(call_error(name, CallError::Timeout(timeout))),
        Ok(None) => {
            return Err(call_error(
                name,
                CallError::Closed("the stream ended".into()),
            ))
        }
        Ok(Some(Inbound::Head(head))) => head,
        Ok(Some(Inbound::Abort(reason))) => {
            return Err(call_error(name, CallError::Closed(reason)))
        }
        Ok(Some(other)) => {
            return Err(invalid(
                name,
                format!("the plugin sent {} before its answer", kind_of(&other)),
            ))
        }
    };
    match head.decode_result::<Http>() {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => Err(call_error(name, CallError::Remote(error))),
        Err(e) => Err(call_error(name, CallError::Protocol(e.to_string()))),
    }
}

fn invalid(name: &str, detail: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "invalid response from plugin",
        format!("plugin {name:?}: {detail}"),
    )
}

fn kind_of(inbound: &Inbound) -> &'static str {
    match inbound {
        Inbound::Head(_) => "a second answer",
        Inbound::Data(_) => "body data",
        Inbound::End => "a body end",
        Inbound::Abort(_) => "an abort",
        Inbound::Ws(..) => "a WebSocket message",
        Inbound::Close(..) => "a WebSocket close",
    }
}

/// Takes a WebSocket upgrade on a route declared with `websocket`: asks the plugin, and when it
/// answers 101, upgrades the client and bridges the two.
pub(super) async fn websocket(
    name: &str,
    instance: &Arc<Instance>,
    wire: HttpRequest,
    mut parts: Parts,
) -> Result<Response, ApiError> {
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return Err(ApiError::new(
                rejection.status(),
                "WebSocket upgrade required",
                format!(
                    "route {} of plugin {name:?} takes WebSocket connections only: {}",
                    wire.route,
                    rejection.body_text()
                ),
            ))
        }
    };
    let permit = stream_permit(name, instance)?;
    let limits = &instance.limits;
    let (sender, mut receiver) = open(name, instance, &wire).await?;
    let head = tokio::time::timeout(limits.request_timeout, receiver.next()).await;
    let answer = head_of(name, head, limits.request_timeout)?;
    if answer.status != 101 {
        // The plugin refused the upgrade: its answer is the client's.
        receiver.finish();
        return build_response(answer).map_err(|detail| invalid(name, detail));
    }
    let max = limits.max_ws_message;
    let bridge = Bridge {
        plugin: name.to_owned(),
        sender,
        receiver,
        idle: limits.stream_idle_timeout,
        max,
        _permit: permit,
    };
    Ok(upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| bridge.run(socket)))
}

/// A WebSocket between a client and a plugin.
struct Bridge {
    plugin: String,
    sender: StreamSender,
    receiver: StreamReceiver,
    idle: Duration,
    max: usize,
    _permit: OwnedSemaphorePermit,
}

/// How a bridged WebSocket ended.
#[derive(Debug)]
enum Ending {
    /// The client closed it (the plugin was told).
    ClientClosed,
    /// The client's connection went away without a close.
    ClientGone,
    /// The client sent a message over the limit.
    ClientTooBig,
    /// The client broke the WebSocket protocol.
    ClientFailed(String),
    /// The plugin closed it with this code and reason.
    PluginClosed(u16, String),
    /// The plugin sent a message over the limit.
    PluginTooBig(usize),
    /// The plugin failed, or sent something that is not a WebSocket message.
    PluginFailed(String),
    /// No message either way for the idle timeout.
    Idle,
}

impl Bridge {
    async fn run(mut self, socket: WebSocket) {
        let (mut to_client, mut from_client) = socket.split();
        let activity = Notify::new();
        let ending = {
            let (sender, receiver, activity) = (&self.sender, &mut self.receiver, &activity);
            let max = self.max;
            let up = async {
                while let Some(message) = from_client.next().await {
                    activity.notify_one();
                    let (kind, data) = match message {
                        Ok(Message::Text(text)) => (WsKind::Text, Bytes::from(text)),
                        Ok(Message::Binary(data)) => (WsKind::Binary, data),
                        Ok(Message::Ping(data)) => (WsKind::Ping, data),
                        Ok(Message::Pong(data)) => (WsKind::Pong, data),
                        Ok(Message::Close(frame)) => {
                            let (code, reason) = frame
                                .map_or((1005, String::new()), |f| (f.code, f.reason.to_string()));
                            let _ = sender.close(code, reason).await;
                            return Ending::ClientClosed;
                        }
                        Err(e) => {
                            let e = e.into_inner();
                            if too_big(&*e) {
                                return Ending::ClientTooBig;
                            }
                            return Ending::ClientFailed(e.to_string());
                        }
                    };
                    if sender.ws(kind, data).await.is_err() {
                        return Ending::PluginFailed("the stream to the plugin ended".into());
                    }
                }
                Ending::ClientGone
            };
            let down = async {
                let mut pieces = Pieces::default();
                while let Some(inbound) = receiver.next().await {
                    activity.notify_one();
                    let inbound = match inbound {
                        Inbound::Ws(_, data, _) if pieces.pending() + data.len() > max => {
                            return Ending::PluginTooBig(pieces.pending() + data.len())
                        }
                        Inbound::Ws(kind, data, more) => match pieces.add(data, more) {
                            Some(whole) => Inbound::Ws(kind, whole, false),
                            None => continue,
                        },
                        other => other,
                    };
                    let message = match inbound {
                        Inbound::Ws(WsKind::Text, data, _) => match Utf8Bytes::try_from(data) {
                            Ok(text) => Message::Text(text),
                            Err(_) => {
                                return Ending::PluginFailed(
                                    "it sent a text message that is not UTF-8".into(),
                                )
                            }
                        },
                        Inbound::Ws(WsKind::Binary, data, _) => Message::Binary(data),
                        Inbound::Ws(WsKind::Ping, data, _) => Message::Ping(data),
                        Inbound::Ws(WsKind::Pong, data, _) => Message::Pong(data),
                        Inbound::Close(code, reason) => return Ending::PluginClosed(code, reason),
                        Inbound::End => return Ending::PluginClosed(1000, String::new()),
                        Inbound::Abort(reason) => return Ending::PluginFailed(reason),
                        other @ (Inbound::Head(_) | Inbound::Data(_)) => {
                            return Ending::PluginFailed(format!(
                                "it sent {} on a WebSocket",
                                kind_of(&other)
                            ))
                        }
                    };
                    if to_client.send(message).await.is_err() {
                        return Ending::ClientGone;
                    }
                }
                Ending::PluginFailed("the stream ended".into())
            };
            let idle = async {
                while tokio::time::timeout(self.idle, activity.notified())
                    .await
                    .is_ok()
                {}
                Ending::Idle
            };
            tokio::select! {
                ending = up => ending,
                ending = down => ending,
                ending = idle => ending,
            }
        };
        tracing::debug!(plugin = %self.plugin, id = self.receiver.id(), ?ending, "WebSocket ended");
        let (to_client_close, to_plugin_close) = match &ending {
            Ending::ClientClosed => (None, None),
            Ending::ClientGone => (None, None),
            Ending::ClientTooBig => (
                Some((1009, "message too big".to_owned())),
                Some((
                    1009,
                    format!("the client sent a message over {} bytes", self.max),
                )),
            ),
            Ending::ClientFailed(e) => (None, Some((1002, format!("the client failed: {e}")))),
            Ending::PluginClosed(code, reason) => (Some((sendable(*code), reason.clone())), None),
            Ending::PluginTooBig(len) => {
                tracing::warn!(plugin = %self.plugin, "the plugin sent a WebSocket message of {len} bytes, over the limit of {}", self.max);
                (
                    Some((1009, "message too big".to_owned())),
                    Some((
                        1009,
                        format!("message of {len} bytes over the limit of {}", self.max),
                    )),
                )
            }
            Ending::PluginFailed(reason) => {
                tracing::warn!(plugin = %self.plugin, "WebSocket ended by the plugin: {reason}");
                (Some((1011, "plugin error".to_owned())), None)
            }
            Ending::Idle => (
                Some((1001, "idle timeout".to_owned())),
                Some((1001, format!("no message for {:?}", self.idle))),
            ),
        };
        if let Some((code, reason)) = to_plugin_close {
            let _ = self.sender.close(code, reason).await;
        }
        if matches!(ending, Ending::PluginClosed(..) | Ending::ClientClosed) {
            self.receiver.finish();
        }
        if let Some((code, reason)) = to_client_close {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from(reason),
            };
            let _ = to_client.send(Message::Close(Some(frame))).await;
        }
        let _ = to_client.close().await;
    }
}

/// A close code a plugin asked for, if it may be sent in a close frame (RFC 6455 §7.4);
/// otherwise 1000.
fn sendable(code: u16) -> u16 {
    match code {
        1000..=1003 | 1007..=1014 | 3000..=4999 => code,
        _ => 1000,
    }
}

/// Whether a WebSocket read failed because a message was over the size limit.
fn too_big(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    matches!(
        e.downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}
