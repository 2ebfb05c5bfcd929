//! Several collectors sharing one PostgreSQL (issue 18), end to end: three real
//! `sos-collector` processes with the same `database_url`, each on its own UDP port, with its
//! own webhook path on one Slack stand-in and its own sender address on one SMTP server (so that
//! every message is traced to the collector that sent it), and twenty real `sos-agent send`
//! processes that list all three collectors (each agent in another order) and fail over between
//! them. PostgreSQL is a cluster of the test's own ([`PgCluster`]).
//!
//! Each test disrupts the cluster during a burst of SOS, then checks the promises of
//! docs/RELIABILITY.md §8 ("Several collectors on PostgreSQL"):
//! - every SOS an agent saw acknowledged is in the database exactly once, with one outbox job
//!   per channel (Slack, email), delivered, and was sent on both channels;
//! - every alert was sent once per channel, except inside the documented window: the collector
//!   that sent the first copy was killed, cut off from the database, or lost it to a restart
//!   before it could record the delivery, so another collector sent it again once the lease ran
//!   out. The test counts those and prints them; a second copy outside that window fails it.
//!
//! The disruptions are driven by events (so many acknowledgements, a post by the collector about
//! to be killed), never by sleeps. Random choices print their seed (`SOS_FAULT_SEED` replays it).
//! PostgreSQL missing: the tests skip, unless `CI` is set (then they fail).
//!
//! Run time: the 30 s lease is the service's (not configurable); the disruptions happen during
//! the burst, so the leases they leave run out concurrently, and each test waits for at most one
//! lease at its end. About a minute and a half each on a 2-core machine, one test at a time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use sos_e2e::postgres::{self, PgCluster};
use sos_e2e::process::alert_id_of;
use sos_e2e::smtp::unfold;
use sos_e2e::tcpproxy::TcpProxy;
use sos_e2e::{agent_send, eventually, free_udp_port, CollectorProcess, SlackStandIn, SmtpServer};

const COLLECTORS: usize = 3;
const AGENTS: usize = 20;
/// SOS each agent sends, one after the other.
const PER_AGENT: usize = 5;
/// The outbox lease on PostgreSQL (docs/RELIABILITY.md §3, §8; `store::postgres::LEASE`): a job
/// whose collector died is taken over after this long (30 s, or `attempt_timeout_secs` + 15 s if
/// longer: with the 5 s attempts here, 30 s).
const LEASE: Duration = Duration::from_secs(30);
/// `[outbox] attempt_timeout_secs` in the collectors' configs: the longest a post may take.
const ATTEMPT: Duration = Duration::from_secs(5);
/// How long after Slack received a post its collector needs to record the delivery (its answer
/// on the way back, one transaction): a disruption of that collector starting later cannot be
/// why the alert was posted again.
const RECORD_WINDOW: Duration = Duration::from_secs(5);
/// How long an agent tries before giving up (`sos-agent send --timeout`).
const AGENT_TIMEOUT_SECS: u64 = 180;
/// The channels every collector has, each traced to its sender.
const CHANNELS: [&str; 2] = ["slack", "email"];

/// One test at a time: each starts a PostgreSQL, three collectors and twenty agents, which is
/// all a 2-core test machine can take without turning its timeouts into the thing under test.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The seed of this run's random choices.
fn seed() -> u64 {
    let seed = std::env::var("SOS_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("fault seed: {seed} (SOS_FAULT_SEED={seed} replays it)");
    seed
}

/// What happened to a collector (or to all of them) and when: the intervals in which a
/// collector could not record what it had done.
#[derive(Debug, Clone)]
struct Disruption {
    /// The collector's index, or `None` for all of them (PostgreSQL restarted).
    who: Option<usize>,
    what: &'static str,
    from: Instant,
    until: Option<Instant>,
}

impl Disruption {
    fn touches(&self, collector: usize, from: Instant, until: Instant) -> bool {
        self.who.is_none_or(|w| w == collector) && self.from <= until && self.until.is_none_or(|u| u >= from)
    }
}

/// One collector of the three: its directory, address, config and process.
struct Member {
    name: String,
    dir: PathBuf,
    addr: SocketAddr,
    config: String,
    process: Option<CollectorProcess>,
}

/// The SOS acknowledged so far, and the agents' failures, with a condition to wait on.
#[derive(Default)]
struct Progress {
    state: Mutex<(Vec<String>, Vec<String>, usize)>,
    changed: Condvar,
}

impl Progress {
    fn acked(&self, id: String) {
        self.state.lock().unwrap().0.push(id);
        self.changed.notify_all();
    }
    fn failed(&self, why: String) {
        self.state.lock().unwrap().1.push(why);
        self.changed.notify_all();
    }
    fn agent_done(&self) {
        self.state.lock().unwrap().2 += 1;
        self.changed.notify_all();
    }
    fn acknowledged(&self) -> Vec<String> {
        self.state.lock().unwrap().0.clone()
    }
    /// Wait until `n` SOS are acknowledged (or every agent is done), up to `timeout`.
    fn wait_acked(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock().unwrap();
        while s.0.len() < n && s.2 < AGENTS {
            let now = Instant::now();
            assert!(now < deadline, "only {} of {n} SOS acknowledged in {timeout:?}; failures: {:?}", s.0.len(), s.1);
            s = self.changed.wait_timeout(s, deadline - now).unwrap().0;
        }
    }
}

/// One message a channel accepted: which channel, when, from which collector, its text.
#[derive(Debug, Clone)]
struct Sent {
    channel: &'static str,
    at: Instant,
    by: usize,
    text: String,
}

/// PostgreSQL, three collectors, one Slack stand-in, one SMTP server, twenty agents. The
/// collectors come first: they are dropped (killed) before the database and the proxy.
struct Fleet {
    members: Vec<Mutex<Member>>,
    /// Between the last collector and PostgreSQL, when the test cuts that one off.
    proxy: Option<TcpProxy>,
    pg: PgCluster,
    slack: SlackStandIn,
    smtp: SmtpServer,
    agents: Vec<PathBuf>,
    disruptions: Mutex<Vec<Disruption>>,
    progress: Progress,
    started: Instant,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// Start PostgreSQL and the collectors (all at once: they migrate the schema together), and
    /// write the agents' configs. With `proxied`, the last collector reaches PostgreSQL through a
    /// [`TcpProxy`].
    fn start(proxied: bool) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let pg = PgCluster::start();
        let proxy = proxied.then(|| TcpProxy::start(format!("127.0.0.1:{}", pg.port).parse().unwrap()));
        let slack = SlackStandIn::start(vec![]);
        let smtp = SmtpServer::start(vec![]);
        let base = slack.url.rsplit_once('/').unwrap().0.to_owned();
        let key = sos_shared::Key::generate();
        let mut members = Vec::new();
        for i in 0..COLLECTORS {
            let name = format!("c{}", i + 1);
            let mdir = dir.path().join(&name);
            std::fs::create_dir_all(&mdir).unwrap();
            let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
            let url = match (&proxy, i == COLLECTORS - 1) {
                (Some(p), true) => pg.url_via(p.addr.port()),
                _ => pg.url(),
            };
            // One tier on both channels that waits a day: no reminder can repeat an alert
            // during the test, so every second copy is a duplicate.
            let config = format!(
                "listen = \"{addr}\"\ndata_dir = \"{}\"\nkey = \"{key}\"\ndatabase_url = \"{url}\"\n\
                 shutdown_grace_secs = 2\n\
                 [outbox]\nfirst_retry_secs = 1\nmax_retry_secs = 2\nattempt_timeout_secs = {}\ncoalesce_window_ms = 200\n\
                 [notify.slack]\nwebhook_url = \"{base}/{name}\"\n\
                 [notify.email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\nfrom = \"sos-{name}@example.com\"\n\
                 to = [\"security@example.com\"]\ntls = \"none\"\n\
                 [escalation]\nemergency = [ {{ notify = [\"channel:slack\", \"channel:email\"], wait_secs = 86400 }} ]\n",
                mdir.join("data").display(),
                ATTEMPT.as_secs(),
                smtp.port,
            );
            members.push(Member { name, dir: mdir, addr, config, process: None });
        }
        let addrs: Vec<SocketAddr> = members.iter().map(|m| m.addr).collect();
        let members: Vec<Mutex<Member>> = members.into_iter().map(Mutex::new).collect();
        std::thread::scope(|s| {
            for m in &members {
                s.spawn(|| {
                    let mut m = m.lock().unwrap();
                    m.process = Some(CollectorProcess::start(&m.dir, m.addr, &m.config));
                });
            }
        });
        // Each agent lists the three collectors in another order, so the first tries spread.
        let agents = (0..AGENTS)
            .map(|j| {
                let adir = dir.path().join(format!("agent{j:02}"));
                std::fs::create_dir_all(&adir).unwrap();
                let list: Vec<String> =
                    (0..COLLECTORS).map(|k| format!("\"{}\"", addrs[(j + k) % COLLECTORS])).collect();
                let config = adir.join("agent.toml");
                std::fs::write(
                    &config,
                    format!(
                        "collectors = [{}]\nkey = \"{key}\"\nlocation = \"Floor {j}\"\nspool_dir = \"{}\"\n\
                         enrollment_file = \"{}\"\n",
                        list.join(", "),
                        adir.join("spool").display(),
                        adir.join("enrollment.toml").display()
                    ),
                )
                .unwrap();
                config
            })
            .collect();
        Fleet {
            members,
            proxy,
            pg,
            slack,
            smtp,
            agents,
            disruptions: Mutex::default(),
            progress: Progress::default(),
            started: Instant::now(),
            _dir: dir,
        }
    }

    fn secs(&self, at: Instant) -> f64 {
        at.duration_since(self.started).as_secs_f64()
    }

    fn begin(&self, who: Option<usize>, what: &'static str) -> usize {
        let mut d = self.disruptions.lock().unwrap();
        d.push(Disruption { who, what, from: Instant::now(), until: None });
        d.len() - 1
    }

    fn end(&self, i: usize) {
        self.disruptions.lock().unwrap()[i].until = Some(Instant::now());
    }

    /// Which collector made a Slack post: its webhook path ends with its name.
    fn poster(&self, path: &str) -> usize {
        let name = path.rsplit('/').next().unwrap_or_default();
        (0..COLLECTORS).find(|&i| format!("c{}", i + 1) == name).unwrap_or_else(|| panic!("a post to {path}"))
    }

    /// Which collector sent an email: its sender address names it.
    fn mailer(&self, text: &str) -> usize {
        (0..COLLECTORS)
            .find(|&i| text.contains(&format!("sos-c{}@example.com", i + 1)))
            .unwrap_or_else(|| panic!("an email from no collector: {text}"))
    }

    /// Every message the channels accepted so far (Slack: answered 200; email: 250 at the end
    /// of DATA), oldest first per channel.
    fn sent(&self) -> Vec<Sent> {
        let slack = self.slack.received().into_iter().filter(|r| r.status == 200).map(|r| Sent {
            channel: "slack",
            at: r.at,
            by: self.poster(&r.path),
            text: r.text(),
        });
        let email = self.smtp.accepted_at().into_iter().map(|(at, m)| {
            let text = unfold(&m);
            Sent { channel: "email", at, by: self.mailer(&text), text }
        });
        slack.chain(email).collect()
    }

    /// SIGKILL collector `i` and start it again; the interval is recorded.
    fn kill_and_restart(&self, i: usize, what: &'static str) {
        let mut m = self.members[i].lock().unwrap();
        let d = self.begin(Some(i), what);
        if let Some(p) = m.process.take() {
            p.kill();
        }
        m.process = Some(CollectorProcess::start(&m.dir, m.addr, &m.config));
        self.end(d);
        eprintln!("{}: {} {what}, running again", self.secs(Instant::now()), m.name);
    }

    /// How many times collector `i` has said it lost PostgreSQL so far.
    fn outages(&self, i: usize) -> usize {
        let m = self.members[i].lock().unwrap();
        m.process.as_ref().unwrap().log().matches("STORE UNAVAILABLE").count()
    }

    /// Wait until collector `i` has said it lost PostgreSQL more than `before` times, and that
    /// its store answers again as often: until then it cannot record what it sends, so its
    /// window lasts until this returns.
    fn wait_recovered(&self, i: usize, before: usize) {
        let m = self.members[i].lock().unwrap();
        let p = m.process.as_ref().unwrap();
        let recovered = || {
            let log = p.log();
            let down = log.matches("STORE UNAVAILABLE").count();
            down > before && log.matches("PostgreSQL store answering again").count() >= down
        };
        assert!(
            eventually(Duration::from_secs(60), recovered),
            "{} did not say it lost PostgreSQL and then answered again:\n{}",
            m.name,
            p.log()
        );
    }

    /// Every agent sends [`PER_AGENT`] SOS, one after the other, all agents at once; `chaos`
    /// runs meanwhile. Returns when every agent is done and `chaos` has returned.
    fn burst(&self, chaos: impl FnOnce(&Fleet) + Send) {
        std::thread::scope(|s| {
            for (j, config) in self.agents.iter().enumerate() {
                s.spawn(move || {
                    for k in 0..PER_AGENT {
                        let message = format!("agent {j} press {k}");
                        let out =
                            agent_send(config, &["--message", &message, "--timeout", &AGENT_TIMEOUT_SECS.to_string()]);
                        if out.status.success() {
                            self.progress.acked(alert_id_of(&out));
                        } else {
                            self.progress.failed(format!(
                                "agent {j} press {k}: {}{}",
                                String::from_utf8_lossy(&out.stdout),
                                String::from_utf8_lossy(&out.stderr)
                            ));
                        }
                    }
                    self.progress.agent_done();
                });
            }
            s.spawn(move || chaos(self));
        });
    }

    /// Wait until every SOS acknowledged so far was sent on every channel, up to `timeout`.
    fn wait_posted(&self, timeout: Duration) {
        let ids = self.progress.acknowledged();
        let missing = || {
            let sent = self.sent();
            ids.iter()
                .flat_map(|id| CHANNELS.iter().map(move |c| (id, *c)))
                .filter(|(id, c)| !sent.iter().any(|s| s.channel == *c && s.text.contains(id.as_str())))
                .map(|(id, c)| format!("{id} on {c}"))
                .collect::<Vec<_>>()
        };
        assert!(eventually(timeout, || missing().is_empty()), "not sent within {timeout:?}: {:#?}", missing());
    }

    /// The checks every scenario ends with; prints the summary. Returns the number of second
    /// posts inside the documented window.
    fn check(&self, scenario: &str) -> usize {
        let (acked, failures, _) = self.progress.state.lock().unwrap().clone();
        assert!(failures.is_empty(), "SOS not acknowledged within {AGENT_TIMEOUT_SECS} s: {failures:#?}");
        assert_eq!(acked.len(), AGENTS * PER_AGENT);
        // A collector killed mid-delivery leaves its lease to run out: allow for it, and for the
        // retries after (Slack's rate limit answers 429 to three collectors posting at once).
        self.wait_posted(LEASE + Duration::from_secs(120));

        // In the database exactly once, each with one Slack job, delivered.
        let rows = self.pg.query("SELECT alert_id, count(*) FROM alerts GROUP BY alert_id");
        let stored: HashMap<&str, u32> =
            rows.lines().filter_map(|l| l.split_once('|')).map(|(id, n)| (id, n.parse().unwrap())).collect();
        for id in &acked {
            assert_eq!(stored.get(id.as_str()), Some(&1), "acknowledged SOS {id} is not in PostgreSQL exactly once");
        }
        let delivered = || {
            let rows = self.pg.query(
                "SELECT alert_id, channel, count(*), min(state), max(state) FROM outbox \
                 WHERE kind = 'alert' GROUP BY alert_id, channel",
            );
            let jobs: HashMap<(String, String), String> = rows
                .lines()
                .filter_map(|l| {
                    let mut f = l.splitn(3, '|');
                    Some(((f.next()?.to_owned(), f.next()?.to_owned()), f.next()?.to_owned()))
                })
                .collect();
            let bad: Vec<String> = acked
                .iter()
                .flat_map(|id| CHANNELS.iter().map(move |c| (id.clone(), c.to_string())))
                .filter(|k| jobs.get(k).map(String::as_str) != Some("1|delivered|delivered"))
                .map(|k| format!("{} on {}: {:?}", k.0, k.1, jobs.get(&k)))
                .collect();
            bad
        };
        assert!(
            eventually(LEASE + Duration::from_secs(30), || delivered().is_empty()),
            "jobs not delivered once: {:#?}",
            delivered()
        );

        // Messages per alert and channel: once, or a second time inside the documented window.
        let sent = self.sent();
        let disruptions = self.disruptions.lock().unwrap().clone();
        let mut in_window = Vec::new();
        let mut outside = Vec::new();
        for id in &acked {
            for channel in CHANNELS {
                let mut copies: Vec<&Sent> =
                    sent.iter().filter(|s| s.channel == channel && s.text.contains(id.as_str())).collect();
                copies.sort_by_key(|s| s.at);
                assert!(!copies.is_empty(), "{id} was never sent on {channel}");
                if copies.len() == 1 {
                    continue;
                }
                let first = copies[0];
                let why = disruptions.iter().find(|d| d.touches(first.by, first.at, first.at + RECORD_WINDOW));
                let line = format!(
                    "{id} on {channel}: {} copies (first by c{} at {:.1} s, then {}{})",
                    copies.len(),
                    first.by + 1,
                    self.secs(first.at),
                    copies[1..]
                        .iter()
                        .map(|s| format!("c{} at {:.1} s", s.by + 1, self.secs(s.at)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    why.map(|d| format!("; {} at {:.1} s", d.what, self.secs(d.from))).unwrap_or_default()
                );
                if why.is_some() {
                    in_window.push(line);
                } else {
                    outside.push(line);
                }
            }
        }
        let per_collector = |channel: &str| -> String {
            (0..COLLECTORS)
                .map(|i| format!("c{}: {}", i + 1, sent.iter().filter(|s| s.channel == channel && s.by == i).count()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let refused = self.slack.received().iter().filter(|r| r.status != 200).count();
        eprintln!(
            "\n== {scenario} ({:.0} s)\n{} collectors, {} agents, {} SOS acknowledged, all stored once and delivered on {}\n\
             Slack: {} posts accepted ({}), {refused} refused (rate limit)\n\
             email: {} messages accepted ({})\n\
             disruptions: {}\n\
             alerts sent twice on a channel inside the documented window (a collector disrupted before recording its send): {}\n{}",
            self.secs(Instant::now()),
            COLLECTORS,
            AGENTS,
            acked.len(),
            CHANNELS.join(" and "),
            sent.iter().filter(|s| s.channel == "slack").count(),
            per_collector("slack"),
            sent.iter().filter(|s| s.channel == "email").count(),
            per_collector("email"),
            disruptions
                .iter()
                .map(|d| format!(
                    "{} {} at {:.1} s for {:.1} s",
                    d.who.map_or("all".to_owned(), |w| format!("c{}", w + 1)),
                    d.what,
                    self.secs(d.from),
                    d.until.map_or(0.0, |u| u.duration_since(d.from).as_secs_f64())
                ))
                .collect::<Vec<_>>()
                .join("; "),
            in_window.len(),
            in_window.join("\n"),
        );
        assert!(
            outside.is_empty(),
            "alerts sent more than once on a channel outside the documented window:\n{}",
            outside.join("\n")
        );

        // Nothing is left in an agent's spool: every SOS was acknowledged.
        for config in &self.agents {
            let spool = config.parent().unwrap().join("spool");
            // Waiting alerts are `ALERT_ID.json`; `delivered/` records what was acknowledged.
            let left: Vec<_> = std::fs::read_dir(&spool)
                .map(|d| {
                    d.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "json")).collect()
                })
                .unwrap_or_default();
            assert!(left.is_empty(), "left in {}: {left:?}", spool.display());
        }
        in_window.len()
    }
}

#[test]
fn collectors_killed_at_random_during_a_burst_lose_nothing_and_page_once() {
    if !postgres::available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = fastrand::Rng::with_seed(seed());
    let fleet = Fleet::start(false);
    let total = AGENTS * PER_AGENT;
    let kills: Vec<(usize, bool)> = (0..5).map(|k| (rng.usize(..COLLECTORS), k % 2 == 1)).collect();
    fleet.burst(|f| {
        for (k, &(victim, after_its_post)) in kills.iter().enumerate() {
            // Kills after the last acknowledgement still land among deliveries in flight.
            f.progress.wait_acked(total * (k + 1) / (kills.len() + 2), Duration::from_secs(300));
            if after_its_post {
                // Right after Slack took a post from it: most likely before it recorded the
                // delivery, which is the documented window.
                let seen = f.slack.received().len();
                let posted = eventually(Duration::from_secs(10), || {
                    f.slack.received()[seen..].iter().any(|r| r.status == 200 && f.poster(&r.path) == victim)
                });
                f.kill_and_restart(victim, if posted { "SIGKILL right after its post" } else { "SIGKILL" });
            } else {
                f.kill_and_restart(victim, "SIGKILL");
            }
        }
    });
    fleet.check("SIGKILLs of collectors during a burst");
}

#[test]
fn postgresql_restarted_mid_burst_loses_nothing_and_pages_once() {
    if !postgres::available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let fleet = Fleet::start(false);
    let total = AGENTS * PER_AGENT;
    fleet.burst(|f| {
        for round in 1..=2 {
            f.progress.wait_acked(total * round / 3, Duration::from_secs(300));
            // A crash (no checkpoint; recovery from the WAL), then a clean restart.
            let before: Vec<usize> = (0..COLLECTORS).map(|i| f.outages(i)).collect();
            let d = f.begin(None, if round == 1 { "PostgreSQL crashed and restarted" } else { "PostgreSQL restarted" });
            if round == 1 {
                f.pg.kill();
                f.pg.start_again();
            } else {
                f.pg.restart();
            }
            // The window lasts until every collector has its connection back.
            for (i, before) in before.into_iter().enumerate() {
                f.wait_recovered(i, before);
            }
            f.end(d);
            eprintln!("{:.1}: PostgreSQL back", f.secs(Instant::now()));
        }
    });
    fleet.check("PostgreSQL restarted mid-burst");
    // The collectors are still serving: a new SOS after the burst is acknowledged and posted.
    let out = agent_send(&fleet.agents[0], &["--message", "after the restarts", "--timeout", "60"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fleet.slack.wait_for_text(Duration::from_secs(60), &alert_id_of(&out));
}

#[test]
fn a_collector_cut_off_from_postgresql_loses_nothing_and_pages_once() {
    if !postgres::available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let fleet = Fleet::start(true);
    let total = AGENTS * PER_AGENT;
    let cut = COLLECTORS - 1;
    fleet.burst(|f| {
        f.progress.wait_acked(total / 4, Duration::from_secs(300));
        let proxy = f.proxy.as_ref().unwrap();
        let before = f.outages(cut);
        let d = f.begin(Some(cut), "cut off from PostgreSQL");
        proxy.blackhole();
        eprintln!("{:.1}: c{} cut off from PostgreSQL", f.secs(Instant::now()), cut + 1);
        // The others carry the burst, the jobs it had leased included (after the lease).
        f.progress.wait_acked(total * 3 / 4, Duration::from_secs(300));
        f.wait_posted(LEASE + Duration::from_secs(120));
        proxy.heal();
        f.wait_recovered(cut, before);
        f.end(d);
        eprintln!("{:.1}: c{} reaches PostgreSQL again", f.secs(Instant::now()), cut + 1);
    });
    fleet.check("one collector cut off from PostgreSQL by a blackholing proxy");
    // Once healed (it said its store answers again), the collector that was cut off serves
    // again: an agent that lists it first is acknowledged by it.
    let first_is_cut = fleet.agents.iter().position(|c| {
        std::fs::read_to_string(c)
            .unwrap()
            .contains(&format!("collectors = [\"{}\"", fleet.members[cut].lock().unwrap().addr))
    });
    let config = &fleet.agents[first_is_cut.unwrap()];
    let out = agent_send(config, &["--message", "after the cut", "--timeout", "60"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let addr = fleet.members[cut].lock().unwrap().addr.to_string();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&addr),
        "not acknowledged by the healed collector: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    fleet.slack.wait_for_text(Duration::from_secs(60), &alert_id_of(&out));
}
