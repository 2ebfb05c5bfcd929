//! The responder loop's part of the store: the life of an alert after it is stored (who was
//! notified, who acknowledged, resolved, cancelled, checked), its append-only timeline, the
//! escalation deadlines, and the notices owed to senders.
//!
//! [`Response`] is the trait the rest of the collector uses (the UDP path and pushes, the
//! escalation engine); [`SqliteStore`] implements it over the SQLite writer thread (the SQL is in
//! `sqlite/response.rs`). Every method that changes an alert's response state notifies
//! [`SqliteStore::changes`] after its commit.

use std::future::Future;

use sos_shared::protocol::{NoticeEvent, ResponderNotice};
use sos_shared::AlertId;

use super::{AlertRecord, SqliteStore, StoreError};
use crate::config::Config;

/// Through what a transition was made: the `via` of a timeline event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// The popup on a responder's desktop (or `sos-agent respond`): an authenticated `respond`.
    Popup,
    /// The web console.
    Console,
    /// `sos-collector alerts …` on the collector's host.
    CommandLine,
    /// A link in a channel's message.
    ChannelLink,
    /// The sender's agent (a cancellation, a notice seen).
    Sender,
    /// The collector itself (received, tiers fired, reminders).
    Collector,
    /// At a site collector that forwarded the alert here (a centre): its `forward_update`.
    Site,
    /// At the centre this site forwarded the alert to: its `responder_notice` to the site.
    Centre,
}

impl Via {
    /// Every value, for parsing.
    pub const ALL: [Via; 8] = [
        Via::Popup,
        Via::Console,
        Via::CommandLine,
        Via::ChannelLink,
        Via::Sender,
        Via::Collector,
        Via::Site,
        Via::Centre,
    ];

    /// The name in the store and in `alerts show`.
    pub const fn name(self) -> &'static str {
        match self {
            Via::Popup => "popup",
            Via::Console => "console",
            Via::CommandLine => "command_line",
            Via::ChannelLink => "channel_link",
            Via::Sender => "sender",
            Via::Collector => "collector",
            Via::Site => "site",
            Via::Centre => "centre",
        }
    }

    /// The value called `name` ([`Via::name`]); an unknown name reads as [`Via::Collector`].
    pub fn from_name(name: &str) -> Via {
        Via::ALL.into_iter().find(|v| v.name() == name).unwrap_or(Via::Collector)
    }
}

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertState {
    /// Stored; no tier has fired yet.
    Received,
    /// At least one tier was notified; nobody acknowledged yet.
    Notified,
    /// A responder said "I'm coming".
    Acknowledged,
    /// Closed by a responder with an outcome.
    Resolved,
    /// Withdrawn by the sender: stays open until a responder checked in person (a person under
    /// threat can be forced to cancel).
    Cancelled,
    /// A cancelled alert that a responder checked in person.
    Checked,
}

impl AlertState {
    /// Every value, for parsing.
    pub const ALL: [AlertState; 6] = [
        AlertState::Received,
        AlertState::Notified,
        AlertState::Acknowledged,
        AlertState::Resolved,
        AlertState::Cancelled,
        AlertState::Checked,
    ];

    /// The name in the store and in `alerts show`.
    pub const fn name(self) -> &'static str {
        match self {
            AlertState::Received => "received",
            AlertState::Notified => "notified",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
            AlertState::Cancelled => "cancelled",
            AlertState::Checked => "checked",
        }
    }

    /// The value called `name`; an unknown name reads as [`AlertState::Notified`] (the state
    /// of an alert stored before the responder loop).
    pub fn from_name(name: &str) -> AlertState {
        AlertState::ALL.into_iter().find(|s| s.name() == name).unwrap_or(AlertState::Notified)
    }

    /// Nobody acknowledged it yet and it is not withdrawn: escalation goes on.
    pub fn unanswered(self) -> bool {
        matches!(self, AlertState::Received | AlertState::Notified)
    }

    /// Still needs someone: unanswered, acknowledged but not resolved, or cancelled but not checked.
    pub fn open(self) -> bool {
        !matches!(self, AlertState::Resolved | AlertState::Checked)
    }
}

/// What became of an acknowledgement (and of a resolve or a check: the same outcomes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Recorded now, at `at_ms` (ms since the Unix epoch).
    New {
        /// When.
        at_ms: i64,
    },
    /// Someone (`by`) did it already; nothing changed.
    Already {
        /// The responder who did.
        by: String,
    },
    /// The alert is past this (cancelled, resolved, checked; for a check: not cancelled).
    Closed(AlertState),
    /// No such alert.
    Unknown,
}

/// The outcome of [`Response::acknowledge`].
pub type Acknowledged = Transition;

/// One event of an alert's timeline (append-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When, ms since the Unix epoch (the collector's wall clock).
    pub at_ms: i64,
    /// `received`, `notified`, `reminded`, `acknowledged`, `resolved`, `cancelled`, `checked`,
    /// `unanswered`, `popup_shown`, `notice_seen`.
    pub kind: String,
    /// Who: a responder's name, `sender`, `collector`.
    pub who: String,
    /// Through what.
    pub via: Via,
    /// Free text: a note, an outcome, the targets of a tier.
    pub note: String,
}

/// An alert responder desktops should show (or stop showing): what push broadcasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PopupTarget {
    /// The alert.
    pub alert: AlertRecord,
    /// Its state.
    pub state: AlertState,
    /// Who acknowledged or resolved it; empty otherwise.
    pub by: String,
    /// Their note (for a resolve: the outcome, then the note).
    pub note: String,
    /// Grows with every change of the alert (a tier fired, a reminder, an ack, a resolve, a
    /// cancel, a check).
    pub seq: u64,
    /// The configured responder names notified so far (every tier reached).
    pub responders: Vec<String>,
    /// Bumped each time a later tier reminds earlier ones.
    pub reminder_seq: u64,
}

/// The escalation policy as the store applies it: built from the configuration once, so that
/// firing a tier is one transaction with no configuration lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsePlan {
    /// Tiers of a real alert.
    pub emergency: Vec<TierPlan>,
    /// Tiers of a drill.
    pub drill: Vec<TierPlan>,
    /// A responder agent is online while it sent an authentic datagram within this long, ms.
    pub offline_after_ms: i64,
}

/// One tier, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierPlan {
    /// The channels it notifies (store names), in delivery order.
    pub channels: Vec<&'static str>,
    /// The responders it reaches.
    pub responders: Vec<PlannedResponder>,
    /// How long to wait for an acknowledgement before the next tier, ms.
    pub wait_ms: i64,
}

/// A responder of a tier, as the store needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedResponder {
    /// The configured name.
    pub name: String,
    /// The Slack mention, if any.
    pub chat: Option<String>,
    /// The email address, if any.
    pub email: Option<String>,
    /// The phone number, if any (the SMS channel's).
    pub phone: Option<String>,
    /// Enrolled agent names of this responder's desktops.
    pub agents: Vec<String>,
}

impl PlannedResponder {
    /// Where `channel` reaches this responder, if it can: the email channel mails `email`, the
    /// SMS channel texts `phone`; the others reach a channel, not a person.
    pub fn address(&self, channel: &str) -> Option<&str> {
        match channel {
            "email" => self.email.as_deref(),
            "sms" => self.phone.as_deref(),
            _ => None,
        }
    }
}

impl ResponsePlan {
    /// The plan of a collector configuration.
    pub fn from_config(config: &Config) -> ResponsePlan {
        let configured = config.channel_names();
        let tiers = |policy: &[crate::config::Tier]| {
            policy
                .iter()
                .map(|t| TierPlan {
                    channels: t.channels(&configured),
                    responders: t
                        .responders(&config.responders)
                        .into_iter()
                        .map(|r| PlannedResponder {
                            name: r.name.clone(),
                            chat: r.chat.clone(),
                            email: r.email.clone(),
                            phone: r.phone.clone(),
                            agents: r.agents.clone(),
                        })
                        .collect(),
                    wait_ms: t.wait.as_millis() as i64,
                })
                .collect()
        };
        // A site forwards every alert to its centre at once, whatever its escalation names: in
        // the first tier of both policies, and only there (a policy that left it out would
        // forward drills but not real alerts, or only after the first tier's wait).
        let forwarding = |mut plan: Vec<TierPlan>| {
            if configured.contains(&"forward") {
                for (i, t) in plan.iter_mut().enumerate() {
                    t.channels.retain(|c| *c != "forward");
                    if i == 0 {
                        t.channels.push("forward");
                    }
                }
            }
            plan
        };
        ResponsePlan {
            emergency: forwarding(tiers(&config.escalation.emergency)),
            drill: forwarding(tiers(&config.escalation.drill)),
            offline_after_ms: config.escalation.responder_offline_after.as_millis() as i64,
        }
    }

    /// One tier of `channels` and nobody else: a collector with no responders configured.
    pub fn channels_only(channels: &[&'static str]) -> ResponsePlan {
        let tier = TierPlan { channels: channels.to_vec(), responders: Vec::new(), wait_ms: 60_000 };
        ResponsePlan { emergency: vec![tier.clone()], drill: vec![tier], offline_after_ms: 150_000 }
    }

    /// The tiers of an alert.
    pub fn policy(&self, test: bool) -> &[TierPlan] {
        if test {
            &self.drill
        } else {
            &self.emergency
        }
    }
}

/// The chat mentions of `tiers`' responders, each once, one a line: whom a reminder names.
pub fn mentions_of(tiers: &[TierPlan]) -> String {
    let mut chats: Vec<&str> = Vec::new();
    for chat in tiers.iter().flat_map(|t| &t.responders).filter_map(|r| r.chat.as_deref()) {
        if !chats.contains(&chat) {
            chats.push(chat);
        }
    }
    chats.join("\n")
}

/// The longest wait between two reminders of an alert nobody acknowledged after its last tier
/// (unless the last tier's own wait is longer).
pub const REMIND_AGAIN_MAX_MS: i64 = 3_600_000;

/// How long after round `index` of `tiers` fired the next round is due, if one is. Rounds
/// `0..len` are the tiers: the wait is that tier's. Nobody acknowledged after the last: every
/// tier is reminded again, and again, while the alert stays unanswered (PRODUCT.md: an alert
/// nobody acknowledges escalates until someone does) — first after the last tier's wait, then
/// twice as long each time, at most [`REMIND_AGAIN_MAX_MS`]: never a loop of pages, never
/// silence. A drill (`test`) is reminded once past its last tier, then waits for someone
/// without more rounds: a check of a new desk nobody acknowledged must not page for ever.
pub fn wait_after(tiers: &[TierPlan], index: usize, test: bool) -> Option<i64> {
    let last = tiers.len().checked_sub(1)?;
    let base = tiers[last].wait_ms.max(1);
    if index <= last {
        return Some(tiers[index].wait_ms);
    }
    if test {
        return None;
    }
    let doublings = (index - last).min(32) as u32;
    Some(base.saturating_mul(1_i64 << doublings).min(REMIND_AGAIN_MAX_MS.max(base)))
}

/// Who a job's message is for, beyond the channel's own audience: fixed when its tier fired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audience {
    /// The escalation tier (1-based) the job belongs to.
    pub tier: u32,
    /// Chat mentions of the tier's responders (Slack).
    pub mentions: Vec<String>,
    /// The tier's responders as this job's channel reaches them, in addition to the channel's
    /// own recipients ([`PlannedResponder::address`]): email addresses for email, phone numbers
    /// for SMS, none for the others.
    pub emails: Vec<String>,
}

/// What a job says about its alert when it is not the alert itself nor its cancellation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertUpdate {
    /// Nobody acknowledged yet: a later tier fired, and this channel of an earlier tier is reminded.
    Reminder {
        /// Seconds since the alert was received when the reminder was queued.
        after_secs: u64,
    },
    /// A responder acknowledged.
    Acknowledged {
        /// Their name.
        by: String,
        /// Their note.
        note: String,
    },
    /// A responder resolved it.
    Resolved {
        /// Their name.
        by: String,
        /// The outcome.
        outcome: String,
        /// Their note.
        note: String,
    },
}

/// The response store: what the responder loop reads and writes. Implemented by [`SqliteStore`]
/// (SQLite); a PostgreSQL implementation comes later.
pub trait Response {
    /// A responder acknowledges: in one transaction, the event, the state, every pending tier
    /// deadline and every pending alert or reminder job of the alert stopped, "acknowledged by
    /// NAME" queued to the channels that were notified, and the sender's notice queued.
    fn acknowledge(
        &self,
        alert_id: AlertId,
        responder: String,
        via: Via,
        note: String,
    ) -> impl Future<Output = Result<Acknowledged, StoreError>> + Send;

    /// A responder resolves it with an outcome: as [`Response::acknowledge`] (everything
    /// pending stops), "resolved by NAME" to the notified channels, the sender's notice.
    fn resolve(
        &self,
        alert_id: AlertId,
        responder: String,
        via: Via,
        outcome: String,
        note: String,
    ) -> impl Future<Output = Result<Transition, StoreError>> + Send;

    /// A responder checked a cancelled alert in person: it is closed.
    fn mark_checked(
        &self,
        alert_id: AlertId,
        responder: String,
        via: Via,
        note: String,
    ) -> impl Future<Output = Result<Transition, StoreError>> + Send;

    /// Alerts that are open or changed within the last hour, for responder desktops.
    fn popup_targets(&self, now_ms: i64) -> impl Future<Output = Result<Vec<PopupTarget>, StoreError>> + Send;

    /// Notices owed to senders and not yet confirmed: (alert, principal — `agent:<id>` or the
    /// site key's id —, notice).
    fn pending_notices(
        &self,
    ) -> impl Future<Output = Result<Vec<(AlertId, String, ResponderNotice)>, StoreError>> + Send;

    /// The sender's agent confirmed the notice.
    fn confirm_notice(
        &self,
        alert_id: AlertId,
        event: NoticeEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// An alert, its state and its timeline.
    #[allow(clippy::type_complexity)]
    fn timeline(
        &self,
        alert_id: AlertId,
    ) -> impl Future<Output = Result<Option<(AlertRecord, AlertState, Vec<Event>)>, StoreError>> + Send;

    /// Append an event to an alert's timeline (`popup_shown` by push).
    fn record_event(
        &self,
        alert_id: AlertId,
        kind: &'static str,
        who: String,
        via: Via,
        note: String,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl Response for SqliteStore {
    async fn acknowledge(
        &self,
        alert_id: AlertId,
        responder: String,
        via: Via,
        note: String,
    ) -> Result<Acknowledged, StoreError> {
        let (now, clock) = (super::now_ms(), super::outbox_clock_ms());
        let r = self.exec(move |db| db.acknowledge(alert_id, &responder, via, &note, now, clock)).await?;
        if matches!(r, Transition::New { .. }) {
            self.changed(true);
        }
        Ok(r)
    }

    async fn resolve(
        &self,
        alert_id: AlertId,
        responder: String,
        via: Via,
        outcome: String,
        note: String,
    ) -> Result<Transition, StoreError> {
        let (now, clock) = (super::now_ms(), super::outbox_clock_ms());
        let r = self.exec(move |db| db.resolve(alert_id, &responder, via, &outcome, &note, now, clock)).await?;
        if matches!(r, Transition::New { .. }) {
            self.changed(true);
        }
        Ok(r)
    }

    async fn mark_checked(
        &self,
        alert_id: AlertId,
        responder: String,
        via: Via,
        note: String,
    ) -> Result<Transition, StoreError> {
        let r = self.exec(move |db| db.mark_checked(alert_id, &responder, via, &note, super::now_ms())).await?;
        if matches!(r, Transition::New { .. }) {
            self.changed(false);
        }
        Ok(r)
    }

    async fn popup_targets(&self, now_ms: i64) -> Result<Vec<PopupTarget>, StoreError> {
        self.exec(move |db| db.popup_targets(now_ms)).await
    }

    async fn pending_notices(&self) -> Result<Vec<(AlertId, String, ResponderNotice)>, StoreError> {
        self.exec(|db| db.pending_notices()).await
    }

    async fn confirm_notice(&self, alert_id: AlertId, event: NoticeEvent) -> Result<(), StoreError> {
        let changed = self.exec(move |db| db.confirm_notice(alert_id, event, super::now_ms())).await?;
        if changed {
            self.changed(false);
        }
        Ok(())
    }

    async fn timeline(&self, alert_id: AlertId) -> Result<Option<(AlertRecord, AlertState, Vec<Event>)>, StoreError> {
        self.exec(move |db| db.timeline(alert_id)).await
    }

    async fn record_event(
        &self,
        alert_id: AlertId,
        kind: &'static str,
        who: String,
        via: Via,
        note: String,
    ) -> Result<(), StoreError> {
        self.exec(move |db| db.record_event(alert_id, kind, &who, via, &note, super::now_ms())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers(waits: &[i64]) -> Vec<TierPlan> {
        waits.iter().map(|&wait_ms| TierPlan { channels: vec!["log"], responders: vec![], wait_ms }).collect()
    }

    #[test]
    fn rounds_past_the_last_tier_double_up_to_an_hour_and_a_drill_has_one() {
        let t = tiers(&[30_000, 60_000]);
        // The tiers: each its own wait (the last's paces the first round).
        assert_eq!(wait_after(&t, 0, false), Some(30_000));
        assert_eq!(wait_after(&t, 1, false), Some(60_000));
        // Past the last: twice as long each round, at most an hour, for ever.
        let rounds: Vec<i64> = (2..10).map(|i| wait_after(&t, i, false).unwrap()).collect();
        assert_eq!(rounds, [120_000, 240_000, 480_000, 960_000, 1_920_000, 3_600_000, 3_600_000, 3_600_000]);
        assert_eq!(wait_after(&t, usize::MAX, false), Some(REMIND_AGAIN_MAX_MS), "no overflow");
        // A last tier that waits longer than an hour keeps its own wait.
        let day = tiers(&[86_400_000]);
        assert_eq!(wait_after(&day, 1, false), Some(86_400_000));
        assert_eq!(wait_after(&day, 5, false), Some(86_400_000));
        // A drill: its tiers, one round past the last, then no more.
        assert_eq!(wait_after(&t, 1, true), Some(60_000));
        assert_eq!(wait_after(&t, 2, true), None);
        assert_eq!(wait_after(&[], 0, false), None);
    }
}
