//! What the receive path refuses, told at a bounded rate.
//!
//! A flood is made of refusals, so a log line per refusal lets anyone fill the disk (one
//! replayed datagram from 5,000 forged addresses once wrote 300,000 lines in 8 s). Here every
//! cause gets at most one line per [`INTERVAL`], written at the first refusal of the interval
//! with its details; what follows in the same interval is counted and reported in the next
//! line, or by [`Refusals::flush`] once the interval is over. Datagrams with a known key id
//! that fail authentication are also told per source, at most once per [`WRONG_KEY_INTERVAL`]
//! with a count (an agent with a wrong key is a real fault an administrator must find), within
//! a global cap on such lines. A time hint goes out for one token at most once per interval.
//!
//! Every table here is bounded: a flood from forged addresses cannot grow memory.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::ratelimit::{Limiter, Rate};

/// At most one line per cause in this time.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// At most one "wrong key?" line per source in this time.
pub const WRONG_KEY_INTERVAL: Duration = Duration::from_secs(60);
/// Sources whose authentication failures are told apart; beyond that, they are only counted.
const MAX_SOURCES: usize = 4096;
/// Tokens remembered for the time-hint rule.
const MAX_HINTED: usize = 16_384;

/// Why a datagram was refused: one line per cause per interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Not a v1 datagram (size, magic, version, encoding).
    Malformed,
    /// A key id the collector does not know (or the site key while it is not accepted).
    UnknownKey,
    /// A known key id, but the token does not authenticate.
    WrongKey,
    /// Authentic, older than the token age limit.
    Expired,
    /// Authentic, dated beyond the future skew limit.
    FromFuture,
    /// Authentic, but not a valid message.
    BadPayload,
    /// Authentic, sealed with a revoked agent's key or a retired key (not an SOS).
    Revoked,
    /// An SOS sealed with a revoked agent's key or a retired key: told apart, as an error.
    RevokedSos,
    /// Authentic, over the agent's rate limit.
    AgentRate,
    /// An enrollment datagram that is not a well-formed, padded request.
    EnrollMalformed,
    /// An enrollment start over its source's or the global enrollment budget.
    EnrollBudget,
    /// An enrollment start for a code the store does not have.
    EnrollUnknown,
    /// An enrollment start for a code used already.
    EnrollUsed,
    /// An enrollment start for an expired code.
    EnrollExpired,
    /// An enrollment start for a code tried too often.
    EnrollBurnt,
    /// An enrollment finish whose proof does not verify.
    EnrollWrongCode,
    /// An enrollment finish without a start.
    EnrollNoStart,
    /// A reply not sent because it would be larger than its request.
    ReplySuppressed,
    /// A time hint not sent: this token had one in this interval, or hints are over their rate.
    HintWithheld,
    /// An SOS (or CANCEL) the store could not take: not acknowledged, the agent retries.
    StoreFailed,
    /// An SOS (or CANCEL) dropped before the store because too many wait on it already (a hung
    /// disk under a flood of retransmissions): not acknowledged, the agent retries.
    StoreBusy,
    /// A reply the socket would not send (no route to a forged address, say).
    ReplyFailed,
    /// An authentic `respond` from an agent that is not a responder desktop (the site key, or
    /// an enrolled agent listed in no responder's `agents`).
    NotAResponder,
    /// An authentic `forward_sos` or `forward_update` not from an enrolled site collector, or an
    /// update for an alert that site did not forward.
    NotASite,
}

impl Cause {
    /// What a line about this cause says.
    pub fn text(self) -> &'static str {
        match self {
            Cause::Malformed => "dropped malformed datagrams",
            Cause::UnknownKey => "dropped datagrams for an unknown key id",
            Cause::WrongKey => "dropped datagrams with a known key id that failed authentication (wrong key?)",
            Cause::Expired => {
                "rejected authentic tokens older than the token age limit: a replay, or a sender's clock is behind"
            }
            Cause::FromFuture => "rejected authentic tokens dated ahead: a sender's clock is fast",
            Cause::BadPayload => "dropped authentic datagrams with an invalid message",
            Cause::Revoked => "refused authentic datagrams sealed with a revoked or retired key",
            Cause::RevokedSos => "REFUSED SOS sealed with a revoked or retired key; not acknowledged",
            Cause::AgentRate => "rate limit: dropped datagrams from agents over their limit",
            Cause::EnrollMalformed => "dropped malformed enrollment datagrams",
            Cause::EnrollBudget => "enrollment budget: dropped enrollment starts for codes not pending (a flood?)",
            Cause::EnrollUnknown => "enrollment refused: no such code; no answer sent",
            Cause::EnrollUsed => "enrollment refused: the code was used already; no answer sent",
            Cause::EnrollExpired => "enrollment refused: the code has expired; no answer sent",
            Cause::EnrollBurnt => "enrollment refused: the code was tried too often and is burnt; no answer sent",
            Cause::EnrollWrongCode => "enrollment refused: wrong code (the attempt counts against the code)",
            Cause::EnrollNoStart => "enrollment finishes without a start dropped",
            Cause::ReplySuppressed => "replies suppressed: they would have been larger than their request",
            Cause::HintWithheld => {
                "time hints withheld: the token had one in this interval, or hints are over their rate"
            }
            Cause::StoreFailed => "CANNOT STORE AN SOS: not acknowledged, the agent will retry or fail over",
            Cause::StoreBusy => {
                "CANNOT STORE AN SOS: too many wait for the store already (is it hung?); not acknowledged, the agent will retry"
            }
            Cause::ReplyFailed => "cannot send a reply",
            Cause::NotAResponder => {
                "refused respond: not sealed by an enrolled agent listed in a responder's agents; not recorded, not answered"
            }
            Cause::NotASite => {
                "refused a forwarded alert or update: not sealed by an enrolled site collector (enroll --site), or about an alert that site did not forward; not recorded, not answered"
            }
        }
    }

    /// Whether lines about this cause are warnings (else debug: routine junk).
    pub fn is_warning(self) -> bool {
        !matches!(
            self,
            Cause::Malformed | Cause::UnknownKey | Cause::EnrollMalformed | Cause::EnrollNoStart | Cause::HintWithheld
        )
    }
}

#[derive(Debug, Default)]
struct CauseState {
    last_line: Option<Instant>,
    /// Refusals since the last line.
    unreported: u64,
}

#[derive(Debug)]
struct SourceState {
    last_line: Instant,
    /// Failures since the last line.
    unreported: u64,
}

/// A line to write: what, and how many refusals of that cause it covers beyond the one at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// Refusals of the cause since the previous line (not counting the one this line is about).
    pub before: u64,
}

/// A summary line for the end of an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Summary {
    /// `count` refusals of `cause` since its last line.
    Cause {
        /// Which cause.
        cause: Cause,
        /// How many.
        count: u64,
    },
    /// `count` authentication failures from `source` since its last line.
    WrongKeyFrom {
        /// The source address.
        source: IpAddr,
        /// How many.
        count: u64,
    },
}

/// The bounded memory of what was told.
#[derive(Debug)]
pub struct Refusals {
    causes: HashMap<Cause, CauseState>,
    sources: HashMap<IpAddr, SourceState>,
    /// "Wrong key?" lines from all sources together.
    source_lines: Limiter<()>,
    hinted: HashMap<u64, Instant>,
    hasher: RandomState,
    /// Time hints from all tokens together.
    hints: Limiter<()>,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            causes: HashMap::new(),
            sources: HashMap::new(),
            // Up to 10 sources told at once, then one a second.
            source_lines: Limiter::new(Rate { per_sec: 1.0, burst: 10.0 }, 1),
            hinted: HashMap::new(),
            hasher: RandomState::new(),
            // A hint is never larger than its request, but it goes to an address anyone can
            // forge: no more than this many a second in all.
            hints: Limiter::new(Rate { per_sec: 100.0, burst: 200.0 }, 1),
        }
    }
}

impl Refusals {
    /// One refusal of `cause` at `now`: `Some` if a line is due now (the caller writes it with
    /// the refusal's details and [`Line::before`]), `None` if it is only counted.
    pub fn note(&mut self, cause: Cause, now: Instant) -> Option<Line> {
        let s = self.causes.entry(cause).or_default();
        if s.last_line.is_some_and(|t| now.saturating_duration_since(t) < INTERVAL) {
            s.unreported += 1;
            return None;
        }
        s.last_line = Some(now);
        Some(Line { before: std::mem::take(&mut s.unreported) })
    }

    /// One authentication failure from `source` at `now`: `Some(count)` if a "wrong key?" line
    /// for this source is due, covering `count` failures (this one included).
    pub fn wrong_key(&mut self, source: IpAddr, now: Instant) -> Option<u64> {
        if let Some(s) = self.sources.get_mut(&source) {
            s.unreported += 1;
            if now.saturating_duration_since(s.last_line) < WRONG_KEY_INTERVAL || !self.source_lines.allow((), now) {
                return None;
            }
            s.last_line = now;
            return Some(std::mem::take(&mut s.unreported));
        }
        if self.sources.len() >= MAX_SOURCES {
            self.sources
                .retain(|_, s| s.unreported > 0 || now.saturating_duration_since(s.last_line) < WRONG_KEY_INTERVAL);
        }
        if self.sources.len() >= MAX_SOURCES || !self.source_lines.allow((), now) {
            // Counted under the cause only.
            return None;
        }
        self.sources.insert(source, SourceState { last_line: now, unreported: 0 });
        Some(1)
    }

    /// Whether a time hint may answer `token` at `now` (at most once per token per interval,
    /// and within the global hint rate).
    pub fn may_hint(&mut self, token: &str, now: Instant) -> bool {
        let h = self.hasher.hash_one(token);
        if self.hinted.get(&h).is_some_and(|t| now.saturating_duration_since(*t) < INTERVAL) {
            return false;
        }
        if self.hinted.len() >= MAX_HINTED {
            self.hinted.retain(|_, t| now.saturating_duration_since(*t) < INTERVAL);
            if self.hinted.len() >= MAX_HINTED {
                return false;
            }
        }
        if !self.hints.allow((), now) {
            return false;
        }
        self.hinted.insert(h, now);
        true
    }

    /// What was counted and not yet told, for causes and sources whose interval is over.
    pub fn flush(&mut self, now: Instant) -> Vec<Summary> {
        let mut out = Vec::new();
        for (cause, s) in &mut self.causes {
            if s.unreported > 0 && s.last_line.is_none_or(|t| now.saturating_duration_since(t) >= INTERVAL) {
                s.last_line = Some(now);
                out.push(Summary::Cause { cause: *cause, count: std::mem::take(&mut s.unreported) });
            }
        }
        for (source, s) in &mut self.sources {
            if s.unreported > 0 && now.saturating_duration_since(s.last_line) >= WRONG_KEY_INTERVAL {
                if !self.source_lines.allow((), now) {
                    break;
                }
                s.last_line = now;
                out.push(Summary::WrongKeyFrom { source: *source, count: std::mem::take(&mut s.unreported) });
            }
        }
        self.sources.retain(|_, s| s.unreported > 0 || now.saturating_duration_since(s.last_line) < WRONG_KEY_INTERVAL);
        self.hinted.retain(|_, t| now.saturating_duration_since(*t) < INTERVAL);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_cause_per_interval_with_the_count_of_the_rest() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        assert_eq!(r.note(Cause::Expired, t0), Some(Line { before: 0 }));
        for i in 0..100_000 {
            assert_eq!(r.note(Cause::Expired, t0 + Duration::from_micros(i)), None);
        }
        // Another cause has its own line.
        assert!(r.note(Cause::WrongKey, t0).is_some());
        // Within the interval: nothing to flush; after it, the count.
        assert!(r.flush(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(r.flush(t0 + INTERVAL), vec![Summary::Cause { cause: Cause::Expired, count: 100_000 }]);
        assert!(r.flush(t0 + INTERVAL * 2).is_empty(), "told once");
        // The next refusal after a quiet interval gets its line at once.
        assert_eq!(r.note(Cause::Expired, t0 + INTERVAL * 3), Some(Line { before: 0 }));
    }

    #[test]
    fn wrong_key_once_a_minute_per_source_and_few_sources_at_once() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        let a: IpAddr = "127.0.0.9".parse().unwrap();
        assert_eq!(r.wrong_key(a, t0), Some(1));
        for _ in 0..500 {
            assert_eq!(r.wrong_key(a, t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(r.wrong_key(a, t0 + WRONG_KEY_INTERVAL), Some(501));
        // 5,000 forged sources at once: the global cap lets only a few be told one by one.
        let told = (0..5000u32)
            .filter(|i| {
                r.wrong_key(IpAddr::from([127, 1, (i / 250) as u8, (i % 250) as u8]), t0 + WRONG_KEY_INTERVAL).is_some()
            })
            .count();
        assert!(told <= 10, "{told} sources told at once");
    }

    #[test]
    fn a_token_is_hinted_once_per_interval() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        assert!(r.may_hint("token-a", t0));
        assert!(!r.may_hint("token-a", t0 + Duration::from_secs(1)));
        assert!(r.may_hint("token-b", t0 + Duration::from_secs(1)));
        assert!(r.may_hint("token-a", t0 + INTERVAL));
        // Many distinct tokens: the global rate holds.
        let sent = (0..10_000).filter(|i| r.may_hint(&format!("t{i}"), t0 + INTERVAL)).count();
        assert!(sent <= 200, "{sent}");
    }
}
