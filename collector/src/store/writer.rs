//! The writer thread and the service's handle to it ([`SqliteStore`]): group commit, presence
//! flushes, the WAL checkpointer, and how the thread's end is reported.

use std::sync::Arc;

use rusqlite::Connection;
use sos_shared::AlertId;
use tokio::sync::{mpsc, oneshot, Notify};

use super::health::{busy_clock_ms, Health, STALL_WARNING};
use super::outbox_clock_ms;
use super::{AgentSeen, Cancelled, Db, Job, JobOutcome, NewAlert, ResponsePlan, StoreError, Stored, MAX_GROUP};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Command {
    /// An alert, with the outbox clock of the caller (jobs and deadlines are dated on it).
    Insert(Box<NewAlert>, i64, Reply<Stored>),
    DueJobs(&'static str, i64, usize, Reply<Vec<Job>>),
    NextDue(&'static str, Reply<Option<i64>>),
    Finish(Vec<(i64, JobOutcome)>, i64, Reply<()>),
    /// A cancellation: alert, reason, principal, wall clock, the caller's outbox clock.
    Cancel(AlertId, String, String, i64, i64, Reply<Cancelled>),
    /// Anything else the writer should do (the agent registry, say).
    Exec(Box<dyn FnOnce(&mut Db) + Send>),
    /// Heartbeats gathered since the last flush: one transaction.
    Seen(Vec<AgentSeen>),
}

/// The service's handle to the store's writer thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    tx: mpsc::UnboundedSender<Command>,
    /// Heartbeats since the last [`SqliteStore::flush_presence`], the latest per (host, user): memory
    /// proportional to the agents, and one transaction per flush instead of one per heartbeat.
    pub(super) presence: Arc<std::sync::Mutex<std::collections::HashMap<(String, String), AgentSeen>>>,
    /// Whether a request has been waiting longer than [`STALL_WARNING`] (announced once).
    stalled: Arc<std::sync::atomic::AtomicBool>,
    /// Wakes each channel's outbox worker when new jobs are committed, in `channels` order.
    wakers: Arc<Vec<(&'static str, Arc<Notify>)>>,
    /// Whether the store's last write failed (or a read failed since): the service then stops
    /// answering heartbeats, so that no agent shows "ready" while no SOS can be stored.
    failing: Arc<std::sync::atomic::AtomicBool>,
    /// Set once if the writer thread ends abnormally (a panic, a damaged file): why.
    ended: tokio::sync::watch::Receiver<Option<String>>,
    /// See [`Health::busy_since_ms`].
    busy_since_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Notified after every commit that changes an alert's response state ([`SqliteStore::changes`]).
    changes: Arc<Notify>,
    /// The escalation policy every new alert starts with, and that the escalation engine fires.
    plan: Arc<ResponsePlan>,
    /// How many [`CatchUpHold`]s are alive (see [`SqliteStore::hold_wal_catch_up`]).
    catch_up_holds: Arc<std::sync::atomic::AtomicUsize>,
    /// What SQLite said, if the writer stopped because it found the file damaged (set before
    /// [`SqliteStore::ended`] completes).
    damaged: Arc<std::sync::OnceLock<String>>,
}

/// While alive, the writer does not wait for the WAL to be emptied into the database (see
/// [`SqliteStore::hold_wal_catch_up`]).
#[derive(Debug)]
pub struct CatchUpHold(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for CatchUpHold {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Wake every listener of [`SqliteStore::changes`] waiting now, and leave one permit for a listener
/// between two waits.
fn announce(changes: &Notify) {
    changes.notify_waiters();
    changes.notify_one();
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

/// Checkpoints the WAL from a thread and connection of its own, every [`CHECKPOINT_EVERY`], so
/// that the writer never stops to copy pages into the database while alerts wait for their
/// commit (SQLite's automatic checkpoint runs inside the commit that crosses 1000 pages, and
/// was the tail of the ACK latency: docs/PERFORMANCE.md). A passive checkpoint never blocks
/// the writer.
///
/// Under sustained load a passive checkpoint never catches up: the writer appends while it
/// copies, so the WAL is never wholly in the database, and SQLite starts a WAL over from its
/// beginning only then. The WAL grew without bound (to gigabytes), and a restart after a
/// crash reads all of it. So when a commit leaves more than [`WAL_CATCH_UP_BYTES`] in the WAL,
/// the writer waits for one checkpoint to finish ([`Checkpointer::catch_up`]; it has little
/// left to copy), and its next commit starts the WAL over; `journal_size_limit` then cuts the
/// file back. A reader that holds an old snapshot of the store (a long query by the console or
/// the CLI) keeps the frames it reads in the WAL until it ends: the WAL then grows past the
/// bound for as long, and the writer does not wait for it again until the WAL has grown by
/// another [`WAL_CATCH_UP_BYTES`].
///
/// Dropping this ends the thread after one last checkpoint, which also empties the WAL file.
struct Checkpointer {
    asks: Option<std::sync::mpsc::SyncSender<Ask>>,
    /// The WAL's frames (pages) after which the writer next asks for a catch-up.
    next_catch_up: i64,
    /// [`WAL_CATCH_UP_BYTES`] in pages of this store.
    catch_up_pages: i64,
    /// The longest the writer waits for a catch-up ([`CATCH_UP_WAIT`]; longer in tests, whose
    /// outcome must not depend on how fast the disk is that day).
    catch_up_wait: std::time::Duration,
    /// How long a catch-up waits for the reads that keep it from completing
    /// ([`CATCH_UP_READ_WAIT`]; set in tests).
    read_wait: std::time::Duration,
    /// Whether a catch-up since the WAL last started over was allowed to wait for reads: one
    /// is. Later ones try once, as before reads were waited for: a read that began while the
    /// first one waited keeps the next commit from starting the WAL over, and overlapping reads
    /// (several consoles refetching at once) would otherwise stall the writer on every commit.
    waited_for_reads: bool,
    /// While non-zero, a long read is known to hold an old snapshot (the integrity check at
    /// start): no catch-up is waited for, since none can complete.
    holds: Arc<std::sync::atomic::AtomicUsize>,
}

/// How often the WAL is checkpointed.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How much the WAL may hold before the writer waits for a checkpoint to catch up, bytes.
const WAL_CATCH_UP_BYTES: i64 = 32 << 20;

/// What a WAL file is cut back to when it starts over (`PRAGMA journal_size_limit`), bytes.
pub(super) const WAL_SIZE_LIMIT: i64 = 32 << 20;

/// The longest the writer waits for a catch-up (the checkpoint goes on after it).
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What the writer asks of the checkpointer.
enum Ask {
    /// A checkpoint now rather than at the next tick: the WAL is filling.
    Soon,
    /// A checkpoint now, tried again until it copies the whole WAL, for at most the time given
    /// after the first try and never past the instant the writer stops waiting; whether it did.
    CatchUp(std::sync::mpsc::SyncSender<bool>, std::time::Duration, std::time::Instant),
}

/// How long the checkpointer pauses before it tries a catch-up again that a reader's snapshot
/// kept from copying the whole WAL (the push's reads last a few milliseconds).
const CATCH_UP_RETRY: std::time::Duration = std::time::Duration::from_millis(2);

/// How long a catch-up waits for the reads that keep it from completing, after its first
/// checkpoint: a short read (the push's, a console page) ends within it; a long one (an
/// export, the CLI) is not waited for, and the WAL grows until it ends, as before. The writer,
/// and every SOS behind it, waits this long at most once each time the WAL starts over (see
/// `Checkpointer::waited_for_reads`), so at most once per [`WAL_CATCH_UP_BYTES`] written.
const CATCH_UP_READ_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

thread_local! {
    /// The pages in the WAL after the last commit on this thread (SQLite's WAL hook says it).
    static WAL_PAGES: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

/// SQLite's WAL hook: called after each commit with the number of pages in the WAL.
fn note_wal_pages(_: &rusqlite::hooks::Wal, pages: std::os::raw::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(i64::from(pages)));
    Ok(())
}

/// One passive checkpoint: whether the whole WAL is now in the database.
fn checkpoint(conn: &Connection) -> bool {
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))) {
        Ok((log, done)) => log == done,
        Err(e) => {
            tracing::debug!(error = %e, "WAL checkpoint");
            false
        }
    }
}

impl Checkpointer {
    /// No checkpointer: SQLite's automatic checkpoints ([`SqliteStore::start_beside`]).
    fn none() -> Checkpointer {
        Checkpointer {
            asks: None,
            next_catch_up: i64::MAX,
            catch_up_pages: i64::MAX,
            catch_up_wait: CATCH_UP_WAIT,
            read_wait: CATCH_UP_READ_WAIT,
            waited_for_reads: false,
            holds: Arc::default(),
        }
    }

    fn start(db: &Db) -> std::io::Result<Checkpointer> {
        let path = db.conn.path().map(std::path::PathBuf::from).filter(|p| !p.as_os_str().is_empty());
        let (asks, asked) = std::sync::mpsc::sync_channel::<Ask>(1);
        // In memory (tests) or unopenable: keep SQLite's automatic checkpoints.
        let Some(conn) = path.and_then(|p| Connection::open(p).ok()) else {
            return Ok(Checkpointer::none());
        };
        let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
        let _ = db.conn.pragma_update(None, "wal_autocheckpoint", 0);
        // After the pragma above, which removes any WAL hook.
        db.conn.wal_hook(Some(note_wal_pages));
        std::thread::Builder::new().name("sos-checkpoint".into()).spawn(move || loop {
            match asked.recv_timeout(CHECKPOINT_EVERY) {
                Ok(Ask::CatchUp(reply, read_wait, until)) => {
                    // A read that began before the writer's last commits holds frames no
                    // checkpoint can copy until it ends; the writer is waiting, so no frame is
                    // added meanwhile, and a read that begins now sees the whole WAL (it does
                    // not hold the copy back): once the reads of the moment end, the copy
                    // completes. (Such a read does keep the next commit from starting the WAL
                    // over: hence one catch-up per cycle waits, `waited_for_reads`.)
                    let complete = checkpoint(&conn) || {
                        let give_up = (std::time::Instant::now() + read_wait).min(until);
                        loop {
                            if std::time::Instant::now() + CATCH_UP_RETRY >= give_up {
                                break false;
                            }
                            std::thread::sleep(CATCH_UP_RETRY);
                            if checkpoint(&conn) {
                                break true;
                            }
                        }
                    };
                    let _ = reply.try_send(complete);
                }
                Ok(Ask::Soon) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    checkpoint(&conn);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    // The writer has ended: leave an empty WAL (a quick start next time).
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
                        tracing::debug!(error = %e, "last WAL checkpoint");
                    }
                    return;
                }
            }
        })?;
        let page_size: i64 = db.conn.pragma_query_value(None, "page_size", |r| r.get(0)).unwrap_or(4096);
        let catch_up_pages = WAL_CATCH_UP_BYTES / page_size.max(512);
        Ok(Checkpointer {
            asks: Some(asks),
            next_catch_up: catch_up_pages,
            catch_up_pages,
            catch_up_wait: CATCH_UP_WAIT,
            read_wait: CATCH_UP_READ_WAIT,
            waited_for_reads: false,
            holds: Arc::default(),
        })
    }

    /// After a commit on the writer's thread: if the WAL holds too many pages, wait (at most
    /// [`CATCH_UP_WAIT`]) for a checkpoint to copy it all into the database, so that the next
    /// commit starts it over.
    fn catch_up(&mut self) {
        let Some(asks) = &self.asks else { return };
        let pages = WAL_PAGES.with(std::cell::Cell::get);
        if pages < self.catch_up_pages {
            // Started over since the last catch-up (or never grew).
            self.next_catch_up = self.catch_up_pages;
            self.waited_for_reads = false;
            if pages >= self.catch_up_pages / 8 {
                // Keep the checkpoint close behind, so that a catch-up has little left to copy
                // (at most one checkpoint is asked for at a time).
                let _ = asks.try_send(Ask::Soon);
            }
            return;
        }
        if pages < self.next_catch_up {
            return;
        }
        if self.holds.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            // The reader that keeps the WAL from starting over is known and ends within its
            // budget: keep checkpointing behind the writer, without waiting.
            let _ = asks.try_send(Ask::Soon);
            return;
        }
        let (reply, replied) = std::sync::mpsc::sync_channel(1);
        // Never blocks on the request itself: while a checkpoint runs with another asked behind
        // it, the one slot is taken, and the writer must not wait for them beyond CATCH_UP_WAIT:
        // skipped now, asked again after the next commit (not a WAL's growth later, which let
        // it reach twice its bound whenever the request met a busy checkpointer).
        let until = std::time::Instant::now() + self.catch_up_wait;
        let read_wait = if self.waited_for_reads { std::time::Duration::ZERO } else { self.read_wait };
        if asks.try_send(Ask::CatchUp(reply, read_wait, until)).is_err() {
            return;
        }
        self.waited_for_reads = true;
        let complete = replied.recv_timeout(self.catch_up_wait).unwrap_or(false);
        if complete {
            self.next_catch_up = self.catch_up_pages;
        } else {
            // A reader holds old frames (or the disk is slow): do not wait for it on every
            // commit; try again when the WAL has grown by as much again.
            tracing::warn!(
                wal_pages = pages,
                "the WAL could not be emptied into the store (a long read of the store, by the console or the CLI?); \
                 it grows until that read ends"
            );
            self.next_catch_up = pages + self.catch_up_pages;
        }
    }
}

impl SqliteStore {
    /// Start the writer thread on `db`. Every new alert gets one job per channel in `channels`.
    /// The thread ends when the last handle is dropped; `join` it with the returned handle.
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn start(db: Db, channels: &[&'static str]) -> std::io::Result<(SqliteStore, std::thread::JoinHandle<()>)> {
        Self::start_planned(db, channels, ResponsePlan::channels_only(channels))
    }

    /// [`SqliteStore::start`] with an escalation policy: every new alert fires the first tier of
    /// `plan` (whose channels must be among `channels`, the ones with an outbox worker).
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn start_planned(
        db: Db,
        channels: &[&'static str],
        plan: ResponsePlan,
    ) -> std::io::Result<(SqliteStore, std::thread::JoinHandle<()>)> {
        let checkpointer = Checkpointer::start(&db)?;
        Self::spawn(db, channels, plan, checkpointer)
    }

    /// A writer for a process that works on the file beside the running service (the command
    /// line): no channels, no escalation policy, and no checkpointer of its own. The service's
    /// checkpointer keeps the WAL in check; this one's last checkpoint (a `TRUNCATE`, which
    /// holds the write lock until every reader has moved on) would stall the service's commits
    /// behind the console's reads. SQLite's automatic passive checkpoint stays on, as for any
    /// connection. `db` may be read-only (a command that only reads).
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn start_beside(db: Db) -> std::io::Result<(SqliteStore, std::thread::JoinHandle<()>)> {
        Self::spawn(db, &[], ResponsePlan::channels_only(&[]), Checkpointer::none())
    }

    fn spawn(
        mut db: Db,
        channels: &[&'static str],
        plan: ResponsePlan,
        checkpointer: Checkpointer,
    ) -> std::io::Result<(SqliteStore, std::thread::JoinHandle<()>)> {
        let plan = Arc::new(plan);
        let thread_plan = plan.clone();
        let changes = Arc::new(Notify::new());
        let thread_changes = changes.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
        let wakers: Arc<Vec<_>> = Arc::new(channels.iter().map(|c| (*c, Arc::new(Notify::new()))).collect());
        let thread_wakers = wakers.clone();
        let names: Vec<&'static str> = channels.to_vec();
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ended_tx, ended) = tokio::sync::watch::channel(None);
        let busy_since_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let catch_up_holds = checkpointer.holds.clone();
        let damaged = Arc::new(std::sync::OnceLock::new());
        let thread_damaged = damaged.clone();
        let mut health = Health { failing: failing.clone(), busy_since_ms: busy_since_ms.clone(), ..Health::default() };
        let handle = std::thread::Builder::new().name("sos-store".into()).spawn(move || {
            // Ends the checkpointer (after a last checkpoint) when the writer ends.
            let mut checkpointer = checkpointer;
            // A panic here must not leave a process that refuses every SOS forever: it is
            // caught, and the service ends with the reason (see `SqliteStore::ended`).
            let run = std::panic::AssertUnwindSafe(|| {
                Self::write(
                    &mut db,
                    &mut rx,
                    &names,
                    &thread_plan,
                    &thread_wakers,
                    &thread_changes,
                    &mut health,
                    &mut checkpointer,
                )
            });
            let why = match std::panic::catch_unwind(run) {
                Ok(None) => return,
                Ok(Some(damage)) => {
                    let _ = thread_damaged.set(damage.clone());
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
        Ok((
            SqliteStore {
                tx,
                wakers,
                stalled: Arc::default(),
                presence: Arc::default(),
                failing,
                ended,
                busy_since_ms,
                changes,
                plan,
                catch_up_holds,
                damaged,
            },
            handle,
        ))
    }

    /// The writer's loop: until every handle is gone (`None`) or the file is found damaged
    /// (`Some(what SQLite said)`).
    #[allow(clippy::too_many_arguments)]
    fn write(
        db: &mut Db,
        rx: &mut mpsc::UnboundedReceiver<Command>,
        names: &[&'static str],
        plan: &ResponsePlan,
        thread_wakers: &[(&'static str, Arc<Notify>)],
        changes: &Notify,
        health: &mut Health,
        checkpointer: &mut Checkpointer,
    ) -> Option<String> {
        {
            while let Some(first) = {
                health.busy_since_ms.store(0, std::sync::atomic::Ordering::SeqCst);
                rx.blocking_recv()
            } {
                health.busy_since_ms.store(busy_clock_ms(), std::sync::atomic::Ordering::SeqCst);
                let mut inserts = Vec::new();
                let mut finishes = Vec::new();
                let mut seen = Vec::new();
                let mut others = Vec::new();
                let mut next = Some(first);
                while let Some(cmd) = next.take() {
                    match cmd {
                        Command::Insert(a, clock, r) => inserts.push((a, clock, r)),
                        Command::Finish(outcomes, now, r) => finishes.push((outcomes, now, r)),
                        Command::Seen(a) => seen.extend(a),
                        other => others.push(other),
                    }
                    if inserts.len() < MAX_GROUP {
                        next = rx.try_recv().ok();
                    }
                }
                // New alerts and delivery outcomes in one transaction: one sync of the WAL.
                if !inserts.is_empty() || !finishes.is_empty() {
                    let batch: Vec<NewAlert> = inserts.iter().map(|(a, _, _)| (**a).clone()).collect();
                    // The earliest clock of the batch: nothing is dated later than its caller's now.
                    let clock = inserts.iter().map(|(_, c, _)| *c).min().unwrap_or_else(outbox_clock_ms);
                    let sets: Vec<(&[(i64, JobOutcome)], i64)> =
                        finishes.iter().map(|(o, now, _)| (o.as_slice(), *now)).collect();
                    let res = db.commit_group(&batch, plan, clock, &sets);
                    health.observe(res.as_ref().err());
                    match res {
                        Ok((results, finished)) => {
                            if results.contains(&Stored::New) {
                                for (_, n) in thread_wakers.iter() {
                                    n.notify_one();
                                }
                                announce(changes);
                            }
                            for ((_, _, reply), res) in inserts.into_iter().zip(results) {
                                let _ = reply.send(Ok(res));
                            }
                            for ((_, _, reply), res) in finishes.into_iter().zip(finished) {
                                health.observe(res.as_ref().err());
                                let _ = reply.send(res);
                            }
                        }
                        Err(e) => {
                            for (_, _, reply) in inserts {
                                let _ = reply.send(Err(e.clone()));
                            }
                            for (_, _, reply) in finishes {
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
                        Command::Cancel(id, reason, key_id, now, clock, r) => {
                            let res = db.cancel(id, &reason, &key_id, names, now, clock);
                            health.observe(res.as_ref().err());
                            if matches!(res, Ok(Cancelled::New)) {
                                for (_, n) in thread_wakers.iter() {
                                    n.notify_one();
                                }
                                announce(changes);
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
                        Command::Insert(..) | Command::Finish(..) => unreachable!("committed as a group above"),
                    }
                }
                if let Some(damage) = health.fatal.take() {
                    return Some(damage);
                }
                // The batch's callers have their answers: a wait here delays only what queued.
                checkpointer.catch_up();
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
        let clock = outbox_clock_ms();
        self.call(|r| Command::Insert(Box::new(alert), clock, r)).await
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
        let clock = outbox_clock_ms();
        self.call(|r| Command::Cancel(alert_id, reason, key_id, now_ms, clock, r)).await
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

    /// Note a heartbeat; it reaches the store with the next [`SqliteStore::flush_presence`] (the
    /// service flushes every [`PRESENCE_FLUSH`](super::PRESENCE_FLUSH) and when it stops).
    pub fn seen(&self, agent: AgentSeen) {
        let key = (agent.host.clone(), agent.user.clone());
        let mut presence = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        // A responder desktop's SOS (which carries no flag) does not hide its heartbeat's flag.
        let responder = agent.responder || presence.get(&key).is_some_and(|a| a.responder);
        presence.insert(key, AgentSeen { responder, ..agent });
    }

    /// Write the heartbeats noted since the last flush, in one transaction (not waited for).
    pub fn flush_presence(&self) {
        let batch: Vec<AgentSeen> =
            self.presence.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, a)| a).collect();
        if !batch.is_empty() {
            let _ = self.tx.send(Command::Seen(batch));
        }
    }

    /// If the writer stopped because SQLite found the file damaged: what it said.
    pub fn damaged(&self) -> Option<String> {
        self.damaged.get().cloned()
    }

    /// Until the returned hold is dropped, the writer does not wait for the WAL to be emptied
    /// into the database when it passes its bound (a long read known to hold an old snapshot,
    /// which no checkpoint can get past, runs meanwhile: the integrity check at start). The WAL
    /// then grows past its bound for that long.
    pub fn hold_wal_catch_up(&self) -> CatchUpHold {
        self.catch_up_holds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        CatchUpHold(self.catch_up_holds.clone())
    }

    /// Whether the store is failing now (its last write failed, or a read failed since, or the
    /// writer has been stuck on one batch for longer than [`STALL_WARNING`]: a frozen or hung
    /// disk): the service then gives agents no healthy answer.
    pub fn is_failing(&self) -> bool {
        let busy = self.busy_since_ms.load(std::sync::atomic::Ordering::SeqCst);
        self.failing.load(std::sync::atomic::Ordering::SeqCst)
            || (busy != 0 && busy_clock_ms().saturating_sub(busy) > STALL_WARNING.as_millis() as u64)
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

    /// Notified after every commit that changes an alert's response state: a new alert, a tier
    /// fired, an acknowledgement, a resolve, a cancellation, a check, a notice confirmed — and
    /// when the escalation engine sees a commit by another process (`sos-collector alerts ack`).
    /// Each notification wakes every task waiting now and leaves one permit for the next.
    pub fn changes(&self) -> Arc<Notify> {
        self.changes.clone()
    }

    /// The escalation policy this store was started with.
    pub fn plan(&self) -> Arc<ResponsePlan> {
        self.plan.clone()
    }

    /// After a commit that changed an alert's response: wake [`SqliteStore::changes`]'s listeners
    /// and, if it queued notifications (`jobs`), every outbox worker.
    pub fn changed(&self, jobs: bool) {
        if jobs {
            self.wake_channels();
        }
        announce(&self.changes);
    }

    /// Wake every outbox worker (jobs were committed, here or by another process).
    pub fn wake_channels(&self) {
        for (_, n) in self.wakers.iter() {
            n.notify_one();
        }
    }

    /// The notifier that wakes `channel`'s worker when new jobs are committed; `None` if the
    /// store was not started with that channel (no jobs are made for it, none would wake it).
    pub fn waker(&self, channel: &str) -> Option<Arc<Notify>> {
        self.wakers.iter().find(|(c, _)| *c == channel).map(|(_, n)| n.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in `dir` with a `filler` table, its checkpointer (a catch-up waited for up to
    /// 60 s), the WAL's path and the bound the WAL must keep under.
    fn filler_store(dir: &std::path::Path) -> (std::path::PathBuf, Db, Checkpointer, std::path::PathBuf, u64) {
        let path = dir.join("sos.db");
        let db = Db::open(&path).unwrap();
        let mut checkpointer = Checkpointer::start(&db).unwrap();
        checkpointer.catch_up_wait = std::time::Duration::from_secs(60);
        db.conn.execute_batch("CREATE TABLE filler (x BLOB)").unwrap();
        let wal = path.with_extension("db-wal");
        (path, db, checkpointer, wal, (WAL_CATCH_UP_BYTES + (1 << 20)) as u64)
    }

    #[test]
    fn under_back_to_back_commits_the_wal_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (_, db, mut checkpointer, wal, bound) = filler_store(dir.path());
        let mut largest = 0;
        // 64 MiB of commits of 128 KiB each, one after another as the writer makes them under
        // load: a passive checkpoint alone never finds the WAL wholly copied between two.
        for _ in 0..512 {
            db.conn.execute("INSERT INTO filler VALUES (randomblob(131072))", []).unwrap();
            checkpointer.catch_up();
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        }
        assert!(largest <= bound, "the WAL reached {largest} bytes (bound {bound})");
        let rows: i64 = db.conn.query_row("SELECT count(*) FROM filler", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 512);
    }

    /// A read of the store at `path` that began before 33 MiB of commits on `db`, which take
    /// the WAL past its bound (the catch-up not yet asked): the read's snapshot is still open.
    fn past_the_bound_behind_a_read(path: &std::path::Path, db: &Db) -> Connection {
        db.conn.execute("INSERT INTO filler VALUES (randomblob(131072))", []).unwrap();
        let reader = Connection::open(path).unwrap();
        reader.execute_batch("BEGIN; SELECT count(*) FROM filler;").unwrap();
        for _ in 0..264 {
            db.conn.execute("INSERT INTO filler VALUES (randomblob(131072))", []).unwrap();
        }
        reader
    }

    /// A short read that began before the WAL passed its bound (the responder push, the
    /// console) keeps the frames after its snapshot from being copied until it ends: the
    /// catch-up waits for it and completes, and the WAL starts over, instead of giving up at
    /// once and letting the WAL grow by another bound's worth.
    #[test]
    fn a_catch_up_waits_out_a_short_read_and_the_wal_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let (path, db, mut checkpointer, wal, bound) = filler_store(dir.path());
        // Not bound by how soon this machine runs the reading thread again.
        checkpointer.read_wait = std::time::Duration::from_secs(60);
        let reader = past_the_bound_behind_a_read(&path, &db);
        let (read_ends, ended) = std::sync::mpsc::channel::<()>();
        let read = std::thread::spawn(move || {
            // The read goes on for a moment after the catch-up is asked, then ends.
            let _ = ended.recv_timeout(std::time::Duration::from_millis(50));
            reader.execute_batch("COMMIT").unwrap();
        });
        checkpointer.catch_up();
        drop(read_ends);
        read.join().unwrap();
        assert_eq!(
            checkpointer.next_catch_up, checkpointer.catch_up_pages,
            "the catch-up gave up on the read instead of waiting for its end"
        );
        // The next commit starts the WAL over; journal_size_limit cuts the file back.
        db.conn.execute("INSERT INTO filler VALUES (randomblob(131072))", []).unwrap();
        checkpointer.catch_up();
        let len = std::fs::metadata(&wal).unwrap().len();
        assert!(len <= bound, "the WAL is {len} bytes (bound {bound})");
        assert!(WAL_PAGES.with(std::cell::Cell::get) < 64, "the WAL did not start over");
    }

    /// A long read (an export, the CLI) is not waited for beyond the read wait: the catch-up
    /// gives up while the read goes on, and is asked again a bound's growth later.
    #[test]
    fn a_catch_up_gives_up_on_a_long_read_after_the_read_wait() {
        let dir = tempfile::tempdir().unwrap();
        let (path, db, mut checkpointer, _, _) = filler_store(dir.path());
        checkpointer.read_wait = std::time::Duration::from_millis(20);
        let reader = past_the_bound_behind_a_read(&path, &db);
        let pages = WAL_PAGES.with(std::cell::Cell::get);
        // The writer's own wait is 60 s here: returning well before it means the read wait
        // ended the catch-up.
        let asked = std::time::Instant::now();
        checkpointer.catch_up();
        assert!(asked.elapsed() < std::time::Duration::from_secs(30), "waited for the long read");
        assert_eq!(checkpointer.next_catch_up, pages + checkpointer.catch_up_pages, "gave up, asks again later");
        reader.execute_batch("COMMIT").unwrap();
    }

    /// A read that began before the WAL was copied does not stop the copy, but keeps the next
    /// commit from starting the WAL over; the catch-up asked after that commit finds frames the
    /// read holds back. It must not wait for the read again (reads that overlap would stall the
    /// writer on every commit): one catch-up per WAL cycle waits for reads.
    #[test]
    fn a_catch_up_waits_for_reads_once_until_the_wal_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let (path, db, mut checkpointer, _, _) = filler_store(dir.path());
        checkpointer.read_wait = std::time::Duration::from_secs(60);
        for _ in 0..265 {
            db.conn.execute("INSERT INTO filler VALUES (randomblob(131072))", []).unwrap();
        }
        // Begins before the copy: its snapshot is the whole WAL, which the copy may take.
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN; SELECT count(*) FROM filler;").unwrap();
        checkpointer.catch_up();
        assert_eq!(checkpointer.next_catch_up, checkpointer.catch_up_pages, "the copy completed");
        // The read keeps this commit from starting the WAL over, and holds its frames back.
        db.conn.execute("INSERT INTO filler VALUES (randomblob(131072))", []).unwrap();
        let pages = WAL_PAGES.with(std::cell::Cell::get);
        assert!(pages >= checkpointer.catch_up_pages, "the WAL started over under a read ({pages} pages)");
        let asked = std::time::Instant::now();
        checkpointer.catch_up();
        assert!(asked.elapsed() < std::time::Duration::from_secs(30), "waited for the read a second time");
        assert_eq!(checkpointer.next_catch_up, pages + checkpointer.catch_up_pages, "asked again a bound later");
        reader.execute_batch("COMMIT").unwrap();
        assert!(checkpointer.waited_for_reads);
        // Once the WAL starts over, the next cycle's catch-up may wait for reads again.
        for _ in 0..600 {
            db.conn.execute("INSERT INTO filler VALUES (randomblob(131072))", []).unwrap();
            checkpointer.catch_up();
            if WAL_PAGES.with(std::cell::Cell::get) < checkpointer.catch_up_pages {
                break;
            }
        }
        assert!(!checkpointer.waited_for_reads, "the WAL never started over");
    }

    /// While a hold is alive (the check at start reads beside the writer) the writer never asks
    /// for a catch-up, so never waits for one: the WAL grows past the bound; once the hold is
    /// dropped, the next commits bring it back under the bound.
    #[test]
    fn a_hold_lets_the_wal_grow_without_waiting_and_its_end_brings_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let (path, db, mut checkpointer, wal, bound) = filler_store(dir.path());
        let holds = checkpointer.holds.clone();
        holds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // A reader holding a snapshot, as the check does: no checkpoint can pass it.
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN; SELECT count(*) FROM filler;").unwrap();
        for _ in 0..384 {
            db.conn.execute("INSERT INTO filler VALUES (randomblob(131072))", []).unwrap();
            checkpointer.catch_up();
        }
        assert_eq!(checkpointer.next_catch_up, checkpointer.catch_up_pages, "no catch-up was asked for");
        assert!(std::fs::metadata(&wal).unwrap().len() > bound);
        reader.execute_batch("COMMIT").unwrap();
        holds.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        // A catch-up asked while a checkpoint holds the one slot is skipped and asked again
        // 32 MiB later: within 600 commits (75 MiB) the WAL is back under the bound.
        let mut last = u64::MAX;
        for _ in 0..600 {
            db.conn.execute("INSERT INTO filler VALUES (randomblob(131072))", []).unwrap();
            checkpointer.catch_up();
            last = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
            if last <= bound {
                break;
            }
        }
        assert!(last <= bound, "the WAL is {last} bytes after the hold ended (bound {bound})");
    }
}
