//! Two real collectors sharing one PostgreSQL (issue 18 §2), end to end: what one collector
//! does, the other knows. Each test starts a PostgreSQL cluster of its own ([`PgCluster`]) and
//! two `sos-collector run` processes with the same `database_url`, the same site key and the
//! same channels; each has its own `data_dir`, UDP port, console and webhook path on one Slack
//! stand-in (so that every post is traced to the collector that made it). The agents are the
//! real `sos-agent` binaries.
//!
//! - The registry is shared: an agent enrolled with a code made by A's CLI completes its
//!   enrollment at B and is accepted by both; a revocation on A refuses it on B within seconds.
//! - The responder loop is shared: an SOS received by A and acknowledged in B's console stops
//!   the escalation (tier 2 never pages), and both consoles and both CLIs show the same state;
//!   an unanswered alert's tier 2 fires once with two collectors running; an acknowledge link
//!   made by one collector works at the other (the link key is in the database, not in each
//!   `data_dir`).
//! - A PostgreSQL outage: both say "not ready" on /readyz, answer no heartbeat and acknowledge no
//!   SOS; when it returns both recover, and the SOS sent meanwhile is stored and paged once.
//!
//! Waiting is on events with deadlines (a post, a log line, a state seen through the CLI or
//! HTTP); where the test must show that something does NOT happen, it waits for a later event
//! that would have come after it (a later alert's escalation). PostgreSQL missing: the tests
//! skip, unless `CI` is set (then they fail).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sos_e2e::bin::bin;
use sos_e2e::console::{free_tcp_port, http, set_password, ADMIN, PASSWORD};
use sos_e2e::postgres::{self, PgCluster};
use sos_e2e::process::alert_id_of;
use sos_e2e::slack::Received;
use sos_e2e::{agent_send, eventually, free_udp_port, CollectorProcess, Peer, SlackStandIn};
use sos_shared::protocol::{Heartbeat, Sos};
use sos_shared::{unix_now, AlertId, Key, Message};

const WAIT: Duration = Duration::from_secs(30);

/// How long tier 1 waits for an acknowledgement before tier 2 fires: long enough for the test
/// to acknowledge through the other collector on a loaded machine, short enough to wait for.
const TIER1_WAIT: Duration = Duration::from_secs(8);

/// One test at a time: each runs a PostgreSQL and two collectors, which a 2-core machine
/// should not run three times at once.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// One of the two collectors.
struct Node {
    name: &'static str,
    addr: SocketAddr,
    http: SocketAddr,
    config: PathBuf,
    process: CollectorProcess,
}

impl Node {
    /// `sos-collector ARGS --config <this collector's config>`.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("sos-collector"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .output()
            .expect("run sos-collector")
    }

    /// A session cookie for [`ADMIN`] on this collector's console, through its login form.
    fn login(&self) -> String {
        let page = http(self.http, "GET", "/login", "", &[]);
        let pre = page.cookie("sos_pre").expect("the login page sets the pre-session cookie");
        let csrf = page.csrf().expect("the login form has a CSRF field");
        let r = http(
            self.http,
            "POST",
            "/login",
            &format!("sos_pre={pre}"),
            &[("csrf", &csrf), ("name", ADMIN), ("password", PASSWORD)],
        );
        assert_eq!(r.status, 303, "login at {} failed: {}", self.name, r.body);
        format!("sos_session={}", r.cookie("sos_session").expect("a session cookie"))
    }

    /// The alert's state line on this collector's console (`acknowledged by …`).
    fn console_state(&self, session: &str, id: &str) -> String {
        let page = http(self.http, "GET", &format!("/alerts/{id}"), session, &[]);
        assert_eq!(page.status, 200, "{}: /alerts/{id}: {}", self.name, page.body);
        let at = page.body.find("id=\"alert-state\">").unwrap_or_else(|| panic!("no state on {}", page.body));
        let rest = &page.body[at + "id=\"alert-state\">".len()..];
        rest[..rest.find("</p>").unwrap()].trim().to_owned()
    }

    /// The `state:` line of `sos-collector alerts show ID` with this collector's config.
    fn cli_state(&self, id: &str) -> String {
        let out = self.cli(&["alerts", "show", id]);
        assert!(out.status.success(), "{}: alerts show: {}", self.name, text(&out));
        text(&out).lines().find(|l| l.trim_start().starts_with("state:")).unwrap_or_default().trim().to_owned()
    }

    /// /readyz: its status and body.
    fn ready(&self) -> (u16, String) {
        let r = http(self.http, "GET", "/readyz", "", &[]);
        (r.status, r.body)
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// PostgreSQL, two collectors on it, one Slack stand-in. The collectors come first: they are
/// dropped (killed) before the database.
struct Pair {
    a: Node,
    b: Node,
    pg: PgCluster,
    slack: SlackStandIn,
    key: String,
    dir: tempfile::TempDir,
}

impl Pair {
    /// Start PostgreSQL and both collectors (at once: they migrate the schema together), with
    /// the console on each, [`ADMIN`]'s password set through A's CLI, and this escalation:
    /// tier 1 (the security group and Slack) waits [`TIER1_WAIT`], tier 2 (Kim and Slack) a day.
    fn start() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let pg = PgCluster::start();
        let slack = SlackStandIn::start(vec![]);
        let base = slack.url.rsplit_once('/').unwrap().0.to_owned();
        let key = sos_shared::Key::generate();
        let mut plans = Vec::new();
        for name in ["a", "b"] {
            let home = dir.path().join(name);
            let data = home.join("data");
            std::fs::create_dir_all(&data).unwrap();
            let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
            let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
            let config = format!(
                "listen = \"{addr}\"\ndata_dir = \"{}\"\nkey = \"{key}\"\ndatabase_url = \"{}\"\n\
                 shutdown_grace_secs = 2\n\
                 [outbox]\nfirst_retry_secs = 1\nmax_retry_secs = 2\nattempt_timeout_secs = 5\ncoalesce_window_ms = 200\n\
                 [notify.slack]\nwebhook_url = \"{base}/{name}\"\n\
                 [http]\nlisten = \"{http}\"\nadmins = [\"{ADMIN}\"]\npublic_url = \"http://{http}\"\n\
                 [[responders]]\nname = \"Sam Lee\"\nchat = \"<@U0SAM>\"\ngroups = [\"security\"]\n\
                 [[responders]]\nname = \"Kim Park\"\nchat = \"<@U0KIM>\"\n\
                 [escalation]\nemergency = [ {{ notify = [\"group:security\", \"channel:slack\"], wait_secs = {} }},\n\
                 {{ notify = [\"Kim Park\", \"channel:slack\"], wait_secs = 86400 }} ]\n",
                data.display(),
                pg.url(),
                TIER1_WAIT.as_secs()
            );
            let path = home.join("collector.toml");
            std::fs::write(&path, &config).unwrap();
            plans.push((name, home, addr, http, path, config));
        }
        let mut nodes: Vec<Node> = std::thread::scope(|s| {
            let handles: Vec<_> = plans
                .iter()
                .map(|(name, home, addr, http, path, config)| {
                    s.spawn(move || {
                        let process = CollectorProcess::start(home, *addr, config);
                        process.wait_log(WAIT, "console listening");
                        Node { name, addr: *addr, http: *http, config: path.clone(), process }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let b = nodes.pop().unwrap();
        let a = nodes.pop().unwrap();
        // Accounts are in the database: a password set through A's CLI is B's too.
        set_password(&a.config, ADMIN, PASSWORD);
        Pair { a, b, pg, slack, key, dir }
    }

    /// An agent config with the site key, listing `collectors` in order.
    fn agent(&self, name: &str, collectors: &[&Node]) -> PathBuf {
        let home = self.dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        let list: Vec<String> = collectors.iter().map(|n| format!("\"{}\"", n.addr)).collect();
        let path = home.join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "collectors = [{}]\nkey = \"{}\"\nlocation = \"Reception\"\nspool_dir = \"{}\"\nenrollment_file = \"{}\"\n",
                list.join(", "),
                self.key,
                home.join("spool").display(),
                home.join("enrollment.toml").display()
            ),
        )
        .unwrap();
        path
    }

    /// Which collector made a post: its webhook path ends with its name.
    fn poster<'a>(&'a self, r: &Received) -> &'a Node {
        match r.path.rsplit('/').next() {
            Some("a") => &self.a,
            Some("b") => &self.b,
            _ => panic!("a post to {}", r.path),
        }
    }

    /// Posts accepted by Slack that mention every one of `needles`.
    fn posts(&self, needles: &[&str]) -> Vec<Received> {
        self.slack
            .received()
            .into_iter()
            .filter(|r| r.status == 200 && needles.iter().all(|n| r.text().contains(n)))
            .collect()
    }

    /// Wait for a post that mentions every one of `needles`; returns it.
    fn wait_post(&self, timeout: Duration, needles: &[&str]) -> Received {
        self.slack.wait_for(timeout, &needles.join(" and "), |r| {
            r.iter().any(|x| x.status == 200 && needles.iter().all(|n| x.text().contains(n)))
        });
        self.posts(needles).remove(0)
    }

    /// `sos-agent send` with `config` and `message`: the alert id, after checking that
    /// `acknowledger` acknowledged it.
    fn send(&self, config: &Path, message: &str, acknowledger: &Node) -> String {
        let out = agent_send(config, &["--message", message, "--timeout", "30"]);
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("acknowledged by {}", acknowledger.addr)),
            "not acknowledged by {}: {stdout}",
            acknowledger.name
        );
        alert_id_of(&out)
    }
}

fn heartbeat() -> Message {
    Message::Heartbeat(Heartbeat {
        user: "alice".into(),
        host: "desk-7".into(),
        ip: "10.0.0.7".into(),
        pad: "0".repeat(128),
        responder: false,
    })
}

/// Whether `node` answers a heartbeat (with a heartbeat_ack) within `within`.
fn answers_heartbeat(node: &Node, key: &Key, within: Duration) -> bool {
    let peer = Peer::new(node.addr, key.clone());
    peer.send(&heartbeat());
    matches!(peer.recv_raw(within).and_then(|d| peer.open(&d)), Some(Message::HeartbeatAck(_)))
}

#[test]
fn an_agent_enrolled_through_one_collector_is_accepted_by_both_and_revoked_on_both() {
    if !postgres::available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let p = Pair::start();

    // The code is made by A's CLI; the agent completes its enrollment at B.
    let out = p.a.cli(&["enroll", "--name", "Reception desk 3"]);
    assert!(out.status.success(), "{}", text(&out));
    let code = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let home = p.dir.path().join("desk3");
    std::fs::create_dir_all(&home).unwrap();
    let file = home.join("enrollment.toml");
    let out = Command::new(bin("sos-agent"))
        .args(["enroll", &code, "--collector", &p.b.addr.to_string(), "--timeout", "20", "--out"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "enrollment at B with A's code: {}", text(&out));
    assert!(text(&out).contains("Enrolled as \"Reception desk 3\""), "{}", text(&out));
    let agent_id = sos_agent::keys::Enrollment::load(&file).unwrap().agent_id;

    // Its own key, no site key: accepted by A and by B, stored as the enrolled agent.
    let config_for = |n: &Node| {
        let path = home.join(format!("agent-{}.toml", n.name));
        std::fs::write(
            &path,
            format!(
                "collectors = [\"{}\"]\nenrollment_file = \"{}\"\nlocation = \"Reception\"\nspool_dir = \"{}\"\n",
                n.addr,
                file.display(),
                home.join(format!("spool-{}", n.name)).display()
            ),
        )
        .unwrap();
        path
    };
    let (to_a, to_b) = (config_for(&p.a), config_for(&p.b));
    for (config, node) in [(&to_a, &p.a), (&to_b, &p.b)] {
        let id = p.send(config, &format!("through {}", node.name), node);
        let row = p.pg.query(&format!("SELECT agent_id, agent_name FROM alerts WHERE alert_id = '{id}'"));
        assert_eq!(row.trim(), format!("{agent_id}|Reception desk 3"), "the alert acknowledged by {}", node.name);
        p.wait_post(WAIT, &[&id]);
    }
    // Both CLIs list it.
    for node in [&p.a, &p.b] {
        let list = text(&node.cli(&["agents", "list"]));
        assert!(list.contains("Reception desk 3") && list.contains(&agent_id), "{}: {list}", node.name);
    }

    // Revoked through A's CLI: B refuses it within a few seconds (its registry follows the
    // database), and so does A.
    let out = p.a.cli(&["agents", "revoke", &agent_id]);
    assert!(out.status.success(), "{}", text(&out));
    let revoked = Instant::now();
    for (config, node) in [(&to_b, &p.b), (&to_a, &p.a)] {
        // Each try is refused (no answer within its 2 s) or acknowledged; the first refusal ends
        // the wait, and from then on it stays refused.
        let refused = eventually(Duration::from_secs(10), || {
            agent_send(config, &["--message", "after the revocation", "--timeout", "2"]).status.code() == Some(1)
        });
        assert!(
            refused,
            "{} still acknowledges a revoked agent {:?} after the revocation",
            node.name,
            revoked.elapsed()
        );
        node.process.wait_log(WAIT, "REFUSED an SOS: the agent is revoked");
        let again = agent_send(config, &["--message", "long after the revocation", "--timeout", "2"]);
        assert_eq!(again.status.code(), Some(1), "{} acknowledged a revoked agent again: {}", node.name, text(&again));
    }
    eprintln!("the revocation on A was applied by B and A within {:.1} s", revoked.elapsed().as_secs_f64());
    let after = p.pg.query("SELECT count(*) FROM alerts WHERE message = 'long after the revocation'");
    assert_eq!(after.trim(), "0");
    for node in [&p.a, &p.b] {
        let list = text(&node.cli(&["agents"]));
        assert!(list.contains("REVOKED"), "{}: {list}", node.name);
    }
}

#[test]
fn an_acknowledgement_on_one_collector_stops_the_escalation_both_run_and_a_tier_fires_once() {
    if !postgres::available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let p = Pair::start();
    let via_a = p.agent("via-a", &[&p.a]);
    let via_b = p.agent("via-b", &[&p.b]);

    // s1 through A; acknowledged in B's console before tier 1's wait ends.
    let s1 = p.send(&via_a, "first", &p.a);
    let stored = Instant::now();
    p.wait_post(WAIT, &[&s1, "<@U0SAM>"]);
    let session_b = p.b.login();
    let page = http(p.b.http, "GET", &format!("/alerts/{s1}"), &session_b, &[]);
    assert_eq!(page.status, 200, "B's console shows A's alert: {}", page.body);
    let csrf = page.csrf().expect("the alert page has the acknowledge form");
    let ack =
        http(p.b.http, "POST", &format!("/alerts/{s1}/ack"), &session_b, &[("csrf", &csrf), ("note", "on my way")]);
    assert_eq!(ack.status, 303, "acknowledge in B's console: {}", ack.body);
    assert!(
        stored.elapsed() < TIER1_WAIT,
        "the test was too slow to acknowledge within tier 1 ({:?})",
        stored.elapsed()
    );
    p.wait_post(WAIT, &[&s1, &format!("Acknowledged by {ADMIN}")]);

    // The same state on both consoles and through both CLIs.
    let session_a = p.a.login();
    let want = format!("acknowledged by {ADMIN}");
    for (node, session) in [(&p.a, &session_a), (&p.b, &session_b)] {
        let state = node.console_state(session, &s1);
        assert!(state.starts_with(&want), "{}'s console: {state:?}", node.name);
        assert_eq!(node.cli_state(&s1), "state:      acknowledged", "{}'s CLI", node.name);
    }

    // s2 through B, after s1's acknowledgement, and never acknowledged: its tier 2 fires after
    // s1's would have. So once s2's tier 2 is on Slack, s1's (stopped) would have been too.
    let s2 = p.send(&via_b, "second", &p.b);
    let tier1 = p.wait_post(WAIT, &[&s2, "<@U0SAM>"]);
    p.wait_post(TIER1_WAIT + WAIT, &[&s2, "<@U0KIM>"]);
    let s1_later: Vec<String> = p
        .posts(&[&s1])
        .iter()
        .map(Received::text)
        .filter(|t| t.contains("<@U0KIM>") || t.contains("STILL UNANSWERED"))
        .collect();
    assert!(s1_later.is_empty(), "tier 2 paged for an acknowledged alert: {s1_later:#?}");
    let s1_jobs = p.pg.query(&format!("SELECT count(*) FROM outbox WHERE alert_id = '{s1}' AND tier > 1"));
    assert_eq!(s1_jobs.trim(), "0", "tier 2 jobs for the acknowledged alert");

    // s3, once s2's tier 2 is out: when s3's tier 2 fires, both collectors have long passed
    // s2's deadline, and s2's tier 2 must have paged once.
    let s3 = p.send(&via_a, "third", &p.a);
    p.wait_post(TIER1_WAIT + WAIT, &[&s3, "<@U0KIM>"]);
    let s2_tier2 = p.posts(&[&s2, "<@U0KIM>"]);
    assert_eq!(
        s2_tier2.len(),
        1,
        "tier 2 of one alert paged {} times by two collectors: {:#?}",
        s2_tier2.len(),
        s2_tier2.iter().map(|r| (r.path.clone(), r.text())).collect::<Vec<_>>()
    );
    let jobs =
        p.pg.query(&format!("SELECT count(*) FROM outbox WHERE alert_id = '{s2}' AND tier = 2 AND kind = 'alert'"));
    assert_eq!(jobs.trim(), "1", "one tier-2 job per channel");
    eprintln!(
        "tier 2 of {s2} paged once, by {}; tier 1 posted by {}",
        p.poster(&s2_tier2[0]).name,
        p.poster(&tier1).name
    );

    // The acknowledge link in s2's first post, made by whichever collector posted it, works at
    // the other one: on PostgreSQL the link key is shared through the database.
    let post = tier1.text();
    let at = post.find("/ack/").unwrap_or_else(|| panic!("no acknowledge link in the post: {post}"));
    let token: String =
        post[at + 5..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    let other = if p.poster(&tier1).name == "a" { &p.b } else { &p.a };
    let r = http(other.http, "POST", &format!("/ack/{token}"), "", &[("name", "Pat Night")]);
    assert_eq!(r.status, 200, "a link made by the other collector, opened at {}: {}", other.name, r.body);
    for node in [&p.a, &p.b] {
        assert_eq!(node.cli_state(&s2), "state:      acknowledged", "{}'s CLI", node.name);
    }
    let again = http(if other.name == "a" { p.b.http } else { p.a.http }, "POST", &format!("/ack/{token}"), "", &[]);
    assert_eq!(again.status, 409, "the link used at one collector is used at the other: {}", again.body);
}

#[test]
fn a_postgresql_outage_makes_both_collectors_unready_and_silent_then_both_recover() {
    if !postgres::available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let p = Pair::start();
    let key = Key::from_base64(&p.key).unwrap();
    let agent = p.agent("desk", &[&p.a, &p.b]);
    for node in [&p.a, &p.b] {
        let mut last = (0, String::new());
        assert!(
            eventually(WAIT, || {
                last = node.ready();
                last.0 == 200
            }),
            "{} not ready: {last:?}",
            node.name
        );
        assert!(answers_heartbeat(node, &key, WAIT), "{} answers no heartbeat before the outage", node.name);
    }

    // PostgreSQL crashes: both say so at once in their log and on /readyz, and answer nothing.
    // An agent presses meanwhile; it keeps trying both collectors.
    p.pg.kill();
    let down = Instant::now();
    let sending = std::thread::spawn({
        let agent = agent.clone();
        move || agent_send(&agent, &["--message", "during the outage", "--timeout", "120"])
    });
    for node in [&p.a, &p.b] {
        node.process.wait_log(WAIT, "STORE UNAVAILABLE");
        let mut last = (0, String::new());
        assert!(
            eventually(WAIT, || {
                last = node.ready();
                last.0 == 503
            }),
            "{}'s /readyz during the outage: {last:?}",
            node.name
        );
        assert!(last.1.contains("not ready"), "{}: {last:?}", node.name);
        // Two seconds is what a tray waits for an answer; a failing store gives none.
        assert!(
            !answers_heartbeat(node, &key, Duration::from_secs(2)),
            "{} answered a heartbeat with its store down",
            node.name
        );
        // Nor is an SOS acknowledged.
        let peer = Peer::new(node.addr, key.clone());
        let sos = Sos {
            alert_id: AlertId::random(),
            test: false,
            triggered_at: unix_now(),
            attempt: 0,
            user: "bob".into(),
            host: "desk-8".into(),
            ip: "10.0.0.8".into(),
            location: "Lab".into(),
            message: "hand-made, during the outage".into(),
            agent: "hand-made".into(),
        };
        peer.send(&Message::Sos(sos));
        let answer = peer.recv_raw(Duration::from_secs(2)).and_then(|d| peer.open(&d));
        assert!(
            !matches!(answer, Some(Message::SosAck(_))),
            "{} acknowledged an SOS with its store down: {answer:?}",
            node.name
        );
    }
    eprintln!("both collectors unready {:.1} s after PostgreSQL went down", down.elapsed().as_secs_f64());
    assert!(
        !sending.is_finished(),
        "an SOS was acknowledged while PostgreSQL was down: {}",
        text(&sending.join().unwrap())
    );
    assert_eq!(p.posts(&["during the outage"]).len(), 0);

    // PostgreSQL returns: both recover by themselves.
    p.pg.start_again();
    let up = Instant::now();
    for node in [&p.a, &p.b] {
        let mut last = (0, String::new());
        assert!(
            eventually(WAIT, || {
                last = node.ready();
                last.0 == 200
            }),
            "{}'s /readyz after the outage: {last:?}",
            node.name
        );
        assert!(answers_heartbeat(node, &key, WAIT), "{} answers no heartbeat after the outage", node.name);
    }
    eprintln!("both collectors ready {:.1} s after PostgreSQL returned", up.elapsed().as_secs_f64());
    let out = sending.join().unwrap();
    assert!(out.status.success(), "the SOS sent during the outage: {}", text(&out));
    let id = alert_id_of(&out);
    p.wait_post(WAIT, &[&id]);
    let stored = p.pg.query(&format!("SELECT count(*) FROM alerts WHERE alert_id = '{id}'"));
    assert_eq!(stored.trim(), "1");
    // Once: the delivery recorded, then no second post (a later alert's post is the barrier).
    assert!(
        eventually(WAIT, || {
            p
            .pg
            .query(&format!("SELECT state FROM outbox WHERE alert_id = '{id}' AND channel = 'slack' AND tier = 1 AND kind = 'alert'"))
            .trim()
            == "delivered"
        }),
        "the post of {id} is not recorded as delivered"
    );
    let barrier = p.send(&agent, "after the outage", &p.a);
    p.wait_post(WAIT, &[&barrier]);
    assert_eq!(p.posts(&[&id, "<@U0SAM>"]).len(), 1, "the SOS sent during the outage was posted more than once");
}
