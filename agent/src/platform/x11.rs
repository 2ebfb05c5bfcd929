//! The global hotkey on X11: a passive grab of the key combination on the root window.

use std::sync::mpsc;
use std::time::Duration;

use tracing::{debug, warn};
use x11rb::connection::Connection as _;
use x11rb::errors::ReplyError;
use x11rb::protocol::xproto::{ConnectionExt as _, GrabMode, ModMask};
use x11rb::protocol::{ErrorKind, Event};

use crate::hotkey::{HotkeyError, HotkeyKey, HotkeySpec};

/// The X11 keysym of a key.
fn keysym(key: HotkeyKey) -> u32 {
    match key {
        HotkeyKey::Letter(c) | HotkeyKey::Digit(c) => c as u32, // Latin-1 keysyms equal the character
        HotkeyKey::F(n) => 0xffbe + u32::from(n) - 1,           // XK_F1 = 0xffbe
    }
}

/// Grab `spec` and call `on_press` from a dedicated thread each time it is pressed, until the
/// process ends. Returns once the grab is in place (or refused).
///
/// # Errors
/// [`HotkeyError`] with the reason; the caller keeps running without a hotkey.
pub fn register_hotkey(spec: HotkeySpec, on_press: impl Fn() + Send + 'static) -> Result<(), HotkeyError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("sos-hotkey".into())
        .spawn(move || {
            let conn = match grab(spec) {
                Ok(c) => {
                    let _ = tx.send(Ok(()));
                    c
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let (conn, keycode, mods) = conn;
            loop {
                match conn.wait_for_event() {
                    Ok(Event::KeyPress(e)) if e.detail == keycode && (u16::from(e.state) & RELEVANT) == mods => {
                        debug!("hotkey pressed");
                        on_press();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "the X11 connection of the hotkey is gone; the hotkey no longer works");
                        return;
                    }
                }
            }
        })
        .map_err(|e| HotkeyError::Failed(spec.to_string(), e.to_string()))?;
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| Err(HotkeyError::Failed(spec.to_string(), "the X server did not answer".into())))
}

/// Control, Shift, Mod1 (Alt) and Mod4 (Super): the modifiers that make up a hotkey.
const RELEVANT: u16 = 0x0004 | 0x0001 | 0x0008 | 0x0040;

fn grab(spec: HotkeySpec) -> Result<(x11rb::rust_connection::RustConnection, u8, u16), HotkeyError> {
    let name = spec.to_string();
    let failed = |e: &dyn std::fmt::Display| HotkeyError::Failed(name.clone(), e.to_string());
    let (conn, screen) = x11rb::connect(None).map_err(|e| HotkeyError::NoDisplay(e.to_string()))?;
    let setup = conn.setup();
    let root = setup.roots[screen].root;
    let (min, max) = (setup.min_keycode, setup.max_keycode);
    let mapping =
        conn.get_keyboard_mapping(min, max - min + 1).map_err(|e| failed(&e))?.reply().map_err(|e| failed(&e))?;
    let per = usize::from(mapping.keysyms_per_keycode.max(1));
    let wanted = keysym(spec.key);
    let upper = match spec.key {
        HotkeyKey::Letter(c) => c.to_ascii_uppercase() as u32,
        _ => wanted,
    };
    let keycode = mapping
        .keysyms
        .chunks(per)
        .position(|syms| syms.contains(&wanted) || syms.contains(&upper))
        .map(|i| min + i as u8)
        .ok_or_else(|| HotkeyError::Failed(name.clone(), "no key on this keyboard produces it".into()))?;
    let mut mods = 0u16;
    for (on, bit) in [(spec.ctrl, 0x0004), (spec.shift, 0x0001), (spec.alt, 0x0008), (spec.super_key, 0x0040)] {
        if on {
            mods |= bit;
        }
    }
    // The grab must not depend on Caps Lock (Lock) or Num Lock (Mod2).
    for extra in [0u16, 0x0002, 0x0010, 0x0012] {
        let cookie = conn
            .grab_key(true, root, ModMask::from(mods | extra), keycode, GrabMode::ASYNC, GrabMode::ASYNC)
            .map_err(|e| failed(&e))?;
        match cookie.check() {
            Ok(()) => {}
            Err(ReplyError::X11Error(e)) if e.error_kind == ErrorKind::Access => return Err(HotkeyError::Taken(name)),
            Err(e) => return Err(failed(&e)),
        }
    }
    conn.flush().map_err(|e| failed(&e))?;
    Ok((conn, keycode, mods))
}
