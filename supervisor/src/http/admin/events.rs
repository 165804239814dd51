//! `GET /admin/events`: the audit log, newest first, by plugin, paged by id.

use super::doc::{BadInput, Denied};
use super::store_error;
use crate::http::error::{ApiError, Query};
use crate::http::Edge;
use axum::extract::State;
use axum::Json;
use plugd_api::{Events, EventsQuery};
use std::sync::Arc;

/// The audit log, newest first: at most `limit` (1 to 500, default 50) entries older than
/// `before`; `next_before` is the cursor for the next page.
#[utoipa::path(
    get, path = "/events", operation_id = "listEvents", tag = "cluster",
    params(EventsQuery),
    responses((status = 200, description = "One page of the audit log", body = Events), BadInput, Denied),
)]
pub async fn list(
    State(edge): State<Arc<Edge>>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Events>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let events = edge
        .store
        .events(q.plugin.as_deref(), q.before, limit)
        .await
        .map_err(store_error)?;
    let next_before = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    Ok(Json(Events {
        events,
        next_before,
    }))
}
