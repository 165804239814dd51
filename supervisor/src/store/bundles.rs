//! The `bundles` table: installed bundles kept by sha256, so every worker unpacks the same bytes.

use super::{now_ms, Store};

impl Store {
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
}
