//! A plugin's canary on this worker: the store names it (`PluginRecord::canary`); the loop
//! unpacks its bundle beside the stable one (`<plugins_dir>/.canary/<name>`, out of
//! discovery's sight), starts an instance of it next to the stable instance, and publishes it
//! on the slot, where the proxy sends it its share of requests. A canary that does not start,
//! exits or is killed is rolled back (in the store, for every worker); one the store no longer
//! names is stopped and its files removed.

use super::lifecycle::stop_later;
use super::{Event, Handle, Reconciler};
use crate::error::Failure;
use crate::manifest::{self, bundle, Manifest};
use crate::store::PluginRecord;
use crate::supervise::canary::{self, Canary};
use crate::supervise::instance::{next_epoch, Instance, InstanceEvent};
use plugd_api::CanaryInfo;
use std::path::PathBuf;
use std::sync::Arc;

/// The loop's record of one plugin's canary.
#[derive(Debug)]
pub(super) struct CanaryRun {
    info: CanaryInfo,
    starting: Option<u64>,
    pub(super) current: Option<Arc<Instance>>,
}

impl Reconciler {
    fn canary_root(&self) -> PathBuf {
        self.plugins_dir.join(".canary")
    }

    pub(super) fn is_canary_start(&self, name: &str, epoch: u64) -> bool {
        self.entries
            .get(name)
            .and_then(|e| e.canary.as_ref())
            .is_some_and(|c| c.starting == Some(epoch))
    }

    /// Starts every canary the store names (at start-up, after the first scan).
    pub(super) async fn sync_all_canaries(&mut self) {
        if let Ok(records) = self.store.plugins().await {
            for record in records.iter().filter(|r| r.canary.is_some()) {
                self.sync_canary(&record.name, Some(record)).await;
            }
        }
    }

    /// Brings this worker's canary of `name` in line with `record`.
    pub(super) async fn sync_canary(&mut self, name: &str, record: Option<&PluginRecord>) {
        let Some(entry) = self.entries.get(name) else {
            return;
        };
        let runs = record.is_some_and(|r| r.enabled) && !entry.removed;
        let wanted = record.and_then(|r| r.canary.clone()).filter(|_| runs);
        let running = entry.canary.as_ref().map(|c| c.info.sha256.clone());
        let Some(wanted) = wanted else {
            if running.is_some() {
                self.stop_canary(name, "the store no longer names it");
                self.remove_canary_files(name);
            }
            return;
        };
        if running.as_deref() == Some(wanted.sha256.as_str()) {
            return;
        }
        if running.is_some() {
            self.stop_canary(name, "replaced by another canary");
        }
        let Some(manifest) = self.place_canary(name, &wanted.sha256).await else {
            return;
        };
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        let epoch = next_epoch();
        tracing::info!(
            plugin = name, version = %wanted.version, percent = wanted.percent,
            "starting the canary"
        );
        entry.canary = Some(CanaryRun {
            info: wanted,
            starting: Some(epoch),
            current: None,
        });
        let logs = entry.slot.logs().clone();
        let build = (!manifest.build.is_empty()).then(|| super::source_stamp(&manifest));
        self.launch(name, Arc::new(manifest), logs, epoch, build);
    }

    /// The canary's bundle unpacked under `.canary/<name>` (reused when already there),
    /// checked against its sha256; none if it cannot be had now (logged).
    async fn place_canary(&self, name: &str, sha256: &str) -> Option<Manifest> {
        let root = self.canary_root();
        let dir = root.join(name);
        if bundle::installed_sha256(&dir).as_deref() != Some(sha256) {
            let bytes = match self.store.bundle(sha256).await {
                Ok(Some(bytes)) if bundle::sha256(&bytes) == sha256 => bytes,
                Ok(Some(_)) => {
                    tracing::error!(
                        plugin = name,
                        "canary bundle {sha256} does not match its sum; not running it"
                    );
                    return None;
                }
                Ok(None) => {
                    tracing::error!(plugin = name, "canary bundle {sha256} is not in the store");
                    return None;
                }
                Err(e) => {
                    tracing::error!(plugin = name, "cannot fetch canary bundle {sha256}: {e:#}");
                    return None;
                }
            };
            let (sum, root) = (sha256.to_owned(), root.clone());
            let placed =
                tokio::task::spawn_blocking(move || bundle::place(&bytes, &sum, &root)).await;
            match placed {
                Ok(Ok((m, _))) if m.name == name => {}
                Ok(Ok((m, _))) => {
                    tracing::error!(
                        plugin = name,
                        "the canary bundle is plugin {:?}; not running it",
                        m.name
                    );
                    return None;
                }
                Ok(Err(e)) => {
                    tracing::error!(plugin = name, "cannot unpack the canary bundle: {e}");
                    return None;
                }
                Err(e) => {
                    tracing::error!(plugin = name, "cannot unpack the canary bundle: {e}");
                    return None;
                }
            }
        }
        let path = dir.join(manifest::MANIFEST_FILE);
        match tokio::task::spawn_blocking(move || manifest::load(&path)).await {
            Ok(Ok(m)) => Some(m),
            Ok(Err(e)) => {
                tracing::error!(plugin = name, "the canary's manifest is invalid: {e}");
                None
            }
            Err(e) => {
                tracing::error!(plugin = name, "cannot read the canary's manifest: {e}");
                None
            }
        }
    }

    /// Stops this worker's canary of `name` (the store is not changed).
    pub(super) fn stop_canary(&mut self, name: &str, why: &str) {
        let grace = self.grace;
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        let Some(run) = entry.canary.take() else {
            return;
        };
        entry.slot.set_canary(None);
        tracing::info!(plugin = name, version = %run.info.version, "canary stopped: {why}");
        if let Some(instance) = run.current {
            stop_later(&self.launcher, instance, grace);
        }
    }

    pub(super) fn remove_canary_files(&self, name: &str) {
        let (root, name) = (self.canary_root(), name.to_owned());
        tokio::task::spawn_blocking(move || {
            let dir = root.join(&name);
            if dir.exists() {
                if let Err(e) = bundle::remove_installed(&root, &dir, &name) {
                    tracing::warn!(plugin = %name, "cannot remove the canary's files: {e}");
                }
            }
        });
    }

    /// Ends the canary of `name` for every worker, because of `reason`, and stops it here.
    fn roll_back_canary(&mut self, name: &str, reason: String) {
        let Some(sha) = self
            .entries
            .get(name)
            .and_then(|e| e.canary.as_ref())
            .map(|c| c.info.sha256.clone())
        else {
            return;
        };
        self.stop_canary(name, &reason);
        self.remove_canary_files(name);
        let (store, tx, name) = (self.store.clone(), self.tx.clone(), name.to_owned());
        tokio::spawn(async move {
            let detail = format!("rolled back automatically: {reason}");
            match store
                .end_canary(&name, &sha, "plugd", "canary rolled back", &detail)
                .await
            {
                Ok(true) => tracing::warn!(plugin = %name, "canary {detail}"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(plugin = %name, "cannot end the canary in the store: {e:#}")
                }
            }
            let _ = tx.send(Event::Desired { name });
        });
    }

    /// Rolls back the canary `sha256` of `name` whose figures failed, if it still runs here.
    pub(super) fn on_canary_failed(&mut self, name: &str, sha256: &str, reason: String) {
        let runs = self
            .entries
            .get(name)
            .and_then(|e| e.canary.as_ref())
            .is_some_and(|c| c.info.sha256 == sha256);
        if runs {
            self.roll_back_canary(name, reason);
        }
    }

    pub(super) fn on_canary_started(&mut self, name: &str, result: Result<Arc<Instance>, Failure>) {
        let policy = self.canary_policy.clone();
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        let Some(run) = entry.canary.as_mut() else {
            return;
        };
        run.starting = None;
        match result {
            Ok(instance) => {
                run.current = Some(instance.clone());
                let canary = Arc::new(Canary::new(
                    instance.clone(),
                    run.info.sha256.clone(),
                    run.info.percent,
                    policy,
                ));
                entry.slot.set_canary(Some(canary.clone()));
                tracing::info!(
                    plugin = name, version = %instance.version, percent = run.info.percent,
                    "canary serving"
                );
                self.follow(name, instance);
                let handle = Handle {
                    tx: self.tx.clone(),
                };
                tokio::spawn(canary::watch(
                    name.to_owned(),
                    Arc::downgrade(&canary),
                    handle,
                ));
            }
            Err(e) => {
                self.roll_back_canary(name, format!("the canary did not start: {}", e.message))
            }
        }
    }

    /// Handles an event about the canary's instance; returns false if `epoch` is not it.
    pub(super) fn on_canary_instance(
        &mut self,
        name: &str,
        epoch: u64,
        event: &InstanceEvent,
    ) -> bool {
        let Some(instance) = self
            .entries
            .get(name)
            .and_then(|e| e.canary.as_ref())
            .and_then(|c| c.current.clone())
            .filter(|i| i.epoch == epoch)
        else {
            return false;
        };
        match event {
            InstanceEvent::Unresponsive(detail) => {
                self.launcher.kill(&instance);
                self.roll_back_canary(name, format!("the canary was unresponsive: {detail}"));
            }
            InstanceEvent::LimitBreach(why) => {
                self.launcher.kill(&instance);
                self.roll_back_canary(name, format!("the canary broke a limit: {why}"));
            }
            InstanceEvent::Exited(reason) => {
                self.roll_back_canary(name, format!("the canary exited: {reason}"))
            }
            InstanceEvent::Disconnected => {}
        }
        true
    }
}
