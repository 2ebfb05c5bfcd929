//! What both configuration files share: located errors, secrets from a file or an environment
//! variable, and key files readable only by their owner.

use std::path::{Path, PathBuf};

pub use secrecy::{ExposeSecret, SecretString};

/// The names of keys that hold a secret, as the last part of a dotted key: an error about one of
/// them never shows its value, whatever its type.
pub const SECRET_KEYS: [&str; 7] = ["key", "password", "webhook_url", "url", "secret", "auth_token", "token"];

/// Whether the dotted `key` holds a secret.
pub fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS.contains(&key.rsplit('.').next().unwrap_or(key))
}

/// A configuration problem, located as precisely as we can.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", .file.as_deref().map(|f| f.display().to_string()).unwrap_or_else(|| "configuration".into()), .key.as_deref().map(|k| format!(": key `{k}`")).unwrap_or_default())]
pub struct ConfigError {
    /// The file (and line, when known) where the problem is; `None` for built-in defaults.
    pub file: Option<PathBuf>,
    /// The key that is wrong, dotted (`notify.email.smtp_port`).
    pub key: Option<String>,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

impl ConfigError {
    /// A problem with `key` in `file`.
    pub fn at(file: Option<&Path>, key: &str, message: impl Into<String>) -> Self {
        ConfigError { file: file.map(Path::to_path_buf), key: Some(key.to_owned()), message: message.into() }
    }
}

/// Resolve a secret given inline, in a file, or in an environment variable: exactly one of the
/// three. Returns the key it came from and its value.
pub fn secret(
    file: Option<&Path>,
    key: &str,
    inline: Option<SecretString>,
    from_file: Option<PathBuf>,
    from_env: Option<String>,
) -> Result<Option<(String, SecretString)>, ConfigError> {
    let given = [inline.is_some(), from_file.is_some(), from_env.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(ConfigError::at(file, key, format!("give only one of `{key}`, `{key}_file` and `{key}_env`")));
    }
    if let Some(v) = inline {
        return Ok(Some((key.to_owned(), v)));
    }
    if let Some(p) = from_file {
        let k = format!("{key}_file");
        let v = read_secret_file(&p).map_err(|m| ConfigError::at(file, &k, m))?;
        return Ok(Some((k, v.into())));
    }
    if let Some(var) = from_env {
        let k = format!("{key}_env");
        let v = std::env::var(&var)
            .map_err(|_| ConfigError::at(file, &k, format!("the environment variable {var} is not set")))?;
        return Ok(Some((k, v.into())));
    }
    Ok(None)
}

/// Read a file holding a secret, refusing one that other users can read.
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} is readable by other users (mode {:o}); fix it with: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            ));
        }
    }
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Create a file readable only by its owner (mode 0600 on Unix) holding `contents`.
///
/// # Errors
/// If the file exists already or cannot be written.
pub fn write_secret_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// Turn a TOML error into a located message without echoing the offending line, which may
/// hold a secret.
pub fn toml_error(text: &str, file: Option<&Path>, e: &toml::de::Error) -> ConfigError {
    let mut location = file.map(Path::to_path_buf);
    let mut key = None;
    // An inline table or a dotted key may hide a secret's name from the key found below.
    let mut mentions_secret = false;
    if let Some(span) = e.span() {
        let before = &text[..span.start.min(text.len())];
        let line_no = before.matches('\n').count() + 1;
        if let Some(f) = &location {
            location = Some(PathBuf::from(format!("{}:{line_no}", f.display())));
        }
        let line = text.lines().nth(line_no - 1).unwrap_or("");
        mentions_secret = SECRET_KEYS.iter().any(|k| line.contains(k));
        let table = before
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('[') && l.ends_with(']'))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
        let header = line.trim();
        if header.starts_with('[') && header.ends_with(']') {
            // A missing key is reported at its table: name it in full (`notify.email.from`).
            let t = header.trim_matches(|c| c == '[' || c == ']').trim();
            if let Some(field) = e.message().strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
                key = Some(format!("{t}.{field}"));
            }
        } else if let Some((name, _)) = line.split_once('=') {
            let name = name.trim().trim_matches('"');
            key = Some(match table {
                Some(t) if !t.is_empty() => format!("{t}.{name}"),
                _ => name.to_owned(),
            });
        }
    }
    let message = match key.as_deref() {
        // The value is not shown, whatever its type: serde's messages quote integers, floats and
        // strings (`invalid type: integer `987654321``).
        Some(k) if is_secret_key(k) && !e.message().starts_with("missing field") => {
            "must be a string (the value is not shown: it is a secret)".to_owned()
        }
        Some(_) if !mentions_secret => e.message().to_owned(),
        // Not known which key, or a secret may be on that line: show no value at all.
        _ => without_values(e.message()),
    };
    ConfigError { file: location, key, message }
}

/// `message` without anything quoted in backticks after an `invalid type` or `invalid value`.
fn without_values(message: &str) -> String {
    if !(message.starts_with("invalid type") || message.starts_with("invalid value")) {
        return message.to_owned();
    }
    let mut out = String::new();
    let mut quoted = false;
    for c in message.chars() {
        if c == '`' {
            quoted = !quoted;
            if quoted {
                out.push_str("(value not shown)");
            }
        } else if !quoted {
            out.push(c);
        }
    }
    out
}
