//! The embedded SQLite implementation of the store's traits. The responder loop's SQL is here
//! (`response.rs`); the older SQL (`alerts.rs`, `jobs.rs`, `presence.rs`) moves here as it is touched.

pub(crate) mod response;
