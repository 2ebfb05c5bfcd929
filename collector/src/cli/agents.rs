//! `sos-collector enroll` and `agents list|revoke|rotate`: the agent registry.

use sos_collector::channel::when_utc;
use sos_collector::Config;

use super::{open_store, open_store_rw};

/// `enroll`: a one-time code on stdout, how to use it on stderr.
pub fn enroll(config: &Config, name: &str, expires_minutes: u64, site: bool) -> anyhow::Result<()> {
    let name = name.trim();
    if name.is_empty() || name.len() > sos_shared::enroll::MAX_NAME_LEN || name.chars().any(char::is_control) {
        anyhow::bail!(
            "--name must be 1 to {} bytes of printable text, e.g. \"Reception desk 3\"",
            sos_shared::enroll::MAX_NAME_LEN
        );
    }
    if expires_minutes == 0 || expires_minutes > 7 * 24 * 60 {
        anyhow::bail!("--expires-minutes must be between 1 and 10080 (a week)");
    }
    let store = open_store_rw(config)?;
    let now = sos_collector::store::now_ms();
    let code = store.run(store.store().create_enrollment_of(name, site, expires_minutes as i64 * 60_000, now))?;
    let until = when_utc((now + expires_minutes as i64 * 60_000) / 1000);
    let addr = if config.listen.ip().is_unspecified() {
        format!("THIS-HOST:{}", config.listen.port())
    } else {
        config.listen.to_string()
    };
    println!("{code}");
    if site {
        eprintln!(
            "\nOne-time code for the site \"{name}\", valid once until {until} ({expires_minutes} min).\n\
             On the site's collector (with `[forward] centre = \"{addr}\"` in its config), run:\n\n    \
             sos-collector forward enroll --code {code}\n\n\
             Its alerts will show here as from site \"{name}\". A wrong code tried {} times burns it.",
            sos_collector::registry::MAX_CODE_ATTEMPTS
        );
        return Ok(());
    }
    eprintln!(
        "\nOne-time code for \"{name}\", valid once until {until} ({expires_minutes} min).\n\
         On the workstation, run:\n\n    sos-agent enroll {code} --collector {addr}\n\n\
         Read it out or send it by another channel than the one you fear is watched; a wrong code \n\
         tried {} times burns it.",
        sos_collector::registry::MAX_CODE_ATTEMPTS
    );
    Ok(())
}

/// `agents list` (and `agents`): enrolled agents, then every agent seen by heartbeat.
pub fn list(config: &Config) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let now = sos_collector::store::now_ms();
    let enrolled = store.run(store.store().enrolled_agents())?;
    if enrolled.is_empty() {
        println!("No enrolled agents in {} (enroll one with `sos-collector enroll --name NAME`).", store.place);
    } else {
        println!("Enrolled agents:");
    }
    for a in &enrolled {
        let state = match (a.revoked_at_ms, a.rotation_pending_since_ms, a.previous_key_until_ms) {
            (Some(t), _, _) => format!("REVOKED {}", when_utc(t / 1000)),
            (None, Some(t), _) => format!("rotation pending since {}", when_utc(t / 1000)),
            (None, None, Some(t)) if t > now => format!("active; previous key valid until {}", when_utc(t / 1000)),
            _ => "active".to_owned(),
        };
        let state = if a.site { format!("{state}; SITE collector (forwards its alerts here)") } else { state };
        let seen = a.last_seen_ms.map(|t| when_utc(t / 1000)).unwrap_or_else(|| "never".into());
        println!(
            "{}  {:<24} host {:<20} key {}  enrolled {}  last seen {}  {}",
            a.agent_id,
            a.name,
            a.host,
            a.key_id,
            when_utc(a.enrolled_at_ms / 1000),
            seen,
            state
        );
    }
    let agents = store.run(store.store().agents())?;
    if !enrolled.is_empty() || !agents.is_empty() {
        println!("Heartbeats (key id, user@host, last seen):");
    }
    if agents.is_empty() {
        println!("No heartbeats recorded in {}.", store.place);
    }
    for a in agents {
        println!(
            "{}  {}@{} ({}, from {})  last seen {} ({} s ago)",
            a.key_id,
            a.user,
            a.host,
            a.ip,
            a.source,
            when_utc(a.last_seen_ms / 1000),
            (now - a.last_seen_ms).max(0) / 1000
        );
    }
    Ok(())
}

/// `agents revoke`: refuse every key of `agent` from now on.
pub fn revoke(config: &Config, agent: &str) -> anyhow::Result<()> {
    let store = open_store_rw(config)?;
    let a = store.run(store.store().revoke(agent, sos_collector::store::now_ms()))?;
    println!("Revoked agent {} ({}): its keys are refused from now on.", a.agent_id, a.name);
    Ok(())
}

/// `agents rotate`: a new key for `agent`, delivered with its next heartbeat.
pub fn rotate(config: &Config, agent: &str) -> anyhow::Result<()> {
    let store = open_store_rw(config)?;
    let a = store.run(store.store().rotate(agent, sos_collector::store::now_ms()))?;
    println!(
                        "New key for agent {} ({}): it is sent with the agent's next heartbeat; the old key stays valid until {} after the agent first uses the new one.",
                        a.agent_id,
                        a.name,
                        humantime::format_duration(config.security.rotation_grace)
                    );
    Ok(())
}

/// `forward enroll`: this site's key at its centre, by one-time code (the agent's enrollment
/// client), written to the forward key file (0600).
pub fn forward_enroll(
    config: &Config,
    code: &str,
    centre: Option<String>,
    force: bool,
    timeout_secs: u64,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // As root it would write a key file the service cannot read, and use up the code.
    super::check_owner(config)?;
    let settings = config.forward.as_ref();
    let centre = centre.or_else(|| settings.map(|f| f.centre.clone())).context(
        "no centre: pass --centre HOST:PORT, or set `[forward] centre = \"HOST:PORT\"` in the configuration",
    )?;
    let path =
        settings.map(|f| f.key_file.clone()).unwrap_or_else(|| config.data_dir.join(sos_collector::forward::KEY_FILE));
    if path.exists() && !force {
        anyhow::bail!(
            "{} exists: this site is enrolled already (pass --force to replace the enrollment)",
            path.display()
        );
    }
    let code = sos_shared::enroll::Code::parse(code)?;
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (key, addr) = runtime.block_on(sos_shared::enroll_client::enroll(
        &code,
        &centre,
        &host,
        std::time::Duration::from_secs(timeout_secs.max(1)),
    ))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = serde_json::to_string(&key).context("cannot encode the enrollment")?;
    // Written beside, then renamed over: never a half-written key file.
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    sos_shared::config::write_secret_file(&tmp, &format!("{text}\n"))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    println!("Enrolled at the centre {addr} as the site \"{}\" (id {}).", key.name, key.agent_id);
    eprintln!(
        "The key is in {} (mode 0600). A running collector that had no key starts forwarding within 30 s; \
         one that had another key (--force) keeps it until restarted: restart it. Check with \
         `sos-collector alerts` at the centre after a test alert (`sos-agent send --test`).",
        path.display()
    );
    Ok(())
}
