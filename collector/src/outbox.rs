//! The outbox: one worker per channel delivers stored jobs until each is delivered or given up.
//!
//! - A worker sleeps until a job is due or the store wakes it; there is no polling loop.
//! - Failures are retried with exponential backoff and jitter, never sooner than a
//!   `Retry-After`; permanent failures are not retried; after `give_up_after` a job is recorded
//!   as failed and logged as an error.
//! - Storm coalescing: the first alert goes out at once. After each message the worker waits
//!   `coalesce_window` before the next, and everything that became due meanwhile goes out as one
//!   message, so a webhook limited to about one message a second neither delays nor drops alerts.
//! - Workers are independent: one failing channel never holds up another.
//! - Jobs live in the store, so whatever is pending at a crash or shutdown resumes on the next
//!   start.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::channel::{Channel, DeliveryError};
use crate::config::OutboxSettings;
use crate::store::{now_ms, JobOutcome, Store};

/// The most alerts delivered in one message.
const MAX_BATCH: usize = crate::channel::MAX_ALERTS_PER_MESSAGE;

/// How long to wait for the next retry.
#[derive(Debug, Clone)]
pub struct RetrySchedule {
    first: Duration,
    max: Duration,
}

impl RetrySchedule {
    /// A schedule from the outbox settings.
    pub fn new(settings: &OutboxSettings) -> Self {
        RetrySchedule { first: settings.first_retry, max: settings.max_retry.max(settings.first_retry) }
    }

    /// The delay before retrying a job that has failed `attempts` times (1 after the first
    /// failure): `first × 2^(attempts−1)`, capped at `max`, then spread by ±20 % jitter so that
    /// many jobs failing together do not retry together; never less than `retry_after`.
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>, rng: &mut fastrand::Rng) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let base = self.first.saturating_mul(1u32 << exp).min(self.max);
        let jitter = 0.8 + rng.f64() * 0.4;
        let d = base.mul_f64(jitter);
        match retry_after {
            Some(r) => d.max(r),
            None => d,
        }
    }
}

/// Deliver `channel`'s jobs until `shutdown` is cancelled. An attempt in flight when shutdown
/// comes is allowed to end (each attempt is bounded by the channel's timeout).
pub async fn run_worker(channel: Arc<Channel>, store: Store, settings: OutboxSettings, shutdown: CancellationToken) {
    let name = channel.name();
    let wake: Arc<Notify> = store.waker(name);
    let schedule = RetrySchedule::new(&settings);
    let mut rng = fastrand::Rng::new();
    info!(channel = name, "outbox worker started");
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let now = now_ms();
        let jobs = match store.due_jobs(name, now, MAX_BATCH).await {
            Ok(j) => j,
            Err(e) => {
                error!(channel = name, error = %e, "cannot read the outbox; retrying in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        if jobs.is_empty() {
            let wait = match store.next_due(name).await {
                Ok(Some(t)) => Duration::from_millis((t - now_ms()).max(0) as u64),
                Ok(None) => Duration::from_secs(3600),
                Err(_) => Duration::from_secs(1),
            };
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => break,
            }
            continue;
        }

        let started = tokio::time::Instant::now();
        let alerts: Vec<_> = jobs.iter().map(|j| j.alert.clone()).collect();
        let ids: Vec<String> = alerts.iter().map(|a| a.alert_id.to_string()).collect();
        debug!(channel = name, alerts = ?ids, "delivering");
        let result = match tokio::time::timeout(settings.attempt_timeout, channel.deliver(&alerts)).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::transient(format!(
                "{name}: no answer within {} s",
                settings.attempt_timeout.as_secs()
            ))),
        };
        let done_at = now_ms();
        let outcomes: Vec<(i64, JobOutcome)> = jobs
            .iter()
            .map(|job| {
                let attempts = job.attempts + 1;
                let outcome = match &result {
                    Ok(()) => {
                        info!(channel = name, alert_id = %job.alert.alert_id, attempts, "notified");
                        JobOutcome::Delivered
                    }
                    Err(DeliveryError::Permanent { reason }) => {
                        error!(channel = name, alert_id = %job.alert.alert_id, attempts, error = %reason,
                               "NOT DELIVERED: the channel refused the alert; it will not be retried");
                        JobOutcome::Failed { error: reason.clone() }
                    }
                    Err(DeliveryError::Transient { reason, retry_after }) => {
                        let age = Duration::from_millis((done_at - job.created_at_ms).max(0) as u64);
                        let delay = schedule.delay(attempts, *retry_after, &mut rng);
                        if age + delay > settings.give_up_after {
                            let error = format!("gave up after {attempts} attempts over {} s: {reason}", age.as_secs());
                            error!(channel = name, alert_id = %job.alert.alert_id, error = %error,
                                   "NOT DELIVERED: giving up on this channel");
                            JobOutcome::Failed { error }
                        } else {
                            warn!(channel = name, alert_id = %job.alert.alert_id, attempts, error = %reason,
                                  retry_in_ms = delay.as_millis() as u64, "delivery failed; will retry");
                            JobOutcome::Retry {
                                next_attempt_at_ms: done_at + delay.as_millis() as i64,
                                error: reason.clone(),
                            }
                        }
                    }
                };
                (job.id, outcome)
            })
            .collect();
        // Record the outcome before anything else, for as long as the store fails (a full or
        // read-only disk): a delivered job forgotten here would be sent again. Only shutdown
        // stops the attempts early (after a few more tries); the job then stays pending and is
        // sent again after the restart: the documented duplicate window.
        let mut tries: u32 = 0;
        while let Err(e) = store.finish(outcomes.clone(), done_at).await {
            tries += 1;
            if matches!(e, crate::store::StoreError::Closed) || (shutdown.is_cancelled() && tries >= 10) {
                error!(channel = name, error = %e, "cannot record delivery outcome; the alert may be sent again after a restart");
                break;
            }
            if tries == 1 || tries.is_power_of_two() {
                error!(channel = name, error = %e, tries, "cannot record delivery outcome; retrying until the store accepts it");
            }
            let pause = Duration::from_millis(200u64.saturating_mul(u64::from(tries.min(25))));
            tokio::time::sleep(pause).await;
        }
        if tries > 0 {
            info!(channel = name, tries, "delivery outcome recorded after store errors");
        }
        tokio::select! {
            _ = tokio::time::sleep_until(started + settings.coalesce_window) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    info!(channel = name, "outbox worker stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule::new(&OutboxSettings {
            first_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(60),
            ..OutboxSettings::default()
        })
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let s = schedule();
        let mut rng = fastrand::Rng::with_seed(7);
        for (attempts, base) in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (40, 60.0)] {
            for _ in 0..100 {
                let d = s.delay(attempts, None, &mut rng).as_secs_f64();
                assert!(d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9, "attempt {attempts}: {d}");
            }
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let s = schedule();
        let mut rng = fastrand::Rng::with_seed(1);
        assert!(s.delay(1, Some(Duration::from_secs(30)), &mut rng) >= Duration::from_secs(30));
        assert!(s.delay(10, Some(Duration::from_secs(2)), &mut rng) >= Duration::from_secs(48));
    }

    #[test]
    fn jitter_spreads_retries() {
        let s = schedule();
        let mut rng = fastrand::Rng::with_seed(3);
        let delays: std::collections::HashSet<_> = (0..20).map(|_| s.delay(3, None, &mut rng)).collect();
        assert!(delays.len() > 10);
    }
}
