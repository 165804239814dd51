//! `GET /admin/permissions`: every permission a plugin declared, with the plugin.

use crate::http::Edge;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// `GET /admin/permissions`.
pub async fn list(State(edge): State<Arc<Edge>>) -> Json<Value> {
    let plugins = edge.registry.plugins();
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
    Json(json!({ "permissions": list }))
}
