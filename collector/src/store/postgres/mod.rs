//! The PostgreSQL store: several collectors sharing one database (issue 18).
//!
//! - **Alerts once by alert id**: `INSERT … ON CONFLICT (alert_id) DO NOTHING` with the outbox
//!   jobs in the same transaction; [`PgStore::insert`] resolves after the `COMMIT`, and only
//!   then is the SOS acknowledged. An SOS that two collectors receive (agents fail over) is
//!   stored once; the second is told [`Stored::Duplicate`] and pages nobody.
//! - **Outbox claims under a lease**: `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)`
//!   sets a `lease_id` (a sequence) and `lease_until` (the database's clock + [`LEASE`]); the
//!   outcome is recorded only `WHERE lease_id = $lease` (see [`super::backend`]). A collector
//!   killed during a delivery leaves its lease to run out; another takes the job over then.
//! - **Live across collectors**: every commit that makes jobs sends `NOTIFY sos_jobs` (the
//!   channel's name) and every change of an alert `NOTIFY sos_changes`; each collector
//!   `LISTEN`s on its connection and wakes its outbox workers and [`PgStore::changes`].
//! - **Outage**: one connection, driven by a supervisor task. When it is lost (or an operation
//!   gets no answer within [`ANSWER_WITHIN`]) the store is failing at once — no SOS is
//!   acknowledged, heartbeats go unanswered so agents fail over, an error is logged — and the
//!   supervisor reconnects with backoff; on return the workers are woken to resume. What was
//!   acknowledged was committed; an insert whose commit was cut off is not acknowledged, the
//!   agent retries and finds it stored or stores it (never twice: the alert id).
//! - **No TLS**: the connection is plain (`sslmode=disable`, or `prefer`, which falls back to
//!   plain); use a local socket or a trusted network. `sslmode=require` is refused at
//!   configuration check ([`crate::config`]).
//!
//! - **The responder loop** (`response.rs`): each alert's response started in its insert
//!   transaction (its first tier's jobs with their audience, the next tier's deadline), tiers
//!   fired once by whichever collector takes their deadline, acknowledgements that stop every
//!   collector's pages, links used once: the SQLite store's methods of the same names, made
//!   safe for several collectors (the locking rules and what the outbox clocks mean between
//!   collectors are in that file's doc).
//! - **Lock waits are bounded**: a session waits at most [`LOCK_WAIT`] for a row lock, and
//!   PostgreSQL ends a session idle in a transaction after [`IDLE_IN_TRANSACTION`], so a
//!   collector cut off in the middle of a transaction holds the others up for seconds, not
//!   until TCP gives up on it.
//!
//! Migrations: `schema.rs`. The lease cases and the suite shared with SQLite:
//! `store::backend`'s tests, against a real cluster (`cluster.rs`); the responder loop's and
//! the several-collectors cases: `response.rs`' tests.

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use sos_shared::AlertId;
use tokio::sync::{watch, Mutex, Notify};
use tokio_postgres::{AsyncMessage, Client, NoTls, Row};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use conn::Conn;

use super::backend::{Backend, BoxFuture, Claim, Lease, RecentAlerts};
use super::{
    outbox_clock_ms, AlertRecord, Audience, Cancellation, Cancelled, EnrolledAs, Job, JobOutcome, NewAlert,
    ResponsePlan, StoreError, Stored,
};

#[cfg(all(test, unix))]
pub(crate) mod cluster;
mod conn;
mod console;
mod keys;
mod presence;
mod registry;
mod response;
mod schema;
mod worker;

pub use worker::{ServerClock, CLOCK_WARNING_MS};

/// How long a claim holds its jobs: longer than any delivery attempt (their timeout is ten
/// seconds by default), short enough that a page held by a dead collector goes out soon.
pub const LEASE: Duration = Duration::from_secs(30);

/// An operation that gets no answer within this long fails, and the store is failing until the
/// connection is made again (a database that hangs instead of refusing).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// The longest an operation waits for the connection while others use it.
const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Whether PostgreSQL's error `why` (its SQLSTATE is in the text [`pg_error`] makes) says it
/// refuses writes: read-only transaction (25006), insufficient resources (class 53: disk full,
/// out of memory), system errors (class 58: I/O), no privilege (42501).
fn refuses_writes(why: &str) -> bool {
    why.starts_with("[25006]") || why.starts_with("[53") || why.starts_with("[58") || why.starts_with("[42501]")
}

/// The longest wait between two attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The columns of an alert, as [`alert_from`] reads them from `at`.
const ALERT_COLUMNS: &str = "a.alert_id, a.test, a.triggered_at, a.received_at_ms, a.\"user\", a.host, a.ip, \
     a.location, a.message, a.source, a.cancelled_at_ms, a.cancel_reason, a.agent_id, a.agent_name, a.agent_host, a.site";

/// A held-back job (news about an alert: its cancellation, a reminder, who answered) waits
/// while its alert's notification on the same channel is pending (as on SQLite) or **in
/// flight**: stopped by an acknowledgement while a collector delivers it under a live lease.
/// News never overtakes the alert on a channel, whichever collectors send them.
const NOT_HELD: &str = "NOT (o.kind <> 'alert' AND EXISTS (
        SELECT 1 FROM outbox p WHERE p.alert_id = o.alert_id AND p.channel = o.channel AND p.kind = 'alert'
                               AND (p.state = 'pending'
                                    OR (p.state = 'stopped' AND p.lease_until > clock_timestamp()))))";

/// Only the SQLite rule (a pending notification holds the news back), for [`PgStore::next_due`],
/// which dates a job held by one in flight at that one's lease's end.
const NOT_HELD_BY_PENDING: &str = "NOT (o.kind <> 'alert' AND EXISTS (
        SELECT 1 FROM outbox p WHERE p.alert_id = o.alert_id AND p.channel = o.channel
                               AND p.kind = 'alert' AND p.state = 'pending'))";

/// When a job `o` is due on this collector's outbox clock (`$2`, now): at its deadline, or when
/// its own lease or that of its alert's notification in flight ends, whichever is last.
const DUE_AT: &str = "GREATEST(o.next_attempt_at_ms,
        $2 + CEIL(EXTRACT(EPOCH FROM (GREATEST(o.lease_until, (
            SELECT MAX(p.lease_until) FROM outbox p
            WHERE o.kind <> 'alert' AND p.alert_id = o.alert_id
              AND p.channel = o.channel AND p.kind = 'alert' AND p.state = 'stopped'))
          - clock_timestamp())) * 1000)::bigint)";

/// The query of [`PgStore::next_due`] (`$1` the channel, `$2` now on the outbox clock, `$3`
/// false, `$4` true): the earliest [`DUE_AT`] of the channel's pending jobs that are not held
/// back behind a pending notification, from three sets, each an index read:
///
/// - of each part of [`PgStore::claim`] (reminders and the rest), the first job free to claim,
///   in the order of `outbox_due` (a range read that stops at the first: it passes over only
///   jobs leased or held back), due at its deadline;
/// - every job with a lease (`outbox_leased`, a partial index of the rows claimed and not
///   finished), live or over: due when it ends;
/// - the news about an alert whose notification has a lease (in flight, stopped by an
///   acknowledgement), by the outbox's unique index: due when that lease ends.
///
/// A job in none of them is held back, or due after the first of its part. The leased sets
/// take every lease, not only the live ones: a lease that ends while the query runs (the walk
/// past held-back jobs can take 100 ms and more) would otherwise be live for the first part
/// and over for these, and its job counted nowhere (found by review: the worker then slept
/// until the next other deadline, or an hour). Before, one aggregate over every pending job of
/// the channel. Made once: it runs each time a claim comes back empty.
fn next_due_sql() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(make_next_due_sql);
    &SQL
}

/// The text of [`next_due_sql`].
fn make_next_due_sql() -> String {
    let first_free = |part: &str| {
        format!(
            "(SELECT o.next_attempt_at_ms FROM outbox o
              WHERE o.channel = $1 AND o.state = 'pending' AND (o.kind = 'reminder') = (SELECT {part}::boolean)
                AND (o.lease_until IS NULL OR o.lease_until <= clock_timestamp())
                AND {NOT_HELD}
              ORDER BY o.next_attempt_at_ms LIMIT 1)"
        )
    };
    format!(
        "SELECT MIN(due)::bigint FROM (
             SELECT {free_rest} AS due
             UNION ALL
             SELECT {free_reminders}
             UNION ALL
             SELECT {DUE_AT} FROM outbox o
             WHERE o.channel = $1 AND o.lease_until IS NOT NULL AND o.state = 'pending'
               AND {NOT_HELD_BY_PENDING}
             UNION ALL
             SELECT {DUE_AT} FROM outbox l
             JOIN outbox o ON o.alert_id = l.alert_id AND o.channel = l.channel AND o.kind <> 'alert'
             WHERE l.channel = $1 AND l.lease_until IS NOT NULL AND l.kind = 'alert' AND l.state = 'stopped'
               AND o.state = 'pending' AND {NOT_HELD_BY_PENDING}
         ) d",
        free_rest = first_free("$3"),
        free_reminders = first_free("$4"),
    )
}

/// A database session that holds locks must not keep other collectors waiting when it goes
/// silent (a collector cut off mid-transaction): PostgreSQL ends it after this long idle in a
/// transaction (ours never are: every transaction runs within [`ANSWER_WITHIN`]).
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(5);

/// The longest an operation waits for another collector's row lock: less than
/// [`ANSWER_WITHIN`], so a wait behind a silent collector fails that operation alone (it is
/// retried) instead of making this collector's connection look hung.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// `e` from PostgreSQL as a store error: a lost or refused connection is [`StoreError::Unavailable`].
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    // Connection exceptions (class 08) and the server shutting down (57P01–57P03).
    let server_gone = e.as_db_error().is_some_and(|d| {
        let code = d.code().code();
        code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
    });
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io || server_gone {
        StoreError::Unavailable(e.to_string())
    } else if let Some(d) = e.as_db_error() {
        // The SQLSTATE first, for `refuses_writes`; no DETAIL (it can quote a row's values).
        StoreError::Postgres(format!("[{}] {}", d.code().code(), d.message()))
    } else {
        StoreError::Postgres(e.to_string())
    }
}

/// A collector's handle to the shared PostgreSQL store. Cheap to clone; the connection's
/// supervisor ends when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct PgStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The one connection and its generation, `None` while it is being made again. One
    /// operation at a time.
    client: Arc<Mutex<Option<(u64, Conn)>>>,
    /// Set while the database cannot be reached or its last operation failed.
    failing: Arc<AtomicBool>,
    /// Set when PostgreSQL refused a write (a read-only standby, a full disk, no privilege):
    /// failing until a write succeeds ([`PgStore::note_write_ok`]), not merely a read.
    write_refused: AtomicBool,
    /// The channels with an outbox worker here, with their wakers.
    wakers: Arc<Vec<(&'static str, Arc<Notify>)>>,
    /// The escalation policy: every new alert fires its first tier.
    plan: Arc<ResponsePlan>,
    /// See [`PgStore::changes`].
    changes: Arc<Notify>,
    /// How long a claim holds its jobs.
    lease: Duration,
    /// Ends the supervisor when the last handle goes.
    stop: CancellationToken,
    /// Asks the supervisor to drop connection N and make a new one (an operation on it hung).
    reconnect: tokio::sync::mpsc::UnboundedSender<u64>,
    /// The alerts being stored now, each with the outcome to come (`Ok`: committed):
    /// a retransmission of one of them waits for that commit instead of queueing a transaction
    /// of its own behind it (see [`PgStore::insert`]).
    storing: std::sync::Mutex<HashMap<AlertId, StoreOutcome>>,
    /// Retransmissions answered by their original's commit.
    merged: AtomicU64,
    /// The generation of the connection that last gave no answer (`u64::MAX`: none): it is
    /// being replaced, and no operation waiting for it uses it meanwhile.
    hung: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Wake every listener of a change now, and leave one permit.
fn announce(changes: &Notify) {
    changes.notify_waiters();
    changes.notify_one();
}

/// What the connection's driver needs to route notifications.
#[derive(Clone)]
struct Routes {
    wakers: Arc<Vec<(&'static str, Arc<Notify>)>>,
    changes: Arc<Notify>,
}

impl Routes {
    fn wake_all(&self) {
        for (_, n) in self.wakers.iter() {
            n.notify_one();
        }
        announce(&self.changes);
    }
}

/// Connect, `LISTEN`, and drive the connection in a task that ends (with the error) when the
/// connection is lost or the client dropped.
async fn connect(
    config: &tokio_postgres::Config,
    routes: &Routes,
) -> Result<(Client, tokio::task::JoinHandle<Option<tokio_postgres::Error>>), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let routes = routes.clone();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => match n.channel() {
                    "sos_jobs" => {
                        for (_, w) in routes.wakers.iter().filter(|(c, _)| n.payload().is_empty() || *c == n.payload())
                        {
                            w.notify_one();
                        }
                    }
                    _ => announce(&routes.changes),
                },
                Ok(AsyncMessage::Notice(n)) => tracing::debug!(notice = %n, "PostgreSQL"),
                Ok(_) => {}
                Err(e) => return Some(e),
            }
        }
        None
    });
    // No JIT compilation (on by default since PostgreSQL 12): every query here is short, and a
    // query the planner guesses to be costly (an ordered index read with a filter, such as the
    // outbox's, is guessed at millions) was compiled first, 0.1–1.4 s on this machine, each time.
    // Every execution of a prepared statement planned with its values (`conn.rs`). Each only
    // where the server has it (JIT since 11, the plan cache mode since 12).
    client
        .batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = {}; SET lock_timeout = {};
             SELECT set_config(s.name, s.setting, false)
             FROM (VALUES ('jit', 'off'), ('plan_cache_mode', 'force_custom_plan')) AS s (name, setting)
             WHERE EXISTS (SELECT 1 FROM pg_settings p WHERE p.name = s.name);
             LISTEN sos_jobs; LISTEN sos_changes",
            IDLE_IN_TRANSACTION.as_millis(),
            LOCK_WAIT.as_millis()
        ))
        .await?;
    Ok((client, driver))
}

/// The outcome of an alert's store, once it has one (`Ok`: committed).
type StoreOutcome = watch::Receiver<Option<Result<(), StoreError>>>;

/// An alert being stored by [`PgStore::insert`]: its entry in `storing`, removed when the
/// insert ends or is dropped (if still its own).
struct Storing<'a> {
    inner: &'a Inner,
    id: AlertId,
    outcome: StoreOutcome,
}

impl Drop for Storing<'_> {
    fn drop(&mut self) {
        let mut map = self.inner.storing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.get(&self.id).is_some_and(|o| o.same_channel(&self.outcome)) {
            map.remove(&self.id);
        }
    }
}

impl PgStore {
    /// Connect to `url`, bring the schema up to date, and start the connection's supervisor.
    /// Every new alert gets one job per channel of `channels` (one tier, no responders:
    /// [`ResponsePlan::channels_only`]).
    ///
    /// # Errors
    /// If `url` is not a PostgreSQL URL, the database cannot be reached now, or a migration fails.
    pub async fn open(url: &str, channels: &[&'static str]) -> Result<PgStore, StoreError> {
        Self::open_with_lease(url, channels, LEASE).await
    }

    /// [`PgStore::open`] with an escalation policy (as `SqliteStore::start_planned`): every new
    /// alert fires the first tier of `plan`. The plan's channels (of every tier, both
    /// policies) get wakers; see [`PgStore::open_configured`] to give every configured channel one.
    ///
    /// # Errors
    /// As [`PgStore::open`].
    pub async fn open_planned(url: &str, plan: ResponsePlan) -> Result<PgStore, StoreError> {
        let mut channels: Vec<&'static str> = Vec::new();
        for c in plan.emergency.iter().chain(&plan.drill).flat_map(|t| &t.channels) {
            if !channels.contains(c) {
                channels.push(c);
            }
        }
        Self::open_full(url, &channels, plan, LEASE).await
    }

    /// [`PgStore::open_planned`] with a waker for each of `channels` (the configured ones, each
    /// with an outbox worker; the plan's must be among them), as `SqliteStore::start_planned`
    /// takes them: a channel that no tier names still gets a worker, and the cancellation of an
    /// alert that notified no channel goes to all of them.
    ///
    /// # Errors
    /// As [`PgStore::open`].
    pub async fn open_configured(
        url: &str,
        channels: &[&'static str],
        plan: ResponsePlan,
    ) -> Result<PgStore, StoreError> {
        Self::open_full(url, channels, plan, LEASE).await
    }

    /// [`PgStore::open`] with claims held for `lease` instead of [`LEASE`] (tests).
    ///
    /// # Errors
    /// As [`PgStore::open`].
    pub async fn open_with_lease(url: &str, channels: &[&'static str], lease: Duration) -> Result<PgStore, StoreError> {
        Self::open_full(url, channels, ResponsePlan::channels_only(channels), lease).await
    }

    /// Connect with wakers for `channels`, `plan`, claims held for `lease`.
    ///
    /// # Errors
    /// As [`PgStore::open`].
    pub async fn open_full(
        url: &str,
        channels: &[&'static str],
        plan: ResponsePlan,
        lease: Duration,
    ) -> Result<PgStore, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url)
            // The message of a URL that does not parse names the option, never the password.
            .map_err(|e| StoreError::Postgres(format!("database_url is not a PostgreSQL URL: {e}")))?;
        config.connect_timeout(ANSWER_WITHIN);
        // A collector cannot work on a read-only server (a hot standby the address now points
        // to after a failover): connect only to one that takes writes.
        config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        let routes = Routes {
            wakers: Arc::new(channels.iter().map(|c| (*c, Arc::new(Notify::new()))).collect()),
            changes: Arc::new(Notify::new()),
        };
        let (mut client, driver) = connect(&config, &routes).await.map_err(|e| {
            StoreError::Unavailable(format!("cannot connect to PostgreSQL at {}: {e}", where_is(&config)))
        })?;
        schema::migrate(&mut client).await?;
        let (reconnect, hung) = tokio::sync::mpsc::unbounded_channel();
        let inner = Inner {
            client: Arc::new(Mutex::new(Some((0, Conn::new(client))))),
            failing: Arc::default(),
            write_refused: AtomicBool::new(false),
            wakers: routes.wakers.clone(),
            plan: Arc::new(plan),
            changes: routes.changes.clone(),
            lease,
            stop: CancellationToken::new(),
            reconnect,
            storing: std::sync::Mutex::default(),
            merged: AtomicU64::new(0),
            hung: AtomicU64::new(u64::MAX),
        };
        tokio::spawn(supervise(
            config,
            routes,
            driver,
            inner.client.clone(),
            inner.failing.clone(),
            hung,
            inner.stop.clone(),
        ));
        let store = PgStore { inner: Arc::new(inner) };
        tokio::spawn(check_alive(Arc::downgrade(&store.inner), store.inner.stop.clone()));
        Ok(store)
    }

    /// Run `op` on the connection, within [`ANSWER_WITHIN`]. A lost connection or no answer
    /// makes the store failing (and asks for a new connection); a success clears it.
    pub(crate) async fn run<T>(
        &self,
        op: impl for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let inner = &self.inner;
        let generation = std::sync::atomic::AtomicU64::new(u64::MAX);
        // Waiting for the connection (other operations ahead) is not the database hanging: it
        // has a budget of its own, and running out of it drops no connection.
        let Ok(mut slot) = tokio::time::timeout(QUEUE_WAIT, inner.client.lock()).await else {
            return Err(StoreError::Postgres(format!(
                "the connection to PostgreSQL was busy for {} s (operations queued ahead); try again",
                QUEUE_WAIT.as_secs()
            )));
        };
        let answer = tokio::time::timeout(ANSWER_WITHIN, async {
            let Some((n, client)) = slot.as_mut() else {
                return Err(StoreError::Unavailable("the connection to PostgreSQL is being made again".into()));
            };
            // An operation that waited behind one that got no answer does not wait its own
            // 5 s on that connection: it fails at once, and the supervisor, queued behind the
            // waiting operations, takes the connection sooner to make it again.
            if *n == inner.hung.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable(
                    "the connection to PostgreSQL stopped answering and is being made again".into(),
                ));
            }
            generation.store(*n, Ordering::SeqCst);
            op(client).await
        })
        .await
        .unwrap_or_else(|_| {
            // No answer (a hung server, a dead link without a reset): that connection is dropped.
            let hung = generation.load(Ordering::SeqCst);
            if hung != u64::MAX {
                inner.hung.store(hung, Ordering::SeqCst);
            }
            let _ = inner.reconnect.send(hung);
            Err(StoreError::Unavailable(format!("PostgreSQL did not answer within {} s", ANSWER_WITHIN.as_secs())))
        });
        match &answer {
            Ok(_) => {
                if inner.failing.swap(false, Ordering::SeqCst) {
                    info!("PostgreSQL store answering again");
                }
            }
            Err(StoreError::Unavailable(why)) => {
                if !inner.failing.swap(true, Ordering::SeqCst) {
                    error!(
                        problem = %why,
                        "STORE UNAVAILABLE: PostgreSQL cannot be reached; no SOS is acknowledged until it \
                         returns, agents keep retrying and fail over"
                    );
                }
            }
            Err(StoreError::Postgres(why)) if refuses_writes(why) => {
                if !inner.write_refused.swap(true, Ordering::SeqCst) {
                    error!(
                        problem = %why,
                        "STORE REFUSES WRITES: PostgreSQL refused a write (read-only, disk full, no privilege?); \
                         no SOS is acknowledged until it takes writes again, agents keep retrying and fail over"
                    );
                }
            }
            Err(_) => {}
        }
        answer
    }

    /// A write succeeded: a refusal of writes seen before is over.
    pub(crate) fn note_write_ok(&self) {
        if self.inner.write_refused.swap(false, Ordering::SeqCst) {
            info!("PostgreSQL takes writes again");
        }
    }

    /// Notified after every commit that changes an alert, by this collector or another.
    pub fn changes(&self) -> Arc<Notify> {
        self.inner.changes.clone()
    }

    /// Whether the store is failing now (see [`Backend::is_failing`]).
    pub fn is_failing(&self) -> bool {
        self.inner.failing.load(Ordering::SeqCst) || self.inner.write_refused.load(Ordering::SeqCst)
    }

    /// Store an alert once by alert id and start its response, as SQLite's group commit does
    /// for each alert: the response row, the `received` event, the first tier of the plan fired
    /// (its jobs with their audience, the next tier's deadline; every tier at once and the
    /// sender's `unanswered` notice if nobody can be reached). Resolves after the commit.
    ///
    /// A retransmission of an alert this collector is storing now waits for that commit and is
    /// a duplicate of it, instead of a transaction of its own queued behind it on the one
    /// connection: under load (an SOS waiting seconds for the connection, agents retransmitting
    /// at 0.3, 0.6, 1.2, 2.4 s…) three transactions in four were retransmissions. If that
    /// store fails, so does the retransmission (not acknowledged: the agent sends again), within
    /// the same budget as before; if it is given up, the retransmission is stored on its own.
    ///
    /// # Errors
    /// If the commit failed or did not answer: the alert must not be acknowledged.
    pub async fn insert(&self, alert: NewAlert) -> Result<Stored, StoreError> {
        let id = alert.sos.alert_id;
        let storing = self.inner.storing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id).cloned();
        if let Some(mut outcome) = storing {
            let done = outcome.wait_for(Option::is_some).await.ok().and_then(|v| v.clone());
            match done {
                Some(Ok(())) => {
                    self.inner.merged.fetch_add(1, Ordering::Relaxed);
                    return Ok(Stored::Duplicate);
                }
                // Its error, not a store of its own queued at the back: the wait stays within
                // the first's budget (15 s), and the agent sends again.
                Some(Err(e)) => return Err(e),
                // The first was given up (the service stopping): stored on its own.
                None => {}
            }
        }
        let (tell, outcome) = watch::channel(None);
        let mine = {
            let mut map = self.inner.storing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // One more retransmission may have begun meanwhile: both store, one as a duplicate.
            map.entry(id).or_insert_with(|| outcome.clone()).same_channel(&outcome)
        };
        // Whatever happens to this future (an answer, an error, dropped), the entry goes.
        let _entry = mine.then(|| Storing { inner: &self.inner, id, outcome: outcome.clone() });
        let stored = self.store_new(alert).await;
        if mine {
            let _ = tell.send(Some(stored.as_ref().map(|_| ()).map_err(Clone::clone)));
        }
        stored
    }

    /// Retransmissions answered by their original's commit, so far.
    pub fn merged_retransmissions(&self) -> u64 {
        self.inner.merged.load(Ordering::Relaxed)
    }

    /// [`PgStore::insert`]'s transaction.
    async fn store_new(&self, alert: NewAlert) -> Result<Stored, StoreError> {
        let plan = self.inner.plan.clone();
        let jobs_at = outbox_clock_ms();
        let (stored, effects) = self
            .run(move |c| {
                Box::pin(async move {
                    let tx = c.transaction().await.map_err(pg_error)?;
                    let s = &alert.sos;
                    let e = alert.enrolled.as_ref();
                    let n = tx
                        .execute(
                            "INSERT INTO alerts (alert_id, received_at_ms, triggered_at, test, \"user\", host, ip,
                                 location, message, agent, source, key_id, agent_id, agent_name, agent_host, site)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
                             ON CONFLICT (alert_id) DO NOTHING",
                            &[
                                &s.alert_id.to_string(),
                                &alert.received_at_ms,
                                &(s.triggered_at as i64),
                                &s.test,
                                &text(&s.user),
                                &text(&s.host),
                                &text(&s.ip),
                                &text(&s.location),
                                &text(&s.message),
                                &text(&s.agent),
                                &alert.source.to_string(),
                                &alert.key_id,
                                &e.map(|e| text(&e.agent_id)),
                                &e.map(|e| text(&e.name)),
                                &e.map(|e| text(&e.host)),
                                &alert.site.as_deref().map(text),
                            ],
                        )
                        .await
                        .map_err(pg_error)?;
                    let mut effects = response::Effects::default();
                    if n == 0 {
                        tx.commit().await.map_err(pg_error)?;
                        return Ok((Stored::Duplicate, effects));
                    }
                    response::start_response(&tx, &plan, &alert, jobs_at, &mut effects).await?;
                    effects.notify(&tx).await?;
                    tx.commit().await.map_err(pg_error)?;
                    Ok((Stored::New, effects))
                })
            })
            .await?;
        self.note_write_ok();
        // This collector's own workers at once; the others by the NOTIFY.
        self.wake(&effects);
        Ok(stored)
    }

    /// See [`Backend::cancel`]; as SQLite's `Db::cancel`: the cancellation recorded once (the
    /// alert's row taken `FOR NO KEY UPDATE`: the same cancellation received by two collectors
    /// is recorded once), the response cancelled (unless resolved or checked), its deadline and
    /// pending reminders stopped, one cancellation job per channel that was notified.
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
        let channels: Vec<&'static str> = self.inner.wakers.iter().map(|(c, _)| *c).collect();
        let jobs_at = outbox_clock_ms();
        let (outcome, effects) = self
            .run(move |c| {
                Box::pin(async move {
                    let tx = c.transaction().await.map_err(pg_error)?;
                    let id = alert_id.to_string();
                    let row = tx
                        .query_opt(
                            "SELECT COALESCE('agent:' || agent_id, key_id), cancelled_at_ms FROM alerts
                             WHERE alert_id = $1 FOR NO KEY UPDATE",
                            &[&id],
                        )
                        .await
                        .map_err(pg_error)?;
                    let mut effects = response::Effects::default();
                    let outcome = match row.map(|r| (r.get::<_, String>(0), r.get::<_, Option<i64>>(1))) {
                        None => Cancelled::Unknown,
                        Some((who, _)) if who != principal => Cancelled::Unknown,
                        Some((_, Some(_))) => Cancelled::Already,
                        Some((_, None)) => {
                            tx.execute(
                                "UPDATE alerts SET cancelled_at_ms = $2, cancel_reason = $3 WHERE alert_id = $1",
                                &[&id, &now_ms, &text(&reason)],
                            )
                            .await
                            .map_err(pg_error)?;
                            let tell = response::cancel_response(&tx, &id, &reason, now_ms, &channels).await?;
                            response::queue_cancel(&tx, &id, &tell, jobs_at, &mut effects).await?;
                            Cancelled::New
                        }
                    };
                    effects.notify(&tx).await?;
                    tx.commit().await.map_err(pg_error)?;
                    Ok((outcome, effects))
                })
            })
            .await?;
        self.wake(&effects);
        Ok(outcome)
    }

    /// See [`Backend::claim`]: the jobs are leased for the store's lease, and come as SQLite's
    /// `Db::due_jobs` returns them: each with its tier's audience (mentions, recipients), an
    /// update (a reminder, "acknowledged by", "resolved by") for those kinds, the cancellation
    /// only on a cancellation job; news held back behind its alert's notification on the
    /// channel (see [`NOT_HELD`]); stopped jobs never.
    ///
    /// # Errors
    /// If the query failed.
    pub async fn claim(&self, channel: &'static str, now_ms: i64, limit: usize) -> Result<Claim, StoreError> {
        let lease_ms = self.inner.lease.as_millis() as i64;
        self.run(move |c| {
            Box::pin(async move {
                let lease: i64 = c.query_one("SELECT nextval('outbox_leases')", &[]).await.map_err(pg_error)?.get(0);
                // Reminders (`$6`) after the rest, each part a range of the index `outbox_due`
                // (see the SQLite store's `due_jobs`), under the same lease, in one transaction:
                // a claim that fails half-way leaves nothing leased (held for a lease's length).
                // `(SELECT $6)`, a value of the run, not of the plan: given `= false`, the planner
                // rewrites the comparison to `kind <> 'reminder'`, which the index does not match,
                // and sorts every pending job of the channel.
                let tx = c.transaction().await.map_err(pg_error)?;
                let mut claimed = Vec::new();
                for reminders in [false, true] {
                    let left = limit.saturating_sub(claimed.len());
                    if left == 0 {
                        break;
                    }
                    let rows = tx
                        .query(
                            &format!(
                                "UPDATE outbox AS o SET lease_id = $4,
                                        lease_until = clock_timestamp() + $5::bigint * interval '1 millisecond'
                                 FROM alerts a
                                 WHERE a.alert_id = o.alert_id AND o.id IN (
                                     SELECT o.id FROM outbox o
                                     WHERE o.channel = $1 AND o.state = 'pending' AND (o.kind = 'reminder') = (SELECT $6::boolean)
                                       AND o.next_attempt_at_ms <= $2
                                       AND (o.lease_until IS NULL OR o.lease_until <= clock_timestamp())
                                       AND {NOT_HELD}
                                     ORDER BY o.next_attempt_at_ms, o.id LIMIT $3
                                     FOR UPDATE OF o SKIP LOCKED)
                                 RETURNING o.id, o.attempts, o.created_at_ms, o.kind, o.next_attempt_at_ms, o.tier,
                                           o.mentions, o.recipients, o.detail, {ALERT_COLUMNS}"
                            ),
                            &[&channel, &now_ms, &(left as i64), &lease, &lease_ms, &reminders],
                        )
                        .await
                        .map_err(pg_error)?;
                    let mut part = Self::claimed_jobs(&rows)?;
                    part.sort_by_key(|(due, job)| (*due, job.id));
                    claimed.extend(part.into_iter().map(|(_, j)| j));
                }
                tx.commit().await.map_err(pg_error)?;
                Ok(Claim { lease: Lease(lease), jobs: claimed })
            })
        })
        .await
    }

    /// The jobs of [`PgStore::claim`]'s rows, each with when it was due.
    fn claimed_jobs(rows: &[Row]) -> Result<Vec<(i64, Job)>, StoreError> {
        rows.iter()
            .map(|r| {
                let kind: &str = r.get(3);
                let list = |at: usize| -> Vec<String> {
                    r.get::<_, &str>(at).lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
                };
                let mut alert = alert_from(r, 9)?;
                alert.audience =
                    Audience { tier: r.get::<_, i64>(5).max(1) as u32, mentions: list(6), emails: list(7) };
                crate::store::jobs::job_kind(kind, r.get(8), &mut alert);
                let job =
                    Job { id: r.get(0), attempts: r.get::<_, i32>(1).max(0) as u32, created_at_ms: r.get(2), alert };
                Ok((r.get::<_, i64>(4), job))
            })
            .collect()
    }

    /// See [`Backend::finish`]: only the jobs still held under `lease` are recorded (a job an
    /// acknowledgement stopped while it was in flight is recorded too, and stays stopped unless
    /// delivered or failed: never claimed again). Rows are updated in id order.
    ///
    /// # Errors
    /// If the transaction failed: nothing was recorded.
    pub async fn finish(
        &self,
        lease: Lease,
        mut outcomes: Vec<(i64, JobOutcome)>,
        now_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        outcomes.sort_by_key(|(id, _)| *id);
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg_error)?;
                let mut refused = Vec::new();
                for (id, outcome) in &outcomes {
                    let n = match outcome {
                        JobOutcome::Delivered => {
                            tx.execute(
                                "UPDATE outbox SET state = 'delivered', attempts = attempts + 1,
                                        delivered_at_ms = $3, last_error = NULL, lease_id = NULL, lease_until = NULL
                                 WHERE id = $1 AND lease_id = $2",
                                &[id, &lease.0, &now_ms],
                            )
                            .await
                        }
                        JobOutcome::Retry { next_attempt_at_ms, error } => {
                            tx.execute(
                                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at_ms = $3, last_error = $4,
                                        lease_id = NULL, lease_until = NULL
                                 WHERE id = $1 AND lease_id = $2",
                                &[id, &lease.0, next_attempt_at_ms, &text(error)],
                            )
                            .await
                        }
                        JobOutcome::Failed { error } => {
                            tx.execute(
                                "UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = $3,
                                        lease_id = NULL, lease_until = NULL
                                 WHERE id = $1 AND lease_id = $2",
                                &[id, &lease.0, &text(error)],
                            )
                            .await
                        }
                    }
                    .map_err(pg_error)?;
                    if n == 0 {
                        refused.push(*id);
                    }
                }
                tx.commit().await.map_err(pg_error)?;
                Ok(refused)
            })
        })
        .await
    }

    /// See [`Backend::next_due`]. A job leased by someone is due when its lease ends, and so is
    /// news held back behind its alert's notification in flight (on this collector's outbox
    /// clock: the lease's remaining time added to now). Read as [`next_due_sql`] says: index reads,
    /// never every pending job of the channel (it runs on the connection every SOS needs).
    ///
    /// # Errors
    /// If the query failed.
    pub async fn next_due(&self, channel: &'static str) -> Result<Option<i64>, StoreError> {
        let now = outbox_clock_ms();
        self.run(move |c| {
            Box::pin(async move {
                let row = c.query_one(next_due_sql(), &[&channel, &now, &false, &true]).await.map_err(pg_error)?;
                Ok(row.get::<_, Option<i64>>(0))
            })
        })
        .await
    }

    /// See [`Backend::recent_alerts`]; each job labelled as [`PgStore::deliveries`] does.
    ///
    /// # Errors
    /// If the query failed.
    pub async fn recent_alerts(&self, limit: usize) -> Result<Vec<(AlertRecord, Vec<super::Delivery>)>, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                let alerts = c
                    .query(
                        &format!(
                            "SELECT {ALERT_COLUMNS} FROM alerts a ORDER BY a.received_at_ms DESC, a.alert_id LIMIT $1"
                        ),
                        &[&(limit as i64)],
                    )
                    .await
                    .map_err(pg_error)?;
                let mut out = Vec::with_capacity(alerts.len());
                for row in &alerts {
                    let alert = alert_from(row, 0)?;
                    let jobs = c
                        .query(
                            &format!(
                                "SELECT {} FROM outbox WHERE alert_id = $1 ORDER BY id",
                                response::DELIVERY_COLUMNS
                            ),
                            &[&alert.alert_id.to_string()],
                        )
                        .await
                        .map_err(pg_error)?;
                    out.push((alert, jobs.iter().map(response::delivery_from).collect()));
                }
                Ok(out)
            })
        })
        .await
    }
}

/// `s` as PostgreSQL can store it: its text type cannot hold NUL, which SQLite's can and an
/// agent may send; refusing the insert would refuse the SOS forever (the agent retries the same
/// datagram), so each NUL is stored as U+FFFD.
fn text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// An alert from a row whose columns from `at` are [`ALERT_COLUMNS`].
fn alert_from(r: &Row, at: usize) -> Result<AlertRecord, StoreError> {
    let id: String = r.get(at);
    Ok(AlertRecord {
        alert_id: id.parse().map_err(|e| StoreError::Postgres(format!("alert id {id:?} in the store: {e}")))?,
        test: r.get(at + 1),
        triggered_at: r.get(at + 2),
        received_at_ms: r.get(at + 3),
        user: r.get(at + 4),
        host: r.get(at + 5),
        ip: r.get(at + 6),
        location: r.get(at + 7),
        message: r.get(at + 8),
        source: r.get(at + 9),
        cancellation: r
            .get::<_, Option<i64>>(at + 10)
            .map(|at_ms| Cancellation { at_ms, reason: r.get::<_, Option<String>>(at + 11).unwrap_or_default() }),
        enrolled: r.get::<_, Option<String>>(at + 12).map(|agent_id| EnrolledAs {
            agent_id,
            name: r.get::<_, Option<String>>(at + 13).unwrap_or_default(),
            host: r.get::<_, Option<String>>(at + 14).unwrap_or_default(),
        }),
        audience: Default::default(),
        update: None,
        site: r.get(at + 15),
    })
}

/// Host and port (or socket directory) of `config`, for messages: never the password.
fn where_is(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// Keep the connection: when it is lost (or an operation hung), the store is failing and a new
/// one is made with backoff; on return every worker and listener is woken (jobs may have been
/// committed, alerts changed, leases run out while this collector was away).
/// How often the connection is checked, whatever else uses it (see [`check_alive`]).
const CHECK_ALIVE_EVERY: Duration = Duration::from_secs(5);

/// An outage is found by an operation that fails or gets no answer within [`ANSWER_WITHIN`];
/// a collector that receives no SOS may run none that waits that long (the responder push
/// gives up on its reads sooner, and the outbox may have nothing due), and a connection that a
/// dead link or a firewall silently blackholes never fails by itself. So a trivial query runs
/// every [`CHECK_ALIVE_EVERY`]: a collector cut off from PostgreSQL says `STORE UNAVAILABLE`,
/// stops answering heartbeats and reports failing in `/readyz` within about 10 s whether or
/// not anyone presses, and the supervisor connects again. Holds only a weak reference: the
/// store ends when its last handle goes.
async fn check_alive(inner: std::sync::Weak<Inner>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            () = tokio::time::sleep(CHECK_ALIVE_EVERY) => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        let store = PgStore { inner };
        // The outcome is reported by `run` (failing, the log, a new connection).
        let _ = store.run(|c| Box::pin(async move { c.batch_execute("SELECT 1").await.map_err(pg_error) })).await;
    }
}

async fn supervise(
    config: tokio_postgres::Config,
    routes: Routes,
    mut driver: tokio::task::JoinHandle<Option<tokio_postgres::Error>>,
    client: Arc<Mutex<Option<(u64, Conn)>>>,
    failing: Arc<AtomicBool>,
    mut hung: tokio::sync::mpsc::UnboundedReceiver<u64>,
    stop: CancellationToken,
) {
    let mut generation = 0;
    loop {
        let why = tokio::select! {
            _ = stop.cancelled() => break,
            ended = &mut driver => match ended {
                Ok(Some(e)) => e.to_string(),
                Ok(None) => "the connection was closed".to_owned(),
                Err(e) => format!("the connection's task ended: {e}"),
            },
            Some(n) = hung.recv() => {
                if n != generation {
                    continue; // An earlier connection's: already replaced.
                }
                "an operation got no answer".to_owned()
            }
        };
        // Dropping the client closes the connection: a transaction cut off is rolled back.
        client.lock().await.take();
        driver.abort();
        if !failing.swap(true, Ordering::SeqCst) {
            error!(
                problem = %why,
                "STORE UNAVAILABLE: lost the connection to PostgreSQL; no SOS is acknowledged until it returns, \
                 agents keep retrying and fail over"
            );
        } else {
            warn!(problem = %why, "PostgreSQL connection lost again");
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            match connect(&config, &routes).await {
                Ok((c, d)) => {
                    generation += 1;
                    *client.lock().await = Some((generation, Conn::new(c)));
                    driver = d;
                    failing.store(false, Ordering::SeqCst);
                    info!("PostgreSQL store answering again: SOS are acknowledged again");
                    routes.wake_all();
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "PostgreSQL: cannot reconnect yet");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

impl Backend for PgStore {
    fn insert(&self, alert: NewAlert) -> BoxFuture<'_, Result<Stored, StoreError>> {
        Box::pin(PgStore::insert(self, alert))
    }

    fn cancel(
        &self,
        alert_id: AlertId,
        reason: String,
        principal: String,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Cancelled, StoreError>> {
        Box::pin(PgStore::cancel(self, alert_id, reason, principal, now_ms))
    }

    fn claim(&self, channel: &'static str, now_ms: i64, limit: usize) -> BoxFuture<'_, Result<Claim, StoreError>> {
        Box::pin(PgStore::claim(self, channel, now_ms, limit))
    }

    fn finish(
        &self,
        lease: Lease,
        outcomes: Vec<(i64, JobOutcome)>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<i64>, StoreError>> {
        Box::pin(PgStore::finish(self, lease, outcomes, now_ms))
    }

    fn next_due(&self, channel: &'static str) -> BoxFuture<'_, Result<Option<i64>, StoreError>> {
        Box::pin(PgStore::next_due(self, channel))
    }

    fn recent_alerts(&self, limit: usize) -> BoxFuture<'_, Result<RecentAlerts, StoreError>> {
        Box::pin(PgStore::recent_alerts(self, limit))
    }

    fn is_failing(&self) -> bool {
        PgStore::is_failing(self)
    }

    fn changes(&self) -> Arc<Notify> {
        PgStore::changes(self)
    }

    fn waker(&self, channel: &str) -> Option<Arc<Notify>> {
        self.inner.wakers.iter().find(|(c, _)| *c == channel).map(|(_, n)| n.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::cluster::Cluster;
    use crate::store::tests::alert;

    /// The aggregate `next_due` was before [`next_due_sql`]: every pending job of the channel,
    /// each dated by [`DUE_AT`]. What the index reads must agree with.
    fn next_due_by_scan() -> String {
        format!("SELECT MIN({DUE_AT})::bigint FROM outbox o WHERE o.channel = $1 AND o.state = 'pending' AND {NOT_HELD_BY_PENDING}")
    }

    async fn due(store: &PgStore, sql: String, now: i64) -> Option<i64> {
        store
            .run(move |c| {
                Box::pin(async move {
                    let row = if sql.contains("$3") {
                        c.query_one(&sql, &[&"slack", &now, &false, &true]).await
                    } else {
                        c.query_one(&sql, &[&"slack", &now]).await
                    };
                    let row = row.map_err(pg_error)?;
                    Ok(row.get::<_, Option<i64>>(0))
                })
            })
            .await
            .unwrap()
    }

    /// `next_due` runs on the connection every SOS needs, each time a claim comes back empty:
    /// it must read the indexes, never every pending job of the channel.
    #[tokio::test]
    async fn next_due_reads_indexes_and_never_scans_or_sorts_the_outbox() {
        let Some(cluster) = Cluster::start() else { return };
        let store = PgStore::open(&cluster.url(), &["slack"]).await.unwrap();
        let plan: Vec<String> = store
            .run(|c| {
                Box::pin(async move {
                    c.batch_execute("SET enable_seqscan = off; SET enable_sort = off").await.map_err(pg_error)?;
                    let sql = format!("EXPLAIN {}", next_due_sql());
                    let rows = c.query(&sql, &[&"slack", &0i64, &false, &true]).await.map_err(pg_error)?;
                    c.batch_execute("RESET enable_seqscan; RESET enable_sort").await.map_err(pg_error)?;
                    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
                })
            })
            .await
            .unwrap();
        let text = plan.join("\n");
        let settings: (String, String) = store
            .run(|c| {
                Box::pin(async move {
                    let jit = c.query_one("SHOW jit", &[]).await.unwrap().get(0);
                    let plans = c.query_one("SHOW plan_cache_mode", &[]).await.unwrap().get(0);
                    Ok((jit, plans))
                })
            })
            .await
            .unwrap();
        assert_eq!(settings, ("off".into(), "force_custom_plan".into()), "no query compiled; every run planned");
        assert!(text.matches("using outbox_leased").count() >= 2, "both leased sets by the index: {text}");
        assert!(text.matches("using outbox_due").count() >= 2, "both first-free reads by the index: {text}");
        assert!(!text.contains("Seq Scan") && !text.contains("Sort"), "{text}");
    }

    /// The index reads give what the scan of every job gives, over random outboxes: jobs of
    /// every kind and state, due before and after now, leased or not, their lease live or over,
    /// held back behind a pending notification or one in flight.
    #[tokio::test]
    async fn next_due_agrees_with_a_scan_of_every_pending_job() {
        let Some(cluster) = Cluster::start() else { return };
        let store = PgStore::open(&cluster.url(), &["slack", "email"]).await.unwrap();
        for id in 1..=4 {
            store.insert(alert(id)).await.unwrap();
        }
        let mut rng = fastrand::Rng::with_seed(18);
        let (mut compared, mut some) = (0, 0);
        for round in 0..300 {
            // Sparse outboxes too: a job due now would hide every other.
            let keep = rng.u8(1..=4);
            let mut sql = String::from("DELETE FROM outbox;");
            for id in 1..=4u128 {
                let alert_id = AlertId::from_u128(id).to_string();
                for channel in ["slack", "email"] {
                    for (kind, tier) in [
                        ("alert", 1),
                        ("alert", 2),
                        ("cancel", 1),
                        ("acknowledged", 1),
                        ("reminder", 2),
                        ("reminder", 3),
                    ] {
                        if rng.u8(..8) >= keep {
                            continue;
                        }
                        let state = ["pending", "pending", "pending", "stopped", "delivered", "failed"][rng.usize(..6)];
                        // Seconds apart, so that the two queries' clocks (milliseconds apart)
                        // cannot be told from a wrong choice.
                        let next = format!("{} + {}", "$NOW", rng.i64(-1..=4) * 2000);
                        let lease = match rng.u8(..3) {
                            0 => "NULL".to_owned(),
                            _ => format!("clock_timestamp() + interval '{} seconds'", rng.i64(-3..=3) * 2 + 1),
                        };
                        sql.push_str(&format!(
                            "INSERT INTO outbox (alert_id, channel, kind, tier, state, created_at_ms, next_attempt_at_ms,
                                                 lease_id, lease_until)
                             VALUES ('{alert_id}', '{channel}', '{kind}', {tier}, '{state}', 0, {next}, 1, {lease});"
                        ));
                    }
                }
            }
            let now = outbox_clock_ms();
            let sql = sql.replace("$NOW", &now.to_string());
            store.run(move |c| Box::pin(async move { c.batch_execute(&sql).await.map_err(pg_error) })).await.unwrap();
            let by_index = due(&store, next_due_sql().to_owned(), now).await;
            let by_scan = due(&store, next_due_by_scan(), now).await;
            // Due now is due now, however far in the past.
            let clamp = |t: Option<i64>| t.map(|t| t.max(now));
            match (clamp(by_index), clamp(by_scan)) {
                (None, None) => {}
                (Some(a), Some(b)) => {
                    assert!((a - b).abs() < 500, "round {round}: {a} by the indexes, {b} by the scan");
                    some += 1;
                }
                (a, b) => panic!("round {round}: {a:?} by the indexes, {b:?} by the scan"),
            }
            compared += 1;
        }
        assert!(some > 150, "{some} of {compared} rounds had a job due");
    }

    /// A job whose lease (or whose page's lease) ends while `next_due` runs is counted: the
    /// first part's walk past 100,000 held-back reminders takes long enough for a 60 ms lease
    /// to end meanwhile. Reading only the live leases, the job was in no set (the walk saw its
    /// lease live, the leased reads saw it over) and `next_due` said ten minutes (found by
    /// review, helper-40).
    #[tokio::test]
    async fn a_lease_that_ends_while_next_due_reads_is_counted() {
        let Some(cluster) = Cluster::start() else { return };
        let store = PgStore::open(&cluster.url(), &["slack"]).await.unwrap();
        // The outbox is filled on a connection of its own: 200,000 rows take longer than the
        // store's answer budget on a loaded machine.
        let (setup, connection) = tokio_postgres::connect(&cluster.url(), NoTls).await.unwrap();
        tokio::spawn(connection);
        let exec = |sql: String| {
            let setup = &setup;
            async move { setup.batch_execute(&sql).await }
        };
        exec(
            "INSERT INTO alerts (alert_id, received_at_ms, triggered_at, test, \"user\", host, ip, location, message,
                                  agent, source, key_id)
              SELECT 'a' || g, 0, 0, false, '', '', '', '', '', '', '', '' FROM generate_series(0, 100000) g"
                .into(),
        )
        .await
        .unwrap();
        for (case, leased) in [
            (
                "a reminder claimed by a collector that died",
                "('a0', 'slack', 'alert', 1, 'delivered', 0, 0, NULL, NULL),
                 ('a0', 'slack', 'reminder', 2, 'pending', 0, 0, 7, clock_timestamp() + interval '60 ms')",
            ),
            (
                "news behind its page in flight",
                "('a0', 'slack', 'alert', 1, 'stopped', 0, 0, 7, clock_timestamp() + interval '60 ms'),
                 ('a0', 'slack', 'acknowledged', 1, 'pending', 0, 0, NULL, NULL)",
            ),
        ] {
            let now = outbox_clock_ms();
            // 100,000 pages waiting for a retry in 10 minutes, each with a reminder held behind it.
            exec(format!(
                "DELETE FROM outbox;
                 INSERT INTO outbox (alert_id, channel, kind, tier, state, created_at_ms, next_attempt_at_ms)
                 SELECT 'a' || g, 'slack', 'alert', 1, 'pending', 0, {now} + 600000 FROM generate_series(1, 100000) g;
                 INSERT INTO outbox (alert_id, channel, kind, tier, state, created_at_ms, next_attempt_at_ms)
                 SELECT 'a' || g, 'slack', 'reminder', 2, 'pending', 0, 1000 + g FROM generate_series(1, 100000) g;
                 ANALYZE outbox;"
            ))
            .await
            .unwrap();
            let now = outbox_clock_ms();
            exec(format!(
                "INSERT INTO outbox (alert_id, channel, kind, tier, state, created_at_ms, next_attempt_at_ms,
                                     lease_id, lease_until) VALUES {leased}"
            ))
            .await
            .unwrap();
            let due = store.next_due("slack").await.unwrap().expect("a job is pending");
            assert!(due - now < 10_000, "{case}: due in {} ms, at its lease's end (60 ms) at the latest", due - now);
        }
    }

    /// A statement is prepared once per connection and run from then on in one round trip. One
    /// that fails because its table changed under it (as another collector's migration could)
    /// makes every kept statement be prepared again: the next ones do not fail in turn.
    #[tokio::test]
    async fn statements_are_prepared_once_and_all_again_after_a_schema_change() {
        let Some(cluster) = Cluster::start() else { return };
        let store = PgStore::open(&cluster.url(), &["slack"]).await.unwrap();
        let (prepared, failed, other, again) = store
            .run(|c| {
                Box::pin(async move {
                    c.batch_execute("CREATE TABLE t (x INT); INSERT INTO t VALUES (1)").await.map_err(pg_error)?;
                    for _ in 0..3 {
                        assert_eq!(c.query("SELECT * FROM t", &[]).await.map_err(pg_error)?.len(), 1);
                        assert_eq!(c.query("SELECT x FROM t", &[]).await.map_err(pg_error)?.len(), 1);
                    }
                    let prepared: i64 = c
                        .query_one("SELECT COUNT(*) FROM pg_prepared_statements WHERE statement LIKE '%FROM t'", &[])
                        .await
                        .map_err(pg_error)?
                        .get(0);
                    c.batch_execute("ALTER TABLE t ALTER COLUMN x TYPE BIGINT").await.map_err(pg_error)?;
                    let failed = c.query("SELECT * FROM t", &[]).await.err().and_then(|e| e.code().cloned());
                    let other: i64 = c.query_one("SELECT x FROM t", &[]).await.map_err(pg_error)?.get(0);
                    let again: i64 = c.query_one("SELECT * FROM t", &[]).await.map_err(pg_error)?.get(0);
                    Ok((prepared, failed, other, again))
                })
            })
            .await
            .unwrap();
        assert_eq!(prepared, 2, "six runs, two statements prepared");
        assert_eq!(failed.map(|c| c.code().to_owned()).as_deref(), Some("0A000"), "the kept statement no longer fits");
        assert_eq!((other, again), (1, 1), "every statement prepared again: none fails in turn");
    }

    /// Retransmissions of an alert being stored wait for its commit and are its duplicates, no
    /// transaction of their own; when that store fails, they are not acknowledged by it.
    #[tokio::test]
    async fn retransmissions_of_an_alert_being_stored_are_answered_by_its_commit() {
        let Some(cluster) = Cluster::start() else { return };
        let store = PgStore::open(&cluster.url(), &["slack"]).await.unwrap();
        // Polled in order: the first registers its store before it waits for the connection.
        let got = futures_util::future::join_all((0..21).map(|_| store.insert(alert(1)))).await;
        let got: Vec<Stored> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(got[0], Stored::New);
        assert!(got[1..].iter().all(|s| *s == Stored::Duplicate), "{got:?}");
        assert_eq!(store.merged_retransmissions(), 20, "none queued a transaction of its own");
        let jobs = store.claim("slack", outbox_clock_ms(), 10).await.unwrap().jobs;
        assert_eq!(jobs.len(), 1, "stored once");
        // Later retransmissions store on their own, as duplicates.
        assert_eq!(store.insert(alert(1)).await.unwrap(), Stored::Duplicate);
        assert_eq!(store.merged_retransmissions(), 20);

        cluster.stop();
        let got = futures_util::future::join_all((0..6).map(|_| store.insert(alert(2)))).await;
        assert!(got.iter().all(|r| matches!(r, Err(StoreError::Unavailable(_)))), "nothing acknowledged: {got:?}");
        assert_eq!(store.merged_retransmissions(), 20, "a failed store answers no retransmission");
    }

    /// An operation that waited for the connection behind one that got no answer fails at once
    /// instead of waiting its own 5 s on that connection (each waiting SOS did, and the
    /// supervisor, queued behind them all, made the connection again only after), and the store
    /// resumes on a new connection.
    #[tokio::test]
    async fn operations_behind_one_that_got_no_answer_fail_at_once_and_the_store_resumes() {
        let Some(cluster) = Cluster::start() else { return };
        let store = PgStore::open(&cluster.url(), &["slack"]).await.unwrap();
        store.insert(alert(1)).await.unwrap();
        // The server keeps the first busy past the answer budget; the SOS waits behind it.
        let busy =
            store.run(|c| Box::pin(async move { c.batch_execute("SELECT pg_sleep(8)").await.map_err(pg_error) }));
        let (busy, behind) = tokio::join!(busy, store.insert(alert(2)));
        assert!(matches!(busy, Err(StoreError::Unavailable(_))), "{busy:?}");
        assert!(
            matches!(&behind, Err(StoreError::Unavailable(why)) if why.contains("stopped answering")),
            "not run on the connection being replaced: {behind:?}"
        );
        let stored = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match store.insert(alert(2)).await {
                    Ok(s) => return s,
                    Err(StoreError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .await
        .expect("the store resumes on a new connection");
        assert_eq!(stored, Stored::New);
    }
}
