//! The receive loop: authenticate, store, acknowledge.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use sos_shared::protocol::{split_datagram, AckStatus, CancelAck, HeartbeatAck, SosAck, TimeHint, MAX_DATAGRAM};
use sos_shared::{unix_now, AlertId, Key, Message, OpenError};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument as _};

use crate::channel::{Channel, Email, Slack};
use crate::config::Config;
use crate::outbox;
use crate::stats::{Stats, StatsSnapshot};
use crate::store::{now_ms, AgentSeen, Cancelled, Db, NewAlert, Store, StoreError, Stored};

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
        let db = Db::open(&config.database_path())?;
        let names = config.channel_names();
        for (channel, n) in db.pending_by_channel()? {
            if names.contains(&channel.as_str()) {
                info!(channel = %channel, pending = n, "resuming notifications pending from before the restart");
            } else {
                warn!(channel = %channel, pending = n,
                      "notifications are pending for a channel that is no longer configured; they stay pending until it is configured again");
            }
        }
        let mut channels = vec![Channel::Log];
        if let Some(s) = &config.slack {
            let slack = Slack::new(s.clone(), config.outbox.attempt_timeout)
                .map_err(|e| CollectorError::Channel { channel: "slack", message: e.to_string() })?;
            channels.push(Channel::Slack(slack));
        }
        if let Some(e) = &config.email {
            let email = Email::new(e.clone(), config.outbox.attempt_timeout)
                .map_err(|err| CollectorError::Channel { channel: "email", message: err.to_string() })?;
            channels.push(Channel::Email(Box::new(email)));
        }
        let (store, writer) = Store::start(db, &names)?;

        let workers = TaskTracker::new();
        let stop_workers = CancellationToken::new();
        for ch in channels {
            let ch = Arc::new(ch);
            let span = info_span!("outbox", channel = ch.name());
            workers.spawn(
                outbox::run_worker(ch, store.clone(), config.outbox.clone(), stop_workers.clone()).instrument(span),
            );
        }
        workers.close();

        let socket = Arc::new(socket);
        info!(listen = %socket.local_addr()?, key_id = %key.id(), channels = ?names, "collector ready");
        let in_flight = TaskTracker::new();
        let receiver = Receiver {
            socket: socket.clone(),
            key,
            config: config.clone(),
            store: store.clone(),
            stats: stats.clone(),
            in_flight: in_flight.clone(),
        };
        receiver.serve(shutdown).await;

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
        Ok(snapshot)
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
}

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

    fn handle(&self, datagram: &[u8], from: SocketAddr) {
        let (key_id, token) = match split_datagram(datagram) {
            Ok(x) => x,
            Err(e) => {
                Stats::bump(&self.stats.malformed);
                debug!(%from, error = %e, "dropped a malformed datagram");
                return;
            }
        };
        if key_id != self.key.id() {
            Stats::bump(&self.stats.unauthenticated);
            debug!(%from, %key_id, "dropped a datagram for an unknown key id");
            return;
        }
        let opened = match self.key.open(token, unix_now(), self.config.window) {
            Ok(o) => o,
            Err(OpenError::Unauthenticated) => {
                Stats::bump(&self.stats.unauthenticated);
                debug!(%from, "dropped a datagram that failed authentication");
                return;
            }
            Err(OpenError::Expired { age_secs }) => {
                Stats::bump(&self.stats.expired);
                warn!(%from, %key_id, clock_difference_secs = -(age_secs as i64), ttl_secs = self.config.window.ttl_secs,
                      "rejected an authentic token {age_secs} s old: a replay, or the sender's clock is behind");
                self.time_hint(datagram.len(), from, unix_now().saturating_sub(age_secs));
                return;
            }
            Err(OpenError::FromFuture { ahead_secs }) => {
                Stats::bump(&self.stats.from_future);
                warn!(%from, %key_id, clock_difference_secs = ahead_secs as i64,
                      max_future_skew_secs = self.config.window.max_future_skew_secs,
                      "rejected an authentic token dated {ahead_secs} s ahead: the sender's clock is fast");
                self.time_hint(datagram.len(), from, unix_now().saturating_add(ahead_secs));
                return;
            }
            Err(OpenError::BadPayload(e)) => {
                Stats::bump(&self.stats.malformed);
                warn!(%from, %key_id, error = %e, "dropped an authentic datagram with an invalid message");
                return;
            }
        };
        let request_len = datagram.len();
        match opened.message {
            Message::Sos(mut sos) => {
                sos.sanitize();
                let alert = NewAlert { sos, received_at_ms: now_ms(), source: from, key_id: key_id.to_string() };
                let ctx = Reply {
                    socket: self.socket.clone(),
                    key: self.key.clone(),
                    stats: self.stats.clone(),
                    to: from,
                    request_len,
                };
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
                });
                let ctx = Reply {
                    socket: self.socket.clone(),
                    key: self.key.clone(),
                    stats: self.stats.clone(),
                    to: from,
                    request_len,
                };
                let ack = Message::HeartbeatAck(HeartbeatAck { server_time: unix_now(), notices: Vec::new() });
                self.in_flight.spawn(async move { ctx.send(&ack).await });
            }
            Message::Cancel(c) => {
                let ctx = Reply {
                    socket: self.socket.clone(),
                    key: self.key.clone(),
                    stats: self.stats.clone(),
                    to: from,
                    request_len,
                };
                let store = self.store.clone();
                let reason: String = c.reason.chars().map(|ch| if ch.is_control() { ' ' } else { ch }).collect();
                let span = info_span!("cancel", alert_id = %c.alert_id, %from);
                self.in_flight
                    .spawn(cancel_and_ack(store, c.alert_id, reason, key_id.to_string(), ctx).instrument(span));
            }
            other => {
                Stats::bump(&self.stats.unexpected);
                debug!(%from, kind = other.kind(), "dropped a message kind the collector does not accept");
            }
        }
    }

    /// Tell the sender of an authentic token refused for its timestamp what time it is here,
    /// so that an agent with a wrong clock can reseal and still get its SOS through. The token
    /// itself stays refused: replay protection is unchanged.
    fn time_hint(&self, request_len: usize, to: SocketAddr, token_time: u64) {
        Stats::bump(&self.stats.time_hints);
        let ctx =
            Reply { socket: self.socket.clone(), key: self.key.clone(), stats: self.stats.clone(), to, request_len };
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
    to: SocketAddr,
    request_len: usize,
}

impl Reply {
    /// Seal and send `message`, unless it would be larger than the request.
    async fn send(&self, message: &Message) {
        let datagram = match self.key.seal(message, unix_now()) {
            Ok(d) => d,
            Err(e) => {
                error!(error = %e, "cannot seal a reply");
                return;
            }
        };
        if datagram.len() > self.request_len {
            Stats::bump(&self.stats.replies_suppressed);
            warn!(to = %self.to, reply = datagram.len(), request = self.request_len,
                  kind = message.kind(), "reply suppressed: it would be larger than its request");
            return;
        }
        match self.socket.send_to(&datagram, self.to).await {
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
