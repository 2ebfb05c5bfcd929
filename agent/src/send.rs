//! Talking to the collectors: one send-and-wait loop ([`Sender::exchange`]) under every request
//! the agent makes — SOS, CANCEL, heartbeats and status probes.
//!
//! - Every transmission is sealed anew (fresh timestamp, `attempt` counting up) but keeps the
//!   alert id fixed when the button was pressed, so the collector recognises retries.
//! - The first transmission of an SOS goes to the first collector; from the second round on,
//!   every collector gets each round, so a dead primary costs one short wait, not its timeout.
//! - Waits between rounds follow the one [`Backoff`] (exponential, ±20 % jitter, capped), so
//!   that a floor of agents retrying after an outage does not retry in lock-step, and no round
//!   follows another without a delay.
//! - Each collector gets its own *connected* UDP socket: its local address is the address of
//!   the route to it (the SOS's `ip`), and the operating system reports an ICMP "port
//!   unreachable" on it as a refused connection. So the agent can tell apart what it can know:
//!   a name that does not resolve, a port where nothing listens, no route, and silence — which,
//!   from a collector that is listening, usually means a wrong key (a collector answers nothing
//!   without the key).
//! - Only an authentic answer counts; anything else is ignored.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sos_shared::backoff::Backoff;
use sos_shared::protocol::{
    split_datagram, AckStatus, Cancel, Heartbeat, Respond, RespondStatus, Sos, MAX_DATAGRAM, MAX_IP_TEXT,
};
use sos_shared::{unix_now, AlertId, Key, Message, TimeWindow};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::AgentConfig;
use crate::identity::Identity;
use crate::keys::Keyring;

/// Bytes of `pad` in a heartbeat: room for one responder notice in the answer.
pub const HEARTBEAT_PAD: usize = 128;

/// How long a collector's name may take to resolve before the round goes on without it.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// The SOS a press of the button produces, fitted so that it seals whatever the address and
/// attempt number filled in later ([`Sos::fit_to_datagram`]).
pub fn new_sos(identity: &Identity, location: &str, message: &str, test: bool) -> Sos {
    let mut sos = Sos {
        alert_id: AlertId::time_ordered(),
        test,
        triggered_at: unix_now(),
        attempt: 0,
        user: identity.user.clone(),
        host: identity.host.clone(),
        ip: String::new(),
        location: location.to_owned(),
        message: message.to_owned(),
        agent: concat!("sos-agent/", env!("CARGO_PKG_VERSION")).to_owned(),
    };
    sos.fit_to_datagram();
    sos
}

/// The agent's retry schedule: 300 ms after the first round, doubling up to 3 s.
pub fn default_schedule() -> Backoff {
    Backoff::new(Duration::from_millis(300), Duration::from_secs(3))
}

/// A collector acknowledged the SOS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The alert.
    pub alert_id: AlertId,
    /// Which collector answered first.
    pub collector: SocketAddr,
    /// Whether this or an earlier transmission was the first the collector stored.
    pub status: AckStatus,
    /// Datagrams sent, across all collectors.
    pub transmissions: u32,
    /// From the first transmission to the acknowledgement.
    pub elapsed: Duration,
}

/// What the agent learnt about one collector during an exchange that it did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Never tried (the deadline came first).
    NotTried,
    /// The name does not resolve.
    Unresolvable(String),
    /// Nothing listens there: the host answered "port unreachable".
    Refused,
    /// The datagram could not leave (no route, network down…).
    Unreachable(String),
    /// Sent, not refused, not answered.
    Silent,
}

/// One collector and what became of the datagrams sent to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorReach {
    /// The collector as configured (`host:port`).
    pub collector: String,
    /// Its address, once resolved.
    pub addr: Option<SocketAddr>,
    /// What happened.
    pub reach: Reach,
}

impl fmt::Display for CollectorReach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.collector;
        let at = self.addr.map(|a| a.to_string()).unwrap_or_else(|| c.clone());
        match &self.reach {
            Reach::NotTried => write!(f, "{c} was not tried before the deadline"),
            Reach::Unresolvable(e) => write!(f, "cannot resolve the collector's name {c} ({e}): check the name in the configuration and the DNS"),
            Reach::Refused => write!(f, "nothing is listening at {at} (the port is closed): is the collector running, and is this its address and port?"),
            Reach::Unreachable(e) => write!(f, "cannot reach {at}: {e}"),
            Reach::Silent => write!(f, "a collector is listening at {at} but did not answer: usually a wrong key (check the key or the enrollment; a firewall that drops the datagrams looks the same)"),
        }
    }
}

/// No collector answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAnswered {
    /// Datagrams sent.
    pub transmissions: u32,
    /// How long we tried.
    pub waited: Duration,
    /// What became of each collector.
    pub collectors: Vec<CollectorReach>,
}

impl fmt::Display for NotAnswered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no answer within {} s after {} transmission(s)", self.waited.as_secs(), self.transmissions)?;
        for c in &self.collectors {
            write!(f, "; {c}")?;
        }
        Ok(())
    }
}

/// The SOS (or cancel) was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No collector acknowledged before the deadline.
    #[error("not acknowledged: {0}")]
    NotAcknowledged(NotAnswered),
    /// The message could not be sealed. For an SOS built by [`new_sos`] this cannot happen;
    /// an alert that cannot be sealed can never be sent, and is set aside.
    #[error("cannot seal the message: {0}")]
    Seal(#[from] sos_shared::SealError),
}

/// A collector answered a status probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeAnswer {
    /// The address that answered.
    pub from: SocketAddr,
    /// From the first heartbeat to the answer.
    pub round_trip: Duration,
    /// The collector's clock minus ours, seconds.
    pub clock_difference_secs: i64,
}

/// Sends SOS, cancels and heartbeats to the configured collectors.
#[derive(Debug, Clone)]
pub struct Sender {
    keys: Keyring,
    collectors: Vec<String>,
    schedule: Backoff,
    /// Seconds to add to this workstation's clock when sealing, learnt from a collector's
    /// time hint (shared by clones, so heartbeats and SOS benefit from each other's hints).
    clock_offset: Arc<AtomicI64>,
    /// A responder desktop: its heartbeats say so.
    responder: bool,
}

/// Which collectors get a round's transmissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rounds {
    /// The first collector first, then every collector each round (an SOS).
    FirstThenAll,
    /// Every collector every round (a cancel).
    All,
    /// Every collector once, no retransmission (a heartbeat).
    Once,
}

impl Sender {
    /// A sender for the collectors and key of `config`.
    pub fn new(config: &AgentConfig) -> Self {
        Sender {
            keys: Keyring::new(config.key.clone(), config.enrollment.as_ref().map(|_| config.enrollment_file.clone())),
            collectors: config.collectors.clone(),
            schedule: default_schedule(),
            clock_offset: Arc::default(),
            responder: config.responder,
        }
    }

    /// A sender with explicit collectors (`host:port`), key and schedule.
    pub fn with(key: Key, collectors: Vec<String>, schedule: Backoff) -> Self {
        Sender { keys: Keyring::new(key, None), collectors, schedule, clock_offset: Arc::default(), responder: false }
    }

    /// The keys this sender seals with (shared by its clones).
    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    /// The collectors, as configured.
    pub fn collectors(&self) -> &[String] {
        &self.collectors
    }

    /// The time to seal with: this workstation's clock, corrected by the last time hint.
    pub(crate) fn now(&self) -> u64 {
        unix_now().saturating_add_signed(self.clock_offset.load(Ordering::Relaxed))
    }

    /// If `datagram` is an authentic time hint about one of `sealed` (timestamps we sealed
    /// during this exchange), correct our clock by it and return `true`.
    pub(crate) fn take_hint(&self, message: &Message, sealed: &[u64]) -> bool {
        let Message::TimeHint(h) = message else { return false };
        if !sealed.contains(&h.token_time) {
            return false;
        }
        let offset = h.server_time as i64 - unix_now() as i64;
        self.clock_offset.store(offset, Ordering::Relaxed);
        warn!(clock_difference_secs = offset,
              "this workstation's clock is wrong: the collector refused our timestamp; resealing with the collector's time (fix the time sync)");
        true
    }

    /// Transmit `sos` until a collector acknowledges it or `deadline` has passed.
    ///
    /// # Errors
    /// [`SendError::NotAcknowledged`] when the deadline passes first, saying what became of
    /// each collector; the caller must tell the sender plainly and keep the alert for later.
    pub async fn send(&self, mut sos: Sos, deadline: Duration) -> Result<Delivered, SendError> {
        let alert_id = sos.alert_id;
        let (answer, ex) = self
            .exchange(
                &self.collectors,
                Rounds::FirstThenAll,
                deadline,
                |link, attempt| {
                    sos.ip = link.local_ip.clone();
                    sos.attempt = attempt;
                    Message::Sos(sos.clone())
                },
                |m| match m {
                    Message::SosAck(ack) if ack.alert_id == alert_id => Some((ack.status, ack.server_time)),
                    _ => None,
                },
            )
            .await?;
        let (status, server_time) = answer;
        let skew = server_time as i64 - self.now() as i64;
        if skew.abs() > 30 {
            warn!(
                clock_difference_secs = skew,
                "this workstation's clock differs from the collector's; fix its time sync"
            );
        }
        info!(from = %ex.from, ?status, transmissions = ex.transmissions, elapsed_ms = ex.elapsed.as_millis() as u64, "SOS acknowledged");
        Ok(Delivered { alert_id, collector: ex.from, status, transmissions: ex.transmissions, elapsed: ex.elapsed })
    }

    /// Send one heartbeat to every collector and wait up to `timeout` for the first authentic
    /// HEARTBEAT-ACK, applying a key rotation it carries. Returns the collector that answered
    /// and its clock, or `None` if none did.
    pub async fn heartbeat(&self, identity: &Identity, timeout: Duration) -> Option<(SocketAddr, u64)> {
        self.heartbeat_to(&self.collectors, Rounds::Once, identity, timeout).await.ok().map(|(t, ex)| (ex.from, t))
    }

    /// The heartbeat this agent sends from `local_ip`.
    pub(crate) fn heartbeat_message(&self, identity: &Identity, local_ip: &str) -> Message {
        Message::Heartbeat(Heartbeat {
            user: identity.user.clone(),
            host: identity.host.clone(),
            ip: local_ip.to_owned(),
            // Room for news in the answer (a reply is never larger than its request).
            pad: "0".repeat(HEARTBEAT_PAD),
            responder: self.responder,
        })
    }

    /// A round trip to `collector` that pages nobody (a heartbeat, retransmitted until
    /// answered or `timeout`): how long it took, or what became of it.
    ///
    /// # Errors
    /// What the agent could learn about the collector when it did not answer.
    pub async fn probe(
        &self,
        collector: &str,
        identity: &Identity,
        timeout: Duration,
    ) -> Result<ProbeAnswer, NotAnswered> {
        let targets = [collector.to_owned()];
        match self.heartbeat_to(&targets, Rounds::All, identity, timeout).await {
            Ok((server_time, ex)) => Ok(ProbeAnswer {
                from: ex.from,
                round_trip: ex.elapsed,
                clock_difference_secs: server_time as i64 - unix_now() as i64,
            }),
            Err(SendError::NotAcknowledged(n)) => Err(n),
            Err(SendError::Seal(e)) => Err(NotAnswered {
                transmissions: 0,
                waited: Duration::ZERO,
                collectors: vec![CollectorReach {
                    collector: collector.to_owned(),
                    addr: None,
                    reach: Reach::Unreachable(e.to_string()),
                }],
            }),
        }
    }

    async fn heartbeat_to(
        &self,
        targets: &[String],
        rounds: Rounds,
        identity: &Identity,
        timeout: Duration,
    ) -> Result<(u64, Exchanged), SendError> {
        let keys = self.keys.clone();
        self.exchange(
            targets,
            rounds,
            timeout,
            |link, _| {
                self.heartbeat_message(identity, &link.local_ip)
            },
            |m| match m {
                Message::HeartbeatAck(ack) => {
                    if let Some(new_key) = &ack.new_key {
                        match keys.rotate(new_key) {
                            Ok(true) => info!(key_id = %keys.current().id(),
                                              "the collector rotated this agent's key; the new key is saved and in use"),
                            Ok(false) => {}
                            Err(e) => warn!("key rotation not applied: {e}"),
                        }
                    }
                    Some(ack.server_time)
                }
                _ => None,
            },
        )
        .await
    }

    /// Withdraw `alert_id` (a false alarm): send CANCEL to every collector each round, with
    /// the same backoff as an SOS, until one answers CANCEL-ACK or `deadline` passes. Returns
    /// the collector that confirmed it.
    ///
    /// # Errors
    /// [`SendError::NotAcknowledged`] if no collector confirmed in time (the alert stands:
    /// responders must be told another way).
    pub async fn cancel(&self, alert_id: AlertId, reason: &str, deadline: Duration) -> Result<SocketAddr, SendError> {
        let message = Message::Cancel(Cancel::padded(alert_id, reason.to_owned()));
        let ((), ex) = self
            .exchange(
                &self.collectors,
                Rounds::All,
                deadline,
                |_, _| message.clone(),
                |m| match m {
                    Message::CancelAck(ack) if ack.alert_id == alert_id => Some(()),
                    _ => None,
                },
            )
            .await?;
        info!(from = %ex.from, %alert_id, "cancellation confirmed");
        Ok(ex.from)
    }

    /// A responder says "I'm responding" to `alert_id`: send RESPOND (sealed with this agent's
    /// own key) to every collector each round, with the same backoff as an SOS, until one
    /// answers RESPOND-ACK or `deadline` passes. Returns the answer and who gave it.
    ///
    /// # Errors
    /// [`SendError::NotAcknowledged`] if no collector answered in time: a collector also stays
    /// silent when this agent is not a configured responder's desktop.
    pub async fn respond(
        &self,
        alert_id: AlertId,
        note: &str,
        deadline: Duration,
    ) -> Result<(RespondStatus, SocketAddr), SendError> {
        let message = Message::Respond(Respond::padded(alert_id, note.to_owned()));
        let (status, ex) = self
            .exchange(
                &self.collectors,
                Rounds::All,
                deadline,
                |_, _| message.clone(),
                |m| match m {
                    Message::RespondAck(ack) if ack.alert_id == alert_id => Some(ack.status),
                    _ => None,
                },
            )
            .await?;
        info!(from = %ex.from, %alert_id, ?status, "response recorded by a collector");
        Ok((status, ex.from))
    }

    /// The send-and-wait loop: in rounds, seal `request` for each target collector and send it,
    /// then wait (the [`Backoff`] of this sender) for an authentic answer that `accept` takes,
    /// until `deadline`. A time hint for one of our tokens corrects the clock and starts the
    /// next round at once (but never sooner than [`Backoff::MIN_FIRST`] after the last).
    async fn exchange<T>(
        &self,
        targets: &[String],
        rounds: Rounds,
        deadline: Duration,
        mut request: impl FnMut(&Link, u32) -> Message,
        mut accept: impl FnMut(&Message) -> Option<T>,
    ) -> Result<(T, Exchanged), SendError> {
        let started = Instant::now();
        let give_up = started + deadline;
        let mut rng = fastrand::Rng::new();
        let mut links: Vec<Link> = targets.iter().map(|c| Link::new(c)).collect();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut readers = JoinSet::new();
        let mut sealed: Vec<u64> = Vec::new();
        let mut transmissions = 0u32;

        for round in 0u32.. {
            let round_started = Instant::now();
            let count = match (rounds, round) {
                (Rounds::FirstThenAll, 0) => 1.min(links.len()),
                _ => links.len(),
            };
            for (i, link) in links.iter_mut().enumerate().take(count) {
                if Instant::now() >= give_up {
                    break;
                }
                if !link.ready(i, &tx, &mut readers).await {
                    continue;
                }
                let now = self.now();
                let datagram = self.keys.current().seal(&request(link, transmissions), now)?;
                sealed.push(now);
                if link.transmit(&datagram).await {
                    transmissions += 1;
                }
            }

            let now = Instant::now();
            if now >= give_up {
                break;
            }
            let round_end = if rounds == Rounds::Once {
                give_up
            } else {
                (now + self.schedule.delay(round, &mut rng)).min(give_up)
            };
            let mut hinted = false;
            loop {
                let got = tokio::select! {
                    g = rx.recv() => g,
                    _ = tokio::time::sleep_until(round_end) => None,
                };
                let Some((i, got)) = got else { break };
                let data = match got {
                    Ok(data) => data,
                    Err(e) => {
                        links[i].failed(&e);
                        continue;
                    }
                };
                let Some(message) = self.open_reply(&data) else { continue };
                if self.take_hint(&message, &sealed) {
                    hinted = true;
                    break; // reseal and send again now
                }
                if let Some(t) = accept(&message) {
                    let from = links[i].addr.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
                    return Ok((t, Exchanged { from, transmissions, elapsed: started.elapsed() }));
                }
            }
            if hinted {
                // A floor even for hints: a collector cannot make this loop spin.
                tokio::time::sleep_until((round_started + Backoff::MIN_FIRST).min(give_up)).await;
            }
            if Instant::now() >= give_up || (rounds == Rounds::Once && !hinted) {
                break;
            }
        }
        Err(SendError::NotAcknowledged(NotAnswered {
            transmissions,
            waited: started.elapsed(),
            collectors: links.into_iter().map(Link::into_reach).collect(),
        }))
    }

    /// An authentic message sealed with one of our keys, whatever its age: an answer about our
    /// own fresh alert id can only come from a collector that has it, and our clock may be the
    /// wrong one.
    fn open_reply(&self, datagram: &[u8]) -> Option<Message> {
        let (key_id, token) = split_datagram(datagram).ok()?;
        let key = self.keys.get(key_id)?;
        let window = TimeWindow { ttl_secs: u64::MAX, max_future_skew_secs: u64::MAX };
        Some(key.open(token, unix_now(), window).ok()?.message)
    }
}

/// How an exchange ended well.
#[derive(Debug, Clone, Copy)]
struct Exchanged {
    from: SocketAddr,
    transmissions: u32,
    elapsed: Duration,
}

/// One collector during an exchange: its address, its connected socket, what we learnt.
#[derive(Debug)]
struct Link {
    name: String,
    addr: Option<SocketAddr>,
    socket: Option<Arc<UdpSocket>>,
    /// This workstation's address on the route to the collector (`ip` in SOS and heartbeats).
    local_ip: String,
    reach: Reach,
}

impl Link {
    fn new(name: &str) -> Self {
        Link { name: name.to_owned(), addr: None, socket: None, local_ip: String::new(), reach: Reach::NotTried }
    }

    /// Resolve, bind and connect on first use, and start the reader that forwards what comes
    /// back (datagrams and errors such as "port unreachable") as `(index, result)`.
    async fn ready(
        &mut self,
        index: usize,
        tx: &mpsc::UnboundedSender<(usize, std::io::Result<Vec<u8>>)>,
        readers: &mut JoinSet<()>,
    ) -> bool {
        if self.socket.is_some() {
            return true;
        }
        if self.addr.is_none() {
            match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(self.name.as_str())).await {
                Ok(Ok(mut addrs)) => match addrs.next() {
                    Some(a) => self.addr = Some(a),
                    None => self.reach = Reach::Unresolvable("no address".into()),
                },
                Ok(Err(e)) => self.reach = Reach::Unresolvable(e.to_string()),
                Err(_) => {
                    self.reach = Reach::Unresolvable(format!("no answer from the resolver within {RESOLVE_TIMEOUT:?}"))
                }
            }
        }
        let Some(addr) = self.addr else {
            debug!(collector = %self.name, "{}", self.reach_text());
            return false;
        };
        let any: std::net::IpAddr =
            if addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
        let socket = match UdpSocket::bind((any, 0)).await {
            Ok(s) => s,
            Err(e) => {
                self.reach = Reach::Unreachable(format!("cannot open a UDP socket: {e}"));
                return false;
            }
        };
        if let Err(e) = socket.connect(addr).await {
            self.reach = Reach::Unreachable(e.to_string());
            return false;
        }
        self.local_ip = socket.local_addr().map(|a| a.ip().to_string()).unwrap_or_default();
        debug_assert!(self.local_ip.len() <= MAX_IP_TEXT);
        self.local_ip.truncate(MAX_IP_TEXT);
        let socket = Arc::new(socket);
        self.socket = Some(socket.clone());
        let tx = tx.clone();
        readers.spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM + 1];
            loop {
                let got = socket.recv(&mut buf).await.map(|n| buf[..n].to_vec());
                let failed = got.is_err();
                if tx.send((index, got)).is_err() {
                    return;
                }
                if failed {
                    // Errors are one-shot (an ICMP report); a floor all the same.
                    tokio::time::sleep(Backoff::MIN_FIRST).await;
                }
            }
        });
        true
    }

    /// Send one datagram; `true` if it left.
    async fn transmit(&mut self, datagram: &[u8]) -> bool {
        let Some(socket) = &self.socket else { return false };
        match socket.send(datagram).await {
            Ok(_) => {
                if self.reach == Reach::NotTried {
                    self.reach = Reach::Silent;
                }
                true
            }
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    /// The operating system reported `e` for this collector.
    fn failed(&mut self, e: &std::io::Error) {
        self.reach = match e.kind() {
            // Linux and macOS report an ICMP port unreachable as a refused connection on a
            // connected UDP socket; Windows as a reset one.
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset => Reach::Refused,
            _ => Reach::Unreachable(e.to_string()),
        };
        debug!(collector = %self.name, "{}", self.reach_text());
    }

    fn reach_text(&self) -> String {
        CollectorReach { collector: self.name.clone(), addr: self.addr, reach: self.reach.clone() }.to_string()
    }

    fn into_reach(self) -> CollectorReach {
        CollectorReach { collector: self.name, addr: self.addr, reach: self.reach }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_sos_fits_and_carries_identity() {
        let id = Identity { user: "alice".into(), host: "desk".into() };
        let s = new_sos(&id, "Reception", &"x".repeat(5000), true);
        assert!(s.test && s.user == "alice" && s.location == "Reception");
        assert!(s.message.ends_with(sos_shared::protocol::CUT_MARKER));
        assert!(serde_json::to_vec(&Message::Sos(s)).unwrap().len() <= sos_shared::protocol::MAX_PLAINTEXT);
    }

    #[test]
    fn a_new_sos_has_a_time_ordered_id() {
        // PROTOCOL.md 5.1 step 1: the press's millisecond in the high 48 bits, so that the
        // collector's store appends; 80 random bits below.
        let id = Identity { user: "alice".into(), host: "desk".into() };
        let before = u128::from(unix_now()) * 1000;
        let (a, b) = (new_sos(&id, "", "", false), new_sos(&id, "", "", false));
        let after = (u128::from(unix_now()) + 1) * 1000;
        for s in [&a, &b] {
            let ms = s.alert_id.as_u128() >> 80;
            assert!((before..=after).contains(&ms), "{ms} not within {before}..={after}");
        }
        assert_ne!(a.alert_id, b.alert_id);
    }
}
