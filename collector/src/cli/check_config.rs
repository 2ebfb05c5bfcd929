//! `sos-collector check-config`: the file, then what `run` needs from this machine and user.

use std::path::Path;

use anyhow::Context as _;
use sos_collector::Config;

/// `check-config`: the file, then what `run` needs from this machine and this user.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let c = Config::load(path)?;
    for w in c.warnings() {
        eprintln!("WARNING: {w}");
    }
    let bindable = match std::net::UdpSocket::bind(c.listen) {
        Ok(_) => "bindable",
        // The running collector, typically: not an error in what the file says.
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => "in use now (by the running collector?), so not checked",
        Err(e) => {
            return Err(e).with_context(|| {
                format!("listen = \"{}\": cannot bind this UDP address (not an address of this host?)", c.listen)
            })
        }
    };
    writable_dir(&c.data_dir).with_context(|| format!("data_dir {}", c.data_dir.display()))?;
    println!(
        "{}: OK — listen {} ({bindable}), data_dir {} (writable), channels: {}",
        path.display(),
        c.listen,
        c.data_dir.display(),
        c.channel_names().join(", ")
    );
    let tiers =
        |p: &[sos_collector::config::Tier]| p.iter().map(|t| format!("{} s", t.wait.as_secs())).collect::<Vec<_>>();
    println!(
        "responders: {}; escalation: emergency {} tier(s) [{}], drill {} tier(s) [{}]",
        c.responders.len(),
        c.escalation.emergency.len(),
        tiers(&c.escalation.emergency).join(", "),
        c.escalation.drill.len(),
        tiers(&c.escalation.drill).join(", ")
    );
    println!(
        "Not checked: that the channels (Slack, SMTP, Twilio, Teams, ntfy, the webhook) are reachable and accept the \
         credentials (send a drill: \
         sos-agent send --test), and the store's integrity (sos-collector store check)."
    );
    Ok(())
}

/// Whether `dir` exists or can be created, and this user can create files in it. Leaves
/// nothing behind that was not there.
fn writable_dir(dir: &Path) -> anyhow::Result<()> {
    let mut missing = dir;
    while !missing.exists() {
        match missing.parent() {
            Some(p) if !p.as_os_str().is_empty() => missing = p,
            _ => break,
        }
    }
    if missing != dir {
        // Would be created: the nearest existing parent must be writable.
        return probe(missing)
            .with_context(|| format!("cannot be created: {} is not writable by this user", missing.display()));
    }
    if !dir.is_dir() {
        anyhow::bail!("is not a directory");
    }
    probe(dir).context("is not writable by this user")
}

/// Create and remove a file in `dir`.
fn probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(".sos-check-config-{}", std::process::id()));
    std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
    std::fs::remove_file(&path)
}
