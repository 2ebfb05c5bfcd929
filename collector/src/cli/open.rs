//! The store a command works on, whichever engine the configuration names ([`Opened`]).
//!
//! - `database_url` set: PostgreSQL, the store every collector on it shares. An administrator
//!   on any collector's host enrolls, revokes, acknowledges, … for all of them; the collectors
//!   learn it from the commit's `NOTIFY`. The `data_dir`'s `sos.db`, if one is left there from
//!   before, is never opened.
//! - Otherwise: the SQLite file in `data_dir`, beside the running service if there is one.
//!   Commands that only read open it read-only, as they always have; the others through a writer
//!   thread of their own ([`SqliteStore::start_beside`]: no checkpointer, nothing of the
//!   service's taken over), which ends when the command does.

use sos_collector::config::store::redacted;
use sos_collector::store::{Db, PgStore, SqliteStore, Store};
use sos_collector::Config;
use sos_shared::config::ExposeSecret as _;

/// A store opened for one command, with the runtime its operations run on. Dropping it ends the
/// SQLite writer thread (after its last write) and the PostgreSQL connection.
pub struct Opened {
    /// `None` only while being dropped.
    store: Option<Store>,
    /// The SQLite writer thread, joined on drop.
    writer: Option<std::thread::JoinHandle<()>>,
    /// Where the store is, for messages: the SQLite file, or the PostgreSQL URL without its
    /// password.
    pub place: String,
    /// Declared last: dropped after the store, whose PostgreSQL connection task runs on it.
    runtime: tokio::runtime::Runtime,
}

/// Whether a command only reads (SQLite: a read-only connection, and no store is created).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Only reads.
    Read,
    /// Writes (and creates the SQLite store if there is none yet).
    Write,
}

impl Opened {
    /// Open the store `config` names. On SQLite, [`Access::Read`] needs an existing store; the
    /// data dir must belong to this user (see [`super::check_owner`]).
    ///
    /// # Errors
    /// No SQLite store to read, the wrong user, or the store cannot be opened (PostgreSQL: the
    /// message names `database_url` as shown without its password).
    pub fn open(config: &Config, access: Access) -> anyhow::Result<Opened> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        if let Some(url) = &config.database_url {
            let place = redacted(url);
            let db = runtime
                .block_on(PgStore::open(url.expose_secret(), &[]))
                .map_err(|e| anyhow::anyhow!("database_url ({place}): cannot use the PostgreSQL store: {e}"))?;
            // Jobs and deadlines an acknowledgement makes are dated on the database's clock, as
            // the collectors date theirs, whatever this host's clock says.
            runtime
                .block_on(db.prepare_service())
                .map_err(|e| anyhow::anyhow!("database_url ({place}): cannot use the PostgreSQL store: {e}"))?;
            return Ok(Opened { store: Some(Store::postgres(db)), writer: None, place, runtime });
        }
        super::check_owner(config)?;
        let path = config.database_path();
        let db = match access {
            Access::Read => {
                if !path.exists() {
                    anyhow::bail!("no store at {} (has the collector run with this data_dir?)", path.display());
                }
                // Its errors name the file.
                Db::open_read_only(&path)?
            }
            // A command never migrates the store under a collector of an older version.
            Access::Write => Db::open_beside_service(&path)?,
        };
        let (writer, thread) = SqliteStore::start_beside(db)?;
        Ok(Opened {
            store: Some(Store::sqlite(writer, Some(&path))),
            writer: Some(thread),
            place: path.display().to_string(),
            runtime,
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        self.store.as_ref().expect("the store is there until dropped")
    }

    /// Run a store operation to its end.
    pub fn run<F: std::future::Future>(&self, operation: F) -> F::Output {
        self.runtime.block_on(operation)
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        // The last handle: the writer thread finishes what was queued (nothing: every operation
        // was waited for) and ends; the PostgreSQL connection's supervisor is told to end.
        drop(self.store.take());
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                eprintln!("sos-collector: the store's writer thread panicked while ending");
            }
        }
    }
}

/// The message for a command that exists only for the SQLite file, when the store is
/// PostgreSQL: what to use instead. `None` on SQLite.
pub fn sqlite_only(config: &Config, command: &str, instead: &str) -> Option<String> {
    let url = config.database_url.as_ref()?;
    Some(format!(
        "`sos-collector {command}` works on the SQLite store in data_dir ({}), but this configuration's store is \
         PostgreSQL (database_url = {}): nothing was done, and no SQLite file was opened. {instead}",
        config.database_path().display(),
        redacted(url)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sos_collector::store::now_ms;

    fn wal_len(db: &std::path::Path) -> u64 {
        std::fs::metadata(db.with_extension("db-wal")).map(|m| m.len()).unwrap_or(0)
    }

    #[test]
    fn a_command_beside_the_running_service_writes_through_a_writer_of_its_own_and_leaves_the_wal_alone() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { data_dir: dir.path().join("data"), ..Config::default() };
        let path = config.database_path();
        let e = Opened::open(&config, Access::Read).err().expect("nothing to read yet").to_string();
        assert!(e.contains("no store at") && !path.exists(), "{e}");

        // The running service, its checkpointer included.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (writer, thread) = SqliteStore::start(Db::open(&path).unwrap(), &[]).unwrap();
        let service = Store::sqlite(writer, Some(&path));
        runtime.block_on(service.create_enrollment("Desk 1", 60_000, now_ms())).unwrap();
        assert!(wal_len(&path) > 0);

        {
            let cli = Opened::open(&config, Access::Write).unwrap();
            assert_eq!(cli.place, path.display().to_string());
            assert_eq!(cli.store().engine(), "sqlite");
            cli.run(cli.store().create_enrollment_of("Desk 2", false, 60_000, now_ms())).unwrap();
        }
        // Its writer has ended (joined on drop) without a last checkpoint of its own: a TRUNCATE
        // would have emptied the service's WAL, holding the service's commits meanwhile.
        assert!(wal_len(&path) > 0, "the command's writer checkpointed the service's WAL away");
        assert_eq!(runtime.block_on(service.pending_codes(now_ms())).unwrap().len(), 2, "the service sees it");

        // A command that only reads: a read-only connection, which sees both and writes nothing.
        let cli = Opened::open(&config, Access::Read).unwrap();
        assert_eq!(cli.run(cli.store().pending_codes(now_ms())).unwrap().len(), 2);
        assert!(cli.run(cli.store().create_enrollment("Desk 3", 60_000, now_ms())).is_err());
        drop(cli);

        drop(service);
        thread.join().unwrap();
    }
}
