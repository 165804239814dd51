//! Bundles from the store: a bundle installed through any worker is kept in the store by its
//! sha256; each worker unpacks it (after checking the sum), or removes a plugin uninstalled
//! elsewhere.

use super::Reconciler;
use crate::manifest::bundle;
use crate::store::PluginRecord;

impl Reconciler {
    /// Makes the local copy of `name`'s bundle match the store: unpacks a bundle installed
    /// through another worker (after checking its sha256), removes one uninstalled elsewhere.
    /// Returns whether the plugins directory changed.
    pub(super) async fn sync_bundle(&self, name: &str, record: Option<&PluginRecord>) -> bool {
        let dir = self.plugins_dir.join(name);
        let local = bundle::installed_sha256(&dir);
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
                let got = bundle::sha256(&bytes);
                if got != want {
                    tracing::error!(
                        plugin = name,
                        "bundle checksum mismatch: expected {want}, got {got}; not running it"
                    );
                    return false;
                }
                let plugins_dir = self.plugins_dir.clone();
                let placed =
                    tokio::task::spawn_blocking(move || bundle::place(&bytes, &want, &plugins_dir))
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
                let (plugins_dir, owned) = (self.plugins_dir.clone(), name.to_owned());
                let removed = tokio::task::spawn_blocking(move || {
                    bundle::remove_installed(&plugins_dir, &dir, &owned)
                })
                .await;
                match removed {
                    Ok(Ok(())) => {
                        tracing::info!(
                            plugin = name,
                            "uninstalled through another worker; removed"
                        );
                        true
                    }
                    Ok(Err(e)) => {
                        tracing::error!(plugin = name, "cannot remove the uninstalled plugin: {e}");
                        false
                    }
                    Err(e) => {
                        tracing::error!(plugin = name, "cannot remove the uninstalled plugin: {e}");
                        false
                    }
                }
            }
            _ => false,
        }
    }

    /// Unpacks every bundle the store knows that this worker lacks (a worker joining later).
    pub(super) async fn sync_all_bundles(&self) {
        if let Ok(records) = self.store.plugins().await {
            for record in records.iter().filter(|r| r.bundle_sha256.is_some()) {
                self.sync_bundle(&record.name, Some(record)).await;
            }
        }
    }
}
