//! The audit log (`plugin_events`): who changed what, when and why.

use super::{now_ms, Store};
use serde::Serialize;
use sqlx::Row;

/// One audit-log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    /// Increasing id (pagination cursor).
    pub id: i64,
    /// When, in Unix milliseconds.
    pub at_ms: i64,
    /// The plugin concerned, if any.
    pub plugin: Option<String>,
    /// Who: an admin token's name, or `plugd` for the supervisor itself.
    pub actor: String,
    /// What, such as `enable` or `install`.
    pub action: String,
    /// Details.
    pub detail: String,
}

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
        rows.iter()
            .map(|row| {
                Ok(EventRecord {
                    id: row.try_get("id")?,
                    at_ms: row.try_get("at_ms")?,
                    plugin: row.try_get("plugin")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }
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
