//! The reconcile loop: the one owner of every plugin's state machine.
//!
//! Everything else sends it [`Event`]s: start tasks report spawns and handshakes, instance
//! followers report exits and failed health pings, timers report restarts that are due, the
//! watcher and SIGHUP ask for a rescan, the change feed and the admin API report changes of
//! the desired state, the application asks for shutdown. The loop alone writes the
//! [`PluginSlot`] states others read ([`state`] makes that the only possibility), so
//! transitions never race, and each is logged with its reason.
//!
//! By concern: [`lifecycle`] (start, started, down, retries, reload, removal, shutdown),
//! [`desired`] (reads of the store's desired state), [`discovery`] (the plugins directory),
//! [`bundles`] (bundles from the store), [`readiness`] (readiness and systemd). Processes and
//! the store are reached through the [`seams`], so the state machine runs in tests without
//! either.

mod bundles;
mod canary;
mod desired;
mod discovery;
mod lifecycle;
pub mod readiness;
pub mod seams;
mod settings;
mod standby;
pub mod state;
#[cfg(test)]
mod tests;

pub use seams::{Launcher, Processes, StateStore};
pub use state::{PluginMap, PluginSlot, PluginState, Registry, StandbyView};

use crate::error::Failure;
use crate::feed::Feed;
use crate::manifest::Manifest;
use crate::store::PluginRecord;
use crate::supervise::canary::CanaryPolicy;
use crate::supervise::instance::{Instance, InstanceEvent};
use crate::supervise::policy::RestartState;
use crate::supervise::watcher::Watcher;
use readiness::notify;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
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
        result: Result<Arc<Instance>, Failure>,
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
    /// A plugin's standby may be started again (its retry delay ended).
    StandbyDue {
        /// Plugin name.
        name: String,
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
    /// A plugin's desired state, read with the change that named it (see
    /// `cluster::follow_changes`): applied unless a read of it is out, which is then done
    /// once more.
    DesiredKnown {
        /// Plugin name.
        name: String,
        /// The plugin's record (none when it is not registered).
        record: Option<PluginRecord>,
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
    /// A setting marked `restart` changed: swap in a new instance (blue/green) that starts
    /// with the new settings.
    SettingsRestart {
        /// Plugin name.
        name: String,
    },
    /// A start task's build finished (before its `Started`).
    Built {
        /// Plugin name.
        name: String,
        /// The instance's epoch.
        epoch: u64,
        /// The sources as they were when the build began.
        sources: ProgramStamp,
        /// The program and sources after the build.
        program: ProgramStamp,
        /// How it went.
        report: plugd_api::BuildReport,
    },
    /// A canary's figures on this worker are past the thresholds: roll it back everywhere.
    CanaryFailed {
        /// Plugin name.
        name: String,
        /// The canary's bundle (a newer canary is not judged by an older one's figures).
        sha256: String,
        /// Why, with the figures.
        reason: String,
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
    program: ProgramStamp,
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
    /// Its last start failed for want of settings: a change of them starts it again.
    awaiting_settings: bool,
    /// The generation of its settings the store last told this worker of, if it did.
    settings_generation: Option<i64>,
    /// Its sources when its build last succeeded (none: not built yet by this process).
    built: Option<ProgramStamp>,
    /// The start whose build failed, if the last build failed.
    build_failed: Option<u64>,
    /// Its canary on this worker, if the store names one.
    canary: Option<canary::CanaryRun>,
    /// Its warm standby, when its manifest asks for one.
    standby: standby::StandbyRun,
}

impl Entry {
    fn new(manifest: Manifest, program: ProgramStamp, enabled: bool, feed: &Arc<Feed>) -> Entry {
        let slot = PluginSlot::new(&manifest.name, feed.clone());
        slot.set_schema(&manifest.settings);
        Entry {
            slot,
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
            awaiting_settings: false,
            settings_generation: None,
            built: None,
            build_failed: None,
            canary: None,
            standby: standby::StandbyRun::default(),
        }
    }

    /// Runs `manifest` from now on (its settings schema included).
    fn set_manifest(&mut self, manifest: Arc<Manifest>) {
        self.slot.set_schema(&manifest.settings);
        self.manifest = manifest;
    }
}

/// The loop itself.
pub struct Reconciler {
    entries: BTreeMap<String, Entry>,
    launcher: Arc<dyn Launcher>,
    plugins_dir: PathBuf,
    grace: Duration,
    registry: Arc<Registry>,
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
    store: Arc<dyn StateStore>,
    /// Whether file changes in the plugins directory trigger rescans.
    watch_files: bool,
    /// One permit per build that may run at once.
    builds: Arc<tokio::sync::Semaphore>,
    /// When canaries are rolled back automatically.
    canary_policy: CanaryPolicy,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("plugins", &self.entries.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The modification time and size of each file a manifest runs (its program and the scripts
/// its arguments name) and of its build's sources, so a rebuilt binary, an edited script or a
/// changed source is noticed.
pub type ProgramStamp = Vec<Option<(SystemTime, u64)>>;

fn stamp_of(paths: &[PathBuf]) -> ProgramStamp {
    paths
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

fn program_stamp(m: &Manifest) -> ProgramStamp {
    let mut stamp = stamp_of(&m.watched_files());
    stamp.extend(source_stamp(m));
    stamp
}

/// The stamp of the files under a manifest's `watch` paths (empty without them).
fn source_stamp(m: &Manifest) -> ProgramStamp {
    if m.watch.is_empty() {
        return Vec::new();
    }
    stamp_of(&m.watched_sources())
}

impl Reconciler {
    /// A loop over `plugins_dir` that starts instances through `launcher`, reads the desired
    /// state from `store`, and publishes states into `registry`; `grace` is each stopping
    /// instance's time to finish its requests.
    pub fn new(
        plugins_dir: PathBuf,
        launcher: Arc<dyn Launcher>,
        grace: Duration,
        registry: Arc<Registry>,
        store: Arc<dyn StateStore>,
    ) -> (Reconciler, Handle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = Handle { tx: tx.clone() };
        let r = Reconciler {
            entries: BTreeMap::new(),
            launcher,
            plugins_dir,
            grace,
            registry,
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
            watch_files: true,
            builds: Arc::new(tokio::sync::Semaphore::new(2)),
            canary_policy: CanaryPolicy::default(),
        };
        (r, handle)
    }

    /// Runs at most `max_builds` plugin builds at once and judges canaries by `policy`.
    pub fn with_releases(mut self, max_builds: usize, policy: CanaryPolicy) -> Reconciler {
        self.builds = Arc::new(tokio::sync::Semaphore::new(max_builds.max(1)));
        self.canary_policy = policy;
        self
    }

    /// Discovers and starts every plugin, then handles events until shutdown.
    pub async fn run(mut self) {
        let handle = Handle {
            tx: self.tx.clone(),
        };
        if self.watch_files {
            match Watcher::start(&self.plugins_dir, handle) {
                Ok(w) => self.watcher = Some(w),
                Err(e) => tracing::warn!(
                    "cannot watch {}: {e}; send SIGHUP to pick up changes",
                    self.plugins_dir.display()
                ),
            }
        }
        self.sync_all_bundles().await;
        self.rescan(false).await;
        self.sync_all_canaries().await;
        self.align_standbys();
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
                    Some(event) => {
                        self.handle(event).await;
                        self.align_standbys();
                    }
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
                if requested && self.registry.is_ready() {
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
            Event::DesiredKnown { name, record } => match self.desired_reads.get_mut(&name) {
                // That read may have started before the change: read once more after it.
                Some(again) => *again = true,
                None => self.on_desired_read(&name, Ok(record)).await,
            },
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
            Event::CanaryFailed {
                name,
                sha256,
                reason,
            } => self.on_canary_failed(&name, &sha256, reason),
            Event::Built {
                name,
                epoch,
                sources,
                program,
                report,
            } => self.on_built(&name, epoch, sources, program, report),
            Event::SettingsRestart { name } => {
                if self
                    .entries
                    .get(&name)
                    .is_some_and(|e| e.enabled && !e.removed)
                {
                    tracing::info!(plugin = %name, "a setting marked restart changed; reloading");
                    self.start(&name);
                }
            }
            // The loop aligns every standby after each event.
            Event::StandbyDue { .. } => {}
            Event::Shutdown { .. } => unreachable!("handled by run"),
        }
    }

    fn forget(&mut self, name: &str) {
        if let Some(standby) = self.entries.get_mut(name).and_then(|e| e.standby.take()) {
            lifecycle::stop_later(&self.launcher, standby, self.grace);
        }
        self.entries.remove(name);
        self.publish_map();
    }

    fn publish_map(&self) {
        let map: PluginMap = self
            .entries
            .iter()
            .map(|(name, e)| (name.clone(), e.slot.clone()))
            .collect();
        self.registry.publish(map);
    }
}
