//! The PostgreSQL schema: the migrations in `migrations/postgres/`, built in, applied in order at start
//! under an advisory lock (instances starting at once migrate once), each in a transaction of its own with
//! the new version; a database of a newer schema is refused. Also makes the database's instance id.

use tokio_postgres::error::SqlState;
use tracing::{info, warn};

use super::backend;
use crate::store::StoreError;

/// The schema this build writes: the number of the last migration.
pub const SCHEMA: u32 = 1;
/// The migrations, by the schema each brings the database to.
const MIGRATIONS: &[(u32, &str)] = &[(1, include_str!("../../../migrations/postgres/0001_init.sql"))];
/// The advisory lock held while migrating ("kichhoat" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b69_6368_686f_6174;

/// Brings the database to [`SCHEMA`] under the advisory lock; returns the database's instance id.
pub(super) async fn to_current(client: &mut tokio_postgres::Client) -> Result<String, StoreError> {
    let locked = match client.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})")).await {
        Ok(()) => true,
        // A PostgreSQL-compatible server without advisory locks (CockroachDB): migrate unlocked; the README
        // asks to start one instance alone there for a first start or an upgrade.
        Err(e) if matches!(e.code(), Some(c) if *c == SqlState::UNDEFINED_FUNCTION || *c == SqlState::FEATURE_NOT_SUPPORTED) =>
        {
            warn!(error = %e, "no advisory locks on this database: migrating without one");
            false
        }
        Err(e) => return Err(backend(e)),
    };
    let done = migrate_locked(client).await;
    if locked {
        let _ = client.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})")).await;
    }
    done
}

async fn migrate_locked(client: &mut tokio_postgres::Client) -> Result<String, StoreError> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS kichhoat_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        .await
        .map_err(backend)?;
    let found =
        match client.query_opt("SELECT value FROM kichhoat_meta WHERE key = 'schema'", &[]).await.map_err(backend)? {
            Some(row) => row
                .get::<_, String>(0)
                .parse::<u32>()
                .map_err(|e| StoreError::Corrupt { what: "schema version", why: e.to_string() })?,
            None => 0,
        };
    if found > SCHEMA {
        return Err(StoreError::NewerSchema { found, supported: SCHEMA });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        let tx = client.transaction().await.map_err(backend)?;
        tx.batch_execute(sql).await.map_err(|e| backend(format!("migration to schema {version}: {e}")))?;
        tx.execute(
            "INSERT INTO kichhoat_meta (key, value) VALUES ('schema', $1) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&version.to_string()],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        info!(schema = version, "postgres schema migrated");
    }
    let mut bytes = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    client
        .execute(
            "INSERT INTO kichhoat_meta (key, value) VALUES ('instance', $1) ON CONFLICT (key) DO NOTHING",
            &[&hex::encode(bytes)],
        )
        .await
        .map_err(backend)?;
    let row = client.query_one("SELECT value FROM kichhoat_meta WHERE key = 'instance'", &[]).await.map_err(backend)?;
    Ok(row.get(0))
}
