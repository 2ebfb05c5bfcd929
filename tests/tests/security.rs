//! End-to-end: per-agent keys, enrollment by one-time code, revocation, rotation, replay and
//! abuse resistance, with the real binaries, a Slack stand-in and the real store.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sos_e2e::bin::bin;
use sos_e2e::flood::{Flood, Make, Source};
use sos_e2e::process::alert_id_of;
use sos_e2e::site::Site;
use sos_e2e::{CollectorProcess, Peer, SlackStandIn};
use sos_shared::protocol::{header, Heartbeat, Sos};
use sos_shared::{unix_now, AlertId, Key, Message};

const WAIT: Duration = Duration::from_secs(20);

/// An agent enrolled through the real CLIs.
struct Enrolled {
    config: PathBuf,
    file: PathBuf,
    agent_id: String,
    code: String,
    /// What the commands printed on stderr (scanned for keys).
    stderr: String,
}

impl Enrolled {
    fn key_text(&self) -> String {
        sos_agent::keys::Enrollment::load(&self.file).unwrap().key
    }

    fn key(&self) -> Key {
        Key::from_base64(&self.key_text()).unwrap()
    }
}

fn collector_cli(collector: &CollectorProcess, args: &[&str]) -> Output {
    Command::new(bin("sos-collector")).args(args).arg("--config").arg(&collector.config).output().unwrap()
}

fn new_code(collector: &CollectorProcess, name: &str) -> String {
    let out = collector_cli(collector, &["enroll", "--name", name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn agent_enroll(code: &str, collector: &CollectorProcess, out: &std::path::Path, timeout: &str) -> Output {
    Command::new(bin("sos-agent"))
        .args(["enroll", code, "--collector", &collector.addr.to_string(), "--timeout", timeout, "--out"])
        .arg(out)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn enroll(site: &Site, collector: &CollectorProcess, name: &str) -> Enrolled {
    let code = new_code(collector, name);
    let slug: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    let file = site.dir.path().join(format!("{slug}.enrollment.toml"));
    let out = agent_enroll(&code, collector, &file, "20");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "enroll failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("Enrolled as \"{name}\"")), "{stdout}");
    let agent_id = sos_agent::keys::Enrollment::load(&file).unwrap().agent_id;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let config = site.dir.path().join(format!("{slug}.agent.toml"));
    // No key in the config: the enrollment file is the agent's key and names the collector.
    std::fs::write(
        &config,
        format!(
            "enrollment_file = \"{}\"\nlocation = \"{name}\"\nspool_dir = \"{}\"\n",
            file.display(),
            site.dir.path().join(format!("{slug}.spool")).display()
        ),
    )
    .unwrap();
    Enrolled { config, file, agent_id, code, stderr: String::from_utf8_lossy(&out.stderr).to_string() }
}

/// `sos-agent send` with debug logs; (output, stderr).
fn send(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(bin("sos-agent"))
        .args(["send", "--config"])
        .arg(config)
        .args(args)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Wait until the running collector has loaded the registry as it is in the store now.
fn wait_registry_applied(site: &Site, collector: &CollectorProcess) {
    let version: i64 =
        site.db().query_row("SELECT version FROM registry_version WHERE id = 0", [], |r| r.get(0)).unwrap();
    collector.wait_log(WAIT, &format!("agent registry reloaded version={version} "));
}

fn sos(host: &str) -> Sos {
    Sos {
        alert_id: AlertId::random(),
        test: false,
        triggered_at: unix_now(),
        attempt: 0,
        user: "mallory".into(),
        host: host.into(),
        ip: "10.9.9.9".into(),
        location: "Reception".into(),
        message: String::new(),
        agent: "hand-made".into(),
    }
}

fn heartbeat() -> Message {
    Message::Heartbeat(Heartbeat {
        user: "u".into(),
        host: "h".into(),
        ip: String::new(),
        pad: "0".repeat(128),
        responder: false,
    })
}

fn agent_ack(peer: &Peer, timeout: Duration) -> Option<Message> {
    let d = peer.recv_raw(timeout)?;
    peer.open(&d)
}

#[test]
fn an_enrolled_agent_is_attributed_and_no_other_key_speaks_in_its_name() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let collector = site.start(Some(&slack), None);
    let a = enroll(&site, &collector, "Reception desk 3");
    let b = enroll(&site, &collector, "Lab 2");
    assert_ne!(a.key().id(), b.key().id());

    // A's SOS, through the real agent, is attributed to A.
    let out = send(&a.config, &["--message", "help"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = alert_id_of(&out);
    let post = slack.wait_for_text(WAIT, &id);
    assert!(post.text().contains("Reception desk 3") && !post.text().contains("IDENTITY MISMATCH"), "{}", post.text());
    let (agent_id, name): (String, String) = site
        .db()
        .query_row("SELECT agent_id, agent_name FROM alerts WHERE alert_id = ?1", [&id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!((agent_id.as_str(), name.as_str()), (a.agent_id.as_str(), "Reception desk 3"));

    // B claims to be another host: stored as B's, and responders are warned.
    let peer_b = Peer::new(collector.addr, b.key());
    let forged = sos("reception-desk-3");
    peer_b.send(&Message::Sos(forged.clone()));
    assert!(matches!(agent_ack(&peer_b, WAIT), Some(Message::SosAck(ack)) if ack.alert_id == forged.alert_id));
    let post = slack.wait_for_text(WAIT, &forged.alert_id.to_string());
    assert!(post.text().contains("IDENTITY MISMATCH") && post.text().contains("Lab 2"), "{}", post.text());
    let name: String = site
        .db()
        .query_row("SELECT agent_name FROM alerts WHERE alert_id = ?1", [forged.alert_id.to_string()], |r| r.get(0))
        .unwrap();
    assert_eq!(name, "Lab 2");

    // B seals with its own key under A's key id: not authentic, no answer. A heartbeat sent
    // after it is answered first, so the forged datagram was handled and dropped.
    let in_a_name = sos("reception-desk-3");
    let sealed_by_b = b.key().seal(&Message::Sos(in_a_name.clone()), unix_now()).unwrap();
    let mut forged_header = header(a.key().id()).to_vec();
    forged_header.extend_from_slice(&sealed_by_b[12..]);
    peer_b.send_raw(&forged_header);
    peer_b.send(&heartbeat());
    assert!(matches!(agent_ack(&peer_b, WAIT), Some(Message::HeartbeatAck(_))));
    assert!(peer_b.recv_raw(Duration::from_millis(300)).is_none(), "a forged datagram was answered");
    let n: i64 = site
        .db()
        .query_row("SELECT COUNT(*) FROM alerts WHERE alert_id = ?1", [in_a_name.alert_id.to_string()], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);

    // `agents list` shows both, with no key material.
    let out = collector_cli(&collector, &["agents", "list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("Reception desk 3") && list.contains("Lab 2") && list.contains(&a.agent_id), "{list}");
    assert!(!list.contains(a.key_text().trim_end_matches('=')));
}

#[test]
fn revoked_agents_and_used_expired_or_guessed_codes_are_refused() {
    let site = Site::new();
    let collector = site.start(None, None);
    let a = enroll(&site, &collector, "Reception desk 3");
    assert!(send(&a.config, &["--test"]).status.success());

    // Revoked: not acknowledged, and the log says why loudly.
    let out = collector_cli(&collector, &["agents", "revoke", &a.agent_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_registry_applied(&site, &collector);
    let out = send(&a.config, &["--timeout", "2"]);
    assert_eq!(out.status.code(), Some(1), "a revoked agent's SOS was acknowledged");
    collector.wait_log(WAIT, "REFUSED an SOS: the agent is revoked");
    let list = String::from_utf8_lossy(&collector_cli(&collector, &["agents"]).stdout).to_string();
    assert!(list.contains("REVOKED"), "{list}");

    // A used code: no answer, the agent says so plainly.
    let again = agent_enroll(&a.code, &collector, &site.dir.path().join("again.toml"), "2");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no answer"), "{}", String::from_utf8_lossy(&again.stderr));
    collector.wait_log(WAIT, "the code was used already");

    // An expired code.
    let code = new_code(&collector, "Late");
    let code_id: String = code.chars().filter(|c| *c != '-').take(4).collect();
    {
        let db = rusqlite::Connection::open(site.data_dir().join("sos.db")).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        db.execute("UPDATE enrollments SET expires_at_ms = 0 WHERE code_id = ?1", [&code_id]).unwrap();
    }
    assert!(!agent_enroll(&code, &collector, &site.dir.path().join("late.toml"), "2").status.success());
    collector.wait_log(WAIT, "the code has expired");

    // Guessing: every wrong secret is caught by the agent (the collector's proof does not
    // match) and counted by the collector; after five, even the right code is refused.
    let code = new_code(&collector, "Guessed");
    let wrong = format!("{}-0000-0000", &code[..4]);
    for _ in 0..5 {
        let out = agent_enroll(&wrong, &collector, &site.dir.path().join("guess.toml"), "5");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("does not match"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!agent_enroll(&code, &collector, &site.dir.path().join("guess.toml"), "2").status.success());
    collector.wait_log(WAIT, "tried too often");
    assert!(!site.dir.path().join("guess.toml").exists() && !site.dir.path().join("late.toml").exists());
}

#[test]
fn rotation_loses_no_sos_retires_the_old_key_after_the_grace_and_no_log_shows_a_key() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let config = site.collector_config(Some(&slack), None).replacen(
        "[outbox]",
        "[security]\nrotation_grace_secs = 8\n[outbox]",
        1,
    );
    let collector = site.start_with(&config);
    let a = enroll(&site, &collector, "Reception desk 3");
    let first_key = a.key_text();
    let mut stderr = a.stderr.clone();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let agent_config = sos_agent::AgentConfig::load(&a.config).unwrap();
    let sender = sos_agent::Sender::new(&agent_config);
    let identity = sos_agent::identity::Identity::current();

    // A stream of SOS for the whole rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let sender = sender.clone();
        let stop = stop.clone();
        let identity = identity.clone();
        rt.spawn(async move {
            let mut ids = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let sos = sos_agent::send::new_sos(&identity, "Reception", "during rotation", true);
                let d = sender.send(sos, Duration::from_secs(15)).await.expect("an SOS during rotation was lost");
                ids.push(d.alert_id);
                // Ten a second: a busy agent, well under the per-agent rate limit.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ids
        })
    };

    let out = collector_cli(&collector, &["agents", "rotate", &a.agent_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Rotating again before the agent picked the key up would lock it out: refused.
    assert!(!collector_cli(&collector, &["agents", "rotate", "Reception desk 3"]).status.success());
    wait_registry_applied(&site, &collector);
    let answered = rt.block_on(sender.heartbeat(&identity, Duration::from_secs(5)));
    assert!(answered.is_some(), "the heartbeat was not answered");
    let second_key = a.key_text();
    assert_ne!(first_key, second_key, "the new key was not saved to the enrollment file");
    collector.wait_log(WAIT, "key rotation complete");
    let promoted = Instant::now();

    // The old key still works during the grace period, then is refused.
    let old = Peer::new(collector.addr, Key::from_base64(&first_key).unwrap());
    let s = sos("vm");
    old.send(&Message::Sos(s.clone()));
    assert!(
        matches!(agent_ack(&old, WAIT), Some(Message::SosAck(ack)) if ack.alert_id == s.alert_id),
        "the old key was refused within the grace period"
    );
    // Two seconds in, still within the grace period: accepted. (The grace starts before the
    // commit the log line follows, and this disk can take a second over one: 8 s, not 3.)
    std::thread::sleep((promoted + Duration::from_secs(2)).saturating_duration_since(Instant::now()));
    let s = sos("vm");
    old.send(&Message::Sos(s.clone()));
    assert!(
        matches!(agent_ack(&old, WAIT), Some(Message::SosAck(ack)) if ack.alert_id == s.alert_id),
        "the old key was refused 2 s into an 8 s grace period"
    );
    // The collector started the 8 s grace when it promoted the key, just before the log line
    // this test saw; once the clock passes it, the old key is refused (the refusal's event is
    // its log line; the SOS gets no answer).
    std::thread::sleep((promoted + Duration::from_millis(8200)).saturating_duration_since(Instant::now()));
    let late = sos("vm");
    old.send(&Message::Sos(late.clone()));
    collector.wait_log(WAIT, "the key was replaced by a rotation");
    assert!(old.recv_raw(Duration::from_millis(300)).is_none(), "the old key was accepted after the grace period");
    let stored: i64 = site
        .db()
        .query_row("SELECT COUNT(*) FROM alerts WHERE alert_id = ?1", [late.alert_id.to_string()], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, 0, "an SOS sealed with the retired key was stored");

    stop.store(true, Ordering::SeqCst);
    let ids = rt.block_on(stream).unwrap();
    assert!(ids.len() >= 2, "{} SOS sent during the rotation", ids.len());
    for id in &ids {
        let who: String = site
            .db()
            .query_row("SELECT agent_id FROM alerts WHERE alert_id = ?1", [id.to_string()], |r| r.get(0))
            .unwrap();
        assert_eq!(who, a.agent_id);
    }
    // The new key through the real binary, and the list shows the rotation done.
    let out = send(&a.config, &["--test"]);
    assert!(out.status.success());
    stderr.push_str(&String::from_utf8_lossy(&out.stderr));
    let list = String::from_utf8_lossy(&collector_cli(&collector, &["agents"]).stdout).to_string();
    assert!(list.contains(&Key::from_base64(&second_key).unwrap().id().to_string()), "{list}");

    // No key and no code secret in any log of the whole run (the collector logs at debug).
    let (_, log) = collector.terminate();
    let secret_of_code: String = a.code.chars().filter(|c| *c != '-').skip(4).collect();
    for (what, secret) in [
        ("site key", site.key_text.clone()),
        ("first key", first_key),
        ("second key", second_key),
        ("code", secret_of_code),
    ] {
        let needle = secret.trim_end_matches('=');
        assert!(!log.contains(needle), "the {what} appears in the collector log");
        assert!(!stderr.contains(needle), "the {what} appears in an agent log");
    }
}

#[test]
fn replays_notify_nobody_now_or_after_the_token_ttl() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let config = site.collector_config(Some(&slack), None).replacen(
        "shutdown_grace_secs = 2\n",
        "shutdown_grace_secs = 2\ntoken_ttl_secs = 2\nmax_future_skew_secs = 2\n",
        1,
    );
    let collector = site.start_with(&config);
    let a = enroll(&site, &collector, "Reception desk 3");
    let peer = Peer::new(collector.addr, a.key());
    let s = sos("vm");
    let captured = peer.send(&Message::Sos(s.clone()));
    // The token's timestamp is at most this (whole seconds, the sender's clock = ours).
    let sealed_by = unix_now();
    assert!(matches!(agent_ack(&peer, WAIT), Some(Message::SosAck(ack)) if ack.alert_id == s.alert_id));

    // At once (within the token's 2 s): recognised, acknowledged again (the agent may have
    // missed the first ACK), not stored again.
    peer.send_raw(&captured);
    assert!(
        matches!(agent_ack(&peer, WAIT), Some(Message::SosAck(ack)) if ack.status == sos_shared::protocol::AckStatus::Duplicate)
    );
    slack.wait_for_text(WAIT, &s.alert_id.to_string());
    // After the token TTL (2 s): refused as a replay. The event is the clock passing the
    // token's timestamp + TTL; the refusal's only answer is a time hint about that token.
    let expired_at = std::time::UNIX_EPOCH + Duration::from_secs(sealed_by + 3);
    if let Ok(left) = expired_at.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(left);
    }
    peer.send_raw(&captured);
    match agent_ack(&peer, WAIT) {
        Some(Message::TimeHint(h)) => assert!(h.token_time <= sealed_by, "{h:?}"),
        other => panic!("a replay after the TTL was answered with {other:?} instead of being refused"),
    }
    collector.wait_log(WAIT, "rejected an authentic token");
    let (_, log) = collector.terminate();
    let summary = log.lines().find(|l| l.contains("collector stopped")).unwrap().to_owned();
    assert!(summary.contains("sos_stored=1"), "{summary}");
    let posts = slack
        .received()
        .iter()
        .filter(|r| r.text().contains(&s.alert_id.to_string()) && !sos_e2e::is_reminder(&r.text()))
        .count();
    assert_eq!(posts, 1, "a replay notified responders again");
    let jobs: i64 = site
        .db()
        .query_row("SELECT COUNT(*) FROM outbox WHERE alert_id = ?1", [s.alert_id.to_string()], |r| r.get(0))
        .unwrap();
    assert_eq!(jobs, 2, "one job per channel (log, slack)");
}

#[test]
fn garbage_forgeries_and_enrollment_junk_get_no_reply() {
    let site = Site::new();
    let collector = site.start(None, None);
    let a = enroll(&site, &collector, "Reception desk 3");
    let stranger_key = Key::from_base64(&Key::generate()).unwrap();

    // Hostile input from another host: nothing of it is answered.
    let hostile = Peer::from_ip("127.0.0.2", collector.addr, site.key());
    let mut bogus_token = header(a.key().id()).to_vec();
    bogus_token.extend_from_slice(&stranger_key.seal(&heartbeat(), unix_now()).unwrap()[12..]);
    let unknown_code =
        sos_shared::enroll::AgentHandshake::start(&sos_shared::enroll::Code::parse("ZZZZ-ZZZZ-ZZZZ").unwrap()).1;
    let mut short_enroll = unknown_code.clone();
    short_enroll.truncate(300);
    let finish_without_start = {
        let mut d = header(sos_shared::enroll::ENROLL_KEY_ID).to_vec();
        d.extend_from_slice(
            format!("{{\"kind\":\"enroll_finish\",\"enrollment\":\"ZZZZ\",\"host\":\"aA\",\"confirm\":\"bB\",\"pad\":\"{}\"}}", "0".repeat(900))
                .as_bytes(),
        );
        d
    };
    for d in [
        (0..400u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<u8>>(),
        b"SOS\x01".to_vec(),
        bogus_token,
        stranger_key.seal(&Message::Sos(sos("x")), unix_now()).unwrap(),
        unknown_code,
        short_enroll,
        finish_without_start,
    ] {
        hostile.send_raw(&d);
    }
    collector.wait_log(WAIT, "enrollment refused: no such code");
    // The hostile socket also holds the site key: its heartbeat, sent last, is the only answer.
    hostile.send(&heartbeat());
    assert!(matches!(agent_ack(&hostile, WAIT), Some(Message::HeartbeatAck(_))));
    assert!(hostile.recv_raw(Duration::from_millis(300)).is_none(), "hostile input was answered");
}

/// Junk that passes every check before the HMAC: the agent's key id and a random token.
fn forgeries(key_id: sos_shared::protocol::KeyId) -> Make {
    Box::new(move |rng, d| {
        d.extend_from_slice(&header(key_id));
        d.extend(
            (0..200).map(|_| b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[rng.usize(..64)]),
        );
    })
}

/// The ms the agent reported for its ACK ("… in N ms").
fn ack_ms(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split(" in ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap_or("?").to_owned()
}

/// A 10 s flood of forgeries from `source` at full rate; an SOS from the real agent (source
/// 127.0.0.1) 1 s in must be acknowledged while the flood still runs, and notified once.
fn an_sos_gets_through_a_flood(source: Source) {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let collector = site.start(Some(&slack), None);
    let a = enroll(&site, &collector, "Reception desk 3");
    let calm = send(&a.config, &["--test"]);
    assert!(calm.status.success());

    let flood = match Flood::start(source, collector.addr, Duration::from_secs(10), None, forgeries(a.key().id())) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && std::env::var_os("CI").is_none() => {
            eprintln!("skipped: a raw socket needs root or CAP_NET_RAW ({e})");
            return;
        }
        Err(e) => panic!("cannot start the flood: {e}"),
    };
    let started = Instant::now();
    // One second in (the event: the flood's own count and clock).
    assert!(sos_e2e::eventually(WAIT, || started.elapsed() >= Duration::from_secs(1) && flood.sent() > 0));
    let before = flood.sent();
    let out = send(&a.config, &["--message", "flood", "--timeout", "9"]);
    let still_running = flood.running();
    let during = flood.sent() - before;
    assert!(out.status.success(), "no ACK during the flood: {}", String::from_utf8_lossy(&out.stderr));
    assert!(still_running, "the SOS was acknowledged only after the flood ended");
    assert!(during > 0, "the flood did not run while the SOS was sent");
    let id = alert_id_of(&out);
    let end = flood.join();
    eprintln!(
        "flood ({source:?}): {} datagrams in 10 s; SOS acknowledged in {} ms during it, {} ms without",
        end.sent,
        ack_ms(&out),
        ack_ms(&calm)
    );
    assert!(!end.answered, "the flood was answered");
    slack.wait_for_text(WAIT, &id);
    let (_, log) = collector.terminate();
    let posts = slack.received().iter().filter(|r| r.status == 200 && r.text().contains(&id)).count();
    assert_eq!(posts, 1, "the SOS was not notified exactly once");
    // The flood reached authentication (it was not dropped for its source) and was refused there.
    let summary = log.lines().find(|l| l.contains("collector stopped")).unwrap().to_owned();
    assert!(!summary.contains(" unauthenticated=0 "), "{summary}");
}

#[test]
fn an_sos_is_acknowledged_during_a_flood_from_its_own_address() {
    an_sos_gets_through_a_flood(Source::Bound(Ipv4Addr::LOCALHOST));
}

#[test]
fn an_sos_is_acknowledged_during_a_flood_that_forges_its_address() {
    an_sos_gets_through_a_flood(Source::Forged(Ipv4Addr::LOCALHOST));
}

#[test]
fn a_valid_code_enrolls_during_an_enrollment_junk_flood() {
    let site = Site::new();
    let collector = site.start(None, None);
    let code = new_code(&collector, "Under fire");
    let real_id: String = code.chars().take(4).collect();
    // 3,000 a second from the agent's own address: well-formed starts for unknown codes, and
    // malformed enrollment datagrams.
    let junk: Make = Box::new(move |rng, d| {
        let fake = loop {
            let c = sos_shared::enroll::Code::generate();
            if c.id() != real_id {
                break c;
            }
        };
        if rng.bool() {
            d.extend_from_slice(&sos_shared::enroll::AgentHandshake::start(&fake).1);
        } else {
            d.extend_from_slice(&header(sos_shared::enroll::ENROLL_KEY_ID));
            d.extend((0..900).map(|_| rng.u8(b' '..b'~')));
        }
    });
    let flood =
        Flood::start(Source::Bound(Ipv4Addr::LOCALHOST), collector.addr, Duration::from_secs(10), Some(3000), junk)
            .unwrap();
    assert!(sos_e2e::eventually(WAIT, || flood.sent() >= 3000), "the junk did not get going");
    let file = site.dir.path().join("fire.enrollment.toml");
    let out = agent_enroll(&code, &collector, &file, "5");
    let still_running = flood.running();
    assert!(out.status.success(), "no enrollment within 5 s under junk: {}", String::from_utf8_lossy(&out.stderr));
    assert!(still_running, "enrolled only after the junk stopped");
    assert!(sos_agent::keys::Enrollment::load(&file).is_ok());
    let end = flood.join();
    assert!(!end.answered, "junk was answered");
    let (_, log) = collector.terminate();
    let summary = log.lines().find(|l| l.contains("collector stopped")).unwrap().to_owned();
    assert!(summary.contains("enrolled=1 "), "{summary}");

    // A collector that never answers: the agent blames the collector, not the code.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let out = Command::new(bin("sos-agent"))
        .args(["enroll", &code, "--collector", &silent.local_addr().unwrap().to_string(), "--timeout", "1", "--out"])
        .arg(site.dir.path().join("never.toml"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no answer from the collector") && stderr.contains("unreachable"), "{stderr}");
}

#[test]
fn a_replay_flood_from_many_forged_sources_writes_a_bounded_log() {
    let site = Site::new();
    let collector = site.start(None, None);
    let a = enroll(&site, &collector, "Reception desk 3");
    let stranger = Key::from_base64(&Key::generate()).unwrap();
    // One authentic heartbeat captured 20 minutes ago, and forgeries under the agent's key id.
    let old = a.key().seal(&heartbeat(), unix_now() - 1200).unwrap();
    let mut forged = header(a.key().id()).to_vec();
    forged.extend_from_slice(&stranger.seal(&heartbeat(), unix_now()).unwrap()[12..]);

    // 5,000 loopback addresses (Linux routes 127/8 to lo), each replaying and forging.
    let sockets: Vec<std::net::UdpSocket> = (0..5000u32)
        .map(|i| std::net::UdpSocket::bind((Ipv4Addr::new(127, 21, (i / 250) as u8, (i % 250 + 1) as u8), 0)).unwrap())
        .collect();
    let lines_before = collector.log().lines().count();
    let started = Instant::now();
    let mut sent = 0u64;
    for round in 0..10 {
        for s in &sockets {
            let d = if round % 2 == 0 { &old } else { &forged };
            if s.send_to(d, collector.addr).is_ok() {
                sent += 1;
            }
        }
    }
    // The collector has worked through the flood once a heartbeat sent after it is answered
    // (resent: the kernel drops what does not fit the socket buffer, as it may drop the flood).
    let probe = Peer::new(collector.addr, a.key());
    let deadline = Instant::now() + WAIT;
    loop {
        probe.send(&heartbeat());
        if matches!(agent_ack(&probe, Duration::from_millis(500)), Some(Message::HeartbeatAck(_))) {
            break;
        }
        assert!(Instant::now() < deadline, "the collector did not answer a heartbeat after the flood");
    }
    let elapsed = started.elapsed();
    // Every "wrong key?" line is one per source with a count; replies: only time hints, for one token.
    let log = collector.log();
    let during: Vec<&str> = log.lines().skip(lines_before).collect();
    let intervals = 1 + elapsed.as_secs() / 10;
    eprintln!("replay flood: {sent} datagrams from 5,000 sources in {elapsed:?}: {} log lines", during.len());
    assert!(
        during.len() as u64 <= 40 * intervals,
        "{} log lines for {sent} refused datagrams:\n{}",
        during.len(),
        during.iter().take(50).copied().collect::<Vec<_>>().join("\n")
    );
    assert!(during.iter().any(|l| l.contains("WARN") && l.contains("wrong key?") && l.contains("failed=")), "{log}");
    assert!(during.iter().any(|l| l.contains("rejected an authentic token")), "{log}");
    let mut buf = [0u8; 2048];
    let mut answers = 0;
    for s in &sockets {
        s.set_nonblocking(true).unwrap();
        while s.recv_from(&mut buf).is_ok() {
            answers += 1;
        }
    }
    let (_, log) = collector.terminate();
    let summary = log.lines().find(|l| l.contains("collector stopped")).unwrap().to_owned();
    assert!(answers <= intervals, "{answers} time hints for one replayed token: {summary}");
    assert!(!summary.contains(" expired=0 ") && !summary.contains(" unauthenticated=0 "), "{summary}");
}

#[test]
fn a_storm_of_alerts_with_messages_and_identity_warnings_reaches_slack_once_each() {
    let site = Site::new();
    // Slack rate-limits while the storm arrives, then holds every post to its documented limits
    // (50 blocks, section text, header, text) and to about one message a second.
    let slack = SlackStandIn::start(vec![sos_e2e::Answer::RateLimited(2), sos_e2e::Answer::RateLimited(1)]);
    let collector = site.start(Some(&slack), None);
    let a = enroll(&site, &collector, "Front desk");
    let peer = Peer::new(collector.addr, a.key());
    let mut ids = Vec::new();
    for i in 0..40 {
        // Each claims another host than the key's: an identity warning, and a message.
        let mut s = sos(&format!("not-the-front-desk-{i}"));
        s.message = format!("storm {i}: aggressive visitor in the lobby, {}", "please hurry ".repeat(8));
        peer.send(&Message::Sos(s.clone()));
        assert!(
            matches!(agent_ack(&peer, WAIT), Some(Message::SosAck(ack)) if ack.alert_id == s.alert_id),
            "alert {i}"
        );
        ids.push(s.alert_id.to_string());
    }
    let ok = |r: &[sos_e2e::slack::Received], id: &str| {
        r.iter().filter(|x| x.status == 200 && x.text().contains(id)).count()
    };
    let all = slack.wait_for(Duration::from_secs(60), "every alert on Slack", |r| ids.iter().all(|id| ok(r, id) >= 1));
    assert!(
        all.iter().any(|r| r.status == 200 && r.body["blocks"].as_array().map_or(0, Vec::len) > 20),
        "the storm was not coalesced"
    );
    for id in &ids {
        assert_eq!(ok(&all, id), 1, "alert {id} on Slack more than once");
        assert!(sos_e2e::eventually(WAIT, || site.delivery(id, "slack").is_some_and(|d| d.0 == "delivered")), "{id}");
    }
    let text: String = all.iter().filter(|r| r.status == 200).map(|r| r.text()).collect();
    assert!(text.contains("IDENTITY MISMATCH") && text.contains("aggressive visitor"), "{text}");
    assert!(all.iter().all(|r| r.status != 400), "a message broke Slack's limits: {all:#?}");
}
