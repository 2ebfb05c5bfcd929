//! The service: opens the store and the registry, starts the channels' outbox workers, the
//! store writer, the periodic tasks and the receive loop ([`crate::udp`]), and supervises them:
//! a task or thread that dies ends the service with a clear message.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sos_shared::config::ExposeSecret as _;
use sos_shared::Key;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument as _};

use crate::config::Config;
use crate::outbox;
use crate::ratelimit::Limiter;
use crate::refusal::Refusals;
use crate::registry::SharedRegistry;
use crate::response::push::{self, Pushes};
use crate::stats::{Stats, StatsSnapshot};
use crate::store::{Db, PgStore, ResponsePlan, SqliteStore, Store, StoreError};

use crate::udp::{log_summary, Limits, Receiver, ENROLL_PER_CODE};

/// Why the collector could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// The configuration has no key; call [`Config::ensure_key`] first.
    #[error("no key configured")]
    NoKey,
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A channel could not be set up.
    #[error("cannot set up the {channel} channel: {message}")]
    Channel {
        /// Which channel.
        channel: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The store writer or an essential task died while serving (a panic, a damaged store):
    /// the process must end non-zero so that the service manager restarts it.
    #[error("the collector stopped: {0}")]
    Died(String),
    /// The web console could not start (its address, TLS certificate or key).
    #[error("{0}")]
    Http(String),
    /// An operating system error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A configured collector, ready to [`run`](Collector::run).
#[derive(Debug)]
pub struct Collector {
    config: Config,
    key: Key,
    stats: Arc<Stats>,
}

impl Collector {
    /// Check the configuration for what `run` needs.
    ///
    /// # Errors
    /// [`CollectorError::NoKey`] if no key is configured.
    pub fn new(config: Config) -> Result<Self, CollectorError> {
        let key = config.key.clone().ok_or(CollectorError::NoKey)?;
        Ok(Collector { config, key, stats: Arc::default() })
    }

    /// The live counters, readable while the collector runs.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Serve on `socket` until `shutdown` completes, then stop receiving, finish the commits
    /// and acknowledgements in flight, give notification attempts in flight up to
    /// `shutdown_grace` to end, and return the final counters.
    ///
    /// # Errors
    /// If the store or a channel cannot be set up. Once serving, errors are logged, not returned.
    pub async fn run(
        self,
        socket: UdpSocket,
        shutdown: impl Future<Output = ()>,
    ) -> Result<StatsSnapshot, CollectorError> {
        let path = self.config.database_path();
        let sqlite = self.config.database_url.is_none();
        let result = self.serve(socket, shutdown).await;
        // A damaged store, however it was found (the check at start or beside the service, the
        // writer, a read as the service started): one error, naming the file and the way out,
        // and the mark, so that every later start refuses the store before serving.
        let result = match result {
            Err(CollectorError::Store(StoreError::Corrupt(problem))) if sqlite => {
                Err(CollectorError::Store(StoreError::Damaged { path: path.clone(), problems: vec![problem] }))
            }
            other => other,
        };
        if let Err(CollectorError::Store(StoreError::Damaged { path, problems })) = &result {
            if !crate::integrity::marked_damaged(path) {
                let (path, problems) = (path.clone(), problems.clone());
                let marked = tokio::task::spawn_blocking(move || crate::integrity::mark_damaged(&path, &problems));
                match tokio::time::timeout(Duration::from_secs(5), marked).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => error!(error = %e, "cannot leave the mark of a damaged store"),
                    _ => error!("cannot leave the mark of a damaged store (the disk does not answer)"),
                }
            }
        }
        result
    }

    async fn serve(
        self,
        socket: UdpSocket,
        shutdown: impl Future<Output = ()>,
    ) -> Result<StatsSnapshot, CollectorError> {
        let Collector { config, key, stats } = self;
        let path = config.database_path();
        // The check at start (docs/RELIABILITY.md, "A damaged store"). A store found damaged
        // before (its mark is beside it) gets the full check, without a time budget, before
        // anything opens it for writing, and is refused if it still is damaged. On the first
        // start of a boot of the machine (which may follow a power cut) the quick check runs
        // before serving, within its budget. On a restart within the same boot (the process
        // crashed or was killed: that cannot damage the store) it runs beside the service, which
        // already acknowledges SOS: the first acknowledgement does not wait for a read of the
        // whole file (O(its size): seconds for a year of alerts).
        let (damage_tx, damage_rx) = tokio::sync::oneshot::channel::<Vec<String>>();
        let mut check_beside = false;
        if config.database_url.is_none() {
            let checking = Instant::now();
            if !path.exists() {
                let _ = crate::integrity::clear_damage_mark(&path);
            } else if crate::integrity::marked_damaged(&path) {
                info!(store = %path.display(), "the store was found damaged before: checking all of it before serving");
                match crate::integrity::check(&path, true, None)? {
                    crate::integrity::Integrity::Damaged(problems) => {
                        return Err(StoreError::Damaged { path, problems }.into())
                    }
                    _ => {
                        info!(
                            took_ms = checking.elapsed().as_millis() as u64,
                            "store checked: it was found damaged before and is not any more; its mark is removed"
                        );
                        if let Err(e) = crate::integrity::clear_damage_mark(&path) {
                            warn!(error = %e, "cannot remove the mark of damage; the next start checks the store again");
                        }
                    }
                }
            } else if !crate::integrity::started_this_boot(&path) {
                match crate::integrity::check(&path, false, Some(crate::integrity::START_CHECK_BUDGET))? {
                    crate::integrity::Integrity::Ok => {
                        info!(
                            took_ms = checking.elapsed().as_millis() as u64,
                            "store checked (first start of this boot)"
                        );
                    }
                    crate::integrity::Integrity::Damaged(problems) => {
                        return Err(StoreError::Damaged { path, problems }.into())
                    }
                    crate::integrity::Integrity::Unfinished => warn!(
                        store = %path.display(), budget_secs = crate::integrity::START_CHECK_BUDGET.as_secs(),
                        "the store's integrity check did not finish in time; starting anyway (run `sos-collector store \
                         check` with the collector stopped to check it fully)"
                    ),
                }
            } else {
                check_beside = true;
            }
        }
        let names = config.channel_names();
        let plan = ResponsePlan::from_config(&config);
        let (store, writer) = match &config.database_url {
            None => {
                let (w, thread) = SqliteStore::start_planned(Db::open(&path)?, &names, plan)?;
                info!(store = %path.display(), "store: SQLite");
                let record_boot = |path: &std::path::Path| {
                    if let Err(e) = crate::integrity::record_boot(path) {
                        warn!(error = %e, file = %crate::integrity::boot_record(path).display(),
                              "cannot record this boot beside the store; the next start checks the store before serving");
                    }
                };
                if !check_beside {
                    record_boot(&path);
                } else {
                    // Recorded again when the check passes: until then (a crash meanwhile, a check
                    // that cannot run, damage) the next start checks before serving.
                    crate::integrity::forget_boot(&path);
                    // While the check reads, its snapshot keeps the WAL from starting over: the
                    // writer does not wait for a catch-up meanwhile (the WAL may grow past its
                    // bound for the check's time: its budget, and the time to open the file).
                    let hold = w.hold_wal_catch_up();
                    let checking = Instant::now();
                    let store_path = path.clone();
                    let budget = crate::integrity::START_CHECK_BUDGET;
                    crate::integrity::check_while_serving(&path, budget, hold, move |found| {
                        let took_ms = checking.elapsed().as_millis() as u64;
                        match found {
                            Ok(crate::integrity::Integrity::Ok) => {
                                info!(took_ms, "store checked (beside the service)");
                                record_boot(&store_path);
                            }
                            Ok(crate::integrity::Integrity::Damaged(problems)) => {
                                error!(store = %store_path.display(), took_ms, problems = ?problems,
                                       "THE STORE IS DAMAGED: found by the check at start; stopping");
                                let _ = damage_tx.send(problems);
                            }
                            Ok(crate::integrity::Integrity::Unfinished) => warn!(
                                store = %store_path.display(), budget_secs = crate::integrity::START_CHECK_BUDGET.as_secs(),
                                "the store's integrity check did not finish in time (run `sos-collector store check` \
                                 with the collector stopped to check it fully)"
                            ),
                            Err(e) => error!(store = %store_path.display(), error = %e,
                                             "THE STORE'S INTEGRITY CHECK COULD NOT RUN (an I/O error of the disk?); \
                                              serving on; the next start checks it before serving"),
                        }
                    })?;
                }
                (Store::sqlite(w, Some(&path)), Some(thread))
            }
            Some(url) => {
                let database = crate::config::store::redacted(url);
                let refused = |e: StoreError| {
                    CollectorError::Died(format!("cannot use the PostgreSQL store {database} (database_url): {e}"))
                };
                // A claim's lease outlives the longest delivery attempt and the recording of its
                // outcome: a job still being sent is never taken over by another collector.
                let lease = crate::store::postgres::LEASE.max(config.outbox.attempt_timeout + LEASE_MARGIN);
                let pg = PgStore::open_full(url.expose_secret(), &names, plan, lease).await.map_err(refused)?;
                let clock = pg.prepare_service().await.map_err(refused)?;
                if clock.ahead_ms.abs() > crate::store::postgres::CLOCK_WARNING_MS {
                    warn!(%database, database_ahead_ms = clock.ahead_ms,
                          "this host's clock differs from the database's: the shared deadlines follow the database's \
                           clock; set this host's time (NTP) — logs and the console show this host's time");
                }
                info!(%database, "store: PostgreSQL, shared with the other collectors on it");
                (Store::postgres(pg), None)
            }
        };
        // What was pending before the restart, for the log: counted beside the start, not before
        // it (a count of every pending job; 40 ms with 157,000 pending, and the SOS wait).
        tokio::spawn({
            let (store, names) = (store.clone(), names.clone());
            async move {
                let pending = match store.pending_by_channel().await {
                    Ok(pending) => pending,
                    Err(e) => {
                        return warn!(error = %e, "could not count the notifications pending from before the restart")
                    }
                };
                for (channel, n) in pending {
                    if names.contains(&channel.as_str()) {
                        info!(channel = %channel, pending = n, "resuming notifications pending from before the restart");
                    } else {
                        warn!(channel = %channel, pending = n,
                              "notifications are pending for a channel that is no longer configured; they stay pending until it is configured again");
                    }
                }
            }
        });
        // Channels tell administrators through the others (an endpoint disabled): `admin`.
        let (admin, admin_notices) = tokio::sync::mpsc::unbounded_channel();
        // Acknowledge links (issue 17 §4): one key for the channels that put them in messages and
        // the console that checks them. Without them alerts are notified all the same.
        // On PostgreSQL the key is shared by every collector on the database.
        let links = crate::links::AckLinks::from_config_on(&config, &store).await.unwrap_or_else(|e| {
            error!(error = %e, "ACKNOWLEDGE LINKS ARE OFF: messages go out without them");
            None
        });
        // A site: its link to its centre, the `forward` channel.
        let forwarder = config.forward.clone().map(crate::forward::Forwarder::new);
        let context =
            crate::channel::Context { links: links.clone(), admin: Some(admin), forwarder: forwarder.clone() };
        let channels = crate::channel::build(&config, &context)
            .map_err(|e| CollectorError::Channel { channel: e.channel, message: e.message })?;
        // Essential tasks: one that ends before shutdown (a panic) ends the service.
        let (died_tx, mut died) = tokio::sync::mpsc::unbounded_channel::<String>();
        let essential = |what: String, task: tokio::task::JoinHandle<()>| {
            let died = died_tx.clone();
            tokio::spawn(async move {
                let why = match task.await {
                    Ok(()) => return,
                    Err(e) if e.is_panic() => format!("{what} panicked"),
                    Err(_) => return,
                };
                let _ = died.send(why);
            });
        };
        let registry = SharedRegistry::open(store.clone()).await?;
        {
            let r = registry.snapshot();
            if !config.security.accept_site_key && r.is_empty() {
                warn!(
                    "accept_site_key = false and no agent is enrolled: no agent can raise an alert until one enrolls"
                );
            }
        }

        let workers = TaskTracker::new();
        let stop_workers = CancellationToken::new();
        let tell = {
            let channels = channels.clone();
            let timeout = config.outbox.attempt_timeout;
            let listen = config.listen;
            move |subject: &'static str, text: String| {
                let channels = channels.clone();
                async move {
                    let text = format!("The SOS collector listening on {listen}: {text}");
                    for ch in channels.iter() {
                        match tokio::time::timeout(timeout, ch.notice(subject, &text)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => warn!(channel = ch.name(), error = %e, "cannot tell this channel: {subject}"),
                            Err(_) => warn!(channel = ch.name(), "cannot tell this channel (timed out): {subject}"),
                        }
                    }
                }
            }
        };
        // What a channel tells administrators about itself goes out through every other channel.
        {
            let channels = channels.clone();
            let timeout = config.outbox.attempt_timeout;
            let listen = config.listen;
            let stop = stop_workers.clone();
            let mut notices = admin_notices;
            workers.spawn(async move {
                loop {
                    let n = tokio::select! {
                        _ = stop.cancelled() => return,
                        n = notices.recv() => match n { Some(n) => n, None => return },
                    };
                    let text = format!("The SOS collector listening on {listen}: {}", n.text);
                    for ch in channels.iter().filter(|c| c.name() != n.from) {
                        match tokio::time::timeout(timeout, ch.notice(n.subject, &text)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                warn!(channel = ch.name(), error = %e, "cannot tell this channel: {}", n.subject)
                            }
                            Err(_) => warn!(channel = ch.name(), "cannot tell this channel (timed out): {}", n.subject),
                        }
                    }
                }
            });
        }
        for ch in channels.iter().cloned() {
            let span = info_span!("outbox", channel = ch.name());
            let name = format!("the {} outbox worker", ch.name());
            // The store made one waker per configured channel, from the same list as `channels`.
            let wake = store.waker(ch.name()).ok_or_else(|| CollectorError::Channel {
                channel: ch.name(),
                message: "the store has no outbox for it".into(),
            })?;
            essential(
                name,
                workers.spawn(
                    outbox::run_worker(ch, store.clone(), wake, config.outbox.clone(), stop_workers.clone())
                        .instrument(span),
                ),
            );
        }
        // Escalation: the next tier of every alert nobody acknowledged, at its deadline.
        essential(
            "the escalation engine".into(),
            workers.spawn(
                crate::response::escalation::run(store.clone(), stop_workers.clone())
                    .instrument(info_span!("escalation")),
            ),
        );
        // A site: its link to the centre (heartbeats, the centre's acknowledgements coming back).
        if let Some(f) = forwarder {
            essential(
                "the forwarder".into(),
                workers.spawn(f.run(store.clone(), stop_workers.clone()).instrument(info_span!("forward"))),
            );
        }
        // Heartbeats reach the store in one transaction per PRESENCE_FLUSH, and once more at the end.
        {
            let store = store.clone();
            let stop = stop_workers.clone();
            let task = workers.spawn(async move {
                let mut tick = tokio::time::interval(crate::store::PRESENCE_FLUSH);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => store.flush_presence(),
                    }
                }
                store.flush_presence();
            });
            essential("the heartbeat writer".into(), task);
        }
        // Every channel that still works says when the store fails for more than a few seconds,
        // and when it recovers: responders learn that SOS are not being acknowledged here.
        {
            let store = store.clone();
            let stop = stop_workers.clone();
            let tell = tell.clone();
            let what = match &config.database_url {
                None => format!(
                    "its store {} is failing (disk full, read-only or damaged?)",
                    config.database_path().display()
                ),
                Some(url) => format!(
                    "its PostgreSQL store {} cannot be reached or refuses writes",
                    crate::config::store::redacted(url)
                ),
            };
            let task = workers.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let (mut since, mut told) = (None::<Instant>, false);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    // PostgreSQL that refused writes is failing until a write succeeds: try one.
                    if store.is_failing() && store.as_postgres().is_some() {
                        let _ = store.probe_write(crate::store::now_ms()).await;
                    }
                    match (store.is_failing(), told) {
                        (true, false) => {
                            if since.get_or_insert_with(Instant::now).elapsed() >= STORE_FAILING_NOTICE_AFTER {
                                told = true;
                                let text = format!(
                                    "{what}. SOS are NOT being acknowledged here; agents keep retrying and fail over \
                                     to another collector if they have one."
                                );
                                tell("SOS collector: STORE FAILING", text).await;
                            }
                        }
                        (false, true) => {
                            told = false;
                            since = None;
                            tell(
                                "SOS collector: store recovered",
                                "its store works again; SOS are acknowledged.".into(),
                            )
                            .await;
                        }
                        (false, false) => since = None,
                        (true, true) => {}
                    }
                }
            });
            essential("the store health watch".into(), task);
        }
        // The CLI changes the registry in the store (enroll, revoke, rotate); pick that up. And
        // tell what was refused and only counted in the interval that ended.
        let refusals = Arc::new(Mutex::new(Refusals::default()));
        {
            let registry = registry.clone();
            let stop = stop_workers.clone();
            let refusals = refusals.clone();
            let task = workers.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {
                            registry.refresh_async().await;
                            let told = refusals.lock().unwrap_or_else(|e| e.into_inner()).flush(Instant::now());
                            told.into_iter().for_each(log_summary);
                        }
                    }
                }
            });
            essential("the registry refresh".into(), task);
        }
        // Enrolled agents that stop sending heartbeats: told once, and again when back.
        {
            let tell = tell.clone();
            let task = workers.spawn(crate::silence::watch(
                store.clone(),
                config.agent_silent_after,
                tell,
                stop_workers.clone(),
            ));
            essential("the silent agent watch".into(), task);
        }
        // The web console, /metrics, /healthz, /readyz.
        // It is optional: when it cannot start (its port taken, a certificate unreadable after a
        // renewal), SOS are still received, acknowledged and notified; administrators are told.
        if config.http.is_some() {
            match crate::http::start(&config, store.clone(), stats.clone(), links.clone(), stop_workers.clone()).await {
                Ok((_, task)) => essential("the web console".into(), task),
                Err(e) => {
                    let e = CollectorError::Http(e.to_string());
                    error!(error = %e, "THE WEB CONSOLE DID NOT START; SOS are still received and notified");
                    tokio::spawn(tell(
                        "SOS collector: web console down",
                        format!(
                            "its web console did not start ({e}); SOS are still received, acknowledged and notified."
                        ),
                    ));
                }
            }
        }
        workers.close();

        let socket = Arc::new(socket);
        // Broadcasts to responder desktops and notices to senders: the only datagrams that are
        // not replies (docs/PROTOCOL.md section 10).
        let pushes = Arc::new(Pushes::new(config.escalation.responder_offline_after, stats.clone()));
        {
            let run = push::run(pushes.clone(), store.clone(), registry.clone(), socket.clone(), stop_workers.clone());
            essential("the push task".into(), workers.spawn(run.instrument(info_span!("push"))));
        }
        info!(listen = %socket.local_addr()?, key_id = %key.id(), site_key = config.security.accept_site_key,
              enrolled_keys = registry.snapshot().len(), channels = ?names, "collector ready");
        let sec = &config.security;
        let in_flight = TaskTracker::new();
        let receiver = Receiver {
            socket: socket.clone(),
            key,
            config: config.clone(),
            store: store.clone(),
            stats: stats.clone(),
            in_flight: in_flight.clone(),
            store_waiters: Arc::new(tokio::sync::Semaphore::new(crate::udp::MAX_STORE_WAITERS)),
            registry,
            limits: Mutex::new(Limits {
                agent: Limiter::new(sec.per_agent, 100_000),
                enroll_source: Limiter::new(sec.per_source, 100_000),
                enroll: Limiter::new(sec.enroll, 1),
                enroll_code: Limiter::new(ENROLL_PER_CODE, 10_000),
            }),
            refusals,
            sessions: Arc::default(),
            pushes,
        };
        // Ends on the shutdown signal, or when an essential task or the store writer dies: a
        // collector that cannot store must not look alive; the service manager restarts it.
        let mut fatal = None;
        let mut damage = None;
        let stop = async {
            let damage_found = async {
                match damage_rx.await {
                    Ok(problems) => problems,
                    // No check beside the service (or it found nothing): never.
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown => {}
                why = store.ended() => fatal = Some(why),
                Some(why) = died.recv() => fatal = Some(why),
                problems = damage_found => {
                    // The service stops receiving now: agents fail over and warn their senders.
                    let e = StoreError::Damaged { path: path.clone(), problems: problems.clone() };
                    fatal = Some(e.to_string());
                    damage = Some(problems);
                }
            }
        };
        receiver.serve(stop).await;
        if let Some(why) = &fatal {
            error!("STOPPING: {why}; no SOS can be acknowledged by this process");
            tell(
                "SOS collector: STOPPING",
                format!("{why}. It exits for the service manager to restart it; SOS are not acknowledged meanwhile."),
            )
            .await;
        }

        info!("shutting down: no longer receiving; finishing commits in flight");
        in_flight.close();
        in_flight.wait().await;
        stop_workers.cancel();
        if tokio::time::timeout(config.shutdown_grace, workers.wait()).await.is_err() {
            warn!(
                grace_secs = config.shutdown_grace.as_secs(),
                "notification attempts still running at the end of the grace period; they resume on the next start"
            );
        }
        drop(receiver);
        let writer_damage = store.damaged();
        drop(store);
        // The writer ends once every handle is gone; a worker abandoned after the grace period
        // may still hold one, so do not wait for it forever.
        if let Some(writer) = writer {
            let joined = tokio::task::spawn_blocking(move || writer.join());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), joined).await;
        }
        let snapshot = stats.snapshot();
        info!(%snapshot, "collector stopped");
        // Damage, found by the check beside the service or by the writer: the same error as a
        // store refused at start, with the way out (the mark is left by `Collector::run`).
        let damage = damage.or_else(|| writer_damage.map(|d| vec![d]));
        match (fatal, damage) {
            // Also damage found by the writer as it finished the commits in flight at shutdown.
            (_, Some(problems)) => Err(StoreError::Damaged { path, problems }.into()),
            (Some(why), None) => Err(CollectorError::Died(why)),
            (None, None) => Ok(snapshot),
        }
    }
}

/// Serve on `socket` with `config` until `shutdown` completes. See [`Collector::run`].
///
/// # Errors
/// See [`Collector::new`] and [`Collector::run`].
pub async fn run(
    socket: UdpSocket,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<StatsSnapshot, CollectorError> {
    Collector::new(config)?.run(socket, shutdown).await
}

/// On PostgreSQL, how much longer than the longest delivery attempt a claim's lease lasts: the
/// time to record the outcome (up to one answer time of the database, twice).
const LEASE_MARGIN: Duration = Duration::from_secs(15);

/// How long the store must fail before every channel is told.
const STORE_FAILING_NOTICE_AFTER: Duration = Duration::from_secs(5);
