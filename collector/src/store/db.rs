//! Opening the store file: permissions, pragmas, migrations ([`super::schema`]).

use std::path::Path;

use rusqlite::Connection;

use super::{schema, StoreError};

/// The store, used synchronously.
#[derive(Debug)]
pub struct Db {
    pub(crate) conn: Connection,
}

/// Switch the file to WAL. SQLite answers "locked" at once, without waiting, while another
/// process makes the same new store (the service and a CLI command starting together): wait for
/// it, 20 ms at a time, for as long as the busy timeout (5 s).
fn set_wal(conn: &Connection) -> Result<(), rusqlite::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Db {
    /// Open (creating if needed) the store at `path`.
    ///
    /// # Errors
    /// If the file cannot be opened or its schema is from a newer version.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                message: format!("cannot create the directory {}: {e}", dir.display()),
            })?;
        }
        Self::set_up(path).map_err(|e| StoreError::opening(path, e))
    }

    fn set_up(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        // The store holds every enrolled agent's key: readable by its owner only (SQLite gives
        // the -wal and -shm files the same mode).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement of an alert's transaction stays prepared (rusqlite keeps 16 by
        // default, fewer than the writer uses: they were parsed again and again).
        conn.set_prepared_statement_cache_capacity(128);
        set_wal(&conn)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // A WAL that grew under load is cut back to this when it starts over (see the
        // checkpointer in `writer.rs`): a bounded file, and a bounded recovery after a crash.
        conn.pragma_update(None, "journal_size_limit", super::writer::WAL_SIZE_LIMIT)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        schema::migrate(&mut conn)?;
        Ok(Db { conn })
    }

    /// Open (creating if needed) the store at `path` for a command that writes, beside the
    /// service. Unlike [`Db::open`], it refuses a store of an older schema version: a command
    /// does not migrate it, the service does when it starts. A migration can change a table
    /// under a collector of the older version that is still running (after an upgrade, before
    /// its restart), which could then no longer store an SOS (since `V_EVENTS_BY_ALERT` its
    /// timeline insert lacks the event's id).
    ///
    /// # Errors
    /// As [`Db::open`]; and if the store's version is older than this collector's.
    pub fn open_beside_service(path: &Path) -> Result<Self, StoreError> {
        if path.exists() {
            let version = Self::open_read_only(path)?
                .conn
                .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
                .map_err(|e| StoreError::opening(path, e))?;
            if version > 0 && version < schema::VERSION as i64 {
                return Err(StoreError::Open {
                    path: path.to_path_buf(),
                    message: format!(
                        "it has schema version {version}, older than this collector's ({}): nothing was done. \
                         The collector service brings it up to date when it starts: restart the service \
                         (systemctl restart sos-collector), then run this command again. A command does not \
                         do it, so that a collector of the older version still running goes on storing alerts",
                        schema::VERSION
                    ),
                });
            }
        }
        Self::open(path)
    }

    /// Open an existing store for reading only (the CLI).
    ///
    /// # Errors
    /// If there is no store at `path`.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let open = || -> Result<Self, rusqlite::Error> {
            let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            Ok(Db { conn })
        };
        open().map_err(|e| StoreError::opening(path, e))
    }

    /// Pending jobs per channel, to warn about channels no longer configured.
    ///
    /// # Errors
    /// If the query fails.
    pub fn pending_by_channel(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT channel, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY channel ORDER BY channel",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
