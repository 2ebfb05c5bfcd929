//! The durable store: alerts and their outbox, in one SQLite file (WAL, synchronous=FULL).
//!
//! [`Db`] holds every SQL statement and is used directly by the CLI. [`Store`] is the handle
//! the service uses: one named writer thread owns a [`Db`] and takes commands over a channel.
//! Alerts that queue up while a commit is running are committed together in the next
//! transaction (group commit), so a storm costs one fsync per batch, not per datagram.
//! An alert and one outbox job per channel are committed in the same transaction: once the
//! caller is told [`Stored::New`], every channel will be notified even if the process dies.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use sos_shared::protocol::Sos;
use sos_shared::AlertId;
use tokio::sync::{mpsc, oneshot, Notify};

mod schema;

/// How often heartbeats (presence) are written to the store. Presence is advisory: a crash
/// loses at most this much of it, and the next heartbeat restores it.
pub const PRESENCE_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// The most alerts committed in one transaction.
const MAX_GROUP: usize = 512;

/// Something the store could not do. The service does not acknowledge what it could not store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (disk full, read-only…).
    #[error("store: {0}")]
    Sqlite(String),
    /// SQLite found the file damaged (a corrupt page, not a database): writing on would risk
    /// more damage, so the writer stops and the service ends (see [`crate::integrity`]).
    #[error("store damaged: {0}")]
    Corrupt(String),
    /// The integrity check at start found the store damaged; the service does not start on it.
    #[error(
        "the store {} is damaged ({}); the collector does not start on a damaged store",
        .path.display(), .problems.join("; ")
    )]
    Damaged {
        /// The store file.
        path: std::path::PathBuf,
        /// What SQLite's check reported (the first few problems).
        problems: Vec<String>,
    },
    /// The store file cannot be opened.
    #[error("cannot open the store {}: {message}", .path.display())]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        message: String,
    },
    /// The writer thread is gone (the service is shutting down).
    #[error("store: the writer has stopped")]
    Closed,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                StoreError::Corrupt(e.to_string())
            }
            _ => StoreError::Sqlite(e.to_string()),
        }
    }
}

impl StoreError {
    /// `e`, from opening or setting up the file at `path`, naming the path.
    pub(crate) fn opening(path: &Path, e: impl Into<StoreError>) -> StoreError {
        match e.into() {
            StoreError::Sqlite(message) => StoreError::Open { path: path.to_path_buf(), message },
            StoreError::Corrupt(problem) => StoreError::Damaged { path: path.to_path_buf(), problems: vec![problem] },
            other => other,
        }
    }
}

/// An alert as received, ready to store.
#[derive(Debug, Clone)]
pub struct NewAlert {
    /// What the agent sent.
    pub sos: Sos,
    /// When it arrived, ms since the Unix epoch.
    pub received_at_ms: i64,
    /// The datagram's source address.
    pub source: SocketAddr,
    /// The key that sealed it.
    pub key_id: String,
    /// The enrolled agent whose key sealed it; `None` for the shared site key.
    pub enrolled: Option<EnrolledAs>,
}

/// Who a key was enrolled for, as the collector's registry knows it (not what the agent claims).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledAs {
    /// The agent's id in the registry.
    pub agent_id: String,
    /// The name it was enrolled under.
    pub name: String,
    /// The host name it reported when it enrolled.
    pub host: String,
}

impl EnrolledAs {
    /// Whether an alert's claimed host differs from the host this key was enrolled on: a copied
    /// key, a renamed machine, or an agent speaking in another's name. Case is ignored, and so is
    /// the domain part (`desk-3` and `desk-3.example.com` agree).
    pub fn host_mismatch(&self, claimed_host: &str) -> bool {
        let short = |h: &str| h.trim().split('.').next().unwrap_or("").to_ascii_lowercase();
        !self.host.trim().is_empty() && short(&self.host) != short(claimed_host)
    }
}

/// The outcome of storing an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// First time seen: stored with its outbox jobs.
    New,
    /// Already stored earlier: nothing changed.
    Duplicate,
}

/// A stored alert, as channels format it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    /// Its id.
    pub alert_id: AlertId,
    /// A drill.
    pub test: bool,
    /// When the button was pressed (agent clock), seconds since the Unix epoch.
    pub triggered_at: i64,
    /// When the collector stored it, ms since the Unix epoch.
    pub received_at_ms: i64,
    /// Who, where, what — as the agent reported them.
    pub user: String,
    /// The workstation's host name.
    pub host: String,
    /// The workstation's route address.
    pub ip: String,
    /// The configured location.
    pub location: String,
    /// The sender's text.
    pub message: String,
    /// The datagram's source address as the collector saw it.
    pub source: String,
    /// The enrolled agent whose key sealed it; `None` for the shared site key.
    pub enrolled: Option<EnrolledAs>,
    /// Set when the sender cancelled the alert. In an outbox job it means the job is the
    /// cancellation notice, not the alert.
    pub cancellation: Option<Cancellation>,
}

/// The sender withdrew an alert (a false alarm).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancellation {
    /// When the collector recorded it, ms since the Unix epoch.
    pub at_ms: i64,
    /// The sender's reason; may be empty.
    pub reason: String,
}

/// What became of a cancellation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// Recorded now; every channel will be told.
    New,
    /// Already recorded earlier; nobody is told again.
    Already,
    /// No such alert here (never received, or sealed with another key).
    Unknown,
}

/// An agent as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSeen {
    /// Host name.
    pub host: String,
    /// Login name.
    pub user: String,
    /// Route address the agent reported.
    pub ip: String,
    /// The datagram's source address.
    pub source: String,
    /// The key that sealed it.
    pub key_id: String,
    /// When, ms since the Unix epoch.
    pub last_seen_ms: i64,
    /// The enrolled agent whose key sealed it, if any.
    pub agent_id: Option<String>,
}

/// One pending delivery of one alert to one channel.
#[derive(Debug, Clone)]
pub struct Job {
    /// Row id.
    pub id: i64,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the job was created, on the [`outbox_clock_ms`] scale (the give-up clock starts here).
    pub created_at_ms: i64,
    /// The alert to deliver.
    pub alert: AlertRecord,
}

/// What happened to a job after an attempt.
#[derive(Debug, Clone)]
pub enum JobOutcome {
    /// The channel accepted it.
    Delivered,
    /// Try again at `next_attempt_at_ms`.
    Retry {
        /// When, on the [`outbox_clock_ms`] scale.
        next_attempt_at_ms: i64,
        /// What went wrong this time.
        error: String,
    },
    /// Never try again; the alert is recorded as not delivered on this channel.
    Failed {
        /// Why.
        error: String,
    },
}

/// The state of one channel for one alert, as `sos-collector alerts` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The channel name.
    pub channel: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When it was delivered, ms since the Unix epoch.
    pub delivered_at_ms: Option<i64>,
}

/// The store, used synchronously.
#[derive(Debug)]
pub struct Db {
    pub(crate) conn: Connection,
}

impl Db {
    /// Open (creating if needed) the store at `path`.
    ///
    /// # Errors
    /// If the file cannot be opened or its schema is from a newer version.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                message: format!("cannot create the directory {}: {e}", dir.display()),
            })?;
        }
        Self::set_up(path).map_err(|e| StoreError::opening(path, e))
    }

    fn set_up(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        // The store holds every enrolled agent's key: readable by its owner only (SQLite gives
        // the -wal and -shm files the same mode).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        schema::migrate(&mut conn)?;
        Ok(Db { conn })
    }

    /// Open an existing store for reading only (the CLI).
    ///
    /// # Errors
    /// If there is no store at `path`.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let open = || -> Result<Self, rusqlite::Error> {
            let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            Ok(Db { conn })
        };
        open().map_err(|e| StoreError::opening(path, e))
    }

    /// Store alerts and their outbox jobs in one transaction. All or nothing. The jobs are due
    /// at `jobs_at_ms` (on the [`outbox_clock_ms`] scale).
    ///
    /// # Errors
    /// If the transaction fails; then nothing was stored.
    pub fn insert_alerts(
        &mut self,
        alerts: &[NewAlert],
        channels: &[&str],
        jobs_at_ms: i64,
    ) -> Result<Vec<Stored>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut out = Vec::with_capacity(alerts.len());
        {
            let mut insert_alert = tx.prepare_cached(
                "INSERT INTO alerts (alert_id, received_at_ms, triggered_at, test, user, host, ip,
                                     location, message, agent, source, key_id, agent_id, agent_name, agent_host)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                 ON CONFLICT (alert_id) DO NOTHING",
            )?;
            let mut insert_job = tx.prepare_cached(
                "INSERT INTO outbox (alert_id, channel, state, created_at_ms, next_attempt_at_ms)
                 VALUES (?1, ?2, 'pending', ?3, ?3)",
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
                ])?;
                if n == 1 {
                    for ch in channels {
                        insert_job.execute(params![id, ch, jobs_at_ms])?;
                    }
                    out.push(Stored::New);
                } else {
                    out.push(Stored::Duplicate);
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Pending jobs of `channel` due at `now_ms`, oldest first.
    ///
    /// # Errors
    /// If the query fails.
    pub fn due_jobs(&self, channel: &str, now_ms: i64, limit: usize) -> Result<Vec<Job>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT o.id, o.attempts, o.created_at_ms, a.alert_id, a.test, a.triggered_at,
                    a.received_at_ms, a.user, a.host, a.ip, a.location, a.message, a.source,
                    o.kind, a.cancelled_at_ms, a.cancel_reason, a.agent_id, a.agent_name, a.agent_host
             FROM outbox o JOIN alerts a ON a.alert_id = o.alert_id
             WHERE o.channel = ?1 AND o.state = 'pending' AND o.next_attempt_at_ms <= ?2
               -- a cancellation never overtakes its alert on a channel
               AND NOT (o.kind = 'cancel' AND EXISTS (
                   SELECT 1 FROM outbox p WHERE p.alert_id = o.alert_id AND p.channel = o.channel
                                          AND p.kind = 'alert' AND p.state = 'pending'))
             ORDER BY o.next_attempt_at_ms, o.id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![channel, now_ms, limit as i64], |r| {
            let id: String = r.get(3)?;
            Ok(Job {
                id: r.get(0)?,
                attempts: r.get(1)?,
                created_at_ms: r.get(2)?,
                alert: AlertRecord {
                    alert_id: id.parse().map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
                    })?,
                    test: r.get(4)?,
                    triggered_at: r.get(5)?,
                    received_at_ms: r.get(6)?,
                    user: r.get(7)?,
                    host: r.get(8)?,
                    ip: r.get(9)?,
                    location: r.get(10)?,
                    message: r.get(11)?,
                    source: r.get(12)?,
                    enrolled: enrolled_as(r, 16)?,
                    cancellation: if r.get::<_, String>(13)? == "cancel" {
                        Some(Cancellation {
                            at_ms: r.get::<_, Option<i64>>(14)?.unwrap_or_default(),
                            reason: r.get::<_, Option<String>>(15)?.unwrap_or_default(),
                        })
                    } else {
                        None
                    },
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When the next pending job of `channel` that [`Db::due_jobs`] would return is due (a
    /// cancellation held back behind its pending alert is not: counting it would wake the
    /// worker for nothing, again and again, until the alert is delivered).
    ///
    /// # Errors
    /// If the query fails.
    pub fn next_due(&self, channel: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT MIN(o.next_attempt_at_ms) FROM outbox o
                 WHERE o.channel = ?1 AND o.state = 'pending'
                   AND NOT (o.kind = 'cancel' AND EXISTS (
                       SELECT 1 FROM outbox p WHERE p.alert_id = o.alert_id AND p.channel = o.channel
                                              AND p.kind = 'alert' AND p.state = 'pending'))",
                params![channel],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Re-base `channel`'s pending jobs on the outbox clock of this run (which starts at the
    /// wall clock of the start, see [`outbox_clock_ms`]): a job created "in the future" (the
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
        for (id, outcome) in outcomes {
            match outcome {
                JobOutcome::Delivered => tx.execute(
                    "UPDATE outbox SET state = 'delivered', attempts = attempts + 1,
                            delivered_at_ms = ?2, last_error = NULL WHERE id = ?1",
                    params![id, now_ms],
                )?,
                JobOutcome::Retry { next_attempt_at_ms, error } => tx.execute(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at_ms = ?2,
                            last_error = ?3 WHERE id = ?1",
                    params![id, next_attempt_at_ms, error],
                )?,
                JobOutcome::Failed { error } => tx.execute(
                    "UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ?2
                     WHERE id = ?1",
                    params![id, error],
                )?,
            };
        }
        tx.commit()?;
        Ok(())
    }

    /// The most recent alerts with the delivery state of each channel, newest first.
    ///
    /// # Errors
    /// If the query fails.
    pub fn recent_alerts(&self, limit: usize) -> Result<Vec<(AlertRecord, Vec<Delivery>)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT alert_id, test, triggered_at, received_at_ms, user, host, ip, location, message, source,
                    cancelled_at_ms, cancel_reason, agent_id, agent_name, agent_host
             FROM alerts ORDER BY received_at_ms DESC, alert_id LIMIT ?1",
        )?;
        let alerts = stmt
            .query_map(params![limit as i64], |r| {
                let id: String = r.get(0)?;
                Ok(AlertRecord {
                    alert_id: id.parse().map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
                    })?,
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
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut jobs = self.conn.prepare(
            "SELECT channel || CASE kind WHEN 'cancel' THEN ' (cancel)' ELSE '' END,
                    state, attempts, last_error, delivered_at_ms FROM outbox
             WHERE alert_id = ?1 ORDER BY id",
        )?;
        let mut out = Vec::with_capacity(alerts.len());
        for a in alerts {
            let d = jobs
                .query_map(params![a.alert_id.to_string()], |r| {
                    Ok(Delivery {
                        channel: r.get(0)?,
                        state: r.get(1)?,
                        attempts: r.get(2)?,
                        last_error: r.get(3)?,
                        delivered_at_ms: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            out.push((a, d));
        }
        Ok(out)
    }

    /// Record that the sender cancelled `alert_id` and queue one cancellation notice per
    /// channel, in one transaction. Only who sent the alert may cancel it: `principal` is
    /// `agent:<agent id>` for an enrolled agent (whichever of its keys it uses now) and the key
    /// id for the site key (see [`principal`]).
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
        let tx = self.conn.transaction()?;
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
                for ch in channels {
                    tx.execute(
                        "INSERT INTO outbox (alert_id, channel, kind, state, created_at_ms, next_attempt_at_ms)
                         VALUES (?1, ?2, 'cancel', 'pending', ?3, ?3) ON CONFLICT DO NOTHING",
                        params![id, ch, jobs_at_ms],
                    )?;
                }
                Cancelled::New
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// Record heartbeats: one row per (host, user), the latest wins. One transaction.
    ///
    /// # Errors
    /// If the transaction fails.
    pub fn record_agents(&mut self, seen: &[AgentSeen]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO agents (host, user, ip, source, key_id, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (host, user) DO UPDATE SET ip = excluded.ip, source = excluded.source,
                     key_id = excluded.key_id, last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms)",
            )?;
            let mut enrolled = tx.prepare_cached(
                "UPDATE enrolled SET last_seen_ms = MAX(COALESCE(last_seen_ms, 0), ?2) WHERE agent_id = ?1",
            )?;
            for a in seen {
                upsert.execute(params![a.host, a.user, a.ip, a.source, a.key_id, a.last_seen_ms])?;
                if let Some(id) = &a.agent_id {
                    enrolled.execute(params![id, a.last_seen_ms])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every agent that has sent a heartbeat, least recently seen first.
    ///
    /// # Errors
    /// If the query fails.
    pub fn agents(&self) -> Result<Vec<AgentSeen>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT host, user, ip, source, key_id, last_seen_ms FROM agents ORDER BY last_seen_ms, host, user",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(AgentSeen {
                host: r.get(0)?,
                user: r.get(1)?,
                ip: r.get(2)?,
                source: r.get(3)?,
                key_id: r.get(4)?,
                last_seen_ms: r.get(5)?,
                agent_id: None,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Pending jobs per channel, to warn about channels no longer configured.
    ///
    /// # Errors
    /// If the query fails.
    pub fn pending_by_channel(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT channel, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY channel ORDER BY channel",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Command {
    Insert(Box<NewAlert>, Reply<Stored>),
    DueJobs(&'static str, i64, usize, Reply<Vec<Job>>),
    NextDue(&'static str, Reply<Option<i64>>),
    Finish(Vec<(i64, JobOutcome)>, i64, Reply<()>),
    Cancel(AlertId, String, String, i64, Reply<Cancelled>),
    /// Anything else the writer should do (the agent registry, say).
    Exec(Box<dyn FnOnce(&mut Db) + Send>),
    /// Heartbeats gathered since the last flush: one transaction.
    Seen(Vec<AgentSeen>),
}

/// The service's handle to the store's writer thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    tx: mpsc::UnboundedSender<Command>,
    /// Heartbeats since the last [`Store::flush_presence`], the latest per (host, user): memory
    /// proportional to the agents, and one transaction per flush instead of one per heartbeat.
    presence: Arc<std::sync::Mutex<std::collections::HashMap<(String, String), AgentSeen>>>,
    /// Whether a request has been waiting longer than [`STALL_WARNING`] (announced once).
    stalled: Arc<std::sync::atomic::AtomicBool>,
    /// Wakes each channel's outbox worker when new jobs are committed, in `channels` order.
    wakers: Arc<Vec<(&'static str, Arc<Notify>)>>,
    /// Whether the store's last write failed (or a read failed since): the service then stops
    /// answering heartbeats, so that no agent shows "ready" while no SOS can be stored.
    failing: Arc<std::sync::atomic::AtomicBool>,
    /// Set once if the writer thread ends abnormally (a panic, a damaged file): why.
    ended: tokio::sync::watch::Receiver<Option<String>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Insert(..) => "Insert",
            Command::DueJobs(..) => "DueJobs",
            Command::NextDue(..) => "NextDue",
            Command::Finish(..) => "Finish",
            Command::Cancel(..) => "Cancel",
            Command::Seen(..) => "Seen",
            Command::Exec(..) => "Exec",
        })
    }
}

/// How long a request to the store may wait before the log says the store is stuck.
const STALL_WARNING: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether writes to the store succeed, so that a failing disk is announced once, loudly, and
/// its recovery too (each refused SOS is logged by the server as well).
#[derive(Debug, Default)]
struct Health {
    failing_since: Option<std::time::Instant>,
    failures: u64,
    /// Shared with every [`Store`] handle: see [`Store::is_failing`].
    failing: Arc<std::sync::atomic::AtomicBool>,
    /// The first error that means the file is damaged: the writer stops after the current batch.
    fatal: Option<String>,
}

impl Health {
    /// A read failed: the store is failing until a write succeeds. A read that succeeds proves
    /// nothing about writes, so it clears nothing.
    fn observe_read(&mut self, error: Option<&StoreError>) {
        if error.is_some() {
            self.observe(error);
        }
    }

    fn observe(&mut self, error: Option<&StoreError>) {
        if let Some(StoreError::Corrupt(e)) = error {
            self.fatal.get_or_insert_with(|| e.clone());
        }
        self.failing.store(error.is_some(), std::sync::atomic::Ordering::SeqCst);
        match (error, self.failing_since) {
            (Some(e), None) => {
                self.failing_since = Some(std::time::Instant::now());
                self.failures = 1;
                tracing::error!(error = %e,
                    "STORE FAILING: cannot write to the data dir (full, read-only or gone?); \
                     no SOS is acknowledged until it works again, agents keep retrying");
            }
            (Some(_), Some(_)) => self.failures += 1,
            (None, Some(since)) => {
                tracing::warn!(
                    failed_writes = self.failures,
                    after_secs = since.elapsed().as_secs(),
                    "store recovered: writes succeed again"
                );
                self.failing_since = None;
            }
            (None, None) => {}
        }
    }
}

/// Checkpoints the WAL from a thread and connection of its own, every [`CHECKPOINT_EVERY`], so
/// that the writer never stops to copy pages into the database while alerts wait for their
/// commit (SQLite's automatic checkpoint runs inside the commit that crosses 1000 pages, and
/// was the tail of the ACK latency: docs/PERFORMANCE.md). A passive checkpoint never blocks
/// the writer. Dropping this ends the thread after one last checkpoint.
struct Checkpointer {
    _stop: std::sync::mpsc::Sender<()>,
}

/// How often the WAL is checkpointed.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Checkpointer {
    fn start(db: &Db) -> std::io::Result<Checkpointer> {
        let path = db.conn.path().map(std::path::PathBuf::from).filter(|p| !p.as_os_str().is_empty());
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        // In memory (tests) or unopenable: keep SQLite's automatic checkpoints.
        let Some(conn) = path.and_then(|p| Connection::open(p).ok()) else { return Ok(Checkpointer { _stop: stop }) };
        let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
        let _ = db.conn.pragma_update(None, "wal_autocheckpoint", 0);
        std::thread::Builder::new().name("sos-checkpoint".into()).spawn(move || loop {
            let last =
                matches!(stopped.recv_timeout(CHECKPOINT_EVERY), Err(std::sync::mpsc::RecvTimeoutError::Disconnected));
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::debug!(error = %e, "WAL checkpoint");
            }
            if last {
                return;
            }
        })?;
        Ok(Checkpointer { _stop: stop })
    }
}

impl Store {
    /// Start the writer thread on `db`. Every new alert gets one job per channel in `channels`.
    /// The thread ends when the last handle is dropped; `join` it with the returned handle.
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn start(mut db: Db, channels: &[&'static str]) -> std::io::Result<(Store, std::thread::JoinHandle<()>)> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
        let wakers: Arc<Vec<_>> = Arc::new(channels.iter().map(|c| (*c, Arc::new(Notify::new()))).collect());
        let thread_wakers = wakers.clone();
        let names: Vec<&'static str> = channels.to_vec();
        let checkpointer = Checkpointer::start(&db)?;
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ended_tx, ended) = tokio::sync::watch::channel(None);
        let mut health = Health { failing: failing.clone(), ..Health::default() };
        let handle = std::thread::Builder::new().name("sos-store".into()).spawn(move || {
            // Ends the checkpointer (after a last checkpoint) when the writer ends.
            let _checkpointer = checkpointer;
            // A panic here must not leave a process that refuses every SOS forever: it is
            // caught, and the service ends with the reason (see `Store::ended`).
            let run =
                std::panic::AssertUnwindSafe(|| Self::write(&mut db, &mut rx, &names, &thread_wakers, &mut health));
            let why = match std::panic::catch_unwind(run) {
                Ok(None) => return,
                Ok(Some(damage)) => {
                    format!("the store is damaged ({damage}); the writer stopped so as not to damage it further")
                }
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    format!("the store writer thread panicked: {what}")
                }
            };
            tracing::error!("STORE WRITER STOPPED: {why}");
            let _ = ended_tx.send(Some(why));
        })?;
        Ok((Store { tx, wakers, stalled: Arc::default(), presence: Arc::default(), failing, ended }, handle))
    }

    /// The writer's loop: until every handle is gone (`None`) or the file is found damaged
    /// (`Some(what SQLite said)`).
    fn write(
        db: &mut Db,
        rx: &mut mpsc::UnboundedReceiver<Command>,
        names: &[&'static str],
        thread_wakers: &[(&'static str, Arc<Notify>)],
        health: &mut Health,
    ) -> Option<String> {
        {
            while let Some(first) = rx.blocking_recv() {
                let mut inserts = Vec::new();
                let mut seen = Vec::new();
                let mut others = Vec::new();
                let mut next = Some(first);
                while let Some(cmd) = next.take() {
                    match cmd {
                        Command::Insert(a, r) => inserts.push((a, r)),
                        Command::Seen(a) => seen.extend(a),
                        other => others.push(other),
                    }
                    if inserts.len() < MAX_GROUP {
                        next = rx.try_recv().ok();
                    }
                }
                if !inserts.is_empty() {
                    let batch: Vec<NewAlert> = inserts.iter().map(|(a, _)| (**a).clone()).collect();
                    let res = db.insert_alerts(&batch, names, outbox_clock_ms());
                    health.observe(res.as_ref().err());
                    match res {
                        Ok(results) => {
                            if results.contains(&Stored::New) {
                                for (_, n) in thread_wakers.iter() {
                                    n.notify_one();
                                }
                            }
                            for ((_, reply), res) in inserts.into_iter().zip(results) {
                                let _ = reply.send(Ok(res));
                            }
                        }
                        Err(e) => {
                            for (_, reply) in inserts {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                }
                if !seen.is_empty() {
                    let res = db.record_agents(&seen);
                    health.observe(res.as_ref().err());
                    if let Err(e) = res {
                        tracing::warn!(error = %e, agents = seen.len(), "cannot record heartbeats");
                    }
                }
                for cmd in others {
                    match cmd {
                        Command::Cancel(id, reason, key_id, now, r) => {
                            let res = db.cancel(id, &reason, &key_id, names, now, outbox_clock_ms());
                            health.observe(res.as_ref().err());
                            if matches!(res, Ok(Cancelled::New)) {
                                for (_, n) in thread_wakers.iter() {
                                    n.notify_one();
                                }
                            }
                            let _ = r.send(res);
                        }
                        Command::Seen(_) => unreachable!("heartbeats are batched above"),
                        Command::Exec(f) => f(db),
                        Command::DueJobs(ch, now, limit, r) => {
                            let res = db.due_jobs(ch, now, limit);
                            health.observe_read(res.as_ref().err());
                            let _ = r.send(res);
                        }
                        Command::NextDue(ch, r) => {
                            let res = db.next_due(ch);
                            health.observe_read(res.as_ref().err());
                            let _ = r.send(res);
                        }
                        Command::Finish(outcomes, now, r) => {
                            let res = db.finish(&outcomes, now);
                            health.observe(res.as_ref().err());
                            let _ = r.send(res);
                        }
                        Command::Insert(..) => unreachable!("inserts are batched above"),
                    }
                }
                if let Some(damage) = health.fatal.take() {
                    return Some(damage);
                }
            }
        }
        None
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (tx, mut rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| StoreError::Closed)?;
        let answer = match tokio::time::timeout(STALL_WARNING, &mut rx).await {
            Ok(answer) => answer,
            Err(_) => {
                // A disk that hangs instead of failing (frozen, a dead network filesystem)
                // blocks the writer; say so once, loudly, and keep waiting: the request is
                // queued and completes when the disk answers.
                if !self.stalled.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    tracing::error!(
                        waited_secs = STALL_WARNING.as_secs(),
                        "STORE NOT ANSWERING: a write is stuck (disk frozen, hung or far too slow?); \
                         no SOS is acknowledged until it completes, agents keep retrying"
                    );
                }
                let answer = rx.await;
                if self.stalled.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    tracing::warn!("store answering again");
                }
                answer
            }
        };
        answer.map_err(|_| StoreError::Closed)?
    }

    /// Store an alert durably with its outbox jobs; resolves once committed.
    ///
    /// # Errors
    /// If the commit failed: the alert is not stored and must not be acknowledged.
    pub async fn insert(&self, alert: NewAlert) -> Result<Stored, StoreError> {
        self.call(|r| Command::Insert(Box::new(alert), r)).await
    }

    /// See [`Db::due_jobs`].
    ///
    /// # Errors
    /// If the query fails.
    pub async fn due_jobs(&self, channel: &'static str, now_ms: i64, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.call(|r| Command::DueJobs(channel, now_ms, limit, r)).await
    }

    /// See [`Db::next_due`].
    ///
    /// # Errors
    /// If the query fails.
    pub async fn next_due(&self, channel: &'static str) -> Result<Option<i64>, StoreError> {
        self.call(|r| Command::NextDue(channel, r)).await
    }

    /// See [`Db::finish`].
    ///
    /// # Errors
    /// If the transaction fails.
    pub async fn finish(&self, outcomes: Vec<(i64, JobOutcome)>, now_ms: i64) -> Result<(), StoreError> {
        self.call(|r| Command::Finish(outcomes, now_ms, r)).await
    }

    /// See [`Db::cancel`].
    ///
    /// # Errors
    /// If the transaction fails.
    pub async fn cancel(
        &self,
        alert_id: AlertId,
        reason: String,
        key_id: String,
        now_ms: i64,
    ) -> Result<Cancelled, StoreError> {
        self.call(|r| Command::Cancel(alert_id, reason, key_id, now_ms, r)).await
    }

    /// Run `f` on the writer thread, in order with every other write.
    ///
    /// # Errors
    /// What `f` returns, or [`StoreError::Closed`].
    pub async fn exec<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call(|r| {
            Command::Exec(Box::new(move |db: &mut Db| {
                let _ = r.send(f(db));
            }))
        })
        .await
    }

    /// Note a heartbeat; it reaches the store with the next [`Store::flush_presence`] (the
    /// service flushes every [`PRESENCE_FLUSH`] and when it stops).
    pub fn seen(&self, agent: AgentSeen) {
        let key = (agent.host.clone(), agent.user.clone());
        self.presence.lock().unwrap_or_else(|e| e.into_inner()).insert(key, agent);
    }

    /// Write the heartbeats noted since the last flush, in one transaction (not waited for).
    pub fn flush_presence(&self) {
        let batch: Vec<AgentSeen> =
            self.presence.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, a)| a).collect();
        if !batch.is_empty() {
            let _ = self.tx.send(Command::Seen(batch));
        }
    }

    /// Whether the store is failing now (its last write failed, or a read failed since): the
    /// service then gives agents no healthy answer.
    pub fn is_failing(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Completes, with the reason, if the writer thread ends abnormally: a panic, or a damaged
    /// file it cannot write on. Never completes while the writer runs or after it ends normally.
    pub async fn ended(&self) -> String {
        let mut ended = self.ended.clone();
        let why = ended.wait_for(Option::is_some).await.map(|why| why.clone().unwrap_or_default());
        match why {
            Ok(why) => why,
            Err(_) => std::future::pending().await,
        }
    }

    /// The notifier that wakes `channel`'s worker when new jobs are committed; `None` if the
    /// store was not started with that channel (no jobs are made for it, none would wake it).
    pub fn waker(&self, channel: &str) -> Option<Arc<Notify>> {
        self.wakers.iter().find(|(c, _)| *c == channel).map(|(_, n)| n.clone())
    }
}

/// Who may cancel an alert: the enrolled agent, or for the site key the key itself.
pub fn principal(key_id: &str, enrolled: Option<&EnrolledAs>) -> String {
    match enrolled {
        Some(e) => format!("agent:{}", e.agent_id),
        None => key_id.to_owned(),
    }
}

/// The enrolled identity in columns `at`, `at + 1`, `at + 2` (agent id, name, host), if any.
fn enrolled_as(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Option<EnrolledAs>> {
    Ok(match r.get::<_, Option<String>>(at)? {
        Some(agent_id) => Some(EnrolledAs {
            agent_id,
            name: r.get::<_, Option<String>>(at + 1)?.unwrap_or_default(),
            host: r.get::<_, Option<String>>(at + 2)?.unwrap_or_default(),
        }),
        None => None,
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The outbox's clock, in ms: the wall clock when the process first reads it, then advanced by
/// the monotonic clock only. Every outbox deadline (when a job was created, when it is due) is
/// on this scale, so a step of the wall clock neither delays a retry nor gives up early; the
/// deadlines kept in the store are re-based on it when a worker starts
/// ([`Db::rebase_outbox`]). Under paused tokio time it follows the paused clock.
pub fn outbox_clock_ms() -> i64 {
    static ORIGIN: std::sync::OnceLock<(tokio::time::Instant, i64)> = std::sync::OnceLock::new();
    let (at, wall) = ORIGIN.get_or_init(|| (tokio::time::Instant::now(), now_ms()));
    wall + tokio::time::Instant::now().saturating_duration_since(*at).as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: u128) -> NewAlert {
        NewAlert {
            sos: Sos {
                alert_id: AlertId::from_u128(id),
                test: false,
                triggered_at: 1,
                attempt: 0,
                user: "alice".into(),
                host: "desk".into(),
                ip: "10.0.0.1".into(),
                location: "Reception".into(),
                message: String::new(),
                agent: String::new(),
            },
            received_at_ms: 1000,
            source: "127.0.0.1:9".parse().unwrap(),
            key_id: "00".into(),
            enrolled: None,
        }
    }

    #[test]
    fn a_duplicate_is_stored_once_with_one_job_per_channel() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("sos.db")).unwrap();
        let r = db.insert_alerts(&[alert(1), alert(1), alert(2)], &["log", "slack"], 1000).unwrap();
        assert_eq!(r, vec![Stored::New, Stored::Duplicate, Stored::New]);
        assert_eq!(db.insert_alerts(&[alert(1)], &["log", "slack"], 1000).unwrap(), vec![Stored::Duplicate]);
        assert_eq!(db.due_jobs("slack", 1000, 10).unwrap().len(), 2);
        assert_eq!(db.due_jobs("slack", 999, 10).unwrap().len(), 0);
        assert_eq!(db.pending_by_channel().unwrap(), vec![("log".into(), 2), ("slack".into(), 2)]);
    }

    #[test]
    fn a_cancellation_is_recorded_once_only_by_the_sealing_key_and_follows_its_alert() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("sos.db")).unwrap();
        db.insert_alerts(&[alert(1)], &["slack"], 1000).unwrap();
        let id = AlertId::from_u128(1);
        assert_eq!(db.cancel(AlertId::from_u128(9), "", "00", &["slack"], 2000, 2000).unwrap(), Cancelled::Unknown);
        assert_eq!(db.cancel(id, "", "ff", &["slack"], 2000, 2000).unwrap(), Cancelled::Unknown, "another key");
        assert_eq!(db.cancel(id, "oops", "00", &["slack"], 2000, 2000).unwrap(), Cancelled::New);
        assert_eq!(db.cancel(id, "oops", "00", &["slack"], 2001, 2001).unwrap(), Cancelled::Already);
        // The alert itself goes first; its cancellation waits until the alert is no longer pending.
        let due = db.due_jobs("slack", 5000, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert!(due[0].alert.cancellation.is_none());
        db.finish(&[(due[0].id, JobOutcome::Delivered)], 3000).unwrap();
        let due = db.due_jobs("slack", 5000, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].alert.cancellation.as_ref().map(|c| c.reason.as_str()), Some("oops"));
    }

    #[test]
    fn a_cancellation_held_behind_its_pending_alert_does_not_make_the_channel_due() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("sos.db")).unwrap();
        db.insert_alerts(&[alert(1)], &["slack"], 1000).unwrap();
        let job = db.due_jobs("slack", 1000, 10).unwrap().remove(0);
        db.finish(&[(job.id, JobOutcome::Retry { next_attempt_at_ms: 60_000, error: "500".into() })], 1000).unwrap();
        db.cancel(AlertId::from_u128(1), "oops", "00", &["slack"], 2000, 2000).unwrap();
        // Nothing is due before the alert's retry, and the worker is told so: it sleeps until then.
        assert!(db.due_jobs("slack", 59_999, 10).unwrap().is_empty());
        assert_eq!(db.next_due("slack").unwrap(), Some(60_000));
        let job = db.due_jobs("slack", 60_000, 10).unwrap().remove(0);
        assert!(job.alert.cancellation.is_none());
        db.finish(&[(job.id, JobOutcome::Delivered)], 60_000).unwrap();
        assert_eq!(db.next_due("slack").unwrap(), Some(2000), "released once its alert is delivered");
    }

    #[test]
    fn pending_deadlines_are_rebased_on_the_clock_of_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("sos.db")).unwrap();
        // Written before the clock was stepped back an hour: created "in the future", due in an hour.
        db.insert_alerts(&[alert(1), alert(2)], &["slack"], 3_600_000).unwrap();
        let jobs = db.due_jobs("slack", 3_600_000, 10).unwrap();
        db.finish(&[(jobs[0].id, JobOutcome::Retry { next_attempt_at_ms: 3_602_000, error: "500".into() })], 0)
            .unwrap();
        assert_eq!(db.rebase_outbox("slack", 1000, 60_000).unwrap(), 2);
        let jobs = db.due_jobs("slack", 1000, 10).unwrap();
        assert_eq!(jobs.len(), 1, "the untried job is due now");
        assert_eq!(jobs[0].created_at_ms, 1000, "its age starts now");
        assert_eq!(db.next_due("slack").unwrap(), Some(1000));
        assert_eq!(db.due_jobs("slack", 61_000, 10).unwrap().len(), 2, "the retry waits at most 60 s");
        assert_eq!(db.rebase_outbox("slack", 1000, 60_000).unwrap(), 0, "nothing left to re-base");
    }

    #[test]
    fn heartbeats_keep_the_latest_sighting_per_agent() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("sos.db")).unwrap();
        let seen = |user: &str, at| AgentSeen {
            host: "desk".into(),
            user: user.into(),
            ip: "10.0.0.1".into(),
            source: "10.0.0.1:4000".into(),
            key_id: "00".into(),
            agent_id: None,
            last_seen_ms: at,
        };
        db.record_agents(&[seen("alice", 10), seen("bob", 20), seen("alice", 30), seen("alice", 25)]).unwrap();
        let agents = db.agents().unwrap();
        assert_eq!(
            agents.iter().map(|a| (a.user.as_str(), a.last_seen_ms)).collect::<Vec<_>>(),
            vec![("bob", 20), ("alice", 30)]
        );
    }

    #[tokio::test]
    async fn heartbeats_wait_in_memory_one_per_agent_and_a_flush_writes_them_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::start(Db::open(&dir.path().join("sos.db")).unwrap(), &["log"]).unwrap();
        // 100 agents heartbeating 50 times each: 100 entries in memory, nothing written yet.
        for round in 0..50 {
            for agent in 0..100 {
                store.seen(AgentSeen {
                    host: format!("desk-{agent}"),
                    user: "alice".into(),
                    ip: "10.0.0.1".into(),
                    source: "10.0.0.1:4000".into(),
                    key_id: "00".into(),
                    agent_id: None,
                    last_seen_ms: round,
                });
            }
        }
        assert_eq!(store.presence.lock().unwrap().len(), 100, "memory proportional to agents, not heartbeats");
        assert!(store.exec(|db| db.agents()).await.unwrap().is_empty(), "written only by a flush");
        store.flush_presence();
        // The writer takes commands in order: this runs after the flush's transaction.
        let agents = store.exec(|db| db.agents()).await.unwrap();
        assert_eq!(agents.len(), 100);
        assert!(agents.iter().all(|a| a.last_seen_ms == 49), "the latest sighting of each");
        assert!(store.presence.lock().unwrap().is_empty());
        drop(store);
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn a_panic_on_the_writer_thread_is_reported_not_left_to_refuse_every_sos() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::start(Db::open(&dir.path().join("sos.db")).unwrap(), &["log"]).unwrap();
        let panicked = store.exec(|_| -> Result<(), StoreError> { panic!("registry invariant broken") }).await;
        assert!(matches!(panicked, Err(StoreError::Closed)), "{panicked:?}");
        let why = tokio::time::timeout(std::time::Duration::from_secs(10), store.ended()).await.unwrap();
        assert!(why.contains("panicked") && why.contains("registry invariant broken"), "{why}");
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn a_store_found_damaged_while_running_stops_the_writer_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        Db::open(&path).unwrap().insert_alerts(&[alert(1)], &["log"], 1000).unwrap();
        // Garbage over the alerts table's root page (the file was checkpointed on close).
        {
            use std::io::{Seek as _, Write as _};
            let c = Connection::open(&path).unwrap();
            let page_size: u64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
            let root: u64 =
                c.query_row("SELECT rootpage FROM sqlite_master WHERE name = 'alerts'", [], |r| r.get(0)).unwrap();
            drop(c);
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.seek(std::io::SeekFrom::Start((root - 1) * page_size)).unwrap();
            f.write_all(&vec![0xA5; page_size as usize]).unwrap();
        }
        let (store, writer) = Store::start(Db::open(&path).unwrap(), &["log"]).unwrap();
        let res = store.insert(alert(2)).await;
        assert!(matches!(res, Err(StoreError::Corrupt(_))), "not acknowledged: {res:?}");
        let why = tokio::time::timeout(std::time::Duration::from_secs(10), store.ended()).await.unwrap();
        assert!(why.contains("damaged"), "{why}");
        assert!(matches!(store.insert(alert(3)).await, Err(StoreError::Closed)), "the writer stopped");
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn a_committed_alert_wakes_each_channel_and_an_unknown_channel_has_no_waker() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::start(Db::open(&dir.path().join("sos.db")).unwrap(), &["log", "slack"]).unwrap();
        assert!(store.waker("email").is_none(), "no jobs are made for email, nothing would wake it");
        let slack = store.waker("slack").unwrap();
        let woken = slack.notified();
        assert_eq!(store.insert(alert(1)).await.unwrap(), Stored::New);
        tokio::time::timeout(std::time::Duration::from_secs(10), woken).await.expect("slack's worker is woken");
        drop(store);
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn a_writer_that_ends_normally_is_not_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::start(Db::open(&dir.path().join("sos.db")).unwrap(), &["log"]).unwrap();
        let watcher = store.clone();
        let watch = tokio::spawn(async move { watcher.ended().await });
        drop(store);
        // The watcher holds a handle: the writer still runs, and nothing is reported.
        tokio::task::yield_now().await;
        assert!(!watch.is_finished());
        watch.abort();
        let _ = watch.await;
        writer.join().unwrap();
    }

    #[test]
    fn cannot_open_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a-directory-not-a-file");
        std::fs::create_dir(&path).unwrap();
        let e = Db::open(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        let e = Db::open_read_only(&dir.path().join("missing.db")).unwrap_err().to_string();
        assert!(e.contains("missing.db"), "{e}");
    }

    #[test]
    fn a_version_1_store_is_migrated_without_losing_pending_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE alerts (alert_id TEXT PRIMARY KEY, received_at_ms INTEGER NOT NULL,
                    triggered_at INTEGER NOT NULL, test INTEGER NOT NULL, user TEXT NOT NULL, host TEXT NOT NULL,
                    ip TEXT NOT NULL, location TEXT NOT NULL, message TEXT NOT NULL, agent TEXT NOT NULL,
                    source TEXT NOT NULL, key_id TEXT NOT NULL) WITHOUT ROWID;
                 CREATE TABLE outbox (id INTEGER PRIMARY KEY, alert_id TEXT NOT NULL REFERENCES alerts(alert_id),
                    channel TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                    created_at_ms INTEGER NOT NULL, next_attempt_at_ms INTEGER NOT NULL, delivered_at_ms INTEGER,
                    last_error TEXT, UNIQUE (alert_id, channel));
                 INSERT INTO alerts VALUES ('00000000000000000000000000000001', 1000, 1, 0, 'alice', 'desk', '10.0.0.1',
                    'Reception', '', '', '127.0.0.1:9', '00');
                 INSERT INTO outbox (alert_id, channel, state, created_at_ms, next_attempt_at_ms)
                    VALUES ('00000000000000000000000000000001', 'slack', 'pending', 1000, 1000);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let mut db = Db::open(&path).unwrap();
        assert_eq!(db.due_jobs("slack", 1000, 10).unwrap().len(), 1);
        assert_eq!(db.cancel(AlertId::from_u128(1), "", "00", &["slack"], 2000, 2000).unwrap(), Cancelled::New);
    }

    #[test]
    fn outcomes_are_recorded_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        {
            let mut db = Db::open(&path).unwrap();
            db.insert_alerts(&[alert(1), alert(2), alert(3)], &["slack"], 1000).unwrap();
            let jobs = db.due_jobs("slack", 1000, 10).unwrap();
            db.finish(
                &[
                    (jobs[0].id, JobOutcome::Delivered),
                    (jobs[1].id, JobOutcome::Retry { next_attempt_at_ms: 5000, error: "429".into() }),
                    (jobs[2].id, JobOutcome::Failed { error: "404 no_service".into() }),
                ],
                1234,
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(db.next_due("slack").unwrap(), Some(5000));
        let all = db.recent_alerts(10).unwrap();
        let states: Vec<_> = all.iter().map(|(_, d)| d[0].state.as_str()).collect();
        assert_eq!(states.len(), 3);
        assert!(states.contains(&"delivered") && states.contains(&"pending") && states.contains(&"failed"));
    }
}
