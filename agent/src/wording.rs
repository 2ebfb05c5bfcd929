//! Every text the tray agent shows the person (toasts, tooltip, status line), in the wording the
//! site chose: discreet by default, because the threat may be standing at the desk reading the
//! screen (README, "Discreet by default").

use std::str::FromStr;

use sos_shared::protocol::{AlertBroadcast, BroadcastState};

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

    /// A responder acknowledged the sender's alert: `name` is coming (and said `note`).
    pub fn help_coming(&self, name: &str, note: &str) -> Toast {
        let (summary, body) = if self.plain() {
            (format!("Help is on the way — {name}"), "A responder has seen your alert and is coming.")
        } else {
            (format!("On the way — {name}"), "Someone has seen your request and is coming.")
        };
        Toast::new(summary, with_note(body, note), Importance::Normal)
    }

    /// Nobody acknowledged the sender's alert in time: the fallback, plainly (the person must
    /// act).
    pub fn unanswered(&self, fallback: &str) -> Toast {
        let summary = if self.plain() { "Nobody has answered yet" } else { "No answer yet" };
        Toast::new(summary, fallback, Importance::Critical)
    }

    /// A responder marked the sender's alert resolved.
    pub fn resolved_by(&self, name: &str, note: &str) -> Toast {
        Toast::new(format!("Resolved by {name}"), with_note("", note), Importance::Normal)
    }

    /// Tooltip: `name` is coming.
    pub fn tip_acknowledged(&self, name: &str) -> String {
        if self.plain() {
            format!("help is on the way — {name}")
        } else {
            format!("on the way — {name}")
        }
    }

    /// Tooltip of a responder desktop: `open` alerts wait for a responder, the newest `newest`.
    pub fn tip_alarm(&self, open: usize, newest: &str) -> String {
        format!("{open} open alert(s) — newest: {newest}. See the menu.")
    }

    /// Tooltip: nobody answered the sender's alert.
    pub fn tip_unanswered(&self, fallback: &str) -> String {
        let what = if self.plain() { "nobody has answered yet" } else { "no answer yet" };
        format!("{what}. {fallback}")
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

/// `body`, then the responder's note, if any.
fn with_note(body: &str, note: &str) -> String {
    match (body.is_empty(), note.trim().is_empty()) {
        (_, true) => body.to_owned(),
        (true, false) => format!("“{}”", note.trim()),
        (false, false) => format!("{body} “{}”", note.trim()),
    }
}

/// How this responder desktop stands with an alert it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MyResponse {
    /// Not responded from here.
    #[default]
    None,
    /// "I'm responding" is being sent.
    Sending,
    /// The collector recorded this desktop's response first.
    Responding,
    /// It could not be sent (no collector answered): the popup says so, the action stays.
    Failed,
}

/// Who pressed and where, for a responder: "alice at Reception", or the workstation.
pub fn who_where(b: &AlertBroadcast) -> String {
    let who = if b.user.is_empty() { "someone" } else { b.user.as_str() };
    let place = if !b.location.is_empty() {
        b.location.as_str()
    } else if !b.host.is_empty() {
        b.host.as_str()
    } else {
        "an unknown place"
    };
    format!("{who} at {place}")
}

/// A responder's popup for the state `b` of someone's alert, in plain words (a responder must
/// not have to decode it): SOS, or DRILL for a test alert. `details`: every field, not only
/// the message. `time` is when it was pressed (local).
pub fn popup(b: &AlertBroadcast, mine: MyResponse, details: bool, time: &str) -> Toast {
    let what = if b.test { "DRILL" } else { "SOS" };
    let who = who_where(b);
    let summary = match (b.state, mine) {
        (BroadcastState::Open | BroadcastState::Acknowledged, MyResponse::Responding) => {
            format!("{what} — you are responding to {who}")
        }
        (BroadcastState::Open, MyResponse::Sending) => format!("{what} — {who} — sending your response…"),
        (BroadcastState::Open, MyResponse::Failed) => {
            format!("{what} — {who} — your response did NOT get through")
        }
        (BroadcastState::Open, _) if b.reminder => format!("{what} — {who} — still nobody responding"),
        (BroadcastState::Open, _) => format!("{what} — {who}"),
        (BroadcastState::Acknowledged, _) => {
            let name = if b.responder.is_empty() { "Someone" } else { b.responder.as_str() };
            format!("{name} is responding — {what} {who}")
        }
        (BroadcastState::Cancelled, _) => format!("Cancelled by the sender — check in person — {what} {who}"),
        (BroadcastState::Resolved, _) => {
            let name = if b.responder.is_empty() { "a responder" } else { b.responder.as_str() };
            format!("Resolved by {name} — {what} {who}")
        }
    };
    let mut body = Vec::new();
    if !b.message.is_empty() {
        body.push(format!("“{}”", b.message));
    }
    if !b.note.is_empty() {
        let by = if b.responder.is_empty() { "Note" } else { b.responder.as_str() };
        body.push(format!("{by}: “{}”", b.note));
    }
    if details || body.is_empty() {
        let mut place = Vec::new();
        for p in [&b.host, &b.ip] {
            if !p.is_empty() {
                place.push(p.as_str());
            }
        }
        body.push(format!("Pressed at {time} on {}.", if place.is_empty() { "?".into() } else { place.join(", ") }));
        if details {
            body.push(format!("Alert {}", b.alert_id));
        }
    }
    if mine == MyResponse::Failed {
        body.push("No collector confirmed it: try again, or call.".into());
    }
    let importance = match b.state {
        BroadcastState::Open => Importance::Alarm,
        _ => Importance::Critical,
    };
    // One line: some daemons show only the first.
    Toast::new(summary, body.join(" · "), importance)
}

/// The one notification for the open alerts beyond those shown as popups.
pub fn more_popups(n: usize) -> Toast {
    Toast::new(
        format!("{n} more open alert(s)"),
        "Too many alerts to show each: they are listed in the tray menu.",
        Importance::Alarm,
    )
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
        t.extend([w.help_coming("Sam", "2 min"), w.unanswered("Call 555-0100"), w.resolved_by("Sam", "")]);
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
            w.tip_acknowledged("Sam"),
            w.tip_unanswered("Call 555-0100"),
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

    #[test]
    fn the_sender_reads_who_is_coming() {
        let plain = Words { wording: Wording::Plain, click: TrayClick::Double };
        assert_eq!(plain.help_coming("Sam Lee", "").summary, "Help is on the way — Sam Lee");
        assert!(plain.help_coming("Sam Lee", "2 minutes").body.ends_with("“2 minutes”"));
        assert_eq!(plain.unanswered("Call 555-0100").body, "Call 555-0100");
        assert_eq!(plain.resolved_by("Sam Lee", "").summary, "Resolved by Sam Lee");
        let discreet = Words { wording: Wording::Discreet, click: TrayClick::Double };
        assert_eq!(discreet.help_coming("Sam Lee", "").summary, "On the way — Sam Lee");
    }

    #[test]
    fn a_popup_follows_its_alert() {
        let mut b = AlertBroadcast {
            alert_id: sos_shared::AlertId::random(),
            test: false,
            triggered_at: 0,
            user: "alice".into(),
            host: "desk-7".into(),
            ip: "10.0.0.7".into(),
            location: "Reception".into(),
            message: "visitor".into(),
            state: BroadcastState::Open,
            responder: String::new(),
            note: String::new(),
            seq: 1,
            reminder: false,
        };
        let t = popup(&b, MyResponse::None, false, "12:00:00");
        assert_eq!((t.summary.as_str(), t.importance), ("SOS — alice at Reception", Importance::Alarm));
        assert!(t.body.contains("visitor"));
        assert!(popup(&b, MyResponse::None, true, "12:00:00").body.contains("10.0.0.7"));
        b.test = true;
        assert!(popup(&b, MyResponse::None, false, "").summary.starts_with("DRILL"));
        b.state = BroadcastState::Acknowledged;
        b.responder = "Sam Lee".into();
        assert!(popup(&b, MyResponse::None, false, "").summary.starts_with("Sam Lee is responding"));
        assert!(popup(&b, MyResponse::Responding, false, "").summary.contains("you are responding"));
        b.state = BroadcastState::Cancelled;
        assert!(popup(&b, MyResponse::None, false, "")
            .summary
            .starts_with("Cancelled by the sender — check in person"));
        b.state = BroadcastState::Resolved;
        assert!(popup(&b, MyResponse::None, false, "").summary.starts_with("Resolved by Sam Lee"));
    }
}
