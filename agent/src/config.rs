//! Agent configuration (TOML).
//!
//! ```toml
//! collectors = ["127.0.0.1:5000"]  # one or more; all are tried
//! key = "…"                        # or key_file / key_env; not needed once enrolled
//! enrollment_file = "…"            # default: the user's (data dir `sos/enrollment.toml`), else
//!                                  # the machine's (`/etc/sos/enrollment.toml`)
//! location = "Building A, floor 2, reception"
//! hotkey = "ctrl+alt+s"            # tray agent
//! silent = false                   # tray agent: no toasts, only the icon changes
//! wording = "discreet"             # tray agent: "discreet" (no "SOS" on screen) or "plain"
//! tray_click = "double"            # tray agent: "double" or "single" click on the icon sends
//! send_timeout_secs = 30
//! spool_dir = "…"                  # default: the platform data dir, then `sos/spool`
//! heartbeat_secs = 60              # tray agent: how often it checks a collector answers
//! warn_after_secs = 10             # tray agent: warn the sender when not acknowledged by then
//! fallback = "Call security 555-0100"  # shown when an alert is not delivered
//! show_quit = true                 # tray agent: offer Quit in the menu
//! cancel_window_ms = 5000          # tray agent: delay after a press during which it can be stopped
//! responder = false                # tray agent: this desktop shows responders' alarm popups
//! responder_name = "Sam Lee"       # optional, only in this agent's own texts
//! ```
//!
//! With no `--config`, the system-wide file (`/etc/sos/agent.toml`, which the package installs)
//! is read first and the user's (`~/.config/sos/agent.toml`) overrides it key by key:
//! [`AgentConfig::load_layered`].

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sos_shared::config::{secret, toml_error, ConfigError, ExposeSecret as _, SecretString};
use sos_shared::protocol::DEFAULT_PORT;
use sos_shared::Key;

/// The file as written. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    collectors: Vec<String>,
    key: Option<SecretString>,
    key_file: Option<PathBuf>,
    key_env: Option<String>,
    enrollment_file: Option<PathBuf>,
    location: String,
    hotkey: Option<String>,
    silent: bool,
    send_timeout_secs: Option<u64>,
    spool_dir: Option<PathBuf>,
    heartbeat_secs: Option<u64>,
    warn_after_secs: Option<u64>,
    fallback: Option<String>,
    show_quit: Option<bool>,
    cancel_window_ms: Option<u64>,
    wording: Option<String>,
    tray_click: Option<String>,
    responder: bool,
    responder_name: Option<String>,
}

/// A validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Collector addresses as `host:port` (port 5000 if omitted), in order of preference.
    pub collectors: Vec<String>,
    /// The key SOS are sealed with: the agent's own key once enrolled, else the site key.
    pub key: Key,
    /// Where the agent's own key lives (written by `sos-agent enroll`, updated by rotations),
    /// and whether it exists.
    pub enrollment_file: PathBuf,
    /// The enrollment, when the agent has its own key.
    pub enrollment: Option<crate::keys::Enrollment>,
    /// Where this workstation is, as the administrator wrote it.
    pub location: String,
    /// The global hotkey of the tray agent.
    pub hotkey: crate::hotkey::HotkeySpec,
    /// No toasts, only a discreet tray change (tray agent).
    pub silent: bool,
    /// How long `send` keeps trying before it reports failure, seconds.
    pub send_timeout_secs: u64,
    /// Where alerts wait on disk until a collector acknowledges them.
    pub spool_dir: PathBuf,
    /// How often the tray agent tells the collectors it is alive, seconds.
    pub heartbeat_secs: u64,
    /// After this long without an acknowledgement the tray agent warns the sender, seconds.
    pub warn_after_secs: u64,
    /// What the sender should do when the alert is not delivered, e.g. "Call security 555-0100".
    pub fallback: String,
    /// Whether the tray menu offers Quit (managed sites hide it).
    pub show_quit: bool,
    /// A grace period after a hotkey press or icon click before the SOS goes out, during
    /// which the tray icon or its menu stops it (against accidental presses). 0: send at once.
    pub cancel_window_ms: u64,
    /// How toasts and the tooltip speak: discreet (nothing a bystander reads as an alarm) or
    /// plain (tray agent).
    pub wording: crate::wording::Wording,
    /// Whether a single click or a double-click on the tray icon sends (tray agent).
    pub tray_click: crate::wording::TrayClick,
    /// A responder desktop (tray agent): it shows the alarm popups the collector pushes, with
    /// "I'm responding", and heartbeats every [`RESPONDER_HEARTBEAT_SECS`] so that the
    /// collector knows where to push. It still sends SOS like any agent.
    pub responder: bool,
    /// The responder's name in this agent's own texts (the collector's `[[responders]]` name is
    /// the one others read); empty if not set.
    pub responder_name: String,
}

/// How often a responder desktop heartbeats when `heartbeat_secs` is not set: often enough
/// that the collector's idea of its address stays fresh (docs/PROTOCOL.md, pushes).
pub const RESPONDER_HEARTBEAT_SECS: u64 = 20;

/// The cancel window when the configuration sets none: long enough to notice and stop an
/// accidental press, short beside the minutes help takes to arrive (README, "Discreet by
/// default").
pub const DEFAULT_CANCEL_WINDOW_MS: u64 = 5000;

/// Keys that hold paths, resolved against the directory of the file that sets them.
const PATH_KEYS: [&str; 3] = ["key_file", "enrollment_file", "spool_dir"];

/// Keys that give the site key; a file that sets one of them replaces the others.
const KEY_KEYS: [&str; 3] = ["key", "key_file", "key_env"];

impl AgentConfig {
    /// Read and validate one configuration file (`--config FILE`), on its own.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, the line and the key that are wrong.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        Self::parse(&text, Some(path))
    }

    /// Read the files that exist among `files`, in order, each one's keys overriding the ones
    /// before: the system-wide configuration, then the user's ([`crate::paths::config_files`]).
    /// Setting one of `key`, `key_file` and `key_env` replaces the others. Relative paths are
    /// resolved against the directory of the file that sets them. With no file at all, the
    /// enrollment alone (collector and key) is the configuration.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file (and line) that sets the wrong key; a key missing
    /// everywhere is reported against the most specific file.
    pub fn load_layered(files: &[PathBuf]) -> Result<Self, ConfigError> {
        let mut merged = toml::Table::new();
        let mut origin: std::collections::HashMap<String, PathBuf> = std::collections::HashMap::new();
        let mut last: Option<PathBuf> = None;
        for file in files.iter().filter(|f| f.exists()) {
            let text = read(file)?;
            // Checked on its own first, so that an error names this file and its line.
            toml::from_str::<RawConfig>(&text).map_err(|e| toml_error(&text, Some(file), &e))?;
            let mut table: toml::Table = toml::from_str(&text).map_err(|e| toml_error(&text, Some(file), &e))?;
            let base = file.parent().unwrap_or(Path::new("."));
            for k in PATH_KEYS {
                if let Some(toml::Value::String(p)) = table.get_mut(k) {
                    if Path::new(p.as_str()).is_relative() {
                        *p = base.join(&*p).display().to_string();
                    }
                }
            }
            if KEY_KEYS.iter().any(|k| table.contains_key(*k)) {
                for k in KEY_KEYS {
                    merged.remove(k);
                }
            }
            for (k, v) in table {
                origin.insert(k.clone(), file.clone());
                merged.insert(k, v);
            }
            last = Some(file.clone());
        }
        let raw: RawConfig = toml::Value::Table(merged).try_into().map_err(|e: toml::de::Error| ConfigError {
            file: last.clone(),
            key: None,
            message: e.message().into(),
        })?;
        let file_of = |key: &str| origin.get(key).cloned().or_else(|| last.clone());
        Self::build(raw, Path::new("."), &file_of)
    }

    /// Validate configuration text; `file` names it in errors and anchors relative paths.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key that is wrong.
    pub fn parse(text: &str, file: Option<&Path>) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, file, &e))?;
        let base = file.and_then(Path::parent).unwrap_or(Path::new("."));
        Self::build(raw, base, &|_| file.map(Path::to_path_buf))
    }

    /// Validate what the file(s) say: `base` anchors relative paths, `file_of` names the file
    /// that sets a key.
    fn build(raw: RawConfig, base: &Path, file_of: &dyn Fn(&str) -> Option<PathBuf>) -> Result<Self, ConfigError> {
        let at = |key: &str, message: String| ConfigError::at(file_of(key).as_deref(), key, message);
        let key_file = raw.key_file.map(|p| if p.is_absolute() { p } else { base.join(p) });
        let key_origin = KEY_KEYS
            .iter()
            .find(|k| match **k {
                "key" => raw.key.is_some(),
                "key_file" => key_file.is_some(),
                _ => raw.key_env.is_some(),
            })
            .copied()
            .unwrap_or("key");
        let site_key = secret(file_of(key_origin).as_deref(), "key", raw.key, key_file, raw.key_env)?;
        let enrollment_file = raw
            .enrollment_file
            .map(|p| if p.is_absolute() { p } else { base.join(p) })
            .unwrap_or_else(crate::paths::default_enrollment_file);
        // The agent's own key wins over a site key: once enrolled, it speaks for itself.
        let enrollment = if enrollment_file.exists() {
            Some(crate::keys::Enrollment::load(&enrollment_file).map_err(|m| at("enrollment_file", m))?)
        } else {
            None
        };
        let key = match (&enrollment, site_key) {
            (Some(e), _) => Key::from_base64(&e.key).map_err(|err| at("enrollment_file", err.to_string()))?,
            (None, Some((key_name, key_text))) => {
                Key::from_base64(key_text.expose_secret()).map_err(|e| at(&key_name, e.to_string()))?
            }
            (None, None) => {
                return Err(at(
                    "key",
                    format!(
                        "no key: enroll this workstation (`sos-agent enroll CODE --collector HOST:PORT`, which writes {}), or set key, key_file or key_env to the site key",
                        enrollment_file.display()
                    ),
                ))
            }
        };
        let mut raw_collectors = raw.collectors;
        if raw_collectors.is_empty() {
            if let Some(e) = &enrollment {
                raw_collectors.push(e.collector.clone());
            }
        }
        if raw_collectors.is_empty() {
            return Err(at("collectors", "needs at least one collector, e.g. [\"sos.example.com:5000\"]".into()));
        }
        let mut collectors = Vec::new();
        for c in raw_collectors {
            collectors.push(
                normalize_collector(&c)
                    .ok_or_else(|| at("collectors", format!("{c:?} is not a host, host:port or [ipv6]:port")))?,
            );
        }
        let positive = |key: &str, v: Option<u64>, default: u64| match v {
            Some(0) => Err(at(key, "must be greater than 0".into())),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let send_timeout_secs = positive("send_timeout_secs", raw.send_timeout_secs, 30)?;
        let heartbeat_secs =
            positive("heartbeat_secs", raw.heartbeat_secs, if raw.responder { RESPONDER_HEARTBEAT_SECS } else { 60 })?;
        let responder_name = raw.responder_name.unwrap_or_default().trim().to_owned();
        if responder_name.chars().count() > 64 || responder_name.chars().any(char::is_control) {
            return Err(at("responder_name", "must be at most 64 characters, without control characters".into()));
        }
        let warn_after_secs = positive("warn_after_secs", raw.warn_after_secs, 10)?;
        Ok(AgentConfig {
            collectors,
            key,
            enrollment_file,
            enrollment,
            location: raw.location,
            hotkey: raw
                .hotkey
                .as_deref()
                .unwrap_or("ctrl+alt+s")
                .parse()
                .map_err(|e: crate::hotkey::HotkeyParseError| at("hotkey", e.to_string()))?,
            silent: raw.silent,
            send_timeout_secs,
            spool_dir: raw
                .spool_dir
                .map(|p| if p.is_absolute() { p } else { base.join(p) })
                .unwrap_or_else(|| crate::paths::data_dir().join("spool")),
            heartbeat_secs,
            warn_after_secs,
            fallback: raw
                .fallback
                .filter(|f| !f.trim().is_empty())
                .unwrap_or_else(|| "Call for help another way.".into()),
            show_quit: raw.show_quit.unwrap_or(true),
            cancel_window_ms: match raw.cancel_window_ms {
                Some(v) if v > 60_000 => {
                    return Err(at(
                        "cancel_window_ms",
                        format!("{v} ms delays every SOS by over a minute; use at most 60000"),
                    ))
                }
                v => v.unwrap_or(DEFAULT_CANCEL_WINDOW_MS),
            },
            wording: raw
                .wording
                .as_deref()
                .map_or(Ok(crate::wording::Wording::Discreet), str::parse)
                .map_err(|e| at("wording", e))?,
            tray_click: raw
                .tray_click
                .as_deref()
                .map_or(Ok(crate::wording::TrayClick::Double), str::parse)
                .map_err(|e| at("tray_click", e))?,
            responder: raw.responder,
            responder_name,
        })
    }

    /// The `enrollment_file` the most specific of `files` sets (resolved against its
    /// directory), if any: where `sos-agent enroll` writes when the configuration names a
    /// file. Read with the same parser as the rest; a file that does not parse sets nothing.
    pub fn enrollment_file_set_by(files: &[PathBuf]) -> Option<PathBuf> {
        files.iter().rev().filter(|f| f.exists()).find_map(|f| {
            let raw: RawConfig = toml::from_str(&std::fs::read_to_string(f).ok()?).ok()?;
            let p = raw.enrollment_file?;
            Some(if p.is_absolute() { p } else { f.parent().unwrap_or(Path::new(".")).join(p) })
        })
    }

    /// Where the agent looks for its configuration when none is given, in the order the files
    /// apply: see [`crate::paths::config_files`].
    pub fn default_paths() -> Vec<PathBuf> {
        crate::paths::config_files()
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: Some(path.to_path_buf()),
        key: None,
        message: format!("cannot read the file: {e}"),
    })
}

/// `host`, `host:port`, `ip:port` or `[ipv6]:port` → `host:port` with the default port.
pub fn normalize_collector(c: &str) -> Option<String> {
    let c = c.trim();
    if c.is_empty() || c.contains(char::is_whitespace) {
        return None;
    }
    if c.parse::<std::net::SocketAddr>().is_ok() {
        return Some(c.to_owned());
    }
    if let Ok(ip) = c.parse::<std::net::IpAddr>() {
        return Some(std::net::SocketAddr::new(ip, DEFAULT_PORT).to_string());
    }
    match c.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => {
            port.parse::<u16>().ok().filter(|p| *p != 0)?;
            Some(c.to_owned())
        }
        Some(_) => None,
        None => Some(format!("{c}:{DEFAULT_PORT}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let k = Key::generate();
        let c = AgentConfig::parse(
            &format!("collectors = [\"127.0.0.1:5000\", \"sos.example.com\", \"[::1]:7\"]\nkey = \"{k}\"\nlocation = \"Reception\"\nhotkey = \"ctrl+alt+s\"\nsilent = false\n"),
            None,
        )
        .unwrap();
        assert_eq!(c.collectors, vec!["127.0.0.1:5000", "sos.example.com:5000", "[::1]:7"]);
        assert_eq!(c.location, "Reception");
        assert_eq!(c.send_timeout_secs, 30);
        // Discreet by default: no alarm words, a double-click, a cancel window.
        assert_eq!(c.wording, crate::wording::Wording::Discreet);
        assert_eq!(c.tray_click, crate::wording::TrayClick::Double);
        assert_eq!(c.cancel_window_ms, DEFAULT_CANCEL_WINDOW_MS);
        assert!(!c.responder);
        assert_eq!(c.heartbeat_secs, 60);
    }

    #[test]
    fn a_responder_desktop_heartbeats_every_20_s_unless_told_otherwise() {
        let k = Key::generate();
        let base = format!("collectors = [\"h\"]\nkey = \"{k}\"\nresponder = true\n");
        let c = AgentConfig::parse(&format!("{base}responder_name = \" Sam Lee \"\n"), None).unwrap();
        assert!(c.responder);
        assert_eq!((c.heartbeat_secs, c.responder_name.as_str()), (RESPONDER_HEARTBEAT_SECS, "Sam Lee"));
        let c = AgentConfig::parse(&format!("{base}heartbeat_secs = 45\n"), None).unwrap();
        assert_eq!(c.heartbeat_secs, 45);
        let e = AgentConfig::parse(&format!("{base}responder_name = \"a\\u0007b\"\n"), Some(Path::new("a.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `responder_name`"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let k = Key::generate();
        let f = Path::new("agent.toml");
        let e = AgentConfig::parse(&format!("key = \"{k}\""), Some(f)).unwrap_err().to_string();
        assert!(e.contains("key `collectors`"), "{e}");
        let e = AgentConfig::parse(&format!("key = \"{k}\"\ncollectors = [\"a b\"]"), Some(f)).unwrap_err().to_string();
        assert!(e.contains("collectors") && e.contains("a b"), "{e}");
        let e = AgentConfig::parse("collectors = [\"h\"]", Some(f)).unwrap_err().to_string();
        assert!(e.contains("key `key`"), "{e}");
        let e = AgentConfig::parse("collectors = [\"h\"]\nkey = \"short\"", Some(f)).unwrap_err().to_string();
        assert!(e.contains("key `key`") && !e.contains("short"), "{e}");
        let e = AgentConfig::parse("colectors = []", Some(f)).unwrap_err().to_string();
        assert!(e.contains("colectors"), "{e}");
        let e = AgentConfig::parse(&format!("key = \"{k}\"\ncollectors = [\"h\"]\nwording = \"loud\""), Some(f))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `wording`") && e.contains("loud") && e.contains("plain"), "{e}");
        let e = AgentConfig::parse(&format!("key = \"{k}\"\ncollectors = [\"h\"]\ntray_click = \"triple\""), Some(f))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `tray_click`") && e.contains("triple"), "{e}");
    }

    #[test]
    fn the_users_file_overrides_the_system_wide_one_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("etc/agent.toml");
        let user = dir.path().join("home/agent.toml");
        std::fs::create_dir_all(system.parent().unwrap()).unwrap();
        std::fs::create_dir_all(user.parent().unwrap()).unwrap();
        let site = Key::generate();
        std::fs::write(
            &system,
            format!("collectors = [\"sos.example.com\"]\nkey = \"{site}\"\nlocation = \"Floor 2\"\nspool_dir = \"spool\"\nenrollment_file = \"none.toml\"\n"),
        )
        .unwrap();
        let files = [system.clone(), user.clone(), dir.path().join("missing.toml")];
        // The system-wide file alone.
        let c = AgentConfig::load_layered(&files).unwrap();
        assert_eq!((c.collectors.clone(), c.location.as_str()), (vec!["sos.example.com:5000".to_owned()], "Floor 2"));
        assert_eq!(c.spool_dir, dir.path().join("etc/spool"), "relative to the file that sets it");
        // The user's file overrides what it sets and keeps the rest; its key_file replaces the
        // system's inline key.
        let own = Key::generate();
        std::fs::write(dir.path().join("home/own.key"), &own).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path().join("home/own.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(&user, "location = \"Room 2.14\"\nkey_file = \"own.key\"\n").unwrap();
        let c = AgentConfig::load_layered(&files).unwrap();
        assert_eq!(c.location, "Room 2.14");
        assert_eq!(c.collectors, vec!["sos.example.com:5000"]);
        assert_eq!(c.key.id(), Key::from_base64(&own).unwrap().id());
        // An error names the file that sets the wrong key, and its line.
        std::fs::write(&user, "heartbeat_secs = 0\n").unwrap();
        let e = AgentConfig::load_layered(&files).unwrap_err().to_string();
        assert!(e.contains("home/agent.toml") && e.contains("heartbeat_secs"), "{e}");
        std::fs::write(&user, "location = \"x\"\nhotkey = 5\n").unwrap();
        let e = AgentConfig::load_layered(&files).unwrap_err().to_string();
        assert!(e.contains("home/agent.toml:2") && e.contains("hotkey"), "{e}");
        std::fs::write(&user, "").unwrap();
        std::fs::write(&system, "collectors = [\"bad host\"]\nkey = \"{site}\"\n".replace("{site}", &site.to_string()))
            .unwrap();
        let e = AgentConfig::load_layered(&files).unwrap_err().to_string();
        assert!(e.contains("etc/agent.toml") && e.contains("collectors"), "{e}");
    }
}
