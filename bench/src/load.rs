//! Simulated agents: one UDP socket and one loopback source address each, sending SOS like the
//! real agent (sealed with the site key, retransmitted after 300 ms doubling to 3 s, the same
//! alert id on every try) and timing each from its first transmission to its authentic ACK.
//!
//! The same loop, with [`Mode::Echo`], drives a plain UDP echo: the machine's round-trip ceiling
//! with the same sockets, the same number of senders and the same datagram size.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sos_shared::protocol::split_datagram;
use sos_shared::protocol::Sos;
use sos_shared::{unix_now, AlertId, Key, Message, TimeWindow};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// The real agent's first retransmission delay, doubled after each try.
const FIRST_RTO: Duration = Duration::from_millis(300);
/// The real agent's longest retransmission delay.
const MAX_RTO: Duration = Duration::from_secs(3);

/// What the simulated agents speak.
#[derive(Clone)]
pub enum Mode {
    /// The protocol: SOS sealed with this key, answered by an SOS-ACK.
    Sos(Key),
    /// A plain echo of datagrams this long; the first 16 bytes identify the request.
    Echo(usize),
}

/// When an agent sends new SOS.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    /// `n` SOS at once, at the start.
    Burst(u32),
    /// One SOS every `period`, the first after `phase`, until `until` after the start.
    Steady { period: Duration, phase: Duration, until: Duration },
    /// As fast as answers come: `window` SOS outstanding at all times, until `until`.
    Window { window: u32, until: Duration },
}

/// What one agent saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// SOS started (distinct alert ids).
    pub sent: u64,
    /// Datagrams sent, retransmissions included.
    pub transmissions: u64,
    /// SOS acknowledged, and when (from the start), and after how long (from the first transmission).
    pub acked: Vec<(Duration, Duration)>,
    /// When each retransmission was sent (from the start): when agents try again is what a
    /// restarted collector can answer first (`crash`).
    pub retransmitted: Vec<Duration>,
}

/// The i-th agent's source address: 127.10.x.y, a distinct loopback address per agent (Linux
/// routes all of 127/8 to loopback), as workstations have distinct addresses.
pub fn agent_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 10 + (i / 62_500) as u8, ((i / 250) % 250) as u8, (i % 250 + 1) as u8))
}

/// Whether agents send fully random alert ids (`--random-ids`) instead of time-ordered ones.
pub static RANDOM_IDS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A new SOS's alert id, as an agent would make it (see [`RANDOM_IDS`]).
pub fn new_id() -> u128 {
    if RANDOM_IDS.load(std::sync::atomic::Ordering::Relaxed) { AlertId::random() } else { AlertId::time_ordered() }
        .as_u128()
}

struct Pending {
    first: Instant,
    next_tx: Instant,
    rto: Duration,
    attempt: u32,
}

/// One agent: sends by `plan` to `to` from `ip` until everything it started is acknowledged or
/// `deadline` (from `start`) passes.
pub async fn agent(
    i: usize,
    mode: Mode,
    to: SocketAddr,
    plan: Plan,
    start: Instant,
    deadline: Duration,
) -> std::io::Result<Outcome> {
    let socket = Arc::new(UdpSocket::bind((agent_ip(i), 0)).await?);
    let host = format!("bench-{i:05}");
    let mut out = Outcome::default();
    let mut pending: HashMap<u128, Pending> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    let mut next_new = match plan {
        Plan::Burst(_) | Plan::Window { .. } => Some(start),
        Plan::Steady { phase, .. } => Some(start + phase),
    };
    let mut started = 0u32;
    loop {
        let now = Instant::now();
        // New SOS that are due.
        while let Some(t) = next_new.filter(|t| *t <= now) {
            let id = new_id();
            transmit(&socket, &mode, to, id, 0, &host).await;
            out.sent += 1;
            out.transmissions += 1;
            pending.insert(id, Pending { first: now, next_tx: now + FIRST_RTO, rto: FIRST_RTO, attempt: 0 });
            started += 1;
            next_new = match plan {
                Plan::Burst(n) => (started < n).then_some(t),
                Plan::Steady { period, until, .. } => Some(t + period).filter(|n| *n < start + until),
                Plan::Window { window, until } => {
                    (pending.len() < window as usize && now < start + until).then_some(now)
                }
            };
        }
        // Retransmissions that are due.
        for (id, p) in pending.iter_mut().filter(|(_, p)| p.next_tx <= now) {
            p.attempt += 1;
            p.rto = (p.rto * 2).min(MAX_RTO);
            p.next_tx = now + p.rto;
            transmit(&socket, &mode, to, *id, p.attempt, &host).await;
            out.transmissions += 1;
            out.retransmitted.push(now - start);
        }
        if (next_new.is_none() && pending.is_empty()) || now >= start + deadline {
            return Ok(out);
        }
        let wake = pending.values().map(|p| p.next_tx).chain(next_new).min().unwrap_or(start + deadline);
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, _)) = r else { continue };
                let Some(id) = answer(&mode, &buf[..n]) else { continue };
                if let Some(p) = pending.remove(&id) {
                    let now = Instant::now();
                    out.acked.push((now - start, now - p.first));
                    if let Plan::Window { until, .. } = plan {
                        if now < start + until {
                            next_new = Some(now);
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.min(start + deadline)) => {}
        }
    }
}

pub async fn transmit(socket: &UdpSocket, mode: &Mode, to: SocketAddr, id: u128, attempt: u32, host: &str) {
    let datagram = match mode {
        Mode::Sos(key) => {
            let sos = Sos {
                alert_id: AlertId::from_u128(id),
                test: true,
                triggered_at: unix_now(),
                attempt,
                user: "bench".into(),
                host: host.into(),
                ip: String::new(),
                location: "Load test, floor 0".into(),
                message: String::new(),
                agent: "sos-bench".into(),
            };
            key.seal(&Message::Sos(sos), unix_now()).expect("an SOS fits a datagram")
        }
        Mode::Echo(len) => {
            let mut d = vec![b'.'; *len];
            d[..16].copy_from_slice(&id.to_be_bytes());
            d
        }
    };
    // A full socket buffer drops the datagram, as the kernel would on a busy network; the
    // retransmission covers it.
    let _ = socket.send_to(&datagram, to).await;
}

/// The request id an answer acknowledges, if it is an authentic acknowledgement.
pub fn answer(mode: &Mode, datagram: &[u8]) -> Option<u128> {
    match mode {
        Mode::Sos(key) => {
            let (key_id, token) = split_datagram(datagram).ok()?;
            (key_id == key.id()).then_some(())?;
            match key.open(token, unix_now(), TimeWindow::default()).ok()?.message {
                Message::SosAck(ack) => Some(ack.alert_id.as_u128()),
                _ => None,
            }
        }
        Mode::Echo(_) => Some(u128::from_be_bytes(datagram.get(..16)?.try_into().ok()?)),
    }
}

/// The length of a bench SOS datagram, so that the echo carries the same bytes.
pub fn sos_len(key: &Key) -> usize {
    let sos = Sos {
        alert_id: AlertId::random(),
        test: true,
        triggered_at: unix_now(),
        attempt: 0,
        user: "bench".into(),
        host: "bench-00000".into(),
        ip: String::new(),
        location: "Load test, floor 0".into(),
        message: String::new(),
        agent: "sos-bench".into(),
    };
    key.seal(&Message::Sos(sos), unix_now()).map(|d| d.len()).unwrap_or(512)
}

/// A plain UDP echo server on `socket` (a thread; it ends with the process).
pub fn echo_server(socket: std::net::UdpSocket) {
    std::thread::Builder::new()
        .name("echo".into())
        .spawn(move || {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        })
        .expect("spawn the echo thread");
}

/// Sends flood datagrams: from a bound socket, or with a forged source address.
pub enum Flooder {
    /// A UDP socket bound to an address.
    Bound(std::net::UdpSocket),
    /// An IPv4 raw socket writing its own headers: this source address, random ports.
    #[cfg(unix)]
    Forged(rustix::fd::OwnedFd, Ipv4Addr),
}

impl Flooder {
    /// From a UDP socket bound to `ip`.
    pub fn bound(ip: Ipv4Addr) -> std::io::Result<Flooder> {
        Ok(Flooder::Bound(std::net::UdpSocket::bind((ip, 0))?))
    }

    /// Forging the source address `ip` (loopback only) through a raw socket: root or
    /// `CAP_NET_RAW`.
    pub fn forged(ip: Ipv4Addr) -> std::io::Result<Flooder> {
        assert!(ip.is_loopback(), "forged sources stay on loopback");
        #[cfg(unix)]
        {
            use rustix::net::{ipproto, socket, AddressFamily, SocketType};
            let fd = socket(AddressFamily::INET, SocketType::RAW, Some(ipproto::RAW))?;
            Ok(Flooder::Forged(fd, ip))
        }
        #[cfg(not(unix))]
        {
            Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "raw sockets: Unix only"))
        }
    }

    /// Send one datagram to `to` (a loopback address); whether it was sent.
    pub fn send(&self, payload: &[u8], to: std::net::SocketAddrV4) -> bool {
        match self {
            Flooder::Bound(s) => s.send_to(payload, to).is_ok(),
            #[cfg(unix)]
            Flooder::Forged(fd, ip) => {
                assert!(to.ip().is_loopback(), "floods stay on loopback");
                let port = fastrand::u16(1024..);
                let total = 28 + payload.len();
                let udp = 8 + payload.len();
                let mut p = Vec::with_capacity(total);
                // IPv4 header (the kernel fills the checksum), then UDP with checksum 0 (none).
                p.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
                p.extend_from_slice(&ip.octets());
                p.extend_from_slice(&to.ip().octets());
                p.extend_from_slice(&port.to_be_bytes());
                p.extend_from_slice(&to.port().to_be_bytes());
                p.extend_from_slice(&[(udp >> 8) as u8, udp as u8, 0, 0]);
                p.extend_from_slice(payload);
                rustix::net::sendto(fd, &p, rustix::net::SendFlags::empty(), &std::net::SocketAddrV4::new(*to.ip(), 0))
                    .is_ok()
            }
        }
    }
}
