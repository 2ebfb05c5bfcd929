//! The service's handle to its store, whichever engine holds it: [`Store`].
//!
//! Two engines, one set of operations: the embedded SQLite file in `data_dir` (one collector;
//! writes go through the writer thread, [`SqliteStore`], in order with alerts; reads run on
//! read-only connections of their own, on blocking threads) and PostgreSQL shared by several
//! collectors ([`PgStore`]). Every part of the service (the receive path, the outbox workers, the
//! escalation engine, pushes, the console, the registry, the command line) uses only these
//! methods; each dispatches to the [`Db`] method of the same name (SQLite) or the [`PgStore`]
//! method of the same name (PostgreSQL).
//!
//! An enum rather than a trait object: the engines are a closed set of two, the methods are
//! plain `async fn`s (no boxed futures), and each arm reads as what it does on that engine.

use std::collections::HashMap;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sos_shared::enroll::{Code, EnrolledKey};
use sos_shared::AlertId;
use tokio::sync::Notify;

use super::backend::{Backend, Claim, Lease};
use super::console::{AlertFilter, ConsoleAlert, EventRow, LinkAck, LinkUse, ResponseRow};
use super::response::ResponsePlan;
use super::sqlite::response::Escalated;
use super::{
    AgentSeen, AlertRecord, Cancelled, Db, Delivery, JobOutcome, NewAlert, PgStore, SqliteStore, StoreError, Stored,
};
use crate::registry::{AgentRecord, Attempt, Registry, RegistryError};

/// The service's handle to its store. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Store {
    /// The embedded SQLite store: one collector.
    Sqlite(Sqlite),
    /// PostgreSQL, shared by several collectors.
    Postgres(Postgres),
}

/// The SQLite engine: the writer thread, and read-only connections for reads.
#[derive(Clone, Debug)]
pub struct Sqlite {
    /// Every write, in order.
    pub writer: SqliteStore,
    readers: Arc<Readers>,
}

/// The PostgreSQL engine: the shared database, and heartbeats gathered between flushes.
#[derive(Clone, Debug)]
pub struct Postgres {
    /// The shared database.
    pub db: PgStore,
    /// Heartbeats since the last [`Store::flush_presence`], the latest per (host, user).
    presence: Arc<Mutex<HashMap<(String, String), AgentSeen>>>,
}

/// Read-only connections to the SQLite file, opened as needed and kept for the next read.
#[derive(Debug)]
struct Readers {
    /// The file; `None` for a store in memory (tests), read through the writer instead.
    path: Option<PathBuf>,
    idle: Mutex<Vec<Db>>,
}

/// The most idle read connections kept open.
const MAX_IDLE_READERS: usize = 4;

impl Store {
    /// The SQLite store whose writer is `writer`, on the file at `path` (`None`: in memory).
    pub fn sqlite(writer: SqliteStore, path: Option<&Path>) -> Store {
        Store::Sqlite(Sqlite {
            writer,
            readers: Arc::new(Readers { path: path.map(Path::to_path_buf), idle: Mutex::new(Vec::new()) }),
        })
    }

    /// The PostgreSQL store `db`.
    pub fn postgres(db: PgStore) -> Store {
        Store::Postgres(Postgres { db, presence: Arc::default() })
    }

    /// Which engine, for logs and /readyz: `sqlite` or `postgresql`.
    pub fn engine(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgresql",
        }
    }

    /// The SQLite writer, for what only exists there (tests, the writer's own commands).
    pub fn as_sqlite(&self) -> Option<&SqliteStore> {
        match self {
            Store::Sqlite(s) => Some(&s.writer),
            Store::Postgres(_) => None,
        }
    }

    /// The PostgreSQL store, for what only exists there.
    pub fn as_postgres(&self) -> Option<&PgStore> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(p) => Some(&p.db),
        }
    }
}

impl Sqlite {
    /// Run `f` on a read-only connection, on a blocking thread (through the writer for a store
    /// in memory).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let Some(path) = self.readers.path.clone() else {
            return self.writer.exec(move |db| f(db)).await;
        };
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let idle = readers.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let db = match idle {
                Some(db) => db,
                None => Db::open_read_only(&path)?,
            };
            let result = f(&db);
            let mut idle = readers.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(db);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Sqlite(format!("store read: {e}")))?
    }

    /// Run `f` on the writer thread, in order with every other write.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.writer.exec(f).await
    }
}

/// Alerts, the outbox, presence, health.
impl Store {
    /// Store an alert with its outbox jobs and its response, once by alert id; resolves after
    /// the commit, and only then may the SOS be acknowledged.
    ///
    /// # Errors
    /// If it was not stored: the SOS must not be acknowledged.
    pub async fn insert(&self, alert: NewAlert) -> Result<Stored, StoreError> {
        match self {
            Store::Sqlite(s) => s.writer.insert(alert).await,
            Store::Postgres(p) => p.db.insert(alert).await,
        }
    }

    /// The sender withdrew `alert_id`; `principal` is who may (see [`super::principal`]).
    ///
    /// # Errors
    /// If the transaction failed.
    pub async fn cancel(
        &self,
        alert_id: AlertId,
        reason: String,
        principal: String,
        now_ms: i64,
    ) -> Result<Cancelled, StoreError> {
        match self {
            Store::Sqlite(s) => s.writer.cancel(alert_id, reason, principal, now_ms).await,
            Store::Postgres(p) => p.db.cancel(alert_id, reason, principal, now_ms).await,
        }
    }

    /// Take up to `limit` jobs of `channel` due at `now_ms` (outbox clock); on PostgreSQL under
    /// a lease (see [`super::backend::Backend::claim`]).
    ///
    /// # Errors
    /// If the query failed.
    pub async fn claim(&self, channel: &'static str, now_ms: i64, limit: usize) -> Result<Claim, StoreError> {
        match self {
            Store::Sqlite(s) => {
                Ok(Claim { lease: Lease::NONE, jobs: s.writer.due_jobs(channel, now_ms, limit).await? })
            }
            Store::Postgres(p) => p.db.claim(channel, now_ms, limit).await,
        }
    }

    /// Record the outcomes of jobs claimed under `lease`; returns the ids refused because their
    /// lease was lost (PostgreSQL only: another collector took them over).
    ///
    /// # Errors
    /// If the transaction failed: nothing was recorded.
    pub async fn finish(
        &self,
        lease: Lease,
        outcomes: Vec<(i64, JobOutcome)>,
        now_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.writer.finish(outcomes, now_ms).await.map(|()| Vec::new()),
            Store::Postgres(p) => p.db.finish(lease, outcomes, now_ms).await,
        }
    }

    /// Let go of jobs claimed under `lease` that this worker will not attempt now (they did not
    /// fit in its next message): on PostgreSQL their lease ends at once, so that they are not
    /// held for a lease's length; on SQLite there is nothing to let go.
    ///
    /// # Errors
    /// If the update failed (the lease then runs out by itself).
    pub async fn release(&self, lease: Lease, ids: &[i64]) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(p) => p.db.release(lease, ids).await,
        }
    }

    /// When the next job of `channel` is due (outbox clock).
    ///
    /// # Errors
    /// If the query failed.
    pub async fn next_due(&self, channel: &'static str) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.writer.next_due(channel).await,
            Store::Postgres(p) => p.db.next_due(channel).await,
        }
    }

    /// See [`Db::rebase_outbox`].
    ///
    /// # Errors
    /// If the transaction failed.
    pub async fn rebase_outbox(
        &self,
        channel: &'static str,
        now_ms: i64,
        max_wait_ms: i64,
    ) -> Result<usize, StoreError> {
        match self {
            Store::Sqlite(s) => s.write(move |db| db.rebase_outbox(channel, now_ms, max_wait_ms)).await,
            Store::Postgres(p) => p.db.rebase_outbox(channel, now_ms, max_wait_ms).await,
        }
    }

    /// The most recent alerts, newest first, with each channel's delivery.
    ///
    /// # Errors
    /// If the query failed.
    pub async fn recent_alerts(&self, limit: usize) -> Result<Vec<(AlertRecord, Vec<Delivery>)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(move |db| db.recent_alerts(limit)).await,
            Store::Postgres(p) => p.db.recent_alerts(limit).await,
        }
    }

    /// Each channel's delivery of `alert_id`.
    ///
    /// # Errors
    /// If the query failed.
    pub async fn deliveries(&self, alert_id: AlertId) -> Result<Vec<Delivery>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(move |db| db.deliveries(alert_id)).await,
            Store::Postgres(p) => p.db.deliveries(alert_id).await,
        }
    }

    /// Pending jobs per channel.
    ///
    /// # Errors
    /// If the query failed.
    pub async fn pending_by_channel(&self) -> Result<Vec<(String, u64)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(|db| db.pending_by_channel()).await,
            Store::Postgres(p) => p.db.pending_by_channel().await,
        }
    }

    /// Note a heartbeat; it reaches the store with the next [`Store::flush_presence`].
    pub fn seen(&self, agent: AgentSeen) {
        match self {
            Store::Sqlite(s) => s.writer.seen(agent),
            Store::Postgres(p) => {
                let key = (agent.host.clone(), agent.user.clone());
                let mut presence = p.presence.lock().unwrap_or_else(|e| e.into_inner());
                // A responder desktop's SOS (which carries no flag) does not hide its heartbeat's flag.
                let responder = agent.responder || presence.get(&key).is_some_and(|a| a.responder);
                presence.insert(key, AgentSeen { responder, ..agent });
            }
        }
    }

    /// Write the heartbeats noted since the last flush, in one transaction. On SQLite it is
    /// queued (not waited for); on PostgreSQL it runs in a task of its own, and what it could
    /// not write is kept for the next flush.
    pub fn flush_presence(&self) {
        match self {
            Store::Sqlite(s) => s.writer.flush_presence(),
            Store::Postgres(p) => {
                let batch: Vec<AgentSeen> =
                    p.presence.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, a)| a).collect();
                if batch.is_empty() {
                    return;
                }
                let p = p.clone();
                tokio::spawn(async move {
                    if let Err(e) = p.db.record_agents(&batch).await {
                        tracing::debug!(error = %e, "heartbeats not written; kept for the next flush");
                        let mut presence = p.presence.lock().unwrap_or_else(|e| e.into_inner());
                        for a in batch {
                            let key = (a.host.clone(), a.user.clone());
                            if presence.get(&key).is_none_or(|b| b.last_seen_ms < a.last_seen_ms) {
                                presence.insert(key, a);
                            }
                        }
                    }
                });
            }
        }
    }

    /// Every agent that has sent a heartbeat, least recently seen first.
    ///
    /// # Errors
    /// If the query failed.
    pub async fn agents(&self) -> Result<Vec<AgentSeen>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(|db| db.agents()).await,
            Store::Postgres(p) => p.db.agents().await,
        }
    }

    /// Whether the store is failing now: the service then acknowledges no SOS and answers no
    /// heartbeat, and /readyz says so.
    pub fn is_failing(&self) -> bool {
        match self {
            Store::Sqlite(s) => s.writer.is_failing(),
            Store::Postgres(p) => p.db.is_failing(),
        }
    }

    /// Completes, with the reason, if the store can no longer work (the SQLite writer died).
    /// PostgreSQL never ends this way: an outage is waited out ([`Store::is_failing`]).
    pub async fn ended(&self) -> String {
        match self {
            Store::Sqlite(s) => s.writer.ended().await,
            Store::Postgres(_) => std::future::pending().await,
        }
    }

    /// If the SQLite writer stopped because SQLite found the file damaged: what it said.
    pub fn damaged(&self) -> Option<String> {
        match self {
            Store::Sqlite(s) => s.writer.damaged(),
            Store::Postgres(_) => None,
        }
    }

    /// Notified after every commit that changes an alert (on PostgreSQL: by any collector).
    pub fn changes(&self) -> Arc<Notify> {
        match self {
            Store::Sqlite(s) => s.writer.changes(),
            Store::Postgres(p) => p.db.changes(),
        }
    }

    /// After a commit made through this handle that changed what the console shows: wake the
    /// listeners of [`Store::changes`] here and, if it queued notifications (`jobs`), every
    /// outbox worker. (On PostgreSQL the other collectors learn it from the commit's NOTIFY.)
    pub fn changed(&self, jobs: bool) {
        match self {
            Store::Sqlite(s) => s.writer.changed(jobs),
            Store::Postgres(p) => {
                if jobs {
                    p.db.wake_channels();
                }
                let changes = p.db.changes();
                changes.notify_waiters();
                changes.notify_one();
            }
        }
    }

    /// Wakes `channel`'s outbox worker when jobs are committed (on PostgreSQL: by any collector).
    pub fn waker(&self, channel: &str) -> Option<Arc<Notify>> {
        match self {
            Store::Sqlite(s) => s.writer.waker(channel),
            Store::Postgres(p) => Backend::waker(&p.db, channel),
        }
    }

    /// The escalation policy every new alert starts with.
    pub fn plan(&self) -> Arc<ResponsePlan> {
        match self {
            Store::Sqlite(s) => s.writer.plan(),
            Store::Postgres(p) => p.db.plan(),
        }
    }
}

/// The escalation engine's operations.
impl Store {
    /// One tick of the escalation engine: the store's data version (SQLite: it changes when
    /// another process commits, read on the writer's connection) and [`Store::escalate_due`].
    ///
    /// # Errors
    /// If the transaction failed; nothing fired.
    pub async fn escalation_tick(
        &self,
        plan: Arc<ResponsePlan>,
        now_ms: i64,
        clock_ms: i64,
        limit: usize,
    ) -> Result<(i64, Escalated), StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.write(move |db| Ok((db.data_version()?, db.escalate_due(&plan, now_ms, clock_ms, limit)?))).await
            }
            Store::Postgres(p) => {
                Ok((p.db.data_version().await?, p.db.escalate_due(&plan, now_ms, clock_ms, limit).await?))
            }
        }
    }

    /// See [`Db::escalate_due`].
    ///
    /// # Errors
    /// If the transaction failed; nothing fired.
    pub async fn escalate_due(
        &self,
        plan: Arc<ResponsePlan>,
        now_ms: i64,
        clock_ms: i64,
        limit: usize,
    ) -> Result<Escalated, StoreError> {
        match self {
            Store::Sqlite(s) => s.write(move |db| db.escalate_due(&plan, now_ms, clock_ms, limit)).await,
            Store::Postgres(p) => p.db.escalate_due(&plan, now_ms, clock_ms, limit).await,
        }
    }

    /// See [`Db::next_escalation`].
    ///
    /// # Errors
    /// If the query failed.
    pub async fn next_escalation(&self) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.write(|db| db.next_escalation()).await,
            Store::Postgres(p) => p.db.next_escalation().await,
        }
    }

    /// See [`Db::rebase_escalations`].
    ///
    /// # Errors
    /// If the transaction failed.
    pub async fn rebase_escalations(&self, clock_ms: i64) -> Result<usize, StoreError> {
        match self {
            Store::Sqlite(s) => s.write(move |db| db.rebase_escalations(clock_ms)).await,
            Store::Postgres(p) => p.db.rebase_escalations(clock_ms).await,
        }
    }

    /// See [`Db::rebase_foreign_jobs`].
    ///
    /// # Errors
    /// If the transaction failed.
    pub async fn rebase_foreign_jobs(&self, clock_ms: i64) -> Result<usize, StoreError> {
        match self {
            Store::Sqlite(s) => s.write(move |db| db.rebase_foreign_jobs(clock_ms)).await,
            Store::Postgres(p) => p.db.rebase_foreign_jobs(clock_ms).await,
        }
    }

    /// See [`Db::data_version`].
    ///
    /// # Errors
    /// If the query failed.
    pub async fn data_version(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.write(|db| db.data_version()).await,
            Store::Postgres(p) => p.db.data_version().await,
        }
    }
}

/// The agent registry: enrollment, rotation, revocation.
impl Store {
    /// See [`Db::create_enrollment`].
    ///
    /// # Errors
    /// If the transaction failed.
    pub async fn create_enrollment(&self, name: &str, ttl_ms: i64, now_ms: i64) -> Result<Code, StoreError> {
        self.create_enrollment_of(name, false, ttl_ms, now_ms).await
    }

    /// See [`Db::create_enrollment_of`].
    ///
    /// # Errors
    /// If the transaction failed.
    pub async fn create_enrollment_of(
        &self,
        name: &str,
        site: bool,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Code, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let name = name.to_owned();
                s.write(move |db| db.create_enrollment_of(&name, site, ttl_ms, now_ms)).await
            }
            Store::Postgres(p) => p.db.create_enrollment_of(name, site, ttl_ms, now_ms).await,
        }
    }

    /// See [`Db::enroll_attempt`].
    ///
    /// # Errors
    /// If the transaction failed.
    pub async fn enroll_attempt(&self, code_id: &str, now_ms: i64) -> Result<Attempt, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let code_id = code_id.to_owned();
                s.write(move |db| db.enroll_attempt(&code_id, now_ms)).await
            }
            Store::Postgres(p) => p.db.enroll_attempt(code_id, now_ms).await,
        }
    }

    /// See [`Db::complete_enrollment`].
    ///
    /// # Errors
    /// If the transaction failed.
    pub async fn complete_enrollment(
        &self,
        code_id: &str,
        host: &str,
        now_ms: i64,
    ) -> Result<Option<EnrolledKey>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (code_id, host) = (code_id.to_owned(), host.to_owned());
                s.write(move |db| db.complete_enrollment(&code_id, &host, now_ms)).await
            }
            Store::Postgres(p) => p.db.complete_enrollment(code_id, host, now_ms).await,
        }
    }

    /// See [`Db::registry_version`].
    ///
    /// # Errors
    /// If the query failed.
    pub async fn registry_version(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(|db| db.registry_version()).await,
            Store::Postgres(p) => p.db.registry_version().await,
        }
    }

    /// See [`Db::enrolled_agents`].
    ///
    /// # Errors
    /// If the query failed.
    pub async fn enrolled_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(|db| db.enrolled_agents()).await,
            Store::Postgres(p) => p.db.enrolled_agents().await,
        }
    }

    /// See [`Db::revoke`].
    ///
    /// # Errors
    /// No such agent, several match, or the transaction failed.
    pub async fn revoke(&self, who: &str, now_ms: i64) -> Result<AgentRecord, RegistryError> {
        match self {
            Store::Sqlite(s) => {
                let who = who.to_owned();
                s.write(move |db| Ok(db.revoke(&who, now_ms))).await?
            }
            Store::Postgres(p) => p.db.revoke(who, now_ms).await,
        }
    }

    /// See [`Db::rotate`].
    ///
    /// # Errors
    /// No such agent, several match, revoked, a rotation pending, or the transaction failed.
    pub async fn rotate(&self, who: &str, now_ms: i64) -> Result<AgentRecord, RegistryError> {
        match self {
            Store::Sqlite(s) => {
                let who = who.to_owned();
                s.write(move |db| Ok(db.rotate(&who, now_ms))).await?
            }
            Store::Postgres(p) => p.db.rotate(who, now_ms).await,
        }
    }

    /// See [`Db::promote`].
    ///
    /// # Errors
    /// If the transaction failed.
    pub async fn promote(&self, agent_id: &str, key_id: &str, until_ms: i64) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (agent_id, key_id) = (agent_id.to_owned(), key_id.to_owned());
                s.write(move |db| db.promote(&agent_id, &key_id, until_ms)).await
            }
            Store::Postgres(p) => p.db.promote(agent_id, key_id, until_ms).await,
        }
    }

    /// See [`Db::pending_codes`].
    ///
    /// # Errors
    /// If the query failed.
    pub async fn pending_codes(&self, now_ms: i64) -> Result<HashSet<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(move |db| db.pending_codes(now_ms)).await,
            Store::Postgres(p) => p.db.pending_codes(now_ms).await,
        }
    }

    /// See [`Db::load_registry`].
    ///
    /// # Errors
    /// If the query failed.
    pub async fn load_registry(&self) -> Result<Registry, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(|db| db.load_registry()).await,
            Store::Postgres(p) => p.db.load_registry().await,
        }
    }
}

/// The web console: alerts, responses, accounts, links, silent agents, the write probe.
impl Store {
    /// See [`Db::console_alerts`].
    ///
    /// # Errors
    /// If the query failed.
    pub async fn console_alerts(
        &self,
        filter: &AlertFilter,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<ConsoleAlert>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let filter = filter.clone();
                s.read(move |db| db.console_alerts(&filter, after, limit)).await
            }
            Store::Postgres(p) => p.db.console_alerts(filter, after, limit).await,
        }
    }

    /// See [`Db::console_alert`].
    ///
    /// # Errors
    /// If the query failed.
    pub async fn console_alert(&self, id: AlertId) -> Result<Option<(ConsoleAlert, Vec<Delivery>)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(move |db| db.console_alert(id)).await,
            Store::Postgres(p) => p.db.console_alert(id).await,
        }
    }

    /// See [`Db::console_response`].
    ///
    /// # Errors
    /// If the query failed.
    pub async fn console_response(&self, id: AlertId) -> Result<(Option<ResponseRow>, Vec<EventRow>), StoreError> {
        match self {
            Store::Sqlite(s) => s.read(move |db| db.console_response(id)).await,
            Store::Postgres(p) => p.db.console_response(id).await,
        }
    }

    /// See [`Db::acknowledgements_after`].
    ///
    /// # Errors
    /// If the query failed.
    pub async fn acknowledgements_after(&self, after_ms: i64, limit: usize) -> Result<Vec<(i64, i64)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(move |db| db.acknowledgements_after(after_ms, limit)).await,
            Store::Postgres(p) => p.db.acknowledgements_after(after_ms, limit).await,
        }
    }

    /// See [`Db::alert_counts`].
    ///
    /// # Errors
    /// If the query failed.
    pub async fn alert_counts(&self) -> Result<Vec<(bool, String, u64)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(|db| db.alert_counts()).await,
            Store::Postgres(p) => p.db.alert_counts().await,
        }
    }

    /// See [`Db::notification_counts`].
    ///
    /// # Errors
    /// If the query failed.
    pub async fn notification_counts(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(|db| db.notification_counts()).await,
            Store::Postgres(p) => p.db.notification_counts().await,
        }
    }

    /// See [`Db::password_hash`].
    ///
    /// # Errors
    /// If the query failed.
    pub async fn password_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let name = name.to_owned();
                s.read(move |db| db.password_hash(&name)).await
            }
            Store::Postgres(p) => p.db.password_hash(name).await,
        }
    }

    /// See [`Db::set_password_hash`].
    ///
    /// # Errors
    /// If the transaction failed.
    pub async fn set_password_hash(&self, name: &str, hash: &str, now_ms: i64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (name, hash) = (name.to_owned(), hash.to_owned());
                s.write(move |db| db.set_password_hash(&name, &hash, now_ms)).await
            }
            Store::Postgres(p) => p.db.set_password_hash(name, hash, now_ms).await,
        }
    }

    /// See [`Db::create_invitation`].
    ///
    /// # Errors
    /// If the transaction failed.
    pub async fn create_invitation(
        &self,
        name: &str,
        token_hash: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (name, token_hash) = (name.to_owned(), token_hash.to_owned());
                s.write(move |db| db.create_invitation(&name, &token_hash, now_ms, expires_at_ms)).await
            }
            Store::Postgres(p) => p.db.create_invitation(name, token_hash, now_ms, expires_at_ms).await,
        }
    }

    /// See [`Db::invitation`].
    ///
    /// # Errors
    /// If the query failed.
    pub async fn invitation(&self, token_hash: &str, now_ms: i64) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let token_hash = token_hash.to_owned();
                s.read(move |db| db.invitation(&token_hash, now_ms)).await
            }
            Store::Postgres(p) => p.db.invitation(token_hash, now_ms).await,
        }
    }

    /// See [`Db::accept_invitation`].
    ///
    /// # Errors
    /// If the transaction failed.
    pub async fn accept_invitation(
        &self,
        token_hash: &str,
        hash: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (token_hash, hash) = (token_hash.to_owned(), hash.to_owned());
                s.write(move |db| db.accept_invitation(&token_hash, &hash, now_ms)).await
            }
            Store::Postgres(p) => p.db.accept_invitation(token_hash, hash, now_ms).await,
        }
    }

    /// See [`Db::acknowledge_by_link`]. Announces the change when it made one.
    ///
    /// # Errors
    /// If the transaction failed.
    pub async fn acknowledge_by_link(
        &self,
        link: &LinkAck,
        now_ms: i64,
        jobs_at_ms: i64,
    ) -> Result<LinkUse, StoreError> {
        let used = match self {
            Store::Sqlite(s) => {
                let link = link.clone();
                s.write(move |db| db.acknowledge_by_link(&link, now_ms, jobs_at_ms)).await?
            }
            Store::Postgres(p) => p.db.acknowledge_by_link(link, now_ms, jobs_at_ms).await?,
        };
        if matches!(used, LinkUse::Ack(super::Transition::New { .. })) {
            self.changed(true);
        }
        Ok(used)
    }

    /// See [`Db::link_used`].
    ///
    /// # Errors
    /// If the query failed.
    pub async fn link_used(&self, nonce: &str) -> Result<Option<(String, i64)>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let nonce = nonce.to_owned();
                s.read(move |db| db.link_used(&nonce)).await
            }
            Store::Postgres(p) => p.db.link_used(nonce).await,
        }
    }

    /// See [`Db::probe_write`]: a write that must reach the store (/readyz). On SQLite it goes
    /// through the writer, in order with alerts, so a stuck writer shows.
    ///
    /// # Errors
    /// If the write failed.
    pub async fn probe_write(&self, now_ms: i64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.write(move |db| db.probe_write(now_ms)).await,
            Store::Postgres(p) => {
                p.db.probe_write(now_ms).await?;
                p.db.note_write_ok();
                Ok(())
            }
        }
    }

    /// See [`Db::silent_agents`].
    ///
    /// # Errors
    /// If the query failed.
    pub async fn silent_agents(&self) -> Result<Vec<(String, i64)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(|db| db.silent_agents()).await,
            Store::Postgres(p) => p.db.silent_agents().await,
        }
    }

    /// See [`Db::set_silent`]: whether it changed anything (another collector on the same
    /// PostgreSQL may have recorded the same silence first: then it is that one's to tell).
    ///
    /// # Errors
    /// If the transaction failed.
    pub async fn set_silent(&self, agent_id: &str, since_ms: Option<i64>) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let agent_id = agent_id.to_owned();
                s.write(move |db| db.set_silent(&agent_id, since_ms)).await
            }
            Store::Postgres(p) => p.db.set_silent(agent_id, since_ms).await,
        }
    }
}

/// The responder loop, on either engine. Every method that changes an alert's response state
/// announces it ([`Store::changed`]) after its commit.
impl super::Response for Store {
    async fn acknowledge(
        &self,
        alert_id: AlertId,
        responder: String,
        via: super::Via,
        note: String,
    ) -> Result<super::Acknowledged, StoreError> {
        match self {
            Store::Sqlite(s) => s.writer.acknowledge(alert_id, responder, via, note).await,
            Store::Postgres(p) => {
                let (now, clock) = (super::now_ms(), super::outbox_clock_ms());
                let r = p.db.acknowledge(alert_id, &responder, via, &note, now, clock).await?;
                if matches!(r, super::Transition::New { .. }) {
                    self.changed(true);
                }
                Ok(r)
            }
        }
    }

    async fn resolve(
        &self,
        alert_id: AlertId,
        responder: String,
        via: super::Via,
        outcome: String,
        note: String,
    ) -> Result<super::Transition, StoreError> {
        match self {
            Store::Sqlite(s) => s.writer.resolve(alert_id, responder, via, outcome, note).await,
            Store::Postgres(p) => {
                let (now, clock) = (super::now_ms(), super::outbox_clock_ms());
                let r = p.db.resolve(alert_id, &responder, via, &outcome, &note, now, clock).await?;
                if matches!(r, super::Transition::New { .. }) {
                    self.changed(true);
                }
                Ok(r)
            }
        }
    }

    async fn mark_checked(
        &self,
        alert_id: AlertId,
        responder: String,
        via: super::Via,
        note: String,
    ) -> Result<super::Transition, StoreError> {
        match self {
            Store::Sqlite(s) => s.writer.mark_checked(alert_id, responder, via, note).await,
            Store::Postgres(p) => {
                let r = p.db.mark_checked(alert_id, &responder, via, &note, super::now_ms()).await?;
                if matches!(r, super::Transition::New { .. }) {
                    self.changed(false);
                }
                Ok(r)
            }
        }
    }

    async fn popup_targets(&self, now_ms: i64) -> Result<Vec<super::PopupTarget>, StoreError> {
        match self {
            // On a read connection, not the writer: with a long history and few open alerts
            // this read walks every alert (about 100 ms at 250,000), up to 50 times a second,
            // and an SOS waited behind it on the writer (docs/PERFORMANCE.md).
            Store::Sqlite(s) => s.read(move |db| db.popup_targets(now_ms)).await,
            Store::Postgres(p) => p.db.popup_targets(now_ms).await,
        }
    }

    async fn pending_notices(
        &self,
    ) -> Result<Vec<(AlertId, String, sos_shared::protocol::ResponderNotice)>, StoreError> {
        match self {
            // On the writer: a walk of an index that stops at its limit. On a read connection,
            // which starts each read with an empty cache after a commit, it cost a further
            // 6 % of the `max` throughput (docs/PERFORMANCE.md).
            Store::Sqlite(s) => s.writer.pending_notices().await,
            Store::Postgres(p) => p.db.pending_notices().await,
        }
    }

    async fn confirm_notice(
        &self,
        alert_id: AlertId,
        event: sos_shared::protocol::NoticeEvent,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.writer.confirm_notice(alert_id, event).await,
            Store::Postgres(p) => {
                if p.db.confirm_notice(alert_id, event, super::now_ms()).await? {
                    self.changed(false);
                }
                Ok(())
            }
        }
    }

    async fn timeline(
        &self,
        alert_id: AlertId,
    ) -> Result<Option<(AlertRecord, super::AlertState, Vec<super::Event>)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.writer.timeline(alert_id).await,
            Store::Postgres(p) => p.db.timeline(alert_id).await,
        }
    }

    async fn record_event(
        &self,
        alert_id: AlertId,
        kind: &'static str,
        who: String,
        via: super::Via,
        note: String,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.writer.record_event(alert_id, kind, who, via, note).await,
            Store::Postgres(p) => p.db.record_event(alert_id, kind, &who, via, &note, super::now_ms()).await,
        }
    }
}

impl Backend for Store {
    fn insert(&self, alert: NewAlert) -> super::backend::BoxFuture<'_, Result<Stored, StoreError>> {
        Box::pin(Store::insert(self, alert))
    }

    fn cancel(
        &self,
        alert_id: AlertId,
        reason: String,
        principal: String,
        now_ms: i64,
    ) -> super::backend::BoxFuture<'_, Result<Cancelled, StoreError>> {
        Box::pin(Store::cancel(self, alert_id, reason, principal, now_ms))
    }

    fn claim(
        &self,
        channel: &'static str,
        now_ms: i64,
        limit: usize,
    ) -> super::backend::BoxFuture<'_, Result<Claim, StoreError>> {
        Box::pin(Store::claim(self, channel, now_ms, limit))
    }

    fn finish(
        &self,
        lease: Lease,
        outcomes: Vec<(i64, JobOutcome)>,
        now_ms: i64,
    ) -> super::backend::BoxFuture<'_, Result<Vec<i64>, StoreError>> {
        Box::pin(Store::finish(self, lease, outcomes, now_ms))
    }

    fn next_due(&self, channel: &'static str) -> super::backend::BoxFuture<'_, Result<Option<i64>, StoreError>> {
        Box::pin(Store::next_due(self, channel))
    }

    fn recent_alerts(
        &self,
        limit: usize,
    ) -> super::backend::BoxFuture<'_, Result<super::backend::RecentAlerts, StoreError>> {
        Box::pin(Store::recent_alerts(self, limit))
    }

    fn is_failing(&self) -> bool {
        Store::is_failing(self)
    }

    fn changes(&self) -> Arc<Notify> {
        Store::changes(self)
    }

    fn waker(&self, channel: &str) -> Option<Arc<Notify>> {
        Store::waker(self, channel)
    }
}
