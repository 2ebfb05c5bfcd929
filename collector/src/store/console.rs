//! The web console's queries (collector/src/http): alerts with their state for the live page and
//! the history, counts for /metrics, accounts and invitations, the write probe of /readyz, and
//! the agents found silent.

use rusqlite::{params, OptionalExtension as _};
use sos_shared::AlertId;

use super::{AlertRecord, Db, Delivery, StoreError};

/// An alert's state as the console shows it, in SQL: the responder loop's state (`responses`);
/// for an alert stored before it (no row there), cancelled by the sender or else notified (as
/// [`crate::store::response::AlertState::from_name`] reads it).
const STATE_SQL: &str = "COALESCE((SELECT r.state FROM responses r WHERE r.alert_id = a.alert_id),
     CASE WHEN a.cancelled_at_ms IS NOT NULL THEN 'cancelled' ELSE 'notified' END)";

const BY_SQL: &str = "COALESCE((SELECT r.by_responder FROM responses r WHERE r.alert_id = a.alert_id), '')";

const COLUMNS: &str = "a.alert_id, a.test, a.triggered_at, a.received_at_ms, a.user, a.host, a.ip, a.location,
     a.message, a.source, a.cancelled_at_ms, a.cancel_reason, a.agent_id, a.agent_name, a.agent_host";

/// The states an alert can be in, as the console's filters name them.
pub const STATES: &[&str] = &["received", "notified", "acknowledged", "resolved", "cancelled", "checked"];

/// States in which an alert still needs someone: unanswered, acknowledged but not resolved,
/// cancelled but not checked in person.
pub const OPEN_STATES: &[&str] = &["received", "notified", "acknowledged", "cancelled"];

/// An alert and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleAlert {
    /// The alert as stored.
    pub record: AlertRecord,
    /// One of [`STATES`].
    pub state: String,
    /// The responder who acknowledged (then resolved or checked) it; empty if nobody yet.
    pub by: String,
}

/// Which alerts the history shows. Every field narrows; `None` does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertFilter {
    /// Received at or after, ms since the Unix epoch.
    pub from_ms: Option<i64>,
    /// Received before, ms since the Unix epoch.
    pub to_ms: Option<i64>,
    /// Part of the location, case-insensitive.
    pub location: Option<String>,
    /// `Some(true)`: drills only; `Some(false)`: real alerts only.
    pub test: Option<bool>,
    /// One of [`STATES`], or `open` for [`OPEN_STATES`].
    pub state: Option<String>,
}

/// Who acknowledged or resolved an alert, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRow {
    /// The responder who acknowledged (then resolved or checked) it; empty if nobody yet.
    pub by: String,
    /// The outcome given at resolve.
    pub outcome: String,
    /// The last note.
    pub note: String,
    /// When it was acknowledged, ms since the Unix epoch.
    pub acknowledged_at_ms: Option<i64>,
}

/// One event of an alert's timeline, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// What (`received`, `notified`, `acknowledged`…).
    pub kind: String,
    /// Who.
    pub who: String,
    /// Through what (`popup`, `console`…).
    pub via: String,
    /// A note, an outcome, a tier's targets.
    pub note: String,
}

impl Db {
    /// Alerts matching `filter`, newest first (then by id, descending), at most `limit`, strictly
    /// after `after` (the `(received_at_ms, alert_id)` of the last row of the previous page).
    ///
    /// # Errors
    /// If the query fails.
    pub fn console_alerts(
        &self,
        filter: &AlertFilter,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<ConsoleAlert>, StoreError> {
        // Only the conditions that apply, so that SQLite walks the `alerts_received` index over
        // the range they give (a condition like `?1 IS NULL OR …` would make it scan from the
        // newest alert for every page of an export).
        let mut conds = vec!["1".to_owned()];
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut arg = |conds: &mut Vec<String>, sql: &str, v: rusqlite::types::Value| {
            args.push(v);
            conds.push(sql.replace('?', &format!("?{}", args.len())));
        };
        if let Some(t) = filter.from_ms {
            arg(&mut conds, "a.received_at_ms >= ?", t.into());
        }
        if let Some(t) = filter.to_ms {
            arg(&mut conds, "a.received_at_ms < ?", t.into());
        }
        if let Some(l) = &filter.location {
            arg(&mut conds, "instr(lower(a.location), lower(?)) > 0", l.clone().into());
        }
        if let Some(t) = filter.test {
            arg(&mut conds, "a.test = ?", i64::from(t).into());
        }
        if let Some((t, id)) = after {
            args.push(t.into());
            args.push(id.into());
            conds.push(format!("(a.received_at_ms, a.alert_id) < (?{}, ?{})", args.len() - 1, args.len()));
        }
        let state = match filter.state.as_deref() {
            None => "1".to_owned(),
            Some("open") => "state IN ('received', 'notified', 'acknowledged', 'cancelled')".to_owned(),
            Some(s) => {
                args.push(s.to_owned().into());
                format!("state = ?{}", args.len())
            }
        };
        args.push((limit as i64).into());
        let sql = format!(
            "SELECT * FROM (SELECT {COLUMNS}, {STATE_SQL} AS state, {BY_SQL} AS by_responder FROM alerts a
               WHERE {})
             WHERE {state} ORDER BY received_at_ms DESC, alert_id DESC LIMIT ?{}",
            conds.join(" AND "),
            args.len()
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
            Ok(ConsoleAlert { record: super::alerts::alert_from_row(r)?, state: r.get(15)?, by: r.get(16)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One alert, its state and each channel's delivery.
    ///
    /// # Errors
    /// If the query fails.
    pub fn console_alert(&self, id: AlertId) -> Result<Option<(ConsoleAlert, Vec<Delivery>)>, StoreError> {
        let sql = format!("SELECT {COLUMNS}, {STATE_SQL}, {BY_SQL} FROM alerts a WHERE a.alert_id = ?1");
        let alert = self
            .conn
            .query_row(&sql, params![id.to_string()], |r| {
                Ok(ConsoleAlert { record: super::alerts::alert_from_row(r)?, state: r.get(15)?, by: r.get(16)? })
            })
            .optional()?;
        let Some(alert) = alert else { return Ok(None) };
        let deliveries = self.deliveries(id)?;
        Ok(Some((alert, deliveries)))
    }

    /// A number that changes whenever an alert arrives or changes state, for the live page.
    ///
    /// # Errors
    /// If the query fails.
    pub fn console_version(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            // Each term is one index lookup: new alerts (alerts_received), new outbox jobs (cancellations of
            // alerts from before the responder loop), new timeline events, state changes.
            "SELECT COALESCE((SELECT MAX(received_at_ms) FROM alerts), 0) * 7919
                  + COALESCE((SELECT MAX(id) FROM outbox), 0) * 104729
                  + COALESCE((SELECT MAX(id) FROM alert_events), 0) * 15485863
                  + COALESCE((SELECT MAX(changed_at_ms) FROM responses), 0)",
            [],
            |r| r.get(0),
        )?)
    }

    /// The responder loop's record of an alert: who acknowledged or resolved it, the outcome and
    /// note, and its timeline (at_ms, kind, who, via, note), oldest first. Empty for an alert
    /// stored before the responder loop.
    ///
    /// # Errors
    /// If the query fails.
    pub fn console_response(&self, id: AlertId) -> Result<(Option<ResponseRow>, Vec<EventRow>), StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT by_responder, outcome, note, acknowledged_at_ms FROM responses WHERE alert_id = ?1",
                params![id.to_string()],
                |r| {
                    Ok(ResponseRow {
                        by: r.get(0)?,
                        outcome: r.get(1)?,
                        note: r.get(2)?,
                        acknowledged_at_ms: r.get(3)?,
                    })
                },
            )
            .optional()?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT at_ms, kind, who, via, note FROM alert_events WHERE alert_id = ?1 ORDER BY at_ms, id LIMIT 1000",
        )?;
        let events = stmt
            .query_map(params![id.to_string()], |r| {
                Ok(EventRow { at_ms: r.get(0)?, kind: r.get(1)?, who: r.get(2)?, via: r.get(3)?, note: r.get(4)? })
            })?
            .collect::<Result<_, _>>()?;
        Ok((row, events))
    }

    /// Acknowledgements after `after_ms` (their time, and the time from receipt to them, ms),
    /// oldest first, at most `limit`: the time-to-acknowledge histogram of /metrics.
    ///
    /// # Errors
    /// If the query fails.
    pub fn acknowledgements_after(&self, after_ms: i64, limit: usize) -> Result<Vec<(i64, i64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT r.acknowledged_at_ms, r.acknowledged_at_ms - a.received_at_ms FROM responses r
             JOIN alerts a ON a.alert_id = r.alert_id
             WHERE r.acknowledged_at_ms > ?1 ORDER BY r.acknowledged_at_ms LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after_ms, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many alerts there are by (drill, state), for /metrics.
    ///
    /// # Errors
    /// If the query fails.
    pub fn alert_counts(&self) -> Result<Vec<(bool, String, u64)>, StoreError> {
        let sql = "SELECT a.test, COALESCE(r.state, CASE WHEN a.cancelled_at_ms IS NOT NULL THEN 'cancelled' ELSE 'notified' END),
                          COUNT(*) FROM alerts a LEFT JOIN responses r ON r.alert_id = a.alert_id GROUP BY 1, 2";
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many notifications there are by (channel, state: pending, delivered, failed).
    ///
    /// # Errors
    /// If the query fails.
    pub fn notification_counts(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let mut stmt =
            self.conn.prepare_cached("SELECT channel, state, COUNT(*) FROM outbox GROUP BY channel, state")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The argon2id hash (PHC string) of `name`'s console password, if one is set.
    ///
    /// # Errors
    /// If the query fails.
    pub fn password_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT password_hash FROM console_accounts WHERE name = ?1", params![name], |r| r.get(0))
            .optional()?)
    }

    /// Set `name`'s console password hash (a PHC string; never the password).
    ///
    /// # Errors
    /// If the write fails.
    pub fn set_password_hash(&mut self, name: &str, hash: &str, now_ms: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO console_accounts (name, password_hash, updated_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash, updated_at_ms = excluded.updated_at_ms",
            params![name, hash, now_ms],
        )?;
        Ok(())
    }

    /// Record an invitation for `name` whose token hashes to `token_hash`.
    ///
    /// # Errors
    /// If the write fails.
    pub fn create_invitation(
        &mut self,
        name: &str,
        token_hash: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO console_invitations (token_hash, name, created_at_ms, expires_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![token_hash, name, now_ms, expires_at_ms],
        )?;
        Ok(())
    }

    /// The account an unused, unexpired invitation is for.
    ///
    /// # Errors
    /// If the query fails.
    pub fn invitation(&self, token_hash: &str, now_ms: i64) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT name FROM console_invitations WHERE token_hash = ?1 AND used_at_ms IS NULL AND expires_at_ms > ?2",
                params![token_hash, now_ms],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Use an invitation: set the password hash of its account and mark it used, in one
    /// transaction. `None` if it is unknown, used or expired (then nothing changes).
    ///
    /// # Errors
    /// If the transaction fails.
    pub fn accept_invitation(
        &mut self,
        token_hash: &str,
        hash: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let tx = self.conn.transaction()?;
        let name: Option<String> = tx
            .query_row(
                "UPDATE console_invitations SET used_at_ms = ?2
                 WHERE token_hash = ?1 AND used_at_ms IS NULL AND expires_at_ms > ?2 RETURNING name",
                params![token_hash, now_ms],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(name) = &name {
            tx.execute(
                "INSERT INTO console_accounts (name, password_hash, updated_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash, updated_at_ms = excluded.updated_at_ms",
                params![name, hash, now_ms],
            )?;
        }
        tx.commit()?;
        Ok(name)
    }

    /// Write one row: proves the store takes writes now (`/readyz`).
    ///
    /// # Errors
    /// If the write fails.
    pub fn probe_write(&mut self, now_ms: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO console_probe (id, at_ms) VALUES (0, ?1) ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
            params![now_ms],
        )?;
        Ok(())
    }

    /// Agents found silent, and since when.
    ///
    /// # Errors
    /// If the query fails.
    pub fn silent_agents(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut stmt =
            self.conn.prepare_cached("SELECT agent_id, silent_since_ms FROM silent_agents ORDER BY agent_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Record that `agent_id` is silent since `since_ms` (`Some`), or back (`None`).
    ///
    /// # Errors
    /// If the write fails.
    pub fn set_silent(&mut self, agent_id: &str, since_ms: Option<i64>) -> Result<(), StoreError> {
        match since_ms {
            Some(t) => self.conn.execute(
                "INSERT INTO silent_agents (agent_id, silent_since_ms) VALUES (?1, ?2) ON CONFLICT (agent_id) DO NOTHING",
                params![agent_id, t],
            )?,
            None => self.conn.execute("DELETE FROM silent_agents WHERE agent_id = ?1", params![agent_id])?,
        };
        Ok(())
    }
}
