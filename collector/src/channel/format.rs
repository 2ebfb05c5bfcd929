//! How an alert reads, in every channel.

use crate::store::AlertRecord;

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

/// One line a responder can act on: `SOS: alice at Reception (desk-12, 10.0.0.12)`; for a
/// cancellation notice, `CANCELLED by sender — SOS: alice at …`.
pub fn describe(a: &AlertRecord) -> String {
    let prefix = match (a.cancellation.is_some(), a.test) {
        (true, true) => "CANCELLED by sender — TEST SOS",
        (true, false) => "CANCELLED by sender — SOS",
        (false, true) => "TEST SOS (drill, no action needed)",
        (false, false) => "SOS",
    };
    let place = if a.location.trim().is_empty() { a.host.as_str() } else { a.location.as_str() };
    let mut line =
        format!("{prefix}: {} at {} ({}, {})", or_dash(&a.user), or_dash(place), or_dash(&a.host), or_dash(&a.ip));
    if let Some(w) = identity_warning(a) {
        line.push_str(" — ");
        line.push_str(&w);
    }
    line
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
    match &a.enrolled {
        Some(e) => format!("{} (agent {}, enrolled on host {})", e.name, e.agent_id, or_dash(&e.host)),
        None => "— (shared site key: who and where are as the workstation claims)".to_owned(),
    }
}

/// Every field, one per line, for plain-text channels.
pub(crate) fn details(a: &AlertRecord) -> String {
    let mut s = String::new();
    if let Some(c) = &a.cancellation {
        s.push_str(&format!(
            "CANCELLED BY THE SENDER (false alarm) at {}.\nReason: {}\nResponders: check in person that they are safe; a cancellation can be forced.\n\n",
            when_utc(c.at_ms / 1000),
            or_dash(&c.reason)
        ));
    }
    if a.test {
        s.push_str("THIS IS A TEST ALERT (drill). No action needed.\n\n");
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
