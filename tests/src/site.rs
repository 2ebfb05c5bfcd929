//! A site for the end-to-end tests: a key, a collector config and an agent config in a
//! temporary directory.

use std::net::SocketAddr;
use std::path::PathBuf;

use sos_shared::Key;

use crate::{free_udp_port, CollectorProcess, SlackStandIn, SmtpServer};

/// A site: a key, a collector config and an agent config in a temporary directory.
#[derive(Debug)]
pub struct Site {
    /// The directory holding configs, the store and the spool.
    pub dir: tempfile::TempDir,
    /// The site key, base64.
    pub key_text: String,
    /// The collector's UDP address.
    pub addr: SocketAddr,
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}

impl Site {
    /// A new key, a free port and an empty directory.
    pub fn new() -> Self {
        let key_text = Key::generate();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        Site { dir: tempfile::tempdir().unwrap(), key_text, addr }
    }

    /// The site key.
    pub fn key(&self) -> Key {
        Key::from_base64(&self.key_text).unwrap()
    }

    /// Where the collector keeps its store.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A collector config with quick retries (1 s, at most 2 s), 5 s attempts, a 200 ms
    /// coalescing window, and the channels given.
    pub fn collector_config(&self, slack: Option<&SlackStandIn>, smtp: Option<&SmtpServer>) -> String {
        let email = smtp.map(|m| Site::email_table(m.port, "tls = \"none\"\n"));
        self.collector_config_with(slack.map(|s| s.url.as_str()), email.as_deref())
    }

    /// [`Site::collector_config`] with a webhook URL and a whole `[notify.email]` table body.
    pub fn collector_config_with(&self, slack_url: Option<&str>, email: Option<&str>) -> String {
        let mut c = format!(
            "listen = \"{}\"\ndata_dir = \"{}\"\nkey = \"{}\"\nshutdown_grace_secs = 2\n\
             [outbox]\nfirst_retry_secs = 1\nmax_retry_secs = 2\nattempt_timeout_secs = 5\ncoalesce_window_ms = 200\n",
            self.addr,
            self.data_dir().display(),
            self.key_text
        );
        if let Some(url) = slack_url {
            c.push_str(&format!("[notify.slack]\nwebhook_url = \"{url}\"\n"));
        }
        if let Some(e) = email {
            c.push_str("[notify.email]\n");
            c.push_str(e);
        }
        c
    }

    /// The body of a `[notify.email]` table for an SMTP server on 127.0.0.1:`port`, plus `extra`
    /// lines (which must say `tls`).
    pub fn email_table(port: u16, extra: &str) -> String {
        format!(
            "smtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nfrom = \"sos@example.com\"\n\
             to = [\"security@example.com\"]\n{extra}"
        )
    }

    /// Start a collector with [`Site::collector_config`].
    pub fn start(&self, slack: Option<&SlackStandIn>, smtp: Option<&SmtpServer>) -> CollectorProcess {
        CollectorProcess::start(self.dir.path(), self.addr, &self.collector_config(slack, smtp))
    }

    /// Start a collector with this config text.
    pub fn start_with(&self, config: &str) -> CollectorProcess {
        CollectorProcess::start(self.dir.path(), self.addr, config)
    }

    /// An agent config for this site (one collector, a spool in the site's directory).
    pub fn agent_config(&self) -> PathBuf {
        let p = self.dir.path().join("agent.toml");
        std::fs::write(
            &p,
            format!(
                "collectors = [\"{}\"]\nkey = \"{}\"\nlocation = \"Building A, floor 2, reception\"\nspool_dir = \"{}\"\n\
                 enrollment_file = \"{}\"\n",
                self.addr,
                self.key_text,
                self.spool_dir().display(),
                self.dir.path().join("enrollment.toml").display()
            ),
        )
        .unwrap();
        p
    }

    /// The agent's spool.
    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// The alert ids waiting in the agent's spool.
    pub fn spooled(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.spool_dir())
            .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json").map(str::to_owned)).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// The collector's store, read-only.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.data_dir().join("sos.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
    }

    /// (state, last_error) of `alert_id` on `channel`.
    pub fn delivery(&self, alert_id: &str, channel: &str) -> Option<(String, Option<String>)> {
        self.db()
            .query_row(
                "SELECT state, last_error FROM outbox WHERE alert_id = ?1 AND channel = ?2",
                [alert_id, channel],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok()
    }
}
