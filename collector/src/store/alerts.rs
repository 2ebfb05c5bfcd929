//! Alerts: storing them with their outbox jobs, cancelling them, reading them back.

use rusqlite::{params, OptionalExtension};
use sos_shared::AlertId;

use super::{
    enrolled_as, AlertRecord, Cancellation, Cancelled, Db, Delivery, JobOutcome, NewAlert, ResponsePlan, StoreError,
    Stored,
};

/// What [`Db::commit_group`] did: each alert stored or a duplicate, and each set of outcomes
/// recorded or why not.
pub(crate) type GroupCommitted = (Vec<Stored>, Vec<Result<(), StoreError>>);

impl Db {
    /// Store alerts with one outbox job per channel of `channels` (one tier, no responders):
    /// [`Db::insert_alerts_planned`] with [`ResponsePlan::channels_only`].
    ///
    /// # Errors
    /// If the transaction fails; then nothing was stored.
    pub fn insert_alerts(
        &mut self,
        alerts: &[NewAlert],
        channels: &[&'static str],
        jobs_at_ms: i64,
    ) -> Result<Vec<Stored>, StoreError> {
        self.insert_alerts_planned(alerts, &ResponsePlan::channels_only(channels), jobs_at_ms)
    }

    /// Store alerts in one transaction, all or nothing, each with its response started: its
    /// state, its `received` event, and the first tier of its escalation policy fired (the
    /// tier's outbox jobs, its deadline; every tier at once and the sender's `unanswered`
    /// notice if nobody can be reached). The jobs and deadlines are on the
    /// [`outbox_clock_ms`](super::outbox_clock_ms) scale, from `jobs_at_ms`.
    ///
    /// # Errors
    /// If the transaction fails; then nothing was stored.
    pub fn insert_alerts_planned(
        &mut self,
        alerts: &[NewAlert],
        plan: &ResponsePlan,
        jobs_at_ms: i64,
    ) -> Result<Vec<Stored>, StoreError> {
        let tx = self.conn.transaction()?;
        let out = Db::insert_in(&tx, alerts, plan, jobs_at_ms)?;
        tx.commit()?;
        Ok(out)
    }

    /// One group commit of the writer: `alerts` stored as [`Db::insert_alerts_planned`] does,
    /// and each set of delivery outcomes recorded as [`Db::finish`] does, in one transaction,
    /// so one sync of the WAL for both. Each set of outcomes is a savepoint of its own: one that
    /// fails is rolled back alone (its error in the second list; the outbox worker tries again)
    /// and takes nothing else with it.
    ///
    /// # Errors
    /// If storing the alerts or the commit fails; then nothing was stored or recorded.
    pub(crate) fn commit_group(
        &mut self,
        alerts: &[NewAlert],
        plan: &ResponsePlan,
        jobs_at_ms: i64,
        outcomes: &[(&[(i64, JobOutcome)], i64)],
    ) -> Result<GroupCommitted, StoreError> {
        let mut tx = self.conn.transaction()?;
        let stored = Db::insert_in(&tx, alerts, plan, jobs_at_ms)?;
        let mut finished = Vec::with_capacity(outcomes.len());
        for (set, now_ms) in outcomes {
            {
                let sp = tx.savepoint()?;
                match Db::finish_in(&sp, set, *now_ms) {
                    Ok(()) => finished.push(sp.commit().map_err(StoreError::from)),
                    // Dropping the savepoint rolls it back.
                    Err(e) => finished.push(Err(e)),
                }
            }
            // An error that ended the whole transaction (disk full, I/O) rolled the alerts back
            // too: nothing of the group may be reported stored, nor a later savepoint start a
            // transaction of its own.
            if tx.is_autocommit() {
                return Err(StoreError::Sqlite("the group's transaction was rolled back".into()));
            }
        }
        tx.commit()?;
        Ok((stored, finished))
    }

    fn insert_in(
        tx: &rusqlite::Transaction<'_>,
        alerts: &[NewAlert],
        plan: &ResponsePlan,
        jobs_at_ms: i64,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut out = Vec::with_capacity(alerts.len());
        let mut insert_alert = tx.prepare_cached(
            "INSERT INTO alerts (alert_id, received_at_ms, triggered_at, test, user, host, ip,
                                 location, message, agent, source, key_id, agent_id, agent_name, agent_host, site)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
             ON CONFLICT (alert_id) DO NOTHING",
        )?;
        for a in alerts {
            let s = &a.sos;
            let id = s.alert_id.to_string();
            let n = insert_alert.execute(params![
                id,
                a.received_at_ms,
                s.triggered_at as i64,
                s.test,
                s.user,
                s.host,
                s.ip,
                s.location,
                s.message,
                s.agent,
                a.source.to_string(),
                a.key_id,
                a.enrolled.as_ref().map(|e| &e.agent_id),
                a.enrolled.as_ref().map(|e| &e.name),
                a.enrolled.as_ref().map(|e| &e.host),
                a.site,
            ])?;
            if n == 1 {
                Db::start_response(tx, plan, a, jobs_at_ms)?;
                out.push(Stored::New);
            } else {
                out.push(Stored::Duplicate);
            }
        }
        Ok(out)
    }

    /// The most recent alerts with the delivery state of each channel, newest first.
    ///
    /// # Errors
    /// If the query fails.
    pub fn recent_alerts(&self, limit: usize) -> Result<Vec<(AlertRecord, Vec<Delivery>)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT alert_id, test, triggered_at, received_at_ms, user, host, ip, location, message, source,
                    cancelled_at_ms, cancel_reason, agent_id, agent_name, agent_host, site
             FROM alerts ORDER BY received_at_ms DESC, alert_id LIMIT ?1",
        )?;
        let alerts = stmt.query_map(params![limit as i64], alert_with_site)?.collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(alerts.len());
        for a in alerts {
            let d = self.deliveries(a.alert_id)?;
            out.push((a, d));
        }
        Ok(out)
    }

    /// Every outbox job of an alert, oldest first: the channel, with what the job is when it
    /// is not tier 1's notification (`slack (cancel)`, `email (tier 2)`, `slack (reminder, round 2)`,
    /// `slack (acknowledged)`).
    ///
    /// # Errors
    /// If the query fails.
    pub fn deliveries(&self, alert_id: AlertId) -> Result<Vec<Delivery>, StoreError> {
        let mut jobs = self.conn.prepare_cached(
            "SELECT channel || CASE WHEN kind = 'alert' AND tier > 1 THEN ' (tier ' || tier || ')'
                                    WHEN kind = 'alert' THEN ''
                                    WHEN kind = 'reminder' THEN ' (reminder, round ' || tier || ')'
                                    ELSE ' (' || kind || ')' END,
                    state, attempts, last_error, delivered_at_ms FROM outbox
             WHERE alert_id = ?1 ORDER BY id",
        )?;
        let d = jobs
            .query_map(params![alert_id.to_string()], |r| {
                Ok(Delivery {
                    channel: r.get(0)?,
                    state: r.get(1)?,
                    attempts: r.get(2)?,
                    last_error: r.get(3)?,
                    delivered_at_ms: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(d)
    }

    /// Record that the sender cancelled `alert_id` and queue one cancellation notice per
    /// channel, in one transaction. Only who sent the alert may cancel it: `principal` is
    /// `agent:<agent id>` for an enrolled agent (whichever of its keys it uses now) and the key
    /// id for the site key (see [`principal`](super::principal)).
    ///
    /// # Errors
    /// If the transaction fails; then nothing was recorded.
    pub fn cancel(
        &mut self,
        alert_id: AlertId,
        reason: &str,
        principal: &str,
        channels: &[&str],
        now_ms: i64,
        jobs_at_ms: i64,
    ) -> Result<Cancelled, StoreError> {
        let tx = self.write()?;
        let id = alert_id.to_string();
        let row: Option<(String, Option<i64>)> = tx
            .query_row(
                "SELECT COALESCE('agent:' || agent_id, key_id), cancelled_at_ms FROM alerts WHERE alert_id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let outcome = match row {
            None => Cancelled::Unknown,
            Some((k, _)) if k != principal => Cancelled::Unknown,
            Some((_, Some(_))) => Cancelled::Already,
            Some((_, None)) => {
                tx.execute(
                    "UPDATE alerts SET cancelled_at_ms = ?2, cancel_reason = ?3 WHERE alert_id = ?1",
                    params![id, now_ms, reason],
                )?;
                for ch in Db::cancel_response(&tx, &id, reason, now_ms, channels)? {
                    // The responders it was emailed to are told too ("check in person").
                    let recipients = super::sqlite::response::notified_recipients(&tx, &id, &ch)?;
                    tx.execute(
                        "INSERT INTO outbox (alert_id, channel, kind, state, created_at_ms, next_attempt_at_ms,
                                             recipients)
                         VALUES (?1, ?2, 'cancel', 'pending', ?3, ?3, ?4) ON CONFLICT DO NOTHING",
                        params![id, ch, jobs_at_ms, recipients],
                    )?;
                }
                Cancelled::New
            }
        };
        tx.commit()?;
        Ok(outcome)
    }
}

/// An alert from a row whose first 15 columns are `alert_id, test, triggered_at, received_at_ms,
/// user, host, ip, location, message, source, cancelled_at_ms, cancel_reason, agent_id,
/// agent_name, agent_host` (`site` is not read: see [`alert_with_site`]).
pub(crate) fn alert_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRecord> {
    let id: String = r.get(0)?;
    Ok(AlertRecord {
        alert_id: id
            .parse()
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))?,
        test: r.get(1)?,
        triggered_at: r.get(2)?,
        received_at_ms: r.get(3)?,
        user: r.get(4)?,
        host: r.get(5)?,
        ip: r.get(6)?,
        location: r.get(7)?,
        message: r.get(8)?,
        source: r.get(9)?,
        enrolled: enrolled_as(r, 12)?,
        cancellation: match (r.get::<_, Option<i64>>(10)?, r.get::<_, Option<String>>(11)?) {
            (Some(at_ms), reason) => Some(Cancellation { at_ms, reason: reason.unwrap_or_default() }),
            (None, _) => None,
        },
        audience: Default::default(),
        update: None,
        site: None,
    })
}

/// [`alert_from_row`] with the `site` column 16th.
fn alert_with_site(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRecord> {
    Ok(AlertRecord { site: r.get(15)?, ..alert_from_row(r)? })
}

#[cfg(test)]
mod tests {
    use super::super::tests::alert;
    use super::*;

    #[test]
    fn a_group_commit_stores_its_alerts_and_outcomes_together_and_a_failing_set_of_outcomes_alone_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        let mut db = Db::open(&path).unwrap();
        db.insert_alerts(&[alert(1), alert(2)], &["slack"], 1000).unwrap();
        let jobs = db.due_jobs("slack", 1000, 10).unwrap();
        let (first, second) = (jobs[0].id, jobs[1].id);
        // The store refuses any change to the second job (as a failing write would).
        db.conn
            .execute_batch(&format!(
                "CREATE TRIGGER refuse BEFORE UPDATE ON outbox WHEN old.id = {second}
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;"
            ))
            .unwrap();
        let delivered = [(first, JobOutcome::Delivered)];
        let refused = [(second, JobOutcome::Delivered)];
        let (stored, finished) = db
            .commit_group(
                &[alert(3)],
                &ResponsePlan::channels_only(&["slack"]),
                2000,
                &[(&delivered, 2000), (&refused, 2000)],
            )
            .unwrap();
        assert_eq!(stored, [Stored::New]);
        assert!(finished[0].is_ok(), "{finished:?}");
        assert!(finished[1].is_err(), "{finished:?}");
        drop(db);
        // After reopening: the new alert and its job, the first outcome; the refused one undone.
        let db = Db::open(&path).unwrap();
        let state = |id: i64| -> String {
            db.conn.query_row("SELECT state FROM outbox WHERE id = ?1", [id], |r| r.get(0)).unwrap()
        };
        assert_eq!(state(first), "delivered");
        assert_eq!(state(second), "pending");
        let pending: Vec<AlertId> = db.due_jobs("slack", 3000, 10).unwrap().iter().map(|j| j.alert.alert_id).collect();
        assert_eq!(pending, [AlertId::from_u128(2), AlertId::from_u128(3)]);
    }
}
