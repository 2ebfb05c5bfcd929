//! `sos-agent`: the panic button on each workstation.
//!
//! # Layout
//!
//! - [`config`]: the agent's TOML configuration and where it is looked for.
//! - [`identity`]: who and where: user, host, the address of the route to a collector.
//! - [`keys`] / [`enroll`]: the agent's own key from a one-time code, saved 0600, rotated in
//!   place when a collector sends a new one.
//! - [`paths`]: where the agent keeps its files on each platform.
//! - [`spool`]: alerts on disk from the press until a collector acknowledges them; what can
//!   never be sent is set aside in `spool/rejected/`.
//! - [`history`]: the record of delivered alerts (and their cancellation), for `sos-agent cancel`.
//! - [`send`]: the delivery of one SOS: seal, send to the collectors with retries (backoff and
//!   jitter, failing over across collectors) until one acknowledges or the deadline passes;
//!   heartbeats.
//! - [`run`]: the tray agent (`sos-agent run`): the UI loop on the main thread, fed by
//!   [`tray`] (icon and menu), [`hotkey`] / [`platform`] (the global hotkey), [`ipc`]
//!   (`sos-agent trigger`) and [`delivery`] (spool, sending, heartbeats on a tokio runtime);
//!   [`toast`] tells the person what happened, in the words of [`wording`].
//! - [`responder`]: heartbeats from one socket per collector, and what collectors push there:
//!   alarm popups on a responder desktop, "help is on the way" for the sender.
//!
//! [`cli`] holds the commands (`send`, `trigger`, `cancel`, `status`, `spool`, `enroll`);
//! `main.rs` only parses, sets up logging and calls it.

pub mod cli;
pub mod config;
pub mod delivery;
pub mod enroll;
pub mod history;
pub mod hotkey;
pub mod identity;
pub mod ipc;
pub mod keys;
pub mod paths;
pub mod platform;
pub mod responder;
pub mod run;
pub mod send;
pub mod spool;
pub mod toast;
pub mod tray;
pub mod wording;

pub use config::AgentConfig;
pub use send::{Delivered, SendError, Sender};
