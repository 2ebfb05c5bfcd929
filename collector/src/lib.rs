//! `sos-collector`: receives SOS datagrams, stores them durably, acknowledges them, and notifies
//! responders through an outbox that survives crashes.
//!
//! # Layout
//!
//! - A datagram enters in one file: `udp/mod.rs` ([`udp`]): the receive loop authenticates it,
//!   dispatches it by kind (SOS, cancel, heartbeat; enrollment in `udp/enroll.rs`), hands an
//!   SOS to the store and acknowledges once it is committed (`udp/ack.rs`); every answer goes
//!   through `udp/reply.rs` (the one size guard: never more bytes than the request).
//! - It is stored by [`store`]: the [`store::Store`] handle and its writer thread
//!   (`store/writer.rs`, group commit) over the SQLite file; the SQL by concern in `store/`
//!   (`alerts.rs`, `jobs.rs` for the outbox, `presence.rs`, `schema.rs` with the migrations;
//!   the responder loop's trait in `response.rs`, its SQL in `sqlite/response.rs`).
//! - A notification leaves from [`outbox`]: one worker per channel, woken by the store when a
//!   job is committed; retries with backoff and jitter on a monotonic clock, give-up, bounded
//!   resends when an outcome is unknown, storm coalescing within each channel's limits. It is
//!   sent by [`channel`] (each a [`channel::Notifier`]; [`channel::NAMES`] is the one list of
//!   channel names, [`channel::build`] the one place channels are made).
//! - Pushes leave from [`response::push`]: `alert_broadcast` to responder desktops and
//!   `responder_notice` to senders, at their last authenticated address, repeated until their
//!   receipt, rate-bounded (the only datagrams that are not replies).
//! - Escalation leaves from [`response::escalation`]: the first tier of an alert fires in its
//!   insert transaction; the engine fires each later tier at its durable deadline (the store's
//!   `escalations`) unless someone acknowledged, and notices commits by `sos-collector alerts`.
//! - [`service`]: [`run`] / [`Collector::run`] take a bound UDP socket and a shutdown future,
//!   start every task and thread above and supervise them (one that dies ends the service).
//! - [`config`]: the TOML configuration, its defaults and its validation.
//! - [`integrity`]: the store's check at start, `store check` and `store recover`.
//! - [`registry`]: enrolled agents and their keys, one-time codes, rotation, revocation.
//! - [`forward`]: a site collector's link to its centre (the `forward` channel's requests, its
//!   heartbeats, the centre's acknowledgements coming back).
//! - [`ratelimit`]: token buckets: per agent after authentication, and for enrollment.
//! - [`refusal`]: what the receive path refuses, logged at a bounded rate.
//! - [`stats`]: counters of what was received, dropped and sent.
//! - [`http`]: the web console (live alerts, an alert, agents, history and export), /metrics,
//!   /healthz and /readyz; [`silence`]: enrolled agents that stopped sending heartbeats;
//!   [`links`]: the signed, expiring, single-use acknowledge links that channels put in
//!   their messages and the console's `/ack/{token}` page accepts.
//! - The binary: `main.rs` parses arguments and sets up logging; the administrator commands
//!   are in `cli/`.
//!
//! The order of events for one SOS: datagram → [`sos_shared::Key::open`] → store commit of the
//! alert and one outbox job per channel → SOS-ACK → each channel's worker delivers its job.
//! An ACK therefore always means "stored"; a crash after it loses nothing.

pub mod channel;
pub mod config;
pub mod forward;
pub mod http;
pub mod integrity;
pub mod links;
pub mod outbox;
pub mod ratelimit;
pub mod refusal;
pub mod registry;
pub mod response;
pub mod service;
pub mod silence;
pub mod stats;
pub mod store;
pub mod udp;

pub use config::Config;
pub use service::{run, Collector, CollectorError};
pub use stats::{Stats, StatsSnapshot};

/// Make rustls use the `ring` provider (the build carries no other). Idempotent; call before
/// building any TLS client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
