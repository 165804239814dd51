//! `GET /admin/stats`: counts over every plugin (registered, enabled, ready, failed, routes,
//! hooks) and over the cluster (workers, plugins ready on all of them).

use super::doc::Denied;
use super::store_error;
use crate::http::error::ApiError;
use crate::http::Edge;
use crate::supervise::{cluster, PluginState};
use axum::extract::State;
use axum::Json;
use plugd_api::Stats;
use std::sync::Arc;

/// Totals over every plugin, on this worker and in the cluster.
#[utoipa::path(
    get, path = "/stats", operation_id = "getStats", tag = "cluster",
    responses((status = 200, description = "The totals", body = Stats), Denied),
)]
pub async fn get(State(edge): State<Arc<Edge>>) -> Result<Json<Stats>, ApiError> {
    let records = edge.store.plugins().await.map_err(store_error)?;
    let workers = edge
        .store
        .workers(cluster::EXPIRY)
        .await
        .map_err(store_error)?;
    let plugins = edge.registry.plugins();
    let (mut failed, mut routes, mut ready) = (0, 0, 0);
    let hooks = plugins.values().map(|s| s.hooks().len() as u64).sum();
    for slot in plugins.values() {
        match &*slot.state() {
            PluginState::Failed(_) => failed += 1,
            PluginState::Ready(i) => {
                ready += 1;
                routes += i.routes.len() as u64;
            }
            _ => {}
        }
    }
    let count = |f: &dyn Fn(&crate::store::PluginRecord) -> bool| {
        records.iter().filter(|r| f(r)).count() as u64
    };
    let enabled = count(&|r| r.enabled);
    Ok(Json(Stats {
        plugins: records.len() as u64,
        enabled,
        disabled: records.len() as u64 - enabled,
        missing: count(&|r| r.missing),
        ready,
        failed,
        routes,
        hooks,
        workers: workers.len() as u64,
        ready_everywhere: workers
            .iter()
            .flat_map(|w| w.plugins.values())
            .filter(|s| s.state == plugd_api::State::Ready)
            .count() as u64,
    }))
}
