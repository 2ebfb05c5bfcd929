//! A real PostgreSQL for the tests of several collectors: Debian's `postgresql` binaries
//! (`initdb`, `pg_ctl`, `psql`), a cluster of its own per test in a temporary directory, run as
//! an unprivileged user on a free loopback port, its Unix socket in that directory too.
//!
//! - As root (CI), the cluster runs as the system user `sos-pgtest` (made with `useradd` when
//!   absent; `nobody` if that fails) through `runuser`: PostgreSQL refuses to run as root.
//! - The collectors connect over TCP with a password (`scram-sha-256`), as a site's would: the
//!   role `sos` owns the database `sos` ([`PgCluster::url`]). The superuser is reached only over
//!   the cluster's own socket.
//! - Durability is PostgreSQL's default and is checked, not assumed: `fsync`,
//!   `synchronous_commit` and `full_page_writes` are on.
//! - [`PgCluster::kill`] is `pg_ctl stop -m immediate`: the server dies without a checkpoint
//!   and recovers from its WAL at the next start, as after a crash. [`PgCluster::restart`] is a
//!   clean stop and start on the same port.
//! - Readiness is waited for, never slept on: `pg_ctl -w` watches the server's own status, then a
//!   real query must succeed before the deadline.
//!
//! If PostgreSQL is missing the tests skip, unless `CI` is set: then it is a failure (`.ci/run`
//! installs it).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a start, a stop or a query may take on a loaded test machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// The unprivileged user the clusters run as when the tests run as root.
const USER: &str = "sos-pgtest";

/// The role and database the collectors use.
const ROLE: &str = "sos";

/// Where Debian's PostgreSQL binaries are: `PG_BIN` if set, else the newest
/// `/usr/lib/postgresql/*/bin`, else the `PATH` if `initdb` is on it.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    })
}

/// Whether the PostgreSQL tests can run here. Panics under `CI` if they cannot.
pub fn available() -> bool {
    let found = bin_dir().filter(|d| ["initdb", "pg_ctl", "psql"].iter().all(|p| d.join(p).is_file()));
    if found.is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but PostgreSQL is missing (initdb, pg_ctl, psql; .ci/run installs Debian's postgresql)"
    );
    eprintln!("skipping a PostgreSQL test: PostgreSQL is not installed (set CI=true to make this a failure)");
    false
}

/// The user the cluster runs as: `None` when the tests do not run as root (the cluster then
/// runs as the tests' own user).
fn cluster_user() -> Option<&'static str> {
    static USER_CHOSEN: OnceLock<Option<&'static str>> = OnceLock::new();
    *USER_CHOSEN.get_or_init(|| {
        // /proc/self belongs to this process's effective user.
        let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        if uid.ok() != Some(0) {
            return None;
        }
        let exists = || Command::new("getent").args(["passwd", USER]).output().is_ok_and(|o| o.status.success());
        if !exists() {
            let _ = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    USER,
                ])
                .output();
        }
        Some(if exists() { USER } else { "nobody" })
    })
}

/// A loopback TCP port that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a TCP socket on 127.0.0.1")
}

/// A PostgreSQL cluster of one test: stopped and removed on drop.
#[derive(Debug)]
pub struct PgCluster {
    /// Where the binaries are.
    bin: PathBuf,
    /// Holds `data/` (the cluster), `socket/` (its Unix socket) and `server.log`.
    dir: tempfile::TempDir,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// The password of the role `sos`.
    password: String,
}

impl PgCluster {
    /// `initdb` a new cluster, start it on a free port, and create the role and database `sos`.
    ///
    /// # Panics
    /// If PostgreSQL is missing (call [`available`] first) or does not start, with its log.
    pub fn start() -> Self {
        let bin = bin_dir().expect("PostgreSQL is not installed");
        let dir = tempfile::Builder::new().prefix("sos-pg-").tempdir().unwrap();
        let password: String = (0..24).map(|_| fastrand::alphanumeric()).collect();
        let pwfile = dir.path().join("superuser.pw");
        std::fs::write(&pwfile, format!("{}\n", (0..24).map(|_| fastrand::alphanumeric()).collect::<String>()))
            .unwrap();
        std::fs::create_dir(dir.path().join("socket")).unwrap();
        if let Some(user) = cluster_user() {
            let out = Command::new("chown").args(["-R", user]).arg(dir.path()).output().unwrap();
            assert!(out.status.success(), "chown {user}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut cluster = PgCluster { bin, dir, port: 0, password };
        let data = cluster.data_dir();
        cluster.run_ok(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "--username=postgres".as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-instructions".as_ref(),
            ],
        );
        let socket = cluster.socket_dir();
        let settings = format!(
            "\n# sos-e2e\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = on\nsynchronous_commit = on\nfull_page_writes = on\nmax_connections = 200\n\
             shared_buffers = '32MB'\nlogging_collector = off\nlog_min_messages = warning\n",
            socket.display()
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&settings);
        std::fs::write(&conf, text).unwrap();
        // A free port can be taken between the look and the bind: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            cluster.port = free_tcp_port();
            match cluster.try_start() {
                Ok(()) => {
                    last.clear();
                    break;
                }
                Err(e) => last = e,
            }
        }
        assert!(last.is_empty(), "PostgreSQL did not start: {last}");
        // Two statements: CREATE DATABASE cannot run in the transaction `-c` makes of several.
        cluster.superuser_psql("postgres", &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{}'", cluster.password));
        cluster.superuser_psql("postgres", &format!("CREATE DATABASE {ROLE} OWNER {ROLE}"));
        for (setting, want) in [("fsync", "on"), ("synchronous_commit", "on"), ("full_page_writes", "on")] {
            let got = cluster.superuser_psql("postgres", &format!("SHOW {setting}"));
            assert_eq!(got.trim(), want, "PostgreSQL {setting}");
        }
        cluster
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory of its Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The collectors' `database_url`: the role `sos` with its password, over TCP.
    pub fn url(&self) -> String {
        self.url_via(self.port)
    }

    /// [`PgCluster::url`] through another port of 127.0.0.1 (a proxy in front of the cluster).
    pub fn url_via(&self, port: u16) -> String {
        format!("postgres://{ROLE}:{}@127.0.0.1:{port}/{ROLE}", self.password)
    }

    /// Start the (stopped) cluster on its port and wait until it answers a query.
    ///
    /// # Panics
    /// If it does not, with its log.
    pub fn start_again(&self) {
        if let Err(e) = self.try_start() {
            panic!("PostgreSQL did not start again: {e}");
        }
    }

    /// A clean stop (`-m fast`: sessions are ended, a checkpoint is written).
    pub fn stop(&self) {
        self.pg_ctl_stop("fast");
    }

    /// A crash (`-m immediate`: every server process quits at once, no checkpoint; the next
    /// start recovers from the WAL).
    pub fn kill(&self) {
        self.pg_ctl_stop("immediate");
    }

    /// A clean stop, then a start on the same port.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Whether the server accepts connections now (`pg_isready` over TCP).
    pub fn is_ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-t", "5", "-p", &self.port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Run `sql` as the role `sos` over TCP in its database; returns the rows, one per line,
    /// columns separated by `|` (`psql -At`).
    ///
    /// # Panics
    /// If the query fails, with psql's message.
    pub fn query(&self, sql: &str) -> String {
        let out = self.try_query(sql);
        assert!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// [`PgCluster::query`], its failure returned.
    pub fn try_query(&self, sql: &str) -> Output {
        Command::new(self.bin.join("psql"))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", ROLE, "-d", ROLE, "-c", sql])
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .expect("run psql")
    }

    /// Run `sql` as the superuser over the cluster's socket, in `database`.
    fn superuser_psql(&self, database: &str, sql: &str) -> String {
        let socket = self.socket_dir();
        let out = self.run(
            "psql",
            &[
                "-X".as_ref(),
                "-At".as_ref(),
                "-v".as_ref(),
                "ON_ERROR_STOP=1".as_ref(),
                "-h".as_ref(),
                socket.as_os_str(),
                "-p".as_ref(),
                self.port.to_string().as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-d".as_ref(),
                database.as_ref(),
                "-c".as_ref(),
                sql.as_ref(),
            ],
        );
        assert!(out.status.success(), "psql as superuser: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn try_start(&self) -> Result<(), String> {
        let data = self.data_dir();
        let log = self.dir.path().join("server.log");
        let options = format!("-p {}", self.port);
        let out = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                DEADLINE.as_secs().to_string().as_ref(),
                "start".as_ref(),
            ],
        );
        if !out.status.success() {
            return Err(format!("{}\n{}", String::from_utf8_lossy(&out.stderr), self.log()));
        }
        // pg_ctl -w saw the server report itself ready; a real query proves it over TCP.
        let deadline = Instant::now() + DEADLINE;
        loop {
            let out = self.run(
                "psql",
                &[
                    "-X".as_ref(),
                    "-At".as_ref(),
                    "-h".as_ref(),
                    "127.0.0.1".as_ref(),
                    "-p".as_ref(),
                    self.port.to_string().as_ref(),
                    "-U".as_ref(),
                    "postgres".as_ref(),
                    "-d".as_ref(),
                    "postgres".as_ref(),
                    "-c".as_ref(),
                    "SELECT 1".as_ref(),
                ],
            );
            // The superuser has a password over TCP that nobody knows: an authentication
            // failure is the server answering, which is what is waited for.
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success()
                || err.contains("password authentication failed")
                || err.contains("no password supplied")
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no answer on 127.0.0.1:{}: {err}\n{}", self.port, self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let data = self.data_dir();
        let out = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                mode.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                DEADLINE.as_secs().to_string().as_ref(),
                "stop".as_ref(),
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop -m {mode}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Run one of the PostgreSQL binaries as the cluster's user.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Output {
        let path = self.bin.join(program);
        let mut command = match cluster_user() {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        // runuser keeps the working directory, which the cluster's user may not be allowed into.
        command.args(args).current_dir(self.dir.path()).stdin(Stdio::null()).env("PGCONNECT_TIMEOUT", "10");
        command.output().unwrap_or_else(|e| panic!("run {}: {e}", path.display()))
    }

    fn run_ok(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.data_dir().join("postmaster.pid").exists() {
            let data = self.data_dir();
            let _ = self.run(
                "pg_ctl",
                &["-D".as_ref(), data.as_os_str(), "-m".as_ref(), "immediate".as_ref(), "stop".as_ref()],
            );
        }
    }
}
