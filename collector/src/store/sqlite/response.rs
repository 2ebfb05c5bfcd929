//! The responder loop in SQL: response state, timeline events, tiers and their deadlines,
//! acknowledgements, sender notices. Every transition is one transaction.

use rusqlite::{params, OptionalExtension, Transaction};
use sos_shared::protocol::{NoticeEvent, ResponderNotice};
use sos_shared::AlertId;

use crate::store::response::{
    mentions_of, wait_after, AlertState, Event, PopupTarget, ResponsePlan, TierPlan, Transition, Via,
};
use crate::store::{enrolled_as, AlertRecord, Audience, Cancellation, Db, EnrolledAs, NewAlert, StoreError};

/// The alert columns [`alert_record`] reads, from `alerts a`.
pub(crate) const ALERT_COLUMNS: &str = "a.alert_id, a.test, a.triggered_at, a.received_at_ms, a.user, a.host, a.ip, \
     a.location, a.message, a.source, a.cancelled_at_ms, a.cancel_reason, a.agent_id, a.agent_name, a.agent_host, a.site";

/// How many columns [`ALERT_COLUMNS`] is.
pub(crate) const ALERT_COLUMN_COUNT: usize = 16;

/// Alerts that changed within this long still go to responder desktops (so that a closed
/// alert's popup is replaced), ms.
pub const POPUP_RECENT_MS: i64 = 3600 * 1000;

/// The most alerts [`Db::popup_targets`] returns, newest first.
pub const MAX_POPUP_TARGETS: usize = 500;

/// The most notices [`Db::pending_notices`] returns, newest first.
pub const MAX_PENDING_NOTICES: usize = 1000;

/// The newest pending notices ([`Db::pending_notices`]): read on every change of the store, so
/// it must walk the `sender_notices_pending` index and stop at its limit, never sort every
/// pending notice (the schema's `V_NOTICES_BY_TIME`; a test checks the plan).
const PENDING_NOTICES: &str = "SELECT alert_id, principal, event, responder, note, at_ms FROM sender_notices
     WHERE confirmed_at_ms IS NULL ORDER BY confirmed_at_ms DESC, at_ms DESC, alert_id DESC LIMIT ?1";

/// The alerts [`Db::popup_targets`] reads (`targets`, a `WITH` clause; `?1` the oldest change
/// that counts as recent, `?2` the limit): the newest open alerts (every alert tied with the
/// last of them too, so that the cut falls where a read of everything would put it) and the
/// closed ones that changed since `?1`, ordered by the time the alert was received (the
/// response's copy of it) and cut to the limit *before* they are joined to their alerts, so
/// that the join reads at most `?2` of them. Each part walks its own partial index
/// (`responses_open`, `responses_closed`: the schema's `V_OPEN_BY_TIME`) and reads no more
/// than it returns, however long the history (a test checks the plan). Every state is in
/// exactly one of the two parts. A response whose alert is lost (kept by `store recover`) has
/// the time -1: it sorts after every alert, and takes no real alert's place.
const POPUP_TARGETS_IDS: &str = "WITH targets (alert_id, received_at_ms) AS (
         SELECT alert_id, received_at_ms FROM responses
         WHERE (state = 'received' OR state = 'notified' OR state = 'acknowledged' OR state = 'cancelled')
           AND received_at_ms >= COALESCE(
               (SELECT received_at_ms FROM responses
                WHERE (state = 'received' OR state = 'notified' OR state = 'acknowledged' OR state = 'cancelled')
                ORDER BY received_at_ms DESC LIMIT 1 OFFSET ?2 - 1), -9223372036854775807)
         UNION ALL
         SELECT alert_id, received_at_ms FROM responses
         WHERE (state = 'resolved' OR state = 'checked') AND changed_at_ms >= ?1
         ORDER BY received_at_ms DESC, alert_id LIMIT ?2)";

/// The popup read of [`Db::popup_targets`] (`?1`, `?2` as in [`POPUP_TARGETS_IDS`]).
fn popup_targets_sql() -> String {
    format!(
        "{POPUP_TARGETS_IDS}
         SELECT {ALERT_COLUMNS}, r.state, r.by_responder, r.note, r.outcome, r.seq, r.responders, r.reminder_seq
         FROM targets t JOIN responses r ON r.alert_id = t.alert_id JOIN alerts a ON a.alert_id = t.alert_id
         ORDER BY a.received_at_ms DESC, a.alert_id LIMIT ?2"
    )
}

/// The longest note, outcome or reason kept, in characters.
pub const MAX_NOTE: usize = 500;

/// The alert in the columns from `at` ([`ALERT_COLUMNS`]), as a record of the alert itself.
pub(crate) fn alert_record(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<AlertRecord> {
    let id: String = r.get(at)?;
    Ok(AlertRecord {
        alert_id: id
            .parse()
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(at, rusqlite::types::Type::Text, Box::new(e)))?,
        test: r.get(at + 1)?,
        triggered_at: r.get(at + 2)?,
        received_at_ms: r.get(at + 3)?,
        user: r.get(at + 4)?,
        host: r.get(at + 5)?,
        ip: r.get(at + 6)?,
        location: r.get(at + 7)?,
        message: r.get(at + 8)?,
        source: r.get(at + 9)?,
        enrolled: enrolled_as(r, at + 12)?,
        cancellation: match (r.get::<_, Option<i64>>(at + 10)?, r.get::<_, Option<String>>(at + 11)?) {
            (Some(at_ms), reason) => Some(Cancellation { at_ms, reason: reason.unwrap_or_default() }),
            (None, _) => None,
        },
        audience: Audience::default(),
        update: None,
        site: r.get(at + 15)?,
    })
}

/// `text` without control characters (newlines become spaces), trimmed, at most [`MAX_NOTE`]
/// characters: what a responder or a sender typed, made safe for one line of a timeline.
pub fn clean_note(text: &str) -> String {
    let one_line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    one_line.trim().chars().take(MAX_NOTE).collect()
}

/// The separator of the fields of an outbox job's `detail` (no configured name or cleaned note
/// holds a control character).
pub(crate) const DETAIL_SEP: char = '\u{1f}';

/// `execute` through the connection's statement cache: these run in the transactions of every
/// alert (about 5 % of the writer's time went to parsing them again).
fn exec(c: &rusqlite::Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// `query_row` through the connection's statement cache (as [`exec`]).
fn query_row<T>(
    c: &rusqlite::Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(p, f)
}

fn event(
    tx: &Transaction<'_>,
    id: &str,
    at_ms: i64,
    kind: &str,
    who: &str,
    via: Via,
    note: &str,
) -> rusqlite::Result<()> {
    // The alert's next `id`: its events are stored together, keyed by (alert_id, id) (schema
    // `V_EVENTS_BY_ALERT`); the largest so far is one step down the same key.
    tx.prepare_cached(
        "INSERT INTO alert_events (alert_id, id, at_ms, kind, who, via, note)
         VALUES (?1, COALESCE((SELECT MAX(id) FROM alert_events WHERE alert_id = ?1), 0) + 1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![id, at_ms, kind, who, via.name(), note])?;
    Ok(())
}

/// The `received` event of an alert: not stored since schema `V_EVENTS_BY_ALERT` (it was a
/// copy of the alert's row), made from the row when a timeline is read, as it was stored.
pub(crate) fn received_event(a: &AlertRecord) -> Event {
    Event {
        at_ms: a.received_at_ms,
        kind: "received".into(),
        who: sender(&a.user, &a.host, a.enrolled.as_ref()),
        via: Via::Sender,
        note: clean_note(&a.message),
    }
}

/// `events` (the alert's stored timeline, in order), with its `received` event first when the
/// alert has a response (`responded`) but no stored `received` event (not stored since schema
/// `V_EVENTS_BY_ALERT`). An alert stored before the responder loop has no response, and no
/// `received` event, until someone answers it: then its response row is made
/// (`response_state`) and its timeline begins with the `received` event made here. (On
/// PostgreSQL, whose stores all began with the responder loop, every alert has both.)
pub(crate) fn with_received(a: &AlertRecord, responded: bool, mut events: Vec<Event>) -> Vec<Event> {
    if responded && !events.iter().any(|e| e.kind == "received") {
        events.insert(0, received_event(a));
    }
    events
}

/// The response row of `id`: (state, by), creating it for an alert stored before the responder
/// loop (as `notified`: its channels were). `None`: no such alert.
fn response_state(tx: &Transaction<'_>, id: &str, now_ms: i64) -> rusqlite::Result<Option<(AlertState, String)>> {
    let row: Option<(String, String)> = tx
        .query_row("SELECT state, by_responder FROM responses WHERE alert_id = ?1", params![id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if let Some((state, by)) = row {
        return Ok(Some((AlertState::from_name(&state), by)));
    }
    let alert: Option<(Option<i64>, i64)> =
        query_row(tx, "SELECT cancelled_at_ms, received_at_ms FROM alerts WHERE alert_id = ?1", params![id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((cancelled, received_at_ms)) = alert else { return Ok(None) };
    let state = if cancelled.is_some() { AlertState::Cancelled } else { AlertState::Notified };
    exec(
        tx,
        "INSERT INTO responses (alert_id, state, tier, changed_at_ms, received_at_ms) VALUES (?1, ?2, 1, ?3, ?4)",
        params![id, state.name(), now_ms, received_at_ms],
    )?;
    Ok(Some((state, String::new())))
}

/// Stop what an answered or withdrawn alert must no longer do: its pending tier deadline and
/// its pending notifications and reminders (`kinds` of jobs). Returns the jobs stopped.
fn stop_pending(tx: &Transaction<'_>, id: &str, kinds: &[&str]) -> rusqlite::Result<usize> {
    exec(tx, "DELETE FROM escalations WHERE alert_id = ?1", params![id])?;
    let mut n = 0;
    for kind in kinds {
        n += exec(
            tx,
            "UPDATE outbox SET state = 'stopped' WHERE alert_id = ?1 AND kind = ?2 AND state = 'pending'",
            params![id, kind],
        )?;
    }
    Ok(n)
}

/// The channels that were told of the alert (a job of its notification exists, in any state:
/// one stopped may have been in flight), in the order they were first told.
fn notified_channels(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = tx.prepare_cached(
        "SELECT channel FROM outbox WHERE alert_id = ?1 AND kind = 'alert' GROUP BY channel ORDER BY MIN(id)",
    )?;
    let rows = stmt.query_map(params![id], |r| r.get(0))?;
    rows.collect()
}

/// Queue a job of `kind` about the alert to each of `channels`, due at `jobs_at_ms`.
fn queue(
    tx: &Transaction<'_>,
    id: &str,
    channels: &[String],
    kind: &str,
    detail: &str,
    jobs_at_ms: i64,
) -> rusqlite::Result<()> {
    for ch in channels {
        let recipients = notified_recipients(tx, id, ch)?;
        tx.prepare_cached(
            "INSERT INTO outbox (alert_id, channel, kind, tier, state, created_at_ms, next_attempt_at_ms, detail,
                                 recipients)
             VALUES (?1, ?2, ?3, 1, 'pending', ?4, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        )?
        .execute(params![id, ch, kind, jobs_at_ms, detail, recipients])?;
    }
    Ok(())
}

/// The extra recipients (responders' email addresses) the alert's notifications on `channel`
/// went to, every tier, each once: what happens next (a reminder, an acknowledgement, the
/// resolution, a cancellation) goes to them too.
pub(crate) fn notified_recipients(tx: &Transaction<'_>, id: &str, channel: &str) -> rusqlite::Result<String> {
    let mut stmt = tx.prepare_cached(
        "SELECT recipients FROM outbox WHERE alert_id = ?1 AND channel = ?2 AND kind = 'alert' ORDER BY id",
    )?;
    let mut all: Vec<String> = Vec::new();
    for r in stmt.query_map(params![id, channel], |r| r.get::<_, String>(0))? {
        for address in r?.lines() {
            if !address.is_empty() && !all.iter().any(|a| a == address) {
                all.push(address.to_owned());
            }
        }
    }
    Ok(all.join("\n"))
}

/// Owe the alert's sender a notice (once per event).
fn owe_notice(
    tx: &Transaction<'_>,
    id: &str,
    event: NoticeEvent,
    responder: &str,
    note: &str,
    now_ms: i64,
) -> rusqlite::Result<()> {
    exec(
        tx,
        "INSERT INTO sender_notices (alert_id, event, principal, responder, note, at_ms)
         SELECT alert_id, ?2, COALESCE('agent:' || agent_id, key_id), ?3, ?4, ?5 FROM alerts WHERE alert_id = ?1
         ON CONFLICT DO NOTHING",
        params![id, notice_name(event), responder, note, now_ms],
    )?;
    Ok(())
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

/// Whether an agent of `agents` (enrolled names, not revoked) heartbeated as a responder
/// desktop (`responder = true` in its config: it shows popups) since `since_ms`, as presence
/// recorded it. An agent listed for a responder whose config lacks `responder = true` gets no
/// broadcasts, so it reaches nobody.
fn any_online(tx: &Transaction<'_>, agents: &[String], since_ms: i64) -> rusqlite::Result<bool> {
    let mut stmt = tx.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM enrolled
                        WHERE name = ?1 AND revoked_at_ms IS NULL AND responder_seen_ms >= ?2)",
    )?;
    for a in agents {
        if stmt.query_row(params![a, since_ms], |r| r.get::<_, bool>(0))? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Fire tier `index` (0-based) of the alert's policy: its channels' jobs, its responders added
/// to those notified, earlier tiers' channels reminded, the next deadline set (none after the
/// last tier). Returns whether anyone can be reached through it: a channel other than the log,
/// or one of its responders' agents online.
#[allow(clippy::too_many_arguments)]
fn fire_tier(
    tx: &Transaction<'_>,
    plan: &ResponsePlan,
    id: &str,
    test: bool,
    received_at_ms: i64,
    index: usize,
    now_ms: i64,
    jobs_at_ms: i64,
) -> Result<bool, StoreError> {
    let tiers = plan.policy(test);
    let Some(tier) = tiers.get(index) else {
        if tiers.is_empty() {
            exec(tx, "DELETE FROM escalations WHERE alert_id = ?1", params![id])?;
            return Ok(false);
        }
        remind_again(tx, tiers, test, id, received_at_ms, index, now_ms, jobs_at_ms)?;
        return Ok(true);
    };
    let number = index as i64 + 1;
    let mentions: Vec<&str> = tier.responders.iter().filter_map(|r| r.chat.as_deref()).collect();
    let recipients = |ch: &str| tier.responders.iter().filter_map(|r| r.address(ch)).collect::<Vec<_>>().join("\n");
    let after_secs = ((now_ms - received_at_ms).max(0) / 1000).to_string();
    if index > 0 {
        // The earlier tiers' channels remind the earlier tiers' responders.
        let mut earlier = notified_channels(tx, id)?;
        earlier.retain(|c| !tier.channels.contains(&c.as_str()));
        remind(tx, id, &tiers[..index], &earlier, number, jobs_at_ms, &after_secs)?;
    }
    for ch in &tier.channels {
        tx.prepare_cached(
            "INSERT INTO outbox (alert_id, channel, kind, tier, state, created_at_ms, next_attempt_at_ms,
                                 mentions, recipients)
             VALUES (?1, ?2, 'alert', ?3, 'pending', ?4, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        )?
        .execute(params![id, ch, number, jobs_at_ms, mentions.join("\n"), recipients(ch)])?;
    }
    // No row yet: the alert's first tier, fired as it is stored ([`Db::start_response`]).
    let before: String =
        query_row(tx, "SELECT responders FROM responses WHERE alert_id = ?1", params![id], |r| r.get(0))
            .optional()?
            .unwrap_or_default();
    let mut names: Vec<String> = before.lines().map(str::to_owned).collect();
    for r in &tier.responders {
        if !names.contains(&r.name) {
            names.push(r.name.clone());
        }
    }
    // A new alert's row is made here, as it would be by an insert as `received` (`seq` 1) and
    // this update: one write of the row and of its `responses_open` entry, not two.
    exec(
        tx,
        "INSERT INTO responses (alert_id, state, seq, tier, reminder_seq, responders, changed_at_ms, received_at_ms)
         VALUES (?1, 'notified', 2, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (alert_id) DO UPDATE SET state = CASE state WHEN 'received' THEN 'notified' ELSE state END,
                tier = excluded.tier, seq = seq + 1, reminder_seq = reminder_seq + excluded.reminder_seq,
                responders = excluded.responders, changed_at_ms = excluded.changed_at_ms,
                received_at_ms = excluded.received_at_ms",
        params![id, number, i64::from(index > 0), names.join("\n"), now_ms, received_at_ms],
    )?;
    let targets: Vec<&str> =
        tier.responders.iter().map(|r| r.name.as_str()).chain(tier.channels.iter().copied()).collect();
    event(tx, id, now_ms, "notified", "collector", Via::Collector, &format!("tier {number}: {}", targets.join(", ")))?;
    if index > 0 {
        let note = format!(
            "tier{} 1{} still unanswered after {after_secs} s",
            if index > 1 { "s" } else { "" },
            if index > 1 { format!("–{index}") } else { String::new() }
        );
        event(tx, id, now_ms, "reminded", "collector", Via::Collector, &note)?;
    }
    set_deadline(tx, tiers, test, id, index, jobs_at_ms)?;
    let agents: Vec<String> = tier.responders.iter().flat_map(|r| r.agents.iter().cloned()).collect();
    Ok(tier.channels.iter().any(|c| *c != "log") || any_online(tx, &agents, now_ms - plan.offline_after_ms)?)
}

/// The next round after round `index` (a tier, or a reminder past the last tier; see
/// [`wait_after`]) is due after its wait; none left (a drill's): no deadline.
fn set_deadline(
    tx: &Transaction<'_>,
    tiers: &[TierPlan],
    test: bool,
    id: &str,
    index: usize,
    jobs_at_ms: i64,
) -> rusqlite::Result<()> {
    let Some(wait) = wait_after(tiers, index, test) else {
        exec(tx, "DELETE FROM escalations WHERE alert_id = ?1", params![id])?;
        return Ok(());
    };
    exec(
        tx,
        "INSERT INTO escalations (alert_id, next_tier, set_at_ms, due_at_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (alert_id) DO UPDATE SET next_tier = excluded.next_tier, set_at_ms = excluded.set_at_ms,
                                              due_at_ms = excluded.due_at_ms",
        params![id, index as i64 + 1, jobs_at_ms, jobs_at_ms.saturating_add(wait)],
    )?;
    Ok(())
}

/// Queue a reminder of the alert to each of `channels` for round `number`, mentioning the
/// responders of `tiers` (each channel's recipients those it was notified with). Never to the
/// `forward` channel (a centre runs its own escalation), and not to a channel that still has a
/// reminder of the alert waiting (a slow or failing channel gets one, not one a round, ahead
/// of other alerts' pages).
fn remind(
    tx: &Transaction<'_>,
    id: &str,
    tiers: &[TierPlan],
    channels: &[String],
    number: i64,
    jobs_at_ms: i64,
    after_secs: &str,
) -> Result<(), StoreError> {
    let reminded = mentions_of(tiers);
    for ch in channels.iter().filter(|c| *c != "forward") {
        let recipients = notified_recipients(tx, id, ch)?;
        tx.prepare_cached(
            "INSERT INTO outbox (alert_id, channel, kind, tier, state, created_at_ms, next_attempt_at_ms,
                                 detail, mentions, recipients)
             SELECT ?1, ?2, 'reminder', ?3, 'pending', ?4, ?4, ?5, ?6, ?7
             WHERE NOT EXISTS (SELECT 1 FROM outbox WHERE alert_id = ?1 AND channel = ?2 AND kind = 'reminder'
                                                      AND state = 'pending')
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![id, ch, number, jobs_at_ms, after_secs, reminded, recipients])?;
    }
    Ok(())
}

/// Round `index`, past the last tier, of an alert nobody acknowledged: every channel that was
/// notified posts "STILL UNANSWERED", mentioning every tier's responders, their popups are shown
/// again, and the next round is set (see [`wait_after`]). The round's number is the jobs' tier,
/// so that each round queues its own reminders (see [`remind`]).
#[allow(clippy::too_many_arguments)]
fn remind_again(
    tx: &Transaction<'_>,
    tiers: &[TierPlan],
    test: bool,
    id: &str,
    received_at_ms: i64,
    index: usize,
    now_ms: i64,
    jobs_at_ms: i64,
) -> Result<(), StoreError> {
    let after_secs = ((now_ms - received_at_ms).max(0) / 1000).to_string();
    remind(tx, id, tiers, &notified_channels(tx, id)?, index as i64 + 1, jobs_at_ms, &after_secs)?;
    exec(
        tx,
        "UPDATE responses SET seq = seq + 1, reminder_seq = reminder_seq + 1, changed_at_ms = ?2 WHERE alert_id = ?1",
        params![id, now_ms],
    )?;
    let note = format!("every tier still unanswered after {after_secs} s");
    event(tx, id, now_ms, "reminded", "collector", Via::Collector, &note)?;
    set_deadline(tx, tiers, test, id, index, jobs_at_ms)?;
    Ok(())
}

/// Fire tier `index`; if nobody can be reached through it, tell the sender plainly (the
/// `unanswered` notice) and fire every remaining tier at once, up to the last.
#[allow(clippy::too_many_arguments)]
fn escalate(
    tx: &Transaction<'_>,
    plan: &ResponsePlan,
    id: &str,
    test: bool,
    received_at_ms: i64,
    index: usize,
    now_ms: i64,
    jobs_at_ms: i64,
) -> Result<(), StoreError> {
    if fire_tier(tx, plan, id, test, received_at_ms, index, now_ms, jobs_at_ms)? {
        return Ok(());
    }
    owe_notice(tx, id, NoticeEvent::Unanswered, "", "", now_ms)?;
    event(
        tx,
        id,
        now_ms,
        "unanswered",
        "collector",
        Via::Collector,
        &format!("nobody reachable in tier {}", index + 1),
    )?;
    for next in index + 1..plan.policy(test).len() {
        fire_tier(tx, plan, id, test, received_at_ms, next, now_ms, jobs_at_ms)?;
    }
    Ok(())
}

/// Who sent an alert, as its timeline names them.
fn sender(user: &str, host: &str, enrolled: Option<&EnrolledAs>) -> String {
    match enrolled {
        Some(e) => format!("{user}@{host} (agent {})", e.name),
        None => format!("{user}@{host}"),
    }
}

/// What [`Db::escalate_due`] did: the alerts escalated with the round fired (1-based: the tier,
/// or past the last tier a reminder of every tier) and whether it was such a reminder, and when
/// the next deadline is due (outbox clock).
pub type Escalated = (Vec<(AlertId, u32, bool)>, Option<i64>);

impl Db {
    /// A write transaction that takes the write lock at once (waiting for it as long as the
    /// busy timeout allows). A transaction that reads first and writes later fails at once,
    /// whatever the timeout, if another connection (`sos-collector alerts ack`, the service)
    /// committed in between; every read-then-write transaction here starts this way.
    pub(crate) fn write(&mut self) -> rusqlite::Result<Transaction<'_>> {
        self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
    }

    /// Start the response of a newly stored alert, inside its insert transaction: its state
    /// and its first tier fired (see [`Db::insert_alerts_planned`]). Its `received` event is
    /// the alert's row itself ([`received_event`]).
    pub(crate) fn start_response(
        tx: &Transaction<'_>,
        plan: &ResponsePlan,
        a: &NewAlert,
        jobs_at_ms: i64,
    ) -> Result<(), StoreError> {
        let id = a.sos.alert_id.to_string();
        let now_ms = a.received_at_ms;
        // With a tier to fire, firing it makes the row (`notified`, see `fire_tier`); without
        // one (an empty policy) the alert stays `received`.
        if plan.policy(a.sos.test).is_empty() {
            // A row left by `store recover` of this alert, lost and now sent again, stays (as
            // the upsert of `fire_tier` keeps it): never a conflict that fails the whole group.
            // It takes the alert's time again (a lost alert's row has -1, see `V_OPEN_BY_TIME`).
            tx.prepare_cached(
                "INSERT INTO responses (alert_id, state, changed_at_ms, received_at_ms) VALUES (?1, 'received', ?2, ?2)
                 ON CONFLICT (alert_id) DO UPDATE SET received_at_ms = excluded.received_at_ms",
            )?
            .execute(params![id, now_ms])?;
        }
        escalate(tx, plan, &id, a.sos.test, a.received_at_ms, 0, now_ms, jobs_at_ms)
    }

    /// Fire the escalation deadlines due at `clock_ms` (outbox clock), at most `limit` of them,
    /// in one transaction: for each alert still unanswered, its next tier. Returns the alerts
    /// escalated (with the tier fired, 1-based) and when the next deadline is due.
    ///
    /// # Errors
    /// If the transaction fails; then nothing fired and the deadlines stay.
    pub fn escalate_due(
        &mut self,
        plan: &ResponsePlan,
        now_ms: i64,
        clock_ms: i64,
        limit: usize,
    ) -> Result<Escalated, StoreError> {
        // Most ticks find nothing due: no write lock for them.
        let any: bool = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM escalations WHERE due_at_ms <= ?1)",
            params![clock_ms],
            |r| r.get(0),
        )?;
        if !any {
            return Ok((Vec::new(), self.next_escalation()?));
        }
        let tx = self.write()?;
        let due: Vec<(String, i64, bool, i64, Option<String>)> = tx
            .prepare_cached(
                "SELECT e.alert_id, e.next_tier, a.test, a.received_at_ms, r.state
                 FROM escalations e JOIN alerts a ON a.alert_id = e.alert_id
                 LEFT JOIN responses r ON r.alert_id = e.alert_id
                 WHERE e.due_at_ms <= ?1 ORDER BY e.due_at_ms, e.alert_id LIMIT ?2",
            )?
            .query_map(params![clock_ms, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut fired = Vec::new();
        for (id, next_tier, test, received_at_ms, state) in due {
            let unanswered = state.as_deref().map(AlertState::from_name).is_some_and(AlertState::unanswered);
            if !unanswered {
                exec(&tx, "DELETE FROM escalations WHERE alert_id = ?1", params![id])?;
                continue;
            }
            escalate(&tx, plan, &id, test, received_at_ms, next_tier as usize, now_ms, clock_ms)?;
            if let Ok(alert_id) = id.parse() {
                fired.push((alert_id, next_tier as u32 + 1, next_tier as usize >= plan.policy(test).len()));
            }
        }
        tx.commit()?;
        Ok((fired, self.next_escalation()?))
    }

    /// When the next escalation deadline is due (outbox clock).
    ///
    /// # Errors
    /// If the query fails.
    pub fn next_escalation(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.conn.query_row("SELECT MIN(due_at_ms) FROM escalations", [], |r| r.get(0))?)
    }

    /// Re-base the escalation deadlines on this run's outbox clock: a deadline set "in the
    /// future" (the wall clock was stepped back since it was set) moves back with it, so that it
    /// is due at most its tier's wait from `clock_ms`. A deadline set in the past stays (due at
    /// once if its wait is over: a collector that was down owes those tiers). Returns how many
    /// deadlines changed.
    ///
    /// # Errors
    /// If the update fails.
    pub fn rebase_escalations(&mut self, clock_ms: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE escalations SET due_at_ms = due_at_ms - (set_at_ms - ?1), set_at_ms = ?1 WHERE set_at_ms > ?1",
            params![clock_ms],
        )?)
    }

    /// A responder acknowledges `alert_id` (see [`crate::store::Response::acknowledge`]).
    /// `now_ms` is the wall clock (the event's time), `jobs_at_ms` the outbox clock.
    ///
    /// # Errors
    /// If the transaction fails; then nothing changed.
    pub fn acknowledge(
        &mut self,
        alert_id: AlertId,
        responder: &str,
        via: Via,
        note: &str,
        now_ms: i64,
        jobs_at_ms: i64,
    ) -> Result<Transition, StoreError> {
        let tx = self.write()?;
        let out = Self::acknowledge_in(&tx, alert_id, responder, via, note, now_ms, jobs_at_ms)?;
        tx.commit()?;
        Ok(out)
    }

    /// [`Db::acknowledge`] inside the caller's transaction `tx` (an acknowledge link records
    /// its use in the same one).
    ///
    /// # Errors
    /// If a statement fails; then the caller must not commit.
    pub(crate) fn acknowledge_in(
        tx: &Transaction<'_>,
        alert_id: AlertId,
        responder: &str,
        via: Via,
        note: &str,
        now_ms: i64,
        jobs_at_ms: i64,
    ) -> Result<Transition, StoreError> {
        let id = alert_id.to_string();
        let note = clean_note(note);
        Ok(match response_state(tx, &id, now_ms)? {
            None => Transition::Unknown,
            Some((AlertState::Acknowledged, by)) => Transition::Already { by },
            Some((state, _)) if !state.unanswered() => Transition::Closed(state),
            Some(_) => {
                exec(
                    tx,
                    "UPDATE responses SET state = 'acknowledged', by_responder = ?2, note = ?3, seq = seq + 1,
                            acknowledged_at_ms = ?4, changed_at_ms = ?4 WHERE alert_id = ?1",
                    params![id, responder, note, now_ms],
                )?;
                event(tx, &id, now_ms, "acknowledged", responder, via, &note)?;
                stop_pending(tx, &id, &["alert", "reminder"])?;
                let detail = format!("{responder}{DETAIL_SEP}{note}");
                queue(tx, &id, &notified_channels(tx, &id)?, "acknowledged", &detail, jobs_at_ms)?;
                owe_notice(tx, &id, NoticeEvent::Acknowledged, responder, &note, now_ms)?;
                Transition::New { at_ms: now_ms }
            }
        })
    }

    /// A responder resolves `alert_id` with `outcome` (see [`crate::store::Response::resolve`]).
    /// An alert never acknowledged counts as acknowledged by the same responder now.
    ///
    /// # Errors
    /// If the transaction fails; then nothing changed.
    #[allow(clippy::too_many_arguments)]
    pub fn resolve(
        &mut self,
        alert_id: AlertId,
        responder: &str,
        via: Via,
        outcome: &str,
        note: &str,
        now_ms: i64,
        jobs_at_ms: i64,
    ) -> Result<Transition, StoreError> {
        let tx = self.write()?;
        let id = alert_id.to_string();
        let (outcome, note) = (clean_note(outcome), clean_note(note));
        let out = match response_state(&tx, &id, now_ms)? {
            None => Transition::Unknown,
            Some((AlertState::Resolved, by)) => Transition::Already { by },
            Some((AlertState::Checked, _)) => Transition::Closed(AlertState::Checked),
            Some(_) => {
                exec(
                    &tx,
                    "UPDATE responses SET state = 'resolved', by_responder = ?2, outcome = ?3, note = ?4, seq = seq + 1,
                            acknowledged_at_ms = COALESCE(acknowledged_at_ms, ?5), changed_at_ms = ?5
                     WHERE alert_id = ?1",
                    params![id, responder, outcome, note, now_ms],
                )?;
                let text = match (outcome.is_empty(), note.is_empty()) {
                    (false, false) => format!("{outcome} — {note}"),
                    (false, true) => outcome.clone(),
                    _ => note.clone(),
                };
                event(&tx, &id, now_ms, "resolved", responder, via, &text)?;
                stop_pending(&tx, &id, &["alert", "reminder"])?;
                let detail = format!("{responder}{DETAIL_SEP}{note}{DETAIL_SEP}{outcome}");
                queue(&tx, &id, &notified_channels(&tx, &id)?, "resolved", &detail, jobs_at_ms)?;
                owe_notice(&tx, &id, NoticeEvent::Resolved, responder, &text, now_ms)?;
                Transition::New { at_ms: now_ms }
            }
        };
        tx.commit()?;
        Ok(out)
    }

    /// A responder checked a cancelled alert in person: it is closed. Any other state is
    /// [`Transition::Closed`] with that state (only a cancelled alert needs a check).
    ///
    /// # Errors
    /// If the transaction fails; then nothing changed.
    pub fn mark_checked(
        &mut self,
        alert_id: AlertId,
        responder: &str,
        via: Via,
        note: &str,
        now_ms: i64,
    ) -> Result<Transition, StoreError> {
        let tx = self.write()?;
        let id = alert_id.to_string();
        let note = clean_note(note);
        let out = match response_state(&tx, &id, now_ms)? {
            None => Transition::Unknown,
            Some((AlertState::Checked, by)) => Transition::Already { by },
            Some((AlertState::Cancelled, _)) => {
                exec(
                    &tx,
                    "UPDATE responses SET state = 'checked', by_responder = ?2, note = ?3, seq = seq + 1,
                            changed_at_ms = ?4 WHERE alert_id = ?1",
                    params![id, responder, note, now_ms],
                )?;
                event(&tx, &id, now_ms, "checked", responder, via, &note)?;
                Transition::New { at_ms: now_ms }
            }
            Some((state, _)) => Transition::Closed(state),
        };
        tx.commit()?;
        Ok(out)
    }

    /// The response side of a cancellation by the sender, inside its transaction: the state
    /// (unless already resolved or checked), the event, the escalation and pending reminders
    /// stopped. Returns the channels to tell: every channel that was notified (all of
    /// `fallback` for an alert stored before the responder loop).
    pub(crate) fn cancel_response(
        tx: &Transaction<'_>,
        id: &str,
        reason: &str,
        now_ms: i64,
        fallback: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        if let Some((state, _)) = response_state(tx, id, now_ms)? {
            if state.open() && state != AlertState::Cancelled {
                exec(
                    tx,
                    "UPDATE responses SET state = 'cancelled', seq = seq + 1, changed_at_ms = ?2 WHERE alert_id = ?1",
                    params![id, now_ms],
                )?;
            }
        }
        event(tx, id, now_ms, "cancelled", "sender", Via::Sender, &clean_note(reason))?;
        stop_pending(tx, id, &["reminder"])?;
        let channels = notified_channels(tx, id)?;
        Ok(if channels.is_empty() { fallback.iter().map(|c| (*c).to_owned()).collect() } else { channels })
    }

    /// See [`crate::store::Response::popup_targets`]: open alerts and those changed within
    /// [`POPUP_RECENT_MS`] of `now_ms`, newest first, at most [`MAX_POPUP_TARGETS`].
    ///
    /// # Errors
    /// If the query fails.
    pub fn popup_targets(&self, now_ms: i64) -> Result<Vec<PopupTarget>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&popup_targets_sql())?;
        let n = ALERT_COLUMN_COUNT;
        let rows = stmt.query_map(params![now_ms - POPUP_RECENT_MS, MAX_POPUP_TARGETS as i64], |r| {
            let state = AlertState::from_name(&r.get::<_, String>(n)?);
            let (note, outcome): (String, String) = (r.get(n + 2)?, r.get(n + 3)?);
            Ok(PopupTarget {
                alert: alert_record(r, 0)?,
                state,
                by: r.get(n + 1)?,
                note: match (state, outcome.is_empty(), note.is_empty()) {
                    (AlertState::Resolved, false, false) => format!("{outcome} — {note}"),
                    (AlertState::Resolved, false, true) => outcome,
                    _ => note,
                },
                seq: r.get::<_, i64>(n + 4)?.max(0) as u64,
                responders: r.get::<_, String>(n + 5)?.lines().map(str::to_owned).collect(),
                reminder_seq: r.get::<_, i64>(n + 6)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The popup read as it was before the responses kept their alert's time: every alert,
    /// newest first, until `limit` are found (what [`Db::popup_targets`] must return, in
    /// tests): the ids.
    #[cfg(test)]
    pub(crate) fn popup_ids_read_from_every_alert(&self, now_ms: i64, limit: i64) -> Vec<String> {
        self.conn
            .prepare(
                "SELECT a.alert_id FROM responses r JOIN alerts a ON a.alert_id = r.alert_id
                 WHERE r.state IN ('received', 'notified', 'acknowledged', 'cancelled') OR r.changed_at_ms >= ?1
                 ORDER BY a.received_at_ms DESC, a.alert_id LIMIT ?2",
            )
            .unwrap()
            .query_map(params![now_ms - POPUP_RECENT_MS, limit], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// See [`crate::store::Response::pending_notices`]: newest first, at most
    /// [`MAX_PENDING_NOTICES`].
    ///
    /// # Errors
    /// If the query fails.
    pub fn pending_notices(&self) -> Result<Vec<(AlertId, String, ResponderNotice)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(PENDING_NOTICES)?;
        let rows = stmt.query_map(params![MAX_PENDING_NOTICES as i64], |r| {
            let id: String = r.get(0)?;
            let alert_id: AlertId = id
                .parse()
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))?;
            let event = notice_event(&r.get::<_, String>(2)?);
            Ok((
                alert_id,
                r.get(1)?,
                ResponderNotice {
                    alert_id,
                    event,
                    responder: r.get(3)?,
                    note: r.get(4)?,
                    at: (r.get::<_, i64>(5)?.max(0) / 1000) as u64,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The sender's agent confirmed a notice: it is not sent again. Returns whether it was
    /// pending (a repeated receipt changes nothing).
    ///
    /// # Errors
    /// If the transaction fails.
    pub fn confirm_notice(
        &mut self,
        alert_id: AlertId,
        event_kind: NoticeEvent,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let tx = self.write()?;
        let id = alert_id.to_string();
        let n = exec(
            &tx,
            "UPDATE sender_notices SET confirmed_at_ms = ?3 WHERE alert_id = ?1 AND event = ?2 AND confirmed_at_ms IS NULL",
            params![id, notice_name(event_kind), now_ms],
        )?;
        if n > 0 {
            event(&tx, &id, now_ms, "notice_seen", "sender", Via::Sender, notice_name(event_kind))?;
        }
        tx.commit()?;
        Ok(n > 0)
    }

    /// Append an event to the alert's timeline; nothing for an unknown alert.
    ///
    /// # Errors
    /// If the transaction fails.
    pub fn record_event(
        &mut self,
        alert_id: AlertId,
        kind: &str,
        who: &str,
        via: Via,
        note: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let tx = self.write()?;
        let id = alert_id.to_string();
        let known: bool =
            query_row(&tx, "SELECT EXISTS (SELECT 1 FROM alerts WHERE alert_id = ?1)", params![id], |r| r.get(0))?;
        if known {
            event(&tx, &id, now_ms, kind, &clean_note(who), via, &clean_note(note))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// An alert, its state and its timeline (oldest event first).
    ///
    /// # Errors
    /// If the query fails.
    pub fn timeline(&self, alert_id: AlertId) -> Result<Option<(AlertRecord, AlertState, Vec<Event>)>, StoreError> {
        let id = alert_id.to_string();
        let row = self
            .conn
            .query_row(
                &format!(
                    "SELECT {ALERT_COLUMNS}, r.state FROM alerts a LEFT JOIN responses r ON r.alert_id = a.alert_id
                     WHERE a.alert_id = ?1"
                ),
                params![id],
                |r| Ok((alert_record(r, 0)?, r.get::<_, Option<String>>(ALERT_COLUMN_COUNT)?)),
            )
            .optional()?;
        let Some((alert, state)) = row else { return Ok(None) };
        let responded = state.is_some();
        let state = match state {
            Some(s) => AlertState::from_name(&s),
            None if alert.cancellation.is_some() => AlertState::Cancelled,
            None => AlertState::Notified,
        };
        let mut stmt = self
            .conn
            .prepare_cached("SELECT at_ms, kind, who, via, note FROM alert_events WHERE alert_id = ?1 ORDER BY id")?;
        let events = stmt
            .query_map(params![id], |r| {
                Ok(Event {
                    at_ms: r.get(0)?,
                    kind: r.get(1)?,
                    who: r.get(2)?,
                    via: Via::from_name(&r.get::<_, String>(3)?),
                    note: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let events = with_received(&alert, responded, events);
        Ok(Some((alert, state, events)))
    }

    /// Bring jobs that another process queued (`sos-collector alerts ack`: dated on its own
    /// clock) onto this run's outbox clock `clock_ms`: an untried job dated after `clock_ms`
    /// is due now and its age counts from now. Returns how many changed.
    ///
    /// # Errors
    /// If the update fails.
    pub fn rebase_foreign_jobs(&mut self, clock_ms: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE outbox SET created_at_ms = ?1, next_attempt_at_ms = MIN(next_attempt_at_ms, ?1)
             WHERE state = 'pending' AND attempts = 0 AND created_at_ms > ?1",
            params![clock_ms],
        )?)
    }

    /// SQLite's `data_version` on this connection: it changes when another connection (another
    /// process: `sos-collector alerts ack`) commits.
    ///
    /// # Errors
    /// If the pragma fails.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self.conn.pragma_query_value(None, "data_version", |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::response::{PlannedResponder, TierPlan};
    use crate::store::tests::alert;
    use crate::store::{AlertUpdate, Cancelled, JobOutcome};

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

    fn open() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("sos.db")).unwrap();
        (dir, db)
    }

    /// The push reads the newest pending notices on every change of the store, on the writer's
    /// connection: with one pending notice per unanswered alert, sorting them all made every
    /// read cost O(pending) (150 ms at 94,000) and delayed every commit behind it.
    #[test]
    fn pending_notices_walk_an_index_and_never_sort() {
        let (_dir, db) = open();
        let plan: Vec<String> = db
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {PENDING_NOTICES}"))
            .unwrap()
            .query_map(params![MAX_PENDING_NOTICES as i64], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(plan.iter().any(|p| p.contains("INDEX sender_notices_pending")), "{plan:?}");
        assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
    }

    /// The push reads its popup targets after every change of an alert: the read must walk the
    /// two partial indexes of what it returns, never the alerts or every response (with a long
    /// history of closed alerts that was all of them, 100 ms at 250,000).
    #[test]
    fn the_popup_read_walks_the_open_and_the_recently_closed_alerts_only() {
        let (_dir, db) = open();
        let sql = format!("EXPLAIN QUERY PLAN {}", popup_targets_sql());
        let plan: Vec<String> = db
            .conn
            .prepare(&sql)
            .unwrap()
            .query_map(params![0, MAX_POPUP_TARGETS as i64], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(plan.iter().any(|p| p.contains("INDEX responses_open")), "{plan:?}");
        assert!(plan.iter().any(|p| p.contains("INDEX responses_closed")), "{plan:?}");
        assert!(
            !plan.iter().any(|p| p.starts_with("SCAN") && !p.contains("INDEX") && !p.starts_with("SCAN t")),
            "{plan:?}"
        );
    }

    /// The popup read by its indexes returns what a read of every alert would, whatever mix of
    /// states, times (ties at the limit included) and changes the store holds.
    #[test]
    fn the_popup_read_returns_what_a_read_of_every_alert_would() {
        let (_dir, mut db) = open();
        let n: u128 = 2_500;
        let alerts: Vec<_> = (1..=n).map(alert).collect();
        db.insert_alerts_planned(&alerts, &plan(), 10_000).unwrap();
        let states = ["received", "notified", "acknowledged", "cancelled", "resolved", "checked"];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let tx = db.conn.transaction().unwrap();
        for i in 1..=n {
            let id = AlertId::from_u128(i).to_string();
            // Few distinct receipt times: many ties, at the limit too.
            let received = 1_000_000 + next(400) as i64 * 1_000;
            // Mostly closed, as a long history is.
            let state = if next(10) < 4 { states[next(4) as usize] } else { states[4 + next(2) as usize] };
            let changed = received + next(2 * POPUP_RECENT_MS as u64) as i64;
            tx.execute("UPDATE alerts SET received_at_ms = ?2 WHERE alert_id = ?1", params![id, received]).unwrap();
            tx.execute(
                "UPDATE responses SET state = ?2, changed_at_ms = ?3, received_at_ms = ?4 WHERE alert_id = ?1",
                params![id, state, changed, received],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        for now_ms in
            [0, 1_000_000 + POPUP_RECENT_MS, 1_200_000 + POPUP_RECENT_MS, 1_400_000 + 2 * POPUP_RECENT_MS, i64::MAX / 2]
        {
            let got: Vec<String> =
                db.popup_targets(now_ms).unwrap().iter().map(|t| t.alert.alert_id.to_string()).collect();
            let want = db.popup_ids_read_from_every_alert(now_ms, MAX_POPUP_TARGETS as i64);
            assert!(!want.is_empty());
            assert_eq!(got, want, "now {now_ms}");
        }
    }

    fn count(db: &Db, sql: &str) -> i64 {
        db.conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn jobs(db: &Db) -> Vec<(String, String, i64, String)> {
        let mut s = db.conn.prepare("SELECT channel, kind, tier, state FROM outbox ORDER BY id").unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().map(Result::unwrap).collect()
    }

    fn j(ch: &str, kind: &str, tier: i64, state: &str) -> (String, String, i64, String) {
        (ch.into(), kind.into(), tier, state.into())
    }

    const ID: u128 = 1;

    #[test]
    fn a_silent_tier_escalates_at_its_deadline_and_reminds_the_earlier_one() {
        let (_d, mut db) = open();
        db.insert_alerts_planned(&[alert(ID)], &plan(), 10_000).unwrap();
        assert_eq!(jobs(&db), vec![j("slack", "alert", 1, "pending")]);
        let due = db.due_jobs("slack", 10_000, 10).unwrap();
        assert_eq!(due[0].alert.audience.mentions, ["<@Sam>"]);
        assert_eq!(db.next_escalation().unwrap(), Some(70_000));
        // Sam is offline and Slack reaches people: no unanswered notice.
        assert!(db.pending_notices().unwrap().is_empty());

        let (fired, _) = db.escalate_due(&plan(), 60_000, 69_999, 100).unwrap();
        assert!(fired.is_empty(), "not before its deadline");
        let (fired, next) = db.escalate_due(&plan(), 61_000, 70_000, 100).unwrap();
        assert_eq!(fired, vec![(AlertId::from_u128(ID), 2, false)]);
        assert_eq!(next, Some(130_000), "after the last tier, its wait paces reminders of every tier");
        assert_eq!(
            jobs(&db),
            vec![
                j("slack", "alert", 1, "pending"),
                j("slack", "reminder", 2, "pending"),
                j("email", "alert", 2, "pending")
            ]
        );
        let email = db.due_jobs("email", 70_000, 10).unwrap();
        assert_eq!(email[0].alert.audience.emails, ["kim@example.com"]);
        assert_eq!(email[0].alert.audience.tier, 2);
        // The reminder waits behind Slack's pending alert, then says how long it has been.
        assert_eq!(db.due_jobs("slack", 70_000, 10).unwrap().len(), 1);
        let first = db.due_jobs("slack", 70_000, 10).unwrap().remove(0);
        db.finish(&[(first.id, JobOutcome::Delivered)], 0).unwrap();
        let reminder = db.due_jobs("slack", 70_000, 10).unwrap().remove(0);
        assert_eq!(reminder.alert.update, Some(AlertUpdate::Reminder { after_secs: 60 }));
        assert_eq!(reminder.alert.audience.mentions, ["<@Sam>"], "tier 1's responders are reminded");
        let t = &db.popup_targets(61_000).unwrap()[0];
        assert_eq!(
            (t.state, t.reminder_seq, t.responders.clone()),
            (AlertState::Notified, 1, vec!["Sam".into(), "Kim".into()])
        );
    }

    #[test]
    fn a_drill_without_tiers_stays_received_and_a_tier_makes_the_row_notified() {
        let (_d, mut db) = open();
        let mut drill = alert(7);
        drill.sos.test = true;
        db.insert_alerts_planned(&[drill, alert(ID)], &plan(), 10_000).unwrap();
        let (_, state, events) = db.timeline(AlertId::from_u128(7)).unwrap().unwrap();
        assert_eq!(state, AlertState::Received, "no tier to fire");
        let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["received", "unanswered"]);
        let row = |db: &Db, id: u128| -> (String, i64, i64, i64, String) {
            db.conn
                .query_row(
                    "SELECT state, seq, tier, reminder_seq, responders FROM responses WHERE alert_id = ?1",
                    params![AlertId::from_u128(id).to_string()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .unwrap()
        };
        assert_eq!(row(&db, 7), ("received".into(), 1, 0, 0, String::new()));
        // A response row left by `store recover` of a lost drill, sent again: the drill is
        // stored, and so is the SOS beside it in the same commit (helper-45: the insert's
        // conflict failed the whole group).
        db.conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        let mut lost = alert(8);
        lost.sos.test = true;
        db.conn
            .execute(
                "INSERT INTO responses (alert_id, state, changed_at_ms) VALUES (?1, 'received', 1)",
                params![lost.sos.alert_id.to_string()],
            )
            .unwrap();
        let stored = db.insert_alerts_planned(&[lost, alert(9)], &plan(), 10_000).unwrap();
        assert_eq!(stored.len(), 2);
        assert_eq!(row(&db, 9).0, "notified");
        // Tier 1 fired as the alert was stored: the row as "received, then notified" made it.
        assert_eq!(row(&db, ID), ("notified".into(), 2, 1, 0, "Sam".into()));
    }

    #[test]
    fn an_acknowledgement_stops_every_page_and_deadline_in_one_transaction() {
        let (_d, mut db) = open();
        db.insert_alerts_planned(&[alert(ID)], &plan(), 10_000).unwrap();
        let id = AlertId::from_u128(ID);
        let r = db.acknowledge(id, "Sam", Via::CommandLine, "on my way\n", 20_000, 20_000).unwrap();
        assert_eq!(r, Transition::New { at_ms: 20_000 });
        assert_eq!(db.next_escalation().unwrap(), None, "no deadline left");
        assert_eq!(jobs(&db), vec![j("slack", "alert", 1, "stopped"), j("slack", "acknowledged", 1, "pending")]);
        let ack = db.due_jobs("slack", 20_000, 10).unwrap().remove(0);
        assert_eq!(ack.alert.update, Some(AlertUpdate::Acknowledged { by: "Sam".into(), note: "on my way".into() }));
        // The deadline is gone: nothing escalates, ever.
        assert!(db.escalate_due(&plan(), 1_000_000, i64::MAX / 2, 100).unwrap().0.is_empty());
        assert_eq!(count(&db, "SELECT count(*) FROM outbox WHERE channel = 'email'"), 0);
        assert_eq!(
            db.acknowledge(id, "Kim", Via::Popup, "", 21_000, 21_000).unwrap(),
            Transition::Already { by: "Sam".into() }
        );
        let notices = db.pending_notices().unwrap();
        assert_eq!(notices.len(), 1);
        assert_eq!((notices[0].1.as_str(), notices[0].2.responder.as_str()), ("00", "Sam"));
        assert_eq!(notices[0].2.event, NoticeEvent::Acknowledged);
        assert!(db.confirm_notice(id, NoticeEvent::Acknowledged, 22_000).unwrap());
        assert!(!db.confirm_notice(id, NoticeEvent::Acknowledged, 22_001).unwrap(), "a repeated receipt");
        assert!(db.pending_notices().unwrap().is_empty());
        assert_eq!(db.acknowledge(AlertId::from_u128(9), "Sam", Via::Popup, "", 0, 0).unwrap(), Transition::Unknown);

        let r = db.resolve(id, "Sam", Via::CommandLine, "false alarm", "", 30_000, 30_000).unwrap();
        assert_eq!(r, Transition::New { at_ms: 30_000 });
        let (_, state, events) = db.timeline(id).unwrap().unwrap();
        assert_eq!(state, AlertState::Resolved);
        let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["received", "notified", "acknowledged", "notice_seen", "resolved"]);
        assert_eq!(
            (events[2].who.as_str(), events[2].via, events[2].note.as_str()),
            ("Sam", Via::CommandLine, "on my way")
        );
    }

    #[test]
    fn the_responders_emailed_by_a_tier_are_told_what_happens_next() {
        // Tier 2 emails Kim; Kim acknowledges: the "acknowledged" email goes to Kim too, and so
        // do the resolution and a cancellation of another alert emailed to Kim.
        let (_d, mut db) = open();
        let mut p = plan();
        p.emergency[0].wait_ms = 0;
        db.insert_alerts_planned(&[alert(ID), alert(2)], &p, 10_000).unwrap();
        db.escalate_due(&p, 10_000, 10_000, 100).unwrap();
        let recipients = |db: &Db, kind: &str, id: u128| -> String {
            db.conn
                .query_row(
                    "SELECT recipients FROM outbox WHERE channel = 'email' AND kind = ?1 AND alert_id = ?2",
                    params![kind, AlertId::from_u128(id).to_string()],
                    |r| r.get(0),
                )
                .unwrap()
        };
        assert_eq!(recipients(&db, "alert", ID), "kim@example.com");
        let id = AlertId::from_u128(ID);
        db.acknowledge(id, "Kim", Via::Popup, "", 20_000, 20_000).unwrap();
        assert_eq!(recipients(&db, "acknowledged", ID), "kim@example.com");
        db.resolve(id, "Kim", Via::Popup, "handled", "", 30_000, 30_000).unwrap();
        assert_eq!(recipients(&db, "resolved", ID), "kim@example.com");
        let c = db.cancel(AlertId::from_u128(2), "pressed by accident", "00", &["slack", "email"], 40_000, 40_000);
        assert_eq!(c.unwrap(), Cancelled::New);
        assert_eq!(recipients(&db, "cancel", 2), "kim@example.com");
    }

    #[test]
    fn nobody_reachable_tells_the_sender_and_fires_every_tier_at_once() {
        let (_d, mut db) = open();
        let mut p = plan();
        p.emergency[0].channels.clear();
        db.insert_alerts_planned(&[alert(ID)], &p, 10_000).unwrap();
        assert_eq!(jobs(&db), vec![j("email", "alert", 2, "pending")]);
        // Every tier fired: what is left is the reminder round, one last-tier wait later.
        assert_eq!(db.next_escalation().unwrap(), Some(70_000));
        let n = db.pending_notices().unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].2.event, NoticeEvent::Unanswered);
        // The round reminds and sets the next; it tells the sender nothing new.
        let (fired, next) = db.escalate_due(&p, 80_000, 70_000, 100).unwrap();
        assert_eq!(fired, vec![(AlertId::from_u128(ID), 3, true)]);
        assert_eq!(next, Some(190_000));
        let (_, _, events) = db.timeline(AlertId::from_u128(ID)).unwrap().unwrap();
        assert_eq!(events.iter().filter(|e| e.kind == "unanswered").count(), 1, "{events:?}");
        assert_eq!(db.pending_notices().unwrap().len(), 1);
        // What `alerts show` and the console list: the round past the two tiers is no "tier 3".
        let labels: Vec<String> =
            db.deliveries(AlertId::from_u128(ID)).unwrap().into_iter().map(|d| d.channel).collect();
        assert_eq!(labels, ["email (tier 2)", "email (reminder, round 3)"]);
        // A drill is reminded once past its last tier, then waits without more rounds.
        let (_d, mut db) = open();
        let mut drill = p.clone();
        drill.drill = drill.emergency.clone();
        let mut test_alert = alert(ID);
        test_alert.sos.test = true;
        db.insert_alerts_planned(&[test_alert], &drill, 10_000).unwrap();
        assert_eq!(
            db.escalate_due(&drill, 80_000, 70_000, 100).unwrap(),
            (vec![(AlertId::from_u128(ID), 3, true)], None)
        );

        // Sam's desk online but not a responder desktop (no `responder = true`: it shows no
        // popups): nobody is reached.
        let (_d, mut db) = open();
        db.conn
            .execute(
                "INSERT INTO enrolled (agent_id, name, host, enrolled_at_ms, key, last_seen_ms)
                 VALUES ('a1', 'sam-desk', 'desk', 0, 'k', 900)",
                [],
            )
            .unwrap();
        db.insert_alerts_planned(&[alert(ID)], &p, 10_000).unwrap();
        assert_eq!(db.pending_notices().unwrap()[0].2.event, NoticeEvent::Unanswered);

        // With Sam's responder desktop online, tier 1 reaches him: no notice, a deadline.
        let (_d, mut db) = open();
        db.conn
            .execute(
                "INSERT INTO enrolled (agent_id, name, host, enrolled_at_ms, key, last_seen_ms, responder_seen_ms)
                 VALUES ('a1', 'sam-desk', 'desk', 0, 'k', 900, 900)",
                [],
            )
            .unwrap();
        db.insert_alerts_planned(&[alert(ID)], &p, 10_000).unwrap();
        assert!(db.pending_notices().unwrap().is_empty());
        assert_eq!(db.next_escalation().unwrap(), Some(70_000));
    }

    #[test]
    fn a_cancellation_mid_escalation_stops_it_and_stays_open_until_checked() {
        let (_d, mut db) = open();
        db.insert_alerts_planned(&[alert(ID)], &plan(), 10_000).unwrap();
        let id = AlertId::from_u128(ID);
        assert_eq!(db.cancel(id, "oops", "00", &["log", "slack", "email"], 20_000, 20_000).unwrap(), Cancelled::New);
        assert_eq!(db.next_escalation().unwrap(), None);
        assert_eq!(
            jobs(&db),
            vec![j("slack", "alert", 1, "pending"), j("slack", "cancel", 1, "pending")],
            "only Slack was told"
        );
        let t = &db.popup_targets(20_000).unwrap()[0];
        assert_eq!(t.state, AlertState::Cancelled);
        assert_eq!(
            db.acknowledge(id, "Sam", Via::Popup, "", 21_000, 21_000).unwrap(),
            Transition::Closed(AlertState::Cancelled)
        );
        assert_eq!(
            db.mark_checked(id, "Sam", Via::CommandLine, "she is fine", 22_000).unwrap(),
            Transition::New { at_ms: 22_000 }
        );
        assert_eq!(
            db.mark_checked(id, "Kim", Via::CommandLine, "", 23_000).unwrap(),
            Transition::Already { by: "Sam".into() }
        );
        assert!(db.popup_targets(22_000 + POPUP_RECENT_MS + 1).unwrap().is_empty(), "closed and old");
        assert_eq!(db.popup_targets(22_000).unwrap().len(), 1, "closed but recent: popups get replaced");
    }

    #[test]
    fn a_store_failing_mid_acknowledgement_changes_nothing() {
        let (_d, mut db) = open();
        db.insert_alerts_planned(&[alert(ID)], &plan(), 10_000).unwrap();
        // The last write of the transaction fails, as a full disk would.
        db.conn
            .execute_batch(
                "CREATE TRIGGER full BEFORE INSERT ON sender_notices BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
            )
            .unwrap();
        let id = AlertId::from_u128(ID);
        assert!(db.acknowledge(id, "Sam", Via::Popup, "", 20_000, 20_000).is_err());
        assert_eq!(db.next_escalation().unwrap(), Some(70_000), "the deadline stays");
        assert_eq!(jobs(&db), vec![j("slack", "alert", 1, "pending")]);
        assert_eq!(db.timeline(id).unwrap().unwrap().1, AlertState::Notified);
        db.conn.execute_batch("DROP TRIGGER full").unwrap();
        assert!(matches!(db.acknowledge(id, "Sam", Via::Popup, "", 20_000, 20_000).unwrap(), Transition::New { .. }));
    }

    #[test]
    fn deadlines_set_before_a_clock_step_back_are_rebased() {
        let (_d, mut db) = open();
        // Set at 3_600_000 (an hour ahead of this run's clock), due 60 s later.
        db.insert_alerts_planned(&[alert(ID)], &plan(), 3_600_000).unwrap();
        assert_eq!(db.rebase_escalations(1000).unwrap(), 1);
        assert_eq!(db.next_escalation().unwrap(), Some(61_000), "due one wait after now, not an hour late");
        assert_eq!(db.rebase_escalations(1000).unwrap(), 0);
    }

    #[test]
    fn a_thousand_alerts_escalate_in_bounded_batches() {
        let (_d, mut db) = open();
        let alerts: Vec<_> = (1..=1000).map(alert).collect();
        db.insert_alerts_planned(&alerts, &plan(), 0).unwrap();
        let mut rounds = 0;
        loop {
            let (fired, _) = db.escalate_due(&plan(), 60_000, 60_000, 256).unwrap();
            assert!(fired.len() <= 256);
            if fired.is_empty() {
                break;
            }
            rounds += 1;
        }
        assert_eq!(rounds, 4);
        assert_eq!(count(&db, "SELECT count(*) FROM outbox WHERE channel = 'email'"), 1000);
        // Each now waits for its reminder round, one wait after its last tier.
        assert_eq!(count(&db, "SELECT count(*) FROM escalations WHERE next_tier = 2 AND due_at_ms = 120000"), 1000);
    }
}
