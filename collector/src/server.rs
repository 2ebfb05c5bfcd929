//! The receive loop: authenticate, store, acknowledge.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sos_shared::enroll::{CollectorSession, EnrollError, EnrollMessage, ENROLL_KEY_ID, ENROLL_REQUEST_LEN};
use sos_shared::protocol::{split_datagram, AckStatus, CancelAck, HeartbeatAck, SosAck, TimeHint, MAX_DATAGRAM};
use sos_shared::{unix_now, AlertId, Key, KeyId, Message, OpenError};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument as _};

use crate::channel::{Channel, ChannelKind, Email, Slack};
use crate::config::Config;
use crate::outbox;
use crate::ratelimit::Limiter;
use crate::refusal::{Cause, Refusals, Summary};
use crate::registry::{Attempt, Entry, SharedRegistry, Slot};
use crate::stats::{Stats, StatsSnapshot};
use crate::store::{now_ms, principal, AgentSeen, Cancelled, Db, NewAlert, Store, StoreError, Stored};

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
        let Collector { config, key, stats } = self;
        let path = config.database_path();
        if path.exists() {
            match crate::integrity::check(&path, false, Some(crate::integrity::START_CHECK_BUDGET))? {
                crate::integrity::Integrity::Ok => {}
                crate::integrity::Integrity::Damaged(problems) => {
                    return Err(StoreError::Damaged { path, problems }.into())
                }
                crate::integrity::Integrity::Unfinished => warn!(
                    store = %path.display(), budget_secs = crate::integrity::START_CHECK_BUDGET.as_secs(),
                    "the store's integrity check did not finish in time; starting anyway (run `sos-collector store check` \
                     with the collector stopped to check it fully)"
                ),
            }
        }
        let db = Db::open(&path)?;
        let names = config.channel_names();
        for (channel, n) in db.pending_by_channel()? {
            if names.contains(&channel.as_str()) {
                info!(channel = %channel, pending = n, "resuming notifications pending from before the restart");
            } else {
                warn!(channel = %channel, pending = n,
                      "notifications are pending for a channel that is no longer configured; they stay pending until it is configured again");
            }
        }
        let mut channels = Vec::new();
        for kind in config.channels() {
            let setting_up = |message: String| CollectorError::Channel { channel: kind.name(), message };
            channels.push(match kind {
                ChannelKind::Log => Channel::Log,
                ChannelKind::Slack => {
                    let s = config.slack.clone().ok_or_else(|| setting_up("not configured".into()))?;
                    Channel::Slack(Slack::new(s, config.outbox.attempt_timeout).map_err(|e| setting_up(e.to_string()))?)
                }
                ChannelKind::Email => {
                    let e = config.email.clone().ok_or_else(|| setting_up("not configured".into()))?;
                    let email = Email::new(e, config.outbox.attempt_timeout).map_err(|e| setting_up(e.to_string()))?;
                    Channel::Email(Box::new(email))
                }
            });
        }
        let (store, writer) = Store::start(db, &names)?;
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
        let registry = SharedRegistry::open(&config.database_path())?;
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
        let channels: Vec<Arc<Channel>> = channels.into_iter().map(Arc::new).collect();
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
            let path = config.database_path();
            let task = workers.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let (mut since, mut told) = (None::<Instant>, false);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    match (store.is_failing(), told) {
                        (true, false) => {
                            if since.get_or_insert_with(Instant::now).elapsed() >= STORE_FAILING_NOTICE_AFTER {
                                told = true;
                                let text = format!(
                                    "its store {} is failing (disk full, read-only or damaged?). SOS are NOT being \
                                     acknowledged; agents keep retrying and fail over to another collector if they have one.",
                                    path.display()
                                );
                                tell("SOS collector: STORE FAILING", text).await;
                            }
                        }
                        (false, true) => {
                            told = false;
                            since = None;
                            tell("SOS collector: store recovered", "its store works again; SOS are acknowledged.".into()).await;
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
        workers.close();

        let socket = Arc::new(socket);
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
            registry,
            limits: Mutex::new(Limits {
                agent: Limiter::new(sec.per_agent, 100_000),
                enroll_source: Limiter::new(sec.per_source, 100_000),
                enroll: Limiter::new(sec.enroll, 1),
                enroll_code: Limiter::new(ENROLL_PER_CODE, 10_000),
            }),
            refusals,
            sessions: Arc::default(),
        };
        // Ends on the shutdown signal, or when an essential task or the store writer dies: a
        // collector that cannot store must not look alive; the service manager restarts it.
        let mut fatal = None;
        let stop = async {
            tokio::select! {
                _ = shutdown => {}
                why = store.ended() => fatal = Some(why),
                Some(why) = died.recv() => fatal = Some(why),
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
        drop(store);
        // The writer ends once every handle is gone; a worker abandoned after the grace period
        // may still hold one, so do not wait for it forever.
        let joined = tokio::task::spawn_blocking(move || writer.join());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), joined).await;
        let snapshot = stats.snapshot();
        info!(%snapshot, "collector stopped");
        match fatal {
            Some(why) => Err(CollectorError::Died(why)),
            None => Ok(snapshot),
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

/// What the receive loop and its per-SOS tasks share.
#[derive(Debug)]
struct Receiver {
    socket: Arc<UdpSocket>,
    key: Key,
    config: Config,
    store: Store,
    stats: Arc<Stats>,
    /// SOS being committed and acknowledged; shutdown waits for them.
    in_flight: TaskTracker,
    /// Enrolled agents and their keys.
    registry: Arc<SharedRegistry>,
    /// Rate limits.
    limits: Mutex<Limits>,
    /// What was refused, told at a bounded rate (shared with the task that flushes it).
    refusals: Arc<Mutex<Refusals>>,
    /// Enrollment exchanges in progress, by code id.
    sessions: Arc<Mutex<HashMap<String, EnrollSession>>>,
}

/// The rate limiters of the receive path. No limit applies to a datagram before it is
/// authenticated, except to enrollment, which cannot be checked cheaply (docs/SECURITY.md).
#[derive(Debug)]
struct Limits {
    /// Per agent (site key: per key and source address and port), after authentication.
    agent: Limiter<String>,
    /// Enrollment starts for codes that are not pending, per source address.
    enroll_source: Limiter<IpAddr>,
    /// Enrollment starts for codes that are not pending, from everyone.
    enroll: Limiter<()>,
    /// Enrollment starts per pending code (each distinct start costs the code an attempt).
    enroll_code: Limiter<String>,
}

/// Starts for one pending code: bounds the store work a flood of starts naming a code (its id
/// travels in clear) can cause before the code is burnt.
const ENROLL_PER_CODE: crate::ratelimit::Rate = crate::ratelimit::Rate { per_sec: 2.0, burst: 10.0 };

/// Write a summary of refusals counted in an interval that ended.
fn log_summary(summary: Summary) {
    let secs = crate::refusal::INTERVAL.as_secs();
    match summary {
        Summary::Cause { cause, count } if cause.is_warning() => {
            warn!(refused = count, "{}: {count} more in the last {secs} s", cause.text());
        }
        Summary::Cause { cause, count } => {
            debug!(refused = count, "{}: {count} more in the last {secs} s", cause.text())
        }
        Summary::WrongKeyFrom { source, count } => {
            warn!(%source, failed = count,
                  "{count} datagrams from this address carried a known key id and failed authentication (wrong key?); none answered");
        }
    }
}

/// One enrollment exchange: the PAKE session, and the final answer once the agent is enrolled
/// (resent if the agent's finish is retransmitted).
#[derive(Debug)]
struct EnrollSession {
    session: Arc<CollectorSession>,
    done: Option<Vec<u8>>,
    started: Instant,
}

/// How long the store must fail before every channel is told.
const STORE_FAILING_NOTICE_AFTER: Duration = Duration::from_secs(5);

/// How long an enrollment exchange is remembered.
const ENROLL_SESSION_TTL: Duration = Duration::from_secs(15 * 60);

impl Receiver {
    async fn serve(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        // One byte more than the largest valid datagram, so that oversize input is detected
        // rather than silently truncated.
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let (len, from) = tokio::select! {
                biased;
                _ = &mut shutdown => return,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // E.g. an ICMP error reported on the socket; the socket itself is fine.
                        debug!(error = %e, "receive error");
                        continue;
                    }
                },
            };
            Stats::bump(&self.stats.received);
            self.handle(&buf[..len], from);
        }
    }

    /// How to answer a request of `request_len` bytes from `to`, sealing with `key`.
    fn reply_to(&self, key: &Key, to: SocketAddr, request_len: usize) -> Reply {
        Reply {
            socket: self.socket.clone(),
            key: key.clone(),
            stats: self.stats.clone(),
            refusals: self.refusals.clone(),
            to,
            request_len,
        }
    }

    fn limits(&self) -> std::sync::MutexGuard<'_, Limits> {
        self.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refusals(&self) -> std::sync::MutexGuard<'_, Refusals> {
        self.refusals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count a refusal in `counter`, and tell it if a line for `cause` is due (at most one per
    /// interval): `tell` gets how many refusals of the cause went untold before this one.
    fn refuse(&self, cause: Cause, counter: &std::sync::atomic::AtomicU64, tell: impl FnOnce(u64)) {
        Stats::bump(counter);
        let line = self.refusals().note(cause, Instant::now());
        if let Some(line) = line {
            tell(line.before);
        }
    }

    /// The key that sealed a datagram with `key_id`, and the enrolled agent it belongs to.
    fn key_for(&self, key_id: KeyId, from: SocketAddr) -> Option<(Key, Option<Entry>)> {
        if key_id == self.key.id() {
            if self.config.security.accept_site_key {
                return Some((self.key.clone(), None));
            }
            self.refuse(Cause::UnknownKey, &self.stats.unauthenticated, |before| {
                debug!(%from, before, "dropped a datagram sealed with the site key (accept_site_key = false)");
            });
            return None;
        }
        match self.registry.snapshot().get(key_id) {
            Some(e) => Some((e.key.clone(), Some(e.clone()))),
            None => {
                self.refuse(Cause::UnknownKey, &self.stats.unauthenticated, |before| {
                    debug!(%from, %key_id, before, "{}", Cause::UnknownKey.text());
                });
                None
            }
        }
    }

    /// One datagram. Nothing that authenticates is dropped for where it came from: every
    /// datagram with a known key id is authenticated first (an HMAC check, about a microsecond,
    /// less than the receive that delivered it), whatever its source sent before; a datagram
    /// that fails costs no more than that (no store, no task, no reply, a line at a bounded
    /// rate). Limits apply after authentication, per agent; only enrollment, which cannot be
    /// checked cheaply, is budgeted per source.
    fn handle(&self, datagram: &[u8], from: SocketAddr) {
        let (key_id, token) = match split_datagram(datagram) {
            Ok(x) => x,
            Err(e) => {
                self.refuse(Cause::Malformed, &self.stats.malformed, |before| {
                    debug!(%from, error = %e, before, "{}", Cause::Malformed.text());
                });
                return;
            }
        };
        if key_id == ENROLL_KEY_ID {
            self.enroll(token, datagram.len(), from);
            return;
        }
        let Some((key, entry)) = self.key_for(key_id, from) else { return };
        let opened = match key.open(token, unix_now(), self.config.window) {
            Ok(o) => o,
            Err(OpenError::Unauthenticated) => {
                Stats::bump(&self.stats.unauthenticated);
                let now = Instant::now();
                let mut refusals = self.refusals();
                let per_source = refusals.wrong_key(from.ip(), now);
                let line = if per_source.is_some() { None } else { refusals.note(Cause::WrongKey, now) };
                drop(refusals);
                if let Some(failed) = per_source {
                    warn!(source = %from.ip(), %key_id, failed,
                          "a datagram with a known key id failed authentication (wrong key?); not answered (at most one line a minute per address, with the count)");
                } else if let Some(line) = line {
                    warn!(%from, %key_id, before = line.before, "{}", Cause::WrongKey.text());
                }
                return;
            }
            Err(OpenError::Expired { age_secs }) => {
                let token_time = unix_now().saturating_sub(age_secs);
                self.refuse(Cause::Expired, &self.stats.expired, |before| {
                    warn!(%from, %key_id, clock_difference_secs = -(age_secs as i64), ttl_secs = self.config.window.ttl_secs,
                          before, "rejected an authentic token {age_secs} s old: a replay, or the sender's clock is behind (one line per {} s)",
                          crate::refusal::INTERVAL.as_secs());
                });
                self.time_hint(&key, token, datagram.len(), from, token_time);
                return;
            }
            Err(OpenError::FromFuture { ahead_secs }) => {
                self.refuse(Cause::FromFuture, &self.stats.from_future, |before| {
                    warn!(%from, %key_id, clock_difference_secs = ahead_secs as i64,
                          max_future_skew_secs = self.config.window.max_future_skew_secs, before,
                          "rejected an authentic token dated {ahead_secs} s ahead: the sender's clock is fast (one line per {} s)",
                          crate::refusal::INTERVAL.as_secs());
                });
                self.time_hint(&key, token, datagram.len(), from, unix_now().saturating_add(ahead_secs));
                return;
            }
            Err(OpenError::BadPayload(e)) => {
                self.refuse(Cause::BadPayload, &self.stats.malformed, |before| {
                    warn!(%from, %key_id, error = %e, before, "dropped an authentic datagram with an invalid message");
                });
                return;
            }
        };
        // Authentic from here on.
        if let Some(e) = &entry {
            let refused = match e.slot {
                _ if e.agent.revoked => Some("the agent is revoked"),
                Slot::Previous { until_ms } if now_ms() > until_ms => Some("the key was replaced by a rotation"),
                _ => None,
            };
            if let Some(why) = refused {
                let who = &e.agent.who;
                // Bounded: a captured datagram of a revoked agent can be replayed at any rate.
                let sos = matches!(opened.message, Message::Sos(_));
                let cause = if sos { Cause::RevokedSos } else { Cause::Revoked };
                self.refuse(cause, &self.stats.revoked, |before| {
                    if sos {
                        error!(%from, agent_id = %who.agent_id, name = %who.name, %key_id, before,
                               "REFUSED an SOS: {why}; it was not acknowledged (re-enroll the workstation if this is wrong)");
                    } else {
                        warn!(%from, agent_id = %who.agent_id, name = %who.name, %key_id, kind = opened.message.kind(), before,
                              "refused a message: {why}");
                    }
                });
                return;
            }
        }
        let who = match &entry {
            Some(e) => format!("agent:{}", e.agent.who.agent_id),
            None => format!("{key_id}/{from}"),
        };
        if !self.limits().agent.allow(who, Instant::now()) {
            self.refuse(Cause::AgentRate, &self.stats.rate_limited_agent, |before| {
                warn!(%from, %key_id, before, "rate limit: an agent sends more than its limit; dropping");
            });
            return;
        }
        if let Some(e) = entry.as_ref().filter(|e| e.slot == Slot::Next) {
            self.promote(e, key_id);
        }
        let enrolled = entry.as_ref().map(|e| e.agent.who.clone());
        let request_len = datagram.len();
        let reply = |key: &Key| self.reply_to(key, from, request_len);
        match opened.message {
            Message::Sos(mut sos) => {
                sos.sanitize();
                if let Some(e) = enrolled.as_ref().filter(|e| e.host_mismatch(&sos.host)) {
                    warn!(%from, agent_id = %e.agent_id, enrolled_host = %e.host, claimed_host = %sos.host,
                          "IDENTITY MISMATCH: an SOS claims another host than its key was enrolled on; responders are told");
                }
                if let Some(e) = &enrolled {
                    self.store.seen(AgentSeen {
                        host: sos.host.clone(),
                        user: sos.user.clone(),
                        ip: sos.ip.clone(),
                        source: from.to_string(),
                        key_id: key_id.to_string(),
                        last_seen_ms: now_ms(),
                        agent_id: Some(e.agent_id.clone()),
                    });
                }
                let alert =
                    NewAlert { sos, received_at_ms: now_ms(), source: from, key_id: key_id.to_string(), enrolled };
                let ctx = reply(&key);
                let store = self.store.clone();
                let span = info_span!("sos", alert_id = %alert.sos.alert_id, %from);
                self.in_flight.spawn(store_and_ack(store, alert, ctx).instrument(span));
            }
            Message::Heartbeat(hb) => {
                Stats::bump(&self.stats.heartbeats);
                let clean = |t: String| t.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>();
                self.store.seen(AgentSeen {
                    host: clean(hb.host),
                    user: clean(hb.user),
                    ip: clean(hb.ip),
                    source: from.to_string(),
                    key_id: key_id.to_string(),
                    last_seen_ms: now_ms(),
                    agent_id: enrolled.as_ref().map(|e| e.agent_id.clone()),
                });
                if self.store.is_failing() {
                    // No healthy answer while no SOS can be stored: the agent shows it is not
                    // connected (and fails over) instead of "ready".
                    debug!(%from, "heartbeat not answered: the store is failing");
                    return;
                }
                let ctx = reply(&key);
                // A pending rotation: the new key travels sealed with the current one.
                let new_key = entry.as_ref().filter(|e| e.slot == Slot::Current).and_then(|e| {
                    use secrecy::ExposeSecret as _;
                    e.agent.next_key.as_ref().map(|k| k.expose_secret().to_owned())
                });
                let mut ack = HeartbeatAck { server_time: unix_now(), notices: Vec::new(), new_key };
                if ack.new_key.is_some() && !ctx.fits(&Message::HeartbeatAck(ack.clone())) {
                    // Answer without the key rather than not at all; it is offered again with
                    // every heartbeat, and reaches an agent that pads as PROTOCOL.md 6.3 says.
                    ack.new_key = None;
                    debug!(%from, request = request_len, "heartbeat too small to carry the rotated key; answered without it");
                }
                ctx.send_now(&Message::HeartbeatAck(ack), &self.in_flight);
            }
            Message::Cancel(c) => {
                let ctx = reply(&key);
                // Never record a cancellation whose acknowledgement cannot be sent: responders
                // would be told while the sender is never told.
                if !ctx.fits(&Message::CancelAck(CancelAck { alert_id: c.alert_id, server_time: unix_now() })) {
                    Stats::bump(&self.stats.replies_suppressed);
                    warn!(%from, %key_id, request = request_len, min_plaintext = sos_shared::protocol::MIN_CANCEL_PLAINTEXT,
                          "CANCEL not recorded: too small for its acknowledgement (pad it, PROTOCOL.md 6.3)");
                    return;
                }
                let store = self.store.clone();
                let reason: String = c.reason.chars().map(|ch| if ch.is_control() { ' ' } else { ch }).collect();
                let span = info_span!("cancel", alert_id = %c.alert_id, %from);
                let principal = principal(&key_id.to_string(), enrolled.as_ref());
                self.in_flight.spawn(cancel_and_ack(store, c.alert_id, reason, principal, ctx).instrument(span));
            }
            other => {
                Stats::bump(&self.stats.unexpected);
                debug!(%from, kind = other.kind(), "dropped a message kind the collector does not accept");
            }
        }
    }

    /// The agent sealed with the key a rotation gave it: that key becomes its current one, and
    /// the old one is accepted for the rotation grace period.
    fn promote(&self, entry: &Entry, key_id: KeyId) {
        let store = self.store.clone();
        let registry = self.registry.clone();
        let agent_id = entry.agent.who.agent_id.clone();
        let name = entry.agent.who.name.clone();
        let grace = self.config.security.rotation_grace;
        self.in_flight.spawn(async move {
            let until = now_ms() + grace.as_millis() as i64;
            let id = agent_id.clone();
            match store.exec(move |db| db.promote(&id, &key_id.to_string(), until)).await {
                Ok(true) => {
                    info!(%agent_id, %name, %key_id, grace_secs = grace.as_secs(),
                          "key rotation complete: the agent uses its new key; the old one is accepted for the grace period");
                    registry.refresh_async().await;
                }
                Ok(false) => {}
                Err(e) => warn!(%agent_id, error = %e, "cannot record a completed key rotation; will retry on the next datagram"),
            }
        });
    }

    /// An enrollment datagram (see [`sos_shared::enroll`]). Nothing is answered unless the
    /// code is pending; nothing is ever answered with more bytes than the request.
    ///
    /// Cheap checks come first (size, parse); then a retransmitted start and every finish of a
    /// started exchange are served from memory without any budget (capacity kept for those whose
    /// first step was valid). A new start costs a store lookup, so it is budgeted: per pending
    /// code if its code is pending, else per source address and then for everyone together, so
    /// that junk (which cannot name a pending code without knowing it) never uses the capacity
    /// of a real code.
    fn enroll(&self, body: &str, request_len: usize, from: SocketAddr) {
        let message = match EnrollMessage::from_body(body) {
            Ok(m) if request_len >= ENROLL_REQUEST_LEN => m,
            _ => {
                self.refuse(Cause::EnrollMalformed, &self.stats.malformed, |before| {
                    debug!(%from, before, "{}", Cause::EnrollMalformed.text());
                });
                return;
            }
        };
        let code_id = message.enrollment().to_owned();
        let send = |datagram: Vec<u8>| {
            let ctx = self.reply_to(&self.key, from, request_len);
            self.in_flight.spawn(async move { ctx.send_datagram(&datagram, "enroll").await });
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.started.elapsed() < ENROLL_SESSION_TTL);
        match &message {
            EnrollMessage::EnrollStart { pake, .. } => {
                // A retransmitted start gets the same challenge and costs no attempt.
                if let Some(s) = sessions.get(&code_id).filter(|s| s.session.start_pake == *pake && s.done.is_none()) {
                    send(s.session.challenge.clone());
                    return;
                }
                drop(sessions);
                let now = Instant::now();
                let pending = self.registry.is_pending(&code_id);
                let allowed = {
                    let mut limits = self.limits();
                    if pending {
                        limits.enroll_code.allow(code_id.clone(), now)
                    } else {
                        limits.enroll_source.allow(from.ip(), now) && limits.enroll.allow((), now)
                    }
                };
                if !allowed {
                    let counter = if pending { &self.stats.enroll_refused } else { &self.stats.rate_limited_source };
                    self.refuse(Cause::EnrollBudget, counter, |before| {
                        warn!(%from, code = %code_id, before, "{}", Cause::EnrollBudget.text());
                    });
                    return;
                }
                let store = self.store.clone();
                let stats = self.stats.clone();
                let sessions = self.sessions.clone();
                let refusals = self.refusals.clone();
                let ctx = self.reply_to(&self.key, from, request_len);
                self.in_flight.spawn(async move {
                    let id = code_id.clone();
                    let attempt = match store.exec(move |db| db.enroll_attempt(&id, now_ms())).await {
                        Ok(a) => a,
                        Err(e) => {
                            Stats::bump(&stats.enroll_refused);
                            error!(code = %code_id, error = %e, "cannot look up an enrollment code");
                            return;
                        }
                    };
                    let (code, name) = match attempt {
                        Attempt::Try { code, name } => (code, name),
                        refused => {
                            Stats::bump(&stats.enroll_refused);
                            let cause = match refused {
                                Attempt::Used => Cause::EnrollUsed,
                                Attempt::Expired => Cause::EnrollExpired,
                                Attempt::TooManyAttempts => Cause::EnrollBurnt,
                                _ => Cause::EnrollUnknown,
                            };
                            let line = refusals.lock().unwrap_or_else(|e| e.into_inner()).note(cause, Instant::now());
                            if let Some(line) = line {
                                warn!(code = %code_id, %from, before = line.before, "{}", cause.text());
                            }
                            return;
                        }
                    };
                    let Ok(session) = CollectorSession::answer(&code, &message) else {
                        Stats::bump(&stats.malformed);
                        debug!(%from, "dropped an enrollment start with an invalid PAKE message");
                        return;
                    };
                    info!(code = %code_id, %name, %from, "enrollment started");
                    let challenge = session.challenge.clone();
                    sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(
                        code_id,
                        EnrollSession { session: Arc::new(session), done: None, started: Instant::now() },
                    );
                    ctx.send_datagram(&challenge, "enroll_challenge").await;
                });
            }
            EnrollMessage::EnrollFinish { .. } => {
                let Some(s) = sessions.get(&code_id) else {
                    drop(sessions);
                    self.refuse(Cause::EnrollNoStart, &self.stats.enroll_refused, |before| {
                        debug!(code = %code_id, %from, before, "enrollment finish without a start; dropped");
                    });
                    return;
                };
                if let Some(done) = &s.done {
                    send(done.clone());
                    return;
                }
                let host = match s.session.on_finish(&message) {
                    Ok(host) => host,
                    Err(EnrollError::WrongCode) => {
                        // Each finish would test a guess: the session ends here.
                        sessions.remove(&code_id);
                        drop(sessions);
                        self.refuse(Cause::EnrollWrongCode, &self.stats.enroll_refused, |before| {
                            warn!(code = %code_id, %from, before, "{}", Cause::EnrollWrongCode.text());
                        });
                        return;
                    }
                    Err(EnrollError::Malformed) => {
                        Stats::bump(&self.stats.malformed);
                        return;
                    }
                };
                let session = s.session.clone();
                drop(sessions);
                let store = self.store.clone();
                let stats = self.stats.clone();
                let sessions = self.sessions.clone();
                let registry = self.registry.clone();
                let ctx = self.reply_to(&self.key, from, request_len);
                self.in_flight.spawn(async move {
                    let id = code_id.clone();
                    let h = host.clone();
                    let enrolled = match store.exec(move |db| db.complete_enrollment(&id, &h, now_ms())).await {
                        Ok(Some(k)) => k,
                        Ok(None) => {
                            Stats::bump(&stats.enroll_refused);
                            warn!(code = %code_id, %from, "enrollment refused: the code was used or expired meanwhile");
                            return;
                        }
                        Err(e) => {
                            error!(code = %code_id, error = %e, "cannot record an enrollment; the agent will retry");
                            return;
                        }
                    };
                    // Known before the agent can use its key.
                    registry.refresh_async().await;
                    Stats::bump(&stats.enrolled);
                    info!(code = %code_id, agent_id = %enrolled.agent_id, name = %enrolled.name, %host, %from,
                          "AGENT ENROLLED with its own key");
                    let done = session.done(&enrolled);
                    if let Some(s) = sessions.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&code_id) {
                        s.done = Some(done.clone());
                    }
                    ctx.send_datagram(&done, "enroll_done").await;
                });
            }
            other => {
                Stats::bump(&self.stats.unexpected);
                debug!(%from, kind = ?std::mem::discriminant(other), "dropped an enrollment answer sent to the collector");
            }
        }
    }

    /// Tell the sender of an authentic token refused for its timestamp what time it is here,
    /// so that an agent with a wrong clock can reseal and still get its SOS through. The token
    /// itself stays refused: replay protection is unchanged. One hint per token per interval
    /// (a replayed token from many forged addresses gets one), within a global rate.
    fn time_hint(&self, key: &Key, token: &str, request_len: usize, to: SocketAddr, token_time: u64) {
        if !self.refusals().may_hint(token, Instant::now()) {
            let line = self.refusals().note(Cause::HintWithheld, Instant::now());
            if let Some(line) = line {
                debug!(%to, before = line.before, "{}", Cause::HintWithheld.text());
            }
            return;
        }
        Stats::bump(&self.stats.time_hints);
        let ctx = self.reply_to(key, to, request_len);
        let hint = Message::TimeHint(TimeHint { server_time: unix_now(), token_time });
        self.in_flight.spawn(async move { ctx.send(&hint).await });
    }
}

/// Where and how to answer one request.
#[derive(Debug)]
struct Reply {
    socket: Arc<UdpSocket>,
    key: Key,
    stats: Arc<Stats>,
    /// Where a suppressed reply is told, at a bounded rate.
    refusals: Arc<Mutex<Refusals>>,
    to: SocketAddr,
    request_len: usize,
}

impl Reply {
    /// Whether `message` sealed would be no larger than the request (the seal's size depends
    /// only on the plaintext's length).
    fn fits(&self, message: &Message) -> bool {
        serde_json::to_vec(message)
            .map(|p| sos_shared::protocol::sealed_len(p.len()) <= self.request_len)
            .unwrap_or(false)
    }

    /// Seal and send `message`, unless it would be larger than the request.
    async fn send(&self, message: &Message) {
        let datagram = match self.key.seal(message, unix_now()) {
            Ok(d) => d,
            Err(e) => {
                error!(error = %e, "cannot seal a reply");
                return;
            }
        };
        self.send_datagram(&datagram, message.kind()).await;
    }

    /// Seal and send `message` from the receive path without a task (heartbeats: the most
    /// frequent answer); only if the socket's send buffer is full does a task wait for room.
    fn send_now(self, message: &Message, in_flight: &TaskTracker) {
        let datagram = match self.key.seal(message, unix_now()) {
            Ok(d) => d,
            Err(e) => {
                error!(error = %e, "cannot seal a reply");
                return;
            }
        };
        let kind = message.kind();
        if self.too_large(&datagram, kind) {
            return;
        }
        match self.socket.try_send_to(&datagram, self.to) {
            Ok(_) => Stats::bump(&self.stats.replies_sent),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                in_flight.spawn(async move { self.send_datagram(&datagram, kind).await });
            }
            Err(e) => warn!(to = %self.to, error = %e, "cannot send a reply"),
        }
    }

    /// Whether `datagram` would be larger than the request: then it is not sent (no
    /// amplification), and that is counted and logged.
    fn too_large(&self, datagram: &[u8], kind: &str) -> bool {
        if datagram.len() <= self.request_len {
            return false;
        }
        Stats::bump(&self.stats.replies_suppressed);
        // Bounded: a small authentic datagram can be replayed from many forged addresses.
        let line = self.refusals.lock().unwrap_or_else(|e| e.into_inner()).note(Cause::ReplySuppressed, Instant::now());
        if let Some(line) = line {
            warn!(to = %self.to, reply = datagram.len(), request = self.request_len, kind, before = line.before,
                  "reply suppressed: it would be larger than its request");
        }
        true
    }

    /// Send a ready datagram, unless it is larger than the request.
    async fn send_datagram(&self, datagram: &[u8], kind: &str) {
        if self.too_large(datagram, kind) {
            return;
        }
        match self.socket.send_to(datagram, self.to).await {
            Ok(_) => Stats::bump(&self.stats.replies_sent),
            Err(e) => warn!(to = %self.to, error = %e, "cannot send a reply"),
        }
    }
}

async fn store_and_ack(store: Store, alert: NewAlert, reply: Reply) {
    let alert_id = alert.sos.alert_id;
    let test = alert.sos.test;
    let attempt = alert.sos.attempt;
    match store.insert(alert).await {
        Ok(stored) => {
            let status = match stored {
                Stored::New => {
                    Stats::bump(&reply.stats.sos_stored);
                    info!(test, attempt, "SOS stored; notifying responders");
                    AckStatus::Stored
                }
                Stored::Duplicate => {
                    Stats::bump(&reply.stats.sos_duplicate);
                    debug!(attempt, "SOS retransmission of a stored alert; acknowledging again");
                    AckStatus::Duplicate
                }
            };
            let ack = Message::SosAck(SosAck { alert_id, status, server_time: unix_now() });
            reply.send(&ack).await;
        }
        Err(e) => {
            Stats::bump(&reply.stats.store_errors);
            error!(error = %e, "CANNOT STORE AN SOS: not acknowledged, the agent will retry or fail over");
        }
    }
}

async fn cancel_and_ack(store: Store, alert_id: AlertId, reason: String, key_id: String, reply: Reply) {
    match store.cancel(alert_id, reason.clone(), key_id, now_ms()).await {
        Ok(outcome @ (Cancelled::New | Cancelled::Already)) => {
            if outcome == Cancelled::New {
                Stats::bump(&reply.stats.cancelled);
                warn!(%reason, "SOS CANCELLED by the sender; telling responders");
            }
            let ack = Message::CancelAck(CancelAck { alert_id, server_time: unix_now() });
            reply.send(&ack).await;
        }
        Ok(Cancelled::Unknown) => {
            Stats::bump(&reply.stats.cancel_unknown);
            warn!("CANCEL for an alert this collector does not have; not acknowledged");
        }
        Err(e) => {
            Stats::bump(&reply.stats.store_errors);
            error!(error = %e, "cannot record a cancellation; not acknowledged, the agent will retry");
        }
    }
}

/// The socket buffers the kernel granted, bytes (as usable for data: Linux reports twice the
/// size asked for, half of it for its own bookkeeping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    /// Receive buffer.
    pub receive: usize,
    /// Send buffer.
    pub send: usize,
}

/// Ask for `bytes` of receive and send buffer on `socket`. Unprivileged, the kernel caps the
/// request at `net.core.rmem_max` / `wmem_max`; with `CAP_NET_ADMIN` (root) the cap is lifted.
/// Returns what was granted; the caller warns when it is less than asked.
///
/// ## Platform-specific
/// - **Linux:** `SO_RCVBUF`/`SO_SNDBUF`, then `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` if short.
/// - **Other Unix:** `SO_RCVBUF`/`SO_SNDBUF`.
/// - **Windows:** left as the system sets it (returns zeros).
pub fn size_socket_buffers(socket: &tokio::net::UdpSocket, bytes: usize) -> SocketBuffers {
    #[cfg(unix)]
    {
        use rustix::net::sockopt;
        let half = if cfg!(target_os = "linux") { 2 } else { 1 };
        let _ = sockopt::set_socket_recv_buffer_size(socket, bytes);
        let _ = sockopt::set_socket_send_buffer_size(socket, bytes);
        #[cfg(target_os = "linux")]
        {
            if sockopt::socket_recv_buffer_size(socket).unwrap_or(0) / half < bytes {
                let _ = sockopt::set_socket_recv_buffer_size_force(socket, bytes);
            }
            if sockopt::socket_send_buffer_size(socket).unwrap_or(0) / half < bytes {
                let _ = sockopt::set_socket_send_buffer_size_force(socket, bytes);
            }
        }
        SocketBuffers {
            receive: sockopt::socket_recv_buffer_size(socket).unwrap_or(0) / half,
            send: sockopt::socket_send_buffer_size(socket).unwrap_or(0) / half,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (socket, bytes);
        SocketBuffers { receive: 0, send: 0 }
    }
}
