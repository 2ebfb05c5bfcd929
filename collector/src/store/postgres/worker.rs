//! What an outbox worker on PostgreSQL needs beyond the claim: letting go of jobs it claimed
//! but will not attempt now, and waking every worker of this collector.

use super::{pg_error, PgStore};
use crate::store::{Lease, StoreError};

impl PgStore {
    /// End the lease on jobs `ids` claimed under `lease` that the worker will not attempt now
    /// (they did not fit in its next message), so that any collector may claim them at once
    /// instead of after the lease. Jobs whose lease was lost meanwhile are left alone.
    ///
    /// # Errors
    /// If the update failed (the lease then runs out by itself).
    pub async fn release(&self, lease: Lease, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.to_vec();
        self.run(move |c| {
            Box::pin(async move {
                c.execute(
                    "UPDATE outbox SET lease_id = NULL, lease_until = NULL
                     WHERE id = ANY($1) AND lease_id = $2 AND state = 'pending'",
                    &[&ids, &lease.0],
                )
                .await
                .map_err(pg_error)?;
                Ok(())
            })
        })
        .await
    }

    /// Wake every outbox worker of this collector (jobs were queued by an operation it made).
    pub fn wake_channels(&self) {
        for (_, n) in self.inner.wakers.iter() {
            n.notify_one();
        }
    }
}

/// What the service learnt of the database at start ([`PgStore::prepare_service`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerClock {
    /// How far the database's clock is ahead of this host's wall clock, ms (negative: behind).
    pub ahead_ms: i64,
}

/// Beyond this difference between this host's clock and the database's, the log says so.
pub const CLOCK_WARNING_MS: i64 = 2_000;

impl PgStore {
    /// Check what the service needs of the database, then put this process's outbox clock on
    /// the database's clock ([`crate::store::outbox_clock_ms`]): every collector on it then
    /// dates and fires the shared deadlines on one clock.
    ///
    /// # Errors
    /// If the database's encoding is not UTF8 (text an SOS may carry, and the collector's own
    /// "–" and "—", would be refused for ever), or it cannot be reached.
    pub async fn prepare_service(&self) -> Result<ServerClock, StoreError> {
        let (encoding, before, db_now, after) = self
            .run(|c| {
                Box::pin(async move {
                    let encoding: String = c.query_one("SHOW server_encoding", &[]).await.map_err(pg_error)?.get(0);
                    let before = crate::store::outbox_clock_base();
                    let db_now: i64 = c
                        .query_one("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint", &[])
                        .await
                        .map_err(pg_error)?
                        .get(0);
                    Ok((encoding, before, db_now, crate::store::outbox_clock_base()))
                })
            })
            .await?;
        if !encoding.eq_ignore_ascii_case("UTF8") {
            return Err(StoreError::Postgres(format!(
                "the database's encoding is {encoding}; SOS needs UTF8 (create it with `createdb --encoding UTF8 \
                 --template template0`)"
            )));
        }
        let wall = crate::store::now_ms();
        crate::store::align_outbox_clock(db_now, before, after);
        Ok(ServerClock { ahead_ms: db_now - wall + (after - before) / 2 })
    }
}

#[cfg(all(test, unix))]
mod tests {
    use crate::store::postgres::cluster::Cluster;
    use crate::store::tests::alert;
    use crate::store::{outbox_clock_ms, PgStore};

    #[tokio::test]
    async fn a_server_that_refuses_writes_is_failing_until_a_write_succeeds() {
        let Some(cluster) = Cluster::start() else { return };
        let store = PgStore::open(&cluster.url(), &["slack"]).await.unwrap();
        let session = |sql: &'static str| {
            store.run(move |c| Box::pin(async move { c.batch_execute(sql).await.map_err(super::pg_error) }))
        };
        // As a hot standby would: reads work, writes are refused.
        session("SET default_transaction_read_only = on").await.unwrap();
        let refused = store.insert(alert(1)).await;
        assert!(refused.is_err(), "not acknowledged: {refused:?}");
        assert!(store.is_failing(), "failing at once: heartbeats unanswered, /readyz not ready");
        assert!(store.recent_alerts(10).await.is_ok(), "reads still work");
        assert!(store.is_failing(), "a read does not clear it");
        session("SET default_transaction_read_only = off").await.unwrap();
        store.probe_write(1).await.unwrap();
        store.note_write_ok();
        assert!(!store.is_failing(), "a write succeeded");
        assert_eq!(store.insert(alert(1)).await.unwrap(), crate::store::Stored::New);
    }

    #[tokio::test]
    async fn released_jobs_are_claimed_again_at_once_and_a_stale_release_does_nothing() {
        let Some(cluster) = Cluster::start() else { return };
        let a = PgStore::open(&cluster.url(), &["slack"]).await.unwrap();
        let b = PgStore::open(&cluster.url(), &["slack"]).await.unwrap();
        for id in 1..=3 {
            a.insert(alert(id)).await.unwrap();
        }
        let now = outbox_clock_ms();
        let held = a.claim("slack", now, 10).await.unwrap();
        assert_eq!(held.jobs.len(), 3);
        assert!(b.claim("slack", now, 10).await.unwrap().jobs.is_empty(), "all leased");
        // A's next message takes one alert; it lets the other two go.
        let rest: Vec<i64> = held.jobs[1..].iter().map(|j| j.id).collect();
        a.release(held.lease, &rest).await.unwrap();
        let taken = b.claim("slack", now, 10).await.unwrap();
        let mut got: Vec<i64> = taken.jobs.iter().map(|j| j.id).collect();
        got.sort_unstable();
        assert_eq!(got, rest, "claimed again at once, by anyone");
        // A late release under the old lease does not free what B now holds.
        a.release(held.lease, &rest).await.unwrap();
        assert!(a.claim("slack", now, 10).await.unwrap().jobs.is_empty());
    }
}
