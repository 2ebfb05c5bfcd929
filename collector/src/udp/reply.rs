//! Answers: where and how to send them, and the one size guard (never more bytes than asked).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sos_shared::{unix_now, Key, Message};
use tokio::net::UdpSocket;
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use crate::refusal::{Cause, Refusals};
use crate::stats::Stats;

/// Where and how to answer one request.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) socket: Arc<UdpSocket>,
    pub(super) key: Key,
    pub(super) stats: Arc<Stats>,
    /// Where a suppressed reply is told, at a bounded rate.
    pub(super) refusals: Arc<Mutex<Refusals>>,
    pub(super) to: SocketAddr,
    pub(super) request_len: usize,
}

impl Reply {
    /// Whether `message` sealed would be no larger than the request (the seal's size depends
    /// only on the plaintext's length).
    pub(super) fn fits(&self, message: &Message) -> bool {
        serde_json::to_vec(message)
            .map(|p| sos_shared::protocol::sealed_len(p.len()) <= self.request_len)
            .unwrap_or(false)
    }

    /// Seal and send `message`, unless it would be larger than the request.
    pub(super) async fn send(&self, message: &Message) {
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
    pub(super) fn send_now(self, message: &Message, in_flight: &TaskTracker) {
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
            Err(e) => self.send_failed(&e),
        }
    }

    /// Whether `datagram` would be larger than the request: then it is not sent (no
    /// amplification), and that is counted and logged.
    pub(super) fn too_large(&self, datagram: &[u8], kind: &str) -> bool {
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

    /// A reply the socket would not send: told at the bounded rate (replies to forged
    /// addresses may fail one by one, e.g. with no route).
    fn send_failed(&self, e: &std::io::Error) {
        let line = self.refusals.lock().unwrap_or_else(|e| e.into_inner()).note(Cause::ReplyFailed, Instant::now());
        if let Some(line) = line {
            warn!(to = %self.to, error = %e, before = line.before, "cannot send a reply");
        }
    }

    /// Send a ready datagram, unless it is larger than the request.
    pub(super) async fn send_datagram(&self, datagram: &[u8], kind: &str) {
        if self.too_large(datagram, kind) {
            return;
        }
        match self.socket.send_to(datagram, self.to).await {
            Ok(_) => Stats::bump(&self.stats.replies_sent),
            Err(e) => self.send_failed(&e),
        }
    }
}
