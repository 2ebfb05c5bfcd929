//! The SOS wire protocol (v1), its crypto, and the types that the agent and the collector share.
//!
//! # Layout
//!
//! - [`alert`]: [`AlertId`], the 128-bit identity an SOS keeps across every retry (agents make
//!   it time-ordered: the press's millisecond, then 80 random bits).
//! - [`protocol`]: the datagram layout (cleartext header + Fernet token), the message kinds as a
//!   serde enum, and the named constants (sizes, limits) in one place.
//! - [`config`]: what both configuration files share: located errors, secrets from files or
//!   environment variables, key files readable only by their owner.
//! - [`crypto`]: [`Key`] (a Fernet key and its key id), sealing a [`Message`] into a datagram and
//!   opening one with the replay checks (token age limit and future clock skew).
//!
//! - [`backoff`]: the one retry schedule (exponential, ±20 % jitter, capped, with a floor).
//! - [`enroll`]: enrollment by one-time code (SPAKE2), which gives an agent its own key.
//!
//! `docs/PROTOCOL.md` at the repository root is the normative description of what this crate
//! implements; the test vectors in `docs/test-vectors/` are checked by this crate's tests.

pub mod alert;
pub mod backoff;
pub mod config;
pub mod crypto;
pub mod enroll;
#[cfg(feature = "client")]
pub mod enroll_client;
pub mod protocol;

pub use alert::AlertId;
pub use crypto::{Key, KeyError, OpenError, Opened, SealError, TimeWindow};
pub use protocol::{DecodeError, KeyId, Message};

/// Seconds since the Unix epoch, as the wire protocol counts time.
///
/// A clock set before 1970 reads as 0, which the replay checks then reject as too old.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
