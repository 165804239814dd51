//! `GET /admin/stats`: counts over every plugin (registered, enabled, ready, failed, routes,
//! hooks).

use super::store_error;
use crate::http::error::ApiError;
use crate::http::Edge;
use crate::supervise::PluginState;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// `GET /admin/stats`.
pub async fn get(State(edge): State<Arc<Edge>>) -> Result<Json<Value>, ApiError> {
    let records = edge.store.plugins().await.map_err(store_error)?;
    let plugins = edge.registry.plugins();
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
    Ok(Json(json!({
        "plugins": records.len(),
        "enabled": enabled,
        "disabled": records.len() - enabled,
        "missing": records.iter().filter(|r| r.missing).count(),
        "ready": ready,
        "failed": failed,
        "routes": routes,
        "hooks": hooks,
    })))
}
