//! The administrator commands: the command line ([`Cli`]) and what each command does.
//!
//! - `run`: [`serve`] (the runtime, the socket, signals; the service itself is
//!   [`sos_collector::Collector`]).
//! - `check-config`: [`check_config`]. `alerts` (list, show, ack, resolve, checked): [`alerts`].
//!   `responders`: [`responders`]. `enroll`, `agents`: [`agents`].
//!   `store check|recover`: [`store`]. `keygen` is one line, here.
//! - The store each command works on, SQLite or PostgreSQL: [`open`].

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use sos_collector::Config;

mod agents;
mod alerts;
pub mod check_config;
mod console;
mod open;
mod responders;
mod serve;
pub mod store;

/// The SOS collector: receives, stores and acknowledges SOS alerts, and notifies responders.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Recent alerts and each channel's delivery state (the default); an alert's timeline;
    /// acknowledge, resolve, or mark checked an alert in a responder's name. A running
    /// collector notices within a second or two (its escalation stops at an acknowledgement).
    Alerts {
        /// The configuration file (TOML), to find the data dir and the responders.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// How many alerts, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(subcommand)]
        action: Option<AlertsAction>,
    },
    /// The configured responders: list them with their agents and whether each is online (the
    /// default); set a console password, or make a one-time invitation link.
    Responders {
        /// The configuration file (TOML): where responders are configured.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<RespondersAction>,
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
    /// The SQLite store: check it for damage, or recover what a damaged store still holds. (A
    /// PostgreSQL store has its own tools: pg_amcheck, pg_dump, its backups.)
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
        /// The code enrolls a site collector that forwards its alerts here (this is the
        /// centre), not a workstation; `--name` is the site's name, shown with each of its
        /// alerts. On the site: `sos-collector forward enroll --code CODE`.
        #[arg(long)]
        site: bool,
        /// The configuration file (TOML), to find the data dir.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Forwarding to a central collector (`[forward] centre` in this site's config).
    Forward {
        #[command(subcommand)]
        action: ForwardAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ForwardAction {
    /// Enroll this site collector at its centre with a one-time code the centre's
    /// administrator made (`sos-collector enroll --site --name SITE`); the site's key is
    /// written to `[forward] key_file` (default `data_dir/forward.key`, mode 0600). A running
    /// collector starts forwarding within 30 s.
    Enroll {
        /// The one-time code.
        #[arg(long)]
        code: String,
        /// The centre's UDP address, `HOST:PORT` (default: `[forward] centre` from the config).
        #[arg(long)]
        centre: Option<String>,
        /// Replace an existing enrollment (the old key stays valid at the centre until revoked
        /// there with `sos-collector agents revoke`).
        #[arg(long)]
        force: bool,
        /// How long to try, in seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlertsAction {
    /// One alert: what was received, and its timeline, one line per event (who, when, through
    /// what), with the time to acknowledge.
    Show {
        /// The alert id (32 hex digits, as `alerts` and the channels show it).
        id: String,
    },
    /// Acknowledge in a responder's name ("I'm coming"): escalation and pending pages stop, the
    /// notified channels and the sender are told.
    Ack {
        /// The alert id.
        id: String,
        /// A configured responder's name (`[[responders]] name`).
        #[arg(long)]
        responder: String,
        /// A note for the timeline and the sender.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Close it with an outcome: the notified channels and the sender are told.
    Resolve {
        /// The alert id.
        id: String,
        /// A configured responder's name.
        #[arg(long)]
        responder: String,
        /// What happened ("false alarm", "handled by security", …).
        #[arg(long, default_value = "")]
        outcome: String,
        /// A note for the timeline.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// A cancelled alert was checked in person: it is closed.
    Checked {
        /// The alert id.
        id: String,
        /// A configured responder's name.
        #[arg(long)]
        responder: String,
        /// A note for the timeline.
        #[arg(long, default_value = "")]
        note: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RespondersAction {
    /// Each responder with its groups, its agents, and whether each agent is online.
    List,
    /// Set the console password of NAME (an account of `[http] admins` or `[[responders]]`),
    /// read from standard input: twice without echo on a terminal, else the first line.
    Passwd {
        /// The account name.
        name: String,
    },
    /// Print a one-time link where NAME sets their own console password.
    Invite {
        /// The account name.
        name: String,
        /// How long the link stays valid, in hours.
        #[arg(long, default_value_t = 72)]
        expires_hours: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreAction {
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
pub enum AgentsAction {
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

/// Do what `command` says.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keygen => {
            println!("{}", sos_shared::Key::generate());
            Ok(())
        }
        Command::CheckConfig { config } => check_config::run(&config),
        Command::Alerts { config, limit, action } => {
            let c = load(config.as_deref())?;
            match action {
                None => alerts::run(&c, limit),
                Some(AlertsAction::Show { id }) => alerts::show(&c, &id),
                Some(AlertsAction::Ack { id, responder, note }) => alerts::ack(&c, &id, &responder, &note),
                Some(AlertsAction::Resolve { id, responder, outcome, note }) => {
                    alerts::resolve(&c, &id, &responder, &outcome, &note)
                }
                Some(AlertsAction::Checked { id, responder, note }) => alerts::checked(&c, &id, &responder, &note),
            }
        }
        Command::Responders { config, action } => {
            let c = load(config.as_deref())?;
            match action.unwrap_or(RespondersAction::List) {
                RespondersAction::List => responders::list(&c),
                RespondersAction::Passwd { name } => console::passwd(&c, &name),
                RespondersAction::Invite { name, expires_hours } => console::invite(&c, &name, expires_hours),
            }
        }
        Command::Agents { config, action } => {
            let config = load(config.as_deref())?;
            match action.unwrap_or(AgentsAction::List) {
                AgentsAction::List => agents::list(&config),
                AgentsAction::Revoke { agent } => agents::revoke(&config, &agent),
                AgentsAction::Rotate { agent } => agents::rotate(&config, &agent),
            }
        }
        Command::Enroll { name, expires_minutes, site, config } => {
            agents::enroll(&load(config.as_deref())?, &name, expires_minutes, site)
        }
        Command::Forward { action: ForwardAction::Enroll { code, centre, force, timeout, config } } => {
            agents::forward_enroll(&load(config.as_deref())?, &code, centre, force, timeout)
        }
        Command::Store { config, action } => {
            let c = load(config.as_deref())?;
            // Before anything touches data_dir: a sos.db left there is not the store.
            let elsewhere = match &action {
                StoreAction::Check => open::sqlite_only(&c, "store check", store::POSTGRES_CHECK),
                StoreAction::Recover { .. } => open::sqlite_only(&c, "store recover", store::POSTGRES_RECOVER),
            };
            if let Some(message) = elsewhere {
                anyhow::bail!(message);
            }
            check_owner(&c)?;
            let fine = match action {
                StoreAction::Check => store::check(&c)?,
                StoreAction::Recover { output } => store::recover(&c, output, config.as_deref())?,
            };
            if !fine {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Run { config } => {
            let flag = config.as_ref().map(|c| format!(" --config {}", c.display())).unwrap_or_default();
            serve::run(load(config.as_deref())?).map_err(|e| match e.downcast_ref::<sos_collector::CollectorError>() {
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

fn load(config: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
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
    // Elsewhere (Windows) the collector is not a service and the check does not apply.
    #[cfg(not(unix))]
    let _ = config;
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

/// The store `config` names, for a command that only reads it.
fn open_store(config: &Config) -> anyhow::Result<open::Opened> {
    open::Opened::open(config, open::Access::Read)
}

/// The store `config` names, for a command that changes it.
fn open_store_rw(config: &Config) -> anyhow::Result<open::Opened> {
    open::Opened::open(config, open::Access::Write)
}
