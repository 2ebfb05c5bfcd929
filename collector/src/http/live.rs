//! Live updates: one task waits on the store's [`Store::changes`] (notified after every commit
//! that changes an alert's response state, and when an agent falls silent or comes back) and
//! publishes a change count; each live page holds a server-sent event stream that says
//! "change" when it moves, and then fetches its list again (so every byte of agent text is
//! rendered, escaped, by the server). A storm of commits is published at most once per
//! [`MIN_GAP`]: each publication makes every live page read the store.
//!
//! [`Store::changes`]: crate::store::Store::changes

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

/// The least time between two publications.
pub const MIN_GAP: Duration = Duration::from_millis(250);

/// Publish a count of the store's changes on `changed` until `stop`.
pub async fn watch_changes(console: Arc<Console>, changed: watch::Sender<i64>, stop: CancellationToken) {
    let changes = console.store.changes();
    // A `Notified` completes on any broadcast after it was made, polled or not, without taking
    // the one permit that a change also leaves (the push task may need it): the next one is
    // made before publishing, so a commit during the gap is published at its end.
    let mut next = Box::pin(changes.notified());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = next.as_mut() => {}
        }
        next = Box::pin(changes.notified());
        changed.send_modify(|n| *n += 1);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(MIN_GAP) => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::{Db, SqliteStore, Store};

    #[tokio::test(start_paused = true)]
    async fn every_change_of_the_store_is_published_also_one_during_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n", dir.path().display().to_string());
        let config = Config::parse(&text, None).unwrap();
        let (w, _writer) = SqliteStore::start(Db::open(&config.database_path()).unwrap(), &["log"]).unwrap();
        let store = Store::sqlite(w, Some(&config.database_path()));
        let (tx, mut rx) = watch::channel(0);
        let console = Arc::new(Console::new(config, store.clone(), Arc::default(), rx.clone(), None).unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch_changes(console, tx, stop.clone()));
        tokio::task::yield_now().await;
        store.changed(false);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), 1);
        // A change during the gap after a publication: published at its end, not lost.
        store.changed(false);
        let before = tokio::time::Instant::now();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), 2);
        assert!(before.elapsed() <= MIN_GAP, "{:?}", before.elapsed());
        // Nothing changes: at most one more publication (each change also leaves one permit for
        // a listener that was busy; this task may be the one that takes it), then none: no polling.
        if tokio::time::timeout(Duration::from_secs(60), rx.changed()).await.is_ok() {
            assert_eq!(*rx.borrow_and_update(), 3);
        }
        assert!(tokio::time::timeout(Duration::from_secs(600), rx.changed()).await.is_err());
        stop.cancel();
        task.await.unwrap();
    }
}
