//! The global hotkey: its spelling in the config (`ctrl+alt+s`) and its registration, which is
//! platform code chosen in [`crate::platform`].

use std::fmt;
use std::str::FromStr;

/// A key combination, e.g. `ctrl+alt+s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotkeySpec {
    /// Control.
    pub ctrl: bool,
    /// Alt (Option on macOS).
    pub alt: bool,
    /// Shift.
    pub shift: bool,
    /// Super (Windows key, Command on macOS).
    pub super_key: bool,
    /// The key pressed with the modifiers.
    pub key: HotkeyKey,
}

/// The non-modifier key of a hotkey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotkeyKey {
    /// A letter `a`–`z` (lower case).
    Letter(char),
    /// A digit `0`–`9`.
    Digit(char),
    /// A function key F1–F24.
    F(u8),
}

/// The text is not a hotkey.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a hotkey: write modifiers (ctrl, alt, shift, super) and one key (a-z, 0-9, F1-F24) joined by '+', e.g. \"ctrl+alt+s\"")]
pub struct HotkeyParseError(String);

impl FromStr for HotkeySpec {
    type Err = HotkeyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || HotkeyParseError(s.to_owned());
        let mut spec = HotkeySpec { ctrl: false, alt: false, shift: false, super_key: false, key: HotkeyKey::F(1) };
        let mut key = None;
        for token in s.split('+').map(|t| t.trim().to_ascii_lowercase()) {
            match token.as_str() {
                "ctrl" | "control" => spec.ctrl = true,
                "alt" | "option" => spec.alt = true,
                "shift" => spec.shift = true,
                "super" | "meta" | "win" | "cmd" | "command" => spec.super_key = true,
                t if key.is_none() => {
                    let mut chars = t.chars();
                    key = Some(match (chars.next(), chars.next()) {
                        (Some(c @ 'a'..='z'), None) => HotkeyKey::Letter(c),
                        (Some(c @ '0'..='9'), None) => HotkeyKey::Digit(c),
                        (Some('f'), Some(_)) => match t[1..].parse::<u8>() {
                            Ok(n @ 1..=24) => HotkeyKey::F(n),
                            _ => return Err(err()),
                        },
                        _ => return Err(err()),
                    });
                }
                _ => return Err(err()),
            }
        }
        spec.key = key.ok_or_else(err)?;
        // A bare letter would fire while typing.
        if matches!(spec.key, HotkeyKey::Letter(_) | HotkeyKey::Digit(_)) && !(spec.ctrl || spec.alt || spec.super_key)
        {
            return Err(err());
        }
        Ok(spec)
    }
}

impl fmt::Display for HotkeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (on, name) in [(self.ctrl, "Ctrl+"), (self.alt, "Alt+"), (self.shift, "Shift+"), (self.super_key, "Super+")]
        {
            if on {
                f.write_str(name)?;
            }
        }
        match self.key {
            HotkeyKey::Letter(c) | HotkeyKey::Digit(c) => write!(f, "{}", c.to_ascii_uppercase()),
            HotkeyKey::F(n) => write!(f, "F{n}"),
        }
    }
}

/// Why the hotkey is not active. The agent keeps running: the tray and `sos-agent trigger`
/// still work, and the tray shows this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HotkeyError {
    /// No X11 display (e.g. a Wayland session without XWayland, or no desktop at all).
    #[error("no X11 display for the global hotkey ({0}); on Wayland, bind `sos-agent trigger` to a shortcut in your desktop's settings")]
    NoDisplay(String),
    /// Another application holds the combination.
    #[error("{0} is already taken by another application; choose another `hotkey` in the agent config")]
    Taken(String),
    /// The keyboard has no key for it, or the platform refused.
    #[error("the hotkey {0} cannot be registered: {1}")]
    Failed(String, String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let h: HotkeySpec = "ctrl+alt+s".parse().unwrap();
        assert_eq!(
            h,
            HotkeySpec { ctrl: true, alt: true, shift: false, super_key: false, key: HotkeyKey::Letter('s') }
        );
        assert_eq!(h.to_string(), "Ctrl+Alt+S");
        assert_eq!("Shift+F12".parse::<HotkeySpec>().unwrap().key, HotkeyKey::F(12));
        for bad in ["", "ctrl+alt", "s", "ctrl+alt+s+x", "ctrl+f25", "ctrl+é", "hyper+s"] {
            assert!(bad.parse::<HotkeySpec>().is_err(), "{bad}");
        }
    }
}
