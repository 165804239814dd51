//! The reconcile loop: the one owner of every plugin's state machine.
//!
//! Everything else sends it [`Event`]s: start tasks report spawns and handshakes, instance
//! followers report exits and failed health pings, timers report restarts that are due, the
//! SIGHUP handler asks for a rescan, the server asks for shutdown. The loop alone writes the
//! [`PluginSlot`] states the proxy reads, so transitions never race, and each is logged with its
//! reason. It also tells systemd how things stand (`READY=1`, `STATUS=`, `WATCHDOG=1`,
//! `RELOADING=1`, `STOPPING=1`) when plugd runs under it.

use crate::manifest::{self, Manifest};
use crate::plugin::{
    self, follow_instance, start_instance, Instance, InstanceEvent, PluginSlot, PluginState,
    StartContext, StartError,
};
use crate::policy::{Decision, RestartState};
use crate::proxy::AppState;
use crate::store::{PluginRecord, Store};
use crate::watcher::Watcher;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Something the loop must react to.
#[derive(Debug)]
pub enum Event {
    /// A start task's process runs and plugd now waits for its handshake.
    Spawned {
        /// Plugin name.
        name: String,
        /// The instance's epoch.
        epoch: u64,
    },
    /// A start task finished.
    Started {
        /// Plugin name.
        name: String,
        /// The instance's epoch.
        epoch: u64,
        /// The ready instance, or why it did not start.
        result: Result<Arc<Instance>, StartError>,
    },
    /// A running instance exited or stopped answering.
    Instance {
        /// Plugin name.
        name: String,
        /// The instance's epoch.
        epoch: u64,
        /// What happened.
        event: InstanceEvent,
    },
    /// A backoff delay ended.
    RetryDue {
        /// Plugin name.
        name: String,
        /// Which scheduled retry this is; stale retries are ignored.
        generation: u64,
    },
    /// Read a plugin's desired state again after the store failed; stale ones are ignored.
    DesiredRetry {
        /// Plugin name.
        name: String,
        /// Which scheduled retry this is.
        generation: u64,
    },
    /// A read of a plugin's desired state finished (it runs off the loop).
    DesiredRead {
        /// Plugin name.
        name: String,
        /// The plugin's record (none when it is not registered), or why it could not be read.
        result: Result<Option<PluginRecord>, String>,
    },
    /// The store answers again after a rescan found it unreachable: rescan.
    StoreBack,
    /// Re-read the plugins directory: start new plugins, reload changed ones, stop removed ones.
    Rescan {
        /// Whether an operator asked for it (SIGHUP), which systemd is told about.
        requested: bool,
    },
    /// An admin changed a plugin's desired state in the store: apply it.
    Desired {
        /// Plugin name.
        name: String,
    },
    /// An admin asked for a fresh instance (also the way out of `failed`).
    Restart {
        /// Plugin name.
        name: String,
    },
    /// An admin asked to re-read the plugin's manifest and program and swap it in.
    Reload {
        /// Plugin name.
        name: String,
    },
    /// Stop every plugin by `deadline`, then answer on `done`.
    Shutdown {
        /// When every plugin must be gone.
        deadline: Instant,
        /// Answered when everything is stopped.
        done: oneshot::Sender<()>,
    },
}

/// Lines of a plugin's output logged when it goes down.
const LAST_WORDS: usize = 5;

/// How long to wait before reading a plugin's desired state again after the store failed.
const DESIRED_RETRY: Duration = Duration::from_secs(2);
/// The longest a read of a plugin's desired state may take (a connection may go silent).
const DESIRED_READ: Duration = Duration::from_secs(10);
/// How long to wait before starting a plugin again whose start needed the unreachable store.
const STORE_RETRY: Duration = Duration::from_secs(3);

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The loop's handle: cloneable, cheap, usable from any task.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Event>,
}

impl Handle {
    /// Sends an event; returns false if the loop has ended.
    pub fn send(&self, event: Event) -> bool {
        self.tx.send(event).is_ok()
    }

    /// Whether the loop has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// What the loop knows of one plugin beyond its visible state.
#[derive(Debug)]
struct Entry {
    manifest: Arc<Manifest>,
    program: Option<(SystemTime, u64)>,
    slot: Arc<PluginSlot>,
    current: Option<Arc<Instance>>,
    starting: Option<u64>,
    restart: RestartState,
    /// Why plugd killed the current instance, to report instead of "killed by SIGKILL".
    kill_reason: Option<(u64, String)>,
    retry_generation: u64,
    /// Gone from disk: stopped, then forgotten.
    removed: bool,
    /// Whether an admin wants it running (from the store).
    enabled: bool,
    /// Whether its waiting for the store to start it was logged (once per streak).
    store_wait_logged: bool,
}

impl Entry {
    fn new(manifest: Manifest, program: Option<(SystemTime, u64)>, enabled: bool) -> Entry {
        Entry {
            slot: PluginSlot::new(&manifest.name),
            manifest: Arc::new(manifest),
            program,
            current: None,
            starting: None,
            restart: RestartState::default(),
            kill_reason: None,
            retry_generation: 0,
            removed: false,
            enabled,
            store_wait_logged: false,
        }
    }
}

/// The loop itself.
#[derive(Debug)]
pub struct Reconciler {
    entries: BTreeMap<String, Entry>,
    ctx: StartContext,
    plugins_dir: PathBuf,
    grace: Duration,
    app: Arc<AppState>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    last_status: String,
    /// The plugins' states at the last publish, to tell the heartbeat about changes.
    last_states: String,
    watcher: Option<Watcher>,
    /// Numbers scheduled retries across all plugins, so a timer outliving its entry is stale.
    generations: u64,
    /// Plugins whose desired state could not be read, with the number of the one pending
    /// retry of each (so a failure streak is logged once and never runs two retry timers).
    desired_retry: HashMap<String, u64>,
    /// Plugins whose desired state is being read, and whether another read was asked for
    /// meanwhile: reads of one plugin run one at a time, so they are applied in order.
    desired_reads: HashMap<String, bool>,
    /// A rescan found the store unreachable and a probe waits for it to answer again.
    rescan_waiting: bool,
    store: Store,
}

/// Identifies the program a manifest runs, so a rebuilt binary is noticed.
fn program_stamp(m: &Manifest) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(m.program()).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    // Outside systemd there is no NOTIFY_SOCKET and this does nothing.
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

impl Reconciler {
    /// A loop over `plugins_dir`, publishing states into `app`.
    pub fn new(
        plugins_dir: PathBuf,
        ctx: StartContext,
        grace: Duration,
        app: Arc<AppState>,
        store: Store,
    ) -> (Reconciler, Handle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = Handle { tx: tx.clone() };
        let r = Reconciler {
            entries: BTreeMap::new(),
            ctx,
            plugins_dir,
            grace,
            app,
            tx,
            rx,
            last_status: String::new(),
            last_states: String::new(),
            watcher: None,
            generations: 0,
            desired_retry: HashMap::new(),
            desired_reads: HashMap::new(),
            rescan_waiting: false,
            store,
        };
        (r, handle)
    }

    /// Discovers and starts every plugin, then handles events until shutdown.
    pub async fn run(mut self) {
        let handle = Handle {
            tx: self.tx.clone(),
        };
        match Watcher::start(&self.plugins_dir, handle) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => tracing::warn!(
                "cannot watch {}: {e}; send SIGHUP to pick up changes",
                self.plugins_dir.display()
            ),
        }
        self.sync_all_bundles().await;
        self.rescan(false).await;
        let watchdog = sd_notify::watchdog_enabled();
        let mut tick = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |d| d / 2));
        loop {
            tokio::select! {
                event = self.rx.recv() => match event {
                    Some(Event::Shutdown { deadline, done }) => {
                        self.shutdown(deadline).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(event) => self.handle(event).await,
                    None => return,
                },
                _ = tick.tick() => {
                    if watchdog.is_some() {
                        notify(&[sd_notify::NotifyState::Watchdog]);
                    }
                }
            }
            self.publish();
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Spawned { name, epoch } => {
                if let Some(e) = self.entries.get(&name) {
                    if e.starting == Some(epoch) && e.current.is_none() {
                        e.slot.set(PluginState::Handshaking);
                    }
                }
            }
            Event::Started {
                name,
                epoch,
                result,
            } => self.on_started(&name, epoch, result),
            Event::Instance { name, epoch, event } => self.on_instance(&name, epoch, event),
            Event::RetryDue { name, generation } => {
                let due = self.entries.get(&name).is_some_and(|e| {
                    e.retry_generation == generation
                        && e.enabled
                        && !e.removed
                        && e.current.is_none()
                        && e.starting.is_none()
                });
                if due {
                    self.start(&name);
                }
            }
            Event::Rescan { requested } => {
                if requested {
                    tracing::info!("rescanning the plugins directory");
                    let now = sd_notify::NotifyState::monotonic_usec_now();
                    match now {
                        Ok(now) => notify(&[sd_notify::NotifyState::Reloading, now]),
                        Err(_) => notify(&[sd_notify::NotifyState::Reloading]),
                    }
                }
                self.rescan(requested).await;
                if requested && self.app.ready.load(Ordering::SeqCst) {
                    notify(&[sd_notify::NotifyState::Ready]);
                }
            }
            Event::Desired { name } => self.read_desired(&name),
            Event::DesiredRetry { name, generation } => {
                if self.desired_retry.get(&name) == Some(&generation) {
                    self.read_desired(&name);
                }
            }
            Event::DesiredRead { name, result } => self.on_desired_read(&name, result).await,
            Event::StoreBack => {
                self.rescan_waiting = false;
                tracing::info!("the store answers again; rescanning the plugins directory");
                self.rescan(false).await;
            }
            Event::Restart { name } => {
                if let Some(entry) = self.entries.get_mut(&name) {
                    entry.restart.reset();
                    if entry.enabled {
                        tracing::info!(plugin = %name, "restart requested");
                        self.start(&name);
                    }
                }
            }
            Event::Reload { name } => self.reload(&name),
            Event::Shutdown { .. } => unreachable!("handled by run"),
        }
    }

    /// Starts a new instance of `name` (next to the current one, if any: blue/green).
    fn start(&mut self, name: &str) {
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        let epoch = plugin::next_epoch();
        entry.starting = Some(epoch);
        // Any retry scheduled before this start is stale now.
        self.generations += 1;
        entry.retry_generation = self.generations;
        if entry.current.is_none() {
            entry.slot.set(PluginState::Starting);
        }
        let manifest = entry.manifest.clone();
        let logs = entry.slot.logs().clone();
        let ctx = self.ctx.clone();
        let store = self.store.clone();
        let tx = self.tx.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let spawned = {
                let (tx, name) = (tx.clone(), name.clone());
                move |_pid| {
                    let _ = tx.send(Event::Spawned { name, epoch });
                }
            };
            // The plugin's own migrations run first; a refused or failing one means this
            // version cannot run, and retrying will not change that.
            let migrated = store.migrate_plugin(&manifest.name, &manifest.dir).await;
            let result = match migrated {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(plugin = %name, "applied {n} migrations");
                    }
                    start_instance(manifest, epoch, &ctx, logs, spawned).await
                }
                // The store being away is worth a retry with backoff; a wrong migration is not.
                Err(e) => Err(StartError {
                    reason: format!("plugin migration: {e}"),
                    fatal: !e.transient,
                    store_away: e.transient,
                }),
            };
            let _ = tx.send(Event::Started {
                name,
                epoch,
                result,
            });
        });
    }

    fn on_started(&mut self, name: &str, epoch: u64, result: Result<Arc<Instance>, StartError>) {
        let grace = self.grace;
        let Some(entry) = self
            .entries
            .get_mut(name)
            .filter(|e| e.starting == Some(epoch))
        else {
            // Superseded or removed meanwhile: nobody wants this instance.
            if let Ok(instance) = result {
                tokio::spawn(async move { plugin::stop_instance(&instance, grace).await });
            }
            return;
        };
        entry.starting = None;
        if !result.as_ref().is_err_and(|e| e.store_away) {
            entry.store_wait_logged = false;
        }
        match result {
            Ok(instance) => {
                if entry.removed || !entry.enabled {
                    tokio::spawn(async move { plugin::stop_instance(&instance, grace).await });
                    return;
                }
                let old = entry.current.replace(instance.clone());
                entry.slot.set(PluginState::Ready(instance.clone()));
                self.lifecycle_hook(
                    "plugd.plugin.loaded",
                    serde_json::json!({ "plugin": name, "version": instance.version, "pid": instance.pid }),
                );
                if let Some(old) = &old {
                    self.lifecycle_hook(
                        "plugd.plugin.config_changed",
                        serde_json::json!({ "plugin": name, "from": old.version, "to": instance.version }),
                    );
                }
                let tx = self.tx.clone();
                let follow_name = name.to_owned();
                let interval = self.ctx.monitor_interval;
                tokio::spawn(follow_instance(instance.clone(), interval, move |event| {
                    let _ = tx.send(Event::Instance {
                        name: follow_name.clone(),
                        epoch,
                        event,
                    });
                }));
                if let Some(old) = old {
                    tracing::info!(
                        plugin = name, from = %old.version, to = %instance.version,
                        "reloaded: the new instance serves; draining the old one"
                    );
                    tokio::spawn(async move {
                        let how = plugin::stop_instance(&old, grace).await;
                        tracing::info!(plugin = %old.manifest.name, pid = old.pid, "old instance {how}");
                    });
                }
            }
            Err(e) if entry.current.is_some() => {
                tracing::error!(
                    plugin = name, reason = %e.reason,
                    "reload failed; the running instance keeps serving"
                );
                // Restarts of the running instance use the manifest it runs; the next rescan
                // (a file change or SIGHUP) tries the new one again.
                if let Some(current) = &entry.current {
                    entry.manifest = current.manifest.clone();
                }
                entry.program = None;
            }
            Err(e) if e.store_away => {
                // Not the plugin's fault: wait for the store without using up its restarts.
                entry.slot.set(PluginState::Backoff {
                    reason: e.reason.clone(),
                    retry_at_unix_ms: unix_ms(SystemTime::now() + STORE_RETRY),
                });
                if std::mem::replace(&mut entry.store_wait_logged, true) {
                    tracing::debug!(plugin = %name, reason = %e.reason, "cannot start it yet; retrying in {STORE_RETRY:?}");
                } else {
                    tracing::warn!(
                        plugin = %name, reason = %e.reason,
                        "cannot start it yet; retrying every {STORE_RETRY:?}"
                    );
                }
                self.schedule_retry(name, STORE_RETRY);
            }
            Err(e) => self.on_down(name, e.reason, e.fatal, None),
        }
    }

    /// Starts `name` again after `delay`, unless something else started or stopped it first.
    fn schedule_retry(&mut self, name: &str, delay: Duration) {
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        self.generations += 1;
        entry.retry_generation = self.generations;
        let (tx, generation, name) = (self.tx.clone(), self.generations, name.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Event::RetryDue { name, generation });
        });
    }

    fn on_instance(&mut self, name: &str, epoch: u64, event: InstanceEvent) {
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        let is_current = entry.current.as_ref().is_some_and(|i| i.epoch == epoch);
        if !is_current {
            return; // an old instance drained after a reload, or one being stopped
        }
        match event {
            InstanceEvent::Unresponsive(_) | InstanceEvent::LimitBreach(_) => {
                let reason = match event {
                    InstanceEvent::Unresponsive(detail) => format!("unresponsive: {detail}"),
                    InstanceEvent::LimitBreach(why) => why,
                    InstanceEvent::Exited(_) => unreachable!(),
                };
                tracing::warn!(plugin = name, %reason, "killing the plugin");
                entry.kill_reason = Some((epoch, reason));
                if let Some(instance) = &entry.current {
                    plugin::kill_instance(instance);
                }
            }
            InstanceEvent::Exited(reason) => {
                let instance = entry.current.take().expect("checked above");
                let payload =
                    serde_json::json!({ "plugin": name, "pid": instance.pid, "reason": reason });
                self.lifecycle_hook("plugd.plugin.unloaded", payload);
                let Some(entry) = self.entries.get_mut(name) else {
                    return;
                };
                let reason = match entry.kill_reason.take() {
                    Some((e, why)) if e == epoch => why,
                    _ => reason,
                };
                if entry.removed {
                    entry
                        .slot
                        .set(PluginState::Stopped(format!("removed ({reason})")));
                    self.forget(name);
                    return;
                }
                if !entry.enabled {
                    entry.slot.set(PluginState::Disabled);
                    return;
                }
                let up_for = instance.ready_at.elapsed();
                self.on_down(name, reason, false, Some(up_for));
            }
        }
    }

    /// Applies the restart policy to a plugin that is down for `reason`.
    fn on_down(&mut self, name: &str, reason: String, fatal: bool, up_for: Option<Duration>) {
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        let last_words: Vec<String> = entry
            .slot
            .logs()
            .last(LAST_WORDS)
            .iter()
            .map(|l| format!("[{} {}] {}", l.pid, l.stream, l.display()))
            .collect();
        if !last_words.is_empty() {
            tracing::warn!(
                plugin = name,
                "last output before it went down:\n  {}",
                last_words.join("\n  ")
            );
        }
        if fatal {
            entry.slot.set(PluginState::Failed(reason));
            return;
        }
        let policy = entry.manifest.restart.clone();
        match entry
            .restart
            .on_exit(&policy, Instant::now(), up_for, rand::random::<f64>())
        {
            Decision::RestartAfter(delay) => {
                // The restart is counted after the state left `ready`: nobody reads the new
                // count next to the old state. Both paths make earlier retries stale (`start`,
                // `schedule_retry`).
                if delay.is_zero() {
                    tracing::warn!(plugin = name, %reason, "plugin down; restarting now");
                    self.start(name);
                    if let Some(entry) = self.entries.get(name) {
                        entry.slot.count_restart();
                    }
                    return;
                }
                entry.slot.set(PluginState::Backoff {
                    reason,
                    retry_at_unix_ms: unix_ms(SystemTime::now() + delay),
                });
                entry.slot.count_restart();
                self.schedule_retry(name, delay);
            }
            Decision::GiveUp(why) => {
                entry
                    .slot
                    .set(PluginState::Failed(format!("{why}; last: {reason}")));
            }
        }
    }

    /// Brings the set of plugins in line with the plugins directory.
    async fn rescan(&mut self, requested: bool) {
        let found = match manifest::discover(&self.plugins_dir) {
            Ok(found) => found,
            Err(e) => {
                tracing::error!("cannot scan for plugins: {e}");
                return;
            }
        };
        // A plugin whose manifest broke keeps running as it is.
        let broken_dirs: Vec<PathBuf> = found
            .errors
            .iter()
            .map(|e| e.path.parent().map(Path::to_path_buf).unwrap_or_default())
            .collect();
        for e in &found.errors {
            tracing::error!("plugin skipped: {e}");
        }
        let mut seen = Vec::new();
        // Once the store proved unreachable in this scan, the rest is not asked: each try
        // would hold the loop for the pool's whole wait. A probe rescans when it is back.
        let mut store_away = false;
        for m in found.manifests {
            let name = m.name.clone();
            seen.push(name.clone());
            let program = program_stamp(&m);
            // The store says whether an admin wants it; if the store is away, keep what we had.
            let registered = if store_away {
                Err(anyhow::anyhow!("the store is unreachable"))
            } else {
                self.store.register(&m).await
            };
            let (enabled, record) = match registered {
                Ok(record) => (record.enabled, Some(record)),
                Err(e) => {
                    if !store_away {
                        tracing::error!(plugin = %name, "{e:#}; keeping the plugin as it is");
                    }
                    store_away = store_away || crate::store::is_unreachable(&e);
                    (self.entries.get(&name).is_none_or(|e| e.enabled), None)
                }
            };
            if let Some(entry) = self.entries.get_mut(&name) {
                if entry.enabled != enabled {
                    entry.enabled = enabled;
                    self.apply_desired(&name, record).await;
                    if !enabled {
                        continue;
                    }
                }
            }
            match self.entries.get_mut(&name) {
                None if !enabled => {
                    let entry = Entry::new(m, program, false);
                    entry.slot.set(PluginState::Disabled);
                    self.entries.insert(name.clone(), entry);
                }
                Some(entry) if !entry.enabled => {
                    entry.manifest = Arc::new(m);
                    entry.program = program;
                }
                None => {
                    self.entries
                        .insert(name.clone(), Entry::new(m, program, true));
                    self.start(&name);
                }
                Some(entry) => {
                    let changed = *entry.manifest != m || entry.program != program;
                    let was_removed = std::mem::replace(&mut entry.removed, false);
                    if changed || was_removed {
                        tracing::info!(plugin = %name, "manifest or program changed; reloading");
                        entry.manifest = Arc::new(m);
                        entry.program = program;
                        if entry.current.is_none() {
                            entry.restart.reset();
                        }
                        self.start(&name);
                    } else if requested && matches!(*entry.slot.state(), PluginState::Failed(_)) {
                        // A SIGHUP is an operator asking to try failed plugins again.
                        entry.restart.reset();
                        self.start(&name);
                    }
                }
            }
        }
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(name, e)| {
                !seen.contains(name) && !e.removed && !broken_dirs.contains(&e.manifest.dir)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.remove(&name);
        }
        if let Some(watcher) = &mut self.watcher {
            watcher.watch_programs(self.entries.values().map(|e| e.manifest.program()));
        }
        if store_away {
            self.rescan_when_store_back();
        } else {
            match self.store.mark_missing(&seen).await {
                Ok(missing) => {
                    for name in missing {
                        tracing::warn!(plugin = %name, "registered plugin is missing from disk");
                    }
                }
                Err(e) => tracing::error!("{e:#}"),
            }
        }
        self.publish_map();
    }

    /// Fires one of the supervisor's own hooks (`plugd.plugin.loaded`, `…unloaded`,
    /// `…config_changed`) at the plugins that handle it, without waiting for the answers.
    fn lifecycle_hook(&self, hook: &'static str, payload: serde_json::Value) {
        let app = self.app.clone();
        tokio::spawn(async move {
            let payload = rmpv::ext::to_value(&payload).unwrap_or(rmpv::Value::Nil);
            let plugins = app.plugins.load_full();
            if let Err(e) = crate::hooks::fire(&plugins, hook, payload, 0, app.hook_timeout).await {
                tracing::warn!(hook, "lifecycle hook: {e}");
            }
        });
    }

    /// Makes the local copy of `name`'s bundle match the store: unpacks a bundle installed
    /// through another worker (after checking its sha256), removes one uninstalled elsewhere.
    /// Returns whether the plugins directory changed.
    async fn sync_bundle(&self, name: &str, record: Option<&crate::store::PluginRecord>) -> bool {
        let dir = self.plugins_dir.join(name);
        let local = crate::bundle::installed_sha256(&dir);
        let wanted = record.and_then(|r| r.bundle_sha256.clone());
        match (wanted, local) {
            (Some(want), have) if have.as_deref() != Some(want.as_str()) => {
                let bytes = match self.store.bundle(&want).await {
                    Ok(Some(bytes)) => bytes,
                    Ok(None) => {
                        tracing::error!(plugin = name, "bundle {want} is not in the store");
                        return false;
                    }
                    Err(e) => {
                        tracing::error!(plugin = name, "cannot fetch bundle {want}: {e:#}");
                        return false;
                    }
                };
                let got = crate::bundle::sha256(&bytes);
                if got != want {
                    tracing::error!(
                        plugin = name,
                        "bundle checksum mismatch: expected {want}, got {got}; not running it"
                    );
                    return false;
                }
                let plugins_dir = self.plugins_dir.clone();
                let placed = tokio::task::spawn_blocking(move || {
                    crate::bundle::place(&bytes, &want, &plugins_dir)
                })
                .await;
                match placed {
                    Ok(Ok(_)) => {
                        tracing::info!(plugin = name, sha256 = %got, "installed the bundle from the store");
                        true
                    }
                    Ok(Err(e)) => {
                        tracing::error!(
                            plugin = name,
                            "cannot unpack the bundle from the store: {e}"
                        );
                        false
                    }
                    Err(e) => {
                        tracing::error!(
                            plugin = name,
                            "cannot unpack the bundle from the store: {e}"
                        );
                        false
                    }
                }
            }
            (None, Some(_)) if record.is_none() => {
                let trash = self
                    .plugins_dir
                    .join(format!(".trash-{name}-{:016x}", rand::random::<u64>()));
                if std::fs::rename(&dir, &trash).is_ok() {
                    let _ =
                        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(trash)).await;
                    tracing::info!(plugin = name, "uninstalled through another worker; removed");
                    return true;
                }
                false
            }
            _ => false,
        }
    }

    /// Unpacks every bundle the store knows that this worker lacks (a worker joining later).
    async fn sync_all_bundles(&self) {
        if let Ok(records) = self.store.plugins().await {
            for record in records.iter().filter(|r| r.bundle_sha256.is_some()) {
                self.sync_bundle(&record.name, Some(record)).await;
            }
        }
    }

    /// Brings one plugin in line with the store: its bundle, then its enabled flag.
    /// Reads a plugin's desired state off the loop; the answer comes back as `DesiredRead`.
    fn read_desired(&mut self, name: &str) {
        if let Some(again) = self.desired_reads.get_mut(name) {
            *again = true;
            return;
        }
        self.desired_reads.insert(name.to_owned(), false);
        let (store, tx, name) = (self.store.clone(), self.tx.clone(), name.to_owned());
        tokio::spawn(async move {
            let result = crate::store::bounded(DESIRED_READ, store.plugin(&name))
                .await
                .map_err(|e| format!("{e:#}"));
            let _ = tx.send(Event::DesiredRead { name, result });
        });
    }

    async fn on_desired_read(&mut self, name: &str, result: Result<Option<PluginRecord>, String>) {
        let again = self.desired_reads.remove(name).unwrap_or(false);
        match result {
            Ok(record) => {
                if self.desired_retry.remove(name).is_some() {
                    tracing::info!(plugin = name, "desired state read again");
                }
                if again {
                    self.read_desired(name);
                }
                self.apply_desired(name, record).await;
            }
            Err(e) => {
                // The store is away: keep running what runs, and read again later, so a
                // change that was announced is not lost with the failed read.
                if !self.desired_retry.contains_key(name) {
                    tracing::warn!(
                        plugin = name,
                        "cannot read the desired state: {e}; keeping the current state, retrying every {DESIRED_RETRY:?}"
                    );
                }
                self.generations += 1;
                let generation = self.generations;
                self.desired_retry.insert(name.to_owned(), generation);
                let (tx, name) = (self.tx.clone(), name.to_owned());
                tokio::spawn(async move {
                    tokio::time::sleep(DESIRED_RETRY).await;
                    let _ = tx.send(Event::DesiredRetry { name, generation });
                });
            }
        }
    }

    /// Probes the store off the loop until it answers, then asks for a rescan (`StoreBack`);
    /// one probe at a time.
    fn rescan_when_store_back(&mut self) {
        if std::mem::replace(&mut self.rescan_waiting, true) {
            return;
        }
        let (store, tx) = (self.store.clone(), self.tx.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(STORE_RETRY).await;
                if store.ping().await.is_ok() {
                    let _ = tx.send(Event::StoreBack);
                    return;
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
    }

    /// Brings a plugin to the desired state in `record` (none: not registered, or gone).
    async fn apply_desired(&mut self, name: &str, record: Option<PluginRecord>) {
        if self.sync_bundle(name, record.as_ref()).await {
            Box::pin(self.rescan(false)).await;
        }
        let Some(record) = record else {
            return;
        };
        let enabled = record.enabled;
        let grace = self.grace;
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        entry.enabled = enabled;
        if enabled {
            if matches!(*entry.slot.state(), PluginState::Disabled) {
                tracing::info!(plugin = name, "enabled; starting");
                entry.restart.reset();
                self.start(name);
            }
            return;
        }
        entry.starting = None;
        self.generations += 1;
        entry.retry_generation = self.generations;
        match entry.current.clone() {
            Some(instance) => {
                tracing::info!(plugin = name, "disabled; stopping");
                entry.slot.set(PluginState::Draining);
                tokio::spawn(async move { plugin::stop_instance(&instance, grace).await });
            }
            None => entry.slot.set(PluginState::Disabled),
        }
    }

    /// Re-reads one plugin's manifest and program from disk and swaps a new instance in.
    fn reload(&mut self, name: &str) {
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        let path = entry.manifest.dir.join(manifest::MANIFEST_FILE);
        match manifest::load(&path) {
            Ok(m) if m.name == name => {
                entry.program = program_stamp(&m);
                entry.manifest = Arc::new(m);
                if entry.enabled {
                    tracing::info!(plugin = name, "reload requested");
                    self.start(name);
                }
            }
            Ok(m) => tracing::error!(
                plugin = name,
                "reload refused: the manifest now names {:?}",
                m.name
            ),
            Err(e) => tracing::error!(plugin = name, "reload refused: {e}"),
        }
    }

    /// Stops a plugin that left the plugins directory; it is forgotten once stopped.
    fn remove(&mut self, name: &str) {
        let grace = self.grace;
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        tracing::info!(plugin = name, "plugin removed from disk; stopping it");
        entry.removed = true;
        entry.starting = None;
        match entry.current.clone() {
            Some(instance) => {
                entry.slot.set(PluginState::Draining);
                tokio::spawn(async move { plugin::stop_instance(&instance, grace).await });
            }
            None => {
                entry.slot.set(PluginState::Stopped("removed".into()));
                self.forget(name);
            }
        }
    }

    fn forget(&mut self, name: &str) {
        self.entries.remove(name);
        self.publish_map();
    }

    fn publish_map(&self) {
        let map: HashMap<String, Arc<PluginSlot>> = self
            .entries
            .iter()
            .map(|(name, e)| (name.clone(), e.slot.clone()))
            .collect();
        self.app.plugins.store(Arc::new(map));
    }

    /// Announces readiness once every plugin has settled, and keeps systemd's STATUS current.
    fn publish(&mut self) {
        let (mut ready, mut failed, mut other, mut unsettled) = (0, 0, 0, 0);
        for e in self.entries.values() {
            match *e.slot.state() {
                PluginState::Ready(_) => ready += 1,
                PluginState::Failed(_) => failed += 1,
                // Waiting to retry after a failed attempt counts as settled for start-up.
                PluginState::Backoff { .. } | PluginState::Stopped(_) | PluginState::Disabled => {
                    other += 1
                }
                _ => {
                    other += 1;
                    unsettled += 1;
                }
            }
        }
        if !self.app.ready.load(Ordering::SeqCst) && unsettled == 0 {
            self.app.ready.store(true, Ordering::SeqCst);
            tracing::info!(ready, failed, "plugins started");
            crate::server::announce(&format!(
                "plugd ready: {ready} plugins ready, {failed} failed"
            ));
            notify(&[sd_notify::NotifyState::Ready]);
        }
        let signature: Vec<(&str, &'static str, u64)> = self
            .entries
            .iter()
            .map(|(name, e)| {
                let state = e.slot.state();
                let epoch = match &*state {
                    PluginState::Ready(i) => i.epoch,
                    _ => 0,
                };
                (name.as_str(), state.name(), epoch)
            })
            .collect();
        let signature = format!("{signature:?}");
        if signature != self.last_states {
            self.last_states = signature;
            self.app.state_changed.notify_one();
        }
        let status = format!("{ready} plugins ready, {failed} failed, {other} other");
        if status != self.last_status {
            notify(&[sd_notify::NotifyState::Status(&status)]);
            self.last_status = status;
        }
    }

    /// Stops every instance by `deadline` (each finishes its requests in the time left),
    /// including instances whose start completes meanwhile. Whatever still starts at the
    /// deadline dies with plugd (`PR_SET_PDEATHSIG`).
    async fn shutdown(&mut self, deadline: Instant) {
        notify(&[sd_notify::NotifyState::Stopping]);
        let grace = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1))
        };
        let mut stopping = tokio::task::JoinSet::new();
        for e in self.entries.values_mut() {
            if let Some(instance) = e.current.take() {
                let slot = e.slot.clone();
                slot.set(PluginState::Draining);
                let grace = grace();
                stopping.spawn(async move {
                    let how = plugin::stop_instance(&instance, grace).await;
                    slot.set(PluginState::Stopped(format!(
                        "supervisor shutting down ({how})"
                    )));
                });
            }
        }
        while self.entries.values().any(|e| e.starting.is_some()) && Instant::now() < deadline {
            let event = tokio::time::timeout_at(deadline.into(), self.rx.recv()).await;
            let Ok(Some(event)) = event else {
                break;
            };
            if let Event::Started {
                name,
                epoch,
                result,
            } = event
            {
                if let Some(e) = self
                    .entries
                    .get_mut(&name)
                    .filter(|e| e.starting == Some(epoch))
                {
                    e.starting = None;
                }
                if let Ok(instance) = result {
                    let grace = grace();
                    stopping.spawn(async move {
                        plugin::stop_instance(&instance, grace).await;
                    });
                }
            }
        }
        while stopping.join_next().await.is_some() {}
    }
}
