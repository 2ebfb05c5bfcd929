//! Desktop toasts: one notification per alert, replaced in place as the alert's state changes,
//! so that a state that is over ("Sending in 5 s", "NOT sent yet") never stays on screen beside
//! the one that replaced it ("Received").
//!
//! Toasts are shown from their own thread and never waited on: a hung or missing notification
//! daemon must never stall an SOS or the tray. Each [`Topic`] (a press in its cancel window, an
//! alert) has its own task there, which applies its changes in order and skips a change that a
//! newer one has already made obsolete.
//!
//! ## Platform-specific
//! - **Linux/BSD:** `org.freedesktop.Notifications` on the session bus (notify-rust on tokio).
//!   A topic's later toasts are sent with the id the daemon returned for its first
//!   (`replaces_id`), which replaces it in place. The way out of a cancel window is offered as
//!   an action only where the daemon advertises the `actions` capability; the toast's text
//!   never says "click here", because what a click on a toast does is the daemon's choice (under
//!   dunst's default configuration a left click closes the toast, and only a middle click or
//!   its context menu chooses an action). Body text is escaped where the daemon parses markup.
//! - **Windows:** a toast under the agent's AppUserModelID, [`APP_ID`], which the installer's
//!   Start-menu shortcut registers (installer/windows/sos-agent.wxs); each state is a new toast,
//!   without actions.
//! - **macOS:** Notification Center, under the app bundle's identifier, [`APP_ID`]
//!   (installer/macos/Info.plist); each state is a new toast, without actions.

use std::collections::VecDeque;
use std::time::Duration;

use sos_shared::AlertId;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// The identity the agent's toasts are shown under on Windows (AppUserModelID) and macOS (bundle
/// identifier). The installers declare the same string; a test checks that they do.
pub const APP_ID: &str = "org.sos-button.agent";

/// How long a toast may take to reach the notification daemon before we stop waiting for it.
const SHOW_TIMEOUT: Duration = Duration::from_secs(10);
/// Topics whose notification is remembered; an older one's later state is a new toast. Above
/// the responder popups a desktop shows at once ([`crate::responder::POPUPS_SHOWN`]) plus the
/// sender's own alerts.
const TOPICS_KEPT: usize = 32;

/// How important a toast is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Importance {
    /// Informational (sending, received, stopped).
    Normal,
    /// Needs the person's attention (not delivered): stays until dismissed where supported.
    Critical,
    /// An alarm on a responder's desktop: urgency critical and never expires, until acted
    /// upon or replaced.
    Alarm,
}

/// What a toast speaks of. Each topic has one notification at a time, replaced in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A press waiting out its cancel window, by its number; it becomes an [`Topic::Alert`]
    /// when it is sent ([`Toasts::rename`]).
    Press(u64),
    /// An alert, from the press to its delivery or cancellation.
    Alert(AlertId),
    /// A hint about the button itself (e.g. a single click that sent nothing).
    Hint,
    /// Someone else's alert on this responder desktop: its popup, replaced as the alert changes.
    Popup(AlertId),
    /// "More open alerts": the one notification for the alerts beyond those shown as popups.
    MorePopups,
}

/// One state of a topic, as the person reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toast {
    /// The first, bold line.
    pub summary: String,
    /// The text under it (plain text; escaped where the daemon reads markup).
    pub body: String,
    /// How it is shown.
    pub importance: Importance,
}

impl Toast {
    /// A toast of `importance`.
    pub fn new(summary: impl Into<String>, body: impl Into<String>, importance: Importance) -> Self {
        Toast { summary: summary.into(), body: body.into(), importance }
    }
}

/// An action offered on a toast (a way out of a cancel window, "I'm responding"), where the
/// daemon supports actions.
pub struct Action {
    /// The action's key on the bus (`respond`, `details`, `stop`).
    pub key: &'static str,
    /// The button's label.
    pub label: String,
    /// Called once if the person chooses it.
    pub on_choose: Box<dyn FnOnce() + Send>,
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Action").field("key", &self.key).field("label", &self.label).finish_non_exhaustive()
    }
}

/// A change to a topic's notification: show this state in its place, with its actions.
#[derive(Debug)]
#[cfg_attr(not(all(unix, not(target_os = "macos"))), allow(dead_code))]
struct Change(Toast, Vec<Action>);

/// The agent's toasts, one notification per [`Topic`]. Owned by the UI loop; nothing here
/// blocks.
#[derive(Debug)]
pub struct Toasts {
    /// The toast thread's runtime.
    runtime: tokio::runtime::Handle,
    /// Each live topic's queue of changes, oldest topic first.
    topics: VecDeque<(Topic, mpsc::UnboundedSender<Change>)>,
    /// The name the toasts are shown under.
    appname: &'static str,
    /// Ends the toast thread when the agent drops this.
    _stop: oneshot::Sender<()>,
}

impl Toasts {
    /// Start the toast thread. Toasts are shown under `appname` where the desktop shows one.
    ///
    /// # Errors
    /// If the thread or its runtime cannot be created.
    pub fn start(appname: &'static str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new().name("sos-toast".into()).spawn(move || {
            let _ = runtime.block_on(stopped);
        })?;
        Ok(Toasts { runtime: handle, topics: VecDeque::new(), appname, _stop: stop })
    }

    /// Show `toast` as `topic`'s state, replacing what that topic showed.
    pub fn show(&mut self, topic: Topic, toast: Toast) {
        self.change(topic, Change(toast, Vec::new()));
    }

    /// As [`Self::show`], with `actions` offered where the notification daemon supports
    /// actions; the one chosen is called (once).
    pub fn offer(&mut self, topic: Topic, toast: Toast, actions: Vec<Action>) {
        self.change(topic, Change(toast, actions));
    }

    /// From now on `from`'s notification is `to`'s (a press that became an alert).
    pub fn rename(&mut self, from: Topic, to: Topic) {
        self.topics.retain(|(t, _)| *t != to);
        if let Some(entry) = self.topics.iter_mut().find(|(t, _)| *t == from) {
            entry.0 = to;
        }
    }

    fn change(&mut self, topic: Topic, change: Change) {
        let at = self.topics.iter().position(|(t, queue)| *t == topic && !queue.is_closed());
        let queue = match at {
            Some(i) => &self.topics[i].1,
            None => {
                self.topics.retain(|(t, _)| *t != topic);
                if self.topics.len() >= TOPICS_KEPT {
                    self.topics.pop_front();
                }
                let (tx, rx) = mpsc::unbounded_channel();
                self.runtime.spawn(platform::topic(self.appname, rx));
                self.topics.push_back((topic, tx));
                &self.topics.back().expect("just pushed").1
            }
        };
        if queue.send(change).is_err() {
            warn!(?topic, "the toast thread has ended; toast not shown");
        }
    }
}

/// The newest of the changes waiting in `changes`, starting from `first`: a state that a newer
/// one replaces is never shown.
fn newest(first: Change, changes: &mut mpsc::UnboundedReceiver<Change>) -> Change {
    let mut change = first;
    while let Ok(newer) = changes.try_recv() {
        change = newer;
    }
    change
}

/// `text` fit for a toast's summary line, which is plain text but which some daemons render as
/// markup (dunst's default format puts it in `<b>…</b>`): the markup characters become
/// look-alikes, and control characters spaces, so that text from elsewhere (a sender's name, a
/// location) can neither inject markup nor vanish as broken markup.
pub fn summary_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => '‹',
            '>' => '›',
            '&' => '＆',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

/// `text` with the characters freedesktop body markup gives a meaning escaped (a `fallback` such
/// as "Call R&D <ext. 12>" must read as written, not vanish as broken markup).
pub fn escape_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(all(unix, not(target_os = "macos")))]
mod platform {
    use notify_rust::{Notification, NotificationHandle, NotificationResponse, Timeout, Urgency};

    use super::*;
    /// How often a toast is tried when the daemon refuses it or is not on the bus yet (an agent
    /// that starts with the session can resend a spooled alert before the daemon is up).
    const SHOW_ATTEMPTS: u32 = 3;

    /// What the daemon can do, as far as the agent cares.
    #[derive(Debug, Clone, Copy, Default)]
    struct Capabilities {
        /// It shows actions (buttons, a menu) and reports the one chosen.
        actions: bool,
        /// It reads the body as markup.
        markup: bool,
    }

    /// Ask the daemon; `None` if it does not answer (yet).
    async fn capabilities() -> Option<Capabilities> {
        let asked = tokio::task::spawn_blocking(notify_rust::get_capabilities);
        match tokio::time::timeout(SHOW_TIMEOUT, asked).await {
            Ok(Ok(Ok(caps))) => {
                debug!(?caps, "notification daemon capabilities");
                Some(Capabilities {
                    actions: caps.iter().any(|c| c == "actions"),
                    markup: caps.iter().any(|c| c == "body-markup"),
                })
            }
            Ok(Ok(Err(e))) => {
                debug!(error = %e, "the notification daemon's capabilities are unknown");
                None
            }
            _ => None,
        }
    }

    /// Send `n`, retrying while the daemon refuses it or is not on the bus yet.
    async fn send(n: &Notification) -> Option<NotificationHandle> {
        for attempt in 1..=SHOW_ATTEMPTS {
            match tokio::time::timeout(SHOW_TIMEOUT, n.show_async()).await {
                Ok(Ok(handle)) => return Some(handle),
                Ok(Err(e)) if attempt < SHOW_ATTEMPTS => {
                    debug!(error = %e, attempt, "toast not shown; trying again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(Err(e)) => warn!(error = %e, "the toast could not be shown (is a notification daemon running?)"),
                Err(_) => {
                    warn!("the notification daemon did not answer within {SHOW_TIMEOUT:?}");
                    return None;
                }
            }
        }
        None
    }

    /// What the person did with a toast that offers an action.
    async fn response(handle: &NotificationHandle) -> Option<NotificationResponse> {
        let mut got = None;
        handle.wait_for_action_async(|r| got = Some(r.clone())).await;
        got
    }

    /// One topic's notification: applies its changes in order, each replacing the last.
    pub(super) async fn topic(appname: &'static str, mut changes: mpsc::UnboundedReceiver<Change>) {
        // The daemon's id for this topic's notification (0 until it is first shown).
        let mut id = 0u32;
        let mut caps: Option<Capabilities> = None;
        let mut next = changes.recv().await;
        while let Some(first) = next {
            let Change(toast, mut actions) = newest(first, &mut changes);
            if caps.is_none() {
                caps = capabilities().await;
            }
            let caps = caps.unwrap_or_default();
            if !caps.actions {
                actions.clear();
            }
            let mut n = Notification::new();
            n.appname(appname)
                .summary(&summary_text(&toast.summary))
                .body(&if caps.markup { escape_markup(&toast.body) } else { toast.body.clone() })
                .urgency(match toast.importance {
                    Importance::Normal => Urgency::Normal,
                    Importance::Critical | Importance::Alarm => Urgency::Critical,
                })
                .id(id);
            if toast.importance == Importance::Alarm {
                n.timeout(Timeout::Never);
            }
            for a in &actions {
                n.action(a.key, &a.label);
            }
            let Some(handle) = send(&n).await else {
                next = changes.recv().await;
                continue;
            };
            debug!(id = handle.id(), replaces = id, summary = %toast.summary, "toast shown");
            id = handle.id();
            next = if actions.is_empty() {
                // Nothing to wait for on this toast: let its bus connection go.
                drop(handle);
                changes.recv().await
            } else {
                // Wait for the person's choice until the next change replaces this toast (and
                // its actions).
                tokio::select! {
                    change = changes.recv() => change,
                    r = response(&handle) => {
                        if let Some(NotificationResponse::Action(key)) = r {
                            if let Some(a) = actions.into_iter().find(|a| a.key == key) {
                                (a.on_choose)();
                            }
                        }
                        changes.recv().await
                    }
                }
            };
        }
    }
}

#[cfg(not(all(unix, not(target_os = "macos"))))]
mod platform {
    use super::*;

    /// The notification under the agent's identity.
    fn notification(appname: &str) -> notify_rust::Notification {
        let mut n = notify_rust::Notification::new();
        n.appname(appname);
        #[cfg(windows)]
        n.app_id(APP_ID);
        #[cfg(target_os = "macos")]
        {
            static SET: std::sync::Once = std::sync::Once::new();
            SET.call_once(|| {
                if let Err(e) = notify_rust::set_application(APP_ID) {
                    warn!(error = %e, "toasts will not show under the SOS app (is the agent installed as SOS.app?)");
                }
            });
        }
        n
    }

    /// One topic's toasts: each state a new toast, in order, without actions (the tray icon and
    /// its menu are the way out of a cancel window here).
    pub(super) async fn topic(appname: &'static str, mut changes: mpsc::UnboundedReceiver<Change>) {
        let mut next = changes.recv().await;
        while let Some(first) = next {
            let Change(toast, _) = newest(first, &mut changes);
            let shown = tokio::task::spawn_blocking(move || {
                let mut n = notification(appname);
                n.summary(&toast.summary).body(&toast.body);
                n.show().map(|_| ()).map_err(|e| e.to_string())
            });
            match tokio::time::timeout(SHOW_TIMEOUT, shown).await {
                Ok(Ok(Ok(()))) => debug!("toast shown"),
                Ok(Ok(Err(e))) => warn!(error = %e, "the toast could not be shown"),
                _ => warn!("the toast was not shown within {SHOW_TIMEOUT:?}"),
            }
            next = changes.recv().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped_and_plain_text_kept() {
        assert_eq!(escape_markup("Call R&D <ext. 12>, it's 555"), "Call R&amp;D &lt;ext. 12&gt;, it's 555");
        assert_eq!(escape_markup("Nothing was sent."), "Nothing was sent.");
        assert_eq!(summary_text("<b>Bob</b> & co\u{7}"), "‹b›Bob‹/b› ＆ co ");
    }
}
