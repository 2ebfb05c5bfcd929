//! Notification channels: where an alert goes once stored.
//!
//! Each channel delivers a batch of one or more alerts as one message (several only during a
//! storm, see [`crate::outbox`]) and says whether a failure is worth retrying. Each says how
//! many alerts one message can carry within the service's limits ([`Channel::fits`]) and how
//! often it may send ([`Channel::min_interval`]).

mod email;
mod format;
mod slack;

use std::time::Duration;

pub use email::Email;
pub use format::{describe, enrolled_line, identity_warning, when_utc};
pub use slack::Slack;

use crate::store::AlertRecord;

/// Why a delivery did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying: the service is down, busy, rate-limiting or unreachable.
    #[error("{reason}")]
    Transient {
        /// What happened.
        reason: String,
        /// The earliest the service asked us to come back (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help (wrong webhook, mailbox refused, a message the service refuses):
    /// recorded as failed (a message of several alerts is split first, see [`crate::outbox`]).
    #[error("{reason}")]
    Permanent {
        /// What happened.
        reason: String,
    },
    /// The request was sent but no answer came in time: the service may have shown it.
    /// Retried at a slower pace, a bounded number of times (each retry may be a duplicate).
    #[error("{reason}")]
    Unknown {
        /// What happened.
        reason: String,
    },
}

impl DeliveryError {
    pub(crate) fn transient(reason: impl Into<String>) -> Self {
        DeliveryError::Transient { reason: reason.into(), retry_after: None }
    }
}

/// The channels a collector can notify, in the order each alert is delivered: the one list of
/// channel names (the store's `outbox.channel`, `sos-collector alerts`, the configuration summary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// The collector's own log, always on.
    Log,
    /// A Slack incoming webhook (`[notify.slack]`).
    Slack,
    /// SMTP email (`[notify.email]`).
    Email,
}

impl ChannelKind {
    /// Every channel, in delivery order.
    pub const ALL: [ChannelKind; 3] = [ChannelKind::Log, ChannelKind::Slack, ChannelKind::Email];

    /// The name used in the store and in `sos-collector alerts`.
    pub const fn name(self) -> &'static str {
        match self {
            ChannelKind::Log => "log",
            ChannelKind::Slack => "slack",
            ChannelKind::Email => "email",
        }
    }

    /// The channel called `name` ([`ChannelKind::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        ChannelKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A configured channel.
#[derive(Debug)]
pub enum Channel {
    /// The collector's own log, always on.
    Log,
    /// A Slack incoming webhook.
    Slack(Slack),
    /// SMTP email (boxed: the transport is large and there is one per collector).
    Email(Box<Email>),
}

impl Channel {
    /// Which channel this is.
    pub fn kind(&self) -> ChannelKind {
        match self {
            Channel::Log => ChannelKind::Log,
            Channel::Slack(_) => ChannelKind::Slack,
            Channel::Email(_) => ChannelKind::Email,
        }
    }

    /// The name used in the store and in `sos-collector alerts` ([`ChannelKind::name`]).
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// How many of `alerts`, from the first, one message can carry within the service's limits
    /// (at least one).
    pub fn fits(&self, alerts: &[AlertRecord]) -> usize {
        let n = match self {
            Channel::Log => alerts.len(),
            Channel::Slack(_) => Slack::fits(alerts),
            Channel::Email(_) => email::fits(alerts),
        };
        n.clamp(1, alerts.len().max(1))
    }

    /// The least time between two messages (the service's rate limit).
    pub fn min_interval(&self) -> Duration {
        match self {
            Channel::Slack(_) => slack::MIN_INTERVAL,
            Channel::Log | Channel::Email(_) => Duration::ZERO,
        }
    }

    /// What an attempt cut off after `after` means. Slack: the post was sent, so it may have
    /// been shown ([`DeliveryError::Unknown`]). Email: almost always a server stalled
    /// mid-session, before it took the message (lettre does not say at which step), so it is
    /// retried at the usual pace.
    pub fn timed_out(&self, after: Duration) -> DeliveryError {
        let reason = format!("{}: no answer within {} s", self.name(), after.as_secs());
        match self {
            Channel::Slack(_) => DeliveryError::Unknown { reason },
            Channel::Log | Channel::Email(_) => DeliveryError::transient(reason),
        }
    }

    /// Tell the people behind this channel something about the collector itself (its store is
    /// failing, it is stopping): once, bounded by the channel's attempt timeout, retried only
    /// when the service asks to wait (Slack 429).
    /// The log channel logs it.
    ///
    /// # Errors
    /// Why the channel did not take it.
    pub async fn notice(&self, subject: &str, text: &str) -> Result<(), String> {
        match self {
            Channel::Log => {
                tracing::error!(target: "sos::collector", "{subject}: {text}");
                Ok(())
            }
            Channel::Slack(s) => s.notice(&format!("⚠️ {subject}\n{text}")).await,
            Channel::Email(e) => e.notice(subject, text).await,
        }
    }

    /// Deliver `alerts` as one message.
    ///
    /// # Errors
    /// A [`DeliveryError`] saying whether to retry.
    pub async fn deliver(&self, alerts: &[AlertRecord]) -> Result<(), DeliveryError> {
        match self {
            Channel::Log => {
                for a in alerts {
                    tracing::warn!(
                        target: "sos::alert",
                        alert_id = %a.alert_id,
                        test = a.test,
                        user = ?a.user,
                        host = ?a.host,
                        ip = ?a.ip,
                        location = ?a.location,
                        text = ?a.message,
                        enrolled = %format::enrolled_line(a),
                        triggered_at = %when_utc(a.triggered_at),
                        "{}",
                        describe(a)
                    );
                }
                Ok(())
            }
            Channel::Slack(s) => s.deliver(alerts).await,
            Channel::Email(e) => e.deliver(alerts).await,
        }
    }
}
