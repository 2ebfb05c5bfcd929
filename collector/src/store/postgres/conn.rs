//! The collector's connection with its prepared statements.
//!
//! `tokio_postgres` prepares a statement given as text every time it runs it: a round trip to
//! parse and describe it, then one to bind and execute it, for every statement of every SOS
//! (about a dozen each) on the one connection. [`Conn`] keeps each statement it has prepared, by
//! its text, for as long as the connection lives (a connection made again starts empty), so each
//! runs in one round trip. The session plans every execution with its values, as an unprepared
//! statement is (`plan_cache_mode = force_custom_plan`, set by `connect`): the plans stay those
//! the outbox's queries were written and tested for, never a generic plan chosen after a few runs.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error, GenericClient, IsolationLevel, Row, Statement, Transaction};

/// The most statements kept; past it the cache starts over (statements whose text carries a
/// value, such as a list's length, are not repeated forever).
const MAX_STATEMENTS: usize = 256;

/// Statements prepared on one connection, by their text.
#[derive(Debug, Default)]
struct Statements(Mutex<HashMap<String, Statement>>);

impl Statements {
    /// `sql` prepared on `c` (this connection, or a transaction on it): kept from before, or
    /// prepared now and kept.
    async fn get(&self, c: &impl GenericClient, sql: &str) -> Result<Statement, Error> {
        if let Some(s) = self.lock().get(sql) {
            return Ok(s.clone());
        }
        let s = c.prepare(sql).await?;
        let mut map = self.lock();
        if map.len() >= MAX_STATEMENTS {
            map.clear();
        }
        map.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    /// Forget `sql`'s statement after it failed with `e`: prepared again next time. A schema
    /// changed by another collector (a column's type: "cached plan must not change result
    /// type", 0A000) or a statement gone (26000) makes every kept statement suspect: all are
    /// forgotten, or an operation with several would fail once for each, each time an SOS
    /// not acknowledged (found by review).
    fn forget(&self, sql: &str, e: &Error) {
        let stale = e.code().is_some_and(|c| matches!(c.code(), "0A000" | "26000"));
        let mut map = self.lock();
        if stale {
            map.clear();
        } else {
            map.remove(sql);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Statement>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The statements of [`Conn`] and [`Tx`] (run on their field `$on`), each with its prepared
/// statement.
macro_rules! prepared_queries {
    ($on:ident) => {
        /// `sql` prepared (or kept), run by `run`; forgotten if that fails.
        async fn prepared<R, F: std::future::Future<Output = Result<R, Error>>>(
            &self,
            sql: &str,
            run: impl FnOnce(Statement) -> F,
        ) -> Result<R, Error> {
            let s = self.statements.get(&self.$on, sql).await?;
            let r = run(s).await;
            if let Err(e) = &r {
                self.statements.forget(sql, e);
            }
            r
        }

        pub(crate) async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
            self.prepared(sql, |s| async move { self.$on.execute(&s, params).await }).await
        }

        pub(crate) async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
            self.prepared(sql, |s| async move { self.$on.query(&s, params).await }).await
        }

        pub(crate) async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
            self.prepared(sql, |s| async move { self.$on.query_one(&s, params).await }).await
        }

        pub(crate) async fn query_opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, Error> {
            self.prepared(sql, |s| async move { self.$on.query_opt(&s, params).await }).await
        }
    };
}

/// The one connection of a collector to PostgreSQL, with the statements prepared on it. Derefs
/// to the client for what is not a statement (`batch_execute`, a transaction of another
/// isolation level).
#[derive(Debug)]
pub(crate) struct Conn {
    client: Client,
    statements: Statements,
}

impl Conn {
    pub(crate) fn new(client: Client) -> Conn {
        Conn { client, statements: Statements::default() }
    }

    /// A transaction whose statements are prepared once per connection.
    pub(crate) async fn transaction(&mut self) -> Result<Tx<'_>, Error> {
        let tx = self.client.transaction().await?;
        Ok(Tx { tx, statements: &self.statements })
    }

    /// A read-only transaction on one snapshot (repeatable read), as [`Conn::transaction`].
    pub(crate) async fn snapshot(&mut self) -> Result<Tx<'_>, Error> {
        let tx = self
            .client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        Ok(Tx { tx, statements: &self.statements })
    }

    prepared_queries!(client);
}

impl Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// A transaction on a [`Conn`].
pub(crate) struct Tx<'a> {
    tx: Transaction<'a>,
    statements: &'a Statements,
}

impl Tx<'_> {
    prepared_queries!(tx);

    pub(crate) async fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        self.tx.batch_execute(sql).await
    }

    pub(crate) async fn commit(self) -> Result<(), Error> {
        self.tx.commit().await
    }

    pub(crate) async fn rollback(self) -> Result<(), Error> {
        self.tx.rollback().await
    }
}
