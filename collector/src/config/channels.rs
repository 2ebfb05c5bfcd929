//! `[notify.*]`: the notification channels beside the log, their settings and validation.
//! Errors name the key and never repeat a secret's value.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sos_shared::config::{secret, ExposeSecret as _, SecretString};

use super::{Config, ConfigError};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawNotify {
    slack: Option<RawSlack>,
    email: Option<RawEmail>,
    sms: Option<RawSms>,
    teams: Option<RawTeams>,
    ntfy: Option<RawNtfy>,
    webhook: Option<RawWebhook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlack {
    webhook_url: Option<SecretString>,
    webhook_url_file: Option<PathBuf>,
    webhook_url_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    smtp_host: String,
    smtp_port: Option<u16>,
    #[serde(default)]
    tls: Tls,
    username: Option<String>,
    password: Option<SecretString>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    from: String,
    to: Vec<String>,
    ca_file: Option<PathBuf>,
    allow_plaintext_auth: Option<bool>,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// Plain connection upgraded with STARTTLS, which the server must offer (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a relay on the same host or a trusted network (port 25).
    None,
}

/// The channels configured beside the log.
#[derive(Debug, Clone, Default)]
pub struct NotifySettings {
    /// Slack, if configured.
    pub slack: Option<SlackSettings>,
    /// Email, if configured.
    pub email: Option<EmailSettings>,
    /// SMS through Twilio, if configured.
    pub sms: Option<SmsSettings>,
    /// Microsoft Teams, if configured.
    pub teams: Option<TeamsSettings>,
    /// ntfy, if configured.
    pub ntfy: Option<NtfySettings>,
    /// A Standard Webhooks endpoint, if configured.
    pub webhook: Option<WebhookSettings>,
}

/// A Slack incoming webhook.
#[derive(Clone)]
pub struct SlackSettings {
    /// The webhook URL. A secret: whoever has it can post to the channel.
    pub webhook_url: reqwest::Url,
}

impl std::fmt::Debug for SlackSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackSettings").field("webhook_host", &self.webhook_url.host_str()).finish_non_exhaustive()
    }
}

/// An SMTP server and the message envelope.
#[derive(Clone)]
pub struct EmailSettings {
    /// The SMTP server's host name.
    pub smtp_host: String,
    /// Its port.
    pub smtp_port: u16,
    /// How the connection is secured.
    pub tls: Tls,
    /// User name and password, if the server wants them.
    pub credentials: Option<(String, SecretString)>,
    /// The sender address.
    pub from: lettre::message::Mailbox,
    /// The responders' addresses.
    pub to: Vec<lettre::message::Mailbox>,
    /// Extra certificate authorities (DER) trusted for this server, beside the system's: for a
    /// relay with a certificate from a private CA.
    pub ca_certs: Vec<Vec<u8>>,
}

impl std::fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSettings")
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .field("tls", &self.tls)
            .field("username", &self.credentials.as_ref().map(|c| &c.0))
            .field("from", &self.from)
            .field("to", &self.to)
            .field("ca_certs", &self.ca_certs.len())
            .finish()
    }
}

pub(super) fn notify(
    file: Option<&Path>,
    raw: RawNotify,
    rel: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<NotifySettings, ConfigError> {
    let mut out = NotifySettings::default();
    if let Some(s) = raw.slack {
        let (key, url) =
            secret(file, "notify.slack.webhook_url", s.webhook_url, s.webhook_url_file.map(rel), s.webhook_url_env)?
                .ok_or_else(|| {
                    ConfigError::at(
                        file,
                        "notify.slack.webhook_url",
                        "[notify.slack] needs webhook_url, webhook_url_file or webhook_url_env",
                    )
                })?;
        let url = reqwest::Url::parse(url.expose_secret().trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                ConfigError::at(file, &key, "not an http(s) URL (the value is not shown: it is a secret)")
            })?;
        out.slack = Some(SlackSettings { webhook_url: url });
    }

    if let Some(e) = raw.email {
        if e.smtp_host.trim().is_empty() {
            return Err(ConfigError::at(file, "notify.email.smtp_host", "must not be empty"));
        }
        let password = secret(file, "notify.email.password", e.password, e.password_file.map(rel), e.password_env)?;
        let credentials = match (e.username, password) {
            (Some(u), Some((_, p))) => Some((u, SecretString::from(p.expose_secret().trim_end_matches(['\r', '\n'])))),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::at(
                    file,
                    "notify.email.username",
                    "a username needs a password (password, password_env or password_file)",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::at(file, "notify.email.username", "a password needs a username"))
            }
        };
        let from = e.from.parse().map_err(|err| {
            ConfigError::at(file, "notify.email.from", format!("{:?} is not an email address: {err}", e.from))
        })?;
        if e.to.is_empty() {
            return Err(ConfigError::at(file, "notify.email.to", "needs at least one address"));
        }
        let to =
            e.to.iter()
                .map(|a| {
                    a.parse().map_err(|err| {
                        ConfigError::at(file, "notify.email.to", format!("{a:?} is not an email address: {err}"))
                    })
                })
                .collect::<Result<_, _>>()?;
        if credentials.is_some() && e.tls == Tls::None && e.allow_plaintext_auth != Some(true) {
            return Err(ConfigError::at(
                file,
                "notify.email.tls",
                "\"none\" would send the SMTP password unencrypted; use \"starttls\" or \"tls\", or, for a relay \
                 on this host or a network you trust, set notify.email.allow_plaintext_auth = true",
            ));
        }
        let smtp_port = e.smtp_port.unwrap_or(match e.tls {
            Tls::Starttls => 587,
            Tls::Tls => 465,
            Tls::None => 25,
        });
        let ca_certs = match &e.ca_file {
            None => Vec::new(),
            Some(_) if e.tls == Tls::None => {
                return Err(ConfigError::at(file, "notify.email.ca_file", "needs tls = \"starttls\" or \"tls\""))
            }
            Some(path) => {
                use rustls::pki_types::{pem::PemObject as _, CertificateDer};
                let path = rel(path.clone());
                let bad = |why: String| ConfigError::at(file, "notify.email.ca_file", why);
                let pem = std::fs::read(&path).map_err(|err| bad(format!("cannot read {}: {err}", path.display())))?;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .map(|c| c.map(|c| c.to_vec()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| bad(format!("{} is not valid PEM: {err:?}", path.display())))?;
                if certs.is_empty() {
                    return Err(bad(format!("{} holds no PEM certificate", path.display())));
                }
                certs
            }
        };
        out.email =
            Some(EmailSettings { smtp_host: e.smtp_host, smtp_port, tls: e.tls, credentials, from, to, ca_certs });
    }
    out.sms = raw.sms.map(|s| sms(file, s, rel)).transpose()?;
    out.teams = raw.teams.map(|t| teams(file, t, rel)).transpose()?;
    out.ntfy = raw.ntfy.map(|n| ntfy(file, n, rel)).transpose()?;
    out.webhook = raw.webhook.map(|w| webhook(file, w, rel)).transpose()?;
    Ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    url: Option<SecretString>,
    url_file: Option<PathBuf>,
    url_env: Option<String>,
    secret: Option<SecretString>,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSms {
    account_sid: String,
    auth_token: Option<SecretString>,
    auth_token_file: Option<PathBuf>,
    auth_token_env: Option<String>,
    from: String,
    #[serde(default)]
    to: Vec<String>,
    api_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTeams {
    webhook_url: Option<SecretString>,
    webhook_url_file: Option<PathBuf>,
    webhook_url_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNtfy {
    server: String,
    topic: String,
    token: Option<SecretString>,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
}

/// A Standard Webhooks signing secret (`whsec_<base64>`, 24 to 64 bytes): never shown,
/// wiped from memory when dropped.
#[derive(Clone)]
pub struct WebhookSecret(std::sync::Arc<secrecy::SecretSlice<u8>>);

impl WebhookSecret {
    /// The secret of `whsec_<base64>` (the prefix may be left out).
    ///
    /// # Errors
    /// What is wrong with it, without its value.
    pub fn parse(text: &str) -> Result<Self, String> {
        use base64::Engine as _;
        let b64 = text.trim();
        let b64 = b64.strip_prefix("whsec_").unwrap_or(b64);
        let key = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| {
            "not a Standard Webhooks secret: \"whsec_\" then base64 (the value is not shown)".to_owned()
        })?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "a secret of {} bytes; Standard Webhooks secrets are 24 to 64 random bytes (make one with \
                 echo whsec_$(head -c 32 /dev/urandom | base64))",
                key.len()
            ));
        }
        Ok(WebhookSecret(std::sync::Arc::new(key.into())))
    }

    /// The key's bytes.
    pub fn key(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

/// A Standard Webhooks endpoint.
#[derive(Clone)]
pub struct WebhookSettings {
    /// Where to post. May carry a secret (a token in its path or query): never shown whole.
    pub url: reqwest::Url,
    /// The signing secret.
    pub secret: WebhookSecret,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings").field("host", &self.url.host_str()).finish_non_exhaustive()
    }
}

/// SMS through Twilio's Messages API (or a service answering like it).
#[derive(Clone)]
pub struct SmsSettings {
    /// The account (`AC` and 32 hex digits): in the API's path, not a secret.
    pub account_sid: String,
    /// The auth token: a secret.
    pub auth_token: SecretString,
    /// The sender: a phone number in E.164 form, or a messaging service (`MG…`).
    pub from: String,
    /// Numbers that get every SMS (E.164), beside the responders of the firing tier.
    pub to: Vec<String>,
    /// The API's base URL (`https://api.twilio.com`).
    pub api_url: reqwest::Url,
}

impl std::fmt::Debug for SmsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsSettings")
            .field("account_sid", &self.account_sid)
            .field("from", &self.from)
            .field("to", &self.to)
            .field("api_url", &self.api_url.as_str())
            .finish_non_exhaustive()
    }
}

/// A Microsoft Teams Workflows webhook ("Post to a channel when a webhook request is received").
#[derive(Clone)]
pub struct TeamsSettings {
    /// The workflow's URL: a secret (its `sig` parameter authorises posting).
    pub webhook_url: reqwest::Url,
}

impl std::fmt::Debug for TeamsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeamsSettings").field("webhook_host", &self.webhook_url.host_str()).finish_non_exhaustive()
    }
}

/// An ntfy topic.
#[derive(Clone)]
pub struct NtfySettings {
    /// The server (`https://ntfy.sh`).
    pub server: reqwest::Url,
    /// The topic. On a public server whoever knows it can read it: choose one hard to guess.
    pub topic: String,
    /// An access token (`tk_…`) for a protected topic.
    pub token: Option<SecretString>,
}

impl std::fmt::Debug for NtfySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtfySettings")
            .field("server", &self.server.host_str())
            .field("token", &self.token.as_ref().map(|_| ".."))
            .finish_non_exhaustive()
    }
}

/// An http(s) URL from a secret, or an error naming `key` without the value.
fn secret_url(file: Option<&Path>, key: &str, text: &SecretString) -> Result<reqwest::Url, ConfigError> {
    reqwest::Url::parse(text.expose_secret().trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| ConfigError::at(file, key, "not an http(s) URL (the value is not shown: it is a secret)"))
}

/// A phone number as Twilio wants it (E.164: `+`, the country code and at most 15 digits), from
/// what a person wrote (`+44 20 7946-0000`, `+1 (555) 010 2030`). A number without its `+` and
/// country code (`07700 900123`) is not one: every SMS to it would be refused.
pub fn e164(number: &str) -> Option<String> {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    let allowed = number.chars().all(|c| c.is_ascii_digit() || " +-().".contains(c));
    let plus = number.trim_start().starts_with('+') && number.matches('+').count() == 1;
    (allowed && plus && (3..=15).contains(&digits.len())).then(|| format!("+{digits}"))
}

fn webhook(
    file: Option<&Path>,
    w: RawWebhook,
    rel: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<WebhookSettings, ConfigError> {
    let (key, url) = secret(file, "notify.webhook.url", w.url, w.url_file.map(rel), w.url_env)?.ok_or_else(|| {
        ConfigError::at(file, "notify.webhook.url", "[notify.webhook] needs url, url_file or url_env")
    })?;
    let url = secret_url(file, &key, &url)?;
    let (key, s) =
        secret(file, "notify.webhook.secret", w.secret, w.secret_file.map(rel), w.secret_env)?.ok_or_else(|| {
            ConfigError::at(
                file,
                "notify.webhook.secret",
                "[notify.webhook] needs secret, secret_file or secret_env (whsec_ and base64 of 24 to 64 random bytes)",
            )
        })?;
    let secret = WebhookSecret::parse(s.expose_secret()).map_err(|m| ConfigError::at(file, &key, m))?;
    Ok(WebhookSettings { url, secret })
}

fn sms(file: Option<&Path>, s: RawSms, rel: &dyn Fn(PathBuf) -> PathBuf) -> Result<SmsSettings, ConfigError> {
    let sid = s.account_sid.trim();
    if !(sid.len() == 34 && sid.starts_with("AC") && sid[2..].chars().all(|c| c.is_ascii_hexdigit())) {
        return Err(ConfigError::at(
            file,
            "notify.sms.account_sid",
            format!("{sid:?} is not a Twilio account SID (AC and 32 hex digits)"),
        ));
    }
    let (_, token) = secret(file, "notify.sms.auth_token", s.auth_token, s.auth_token_file.map(rel), s.auth_token_env)?
        .ok_or_else(|| {
            ConfigError::at(
                file,
                "notify.sms.auth_token",
                "[notify.sms] needs auth_token, auth_token_file or auth_token_env",
            )
        })?;
    let token = SecretString::from(token.expose_secret().trim());
    if token.expose_secret().is_empty() {
        return Err(ConfigError::at(file, "notify.sms.auth_token", "is empty"));
    }
    let from = s.from.trim();
    let from = if from.starts_with("MG") && from.len() == 34 {
        from.to_owned()
    } else {
        e164(from).filter(|f| f.starts_with('+')).ok_or_else(|| {
            ConfigError::at(
                file,
                "notify.sms.from",
                format!(
                    "{from:?} is not a phone number in E.164 form (+ and digits) nor a messaging service SID (MG…)"
                ),
            )
        })?
    };
    let to =
        s.to.iter()
            .map(|n| {
                e164(n).ok_or_else(|| {
                    ConfigError::at(
                        file,
                        "notify.sms.to",
                        format!("{n:?} is not an international phone number (+, country code, number)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
    let api = s.api_url.as_deref().unwrap_or("https://api.twilio.com");
    let api_url = reqwest::Url::parse(api)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| ConfigError::at(file, "notify.sms.api_url", format!("{api:?} is not an http(s) URL")))?;
    Ok(SmsSettings { account_sid: sid.to_owned(), auth_token: token, from, to, api_url })
}

fn teams(file: Option<&Path>, t: RawTeams, rel: &dyn Fn(PathBuf) -> PathBuf) -> Result<TeamsSettings, ConfigError> {
    let (key, url) =
        secret(file, "notify.teams.webhook_url", t.webhook_url, t.webhook_url_file.map(rel), t.webhook_url_env)?
            .ok_or_else(|| {
                ConfigError::at(
                    file,
                    "notify.teams.webhook_url",
                    "[notify.teams] needs webhook_url, webhook_url_file or webhook_url_env",
                )
            })?;
    Ok(TeamsSettings { webhook_url: secret_url(file, &key, &url)? })
}

fn ntfy(file: Option<&Path>, n: RawNtfy, rel: &dyn Fn(PathBuf) -> PathBuf) -> Result<NtfySettings, ConfigError> {
    let server = reqwest::Url::parse(n.server.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| ConfigError::at(file, "notify.ntfy.server", format!("{:?} is not an http(s) URL", n.server)))?;
    // ntfy takes a JSON publish only at its root: posted to a topic's URL it would show the JSON
    // as the text of a normal-priority message (no sound through Do Not Disturb), and answer 200.
    if server.path() != "/" || server.query().is_some() {
        return Err(ConfigError::at(
            file,
            "notify.ntfy.server",
            format!(
                "{:?}: give the server's root (https://ntfy.example.org); the topic goes in notify.ntfy.topic",
                n.server
            ),
        ));
    }
    let topic = n.topic.trim();
    if topic.is_empty() || topic.len() > 64 || !topic.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ConfigError::at(
            file,
            "notify.ntfy.topic",
            "must be 1 to 64 letters, digits, - or _ (ntfy's topic names)",
        ));
    }
    let token = secret(file, "notify.ntfy.token", n.token, n.token_file.map(rel), n.token_env)?
        .map(|(_, t)| SecretString::from(t.expose_secret().trim()));
    Ok(NtfySettings { server, topic: topic.to_owned(), token })
}

impl Config {
    /// What is allowed but risky in this configuration, one sentence each: `run` logs them at
    /// start and `check-config` prints them.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.channel_names().len() == 1 {
            w.push(
                "NO NOTIFICATION CHANNEL: alerts only reach the collector's own log, and nobody is paged; \
                 configure [notify.slack], [notify.email], [notify.sms], [notify.teams], [notify.ntfy] or [notify.webhook]"
                    .to_owned(),
            );
        }
        let plain = [
            ("notify.sms.api_url", self.notify.sms.as_ref().map(|s| &s.api_url)),
            ("notify.teams.webhook_url", self.notify.teams.as_ref().map(|s| &s.webhook_url)),
            ("notify.ntfy.server", self.notify.ntfy.as_ref().map(|s| &s.server)),
            ("notify.webhook.url", self.notify.webhook.as_ref().map(|s| &s.url)),
        ];
        for (key, url) in plain {
            if let Some(u) = url.filter(|u| u.scheme() == "http") {
                w.push(format!(
                    "{key} is plain http (host {}): alerts and credentials travel unencrypted; use https unless this \
                     is a relay on this host",
                    u.host_str().unwrap_or("?")
                ));
            }
        }
        if let Some(n) = &self.notify.ntfy {
            if n.token.is_none() && n.topic.len() < 20 {
                w.push(format!(
                    "notify.ntfy: the topic {:?} is short and there is no token: anyone who guesses it reads every alert \
                     (and its acknowledge link, if [http] public_url is set); use a long random topic or an access token",
                    n.topic
                ));
            }
        }
        if let Some(s) = &self.notify.sms {
            if s.to.is_empty() && !self.responders.iter().any(|r| r.phone.is_some()) {
                w.push("notify.sms: no number to text: notify.sms.to is empty and no responder has a phone".to_owned());
            }
        }
        if let Some(s) = &self.notify.slack {
            if s.webhook_url.scheme() == "http" {
                w.push(format!(
                    "notify.slack.webhook_url is plain http (host {}): alerts and the webhook's secret path travel \
                     unencrypted; use https unless this is a relay on this host",
                    s.webhook_url.host_str().unwrap_or("?")
                ));
            }
        }
        if let Some(e) = &self.notify.email {
            if e.tls == Tls::None && e.credentials.is_some() {
                w.push(format!(
                    "notify.email: the SMTP password is sent unencrypted to {}:{} (tls = \"none\", allow_plaintext_auth = true)",
                    e.smtp_host, e.smtp_port
                ));
            }
        }
        w
    }

    /// The names of the channels every alert can be delivered to (`[escalation]` picks among
    /// them), in delivery order ([`crate::channel::NAMES`]): the log, always, then each
    /// configured `[notify.NAME]`.
    pub fn channel_names(&self) -> Vec<&'static str> {
        let n = &self.notify;
        let configured = |name: &str| match name {
            "log" => true,
            "slack" => n.slack.is_some(),
            "email" => n.email.is_some(),
            "sms" => n.sms.is_some(),
            "teams" => n.teams.is_some(),
            "ntfy" => n.ntfy.is_some(),
            "webhook" => n.webhook.is_some(),
            "forward" => self.forward.is_some(),
            _ => false,
        };
        crate::channel::NAMES.iter().copied().filter(|name| configured(name)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";
    const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn err(text: &str) -> String {
        Config::parse(text, Some(Path::new("/etc/sos/collector.toml"))).unwrap_err().to_string()
    }

    #[test]
    fn every_channel_parses_and_is_listed_in_delivery_order() {
        let c = Config::parse(
            &format!(
                "[notify.webhook]\nurl = \"https://hooks.example/x\"\nsecret = \"{WHSEC}\"\n\
                 [notify.ntfy]\nserver = \"https://ntfy.sh\"\ntopic = \"sos-x1\"\n\
                 [notify.teams]\nwebhook_url = \"https://prod.example/workflows/x?sig=y\"\n\
                 [notify.sms]\naccount_sid = \"{SID}\"\nauth_token = \"t\"\nfrom = \"+44 20 7946 0000\"\nto = [\"+1 (555) 010-2030\"]\n"
            ),
            None,
        )
        .unwrap();
        assert_eq!(c.channel_names(), ["log", "sms", "teams", "ntfy", "webhook"]);
        let sms = c.notify.sms.unwrap();
        assert_eq!((sms.from.as_str(), sms.to.as_slice()), ("+442079460000", &["+15550102030".to_owned()][..]));
        assert_eq!(sms.api_url.as_str(), "https://api.twilio.com/");
    }

    #[test]
    fn errors_name_the_key_and_never_the_secret() {
        let e = err("[notify.sms]\naccount_sid = \"AC12\"\nauth_token = \"s3cr3t\"\nfrom = \"+15550000000\"\n");
        assert!(e.contains("notify.sms.account_sid") && !e.contains("s3cr3t"), "{e}");
        let e = err(&format!("[notify.sms]\naccount_sid = \"{SID}\"\nfrom = \"+15550000000\"\n"));
        assert!(e.contains("notify.sms.auth_token"), "{e}");
        let e = err(&format!("[notify.sms]\naccount_sid = \"{SID}\"\nauth_token = \"s3cr3t\"\nfrom = \"me\"\n"));
        assert!(e.contains("notify.sms.from") && !e.contains("s3cr3t"), "{e}");
        let e = err(&format!(
            "[notify.sms]\naccount_sid = \"{SID}\"\nauth_token = \"s3cr3t\"\nfrom = \"+15550000000\"\nto = [\"x\"]\n"
        ));
        assert!(e.contains("notify.sms.to"), "{e}");
        let e = err("[notify.webhook]\nurl = \"https://h.example/s3cr3tpath\"\nsecret = \"whsec_c2hvcnQ=\"\n");
        assert!(e.contains("notify.webhook.secret") && e.contains("24 to 64") && !e.contains("s3cr3t"), "{e}");
        let e = err("[notify.webhook]\nurl = \"https://h.example/x\"\nsecret = \"whsec_not base64 s3cr3t\"\n");
        assert!(e.contains("notify.webhook.secret") && !e.contains("s3cr3t"), "{e}");
        let e = err(&format!("[notify.webhook]\nurl = \"s3cr3t\"\nsecret = \"{WHSEC}\"\n"));
        assert!(e.contains("notify.webhook.url") && !e.contains("s3cr3t"), "{e}");
        let e = err("[notify.teams]\nwebhook_url = \"ftp://s3cr3t\"\n");
        assert!(e.contains("notify.teams.webhook_url") && !e.contains("s3cr3t"), "{e}");
        let e = err("[notify.ntfy]\nserver = \"https://ntfy.sh\"\ntopic = \"a/b\"\n");
        assert!(e.contains("notify.ntfy.topic"), "{e}");
        let e = err("[notify.ntfy]\nserver = \"https://ntfy.sh\"\ntopic = \"t\"\ntoken = 123456789\n");
        assert!(e.contains("token") && !e.contains("123456789"), "{e}");
        let e =
            err("[notify.ntfy]\nserver = \"https://ntfy.sh\"\ntopic = \"t\"\ntoken_env = \"SOS_TEST_SURELY_UNSET\"\n");
        assert!(e.contains("notify.ntfy.token_env"), "{e}");
        let e = err("[notify.pager]\nx = 1\n");
        assert!(e.contains("pager"), "{e}");
        // channel:NAME names every channel, and asks for the section of one not configured.
        let e = err("[escalation]\nemergency = [ { notify = [\"channel:sms\"] } ]\n");
        assert!(e.contains("[notify.sms]"), "{e}");
        let e = err("[escalation]\nemergency = [ { notify = [\"channel:fax\"] } ]\n");
        assert!(e.contains("sms, teams, ntfy, webhook"), "{e}");
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let c = Config::parse(
            &format!(
                "[notify.webhook]\nurl = \"https://hooks.example/p4thsecret\"\nsecret = \"{WHSEC}\"\n\
                 [notify.ntfy]\nserver = \"https://ntfy.sh\"\ntopic = \"sos-x1\"\ntoken = \"tk_t0ken\"\n\
                 [notify.teams]\nwebhook_url = \"https://prod.example/workflows/x?sig=s1gsecret\"\n\
                 [notify.sms]\naccount_sid = \"{SID}\"\nauth_token = \"authT0ken\"\nfrom = \"+15550000000\"\n"
            ),
            None,
        )
        .unwrap();
        let d = format!("{c:?}");
        for s in ["p4thsecret", "MfKQ9r8", "tk_t0ken", "s1gsecret", "authT0ken"] {
            assert!(!d.contains(s), "{s} in {d}");
        }
    }
}
