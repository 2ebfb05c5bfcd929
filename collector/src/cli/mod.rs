//! The administrator commands that have outgrown `main.rs`.

pub mod store;
