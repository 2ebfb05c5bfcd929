//! A real PostgreSQL cluster for the store's tests: `initdb` and `pg_ctl` in a temporary
//! directory, on a free loopback port, as an unprivileged user (`nobody` when the tests run as
//! root: PostgreSQL refuses to run as root). Stopped and removed when dropped.
//!
//! A test skips (prints why, returns `None`) only when PostgreSQL is not installed and `CI` is
//! not set; under `CI=true` a missing PostgreSQL fails the test.

use std::path::PathBuf;
use std::process::Command;

/// A running cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// Run as `nobody` (the tests run as root).
    as_nobody: bool,
}

/// Where PostgreSQL's server binaries are: `$PG_BIN`, or the newest under /usr/lib/postgresql.
fn bin_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
        .collect();
    found.sort_by_key(|p| p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()?.parse::<u32>().ok()));
    found.pop()
}

impl Cluster {
    /// Start a cluster, or `None` (the test skips) when PostgreSQL is not installed outside CI.
    pub(crate) fn start() -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or $PG_BIN) and CI is set"
            );
            eprintln!("skipped: PostgreSQL is not installed (apt-get install postgresql)");
            return None;
        };
        let as_nobody = rustix::process::geteuid().is_root();
        let dir = tempfile::tempdir().expect("a temporary directory");
        if as_nobody {
            let status = Command::new("chown").arg("nobody").arg(dir.path()).status().expect("chown");
            assert!(status.success(), "chown nobody {}", dir.path().display());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let c = Cluster { bin, dir, port, as_nobody };
        c.run("initdb", &["-D", &c.data(), "-A", "trust", "-U", "sos", "--no-sync", "-E", "UTF8", "--locale", "C"]);
        c.start_server();
        Some(c)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// `tool` of PostgreSQL's, as the cluster's user.
    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self.command(tool).args(args).output().expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start the server (again, after [`Cluster::stop`]) on the same port.
    pub(crate) fn start_server(&self) {
        let options =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.path().display());
        let log = self.dir.path().join("log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-o", &options, "-l", &log, "-w", "-t", "60", "start"]);
    }

    /// Stop the server at once (as a crash would: no shutdown checkpoint).
    pub(crate) fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }

    /// The URL of the cluster's `postgres` database.
    pub(crate) fn url(&self) -> String {
        format!("postgres://sos@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").args(["-D", &self.data(), "-m", "immediate", "-w", "stop"]).output();
    }
}
