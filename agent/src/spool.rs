//! The spool: every SOS is written to disk before its first transmission and removed only when
//! a collector acknowledges it, so that an alert survives a crash, a reboot or a network outage
//! and is resent when the agent runs again.
//!
//! One file per alert, `<alert id>.json`, written atomically (a temporary file in the same
//! directory, `fsync`, renamed over by `tempfile`'s persist, `fsync` of the directory) with
//! mode 0600 in a directory of mode 0700: it holds who pressed the button and where.
//!
//! An entry that can never be sent — a file that cannot be read or parsed, an alert that cannot
//! be sealed — is moved to `rejected/` (never deleted), logged, and reported once; it never
//! holds up another alert.
//!
//! `sos-agent send` holds a lock on its entry while it sends (Unix: `flock`, released when the
//! process ends however it ends); the tray agent's rescan leaves a locked entry alone and adopts
//! an unlocked one, so an alert left by a `send` that gave up or was killed is resent within
//! seconds ([`RESCAN_EVERY`](crate::delivery::RESCAN_EVERY)).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sos_shared::protocol::Sos;
use sos_shared::AlertId;
use tracing::warn;

/// Where entries that can never be sent are moved, under the spool directory.
pub const REJECTED_DIR: &str = "rejected";

/// Why the spool could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// One spooled alert as stored on disk.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// The SOS exactly as it will be resent (same alert id, same `triggered_at`).
    sos: Sos,
}

/// An alert waiting in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    /// The alert.
    pub sos: Sos,
    /// A running `sos-agent send` holds it (it is being sent by that process).
    pub busy: bool,
}

/// An entry moved to `rejected/` by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// Where it is now.
    pub file: PathBuf,
    /// Why.
    pub reason: String,
}

/// What a scan of the spool found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Alerts waiting, oldest press first.
    pub alerts: Vec<Spooled>,
    /// Entries this scan set aside (each is reported by one scan only).
    pub set_aside: Vec<SetAside>,
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    /// Where the files are.
    dir: PathBuf,
    /// Unusable entries that could not even be moved aside: reported once, then skipped.
    ignored: Arc<Mutex<HashSet<PathBuf>>>,
}

/// A spooled alert that this process is sending: other processes' scans leave it alone until
/// this is dropped (or the process ends).
#[derive(Debug)]
pub struct Held {
    _file: Option<File>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_path_buf(), source }
}

impl Spool {
    /// Open (creating it, mode 0700) the spool in `dir`, and check that a file can be created
    /// in it.
    ///
    /// # Errors
    /// If the directory cannot be created or written.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(io(dir))?;
        tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
        Ok(Spool { dir: dir.to_path_buf(), ignored: Arc::default() })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where entries that can never be sent are kept.
    pub fn rejected_dir(&self) -> PathBuf {
        self.dir.join(REJECTED_DIR)
    }

    fn path(&self, id: AlertId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Durably record `sos` as not yet acknowledged (replacing an earlier record of it).
    ///
    /// # Errors
    /// If the file cannot be written and synced.
    pub fn put(&self, sos: &Sos) -> Result<(), SpoolError> {
        self.write(sos).map(drop)
    }

    /// As [`Spool::put`], and hold the entry for as long as the returned [`Held`] lives, so
    /// that the tray agent's rescan does not send it too (`sos-agent send`).
    ///
    /// # Errors
    /// If the file cannot be written and synced.
    pub fn put_held(&self, sos: &Sos) -> Result<Held, SpoolError> {
        self.write(sos).map(|f| Held { _file: Some(f) })
    }

    fn write(&self, sos: &Sos) -> Result<File, SpoolError> {
        let path = self.path(sos.alert_id);
        let body = serde_json::to_vec(&Entry { sos: sos.clone() })
            .map_err(|e| SpoolError::Io { path: path.clone(), source: std::io::Error::other(e) })?;
        // tempfile creates it 0600 in the spool directory; persist renames it over the entry.
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io(&self.dir))?;
        #[cfg(unix)]
        let _ = rustix::fs::flock(tmp.as_file(), rustix::fs::FlockOperation::NonBlockingLockExclusive);
        tmp.write_all(&body).map_err(io(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io(&path))?;
        let file = tmp.persist(&path).map_err(|e| SpoolError::Io { path: path.clone(), source: e.error })?;
        self.sync_dir()?;
        Ok(file)
    }

    /// Forget an acknowledged alert. Forgetting one that is not there is not an error.
    ///
    /// # Errors
    /// If the file exists but cannot be removed.
    pub fn remove(&self, id: AlertId) -> Result<(), SpoolError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SpoolError::Io { path, source }),
        }
    }

    /// Discard a waiting alert (`sos-agent spool discard`): `true` if it was there.
    ///
    /// # Errors
    /// If the file exists but cannot be removed.
    pub fn discard(&self, id: AlertId) -> Result<bool, SpoolError> {
        let there = self.path(id).exists();
        self.remove(id)?;
        Ok(there)
    }

    /// Move the entry of an alert that can never be sent to `rejected/`; returns where it went
    /// (`None` if it was not on disk).
    ///
    /// # Errors
    /// If it cannot be moved.
    pub fn reject(&self, id: AlertId) -> Result<Option<PathBuf>, SpoolError> {
        let path = self.path(id);
        if !path.exists() {
            return Ok(None);
        }
        self.set_aside(&path).map(Some)
    }

    fn set_aside(&self, path: &Path) -> Result<PathBuf, SpoolError> {
        let dir = self.rejected_dir();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let to = dir.join(path.file_name().unwrap_or_default());
        fs::rename(path, &to).map_err(io(path))?;
        let _ = self.sync_dir();
        Ok(to)
    }

    /// Every alert not yet acknowledged, oldest press first. Files that cannot be read back are
    /// moved to `rejected/` and returned in [`Scan::set_aside`] (once: a file that cannot even
    /// be moved is remembered and skipped from then on).
    ///
    /// # Errors
    /// If the directory cannot be listed.
    pub fn scan(&self) -> Result<Scan, SpoolError> {
        let mut scan = Scan::default();
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") || !path.is_file() {
                continue;
            }
            let read = File::open(&path).and_then(|mut f| {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut bytes)?;
                Ok((f, bytes))
            });
            let (file, parsed) = match read {
                Ok((f, bytes)) => {
                    let parsed =
                        serde_json::from_slice::<Entry>(&bytes).map_err(|e| format!("not a spooled alert: {e}"));
                    (Some(f), parsed)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // acknowledged meanwhile
                Err(e) => (None, Err(format!("cannot be read: {e}"))),
            };
            match parsed {
                Ok(e) => scan.alerts.push(Spooled { busy: file.as_ref().is_some_and(is_held), sos: e.sos }),
                Err(reason) => {
                    if self.ignored.lock().map(|s| s.contains(&path)).unwrap_or(true) {
                        continue;
                    }
                    match self.set_aside(&path) {
                        Ok(to) => {
                            warn!(file = %path.display(), moved_to = %to.display(), %reason,
                                  "a spooled alert can never be sent; it is set aside for inspection");
                            scan.set_aside.push(SetAside { file: to, reason });
                        }
                        Err(e) => {
                            warn!(file = %path.display(), %reason, error = %e,
                                  "a spooled alert can never be sent and cannot be set aside; it is ignored");
                            if let Ok(mut s) = self.ignored.lock() {
                                s.insert(path.clone());
                            }
                            scan.set_aside.push(SetAside { file: path, reason });
                        }
                    }
                }
            }
        }
        scan.alerts.sort_by_key(|s| (s.sos.triggered_at, s.sos.alert_id));
        Ok(scan)
    }

    /// Every alert not yet acknowledged, oldest press first (see [`Spool::scan`]).
    ///
    /// # Errors
    /// If the directory cannot be listed.
    pub fn pending(&self) -> Result<Vec<Sos>, SpoolError> {
        Ok(self.scan()?.alerts.into_iter().map(|s| s.sos).collect())
    }

    /// The files in `rejected/`.
    pub fn rejected(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.rejected_dir())
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn sync_dir(&self) -> Result<(), SpoolError> {
        #[cfg(unix)]
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))?;
        Ok(())
    }
}

/// Whether another process holds `file` ([`Spool::put_held`]).
fn is_held(file: &File) -> bool {
    #[cfg(unix)]
    {
        use rustix::fs::{flock, FlockOperation};
        match flock(file, FlockOperation::NonBlockingLockShared) {
            Ok(()) => {
                let _ = flock(file, FlockOperation::Unlock);
                false
            }
            Err(e) => e == rustix::io::Errno::WOULDBLOCK,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sos(id: u128, at: u64) -> Sos {
        Sos {
            alert_id: AlertId::from_u128(id),
            test: false,
            triggered_at: at,
            attempt: 0,
            user: "alice".into(),
            host: "desk".into(),
            ip: String::new(),
            location: "Reception".into(),
            message: String::new(),
            agent: "t".into(),
        }
    }

    #[test]
    fn put_pending_remove_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        spool.put(&sos(2, 200)).unwrap();
        spool.put(&sos(1, 100)).unwrap();
        spool.put(&sos(1, 100)).unwrap(); // idempotent
        let again = Spool::open(&dir.path().join("spool")).unwrap();
        let ids: Vec<_> = again.pending().unwrap().iter().map(|s| s.alert_id.as_u128()).collect();
        assert_eq!(ids, vec![1, 2]);
        again.remove(AlertId::from_u128(1)).unwrap();
        again.remove(AlertId::from_u128(1)).unwrap();
        assert_eq!(again.pending().unwrap().len(), 1);
        assert_eq!(fs::read_dir(again.dir()).unwrap().count(), 1, "no temporary file left behind");
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        spool.put(&sos(1, 1)).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(spool.dir()), 0o700);
        assert_eq!(mode(&spool.path(AlertId::from_u128(1))), 0o600);
    }

    #[test]
    fn an_unreadable_file_is_set_aside_once_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.put(&sos(1, 1)).unwrap();
        fs::write(dir.path().join("0000000000000000000000000000000f.json"), b"{truncated").unwrap();
        let scan = spool.scan().unwrap();
        assert_eq!(scan.alerts.len(), 1);
        assert_eq!(scan.set_aside.len(), 1);
        assert!(dir.path().join("rejected/0000000000000000000000000000000f.json").exists());
        assert!(spool.scan().unwrap().set_aside.is_empty(), "reported once");
        assert_eq!(spool.rejected().len(), 1);
    }

    #[test]
    fn an_alert_that_can_never_be_sent_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.put(&sos(1, 1)).unwrap();
        let to = spool.reject(AlertId::from_u128(1)).unwrap().unwrap();
        assert!(to.starts_with(spool.rejected_dir()));
        assert!(spool.pending().unwrap().is_empty());
        assert_eq!(spool.reject(AlertId::from_u128(1)).unwrap(), None);
    }

    #[cfg(unix)]
    #[test]
    fn an_entry_held_by_a_send_is_busy_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let held = spool.put_held(&sos(1, 1)).unwrap();
        assert!(spool.scan().unwrap().alerts[0].busy);
        drop(held);
        assert!(!spool.scan().unwrap().alerts[0].busy);
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_that_cannot_be_written_is_refused_at_open() {
        use std::os::unix::fs::PermissionsExt as _;
        if crate::keys::running_as_root() {
            return; // root writes anywhere
        }
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        fs::create_dir(&ro).unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o500)).unwrap();
        assert!(Spool::open(&ro).is_err());
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o700)).unwrap();
    }
}
