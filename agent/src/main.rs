//! `sos-agent`: parse arguments, set up logging, run. The work is in the library
//! ([`sos_agent::cli`]).

use std::process::ExitCode;

use clap::Parser as _;
use sos_agent::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.is_run());
    match sos_agent::cli::run(cli) {
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
