//! SMTP email through lettre: STARTTLS, implicit TLS or plain; optional authentication.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls as LettreTls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::format::{describe, details};
use super::{BoxFuture, DeliveryError, Notifier};
use crate::config::{EmailSettings, Tls};
use crate::links::AckLinks;
use crate::store::AlertRecord;

/// SMTP email to the configured responders.
#[derive(Debug)]
pub struct Email {
    settings: EmailSettings,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// Acknowledge links for the messages, when `[http] public_url` is set.
    links: Option<AckLinks>,
}

impl Email {
    /// A channel sending through the configured server, each attempt bounded by `timeout`; its
    /// messages about alerts that need someone carry an acknowledge link when `links` is set.
    ///
    /// # Errors
    /// If the host name is not usable for TLS.
    pub fn new(
        settings: EmailSettings,
        timeout: Duration,
        links: Option<AckLinks>,
    ) -> Result<Self, lettre::transport::smtp::Error> {
        let host = settings.smtp_host.as_str();
        let tls = |wrap: fn(TlsParameters) -> LettreTls| -> Result<Option<LettreTls>, lettre::transport::smtp::Error> {
            let mut params = TlsParameters::builder(host.to_owned());
            for der in &settings.ca_certs {
                params = params.add_root_certificate(Certificate::from_der(der.clone())?);
            }
            Ok(Some(wrap(params.build_rustls()?)))
        };
        let tls = match settings.tls {
            Tls::Starttls => tls(LettreTls::Required)?,
            Tls::Tls => tls(LettreTls::Wrapper)?,
            Tls::None => None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(settings.smtp_port)
            .timeout(Some(timeout));
        if let Some(tls) = tls {
            builder = builder.tls(tls);
        }
        if let Some((user, pass)) = &settings.credentials {
            use secrecy::ExposeSecret as _;
            builder = builder.credentials(Credentials::new(user.clone(), pass.expose_secret().to_owned()));
        }
        Ok(Email { transport: builder.build(), settings, links })
    }

    async fn send(&self, alerts: &[AlertRecord]) -> Result<(), DeliveryError> {
        let (subject, body) = compose_with(alerts, self.links.as_ref());
        let mut b =
            Message::builder().from(self.settings.from.clone()).subject(subject).header(ContentType::TEXT_PLAIN);
        for to in &self.settings.to {
            b = b.to(to.clone());
        }
        // The responders of the tier, beside the configured `to` (one message carries alerts of
        // one audience only: see `fits`).
        for extra in alerts.iter().flat_map(|a| &a.audience.emails) {
            match extra.parse::<lettre::message::Mailbox>() {
                Ok(m) if !self.settings.to.iter().any(|t| t.email == m.email) => b = b.to(m),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(address = %extra, error = %e, "email: a responder's address is not usable; skipped")
                }
            }
        }
        let email = b
            .body(body)
            .map_err(|e| DeliveryError::Permanent { reason: format!("email: cannot build the message: {e}") })?;
        let server = format!("{}:{}", self.settings.smtp_host, self.settings.smtp_port);
        match self.transport.send(email).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => {
                Err(DeliveryError::Permanent { reason: format!("email {server}: {}", flatten(&e)) })
            }
            // A timeout is retried at the usual pace: see `Notifier::timed_out` (the default).
            Err(e) => Err(DeliveryError::transient(format!("email {server}: {}", flatten(&e)))),
        }
    }
}

impl Email {
    /// A message about the collector itself (not an alert), once, without retry.
    async fn send_notice(&self, subject: &str, text: &str) -> Result<(), String> {
        let mut b = Message::builder()
            .from(self.settings.from.clone())
            .subject(subject.to_owned())
            .header(ContentType::TEXT_PLAIN);
        for to in &self.settings.to {
            b = b.to(to.clone());
        }
        let email = b.body(text.to_owned()).map_err(|e| e.to_string())?;
        self.transport.send(email).await.map(drop).map_err(|e| flatten(&e))
    }
}

/// A timeout is almost always a server stalled mid-session, before it took the message
/// (lettre does not say at which step): retried at the usual pace (the default `timed_out`).
impl Notifier for Email {
    fn name(&self) -> &'static str {
        "email"
    }

    fn fits(&self, alerts: &[AlertRecord]) -> usize {
        fits(alerts)
    }

    fn deliver<'a>(&'a self, alerts: &'a [AlertRecord]) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(self.send(alerts))
    }

    fn notice<'a>(&'a self, subject: &'a str, text: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.send_notice(subject, text))
    }
}

fn flatten(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The most alerts in one email, and the most bytes of its body: a message any mail server and
/// phone handles (servers commonly refuse 10 MB and more; long bodies get clipped by clients).
pub const MAX_ALERTS_PER_EMAIL: usize = 50;
/// See [`MAX_ALERTS_PER_EMAIL`].
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// How many of `alerts`, from the first, one email carries: those with the same extra
/// recipients as the first (a responder never gets another tier's alert), within the limits.
pub(crate) fn fits(alerts: &[AlertRecord]) -> usize {
    let same =
        alerts.iter().take_while(|a| alerts.first().is_some_and(|f| f.audience.emails == a.audience.emails)).count();
    let mut n = same.min(MAX_ALERTS_PER_EMAIL);
    while n > 1 && compose(&alerts[..n]).1.len() > MAX_BODY_BYTES {
        n -= 1;
    }
    n.max(1)
}

/// Subject and body, without acknowledge links (what [`fits`] measures: a link adds about
/// 200 bytes per alert, far within the margin of [`MAX_BODY_BYTES`]).
pub(crate) fn compose(alerts: &[AlertRecord]) -> (String, String) {
    compose_with(alerts, None)
}

/// Subject and body; each alert that needs someone ends with its acknowledge link when `links`
/// is set. The subject alone must let a responder act from a phone's lock screen.
pub(crate) fn compose_with(alerts: &[AlertRecord], links: Option<&AckLinks>) -> (String, String) {
    let subject = match alerts {
        [a] => describe(a),
        [first, ..] => {
            let real = alerts.iter().filter(|a| !a.test).count();
            let head = if real == 0 { "TEST SOS (DRILL)" } else { "SOS" };
            format!("{head}: {} alerts — first: {}", alerts.len(), describe(first))
        }
        [] => String::new(),
    };
    let mut body = String::new();
    if alerts.len() > 1 {
        body.push_str(&format!("{} alerts arrived together.\n\n", alerts.len()));
    }
    for (i, a) in alerts.iter().enumerate() {
        if i > 0 {
            body.push_str("\n----------------------------------------\n\n");
        }
        body.push_str(&details(a));
        if let Some(url) = links.and_then(|l| l.for_alert(a, "email")) {
            let hours = links.map_or(0, |l| l.ttl().as_secs().div_ceil(3600));
            body.push_str(&format!(
                "\nAcknowledge (I'm responding), without logging in:\n{url}\n(one use, valid {hours} h; opening it changes nothing until you confirm on the page)\n"
            ));
        }
    }
    body.push_str("\n-- \nSent by sos-collector. Reply to your team, not to this address.\n");
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sos_shared::AlertId;

    #[test]
    fn an_alert_that_needs_someone_carries_its_acknowledge_link() {
        use crate::store::AlertUpdate;
        let links = AckLinks::new("https://sos.example.org", [9u8; 32], crate::links::DEFAULT_TTL);
        let mut a = AlertRecord {
            alert_id: AlertId::from_u128(5),
            test: false,
            triggered_at: 0,
            received_at_ms: 0,
            user: "bob".into(),
            host: "pc-7".into(),
            ip: "10.1.1.7".into(),
            location: "Ward 3".into(),
            message: String::new(),
            source: String::new(),
            enrolled: None,
            cancellation: None,
            audience: Default::default(),
            update: None,
            site: None,
        };
        let (_, body) = compose_with(std::slice::from_ref(&a), Some(&links));
        let url = body.lines().find(|l| l.starts_with("https://sos.example.org/ack/")).expect(&body);
        let t = links.verify(url.rsplit('/').next().unwrap(), std::time::SystemTime::now()).unwrap();
        assert_eq!((t.alert, t.channel.as_str()), (a.alert_id, "email"));
        assert!(!compose(std::slice::from_ref(&a)).1.contains("/ack/"));
        a.update = Some(AlertUpdate::Resolved { by: "Sam".into(), outcome: "ok".into(), note: String::new() });
        assert!(!compose_with(std::slice::from_ref(&a), Some(&links)).1.contains("/ack/"));
    }

    #[test]
    fn subject_is_actionable_and_tests_are_marked() {
        let mut a = AlertRecord {
            alert_id: AlertId::from_u128(5),
            test: false,
            triggered_at: 0,
            received_at_ms: 0,
            user: "bob".into(),
            host: "pc-7".into(),
            ip: "10.1.1.7".into(),
            location: "Ward 3".into(),
            message: "aggressive visitor".into(),
            source: String::new(),
            enrolled: None,
            cancellation: None,
            audience: Default::default(),
            update: None,
            site: None,
        };
        let (s, b) = compose(std::slice::from_ref(&a));
        assert_eq!(s, "SOS: bob at Ward 3 (pc-7, 10.1.1.7)");
        assert!(b.contains("aggressive visitor") && b.contains(&a.alert_id.to_string()));
        a.test = true;
        let (s, b) = compose(std::slice::from_ref(&a));
        assert!(s.starts_with("TEST SOS (DRILL)") && b.starts_with("THIS IS A DRILL"), "{s}\n{b}");
    }

    #[test]
    fn each_response_message_says_what_happened_and_drills_say_drill() {
        use crate::store::{AlertUpdate, Audience, Cancellation};
        let mut a = AlertRecord {
            alert_id: AlertId::from_u128(5),
            test: false,
            triggered_at: 0,
            received_at_ms: 0,
            user: "bob".into(),
            host: "pc-7".into(),
            ip: "10.1.1.7".into(),
            location: "Ward 3".into(),
            message: String::new(),
            source: String::new(),
            enrolled: None,
            cancellation: None,
            audience: Audience { tier: 2, mentions: vec![], emails: vec!["kim@example.com".into()] },
            update: None,
            site: None,
        };
        let subject = |a: &AlertRecord| compose(std::slice::from_ref(a)).0;
        let body = |a: &AlertRecord| compose(std::slice::from_ref(a)).1;
        assert_eq!(subject(&a), "SOS (escalated: tier 2): bob at Ward 3 (pc-7, 10.1.1.7)");
        assert!(body(&a).starts_with("ESCALATED (tier 2)"), "{}", body(&a));
        a.update = Some(AlertUpdate::Reminder { after_secs: 60 });
        assert!(subject(&a).starts_with("STILL UNANSWERED after 60 s — SOS: bob"), "{}", subject(&a));
        a.update = Some(AlertUpdate::Acknowledged { by: "Sam Lee".into(), note: "2 min".into() });
        assert!(subject(&a).starts_with("Acknowledged by Sam Lee — SOS: bob"), "{}", subject(&a));
        assert!(body(&a).contains("Note: 2 min"));
        a.update =
            Some(AlertUpdate::Resolved { by: "Sam Lee".into(), outcome: "false alarm".into(), note: String::new() });
        assert!(subject(&a).starts_with("Resolved by Sam Lee: false alarm — SOS: bob"), "{}", subject(&a));
        a.update = None;
        a.cancellation = Some(Cancellation { at_ms: 0, reason: "oops".into() });
        assert!(subject(&a).starts_with("CANCELLED by sender — check in person — SOS"), "{}", subject(&a));
        a.test = true;
        assert!(subject(&a).contains("TEST SOS (DRILL)"), "{}", subject(&a));
        // A message carries one audience: another tier's alert waits for the next email.
        let mut other = a.clone();
        other.audience.emails = vec!["sam@example.com".into()];
        assert_eq!(fits(&[a.clone(), a.clone(), other]), 2);
    }
}
