//! The escalation engine: the next tier of an alert nobody acknowledged, at its deadline.
//!
//! - The first tier fires when the alert is stored, in the same transaction (see
//!   [`Db::insert_alerts_planned`](crate::store::Db::insert_alerts_planned)); each tier sets the
//!   deadline of the next in the store (`escalations`). This task fires the deadlines that are
//!   due: the next tier's channels and responders are notified and the earlier tiers reminded,
//!   all in one transaction per batch, at most [`BATCH`] alerts per transaction.
//! - Deadlines are on the outbox clock ([`outbox_clock_ms`]): monotonic while the collector
//!   runs, so a step of the wall clock neither fires a tier early nor holds it back. At start
//!   the deadlines kept in the store are re-based on this run's clock
//!   ([`Db::rebase_escalations`](crate::store::Db::rebase_escalations)): one set "in the
//!   future" (the clock was stepped back while the collector was down) is due at most its wait
//!   from now; one whose wait passed while the collector was down fires at once.
//! - An acknowledgement deletes the deadline in its own transaction; a deadline whose alert was
//!   acknowledged, resolved or cancelled in the meantime is dropped without firing (the store
//!   serialises both, so a tier fired a moment before an acknowledgement has its jobs stopped by it).
//! - The engine wakes at the next deadline, and at least every [`POLL`]: another process (the
//!   CLI's `alerts ack`) may have changed the store. It notices such commits (SQLite's
//!   `data_version`), re-bases the jobs they queued on this run's clock, wakes the outbox
//!   workers and [`Store::changes`]' listeners. No busy loop: a full batch is followed at once
//!   by the next, anything less sleeps.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::store::{now_ms, outbox_clock_ms, Store, StoreError};

/// The longest the engine sleeps: how soon it notices a commit by another process.
pub const POLL: Duration = Duration::from_secs(1);

/// The most deadlines fired in one transaction.
pub const BATCH: usize = 256;

/// How long the engine waits when deadlines are due but none fired: another collector on the
/// same PostgreSQL holds them while it fires them.
const HELD_ELSEWHERE: Duration = Duration::from_millis(250);

/// Fire due escalation deadlines until `shutdown`.
pub async fn run(store: Store, shutdown: CancellationToken) {
    let plan = store.plan();
    let clock = outbox_clock_ms();
    match store.rebase_escalations(clock).await {
        Ok(0) => {}
        Ok(n) => {
            info!(deadlines = n, "escalation deadlines re-based on this run's clock (the clock was stepped back?)")
        }
        Err(e) => warn!(error = %e, "cannot re-base escalation deadlines"),
    }
    info!("escalation engine started");
    let mut seen_version: Option<i64> = None;
    let mut failing = false;
    // The most deadlines fired at once: halved after a failure (a batch too large to fire within
    // the database's answer time would fail for ever), doubled back after each success.
    let mut batch = BATCH;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let tick_plan = plan.clone();
        // Read here, not on the writer's thread: under paused time (tests) that is the clock.
        let (now, clock) = (now_ms(), outbox_clock_ms());
        let tick = store.escalation_tick(tick_plan, now, clock, batch).await.map(|(v, (f, n))| (v, f, n));
        let wait = match tick {
            Ok((version, fired, next)) => {
                if failing {
                    info!("escalation engine: the store answers again");
                    failing = false;
                }
                if seen_version.is_some_and(|v| v != version) {
                    // Another process committed (an acknowledgement from the command line): the
                    // jobs it queued are dated on its clock; bring them onto ours and wake everyone.
                    let clock = outbox_clock_ms();
                    if let Err(e) = store.rebase_foreign_jobs(clock).await {
                        warn!(error = %e, "cannot re-base jobs queued by another process");
                    }
                    store.changed(true);
                }
                seen_version = Some(version);
                for (alert_id, tier, again) in &fired {
                    if *again {
                        warn!(%alert_id, round = tier,
                              "STILL UNANSWERED after every tier: every tier reminded again (a drill once; an alert again after twice the wait, at most an hour)");
                    } else {
                        warn!(%alert_id, tier, "nobody acknowledged in time: tier {tier} notified, earlier tiers reminded");
                    }
                }
                if !fired.is_empty() {
                    store.changed(true);
                }
                let full = fired.len() >= batch;
                batch = (batch * 2).min(BATCH);
                match next {
                    _ if full => Duration::ZERO,
                    // Due, yet nothing fired: another collector on the same PostgreSQL is firing
                    // them (its transaction holds them) — wait a little rather than spin.
                    Some(t) if fired.is_empty() && t <= outbox_clock_ms() => HELD_ELSEWHERE,
                    Some(t) => Duration::from_millis((t - outbox_clock_ms()).max(0) as u64).min(POLL),
                    None => POLL,
                }
            }
            Err(StoreError::Closed) => break,
            Err(e) => {
                batch = (batch / 2).max(1);
                if !failing {
                    error!(error = %e, "ESCALATION STALLED: cannot read or fire escalation deadlines; retrying every second");
                }
                failing = true;
                POLL
            }
        };
        if wait.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    info!("escalation engine stopped");
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use sos_shared::AlertId;

    use super::*;
    use crate::store::response::{PlannedResponder, ResponsePlan, TierPlan};
    use crate::store::tests::alert;
    use crate::store::{Db, Response as _, SqliteStore, Transition, Via};

    fn plan() -> ResponsePlan {
        let who = |name: &str| PlannedResponder {
            phone: None,
            name: name.into(),
            chat: None,
            email: Some(format!("{name}@example.com")),
            agents: vec![format!("{name}-desk")],
        };
        ResponsePlan {
            emergency: vec![
                TierPlan { channels: vec!["slack"], responders: vec![who("sam")], wait_ms: 60_000 },
                TierPlan { channels: vec!["email"], responders: vec![who("kim")], wait_ms: 60_000 },
            ],
            drill: vec![],
            offline_after_ms: 150_000,
        }
    }

    struct Running {
        store: Store,
        writer: std::thread::JoinHandle<()>,
        stop: CancellationToken,
        engine: tokio::task::JoinHandle<()>,
    }

    fn start(path: &Path) -> Running {
        let (w, writer) =
            SqliteStore::start_planned(Db::open(path).unwrap(), &["log", "slack", "email"], plan()).unwrap();
        let store = Store::sqlite(w, Some(path));
        let stop = CancellationToken::new();
        let engine = tokio::spawn(run(store.clone(), stop.clone()));
        Running { store, writer, stop, engine }
    }

    impl Running {
        /// Stop as a collector does: engine, then the store's writer.
        async fn stop(self) {
            self.stop.cancel();
            self.engine.await.unwrap();
            drop(self.store);
            tokio::task::spawn_blocking(move || self.writer.join().unwrap()).await.unwrap();
        }
    }

    /// Rows read by another connection, synchronously (no virtual time passes while reading).
    fn rows(path: &Path, sql: &str) -> Vec<(String, String, String)> {
        let db = Db::open_read_only(path).unwrap();
        let mut s = db.conn.prepare(sql).unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
    }

    fn tier2_jobs(path: &Path) -> Vec<(String, String, String)> {
        rows(path, "SELECT channel, kind, state FROM outbox WHERE channel = 'email' OR kind = 'reminder' ORDER BY id")
    }

    fn deadline(path: &Path) -> Option<i64> {
        Db::open_read_only(path).unwrap().next_escalation().unwrap()
    }

    /// Let virtual time pass by `step`, then wait (blocking this thread, so that no virtual
    /// time passes) until the store's writer has run everything queued so far: the engine's
    /// tick, if it woke within the step. Virtual time jumps to the next timer whenever every
    /// task waits, also while the engine waits for the writer (real time); without this the
    /// clock would run ahead of the engine and fire tiers late.
    async fn pass(store: &Store, step: Duration) {
        tokio::time::sleep(step).await;
        // Let a task woken by the same timer queue its work first.
        tokio::task::yield_now().await;
        writer_caught_up(store);
    }

    /// Block until the writer has run a marker queued now, i.e. everything queued before it (it
    /// runs commands in order), within a real-time deadline.
    fn writer_caught_up(store: &Store) {
        use futures_util::FutureExt as _;
        let (done, ran) = std::sync::mpsc::channel();
        // One poll queues the marker; its answer is not awaited (the marker says it ran).
        let _ = store
            .as_sqlite()
            .unwrap()
            .exec(move |_| {
                let _ = done.send(());
                Ok(())
            })
            .now_or_never();
        ran.recv_timeout(Duration::from_secs(30)).expect("the store's writer ran the marker within 30 s");
    }

    /// Pass time in small steps until tier 2 fires; returns the outbox clock at which the engine
    /// fired it (the date of its jobs).
    async fn wait_for_tier2(store: &Store, path: &Path, due: i64) -> i64 {
        loop {
            // Far from the deadline one jump (nothing can fire before it), then small steps.
            let before = due - 2_000 - outbox_clock_ms();
            pass(store, if before > 0 { Duration::from_millis(before as u64) } else { Duration::from_millis(10) })
                .await;
            let fired: Vec<(String, String, String)> = rows(
                path,
                "SELECT channel, kind, CAST(created_at_ms AS TEXT) FROM outbox WHERE channel = 'email' AND kind = 'alert'",
            );
            if let Some((_, _, at)) = fired.first() {
                return at.parse().unwrap();
            }
            let now = outbox_clock_ms();
            assert!(now < due + 60_000, "tier 2 not notified 60 s after its deadline: now {now}, due {due}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tier_1_notifies_tier_2_after_60_s() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        let c = start(&path);
        let inserted = outbox_clock_ms();
        c.store.insert(alert(1)).await.unwrap();
        let due = deadline(&path).unwrap();
        assert!((inserted + 60_000..=inserted + 61_000).contains(&due), "{due} vs {inserted}");
        let fired = wait_for_tier2(&c.store, &path, due).await;
        assert!(fired >= due, "tier 2 fired early: {fired} < {due}");
        assert!(fired <= due + 2_000, "tier 2 fired late: {fired} > {due} + 2 s");
        assert_eq!(
            tier2_jobs(&path),
            vec![
                ("slack".into(), "reminder".into(), "pending".into()),
                ("email".into(), "alert".into(), "pending".into())
            ]
        );
        // Nobody yet after the last tier: every tier is reminded again after its wait, then
        // after twice the wait. (Nothing is delivered here: Slack still has tier 2's reminder
        // waiting and gets no other; email, tier 2's page waiting, gets the round's.)
        let round = deadline(&path).expect("a reminder round after the last tier");
        assert_eq!(round, fired + 60_000, "the last tier's wait paces the reminders");
        let reminders = |p: &Path| {
            rows(p, "SELECT channel, kind, CAST(created_at_ms AS TEXT) FROM outbox WHERE tier = 3 ORDER BY channel")
        };
        pass(&c.store, Duration::from_millis((round - 2_000 - outbox_clock_ms()).max(0) as u64)).await;
        while reminders(&path).is_empty() {
            let now = outbox_clock_ms();
            assert!(now < round + 60_000, "no reminder round 60 s after its deadline: now {now}, due {round}");
            pass(&c.store, Duration::from_millis(10)).await;
        }
        let got = reminders(&path);
        let kinds: Vec<(&str, &str)> = got.iter().map(|(c, k, _)| (c.as_str(), k.as_str())).collect();
        assert_eq!(kinds, vec![("email", "reminder")]);
        let at: i64 = got[0].2.parse().unwrap();
        assert!((round..=round + 2_000).contains(&at), "the round fired at {at}, due {round}");
        assert_eq!(deadline(&path), Some(at + 120_000), "then after twice the wait");
        c.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_acknowledgement_during_tier_1_means_tier_2_is_never_notified() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        let c = start(&path);
        c.store.insert(alert(1)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let r = c.store.acknowledge(AlertId::from_u128(1), "sam".into(), Via::Popup, String::new()).await.unwrap();
        assert!(matches!(r, Transition::New { .. }), "{r:?}");
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(tier2_jobs(&path).is_empty(), "{:?}", tier2_jobs(&path));
        assert_eq!(deadline(&path), None);
        assert_eq!(
            rows(&path, "SELECT channel, kind, state FROM outbox ORDER BY id"),
            vec![
                ("slack".into(), "alert".into(), "stopped".into()),
                ("slack".into(), "acknowledged".into(), "pending".into())
            ]
        );
        c.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_collector_restarted_mid_escalation_continues_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        let c = start(&path);
        c.store.insert(alert(1)).await.unwrap();
        let due = deadline(&path).unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        c.stop().await;
        assert!(tier2_jobs(&path).is_empty());
        // Down for 10 s, then a new service on the same store.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let c = start(&path);
        assert_eq!(deadline(&path), Some(due), "the deadline survived the restart unchanged");
        let fired = wait_for_tier2(&c.store, &path, due).await;
        assert!(fired >= due, "fired early after the restart: {fired} < {due}");
        assert!(fired <= due + 2_000, "fired late after the restart: {fired} > {due} + 2 s");
        c.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_acknowledgement_from_another_process_is_noticed_and_stops_the_escalation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        let c = start(&path);
        c.store.insert(alert(1)).await.unwrap();
        let changes = c.store.changes();
        let due = deadline(&path).unwrap();
        // Right at the deadline, as `sos-collector alerts ack` does it: its own connection,
        // its own clock. Whichever commits first, nothing of tier 2 goes out.
        let until = Duration::from_millis((due - outbox_clock_ms()).max(0) as u64);
        tokio::time::sleep(until).await;
        let mut cli = Db::open(&path).unwrap();
        let r = cli.acknowledge(AlertId::from_u128(1), "sam", Via::CommandLine, "", now_ms(), now_ms()).unwrap();
        assert!(matches!(r, Transition::New { .. }), "{r:?}");
        drop(cli);
        tokio::time::timeout(Duration::from_secs(3), changes.notified()).await.expect("the service noticed");
        tokio::time::sleep(Duration::from_secs(300)).await;
        let pending = rows(
            &path,
            "SELECT channel, kind, state FROM outbox WHERE state = 'pending' AND kind IN ('alert', 'reminder')",
        );
        assert!(pending.is_empty(), "{pending:?}");
        assert_eq!(deadline(&path), None);
        c.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_alerts_escalate_together_in_bounded_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sos.db");
        let alerts: Vec<_> = (1..=1000u128).map(alert).collect();
        Db::open(&path).unwrap().insert_alerts_planned(&alerts, &plan(), outbox_clock_ms()).unwrap();
        let due = deadline(&path).unwrap();
        let c = start(&path);
        // Virtual time runs on while the writer commits (real time): bound the wait in real time.
        let started = std::time::Instant::now();
        loop {
            let emails = rows(&path, "SELECT channel, kind, state FROM outbox WHERE channel = 'email'").len();
            if emails == 1000 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{emails} of 1000 escalated after a minute");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Each waits for its reminder round, one last-tier wait after its tier 2.
        let rounds = rows(&path, "SELECT 'x', 'x', CAST(count(*) AS TEXT) FROM escalations WHERE next_tier = 2");
        assert_eq!(rounds[0].2, "1000");
        assert!(deadline(&path).is_some_and(|d| d >= due + 60_000), "{:?} vs {due}", deadline(&path));
        // Each transaction fired at most BATCH alerts: the jobs carry at most BATCH per date.
        let per_tick = rows(
            &path,
            "SELECT CAST(COUNT(*) AS TEXT), '', '' FROM outbox WHERE channel = 'email' GROUP BY created_at_ms",
        );
        assert!(per_tick.iter().all(|(n, _, _)| n.parse::<usize>().unwrap() <= BATCH), "{per_tick:?}");
        let first: Vec<(String, String, String)> =
            rows(&path, "SELECT CAST(MIN(created_at_ms) AS TEXT), '', '' FROM outbox WHERE channel = 'email'");
        assert!(first[0].0.parse::<i64>().unwrap() >= due, "escalated before the deadline");
        c.stop().await;
    }
}
