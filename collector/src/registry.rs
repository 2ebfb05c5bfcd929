//! The agent registry: enrolled agents with their own keys, pending one-time codes, rotation
//! and revocation.
//!
//! It lives in the store (tables `enrolled`, `enrollments`, `registry_version`) so that the CLI
//! (`sos-collector enroll`, `agents revoke`, `agents rotate`) can change it while the service
//! runs. Every change bumps `registry_version`; the service checks it once a second and then
//! reloads its in-memory copy, a map from key id to agent for O(1) lookup of every datagram.
//!
//! An agent has a current key; after `rotate`, also a next key that reaches the agent in a
//! heartbeat answer sealed with the current one. The first datagram sealed with the next key
//! promotes it: the old key stays valid for the rotation grace period, then is refused.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, RwLock};

use rusqlite::{params, OptionalExtension};
use sos_shared::enroll::{Code, EnrolledKey};
use sos_shared::{Key, KeyId};

use crate::store::{Db, EnrolledAs, Store, StoreError};

/// How many times a code may be tried (each `enroll_start` counts) before it is burnt.
pub const MAX_CODE_ATTEMPTS: i64 = 5;

/// One row of `enrolled`, as `agents list` shows it. Holds no key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    /// 16 hex digits.
    pub agent_id: String,
    /// The name it was enrolled under.
    pub name: String,
    /// The host it reported when it enrolled.
    pub host: String,
    /// When, ms since the Unix epoch.
    pub enrolled_at_ms: i64,
    /// The id of its current key.
    pub key_id: String,
    /// A rotation is waiting for the agent to pick up its new key (since this time).
    pub rotation_pending_since_ms: Option<i64>,
    /// The previous key is still accepted until this time (after a rotation).
    pub previous_key_until_ms: Option<i64>,
    /// When it was revoked.
    pub revoked_at_ms: Option<i64>,
    /// The last datagram from it, ms since the Unix epoch.
    pub last_seen_ms: Option<i64>,
    /// A site collector enrolled to forward its alerts here (`enroll --site`), not a workstation.
    pub site: bool,
}

/// What became of an `enroll_start` for a code id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The code is pending: try it (the attempt is counted).
    Try {
        /// The whole code.
        code: Code,
        /// The name the agent will be enrolled under.
        name: String,
    },
    /// No such code.
    Unknown,
    /// Already used to enroll an agent.
    Used,
    /// Past its expiry.
    Expired,
    /// Tried [`MAX_CODE_ATTEMPTS`] times without success: burnt.
    TooManyAttempts,
}

/// Why a CLI registry command was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No agent with that id or name.
    #[error("no enrolled agent has the id or name {0:?} (see `sos-collector agents list`)")]
    NoSuchAgent(String),
    /// A name matches several agents.
    #[error("{0:?} names several agents; use the agent id (see `sos-collector agents list`)")]
    Ambiguous(String),
    /// The agent is revoked.
    #[error("agent {0} is revoked; enroll the workstation again with a new code")]
    Revoked(String),
    /// A rotation is already waiting for the agent.
    #[error("agent {0} has a rotation pending since {1}; it completes at the agent's next heartbeat (rotating again before that would lock the agent out)")]
    RotationPending(String, String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn new_agent_id() -> String {
    let mut raw = [0u8; 8];
    getrandom::getrandom(&mut raw).expect("the operating system's random source failed");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn bump(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute("UPDATE registry_version SET version = version + 1 WHERE id = 0", [])?;
    Ok(())
}

fn key_id_of(text: &str) -> String {
    Key::from_base64(text).map(|k| k.id().to_string()).unwrap_or_else(|_| "invalid".into())
}

impl Db {
    /// A new one-time code for an agent to be enrolled as `name`, valid for `ttl_ms`.
    ///
    /// # Errors
    /// If the store fails.
    pub fn create_enrollment(&mut self, name: &str, ttl_ms: i64, now_ms: i64) -> Result<Code, StoreError> {
        self.create_enrollment_of(name, false, ttl_ms, now_ms)
    }

    /// A new one-time code that enrolls `name`: a workstation, or with `site` a site collector
    /// that forwards its alerts here (`sos-collector enroll --site`).
    ///
    /// # Errors
    /// If the store fails.
    pub fn create_enrollment_of(
        &mut self,
        name: &str,
        site: bool,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Code, StoreError> {
        let tx = self.conn.transaction()?;
        let code = loop {
            let code = Code::generate();
            // A code id may be reused once its earlier code is used or expired.
            let n = tx.execute(
                "INSERT INTO enrollments (code_id, secret, name, created_at_ms, expires_at_ms, site)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?7)
                 ON CONFLICT (code_id) DO UPDATE SET secret = excluded.secret, name = excluded.name, site = excluded.site,
                     created_at_ms = excluded.created_at_ms, expires_at_ms = excluded.expires_at_ms,
                     attempts = 0, used_at_ms = NULL, agent_id = NULL
                 WHERE used_at_ms IS NOT NULL OR expires_at_ms <= ?4 OR attempts >= ?6",
                params![code.id(), code.secret(), name, now_ms, now_ms + ttl_ms, MAX_CODE_ATTEMPTS, site],
            )?;
            if n == 1 {
                break code;
            }
        };
        tx.commit()?;
        Ok(code)
    }

    /// Count an attempt at the code `code_id` and say whether it may go ahead.
    ///
    /// # Errors
    /// If the store fails.
    pub fn enroll_attempt(&mut self, code_id: &str, now_ms: i64) -> Result<Attempt, StoreError> {
        let tx = self.conn.transaction()?;
        let row: Option<(String, String, i64, i64, Option<i64>)> = tx
            .query_row(
                "SELECT secret, name, expires_at_ms, attempts, used_at_ms FROM enrollments WHERE code_id = ?1",
                params![code_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let outcome = match row {
            None => Attempt::Unknown,
            Some((_, _, _, _, Some(_))) => Attempt::Used,
            Some((_, _, expires, _, None)) if expires <= now_ms => Attempt::Expired,
            Some((_, _, _, attempts, None)) if attempts >= MAX_CODE_ATTEMPTS => Attempt::TooManyAttempts,
            Some((secret, name, _, _, None)) => {
                tx.execute("UPDATE enrollments SET attempts = attempts + 1 WHERE code_id = ?1", params![code_id])?;
                match Code::from_parts(code_id, &secret) {
                    Ok(code) => Attempt::Try { code, name },
                    Err(_) => Attempt::Unknown,
                }
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// Enroll the agent that proved it holds the code `code_id`: a new agent id and key, the
    /// code marked used. `None` if the code was used (or burnt, or expired) in the meantime.
    ///
    /// # Errors
    /// If the store fails; then nothing changed.
    pub fn complete_enrollment(
        &mut self,
        code_id: &str,
        host: &str,
        now_ms: i64,
    ) -> Result<Option<EnrolledKey>, StoreError> {
        let tx = self.conn.transaction()?;
        let row: Option<(String, bool)> = tx
            .query_row(
                "SELECT name, site FROM enrollments WHERE code_id = ?1 AND used_at_ms IS NULL AND expires_at_ms > ?2",
                params![code_id, now_ms],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((name, site)) = row else { return Ok(None) };
        let agent_id = new_agent_id();
        let key = Key::generate();
        tx.execute(
            "INSERT INTO enrolled (agent_id, name, host, enrolled_at_ms, key, site) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![agent_id, name, host, now_ms, key, site],
        )?;
        tx.execute(
            "UPDATE enrollments SET used_at_ms = ?2, agent_id = ?3 WHERE code_id = ?1",
            params![code_id, now_ms, agent_id],
        )?;
        bump(&tx)?;
        tx.commit()?;
        Ok(Some(EnrolledKey { agent_id, name, key }))
    }

    /// The registry's change counter.
    ///
    /// # Errors
    /// If the store fails.
    pub fn registry_version(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row("SELECT version FROM registry_version WHERE id = 0", [], |r| r.get(0))?)
    }

    /// Every enrolled agent, for `agents list`; no key material.
    ///
    /// # Errors
    /// If the store fails.
    pub fn enrolled_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT agent_id, name, host, enrolled_at_ms, key, rotated_at_ms, next_key IS NOT NULL,
                    prev_until_ms, prev_key IS NOT NULL, revoked_at_ms, last_seen_ms, site
             FROM enrolled ORDER BY name, agent_id",
        )?;
        let rows = stmt.query_map([], |r| {
            let key: String = r.get(4)?;
            Ok(AgentRecord {
                agent_id: r.get(0)?,
                name: r.get(1)?,
                host: r.get(2)?,
                enrolled_at_ms: r.get(3)?,
                key_id: key_id_of(&key),
                rotation_pending_since_ms: if r.get(6)? { r.get(5)? } else { None },
                previous_key_until_ms: if r.get(8)? { r.get(7)? } else { None },
                revoked_at_ms: r.get(9)?,
                last_seen_ms: r.get(10)?,
                site: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The agent whose id (or unique name) is `who`.
    fn find_agent(&self, who: &str) -> Result<AgentRecord, RegistryError> {
        let all = self.enrolled_agents()?;
        if let Some(a) = all.iter().find(|a| a.agent_id == who) {
            return Ok(a.clone());
        }
        let mut named = all.into_iter().filter(|a| a.name == who);
        match (named.next(), named.next()) {
            (Some(a), None) => Ok(a),
            (Some(_), Some(_)) => Err(RegistryError::Ambiguous(who.to_owned())),
            (None, _) => Err(RegistryError::NoSuchAgent(who.to_owned())),
        }
    }

    /// Revoke the agent `who` (id or unique name): every key of it is refused from now on.
    ///
    /// # Errors
    /// If there is no such agent or the store fails.
    pub fn revoke(&mut self, who: &str, now_ms: i64) -> Result<AgentRecord, RegistryError> {
        let agent = self.find_agent(who)?;
        let tx = self.conn.transaction().map_err(StoreError::from)?;
        tx.execute(
            "UPDATE enrolled SET revoked_at_ms = COALESCE(revoked_at_ms, ?2), next_key = NULL WHERE agent_id = ?1",
            params![agent.agent_id, now_ms],
        )
        .map_err(StoreError::from)?;
        bump(&tx).map_err(StoreError::from)?;
        tx.commit().map_err(StoreError::from)?;
        self.find_agent(&agent.agent_id)
    }

    /// Give the agent `who` a new key, delivered at its next heartbeat.
    ///
    /// # Errors
    /// If there is no such agent, it is revoked, a rotation is already pending, or the store
    /// fails.
    pub fn rotate(&mut self, who: &str, now_ms: i64) -> Result<AgentRecord, RegistryError> {
        let agent = self.find_agent(who)?;
        if agent.revoked_at_ms.is_some() {
            return Err(RegistryError::Revoked(agent.agent_id));
        }
        if let Some(since) = agent.rotation_pending_since_ms {
            return Err(RegistryError::RotationPending(agent.agent_id, crate::channel::when_utc(since / 1000)));
        }
        let tx = self.conn.transaction().map_err(StoreError::from)?;
        tx.execute(
            "UPDATE enrolled SET next_key = ?2, rotated_at_ms = ?3 WHERE agent_id = ?1",
            params![agent.agent_id, Key::generate(), now_ms],
        )
        .map_err(StoreError::from)?;
        bump(&tx).map_err(StoreError::from)?;
        tx.commit().map_err(StoreError::from)?;
        self.find_agent(&agent.agent_id)
    }

    /// The agent `agent_id` used its next key: it becomes the current one, and the old one
    /// stays valid until `until_ms`. Nothing happens if `key_id` is not its next key (any more).
    ///
    /// # Errors
    /// If the store fails.
    pub fn promote(&mut self, agent_id: &str, key_id: &str, until_ms: i64) -> Result<bool, StoreError> {
        let next: Option<Option<String>> = self
            .conn
            .query_row("SELECT next_key FROM enrolled WHERE agent_id = ?1", params![agent_id], |r| r.get(0))
            .optional()?;
        let Some(Some(next)) = next else { return Ok(false) };
        if key_id_of(&next) != key_id {
            return Ok(false);
        }
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE enrolled SET prev_key = key, prev_until_ms = ?2, key = next_key, next_key = NULL
             WHERE agent_id = ?1 AND next_key IS NOT NULL",
            params![agent_id, until_ms],
        )?;
        bump(&tx)?;
        tx.commit()?;
        Ok(true)
    }

    /// The ids of the codes that can still be used (not used, expired or burnt), for the
    /// receive path's cheap check before any store work.
    ///
    /// # Errors
    /// If the store fails.
    pub fn pending_codes(&self, now_ms: i64) -> Result<HashSet<String>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT code_id FROM enrollments WHERE used_at_ms IS NULL AND expires_at_ms > ?1 AND attempts < ?2",
        )?;
        let ids = stmt.query_map(params![now_ms, MAX_CODE_ATTEMPTS], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// The whole registry, for the service's in-memory copy.
    ///
    /// # Errors
    /// If the store fails.
    pub fn load_registry(&self) -> Result<Registry, StoreError> {
        let version = self.registry_version()?;
        let mut stmt = self.conn.prepare(
            "SELECT agent_id, name, host, key, prev_key, prev_until_ms, next_key, revoked_at_ms, site FROM enrolled",
        )?;
        let mut by_key = HashMap::new();
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let agent_id: String = r.get(0)?;
            let key: String = r.get(3)?;
            let prev: Option<String> = r.get(4)?;
            let next: Option<String> = r.get(6)?;
            let agent = Arc::new(AgentEntry {
                who: EnrolledAs { agent_id: agent_id.clone(), name: r.get(1)?, host: r.get(2)? },
                revoked: r.get::<_, Option<i64>>(7)?.is_some(),
                next_key: next.clone().map(Into::into),
                site: r.get(8)?,
            });
            let mut add = |text: &str, slot: Slot| match Key::from_base64(text) {
                Ok(k) => {
                    by_key.insert(k.id(), Entry { agent: agent.clone(), key: k, slot });
                }
                Err(_) => tracing::error!(%agent_id, "a key in the registry is not valid; that key is refused"),
            };
            add(&key, Slot::Current);
            if let Some(p) = prev {
                add(&p, Slot::Previous { until_ms: r.get::<_, Option<i64>>(5)?.unwrap_or(0) });
            }
            if let Some(n) = next {
                add(&n, Slot::Next);
            }
        }
        Ok(Registry { version, by_key })
    }
}

/// Which of an agent's keys sealed a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Its current key.
    Current,
    /// The key it had before a rotation: accepted until `until_ms`.
    Previous {
        /// ms since the Unix epoch.
        until_ms: i64,
    },
    /// The key a rotation gave it, not used until now: using it completes the rotation.
    Next,
}

/// An enrolled agent as the receive path needs it.
#[derive(Debug)]
pub struct AgentEntry {
    /// Who it was enrolled as.
    pub who: EnrolledAs,
    /// Revoked: every key refused.
    pub revoked: bool,
    /// The key a pending rotation gives it, sent in heartbeat answers until it is used.
    pub next_key: Option<secrecy::SecretString>,
    /// A site collector that forwards its alerts here (its `forward_sos`, `forward_update` are
    /// accepted; its name is the site's name), not a workstation.
    pub site: bool,
}

/// A key of an enrolled agent.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The agent.
    pub agent: Arc<AgentEntry>,
    /// The key.
    pub key: Key,
    /// Which of its keys.
    pub slot: Slot,
}

/// The in-memory registry: key id → agent.
#[derive(Default)]
pub struct Registry {
    pub(crate) version: i64,
    pub(crate) by_key: HashMap<KeyId, Entry>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("version", &self.version).field("keys", &self.by_key.len()).finish()
    }
}

impl Registry {
    /// The key with id `id`, if an enrolled agent has it.
    pub fn get(&self, id: KeyId) -> Option<&Entry> {
        self.by_key.get(&id)
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// The service's registry: the current copy, reloaded from the store when it changes (by this
/// collector, the command line, or another collector on the same PostgreSQL).
#[derive(Debug)]
pub struct SharedRegistry {
    current: RwLock<Arc<Registry>>,
    /// Ids of the codes pending enrollment, as of the last refresh.
    pending: RwLock<Arc<HashSet<String>>>,
    store: Store,
}

impl SharedRegistry {
    /// Load the registry from `store`.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub async fn open(store: Store) -> Result<Arc<Self>, StoreError> {
        let registry = store.load_registry().await?;
        let pending = store.pending_codes(crate::store::now_ms()).await?;
        Ok(Arc::new(SharedRegistry {
            current: RwLock::new(Arc::new(registry)),
            pending: RwLock::new(Arc::new(pending)),
            store,
        }))
    }

    /// The current copy.
    pub fn snapshot(&self) -> Arc<Registry> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `code_id` names a code pending enrollment (as of the last refresh).
    pub fn is_pending(&self, code_id: &str) -> bool {
        self.pending.read().unwrap_or_else(|e| e.into_inner()).contains(code_id)
    }

    /// Reload the pending codes, and the registry if it changed. Returns the new registry when
    /// it changed.
    ///
    /// # Errors
    /// If the store cannot be read; the old copy stays in use.
    pub async fn refresh(&self) -> Result<Option<Arc<Registry>>, StoreError> {
        let pending = self.store.pending_codes(crate::store::now_ms()).await?;
        *self.pending.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pending);
        let version = self.store.registry_version().await?;
        if version == self.snapshot().version {
            return Ok(None);
        }
        let fresh = Arc::new(self.store.load_registry().await?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        Ok(Some(fresh))
    }

    /// Reload now if it changed, logging what happened.
    pub async fn refresh_async(self: &Arc<Self>) {
        match self.refresh().await {
            Ok(Some(r)) => tracing::info!(version = r.version, keys = r.len(), "agent registry reloaded"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot reload the agent registry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("sos.db")).unwrap();
        (dir, db)
    }

    #[test]
    fn a_code_works_once_within_its_time_and_attempts() {
        let (_d, mut db) = db();
        let code = db.create_enrollment("Reception", 600_000, 1_000).unwrap();
        assert_eq!(
            db.enroll_attempt(code.id(), 2_000).unwrap(),
            Attempt::Try { code: code.clone(), name: "Reception".into() }
        );
        let k = db.complete_enrollment(code.id(), "desk-3", 3_000).unwrap().unwrap();
        assert_eq!(k.name, "Reception");
        assert_eq!(db.enroll_attempt(code.id(), 4_000).unwrap(), Attempt::Used);
        assert_eq!(db.complete_enrollment(code.id(), "desk-3", 4_000).unwrap(), None);

        let late = db.create_enrollment("Late", 600_000, 1_000).unwrap();
        assert_eq!(db.enroll_attempt(late.id(), 601_000).unwrap(), Attempt::Expired);
        let burnt = db.create_enrollment("Burnt", 600_000, 1_000).unwrap();
        for _ in 0..MAX_CODE_ATTEMPTS {
            assert!(matches!(db.enroll_attempt(burnt.id(), 2_000).unwrap(), Attempt::Try { .. }));
        }
        assert_eq!(db.enroll_attempt(burnt.id(), 2_000).unwrap(), Attempt::TooManyAttempts);
        assert_eq!(db.enroll_attempt("ZZZZ", 2_000).unwrap(), Attempt::Unknown);
    }

    #[test]
    fn pending_codes_are_those_still_usable() {
        let (_d, mut db) = db();
        let open = db.create_enrollment("Open", 600_000, 1_000).unwrap();
        let used = db.create_enrollment("Used", 600_000, 1_000).unwrap();
        db.complete_enrollment(used.id(), "desk", 2_000).unwrap().unwrap();
        let burnt = db.create_enrollment("Burnt", 600_000, 1_000).unwrap();
        for _ in 0..MAX_CODE_ATTEMPTS {
            db.enroll_attempt(burnt.id(), 2_000).unwrap();
        }
        let pending = db.pending_codes(2_000).unwrap();
        assert!(pending.contains(open.id()));
        assert!(!pending.contains(used.id()) && !pending.contains(burnt.id()));
        assert!(db.pending_codes(601_000).unwrap().is_empty(), "expired codes are not pending");
    }

    #[test]
    fn rotation_promotes_on_first_use_and_revocation_is_recorded() {
        let (_d, mut db) = db();
        let code = db.create_enrollment("Reception", 600_000, 1_000).unwrap();
        let k = db.complete_enrollment(code.id(), "desk-3", 3_000).unwrap().unwrap();
        let key = Key::from_base64(&k.key).unwrap();
        let r = db.load_registry().unwrap();
        assert_eq!(r.get(key.id()).unwrap().slot, Slot::Current);

        let rec = db.rotate("Reception", 4_000).unwrap();
        assert_eq!(rec.rotation_pending_since_ms, Some(4_000));
        assert!(matches!(db.rotate(&k.agent_id, 4_500), Err(RegistryError::RotationPending(..))));
        let r = db.load_registry().unwrap();
        let next = r.get(key.id()).unwrap().agent.next_key.clone().unwrap();
        let next_id = Key::from_base64(secrecy::ExposeSecret::expose_secret(&next)).unwrap().id();
        assert_eq!(r.get(next_id).unwrap().slot, Slot::Next);

        assert!(!db.promote(&k.agent_id, &key.id().to_string(), 9_000).unwrap());
        assert!(db.promote(&k.agent_id, &next_id.to_string(), 9_000).unwrap());
        let r = db.load_registry().unwrap();
        assert_eq!(r.get(next_id).unwrap().slot, Slot::Current);
        assert_eq!(r.get(key.id()).unwrap().slot, Slot::Previous { until_ms: 9_000 });

        let v = db.registry_version().unwrap();
        let rec = db.revoke(&k.agent_id, 10_000).unwrap();
        assert_eq!(rec.revoked_at_ms, Some(10_000));
        assert!(db.registry_version().unwrap() > v);
        assert!(db.load_registry().unwrap().get(next_id).unwrap().agent.revoked);
        assert!(matches!(db.rotate(&k.agent_id, 11_000), Err(RegistryError::Revoked(_))));
        assert!(matches!(db.revoke("nobody", 11_000), Err(RegistryError::NoSuchAgent(_))));
    }
}
