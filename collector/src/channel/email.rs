//! SMTP email through lettre: STARTTLS, implicit TLS or plain; optional authentication.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls as LettreTls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::format::{describe, details};
use super::DeliveryError;
use crate::config::{EmailSettings, Tls};
use crate::store::AlertRecord;

/// SMTP email to the configured responders.
#[derive(Debug)]
pub struct Email {
    settings: EmailSettings,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl Email {
    /// A channel sending through the configured server, each attempt bounded by `timeout`.
    ///
    /// # Errors
    /// If the host name is not usable for TLS.
    pub fn new(settings: EmailSettings, timeout: Duration) -> Result<Self, lettre::transport::smtp::Error> {
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
        Ok(Email { transport: builder.build(), settings })
    }

    pub(crate) async fn deliver(&self, alerts: &[AlertRecord]) -> Result<(), DeliveryError> {
        let (subject, body) = compose(alerts);
        let mut b =
            Message::builder().from(self.settings.from.clone()).subject(subject).header(ContentType::TEXT_PLAIN);
        for to in &self.settings.to {
            b = b.to(to.clone());
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
            // A timeout is retried at the usual pace: see `Channel::timed_out`.
            Err(e) => Err(DeliveryError::transient(format!("email {server}: {}", flatten(&e)))),
        }
    }
}

impl Email {
    /// A message about the collector itself (not an alert), once, without retry.
    pub(crate) async fn notice(&self, subject: &str, text: &str) -> Result<(), String> {
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

/// How many of `alerts`, from the first, one email carries.
pub(crate) fn fits(alerts: &[AlertRecord]) -> usize {
    let mut n = alerts.len().min(MAX_ALERTS_PER_EMAIL);
    while n > 1 && compose(&alerts[..n]).1.len() > MAX_BODY_BYTES {
        n -= 1;
    }
    n.max(1)
}

/// Subject and body. The subject alone must let a responder act from a phone's lock screen.
pub(crate) fn compose(alerts: &[AlertRecord]) -> (String, String) {
    let subject = match alerts {
        [a] => describe(a),
        [first, ..] => {
            let real = alerts.iter().filter(|a| !a.test).count();
            let head = if real == 0 { "TEST SOS" } else { "SOS" };
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
    }
    body.push_str("\n-- \nSent by sos-collector. Reply to your team, not to this address.\n");
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sos_shared::AlertId;

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
        };
        let (s, b) = compose(std::slice::from_ref(&a));
        assert_eq!(s, "SOS: bob at Ward 3 (pc-7, 10.1.1.7)");
        assert!(b.contains("aggressive visitor") && b.contains(&a.alert_id.to_string()));
        a.test = true;
        let (s, b) = compose(&[a]);
        assert!(s.starts_with("TEST SOS") && b.starts_with("THIS IS A TEST"));
    }
}
