//! The binaries under test, as processes.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::bin::bin;

#[derive(Debug, Default)]
struct Log {
    text: Mutex<String>,
    changed: Condvar,
}

/// A running `sos-collector run`, its stderr collected.
#[derive(Debug)]
pub struct CollectorProcess {
    child: Child,
    /// The UDP address it listens on.
    pub addr: SocketAddr,
    /// Its configuration file.
    pub config: PathBuf,
    log: Arc<Log>,
}

impl CollectorProcess {
    /// Write `config_text` to `dir/collector.toml`, start the collector on it, and wait until
    /// it is ready. `addr` must be the `listen` address in the config.
    pub fn start(dir: &Path, addr: SocketAddr, config_text: &str) -> Self {
        let config = dir.join("collector.toml");
        std::fs::write(&config, config_text).unwrap();
        let mut command = Command::new(bin("sos-collector"));
        command.args(["run", "--config"]).arg(&config).env("RUST_LOG", "info,sos_collector=debug");
        Self::spawn(command, addr, config)
    }

    /// Start `command` (a `sos-collector run`, possibly through `runuser`) and wait until it is
    /// ready. `addr` is where it listens, `config` the file it reads.
    pub fn spawn(mut command: Command, addr: SocketAddr, config: PathBuf) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sos-collector");
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut t = l.text.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
                l.changed.notify_all();
            }
        });
        let p = CollectorProcess { child, addr, config, log };
        p.wait_log(Duration::from_secs(20), "collector ready");
        p
    }

    /// Wait until the log contains `needle`; returns the log.
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
            assert!(now < deadline, "collector: timed out waiting for {needle:?} in its log:\n{t}");
            t = self.log.changed.wait_timeout(t, deadline - now).unwrap().0;
        }
    }

    /// Wait until the log holds `n` lines containing every one of `needles`; returns the log.
    ///
    /// # Panics
    /// On timeout, with the log.
    pub fn wait_log_lines(&self, timeout: Duration, needles: &[&str], n: usize) -> String {
        let deadline = Instant::now() + timeout;
        let mut t = self.log.text.lock().unwrap();
        loop {
            if t.lines().filter(|l| needles.iter().all(|x| l.contains(x))).count() >= n {
                return t.clone();
            }
            let now = Instant::now();
            assert!(now < deadline, "collector: timed out waiting for {n} lines with {needles:?} in its log:\n{t}");
            t = self.log.changed.wait_timeout(t, deadline - now).unwrap().0;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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

    /// SIGTERM and wait for exit; returns the exit status and the whole log.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        terminate(self.child.id());
        let status = self.child.wait().expect("wait");
        // The reader thread may still be draining the pipe; the last line is the summary.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.wait_log(Duration::from_secs(5), "collector stopped")
        }));
        (status, self.log())
    }

    /// Wait for the process to exit by itself (call once its log shows it is stopping); returns
    /// the exit status and the whole log.
    pub fn wait_exit(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().expect("wait");
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.wait_log(Duration::from_secs(5), "sos-collector: ")
        }));
        (status, self.log())
    }

    /// `sos-collector alerts` for this collector's store.
    pub fn alerts_cli(&self) -> Output {
        Command::new(bin("sos-collector"))
            .args(["alerts", "--config"])
            .arg(&self.config)
            .output()
            .expect("run sos-collector alerts")
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send SIGTERM to `pid`, as an init system does to stop a service.
#[cfg(unix)]
#[allow(unsafe_code)] // one libc call; the pid is our own child's
fn terminate(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

/// Run `sos-agent send --config <config> <args>` to completion.
pub fn agent_send(config: &Path, args: &[&str]) -> Output {
    Command::new(bin("sos-agent"))
        .args(["send", "--config"])
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sos-agent send")
}

/// The alert id `sos-agent send` printed.
pub fn alert_id_of(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("alert "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no alert id in output: {stdout}"))
        .to_owned()
}

/// Enroll an agent named `name` through the real CLIs (`sos-collector enroll --name`, then
/// `sos-agent enroll CODE`), its enrollment file in `dir`: its agent id and its own key.
pub fn enroll_agent(collector: &CollectorProcess, dir: &Path, name: &str) -> (String, sos_shared::Key) {
    let out = Command::new(bin("sos-collector"))
        .args(["enroll", "--name", name, "--config"])
        .arg(&collector.config)
        .output()
        .expect("run sos-collector enroll");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let code = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let slug: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    let file = dir.join(format!("{slug}.enrollment.toml"));
    let out = Command::new(bin("sos-agent"))
        .args(["enroll", &code, "--collector", &collector.addr.to_string(), "--timeout", "20", "--out"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .expect("run sos-agent enroll");
    assert!(out.status.success(), "enroll failed: {}", String::from_utf8_lossy(&out.stderr));
    let e = sos_agent::keys::Enrollment::load(&file).unwrap();
    (e.agent_id, sos_shared::Key::from_base64(&e.key).unwrap())
}
