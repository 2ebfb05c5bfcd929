//! The web console's queries (collector/src/http): alerts with their state for the live page and
//! the history, counts for /metrics, accounts and invitations, the write probe of /readyz, and
//! the agents found silent.

use rusqlite::{params, OptionalExtension as _};
use sos_shared::AlertId;

use super::response::{Transition, Via};
use super::sqlite::response::{alert_record, received_event, ALERT_COLUMNS};
use super::{AlertRecord, Db, Delivery, StoreError};

/// An alert's state as the console shows it, in SQL: the responder loop's state (`responses`);
/// for an alert stored before it (no row there), cancelled by the sender or else notified (as
/// [`crate::store::response::AlertState::from_name`] reads it).
const STATE_SQL: &str = "COALESCE((SELECT r.state FROM responses r WHERE r.alert_id = a.alert_id),
     CASE WHEN a.cancelled_at_ms IS NOT NULL THEN 'cancelled' ELSE 'notified' END)";

const BY_SQL: &str = "COALESCE((SELECT r.by_responder FROM responses r WHERE r.alert_id = a.alert_id), '')";

const COLUMNS: &str = "a.alert_id, a.test, a.triggered_at, a.received_at_ms, a.user, a.host, a.ip, a.location,
     a.message, a.source, a.cancelled_at_ms, a.cancel_reason, a.agent_id, a.agent_name, a.agent_host, a.site";

/// The states an alert can be in, as the console's filters name them.
pub const STATES: &[&str] = &["received", "notified", "acknowledged", "resolved", "cancelled", "checked"];

/// States in which an alert still needs someone: unanswered, acknowledged but not resolved,
/// cancelled but not checked in person.
pub const OPEN_STATES: &[&str] = &["received", "notified", "acknowledged", "cancelled"];

/// What became of a POST from an acknowledge link's page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkUse {
    /// This link was used already (nothing changed): by whom and when, ms since the epoch.
    Used {
        /// The responder recorded at that use.
        by: String,
        /// When.
        at_ms: i64,
    },
    /// What the acknowledgement came to. Only [`Transition::New`] records the link as used.
    Ack(Transition),
}

/// One use of an acknowledge link, as [`Db::acknowledge_by_link`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAck {
    /// The link's nonce, hex ([`crate::links::AckToken::nonce_hex`]).
    pub nonce: String,
    /// The alert it is for.
    pub alert: AlertId,
    /// The channel whose message carried it.
    pub channel: String,
    /// When the link expires, ms since the epoch.
    pub expires_at_ms: i64,
    /// Who acknowledges: the logged-in account, else a name typed in or "via CHANNEL link".
    pub responder: String,
    /// A note typed in.
    pub note: String,
}

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
            Ok(ConsoleAlert { record: super::sqlite::response::alert_record(r, 0)?, state: r.get(16)?, by: r.get(17)? })
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
                Ok(ConsoleAlert {
                    record: super::sqlite::response::alert_record(r, 0)?,
                    state: r.get(16)?,
                    by: r.get(17)?,
                })
            })
            .optional()?;
        let Some(alert) = alert else { return Ok(None) };
        let deliveries = self.deliveries(id)?;
        Ok(Some((alert, deliveries)))
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
            .collect::<Result<Vec<EventRow>, _>>()?;
        // The `received` event, made from the alert's row where it is not stored.
        let events = match &row {
            Some(_) if !events.iter().any(|e| e.kind == "received") => {
                let alert = self
                    .conn
                    .query_row(
                        &format!("SELECT {ALERT_COLUMNS} FROM alerts a WHERE a.alert_id = ?1"),
                        params![id.to_string()],
                        |r| alert_record(r, 0),
                    )
                    .optional()?;
                let mut events = events;
                if let Some(alert) = alert {
                    let e = received_event(&alert);
                    // In time order; stored events of the same millisecond came after it.
                    let at = events.iter().take_while(|x| x.at_ms < e.at_ms).count();
                    let e =
                        EventRow { at_ms: e.at_ms, kind: e.kind, who: e.who, via: e.via.name().into(), note: e.note };
                    events.insert(at, e);
                    // As many as a stored `received` event would have left in the window.
                    events.truncate(1000);
                }
                events
            }
            _ => events,
        };
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

    /// Acknowledge through a link, once: in one transaction, refuse a link whose nonce was
    /// used, else acknowledge ([`Db::acknowledge`], via `channel_link`) and, if that changed
    /// the alert, record the nonce. Rows of links expired for a day are deleted on the way.
    /// `now_ms` is the wall clock, `jobs_at_ms` the outbox clock.
    ///
    /// # Errors
    /// If the transaction fails; then nothing changed.
    pub fn acknowledge_by_link(&mut self, link: &LinkAck, now_ms: i64, jobs_at_ms: i64) -> Result<LinkUse, StoreError> {
        let tx = self.write()?;
        tx.execute("DELETE FROM ack_links_used WHERE expires_at_ms < ?1", params![now_ms - 86_400_000])?;
        let used: Option<(String, i64)> = tx
            .query_row(
                "SELECT by_responder, used_at_ms FROM ack_links_used WHERE nonce = ?1",
                params![link.nonce],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((by, at_ms)) = used {
            return Ok(LinkUse::Used { by, at_ms });
        }
        let t = Db::acknowledge_in(&tx, link.alert, &link.responder, Via::ChannelLink, &link.note, now_ms, jobs_at_ms)?;
        if matches!(t, Transition::New { .. }) {
            tx.execute(
                "INSERT INTO ack_links_used (nonce, alert_id, channel, by_responder, used_at_ms, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![link.nonce, link.alert.to_string(), link.channel, link.responder, now_ms, link.expires_at_ms],
            )?;
            tx.commit()?;
        }
        Ok(LinkUse::Ack(t))
    }

    /// Who used the acknowledge link whose nonce is `nonce`, and when (ms); `None` if unused.
    ///
    /// # Errors
    /// If the query fails.
    pub fn link_used(&self, nonce: &str) -> Result<Option<(String, i64)>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT by_responder, used_at_ms FROM ack_links_used WHERE nonce = ?1", params![nonce], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
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
    pub fn set_silent(&mut self, agent_id: &str, since_ms: Option<i64>) -> Result<bool, StoreError> {
        let changed = match since_ms {
            Some(t) => self.conn.execute(
                "INSERT INTO silent_agents (agent_id, silent_since_ms) VALUES (?1, ?2) ON CONFLICT (agent_id) DO NOTHING",
                params![agent_id, t],
            )?,
            None => self.conn.execute("DELETE FROM silent_agents WHERE agent_id = ?1", params![agent_id])?,
        };
        Ok(changed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::response::ResponsePlan;
    use crate::store::tests::alert;

    fn link(nonce: &str) -> LinkAck {
        LinkAck {
            nonce: nonce.repeat(16),
            alert: AlertId::from_u128(1),
            channel: "slack".into(),
            expires_at_ms: 10_000_000,
            responder: "via slack link".into(),
            note: String::new(),
        }
    }

    fn count(db: &Db, sql: &str) -> i64 {
        db.conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_link_acknowledges_once_in_the_same_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("sos.db")).unwrap();
        db.insert_alerts_planned(&[alert(1)], &ResponsePlan::channels_only(&["log", "slack"]), 0).unwrap();
        let first = db.acknowledge_by_link(&link("aa"), 5_000, 5_000).unwrap();
        assert_eq!(first, LinkUse::Ack(Transition::New { at_ms: 5_000 }));
        assert_eq!(
            db.acknowledge_by_link(&link("aa"), 6_000, 6_000).unwrap(),
            LinkUse::Used { by: "via slack link".into(), at_ms: 5_000 }
        );
        // Another link to the same alert: nothing changes, and it is not spent.
        let other = db.acknowledge_by_link(&link("bb"), 7_000, 7_000).unwrap();
        assert_eq!(other, LinkUse::Ack(Transition::Already { by: "via slack link".into() }));
        assert_eq!(count(&db, "SELECT COUNT(*) FROM ack_links_used"), 1);
        assert_eq!(count(&db, "SELECT COUNT(*) FROM alert_events WHERE kind = 'acknowledged'"), 1);
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM alert_events WHERE kind = 'acknowledged' AND via = 'channel_link'"),
            1
        );
        // An unknown alert records nothing.
        let mut unknown = link("cc");
        unknown.alert = AlertId::from_u128(2);
        assert_eq!(db.acknowledge_by_link(&unknown, 8_000, 8_000).unwrap(), LinkUse::Ack(Transition::Unknown));
        assert_eq!(count(&db, "SELECT COUNT(*) FROM ack_links_used"), 1);
    }

    #[test]
    fn used_links_are_forgotten_a_day_after_they_expired() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("sos.db")).unwrap();
        let plan = ResponsePlan::channels_only(&["log"]);
        db.insert_alerts_planned(&[alert(1), alert(2)], &plan, 0).unwrap();
        db.acknowledge_by_link(&link("aa"), 5_000, 5_000).unwrap();
        let mut later = link("bb");
        later.alert = AlertId::from_u128(2);
        later.expires_at_ms = 200_000_000;
        let r = db.acknowledge_by_link(&later, 10_000_000 + 86_400_001, 0).unwrap();
        assert_eq!(r, LinkUse::Ack(Transition::New { at_ms: 10_000_000 + 86_400_001 }));
        assert_eq!(count(&db, "SELECT COUNT(*) FROM ack_links_used"), 1, "the expired link's row is gone");
    }

    #[test]
    fn a_forwarded_alert_shows_its_site_and_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("sos.db")).unwrap();
        let mut forwarded = alert(1);
        forwarded.site = Some("Branch A".into());
        db.insert_alerts_planned(&[forwarded, alert(2)], &ResponsePlan::channels_only(&["log"]), 0).unwrap();
        db.acknowledge_by_link(&link("aa"), 5_000, 5_000).unwrap();
        let (one, _) = db.console_alert(AlertId::from_u128(1)).unwrap().unwrap();
        assert_eq!(one.record.site.as_deref(), Some("Branch A"));
        assert_eq!((one.state.as_str(), one.by.as_str()), ("acknowledged", "via slack link"));
        let all = db.console_alerts(&AlertFilter::default(), None, 10).unwrap();
        let site =
            |n: u128| all.iter().find(|a| a.record.alert_id == AlertId::from_u128(n)).unwrap().record.site.clone();
        assert_eq!((site(1).as_deref(), site(2)), (Some("Branch A"), None));
    }
}
