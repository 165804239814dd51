//! `/admin/plugins/{name}/settings`: a plugin's settings with their schema and source, and
//! changes to them (replace, merge, reset one), validated against the schema its manifest
//! declares, conditional on the settings' generation (`If-Match`), audited with the token's
//! name. A secret's value is never answered, audited or logged.
//!
//! A change that the running instance on this worker can take live is offered to it before it
//! is stored: a plugin that refuses keeps its settings and the admin hears why (422), and
//! nothing is stored. This offer, through [`crate::supervise::settings::apply`], is the one
//! call an admin handler makes to a plugin; every other worker follows the store.

use super::doc::{BadInput, Conflict, Denied, NoSuchPlugin, Refused};
use super::plugins::if_match;
use super::{record_of, send, store_error, unknown, with_etag};
use crate::http::auth::Actor;
use crate::http::error::{ApiError, Path};
use crate::http::Edge;
use crate::manifest::settings::{check_values, effective, SettingsSchema};
use crate::store::{SettingWrite, SettingsOutcome, StoredSettings};
use crate::supervise::settings::{apply, changed_keys, ApplyError};
use crate::supervise::{Event, PluginSlot, PluginState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use plugd_api::{
    ErrorBody, FieldProblem, Setting, Settings, SettingsAnswer, SettingsChange, Source,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The largest body of a change of settings.
pub const MAX_SETTINGS_BODY: usize = 256 * 1024;

/// The plugin's slot on this worker (its schema comes from the manifest found here).
async fn lookup(edge: &Edge, name: &str) -> Result<Arc<PluginSlot>, ApiError> {
    record_of(edge, name).await?;
    edge.registry.get(name).ok_or_else(|| {
        ApiError::not_found(
            "unknown plugin",
            format!("plugin {name:?} is registered but its manifest is not on this worker"),
        )
    })
}

fn view(name: &str, schema: &SettingsSchema, stored: &StoredSettings) -> Settings {
    let found = effective(schema, &stored.plain());
    let settings = schema
        .iter()
        .map(|(key, spec)| {
            let set = stored
                .values
                .get(key)
                .filter(|s| spec.normalise(&s.value).is_ok());
            let source = match (set, found.values.contains_key(key)) {
                (Some(_), _) => Source::Set,
                (None, true) => Source::Default,
                (None, false) => Source::Unset,
            };
            Setting {
                name: key.clone(),
                kind: spec.kind_name().to_owned(),
                description: spec.description.clone(),
                required: spec.required,
                secret: spec.secret,
                restart: spec.restart,
                source,
                value: (!spec.secret)
                    .then(|| found.values.get(key).cloned())
                    .flatten(),
                default: spec.default_value(),
                values: spec.values.clone(),
                min: spec.min_value(),
                max: spec.max_value(),
                pattern: spec.pattern.clone(),
                max_length: spec.max_length.map(|n| n as u64),
                updated_ms: set.map(|s| s.updated_ms),
                updated_by: set.map(|s| s.updated_by.clone()),
            }
        })
        .collect();
    Settings {
        plugin: name.to_owned(),
        generation: stored.generation,
        settings,
        missing: found.missing,
    }
}

/// A plugin's settings: each declared one with its value (never a secret's) and where the
/// value comes from. The `ETag` is the settings' generation, for `If-Match`.
#[utoipa::path(
    get, path = "/plugins/{name}/settings", operation_id = "getSettings", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 200, description = "Its settings", body = Settings,
            headers(("ETag" = String, description = "The settings' generation, quoted"))),
        BadInput, NoSuchPlugin, Denied,
    ),
)]
pub async fn get(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let slot = lookup(&edge, &name).await?;
    let stored = edge.store.settings(&name).await.map_err(store_error)?;
    let view = view(&name, &slot.settings_schema(), &stored);
    Ok(with_etag(Json(view), stored.generation))
}

/// How a change treats the values already set.
#[derive(Debug)]
enum Change {
    /// The body is every value set from now on.
    Replace(SettingsChange),
    /// The body's values change; `null` returns one to its default.
    Merge(SettingsChange),
    /// One setting returns to its default.
    Reset(String),
}

fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<SettingsChange, ApiError> {
    let body = body.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            "cannot read the body",
            rejection.body_text(),
        )
    })?;
    if body.len() > MAX_SETTINGS_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body too large",
            format!("a change of settings is at most {MAX_SETTINGS_BODY} bytes"),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid settings",
            format!("the body must be a JSON object of setting names and values: {e}"),
        )
    })
}

/// Replaces every set value of a plugin's settings with the body's: a setting the body does
/// not name returns to its default.
#[utoipa::path(
    put, path = "/plugins/{name}/settings", operation_id = "putSettings", tag = "plugins",
    params(
        ("name" = String, Path, description = "The plugin's name"),
        ("If-Match" = Option<String>, Header, description = "The settings' generation the write expects, quoted, or `*`"),
    ),
    request_body(content = Object, description = "Every value to set, by name"),
    responses(
        (status = 200, description = "Changed (or nothing to change)", body = SettingsAnswer),
        (status = 413, description = "The body is larger than 256 KiB", body = ErrorBody),
        BadInput, NoSuchPlugin, Conflict, Refused, Denied,
    ),
)]
pub async fn put(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SettingsAnswer>, ApiError> {
    let values = parse_body(body)?;
    change(&edge, &name, &actor, &headers, Change::Replace(values)).await
}

/// Changes the named settings; `null` returns one to its default. The others keep their values.
#[utoipa::path(
    patch, path = "/plugins/{name}/settings", operation_id = "patchSettings", tag = "plugins",
    params(
        ("name" = String, Path, description = "The plugin's name"),
        ("If-Match" = Option<String>, Header, description = "The settings' generation the write expects, quoted, or `*`"),
    ),
    request_body(content = Object, description = "The values to change, by name"),
    responses(
        (status = 200, description = "Changed (or nothing to change)", body = SettingsAnswer),
        (status = 413, description = "The body is larger than 256 KiB", body = ErrorBody),
        BadInput, NoSuchPlugin, Conflict, Refused, Denied,
    ),
)]
pub async fn patch(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SettingsAnswer>, ApiError> {
    let values = parse_body(body)?;
    change(&edge, &name, &actor, &headers, Change::Merge(values)).await
}

/// Returns one setting to its default (or unset).
#[utoipa::path(
    delete, path = "/plugins/{name}/settings/{key}", operation_id = "resetSetting", tag = "plugins",
    params(
        ("name" = String, Path, description = "The plugin's name"),
        ("key" = String, Path, description = "The setting's name"),
        ("If-Match" = Option<String>, Header, description = "The settings' generation the write expects, quoted, or `*`"),
    ),
    responses(
        (status = 200, description = "Reset (or was not set)", body = SettingsAnswer),
        BadInput, NoSuchPlugin, Conflict, Refused, Denied,
    ),
)]
pub async fn reset(
    State(edge): State<Arc<Edge>>,
    Path((name, key)): Path<(String, String)>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
) -> Result<Json<SettingsAnswer>, ApiError> {
    change(&edge, &name, &actor, &headers, Change::Reset(key)).await
}

fn refused(fields: Vec<FieldProblem>) -> ApiError {
    let detail = fields
        .iter()
        .map(|f| format!("{}: {}", f.key, f.problem))
        .collect::<Vec<_>>()
        .join("; ");
    ApiError::bad_request("invalid settings", format!("settings refused: {detail}"))
        .with_fields(fields)
}

/// The values set after `change`, checked against `schema` (every problem named).
fn next_values(
    schema: &SettingsSchema,
    stored: &StoredSettings,
    change: Change,
) -> Result<BTreeMap<String, Value>, ApiError> {
    let (mut next, body) = match change {
        Change::Replace(body) => (BTreeMap::new(), body),
        Change::Merge(body) => (stored.plain(), body),
        Change::Reset(key) => {
            if !schema.contains_key(&key) {
                return Err(ApiError::not_found(
                    "unknown setting",
                    format!("this plugin declares no setting {key:?}"),
                ));
            }
            let mut next = stored.plain();
            next.remove(&key);
            (next, SettingsChange::new())
        }
    };
    let mut problems: Vec<FieldProblem> = body
        .keys()
        .filter(|k| body[*k].is_null() && !schema.contains_key(*k))
        .map(|k| FieldProblem {
            key: k.clone(),
            problem: "is not a setting of this plugin".into(),
        })
        .collect();
    let given: serde_json::Map<String, Value> = body
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    match check_values(schema, &given) {
        Ok(normal) => {
            for key in body.keys().filter(|k| body[*k].is_null()) {
                next.remove(key);
            }
            next.extend(normal);
        }
        Err(errors) => problems.extend(errors.into_iter().map(|e| FieldProblem {
            key: e.key,
            problem: e.problem,
        })),
    }
    if problems.is_empty() {
        problems.extend(
            effective(schema, &next)
                .missing
                .into_iter()
                .map(|key| FieldProblem {
                    key,
                    problem: "is required and has no default: it needs a value".into(),
                }),
        );
    }
    if problems.is_empty() {
        Ok(next)
    } else {
        problems.sort_by(|a, b| a.key.cmp(&b.key));
        Err(refused(problems))
    }
}

fn conflict(name: &str, current: i64, expected: i64) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        format!(
            "the settings of plugin {name:?} are at generation {current}, not the expected {expected}: another change came first; read them again and retry"
        ),
    )
}

async fn change(
    edge: &Edge,
    name: &str,
    actor: &Actor,
    headers: &HeaderMap,
    change: Change,
) -> Result<Json<SettingsAnswer>, ApiError> {
    let expected = if_match(headers)?;
    let slot = lookup(edge, name).await?;
    let schema = slot.settings_schema();
    let stored = edge.store.settings(name).await.map_err(store_error)?;
    if let Some(expected) = expected.filter(|g| *g != stored.generation) {
        return Err(conflict(name, stored.generation, expected));
    }
    let next = next_values(&schema, &stored, change)?;
    let before = stored.plain();
    let writes: Vec<SettingWrite> = before
        .keys()
        .chain(next.keys())
        .filter(|k| before.get(*k) != next.get(*k))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|k| SettingWrite {
            key: k.clone(),
            value: next.get(k).cloned(),
            secret: schema.get(k).is_some_and(|s| s.secret),
        })
        .collect();
    if writes.is_empty() {
        return Ok(Json(SettingsAnswer {
            changed: false,
            generation: stored.generation,
            keys: Vec::new(),
            applied: "unchanged".into(),
            detail: format!("the settings of plugin {name:?} already were these; nothing changed"),
        }));
    }
    let new_values = effective(&schema, &next).values;
    let keys = changed_keys(&effective(&schema, &before).values, &new_values);
    let reload = keys
        .iter()
        .any(|k| schema.get(k).is_some_and(|s| s.restart));
    let instance = match &*slot.state() {
        PluginState::Ready(instance) if !reload && !keys.is_empty() => Some(instance.clone()),
        _ => None,
    };
    let mut live = false;
    // The instance's settings stay locked from the offer to the store's answer, so the loop
    // cannot deliver an older generation in between.
    let mut applied = match &instance {
        Some(instance) => Some(instance.settings.lock().await),
        None => None,
    };
    if let (Some(instance), Some(applied)) = (&instance, applied.as_deref_mut()) {
        let offered = apply(
            &edge.registry,
            instance,
            applied,
            new_values,
            stored.generation + 1,
        )
        .await;
        match offered {
            Ok(_) => live = true,
            Err(ApplyError::Refused(why)) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "settings refused by the plugin",
                    format!("plugin {name:?} refused the new settings and keeps its current ones; nothing was stored: {why}"),
                ));
            }
            Err(e @ ApplyError::Undelivered(_)) => {
                tracing::warn!(
                    plugin = name,
                    "{e}; storing them, the plugin gets them when it can"
                );
            }
        }
    }
    let outcome = edge
        .store
        .write_settings(name, &writes, &actor.name, Some(stored.generation))
        .await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            if let Some(applied) = applied.as_deref_mut() {
                applied.generation = -1; // what the instance has is not what is stored
            }
            drop(applied);
            send(
                edge,
                Event::Desired {
                    name: name.to_owned(),
                },
            );
            return Err(store_error(e));
        }
    };
    let generation = match outcome {
        SettingsOutcome::Changed(g) => g,
        SettingsOutcome::Unknown => return Err(unknown(name)),
        SettingsOutcome::Conflict(current) => {
            if let Some(applied) = applied.as_deref_mut() {
                applied.generation = -1;
            }
            drop(applied);
            send(
                edge,
                Event::Desired {
                    name: name.to_owned(),
                },
            );
            return Err(conflict(name, current, stored.generation));
        }
    };
    drop(applied);
    send(
        edge,
        Event::Desired {
            name: name.to_owned(),
        },
    );
    let (applied, how) = if reload {
        (
            "reload",
            "a setting marked restart changed, so a new instance starts with them",
        )
    } else if live {
        ("live", "the running instance took them")
    } else {
        (
            "stored",
            "no instance took them here yet; it gets them when it runs",
        )
    };
    Ok(Json(SettingsAnswer {
        changed: true,
        generation,
        detail: format!(
            "settings of plugin {name:?} changed ({}); {how}",
            if keys.is_empty() {
                "no effective value changed".to_owned()
            } else {
                keys.join(", ")
            }
        ),
        keys,
        applied: applied.into(),
    }))
}
