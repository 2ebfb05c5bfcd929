//! `sos-collector responders`: the configured responders, their agents, and who is online.

use sos_collector::channel::when_utc;
use sos_collector::store::now_ms;
use sos_collector::Config;

use super::open_store;

/// `responders list`: each configured responder, its groups and contact points, and each of
/// its agents with its enrollment and whether it is online (an authentic datagram within
/// `escalation.responder_offline_after_secs`, as the collector recorded it).
pub fn list(config: &Config) -> anyhow::Result<()> {
    if config.responders.is_empty() {
        println!("No responders configured ([[responders]] in the collector's config; give it with --config).");
        return Ok(());
    }
    // A SQLite store may not exist yet (the collector never ran): agents are then unknown. A
    // PostgreSQL store that cannot be reached is an error, not "not enrolled".
    let enrolled = match open_store(config) {
        Ok(store) => store.run(store.store().enrolled_agents())?,
        Err(e) if config.database_url.is_some() => return Err(e),
        Err(_) => Vec::new(),
    };
    let offline_after = config.escalation.responder_offline_after.as_millis() as i64;
    let now = now_ms();
    for r in &config.responders {
        let mut extra = Vec::new();
        if !r.groups.is_empty() {
            extra.push(format!("groups: {}", r.groups.join(", ")));
        }
        if let Some(e) = &r.email {
            extra.push(format!("email: {e}"));
        }
        if let Some(p) = &r.phone {
            extra.push(format!("phone: {p}"));
        }
        if let Some(c) = &r.chat {
            extra.push(format!("chat: {c}"));
        }
        println!("{}{}", r.name, if extra.is_empty() { String::new() } else { format!("  ({})", extra.join("; ")) });
        if r.agents.is_empty() {
            println!("    no agents: reached through channels only");
        }
        for name in &r.agents {
            let mine: Vec<_> = enrolled.iter().filter(|a| &a.name == name).collect();
            if mine.is_empty() {
                println!("    {name:<20} NOT ENROLLED (sos-collector enroll --name {name:?})");
            }
            for a in mine {
                let state = match (a.revoked_at_ms, a.last_seen_ms) {
                    (Some(_), _) => "REVOKED".to_owned(),
                    (None, Some(seen)) if now - seen <= offline_after => {
                        format!("online (last seen {})", when_utc(seen / 1000))
                    }
                    (None, Some(seen)) => format!("OFFLINE (last seen {})", when_utc(seen / 1000)),
                    (None, None) => "OFFLINE (never seen)".to_owned(),
                };
                println!("    {name:<20} agent {}  {state}", a.agent_id);
            }
        }
    }
    Ok(())
}
