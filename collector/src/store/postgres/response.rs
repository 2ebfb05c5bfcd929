//! The responder loop on PostgreSQL: response state, timeline events, tiers and their
//! deadlines, acknowledgements, sender notices, acknowledge links — the SQL of
//! `store/sqlite/response.rs`, `alerts.rs`, `jobs.rs` and `console.rs` ported one to one, made
//! safe for several collectors on one database.
//!
//! # Several collectors
//! - **One lock per alert's response.** Every transaction that changes an alert's response
//!   (an acknowledgement, a resolve, a check, a cancellation, a tier fired) first locks its
//!   `responses` row (`SELECT … FOR UPDATE`), and reads the state only then: two collectors
//!   acknowledging at once are serialised, the second sees `acknowledged` and is told
//!   [`Transition::Already`].
//! - **A deadline fires once.** [`PgStore::escalate_due`] takes the due `escalations` rows and
//!   their `responses` rows with `FOR UPDATE … SKIP LOCKED` in the transaction that fires them:
//!   another collector's engine skips what this one is firing, and finds it re-dated (or gone)
//!   after the commit; an alert whose response is locked (being acknowledged) is skipped too,
//!   and the acknowledgement deletes its deadline.
//! - **An acknowledgement stops what every collector would send.** It marks `stopped` every
//!   pending notification and reminder of the alert, leased or not, in its transaction. A job
//!   another collector is delivering under its lease at that moment may still go out (its
//!   outcome is recorded under the lease); nothing stopped is claimed again. A follow-up
//!   ("acknowledged by", a cancellation, a reminder) waits while its channel's notification of
//!   the alert is pending **or in flight** (stopped but under a live lease), so news never
//!   overtakes the alert on a channel, whichever collector sends which.
//! - **Lock order.** Transactions take the response row first and never `FOR UPDATE` an
//!   `alerts` row (a cancellation takes `FOR NO KEY UPDATE`, which does not conflict with the
//!   key-share locks that inserting jobs and events takes): no two of them wait on each other.
//!   Outbox rows are locked in id order.
//! - **Live.** Every transaction that changes a response sends `NOTIFY sos_changes`, and
//!   `NOTIFY sos_jobs, '<channel>'` for each channel it made due jobs for, delivered at the
//!   commit to every collector (this one too).
//!
//! # Clocks
//! Jobs' due times and escalation deadlines are on the outbox clock of the collector that wrote
//! them ([`outbox_clock_ms`](crate::store::outbox_clock_ms): its wall clock when it started,
//! then monotonic). Between collectors they are compared as they are: a deadline set by one
//! collector fires on another earlier or later by the difference of their clocks (their wall
//! clocks at start, plus the drift since), so the collectors' hosts must keep their wall clocks
//! synchronised (NTP; a few ms apart is nothing next to a tier's wait). Leases are on the
//! database's clock, the same for all. The SQLite store's `rebase_*` re-date one process's own
//! deadlines after a step of its clock; on PostgreSQL the deadlines are shared, and one
//! collector restarting after a step of *its* clock must not re-date what the others set on
//! theirs: the `rebase_*` methods change nothing here and return 0 (see each).

use std::sync::Arc;

use super::conn::Tx;
use sos_shared::protocol::{NoticeEvent, ResponderNotice};
use sos_shared::AlertId;

use super::{alert_from, pg_error, text, PgStore, ALERT_COLUMNS};
use crate::store::console::{LinkAck, LinkUse};
use crate::store::response::{
    mentions_of, wait_after, AlertState, Event, PopupTarget, ResponsePlan, TierPlan, Transition, Via,
};
use crate::store::sqlite::response::{
    clean_note, Escalated, DETAIL_SEP, MAX_PENDING_NOTICES, MAX_POPUP_TARGETS, POPUP_RECENT_MS,
};
use crate::store::{AlertRecord, Delivery, NewAlert, StoreError};

/// How many columns [`ALERT_COLUMNS`] is.
const ALERT_COLUMN_COUNT: usize = 16;

/// The most deadlines [`PgStore::escalate_due`] fires in one transaction, whatever the caller's
/// limit: each costs a dozen round trips to the database, and the whole transaction must answer
/// within [`super::ANSWER_WITHIN`]. Fewer than the limit fired leaves the next deadline due at
/// once, so the escalation engine comes back for the rest without sleeping.
pub const MAX_ESCALATIONS_AT_ONCE: usize = 64;

/// What a transaction did that others must hear of: the channels it made due jobs for, and
/// whether it changed an alert's response. Announced in the transaction ([`Effects::notify`])
/// and to this collector's own workers after the commit ([`PgStore::wake`]).
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Channels with new due jobs, each once.
    pub(crate) channels: Vec<String>,
    /// A response changed.
    pub(crate) changed: bool,
}

impl Effects {
    fn jobs(&mut self, rows: &[tokio_postgres::Row]) {
        for r in rows {
            let ch: String = r.get(0);
            if !self.channels.contains(&ch) {
                self.channels.push(ch);
            }
        }
    }

    /// `NOTIFY` what this transaction did; delivered at its commit.
    pub(crate) async fn notify(&self, tx: &Tx<'_>) -> Result<(), StoreError> {
        if !self.channels.is_empty() {
            tx.execute("SELECT pg_notify('sos_jobs', ch) FROM unnest($1::text[]) AS ch", &[&self.channels])
                .await
                .map_err(pg_error)?;
        }
        if self.changed || !self.channels.is_empty() {
            tx.execute("SELECT pg_notify('sos_changes', '')", &[]).await.map_err(pg_error)?;
        }
        Ok(())
    }
}

impl PgStore {
    /// After the commit of `effects`: wake this collector's workers of those channels and its
    /// change listeners at once (the others hear the `NOTIFY`).
    pub(crate) fn wake(&self, effects: &Effects) {
        for (ch, n) in self.inner.wakers.iter() {
            if effects.channels.iter().any(|c| c == ch) {
                n.notify_one();
            }
        }
        if effects.changed || !effects.channels.is_empty() {
            super::announce(&self.inner.changes);
        }
    }
}

fn notice_name(e: NoticeEvent) -> &'static str {
    match e {
        NoticeEvent::Acknowledged => "acknowledged",
        NoticeEvent::Resolved => "resolved",
        NoticeEvent::Unanswered => "unanswered",
    }
}

fn notice_event(name: &str) -> NoticeEvent {
    match name {
        "resolved" => NoticeEvent::Resolved,
        "unanswered" => NoticeEvent::Unanswered,
        _ => NoticeEvent::Acknowledged,
    }
}

/// Who sent an alert, as its timeline names them.
fn sender_name(a: &NewAlert) -> String {
    match &a.enrolled {
        Some(e) => format!("{}@{} (agent {})", a.sos.user, a.sos.host, e.name),
        None => format!("{}@{}", a.sos.user, a.sos.host),
    }
}

fn parse_id(id: &str) -> Result<AlertId, StoreError> {
    id.parse().map_err(|e| StoreError::Postgres(format!("alert id {id:?} in the store: {e}")))
}

async fn event(
    tx: &Tx<'_>,
    id: &str,
    at_ms: i64,
    kind: &str,
    who: &str,
    via: Via,
    note: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO alert_events (alert_id, at_ms, kind, who, via, note) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&id, &at_ms, &kind, &text(who), &via.name(), &text(note)],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// The response row of `id`, locked until the end of the transaction: (state, by), creating it
/// for an alert stored before the responder loop (as `notified`: its channels were). `None`: no
/// such alert.
async fn response_state(tx: &Tx<'_>, id: &str, now_ms: i64) -> Result<Option<(AlertState, String)>, StoreError> {
    const LOCK: &str = "SELECT state, by_responder FROM responses WHERE alert_id = $1 FOR UPDATE";
    if let Some(r) = tx.query_opt(LOCK, &[&id]).await.map_err(pg_error)? {
        return Ok(Some((AlertState::from_name(r.get(0)), r.get(1))));
    }
    let Some(row) = tx
        .query_opt("SELECT cancelled_at_ms, received_at_ms FROM alerts WHERE alert_id = $1", &[&id])
        .await
        .map_err(pg_error)?
    else {
        return Ok(None);
    };
    let state = if row.get::<_, Option<i64>>(0).is_some() { AlertState::Cancelled } else { AlertState::Notified };
    let received_at_ms: i64 = row.get(1);
    // Another collector may make it at the same moment: theirs or ours, then locked.
    tx.execute(
        "INSERT INTO responses (alert_id, state, tier, changed_at_ms, received_at_ms) VALUES ($1, $2, 1, $3, $4)
         ON CONFLICT DO NOTHING",
        &[&id, &state.name(), &now_ms, &received_at_ms],
    )
    .await
    .map_err(pg_error)?;
    let r = tx.query_one(LOCK, &[&id]).await.map_err(pg_error)?;
    Ok(Some((AlertState::from_name(r.get(0)), r.get(1))))
}

/// The alerts [`PgStore::popup_targets`] reads (`$1` the oldest change that counts as recent,
/// `$2` the limit): the newest open alerts (and every alert tied with the last of them, so that
/// the cut falls where a read of everything would put it) and the closed ones that changed
/// since `$1`, ordered by the response's copy of the alert's time and cut to the limit before
/// they are joined to their alerts: the join reads at most `$2` rows (joined first, the planner
/// chose a scan of every alert once there were about a thousand candidates: helper-46). Each
/// part reads its own partial index (`responses_open`, `responses_closed`: migration 7), never
/// the history (as SQLite's `POPUP_TARGETS_IDS`).
const POPUP_TARGETS_IDS: &str = "SELECT alert_id, received_at_ms FROM responses
     WHERE state IN ('received', 'notified', 'acknowledged', 'cancelled')
       AND received_at_ms >= COALESCE(
           (SELECT received_at_ms FROM responses
            WHERE state IN ('received', 'notified', 'acknowledged', 'cancelled')
            ORDER BY received_at_ms DESC LIMIT 1 OFFSET $2::bigint - 1), -9223372036854775807)
     UNION ALL
     SELECT alert_id, received_at_ms FROM responses WHERE state IN ('resolved', 'checked') AND changed_at_ms >= $1
     ORDER BY received_at_ms DESC, alert_id LIMIT $2::bigint";

/// The popup read of [`PgStore::popup_targets`] (`$1`, `$2` as in [`POPUP_TARGETS_IDS`]).
fn popup_targets_sql() -> String {
    format!(
        "SELECT {ALERT_COLUMNS}, r.state, r.by_responder, r.note, r.outcome, r.seq, r.responders, r.reminder_seq
         FROM ({POPUP_TARGETS_IDS}) t JOIN responses r ON r.alert_id = t.alert_id
         JOIN alerts a ON a.alert_id = t.alert_id ORDER BY a.received_at_ms DESC, a.alert_id LIMIT $2"
    )
}

/// Stop what an answered or withdrawn alert must no longer do: its pending tier deadline and
/// its pending jobs of `kinds`, whoever holds their lease (locked in id order). Returns the
/// jobs stopped.
async fn stop_pending(tx: &Tx<'_>, id: &str, kinds: &[&str]) -> Result<u64, StoreError> {
    tx.execute("DELETE FROM escalations WHERE alert_id = $1", &[&id]).await.map_err(pg_error)?;
    tx.execute(
        "UPDATE outbox SET state = 'stopped' WHERE id IN (
             SELECT id FROM outbox WHERE alert_id = $1 AND kind = ANY($2) AND state = 'pending'
             ORDER BY id FOR UPDATE)
           AND state = 'pending'",
        &[&id, &kinds],
    )
    .await
    .map_err(pg_error)
}

/// The channels that were told of the alert (a job of its notification exists, in any state:
/// one stopped may have been in flight), in the order they were first told.
async fn notified_channels(tx: &Tx<'_>, id: &str) -> Result<Vec<String>, StoreError> {
    let rows = tx
        .query(
            "SELECT channel FROM outbox WHERE alert_id = $1 AND kind = 'alert' GROUP BY channel ORDER BY MIN(id)",
            &[&id],
        )
        .await
        .map_err(pg_error)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The extra recipients the alert's notifications on `channel` went to, every tier, each once.
async fn notified_recipients(tx: &Tx<'_>, id: &str, channel: &str) -> Result<String, StoreError> {
    let rows = tx
        .query(
            "SELECT recipients FROM outbox WHERE alert_id = $1 AND channel = $2 AND kind = 'alert' ORDER BY id",
            &[&id, &channel],
        )
        .await
        .map_err(pg_error)?;
    let mut all: Vec<&str> = Vec::new();
    for r in &rows {
        for address in r.get::<_, &str>(0).lines() {
            if !address.is_empty() && !all.contains(&address) {
                all.push(address);
            }
        }
    }
    Ok(all.join("\n"))
}

/// Queue a job of `kind` (tier 1) about the alert to each of `channels`, due at `jobs_at_ms`.
async fn queue(
    tx: &Tx<'_>,
    id: &str,
    channels: &[String],
    kind: &str,
    detail: &str,
    jobs_at_ms: i64,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    for ch in channels {
        let recipients = notified_recipients(tx, id, ch).await?;
        let rows = tx
            .query(
                "INSERT INTO outbox (alert_id, channel, kind, tier, state, created_at_ms, next_attempt_at_ms, detail,
                                     recipients)
                 VALUES ($1, $2, $3, 1, 'pending', $4, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING channel",
                &[&id, ch, &kind, &jobs_at_ms, &text(detail), &recipients],
            )
            .await
            .map_err(pg_error)?;
        effects.jobs(&rows);
    }
    Ok(())
}

/// Owe the alert's sender a notice (once per event).
async fn owe_notice(
    tx: &Tx<'_>,
    id: &str,
    event: NoticeEvent,
    responder: &str,
    note: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO sender_notices (alert_id, event, principal, responder, note, at_ms)
         SELECT alert_id, $2, COALESCE('agent:' || agent_id, key_id), $3, $4, $5 FROM alerts WHERE alert_id = $1
         ON CONFLICT DO NOTHING",
        &[&id, &notice_name(event), &text(responder), &text(note), &now_ms],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// Whether an agent of `agents` (enrolled names, not revoked) heartbeated as a responder
/// desktop since `since_ms`.
async fn any_online(tx: &Tx<'_>, agents: &[String], since_ms: i64) -> Result<bool, StoreError> {
    if agents.is_empty() {
        return Ok(false);
    }
    let r = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM enrolled
                            WHERE name = ANY($1) AND revoked_at_ms IS NULL AND responder_seen_ms >= $2)",
            &[&agents, &since_ms],
        )
        .await
        .map_err(pg_error)?;
    Ok(r.get(0))
}

/// An alert whose tiers are being fired.
struct Firing<'a> {
    plan: &'a ResponsePlan,
    id: &'a str,
    test: bool,
    received_at_ms: i64,
    now_ms: i64,
    jobs_at_ms: i64,
}

/// Fire tier `index` (0-based) of the alert's policy (as SQLite's `fire_tier`). Returns whether
/// anyone can be reached through it.
async fn fire_tier(tx: &Tx<'_>, f: &Firing<'_>, index: usize, effects: &mut Effects) -> Result<bool, StoreError> {
    let (id, now_ms, jobs_at_ms) = (f.id, f.now_ms, f.jobs_at_ms);
    let tiers = f.plan.policy(f.test);
    let Some(tier) = tiers.get(index) else {
        if tiers.is_empty() {
            tx.execute("DELETE FROM escalations WHERE alert_id = $1", &[&id]).await.map_err(pg_error)?;
            return Ok(false);
        }
        remind_again(tx, f, index, effects).await?;
        return Ok(true);
    };
    let number = index as i64 + 1;
    let mentions: Vec<&str> = tier.responders.iter().filter_map(|r| r.chat.as_deref()).collect();
    let recipients = |ch: &str| tier.responders.iter().filter_map(|r| r.address(ch)).collect::<Vec<_>>().join("\n");
    let after_secs = ((now_ms - f.received_at_ms).max(0) / 1000).to_string();
    if index > 0 {
        // The earlier tiers' channels remind the earlier tiers' responders.
        let mut earlier = notified_channels(tx, id).await?;
        earlier.retain(|c| !tier.channels.contains(&c.as_str()));
        remind(tx, id, &tiers[..index], &earlier, number, jobs_at_ms, &after_secs, effects).await?;
    }
    let mentions = mentions.join("\n");
    for ch in &tier.channels {
        let rows = tx
            .query(
                "INSERT INTO outbox (alert_id, channel, kind, tier, state, created_at_ms, next_attempt_at_ms,
                                     mentions, recipients)
                 VALUES ($1, $2, 'alert', $3, 'pending', $4, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING channel",
                &[&id, ch, &number, &jobs_at_ms, &text(&mentions), &text(&recipients(ch))],
            )
            .await
            .map_err(pg_error)?;
        effects.jobs(&rows);
    }
    let before: String =
        tx.query_one("SELECT responders FROM responses WHERE alert_id = $1", &[&id]).await.map_err(pg_error)?.get(0);
    let mut names: Vec<String> = before.lines().map(str::to_owned).collect();
    for r in &tier.responders {
        if !names.contains(&r.name) {
            names.push(r.name.clone());
        }
    }
    tx.execute(
        "UPDATE responses SET state = CASE state WHEN 'received' THEN 'notified' ELSE state END,
                tier = $2, seq = seq + 1, reminder_seq = reminder_seq + $3, responders = $4, changed_at_ms = $5
         WHERE alert_id = $1",
        &[&id, &number, &i64::from(index > 0), &text(&names.join("\n")), &now_ms],
    )
    .await
    .map_err(pg_error)?;
    effects.changed = true;
    let targets: Vec<&str> =
        tier.responders.iter().map(|r| r.name.as_str()).chain(tier.channels.iter().copied()).collect();
    event(tx, id, now_ms, "notified", "collector", Via::Collector, &format!("tier {number}: {}", targets.join(", ")))
        .await?;
    if index > 0 {
        let note = format!(
            "tier{} 1{} still unanswered after {after_secs} s",
            if index > 1 { "s" } else { "" },
            if index > 1 { format!("–{index}") } else { String::new() }
        );
        event(tx, id, now_ms, "reminded", "collector", Via::Collector, &note).await?;
    }
    set_deadline(tx, tiers, f.test, id, index, jobs_at_ms).await?;
    if tier.channels.iter().any(|c| *c != "log") {
        return Ok(true);
    }
    let agents: Vec<String> = tier.responders.iter().flat_map(|r| r.agents.iter().cloned()).collect();
    any_online(tx, &agents, now_ms - f.plan.offline_after_ms).await
}

/// The next round after round `index` is due after its wait; none left, no deadline (as
/// SQLite's `set_deadline`).
async fn set_deadline(
    tx: &Tx<'_>,
    tiers: &[TierPlan],
    test: bool,
    id: &str,
    index: usize,
    jobs_at_ms: i64,
) -> Result<(), StoreError> {
    let Some(wait) = wait_after(tiers, index, test) else {
        tx.execute("DELETE FROM escalations WHERE alert_id = $1", &[&id]).await.map_err(pg_error)?;
        return Ok(());
    };
    tx.execute(
        "INSERT INTO escalations (alert_id, next_tier, set_at_ms, due_at_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (alert_id) DO UPDATE SET next_tier = excluded.next_tier, set_at_ms = excluded.set_at_ms,
                                              due_at_ms = excluded.due_at_ms",
        &[&id, &(index as i64 + 1), &jobs_at_ms, &jobs_at_ms.saturating_add(wait)],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// Queue a reminder to each of `channels` for round `number` (as SQLite's `remind`: never to
/// `forward`, not to a channel with a reminder of the alert still waiting).
#[allow(clippy::too_many_arguments)]
async fn remind(
    tx: &Tx<'_>,
    id: &str,
    tiers: &[TierPlan],
    channels: &[String],
    number: i64,
    jobs_at_ms: i64,
    after_secs: &str,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    let reminded = mentions_of(tiers);
    for ch in channels.iter().filter(|c| *c != "forward") {
        let recipients = notified_recipients(tx, id, ch).await?;
        let rows = tx
            .query(
                "INSERT INTO outbox (alert_id, channel, kind, tier, state, created_at_ms, next_attempt_at_ms,
                                     detail, mentions, recipients)
                 SELECT $1, $2, 'reminder', $3, 'pending', $4, $4, $5, $6, $7
                 WHERE NOT EXISTS (SELECT 1 FROM outbox WHERE alert_id = $1 AND channel = $2 AND kind = 'reminder'
                                                          AND state = 'pending')
                 ON CONFLICT DO NOTHING RETURNING channel",
                &[&id, ch, &number, &jobs_at_ms, &after_secs, &text(&reminded), &text(&recipients)],
            )
            .await
            .map_err(pg_error)?;
        effects.jobs(&rows);
    }
    Ok(())
}

/// Round `index`, past the last tier, of an alert nobody acknowledged: every tier reminded
/// again (as SQLite's `remind_again`).
async fn remind_again(tx: &Tx<'_>, f: &Firing<'_>, index: usize, effects: &mut Effects) -> Result<(), StoreError> {
    let (id, now_ms, jobs_at_ms) = (f.id, f.now_ms, f.jobs_at_ms);
    let tiers = f.plan.policy(f.test);
    let after_secs = ((now_ms - f.received_at_ms).max(0) / 1000).to_string();
    remind(tx, id, tiers, &notified_channels(tx, id).await?, index as i64 + 1, jobs_at_ms, &after_secs, effects)
        .await?;
    tx.execute(
        "UPDATE responses SET seq = seq + 1, reminder_seq = reminder_seq + 1, changed_at_ms = $2 WHERE alert_id = $1",
        &[&id, &now_ms],
    )
    .await
    .map_err(pg_error)?;
    effects.changed = true;
    let note = format!("every tier still unanswered after {after_secs} s");
    event(tx, id, now_ms, "reminded", "collector", Via::Collector, &note).await?;
    set_deadline(tx, tiers, f.test, id, index, jobs_at_ms).await
}

/// Fire tier `index`; if nobody can be reached through it, tell the sender plainly (the
/// `unanswered` notice) and fire every remaining tier at once, up to the last.
async fn escalate(tx: &Tx<'_>, f: &Firing<'_>, index: usize, effects: &mut Effects) -> Result<(), StoreError> {
    if fire_tier(tx, f, index, effects).await? {
        return Ok(());
    }
    owe_notice(tx, f.id, NoticeEvent::Unanswered, "", "", f.now_ms).await?;
    let note = format!("nobody reachable in tier {}", index + 1);
    event(tx, f.id, f.now_ms, "unanswered", "collector", Via::Collector, &note).await?;
    for next in index + 1..f.plan.policy(f.test).len() {
        fire_tier(tx, f, next, effects).await?;
    }
    Ok(())
}

/// Start the response of a newly stored alert, inside its insert transaction: its state, its
/// `received` event, and its first tier fired (as SQLite's `start_response`).
pub(crate) async fn start_response(
    tx: &Tx<'_>,
    plan: &ResponsePlan,
    a: &NewAlert,
    jobs_at_ms: i64,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    let id = a.sos.alert_id.to_string();
    let now_ms = a.received_at_ms;
    tx.execute(
        "INSERT INTO responses (alert_id, state, changed_at_ms, received_at_ms) VALUES ($1, 'received', $2, $2)",
        &[&id, &now_ms],
    )
    .await
    .map_err(pg_error)?;
    event(tx, &id, now_ms, "received", &sender_name(a), Via::Sender, &clean_note(&a.sos.message)).await?;
    effects.changed = true;
    let f = Firing { plan, id: &id, test: a.sos.test, received_at_ms: a.received_at_ms, now_ms, jobs_at_ms };
    escalate(tx, &f, 0, effects).await
}

/// The response side of a cancellation by the sender, inside its transaction (as SQLite's
/// `cancel_response`). Returns the channels to tell: every channel that was notified (all of
/// `fallback` for an alert that notified none).
pub(crate) async fn cancel_response(
    tx: &Tx<'_>,
    id: &str,
    reason: &str,
    now_ms: i64,
    fallback: &[&str],
) -> Result<Vec<String>, StoreError> {
    if let Some((state, _)) = response_state(tx, id, now_ms).await? {
        if state.open() && state != AlertState::Cancelled {
            tx.execute(
                "UPDATE responses SET state = 'cancelled', seq = seq + 1, changed_at_ms = $2 WHERE alert_id = $1",
                &[&id, &now_ms],
            )
            .await
            .map_err(pg_error)?;
        }
    }
    event(tx, id, now_ms, "cancelled", "sender", Via::Sender, &clean_note(reason)).await?;
    stop_pending(tx, id, &["reminder"]).await?;
    let channels = notified_channels(tx, id).await?;
    Ok(if channels.is_empty() { fallback.iter().map(|c| (*c).to_owned()).collect() } else { channels })
}

/// Queue the cancellation job of alert `id` to each of `channels` (with the responders its
/// notifications were mailed or texted to).
pub(crate) async fn queue_cancel(
    tx: &Tx<'_>,
    id: &str,
    channels: &[String],
    jobs_at_ms: i64,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    for ch in channels {
        let recipients = notified_recipients(tx, id, ch).await?;
        let rows = tx
            .query(
                "INSERT INTO outbox (alert_id, channel, kind, state, created_at_ms, next_attempt_at_ms, recipients)
                 VALUES ($1, $2, 'cancel', 'pending', $3, $3, $4) ON CONFLICT DO NOTHING RETURNING channel",
                &[&id, ch, &jobs_at_ms, &recipients],
            )
            .await
            .map_err(pg_error)?;
        effects.jobs(&rows);
    }
    effects.changed = true;
    Ok(())
}

/// [`PgStore::acknowledge`] inside the caller's transaction (an acknowledge link records its
/// use in the same one).
#[allow(clippy::too_many_arguments)]
async fn acknowledge_in(
    tx: &Tx<'_>,
    alert_id: AlertId,
    responder: &str,
    via: Via,
    note: &str,
    now_ms: i64,
    jobs_at_ms: i64,
    effects: &mut Effects,
) -> Result<Transition, StoreError> {
    let id = alert_id.to_string();
    let note = clean_note(note);
    Ok(match response_state(tx, &id, now_ms).await? {
        None => Transition::Unknown,
        Some((AlertState::Acknowledged, by)) => Transition::Already { by },
        Some((state, _)) if !state.unanswered() => Transition::Closed(state),
        Some(_) => {
            tx.execute(
                "UPDATE responses SET state = 'acknowledged', by_responder = $2, note = $3, seq = seq + 1,
                        acknowledged_at_ms = $4, changed_at_ms = $4 WHERE alert_id = $1",
                &[&id, &text(responder), &note, &now_ms],
            )
            .await
            .map_err(pg_error)?;
            event(tx, &id, now_ms, "acknowledged", responder, via, &note).await?;
            stop_pending(tx, &id, &["alert", "reminder"]).await?;
            let detail = format!("{responder}{DETAIL_SEP}{note}");
            let channels = notified_channels(tx, &id).await?;
            queue(tx, &id, &channels, "acknowledged", &detail, jobs_at_ms, effects).await?;
            owe_notice(tx, &id, NoticeEvent::Acknowledged, responder, &note, now_ms).await?;
            effects.changed = true;
            Transition::New { at_ms: now_ms }
        }
    })
}

/// An outbox job's label, as `sos-collector alerts` shows it (as SQLite's `deliveries`).
pub(crate) const DELIVERY_COLUMNS: &str =
    "channel || CASE WHEN kind = 'alert' AND tier > 1 THEN ' (tier ' || tier || ')'
                        WHEN kind = 'alert' THEN ''
                        WHEN kind = 'reminder' THEN ' (reminder, round ' || tier || ')'
                        ELSE ' (' || kind || ')' END,
        state, attempts, last_error, delivered_at_ms";

/// A [`Delivery`] from a row of [`DELIVERY_COLUMNS`].
pub(crate) fn delivery_from(r: &tokio_postgres::Row) -> Delivery {
    Delivery {
        channel: r.get(0),
        state: r.get(1),
        attempts: r.get::<_, i32>(2).max(0) as u32,
        last_error: r.get(3),
        delivered_at_ms: r.get(4),
    }
}

/// The newest pending notices ([`PgStore::pending_notices`]), read on every change of the store:
/// it must walk the `sender_notices_pending` index backwards and stop at its limit. PostgreSQL
/// does not take `confirmed_at_ms IS NULL` for a constant, so the order names the index's
/// first column too (a test checks the plan has no sort).
const PENDING_NOTICES: &str = "SELECT alert_id, principal, event, responder, note, at_ms FROM sender_notices
     WHERE confirmed_at_ms IS NULL ORDER BY confirmed_at_ms DESC, at_ms DESC, alert_id DESC LIMIT $1";

impl PgStore {
    /// The escalation policy this store was opened with.
    pub fn plan(&self) -> Arc<ResponsePlan> {
        self.inner.plan.clone()
    }

    /// Fire the escalation deadlines due at `clock_ms` (outbox clock), at most `limit` of them,
    /// in one transaction: for each alert still unanswered, its next tier (as SQLite's
    /// `Db::escalate_due`). Several collectors: each deadline is taken with its response
    /// `FOR UPDATE SKIP LOCKED` in the firing transaction, so it fires once, on one collector;
    /// one whose alert is being acknowledged at that moment is left to the acknowledgement.
    /// Returns the alerts escalated (with the tier fired, 1-based) and when the next deadline is
    /// due (the outbox clock of whichever collector set it: see the module's doc).
    ///
    /// # Errors
    /// If the transaction fails; then nothing fired and the deadlines stay.
    pub async fn escalate_due(
        &self,
        plan: &ResponsePlan,
        now_ms: i64,
        clock_ms: i64,
        limit: usize,
    ) -> Result<Escalated, StoreError> {
        let plan = plan.clone();
        let limit = limit.min(MAX_ESCALATIONS_AT_ONCE);
        let (fired, next, effects) = self
            .run(move |c| {
                Box::pin(async move {
                    let tx = c.transaction().await.map_err(pg_error)?;
                    let due = tx
                        .query(
                            "SELECT e.alert_id, e.next_tier, a.test, a.received_at_ms, r.state
                             FROM escalations e JOIN alerts a ON a.alert_id = e.alert_id
                                                JOIN responses r ON r.alert_id = e.alert_id
                             WHERE e.due_at_ms <= $1 ORDER BY e.due_at_ms, e.alert_id LIMIT $2
                             FOR UPDATE OF e, r SKIP LOCKED",
                            &[&clock_ms, &(limit as i64)],
                        )
                        .await
                        .map_err(pg_error)?;
                    let mut fired = Vec::new();
                    let mut effects = Effects::default();
                    for r in &due {
                        let id: &str = r.get(0);
                        let next_tier: i64 = r.get(1);
                        if !AlertState::from_name(r.get(4)).unanswered() {
                            tx.execute("DELETE FROM escalations WHERE alert_id = $1", &[&id])
                                .await
                                .map_err(pg_error)?;
                            continue;
                        }
                        let f = Firing {
                            plan: &plan,
                            id,
                            test: r.get(2),
                            received_at_ms: r.get(3),
                            now_ms,
                            jobs_at_ms: clock_ms,
                        };
                        escalate(&tx, &f, next_tier.max(0) as usize, &mut effects).await?;
                        if let Ok(alert_id) = id.parse() {
                            let again = next_tier.max(0) as usize >= plan.policy(f.test).len();
                            fired.push((alert_id, next_tier as u32 + 1, again));
                        }
                    }
                    effects.notify(&tx).await?;
                    tx.commit().await.map_err(pg_error)?;
                    let next = next_escalation(c).await?;
                    Ok((fired, next, effects))
                })
            })
            .await?;
        self.wake(&effects);
        Ok((fired, next))
    }

    /// When the next escalation deadline is due (outbox clock of the collector that set it).
    ///
    /// # Errors
    /// If the query fails.
    pub async fn next_escalation(&self) -> Result<Option<i64>, StoreError> {
        self.run(|c| Box::pin(next_escalation(c))).await
    }

    /// Changes nothing and returns 0. On SQLite this re-dates the deadlines one process set
    /// before a step back of its own clock; on PostgreSQL the deadlines are shared by every
    /// collector, set on their clocks, and a collector starting after a step of its clock must
    /// not re-date them (it would delay the others' tiers). Clocks are kept in step by NTP
    /// instead (see the module's doc).
    ///
    /// # Errors
    /// Never.
    pub async fn rebase_escalations(&self, clock_ms: i64) -> Result<usize, StoreError> {
        let _ = clock_ms;
        Ok(0)
    }

    /// Changes nothing and returns 0: on SQLite it brings jobs that another process (the CLI)
    /// dated on its own clock onto the service's, when `data_version` shows that process's
    /// commit. On PostgreSQL every writer (collector or CLI) dates jobs on its outbox clock,
    /// all read off synchronised wall clocks, and other writers' commits are heard through
    /// `NOTIFY`, not [`PgStore::data_version`].
    ///
    /// # Errors
    /// Never.
    pub async fn rebase_foreign_jobs(&self, clock_ms: i64) -> Result<usize, StoreError> {
        let _ = clock_ms;
        Ok(0)
    }

    /// Changes nothing and returns 0: on SQLite it re-dates one process's pending jobs after a
    /// step of its clock and caps their retries' wait; on PostgreSQL the jobs are shared, their
    /// due times set by whichever collector tried them last on its clock, and a collector
    /// starting must not re-date another's (see [`PgStore::rebase_escalations`]).
    ///
    /// # Errors
    /// Never.
    pub async fn rebase_outbox(&self, channel: &str, now_ms: i64, max_wait_ms: i64) -> Result<usize, StoreError> {
        let _ = (channel, now_ms, max_wait_ms);
        Ok(0)
    }

    /// Always 0. SQLite's `data_version` tells the escalation engine that another process
    /// committed; on PostgreSQL every commit that matters is announced by `NOTIFY` (see
    /// [`PgStore::changes`] and the outbox wakers), so there is nothing to poll.
    ///
    /// # Errors
    /// Never.
    pub async fn data_version(&self) -> Result<i64, StoreError> {
        Ok(0)
    }

    /// A responder acknowledges `alert_id` (see [`crate::store::Response::acknowledge`]): in one
    /// transaction, under the alert's response lock, the event, the state, its deadline and
    /// every pending notification and reminder stopped (whichever collector holds their lease),
    /// "acknowledged by" queued to the notified channels, the sender's notice. Two collectors
    /// acknowledging at once: one is [`Transition::New`], the other [`Transition::Already`].
    /// `now_ms` is the wall clock (the event's time), `jobs_at_ms` the outbox clock.
    ///
    /// # Errors
    /// If the transaction fails; then nothing changed.
    pub async fn acknowledge(
        &self,
        alert_id: AlertId,
        responder: &str,
        via: Via,
        note: &str,
        now_ms: i64,
        jobs_at_ms: i64,
    ) -> Result<Transition, StoreError> {
        let (responder, note) = (responder.to_owned(), note.to_owned());
        let (t, effects) = self
            .run(move |c| {
                Box::pin(async move {
                    let tx = c.transaction().await.map_err(pg_error)?;
                    let mut effects = Effects::default();
                    let t =
                        acknowledge_in(&tx, alert_id, &responder, via, &note, now_ms, jobs_at_ms, &mut effects).await?;
                    effects.notify(&tx).await?;
                    tx.commit().await.map_err(pg_error)?;
                    Ok((t, effects))
                })
            })
            .await?;
        self.wake(&effects);
        Ok(t)
    }

    /// A responder resolves `alert_id` with `outcome` (see [`crate::store::Response::resolve`]);
    /// an alert never acknowledged counts as acknowledged by the same responder now.
    ///
    /// # Errors
    /// If the transaction fails; then nothing changed.
    #[allow(clippy::too_many_arguments)]
    pub async fn resolve(
        &self,
        alert_id: AlertId,
        responder: &str,
        via: Via,
        outcome: &str,
        note: &str,
        now_ms: i64,
        jobs_at_ms: i64,
    ) -> Result<Transition, StoreError> {
        let responder = responder.to_owned();
        let (outcome, note) = (clean_note(outcome), clean_note(note));
        let (t, effects) = self
            .run(move |c| {
                Box::pin(async move {
                    let tx = c.transaction().await.map_err(pg_error)?;
                    let id = alert_id.to_string();
                    let mut effects = Effects::default();
                    let t = match response_state(&tx, &id, now_ms).await? {
                        None => Transition::Unknown,
                        Some((AlertState::Resolved, by)) => Transition::Already { by },
                        Some((AlertState::Checked, _)) => Transition::Closed(AlertState::Checked),
                        Some(_) => {
                            tx.execute(
                                "UPDATE responses SET state = 'resolved', by_responder = $2, outcome = $3, note = $4,
                                        seq = seq + 1, acknowledged_at_ms = COALESCE(acknowledged_at_ms, $5),
                                        changed_at_ms = $5
                                 WHERE alert_id = $1",
                                &[&id, &text(&responder), &outcome, &note, &now_ms],
                            )
                            .await
                            .map_err(pg_error)?;
                            let said = match (outcome.is_empty(), note.is_empty()) {
                                (false, false) => format!("{outcome} — {note}"),
                                (false, true) => outcome.clone(),
                                _ => note.clone(),
                            };
                            event(&tx, &id, now_ms, "resolved", &responder, via, &said).await?;
                            stop_pending(&tx, &id, &["alert", "reminder"]).await?;
                            let detail = format!("{responder}{DETAIL_SEP}{note}{DETAIL_SEP}{outcome}");
                            let channels = notified_channels(&tx, &id).await?;
                            queue(&tx, &id, &channels, "resolved", &detail, jobs_at_ms, &mut effects).await?;
                            owe_notice(&tx, &id, NoticeEvent::Resolved, &responder, &said, now_ms).await?;
                            effects.changed = true;
                            Transition::New { at_ms: now_ms }
                        }
                    };
                    effects.notify(&tx).await?;
                    tx.commit().await.map_err(pg_error)?;
                    Ok((t, effects))
                })
            })
            .await?;
        self.wake(&effects);
        Ok(t)
    }

    /// A responder checked a cancelled alert in person: it is closed. Any other state is
    /// [`Transition::Closed`] with that state.
    ///
    /// # Errors
    /// If the transaction fails; then nothing changed.
    pub async fn mark_checked(
        &self,
        alert_id: AlertId,
        responder: &str,
        via: Via,
        note: &str,
        now_ms: i64,
    ) -> Result<Transition, StoreError> {
        let responder = responder.to_owned();
        let note = clean_note(note);
        let (t, effects) = self
            .run(move |c| {
                Box::pin(async move {
                    let tx = c.transaction().await.map_err(pg_error)?;
                    let id = alert_id.to_string();
                    let mut effects = Effects::default();
                    let t = match response_state(&tx, &id, now_ms).await? {
                        None => Transition::Unknown,
                        Some((AlertState::Checked, by)) => Transition::Already { by },
                        Some((AlertState::Cancelled, _)) => {
                            tx.execute(
                                "UPDATE responses SET state = 'checked', by_responder = $2, note = $3, seq = seq + 1,
                                        changed_at_ms = $4 WHERE alert_id = $1",
                                &[&id, &text(&responder), &note, &now_ms],
                            )
                            .await
                            .map_err(pg_error)?;
                            event(&tx, &id, now_ms, "checked", &responder, via, &note).await?;
                            effects.changed = true;
                            Transition::New { at_ms: now_ms }
                        }
                        Some((state, _)) => Transition::Closed(state),
                    };
                    effects.notify(&tx).await?;
                    tx.commit().await.map_err(pg_error)?;
                    Ok((t, effects))
                })
            })
            .await?;
        self.wake(&effects);
        Ok(t)
    }

    /// Open alerts and those changed within [`POPUP_RECENT_MS`] of `now_ms`, newest first, at
    /// most [`MAX_POPUP_TARGETS`] (see [`crate::store::Response::popup_targets`]).
    ///
    /// # Errors
    /// If the query fails.
    pub async fn popup_targets(&self, now_ms: i64) -> Result<Vec<PopupTarget>, StoreError> {
        // Planned for each read with its values (`plan_cache_mode = force_custom_plan`, set by
        // `connect`): a generic plan guesses a third of the closed alerts changed within the
        // hour and joins against a scan of every alert (155 ms against 13 ms at 350,000
        // alerts: helper-47).
        self.run(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(&popup_targets_sql(), &[&(now_ms - POPUP_RECENT_MS), &(MAX_POPUP_TARGETS as i64)])
                    .await
                    .map_err(pg_error)?;
                let n = ALERT_COLUMN_COUNT;
                rows.iter()
                    .map(|r| {
                        let state = AlertState::from_name(r.get(n));
                        let (note, outcome): (String, String) = (r.get(n + 2), r.get(n + 3));
                        Ok(PopupTarget {
                            alert: alert_from(r, 0)?,
                            state,
                            by: r.get(n + 1),
                            note: match (state, outcome.is_empty(), note.is_empty()) {
                                (AlertState::Resolved, false, false) => format!("{outcome} — {note}"),
                                (AlertState::Resolved, false, true) => outcome,
                                _ => note,
                            },
                            seq: r.get::<_, i64>(n + 4).max(0) as u64,
                            responders: r.get::<_, &str>(n + 5).lines().map(str::to_owned).collect(),
                            reminder_seq: r.get::<_, i64>(n + 6).max(0) as u64,
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    /// Notices owed to senders and not yet confirmed, newest first, at most
    /// [`MAX_PENDING_NOTICES`] (see [`crate::store::Response::pending_notices`]).
    ///
    /// # Errors
    /// If the query fails.
    pub async fn pending_notices(&self) -> Result<Vec<(AlertId, String, ResponderNotice)>, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                let rows = c.query(PENDING_NOTICES, &[&(MAX_PENDING_NOTICES as i64)]).await.map_err(pg_error)?;
                rows.iter()
                    .map(|r| {
                        let alert_id = parse_id(r.get(0))?;
                        Ok((
                            alert_id,
                            r.get(1),
                            ResponderNotice {
                                alert_id,
                                event: notice_event(r.get(2)),
                                responder: r.get(3),
                                note: r.get(4),
                                at: (r.get::<_, i64>(5).max(0) / 1000) as u64,
                            },
                        ))
                    })
                    .collect()
            })
        })
        .await
    }

    /// The sender's agent confirmed a notice: it is not sent again. Returns whether it was
    /// pending (a repeated receipt, here or at another collector, changes nothing).
    ///
    /// # Errors
    /// If the transaction fails.
    pub async fn confirm_notice(
        &self,
        alert_id: AlertId,
        event_kind: NoticeEvent,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (confirmed, effects) = self
            .run(move |c| {
                Box::pin(async move {
                    let tx = c.transaction().await.map_err(pg_error)?;
                    let id = alert_id.to_string();
                    let n = tx
                        .execute(
                            "UPDATE sender_notices SET confirmed_at_ms = $3
                             WHERE alert_id = $1 AND event = $2 AND confirmed_at_ms IS NULL",
                            &[&id, &notice_name(event_kind), &now_ms],
                        )
                        .await
                        .map_err(pg_error)?;
                    let mut effects = Effects::default();
                    if n > 0 {
                        event(&tx, &id, now_ms, "notice_seen", "sender", Via::Sender, notice_name(event_kind)).await?;
                        effects.changed = true;
                    }
                    effects.notify(&tx).await?;
                    tx.commit().await.map_err(pg_error)?;
                    Ok((n > 0, effects))
                })
            })
            .await?;
        self.wake(&effects);
        Ok(confirmed)
    }

    /// Append an event to the alert's timeline; nothing for an unknown alert. (No `NOTIFY`, as
    /// on SQLite: `popup_shown` from every desktop would wake every console for nothing.)
    ///
    /// # Errors
    /// If the statement fails.
    pub async fn record_event(
        &self,
        alert_id: AlertId,
        kind: &str,
        who: &str,
        via: Via,
        note: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (kind, who, note) = (kind.to_owned(), clean_note(who), clean_note(note));
        self.run(move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO alert_events (alert_id, at_ms, kind, who, via, note)
                     SELECT alert_id, $2, $3, $4, $5, $6 FROM alerts WHERE alert_id = $1",
                    &[&alert_id.to_string(), &now_ms, &text(&kind), &text(&who), &via.name(), &text(&note)],
                )
                .await
                .map_err(pg_error)?;
                Ok(())
            })
        })
        .await
    }

    /// An alert, its state and its timeline (oldest event first).
    ///
    /// # Errors
    /// If the query fails.
    pub async fn timeline(
        &self,
        alert_id: AlertId,
    ) -> Result<Option<(AlertRecord, AlertState, Vec<Event>)>, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                let id = alert_id.to_string();
                let Some(row) = c
                    .query_opt(
                        &format!(
                            "SELECT {ALERT_COLUMNS}, r.state FROM alerts a
                             LEFT JOIN responses r ON r.alert_id = a.alert_id WHERE a.alert_id = $1"
                        ),
                        &[&id],
                    )
                    .await
                    .map_err(pg_error)?
                else {
                    return Ok(None);
                };
                let alert = alert_from(&row, 0)?;
                let state = match row.get::<_, Option<&str>>(ALERT_COLUMN_COUNT) {
                    Some(s) => AlertState::from_name(s),
                    None if alert.cancellation.is_some() => AlertState::Cancelled,
                    None => AlertState::Notified,
                };
                let events = c
                    .query(
                        "SELECT at_ms, kind, who, via, note FROM alert_events WHERE alert_id = $1 ORDER BY id",
                        &[&id],
                    )
                    .await
                    .map_err(pg_error)?
                    .iter()
                    .map(|r| Event {
                        at_ms: r.get(0),
                        kind: r.get(1),
                        who: r.get(2),
                        via: Via::from_name(r.get(3)),
                        note: r.get(4),
                    })
                    .collect();
                Ok(Some((alert, state, events)))
            })
        })
        .await
    }

    /// Acknowledge through a link, once across every collector: in one transaction, under a
    /// lock on the link's nonce (an advisory lock: the same link opened on two collectors at
    /// once waits for the first), refuse a link whose nonce was used, else acknowledge
    /// ([`PgStore::acknowledge`], via `channel_link`) and, if that changed the alert, record
    /// the nonce. Rows of links expired for a day are deleted on the way. `now_ms` is the wall
    /// clock, `jobs_at_ms` the outbox clock.
    ///
    /// # Errors
    /// If the transaction fails; then nothing changed.
    pub async fn acknowledge_by_link(
        &self,
        link: &LinkAck,
        now_ms: i64,
        jobs_at_ms: i64,
    ) -> Result<LinkUse, StoreError> {
        let link = link.clone();
        let (used, effects) = self
            .run(move |c| {
                Box::pin(async move {
                    let tx = c.transaction().await.map_err(pg_error)?;
                    tx.execute("SELECT pg_advisory_xact_lock(1, hashtext($1))", &[&text(&link.nonce)])
                        .await
                        .map_err(pg_error)?;
                    tx.execute(
                        "DELETE FROM ack_links_used WHERE nonce IN (
                             SELECT nonce FROM ack_links_used WHERE expires_at_ms < $1 FOR UPDATE SKIP LOCKED)",
                        &[&(now_ms - 86_400_000)],
                    )
                    .await
                    .map_err(pg_error)?;
                    let used = tx
                        .query_opt(
                            "SELECT by_responder, used_at_ms FROM ack_links_used WHERE nonce = $1",
                            &[&text(&link.nonce)],
                        )
                        .await
                        .map_err(pg_error)?;
                    if let Some(r) = used {
                        // Nothing changed: the transaction is rolled back (as on SQLite).
                        return Ok((LinkUse::Used { by: r.get(0), at_ms: r.get(1) }, Effects::default()));
                    }
                    let mut effects = Effects::default();
                    let t = acknowledge_in(
                        &tx,
                        link.alert,
                        &link.responder,
                        Via::ChannelLink,
                        &link.note,
                        now_ms,
                        jobs_at_ms,
                        &mut effects,
                    )
                    .await?;
                    if !matches!(t, Transition::New { .. }) {
                        return Ok((LinkUse::Ack(t), Effects::default()));
                    }
                    tx.execute(
                        "INSERT INTO ack_links_used (nonce, alert_id, channel, by_responder, used_at_ms, expires_at_ms)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        &[
                            &text(&link.nonce),
                            &link.alert.to_string(),
                            &text(&link.channel),
                            &text(&link.responder),
                            &now_ms,
                            &link.expires_at_ms,
                        ],
                    )
                    .await
                    .map_err(pg_error)?;
                    effects.notify(&tx).await?;
                    tx.commit().await.map_err(pg_error)?;
                    Ok((LinkUse::Ack(t), effects))
                })
            })
            .await?;
        self.wake(&effects);
        Ok(used)
    }

    /// Who used the acknowledge link whose nonce is `nonce`, and when (ms); `None` if unused.
    ///
    /// # Errors
    /// If the query fails.
    pub async fn link_used(&self, nonce: &str) -> Result<Option<(String, i64)>, StoreError> {
        let nonce = nonce.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                let r = c
                    .query_opt("SELECT by_responder, used_at_ms FROM ack_links_used WHERE nonce = $1", &[&text(&nonce)])
                    .await
                    .map_err(pg_error)?;
                Ok(r.map(|r| (r.get(0), r.get(1))))
            })
        })
        .await
    }

    /// Every outbox job of an alert, oldest first, labelled as SQLite's `Db::deliveries` does
    /// (`slack (cancel)`, `email (tier 2)`, `slack (reminder, round 2)`).
    ///
    /// # Errors
    /// If the query fails.
    pub async fn deliveries(&self, alert_id: AlertId) -> Result<Vec<Delivery>, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        &format!("SELECT {DELIVERY_COLUMNS} FROM outbox WHERE alert_id = $1 ORDER BY id"),
                        &[&alert_id.to_string()],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(rows.iter().map(delivery_from).collect())
            })
        })
        .await
    }
}

async fn next_escalation(c: &tokio_postgres::Client) -> Result<Option<i64>, StoreError> {
    Ok(c.query_one("SELECT MIN(due_at_ms) FROM escalations", &[]).await.map_err(pg_error)?.get(0))
}

#[cfg(all(test, unix))]
mod tests {
    //! The SQLite responder loop's tests (`sqlite/response.rs`, `console.rs`' links) against a
    //! real cluster, then what only several collectors have: two `PgStore`s racing.

    use super::*;
    use crate::store::postgres::cluster::Cluster;
    use crate::store::response::{PlannedResponder, TierPlan};
    use crate::store::tests::alert;
    use crate::store::{outbox_clock_ms, AlertUpdate, Cancelled, JobOutcome, Stored};

    fn responder(name: &str, agent: &str) -> PlannedResponder {
        PlannedResponder {
            phone: None,
            name: name.into(),
            chat: Some(format!("<@{name}>")),
            email: Some(format!("{}@example.com", name.to_lowercase())),
            agents: vec![agent.into()],
        }
    }

    /// Tier 1: Sam and Slack, 60 s; tier 2: Kim and email.
    fn plan() -> ResponsePlan {
        let t1 = TierPlan { channels: vec!["slack"], responders: vec![responder("Sam", "sam-desk")], wait_ms: 60_000 };
        let t2 = TierPlan { channels: vec!["email"], responders: vec![responder("Kim", "kim-desk")], wait_ms: 60_000 };
        ResponsePlan { emergency: vec![t1, t2], drill: vec![], offline_after_ms: 150_000 }
    }

    async fn open(cluster: &Cluster, plan: ResponsePlan) -> PgStore {
        PgStore::open_configured(&cluster.url(), &["log", "slack", "email"], plan).await.unwrap()
    }

    /// Run `sql` (statements) on `store`'s connection.
    async fn exec(store: &PgStore, sql: &str) -> Result<(), StoreError> {
        let sql = sql.to_owned();
        store.run(move |c| Box::pin(async move { c.batch_execute(&sql).await.map_err(pg_error) })).await
    }

    async fn count(store: &PgStore, sql: &str) -> i64 {
        let sql = sql.to_owned();
        store.run(move |c| Box::pin(async move { Ok(c.query_one(&sql, &[]).await.unwrap().get(0)) })).await.unwrap()
    }

    async fn jobs(store: &PgStore) -> Vec<(String, String, i64, String)> {
        store
            .run(|c| {
                Box::pin(async move {
                    let rows = c.query("SELECT channel, kind, tier, state FROM outbox ORDER BY id", &[]).await.unwrap();
                    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
                })
            })
            .await
            .unwrap()
    }

    fn j(ch: &str, kind: &str, tier: i64, state: &str) -> (String, String, i64, String) {
        (ch.into(), kind.into(), tier, state.into())
    }

    /// Claim `channel`'s due jobs now, at most 10.
    async fn claim(store: &PgStore, channel: &'static str) -> crate::store::Claim {
        store.claim(channel, outbox_clock_ms() + 1, 10).await.unwrap()
    }

    async fn deliver(store: &PgStore, claim: &crate::store::Claim, at: usize) {
        let refused = store.finish(claim.lease, vec![(claim.jobs[at].id, JobOutcome::Delivered)], 1).await.unwrap();
        assert!(refused.is_empty());
    }

    const ID: u128 = 1;

    /// The push reads the newest pending notices on every change, on the one connection every
    /// SOS also needs: the read must walk the index, never sort every pending notice.
    #[tokio::test]
    async fn pending_notices_walk_an_index_and_never_sort() {
        let Some(cluster) = Cluster::start() else { return };
        let store = open(&cluster, plan()).await;
        let plan: Vec<String> = store
            .run(|c| {
                Box::pin(async move {
                    // Even a small table must be read through the index when it can give the order.
                    c.batch_execute("SET enable_seqscan = off; SET enable_sort = off").await.map_err(pg_error)?;
                    let sql = format!("EXPLAIN {}", PENDING_NOTICES.replace("$1", "1000"));
                    let rows = c.query(&sql, &[]).await.map_err(pg_error)?;
                    c.batch_execute("RESET enable_seqscan; RESET enable_sort").await.map_err(pg_error)?;
                    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
                })
            })
            .await
            .unwrap();
        assert!(plan.iter().any(|l| l.contains("sender_notices_pending")), "{plan:?}");
        assert!(!plan.iter().any(|l| l.contains("Sort")), "{plan:?}");
    }

    /// The popup read, after every change of an alert on the connection every SOS also needs,
    /// reads the partial indexes of what it returns, never the history; and it returns what a
    /// read of every alert would, with ties at the limit and every mix of states.
    #[tokio::test]
    async fn the_popup_read_walks_its_indexes_and_returns_what_a_read_of_everything_would() {
        let Some(cluster) = Cluster::start() else { return };
        let store = open(&cluster, plan()).await;
        // 2,500 alerts over 400 receipt times (ties), four in ten open, changed up to two hours
        // after they came.
        exec(
            &store,
            "INSERT INTO alerts (alert_id, received_at_ms, triggered_at, test, \"user\", host, ip, location, message,
                                 agent, source, key_id)
                 SELECT lpad(to_hex(i), 32, '0'), 1000000 + (i * 7919 % 400) * 1000, 1, false, 'u', 'h', 'ip', '', '',
                        '', 's', '00' FROM generate_series(1, 2500) i;
             INSERT INTO responses (alert_id, state, changed_at_ms, received_at_ms)
                 SELECT lpad(to_hex(i), 32, '0'),
                        (ARRAY['received', 'notified', 'acknowledged', 'cancelled', 'resolved', 'checked',
                               'resolved', 'checked', 'resolved', 'checked'])[1 + (i * 31337 % 10)],
                        1000000 + (i * 7919 % 400) * 1000 + (i::bigint * 104729 % 7200000),
                        1000000 + (i * 7919 % 400) * 1000
                 FROM generate_series(1, 2500) i;
             ANALYZE responses; ANALYZE alerts;",
        )
        .await
        .unwrap();
        let plan: Vec<String> = store
            .run(|c| {
                Box::pin(async move {
                    c.batch_execute("SET enable_seqscan = off").await.map_err(pg_error)?;
                    let sql = format!("EXPLAIN {POPUP_TARGETS_IDS}").replace("$1", "0").replace("$2::bigint", "500");
                    let rows = c.query(&sql, &[]).await.map_err(pg_error)?;
                    c.batch_execute("RESET enable_seqscan").await.map_err(pg_error)?;
                    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
                })
            })
            .await
            .unwrap();
        assert!(plan.iter().any(|l| l.contains("responses_open")), "{plan:#?}");
        assert!(plan.iter().any(|l| l.contains("responses_closed")), "{plan:#?}");
        assert!(!plan.iter().any(|l| l.contains("Seq Scan")), "{plan:#?}");
        for now_ms in
            [0, 1_000_000 + POPUP_RECENT_MS, 1_200_000 + POPUP_RECENT_MS, 1_400_000 + 2 * POPUP_RECENT_MS, i64::MAX / 2]
        {
            let got: Vec<String> =
                store.popup_targets(now_ms).await.unwrap().iter().map(|t| t.alert.alert_id.to_string()).collect();
            let want: Vec<String> = store
                .run(move |c| {
                    Box::pin(async move {
                        let rows = c
                            .query(
                                "SELECT a.alert_id FROM responses r JOIN alerts a ON a.alert_id = r.alert_id
                                 WHERE r.state IN ('received', 'notified', 'acknowledged', 'cancelled')
                                    OR r.changed_at_ms >= $1
                                 ORDER BY a.received_at_ms DESC, a.alert_id LIMIT $2",
                                &[&(now_ms - POPUP_RECENT_MS), &(MAX_POPUP_TARGETS as i64)],
                            )
                            .await
                            .map_err(pg_error)?;
                        Ok(rows.iter().map(|r| r.get(0)).collect())
                    })
                })
                .await
                .unwrap();
            assert_eq!(want.len(), MAX_POPUP_TARGETS, "now {now_ms}");
            assert_eq!(got, want, "now {now_ms}");
        }
        // A collector of the release before, still running on the migrated schema, names no
        // time in its insert: the row gets its alert's.
        exec(
            &store,
            "INSERT INTO alerts (alert_id, received_at_ms, triggered_at, test, \"user\", host, ip, location, message,
                                 agent, source, key_id)
                 VALUES ('ffffffffffffffffffffffffffffffff', 9000000, 1, false, 'u', 'h', 'ip', '', '', '', 's', '00');
             INSERT INTO responses (alert_id, state, changed_at_ms)
                 VALUES ('ffffffffffffffffffffffffffffffff', 'notified', 9000001);",
        )
        .await
        .unwrap();
        let time =
            count(&store, "SELECT received_at_ms FROM responses WHERE alert_id = 'ffffffffffffffffffffffffffffffff'");
        assert_eq!(time.await, 9_000_000, "the alert's time, not 0");
        let newest = store.popup_targets(i64::MAX / 2).await.unwrap();
        assert_eq!(newest[0].alert.alert_id.to_string(), "ffffffffffffffffffffffffffffffff");
    }

    /// The whole popup read, as the collector runs it, on a long history with a thousand alerts
    /// closed within the hour: the join reads the 500 it returns, never every alert (joined
    /// before the cut, the planner scanned all 350,300 of them: 43 ms on the connection every
    /// SOS also needs; helper-46).
    #[tokio::test]
    async fn the_whole_popup_read_never_scans_the_alerts() {
        let Some(cluster) = Cluster::start() else { return };
        let store = open(&cluster, plan()).await;
        // On a connection of its own: the store's answers within 5 s, and this takes longer.
        let (client, connection) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(
            "INSERT INTO alerts (alert_id, received_at_ms, triggered_at, test, \"user\", host, ip, location, message,
                                 agent, source, key_id)
                 SELECT lpad(to_hex(i), 32, '0'), 1700000000000 + i * 1000, 1, false, 'u', 'h', 'ip', '', '', '', 's',
                        '00' FROM generate_series(1, 350300) i;
             INSERT INTO responses (alert_id, state, changed_at_ms, received_at_ms)
                 SELECT lpad(to_hex(i), 32, '0'), CASE WHEN i > 350000 THEN 'notified' ELSE 'resolved' END,
                        1700000000000 + i * 1000 + 60000, 1700000000000 + i * 1000 FROM generate_series(1, 350300) i;
             ANALYZE responses; ANALYZE alerts;",
            )
            .await
            .unwrap();
        // The last 1,000 closed alerts changed within the hour.
        let now_ms: i64 = 1_700_000_000_000 + 350_000 * 1000 + 60_000 - 1_000 * 1000 + 1 + POPUP_RECENT_MS;
        let plan: Vec<String> = store
            .run(move |c| {
                Box::pin(async move {
                    let sql = format!("EXPLAIN {}", popup_targets_sql());
                    let rows = c
                        .query(&sql, &[&(now_ms - POPUP_RECENT_MS), &(MAX_POPUP_TARGETS as i64)])
                        .await
                        .map_err(pg_error)?;
                    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
                })
            })
            .await
            .unwrap();
        assert!(!plan.iter().any(|l| l.contains("Seq Scan")), "{plan:#?}");
        let popups = store.popup_targets(now_ms).await.unwrap();
        assert_eq!(popups.len(), MAX_POPUP_TARGETS);
        assert_eq!(popups[0].alert.alert_id, AlertId::from_u128(350_300));
    }

    #[tokio::test]
    async fn a_silent_tier_escalates_at_its_deadline_and_reminds_the_earlier_one() {
        let Some(cluster) = Cluster::start() else { return };
        let store = open(&cluster, plan()).await;
        let before = outbox_clock_ms();
        assert_eq!(store.insert(alert(ID)).await.unwrap(), Stored::New);
        let after = outbox_clock_ms();
        assert_eq!(jobs(&store).await, vec![j("slack", "alert", 1, "pending")]);
        let due = claim(&store, "slack").await;
        assert_eq!(due.jobs[0].alert.audience.mentions, ["<@Sam>"]);
        assert_eq!(due.jobs[0].alert.update, None);
        deliver(&store, &due, 0).await;
        let deadline = store.next_escalation().await.unwrap().unwrap();
        assert!((before + 60_000..=after + 60_000).contains(&deadline), "{deadline} on this collector's clock");
        // Sam is offline and Slack reaches people: no unanswered notice.
        assert!(store.pending_notices().await.unwrap().is_empty());

        let (fired, _) = store.escalate_due(&plan(), 60_000, deadline - 1, 100).await.unwrap();
        assert!(fired.is_empty(), "not before its deadline");
        let (fired, next) = store.escalate_due(&plan(), 61_000, deadline, 100).await.unwrap();
        assert_eq!(fired, vec![(AlertId::from_u128(ID), 2, false)]);
        assert_eq!(next, Some(deadline + 60_000), "after the last tier, its wait paces reminders of every tier");
        assert_eq!(
            jobs(&store).await,
            vec![
                j("slack", "alert", 1, "delivered"),
                j("slack", "reminder", 2, "pending"),
                j("email", "alert", 2, "pending")
            ]
        );
        let email = store.claim("email", deadline, 10).await.unwrap();
        assert_eq!(email.jobs[0].alert.audience.emails, ["kim@example.com"]);
        assert_eq!(email.jobs[0].alert.audience.tier, 2);
        let reminder = store.claim("slack", deadline, 10).await.unwrap();
        assert_eq!(reminder.jobs.len(), 1);
        assert_eq!(reminder.jobs[0].alert.update, Some(AlertUpdate::Reminder { after_secs: 60 }));
        assert_eq!(reminder.jobs[0].alert.audience.mentions, ["<@Sam>"], "tier 1's responders are reminded");
        let t = &store.popup_targets(61_000).await.unwrap()[0];
        assert_eq!(
            (t.state, t.reminder_seq, t.responders.clone()),
            (AlertState::Notified, 1, vec!["Sam".into(), "Kim".into()])
        );
        let labels: Vec<_> =
            store.deliveries(AlertId::from_u128(ID)).await.unwrap().into_iter().map(|d| d.channel).collect();
        assert_eq!(labels, ["slack", "slack (reminder, round 2)", "email (tier 2)"]);
    }

    #[tokio::test]
    async fn news_waits_behind_the_alert_pending_on_its_channel() {
        let Some(cluster) = Cluster::start() else { return };
        let mut p = plan();
        p.emergency[0].wait_ms = 0;
        let store = open(&cluster, p.clone()).await;
        store.insert(alert(ID)).await.unwrap();
        store.escalate_due(&p, 61_000, outbox_clock_ms(), 100).await.unwrap();
        // Slack's alert is pending: its reminder is held back, and does not make Slack due.
        let first = claim(&store, "slack").await;
        assert_eq!(first.jobs.len(), 1);
        assert_eq!(first.jobs[0].alert.update, None);
        assert!(claim(&store, "slack").await.jobs.is_empty(), "leased, and the reminder held behind it");
        deliver(&store, &first, 0).await;
        let reminder = claim(&store, "slack").await;
        assert!(matches!(reminder.jobs[0].alert.update, Some(AlertUpdate::Reminder { .. })));
    }

    #[tokio::test]
    async fn an_acknowledgement_stops_every_page_and_deadline_in_one_transaction() {
        let Some(cluster) = Cluster::start() else { return };
        let store = open(&cluster, plan()).await;
        store.insert(alert(ID)).await.unwrap();
        let id = AlertId::from_u128(ID);
        let changes = store.changes();
        let changed = changes.notified();
        let r = store.acknowledge(id, "Sam", Via::CommandLine, "on my way\n", 20_000, outbox_clock_ms()).await.unwrap();
        assert_eq!(r, Transition::New { at_ms: 20_000 });
        tokio::time::timeout(std::time::Duration::from_secs(30), changed).await.expect("a change announced");
        assert_eq!(store.next_escalation().await.unwrap(), None, "no deadline left");
        assert_eq!(
            jobs(&store).await,
            vec![j("slack", "alert", 1, "stopped"), j("slack", "acknowledged", 1, "pending")]
        );
        let ack = claim(&store, "slack").await;
        assert_eq!(ack.jobs.len(), 1);
        assert_eq!(
            ack.jobs[0].alert.update,
            Some(AlertUpdate::Acknowledged { by: "Sam".into(), note: "on my way".into() })
        );
        // The deadline is gone: nothing escalates, ever.
        assert!(store.escalate_due(&plan(), 1_000_000, i64::MAX / 2, 100).await.unwrap().0.is_empty());
        assert_eq!(count(&store, "SELECT count(*) FROM outbox WHERE channel = 'email'").await, 0);
        assert_eq!(
            store.acknowledge(id, "Kim", Via::Popup, "", 21_000, 21_000).await.unwrap(),
            Transition::Already { by: "Sam".into() }
        );
        let notices = store.pending_notices().await.unwrap();
        assert_eq!(notices.len(), 1);
        assert_eq!((notices[0].1.as_str(), notices[0].2.responder.as_str()), ("00", "Sam"));
        assert_eq!(notices[0].2.event, NoticeEvent::Acknowledged);
        assert!(store.confirm_notice(id, NoticeEvent::Acknowledged, 22_000).await.unwrap());
        assert!(!store.confirm_notice(id, NoticeEvent::Acknowledged, 22_001).await.unwrap(), "a repeated receipt");
        assert!(store.pending_notices().await.unwrap().is_empty());
        let unknown = store.acknowledge(AlertId::from_u128(9), "Sam", Via::Popup, "", 0, 0).await.unwrap();
        assert_eq!(unknown, Transition::Unknown);

        let r = store.resolve(id, "Sam", Via::CommandLine, "false alarm", "", 30_000, outbox_clock_ms()).await.unwrap();
        assert_eq!(r, Transition::New { at_ms: 30_000 });
        let (_, state, events) = store.timeline(id).await.unwrap().unwrap();
        assert_eq!(state, AlertState::Resolved);
        let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["received", "notified", "acknowledged", "notice_seen", "resolved"]);
        assert_eq!(
            (events[2].who.as_str(), events[2].via, events[2].note.as_str()),
            ("Sam", Via::CommandLine, "on my way")
        );
        let t = &store.popup_targets(30_000).await.unwrap()[0];
        assert_eq!((t.state, t.by.as_str(), t.note.as_str()), (AlertState::Resolved, "Sam", "false alarm"));
        store.record_event(id, "popup_shown", "kim-desk", Via::Popup, "", 31_000).await.unwrap();
        store.record_event(AlertId::from_u128(9), "popup_shown", "kim-desk", Via::Popup, "", 31_000).await.unwrap();
        let (_, _, events) = store.timeline(id).await.unwrap().unwrap();
        assert_eq!(events.last().map(|e| (e.kind.as_str(), e.via)), Some(("popup_shown", Via::Popup)));
        assert!(store.timeline(AlertId::from_u128(9)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_responders_emailed_by_a_tier_are_told_what_happens_next() {
        let Some(cluster) = Cluster::start() else { return };
        let mut p = plan();
        p.emergency[0].wait_ms = 0;
        let store = open(&cluster, p.clone()).await;
        store.insert(alert(ID)).await.unwrap();
        store.insert(alert(2)).await.unwrap();
        store.escalate_due(&p, 10_000, outbox_clock_ms(), 100).await.unwrap();
        let recipients = |kind: &'static str, id: u128| {
            let store = store.clone();
            async move {
                store
                    .run(move |c| {
                        Box::pin(async move {
                            Ok(c.query_one(
                                "SELECT recipients FROM outbox WHERE channel = 'email' AND kind = $1 AND alert_id = $2",
                                &[&kind, &AlertId::from_u128(id).to_string()],
                            )
                            .await
                            .unwrap()
                            .get::<_, String>(0))
                        })
                    })
                    .await
                    .unwrap()
            }
        };
        assert_eq!(recipients("alert", ID).await, "kim@example.com");
        let id = AlertId::from_u128(ID);
        store.acknowledge(id, "Kim", Via::Popup, "", 20_000, 20_000).await.unwrap();
        assert_eq!(recipients("acknowledged", ID).await, "kim@example.com");
        store.resolve(id, "Kim", Via::Popup, "handled", "", 30_000, 30_000).await.unwrap();
        assert_eq!(recipients("resolved", ID).await, "kim@example.com");
        let c = store.cancel(AlertId::from_u128(2), "pressed by accident".into(), "00".into(), 40_000).await;
        assert_eq!(c.unwrap(), Cancelled::New);
        assert_eq!(recipients("cancel", 2).await, "kim@example.com");
    }

    #[tokio::test]
    async fn nobody_reachable_tells_the_sender_and_fires_every_tier_at_once() {
        let Some(cluster) = Cluster::start() else { return };
        let mut p = plan();
        p.emergency[0].channels.clear();
        let store = open(&cluster, p.clone()).await;
        store.insert(alert(ID)).await.unwrap();
        assert_eq!(jobs(&store).await, vec![j("email", "alert", 2, "pending")]);
        // Every tier fired: what is left is the reminder round.
        assert_eq!(count(&store, "SELECT count(*) FROM escalations WHERE next_tier = 2").await, 1);
        let n = store.pending_notices().await.unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].2.event, NoticeEvent::Unanswered);

        // Sam's desk online but not a responder desktop: nobody is reached.
        exec(
            &store,
            "INSERT INTO enrolled (agent_id, name, host, enrolled_at_ms, key, last_seen_ms)
             VALUES ('a1', 'sam-desk', 'desk', 0, 'k', 900)",
        )
        .await
        .unwrap();
        store.insert(alert(2)).await.unwrap();
        assert_eq!(store.pending_notices().await.unwrap().len(), 2);

        // With Sam's responder desktop online, tier 1 reaches him: no notice, a deadline.
        exec(&store, "UPDATE enrolled SET responder_seen_ms = 900").await.unwrap();
        let before = outbox_clock_ms();
        store.insert(alert(3)).await.unwrap();
        assert_eq!(store.pending_notices().await.unwrap().len(), 2);
        let tier2 =
            format!("SELECT count(*) FROM escalations WHERE next_tier = 1 AND due_at_ms >= {}", before + 60_000);
        assert_eq!(count(&store, &tier2).await, 1);
    }

    #[tokio::test]
    async fn a_cancellation_mid_escalation_stops_it_and_stays_open_until_checked() {
        let Some(cluster) = Cluster::start() else { return };
        let store = open(&cluster, plan()).await;
        store.insert(alert(ID)).await.unwrap();
        let id = AlertId::from_u128(ID);
        assert_eq!(store.cancel(id, "oops".into(), "00".into(), 20_000).await.unwrap(), Cancelled::New);
        assert_eq!(store.next_escalation().await.unwrap(), None);
        assert_eq!(
            jobs(&store).await,
            vec![j("slack", "alert", 1, "pending"), j("slack", "cancel", 1, "pending")],
            "only Slack was told"
        );
        let t = &store.popup_targets(20_000).await.unwrap()[0];
        assert_eq!(t.state, AlertState::Cancelled);
        assert_eq!(
            store.acknowledge(id, "Sam", Via::Popup, "", 21_000, 21_000).await.unwrap(),
            Transition::Closed(AlertState::Cancelled)
        );
        assert_eq!(
            store.mark_checked(id, "Sam", Via::CommandLine, "she is fine", 22_000).await.unwrap(),
            Transition::New { at_ms: 22_000 }
        );
        assert_eq!(
            store.mark_checked(id, "Kim", Via::CommandLine, "", 23_000).await.unwrap(),
            Transition::Already { by: "Sam".into() }
        );
        assert!(store.popup_targets(22_000 + POPUP_RECENT_MS + 1).await.unwrap().is_empty(), "closed and old");
        assert_eq!(store.popup_targets(22_000).await.unwrap().len(), 1, "closed but recent: popups get replaced");
        // The cancellation goes out after the alert, and says it is one.
        let first = claim(&store, "slack").await;
        assert_eq!((first.jobs.len(), first.jobs[0].alert.cancellation.is_none()), (1, true));
        deliver(&store, &first, 0).await;
        let cancel = claim(&store, "slack").await;
        assert_eq!(cancel.jobs[0].alert.cancellation.as_ref().map(|c| c.reason.as_str()), Some("oops"));
    }

    #[tokio::test]
    async fn a_store_failing_mid_acknowledgement_changes_nothing() {
        let Some(cluster) = Cluster::start() else { return };
        let store = open(&cluster, plan()).await;
        store.insert(alert(ID)).await.unwrap();
        let deadline = store.next_escalation().await.unwrap();
        // The last write of the transaction fails.
        exec(
            &store,
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;
             CREATE TRIGGER disk_full BEFORE INSERT ON sender_notices FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .unwrap();
        let id = AlertId::from_u128(ID);
        assert!(store.acknowledge(id, "Sam", Via::Popup, "", 20_000, 20_000).await.is_err());
        assert!(!store.is_failing(), "a refused statement is not an outage");
        assert_eq!(store.next_escalation().await.unwrap(), deadline, "the deadline stays");
        assert_eq!(jobs(&store).await, vec![j("slack", "alert", 1, "pending")]);
        assert_eq!(store.timeline(id).await.unwrap().unwrap().1, AlertState::Notified);
        exec(&store, "DROP TRIGGER disk_full ON sender_notices").await.unwrap();
        let t = store.acknowledge(id, "Sam", Via::Popup, "", 20_000, 20_000).await.unwrap();
        assert!(matches!(t, Transition::New { .. }));
    }

    #[tokio::test]
    async fn shared_deadlines_and_jobs_are_never_rebased_by_one_collector() {
        let Some(cluster) = Cluster::start() else { return };
        let store = open(&cluster, plan()).await;
        store.insert(alert(ID)).await.unwrap();
        let deadline = store.next_escalation().await.unwrap();
        assert_eq!(store.rebase_escalations(1000).await.unwrap(), 0);
        assert_eq!(store.rebase_outbox("slack", 1000, 60_000).await.unwrap(), 0);
        assert_eq!(store.rebase_foreign_jobs(1000).await.unwrap(), 0);
        assert_eq!(store.next_escalation().await.unwrap(), deadline);
        assert_eq!(store.data_version().await.unwrap(), store.data_version().await.unwrap());
    }

    #[tokio::test]
    async fn a_thousand_alerts_escalate_in_bounded_batches() {
        let Some(cluster) = Cluster::start() else { return };
        let mut p = plan();
        p.emergency[0].wait_ms = 0;
        let store = open(&cluster, p.clone()).await;
        for id in 1..=300 {
            store.insert(alert(id)).await.unwrap();
        }
        let mut rounds = 0;
        loop {
            let (fired, _) = store.escalate_due(&p, 60_000, outbox_clock_ms(), 50).await.unwrap();
            assert!(fired.len() <= 50);
            if fired.is_empty() {
                break;
            }
            rounds += 1;
        }
        assert_eq!(rounds, 6);
        assert_eq!(count(&store, "SELECT count(*) FROM outbox WHERE channel = 'email'").await, 300);
        // Each now waits for its reminder round, one wait after its last tier.
        assert_eq!(count(&store, "SELECT count(*) FROM escalations WHERE next_tier = 2").await, 300);
    }

    fn link(nonce: &str) -> LinkAck {
        LinkAck {
            nonce: nonce.repeat(16),
            alert: AlertId::from_u128(1),
            channel: "slack".into(),
            expires_at_ms: 10_000_000,
            responder: "via slack link".into(),
            note: String::new(),
        }
    }

    #[tokio::test]
    async fn a_link_acknowledges_once_in_the_same_transaction() {
        let Some(cluster) = Cluster::start() else { return };
        let store = open(&cluster, ResponsePlan::channels_only(&["log", "slack"])).await;
        store.insert(alert(1)).await.unwrap();
        let first = store.acknowledge_by_link(&link("aa"), 5_000, 5_000).await.unwrap();
        assert_eq!(first, LinkUse::Ack(Transition::New { at_ms: 5_000 }));
        assert_eq!(store.link_used(&"aa".repeat(16)).await.unwrap(), Some(("via slack link".into(), 5_000)));
        assert_eq!(store.link_used(&"bb".repeat(16)).await.unwrap(), None);
        assert_eq!(
            store.acknowledge_by_link(&link("aa"), 6_000, 6_000).await.unwrap(),
            LinkUse::Used { by: "via slack link".into(), at_ms: 5_000 }
        );
        // Another link to the same alert: nothing changes, and it is not spent.
        let other = store.acknowledge_by_link(&link("bb"), 7_000, 7_000).await.unwrap();
        assert_eq!(other, LinkUse::Ack(Transition::Already { by: "via slack link".into() }));
        assert_eq!(count(&store, "SELECT COUNT(*) FROM ack_links_used").await, 1);
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM alert_events WHERE kind = 'acknowledged' AND via = 'channel_link'")
                .await,
            1
        );
        // An unknown alert records nothing.
        let mut unknown = link("cc");
        unknown.alert = AlertId::from_u128(2);
        assert_eq!(store.acknowledge_by_link(&unknown, 8_000, 8_000).await.unwrap(), LinkUse::Ack(Transition::Unknown));
        assert_eq!(count(&store, "SELECT COUNT(*) FROM ack_links_used").await, 1);
        // Used links are forgotten a day after they expired.
        store.insert(alert(3)).await.unwrap();
        let mut later = link("dd");
        later.alert = AlertId::from_u128(3);
        later.expires_at_ms = 200_000_000;
        let r = store.acknowledge_by_link(&later, 10_000_000 + 86_400_001, 0).await.unwrap();
        assert_eq!(r, LinkUse::Ack(Transition::New { at_ms: 10_000_000 + 86_400_001 }));
        assert_eq!(count(&store, "SELECT COUNT(*) FROM ack_links_used").await, 1, "the expired link's row is gone");
    }

    #[tokio::test]
    async fn a_collector_silent_in_a_transaction_holds_the_others_up_for_seconds_only() {
        let Some(cluster) = Cluster::start() else { return };
        let store = open(&cluster, plan()).await;
        store.insert(alert(ID)).await.unwrap();
        // Another collector took the alert's response lock, then went silent (cut off) with
        // its transaction open; its session has the settings every PgStore session has.
        let (silent, connection) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        silent
            .batch_execute(&format!(
                "SET idle_in_transaction_session_timeout = {}; BEGIN;
                 SELECT 1 FROM responses WHERE alert_id = '{}' FOR UPDATE",
                super::super::IDLE_IN_TRANSACTION.as_millis(),
                AlertId::from_u128(ID)
            ))
            .await
            .unwrap();
        let id = AlertId::from_u128(ID);
        let waited = std::time::Instant::now();
        let refused = store.acknowledge(id, "Sam", Via::Popup, "", 20_000, outbox_clock_ms()).await;
        assert!(matches!(refused, Err(StoreError::Postgres(_))), "{refused:?}");
        assert!(waited.elapsed() < super::super::ANSWER_WITHIN, "the wait is bounded below the answer timeout");
        assert!(!store.is_failing(), "waiting for another collector's lock is not an outage of this one");
        // PostgreSQL ends the silent session; the acknowledgement then goes through.
        let acknowledged = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                match store.acknowledge(id, "Sam", Via::Popup, "", 20_000, outbox_clock_ms()).await {
                    Ok(t) => return t,
                    Err(StoreError::Postgres(_)) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .await
        .expect("the silent session is ended");
        assert_eq!(acknowledged, Transition::New { at_ms: 20_000 });
        assert!(driver.await.unwrap().is_err(), "the silent session was ended by the server");
    }

    // Several collectors on one database.

    async fn two(cluster: &Cluster, plan: ResponsePlan) -> (PgStore, PgStore) {
        (open(cluster, plan.clone()).await, open(cluster, plan).await)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadline_fires_once_when_two_collectors_race_for_it() {
        let Some(cluster) = Cluster::start() else { return };
        let mut p = plan();
        p.emergency[0].wait_ms = 0;
        let (a, b) = two(&cluster, p.clone()).await;
        for id in 1..=60 {
            a.insert(alert(id)).await.unwrap();
        }
        let mut fired = Vec::new();
        loop {
            let clock = outbox_clock_ms();
            let (x, y) = tokio::join!(a.escalate_due(&p, 61_000, clock, 7), b.escalate_due(&p, 61_000, clock, 7));
            let (x, y) = (x.unwrap().0, y.unwrap().0);
            if x.is_empty() && y.is_empty() {
                break;
            }
            fired.extend(x.into_iter().chain(y));
        }
        let mut ids: Vec<_> = fired.iter().map(|(id, tier, _)| (*id, *tier)).collect();
        ids.sort();
        ids.dedup();
        assert_eq!((fired.len(), ids.len()), (60, 60), "each deadline fired once: {fired:?}");
        assert!(fired.iter().all(|(_, tier, again)| *tier == 2 && !again));
        assert_eq!(count(&a, "SELECT count(*) FROM outbox WHERE channel = 'email'").await, 60);
        assert_eq!(count(&a, "SELECT count(*) FROM alert_events WHERE kind = 'reminded'").await, 60);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_collectors_acknowledging_at_once_record_one_acknowledgement() {
        let Some(cluster) = Cluster::start() else { return };
        let (a, b) = two(&cluster, plan()).await;
        for n in 1..=20 {
            a.insert(alert(n)).await.unwrap();
            let id = AlertId::from_u128(n);
            let (x, y) = tokio::join!(
                a.acknowledge(id, "Sam", Via::Popup, "", 20_000, outbox_clock_ms()),
                b.acknowledge(id, "Kim", Via::Console, "", 20_000, outbox_clock_ms())
            );
            let (x, y) = (x.unwrap(), y.unwrap());
            let (new, already) = if matches!(x, Transition::New { .. }) { (x, y) } else { (y, x) };
            assert_eq!(new, Transition::New { at_ms: 20_000 }, "alert {n}");
            assert!(matches!(already, Transition::Already { .. }), "alert {n}: {already:?}");
        }
        assert_eq!(count(&a, "SELECT count(*) FROM alert_events WHERE kind = 'acknowledged'").await, 20);
        assert_eq!(count(&a, "SELECT count(*) FROM outbox WHERE kind = 'acknowledged'").await, 20);
        assert_eq!(count(&a, "SELECT count(*) FROM sender_notices").await, 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_acknowledgement_on_one_collector_stops_what_another_would_send() {
        let Some(cluster) = Cluster::start() else { return };
        let mut p = plan();
        p.emergency[0].wait_ms = 0;
        let (a, b) = two(&cluster, p.clone()).await;
        // Alert 1: nothing claimed yet. B would send Slack's alert; after A's acknowledgement it
        // sends only "acknowledged by Sam".
        a.insert(alert(1)).await.unwrap();
        a.acknowledge(AlertId::from_u128(1), "Sam", Via::Popup, "", 20_000, outbox_clock_ms()).await.unwrap();
        let got = claim(&b, "slack").await;
        assert_eq!(got.jobs.len(), 1);
        assert!(matches!(got.jobs[0].alert.update, Some(AlertUpdate::Acknowledged { .. })));
        deliver(&b, &got, 0).await;

        // Alert 2: B is delivering Slack's alert under its lease when A acknowledges, and the
        // escalation B would fire is gone.
        a.insert(alert(2)).await.unwrap();
        let in_flight = claim(&b, "slack").await;
        assert_eq!((in_flight.jobs.len(), in_flight.jobs[0].alert.update.is_none()), (1, true));
        a.acknowledge(AlertId::from_u128(2), "Sam", Via::Popup, "", 20_000, outbox_clock_ms()).await.unwrap();
        assert!(b.escalate_due(&p, 61_000, outbox_clock_ms(), 100).await.unwrap().0.is_empty());
        assert_eq!(count(&a, "SELECT count(*) FROM outbox WHERE channel = 'email'").await, 0);
        // "Acknowledged" waits while the alert is in flight (it must not overtake it), and the
        // worker is told when it may go: at the end of that lease.
        assert!(claim(&a, "slack").await.jobs.is_empty(), "held behind the alert in flight");
        let due = a.next_due("slack").await.unwrap().unwrap();
        assert!(due > outbox_clock_ms() + 20_000, "due when the in-flight lease ends, not now: {due}");
        // B's delivery is recorded under its lease: the alert did go out.
        deliver(&b, &in_flight, 0).await;
        let followed = claim(&a, "slack").await;
        assert_eq!(followed.jobs.len(), 1);
        assert!(matches!(followed.jobs[0].alert.update, Some(AlertUpdate::Acknowledged { .. })));
        let states: Vec<_> =
            a.deliveries(AlertId::from_u128(2)).await.unwrap().into_iter().map(|d| (d.channel, d.state)).collect();
        assert_eq!(
            states,
            [("slack".to_owned(), "delivered".to_owned()), ("slack (acknowledged)".into(), "pending".into())]
        );

        // Alert 3: B's attempt fails for now (a retry): what was stopped is never sent again.
        a.insert(alert(3)).await.unwrap();
        let in_flight = claim(&b, "slack").await;
        a.acknowledge(AlertId::from_u128(3), "Sam", Via::Popup, "", 20_000, outbox_clock_ms()).await.unwrap();
        let retry = JobOutcome::Retry { next_attempt_at_ms: 0, error: "HTTP 500".into() };
        assert!(b.finish(in_flight.lease, vec![(in_flight.jobs[0].id, retry)], 1).await.unwrap().is_empty());
        let next = claim(&b, "slack").await;
        let kinds: Vec<_> = next.jobs.iter().map(|j| (j.alert.alert_id, j.alert.update.is_some())).collect();
        assert_eq!(kinds, [(AlertId::from_u128(3), true)], "only the acknowledgement, never the stopped alert");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledgements_racing_escalations_leave_nothing_pending_to_page() {
        let Some(cluster) = Cluster::start() else { return };
        let mut p = plan();
        p.emergency[0].wait_ms = 0;
        let (a, b) = two(&cluster, p.clone()).await;
        for id in 1..=40 {
            a.insert(alert(id)).await.unwrap();
        }
        let escalating = async {
            loop {
                let (fired, _) = a.escalate_due(&p, 61_000, outbox_clock_ms(), 3).await.unwrap();
                if fired.is_empty() {
                    break;
                }
            }
        };
        let acknowledging = async {
            for id in 1..=40 {
                let t = b.acknowledge(AlertId::from_u128(id), "Sam", Via::Popup, "", 20_000, outbox_clock_ms());
                assert!(matches!(t.await.unwrap(), Transition::New { .. }));
            }
        };
        tokio::join!(escalating, acknowledging);
        assert_eq!(
            count(&a, "SELECT count(*) FROM outbox WHERE kind IN ('alert', 'reminder') AND state = 'pending'").await,
            0,
            "every page of every tier stopped, fired before or after its acknowledgement"
        );
        assert_eq!(count(&a, "SELECT count(*) FROM escalations").await, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_is_used_once_across_collectors() {
        let Some(cluster) = Cluster::start() else { return };
        let (a, b) = two(&cluster, ResponsePlan::channels_only(&["slack"])).await;
        a.insert(alert(1)).await.unwrap();
        let once = link("aa");
        let (x, y) =
            tokio::join!(a.acknowledge_by_link(&once, 5_000, 5_000), b.acknowledge_by_link(&once, 5_001, 5_001));
        let mut got = [x.unwrap(), y.unwrap()];
        got.sort_by_key(|u| matches!(u, LinkUse::Used { .. }));
        assert!(matches!(got[0], LinkUse::Ack(Transition::New { .. })), "{got:?}");
        assert!(matches!(got[1], LinkUse::Used { .. }), "{got:?}");
        assert_eq!(count(&a, "SELECT COUNT(*) FROM ack_links_used").await, 1);
        assert_eq!(count(&a, "SELECT COUNT(*) FROM outbox WHERE kind = 'acknowledged'").await, 1);
    }

    #[tokio::test]
    async fn an_acknowledgement_on_one_collector_is_announced_on_another() {
        let Some(cluster) = Cluster::start() else { return };
        let (a, b) = two(&cluster, plan()).await;
        a.insert(alert(1)).await.unwrap();
        let slack = crate::store::Backend::waker(&b, "slack").unwrap();
        let changes = b.changes();
        let (woken, changed) = (slack.notified(), changes.notified());
        a.acknowledge(AlertId::from_u128(1), "Sam", Via::Popup, "", 20_000, outbox_clock_ms()).await.unwrap();
        let within = std::time::Duration::from_secs(30);
        tokio::time::timeout(within, woken).await.expect("B's slack worker woken (NOTIFY sos_jobs)");
        tokio::time::timeout(within, changed).await.expect("B's consoles told (NOTIFY sos_changes)");
    }
}
