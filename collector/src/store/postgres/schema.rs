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
    // Version 2: the rest of the SQLite store's tables, mirrored one to one (same tables, same
    // columns, INTEGER as BIGINT, 0/1 flags as BIGINT too): the responder loop (the outbox's
    // kinds, tiers and audiences; responses, the timeline, escalation deadlines, sender notices),
    // presence, the agent registry, the console, acknowledge links.
    "ALTER TABLE outbox DROP CONSTRAINT outbox_alert_id_channel_kind_key;
     ALTER TABLE outbox ADD COLUMN tier BIGINT NOT NULL DEFAULT 1;
     ALTER TABLE outbox ADD COLUMN mentions TEXT NOT NULL DEFAULT '';
     ALTER TABLE outbox ADD COLUMN recipients TEXT NOT NULL DEFAULT '';
     ALTER TABLE outbox ADD COLUMN detail TEXT NOT NULL DEFAULT '';
     ALTER TABLE outbox ADD CONSTRAINT outbox_job UNIQUE (alert_id, channel, kind, tier);
     ALTER TABLE outbox ADD CONSTRAINT outbox_kind
        CHECK (kind IN ('alert', 'cancel', 'reminder', 'acknowledged', 'resolved'));
     ALTER TABLE outbox ADD CONSTRAINT outbox_state CHECK (state IN ('pending', 'delivered', 'failed', 'stopped'));
     CREATE TABLE responses (
        alert_id           TEXT PRIMARY KEY REFERENCES alerts (alert_id),
        state              TEXT NOT NULL
                           CHECK (state IN ('received', 'notified', 'acknowledged', 'resolved', 'cancelled', 'checked')),
        seq                BIGINT NOT NULL DEFAULT 1,
        tier               BIGINT NOT NULL DEFAULT 0,
        reminder_seq       BIGINT NOT NULL DEFAULT 0,
        by_responder       TEXT NOT NULL DEFAULT '',
        note               TEXT NOT NULL DEFAULT '',
        outcome            TEXT NOT NULL DEFAULT '',
        responders         TEXT NOT NULL DEFAULT '',
        acknowledged_at_ms BIGINT,
        changed_at_ms      BIGINT NOT NULL
     );
     CREATE INDEX responses_recent ON responses (changed_at_ms);
     CREATE TABLE alert_events (
        id       BIGSERIAL PRIMARY KEY,
        alert_id TEXT NOT NULL REFERENCES alerts (alert_id),
        at_ms    BIGINT NOT NULL,
        kind     TEXT NOT NULL,
        who      TEXT NOT NULL,
        via      TEXT NOT NULL,
        note     TEXT NOT NULL
     );
     CREATE INDEX alert_events_alert ON alert_events (alert_id, id);
     CREATE TABLE escalations (
        alert_id  TEXT PRIMARY KEY REFERENCES alerts (alert_id),
        next_tier BIGINT NOT NULL,
        set_at_ms BIGINT NOT NULL,
        due_at_ms BIGINT NOT NULL
     );
     CREATE INDEX escalations_due ON escalations (due_at_ms);
     CREATE TABLE sender_notices (
        alert_id        TEXT NOT NULL REFERENCES alerts (alert_id),
        event           TEXT NOT NULL CHECK (event IN ('acknowledged', 'resolved', 'unanswered')),
        principal       TEXT NOT NULL,
        responder       TEXT NOT NULL,
        note            TEXT NOT NULL,
        at_ms           BIGINT NOT NULL,
        confirmed_at_ms BIGINT,
        PRIMARY KEY (alert_id, event)
     );
     CREATE INDEX sender_notices_pending ON sender_notices (confirmed_at_ms);
     CREATE TABLE agents (
        host         TEXT NOT NULL,
        \"user\"       TEXT NOT NULL,
        ip           TEXT NOT NULL,
        source       TEXT NOT NULL,
        key_id       TEXT NOT NULL,
        last_seen_ms BIGINT NOT NULL,
        PRIMARY KEY (host, \"user\")
     );
     CREATE TABLE enrolled (
        agent_id          TEXT PRIMARY KEY,
        name              TEXT NOT NULL,
        host              TEXT NOT NULL,
        enrolled_at_ms    BIGINT NOT NULL,
        key               TEXT NOT NULL,
        prev_key          TEXT,
        prev_until_ms     BIGINT,
        next_key          TEXT,
        rotated_at_ms     BIGINT,
        revoked_at_ms     BIGINT,
        last_seen_ms      BIGINT,
        responder_seen_ms BIGINT,
        site              BIGINT NOT NULL DEFAULT 0
     );
     CREATE TABLE enrollments (
        code_id       TEXT PRIMARY KEY,
        secret        TEXT NOT NULL,
        name          TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        attempts      BIGINT NOT NULL DEFAULT 0,
        used_at_ms    BIGINT,
        agent_id      TEXT,
        site          BIGINT NOT NULL DEFAULT 0
     );
     CREATE TABLE registry_version (
        id      BIGINT PRIMARY KEY CHECK (id = 0),
        version BIGINT NOT NULL
     );
     INSERT INTO registry_version VALUES (0, 0);
     CREATE TABLE console_accounts (
        name          TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        updated_at_ms BIGINT NOT NULL
     );
     CREATE TABLE console_invitations (
        token_hash    TEXT PRIMARY KEY,
        name          TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        used_at_ms    BIGINT
     );
     CREATE TABLE console_probe (
        id    BIGINT PRIMARY KEY CHECK (id = 0),
        at_ms BIGINT NOT NULL
     );
     DROP INDEX alerts_received;
     CREATE INDEX alerts_received ON alerts (received_at_ms, alert_id);
     CREATE TABLE silent_agents (
        agent_id        TEXT PRIMARY KEY,
        silent_since_ms BIGINT NOT NULL
     );
     CREATE TABLE ack_links_used (
        nonce         TEXT PRIMARY KEY,
        alert_id      TEXT NOT NULL,
        channel       TEXT NOT NULL,
        by_responder  TEXT NOT NULL,
        used_at_ms    BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL
     );
     CREATE INDEX ack_links_used_expiry ON ack_links_used (expires_at_ms);",
    // Version 3: keys every collector must share (the acknowledge links' key: `keys.rs`).
    "CREATE TABLE shared_keys (
        name TEXT PRIMARY KEY,
        key  BYTEA NOT NULL
     );",
    // Version 4: pending sender notices by time, so that reading the newest pending ones (on
    // every change, up to 50 times a second in a storm) walks an index and stops at its limit
    // instead of sorting every pending notice (see the SQLite store's `V_NOTICES_BY_TIME`).
    "DROP INDEX IF EXISTS sender_notices_pending;
     CREATE INDEX sender_notices_pending ON sender_notices (confirmed_at_ms, at_ms, alert_id);",
    // Version 5: reminders last, each part a range of the index read in order (see the SQLite
    // store's `V_REMINDERS_LAST`). Built in the migration's transaction: the outbox is locked
    // while it is (seconds for hundreds of thousands of rows; SOS wait or are retried).
    "DROP INDEX IF EXISTS outbox_due;
     CREATE INDEX outbox_due ON outbox (channel, state, (kind = 'reminder'), next_attempt_at_ms);",
    // Version 6: the jobs under a lease, for `next_due` (when a job in flight, or the news held
    // behind it, is due: at the lease's end) without reading every pending job of the channel.
    // Partial: the rows claimed and not yet finished (and the few a collector that died left
    // stopped while in flight, which keep their lease). Built in the migration's transaction:
    // one pass over the outbox with writes to it waiting (50 ms for 300,000 jobs on this
    // machine: docs/PERFORMANCE.md).
    "CREATE INDEX outbox_leased ON outbox (channel, lease_until) WHERE lease_until IS NOT NULL;",
    // Version 7: the responder push's popup read without the history (see the SQLite store's
    // `V_OPEN_BY_TIME`): the open alerts by the time they were received (copied from the alert),
    // the closed ones by when they changed, each its own partial index; `responses_recent`
    // served only that read. The copy rewrites every response, and the indexes are built, in
    // the migration's transaction (SOS wait or are retried meanwhile: 2.6 s for 300,000
    // responses, docs/RELIABILITY.md). Collectors of the older release keep running on the
    // migrated schema until they are upgraded (README), and their inserts name no time: the
    // trigger gives such a row its alert's, so that it is not taken for the oldest open alert.
    "ALTER TABLE responses ADD COLUMN received_at_ms BIGINT NOT NULL DEFAULT 0;
     UPDATE responses r SET received_at_ms = a.received_at_ms FROM alerts a WHERE a.alert_id = r.alert_id;
     CREATE FUNCTION responses_received_at() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
         NEW.received_at_ms := COALESCE((SELECT received_at_ms FROM alerts WHERE alert_id = NEW.alert_id),
                                        NEW.changed_at_ms);
         RETURN NEW;
     END $$;
     CREATE TRIGGER responses_received_at BEFORE INSERT ON responses
         FOR EACH ROW WHEN (NEW.received_at_ms = 0) EXECUTE FUNCTION responses_received_at();
     DROP INDEX IF EXISTS responses_recent;
     CREATE INDEX responses_open ON responses (received_at_ms)
         WHERE state IN ('received', 'notified', 'acknowledged', 'cancelled');
     CREATE INDEX responses_closed ON responses (changed_at_ms) WHERE state IN ('resolved', 'checked');",
];

/// The schema version this collector writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Bring the database's schema up to [`VERSION`], one transaction per migration.
///
/// # Errors
/// If a migration fails (it is rolled back), or the database's schema is newer than this
/// collector knows (a newer collector migrated it: this one must not write on it).
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    // Under the migrations' lock: `CREATE TABLE IF NOT EXISTS` is not safe against another
    // session creating the same table at the same moment (two collectors starting together: the
    // loser gets "type schema_version already exists", 42710, or a unique violation). The lock
    // makes the second wait for the first's commit, and then see the table.
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.batch_execute("SET LOCAL lock_timeout = 0").await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg_error)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)").await.map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    loop {
        let tx = client.transaction().await.map_err(pg_error)?;
        // Wait as long as another collector's migration takes (the session's lock_timeout is
        // for the service's row locks, not for this).
        tx.batch_execute("SET LOCAL lock_timeout = 0").await.map_err(pg_error)?;
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
