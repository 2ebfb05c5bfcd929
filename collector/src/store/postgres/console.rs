//! The web console's queries on PostgreSQL ([`crate::store::console`]'s `impl Db`, ported):
//! alerts with their state, counts for /metrics, accounts and invitations, the write probe of
//! /readyz, the agents found silent; and the pending jobs per channel.
//!
//! Several collectors at once: every console shows the same rows; a change of what it shows
//! live (accounts, silent agents) sends `NOTIFY sos_changes` in its transaction, so every
//! collector's live page refreshes. An invitation is used once: the `UPDATE … WHERE used_at_ms
//! IS NULL … RETURNING` of a second collector waits for the first's row lock and then finds it
//! used.

use sos_shared::AlertId;
use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;

use super::{alert_from, pg_error, text, PgStore, ALERT_COLUMNS};
use crate::store::console::{AlertFilter, ConsoleAlert, EventRow, ResponseRow};
use crate::store::{Delivery, StoreError};

/// An alert's state as the console shows it (see `store/console.rs`).
const STATE_SQL: &str = "COALESCE((SELECT r.state FROM responses r WHERE r.alert_id = a.alert_id),
     CASE WHEN a.cancelled_at_ms IS NOT NULL THEN 'cancelled' ELSE 'notified' END)";

/// Who acknowledged an alert, empty if nobody yet.
const BY_SQL: &str = "COALESCE((SELECT r.by_responder FROM responses r WHERE r.alert_id = a.alert_id), '')";

/// A parameter of a query built at run time.
type Param = Box<dyn ToSql + Sync + Send>;

/// A console alert from a row of its state, who acknowledged it, then [`ALERT_COLUMNS`] (last,
/// so that the alert's columns may grow).
fn console_alert_from(r: &tokio_postgres::Row) -> Result<ConsoleAlert, StoreError> {
    Ok(ConsoleAlert { state: r.get(0), by: r.get(1), record: alert_from(r, 2)? })
}

/// Each channel's delivery of alert `id` (as `Db::deliveries`).
async fn deliveries(c: &impl GenericClient, id: &str) -> Result<Vec<Delivery>, StoreError> {
    let rows = c
        .query(
            "SELECT channel || CASE WHEN kind = 'alert' AND tier > 1 THEN ' (tier ' || tier || ')'
                                    WHEN kind = 'alert' THEN ''
                                    WHEN kind = 'reminder' THEN ' (reminder, round ' || tier || ')'
                                    ELSE ' (' || kind || ')' END,
                    state, attempts::bigint, last_error, delivered_at_ms FROM outbox
             WHERE alert_id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .map_err(pg_error)?;
    Ok(rows
        .iter()
        .map(|r| Delivery {
            channel: r.get(0),
            state: r.get(1),
            attempts: r.get::<_, i64>(2).clamp(0, i64::from(u32::MAX)) as u32,
            last_error: r.get(3),
            delivered_at_ms: r.get(4),
        })
        .collect())
}

/// A count from the database (never negative).
fn count(n: i64) -> u64 {
    n.max(0) as u64
}

impl PgStore {
    /// See [`crate::store::Db::console_alerts`]: newest first (then by id, descending), at most
    /// `limit`, strictly after `after`. Only the conditions that apply are in the query, so
    /// that it walks the `alerts_received` index over their range. Alert ids are hexadecimal
    /// digits of one length: every collation orders them as SQLite does.
    ///
    /// # Errors
    /// If the query fails.
    pub async fn console_alerts(
        &self,
        filter: &AlertFilter,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<ConsoleAlert>, StoreError> {
        let mut conds = vec!["TRUE".to_owned()];
        let mut args: Vec<Param> = Vec::new();
        let mut arg = |conds: &mut Vec<String>, sql: &str, v: Param| {
            args.push(v);
            conds.push(sql.replace('?', &format!("${}", args.len())));
        };
        if let Some(t) = filter.from_ms {
            arg(&mut conds, "a.received_at_ms >= ?", Box::new(t));
        }
        if let Some(t) = filter.to_ms {
            arg(&mut conds, "a.received_at_ms < ?", Box::new(t));
        }
        if let Some(l) = &filter.location {
            arg(&mut conds, "strpos(lower(a.location), lower(?)) > 0", Box::new(text(l).into_owned()));
        }
        if let Some(t) = filter.test {
            arg(&mut conds, "a.test = ?", Box::new(t));
        }
        if let Some((t, id)) = after {
            args.push(Box::new(t));
            args.push(Box::new(id));
            conds.push(format!("(a.received_at_ms, a.alert_id) < (${}, ${})", args.len() - 1, args.len()));
        }
        let state = match filter.state.as_deref() {
            None => "TRUE".to_owned(),
            Some("open") => "state IN ('received', 'notified', 'acknowledged', 'cancelled')".to_owned(),
            Some(s) => {
                args.push(Box::new(s.to_owned()));
                format!("state = ${}", args.len())
            }
        };
        args.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
        let sql = format!(
            "SELECT * FROM (SELECT {STATE_SQL} AS state, {BY_SQL} AS by_responder, {ALERT_COLUMNS} FROM alerts a
               WHERE {}) AS s
             WHERE {state} ORDER BY received_at_ms DESC, alert_id DESC LIMIT ${}",
            conds.join(" AND "),
            args.len()
        );
        self.run(move |c| {
            Box::pin(async move {
                let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
                let rows = c.query(&sql, &params).await.map_err(pg_error)?;
                rows.iter().map(console_alert_from).collect()
            })
        })
        .await
    }

    /// See [`crate::store::Db::console_alert`]: one alert, its state and each channel's delivery.
    ///
    /// # Errors
    /// If the query fails.
    pub async fn console_alert(&self, id: AlertId) -> Result<Option<(ConsoleAlert, Vec<Delivery>)>, StoreError> {
        let id = id.to_string();
        self.run(move |c| {
            Box::pin(async move {
                let sql = format!("SELECT {STATE_SQL}, {BY_SQL}, {ALERT_COLUMNS} FROM alerts a WHERE a.alert_id = $1");
                let Some(row) = c.query_opt(&sql, &[&id]).await.map_err(pg_error)? else { return Ok(None) };
                let alert = console_alert_from(&row)?;
                Ok(Some((alert, deliveries(&**c, &id).await?)))
            })
        })
        .await
    }

    /// See [`crate::store::Db::console_response`]: the response row and the timeline, oldest
    /// first (at most 1000 events).
    ///
    /// # Errors
    /// If the query fails.
    pub async fn console_response(&self, id: AlertId) -> Result<(Option<ResponseRow>, Vec<EventRow>), StoreError> {
        let id = id.to_string();
        self.run(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "SELECT by_responder, outcome, note, acknowledged_at_ms FROM responses WHERE alert_id = $1",
                        &[&id],
                    )
                    .await
                    .map_err(pg_error)?
                    .map(|r| ResponseRow {
                        by: r.get(0),
                        outcome: r.get(1),
                        note: r.get(2),
                        acknowledged_at_ms: r.get(3),
                    });
                let events = c
                    .query(
                        "SELECT at_ms, kind, who, via, note FROM alert_events WHERE alert_id = $1
                         ORDER BY at_ms, id LIMIT 1000",
                        &[&id],
                    )
                    .await
                    .map_err(pg_error)?
                    .iter()
                    .map(|r| EventRow { at_ms: r.get(0), kind: r.get(1), who: r.get(2), via: r.get(3), note: r.get(4) })
                    .collect();
                Ok((row, events))
            })
        })
        .await
    }

    /// See [`crate::store::Db::acknowledgements_after`]: (when, time from receipt), oldest first.
    ///
    /// # Errors
    /// If the query fails.
    pub async fn acknowledgements_after(&self, after_ms: i64, limit: usize) -> Result<Vec<(i64, i64)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT r.acknowledged_at_ms, r.acknowledged_at_ms - a.received_at_ms FROM responses r
                         JOIN alerts a ON a.alert_id = r.alert_id
                         WHERE r.acknowledged_at_ms > $1 ORDER BY r.acknowledged_at_ms LIMIT $2",
                        &[&after_ms, &limit],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
        })
        .await
    }

    /// See [`crate::store::Db::alert_counts`]: how many alerts by (drill, state).
    ///
    /// # Errors
    /// If the query fails.
    pub async fn alert_counts(&self) -> Result<Vec<(bool, String, u64)>, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT a.test, COALESCE(r.state,
                                    CASE WHEN a.cancelled_at_ms IS NOT NULL THEN 'cancelled' ELSE 'notified' END),
                                COUNT(*)
                         FROM alerts a LEFT JOIN responses r ON r.alert_id = a.alert_id GROUP BY 1, 2 ORDER BY 1, 2",
                        &[],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1), count(r.get(2)))).collect())
            })
        })
        .await
    }

    /// See [`crate::store::Db::notification_counts`]: how many jobs by (channel, state).
    ///
    /// # Errors
    /// If the query fails.
    pub async fn notification_counts(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                let rows = c
                    .query("SELECT channel, state, COUNT(*) FROM outbox GROUP BY channel, state ORDER BY 1, 2", &[])
                    .await
                    .map_err(pg_error)?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1), count(r.get(2)))).collect())
            })
        })
        .await
    }

    /// See [`crate::store::Db::pending_by_channel`]: pending jobs per channel, by channel.
    ///
    /// # Errors
    /// If the query fails.
    pub async fn pending_by_channel(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT channel, COUNT(*) FROM outbox WHERE state = 'pending'
                         GROUP BY channel ORDER BY channel COLLATE \"C\"",
                        &[],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(rows.iter().map(|r| (r.get(0), count(r.get(1)))).collect())
            })
        })
        .await
    }

    /// See [`crate::store::Db::password_hash`]: the PHC string of `name`'s console password.
    ///
    /// # Errors
    /// If the query fails.
    pub async fn password_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = text(name).into_owned();
        self.run(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt("SELECT password_hash FROM console_accounts WHERE name = $1", &[&name])
                    .await
                    .map_err(pg_error)?;
                Ok(row.map(|r| r.get(0)))
            })
        })
        .await
    }

    /// See [`crate::store::Db::set_password_hash`] (a PHC string, never the password). Every
    /// console is told (`NOTIFY sos_changes`).
    ///
    /// # Errors
    /// If the write fails.
    pub async fn set_password_hash(&self, name: &str, hash: &str, now_ms: i64) -> Result<(), StoreError> {
        let name = text(name).into_owned();
        let hash = hash.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg_error)?;
                tx.execute(
                    "INSERT INTO console_accounts (name, password_hash, updated_at_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash,
                         updated_at_ms = excluded.updated_at_ms",
                    &[&name, &hash, &now_ms],
                )
                .await
                .map_err(pg_error)?;
                tx.batch_execute("NOTIFY sos_changes").await.map_err(pg_error)?;
                tx.commit().await.map_err(pg_error)
            })
        })
        .await
    }

    /// See [`crate::store::Db::create_invitation`].
    ///
    /// # Errors
    /// If the write fails (a token hash already recorded, too).
    pub async fn create_invitation(
        &self,
        name: &str,
        token_hash: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let name = text(name).into_owned();
        let token_hash = token_hash.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO console_invitations (token_hash, name, created_at_ms, expires_at_ms)
                     VALUES ($1, $2, $3, $4)",
                    &[&token_hash, &name, &now_ms, &expires_at_ms],
                )
                .await
                .map_err(pg_error)?;
                Ok(())
            })
        })
        .await
    }

    /// See [`crate::store::Db::invitation`]: the account an unused, unexpired invitation is for.
    ///
    /// # Errors
    /// If the query fails.
    pub async fn invitation(&self, token_hash: &str, now_ms: i64) -> Result<Option<String>, StoreError> {
        let token_hash = token_hash.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "SELECT name FROM console_invitations
                         WHERE token_hash = $1 AND used_at_ms IS NULL AND expires_at_ms > $2",
                        &[&token_hash, &now_ms],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(row.map(|r| r.get(0)))
            })
        })
        .await
    }

    /// See [`crate::store::Db::accept_invitation`]: used once, even by two collectors at once
    /// (the second waits for the first's row lock, then finds it used and gets `None`).
    ///
    /// # Errors
    /// If the transaction fails; then nothing changed.
    pub async fn accept_invitation(
        &self,
        token_hash: &str,
        hash: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let token_hash = token_hash.to_owned();
        let hash = hash.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg_error)?;
                let name: Option<String> = tx
                    .query_opt(
                        "UPDATE console_invitations SET used_at_ms = $2
                         WHERE token_hash = $1 AND used_at_ms IS NULL AND expires_at_ms > $2 RETURNING name",
                        &[&token_hash, &now_ms],
                    )
                    .await
                    .map_err(pg_error)?
                    .map(|r| r.get(0));
                let Some(name) = name else {
                    tx.rollback().await.map_err(pg_error)?;
                    return Ok(None);
                };
                tx.execute(
                    "INSERT INTO console_accounts (name, password_hash, updated_at_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash,
                         updated_at_ms = excluded.updated_at_ms",
                    &[&name, &hash, &now_ms],
                )
                .await
                .map_err(pg_error)?;
                tx.batch_execute("NOTIFY sos_changes").await.map_err(pg_error)?;
                tx.commit().await.map_err(pg_error)?;
                Ok(Some(name))
            })
        })
        .await
    }

    /// See [`crate::store::Db::probe_write`]: one row written, through the same connection (and
    /// its timeout) as every other operation: proves the database takes writes now (`/readyz`).
    ///
    /// # Errors
    /// If the write fails.
    pub async fn probe_write(&self, now_ms: i64) -> Result<(), StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO console_probe (id, at_ms) VALUES (0, $1)
                     ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
                    &[&now_ms],
                )
                .await
                .map_err(pg_error)?;
                Ok(())
            })
        })
        .await
    }

    /// See [`crate::store::Db::silent_agents`]: agents found silent and since when, by id.
    ///
    /// # Errors
    /// If the query fails.
    pub async fn silent_agents(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                let rows = c
                    .query("SELECT agent_id, silent_since_ms FROM silent_agents ORDER BY agent_id COLLATE \"C\"", &[])
                    .await
                    .map_err(pg_error)?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
        })
        .await
    }

    /// See [`crate::store::Db::set_silent`]: `agent_id` silent since `since_ms` (`Some`; the
    /// first collector to find it silent sets the time), or back (`None`). Whether this write
    /// changed the row: of several collectors finding the same agent silent (or back), exactly
    /// one gets `true` (the insert or delete of the others finds nothing to do), so the notice
    /// is told once. A change is told to every console (`NOTIFY sos_changes` in the same
    /// statement); no change, no notification.
    ///
    /// # Errors
    /// If the write fails.
    pub async fn set_silent(&self, agent_id: &str, since_ms: Option<i64>) -> Result<bool, StoreError> {
        let agent_id = text(agent_id).into_owned();
        self.run(move |c| {
            Box::pin(async move {
                // One row (the notification's) when the statement changed the table.
                let changed = match since_ms {
                    Some(t) => {
                        c.execute(
                            "WITH changed AS (
                                 INSERT INTO silent_agents (agent_id, silent_since_ms) VALUES ($1, $2)
                                 ON CONFLICT (agent_id) DO NOTHING RETURNING 1)
                             SELECT pg_notify('sos_changes', '') FROM changed",
                            &[&agent_id, &t],
                        )
                        .await
                    }
                    None => {
                        c.execute(
                            "WITH changed AS (DELETE FROM silent_agents WHERE agent_id = $1 RETURNING 1)
                             SELECT pg_notify('sos_changes', '') FROM changed",
                            &[&agent_id],
                        )
                        .await
                    }
                }
                .map_err(pg_error)?;
                Ok(changed > 0)
            })
        })
        .await
    }
}

#[cfg(all(test, unix))]
mod tests {
    //! The console's queries on a real cluster. The rows the responder loop makes (responses,
    //! the timeline, the outbox's kinds) are written here with plain SQL.

    use super::*;
    use crate::store::postgres::cluster::Cluster;
    use crate::store::postgres::registry::tests::{raw, scalar, two, until_waiting, within};

    fn id(n: u128) -> String {
        AlertId::from_u128(n).to_string()
    }

    /// Run `sql` (several statements) on the store's connection.
    async fn sql(store: &PgStore, sql: String) {
        store.run(move |c| Box::pin(async move { c.batch_execute(&sql).await.map_err(pg_error) })).await.unwrap();
    }

    /// Alert `n`, received at `at_ms`, at `location`; a drill if `test`.
    async fn alert(store: &PgStore, n: u128, at_ms: i64, location: &str, test: bool) {
        sql(
            store,
            format!(
                "INSERT INTO alerts (alert_id, received_at_ms, triggered_at, test, \"user\", host, ip, location,
                     message, agent, source, key_id)
                 VALUES ('{}', {at_ms}, 1, {test}, 'alice', 'desk', '10.0.0.1', '{location}', '', '', '127.0.0.1:9', '00')",
                id(n)
            ),
        )
        .await;
    }

    /// Alert `n`'s response state and responder.
    async fn respond(store: &PgStore, n: u128, state: &str, by: &str, acknowledged_at_ms: Option<i64>) {
        let ack = acknowledged_at_ms.map_or("NULL".to_owned(), |t| t.to_string());
        sql(
            store,
            format!(
                "INSERT INTO responses (alert_id, state, by_responder, acknowledged_at_ms, changed_at_ms)
                 VALUES ('{0}', '{state}', '{by}', {ack}, 0)
                 ON CONFLICT (alert_id) DO UPDATE SET state = excluded.state, by_responder = excluded.by_responder,
                     acknowledged_at_ms = excluded.acknowledged_at_ms",
                id(n)
            ),
        )
        .await;
    }

    fn ids(alerts: &[ConsoleAlert]) -> Vec<u128> {
        alerts.iter().map(|a| a.record.alert_id.as_u128()).collect()
    }

    #[tokio::test]
    async fn a_forwarded_alert_shows_its_site_and_its_state() {
        let Some(cluster) = Cluster::start() else { return };
        let db = PgStore::open(&cluster.url(), &["log"]).await.unwrap();
        alert(&db, 1, 1_000, "Reception", false).await;
        alert(&db, 2, 1_000, "Reception", false).await;
        sql(
            &db,
            format!(
                "UPDATE alerts SET site = 'Branch A', agent_id = 'ab', agent_name = 'Desk' WHERE alert_id = '{}'",
                id(1)
            ),
        )
        .await;
        respond(&db, 1, "acknowledged", "via slack link", Some(5_000)).await;
        sql(
            &db,
            format!(
                "INSERT INTO outbox (alert_id, channel, kind, state, created_at_ms, next_attempt_at_ms, tier, attempts)
                 VALUES ('{0}', 'log', 'alert', 'delivered', 0, 0, 1, 1), ('{0}', 'slack', 'alert', 'pending', 0, 0, 2, 0),
                        ('{0}', 'slack', 'reminder', 'stopped', 0, 0, 2, 0), ('{0}', 'log', 'acknowledged', 'failed', 0, 0, 1, 3)",
                id(1)
            ),
        )
        .await;
        let (one, deliveries) = db.console_alert(AlertId::from_u128(1)).await.unwrap().unwrap();
        assert_eq!(one.record.site.as_deref(), Some("Branch A"));
        assert_eq!(one.record.enrolled.as_ref().map(|e| (e.agent_id.as_str(), e.name.as_str())), Some(("ab", "Desk")));
        assert_eq!((one.state.as_str(), one.by.as_str()), ("acknowledged", "via slack link"));
        assert_eq!(
            deliveries.iter().map(|d| (d.channel.as_str(), d.state.as_str(), d.attempts)).collect::<Vec<_>>(),
            vec![
                ("log", "delivered", 1),
                ("slack (tier 2)", "pending", 0),
                ("slack (reminder, round 2)", "stopped", 0),
                ("log (acknowledged)", "failed", 3)
            ]
        );
        let all = db.console_alerts(&AlertFilter::default(), None, 10).await.unwrap();
        let site =
            |n: u128| all.iter().find(|a| a.record.alert_id == AlertId::from_u128(n)).unwrap().record.site.clone();
        assert_eq!((site(1).as_deref(), site(2)), (Some("Branch A"), None));
        let (two, none) = db.console_alert(AlertId::from_u128(2)).await.unwrap().unwrap();
        assert_eq!(
            (two.state.as_str(), two.by.as_str(), none.len()),
            ("notified", "", 0),
            "stored before the responder loop"
        );
        assert_eq!(db.console_alert(AlertId::from_u128(3)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_history_filters_and_pages_newest_first() {
        let Some(cluster) = Cluster::start() else { return };
        let db = PgStore::open(&cluster.url(), &["log"]).await.unwrap();
        // Alerts 1..=6 at 1000, 2000, 2000, 3000, 4000, 5000.
        for (n, at, location, test) in [
            (1, 1_000, "Reception", false),
            (2, 2_000, "Main RECEPTION desk", true),
            (3, 2_000, "Lab", false),
            (4, 3_000, "Lab", false),
            (5, 4_000, "Reception", false),
            (6, 5_000, "Lab", true),
        ] {
            alert(&db, n, at, location, test).await;
        }
        sql(&db, format!("UPDATE alerts SET cancelled_at_ms = 9, cancel_reason = 'oops' WHERE alert_id = '{}'", id(4)))
            .await;
        respond(&db, 5, "resolved", "bob", Some(4_500)).await;
        respond(&db, 6, "acknowledged", "bob", Some(5_500)).await;
        respond(&db, 3, "checked", "carol", None).await;
        let all = |f: AlertFilter| {
            let db = db.clone();
            async move { ids(&db.console_alerts(&f, None, 100).await.unwrap()) }
        };
        assert_eq!(all(AlertFilter::default()).await, vec![6, 5, 4, 3, 2, 1]);
        assert_eq!(
            all(AlertFilter { from_ms: Some(2_000), to_ms: Some(4_000), ..Default::default() }).await,
            vec![4, 3, 2]
        );
        assert_eq!(all(AlertFilter { location: Some("recep".into()), ..Default::default() }).await, vec![5, 2, 1]);
        assert_eq!(all(AlertFilter { test: Some(true), ..Default::default() }).await, vec![6, 2]);
        assert_eq!(all(AlertFilter { test: Some(false), ..Default::default() }).await, vec![5, 4, 3, 1]);
        assert_eq!(all(AlertFilter { state: Some("cancelled".into()), ..Default::default() }).await, vec![4]);
        assert_eq!(all(AlertFilter { state: Some("open".into()), ..Default::default() }).await, vec![6, 4, 2, 1]);
        assert_eq!(
            all(AlertFilter { state: Some("open".into()), location: Some("lab".into()), ..Default::default() }).await,
            vec![6, 4]
        );
        // Pages of two: strictly after the last row of the previous page, ties by id.
        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let page = db.console_alerts(&AlertFilter::default(), after.clone(), 2).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.record.received_at_ms, last.record.alert_id.to_string()));
            pages.push(ids(&page));
        }
        assert_eq!(pages, vec![vec![6, 5], vec![4, 3], vec![2, 1]]);
        let states = db.console_alerts(&AlertFilter::default(), None, 100).await.unwrap();
        assert_eq!(
            states.iter().map(|a| (a.state.as_str(), a.by.as_str())).collect::<Vec<_>>(),
            vec![
                ("acknowledged", "bob"),
                ("resolved", "bob"),
                ("cancelled", ""),
                ("checked", "carol"),
                ("notified", ""),
                ("notified", "")
            ]
        );
        assert_eq!(states[2].record.cancellation.as_ref().map(|c| c.reason.as_str()), Some("oops"));

        let counts = db.alert_counts().await.unwrap();
        assert_eq!(
            counts,
            vec![
                (false, "cancelled".into(), 1),
                (false, "checked".into(), 1),
                (false, "notified".into(), 1),
                (false, "resolved".into(), 1),
                (true, "acknowledged".into(), 1),
                (true, "notified".into(), 1),
            ]
        );
        assert_eq!(db.acknowledgements_after(0, 10).await.unwrap(), vec![(4_500, 500), (5_500, 500)]);
        assert_eq!(db.acknowledgements_after(4_500, 10).await.unwrap(), vec![(5_500, 500)]);
        assert_eq!(db.acknowledgements_after(0, 1).await.unwrap(), vec![(4_500, 500)]);
    }

    #[tokio::test]
    async fn the_timeline_and_the_counts_of_notifications() {
        let Some(cluster) = Cluster::start() else { return };
        let db = PgStore::open(&cluster.url(), &["log"]).await.unwrap();
        alert(&db, 1, 1_000, "Reception", false).await;
        alert(&db, 2, 1_000, "Reception", false).await;
        assert_eq!(db.console_response(AlertId::from_u128(1)).await.unwrap(), (None, vec![]));
        sql(
            &db,
            format!(
                "INSERT INTO responses (alert_id, state, by_responder, outcome, note, acknowledged_at_ms, changed_at_ms)
                 VALUES ('{0}', 'resolved', 'bob', 'false alarm', 'all fine', 2000, 3000);
                 INSERT INTO alert_events (alert_id, at_ms, kind, who, via, note) VALUES
                    ('{0}', 3000, 'resolved', 'bob', 'console', 'false alarm'),
                    ('{0}', 1000, 'received', '', '', ''),
                    ('{0}', 2000, 'acknowledged', 'bob', 'popup', ''),
                    ('{0}', 2000, 'notified', 'log', '', 'tier 1');
                 INSERT INTO outbox (alert_id, channel, kind, state, created_at_ms, next_attempt_at_ms) VALUES
                    ('{0}', 'slack', 'alert', 'pending', 0, 0), ('{0}', 'log', 'alert', 'delivered', 0, 0),
                    ('{1}', 'slack', 'alert', 'pending', 0, 0), ('{1}', 'log', 'alert', 'pending', 0, 0),
                    ('{1}', 'email', 'alert', 'failed', 0, 0)",
                id(1),
                id(2)
            ),
        )
        .await;
        let (row, events) = db.console_response(AlertId::from_u128(1)).await.unwrap();
        assert_eq!(
            row,
            Some(ResponseRow {
                by: "bob".into(),
                outcome: "false alarm".into(),
                note: "all fine".into(),
                acknowledged_at_ms: Some(2_000)
            })
        );
        assert_eq!(
            events.iter().map(|e| (e.at_ms, e.kind.as_str())).collect::<Vec<_>>(),
            vec![(1_000, "received"), (2_000, "acknowledged"), (2_000, "notified"), (3_000, "resolved")],
            "oldest first, then in the order written"
        );
        assert_eq!(
            events[3],
            EventRow {
                at_ms: 3_000,
                kind: "resolved".into(),
                who: "bob".into(),
                via: "console".into(),
                note: "false alarm".into()
            }
        );
        assert_eq!(
            db.notification_counts().await.unwrap(),
            vec![
                ("email".into(), "failed".into(), 1),
                ("log".into(), "delivered".into(), 1),
                ("log".into(), "pending".into(), 1),
                ("slack".into(), "pending".into(), 2)
            ]
        );
        assert_eq!(db.pending_by_channel().await.unwrap(), vec![("log".into(), 1), ("slack".into(), 2)]);
    }

    #[tokio::test]
    async fn accounts_and_invitations() {
        let Some(cluster) = Cluster::start() else { return };
        let (a, b) = two(&cluster).await;
        assert_eq!(a.password_hash("alice").await.unwrap(), None);
        let changes = b.changes();
        let changed = changes.notified();
        a.set_password_hash("alice", "$argon2id$one", 1_000).await.unwrap();
        within("the other collector's console told of the account", changed).await;
        assert_eq!(b.password_hash("alice").await.unwrap().as_deref(), Some("$argon2id$one"));
        a.set_password_hash("alice", "$argon2id$two", 2_000).await.unwrap();
        assert_eq!(b.password_hash("alice").await.unwrap().as_deref(), Some("$argon2id$two"));

        a.create_invitation("bob", "h1", 1_000, 10_000).await.unwrap();
        assert!(a.create_invitation("carol", "h1", 1_000, 10_000).await.is_err(), "a token hash is recorded once");
        assert_eq!(b.invitation("h1", 5_000).await.unwrap().as_deref(), Some("bob"));
        assert_eq!(b.invitation("h1", 10_000).await.unwrap(), None, "expired");
        assert_eq!(b.invitation("nope", 5_000).await.unwrap(), None);
        assert_eq!(b.accept_invitation("h1", "$argon2id$bob", 10_000).await.unwrap(), None, "expired");
        assert_eq!(a.password_hash("bob").await.unwrap(), None);
        let changed = changes.notified();
        assert_eq!(b.accept_invitation("h1", "$argon2id$bob", 5_000).await.unwrap().as_deref(), Some("bob"));
        within("an accepted invitation announced", changed).await;
        assert_eq!(a.password_hash("bob").await.unwrap().as_deref(), Some("$argon2id$bob"));
        assert_eq!(a.invitation("h1", 5_000).await.unwrap(), None, "used");
        assert_eq!(a.accept_invitation("h1", "$argon2id$mallory", 6_000).await.unwrap(), None, "used once");
        assert_eq!(a.password_hash("bob").await.unwrap().as_deref(), Some("$argon2id$bob"));
        // An invitation for an account that exists replaces its password.
        a.create_invitation("alice", "h2", 1_000, 10_000).await.unwrap();
        assert_eq!(a.accept_invitation("h2", "$argon2id$three", 3_000).await.unwrap().as_deref(), Some("alice"));
        assert_eq!(b.password_hash("alice").await.unwrap().as_deref(), Some("$argon2id$three"));
    }

    #[tokio::test]
    async fn an_invitation_accepted_on_two_collectors_at_once_is_used_once() {
        let Some(cluster) = Cluster::start() else { return };
        let (a, b) = two(&cluster).await;
        let look = raw(&cluster).await;
        let mut holder = raw(&cluster).await;
        for round in 0..10 {
            let token = format!("token-{round}");
            a.create_invitation("bob", &token, 1_000, 10_000).await.unwrap();
            let hold = holder.transaction().await.unwrap();
            hold.execute("SELECT 1 FROM console_invitations WHERE token_hash = $1 FOR UPDATE", &[&token])
                .await
                .unwrap();
            let (x, y, ()) = tokio::join!(
                a.accept_invitation(&token, "$argon2id$a", 2_000),
                b.accept_invitation(&token, "$argon2id$b", 2_000),
                async {
                    until_waiting(&look, 2).await;
                    hold.commit().await.unwrap();
                }
            );
            let (x, y) = (x.unwrap(), y.unwrap());
            assert_eq!(u8::from(x.is_some()) + u8::from(y.is_some()), 1, "round {round}: used once");
            let winner = if x.is_some() { "$argon2id$a" } else { "$argon2id$b" };
            assert_eq!(a.password_hash("bob").await.unwrap().as_deref(), Some(winner), "round {round}");
        }
    }

    #[tokio::test]
    async fn silent_agents_are_shared_and_announced_and_the_probe_writes() {
        let Some(cluster) = Cluster::start() else { return };
        let (a, b) = two(&cluster).await;
        a.probe_write(1_000).await.unwrap();
        b.probe_write(2_000).await.unwrap();
        assert_eq!(scalar(&a, "SELECT at_ms FROM console_probe").await, 2_000);

        let changes = b.changes();
        let changed = changes.notified();
        assert!(a.set_silent("bb", Some(1_000)).await.unwrap());
        within("the other collector's console told of a silent agent", changed).await;
        assert!(a.set_silent("aa", Some(3_000)).await.unwrap());
        // Found silent by the other collector too, later: the first time stays, not told again.
        assert!(!b.set_silent("bb", Some(2_000)).await.unwrap());
        assert_eq!(b.silent_agents().await.unwrap(), vec![("aa".into(), 3_000), ("bb".into(), 1_000)]);
        let changed = changes.notified();
        assert!(b.set_silent("bb", None).await.unwrap());
        within("an agent back announced", changed).await;
        assert!(!a.set_silent("bb", None).await.unwrap(), "back already");
        assert!(!a.set_silent("zz", None).await.unwrap());
        // Both collectors find the same agents silent (then back) at once: one of them tells.
        for n in 0..10 {
            let agent = format!("agent-{n}");
            let (x, y) = tokio::join!(a.set_silent(&agent, Some(5_000)), b.set_silent(&agent, Some(5_001)));
            assert_eq!(u8::from(x.unwrap()) + u8::from(y.unwrap()), 1, "{agent} found silent once");
            let (x, y) = tokio::join!(a.set_silent(&agent, None), b.set_silent(&agent, None));
            assert_eq!(u8::from(x.unwrap()) + u8::from(y.unwrap()), 1, "{agent} back once");
        }
        assert_eq!(a.silent_agents().await.unwrap(), vec![("aa".into(), 3_000)]);
    }
}
