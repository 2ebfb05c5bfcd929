//! The store seam: what alerts and their outbox need from a store, with two implementations,
//! the embedded SQLite writer ([`SqliteStore`], one collector) and PostgreSQL
//! ([`PgStore`](super::postgres::PgStore), several collectors sharing one database).
//!
//! The difference that matters is the outbox claim. On SQLite one process owns the file and one
//! worker per channel reads its due jobs: a claim takes nothing and needs no lease. On
//! PostgreSQL several collectors read the same jobs, so a claim takes them under a **lease**
//! (`FOR UPDATE SKIP LOCKED`, about 30 s): nobody else claims them until it ends, and their
//! outcome is recorded only by the holder of the lease ([`Backend::finish`] refuses the others).
//! A collector killed in the middle of a delivery leaves its lease to run out, and another
//! collector takes the job over then — the one case where a channel can be notified twice
//! (docs/RELIABILITY.md).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sos_shared::AlertId;
use tokio::sync::Notify;

use super::{AlertRecord, Cancelled, Delivery, Job, JobOutcome, NewAlert, SqliteStore, StoreError, Stored};

/// A boxed future, for the object-safe [`Backend`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Recent alerts, each with every channel's delivery.
pub type RecentAlerts = Vec<(AlertRecord, Vec<Delivery>)>;

/// The lease under which a claim's jobs were taken: only its holder may record their outcome.
/// SQLite's single process takes no lease ([`Lease::NONE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease(pub i64);

impl Lease {
    /// No lease: the SQLite backend, where one process owns the outbox.
    pub const NONE: Lease = Lease(0);
}

/// Jobs taken by [`Backend::claim`], with the lease they were taken under.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The lease; pass it back to [`Backend::finish`].
    pub lease: Lease,
    /// The jobs, oldest due first.
    pub jobs: Vec<Job>,
}

/// What alerts and the outbox need from a store. One implementation per database engine; the
/// same test suite runs against both (`store::backend::tests`).
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Store an alert with one outbox job per channel, once by alert id; resolves after the
    /// commit, and only then may the SOS be acknowledged.
    ///
    /// # Errors
    /// If the commit failed or the database cannot be reached: the alert is not stored.
    fn insert(&self, alert: NewAlert) -> BoxFuture<'_, Result<Stored, StoreError>>;

    /// The sender withdrew `alert_id`; `principal` is who may (see [`super::principal`]).
    ///
    /// # Errors
    /// If the transaction failed.
    fn cancel(
        &self,
        alert_id: AlertId,
        reason: String,
        principal: String,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Cancelled, StoreError>>;

    /// Take up to `limit` jobs of `channel` due at `now_ms` (outbox clock): reminders last (the
    /// pages of alerts, cancellations and who answered first, then reminders, each oldest
    /// first), so that a new SOS never waits behind an unanswered storm's reminders. On
    /// PostgreSQL they are leased: no other collector gets them until the lease ends, so a
    /// worker claims only what it delivers within the lease (the next message, as the channel's
    /// `fits` allows), not a backlog it would work through for longer than the lease: what is
    /// still held when the lease ends is taken over, and may be sent twice.
    ///
    /// Due times are on each collector's outbox clock (its wall clock at start, then monotonic):
    /// between collectors a retry is due earlier or later by the difference of their wall
    /// clocks at start. Leases are on the database's clock, the same for all.
    ///
    /// # Errors
    /// If the query failed.
    fn claim(&self, channel: &'static str, now_ms: i64, limit: usize) -> BoxFuture<'_, Result<Claim, StoreError>>;

    /// Record the outcomes of jobs taken under `lease`, in one transaction. Returns the ids
    /// whose outcome was **refused** because their lease was lost (it ran out and another
    /// collector claimed them): that collector records them.
    ///
    /// # Errors
    /// If the transaction failed: nothing was recorded.
    fn finish(
        &self,
        lease: Lease,
        outcomes: Vec<(i64, JobOutcome)>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<i64>, StoreError>>;

    /// When the next job of `channel` that [`Backend::claim`] would take is due (outbox clock).
    ///
    /// # Errors
    /// If the query failed.
    fn next_due(&self, channel: &'static str) -> BoxFuture<'_, Result<Option<i64>, StoreError>>;

    /// The most recent alerts, newest first, with each channel's delivery.
    ///
    /// # Errors
    /// If the query failed.
    fn recent_alerts(&self, limit: usize) -> BoxFuture<'_, Result<RecentAlerts, StoreError>>;

    /// Whether the store is failing now: the service then acknowledges no SOS and answers no
    /// heartbeat, and /readyz says so.
    fn is_failing(&self) -> bool;

    /// Notified after every commit that changes an alert (on PostgreSQL: by any collector).
    fn changes(&self) -> Arc<Notify>;

    /// Wakes `channel`'s outbox worker when jobs are committed (on PostgreSQL: by any collector).
    fn waker(&self, channel: &str) -> Option<Arc<Notify>>;
}

impl Backend for SqliteStore {
    fn insert(&self, alert: NewAlert) -> BoxFuture<'_, Result<Stored, StoreError>> {
        Box::pin(SqliteStore::insert(self, alert))
    }

    fn cancel(
        &self,
        alert_id: AlertId,
        reason: String,
        principal: String,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Cancelled, StoreError>> {
        Box::pin(SqliteStore::cancel(self, alert_id, reason, principal, now_ms))
    }

    fn claim(&self, channel: &'static str, now_ms: i64, limit: usize) -> BoxFuture<'_, Result<Claim, StoreError>> {
        // One process owns the file and one worker each channel: nothing to lease.
        Box::pin(async move { Ok(Claim { lease: Lease::NONE, jobs: self.due_jobs(channel, now_ms, limit).await? }) })
    }

    fn finish(
        &self,
        _lease: Lease,
        outcomes: Vec<(i64, JobOutcome)>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<i64>, StoreError>> {
        Box::pin(async move { SqliteStore::finish(self, outcomes, now_ms).await.map(|()| Vec::new()) })
    }

    fn next_due(&self, channel: &'static str) -> BoxFuture<'_, Result<Option<i64>, StoreError>> {
        Box::pin(SqliteStore::next_due(self, channel))
    }

    fn recent_alerts(&self, limit: usize) -> BoxFuture<'_, Result<RecentAlerts, StoreError>> {
        Box::pin(self.exec(move |db| db.recent_alerts(limit)))
    }

    fn is_failing(&self) -> bool {
        SqliteStore::is_failing(self)
    }

    fn changes(&self) -> Arc<Notify> {
        SqliteStore::changes(self)
    }

    fn waker(&self, channel: &str) -> Option<Arc<Notify>> {
        SqliteStore::waker(self, channel)
    }
}

#[cfg(all(test, unix))]
mod tests {
    //! The same cases against SQLite and PostgreSQL (a real cluster: `postgres/cluster.rs`),
    //! then what only several collectors on PostgreSQL have: leases, LISTEN/NOTIFY, outages.

    use std::time::Duration;

    use super::*;
    use crate::store::console::{AlertFilter, LinkAck, LinkUse};
    use crate::store::postgres::cluster::Cluster;
    use crate::store::postgres::PgStore;
    use crate::store::response::{AlertUpdate, PlannedResponder, ResponsePlan, TierPlan};
    use crate::store::tests::{alert, seen};
    use crate::store::{outbox_clock_ms, Db, Response as _, Store, Transition, Via};

    const CHANNELS: &[&str] = &["log", "slack"];
    /// How long tier 1 waits for an acknowledgement before tier 2, ms.
    const TIER_WAIT: i64 = 60_000;

    /// Tier 1: every channel; tier 2, after [`TIER_WAIT`]: Slack again, for another responder.
    fn plan() -> ResponsePlan {
        let who = |name: &str| PlannedResponder {
            phone: None,
            name: name.into(),
            chat: Some(format!("@{name}")),
            email: None,
            agents: vec![],
        };
        ResponsePlan {
            emergency: vec![
                TierPlan { channels: CHANNELS.to_vec(), responders: vec![who("sam")], wait_ms: TIER_WAIT },
                TierPlan { channels: vec!["slack"], responders: vec![who("kim")], wait_ms: TIER_WAIT },
            ],
            drill: vec![],
            offline_after_ms: 150_000,
        }
    }
    /// The longest any awaited event may take before the test fails.
    const DEADLINE: Duration = Duration::from_secs(30);

    async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
        tokio::time::timeout(DEADLINE, f).await.unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
    }

    async fn alert_stored_once_by_id_with_one_job_per_channel(store: &Store) {
        assert_eq!(store.insert(alert(1)).await.unwrap(), Stored::New);
        assert_eq!(store.insert(alert(1)).await.unwrap(), Stored::Duplicate, "a retry or a failover");
        let now = outbox_clock_ms();
        for channel in CHANNELS {
            let claim = store.claim(channel, now, 10).await.unwrap();
            assert_eq!(claim.jobs.len(), 1, "{channel}: one job");
            assert_eq!(claim.jobs[0].alert.alert_id, AlertId::from_u128(1));
            assert!(store
                .finish(claim.lease, vec![(claim.jobs[0].id, JobOutcome::Delivered)], 1)
                .await
                .unwrap()
                .is_empty());
        }
        assert!(store.claim("slack", now, 10).await.unwrap().jobs.is_empty(), "delivered: never again");
        assert_eq!(store.next_due("slack").await.unwrap(), None);
    }

    async fn a_retry_comes_due_at_its_time(store: &Store) {
        store.insert(alert(1)).await.unwrap();
        let now = outbox_clock_ms();
        let later = now + 3_600_000;
        let claim = store.claim("slack", now, 10).await.unwrap();
        let retry = JobOutcome::Retry { next_attempt_at_ms: later, error: "HTTP 500".into() };
        assert!(store.finish(claim.lease, vec![(claim.jobs[0].id, retry)], 1).await.unwrap().is_empty());
        assert!(store.claim("slack", now, 10).await.unwrap().jobs.is_empty(), "not due yet");
        assert_eq!(store.next_due("slack").await.unwrap(), Some(later));
        let again = store.claim("slack", later, 10).await.unwrap();
        assert_eq!(again.jobs.len(), 1);
        assert_eq!(again.jobs[0].attempts, 1);
    }

    async fn a_cancellation_is_recorded_once_and_waits_behind_its_alert(store: &Store) {
        store.insert(alert(1)).await.unwrap();
        let id = AlertId::from_u128(1);
        let cancel = |who: &str| store.cancel(id, "oops".into(), who.into(), 2000);
        assert_eq!(cancel("ff").await.unwrap(), Cancelled::Unknown, "only its sender may");
        assert_eq!(
            store.cancel(AlertId::from_u128(9), String::new(), "00".into(), 2000).await.unwrap(),
            Cancelled::Unknown
        );
        assert_eq!(cancel("00").await.unwrap(), Cancelled::New);
        assert_eq!(cancel("00").await.unwrap(), Cancelled::Already);
        let now = outbox_clock_ms();
        let first = store.claim("slack", now, 10).await.unwrap();
        assert_eq!(first.jobs.len(), 1, "the alert goes first: {:?}", first.jobs);
        assert!(first.jobs[0].alert.cancellation.is_none());
        store.finish(first.lease, vec![(first.jobs[0].id, JobOutcome::Delivered)], 1).await.unwrap();
        let next = store.claim("slack", now, 10).await.unwrap();
        assert_eq!(next.jobs.len(), 1);
        assert_eq!(next.jobs[0].alert.cancellation.as_ref().map(|c| c.reason.as_str()), Some("oops"));
    }

    /// Reminders last: a new alert's page, and a cancellation, are handed to the channel before
    /// the reminders of other alerts that were due earlier.
    async fn reminders_wait_behind_a_new_alerts_page_and_a_cancellation(store: &Store) {
        let early = outbox_clock_ms() - 1;
        for i in 1..=3 {
            store.insert(alert(i)).await.unwrap();
        }
        store.insert(alert(5)).await.unwrap();
        assert_eq!(deliver(store, outbox_clock_ms()).await.len(), 8, "four alerts on two channels");
        assert_eq!(
            store.cancel(AlertId::from_u128(5), String::new(), "00".into(), 2000).await.unwrap(),
            Cancelled::New
        );
        let cancelled = outbox_clock_ms();
        // Tier 2 fires for the three still open: each reminds the log (tier 1's other channel).
        let now = crate::store::now_ms();
        let due = outbox_clock_ms() + 2 * TIER_WAIT;
        let (_, (fired, _)) = store.escalation_tick(store.plan(), now, due, 10).await.unwrap();
        assert_eq!(fired.len(), 3, "{fired:?}");
        // The reminders were due before anything else (retried, due back at `early`).
        let claim = store.claim("log", due, 100).await.unwrap();
        let retry = |at: i64| JobOutcome::Retry { next_attempt_at_ms: at, error: "HTTP 500".into() };
        let outcomes: Vec<(i64, JobOutcome)> = claim
            .jobs
            .iter()
            .map(|j| {
                let reminder = matches!(j.alert.update, Some(AlertUpdate::Reminder { .. }));
                (j.id, retry(if reminder { early } else { cancelled }))
            })
            .collect();
        assert_eq!(outcomes.len(), 4, "three reminders and a cancellation: {:?}", claim.jobs);
        assert!(store.finish(claim.lease, outcomes, due).await.unwrap().is_empty());
        store.insert(alert(4)).await.unwrap();
        let at = outbox_clock_ms() + 1;
        let kind = |j: &Job| match (&j.alert.update, &j.alert.cancellation) {
            (Some(AlertUpdate::Reminder { .. }), _) => "reminder",
            (_, Some(_)) => "cancel",
            _ => "page",
        };
        let first = store.claim("log", at, 2).await.unwrap();
        let got: Vec<(u128, &str)> = first.jobs.iter().map(|j| (j.alert.alert_id.as_u128(), kind(j))).collect();
        assert_eq!(got, [(5, "cancel"), (4, "page")], "{:?}", first.jobs);
        let done = first.jobs.iter().map(|j| (j.id, JobOutcome::Delivered)).collect();
        assert!(store.finish(first.lease, done, at).await.unwrap().is_empty());
        let rest = store.claim("log", at, 10).await.unwrap();
        let got: Vec<(u128, &str)> = rest.jobs.iter().map(|j| (j.alert.alert_id.as_u128(), kind(j))).collect();
        assert_eq!(got, [(1, "reminder"), (2, "reminder"), (3, "reminder")], "oldest first: {:?}", rest.jobs);
        let done = rest.jobs.iter().map(|j| (j.id, JobOutcome::Delivered)).collect();
        assert!(store.finish(rest.lease, done, at).await.unwrap().is_empty());
        assert_eq!(store.next_due("log").await.unwrap(), None, "nothing left");
    }

    async fn recent_alerts_show_each_channels_delivery(store: &Store) {
        store.insert(alert(1)).await.unwrap();
        let claim = store.claim("slack", outbox_clock_ms(), 10).await.unwrap();
        store
            .finish(claim.lease, vec![(claim.jobs[0].id, JobOutcome::Failed { error: "404".into() })], 1)
            .await
            .unwrap();
        let recent = store.recent_alerts(10).await.unwrap();
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].0.user, "alice");
        let states: Vec<_> =
            recent[0].1.iter().map(|d| (d.channel.as_str(), d.state.as_str(), d.last_error.as_deref())).collect();
        assert_eq!(states, vec![("log", "pending", None), ("slack", "failed", Some("404"))]);
    }

    async fn a_commit_wakes_the_workers_and_the_change_listeners(store: &Store) {
        assert!(store.waker("email").is_none(), "no jobs are made for email");
        let slack = store.waker("slack").unwrap();
        let changes = store.changes();
        let (woken, changed) = (slack.notified(), changes.notified());
        store.insert(alert(1)).await.unwrap();
        within("slack's worker woken", woken).await;
        within("a change announced", changed).await;
        assert!(!store.is_failing());
    }

    async fn an_sos_with_a_nul_in_its_text_is_stored_not_refused_forever(store: &Store) {
        let mut a = alert(1);
        a.sos.message = "help\0me".into();
        a.sos.user = "\0".into();
        assert_eq!(store.insert(a).await.unwrap(), Stored::New);
        assert_eq!(store.cancel(AlertId::from_u128(1), "a\0b".into(), "00".into(), 5).await.unwrap(), Cancelled::New);
        let recent = store.recent_alerts(1).await.unwrap();
        let stored = &recent[0].0;
        assert!(stored.message.starts_with("help") && stored.message.ends_with("me"), "{:?}", stored.message);
        assert_eq!(stored.cancellation.as_ref().map(|c| c.reason.chars().count()), Some(3));
    }

    async fn an_acknowledgement_is_recorded_once_and_stops_the_next_tier(store: &Store) {
        store.insert(alert(1)).await.unwrap();
        let id = AlertId::from_u128(1);
        let ack = store.acknowledge(id, "sam".into(), Via::Console, "coming".into()).await.unwrap();
        assert!(matches!(ack, Transition::New { .. }), "{ack:?}");
        let again = store.acknowledge(id, "kim".into(), Via::Popup, String::new()).await.unwrap();
        assert!(matches!(again, Transition::Already { .. }), "{again:?}");
        let (_, state, events) = store.timeline(id).await.unwrap().expect("the alert");
        assert_eq!(state.name(), "acknowledged");
        assert_eq!(events.iter().filter(|e| e.kind == "acknowledged").count(), 1, "{events:?}");
        let later = outbox_clock_ms() + 2 * TIER_WAIT;
        let (_, (fired, _)) = store.escalation_tick(store.plan(), crate::store::now_ms(), later, 10).await.unwrap();
        assert!(fired.is_empty(), "acknowledged: tier 2 never fires: {fired:?}");
        let open = AlertFilter { state: Some("open".into()), ..AlertFilter::default() };
        let shown = store.console_alerts(&open, None, 10).await.unwrap();
        assert_eq!(shown.len(), 1);
        assert_eq!((shown[0].state.as_str(), shown[0].by.as_str()), ("acknowledged", "sam"));
    }

    /// SQLite makes an alert's `received` event from its row (it is not stored since schema
    /// `V_EVENTS_BY_ALERT`), PostgreSQL stores it: both read the same timeline.
    async fn the_received_event_names_the_sender_and_their_message(store: &Store) {
        let mut a = alert(1);
        a.sos.message = " help\nme ".into();
        a.enrolled =
            Some(crate::store::EnrolledAs { agent_id: "a1".into(), name: "Desk 1".into(), host: "desk".into() });
        store.insert(a).await.unwrap();
        store.insert(alert(2)).await.unwrap();
        let id = AlertId::from_u128(1);
        store.record_event(id, "popup_shown", "kim".into(), Via::Popup, String::new()).await.unwrap();
        let (_, _, events) = store.timeline(id).await.unwrap().expect("the alert");
        let first = &events[0];
        assert_eq!(
            (first.at_ms, first.kind.as_str(), first.who.as_str(), first.via, first.note.as_str()),
            (1000, "received", "alice@desk (agent Desk 1)", Via::Sender, "help me"),
            "{events:?}"
        );
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds.iter().filter(|k| **k == "received").count(), 1, "{kinds:?}");
        assert_eq!(kinds.last(), Some(&"popup_shown"), "{kinds:?}");
        let (_, console) = store.console_response(id).await.unwrap();
        let shown: Vec<(&str, &str, &str)> =
            console.iter().map(|e| (e.kind.as_str(), e.who.as_str(), e.via.as_str())).collect();
        let read: Vec<(&str, &str, &str)> =
            events.iter().map(|e| (e.kind.as_str(), e.who.as_str(), e.via.name())).collect();
        assert_eq!(shown, read, "the console reads the same timeline");
        let (_, _, other) = store.timeline(AlertId::from_u128(2)).await.unwrap().expect("the other alert");
        assert_eq!((other[0].kind.as_str(), other[0].who.as_str()), ("received", "alice@desk"), "{other:?}");
    }

    async fn an_unanswered_alert_escalates_once_at_its_deadline(store: &Store) {
        let clock = outbox_clock_ms();
        store.insert(alert(1)).await.unwrap();
        let now = crate::store::now_ms();
        let (_, (fired, next)) = store.escalation_tick(store.plan(), now, clock, 10).await.unwrap();
        assert!(fired.is_empty(), "not due yet");
        let due = next.expect("tier 2's deadline");
        assert!(due >= clock + TIER_WAIT && due <= outbox_clock_ms() + TIER_WAIT, "{due}");
        let (_, (fired, _)) = store.escalation_tick(store.plan(), now, due, 10).await.unwrap();
        assert_eq!(fired, vec![(AlertId::from_u128(1), 2, false)]);
        let (_, (again, next)) = store.escalation_tick(store.plan(), now, due + 1, 10).await.unwrap();
        assert!(again.is_empty(), "a tier fires once: {again:?}");
        let (_, state, _) = store.timeline(AlertId::from_u128(1)).await.unwrap().unwrap();
        assert!(state.unanswered());

        // Still nobody after the last tier: every tier is reminded again after the last tier's
        // wait, then after twice as long, each round once, on every channel notified (the
        // outbox delivers between rounds).
        let sent = deliver(store, due).await;
        assert_eq!(sent.len(), 4, "tier 1 and 2 on Slack, tier 1 and tier 2's reminder on the log: {sent:?}");
        let first = next.expect("a reminder after the last tier");
        assert_eq!(first, due + TIER_WAIT);
        let (_, (fired, next)) = store.escalation_tick(store.plan(), now, first, 10).await.unwrap();
        assert_eq!(fired, vec![(AlertId::from_u128(1), 3, true)]);
        assert_eq!(next, Some(first + 2 * TIER_WAIT));
        let round = deliver(store, first).await;
        let (_, (fired, _)) = store.escalation_tick(store.plan(), now, first + 2 * TIER_WAIT - 1, 10).await.unwrap();
        assert!(fired.is_empty(), "not before twice the wait: {fired:?}");
        let (_, (fired, next)) = store.escalation_tick(store.plan(), now, first + 2 * TIER_WAIT, 10).await.unwrap();
        assert_eq!(fired, vec![(AlertId::from_u128(1), 4, true)]);
        assert_eq!(next, Some(first + 6 * TIER_WAIT));
        let again = deliver(store, first + 2 * TIER_WAIT).await;
        for jobs in [&round, &again] {
            let mut reminded: Vec<(&str, &[String])> = jobs
                .iter()
                .map(|(ch, j)| {
                    assert!(matches!(j.alert.update, Some(AlertUpdate::Reminder { .. })), "{j:?}");
                    (*ch, j.alert.audience.mentions.as_slice())
                })
                .collect();
            reminded.sort();
            let both = ["@sam".to_owned(), "@kim".to_owned()];
            assert_eq!(reminded, [("log", &both[..]), ("slack", &both[..])], "every tier, every channel notified");
        }
        // A channel whose reminder is still waiting (slow, failing) gets no other: one a round
        // would queue ahead of other alerts' pages.
        for at in [first + 6 * TIER_WAIT, first + 14 * TIER_WAIT] {
            let (_, (fired, _)) = store.escalation_tick(store.plan(), now, at, 10).await.unwrap();
            assert_eq!(fired.len(), 1, "{fired:?}");
        }
        assert_eq!(deliver(store, first + 14 * TIER_WAIT).await.len(), 2, "one reminder per channel, not two");
        let (_, _, events) = store.timeline(AlertId::from_u128(1)).await.unwrap().unwrap();
        let reminded: Vec<&str> = events.iter().filter(|e| e.kind == "reminded").map(|e| e.note.as_str()).collect();
        assert_eq!(reminded.len(), 5, "tier 2's reminder of tier 1, then four rounds: {reminded:?}");
        assert!(reminded[1].starts_with("every tier still unanswered after"), "{reminded:?}");
        // An acknowledgement ends the rounds.
        store.acknowledge(AlertId::from_u128(1), "sam".into(), Via::Console, String::new()).await.unwrap();
        let (_, (fired, next)) = store.escalation_tick(store.plan(), now, first + 100 * TIER_WAIT, 10).await.unwrap();
        assert!(fired.is_empty() && next.is_none(), "{fired:?} {next:?}");
    }

    /// Deliver every job of every channel due at `at`, as the outbox would (news of an alert
    /// waits for its page): the jobs, with their channel.
    async fn deliver(store: &Store, at: i64) -> Vec<(&'static str, Job)> {
        let mut sent = Vec::new();
        for channel in CHANNELS {
            loop {
                let claim = store.claim(channel, at, 100).await.unwrap();
                if claim.jobs.is_empty() {
                    break;
                }
                let done = claim.jobs.iter().map(|j| (j.id, JobOutcome::Delivered)).collect();
                assert!(store.finish(claim.lease, done, at).await.unwrap().is_empty());
                sent.extend(claim.jobs.into_iter().map(|j| (*channel, j)));
            }
        }
        sent
    }

    async fn a_code_enrolls_once_and_revocation_changes_the_registry(store: &Store) {
        let now = crate::store::now_ms();
        let code = store.create_enrollment("Reception", 600_000, now).await.unwrap();
        assert!(store.pending_codes(now).await.unwrap().contains(code.id()));
        assert!(matches!(store.enroll_attempt(code.id(), now).await.unwrap(), crate::registry::Attempt::Try { .. }));
        let key = store.complete_enrollment(code.id(), "desk-3", now).await.unwrap().expect("enrolled");
        assert_eq!(store.complete_enrollment(code.id(), "desk-4", now).await.unwrap(), None, "a code works once");
        assert_eq!(store.load_registry().await.unwrap().len(), 1);
        let before = store.registry_version().await.unwrap();
        let revoked = store.revoke(&key.agent_id, now).await.unwrap();
        assert_eq!(revoked.revoked_at_ms, Some(now));
        assert!(store.registry_version().await.unwrap() > before, "other collectors reload on the new version");
        let agents = store.enrolled_agents().await.unwrap();
        assert_eq!((agents.len(), agents[0].revoked_at_ms), (1, Some(now)));
        assert!(store.rotate(&key.agent_id, now).await.is_err(), "a revoked agent is not rotated");
    }

    async fn heartbeats_reach_the_store_at_the_flush(store: &Store) {
        store.seen(seen("alice", 10));
        store.seen(seen("alice", 30));
        store.seen(seen("bob", 20));
        store.flush_presence();
        let agents = within("the heartbeats written", async {
            loop {
                let agents = store.agents().await.unwrap();
                if agents.len() == 2 {
                    return agents;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        let got: Vec<_> = agents.iter().map(|a| (a.user.as_str(), a.last_seen_ms)).collect();
        assert_eq!(got, vec![("bob", 20), ("alice", 30)]);
    }

    async fn an_acknowledge_link_works_once(store: &Store) {
        store.insert(alert(1)).await.unwrap();
        let link = LinkAck {
            nonce: "00112233445566778899aabbccddeeff".into(),
            alert: AlertId::from_u128(1),
            channel: "slack".into(),
            expires_at_ms: crate::store::now_ms() + 3_600_000,
            responder: "sam".into(),
            note: String::new(),
        };
        let (now, clock) = (crate::store::now_ms(), outbox_clock_ms());
        let first = store.acknowledge_by_link(&link, now, clock).await.unwrap();
        assert!(matches!(first, LinkUse::Ack(Transition::New { .. })), "{first:?}");
        let second = store.acknowledge_by_link(&LinkAck { responder: "eve".into(), ..link.clone() }, now, clock).await;
        assert!(matches!(second.unwrap(), LinkUse::Used { ref by, .. } if by == "sam"));
        assert_eq!(store.link_used(&link.nonce).await.unwrap().map(|(by, _)| by).as_deref(), Some("sam"));
    }

    async fn an_invitation_is_accepted_once(store: &Store) {
        let now = crate::store::now_ms();
        store.create_invitation("sam", "hash-of-token", now, now + 60_000).await.unwrap();
        assert_eq!(store.invitation("hash-of-token", now).await.unwrap().as_deref(), Some("sam"));
        assert_eq!(store.accept_invitation("hash-of-token", "pw-hash", now).await.unwrap().as_deref(), Some("sam"));
        assert_eq!(store.accept_invitation("hash-of-token", "other", now).await.unwrap(), None, "once");
        assert_eq!(store.password_hash("sam").await.unwrap().as_deref(), Some("pw-hash"));
        assert_eq!(store.invitation("hash-of-token", now).await.unwrap(), None);
    }

    async fn silent_agents_are_recorded_and_cleared(store: &Store) {
        assert!(store.set_silent("agent-1", Some(5)).await.unwrap());
        assert!(!store.set_silent("agent-1", Some(7)).await.unwrap(), "recorded already (by another collector)");
        assert_eq!(store.silent_agents().await.unwrap(), vec![("agent-1".to_owned(), 5)]);
        assert!(store.set_silent("agent-1", None).await.unwrap());
        assert!(!store.set_silent("agent-1", None).await.unwrap());
        assert!(store.silent_agents().await.unwrap().is_empty());
        store.probe_write(6).await.unwrap();
    }

    macro_rules! both {
        ($($case:ident),* $(,)?) => {
            mod sqlite {
                $(
                    #[tokio::test]
                    async fn $case() {
                        let dir = tempfile::tempdir().unwrap();
                        let path = dir.path().join("sos.db");
                        let (writer, thread) = crate::store::SqliteStore::start_planned(
                            super::Db::open(&path).unwrap(), super::CHANNELS, super::plan()).unwrap();
                        let store = super::Store::sqlite(writer, Some(&path));
                        super::$case(&store).await;
                        drop(store);
                        thread.join().unwrap();
                    }
                )*
            }
            mod postgres {
                $(
                    #[tokio::test]
                    async fn $case() {
                        let Some(cluster) = super::Cluster::start() else { return };
                        let store = super::PgStore::open_planned(&cluster.url(), super::plan()).await.unwrap();
                        super::$case(&super::Store::postgres(store)).await;
                    }
                )*
            }
        };
    }

    both!(
        alert_stored_once_by_id_with_one_job_per_channel,
        a_retry_comes_due_at_its_time,
        a_cancellation_is_recorded_once_and_waits_behind_its_alert,
        reminders_wait_behind_a_new_alerts_page_and_a_cancellation,
        recent_alerts_show_each_channels_delivery,
        a_commit_wakes_the_workers_and_the_change_listeners,
        an_sos_with_a_nul_in_its_text_is_stored_not_refused_forever,
        an_acknowledgement_is_recorded_once_and_stops_the_next_tier,
        the_received_event_names_the_sender_and_their_message,
        an_unanswered_alert_escalates_once_at_its_deadline,
        a_code_enrolls_once_and_revocation_changes_the_registry,
        heartbeats_reach_the_store_at_the_flush,
        an_acknowledge_link_works_once,
        an_invitation_is_accepted_once,
        silent_agents_are_recorded_and_cleared,
    );

    /// On SQLite the push's popup read runs on a read connection, not the writer: with a long
    /// history it walks every alert (about 100 ms at 250,000), and an SOS that arrived
    /// meanwhile waited behind it. It is answered while the writer is held busy.
    #[tokio::test]
    async fn the_popup_read_is_answered_while_the_sqlite_writer_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        let (writer, thread) = SqliteStore::start_planned(Db::open(&path).unwrap(), CHANNELS, plan()).unwrap();
        let store = Store::sqlite(writer.clone(), Some(&path));
        assert_eq!(store.insert(alert(1)).await.unwrap(), Stored::New);
        let (entered, busy) = tokio::sync::oneshot::channel::<()>();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let w = writer.clone();
        let holding = tokio::spawn(async move {
            w.exec(move |_| {
                let _ = entered.send(());
                let _ = held.recv();
                Ok(())
            })
            .await
        });
        within("the writer takes the command that holds it", busy).await.unwrap();
        let targets = within("the popup read while the writer is busy", store.popup_targets(crate::store::now_ms()))
            .await
            .unwrap();
        assert_eq!(targets.len(), 1, "the alert committed before is read");
        release.send(()).unwrap();
        holding.await.unwrap().unwrap();
        drop((store, writer));
        thread.join().unwrap();
    }

    /// Two collectors on one cluster, their claims leased for `lease`.
    async fn two(cluster: &Cluster, lease: Duration) -> (PgStore, PgStore) {
        let a = PgStore::open_with_lease(&cluster.url(), CHANNELS, lease).await.unwrap();
        let b = PgStore::open_with_lease(&cluster.url(), CHANNELS, lease).await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn a_job_whose_claimer_never_finishes_is_taken_over_when_its_lease_ends_and_the_stale_claim_is_refused() {
        let Some(cluster) = Cluster::start() else { return };
        let (a, b) = two(&cluster, Duration::from_secs(1)).await;
        a.insert(alert(1)).await.unwrap();
        let held = a.claim("slack", outbox_clock_ms(), 10).await.unwrap();
        assert_eq!(held.jobs.len(), 1);
        assert!(b.claim("slack", outbox_clock_ms(), 10).await.unwrap().jobs.is_empty(), "leased by the other");
        // B's worker: sleep until the next job is due (the lease's end), then claim.
        let taken = within("the other collector takes the job over", async {
            loop {
                let claim = b.claim("slack", outbox_clock_ms(), 10).await.unwrap();
                if !claim.jobs.is_empty() {
                    return claim;
                }
                let due = b.next_due("slack").await.unwrap().expect("the leased job is still pending");
                tokio::time::sleep(Duration::from_millis((due - outbox_clock_ms()).clamp(1, 1000) as u64)).await;
            }
        })
        .await;
        assert_eq!(taken.jobs[0].id, held.jobs[0].id);
        assert_ne!(taken.lease, held.lease);
        // A wakes up late: its outcome is refused, B's is recorded.
        let late = a.finish(held.lease, vec![(held.jobs[0].id, JobOutcome::Delivered)], 1).await.unwrap();
        assert_eq!(late, vec![held.jobs[0].id], "a completion under a stolen lease is refused");
        let done = b.finish(taken.lease, vec![(taken.jobs[0].id, JobOutcome::Delivered)], 2).await.unwrap();
        assert!(done.is_empty());
        let recent = a.recent_alerts(1).await.unwrap();
        let slack = recent[0].1.iter().find(|d| d.channel == "slack").unwrap();
        assert_eq!((slack.state.as_str(), slack.attempts, slack.delivered_at_ms), ("delivered", 1, Some(2)));
    }

    #[tokio::test]
    async fn an_sos_received_by_two_collectors_is_stored_once_and_each_job_claimed_once() {
        let Some(cluster) = Cluster::start() else { return };
        let (a, b) = two(&cluster, Duration::from_secs(30)).await;
        for id in 1..=20 {
            let (x, y) = tokio::join!(a.insert(alert(id)), b.insert(alert(id)));
            let mut got = [x.unwrap(), y.unwrap()];
            got.sort_by_key(|s| *s == Stored::New);
            assert_eq!(got, [Stored::Duplicate, Stored::New], "alert {id}");
        }
        let now = outbox_clock_ms();
        let mut ids = Vec::new();
        for _ in 0..5 {
            let (x, y) = tokio::join!(a.claim("slack", now, 3), b.claim("slack", now, 3));
            ids.extend(x.unwrap().jobs.into_iter().chain(y.unwrap().jobs).map(|j| j.id));
        }
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!((ids.len(), unique.len()), (20, 20), "every job claimed once: {ids:?}");
    }

    #[tokio::test]
    async fn a_commit_on_one_collector_wakes_the_workers_and_consoles_of_another() {
        let Some(cluster) = Cluster::start() else { return };
        let (a, b) = two(&cluster, Duration::from_secs(30)).await;
        let slack = Backend::waker(&b, "slack").unwrap();
        let changes = b.changes();
        let (woken, changed) = (slack.notified(), changes.notified());
        a.insert(alert(1)).await.unwrap();
        within("the other collector's slack worker woken (NOTIFY sos_jobs)", woken).await;
        within("the other collector's console told (NOTIFY sos_changes)", changed).await;
        let changed = changes.notified();
        assert_eq!(a.cancel(AlertId::from_u128(1), String::new(), "00".into(), 5).await.unwrap(), Cancelled::New);
        within("a cancellation on the other collector announced", changed).await;
    }

    #[tokio::test]
    async fn an_outage_fails_at_once_and_the_store_resumes_losing_and_duplicating_nothing() {
        let Some(cluster) = Cluster::start() else { return };
        let store = PgStore::open(&cluster.url(), CHANNELS).await.unwrap();
        assert_eq!(store.insert(alert(1)).await.unwrap(), Stored::New);
        cluster.stop();
        let refused = store.insert(alert(2)).await;
        assert!(matches!(refused, Err(StoreError::Unavailable(_))), "not acknowledged: {refused:?}");
        assert!(store.is_failing(), "failing at once: no SOS acknowledged, no heartbeat answered");
        cluster.start_server();
        // The agent keeps retrying; the store takes it once the connection is made again.
        let stored = within("the store resumes", async {
            loop {
                match store.insert(alert(2)).await {
                    Ok(s) => return s,
                    Err(StoreError::Unavailable(_)) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .await;
        assert_eq!(stored, Stored::New);
        assert!(!store.is_failing());
        assert_eq!(store.insert(alert(1)).await.unwrap(), Stored::Duplicate, "what was acknowledged is there");
        let ids: Vec<_> = store.recent_alerts(10).await.unwrap().into_iter().map(|(a, _)| a.alert_id).collect();
        assert_eq!(ids.len(), 2);
        let now = outbox_clock_ms();
        assert_eq!(store.claim("slack", now, 10).await.unwrap().jobs.len(), 2, "one job each, none lost or doubled");
    }

    #[tokio::test]
    async fn migrations_run_once_and_a_newer_schema_is_refused() {
        let Some(cluster) = Cluster::start() else { return };
        let url = cluster.url();
        let (a, b) = tokio::join!(PgStore::open(&url, CHANNELS), PgStore::open(&url, CHANNELS));
        let (a, _b) = (a.unwrap(), b.unwrap());
        a.run(|c| {
            Box::pin(async move {
                // One row per migration run: none twice.
                let n: i64 = c
                    .query_one("SELECT COUNT(*) - COUNT(DISTINCT version) FROM schema_version", &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(n, 0, "two collectors starting together migrate once");
                c.execute("INSERT INTO schema_version VALUES (99)", &[]).await.unwrap();
                Ok(())
            })
        })
        .await
        .unwrap();
        let e = PgStore::open(&cluster.url(), CHANNELS).await.unwrap_err().to_string();
        assert!(e.contains("version 99") && e.contains("newer"), "{e}");
    }
}
