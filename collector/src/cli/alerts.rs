//! `sos-collector alerts`: recent alerts and each channel's delivery state.

use sos_collector::channel::when_utc;
use sos_collector::Config;

use super::open_store;

/// `alerts`: the `limit` newest alerts, each with its deliveries.
pub fn run(config: &Config, limit: usize) -> anyhow::Result<()> {
    let (db, path) = open_store(config)?;
    let rows = db.recent_alerts(limit)?;
    if rows.is_empty() {
        println!("No alerts in {}.", path.display());
    }
    for (a, deliveries) in rows {
        println!(
            "{}  {}{}  {}@{} ({})  {}",
            when_utc(a.received_at_ms / 1000),
            a.alert_id,
            if a.test { "  TEST" } else { "" },
            a.user,
            a.host,
            a.ip,
            if a.location.is_empty() { "-" } else { &a.location },
        );
        if !a.message.is_empty() {
            println!("    message: {}", a.message);
        }
        println!("    enrolled as: {}", sos_collector::channel::enrolled_line(&a));
        if let Some(w) = sos_collector::channel::identity_warning(&a) {
            println!("    {w}");
        }
        if let Some(c) = &a.cancellation {
            println!(
                "    CANCELLED by the sender at {}{}",
                when_utc(c.at_ms / 1000),
                if c.reason.is_empty() { String::new() } else { format!(": {}", c.reason) }
            );
        }
        for d in deliveries {
            let detail = match (d.state.as_str(), d.delivered_at_ms, &d.last_error) {
                ("delivered", Some(t), _) => format!("at {}", when_utc(t / 1000)),
                (_, _, Some(e)) => format!("last error: {e}"),
                _ => String::new(),
            };
            println!("    {:<6} {:<9} attempts={} {}", d.channel, d.state, d.attempts, detail);
        }
    }
    Ok(())
}
