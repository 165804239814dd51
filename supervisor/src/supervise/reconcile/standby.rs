//! A plugin's warm standby (`standby = true` in its `[restart]`): a second instance of the
//! manifest the plugin runs, started and handshaked, followed like any instance (pings,
//! limits, its own cgroup with the plugin's limits), that serves nothing until the active
//! instance dies. Then it takes over at once, without a process start, and a new standby is
//! started behind it. The takeover is a restart for the restart policy: a crash loop still ends
//! in `failed`.
//!
//! After every event the loop brings each plugin's standby in line ([`Reconciler::align_standbys`]):
//! one is wanted while the plugin is enabled, serving and its manifest asks for it; one of
//! another manifest (after a reload) or no longer wanted is stopped. A standby that fails to
//! start or exits is tried again after [`STANDBY_RETRY`].

use super::lifecycle::stop_later;
use super::state::StandbyView;
use super::{Event, Reconciler};
use crate::error::Failure;
use crate::supervise::instance::{next_epoch, Instance, InstanceEvent};
use crate::supervise::PluginState;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long after a failed or exited standby the next one is started.
pub(super) const STANDBY_RETRY: Duration = Duration::from_secs(2);

/// How long after a takeover the next standby is started.
pub(super) const STANDBY_AFTER_TAKEOVER: Duration = Duration::from_millis(50);

/// The loop's record of one plugin's standby.
#[derive(Debug, Default)]
pub(super) struct StandbyRun {
    /// The epoch of the standby being started.
    starting: Option<u64>,
    /// The standby, once handshaked.
    current: Option<Arc<Instance>>,
    /// No new standby before this (after one failed).
    not_before: Option<Instant>,
}

impl StandbyRun {
    /// Whether a standby is ready to take over.
    pub(super) fn is_ready(&self) -> bool {
        self.current.is_some()
    }

    /// The ready standby, taken out (plugd is stopping, or the plugin is forgotten).
    pub(super) fn take(&mut self) -> Option<Arc<Instance>> {
        self.starting = None;
        self.current.take()
    }
}

impl Reconciler {
    pub(super) fn is_standby_start(&self, name: &str, epoch: u64) -> bool {
        self.entries
            .get(name)
            .is_some_and(|e| e.standby.starting == Some(epoch))
    }

    /// Starts, keeps or stops each plugin's standby as its state asks.
    pub(super) fn align_standbys(&mut self) {
        let names: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.current
                    .as_ref()
                    .is_some_and(|c| c.manifest.restart.standby)
                    || e.standby.starting.is_some()
                    || e.standby.current.is_some()
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            self.align_standby(&name);
        }
    }

    fn align_standby(&mut self, name: &str) {
        let grace = self.grace;
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        let serving =
            entry.enabled && !entry.removed && matches!(*entry.slot.state(), PluginState::Ready(_));
        let wanted = entry
            .current
            .clone()
            .filter(|c| serving && c.manifest.restart.standby);
        // A standby of another manifest than the one serving (a reload) is of no use.
        let stale = entry.standby.current.as_ref().is_some_and(|s| {
            wanted
                .as_ref()
                .is_none_or(|c| !Arc::ptr_eq(&s.manifest, &c.manifest))
        });
        if stale {
            if let Some(standby) = entry.standby.current.take() {
                tracing::info!(plugin = name, pid = standby.pid, "stopping the standby");
                stop_later(&self.launcher, standby, grace);
            }
        }
        if wanted.is_none() {
            // A start under way is stopped when it completes (`on_standby_started`).
            entry.standby.starting = None;
        }
        let publish = match (&entry.standby.current, entry.standby.starting) {
            (Some(standby), _) => Some(StandbyView::Ready(standby.clone())),
            (None, Some(_)) => Some(StandbyView::Starting),
            (None, None) => None,
        };
        let Some(current) = wanted else {
            entry.slot.set_standby(publish);
            return;
        };
        let idle = entry.standby.current.is_none() && entry.standby.starting.is_none();
        let due = entry.standby.not_before.is_none_or(|t| Instant::now() >= t);
        if !(idle && due) {
            entry.slot.set_standby(publish);
            return;
        }
        let epoch = next_epoch();
        entry.standby.starting = Some(epoch);
        entry.standby.not_before = None;
        entry.slot.set_standby(Some(StandbyView::Starting));
        tracing::debug!(plugin = name, "starting a standby");
        let logs = entry.slot.logs().clone();
        self.launch(name, current.manifest.clone(), logs, epoch, None);
    }

    /// A standby's start finished.
    pub(super) fn on_standby_started(
        &mut self,
        name: &str,
        result: Result<Arc<Instance>, Failure>,
    ) {
        let grace = self.grace;
        let Some(entry) = self.entries.get_mut(name) else {
            if let Ok(instance) = result {
                stop_later(&self.launcher, instance, grace);
            }
            return;
        };
        entry.standby.starting = None;
        match result {
            Ok(instance) => {
                let fits = entry
                    .current
                    .as_ref()
                    .is_some_and(|c| Arc::ptr_eq(&c.manifest, &instance.manifest));
                if !fits {
                    stop_later(&self.launcher, instance, grace);
                    return;
                }
                tracing::info!(plugin = name, pid = instance.pid, "standby ready");
                entry.standby.current = Some(instance.clone());
                self.follow_settings(instance.clone(), None);
                self.follow(name, instance);
            }
            Err(e) => {
                tracing::warn!(
                    plugin = name, reason = %e.message,
                    "the standby did not start; trying again in {STANDBY_RETRY:?}"
                );
                self.standby_later(name, STANDBY_RETRY);
            }
        }
    }

    /// No standby for `name` before `delay`; the loop looks again then.
    fn standby_later(&mut self, name: &str, delay: Duration) {
        if let Some(entry) = self.entries.get_mut(name) {
            entry.standby.not_before = Some(Instant::now() + delay);
        }
        let (tx, name) = (self.tx.clone(), name.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Event::StandbyDue { name });
        });
    }

    /// Handles an event about the standby; returns false if `epoch` is not it.
    pub(super) fn on_standby_instance(
        &mut self,
        name: &str,
        epoch: u64,
        event: &InstanceEvent,
    ) -> bool {
        let Some(entry) = self.entries.get_mut(name) else {
            return false;
        };
        let Some(standby) = entry.standby.current.clone().filter(|s| s.epoch == epoch) else {
            return false;
        };
        match event {
            InstanceEvent::Unresponsive(why) | InstanceEvent::LimitBreach(why) => {
                tracing::warn!(plugin = name, pid = standby.pid, reason = %why, "killing the standby");
                self.launcher.kill(&standby);
            }
            InstanceEvent::Exited(reason) => {
                tracing::warn!(plugin = name, pid = standby.pid, %reason, "the standby exited; starting another in {STANDBY_RETRY:?}");
                entry.standby.current = None;
                self.standby_later(name, STANDBY_RETRY);
            }
            InstanceEvent::Disconnected => {}
        }
        true
    }

    /// The serving instance of `name` exited: the standby, if one is ready, serves from now
    /// on. Returns false when there is none (the usual restart follows).
    pub(super) fn take_over(&mut self, name: &str, reason: &str, up_for: Duration) -> bool {
        let Some(entry) = self.entries.get_mut(name) else {
            return false;
        };
        let Some(standby) = entry.standby.current.take() else {
            return false;
        };
        let policy = entry.manifest.restart.clone();
        let decision =
            entry
                .restart
                .on_exit(&policy, Instant::now(), Some(up_for), rand::random::<f64>());
        if let crate::supervise::policy::Decision::GiveUp(why) = decision {
            // A crash loop: the standby would crash the same way.
            stop_later(&self.launcher, standby, self.grace);
            entry
                .slot
                .set(PluginState::Failed(format!("{why}; last: {reason}")));
            return true;
        }
        tracing::warn!(
            plugin = name, %reason, pid = standby.pid,
            "plugin down; the standby took over"
        );
        entry.current = Some(standby.clone());
        entry.slot.set(PluginState::Ready(standby.clone()));
        entry.slot.count_restart();
        // The next standby starts a moment later: on a small machine its start would compete
        // with the first requests the new instance serves.
        self.standby_later(name, STANDBY_AFTER_TAKEOVER);
        self.lifecycle_hook(
            "plugd.plugin.loaded",
            serde_json::json!({ "plugin": name, "version": standby.version, "pid": standby.pid }),
        );
        true
    }
}
