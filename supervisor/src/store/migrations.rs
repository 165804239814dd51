//! Plugins' own schema migrations (`plugin_migrations`): applied once per cluster, in name
//! order, each in its own transaction, recorded with its sha256.

use super::{is_connection_error, now_ms, Backend, Store};
use crate::error::Failure;
use sha2::{Digest, Sha256};
use sqlx::Executor;
use std::collections::HashMap;
use std::path::Path;

impl Store {
    /// Applies the plugin's `migrations/*.sql` in name order, each in its own transaction and
    /// recorded with its sha256. An applied migration whose file changed is refused; a failing
    /// one is rolled back and its error returned. Returns how many were applied now.
    ///
    /// A set of files this process already found applied is not checked again, so a plugin
    /// restarted while the database is away starts without it.
    pub async fn migrate_plugin(&self, plugin: &str, dir: &Path) -> Result<usize, Failure> {
        let files = read_migrations(&dir.join("migrations")).map_err(Failure::never)?;
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
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| from_sqlx(format!("cannot reach the store: {e}"), &e))?;
        // On PostgreSQL every worker starting this plugin gets here: one runs the migrations
        // under a cluster-wide advisory lock, the others wait for it, then find them applied.
        let lock_key = format!("plugd:migrate:{plugin}");
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
                .bind(&lock_key)
                .execute(&mut *conn)
                .await
                .map_err(|e| from_sqlx(format!("cannot take the migration lock: {e}"), &e))?;
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

/// A plugin's migration files as (file name, sha256), in order.
pub(super) type MigrationSums = Vec<(String, String)>;

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
) -> Result<usize, Failure> {
    use sqlx::Connection;
    let failed = |what: String| move |e: sqlx::Error| from_sqlx(format!("{what}: {e}"), &e);
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
                return Err(Failure::never(format!(
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

/// A failed statement of a plugin migration: the store being away is worth a retry once it is
/// back; a wrong migration is not.
fn from_sqlx(message: String, e: &sqlx::Error) -> Failure {
    if is_connection_error(e) {
        Failure::store_away(message)
    } else {
        Failure::never(message)
    }
}
