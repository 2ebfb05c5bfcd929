//! Silent agents: an enrolled agent that has sent nothing for `agent_silent_after_secs` may
//! have a panic button that no longer works (the workstation off the network, the agent
//! stopped). Every channel is told once (one notice for every agent that fell silent in the
//! same check), and again when it is back; the console shows the silent ones.
//!
//! Whom was told is kept in the store (`silent_agents`), so a restart does not repeat it; and an
//! agent is not judged before the collector itself has run for the whole threshold (while the
//! collector was down, nobody could reach it).

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::channel::when_utc;
use crate::store::{now_ms, Store, StoreError};

/// How often agents are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(15);

/// What changed in one check: agents (name, host, last seen ms) that fell silent, and that came back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Newly silent.
    pub silent: Vec<(String, String, i64)>,
    /// Back after a silence.
    pub back: Vec<(String, String, i64)>,
}

/// One check at `now_ms`; the collector has run since `started_ms`.
///
/// # Errors
/// If the store cannot be read or written.
pub async fn check(store: &Store, silent_after: Duration, started_ms: i64, now_ms: i64) -> Result<Change, StoreError> {
    let (agents, silent) = (store.enrolled_agents().await?, store.silent_agents().await?);
    let limit = silent_after.as_millis() as i64;
    let mut change = Change::default();
    for a in agents.iter().filter(|a| a.revoked_at_ms.is_none()) {
        let Some(seen) = a.last_seen_ms else { continue };
        let was = silent.iter().any(|(id, _)| *id == a.agent_id);
        let quiet = now_ms - seen.max(started_ms) > limit;
        // Told only by the collector whose write made the change: several collectors on one
        // PostgreSQL check the same agents, and one notice per silence is the promise.
        if quiet && !was {
            if store.set_silent(&a.agent_id, Some(seen)).await? {
                change.silent.push((a.name.clone(), a.host.clone(), seen));
            }
        } else if !quiet && was && now_ms - seen <= limit && store.set_silent(&a.agent_id, None).await? {
            change.back.push((a.name.clone(), a.host.clone(), seen));
        }
    }
    // A revoked agent is no longer expected to speak.
    let mut cleared = false;
    for (id, _) in &silent {
        if agents.iter().any(|a| a.agent_id == *id && a.revoked_at_ms.is_some()) {
            cleared |= store.set_silent(id, None).await?;
        }
    }
    if cleared || !change.silent.is_empty() || !change.back.is_empty() {
        // The console's live page lists silent agents: it refreshes on the store's changes.
        store.changed(false);
    }
    Ok(change)
}

fn list(agents: &[(String, String, i64)]) -> String {
    let mut text: Vec<String> = agents
        .iter()
        .take(20)
        .map(|(name, host, seen)| format!("{name} on {host} (last heard {})", when_utc(seen / 1000)))
        .collect();
    if agents.len() > 20 {
        text.push(format!("and {} more", agents.len() - 20));
    }
    text.join("; ")
}

/// Check every [`CHECK_EVERY`] until `stop`, telling the channels through `tell`.
pub async fn watch<F, Fut>(store: Store, silent_after: Duration, tell: F, stop: CancellationToken)
where
    F: Fn(&'static str, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let started = now_ms();
    let started_at = Instant::now();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = started + started_at.elapsed().as_millis() as i64;
        match check(&store, silent_after, started, now.max(now_ms())).await {
            Ok(change) => {
                if !change.silent.is_empty() {
                    let names = list(&change.silent);
                    tracing::warn!(agents = %names, "agents silent: their panic buttons may not work");
                    let text = format!(
                        "no heartbeat for more than {} from: {names}. Their panic buttons may not work; check these workstations.",
                        humantime::format_duration(silent_after)
                    );
                    tell("SOS collector: agent silent", text).await;
                }
                if !change.back.is_empty() {
                    let names = list(&change.back);
                    tracing::info!(agents = %names, "silent agents are back");
                    tell("SOS collector: agent back", format!("heartbeats again from: {names}.")).await;
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot check for silent agents"),
        }
    }
}
