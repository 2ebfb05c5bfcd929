//! The one retry schedule of the project: exponential backoff with ±20 % jitter, capped, with a
//! floor. The agent's SOS, CANCEL and status rounds and its enrollment exchange use it; the
//! collector's outbox can adopt it (its own `RetrySchedule` computes the same delays).
//!
//! The jitter keeps a floor of agents retrying after an outage from retrying in lock-step; the
//! floor (`first × 0.8`, and never under [`Backoff::MIN_FIRST`]) keeps any loop built on it from
//! spinning, whatever the caller configured.

use std::time::Duration;

/// Delays that double from `first` up to `max`, each spread by ±20 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry (before jitter).
    pub first: Duration,
    /// The longest delay (before jitter).
    pub max: Duration,
}

impl Backoff {
    /// The smallest `first` that [`Backoff::delay`] uses: a schedule configured below it is
    /// raised to it, so that no retry loop runs without a delay.
    pub const MIN_FIRST: Duration = Duration::from_millis(10);

    /// A schedule from `first` to `max` (`max` is raised to `first` if below it).
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, max }
    }

    /// The delay after failure number `round` (0-based): `first × 2^round`, capped at `max`,
    /// times a random factor in [0.8, 1.2]. Never less than `0.8 × MIN_FIRST`.
    pub fn delay(&self, round: u32, rng: &mut fastrand::Rng) -> Duration {
        let first = self.first.max(Self::MIN_FIRST);
        let base = first.saturating_mul(1u32 << round.min(20)).min(self.max.max(first));
        base.mul_f64(0.8 + rng.f64() * 0.4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_are_capped_and_never_zero() {
        let b = Backoff::new(Duration::from_millis(300), Duration::from_secs(3));
        let mut rng = fastrand::Rng::with_seed(9);
        for (round, base) in [(0, 0.3), (1, 0.6), (2, 1.2), (3, 2.4), (4, 3.0), (30, 3.0), (u32::MAX, 3.0)] {
            for _ in 0..50 {
                let w = b.delay(round, &mut rng).as_secs_f64();
                assert!(w >= base * 0.8 - 1e-9 && w <= base * 1.2 + 1e-9, "round {round}: {w}");
            }
        }
        let zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(zero.delay(0, &mut rng) >= Backoff::MIN_FIRST.mul_f64(0.8));
    }
}
