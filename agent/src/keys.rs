//! The agent's keys: the enrollment file that holds its own key, and the keyring the sender
//! seals with, which a rotation (a new key in a heartbeat answer) updates in place.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sos_shared::config::read_secret_file;
use sos_shared::{Key, KeyId};

/// What `sos-agent enroll` writes: this workstation's identity and its own key. Mode 0600.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    /// The agent's id in the collector's registry.
    pub agent_id: String,
    /// The name it was enrolled under.
    pub name: String,
    /// The collector it enrolled with (`host:port`); used when the config names none.
    pub collector: String,
    /// When, seconds since the Unix epoch.
    pub enrolled_at: u64,
    /// Its own Fernet key (a secret).
    pub key: String,
}

impl fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enrollment")
            .field("agent_id", &self.agent_id)
            .field("name", &self.name)
            .field("collector", &self.collector)
            .finish_non_exhaustive()
    }
}

impl Enrollment {
    /// Read an enrollment file, refusing one that other users can read, unless it is a
    /// machine enrollment ([`Enrollment::save_for_machine`]): owned by root and writable only
    /// by root, meant for every user of the workstation.
    ///
    /// # Errors
    /// A message naming the file and what is wrong (never the key).
    pub fn load(path: &Path) -> Result<Enrollment, String> {
        let text = if is_machine_file(path) {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        } else {
            read_secret_file(path)?
        };
        let e: Enrollment = toml::from_str(&text)
            .map_err(|err| format!("{} is not an enrollment file: {}", path.display(), err.message()))?;
        Key::from_base64(&e.key).map_err(|err| format!("{}: key: {err}", path.display()))?;
        Ok(e)
    }

    /// Write it to `path` atomically, mode 0600 (a temporary file renamed over the old one).
    ///
    /// # Errors
    /// If the directory or the file cannot be written.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        self.write(path, false)
    }

    /// Write it as the machine's enrollment, which every user's agent on this workstation
    /// reads: owned by root, mode 0644 (`sos-agent enroll --system`, run as root).
    ///
    /// The key then identifies the workstation, not a person: any local account can read it,
    /// as it could read a site key in `/etc/sos/agent.toml` (docs/SECURITY.md). A user's agent
    /// cannot save a rotated key here; the administrator re-enrolls the machine instead.
    ///
    /// # Errors
    /// If not run as root, or the file cannot be written.
    pub fn save_for_machine(&self, path: &Path) -> std::io::Result<()> {
        self.write(path, true)
    }

    fn write(&self, path: &Path, machine: bool) -> std::io::Result<()> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let header = if machine {
            "# Written by `sos-agent enroll --system`: this workstation's SOS key, shared by its users."
        } else {
            "# Written by `sos-agent enroll`: this workstation's own SOS key. Keep it private (mode 0600)."
        };
        let text = format!("{header}\n{}", toml::to_string(self).map_err(std::io::Error::other)?);
        // Created 0600 beside the target, synced, then renamed over it (tempfile's persist):
        // a crash leaves the old file or the new one, never half of one.
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut tmp, text.as_bytes())?;
        if machine {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
                if !is_machine_file(tmp.path()) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        "a machine enrollment must be written by root (run it with sudo)",
                    ));
                }
            }
        }
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        // The rename is durable once the directory is.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// A machine enrollment: owned by root and writable by nobody else. (Windows: files under
/// `%ProgramData%` are protected by their ACLs; every enrollment file is accepted there.)
fn is_machine_file(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(path).map(|m| m.uid() == 0 && m.mode() & 0o022 == 0).unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

#[derive(Debug)]
struct State {
    current: Key,
    previous: Option<Key>,
}

/// The keys the sender seals with and opens replies with. Clones share it.
#[derive(Debug, Clone)]
pub struct Keyring {
    state: Arc<RwLock<State>>,
    /// The enrollment file a rotated key is saved to; `None` for a site key from the config.
    file: Option<PathBuf>,
}

impl Keyring {
    /// A keyring with `key`; rotations are saved to `enrollment_file`.
    pub fn new(key: Key, enrollment_file: Option<PathBuf>) -> Keyring {
        Keyring { state: Arc::new(RwLock::new(State { current: key, previous: None })), file: enrollment_file }
    }

    /// The key to seal with.
    pub fn current(&self) -> Key {
        self.state.read().unwrap_or_else(|e| e.into_inner()).current.clone()
    }

    /// The key with id `id`: the current one, or the one before a rotation (replies to
    /// requests sealed before it may still arrive).
    pub fn get(&self, id: KeyId) -> Option<Key> {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        if s.current.id() == id {
            return Some(s.current.clone());
        }
        s.previous.clone().filter(|k| k.id() == id)
    }

    /// A collector sent a new key (`sos-collector agents rotate`): save it, then seal with it.
    /// Returns `Ok(false)` if it is already the current key.
    ///
    /// # Errors
    /// If the key is not valid, there is no enrollment file to save it to, or saving fails;
    /// then the current key stays in use (and the collector keeps offering the new one).
    pub fn rotate(&self, new_key: &str) -> Result<bool, String> {
        let key = Key::from_base64(new_key).map_err(|e| format!("the collector sent an invalid key: {e}"))?;
        if self.current().id() == key.id() {
            return Ok(false);
        }
        let Some(path) = &self.file else {
            return Err("a new key arrived but this agent uses a key from its config, not an enrollment file".into());
        };
        let mut e = Enrollment::load(path)?;
        let machine = is_machine_file(path);
        if machine && !running_as_root() {
            return Err(format!(
                "this workstation uses the machine's enrollment ({}), which only an administrator can change: \
                 re-enroll the machine (`sudo sos-agent enroll CODE --collector HOST:PORT --system`) to give it a new key",
                path.display()
            ));
        }
        e.key = new_key.trim().to_owned();
        let saved = if machine { e.save_for_machine(path) } else { e.save(path) };
        saved.map_err(|err| format!("cannot save the new key to {}: {err}", path.display()))?;
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut s.current, key);
        s.previous = Some(old);
        Ok(true)
    }
}

/// Whether this process runs as root (always false off Unix).
pub fn running_as_root() -> bool {
    #[cfg(unix)]
    {
        rustix::process::geteuid().is_root()
    }
    #[cfg(not(unix))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrollment(name: &str, key: String) -> Enrollment {
        Enrollment {
            agent_id: "0011223344556677".into(),
            name: name.into(),
            collector: "127.0.0.1:5000".into(),
            enrolled_at: 1,
            key,
        }
    }

    #[test]
    fn an_enrollment_file_is_private_and_a_rotation_is_saved_before_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/enrollment.toml");
        let first = Key::generate();
        let e = enrollment("Reception", first.clone());
        e.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(!format!("{e:?}").contains(&first));
        let ring = Keyring::new(Key::from_base64(&first).unwrap(), Some(path.clone()));
        let old_id = ring.current().id();
        let second = Key::generate();
        assert!(ring.rotate(&second).unwrap());
        assert!(!ring.rotate(&second).unwrap());
        assert_eq!(Enrollment::load(&path).unwrap().key, second);
        assert_ne!(ring.current().id(), old_id);
        assert!(ring.get(old_id).is_some(), "replies sealed with the old key still open");
        assert!(Keyring::new(Key::from_base64(&first).unwrap(), None).rotate(&second).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_readable_enrollment_file_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enrollment.toml");
        let e = enrollment("Reception", Key::generate());
        e.save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        if running_as_root() {
            // Root's own readable file would be a machine enrollment; make it a user's.
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        }
        let err = Enrollment::load(&path).unwrap_err();
        assert!(err.contains("chmod 600") && !err.contains(&e.key), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_machine_enrollment_is_written_by_root_for_every_user() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/sos/enrollment.toml");
        let e = enrollment("Desk 12", Key::generate());
        if !running_as_root() {
            let err = e.save_for_machine(&path).unwrap_err();
            assert!(err.to_string().contains("root"), "{err}");
            assert!(!path.exists());
            return;
        }
        e.save_for_machine(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (0, 0o644));
        assert_eq!(Enrollment::load(&path).unwrap().name, "Desk 12");
        // Root's agent saves a rotation the same way: still readable by the users.
        let ring = Keyring::new(Key::from_base64(&e.key).unwrap(), Some(path.clone()));
        assert!(ring.rotate(&Key::generate()).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        // Writable by others, it is no longer trusted as the machine's.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(Enrollment::load(&path).unwrap_err().contains("chmod 600"));
    }
}
