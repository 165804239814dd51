//! What the reconcile loop needs from outside, as two traits: a [`Launcher`] that starts,
//! follows and stops instances (real processes through [`Processes`]) and a [`StateStore`] that
//! holds the desired state (the real [`Store`]). The loop's state machine is the same either
//! way, so its tests drive it with in-memory stand-ins and a paused clock.

use crate::error::Failure;
use crate::manifest::Manifest;
use crate::os::output::LogRing;
use crate::store::{PluginRecord, Store, StoredSettings};
use crate::supervise::instance::{
    follow_instance, kill_instance, start_instance, stop_instance, Instance, InstanceEvent,
    StartContext,
};
use crate::supervise::settings::Applied;
use futures_util::future::BoxFuture;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Starts, follows and stops plugin instances.
pub trait Launcher: Send + Sync + 'static {
    /// Starts one instance of `manifest` with `epoch` and `settings`; `on_spawned` is called
    /// with the pid once its process runs and the handshake is awaited.
    fn start(
        &self,
        manifest: Arc<Manifest>,
        epoch: u64,
        logs: Arc<LogRing>,
        on_spawned: Box<dyn FnOnce(u32) + Send>,
        settings: Applied,
    ) -> BoxFuture<'static, Result<Arc<Instance>, Failure>>;

    /// Follows a ready instance until it is gone, reporting its exit, failed health checks and
    /// limit breaches.
    fn follow(
        &self,
        instance: Arc<Instance>,
        report: Box<dyn Fn(InstanceEvent) + Send + Sync>,
    ) -> BoxFuture<'static, ()>;

    /// Asks an instance to stop within `grace`, then kills what is left; says how it ended.
    fn stop(&self, instance: Arc<Instance>, grace: Duration) -> BoxFuture<'static, String>;

    /// Kills an instance now.
    fn kill(&self, instance: &Instance);
}

/// The real launcher: plugin processes with their sockets, limits and handshakes.
#[derive(Debug)]
pub struct Processes {
    ctx: StartContext,
}

impl Processes {
    /// Starts instances as `ctx` says.
    pub fn new(ctx: StartContext) -> Processes {
        Processes { ctx }
    }
}

impl Launcher for Processes {
    fn start(
        &self,
        manifest: Arc<Manifest>,
        epoch: u64,
        logs: Arc<LogRing>,
        on_spawned: Box<dyn FnOnce(u32) + Send>,
        settings: Applied,
    ) -> BoxFuture<'static, Result<Arc<Instance>, Failure>> {
        let ctx = self.ctx.clone();
        Box::pin(
            async move { start_instance(manifest, epoch, &ctx, logs, on_spawned, settings).await },
        )
    }

    fn follow(
        &self,
        instance: Arc<Instance>,
        report: Box<dyn Fn(InstanceEvent) + Send + Sync>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(follow_instance(instance, self.ctx.monitor_interval, report))
    }

    fn stop(&self, instance: Arc<Instance>, grace: Duration) -> BoxFuture<'static, String> {
        // Stopped on purpose: no restart will take the start prepared after it.
        self.ctx
            .spares
            .discard_after(&instance.manifest.dir, instance.epoch);
        Box::pin(async move { stop_instance(&instance, grace).await })
    }

    fn kill(&self, instance: &Instance) {
        kill_instance(instance);
    }
}

/// The desired state as the loop reads and registers it.
pub trait StateStore: Send + Sync + 'static {
    /// Registers a discovered plugin (enabled if new); returns its record.
    fn register<'a>(&'a self, m: &'a Manifest) -> BoxFuture<'a, anyhow::Result<PluginRecord>>;
    /// Marks registered plugins not in `present` as missing; returns the newly missing.
    fn mark_missing<'a>(
        &'a self,
        present: &'a [String],
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>>;
    /// One plugin's record.
    fn plugin<'a>(&'a self, name: &'a str) -> BoxFuture<'a, anyhow::Result<Option<PluginRecord>>>;
    /// Every plugin's record.
    fn plugins(&self) -> BoxFuture<'_, anyhow::Result<Vec<PluginRecord>>>;
    /// A kept bundle's bytes.
    fn bundle<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, anyhow::Result<Option<Vec<u8>>>>;
    /// Applies a plugin's own migrations; returns how many ran now.
    fn migrate_plugin<'a>(
        &'a self,
        plugin: &'a str,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<usize, Failure>>;
    /// Checks the store answers.
    fn ping(&self) -> BoxFuture<'_, anyhow::Result<()>>;
    /// A plugin's stored settings.
    fn settings<'a>(&'a self, plugin: &'a str) -> BoxFuture<'a, anyhow::Result<StoredSettings>>;
    /// Ends a plugin's canary of bundle `sha256` (if it still runs) on behalf of `actor`, with
    /// an audit entry; returns whether this call ended it.
    fn end_canary<'a>(
        &'a self,
        plugin: &'a str,
        sha256: &'a str,
        actor: &'a str,
        action: &'a str,
        detail: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<bool>>;
    /// Writes an entry of the audit log as plugd.
    fn audit<'a>(
        &'a self,
        plugin: &'a str,
        action: &'a str,
        detail: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
}

impl StateStore for Store {
    fn register<'a>(&'a self, m: &'a Manifest) -> BoxFuture<'a, anyhow::Result<PluginRecord>> {
        Box::pin(Store::register(self, m))
    }

    fn mark_missing<'a>(
        &'a self,
        present: &'a [String],
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(Store::mark_missing(self, present))
    }

    fn plugin<'a>(&'a self, name: &'a str) -> BoxFuture<'a, anyhow::Result<Option<PluginRecord>>> {
        Box::pin(Store::plugin(self, name))
    }

    fn plugins(&self) -> BoxFuture<'_, anyhow::Result<Vec<PluginRecord>>> {
        Box::pin(Store::plugins(self))
    }

    fn bundle<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, anyhow::Result<Option<Vec<u8>>>> {
        Box::pin(Store::bundle(self, sha256))
    }

    fn migrate_plugin<'a>(
        &'a self,
        plugin: &'a str,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<usize, Failure>> {
        Box::pin(Store::migrate_plugin(self, plugin, dir))
    }

    fn ping(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(Store::ping(self))
    }

    fn settings<'a>(&'a self, plugin: &'a str) -> BoxFuture<'a, anyhow::Result<StoredSettings>> {
        Box::pin(Store::settings(self, plugin))
    }

    fn end_canary<'a>(
        &'a self,
        plugin: &'a str,
        sha256: &'a str,
        actor: &'a str,
        action: &'a str,
        detail: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(Store::end_canary(
            self, plugin, sha256, actor, action, detail,
        ))
    }

    fn audit<'a>(
        &'a self,
        plugin: &'a str,
        action: &'a str,
        detail: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(Store::record(self, Some(plugin), "plugd", action, detail))
    }
}
