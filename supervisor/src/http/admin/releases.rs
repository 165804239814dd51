//! Releases: `GET /admin/plugins/{name}/versions` (the kept versions and where each runs),
//! `GET …/bundle` (a kept bundle, with its digest), `POST …/rollback` (an earlier version, or
//! the end of a canary), `POST …/promote` (the canary becomes stable) and `GET …/canary` (how
//! the canary fares on this worker). Each change is a write of the desired state, audited; the
//! reconcile loop of every worker applies it blue/green.

use super::doc::{BadInput, Conflict, Denied, NoSuchPlugin};
use super::{record_of, send, store_error, unknown};
use crate::http::auth::Actor;
use crate::http::error::{ApiError, Path, Query};
use crate::http::Edge;
use crate::store::{Release, VersionRow};
use crate::supervise::{cluster, Event};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use base64::Engine;
use plugd_api::{BundleQuery, BundleVersion, CanaryReport, Released, RollbackQuery, Versions};
use std::collections::BTreeMap;
use std::sync::Arc;

fn conflict(error: &'static str, detail: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, error, detail)
}

fn no_version(name: &str, spec: &str) -> ApiError {
    ApiError::not_found(
        "unknown version",
        format!(
            "plugin {name:?} has no kept version {spec:?} (see GET /admin/plugins/{name}/versions)"
        ),
    )
}

/// Lists a plugin's kept versions, newest first, marking the stable one, the canary, and the
/// live workers running each.
#[utoipa::path(
    get, path = "/plugins/{name}/versions", operation_id = "listVersions", tag = "releases",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 200, description = "Its kept versions", body = Versions),
        BadInput, NoSuchPlugin, Denied,
    ),
)]
pub async fn versions(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
) -> Result<Json<Versions>, ApiError> {
    let record = record_of(&edge, &name).await?;
    let rows = edge.store.versions(&name).await.map_err(store_error)?;
    let mut running: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Ok(workers) = edge.store.workers(cluster::EXPIRY).await {
        for w in workers {
            if let Some(state) = w.plugins.get(&name) {
                for sha in [&state.sha256, &state.canary_sha256].into_iter().flatten() {
                    running.entry(sha.clone()).or_default().push(w.id.clone());
                }
            }
        }
    }
    let canary = record.canary.as_ref().map(|c| c.sha256.as_str());
    let versions = rows
        .into_iter()
        .map(|v| BundleVersion {
            current: record.bundle_sha256.as_deref() == Some(v.sha256.as_str()),
            canary: canary == Some(v.sha256.as_str()),
            workers: running.remove(&v.sha256).unwrap_or_default(),
            version: v.version,
            sha256: v.sha256,
            size: v.size,
            installed_by: v.installed_by,
            installed_ms: v.installed_ms,
        })
        .collect();
    Ok(Json(Versions {
        plugin: name,
        versions,
        keep: edge.keep_versions,
    }))
}

/// Downloads a kept bundle (the stable one by default). `ETag` is its sha256; `Digest` and
/// `Content-Digest` carry the same sum in base64, so a client can check what it received.
#[utoipa::path(
    get, path = "/plugins/{name}/bundle", operation_id = "downloadBundle", tag = "releases",
    params(("name" = String, Path, description = "The plugin's name"), BundleQuery),
    responses(
        (status = 200, description = "The bundle's bytes (.zip or .tar.gz)",
            content_type = "application/octet-stream", body = Vec<u8>,
            headers(
                ("ETag" = String, description = "The bundle's sha256, hex, quoted"),
                ("Content-Digest" = String, description = "`sha-256=:<base64>:` (RFC 9530)"),
                ("Digest" = String, description = "`sha-256=<base64>` (RFC 3230)"),
            )),
        BadInput, NoSuchPlugin, Denied,
    ),
)]
pub async fn bundle(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    Query(query): Query<BundleQuery>,
) -> Result<Response, ApiError> {
    let record = record_of(&edge, &name).await?;
    let sha256 = match &query.version {
        Some(spec) => {
            let rows = edge.store.versions(&name).await.map_err(store_error)?;
            rows.into_iter()
                .find(|v| v.is(spec))
                .ok_or_else(|| no_version(&name, spec))?
                .sha256
        }
        None => record.bundle_sha256.ok_or_else(|| {
            ApiError::not_found(
                "no bundle",
                format!("plugin {name:?} was not installed from a bundle"),
            )
        })?,
    };
    let bytes = edge
        .store
        .bundle(&sha256)
        .await
        .map_err(store_error)?
        .ok_or_else(|| {
            ApiError::not_found("no bundle", format!("bundle {sha256} is no longer kept"))
        })?;
    let digest = hex::decode(&sha256).unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
    let kind = if bytes.starts_with(b"PK") {
        "zip"
    } else {
        "tar.gz"
    };
    let mut response = Response::new(Body::from(bytes));
    let headers = response.headers_mut();
    let mut set = |key: header::HeaderName, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(key, v);
        }
    };
    set(header::CONTENT_TYPE, "application/octet-stream".into());
    set(header::ETAG, format!("\"{sha256}\""));
    set(
        header::CONTENT_DISPOSITION,
        format!("attachment; filename=\"{name}-{}.{kind}\"", &sha256[..12]),
    );
    set(
        header::HeaderName::from_static("content-digest"),
        format!("sha-256=:{b64}:"),
    );
    set(
        header::HeaderName::from_static("digest"),
        format!("sha-256={b64}"),
    );
    Ok(response)
}

/// Rolls a plugin back: `?to=` names a kept version (by default the one installed before the
/// stable one), which every worker then runs, blue/green. During a canary and without `to`,
/// ends the canary and keeps the stable version.
#[utoipa::path(
    post, path = "/plugins/{name}/rollback", operation_id = "rollbackPlugin", tag = "releases",
    params(("name" = String, Path, description = "The plugin's name"), RollbackQuery),
    responses(
        (status = 200, description = "Rolled back; every worker converges to it", body = Released),
        BadInput, NoSuchPlugin, Conflict, Denied,
    ),
)]
pub async fn rollback(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
    Query(query): Query<RollbackQuery>,
) -> Result<Json<Released>, ApiError> {
    let record = record_of(&edge, &name).await?;
    let stable = record.bundle_sha256.clone().unwrap_or_default();
    if let (Some(canary), None) = (&record.canary, &query.to) {
        let detail = format!(
            "canary version {} ({}) ended; version {} stays",
            canary.version, canary.sha256, record.version
        );
        edge.store
            .end_canary(&name, &canary.sha256, &actor.name, "rollback", &detail)
            .await
            .map_err(store_error)?;
        send(&edge, Event::Desired { name: name.clone() });
        return Ok(Json(Released {
            plugin: name,
            from: record.version.clone(),
            to: record.version,
            sha256: stable,
            canary_ended: Some(canary.version.clone()),
            detail,
        }));
    }
    if record.bundle_sha256.is_none() {
        return Err(conflict(
            "nothing to roll back to",
            format!("plugin {name:?} was not installed from a bundle, so no versions are kept"),
        ));
    }
    let rows = edge.store.versions(&name).await.map_err(store_error)?;
    let target: VersionRow = match &query.to {
        Some(spec) => rows
            .iter()
            .find(|v| v.is(spec))
            .cloned()
            .ok_or_else(|| no_version(&name, spec))?,
        None => {
            let at = rows.iter().position(|v| v.sha256 == stable);
            at.and_then(|i| rows.get(i + 1)).cloned().ok_or_else(|| {
                conflict(
                    "nothing to roll back to",
                    format!("no version of plugin {name:?} older than the stable one is kept"),
                )
            })?
        }
    };
    if target.sha256 == stable {
        return Err(conflict(
            "already stable",
            format!(
                "version {} ({}) is already the stable version of plugin {name:?}",
                target.version, target.sha256
            ),
        ));
    }
    let detail = format!(
        "from version {} ({stable}) to version {} ({})",
        record.version, target.version, target.sha256
    );
    edge.store
        .release(
            &name,
            Release {
                sha256: &target.sha256,
                version: &target.version,
            },
            &actor.name,
            "rollback",
            &detail,
        )
        .await
        .map_err(store_error)?
        .ok_or_else(|| unknown(&name))?;
    send(&edge, Event::Desired { name: name.clone() });
    Ok(Json(Released {
        plugin: name,
        from: record.version,
        to: target.version,
        sha256: target.sha256,
        canary_ended: record.canary.map(|c| c.version),
        detail,
    }))
}

/// Makes the canary the stable version on every worker (blue/green) and ends the canary.
#[utoipa::path(
    post, path = "/plugins/{name}/promote", operation_id = "promoteCanary", tag = "releases",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 200, description = "Promoted; every worker converges to it", body = Released),
        BadInput, NoSuchPlugin, Conflict, Denied,
    ),
)]
pub async fn promote(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Released>, ApiError> {
    let record = record_of(&edge, &name).await?;
    let Some(canary) = record.canary.clone() else {
        return Err(conflict(
            "no canary",
            format!("plugin {name:?} has no canary to promote"),
        ));
    };
    let detail = format!(
        "canary version {} ({}) promoted over version {}",
        canary.version, canary.sha256, record.version
    );
    edge.store
        .release(
            &name,
            Release {
                sha256: &canary.sha256,
                version: &canary.version,
            },
            &actor.name,
            "promote",
            &detail,
        )
        .await
        .map_err(store_error)?
        .ok_or_else(|| unknown(&name))?;
    send(&edge, Event::Desired { name: name.clone() });
    Ok(Json(Released {
        plugin: name,
        from: record.version,
        to: canary.version.clone(),
        sha256: canary.sha256,
        canary_ended: Some(canary.version),
        detail,
    }))
}

/// The plugin's canary and how both versions fare on this worker over the sliding window.
#[utoipa::path(
    get, path = "/plugins/{name}/canary", operation_id = "getCanary", tag = "releases",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 200, description = "The canary and its figures", body = CanaryReport),
        BadInput, NoSuchPlugin, Denied,
    ),
)]
pub async fn canary(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
) -> Result<Json<CanaryReport>, ApiError> {
    let record = record_of(&edge, &name).await?;
    let Some(info) = record.canary.clone() else {
        return Err(ApiError::not_found(
            "no canary",
            format!("plugin {name:?} has no canary"),
        ));
    };
    let live = edge
        .registry
        .get(&name)
        .and_then(|slot| slot.canary())
        .filter(|c| c.sha256 == info.sha256);
    let (stable, candidate) = match &live {
        Some(c) => c.figures(),
        None => Default::default(),
    };
    let workers = match edge.store.workers(cluster::EXPIRY).await {
        Ok(workers) => workers
            .into_iter()
            .map(|w| {
                let sha = w.plugins.get(&name).and_then(|p| p.canary_sha256.clone());
                (w.id, sha)
            })
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    Ok(Json(CanaryReport {
        plugin: name,
        canary: info,
        stable_version: record.version,
        serving: live.is_some(),
        window_s: edge.canary_policy.window.as_secs_f64(),
        stable,
        candidate,
        thresholds: edge.canary_policy.thresholds(),
        workers,
    }))
}
