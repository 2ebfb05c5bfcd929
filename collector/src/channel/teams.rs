//! Microsoft Teams through a Workflows webhook ("Post to a channel when a webhook request is
//! received"): a message carrying one Adaptive Card (version 1.4).
//!
//! - Every payload is at most [`MAX_BYTES`] (Teams refuses a larger message with 413).
//! - What the sender typed goes into `TextRun`s, which Teams shows as plain text: no markdown,
//!   so no forged link or mention.
//! - With acknowledge links (`[http] public_url`), each alert has an "I'm responding" button
//!   opening its signed link.
//! - Answers: 200/202 accepted; 429 and 5xx retried (honouring `Retry-After`); 400, 401, 403,
//!   404 and 413 refused. A request that timed out may have been shown: retried at the slower
//!   pace of an unknown outcome.

use std::time::Duration;

use serde_json::{json, Value};

use super::format::{describe, enrolled_line, headline, identity_warning, or_dash, when_utc};
use super::http::{client, clip, request_failed, retry_after, snippet};
use super::{BoxFuture, Context, DeliveryError, Notifier};
use crate::config::TeamsSettings;
use crate::store::AlertRecord;

/// Teams' limit on one message, bytes.
pub const MAX_BYTES: usize = 28 * 1024;
/// The most alerts on one card.
pub const MAX_ALERTS_PER_CARD: usize = 20;

/// A Teams Workflows webhook.
#[derive(Debug)]
pub struct Teams {
    settings: TeamsSettings,
    http: reqwest::Client,
    ctx: Context,
}

fn plain(text: &str) -> Value {
    json!({"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": text}]})
}

fn field(name: &str, value: &str, max: usize) -> Value {
    json!({"type": "RichTextBlock", "inlines": [
        {"type": "TextRun", "text": format!("{name}: "), "weight": "Bolder"},
        {"type": "TextRun", "text": clip(or_dash(value), max)},
    ]})
}

/// The message for `alerts`, with an "I'm responding" button per alert when `ack_url` gives one.
pub fn payload(alerts: &[AlertRecord], ack_url: &dyn Fn(&AlertRecord) -> Option<String>) -> Value {
    let mut body = Vec::new();
    let mut actions = Vec::new();
    let urgent = alerts.iter().any(|a| a.update.is_none() && a.cancellation.is_none());
    let title = match alerts {
        [a] => headline(a),
        _ => format!("{} SOS alerts", alerts.len()),
    };
    body.push(json!({"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": clip(&title, 200),
                     "weight": "Bolder", "size": "Large", "color": if urgent { "Attention" } else { "Good" }}]}));
    let several = alerts.len() > 1;
    for a in alerts {
        let (short, long) = if several { (80, 300) } else { (200, 1000) };
        body.push(json!({"type": "RichTextBlock", "separator": several, "inlines": [
            {"type": "TextRun", "text": clip(&describe(a), if several { 300 } else { 600 }), "weight": "Bolder"}]}));
        body.push(field("Who", &a.user, short));
        body.push(field("Location", &a.location, short));
        if !several {
            body.push(field("Host", &a.host, short));
            body.push(field("IP", &a.ip, 60));
            body.push(field("Enrolled as", &enrolled_line(a), short));
        }
        body.push(field("When", &when_utc(a.triggered_at), 40));
        if let Some(w) = identity_warning(a) {
            body.push(json!({"type": "RichTextBlock", "inlines": [
                {"type": "TextRun", "text": clip(&w, long), "color": "Attention", "weight": "Bolder"}]}));
        }
        if !a.message.trim().is_empty() {
            body.push(field("Message", a.message.trim(), long));
        }
        body.push(field("Alert id", &a.alert_id.to_string(), 40));
        if let Some(url) = ack_url(a) {
            if actions.len() < 5 {
                let title = if several {
                    format!("I'm responding ({})", clip(or_dash(&a.user), 30))
                } else {
                    "I'm responding".into()
                };
                actions.push(json!({"type": "Action.OpenUrl", "title": title, "url": url}));
            }
        }
    }
    if !several {
        if let Some(a) = alerts.first() {
            body.insert(1, plain(super::format::update_paragraph(a).trim()));
        }
    }
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": body,
    });
    if !actions.is_empty() {
        card["actions"] = Value::Array(actions);
    }
    json!({
        "type": "message",
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null, "content": card}],
    })
}

fn size(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |b| b.len())
}

impl Teams {
    /// A channel posting to the configured workflow, each request bounded by `timeout`.
    ///
    /// # Errors
    /// If the HTTP client cannot be built.
    pub fn new(settings: TeamsSettings, timeout: Duration, ctx: &Context) -> Result<Self, String> {
        Ok(Teams { settings, http: client(timeout)?, ctx: ctx.clone() })
    }

    fn ack_url(&self, a: &AlertRecord) -> Option<String> {
        // New alerts and reminders ("still unanswered"), where one tap matters most.
        self.ctx.links.as_ref()?.for_alert(a, "teams")
    }

    async fn post(&self, body: &Value) -> Result<(), DeliveryError> {
        let what = format!("teams {}", self.settings.webhook_url.host_str().unwrap_or("?"));
        let resp = self
            .http
            .post(self.settings.webhook_url.clone())
            .json(body)
            .send()
            .await
            .map_err(|e| request_failed(&what, &e, true))?;
        let status = resp.status();
        let wait = retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(());
        }
        let reason = format!("{what}: HTTP {} {}", status.as_u16(), snippet(&text, 200));
        if status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error() {
            Err(DeliveryError::Transient { reason, retry_after: wait })
        } else {
            Err(DeliveryError::Permanent { reason })
        }
    }
}

impl Notifier for Teams {
    fn name(&self) -> &'static str {
        "teams"
    }

    fn fits(&self, alerts: &[AlertRecord]) -> usize {
        let mut n = alerts.len().min(MAX_ALERTS_PER_CARD);
        while n > 1 && size(&payload(&alerts[..n], &|a| self.ack_url(a))) > MAX_BYTES {
            n -= 1;
        }
        n.max(1)
    }

    /// About four posts a second per workflow: one a second leaves room.
    fn min_interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// The post was sent: Teams may have shown it.
    fn timed_out(&self, after: Duration) -> DeliveryError {
        DeliveryError::Unknown { reason: format!("teams: no answer within {} s", after.as_secs()) }
    }

    fn deliver<'a>(&'a self, alerts: &'a [AlertRecord]) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move { self.post(&payload(alerts, &|a| self.ack_url(a))).await })
    }

    fn notice<'a>(&'a self, subject: &'a str, text: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let card = json!({
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "text": "⚠️ SOS collector", "weight": "Bolder", "wrap": true},
                    plain(&clip(subject, 200)),
                    plain(&clip(text, 4000)),
                ],
            });
            let body = json!({"type": "message", "attachments": [
                {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null, "content": card}]});
            self.post(&body).await.map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_card_is_within_the_size_limit_and_hostile_text_stays_plain() {
        let mut a = super::super::tests::alert(1);
        a.user = "[click](https://evil.example) **bold** <at>everyone</at> \"}".repeat(200);
        a.message = "🚨".repeat(5000);
        a.location = "x".repeat(5000);
        let storm = vec![a.clone(); 100];
        crate::install_crypto_provider();
        let t = Teams::new(
            TeamsSettings { webhook_url: "https://example.invalid/w".parse().unwrap() },
            Duration::from_secs(1),
            &Context::default(),
        )
        .unwrap();
        let mut rest = storm.as_slice();
        while !rest.is_empty() {
            let n = t.fits(rest);
            assert!(size(&payload(&rest[..n], &|_| Some("https://c.example/ack/t".into()))) <= MAX_BYTES, "{n}");
            rest = &rest[n..];
        }
        let p = payload(std::slice::from_ref(&a), &|_| None);
        // Text is only ever in TextRuns (plain), never in a TextBlock (markdown).
        let body = p["attachments"][0]["content"]["body"].as_array().unwrap();
        assert!(body.iter().all(|b| b["type"] == "RichTextBlock"), "{p}");
        assert!(p.to_string().contains("[click](https://evil.example)"), "shown as typed");
    }
}
