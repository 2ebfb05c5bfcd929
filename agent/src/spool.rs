//! The spool: every SOS is written to disk before its first transmission and removed only when
//! a collector acknowledges it, so that an alert survives a crash, a reboot or a network outage
//! and is resent when the agent runs again.
//!
//! One file per alert, `<alert id>.json`, written atomically (temporary file, `fsync`, rename,
//! `fsync` of the directory) with mode 0600 in a directory of mode 0700: it holds who pressed the
//! button and where. A file that cannot be read back is renamed `*.bad` and reported, never
//! deleted.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sos_shared::protocol::Sos;
use sos_shared::AlertId;
use tracing::warn;

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

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    /// Where the files are.
    dir: PathBuf,
}

impl Spool {
    /// Open (creating it, mode 0700) the spool in `dir`.
    ///
    /// # Errors
    /// If the directory cannot be created.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        let io = |source| SpoolError::Io { path: dir.to_path_buf(), source };
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(io)?;
        Ok(Spool { dir: dir.to_path_buf() })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: AlertId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Durably record `sos` as not yet acknowledged (replacing an earlier record of it).
    ///
    /// # Errors
    /// If the file cannot be written and synced.
    pub fn put(&self, sos: &Sos) -> Result<(), SpoolError> {
        let path = self.path(sos.alert_id);
        let tmp = self.dir.join(format!("{}.json.tmp", sos.alert_id));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| SpoolError::Io { path: p, source }
        };
        let body = serde_json::to_vec(&Entry { sos: sos.clone() }).expect("an SOS always serialises");
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp).map_err(io(&tmp))?;
        f.write_all(&body).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        self.sync_dir()
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

    /// Every alert not yet acknowledged, oldest press first. Files that cannot be read back are
    /// renamed `*.bad`, logged, and skipped.
    ///
    /// # Errors
    /// If the directory cannot be listed.
    pub fn pending(&self) -> Result<Vec<Sos>, SpoolError> {
        let io = |source| SpoolError::Io { path: self.dir.clone(), source };
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Entry>(&b).ok()) {
                Some(e) => out.push(e.sos),
                None => {
                    let bad = path.with_extension("json.bad");
                    warn!(file = %path.display(), moved_to = %bad.display(),
                          "a spooled alert cannot be read; it is kept aside for inspection");
                    let _ = fs::rename(&path, &bad);
                }
            }
        }
        out.sort_by_key(|s| (s.triggered_at, s.alert_id));
        Ok(out)
    }

    fn sync_dir(&self) -> Result<(), SpoolError> {
        #[cfg(unix)]
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| SpoolError::Io { path: self.dir.clone(), source })?;
        Ok(())
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
    fn an_unreadable_file_is_kept_aside_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.put(&sos(1, 1)).unwrap();
        fs::write(dir.path().join("0000000000000000000000000000000f.json"), b"{truncated").unwrap();
        assert_eq!(spool.pending().unwrap().len(), 1);
        assert!(dir.path().join("0000000000000000000000000000000f.json.bad").exists());
    }
}
