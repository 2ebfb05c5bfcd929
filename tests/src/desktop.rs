//! A real desktop session for the tray agent's tests: an X server (Xvfb), a D-Bus session bus,
//! a notification daemon (dunst), and a `dbus-monitor` that records every toast
//! (`org.freedesktop.Notifications.Notify`) sent on the bus.
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
        assert!(crate::eventually(Duration::from_secs(10), || bus_path.exists()), "the session bus did not start");

        let runtime_dir = dir.path().join("runtime");
        std::fs::create_dir(&runtime_dir).unwrap();
        set_mode_700(&runtime_dir);

        let mut desktop = Desktop { display, bus, runtime_dir, children, toasts: Arc::default(), _dir: dir };

        let mut monitor = desktop
            .command("dbus-monitor")
            .arg("interface='org.freedesktop.Notifications',member='Notify'")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-monitor");
        let out = monitor.stdout.take().unwrap();
        desktop.children.push(monitor);
        let toasts = desktop.toasts.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut t = toasts.text.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
                toasts.changed.notify_all();
            }
        });
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

impl Drop for Desktop {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
        if Path::new(&format!("/tmp/.X{n}-lock")).exists() {
            continue;
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
