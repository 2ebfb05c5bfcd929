//! Token buckets: per source address before any decryption, per agent after authentication,
//! and one for enrollment requests.
//!
//! A bucket holds up to `burst` tokens and refills at `rate` per second; each datagram takes one
//! token or is dropped. The map of buckets is bounded: when it is full, buckets that have been
//! idle long enough to be full again are swept, and if it is still full, new keys share one
//! overflow bucket (so a flood from spoofed addresses cannot grow memory, and gets one bucket's
//! worth of work between them).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// Rate and burst of one kind of limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens per second.
    pub per_sec: f64,
    /// The most tokens a bucket holds.
    pub burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Buckets keyed by `K`, at most `max_keys` of them.
#[derive(Debug)]
pub struct Limiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
    overflow: Option<Bucket>,
}

impl<K: Hash + Eq> Limiter<K> {
    /// A limiter with `rate` per key, tracking at most `max_keys` keys.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Limiter { rate, max_keys: max_keys.max(1), buckets: HashMap::new(), overflow: None }
    }

    /// Take a token for `key` at `now`; `false` means drop.
    pub fn allow(&mut self, key: K, now: Instant) -> bool {
        let rate = self.rate;
        if let Some(b) = self.buckets.get_mut(&key) {
            return b.take(rate, now);
        }
        if self.buckets.len() >= self.max_keys {
            // A bucket idle for burst / rate seconds is full again: forgetting it changes nothing.
            let refill = std::time::Duration::from_secs_f64(rate.burst / rate.per_sec);
            self.buckets.retain(|_, b| now.saturating_duration_since(b.at) < refill);
        }
        if self.buckets.len() >= self.max_keys {
            let b = self.overflow.get_or_insert(Bucket { tokens: rate.burst, at: now });
            return b.take(rate, now);
        }
        let mut b = Bucket { tokens: rate.burst, at: now };
        let ok = b.take(rate, now);
        self.buckets.insert(key, b);
        ok
    }

    /// How many keys have a bucket.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key has a bucket.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_per_key() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Rate { per_sec: 10.0, burst: 5.0 }, 100);
        assert_eq!((0..8).filter(|_| l.allow("a", t0)).count(), 5);
        assert!(l.allow("b", t0), "another key has its own bucket");
        assert!(!l.allow("a", t0 + Duration::from_millis(50)));
        assert!(l.allow("a", t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(10);
        assert_eq!((0..8).filter(|_| l.allow("a", later)).count(), 5, "refills to the burst, no more");
    }

    #[test]
    fn the_map_is_bounded_and_overflow_shares_one_bucket() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Rate { per_sec: 1.0, burst: 2.0 }, 3);
        for k in 0..3 {
            assert!(l.allow(k, t0));
        }
        // Full, nothing idle: new keys share the overflow bucket.
        assert!(l.allow(10, t0));
        assert!(l.allow(11, t0));
        assert!(!l.allow(12, t0));
        assert_eq!(l.len(), 3);
        // Once the old buckets are idle long enough, they are swept and new keys get their own.
        let later = t0 + Duration::from_secs(3);
        assert!(l.allow(20, later));
        assert!(l.len() <= 3);
    }
}
