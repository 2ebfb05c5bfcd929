//! The fault matrix of `docs/RELIABILITY.md`: lossy networks, blackouts, collector crashes under
//! load, a silent collector, channel outages and store failures. Every test asserts what
//! responders received (Slack stand-in posts, SMTP messages) and what the store recorded.
//!
//! Randomness (the relay's chance, the moments of the kills) comes from a seed printed at the
//! start of each test; set `SOS_FAULT_SEED` to replay a run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sos_agent::identity::Identity;
use sos_agent::send::{default_schedule, new_sos, Delivered, SendError, Sender};
use sos_e2e::process::alert_id_of;
use sos_e2e::site::Site;
use sos_e2e::smtp::{test_ca_file, unfold, Conn, Setup};
use sos_e2e::{agent_send, eventually, is_reminder, Answer, Faults, Relay, SlackStandIn, SmtpServer};
use sos_shared::AlertId;

const WAIT: Duration = Duration::from_secs(30);

/// Each alert sent and how its sending ended.
type Outcomes = Vec<(AlertId, Result<Delivered, String>)>;

fn seed() -> u64 {
    let seed = std::env::var("SOS_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("fault seed: {seed} (SOS_FAULT_SEED={seed} replays it)");
    seed
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn sender(site: &Site, collectors: Vec<String>) -> Sender {
    Sender::with(site.key(), collectors, default_schedule())
}

fn identity(i: usize) -> Identity {
    Identity { user: format!("agent{i:02}"), host: format!("desk-{i:02}") }
}

/// How many accepted Slack posts mention `id` (pages, not reminders).
fn slack_posts(slack: &SlackStandIn, id: &str) -> usize {
    slack.received().iter().filter(|r| r.status == 200 && r.text().contains(id) && !is_reminder(&r.text())).count()
}

/// How many accepted emails mention `id` (pages, not reminders).
fn emails(smtp: &SmtpServer, id: &str) -> usize {
    smtp.accepted().iter().map(|m| unfold(m)).filter(|m| m.contains(id) && !is_reminder(m)).count()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// A TCP port on 127.0.0.1 where nothing listens (yet).
fn closed_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// Lossy network

#[test]
fn at_30_percent_loss_200_sos_from_20_agents_are_all_acknowledged_and_notified_once_per_channel() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let smtp = SmtpServer::start(vec![]);
    let _collector = site.start(Some(&slack), Some(&smtp));
    let lossy = Faults { loss: 0.30, duplicate: 0.10, delay: (Duration::ZERO, Duration::from_millis(40)) };
    let relay = Relay::start(site.addr, lossy, lossy, seed());

    let rt = runtime();
    let results: Vec<Result<Delivered, SendError>> = rt.block_on(async {
        let mut agents = Vec::new();
        for i in 0..20 {
            let sender = sender(&site, vec![relay.addr.to_string()]);
            agents.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for n in 0..10 {
                    let sos = new_sos(&identity(i), "Lossy floor", &format!("press {n}"), false);
                    out.push(sender.send(sos, Duration::from_secs(120)).await);
                }
                out
            }));
        }
        let mut all = Vec::new();
        for a in agents {
            all.extend(a.await.unwrap());
        }
        all
    });
    let (up, down) = relay.counts();
    eprintln!("relay agents→collector {up:?}\nrelay collector→agents {down:?}");
    assert!(up.lost > 0 && down.lost > 0 && up.duplicated > 0, "the relay injected no faults: {up:?} {down:?}");

    let delivered: Vec<Delivered> = results.into_iter().map(|r| r.expect("an SOS was not acknowledged")).collect();
    assert_eq!(delivered.len(), 200);
    let mut times: Vec<Duration> = delivered.iter().map(|d| d.elapsed).collect();
    times.sort();
    let transmissions: u32 = delivered.iter().map(|d| d.transmissions).sum();
    eprintln!(
        "time to ACK over 30 % loss each way, 10 % duplication, 0-40 ms jitter: p50 {} ms, p99 {} ms, max {} ms; \
         {transmissions} transmissions for 200 SOS",
        percentile(&times, 0.50).as_millis(),
        percentile(&times, 0.99).as_millis(),
        times.last().unwrap().as_millis()
    );

    let ids: Vec<String> = delivered.iter().map(|d| d.alert_id.to_string()).collect();
    slack.wait_for(Duration::from_secs(120), "all 200 alerts on Slack", |r| {
        ids.iter().all(|id| r.iter().any(|x| x.status == 200 && x.text().contains(id.as_str())))
    });
    assert!(
        eventually(Duration::from_secs(120), || ids.iter().all(|id| emails(&smtp, id) >= 1)),
        "not every alert was emailed"
    );
    for id in &ids {
        assert_eq!(slack_posts(&slack, id), 1, "alert {id} on Slack");
        assert_eq!(emails(&smtp, id), 1, "alert {id} by email");
    }
}

#[test]
fn an_sos_sent_during_a_3_s_blackout_is_delivered_once_when_it_ends() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let _collector = site.start(Some(&slack), None);
    let relay = Relay::start(site.addr, Faults::NONE, Faults::NONE, seed());
    let rt = runtime();

    relay.blackout(true);
    let sender = sender(&site, vec![relay.addr.to_string()]);
    let sos = new_sos(&identity(1), "Blackout room", "", false);
    let id = sos.alert_id.to_string();
    let pressed = Instant::now();
    let task = rt.spawn(async move { sender.send(sos, Duration::from_secs(60)).await });
    relay.wait_counts(WAIT, "a transmission lost in the blackout", |up, _| up.blacked_out >= 1);
    // The fault itself: three seconds without a network.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(pressed.elapsed()));
    assert!(!task.is_finished(), "acknowledged through a blackout");
    assert_eq!(slack_posts(&slack, &id), 0);
    relay.blackout(false);

    let delivered = rt.block_on(task).unwrap().expect("not acknowledged after the blackout");
    assert!(delivered.elapsed >= Duration::from_secs(3), "{delivered:?}");
    slack.wait_for_text(WAIT, &id);
    assert!(eventually(WAIT, || site.delivery(&id, "slack").is_some_and(|d| d.0 == "delivered")));
    assert_eq!(slack_posts(&slack, &id), 1);
}

// ---------------------------------------------------------------------------------------------
// Collector crashes

#[test]
fn twenty_random_sigkills_under_load_lose_no_acknowledged_alert() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let smtp = SmtpServer::start(vec![]);
    let mut collector = site.start(Some(&slack), Some(&smtp));
    let mut rng = fastrand::Rng::with_seed(seed());

    // Four agents press the button about ten times a second each, for as long as the kills go on.
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Outcomes>> = Arc::default();
    let agents = {
        let (stop, results) = (stop.clone(), results.clone());
        let senders: Vec<Sender> = (0..4).map(|_| sender(&site, vec![site.addr.to_string()])).collect();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut tasks = Vec::new();
                for (i, sender) in senders.into_iter().enumerate() {
                    let (stop, results) = (stop.clone(), results.clone());
                    tasks.push(tokio::spawn(async move {
                        while !stop.load(Ordering::SeqCst) {
                            let sos = new_sos(&identity(i), "Crash lab", "", false);
                            let id = sos.alert_id;
                            let r = sender.send(sos, Duration::from_secs(60)).await.map_err(|e| e.to_string());
                            results.lock().unwrap().push((id, r));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            });
        })
    };

    let mut kills: Vec<Instant> = Vec::new();
    for _ in 0..20 {
        // The fault: a SIGKILL at a random moment between 100 and 900 ms of uptime under load.
        std::thread::sleep(Duration::from_millis(rng.u64(100..900)));
        collector.kill();
        kills.push(Instant::now());
        collector = site.start(Some(&slack), Some(&smtp));
    }
    stop.store(true, Ordering::SeqCst);
    agents.join().unwrap();

    let results = std::mem::take(&mut *results.lock().unwrap());
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(failed.is_empty(), "SOS not acknowledged: {failed:?}");
    let ids: Vec<String> = results.iter().map(|(id, _)| id.to_string()).collect();
    assert!(ids.len() >= 40, "too little load: {} alerts", ids.len());

    slack.wait_for(Duration::from_secs(120), "every acknowledged alert on Slack", |r| {
        ids.iter().all(|id| r.iter().any(|x| x.status == 200 && x.text().contains(id.as_str())))
    });
    assert!(
        eventually(Duration::from_secs(120), || ids.iter().all(|id| emails(&smtp, id) >= 1)),
        "an acknowledged alert was never emailed"
    );

    // Duplicates may only come from the documented window: the channel accepted the message
    // and the collector was killed before it recorded that. So every repeated notification of
    // an alert must follow a kill that came right after the previous one (within 2 s, generous
    // for a loaded CI machine), one kill per repeat.
    let slack_times: Vec<(Instant, String)> =
        slack.received().into_iter().filter(|r| r.status == 200).map(|r| (r.at, r.text())).collect();
    let email_times: Vec<(Instant, String)> = smtp.accepted_at().into_iter().map(|(t, m)| (t, unfold(&m))).collect();
    let slack_dups = duplicates_explained_by_kills("Slack", &ids, &slack_times, &kills);
    let email_dups = duplicates_explained_by_kills("email", &ids, &email_times, &kills);
    eprintln!(
        "{} kills, {} alerts acknowledged, {slack_dups} repeated on Slack, {email_dups} repeated by email",
        kills.len(),
        ids.len()
    );
    assert!(eventually(WAIT, || ids.iter().all(|id| {
        site.delivery(id, "slack").is_some_and(|d| d.0 == "delivered")
            && site.delivery(id, "email").is_some_and(|d| d.0 == "delivered")
    })));
}

/// Check that every repeat of an alert in `messages` (when, text) follows a kill within the
/// window after the previous copy; returns the number of repeats.
fn duplicates_explained_by_kills(
    channel: &str,
    ids: &[String],
    messages: &[(Instant, String)],
    kills: &[Instant],
) -> usize {
    const WINDOW: Duration = Duration::from_secs(2);
    let mut repeats = 0;
    let mut gaps = Vec::new();
    for id in ids {
        let mut times: Vec<Instant> =
            messages.iter().filter(|(_, m)| m.contains(id.as_str())).map(|(t, _)| *t).collect();
        times.sort();
        for pair in times.windows(2) {
            repeats += 1;
            let kill = kills.iter().find(|&&k| k <= pair[1] && (k.max(pair[0]) - k.min(pair[0])) <= WINDOW);
            let Some(&kill) = kill else {
                panic!("{channel}: alert {id} repeated with no kill right after its first copy");
            };
            gaps.push(kill.saturating_duration_since(pair[0]));
        }
    }
    gaps.sort();
    if let Some(max) = gaps.last() {
        eprintln!("{channel}: {repeats} repeats; kill came at most {} ms after the copy it repeats", max.as_millis());
    }
    repeats
}

#[test]
fn with_two_collectors_and_the_first_silent_the_live_one_acknowledges_without_waiting() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let _collector = site.start(Some(&slack), None);
    // A collector host that is gone: datagrams vanish, no ICMP error comes back.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = site.dir.path().join("two.toml");
    std::fs::write(
        &cfg,
        format!(
            "collectors = [\"{}\", \"{}\"]\nkey = \"{}\"\nspool_dir = \"{}\"\n",
            silent.local_addr().unwrap(),
            site.addr,
            site.key_text,
            site.spool_dir().display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = agent_send(&cfg, &["--timeout", "60"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&site.addr.to_string()));
    // The silent one was tried first...
    silent.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 2048];
    assert!(silent.recv_from(&mut buf).is_ok(), "the first collector was never tried");
    // ...and cost one short round, not the 60 s the send was allowed.
    assert!(took < Duration::from_secs(10), "took {took:?}: waited for the silent collector");
    slack.wait_for_text(WAIT, &alert_id_of(&out));
}

// ---------------------------------------------------------------------------------------------
// Channel outages

#[test]
fn slack_down_for_a_minute_is_retried_and_delivered_once_when_it_is_back() {
    let site = Site::new();
    let port = closed_tcp_port();
    let smtp = SmtpServer::start(vec![]);
    let url = format!("http://127.0.0.1:{port}/services/T000/B000/XXXX");
    let email = Site::email_table(smtp.port, "tls = \"none\"\n");
    let collector = site.start_with(&site.collector_config_with(Some(&url), Some(&email)));
    let down_since = Instant::now();
    let id = alert_id_of(&agent_send(&site.agent_config(), &[]));
    // The other channel does not wait for the broken one.
    smtp.wait_for_text(WAIT, &id);
    collector.wait_log_lines(WAIT, &["channel=\"slack\"", "will retry"], 3);
    let (state, error) = site.delivery(&id, "slack").unwrap();
    assert_eq!(state, "pending");
    assert!(error.unwrap_or_default().contains("connect"), "no connection error recorded");
    // The fault: a minute of Slack being unreachable.
    std::thread::sleep(Duration::from_secs(60).saturating_sub(down_since.elapsed()));

    let slack = SlackStandIn::start_on(port, vec![]);
    slack.wait_for_text(WAIT, &id);
    assert!(eventually(WAIT, || site.delivery(&id, "slack").is_some_and(|d| d.0 == "delivered")));
    assert_eq!(slack_posts(&slack, &id), 1);
    assert_eq!(emails(&smtp, &id), 1);
}

#[test]
fn slack_answering_429_again_and_again_is_honoured_each_time_and_delivered_once() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![Answer::RateLimited(1); 4]);
    let _collector = site.start(Some(&slack), None);
    let id = alert_id_of(&agent_send(&site.agent_config(), &[]));
    let all = slack.wait_for(WAIT, "a delivered post", |r| r.iter().any(|x| x.status == 200));
    assert_eq!(all.iter().map(|r| r.status).collect::<Vec<_>>(), vec![429, 429, 429, 429, 200]);
    for pair in all.windows(2) {
        assert!(pair[1].at - pair[0].at >= Duration::from_secs(1), "retried before Retry-After");
    }
    assert!(all.iter().all(|r| r.text().contains(&id)));
    assert!(eventually(WAIT, || site.delivery(&id, "slack").is_some_and(|d| d.0 == "delivered")));
}

#[test]
fn smtp_refusing_connections_is_retried_and_delivers_once_when_it_listens_again() {
    let site = Site::new();
    let port = closed_tcp_port();
    let slack = SlackStandIn::start(vec![]);
    let email = Site::email_table(port, "tls = \"none\"\n");
    let collector = site.start_with(&site.collector_config_with(Some(&slack.url), Some(&email)));
    let id = alert_id_of(&agent_send(&site.agent_config(), &[]));
    slack.wait_for_text(WAIT, &id);
    collector.wait_log_lines(WAIT, &["channel=\"email\"", "will retry"], 2);
    assert_eq!(site.delivery(&id, "email").unwrap().0, "pending");

    let smtp = SmtpServer::start_with(Setup { port, ..Setup::default() });
    smtp.wait_for_text(WAIT, &id);
    assert!(eventually(WAIT, || site.delivery(&id, "email").is_some_and(|d| d.0 == "delivered")));
    assert_eq!(emails(&smtp, &id), 1);
}

#[test]
fn smtp_answering_421_is_retried_and_delivers_once() {
    let site = Site::new();
    let smtp = SmtpServer::start_with(Setup { connections: vec![Conn::Greet421, Conn::Greet421], ..Setup::default() });
    let _collector = site.start(None, Some(&smtp));
    let id = alert_id_of(&agent_send(&site.agent_config(), &[]));
    smtp.wait_for_text(WAIT, &id);
    assert_eq!(smtp.connections()[..3], [Conn::Greet421, Conn::Greet421, Conn::Normal]);
    assert!(eventually(WAIT, || site.delivery(&id, "email").is_some_and(|d| d.0 == "delivered")));
    assert_eq!(emails(&smtp, &id), 1);
}

#[test]
fn an_smtp_server_that_stops_answering_mid_session_times_out_and_delivers_once() {
    let site = Site::new();
    let smtp = SmtpServer::start_with(Setup { connections: vec![Conn::StallAfterMail], ..Setup::default() });
    let collector = site.start(None, Some(&smtp));
    let id = alert_id_of(&agent_send(&site.agent_config(), &[]));
    smtp.wait_for_text(WAIT, &id);
    assert_eq!(smtp.connections()[..2], [Conn::StallAfterMail, Conn::Normal]);
    collector.wait_log_lines(WAIT, &["channel=\"email\"", "will retry"], 1);
    assert!(eventually(WAIT, || site.delivery(&id, "email").is_some_and(|d| d.0 == "delivered")));
    assert_eq!(emails(&smtp, &id), 1);
}

#[test]
fn a_failed_tls_handshake_is_retried_and_delivers_once_over_tls() {
    let site = Site::new();
    let smtp = SmtpServer::start_with(Setup { tls: true, connections: vec![Conn::BrokenTls], ..Setup::default() });
    let email = Site::email_table(smtp.port, &format!("tls = \"tls\"\nca_file = \"{}\"\n", test_ca_file().display()));
    let collector = site.start_with(&site.collector_config_with(None, Some(&email)));
    let id = alert_id_of(&agent_send(&site.agent_config(), &[]));
    smtp.wait_for_text(WAIT, &id);
    assert_eq!(smtp.connections()[..2], [Conn::BrokenTls, Conn::Normal]);
    collector.wait_log_lines(WAIT, &["channel=\"email\"", "will retry"], 1);
    assert!(eventually(WAIT, || site.delivery(&id, "email").is_some_and(|d| d.0 == "delivered")));
    assert_eq!(emails(&smtp, &id), 1);
}

#[test]
fn an_unresolvable_webhook_host_is_retried_and_reported_while_email_delivers() {
    let site = Site::new();
    let smtp = SmtpServer::start(vec![]);
    let email = Site::email_table(smtp.port, "tls = \"none\"\n");
    let url = "http://sos-webhook.invalid/services/T000/B000/XXXX";
    let collector = site.start_with(&site.collector_config_with(Some(url), Some(&email)));
    let id = alert_id_of(&agent_send(&site.agent_config(), &[]));
    smtp.wait_for_text(WAIT, &id);
    collector.wait_log_lines(WAIT, &["channel=\"slack\"", "will retry", "sos-webhook.invalid"], 2);
    let (state, error) = site.delivery(&id, "slack").unwrap();
    assert_eq!(state, "pending");
    assert!(error.as_deref().unwrap_or_default().contains("sos-webhook.invalid"), "{error:?}");
    let listing = String::from_utf8_lossy(&collector.alerts_cli().stdout).into_owned();
    assert!(listing.contains("slack") && listing.contains("sos-webhook.invalid"), "{listing}");
    assert!(!listing.contains("XXXX") && !collector.log().contains("B000/XXXX"), "the webhook secret leaked");
    assert_eq!(emails(&smtp, &id), 1);
}

// ---------------------------------------------------------------------------------------------
// Store failures

/// A filesystem of its own mounted on the site's data dir, unmounted on drop. The constructors
/// return `None` when mounting is not possible here (not root, no mkfs.ext4); under `CI` that is
/// a failure.
struct DataDisk {
    path: std::path::PathBuf,
}

fn run(cmd: &str, args: &[&std::ffi::OsStr]) -> bool {
    std::process::Command::new(cmd)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl DataDisk {
    /// A tmpfs of `size` (e.g. `4m`): small enough to fill.
    fn tmpfs(site: &Site, size: &str) -> Option<DataDisk> {
        let path = site.data_dir();
        std::fs::create_dir_all(&path).unwrap();
        let opts = format!("size={size},mode=0700");
        let ok = run(
            "mount",
            &["-t".as_ref(), "tmpfs".as_ref(), "-o".as_ref(), opts.as_ref(), "tmpfs".as_ref(), path.as_os_str()],
        );
        Self::mounted(path, ok, "a tmpfs (needs root)")
    }

    /// An ext4 image in the site's directory, loop-mounted: a filesystem that can be frozen.
    fn ext4(site: &Site) -> Option<DataDisk> {
        let image = site.dir.path().join("disk.img");
        let path = site.data_dir();
        std::fs::create_dir_all(&path).unwrap();
        let ok = std::fs::File::create(&image).and_then(|f| f.set_len(32 << 20)).is_ok()
            && run("mkfs.ext4", &["-q".as_ref(), "-F".as_ref(), image.as_os_str()])
            && run("mount", &["-o".as_ref(), "loop".as_ref(), image.as_os_str(), path.as_os_str()]);
        Self::mounted(path, ok, "a loop-mounted ext4 image (needs root and mkfs.ext4)")
    }

    fn mounted(path: std::path::PathBuf, ok: bool, what: &str) -> Option<DataDisk> {
        if !ok {
            assert!(std::env::var_os("CI").is_none(), "cannot mount {what}; required under CI");
            eprintln!("skipped: cannot mount {what} here");
            return None;
        }
        Some(DataDisk { path })
    }

    /// Fill the disk to the last byte; returns the filler file.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write as _;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&[0u8; 1]);
        let _ = f.sync_all();
        filler
    }

    /// Freeze the filesystem (ext4): every write blocks until the returned guard is dropped.
    fn freeze(&self) -> Frozen {
        assert!(run("fsfreeze", &["-f".as_ref(), self.path.as_os_str()]), "fsfreeze -f failed");
        Frozen { path: self.path.clone() }
    }
}

impl Drop for DataDisk {
    fn drop(&mut self) {
        run("umount", &["-l".as_ref(), self.path.as_os_str()]);
    }
}

/// Thaws the filesystem when dropped (also when a test panics, before the collector is killed:
/// declare it after the collector).
struct Frozen {
    path: std::path::PathBuf,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        run("fsfreeze", &["-u".as_ref(), self.path.as_os_str()]);
    }
}

/// The disk under the store fills up: the collector must not acknowledge, must say so loudly,
/// and must take the SOS as soon as there is space again, without a restart.
///
/// (A data dir turning read-only under a running collector cannot be staged from user space:
/// the kernel refuses a read-only remount while files are open for writing. A write the kernel
/// refuses for that reason reaches the collector as the same failed SQLite write as here.)
#[test]
fn a_full_disk_gets_no_ack_is_logged_loudly_and_recovers_without_a_restart() {
    let site = Site::new();
    let Some(disk) = DataDisk::tmpfs(&site, "4m") else { return };
    let slack = SlackStandIn::start(vec![]);
    let collector = site.start(Some(&slack), None);
    let pid = collector.pid();
    // Works before the fault.
    let first = alert_id_of(&agent_send(&site.agent_config(), &[]));
    slack.wait_for_text(WAIT, &first);
    assert!(eventually(WAIT, || site.delivery(&first, "slack").is_some_and(|d| d.0 == "delivered")));

    let filler = disk.fill();
    let rt = runtime();
    let sender = sender(&site, vec![site.addr.to_string()]);
    let sos = new_sos(&identity(7), "Server room", "while the disk is broken", false);
    let id = sos.alert_id.to_string();
    let task = rt.spawn(async move { sender.send(sos, Duration::from_secs(120)).await });
    collector.wait_log(WAIT, "STORE FAILING");
    collector.wait_log_lines(WAIT, &["CANNOT STORE AN SOS"], 3);
    assert!(!task.is_finished(), "acknowledged an SOS the store refused");
    assert_eq!(slack_posts(&slack, &id), 0);
    // Slack still works: responders are told that this collector cannot store.
    slack.wait_for_text(WAIT, "STORE FAILING");
    // And no tray shows this collector as ready: heartbeats go unanswered.
    let peer = sos_e2e::Peer::new(site.addr, site.key());
    let heartbeat = sos_shared::Message::Heartbeat(sos_shared::protocol::Heartbeat {
        user: "alice".into(),
        host: "desk-7".into(),
        ip: "10.0.0.7".into(),
        pad: "0".repeat(128),
        responder: false,
    });
    peer.send(&heartbeat);
    assert_eq!(peer.recv_raw(Duration::from_secs(2)), None, "a healthy answer from a failing store");

    std::fs::remove_file(&filler).unwrap();
    let delivered = rt.block_on(task).unwrap().expect("not acknowledged after the store recovered");
    assert_eq!(delivered.alert_id.to_string(), id);
    collector.wait_log(WAIT, "store recovered");
    slack.wait_for_text(WAIT, "store recovered");
    peer.send(&heartbeat);
    assert!(matches!(peer.recv_raw(WAIT).and_then(|d| peer.open(&d)), Some(sos_shared::Message::HeartbeatAck(_))));
    slack.wait_for_text(WAIT, &id);
    assert!(eventually(WAIT, || site.delivery(&id, "slack").is_some_and(|d| d.0 == "delivered")));
    assert_eq!(slack_posts(&slack, &id), 1);
    assert_eq!(slack_posts(&slack, &first), 1);
    assert_eq!(collector.pid(), pid);
    assert!(!collector.log().contains("collector stopped"), "the collector restarted or stopped");
}

/// A disk that hangs instead of failing (frozen, like a dead network filesystem): no ACK, the
/// log says the store is stuck, and the alert is acknowledged and notified once when it thaws.
#[test]
fn a_frozen_disk_gets_no_ack_is_logged_loudly_and_recovers_when_it_thaws() {
    let site = Site::new();
    let Some(disk) = DataDisk::ext4(&site) else { return };
    let slack = SlackStandIn::start(vec![]);
    let collector = site.start(Some(&slack), None);
    let first = alert_id_of(&agent_send(&site.agent_config(), &[]));
    slack.wait_for_text(WAIT, &first);
    assert!(eventually(WAIT, || site.delivery(&first, "slack").is_some_and(|d| d.0 == "delivered")));

    let frozen = disk.freeze();
    let rt = runtime();
    let sender = sender(&site, vec![site.addr.to_string()]);
    let sos = new_sos(&identity(8), "Server room", "while the disk hangs", false);
    let id = sos.alert_id.to_string();
    let task = rt.spawn(async move { sender.send(sos, Duration::from_secs(120)).await });
    collector.wait_log(WAIT, "STORE NOT ANSWERING");
    assert!(!task.is_finished(), "acknowledged an SOS the store has not committed");
    assert_eq!(slack_posts(&slack, &id), 0);

    drop(frozen);
    let delivered = rt.block_on(task).unwrap().expect("not acknowledged after the disk thawed");
    assert_eq!(delivered.alert_id.to_string(), id);
    collector.wait_log(WAIT, "store answering again");
    slack.wait_for_text(WAIT, &id);
    assert!(eventually(WAIT, || site.delivery(&id, "slack").is_some_and(|d| d.0 == "delivered")));
    assert_eq!(slack_posts(&slack, &id), 1);
}

/// The store hangs (a frozen disk) while an alert is open on responder desktops: pushes go on
/// from what was read last (a desk that has not confirmed keeps getting the broadcast), a
/// `respond` gets no answer until the store works again, and then it is recorded.
#[test]
fn pushes_go_on_while_the_store_hangs_and_a_respond_is_recorded_when_it_thaws() {
    use sos_e2e::process::enroll_agent;
    use sos_e2e::Peer;
    use sos_shared::protocol::{BroadcastState, Heartbeat, Respond, RespondStatus};
    use sos_shared::Message;

    let site = Site::new();
    let Some(disk) = DataDisk::ext4(&site) else { return };
    let mut config = site.collector_config(None, None);
    config.push_str("[[responders]]\nname = \"Sam Lee\"\nagents = [\"sam-desk\"]\n");
    let collector = site.start_with(&config);
    let (_, sam_key) = enroll_agent(&collector, site.dir.path(), "sam-desk");
    let sam = Peer::new(site.addr, sam_key);
    let sender = Peer::new(site.addr, site.key());
    let next = |peer: &Peer, wait: Duration, want: &dyn Fn(&Message) -> bool| -> bool {
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match peer.recv_raw(left) {
                Some(d) if peer.open(&d).is_some_and(|m| want(&m)) => return true,
                Some(_) => {}
                None => return false,
            }
        }
        false
    };
    let heartbeat = |peer: &Peer, host: &str, responder: bool| {
        peer.send(&Message::Heartbeat(Heartbeat {
            user: "u".into(),
            host: host.into(),
            ip: String::new(),
            pad: "0".repeat(160),
            responder,
        }))
    };
    assert!(eventually(WAIT, || {
        heartbeat(&sam, "sam-pc", true);
        next(&sam, Duration::from_millis(300), &|m| matches!(m, Message::HeartbeatAck(_)))
    }));
    let sos = sos_shared::protocol::Sos {
        alert_id: AlertId::random(),
        test: false,
        triggered_at: sos_shared::unix_now(),
        attempt: 0,
        user: "alice".into(),
        host: "reception".into(),
        ip: String::new(),
        location: "Reception".into(),
        message: String::new(),
        agent: "hand-made".into(),
    };
    let id = sos.alert_id;
    sender.send(&Message::Sos(sos));
    let open =
        |m: &Message| matches!(m, Message::AlertBroadcast(b) if b.alert_id == id && b.state == BroadcastState::Open);
    assert!(next(&sam, WAIT, &open), "the broadcast");

    let frozen = disk.freeze();
    // Sam's desk never confirms: the broadcast keeps coming (1 s, 2 s, 4 s …) with the store hung.
    assert!(next(&sam, Duration::from_secs(10), &open) && next(&sam, Duration::from_secs(10), &open));
    // A respond waits for the store: no answer while it hangs.
    let respond = Message::Respond(Respond::padded(id, String::new()));
    sam.send(&respond);
    let acked = |m: &Message| matches!(m, Message::RespondAck(a) if a.alert_id == id && a.status == RespondStatus::Acknowledged);
    assert!(!next(&sam, Duration::from_secs(3), &acked), "an acknowledgement that was not recorded");
    drop(frozen);
    // The agent retries; now it is recorded.
    assert!(eventually(WAIT, || {
        sam.send(&respond);
        next(&sam, Duration::from_millis(500), &|m| matches!(m, Message::RespondAck(a) if a.alert_id == id))
    }));
    let by: String = site
        .db()
        .query_row("SELECT by_responder FROM responses WHERE alert_id = ?1", [id.to_string()], |r| r.get(0))
        .unwrap();
    assert_eq!(by, "Sam Lee");
    drop(collector);
}
