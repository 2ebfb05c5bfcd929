//! The agent's side of the responder loop: what the collector pushes, and heartbeats.
//!
//! Every tray agent heartbeats from one long-lived UDP socket per collector and listens on it,
//! because the collector pushes to the source address of the agent's last authentic datagram
//! (docs/PROTOCOL.md, pushes):
//! - to a **responder desktop** (`responder = true`), `alert_broadcast`: an alert to show as a
//!   popup, and each later state of it (someone is responding, cancelled, resolved);
//! - to the **sender** of an alert, `responder_notice`: someone is coming, nobody has answered,
//!   resolved — pushed, and repeated in `heartbeat_ack.notices` until confirmed.
//!
//! Each push is verified before anything else: sealed with one of this agent's keys (its key
//! id, authentic), of a kind this agent takes, and sealed recently ([`PUSH_WINDOW`], measured
//! on the clock the collector corrected, see [`crate::send::Sender`]): unlike a reply, a push
//! answers nothing this agent asked, so an old one replayed must not count. Then it is
//! confirmed with its receipt — every time, a duplicate too, since the receipt the collector
//! waits for may be the one that was lost — and applied only if it is news ([`Board`]): a
//! broadcast with a higher `seq` than the last applied for its alert, a notice event not seen
//! yet for an alert this agent sent. A notice about an alert this agent did not send is neither
//! confirmed nor shown (agents sharing the site key share its last address).
//!
//! `respond` (I'm responding) is a request like cancel, through [`crate::send::Sender::respond`].

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sos_shared::backoff::Backoff;
use sos_shared::protocol::{
    split_datagram, AlertBroadcast, BroadcastReceipt, BroadcastState, NoticeEvent, NoticeReceipt, ResponderNotice,
    MAX_DATAGRAM,
};
use sos_shared::{unix_now, AlertId, Message, TimeWindow};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::identity::Identity;
use crate::send::Sender;

/// How old (and how far ahead) a push's token may be, on the corrected clock. Wider than the
/// collector's own window (120 s back, 60 s ahead), so that a workstation clock the collector
/// still accepts never makes this agent refuse the collector's pushes; a clock further off is
/// corrected by the collector's time hint first.
pub const PUSH_WINDOW: TimeWindow = TimeWindow { ttl_secs: 300, max_future_skew_secs: 300 };

/// How long a heartbeat waits for its answer before the agent shows it is offline.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a collector's name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// The fewest seconds between two heartbeats asked for at once ([`Listener::beat_now`]): a
/// storm of deliveries cannot become a storm of heartbeats.
const BEAT_FLOOR: Duration = Duration::from_secs(1);

/// Alerts the board remembers; the oldest is forgotten first.
pub const BOARD_KEPT: usize = 1000;

/// How many responder popups a desktop shows at once; the open alerts beyond them are counted
/// in one "more open alerts" notification and listed in the tray menu.
pub const POPUPS_SHOWN: usize = 8;

/// What a push or a heartbeat's answer brought that the person must see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    /// A newer state of an alert shown on this responder desktop.
    Popup(AlertBroadcast),
    /// A new event about an alert this agent sent.
    Notice(ResponderNotice),
}

/// What this agent has applied: the last state of each alert broadcast to it, and the notice
/// events seen for its own alerts. Pure bookkeeping, tested on its own.
#[derive(Debug, Default)]
pub struct Board {
    /// The last broadcast applied, by alert.
    popups: HashMap<AlertId, AlertBroadcast>,
    /// The notice events already shown, by alert.
    notices: HashMap<AlertId, Vec<NoticeEvent>>,
    /// Alerts in the order first seen, to forget the oldest beyond [`BOARD_KEPT`].
    order: VecDeque<AlertId>,
}

impl Board {
    /// Apply `b` if it is news: a first broadcast of its alert, or a higher `seq` than the last
    /// applied. Returns what to show.
    pub fn broadcast(&mut self, b: AlertBroadcast) -> Option<AlertBroadcast> {
        if let Some(last) = self.popups.get(&b.alert_id) {
            if b.seq <= last.seq {
                return None;
            }
        } else {
            self.remember(b.alert_id);
        }
        self.popups.insert(b.alert_id, b.clone());
        Some(b)
    }

    /// Apply `n` if it is news: an event not seen yet for its alert, and not one that an event
    /// already shown makes obsolete (nobody answered, after someone did; acknowledged, after
    /// resolved). Returns what to show.
    pub fn notice(&mut self, n: ResponderNotice) -> Option<ResponderNotice> {
        let seen = self.notices.get(&n.alert_id).map(Vec::as_slice).unwrap_or_default();
        let obsolete = seen.contains(&n.event)
            || (n.event == NoticeEvent::Unanswered
                && (seen.contains(&NoticeEvent::Acknowledged) || seen.contains(&NoticeEvent::Resolved)))
            || (n.event == NoticeEvent::Acknowledged && seen.contains(&NoticeEvent::Resolved));
        if obsolete {
            return None;
        }
        if !self.notices.contains_key(&n.alert_id) && !self.popups.contains_key(&n.alert_id) {
            self.remember(n.alert_id);
        }
        self.notices.entry(n.alert_id).or_default().push(n.event);
        Some(n)
    }

    /// The alerts on this desktop still waiting for a responder, or being responded to,
    /// newest first.
    pub fn open(&self) -> Vec<&AlertBroadcast> {
        let mut open: Vec<&AlertBroadcast> = self
            .popups
            .values()
            .filter(|b| matches!(b.state, BroadcastState::Open | BroadcastState::Acknowledged))
            .collect();
        open.sort_by(|a, b| b.triggered_at.cmp(&a.triggered_at).then(b.alert_id.cmp(&a.alert_id)));
        open
    }

    /// The last state applied for `alert_id`.
    pub fn popup(&self, alert_id: AlertId) -> Option<&AlertBroadcast> {
        self.popups.get(&alert_id)
    }

    fn remember(&mut self, alert_id: AlertId) {
        self.order.push_back(alert_id);
        while self.order.len() > BOARD_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.popups.remove(&old);
                self.notices.remove(&old);
            }
        }
    }
}

/// Whether a token sealed at `sealed` (the collector's clock) is recent on `now` (ours,
/// corrected).
pub fn recent(sealed: u64, now: u64) -> bool {
    sealed.saturating_add(PUSH_WINDOW.ttl_secs) >= now && sealed <= now.saturating_add(PUSH_WINDOW.max_future_skew_secs)
}

/// What the listener needs from the agent.
pub struct Setup {
    /// Seals, opens, keeps the clock correction; its collectors are listened to.
    pub sender: Sender,
    /// How often to heartbeat.
    pub every: Duration,
    /// A responder desktop: broadcasts are taken.
    pub responder: bool,
    /// Whether this agent sent `alert_id` (its history, its spool, this run).
    pub mine: Arc<dyn Fn(AlertId) -> bool + Send + Sync>,
    /// Where news goes (the UI).
    pub news: Arc<dyn Fn(News) + Send + Sync>,
    /// Where the heartbeats' outcome goes: the collector that answered, or `None`.
    pub connectivity: Arc<dyn Fn(Option<String>) + Send + Sync>,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup").field("every", &self.every).field("responder", &self.responder).finish_non_exhaustive()
    }
}

/// The running listener: heartbeats and pushes on one socket per collector.
#[derive(Debug, Clone)]
pub struct Listener {
    wake: Arc<Notify>,
    task: AbortHandle,
}

impl Listener {
    /// Start heartbeating and listening on `runtime`.
    pub fn start(runtime: &tokio::runtime::Handle, setup: Setup) -> Self {
        let wake = Arc::new(Notify::new());
        let task = runtime.spawn(serve(setup, wake.clone())).abort_handle();
        Listener { wake, task }
    }

    /// Heartbeat now (not sooner than [`BEAT_FLOOR`] after the last): after this agent sent
    /// something from another socket (an SOS, a cancel, a respond), so that the collector's
    /// idea of where to push is this listener's socket again at once.
    pub fn beat_now(&self) {
        self.wake.notify_one();
    }

    /// Stop it.
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// One collector's long-lived socket.
#[derive(Debug)]
struct Line {
    name: String,
    addr: Option<SocketAddr>,
    socket: Option<Arc<UdpSocket>>,
    local_ip: String,
    reader: Option<AbortHandle>,
}

type Received = (usize, std::io::Result<Vec<u8>>);

impl Line {
    /// Resolve, bind and connect if not done yet, and start its reader.
    async fn open(&mut self, index: usize, tx: &mpsc::Sender<Received>) -> bool {
        if self.socket.is_some() {
            return true;
        }
        if self.addr.is_none() {
            self.addr = match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(self.name.as_str())).await {
                Ok(Ok(mut a)) => a.next(),
                Ok(Err(e)) => {
                    debug!(collector = %self.name, error = %e, "cannot resolve the collector's name");
                    None
                }
                Err(_) => None,
            };
        }
        let Some(addr) = self.addr else { return false };
        let any: std::net::IpAddr =
            if addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
        let socket = match UdpSocket::bind((any, 0)).await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "cannot open a UDP socket");
                return false;
            }
        };
        if let Err(e) = socket.connect(addr).await {
            debug!(collector = %self.name, error = %e, "cannot reach the collector");
            return false;
        }
        self.local_ip = socket.local_addr().map(|a| a.ip().to_string()).unwrap_or_default();
        let socket = Arc::new(socket);
        self.socket = Some(socket.clone());
        let tx = tx.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM + 1];
            loop {
                let got = socket.recv(&mut buf).await.map(|n| buf[..n].to_vec());
                let failed = got.is_err();
                if tx.send((index, got)).await.is_err() {
                    return;
                }
                if failed {
                    tokio::time::sleep(Backoff::MIN_FIRST).await;
                }
            }
        });
        self.reader = Some(reader.abort_handle());
        true
    }

    /// Forget the socket (and the address: the name is resolved again), e.g. after the
    /// collector stopped answering or the network changed.
    fn close(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
        self.socket = None;
        self.addr = None;
    }

    async fn send(&mut self, datagram: &[u8]) -> bool {
        let Some(s) = &self.socket else { return false };
        s.send(datagram).await.is_ok()
    }
}

/// A round of heartbeats: until when it waits, what it sealed, whether any was answered.
struct Round {
    until: Instant,
    sealed: Vec<u64>,
    answered: bool,
    hinted: bool,
}

/// The listener's task.
async fn serve(setup: Setup, wake: Arc<Notify>) {
    let identity = Identity::current();
    let sender = setup.sender.clone();
    let mut lines: Vec<Line> = sender
        .collectors()
        .iter()
        .map(|c| Line { name: c.clone(), addr: None, socket: None, local_ip: String::new(), reader: None })
        .collect();
    // Bounded: a flood waits in the sockets' buffers (and is dropped by the kernel there),
    // never in this process's memory.
    let (tx, mut rx) = mpsc::channel::<Received>(256);
    let mut board = Board::default();
    let mut next_beat = Instant::now();
    let mut last_beat: Option<Instant> = None;
    let mut round: Option<Round> = None;
    let mut last_answer: Option<Option<String>> = None;
    loop {
        // A round nobody answered in time: offline.
        if round.as_ref().is_some_and(|r| !r.answered && Instant::now() >= r.until) {
            round = None;
            if last_answer != Some(None) {
                warn!("no collector answers heartbeats");
            }
            last_answer = Some(None);
            (setup.connectivity)(None);
            // Open new sockets next round: the network may have changed.
            for l in &mut lines {
                l.close();
            }
        }
        let round_until = round.as_ref().filter(|r| !r.answered).map(|r| r.until);
        tokio::select! {
            () = tokio::time::sleep_until(next_beat) => {
                // The next beat waits until the current one is answered or its time is up.
                if let Some(until) = round_until {
                    next_beat = next_beat.max(until);
                    continue;
                }
                let mut sealed = Vec::new();
                for (i, line) in lines.iter_mut().enumerate() {
                    if !line.open(i, &tx).await {
                        continue;
                    }
                    let now = sender.now();
                    match sender.keys().current().seal(&sender.heartbeat_message(&identity, &line.local_ip), now) {
                        Ok(d) => {
                            if line.send(&d).await {
                                sealed.push(now);
                            } else {
                                line.close();
                            }
                        }
                        Err(e) => warn!(error = %e, "cannot seal a heartbeat"),
                    }
                }
                let now = Instant::now();
                round = Some(Round { until: now + HEARTBEAT_TIMEOUT, sealed, answered: false, hinted: false });
                last_beat = Some(now);
                next_beat = now + setup.every;
            }
            // Concluded at the top of the loop.
            () = async { tokio::time::sleep_until(round_until.unwrap_or_else(Instant::now)).await }, if round_until.is_some() => {}
            () = wake.notified() => {
                let floor = last_beat.map_or_else(Instant::now, |t| t + BEAT_FLOOR);
                next_beat = next_beat.min(floor.max(Instant::now()));
            }
            got = rx.recv() => {
                let Some((i, got)) = got else { return };
                match got {
                    Ok(data) => {
                        if let Some(name) = take(&setup, &identity, &sender, &mut lines, i, &data, &mut board, &mut round).await {
                            if last_answer.as_ref() != Some(&Some(name.clone())) {
                                info!(collector = %name, "a collector answers");
                            }
                            last_answer = Some(Some(name.clone()));
                            (setup.connectivity)(Some(name));
                        }
                    }
                    Err(e) => {
                        debug!(collector = %lines[i].name, error = %e, "the collector's socket reported an error");
                    }
                }
            }
        }
    }
}

/// Take one datagram from line `i`. Returns the collector's address when it is the first
/// answer of the current heartbeat round.
#[allow(clippy::too_many_arguments)]
async fn take(
    setup: &Setup,
    identity: &Identity,
    sender: &Sender,
    lines: &mut [Line],
    i: usize,
    data: &[u8],
    board: &mut Board,
    round: &mut Option<Round>,
) -> Option<String> {
    let (key_id, token) = split_datagram(data).ok()?;
    let key = sender.keys().get(key_id)?;
    let opened = key.open(token, unix_now(), TimeWindow { ttl_secs: u64::MAX, max_future_skew_secs: u64::MAX }).ok()?;
    let fresh = recent(opened.timestamp, sender.now());
    let line = &mut lines[i];
    if let Message::TimeHint(_) = &opened.message {
        // Our clock is wrong: correct it and heartbeat again at once (once a round).
        let r = round.as_mut().filter(|r| !r.hinted)?;
        if sender.take_hint(&opened.message, &r.sealed) {
            r.hinted = true;
            let now = sender.now();
            if let Ok(d) = sender.keys().current().seal(&sender.heartbeat_message(identity, &line.local_ip), now) {
                if line.send(&d).await {
                    r.sealed.push(now);
                }
            }
        }
        return None;
    }
    let mut answered = None;
    match opened.message {
        Message::HeartbeatAck(ack) => {
            if let Some(new_key) = &ack.new_key {
                match sender.keys().rotate(new_key) {
                    Ok(true) => info!(key_id = %sender.keys().current().id(),
                                      "the collector rotated this agent's key; the new key is saved and in use"),
                    Ok(false) => {}
                    Err(e) => warn!("key rotation not applied: {e}"),
                }
            }
            // Only a fresh answer shows the collector reachable: an old one replayed by whoever
            // blocks the collector must not keep the tray "ready". (The collector answers only a
            // heartbeat within its time window, so a real answer is always fresh.)
            if let Some(r) = round.as_mut().filter(|r| !r.answered && fresh) {
                r.answered = true;
                answered = Some(line.addr.map(|a| a.to_string()).unwrap_or_else(|| line.name.clone()));
            }
            for n in ack.notices {
                notice(setup, sender, line, n, fresh, board).await;
            }
        }
        Message::AlertBroadcast(b) => {
            if !setup.responder {
                debug!(alert_id = %b.alert_id, "an alert broadcast to a desktop that is not a responder's: ignored");
                return None;
            }
            if !fresh {
                warn!(alert_id = %b.alert_id, sealed_at = opened.timestamp, "an old alert broadcast (replayed?) ignored");
                return None;
            }
            let receipt = Message::BroadcastReceipt(BroadcastReceipt { alert_id: b.alert_id, seq: b.seq });
            confirm(sender, line, &receipt).await;
            match board.broadcast(b) {
                Some(b) => {
                    info!(alert_id = %b.alert_id, seq = b.seq, state = ?b.state, "alert broadcast");
                    (setup.news)(News::Popup(b));
                }
                None => debug!("a broadcast already applied (a repeat, or an older state)"),
            }
        }
        Message::ResponderNotice(n) => notice(setup, sender, line, n, fresh, board).await,
        other => debug!(kind = other.kind(), "a message this agent does not take here: ignored"),
    }
    answered
}

/// A notice, pushed or in a heartbeat's answer.
async fn notice(setup: &Setup, sender: &Sender, line: &mut Line, n: ResponderNotice, fresh: bool, board: &mut Board) {
    if !fresh {
        warn!(alert_id = %n.alert_id, "an old responder notice (replayed?) ignored");
        return;
    }
    if !(setup.mine)(n.alert_id) {
        debug!(alert_id = %n.alert_id, "a responder notice about an alert this agent did not send: ignored");
        return;
    }
    let receipt = Message::NoticeReceipt(NoticeReceipt { alert_id: n.alert_id, event: n.event });
    confirm(sender, line, &receipt).await;
    if let Some(n) = board.notice(n) {
        info!(alert_id = %n.alert_id, event = ?n.event, responder = %n.responder, "responder notice");
        (setup.news)(News::Notice(n));
    }
}

/// Send a receipt on `line` (no answer comes; a lost one is made up by the collector's
/// repeat, which is confirmed again).
async fn confirm(sender: &Sender, line: &mut Line, receipt: &Message) {
    match sender.keys().current().seal(receipt, sender.now()) {
        Ok(d) => {
            if !line.send(&d).await {
                debug!(collector = %line.name, "a receipt could not be sent");
            }
        }
        Err(e) => warn!(error = %e, "cannot seal a receipt"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broadcast(id: AlertId, seq: u64, state: BroadcastState) -> AlertBroadcast {
        AlertBroadcast {
            alert_id: id,
            test: false,
            triggered_at: seq,
            user: "alice".into(),
            host: "desk".into(),
            ip: String::new(),
            location: "Reception".into(),
            message: String::new(),
            state,
            responder: String::new(),
            note: String::new(),
            seq,
            reminder: false,
        }
    }

    fn notice(id: AlertId, event: NoticeEvent) -> ResponderNotice {
        ResponderNotice { alert_id: id, event, responder: "Sam".into(), note: String::new(), at: 1 }
    }

    #[test]
    fn broadcasts_apply_in_seq_order_and_repeats_are_not_news() {
        let mut board = Board::default();
        let a = AlertId::random();
        assert!(board.broadcast(broadcast(a, 1, BroadcastState::Open)).is_some(), "first is news");
        assert!(board.broadcast(broadcast(a, 1, BroadcastState::Open)).is_none(), "a repeat");
        assert!(board.broadcast(broadcast(a, 3, BroadcastState::Acknowledged)).is_some());
        // An older state arriving late (reordered, or replayed) does not undo a newer one.
        assert!(board.broadcast(broadcast(a, 2, BroadcastState::Open)).is_none());
        assert_eq!(board.popup(a).map(|b| b.state), Some(BroadcastState::Acknowledged));
        assert!(board.broadcast(broadcast(a, 4, BroadcastState::Cancelled)).is_some());
        assert!(board.open().is_empty(), "cancelled is not open");
        // Another alert is its own sequence.
        let b = AlertId::random();
        assert!(board.broadcast(broadcast(b, 1, BroadcastState::Open)).is_some());
        assert_eq!(board.open().len(), 1);
    }

    #[test]
    fn notice_events_show_once_and_never_go_back() {
        let mut board = Board::default();
        let a = AlertId::random();
        assert!(board.notice(notice(a, NoticeEvent::Unanswered)).is_some());
        assert!(board.notice(notice(a, NoticeEvent::Unanswered)).is_none(), "a repeat");
        assert!(board.notice(notice(a, NoticeEvent::Acknowledged)).is_some(), "someone answered after all");
        assert!(board.notice(notice(a, NoticeEvent::Acknowledged)).is_none());
        assert!(board.notice(notice(a, NoticeEvent::Unanswered)).is_none(), "late: someone is coming");
        assert!(board.notice(notice(a, NoticeEvent::Resolved)).is_some());
        assert!(board.notice(notice(a, NoticeEvent::Acknowledged)).is_none(), "late: already resolved");
    }

    #[test]
    fn the_board_forgets_the_oldest_alerts_beyond_its_size() {
        let mut board = Board::default();
        let first = AlertId::random();
        board.broadcast(broadcast(first, 5, BroadcastState::Open));
        for i in 0..BOARD_KEPT {
            board.broadcast(broadcast(AlertId::from_u128(i as u128 + 1), 1, BroadcastState::Open));
        }
        assert!(board.popup(first).is_none());
        assert_eq!(board.open().len(), BOARD_KEPT);
    }

    #[test]
    fn pushes_must_be_recent_on_the_corrected_clock() {
        let now = 1_000_000;
        assert!(recent(now, now));
        assert!(recent(now - PUSH_WINDOW.ttl_secs, now));
        assert!(!recent(now - PUSH_WINDOW.ttl_secs - 1, now), "replayed later");
        assert!(recent(now + PUSH_WINDOW.max_future_skew_secs, now));
        assert!(!recent(now + PUSH_WINDOW.max_future_skew_secs + 1, now));
    }
}
