//! ntfy (<https://ntfy.sh> or a server of your own): a JSON publish to the server's root.
//!
//! - Alerts, reminders and escalations at priority 5 (urgent: the phone rings through Do Not
//!   Disturb where allowed), acknowledgements, resolutions and cancellations at 3.
//! - With acknowledge links (`[http] public_url`), an "I'm responding" view action opening the
//!   alert's signed link.
//! - The message is at most [`MAX_MESSAGE_BYTES`] (ntfy's limit; beyond it the server turns
//!   it into an attachment or refuses it with 413).
//! - Answers: 200 published; 429 (limit reached) and 5xx retried honouring `Retry-After`;
//!   400, 401, 403, 404 and 413 refused. A timeout may have published: retried at the slower
//!   pace of an unknown outcome.

use std::time::Duration;

use secrecy::ExposeSecret as _;
use serde_json::{json, Value};

use super::format::{describe, details, headline};
use super::http::{client, clip, request_failed, retry_after, snippet};
use super::{BoxFuture, Context, DeliveryError, Notifier};
use crate::config::NtfySettings;
use crate::store::AlertRecord;

/// ntfy's message limit, bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// The most alerts in one message.
pub const MAX_ALERTS: usize = 10;

/// The title and the whole message for `alerts` (cut to the limit when sent).
fn text(alerts: &[AlertRecord]) -> (String, String) {
    match alerts {
        [a] => (headline(a), details(a)),
        _ => (
            format!("{} SOS alerts", alerts.len()),
            alerts.iter().map(|a| format!("• {}", clip(&describe(a), 300))).collect::<Vec<_>>().join("\n"),
        ),
    }
}

/// An ntfy topic.
#[derive(Debug)]
pub struct Ntfy {
    settings: NtfySettings,
    http: reqwest::Client,
    ctx: Context,
}

/// `s` cut at a character boundary to at most `max` bytes, ending `…` when cut.
fn clip_bytes(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Ntfy {
    /// A channel publishing to the configured topic, each request bounded by `timeout`.
    ///
    /// # Errors
    /// If the HTTP client cannot be built.
    pub fn new(settings: NtfySettings, timeout: Duration, ctx: &Context) -> Result<Self, String> {
        Ok(Ntfy { settings, http: client(timeout)?, ctx: ctx.clone() })
    }

    fn ack_url(&self, a: &AlertRecord) -> Option<String> {
        // New alerts and reminders ("still unanswered"), where one tap matters most.
        self.ctx.links.as_ref()?.for_alert(a, "ntfy")
    }

    /// The JSON publish for `alerts`: the full text when it fits, else one line per alert.
    pub fn payload(&self, alerts: &[AlertRecord]) -> Value {
        let urgent = alerts.iter().any(|a| {
            a.cancellation.is_none()
                && !matches!(
                    a.update,
                    Some(crate::store::AlertUpdate::Acknowledged { .. } | crate::store::AlertUpdate::Resolved { .. })
                )
        });
        let (title, message) = text(alerts);
        let mut p = json!({
            "topic": self.settings.topic,
            "title": clip(&title, 200),
            "message": clip_bytes(&message, MAX_MESSAGE_BYTES),
            "priority": if urgent { 5 } else { 3 },
            "tags": if urgent { vec!["rotating_light", "sos"] } else { vec!["white_check_mark", "sos"] },
        });
        let actions: Vec<Value> = alerts
            .iter()
            .filter_map(|a| self.ack_url(a).map(|url| (a, url)))
            .take(3)
            .map(|(a, url)| {
                let label = if alerts.len() == 1 {
                    "I'm responding".to_owned()
                } else {
                    clip(&format!("I'm responding: {}", a.user), 40)
                };
                json!({"action": "view", "label": label, "url": url, "clear": true})
            })
            .collect();
        if !actions.is_empty() {
            p["actions"] = Value::Array(actions);
        }
        p
    }

    async fn post(&self, body: &Value) -> Result<(), DeliveryError> {
        let what = format!("ntfy {}", self.settings.server.host_str().unwrap_or("?"));
        let mut req = self.http.post(self.settings.server.clone()).json(body);
        if let Some(t) = &self.settings.token {
            req = req.bearer_auth(t.expose_secret());
        }
        let resp = req.send().await.map_err(|e| request_failed(&what, &e, true))?;
        let status = resp.status();
        let wait = retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(());
        }
        let json: Value = serde_json::from_str(&text).unwrap_or_default();
        let error = json["error"].as_str().map_or_else(|| snippet(&text, 200), |e| snippet(e, 200));
        let reason = format!("{what}: HTTP {} {error}", status.as_u16());
        if status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error() {
            Err(DeliveryError::Transient { reason, retry_after: wait })
        } else {
            Err(DeliveryError::Permanent { reason })
        }
    }
}

impl Notifier for Ntfy {
    fn name(&self) -> &'static str {
        "ntfy"
    }

    /// Up to [`MAX_ALERTS`], as many as keep one line each within the message limit.
    fn fits(&self, alerts: &[AlertRecord]) -> usize {
        let mut n = alerts.len().min(MAX_ALERTS);
        while n > 1 && text(&alerts[..n]).1.len() > MAX_MESSAGE_BYTES {
            n -= 1;
        }
        n.max(1)
    }

    /// The request was sent: ntfy may have published it.
    fn timed_out(&self, after: Duration) -> DeliveryError {
        DeliveryError::Unknown { reason: format!("ntfy: no answer within {} s", after.as_secs()) }
    }

    fn deliver<'a>(&'a self, alerts: &'a [AlertRecord]) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move { self.post(&self.payload(alerts)).await })
    }

    fn notice<'a>(&'a self, subject: &'a str, text: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let body = json!({
                "topic": self.settings.topic,
                "title": clip(subject, 200),
                "message": clip_bytes(text, MAX_MESSAGE_BYTES),
                "priority": 4,
                "tags": ["warning"],
            });
            self.post(&body).await.map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_stay_within_the_byte_limit() {
        assert_eq!(clip_bytes("ab🚨", 5), "ab…");
        assert_eq!(clip_bytes("ab🚨", 6), "ab🚨");
        crate::install_crypto_provider();
        let mut a = super::super::tests::alert(1);
        a.message = "🚨".repeat(3000);
        a.user = "ж".repeat(3000);
        let n = Ntfy::new(
            NtfySettings { server: "https://ntfy.example".parse().unwrap(), topic: "t".into(), token: None },
            Duration::from_secs(1),
            &Context::default(),
        )
        .unwrap();
        for alerts in [vec![a.clone()], vec![a.clone(); 30], vec![super::super::tests::alert(2); 30]] {
            let mut rest = alerts.as_slice();
            while !rest.is_empty() {
                let k = n.fits(rest);
                let p = n.payload(&rest[..k]);
                assert!(p["message"].as_str().unwrap().len() <= MAX_MESSAGE_BYTES, "{k}");
                assert_eq!(p["priority"], 5);
                rest = &rest[k..];
            }
        }
    }
}
