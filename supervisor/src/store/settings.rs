//! Plugins' settings (`plugin_settings`), their generation, and the key their secrets are
//! sealed under (`secret_keys`): checked at start-up, rotated by `plugd secrets rotate`.

use super::audit::insert_event;
use super::plugins::insert_change;
use super::secrets::{self, KeySource, SecretKey};
use super::{now_ms, Store};
use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use serde_json::Value;
use sqlx::Row;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The key this worker seals and opens secrets with, and where it came from. When a secret
/// turns out to be sealed under another key (`plugd secrets rotate` ran meanwhile), a key from
/// a file is read again once, so a running worker follows a rotation without a restart.
#[derive(Debug)]
pub struct Keyring {
    key: ArcSwap<SecretKey>,
    source: KeySource,
}

impl Keyring {
    fn current(&self) -> Arc<SecretKey> {
        self.key.load_full()
    }

    /// The key whose id is `id`: the current one, or the file's after a rotation.
    fn for_id(&self, id: &str) -> anyhow::Result<Arc<SecretKey>> {
        let key = self.current();
        if key.id() == id {
            return Ok(key);
        }
        if let KeySource::File(path) = &self.source {
            let data_dir = path.parent().unwrap_or(Path::new("."));
            if let Ok(Some((fresh, _))) = secrets::load_key(data_dir) {
                if fresh.id() == id {
                    let fresh = Arc::new(fresh);
                    self.key.store(fresh.clone());
                    tracing::info!(key = id, "the secret key was rotated; using the new one");
                    return Ok(fresh);
                }
            }
        }
        bail!(
            "a secret is sealed under key {id}, but this worker's key ({}) is {}: give it the store's key",
            self.source,
            key.id()
        )
    }
}

/// One stored setting.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSetting {
    /// The value (a secret's opened).
    pub value: Value,
    /// Whether it is sealed at rest.
    pub secret: bool,
    /// When it was set.
    pub updated_ms: i64,
    /// Which token set it.
    pub updated_by: String,
}

/// A plugin's stored settings and their generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredSettings {
    /// Bumped by every change.
    pub generation: i64,
    /// What admins set, by name.
    pub values: BTreeMap<String, StoredSetting>,
}

impl StoredSettings {
    /// The values alone.
    pub fn plain(&self) -> BTreeMap<String, Value> {
        self.values
            .iter()
            .map(|(k, s)| (k.clone(), s.value.clone()))
            .collect()
    }
}

/// One change to write: a new value (sealed if `secret`), or `None` to remove it.
#[derive(Debug, Clone)]
pub struct SettingWrite {
    /// The setting's name.
    pub key: String,
    /// The new value, or none to return to the default.
    pub value: Option<Value>,
    /// Whether to seal it.
    pub secret: bool,
}

/// What a conditional write of settings did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsOutcome {
    /// No such plugin.
    Unknown,
    /// Written; the new generation.
    Changed(i64),
    /// Another change came first: the current generation.
    Conflict(i64),
}

fn context(plugin: &str, key: &str) -> String {
    format!("{plugin}/{key}")
}

impl Store {
    /// Settles the secret key at start-up: `PLUGD_SECRET_KEY` or the key file. Once the store
    /// holds secrets (it records the key's id then), the key must be the one they are sealed
    /// under; with no key given while it holds none, a key file is created (0600). A worker
    /// with a wrong key, or none while secrets exist, is refused here, naming the key it needs.
    pub async fn unlock_secrets(&mut self, data_dir: &Path) -> anyhow::Result<()> {
        let recorded = self.recorded_key().await?;
        let (key, source) = match (secrets::load_key(data_dir)?, &recorded) {
            (Some(found), _) => found,
            (None, Some((id, _))) => bail!(
                "the store's secrets are sealed under key {id}, and no key is given: set {} or put the key file at {}",
                secrets::KEY_ENV,
                data_dir.join(secrets::KEY_FILE).display()
            ),
            (None, None) => {
                let path = data_dir.join(secrets::KEY_FILE);
                let key = SecretKey::generate();
                secrets::write_key_file(&path, &key)?;
                tracing::info!(key = key.id(), "created the secret key file {}", path.display());
                (key, KeySource::File(path))
            }
        };
        if let Some((id, check)) = &recorded {
            if !key.matches(check) {
                bail!(
                    "the key from {source} (id {}) is not the key the store's secrets are sealed under (id {id}): give every worker the same key",
                    key.id()
                );
            }
        }
        self.keyring = Some(Arc::new(Keyring {
            key: ArcSwap::from_pointee(key),
            source,
        }));
        Ok(())
    }

    /// Records this worker's key as the store's before the first secret is sealed (another
    /// worker may have recorded its own first: then the keys must be the same).
    async fn record_key(&self, key: &SecretKey) -> anyhow::Result<()> {
        if self.recorded_key().await?.is_none() {
            sqlx::query(
                "INSERT INTO secret_keys (name, key_id, check_value) VALUES ('current', $1, $2)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(key.id())
            .bind(key.check_value())
            .execute(&self.pool)
            .await?;
        }
        let (id, check) = self
            .recorded_key()
            .await?
            .context("the secret key record vanished")?;
        if !key.matches(&check) {
            bail!(
                "the store's secrets are sealed under key {id}, but this worker's key ({}) is {}: give every worker the same key",
                self.keyring()?.source,
                key.id()
            );
        }
        Ok(())
    }

    async fn recorded_key(&self) -> anyhow::Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT key_id, check_value FROM secret_keys WHERE name = 'current'")
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get("key_id")?, r.try_get("check_value")?)),
            None => None,
        })
    }

    fn keyring(&self) -> anyhow::Result<&Keyring> {
        self.keyring
            .as_deref()
            .context("secrets are locked: this process was not given the secret key")
    }

    /// A plugin's stored settings, secrets opened.
    pub async fn settings(&self, plugin: &str) -> anyhow::Result<StoredSettings> {
        // One statement, so the generation and the values are of the same moment.
        let rows = sqlx::query(
            "SELECT p.settings_generation AS generation, s.key, s.value, s.secret, s.key_id,
                    s.updated_ms, s.updated_by
             FROM plugins p LEFT JOIN plugin_settings s ON s.plugin = p.name
             WHERE p.name = $1 ORDER BY s.key",
        )
        .bind(plugin)
        .fetch_all(&self.pool)
        .await?;
        let mut out = StoredSettings {
            generation: match rows.first() {
                Some(r) => r.try_get("generation")?,
                None => 0,
            },
            values: BTreeMap::new(),
        };
        for r in rows {
            // The plugin's row alone: it has no settings stored.
            let Some(key) = r.try_get::<Option<String>, _>("key")? else {
                continue;
            };
            let text: String = r.try_get("value")?;
            let secret = r.try_get::<i64, _>("secret")? != 0;
            let value = if secret {
                let id: Option<String> = r.try_get("key_id")?;
                let sealer = self.keyring()?.for_id(id.as_deref().unwrap_or(""))?;
                let plain = sealer
                    .open(&context(plugin, &key), &text)
                    .with_context(|| {
                        format!(
                            "the secret {plugin}/{key} does not open under key {}: it was altered",
                            sealer.id()
                        )
                    })?;
                serde_json::from_slice(&plain)?
            } else {
                serde_json::from_str(&text)?
            };
            out.values.insert(
                key,
                StoredSetting {
                    value,
                    secret,
                    updated_ms: r.try_get("updated_ms")?,
                    updated_by: r.try_get("updated_by")?,
                },
            );
        }
        Ok(out)
    }

    /// Writes a plugin's settings on behalf of `actor` in one transaction, with a `changes` row
    /// (every worker applies it) and an audit entry naming the keys (never a value). With
    /// `expected`, only if the settings' generation is still that one.
    pub async fn write_settings(
        &self,
        plugin: &str,
        writes: &[SettingWrite],
        actor: &str,
        expected: Option<i64>,
    ) -> anyhow::Result<SettingsOutcome> {
        let sealer = if writes.iter().any(|w| w.secret && w.value.is_some()) {
            let key = self.keyring()?.current();
            self.record_key(&key).await?;
            Some(key)
        } else {
            None
        };
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let updated = sqlx::query(
            "UPDATE plugins SET settings_generation = settings_generation + 1
             WHERE name = $1 AND COALESCE($2, settings_generation) = settings_generation",
        )
        .bind(plugin)
        .bind(expected)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let generation: Option<i64> =
            sqlx::query_scalar("SELECT settings_generation FROM plugins WHERE name = $1")
                .bind(plugin)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(generation) = generation else {
            return Ok(SettingsOutcome::Unknown);
        };
        if updated == 0 {
            return Ok(SettingsOutcome::Conflict(generation));
        }
        let (mut set, mut reset) = (Vec::new(), Vec::new());
        for w in writes {
            match &w.value {
                Some(value) => {
                    let json = serde_json::to_string(value)?;
                    let (text, key_id) = match (&sealer, w.secret) {
                        (Some(key), true) => (
                            key.seal(&context(plugin, &w.key), json.as_bytes()),
                            Some(key.id().to_owned()),
                        ),
                        _ => (json, None),
                    };
                    sqlx::query(
                        "INSERT INTO plugin_settings (plugin, key, value, secret, key_id, updated_ms, updated_by)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (plugin, key) DO UPDATE SET value = $3, secret = $4, key_id = $5,
                             updated_ms = $6, updated_by = $7",
                    )
                    .bind(plugin)
                    .bind(&w.key)
                    .bind(text)
                    .bind(i64::from(w.secret))
                    .bind(key_id)
                    .bind(now)
                    .bind(actor)
                    .execute(&mut *tx)
                    .await?;
                    set.push(if w.secret {
                        format!("{} (secret)", w.key)
                    } else {
                        w.key.clone()
                    });
                }
                None => {
                    sqlx::query("DELETE FROM plugin_settings WHERE plugin = $1 AND key = $2")
                        .bind(plugin)
                        .bind(&w.key)
                        .execute(&mut *tx)
                        .await?;
                    reset.push(w.key.clone());
                }
            }
        }
        insert_change(&mut tx, self.backend, plugin, "settings", now).await?;
        let mut detail = Vec::new();
        if !set.is_empty() {
            detail.push(format!("set {}", set.join(", ")));
        }
        if !reset.is_empty() {
            detail.push(format!("reset {}", reset.join(", ")));
        }
        let detail = format!("{}; generation {generation}", detail.join("; "));
        insert_event(&mut tx, Some(plugin), actor, "settings", &detail, now).await?;
        tx.commit().await?;
        Ok(SettingsOutcome::Changed(generation))
    }

    /// Seals every secret again under `new` and records `new` as the store's key, in one
    /// transaction; answers how many secrets were sealed again. The caller writes the new key
    /// where workers read it.
    pub async fn rotate_secrets(&self, new: &SecretKey, actor: &str) -> anyhow::Result<usize> {
        let keyring = self.keyring()?;
        let mut tx = self.pool.begin().await?;
        let rows =
            sqlx::query("SELECT plugin, key, value, key_id FROM plugin_settings WHERE secret = 1")
                .fetch_all(&mut *tx)
                .await?;
        let mut count = 0;
        for r in &rows {
            let (plugin, key, text): (String, String, String) =
                (r.try_get("plugin")?, r.try_get("key")?, r.try_get("value")?);
            let id: Option<String> = r.try_get("key_id")?;
            let old = keyring.for_id(id.as_deref().unwrap_or(""))?;
            let ctx = context(&plugin, &key);
            let plain = old
                .open(&ctx, &text)
                .with_context(|| format!("the secret {ctx} does not open: it was altered"))?;
            sqlx::query(
                "UPDATE plugin_settings SET value = $3, key_id = $4 WHERE plugin = $1 AND key = $2",
            )
            .bind(&plugin)
            .bind(&key)
            .bind(new.seal(&ctx, &plain))
            .bind(new.id())
            .execute(&mut *tx)
            .await?;
            count += 1;
        }
        sqlx::query(
            "INSERT INTO secret_keys (name, key_id, check_value) VALUES ('current', $1, $2)
             ON CONFLICT (name) DO UPDATE SET key_id = $1, check_value = $2",
        )
        .bind(new.id())
        .bind(new.check_value())
        .execute(&mut *tx)
        .await?;
        let detail = format!(
            "{count} secrets sealed again; key {} replaces {}",
            new.id(),
            keyring.current().id()
        );
        insert_event(&mut tx, None, actor, "secrets rotate", &detail, now_ms()).await?;
        tx.commit().await?;
        keyring.key.store(Arc::new(new.clone()));
        Ok(count)
    }
}
