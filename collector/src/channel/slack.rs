//! Slack incoming webhooks, answered as Slack answers: 200 `ok`; 400/403/404/410 with an error
//! code in the body (permanent); 429 with `Retry-After`; 5xx (transient).
//!
//! Every message is built within Slack's documented limits ([`LIMITS`]); the outbox asks
//! [`Slack::fits`] how many alerts one message can carry, and sends at most one message per
//! [`MIN_INTERVAL`].

use std::time::Duration;

use serde_json::{json, Value};

use super::format::{describe, enrolled_line, identity_warning, or_dash, when_utc};
use super::{BoxFuture, DeliveryError, Notifier};
use crate::config::SlackSettings;
use crate::links::AckLinks;
use crate::store::{AlertRecord, AlertUpdate};

/// Slack's documented limits for an incoming-webhook message (Block Kit reference, "Rate
/// limits" for the rate).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Blocks in one message.
    pub blocks: usize,
    /// Characters of a section's `text`.
    pub section_text: usize,
    /// Fields in a section, and characters of each.
    pub fields: usize,
    /// Characters of one field.
    pub field_text: usize,
    /// Characters of a header's `plain_text`.
    pub header_text: usize,
    /// Characters of the top-level `text`.
    pub text: usize,
}

/// The limits every message is built within.
pub const LIMITS: Limits =
    Limits { blocks: 50, section_text: 3000, fields: 10, field_text: 2000, header_text: 150, text: 40_000 };

/// About one message per second per webhook (Slack's rate limit for incoming webhooks).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The most alerts in one message: a header, then one section per alert (one fewer when the
/// message mentions responders: [`Slack::fits`] checks).
pub const MAX_ALERTS_PER_MESSAGE: usize = LIMITS.blocks - 1;

/// Where `payload` breaks [`LIMITS`], if it does: Slack's error code and what is wrong.
pub fn check(payload: &Value) -> Result<(), String> {
    let len = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
    let text = len(&payload["text"]);
    if text == 0 {
        return Err("no_text: the message has no text".into());
    }
    if text > LIMITS.text {
        return Err(format!("msg_too_long: text of {text} characters (at most {})", LIMITS.text));
    }
    let blocks = payload["blocks"].as_array().map(Vec::as_slice).unwrap_or_default();
    if blocks.len() > LIMITS.blocks {
        return Err(format!("invalid_blocks: {} blocks (at most {})", blocks.len(), LIMITS.blocks));
    }
    for (i, b) in blocks.iter().enumerate() {
        match b["type"].as_str() {
            Some("header") => {
                let n = len(&b["text"]["text"]);
                if n > LIMITS.header_text {
                    return Err(format!(
                        "invalid_blocks: header {i} of {n} characters (at most {})",
                        LIMITS.header_text
                    ));
                }
            }
            Some("section") => {
                let n = len(&b["text"]["text"]);
                if n > LIMITS.section_text {
                    return Err(format!(
                        "invalid_blocks: section {i} of {n} characters (at most {})",
                        LIMITS.section_text
                    ));
                }
                let fields = b["fields"].as_array().map(Vec::as_slice).unwrap_or_default();
                if fields.len() > LIMITS.fields {
                    return Err(format!(
                        "invalid_blocks: section {i} has {} fields (at most {})",
                        fields.len(),
                        LIMITS.fields
                    ));
                }
                if n == 0 && fields.is_empty() {
                    return Err(format!("invalid_blocks: section {i} is empty"));
                }
                if let Some(f) = fields.iter().find(|f| len(&f["text"]) > LIMITS.field_text) {
                    return Err(format!("invalid_blocks: a field of {} characters in section {i}", len(&f["text"])));
                }
            }
            other => return Err(format!("invalid_blocks: block {i} of unknown type {other:?}")),
        }
    }
    Ok(())
}

/// A Slack incoming webhook.
#[derive(Debug)]
pub struct Slack {
    settings: SlackSettings,
    http: reqwest::Client,
    /// Acknowledge links for the messages, when `[http] public_url` is set.
    links: Option<AckLinks>,
}

impl Slack {
    /// A channel posting to the configured webhook, each request bounded by `timeout`; its
    /// messages about alerts that need someone carry an acknowledge link when `links` is set.
    ///
    /// # Errors
    /// If the HTTP client cannot be built (no TLS roots on the system).
    pub fn new(settings: SlackSettings, timeout: Duration, links: Option<AckLinks>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sos-collector/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Slack { settings, http, links })
    }

    /// How many of `alerts`, from the first, one message can carry within [`LIMITS`] (at
    /// least one: a single alert's message is always within them). Acknowledge links change
    /// no count: one alert's message has room for one more block, and in a message of several
    /// each link goes in its alert's section, which has room for it.
    pub(crate) fn fits(alerts: &[AlertRecord]) -> usize {
        let mut n = alerts.len().min(MAX_ALERTS_PER_MESSAGE);
        while n > 1 && check(&payload(&alerts[..n], None)).is_err() {
            n -= 1;
        }
        n.max(1)
    }

    async fn post(&self, alerts: &[AlertRecord]) -> Result<(), DeliveryError> {
        let body = payload(alerts, self.links.as_ref());
        // The URL is a secret: errors name the host only.
        let host = self.settings.webhook_url.host_str().unwrap_or("?").to_owned();
        let resp = self.http.post(self.settings.webhook_url.clone()).json(&body).send().await.map_err(|e| {
            if e.is_connect() {
                DeliveryError::transient(format!("slack {host}: cannot connect: {}", super::http::safe_error(&e)))
            } else if e.is_timeout() {
                // Connected and sent: Slack may have posted it.
                DeliveryError::Unknown {
                    reason: format!("slack {host}: no answer in time: {}", super::http::safe_error(&e)),
                }
            } else {
                DeliveryError::transient(format!("slack {host}: request failed: {}", super::http::safe_error(&e)))
            }
        })?;
        let status = resp.status();
        let retry_after = super::http::retry_after(resp.headers());
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
    async fn post_notice(&self, text: &str) -> Result<(), String> {
        let host = self.settings.webhook_url.host_str().unwrap_or("?").to_owned();
        let body = serde_json::json!({ "text": esc(text, LIMITS.text) });
        // A notice often follows an alert's post within the second: when Slack asks to wait
        // (429), wait as it says (at most 5 s) and try again, three times at most; the caller
        // bounds the whole by the attempt timeout.
        for attempt in 1..=3 {
            let resp = self
                .http
                .post(self.settings.webhook_url.clone())
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("slack {host}: {}", super::http::safe_error(&e)))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(());
            }
            if status.as_u16() != 429 || attempt == 3 {
                return Err(format!("slack {host}: HTTP {}", status.as_u16()));
            }
            let wait = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(MIN_INTERVAL, Duration::from_secs)
                .min(Duration::from_secs(5));
            tokio::time::sleep(wait).await;
        }
        Err(format!("slack {host}: rate limited"))
    }
}

impl Notifier for Slack {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn fits(&self, alerts: &[AlertRecord]) -> usize {
        Slack::fits(alerts)
    }

    fn min_interval(&self) -> Duration {
        MIN_INTERVAL
    }

    /// The post was sent, so Slack may have shown it.
    fn timed_out(&self, after: Duration) -> DeliveryError {
        DeliveryError::Unknown { reason: format!("slack: no answer within {} s", after.as_secs()) }
    }

    fn deliver<'a>(&'a self, alerts: &'a [AlertRecord]) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(self.post(alerts))
    }

    fn notice<'a>(&'a self, subject: &'a str, text: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.post_notice(&format!("⚠️ {subject}\n{text}")).await })
    }
}

/// Escape the three characters Slack's mrkdwn treats as control, so a sender's text cannot
/// ping `@channel` or forge a link; at most `max` characters of result (escapes included), the
/// last one `…` when clipped.
fn esc(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut n = 0;
    for c in s.chars() {
        let piece = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            _ => "",
        };
        let width = if piece.is_empty() { 1 } else { piece.chars().count() };
        if n + width >= max {
            out.push('…');
            return out;
        }
        if piece.is_empty() {
            out.push(c);
        } else {
            out.push_str(piece);
        }
        n += width;
    }
    out
}

/// The first line of a message: what it says about the alert, from whom, where. Drills say
/// DRILL; updates (a reminder, who acknowledged or resolved it, a cancellation) say so first.
fn title(a: &AlertRecord) -> String {
    let drill = if a.test { "🧪 *DRILL (TEST alert)* — " } else { "" };
    let from =
        |a: &AlertRecord| format!("SOS from {} at {}", esc(or_dash(&a.user), 100), esc(or_dash(&a.location), 200));
    match (&a.update, &a.cancellation) {
        (Some(AlertUpdate::Reminder { after_secs }), _) => {
            format!("{drill}⏰ *STILL UNANSWERED after {after_secs} s*: {}. Nobody has acknowledged it yet.", from(a))
        }
        (Some(AlertUpdate::Acknowledged { by, note }), _) => format!(
            "{drill}🙋 *Acknowledged by {}*: {}.{}",
            esc(or_dash(by), 100),
            from(a),
            if note.is_empty() { String::new() } else { format!(" Note: {}", esc(note, 500)) }
        ),
        (Some(AlertUpdate::Resolved { by, outcome, note }), _) => format!(
            "{drill}✔️ *Resolved by {}*: {}. {}.{}",
            esc(or_dash(by), 100),
            esc(or_dash(outcome), 500),
            from(a),
            if note.is_empty() { String::new() } else { format!(" Note: {}", esc(note, 500)) }
        ),
        (None, Some(c)) => format!(
            "{drill}✅ *CANCELLED by the sender* (false alarm): SOS from {} at {}. Reason: {}. *Check in person that they are safe*: a cancellation can be forced.",
            esc(or_dash(&a.user), 100),
            esc(or_dash(&a.location), 200),
            esc(or_dash(&c.reason), 400)
        ),
        (None, None) if a.test => format!("{drill}practise as if it were real: {}", from(a)),
        (None, None) if a.audience.tier > 1 => {
            format!("🚨 *{}* — escalated: tier {}, nobody acknowledged in time", from(a), a.audience.tier)
        }
        (None, None) => format!("🚨 *{}*", from(a)),
    }
}

/// The chat mentions of the messages' audiences (configured `chat` of the tier's responders),
/// each once, as Slack mentions them: not escaped.
fn mentions(alerts: &[AlertRecord]) -> String {
    let mut all: Vec<&str> = Vec::new();
    for a in alerts {
        for m in &a.audience.mentions {
            if !all.contains(&m.as_str()) {
                all.push(m);
            }
        }
    }
    let mut s = String::new();
    for m in all {
        if s.chars().count() + m.chars().count() + 1 > 1000 {
            break;
        }
        s.push_str(m);
        s.push(' ');
    }
    s.trim_end().to_owned()
}

/// The sender's text as a quote, clipped to `max` characters of the original.
fn quote(a: &AlertRecord, max: usize) -> String {
    format!(">{}", esc(a.message.trim(), max).replace('\n', "\n>"))
}

/// How long links are valid, for the message: "24 h", "90 min".
fn valid_for(links: Option<&AckLinks>) -> String {
    let secs = links.map_or(0, |l| l.ttl().as_secs());
    if secs.is_multiple_of(3600) {
        format!("{} h", secs / 3600)
    } else {
        format!("{} min", secs.div_ceil(60))
    }
}

fn when(a: &AlertRecord) -> String {
    format!("<!date^{}^{{date_short_pretty}} {{time_secs}}|{}>", a.triggered_at.max(0), when_utc(a.triggered_at))
}

/// The acknowledge link of `a`, as a mrkdwn link, if there is one (see [`AckLinks::for_alert`]).
fn ack_link(a: &AlertRecord, links: Option<&AckLinks>, label: &str) -> Option<String> {
    // The URL is ours (the configured public_url and a base64url token); escaped as Slack asks,
    // and without a `|`, which would end the URL part.
    let url = links?.for_alert(a, "slack")?;
    Some(format!("<{}|{label}>", esc(&url, 1000).replace('|', "%7C")))
}

/// The Block Kit message, with `text` as the notification and accessibility fallback. One
/// alert gets a section per kind of detail (at most 5 blocks, the last its acknowledge link);
/// several get a header and one section each (each with its link). Every text is clipped so
/// that each block is within [`LIMITS`] (an `&` escaped as `&amp;` counts 5: the clips leave
/// room for it).
pub(crate) fn payload(alerts: &[AlertRecord], links: Option<&AckLinks>) -> Value {
    let icon = |a: &AlertRecord| match (&a.update, &a.cancellation) {
        (Some(AlertUpdate::Reminder { .. }), _) => "⏰",
        (Some(AlertUpdate::Acknowledged { .. }), _) => "🙋",
        (Some(AlertUpdate::Resolved { .. }), _) => "✔️",
        (None, Some(_)) => "✅",
        (None, None) => "🚨",
    };
    let ping = mentions(alerts);
    let line = |a: &AlertRecord| format!("{} — alert {}", esc(&describe(a), 600), a.alert_id);
    let mut blocks = Vec::new();
    let text = if let [a] = alerts {
        let first = if ping.is_empty() { title(a) } else { format!("{ping}\n{}", title(a)) };
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": first}}));
        let field = |name: &str, value: &str| json!({"type": "mrkdwn", "text": format!("*{name}*\n{}", esc(or_dash(value), 350))});
        blocks.push(json!({"type": "section", "fields": [
            field("Who", &a.user),
            field("Location", &a.location),
            field("Host", &a.host),
            field("IP", &a.ip),
            {"type": "mrkdwn", "text": format!("*When*\n{}", when(a))},
            {"type": "mrkdwn", "text": format!("*Alert id*\n`{}`", a.alert_id)},
            field("Enrolled as", &enrolled_line(a)),
        ]}));
        if let Some(w) = identity_warning(a) {
            blocks
                .push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("⚠️ *{}*", esc(&w, 400))}}));
        }
        if !a.message.trim().is_empty() {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn",
                "text": format!("*Message*\n{}", quote(a, 1000))}}));
        }
        if let Some(link) = ack_link(a, links, "Acknowledge: I'm responding") {
            let text = format!("👉 *{link}* (single use, valid {})", valid_for(links));
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
        }
        let text = format!("{} {}", icon(a), line(a));
        if ping.is_empty() {
            text
        } else {
            format!("{ping} {text}")
        }
    } else {
        let tests = alerts.iter().filter(|a| a.test).count();
        let mut head = format!("🚨 {} SOS alerts", alerts.len());
        if tests > 0 {
            head.push_str(&format!(" ({tests} of them TEST, DRILL)"));
        }
        blocks.push(json!({"type": "header", "text": {"type": "plain_text", "text": head}}));
        if !ping.is_empty() {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": ping}}));
        }
        let mut text = head.clone();
        for a in alerts {
            let mut s = format!(
                "{}\n{} · {} · {} · `{}`",
                title(a),
                esc(or_dash(&a.host), 100),
                esc(or_dash(&a.ip), 60),
                when(a),
                a.alert_id
            );
            if let Some(w) = identity_warning(a) {
                s.push_str(&format!("\n⚠️ *{}*", esc(&w, 400)));
            }
            if !a.message.trim().is_empty() {
                s.push('\n');
                s.push_str(&quote(a, 300));
            }
            if let Some(link) = ack_link(a, links, "Acknowledge") {
                s.push_str(&format!("\n👉 *{link}*"));
            }
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": s}}));
            text.push_str(&format!("\n• {}", line(a)));
        }
        text
    };
    json!({"text": text, "blocks": blocks})
}

#[cfg(test)]
mod tests {
    use super::*;
    use sos_shared::AlertId;

    fn payload_(alerts: &[AlertRecord]) -> Value {
        payload(alerts, None)
    }

    fn links() -> AckLinks {
        AckLinks::new("https://sos.example.org/console", [3u8; 32], crate::links::DEFAULT_TTL)
    }

    #[test]
    fn alerts_that_need_someone_carry_an_acknowledge_link_and_updates_do_not() {
        let l = links();
        let p = payload(&[a(false)], Some(&l));
        let blocks = p["blocks"].as_array().unwrap();
        let last = blocks.last().unwrap()["text"]["text"].as_str().unwrap();
        assert!(last.contains("<https://sos.example.org/console/ack/") && last.contains("|Acknowledge"), "{last}");
        assert!(last.contains("single use, valid 24 h"), "{last}");
        let token = last.split("/ack/").nth(1).unwrap().split('|').next().unwrap();
        let t = l.verify(token, std::time::SystemTime::now()).unwrap();
        assert_eq!((t.alert, t.channel.as_str()), (AlertId::from_u128(0xabc), "slack"));
        assert_eq!(check(&p), Ok(()));
        // No link without links configured.
        assert!(!payload_(&[a(false)]).to_string().contains("/ack/"));
        // A reminder carries one; an acknowledgement, a resolution and a cancellation do not.
        let mut r = a(false);
        r.update = Some(AlertUpdate::Reminder { after_secs: 60 });
        assert!(payload(&[r], Some(&l)).to_string().contains("/ack/"));
        let mut ack = a(false);
        ack.update = Some(AlertUpdate::Acknowledged { by: "Sam".into(), note: String::new() });
        assert!(!payload(&[ack], Some(&l)).to_string().contains("/ack/"));
        let mut c = a(false);
        c.cancellation = Some(crate::store::Cancellation { at_ms: 0, reason: "oops".into() });
        assert!(!payload(&[c], Some(&l)).to_string().contains("/ack/"));
        // Several alerts: one link each, in its own section.
        let many: Vec<_> = (1..=3).map(|i| AlertRecord { alert_id: AlertId::from_u128(i), ..a(false) }).collect();
        let p = payload(&many, Some(&l));
        assert_eq!(p.to_string().matches("/ack/").count(), 3, "{p}");
    }

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
            audience: Default::default(),
            update: None,
            site: None,
        }
    }

    #[test]
    fn payload_carries_every_field_and_escapes_control_text() {
        let p = payload_(&[a(false)]).to_string();
        for needle in ["alice", "desk-12", "10.0.0.12", "00000000000000000000000000000abc", "2023-11-14 22:13:20 UTC"] {
            assert!(p.contains(needle), "{needle} missing in {p}");
        }
        assert!(!p.contains("<!channel>") && !p.contains("<@U123>"), "{p}");
    }

    #[test]
    fn a_cancellation_says_so_and_asks_to_check_in_person() {
        let mut c = a(false);
        c.cancellation = Some(crate::store::Cancellation { at_ms: 0, reason: "pressed by accident".into() });
        let p = payload_(&[c]);
        let text = p["text"].as_str().unwrap();
        assert!(text.starts_with("✅ CANCELLED by sender"), "{text}");
        assert!(p.to_string().contains("pressed by accident") && p.to_string().contains("in person"), "{p}");
    }

    #[test]
    fn tests_are_marked_and_batches_counted() {
        let p = payload_(&[a(true)]).to_string();
        assert!(p.contains("TEST"), "{p}");
        let p = payload_(&[a(false), a(true), a(false)]);
        assert!(p["text"].as_str().unwrap().starts_with("🚨 3 SOS alerts (1 of them TEST, DRILL)"));
        assert!(payload_(&[a(true)]).to_string().contains("DRILL"));
    }

    #[test]
    fn tiers_mention_their_responders_and_updates_say_what_happened() {
        use crate::store::{AlertUpdate, Audience};
        let mut t2 = a(false);
        t2.audience = Audience { tier: 2, mentions: vec!["<@U1>".into(), "<@U2>".into()], emails: vec![] };
        let p = payload_(std::slice::from_ref(&t2));
        let text = p["text"].as_str().unwrap();
        assert!(text.starts_with("<@U1> <@U2> 🚨"), "{text}");
        assert!(p["blocks"][0]["text"]["text"].as_str().unwrap().starts_with("<@U1> <@U2>\n"), "{p}");
        assert!(p.to_string().contains("escalated: tier 2"), "{p}");
        let mut r = t2.clone();
        r.update = Some(AlertUpdate::Reminder { after_secs: 120 });
        assert!(payload_(&[r]).to_string().contains("STILL UNANSWERED after 120 s"));
        let mut ack = a(true);
        ack.update = Some(AlertUpdate::Acknowledged { by: "Sam <!here>".into(), note: String::new() });
        let p = payload_(&[ack]).to_string();
        assert!(p.contains("Acknowledged by Sam &lt;!here&gt;") && p.contains("DRILL"), "{p}");
        let mut res = a(false);
        res.update = Some(AlertUpdate::Resolved { by: "Sam".into(), outcome: "all clear".into(), note: String::new() });
        assert!(payload_(&[res]).to_string().contains("Resolved by Sam*: all clear"));
        // Mentions take a block: a storm message still fits Slack's limits.
        let storm: Vec<_> = (0..100).map(|_| t2.clone()).collect();
        let n = Slack::fits(&storm);
        assert_eq!(check(&payload_(&storm[..n])), Ok(()));
        assert_eq!(n, MAX_ALERTS_PER_MESSAGE - 1);
    }

    /// An alert with every field at the largest a datagram can carry, full of characters that
    /// escaping lengthens, a message of newlines, and an identity warning.
    fn worst(i: u128) -> AlertRecord {
        let long = "&<>".repeat(400);
        AlertRecord {
            alert_id: AlertId::from_u128(i),
            user: long.clone(),
            host: long.clone(),
            ip: long.clone(),
            location: long.clone(),
            message: "\n&".repeat(600),
            enrolled: Some(crate::store::EnrolledAs { agent_id: "a".into(), name: long.clone(), host: long.clone() }),
            cancellation: Some(crate::store::Cancellation { at_ms: 0, reason: long }),
            ..a(false)
        }
    }

    #[test]
    fn every_message_is_within_slacks_limits_whatever_the_alerts_hold() {
        for alerts in [vec![worst(1)], (0..200).map(worst).collect(), (0..200).map(|_| a(false)).collect()] {
            let mut rest = alerts.as_slice();
            while !rest.is_empty() {
                let n = Slack::fits(rest);
                let p = payload_(&rest[..n]);
                assert_eq!(check(&p), Ok(()), "{n} alerts");
                // With acknowledge links (a long public_url) too.
                let long = AckLinks::new(
                    &format!("https://{}.example.org", "x".repeat(200)),
                    [1; 32],
                    crate::links::DEFAULT_TTL,
                );
                assert_eq!(check(&payload(&rest[..n], Some(&long))), Ok(()), "{n} alerts with links");
                rest = &rest[n..];
            }
        }
    }

    #[test]
    fn a_storm_fills_messages_by_counting_blocks() {
        // Alerts with messages and identity warnings: one section each, 49 to a message.
        let mut storm: Vec<_> = (0..100).map(|i| AlertRecord { alert_id: AlertId::from_u128(i), ..a(false) }).collect();
        for x in &mut storm {
            x.enrolled =
                Some(crate::store::EnrolledAs { agent_id: "a".into(), name: "pc-9".into(), host: "pc-9".into() });
        }
        assert_eq!(Slack::fits(&storm), MAX_ALERTS_PER_MESSAGE);
        let p = payload_(&storm[..MAX_ALERTS_PER_MESSAGE]);
        assert_eq!(p["blocks"].as_array().unwrap().len(), LIMITS.blocks);
        let text = p.to_string();
        assert!(text.contains("IDENTITY MISMATCH") && text.contains("help"), "{text}");
        // A message over the limits is caught before Slack sees it.
        let mut too_many = p.clone();
        too_many["blocks"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "section", "text": {"type": "mrkdwn", "text": "x"}}));
        assert!(check(&too_many).unwrap_err().starts_with("invalid_blocks"));
    }
}
