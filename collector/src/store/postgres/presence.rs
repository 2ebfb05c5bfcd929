//! Presence on PostgreSQL: the agents seen by heartbeat ([`crate::store::Db::record_agents`],
//! [`crate::store::Db::agents`], ported).
//!
//! Several collectors flush the heartbeats they received into the same rows (an agent fails
//! over, or sends to several): the latest sighting wins (`GREATEST`), whichever collector
//! writes last. A flush is one statement per table, whatever the number of agents (the
//! collector has one connection to the database, an SOS must not wait behind a flush), and it
//! locks its rows in one order (host, user; agent id) so that two collectors' flushes never
//! deadlock.

use std::collections::HashMap;

use super::{pg_error, text, PgStore};
use crate::store::{AgentSeen, StoreError};

impl PgStore {
    /// See [`crate::store::Db::record_agents`]: one row per (host, user), the latest sighting
    /// wins (its address and key are those of the last entry of `seen` for it). One transaction.
    ///
    /// # Errors
    /// If the transaction fails.
    pub async fn record_agents(&self, seen: &[AgentSeen]) -> Result<(), StoreError> {
        // One entry per (host, user): the last one's address and key, the latest time.
        let mut rows: HashMap<(String, String), (String, String, String, i64)> = HashMap::new();
        // One entry per enrolled agent: the latest time, and the latest as a responder.
        let mut enrolled: HashMap<String, (i64, Option<i64>)> = HashMap::new();
        for a in seen {
            let key = (text(&a.host).into_owned(), text(&a.user).into_owned());
            let at = rows.get(&key).map_or(a.last_seen_ms, |r| r.3.max(a.last_seen_ms));
            rows.insert(
                key,
                (text(&a.ip).into_owned(), text(&a.source).into_owned(), text(&a.key_id).into_owned(), at),
            );
            if let Some(id) = &a.agent_id {
                let e = enrolled.entry(text(id).into_owned()).or_insert((a.last_seen_ms, None));
                e.0 = e.0.max(a.last_seen_ms);
                if a.responder {
                    e.1 = Some(e.1.map_or(a.last_seen_ms, |t| t.max(a.last_seen_ms)));
                }
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let mut rows: Vec<_> = rows.into_iter().collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let mut enrolled: Vec<_> = enrolled.into_iter().collect();
        enrolled.sort();
        let mut columns: [Vec<String>; 5] = Default::default();
        let mut times = Vec::with_capacity(rows.len());
        for ((host, user), (ip, source, key_id, at)) in rows {
            for (column, value) in columns.iter_mut().zip([host, user, ip, source, key_id]) {
                column.push(value);
            }
            times.push(at);
        }
        let ids: Vec<String> = enrolled.iter().map(|(id, _)| id.clone()).collect();
        let last: Vec<i64> = enrolled.iter().map(|(_, (t, _))| *t).collect();
        let responder: Vec<Option<i64>> = enrolled.iter().map(|(_, (_, r))| *r).collect();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(pg_error)?;
                let [hosts, users, ips, sources, key_ids] = &columns;
                // Inserted (and so locked) in the order of the arrays: sorted by (host, user).
                tx.execute(
                    "INSERT INTO agents (host, \"user\", ip, source, key_id, last_seen_ms)
                     SELECT host, u, ip, source, key_id, at
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[])
                          WITH ORDINALITY AS s (host, u, ip, source, key_id, at, n)
                     ORDER BY n
                     ON CONFLICT (host, \"user\") DO UPDATE SET ip = excluded.ip, source = excluded.source,
                         key_id = excluded.key_id,
                         last_seen_ms = GREATEST(agents.last_seen_ms, excluded.last_seen_ms)",
                    &[hosts, users, ips, sources, key_ids, &times],
                )
                .await
                .map_err(pg_error)?;
                if !ids.is_empty() {
                    // Lock the enrolled agents in id order first: the update's join has no order.
                    tx.execute(
                        "SELECT 1 FROM enrolled WHERE agent_id = ANY($1::text[])
                         ORDER BY agent_id COLLATE \"C\" FOR UPDATE",
                        &[&ids],
                    )
                    .await
                    .map_err(pg_error)?;
                    tx.execute(
                        "UPDATE enrolled e SET last_seen_ms = GREATEST(COALESCE(e.last_seen_ms, 0), s.at),
                             responder_seen_ms = CASE WHEN s.responder IS NULL THEN e.responder_seen_ms
                                 ELSE GREATEST(COALESCE(e.responder_seen_ms, 0), s.responder) END
                         FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS s (agent_id, at, responder)
                         WHERE e.agent_id = s.agent_id",
                        &[&ids, &last, &responder],
                    )
                    .await
                    .map_err(pg_error)?;
                }
                tx.commit().await.map_err(pg_error)
            })
        })
        .await
    }

    /// See [`crate::store::Db::agents`]: every agent that has sent a heartbeat, least recently
    /// seen first.
    ///
    /// # Errors
    /// If the query fails.
    pub async fn agents(&self) -> Result<Vec<AgentSeen>, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT host, \"user\", ip, source, key_id, last_seen_ms FROM agents
                         ORDER BY last_seen_ms, host COLLATE \"C\", \"user\" COLLATE \"C\"",
                        &[],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(rows
                    .iter()
                    .map(|r| AgentSeen {
                        host: r.get(0),
                        user: r.get(1),
                        ip: r.get(2),
                        source: r.get(3),
                        key_id: r.get(4),
                        last_seen_ms: r.get(5),
                        agent_id: None,
                        responder: false,
                    })
                    .collect())
            })
        })
        .await
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::store::postgres::cluster::Cluster;
    use crate::store::postgres::registry::tests::{scalar, two};

    fn seen(host: &str, user: &str, at: i64) -> AgentSeen {
        AgentSeen {
            host: host.into(),
            user: user.into(),
            ip: "10.0.0.1".into(),
            source: "10.0.0.1:4000".into(),
            key_id: "00".into(),
            agent_id: None,
            last_seen_ms: at,
            responder: false,
        }
    }

    #[tokio::test]
    async fn heartbeats_keep_the_latest_sighting_per_agent() {
        let Some(cluster) = Cluster::start() else { return };
        let db = PgStore::open(&cluster.url(), &["log"]).await.unwrap();
        db.record_agents(&[]).await.unwrap();
        let mut moved = seen("desk", "alice", 25);
        moved.ip = "10.0.0.9".into();
        db.record_agents(&[seen("desk", "alice", 10), seen("desk", "bob", 20), seen("desk", "alice", 30), moved])
            .await
            .unwrap();
        let agents = db.agents().await.unwrap();
        assert_eq!(
            agents.iter().map(|a| (a.user.as_str(), a.last_seen_ms)).collect::<Vec<_>>(),
            vec![("bob", 20), ("alice", 30)]
        );
        assert_eq!(agents[1].ip, "10.0.0.9", "the address of the last heartbeat written, as SQLite");
        // An older sighting flushed later does not turn the clock back.
        db.record_agents(&[seen("desk", "bob", 5)]).await.unwrap();
        assert_eq!(db.agents().await.unwrap()[0].last_seen_ms, 20);
        // A NUL in what an agent sent is stored, not refused at every flush.
        db.record_agents(&[seen("desk\0", "carol", 40)]).await.unwrap();
        assert_eq!(db.agents().await.unwrap()[2].host, "desk\u{fffd}");
    }

    #[tokio::test]
    async fn an_enrolled_agent_s_heartbeats_mark_it_seen_and_a_responder_s_too() {
        let Some(cluster) = Cluster::start() else { return };
        let db = PgStore::open(&cluster.url(), &["log"]).await.unwrap();
        let code = db.create_enrollment("Reception", 600_000, 1_000).await.unwrap();
        let k = db.complete_enrollment(code.id(), "desk-3", 2_000).await.unwrap().unwrap();
        let mut hb = seen("desk-3", "alice", 5_000);
        hb.agent_id = Some(k.agent_id.clone());
        let mut older = hb.clone();
        older.last_seen_ms = 4_000;
        older.responder = true;
        db.record_agents(&[hb.clone(), older]).await.unwrap();
        assert_eq!(db.enrolled_agents().await.unwrap()[0].last_seen_ms, Some(5_000));
        assert_eq!(scalar(&db, "SELECT responder_seen_ms FROM enrolled").await, 4_000);
        hb.last_seen_ms = 3_000;
        hb.responder = true;
        db.record_agents(&[hb]).await.unwrap();
        assert_eq!(db.enrolled_agents().await.unwrap()[0].last_seen_ms, Some(5_000), "never back in time");
        assert_eq!(scalar(&db, "SELECT responder_seen_ms FROM enrolled").await, 4_000);
    }

    #[tokio::test]
    async fn heartbeats_flushed_by_two_collectors_at_once_keep_the_latest_and_never_deadlock() {
        let Some(cluster) = Cluster::start() else { return };
        let (a, b) = two(&cluster).await;
        let mut enrolled = Vec::new();
        for n in 0..20 {
            let code = a.create_enrollment(&format!("desk-{n}"), 600_000, 1_000).await.unwrap();
            enrolled
                .push(a.complete_enrollment(code.id(), &format!("desk-{n}"), 2_000).await.unwrap().unwrap().agent_id);
        }
        // 200 agents; one collector flushes them in one order with even times, the other in the
        // reverse order with odd times, twenty times over.
        let batch = |round: i64, odd: bool| {
            let mut all: Vec<AgentSeen> = (0..200)
                .map(|n| {
                    let mut s = seen(&format!("desk-{n}"), "alice", round * 2 + i64::from(odd));
                    s.agent_id = enrolled.get(n).cloned();
                    s.responder = odd;
                    s
                })
                .collect();
            if odd {
                all.reverse();
            }
            all
        };
        for round in 0..20 {
            let (even, odd) = (batch(round, false), batch(round, true));
            let (x, y) = tokio::join!(a.record_agents(&even), b.record_agents(&odd));
            x.unwrap();
            y.unwrap();
        }
        let agents = b.agents().await.unwrap();
        assert_eq!(agents.len(), 200);
        assert!(agents.iter().all(|s| s.last_seen_ms == 39), "the latest sighting of each, whoever wrote last");
        assert!(a.enrolled_agents().await.unwrap().iter().all(|e| e.last_seen_ms == Some(39)));
        assert_eq!(scalar(&a, "SELECT MIN(responder_seen_ms) FROM enrolled").await, 39);
    }
}
