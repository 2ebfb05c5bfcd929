//! Pushes: the collector's datagrams that are not replies. `alert_broadcast` to responder
//! desktops, `responder_notice` to senders (docs/PROTOCOL.md section 10).
//!
//! [`Pushes`] is what the receive path and the push task share, in memory:
//! - where every agent was last heard from ([`Pushes::seen`]): the source address of its last
//!   authentic datagram, the key that sealed it, and whether it is a responder desktop. Only a
//!   newer message may move it (a later timestamp, or a message not yet seen in the same
//!   second), so a replayed datagram from a forged source cannot redirect pushes. (The presence the store records is only what
//!   `agents list` shows; a restarted collector waits for each agent's next datagram.)
//! - what responder desktops should show ([`Showing`]) and the notices owed to senders
//!   ([`PendingNotice`]), both read from the store by [`run`] on every change and every
//!   [`REFRESH_EVERY`];
//! - one `Track` per (responder agent, alert) and per (sender, notice): what was pushed,
//!   when to repeat it, what the agent confirmed.
//!
//! [`Pushes::due`] is the whole schedule: a push goes only to an agent that is online (an
//! authentic datagram within `responder_offline_after`), repeats with backoff (1 s doubling to
//! 30 s, ±20 %) until its receipt, at most once a second per (agent, alert), and all pushes
//! together stay under [`PUSH_PER_SEC`]. Work and memory are bounded: [`MAX_TRACKED`] tracks,
//! [`MAX_SITE_RECIPIENTS`] site-key senders.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sos_shared::backoff::Backoff;
use sos_shared::protocol::{AlertBroadcast, BroadcastState, NoticeEvent, ResponderNotice};
use sos_shared::{unix_now, AlertId, Key, Message};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::store::{now_ms, AlertState, PopupTarget, Response as _, Store};

use crate::registry::{SharedRegistry, Slot};
use crate::stats::Stats;

/// All pushes together, per second (a token bucket with a burst of one second's worth): a
/// thousand open alerts times twenty responder desktops cannot make the collector a traffic
/// source of more than this.
pub const PUSH_PER_SEC: f64 = 200.0;
/// How a push is repeated until its receipt.
pub const PUSH_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
/// The shortest time between two pushes to one agent about one alert (even when the alert
/// changes faster).
pub const MIN_PUSH_INTERVAL: Duration = Duration::from_secs(1);
/// The most tracks (agent × alert, sender × notice) kept; beyond it new pushes wait until older
/// ones end (counted `pushes_deferred`).
pub const MAX_TRACKED: usize = 100_000;
/// The most site-key senders whose address is kept (enrolled agents are bounded by the
/// registry; anyone with the site key could invent host and user names).
pub const MAX_SITE_RECIPIENTS: usize = 50_000;
/// See `State::swept`.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// The store is read again this often even without a change (commits by another process).
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Store reads a second in a storm of commits, after a burst of [`READ_BURST`] (each commit
/// that changes an alert wakes the push task; on SQLite the pending notices are read on the
/// writer thread, the popup targets on a read connection).
const READS_PER_SEC: f64 = 50.0;
/// See [`READS_PER_SEC`].
const READ_BURST: f64 = 10.0;
/// A store read that takes longer than this is abandoned; pushes go on with what was read last.
pub const STORE_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// A notice confirmed by its receipt is not pushed again for this long, while the store
/// records the confirmation (and again if the store could not).
const CONFIRMING: Duration = Duration::from_secs(10);

/// Who a push goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Recipient {
    /// An enrolled agent, by agent id.
    Agent(String),
    /// A sender using the site key: its key id (hex) and the host and user it reports.
    Site {
        /// The site key's id, as the store writes it.
        key_id: String,
        /// The host name of its heartbeats and alerts.
        host: String,
        /// The login name of its heartbeats and alerts.
        user: String,
    },
}

impl Recipient {
    /// The sender of an alert from the store's principal (`agent:<id>` or the site key's id)
    /// and the alert's host and user.
    pub fn of_principal(principal: &str, host: &str, user: &str) -> Recipient {
        match principal.strip_prefix("agent:") {
            Some(id) => Recipient::Agent(id.to_owned()),
            None => Recipient::Site { key_id: principal.to_owned(), host: host.to_owned(), user: user.to_owned() },
        }
    }

    /// Whether a datagram from `self` may speak for the sender `owner` (a receipt carries no
    /// host or user: any holder of the site key speaks for every site-key sender).
    fn speaks_for(&self, owner: &Recipient) -> bool {
        match (self, owner) {
            (Recipient::Agent(a), Recipient::Agent(b)) => a == b,
            (Recipient::Site { key_id: a, .. }, Recipient::Site { key_id: b, .. }) => a == b,
            _ => false,
        }
    }
}

/// The most messages of one second that may move an agent's address (bounds a burst of
/// retransmissions sealed in one second).
const MAX_TAGS: usize = 8;

/// Where an agent was last heard from.
#[derive(Debug, Clone)]
struct Seen {
    /// The source of its last authentic datagram (of any kind): pushes go there only.
    addr: SocketAddr,
    /// The timestamp of the token that set `addr`: only a newer token moves it, or a new
    /// message of the same second.
    token_time: u64,
    /// The digests of the messages of second `token_time` (at most [`MAX_TAGS`]).
    tags: Vec<u64>,
    /// When it was last heard from (any authentic datagram, even one that did not move `addr`).
    at: Instant,
    /// Since when it has been online without a gap: a track pushed before is pushed at once again.
    online_since: Instant,
    /// The key that sealed its last datagram (after a rotation, the new one).
    key: Key,
    /// The configured responder whose desktop this is (`Config::responder_for_agent`).
    responder: Option<String>,
    /// Its heartbeats say `responder: true`.
    declares_responder: bool,
}

/// An alert as responder desktops should show it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Showing {
    /// The broadcast, fitted, with the alert's current `seq` (`reminder` set per agent).
    pub broadcast: AlertBroadcast,
    /// The configured responders it was sent to (every tier reached).
    pub responders: Vec<String>,
    /// Bumped by each reminder of a later tier.
    pub reminder_seq: u64,
}

impl Showing {
    /// What responder desktops show of a popup target of the store.
    pub fn of_target(t: PopupTarget) -> Showing {
        let state = match t.state {
            AlertState::Received | AlertState::Notified => BroadcastState::Open,
            AlertState::Acknowledged => BroadcastState::Acknowledged,
            AlertState::Cancelled => BroadcastState::Cancelled,
            // A cancelled alert checked in person: closed, by whom.
            AlertState::Resolved | AlertState::Checked => BroadcastState::Resolved,
        };
        let a = t.alert;
        let mut broadcast = AlertBroadcast {
            alert_id: a.alert_id,
            test: a.test,
            triggered_at: a.triggered_at.max(0) as u64,
            user: a.user,
            host: a.host,
            ip: a.ip,
            location: a.location,
            message: a.message,
            state,
            responder: t.by,
            note: t.note,
            seq: t.seq,
            reminder: false,
        };
        broadcast.fit_to_datagram();
        Showing { broadcast, responders: t.responders, reminder_seq: t.reminder_seq }
    }

    fn closed(&self) -> bool {
        self.broadcast.state == BroadcastState::Resolved
    }
}

/// A notice owed to a sender, not confirmed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingNotice {
    /// The sender.
    pub recipient: Recipient,
    /// The notice.
    pub notice: ResponderNotice,
}

/// One push being repeated until its receipt.
#[derive(Debug, Clone)]
struct Track {
    /// The `seq` last pushed (notices: 0).
    seq: u64,
    /// The highest `seq` confirmed (0: none).
    confirmed: u64,
    /// Pushes since the content last changed (the backoff round).
    round: u32,
    /// Not before this.
    next_at: Instant,
    /// The last push.
    last_push: Option<Instant>,
    /// The recipient's `online_since` at the last push.
    online_since: Option<Instant>,
    /// A notice's receipt arrived at this time (the store is confirming it).
    confirmed_at: Option<Instant>,
}

impl Track {
    fn new(now: Instant) -> Track {
        Track { seq: 0, confirmed: 0, round: 0, next_at: now, last_push: None, online_since: None, confirmed_at: None }
    }

    /// Whether to push now; if so, the next repeat is scheduled.
    fn due(&mut self, now: Instant, online_since: Instant) -> bool {
        if self.online_since != Some(online_since) {
            // Back online (or first seen): repeat at once, from the first round.
            self.round = 0;
            self.next_at = now;
        }
        let earliest = self.last_push.map_or(now, |t| t + MIN_PUSH_INTERVAL);
        if now < self.next_at.max(earliest) {
            return false;
        }
        true
    }

    fn pushed(&mut self, now: Instant, online_since: Instant, rng: &mut fastrand::Rng) {
        self.last_push = Some(now);
        self.online_since = Some(online_since);
        self.next_at = now + PUSH_BACKOFF.delay(self.round, rng).max(MIN_PUSH_INTERVAL);
        self.round = self.round.saturating_add(1);
    }
}

#[derive(Debug)]
struct State {
    presence: HashMap<Recipient, Seen>,
    site_recipients: usize,
    /// The last sweep of offline site-key senders (at most one per [`SWEEP_EVERY`]: a full
    /// table of senders all online must not cost a sweep per datagram).
    swept: Option<Instant>,
    showing: Vec<Showing>,
    notices: Vec<PendingNotice>,
    /// (agent id, alert) → broadcast track.
    broadcasts: HashMap<(String, AlertId), Track>,
    /// (sender, alert, event) → notice track.
    notice_tracks: HashMap<(Recipient, AlertId, NoticeEvent), Track>,
    /// The global token bucket: tokens and when it was last filled.
    tokens: f64,
    filled: Instant,
    rng: fastrand::Rng,
}

/// The push schedule and the presence it is built on; shared by the receive path and [`run`].
#[derive(Debug)]
pub struct Pushes {
    state: Mutex<State>,
    /// An agent is online while it sent an authentic datagram within this long.
    offline_after: Duration,
    stats: Arc<Stats>,
}

/// An authentic datagram, as [`Pushes::seen`] notes it.
#[derive(Debug)]
pub struct Heard<'a> {
    /// Its sender.
    pub who: Recipient,
    /// Its source address.
    pub addr: SocketAddr,
    /// Its token's timestamp.
    pub token_time: u64,
    /// A digest of its message: tells two messages sealed in the same second apart, and a
    /// replay (the same message again) from one.
    pub message_tag: u64,
    /// The key that sealed it.
    pub key: &'a Key,
    /// The configured responder of an enrolled agent (`Config::responder_for_agent`).
    pub responder: Option<String>,
    /// The `responder` flag of a heartbeat (`None` for other kinds: the last heartbeat's stands).
    pub declares_responder: Option<bool>,
}

/// A datagram to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The recipient's last authenticated address.
    pub to: SocketAddr,
    /// Sealed with the recipient's key.
    pub datagram: Vec<u8>,
    /// `alert_broadcast` or `responder_notice`.
    pub kind: &'static str,
}

impl Pushes {
    /// An empty schedule; agents are online for `offline_after` after each authentic datagram.
    pub fn new(offline_after: Duration, stats: Arc<Stats>) -> Pushes {
        let now = Instant::now();
        Pushes {
            state: Mutex::new(State {
                presence: HashMap::new(),
                site_recipients: 0,
                swept: None,
                showing: Vec::new(),
                notices: Vec::new(),
                broadcasts: HashMap::new(),
                notice_tracks: HashMap::new(),
                tokens: PUSH_PER_SEC,
                filled: now,
                rng: fastrand::Rng::new(),
            }),
            offline_after,
            stats,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An authentic datagram arrived (see [`Heard`]).
    pub fn seen(&self, heard: Heard<'_>, now: Instant) {
        let Heard { who, addr, token_time, message_tag, key, responder, declares_responder } = heard;
        let offline_after = self.offline_after;
        let mut st = self.state();
        if let Some(s) = st.presence.get_mut(&who) {
            if now.saturating_duration_since(s.at) > offline_after {
                s.online_since = now;
            }
            s.at = now;
            // Only a newer message moves the address: a replay (an older timestamp, or a message
            // already seen in this second) from a forged source cannot redirect pushes. NAT
            // rebinding moves it with the next datagram the agent seals, and so does an agent's
            // heartbeat from its listening socket sent in the same second as an SOS or respond
            // from another socket (timestamps are whole seconds).
            let moved_from = s.addr;
            if token_time > s.token_time {
                s.addr = addr;
                s.token_time = token_time;
                s.tags.clear();
                s.tags.push(message_tag);
                s.key = key.clone();
            } else if token_time == s.token_time && !s.tags.contains(&message_tag) {
                if s.tags.len() < MAX_TAGS {
                    s.tags.push(message_tag);
                    s.addr = addr;
                    s.key = key.clone();
                }
            } else if token_time == s.token_time && addr == s.addr {
                s.key = key.clone();
            }
            s.responder = responder;
            if let Some(d) = declares_responder {
                s.declares_responder = d;
            }
            // A desk heard from a new socket may be a restarted agent that has forgotten what
            // it confirmed: what it should show is pushed again (an agent that still shows it
            // confirms the repeat and changes nothing).
            if s.addr != moved_from {
                if let Recipient::Agent(id) = &who {
                    for ((agent, _), track) in st.broadcasts.iter_mut() {
                        if agent == id && track.confirmed > 0 {
                            *track = Track::new(now);
                        }
                    }
                }
            }
            return;
        }
        if matches!(who, Recipient::Site { .. }) {
            if st.site_recipients >= MAX_SITE_RECIPIENTS {
                if st.swept.is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY) {
                    return;
                }
                st.swept = Some(now);
                st.presence.retain(|r, s| {
                    matches!(r, Recipient::Agent(_)) || now.saturating_duration_since(s.at) <= offline_after
                });
                st.site_recipients = st.presence.keys().filter(|r| matches!(r, Recipient::Site { .. })).count();
                if st.site_recipients >= MAX_SITE_RECIPIENTS {
                    return;
                }
            }
            st.site_recipients += 1;
        }
        let seen = Seen {
            addr,
            token_time,
            tags: vec![message_tag],
            at: now,
            online_since: now,
            key: key.clone(),
            responder,
            declares_responder: declares_responder.unwrap_or(false),
        };
        st.presence.insert(who, seen);
    }

    /// Replace what responder desktops should show and the notices owed (read from the store);
    /// tracks of alerts and notices no longer there end.
    pub fn update(&self, mut showing: Vec<Showing>, notices: Vec<PendingNotice>) {
        // Open alerts first, newest first: under the global cap they go out before the rest.
        showing.sort_by_key(|s| (s.closed(), std::cmp::Reverse(s.broadcast.triggered_at)));
        let mut st = self.state();
        let alerts: std::collections::HashSet<AlertId> = showing.iter().map(|s| s.broadcast.alert_id).collect();
        st.broadcasts.retain(|(_, id), _| alerts.contains(id));
        let owed: std::collections::HashSet<(Recipient, AlertId, NoticeEvent)> =
            notices.iter().map(|n| (n.recipient.clone(), n.notice.alert_id, n.notice.event)).collect();
        st.notice_tracks.retain(|k, _| owed.contains(k));
        st.showing = showing;
        st.notices = notices;
    }

    /// The pushes due at `now`, sealed; their repeats are scheduled.
    pub fn due(&self, now: Instant) -> Vec<Push> {
        let offline_after = self.offline_after;
        let mut guard = self.state();
        let st = &mut *guard;
        let elapsed = now.saturating_duration_since(st.filled).as_secs_f64();
        st.tokens = (st.tokens + elapsed * PUSH_PER_SEC).min(PUSH_PER_SEC);
        st.filled = now;
        let mut out = Vec::new();
        let mut deferred = 0u64;
        let online = |s: &Seen| now.saturating_duration_since(s.at) <= offline_after;
        // Responder desktops online now: (agent id, responder name, presence).
        let desks: Vec<(&String, &String, &Seen)> = st
            .presence
            .iter()
            .filter_map(|(r, s)| match (r, &s.responder) {
                (Recipient::Agent(id), Some(name)) if s.declares_responder && online(s) => Some((id, name, s)),
                _ => None,
            })
            .collect();
        for show in &st.showing {
            let id = show.broadcast.alert_id;
            for (agent, name, seen) in &desks {
                if !show.responders.iter().any(|r| r == *name) {
                    continue;
                }
                let key = ((*agent).clone(), id);
                if !st.broadcasts.contains_key(&key) {
                    // A closed alert is not shown to a desktop that never showed it.
                    if show.closed() {
                        continue;
                    }
                    if st.broadcasts.len() + st.notice_tracks.len() >= MAX_TRACKED {
                        deferred += 1;
                        continue;
                    }
                }
                let track = st.broadcasts.entry(key).or_insert_with(|| Track::new(now));
                let seq = show.broadcast.seq;
                if track.confirmed >= seq {
                    continue;
                }
                if track.seq != seq {
                    track.seq = seq;
                    track.round = 0;
                    track.next_at = now;
                }
                if !track.due(now, seen.online_since) {
                    continue;
                }
                if st.tokens < 1.0 {
                    deferred += 1;
                    continue;
                }
                let mut b = show.broadcast.clone();
                // A reminder is louder only on a desktop that showed the alert already.
                b.reminder = show.reminder_seq > 0 && track.confirmed > 0 && b.state == BroadcastState::Open;
                match seen.key.seal(&Message::AlertBroadcast(b), unix_now()) {
                    Ok(datagram) => {
                        st.tokens -= 1.0;
                        track.pushed(now, seen.online_since, &mut st.rng);
                        out.push(Push { to: seen.addr, datagram, kind: "alert_broadcast" });
                    }
                    Err(e) => warn!(alert_id = %id, error = %e, "cannot seal an alert broadcast"),
                }
            }
        }
        for n in &st.notices {
            let Some(seen) = st.presence.get(&n.recipient).filter(|s| online(s)) else { continue };
            let key = (n.recipient.clone(), n.notice.alert_id, n.notice.event);
            if !st.notice_tracks.contains_key(&key) && st.broadcasts.len() + st.notice_tracks.len() >= MAX_TRACKED {
                deferred += 1;
                continue;
            }
            let track = st.notice_tracks.entry(key).or_insert_with(|| Track::new(now));
            if track.confirmed_at.is_some_and(|t| now.saturating_duration_since(t) < CONFIRMING) {
                continue;
            }
            if !track.due(now, seen.online_since) {
                continue;
            }
            if st.tokens < 1.0 {
                deferred += 1;
                continue;
            }
            match seen.key.seal(&Message::ResponderNotice(n.notice.clone()), unix_now()) {
                Ok(datagram) => {
                    st.tokens -= 1.0;
                    track.pushed(now, seen.online_since, &mut st.rng);
                    out.push(Push { to: seen.addr, datagram, kind: "responder_notice" });
                }
                Err(e) => warn!(alert_id = %n.notice.alert_id, error = %e, "cannot seal a responder notice"),
            }
        }
        if deferred > 0 {
            self.stats.pushes_deferred.fetch_add(deferred, std::sync::atomic::Ordering::Relaxed);
        }
        out
    }

    /// A responder desktop confirmed the broadcast `seq` of an alert. The responder's name
    /// when this is the first receipt of that alert from that desktop (a `popup_shown` event
    /// to record); receipts of pushes that were never sent change nothing.
    pub fn broadcast_received(&self, agent_id: &str, alert_id: AlertId, seq: u64) -> Option<String> {
        let mut st = self.state();
        let responder = st.presence.get(&Recipient::Agent(agent_id.to_owned())).and_then(|s| s.responder.clone());
        let track = st.broadcasts.get_mut(&(agent_id.to_owned(), alert_id))?;
        if seq > track.seq || track.last_push.is_none() {
            return None;
        }
        let first = track.confirmed == 0;
        track.confirmed = track.confirmed.max(seq);
        if first {
            responder
        } else {
            None
        }
    }

    /// A sender confirmed a notice. True when it is owed to that sender and not already being
    /// confirmed: the store should record it.
    pub fn notice_received(&self, from: &Recipient, alert_id: AlertId, event: NoticeEvent, now: Instant) -> bool {
        let mut st = self.state();
        let owner = st
            .notices
            .iter()
            .find(|n| n.notice.alert_id == alert_id && n.notice.event == event && from.speaks_for(&n.recipient))
            .map(|n| n.recipient.clone());
        let Some(owner) = owner else { return false };
        let track = st.notice_tracks.entry((owner, alert_id, event)).or_insert_with(|| Track::new(now));
        if track.confirmed_at.is_some_and(|t| now.saturating_duration_since(t) < CONFIRMING) {
            return false;
        }
        track.confirmed_at = Some(now);
        true
    }

    /// The notices owed to `who`, for its `heartbeat_ack` (unconfirmed, oldest first).
    pub fn notices_for(&self, who: &Recipient, now: Instant) -> Vec<ResponderNotice> {
        let st = self.state();
        st.notices
            .iter()
            .filter(|n| &n.recipient == who)
            .filter(|n| {
                let key = (n.recipient.clone(), n.notice.alert_id, n.notice.event);
                st.notice_tracks
                    .get(&key)
                    .and_then(|t| t.confirmed_at)
                    .is_none_or(|t| now.saturating_duration_since(t) >= CONFIRMING)
            })
            .map(|n| n.notice.clone())
            .collect()
    }

    /// Forget the enrolled agents whose last key `valid` refuses (revoked, or retired by a
    /// rotation): nothing is pushed to a revoked desk, even while it would still count as online.
    pub fn retain_agents(&self, valid: impl Fn(&Key) -> bool) {
        let mut st = self.state();
        st.presence.retain(|r, s| !matches!(r, Recipient::Agent(_)) || valid(&s.key));
    }

    /// How many tracks are kept (for tests and the attack checks).
    pub fn tracked(&self) -> usize {
        let st = self.state();
        st.broadcasts.len() + st.notice_tracks.len()
    }
}

/// Read what to push from the store: popup targets and pending notices, with the site-key
/// senders' host and user from their alerts.
async fn read(store: &Store) -> Result<(Vec<Showing>, Vec<PendingNotice>), crate::store::StoreError> {
    let targets = store.popup_targets(now_ms()).await?;
    let pending = store.pending_notices().await?;
    let senders: HashMap<AlertId, (String, String)> =
        targets.iter().map(|t| (t.alert.alert_id, (t.alert.host.clone(), t.alert.user.clone()))).collect();
    let notices = pending
        .into_iter()
        .filter_map(|(alert_id, principal, notice)| {
            let (host, user) = match senders.get(&alert_id) {
                Some(hu) => hu.clone(),
                // An enrolled sender needs no host and user; a site-key sender's alert that is
                // no longer a popup target (closed over an hour ago) cannot be addressed.
                None if principal.starts_with("agent:") => Default::default(),
                None => return None,
            };
            Some(PendingNotice { recipient: Recipient::of_principal(&principal, &host, &user), notice })
        })
        .collect();
    Ok((targets.into_iter().map(Showing::of_target).collect(), notices))
}

/// The push task: read the store on every change (at most `READS_PER_SEC` in a storm) and every
/// [`REFRESH_EVERY`], and send what is due, every second and after every read. A store that
/// fails or hangs leaves pushes going on with what was read last.
pub async fn run(
    pushes: Arc<Pushes>,
    store: Store,
    registry: Arc<SharedRegistry>,
    socket: Arc<UdpSocket>,
    stop: CancellationToken,
) {
    let changes = store.changes();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = true;
    let mut last_read: Option<Instant> = None;
    let mut last_error_logged: Option<Instant> = None;
    let (mut reads, mut refilled) = (READ_BURST, Instant::now());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changes.notified() => dirty = true,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if dirty || last_read.is_none_or(|t| now.saturating_duration_since(t) >= REFRESH_EVERY) {
            // A storm of commits reads the store at most READS_PER_SEC times a second (after a
            // burst of READ_BURST): on SQLite half of each read goes through the writer thread.
            reads = (reads + now.saturating_duration_since(refilled).as_secs_f64() * READS_PER_SEC).min(READ_BURST);
            refilled = now;
            if reads < 1.0 {
                tokio::time::sleep(Duration::from_secs_f64((1.0 - reads) / READS_PER_SEC)).await;
                reads = 1.0;
                refilled = Instant::now();
            }
            reads -= 1.0;
            dirty = false;
            last_read = Some(Instant::now());
            match tokio::time::timeout(STORE_READ_TIMEOUT, read(&store)).await {
                Ok(Ok((showing, notices))) => pushes.update(showing, notices),
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {} s", STORE_READ_TIMEOUT.as_secs()),
                    };
                    if last_error_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        last_error_logged = Some(Instant::now());
                        warn!(error = %why, "cannot read alerts for responder desktops and sender notices; pushing what was read last (one line a minute)");
                    }
                }
            }
        }
        let agents = registry.snapshot();
        pushes.retain_agents(|key| {
            agents.get(key.id()).is_some_and(|e| {
                !e.agent.revoked && !matches!(e.slot, Slot::Previous { until_ms } if now_ms() > until_ms)
            })
        });
        for p in pushes.due(Instant::now()) {
            match socket.try_send_to(&p.datagram, p.to) {
                Ok(_) => Stats::bump(&pushes.stats.pushes_sent),
                // Repeated by the schedule.
                Err(e) => debug!(to = %p.to, kind = p.kind, error = %e, "push not sent"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sos_shared::protocol::split_datagram;
    use sos_shared::TimeWindow;

    const OFFLINE: Duration = Duration::from_secs(150);

    fn key() -> Key {
        Key::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn showing(id: u128, seq: u64, state: BroadcastState, responders: &[&str]) -> Showing {
        Showing {
            broadcast: AlertBroadcast {
                alert_id: AlertId::from_u128(id),
                test: false,
                triggered_at: 1_700_000_000 + id as u64,
                user: "alice".into(),
                host: "desk-12".into(),
                ip: "10.0.0.12".into(),
                location: "Reception".into(),
                message: String::new(),
                state,
                responder: String::new(),
                note: String::new(),
                seq,
                reminder: false,
            },
            responders: responders.iter().map(|s| s.to_string()).collect(),
            reminder_seq: 0,
        }
    }

    fn pushes() -> Pushes {
        Pushes::new(OFFLINE, Arc::new(Stats::default()))
    }

    fn desk(p: &Pushes, id: &str, name: &str, port: u16, t: u64, now: Instant) {
        p.seen(
            Heard {
                who: Recipient::Agent(id.into()),
                addr: addr(port),
                token_time: t,
                message_tag: 0,
                key: &key(),
                responder: Some(name.into()),
                declares_responder: Some(true),
            },
            now,
        );
    }

    fn opened(push: &Push) -> Message {
        let (_, token) = split_datagram(&push.datagram).unwrap();
        key().open(token, unix_now(), TimeWindow::default()).unwrap().message
    }

    #[test]
    fn a_broadcast_goes_to_the_responders_online_desktops_and_repeats_with_backoff_until_its_receipt() {
        let p = pushes();
        let t0 = Instant::now();
        desk(&p, "a1", "Sam", 7001, 100, t0);
        desk(&p, "a2", "Kim", 7002, 100, t0);
        p.seen(
            Heard {
                who: Recipient::Agent("a3".into()),
                addr: addr(7003),
                token_time: 100,
                message_tag: 0,
                key: &key(),
                responder: None,
                declares_responder: Some(false),
            },
            t0,
        );
        p.update(vec![showing(1, 1, BroadcastState::Open, &["Sam"])], vec![]);
        let first = p.due(t0);
        assert_eq!(first.len(), 1, "only Sam's desk");
        assert_eq!(first[0].to, addr(7001));
        assert!(matches!(opened(&first[0]), Message::AlertBroadcast(b) if b.seq == 1 && !b.reminder));
        // Repeats: never within a second, then about 1 s, 2 s, 4 s … apart (±20 %).
        assert!(p.due(t0 + Duration::from_millis(700)).is_empty());
        let mut at = t0;
        let mut pushes_at = vec![t0];
        for ms in (100..40_000).step_by(100) {
            at = t0 + Duration::from_millis(ms);
            if !p.due(at).is_empty() {
                pushes_at.push(at);
            }
        }
        let gaps: Vec<f64> = pushes_at.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        assert!(gaps.len() >= 4 && gaps.len() <= 6, "{gaps:?}");
        for (i, g) in gaps.iter().enumerate() {
            let base = (1u64 << i).min(30) as f64;
            assert!(*g >= base * 0.8 - 0.11 && *g <= base * 1.2 + 0.11, "gap {i}: {g} ({gaps:?})");
        }
        // The receipt ends it; the first one is the popup shown.
        assert_eq!(p.broadcast_received("a1", AlertId::from_u128(1), 1), Some("Sam".into()));
        assert_eq!(p.broadcast_received("a1", AlertId::from_u128(1), 1), None);
        assert!(p.due(at + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn a_change_is_pushed_at_once_but_not_twice_within_a_second_and_an_old_receipt_does_not_confirm_it() {
        let p = pushes();
        let t0 = Instant::now();
        desk(&p, "a1", "Sam", 7001, 100, t0);
        p.update(vec![showing(1, 1, BroadcastState::Open, &["Sam"])], vec![]);
        assert_eq!(p.due(t0).len(), 1);
        p.broadcast_received("a1", AlertId::from_u128(1), 1);
        p.update(vec![showing(1, 2, BroadcastState::Acknowledged, &["Sam"])], vec![]);
        assert!(p.due(t0 + Duration::from_millis(500)).is_empty(), "1 s per (agent, alert)");
        let pushed = p.due(t0 + Duration::from_secs(1));
        assert!(
            matches!(opened(&pushed[0]), Message::AlertBroadcast(b) if b.seq == 2 && b.state == BroadcastState::Acknowledged)
        );
        // A receipt of seq 1 (late, or replayed) leaves seq 2 unconfirmed; one of seq 3 was never pushed.
        assert_eq!(p.broadcast_received("a1", AlertId::from_u128(1), 3), None);
        p.broadcast_received("a1", AlertId::from_u128(1), 1);
        assert_eq!(p.due(t0 + Duration::from_secs(3)).len(), 1);
    }

    #[test]
    fn nothing_is_pushed_to_an_offline_desktop_and_it_gets_the_alert_at_once_when_back() {
        let p = pushes();
        let t0 = Instant::now();
        desk(&p, "a1", "Sam", 7001, 100, t0);
        p.update(vec![showing(1, 1, BroadcastState::Open, &["Sam"])], vec![]);
        let mut n = 0;
        for s in 0..600 {
            n += p.due(t0 + Duration::from_secs(s)).len();
        }
        // Repeats while online (150 s: 1+2+4+8+16+30+30+30+30 ≈ 150), none after.
        assert!((6..=12).contains(&n), "{n}");
        let back = t0 + Duration::from_secs(600);
        desk(&p, "a1", "Sam", 7009, 700, back);
        let pushed = p.due(back);
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].to, addr(7009), "the new address (NAT rebinding)");
    }

    #[test]
    fn a_replayed_token_from_another_source_does_not_move_the_address() {
        let p = pushes();
        let t0 = Instant::now();
        desk(&p, "a1", "Sam", 7001, 100, t0);
        desk(&p, "a1", "Sam", 6666, 100, t0); // the same token time: a replay
        desk(&p, "a1", "Sam", 6667, 99, t0); // older
        p.update(vec![showing(1, 1, BroadcastState::Open, &["Sam"])], vec![]);
        assert_eq!(p.due(t0)[0].to, addr(7001));
        desk(&p, "a1", "Sam", 7002, 101, t0);
        assert_eq!(p.due(t0 + Duration::from_secs(2))[0].to, addr(7002));
    }

    #[test]
    fn a_new_message_of_the_same_second_moves_the_address_and_its_replay_does_not_move_it_back() {
        // An agent sends `respond` from a short-lived socket and heartbeats from its listening
        // socket in the same second: the heartbeat's address is where pushes must go.
        let p = pushes();
        let t0 = Instant::now();
        let k = key();
        let heard = |port: u16, tag: u64| Heard {
            who: Recipient::Agent("a1".into()),
            addr: addr(port),
            token_time: 100,
            message_tag: tag,
            key: &k,
            responder: Some("Sam".into()),
            declares_responder: Some(true),
        };
        p.seen(heard(7001, 1), t0); // respond, short-lived socket
        p.seen(heard(7002, 2), t0); // heartbeat, listening socket, same second
        p.seen(heard(7001, 1), t0); // the respond replayed (or duplicated by the network)
        p.update(vec![showing(1, 1, BroadcastState::Open, &["Sam"])], vec![]);
        assert_eq!(p.due(t0)[0].to, addr(7002));
    }

    #[test]
    fn a_desk_heard_from_a_new_socket_gets_what_it_confirmed_again() {
        // A responder agent restarted within the offline threshold has forgotten its popups.
        let p = pushes();
        let t0 = Instant::now();
        desk(&p, "a1", "Sam", 7001, 100, t0);
        p.update(vec![showing(1, 1, BroadcastState::Open, &["Sam"])], vec![]);
        assert_eq!(p.due(t0).len(), 1);
        p.broadcast_received("a1", AlertId::from_u128(1), 1);
        assert!(p.due(t0 + Duration::from_secs(5)).is_empty(), "confirmed");
        desk(&p, "a1", "Sam", 7009, 101, t0 + Duration::from_secs(6));
        let again = p.due(t0 + Duration::from_secs(6));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].to, addr(7009));
        assert!(matches!(opened(&again[0]), Message::AlertBroadcast(b) if b.seq == 1));
    }

    #[test]
    fn a_closed_alert_is_not_shown_to_a_desktop_that_never_showed_it() {
        let p = pushes();
        let t0 = Instant::now();
        desk(&p, "a1", "Sam", 7001, 100, t0);
        p.update(vec![showing(1, 5, BroadcastState::Resolved, &["Sam"])], vec![]);
        assert!(p.due(t0).is_empty());
        assert_eq!(p.tracked(), 0);
    }

    #[test]
    fn a_thousand_alerts_to_twenty_desktops_stay_under_the_global_cap_and_all_go_out() {
        let p = pushes();
        let t0 = Instant::now();
        let names: Vec<String> = (0..20).map(|i| format!("R{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            desk(&p, &format!("a{i}"), n, 7000 + i as u16, 100, t0);
        }
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        p.update((0..1000).map(|i| showing(i, 1, BroadcastState::Open, &all)).collect(), vec![]);
        let mut sent = 0usize;
        let mut confirmed = std::collections::HashSet::new();
        for ms in (0..140_000u64).step_by(100) {
            let now = t0 + Duration::from_millis(ms);
            // The desks keep heartbeating.
            if ms % 20_000 == 0 {
                for (i, n) in names.iter().enumerate() {
                    desk(&p, &format!("a{i}"), n, 7000 + i as u16, 100 + ms / 1000, now);
                }
            }
            let out = p.due(now);
            assert!(out.len() as f64 <= PUSH_PER_SEC, "{ms}: {}", out.len());
            sent += out.len();
            for push in &out {
                let i = (push.to.port() - 7000) as usize;
                if let Message::AlertBroadcast(b) = opened(push) {
                    if p.broadcast_received(&format!("a{i}"), b.alert_id, b.seq).is_some() {
                        confirmed.insert((i, b.alert_id));
                    }
                }
            }
        }
        // 200 a second, from a full bucket of 200: 140 s carry at most 200 × 141.
        assert!(sent as f64 <= PUSH_PER_SEC * 141.0, "{sent}");
        assert_eq!(confirmed.len(), 20_000, "every desk got every alert");
        assert!(p.tracked() <= MAX_TRACKED);
    }

    #[test]
    fn notices_go_to_their_sender_only_and_end_with_its_receipt() {
        let p = pushes();
        let t0 = Instant::now();
        let sender = Recipient::Agent("s1".into());
        p.seen(
            Heard {
                who: sender.clone(),
                addr: addr(7100),
                token_time: 100,
                message_tag: 0,
                key: &key(),
                responder: None,
                declares_responder: Some(false),
            },
            t0,
        );
        p.seen(
            Heard {
                who: Recipient::Agent("other".into()),
                addr: addr(7101),
                token_time: 100,
                message_tag: 0,
                key: &key(),
                responder: None,
                declares_responder: Some(false),
            },
            t0,
        );
        let notice = ResponderNotice {
            alert_id: AlertId::from_u128(1),
            event: NoticeEvent::Acknowledged,
            responder: "Sam".into(),
            note: String::new(),
            at: 1,
        };
        p.update(vec![], vec![PendingNotice { recipient: sender.clone(), notice: notice.clone() }]);
        let out = p.due(t0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, addr(7100));
        assert_eq!(opened(&out[0]), Message::ResponderNotice(notice.clone()));
        assert_eq!(p.notices_for(&sender, t0), vec![notice.clone()]);
        assert!(p.notices_for(&Recipient::Agent("other".into()), t0).is_empty());
        // Another agent's receipt confirms nothing; the sender's does, once.
        assert!(!p.notice_received(&Recipient::Agent("other".into()), notice.alert_id, notice.event, t0));
        assert!(p.notice_received(&sender, notice.alert_id, notice.event, t0));
        assert!(!p.notice_received(&sender, notice.alert_id, notice.event, t0));
        assert!(p.notices_for(&sender, t0).is_empty());
        assert!(p.due(t0 + Duration::from_secs(5)).is_empty());
        // The store confirmed it: it is no longer pending.
        p.update(vec![], vec![]);
        assert_eq!(p.tracked(), 0);
    }

    #[test]
    fn a_revoked_desk_gets_nothing_more() {
        let p = pushes();
        let t0 = Instant::now();
        desk(&p, "a1", "Sam", 7001, 100, t0);
        p.update(vec![showing(1, 1, BroadcastState::Open, &["Sam"])], vec![]);
        p.retain_agents(|_| false);
        assert!(p.due(t0).is_empty());
    }

    #[test]
    fn site_key_senders_are_told_apart_by_host_and_user_and_bounded() {
        let p = pushes();
        let t0 = Instant::now();
        for i in 0..(MAX_SITE_RECIPIENTS + 10) {
            let who = Recipient::Site { key_id: "k".into(), host: format!("h{i}"), user: "u".into() };
            p.seen(
                Heard {
                    who,
                    addr: addr(7200),
                    token_time: 100,
                    message_tag: 0,
                    key: &key(),
                    responder: None,
                    declares_responder: None,
                },
                t0,
            );
        }
        assert_eq!(p.state().presence.len(), MAX_SITE_RECIPIENTS);
        // An enrolled agent is always kept.
        p.seen(
            Heard {
                who: Recipient::Agent("a".into()),
                addr: addr(7201),
                token_time: 100,
                message_tag: 0,
                key: &key(),
                responder: None,
                declares_responder: None,
            },
            t0,
        );
        assert_eq!(p.state().presence.len(), MAX_SITE_RECIPIENTS + 1);
    }
}
