//! Where the store lives: `data_dir` (SQLite, the embedded default) or `database_url`
//! (PostgreSQL shared by several collectors, issue 18).

use std::path::Path;
use std::str::FromStr as _;

use sos_shared::config::{ConfigError, ExposeSecret as _, SecretString};

/// Check `database_url`: a PostgreSQL URL this collector can use (no TLS: `sslmode=disable`,
/// or `prefer`, which falls back to plain). Messages never repeat the URL (it may hold a
/// password).
///
/// # Errors
/// What is wrong with the URL, naming the key.
pub(super) fn database_url(file: Option<&Path>, url: &SecretString) -> Result<(), ConfigError> {
    let url = url.expose_secret();
    let err = |m: String| ConfigError::at(file, "database_url", m);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(err("must be a PostgreSQL URL, \"postgres://USER@HOST:PORT/DATABASE?sslmode=disable\" \
             (remove it to keep the embedded SQLite store in data_dir)"
            .into()));
    }
    let config =
        tokio_postgres::Config::from_str(url).map_err(|e| err(format!("is not a valid PostgreSQL URL: {e}")))?;
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(err("sslmode=require: this collector connects to PostgreSQL without TLS; use a local \
             socket or a trusted network with sslmode=disable"
            .into()));
    }
    if config.get_dbname().is_none() {
        return Err(err("names no database: add it after the host, \"postgres://USER@HOST:PORT/DATABASE\"".into()));
    }
    Ok(())
}

/// `url` as logs and messages may show it: user, hosts, ports and database, never the password.
pub fn redacted(url: &SecretString) -> String {
    let Ok(c) = tokio_postgres::Config::from_str(url.expose_secret()) else {
        return "postgresql://(invalid URL)".into();
    };
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .zip(c.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, p)| match h {
            tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => format!("{}:{p}", path.display()),
        })
        .collect();
    format!("postgresql://{}@{}/{}", c.get_user().unwrap_or(""), hosts.join(","), c.get_dbname().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn refused(url: &str) -> String {
        let e = Config::parse(&format!("database_url = {url:?}"), None).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("database_url"));
        e.to_string()
    }

    #[test]
    fn a_postgresql_url_is_taken_and_shown_without_its_password() {
        let c = Config::parse("database_url = \"postgres://sos:hunter2@127.0.0.1:5433/sos?sslmode=disable\"", None)
            .unwrap();
        let url = c.database_url.as_ref().expect("kept");
        let shown = super::redacted(url);
        assert_eq!(shown, "postgresql://sos@127.0.0.1:5433/sos");
        assert!(!format!("{c:?}").contains("hunter2"), "never the password, not even in Debug");
        assert!(refused("postgres://sos@127.0.0.1:5432").contains("names no database"));
    }

    #[test]
    fn a_wrong_url_or_tls_is_named() {
        assert!(refused("mysql://x@y/z").contains("must be a PostgreSQL URL"));
        let e = refused("postgres://sos:hunter2@127.0.0.1:notaport/sos");
        assert!(e.contains("not a valid PostgreSQL URL") && !e.contains("hunter2"), "{e}");
        assert!(refused("postgres://sos@127.0.0.1/sos?sslmode=require").contains("without TLS"));
    }

    #[test]
    fn without_database_url_the_store_is_sqlite_in_data_dir() {
        let c = Config::parse("data_dir = \"/var/lib/sos\"", None).unwrap();
        assert_eq!(c.database_path(), std::path::Path::new("/var/lib/sos/sos.db"));
    }
}
