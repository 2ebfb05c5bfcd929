//! The administrator's command line on PostgreSQL (issue 18), against the real binaries and a
//! PostgreSQL cluster of the test's own ([`PgCluster`]):
//! - from another collector's host (its own config and data_dir, the same `database_url`), the
//!   command line manages what every collector shares: an enrollment code made there is used at
//!   the running collector; `agents` lists the agent; an SOS received by the running collector
//!   is acknowledged there, and the running collector tells Slack; console passwords, rotation
//!   and revocation land in the shared database;
//! - a `sos.db` left in that host's data_dir from before is never opened, and the commands that
//!   exist only for SQLite (`store check`, `store recover`) refuse, naming PostgreSQL's tools;
//! - `check-config` names the store (its URL without the password) and whether it answers; a
//!   refused password or an unreachable server is a clear error naming `database_url`, never
//!   showing the password.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use sos_e2e::postgres::{self, PgCluster};
use sos_e2e::process::alert_id_of;
use sos_e2e::site::Site;
use sos_e2e::{agent_send, CollectorProcess, SlackStandIn};

const WAIT: Duration = Duration::from_secs(20);

/// Sam is tier 1 (with Slack) for a minute; Kim is tier 2, never reached in these tests.
const RESPONDERS: &str = r#"
[[responders]]
name = "Sam Lee"
chat = "<@U0SAM>"
groups = ["security"]

[[responders]]
name = "Kim Park"
chat = "<@U0KIM>"

[escalation]
emergency = [ { notify = ["group:security", "channel:slack"], wait_secs = 60 },
              { notify = ["Kim Park", "channel:log"] } ]
"#;

/// `sos-collector <args> --config <config>`, `stdin` given to it.
fn collector_with_input(config: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(sos_e2e::bin::bin("sos-collector"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sos-collector");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// `sos-collector <args> --config <config>`.
fn collector(config: &Path, args: &[&str]) -> Output {
    collector_with_input(config, args, "")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The password in a `postgres://USER:PASSWORD@…` URL.
fn password_of(url: &str) -> &str {
    url.split_once("://").unwrap().1.split_once('@').unwrap().0.split_once(':').unwrap().1
}

/// Every file under `dir` with its length and modification time: what a command left alone.
fn files(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut all: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (e.path(), m.len(), m.modified().unwrap())
        })
        .collect();
    all.sort();
    all
}

/// A `sos.db` in `site`'s data_dir, from before the site moved to PostgreSQL: a SQLite config
/// without `database_url` enrolls "Old desk" into it. Returns the data_dir's files.
fn stale_sqlite_store(site: &Site) -> Vec<(PathBuf, u64, SystemTime)> {
    let sqlite = site.dir.path().join("sqlite.toml");
    std::fs::write(&sqlite, site.collector_config(None, None)).unwrap();
    let out = collector(&sqlite, &["enroll", "--name", "Old desk"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(site.data_dir().join("sos.db").exists());
    files(&site.data_dir())
}

#[test]
fn from_another_collectors_host_the_command_line_manages_the_shared_postgresql_store() {
    if !postgres::available() {
        return;
    }
    let pg = PgCluster::start();
    let url = pg.url();
    let password = password_of(&url).to_owned();
    let shown = format!("postgresql://sos@127.0.0.1:{}/sos", pg.port);
    let slack = SlackStandIn::start(vec![]);
    // Host A runs a collector on PostgreSQL. Host B is another collector's host (its collector
    // not running now): its own config, data_dir and port, the same database.
    let a = Site::new();
    let b = Site::new();
    let config_of = |site: &Site, slack: Option<&SlackStandIn>| {
        // database_url first: a top-level key, before the config's tables.
        format!("database_url = \"{url}\"\n{}\n{RESPONDERS}", site.collector_config(slack, None))
    };
    let a_text = config_of(&a, Some(&slack));
    let b_config = b.dir.path().join("collector.toml");
    let before = stale_sqlite_store(&b);
    // The same channels as A (the escalation names Slack); B's collector never runs here.
    std::fs::write(&b_config, config_of(&b, Some(&slack))).unwrap();

    // check-config names the store without its password, and reaches it.
    let out = collector(&b_config, &["check-config"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains(&format!("store: PostgreSQL {shown} (reachable: PostgreSQL ")), "{said}");
    assert!(!said.contains(&password), "the password was shown: {said}");

    // An enrollment code made on host B, in the shared database (not in B's sos.db).
    let out = collector(&b_config, &["enroll", "--name", "Desk 7"]);
    assert!(out.status.success(), "{}", text(&out));
    let code = String::from_utf8(out.stdout.clone()).unwrap().trim().to_owned();
    assert!(!code.is_empty() && text(&out).contains("sos-agent enroll"), "{}", text(&out));
    let codes = pg.query("SELECT name FROM enrollments WHERE used_at_ms IS NULL ORDER BY name");
    assert_eq!(codes.trim(), "Desk 7", "the code is in PostgreSQL, the stale SQLite store's is not");

    // ...is used at the collector running on host A.
    let a_collector = CollectorProcess::start(a.dir.path(), a.addr, &a_text);
    let enrollment = a.dir.path().join("enrollment.toml");
    let out = Command::new(sos_e2e::bin::bin("sos-agent"))
        .args(["enroll", &code, "--collector", &a.addr.to_string(), "--timeout", "20", "--out"])
        .arg(&enrollment)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "enroll at A with B's code: {}\n{}", text(&out), a_collector.log());
    let agent_id = sos_agent::keys::Enrollment::load(&enrollment).unwrap().agent_id;

    // Host B lists it (from PostgreSQL; B's sos.db is not mentioned).
    let out = collector(&b_config, &["agents"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.lines().any(|l| l.contains(&agent_id) && l.contains("Desk 7") && l.contains("active")), "{said}");
    assert!(!said.contains("sos.db") && !said.contains("Old desk"), "{said}");

    // An SOS received by A is acknowledged from B; A tells Slack.
    let out = agent_send(&a.agent_config(), &["--message", "visitor shouting"]);
    assert!(out.status.success(), "{}", text(&out));
    let id = alert_id_of(&out);
    slack.wait_for_text(WAIT, &id);
    let out = collector(&b_config, &["alerts"]);
    assert!(out.status.success() && text(&out).contains(&id), "{}", text(&out));
    let out = collector(&b_config, &["alerts", "ack", &id, "--responder", "Sam Lee", "--note", "on my way"]);
    assert!(out.status.success() && text(&out).contains("acknowledged by Sam Lee"), "{}", text(&out));
    let acked = slack.wait_for(WAIT, "the acknowledgement made on host B, posted by A", |r| {
        r.iter().any(|x| x.text().contains("Acknowledged by Sam Lee") && x.text().contains(&id))
    });
    assert!(acked.iter().any(|x| x.text().contains("on my way")), "{acked:?}");
    let out = collector(&a_collector.config, &["alerts", "show", &id]);
    let said = text(&out);
    assert!(out.status.success() && said.contains("state:      acknowledged"), "{said}");
    assert!(said.lines().any(|l| l.contains("acknowledged") && l.contains("Sam Lee") && l.contains("command_line")));

    // A console password set on B is the one every collector's console checks.
    let out = collector_with_input(&b_config, &["responders", "passwd", "Sam Lee"], "correct horse battery staple\n");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(pg.query("SELECT name FROM console_accounts").trim(), "Sam Lee");
    assert!(pg.query("SELECT password_hash FROM console_accounts").starts_with("$argon2id$"));

    // Rotation and revocation from B, seen from A's host.
    let out = collector(&b_config, &["agents", "rotate", "Desk 7"]);
    assert!(out.status.success() && text(&out).contains("New key for agent"), "{}", text(&out));
    let out = collector(&b_config, &["agents", "revoke", "Desk 7"]);
    assert!(out.status.success() && text(&out).contains("Revoked agent"), "{}", text(&out));
    let out = collector(&a_collector.config, &["agents"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).lines().any(|l| l.contains(&agent_id) && l.contains("REVOKED")), "{}", text(&out));

    // What exists only for the SQLite file refuses, and says what to use.
    for (args, instead) in [(&["store", "check"][..], "pg_amcheck"), (&["store", "recover"][..], "pg_dump")] {
        let out = collector(&b_config, args);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(said.contains("PostgreSQL") && said.contains(&shown) && said.contains(instead), "{said}");
        assert!(!said.contains(&password), "the password was shown: {said}");
    }

    // Host B's old sos.db was never opened: not a byte, not a -wal or -shm beside it.
    assert_eq!(files(&b.data_dir()), before, "the stale SQLite store was touched");
}

#[test]
fn a_postgresql_store_that_refuses_or_does_not_answer_is_named_without_its_password() {
    if !postgres::available() {
        return;
    }
    let pg = PgCluster::start();
    let site = Site::new();
    let before = stale_sqlite_store(&site);
    let config = site.dir.path().join("collector.toml");
    let shown = format!("postgresql://sos@127.0.0.1:{}/sos", pg.port);
    let write = |url: &str| {
        std::fs::write(&config, format!("database_url = \"{url}\"\n{}", site.collector_config(None, None))).unwrap()
    };

    // Reachable: named, and no tables yet (check-config changes nothing: no migration).
    write(&pg.url());
    let out = collector(&config, &["check-config"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("store: PostgreSQL {shown} (reachable: PostgreSQL ")), "{said}");
    assert!(said.contains("no store tables yet"), "{said}");
    assert!(said.contains("pg_amcheck") && !said.contains("store check"), "what is not checked: {said}");
    assert!(!said.contains(password_of(&pg.url())), "{said}");
    assert_eq!(pg.query("SELECT to_regclass('schema_version') IS NULL").trim(), "t", "check-config migrated");

    // The SQLite-only commands refuse before touching anything.
    for args in [&["store", "check"][..], &["store", "recover"][..]] {
        let out = collector(&config, args);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(said.contains("PostgreSQL") && said.contains(&shown) && said.contains("nothing was done"), "{said}");
    }

    // A wrong password: refused by the server, said so, the password not shown.
    let wrong = format!("postgres://sos:Wr0ngHunter2xyz@127.0.0.1:{}/sos", pg.port);
    write(&wrong);
    for args in [&["check-config"][..], &["agents"][..], &["enroll", "--name", "Desk 9"][..], &["alerts"][..]] {
        let out = collector(&config, args);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(said.contains("database_url") && said.contains(&shown), "{args:?}: {said}");
        assert!(said.contains("password authentication failed"), "{args:?}: {said}");
        assert!(!said.contains("Wr0ngHunter2xyz"), "{args:?} showed the password: {said}");
    }

    // Nothing listening: the same, promptly.
    let closed = postgres::free_tcp_port();
    write(&format!("postgres://sos:Wr0ngHunter2xyz@127.0.0.1:{closed}/sos"));
    for args in [&["check-config"][..], &["agents", "revoke", "Desk 9"][..]] {
        let started = std::time::Instant::now();
        let out = collector(&config, args);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(said.contains("database_url") && said.contains(&format!("127.0.0.1:{closed}")), "{said}");
        assert!(!said.contains("Wr0ngHunter2xyz"), "{args:?} showed the password: {said}");
        assert!(started.elapsed() < Duration::from_secs(15), "{args:?} took {:?}", started.elapsed());
    }

    assert_eq!(files(&site.data_dir()), before, "the stale SQLite store was touched");
}
