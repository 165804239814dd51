//! Desired state from the store: reads of a plugin's record run off the loop, one at a time
//! per plugin so they apply in order; a failed read keeps what runs and is retried; the answer
//! is applied (bundle, then the enabled flag).

use super::lifecycle::stop_later;
use super::state::PluginState;
use super::{Event, Reconciler};
use crate::store::PluginRecord;
use std::time::Duration;

/// How long to wait before reading a plugin's desired state again after the store failed.
const DESIRED_RETRY: Duration = Duration::from_secs(2);
/// The longest a read of a plugin's desired state may take (a connection may go silent).
const DESIRED_READ: Duration = Duration::from_secs(10);

impl Reconciler {
    /// Reads a plugin's desired state off the loop; the answer comes back as `DesiredRead`.
    pub(super) fn read_desired(&mut self, name: &str) {
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

    pub(super) async fn on_desired_read(
        &mut self,
        name: &str,
        result: Result<Option<PluginRecord>, String>,
    ) {
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
    pub(super) fn rescan_when_store_back(&mut self) {
        if std::mem::replace(&mut self.rescan_waiting, true) {
            return;
        }
        let (store, tx) = (self.store.clone(), self.tx.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(super::lifecycle::STORE_RETRY).await;
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
    pub(super) async fn apply_desired(&mut self, name: &str, record: Option<PluginRecord>) {
        if self.sync_bundle(name, record.as_ref()).await {
            Box::pin(self.rescan(false)).await;
        }
        self.sync_canary(name, record.as_ref()).await;
        let Some(record) = record else {
            return;
        };
        let enabled = record.enabled;
        let grace = self.grace;
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        entry.enabled = enabled;
        entry.settings_generation = Some(record.settings_generation);
        if enabled {
            let state = entry.slot.state();
            if matches!(*state, PluginState::Disabled) {
                tracing::info!(plugin = name, "enabled; starting");
                entry.restart.reset();
                self.start(name);
            } else if entry.awaiting_settings && entry.current.is_none() && entry.starting.is_none()
            {
                tracing::info!(plugin = name, "its settings changed; starting it again");
                entry.restart.reset();
                self.start(name);
            } else if let Some(instance) = entry.current.clone() {
                self.follow_settings(instance, Some(record.settings_generation));
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
                stop_later(&self.launcher, instance, grace);
            }
            None => entry.slot.set(PluginState::Disabled),
        }
    }
}
