//! The administrator commands that have outgrown `main.rs`.

pub mod check_config;
pub mod store;
