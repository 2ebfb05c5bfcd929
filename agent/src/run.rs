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
use sos_shared::protocol::{AlertBroadcast, BroadcastState, NoticeEvent, RespondStatus};
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
use crate::responder::POPUPS_SHOWN;
use crate::toast::{Action, Importance, Toast, Toasts, Topic};
use crate::tray::{ids, Click, Clicks, TrayEvent, TrayState, TrayView, ALERTS_LISTED};
use crate::wording::{MyResponse, Words};

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
        /// The id the caller chose (IPC), if any.
        alert_id: Option<AlertId>,
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
    /// The person chose the toast action that stops press number `n` in its cancel window.
    AbortPress(u64),
    /// The double-click time after first click number `n` on the icon is over.
    ClickOver(u64),
    /// The responder chose "I'm responding" on an alert's popup.
    Respond(AlertId),
    /// The responder chose "Details" on an alert's popup, or the alert in the tray menu.
    PopupDetails(AlertId),
}

/// Closed alerts a responder desktop remembers (for their popups' last state); older ones are
/// forgotten.
const CLOSED_POPUPS_KEPT: usize = 200;

/// Someone's alert on this responder desktop.
#[derive(Debug, Clone)]
struct Popup {
    /// Its last state, as broadcast.
    b: AlertBroadcast,
    /// Whether this desktop responded.
    mine: MyResponse,
    /// Whether it has its own notification (the first [`POPUPS_SHOWN`] open alerts do; the
    /// rest are counted in one and listed in the menu).
    own: bool,
}

/// A press waiting out its cancel window.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Its number, so that a late timer or click cannot touch a newer press.
    n: u64,
    /// When it goes out.
    due: Instant,
    /// When it was pressed.
    at: Instant,
    /// Whether the icon fired it: then more clicks within [`DEBOUNCE`] are the same frantic
    /// press, not a request to stop it.
    by_click: bool,
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

    let listener = {
        let path = ipc::endpoint();
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

    if let Some(listener) = listener {
        let ipc_proxy = Arc::new(Mutex::new(proxy.clone()));
        let ipc_delivery = delivery.clone();
        runtime.spawn(listener.serve(move |req| {
            let proxy = ipc_proxy.clone();
            let delivery = ipc_delivery.clone();
            async move { answer(&proxy, &delivery, req).await }
        }));
    }

    let words = Words { wording: config.wording, click: config.tray_click };
    let toasts = Toasts::start(words.name())
        .map_err(|e| error!(error = %e, "toasts cannot be shown; the tray icon still tells what happens"))
        .ok();
    let mut app = App {
        clicks: Clicks::new(config.tray_click),
        words,
        toasts,
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
        popups: BTreeMap::new(),
        more_shown: 0,
        help: None,
    };
    info!("SOS agent running");
    event_loop.run_app(&mut app).context("the desktop event loop failed")?;
    drop(runtime);
    Ok(())
}

/// Answer one IPC request by asking the UI loop.
async fn answer(proxy: &Mutex<EventLoopProxy<UiEvent>>, delivery: &Delivery, req: Request) -> Response {
    let gone = || Response::Error("the agent is shutting down".into());
    match req {
        Request::Trigger { test, message, alert_id } => {
            let (tx, rx) = oneshot::channel();
            let sent = send(proxy, UiEvent::Trigger { source: "ipc", test, message, reply: Some(tx), alert_id });
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
        Request::Respond { alert_id, note } => {
            // The popup (if shown here) follows through the report the delivery service sends.
            match delivery.respond(alert_id, note).await {
                Ok(status) => Response::Responded(status),
                Err(e) => Response::Error(format!("the response was not confirmed: {e}")),
            }
        }
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
    /// The texts the person reads.
    words: Words,
    /// One notification per alert (`None` if toasts cannot be shown at all).
    toasts: Option<Toasts>,
    /// Clicks on the icon, turned into presses by the site's rule.
    clicks: Clicks,
    /// Someone's alerts on this responder desktop.
    popups: BTreeMap<AlertId, Popup>,
    /// The count the "more open alerts" notification shows (0: none shown).
    more_shown: usize,
    /// The last news about this sender's alert: which alert, what, who.
    help: Option<(AlertId, NoticeEvent, String)>,
}

impl App {
    /// The state to show and its description.
    fn state(&self) -> (TrayState, String) {
        let hotkey = HotkeySpec::to_string(&self.config.hotkey);
        if let Some(p) = self.pending {
            let left = p.due.saturating_duration_since(Instant::now()).as_secs_f32().ceil();
            return (TrayState::Sending, self.words.tip_countdown(left));
        }
        if self.in_flight.values().any(|warned| *warned) {
            return (TrayState::Attention, self.words.tip_not_delivered(&self.config.fallback));
        }
        if !self.in_flight.is_empty() {
            return (TrayState::Sending, self.words.tip_sending());
        }
        let open = self.open_popups();
        if let Some(newest) = open.first() {
            return (TrayState::Alarm, self.words.tip_alarm(open.len(), &crate::wording::who_where(&newest.b)));
        }
        if let Some(p) = &self.spool_problem {
            return (
                TrayState::Attention,
                format!("alerts cannot be saved on disk ({p}): an SOS still goes out, but is lost if the agent stops before a collector has it"),
            );
        }
        if let Some(None) = &self.online {
            return (TrayState::Offline, self.words.tip_offline(&self.config.fallback));
        }
        if let Some(p) = &self.hotkey_problem {
            return (TrayState::Attention, self.words.tip_no_hotkey(p));
        }
        match &self.help {
            Some((_, NoticeEvent::Acknowledged, name)) => {
                return (TrayState::Acknowledged, self.words.tip_acknowledged(name))
            }
            Some((_, NoticeEvent::Unanswered, _)) => {
                return (TrayState::Attention, self.words.tip_unanswered(&self.config.fallback))
            }
            Some((_, NoticeEvent::Resolved, name)) => return (TrayState::Delivered, format!("resolved by {name}")),
            None => {}
        }
        if let Some((at, from)) = self.cancelled {
            return (TrayState::Delivered, format!("alert cancelled at {} from {}", local_time(at), from.words()));
        }
        if let Some((at, test)) = self.last_delivered {
            return (TrayState::Delivered, self.words.tip_delivered(test, &local_time(at)));
        }
        let contact = match (&self.online, self.last_contact) {
            (Some(Some(c)), Some(at)) => Some(format!("collector {c}, last contact {}", local_time(at))),
            _ => None,
        };
        (TrayState::Ready, self.words.tip_ready(&hotkey, contact))
    }

    /// What the tray should show now.
    fn view(&self) -> TrayView {
        let (state, detail) = self.state();
        TrayView {
            title: self.words.name(),
            state,
            detail,
            can_cancel: self.cancellable.is_some() || self.pending.is_some(),
            show_quit: self.config.show_quit,
            alerts: self
                .open_popups()
                .iter()
                .take(ALERTS_LISTED)
                .map(|p| {
                    let what = if p.b.test { "DRILL" } else { "SOS" };
                    let state = match (p.b.state, p.b.responder.as_str()) {
                        (BroadcastState::Acknowledged, "") => " — someone is responding".to_owned(),
                        (BroadcastState::Acknowledged, name) => format!(" — {name} is responding"),
                        _ => String::new(),
                    };
                    let label =
                        format!("{what} {} — {}{state}", local_time(p.b.triggered_at), crate::wording::who_where(&p.b));
                    (p.b.alert_id, crate::toast::summary_text(&label))
                })
                .collect(),
        }
    }

    /// The alerts on this responder desktop still open (waiting, or being responded to),
    /// newest first.
    fn open_popups(&self) -> Vec<&Popup> {
        let mut open: Vec<&Popup> = self
            .popups
            .values()
            .filter(|p| matches!(p.b.state, BroadcastState::Open | BroadcastState::Acknowledged))
            .collect();
        open.sort_by(|a, b| b.b.triggered_at.cmp(&a.b.triggered_at).then(b.b.alert_id.cmp(&a.b.alert_id)));
        open
    }

    /// Show alert `id`'s popup in its current state (not in silent mode: the tray only).
    fn show_popup(&mut self, id: AlertId, details: bool) {
        if self.config.silent {
            return;
        }
        let (Some(p), Some(t)) = (self.popups.get(&id), &mut self.toasts) else { return };
        let toast = crate::wording::popup(&p.b, p.mine, details, &local_date_time(p.b.triggered_at));
        let mut actions = Vec::new();
        let can_respond = matches!(p.b.state, BroadcastState::Open | BroadcastState::Acknowledged)
            && matches!(p.mine, MyResponse::None | MyResponse::Failed);
        if can_respond {
            let proxy = Mutex::new(self.proxy.clone());
            actions.push(Action {
                key: "respond",
                label: "I'm responding".into(),
                on_choose: Box::new(move || {
                    send(&proxy, UiEvent::Respond(id));
                }),
            });
        }
        let proxy = Mutex::new(self.proxy.clone());
        actions.push(Action {
            key: "details",
            label: "Details".into(),
            on_choose: Box::new(move || {
                send(&proxy, UiEvent::PopupDetails(id));
            }),
        });
        t.offer(Topic::Popup(id), toast, actions);
    }

    /// A newer state of someone's alert, pushed to this responder desktop.
    fn popup(&mut self, b: AlertBroadcast) {
        let id = b.alert_id;
        let own_open = self.open_popups().iter().filter(|p| p.own).count();
        let popup = self.popups.entry(id).or_insert_with(|| Popup {
            b: b.clone(),
            mine: MyResponse::None,
            own: own_open < POPUPS_SHOWN,
        });
        popup.b = b;
        if popup.own {
            self.show_popup(id, false);
        }
        // What has no popup of its own is counted in one notification.
        let more = self.open_popups().iter().filter(|p| !p.own).count();
        if more != self.more_shown && !self.config.silent {
            if let Some(t) = &mut self.toasts {
                if more > 0 {
                    t.show(Topic::MorePopups, crate::wording::more_popups(more));
                } else {
                    t.show(Topic::MorePopups, Toast::new("No more open alerts", "", Importance::Normal));
                }
            }
        }
        self.more_shown = more;
        // Forget the oldest closed alerts beyond the ones kept.
        let closed: Vec<(u64, AlertId)> = self
            .popups
            .values()
            .filter(|p| !matches!(p.b.state, BroadcastState::Open | BroadcastState::Acknowledged))
            .map(|p| (p.b.triggered_at, p.b.alert_id))
            .collect();
        if closed.len() > CLOSED_POPUPS_KEPT {
            let mut closed = closed;
            closed.sort();
            for (_, old) in closed.iter().take(closed.len() - CLOSED_POPUPS_KEPT) {
                self.popups.remove(old);
            }
        }
    }

    /// The outcome of this desktop's "I'm responding".
    fn responded(&mut self, alert_id: AlertId, outcome: Result<RespondStatus, String>) {
        let mine = match &outcome {
            Ok(RespondStatus::Acknowledged) => MyResponse::Responding,
            Ok(RespondStatus::Already | RespondStatus::Closed) => MyResponse::None,
            Err(_) => MyResponse::Failed,
        };
        info!(%alert_id, ?outcome, "response outcome");
        if let Some(p) = self.popups.get_mut(&alert_id) {
            p.mine = mine;
            if p.own {
                self.show_popup(alert_id, false);
            }
        }
    }

    /// News about an alert this agent sent.
    fn notice(&mut self, n: sos_shared::protocol::ResponderNotice) {
        let toast = match n.event {
            NoticeEvent::Acknowledged => self.words.help_coming(&n.responder, &n.note),
            NoticeEvent::Unanswered => self.words.unanswered(&self.config.fallback),
            NoticeEvent::Resolved => self.words.resolved_by(&n.responder, &n.note),
        };
        self.help = Some((n.alert_id, n.event, n.responder.clone()));
        self.toast(Topic::Alert(n.alert_id), toast);
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

    /// Show `toast` as `topic`'s one notification, replacing what it showed (not in silent mode).
    fn toast(&mut self, topic: Topic, toast: Toast) {
        if let (false, Some(t)) = (self.config.silent, &mut self.toasts) {
            t.show(topic, toast);
        }
    }

    fn trigger(
        &mut self,
        source: &'static str,
        test: bool,
        message: &str,
        debounce: bool,
        alert_id: Option<AlertId>,
    ) -> Option<AlertId> {
        let now = Instant::now();
        if debounce {
            if self.last_press.get(source).is_some_and(|t| now.duration_since(*t) < DEBOUNCE) {
                info!(source, "press ignored: the same press less than 2 s ago (key repeat, double click)");
                return None;
            }
            self.last_press.insert(source, now);
        }
        let id = self.delivery.trigger(test, message, alert_id);
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
                TrayEvent::Click => UiEvent::Trigger {
                    source: "tray click",
                    test: false,
                    message: String::new(),
                    reply: None,
                    alert_id: None,
                },
                TrayEvent::Menu(id) => UiEvent::Menu(id),
                TrayEvent::Alert(id) => UiEvent::PopupDetails(id),
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
            send(
                &p,
                UiEvent::Trigger { source: "hotkey", test: false, message: String::new(), reply: None, alert_id: None },
            );
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
            UiEvent::Trigger { source, test, message, reply, alert_id } => {
                // A click on the icon is a press only as the site's rule says (a double-click
                // by default).
                if source == "tray click" {
                    if let Click::First(n) = self.clicks.click(Instant::now()) {
                        if self.pending.is_some() {
                            // Half of a double-click that would stop the countdown.
                            return;
                        }
                        let proxy = Mutex::new(self.proxy.clone());
                        self.runtime.spawn(async move {
                            tokio::time::sleep(crate::tray::DOUBLE_CLICK).await;
                            send(&proxy, UiEvent::ClickOver(n));
                        });
                        return;
                    }
                }
                // Presses are debounced and may wait out a cancel window; explicit requests
                // (IPC, menu) are neither.
                let press = source == "hotkey" || source == "tray click";
                if press && self.config.cancel_window_ms > 0 {
                    self.press_with_window(source);
                } else {
                    let id = self.trigger(source, test, &message, press, alert_id);
                    if let Some(r) = reply {
                        let _ = r.send(id);
                    }
                }
            }
            UiEvent::WindowOver(n) => {
                if self.pending.is_some_and(|p| p.n == n) {
                    self.pending = None;
                    if let Some(id) = self.trigger("hotkey or click, after the cancel window", false, "", false, None) {
                        // The countdown is over: its notification now speaks of the alert.
                        if let Some(t) = &mut self.toasts {
                            t.rename(Topic::Press(n), Topic::Alert(id));
                        }
                        self.toast(Topic::Alert(id), self.words.sending(false));
                    }
                }
            }
            UiEvent::ClickOver(n) => {
                if self.clicks.lone(n) && self.pending.is_none() && self.in_flight.is_empty() {
                    info!("a single click on the icon sent nothing (a double-click sends)");
                    let hotkey = HotkeySpec::to_string(&self.config.hotkey);
                    self.toast(Topic::Hint, self.words.lone_click(&hotkey));
                }
            }
            UiEvent::AbortPress(n) => {
                if self.pending.is_some_and(|p| p.n == n) {
                    self.abort_pending("toast click");
                }
            }
            UiEvent::Menu(id) => match id {
                ids::SEND => {
                    self.trigger("menu", false, "", false, None);
                }
                ids::TEST => {
                    self.trigger("menu", true, "", false, None);
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
                self.toast(Topic::Alert(alert_id), self.words.cancelled());
            }
            UiEvent::Respond(alert_id) => {
                if let Some(p) = self.popups.get_mut(&alert_id) {
                    if matches!(p.mine, MyResponse::Sending | MyResponse::Responding) {
                        return;
                    }
                    p.mine = MyResponse::Sending;
                    info!(%alert_id, "I'm responding: chosen on the popup");
                    self.show_popup(alert_id, false);
                    self.delivery.respond_later(alert_id, String::new());
                }
            }
            UiEvent::PopupDetails(alert_id) => self.show_popup(alert_id, true),
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
        let now = Instant::now();
        if let Some(p) = self.pending {
            if source == "tray click" {
                if p.by_click && now.duration_since(p.at) < DEBOUNCE {
                    info!("icon clicked again right after it fired: the same press, not a request to stop it");
                } else {
                    self.abort_pending("icon click");
                }
            }
            return;
        }
        self.presses += 1;
        let n = self.presses;
        let window = Duration::from_millis(self.config.cancel_window_ms);
        self.pending = Some(Pending { n, due: now + window, at: now, by_click: source == "tray click" });
        info!(source, window_ms = window.as_millis() as u64, "SOS pressed; sending when the cancel window is over");
        let proxy = Mutex::new(self.proxy.clone());
        self.runtime.spawn(async move {
            tokio::time::sleep(window).await;
            send(&proxy, UiEvent::WindowOver(n));
        });
        if let (false, Some(t)) = (self.config.silent, &mut self.toasts) {
            let proxy = Mutex::new(self.proxy.clone());
            t.offer(
                Topic::Press(n),
                self.words.countdown(window.as_secs_f32().ceil() as u64),
                vec![Action {
                    key: "stop",
                    label: self.words.stop_label().into(),
                    on_choose: Box::new(move || {
                        send(&proxy, UiEvent::AbortPress(n));
                    }),
                }],
            );
        }
    }

    fn abort_pending(&mut self, how: &str) {
        if let Some(p) = self.pending.take() {
            info!(how, "SOS cancelled during its cancel window; nothing was sent");
            self.toast(Topic::Press(p.n), self.words.stopped());
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
                if self.help.as_ref().is_some_and(|(id, _, _)| *id != alert_id) {
                    self.help = None;
                }
                // A resent alert says when it was pressed, not only when it arrived.
                let mut toast = self.words.delivered(test, &local_time(at));
                if at.saturating_sub(pressed_at) >= 10 {
                    toast.summary.push_str(&format!(" (pressed at {})", local_date_time(pressed_at)));
                }
                self.toast(Topic::Alert(alert_id), toast);
            }
            Report::NotSpooled { alert_id, reason } => {
                warn!(%alert_id, %reason, "alert kept in memory only");
                let mut toast = self.words.not_saved();
                toast.body = format!("{} ({reason})", toast.body);
                self.toast(Topic::Alert(alert_id), toast);
            }
            Report::Rejected { alert_id, reason } => {
                if let Some(id) = alert_id {
                    self.in_flight.remove(&id);
                }
                let topic = alert_id.map_or(Topic::Hint, Topic::Alert);
                let toast = Toast::new(
                    "An alert can never be sent",
                    format!("{reason}. {}", self.config.fallback),
                    Importance::Critical,
                );
                self.toast(topic, toast);
            }
            Report::Discarded { alert_id } => {
                self.in_flight.remove(&alert_id);
            }
            Report::SpoolProblem(p) => self.spool_problem = p,
            Report::NotDeliveredYet { alert_id, test } => {
                self.in_flight.insert(alert_id, true);
                self.toast(Topic::Alert(alert_id), self.words.not_delivered_yet(test, &self.config.fallback));
            }
            Report::Connectivity(c) => {
                if c.is_some() {
                    self.last_contact = Some(sos_shared::unix_now());
                }
                self.online = Some(c);
            }
            Report::Cancelled { alert_id, confirmed: true } => {
                info!(%alert_id, "cancellation confirmed");
                self.help = None;
                self.cancelled = Some((sos_shared::unix_now(), CancelledFrom::Tray));
                self.toast(Topic::Alert(alert_id), self.words.cancelled());
            }
            Report::Cancelled { alert_id, confirmed: false } => {
                let toast = self.words.cancel_not_confirmed(&alert_id.to_string(), &self.config.fallback);
                self.toast(Topic::Alert(alert_id), toast);
            }
            Report::Popup(b) => self.popup(b),
            Report::Notice(n) => self.notice(n),
            Report::Responded { alert_id, outcome } => self.responded(alert_id, outcome),
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
