//! The tray icon's content, the same on every platform: one icon per state, a tooltip that says
//! which, and the menu. The platform shows it ([`crate::platform::Tray`]).
//!
//! ## Platform-specific
//! - **Linux/BSD:** a StatusNotifierItem on the session bus (ksni, on the agent's tokio
//!   runtime; no GTK); panels that show SNI items (KDE, GNOME with the AppIndicator extension,
//!   XFCE, waybar…) display it, and a click arrives as the item's `Activate` method.
//! - **Windows, macOS:** the native notification-area / status-bar item (tray-icon).

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
        }
    }

    /// Fill colour of the icon (RGB). Shapes differ too, for colour-blind users.
    fn colour(self) -> [u8; 3] {
        match self {
            TrayState::Ready => [0x2e, 0x7d, 0x32],     // green
            TrayState::Sending => [0xf9, 0xa8, 0x25],   // amber
            TrayState::Delivered => [0x15, 0x65, 0xc0], // blue
            TrayState::Offline => [0x75, 0x75, 0x75],   // grey
            TrayState::Attention => [0xc6, 0x28, 0x28], // red
        }
    }
}

/// Side of the square icon, pixels.
pub const ICON_SIZE: u32 = 32;

/// A 32×32 RGBA icon: a filled disc in the state's colour with a white mark — a dot (ready), a
/// ring (sending), a bar (delivered), nothing (offline), an exclamation mark (attention).
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
}

/// What the tray shows; the platform renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrayView {
    /// The icon.
    pub state: TrayState,
    /// Tooltip and status line.
    pub detail: String,
    /// Whether "Cancel last alert" is enabled.
    pub can_cancel: bool,
    /// Whether the menu offers Quit.
    pub show_quit: bool,
}

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
