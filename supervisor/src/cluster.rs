//! Several workers, one truth: every plugd heartbeats into the store (`workers`), and on
//! PostgreSQL each worker listens for change notifications and reconciles its own plugins to
//! the desired state in the database.
//!
//! The rules, from what went wrong for others: NOTIFY carries plugin names only, the tables are
//! the truth; on every (re)connect the listener first LISTENs, then resyncs from the last
//! change version it saw; a poll every [`POLL`] catches anything missed. Changes reach the
//! reconcile loop as `Desired` events, and a change arriving during a reconcile is simply
//! another event, applied after it.

use crate::plugin::PluginState;
use crate::proxy::AppState;
use crate::reconcile::{Event, Handle};
use crate::store::{Store, WorkerRecord, CHANNEL};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time between heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A worker not seen for this long is gone.
pub const EXPIRY: Duration = Duration::from_secs(10);
/// Time between polls of the `changes` table, the fallback for a missed notification.
pub const POLL: Duration = Duration::from_secs(2);

/// This worker's identity.
#[derive(Debug, Clone)]
pub struct Worker {
    /// Random id chosen at start.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Start time, Unix milliseconds.
    pub started_ms: i64,
}

impl Worker {
    /// A new identity for this process.
    pub fn new() -> Worker {
        Worker {
            id: hex::encode(rand::random::<[u8; 6]>()),
            host: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into()),
            started_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        }
    }
}

impl Default for Worker {
    fn default() -> Self {
        Worker::new()
    }
}

/// Writes this worker's heartbeat, with each plugin's state and generation, forever.
pub async fn heartbeat(app: Arc<AppState>) {
    let mut failing = false;
    loop {
        let plugins: serde_json::Map<String, serde_json::Value> = app
            .plugins
            .load()
            .iter()
            .map(|(name, slot)| {
                let state = slot.state();
                let mut v = json!({ "state": state.name() });
                if let PluginState::Ready(i) = &*state {
                    v["pid"] = i.pid.into();
                    v["version"] = i.version.clone().into();
                }
                (name.clone(), v)
            })
            .collect();
        let record = WorkerRecord {
            id: app.worker.id.clone(),
            host: app.worker.host.clone(),
            pid: i64::from(std::process::id()),
            started_ms: app.worker.started_ms,
            seen_ms: 0,
            plugins: serde_json::Value::Object(plugins),
        };
        match app.store.heartbeat(&record).await {
            Ok(()) if failing => {
                tracing::info!("heartbeat written again: the store is back");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(
                    "cannot write the heartbeat: {e:#}; serving on with the last known state"
                );
                failing = true;
            }
            Err(_) => {}
        }
        // Report a change of state at once; otherwise every HEARTBEAT.
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = app.state_changed.notified() => {}
        }
    }
}

/// Follows changes of the desired state made by any worker and hands them to the reconcile
/// loop. PostgreSQL only: it uses LISTEN/NOTIFY, with a poll as fallback.
pub async fn follow_changes(url: String, store: Store, handle: Handle) {
    // Start from the newest change: start-up already applied everything before it.
    let mut last = newest(&store).await.unwrap_or(0);
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("change listener cannot connect: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        // LISTEN first, then resync: nothing committed in between can be missed.
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!("change listener cannot LISTEN: {e}; reconnecting");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(200);
        tracing::info!("listening for changes of the desired state");
        resync(&store, &handle, &mut last).await;
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => resync(&store, &handle, &mut last).await,
                    Ok(None) => {
                        tracing::warn!("change listener reconnected; resyncing");
                        resync(&store, &handle, &mut last).await;
                    }
                    Err(e) => {
                        tracing::warn!("change listener lost its connection: {e}; reconnecting");
                        break;
                    }
                },
                _ = tokio::time::sleep(POLL) => resync(&store, &handle, &mut last).await,
            }
            if handle.is_closed() {
                return;
            }
        }
    }
}

async fn newest(store: &Store) -> Option<i64> {
    store.changes_since(0).await.ok().map(|(v, _)| v)
}

/// Reads the changes after `last` and asks the loop to apply each changed plugin.
async fn resync(store: &Store, handle: &Handle, last: &mut i64) {
    match store.changes_since(*last).await {
        Ok((version, plugins)) => {
            *last = version;
            for name in plugins {
                handle.send(Event::Desired { name });
            }
        }
        Err(e) => tracing::warn!("cannot read changes: {e:#}"),
    }
}
