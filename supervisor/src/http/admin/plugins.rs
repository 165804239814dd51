//! `/admin/plugins…`: each plugin's record and live state, enable and disable (conditional on
//! a generation, optionally waiting for every worker to converge), reload, restart and logs.

use super::{send, store_error, unknown};
use crate::http::auth::Actor;
use crate::http::error::ApiError;
use crate::http::Edge;
use crate::os::output::MAX_LINES;
use crate::store::{PluginRecord, SetOutcome};
use crate::supervise::{cluster, Event, PluginState};
use axum::extract::{Path, Query, State};
use axum::http::header::{HeaderValue, ETAG, IF_MATCH};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What admins see of one plugin: the store's record and the live state.
fn describe(edge: &Edge, record: &PluginRecord) -> Value {
    let plugins = edge.registry.plugins();
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

/// `GET /admin/plugins`: every registered plugin.
pub async fn list(State(edge): State<Arc<Edge>>) -> Result<Json<Value>, ApiError> {
    let records = edge.store.plugins().await.map_err(store_error)?;
    let list: Vec<Value> = records.iter().map(|r| describe(&edge, r)).collect();
    Ok(Json(json!({ "plugins": list })))
}

/// `GET /admin/plugins/{name}`: one plugin, with each live worker's state of it; the ETag is
/// its generation, for `If-Match` on the next write.
pub async fn get_one(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let record = edge
        .store
        .plugin(&name)
        .await
        .map_err(store_error)?
        .ok_or_else(|| unknown(&name))?;
    let mut view = describe(&edge, &record);
    if let Ok(workers) = edge.store.workers(cluster::EXPIRY).await {
        let states: serde_json::Map<String, Value> = workers
            .into_iter()
            .map(|w| {
                let state = w
                    .plugins
                    .get(&name)
                    .cloned()
                    .unwrap_or(json!({ "state": "absent" }));
                (w.id, state)
            })
            .collect();
        view["workers"] = Value::Object(states);
    }
    let mut response = Json(view).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", record.generation)) {
        response.headers_mut().insert(ETAG, etag);
    }
    Ok(response)
}

async fn set_enabled(
    edge: &Edge,
    name: &str,
    enabled: bool,
    actor: &Actor,
    expected: Option<i64>,
) -> Result<Value, ApiError> {
    let word = if enabled { "enabled" } else { "disabled" };
    let outcome = edge
        .store
        .set_enabled(name, enabled, &actor.0, expected)
        .await
        .map_err(store_error)?;
    match outcome {
        SetOutcome::Unknown => Err(unknown(name)),
        SetOutcome::Changed(record) => {
            send(
                edge,
                Event::Desired {
                    name: name.to_owned(),
                },
            );
            let detail = format!("plugin {name:?} is now {word}");
            Ok(json!({ "changed": true, "enabled": enabled, "generation": record.generation, "detail": detail }))
        }
        SetOutcome::Unchanged(record) => {
            let detail = format!("plugin {name:?} was already {word}; nothing changed");
            Ok(json!({ "changed": false, "enabled": enabled, "generation": record.generation, "detail": detail }))
        }
        SetOutcome::Conflict(record) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "plugin {name:?} is at generation {}, not the expected {}: another change came first; read it again and retry",
                record.generation,
                expected.unwrap_or_default()
            ),
        )
        .with_field("current", serde_json::to_value(&record).unwrap_or_default())),
    }
}

/// The generation a write expects: `If-Match: "<generation>"` or `?generation=<n>`. A header
/// that is not a generation is refused rather than ignored: ignoring it would turn a
/// conditional write into an unconditional one.
fn expected_generation(
    headers: &HeaderMap,
    query: &GenerationQuery,
) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(IF_MATCH) else {
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
            ApiError::bad_request(
                "bad If-Match",
                format!(
                    "If-Match must be a generation such as \"3\" (the ETag of GET /admin/plugins/{{name}}), not {:?}",
                    String::from_utf8_lossy(value.as_bytes())
                ),
            )
        })
}

/// The query of enable and disable.
#[derive(Debug, Deserialize)]
pub struct GenerationQuery {
    generation: Option<i64>,
    /// Wait up to this long (`5s`) for every live worker to run the desired state.
    wait: Option<String>,
}

/// Waits until every live worker reports `name` in a state that matches `enabled` (or the
/// deadline passes); answers whether it converged and each worker's state.
async fn converge(edge: &Edge, name: &str, enabled: bool, wait: Duration) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let workers = match edge.store.workers(cluster::EXPIRY).await {
            Ok(workers) => workers,
            // Not knowing the workers is not having converged.
            Err(e) if Instant::now() >= deadline => {
                return json!({
                    "converged": false,
                    "error": format!("cannot read the workers: {e:#}"),
                });
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
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
        if pending.is_empty() || Instant::now() >= deadline {
            return json!({ "converged": pending.is_empty(), "workers": states, "pending": pending });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `POST /admin/plugins/{name}/enable`.
pub async fn enable(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Query(q): Query<GenerationQuery>,
) -> Result<Json<Value>, ApiError> {
    toggle(&edge, &name, true, &actor, &headers, &q).await
}

/// `POST /admin/plugins/{name}/disable`.
pub async fn disable(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Query(q): Query<GenerationQuery>,
) -> Result<Json<Value>, ApiError> {
    toggle(&edge, &name, false, &actor, &headers, &q).await
}

/// Enable or disable: the conditional write, then, with `?wait=…`, the wait for every live
/// worker to run it (reported with each worker's state).
async fn toggle(
    edge: &Edge,
    name: &str,
    enabled: bool,
    actor: &Actor,
    headers: &HeaderMap,
    q: &GenerationQuery,
) -> Result<Json<Value>, ApiError> {
    let expected = expected_generation(headers, q)?;
    let wait = match q.wait.as_deref() {
        None => None,
        Some(wait) => Some(
            humantime::parse_duration(wait)
                .map(|w| w.min(Duration::from_secs(60)))
                .map_err(|e| ApiError::bad_request("invalid wait", format!("{wait:?}: {e}")))?,
        ),
    };
    let mut answer = set_enabled(edge, name, enabled, actor, expected).await?;
    if let Some(wait) = wait {
        answer["convergence"] = converge(edge, name, enabled, wait).await;
    }
    Ok(Json(answer))
}

async fn action(edge: &Edge, name: &str, actor: &Actor, what: &str) -> Result<Response, ApiError> {
    let record = edge
        .store
        .plugin(name)
        .await
        .map_err(store_error)?
        .ok_or_else(|| unknown(name))?;
    if !record.enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "plugin disabled",
            format!("plugin {name:?} is disabled; enable it first"),
        ));
    }
    edge.store
        .record(Some(name), &actor.0, what, "")
        .await
        .map_err(store_error)?;
    let name = name.to_owned();
    send(
        edge,
        match what {
            "restart" => Event::Restart { name: name.clone() },
            _ => Event::Reload { name: name.clone() },
        },
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "accepted": true, "detail": format!("{what} of plugin {name:?} started") })),
    )
        .into_response())
}

/// `POST /admin/plugins/{name}/reload`: re-read its manifest and program, swap blue/green.
pub async fn reload(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
) -> Result<Response, ApiError> {
    action(&edge, &name, &actor, "reload").await
}

/// `POST /admin/plugins/{name}/restart`: a fresh instance (also the way out of `failed`).
pub async fn restart(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
) -> Result<Response, ApiError> {
    action(&edge, &name, &actor, "restart").await
}

/// The query of `logs`.
#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    lines: Option<usize>,
}

/// `GET /admin/plugins/{name}/logs?lines=N`: the plugin's recent output.
pub async fn logs(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<Value>, ApiError> {
    let slot = edge.registry.get(&name).ok_or_else(|| unknown(&name))?;
    let lines: Vec<Value> = slot
        .logs()
        .last(q.lines.unwrap_or(200).min(MAX_LINES))
        .iter()
        .map(|l| json!({ "at_ms": l.at_unix_ms, "pid": l.pid, "stream": l.stream, "line": l.display() }))
        .collect();
    Ok(Json(
        json!({ "plugin": name, "lines": lines, "dropped": slot.logs().dropped() }),
    ))
}
