//! `sos-agent run`: the tray agent.
//!
//! The UI loop (winit) owns the main thread. Everything else talks to it by sending a
//! [`UiEvent`] through winit's event-loop proxy: the tray and menu callbacks, the hotkey thread,
//! the IPC server and the delivery service, which run on a tokio runtime off the UI thread.
//! Nothing polls: the loop sleeps until an event arrives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sos_shared::AlertId;
use tokio::sync::oneshot;
use tracing::{error, info, warn};
use winit::application::ApplicationHandler;
use winit::event::{StartCause, WindowEvent};
use winit::event_loop::{ActiveEventLoop, EventLoop, EventLoopProxy};
use winit::window::WindowId;

use crate::config::AgentConfig;
use crate::delivery::{Delivery, Report};
use crate::history::CancelledFrom;
use crate::hotkey::HotkeySpec;
use crate::ipc::{self, Request, Response, Status};
use crate::platform::Tray;
use crate::toast::{self, Importance};
use crate::tray::{ids, TrayEvent, TrayState, TrayView};

/// Presses of the same kind closer together than this are one alert (a held key, a double
/// click).
const DEBOUNCE: Duration = Duration::from_secs(2);

/// Everything the UI loop reacts to.
#[derive(Debug)]
pub enum UiEvent {
    /// Fire an SOS (hotkey, tray click, menu, IPC). `reply` gets the alert id.
    Trigger {
        /// What fired it, for the log.
        source: &'static str,
        /// A drill.
        test: bool,
        /// Text for the responders.
        message: String,
        /// Where to send the alert id (IPC), if anyone waits for it.
        reply: Option<oneshot::Sender<Option<AlertId>>>,
    },
    /// A menu item was chosen (its id in [`crate::tray::ids`]).
    Menu(&'static str),
    /// The delivery service reports.
    Report(Report),
    /// Someone asks for the state (IPC).
    Status(oneshot::Sender<Status>),
    /// `sos-agent cancel` withdrew this alert (IPC): the status line says so.
    CancelledElsewhere(AlertId),
    /// The cancel window of press number `n` is over: send it.
    WindowOver(u64),
    /// The person clicked the toast of press number `n` during its cancel window.
    AbortPress(u64),
}

/// A press waiting out its cancel window.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Its number, so that a late timer or click cannot touch a newer press.
    n: u64,
    /// When it goes out.
    due: Instant,
}

/// Run the tray agent until Quit. Returns an error only if it cannot start at all.
///
/// # Errors
/// If another agent already runs in this session, or the runtime or event loop cannot be
/// created. A spool that cannot be used does not stop it: alerts are then sent from memory and
/// the icon shows why.
pub fn run(config: AgentConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sos-agent-net")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;

    #[cfg(unix)]
    let listener = {
        let path = ipc::socket_path();
        match runtime.block_on(ipc::Listener::bind(&path)) {
            Ok(Some(l)) => Some(l),
            Ok(None) => {
                anyhow::bail!("an SOS agent is already running in this session (it answers on {})", path.display())
            }
            // The button matters more than the command: run without it, and say so.
            Err(e) => {
                error!(path = %path.display(), error = %e, "`sos-agent trigger` cannot reach this agent");
                None
            }
        }
    };

    let event_loop = EventLoop::<UiEvent>::with_user_event().build().context("cannot start the desktop event loop")?;
    let proxy = event_loop.create_proxy();

    let report_proxy = Mutex::new(proxy.clone());
    let delivery = Delivery::start(
        runtime.handle(),
        &config,
        Arc::new(move |r| {
            send(&report_proxy, UiEvent::Report(r));
        }),
    );

    #[cfg(unix)]
    if let Some(listener) = listener {
        let ipc_proxy = Arc::new(Mutex::new(proxy.clone()));
        let ipc_delivery = delivery.clone();
        runtime.spawn(listener.serve(move |req| {
            let proxy = ipc_proxy.clone();
            let delivery = ipc_delivery.clone();
            async move { answer(&proxy, &delivery, req).await }
        }));
    }

    let mut app = App {
        config,
        delivery,
        proxy,
        tray: None,
        in_flight: BTreeMap::new(),
        last_delivered: None,
        cancellable: None,
        cancelled: None,
        spool_problem: None,
        online: None,
        last_contact: None,
        hotkey_problem: None,
        last_press: BTreeMap::new(),
        pending: None,
        presses: 0,
        runtime: runtime.handle().clone(),
        shown: None,
    };
    info!("SOS agent running");
    event_loop.run_app(&mut app).context("the desktop event loop failed")?;
    drop(runtime);
    Ok(())
}

/// Answer one IPC request by asking the UI loop.
#[cfg(unix)]
async fn answer(proxy: &Mutex<EventLoopProxy<UiEvent>>, delivery: &Delivery, req: Request) -> Response {
    let gone = || Response::Error("the agent is shutting down".into());
    match req {
        Request::Trigger { test, message } => {
            let (tx, rx) = oneshot::channel();
            let sent = send(proxy, UiEvent::Trigger { source: "ipc", test, message, reply: Some(tx) });
            match (sent, rx.await) {
                (true, Ok(Some(id))) => Response::Accepted(id),
                (true, Ok(None)) => Response::Error("ignored: an SOS was sent less than 2 s ago".into()),
                _ => gone(),
            }
        }
        Request::Adopt { sos } => {
            let id = sos.alert_id;
            delivery.adopt(*sos);
            Response::Accepted(id)
        }
        Request::Discard { alert_id } => Response::Done(delivery.discard(alert_id)),
        Request::Cancelled { alert_id } => Response::Done(send(proxy, UiEvent::CancelledElsewhere(alert_id))),
        Request::Status => {
            let (tx, rx) = oneshot::channel();
            let sent = send(proxy, UiEvent::Status(tx));
            match (sent, rx.await) {
                (true, Ok(s)) => Response::Status(s),
                _ => gone(),
            }
        }
    }
}

/// Hand `event` to the UI loop; `false` if it has ended.
fn send(proxy: &Mutex<EventLoopProxy<UiEvent>>, event: UiEvent) -> bool {
    proxy.lock().map(|p| p.send_event(event).is_ok()).unwrap_or(false)
}

/// The UI loop's state.
struct App {
    config: AgentConfig,
    delivery: Delivery,
    proxy: EventLoopProxy<UiEvent>,
    tray: Option<Tray>,
    /// Alerts not yet acknowledged, and whether the sender was warned.
    in_flight: BTreeMap<AlertId, bool>,
    /// The last acknowledgement: when (Unix seconds) and whether it was a test.
    last_delivered: Option<(u64, bool)>,
    /// The last acknowledged alert, which Cancel withdraws; cleared once cancelled.
    cancellable: Option<AlertId>,
    /// The last alert a collector confirmed cancelled: when, and from where.
    cancelled: Option<(u64, CancelledFrom)>,
    /// Why the spool cannot be used, if it cannot: alerts are then kept in memory only.
    spool_problem: Option<String>,
    /// `Some(Some(collector))` once a heartbeat is answered, `Some(None)` when none answers.
    online: Option<Option<String>>,
    /// When a collector last answered (Unix seconds).
    last_contact: Option<u64>,
    /// Why the hotkey is not active, if it is not.
    hotkey_problem: Option<String>,
    /// The last press of the hotkey and of the icon, for debouncing each.
    last_press: BTreeMap<&'static str, Instant>,
    /// A press in its cancel window, if any.
    pending: Option<Pending>,
    /// Presses so far, to number them.
    presses: u64,
    /// For the cancel window's timer and the tray.
    runtime: tokio::runtime::Handle,
    /// What the tray shows, to update it only on change.
    shown: Option<TrayView>,
}

impl App {
    /// The state to show and its description.
    fn state(&self) -> (TrayState, String) {
        let hotkey = HotkeySpec::to_string(&self.config.hotkey);
        if let Some(p) = self.pending {
            let left = p.due.saturating_duration_since(Instant::now()).as_secs_f32().ceil();
            return (TrayState::Sending, format!("SOS in {left} s — click the icon to cancel"));
        }
        if self.in_flight.values().any(|warned| *warned) {
            return (TrayState::Attention, format!("SOS NOT delivered yet — still trying. {}", self.config.fallback));
        }
        if !self.in_flight.is_empty() {
            return (TrayState::Sending, "sending SOS…".into());
        }
        if let Some(p) = &self.spool_problem {
            return (
                TrayState::Attention,
                format!("alerts cannot be saved on disk ({p}): an SOS still goes out, but is lost if the agent stops before a collector has it"),
            );
        }
        if let Some(None) = &self.online {
            return (TrayState::Offline, format!("offline: no collector answers. {}", self.config.fallback));
        }
        if let Some(p) = &self.hotkey_problem {
            return (TrayState::Attention, format!("hotkey unavailable: {p}. Click this icon to send an SOS."));
        }
        if let Some((at, from)) = self.cancelled {
            return (TrayState::Delivered, format!("alert cancelled at {} from {}", local_time(at), from.words()));
        }
        if let Some((at, test)) = self.last_delivered {
            let what = if test { "test alert" } else { "SOS" };
            return (TrayState::Delivered, format!("{what} delivered at {}", local_time(at)));
        }
        match (&self.online, self.last_contact) {
            (Some(Some(c)), Some(at)) => (
                TrayState::Ready,
                format!("ready — {hotkey} or click to send an SOS (collector {c}, last contact {})", local_time(at)),
            ),
            _ => (TrayState::Ready, format!("ready — {hotkey} or click to send an SOS")),
        }
    }

    /// What the tray should show now.
    fn view(&self) -> TrayView {
        let (state, detail) = self.state();
        TrayView {
            state,
            detail,
            can_cancel: self.cancellable.is_some() || self.pending.is_some(),
            show_quit: self.config.show_quit,
        }
    }

    fn refresh(&mut self) {
        let view = self.view();
        if self.shown.as_ref() == Some(&view) {
            return;
        }
        if let Some(t) = &mut self.tray {
            t.show(view.clone());
        }
        self.shown = Some(view);
    }

    fn toast(&self, summary: String, body: String, importance: Importance) {
        if !self.config.silent {
            toast::show(summary, body, importance);
        }
    }

    fn trigger(&mut self, source: &'static str, test: bool, message: &str, debounce: bool) -> Option<AlertId> {
        let now = Instant::now();
        if debounce {
            if self.last_press.get(source).is_some_and(|t| now.duration_since(*t) < DEBOUNCE) {
                info!(source, "press ignored: the same press less than 2 s ago (key repeat, double click)");
                return None;
            }
            self.last_press.insert(source, now);
        }
        let id = self.delivery.trigger(test, message);
        info!(alert_id = %id, source, test, "SOS fired");
        Some(id)
    }
}

impl ApplicationHandler<UiEvent> for App {
    fn new_events(&mut self, _: &ActiveEventLoop, cause: StartCause) {
        if cause != StartCause::Init {
            return;
        }
        // Created once the loop runs (macOS requires it on the main thread at this point).
        let p = Mutex::new(self.proxy.clone());
        let view = self.view();
        match Tray::new(view, &self.runtime, move |e| {
            let event = match e {
                TrayEvent::Click => {
                    UiEvent::Trigger { source: "tray click", test: false, message: String::new(), reply: None }
                }
                TrayEvent::Menu(id) => UiEvent::Menu(id),
            };
            send(&p, event);
        }) {
            Ok(t) => self.tray = Some(t),
            Err(e) => {
                error!(error = %e, "the tray icon cannot be shown; the hotkey and `sos-agent trigger` still work")
            }
        }
        let p = Mutex::new(self.proxy.clone());
        let spec = self.config.hotkey;
        match crate::platform::register_hotkey(spec, move || {
            send(&p, UiEvent::Trigger { source: "hotkey", test: false, message: String::new(), reply: None });
        }) {
            Ok(()) => info!(hotkey = %spec, "hotkey registered"),
            Err(e) => {
                warn!(error = %e, "the hotkey is not available");
                self.hotkey_problem = Some(e.to_string());
            }
        }
        self.refresh();
    }

    fn resumed(&mut self, _: &ActiveEventLoop) {}

    fn window_event(&mut self, _: &ActiveEventLoop, _: WindowId, _: WindowEvent) {}

    fn user_event(&mut self, event_loop: &ActiveEventLoop, event: UiEvent) {
        match event {
            UiEvent::Trigger { source, test, message, reply } => {
                // Presses are debounced and may wait out a cancel window; explicit requests
                // (IPC, menu) are neither.
                let press = source == "hotkey" || source == "tray click";
                if press && self.config.cancel_window_ms > 0 {
                    self.press_with_window(source);
                } else {
                    let id = self.trigger(source, test, &message, press);
                    if let Some(r) = reply {
                        let _ = r.send(id);
                    }
                }
            }
            UiEvent::WindowOver(n) => {
                if self.pending.is_some_and(|p| p.n == n) {
                    self.pending = None;
                    self.trigger("hotkey or click, after the cancel window", false, "", false);
                }
            }
            UiEvent::AbortPress(n) => {
                if self.pending.is_some_and(|p| p.n == n) {
                    self.abort_pending("toast click");
                }
            }
            UiEvent::Menu(id) => match id {
                ids::SEND => {
                    self.trigger("menu", false, "", false);
                }
                ids::TEST => {
                    self.trigger("menu", true, "", false);
                }
                ids::CANCEL => {
                    if self.pending.is_some() {
                        self.abort_pending("menu");
                    } else {
                        self.cancel();
                    }
                }
                ids::QUIT => {
                    info!("quit from the tray menu");
                    event_loop.exit();
                }
                _ => {}
            },
            UiEvent::Report(r) => self.report(r),
            UiEvent::CancelledElsewhere(alert_id) => {
                info!(%alert_id, "the alert was cancelled from the command line");
                if self.cancellable == Some(alert_id) {
                    self.cancellable = None;
                }
                self.cancelled = Some((sos_shared::unix_now(), CancelledFrom::CommandLine));
                self.toast(
                    "Alert cancelled".into(),
                    "From the command line: responders were told it was a false alarm.".into(),
                    Importance::Normal,
                );
            }
            UiEvent::Status(reply) => {
                let (state, detail) = self.state();
                let _ = reply.send(Status { state: state.word().into(), detail });
            }
        }
        self.refresh();
    }
}

impl App {
    /// A press with a cancel window: a click during the window cancels it; otherwise it goes
    /// out when the window is over.
    fn press_with_window(&mut self, source: &'static str) {
        if self.pending.is_some() {
            if source == "tray click" {
                self.abort_pending("icon click");
            }
            return;
        }
        self.presses += 1;
        let n = self.presses;
        let window = Duration::from_millis(self.config.cancel_window_ms);
        self.pending = Some(Pending { n, due: Instant::now() + window });
        info!(source, window_ms = window.as_millis() as u64, "SOS pressed; sending when the cancel window is over");
        let proxy = Mutex::new(self.proxy.clone());
        self.runtime.spawn(async move {
            tokio::time::sleep(window).await;
            send(&proxy, UiEvent::WindowOver(n));
        });
        if !self.config.silent {
            let proxy = Mutex::new(self.proxy.clone());
            toast::show_clickable(
                format!("Sending SOS in {} s", window.as_secs_f32().ceil()),
                "Click here or on the SOS icon to cancel.".into(),
                move || {
                    send(&proxy, UiEvent::AbortPress(n));
                },
            );
        }
    }

    fn abort_pending(&mut self, how: &str) {
        if self.pending.take().is_some() {
            info!(how, "SOS cancelled during its cancel window; nothing was sent");
            self.toast("SOS cancelled".into(), "Nothing was sent.".into(), Importance::Normal);
        }
    }

    /// Withdraw the last acknowledged alert, if any.
    fn cancel(&mut self) -> Option<AlertId> {
        let id = self.cancellable.take()?;
        info!(alert_id = %id, "cancelling the last alert (false alarm)");
        self.delivery.cancel(id, CancelledFrom::Tray);
        Some(id)
    }

    fn report(&mut self, r: Report) {
        match r {
            Report::Sending { alert_id, .. } => {
                self.in_flight.insert(alert_id, false);
            }
            Report::Delivered { alert_id, test, at, pressed_at, collector } => {
                self.in_flight.remove(&alert_id);
                self.last_delivered = Some((at, test));
                self.cancellable = Some(alert_id);
                self.cancelled = None;
                self.online = Some(Some(collector));
                self.last_contact = Some(at);
                let what = if test { "TEST alert delivered" } else { "SOS delivered" };
                // A resent alert says when it was pressed, not only when it arrived.
                let pressed = if at.saturating_sub(pressed_at) >= 10 {
                    format!(" (pressed at {})", local_date_time(pressed_at))
                } else {
                    String::new()
                };
                self.toast(
                    format!("{what} — {}{pressed}", local_time(at)),
                    "Help has been called.".into(),
                    Importance::Normal,
                );
            }
            Report::NotSpooled { alert_id, reason } => {
                warn!(%alert_id, %reason, "alert kept in memory only");
                self.toast(
                    "SOS: cannot save the alert".into(),
                    format!("It is being sent, but would be lost if the agent stops now ({reason})."),
                    Importance::Critical,
                );
            }
            Report::Rejected { alert_id, reason } => {
                if let Some(id) = alert_id {
                    self.in_flight.remove(&id);
                }
                self.toast(
                    "An alert can never be sent".into(),
                    format!("{reason}. {}", self.config.fallback),
                    Importance::Critical,
                );
            }
            Report::Discarded { alert_id } => {
                self.in_flight.remove(&alert_id);
            }
            Report::SpoolProblem(p) => self.spool_problem = p,
            Report::NotDeliveredYet { alert_id, test } => {
                self.in_flight.insert(alert_id, true);
                let what = if test { "TEST alert" } else { "SOS" };
                self.toast(
                    format!("{what} NOT delivered yet — still trying."),
                    self.config.fallback.clone(),
                    Importance::Critical,
                );
            }
            Report::Connectivity(c) => {
                if c.is_some() {
                    self.last_contact = Some(sos_shared::unix_now());
                }
                self.online = Some(c);
            }
            Report::Cancelled { alert_id, confirmed: true } => {
                info!(%alert_id, "cancellation confirmed");
                self.cancelled = Some((sos_shared::unix_now(), CancelledFrom::Tray));
                self.toast(
                    "Alert cancelled".into(),
                    "Responders were told it was a false alarm.".into(),
                    Importance::Normal,
                );
            }
            Report::Cancelled { alert_id, confirmed: false } => {
                self.toast(
                    "Cancel NOT confirmed".into(),
                    format!(
                        "Responders may still be coming for alert {alert_id}: tell them yourself. {}",
                        self.config.fallback
                    ),
                    Importance::Critical,
                );
            }
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` in the workstation's time zone, or `HH:MM:SS` if it is today.
fn local_date_time(unix: u64) -> String {
    let Some(t) = chrono::DateTime::from_timestamp(unix as i64, 0) else { return String::new() };
    let t = t.with_timezone(&chrono::Local);
    if t.date_naive() == chrono::Local::now().date_naive() {
        t.format("%H:%M:%S").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S").to_string()
    }
}

/// `HH:MM:SS` in the workstation's time zone.
fn local_time(unix: u64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .map(|t| t.with_timezone(&chrono::Local).format("%H:%M:%S").to_string())
        .unwrap_or_default()
}
