//! Discovery: bringing the set of plugins in line with the plugins directory (new ones start,
//! changed ones reload blue/green, removed ones stop), registering each in the store.

use super::state::PluginState;
use super::{program_stamp, Entry, Reconciler};
use crate::manifest;
use std::path::{Path, PathBuf};
use std::sync::Arc;

impl Reconciler {
    /// Brings the set of plugins in line with the plugins directory.
    pub(super) async fn rescan(&mut self, requested: bool) {
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
                    let entry = Entry::new(m, program, false, self.registry.feed());
                    entry.slot.set(PluginState::Disabled);
                    self.entries.insert(name.clone(), entry);
                }
                Some(entry) if !entry.enabled => {
                    entry.set_manifest(Arc::new(m));
                    entry.program = program;
                }
                None => {
                    self.entries.insert(
                        name.clone(),
                        Entry::new(m, program, true, self.registry.feed()),
                    );
                    self.start(&name);
                }
                Some(entry) => {
                    let changed = *entry.manifest != m || entry.program != program;
                    let was_removed = std::mem::replace(&mut entry.removed, false);
                    if changed || was_removed {
                        tracing::info!(plugin = %name, "manifest or program changed; reloading");
                        entry.set_manifest(Arc::new(m));
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
            watcher.watch_programs(
                self.entries
                    .values()
                    .flat_map(|e| e.manifest.watched_files()),
            );
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
}
