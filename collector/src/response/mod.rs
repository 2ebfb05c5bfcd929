//! The responder loop after an alert is stored: acknowledgements in (the `respond` of a
//! responder desktop, handled in `udp/`), broadcasts to responder desktops and notices to
//! senders out ([`push`]).

pub mod push;
