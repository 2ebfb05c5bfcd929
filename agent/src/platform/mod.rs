//! Platform code, chosen in one place: the global hotkey and the tray icon.
//!
//! ## Platform-specific
//! - **Linux/BSD:** the tray is a StatusNotifierItem served by ksni on the agent's tokio
//!   runtime (no GTK, no extra threads, nothing that wakes while idle).
//! - **Windows, macOS:** the tray is tray-icon's native item.
//! - **Linux/BSD (X11):** the global hotkey is a passive key grab on the root window through
//!   x11rb, served by a thread that blocks on the X connection: no polling, no wake-ups while
//!   idle, and a grab refused because another application holds the combination is reported.
//!   Without X11 (a pure Wayland session) the hotkey is unavailable and the agent says so;
//!   bind `sos-agent trigger` in the desktop's keyboard settings instead.
//! - **Windows, macOS:** the `global-hotkey` crate. (Not built or tested on this project's CI
//!   machine, which is Linux.)

#[cfg(all(unix, not(target_os = "macos")))]
mod x11;
#[cfg(all(unix, not(target_os = "macos")))]
pub use x11::register_hotkey;

#[cfg(any(windows, target_os = "macos"))]
mod global;
#[cfg(any(windows, target_os = "macos"))]
pub use global::register_hotkey;

#[cfg(all(unix, not(target_os = "macos")))]
mod tray_sni;
#[cfg(all(unix, not(target_os = "macos")))]
pub use tray_sni::Tray;

#[cfg(any(windows, target_os = "macos"))]
mod tray_native;
#[cfg(any(windows, target_os = "macos"))]
pub use tray_native::Tray;
