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
    /// The tray agent (the default): Ctrl+Alt+S or a click on the icon sends an SOS.
    Run {
        /// The configuration file (TOML); by default the system-wide one with the user's over it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Ask the running tray agent to send its SOS (for desktop shortcuts, scripts, USB buttons,
    /// and Wayland, where global hotkeys do not work). With no agent running, sends directly
    /// as `send` does.
    Trigger {
        /// The configuration file, used only when no agent runs and the SOS is sent directly.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A message for the responders.
        #[arg(long, short, default_value = "")]
        message: String,
        /// A drill: delivered and marked TEST everywhere.
        #[arg(long)]
        test: bool,
    },
    /// Withdraw the last acknowledged alert through the running tray agent (a false alarm).
    /// Responders are told it was cancelled, and asked to check in person.
    Cancel,
    /// Enroll this workstation with a one-time code from `sos-collector enroll`: the agent gets
    /// its own key, saved (mode 0600) to the enrollment file, and uses it from then on. With
    /// `--system` (as root), the machine is enrolled once for all its users.
    Enroll {
        /// The code, e.g. K7QF-9M2P-XR4C (case, dashes and spaces do not matter).
        code: String,
        /// The collector that issued the code, HOST:PORT.
        #[arg(long)]
        collector: String,
        /// The configuration file, for its `enrollment_file`; by default the user's, then the
        /// system-wide one, if any.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Write the enrollment here instead.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Enroll the machine, for every user of it (run as root, e.g. by the package or a
        /// deployment tool): written to /etc/sos/enrollment.toml (or --out), owned by root and
        /// readable by the workstation's users. A user's own enrollment still wins over it.
        #[arg(long)]
        system: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Send one SOS now, without the tray: exit 0 once a collector acknowledges it, non-zero
    /// if none does in time. Prints the alert id.
    Send {
        /// The configuration file (TOML); by default the system-wide one with the user's over it.
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
    let is_run = matches!(cli.command, None | Some(Command::Run { .. }));
    init_logging(is_run);
    let command = cli.command.unwrap_or(Command::Run { config: None });
    match run(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sos-agent: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs go to stderr; the tray agent also appends them to `agent.log` in the platform log
/// directory (and logs at `info`), since nobody watches its stderr.
fn init_logging(is_run: bool) {
    use tracing_subscriber::fmt::writer::MakeWriterExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if is_run { "info" } else { "warn" }));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let file = is_run
        .then(|| {
            let dir = sos_agent::paths::log_dir();
            std::fs::create_dir_all(&dir).ok()?;
            std::fs::OpenOptions::new().create(true).append(true).open(dir.join("agent.log")).ok()
        })
        .flatten();
    match file {
        Some(f) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::io::stderr.and(std::sync::Mutex::new(f)))
            .init(),
        None => tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init(),
    }
}

fn load(config: Option<PathBuf>) -> anyhow::Result<AgentConfig> {
    if let Some(p) = config {
        return Ok(AgentConfig::load(&p)?);
    }
    let files = AgentConfig::default_paths();
    if files.iter().any(|p| p.exists()) || sos_agent::paths::default_enrollment_file().exists() {
        // The system-wide file with the user's over it; enrolled with neither, the enrollment
        // names the collector and holds the key.
        return Ok(AgentConfig::load_layered(&files)?);
    }
    anyhow::bail!(
        "no configuration: pass --config FILE, create {}, or enroll this workstation with `sos-agent enroll CODE --collector HOST:PORT`",
        files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or ")
    )
}

/// `sos-agent enroll`: a one-time code becomes this workstation's own key.
fn enroll(
    code: &str,
    collector: &str,
    config: Option<PathBuf>,
    out: Option<PathBuf>,
    system: bool,
    timeout: u64,
) -> anyhow::Result<ExitCode> {
    let code = sos_shared::enroll::Code::parse(code)?;
    let collector_addr = sos_agent::config::normalize_collector(collector)
        .ok_or_else(|| anyhow::anyhow!("--collector {collector:?} is not a host, host:port or [ipv6]:port"))?;
    if system && cfg!(unix) && !sos_agent::keys::running_as_root() {
        anyhow::bail!("--system enrolls the machine for all its users and must run as root: sudo sos-agent enroll CODE --collector {collector} --system");
    }
    let path = match out {
        Some(p) => p,
        None if system => sos_agent::paths::machine_enrollment_file(),
        None => {
            // The enrollment file the config names (the user's file over the system-wide one);
            // else the user's own.
            let files = match config {
                Some(c) => vec![c],
                None => AgentConfig::default_paths().into_iter().rev().collect(),
            };
            files
                .iter()
                .filter(|f| f.exists())
                .find_map(|f| enrollment_file_of(f))
                .unwrap_or_else(sos_agent::paths::user_enrollment_file)
        }
    };
    let host = Identity::current().host;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (key, addr) =
        rt.block_on(sos_agent::enroll::enroll(&code, &collector_addr, &host, Duration::from_secs(timeout.max(1))))?;
    let enrollment = sos_agent::keys::Enrollment {
        agent_id: key.agent_id.clone(),
        name: key.name.clone(),
        collector: collector_addr.clone(),
        enrolled_at: sos_shared::unix_now(),
        key: key.key,
    };
    if system {
        enrollment.save_for_machine(&path).with_context(|| format!("cannot write {}", path.display()))?;
    } else {
        enrollment.save(&path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("Enrolled as \"{}\" (agent {}) with {} ({addr}).", enrollment.name, enrollment.agent_id, collector_addr);
    if system {
        println!(
            "The machine's key is saved in {} (owned by root, readable by this workstation's users).",
            path.display()
        );
    } else {
        println!("This workstation's own key is saved in {} (mode 0600).", path.display());
    }
    println!("Check it end to end with: sos-agent send --test");
    Ok(ExitCode::SUCCESS)
}

/// The `enrollment_file` a config file sets, resolved against its directory.
fn enrollment_file_of(config: &std::path::Path) -> Option<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Only {
        enrollment_file: Option<PathBuf>,
    }
    let text = std::fs::read_to_string(config).ok()?;
    let v: toml::Value = toml::from_str(&text).ok()?;
    let only: Only = v.try_into().ok()?;
    let p = only.enrollment_file?;
    Some(if p.is_absolute() { p } else { config.parent().unwrap_or(std::path::Path::new(".")).join(p) })
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            sos_agent::run::run(load(config)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Trigger { config, message, test } => {
            #[cfg(unix)]
            {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let path = sos_agent::ipc::socket_path();
                let req = sos_agent::ipc::Request::Trigger { test, message: message.clone() };
                match rt.block_on(sos_agent::ipc::request(&path, &req, Duration::from_secs(10))) {
                    Ok(sos_agent::ipc::Response::Accepted(id)) => {
                        println!("alert {id}{}", if test { " (TEST)" } else { "" });
                        println!(
                            "handed to the running agent, which is sending it (its icon and a toast confirm delivery)"
                        );
                        return Ok(ExitCode::SUCCESS);
                    }
                    Ok(other) => eprintln!("the running agent answered {other:?}; sending directly"),
                    Err(e) => eprintln!("{e}; sending directly"),
                }
            }
            send(config, message, test, None)
        }
        Command::Send { config, message, test, timeout } => send(config, message, test, timeout),
        Command::Enroll { code, collector, config, out, system, timeout } => {
            enroll(&code, &collector, config, out, system, timeout)
        }
        Command::Cancel => {
            #[cfg(unix)]
            {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let path = sos_agent::ipc::socket_path();
                match rt.block_on(sos_agent::ipc::request(
                    &path,
                    &sos_agent::ipc::Request::Cancel,
                    Duration::from_secs(10),
                ))? {
                    sos_agent::ipc::Response::Cancelling(id) => {
                        println!("cancelling alert {id}; a toast confirms when a collector has recorded it");
                        Ok(ExitCode::SUCCESS)
                    }
                    other => {
                        eprintln!("not cancelled: {other:?}");
                        Ok(ExitCode::from(1))
                    }
                }
            }
            #[cfg(not(unix))]
            anyhow::bail!("`sos-agent cancel` needs the running agent's local socket, not available on this platform yet; use the tray menu")
        }
    }
}

/// `sos-agent send`: one SOS, spooled, sent until acknowledged or `timeout`.
fn send(config: Option<PathBuf>, message: String, test: bool, timeout: Option<u64>) -> anyhow::Result<ExitCode> {
    {
        {
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
