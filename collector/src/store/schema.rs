//! The store's schema and its migrations, numbered by SQLite's `PRAGMA user_version`.
//!
//! Migration `n` (1-based, `MIGRATIONS[n - 1]`) takes a store from version `n - 1` to `n`,
//! through `rusqlite_migration`, which keeps the number in `user_version` as the collector always
//! has: a store written by any earlier collector opens and is brought up to date. The migrations
//! a store needs run in one transaction: all of them, or none. A new file (version 0) runs them
//! all. Never edit a migration that has shipped; add one.
//!
//! They run with foreign keys off, as SQLite's procedure for remaking a table asks: a store that
//! `store recover` rebuilt may hold rows whose alert was lost with a damaged page (its timeline
//! events, its response), and a migration that copies such a table must copy them as they are,
//! not fail on the first of them and leave the collector unable to open its store.

use rusqlite::Connection;
use rusqlite_migration::{Migrations, M};

use super::StoreError;

/// Version 1: alerts and their outbox (one job per alert and channel).
const V1: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    alert_id       TEXT PRIMARY KEY,
    received_at_ms INTEGER NOT NULL,
    triggered_at   INTEGER NOT NULL,
    test           INTEGER NOT NULL,
    user           TEXT NOT NULL,
    host           TEXT NOT NULL,
    ip             TEXT NOT NULL,
    location       TEXT NOT NULL,
    message        TEXT NOT NULL,
    agent          TEXT NOT NULL,
    source         TEXT NOT NULL,
    key_id         TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id                 INTEGER PRIMARY KEY,
    alert_id           TEXT NOT NULL REFERENCES alerts(alert_id),
    channel            TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    created_at_ms      INTEGER NOT NULL,
    next_attempt_at_ms INTEGER NOT NULL,
    delivered_at_ms    INTEGER,
    last_error         TEXT,
    UNIQUE (alert_id, channel)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (channel, state, next_attempt_at_ms);
CREATE INDEX IF NOT EXISTS alerts_recent ON alerts (received_at_ms);
";

/// Version 2: cancellation columns, the outbox's `kind` (an alert or its cancellation), the
/// agents seen by heartbeat.
const V2: &str = "
ALTER TABLE alerts ADD COLUMN cancelled_at_ms INTEGER;
ALTER TABLE alerts ADD COLUMN cancel_reason TEXT;
CREATE TABLE outbox_v2 (
    id                 INTEGER PRIMARY KEY,
    alert_id           TEXT NOT NULL REFERENCES alerts(alert_id),
    channel            TEXT NOT NULL,
    kind               TEXT NOT NULL DEFAULT 'alert' CHECK (kind IN ('alert', 'cancel')),
    state              TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    created_at_ms      INTEGER NOT NULL,
    next_attempt_at_ms INTEGER NOT NULL,
    delivered_at_ms    INTEGER,
    last_error         TEXT,
    UNIQUE (alert_id, channel, kind)
);
INSERT INTO outbox_v2 (id, alert_id, channel, kind, state, attempts, created_at_ms, next_attempt_at_ms, delivered_at_ms, last_error)
    SELECT id, alert_id, channel, 'alert', state, attempts, created_at_ms, next_attempt_at_ms, delivered_at_ms, last_error FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v2 RENAME TO outbox;
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (channel, state, next_attempt_at_ms);
CREATE INDEX IF NOT EXISTS alerts_recent ON alerts (received_at_ms);
CREATE TABLE IF NOT EXISTS agents (
    host         TEXT NOT NULL,
    user         TEXT NOT NULL,
    ip           TEXT NOT NULL,
    source       TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (host, user)
) WITHOUT ROWID;
";

/// Version 3: the agent registry (enrolled agents, one-time codes) and, per alert, who its key
/// was enrolled for.
const V3: &str = "
ALTER TABLE alerts ADD COLUMN agent_id TEXT;
ALTER TABLE alerts ADD COLUMN agent_name TEXT;
ALTER TABLE alerts ADD COLUMN agent_host TEXT;
CREATE TABLE IF NOT EXISTS agents (
    host         TEXT NOT NULL,
    user         TEXT NOT NULL,
    ip           TEXT NOT NULL,
    source       TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (host, user)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS enrolled (
    agent_id       TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    host           TEXT NOT NULL,
    enrolled_at_ms INTEGER NOT NULL,
    key            TEXT NOT NULL,
    prev_key       TEXT,
    prev_until_ms  INTEGER,
    next_key       TEXT,
    rotated_at_ms  INTEGER,
    revoked_at_ms  INTEGER,
    last_seen_ms   INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS enrollments (
    code_id       TEXT PRIMARY KEY,
    secret        TEXT NOT NULL,
    name          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    used_at_ms    INTEGER,
    agent_id      TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS registry_version (
    id      INTEGER PRIMARY KEY CHECK (id = 0),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO registry_version VALUES (0, 0);
";

/// Version 4: the responder loop (issue 16). The outbox gains the kinds of the loop (a tier's
/// notification, a reminder, "acknowledged by", "resolved by"), the tier a job belongs to, its
/// audience (chat mentions and extra email recipients, fixed when the tier fired), and the
/// state `stopped` (an acknowledgement stopped it before it went out). Per alert: its response
/// state (`responses`), its append-only timeline (`alert_events`), its pending escalation
/// deadline (`escalations`, on the outbox clock), and the notices owed to its sender
/// (`sender_notices`). Alerts stored before this version get no response row: they never
/// pop up on responders' desktops after an upgrade.
const V4: &str = "
CREATE TABLE outbox_v4 (
    id                 INTEGER PRIMARY KEY,
    alert_id           TEXT NOT NULL REFERENCES alerts(alert_id),
    channel            TEXT NOT NULL,
    kind               TEXT NOT NULL DEFAULT 'alert'
                       CHECK (kind IN ('alert', 'cancel', 'reminder', 'acknowledged', 'resolved')),
    tier               INTEGER NOT NULL DEFAULT 1,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'stopped')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    created_at_ms      INTEGER NOT NULL,
    next_attempt_at_ms INTEGER NOT NULL,
    delivered_at_ms    INTEGER,
    last_error         TEXT,
    mentions           TEXT NOT NULL DEFAULT '',
    recipients         TEXT NOT NULL DEFAULT '',
    detail             TEXT NOT NULL DEFAULT '',
    UNIQUE (alert_id, channel, kind, tier)
);
INSERT INTO outbox_v4 (id, alert_id, channel, kind, state, attempts, created_at_ms, next_attempt_at_ms, delivered_at_ms, last_error)
    SELECT id, alert_id, channel, kind, state, attempts, created_at_ms, next_attempt_at_ms, delivered_at_ms, last_error FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v4 RENAME TO outbox;
ALTER TABLE enrolled ADD COLUMN responder_seen_ms INTEGER;
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (channel, state, next_attempt_at_ms);
CREATE INDEX IF NOT EXISTS outbox_alert ON outbox (alert_id);
CREATE TABLE IF NOT EXISTS responses (
    alert_id           TEXT PRIMARY KEY REFERENCES alerts(alert_id),
    state              TEXT NOT NULL
                       CHECK (state IN ('received', 'notified', 'acknowledged', 'resolved', 'cancelled', 'checked')),
    seq                INTEGER NOT NULL DEFAULT 1,
    tier               INTEGER NOT NULL DEFAULT 0,
    reminder_seq       INTEGER NOT NULL DEFAULT 0,
    by_responder       TEXT NOT NULL DEFAULT '',
    note               TEXT NOT NULL DEFAULT '',
    outcome            TEXT NOT NULL DEFAULT '',
    responders         TEXT NOT NULL DEFAULT '',
    acknowledged_at_ms INTEGER,
    changed_at_ms      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS responses_recent ON responses (changed_at_ms);
CREATE TABLE IF NOT EXISTS alert_events (
    id       INTEGER PRIMARY KEY,
    alert_id TEXT NOT NULL REFERENCES alerts(alert_id),
    at_ms    INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    who      TEXT NOT NULL,
    via      TEXT NOT NULL,
    note     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_events_alert ON alert_events (alert_id, id);
CREATE TABLE IF NOT EXISTS escalations (
    alert_id  TEXT PRIMARY KEY REFERENCES alerts(alert_id),
    next_tier INTEGER NOT NULL,
    set_at_ms INTEGER NOT NULL,
    due_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS escalations_due ON escalations (due_at_ms);
CREATE TABLE IF NOT EXISTS sender_notices (
    alert_id        TEXT NOT NULL REFERENCES alerts(alert_id),
    event           TEXT NOT NULL CHECK (event IN ('acknowledged', 'resolved', 'unanswered')),
    principal       TEXT NOT NULL,
    responder       TEXT NOT NULL,
    note            TEXT NOT NULL,
    at_ms           INTEGER NOT NULL,
    confirmed_at_ms INTEGER,
    PRIMARY KEY (alert_id, event)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sender_notices_pending ON sender_notices (confirmed_at_ms);
";

/// The web console (collector/src/http): responders' password hashes, one-time invitations
/// (only a hash of each token), the write probe of `/readyz`, agents found silent (so that one
/// notice is sent per silence, across restarts), and an index of alerts by time (the history and
/// its export walk it a page at a time).
const V_CONSOLE: &str = "
CREATE TABLE IF NOT EXISTS console_accounts (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS console_invitations (
    token_hash    TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    used_at_ms    INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS console_probe (
    id    INTEGER PRIMARY KEY CHECK (id = 0),
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_received ON alerts (received_at_ms, alert_id);
CREATE TABLE IF NOT EXISTS silent_agents (
    agent_id        TEXT PRIMARY KEY,
    silent_since_ms INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Forwarding from sites to a centre (issue 19 §2): which codes enroll a site collector rather
/// than an agent (`enroll --site`), which enrolled keys are sites, and, per alert, the site it
/// was forwarded from (the site's enrolled name, never a name the site sends).
const V_FORWARD: &str = "
ALTER TABLE enrollments ADD COLUMN site INTEGER NOT NULL DEFAULT 0;
ALTER TABLE enrolled ADD COLUMN site INTEGER NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN site TEXT;
";

/// Acknowledge links (issue 17 §4, `links.rs`): the nonce of every link that acknowledged an
/// alert, recorded in the same transaction as the acknowledgement, so that a link works once.
/// A row is kept until its link expired (a day later it is deleted: nothing can replay it).
const V_ACK_LINKS: &str = "
CREATE TABLE IF NOT EXISTS ack_links_used (
    nonce         TEXT PRIMARY KEY,
    alert_id      TEXT NOT NULL,
    channel       TEXT NOT NULL,
    by_responder  TEXT NOT NULL,
    used_at_ms    INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ack_links_used_expiry ON ack_links_used (expires_at_ms);
";

/// A leaner store (issue 18 §3): two indexes that another index already covers, each of which
/// cost every alert a write at a random place (`outbox_alert` is the first column of the
/// outbox's `UNIQUE (alert_id, channel, kind, tier)` index; `alerts_recent` is the first column
/// of `alerts_received`).
const V_LEAN: &str = "
DROP INDEX IF EXISTS outbox_alert;
DROP INDEX IF EXISTS alerts_recent;
";

/// Pending sender notices by time (2026-12-03): the responder push reads the newest pending
/// notices on every change of the store, up to 50 times a second in a storm, on the writer's
/// connection. The index on `confirmed_at_ms` alone made SQLite fetch and sort *every* pending
/// notice for each read (150 ms with 94,000 pending, all on the writer: the ACK latency tail);
/// with `at_ms` in the index the read walks it backwards and stops at its limit (0.3 ms). Same
/// number of index writes per alert.
const V_NOTICES_BY_TIME: &str = "
DROP INDEX IF EXISTS sender_notices_pending;
CREATE INDEX IF NOT EXISTS sender_notices_pending ON sender_notices (confirmed_at_ms, at_ms);
";

/// Reminders last (2026-12-03): the outbox hands a channel its due reminders after everything
/// else (the pages of alerts, cancellations, who answered), so that a new SOS is not queued
/// behind the reminders of an unanswered storm. Only reminders: they are what piles up (one per
/// alert and round), the rest is one per alert and person. With the class in the index, each
/// part is a range read in order up to its limit; without it, the claim would have to sort
/// every due job. Same number of index writes per job.
const V_REMINDERS_LAST: &str = "
DROP INDEX IF EXISTS outbox_due;
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (channel, state, kind = 'reminder', next_attempt_at_ms);
";

/// The timeline kept by alert (issue 18 §3, 2026-12-04). `alert_events` becomes a `WITHOUT ROWID`
/// table keyed by `(alert_id, id)`: an alert's events are stored together, in the order of its
/// key, and the `alert_events_alert` index (a second copy of every event's key, written with
/// every event) is gone. `id` orders an alert's own events: the rows copied keep theirs, a new
/// event takes its alert's next. From this version on an alert's `received` event is not
/// stored: everything in it (when, who, the message) is in the alert's row, and the readers
/// make it from there (`sqlite/response.rs`, `received_event`). An alert stored before keeps
/// the one it has.
const V_EVENTS_BY_ALERT: &str = "
CREATE TABLE alert_events_by_alert (
    alert_id TEXT NOT NULL REFERENCES alerts(alert_id),
    id       INTEGER NOT NULL,
    at_ms    INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    who      TEXT NOT NULL,
    via      TEXT NOT NULL,
    note     TEXT NOT NULL,
    PRIMARY KEY (alert_id, id)
) WITHOUT ROWID;
INSERT INTO alert_events_by_alert (alert_id, id, at_ms, kind, who, via, note)
    SELECT alert_id, id, at_ms, kind, who, via, note FROM alert_events ORDER BY alert_id, id;
DROP TABLE alert_events;
ALTER TABLE alert_events_by_alert RENAME TO alert_events;
";

/// The same CHECK constraints without lists (issue 18 §3, 2026-12-04). SQLite checks
/// `x IN ('a', 'b', 'c')` (a list of more than two constants) by building a temporary B-tree of
/// the list, at every insert or update of the row: per alert, four such B-trees made and freed
/// (`responses.state`, the outbox's `kind` and `state`, `sender_notices.event`), about a sixth
/// of the store writer's time under load (measured with perf: `sqlite3BtreeOpen`, the page
/// cache it creates, and the allocator's locks). Here they are comparisons joined by OR, which
/// SQLite checks in place. SQLite cannot alter a CHECK: each table is made anew and its rows
/// copied, as V2 and V4 did, with their ids, and its indexes made again.
const V_CHECKS_IN_PLACE: &str = "
CREATE TABLE outbox_checked (
    id                 INTEGER PRIMARY KEY,
    alert_id           TEXT NOT NULL REFERENCES alerts(alert_id),
    channel            TEXT NOT NULL,
    kind               TEXT NOT NULL DEFAULT 'alert'
                       CHECK (kind = 'alert' OR kind = 'cancel' OR kind = 'reminder' OR kind = 'acknowledged'
                              OR kind = 'resolved'),
    tier               INTEGER NOT NULL DEFAULT 1,
    state              TEXT NOT NULL
                       CHECK (state = 'pending' OR state = 'delivered' OR state = 'failed' OR state = 'stopped'),
    attempts           INTEGER NOT NULL DEFAULT 0,
    created_at_ms      INTEGER NOT NULL,
    next_attempt_at_ms INTEGER NOT NULL,
    delivered_at_ms    INTEGER,
    last_error         TEXT,
    mentions           TEXT NOT NULL DEFAULT '',
    recipients         TEXT NOT NULL DEFAULT '',
    detail             TEXT NOT NULL DEFAULT '',
    UNIQUE (alert_id, channel, kind, tier)
);
INSERT INTO outbox_checked (id, alert_id, channel, kind, tier, state, attempts, created_at_ms, next_attempt_at_ms,
                            delivered_at_ms, last_error, mentions, recipients, detail)
    SELECT id, alert_id, channel, kind, tier, state, attempts, created_at_ms, next_attempt_at_ms,
           delivered_at_ms, last_error, mentions, recipients, detail FROM outbox ORDER BY id;
DROP TABLE outbox;
ALTER TABLE outbox_checked RENAME TO outbox;
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (channel, state, kind = 'reminder', next_attempt_at_ms);
CREATE TABLE responses_checked (
    alert_id           TEXT PRIMARY KEY REFERENCES alerts(alert_id),
    state              TEXT NOT NULL
                       CHECK (state = 'received' OR state = 'notified' OR state = 'acknowledged' OR state = 'resolved'
                              OR state = 'cancelled' OR state = 'checked'),
    seq                INTEGER NOT NULL DEFAULT 1,
    tier               INTEGER NOT NULL DEFAULT 0,
    reminder_seq       INTEGER NOT NULL DEFAULT 0,
    by_responder       TEXT NOT NULL DEFAULT '',
    note               TEXT NOT NULL DEFAULT '',
    outcome            TEXT NOT NULL DEFAULT '',
    responders         TEXT NOT NULL DEFAULT '',
    acknowledged_at_ms INTEGER,
    changed_at_ms      INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO responses_checked (alert_id, state, seq, tier, reminder_seq, by_responder, note, outcome, responders,
                               acknowledged_at_ms, changed_at_ms)
    SELECT alert_id, state, seq, tier, reminder_seq, by_responder, note, outcome, responders,
           acknowledged_at_ms, changed_at_ms FROM responses ORDER BY alert_id;
DROP TABLE responses;
ALTER TABLE responses_checked RENAME TO responses;
CREATE INDEX IF NOT EXISTS responses_recent ON responses (changed_at_ms);
CREATE TABLE sender_notices_checked (
    alert_id        TEXT NOT NULL REFERENCES alerts(alert_id),
    event           TEXT NOT NULL CHECK (event = 'acknowledged' OR event = 'resolved' OR event = 'unanswered'),
    principal       TEXT NOT NULL,
    responder       TEXT NOT NULL,
    note            TEXT NOT NULL,
    at_ms           INTEGER NOT NULL,
    confirmed_at_ms INTEGER,
    PRIMARY KEY (alert_id, event)
) WITHOUT ROWID;
INSERT INTO sender_notices_checked (alert_id, event, principal, responder, note, at_ms, confirmed_at_ms)
    SELECT alert_id, event, principal, responder, note, at_ms, confirmed_at_ms FROM sender_notices
    ORDER BY alert_id, event;
DROP TABLE sender_notices;
ALTER TABLE sender_notices_checked RENAME TO sender_notices;
CREATE INDEX IF NOT EXISTS sender_notices_pending ON sender_notices (confirmed_at_ms, at_ms);
";

/// The responder push's popup read without the history (2026-12-05). The push reads "open
/// alerts, and those changed in the last hour, newest first, at most 500" after every change of
/// an alert (up to 50 times a second) and every 5 s. With the state only in `responses` and the
/// time only in `alerts`, SQLite walked the alerts newest first until it had found 500: with a
/// long history of closed alerts, all of them (about 100 ms at 250,000 alerts; a whole core at 20
/// SOS a second, `sos-bench history`). Now each part has its own index and the read is as long as
/// what it returns: the open alerts by the time they were received (a copy of the alert's
/// `received_at_ms`, which never changes), the closed ones by when they changed. The
/// `responses_recent` index (every row by when it changed) served only that read, and goes. A
/// row whose alert is lost (kept by `store recover`) has the time -1: it sorts after every
/// alert, so that it takes no real alert's place among the 500 (the read joins them to their
/// alerts after the cut); if the alert is sent again, its row takes the alert's time. Both
/// indexes hold the state (and the closed one the time) so that the read is answered from them
/// alone (SQLite checks the state against the row otherwise): 1.8 ms instead of 2.8 for the
/// read with 1,000 open alerts, 9.6 instead of 15 with 20,000 closed within the hour
/// (helper-47).
const V_OPEN_BY_TIME: &str = "
ALTER TABLE responses ADD COLUMN received_at_ms INTEGER NOT NULL DEFAULT 0;
UPDATE responses SET received_at_ms = COALESCE(
    (SELECT a.received_at_ms FROM alerts a WHERE a.alert_id = responses.alert_id), -1);
DROP INDEX IF EXISTS responses_recent;
CREATE INDEX responses_open ON responses (received_at_ms, state)
    WHERE state = 'received' OR state = 'notified' OR state = 'acknowledged' OR state = 'cancelled';
CREATE INDEX responses_closed ON responses (changed_at_ms, received_at_ms, state)
    WHERE state = 'resolved' OR state = 'checked';
";

/// Every migration, in order: the store's version is how many have run.
const MIGRATIONS: &[M<'static>] = &[
    M::up(V1),
    M::up(V2),
    M::up(V3),
    M::up(V4),
    M::up(V_CONSOLE),
    M::up(V_FORWARD),
    M::up(V_ACK_LINKS),
    M::up(V_LEAN),
    M::up(V_NOTICES_BY_TIME),
    M::up(V_REMINDERS_LAST),
    M::up(V_EVENTS_BY_ALERT),
    M::up(V_CHECKS_IN_PLACE),
    M::up(V_OPEN_BY_TIME),
];

/// The schema version this collector writes.
pub const VERSION: usize = MIGRATIONS.len();

/// Bring the store on `conn` to [`VERSION`], in one transaction, with foreign keys off for its
/// length (see the module's documentation); they are as they were after it.
///
/// # Errors
/// If the store is from a newer collector (it is left untouched), or a step fails (every step
/// is rolled back).
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > VERSION as i64 {
        return Err(StoreError::Sqlite(format!(
            "it has schema version {version}, newer than this collector understands ({VERSION})"
        )));
    }
    if version == 0 {
        clear_interrupted_first_start(conn)?;
    }
    // Each step takes the write lock when it begins (waiting for another process's migration
    // to end) rather than when it first writes (which SQLite refuses at once if another
    // process wrote meanwhile).
    conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
    // Outside any transaction: SQLite ignores the pragma inside one.
    let foreign_keys: bool = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
    conn.pragma_update(None, "foreign_keys", false)?;
    let migrated = Migrations::from_slice(MIGRATIONS).to_latest(conn);
    conn.pragma_update(None, "foreign_keys", foreign_keys)?;
    conn.set_transaction_behavior(rusqlite::TransactionBehavior::Deferred);
    match migrated {
        Ok(()) => Ok(()),
        // Another process may have migrated the same store meanwhile (a CLI command run as the
        // service starts on a fresh store): the version was read before our transaction, so
        // our steps then fail on what it made. Its work is as good as ours.
        Err(_) if current_version(conn)? == VERSION as i64 => Ok(()),
        Err(e) => Err(match e {
            rusqlite_migration::Error::RusqliteError { err, .. } => StoreError::from(err),
            other => StoreError::Sqlite(format!("cannot migrate the schema: {other}")),
        }),
    }
}

fn current_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// A store at version 0 that already has tables: a collector from before these migrations
/// (which created its tables outside a transaction and recorded the version last) stopped during
/// its very first start. It then stored nothing: its tables are empty and are dropped, in one
/// transaction, for the migrations to make afresh (that collector completed them on its next
/// start). Tables holding rows at version 0 are not a store this collector made: refused, untouched.
fn clear_interrupted_first_start(conn: &mut Connection) -> Result<(), StoreError> {
    // Under the write lock, and only if the version is still 0: another process may have just
    // made this store (and its tables are then not to be dropped).
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if current_version(&tx)? != 0 {
        return Ok(());
    }
    let tables: Vec<String> = tx
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for table in &tables {
        let rows: i64 = tx.query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| r.get(0))?;
        // registry_version holds its one row from the start.
        let made_empty = if table == "registry_version" { 1 } else { 0 };
        if rows > made_empty {
            return Err(StoreError::Sqlite(format!(
                "it has no schema version yet its table {table} holds {rows} rows: not a store this collector made"
            )));
        }
    }
    for table in &tables {
        tx.execute_batch(&format!("DROP TABLE \"{table}\""))?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Db, StoreError};
    use super::*;

    /// The tables' columns and the indexes, as SQLite describes them.
    fn shape(conn: &Connection) -> Vec<String> {
        let mut names: Vec<(String, String)> = conn
            .prepare("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        names.sort();
        let mut out = Vec::new();
        for (kind, name) in names {
            if kind == "table" {
                let cols: Vec<String> = conn
                    .prepare(&format!(
                        "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('{name}')"
                    ))
                    .unwrap()
                    .query_map([], |r| {
                        Ok(format!(
                            "{}:{}:{}:{:?}:{}",
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, i64>(4)?
                        ))
                    })
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                out.push(format!("table {name}({})", cols.join(", ")));
            } else {
                out.push(format!("{kind} {name}"));
            }
        }
        out
    }

    fn version(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap()
    }

    /// The shape of a store created by this collector.
    fn fresh_shape() -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("sos.db")).unwrap();
        assert_eq!(version(&db.conn), VERSION as i64);
        shape(&db.conn)
    }

    #[test]
    fn processes_opening_a_fresh_store_at_once_all_succeed() {
        // The service and a CLI command (or the demo) opening a new store at the same moment.
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("sos.db");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(3));
            let openers: Vec<_> = (0..3)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        crate::store::Db::open(&path).map(|_| ())
                    })
                })
                .collect();
            for o in openers {
                o.join().unwrap().unwrap();
            }
            let conn = Connection::open(&path).unwrap();
            assert_eq!(current_version(&conn).unwrap(), VERSION as i64);
        }
    }

    #[test]
    fn the_migrations_are_valid() {
        Migrations::from_slice(MIGRATIONS).validate().unwrap();
    }

    /// What the collector of each schema version wrote at its first start, verbatim (before
    /// migrations went through `rusqlite_migration`): version 1 …
    const OLD_V1: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    alert_id       TEXT PRIMARY KEY,
    received_at_ms INTEGER NOT NULL,
    triggered_at   INTEGER NOT NULL,
    test           INTEGER NOT NULL,
    user           TEXT NOT NULL,
    host           TEXT NOT NULL,
    ip             TEXT NOT NULL,
    location       TEXT NOT NULL,
    message        TEXT NOT NULL,
    agent          TEXT NOT NULL,
    source         TEXT NOT NULL,
    key_id         TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id                 INTEGER PRIMARY KEY,
    alert_id           TEXT NOT NULL REFERENCES alerts(alert_id),
    channel            TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    created_at_ms      INTEGER NOT NULL,
    next_attempt_at_ms INTEGER NOT NULL,
    delivered_at_ms    INTEGER,
    last_error         TEXT,
    UNIQUE (alert_id, channel)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (channel, state, next_attempt_at_ms);
CREATE INDEX IF NOT EXISTS alerts_recent ON alerts (received_at_ms);
PRAGMA user_version = 1;
";

    /// … version 2 …
    const OLD_V2: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    alert_id        TEXT PRIMARY KEY,
    received_at_ms  INTEGER NOT NULL,
    triggered_at    INTEGER NOT NULL,
    test            INTEGER NOT NULL,
    user            TEXT NOT NULL,
    host            TEXT NOT NULL,
    ip              TEXT NOT NULL,
    location        TEXT NOT NULL,
    message         TEXT NOT NULL,
    agent           TEXT NOT NULL,
    source          TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    cancelled_at_ms INTEGER,
    cancel_reason   TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id                 INTEGER PRIMARY KEY,
    alert_id           TEXT NOT NULL REFERENCES alerts(alert_id),
    channel            TEXT NOT NULL,
    kind               TEXT NOT NULL DEFAULT 'alert' CHECK (kind IN ('alert', 'cancel')),
    state              TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    created_at_ms      INTEGER NOT NULL,
    next_attempt_at_ms INTEGER NOT NULL,
    delivered_at_ms    INTEGER,
    last_error         TEXT,
    UNIQUE (alert_id, channel, kind)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (channel, state, next_attempt_at_ms);
CREATE INDEX IF NOT EXISTS alerts_recent ON alerts (received_at_ms);
CREATE TABLE IF NOT EXISTS agents (
    host         TEXT NOT NULL,
    user         TEXT NOT NULL,
    ip           TEXT NOT NULL,
    source       TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (host, user)
) WITHOUT ROWID;
PRAGMA user_version = 2;
";

    /// … and version 3 (the tables of version 2 with three more alert columns, and the registry).
    const OLD_V3_EXTRA: &str = "
CREATE TABLE IF NOT EXISTS enrolled (
    agent_id       TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    host           TEXT NOT NULL,
    enrolled_at_ms INTEGER NOT NULL,
    key            TEXT NOT NULL,
    prev_key       TEXT,
    prev_until_ms  INTEGER,
    next_key       TEXT,
    rotated_at_ms  INTEGER,
    revoked_at_ms  INTEGER,
    last_seen_ms   INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS enrollments (
    code_id       TEXT PRIMARY KEY,
    secret        TEXT NOT NULL,
    name          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    used_at_ms    INTEGER,
    agent_id      TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS registry_version (
    id      INTEGER PRIMARY KEY CHECK (id = 0),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO registry_version VALUES (0, 0);
PRAGMA user_version = 3;
";

    const ALERT_ID: &str = "00000000000000000000000000000001";

    /// A store as the collector of `version` left it, with one alert, its Slack job (pending,
    /// one attempt made), a delivered log job and, from version 2, an agent seen.
    fn old_store(path: &std::path::Path, version: u32) {
        let conn = Connection::open(path).unwrap();
        let columns =
            "alert_id, received_at_ms, triggered_at, test, user, host, ip, location, message, agent, source, key_id";
        let values = format!(
            "'{ALERT_ID}', 1000, 1, 0, 'alice', 'desk', '10.0.0.1', 'Reception', 'help', 'sos-agent 1', '127.0.0.1:9', '00'"
        );
        let jobs = format!(
            "INSERT INTO outbox (alert_id, channel, state, attempts, created_at_ms, next_attempt_at_ms, last_error)
                VALUES ('{ALERT_ID}', 'slack', 'pending', 1, 1000, 7000, '429');
             INSERT INTO outbox (alert_id, channel, state, created_at_ms, next_attempt_at_ms, delivered_at_ms)
                VALUES ('{ALERT_ID}', 'log', 'delivered', 1000, 1000, 1001);"
        );
        let agent = "INSERT INTO agents VALUES ('desk', 'alice', '10.0.0.1', '127.0.0.1:9', '00', 5000);";
        match version {
            1 => conn.execute_batch(&format!("{OLD_V1} INSERT INTO alerts ({columns}) VALUES ({values}); {jobs}")),
            2 => conn.execute_batch(&format!("{OLD_V2} INSERT INTO alerts ({columns}) VALUES ({values}); {jobs} {agent}")),
            3 => conn.execute_batch(&format!(
                "{} PRAGMA user_version = 3;
                 INSERT INTO alerts ({columns}, agent_id, agent_name, agent_host) VALUES ({values}, 'a1', 'Desk 1', 'desk');
                 {jobs} {agent}
                 INSERT INTO enrolled (agent_id, name, host, enrolled_at_ms, key) VALUES ('a1', 'Desk 1', 'desk', 900, 'k');
                 UPDATE registry_version SET version = 7;",
                old_v3_tables()
            )),
            _ => unreachable!(),
        }
        .unwrap();
    }

    #[test]
    fn a_store_of_every_older_version_opens_with_its_data_and_the_shape_of_a_new_one() {
        let fresh = fresh_shape();
        for old in 1..=3u32 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("sos.db");
            old_store(&path, old);
            let mut db = Db::open(&path).unwrap_or_else(|e| panic!("version {old}: {e}"));
            assert_eq!(version(&db.conn), VERSION as i64, "version {old}");
            assert_eq!(shape(&db.conn), fresh, "version {old}");
            // The alert, its pending job (attempts, deadline, error) and its delivered one.
            let jobs = db.due_jobs("slack", 7000, 10).unwrap();
            assert_eq!(jobs.len(), 1, "version {old}");
            assert_eq!(db.next_due("slack").unwrap(), Some(7000), "version {old}");
            let all = db.recent_alerts(10).unwrap();
            assert_eq!(all.len(), 1, "version {old}");
            let (alert, deliveries) = &all[0];
            assert_eq!((alert.user.as_str(), alert.message.as_str()), ("alice", "help"), "version {old}");
            let mut states: Vec<_> =
                deliveries.iter().map(|d| (d.channel.as_str(), d.state.as_str(), d.attempts)).collect();
            states.sort_unstable();
            assert_eq!(states, [("log", "delivered", 0), ("slack", "pending", 1)], "version {old}");
            if old >= 2 {
                assert_eq!(db.agents().unwrap().len(), 1, "version {old}");
            }
            if old >= 3 {
                assert_eq!(alert.enrolled.as_ref().map(|e| e.name.as_str()), Some("Desk 1"));
                let registry: i64 =
                    db.conn.query_row("SELECT version FROM registry_version", [], |r| r.get(0)).unwrap();
                assert_eq!(registry, 7);
                let keys: i64 = db.conn.query_row("SELECT count(*) FROM enrolled", [], |r| r.get(0)).unwrap();
                assert_eq!(keys, 1);
            }
            // What the migrated store can do: cancel the alert (a job per channel), reopen.
            let cancelled = db.cancel(sos_shared::AlertId::from_u128(1), "", "00", &["slack"], 8000, 8000);
            if old >= 3 {
                // Enrolled as a1: only that agent's key may cancel; the key id "00" is the site key.
                assert!(cancelled.is_ok(), "version {old}: {cancelled:?}");
            } else {
                assert_eq!(cancelled.unwrap(), super::super::Cancelled::New, "version {old}");
            }
            drop(db);
            let db = Db::open(&path).unwrap();
            assert_eq!(db.recent_alerts(10).unwrap().len(), 1, "version {old}");
        }
    }

    /// The tables of version 3 as the collector of that version created them.
    fn old_v3_tables() -> String {
        format!(
            "{} ALTER TABLE alerts ADD COLUMN agent_id TEXT; ALTER TABLE alerts ADD COLUMN agent_name TEXT;
             ALTER TABLE alerts ADD COLUMN agent_host TEXT; {}",
            OLD_V2.replace("PRAGMA user_version = 2;", ""),
            OLD_V3_EXTRA.replace("PRAGMA user_version = 3;", "")
        )
    }

    #[test]
    fn a_first_start_of_an_older_collector_stopped_before_it_recorded_the_version_is_completed() {
        let fresh = fresh_shape();
        let tables = [
            OLD_V1.replace("PRAGMA user_version = 1;", ""),
            OLD_V2.replace("PRAGMA user_version = 2;", ""),
            old_v3_tables(),
        ];
        for (i, sql) in tables.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("sos.db");
            Connection::open(&path).unwrap().execute_batch(sql).unwrap();
            let db = Db::open(&path).unwrap_or_else(|e| panic!("tables of version {}: {e}", i + 1));
            assert_eq!(version(&db.conn), VERSION as i64);
            assert_eq!(shape(&db.conn), fresh, "tables of version {}", i + 1);
        }
        // With rows, version 0 is not ours: refused, nothing dropped.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(&format!(
                "{} INSERT INTO agents VALUES ('desk', 'alice', '10.0.0.1', '127.0.0.1:9', '00', 5000);",
                old_v3_tables()
            ))
            .unwrap();
        let e = Db::open(&path).unwrap_err().to_string();
        assert!(e.contains("agents holds 1 rows"), "{e}");
        let conn = Connection::open(&path).unwrap();
        assert_eq!(version(&conn), 0);
        let rows: i64 = conn.query_row("SELECT count(*) FROM agents", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 1);
    }

    /// The version `V_EVENTS_BY_ALERT` makes (migrations are only ever appended).
    const EVENTS_BY_ALERT: usize = 11;

    /// A store made by the collector of schema version `version` (its migrations only).
    fn store_at(path: &std::path::Path, version: usize) -> Connection {
        let mut conn = Connection::open(path).unwrap();
        Migrations::from_slice(&MIGRATIONS[..version]).to_latest(&mut conn).unwrap();
        conn
    }

    #[test]
    fn a_timeline_stored_before_it_was_kept_by_alert_reads_the_same_and_grows_in_order() {
        use crate::store::response::Via;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        let before = EVENTS_BY_ALERT - 1;
        {
            // A store of the version before, as its collector wrote an alert's response: the
            // `received` event stored, ids shared by all alerts (a second alert's in between).
            let conn = store_at(&path, before);
            conn.execute_batch(
                "INSERT INTO alerts (alert_id, received_at_ms, triggered_at, test, user, host, ip, location,
                                     message, agent, source, key_id)
                 VALUES ('00000000000000000000000000000001', 5000, 5, 0, 'alice', 'desk', '10.0.0.1', '', 'help',
                         'a', '127.0.0.1:9', '00'),
                        ('00000000000000000000000000000002', 5001, 5, 0, 'bob', 'desk2', '10.0.0.2', '', 'fire',
                         'a', '127.0.0.1:9', '00');
                 INSERT INTO responses (alert_id, state, changed_at_ms) VALUES
                        ('00000000000000000000000000000001', 'notified', 5000),
                        ('00000000000000000000000000000002', 'notified', 5001);
                 INSERT INTO alert_events (id, alert_id, at_ms, kind, who, via, note) VALUES
                        (1, '00000000000000000000000000000001', 5000, 'received', 'alice@desk', 'sender', 'help'),
                        (2, '00000000000000000000000000000002', 5001, 'received', 'bob@desk2', 'sender', 'fire'),
                        (3, '00000000000000000000000000000001', 5000, 'notified', 'collector', 'collector', 'tier 1'),
                        (4, '00000000000000000000000000000002', 5001, 'notified', 'collector', 'collector', 'tier 1');",
            )
            .unwrap();
            assert_eq!(version(&conn), before as i64);
        }
        let mut db = Db::open(&path).unwrap();
        assert_eq!(shape(&db.conn), fresh_shape());
        let id = sos_shared::AlertId::from_u128(1);
        db.record_event(id, "popup_shown", "carol", Via::Popup, "", 6000).unwrap();
        let (_, _, events) = db.timeline(id).unwrap().unwrap();
        let kinds: Vec<(&str, &str)> = events.iter().map(|e| (e.kind.as_str(), e.who.as_str())).collect();
        // The stored `received` event is read as stored, not made a second time.
        assert_eq!(kinds, [("received", "alice@desk"), ("notified", "collector"), ("popup_shown", "carol")]);
        let (_, console) = db.console_response(id).unwrap();
        let kinds: Vec<&str> = console.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["received", "notified", "popup_shown"]);
        let ids: Vec<i64> = db
            .conn
            .prepare("SELECT id FROM alert_events WHERE alert_id = '00000000000000000000000000000001' ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(ids, [1, 3, 4], "the copied rows keep their ids; a new one takes the alert's next");
        // `V_OPEN_BY_TIME`: each response has its alert's time, and the popup read finds both
        // open alerts by it, newest first.
        let times: Vec<i64> = db
            .conn
            .prepare("SELECT received_at_ms FROM responses ORDER BY alert_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(times, [5000, 5001]);
        let popups: Vec<u128> = db.popup_targets(6000).unwrap().iter().map(|t| t.alert.alert_id.as_u128()).collect();
        assert_eq!(popups, [2, 1]);
    }

    #[test]
    fn a_store_recover_left_with_rows_of_lost_alerts_is_migrated_with_them() {
        // `store recover` copies what it can read: an alert lost with a damaged page leaves its
        // response, timeline and notice behind (helper-44 reproduced it, and the migrations
        // then failed on the foreign key: the collector could not open its store).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        {
            let conn = store_at(&path, EVENTS_BY_ALERT - 1);
            // As `store recover` writes them (SQLite here enforces foreign keys by default).
            conn.pragma_update(None, "foreign_keys", false).unwrap();
            conn.execute_batch(
                "INSERT INTO responses (alert_id, state, changed_at_ms) VALUES ('lost', 'notified', 5000);
                 INSERT INTO alert_events (alert_id, at_ms, kind, who, via, note)
                        VALUES ('lost', 5000, 'notified', 'collector', 'collector', 'tier 1');
                 INSERT INTO sender_notices (alert_id, event, principal, responder, note, at_ms)
                        VALUES ('lost', 'unanswered', '00', '', '', 5000);
                 INSERT INTO outbox (alert_id, channel, kind, state, created_at_ms, next_attempt_at_ms)
                        VALUES ('lost', 'slack', 'alert', 'pending', 5000, 5000);",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(version(&db.conn), VERSION as i64);
        assert_eq!(shape(&db.conn), fresh_shape());
        for table in ["responses", "alert_events", "sender_notices", "outbox"] {
            let n: i64 = db.conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap();
            assert_eq!(n, 1, "{table}: copied as it was");
        }
        let time: i64 = db.conn.query_row("SELECT received_at_ms FROM responses", [], |r| r.get(0)).unwrap();
        assert_eq!(time, -1, "a lost alert's response sorts after every alert");
        let on: bool = db.conn.pragma_query_value(None, "foreign_keys", |r| r.get(0)).unwrap();
        assert!(on, "foreign keys are on again after the migrations");
    }

    #[test]
    fn a_command_leaves_an_older_store_to_the_service_to_bring_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        old_store(&path, 3);
        let e = Db::open_beside_service(&path).unwrap_err().to_string();
        assert!(e.contains("schema version 3, older than this collector's") && e.contains("restart"), "{e}");
        assert_eq!(version(&Connection::open(&path).unwrap()), 3, "untouched");
        // The service's open brings it up to date; then commands open it.
        drop(Db::open(&path).unwrap());
        Db::open_beside_service(&path).unwrap();
        // A command may make a new store (an enrollment before the service's first start).
        let new = dir.path().join("new.db");
        assert_eq!(version(&Db::open_beside_service(&new).unwrap().conn), VERSION as i64);
    }

    #[test]
    fn a_store_from_a_newer_collector_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!("CREATE TABLE future (x); PRAGMA user_version = {};", VERSION + 1)).unwrap();
        }
        let e = Db::open(&path).unwrap_err();
        assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
        assert!(e.to_string().contains("newer than this collector understands"), "{e}");
        let conn = Connection::open(&path).unwrap();
        assert_eq!(version(&conn), VERSION as i64 + 1);
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0)).unwrap();
        assert_eq!(tables, 1);
    }
}
