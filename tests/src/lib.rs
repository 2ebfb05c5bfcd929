//! Harness for the end-to-end tests: the real `sos-collector` and `sos-agent` release binaries,
//! a real HTTP server that answers like Slack's incoming webhooks, a real SMTP server (the
//! `mailin` library's protocol engine on a real TCP socket), and a raw protocol peer.
//!
//! # Layout
//! - [`bin`]: where the binaries under test are.
//! - [`slack`]: [`SlackStandIn`], scripted answers (200 `ok`, 4xx, 429 + `Retry-After`, 5xx, hang,
//!   slow), then Slack's own: its message limits (`400 invalid_blocks`) and rate (429).
//! - [`smtp`]: [`SmtpServer`], scripted answers to the end of DATA (250, 451, 550…).
//! - [`standins`]: [`standins::StandIn`] for Twilio, Teams, ntfy and a Standard Webhooks
//!   receiver that verifies signatures independently; each holds its service's limits.
//! - [`process`]: [`CollectorProcess`] and [`agent_send`].
//! - [`peer`]: [`Peer`], a raw UDP protocol peer for hand-made datagrams.
//! - [`relay`]: [`Relay`], a UDP relay that loses, duplicates, delays and blacks out datagrams.
//! - [`site`]: [`site::Site`], a key and configs in a temporary directory.
//! - [`flood`]: [`flood::Flood`], junk for a bounded time from a socket or forged sources.
//! - [`wine`]: the Windows binaries under Wine, a prefix per test.
//! - [`postgres`]: [`postgres::PgCluster`], a PostgreSQL cluster of the test's own (initdb and
//!   pg_ctl in a temporary directory, an unprivileged user, a free port).
//! - [`tcpproxy`]: [`tcpproxy::TcpProxy`], a loopback TCP proxy that can blackhole a connection.
//!
//! Waiting is always on an event with a deadline (a condition variable, a socket read
//! timeout, or a state re-checked until the deadline), never a fixed sleep.

pub mod bin;
pub mod console;
pub mod desktop;
pub mod flood;
pub mod peer;
pub mod postgres;
pub mod process;
pub mod relay;
pub mod site;
pub mod slack;
pub mod smtp;
pub mod standins;
pub mod tcpproxy;
pub mod wine;

pub use peer::Peer;
pub use process::{agent_send, CollectorProcess};
pub use relay::{Faults, Relay};
pub use slack::{Answer, SlackStandIn};
pub use smtp::SmtpServer;

use std::time::{Duration, Instant};

/// Whether a message (a Slack post's text, an email) is the reminder of an alert nobody
/// acknowledged ("STILL UNANSWERED after N s"), not a page of the alert: an alert left
/// unanswered is reminded after its last tier's wait (60 s by default), then again, so a test
/// that counts an alert's pages counts the others.
pub fn is_reminder(text: &str) -> bool {
    text.contains("STILL UNANSWERED")
}

/// Re-check `cond` until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a UDP socket on 127.0.0.1")
}
