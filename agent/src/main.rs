//! `sos-agent`: parse arguments, set up logging, run. The work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sos_agent::identity::Identity;
use sos_agent::send::new_sos;
use sos_agent::spool::Spool;
use sos_agent::{AgentConfig, Sender};

/// The SOS agent: the panic button on this workstation.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send one SOS now, without the tray: exit 0 once a collector acknowledges it, non-zero
    /// if none does in time. Prints the alert id.
    Send {
        /// The configuration file (TOML); by default the user's, then the system-wide one.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A message for the responders.
        #[arg(long, short, default_value = "")]
        message: String,
        /// A drill: delivered and marked TEST everywhere.
        #[arg(long)]
        test: bool,
        /// Give up after this many seconds (default: `send_timeout_secs` from the config, 30).
        #[arg(long)]
        timeout: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let Some(command) = cli.command else {
        eprintln!(
            "sos-agent: the tray agent (`sos-agent run`, `sos-agent trigger`) is not built yet.\n\
             Use `sos-agent send` to send an SOS from a script or a shortcut; see `sos-agent --help`."
        );
        return ExitCode::from(2);
    };
    match run(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sos-agent: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load(config: Option<PathBuf>) -> anyhow::Result<AgentConfig> {
    if let Some(p) = config {
        return Ok(AgentConfig::load(&p)?);
    }
    let candidates = AgentConfig::default_paths();
    match candidates.iter().find(|p| p.exists()) {
        Some(p) => Ok(AgentConfig::load(p)?),
        None => anyhow::bail!(
            "no configuration: pass --config FILE or create one of: {}",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Send { config, message, test, timeout } => {
            let config = load(config)?;
            let sos = new_sos(&Identity::current(), &config.location, &message, test);
            let alert_id = sos.alert_id;
            println!("alert {alert_id}{}", if test { " (TEST)" } else { "" });
            // On disk before the first transmission: if this process dies or gives up, the
            // tray agent resends it until a collector acknowledges it.
            let spool = match Spool::open(&config.spool_dir).and_then(|s| s.put(&sos).map(|()| s)) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("warning: the alert is not spooled ({e}); sending anyway");
                    None
                }
            };
            let timeout = Duration::from_secs(timeout.unwrap_or(config.send_timeout_secs).max(1));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            match rt.block_on(Sender::new(&config).send(sos, timeout)) {
                Ok(d) => {
                    if let Some(Err(e)) = spool.as_ref().map(|s| s.remove(alert_id)) {
                        eprintln!("warning: acknowledged, but cannot remove it from the spool: {e}");
                    }
                    println!(
                        "acknowledged by {} ({:?}) after {} transmission(s) in {} ms",
                        d.collector,
                        d.status,
                        d.transmissions,
                        d.elapsed.as_millis()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("SOS NOT DELIVERED: {e}. Call for help another way.");
                    if let Some(s) = &spool {
                        eprintln!("The alert stays in {}; the tray agent resends it when it runs.", s.dir().display());
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
