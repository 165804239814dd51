//! The state store: what admins decided and what ran, in SQLite (the embedded default, one file
//! in the data directory, WAL) or PostgreSQL (`--database-url postgres://…`, for several
//! workers). One `Store` type serves both through sqlx's `Any` driver; the schema lives in
//! `migrations/sqlite` and `migrations/postgres` and is applied at start (`plugd migrate`
//! applies it alone). Queries are written once in the SQL both dialects share.

use crate::manifest::Manifest;
use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A boxed future that may move between threads.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded default.
    Sqlite,
    /// For several workers.
    Postgres,
}

/// The longest a caller waits for a connection: how soon an admin write gets its 503 when the
/// database is away.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A handle to the store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Per plugin, the migration files (name, sha256) this process found applied.
    verified: Arc<Mutex<HashMap<String, MigrationSums>>>,
}

/// A plugin as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginRecord {
    /// Unique name.
    pub name: String,
    /// Version from its manifest.
    pub version: String,
    /// Description from its manifest.
    pub description: String,
    /// Author from its manifest.
    pub author: String,
    /// Whether an admin wants it running.
    pub enabled: bool,
    /// Registered but no longer found on disk.
    pub missing: bool,
    /// Bumped by every change of its desired state.
    pub generation: i64,
    /// sha256 of the bundle it was installed from, if any.
    pub bundle_sha256: Option<String>,
}

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

/// One audit-log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    /// Increasing id (pagination cursor).
    pub id: i64,
    /// When, in Unix milliseconds.
    pub at_ms: i64,
    /// The plugin concerned, if any.
    pub plugin: Option<String>,
    /// Who: an admin token's name, or `plugd` for the supervisor itself.
    pub actor: String,
    /// What, such as `enable` or `install`.
    pub action: String,
    /// Details.
    pub detail: String,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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
    })
}

const PLUGIN_COLUMNS: &str =
    "name, version, description, author, enabled, missing, generation, bundle_sha256";

impl Store {
    /// Opens the store: PostgreSQL when `database_url` is given, else `plugd.db` in `data_dir`.
    /// Does not migrate; see [`Store::migrate`].
    pub async fn open(database_url: Option<&str>, data_dir: &Path) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let (url, backend) = match database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                (url.to_owned(), Backend::Postgres)
            }
            Some(url) => anyhow::bail!(
                "database URL {:?} is not supported: use postgres://… (or none for SQLite)",
                redact(url)
            ),
            None => (
                format!("sqlite://{}?mode=rwc", data_dir.join("plugd.db").display()),
                Backend::Sqlite,
            ),
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(ACQUIRE_TIMEOUT);
        if backend == Backend::Postgres {
            // sqlx checks a released connection with a ping that has no deadline; on one that
            // went silent (a partition, a host gone without a reset) that would hold its pool
            // slot for as long as the kernel keeps the socket. This bounded ping runs first;
            // a failure closes the connection without further I/O. A healthy connection gets
            // sqlx's ping as well (one more round trip per release, in the background).
            options = options.after_release(|conn, _| {
                Box::pin(async move {
                    match tokio::time::timeout(Duration::from_secs(2), sqlx::Connection::ping(conn))
                        .await
                    {
                        Ok(Ok(())) => Ok(true),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(sqlx::Error::PoolTimedOut),
                    }
                })
            });
        }
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            });
        }
        let pool = options
            .connect(&url)
            .await
            .with_context(|| format!("cannot open the {backend:?} store at {}", redact(&url)))?;
        Ok(Store {
            pool,
            backend,
            verified: Arc::default(),
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies plugd's own schema migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let result = match self.backend {
            Backend::Sqlite => sqlx::migrate!("../migrations/sqlite").run(&self.pool).await,
            Backend::Postgres => {
                sqlx::migrate!("../migrations/postgres")
                    .run(&self.pool)
                    .await
            }
        };
        result.context("cannot apply the store's schema migrations")
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> anyhow::Result<()> {
        // Bounded well below the pool's acquire timeout: a probe must answer quickly.
        bounded(Duration::from_secs(1), async {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .context("the store does not answer")?;
            Ok(())
        })
        .await
    }

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
    pub async fn installed(
        &self,
        m: &Manifest,
        sha256: &str,
        actor: &str,
        action: &str,
    ) -> anyhow::Result<PluginRecord> {
        self.register(m).await?;
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE plugins SET bundle_sha256 = $2, generation = generation + 1, updated_ms = $3 WHERE name = $1",
        )
        .bind(&m.name)
        .bind(sha256)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_change(&mut tx, self.backend, &m.name, action, now).await?;
        let detail = format!("version {} sha256 {sha256}", m.version);
        insert_event(&mut tx, Some(&m.name), actor, action, &detail, now).await?;
        tx.commit().await?;
        self.plugin(&m.name)
            .await?
            .context("the plugin vanished while it was being installed")
    }

    /// Forgets a plugin (uninstall), with an audit entry. Its migrations' records are kept, so a
    /// reinstall does not run them again. Returns false if it was not registered.
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
        let now = now_ms();
        insert_change(&mut tx, self.backend, name, "uninstall", now).await?;
        insert_event(&mut tx, Some(name), actor, "uninstall", "", now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Appends an audit-log entry.
    pub async fn record(
        &self,
        plugin: Option<&str>,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> anyhow::Result<()> {
        let mut conn = self.pool.acquire().await?;
        insert_event(&mut conn, plugin, actor, action, detail, now_ms()).await?;
        Ok(())
    }

    /// Audit-log entries, newest first: at most `limit`, older than `before` (an id) when
    /// given, of one plugin when given.
    pub async fn events(
        &self,
        plugin: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> anyhow::Result<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT id, at_ms, plugin, actor, action, detail FROM plugin_events
             WHERE ($1 IS NULL OR plugin = $1) AND ($2 IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3",
        )
        .bind(plugin)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(EventRecord {
                    id: row.try_get("id")?,
                    at_ms: row.try_get("at_ms")?,
                    plugin: row.try_get("plugin")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }

    /// Applies the plugin's `migrations/*.sql` in name order, each in its own transaction and
    /// recorded with its sha256. An applied migration whose file changed is refused; a failing
    /// one is rolled back and its error returned. Returns how many were applied now.
    ///
    /// A set of files this process already found applied is not checked again, so a plugin
    /// restarted while the database is away starts without it.
    pub fn migrate_plugin<'a>(
        &'a self,
        plugin: &'a str,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<usize, MigrationError>> {
        // Boxed as `Send` here, where the borrows are concrete: callers spawn this future.
        Box::pin(self.migrate_plugin_now(plugin, dir))
    }

    async fn migrate_plugin_now(&self, plugin: &str, dir: &Path) -> Result<usize, MigrationError> {
        let files = read_migrations(&dir.join("migrations")).map_err(MigrationError::fatal)?;
        if files.is_empty() {
            return Ok(0);
        }
        let sums: MigrationSums = files
            .iter()
            .map(|m| (m.id.clone(), m.checksum.clone()))
            .collect();
        if self.lock_verified().get(plugin) == Some(&sums) {
            return Ok(0);
        }
        let mut conn =
            self.pool.acquire().await.map_err(|e| {
                MigrationError::from_sqlx(format!("cannot reach the store: {e}"), &e)
            })?;
        // On PostgreSQL every worker starting this plugin gets here: one runs the migrations
        // under a cluster-wide advisory lock, the others wait for it, then find them applied.
        let lock_key = format!("plugd:migrate:{plugin}");
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
                .bind(&lock_key)
                .execute(&mut *conn)
                .await
                .map_err(|e| {
                    MigrationError::from_sqlx(format!("cannot take the migration lock: {e}"), &e)
                })?;
        }
        let result = apply_migrations(&mut conn, plugin, &files).await;
        if self.backend == Backend::Postgres {
            let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
                .bind(&lock_key)
                .execute(&mut *conn)
                .await;
        }
        if result.is_ok() {
            self.lock_verified().insert(plugin.to_owned(), sums);
        }
        result
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, HashMap<String, MigrationSums>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a plugin's migrations did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationError {
    /// What went wrong, naming the migration.
    pub message: String,
    /// The store could not be reached: trying again later may succeed. Otherwise the
    /// migrations themselves are wrong and this version of the plugin cannot run.
    pub transient: bool,
}

impl MigrationError {
    fn fatal(message: String) -> MigrationError {
        MigrationError {
            message,
            transient: false,
        }
    }

    fn from_sqlx(message: String, e: &sqlx::Error) -> MigrationError {
        MigrationError {
            message,
            transient: is_connection_error(e),
        }
    }
}

impl std::fmt::Display for MigrationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Runs a store call with a deadline. The pool bounds the wait for a connection, not a query
/// on one that went silent mid-way (a partition, a host gone without a reset); callers that
/// must carry on regardless wrap their calls in this.
pub async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| anyhow::anyhow!("the store did not answer within {limit:?}"))?
}

/// Whether a store error says the database could not be reached (see
/// [`is_connection_error`]).
pub fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|cause| cause.downcast_ref::<sqlx::Error>())
        .any(is_connection_error)
}

/// Whether `e` says the database could not be reached (rather than that a statement was
/// wrong): I/O, pool timeouts, and PostgreSQL's connection-exception (08) and
/// operator-intervention (57P) classes, which a server shutting down sends.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// A plugin's migration files as (file name, sha256), in order.
type MigrationSums = Vec<(String, String)>;

/// One migration file, read and summed.
struct MigrationFile {
    id: String,
    sql: String,
    checksum: String,
}

/// The `*.sql` files in `dir`, in name order; none when there is no such directory.
fn read_migrations(dir: &Path) -> Result<Vec<MigrationFile>, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let sql = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read migration {}: {e}", path.display()))?;
            Ok(MigrationFile {
                id: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                checksum: hex::encode(Sha256::digest(sql.as_bytes())),
                sql,
            })
        })
        .collect()
}

async fn apply_migrations(
    conn: &mut sqlx::AnyConnection,
    plugin: &str,
    files: &[MigrationFile],
) -> Result<usize, MigrationError> {
    use sqlx::Connection;
    let failed =
        |what: String| move |e: sqlx::Error| MigrationError::from_sqlx(format!("{what}: {e}"), &e);
    let mut applied = 0;
    for MigrationFile { id, sql, checksum } in files {
        let known: Option<String> = sqlx::query_scalar(
            "SELECT checksum FROM plugin_migrations WHERE plugin = $1 AND migration = $2",
        )
        .bind(plugin)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(failed("cannot read applied migrations".into()))?;
        match known {
            Some(sum) if sum == *checksum => continue,
            Some(sum) => {
                return Err(MigrationError::fatal(format!(
                    "migration {id} was applied with checksum {sum} but the file now has checksum {checksum}; applied migrations must not change"
                )))
            }
            None => {}
        }
        let mut tx = conn
            .begin()
            .await
            .map_err(failed("cannot start a transaction".into()))?;
        // Dropping the transaction rolls it back.
        (&mut *tx)
            .execute(sql.as_str())
            .await
            .map_err(failed(format!("migration {id} failed and was rolled back")))?;
        sqlx::query(
            "INSERT INTO plugin_migrations (plugin, migration, checksum, applied_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(plugin)
        .bind(id)
        .bind(checksum)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(failed(format!("cannot record migration {id}")))?;
        tx.commit()
            .await
            .map_err(failed(format!("cannot commit migration {id}")))?;
        applied += 1;
    }
    Ok(applied)
}

/// One worker as it last reported itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerRecord {
    /// Random id chosen at start.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id on that host.
    pub pid: i64,
    /// When it started, Unix milliseconds.
    pub started_ms: i64,
    /// Its last heartbeat, Unix milliseconds.
    pub seen_ms: i64,
    /// Each plugin's state on that worker: name → {state, generation}.
    pub plugins: serde_json::Value,
}

impl Store {
    /// Records this worker's heartbeat with the state of its plugins.
    pub async fn heartbeat(&self, worker: &WorkerRecord) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO workers (id, host, pid, started_ms, seen_ms, plugins) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET seen_ms = $5, plugins = $6",
        )
        .bind(&worker.id)
        .bind(&worker.host)
        .bind(worker.pid)
        .bind(worker.started_ms)
        .bind(now_ms())
        .bind(worker.plugins.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Workers seen within `fresh`; older rows are deleted (the worker stopped).
    pub async fn workers(&self, fresh: Duration) -> anyhow::Result<Vec<WorkerRecord>> {
        let cutoff = now_ms() - fresh.as_millis() as i64;
        sqlx::query("DELETE FROM workers WHERE seen_ms < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        let rows = sqlx::query(
            "SELECT id, host, pid, started_ms, seen_ms, plugins FROM workers ORDER BY started_ms, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let plugins: String = r.try_get("plugins")?;
                Ok(WorkerRecord {
                    id: r.try_get("id")?,
                    host: r.try_get("host")?,
                    pid: r.try_get("pid")?,
                    started_ms: r.try_get("started_ms")?,
                    seen_ms: r.try_get("seen_ms")?,
                    plugins: serde_json::from_str(&plugins).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Keeps a bundle's bytes under its sha256 (a no-op when already kept).
    pub async fn save_bundle(&self, sha256: &str, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO bundles (sha256, name, bytes, created_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(sha256)
        .bind(name)
        .bind(bytes)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A kept bundle's bytes.
    pub async fn bundle(&self, sha256: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT bytes FROM bundles WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The newest change version, and the plugins changed after `since`.
    pub async fn changes_since(&self, since: i64) -> anyhow::Result<(i64, Vec<String>)> {
        let rows =
            sqlx::query("SELECT version, plugin FROM changes WHERE version > $1 ORDER BY version")
                .bind(since)
                .fetch_all(&self.pool)
                .await?;
        let mut last = since;
        let mut plugins = Vec::new();
        for r in rows {
            last = last.max(r.try_get::<i64, _>("version")?);
            if let Some(p) = r.try_get::<Option<String>, _>("plugin")? {
                if !plugins.contains(&p) {
                    plugins.push(p);
                }
            }
        }
        Ok((last, plugins))
    }
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

/// Records a change of desired state; on PostgreSQL also queues a NOTIFY carrying only the
/// plugin's name (sent when the transaction commits; the table stays the truth).
async fn insert_change(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    plugin: &str,
    kind: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
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

async fn insert_event(
    conn: &mut sqlx::AnyConnection,
    plugin: Option<&str>,
    actor: &str,
    action: &str,
    detail: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO plugin_events (at_ms, plugin, actor, action, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(now)
    .bind(plugin)
    .bind(actor)
    .bind(action)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// A database URL with its password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
