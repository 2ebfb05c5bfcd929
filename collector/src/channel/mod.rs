//! Notification channels: where an alert goes once stored.
//!
//! Every channel implements [`Notifier`]: it delivers a batch of one or more alerts as one
//! message (several only during a storm, see [`crate::outbox`]) and says whether a failure is
//! worth retrying. Each says how many alerts one message can carry within the service's limits
//! ([`Notifier::fits`]) and how often it may send ([`Notifier::min_interval`]).
//!
//! Adding a channel: its own file implementing [`Notifier`], its `[notify.NAME]` section in
//! `config/channels.rs`, and one line in [`build`] (and its name in [`NAMES`]).

mod email;
mod format;
mod forward;
mod http;
mod ntfy;
mod slack;
mod sms;
mod teams;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

pub use email::Email;
pub use format::{describe, enrolled_line, identity_warning, when_utc};
pub use forward::Forward;
pub use ntfy::Ntfy;
pub use slack::Slack;
pub use sms::Sms;
pub use teams::Teams;
pub use webhook::{sign as sign_webhook, Webhook};

use crate::config::Config;
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

/// A future a [`Notifier`] returns (the trait stays object-safe).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// One way to reach responders. Adding a channel: its own file implementing this, plus its
/// config section; [`build`] is the one place channels are made.
pub trait Notifier: Send + Sync + std::fmt::Debug {
    /// The name in the store (`outbox.channel`), in config (`[notify.NAME]`, `channel:NAME`),
    /// in `/metrics` and in `sos-collector alerts`.
    fn name(&self) -> &'static str;

    /// How many of `alerts`, from the first, one message can carry (at least 1). Default: all.
    fn fits(&self, alerts: &[AlertRecord]) -> usize {
        alerts.len()
    }

    /// Least time between two messages (the service's rate limit). Default: zero.
    fn min_interval(&self) -> Duration {
        Duration::ZERO
    }

    /// What an attempt cut off after `after` means (default: Transient, retried at the usual
    /// pace). A channel whose request may have been shown says [`DeliveryError::Unknown`].
    fn timed_out(&self, after: Duration) -> DeliveryError {
        DeliveryError::transient(format!("{}: no answer within {} s", self.name(), after.as_secs()))
    }

    /// Deliver `alerts` as one message.
    fn deliver<'a>(&'a self, alerts: &'a [AlertRecord]) -> BoxFuture<'a, Result<(), DeliveryError>>;

    /// An administrative notice (store failing, endpoint disabled, agent silent…): once,
    /// bounded by the caller's timeout, retried only when the service asks to wait.
    fn notice<'a>(&'a self, subject: &'a str, text: &'a str) -> BoxFuture<'a, Result<(), String>>;

    /// Whether the outbox gives up on this channel's jobs after `[outbox] give_up_after`
    /// (default: yes). The `forward` channel does not: the centre must get every alert, and it
    /// answers a repeat `duplicate`.
    fn gives_up(&self) -> bool {
        true
    }
}

/// A configured channel.
pub type Channel = Arc<dyn Notifier>;

/// What channels need from the rest of the collector, given to every channel when it is made.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// Signed acknowledge links (issue 17 §4), when `[http] public_url` is set.
    pub links: Option<crate::links::AckLinks>,
    /// Where a channel tells administrators about itself (an endpoint that asked to be
    /// disabled): the service passes it on through every other channel.
    pub admin: Option<tokio::sync::mpsc::UnboundedSender<AdminNotice>>,
    /// A site's link to its centre, when `[forward]` is configured: the `forward` channel.
    pub forwarder: Option<Arc<crate::forward::Forwarder>>,
}

/// Something a channel must tell administrators through the other channels.
#[derive(Debug, Clone)]
pub struct AdminNotice {
    /// The channel it is about (not told through it).
    pub from: &'static str,
    /// Its subject.
    pub subject: &'static str,
    /// What happened and what to do (never a secret).
    pub text: String,
}

/// Every channel name, in delivery order: the one list of channel names (the store's
/// `outbox.channel`, `channel:NAME` in `[escalation]`, `sos-collector alerts`, /metrics).
pub const NAMES: &[&str] = &["log", "slack", "email", "sms", "teams", "ntfy", "webhook", "forward"];

/// A channel that could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the {channel} channel: {message}")]
pub struct SetupError {
    /// Which channel.
    pub channel: &'static str,
    /// What went wrong (never a secret).
    pub message: String,
}

/// The configured channels, in delivery order (the log first, always): the one place channels
/// are made.
///
/// # Errors
/// A [`SetupError`] naming the channel that cannot be set up.
pub fn build(config: &Config, ctx: &Context) -> Result<Vec<Channel>, SetupError> {
    let timeout = config.outbox.attempt_timeout;
    let n = &config.notify;
    let fail = |channel: &'static str| move |e: String| SetupError { channel, message: e };
    let mut out: Vec<Channel> = vec![Arc::new(Log)];
    if let Some(s) = &n.slack {
        out.push(Arc::new(
            Slack::new(s.clone(), timeout, ctx.links.clone()).map_err(|e| fail("slack")(e.to_string()))?,
        ));
    }
    if let Some(s) = &n.email {
        out.push(Arc::new(
            Email::new(s.clone(), timeout, ctx.links.clone()).map_err(|e| fail("email")(e.to_string()))?,
        ));
    }
    if let Some(s) = &n.sms {
        out.push(Arc::new(Sms::new(s.clone(), timeout, ctx).map_err(fail("sms"))?));
    }
    if let Some(s) = &n.teams {
        out.push(Arc::new(Teams::new(s.clone(), timeout, ctx).map_err(fail("teams"))?));
    }
    if let Some(s) = &n.ntfy {
        out.push(Arc::new(Ntfy::new(s.clone(), timeout, ctx).map_err(fail("ntfy"))?));
    }
    if let Some(s) = &n.webhook {
        let w = Webhook::new(s.clone(), timeout, config.data_dir.clone(), ctx).map_err(fail("webhook"))?;
        out.push(Arc::new(w));
    }
    if let Some(f) = &ctx.forwarder {
        out.push(Arc::new(Forward::new(f.clone())));
    }
    debug_assert_eq!(
        out.iter().map(|c| c.name()).collect::<Vec<_>>(),
        config.channel_names(),
        "build and Config::channel_names list the same channels"
    );
    Ok(out)
}

/// The collector's own log, always on.
#[derive(Debug)]
pub struct Log;

impl Notifier for Log {
    fn name(&self) -> &'static str {
        "log"
    }

    fn deliver<'a>(&'a self, alerts: &'a [AlertRecord]) -> BoxFuture<'a, Result<(), DeliveryError>> {
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
        Box::pin(std::future::ready(Ok(())))
    }

    fn notice<'a>(&'a self, subject: &'a str, text: &'a str) -> BoxFuture<'a, Result<(), String>> {
        tracing::error!(target: "sos::collector", "{subject}: {text}");
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::store::AlertRecord;

    /// An ordinary alert, for the channels' tests.
    pub(crate) fn alert(i: u128) -> AlertRecord {
        AlertRecord {
            alert_id: sos_shared::AlertId::from_u128(i),
            test: false,
            triggered_at: 1_700_000_000,
            received_at_ms: 1_700_000_000_000,
            user: "alice".into(),
            host: "desk-12".into(),
            ip: "10.0.0.12".into(),
            location: "Reception".into(),
            message: String::new(),
            source: String::new(),
            enrolled: None,
            cancellation: None,
            audience: Default::default(),
            update: None,
            site: None,
        }
    }
}
