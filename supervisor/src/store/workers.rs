//! The `workers` table: every plugd worker's heartbeat with the state of its plugins.

use super::{now_ms, Store};
use plugd_api::WorkerPluginState;
use serde::Serialize;
use sqlx::Row;
use std::collections::BTreeMap;
use std::time::Duration;

/// One worker as it last reported itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerRecord {
    /// Random id chosen at start.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id on that host.
    pub pid: i64,
    /// When it started, Unix milliseconds.
    pub started_ms: i64,
    /// Its last heartbeat, Unix milliseconds.
    pub seen_ms: i64,
    /// Each plugin's state on that worker, by name.
    pub plugins: BTreeMap<String, WorkerPluginState>,
    /// Its host's CPUs, load and memory, when it reported them.
    pub system: Option<plugd_api::HostInfo>,
}

impl Store {
    /// Records this worker's heartbeat with the state of its plugins.
    pub async fn heartbeat(&self, worker: &WorkerRecord) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO workers (id, host, pid, started_ms, seen_ms, plugins, system) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET seen_ms = $5, plugins = $6, system = $7",
        )
        .bind(&worker.id)
        .bind(&worker.host)
        .bind(worker.pid)
        .bind(worker.started_ms)
        .bind(now_ms())
        .bind(serde_json::to_string(&worker.plugins)?)
        .bind(
            worker
                .system
                .as_ref()
                .and_then(|s| serde_json::to_string(s).ok()),
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Workers seen within `fresh`; older rows are deleted (the worker stopped).
    pub async fn workers(&self, fresh: Duration) -> anyhow::Result<Vec<WorkerRecord>> {
        let cutoff = now_ms() - fresh.as_millis() as i64;
        sqlx::query("DELETE FROM workers WHERE seen_ms < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        let rows = sqlx::query(
            "SELECT id, host, pid, started_ms, seen_ms, plugins, system FROM workers ORDER BY started_ms, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let plugins: String = r.try_get("plugins")?;
                let system: Option<String> = r.try_get("system")?;
                Ok(WorkerRecord {
                    id: r.try_get("id")?,
                    host: r.try_get("host")?,
                    pid: r.try_get("pid")?,
                    started_ms: r.try_get("started_ms")?,
                    seen_ms: r.try_get("seen_ms")?,
                    plugins: plugin_states(&plugins),
                    system: system.and_then(|s| serde_json::from_str(&s).ok()),
                })
            })
            .collect()
    }
}

/// A heartbeat's plugin states; an entry this version cannot read (a newer worker's state) is
/// left out rather than losing the others.
fn plugin_states(json: &str) -> BTreeMap<String, WorkerPluginState> {
    serde_json::from_str::<BTreeMap<String, serde_json::Value>>(json)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, v)| Some((name, serde_json::from_value(v).ok()?)))
        .collect()
}
