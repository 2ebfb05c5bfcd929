//! The responder loop after an alert is stored: escalation deadlines ([`escalation`]);
//! acknowledgements in (the `respond` of a responder desktop, handled in `udp/`, and through the
//! store, [`crate::store::Response`], from the command line and the console); broadcasts to
//! responder desktops and notices to senders out ([`push`]).

pub mod escalation;
pub mod push;
