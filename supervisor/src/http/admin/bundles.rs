//! `POST /admin/plugins/install` and `DELETE /admin/plugins/{name}`: bundles in and out.
//!
//! An installed bundle is unpacked with suspicion (see [`crate::manifest::bundle`]) and kept
//! in the store by its sha256, so every worker runs the same bytes; the reconcile loop then
//! starts or reloads it blue/green. These two handlers are the only ones that write the plugins
//! directory: an install must be validated before it is accepted, and an uninstall answered
//! only once the plugin is gone from this worker's disk.

use super::doc::{BadInput, Conflict, Denied, NoSuchPlugin};
use super::{send, store_error, unknown};
use crate::http::auth::Actor;
use crate::http::error::{ApiError, ErrorBody, Path, Query};
use crate::http::Edge;
use crate::manifest::{self, bundle};
use crate::store::KeptBundle;
use crate::supervise::Event;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use plugd_api::{InstallQuery, Installed, Uninstalled};
use std::sync::Arc;

/// Largest bundle accepted by `POST /admin/plugins/install`.
pub const MAX_BUNDLE: usize = plugd_api::plugins::MAX_BUNDLE as usize;

/// Installs a bundle: the body is a `.zip` or `.tar.gz` holding `plugin.toml` and the
/// plugin's files. It is unpacked into a staging directory, its manifest validated, then moved
/// into place; a plugin of the same name is upgraded (blue/green). The bundle is kept in the
/// store, so every worker runs the same bytes, and joins the plugin's kept versions. With
/// `?canary=N` it starts beside the installed version instead, serving N % of its HTTP
/// requests on every worker until it is promoted or rolled back.
#[utoipa::path(
    post, path = "/plugins/install", operation_id = "installBundle", tag = "plugins",
    params(InstallQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The bundle (.zip or .tar.gz), at most 64 MiB"),
    responses(
        (status = 201, description = "Installed (or started as a canary)", body = Installed),
        (status = 200, description = "Upgraded a plugin of the same name", body = Installed),
        (status = 413, description = "The bundle is larger than 64 MiB", body = ErrorBody),
        (status = 500, description = "Unpacking failed inside plugd", body = ErrorBody),
        BadInput, Conflict, Denied,
    ),
)]
pub async fn install(
    State(edge): State<Arc<Edge>>,
    Extension(actor): Extension<Actor>,
    Query(query): Query<InstallQuery>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Installed>), ApiError> {
    let body = body.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            "bundle not accepted",
            format!(
                "{} (bundles may be at most {MAX_BUNDLE} bytes)",
                rejection.body_text()
            ),
        )
    })?;
    let sha256 = bundle::sha256(&body);
    if let Some(percent) = query.canary {
        return install_canary(&edge, &actor, body, sha256, percent).await;
    }
    let (manifest, upgraded) = place(&body, &sha256, edge.plugins_dir.clone()).await?;
    // Kept in the store, so every worker unpacks the same bytes.
    edge.store
        .save_bundle(&sha256, &manifest.name, &body)
        .await
        .map_err(store_error)?;
    let action = if upgraded { "upgrade" } else { "install" };
    let kept = KeptBundle {
        sha256: &sha256,
        size: body.len() as u64,
        actor: &actor.name,
        keep: edge.keep_versions,
    };
    let record = edge
        .store
        .installed(&manifest, &kept, action)
        .await
        .map_err(store_error)?;
    send(&edge, Event::Rescan { requested: false });
    let status = if upgraded {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(Installed {
            name: record.name,
            version: record.version,
            sha256,
            upgraded,
            canary: None,
        }),
    ))
}

/// Unpacks a bundle into `root` on a blocking thread (see [`bundle::place`]).
async fn place(
    body: &Bytes,
    sha256: &str,
    root: std::path::PathBuf,
) -> Result<(crate::manifest::Manifest, bool), ApiError> {
    let (bytes, sum) = (body.clone(), sha256.to_owned());
    tokio::task::spawn_blocking(move || bundle::place(&bytes, &sum, &root))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "install failed",
                e.to_string(),
            )
        })?
        .map_err(|detail| ApiError::bad_request("invalid bundle", detail))
}

/// Unpacks a bundle under `.canary/` and records it as the canary of its installed plugin.
async fn install_canary(
    edge: &Edge,
    actor: &Actor,
    body: Bytes,
    sha256: String,
    percent: u8,
) -> Result<(StatusCode, Json<Installed>), ApiError> {
    if !(1..=99).contains(&percent) {
        return Err(ApiError::bad_request(
            "invalid canary",
            format!("canary={percent}: the share must be 1 to 99 percent"),
        ));
    }
    let (manifest, _) = place(&body, &sha256, edge.plugins_dir.join(".canary")).await?;
    let name = manifest.name.clone();
    let refuse =
        |detail: String| ApiError::new(StatusCode::CONFLICT, "cannot start a canary", detail);
    let record = edge.store.plugin(&name).await.map_err(store_error)?;
    let record = match record {
        Some(r) if !r.missing => r,
        _ => {
            return Err(refuse(format!(
                "plugin {name:?} is not installed: install it without ?canary first"
            )))
        }
    };
    if record.bundle_sha256.as_deref() == Some(sha256.as_str()) {
        return Err(refuse(format!(
            "this bundle is already the stable version of plugin {name:?}"
        )));
    }
    edge.store
        .save_bundle(&sha256, &name, &body)
        .await
        .map_err(store_error)?;
    let kept = KeptBundle {
        sha256: &sha256,
        size: body.len() as u64,
        actor: &actor.name,
        keep: edge.keep_versions,
    };
    edge.store
        .start_canary(&manifest, &kept, percent)
        .await
        .map_err(store_error)?;
    send(edge, Event::Desired { name: name.clone() });
    Ok((
        StatusCode::CREATED,
        Json(Installed {
            name,
            version: manifest.version,
            sha256,
            upgraded: false,
            canary: Some(percent),
        }),
    ))
}

/// Uninstalls a plugin: stops it, removes its directory and its registration.
#[utoipa::path(
    delete, path = "/plugins/{name}", operation_id = "uninstallPlugin", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 200, description = "Uninstalled", body = Uninstalled),
        (status = 500, description = "Its directory could not be removed", body = ErrorBody),
        BadInput, NoSuchPlugin, Denied,
    ),
)]
pub async fn uninstall(
    State(edge): State<Arc<Edge>>,
    Path(name): Path<String>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Uninstalled>, ApiError> {
    let found = manifest::discover(&edge.plugins_dir)
        .ok()
        .and_then(|d| d.manifests.into_iter().find(|m| m.name == name));
    if let Some(m) = found {
        let (plugins_dir, owned) = (edge.plugins_dir.clone(), name.clone());
        let dir = m.dir.clone();
        let removed = tokio::task::spawn_blocking(move || {
            bundle::remove_installed(&plugins_dir, &dir, &owned)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        if let Err(e) = removed {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "uninstall failed",
                format!("cannot remove {}: {e}", m.dir.display()),
            ));
        }
    }
    if !edge
        .store
        .forget(&name, &actor.name)
        .await
        .map_err(store_error)?
    {
        return Err(unknown(&name));
    }
    send(&edge, Event::Rescan { requested: false });
    Ok(Json(Uninstalled { uninstalled: name }))
}
