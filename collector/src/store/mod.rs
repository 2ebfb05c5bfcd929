//! The durable store: alerts and their outbox, in one SQLite file (WAL, synchronous=FULL).
//!
//! [`Db`] holds every SQL statement and is used directly by the CLI. [`SqliteStore`] is the handle
//! the service uses: one named writer thread owns a [`Db`] and takes commands over a channel.
//! Alerts that queue up while a commit is running are committed together in the next
//! transaction (group commit), so a storm costs one fsync per batch, not per datagram.
//! An alert and one outbox job per channel are committed in the same transaction: once the
//! caller is told [`Stored::New`], every channel will be notified even if the process dies.
//!
//! Here: the types the rest of the collector uses and [`StoreError`]. The SQL, by concern:
//! `db.rs` (opening the file), `schema.rs` (tables and migrations), `alerts.rs` (storing,
//! cancelling, listing alerts), `jobs.rs` (the outbox's queries), `presence.rs` (heartbeats),
//! `response.rs` (the responder loop's types and the [`Response`] trait) with its SQL in
//! `sqlite/response.rs` (response state, timeline, escalation deadlines, sender notices).
//! The writer thread and the [`SqliteStore`] handle: `writer.rs`; write health: `health.rs`. The
//! agent registry's SQL is in [`crate::registry`].
//!
//! Two backends: [`backend`] is the seam (the [`Backend`] trait: alerts once by id, outbox claims
//! under a lease, changes), implemented by [`SqliteStore`] (SQLite, one collector) and by
//! [`PgStore`] in `postgres/` (several collectors on one PostgreSQL: `FOR UPDATE SKIP LOCKED`
//! leases, LISTEN/NOTIFY, its own migrations). The service runs on SQLite; `database_url` is
//! refused at config check until the rest of the service runs on PostgreSQL too.

use std::net::SocketAddr;
use std::path::Path;

use sos_shared::protocol::Sos;
use sos_shared::AlertId;

mod alerts;
pub mod backend;
pub mod console;
mod db;
mod handle;
mod health;
mod jobs;
pub mod postgres;
mod presence;
pub mod response;
mod schema;
mod sqlite;
mod writer;

pub use backend::{Backend, Claim, Lease};
pub use db::Db;
pub use handle::{Postgres, Sqlite, Store};
pub use postgres::PgStore;
pub use response::{
    Acknowledged, AlertState, AlertUpdate, Audience, Event, PopupTarget, Response, ResponsePlan, Transition, Via,
};
pub use sqlite::response::{clean_note, MAX_POPUP_TARGETS, POPUP_RECENT_MS};
pub use writer::{CatchUpHold, SqliteStore};

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
        "the store {} is damaged ({}); the collector does not serve on a damaged store",
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
    /// PostgreSQL refused an operation (a constraint, a schema newer than this collector).
    #[error("store (PostgreSQL): {0}")]
    Postgres(String),
    /// PostgreSQL cannot be reached now (connection lost or refused, no answer in time): the
    /// collector acknowledges nothing until it returns.
    #[error("store unavailable: {0}")]
    Unavailable(String),
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
    /// The enrolled agent whose key sealed it; `None` for the shared site key. For an alert
    /// forwarded by a site: the site's enrollment id with the name and host the sender's key
    /// was enrolled under at the site (empty for a site-key sender there).
    pub enrolled: Option<EnrolledAs>,
    /// The enrolled name of the site collector that forwarded it; `None` when a workstation
    /// sent it here directly.
    pub site: Option<String>,
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
    /// In an outbox job: the escalation tier it belongs to and who it mentions or mails beyond
    /// the channel's own audience. Default elsewhere.
    pub audience: Audience,
    /// In an outbox job: the job is this update of the alert (a reminder, "acknowledged by",
    /// "resolved by"), not the alert itself. `None` elsewhere.
    pub update: Option<AlertUpdate>,
    /// The site collector that forwarded it (its enrolled name); `None` for an alert sent here
    /// directly.
    pub site: Option<String>,
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
    /// Its heartbeat said it is a responder desktop (it shows popups).
    pub responder: bool,
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
    /// `pending`, `delivered`, `failed`, or `stopped` (an acknowledgement stopped it before it went out).
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When it was delivered, ms since the Unix epoch.
    pub delivered_at_ms: Option<i64>,
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
/// the monotonic clock only. Every outbox deadline (when a job was created, when it is due) and
/// every escalation deadline is on this scale, so a step of the wall clock neither delays a
/// retry or a tier nor fires it early; the deadlines kept in the store are re-based on it when
/// a worker or the escalation engine starts ([`Db::rebase_outbox`], [`Db::rebase_escalations`]).
/// Under paused tokio time it follows the paused clock of the runtime it is called from (the
/// origin is a real instant, so runtimes paused at different times each see their own clock
/// advance); called from a thread outside any runtime (the store's writer) it follows real
/// time, so callers read it in their task and hand it to the writer.
///
/// On PostgreSQL the deadlines are shared by every collector on the database, so the clock's
/// origin is the **database's** clock instead of this host's ([`align_outbox_clock`], at start):
/// a collector whose wall clock was wrong when it started (booted before NTP set it) neither
/// holds back the pages and tiers other collectors queued nor fires its own early.
pub fn outbox_clock_ms() -> i64 {
    outbox_clock_base_ms() + OUTBOX_CLOCK_OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed)
}

/// What [`align_outbox_clock`] adds to this host's outbox clock, ms.
static OUTBOX_CLOCK_OFFSET_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// The outbox clock before any alignment.
fn outbox_clock_base_ms() -> i64 {
    static ORIGIN: std::sync::OnceLock<(std::time::Instant, i64)> = std::sync::OnceLock::new();
    let (at, wall) = ORIGIN.get_or_init(|| (std::time::Instant::now(), now_ms()));
    wall + tokio::time::Instant::now().into_std().saturating_duration_since(*at).as_millis() as i64
}

/// Align the outbox clock on another clock (the shared database's): `other_ms` was read there
/// between `before` and `after`, two readings of [`outbox_clock_base`]. Returns the offset now
/// applied, ms (how far the other clock is ahead of this process's).
pub(crate) fn align_outbox_clock(other_ms: i64, before: i64, after: i64) -> i64 {
    let offset = other_ms - before.midpoint(after);
    OUTBOX_CLOCK_OFFSET_MS.store(offset, std::sync::atomic::Ordering::Relaxed);
    offset
}

/// [`outbox_clock_ms`] before any alignment (for [`align_outbox_clock`]).
pub(crate) fn outbox_clock_base() -> i64 {
    outbox_clock_base_ms()
}

#[cfg(test)]
pub(crate) mod tests {
    use rusqlite::Connection;

    use super::*;

    /// An alert for tests: `id`, received at 1000 ms.
    pub(crate) fn alert(id: u128) -> NewAlert {
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
            site: None,
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

    /// A heartbeat of `user` on host `desk` at `at` ms, for tests.
    pub(crate) fn seen(user: &str, at: i64) -> AgentSeen {
        AgentSeen {
            host: "desk".into(),
            user: user.into(),
            ip: "10.0.0.1".into(),
            source: "10.0.0.1:4000".into(),
            key_id: "00".into(),
            agent_id: None,
            last_seen_ms: at,
            responder: false,
        }
    }

    #[test]
    fn heartbeats_keep_the_latest_sighting_per_agent() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("sos.db")).unwrap();
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
        let (store, writer) = SqliteStore::start(Db::open(&dir.path().join("sos.db")).unwrap(), &["log"]).unwrap();
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
                    responder: false,
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
        let (store, writer) = SqliteStore::start(Db::open(&dir.path().join("sos.db")).unwrap(), &["log"]).unwrap();
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
        let (store, writer) = SqliteStore::start(Db::open(&path).unwrap(), &["log"]).unwrap();
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
        let (store, writer) =
            SqliteStore::start(Db::open(&dir.path().join("sos.db")).unwrap(), &["log", "slack"]).unwrap();
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
        let (store, writer) = SqliteStore::start(Db::open(&dir.path().join("sos.db")).unwrap(), &["log"]).unwrap();
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
