//! One plugin's instances: starting one, what happens when a start finishes, when an instance
//! exits or misbehaves (the restart policy), reloads, removal and shutdown.

use super::readiness::notify;
use super::seams::Launcher;
use super::state::PluginState;
use super::{program_stamp, Event, Reconciler};
use crate::error::{Failure, Retry};
use crate::manifest;
use crate::supervise::hooks;
use crate::supervise::instance::{next_epoch, Instance, InstanceEvent};
use crate::supervise::policy::Decision;
use futures_util::FutureExt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Lines of a plugin's output logged when it goes down.
const LAST_WORDS: usize = 5;
/// How long to wait before starting a plugin again whose start needed the unreachable store.
pub(super) const STORE_RETRY: Duration = Duration::from_secs(3);

/// Runs `manifest`'s build of `sources` (at most as many at once as `builds` has permits) and
/// reports it as `Built`; a failed build is a failure that retrying will not mend.
async fn build_first(
    name: &str,
    epoch: u64,
    manifest: &Arc<crate::manifest::Manifest>,
    logs: &Arc<crate::os::output::LogRing>,
    sources: super::ProgramStamp,
    builds: &tokio::sync::Semaphore,
    tx: &tokio::sync::mpsc::UnboundedSender<Event>,
) -> Result<(), Failure> {
    let _permit = builds.acquire().await;
    tracing::info!(plugin = name, command = ?manifest.build, "building");
    let report = crate::os::build::run(manifest, logs).await;
    let built = manifest.clone();
    let program = tokio::task::spawn_blocking(move || super::program_stamp(&built))
        .await
        .unwrap_or_default();
    let ok = report.ok;
    let failure = (!ok).then(|| {
        let last = report
            .output
            .iter()
            .rev()
            .take(5)
            .rev()
            .cloned()
            .collect::<Vec<_>>();
        Failure::never(format!(
            "the build failed ({}); last lines:\n{}",
            report.status,
            last.join("\n")
        ))
    });
    let _ = tx.send(Event::Built {
        name: name.to_owned(),
        epoch,
        sources,
        program,
        report,
    });
    match failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// Stops `instance` in the background, giving it `grace` to finish its requests.
pub(super) fn stop_later(launcher: &Arc<dyn Launcher>, instance: Arc<Instance>, grace: Duration) {
    tokio::spawn(launcher.stop(instance, grace));
}

fn retry_at(delay: Duration) -> u64 {
    plugd_protocol::time::unix_ms(SystemTime::now() + delay)
}

impl Reconciler {
    /// Starts a new instance of `name` (next to the current one, if any: blue/green), built
    /// first when its manifest has a build command and its sources changed since the last
    /// successful build.
    pub(super) fn start(&mut self, name: &str) {
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        let epoch = next_epoch();
        entry.starting = Some(epoch);
        entry.awaiting_settings = false;
        // Any retry scheduled before this start is stale now.
        self.generations += 1;
        entry.retry_generation = self.generations;
        if entry.current.is_none() {
            entry.slot.set(PluginState::Starting);
        }
        let sources = (!entry.manifest.build.is_empty())
            .then(|| super::source_stamp(&entry.manifest))
            .filter(|sources| entry.built.as_ref() != Some(sources));
        let (manifest, logs) = (entry.manifest.clone(), entry.slot.logs().clone());
        self.launch(name, manifest, logs, epoch, sources);
    }

    /// Runs one start of `manifest` as instance `epoch` of `name` in a task of its own (its
    /// build of `build`'s sources first, when given), which reports `Spawned`, `Built` and
    /// `Started`.
    pub(super) fn launch(
        &self,
        name: &str,
        manifest: Arc<crate::manifest::Manifest>,
        logs: Arc<crate::os::output::LogRing>,
        epoch: u64,
        build: Option<super::ProgramStamp>,
    ) {
        let launcher = self.launcher.clone();
        let store = self.store.clone();
        let builds = self.builds.clone();
        let tx = self.tx.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            if let Some(sources) = build {
                let built = build_first(&name, epoch, &manifest, &logs, sources, &builds, &tx);
                if let Err(e) = built.await {
                    let _ = tx.send(Event::Started {
                        name,
                        epoch,
                        result: Err(e),
                    });
                    return;
                }
            }
            let spawned: Box<dyn FnOnce(u32) + Send> = {
                let (tx, name) = (tx.clone(), name.clone());
                Box::new(move |_pid| {
                    let _ = tx.send(Event::Spawned { name, epoch });
                })
            };
            // The plugin's own migrations run first; a refused or failing one means this
            // version cannot run, and retrying will not change that (unless the store was
            // only away).
            let migrated = store.migrate_plugin(&manifest.name, &manifest.dir).await;
            let result = match migrated {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(plugin = %name, "applied {n} migrations");
                    }
                    let settings = super::settings::for_start(&*store, &manifest).await;
                    match settings {
                        Ok(s) => launcher.start(manifest, epoch, logs, spawned, s).await,
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e.context("plugin migration")),
            };
            let _ = tx.send(Event::Started {
                name,
                epoch,
                result,
            });
        });
    }

    /// Records how a start's build went: its report on the slot, the sources it built (so
    /// only a change of them builds again), and an audit entry when it failed.
    pub(super) fn on_built(
        &mut self,
        name: &str,
        epoch: u64,
        sources: super::ProgramStamp,
        program: super::ProgramStamp,
        report: plugd_api::BuildReport,
    ) {
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        let current = entry.starting == Some(epoch);
        if report.ok {
            tracing::info!(
                plugin = name,
                took_ms = report.duration_ms,
                "build succeeded"
            );
            if current {
                entry.built = Some(sources);
                entry.program = program;
                entry.build_failed = None;
            }
        } else {
            tracing::error!(
                plugin = name, status = %report.status,
                "build failed; {}", if entry.current.is_some() { "the running version keeps serving" } else { "not starting it" }
            );
            if current {
                entry.program = program;
                entry.build_failed = Some(epoch);
            }
            let last: Vec<&str> = report
                .output
                .iter()
                .rev()
                .take(5)
                .rev()
                .map(String::as_str)
                .collect();
            let detail = format!("{}; last lines: {}", report.status, last.join(" | "));
            let (store, name) = (self.store.clone(), name.to_owned());
            tokio::spawn(async move {
                if let Err(e) = store.audit(&name, "build failed", &detail).await {
                    tracing::warn!(plugin = %name, "cannot audit the failed build: {e:#}");
                }
            });
        }
        entry.slot.set_build(report);
    }

    pub(super) fn on_started(
        &mut self,
        name: &str,
        epoch: u64,
        result: Result<Arc<Instance>, Failure>,
    ) {
        if self.is_canary_start(name, epoch) {
            self.on_canary_started(name, result);
            return;
        }
        if self.is_standby_start(name, epoch) {
            self.on_standby_started(name, result);
            return;
        }
        let grace = self.grace;
        let Some(entry) = self
            .entries
            .get_mut(name)
            .filter(|e| e.starting == Some(epoch))
        else {
            // Superseded or removed meanwhile: nobody wants this instance.
            if let Ok(instance) = result {
                stop_later(&self.launcher, instance, grace);
            }
            return;
        };
        entry.starting = None;
        if !result.as_ref().is_err_and(Failure::is_ours) {
            entry.store_wait_logged = false;
        }
        match result {
            Ok(instance) => {
                if entry.removed || !entry.enabled {
                    stop_later(&self.launcher, instance, grace);
                    return;
                }
                let old = entry.current.replace(instance.clone());
                entry.slot.set(PluginState::Ready(instance.clone()));
                let settings_heard = entry.settings_generation;
                self.lifecycle_hook(
                    "plugd.plugin.loaded",
                    serde_json::json!({ "plugin": name, "version": instance.version, "pid": instance.pid }),
                );
                if let Some(old) = old.as_ref().filter(|o| o.version != instance.version) {
                    let payload = serde_json::json!({ "plugin": name, "from": old.version, "to": instance.version });
                    self.lifecycle_hook("plugd.plugin.upgraded", payload.clone());
                    // The deprecated name of the same hook, until protocol 1.2.
                    self.lifecycle_hook("plugd.plugin.config_changed", payload);
                }
                // A change of settings made while it started is delivered now (the store is
                // asked unless the instance started with the generation last heard of).
                self.follow_settings(instance.clone(), settings_heard);
                self.follow(name, instance.clone());
                if let Some(old) = old {
                    tracing::info!(
                        plugin = name, from = %old.version, to = %instance.version,
                        "reloaded: the new instance serves; draining the old one"
                    );
                    let stopping = self.launcher.stop(old.clone(), grace);
                    tokio::spawn(async move {
                        let how = stopping.await;
                        tracing::info!(plugin = %old.manifest.name, pid = old.pid, "old instance {how}");
                    });
                }
            }
            Err(e) if entry.current.is_some() => {
                tracing::error!(
                    plugin = name, reason = %e.message,
                    "reload failed; the running instance keeps serving"
                );
                // Restarts of the running instance use the manifest it runs; the next rescan
                // (a file change or SIGHUP) tries the new one again. After a failed build only
                // a change of its files does: the build's own output must not start it again.
                if let Some(current) = &entry.current {
                    entry.set_manifest(current.manifest.clone());
                }
                if entry.build_failed != Some(epoch) {
                    entry.program = Vec::new();
                }
            }
            Err(e) if e.is_ours() => {
                // Not the plugin's fault (the store is away, or plugd is short of file
                // descriptors or memory): try again without using up its restarts.
                entry.slot.set(PluginState::Backoff {
                    reason: e.message.clone(),
                    retry_at_unix_ms: retry_at(STORE_RETRY),
                });
                if std::mem::replace(&mut entry.store_wait_logged, true) {
                    tracing::debug!(plugin = %name, reason = %e.message, "cannot start it yet; retrying in {STORE_RETRY:?}");
                } else {
                    tracing::warn!(
                        plugin = %name, reason = %e.message,
                        "cannot start it yet; retrying every {STORE_RETRY:?}"
                    );
                }
                self.schedule_retry(name, STORE_RETRY);
            }
            Err(e) => {
                entry.awaiting_settings = e.retry == Retry::WhenSettingsChange;
                let fatal = e.is_fatal();
                self.on_down(name, e.message, fatal, None)
            }
        }
    }

    /// Follows `instance` of `name` in a task of its own, reporting its exit, failed health
    /// checks and limit breaches to the loop.
    pub(super) fn follow(&self, name: &str, instance: Arc<Instance>) {
        let (tx, name, epoch) = (self.tx.clone(), name.to_owned(), instance.epoch);
        let report = Box::new(move |event| {
            let _ = tx.send(Event::Instance {
                name: name.clone(),
                epoch,
                event,
            });
        });
        tokio::spawn(self.launcher.follow(instance, report));
    }

    /// Starts `name` again after `delay`, unless something else started or stopped it first.
    pub(super) fn schedule_retry(&mut self, name: &str, delay: Duration) {
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

    pub(super) fn on_instance(&mut self, name: &str, epoch: u64, event: InstanceEvent) {
        if self.on_canary_instance(name, epoch, &event)
            || self.on_standby_instance(name, epoch, &event)
        {
            return;
        }
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
                    InstanceEvent::Exited(_) | InstanceEvent::Disconnected => unreachable!(),
                };
                tracing::warn!(plugin = name, %reason, "killing the plugin");
                entry.kill_reason = Some((epoch, reason));
                if let Some(instance) = &entry.current {
                    self.launcher.kill(instance);
                }
            }
            InstanceEvent::Disconnected => {
                // With a standby ready, it takes over now rather than when the exit is seen;
                // the old instance's exit is then no longer the current one's.
                let Some(instance) = entry.current.clone() else {
                    return;
                };
                if !entry.standby.is_ready() || entry.removed || !entry.enabled {
                    return;
                }
                let payload = serde_json::json!({ "plugin": name, "pid": instance.pid, "reason": "its connection closed" });
                let up_for = instance.ready_at.elapsed();
                if self.take_over(name, "its connection closed", up_for) {
                    self.lifecycle_hook("plugd.plugin.unloaded", payload);
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
                if self.take_over(name, &reason, up_for) {
                    return;
                }
                self.on_down(name, reason, false, Some(up_for));
            }
        }
    }

    /// Applies the restart policy to a plugin that is down for `reason`.
    pub(super) fn on_down(
        &mut self,
        name: &str,
        reason: String,
        fatal: bool,
        up_for: Option<Duration>,
    ) {
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
                    retry_at_unix_ms: retry_at(delay),
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

    /// Re-reads one plugin's manifest and program from disk and swaps a new instance in.
    pub(super) fn reload(&mut self, name: &str) {
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        let path = entry.manifest.dir.join(manifest::MANIFEST_FILE);
        match manifest::load(&path) {
            Ok(m) if m.name == name => {
                entry.program = program_stamp(&m);
                entry.set_manifest(Arc::new(m));
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
    pub(super) fn remove(&mut self, name: &str) {
        let grace = self.grace;
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        tracing::info!(plugin = name, "plugin removed from disk; stopping it");
        entry.removed = true;
        let had_canary = entry.canary.is_some();
        entry.starting = None;
        let current = entry.current.clone();
        if had_canary {
            self.stop_canary(name, "its plugin was removed");
            self.remove_canary_files(name);
        }
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        match current {
            Some(instance) => {
                entry.slot.set(PluginState::Draining);
                stop_later(&self.launcher, instance, grace);
            }
            None => {
                entry.slot.set(PluginState::Stopped("removed".into()));
                self.forget(name);
            }
        }
    }

    /// Fires one of the supervisor's own hooks (`plugd.plugin.loaded`, `…unloaded`,
    /// `…upgraded`) at the plugins that handle it, without waiting for the answers.
    pub(super) fn lifecycle_hook(&self, hook: &'static str, payload: serde_json::Value) {
        hooks::fire_lifecycle(&self.registry, hook, payload);
    }

    /// Stops every instance by `deadline` (each finishes its requests in the time left),
    /// including instances whose start completes meanwhile. Whatever still starts at the
    /// deadline dies with plugd (`PR_SET_PDEATHSIG`).
    pub(super) async fn shutdown(&mut self, deadline: Instant) {
        notify(&[sd_notify::NotifyState::Stopping]);
        let grace = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1))
        };
        let mut stopping = tokio::task::JoinSet::new();
        for e in self.entries.values_mut() {
            if let Some(standby) = e.standby.take() {
                stopping.spawn(self.launcher.stop(standby, grace()).map(|_| ()));
            }
            if let Some(canary) = e.canary.take().and_then(|c| c.current) {
                e.slot.set_canary(None);
                stopping.spawn(self.launcher.stop(canary, grace()).map(|_| ()));
            }
            if let Some(instance) = e.current.take() {
                let slot = e.slot.clone();
                slot.set(PluginState::Draining);
                let grace = grace();
                let stop = self.launcher.stop(instance, grace);
                stopping.spawn(async move {
                    let how = stop.await;
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
                    stopping.spawn(self.launcher.stop(instance, grace).map(|_| ()));
                }
            }
        }
        while stopping.join_next().await.is_some() {}
    }
}
