//! The tray icon: one icon per state, a tooltip that says which, and the menu.
//!
//! ## Platform-specific
//! - **Linux/BSD:** a StatusNotifierItem on the session bus (tray-icon's `ksni` backend, no
//!   GTK); panels that show SNI items (KDE, GNOME with the AppIndicator extension, XFCE,
//!   waybar…) display it, and a click arrives as the item's `Activate` method.
//! - **Windows, macOS:** the native notification-area / status-bar item.

use tray_icon::menu::{Menu, MenuId, MenuItem, PredefinedMenuItem};
use tray_icon::{Icon, TrayIcon, TrayIconBuilder};

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

/// A 32×32 icon: a filled disc in the state's colour with a white mark — a dot (ready), a ring
/// (sending), a bar (delivered), nothing (offline), an exclamation mark (attention).
pub fn icon(state: TrayState) -> Icon {
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
    Icon::from_rgba(rgba, N as u32, N as u32).expect("32×32 RGBA is a valid icon")
}

/// Menu item ids.
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

/// The tray icon and the menu items it updates.
pub struct Tray {
    icon: TrayIcon,
    status: MenuItem,
    cancel: MenuItem,
    state: Option<TrayState>,
}

impl std::fmt::Debug for Tray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tray").field("state", &self.state).finish_non_exhaustive()
    }
}

impl Tray {
    /// Create the icon and its menu.
    ///
    /// # Errors
    /// If the platform refuses the icon (no session bus on Linux, for instance).
    pub fn new(show_quit: bool) -> Result<Self, tray_icon::Error> {
        let menu = Menu::new();
        let send = MenuItem::with_id(MenuId::new(ids::SEND), "Send SOS", true, None);
        let test = MenuItem::with_id(MenuId::new(ids::TEST), "Send test alert", true, None);
        let cancel = MenuItem::with_id(MenuId::new(ids::CANCEL), "Cancel last alert (false alarm)", false, None);
        let status = MenuItem::with_id(MenuId::new(ids::STATUS), "Starting…", false, None);
        let append = |item: &dyn tray_icon::menu::IsMenuItem| menu.append(item).map_err(|e| tray_icon::Error::OsError(std::io::Error::other(e.to_string())));
        append(&send)?;
        append(&test)?;
        append(&cancel)?;
        append(&PredefinedMenuItem::separator())?;
        append(&status)?;
        if show_quit {
            append(&PredefinedMenuItem::separator())?;
            append(&MenuItem::with_id(MenuId::new(ids::QUIT), "Quit SOS", true, None))?;
        }
        let icon = TrayIconBuilder::new()
            .with_id("sos-agent")
            .with_title("SOS")
            .with_tooltip("SOS: starting")
            .with_icon(icon(TrayState::Offline))
            .with_menu(Box::new(menu))
            .with_menu_on_left_click(false)
            .build()?;
        Ok(Tray { icon, status, cancel, state: None })
    }

    /// Show `state`, with `detail` in the tooltip and the menu's status line; offer Cancel
    /// when there is an acknowledged alert to withdraw.
    pub fn show(&mut self, state: TrayState, detail: &str, can_cancel: bool) {
        self.cancel.set_enabled(can_cancel);
        if self.state != Some(state) {
            let _ = self.icon.set_icon(Some(icon(state)));
            self.state = Some(state);
        }
        let _ = self.icon.set_tooltip(Some(format!("SOS: {detail}")));
        self.status.set_text(detail);
    }
}
