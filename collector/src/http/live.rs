//! Live updates: one task reads the store's change counter every second and publishes it; each
//! live page holds a server-sent event stream that says "change" when it moves, and then
//! fetches its list again (so every byte of agent text is rendered, escaped, by the server).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse as _, Response};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::auth::Viewer;
use super::Console;

/// How often the change counter is read.
const POLL: Duration = Duration::from_secs(1);

/// Publish the store's change counter on `changed` until `stop`.
pub async fn watch_changes(console: Arc<Console>, changed: watch::Sender<i64>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match console.read(|db| db.console_version()).await {
            Ok(v) => {
                changed.send_if_modified(|old| std::mem::replace(old, v) != v);
            }
            Err(e) => tracing::debug!(error = %e, "console: cannot read the change counter"),
        }
    }
}

/// `GET /events`: a stream of `change` events; 503 when [`HttpSettings::max_live_clients`]
/// streams are open already.
///
/// [`HttpSettings::max_live_clients`]: super::HttpSettings::max_live_clients
pub async fn events(State(console): State<Arc<Console>>, _viewer: Viewer) -> Response {
    let Ok(permit) = console.live_clients.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many live pages open\n").into_response();
    };
    let mut rx = console.live.clone();
    rx.mark_changed();
    let stream = futures_util::stream::unfold((rx, permit), |(mut rx, permit)| async move {
        rx.changed().await.ok()?;
        let v = *rx.borrow_and_update();
        Some((Ok::<_, Infallible>(Event::default().event("change").data(v.to_string())), (rx, permit)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}
