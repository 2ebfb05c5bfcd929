//! The outbox's queries: due jobs, the next deadline, outcomes, re-basing deadlines at start.

use rusqlite::{params, OptionalExtension};

use super::sqlite::response::{alert_record, ALERT_COLUMNS, DETAIL_SEP};
use super::{AlertRecord, AlertUpdate, Audience, Db, Job, JobOutcome, StoreError};

impl Db {
    /// Pending jobs of `channel` due at `now_ms`: reminders last. First the pages of alerts and
    /// the news a person caused (a cancellation, who answered), oldest first; then reminders,
    /// oldest first. A new SOS is never queued behind the reminders of an unanswered storm, and
    /// news is held back behind its own alert's page.
    ///
    /// # Errors
    /// If the query fails.
    pub fn due_jobs(&self, channel: &str, now_ms: i64, limit: usize) -> Result<Vec<Job>, StoreError> {
        // Reminders (`?4` = 1) after the rest (0): each a range of the index `outbox_due`, read
        // in order up to the limit, never all the due jobs sorted.
        let mut stmt = self.conn.prepare_cached(&due_jobs_sql())?;
        let mut jobs = Vec::new();
        for reminders in [false, true] {
            let left = limit.saturating_sub(jobs.len());
            if left == 0 {
                break;
            }
            let rows = stmt.query_map(params![channel, now_ms, left as i64, reminders], Self::job_row)?;
            for job in rows {
                jobs.push(job?);
            }
        }
        Ok(jobs)
    }

    /// A job of [`Db::due_jobs`]'s query.
    fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
        let kind: String = r.get(3)?;
        let list = |at: usize| -> rusqlite::Result<Vec<String>> {
            Ok(r.get::<_, String>(at)?.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect())
        };
        let mut alert = alert_record(r, 8)?;
        alert.audience = Audience { tier: r.get::<_, i64>(4)?.max(1) as u32, mentions: list(5)?, emails: list(6)? };
        job_kind(&kind, &r.get::<_, String>(7)?, &mut alert);
        Ok(Job { id: r.get(0)?, attempts: r.get(1)?, created_at_ms: r.get(2)?, alert })
    }

    /// When the next pending job of `channel` that [`Db::due_jobs`] would return is due (a
    /// cancellation held back behind its pending alert is not: counting it would wake the
    /// worker for nothing, again and again, until the alert is delivered).
    ///
    /// # Errors
    /// If the query fails.
    pub fn next_due(&self, channel: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.conn.query_row(NEXT_DUE, params![channel], |r| r.get(0)).optional()?.flatten())
    }

    /// Re-base `channel`'s pending jobs on the outbox clock of this run (which starts at the
    /// wall clock of the start, see [`outbox_clock_ms`](super::outbox_clock_ms)): a job created "in the future" (the
    /// clock was stepped back since) is moved back with its deadline, so that its age counts
    /// from `now_ms`, and no retry waits longer than `max_wait_ms` from `now_ms`. Returns how
    /// many jobs changed.
    ///
    /// # Errors
    /// If the update fails.
    pub fn rebase_outbox(&mut self, channel: &str, now_ms: i64, max_wait_ms: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE outbox SET created_at_ms = MIN(created_at_ms, ?2),
                               next_attempt_at_ms = MIN(next_attempt_at_ms - MAX(created_at_ms - ?2, 0), ?2 + ?3)
             WHERE channel = ?1 AND state = 'pending' AND (created_at_ms > ?2 OR next_attempt_at_ms > ?2 + ?3)",
            params![channel, now_ms, max_wait_ms],
        )?)
    }

    /// Record the outcome of attempts, all in one transaction.
    ///
    /// # Errors
    /// If the transaction fails; then nothing was recorded and the jobs will be tried again.
    pub fn finish(&mut self, outcomes: &[(i64, JobOutcome)], now_ms: i64) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        Db::finish_in(&tx, outcomes, now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// [`Db::finish`] inside the caller's transaction.
    pub(crate) fn finish_in(
        conn: &rusqlite::Connection,
        outcomes: &[(i64, JobOutcome)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        for (id, outcome) in outcomes {
            match outcome {
                JobOutcome::Delivered => conn
                    .prepare_cached(
                        "UPDATE outbox SET state = 'delivered', attempts = attempts + 1,
                                delivered_at_ms = ?2, last_error = NULL WHERE id = ?1",
                    )?
                    .execute(params![id, now_ms])?,
                JobOutcome::Retry { next_attempt_at_ms, error } => conn
                    .prepare_cached(
                        "UPDATE outbox SET attempts = attempts + 1, next_attempt_at_ms = ?2,
                                last_error = ?3 WHERE id = ?1",
                    )?
                    .execute(params![id, next_attempt_at_ms, error])?,
                JobOutcome::Failed { error } => conn
                    .prepare_cached(
                        "UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ?2
                         WHERE id = ?1",
                    )?
                    .execute(params![id, error])?,
            };
        }
        Ok(())
    }
}

/// What a job of `kind` says about its alert, on both backends: the update its `detail` holds
/// for a reminder, "acknowledged by" or "resolved by"; the cancellation only on a cancellation
/// job.
pub(crate) fn job_kind(kind: &str, detail: &str, alert: &mut AlertRecord) {
    let mut fields = detail.split(DETAIL_SEP).map(str::to_owned);
    let mut field = || fields.next().unwrap_or_default();
    alert.update = match kind {
        "reminder" => Some(AlertUpdate::Reminder { after_secs: field().parse().unwrap_or(0) }),
        "acknowledged" => Some(AlertUpdate::Acknowledged { by: field(), note: field() }),
        "resolved" => Some(AlertUpdate::Resolved { by: field(), note: field(), outcome: field() }),
        _ => None,
    };
    if kind != "cancel" {
        alert.cancellation = None;
    }
}

/// The query of [`Db::due_jobs`] (`?4`: reminders or the rest).
fn due_jobs_sql() -> String {
    format!(
        "SELECT o.id, o.attempts, o.created_at_ms, o.kind, o.tier, o.mentions, o.recipients, o.detail, {ALERT_COLUMNS}
             FROM outbox o JOIN alerts a ON a.alert_id = o.alert_id
             WHERE o.channel = ?1 AND o.state = 'pending' AND (o.kind = 'reminder') = ?4
               AND o.next_attempt_at_ms <= ?2
               -- news about an alert (its cancellation, a reminder, who answered) never
               -- overtakes the alert on a channel
               AND NOT (o.kind <> 'alert' AND EXISTS (
                   SELECT 1 FROM outbox p WHERE p.alert_id = o.alert_id AND p.channel = o.channel
                                          AND p.kind = 'alert' AND p.state = 'pending'))
             ORDER BY o.next_attempt_at_ms, o.id LIMIT ?3"
    )
}

/// The query of [`Db::next_due`]: the first due of each part of `due_jobs` (news held back
/// behind its page is not); the aggregate MIN, which passes over a part that has none (NULL).
const NEXT_DUE: &str = "SELECT MIN(due) FROM (
                     SELECT (SELECT o.next_attempt_at_ms FROM outbox o
                             WHERE o.channel = ?1 AND o.state = 'pending' AND (o.kind = 'reminder') = 0
                               AND NOT (o.kind <> 'alert' AND EXISTS (
                                   SELECT 1 FROM outbox p WHERE p.alert_id = o.alert_id AND p.channel = o.channel
                                                          AND p.kind = 'alert' AND p.state = 'pending'))
                             ORDER BY o.next_attempt_at_ms LIMIT 1) AS due
                     UNION ALL
                     SELECT (SELECT o.next_attempt_at_ms FROM outbox o
                             WHERE o.channel = ?1 AND o.state = 'pending' AND (o.kind = 'reminder') = 1
                               AND NOT EXISTS (
                                   SELECT 1 FROM outbox p WHERE p.alert_id = o.alert_id AND p.channel = o.channel
                                                          AND p.kind = 'alert' AND p.state = 'pending')
                             ORDER BY o.next_attempt_at_ms LIMIT 1))";

#[cfg(test)]
mod tests {
    use super::*;

    /// Each outbox query at the heart of paging: a range of `outbox_due` read in order (the
    /// kind's class an equality of it), a held-back check by the unique index of the alert's
    /// jobs, and no sort: in a storm nothing here may cost O(pending).
    #[test]
    fn the_outbox_queries_walk_the_indexes_and_never_sort() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("sos.db")).unwrap();
        let plan = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> Vec<String> {
            db.conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(params, |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        for (name, plan) in [
            ("due_jobs", plan(&due_jobs_sql(), &[&"slack", &0i64, &64i64, &false])),
            ("next_due", plan(NEXT_DUE, &[&"slack"])),
        ] {
            let outbox: Vec<&String> =
                plan.iter().filter(|p| p.contains(" o USING") || p.contains(" p USING")).collect();
            assert!(!outbox.is_empty(), "{name}: {plan:?}");
            for step in outbox {
                if step.contains(" o USING") {
                    assert!(step.contains("INDEX outbox_due (channel=? AND state=? AND <expr>=?"), "{name}: {plan:?}");
                } else {
                    assert!(step.contains("alert_id=? AND channel=? AND kind=?"), "{name}: {plan:?}");
                }
            }
            assert!(
                !plan.iter().any(|p| p.contains("TEMP B-TREE") || (p.starts_with("SCAN") && p != "SCAN CONSTANT ROW")),
                "{name}: {plan:?}"
            );
        }
    }
}
