//! The client side of enrollment by one-time code (see [`crate::enroll`] for the exchange):
//! `sos-agent enroll CODE --collector HOST:PORT` turns a code into a workstation's own key, and
//! `sos-collector forward enroll` a site collector's key at its centre. Built with the `client`
//! feature (it needs tokio).

use std::net::SocketAddr;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::enroll::{AgentHandshake, Code, EnrollError, EnrollMessage, EnrolledKey, ENROLL_KEY_ID};
use crate::protocol::{split_datagram, MAX_DATAGRAM};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Why enrollment did not complete.
#[derive(Debug, thiserror::Error)]
pub enum EnrollFailure {
    /// The collector's address does not resolve.
    #[error("cannot resolve the collector address {0}")]
    Resolve(String),
    /// No answer at all in time. From here that cannot be told apart from a collector that
    /// is unreachable, down or too busy, so the code is not blamed first: the collector also
    /// stays silent for an unknown, used, expired or burnt code.
    #[error("no answer from the collector at {0}: it may be unreachable, stopped or too busy (check the address and try again); it also stays silent for a code it does not know or that is used, expired or burnt, so if other workstations reach it, ask for a new code")]
    NoAnswer(String),
    /// The collector proved it knows the code, then did not finish in time: the code is right.
    #[error("no answer from the collector at {0} after it confirmed the code: the code is right; try again (it works until it expires or is used)")]
    Unfinished(String),
    /// The collector's proof did not match: a mistyped code.
    #[error("the code does not match what the collector issued (mistyped?); each wrong try counts against the code, ask for a new one if it keeps failing")]
    WrongCode,
    /// A socket error.
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
}

/// Run the exchange with `collector`, retransmitting each request until answered or `timeout`
/// passes. Returns the agent's key and the collector's address.
///
/// # Errors
/// See [`EnrollFailure`].
pub async fn enroll(
    code: &Code,
    collector: &str,
    host: &str,
    timeout: Duration,
) -> Result<(EnrolledKey, SocketAddr), EnrollFailure> {
    let addr = tokio::net::lookup_host(collector)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| EnrollFailure::Resolve(collector.to_owned()))?;
    let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0".parse() } else { "[::]:0".parse() }.expect("valid");
    let socket = UdpSocket::bind(bind).await?;
    let give_up = Instant::now() + timeout;

    let (handshake, start) = AgentHandshake::start(code);
    let challenge = exchange(&socket, addr, &start, give_up, |m| matches!(m, EnrollMessage::EnrollChallenge { .. }))
        .await
        .ok_or_else(|| EnrollFailure::NoAnswer(collector.to_owned()))?;
    let (session, finish) = handshake.on_challenge(&challenge, host).map_err(|e| match e {
        EnrollError::WrongCode => EnrollFailure::WrongCode,
        EnrollError::Malformed => EnrollFailure::NoAnswer(collector.to_owned()),
    })?;
    let done = exchange(&socket, addr, &finish, give_up, |m| matches!(m, EnrollMessage::EnrollDone { .. }))
        .await
        .ok_or_else(|| EnrollFailure::Unfinished(collector.to_owned()))?;
    let key = session.on_done(&done).map_err(|_| EnrollFailure::Unfinished(collector.to_owned()))?;
    Ok((key, addr))
}

/// The wait for an answer after each transmission: 0.5 s, 1 s, 2 s, then 4 s, ±20 %.
const RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(4));

/// Send `request` to `addr` (again after 0.5 s, 1 s, 2 s…) until an enrollment message that
/// `wanted` accepts comes back from `addr`, or `give_up` passes.
async fn exchange(
    socket: &UdpSocket,
    addr: SocketAddr,
    request: &[u8],
    give_up: Instant,
    wanted: impl Fn(&EnrollMessage) -> bool,
) -> Option<EnrollMessage> {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut rng = fastrand::Rng::new();
    for round in 0u32.. {
        if Instant::now() >= give_up {
            return None;
        }
        let _ = socket.send_to(request, addr).await;
        let round_end = (Instant::now() + RETRY.delay(round, &mut rng)).min(give_up);
        loop {
            let got = tokio::select! {
                r = socket.recv_from(&mut buf) => r,
                _ = tokio::time::sleep_until(round_end) => break,
            };
            let Ok((n, from)) = got else {
                // An error reported on the socket (an ICMP message): a floor, never a spin.
                tokio::time::sleep(Backoff::MIN_FIRST).await;
                continue;
            };
            if from != addr {
                continue;
            }
            let Ok((id, body)) = split_datagram(&buf[..n]) else { continue };
            if id != ENROLL_KEY_ID {
                continue;
            }
            if let Ok(m) = EnrollMessage::from_body(body) {
                if wanted(&m) {
                    return Some(m);
                }
            }
        }
    }
    None
}
