//! The `plugin_kv` table: each plugin's own key-value store, with versions for
//! compare-and-set and optional expiry.

use super::{now_ms, Store};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::time::Duration;

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

    /// Writes `value` for `key`, expiring after `ttl` if given; returns the new version.
    pub async fn kv_set(
        &self,
        plugin: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> anyhow::Result<i64> {
        let now = now_ms();
        let expires = ttl.map(|t| now + t.as_millis() as i64);
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
        .fetch_one(&self.pool)
        .await?;
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

    /// A plugin's live keys starting with `prefix`, in key order, at most `limit`.
    pub async fn kv_list(
        &self,
        plugin: &str,
        prefix: &str,
        limit: i64,
    ) -> anyhow::Result<Vec<KvItem>> {
        let rows = sqlx::query(
            "SELECT key, value, version FROM plugin_kv
             WHERE plugin = $1 AND substr(key, 1, length($2)) = $2
               AND (expires_ms IS NULL OR expires_ms > $3)
             ORDER BY key LIMIT $4",
        )
        .bind(plugin)
        .bind(prefix)
        .bind(now_ms())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(kv_from_row).collect::<Result<_, _>>()?)
    }

    /// Writes `value` only if `key` is at version `expected` (`None`: only if absent).
    /// Returns whether it wrote and the key's version afterwards.
    pub async fn kv_cas(
        &self,
        plugin: &str,
        key: &str,
        expected: Option<i64>,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> anyhow::Result<(bool, Option<i64>)> {
        let now = now_ms();
        let expires = ttl.map(|t| now + t.as_millis() as i64);
        let mut tx = self.pool.begin().await?;
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

fn kv_from_row(row: &AnyRow) -> Result<KvItem, sqlx::Error> {
    Ok(KvItem {
        key: row.try_get("key")?,
        value: row.try_get("value")?,
        version: row.try_get("version")?,
    })
}
