//! The Windows agent (`sos-agent.exe`, built for `x86_64-pc-windows-gnu`) under Wine, against
//! the real Linux collector over real UDP on loopback, with the Slack stand-in: it enrolls,
//! sends, spools, reads its configuration and keeps its key in the Windows folders
//! (`%ProgramData%`, `%APPDATA%`, `%LOCALAPPDATA%`), and answers `trigger` and `status` over its
//! named pipe. What Wine cannot show here (the tray icon, the hotkey, toasts) is listed in
//! installer/README.md as not run.
//!
//! Needs the Windows binaries (`cargo build --release --target x86_64-pc-windows-gnu -p
//! sos-agent -p sos-collector`), Wine and MinGW (tests/src/wine.rs); skips without Wine or
//! MinGW unless `CI` is set.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sos_e2e::bin::bin;
use sos_e2e::process::alert_id_of;
use sos_e2e::site::Site;
use sos_e2e::wine::{windows_bin, Prefix, Wine};
use sos_e2e::{eventually, CollectorProcess, SlackStandIn};

const WAIT: Duration = Duration::from_secs(30);

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// A one-time enrollment code from the collector.
fn new_code(collector: &CollectorProcess, name: &str) -> String {
    let out = Command::new(bin("sos-collector"))
        .args(["enroll", "--name", name, "--config"])
        .arg(&collector.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The machine's config in `%ProgramData%\sos\agent.toml` (one collector, a location) and the
/// user's in `%APPDATA%\sos\agent.toml` (a location of their own, which wins).
fn configure(prefix: &Prefix, collector: std::net::SocketAddr) {
    write(
        &prefix.program_data().join("sos/agent.toml"),
        &format!("collectors = [\"{collector}\"]\nlocation = \"Building A, machine-wide\"\nsend_timeout_secs = 20\n"),
    );
    write(&prefix.appdata().join("sos/agent.toml"), "location = \"Building B, floor 3, Wine desk\"\n");
}

#[test]
fn the_windows_agent_enrolls_sends_to_slack_and_spools_in_the_windows_folders() {
    let Some(wine) = Wine::find() else { return };
    let agent = windows_bin("sos-agent");
    let prefix = wine.prefix();
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let collector = site.start(Some(&slack), None);
    configure(&prefix, site.addr);

    // The key: enrolled with a one-time code, kept in %LOCALAPPDATA%\sos.
    let code = new_code(&collector, "wine-desk");
    let out = prefix.run(&agent, &["enroll", &code, "--collector", &site.addr.to_string(), "--timeout", "20"]);
    assert!(out.status.success(), "enroll under Wine: {}", text(&out));
    let enrollment = prefix.local_appdata().join("sos/enrollment.toml");
    assert!(enrollment.is_file(), "no enrollment in %LOCALAPPDATA%\\sos: {}", text(&out));
    let key = sos_agent::keys::Enrollment::load(&enrollment).unwrap();
    assert!(!key.key.is_empty());

    // The SOS: acknowledged by the Linux collector, posted to Slack with the user's location.
    let out = prefix.run(&agent, &["send", "--message", "sent from Wine"]);
    assert!(out.status.success(), "send under Wine: {}", text(&out));
    let id = alert_id_of(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("acknowledged"), "{}", text(&out));
    let post = slack.wait_for_text(WAIT, &id);
    let posted = post.text();
    for needle in ["Building B, floor 3, Wine desk", "sent from Wine", "wine-desk"] {
        assert!(posted.contains(needle), "Slack post lacks {needle:?}: {posted}");
    }
    assert!(eventually(WAIT, || site.delivery(&id, "slack").is_some_and(|d| d.0 == "delivered")));
    let spool = prefix.local_appdata().join("sos/spool");
    assert!(spool.is_dir(), "the spool is not in %LOCALAPPDATA%\\sos");

    // No collector answering: the alert stays in the spool, in %LOCALAPPDATA%\sos\spool.
    let (status, _) = collector.terminate();
    assert!(status.success());
    let out = prefix.run(&agent, &["send", "--timeout", "2", "--message", "nobody listens"]);
    assert!(!out.status.success(), "an unacknowledged send must fail: {}", text(&out));
    let id = alert_id_of(&out);
    assert!(spool.join(format!("{id}.json")).is_file(), "not spooled in %LOCALAPPDATA%\\sos\\spool: {}", text(&out));
    let out = prefix.run(&agent, &["spool", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id), "spool list: {}", text(&out));
}

#[test]
fn a_bad_config_under_wine_gives_the_same_clear_error_as_on_linux() {
    let Some(wine) = Wine::find() else { return };
    let prefix = wine.prefix();
    let bad = "collectors = [\"127.0.0.1:9\"]\nkey = \"x\"\nheartbeat_secs = \"soon\"\n";
    write(&prefix.program_data().join("sos/agent.toml"), bad);
    let out = prefix.run(&windows_bin("sos-agent"), &["send"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let on_windows = String::from_utf8_lossy(&out.stderr).trim().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let linux_file = dir.path().join("agent.toml");
    std::fs::write(&linux_file, bad).unwrap();
    let out = Command::new(bin("sos-agent")).arg("send").arg("--config").arg(&linux_file).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let on_linux = String::from_utf8_lossy(&out.stderr).trim().to_owned();

    assert!(on_windows.contains(r"C:\ProgramData\sos\agent.toml:3: key `heartbeat_secs`"), "{on_windows}");
    assert_eq!(
        on_windows.replace(r"C:\ProgramData\sos\agent.toml", "FILE").replace("sos-agent.exe", "sos-agent"),
        on_linux.replace(&linux_file.display().to_string(), "FILE")
    );
}

/// The tray agent under Wine (no display: its tray icon and hotkey fail, which it reports and
/// survives) answers `status` and `trigger` over its named pipe, refuses to run twice, and the
/// alert it is handed reaches Slack through the Linux collector.
#[test]
fn the_tray_agent_under_wine_answers_status_and_trigger_over_its_named_pipe() {
    let Some(wine) = Wine::find() else { return };
    let agent = windows_bin("sos-agent");
    let prefix = wine.prefix();
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let _collector = site.start(Some(&slack), None);
    configure(&prefix, site.addr);
    write(&prefix.appdata().join("sos/agent.toml"), &format!("key = \"{}\"\ncancel_window_ms = 0\n", site.key_text));

    let mut tray = prefix.command(&agent).arg("run").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let l = log.clone();
    let stderr = tray.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            l.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    let pipe_file = prefix.local_appdata().join("sos/agent.pipe");
    let running = eventually(WAIT, || log.lock().unwrap().contains("SOS agent running") && pipe_file.is_file());
    assert!(running, "the tray agent did not start: {}", log.lock().unwrap());
    let name = std::fs::read_to_string(&pipe_file).unwrap();
    assert!(name.starts_with(r"\\.\pipe\sos-agent-") && name.len() == r"\\.\pipe\sos-agent-".len() + 32, "{name}");

    // Re-asked until the deadline: under Wine, a just-started agent has now and then left the
    // first request unanswered (3 times in about 25 hand runs, cause not found; `trigger` then
    // sends directly with the same alert id). Once it answers, it answers every time.
    let mut last = String::new();
    let answered = eventually(WAIT, || {
        let out = prefix.run(&agent, &["status"]);
        last = text(&out);
        String::from_utf8_lossy(&out.stdout).contains("tray agent: running")
    });
    assert!(answered, "status: {last}");

    let out = prefix.run(&agent, &["run"]);
    assert_eq!(out.status.code(), Some(2), "a second agent must not run: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"), "{}", text(&out));

    let out = prefix.run(&agent, &["trigger", "--message", "through the pipe"]);
    assert!(out.status.success(), "trigger: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("handed to the running agent"), "trigger: {}", text(&out));
    let id = alert_id_of(&out);
    let post = slack.wait_for_text(WAIT, &id);
    assert!(post.text().contains("through the pipe"), "{}", post.text());

    let _ = tray.kill();
    let _ = tray.wait();
}
