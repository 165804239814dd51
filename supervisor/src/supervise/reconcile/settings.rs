//! Settings on the loop's side: the settings a start hands the plugin (read from the store
//! just before, required ones checked), and following the store's settings with the running
//! instance, off the loop.

use super::{Event, Reconciler};
use crate::error::Failure;
use crate::manifest::settings::effective;
use crate::manifest::Manifest;
use crate::supervise::instance::Instance;
use crate::supervise::reconcile::StateStore;
use crate::supervise::settings::{apply, changed_keys, Applied};
use std::sync::Arc;
use std::time::Duration;

/// How the reason of a start that failed for want of required settings begins.
const MISSING_SETTINGS: &str = "missing required settings";
/// The longest a read of a plugin's settings may take.
const SETTINGS_READ: Duration = Duration::from_secs(10);

/// The settings an instance of `manifest` starts with. A store that does not answer is
/// plugd's failure (retried without counting against the plugin); a required setting without
/// a value is the plugin's configuration's (it fails until an admin sets it).
pub(super) async fn for_start(
    store: &dyn StateStore,
    manifest: &Manifest,
) -> Result<Applied, Failure> {
    if manifest.settings.is_empty() {
        return Ok(Applied::default());
    }
    let name = &manifest.name;
    let stored = crate::store::bounded(SETTINGS_READ, store.settings(name))
        .await
        .map_err(|e| Failure::store_away(format!("cannot read its settings: {e:#}")))?;
    let found = effective(&manifest.settings, &stored.plain());
    for ignored in &found.ignored {
        tracing::warn!(
            plugin = %name, setting = %ignored.key,
            "the stored value no longer fits the manifest ({}); using the default", ignored.problem
        );
    }
    if !found.missing.is_empty() {
        return Err(Failure::needs_settings(format!(
            "{MISSING_SETTINGS}: {} (set them with `plugd set {name} KEY=VALUE`)",
            found.missing.join(", ")
        )));
    }
    Ok(Applied {
        generation: stored.generation,
        values: found.values,
    })
}

impl Reconciler {
    /// Brings `instance`'s settings to the store's, off the loop: pushed live, or, when a
    /// setting marked `restart` changed, a new instance is swapped in. `known` is the
    /// generation the caller just read, if any: when the instance has it, the store is not
    /// asked again.
    pub(super) fn follow_settings(&self, instance: Arc<Instance>, known: Option<i64>) {
        if instance.manifest.settings.is_empty() {
            return;
        }
        let (store, registry, tx) = (self.store.clone(), self.registry.clone(), self.tx.clone());
        tokio::spawn(async move {
            let mut applied = instance.settings.lock().await;
            if known.is_some_and(|g| g == applied.generation) {
                return;
            }
            let name = instance.manifest.name.clone();
            let stored = match crate::store::bounded(SETTINGS_READ, store.settings(&name)).await {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::warn!(plugin = %name, "cannot read its settings: {e:#}; it keeps the ones it has");
                    return;
                }
            };
            if stored.generation == applied.generation {
                return;
            }
            let schema = &instance.manifest.settings;
            let found = effective(schema, &stored.plain());
            if !found.missing.is_empty() {
                tracing::warn!(
                    plugin = %name,
                    "{MISSING_SETTINGS} ({}); it keeps the ones it has", found.missing.join(", ")
                );
                applied.generation = stored.generation;
                return;
            }
            let changed = changed_keys(&applied.values, &found.values);
            if changed
                .iter()
                .any(|k| schema.get(k).is_some_and(|s| s.restart))
            {
                applied.generation = stored.generation;
                let _ = tx.send(Event::SettingsRestart { name });
                return;
            }
            let result = apply(
                &registry,
                &instance,
                &mut applied,
                found.values,
                stored.generation,
            );
            if let Err(e) = result.await {
                tracing::warn!(plugin = %name, generation = stored.generation, "{e}; it keeps the ones it has");
                applied.generation = stored.generation;
            }
        });
    }
}
