//! `/admin/plugins…`: each plugin's record and live state, enable and disable (conditional on
//! a generation, optionally waiting for every worker to converge), reload, restart and logs.

use super::doc::{BadInput, Conflict, Denied, NoSuchPlugin};
use super::{record_of, send, store_error, unknown, with_etag};
use crate::http::auth::Actor;
use crate::http::error::{ApiError, Path, Query};
use crate::http::Edge;
use crate::os::output::MAX_LINES;
use crate::store::{PluginRecord, SetOutcome};
use crate::supervise::{cluster, Event, PluginState, StandbyView};
use axum::extract::State;
use axum::http::header::IF_MATCH;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use plugd_api::{
    Accepted, Convergence, Hook, LogLine, Logs, LogsQuery, Permission, Plugin, PluginList, Route,
    ToggleAnswer, ToggleQuery, WorkerPluginState,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What admins see of one plugin: the store's record and the live state on this worker.
fn describe(edge: &Edge, record: &PluginRecord) -> Plugin {
    let plugins = edge.registry.plugins();
    let slot = plugins.get(&record.name);
    let state = slot.map(|s| s.state());
    let mut view = Plugin {
        record: record.clone(),
        state: state
            .as_ref()
            .map_or(plugd_api::State::Missing, |s| s.api()),
        restarts: slot.map_or(0, |s| s.restarts()),
        last_error: state.as_ref().and_then(|s| s.reason()).map(str::to_owned),
        pid: None,
        uptime_s: None,
        version_running: None,
        routes: Vec::new(),
        hooks: slot.map_or_else(Vec::new, |s| {
            s.hooks()
                .iter()
                .map(|h| Hook {
                    name: h.name.clone(),
                    mode: serde_json::to_value(h.mode)
                        .ok()
                        .and_then(|m| m.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    priority: h.priority,
                    fail_closed: h.fail_closed,
                })
                .collect()
        }),
        services: Vec::new(),
        permissions: slot.map_or_else(Vec::new, |s| {
            s.permissions()
                .iter()
                .map(|p| Permission {
                    key: p.key.clone(),
                    description: p.description.clone(),
                    plugin: record.name.clone(),
                })
                .collect()
        }),
        limits: None,
        usage: None,
        build: slot.and_then(|s| s.build()).map(|b| (*b).clone()),
        standby: slot.and_then(|s| s.standby()).map(|s| standby_view(&s)),
        workers: None,
    };
    if let Some(PluginState::Ready(instance)) = state.as_deref() {
        view.pid = Some(instance.pid);
        view.uptime_s = Some(instance.ready_at.elapsed().as_secs());
        view.version_running = Some(instance.version.clone());
        view.routes = instance
            .routes
            .routes()
            .map(|(method, path)| Route {
                method: method.to_owned(),
                path: path.to_owned(),
            })
            .collect();
        view.services = instance.services.clone();
        view.limits = Some(instance.limits.to_api());
        view.usage = instance.usage_now();
    }
    view
}

/// A standby as the admin API and `/readyz` show it.
pub fn standby_view(standby: &StandbyView) -> plugd_api::Standby {
    match standby {
        StandbyView::Starting => plugd_api::Standby {
            state: plugd_api::State::Starting,
            pid: None,
            usage: None,
        },
        StandbyView::Ready(instance) => plugd_api::Standby {
            state: plugd_api::State::Ready,
            pid: Some(instance.pid),
            usage: instance.usage_now(),
        },
    }
}

/// Every registered plugin with its state on this worker.
#[utoipa::path(
    get, path = "/plugins", operation_id = "listPlugins", tag = "plugins",
    responses((status = 200, description = "Every registered plugin, by name", body = PluginList), Denied),
)]
pub async fn list(State(edge): State<Arc<Edge>>) -> Result<Json<PluginList>, ApiError> {
    let records = edge.store.plugins().await.map_err(store_error)?;
    let plugins = records.iter().map(|r| describe(&edge, r)).collect();
    Ok(Json(PluginList { plugins }))
}

/// One plugin, with each live worker's state of it. The `ETag` is its generation, for
/// `If-Match` on the next write.
#[utoipa::path(
    get, path = "/plugins/{name}", operation_id = "getPlugin", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 200, description = "The plugin", body = Plugin,
            headers(("ETag" = String, description = "The generation, quoted"))),
        BadInput, NoSuchPlugin, Denied,
    ),
)]
pub async fn get_one(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let record = record_of(&edge, &name).await?;
    let mut view = describe(&edge, &record);
    if let Ok(workers) = edge.store.workers(cluster::EXPIRY).await {
        let states = workers
            .into_iter()
            .map(|w| {
                let state = w.plugins.get(&name).cloned().unwrap_or(WorkerPluginState {
                    state: plugd_api::State::Absent,
                    pid: None,
                    version: None,
                    sha256: None,
                    canary_sha256: None,
                });
                (w.id, state)
            })
            .collect();
        view.workers = Some(states);
    }
    Ok(with_etag(Json(view), record.generation))
}

async fn set_enabled(
    edge: &Edge,
    name: &str,
    enabled: bool,
    actor: &Actor,
    expected: Option<i64>,
) -> Result<ToggleAnswer, ApiError> {
    let word = if enabled { "enabled" } else { "disabled" };
    let outcome = edge
        .store
        .set_enabled(name, enabled, &actor.name, expected)
        .await
        .map_err(store_error)?;
    let answer = |record: PluginRecord, changed: bool, detail: String| ToggleAnswer {
        changed,
        enabled,
        generation: record.generation,
        detail,
        convergence: None,
    };
    match outcome {
        SetOutcome::Unknown => Err(unknown(name)),
        SetOutcome::Changed(record) => {
            send(
                edge,
                Event::Desired {
                    name: name.to_owned(),
                },
            );
            Ok(answer(record, true, format!("plugin {name:?} is now {word}")))
        }
        SetOutcome::Unchanged(record) => Ok(answer(
            record,
            false,
            format!("plugin {name:?} was already {word}; nothing changed"),
        )),
        SetOutcome::Conflict(record) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "plugin {name:?} is at generation {}, not the expected {}: another change came first; read it again and retry",
                record.generation,
                expected.unwrap_or_default()
            ),
        )
        .with_current(record)),
    }
}

/// The generation a write expects: `If-Match: "<generation>"` or `?generation=<n>`.
fn expected_generation(headers: &HeaderMap, query: &ToggleQuery) -> Result<Option<i64>, ApiError> {
    Ok(if_match(headers)?.or(query.generation))
}

/// The generation in `If-Match: "<generation>"`, if any (`*` matches any). A header that is
/// not a generation is refused rather than ignored: ignoring it would turn a conditional write
/// into an unconditional one.
pub(super) fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(IF_MATCH) else {
        return Ok(None);
    };
    // `*` matches any current version (RFC 9110): no condition on the generation.
    if value.as_bytes() == b"*" {
        return Ok(None);
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
                    "If-Match must be a generation such as \"3\" (an ETag plugd answered), not {:?}",
                    String::from_utf8_lossy(value.as_bytes())
                ),
            )
        })
}

/// Waits until every live worker reports `name` in a state that matches `enabled` (or the
/// deadline passes); answers whether it converged and each worker's state.
async fn converge(edge: &Edge, name: &str, enabled: bool, wait: Duration) -> Convergence {
    let deadline = Instant::now() + wait;
    loop {
        let workers = match edge.store.workers(cluster::EXPIRY).await {
            Ok(workers) => workers,
            // Not knowing the workers is not having converged.
            Err(e) if Instant::now() >= deadline => {
                return Convergence {
                    converged: false,
                    workers: BTreeMap::new(),
                    pending: Vec::new(),
                    error: Some(format!("cannot read the workers: {e:#}")),
                };
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let states: BTreeMap<String, plugd_api::State> = workers
            .iter()
            .map(|w| {
                let state = w
                    .plugins
                    .get(name)
                    .map_or(plugd_api::State::Absent, |s| s.state);
                (w.id.clone(), state)
            })
            .collect();
        let done = |s: plugd_api::State| {
            if enabled {
                matches!(s, plugd_api::State::Ready | plugd_api::State::Failed)
            } else {
                s == plugd_api::State::Disabled
            }
        };
        let pending: Vec<String> = states
            .iter()
            .filter(|(_, s)| !done(**s))
            .map(|(id, _)| id.clone())
            .collect();
        if pending.is_empty() || Instant::now() >= deadline {
            return Convergence {
                converged: pending.is_empty(),
                workers: states,
                pending,
                error: None,
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Enables a plugin on every worker. Conditional with `If-Match: "<generation>"` or
/// `?generation=`; with `?wait=5s`, waits for every live worker to run it.
#[utoipa::path(
    post, path = "/plugins/{name}/enable", operation_id = "enablePlugin", tag = "plugins",
    params(
        ("name" = String, Path, description = "The plugin's name"),
        ("If-Match" = Option<String>, Header, description = "The generation the write expects, quoted, or `*`"),
        ToggleQuery,
    ),
    responses(
        (status = 200, description = "Enabled (or already was)", body = ToggleAnswer),
        BadInput, NoSuchPlugin, Conflict, Denied,
    ),
)]
pub async fn enable(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Query(q): Query<ToggleQuery>,
) -> Result<Json<ToggleAnswer>, ApiError> {
    toggle(&edge, &name, true, &actor, &headers, &q).await
}

/// Disables a plugin on every worker: its instances stop. Conditional and waiting like enable.
#[utoipa::path(
    post, path = "/plugins/{name}/disable", operation_id = "disablePlugin", tag = "plugins",
    params(
        ("name" = String, Path, description = "The plugin's name"),
        ("If-Match" = Option<String>, Header, description = "The generation the write expects, quoted, or `*`"),
        ToggleQuery,
    ),
    responses(
        (status = 200, description = "Disabled (or already was)", body = ToggleAnswer),
        BadInput, NoSuchPlugin, Conflict, Denied,
    ),
)]
pub async fn disable(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Query(q): Query<ToggleQuery>,
) -> Result<Json<ToggleAnswer>, ApiError> {
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
    q: &ToggleQuery,
) -> Result<Json<ToggleAnswer>, ApiError> {
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
        answer.convergence = Some(converge(edge, name, enabled, wait).await);
    }
    Ok(Json(answer))
}

async fn action(
    edge: &Edge,
    name: &str,
    actor: &Actor,
    what: &str,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let record = record_of(edge, name).await?;
    if !record.enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "plugin disabled",
            format!("plugin {name:?} is disabled; enable it first"),
        ));
    }
    edge.store
        .record(Some(name), &actor.name, what, "")
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
        Json(Accepted {
            accepted: true,
            detail: format!("{what} of plugin {name:?} started"),
        }),
    ))
}

/// Re-reads a plugin's manifest and program and swaps it blue/green on this worker.
#[utoipa::path(
    post, path = "/plugins/{name}/reload", operation_id = "reloadPlugin", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 202, description = "The reload started", body = Accepted),
        BadInput, NoSuchPlugin, Conflict, Denied,
    ),
)]
pub async fn reload(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    action(&edge, &name, &actor, "reload").await
}

/// Starts a fresh instance of a plugin on this worker (also the way out of `failed`).
#[utoipa::path(
    post, path = "/plugins/{name}/restart", operation_id = "restartPlugin", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 202, description = "The restart started", body = Accepted),
        BadInput, NoSuchPlugin, Conflict, Denied,
    ),
)]
pub async fn restart(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    action(&edge, &name, &actor, "restart").await
}

/// A plugin's recent output on this worker (`GET /admin/stream?plugin=…&kinds=log` follows it).
#[utoipa::path(
    get, path = "/plugins/{name}/logs", operation_id = "pluginLogs", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name"), LogsQuery),
    responses(
        (status = 200, description = "Its latest lines, oldest first", body = Logs),
        BadInput, NoSuchPlugin, Denied,
    ),
)]
pub async fn logs(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<Logs>, ApiError> {
    let slot = edge.registry.get(&name).ok_or_else(|| unknown(&name))?;
    let n = q.lines.map_or(200, |n| n as usize).min(MAX_LINES);
    let lines = slot
        .logs()
        .last(n)
        .iter()
        .map(|l| LogLine {
            at_ms: l.at_unix_ms,
            pid: l.pid,
            stream: l.stream.to_owned(),
            line: l.display(),
        })
        .collect();
    Ok(Json(Logs {
        plugin: name,
        lines,
        dropped: slot.logs().dropped(),
    }))
}
