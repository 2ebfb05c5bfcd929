//! `sos-collector check-config`: the file, then what `run` needs from this machine and user.

use std::path::Path;
use std::str::FromStr as _;

use anyhow::Context as _;
use sos_collector::config::store::redacted;
use sos_collector::Config;
use sos_shared::config::{ExposeSecret as _, SecretString};

/// How long `check-config` waits for PostgreSQL to answer a connection.
const CONNECT_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

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
    // Before the OK line: a store that cannot be used makes the configuration wrong here.
    let store = match &c.database_url {
        None => format!("SQLite {}", c.database_path().display()),
        Some(url) => format!("PostgreSQL {} ({})", redacted(url), reach(url)?),
    };
    println!(
        "{}: OK — listen {} ({bindable}), data_dir {} (writable), channels: {}",
        path.display(),
        c.listen,
        c.data_dir.display(),
        c.channel_names().join(", ")
    );
    println!("store: {store}");
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
    let integrity = if c.database_url.is_some() {
        "PostgreSQL's own tools: pg_amcheck on the database server"
    } else {
        "sos-collector store check"
    };
    println!(
        "Not checked: that the channels (Slack, SMTP, Twilio, Teams, ntfy, the webhook) are reachable and accept the \
         credentials (send a drill: \
         sos-agent send --test), and the store's integrity ({integrity})."
    );
    Ok(())
}

/// Connect to the PostgreSQL store as `run` would (without changing anything: no migration)
/// and say what answered: the server's version and the store's schema version.
///
/// # Errors
/// If it cannot connect or query, naming `database_url` as shown without its password.
fn reach(url: &SecretString) -> anyhow::Result<String> {
    let shown = redacted(url);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let answer: Result<(String, Option<i64>), tokio_postgres::Error> = runtime.block_on(async {
        let mut config = tokio_postgres::Config::from_str(url.expose_secret())?;
        config.connect_timeout(CONNECT_WITHIN);
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        let server: String = client.query_one("SHOW server_version", &[]).await?.get(0);
        let table: Option<String> = client.query_one("SELECT to_regclass('schema_version')::text", &[]).await?.get(0);
        let schema = match table {
            Some(_) => {
                client.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[]).await?.get::<_, i64>(0)
            }
            None => 0,
        };
        drop(client);
        let _ = driver.await;
        Ok((server, (schema > 0).then_some(schema)))
    });
    // tokio_postgres's messages carry no password (the URL's user and host at most).
    let (server, schema) = answer
        .map_err(|e| anyhow::anyhow!("database_url ({shown}): cannot connect to PostgreSQL and query it: {e}"))?;
    Ok(match schema {
        Some(v) => format!("reachable: PostgreSQL {server}, store schema version {v}"),
        None => format!("reachable: PostgreSQL {server}, no store tables yet: the first collector to start makes them"),
    })
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
