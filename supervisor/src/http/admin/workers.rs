//! `GET /admin/workers`: every worker that heartbeated within the expiry, with the state of
//! each of its plugins; this worker is marked.

use super::store_error;
use crate::http::error::ApiError;
use crate::http::Edge;
use crate::supervise::cluster;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// `GET /admin/workers`.
pub async fn list(State(edge): State<Arc<Edge>>) -> Result<Json<Value>, ApiError> {
    let workers = edge
        .store
        .workers(cluster::EXPIRY)
        .await
        .map_err(store_error)?;
    let list: Vec<Value> = workers
        .into_iter()
        .map(|w| {
            let mut v = serde_json::to_value(&w).unwrap_or_default();
            v["this"] = (w.id == edge.worker.id).into();
            v
        })
        .collect();
    Ok(Json(json!({ "workers": list })))
}
