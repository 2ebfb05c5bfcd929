//! PostgreSQL tables and migrations: the version in `schema_version`, each migration one
//! transaction, serialised between collectors that start together by an advisory lock.

use tokio_postgres::Client;

use super::pg_error;
use crate::store::StoreError;

/// The advisory lock that serialises migrations between collectors ("SOS" in ASCII).
const MIGRATION_LOCK: i64 = 0x534f53;

/// The migrations, in order; the schema's version is how many have run.
const MIGRATIONS: &[&str] = &[
    // Version 1: alerts (once by alert id) and their outbox with leases.
    "CREATE TABLE alerts (
        alert_id TEXT PRIMARY KEY,
        received_at_ms BIGINT NOT NULL,
        triggered_at BIGINT NOT NULL,
        test BOOLEAN NOT NULL,
        \"user\" TEXT NOT NULL,
        host TEXT NOT NULL,
        ip TEXT NOT NULL,
        location TEXT NOT NULL,
        message TEXT NOT NULL,
        agent TEXT NOT NULL,
        source TEXT NOT NULL,
        key_id TEXT NOT NULL,
        agent_id TEXT,
        agent_name TEXT,
        agent_host TEXT,
        site TEXT,
        cancelled_at_ms BIGINT,
        cancel_reason TEXT
     );
     CREATE INDEX alerts_received ON alerts (received_at_ms);
     -- One job per alert, channel and kind ('alert' or 'cancel'). A claim sets lease_id (from
     -- outbox_leases) and lease_until (the database's clock); only the holder of lease_id
     -- records the outcome; after lease_until anyone may claim it again.
     CREATE TABLE outbox (
        id BIGSERIAL PRIMARY KEY,
        alert_id TEXT NOT NULL REFERENCES alerts (alert_id),
        channel TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at_ms BIGINT NOT NULL,
        next_attempt_at_ms BIGINT NOT NULL,
        delivered_at_ms BIGINT,
        last_error TEXT,
        lease_id BIGINT,
        lease_until TIMESTAMPTZ,
        UNIQUE (alert_id, channel, kind)
     );
     CREATE INDEX outbox_due ON outbox (channel, state, next_attempt_at_ms);
     CREATE SEQUENCE outbox_leases;",
];

/// The schema version this collector writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Bring the database's schema up to [`VERSION`], one transaction per migration.
///
/// # Errors
/// If a migration fails (it is rolled back), or the database's schema is newer than this
/// collector knows (a newer collector migrated it: this one must not write on it).
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .await
        .or_else(|e| {
            // Two collectors creating it at the same moment: one of them loses the race, harmlessly.
            if e.as_db_error().is_some_and(|d| d.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(pg_error)?;
    loop {
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg_error)?;
        let version: i64 =
            tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[]).await.map_err(pg_error)?.get(0);
        if version > VERSION {
            return Err(StoreError::Postgres(format!(
                "the database's schema is version {version}, newer than this collector knows ({VERSION}): \
                 upgrade this collector"
            )));
        }
        if version == VERSION {
            return Ok(());
        }
        tx.batch_execute(MIGRATIONS[version as usize])
            .await
            .map_err(|e| StoreError::Postgres(format!("cannot migrate the schema to version {}: {e}", version + 1)))?;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&(version + 1)]).await.map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        tracing::info!(version = version + 1, "PostgreSQL schema migrated");
    }
}
