//! `sos-agent`: the panic button on each workstation.
//!
//! # Layout
//!
//! - [`config`]: the agent's TOML configuration and where it is looked for.
//! - [`identity`]: who and where: user, host, the address of the route to a collector.
//! - [`paths`]: where the agent keeps its files on each platform.
//! - [`spool`]: alerts on disk from the press until a collector acknowledges them.
//! - [`send`]: the delivery of one SOS: seal, send to the collectors with retries (backoff and
//!   jitter, failing over across collectors) until one acknowledges or the deadline passes.
//!
//! The tray icon, global hotkey, `sos-agent trigger` and heartbeats are not built yet;
//! `sos-agent send` is the headless front end of [`send`] and [`spool`].

pub mod config;
pub mod identity;
pub mod paths;
pub mod send;
pub mod spool;

pub use config::AgentConfig;
pub use send::{Delivered, SendError, Sender};
