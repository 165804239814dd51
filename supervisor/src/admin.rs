//! The admin REST API under `/admin`: JSON in and out, bearer tokens with roles, every change
//! written to the audit log with the token's name.
//!
//! Tokens come from `[[admin_tokens]]` in the config file and `PLUGD_ADMIN_TOKEN`. `admin`
//! tokens may do everything, `viewer` tokens only GET. A missing or wrong token is 401, a role
//! that may not is 403; tokens are compared in constant time. With no token configured the API
//! refuses every request (403) and plugd logs a loud warning at start-up: an unauthenticated
//! control plane is never the default.

use crate::plugin::PluginState;
use crate::proxy::{error, AppState};
use crate::reconcile::Event;
use crate::settings::Role;
use crate::store::{PluginRecord, SetOutcome};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Largest bundle accepted by `POST /admin/plugins/install`.
pub const MAX_BUNDLE: usize = 64 * 1024 * 1024;

/// Who made an admin request: the token's name.
#[derive(Debug, Clone)]
struct Actor(String);

/// The `/admin` routes.
pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/plugins", get(list_plugins))
        .route(
            "/plugins/install",
            post(install).layer(DefaultBodyLimit::max(MAX_BUNDLE)),
        )
        .route("/plugins/{name}", get(get_plugin).delete(uninstall))
        .route("/plugins/{name}/enable", post(enable))
        .route("/plugins/{name}/disable", post(disable))
        .route("/plugins/{name}/reload", post(reload))
        .route("/plugins/{name}/restart", post(restart))
        .route("/plugins/{name}/logs", get(logs))
        .route("/events", get(events))
        .route("/permissions", get(permissions))
        .route("/workers", get(workers))
        .route("/stats", get(stats))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found", "no such admin endpoint") })
        .layer(middleware::from_fn_with_state(state, authenticate))
}

async fn authenticate(
    State(app): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    if app.admin_tokens.is_empty() {
        return error(
            StatusCode::FORBIDDEN,
            "admin API disabled",
            "no admin token is configured: set PLUGD_ADMIN_TOKEN or [[admin_tokens]] in the config file",
        );
    }
    let token = match bearer_token(&app.admin_tokens, request.headers()) {
        Ok(token) => token,
        Err(detail) => return unauthorized(detail),
    };
    let read_only = matches!(*request.method(), Method::GET | Method::HEAD);
    if token.role == Role::Viewer && !read_only {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} has the viewer role, which may only read",
                token.name
            ),
        );
    }
    request.extensions_mut().insert(Actor(token.name.clone()));
    next.run(request).await
}

/// The configured token the request's `Authorization: Bearer …` presents, compared in constant
/// time against every token so the time taken does not say which one came close.
pub(crate) fn bearer_token<'a>(
    tokens: &'a [crate::settings::AdminToken],
    headers: &axum::http::HeaderMap,
) -> Result<&'a crate::settings::AdminToken, &'static str> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or("send Authorization: Bearer <token>")?;
    let mut found = None;
    for t in tokens {
        let equal: bool = t.token.as_bytes().ct_eq(presented.as_bytes()).into();
        if equal {
            found = Some(t);
        }
    }
    found.ok_or("the token is not valid")
}

/// A 401 with the `WWW-Authenticate` challenge.
pub(crate) fn unauthorized(detail: &str) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", detail);
    response.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
}

fn store_error(e: anyhow::Error) -> Response {
    tracing::error!("admin: {e:#}");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store unavailable",
        format!("{e:#}; try again when the database is back"),
    )
}

fn unknown(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "unknown plugin",
        format!("no plugin named {name:?} is registered"),
    )
}

/// What admins see of one plugin: the store's record and the live state.
fn describe(app: &AppState, record: &PluginRecord) -> Value {
    let plugins = app.plugins.load();
    let slot = plugins.get(&record.name);
    let state = slot.map(|s| s.state());
    let mut v = json!({
        "name": record.name,
        "version": record.version,
        "description": record.description,
        "author": record.author,
        "enabled": record.enabled,
        "missing": record.missing,
        "generation": record.generation,
        "state": state.as_ref().map_or("missing", |s| s.name()),
        "restarts": slot.map_or(0, |s| s.restarts()),
        "last_error": state.as_ref().and_then(|s| s.reason()),
        "pid": null,
        "uptime_s": null,
        "routes": [],
        "hooks": slot.map(|s| serde_json::to_value(&*s.hooks()).unwrap_or_default()).unwrap_or_else(|| json!([])),
    });
    if let Some(PluginState::Ready(instance)) = state.as_deref() {
        v["pid"] = instance.pid.into();
        v["uptime_s"] = instance.ready_at.elapsed().as_secs().into();
        v["version_running"] = instance.version.clone().into();
        v["routes"] = instance
            .routes
            .routes()
            .map(|(method, path)| json!({ "method": method, "path": path }))
            .collect::<Vec<_>>()
            .into();
        v["limits"] = serde_json::to_value(&instance.limits).unwrap_or_default();
        v["usage"] = serde_json::to_value(instance.usage_now()).unwrap_or_default();
    }
    v
}

async fn list_plugins(State(app): State<Arc<AppState>>) -> Response {
    match app.store.plugins().await {
        Ok(records) => {
            let list: Vec<Value> = records.iter().map(|r| describe(&app, r)).collect();
            Json(json!({ "plugins": list })).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn get_plugin(State(app): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    match app.store.plugin(&name).await {
        Ok(Some(record)) => {
            let mut view = describe(&app, &record);
            // Each live worker's state of this plugin.
            if let Ok(workers) = app.store.workers(crate::cluster::EXPIRY).await {
                let states: serde_json::Map<String, Value> = workers
                    .into_iter()
                    .map(|w| {
                        (
                            w.id,
                            w.plugins
                                .get(&name)
                                .cloned()
                                .unwrap_or(json!({ "state": "absent" })),
                        )
                    })
                    .collect();
                view["workers"] = Value::Object(states);
            }
            let mut response = Json(view).into_response();
            // The generation, for If-Match on the next write.
            if let Ok(etag) =
                axum::http::HeaderValue::from_str(&format!("\"{}\"", record.generation))
            {
                response
                    .headers_mut()
                    .insert(axum::http::header::ETAG, etag);
            }
            response
        }
        Ok(None) => unknown(&name),
        Err(e) => store_error(e),
    }
}

async fn set_enabled(
    app: &AppState,
    name: &str,
    enabled: bool,
    actor: &Actor,
    expected: Option<i64>,
) -> Response {
    let word = if enabled { "enabled" } else { "disabled" };
    match app
        .store
        .set_enabled(name, enabled, &actor.0, expected)
        .await
    {
        Ok(SetOutcome::Unknown) => unknown(name),
        Ok(SetOutcome::Changed(record)) => {
            send(
                app,
                Event::Desired {
                    name: name.to_owned(),
                },
            );
            let detail = format!("plugin {name:?} is now {word}");
            Json(json!({ "changed": true, "enabled": enabled, "generation": record.generation, "detail": detail }))
                .into_response()
        }
        Ok(SetOutcome::Unchanged(record)) => {
            let detail = format!("plugin {name:?} was already {word}; nothing changed");
            Json(json!({ "changed": false, "enabled": enabled, "generation": record.generation, "detail": detail }))
                .into_response()
        }
        Ok(SetOutcome::Conflict(record)) => {
            let body = json!({
                "error": "conflict",
                "detail": format!(
                    "plugin {name:?} is at generation {}, not the expected {}: another change came first; read it again and retry",
                    record.generation,
                    expected.unwrap_or_default()
                ),
                "current": record,
            });
            (StatusCode::CONFLICT, Json(body)).into_response()
        }
        Err(e) => store_error(e),
    }
}

/// The generation a write expects: `If-Match: "<generation>"` or `?generation=<n>`. A header
/// that is not a generation is refused rather than ignored: ignoring it would turn a
/// conditional write into an unconditional one.
#[allow(clippy::result_large_err)] // a Response, returned at once to the client
fn expected_generation(
    headers: &axum::http::HeaderMap,
    query: &GenerationQuery,
) -> Result<Option<i64>, Response> {
    let Some(value) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(query.generation);
    };
    // `*` matches any current version (RFC 9110): no condition on the generation.
    if value.as_bytes() == b"*" {
        return Ok(query.generation);
    }
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().trim_matches('"').parse().ok())
        .map(Some)
        .ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "bad If-Match",
                format!(
                    "If-Match must be a generation such as \"3\" (the ETag of GET /admin/plugins/{{name}}), not {:?}",
                    String::from_utf8_lossy(value.as_bytes())
                ),
            )
        })
}

#[derive(Debug, Deserialize)]
struct GenerationQuery {
    generation: Option<i64>,
    /// Wait up to this long (`5s`) for every live worker to run the desired state.
    wait: Option<String>,
}

/// Waits until every live worker reports `name` in a state that matches `enabled` (or the
/// deadline passes); answers whether it converged and each worker's state.
async fn converge(app: &AppState, name: &str, enabled: bool, wait: std::time::Duration) -> Value {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let workers = match app.store.workers(crate::cluster::EXPIRY).await {
            Ok(workers) => workers,
            // Not knowing the workers is not having converged.
            Err(e) if std::time::Instant::now() >= deadline => {
                return json!({
                    "converged": false,
                    "error": format!("cannot read the workers: {e:#}"),
                });
            }
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let states: serde_json::Map<String, Value> = workers
            .iter()
            .map(|w| {
                let state = w
                    .plugins
                    .get(name)
                    .and_then(|p| p["state"].as_str())
                    .unwrap_or("absent");
                (w.id.clone(), Value::String(state.to_owned()))
            })
            .collect();
        let done = |s: &str| {
            if enabled {
                matches!(s, "ready" | "failed")
            } else {
                s == "disabled"
            }
        };
        let pending: Vec<&String> = states
            .iter()
            .filter(|(_, s)| !done(s.as_str().unwrap_or_default()))
            .map(|(id, _)| id)
            .collect();
        if pending.is_empty() || std::time::Instant::now() >= deadline {
            return json!({ "converged": pending.is_empty(), "workers": states, "pending": pending });
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn send(app: &AppState, event: Event) {
    if let Some(handle) = app.reconciler.get() {
        handle.send(event);
    }
}

async fn enable(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
    headers: axum::http::HeaderMap,
    Query(q): Query<GenerationQuery>,
) -> Response {
    toggle(&app, &name, true, &actor, &headers, &q).await
}

async fn disable(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
    headers: axum::http::HeaderMap,
    Query(q): Query<GenerationQuery>,
) -> Response {
    toggle(&app, &name, false, &actor, &headers, &q).await
}

/// Enable or disable: the conditional write, then the optional wait for convergence.
async fn toggle(
    app: &AppState,
    name: &str,
    enabled: bool,
    actor: &Actor,
    headers: &axum::http::HeaderMap,
    q: &GenerationQuery,
) -> Response {
    let expected = match expected_generation(headers, q) {
        Ok(expected) => expected,
        Err(response) => return response,
    };
    let written = set_enabled(app, name, enabled, actor, expected).await;
    with_wait(app, name, enabled, q.wait.as_deref(), written).await
}

/// With `?wait=…`, holds a successful answer until the cluster converged (or the wait ran out)
/// and adds what each worker runs.
async fn with_wait(
    app: &AppState,
    name: &str,
    enabled: bool,
    wait: Option<&str>,
    response: Response,
) -> Response {
    let Some(wait) = wait else {
        return response;
    };
    let wait = match humantime::parse_duration(wait) {
        Ok(w) => w.min(std::time::Duration::from_secs(60)),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid wait",
                format!("{wait:?}: {e}"),
            )
        }
    };
    if response.status() != StatusCode::OK {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error",
            "cannot read the answer",
        );
    };
    let mut answer: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    answer["convergence"] = converge(app, name, enabled, wait).await;
    (parts.status, Json(answer)).into_response()
}

async fn action(app: &AppState, name: &str, actor: &Actor, what: &str) -> Response {
    match app.store.plugin(name).await {
        Ok(Some(record)) if !record.enabled => error(
            StatusCode::CONFLICT,
            "plugin disabled",
            format!("plugin {name:?} is disabled; enable it first"),
        ),
        Ok(Some(_)) => {
            if let Err(e) = app.store.record(Some(name), &actor.0, what, "").await {
                return store_error(e);
            }
            let event = match what {
                "restart" => Event::Restart {
                    name: name.to_owned(),
                },
                _ => Event::Reload {
                    name: name.to_owned(),
                },
            };
            send(app, event);
            (
                StatusCode::ACCEPTED,
                Json(json!({ "accepted": true, "detail": format!("{what} of plugin {name:?} started") })),
            )
                .into_response()
        }
        Ok(None) => unknown(name),
        Err(e) => store_error(e),
    }
}

async fn reload(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
) -> Response {
    action(&app, &name, &actor, "reload").await
}

async fn restart(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
) -> Response {
    action(&app, &name, &actor, "restart").await
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    lines: Option<usize>,
}

async fn logs(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Response {
    let plugins = app.plugins.load();
    let Some(slot) = plugins.get(&name) else {
        return unknown(&name);
    };
    let lines: Vec<Value> = slot
        .logs()
        .last(q.lines.unwrap_or(200).min(crate::logs::MAX_LINES))
        .iter()
        .map(|l| json!({ "at_ms": l.at_unix_ms, "pid": l.pid, "stream": l.stream, "line": l.display() }))
        .collect();
    Json(json!({ "plugin": name, "lines": lines, "dropped": slot.logs().dropped() }))
        .into_response()
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    plugin: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

async fn events(State(app): State<Arc<AppState>>, Query(q): Query<EventsQuery>) -> Response {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    match app.store.events(q.plugin.as_deref(), q.before, limit).await {
        Ok(events) => {
            let next = (events.len() as i64 == limit)
                .then(|| events.last().map(|e| e.id))
                .flatten();
            Json(json!({ "events": events, "next_before": next })).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn stats(State(app): State<Arc<AppState>>) -> Response {
    let records = match app.store.plugins().await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let plugins = app.plugins.load();
    let (mut failed, mut routes, mut ready) = (0, 0, 0);
    let hooks: usize = plugins.values().map(|s| s.hooks().len()).sum();
    for slot in plugins.values() {
        match &*slot.state() {
            PluginState::Failed(_) => failed += 1,
            PluginState::Ready(i) => {
                ready += 1;
                routes += i.routes.len();
            }
            _ => {}
        }
    }
    let enabled = records.iter().filter(|r| r.enabled).count();
    Json(json!({
        "plugins": records.len(),
        "enabled": enabled,
        "disabled": records.len() - enabled,
        "missing": records.iter().filter(|r| r.missing).count(),
        "ready": ready,
        "failed": failed,
        "routes": routes,
        "hooks": hooks,
    }))
    .into_response()
}

/// `POST /admin/plugins/install`: the body is a `.zip` or `.tar.gz` bundle. It is unpacked
/// into a staging directory, its manifest validated, then moved into place; a plugin of the same
/// name is upgraded (the reconcile loop reloads it blue/green).
async fn install(
    State(app): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return error(
                rejection.status(),
                "bundle not accepted",
                format!(
                    "{} (bundles may be at most {MAX_BUNDLE} bytes)",
                    rejection.body_text()
                ),
            )
        }
    };
    let sha256 = crate::bundle::sha256(&body);
    let plugins_dir = app.plugins_dir.clone();
    let (bytes, sum) = (body.clone(), sha256.clone());
    let placed =
        tokio::task::spawn_blocking(move || crate::bundle::place(&bytes, &sum, &plugins_dir)).await;
    let (manifest, upgraded) = match placed {
        Ok(Ok(done)) => done,
        Ok(Err(detail)) => return error(StatusCode::BAD_REQUEST, "invalid bundle", detail),
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "install failed",
                e.to_string(),
            )
        }
    };
    // Kept in the store, so every worker unpacks the same bytes.
    if let Err(e) = app.store.save_bundle(&sha256, &manifest.name, &body).await {
        return store_error(e);
    }
    let action = if upgraded { "upgrade" } else { "install" };
    let record = match app
        .store
        .installed(&manifest, &sha256, &actor.0, action)
        .await
    {
        Ok(record) => record,
        Err(e) => return store_error(e),
    };
    send(&app, Event::Rescan { requested: false });
    let status = if upgraded {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    (
        status,
        Json(json!({
            "name": record.name,
            "version": record.version,
            "sha256": sha256,
            "upgraded": upgraded,
        })),
    )
        .into_response()
}

/// `DELETE /admin/plugins/{name}`: stops the plugin, removes its directory and its
/// registration.
async fn uninstall(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
) -> Response {
    let found = crate::manifest::discover(&app.plugins_dir)
        .ok()
        .and_then(|d| d.manifests.into_iter().find(|m| m.name == name));
    if let Some(m) = found {
        let trash = app
            .plugins_dir
            .join(format!(".trash-{}-{:016x}", name, rand::random::<u64>()));
        if let Err(e) = std::fs::rename(&m.dir, &trash) {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "uninstall failed",
                format!("cannot remove {}: {e}", m.dir.display()),
            );
        }
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(trash)).await;
    }
    match app.store.forget(&name, &actor.0).await {
        Ok(true) => {
            send(&app, Event::Rescan { requested: false });
            Json(json!({ "uninstalled": name })).into_response()
        }
        Ok(false) => unknown(&name),
        Err(e) => store_error(e),
    }
}

/// `GET /admin/permissions`: every permission a plugin declared, with the plugin.
async fn permissions(State(app): State<Arc<AppState>>) -> Response {
    let plugins = app.plugins.load();
    let mut list: Vec<Value> = plugins
        .iter()
        .flat_map(|(name, slot)| {
            slot.permissions()
                .iter()
                .map(|p| json!({ "key": p.key, "description": p.description, "plugin": name }))
                .collect::<Vec<_>>()
        })
        .collect();
    list.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
    Json(json!({ "permissions": list })).into_response()
}

/// `GET /admin/workers`: every worker that heartbeated within the expiry, with the state of each
/// of its plugins; this worker is marked.
async fn workers(State(app): State<Arc<AppState>>) -> Response {
    match app.store.workers(crate::cluster::EXPIRY).await {
        Ok(workers) => {
            let list: Vec<Value> = workers
                .into_iter()
                .map(|w| {
                    let mut v = serde_json::to_value(&w).unwrap_or_default();
                    v["this"] = (w.id == app.worker.id).into();
                    v
                })
                .collect();
            Json(json!({ "workers": list })).into_response()
        }
        Err(e) => store_error(e),
    }
}
