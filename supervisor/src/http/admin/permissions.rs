//! `GET /admin/permissions`: every permission a plugin declared, with the plugin.

use super::doc::Denied;
use crate::http::Edge;
use axum::extract::State;
use axum::Json;
use plugd_api::{Permission, Permissions};
use std::sync::Arc;

/// Every permission a plugin defines, by key: what to grant a token (`permissions = […]`).
#[utoipa::path(
    get, path = "/permissions", operation_id = "listPermissions", tag = "cluster",
    responses((status = 200, description = "The permissions", body = Permissions), Denied),
)]
pub async fn list(State(edge): State<Arc<Edge>>) -> Json<Permissions> {
    let plugins = edge.registry.plugins();
    let mut permissions: Vec<Permission> = plugins
        .iter()
        .flat_map(|(name, slot)| {
            slot.permissions()
                .iter()
                .map(|p| Permission {
                    key: p.key.clone(),
                    description: p.description.clone(),
                    plugin: name.clone(),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    permissions.sort_by(|a, b| a.key.cmp(&b.key));
    Json(Permissions { permissions })
}
