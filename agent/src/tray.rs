//! The tray icon's content, the same on every platform: one icon per state, a tooltip that says
//! which, and the menu. The platform shows it ([`crate::platform::Tray`]).
//!
//! ## Platform-specific
//! - **Linux/BSD:** a StatusNotifierItem on the session bus (ksni, on the agent's tokio
//!   runtime; no GTK); panels that show SNI items (KDE, GNOME with the AppIndicator extension,
//!   XFCE, waybar…) display it, and a click arrives as the item's `Activate` method.
//! - **Windows, macOS:** the native notification-area / status-bar item (tray-icon).

use std::time::{Duration, Instant};

use sos_shared::AlertId;

use crate::wording::TrayClick;

/// What the icon shows, in order of how much it needs the person's attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrayState {
    /// Armed: a press sends an SOS.
    Ready,
    /// An SOS is on its way and not yet acknowledged.
    Sending,
    /// The last SOS was acknowledged.
    Delivered,
    /// No collector answers heartbeats: an SOS would be spooled and retried.
    Offline,
    /// Something the person must know: an SOS not delivered yet, or the hotkey unavailable.
    Attention,
    /// The sender's last alert was acknowledged by a responder: help is on the way.
    Acknowledged,
    /// A responder desktop: someone's alert is open (the menu lists it).
    Alarm,
}

impl TrayState {
    /// The word used in the tooltip, the status line and `sos-agent trigger --status`.
    pub fn word(self) -> &'static str {
        match self {
            TrayState::Ready => "ready",
            TrayState::Sending => "sending",
            TrayState::Delivered => "delivered",
            TrayState::Offline => "offline",
            TrayState::Attention => "attention",
            TrayState::Acknowledged => "acknowledged",
            TrayState::Alarm => "alarm",
        }
    }

    /// Fill colour of the icon (RGB). Shapes differ too, for colour-blind users.
    fn colour(self) -> [u8; 3] {
        match self {
            TrayState::Ready => [0x2e, 0x7d, 0x32],        // green
            TrayState::Sending => [0xf9, 0xa8, 0x25],      // amber
            TrayState::Delivered => [0x15, 0x65, 0xc0],    // blue
            TrayState::Offline => [0x75, 0x75, 0x75],      // grey
            TrayState::Attention => [0xc6, 0x28, 0x28],    // red
            TrayState::Acknowledged => [0x00, 0x89, 0x7b], // teal
            TrayState::Alarm => [0x8e, 0x24, 0xaa],        // purple
        }
    }
}

/// Side of the square icon, pixels.
pub const ICON_SIZE: u32 = 32;

/// A 32×32 RGBA icon: a filled disc in the state's colour with a white mark — a dot (ready), a
/// ring (sending), a bar (delivered), nothing (offline), an exclamation mark (attention), a
/// vertical bar (acknowledged), a cross (alarm).
pub fn icon_rgba(state: TrayState) -> Vec<u8> {
    const N: i32 = 32;
    let [r, g, b] = state.colour();
    let mut rgba = vec![0u8; (N * N * 4) as usize];
    for y in 0..N {
        for x in 0..N {
            let (dx, dy) = (x * 2 - (N - 1), y * 2 - (N - 1)); // doubled offsets from the centre
            let d2 = dx * dx + dy * dy;
            let inside = d2 <= (N - 2) * (N - 2);
            if !inside {
                continue;
            }
            let mark = match state {
                TrayState::Ready => d2 <= 8 * 8,
                TrayState::Sending => (12 * 12..=18 * 18).contains(&d2),
                TrayState::Delivered => dy.abs() <= 3 && dx.abs() <= 16,
                TrayState::Offline => false,
                TrayState::Attention => dx.abs() <= 3 && ((-18..=6).contains(&dy) || (12..=18).contains(&dy)),
                TrayState::Acknowledged => dx.abs() <= 3 && dy.abs() <= 16,
                TrayState::Alarm => (dx.abs() <= 3 && dy.abs() <= 18) || (dy.abs() <= 3 && dx.abs() <= 18),
            };
            let i = ((y * N + x) * 4) as usize;
            let px = if mark { [0xff, 0xff, 0xff, 0xff] } else { [r, g, b, 0xff] };
            rgba[i..i + 4].copy_from_slice(&px);
        }
    }
    rgba
}

/// Menu items, in order, by id.
pub mod ids {
    /// Send SOS.
    pub const SEND: &str = "send";
    /// Send a test alert.
    pub const TEST: &str = "test";
    /// Cancel the last alert (false alarm).
    pub const CANCEL: &str = "cancel";
    /// The status line (disabled).
    pub const STATUS: &str = "status";
    /// Quit.
    pub const QUIT: &str = "quit";
}

/// What the person did with the tray.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrayEvent {
    /// A (left) click on the icon.
    Click,
    /// A menu item, by its id in [`ids`].
    Menu(&'static str),
    /// An open alert chosen in a responder desktop's menu.
    Alert(AlertId),
}

/// What the tray shows; the platform renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrayView {
    /// The item's title and the tooltip's first word (the wording's name).
    pub title: &'static str,
    /// The icon.
    pub state: TrayState,
    /// Tooltip and status line.
    pub detail: String,
    /// Whether "Cancel last alert" is enabled.
    pub can_cancel: bool,
    /// Whether the menu offers Quit.
    pub show_quit: bool,
    /// A responder desktop's open alerts, newest first, as the menu lists them (at most
    /// [`ALERTS_LISTED`]).
    pub alerts: Vec<(AlertId, String)>,
}

/// How many open alerts the menu lists; the status line counts them all.
pub const ALERTS_LISTED: usize = 10;

/// One menu entry: id, label, enabled. `None` is a separator.
pub fn menu(view: &TrayView) -> Vec<Option<(&'static str, String, bool)>> {
    let mut m = vec![
        Some((ids::SEND, "Send SOS".to_owned(), true)),
        Some((ids::TEST, "Send test alert".to_owned(), true)),
        Some((ids::CANCEL, "Cancel last alert (false alarm)".to_owned(), view.can_cancel)),
        None,
        Some((ids::STATUS, view.detail.clone(), false)),
    ];
    if view.show_quit {
        m.push(None);
        m.push(Some((ids::QUIT, "Quit SOS".to_owned(), true)));
    }
    m
}

/// The longest gap between the two clicks of a double-click on the icon. Longer than a desktop's
/// double-click time (about 0.5 s): a person under stress, or on a touchpad, clicks slowly.
pub const DOUBLE_CLICK: Duration = Duration::from_millis(1500);

/// What a click on the icon amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Click {
    /// A press: the SOS button was pressed (or, in a cancel window, the press is stopped).
    Press,
    /// The first click of a possible double-click, numbered: if no second click comes within
    /// [`DOUBLE_CLICK`], it was a lone click ([`Clicks::lone`]).
    First(u64),
}

/// Turns clicks on the icon into presses by the site's [`TrayClick`] rule.
#[derive(Debug)]
pub struct Clicks {
    rule: TrayClick,
    /// The first click of a double-click in progress: its number and when.
    first: Option<(u64, Instant)>,
    /// First clicks so far, to number them.
    count: u64,
}

impl Clicks {
    /// Clicks under `rule`.
    pub fn new(rule: TrayClick) -> Self {
        Clicks { rule, first: None, count: 0 }
    }

    /// A click at `now`.
    pub fn click(&mut self, now: Instant) -> Click {
        match (self.rule, self.first.take()) {
            (TrayClick::Single, _) => Click::Press,
            (TrayClick::Double, Some((_, at))) if now.saturating_duration_since(at) <= DOUBLE_CLICK => Click::Press,
            (TrayClick::Double, _) => {
                self.count += 1;
                self.first = Some((self.count, now));
                Click::First(self.count)
            }
        }
    }

    /// Whether first click `n` is still alone (no second click came); forgets it.
    pub fn lone(&mut self, n: u64) -> bool {
        if self.first.is_some_and(|(m, _)| m == n) {
            self.first = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_double_click_is_a_press_and_a_lone_click_is_not() {
        let t0 = Instant::now();
        let mut c = Clicks::new(TrayClick::Double);
        assert_eq!(c.click(t0), Click::First(1));
        assert_eq!(c.click(t0 + Duration::from_millis(400)), Click::Press);
        assert!(!c.lone(1), "paired");
        // Too slow: two lone clicks.
        assert_eq!(c.click(t0 + Duration::from_secs(10)), Click::First(2));
        assert_eq!(c.click(t0 + Duration::from_secs(12)), Click::First(3));
        assert!(!c.lone(2), "replaced by the next first click");
        assert!(c.lone(3));
        assert!(!c.lone(3), "reported once");
        // Four quick clicks are two presses.
        let t1 = t0 + Duration::from_secs(20);
        let presses = (0..4).filter(|i| c.click(t1 + Duration::from_millis(100 * i)) == Click::Press).count();
        assert_eq!(presses, 2);
        let mut s = Clicks::new(TrayClick::Single);
        assert_eq!(s.click(t0), Click::Press);
        assert_eq!(s.click(t0), Click::Press);
    }
}
