//! The receive loop: every datagram enters here (`Receiver::serve`), is authenticated
//! (`Receiver::handle`), dispatched by kind (SOS, cancel, heartbeat, enrollment in
//! `enroll.rs`), handed to the store and answered (`reply.rs`, the one size guard; `ack.rs`).
//! Socket tuning: `socket.rs`.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sos_shared::enroll::{CollectorSession, ENROLL_KEY_ID};
use sos_shared::protocol::{
    split_datagram, CancelAck, ForwardUpdateAck, HeartbeatAck, RespondAck, RespondStatus, TimeHint, MAX_DATAGRAM,
};
use sos_shared::{unix_now, Key, KeyId, Message, OpenError};
use tokio::net::UdpSocket;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument as _};

use crate::config::Config;
use crate::ratelimit::Limiter;
use crate::refusal::{Cause, Refusals, Summary};
use crate::registry::{Entry, SharedRegistry, Slot};
use crate::response::push::{Heard, Pushes, Recipient};
use crate::stats::Stats;
use crate::store::{now_ms, principal, AgentSeen, NewAlert, Store};

mod ack;
mod enroll;
mod reply;
mod socket;

use ack::{cancel_and_ack, confirm_notice, forward_update_and_ack, popup_shown, respond_and_ack, store_and_ack};
use reply::Reply;
pub use socket::{size_socket_buffers, SocketBuffers};

/// What the receive loop and its per-SOS tasks share.
#[derive(Debug)]
pub(crate) struct Receiver {
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) key: Key,
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) stats: Arc<Stats>,
    /// SOS being committed and acknowledged; shutdown waits for them.
    pub(crate) in_flight: TaskTracker,
    /// Bounds the SOS and CANCEL waiting on the store: a hung disk under a flood of
    /// retransmissions (or site-key replays from forged senders) must not grow memory.
    pub(crate) store_waiters: Arc<tokio::sync::Semaphore>,
    /// Enrolled agents and their keys.
    pub(crate) registry: Arc<SharedRegistry>,
    /// Rate limits.
    pub(crate) limits: Mutex<Limits>,
    /// What was refused, told at a bounded rate (shared with the task that flushes it).
    pub(crate) refusals: Arc<Mutex<Refusals>>,
    /// Enrollment exchanges in progress, by code id.
    pub(crate) sessions: Arc<Mutex<HashMap<String, EnrollSession>>>,
    /// Where every agent was last heard from, and the pushes owed (shared with the push task).
    pub(crate) pushes: Arc<Pushes>,
}

/// A digest of a message: equal for a replay, different for another message sealed in the same
/// second (see `response::push`). The plaintext, not the token text, is digested: a token's
/// text could be altered without changing what it authenticates.
fn message_tag(message: &Message) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(message).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// The rate limiters of the receive path. No limit applies to a datagram before it is
/// authenticated, except to enrollment, which cannot be checked cheaply (docs/SECURITY.md).
#[derive(Debug)]
pub(crate) struct Limits {
    /// Per agent (site key: per key and source address and port), after authentication.
    pub(crate) agent: Limiter<String>,
    /// Enrollment starts for codes that are not pending, per source address.
    pub(crate) enroll_source: Limiter<IpAddr>,
    /// Enrollment starts for codes that are not pending, from everyone.
    pub(crate) enroll: Limiter<()>,
    /// Enrollment starts per pending code (each distinct start costs the code an attempt).
    pub(crate) enroll_code: Limiter<String>,
}

/// The most SOS and CANCEL waiting on the store at once: far above a burst the store commits
/// in a second (PERFORMANCE.md), small enough to bound memory while a hung disk holds them.
pub(crate) const MAX_STORE_WAITERS: usize = 20_000;

/// Starts for one pending code: bounds the store work a flood of starts naming a code (its id
/// travels in clear) can cause before the code is burnt.
pub(crate) const ENROLL_PER_CODE: crate::ratelimit::Rate = crate::ratelimit::Rate { per_sec: 2.0, burst: 10.0 };

/// Write a summary of refusals counted in an interval that ended.
pub(crate) fn log_summary(summary: Summary) {
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
pub(crate) struct EnrollSession {
    session: Arc<CollectorSession>,
    done: Option<Vec<u8>>,
    started: Instant,
}

/// How long an enrollment exchange is remembered.
const ENROLL_SESSION_TTL: Duration = Duration::from_secs(15 * 60);

impl Receiver {
    pub(crate) async fn serve(&self, shutdown: impl Future<Output = ()>) {
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

    /// A place among the requests waiting on the store, or `None` (counted and told at the
    /// bounded rate) when [`MAX_STORE_WAITERS`] wait already.
    fn store_waiter(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.store_waiters.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.refuse(Cause::StoreBusy, &self.stats.store_errors, |before| {
                error!(before, waiting = MAX_STORE_WAITERS, "{}", Cause::StoreBusy.text());
            });
        }
        permit
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
                let sos = matches!(opened.message, Message::Sos(_) | Message::ForwardSos(_));
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
        // The address pushes go to: the source of the sender's last authentic datagram. A
        // site-key sender is known by host and user, which only `sos` and `heartbeat` carry.
        let recipient = match (&enrolled, &opened.message) {
            (Some(e), _) => Some(Recipient::Agent(e.agent_id.clone())),
            (None, Message::Sos(s)) => Some(self.site_sender(key_id, &s.host, &s.user)),
            (None, Message::Heartbeat(h)) => Some(self.site_sender(key_id, &h.host, &h.user)),
            _ => None,
        };
        let responder =
            enrolled.as_ref().and_then(|e| self.config.responder_for_agent(&e.name)).map(|r| r.name.clone());
        if let Some(who) = recipient.clone() {
            let declares_responder = match &opened.message {
                Message::Heartbeat(h) => Some(h.responder),
                _ => None,
            };
            let heard = Heard {
                who,
                addr: from,
                token_time: opened.timestamp,
                message_tag: message_tag(&opened.message),
                key: &key,
                responder: responder.clone(),
                declares_responder,
            };
            self.pushes.seen(heard, Instant::now());
        }
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
                        responder: false,
                    });
                }
                let alert = NewAlert {
                    sos,
                    received_at_ms: now_ms(),
                    source: from,
                    key_id: key_id.to_string(),
                    enrolled,
                    site: None,
                };
                let Some(waiting) = self.store_waiter() else { return };
                let ctx = reply(&key);
                let store = self.store.clone();
                let span = info_span!("sos", alert_id = %alert.sos.alert_id, %from);
                self.in_flight.spawn(
                    async move {
                        let _waiting = waiting;
                        store_and_ack(store, alert, ctx).await
                    }
                    .instrument(span),
                );
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
                    responder: hb.responder,
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
                // The sender's unconfirmed notices, as many as fit (they go first when the
                // reply would outgrow the request; the push task also sends each on its own).
                if let Some(who) = &recipient {
                    for notice in self.pushes.notices_for(who, Instant::now()) {
                        ack.notices.push(notice);
                        if !ctx.fits(&Message::HeartbeatAck(ack.clone())) {
                            ack.notices.pop();
                            break;
                        }
                    }
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
                let Some(waiting) = self.store_waiter() else { return };
                let store = self.store.clone();
                let reason: String = c.reason.chars().map(|ch| if ch.is_control() { ' ' } else { ch }).collect();
                let span = info_span!("cancel", alert_id = %c.alert_id, %from);
                let principal = principal(&key_id.to_string(), enrolled.as_ref());
                self.in_flight.spawn(
                    async move {
                        let _waiting = waiting;
                        cancel_and_ack(store, c.alert_id, reason, principal, ctx).await
                    }
                    .instrument(span),
                );
            }
            Message::Respond(r) => {
                // Only a responder desktop may respond, and the acknowledgement is attributed
                // to the responder configured for it, never to text it sends.
                let Some(name) = responder.filter(|_| enrolled.is_some()) else {
                    self.refuse(Cause::NotAResponder, &self.stats.not_a_responder, |before| {
                        warn!(%from, %key_id, agent = enrolled.as_ref().map(|e| e.name.as_str()).unwrap_or("(site key)"),
                              before, "{}", Cause::NotAResponder.text());
                    });
                    return;
                };
                let ctx = reply(&key);
                let widest =
                    RespondAck { alert_id: r.alert_id, status: RespondStatus::Acknowledged, server_time: unix_now() };
                if !ctx.fits(&Message::RespondAck(widest)) {
                    Stats::bump(&self.stats.replies_suppressed);
                    warn!(%from, %key_id, request = request_len, min_plaintext = sos_shared::protocol::MIN_RESPOND_PLAINTEXT,
                          "respond not recorded: too small for its acknowledgement (pad it, PROTOCOL.md 6.3)");
                    return;
                }
                let Some(waiting) = self.store_waiter() else { return };
                Stats::bump(&self.stats.responds);
                let store = self.store.clone();
                let note: String = r.note.chars().map(|ch| if ch.is_control() { ' ' } else { ch }).collect();
                let span = info_span!("respond", alert_id = %r.alert_id, responder = %name, %from);
                self.in_flight.spawn(
                    async move {
                        let _waiting = waiting;
                        respond_and_ack(store, r.alert_id, name, note, ctx).await
                    }
                    .instrument(span),
                );
            }
            Message::BroadcastReceipt(receipt) => {
                Stats::bump(&self.stats.receipts);
                let Some(e) = &enrolled else { return };
                // Only the first receipt of a pushed broadcast reaches the store.
                let Some(name) = self.pushes.broadcast_received(&e.agent_id, receipt.alert_id, receipt.seq) else {
                    return;
                };
                let Some(waiting) = self.store_waiter() else { return };
                let store = self.store.clone();
                self.in_flight.spawn(async move {
                    let _waiting = waiting;
                    popup_shown(store, receipt.alert_id, name).await
                });
            }
            Message::NoticeReceipt(receipt) => {
                Stats::bump(&self.stats.receipts);
                let who = match &enrolled {
                    Some(e) => Recipient::Agent(e.agent_id.clone()),
                    None => self.site_sender(key_id, "", ""),
                };
                // Only a notice owed to this sender, once while it is being confirmed.
                if !self.pushes.notice_received(&who, receipt.alert_id, receipt.event, Instant::now()) {
                    return;
                }
                let Some(waiting) = self.store_waiter() else { return };
                let store = self.store.clone();
                self.in_flight.spawn(async move {
                    let _waiting = waiting;
                    confirm_notice(store, receipt.alert_id, receipt.event).await
                });
            }
            Message::ForwardSos(f) => {
                // Only an enrolled site: the site's name is its enrollment's, never the payload's.
                let Some(site) = self.site_peer(entry.as_ref(), from, key_id) else { return };
                Stats::bump(&self.stats.forwarded_in);
                let clean = |t: &str| t.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>();
                let mut sos = f.to_sos();
                sos.sanitize();
                let alert = NewAlert {
                    sos,
                    received_at_ms: now_ms(),
                    source: from,
                    key_id: key_id.to_string(),
                    enrolled: Some(crate::store::EnrolledAs {
                        agent_id: site.who.agent_id.clone(),
                        name: clean(&f.sender),
                        host: clean(&f.sender_host),
                    }),
                    site: Some(site.who.name.clone()),
                };
                let Some(waiting) = self.store_waiter() else { return };
                let ctx = reply(&key);
                let store = self.store.clone();
                let span = info_span!("forwarded_sos", alert_id = %alert.sos.alert_id, site = %site.who.name, %from);
                self.in_flight.spawn(
                    async move {
                        let _waiting = waiting;
                        store_and_ack(store, alert, ctx).await
                    }
                    .instrument(span),
                );
            }
            Message::ForwardUpdate(u) => {
                let Some(site) = self.site_peer(entry.as_ref(), from, key_id) else { return };
                let ctx = reply(&key);
                let widest = ForwardUpdateAck { alert_id: u.alert_id, event: u.event, server_time: unix_now() };
                if !ctx.fits(&Message::ForwardUpdateAck(widest)) {
                    Stats::bump(&self.stats.replies_suppressed);
                    warn!(%from, %key_id, request = request_len, min_plaintext = sos_shared::protocol::MIN_FORWARD_UPDATE_PLAINTEXT,
                          "forward_update not recorded: too small for its acknowledgement (pad it, PROTOCOL.md 6.3)");
                    return;
                }
                let Some(waiting) = self.store_waiter() else { return };
                let store = self.store.clone();
                let stats = self.stats.clone();
                let span = info_span!("forward_update", alert_id = %u.alert_id, site = %site.who.name, %from);
                self.in_flight.spawn(
                    async move {
                        let _waiting = waiting;
                        forward_update_and_ack(store, u, site.who.clone(), stats, ctx).await
                    }
                    .instrument(span),
                );
            }
            other => {
                Stats::bump(&self.stats.unexpected);
                debug!(%from, kind = other.kind(), "dropped a message kind the collector does not accept");
            }
        }
    }

    /// The enrolled site collector that sealed a forwarded message, or `None` (counted, told at
    /// the bounded rate) when the key is the site key or a workstation's.
    fn site_peer(
        &self,
        entry: Option<&Entry>,
        from: SocketAddr,
        key_id: KeyId,
    ) -> Option<Arc<crate::registry::AgentEntry>> {
        match entry.filter(|e| e.agent.site) {
            Some(e) => Some(e.agent.clone()),
            None => {
                self.refuse(Cause::NotASite, &self.stats.forward_refused, |before| {
                    warn!(%from, %key_id, agent = entry.map(|e| e.agent.who.name.as_str()).unwrap_or("(site key)"),
                          before, "{}", Cause::NotASite.text());
                });
                None
            }
        }
    }

    /// A sender using the site key, known by the host and user it reports.
    fn site_sender(&self, key_id: KeyId, host: &str, user: &str) -> Recipient {
        let clean = |t: &str| t.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>();
        Recipient::Site { key_id: key_id.to_string(), host: clean(host), user: clean(user) }
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
            match store.promote(&agent_id, &key_id.to_string(), until).await {
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
