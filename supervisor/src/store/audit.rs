//! The audit log (`plugin_events`): who changed what, when and why.

use super::{now_ms, Store};
use sqlx::Row;

/// One audit-log entry (the admin API's type).
pub use plugd_api::AuditEvent as EventRecord;

impl Store {
    /// Appends an audit-log entry.
    pub async fn record(
        &self,
        plugin: Option<&str>,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> anyhow::Result<()> {
        let mut conn = self.pool.acquire().await?;
        insert_event(&mut conn, plugin, actor, action, detail, now_ms()).await?;
        Ok(())
    }

    /// Audit-log entries, newest first: at most `limit`, older than `before` (an id) when
    /// given, of one plugin when given.
    pub async fn events(
        &self,
        plugin: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> anyhow::Result<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT id, at_ms, plugin, actor, action, detail FROM plugin_events
             WHERE ($1 IS NULL OR plugin = $1) AND ($2 IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3",
        )
        .bind(plugin)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event).collect()
    }

    /// Audit-log entries newer than `after` (an id), oldest first, at most `limit`: what a
    /// follower of the log has not seen yet.
    pub async fn events_after(&self, after: i64, limit: i64) -> anyhow::Result<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT id, at_ms, plugin, actor, action, detail FROM plugin_events
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event).collect()
    }

    /// The id of the newest audit-log entry (0 when the log is empty).
    pub async fn newest_event(&self) -> anyhow::Result<i64> {
        let id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM plugin_events")
            .fetch_one(&self.pool)
            .await?;
        Ok(id)
    }
}

fn event(row: &sqlx::any::AnyRow) -> anyhow::Result<EventRecord> {
    Ok(EventRecord {
        id: row.try_get("id")?,
        at_ms: row.try_get("at_ms")?,
        plugin: row.try_get("plugin")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        detail: row.try_get("detail")?,
    })
}

/// Appends an audit entry on any connection (a transaction's included).
pub(super) async fn insert_event(
    conn: &mut sqlx::AnyConnection,
    plugin: Option<&str>,
    actor: &str,
    action: &str,
    detail: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO plugin_events (at_ms, plugin, actor, action, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(now)
    .bind(plugin)
    .bind(actor)
    .bind(action)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}
