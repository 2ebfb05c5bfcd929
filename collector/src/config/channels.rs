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
    Ok(out)
}

impl Config {
    /// What is allowed but risky in this configuration, one sentence each: `run` logs them at
    /// start and `check-config` prints them.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.notify.slack.is_none() && self.notify.email.is_none() {
            w.push(
                "NO NOTIFICATION CHANNEL: alerts only reach the collector's own log, and nobody is paged; \
                 configure [notify.slack] or [notify.email]"
                    .to_owned(),
            );
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
            "forward" => self.forward.is_some(),
            _ => false,
        };
        crate::channel::NAMES.iter().copied().filter(|name| configured(name)).collect()
    }
}
