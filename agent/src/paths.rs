//! Where the agent keeps its files, per platform. One place decides; everything else asks here.
//!
//! ## Platform-specific
//! - **Linux/BSD:** config `$XDG_CONFIG_HOME/sos` (`~/.config/sos`) then `/etc/sos`; data
//!   `$XDG_DATA_HOME/sos` (`~/.local/share/sos`).
//! - **macOS:** config `~/Library/Application Support/sos` then `/etc/sos`; data the same
//!   Application Support folder.
//! - **Windows:** config `%APPDATA%\sos` then `%ProgramData%\sos`; data `%LOCALAPPDATA%\sos`.

use std::path::PathBuf;

fn env(k: &str) -> Option<PathBuf> {
    std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Configuration files, most specific first: the user's, then the system-wide one.
pub fn config_files() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if cfg!(windows) {
        paths.extend(env("APPDATA").map(|d| d.join("sos").join("agent.toml")));
        paths.extend(env("ProgramData").map(|d| d.join("sos").join("agent.toml")));
    } else {
        if cfg!(target_os = "macos") {
            paths.extend(env("HOME").map(|h| h.join("Library/Application Support/sos/agent.toml")));
        } else if let Some(x) = env("XDG_CONFIG_HOME") {
            paths.push(x.join("sos/agent.toml"));
        } else {
            paths.extend(env("HOME").map(|h| h.join(".config/sos/agent.toml")));
        }
        paths.push(PathBuf::from("/etc/sos/agent.toml"));
    }
    paths
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
