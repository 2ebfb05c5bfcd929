//! Every text the tray agent shows the person (toasts, tooltip, status line), in the wording the
//! site chose: discreet by default, because the threat may be standing at the desk reading the
//! screen (README, "Discreet by default").

use std::str::FromStr;

use crate::toast::{Importance, Toast};

/// How the tray agent speaks to the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wording {
    /// Neutral words a bystander does not read as an alarm ("Received", "NOT sent yet"): no
    /// "SOS", "alarm" or "help" in a toast or the tooltip.
    Discreet,
    /// Plain words ("SOS delivered — help has been called").
    Plain,
}

impl FromStr for Wording {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "discreet" => Ok(Wording::Discreet),
            "plain" => Ok(Wording::Plain),
            _ => Err(format!("{s:?} is not a wording: use \"discreet\" or \"plain\"")),
        }
    }
}

/// What a click on the tray icon does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrayClick {
    /// A double-click sends (a single click only says how); a double-click during the cancel
    /// window stops the press.
    Double,
    /// A single click sends; a click during the cancel window stops the press.
    Single,
}

impl FromStr for TrayClick {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "double" => Ok(TrayClick::Double),
            "single" => Ok(TrayClick::Single),
            _ => Err(format!("{s:?} is not a click rule: use \"double\" or \"single\"")),
        }
    }
}

/// The texts, for one wording and click rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Words {
    /// Discreet or plain.
    pub wording: Wording,
    /// How the icon is clicked, which the texts tell.
    pub click: TrayClick,
}

impl Words {
    fn plain(&self) -> bool {
        self.wording == Wording::Plain
    }

    /// "Double-click" or "Click", as a sentence starts.
    fn click_verb(&self) -> &'static str {
        match self.click {
            TrayClick::Double => "Double-click",
            TrayClick::Single => "Click",
        }
    }

    /// The name toasts are shown under and the tooltip's title.
    pub fn name(&self) -> &'static str {
        if self.plain() {
            "SOS"
        } else {
            "Assist"
        }
    }

    /// A press waits out its cancel window of `secs` seconds.
    pub fn countdown(&self, secs: u64) -> Toast {
        let summary = if self.plain() { format!("Sending SOS in {secs} s") } else { format!("Sending in {secs} s") };
        let icon = if self.plain() { "the SOS icon" } else { "the tray icon" };
        Toast::new(
            summary,
            format!("To stop it: {} {icon}, or choose Cancel in its menu.", self.click_verb().to_lowercase()),
            Importance::Normal,
        )
    }

    /// The label of the action that stops a press, where the daemon shows actions.
    pub fn stop_label(&self) -> &'static str {
        "Stop — don't send"
    }

    /// A press was stopped during its cancel window.
    pub fn stopped(&self) -> Toast {
        Toast::new(if self.plain() { "SOS cancelled" } else { "Stopped" }, "Nothing was sent.", Importance::Normal)
    }

    /// A press's cancel window is over: it is on its way.
    pub fn sending(&self, test: bool) -> Toast {
        let summary = match (self.plain(), test) {
            (true, false) => "Sending SOS…",
            (true, true) => "Sending test alert…",
            (false, false) => "Sending…",
            (false, true) => "Sending test…",
        };
        Toast::new(summary, "You will see here when it is received.", Importance::Normal)
    }

    /// A collector acknowledged the alert at `time` (local `HH:MM:SS`).
    pub fn delivered(&self, test: bool, time: &str) -> Toast {
        match (self.plain(), test) {
            (true, false) => Toast::new(format!("SOS delivered — {time}"), "Help has been called.", Importance::Normal),
            (true, true) => {
                Toast::new(format!("TEST alert delivered — {time}"), "It was marked as a test.", Importance::Normal)
            }
            (false, false) => Toast::new(format!("Received — {time}"), "Your request got through.", Importance::Normal),
            (false, true) => {
                Toast::new(format!("Test received — {time}"), "It was marked as a test.", Importance::Normal)
            }
        }
    }

    /// Not acknowledged yet; still trying. `fallback` says what to do meanwhile.
    pub fn not_delivered_yet(&self, test: bool, fallback: &str) -> Toast {
        let summary = match (self.plain(), test) {
            (true, false) => "SOS NOT delivered yet — still trying.",
            (true, true) => "TEST alert NOT delivered yet — still trying.",
            (false, false) => "NOT sent yet — still trying.",
            (false, true) => "Test NOT sent yet — still trying.",
        };
        Toast::new(summary, fallback, Importance::Critical)
    }

    /// The alert could not be written to the spool.
    pub fn not_saved(&self) -> Toast {
        Toast::new(
            if self.plain() { "SOS: cannot save the alert" } else { "Sending, but not saved" },
            "It is being sent, but would be lost if this computer restarts now.",
            Importance::Critical,
        )
    }

    /// A cancellation (false alarm) was confirmed by a collector.
    pub fn cancelled(&self) -> Toast {
        if self.plain() {
            Toast::new("Alert cancelled", "Responders were told it was a false alarm.", Importance::Normal)
        } else {
            Toast::new("Withdrawn", "Marked as a false alarm; someone may still check in person.", Importance::Normal)
        }
    }

    /// A cancellation was not confirmed: responders may still come.
    pub fn cancel_not_confirmed(&self, alert: &str, fallback: &str) -> Toast {
        Toast::new(
            if self.plain() { "Cancel NOT confirmed" } else { "Withdrawal NOT confirmed" },
            format!("Someone may still come for {alert}: tell them yourself. {fallback}"),
            Importance::Critical,
        )
    }

    /// A single click on the icon where a double-click sends: nothing was sent.
    pub fn lone_click(&self, hotkey: &str) -> Toast {
        let what = if self.plain() { "No SOS sent" } else { "Nothing sent" };
        Toast::new(what, format!("Double-click the icon, or press {hotkey}, to send."), Importance::Normal)
    }

    /// Tooltip: a press waits out its cancel window, `left` seconds to go.
    pub fn tip_countdown(&self, left: f32) -> String {
        let what = if self.plain() { "SOS in" } else { "sending in" };
        format!("{what} {left} s — {} the icon to cancel", self.click_verb().to_lowercase())
    }

    /// Tooltip: not acknowledged yet.
    pub fn tip_not_delivered(&self, fallback: &str) -> String {
        let what = if self.plain() { "SOS NOT delivered yet" } else { "NOT sent yet" };
        format!("{what} — still trying. {fallback}")
    }

    /// Tooltip: on its way.
    pub fn tip_sending(&self) -> String {
        if self.plain() { "sending SOS…" } else { "sending…" }.into()
    }

    /// Tooltip: no collector answers.
    pub fn tip_offline(&self, fallback: &str) -> String {
        format!("offline: no collector answers. {fallback}")
    }

    /// Tooltip: the hotkey cannot be used, for `reason`.
    pub fn tip_no_hotkey(&self, reason: &str) -> String {
        let what = if self.plain() { "to send an SOS" } else { "to send" };
        format!("hotkey unavailable: {reason}. {} this icon {what}.", self.click_verb())
    }

    /// Tooltip: the last alert was acknowledged at `time`.
    pub fn tip_delivered(&self, test: bool, time: &str) -> String {
        match (self.plain(), test) {
            (true, false) => format!("SOS delivered at {time}"),
            (true, true) => format!("test alert delivered at {time}"),
            (false, false) => format!("received at {time}"),
            (false, true) => format!("test received at {time}"),
        }
    }

    /// Tooltip: ready; `contact` is "collector C, last contact T" once known.
    pub fn tip_ready(&self, hotkey: &str, contact: Option<String>) -> String {
        let how = match (self.plain(), self.click) {
            (true, TrayClick::Double) => "or double-click to send an SOS",
            (true, TrayClick::Single) => "or click to send an SOS",
            (false, TrayClick::Double) => "or double-click to send",
            (false, TrayClick::Single) => "or click to send",
        };
        match contact {
            Some(c) => format!("ready — {hotkey} {how} ({c})"),
            None => format!("ready — {hotkey} {how}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_text(w: Words) -> Vec<String> {
        let mut t = Vec::new();
        for test in [false, true] {
            t.push(w.sending(test));
            t.push(w.delivered(test, "12:00:00"));
            t.push(w.not_delivered_yet(test, "Call 555-0100"));
        }
        t.extend([w.countdown(5), w.stopped(), w.not_saved(), w.cancelled(), w.lone_click("Ctrl+Alt+S")]);
        t.push(w.cancel_not_confirmed("x", "Call 555-0100"));
        let mut all: Vec<String> = t.into_iter().flat_map(|t| [t.summary, t.body]).collect();
        all.extend([
            w.name().to_owned(),
            w.tip_countdown(3.0),
            w.tip_not_delivered("Call 555-0100"),
            w.tip_sending(),
            w.tip_offline("Call 555-0100"),
            w.tip_no_hotkey("taken"),
            w.tip_delivered(false, "12:00:00"),
            w.tip_delivered(true, "12:00:00"),
            w.tip_ready("Ctrl+Alt+S", None),
            w.tip_ready("Ctrl+Alt+S", Some("collector c".into())),
        ]);
        all
    }

    #[test]
    fn discreet_words_never_name_the_alarm() {
        for click in [TrayClick::Double, TrayClick::Single] {
            for text in every_text(Words { wording: Wording::Discreet, click }) {
                let lower = text.to_lowercase();
                for word in ["sos", "alarm", "help", "emergency", "panic", "danger"] {
                    // "false alarm" is said only after the person withdrew the alert.
                    if word == "alarm" && lower.contains("false alarm") {
                        continue;
                    }
                    assert!(!lower.contains(word), "{text:?} says {word:?}");
                }
            }
        }
    }

    #[test]
    fn texts_name_the_click_that_works() {
        let double = Words { wording: Wording::Discreet, click: TrayClick::Double };
        assert!(double.countdown(5).body.contains("double-click the tray icon"));
        assert!(double.tip_ready("Ctrl+Alt+S", None).contains("double-click"));
        let single = Words { wording: Wording::Plain, click: TrayClick::Single };
        assert!(
            single.countdown(5).body.contains("click the SOS icon") && !single.countdown(5).body.contains("double")
        );
        assert_eq!(single.countdown(5).summary, "Sending SOS in 5 s");
    }

    #[test]
    fn settings_parse_or_name_the_choices() {
        assert_eq!("plain".parse::<Wording>(), Ok(Wording::Plain));
        assert!("loud".parse::<Wording>().unwrap_err().contains("\"discreet\" or \"plain\""));
        assert_eq!("single".parse::<TrayClick>(), Ok(TrayClick::Single));
        assert!("triple".parse::<TrayClick>().unwrap_err().contains("\"double\" or \"single\""));
    }
}
