//! `/metrics` (Prometheus text, OpenMetrics flavour, from prometheus-client), `/healthz` and
//! `/readyz`.
//!
//! One registry per console. Counters the collector keeps anyway ([`crate::stats::Stats`]) and
//! counts read from the store are copied into the registry's metrics at each scrape.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse as _, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Console;
use crate::store::console::STATES;

type Labels = Vec<(&'static str, String)>;

/// The console's registry and the metrics in it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    alerts: Family<Labels, Gauge>,
    notifications: Family<Labels, Gauge>,
    received: Counter,
    refused: Family<Labels, Counter>,
    stored: Counter,
    retransmissions: Counter,
    store_errors: Counter,
    agents: Family<Labels, Gauge>,
    store_up: Gauge,
    build: Family<Labels, Gauge>,
    /// Console logins by result (`ok`, `wrong`, `limited`).
    pub logins: Family<Labels, Counter>,
    /// POSTs refused for a missing or wrong CSRF token.
    pub csrf_refused: Counter,
    /// Content-Security-Policy violations browsers reported.
    pub csp_violations: Counter,
    /// Requests to acknowledge links by result (`acknowledged`, `used`, `already`, `closed`,
    /// `malformed`, `forged`, `expired`, `limited`, `off`).
    pub ack_links: Family<Labels, Counter>,
    time_to_ack: Histogram,
    /// The time of the last acknowledgement observed in `time_to_ack`.
    acks_seen_until: std::sync::Mutex<i64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            alerts: Family::default(),
            notifications: Family::default(),
            received: Counter::default(),
            refused: Family::default(),
            stored: Counter::default(),
            retransmissions: Counter::default(),
            store_errors: Counter::default(),
            agents: Family::default(),
            store_up: Gauge::default(),
            build: Family::default(),
            logins: Family::default(),
            csrf_refused: Counter::default(),
            csp_violations: Counter::default(),
            ack_links: Family::default(),
            time_to_ack: Histogram::new([5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0]),
            acks_seen_until: std::sync::Mutex::new(0),
        };
        let r = &mut m.registry;
        r.register("sos_alerts", "Alerts in the store by type (emergency, drill) and state", m.alerts.clone());
        r.register(
            "sos_notifications",
            "Notifications in the outbox by channel and result (pending, delivered, failed)",
            m.notifications.clone(),
        );
        r.register("sos_datagrams_received", "Datagrams read from the UDP socket", m.received.clone());
        r.register("sos_datagrams_refused", "Datagrams dropped without an answer, by reason", m.refused.clone());
        r.register("sos_alerts_stored", "SOS stored for the first time", m.stored.clone());
        r.register("sos_alert_retransmissions", "SOS retransmissions recognised as stored", m.retransmissions.clone());
        r.register("sos_store_errors", "SOS not acknowledged because the store failed", m.store_errors.clone());
        r.register("sos_agents", "Enrolled agents by state (online, silent, never_seen, revoked)", m.agents.clone());
        r.register(
            "sos_store_up",
            "1 while the store takes writes (the /readyz probe), 0 while it fails",
            m.store_up.clone(),
        );
        r.register("sos_build_info", "The collector's version", m.build.clone());
        r.register("sos_console_logins", "Console logins by result (ok, wrong, limited)", m.logins.clone());
        r.register(
            "sos_console_csrf_refused",
            "Console requests refused for a missing or wrong CSRF token",
            m.csrf_refused.clone(),
        );
        r.register(
            "sos_console_csp_violations",
            "Content-Security-Policy violations reported by browsers",
            m.csp_violations.clone(),
        );
        r.register(
            "sos_console_ack_links",
            "Acknowledge link requests by result (acknowledged, used, already, closed, malformed, forged, expired, limited)",
            m.ack_links.clone(),
        );
        r.register(
            "sos_time_to_acknowledge_seconds",
            "From an alert's receipt to its acknowledgement by a responder",
            m.time_to_ack.clone(),
        );
        m.build.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_owned())]).set(1);
        m
    }
}

fn set(c: &Counter, v: u64) {
    c.inner().store(v, Relaxed);
}

/// `GET /metrics`.
pub async fn metrics(State(console): State<Arc<Console>>) -> Response {
    let silent_after = console.config.agent_silent_after.as_millis() as i64;
    let store = &console.store;
    let read = async {
        Ok::<_, crate::store::StoreError>((
            store.alert_counts().await?,
            store.notification_counts().await?,
            store.enrolled_agents().await?,
            store.silent_agents().await?,
        ))
    }
    .await;
    let m = &console.metrics;
    // Every acknowledgement in the store is observed once, by this console.
    let since = *m.acks_seen_until.lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(acks) = console.store.acknowledgements_after(since, 100_000).await {
        let mut seen = m.acks_seen_until.lock().unwrap_or_else(|e| e.into_inner());
        for (at, ms) in acks {
            if at > *seen {
                m.time_to_ack.observe(ms.max(0) as f64 / 1000.0);
                *seen = at;
            }
        }
    }
    let s = console.stats.snapshot();
    set(&m.received, s.received);
    set(&m.stored, s.sos_stored);
    set(&m.retransmissions, s.sos_duplicate);
    set(&m.store_errors, s.store_errors);
    for (reason, v) in [
        ("malformed", s.malformed),
        ("unauthenticated", s.unauthenticated),
        ("expired", s.expired),
        ("from_future", s.from_future),
        ("unexpected", s.unexpected),
        ("cancel_unknown", s.cancel_unknown),
        ("rate_limited_source", s.rate_limited_source),
        ("rate_limited_agent", s.rate_limited_agent),
        ("revoked", s.revoked),
        ("enroll_refused", s.enroll_refused),
    ] {
        set(&m.refused.get_or_create(&vec![("reason", reason.to_owned())]), v);
    }
    // The same probe as /readyz (a write, at most one a second, shared): a store that takes
    // no writes is down even while reads work.
    let writable = console.readiness.check(&console.store).await.is_ok();
    m.store_up.set(i64::from(writable && read.is_ok()));
    if let Ok((alerts, notifications, agents, silent)) = read {
        for t in ["emergency", "drill"] {
            for st in STATES {
                m.alerts.get_or_create(&vec![("type", t.to_owned()), ("state", (*st).to_owned())]).set(0);
            }
        }
        for (test, state, n) in alerts {
            let t = if test { "drill" } else { "emergency" };
            m.alerts.get_or_create(&vec![("type", t.to_owned()), ("state", state)]).set(n as i64);
        }
        for ch in console.config.channel_names() {
            for r in ["pending", "delivered", "failed"] {
                m.notifications.get_or_create(&vec![("channel", ch.to_owned()), ("result", r.to_owned())]).set(0);
            }
        }
        for (ch, state, n) in notifications {
            m.notifications.get_or_create(&vec![("channel", ch), ("result", state)]).set(n as i64);
        }
        let now = crate::store::now_ms();
        let mut counts = [("online", 0i64), ("silent", 0), ("never_seen", 0), ("revoked", 0)];
        for a in &agents {
            let i = match (a.revoked_at_ms, a.last_seen_ms) {
                (Some(_), _) => 3,
                (None, None) => 2,
                (None, Some(_)) if silent.iter().any(|(id, _)| *id == a.agent_id) => 1,
                (None, Some(t)) if now - t > silent_after => 1,
                (None, Some(_)) => 0,
            };
            counts[i].1 += 1;
        }
        for (state, n) in counts {
            m.agents.get_or_create(&vec![("state", state.to_owned())]).set(n);
        }
    }
    let mut text = String::new();
    if encode(&mut text, &m.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// What /readyz last learnt of the store. The probe is a write (an fsync) on the writer thread
/// that commits every SOS: unauthenticated requests must not queue them, so one probe runs at a
/// time, its answer serves every request for a second, and a probe still waiting in the
/// writer's queue (a hung disk) is not joined by another.
#[derive(Debug, Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
    queued: Arc<std::sync::atomic::AtomicBool>,
}

impl Readiness {
    /// The store's answer to a write, at most a second old.
    async fn check(&self, store: &crate::store::Store) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        let mut last = self.last.lock().await;
        if let Some((_, answer)) = last.as_ref().filter(|(at, _)| at.elapsed() < std::time::Duration::from_secs(1)) {
            return answer.clone();
        }
        let answer = if self.queued.swap(true, Ordering::AcqRel) {
            Err("the store has not answered an earlier probe yet".to_owned())
        } else {
            let queued = self.queued.clone();
            // A task of its own: it runs to its end even when this request stops waiting for it,
            // and only its end lets the next probe go (a probe stuck behind a hung disk or an
            // unreachable database is not joined by another, and is not forgotten either).
            let prober = store.clone();
            let probe = tokio::spawn(async move {
                let r = prober.probe_write(crate::store::now_ms()).await;
                queued.store(false, Ordering::Release);
                r
            });
            match tokio::time::timeout(std::time::Duration::from_secs(3), probe).await {
                Ok(Ok(Ok(()))) if !store.is_failing() => Ok(()),
                Ok(Ok(Ok(()))) => Err("the store is failing".to_owned()),
                Ok(Ok(Err(e))) => Err(format!("the store does not take writes: {e}")),
                Ok(Err(e)) => {
                    self.queued.store(false, Ordering::Release);
                    Err(format!("the store probe failed: {e}"))
                }
                Err(_) => Err("the store did not answer within 3 s".to_owned()),
            }
        };
        *last = Some((std::time::Instant::now(), answer.clone()));
        answer
    }
}

/// `GET /readyz`: 200 when the store takes a write now and at least one channel besides the log
/// is configured; 503 naming what is wrong otherwise.
pub async fn readyz(State(console): State<Arc<Console>>) -> Response {
    let mut problems = Vec::new();
    if let Err(problem) = console.readiness.check(&console.store).await {
        problems.push(problem);
    }
    if console.config.channel_names().iter().all(|c| *c == "log") {
        problems.push("no notification channel is configured (only the log)".to_owned());
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", problems.join("; "))).into_response()
    }
}

/// `POST /csp-report`: a browser reports a Content-Security-Policy violation (an injection
/// attempt, or a bug of ours). Counted; the report (at most 16 KiB, untrusted) is logged at
/// debug level only, so that anyone cannot fill the log.
pub async fn csp_report(State(console): State<Arc<Console>>, body: axum::body::Bytes) -> StatusCode {
    console.metrics.csp_violations.inc();
    tracing::debug!(report = %String::from_utf8_lossy(&body[..body.len().min(2048)]), "console: CSP violation reported");
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::{Db, SqliteStore, Store};

    async fn store_up(console: &Arc<Console>) -> Option<String> {
        let body = axum::body::to_bytes(metrics(State(console.clone())).await.into_body(), usize::MAX).await.unwrap();
        String::from_utf8(body.to_vec()).unwrap().lines().find(|l| l.starts_with("sos_store_up ")).map(str::to_owned)
    }

    fn console(config: &Config, store: &Store) -> Arc<Console> {
        let (_, live) = tokio::sync::watch::channel(0);
        Arc::new(Console::new(config.clone(), store.clone(), Arc::default(), live, None).unwrap())
    }

    #[tokio::test]
    async fn store_up_follows_the_write_probe_not_the_writers_flag() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n", dir.path().display().to_string());
        let config = Config::parse(&text, None).unwrap();
        let (w, _writer) = SqliteStore::start(Db::open(&config.database_path()).unwrap(), &["log"]).unwrap();
        let store = Store::sqlite(w, Some(&config.database_path()));
        assert_eq!(store_up(&console(&config, &store)).await.as_deref(), Some("sos_store_up 1"));
        // The store refuses writes from now on (as a disk that refuses them) while reads work and
        // no SOS has failed yet, so the writer's own flag still says all is well.
        let writer = store.as_sqlite().unwrap();
        writer.exec(|db| Ok(db.conn.execute_batch("PRAGMA query_only = ON")?)).await.unwrap();
        assert!(!store.is_failing());
        // A new console: no probe answer cached from before.
        let c = console(&config, &store);
        assert_eq!(store_up(&c).await.as_deref(), Some("sos_store_up 0"));
        let ready = readyz(State(c)).await;
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_probe_that_outlived_its_wait_does_not_keep_readiness_down_once_the_store_answers() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n", dir.path().display().to_string());
        let config = Config::parse(&text, None).unwrap();
        let (w, _writer) = SqliteStore::start(Db::open(&config.database_path()).unwrap(), &["log"]).unwrap();
        let store = Store::sqlite(w.clone(), Some(&config.database_path()));
        // The writer is stuck (a hung disk) until `release`.
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let blocked = tokio::spawn(async move {
            w.exec(move |_| {
                let _ = stuck.recv();
                Ok(())
            })
            .await
        });
        let c = console(&config, &store);
        assert_eq!(store_up(&c).await.as_deref(), Some("sos_store_up 0"), "no answer within 3 s");
        release.send(()).unwrap();
        blocked.await.unwrap().unwrap();
        // The probe left waiting ends by itself; readiness follows the store again.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if store_up(&c).await.as_deref() == Some("sos_store_up 1") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "readiness stayed down after the store answered");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
