//! `GET /admin/workers`: every worker that heartbeated within the expiry, with the state of
//! each of its plugins and its host's CPUs, load and memory; this worker is marked.

use super::doc::Denied;
use super::store_error;
use crate::http::error::ApiError;
use crate::http::Edge;
use crate::supervise::cluster;
use axum::extract::State;
use axum::Json;
use plugd_api::{WorkerInfo, Workers};
use std::sync::Arc;

/// Every live worker, oldest first.
#[utoipa::path(
    get, path = "/workers", operation_id = "listWorkers", tag = "cluster",
    responses((status = 200, description = "The live workers", body = Workers), Denied),
)]
pub async fn list(State(edge): State<Arc<Edge>>) -> Result<Json<Workers>, ApiError> {
    let workers = edge
        .store
        .workers(cluster::EXPIRY)
        .await
        .map_err(store_error)?;
    let workers = workers
        .into_iter()
        .map(|w| WorkerInfo {
            this: w.id == edge.worker.id,
            plugins: w.plugins,
            id: w.id,
            host: w.host,
            pid: w.pid,
            started_ms: w.started_ms,
            seen_ms: w.seen_ms,
            system: w.system,
        })
        .collect();
    Ok(Json(Workers { workers }))
}
