//! `sos-collector alerts`: recent alerts and each channel's delivery state; `alerts show` (an
//! alert's timeline), `ack`, `resolve` and `checked` (through the store, as the service does).

use sos_collector::channel::when_utc;
use sos_collector::store::{Response as _, Transition, Via};
use sos_collector::Config;
use sos_shared::AlertId;

use super::{open_store, open_store_rw};

/// `alerts`: the `limit` newest alerts, each with its deliveries.
pub fn run(config: &Config, limit: usize) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let rows = store.run(store.store().recent_alerts(limit))?;
    if rows.is_empty() {
        println!("No alerts in {}.", store.place);
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
        if let Some(site) = &a.site {
            println!("    from site: {site}");
        }
        println!("    enrolled as: {}", sos_collector::channel::enrolled_line(&a));
        if let Some((_, state, events)) = store.run(store.store().timeline(a.alert_id))? {
            let by = events.iter().rev().find(|e| e.kind == state.name()).map(|e| format!(" by {}", e.who));
            println!("    state: {}{}", state.name(), by.unwrap_or_default());
        }
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

/// The alert `id` names, or an error saying what an id looks like.
fn alert_id(id: &str) -> anyhow::Result<AlertId> {
    id.trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{id:?} is not an alert id (32 hex digits, as `sos-collector alerts` shows)"))
}

/// The configured responder called `name` (without regard to case), or an error naming the
/// configured ones.
fn responder<'a>(config: &'a Config, name: &str) -> anyhow::Result<&'a str> {
    match config.responder(name) {
        Some(r) => Ok(&r.name),
        None if config.responders.is_empty() => anyhow::bail!(
            "--responder {name:?}: no responders are configured (give the collector's config with --config; \
             responders are [[responders]] in it)"
        ),
        None => anyhow::bail!(
            "--responder {name:?} is not a configured responder; configured: {}",
            config.responders.iter().map(|r| format!("{:?}", r.name)).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `alerts show ID`: the alert, then its timeline, one line per event.
pub fn show(config: &Config, id: &str) -> anyhow::Result<()> {
    let id = alert_id(id)?;
    let store = open_store(config)?;
    let Some((a, state, events)) = store.run(store.store().timeline(id))? else {
        anyhow::bail!("no alert {id} in {}", store.place);
    };
    println!("{}", sos_collector::channel::describe(&a));
    println!("alert id:   {}", a.alert_id);
    println!("state:      {}", state.name());
    if let Some(site) = &a.site {
        println!("from site:  {site} (forwarded by that site's collector)");
    }
    println!("pressed:    {} (the workstation's clock)", when_utc(a.triggered_at));
    println!("received:   {}", when_ms(a.received_at_ms));
    if !a.message.is_empty() {
        println!("message:    {}", a.message);
    }
    println!("enrolled:   {}", sos_collector::channel::enrolled_line(&a));
    let answered = events.iter().find(|e| e.kind == "acknowledged" || e.kind == "resolved");
    match answered {
        Some(e) => println!("time to acknowledge: {} ({} by {})", secs(e.at_ms - a.received_at_ms), e.kind, e.who),
        None => println!(
            "time to acknowledge: NOT ACKNOWLEDGED ({} since received)",
            secs(sos_collector::store::now_ms() - a.received_at_ms)
        ),
    }
    println!("timeline:");
    if events.is_empty() {
        println!("    (none: stored before this collector kept timelines)");
    }
    for e in &events {
        println!(
            "    {}  +{:<8} {:<13} {:<28} via {:<12} {}",
            when_ms(e.at_ms),
            secs(e.at_ms - a.received_at_ms),
            e.kind,
            e.who,
            e.via.name(),
            e.note
        );
    }
    println!("deliveries:");
    for d in store.run(store.store().deliveries(id))? {
        println!("    {:<28} {:<9} attempts={}", d.channel, d.state, d.attempts);
    }
    Ok(())
}

/// `alerts ack ID --responder NAME [--note TEXT]`.
pub fn ack(config: &Config, id: &str, name: &str, note: &str) -> anyhow::Result<()> {
    let id = alert_id(id)?;
    let name = responder(config, name)?;
    let store = open_store_rw(config)?;
    match store.run(store.store().acknowledge(id, name.to_owned(), Via::CommandLine, note.to_owned()))? {
        Transition::New { at_ms } => {
            println!(
                "Alert {id} acknowledged by {name} at {}: its escalation and pending pages are stopped; the notified \
                 channels and the sender are told.",
                when_ms(at_ms)
            );
            Ok(())
        }
        other => outcome(id, "acknowledged", name, other),
    }
}

/// `alerts resolve ID --responder NAME [--outcome TEXT] [--note TEXT]`.
pub fn resolve(config: &Config, id: &str, name: &str, outcome_text: &str, note: &str) -> anyhow::Result<()> {
    let id = alert_id(id)?;
    let name = responder(config, name)?;
    let store = open_store_rw(config)?;
    match store.run(store.store().resolve(
        id,
        name.to_owned(),
        Via::CommandLine,
        outcome_text.to_owned(),
        note.to_owned(),
    ))? {
        Transition::New { at_ms } => {
            println!(
                "Alert {id} resolved by {name} at {}; the notified channels and the sender are told.",
                when_ms(at_ms)
            );
            Ok(())
        }
        other => outcome(id, "resolved", name, other),
    }
}

/// `alerts checked ID --responder NAME [--note TEXT]`.
pub fn checked(config: &Config, id: &str, name: &str, note: &str) -> anyhow::Result<()> {
    let id = alert_id(id)?;
    let name = responder(config, name)?;
    let store = open_store_rw(config)?;
    match store.run(store.store().mark_checked(id, name.to_owned(), Via::CommandLine, note.to_owned()))? {
        Transition::New { at_ms } => {
            println!("Cancelled alert {id} checked in person by {name} at {}: it is closed.", when_ms(at_ms));
            Ok(())
        }
        Transition::Closed(state) => anyhow::bail!(
            "alert {id} is {} — not cancelled: only a cancelled alert is marked checked (resolve it instead)",
            state.name()
        ),
        other => outcome(id, "checked", name, other),
    }
}

/// What to say when the transition did not happen now: success if the same responder did it
/// already, an error otherwise.
fn outcome(id: AlertId, done: &str, name: &str, t: Transition) -> anyhow::Result<()> {
    match t {
        Transition::New { .. } => Ok(()),
        Transition::Already { by } if by == name => {
            println!("Alert {id} was already {done} by {by}; nothing changed.");
            Ok(())
        }
        Transition::Already { by } => anyhow::bail!("alert {id} was already {done} by {by}; nothing changed"),
        Transition::Closed(state) => anyhow::bail!("alert {id} is {}; nothing changed", state.name()),
        Transition::Unknown => anyhow::bail!("no alert {id} in the store"),
    }
}

fn when_ms(ms: i64) -> String {
    when_utc(ms / 1000)
}

/// A duration in ms as `75 s` or `3 min 5 s`.
fn secs(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s < 120 {
        format!("{s} s")
    } else {
        format!("{} min {} s", s / 60, s % 60)
    }
}
