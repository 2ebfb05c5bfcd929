//! The tray agent's delivery service, on the tokio runtime off the UI thread. Each alert is its
//! own task: it spools the alert, sends it until a collector acknowledges it, records the
//! delivery, and reports to the UI through a callback (in the tray agent, winit's event-loop
//! proxy). One alert's trouble — a disk that hangs, an alert that can never be sealed — stays in
//! its own task and never delays another press.
//!
//! Beside the alerts, two tasks: a rescan of the spool every [`RESCAN_EVERY`], which adopts
//! what an earlier run or a `sos-agent send` left there (and sets aside what can never be sent),
//! and reopens a spool that could not be used; and the [`Listener`], which heartbeats to the
//! collectors and takes what they push (responder popups, notices about this agent's alerts).
//!
//! When the spool cannot be used (a read-only or full home, a folder owned by someone else),
//! the service still runs: alerts are sent from memory, and the UI is told why
//! ([`Report::SpoolProblem`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sos_shared::backoff::Backoff;
use sos_shared::protocol::{AlertBroadcast, RespondStatus, ResponderNotice, Sos};
use sos_shared::{unix_now, AlertId};
use tokio::task::AbortHandle;
use tracing::{error, info, warn};

use crate::config::AgentConfig;
use crate::history::{Cancellation, CancelledFrom, DeliveredAlert, History};
use crate::identity::Identity;
use crate::responder::{Listener, News, Setup};
use crate::send::{new_sos, Delivered, SendError, Sender};
use crate::spool::Spool;

/// How often the spool is scanned for alerts that nobody is sending (left by an earlier run,
/// or by a `sos-agent send` that gave up or was killed).
pub const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// How long an alert's task waits for the disk before it sends without it.
const SPOOL_TIMEOUT: Duration = Duration::from_secs(2);

/// The pause between two sending rounds of one alert: a floor, so that an alert whose rounds
/// end early (no socket, say) never spins.
const BETWEEN_ROUNDS: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));

/// How long a cancellation is tried.
const CANCEL_DEADLINE: Duration = Duration::from_secs(60);

/// What the delivery service tells the UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// An alert was triggered (or taken over) and is being sent.
    Sending {
        /// The alert.
        alert_id: AlertId,
        /// A drill.
        test: bool,
    },
    /// A collector acknowledged the alert.
    Delivered {
        /// The alert.
        alert_id: AlertId,
        /// A drill.
        test: bool,
        /// When the acknowledgement arrived, seconds since the Unix epoch.
        at: u64,
        /// When the button was pressed (earlier than `at` for an alert resent from the spool).
        pressed_at: u64,
        /// The collector that acknowledged it.
        collector: String,
    },
    /// Not acknowledged after `warn_after_secs`; still trying.
    NotDeliveredYet {
        /// The alert.
        alert_id: AlertId,
        /// A drill.
        test: bool,
    },
    /// The alert could not be written to the spool: it is being sent from memory only.
    NotSpooled {
        /// The alert.
        alert_id: AlertId,
        /// Why.
        reason: String,
    },
    /// An alert (or a spool file) that can never be sent was set aside in `spool/rejected/`.
    Rejected {
        /// The alert, when known.
        alert_id: Option<AlertId>,
        /// Why, and where it is now.
        reason: String,
    },
    /// An alert stopped being sent because it was discarded (`sos-agent spool discard`).
    Discarded {
        /// The alert.
        alert_id: AlertId,
    },
    /// The spool cannot be used (`Some(why)`: alerts are kept in memory only) or can again.
    SpoolProblem(Option<String>),
    /// A heartbeat was answered (`Some(collector)`) or not (`None`).
    Connectivity(Option<String>),
    /// A cancellation was confirmed by a collector (`true`) or not within a minute (`false`).
    Cancelled {
        /// The alert.
        alert_id: AlertId,
        /// Whether a collector confirmed it.
        confirmed: bool,
    },
    /// A newer state of an alert to show on this responder desktop.
    Popup(AlertBroadcast),
    /// News about an alert this agent sent: someone is coming, nobody answered, resolved.
    Notice(ResponderNotice),
    /// The outcome of this responder's "I'm responding".
    Responded {
        /// The alert.
        alert_id: AlertId,
        /// The collector's answer, or why there was none.
        outcome: Result<RespondStatus, String>,
    },
}

/// How long "I'm responding" is tried.
const RESPOND_DEADLINE: Duration = Duration::from_secs(60);

type ReportFn = Arc<dyn Fn(Report) + Send + Sync>;

/// The handle the UI, the hotkey and the IPC server use to fire alerts.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    /// The spool, while it can be used.
    spool: Mutex<Option<Spool>>,
    /// Where the spool is (to reopen it).
    spool_dir: PathBuf,
    /// The record of delivered alerts.
    history: History,
    location: String,
    sender: Sender,
    runtime: tokio::runtime::Handle,
    report: ReportFn,
    warn_after: Duration,
    /// The alerts being sent, each by its own task.
    alerts: Mutex<HashMap<AlertId, AbortHandle>>,
    /// The rescan and heartbeat tasks.
    background: Mutex<Vec<AbortHandle>>,
    /// Alerts acknowledged during this run: never adopted again, even if their spool file
    /// could not be removed (else a file that cannot be deleted would be resent every scan).
    acknowledged: Arc<Mutex<std::collections::HashSet<AlertId>>>,
    /// Heartbeats and pushes.
    listener: Mutex<Option<Listener>>,
}

impl Inner {
    /// See [`Listener::beat_now`].
    fn beat_now(&self) {
        if let Some(l) = self.listener.lock().ok().and_then(|l| l.clone()) {
            l.beat_now();
        }
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("spool_dir", &self.inner.spool_dir).finish_non_exhaustive()
    }
}

impl Delivery {
    /// Start the service on `runtime`: open the spool (or report why it cannot be used), resend
    /// what is in it, then rescan it, serve triggers and heartbeat every `config.heartbeat_secs`.
    pub fn start(runtime: &tokio::runtime::Handle, config: &AgentConfig, report: ReportFn) -> Self {
        let spool = match Spool::open(&config.spool_dir) {
            Ok(s) => Some(s),
            Err(e) => {
                error!(error = %e, "the spool cannot be used; alerts are sent from memory only");
                report(Report::SpoolProblem(Some(e.to_string())));
                None
            }
        };
        let sender = Sender::new(config);
        let inner = Arc::new(Inner {
            spool: Mutex::new(spool),
            spool_dir: config.spool_dir.clone(),
            history: History::beside(&config.spool_dir),
            location: config.location.clone(),
            sender: sender.clone(),
            runtime: runtime.clone(),
            report: report.clone(),
            warn_after: Duration::from_secs(config.warn_after_secs),
            alerts: Mutex::default(),
            background: Mutex::default(),
            acknowledged: Arc::default(),
            listener: Mutex::new(None),
        });
        let delivery = Delivery { inner };
        let tasks = [runtime.spawn(delivery.clone().rescans()).abort_handle()];
        if let Ok(mut b) = delivery.inner.background.lock() {
            b.extend(tasks);
        }
        let (news, connectivity) = (report.clone(), report);
        let listener = Listener::start(
            runtime,
            Setup {
                sender,
                every: Duration::from_secs(config.heartbeat_secs),
                responder: config.responder,
                mine: delivery.sent_here(),
                news: Arc::new(move |n| {
                    news(match n {
                        News::Popup(b) => Report::Popup(b),
                        News::Notice(n) => Report::Notice(n),
                    })
                }),
                connectivity: Arc::new(move |c| connectivity(Report::Connectivity(c))),
            },
        );
        if let Ok(mut l) = delivery.inner.listener.lock() {
            *l = Some(listener);
        }
        delivery
    }

    /// Whether an alert was sent from here: this run sent it (or is sending it), it waits in
    /// the spool, or the history records it.
    fn sent_here(&self) -> Arc<dyn Fn(AlertId) -> bool + Send + Sync> {
        let inner = Arc::downgrade(&self.inner);
        Arc::new(move |id| {
            let Some(inner) = inner.upgrade() else { return false };
            let this_run = inner.acknowledged.lock().map(|a| a.contains(&id)).unwrap_or(false)
                || inner.alerts.lock().map(|a| a.contains_key(&id)).unwrap_or(false);
            this_run
                || inner.history.get(id).is_some()
                || inner
                    .spool
                    .lock()
                    .ok()
                    .and_then(|s| s.clone())
                    .is_some_and(|s| s.pending().unwrap_or_default().iter().any(|p| p.alert_id == id))
        })
    }

    /// Heartbeat now: after this agent sent from another socket, the collector pushes to
    /// the listener's again.
    fn beat_now(&self) {
        self.inner.beat_now();
    }

    /// "I'm responding" to `alert_id` (a responder desktop): sent until a collector answers
    /// or a minute has passed; the outcome is returned and reported as [`Report::Responded`].
    pub async fn respond(&self, alert_id: AlertId, note: String) -> Result<RespondStatus, String> {
        let outcome = self
            .inner
            .sender
            .respond(alert_id, &note, RESPOND_DEADLINE)
            .await
            .map(|(status, _)| status)
            .map_err(|e| e.to_string());
        self.beat_now();
        (self.inner.report)(Report::Responded { alert_id, outcome: outcome.clone() });
        outcome
    }

    /// As [`Self::respond`], without waiting for the outcome.
    pub fn respond_later(&self, alert_id: AlertId, note: String) {
        let this = self.clone();
        self.inner.runtime.spawn(async move {
            let _ = this.respond(alert_id, note).await;
        });
    }

    /// Stop every task of the service (what is not delivered stays in the spool).
    pub fn stop(&self) {
        let background = self.inner.background.lock().map(|mut b| std::mem::take(&mut *b)).unwrap_or_default();
        let alerts = self.inner.alerts.lock().map(|mut a| std::mem::take(&mut *a)).unwrap_or_default();
        for h in background.into_iter().chain(alerts.into_values()) {
            h.abort();
        }
        if let Some(l) = self.inner.listener.lock().ok().and_then(|mut l| l.take()) {
            l.stop();
        }
    }

    /// Fire an SOS now (with `alert_id` if the caller chose one); returns its id at once. The
    /// alert's own task spools it and sends it.
    pub fn trigger(&self, test: bool, message: &str, alert_id: Option<AlertId>) -> AlertId {
        let mut sos = new_sos(&Identity::current(), &self.inner.location, message, test);
        if let Some(id) = alert_id {
            sos.alert_id = id;
        }
        let id = sos.alert_id;
        info!(alert_id = %id, test, "SOS triggered");
        self.launch(sos, true);
        id
    }

    /// Take over an alert that another process could not deliver (a `sos-agent send` that gave
    /// up): `false` if it is already being sent here.
    pub fn adopt(&self, sos: Sos) -> bool {
        info!(alert_id = %sos.alert_id, "taking over an alert that `sos-agent send` could not deliver");
        self.launch(sos, true)
    }

    /// Stop sending `alert_id` and remove it from the spool (`sos-agent spool discard`);
    /// `true` if it was being sent here.
    pub fn discard(&self, alert_id: AlertId) -> bool {
        let handle = self.inner.alerts.lock().ok().and_then(|mut a| a.remove(&alert_id));
        if let Some(h) = &handle {
            h.abort();
            warn!(%alert_id, "alert discarded: it is no longer sent");
            (self.inner.report)(Report::Discarded { alert_id });
        }
        handle.is_some()
    }

    /// Withdraw a delivered alert (a false alarm); the outcome is recorded and reported as
    /// [`Report::Cancelled`].
    pub fn cancel(&self, alert_id: AlertId, from: CancelledFrom) {
        let this = self.clone();
        self.inner.runtime.spawn(async move {
            let inner = &this.inner;
            let confirmed = cancel(&inner.sender, &inner.history, alert_id, from).await.is_ok();
            this.beat_now();
            (inner.report)(Report::Cancelled { alert_id, confirmed });
        });
    }

    /// Start the task of `sos` unless one runs; `spool_it`: write it to the spool first. An
    /// alert from elsewhere (the spool, another process) is fitted again, so that one spooled by
    /// an older agent with an overlong message is sent, cut, rather than refused.
    fn launch(&self, mut sos: Sos, spool_it: bool) -> bool {
        sos.fit_to_datagram();
        // Delivered during this run (a rescan adopted it before a `send` handed it over, say):
        // never again.
        if self.inner.acknowledged.lock().map(|a| a.contains(&sos.alert_id)).unwrap_or(false) {
            return false;
        }
        let Ok(mut alerts) = self.inner.alerts.lock() else { return false };
        if alerts.contains_key(&sos.alert_id) {
            return false;
        }
        let id = sos.alert_id;
        let task = self.inner.runtime.spawn(deliver(self.inner.clone(), sos, spool_it));
        alerts.insert(id, task.abort_handle());
        true
    }

    /// Scan the spool now and every [`RESCAN_EVERY`]: adopt the alerts nobody sends, report
    /// what was set aside, reopen a spool that could not be used.
    async fn rescans(self) {
        // Whether the UI was last told the spool cannot be used (`start` told it at once).
        let mut unusable = self.inner.spool.lock().map(|s| s.is_none()).unwrap_or(true);
        let mut first = true;
        loop {
            let inner = self.inner.clone();
            let scanned = tokio::task::spawn_blocking(move || {
                let current = inner.spool.lock().map(|s| s.clone()).unwrap_or(None);
                let spool = match current {
                    Some(s) => s,
                    None => {
                        let s = Spool::open(&inner.spool_dir).map_err(|e| e.to_string())?;
                        if let Ok(mut slot) = inner.spool.lock() {
                            *slot = Some(s.clone());
                        }
                        s
                    }
                };
                spool.scan().map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match scanned {
                Ok(scan) => {
                    if unusable {
                        info!(dir = %self.inner.spool_dir.display(), "the spool can be used again");
                        (self.inner.report)(Report::SpoolProblem(None));
                        unusable = false;
                    }
                    for s in scan.set_aside {
                        let alert_id = s.file.file_stem().and_then(|n| n.to_str()).and_then(|n| n.parse().ok());
                        (self.inner.report)(Report::Rejected {
                            alert_id,
                            reason: format!("{}; set aside in {}", s.reason, s.file.display()),
                        });
                    }
                    for s in scan.alerts.into_iter().filter(|s| !s.busy) {
                        let id = s.sos.alert_id;
                        let known = self.inner.alerts.lock().map(|a| a.contains_key(&id)).unwrap_or(true)
                            || self.inner.acknowledged.lock().map(|a| a.contains(&id)).unwrap_or(true);
                        if !known {
                            info!(alert_id = %s.sos.alert_id, first_scan = first,
                                  "resending an alert left unacknowledged (by an earlier run or a `sos-agent send`)");
                            self.launch(s.sos, false);
                        }
                    }
                }
                Err(problem) => {
                    if !unusable {
                        error!(%problem, "the spool cannot be used; alerts are sent from memory only");
                        (self.inner.report)(Report::SpoolProblem(Some(problem)));
                        unusable = true;
                    }
                }
            }
            first = false;
            tokio::time::sleep(RESCAN_EVERY).await;
        }
    }
}

/// Removes an alert from the running set when its task ends, however it ends.
struct Running {
    inner: Arc<Inner>,
    alert_id: AlertId,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut a) = self.inner.alerts.lock() {
            a.remove(&self.alert_id);
        }
    }
}

/// One alert's task: spool it (without waiting on a slow disk for more than
/// [`SPOOL_TIMEOUT`]), send it until acknowledged, warning once after `warn_after`; then
/// forget it in the spool and record it as delivered. An alert that can never be sealed is set
/// aside and reported, once.
async fn deliver(inner: Arc<Inner>, sos: Sos, spool_it: bool) {
    let _running = Running { inner: inner.clone(), alert_id: sos.alert_id };
    let (alert_id, test) = (sos.alert_id, sos.test);
    let report = inner.report.clone();
    let spool = inner.spool.lock().map(|s| s.clone()).unwrap_or(None);
    // A spool write still running after SPOOL_TIMEOUT (a slow disk): the alert goes out without
    // it, and its removal after the acknowledgement waits for it, so that a late write cannot
    // bring back an alert already delivered.
    let mut late_put = None;
    if spool_it {
        let outcome = match spool.clone() {
            None => Err(format!("the spool {} cannot be used", inner.spool_dir.display())),
            Some(s) => {
                let copy = sos.clone();
                let mut put = tokio::task::spawn_blocking(move || s.put(&copy));
                match tokio::time::timeout(SPOOL_TIMEOUT, &mut put).await {
                    Ok(Ok(Ok(()))) => Ok(()),
                    Ok(Ok(Err(e))) => Err(e.to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => {
                        late_put = Some(put);
                        Err(format!("the disk did not answer within {SPOOL_TIMEOUT:?}"))
                    }
                }
            }
        };
        if let Err(reason) = outcome {
            error!(%alert_id, %reason, "the alert could not be spooled; sending it from memory");
            report(Report::NotSpooled { alert_id, reason });
        }
    }
    report(Report::Sending { alert_id, test });
    let mut deadline = inner.warn_after;
    let mut warned = false;
    for round in 0u32.. {
        match inner.sender.send(sos.clone(), deadline).await {
            Ok(d) => {
                if let Ok(mut a) = inner.acknowledged.lock() {
                    a.insert(alert_id);
                }
                let (history, pressed_at, collector) =
                    (inner.history.clone(), sos.triggered_at, d.collector.to_string());
                // The sender learns at once; the bookkeeping on disk follows, however slow.
                report(Report::Delivered { alert_id, test, at: unix_now(), pressed_at, collector });
                inner.beat_now();
                let spool = spool.clone();
                if let Some(put) = late_put {
                    let _ = put.await;
                }
                let _ = tokio::task::spawn_blocking(move || acknowledged(spool.as_ref(), &history, &sos, &d)).await;
                return;
            }
            Err(SendError::Seal(e)) => {
                let spool = spool.clone();
                let moved = tokio::task::spawn_blocking(move || spool.map(|s| s.reject(alert_id))).await;
                let place = match moved {
                    Ok(Some(Ok(Some(p)))) => format!("set aside in {}", p.display()),
                    _ => "not kept".into(),
                };
                error!(%alert_id, error = %e, %place, "this alert can never be sent");
                report(Report::Rejected { alert_id: Some(alert_id), reason: format!("cannot seal it: {e}; {place}") });
                return;
            }
            Err(SendError::NotAcknowledged(n)) => {
                if !warned {
                    warn!(%alert_id, problem = %n, "SOS not delivered yet; still trying");
                    report(Report::NotDeliveredYet { alert_id, test });
                    warned = true;
                }
                // Keep trying; the sender keeps its backoff within a round.
                // Rounds of 30 s: each new round resolves the collectors' names and opens new
                // sockets, so a network that changed (a VPN coming up, another Wi-Fi) is used
                // within one round.
                deadline = Duration::from_secs(30);
            }
        }
        tokio::time::sleep(BETWEEN_ROUNDS.delay(round.min(4), &mut fastrand::Rng::new())).await;
    }
}

/// After an acknowledgement: forget the alert in the spool and record it as delivered.
/// Problems are logged; the alert is delivered either way.
pub fn acknowledged(spool: Option<&Spool>, history: &History, sos: &Sos, d: &Delivered) {
    if let Some(Err(e)) = spool.map(|s| s.remove(sos.alert_id)) {
        warn!(alert_id = %sos.alert_id, error = %e,
              "acknowledged, but cannot be removed from the spool; it may be resent (the collector deduplicates it)");
    }
    let record = DeliveredAlert {
        alert_id: sos.alert_id,
        test: sos.test,
        pressed_at: sos.triggered_at,
        delivered_at: unix_now(),
        delivered_at_ms: unix_now_ms(),
        collector: d.collector.to_string(),
        cancelled: None,
    };
    if let Err(e) = history.put(&record) {
        warn!(alert_id = %sos.alert_id, error = %e, "delivered, but not recorded: `sos-agent cancel` will need its id");
    }
}

/// Send a CANCEL for `alert_id` until a collector confirms it, and record where it came from.
///
/// # Errors
/// If no collector confirmed it within a minute.
pub async fn cancel(
    sender: &Sender,
    history: &History,
    alert_id: AlertId,
    from: CancelledFrom,
) -> Result<std::net::SocketAddr, SendError> {
    let reason = format!("cancelled by the sender from {}", from.words());
    match sender.cancel(alert_id, &reason, CANCEL_DEADLINE).await {
        Ok(by) => {
            let mut record = history.get(alert_id).unwrap_or(DeliveredAlert {
                alert_id,
                test: false,
                pressed_at: 0,
                delivered_at: 0,
                delivered_at_ms: 0,
                collector: by.to_string(),
                cancelled: None,
            });
            record.cancelled = Some(Cancellation { at: unix_now(), from, collector: by.to_string() });
            let history = history.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = history.put(&record) {
                    warn!(%alert_id, error = %e, "cancelled, but not recorded");
                }
            })
            .await;
            Ok(by)
        }
        Err(e) => {
            warn!(%alert_id, error = %e, "the cancellation was not confirmed");
            Err(e)
        }
    }
}

/// Milliseconds since the Unix epoch.
fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
