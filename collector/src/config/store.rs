//! Where the store lives: `data_dir` (SQLite, the embedded default) or `database_url`
//! (PostgreSQL shared by several collectors, issue 18).

use std::path::Path;
use std::str::FromStr as _;

use sos_shared::config::{ConfigError, ExposeSecret as _, SecretString};

/// What is not yet on PostgreSQL: the store has alerts, the leased outbox and live changes
/// there ([`crate::store::PgStore`]), but these parts of the service still need SQLite.
const NOT_YET: &str = "the escalation engine, the responder loop (acknowledgements, notices, popups), \
     the agent registry (enrollment, rotation, revocation), presence and the console";

/// Check `database_url`: a PostgreSQL URL this collector can use (no TLS: `sslmode=disable`,
/// or `prefer`, which falls back to plain), then refuse it, naming what does not run on
/// PostgreSQL yet, rather than run half the service on one database and half on another.
/// Messages never repeat the URL (it may hold a password).
///
/// # Errors
/// Always, naming the key: what is wrong with the URL, or what is not yet supported.
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
    Err(err(format!(
        "PostgreSQL: not yet supported for {NOT_YET}; remove database_url to use the embedded SQLite store in data_dir"
    )))
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
    fn a_postgresql_url_is_refused_clearly_until_the_whole_service_runs_on_it() {
        let e = refused("postgres://sos:hunter2@127.0.0.1:5432/sos?sslmode=disable");
        assert!(e.contains("not yet supported") && e.contains("agent registry"), "{e}");
        assert!(!e.contains("hunter2"), "never the password: {e}");
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
