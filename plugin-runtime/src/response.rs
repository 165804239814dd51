//! What a handler returns: anything that converts into a [`Response`].

use crate::plugin::BoxError;
use crate::stream::SseEvent;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use plugd_protocol::message::http::HttpResponse;
use serde::Serialize;
use std::pin::Pin;
use tokio::sync::mpsc;

/// A streamed body: chunks as the handler produces them, or an error that aborts the response.
pub(crate) type BodySource = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// An HTTP response: status, headers and body, which may be streamed (on a route declared with
/// [`crate::Plugin::stream`]).
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// Body bytes (for a streamed response, the bytes sent before the stream).
    pub body: Bytes,
    pub(crate) stream: Option<BodySource>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.body)
            .field("streamed", &self.stream.is_some())
            .finish()
    }
}

/// Writes a streamed response body from anywhere: each [`BodyWriter::send`] waits until the
/// chunk before it has been taken, and plugd takes chunks only as fast as the client reads.
#[derive(Debug, Clone)]
pub struct BodyWriter {
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
}

impl BodyWriter {
    /// Sends the next chunk; an error means the response is over (the client went away).
    pub async fn send(&self, data: impl Into<Bytes>) -> Result<(), crate::StreamClosed> {
        self.tx
            .send(Ok(data.into()))
            .await
            .map_err(|_| crate::StreamClosed)
    }

    /// Aborts the response: the client sees it cut off, not complete.
    pub async fn abort(&self, message: impl Into<String>) {
        let _ = self.tx.send(Err(message.into().into())).await;
    }

    /// Whether the response is over (the client went away or the stream ended).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Sends Server-Sent Events on a response made by [`Response::sse_channel`].
#[derive(Debug, Clone)]
pub struct SseWriter {
    body: BodyWriter,
}

impl SseWriter {
    /// Sends one event; it reaches the client at once.
    pub async fn send(&self, event: SseEvent) -> Result<(), crate::StreamClosed> {
        self.body.send(event.to_bytes()).await
    }

    /// Whether the client is gone.
    pub fn is_closed(&self) -> bool {
        self.body.is_closed()
    }
}

/// The stream of a [`BodyWriter`]'s channel.
fn receiver_stream(rx: mpsc::Receiver<Result<Bytes, BoxError>>) -> BodySource {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

impl Response {
    /// A 200 response with a body and a content type.
    pub fn new(content_type: &str, body: impl Into<Bytes>) -> Self {
        Response {
            status: 200,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
            stream: None,
        }
    }

    /// A 200 response whose body is `body`'s chunks, sent as they come (on a streaming route).
    /// An error from the stream aborts the response, so the client does not take it as whole.
    /// Add a `content-length` header when the length is known.
    pub fn stream<S, E>(content_type: &str, body: S) -> Self
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let mut response = Response::new(content_type, Bytes::new());
        response.stream = Some(Box::pin(body.map(|item| item.map_err(Into::into))));
        response
    }

    /// A 200 streamed response and the [`BodyWriter`] that writes its body; the body ends when
    /// every writer is dropped. Return the response from the handler and write from a task.
    pub fn channel(content_type: &str) -> (BodyWriter, Self) {
        let (tx, rx) = mpsc::channel(1);
        let mut response = Response::new(content_type, Bytes::new());
        response.stream = Some(receiver_stream(rx));
        (BodyWriter { tx }, response)
    }

    /// A `text/event-stream` response sending each of `events` as it comes.
    pub fn sse<S>(events: S) -> Self
    where
        S: Stream<Item = SseEvent> + Send + 'static,
    {
        Response::stream(
            "text/event-stream",
            events.map(|e| Ok::<_, std::convert::Infallible>(e.to_bytes())),
        )
        .with_header("cache-control", "no-cache")
    }

    /// A `text/event-stream` response and the [`SseWriter`] that sends its events.
    pub fn sse_channel() -> (SseWriter, Self) {
        let (body, response) = Response::channel("text/event-stream");
        (
            SseWriter { body },
            response.with_header("cache-control", "no-cache"),
        )
    }

    /// Whether the body is streamed.
    pub fn is_streamed(&self) -> bool {
        self.stream.is_some()
    }

    /// A 200 `text/plain` response.
    pub fn text(body: impl Into<String>) -> Self {
        Response::new("text/plain; charset=utf-8", body.into())
    }

    /// A 200 `application/json` response. A value that cannot be serialised gives a 500.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new("application/json", body),
            Err(e) => {
                HttpError::internal(format!("cannot serialise response: {e}")).into_response()
            }
        }
    }

    /// A 200 `application/octet-stream` response.
    pub fn bytes(body: impl Into<Bytes>) -> Self {
        Response::new("application/octet-stream", body)
    }

    /// The same response with another status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// The same response with one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub(crate) fn into_wire(self) -> (HttpResponse, Option<BodySource>) {
        let wire = HttpResponse {
            status: self.status,
            headers: self.headers,
            body: self.body,
            stream: self.stream.is_some(),
        };
        (wire, self.stream)
    }
}

/// Converts a handler's return value into a [`Response`].
pub trait IntoResponse {
    /// Performs the conversion.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        Response::text(self)
    }
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        Response::text(self)
    }
}

impl IntoResponse for Vec<u8> {
    fn into_response(self) -> Response {
        Response::bytes(self)
    }
}

impl IntoResponse for Bytes {
    fn into_response(self) -> Response {
        Response::bytes(self)
    }
}

impl IntoResponse for () {
    fn into_response(self) -> Response {
        Response {
            status: 204,
            headers: Vec::new(),
            body: Bytes::new(),
            stream: None,
        }
    }
}

/// A status code with any other response: `(201, Json(item))`.
impl<T: IntoResponse> IntoResponse for (u16, T) {
    fn into_response(self) -> Response {
        self.1.into_response().with_status(self.0)
    }
}

impl<T: IntoResponse, E: IntoResponse> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(v) => v.into_response(),
            Err(e) => e.into_response(),
        }
    }
}

/// A JSON body: `Json(value)` answers 200 with `application/json`.
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        Response::json(&self.0)
    }
}

/// An error answer: a status and a message, sent as `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// HTTP status code.
    pub status: u16,
    /// What went wrong, for the caller.
    pub message: String,
}

impl HttpError {
    /// An error with any status.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        HttpError::new(400, message)
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        HttpError::new(404, message)
    }

    /// 500 Internal Server Error.
    pub fn internal(message: impl Into<String>) -> Self {
        HttpError::new(500, message)
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for HttpError {}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        Response::new("application/json", body.to_string()).with_status(self.status)
    }
}
