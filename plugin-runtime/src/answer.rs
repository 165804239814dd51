//! Turning a handler's outcome into what goes back to plugd: the answer frame, a panic's
//! message, a streamed body; and the single poll that lets a handler needing no waiting be
//! answered without a task.

use crate::response::{BodySource, HttpError, IntoResponse};
use crate::stream::Link;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use plugd_protocol::envelope::{encode_error, encode_response};
use plugd_protocol::{codes, EncodeError, ErrorObject};
use std::task::Poll;

/// Polls `future` once, without a task: `Ready` when it needs no waiting. (The waker is a
/// no-op: a future that is not ready goes into the reader's set, which counts it as woken and
/// polls it again at once with its own waker, or into a task, which does the same.)
pub(crate) fn poll_once<F: std::future::Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    future.poll_unpin(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

/// A handler's outcome as the answer frame for request `id`, and the streamed body that
/// follows it (only on a route with a stream link, `streaming`). A panic answers 500, as does a
/// streamed body on a route not declared to stream.
pub(crate) fn http_answer(
    id: u64,
    route_name: &str,
    outcome: Result<crate::response::Response, Box<dyn std::any::Any + Send>>,
    streaming: bool,
    max: usize,
) -> (Option<Bytes>, Option<BodySource>) {
    let response = match outcome {
        Ok(response) => response,
        Err(panic) => {
            let what = panic_message(&panic);
            tracing::error!(route = %route_name, "handler panicked: {what}");
            HttpError::internal(format!("handler panicked: {what}")).into_response()
        }
    };
    let (mut head, body) = response.into_wire();
    let body = match body {
        Some(_) if !streaming => {
            tracing::error!(route = %route_name, "a streamed response on a route not declared with .stream()");
            head = HttpError::internal(format!(
                "route {route_name} answered with a streamed body but is not declared as streaming (.stream())"
            ))
            .into_response()
            .into_wire()
            .0;
            None
        }
        body => body,
    };
    (or_internal(id, head.encode_answer(id, max), max), body)
}

/// The answer frame to request `id`: its result, or its error; a result too large to encode
/// answers an internal error instead.
pub(crate) fn result_frame<T: serde::Serialize>(
    id: u64,
    outcome: Result<T, ErrorObject>,
    max: usize,
) -> Option<Bytes> {
    match outcome {
        Ok(value) => or_internal(id, encode_response(id, &value, max), max),
        Err(error) => encode_error(id, &error, max).ok(),
    }
}

/// The encoded answer to request `id`, or an internal error when it could not be encoded.
fn or_internal(id: u64, answer: Result<Bytes, EncodeError>, max: usize) -> Option<Bytes> {
    answer
        .or_else(|e| {
            tracing::error!(id, "cannot send the answer: {e}");
            encode_error(id, &ErrorObject::new(codes::INTERNAL, e.to_string()), max)
        })
        .ok()
}

/// Sends a streamed response body within plugd's credit, then its end (or an abort when the
/// handler's stream failed).
pub(crate) async fn send_body(route: &str, mut body: BodySource, link: &Link) {
    while let Some(item) = body.next().await {
        match item {
            Ok(data) => {
                if link.data(data).await.is_err() {
                    // The client went away; the cancel that follows stops this task.
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(route, "streamed response failed: {e}");
                let _ = link.abort(e.to_string()).await;
                return;
            }
        }
    }
    let _ = link.end().await;
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
