//! A real `sos-collector` process on a fresh data dir, and what it costs (CPU, memory) read
//! from /proc.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sos_shared::Key;

/// A running collector; killed on drop.
pub struct Collector {
    child: Child,
    /// The program, for [`Collector::kill_and_restart`].
    bin: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The site key agents seal with.
    pub key: Key,
    _dir: tempfile::TempDir,
}

/// `[security]` limits: the defaults, or raised so that they do not bind (to measure capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limits {
    /// As shipped.
    Default,
    /// Per-agent and per-source limits out of the way.
    Raised,
}

impl Collector {
    /// Start `bin` on 127.0.0.1, a free port and a new temporary data dir, and wait until it
    /// answers a heartbeat.
    pub fn start(bin: &PathBuf, limits: Limits) -> anyhow::Result<Collector> {
        Self::start_logging(bin, limits, "warn", "")
    }

    /// [`Collector::start`] with `tables` (TOML tables, e.g. the channels) added to the config.
    pub fn start_with(bin: &PathBuf, limits: Limits, tables: &str) -> anyhow::Result<Collector> {
        Self::start_logging(bin, limits, "warn", tables)
    }

    /// [`Collector::start`] on a PostgreSQL store (`database_url`) instead of its own SQLite one;
    /// with the site key of `peer` when given (several collectors on one database, one key). It
    /// logs its final counters, for [`Collector::stop`] (no line per SOS).
    pub fn start_on_postgres(
        bin: &PathBuf,
        limits: Limits,
        database_url: &str,
        peer: Option<&Collector>,
    ) -> anyhow::Result<Collector> {
        let key_text = match peer {
            Some(p) => std::fs::read_to_string(p.dir().join("site.key"))?,
            None => Key::generate(),
        };
        Self::launch(
            bin,
            limits,
            "warn,sos_collector::service=info",
            &format!("database_url = {database_url:?}\n"),
            key_text,
            "",
        )
    }

    /// [`Collector::start`] with the server's information lines too (one per SOS stored; the
    /// final counters that [`Collector::stop`] reads), for scenarios without SOS.
    pub fn start_with_counters(bin: &PathBuf, limits: Limits) -> anyhow::Result<Collector> {
        Self::start_logging(bin, limits, "warn,sos_collector::service=info,sos_collector::udp=info", "")
    }

    fn start_logging(bin: &PathBuf, limits: Limits, rust_log: &str, tables: &str) -> anyhow::Result<Collector> {
        Self::launch(bin, limits, rust_log, "", Key::generate(), tables)
    }

    /// Start with `top` (top-level keys) after the usual ones, the site key `key_text`, and
    /// `tables` after `[security]`.
    fn launch(
        bin: &PathBuf,
        limits: Limits,
        rust_log: &str,
        top: &str,
        key_text: String,
        tables: &str,
    ) -> anyhow::Result<Collector> {
        let dir = tempfile::tempdir()?;
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let key = Key::from_base64(&key_text)?;
        let key_file = dir.path().join("site.key");
        sos_shared::config::write_secret_file(&key_file, &key_text)?;
        let security = match limits {
            Limits::Default => String::new(),
            Limits::Raised => "[security]\nper_source_rate = 10000000\nper_source_burst = 10000000\nper_agent_rate = 10000000\nper_agent_burst = 10000000\n".into(),
        };
        let config = dir.path().join("collector.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{addr}\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\n{top}{security}{tables}",
                dir.path().join("data").display(),
                key_file.display()
            ),
        )?;
        // Kept in the temporary directory, for `stop`.
        let log = std::fs::File::create(dir.path().join("collector.log"))?;
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let c = Collector { child, bin: bin.clone(), addr, key, _dir: dir };
        c.wait_ready(Duration::from_secs(20))?;
        Ok(c)
    }

    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let hb = sos_shared::Message::Heartbeat(sos_shared::protocol::Heartbeat {
            user: "bench".into(),
            host: "bench-ready".into(),
            ip: String::new(),
            pad: String::new(),
            responder: false,
        });
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            socket.send_to(&self.key.seal(&hb, sos_shared::unix_now())?, self.addr)?;
            if socket.recv_from(&mut buf).is_ok() {
                return Ok(());
            }
        }
        bail!("the collector did not answer within {timeout:?}")
    }

    /// Stop it as a service manager does (SIGTERM) and return its final counters (the
    /// "collector stopped" line).
    pub fn stop(&mut self) -> anyhow::Result<String> {
        self.terminate()?;
        let log = std::fs::read_to_string(self._dir.path().join("collector.log"))?;
        log.lines()
            .find(|l| l.contains("collector stopped"))
            .map(str::to_owned)
            .with_context(|| format!("no final counters in the collector's log:\n{log}"))
    }

    /// Stop it (SIGTERM), run `f` on its store file, start it again on the same store and port
    /// and wait until it answers.
    pub fn restart_after(&mut self, f: impl FnOnce(&std::path::Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
        self.terminate()?;
        f(&self.store_path())?;
        self.respawn("warn")?;
        self.wait_ready(Duration::from_secs(60))
    }

    /// SIGKILL it (a crash), and start it again at once on the same store and port without
    /// waiting for it: the instant of the kill.
    pub fn kill_and_restart(&mut self) -> anyhow::Result<Instant> {
        let killed = Instant::now();
        self.child.kill()?;
        self.child.wait()?;
        self.respawn("info")?;
        Ok(killed)
    }

    /// SIGTERM, as a service manager stops it, and wait for it to end.
    fn terminate(&mut self) -> anyhow::Result<()> {
        #[cfg(unix)]
        {
            let pid = rustix::process::Pid::from_child(&self.child);
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        }
        self.child.wait()?;
        Ok(())
    }

    /// Start the program again on the same configuration, logging at `rust_log` after what it
    /// logged before.
    fn respawn(&mut self, rust_log: &str) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().append(true).open(self._dir.path().join("collector.log"))?;
        self.child = Command::new(&self.bin)
            .args(["run", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        Ok(())
    }

    /// What it has logged (with `kill_and_restart`, both runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("collector.log")).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its store file.
    pub fn store_path(&self) -> PathBuf {
        self._dir.path().join("data").join("sos.db")
    }

    /// Its temporary directory (on the same filesystem as the store).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Its configuration file (for `sos-collector enroll --config`).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("collector.toml")
    }

    /// CPU time used so far (user + system), from /proc/PID/stat.
    pub fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (in parentheses), from the 3rd: state, ppid, … utime
        // (14th), stime (15th). Indexed by position: a field can be negative (`tpgid` is -1
        // without a controlling terminal), so filtering out what is not a u64 shifts them.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        let ticks = field(11) + field(12);
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }

    /// Resident memory now and at its peak, bytes.
    pub fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kb = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        (kb("VmRSS:"), kb("VmHWM:"))
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
