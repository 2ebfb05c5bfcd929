//! How an alert reads, in every channel.

use crate::store::{AlertRecord, AlertUpdate};

/// `2026-11-23 06:03:20 UTC` for a time in seconds since the Unix epoch.
pub fn when_utc(unix_secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string().replacen('T', " ", 1).replace('Z', " UTC")
}

/// Text or a dash, so that an empty field reads as absent rather than as a layout glitch.
pub(crate) fn or_dash(s: &str) -> &str {
    if s.trim().is_empty() {
        "—"
    } else {
        s
    }
}

/// What a message says about its alert, before who and where: `SOS`, `TEST SOS (DRILL)` for a
/// drill, `SOS (escalated: tier 2)`, `STILL UNANSWERED after 60 s — SOS`, `Acknowledged by Sam
/// Lee — SOS`, `Resolved by Sam Lee: false alarm — SOS`, `CANCELLED by sender — check in
/// person — SOS`. Drills say DRILL in every one. An alert forwarded by a site says so:
/// `SOS from site Branch A`.
pub fn headline(a: &AlertRecord) -> String {
    let sos = if a.test { "TEST SOS (DRILL)" } else { "SOS" };
    let sos = match &a.site {
        Some(site) => format!("{sos} from site {}", or_dash(site)),
        None => sos.to_owned(),
    };
    match (&a.update, &a.cancellation) {
        (Some(AlertUpdate::Reminder { after_secs }), _) => format!("STILL UNANSWERED after {after_secs} s — {sos}"),
        (Some(AlertUpdate::Acknowledged { by, .. }), _) => format!("Acknowledged by {} — {sos}", or_dash(by)),
        (Some(AlertUpdate::Resolved { by, outcome, .. }), _) => {
            format!("Resolved by {}: {} — {sos}", or_dash(by), or_dash(outcome))
        }
        (None, Some(_)) => format!("CANCELLED by sender — check in person — {sos}"),
        (None, None) if a.audience.tier > 1 => format!("{sos} (escalated: tier {})", a.audience.tier),
        (None, None) => sos,
    }
}

/// One line a responder can act on: `SOS: alice at Reception (desk-12, 10.0.0.12)`, after the
/// [`headline`] of what the message is about.
pub fn describe(a: &AlertRecord) -> String {
    let prefix = headline(a);
    let place = if a.location.trim().is_empty() { a.host.as_str() } else { a.location.as_str() };
    let mut line =
        format!("{prefix}: {} at {} ({}, {})", or_dash(&a.user), or_dash(place), or_dash(&a.host), or_dash(&a.ip));
    if let Some(w) = identity_warning(a) {
        line.push_str(" — ");
        line.push_str(&w);
    }
    line
}

/// What a responder should do about a message, in plain text (empty for the alert itself).
pub(crate) fn update_paragraph(a: &AlertRecord) -> String {
    let id = a.alert_id;
    match (&a.update, &a.cancellation) {
        (Some(AlertUpdate::Reminder { after_secs }), _) => format!(
            "STILL UNANSWERED after {after_secs} s: nobody has acknowledged this alert yet, and it was escalated. \
             If you are going, say so: \"I'm responding\" on the popup, or sos-collector alerts ack {id} --responder NAME.\n\n"
        ),
        (Some(AlertUpdate::Acknowledged { by, note }), _) => format!(
            "ACKNOWLEDGED by {}: they are on their way.{}\n\n",
            or_dash(by),
            if note.is_empty() { String::new() } else { format!("\nNote: {note}") }
        ),
        (Some(AlertUpdate::Resolved { by, outcome, note }), _) => format!(
            "RESOLVED by {}: {}.{}\n\n",
            or_dash(by),
            or_dash(outcome),
            if note.is_empty() { String::new() } else { format!("\nNote: {note}") }
        ),
        (None, Some(c)) => format!(
            "CANCELLED BY THE SENDER (false alarm) at {}.\nReason: {}\nResponders: check in person that they are safe; a cancellation can be forced.\n\n",
            when_utc(c.at_ms / 1000),
            or_dash(&c.reason)
        ),
        (None, None) if a.audience.tier > 1 => format!(
            "ESCALATED (tier {}): nobody acknowledged this alert in time.\n\n",
            a.audience.tier
        ),
        (None, None) => String::new(),
    }
}

/// A warning when the alert's claimed host is not the host its key was enrolled on.
pub fn identity_warning(a: &AlertRecord) -> Option<String> {
    let e = a.enrolled.as_ref()?;
    e.host_mismatch(&a.host).then(|| {
        format!(
            "IDENTITY MISMATCH: sent with the key of \"{}\" (enrolled on host {}), claims host {}",
            e.name,
            or_dash(&e.host),
            or_dash(&a.host)
        )
    })
}

/// Who the collector knows sent it: the enrolled agent, or the shared site key.
pub fn enrolled_line(a: &AlertRecord) -> String {
    if let Some(site) = &a.site {
        return match &a.enrolled {
            Some(e) if !e.name.is_empty() => {
                format!("{} (enrolled at site {site} on host {})", e.name, or_dash(&e.host))
            }
            _ => format!("— (site {site}'s shared site key: who and where are as the workstation claims)"),
        };
    }
    match &a.enrolled {
        Some(e) => format!("{} (agent {}, enrolled on host {})", e.name, e.agent_id, or_dash(&e.host)),
        None => "— (shared site key: who and where are as the workstation claims)".to_owned(),
    }
}

/// Every field, one per line, for plain-text channels.
pub(crate) fn details(a: &AlertRecord) -> String {
    let mut s = update_paragraph(a);
    if a.test {
        s.push_str(
            "THIS IS A DRILL (test alert): no real emergency. Practise: acknowledge it as you would a real one.\n\n",
        );
    }
    if let Some(w) = identity_warning(a) {
        s.push_str(&format!("{w}\n\n"));
    }
    s.push_str(&format!("Who:       {}\n", or_dash(&a.user)));
    s.push_str(&format!("Location:  {}\n", or_dash(&a.location)));
    s.push_str(&format!("Host:      {}\n", or_dash(&a.host)));
    s.push_str(&format!("IP:        {}\n", or_dash(&a.ip)));
    s.push_str(&format!("When:      {}\n", when_utc(a.triggered_at)));
    s.push_str(&format!("Message:   {}\n", or_dash(&a.message)));
    s.push_str(&format!("Enrolled:  {}\n", enrolled_line(a)));
    s.push_str(&format!("Alert id:  {}\n", a.alert_id));
    s
}
