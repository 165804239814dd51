//! The `plugin_kv` table: each plugin's own key-value store, with versions for
//! compare-and-set and optional expiry.
//!
//! A plugin's store is bounded by a [`KvQuota`] (keys and bytes of values), checked on every
//! write; a write that would go past it fails with [`OverQuota`]. Expired entries are removed
//! when their plugin writes, so they never count against it for long. A listing stops at a
//! byte budget as well as a count, reading rows one at a time, so it never holds more than
//! the budget and one value.

use super::{now_ms, Store};
use futures_util::TryStreamExt;
use sqlx::any::AnyRow;
use sqlx::Row;
use std::time::Duration;

/// How much one plugin may keep in its key-value store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvQuota {
    /// Most live keys.
    pub keys: i64,
    /// Most bytes of live values.
    pub bytes: i64,
}

/// A write refused because it would take the plugin past its [`KvQuota`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OverQuota(pub String);

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPage {
    /// The entries, in key order.
    pub items: Vec<KvItem>,
    /// More entries match than the page holds.
    pub more: bool,
}

/// One stored value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvItem {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Bumped by every write.
    pub version: i64,
}

impl Store {
    /// A plugin's value for `key`, unless absent or expired.
    pub async fn kv_get(&self, plugin: &str, key: &str) -> anyhow::Result<Option<KvItem>> {
        let row = sqlx::query(
            "SELECT key, value, version FROM plugin_kv
             WHERE plugin = $1 AND key = $2 AND (expires_ms IS NULL OR expires_ms > $3)",
        )
        .bind(plugin)
        .bind(key)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| kv_from_row(&r)).transpose()?)
    }

    /// Writes `value` for `key`, expiring after `ttl` if given; returns the new version. Fails
    /// with [`OverQuota`] when the write would take the plugin past `quota`.
    pub async fn kv_set(
        &self,
        plugin: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        quota: KvQuota,
    ) -> anyhow::Result<i64> {
        let now = now_ms();
        let expires = ttl.map(|t| now + t.as_millis() as i64);
        let mut tx = self.pool.begin().await?;
        check_quota(&mut tx, plugin, key, value.len(), quota, now).await?;
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO plugin_kv (plugin, key, value, version, expires_ms) VALUES ($1, $2, $3, 1, $4)
             ON CONFLICT (plugin, key) DO UPDATE SET value = $3, expires_ms = $4,
                 version = plugin_kv.version + 1
             RETURNING version",
        )
        .bind(plugin)
        .bind(key)
        .bind(value)
        .bind(expires)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Deletes `key`; true if it existed (and had not expired).
    pub async fn kv_delete(&self, plugin: &str, key: &str) -> anyhow::Result<bool> {
        let live = self.kv_get(plugin, key).await?.is_some();
        sqlx::query("DELETE FROM plugin_kv WHERE plugin = $1 AND key = $2")
            .bind(plugin)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(live)
    }

    /// A plugin's live keys starting with `prefix` (and after `after`, if given), in key
    /// order: at most `limit` entries, and no more once their keys and values reach `budget`
    /// bytes (at least one entry is always listed).
    pub async fn kv_list(
        &self,
        plugin: &str,
        prefix: &str,
        after: Option<&str>,
        limit: i64,
        budget: usize,
    ) -> anyhow::Result<KvPage> {
        let sql = if after.is_some() {
            "SELECT key, value, version FROM plugin_kv
             WHERE plugin = $1 AND substr(key, 1, length($2)) = $2
               AND (expires_ms IS NULL OR expires_ms > $3) AND key > $5
             ORDER BY key LIMIT $4"
        } else {
            "SELECT key, value, version FROM plugin_kv
             WHERE plugin = $1 AND substr(key, 1, length($2)) = $2
               AND (expires_ms IS NULL OR expires_ms > $3)
             ORDER BY key LIMIT $4"
        };
        let mut query = sqlx::query(sql)
            .bind(plugin)
            .bind(prefix)
            .bind(now_ms())
            .bind(limit.saturating_add(1));
        if let Some(after) = after {
            query = query.bind(after);
        }
        let mut rows = query.fetch(&self.pool);
        let mut page = KvPage {
            items: Vec::new(),
            more: false,
        };
        let mut used = 0usize;
        while let Some(row) = rows.try_next().await? {
            let item = kv_from_row(&row)?;
            let size = item.key.len() + item.value.len();
            let full = page.items.len() as i64 >= limit || used + size > budget;
            if full && !page.items.is_empty() {
                page.more = true;
                break;
            }
            used += size;
            page.items.push(item);
        }
        Ok(page)
    }

    /// Writes `value` only if `key` is at version `expected` (`None`: only if absent).
    /// Returns whether it wrote and the key's version afterwards. Fails with [`OverQuota`]
    /// when the write would take the plugin past `quota`.
    pub async fn kv_cas(
        &self,
        plugin: &str,
        key: &str,
        expected: Option<i64>,
        value: &[u8],
        ttl: Option<Duration>,
        quota: KvQuota,
    ) -> anyhow::Result<(bool, Option<i64>)> {
        let now = now_ms();
        let expires = ttl.map(|t| now + t.as_millis() as i64);
        let mut tx = self.pool.begin().await?;
        check_quota(&mut tx, plugin, key, value.len(), quota, now).await?;
        // An expired value counts as absent.
        sqlx::query(
            "DELETE FROM plugin_kv WHERE plugin = $1 AND key = $2 AND expires_ms IS NOT NULL AND expires_ms <= $3",
        )
        .bind(plugin)
        .bind(key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let written = match expected {
            Some(version) => sqlx::query(
                "UPDATE plugin_kv SET value = $4, expires_ms = $5, version = version + 1
                 WHERE plugin = $1 AND key = $2 AND version = $3",
            )
            .bind(plugin)
            .bind(key)
            .bind(version)
            .bind(value)
            .bind(expires)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            None => sqlx::query(
                "INSERT INTO plugin_kv (plugin, key, value, version, expires_ms) VALUES ($1, $2, $3, 1, $4)
                 ON CONFLICT (plugin, key) DO NOTHING",
            )
            .bind(plugin)
            .bind(key)
            .bind(value)
            .bind(expires)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        };
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM plugin_kv WHERE plugin = $1 AND key = $2")
                .bind(plugin)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok((written == 1, version))
    }
}

/// Removes the plugin's expired entries, then refuses a write of `len` bytes to `key` that would
/// take the plugin past `quota` (the key's current value does not count: it is replaced).
async fn check_quota(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    plugin: &str,
    key: &str,
    len: usize,
    quota: KvQuota,
    now: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "DELETE FROM plugin_kv WHERE plugin = $1 AND expires_ms IS NOT NULL AND expires_ms <= $2",
    )
    .bind(plugin)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let row = sqlx::query(
        "SELECT COUNT(*) AS keys, COALESCE(SUM(LENGTH(value)), 0) AS bytes FROM plugin_kv
         WHERE plugin = $1 AND key <> $2",
    )
    .bind(plugin)
    .bind(key)
    .fetch_one(&mut **tx)
    .await?;
    let keys: i64 = row.try_get("keys")?;
    let bytes: i64 = row.try_get("bytes")?;
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    if keys + 1 > quota.keys {
        return Err(OverQuota(format!(
            "the plugin's key-value store is full: it holds {keys} other keys and the quota is {} keys",
            quota.keys
        ))
        .into());
    }
    if bytes.saturating_add(len) > quota.bytes {
        return Err(OverQuota(format!(
            "the plugin's key-value store is full: {bytes} bytes in other keys plus {len} would pass the quota of {} bytes",
            quota.bytes
        ))
        .into());
    }
    Ok(())
}

fn kv_from_row(row: &AnyRow) -> Result<KvItem, sqlx::Error> {
    Ok(KvItem {
        key: row.try_get("key")?,
        value: row.try_get("value")?,
        version: row.try_get("version")?,
    })
}
