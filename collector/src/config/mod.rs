//! Collector configuration: the TOML file of PRODUCT.md, its defaults, and its validation.
//!
//! Every key has a default, so `sos-collector run` works with no file at all. Errors name the
//! file, the key and what is wrong, and never repeat a secret's value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
pub use sos_shared::config::ConfigError;
use sos_shared::config::{read_secret_file, secret, toml_error, write_secret_file, ExposeSecret as _, SecretString};
use sos_shared::{Key, TimeWindow};

mod channels;
mod response;
pub use channels::{
    e164, EmailSettings, NotifySettings, NtfySettings, SlackSettings, SmsSettings, TeamsSettings, Tls, WebhookSecret,
    WebhookSettings,
};
pub mod store;
pub use response::{EscalationSettings, ResponderConfig, Target, Tier};

/// The file name of the key that `run` generates when none is configured.
pub const GENERATED_KEY_FILE: &str = "collector.key";

/// The default socket buffer, 16 MiB: room for a burst of several thousand SOS at the kernel's
/// accounting of about 2 KiB per queued datagram. Larger is not better: under a sustained flood
/// the buffer stays full, and an SOS waits behind all of it (docs/PERFORMANCE.md measured 32 MiB:
/// 124 ms instead of 9–12 ms).
pub const DEFAULT_SOCKET_BUFFER: usize = 16 << 20;

/// The file as written. Unknown keys are errors: a typo must not silently disable a channel.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<SecretString>,
    key: Option<SecretString>,
    key_file: Option<PathBuf>,
    key_env: Option<String>,
    token_ttl_secs: Option<u64>,
    max_future_skew_secs: Option<u64>,
    shutdown_grace_secs: Option<u64>,
    socket_buffer_bytes: Option<u64>,
    outbox: RawOutbox,
    notify: channels::RawNotify,
    security: RawSecurity,
    responders: Vec<response::RawResponder>,
    escalation: response::RawEscalation,
    agent_silent_after_secs: Option<u64>,
    http: Option<crate::http::RawHttp>,
    forward: Option<crate::forward::RawForward>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSecurity {
    accept_site_key: Option<bool>,
    rotation_grace_secs: Option<u64>,
    per_source_rate: Option<u32>,
    per_source_burst: Option<u32>,
    per_agent_rate: Option<u32>,
    per_agent_burst: Option<u32>,
    enroll_rate: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawOutbox {
    first_retry_secs: Option<u64>,
    max_retry_secs: Option<u64>,
    give_up_after_secs: Option<u64>,
    attempt_timeout_secs: Option<u64>,
    coalesce_window_ms: Option<u64>,
}

/// A validated configuration with every secret resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// The UDP address to listen on.
    pub listen: SocketAddr,
    /// Where the store (and a generated key) live.
    pub data_dir: PathBuf,
    /// PostgreSQL shared by several collectors, instead of the SQLite store in `data_dir`
    /// (`database_url`). It may hold a password: show it only through [`store::redacted`].
    pub database_url: Option<SecretString>,
    /// The site key agents seal with. `None` until [`Config::ensure_key`] generates one.
    pub key: Option<Key>,
    /// Token age limit and future clock skew that incoming datagrams must respect.
    pub window: TimeWindow,
    /// How long shutdown waits for notification attempts in flight.
    pub shutdown_grace: Duration,
    /// The UDP socket's receive and send buffer, bytes: a storm of SOS (a floor pressing at once,
    /// or a garbage flood) queues in the kernel while the collector works; what does not fit is
    /// dropped before the collector sees it.
    pub socket_buffer_bytes: usize,
    /// Retry schedule and batching of the outbox.
    pub outbox: OutboxSettings,
    /// The notification channels configured beside the log (`[notify.*]`).
    pub notify: NotifySettings,
    /// Site key acceptance, key rotation, rate limits.
    pub security: SecuritySettings,
    /// The people who answer an alert (`[[responders]]`): named to the sender when they
    /// acknowledge, mentioned and emailed when their tier fires, popups on their agents.
    pub responders: Vec<ResponderConfig>,
    /// Who is notified first, and who next when nobody acknowledges in time (`[escalation]`).
    pub escalation: EscalationSettings,
    /// An enrolled agent that has sent nothing for this long is silent: its panic button may be
    /// down, so the channels and the console are told once (and again when it returns).
    pub agent_silent_after: Duration,
    /// The web console, /metrics, /healthz and /readyz; `None` (no `[http]`): not served.
    pub http: Option<crate::http::HttpSettings>,
    /// A site collector forwards every alert to this central collector (`[forward]`); `None`:
    /// not a site.
    pub forward: Option<crate::forward::ForwardSettings>,
}

/// Who may talk to the collector, and how much.
#[derive(Debug, Clone, PartialEq)]
pub struct SecuritySettings {
    /// Accept datagrams sealed with the shared site key. Turn off once every agent is enrolled
    /// with its own key.
    pub accept_site_key: bool,
    /// After an agent first uses a rotated key, its previous key is accepted this much longer.
    pub rotation_grace: Duration,
    /// Enrollment starts per second (and burst) from one source address for codes that are not
    /// pending: what the collector cannot check cheaply. Nothing else is limited by its source:
    /// a datagram with a known key id is always authenticated first (docs/SECURITY.md).
    pub per_source: crate::ratelimit::Rate,
    /// Authenticated messages per second (and burst) from one agent; for the site key, from
    /// one source address and port.
    pub per_agent: crate::ratelimit::Rate,
    /// Enrollment starts for codes that are not pending, per second from everyone together
    /// (burst twice that). Starts for a pending code and the rest of a started exchange are
    /// not counted here, so junk cannot use a real code's capacity.
    pub enroll: crate::ratelimit::Rate,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        use crate::ratelimit::Rate;
        SecuritySettings {
            accept_site_key: true,
            rotation_grace: Duration::from_secs(24 * 3600),
            per_source: Rate { per_sec: 2.0, burst: 5.0 },
            per_agent: Rate { per_sec: 20.0, burst: 60.0 },
            enroll: Rate { per_sec: 20.0, burst: 40.0 },
        }
    }
}

/// Retry schedule and batching of notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxSettings {
    /// Delay before the first retry; doubles on each further retry.
    pub first_retry: Duration,
    /// The longest delay between two retries.
    pub max_retry: Duration,
    /// After this long since the alert arrived, a channel that still fails is recorded as failed.
    pub give_up_after: Duration,
    /// The longest one delivery attempt may take.
    pub attempt_timeout: Duration,
    /// After a message goes out on a channel, alerts arriving within this window are grouped
    /// into the next message (storm coalescing). The first alert is never delayed.
    pub coalesce_window: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings {
            first_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(60),
            give_up_after: Duration::from_secs(3600),
            attempt_timeout: Duration::from_secs(15),
            coalesce_window: Duration::from_millis(1000),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], sos_shared::protocol::DEFAULT_PORT)),
            // Relative to the current directory, shown resolved.
            data_dir: resolved(Path::new("sos-data")),
            database_url: None,
            key: None,
            window: TimeWindow::default(),
            shutdown_grace: Duration::from_secs(10),
            socket_buffer_bytes: DEFAULT_SOCKET_BUFFER,
            outbox: OutboxSettings::default(),
            notify: NotifySettings::default(),
            security: SecuritySettings::default(),
            responders: Vec::new(),
            escalation: EscalationSettings::standard(),
            agent_silent_after: Duration::from_secs(600),
            http: None,
            forward: None,
        }
    }
}

impl Config {
    /// Read and validate a configuration file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, the line and the key that are wrong.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            key: None,
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, Some(path))
    }

    /// Validate configuration text; `file` is only used to name it in errors and to resolve
    /// relative paths against its directory.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key that is wrong.
    pub fn parse(text: &str, file: Option<&Path>) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, file, &e))?;
        // Relative paths are resolved against the file's directory, and shown resolved.
        let base = resolved(file.and_then(Path::parent).unwrap_or(Path::new(".")));
        let rel = |p: PathBuf| if p.is_absolute() { p } else { resolved(&base.join(p)) };
        let mut cfg = Config::default();

        if let Some(listen) = raw.listen {
            cfg.listen = listen.parse().map_err(|_| {
                ConfigError::at(
                    file,
                    "listen",
                    format!("{listen:?} is not an IP address and port, e.g. \"0.0.0.0:5000\""),
                )
            })?;
        }
        if let Some(d) = raw.data_dir {
            cfg.data_dir = rel(d);
        }
        if let Some(url) = raw.database_url {
            store::database_url(file, &url)?;
            cfg.database_url = Some(url);
        }
        cfg.key = secret(file, "key", raw.key, raw.key_file.map(&rel), raw.key_env)?
            .map(|(k, text)| {
                Key::from_base64(text.expose_secret()).map_err(|e| ConfigError::at(file, &k, e.to_string()))
            })
            .transpose()?;
        if let Some(v) = raw.token_ttl_secs {
            cfg.window.ttl_secs = within(file, "token_ttl_secs", v, 1, WEEK_SECS, "s")?;
        }
        if let Some(v) = raw.max_future_skew_secs {
            cfg.window.max_future_skew_secs = within(file, "max_future_skew_secs", v, 0, DAY_SECS, "s")?;
        }
        if let Some(v) = raw.shutdown_grace_secs {
            cfg.shutdown_grace = Duration::from_secs(within(file, "shutdown_grace_secs", v, 0, HOUR_SECS, "s")?);
        }
        if let Some(v) = raw.agent_silent_after_secs {
            cfg.agent_silent_after =
                Duration::from_secs(within(file, "agent_silent_after_secs", v, 30, WEEK_SECS, "s")?);
        }
        cfg.http = raw.http.map(|h| h.validate(file, &rel)).transpose()?;
        cfg.forward = raw.forward.map(|f| f.validate(file, &cfg.data_dir, &rel)).transpose()?;
        if let Some(v) = raw.socket_buffer_bytes {
            if !(65_536..=1 << 30).contains(&v) {
                return Err(ConfigError::at(
                    file,
                    "socket_buffer_bytes",
                    format!("{v} is not between 65536 and 1073741824"),
                ));
            }
            cfg.socket_buffer_bytes = v as usize;
        }
        let o = raw.outbox;
        let ob = &mut cfg.outbox;
        if let Some(v) = o.first_retry_secs {
            ob.first_retry = Duration::from_secs(within(file, "outbox.first_retry_secs", v, 1, HOUR_SECS, "s")?);
        }
        if let Some(v) = o.max_retry_secs {
            ob.max_retry = Duration::from_secs(within(file, "outbox.max_retry_secs", v, 1, DAY_SECS, "s")?);
        }
        if let Some(v) = o.give_up_after_secs {
            ob.give_up_after =
                Duration::from_secs(within(file, "outbox.give_up_after_secs", v, 1, 30 * DAY_SECS, "s")?);
        }
        if let Some(v) = o.attempt_timeout_secs {
            ob.attempt_timeout =
                Duration::from_secs(within(file, "outbox.attempt_timeout_secs", v, 1, HOUR_SECS, "s")?);
        }
        if let Some(v) = o.coalesce_window_ms {
            ob.coalesce_window = Duration::from_millis(within(file, "outbox.coalesce_window_ms", v, 0, 60_000, "ms")?);
        }

        let sec = raw.security;
        let cs = &mut cfg.security;
        if let Some(v) = sec.accept_site_key {
            cs.accept_site_key = v;
        }
        if let Some(v) = sec.rotation_grace_secs {
            cs.rotation_grace =
                Duration::from_secs(within(file, "security.rotation_grace_secs", v, 0, 365 * DAY_SECS, "s")?);
        }
        let rate = |key: &str, v: Option<u32>, into: &mut f64| -> Result<(), ConfigError> {
            if let Some(v) = v {
                *into = positive(file, key, u64::from(v))? as f64;
            }
            Ok(())
        };
        rate("security.per_source_rate", sec.per_source_rate, &mut cs.per_source.per_sec)?;
        rate("security.per_source_burst", sec.per_source_burst, &mut cs.per_source.burst)?;
        rate("security.per_agent_rate", sec.per_agent_rate, &mut cs.per_agent.per_sec)?;
        rate("security.per_agent_burst", sec.per_agent_burst, &mut cs.per_agent.burst)?;
        rate("security.enroll_rate", sec.enroll_rate, &mut cs.enroll.per_sec)?;
        cs.enroll.burst = cs.enroll.per_sec * 2.0;

        cfg.notify = channels::notify(file, raw.notify, &rel)?;
        if cfg.outbox.first_retry > cfg.outbox.max_retry {
            return Err(ConfigError::at(
                file,
                "outbox.first_retry_secs",
                format!(
                    "{} s is longer than outbox.max_retry_secs ({} s)",
                    cfg.outbox.first_retry.as_secs(),
                    cfg.outbox.max_retry.as_secs()
                ),
            ));
        }
        cfg.responders = response::responders(file, raw.responders)?;
        cfg.escalation = response::escalation(file, raw.escalation, &cfg.responders, &cfg.channel_names())?;
        Ok(cfg)
    }

    /// The configured responder whose `agents` list the enrolled agent name `enrolled_name`
    /// (an agent belongs to at most one responder: the configuration is refused otherwise).
    pub fn responder_for_agent(&self, enrolled_name: &str) -> Option<&ResponderConfig> {
        self.responders.iter().find(|r| r.agents.iter().any(|a| a == enrolled_name))
    }

    /// The configured responder called `name` (compared without regard to case).
    pub fn responder(&self, name: &str) -> Option<&ResponderConfig> {
        self.responders.iter().find(|r| r.name.eq_ignore_ascii_case(name.trim()))
    }

    /// Where the store lives.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("sos.db")
    }

    /// Make sure there is a key: when none is configured, use `data_dir/collector.key`,
    /// generating it (mode 0600) if it does not exist yet. Returns the path when the key came
    /// from there, so that the caller can tell the operator how to point agents at it.
    ///
    /// # Errors
    /// If the data dir or the key file cannot be created or read, or the key file is readable
    /// by others.
    pub fn ensure_key(&mut self) -> Result<Option<PathBuf>, ConfigError> {
        if self.key.is_some() {
            return Ok(None);
        }
        let path = self.data_dir.join(GENERATED_KEY_FILE);
        let err = |m: String| ConfigError { file: Some(path.clone()), key: None, message: m };
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| err(format!("cannot create the data dir {}: {e}", self.data_dir.display())))?;
        if !path.exists() {
            write_secret_file(&path, &format!("{}\n", Key::generate()))
                .map_err(|e| err(format!("cannot write a new key: {e}")))?;
        }
        let text = read_secret_file(&path).map_err(err)?;
        self.key = Some(Key::from_base64(&text).map_err(|e| err(e.to_string()))?);
        Ok(Some(path))
    }
}

pub(crate) const HOUR_SECS: u64 = 3600;
pub(crate) const DAY_SECS: u64 = 24 * HOUR_SECS;
const WEEK_SECS: u64 = 7 * DAY_SECS;

/// `v` if it is between `min` and `max` (in `unit`), else an error naming the key and the range.
fn within(file: Option<&Path>, key: &str, v: u64, min: u64, max: u64, unit: &str) -> Result<u64, ConfigError> {
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::at(file, key, format!("{v} is not between {min} and {max} ({unit})")))
    }
}

/// `path` made absolute against the current directory (as the error messages show it).
fn resolved(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn positive(file: Option<&Path>, key: &str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(ConfigError::at(file, key, "must be greater than 0"))
    } else {
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_defaults() {
        let c = Config::parse("", None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.channel_names(), vec!["log"]);
        assert!(c.key.is_none());
    }

    #[test]
    fn full_example_parses() {
        let key = Key::generate();
        let text = format!(
            r#"listen = "0.0.0.0:5001"
data_dir = "/var/lib/sos"
key = "{key}"
token_ttl_secs = 300
[notify.slack]
webhook_url = "https://hooks.slack.com/services/T/B/X"
[notify.email]
smtp_host = "smtp.example.com"
tls = "tls"
from = "sos@example.com"
to = ["security@example.com", "Duty Manager <duty@example.com>"]
"#
        );
        let c = Config::parse(&text, None).unwrap();
        assert_eq!(c.window.ttl_secs, 300);
        assert_eq!(c.channel_names(), vec!["log", "slack", "email"]);
        let e = c.notify.email.unwrap();
        assert_eq!(e.smtp_port, 465);
        assert_eq!(e.to.len(), 2);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let f = Path::new("/etc/sos/collector.toml");
        let e = Config::parse("listen = \"127.0.0.1:5000\"\n[notify.email]\nsmtp_port = \"x\"\n", Some(f)).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("/etc/sos/collector.toml:3: key `notify.email.smtp_port`"), "{s}");

        let e = Config::parse("lisen = \"x\"", Some(f)).unwrap_err().to_string();
        assert!(e.contains("lisen") && e.contains(":1"), "{e}");

        let e = Config::parse("listen = \"nowhere\"", Some(f)).unwrap_err().to_string();
        assert!(e.contains("key `listen`") && e.contains("nowhere"), "{e}");

        assert_eq!(Config::parse("", None).unwrap().socket_buffer_bytes, DEFAULT_SOCKET_BUFFER);
        assert_eq!(Config::parse("socket_buffer_bytes = 1048576", None).unwrap().socket_buffer_bytes, 1 << 20);
        let e = Config::parse("socket_buffer_bytes = 1000", Some(f)).unwrap_err().to_string();
        assert!(e.contains("key `socket_buffer_bytes`") && e.contains("1000"), "{e}");

        let e = Config::parse("[notify.email]\nsmtp_host=\"h\"\nfrom=\"a@b.c\"\nto=[]\ntls=\"ssl\"", Some(f))
            .unwrap_err()
            .to_string();
        assert!(e.contains("notify.email.tls") && e.contains("ssl"), "{e}");
    }

    #[test]
    fn ca_file_is_read_checked_and_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("collector.toml");
        let email =
            |extra: &str| format!("[notify.email]\nsmtp_host=\"mail\"\nfrom=\"a@b.c\"\nto=[\"d@e.f\"]\n{extra}");
        let e = Config::parse(&email("ca_file = \"missing.pem\"\n"), Some(&f)).unwrap_err().to_string();
        assert!(e.contains("notify.email.ca_file") && e.contains("missing.pem"), "{e}");
        std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
        let e = Config::parse(&email("ca_file = \"junk.pem\"\n"), Some(&f)).unwrap_err().to_string();
        assert!(e.contains("notify.email.ca_file") && e.contains("no PEM certificate"), "{e}");
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(dir.path().join("ca.pem"), pem).unwrap();
        let e = Config::parse(&email("tls = \"none\"\nca_file = \"ca.pem\"\n"), Some(&f)).unwrap_err().to_string();
        assert!(e.contains("notify.email.ca_file") && e.contains("tls"), "{e}");
        let c = Config::parse(&email("ca_file = \"ca.pem\"\n"), Some(&f)).unwrap();
        assert_eq!(c.notify.email.unwrap().ca_certs, vec![vec![0u8, 0, 0]]);
    }

    #[test]
    fn secrets_are_not_echoed() {
        let e = Config::parse("key = \"s3cr3t-but-not-a-key\"", None).unwrap_err().to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = Config::parse("[notify.slack]\nwebhook_url = \"s3cr3t\"", None).unwrap_err().to_string();
        assert!(!e.contains("s3cr3t") && e.contains("webhook_url"), "{e}");
        let e = Config::parse(
            "[notify.email]\nsmtp_host=\"h\"\nfrom=\"a@b.c\"\nto=[\"x@y.z\"]\nusername=\"u\"\npassword = s3cr3t\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn no_secret_value_of_any_type_is_ever_in_an_error() {
        let f = Path::new("/etc/sos/collector.toml");
        let email = "[notify.email]\nsmtp_host=\"h\"\nfrom=\"a@b.c\"\nto=[\"x@y.z\"]\nusername=\"u\"\n";
        let tables = [("", "key"), ("[notify.slack]\n", "webhook_url"), (email, "password")];
        let values = ["\"987654321x\"", "987654321", "987654321.5", "[987654321, \"987654321\"]", "{ a = 987654321 }"];
        for (table, key) in tables {
            for v in values {
                let text = format!("{table}{key} = {v}\n");
                match Config::parse(&text, Some(f)) {
                    // A string is a valid password.
                    Ok(_) => assert!(key == "password" && v.starts_with('"'), "{text}"),
                    Err(e) => {
                        let e = e.to_string();
                        assert!(!e.contains("987654321"), "{text}: {e}");
                        assert!(e.contains(key), "names the key: {e}");
                    }
                }
            }
        }
        // Through an inline table, where the line does not start with the secret's name.
        let e = Config::parse("notify = { slack = { webhook_url = 987654321 } }\n", Some(f)).unwrap_err().to_string();
        assert!(!e.contains("987654321"), "{e}");
        // Debug output of a configuration never holds a secret either.
        let key = Key::generate();
        let c = Config::parse(
            &format!("key = \"{key}\"\n[notify.slack]\nwebhook_url = \"https://hooks.example.com/services/T/B/s3cr3tpath\"\n{email}password = \"pa55word\"\n"),
            None,
        )
        .unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains(&key.to_string()) && !debug.contains("s3cr3tpath") && !debug.contains("pa55word"),
            "{debug}"
        );
    }

    #[test]
    fn durations_are_bounded_with_the_key_and_the_range() {
        let f = Path::new("/etc/sos/collector.toml");
        for (text, key) in [
            ("[outbox]\ncoalesce_window_ms = 9223372036854775807", "outbox.coalesce_window_ms"),
            ("[security]\nrotation_grace_secs = 9223372036854775807", "security.rotation_grace_secs"),
            ("[outbox]\ngive_up_after_secs = 99999999999", "outbox.give_up_after_secs"),
            ("[outbox]\nattempt_timeout_secs = 0", "outbox.attempt_timeout_secs"),
            ("shutdown_grace_secs = 99999999", "shutdown_grace_secs"),
            ("token_ttl_secs = 99999999999", "token_ttl_secs"),
            ("max_future_skew_secs = 99999999999", "max_future_skew_secs"),
            ("[outbox]\nfirst_retry_secs = 120\nmax_retry_secs = 60", "outbox.first_retry_secs"),
        ] {
            let e = Config::parse(text, Some(f)).unwrap_err().to_string();
            assert!(
                e.contains(&format!("key `{key}`")) && e.contains("between") || e.contains("longer"),
                "{text}: {e}"
            );
        }
        let c =
            Config::parse("[outbox]\ncoalesce_window_ms = 60000\n[security]\nrotation_grace_secs = 0", None).unwrap();
        assert_eq!(c.outbox.coalesce_window, Duration::from_secs(60));
        assert_eq!(c.security.rotation_grace, Duration::ZERO);
    }

    #[test]
    fn a_password_over_plain_smtp_needs_an_explicit_yes_and_risks_are_warned() {
        let email = "[notify.email]\nsmtp_host=\"relay\"\nfrom=\"a@b.c\"\nto=[\"x@y.z\"]\ntls=\"none\"\n";
        let creds = "username=\"u\"\npassword=\"p\"\n";
        let e = Config::parse(&format!("{email}{creds}"), None).unwrap_err().to_string();
        assert!(e.contains("notify.email.tls") && e.contains("allow_plaintext_auth"), "{e}");
        let c = Config::parse(&format!("{email}{creds}allow_plaintext_auth = true\n"), None).unwrap();
        assert!(c.warnings().iter().any(|w| w.contains("unencrypted")), "{:?}", c.warnings());
        assert!(Config::parse(email, None).unwrap().warnings().is_empty(), "no password, no warning");

        let c = Config::parse("[notify.slack]\nwebhook_url = \"http://127.0.0.1:9/hook\"\n", None).unwrap();
        assert!(c.warnings().iter().any(|w| w.contains("plain http")), "{:?}", c.warnings());
        let c = Config::parse("", None).unwrap();
        assert!(c.warnings().iter().any(|w| w.contains("NO NOTIFICATION CHANNEL")), "{:?}", c.warnings());
    }

    #[test]
    fn errors_show_the_full_key_and_resolved_paths() {
        let f = Path::new("/etc/sos/collector.toml");
        let e = Config::parse("[notify.email]\nsmtp_host=\"h\"\nto=[\"x@y.z\"]\n", Some(f)).unwrap_err().to_string();
        assert!(e.contains("key `notify.email.from`"), "{e}");
        let c = Config::parse("data_dir = \"data\"", Some(Path::new("conf/collector.toml"))).unwrap();
        assert!(c.data_dir.is_absolute() && c.data_dir.ends_with("conf/data"), "{}", c.data_dir.display());
        assert!(Config::default().data_dir.is_absolute());
    }

    #[test]
    fn one_source_per_secret_and_env_must_exist() {
        let e = Config::parse("key = \"a\"\nkey_env = \"B\"", None).unwrap_err().to_string();
        assert!(e.contains("only one"), "{e}");
        let e = Config::parse("key_env = \"SOS_TEST_SURELY_UNSET_VAR\"", None).unwrap_err().to_string();
        assert!(e.contains("key `key_env`") && e.contains("SOS_TEST_SURELY_UNSET_VAR"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn generated_key_is_private_and_stable_and_others_readable_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config { data_dir: dir.path().join("data"), ..Config::default() };
        let path = c.ensure_key().unwrap().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let id = c.key.as_ref().unwrap().id();
        let mut again = Config { data_dir: dir.path().join("data"), ..Config::default() };
        again.ensure_key().unwrap();
        assert_eq!(again.key.unwrap().id(), id);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut third = Config { data_dir: dir.path().join("data"), ..Config::default() };
        let e = third.ensure_key().unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
