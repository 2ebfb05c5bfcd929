//! A real desktop session for the tray agent's tests: an X server (Xvfb), a D-Bus session bus,
//! a notification daemon (dunst), and a `dbus-monitor` that records every toast
//! (`org.freedesktop.Notifications.Notify`) sent on the bus, with the id the daemon returned for
//! it ([`Desktop::notifies`]).
//!
//! If a program is missing the tests skip, unless `CI` is set: then a missing dependency is a
//! failure (`.ci/run` installs them).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const PROGRAMS: [&str; 6] = ["Xvfb", "dbus-daemon", "dbus-monitor", "dbus-send", "dunst", "xdotool"];

/// Whether the desktop tests can run here. Panics under `CI` if they cannot.
pub fn available() -> bool {
    let missing: Vec<&str> = PROGRAMS.iter().copied().filter(|p| !on_path(p)).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but the desktop test programs are missing: {missing:?} (.ci/run installs them)"
    );
    eprintln!("skipping a desktop test: {missing:?} not installed (set CI=true to make this a failure)");
    false
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Text that grows line by line (toasts from dbus-monitor, an agent's log), with a condition variable to wait on.
#[derive(Debug, Default)]
struct TextLog {
    text: Mutex<String>,
    changed: Condvar,
}

/// A running desktop session. Everything is stopped on drop.
#[derive(Debug)]
pub struct Desktop {
    /// `:N`.
    pub display: String,
    /// The session bus address.
    pub bus: String,
    /// A private `XDG_RUNTIME_DIR` (mode 0700) for the agent's socket.
    pub runtime_dir: PathBuf,
    children: Vec<Child>,
    toasts: Arc<TextLog>,
    _dir: tempfile::TempDir,
}

impl Desktop {
    /// Start Xvfb, a session bus, dunst and the toast monitor.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut children = Vec::new();

        let (xvfb, display) = start_xvfb();
        children.push(xvfb);

        let bus_path = dir.path().join("bus");
        let bus = format!("unix:path={}", bus_path.display());
        let daemon = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--address", &bus])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-daemon");
        children.push(daemon);
        // Ready when it answers: its socket file exists an instant before it listens, and a client
        // connecting then (dbus-monitor) is refused and exits without a word.
        let answers = || {
            Command::new("dbus-send")
                .args([
                    &format!("--bus={bus}"),
                    "--print-reply",
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                ])
                .arg("org.freedesktop.DBus.GetId")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(crate::eventually(Duration::from_secs(10), answers), "the session bus did not start");

        let runtime_dir = dir.path().join("runtime");
        std::fs::create_dir(&runtime_dir).unwrap();
        set_mode_700(&runtime_dir);

        let mut desktop = Desktop { display, bus, runtime_dir, children, toasts: Arc::default(), _dir: dir };

        // dbus-monitor prints nothing until it is installed as a monitor; then its own
        // NameAcquired/NameLost signals, and the answers to the ListNames probes below. A toast
        // sent before that would be missed: dunst starts once it prints.
        let mut monitor = desktop.spawn_monitor();
        let printed = crate::eventually(Duration::from_secs(20), || {
            if matches!(monitor.try_wait(), Ok(Some(_))) {
                return true;
            }
            desktop.bus_names();
            !desktop.toasts.text.lock().unwrap().is_empty()
        });
        let status = monitor.try_wait();
        if !(printed && matches!(status, Ok(None))) {
            let _ = monitor.kill();
            let _ = monitor.wait();
            panic!("dbus-monitor did not start on the session bus ({status:?})");
        }
        // The probes' answers, not toasts.
        desktop.toasts.text.lock().unwrap().clear();
        desktop.children.push(monitor);
        let dunst = desktop.command("dunst").stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start dunst");
        desktop.children.push(dunst);
        assert!(
            crate::eventually(Duration::from_secs(10), || desktop
                .bus_names()
                .iter()
                .any(|n| n == "org.freedesktop.Notifications")),
            "the notification daemon did not appear on the bus"
        );
        desktop
    }

    /// `dbus-monitor` on the session bus, its lines appended to `toasts`.
    fn spawn_monitor(&self) -> Child {
        let mut monitor = self
            .command("dbus-monitor")
            .arg("interface='org.freedesktop.Notifications',member='Notify'")
            // The answers, which carry the ids the daemon gives toasts.
            .arg("type='method_return'")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-monitor");
        let out = monitor.stdout.take().unwrap();
        let toasts = self.toasts.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut t = toasts.text.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
                toasts.changed.notify_all();
            }
        });
        monitor
    }

    /// A command with this session's environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("DISPLAY", &self.display)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null());
        c
    }

    /// Press keys, e.g. `ctrl+alt+s`, as a user would.
    pub fn key(&self, keys: &str) {
        let out = self.command("xdotool").args(["key", keys]).output().expect("run xdotool");
        assert!(out.status.success(), "xdotool: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Names on the session bus.
    pub fn bus_names(&self) -> Vec<String> {
        let out =
            self.dbus_send(&["--dest=org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus.ListNames"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("string \"")?.strip_suffix('"').map(str::to_owned))
            .collect()
    }

    /// `dbus-send --session --print-reply <args>`.
    pub fn dbus_send(&self, args: &[&str]) -> Output {
        self.command("dbus-send").args(["--session", "--print-reply"]).args(args).output().expect("run dbus-send")
    }

    /// The StatusNotifierItem bus name of process `pid`, once it is registered.
    pub fn tray_item_of(&self, pid: u32, timeout: Duration) -> String {
        let prefix = format!("org.kde.StatusNotifierItem-{pid}-");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(n) = self.bus_names().into_iter().find(|n| n.starts_with(&prefix)) {
                return n;
            }
            assert!(Instant::now() < deadline, "no tray item {prefix}* on the bus");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Click the tray item, as a panel does: its `Activate` method.
    pub fn click_tray(&self, item: &str) {
        let out = self.dbus_send(&[
            &format!("--dest={item}"),
            "/StatusNotifierItem",
            "org.kde.StatusNotifierItem.Activate",
            "int32:0",
            "int32:0",
        ]);
        assert!(out.status.success(), "Activate failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The tray item's tooltip text (title and description).
    pub fn tray_tooltip(&self, item: &str) -> String {
        let out = self.dbus_send(&[
            &format!("--dest={item}"),
            "/StatusNotifierItem",
            "org.freedesktop.DBus.Properties.Get",
            "string:org.kde.StatusNotifierItem",
            "string:ToolTip",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every `Notify` call seen so far, in order, each with the id the daemon returned for it
    /// once it has answered.
    pub fn notifies(&self) -> Vec<Notify> {
        parse_notifies(&self.toasts.text.lock().unwrap())
    }

    /// Wait until `done` holds for the `Notify` calls seen; returns them.
    ///
    /// # Panics
    /// On timeout, with every call seen.
    pub fn wait_notifies(&self, timeout: Duration, what: &str, done: impl Fn(&[Notify]) -> bool) -> Vec<Notify> {
        let deadline = Instant::now() + timeout;
        let mut t = self.toasts.text.lock().unwrap();
        loop {
            let seen = parse_notifies(&t);
            if done(&seen) {
                return seen;
            }
            let now = Instant::now();
            assert!(now < deadline, "timed out waiting for {what}; toasts seen:\n{seen:#?}");
            t = self.toasts.changed.wait_timeout(t, deadline - now).unwrap().0;
        }
    }

    /// How many toasts dunst has on screen or queued for it, asked on the bus
    /// (`org.dunstproject.cmd0`, as `dunstctl count` does).
    pub fn toasts_on_screen(&self) -> u32 {
        ["displayedLength", "waitingLength"]
            .iter()
            .map(|property| {
                let out = self.dbus_send(&[
                    "--dest=org.freedesktop.Notifications",
                    "/org/freedesktop/Notifications",
                    "org.freedesktop.DBus.Properties.Get",
                    "string:org.dunstproject.cmd0",
                    &format!("string:{property}"),
                ]);
                let text = String::from_utf8_lossy(&out.stdout);
                text.split_whitespace()
                    .last()
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or_else(|| panic!("dunst's {property}: {text}{}", String::from_utf8_lossy(&out.stderr)))
            })
            .sum()
    }

    /// Choose the action of the toast dunst shows first, as a middle click on it does (dunst
    /// invokes a toast's only action, or its `default` one).
    pub fn choose_toast_action(&self) {
        let out = self.dbus_send(&[
            "--dest=org.freedesktop.Notifications",
            "/org/freedesktop/Notifications",
            "org.dunstproject.cmd0.NotificationAction",
            "uint32:0",
        ]);
        assert!(out.status.success(), "NotificationAction failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Choose action `key` of notification `id`, as the notification server reports a choice:
    /// the `ActionInvoked(id, key)` signal on the bus (what dunst emits when the person picks
    /// the action in its menu, without the menu program dunst would need for two actions).
    pub fn invoke_action(&self, id: u32, key: &str) {
        let out = self
            .command("dbus-send")
            .args(["--session", "--type=signal", "/org/freedesktop/Notifications"])
            .arg("org.freedesktop.Notifications.ActionInvoked")
            .arg(format!("uint32:{id}"))
            .arg(format!("string:{key}"))
            .output()
            .expect("run dbus-send");
        assert!(out.status.success(), "ActionInvoked failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Whether the `Notify` call whose summary starts with `summary` asked for urgency
    /// critical (the `urgency` hint, byte 2).
    pub fn notified_critical(&self, summary: &str) -> bool {
        let t = self.toasts.text.lock().unwrap();
        t.split("member=Notify").any(|call| {
            call.contains(&format!("string \"{summary}"))
                && call
                    .split("string \"urgency\"")
                    .nth(1)
                    .and_then(|rest| rest.trim_start().lines().next())
                    .is_some_and(|l| l.starts_with("variant") && l.ends_with("byte 2"))
        })
    }

    /// Left-click the toast dunst shows, on its window, as a person would.
    pub fn left_click_toast(&self) {
        let out = self
            .command("xdotool")
            .args(["search", "--sync", "--onlyvisible", "--class", "dunst"])
            .args(["mousemove", "--window", "%1", "20", "20", "click", "1"])
            .output()
            .expect("run xdotool");
        assert!(out.status.success(), "xdotool: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Take every toast off dunst's screen (`dunstctl close-all`).
    pub fn close_all_toasts(&self) {
        let out = self.dbus_send(&[
            "--dest=org.freedesktop.Notifications",
            "/org/freedesktop/Notifications",
            "org.dunstproject.cmd0.NotificationCloseAll",
        ]);
        assert!(out.status.success(), "NotificationCloseAll failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Wait until `n` toasts contain `needle`.
    ///
    /// # Panics
    /// On timeout, with every toast seen.
    pub fn wait_toasts(&self, needle: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut t = self.toasts.text.lock().unwrap();
        loop {
            if t.split("member=Notify").filter(|x| x.contains(needle)).count() >= n {
                return;
            }
            let now = Instant::now();
            assert!(now < deadline, "timed out waiting for {n} toast(s) with {needle:?}; toasts seen:\n{t}");
            t = self.toasts.changed.wait_timeout(t, deadline - now).unwrap().0;
        }
    }
}

/// One `org.freedesktop.Notifications.Notify` call seen on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// The caller's unique bus name.
    pub sender: String,
    /// The application name.
    pub app_name: String,
    /// The notification it asks to replace (0: a new one).
    pub replaces_id: u32,
    /// The first line.
    pub summary: String,
    /// The text.
    pub body: String,
    /// Action keys and labels, alternating.
    pub actions: Vec<String>,
    /// The id the daemon returned, once it has answered.
    pub id: Option<u32>,
}

/// The `Notify` calls in `dbus-monitor`'s output, each matched with its method return (the
/// reply's destination and `reply_serial` are the call's sender and serial).
fn parse_notifies(text: &str) -> Vec<Notify> {
    fn field<'a>(header: &'a str, name: &str) -> Option<&'a str> {
        header.split([' ', ';']).find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
    }
    fn string(line: &str) -> Option<String> {
        Some(line.trim().strip_prefix("string \"")?.strip_suffix('"')?.to_owned())
    }
    let mut blocks: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in text.lines() {
        if line.starts_with(char::is_whitespace) {
            if let Some((_, body)) = blocks.last_mut() {
                body.push(line);
            }
        } else {
            blocks.push((line, Vec::new()));
        }
    }
    let mut calls: Vec<(String, Notify)> = Vec::new();
    let mut returns: std::collections::HashMap<(String, String), u32> = std::collections::HashMap::new();
    for (header, body) in &blocks {
        if header.starts_with("method call") && header.contains("member=Notify") {
            let (Some(sender), Some(serial)) = (field(header, "sender"), field(header, "serial")) else { continue };
            // Top-level arguments are indented three spaces; array members deeper.
            let top: Vec<&str> = body.iter().copied().filter(|l| l.len() > 3 && !l[3..].starts_with(' ')).collect();
            let actions_start = body.iter().position(|l| l.trim() == "array [");
            let actions = actions_start
                .map(|i| body[i + 1..].iter().take_while(|l| l.trim() != "]").filter_map(|l| string(l)).collect())
                .unwrap_or_default();
            let arg = |i: usize| top.get(i).copied().unwrap_or_default();
            calls.push((
                serial.to_owned(),
                Notify {
                    sender: sender.to_owned(),
                    app_name: string(arg(0)).unwrap_or_default(),
                    replaces_id: arg(1).trim().strip_prefix("uint32 ").and_then(|n| n.parse().ok()).unwrap_or(u32::MAX),
                    summary: string(arg(3)).unwrap_or_default(),
                    body: string(arg(4)).unwrap_or_default(),
                    actions,
                    id: None,
                },
            ));
        } else if header.starts_with("method return") {
            let (Some(to), Some(serial)) = (field(header, "destination"), field(header, "reply_serial")) else {
                continue;
            };
            if let Some(id) = body.first().and_then(|l| l.trim().strip_prefix("uint32 ")?.parse().ok()) {
                returns.insert((to.to_owned(), serial.to_owned()), id);
            }
        }
    }
    calls
        .into_iter()
        .map(|(serial, mut n)| {
            n.id = returns.get(&(n.sender.clone(), serial)).copied();
            n
        })
        .collect()
}

impl Drop for Desktop {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Xvfb was killed: remove what it would have removed on a clean exit.
        let n = self.display.trim_start_matches(':');
        let _ = std::fs::remove_file(format!("/tmp/.X{n}-lock"));
        let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{n}"));
    }
}

fn set_mode_700(p: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// Start Xvfb on the first free display number from :50 on.
fn start_xvfb() -> (Child, String) {
    static PICK: Mutex<()> = Mutex::new(());
    let _one_at_a_time = PICK.lock().unwrap_or_else(|e| e.into_inner());
    for n in 50..250 {
        let lock = PathBuf::from(format!("/tmp/.X{n}-lock"));
        if lock.exists() {
            // A killed Xvfb leaves its lock behind: a lock whose process is gone is free again
            // (otherwise runs that were killed use up every display number).
            let pid = std::fs::read_to_string(&lock).ok().and_then(|t| t.trim().parse::<u32>().ok());
            match pid {
                Some(pid) if !Path::new(&format!("/proc/{pid}")).exists() => {
                    let _ = std::fs::remove_file(&lock);
                    let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{n}"));
                }
                _ => continue,
            }
        }
        let display = format!(":{n}");
        let mut child = Command::new("Xvfb")
            .args([&display, "-screen", "0", "1024x768x24", "-nolisten", "tcp"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Xvfb");
        let socket = PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
        let up =
            crate::eventually(Duration::from_secs(10), || socket.exists() || matches!(child.try_wait(), Ok(Some(_))));
        if up && socket.exists() && matches!(child.try_wait(), Ok(None)) {
            return (child, display);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("no free X display between :50 and :249");
}

/// A running `sos-agent run` in a [`Desktop`], its stderr collected.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    log: Arc<TextLog>,
}

impl Desktop {
    /// Start `sos-agent run --config <config>` in this session; `state_dir` holds its log file.
    pub fn start_agent(&self, config: &Path, state_dir: &Path) -> AgentProcess {
        self.start_agent_in(config, state_dir, &self.runtime_dir)
    }

    /// As [`Self::start_agent`], with its own `XDG_RUNTIME_DIR` (mode 0700 is set): a second
    /// user session on the same display.
    pub fn start_agent_in(&self, config: &Path, state_dir: &Path, runtime_dir: &Path) -> AgentProcess {
        std::fs::create_dir_all(runtime_dir).unwrap();
        set_mode_700(runtime_dir);
        let mut child = self
            .command(crate::bin::bin("sos-agent"))
            .env("XDG_RUNTIME_DIR", runtime_dir)
            .args(["run", "--config"])
            .arg(config)
            .env("XDG_STATE_HOME", state_dir)
            // The default enrollment file lives in the data dir: keep it per test too.
            .env("XDG_DATA_HOME", state_dir)
            .env("RUST_LOG", "info,sos_agent=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sos-agent run");
        let log: Arc<TextLog> = Arc::default();
        let err = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut t = l.text.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
                l.changed.notify_all();
            }
        });
        AgentProcess { child, log }
    }

    /// `sos-agent trigger <args>` in this session.
    pub fn trigger(&self, args: &[&str]) -> Output {
        self.trigger_in(&self.runtime_dir, args)
    }

    /// `sos-agent trigger <args>` with `XDG_RUNTIME_DIR` = `runtime_dir`.
    pub fn trigger_in(&self, runtime_dir: &Path, args: &[&str]) -> Output {
        self.command(crate::bin::bin("sos-agent"))
            .env("XDG_RUNTIME_DIR", runtime_dir)
            .arg("trigger")
            .args(args)
            .output()
            .expect("run sos-agent trigger")
    }
}

impl AgentProcess {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until its log contains `needle`; returns the log.
    ///
    /// # Panics
    /// On timeout, with the log.
    pub fn wait_log(&self, timeout: Duration, needle: &str) -> String {
        let deadline = Instant::now() + timeout;
        let mut t = self.log.text.lock().unwrap();
        loop {
            if t.contains(needle) {
                return t.clone();
            }
            let now = Instant::now();
            assert!(now < deadline, "agent: timed out waiting for {needle:?} in its log:\n{t}");
            t = self.log.changed.wait_timeout(t, deadline - now).unwrap().0;
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.text.lock().unwrap().clone()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_calls_are_matched_with_the_ids_the_daemon_returns() {
        let monitor = r#"method call time=1.0 sender=:1.6 -> destination=org.freedesktop.Notifications serial=7 path=/org/freedesktop/Notifications; interface=org.freedesktop.Notifications; member=Notify
   string "SOS"
   uint32 0
   string ""
   string "Sending SOS in 5 s"
   string "To stop it: click the SOS icon."
   array [
      string "stop"
      string "Stop"
   ]
   array [
      dict entry(
         string "urgency"
         variant             byte 1
      )
   ]
   int32 -1
method return time=1.1 sender=:1.0 -> destination=:1.9 serial=3 reply_serial=7
   uint32 99
method return time=1.1 sender=:1.0 -> destination=:1.6 serial=4 reply_serial=7
   uint32 5
method call time=2.0 sender=:1.8 -> destination=org.freedesktop.Notifications serial=2 path=/org/freedesktop/Notifications; interface=org.freedesktop.Notifications; member=Notify
   string "SOS"
   uint32 5
   string ""
   string "SOS delivered"
   string "Help has been called."
   array [
   ]
   array [
   ]
   int32 -1
"#;
        let n = parse_notifies(monitor);
        assert_eq!(n.len(), 2, "{n:#?}");
        assert_eq!((n[0].replaces_id, n[0].id, n[0].summary.as_str()), (0, Some(5), "Sending SOS in 5 s"));
        assert_eq!(n[0].actions, vec!["stop", "Stop"]);
        assert_eq!((n[1].replaces_id, n[1].id, n[1].body.as_str()), (5, None, "Help has been called."));
        assert!(n[1].actions.is_empty());
    }
}
