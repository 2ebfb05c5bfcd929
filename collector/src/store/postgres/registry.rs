//! The agent registry on PostgreSQL: one-time enrollment codes, enrolled agents and their keys,
//! rotation and revocation, shared by every collector on the database. The SQL of
//! [`crate::registry`]'s `impl Db`, ported; the same names, parameters and results.
//!
//! Several collectors at once:
//! - every transaction that changes the registry bumps `registry_version` (each collector polls
//!   it and reloads its copy when it changed) and sends `NOTIFY sos_changes` (every console's
//!   live page refreshes);
//! - a code is completed by one `UPDATE … WHERE used_at_ms IS NULL … RETURNING`: when two
//!   collectors complete the same code at once, the second waits for the first's row lock, then
//!   finds the code used — exactly one key is made;
//! - an attempt at a code is counted under the code's row lock (`FOR UPDATE`): no attempt is lost;
//! - promotion and rotation are conditional updates under the agent's row lock: a second
//!   collector promoting the same key finds nothing to do, and two rotations at once cannot
//!   replace a next key that an agent may already have been sent.
//!
//! Keys never reach a log, an error or a panic: only key ids are shown.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use secrecy::{ExposeSecret as _, SecretString};
use sos_shared::enroll::{Code, EnrolledKey};
use sos_shared::Key;
use tokio_postgres::GenericClient;

use super::conn::Tx;

use super::{pg_error, text, PgStore};
use crate::registry::{AgentEntry, AgentRecord, Attempt, Entry, Registry, RegistryError, Slot, MAX_CODE_ATTEMPTS};
use crate::store::{EnrolledAs, StoreError};

/// The columns of an [`AgentRecord`], as [`agent_record`] reads them.
const RECORD_COLUMNS: &str = "agent_id, name, host, enrolled_at_ms, key, rotated_at_ms, next_key IS NOT NULL,
     prev_until_ms, prev_key IS NOT NULL, revoked_at_ms, last_seen_ms, site <> 0";

/// A new agent id: 16 hex digits.
fn new_agent_id() -> String {
    let mut raw = [0u8; 8];
    getrandom::getrandom(&mut raw).expect("the operating system's random source failed");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// The id of the key `text`, or `invalid` (never the key).
fn key_id_of(text: &str) -> String {
    Key::from_base64(text).map(|k| k.id().to_string()).unwrap_or_else(|_| "invalid".into())
}

/// Bump the registry's version and tell every collector, in the transaction that changed it.
async fn bump(tx: &Tx<'_>) -> Result<(), StoreError> {
    tx.batch_execute("UPDATE registry_version SET version = version + 1 WHERE id = 0; NOTIFY sos_changes")
        .await
        .map_err(pg_error)
}

/// An agent from a row of [`RECORD_COLUMNS`]; the key itself is read only for its id.
fn agent_record(r: &tokio_postgres::Row) -> AgentRecord {
    let key = SecretString::from(r.get::<_, String>(4));
    AgentRecord {
        agent_id: r.get(0),
        name: r.get(1),
        host: r.get(2),
        enrolled_at_ms: r.get(3),
        key_id: key_id_of(key.expose_secret()),
        rotation_pending_since_ms: if r.get(6) { r.get(5) } else { None },
        previous_key_until_ms: if r.get(8) { r.get(7) } else { None },
        revoked_at_ms: r.get(9),
        last_seen_ms: r.get(10),
        site: r.get(11),
    }
}

/// Every enrolled agent, ordered by name then id (byte order, as SQLite's).
async fn all_agents(c: &impl GenericClient) -> Result<Vec<AgentRecord>, StoreError> {
    let rows = c
        .query(
            &format!("SELECT {RECORD_COLUMNS} FROM enrolled ORDER BY name COLLATE \"C\", agent_id COLLATE \"C\""),
            &[],
        )
        .await
        .map_err(pg_error)?;
    Ok(rows.iter().map(agent_record).collect())
}

impl PgStore {
    /// See [`crate::store::Db::create_enrollment`].
    ///
    /// # Errors
    /// If the store fails.
    pub async fn create_enrollment(&self, name: &str, ttl_ms: i64, now_ms: i64) -> Result<Code, StoreError> {
        self.create_enrollment_of(name, false, ttl_ms, now_ms).await
    }

    /// See [`crate::store::Db::create_enrollment_of`]. A code id is taken over only from a code
    /// that is used, expired or burnt, so a collector never overwrites a code another made.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn create_enrollment_of(
        &self,
        name: &str,
        site: bool,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Code, StoreError> {
        let name = text(name).into_owned();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg_error)?;
                let code = loop {
                    let code = Code::generate();
                    let n = tx
                        .execute(
                            "INSERT INTO enrollments (code_id, secret, name, created_at_ms, expires_at_ms, site)
                             VALUES ($1, $2, $3, $4, $5, $7)
                             ON CONFLICT (code_id) DO UPDATE SET secret = excluded.secret, name = excluded.name,
                                 site = excluded.site, created_at_ms = excluded.created_at_ms,
                                 expires_at_ms = excluded.expires_at_ms, attempts = 0, used_at_ms = NULL,
                                 agent_id = NULL
                             WHERE enrollments.used_at_ms IS NOT NULL OR enrollments.expires_at_ms <= $4
                                OR enrollments.attempts >= $6",
                            &[
                                &code.id(),
                                &code.secret(),
                                &name,
                                &now_ms,
                                &(now_ms + ttl_ms),
                                &MAX_CODE_ATTEMPTS,
                                &i64::from(site),
                            ],
                        )
                        .await
                        .map_err(pg_error)?;
                    if n == 1 {
                        break code;
                    }
                };
                tx.commit().await.map_err(pg_error)?;
                Ok(code)
            })
        })
        .await
    }

    /// See [`crate::store::Db::enroll_attempt`]. The attempt is counted under the code's row
    /// lock: collectors trying the same code at once count every attempt.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn enroll_attempt(&self, code_id: &str, now_ms: i64) -> Result<Attempt, StoreError> {
        let code_id = code_id.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg_error)?;
                let row = tx
                    .query_opt(
                        "SELECT secret, name, expires_at_ms, attempts, used_at_ms FROM enrollments
                         WHERE code_id = $1 FOR UPDATE",
                        &[&code_id],
                    )
                    .await
                    .map_err(pg_error)?;
                let outcome = match row {
                    None => Attempt::Unknown,
                    Some(r) if r.get::<_, Option<i64>>(4).is_some() => Attempt::Used,
                    Some(r) if r.get::<_, i64>(2) <= now_ms => Attempt::Expired,
                    Some(r) if r.get::<_, i64>(3) >= MAX_CODE_ATTEMPTS => Attempt::TooManyAttempts,
                    Some(r) => {
                        tx.execute("UPDATE enrollments SET attempts = attempts + 1 WHERE code_id = $1", &[&code_id])
                            .await
                            .map_err(pg_error)?;
                        match Code::from_parts(&code_id, r.get(0)) {
                            Ok(code) => Attempt::Try { code, name: r.get(1) },
                            Err(_) => Attempt::Unknown,
                        }
                    }
                };
                tx.commit().await.map_err(pg_error)?;
                Ok(outcome)
            })
        })
        .await
    }

    /// See [`crate::store::Db::complete_enrollment`]. The code is marked used by a conditional
    /// update: of two collectors completing it at once, one gets the key, the other `None`.
    ///
    /// # Errors
    /// If the store fails; then nothing changed.
    pub async fn complete_enrollment(
        &self,
        code_id: &str,
        host: &str,
        now_ms: i64,
    ) -> Result<Option<EnrolledKey>, StoreError> {
        let code_id = code_id.to_owned();
        let host = text(host).into_owned();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg_error)?;
                let agent_id = new_agent_id();
                let row = tx
                    .query_opt(
                        "UPDATE enrollments SET used_at_ms = $2, agent_id = $3
                         WHERE code_id = $1 AND used_at_ms IS NULL AND expires_at_ms > $2
                         RETURNING name, site <> 0",
                        &[&code_id, &now_ms, &agent_id],
                    )
                    .await
                    .map_err(pg_error)?;
                let Some(row) = row else {
                    tx.rollback().await.map_err(pg_error)?;
                    return Ok(None);
                };
                let name: String = row.get(0);
                let site: bool = row.get(1);
                let key = SecretString::from(Key::generate());
                tx.execute(
                    "INSERT INTO enrolled (agent_id, name, host, enrolled_at_ms, key, site)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&agent_id, &name, &host, &now_ms, &key.expose_secret(), &i64::from(site)],
                )
                .await
                .map_err(pg_error)?;
                bump(&tx).await?;
                tx.commit().await.map_err(pg_error)?;
                Ok(Some(EnrolledKey { agent_id, name, key: key.expose_secret().to_owned() }))
            })
        })
        .await
    }

    /// See [`crate::store::Db::registry_version`].
    ///
    /// # Errors
    /// If the store fails.
    pub async fn registry_version(&self) -> Result<i64, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                let row =
                    c.query_one("SELECT version FROM registry_version WHERE id = 0", &[]).await.map_err(pg_error)?;
                Ok(row.get(0))
            })
        })
        .await
    }

    /// See [`crate::store::Db::enrolled_agents`]: no key material.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn enrolled_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.run(|c| Box::pin(async move { all_agents(&**c).await })).await
    }

    /// The agent whose id (or unique name) is `who`.
    async fn find_agent(&self, who: &str) -> Result<AgentRecord, RegistryError> {
        let all = self.enrolled_agents().await?;
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

    /// See [`crate::store::Db::revoke`]. Revoked twice (two collectors, two administrators), the
    /// first time stays.
    ///
    /// # Errors
    /// If there is no such agent or the store fails.
    pub async fn revoke(&self, who: &str, now_ms: i64) -> Result<AgentRecord, RegistryError> {
        let agent = self.find_agent(who).await?;
        let id = agent.agent_id.clone();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg_error)?;
                tx.execute(
                    "UPDATE enrolled SET revoked_at_ms = COALESCE(revoked_at_ms, $2), next_key = NULL
                     WHERE agent_id = $1",
                    &[&id, &now_ms],
                )
                .await
                .map_err(pg_error)?;
                bump(&tx).await?;
                tx.commit().await.map_err(pg_error)
            })
        })
        .await?;
        self.find_agent(&agent.agent_id).await
    }

    /// See [`crate::store::Db::rotate`]. The new key is set only if the agent is still not
    /// revoked and has no rotation pending when the update runs: a rotation made meanwhile by
    /// another collector (whose next key an agent may have been sent already) is never replaced.
    ///
    /// # Errors
    /// If there is no such agent, it is revoked, a rotation is already pending, or the store
    /// fails.
    pub async fn rotate(&self, who: &str, now_ms: i64) -> Result<AgentRecord, RegistryError> {
        let agent = self.find_agent(who).await?;
        let refused = |agent: AgentRecord| {
            if agent.revoked_at_ms.is_some() {
                return Some(RegistryError::Revoked(agent.agent_id));
            }
            agent
                .rotation_pending_since_ms
                .map(|since| RegistryError::RotationPending(agent.agent_id, crate::channel::when_utc(since / 1000)))
        };
        if let Some(e) = refused(agent.clone()) {
            return Err(e);
        }
        let id = agent.agent_id.clone();
        let set = self
            .run(move |c| {
                Box::pin(async move {
                    let tx = c.transaction().await.map_err(pg_error)?;
                    let next = SecretString::from(Key::generate());
                    let n = tx
                        .execute(
                            "UPDATE enrolled SET next_key = $2, rotated_at_ms = $3
                             WHERE agent_id = $1 AND revoked_at_ms IS NULL AND next_key IS NULL",
                            &[&id, &next.expose_secret(), &now_ms],
                        )
                        .await
                        .map_err(pg_error)?;
                    if n == 0 {
                        tx.rollback().await.map_err(pg_error)?;
                        return Ok(false);
                    }
                    bump(&tx).await?;
                    tx.commit().await.map_err(pg_error)?;
                    Ok(true)
                })
            })
            .await?;
        let now = self.find_agent(&agent.agent_id).await?;
        match (set, refused(now.clone())) {
            (false, Some(e)) => Err(e),
            _ => Ok(now),
        }
    }

    /// See [`crate::store::Db::promote`]. Under the agent's row lock: a collector that promotes
    /// a key another collector promoted a moment before finds no next key, and returns `false`.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn promote(&self, agent_id: &str, key_id: &str, until_ms: i64) -> Result<bool, StoreError> {
        let agent_id = agent_id.to_owned();
        let key_id = key_id.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg_error)?;
                let next = tx
                    .query_opt("SELECT next_key FROM enrolled WHERE agent_id = $1 FOR UPDATE", &[&agent_id])
                    .await
                    .map_err(pg_error)?
                    .and_then(|r| r.get::<_, Option<String>>(0))
                    .map(SecretString::from);
                let Some(next) = next else {
                    tx.rollback().await.map_err(pg_error)?;
                    return Ok(false);
                };
                if key_id_of(next.expose_secret()) != key_id {
                    tx.rollback().await.map_err(pg_error)?;
                    return Ok(false);
                }
                tx.execute(
                    "UPDATE enrolled SET prev_key = key, prev_until_ms = $2, key = next_key, next_key = NULL
                     WHERE agent_id = $1 AND next_key IS NOT NULL",
                    &[&agent_id, &until_ms],
                )
                .await
                .map_err(pg_error)?;
                bump(&tx).await?;
                tx.commit().await.map_err(pg_error)?;
                Ok(true)
            })
        })
        .await
    }

    /// See [`crate::store::Db::pending_codes`].
    ///
    /// # Errors
    /// If the store fails.
    pub async fn pending_codes(&self, now_ms: i64) -> Result<HashSet<String>, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT code_id FROM enrollments
                         WHERE used_at_ms IS NULL AND expires_at_ms > $1 AND attempts < $2",
                        &[&now_ms, &MAX_CODE_ATTEMPTS],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            })
        })
        .await
    }

    /// See [`crate::store::Db::load_registry`]. The version and the keys are read from one
    /// snapshot, so the copy is exactly that version's.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn load_registry(&self) -> Result<Registry, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                let tx = c.snapshot().await.map_err(pg_error)?;
                let version: i64 = tx
                    .query_one("SELECT version FROM registry_version WHERE id = 0", &[])
                    .await
                    .map_err(pg_error)?
                    .get(0);
                let rows = tx
                    .query(
                        "SELECT agent_id, name, host, key, prev_key, prev_until_ms, next_key, revoked_at_ms, site <> 0
                         FROM enrolled",
                        &[],
                    )
                    .await
                    .map_err(pg_error)?;
                tx.commit().await.map_err(pg_error)?;
                let mut by_key = HashMap::new();
                for r in rows {
                    let agent_id: String = r.get(0);
                    let key = SecretString::from(r.get::<_, String>(3));
                    let prev = r.get::<_, Option<String>>(4).map(SecretString::from);
                    let next = r.get::<_, Option<String>>(6).map(SecretString::from);
                    let agent = Arc::new(AgentEntry {
                        who: EnrolledAs { agent_id: agent_id.clone(), name: r.get(1), host: r.get(2) },
                        revoked: r.get::<_, Option<i64>>(7).is_some(),
                        next_key: next.clone(),
                        site: r.get(8),
                    });
                    let mut add = |text: &SecretString, slot: Slot| match Key::from_base64(text.expose_secret()) {
                        Ok(k) => {
                            by_key.insert(k.id(), Entry { agent: agent.clone(), key: k, slot });
                        }
                        Err(_) => tracing::error!(%agent_id, "a key in the registry is not valid; that key is refused"),
                    };
                    add(&key, Slot::Current);
                    if let Some(p) = &prev {
                        add(p, Slot::Previous { until_ms: r.get::<_, Option<i64>>(5).unwrap_or(0) });
                    }
                    if let Some(n) = &next {
                        add(n, Slot::Next);
                    }
                }
                Ok(Registry { version, by_key })
            })
        })
        .await
    }
}

#[cfg(all(test, unix))]
pub(super) mod tests {
    //! The SQLite registry's cases (`crate::registry`'s tests) on a real cluster, then several
    //! collectors racing the same operation.

    use std::future::Future;
    use std::time::Duration;

    use tokio_postgres::{Client, NoTls};

    use super::*;
    use crate::store::postgres::cluster::Cluster;

    /// The longest any awaited event may take before the test fails.
    const DEADLINE: Duration = Duration::from_secs(30);

    pub(crate) async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
        tokio::time::timeout(DEADLINE, f).await.unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
    }

    /// Two collectors on one cluster.
    pub(crate) async fn two(cluster: &Cluster) -> (PgStore, PgStore) {
        let a = PgStore::open(&cluster.url(), &["log"]).await.unwrap();
        let b = PgStore::open(&cluster.url(), &["log"]).await.unwrap();
        (a, b)
    }

    /// A plain connection of the test's own (to hold a lock, to look).
    pub(crate) async fn raw(cluster: &Cluster) -> Client {
        let (client, connection) = tokio_postgres::connect(&cluster.url(), NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    /// Wait until `n` sessions wait for a lock (the racers are queued behind a held row lock).
    pub(crate) async fn until_waiting(look: &Client, n: i64) {
        within("the racers queued behind the lock", async {
            loop {
                let waiting: i64 = look
                    .query_one("SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'", &[])
                    .await
                    .unwrap()
                    .get(0);
                if waiting >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// One value from `sql`, on the store's connection.
    pub(crate) async fn scalar(store: &PgStore, sql: &'static str) -> i64 {
        store.run(move |c| Box::pin(async move { Ok(c.query_one(sql, &[]).await.unwrap().get(0)) })).await.unwrap()
    }

    #[tokio::test]
    async fn a_code_works_once_within_its_time_and_attempts() {
        let Some(cluster) = Cluster::start() else { return };
        let db = PgStore::open(&cluster.url(), &["log"]).await.unwrap();
        let code = db.create_enrollment("Reception", 600_000, 1_000).await.unwrap();
        assert_eq!(
            db.enroll_attempt(code.id(), 2_000).await.unwrap(),
            Attempt::Try { code: code.clone(), name: "Reception".into() }
        );
        let k = db.complete_enrollment(code.id(), "desk-3", 3_000).await.unwrap().unwrap();
        assert_eq!(k.name, "Reception");
        assert_eq!(k.agent_id.len(), 16);
        assert!(Key::from_base64(&k.key).is_ok());
        assert_eq!(db.enroll_attempt(code.id(), 4_000).await.unwrap(), Attempt::Used);
        assert_eq!(db.complete_enrollment(code.id(), "desk-3", 4_000).await.unwrap(), None);

        let late = db.create_enrollment("Late", 600_000, 1_000).await.unwrap();
        assert_eq!(db.enroll_attempt(late.id(), 601_000).await.unwrap(), Attempt::Expired);
        assert_eq!(db.complete_enrollment(late.id(), "desk", 601_000).await.unwrap(), None);
        let burnt = db.create_enrollment("Burnt", 600_000, 1_000).await.unwrap();
        for _ in 0..MAX_CODE_ATTEMPTS {
            assert!(matches!(db.enroll_attempt(burnt.id(), 2_000).await.unwrap(), Attempt::Try { .. }));
        }
        assert_eq!(db.enroll_attempt(burnt.id(), 2_000).await.unwrap(), Attempt::TooManyAttempts);
        assert_eq!(db.enroll_attempt("ZZZZ", 2_000).await.unwrap(), Attempt::Unknown);

        let site = db.create_enrollment_of("Branch A", true, 600_000, 1_000).await.unwrap();
        let s = db.complete_enrollment(site.id(), "site-a", 2_000).await.unwrap().unwrap();
        let agents = db.enrolled_agents().await.unwrap();
        let of = |id: &str| agents.iter().find(|a| a.agent_id == id).unwrap().clone();
        assert!(of(&s.agent_id).site && !of(&k.agent_id).site);
        assert_eq!((of(&k.agent_id).host.as_str(), of(&k.agent_id).enrolled_at_ms), ("desk-3", 3_000));
        assert_eq!(of(&k.agent_id).key_id, Key::from_base64(&k.key).unwrap().id().to_string());
        assert_eq!(
            agents.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            vec!["Branch A", "Reception"],
            "ordered by name"
        );
        let registry = db.load_registry().await.unwrap();
        let entry = registry.get(Key::from_base64(&s.key).unwrap().id()).unwrap();
        assert!(entry.agent.site && entry.slot == Slot::Current);
        assert_eq!(
            entry.agent.who,
            EnrolledAs { agent_id: s.agent_id, name: "Branch A".into(), host: "site-a".into() }
        );
    }

    #[tokio::test]
    async fn pending_codes_are_those_still_usable() {
        let Some(cluster) = Cluster::start() else { return };
        let db = PgStore::open(&cluster.url(), &["log"]).await.unwrap();
        let open = db.create_enrollment("Open", 600_000, 1_000).await.unwrap();
        let used = db.create_enrollment("Used", 600_000, 1_000).await.unwrap();
        db.complete_enrollment(used.id(), "desk", 2_000).await.unwrap().unwrap();
        let burnt = db.create_enrollment("Burnt", 600_000, 1_000).await.unwrap();
        for _ in 0..MAX_CODE_ATTEMPTS {
            db.enroll_attempt(burnt.id(), 2_000).await.unwrap();
        }
        let pending = db.pending_codes(2_000).await.unwrap();
        assert!(pending.contains(open.id()));
        assert!(!pending.contains(used.id()) && !pending.contains(burnt.id()));
        assert!(db.pending_codes(601_000).await.unwrap().is_empty(), "expired codes are not pending");
    }

    #[tokio::test]
    async fn rotation_promotes_on_first_use_and_revocation_is_recorded() {
        let Some(cluster) = Cluster::start() else { return };
        let db = PgStore::open(&cluster.url(), &["log"]).await.unwrap();
        let code = db.create_enrollment("Reception", 600_000, 1_000).await.unwrap();
        let k = db.complete_enrollment(code.id(), "desk-3", 3_000).await.unwrap().unwrap();
        let key = Key::from_base64(&k.key).unwrap();
        let r = db.load_registry().await.unwrap();
        assert_eq!(r.get(key.id()).unwrap().slot, Slot::Current);
        assert_eq!(r.len(), 1);

        let rec = db.rotate("Reception", 4_000).await.unwrap();
        assert_eq!(rec.rotation_pending_since_ms, Some(4_000));
        assert!(matches!(db.rotate(&k.agent_id, 4_500).await, Err(RegistryError::RotationPending(..))));
        let r = db.load_registry().await.unwrap();
        let next = r.get(key.id()).unwrap().agent.next_key.clone().unwrap();
        let next_id = Key::from_base64(next.expose_secret()).unwrap().id();
        assert_eq!(r.get(next_id).unwrap().slot, Slot::Next);

        assert!(!db.promote(&k.agent_id, &key.id().to_string(), 9_000).await.unwrap());
        assert!(!db.promote("0000000000000000", &next_id.to_string(), 9_000).await.unwrap());
        assert!(db.promote(&k.agent_id, &next_id.to_string(), 9_000).await.unwrap());
        let r = db.load_registry().await.unwrap();
        assert_eq!(r.get(next_id).unwrap().slot, Slot::Current);
        assert_eq!(r.get(key.id()).unwrap().slot, Slot::Previous { until_ms: 9_000 });
        assert!(r.get(key.id()).unwrap().agent.next_key.is_none());
        let listed = db.enrolled_agents().await.unwrap().remove(0);
        assert_eq!((listed.previous_key_until_ms, listed.rotation_pending_since_ms), (Some(9_000), None));
        assert_eq!(listed.key_id, next_id.to_string());

        let v = db.registry_version().await.unwrap();
        let rec = db.revoke(&k.agent_id, 10_000).await.unwrap();
        assert_eq!(rec.revoked_at_ms, Some(10_000));
        assert!(db.registry_version().await.unwrap() > v);
        assert_eq!(db.revoke("Reception", 12_000).await.unwrap().revoked_at_ms, Some(10_000), "the first time stays");
        assert!(db.load_registry().await.unwrap().get(next_id).unwrap().agent.revoked);
        assert!(matches!(db.rotate(&k.agent_id, 11_000).await, Err(RegistryError::Revoked(_))));
        assert!(matches!(db.revoke("nobody", 11_000).await, Err(RegistryError::NoSuchAgent(_))));

        for host in ["desk-4", "desk-5"] {
            let c = db.create_enrollment("Twin", 600_000, 1_000).await.unwrap();
            db.complete_enrollment(c.id(), host, 2_000).await.unwrap().unwrap();
        }
        assert!(matches!(db.rotate("Twin", 11_000).await, Err(RegistryError::Ambiguous(_))));
    }

    #[tokio::test]
    async fn every_registry_change_bumps_the_version_and_tells_the_other_collectors() {
        let Some(cluster) = Cluster::start() else { return };
        let (a, b) = two(&cluster).await;
        let v0 = b.registry_version().await.unwrap();
        let code = a.create_enrollment("Reception", 600_000, 1_000).await.unwrap();
        assert_eq!(b.registry_version().await.unwrap(), v0, "a code alone is not in the registry");
        assert!(b.pending_codes(2_000).await.unwrap().contains(code.id()), "the other collector sees the code");

        let changes = b.changes();
        let changed = changes.notified();
        let k = a.complete_enrollment(code.id(), "desk-3", 3_000).await.unwrap().unwrap();
        within("the other collector told of the enrollment", changed).await;
        let v1 = b.registry_version().await.unwrap();
        assert!(v1 > v0);
        let copy = b.load_registry().await.unwrap();
        assert!(copy.get(Key::from_base64(&k.key).unwrap().id()).is_some(), "the other collector's copy has the key");

        let changed = changes.notified();
        a.rotate(&k.agent_id, 4_000).await.unwrap();
        within("the other collector told of the rotation", changed).await;
        let v2 = b.registry_version().await.unwrap();
        assert!(v2 > v1);
        let next = b.load_registry().await.unwrap();
        let next = next.get(Key::from_base64(&k.key).unwrap().id()).unwrap().agent.next_key.clone().unwrap();
        let next_id = Key::from_base64(next.expose_secret()).unwrap().id().to_string();

        let changed = changes.notified();
        assert!(b.promote(&k.agent_id, &next_id, 9_000).await.unwrap());
        within("the collector's own change is announced too", changed).await;
        let v3 = a.registry_version().await.unwrap();
        assert!(v3 > v2);

        let changed = changes.notified();
        a.revoke(&k.agent_id, 10_000).await.unwrap();
        within("the other collector told of the revocation", changed).await;
        assert!(b.registry_version().await.unwrap() > v3);
        assert!(
            b.load_registry()
                .await
                .unwrap()
                .get(Key::from_base64(next.expose_secret()).unwrap().id())
                .unwrap()
                .agent
                .revoked
        );
    }

    #[tokio::test]
    async fn a_code_completed_by_two_collectors_at_once_enrolls_one_agent() {
        let Some(cluster) = Cluster::start() else { return };
        let (a, b) = two(&cluster).await;
        let look = raw(&cluster).await;
        let mut holder = raw(&cluster).await;
        for round in 0..10 {
            let code = a.create_enrollment("Reception", 600_000, 1_000).await.unwrap();
            let v = a.registry_version().await.unwrap();
            // Both collectors' updates queue behind a lock on the code, and run when it goes.
            let hold = holder.transaction().await.unwrap();
            hold.execute("SELECT 1 FROM enrollments WHERE code_id = $1 FOR UPDATE", &[&code.id()]).await.unwrap();
            let (x, y, ()) = tokio::join!(
                a.complete_enrollment(code.id(), "desk-a", 2_000),
                b.complete_enrollment(code.id(), "desk-b", 2_000),
                async {
                    until_waiting(&look, 2).await;
                    hold.commit().await.unwrap();
                }
            );
            let keys: Vec<EnrolledKey> = [x.unwrap(), y.unwrap()].into_iter().flatten().collect();
            assert_eq!(keys.len(), 1, "round {round}: one key");
            let n: i64 = look
                .query_one("SELECT COUNT(*) FROM enrollments WHERE agent_id = $1", &[&keys[0].agent_id])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 1, "round {round}: the code names the one agent");
            assert_eq!(a.registry_version().await.unwrap(), v + 1, "round {round}: one change");
        }
        // Without a held lock too: just at once.
        for _ in 0..10 {
            let code = a.create_enrollment("Desk", 600_000, 1_000).await.unwrap();
            let (x, y) = tokio::join!(
                a.complete_enrollment(code.id(), "desk-a", 2_000),
                b.complete_enrollment(code.id(), "desk-b", 2_000)
            );
            assert_eq!([x.unwrap(), y.unwrap()].into_iter().flatten().count(), 1);
        }
        assert_eq!(a.enrolled_agents().await.unwrap().len(), 20, "one agent per code");
    }

    #[tokio::test]
    async fn attempts_at_one_code_from_two_collectors_are_all_counted() {
        let Some(cluster) = Cluster::start() else { return };
        let (a, b) = two(&cluster).await;
        let code = a.create_enrollment("Reception", 600_000, 1_000).await.unwrap();
        let mut tried = 0;
        let mut refused = 0;
        for _ in 0..MAX_CODE_ATTEMPTS {
            let (x, y) = tokio::join!(a.enroll_attempt(code.id(), 2_000), b.enroll_attempt(code.id(), 2_000));
            for outcome in [x.unwrap(), y.unwrap()] {
                match outcome {
                    Attempt::Try { .. } => tried += 1,
                    Attempt::TooManyAttempts => refused += 1,
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!((tried, refused), (MAX_CODE_ATTEMPTS, MAX_CODE_ATTEMPTS), "no attempt lost to a race");
        assert_eq!(scalar(&a, "SELECT MAX(attempts) FROM enrollments").await, MAX_CODE_ATTEMPTS);
    }

    #[tokio::test]
    async fn a_key_promoted_by_two_collectors_at_once_is_promoted_once() {
        let Some(cluster) = Cluster::start() else { return };
        let (a, b) = two(&cluster).await;
        let code = a.create_enrollment("Reception", 600_000, 1_000).await.unwrap();
        let k = a.complete_enrollment(code.id(), "desk-3", 2_000).await.unwrap().unwrap();
        // Two rotations at once: one is made, the other refused (never a second next key).
        let (x, y) = tokio::join!(a.rotate(&k.agent_id, 3_000), b.rotate(&k.agent_id, 3_000));
        let (made, pending): (Vec<_>, Vec<_>) = [x, y].into_iter().partition(Result::is_ok);
        assert_eq!(made.len(), 1);
        assert!(matches!(pending[0], Err(RegistryError::RotationPending(..))), "{:?}", pending[0]);
        let r = a.load_registry().await.unwrap();
        let next = r.get(Key::from_base64(&k.key).unwrap().id()).unwrap().agent.next_key.clone().unwrap();
        let next_id = Key::from_base64(next.expose_secret()).unwrap().id().to_string();
        let v = a.registry_version().await.unwrap();
        let (x, y) = tokio::join!(a.promote(&k.agent_id, &next_id, 9_000), b.promote(&k.agent_id, &next_id, 9_500));
        let mut got = [x.unwrap(), y.unwrap()];
        got.sort_unstable();
        assert_eq!(got, [false, true]);
        assert_eq!(a.registry_version().await.unwrap(), v + 1);
        let r = b.load_registry().await.unwrap();
        assert_eq!(r.get(Key::from_base64(next.expose_secret()).unwrap().id()).unwrap().slot, Slot::Current);
        assert!(matches!(
            r.get(Key::from_base64(&k.key).unwrap().id()).unwrap().slot,
            Slot::Previous { until_ms: 9_000 | 9_500 }
        ));
    }
}
