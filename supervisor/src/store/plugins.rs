//! The `plugins` table (what is installed and whether an admin wants it running) and the
//! `changes` feed every worker follows.

use super::audit::insert_event;
use super::{now_ms, Backend, Store};
use crate::manifest::Manifest;
use anyhow::Context;
use sqlx::any::AnyRow;
use sqlx::Row;

/// A plugin as the store knows it (the admin API's type: the record is what admins see).
pub use plugd_api::PluginRecord;

/// What a conditional write of the desired state did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetOutcome {
    /// No such plugin.
    Unknown,
    /// It already was in that state; nothing changed.
    Unchanged(PluginRecord),
    /// Written; the record after the change.
    Changed(PluginRecord),
    /// Another write came first: the generation was not the expected one.
    Conflict(PluginRecord),
}

fn plugin_from_row(row: &AnyRow) -> Result<PluginRecord, sqlx::Error> {
    Ok(PluginRecord {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        description: row.try_get("description")?,
        author: row.try_get("author")?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        missing: row.try_get::<i64, _>("missing")? != 0,
        generation: row.try_get("generation")?,
        bundle_sha256: row.try_get("bundle_sha256")?,
        settings_generation: row.try_get("settings_generation")?,
        canary: match row.try_get::<Option<String>, _>("canary_sha256")? {
            Some(sha256) => Some(plugd_api::CanaryInfo {
                sha256,
                version: row
                    .try_get::<Option<String>, _>("canary_version")?
                    .unwrap_or_default(),
                percent: u8::try_from(
                    row.try_get::<Option<i64>, _>("canary_percent")?
                        .unwrap_or(0),
                )
                .unwrap_or(0),
                started_ms: row
                    .try_get::<Option<i64>, _>("canary_started_ms")?
                    .unwrap_or(0),
            }),
            None => None,
        },
    })
}

const PLUGIN_COLUMNS: &str = "name, version, description, author, enabled, missing, generation, \
     bundle_sha256, settings_generation, canary_sha256, canary_version, canary_percent, \
     canary_started_ms";

impl Store {
    /// Registers a discovered plugin (enabled if new) and refreshes what its manifest says;
    /// an admin's enabled flag is kept. Returns the record.
    pub async fn register(&self, m: &Manifest) -> anyhow::Result<PluginRecord> {
        let now = now_ms();
        let sql = format!(
            "INSERT INTO plugins (name, version, description, author, enabled, missing, generation, created_ms, updated_ms)
             VALUES ($1, $2, $3, $4, 1, 0, 1, $5, $5)
             ON CONFLICT (name) DO UPDATE SET version = $2, description = $3, author = $4,
                 missing = 0, updated_ms = $5
             RETURNING {PLUGIN_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(&m.name)
            .bind(&m.version)
            .bind(&m.description)
            .bind(&m.author)
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .with_context(|| format!("cannot register plugin {}", m.name))?;
        Ok(plugin_from_row(&row)?)
    }

    /// Marks every registered plugin not in `present` as missing (they are kept, not deleted).
    pub async fn mark_missing(&self, present: &[String]) -> anyhow::Result<Vec<String>> {
        let mut newly = Vec::new();
        for p in self.plugins().await? {
            if !p.missing && !present.contains(&p.name) {
                sqlx::query("UPDATE plugins SET missing = 1, updated_ms = $2 WHERE name = $1")
                    .bind(&p.name)
                    .bind(now_ms())
                    .execute(&self.pool)
                    .await?;
                newly.push(p.name);
            }
        }
        Ok(newly)
    }

    /// One plugin's record.
    pub async fn plugin(&self, name: &str) -> anyhow::Result<Option<PluginRecord>> {
        let mut conn = self.pool.acquire().await?;
        read_plugin(&mut conn, name).await
    }

    /// Every registered plugin, by name.
    pub async fn plugins(&self) -> anyhow::Result<Vec<PluginRecord>> {
        let sql = format!("SELECT {PLUGIN_COLUMNS} FROM plugins ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(plugin_from_row).collect::<Result<_, _>>()?)
    }

    /// Sets a plugin's enabled flag on behalf of `actor`, with a `changes` row and an audit
    /// entry, in one transaction. With `expected`, the write only happens if the plugin's
    /// generation is still that one (no lost updates between admins or workers).
    pub async fn set_enabled(
        &self,
        name: &str,
        enabled: bool,
        actor: &str,
        expected: Option<i64>,
    ) -> anyhow::Result<SetOutcome> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        // One conditional UPDATE, so two concurrent writers cannot both pass the check.
        let updated = sqlx::query(
            "UPDATE plugins SET enabled = $2, generation = generation + 1, updated_ms = $3
             WHERE name = $1 AND enabled <> $2 AND COALESCE($4, generation) = generation",
        )
        .bind(name)
        .bind(i64::from(enabled))
        .bind(now)
        .bind(expected)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 1 {
            let action = if enabled { "enable" } else { "disable" };
            insert_change(&mut tx, self.backend, name, action, now).await?;
            insert_event(&mut tx, Some(name), actor, action, "", now).await?;
        }
        // Read inside the transaction: the generation reported is the one this write made,
        // not one a later writer made after the commit.
        let record = read_plugin(&mut tx, name).await?;
        tx.commit().await?;
        let Some(record) = record else {
            return Ok(SetOutcome::Unknown);
        };
        Ok(if updated == 1 {
            SetOutcome::Changed(record)
        } else if expected.is_some_and(|g| g != record.generation) {
            SetOutcome::Conflict(record)
        } else {
            SetOutcome::Unchanged(record)
        })
    }

    /// Records the bundle a plugin was installed from, with an audit entry and a `changes`
    /// row, after registering what its manifest says.
    /// The bundle joins the plugin's kept versions (the oldest beyond `keep` are pruned), and a
    /// canary that ran is ended: the installed bundle is the stable version now.
    pub async fn installed(
        &self,
        m: &Manifest,
        bundle: &super::releases::KeptBundle<'_>,
        action: &str,
    ) -> anyhow::Result<PluginRecord> {
        let (sha256, actor) = (bundle.sha256, bundle.actor);
        self.register(m).await?;
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE plugins SET bundle_sha256 = $2, generation = generation + 1, updated_ms = $3,
                 canary_sha256 = NULL, canary_version = NULL, canary_percent = NULL,
                 canary_started_ms = NULL
             WHERE name = $1",
        )
        .bind(&m.name)
        .bind(sha256)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        super::releases::keep_version(&mut tx, &m.name, &m.version, bundle, now).await?;
        insert_change(&mut tx, self.backend, &m.name, action, now).await?;
        let detail = format!("version {} sha256 {sha256}", m.version);
        insert_event(&mut tx, Some(&m.name), actor, action, &detail, now).await?;
        tx.commit().await?;
        self.plugin(&m.name)
            .await?
            .context("the plugin vanished while it was being installed")
    }

    /// Forgets a plugin (uninstall) and its settings, with an audit entry. Its migrations'
    /// records are kept, so a reinstall does not run them again. Returns false if it was not registered.
    pub async fn forget(&self, name: &str, actor: &str) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query("DELETE FROM plugins WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            return Ok(false);
        }
        // Its settings go with it: an uninstalled plugin's secrets are not kept.
        sqlx::query("DELETE FROM plugin_settings WHERE plugin = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let now = now_ms();
        insert_change(&mut tx, self.backend, name, "uninstall", now).await?;
        insert_event(&mut tx, Some(name), actor, "uninstall", "", now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The newest change version.
    pub async fn newest_change(&self) -> anyhow::Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS newest FROM changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("newest")?)
    }

    /// The newest change version, and each plugin changed after `since` with its record as
    /// it is now (none when it is no longer registered), in the order of their first change.
    /// One query: a worker that hears of a change needs both.
    pub async fn changes_since(&self, since: i64) -> anyhow::Result<(i64, Vec<Changed>)> {
        static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sql = SQL.get_or_init(|| {
            let columns: Vec<String> = PLUGIN_COLUMNS
                .split(',')
                .map(|c| format!("p.{}", c.trim()))
                .collect();
            format!(
                "SELECT c.version AS change, c.plugin AS changed, {} \
                 FROM changes c LEFT JOIN plugins p ON p.name = c.plugin \
                 WHERE c.version > $1 ORDER BY c.version",
                columns.join(", ")
            )
        });
        let rows = sqlx::query(sql).bind(since).fetch_all(&self.pool).await?;
        let mut last = since;
        let mut plugins: Vec<Changed> = Vec::new();
        for r in rows {
            last = last.max(r.try_get::<i64, _>("change")?);
            let Some(name) = r.try_get::<Option<String>, _>("changed")? else {
                continue;
            };
            if plugins.iter().any(|c| c.name == name) {
                continue;
            }
            let record = match r.try_get::<Option<String>, _>("name")? {
                Some(_) => Some(plugin_from_row(&r)?),
                None => None,
            };
            plugins.push(Changed { name, record });
        }
        Ok((last, plugins))
    }
}

/// A plugin named by a change, with its record as read with the change.
#[derive(Debug, Clone)]
pub struct Changed {
    /// The plugin's name.
    pub name: String,
    /// Its record (none when it is no longer registered).
    pub record: Option<PluginRecord>,
}

/// The channel on which PostgreSQL workers hear of changes.
pub const CHANNEL: &str = "plugd_changes";

/// One plugin's row, on any connection (a transaction's included).
async fn read_plugin(
    conn: &mut sqlx::AnyConnection,
    name: &str,
) -> anyhow::Result<Option<PluginRecord>> {
    let sql = format!("SELECT {PLUGIN_COLUMNS} FROM plugins WHERE name = $1");
    let row = sqlx::query(&sql)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.as_ref().map(plugin_from_row).transpose()?)
}

/// The advisory lock that orders writers of `changes` (an arbitrary constant, "plugd chg").
const CHANGES_LOCK: i64 = 0x706c_7567_6443_6867;

/// Records a change of desired state; on PostgreSQL also queues a NOTIFY carrying only the
/// plugin's name (sent when the transaction commits; the table stays the truth).
///
/// On PostgreSQL the writer first takes a transaction-scoped advisory lock, so change versions
/// commit in the order they were drawn: without it, version 6 could commit before version 5
/// and a worker that read 6 would move its cursor past 5 and never apply it. Every caller
/// writes nothing but its audit entry after this, so the lock is held briefly and no writer
/// waits for it while another waits for one of its rows.
pub(super) async fn insert_change(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    plugin: &str,
    kind: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CHANGES_LOCK)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("INSERT INTO changes (at_ms, plugin, kind) VALUES ($1, $2, $3)")
        .bind(now)
        .bind(plugin)
        .bind(kind)
        .execute(&mut *conn)
        .await?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(plugin)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
