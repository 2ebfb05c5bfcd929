//! Delivering one SOS: retransmit until a collector acknowledges it or the deadline passes.
//!
//! - Every transmission is sealed anew (fresh timestamp, `attempt` counting up) but keeps the
//!   alert id fixed when the button was pressed, so the collector recognises retries.
//! - The first transmission goes to the first collector; from the second on, every collector
//!   gets each round, so a dead primary costs one short wait, not its whole timeout.
//! - Waits between rounds grow exponentially with ±20 % jitter, capped, so that a floor of
//!   agents retrying after an outage does not retry in lock-step.
//! - Only an authentic SOS-ACK for this alert id counts; anything else is ignored.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sos_shared::protocol::{split_datagram, AckStatus, Cancel, Heartbeat, Sos, MAX_DATAGRAM};
use sos_shared::{unix_now, AlertId, Key, Message, TimeWindow};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::AgentConfig;
use crate::identity::{route_ip, Identity};
use crate::keys::Keyring;

/// Bytes of `pad` in a heartbeat: room for one responder notice in the answer.
pub const HEARTBEAT_PAD: usize = 128;

/// The SOS a press of the button produces, before the per-collector route address is filled in.
pub fn new_sos(identity: &Identity, location: &str, message: &str, test: bool) -> Sos {
    let mut sos = Sos {
        alert_id: AlertId::random(),
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

/// How long to wait for an acknowledgement after each round of transmissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    /// The wait after the first round.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule { first: Duration::from_millis(300), max: Duration::from_secs(3) }
    }
}

impl RetrySchedule {
    /// The wait after round `round` (0-based): `first × 2^round`, capped at `max`, ±20 % jitter.
    pub fn wait(&self, round: u32, rng: &mut fastrand::Rng) -> Duration {
        let base = self.first.saturating_mul(1u32 << round.min(20)).min(self.max);
        base.mul_f64(0.8 + rng.f64() * 0.4)
    }
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

/// The SOS was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No collector acknowledged before the deadline.
    #[error("not acknowledged within {} s after {transmissions} transmissions{}", .waited.as_secs(), .problem.as_deref().map(|p| format!(" (last problem: {p})")).unwrap_or_default())]
    NotAcknowledged {
        /// Datagrams sent.
        transmissions: u32,
        /// How long we tried.
        waited: Duration,
        /// The last thing that went wrong locally (name resolution, no route), if any.
        problem: Option<String>,
    },
    /// The SOS could not be sealed (cannot happen for an SOS built by [`new_sos`]).
    #[error("cannot seal the SOS: {0}")]
    Seal(#[from] sos_shared::SealError),
    /// No local socket could be opened.
    #[error("cannot open a UDP socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Sends SOS to the configured collectors.
#[derive(Debug, Clone)]
pub struct Sender {
    keys: Keyring,
    collectors: Vec<String>,
    schedule: RetrySchedule,
    /// Seconds to add to this workstation's clock when sealing, learnt from a collector's
    /// time hint (shared by clones, so heartbeats and SOS benefit from each other's hints).
    clock_offset: Arc<AtomicI64>,
}

impl Sender {
    /// A sender for the collectors and key of `config`.
    pub fn new(config: &AgentConfig) -> Self {
        Sender {
            keys: Keyring::new(config.key.clone(), config.enrollment.as_ref().map(|_| config.enrollment_file.clone())),
            collectors: config.collectors.clone(),
            schedule: RetrySchedule::default(),
            clock_offset: Arc::default(),
        }
    }

    /// A sender with explicit collectors (`host:port`), key and schedule.
    pub fn with(key: Key, collectors: Vec<String>, schedule: RetrySchedule) -> Self {
        Sender { keys: Keyring::new(key, None), collectors, schedule, clock_offset: Arc::default() }
    }

    /// The keys this sender seals with (shared by its clones).
    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    /// The time to seal with: this workstation's clock, corrected by the last time hint.
    fn now(&self) -> u64 {
        unix_now().saturating_add_signed(self.clock_offset.load(Ordering::Relaxed))
    }

    /// If `datagram` is an authentic time hint about one of `sealed` (timestamps we sealed
    /// during this exchange), correct our clock by it and return `true`.
    fn take_hint(&self, datagram: &[u8], sealed: &[u64]) -> bool {
        let Some(Message::TimeHint(h)) = self.open_reply(datagram) else { return false };
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
    /// [`SendError::NotAcknowledged`] when the deadline passes first; the caller must tell the
    /// sender plainly and keep the alert for later.
    pub async fn send(&self, mut sos: Sos, deadline: Duration) -> Result<Delivered, SendError> {
        let started = Instant::now();
        let give_up = started + deadline;
        let mut rng = fastrand::Rng::new();
        let mut sockets = Sockets::default();
        let mut sealed: Vec<u64> = Vec::new();
        let mut resolved: HashMap<String, SocketAddr> = HashMap::new();
        let mut route: HashMap<SocketAddr, String> = HashMap::new();
        let mut problem: Option<String> = None;
        let mut transmissions = 0u32;

        for round in 0u32.. {
            let targets: &[String] =
                if round == 0 { &self.collectors[..1.min(self.collectors.len())] } else { &self.collectors };
            for name in targets {
                if !resolved.contains_key(name) {
                    match tokio::net::lookup_host(name.as_str()).await.map(|mut a| a.next()) {
                        Ok(Some(addr)) => {
                            resolved.insert(name.clone(), addr);
                        }
                        Ok(None) | Err(_) => {
                            let p = format!("cannot resolve {name}");
                            debug!("{p}");
                            problem = Some(p);
                            continue;
                        }
                    }
                }
                let addr = resolved[name];
                sos.ip = route
                    .entry(addr)
                    .or_insert_with(|| route_ip(addr).map(|ip| ip.to_string()).unwrap_or_default())
                    .clone();
                sos.attempt = transmissions;
                let now = self.now();
                let datagram = self.keys.current().seal(&Message::Sos(sos.clone()), now)?;
                sealed.push(now);
                match sockets.send_to(&datagram, addr).await {
                    Ok(_) => {
                        transmissions += 1;
                        debug!(%addr, attempt = sos.attempt, "SOS sent");
                    }
                    Err(e) => {
                        let p = format!("cannot send to {addr}: {e}");
                        debug!("{p}");
                        problem = Some(p);
                    }
                }
            }

            let now = Instant::now();
            if now >= give_up {
                break;
            }
            let round_end = (now + self.schedule.wait(round, &mut rng)).min(give_up);
            while let Some((data, from)) = sockets.recv_until(round_end).await {
                if self.take_hint(&data, &sealed) {
                    break; // reseal and send again now
                }
                if let Some((status, server_time)) = self.ack_for(&data, sos.alert_id) {
                    let elapsed = started.elapsed();
                    let skew = server_time as i64 - self.now() as i64;
                    if skew.abs() > 30 {
                        warn!(
                            clock_difference_secs = skew,
                            "this workstation's clock differs from the collector's; fix its time sync"
                        );
                    }
                    info!(%from, ?status, transmissions, elapsed_ms = elapsed.as_millis() as u64, "SOS acknowledged");
                    return Ok(Delivered { alert_id: sos.alert_id, collector: from, status, transmissions, elapsed });
                }
            }
            if Instant::now() >= give_up {
                break;
            }
        }
        Err(SendError::NotAcknowledged { transmissions, waited: started.elapsed(), problem })
    }

    /// Send one heartbeat to every collector and wait up to `timeout` for the first authentic
    /// HEARTBEAT-ACK. Returns the collector that answered and its clock, or `None` if none did.
    ///
    /// # Errors
    /// Only if no local socket can be opened or the heartbeat cannot be sealed.
    pub async fn heartbeat(
        &self,
        identity: &Identity,
        timeout: Duration,
    ) -> Result<Option<(SocketAddr, u64)>, SendError> {
        let mut sockets = Sockets::default();
        let mut sealed = Vec::new();
        for name in &self.collectors {
            let Ok(Some(addr)) = tokio::net::lookup_host(name.as_str()).await.map(|mut a| a.next()) else { continue };
            let hb = Message::Heartbeat(Heartbeat {
                user: identity.user.clone(),
                host: identity.host.clone(),
                ip: route_ip(addr).map(|ip| ip.to_string()).unwrap_or_default(),
                // Room for news in the answer (a reply is never larger than its request).
                pad: "0".repeat(HEARTBEAT_PAD),
            });
            let now = self.now();
            let datagram = self.keys.current().seal(&hb, now)?;
            sealed.push(now);
            if let Err(e) = sockets.send_to(&datagram, addr).await {
                debug!(%addr, error = %e, "heartbeat not sent");
            }
        }
        let end = Instant::now() + timeout;
        while let Some((data, from)) = sockets.recv_until(end).await {
            // A hint corrects the clock for the next heartbeat and every SOS.
            if self.take_hint(&data, &sealed) {
                continue;
            }
            if let Some(Message::HeartbeatAck(ack)) = self.open_reply(&data) {
                if let Some(new_key) = &ack.new_key {
                    match self.keys.rotate(new_key) {
                        Ok(true) => info!(%from, key_id = %self.keys.current().id(),
                                          "the collector rotated this agent's key; the new key is saved and in use"),
                        Ok(false) => {}
                        Err(e) => warn!(%from, "key rotation not applied: {e}"),
                    }
                }
                return Ok(Some((from, ack.server_time)));
            }
        }
        Ok(None)
    }

    /// Withdraw `alert_id` (a false alarm): send CANCEL to every collector each round, with
    /// the same backoff as an SOS, until one answers CANCEL-ACK or `deadline` passes. Returns
    /// the collector that confirmed it.
    ///
    /// # Errors
    /// [`SendError::NotAcknowledged`] if no collector confirmed in time (the alert stands:
    /// responders must be told another way).
    pub async fn cancel(&self, alert_id: AlertId, reason: &str, deadline: Duration) -> Result<SocketAddr, SendError> {
        let started = Instant::now();
        let give_up = started + deadline;
        let mut rng = fastrand::Rng::new();
        let mut sockets = Sockets::default();
        let message = Message::Cancel(Cancel::padded(alert_id, reason.to_owned()));
        let mut sealed = Vec::new();
        let mut transmissions = 0u32;
        for round in 0u32.. {
            for name in &self.collectors {
                let Ok(Some(addr)) = tokio::net::lookup_host(name.as_str()).await.map(|mut a| a.next()) else {
                    continue;
                };
                let now = self.now();
                let datagram = self.keys.current().seal(&message, now)?;
                sealed.push(now);
                if sockets.send_to(&datagram, addr).await.is_ok() {
                    transmissions += 1;
                }
            }
            let round_end = (Instant::now() + self.schedule.wait(round, &mut rng)).min(give_up);
            while let Some((data, from)) = sockets.recv_until(round_end).await {
                if self.take_hint(&data, &sealed) {
                    break;
                }
                if let Some(Message::CancelAck(ack)) = self.open_reply(&data) {
                    if ack.alert_id == alert_id {
                        info!(%from, %alert_id, "cancellation confirmed");
                        return Ok(from);
                    }
                }
            }
            if Instant::now() >= give_up {
                break;
            }
        }
        Err(SendError::NotAcknowledged { transmissions, waited: started.elapsed(), problem: None })
    }

    /// An authentic message sealed with our key, whatever its age (see [`Self::ack_for`]).
    fn open_reply(&self, datagram: &[u8]) -> Option<Message> {
        let (key_id, token) = split_datagram(datagram).ok()?;
        let key = self.keys.get(key_id)?;
        let window = TimeWindow { ttl_secs: u64::MAX, max_future_skew_secs: u64::MAX };
        Some(key.open(token, unix_now(), window).ok()?.message)
    }

    /// The status and collector clock of `datagram` if it is an authentic SOS-ACK for `alert_id`.
    fn ack_for(&self, datagram: &[u8], alert_id: AlertId) -> Option<(AckStatus, u64)> {
        // The reply's age is not checked: an acknowledgement for our own fresh alert id can
        // only come from a collector that stored it, and our clock may be the wrong one.
        match self.open_reply(datagram)? {
            Message::SosAck(ack) if ack.alert_id == alert_id => Some((ack.status, ack.server_time)),
            _ => None,
        }
    }
}

/// The agent's UDP sockets, one per address family, each bound on first use, so that replies
/// come back to the socket the request left from.
#[derive(Debug, Default)]
struct Sockets {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
}

impl Sockets {
    /// Send `datagram` to `addr` from the socket of its family.
    async fn send_to(&mut self, datagram: &[u8], addr: SocketAddr) -> std::io::Result<()> {
        let slot = if addr.is_ipv4() { &mut self.v4 } else { &mut self.v6 };
        if slot.is_none() {
            let any: std::net::IpAddr =
                if addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
            *slot = Some(UdpSocket::bind((any, 0)).await?);
        }
        let Some(socket) = slot.as_ref() else { return Ok(()) };
        socket.send_to(datagram, addr).await.map(|_| ())
    }

    /// The next datagram on either socket, or `None` once `until` has passed. Receive errors
    /// (an ICMP port-unreachable reported on the socket, say) are skipped.
    async fn recv_until(&self, until: Instant) -> Option<(Vec<u8>, SocketAddr)> {
        async fn recv(socket: Option<&UdpSocket>) -> std::io::Result<(Vec<u8>, SocketAddr)> {
            let Some(socket) = socket else { return std::future::pending().await };
            let mut buf = vec![0u8; MAX_DATAGRAM + 1];
            let (n, from) = socket.recv_from(&mut buf).await?;
            buf.truncate(n);
            Ok((buf, from))
        }
        loop {
            let got = tokio::select! {
                r = recv(self.v4.as_ref()) => r,
                r = recv(self.v6.as_ref()) => r,
                _ = tokio::time::sleep_until(until) => return None,
            };
            if let Ok(x) = got {
                return Some(x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_within_jitter_and_are_capped() {
        let s = RetrySchedule::default();
        let mut rng = fastrand::Rng::with_seed(9);
        for (round, base) in [(0, 0.3), (1, 0.6), (2, 1.2), (3, 2.4), (4, 3.0), (30, 3.0)] {
            for _ in 0..50 {
                let w = s.wait(round, &mut rng).as_secs_f64();
                assert!(w >= base * 0.8 - 1e-9 && w <= base * 1.2 + 1e-9, "round {round}: {w}");
            }
        }
    }

    #[test]
    fn a_new_sos_fits_and_carries_identity() {
        let id = Identity { user: "alice".into(), host: "desk".into() };
        let s = new_sos(&id, "Reception", &"x".repeat(5000), true);
        assert!(s.test && s.user == "alice" && s.location == "Reception");
        assert!(serde_json::to_vec(&Message::Sos(s)).unwrap().len() <= sos_shared::protocol::MAX_PLAINTEXT);
    }
}
