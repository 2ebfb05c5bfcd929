//! The responder loop after an alert is stored: escalation deadlines ([`escalation`]).
//! Acknowledgements arrive through the store ([`crate::store::Response`]) from responder
//! desktops, the command line and the console.

pub mod escalation;
