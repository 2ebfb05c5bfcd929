//! `sos-collector`: parse arguments, set up logging, run. The work is in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sos_collector::channel::when_utc;
use sos_collector::store::Db;
use sos_collector::Config;

/// The SOS collector: receives, stores and acknowledges SOS alerts, and notifies responders.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a new key (url-safe base64 of 32 bytes) for `key` / `key_file`.
    Keygen,
    /// Run the service. With no config it listens on 127.0.0.1:5000 and keeps its data and a
    /// generated key in ./sos-data.
    Run {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file; exit non-zero with a clear message if it is wrong.
    CheckConfig {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List recent alerts and each channel's delivery state, from the store.
    Alerts {
        /// The configuration file (TOML), to find the data dir.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// How many alerts, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Enrolled agents and heartbeats: list them (the default), revoke or rotate an agent's key.
    /// A running collector applies changes within a second.
    Agents {
        /// The configuration file (TOML), to find the data dir.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<AgentsAction>,
    },
    /// The store: check it for damage, or recover what a damaged store still holds.
    Store {
        /// The configuration file (TOML), to find the data dir.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Make a one-time code that enrolls one workstation with its own key. Give the code to the
    /// person at the workstation (it is short enough to read over the phone); they run
    /// `sos-agent enroll CODE --collector HOST:PORT`.
    Enroll {
        /// The name the agent is enrolled under (a desk, a room, a person), shown to responders.
        #[arg(long)]
        name: String,
        /// How long the code stays valid, in minutes.
        #[arg(long, default_value_t = 10)]
        expires_minutes: u64,
        /// The configuration file (TOML), to find the data dir.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum StoreAction {
    /// SQLite's full integrity check of the store; exit status 1 if it is damaged.
    Check,
    /// With the collector stopped: copy every row that can still be read into a new store file,
    /// list what could not be read, and queue again the recent deliveries whose records were
    /// lost. The damaged file is only read. Exit status 1 if anything was lost.
    Recover {
        /// Where to write the recovered store (default: the store's path + `.recovered`).
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AgentsAction {
    /// Enrolled agents (id, name, key id, state, last seen), then every agent seen by heartbeat.
    List,
    /// Refuse every key of an agent from now on (a lost laptop, a leaked key). Re-enroll to undo.
    Revoke {
        /// Agent id or its unique name.
        agent: String,
    },
    /// Give an agent a new key. It reaches the agent with its next heartbeat, sealed with the
    /// current key; the old key then stays valid for `security.rotation_grace_secs`.
    Rotate {
        /// Agent id or its unique name.
        agent: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sos-collector: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load(config: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

mod cli;

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keygen => {
            println!("{}", sos_shared::Key::generate());
            Ok(())
        }
        Command::CheckConfig { config } => cli::check_config::run(&config),
        Command::Alerts { config, limit } => alerts(&load(config.as_deref())?, limit),
        Command::Agents { config, action } => {
            let config = load(config.as_deref())?;
            match action.unwrap_or(AgentsAction::List) {
                AgentsAction::List => agents(&config),
                AgentsAction::Revoke { agent } => {
                    let (mut db, _) = open_store_rw(&config)?;
                    let a = db.revoke(&agent, sos_collector::store::now_ms())?;
                    println!("Revoked agent {} ({}): its keys are refused from now on.", a.agent_id, a.name);
                    Ok(())
                }
                AgentsAction::Rotate { agent } => {
                    let (mut db, _) = open_store_rw(&config)?;
                    let a = db.rotate(&agent, sos_collector::store::now_ms())?;
                    println!(
                        "New key for agent {} ({}): it is sent with the agent's next heartbeat; the old key stays valid until {} after the agent first uses the new one.",
                        a.agent_id,
                        a.name,
                        humantime::format_duration(config.security.rotation_grace)
                    );
                    Ok(())
                }
            }
        }
        Command::Enroll { name, expires_minutes, config } => enroll(&load(config.as_deref())?, &name, expires_minutes),
        Command::Store { config, action } => {
            let c = load(config.as_deref())?;
            check_owner(&c)?;
            let fine = match action {
                StoreAction::Check => cli::store::check(&c)?,
                StoreAction::Recover { output } => cli::store::recover(&c, output, config.as_deref())?,
            };
            if !fine {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Run { config } => {
            let flag = config.as_ref().map(|c| format!(" --config {}", c.display())).unwrap_or_default();
            serve(load(config.as_deref())?).map_err(|e| match e.downcast_ref::<sos_collector::CollectorError>() {
                Some(sos_collector::CollectorError::Store(
                    damaged @ sos_collector::store::StoreError::Damaged { .. },
                )) => {
                    anyhow::anyhow!(
                        "{damaged}. With the collector stopped, run `sos-collector store recover{flag}`: it copies \
                         what can still be read into a new file, lists what it could not, and prints how to put the \
                         new file in place"
                    )
                }
                _ => e,
            })
        }
    }
}

fn serve(mut config: Config) -> anyhow::Result<()> {
    sos_collector::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sos-collector")
        .build()
        .context("cannot start the async runtime")?;
    // The socket first: a collector that cannot listen creates no file and tells nobody to point
    // an agent at it.
    let socket = rt.block_on(async { tokio::net::UdpSocket::bind(config.listen).await }).with_context(|| {
        format!("cannot listen on UDP {} (in use by another collector? not an address of this host?)", config.listen)
    })?;
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    if let Some(path) = config.ensure_key()? {
        let abs = std::fs::canonicalize(&path).unwrap_or(path);
        eprintln!(
            "No key configured: using {} (created if new, mode 0600).\n\
             Point an agent at this collector with an agent config like:\n\n    \
             collectors = [\"{}\"]\n    key_file = \"{}\"\n\n\
             then: sos-agent send --test --config agent.toml\n",
            abs.display(),
            config.listen,
            abs.display()
        );
    }
    rt.block_on(async move {
        let want = config.socket_buffer_bytes;
        let got = sos_collector::server::size_socket_buffers(&socket, want);
        if cfg!(unix) && got.receive < want {
            tracing::warn!(
                asked = want,
                receive = got.receive,
                send = got.send,
                "the kernel granted a smaller UDP receive buffer than socket_buffer_bytes: a storm of SOS may be \
                 dropped before the collector reads it; raise net.core.rmem_max and net.core.wmem_max \
                 (the Debian package installs /usr/lib/sysctl.d/60-sos-collector.conf) or lower socket_buffer_bytes"
            );
        } else {
            tracing::info!(receive = got.receive, send = got.send, "UDP socket buffers");
        }
        sos_collector::run(socket, config, shutdown_signal()).await?;
        Ok(())
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The store belongs to the service's user. Opened by anyone else (root, typically, running the
/// CLI with sudo), SQLite could leave behind files (`sos.db-wal`, `-shm`) the service cannot
/// write, and the next alert would fail to store. So the CLI runs as the owner of the data dir.
fn check_owner(config: &Config) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let Ok(meta) = std::fs::metadata(&config.data_dir) else { return Ok(()) };
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            let owner = user_name(meta.uid()).unwrap_or_else(|| format!("uid {}", meta.uid()));
            anyhow::bail!(
                "{} belongs to {owner}, the collector's user; run this command as that user, e.g. sudo -u {owner} sos-collector ...",
                config.data_dir.display()
            );
        }
    }
    Ok(())
}

/// The login name of `uid`, from /etc/passwd.
#[cfg(unix)]
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

fn open_store(config: &Config) -> anyhow::Result<(Db, PathBuf)> {
    check_owner(config)?;
    let path = config.database_path();
    if !path.exists() {
        anyhow::bail!("no store at {} (has the collector run with this data_dir?)", path.display());
    }
    // Its errors name the file.
    let db = Db::open_read_only(&path)?;
    Ok((db, path))
}

fn open_store_rw(config: &Config) -> anyhow::Result<(Db, PathBuf)> {
    check_owner(config)?;
    let path = config.database_path();
    let db = Db::open(&path)?;
    Ok((db, path))
}

fn enroll(config: &Config, name: &str, expires_minutes: u64) -> anyhow::Result<()> {
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
    let (mut db, _) = open_store_rw(config)?;
    let now = sos_collector::store::now_ms();
    let code = db.create_enrollment(name, expires_minutes as i64 * 60_000, now)?;
    let until = when_utc((now + expires_minutes as i64 * 60_000) / 1000);
    let addr = if config.listen.ip().is_unspecified() {
        format!("THIS-HOST:{}", config.listen.port())
    } else {
        config.listen.to_string()
    };
    println!("{code}");
    eprintln!(
        "\nOne-time code for \"{name}\", valid once until {until} ({expires_minutes} min).\n\
         On the workstation, run:\n\n    sos-agent enroll {code} --collector {addr}\n\n\
         Read it out or send it by another channel than the one you fear is watched; a wrong code \n\
         tried {} times burns it.",
        sos_collector::registry::MAX_CODE_ATTEMPTS
    );
    Ok(())
}

fn agents(config: &Config) -> anyhow::Result<()> {
    let (db, path) = open_store(config)?;
    let now = sos_collector::store::now_ms();
    let enrolled = db.enrolled_agents()?;
    if enrolled.is_empty() {
        println!("No enrolled agents in {} (enroll one with `sos-collector enroll --name NAME`).", path.display());
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
    let agents = db.agents()?;
    if !enrolled.is_empty() || !agents.is_empty() {
        println!("Heartbeats (key id, user@host, last seen):");
    }
    if agents.is_empty() {
        println!("No heartbeats recorded in {}.", path.display());
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

fn alerts(config: &Config, limit: usize) -> anyhow::Result<()> {
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
