//! Slack incoming webhooks, answered as Slack answers: 200 `ok`; 400/403/404/410 with an error
//! code in the body (permanent); 429 with `Retry-After`; 5xx (transient).

use std::time::Duration;

use serde_json::{json, Value};

use super::format::{describe, details, enrolled_line, identity_warning, or_dash, when_utc};
use super::DeliveryError;
use crate::config::SlackSettings;
use crate::store::AlertRecord;

/// Slack allows 50 blocks per message; each alert takes two, plus a header.
pub const MAX_ALERTS_PER_MESSAGE: usize = 20;

/// A Slack incoming webhook.
#[derive(Debug)]
pub struct Slack {
    settings: SlackSettings,
    http: reqwest::Client,
}

impl Slack {
    /// A channel posting to the configured webhook, each request bounded by `timeout`.
    ///
    /// # Errors
    /// If the HTTP client cannot be built (no TLS roots on the system).
    pub fn new(settings: SlackSettings, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sos-collector/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Slack { settings, http })
    }

    pub(crate) async fn deliver(&self, alerts: &[AlertRecord]) -> Result<(), DeliveryError> {
        let body = payload(alerts);
        // The URL is a secret: errors name the host only.
        let host = self.settings.webhook_url.host_str().unwrap_or("?").to_owned();
        let resp = self.http.post(self.settings.webhook_url.clone()).json(&body).send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "request failed"
            };
            DeliveryError::transient(format!("slack {host}: {kind}: {}", root_cause(&e)))
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.chars().take(200).collect();
        if status.is_success() {
            return Ok(());
        }
        let reason = format!("slack {host}: HTTP {} {}", status.as_u16(), text.trim());
        // 429: rate limited (honour Retry-After); 408 and 5xx: Slack's side, try again.
        if status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error() {
            Err(DeliveryError::Transient { reason, retry_after })
        } else {
            Err(DeliveryError::Permanent { reason })
        }
    }
}

impl Slack {
    /// A message about the collector itself (not an alert), once, without retry.
    pub(crate) async fn notice(&self, text: &str) -> Result<(), String> {
        let host = self.settings.webhook_url.host_str().unwrap_or("?").to_owned();
        let body = serde_json::json!({ "text": esc(text) });
        let resp = self
            .http
            .post(self.settings.webhook_url.clone())
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("slack {host}: {}", root_cause(&e)))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("slack {host}: HTTP {}", resp.status().as_u16()))
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Escape the three characters Slack's mrkdwn treats as control, so a sender's text cannot
/// ping `@channel` or forge a link.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The Block Kit message, with `text` as the notification and accessibility fallback.
pub(crate) fn payload(alerts: &[AlertRecord]) -> Value {
    let icon = |a: &AlertRecord| if a.cancellation.is_some() { "✅" } else { "🚨" };
    let text = if let [a] = alerts {
        format!("{} {} — alert {}", icon(a), esc(&describe(a)), a.alert_id)
    } else {
        let tests = alerts.iter().filter(|a| a.test).count();
        let mut t = format!("🚨 {} SOS alerts", alerts.len());
        if tests > 0 {
            t.push_str(&format!(" ({tests} of them TEST)"));
        }
        for a in alerts {
            t.push_str(&format!("\n• {} — alert {}", esc(&describe(a)), a.alert_id));
        }
        t
    };
    let mut blocks = Vec::new();
    if alerts.len() > 1 {
        blocks.push(json!({"type": "header", "text": {"type": "plain_text",
            "text": format!("🚨 {} SOS alerts", alerts.len())}}));
    }
    for a in alerts {
        let title = if let Some(c) = &a.cancellation {
            format!(
                "✅ *CANCELLED by the sender* (false alarm): SOS from {} at {}. Reason: {}. *Check in person that they are safe*: a cancellation can be forced.",
                esc(or_dash(&a.user)),
                esc(or_dash(&a.location)),
                esc(or_dash(&c.reason))
            )
        } else if a.test {
            format!("🧪 *TEST alert (drill): no action needed* — {}", esc(or_dash(&a.user)))
        } else {
            format!("🚨 *SOS from {}* at *{}*", esc(or_dash(&a.user)), esc(or_dash(&a.location)))
        };
        let when = format!(
            "<!date^{}^{{date_short_pretty}} {{time_secs}}|{}>",
            a.triggered_at.max(0),
            when_utc(a.triggered_at)
        );
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": title}}));
        blocks.push(json!({"type": "section", "fields": [
            {"type": "mrkdwn", "text": format!("*Who*\n{}", esc(or_dash(&a.user)))},
            {"type": "mrkdwn", "text": format!("*Location*\n{}", esc(or_dash(&a.location)))},
            {"type": "mrkdwn", "text": format!("*Host*\n{}", esc(or_dash(&a.host)))},
            {"type": "mrkdwn", "text": format!("*IP*\n{}", esc(or_dash(&a.ip)))},
            {"type": "mrkdwn", "text": format!("*When*\n{when}")},
            {"type": "mrkdwn", "text": format!("*Alert id*\n`{}`", a.alert_id)},
            {"type": "mrkdwn", "text": format!("*Enrolled as*\n{}", esc(&enrolled_line(a)))},
        ]}));
        if let Some(w) = identity_warning(a) {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("⚠️ *{}*", esc(&w))}}));
        }
        if !a.message.trim().is_empty() {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn",
                "text": format!("*Message*\n>{}", esc(&a.message).replace('\n', "\n>"))}}));
        }
    }
    let _ = details; // plain-text details are for email; Slack gets fields
    json!({"text": text, "blocks": blocks})
}

#[cfg(test)]
mod tests {
    use super::*;
    use sos_shared::AlertId;

    fn a(test: bool) -> AlertRecord {
        AlertRecord {
            alert_id: AlertId::from_u128(0xabc),
            test,
            triggered_at: 1_700_000_000,
            received_at_ms: 0,
            user: "alice".into(),
            host: "desk-12".into(),
            ip: "10.0.0.12".into(),
            location: "Reception <!channel>".into(),
            message: "help <@U123>".into(),
            source: String::new(),
            enrolled: None,
            cancellation: None,
        }
    }

    #[test]
    fn payload_carries_every_field_and_escapes_control_text() {
        let p = payload(&[a(false)]).to_string();
        for needle in ["alice", "desk-12", "10.0.0.12", "00000000000000000000000000000abc", "2023-11-14 22:13:20 UTC"] {
            assert!(p.contains(needle), "{needle} missing in {p}");
        }
        assert!(!p.contains("<!channel>") && !p.contains("<@U123>"), "{p}");
    }

    #[test]
    fn a_cancellation_says_so_and_asks_to_check_in_person() {
        let mut c = a(false);
        c.cancellation = Some(crate::store::Cancellation { at_ms: 0, reason: "pressed by accident".into() });
        let p = payload(&[c]);
        let text = p["text"].as_str().unwrap();
        assert!(text.starts_with("✅ CANCELLED by sender"), "{text}");
        assert!(p.to_string().contains("pressed by accident") && p.to_string().contains("in person"), "{p}");
    }

    #[test]
    fn tests_are_marked_and_batches_counted() {
        let p = payload(&[a(true)]).to_string();
        assert!(p.contains("TEST"), "{p}");
        let p = payload(&[a(false), a(true), a(false)]);
        assert!(p["text"].as_str().unwrap().starts_with("🚨 3 SOS alerts (1 of them TEST)"));
    }
}
