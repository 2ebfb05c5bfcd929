//! Keys every collector on the database must share: the key that signs acknowledge links
//! (`links.rs`), so that a link a message from one collector carries works on every
//! collector's console. On SQLite it is a file in `data_dir`; here the first collector that
//! needs it makes it and the others read it (one row per key, made once: `ON CONFLICT DO
//! NOTHING`). The database already holds every enrolled agent's key: whoever can read it can
//! read this one too, and no one else.

use super::{pg_error, PgStore};
use crate::store::StoreError;

impl PgStore {
    /// The shared key called `name`: `fresh` if no collector made it before, else theirs.
    ///
    /// # Errors
    /// If the database cannot be reached, or the stored key is not 32 bytes.
    pub async fn shared_key(&self, name: &str, fresh: [u8; 32]) -> Result<[u8; 32], StoreError> {
        let name = name.to_owned();
        let stored: Vec<u8> = self
            .run(move |c| {
                Box::pin(async move {
                    c.execute(
                        "INSERT INTO shared_keys (name, key) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                        &[&name, &fresh.as_slice()],
                    )
                    .await
                    .map_err(pg_error)?;
                    let row =
                        c.query_one("SELECT key FROM shared_keys WHERE name = $1", &[&name]).await.map_err(pg_error)?;
                    Ok(row.get(0))
                })
            })
            .await?;
        stored.try_into().map_err(|_| StoreError::Postgres("a shared key in the database is not 32 bytes".into()))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use crate::store::postgres::cluster::Cluster;
    use crate::store::PgStore;

    #[tokio::test]
    async fn the_first_collector_makes_the_key_and_every_other_reads_it() {
        let Some(cluster) = Cluster::start() else { return };
        let a = PgStore::open(&cluster.url(), &["log"]).await.unwrap();
        let b = PgStore::open(&cluster.url(), &["log"]).await.unwrap();
        let (ka, kb) = tokio::join!(a.shared_key("ack-link", [1; 32]), b.shared_key("ack-link", [2; 32]));
        let (ka, kb) = (ka.unwrap(), kb.unwrap());
        assert_eq!(ka, kb, "one key for all");
        assert!(ka == [1; 32] || ka == [2; 32]);
        assert_eq!(a.shared_key("ack-link", [3; 32]).await.unwrap(), ka, "made once");
        assert_ne!(a.shared_key("other", [4; 32]).await.unwrap(), ka);
    }
}
