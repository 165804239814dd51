//! The state store: what admins decided and what ran, in SQLite (the embedded default, one file
//! in the data directory, WAL) or PostgreSQL (`--database-url postgres://…`, for several
//! workers). One `Store` type serves both through sqlx's `Any` driver; the schema lives in
//! `migrations/sqlite` and `migrations/postgres` and is applied at start (`plugd migrate`
//! applies it alone). Queries are written once in the SQL both dialects share.
//!
//! One file per table family: [`plugins`] (registrations and the `changes` feed), [`audit`],
//! [`migrations`] (plugins' own schema migrations), [`workers`], [`bundles`], [`releases`] (kept versions, rollback, canaries), [`kv`], and
//! [`settings`] (plugins' settings, with [`secrets`]: the key their secret values are sealed
//! under).

pub mod audit;
pub mod bundles;
pub mod kv;
pub mod migrations;
pub mod plugins;
pub mod releases;
pub mod secrets;
pub mod settings;
pub mod workers;

pub use audit::EventRecord;
pub use kv::KvItem;
pub use plugins::{Changed, PluginRecord, SetOutcome, CHANNEL};
pub use releases::{KeptBundle, Release, VersionRow};
pub use settings::{SettingWrite, SettingsOutcome, StoredSettings};
pub use workers::WorkerRecord;

use anyhow::Context;
use serde::Serialize;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    verified: Arc<Mutex<HashMap<String, migrations::MigrationSums>>>,
    /// The key secrets are sealed under, once [`Store::unlock_secrets`] settled it.
    keyring: Option<Arc<settings::Keyring>>,
}

/// Now, in Unix milliseconds, as the store's columns keep it.
fn now_ms() -> i64 {
    i64::try_from(plugd_protocol::time::now_unix_ms()).unwrap_or(i64::MAX)
}

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
            keyring: None,
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

    /// Closes the pool: every later call fails.
    #[cfg(test)]
    pub async fn close(&self) {
        self.pool.close().await;
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
