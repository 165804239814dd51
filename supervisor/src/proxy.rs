//! The HTTP side: `/plugins/{name}/{path}` is forwarded to the plugin's matching route over its
//! multiplexed connection; `/healthz` and `/readyz` report on the supervisor itself.
//!
//! Every error is JSON `{"error": …, "detail": …}`: 404 unknown plugin or route, 405 wrong
//! method (with `Allow`), 413 body over the limit, 503 plugin not ready, 502 plugin died or
//! misbehaved during the request, 504 no answer within the request timeout.

use crate::ipc::CallError;
use crate::plugin::{PluginSlot, PluginState};
use crate::router::Lookup;
use crate::settings::AdminToken;
use crate::store::Store;
use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{HeaderName, HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use plugd_protocol::codes;
use plugd_protocol::message::http::{Http, HttpRequest};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Shared by every HTTP handler.
#[derive(Debug)]
pub struct AppState {
    /// Every known plugin, by name; replaced whole by the reconcile loop when the set changes.
    pub plugins: ArcSwap<HashMap<String, Arc<PluginSlot>>>,
    /// Set once every plugin has been started (or has failed to).
    pub ready: AtomicBool,
    next_request: AtomicU64,
    request_prefix: String,
    /// The state store.
    pub store: Store,
    /// Tokens for the admin API.
    pub admin_tokens: Vec<AdminToken>,
    /// The reconcile loop, once it runs (admin actions are sent to it).
    pub reconciler: std::sync::OnceLock<crate::reconcile::Handle>,
    /// Where plugins live (installs unpack here).
    pub plugins_dir: std::path::PathBuf,
    /// Request counts and latencies for `/metrics`.
    pub metrics: crate::metrics::RequestMetrics,
    /// Deadline of one hook handler call.
    pub hook_timeout: std::time::Duration,
    /// This worker's identity in the cluster.
    pub worker: crate::cluster::Worker,
    /// Woken when a plugin's state changes, so the heartbeat reports it at once.
    pub state_changed: tokio::sync::Notify,
}

impl AppState {
    /// State with no plugins yet, not ready.
    pub fn new(
        store: Store,
        admin_tokens: Vec<AdminToken>,
        plugins_dir: std::path::PathBuf,
    ) -> AppState {
        AppState {
            plugins_dir,
            metrics: crate::metrics::RequestMetrics::default(),
            hook_timeout: std::time::Duration::from_secs(5),
            worker: crate::cluster::Worker::new(),
            state_changed: tokio::sync::Notify::new(),
            store,
            admin_tokens,
            reconciler: std::sync::OnceLock::new(),
            plugins: ArcSwap::from_pointee(HashMap::new()),
            ready: AtomicBool::new(false),
            next_request: AtomicU64::new(1),
            request_prefix: format!("{:08x}", rand::random::<u32>()),
        }
    }

    fn request_id(&self) -> String {
        let n = self.next_request.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.request_prefix)
    }
}

/// A JSON error body with a status.
pub fn error(status: StatusCode, error: &str, detail: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": error, "detail": detail.into() });
    (status, Json(body)).into_response()
}

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

/// Forwards one request to a plugin.
pub async fn proxy(State(app): State<Arc<AppState>>, request: axum::extract::Request) -> Response {
    let started = std::time::Instant::now();
    let name = plugin_name(request.uri().path()).to_owned();
    let response = forward(&app, request).await;
    // Only plugins plugd knows are counted: arbitrary names in URLs must not grow the metrics.
    if app.plugins.load().contains_key(&name) {
        let route = response
            .extensions()
            .get::<MatchedRoute>()
            .map_or("(none)", |r| r.0.as_str());
        app.metrics
            .record(&name, route, response.status().as_u16(), started.elapsed());
    }
    response
}

/// The route pattern a request matched, passed from the handler to the metrics.
#[derive(Debug, Clone)]
struct MatchedRoute(String);

fn plugin_name(path: &str) -> &str {
    let rest = path.strip_prefix("/plugins/").unwrap_or_default();
    rest.split('/').next().unwrap_or_default()
}

async fn forward(app: &Arc<AppState>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let full_path = parts.uri.path();
    let rest = full_path.strip_prefix("/plugins/").unwrap_or_default();
    let (name, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let plugins = app.plugins.load();
    let Some(slot) = plugins.get(name) else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown plugin",
            format!("no plugin named {name:?} is installed"),
        );
    };
    let state = slot.state();
    let instance = match &*state {
        PluginState::Ready(instance) => instance,
        other => {
            let why = other.reason().map(|r| format!(": {r}")).unwrap_or_default();
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "plugin not ready",
                format!("plugin {name:?} is {}{why}", other.name()),
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
    };
    let method = parts.method.as_str();
    let mut caller = None;
    let (route, params) = match instance.routes.lookup(method, path) {
        Lookup::Found {
            pattern,
            params,
            permission,
        } => {
            if let Some(permission) = permission {
                match authorize(&app.admin_tokens, &parts.headers, permission, name, path) {
                    Ok(token) => caller = Some(token),
                    Err(response) => return *response,
                }
            }
            (pattern.to_owned(), params)
        }
        Lookup::NotFound => {
            return error(
                StatusCode::NOT_FOUND,
                "no such route",
                format!("plugin {name:?} has no route for {path}"),
            )
        }
        Lookup::MethodNotAllowed { allowed } => {
            let allow = allowed.join(", ");
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                format!("{path} of plugin {name:?} accepts {allow}, not {method}"),
            );
            if let Ok(value) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(ALLOW, value);
            }
            return response;
        }
    };

    // Over the in-flight limit: refuse at once rather than queue without bound.
    let Ok(_permit) = instance.in_flight.clone().try_acquire_owned() else {
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "plugin busy",
            format!(
                "plugin {name:?} already has {} requests in flight, its limit",
                instance.limits.max_in_flight
            ),
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };

    let too_large = || {
        let mut response = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
            format!(
                "plugin {name:?} accepts request bodies of at most {} bytes",
                instance.limits.max_body
            ),
        );
        // The rest of the body is never read, so this connection cannot carry another request.
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        response
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > instance.limits.max_body as u64) {
        return too_large();
    }
    let body = match Limited::new(body, instance.limits.max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return too_large(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "cannot read request body",
                e.to_string(),
            )
        }
    };

    let request_id = match parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    {
        Some(id) if !id.is_empty() && id.len() <= 128 => id.to_owned(),
        _ => app.request_id(),
    };
    let deadline = SystemTime::now() + instance.limits.request_timeout;
    let wire = HttpRequest {
        request_id: request_id.clone(),
        method: method.to_owned(),
        path: path.to_owned(),
        route: route.clone(),
        params,
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: forward_headers(&parts.headers, caller),
        body,
        deadline_unix_ms: deadline
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    let mut serving = instance.clone();
    let mut retried = false;
    let answer = loop {
        let answer = serving
            .conn
            .call::<Http>(&wire, serving.limits.request_timeout)
            .await;
        // During a reload the old instance may refuse (draining) or be gone before the request
        // was sent; then the new one takes it, once.
        let refused = match &answer {
            Err(CallError::NotSent(_)) => true,
            Err(CallError::Remote(e)) => e.code == codes::SHUTTING_DOWN,
            _ => false,
        };
        if refused && !retried {
            if let PluginState::Ready(newer) = &*slot.state() {
                if newer.epoch != serving.epoch {
                    serving = newer.clone();
                    retried = true;
                    continue;
                }
            }
        }
        break answer;
    };
    let mut response = match answer {
        Ok(answer) => match build_response(answer) {
            Ok(response) => response,
            Err(detail) => error(
                StatusCode::BAD_GATEWAY,
                "invalid response from plugin",
                format!("plugin {name:?}: {detail}"),
            ),
        },
        Err(CallError::Closed(reason)) => error(
            StatusCode::BAD_GATEWAY,
            "plugin died during the request",
            format!("plugin {name:?}: {reason}"),
        ),
        Err(CallError::Timeout(after)) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "plugin timed out",
            format!("plugin {name:?} did not answer within {after:?}; the request was cancelled"),
        ),
        Err(CallError::Remote(e)) if e.code == codes::SHUTTING_DOWN => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "plugin not ready",
            format!("plugin {name:?} is shutting down"),
        ),
        Err(CallError::NotSent(reason)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "plugin not ready",
            format!("plugin {name:?} is gone: {reason}"),
        ),
        Err(CallError::Remote(e)) => error(
            StatusCode::BAD_GATEWAY,
            "plugin error",
            format!("plugin {name:?} answered with an error: {e}"),
        ),
        Err(CallError::Protocol(detail)) => error(
            StatusCode::BAD_GATEWAY,
            "protocol error",
            format!("plugin {name:?}: {detail}"),
        ),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response.extensions_mut().insert(MatchedRoute(route));
    response
}

/// The headers a plugin gets: hop-by-hop ones removed, `x-plugd-*` only as plugd sets them
/// (a client cannot claim an identity), and a token plugd verified kept from the plugin.
fn forward_headers(headers: &HeaderMap, caller: Option<&AdminToken>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| !is_hop_by_hop(k.as_str()) && !k.as_str().starts_with("x-plugd-"))
        .filter(|(k, _)| caller.is_none() || *k != axum::http::header::AUTHORIZATION)
        .map(|(k, v)| {
            let value = match v.to_str() {
                Ok(s) => s.to_owned(),
                Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
            };
            (k.as_str().to_owned(), value)
        })
        .collect();
    if let Some(token) = caller {
        out.push(("x-plugd-caller".into(), token.name.clone()));
        out.push(("x-plugd-permissions".into(), token.permissions.join(",")));
    }
    out
}

/// Checks the caller's token holds `permission`: 401 without a valid token, 403 naming the
/// missing permission.
fn authorize<'a>(
    tokens: &'a [AdminToken],
    headers: &HeaderMap,
    permission: &str,
    plugin: &str,
    path: &str,
) -> Result<&'a AdminToken, Box<Response>> {
    let token = crate::admin::bearer_token(tokens, headers).map_err(|detail| {
        Box::new(crate::admin::unauthorized(&format!(
            "{path} of plugin {plugin:?} requires permission {permission:?}: {detail}"
        )))
    })?;
    if token.permissions.iter().any(|p| p == permission) {
        Ok(token)
    } else {
        Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "missing permission",
            format!("token {:?} lacks permission {permission:?}, which {path} of plugin {plugin:?} requires", token.name),
        )))
    }
}

fn build_response(answer: plugd_protocol::message::http::HttpResponse) -> Result<Response, String> {
    let status = StatusCode::from_u16(answer.status)
        .ok()
        .filter(|_| (200..=599).contains(&answer.status))
        .ok_or_else(|| {
            format!(
                "status {} is not a final HTTP status (200-599)",
                answer.status
            )
        })?;
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in answer.headers {
        let lower = name.to_ascii_lowercase();
        if is_hop_by_hop(&lower) {
            continue;
        }
        let header = HeaderName::from_bytes(lower.as_bytes())
            .map_err(|_| format!("header name {name:?} is not valid"))?;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| format!("value of header {name:?} is not valid"))?;
        headers.append(header, value);
    }
    Ok(response)
}

/// `GET /healthz`: the supervisor is alive.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 once every plugin has been started or has failed to, with each plugin's
/// state; 503 while plugins are still starting.
pub async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let mut plugins = serde_json::Map::new();
    for (name, slot) in app.plugins.load().iter() {
        let state = slot.state();
        let mut entry = serde_json::json!({ "state": state.name(), "restarts": slot.restarts() });
        if let Some(reason) = state.reason() {
            entry["reason"] = reason.into();
        }
        if let PluginState::Ready(instance) = &*state {
            entry["pid"] = instance.pid.into();
            entry["limits"] = serde_json::to_value(&instance.limits).unwrap_or_default();
            let usage = instance
                .usage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            entry["usage"] = serde_json::to_value(usage).unwrap_or_default();
            entry["in_flight"] = (instance.limits.max_in_flight as usize
                - instance.in_flight.available_permits())
            .into();
        }
        plugins.insert(name.clone(), entry);
    }
    let store = match app.store.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{e:#}"),
    };
    let ready = app.ready.load(Ordering::SeqCst) && store == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": ready, "store": store, "plugins": plugins })),
    )
        .into_response()
}
