//! SMS through Twilio's Messages API (`POST {api_url}/2010-04-01/Accounts/{sid}/Messages.json`,
//! HTTP basic auth with the account SID and auth token), or a gateway answering like it.
//!
//! - One SMS per number: `notify.sms.to` and the phones of the firing tier's responders (the
//!   outbox job's recipients). A number that got the message is not sent it again when the
//!   job is retried for another number (counted per run of the collector).
//! - Answers as Twilio gives them: 201 sent; 400 with `{code, message, more_info, status}`:
//!   an invalid or unreachable number (21211, 21614, 21610, 21612, 21408…) fails for that
//!   number only, a bad sender (21212, 21606, 21659…) for all; 401/403/404 (credentials,
//!   account): for all; 429 (20429) and 5xx: retried, honouring `Retry-After`.
//! - Each SMS is at most [`MAX_SEGMENTS`] segments: 160 GSM-7 characters each (153 when
//!   several), or 70 UCS-2 (67) when the text has a character outside GSM-7, so always
//!   within Twilio's 1600 characters.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use secrecy::ExposeSecret as _;

use super::format::describe;
use super::http::{client, clip, request_failed, retry_after, snippet};
use super::{BoxFuture, Context, DeliveryError, Notifier};
use crate::config::{e164, SmsSettings};
use crate::store::AlertRecord;

/// The most segments in one SMS (Twilio recommends at most 10; its hard limit is 1600
/// characters).
pub const MAX_SEGMENTS: usize = 10;
/// Twilio's limit on a message body, characters.
pub const MAX_BODY_CHARS: usize = 1600;

const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM_EXTENSION: &str = "^{}\\[~]|€\u{c}";

/// How an SMS of `text` is encoded and into how many segments it is split.
pub fn segments(text: &str) -> (Encoding, usize) {
    let septets: Option<usize> = text
        .chars()
        .map(|c| {
            if GSM_BASIC.contains(c) {
                Some(1)
            } else if GSM_EXTENSION.contains(c) {
                Some(2)
            } else {
                None
            }
        })
        .sum();
    match septets {
        Some(n) if n <= 160 => (Encoding::Gsm7, 1),
        Some(n) => (Encoding::Gsm7, n.div_ceil(153)),
        None => {
            let units = text.encode_utf16().count();
            (Encoding::Ucs2, if units <= 70 { 1 } else { units.div_ceil(67) })
        }
    }
}

/// The character set of an SMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The GSM 03.38 alphabet: 160 characters in one segment.
    Gsm7,
    /// Anything else (accents outside GSM, emoji, most scripts): 70 in one segment.
    Ucs2,
}

/// `text` cut (ending `…`) to at most [`MAX_SEGMENTS`] segments and [`MAX_BODY_CHARS`].
fn within_limits(text: &str) -> String {
    let mut t = clip(text, MAX_BODY_CHARS);
    while segments(&t).1 > MAX_SEGMENTS || t.chars().count() > MAX_BODY_CHARS {
        let n = t.chars().count();
        // Cut a tenth at a time (at least a character): few rounds even for 1600 characters.
        t = clip(&t, n - (n / 10).max(1));
    }
    t
}

/// The SMS for `alerts`: one line each a responder can act on, within the limits.
pub fn text(alerts: &[AlertRecord]) -> String {
    within_limits(&compose(alerts))
}

/// The text of [`text`] before it is cut to the limits.
fn compose(alerts: &[AlertRecord]) -> String {
    let body = match alerts {
        // The sender's text last: what a cut to the limits shortens.
        [a] if a.message.trim().is_empty() => format!("{}\nAlert {}", clip(&describe(a), 600), a.alert_id),
        [a] => format!("{}\nAlert {}\n\"{}\"", clip(&describe(a), 600), a.alert_id, clip(a.message.trim(), 300)),
        _ => {
            let mut s = format!("{} SOS alerts:", alerts.len());
            for a in alerts {
                s.push_str("\n- ");
                s.push_str(&clip(&describe(a), 200));
            }
            s
        }
    };
    body
}

/// What one request meant for one number.
enum Outcome {
    Sent,
    Retry(DeliveryError),
    /// This number cannot get it.
    NumberRefused(String),
    /// No number can (credentials, account, sender).
    AllRefused(String),
}

/// Twilio's SMS.
#[derive(Debug)]
pub struct Sms {
    settings: SmsSettings,
    http: reqwest::Client,
    /// Per message (its alerts, kinds and tiers), the numbers that got it in this run.
    sent: Mutex<HashMap<String, HashSet<String>>>,
}

impl Sms {
    /// A channel sending through the configured account, each request bounded by `timeout`.
    ///
    /// # Errors
    /// If the HTTP client cannot be built.
    pub fn new(settings: SmsSettings, timeout: Duration, _ctx: &Context) -> Result<Self, String> {
        Ok(Sms { settings, http: client(timeout)?, sent: Mutex::default() })
    }

    fn what(&self) -> String {
        format!("sms {}", self.settings.api_url.host_str().unwrap_or("?"))
    }

    /// The numbers of a message: the configured ones, then the tier's responders', each once.
    fn numbers(&self, alerts: &[AlertRecord]) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        let tier = alerts.first().map(|a| a.audience.emails.as_slice()).unwrap_or_default();
        for n in self.settings.to.iter().cloned().chain(tier.iter().filter_map(|p| e164(p))) {
            if !all.contains(&n) {
                all.push(n);
            }
        }
        all
    }

    async fn send_one(&self, to: &str, body: &str) -> Outcome {
        let what = self.what();
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.settings.api_url.as_str().trim_end_matches('/'),
            self.settings.account_sid
        );
        let sender = if self.settings.from.starts_with("MG") { "MessagingServiceSid" } else { "From" };
        let form =
            match serde_urlencoded::to_string([("To", to), (sender, self.settings.from.as_str()), ("Body", body)]) {
                Ok(f) => f,
                Err(e) => return Outcome::AllRefused(format!("{what}: cannot encode the message: {e}")),
            };
        let resp = match self
            .http
            .post(url)
            .basic_auth(&self.settings.account_sid, Some(self.settings.auth_token.expose_secret()))
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Outcome::Retry(request_failed(&what, &e, true)),
        };
        let status = resp.status();
        let wait = retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return Outcome::Sent;
        }
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let code = json["code"].as_u64().unwrap_or(0);
        let message = json["message"].as_str().map_or_else(|| snippet(&text, 200), |m| snippet(m, 300));
        let reason = format!("{what}: HTTP {} (Twilio error {code}) {message}", status.as_u16());
        match (status.as_u16(), code) {
            (429, _) | (_, 20429) => Outcome::Retry(DeliveryError::Transient { reason, retry_after: wait }),
            (408, _) | (500..=599, _) => Outcome::Retry(DeliveryError::Transient { reason, retry_after: wait }),
            // The sender, the account or the credentials: no number can get it.
            (401 | 403 | 404, _) | (_, 20003 | 20404 | 21212 | 21603 | 21606 | 21659 | 21660) => {
                Outcome::AllRefused(reason)
            }
            // This number cannot get an SMS (invalid, not mobile, unsubscribed, unreachable,
            // blocked): the others still get it.
            (_, 21211 | 21214 | 21217 | 21408 | 21610 | 21612 | 21614) => Outcome::NumberRefused(reason),
            // Anything else (a full sending queue, 21611, in a storm; a code this version does
            // not know; a gateway's error page without a code) is retried, then given up with
            // the reason: refusing an SOS for an error we cannot read would be worse.
            _ => Outcome::Retry(DeliveryError::Transient { reason, retry_after: wait }),
        }
    }

    async fn send(&self, alerts: &[AlertRecord]) -> Result<(), DeliveryError> {
        let numbers = self.numbers(alerts);
        if numbers.is_empty() {
            return Err(DeliveryError::Permanent {
                reason: "sms: no number to send to (neither notify.sms.to nor a phone of the tier's responders)".into(),
            });
        }
        let key: String = alerts.iter().map(super::webhook::message_id).collect::<Vec<_>>().join(" ");
        let body = text(alerts);
        let done: HashSet<String> =
            self.sent.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned().unwrap_or_default();
        let (mut retry, mut refused, mut sent_now) = (None::<DeliveryError>, Vec::new(), 0usize);
        // Every number at once: one that hangs must not use up the attempt of the others (the
        // outbox cuts an attempt at `attempt_timeout`); each is recorded as it succeeds.
        let todo: Vec<&String> = numbers.iter().filter(|n| !done.contains(*n)).collect();
        let mut sends: futures_util::stream::FuturesUnordered<_> =
            todo.iter().map(|n| async { (*n, self.send_one(n, &body).await) }).collect();
        while let Some((n, outcome)) = futures_util::StreamExt::next(&mut sends).await {
            match outcome {
                Outcome::Sent => {
                    // Recorded at once: an attempt cut off later must not send it to this number again.
                    sent_now += 1;
                    let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
                    if sent.len() > 10_000 {
                        sent.clear();
                    }
                    sent.entry(key.clone()).or_default().insert(n.clone());
                }
                Outcome::Retry(e) => {
                    // Keep the longest Retry-After, and "unknown" over "transient".
                    retry = Some(match (retry.take(), e) {
                        (Some(DeliveryError::Unknown { reason }), _) | (_, DeliveryError::Unknown { reason }) => {
                            DeliveryError::Unknown { reason: format!("to {n}: {reason}") }
                        }
                        (
                            Some(DeliveryError::Transient { retry_after: a, .. }),
                            DeliveryError::Transient { reason, retry_after: b },
                        ) => DeliveryError::Transient { reason: format!("to {n}: {reason}"), retry_after: a.max(b) },
                        (_, e) => e,
                    })
                }
                Outcome::NumberRefused(reason) => refused.push(format!("to {n}: {reason}")),
                Outcome::AllRefused(reason) => {
                    self.sent.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                    return Err(DeliveryError::Permanent { reason });
                }
            }
        }
        if let Some(e) = retry {
            return Err(e);
        }
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        let delivered = done.len() + sent_now;
        match (delivered, refused.is_empty()) {
            (_, true) => Ok(()),
            (0, false) => Err(DeliveryError::Permanent { reason: refused.join("; ") }),
            (_, false) => {
                for r in &refused {
                    tracing::error!(channel = "sms", error = %r, delivered, "NOT DELIVERED to this number (the others got it)");
                }
                Ok(())
            }
        }
    }
}

impl Notifier for Sms {
    fn name(&self) -> &'static str {
        "sms"
    }

    /// Alerts of one audience (the same numbers), as many as one SMS of at most
    /// [`MAX_SEGMENTS`] carries with a line each (at most 10).
    fn fits(&self, alerts: &[AlertRecord]) -> usize {
        let same = alerts
            .iter()
            .take_while(|a| alerts.first().is_some_and(|f| f.audience.emails == a.audience.emails))
            .count();
        let mut n = same.min(10);
        let over = |t: String| segments(&t).1 > MAX_SEGMENTS || t.chars().count() > MAX_BODY_CHARS;
        while n > 1 && over(compose(&alerts[..n])) {
            n -= 1;
        }
        n.max(1)
    }

    /// The request was sent: Twilio may have queued the SMS.
    fn timed_out(&self, after: Duration) -> DeliveryError {
        DeliveryError::Unknown { reason: format!("sms: no answer within {} s", after.as_secs()) }
    }

    fn deliver<'a>(&'a self, alerts: &'a [AlertRecord]) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(self.send(alerts))
    }

    /// To the numbers of `notify.sms.to` (responders' phones are for alerts).
    fn notice<'a>(&'a self, subject: &'a str, text: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let body = within_limits(&format!("{subject}: {text}"));
            if self.settings.to.is_empty() {
                return Err("sms: no number for notices (notify.sms.to is empty)".into());
            }
            let mut errors = Vec::new();
            for n in &self.settings.to {
                match self.send_one(n, &body).await {
                    Outcome::Sent => {}
                    Outcome::Retry(e) => errors.push(e.to_string()),
                    Outcome::NumberRefused(r) | Outcome::AllRefused(r) => errors.push(r),
                }
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_follow_gsm7_and_ucs2() {
        assert_eq!(segments(&"a".repeat(160)), (Encoding::Gsm7, 1));
        assert_eq!(segments(&"a".repeat(161)), (Encoding::Gsm7, 2));
        assert_eq!(segments(&"a".repeat(306)), (Encoding::Gsm7, 2));
        assert_eq!(segments(&"a".repeat(307)), (Encoding::Gsm7, 3));
        // Extension characters count two septets.
        assert_eq!(segments(&"€".repeat(80)), (Encoding::Gsm7, 1));
        assert_eq!(segments(&"€".repeat(81)), (Encoding::Gsm7, 2));
        assert_eq!(segments(&"ж".repeat(70)), (Encoding::Ucs2, 1));
        assert_eq!(segments(&"ж".repeat(71)), (Encoding::Ucs2, 2));
        // An emoji is two UTF-16 units.
        assert_eq!(segments(&"🚨".repeat(35)), (Encoding::Ucs2, 1));
        assert_eq!(segments(&"🚨".repeat(36)), (Encoding::Ucs2, 2));
    }

    #[test]
    fn every_sms_is_within_the_limits_whatever_the_alert_holds() {
        for filler in ["a", "ж", "🚨", "€"] {
            let mut a = super::super::tests::alert(1);
            a.user = filler.repeat(2000);
            a.location = filler.repeat(2000);
            a.message = filler.repeat(2000);
            for alerts in [vec![a.clone()], vec![a.clone(); 10]] {
                let t = text(&alerts);
                assert!(
                    segments(&t).1 <= MAX_SEGMENTS && t.chars().count() <= MAX_BODY_CHARS,
                    "{filler}: {:?}",
                    segments(&t)
                );
            }
        }
        let one = text(&[super::super::tests::alert(1)]);
        assert_eq!(segments(&one), (Encoding::Gsm7, 1), "a plain alert is one SMS: {one}");
    }
}
