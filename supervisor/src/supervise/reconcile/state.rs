//! What the reconcile loop publishes and everyone else reads: each plugin's [`PluginSlot`]
//! (its visible [`PluginState`] behind an `ArcSwap`, restarts, output, declared hooks and
//! permissions) and the [`Registry`] of all slots with plugd's readiness.
//!
//! The writers (`PluginSlot::set`, `count_restart`, `Registry::publish`, `set_ready`) are
//! visible to the reconcile module alone: no other code can change a plugin's state. Readers
//! take a snapshot without a lock on every request.

use crate::feed::Feed;
use crate::manifest::SettingsSchema;
use crate::os::output::LogRing;
use crate::supervise::canary::Canary;
use crate::supervise::instance::Instance;
use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use plugd_api::StreamEvent;
use plugd_protocol::message::handshake::{HookDecl, PermissionDecl};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// What a plugin is doing now, as admins and the proxy see it.
#[derive(Debug)]
pub enum PluginState {
    /// An admin disabled it: not running, on purpose.
    Disabled,
    /// Its process is being started.
    Starting,
    /// Its process runs; plugd waits for the handshake.
    Handshaking,
    /// Handshake done: serving requests.
    Ready(Arc<Instance>),
    /// Asked to shut down: finishing requests in flight, taking no new ones.
    Draining,
    /// Stopped on purpose.
    Stopped(String),
    /// Exited unexpectedly; waiting to be restarted.
    Backoff {
        /// Why it exited.
        reason: String,
        /// When the restart is due, in milliseconds since the Unix epoch.
        retry_at_unix_ms: u64,
    },
    /// Gave up (cannot run, or crash loop) until an admin acts.
    Failed(String),
}

impl PluginState {
    /// The state's name as admins see it.
    pub fn name(&self) -> &'static str {
        self.api().name()
    }

    /// The state as the admin API names it.
    pub fn api(&self) -> plugd_api::State {
        use plugd_api::State;
        match self {
            PluginState::Disabled => State::Disabled,
            PluginState::Starting => State::Starting,
            PluginState::Handshaking => State::Handshaking,
            PluginState::Ready(_) => State::Ready,
            PluginState::Draining => State::Draining,
            PluginState::Stopped(_) => State::Stopped,
            PluginState::Backoff { .. } => State::Backoff,
            PluginState::Failed(_) => State::Failed,
        }
    }

    /// Why the plugin is not running, when it is not.
    pub fn reason(&self) -> Option<&str> {
        match self {
            PluginState::Stopped(r) | PluginState::Failed(r) => Some(r),
            PluginState::Backoff { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// A plugin's warm standby as admins see it.
#[derive(Debug)]
pub enum StandbyView {
    /// Being started.
    Starting,
    /// Handshaked, waiting to take over.
    Ready(Arc<Instance>),
}

/// One plugin's visible state and counters. Written only by the reconcile loop.
#[derive(Debug)]
pub struct PluginSlot {
    name: String,
    state: ArcSwap<PluginState>,
    restarts: AtomicU32,
    logs: Arc<LogRing>,
    /// The hooks its last ready instance declared: a plugin that is down still counts as a
    /// handler, so its absence is reported (or, for fail-closed vetoes, rejects).
    hooks: ArcSwap<Vec<HookDecl>>,
    /// The permissions its last ready instance defined.
    permissions: ArcSwap<Vec<PermissionDecl>>,
    /// Where its state changes and output lines are published.
    feed: Arc<Feed>,
    /// The settings its manifest declares.
    schema: ArcSwap<SettingsSchema>,
    /// Its canary on this worker, while one serves.
    canary: ArcSwapOption<Canary>,
    /// Its warm standby, when it has one.
    standby: ArcSwapOption<StandbyView>,
    /// How its last build went, if it has a build command.
    build: ArcSwapOption<plugd_api::BuildReport>,
}

impl PluginSlot {
    /// A slot in state `starting`, publishing to `feed`.
    pub(in crate::supervise::reconcile) fn new(name: &str, feed: Arc<Feed>) -> Arc<PluginSlot> {
        Arc::new(PluginSlot {
            name: name.to_owned(),
            state: ArcSwap::from_pointee(PluginState::Starting),
            restarts: AtomicU32::new(0),
            logs: Arc::new(LogRing::new(name, feed.clone())),
            feed,
            hooks: ArcSwap::from_pointee(Vec::new()),
            permissions: ArcSwap::from_pointee(Vec::new()),
            schema: ArcSwap::from_pointee(SettingsSchema::new()),
            canary: ArcSwapOption::empty(),
            standby: ArcSwapOption::empty(),
            build: ArcSwapOption::empty(),
        })
    }

    /// Its canary on this worker, while one serves.
    pub fn canary(&self) -> Option<Arc<Canary>> {
        self.canary.load_full()
    }

    /// Starts or ends routing a share of its requests to a canary.
    pub(in crate::supervise::reconcile) fn set_canary(&self, canary: Option<Arc<Canary>>) {
        self.canary.store(canary);
    }

    /// Its warm standby, when it has one.
    pub fn standby(&self) -> Option<Arc<StandbyView>> {
        self.standby.load_full()
    }

    /// Publishes its standby (unchanged when it is the same).
    pub(in crate::supervise::reconcile) fn set_standby(&self, standby: Option<StandbyView>) {
        let same = match (self.standby.load().as_deref(), &standby) {
            (None, None) | (Some(StandbyView::Starting), Some(StandbyView::Starting)) => true,
            (Some(StandbyView::Ready(a)), Some(StandbyView::Ready(b))) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if !same {
            self.standby.store(standby.map(Arc::new));
        }
    }

    /// How its last build went.
    pub fn build(&self) -> Option<Arc<plugd_api::BuildReport>> {
        self.build.load_full()
    }

    /// Records how a build went.
    pub(in crate::supervise::reconcile) fn set_build(&self, report: plugd_api::BuildReport) {
        self.build.store(Some(Arc::new(report)));
    }

    /// The settings its manifest declares.
    pub fn settings_schema(&self) -> Arc<SettingsSchema> {
        self.schema.load_full()
    }

    /// Records the settings its (new) manifest declares.
    pub(in crate::supervise::reconcile) fn set_schema(&self, schema: &SettingsSchema) {
        if *self.schema.load_full() != *schema {
            self.schema.store(Arc::new(schema.clone()));
        }
    }

    /// The permissions this plugin defines, as its last ready instance declared them.
    pub fn permissions(&self) -> Arc<Vec<PermissionDecl>> {
        self.permissions.load_full()
    }

    /// The hooks this plugin handles, as its last ready instance declared them.
    pub fn hooks(&self) -> Arc<Vec<HookDecl>> {
        self.hooks.load_full()
    }

    /// Runs `f` over the plugin's hook declarations without taking a reference to them (the
    /// hook dispatcher looks at every plugin on every call).
    pub fn with_hooks<R>(&self, f: impl FnOnce(&[HookDecl]) -> R) -> R {
        f(&self.hooks.load())
    }

    /// The plugin's recent output, across all its instances.
    pub fn logs(&self) -> &Arc<LogRing> {
        &self.logs
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current state.
    pub fn state(&self) -> Arc<PluginState> {
        self.state.load_full()
    }

    /// Replaces the state and logs the transition with its reason.
    pub(in crate::supervise::reconcile) fn set(&self, state: PluginState) {
        let from = self.state.load().name();
        let to = state.name();
        if let PluginState::Ready(instance) = &state {
            self.hooks.store(Arc::new(instance.hooks.clone()));
            self.permissions
                .store(Arc::new(instance.permissions.clone()));
        }
        match &state {
            PluginState::Ready(i) => tracing::info!(
                plugin = %self.name, from, to, pid = i.pid, version = %i.version,
                routes = i.routes.len(), "plugin ready"
            ),
            PluginState::Failed(reason) => {
                tracing::error!(plugin = %self.name, from, to, %reason, "plugin failed")
            }
            other => match other.reason() {
                Some(reason) => {
                    tracing::warn!(plugin = %self.name, from, to, %reason, "plugin {to}")
                }
                None => tracing::info!(plugin = %self.name, from, to, "plugin {to}"),
            },
        }
        let published = self
            .feed
            .watching()
            .then(|| (state.api(), state.reason().map(str::to_owned)));
        self.state.store(Arc::new(state));
        // After the store, so a client that reads back on the event sees the new state.
        if let Some((state, reason)) = published {
            self.feed.publish(|| StreamEvent::State {
                worker: self.feed.worker().to_owned(),
                plugin: self.name.clone(),
                state,
                reason,
                at_ms: plugd_protocol::time::now_unix_ms(),
            });
        }
    }

    /// Restarts since plugd started (or since an admin reset it).
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub(in crate::supervise::reconcile) fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every known plugin's slot, by name, as the reconcile loop last published them.
/// (Names come from the plugins directory, not clients: a fast hash without flood resistance.)
pub type PluginMap = foldhash::HashMap<String, Arc<PluginSlot>>;

/// The plugins plugd knows and whether start-up is over; written by the reconcile loop only.
#[derive(Debug)]
pub struct Registry {
    plugins: ArcSwap<PluginMap>,
    ready: AtomicBool,
    changed: Notify,
    hook_timeout: Duration,
    feed: Arc<Feed>,
}

impl Registry {
    /// An empty registry, not ready; hook handlers get `hook_timeout` each; plugins' state
    /// changes and output go to `feed`.
    pub fn new(hook_timeout: Duration, feed: Arc<Feed>) -> Arc<Registry> {
        Arc::new(Registry {
            plugins: ArcSwap::from_pointee(PluginMap::default()),
            ready: AtomicBool::new(false),
            changed: Notify::new(),
            hook_timeout,
            feed,
        })
    }

    /// The current plugins, cheaply (for one request).
    pub fn plugins(&self) -> Guard<Arc<PluginMap>> {
        self.plugins.load()
    }

    /// The current plugins, to keep beyond one request.
    pub fn snapshot(&self) -> Arc<PluginMap> {
        self.plugins.load_full()
    }

    /// One plugin's slot.
    pub fn get(&self, name: &str) -> Option<Arc<PluginSlot>> {
        self.plugins.load().get(name).cloned()
    }

    /// Whether every plugin has been started (or has failed to) since plugd started.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The live feed of this worker.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// The deadline of one hook handler call.
    pub fn hook_timeout(&self) -> Duration {
        self.hook_timeout
    }

    /// Resolves at the next change of some plugin's state (for the heartbeat).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    pub(in crate::supervise::reconcile) fn publish(&self, map: PluginMap) {
        self.plugins.store(Arc::new(map));
    }

    pub(in crate::supervise::reconcile) fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub(in crate::supervise::reconcile) fn notify_changed(&self) {
        self.changed.notify_one();
    }
}
