//! The web console, /metrics, /healthz and /readyz, served over HTTP(S) by axum on the
//! collector's runtime.
//!
//! - `settings.rs`: `[http]`. `server.rs`: the accept loop (TLS, a cap on connections, timeouts
//!   against slow clients) and the security headers every response carries.
//! - `auth.rs`: accounts (argon2id), sessions in memory, the CSRF check of every POST, login
//!   rate limits.
//! - `pages.rs`: the pages (live alerts, an alert, agents, history) and their actions;
//!   `ack.rs`: `/ack/{token}`, where a channel's acknowledge link leads;
//!   `live.rs`: the server-sent events that tell live pages to refresh; `export.rs`: the
//!   history as CSV and JSON, streamed; `metrics.rs`: /metrics and the health endpoints.
//!
//! Every field an agent sends is untrusted: templates escape everything (askama), pages carry a
//! CSP without inline script or style, and CSV cells that a spreadsheet would read as a formula
//! are neutralised.

use std::sync::Arc;

use tokio::sync::{watch, Semaphore};

use crate::config::Config;
use crate::stats::Stats;
use crate::store::{Store, StoreError};

mod ack;
mod auth;
mod export;
mod live;
mod metrics;
mod pages;
mod server;
mod settings;

pub use auth::{hash_password, invitation_token, token_hash, MIN_PASSWORD_LEN};
pub use server::{serve, tls_acceptor};
pub use settings::{HttpSettings, RawHttp};

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listening socket could not be bound.
    #[error("cannot listen for the console on {addr}: {source}")]
    Bind {
        /// The address of `[http] listen`.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate or key could not be read or used.
    #[error("[http] TLS: {0}")]
    Tls(String),
    /// The store could not be opened for reading.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A console account's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sees alerts and agents, acknowledges and resolves.
    Responder,
    /// Also makes enrollment codes, revokes and rotates agents' keys.
    Admin,
}

/// The accounts the configuration allows: `[http] admins` (administrators) and every configured
/// responder. A name that is not here cannot log in, whatever the store holds.
pub fn accounts(config: &Config) -> Vec<(String, Role)> {
    let admins: &[String] = config.http.as_ref().map_or(&[], |h| &h.admins);
    let mut out: Vec<(String, Role)> = admins.iter().map(|a| (a.clone(), Role::Admin)).collect();
    for r in &config.responders {
        if !admins.contains(&r.name) {
            out.push((r.name.clone(), Role::Responder));
        }
    }
    out
}

/// What every request handler shares.
#[derive(Debug)]
pub struct Console {
    /// `[http]`.
    settings: HttpSettings,
    /// The whole configuration (channels, silence threshold, accounts).
    config: Config,
    /// The store.
    store: Store,
    /// The collector's counters.
    stats: Arc<Stats>,
    /// Logged-in sessions, login limits.
    auth: auth::Auth,
    /// Changes when an alert arrives or changes: live pages refresh on it.
    live: watch::Receiver<i64>,
    /// Permits for live pages' event streams: a bounded number at once.
    live_clients: Arc<Semaphore>,
    /// /metrics.
    metrics: metrics::Metrics,
    /// /readyz's last store probe: one at a time, its answer kept for a second.
    readiness: metrics::Readiness,
    /// Acknowledge links (`/ack/{token}`); `None` without `[http] public_url`.
    links: Option<crate::links::AckLinks>,
}

impl Console {
    /// A console over `store`; `live` is the change counter that
    /// [`live::watch_changes`] feeds.
    ///
    /// # Errors
    /// If the store cannot be opened for reading.
    fn new(
        config: Config,
        store: Store,
        stats: Arc<Stats>,
        live: watch::Receiver<i64>,
        links: Option<crate::links::AckLinks>,
    ) -> Result<Self, HttpError> {
        let settings = config.http.clone().ok_or_else(|| HttpError::Tls("no [http] section".into()))?;
        Ok(Console {
            live_clients: Arc::new(Semaphore::new(settings.max_live_clients)),
            auth: auth::Auth::new(accounts(&config)),
            settings,
            config,
            store,
            stats,
            live,
            metrics: metrics::Metrics::default(),
            readiness: metrics::Readiness::default(),
            links,
        })
    }
}

/// Start the console: bind `[http] listen`, set up TLS if configured, and return the task that
/// serves until `stop` is cancelled. `links` (the same as the channels') verifies the
/// acknowledge links of `/ack/{token}`.
///
/// # Errors
/// If the address cannot be bound, the certificate or key cannot be used, or the store cannot
/// be read.
pub async fn start(
    config: &Config,
    store: Store,
    stats: Arc<Stats>,
    links: Option<crate::links::AckLinks>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), HttpError> {
    let settings = config.http.clone().ok_or_else(|| HttpError::Tls("no [http] section".into()))?;
    let tls = settings.tls.as_ref().map(|(c, k)| tls_acceptor(c, k)).transpose()?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| HttpError::Bind { addr: settings.listen, source })?;
    let addr = listener.local_addr().map_err(|source| HttpError::Bind { addr: settings.listen, source })?;
    let (changed, live) = watch::channel(0);
    let console = Arc::new(Console::new(config.clone(), store, stats, live, links)?);
    let watcher = tokio::spawn(live::watch_changes(console.clone(), changed, stop.clone()));
    let app = pages::router(console.clone());
    let max = settings.max_connections;
    let task = tokio::spawn(async move {
        serve(listener, tls, app, max, stop).await;
        watcher.abort();
    });
    let scheme = if settings.tls.is_some() { "https" } else { "http" };
    tracing::info!(url = %format!("{scheme}://{addr}"), "console listening");
    Ok((addr, task))
}
