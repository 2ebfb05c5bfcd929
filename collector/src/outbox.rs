//! The outbox: one worker per channel delivers stored jobs until each is delivered or given up.
//!
//! - A worker sleeps until a job is due or the store wakes it; there is no polling loop, and a
//!   job that cannot go yet (a cancellation behind its pending alert) does not wake it.
//! - Every deadline is on the outbox clock ([`outbox_clock_ms`]): monotonic, so a step of the
//!   wall clock neither holds a retry back nor gives up early. A worker re-bases the deadlines
//!   kept in the store when it starts ([`crate::store::Db::rebase_outbox`]).
//! - Failures are retried with exponential backoff and jitter ([`RetrySchedule`], the one
//!   schedule), never sooner than a `Retry-After`; permanent failures are not retried; after
//!   `give_up_after` a job is recorded as failed and logged as an error.
//! - Outcome unknown (the request was sent, no answer in time; what a timeout means is the
//!   channel's call, [`Notifier::timed_out`](crate::channel::Notifier::timed_out)): the channel may have shown it,
//!   so the retry waits at least [`UNKNOWN_PACE`] × `attempt_timeout`, and after
//!   [`MAX_UNKNOWN_OUTCOMES`] such attempts the job is recorded as failed: a slow channel shows
//!   an alert at most that many times.
//! - Storm coalescing: the first alert goes out at once. After each message the worker waits
//!   `coalesce_window` (at least the channel's rate limit) before the next, and what became due
//!   meanwhile goes out together, as many alerts per message as the channel's limits allow
//!   ([`Notifier::fits`](crate::channel::Notifier::fits)). A message of several alerts that the channel refuses is split (the
//!   next messages carry half as many); only an alert refused alone fails.
//! - Workers are independent: one failing channel never holds up another.
//! - Jobs live in the store, so whatever is pending at a crash or shutdown resumes on the next
//!   start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::channel::{Channel, DeliveryError};
use crate::config::OutboxSettings;
use crate::store::{now_ms, outbox_clock_ms, Job, JobOutcome, Store};

/// The most due jobs read at once: more than any channel's message carries.
const READ_AT_ONCE: usize = 64;

/// After an attempt whose outcome is unknown, the next waits at least this many attempt timeouts.
pub const UNKNOWN_PACE: u32 = 4;

/// Attempts with an unknown outcome after which a job is given up: the most times a slow
/// channel can show one alert (counted per run of the collector).
pub const MAX_UNKNOWN_OUTCOMES: u32 = 3;

/// How long to wait for the next retry, and when to stop: the outbox's one schedule.
#[derive(Debug, Clone)]
pub struct RetrySchedule {
    first: Duration,
    max: Duration,
    /// A job older than this after a failed attempt is given up.
    give_up_after: Duration,
    /// The least wait after an attempt whose outcome is unknown.
    unknown_pace: Duration,
}

impl RetrySchedule {
    /// A schedule from the outbox settings.
    pub fn new(settings: &OutboxSettings) -> Self {
        RetrySchedule {
            first: settings.first_retry,
            max: settings.max_retry.max(settings.first_retry),
            give_up_after: settings.give_up_after,
            unknown_pace: settings.attempt_timeout.saturating_mul(UNKNOWN_PACE),
        }
    }

    /// The longest a pending job may wait for its next attempt.
    pub fn longest_wait(&self) -> Duration {
        self.max.max(self.unknown_pace)
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

/// What one attempt meant for one of the jobs in its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// As the channel answered.
    AsAnswered,
    /// The channel refused a message of several alerts: try these again in smaller messages.
    Split,
}

/// What becomes of `job` after an attempt that ended with `result` at `done_at` (outbox
/// clock); `unknowns` counts its attempts with an unknown outcome, this one included.
fn decide(
    job: &Job,
    result: &Result<(), DeliveryError>,
    verdict: Verdict,
    unknowns: u32,
    done_at: i64,
    schedule: &RetrySchedule,
    rng: &mut fastrand::Rng,
) -> JobOutcome {
    let attempts = job.attempts + 1;
    let age = Duration::from_millis((done_at - job.created_at_ms).max(0) as u64);
    // Given up only once `give_up_after` has passed: a wait that would end beyond it (a long
    // `Retry-After`, a webhook's schedule) is cut short so that the last attempt is made at the
    // deadline, not skipped.
    let retry = |delay: Duration, error: String| match schedule.give_up_after.checked_sub(age) {
        Some(left) if !left.is_zero() => {
            JobOutcome::Retry { next_attempt_at_ms: done_at + delay.min(left).as_millis() as i64, error }
        }
        _ => {
            JobOutcome::Failed { error: format!("gave up after {attempts} attempts over {} s: {error}", age.as_secs()) }
        }
    };
    match result {
        Ok(()) => JobOutcome::Delivered,
        Err(DeliveryError::Permanent { reason }) if verdict == Verdict::Split => {
            // Right away: the worker's pace between messages still applies.
            JobOutcome::Retry {
                next_attempt_at_ms: done_at,
                error: format!("refused in a message of several alerts: {reason}"),
            }
        }
        Err(DeliveryError::Permanent { reason }) => JobOutcome::Failed { error: reason.clone() },
        Err(DeliveryError::Transient { reason, retry_after }) => {
            retry(schedule.delay(attempts, *retry_after, rng), reason.clone())
        }
        Err(DeliveryError::Unknown { reason }) if unknowns >= MAX_UNKNOWN_OUTCOMES => JobOutcome::Failed {
            error: format!(
                "outcome unknown: {unknowns} attempts were sent but not answered in time, so the channel may \
                 have shown this alert up to {unknowns} times; not sent again: {reason}"
            ),
        },
        Err(DeliveryError::Unknown { reason }) => {
            retry(schedule.delay(attempts, None, rng).max(schedule.unknown_pace), format!("outcome unknown: {reason}"))
        }
    }
}

/// Deliver `channel`'s jobs until `shutdown` is cancelled. An attempt in flight when shutdown
/// comes is allowed to end (each attempt is bounded by the channel's timeout).
/// `wake` is the channel's [`Store::waker`].
pub async fn run_worker(
    channel: Channel,
    store: Store,
    wake: Arc<Notify>,
    settings: OutboxSettings,
    shutdown: CancellationToken,
) {
    let name = channel.name();
    let mut schedule = RetrySchedule::new(&settings);
    if !channel.gives_up() {
        schedule.give_up_after = Duration::MAX;
    }
    let pace = settings.coalesce_window.max(channel.min_interval());
    let mut rng = fastrand::Rng::new();
    // The most alerts in the next message: halved when the channel refuses a message of several,
    // doubled back after each delivery.
    let mut limit = usize::MAX;
    // Attempts with an unknown outcome, per job still pending.
    let mut unknowns: HashMap<i64, u32> = HashMap::new();
    let max_wait_ms = schedule.longest_wait().as_millis() as i64;
    let clock = outbox_clock_ms();
    match store.rebase_outbox(name, clock, max_wait_ms).await {
        Ok(0) => {}
        Ok(n) => info!(
            channel = name,
            jobs = n,
            "pending deadlines re-based on this run's clock (the clock was stepped back?)"
        ),
        Err(e) => warn!(channel = name, error = %e, "cannot re-base pending deadlines"),
    }
    info!(channel = name, "outbox worker started");
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let claim = match store.claim(name, outbox_clock_ms(), READ_AT_ONCE).await {
            Ok(c) => c,
            Err(e) => {
                error!(channel = name, error = %e, "cannot read the outbox; retrying in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        let (lease, jobs) = (claim.lease, claim.jobs);
        if jobs.is_empty() {
            let wait = match store.next_due(name).await {
                Ok(Some(t)) => Duration::from_millis((t - outbox_clock_ms()).max(0) as u64),
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
        let mut alerts: Vec<_> = jobs.iter().map(|j| j.alert.clone()).collect();
        let n = channel.fits(&alerts).min(limit).min(alerts.len()).max(1);
        alerts.truncate(n);
        // What does not go in this message is let go at once (on PostgreSQL its lease is
        // released, so that it is not held for a lease's length), and claimed again next time.
        if jobs.len() > n {
            let rest: Vec<i64> = jobs[n..].iter().map(|j| j.id).collect();
            if let Err(e) = store.release(lease, &rest).await {
                warn!(channel = name, error = %e, jobs = rest.len(),
                      "cannot release the jobs left for the next message: they wait for their lease to end (30 s)");
            }
        }
        let jobs = &jobs[..n];
        let ids: Vec<String> = alerts.iter().map(|a| a.alert_id.to_string()).collect();
        debug!(channel = name, alerts = ?ids, "delivering");
        let result = match tokio::time::timeout(settings.attempt_timeout, channel.deliver(&alerts)).await {
            Ok(r) => r,
            Err(_) => Err(channel.timed_out(settings.attempt_timeout)),
        };
        let done_at = outbox_clock_ms();
        let verdict = match &result {
            Err(DeliveryError::Permanent { reason }) if n > 1 => {
                limit = (n / 2).max(1);
                warn!(channel = name, alerts = n, error = %reason,
                      next_message_at_most = limit, "the channel refused a message of several alerts; sending them in smaller messages");
                Verdict::Split
            }
            Ok(()) => {
                limit = limit.saturating_mul(2);
                Verdict::AsAnswered
            }
            Err(_) => Verdict::AsAnswered,
        };
        let outcomes: Vec<(i64, JobOutcome)> = jobs
            .iter()
            .map(|job| {
                let count = if matches!(result, Err(DeliveryError::Unknown { .. })) {
                    let c = unknowns.entry(job.id).or_default();
                    *c += 1;
                    *c
                } else {
                    unknowns.get(&job.id).copied().unwrap_or(0)
                };
                let outcome = decide(job, &result, verdict, count, done_at, &schedule, &mut rng);
                let (alert_id, attempts) = (job.alert.alert_id, job.attempts + 1);
                match &outcome {
                    JobOutcome::Delivered => info!(channel = name, %alert_id, attempts, "notified"),
                    JobOutcome::Failed { error } if matches!(result, Err(DeliveryError::Permanent { .. })) => {
                        error!(channel = name, %alert_id, attempts, error = %error,
                               "NOT DELIVERED: the channel refused the alert; it will not be retried")
                    }
                    JobOutcome::Failed { error } => {
                        error!(channel = name, %alert_id, attempts, error = %error, "NOT DELIVERED: giving up on this channel")
                    }
                    JobOutcome::Retry { .. } if verdict == Verdict::Split => {}
                    JobOutcome::Retry { next_attempt_at_ms, error } => {
                        let retry_in_ms = (next_attempt_at_ms - done_at).max(0);
                        if matches!(result, Err(DeliveryError::Unknown { .. })) {
                            warn!(channel = name, %alert_id, attempts, error = %error, retry_in_ms, unknown_outcomes = count,
                                  max = MAX_UNKNOWN_OUTCOMES, "no answer in time: the channel may have shown it; retrying at a slower pace");
                        } else {
                            warn!(channel = name, %alert_id, attempts, error = %error, retry_in_ms, "delivery failed; will retry");
                        }
                    }
                }
                if !matches!(outcome, JobOutcome::Retry { .. }) {
                    unknowns.remove(&job.id);
                }
                (job.id, outcome)
            })
            .collect();
        // Record the outcome before anything else, for as long as the store fails (a full or
        // read-only disk): a delivered job forgotten here would be sent again. Only shutdown
        // stops the attempts early (after a few more tries); the job then stays pending and is
        // sent again after the restart: the documented duplicate window.
        let mut tries: u32 = 0;
        let recorded = loop {
            let e = match store.finish(lease, outcomes.clone(), now_ms()).await {
                Ok(refused) => break refused,
                Err(e) => e,
            };
            tries += 1;
            if matches!(e, crate::store::StoreError::Closed) || (shutdown.is_cancelled() && tries >= 10) {
                error!(channel = name, error = %e, "cannot record delivery outcome; the alert may be sent again after a restart");
                break Vec::new();
            }
            if tries == 1 || tries.is_power_of_two() {
                error!(channel = name, error = %e, tries, "cannot record delivery outcome; retrying until the store accepts it");
            }
            let pause = Duration::from_millis(200u64.saturating_mul(u64::from(tries.min(25))));
            tokio::time::sleep(pause).await;
        };
        if !recorded.is_empty() {
            // PostgreSQL: the lease ran out before the outcome could be recorded, and another
            // collector claimed these jobs: it records them (and may send them again: the
            // documented window of docs/RELIABILITY.md).
            warn!(channel = name, jobs = ?recorded, "outcome not recorded: the lease ran out and another collector took these jobs over");
        }
        if tries > 0 {
            info!(channel = name, tries, "delivery outcome recorded after store errors");
        }
        tokio::select! {
            _ = tokio::time::sleep_until(started + pace) => {}
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

    fn job() -> Job {
        Job {
            id: 1,
            attempts: 0,
            created_at_ms: 0,
            alert: crate::store::AlertRecord {
                alert_id: sos_shared::AlertId::from_u128(1),
                test: false,
                triggered_at: 0,
                received_at_ms: 0,
                user: "alice".into(),
                host: "desk".into(),
                ip: "10.0.0.1".into(),
                location: "Reception".into(),
                message: String::new(),
                source: String::new(),
                enrolled: None,
                cancellation: None,
                audience: Default::default(),
                update: None,
                site: None,
            },
        }
    }

    #[test]
    fn an_unknown_outcome_is_retried_slowly_and_a_bounded_number_of_times() {
        let settings = OutboxSettings { attempt_timeout: Duration::from_secs(15), ..OutboxSettings::default() };
        let s = RetrySchedule::new(&settings);
        let mut rng = fastrand::Rng::with_seed(2);
        let unknown = Err(DeliveryError::Unknown { reason: "slack: no answer in time".into() });
        let mut j = job();
        for n in 1..MAX_UNKNOWN_OUTCOMES {
            match decide(&j, &unknown, Verdict::AsAnswered, n, 1000, &s, &mut rng) {
                JobOutcome::Retry { next_attempt_at_ms, error } => {
                    assert!(next_attempt_at_ms >= 1000 + 60_000, "at least 4 attempt timeouts later");
                    assert!(error.starts_with("outcome unknown"), "{error}");
                }
                other => panic!("{other:?}"),
            }
            j.attempts += 1;
        }
        match decide(&j, &unknown, Verdict::AsAnswered, MAX_UNKNOWN_OUTCOMES, 1000, &s, &mut rng) {
            JobOutcome::Failed { error } => assert!(error.contains("up to 3 times"), "{error}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refused_message_of_several_alerts_fails_none_of_them() {
        let settings = OutboxSettings::default();
        let s = RetrySchedule::new(&settings);
        let mut rng = fastrand::Rng::with_seed(2);
        let refused = Err(DeliveryError::Permanent { reason: "slack: HTTP 400 invalid_blocks".into() });
        assert!(matches!(
            decide(&job(), &refused, Verdict::Split, 0, 5000, &s, &mut rng),
            JobOutcome::Retry { next_attempt_at_ms: 5000, .. }
        ));
        assert!(matches!(
            decide(&job(), &refused, Verdict::AsAnswered, 0, 5000, &s, &mut rng),
            JobOutcome::Failed { .. }
        ));
    }

    #[test]
    fn a_wait_past_the_deadline_is_cut_to_one_last_attempt_at_it_and_only_then_given_up() {
        let settings = OutboxSettings { give_up_after: Duration::from_secs(3600), ..OutboxSettings::default() };
        let s = RetrySchedule::new(&settings);
        let mut rng = fastrand::Rng::with_seed(2);
        // A webhook's 2 h step (or a long Retry-After) 35 min into the hour.
        let later =
            Err(DeliveryError::Transient { reason: "HTTP 503".into(), retry_after: Some(Duration::from_secs(7200)) });
        let at = 35 * 60 * 1000;
        match decide(&job(), &later, Verdict::AsAnswered, 0, at, &s, &mut rng) {
            JobOutcome::Retry { next_attempt_at_ms, .. } => assert_eq!(next_attempt_at_ms, 3_600_000),
            other => panic!("given up 25 minutes early: {other:?}"),
        }
        // At the deadline: given up, with the reason.
        match decide(&job(), &later, Verdict::AsAnswered, 0, 3_600_000, &s, &mut rng) {
            JobOutcome::Failed { error } => assert!(error.contains("HTTP 503"), "{error}"),
            other => panic!("{other:?}"),
        }
        // A huge Retry-After never overflows.
        let huge = Err(DeliveryError::Transient { reason: "429".into(), retry_after: Some(Duration::MAX) });
        assert!(matches!(decide(&job(), &huge, Verdict::AsAnswered, 0, 1000, &s, &mut rng), JobOutcome::Retry { .. }));
    }
}
