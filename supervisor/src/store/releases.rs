//! Releases: the kept versions of each plugin (`bundle_versions`, their bytes in `bundles`),
//! the stable version every worker runs (`plugins.bundle_sha256`), and the canary beside it
//! (`plugins.canary_*`). A rollback, a promotion and a canary's end are writes of the desired
//! state like any other: a `changes` row and an audit entry in one transaction, which every
//! worker follows.

use super::audit::insert_event;
use super::plugins::insert_change;
use super::{now_ms, PluginRecord, Store};
use crate::manifest::Manifest;
use anyhow::Context;
use sqlx::Row;

/// A bundle being installed: its sum and size, who installs it, and how many versions of the
/// plugin to keep.
#[derive(Debug, Clone, Copy)]
pub struct KeptBundle<'a> {
    /// sha256, hex.
    pub sha256: &'a str,
    /// Size in bytes.
    pub size: u64,
    /// The token's name.
    pub actor: &'a str,
    /// Versions kept per plugin; older ones are pruned (never the stable one or the canary).
    pub keep: u32,
}

/// The bundle a rollback or promotion makes stable.
#[derive(Debug, Clone, Copy)]
pub struct Release<'a> {
    /// sha256 of a kept bundle.
    pub sha256: &'a str,
    /// The version its manifest names.
    pub version: &'a str,
}

/// One kept version as the store has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    /// The version its manifest names.
    pub version: String,
    /// sha256 of the bundle.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Who installed it.
    pub installed_by: String,
    /// When, in Unix milliseconds.
    pub installed_ms: i64,
}

impl VersionRow {
    /// Whether `spec` names this version: its version string, or a prefix of at least 8
    /// digits of its sha256.
    pub fn is(&self, spec: &str) -> bool {
        self.version == spec || (spec.len() >= 8 && self.sha256.starts_with(spec))
    }
}

/// Adds (or refreshes) a version of `plugin` and prunes the oldest beyond `bundle.keep`.
pub(super) async fn keep_version(
    conn: &mut sqlx::AnyConnection,
    plugin: &str,
    version: &str,
    bundle: &KeptBundle<'_>,
    now: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO bundle_versions (plugin, sha256, version, size, installed_by, installed_ms)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (plugin, sha256) DO UPDATE SET version = $3, size = $4, installed_by = $5,
             installed_ms = $6",
    )
    .bind(plugin)
    .bind(bundle.sha256)
    .bind(version)
    .bind(i64::try_from(bundle.size).unwrap_or(i64::MAX))
    .bind(bundle.actor)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let kept: Vec<String> = sqlx::query_scalar(
        "SELECT sha256 FROM bundle_versions WHERE plugin = $1 ORDER BY installed_ms DESC, sha256",
    )
    .bind(plugin)
    .fetch_all(&mut *conn)
    .await?;
    let in_use = sqlx::query("SELECT bundle_sha256, canary_sha256 FROM plugins WHERE name = $1")
        .bind(plugin)
        .fetch_optional(&mut *conn)
        .await?;
    let in_use: Vec<String> = match in_use {
        Some(row) => [
            row.try_get::<Option<String>, _>("bundle_sha256")?,
            row.try_get::<Option<String>, _>("canary_sha256")?,
        ]
        .into_iter()
        .flatten()
        .collect(),
        None => Vec::new(),
    };
    for sha in kept
        .iter()
        .skip(bundle.keep.max(1) as usize)
        .filter(|sha| !in_use.contains(sha))
    {
        sqlx::query("DELETE FROM bundle_versions WHERE plugin = $1 AND sha256 = $2")
            .bind(plugin)
            .bind(sha)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "DELETE FROM bundles WHERE sha256 = $1
               AND NOT EXISTS (SELECT 1 FROM bundle_versions WHERE sha256 = $1)
               AND NOT EXISTS (SELECT 1 FROM plugins WHERE bundle_sha256 = $1 OR canary_sha256 = $1)",
        )
        .bind(sha)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn version_from_row(row: &sqlx::any::AnyRow) -> Result<VersionRow, sqlx::Error> {
    Ok(VersionRow {
        version: row.try_get("version")?,
        sha256: row.try_get("sha256")?,
        size: u64::try_from(row.try_get::<i64, _>("size")?).unwrap_or(0),
        installed_by: row.try_get("installed_by")?,
        installed_ms: row.try_get("installed_ms")?,
    })
}

impl Store {
    /// A plugin's kept versions, newest first.
    pub async fn versions(&self, plugin: &str) -> anyhow::Result<Vec<VersionRow>> {
        let rows = sqlx::query(
            "SELECT version, sha256, size, installed_by, installed_ms FROM bundle_versions
             WHERE plugin = $1 ORDER BY installed_ms DESC, sha256",
        )
        .bind(plugin)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(version_from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Makes kept bundle `to` the stable version of `plugin` on behalf of `actor`, ending
    /// any canary, with a `changes` row and an audit entry (`action`, `detail`). Returns the
    /// record after the change, or none if the plugin is not registered.
    pub async fn release(
        &self,
        plugin: &str,
        to: Release<'_>,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> anyhow::Result<Option<PluginRecord>> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let updated = sqlx::query(
            "UPDATE plugins SET bundle_sha256 = $2, version = $3, generation = generation + 1,
                 updated_ms = $4, canary_sha256 = NULL, canary_version = NULL,
                 canary_percent = NULL, canary_started_ms = NULL
             WHERE name = $1",
        )
        .bind(plugin)
        .bind(to.sha256)
        .bind(to.version)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        insert_change(&mut tx, self.backend, plugin, action, now).await?;
        insert_event(&mut tx, Some(plugin), actor, action, detail, now).await?;
        tx.commit().await?;
        self.plugin(plugin).await
    }

    /// Starts bundle `bundle` (of manifest `m`) as the canary of its installed plugin, serving
    /// `percent` of its HTTP requests, replacing any canary before it; kept as a version.
    pub async fn start_canary(
        &self,
        m: &Manifest,
        bundle: &KeptBundle<'_>,
        percent: u8,
    ) -> anyhow::Result<PluginRecord> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE plugins SET canary_sha256 = $2, canary_version = $3, canary_percent = $4,
                 canary_started_ms = $5, generation = generation + 1, updated_ms = $5
             WHERE name = $1",
        )
        .bind(&m.name)
        .bind(bundle.sha256)
        .bind(&m.version)
        .bind(i64::from(percent))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        keep_version(&mut tx, &m.name, &m.version, bundle, now).await?;
        insert_change(&mut tx, self.backend, &m.name, "canary", now).await?;
        let detail = format!(
            "version {} sha256 {} serves {percent} % of HTTP requests",
            m.version, bundle.sha256
        );
        insert_event(&mut tx, Some(&m.name), bundle.actor, "canary", &detail, now).await?;
        tx.commit().await?;
        self.plugin(&m.name)
            .await?
            .context("the plugin vanished while its canary was being started")
    }

    /// Ends `plugin`'s canary of bundle `sha256`, if it still runs, with a `changes` row and
    /// an audit entry. Returns whether this call ended it (several workers may try at once).
    pub async fn end_canary(
        &self,
        plugin: &str,
        sha256: &str,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let ended = sqlx::query(
            "UPDATE plugins SET canary_sha256 = NULL, canary_version = NULL,
                 canary_percent = NULL, canary_started_ms = NULL,
                 generation = generation + 1, updated_ms = $3
             WHERE name = $1 AND canary_sha256 = $2",
        )
        .bind(plugin)
        .bind(sha256)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if ended {
            insert_change(&mut tx, self.backend, plugin, action, now).await?;
            insert_event(&mut tx, Some(plugin), actor, action, detail, now).await?;
        }
        tx.commit().await?;
        Ok(ended)
    }
}
