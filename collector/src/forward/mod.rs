//! Forwarding from a site collector to a central one (issue 19 §2; docs/PROTOCOL.md section 11).
//!
//! A site collector enrolled at a centre (`sos-collector forward enroll`, its key in
//! `data_dir/forward.key`, 0600) is a peer of the centre over the ordinary protocol. The
//! [`Forwarder`] keeps one UDP socket to the centre and:
//! - sends what the `forward` channel ([`crate::channel`]'s forward.rs) gives it: each alert
//!   (`forward_sos`, answered `sos_ack` once the centre stored it), its cancellation (`cancel`,
//!   `cancel_ack`) and the acknowledgements and resolutions made at the site (`forward_update`,
//!   `forward_update_ack`), retransmitting with backoff until the answer or the outbox's attempt
//!   timeout: an outbox job is done only on the centre's answer;
//! - heartbeats every [`ForwardSettings::heartbeat`] from that socket, so that the centre knows
//!   where to push (its last authenticated address for the site) and that the site is online;
//! - receives the centre's `responder_notice` pushes (and the notices in `heartbeat_ack`) on it,
//!   records each at the site like a local acknowledgement (`Via::Centre`) — which tells the
//!   sender's agent through the site's own push machinery — and only then confirms it with
//!   `notice_receipt`, so that a notice the site could not record is pushed again.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use sos_shared::backoff::Backoff;
use sos_shared::config::{read_secret_file, ConfigError};
use sos_shared::enroll::EnrolledKey;
use sos_shared::protocol::{
    split_datagram, Cancel, ForwardEvent, ForwardSos, ForwardUpdate, Heartbeat, NoticeEvent, NoticeReceipt,
    ResponderNotice, MAX_DATAGRAM,
};
use sos_shared::{unix_now, AlertId, Key, Message, TimeWindow};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::store::{AlertRecord, Response as _, Store, Transition, Via};

/// The file in the data dir that holds the site's enrollment at its centre, by default.
pub const KEY_FILE: &str = "forward.key";

/// How often the site heartbeats to its centre, by default: well within the centre's
/// `responder_offline_after_secs` (150 s), so the centre pushes acknowledgements at once.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(20);

/// The window in which the site accepts the centre's datagrams: pushes are sealed anew on every
/// repeat, so an old one is a replay (or a clock far off, which the log says).
const WINDOW: TimeWindow = TimeWindow { ttl_secs: 300, max_future_skew_secs: 300 };

/// Retransmission of one request: 300 ms, doubling to 3 s, ±20 % (like an agent's SOS).
const RETRY: Backoff = Backoff::new(Duration::from_millis(300), Duration::from_secs(3));

/// Filler of the site's heartbeats: room for a few notices in the `heartbeat_ack`.
const HEARTBEAT_PAD: usize = 500;

/// `[forward]` in a site collector's configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    centre: Option<String>,
    key_file: Option<PathBuf>,
    heartbeat_secs: Option<u64>,
}

/// Where a site forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSettings {
    /// The centre's UDP address, `host:port`.
    pub centre: String,
    /// The site's enrollment at the centre (written by `sos-collector forward enroll`).
    pub key_file: PathBuf,
    /// How often the site heartbeats to the centre.
    pub heartbeat: Duration,
}

impl RawForward {
    /// Check `[forward]`; a relative `key_file` is resolved by `rel`, the default is in `data_dir`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key.
    pub fn validate(
        self,
        file: Option<&Path>,
        data_dir: &Path,
        rel: &dyn Fn(PathBuf) -> PathBuf,
    ) -> Result<ForwardSettings, ConfigError> {
        let centre = self.centre.ok_or_else(|| {
            ConfigError::at(
                file,
                "forward.centre",
                "missing: the central collector's address, e.g. \"centre.example.com:5000\"",
            )
        })?;
        let port_ok =
            centre.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok || centre.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::at(
                file,
                "forward.centre",
                format!("{centre:?} is not a host and port, e.g. \"centre.example.com:5000\""),
            ));
        }
        let heartbeat = match self.heartbeat_secs {
            None => DEFAULT_HEARTBEAT,
            Some(v) if (5..=60).contains(&v) => Duration::from_secs(v),
            Some(v) => {
                return Err(ConfigError::at(
                    file,
                    "forward.heartbeat_secs",
                    format!("{v} is out of range 5..=60 s (the centre pushes only to a site heard from within 150 s)"),
                ))
            }
        };
        let key_file = self.key_file.map(rel).unwrap_or_else(|| data_dir.join(KEY_FILE));
        Ok(ForwardSettings { centre, key_file, heartbeat })
    }
}

/// The site's enrollment at the centre, as `forward enroll` stores it.
///
/// # Errors
/// A message naming the file (missing, readable by others, not an enrollment).
pub fn load_enrollment(path: &Path) -> Result<(EnrolledKey, Key), String> {
    let text = read_secret_file(path)?;
    let enrolled: EnrolledKey = serde_json::from_str(&text).map_err(|_| {
        format!("{} is not a site enrollment written by `sos-collector forward enroll`", path.display())
    })?;
    let key = Key::from_base64(&enrolled.key).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((enrolled, key))
}

/// What a request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Awaited {
    Stored(AlertId),
    Cancelled(AlertId),
    Updated(AlertId, ForwardEvent),
}

/// The socket to the centre, once the centre's address resolved and the site is enrolled.
#[derive(Debug)]
struct Link {
    socket: Arc<UdpSocket>,
    centre: SocketAddr,
    key: Key,
    name: String,
}

/// The site's side of forwarding: shared by the `forward` channel (requests) and the task
/// that heartbeats and receives ([`Forwarder::run`]).
#[derive(Debug)]
pub struct Forwarder {
    settings: ForwardSettings,
    link: OnceLock<Link>,
    waiting: Mutex<HashMap<Awaited, Vec<oneshot::Sender<()>>>>,
    /// Seconds to add to this clock when sealing (a `time_hint` from the centre).
    clock_offset: AtomicI64,
    /// Timestamps of tokens sealed recently: a `time_hint` is taken only for one of them.
    sealed: Mutex<VecDeque<u64>>,
}

impl Forwarder {
    /// A forwarder for `settings`; it connects when [`Forwarder::run`] runs.
    pub fn new(settings: ForwardSettings) -> Arc<Self> {
        Arc::new(Forwarder {
            settings,
            link: OnceLock::new(),
            waiting: Mutex::new(HashMap::new()),
            clock_offset: AtomicI64::new(0),
            sealed: Mutex::new(VecDeque::new()),
        })
    }

    /// The configured centre.
    pub fn centre(&self) -> &str {
        &self.settings.centre
    }

    fn now(&self) -> u64 {
        unix_now().saturating_add_signed(self.clock_offset.load(Ordering::Relaxed))
    }

    fn seal(&self, link: &Link, message: &Message) -> Option<Vec<u8>> {
        let now = self.now();
        {
            let mut sealed = self.sealed.lock().unwrap_or_else(|e| e.into_inner());
            if sealed.back() != Some(&now) {
                sealed.push_back(now);
                if sealed.len() > 64 {
                    sealed.pop_front();
                }
            }
        }
        match link.key.seal(message, now) {
            Ok(d) => Some(d),
            Err(e) => {
                error!(kind = message.kind(), error = %e, "cannot seal a message for the centre");
                None
            }
        }
    }

    /// Send `message` to the centre until `awaited` arrives (retransmitting with backoff, each
    /// time sealed anew). The caller bounds it (the outbox's attempt timeout).
    async fn request(&self, message: Message, awaited: Awaited) -> Result<(), String> {
        let Some(link) = self.link.get() else {
            return Err(format!(
                "not connected to the centre {} (not enrolled there yet, or its address does not resolve; see the log)",
                self.settings.centre
            ));
        };
        let (tx, mut rx) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            waiting.retain(|_, v| {
                v.retain(|s| !s.is_closed());
                !v.is_empty()
            });
            waiting.entry(awaited).or_default().push(tx);
        }
        let mut rng = fastrand::Rng::new();
        for round in 0u32.. {
            let Some(datagram) = self.seal(link, &message) else {
                return Err(format!("cannot seal a {} for the centre", message.kind()));
            };
            if let Err(e) = link.socket.send_to(&datagram, link.centre).await {
                debug!(centre = %link.centre, error = %e, "cannot send to the centre");
            }
            tokio::select! {
                r = &mut rx => return r.map_err(|_| "the forwarder stopped".to_owned()),
                _ = tokio::time::sleep(RETRY.delay(round, &mut rng)) => {}
            }
        }
        Err("unreachable".into())
    }

    /// Forward one outbox job of the `forward` channel: the alert, its cancellation, or an
    /// acknowledgement or resolution made at the site. Ok once the centre answered.
    pub(crate) async fn forward(&self, alert: &AlertRecord) -> Result<(), String> {
        use crate::store::AlertUpdate;
        let id = alert.alert_id;
        let (message, awaited) = match (&alert.update, &alert.cancellation) {
            (Some(AlertUpdate::Acknowledged { by, note }), _) => (
                Message::ForwardUpdate(ForwardUpdate::padded(id, ForwardEvent::Acknowledged, by.clone(), note.clone())),
                Awaited::Updated(id, ForwardEvent::Acknowledged),
            ),
            (Some(AlertUpdate::Resolved { by, note, outcome }), _) => {
                let text = match (outcome.is_empty(), note.is_empty()) {
                    (false, false) => format!("{outcome} — {note}"),
                    (false, true) => outcome.clone(),
                    _ => note.clone(),
                };
                (
                    Message::ForwardUpdate(ForwardUpdate::padded(id, ForwardEvent::Resolved, by.clone(), text)),
                    Awaited::Updated(id, ForwardEvent::Resolved),
                )
            }
            // The centre runs its own escalation: the site's reminders are not forwarded.
            (Some(AlertUpdate::Reminder { .. }), _) => return Ok(()),
            (None, Some(c)) => (Message::Cancel(Cancel::padded(id, c.reason.clone())), Awaited::Cancelled(id)),
            (None, None) => {
                let (sender, sender_host) = match (&alert.site, &alert.enrolled) {
                    // Forwarded here by another site (a chain): the sender stays who it was there.
                    (_, Some(e)) => (e.name.clone(), e.host.clone()),
                    (_, None) => (String::new(), String::new()),
                };
                let mut f = ForwardSos {
                    alert_id: id,
                    test: alert.test,
                    triggered_at: alert.triggered_at.max(0) as u64,
                    user: alert.user.clone(),
                    host: alert.host.clone(),
                    ip: alert.ip.clone(),
                    location: alert.location.clone(),
                    message: alert.message.clone(),
                    agent: String::new(),
                    sender,
                    sender_host,
                    pad: String::new(),
                };
                f.fit_to_datagram();
                (Message::ForwardSos(f), Awaited::Stored(id))
            }
        };
        self.request(message, awaited).await
    }

    /// Connect (resolve the centre, load the enrollment), then heartbeat and receive until
    /// `shutdown`. Notices from the centre are recorded in `store`.
    pub async fn run(self: Arc<Self>, store: Store, shutdown: CancellationToken) {
        let Some(link) = self.connect(&shutdown).await else { return };
        info!(centre = %link.centre, site = %link.name, "forwarding to the centre");
        let me = self.clone();
        let heartbeat = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { me.heartbeat(shutdown).await }
        });
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let (n, from) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = link.socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(_) => {
                        // An ICMP error (the centre is down): a floor, never a spin.
                        tokio::time::sleep(Backoff::MIN_FIRST).await;
                        continue;
                    }
                },
            };
            if from != link.centre {
                continue;
            }
            self.received(link, &buf[..n], &store);
        }
        heartbeat.abort();
    }

    async fn connect(&self, shutdown: &CancellationToken) -> Option<&Link> {
        let mut told = false;
        let mut rng = fastrand::Rng::new();
        let wait = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for round in 0u32.. {
            match self.try_connect().await {
                Ok(link) => {
                    let _ = self.link.set(link);
                    return self.link.get();
                }
                Err(e) if !told || round.is_power_of_two() => {
                    error!(centre = %self.settings.centre, error = %e,
                           "NOT FORWARDING to the centre yet: alerts are kept and forwarded once this is fixed");
                    told = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(wait.delay(round, &mut rng)) => {}
            }
        }
        None
    }

    async fn try_connect(&self) -> Result<Link, String> {
        let (enrolled, key) = load_enrollment(&self.settings.key_file)
            .map_err(|e| format!("{e} (enroll this site at the centre: `sos-collector forward enroll --code CODE`)"))?;
        let centre = tokio::net::lookup_host(&self.settings.centre)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("cannot resolve the centre address {}", self.settings.centre))?;
        let bind: SocketAddr = if centre.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("valid");
        let socket = UdpSocket::bind(bind).await.map_err(|e| format!("cannot open a socket: {e}"))?;
        Ok(Link { socket: Arc::new(socket), centre, key, name: enrolled.name })
    }

    async fn heartbeat(&self, shutdown: CancellationToken) {
        let Some(link) = self.link.get() else { return };
        let mut tick = tokio::time::interval(self.settings.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let hb = Heartbeat {
                user: String::new(),
                host: link.name.clone(),
                ip: String::new(),
                pad: "0".repeat(HEARTBEAT_PAD),
                responder: false,
            };
            if let Some(d) = self.seal(link, &Message::Heartbeat(hb)) {
                let _ = link.socket.send_to(&d, link.centre).await;
            }
        }
    }

    fn received(self: &Arc<Self>, link: &Link, datagram: &[u8], store: &Store) {
        let Ok((key_id, token)) = split_datagram(datagram) else { return };
        if key_id != link.key.id() {
            return;
        }
        // Answers are opened whatever their age, as the agent does: an answer about a request
        // still waiting can only come from the centre, and this host's clock may be the wrong
        // one (a time hint must get through to correct it). News pushed by the centre (a
        // notice, a heartbeat's answer carrying notices) must be fresh: a replay of an old one
        // changes nothing anyway, but it is not taken.
        let any_age = shared_any_age();
        let opened = match link.key.open(token, self.now(), any_age) {
            Ok(o) => o,
            Err(e) => {
                // Not a warning: anyone can send this socket junk under our key id, at any rate.
                debug!(error = %e, "dropped a datagram from the centre that does not open with this site's key");
                return;
            }
        };
        if matches!(opened.message, Message::ResponderNotice(_) | Message::HeartbeatAck(_))
            && link.key.open(token, self.now(), WINDOW).is_err()
        {
            debug!(kind = opened.message.kind(), "dropped news from the centre outside the time window");
            return;
        }
        let done = |a: Awaited| {
            let senders = self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&a);
            for s in senders.into_iter().flatten() {
                let _ = s.send(());
            }
        };
        match opened.message {
            Message::SosAck(a) => done(Awaited::Stored(a.alert_id)),
            Message::CancelAck(a) => done(Awaited::Cancelled(a.alert_id)),
            Message::ForwardUpdateAck(a) => done(Awaited::Updated(a.alert_id, a.event)),
            Message::ResponderNotice(n) => self.clone().notice(n, store.clone()),
            Message::HeartbeatAck(ack) => {
                for n in ack.notices {
                    self.clone().notice(n, store.clone());
                }
            }
            Message::TimeHint(h) => {
                let ours = self.sealed.lock().unwrap_or_else(|e| e.into_inner()).contains(&h.token_time);
                if ours {
                    let offset = h.server_time as i64 - unix_now() as i64;
                    warn!(offset_secs = offset, "the centre refused a token for its time: this host's clock is off; sealing with the centre's clock");
                    self.clock_offset.store(offset, Ordering::Relaxed);
                }
            }
            other => debug!(kind = other.kind(), "dropped a message kind the site does not expect from its centre"),
        }
    }

    /// A notice from the centre about an alert this site forwarded: record it here (the
    /// site's push machinery tells the sender), then confirm it to the centre.
    fn notice(self: Arc<Self>, n: ResponderNotice, store: Store) {
        tokio::spawn(async move {
            let Some(link) = self.link.get() else { return };
            let responder = crate::store::clean_note(&n.responder);
            let note = crate::store::clean_note(&n.note);
            let outcome = match n.event {
                NoticeEvent::Acknowledged => store.acknowledge(n.alert_id, responder.clone(), Via::Centre, note).await,
                NoticeEvent::Resolved => {
                    store.resolve(n.alert_id, responder.clone(), Via::Centre, note, String::new()).await
                }
                // The site escalates by itself and tells its sender when nobody answers there.
                NoticeEvent::Unanswered => Ok(Transition::Already { by: String::new() }),
            };
            match outcome {
                Ok(Transition::New { .. }) => {
                    info!(alert_id = %n.alert_id, event = ?n.event, %responder, "the centre answered a forwarded alert; telling the sender")
                }
                Ok(Transition::Already { .. } | Transition::Closed(_)) => {}
                Ok(Transition::Unknown) => {
                    warn!(alert_id = %n.alert_id, "the centre sent news about an alert this site does not have; not confirmed");
                    return;
                }
                Err(e) => {
                    warn!(alert_id = %n.alert_id, error = %e, "cannot record the centre's news; it will come again");
                    return;
                }
            }
            let receipt = Message::NoticeReceipt(NoticeReceipt { alert_id: n.alert_id, event: n.event });
            if let Some(d) = self.seal(link, &receipt) {
                let _ = link.socket.send_to(&d, link.centre).await;
            }
        });
    }
}

/// A time window that takes a token of any age.
fn shared_any_age() -> sos_shared::crypto::TimeWindow {
    sos_shared::crypto::TimeWindow { ttl_secs: u64::MAX, max_future_skew_secs: u64::MAX }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn forward_settings_are_checked_and_default_into_the_data_dir() {
        let c = Config::parse("data_dir = \"/var/lib/sos\"\n[forward]\ncentre = \"centre.example.com:5000\"\n", None)
            .unwrap();
        let f = c.forward.clone().unwrap();
        assert_eq!(f.key_file, std::path::Path::new("/var/lib/sos/forward.key"));
        assert_eq!(f.heartbeat, super::DEFAULT_HEARTBEAT);
        assert!(c.channel_names().contains(&"forward"));
        for (text, key) in [
            ("[forward]\n", "forward.centre"),
            ("[forward]\ncentre = \"centre.example.com\"\n", "forward.centre"),
            ("[forward]\ncentre = \"c:5000\"\nheartbeat_secs = 600\n", "forward.heartbeat_secs"),
            ("[forward]\ncentre = \"c:5000\"\ncenter = \"x\"\n", "center"),
        ] {
            let e = Config::parse(text, None).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = Config::parse("[escalation]\nemergency = [ { notify = [\"channel:forward\"] } ]\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("forward"), "channel:forward needs [forward]: {e}");
        Config::parse(
            "[forward]\ncentre = \"c:5000\"\n[escalation]\nemergency = [ { notify = [\"channel:forward\"] } ]\n",
            None,
        )
        .unwrap();
    }

    #[test]
    fn a_site_code_enrolls_a_site_and_an_agent_code_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = crate::store::Db::open(&dir.path().join("sos.db")).unwrap();
        let site = db.create_enrollment_of("Branch A", true, 600_000, 1_000).unwrap();
        let desk = db.create_enrollment("desk-1", 600_000, 1_000).unwrap();
        let s = db.complete_enrollment(site.id(), "site-host", 2_000).unwrap().unwrap();
        let d = db.complete_enrollment(desk.id(), "desk-1", 2_000).unwrap().unwrap();
        let r = db.load_registry().unwrap();
        let key = |k: &str| sos_shared::Key::from_base64(k).unwrap().id();
        assert!(r.get(key(&s.key)).unwrap().agent.site);
        assert!(!r.get(key(&d.key)).unwrap().agent.site);
        let listed = db.enrolled_agents().unwrap();
        assert!(listed.iter().any(|a| a.name == "Branch A" && a.site));
        assert!(listed.iter().any(|a| a.name == "desk-1" && !a.site));
    }
}
