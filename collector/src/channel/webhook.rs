//! Signed webhooks following Standard Webhooks 1.0 (<https://www.standardwebhooks.com>).
//!
//! - One alert per request, a JSON body `{"type": "sos.alert", "timestamp": …, "data": {…}}`.
//! - Headers `webhook-id` (the same on every retry of one job: `msg_<alert id>_<kind>_<tier>`,
//!   the receiver's idempotency key), `webhook-timestamp` (this attempt, Unix seconds) and
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the
//!   configured `whsec_<base64>` secret.
//! - Retries follow the specification's schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h,
//!   20 h, 24 h after each failure) as the least wait, within the outbox's `give_up_after`;
//!   `Retry-After` is honoured. A timeout is retried at that pace too: the receiver deduplicates
//!   by `webhook-id`.
//! - `410 Gone` disables the endpoint: recorded in `DATA_DIR/webhook.disabled` (so a restart
//!   keeps it disabled), every administrator told through the other channels. It stays
//!   disabled until `url` changes or the file is deleted.
//! - A redirect (3xx) is not followed: the URL is to be updated.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::format::{describe, enrolled_line, identity_warning, when_utc};
use super::http::{client, request_failed, retry_after, snippet};
use super::{AdminNotice, BoxFuture, Context, DeliveryError, Notifier};
use crate::config::WebhookSettings;
use crate::store::{AlertRecord, AlertUpdate};

/// The specification's example retry schedule: the least wait after the 1st, 2nd… failure.
pub const SCHEDULE: [Duration; 9] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(14 * 3600),
    Duration::from_secs(20 * 3600),
    Duration::from_secs(24 * 3600),
];

/// The file, in the data directory, that records a disabled endpoint.
pub const DISABLED_FILE: &str = "webhook.disabled";

/// The signature of `body` sent as `id` at `timestamp` (Unix seconds) with `key` (the secret's
/// bytes, after `whsec_` and base64): `v1,<base64>`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// The event type and `webhook-id` part of a job: what it says about its alert.
fn kind(a: &AlertRecord) -> &'static str {
    match (&a.update, &a.cancellation) {
        (Some(AlertUpdate::Reminder { .. }), _) => "reminder",
        (Some(AlertUpdate::Acknowledged { .. }), _) => "acknowledged",
        (Some(AlertUpdate::Resolved { .. }), _) => "resolved",
        (None, Some(_)) => "cancelled",
        (None, None) => "alert",
    }
}

/// The `webhook-id` of the job carrying `a`: the same on every retry (the outbox holds one job
/// per alert, channel, kind and tier), no `.` in it.
pub fn message_id(a: &AlertRecord) -> String {
    format!("msg_{}_{}_{}", a.alert_id, kind(a), a.audience.tier.max(1))
}

/// The JSON body for `a`.
pub fn payload(a: &AlertRecord) -> Value {
    let update = match &a.update {
        Some(AlertUpdate::Reminder { after_secs }) => json!({"after_secs": after_secs}),
        Some(AlertUpdate::Acknowledged { by, note }) => json!({"by": by, "note": note}),
        Some(AlertUpdate::Resolved { by, outcome, note }) => json!({"by": by, "outcome": outcome, "note": note}),
        None => Value::Null,
    };
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(a.triggered_at.max(0) as u64);
    json!({
        "type": format!("sos.{}", kind(a)),
        "timestamp": humantime::format_rfc3339_seconds(t).to_string(),
        "data": {
            "alert_id": a.alert_id.to_string(),
            "drill": a.test,
            "tier": a.audience.tier.max(1),
            "summary": describe(a),
            "user": a.user,
            "location": a.location,
            "host": a.host,
            "ip": a.ip,
            "message": a.message,
            "triggered_at": when_utc(a.triggered_at),
            "received_at_ms": a.received_at_ms,
            "enrolled": enrolled_line(a),
            "identity_warning": identity_warning(a),
            "update": update,
            "cancellation": a.cancellation.as_ref().map(|c| json!({"at_ms": c.at_ms, "reason": c.reason})),
        }
    })
}

/// A Standard Webhooks endpoint.
#[derive(Debug)]
pub struct Webhook {
    settings: WebhookSettings,
    http: reqwest::Client,
    /// Where a `410 Gone` is recorded.
    disabled_file: PathBuf,
    /// What identifies the endpoint in that file (a hash of its URL: the URL is a secret).
    fingerprint: String,
    /// Failed attempts per `webhook-id` in this run, for the schedule.
    failures: Mutex<HashMap<String, usize>>,
    /// A 410 that could not be recorded in the file (a read-only disk): disabled for this run.
    gone_unrecorded: std::sync::atomic::AtomicBool,
    admin: Option<tokio::sync::mpsc::UnboundedSender<AdminNotice>>,
}

impl Webhook {
    /// A channel posting to the configured endpoint, each request bounded by `timeout`; a
    /// disabled endpoint is recorded in `data_dir`.
    ///
    /// # Errors
    /// If the HTTP client cannot be built.
    pub fn new(settings: WebhookSettings, timeout: Duration, data_dir: PathBuf, ctx: &Context) -> Result<Self, String> {
        let fingerprint = hex(&Sha256::digest(settings.url.as_str().as_bytes())[..16]);
        let webhook = Webhook {
            http: client(timeout)?,
            settings,
            disabled_file: data_dir.join(DISABLED_FILE),
            fingerprint,
            failures: Mutex::default(),
            gone_unrecorded: std::sync::atomic::AtomicBool::new(false),
            admin: ctx.admin.clone(),
        };
        // Still disabled from an earlier run: said again at every start, so that an
        // administrator who missed the first notice hears of it.
        if let Some(since) = webhook.disabled_since() {
            tracing::error!(channel = "webhook", since = %since, file = %webhook.disabled_file.display(),
                            "THE WEBHOOK ENDPOINT IS DISABLED (it answered 410 Gone): nothing is sent to it");
            if let Some(admin) = &webhook.admin {
                let _ = admin.send(AdminNotice {
                    from: "webhook",
                    subject: "SOS collector: webhook endpoint still disabled",
                    text: format!(
                        "the webhook endpoint ({}) is disabled since {since} (it answered 410 Gone) and receives no \
                         alerts. To enable it again, delete {} or change notify.webhook.url.",
                        webhook.host(),
                        webhook.disabled_file.display()
                    ),
                });
            }
        }
        Ok(webhook)
    }

    fn host(&self) -> String {
        format!("webhook {}", self.settings.url.host_str().unwrap_or("?"))
    }

    /// When the endpoint was disabled (the file's second line), if this URL is disabled. A
    /// file for another URL (the configuration changed) is removed.
    fn disabled_since(&self) -> Option<String> {
        if self.gone_unrecorded.load(std::sync::atomic::Ordering::Relaxed) {
            return Some("this start (not recorded: the data directory is not writable)".into());
        }
        let text = std::fs::read_to_string(&self.disabled_file).ok()?;
        let mut lines = text.lines();
        if lines.next() == Some(self.fingerprint.as_str()) {
            return Some(lines.next().unwrap_or("?").to_owned());
        }
        if std::fs::remove_file(&self.disabled_file).is_ok() {
            tracing::info!(
                channel = "webhook",
                "the webhook URL changed: the endpoint disabled before is enabled again"
            );
        }
        None
    }

    fn disable(&self) {
        let when = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let text = format!(
            "{}\n{when}\nThe webhook endpoint answered 410 Gone: it asked not to be sent anything more. \
             Delete this file (or change notify.webhook.url) to enable it again.\n",
            self.fingerprint
        );
        if let Err(e) = std::fs::write(&self.disabled_file, text) {
            self.gone_unrecorded.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(channel = "webhook", file = %self.disabled_file.display(), error = %e,
                            "cannot record that the webhook endpoint is disabled; it is disabled until the collector restarts");
        }
    }

    async fn send(&self, a: &AlertRecord) -> Result<(), DeliveryError> {
        let what = self.host();
        if let Some(since) = self.disabled_since() {
            return Err(DeliveryError::Permanent {
                reason: format!(
                    "{what}: the endpoint is disabled since {since} (it answered 410 Gone); delete {} or change \
                     notify.webhook.url to enable it again",
                    self.disabled_file.display()
                ),
            });
        }
        let id = message_id(a);
        let result = self.post(&id, &payload(a)).await;
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Err(DeliveryError::Transient { reason, retry_after }) => {
                if failures.len() > 100_000 {
                    failures.clear();
                }
                let n = failures.entry(id).or_default();
                *n += 1;
                let floor = SCHEDULE[(*n - 1).min(SCHEDULE.len() - 1)];
                Err(DeliveryError::Transient { reason, retry_after: Some(retry_after.map_or(floor, |r| r.max(floor))) })
            }
            other => {
                failures.remove(&id);
                other
            }
        }
    }

    /// One signed request; 410 disables the endpoint.
    async fn post(&self, id: &str, body: &Value) -> Result<(), DeliveryError> {
        let what = self.host();
        let body = serde_json::to_vec(body).map_err(|e| DeliveryError::Permanent { reason: e.to_string() })?;
        let timestamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let signature = sign(self.settings.secret.key(), id, timestamp, &body);
        let resp = self
            .http
            .post(self.settings.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| request_failed(&what, &e, false))?;
        let status = resp.status();
        let wait = retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(());
        }
        let reason = format!("{what}: HTTP {} {}", status.as_u16(), snippet(&text, 200));
        if status == reqwest::StatusCode::GONE {
            let first = self.disabled_since().is_none();
            self.disable();
            if first {
                tracing::error!(
                    channel = "webhook",
                    "THE WEBHOOK ENDPOINT ANSWERED 410 GONE: disabled; nothing more is sent to it"
                );
                if let Some(admin) = &self.admin {
                    let _ = admin.send(AdminNotice {
                        from: "webhook",
                        subject: "SOS collector: webhook endpoint disabled",
                        text: format!(
                            "the webhook endpoint ({what}) answered 410 Gone, so it is disabled and receives no more \
                             alerts. To enable it again, delete {} or change notify.webhook.url.",
                            self.disabled_file.display()
                        ),
                    });
                }
            }
            return Err(DeliveryError::Permanent { reason: format!("{reason} (endpoint disabled)") });
        }
        if status.is_redirection() {
            return Err(DeliveryError::Permanent {
                reason: format!("{reason}: redirects are not followed; update notify.webhook.url"),
            });
        }
        // Every other answer is a failure to retry on the schedule (the specification's
        // "treated as a failure"); 429, 502, 503 and 504 say to slow down: Retry-After.
        Err(DeliveryError::Transient { reason, retry_after: wait })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Notifier for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    /// One alert per request: its `webhook-id` is the job's.
    fn fits(&self, _alerts: &[AlertRecord]) -> usize {
        1
    }

    fn deliver<'a>(&'a self, alerts: &'a [AlertRecord]) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            match alerts {
                [a] => self.send(a).await,
                _ => Err(DeliveryError::Permanent { reason: "webhook: one alert per request".into() }),
            }
        })
    }

    fn notice<'a>(&'a self, subject: &'a str, text: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if self.disabled_since().is_some() {
                return Err(format!("{}: the endpoint is disabled (410 Gone)", self.host()));
            }
            let now = SystemTime::now();
            let id = format!("msg_notice_{}", now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis()));
            let body = json!({
                "type": "sos.notice",
                "timestamp": humantime::format_rfc3339_seconds(now).to_string(),
                "data": {"subject": subject, "text": text},
            });
            self.post(&id, &body).await.map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the specification's reference libraries (every library's `sign` test).
    #[test]
    fn signs_as_the_published_example() {
        let secret = crate::config::WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(secret.key(), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        // The same secret without its prefix is the same key.
        assert_eq!(
            crate::config::WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap().key(),
            secret.key()
        );
        // A different body, id or timestamp: a different signature.
        assert_ne!(sign(secret.key(), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_331, br#"{"test": 2432232314}"#), sig);
    }

    #[test]
    fn ids_are_stable_per_job_and_hold_no_dot() {
        let mut a = super::super::tests::alert(7);
        let id = message_id(&a);
        assert_eq!(id, message_id(&a.clone()));
        assert!(!id.contains('.'), "{id}");
        a.update = Some(AlertUpdate::Reminder { after_secs: 60 });
        assert_ne!(message_id(&a), id);
    }
}
