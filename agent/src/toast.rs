//! Desktop toasts, shown off the UI thread and never waited on: a hung or missing notification
//! daemon must never stall an SOS or the tray.
//!
//! ## Platform-specific
//! - **Linux/BSD:** `org.freedesktop.Notifications` on the session bus (notify-rust).
//! - **Windows:** a toast under the agent's AppUserModelID, [`APP_ID`], which the installer's
//!   Start-menu shortcut registers (installer/windows/sos-agent.wxs).
//! - **macOS:** Notification Center, under the app bundle's identifier, [`APP_ID`]
//!   (installer/macos/Info.plist).

use std::time::Duration;

/// The identity the agent's toasts are shown under on Windows (AppUserModelID) and macOS (bundle
/// identifier). The installers declare the same string; a test checks that they do.
pub const APP_ID: &str = "org.sos-button.agent";

/// A notification under the agent's identity.
fn notification() -> notify_rust::Notification {
    let mut n = notify_rust::Notification::new();
    n.appname("SOS");
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

use tracing::{debug, warn};

/// How long a toast may take to reach the notification daemon before we stop waiting for it.
const SHOW_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a toast is tried when the daemon refuses it or is not on the bus yet (an agent that
/// starts with the session can resend a spooled alert before the daemon is up).
const SHOW_ATTEMPTS: u32 = 3;

/// How important a toast is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Importance {
    /// Informational (delivered).
    Normal,
    /// Needs the person's attention (not delivered): stays until dismissed where supported.
    Critical,
}

/// Show a toast; returns at once.
pub fn show(summary: String, body: String, importance: Importance) {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("sos-toast".into()).spawn(move || {
        let mut n = notification();
        n.summary(&summary).body(&body);
        #[cfg(all(unix, not(target_os = "macos")))]
        n.urgency(match importance {
            Importance::Normal => notify_rust::Urgency::Normal,
            Importance::Critical => notify_rust::Urgency::Critical,
        });
        #[cfg(not(all(unix, not(target_os = "macos"))))]
        let _ = importance;
        let mut outcome = Err(String::new());
        for attempt in 1..=SHOW_ATTEMPTS {
            outcome = n.show().map(|_| ()).map_err(|e| e.to_string());
            match &outcome {
                Ok(()) => break,
                Err(e) if attempt < SHOW_ATTEMPTS => {
                    debug!(error = %e, attempt, "toast not shown; trying again in 1 s");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(_) => {}
            }
        }
        let _ = tx.send(outcome);
    });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot show a toast");
        return;
    }
    // Watch the outcome from another thread so that nobody waits on the daemon.
    let _ =
        std::thread::Builder::new().name("sos-toast-watch".into()).spawn(move || match rx.recv_timeout(SHOW_TIMEOUT) {
            Ok(Ok(())) => debug!("toast shown"),
            Ok(Err(e)) => warn!(error = %e, "the toast could not be shown (is a notification daemon running?)"),
            Err(_) => warn!("the notification daemon did not answer within {SHOW_TIMEOUT:?}"),
        });
}

/// Show a toast that calls `on_click` if the person clicks it (its default action), where the
/// desktop supports actions; returns at once.
///
/// ## Platform-specific
/// - **Linux/BSD:** the `default` action of the freedesktop notification.
/// - **Windows, macOS:** shown without the action; the tray icon is the way to cancel.
pub fn show_clickable(summary: String, body: String, on_click: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new().name("sos-toast-action".into()).spawn(move || {
        let mut n = notification();
        n.summary(&summary).body(&body);
        #[cfg(all(unix, not(target_os = "macos")))]
        {
            n.action("default", "Cancel the SOS").urgency(notify_rust::Urgency::Critical);
            match n.show() {
                Ok(handle) => handle.wait_for_action(|action| {
                    if action == "default" {
                        on_click();
                    }
                }),
                Err(e) => warn!(error = %e, "the toast could not be shown"),
            }
        }
        #[cfg(not(all(unix, not(target_os = "macos"))))]
        {
            let _ = on_click;
            if let Err(e) = n.show() {
                warn!(error = %e, "the toast could not be shown");
            }
        }
    });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot show a toast");
    }
}
