//! Plugin routes: `/plugins/{name}/{path}` is forwarded to the plugin's matching route over its
//! multiplexed connection, and the plugin's answer is the client's.
//!
//! Every failure is an [`ApiError`]: 404 unknown plugin or route, 405 wrong method (with
//! `Allow`), 400 a path that climbs out of the plugin's mount or carries a NUL byte, 401/403 for
//! a route that requires a permission, 408 a body slower than the request timeout, 413 body
//! over the limit, 503 plugin
//! not ready or busy, 502 plugin died or misbehaved during the request, 504 no answer within the
//! request timeout.
//!
//! During a canary ([`crate::supervise::canary`]) the canary's share of requests goes to its
//! instance, and each side's status and latency are recorded for its verdict.

use super::auth::authorize;
use super::error::ApiError;
use super::Edge;
use crate::ipc::CallError;
use crate::settings::AdminToken;
use crate::supervise::canary::{Served, Side};
use crate::supervise::router::{normalize, Lookup};
use crate::supervise::{PluginSlot, PluginState, StandbyView};
use axum::body::Body;
use axum::body::HttpBody as _;
use axum::extract::State;
use axum::http::header::{HeaderName, HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use plugd_protocol::codes;
use plugd_protocol::message::http::{Http, HttpRequest, HttpRequestView, HttpResponse};
use std::borrow::Cow;
use std::sync::Arc;

/// Headers that describe one hop, not the message, and are never forwarded (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

/// Forwards one request to a plugin, doing what the router's request-id layers do for other
/// routes: a request without an `x-request-id` gets a fresh one, and the answer carries it.
pub async fn with_request_id(edge: Arc<Edge>, mut request: axum::extract::Request) -> Response {
    let id = match request.headers().get(X_REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let fresh = edge.request_ids.next_value();
            request.headers_mut().insert(X_REQUEST_ID, fresh.clone());
            fresh
        }
    };
    let mut response = proxy(State(edge), request).await;
    if !response.headers().contains_key(X_REQUEST_ID) {
        response.headers_mut().insert(X_REQUEST_ID, id);
    }
    response
}

/// The request id header, as a name known in advance (no parsing of a string to look it up).
pub(super) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Forwards one request to a plugin.
pub async fn proxy(State(edge): State<Arc<Edge>>, request: axum::extract::Request) -> Response {
    let started = std::time::Instant::now();
    // The slot is taken out of the registry's map at once rather than the map held for the
    // whole request: a request holds no reference into the map across its wait.
    let name = plugin_name(request.uri().path());
    let Some(slot) = edge.registry.get(name) else {
        // Not counted: arbitrary names in URLs must not grow the metrics.
        return ApiError::not_found(
            "unknown plugin",
            format!("no plugin named {name:?} is installed"),
        )
        .into_response();
    };
    let (mut response, route, served) = match forward(&edge, &slot, request).await {
        Ok(f) => (f.response, Some(f.route), f.served),
        Err(e) => (e.into_response(), None, None),
    };
    let name = slot.name();
    // During a canary, each side's answers are what it is judged by.
    if let Some(served) = served {
        served
            .canary
            .record(served.side, response.status().as_u16(), started.elapsed());
        if served.set_cookie {
            if let Ok(cookie) = HeaderValue::from_str(&served.canary.cookie(name, served.side)) {
                response.headers_mut().append(SET_COOKIE, cookie);
            }
        }
    }
    let route = route.as_deref().unwrap_or("(none)");
    edge.metrics
        .record(name, route, response.status().as_u16(), started.elapsed());
    response
}

/// A request a plugin's route took: the answer, the route pattern that matched (for the
/// metrics) and, during a canary, the side that served it.
struct Forwarded {
    response: Response,
    route: String,
    served: Option<Served>,
}

fn plugin_name(path: &str) -> &str {
    let rest = path.strip_prefix("/plugins/").unwrap_or_default();
    rest.split('/').next().unwrap_or_default()
}

/// Forwards `request` to the plugin of `slot`, whose name is the path's first segment.
async fn forward(
    edge: &Edge,
    slot: &PluginSlot,
    request: axum::extract::Request,
) -> Result<Forwarded, ApiError> {
    let (parts, body) = request.into_parts();
    let full_path = parts.uri.path();
    let rest = full_path.strip_prefix("/plugins/").unwrap_or_default();
    let (name, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let state = slot.state();
    let stable = match &*state {
        PluginState::Ready(instance) => instance,
        other => {
            let why = other.reason().map(|r| format!(": {r}")).unwrap_or_default();
            return Err(ApiError::unavailable(
                "plugin not ready",
                format!("plugin {name:?} is {}{why}", other.name()),
            ));
        }
    };
    // The serving instance is dying (its connection closed) and a warm standby is ready: the
    // standby serves already, before the reconcile loop makes it the current instance.
    let standby = stable.conn.is_closed().then(|| slot.standby()).flatten();
    let stable = match standby.as_deref() {
        Some(StandbyView::Ready(standby)) => standby,
        _ => stable,
    };
    // During a canary its share of the requests goes to it (hooks and services never do).
    let served = slot.canary().map(|canary| {
        let (side, set_cookie) = canary.choose(&parts.headers);
        Served {
            canary,
            side,
            set_cookie,
        }
    });
    let instance = match &served {
        Some(s) if s.side == Side::Candidate => &s.canary.instance,
        _ => stable,
    };
    let method = parts.method.as_str();
    let path = normalize(path).map_err(|e| ApiError::bad_request("invalid path", e))?;
    let path = path.as_ref();
    let mut caller = None;
    let (route, params, kind) = match instance.routes.lookup(method, path) {
        Lookup::Found {
            pattern,
            params,
            kind,
        } => {
            if let Some(permission) = &kind.permission {
                caller = Some(authorize(
                    &edge.admin_tokens,
                    &parts.headers,
                    permission,
                    name,
                    path,
                )?);
            }
            let kind = Streaming {
                stream: kind.stream,
                websocket: kind.websocket,
                max_body: kind.max_body,
            };
            (pattern.to_owned(), params, kind)
        }
        Lookup::BadParam(why) => {
            return Err(ApiError::bad_request(
                "invalid path",
                format!("{path} of plugin {name:?}: {why}"),
            ))
        }
        Lookup::NotFound => {
            return Err(ApiError::not_found(
                "no such route",
                format!("plugin {name:?} has no route for {path}"),
            ))
        }
        Lookup::MethodNotAllowed { allowed } => {
            let allow = allowed.join(", ");
            let mut error = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                format!("{path} of plugin {name:?} accepts {allow}, not {method}"),
            );
            if let Ok(value) = HeaderValue::from_str(&allow) {
                error = error.with_header(ALLOW, value);
            }
            return Err(error);
        }
    };

    let request_id = request_id(edge, &parts.headers);
    let headers = forward_headers(&parts.headers, caller);
    let empty = Bytes::new();
    // The body (unless it streams) and the deadline are filled in once the body is read.
    let head = HttpRequestView {
        request_id: &request_id.id,
        method,
        path,
        route: &route,
        params: &params,
        query: parts.uri.query().unwrap_or_default(),
        headers: &headers,
        body: &empty,
        deadline_unix_ms: 0,
        stream: kind.stream,
        websocket: kind.websocket,
    };
    if kind.stream || kind.websocket {
        let wire = HttpRequest {
            deadline_unix_ms: plugd_protocol::time::deadline_after(instance.limits.request_timeout),
            ..head.to_owned_request()
        };
        // The upgrade needs the request's parts, which `name` and the id borrow.
        let request_id = request_id.into_owned();
        let answer = if kind.websocket {
            let name = name.to_owned();
            Box::pin(super::stream::websocket(&name, instance, wire, parts)).await
        } else {
            let limit = stream_limit(kind.max_body, instance.limits.max_stream_body);
            Box::pin(super::stream::forward(
                name,
                instance,
                wire,
                &parts.headers,
                body,
                limit,
            ))
            .await
        };
        return Ok(finish(
            answer.unwrap_or_else(IntoResponse::into_response),
            &request_id,
            route,
            served,
        ));
    }
    let max_body = kind.max_body.map_or(instance.limits.max_body, |m| {
        usize::try_from(m)
            .unwrap_or(usize::MAX)
            .min(instance.limits.max_body)
    });

    // Over the in-flight limit: refuse at once rather than queue without bound.
    let Ok(_permit) = instance.in_flight.clone().try_acquire_owned() else {
        return Err(ApiError::unavailable(
            "plugin busy",
            format!(
                "plugin {name:?} already has {} requests in flight, its limit",
                instance.limits.max_in_flight
            ),
        ));
    };

    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
            format!(
                "route {route} of plugin {name:?} accepts request bodies of at most {max_body} bytes"
            ),
        )
        // The rest of the body is never read, so this connection cannot carry another request.
        .with_header(CONNECTION, HeaderValue::from_static("close"))
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body as u64) {
        return Err(too_large());
    }
    let body = if body.is_end_stream() {
        // Nothing to read (a GET, most often): no timer to arm.
        Bytes::new()
    } else {
        // A client that sends its body slowly gets the request timeout for it, no more.
        let reading = Limited::new(body, max_body).collect();
        let Ok(read) = tokio::time::timeout(instance.limits.request_timeout, reading).await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request body too slow",
                format!(
                    "the request body did not arrive within {:?}",
                    instance.limits.request_timeout
                ),
            )
            .with_header(CONNECTION, HeaderValue::from_static("close")));
        };
        match read {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => return Err(too_large()),
            Err(e) => {
                return Err(ApiError::bad_request(
                    "cannot read request body",
                    e.to_string(),
                ))
            }
        }
    };

    let wire = HttpRequestView {
        body: &body,
        deadline_unix_ms: plugd_protocol::time::deadline_after(instance.limits.request_timeout),
        ..head
    };
    let mut serving = instance.clone();
    let mut retried = false;
    let answer = loop {
        // On its lane when this thread has one to the instance: the answer is read here too.
        let answer = serving
            .http_conn()
            .call_with::<Http>(
                |id, max| wire.encode(id, max),
                serving.limits.request_timeout,
            )
            .await;
        // During a reload the old instance may refuse (draining) or be gone before the request
        // was sent; then the new one takes it, once. A safe request (GET, HEAD, OPTIONS) that
        // an instance died with is sent once to the warm standby taking over. (A canary is not
        // reloaded: its refusal stands.)
        let refused = match &answer {
            Err(CallError::NotSent(_)) => true,
            Err(CallError::Remote(e)) => e.code == codes::SHUTTING_DOWN,
            Err(CallError::Closed(_)) => parts.method.is_safe(),
            _ => false,
        };
        if refused && !retried && served.as_ref().is_none_or(|s| s.side == Side::Stable) {
            let died = matches!(answer, Err(CallError::Closed(_)));
            let newer = match (&*slot.state(), slot.standby().as_deref()) {
                (_, Some(StandbyView::Ready(standby))) if died => Some(standby.clone()),
                (PluginState::Ready(newer), _) => Some(newer.clone()),
                _ => None,
            };
            if let Some(newer) = newer.filter(|n| n.epoch != serving.epoch) {
                serving = newer;
                retried = true;
                continue;
            }
        }
        break answer;
    };
    let response = match answer.and_then(answer_response) {
        Ok(built) => match built {
            Ok(response) => response,
            Err(detail) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "invalid response from plugin",
                format!("plugin {name:?}: {detail}"),
            )
            .into_response(),
        },
        Err(e) => call_error(name, e).into_response(),
    };
    Ok(finish(response, &request_id, route, served))
}

/// What a route declared about streaming.
#[derive(Debug, Clone, Copy)]
struct Streaming {
    stream: bool,
    websocket: bool,
    max_body: Option<u64>,
}

/// The limit on a streaming route's request body: the route's own, and the plugin's
/// `max_stream_body`, whichever is lower; none when neither is set.
fn stream_limit(route: Option<u64>, plugin: Option<u64>) -> Option<u64> {
    match (route, plugin) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The request's id: the `x-request-id` it carries when that is usable (the client's, or the
/// one plugd gave it on the way in), otherwise a fresh one.
struct RequestIdOf<'a> {
    /// Borrowed from the request's header when it has one (every request that took the
    /// direct path has: [`with_request_id`] gave it one).
    id: Cow<'a, str>,
    /// Not the request's header, so the answer must be given it here (the request's own header
    /// is copied onto the answer by the layer that set it: [`with_request_id`], or tower-http's
    /// `PropagateRequestIdLayer` when plugd writes an access log).
    fresh: bool,
}

fn request_id<'a>(edge: &Edge, headers: &'a HeaderMap) -> RequestIdOf<'a> {
    match headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
        Some(id) if !id.is_empty() && id.len() <= 128 => RequestIdOf {
            id: Cow::Borrowed(id),
            fresh: false,
        },
        _ => RequestIdOf {
            id: Cow::Owned(edge.request_ids.next_id()),
            fresh: true,
        },
    }
}

impl RequestIdOf<'_> {
    /// The same id, owning its text (for when the request's parts go elsewhere).
    fn into_owned(self) -> RequestIdOf<'static> {
        RequestIdOf {
            id: Cow::Owned(self.id.into_owned()),
            fresh: self.fresh,
        }
    }
}

/// Adds what every proxied answer carries, its request id, and keeps the route and side that
/// served it for the metrics and the canary.
fn finish(
    mut response: Response,
    request_id: &RequestIdOf<'_>,
    route: String,
    served: Option<Served>,
) -> Forwarded {
    // A plugin cannot answer with an id of its own; the request's own header (the common case)
    // is added by the layer that set it, without a copy made here.
    if request_id.fresh || response.headers().contains_key(X_REQUEST_ID) {
        if let Ok(value) = HeaderValue::from_str(&request_id.id) {
            response.headers_mut().insert(X_REQUEST_ID, value);
        }
    }
    Forwarded {
        response,
        route,
        served,
    }
}

/// The client's answer when a call to plugin `name` failed.
pub(super) fn call_error(name: &str, e: CallError) -> ApiError {
    match e {
        CallError::Closed(reason) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "plugin died during the request",
            format!("plugin {name:?}: {reason}"),
        ),
        CallError::Timeout(after) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "plugin timed out",
            format!("plugin {name:?} did not answer within {after:?}; the request was cancelled"),
        ),
        CallError::Remote(e) if e.code == codes::SHUTTING_DOWN => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "plugin not ready",
            format!("plugin {name:?} is shutting down"),
        ),
        CallError::NotSent(reason) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "plugin not ready",
            format!("plugin {name:?} is gone: {reason}"),
        ),
        CallError::Remote(e) => {
            let (status, error) = remote_status(e.code);
            ApiError::new(
                status,
                error,
                format!("plugin {name:?} answered with an error: {e}"),
            )
        }
        CallError::Protocol(detail) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "protocol error",
            format!("plugin {name:?}: {detail}"),
        ),
    }
}

/// The HTTP status and error for a plugin's error answer to an `http` request (PROTOCOL.md,
/// "How an error becomes an HTTP status").
fn remote_status(code: i32) -> (StatusCode, &'static str) {
    match code {
        codes::NO_ROUTE => (StatusCode::NOT_FOUND, "no such route"),
        codes::INTERNAL | codes::HANDLER_PANICKED => {
            (StatusCode::INTERNAL_SERVER_ERROR, "plugin failed")
        }
        codes::SHUTTING_DOWN | codes::BUSY | codes::NOT_AVAILABLE => {
            (StatusCode::SERVICE_UNAVAILABLE, "plugin not ready")
        }
        codes::DEADLINE_EXCEEDED => (StatusCode::GATEWAY_TIMEOUT, "plugin timed out"),
        _ => (StatusCode::BAD_GATEWAY, "plugin error"),
    }
}

/// The headers a plugin gets: hop-by-hop ones removed, `x-plugd-*` only as plugd sets them
/// (a client cannot claim an identity), and a token plugd verified kept from the plugin.
fn forward_headers<'a>(
    headers: &'a HeaderMap,
    caller: Option<&AdminToken>,
) -> Vec<(&'a str, Cow<'a, str>)> {
    // Headers the client named in `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
    // Borrowed names compared without case, not lower-cased copies (this is the proxy path).
    let named: Vec<&str> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let mut out: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(headers.len() + 2);
    out.extend(
        headers
            .iter()
            .filter(|(k, _)| !is_hop_by_hop(k.as_str()) && !k.as_str().starts_with("x-plugd-"))
            .filter(|(k, _)| !named.iter().any(|n| n.eq_ignore_ascii_case(k.as_str())))
            .filter(|(k, _)| caller.is_none() || *k != axum::http::header::AUTHORIZATION)
            .map(|(k, v)| {
                let value = match v.to_str() {
                    Ok(s) => Cow::Borrowed(s),
                    Err(_) => String::from_utf8_lossy(v.as_bytes()),
                };
                (k.as_str(), value)
            }),
    );
    if let Some(token) = caller {
        out.push(("x-plugd-caller", Cow::Owned(token.name.clone())));
        out.push((
            "x-plugd-permissions",
            Cow::Owned(token.permissions.join(",")),
        ));
    }
    out
}

/// The client's response from a plugin's answer to an `http` request, read in place when it
/// has the usual shape (no owned copies of its headers, the body a slice of the frame). The
/// inner error says why the answer cannot be a response.
fn answer_response(
    answer: plugd_protocol::Response,
) -> Result<Result<Response, String>, CallError> {
    if let Ok(raw) = &answer.outcome {
        if let Some(read) = HttpResponse::read_in_place(raw) {
            return Ok(response_with(
                read.status,
                read.headers,
                Body::from(read.body),
                false,
            ));
        }
    }
    match answer.decode_result::<Http>() {
        Ok(Ok(owned)) => Ok(build_response(owned)),
        Ok(Err(error)) => Err(CallError::Remote(error)),
        Err(e) => Err(CallError::Protocol(e.to_string())),
    }
}

pub(super) fn build_response(answer: HttpResponse) -> Result<Response, String> {
    response_with(
        answer.status,
        answer.headers,
        Body::from(answer.body),
        false,
    )
}

/// A response with the plugin's status and headers (hop-by-hop ones dropped; `content-length`
/// kept only with `keep_length`, for a streamed body whose length the plugin knows) and `body`.
pub(super) fn response_with<N: AsRef<str>, V: AsRef<str>>(
    status: u16,
    plugin_headers: impl IntoIterator<Item = (N, V)>,
    body: Body,
    keep_length: bool,
) -> Result<Response, String> {
    let code = StatusCode::from_u16(status)
        .ok()
        .filter(|_| (200..=599).contains(&status))
        .ok_or_else(|| format!("status {status} is not a final HTTP status (200-599)"))?;
    let mut response = Response::new(body);
    *response.status_mut() = code;
    let headers = response.headers_mut();
    for (name, value) in plugin_headers {
        let (name, value) = (name.as_ref(), value.as_ref());
        // Parsing lower-cases the name, without a copy when it is lower case already.
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("header name {name:?} is not valid"))?;
        if is_hop_by_hop(header.as_str()) && !(keep_length && header == CONTENT_LENGTH) {
            continue;
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("value of header {name:?} is not valid"))?;
        headers.append(header, value);
    }
    Ok(response)
}
