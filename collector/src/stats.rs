//! Counters of what the collector received and did, for logs and tests.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters, shared by the receive loop and its tasks.
        #[derive(Debug, Default)]
        pub struct Stats { $($(#[$doc])* pub $name: AtomicU64,)* }

        /// A copy of the counters at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct StatsSnapshot { $($(#[$doc])* pub $name: u64,)* }

        impl Stats {
            /// Read every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl fmt::Display for StatsSnapshot {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut first = true;
                $(
                    if !first { f.write_str(" ")?; }
                    first = false;
                    write!(f, concat!(stringify!($name), "={}"), self.$name)?;
                )*
                let _ = first;
                Ok(())
            }
        }
    };
}

counters! {
    /// Datagrams read from the socket.
    received,
    /// Dropped: not an SOS v1 datagram (size, magic, version, encoding), or an authentic token
    /// whose content is not a v1 message.
    malformed,
    /// Dropped: unknown key id or a token that fails authentication.
    unauthenticated,
    /// Dropped: authentic but older than the token age limit (replay or slow clock).
    expired,
    /// Dropped: authentic but dated beyond the future skew limit (fast clock).
    from_future,
    /// Dropped: a message kind the collector does not accept (e.g. an ACK sent to it).
    unexpected,
    /// Cancellations recorded (first time for their alert).
    cancelled,
    /// Cancellations of an alert this collector does not have (no reply).
    cancel_unknown,
    /// SOS stored for the first time.
    sos_stored,
    /// SOS retransmissions recognised as already stored.
    sos_duplicate,
    /// Heartbeats answered.
    heartbeats,
    /// Time hints sent in answer to authentic tokens refused for their timestamp.
    time_hints,
    /// Replies sent.
    replies_sent,
    /// Replies not sent because they would have been larger than their request.
    replies_suppressed,
    /// SOS not acknowledged because the store failed.
    store_errors,
    /// Enrollment starts for codes that are not pending, dropped over their source's or the
    /// global enrollment budget. (Nothing else is limited by its source.)
    rate_limited_source,
    /// Dropped after authentication: the agent (or site-key sender) exceeded its rate limit.
    rate_limited_agent,
    /// Dropped: authentic, but sealed with a revoked agent's key or a retired previous key.
    revoked,
    /// Agents enrolled with a one-time code.
    enrolled,
    /// `respond` recorded or answered (acknowledged, already, closed).
    responds,
    /// `respond` refused: not sealed with an enrolled agent's key, or the agent is not listed
    /// in any responder's `agents`.
    not_a_responder,
    /// Alerts forwarded by a site collector and stored here (a centre), first arrivals only.
    forwarded_in,
    /// `forward_sos` / `forward_update` refused: not sealed by an enrolled site, or an update
    /// for an alert that site did not forward.
    forward_refused,
    /// Receipts (`broadcast_receipt`, `notice_receipt`) received.
    receipts,
    /// Pushes sent (`alert_broadcast`, `responder_notice`).
    pushes_sent,
    /// Pushes due but held back by the global push rate or the bound on tracked pushes; they
    /// go out on a later tick.
    pushes_deferred,
    /// Enrollment requests refused (unknown, used, expired or burnt code, wrong code, finish
    /// without a start, over a pending code's budget).
    enroll_refused,
}

impl Stats {
    /// Add one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

impl StatsSnapshot {
    /// Every datagram dropped without a reply.
    pub fn dropped(&self) -> u64 {
        self.malformed
            + self.unauthenticated
            + self.expired
            + self.from_future
            + self.unexpected
            + self.cancel_unknown
            + self.rate_limited_source
            + self.rate_limited_agent
            + self.revoked
            + self.enroll_refused
    }
}
