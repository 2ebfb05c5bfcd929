//! The global hotkey on Windows and macOS, through the `global-hotkey` crate. Its events are
//! delivered on the thread that runs the platform event loop (winit's), which forwards them.

use global_hotkey::hotkey::{Code, HotKey, Modifiers};
use global_hotkey::{GlobalHotKeyEvent, GlobalHotKeyManager, HotKeyState};

use crate::hotkey::{HotkeyError, HotkeyKey, HotkeySpec};

fn code(key: HotkeyKey) -> Option<Code> {
    let name = match key {
        HotkeyKey::Letter(c) => format!("Key{}", c.to_ascii_uppercase()),
        HotkeyKey::Digit(c) => format!("Digit{c}"),
        HotkeyKey::F(n) => format!("F{n}"),
    };
    name.parse().ok()
}

/// Register `spec` and call `on_press` for each press. Must be called on the main thread.
///
/// # Errors
/// [`HotkeyError`] with the reason; the caller keeps running without a hotkey.
pub fn register_hotkey(spec: HotkeySpec, on_press: impl Fn() + Send + Sync + 'static) -> Result<(), HotkeyError> {
    let name = spec.to_string();
    let mut mods = Modifiers::empty();
    for (on, m) in [
        (spec.ctrl, Modifiers::CONTROL),
        (spec.alt, Modifiers::ALT),
        (spec.shift, Modifiers::SHIFT),
        (spec.super_key, Modifiers::META),
    ] {
        if on {
            mods |= m;
        }
    }
    let key = code(spec.key).ok_or_else(|| HotkeyError::Failed(name.clone(), "unknown key".into()))?;
    let manager = GlobalHotKeyManager::new().map_err(|e| HotkeyError::Failed(name.clone(), e.to_string()))?;
    let hotkey = HotKey::new(Some(mods), key);
    manager.register(hotkey).map_err(|e| match e {
        global_hotkey::Error::AlreadyRegistered(_) => HotkeyError::Taken(name.clone()),
        other => HotkeyError::Failed(name.clone(), other.to_string()),
    })?;
    // The manager must live as long as the process for the registration to stay.
    std::mem::forget(manager);
    let id = hotkey.id();
    GlobalHotKeyEvent::set_event_handler(Some(move |e: GlobalHotKeyEvent| {
        if e.id == id && e.state == HotKeyState::Pressed {
            on_press();
        }
    }));
    Ok(())
}
