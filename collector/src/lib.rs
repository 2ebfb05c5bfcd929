//! `sos-collector`: receives SOS datagrams, stores them durably, acknowledges them, and notifies
//! responders through an outbox that survives crashes.
//!
//! # Layout
//!
//! - [`config`]: the TOML configuration, its defaults and its validation.
//! - [`server`]: [`run`] takes a bound UDP socket and a shutdown future; the receive loop
//!   authenticates datagrams, hands SOS to the store and acknowledges once they are committed.
//! - [`store`]: the SQLite store (alerts + outbox), with group commit on a writer thread.
//! - [`integrity`]: the store's check at start, `store check` and `store recover`.
//! - [`registry`]: enrolled agents and their keys, one-time codes, rotation, revocation.
//! - [`ratelimit`]: token buckets: per agent after authentication, and for enrollment.
//! - [`refusal`]: what the receive path refuses, logged at a bounded rate.
//! - [`outbox`]: one worker per channel: retries with backoff and jitter on a monotonic clock,
//!   give-up, bounded resends when an outcome is unknown, storm coalescing within each channel's
//!   limits.
//! - [`channel`]: the notification channels (log, Slack, email) and how an alert reads in each.
//! - [`stats`]: counters of what was received, dropped and sent.
//!
//! The order of events for one SOS: datagram → [`sos_shared::Key::open`] → store commit of the
//! alert and one outbox job per channel → SOS-ACK → each channel's worker delivers its job.
//! An ACK therefore always means "stored"; a crash after it loses nothing.

pub mod channel;
pub mod config;
pub mod integrity;
pub mod outbox;
pub mod ratelimit;
pub mod refusal;
pub mod registry;
pub mod server;
pub mod stats;
pub mod store;

pub use config::Config;
pub use server::{run, Collector, CollectorError};
pub use stats::{Stats, StatsSnapshot};

/// Make rustls use the `ring` provider (the build carries no other). Idempotent; call before
/// building any TLS client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
