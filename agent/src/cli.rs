//! The command line: the arguments (clap) and each command, apart from `run` (the tray agent,
//! [`crate::run`]). Errors are sentences for the person at the keyboard.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use sos_shared::protocol::Sos;
use sos_shared::AlertId;

use crate::config::AgentConfig;
use crate::delivery::acknowledged;
use crate::history::{CancelledFrom, DeliveredAlert, History};
use crate::identity::Identity;
use crate::send::{new_sos, SendError, Sender};
use crate::spool::Spool;

/// The SOS agent: the panic button on this workstation.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do (default: `run`).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `--config FILE`, shared by the commands that read the configuration.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArg {
    /// The configuration file (TOML); by default the system-wide one with the user's over it.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
}

/// What an alert says, shared by `send` and `trigger`.
#[derive(Debug, Clone, Default, Args)]
pub struct AlertArgs {
    /// A message for the responders (cut, visibly, if it does not fit in one datagram).
    #[arg(long, short, default_value = "")]
    pub message: String,
    /// A drill: delivered and marked TEST everywhere.
    #[arg(long)]
    pub test: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The tray agent (the default): Ctrl+Alt+S or a click on the icon sends an SOS.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Ask the running tray agent to send its SOS (for desktop shortcuts, scripts, USB buttons,
    /// and Wayland, where global hotkeys do not work). With no agent running, sends directly
    /// as `send` does.
    Trigger {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        alert: AlertArgs,
    },
    /// Send one SOS now, without the tray: exit 0 once a collector acknowledges it, non-zero
    /// if none does in time (a running tray agent then keeps sending it). Prints the alert id.
    Send {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        alert: AlertArgs,
        /// Give up after this many seconds (default: `send_timeout_secs` from the config, 30).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Withdraw a delivered alert (a false alarm), with or without a tray agent: by default the
    /// last one delivered from this workstation. Responders are told it was cancelled, and asked
    /// to check in person.
    Cancel {
        #[command(flatten)]
        config: ConfigArg,
        /// The alert's id (32 hexadecimal digits), as `send`, `trigger` and `status` print it.
        alert_id: Option<String>,
    },
    /// A responder: "I'm responding" to an alert shown on this desktop, as the popup's action
    /// does (through the running tray agent, or directly when none runs). Exit 0 once a
    /// collector recorded it.
    Respond {
        #[command(flatten)]
        config: ConfigArg,
        /// The alert's id (32 hexadecimal digits), as the popup's details and the tray show it.
        alert_id: String,
        /// A note for the sender and the other responders ("2 minutes away").
        #[arg(long, default_value = "")]
        note: String,
    },
    /// The running agent, a round trip to each collector (a heartbeat: it pages nobody), the
    /// key, and the alerts waiting in the spool. Exit 0 if a collector answered.
    Status {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The alerts waiting in the spool, and those set aside because they can never be sent.
    Spool {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: SpoolAction,
    },
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
        #[command(flatten)]
        config: ConfigArg,
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
}

/// `sos-agent spool …`.
#[derive(Debug, Subcommand)]
pub enum SpoolAction {
    /// List the alerts waiting to be delivered, and those set aside.
    List,
    /// Stop sending a waiting alert and remove it from the spool.
    Discard {
        /// The alert's id.
        alert_id: String,
    },
}

impl Cli {
    /// Whether this is the tray agent.
    pub fn is_run(&self) -> bool {
        matches!(self.command, None | Some(Command::Run { .. }))
    }
}

/// Run the command.
///
/// # Errors
/// A sentence saying what went wrong (exit status 2); a command that ran but failed returns
/// its own non-zero status instead.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command.unwrap_or(Command::Run { config: ConfigArg::default() }) {
        Command::Run { config } => {
            crate::run::run(load(config)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Trigger { config, alert } => trigger(config, alert),
        Command::Send { config, alert, timeout } => send(config, alert, timeout, None),
        Command::Cancel { config, alert_id } => cancel(config, alert_id),
        Command::Status { config } => status(config),
        Command::Respond { config, alert_id, note } => respond(config, &alert_id, note),
        Command::Spool { config, action } => spool(config, action),
        Command::Enroll { code, collector, config, out, system, timeout } => {
            enroll(&code, &collector, config, out, system, timeout)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

fn load(config: ConfigArg) -> anyhow::Result<AgentConfig> {
    if let Some(p) = config.config {
        return Ok(AgentConfig::load(&p)?);
    }
    let files = AgentConfig::default_paths();
    if files.iter().any(|p| p.exists()) || crate::paths::default_enrollment_file().exists() {
        // The system-wide file with the user's over it; enrolled with neither, the enrollment
        // names the collector and holds the key.
        return Ok(AgentConfig::load_layered(&files)?);
    }
    anyhow::bail!(
        "no configuration: pass --config FILE, create {}, or enroll this workstation with `sos-agent enroll CODE --collector HOST:PORT`",
        files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or ")
    )
}

fn parse_id(text: &str) -> anyhow::Result<AlertId> {
    text.trim().to_ascii_lowercase().parse().map_err(|_| {
        anyhow::anyhow!("{text:?} is not an alert id: an alert id is 32 hexadecimal digits, as `sos-agent send` and `sos-agent spool list` print it")
    })
}

/// Ask the running tray agent, if any (its local socket or named pipe: `ipc`).
fn ask_agent(req: &crate::ipc::Request, timeout: Duration) -> Result<crate::ipc::Response, String> {
    let rt = runtime().map_err(|e| e.to_string())?;
    rt.block_on(crate::ipc::request(&crate::ipc::endpoint(), req, timeout)).map_err(|e| e.to_string())
}

/// `sos-agent trigger`: through the running agent, else directly.
fn trigger(config: ConfigArg, alert: AlertArgs) -> anyhow::Result<ExitCode> {
    // The id is ours: if the agent takes the request but we hear nothing back and send the
    // alert ourselves, the collector sees the same alert twice and pages once.
    let alert_id = AlertId::time_ordered();
    let req =
        crate::ipc::Request::Trigger { test: alert.test, message: alert.message.clone(), alert_id: Some(alert_id) };
    match ask_agent(&req, Duration::from_secs(10)) {
        Ok(crate::ipc::Response::Accepted(id)) => {
            println!("alert {id}{}", if alert.test { " (TEST)" } else { "" });
            println!("handed to the running agent, which is sending it (its icon and a toast confirm delivery)");
            return Ok(ExitCode::SUCCESS);
        }
        Ok(other) => eprintln!("the running agent answered {other:?}; sending directly"),
        Err(e) => eprintln!("{e}; sending directly"),
    }
    send(config, alert, None, Some(alert_id))
}

/// `sos-agent send`: one SOS, spooled, sent until acknowledged or `timeout`; if not, handed to
/// the running tray agent, or left in the spool for it.
fn send(config: ConfigArg, alert: AlertArgs, timeout: Option<u64>, id: Option<AlertId>) -> anyhow::Result<ExitCode> {
    let config = load(config)?;
    let mut sos = new_sos(&Identity::current(), &config.location, &alert.message, alert.test);
    if let Some(id) = id {
        sos.alert_id = id;
    }
    let alert_id = sos.alert_id;
    println!("alert {alert_id}{}", if alert.test { " (TEST)" } else { "" });
    if sos.message != alert.message {
        eprintln!("note: the message was too long for one datagram and was cut (it ends with \"…[cut]\")");
    }
    // On disk before the first transmission, held while this process sends it: if it gives
    // up or dies, the tray agent sends it.
    let spool = Spool::open(&config.spool_dir);
    let held = match spool.as_ref().map_err(|e| e.to_string()).and_then(|s| s.put_held(&sos).map_err(|e| e.to_string()))
    {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("warning: the alert is not spooled ({e}); sending anyway");
            None
        }
    };
    let spool = spool.ok().filter(|_| held.is_some());
    let history = History::beside(&config.spool_dir);
    let timeout = Duration::from_secs(timeout.unwrap_or(config.send_timeout_secs).max(1));
    match runtime()?.block_on(Sender::new(&config).send(sos.clone(), timeout)) {
        Ok(d) => {
            acknowledged(spool.as_ref(), &history, &sos, &d);
            println!(
                "acknowledged by {} ({:?}) after {} transmission(s) in {} ms: a collector answered",
                d.collector,
                d.status,
                d.transmissions,
                d.elapsed.as_millis()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(SendError::Seal(e)) => {
            eprintln!("SOS NOT DELIVERED: it cannot be sealed ({e}). Call for help another way.");
            if let Some(Ok(Some(p))) = spool.as_ref().map(|s| s.reject(alert_id)) {
                eprintln!("It can never be sent; it is set aside in {}.", p.display());
            }
            Ok(ExitCode::from(1))
        }
        Err(SendError::NotAcknowledged(n)) => {
            eprintln!(
                "SOS NOT DELIVERED: no collector acknowledged it within {} s ({} transmission(s)). Call for help another way.",
                n.waited.as_secs(),
                n.transmissions
            );
            for c in &n.collectors {
                eprintln!("  - {c}");
            }
            drop(held);
            hand_over(sos, spool.as_ref());
            Ok(ExitCode::from(1))
        }
    }
}

/// A `send` that gave up: the running tray agent keeps sending the alert.
fn hand_over(sos: Sos, spool: Option<&Spool>) {
    let id = sos.alert_id;
    match ask_agent(&crate::ipc::Request::Adopt { sos: Box::new(sos) }, Duration::from_secs(5)) {
        Ok(crate::ipc::Response::Accepted(a)) if a == id => {
            eprintln!(
                "The running tray agent has taken it over and keeps sending it; its icon and a toast confirm delivery."
            );
        }
        _ => match spool {
            Some(s) => eprintln!(
                "The alert stays in {}; the tray agent sends it as soon as it runs (within seconds if it is running).",
                s.dir().display()
            ),
            None => eprintln!("The alert is not saved anywhere: send it again when a collector can be reached."),
        },
    }
}

/// How long `respond` tries (the tray agent tries as long, then answers).
const RESPOND_DEADLINE: Duration = Duration::from_secs(60);

/// `sos-agent respond ALERT_ID [--note TEXT]`: through the running agent, else directly.
fn respond(config: ConfigArg, alert_id: &str, note: String) -> anyhow::Result<ExitCode> {
    let id = parse_id(alert_id)?;
    let req = crate::ipc::Request::Respond { alert_id: id, note: note.clone() };
    let outcome = match ask_agent(&req, RESPOND_DEADLINE + Duration::from_secs(10)) {
        Ok(crate::ipc::Response::Responded(status)) => Ok(status),
        Ok(crate::ipc::Response::Error(e)) => Err(e),
        other => {
            if let Err(e) = &other {
                eprintln!("{e}; sending directly");
            }
            let config = load(config)?;
            println!("responding to alert {id}…");
            runtime()?
                .block_on(Sender::new(&config).respond(id, &note, RESPOND_DEADLINE))
                .map(|(status, _)| status)
                .map_err(|e| e.to_string())
        }
    };
    use sos_shared::protocol::RespondStatus;
    match outcome {
        Ok(RespondStatus::Acknowledged) => {
            println!("You are responding to alert {id}: the sender and the other responders are told you are coming.");
            Ok(ExitCode::SUCCESS)
        }
        Ok(RespondStatus::Already) => {
            println!("Alert {id} is already acknowledged: someone is responding (the popup says who).");
            Ok(ExitCode::SUCCESS)
        }
        Ok(RespondStatus::Closed) => {
            println!("Alert {id} is closed (cancelled or resolved): nobody needs to respond.");
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("Your response to alert {id} is NOT confirmed: {e}. Go anyway, or call.");
            eprintln!("(A collector stays silent when this workstation is not a responder's desktop in its `[[responders]]`, or does not have the alert.)");
            Ok(ExitCode::from(1))
        }
    }
}

/// `sos-agent cancel [ALERT_ID]`: without the tray; the tray is told if it runs.
fn cancel(config: ConfigArg, alert_id: Option<String>) -> anyhow::Result<ExitCode> {
    let config = load(config)?;
    let history = History::beside(&config.spool_dir);
    let id = match alert_id {
        Some(text) => parse_id(&text)?,
        None => match history.last() {
            Some(DeliveredAlert { alert_id, cancelled: None, .. }) => alert_id,
            Some(DeliveredAlert { alert_id, cancelled: Some(c), .. }) => {
                eprintln!(
                    "The last delivered alert, {alert_id}, was already cancelled at {} from {}. To cancel an earlier one, give its id: sos-agent cancel ALERT_ID.",
                    date_time(c.at),
                    c.from.words()
                );
                return Ok(ExitCode::from(1));
            }
            None => {
                eprintln!(
                    "There is no delivered alert to cancel in this workstation's record ({}). To cancel another alert, give its id: sos-agent cancel ALERT_ID.",
                    history.dir().display()
                );
                return Ok(ExitCode::from(1));
            }
        },
    };
    if let Ok(spool) = Spool::open(&config.spool_dir) {
        if spool.pending().unwrap_or_default().iter().any(|s| s.alert_id == id) {
            eprintln!(
                "Alert {id} has not been delivered yet: it is waiting in the spool. To stop sending it: sos-agent spool discard {id}."
            );
            return Ok(ExitCode::from(1));
        }
    }
    println!("cancelling alert {id}…");
    let sender = Sender::new(&config);
    match runtime()?.block_on(crate::delivery::cancel(&sender, &history, id, CancelledFrom::CommandLine)) {
        Ok(by) => {
            println!(
                "Alert {id} is cancelled: the collector {by} recorded it. Responders are told it was a false alarm, and asked to check in person."
            );
            let _ = ask_agent(&crate::ipc::Request::Cancelled { alert_id: id }, Duration::from_secs(2));
            Ok(ExitCode::SUCCESS)
        }
        Err(SendError::NotAcknowledged(n)) => {
            eprintln!(
                "Alert {id} is NOT cancelled: no collector confirmed it within {} s. Responders may still be coming: tell them yourself.",
                n.waited.as_secs()
            );
            for c in &n.collectors {
                eprintln!("  - {c}");
            }
            eprintln!("(A collector also stays silent about an alert it does not have.)");
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("Alert {id} is NOT cancelled: {e}.");
            Ok(ExitCode::from(1))
        }
    }
}

/// `sos-agent status`.
fn status(config: ConfigArg) -> anyhow::Result<ExitCode> {
    let config = load(config)?;
    match ask_agent(&crate::ipc::Request::Status, Duration::from_secs(3)) {
        Ok(crate::ipc::Response::Status(s)) => println!("tray agent: running, {}: {}", s.state, s.detail),
        Ok(other) => println!("tray agent: answered {other:?}"),
        Err(e) => println!("tray agent: not reachable ({e})"),
    }
    match &config.enrollment {
        Some(e) => println!(
            "key: this workstation's own, enrolled as \"{}\" (agent {}) with {} on {}; key id {}; {}",
            e.name,
            e.agent_id,
            e.collector,
            date_time(e.enrolled_at),
            config.key.id(),
            config.enrollment_file.display()
        ),
        None => println!("key: the site key from the configuration (key id {}); not enrolled", config.key.id()),
    }
    let sender = Sender::new(&config);
    let identity = Identity::current();
    // Every collector at once.
    let probes = runtime()?.block_on(async {
        let mut all = tokio::task::JoinSet::new();
        for (i, c) in sender.collectors().iter().enumerate() {
            let (sender, identity, c) = (sender.clone(), identity.clone(), c.clone());
            all.spawn(async move { (i, sender.probe(&c, &identity, Duration::from_secs(3)).await) });
        }
        let mut out: Vec<_> = all.join_all().await;
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, p)| p).collect::<Vec<_>>()
    });
    let mut answered = false;
    for (c, p) in sender.collectors().iter().zip(probes) {
        match p {
            Ok(a) => {
                answered = true;
                println!(
                    "collector {c}: a collector answered from {} in {} ms (its clock differs from ours by {} s)",
                    a.from,
                    a.round_trip.as_millis(),
                    a.clock_difference_secs
                );
            }
            Err(n) => {
                let why = n.collectors.first().map(|r| r.to_string()).unwrap_or_default();
                println!("collector {c}: NO ANSWER: {why}");
            }
        }
    }
    list_spool(&config);
    Ok(if answered { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The spool's content, for `status` and `spool list`.
fn list_spool(config: &AgentConfig) {
    let spool = match Spool::open(&config.spool_dir) {
        Ok(s) => s,
        Err(e) => {
            println!("spool: cannot be used ({e}); a tray agent sends alerts from memory only");
            return;
        }
    };
    match spool.scan() {
        Ok(scan) => {
            println!("spool {}: {} alert(s) waiting", spool.dir().display(), scan.alerts.len());
            for s in scan.alerts {
                let mut line = format!("  {}  pressed {}", s.sos.alert_id, date_time(s.sos.triggered_at));
                if s.sos.test {
                    line.push_str("  TEST");
                }
                if s.busy {
                    line.push_str("  (being sent by a `sos-agent send`)");
                }
                if !s.sos.message.is_empty() {
                    let m: String = s.sos.message.chars().take(60).collect();
                    line.push_str(&format!("  \"{m}\""));
                }
                println!("{line}");
            }
            for s in scan.set_aside {
                println!("  set aside now: {} ({})", s.file.display(), s.reason);
            }
        }
        Err(e) => println!("spool: cannot be read ({e})"),
    }
    let rejected = spool.rejected();
    if !rejected.is_empty() {
        println!("set aside (can never be sent), in {}: {}", spool.rejected_dir().display(), rejected.len());
        for p in rejected {
            println!("  {}", p.display());
        }
    }
}

/// `sos-agent spool list|discard`.
fn spool(config: ConfigArg, action: SpoolAction) -> anyhow::Result<ExitCode> {
    let config = load(config)?;
    match action {
        SpoolAction::List => {
            list_spool(&config);
            Ok(ExitCode::SUCCESS)
        }
        SpoolAction::Discard { alert_id } => {
            let id = parse_id(&alert_id)?;
            let spool = Spool::open(&config.spool_dir)
                .with_context(|| format!("the spool {} cannot be used", config.spool_dir.display()))?;
            let removed = spool.discard(id)?;
            let stopped = matches!(
                ask_agent(&crate::ipc::Request::Discard { alert_id: id }, Duration::from_secs(3)),
                Ok(crate::ipc::Response::Done(true))
            );
            if removed || stopped {
                println!("Alert {id} is discarded: it will not be sent. If it already reached a collector, cancel it with: sos-agent cancel {id}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "Alert {id} is not waiting in the spool ({}) nor being sent by the tray agent.",
                    spool.dir().display()
                );
                Ok(ExitCode::from(1))
            }
        }
    }
}

/// `sos-agent enroll`: a one-time code becomes this workstation's own key.
fn enroll(
    code: &str,
    collector: &str,
    config: ConfigArg,
    out: Option<PathBuf>,
    system: bool,
    timeout: u64,
) -> anyhow::Result<ExitCode> {
    let code = sos_shared::enroll::Code::parse(code)?;
    let collector_addr = crate::config::normalize_collector(collector)
        .ok_or_else(|| anyhow::anyhow!("--collector {collector:?} is not a host, host:port or [ipv6]:port"))?;
    if system && cfg!(unix) && !crate::keys::running_as_root() {
        anyhow::bail!("--system enrolls the machine for all its users and must run as root: sudo sos-agent enroll CODE --collector {collector} --system");
    }
    let path = match out {
        Some(p) => p,
        None if system => crate::paths::machine_enrollment_file(),
        // The enrollment file the config names (the user's file over the system-wide one);
        // else the user's own.
        None => AgentConfig::enrollment_file_set_by(&match config.config {
            Some(c) => vec![c],
            None => AgentConfig::default_paths(),
        })
        .unwrap_or_else(crate::paths::user_enrollment_file),
    };
    let host = Identity::current().host;
    let (key, addr) = runtime()?.block_on(crate::enroll::enroll(
        &code,
        &collector_addr,
        &host,
        Duration::from_secs(timeout.max(1)),
    ))?;
    let enrollment = crate::keys::Enrollment {
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

/// A local date and time.
fn date_time(unix: u64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .map(|t| t.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| unix.to_string())
}
