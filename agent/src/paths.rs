//! Where the agent keeps its files, per platform. One place decides; everything else asks here.
//!
//! ## Platform-specific
//! - **Linux/BSD:** config `/etc/sos/agent.toml` overridden by `$XDG_CONFIG_HOME/sos/agent.toml`
//!   (`~/.config/sos`); data `$XDG_DATA_HOME/sos` (`~/.local/share/sos`); machine enrollment
//!   `/etc/sos/enrollment.toml`.
//! - **macOS:** config `/Library/Application Support/sos/agent.toml` overridden by
//!   `~/Library/Application Support/sos/agent.toml`; data the user's Application Support folder;
//!   machine enrollment `/Library/Application Support/sos/enrollment.toml`.
//! - **Windows:** config `%ProgramData%\sos\agent.toml` overridden by `%APPDATA%\sos\agent.toml`;
//!   data `%LOCALAPPDATA%\sos`; machine enrollment `%ProgramData%\sos\enrollment.toml`.

use std::path::PathBuf;

fn env(k: &str) -> Option<PathBuf> {
    std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The system-wide directory an administrator (or a package) fills: the machine's default
/// configuration and its enrollment.
pub fn system_dir() -> PathBuf {
    if cfg!(windows) {
        env("ProgramData").unwrap_or_else(|| PathBuf::from(r"C:\ProgramData")).join("sos")
    } else if cfg!(target_os = "macos") {
        PathBuf::from("/Library/Application Support/sos")
    } else {
        PathBuf::from("/etc/sos")
    }
}

/// The system-wide configuration, which every user's agent reads first.
pub fn system_config_file() -> PathBuf {
    system_dir().join("agent.toml")
}

/// The user's own configuration, whose keys override the system-wide file's.
pub fn user_config_file() -> Option<PathBuf> {
    if cfg!(windows) {
        env("APPDATA").map(|d| d.join("sos").join("agent.toml"))
    } else if cfg!(target_os = "macos") {
        env("HOME").map(|h| h.join("Library/Application Support/sos/agent.toml"))
    } else {
        env("XDG_CONFIG_HOME").or_else(|| env("HOME").map(|h| h.join(".config"))).map(|d| d.join("sos/agent.toml"))
    }
}

/// Configuration files in the order they apply: the system-wide one, then the user's over it.
pub fn config_files() -> Vec<PathBuf> {
    let mut paths = vec![system_config_file()];
    paths.extend(user_config_file());
    paths
}

/// The user's own enrollment (`sos-agent enroll`), mode 0600.
pub fn user_enrollment_file() -> PathBuf {
    data_dir().join("enrollment.toml")
}

/// The machine's enrollment (`sos-agent enroll --system`, run by an administrator or the
/// package), shared by every user of the workstation.
pub fn machine_enrollment_file() -> PathBuf {
    system_dir().join("enrollment.toml")
}

/// The enrollment the agent uses when its config names none: the user's own if there is one,
/// else the machine's if there is one, else (for `sos-agent enroll` to write) the user's.
pub fn default_enrollment_file() -> PathBuf {
    let user = user_enrollment_file();
    if !user.exists() && machine_enrollment_file().exists() {
        return machine_enrollment_file();
    }
    user
}

/// The user's data directory for the agent (the spool lives under it).
pub fn data_dir() -> PathBuf {
    let base = if cfg!(windows) {
        env("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        env("HOME").map(|h| h.join("Library/Application Support"))
    } else {
        env("XDG_DATA_HOME").or_else(|| env("HOME").map(|h| h.join(".local/share")))
    };
    base.unwrap_or_else(std::env::temp_dir).join("sos")
}

/// Where the tray agent writes its log file, `agent.log`.
///
/// ## Platform-specific
/// - **Linux/BSD:** `$XDG_STATE_HOME/sos` (`~/.local/state/sos`).
/// - **macOS:** `~/Library/Logs/sos`.
/// - **Windows:** `%LOCALAPPDATA%\sos\logs`.
pub fn log_dir() -> PathBuf {
    if cfg!(windows) {
        data_dir().join("logs")
    } else if cfg!(target_os = "macos") {
        env("HOME").map(|h| h.join("Library/Logs/sos")).unwrap_or_else(|| data_dir().join("logs"))
    } else {
        env("XDG_STATE_HOME")
            .or_else(|| env("HOME").map(|h| h.join(".local/state")))
            .map(|d| d.join("sos"))
            .unwrap_or_else(|| data_dir().join("logs"))
    }
}
