//! HTTP requests from the supervisor: each is admitted, matched to its route and handed to the
//! plugin's handler; a streaming or WebSocket route gets a task and a stream link (see
//! [`super::track`]).

use super::local::Local;
use super::weight::Then;
use super::{admit_with, track, Shared};
use crate::answer::{http_answer, panic_message, send_body};
use crate::kv::Host;
use crate::plugin::RouteHandler;
use crate::request::Request;
use crate::stream::{BodyStream, Link, WebSocket};
use bytes::Bytes;
use futures_util::FutureExt;
use plugd_protocol::codes;
use plugd_protocol::envelope::encode_response;
use plugd_protocol::message::http::HttpRequestBuf;
use plugd_protocol::Request as WireRequest;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

pub(super) async fn start_http<S: Send + Sync + 'static>(
    shared: &Arc<Shared<S>>,
    local: &mut Local,
    req: WireRequest,
) {
    let id = req.id;
    let Some(params) = admit_with(shared, &req, HttpRequestBuf::decode).await else {
        return;
    };
    let Some((route, weight)) = shared
        .routes
        .iter()
        .zip(&shared.weights.routes)
        .find(|(r, _)| r.method == params.method() && r.path == params.route())
    else {
        let message = format!("no route {} {}", params.method(), params.route());
        return shared.reply_error(id, codes::NO_ROUTE, message).await;
    };
    let route_name = route.path.as_str();
    let (streamed, websocket) = (params.stream, params.websocket);
    let mut request = Request::new(params, Host::new(shared.caller.clone(), 0));
    // Registered before the handler starts: what plugd sends next belongs to it.
    let link = if streamed || websocket || route.stream {
        let (rx, credit) = shared.streams.open(id, shared.window);
        let link = Arc::new(Link {
            id,
            out: shared.out.clone(),
            max_frame: shared.max_frame(),
            credit,
            window: shared.window,
            closed: Default::default(),
            streams: shared.streams.clone(),
        });
        Some((rx, link))
    } else {
        None
    };
    match (&route.handler, link) {
        (RouteHandler::Ws(handler), Some((rx, link))) if websocket => {
            let socket = WebSocket::new(rx, link.clone());
            let future = handler(request, socket, shared.state.clone());
            let task_shared = shared.clone();
            let route_name = route_name.to_owned();
            track(shared, local, (id, weight), Then::Task, async move {
                let _open = OpenStream(&task_shared, id);
                let accept = plugd_protocol::message::http::HttpResponse {
                    status: 101,
                    headers: Vec::new(),
                    body: Bytes::new(),
                    stream: false,
                };
                if let Ok(frame) = encode_response(id, &accept, task_shared.max_frame()) {
                    task_shared.send(frame).await;
                }
                if let Err(panic) = AssertUnwindSafe(future).catch_unwind().await {
                    let what = panic_message(&panic);
                    tracing::error!(route = %route_name, "WebSocket handler panicked: {what}");
                }
                // Closes it when the handler did not.
                let _ = link.close(1000, "").await;
            });
        }
        (RouteHandler::Http(handler), link) => {
            let link = link.map(|(rx, link)| {
                if streamed {
                    request = request
                        .clone()
                        .with_body_stream(BodyStream::new(rx, link.clone()));
                }
                link
            });
            let mut future =
                AssertUnwindSafe(handler(request, shared.state.clone())).catch_unwind();
            // Most handlers answer without waiting: then the answer goes out from here, with no
            // task (a streaming route always gets one: its body flows after the head).
            let then = if link.is_none() {
                match weight.first_poll(shared.threads, &mut future) {
                    Ok(outcome) => {
                        let (frame, _) =
                            http_answer(id, route_name, outcome, false, shared.max_frame());
                        if let Some(frame) = frame {
                            shared.send(frame).await;
                        }
                        return;
                    }
                    Err(then) => then,
                }
            } else {
                Then::Task
            };
            let task_shared = shared.clone();
            let route_name = route_name.to_owned();
            track(shared, local, (id, weight), then, async move {
                let _open = link.as_ref().map(|_| OpenStream(&task_shared, id));
                let outcome = future.await;
                let max = task_shared.max_frame();
                let (frame, body) = http_answer(id, &route_name, outcome, link.is_some(), max);
                if let Some(frame) = frame {
                    task_shared.send(frame).await;
                }
                if let (Some(body), Some(link)) = (body, link) {
                    send_body(&route_name, body, &link).await;
                }
            });
        }
        (RouteHandler::Ws(_), _) => {
            shared.streams.remove(id);
            let message = format!("route {route_name} takes WebSocket upgrades only");
            shared.reply_error(id, codes::NO_ROUTE, message).await;
        }
    }
}

/// Removes a stream's registration when its task ends (or is aborted by a cancel).
struct OpenStream<'a, S: Send + Sync + 'static>(&'a Arc<Shared<S>>, u64);

impl<S: Send + Sync + 'static> Drop for OpenStream<'_, S> {
    fn drop(&mut self) {
        self.0.streams.remove(self.1);
    }
}
