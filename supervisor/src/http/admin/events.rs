//! `GET /admin/events`: the audit log, newest first, by plugin, paged by id.

use super::store_error;
use crate::http::error::ApiError;
use crate::http::Edge;
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The query of `GET /admin/events`.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    plugin: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

/// `GET /admin/events?plugin=&before=&limit=`: at most `limit` (1 to 500, default 50) entries
/// older than `before`; `next_before` is the cursor for the next page.
pub async fn list(
    State(edge): State<Arc<Edge>>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let events = edge
        .store
        .events(q.plugin.as_deref(), q.before, limit)
        .await
        .map_err(store_error)?;
    let next = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    Ok(Json(json!({ "events": events, "next_before": next })))
}
