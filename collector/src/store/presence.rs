//! Presence: the agents seen by heartbeat.

use rusqlite::params;

use super::{AgentSeen, Db, StoreError};

impl Db {
    /// Record heartbeats: one row per (host, user), the latest wins. One transaction.
    ///
    /// # Errors
    /// If the transaction fails.
    pub fn record_agents(&mut self, seen: &[AgentSeen]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO agents (host, user, ip, source, key_id, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (host, user) DO UPDATE SET ip = excluded.ip, source = excluded.source,
                     key_id = excluded.key_id, last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms)",
            )?;
            let mut enrolled = tx.prepare_cached(
                "UPDATE enrolled SET last_seen_ms = MAX(COALESCE(last_seen_ms, 0), ?2),
                     responder_seen_ms = CASE WHEN ?3 THEN MAX(COALESCE(responder_seen_ms, 0), ?2)
                                              ELSE responder_seen_ms END
                 WHERE agent_id = ?1",
            )?;
            for a in seen {
                upsert.execute(params![a.host, a.user, a.ip, a.source, a.key_id, a.last_seen_ms])?;
                if let Some(id) = &a.agent_id {
                    enrolled.execute(params![id, a.last_seen_ms, a.responder])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every agent that has sent a heartbeat, least recently seen first.
    ///
    /// # Errors
    /// If the query fails.
    pub fn agents(&self) -> Result<Vec<AgentSeen>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT host, user, ip, source, key_id, last_seen_ms FROM agents ORDER BY last_seen_ms, host, user",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(AgentSeen {
                host: r.get(0)?,
                user: r.get(1)?,
                ip: r.get(2)?,
                source: r.get(3)?,
                key_id: r.get(4)?,
                last_seen_ms: r.get(5)?,
                agent_id: None,
                responder: false,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
