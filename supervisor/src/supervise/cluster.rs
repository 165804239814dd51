//! Several workers, one truth: every plugd heartbeats into the store (`workers`), and on
//! PostgreSQL each worker listens for change notifications and reconciles its own plugins to
//! the desired state in the database.
//!
//! The rules, from what went wrong for others: NOTIFY carries plugin names only, the tables are
//! the truth; on every (re)connect the listener first LISTENs, then resyncs from the last
//! change version it saw; a poll every [`POLL`] catches anything missed. Changes reach the
//! reconcile loop as `DesiredKnown` events, each with the plugin's record read in the same
//! query as the change (one round trip per change, not two), and a change arriving during a
//! reconcile is simply another event, applied after it.

use super::reconcile::{Event, Handle, PluginState, Registry};
use crate::feed::{Baseline, Feed};
use crate::store::{self, Store, WorkerRecord, CHANNEL};
use plugd_api::{HostInfo, StreamEvent};
use std::sync::Arc;
use std::time::Duration;

/// Time between heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// The shortest time between two heartbeats written for changes of state.
pub const CHANGE_GAP: Duration = Duration::from_millis(50);
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
            started_ms: i64::try_from(plugd_protocol::time::now_unix_ms()).unwrap_or(i64::MAX),
        }
    }
}

impl Default for Worker {
    fn default() -> Self {
        Worker::new()
    }
}

/// Writes this worker's heartbeat, with each plugin's state and generation, forever.
pub async fn heartbeat(worker: Worker, registry: Arc<Registry>, store: Store) {
    let mut failing = false;
    // The host's figures are read once per HEARTBEAT, not at every change of state.
    let mut system: Option<(tokio::time::Instant, HostInfo)> = None;
    loop {
        if system
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= HEARTBEAT)
        {
            system = tokio::task::spawn_blocking(host_info)
                .await
                .ok()
                .map(|info| (tokio::time::Instant::now(), info));
        }
        let plugins = registry
            .plugins()
            .iter()
            .map(|(name, slot)| {
                let state = slot.state();
                let ready = match &*state {
                    PluginState::Ready(i) => Some(i),
                    _ => None,
                };
                let reported = plugd_api::WorkerPluginState {
                    state: state.api(),
                    pid: ready.map(|i| i.pid),
                    version: ready.map(|i| i.version.clone()),
                    sha256: ready.and_then(|i| i.manifest.bundle.clone()),
                    canary_sha256: slot.canary().map(|c| c.sha256.clone()),
                };
                (name.clone(), reported)
            })
            .collect();
        let record = WorkerRecord {
            id: worker.id.clone(),
            host: worker.host.clone(),
            pid: i64::from(std::process::id()),
            started_ms: worker.started_ms,
            seen_ms: 0,
            plugins,
            system: system.as_ref().map(|(_, info)| info.clone()),
        };
        match store::bounded(STORE_CALL, store.heartbeat(&record)).await {
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
        // Report a change of state soon; otherwise every HEARTBEAT. At most one write per
        // CHANGE_GAP: a start's three states, or a plugin flapping, cost the store one write,
        // and the one after the gap holds the latest states.
        let written = tokio::time::Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = registry.changed() => tokio::time::sleep_until(written + CHANGE_GAP).await,
        }
    }
}

/// This host's CPUs, load and memory, as the workers view shows them.
fn host_info() -> HostInfo {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    let load = sysinfo::System::load_average();
    HostInfo {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        load: [load.one, load.five, load.fifteen],
        memory_used: system.used_memory(),
        memory_total: system.total_memory(),
    }
}

/// How often the live feed reads what other workers and the audit log say, while a stream is
/// open.
pub const FEED_POLL: Duration = Duration::from_millis(500);
/// Audit entries read per poll; more wait for the next poll.
const FEED_BATCH: i64 = 200;

/// Each plugin's state on every worker but `me`, as their heartbeats say: (worker, plugin,
/// state, when the worker said it).
fn remote_states<'a>(
    workers: &'a [WorkerRecord],
    me: &'a str,
) -> impl Iterator<Item = (&'a str, &'a str, plugd_api::State, i64)> + 'a {
    workers.iter().filter(move |w| w.id != me).flat_map(|w| {
        w.plugins
            .iter()
            .map(move |(plugin, s)| (w.id.as_str(), plugin.as_str(), s.state, w.seen_ms))
    })
}

/// The longest each of [`baseline`]'s reads may take (a stream's opening waits for them).
const BASELINE_CALL: Duration = Duration::from_secs(2);

/// What the store says now: the newest audit entry and the other workers' plugin states
/// (`None` when the store does not answer).
pub async fn baseline(store: &Store, me: &str) -> Option<Baseline> {
    let audit = store::bounded(BASELINE_CALL, store.newest_event())
        .await
        .ok()?;
    let workers = store::bounded(BASELINE_CALL, store.workers(EXPIRY))
        .await
        .ok()?;
    let states = remote_states(&workers, me)
        .map(|(w, p, s, _)| ((w.to_owned(), p.to_owned()), s))
        .collect();
    Some(Baseline { audit, states })
}

/// Feeds the live stream with what only the store knows: new audit-log entries (written by any
/// worker) and the state changes other workers report in their heartbeats. Does nothing while
/// no stream is open; starts from what the store said when the first stream opened.
pub async fn watch_cluster(store: Store, feed: Arc<Feed>) {
    let mut following = false;
    let mut unstarted: Option<std::time::Instant> = None;
    let mut seen = Baseline::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FEED_POLL) => {}
            _ = feed.closed() => return,
        }
        if !feed.watching() {
            // A baseline left by a stream that already closed is stale.
            feed.take_start();
            following = false;
            unstarted = None;
            continue;
        }
        if following {
            // A stream that opened meanwhile is served from here on.
            feed.take_start();
        } else {
            // The opening stream notes its baseline; only if none comes (its store reads
            // failed) does the follower take one of its own.
            let waited = unstarted
                .get_or_insert_with(std::time::Instant::now)
                .elapsed();
            seen = match feed.take_start() {
                Some(start) => start,
                None if waited < BASELINE_CALL * 3 => continue,
                None => match baseline(&store, feed.worker()).await {
                    Some(now) => now,
                    None => continue,
                },
            };
            following = true;
            unstarted = None;
        }
        if let Ok(events) =
            store::bounded(STORE_CALL, store.events_after(seen.audit, FEED_BATCH)).await
        {
            for e in events {
                seen.audit = e.id;
                feed.publish(|| StreamEvent::Audit { event: e });
            }
        }
        let Ok(workers) = store::bounded(STORE_CALL, store.workers(EXPIRY)).await else {
            continue;
        };
        for (worker, plugin, state, at_ms) in remote_states(&workers, feed.worker()) {
            let key = (worker.to_owned(), plugin.to_owned());
            if seen.states.insert(key, state) != Some(state) {
                feed.publish(|| StreamEvent::State {
                    worker: worker.to_owned(),
                    plugin: plugin.to_owned(),
                    state,
                    reason: None,
                    at_ms: u64::try_from(at_ms).unwrap_or_default(),
                });
            }
        }
    }
}

/// Follows changes of the desired state made by any worker and hands them to the reconcile
/// loop. PostgreSQL only: it uses LISTEN/NOTIFY, with a poll as fallback and, at every poll, a
/// liveness query on the listener's own connection, so one that went silent is replaced.
///
/// `start` is the change version read before start-up read the desired state (see
/// [`start_cursor`]): a change committed while start-up was reading is applied here, not lost.
pub async fn follow_changes(url: String, store: Store, handle: Handle, start: i64) {
    let mut cursor = Cursor {
        last: start,
        failing: false,
    };
    let mut backoff = RECONNECT_MIN;
    let mut lost_since: Option<std::time::Instant> = None;
    loop {
        let mut listener = match connect_listener(&url).await {
            Ok(l) => l,
            Err(e) => {
                // Logged at the first failure of a streak; the rest at debug level.
                if backoff == RECONNECT_MIN {
                    tracing::warn!(
                        "change listener cannot connect: {e:#}; retrying with backoff up to {RECONNECT_MAX:?}"
                    );
                } else {
                    tracing::debug!(
                        "change listener cannot connect: {e:#}; retrying in {backoff:?}"
                    );
                }
                lost_since.get_or_insert_with(std::time::Instant::now);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                if handle.is_closed() {
                    return;
                }
                // The store may answer although the listener cannot connect (too many
                // clients, say): poll meanwhile.
                resync(&store, &handle, &mut cursor).await;
                continue;
            }
        };
        backoff = RECONNECT_MIN;
        match lost_since.take() {
            Some(t) => tracing::info!(
                "change listener connected again after {:.1?}; resyncing",
                t.elapsed()
            ),
            None => tracing::info!("listening for changes of the desired state"),
        }
        resync(&store, &handle, &mut cursor).await;
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => resync(&store, &handle, &mut cursor).await,
                    Ok(None) => {
                        tracing::warn!("change listener lost its connection; reconnecting");
                        lost_since = Some(std::time::Instant::now());
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("change listener lost its connection: {e}; reconnecting");
                        lost_since = Some(std::time::Instant::now());
                        break;
                    }
                },
                _ = tokio::time::sleep(POLL) => {
                    // The listener first: a silent one is replaced without waiting for the
                    // read of the changes, which may itself wait on the store.
                    if let Err(e) = alive(&mut listener).await {
                        tracing::warn!("change listener went silent ({e}); reconnecting");
                        lost_since = Some(std::time::Instant::now());
                        break;
                    }
                    resync(&store, &handle, &mut cursor).await;
                }
            }
            if handle.is_closed() {
                return;
            }
        }
    }
}

/// The longest a heartbeat or a read of the changes may take (see [`store::bounded`]).
const STORE_CALL: Duration = Duration::from_secs(10);

/// First wait between listener reconnects; doubled after each failure up to [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// Longest wait between listener reconnects.
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// How long one connection attempt of the listener may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects a listener and LISTENs. Its pool of one is bounded in time, unlike the one
/// `PgListener::connect` makes, so an outage costs at most a backoff step, not half a minute.
async fn connect_listener(url: &str) -> anyhow::Result<sqlx::postgres::PgListener> {
    tokio::time::timeout(CONNECT_TIMEOUT * 2, connect_listener_now(url))
        .await
        .map_err(|_| anyhow::anyhow!("no connection within {:?}", CONNECT_TIMEOUT * 2))?
}

async fn connect_listener_now(url: &str) -> anyhow::Result<sqlx::postgres::PgListener> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy(url)?;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
    // A lost connection is reported (`Ok(None)`), not mended inside `try_recv`: a reconnect
    // there would be cancelled by every poll, and the loop here reconnects with backoff.
    listener.eager_reconnect(false);
    // LISTEN first, then resync: nothing committed in between can be missed.
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// A round trip on the listener's own connection, bounded in time.
async fn alive(listener: &mut sqlx::postgres::PgListener) -> anyhow::Result<()> {
    store::bounded(CONNECT_TIMEOUT, async {
        sqlx::query("SELECT 1").execute(listener).await?;
        Ok(())
    })
    .await
}

/// The newest change version, read before the reconcile loop first reads the desired state:
/// the change follower starts after it. When the store does not answer, 0: the follower then
/// reads every recorded change once, which is slower but loses none.
pub async fn start_cursor(store: &Store) -> i64 {
    // Bounded like a listener's connect: the store answered the migration a moment ago, and
    // start-up must not wait long for a store that just went away.
    match store::bounded(CONNECT_TIMEOUT, store.newest_change()).await {
        Ok(version) => version,
        Err(e) => {
            tracing::warn!(
                "cannot read the newest change: {e:#}; the change follower starts from the first"
            );
            0
        }
    }
}

/// How far this worker has read the `changes` table.
struct Cursor {
    /// The newest change version applied.
    last: i64,
    /// Whether the last read failed (so a failure streak is logged once, and its end).
    failing: bool,
}

/// Reads the changes after the cursor and asks the loop to apply each changed plugin.
async fn resync(store: &Store, handle: &Handle, cursor: &mut Cursor) {
    match store::bounded(STORE_CALL, store.changes_since(cursor.last)).await {
        Ok((version, plugins)) => {
            if std::mem::take(&mut cursor.failing) {
                tracing::info!(
                    "changes readable again; resynced from version {}",
                    cursor.last
                );
            }
            cursor.last = version;
            for changed in plugins {
                handle.send(Event::DesiredKnown {
                    name: changed.name,
                    record: changed.record,
                });
            }
        }
        Err(e) if !cursor.failing => {
            tracing::warn!("cannot read changes: {e:#}; serving on with the last known state");
            cursor.failing = true;
        }
        Err(_) => {}
    }
}
