//! End-to-end: the real binaries, a Slack stand-in, a real SMTP server.

use std::time::Duration;

use sos_e2e::process::alert_id_of;
use sos_e2e::site::Site;
use sos_e2e::{agent_send, eventually, free_udp_port, is_reminder, Answer, Peer, SlackStandIn, SmtpServer};
use sos_shared::protocol::{AckStatus, Sos};
use sos_shared::{unix_now, AlertId, Message};

const WAIT: Duration = Duration::from_secs(20);

fn sos(id: AlertId, user: &str) -> Message {
    Message::Sos(Sos {
        alert_id: id,
        test: false,
        triggered_at: unix_now(),
        attempt: 0,
        user: user.into(),
        host: "raw-peer".into(),
        ip: "127.0.0.1".into(),
        location: "Lab".into(),
        message: String::new(),
        agent: "e2e".into(),
    })
}

/// Whether `mail` is a page about `id` (not its reminder).
fn page_of(mail: &str, id: &str) -> bool {
    let mail = sos_e2e::smtp::unfold(mail);
    mail.contains(id) && !is_reminder(&mail)
}

fn me() -> (String, String) {
    (whoami::fallible::username().unwrap_or_default(), whoami::fallible::hostname().unwrap_or_default())
}

#[test]
fn an_sos_reaches_slack_and_email_with_who_where_and_alert_id() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let smtp = SmtpServer::start(vec![]);
    let collector = site.start(Some(&slack), Some(&smtp));

    let out = agent_send(&site.agent_config(), &["--message", "visitor is aggressive"]);
    assert!(out.status.success(), "sos-agent send failed: {}", String::from_utf8_lossy(&out.stderr));
    let id = alert_id_of(&out);
    let (user, host) = me();

    let post = slack.wait_for_text(WAIT, &id);
    let text = post.text();
    for needle in [&user, &host, "127.0.0.1", "Building A, floor 2, reception", "visitor is aggressive"] {
        assert!(text.contains(needle), "Slack post lacks {needle:?}: {text}");
    }
    assert!(post.body["text"].as_str().unwrap().starts_with("🚨 SOS"), "{text}");

    let mail = smtp.wait_for_text(WAIT, &id);
    for needle in [&user, &host, "127.0.0.1", "Building A, floor 2, reception", "visitor is aggressive"] {
        assert!(mail.contains(needle), "email lacks {needle:?}: {mail}");
    }
    let subject = mail.lines().find(|l| l.starts_with("Subject:")).unwrap_or_default();
    assert!(subject.contains("SOS") && subject.contains("reception"), "{subject}");

    assert!(eventually(WAIT, || site.delivery(&id, "email").is_some_and(|d| d.0 == "delivered")
        && site.delivery(&id, "slack").is_some_and(|d| d.0 == "delivered")));
    let listing = String::from_utf8_lossy(&collector.alerts_cli().stdout).into_owned();
    assert!(
        listing.contains(&id) && listing.contains("slack  delivered") && listing.contains("email  delivered"),
        "{listing}"
    );
    let (status, log) = collector.terminate();
    assert!(status.success(), "collector exit: {status:?}\n{log}");
}

#[test]
fn a_test_alert_is_marked_test_everywhere() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let smtp = SmtpServer::start(vec![]);
    let _collector = site.start(Some(&slack), Some(&smtp));
    let out = agent_send(&site.agent_config(), &["--test"]);
    assert!(out.status.success());
    let id = alert_id_of(&out);
    assert!(slack.wait_for_text(WAIT, &id).text().contains("TEST"));
    let mail = smtp.wait_for_text(WAIT, &id);
    assert!(mail.contains("Subject: TEST SOS"), "{mail}");
}

#[test]
fn retries_and_duplicated_datagrams_notify_once_per_channel() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let smtp = SmtpServer::start(vec![]);
    let _collector = site.start(Some(&slack), Some(&smtp));
    let peer = Peer::new(site.addr, site.key());
    let id = AlertId::random();

    // The first transmission, retransmissions (sealed anew, same alert id) and an exact
    // duplicate of a datagram.
    let first = peer.send(&sos(id, "dup-tester"));
    let ack = peer.open(&peer.recv_raw(WAIT).expect("ack")).unwrap();
    assert!(matches!(ack, Message::SosAck(ref a) if a.alert_id == id && a.status == AckStatus::Stored), "{ack:?}");
    for _ in 0..4 {
        peer.send(&sos(id, "dup-tester"));
        let ack = peer.open(&peer.recv_raw(WAIT).expect("ack")).unwrap();
        assert!(matches!(ack, Message::SosAck(ref a) if a.status == AckStatus::Duplicate), "{ack:?}");
    }
    peer.send_raw(&first);
    assert!(peer.recv_raw(WAIT).is_some());

    // A later, distinct alert is a barrier: notifications go out in order, so once it has
    // arrived, any second notification of the first alert would have arrived before it.
    let barrier = AlertId::random();
    peer.send(&sos(barrier, "barrier"));
    slack.wait_for_text(WAIT, &barrier.to_string());
    smtp.wait_for_text(WAIT, &barrier.to_string());
    let id = id.to_string();
    let slack_count = slack.received().iter().filter(|r| r.text().contains(&id) && !is_reminder(&r.text())).count();
    let mail_count = smtp.accepted().iter().filter(|m| page_of(m, &id)).count();
    assert_eq!((slack_count, mail_count), (1, 1));
}

#[test]
fn slack_429_with_retry_after_is_honoured_and_delivered_once() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![Answer::RateLimited(2)]);
    let _collector = site.start(Some(&slack), None);
    let out = agent_send(&site.agent_config(), &[]);
    assert!(out.status.success());
    let id = alert_id_of(&out);
    let all = slack.wait_for(WAIT, "a delivered post", |r| r.iter().any(|x| x.status == 200));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(all[0].status, 429);
    assert!(all[0].text().contains(&id) && all[1].text().contains(&id));
    let gap = all[1].at - all[0].at;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}, before Retry-After");
    assert!(eventually(WAIT, || site.delivery(&id, "slack").is_some_and(|d| d.0 == "delivered")));
}

#[test]
fn slack_5xx_is_retried_until_delivered() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![Answer::Status(500, "internal_error"), Answer::Status(503, "")]);
    let _collector = site.start(Some(&slack), None);
    let out = agent_send(&site.agent_config(), &[]);
    let id = alert_id_of(&out);
    let all = slack.wait_for(WAIT, "a delivered post", |r| r.iter().any(|x| x.status == 200));
    assert_eq!(all.iter().map(|r| r.status).collect::<Vec<_>>(), vec![500, 503, 200]);
    assert!(all.iter().all(|r| r.text().contains(&id)));
}

#[test]
fn smtp_451_then_success_sends_one_email() {
    let site = Site::new();
    let smtp = SmtpServer::start(vec![451]);
    let _collector = site.start(None, Some(&smtp));
    let out = agent_send(&site.agent_config(), &[]);
    let id = alert_id_of(&out);
    smtp.wait_for_text(WAIT, &id);
    assert_eq!(smtp.attempts(), vec![451, 250]);
    assert_eq!(smtp.accepted().len(), 1);
    assert!(eventually(WAIT, || site.delivery(&id, "email").is_some_and(|d| d.0 == "delivered")));
}

#[test]
fn slack_404_is_recorded_as_failed_while_email_is_still_sent() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![Answer::Status(404, "no_service")]);
    let smtp = SmtpServer::start(vec![]);
    let collector = site.start(Some(&slack), Some(&smtp));
    let out = agent_send(&site.agent_config(), &[]);
    let id = alert_id_of(&out);
    smtp.wait_for_text(WAIT, &id);
    assert!(eventually(WAIT, || site.delivery(&id, "slack").is_some_and(|d| d.0 == "failed")));
    let (_, err) = site.delivery(&id, "slack").unwrap();
    assert!(err.unwrap_or_default().contains("no_service"));
    assert_eq!(slack.received().len(), 1, "a permanent failure must not be retried");
    let listing = String::from_utf8_lossy(&collector.alerts_cli().stdout).into_owned();
    assert!(listing.contains("slack  failed") && listing.contains("no_service"), "{listing}");
    collector.wait_log(WAIT, "NOT DELIVERED");
}

#[test]
fn smtp_550_is_recorded_as_failed_while_slack_delivers() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let smtp = SmtpServer::start(vec![550]);
    let collector = site.start(Some(&slack), Some(&smtp));
    let id = alert_id_of(&agent_send(&site.agent_config(), &[]));
    slack.wait_for_text(WAIT, &id);
    assert!(
        eventually(WAIT, || site.delivery(&id, "email").is_some_and(|d| d.0 == "failed")),
        "email not recorded as failed: {:?}\n{}",
        site.delivery(&id, "email"),
        collector.log()
    );
    assert_eq!(smtp.attempts(), vec![550]);
}

#[test]
fn collector_killed_after_ack_before_slack_answered_delivers_after_restart() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![Answer::Hang]);
    let collector = site.start(Some(&slack), None);
    let out = agent_send(&site.agent_config(), &[]);
    assert!(out.status.success());
    let id = alert_id_of(&out);
    // The collector is now waiting for Slack's answer to this alert.
    slack.wait_for(WAIT, "the first post", |r| r.iter().any(|x| x.text().contains(&id)));
    collector.kill();
    let restarted = site.start(Some(&slack), None);
    let delivered = slack.wait_for_text(WAIT, &id);
    assert_eq!(delivered.status, 200);
    assert!(eventually(WAIT, || site.delivery(&id, "slack").is_some_and(|d| d.0 == "delivered")));
    restarted.wait_log(WAIT, "resuming notifications pending");
}

#[test]
fn storm_is_coalesced_without_losing_an_alert() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let _collector = site.start(Some(&slack), None);
    let peer = Peer::new(site.addr, site.key());
    let ids: Vec<AlertId> = (0..30).map(|_| AlertId::random()).collect();
    for id in &ids {
        peer.send(&sos(*id, "storm"));
    }
    let all = slack.wait_for(WAIT, "every alert of the storm", |r| {
        ids.iter().all(|id| r.iter().any(|x| x.status == 200 && x.text().contains(&id.to_string())))
    });
    assert!(all.len() < ids.len(), "{} posts for {} alerts: no coalescing", all.len(), ids.len());
    for id in &ids {
        let n = all
            .iter()
            .filter(|x| x.status == 200 && x.text().contains(&id.to_string()) && !is_reminder(&x.text()))
            .count();
        assert_eq!(n, 1, "alert {id} posted {n} times");
    }
}

#[test]
fn agent_send_fails_plainly_when_no_collector_answers() {
    let site = Site::new(); // nothing listens on site.addr
    let out = agent_send(&site.agent_config(), &["--timeout", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SOS NOT DELIVERED") && err.contains("another way"), "{err}");
    // Not lost: it waits in the spool for the tray agent to resend it.
    assert_eq!(site.spooled(), vec![alert_id_of(&out)]);
}

#[test]
fn an_acknowledged_alert_leaves_the_spool() {
    let site = Site::new();
    let _collector = site.start(None, None);
    let out = agent_send(&site.agent_config(), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(site.spool_dir().is_dir(), "the spool was not used");
    assert_eq!(site.spooled(), Vec::<String>::new());
}

#[test]
fn agent_fails_over_to_the_second_collector() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let _collector = site.start(Some(&slack), None);
    let dead = free_udp_port();
    let cfg = site.dir.path().join("two.toml");
    std::fs::write(
        &cfg,
        format!(
            "collectors = [\"127.0.0.1:{dead}\", \"{}\"]\nkey = \"{}\"\nspool_dir = \"{}\"\n",
            site.addr,
            site.key_text,
            site.spool_dir().display()
        ),
    )
    .unwrap();
    let out = agent_send(&cfg, &["--timeout", "10"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&site.addr.to_string()));
    slack.wait_for_text(WAIT, &alert_id_of(&out));
}

#[test]
fn hostile_fields_cannot_forge_log_lines_or_email_headers() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let smtp = SmtpServer::start(vec![]);
    let collector = site.start(Some(&slack), Some(&smtp));
    let peer = Peer::new(site.addr, site.key());
    let id = AlertId::random();
    let Message::Sos(mut s) = sos(id, "eve\r\nBcc: attacker@evil.example") else { unreachable!() };
    s.location = "Lab\n2001-01-01T00:00:00Z  INFO forged: all clear".into();
    s.message = "first line\nsecond line".into();
    peer.send(&Message::Sos(s));
    assert!(peer.recv_raw(WAIT).is_some(), "no ack");

    let mail = smtp.wait_for_text(WAIT, &id.to_string());
    let headers = mail.split("\r\n\r\n").next().unwrap_or_default();
    assert!(!headers.lines().any(|l| l.starts_with("Bcc:")), "header injected:\n{headers}");
    assert!(mail.contains("second line"), "{mail}");
    let log = collector.wait_log(WAIT, &format!("notified channel=\"log\" alert_id={id}"));
    assert!(!log.lines().any(|l| l.starts_with("2001-01-01")), "log line forged:\n{log}");
    let post = slack.wait_for_text(WAIT, &id.to_string());
    assert!(!post.body["text"].as_str().unwrap_or_default().contains('\n'), "{}", post.text());
}

#[test]
fn a_cancelled_alert_is_announced_once_on_every_channel_after_the_alert() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let smtp = SmtpServer::start(vec![]);
    let collector = site.start(Some(&slack), Some(&smtp));
    let peer = Peer::new(site.addr, site.key());
    let id = AlertId::random();
    peer.send(&sos(id, "carol"));
    assert!(matches!(peer.open(&peer.recv_raw(WAIT).expect("sos ack")), Some(Message::SosAck(_))));

    let cancel = Message::Cancel(sos_shared::protocol::Cancel::padded(id, "pressed by accident".into()));
    for _ in 0..2 {
        peer.send(&cancel);
        match peer.open(&peer.recv_raw(WAIT).expect("cancel ack")) {
            Some(Message::CancelAck(a)) => assert_eq!(a.alert_id, id),
            other => panic!("expected cancel_ack, got {other:?}"),
        }
    }
    // Unknown alert: no answer at all.
    peer.send(&Message::Cancel(sos_shared::protocol::Cancel::padded(AlertId::random(), String::new())));

    let id_text = id.to_string();
    let posts = slack.wait_for(WAIT, "the alert and its cancellation", |r| {
        r.iter().filter(|x| x.text().contains(&id_text) && !is_reminder(&x.text())).count() >= 2
    });
    let mine: Vec<_> = posts.iter().filter(|x| x.text().contains(&id_text) && !is_reminder(&x.text())).collect();
    assert!(!mine[0].text().contains("CANCELLED"), "the alert must come first");
    let cancel_post = mine[1].body["text"].as_str().unwrap_or_default().to_owned();
    assert!(
        cancel_post.contains("CANCELLED")
            && mine[1].text().contains("pressed by accident")
            && mine[1].text().contains("in person"),
        "{cancel_post}"
    );
    let mail = smtp.wait_for_text(WAIT, "CANCELLED");
    assert!(mail.contains(&id_text) && mail.contains("Subject: CANCELLED by sender"), "{mail}");

    // A barrier: a later alert arrives after any second cancellation notice would have.
    let barrier = AlertId::random();
    peer.send(&sos(barrier, "barrier"));
    slack.wait_for_text(WAIT, &barrier.to_string());
    smtp.wait_for_text(WAIT, &barrier.to_string());
    let posts = slack
        .received()
        .iter()
        .filter(|x| x.status == 200 && x.text().contains(&id_text) && !is_reminder(&x.text()))
        .count();
    assert_eq!(posts, 2);
    assert_eq!(smtp.accepted().iter().filter(|m| page_of(m, &id_text)).count(), 2);
    assert!(
        peer.recv_raw(Duration::from_millis(200)).is_some_and(|d| matches!(peer.open(&d), Some(Message::SosAck(_)))),
        "only the barrier's ack remains"
    );

    let listing = String::from_utf8_lossy(&collector.alerts_cli().stdout).into_owned();
    assert!(listing.contains("CANCELLED by the sender") && listing.contains("slack (cancel)"), "{listing}");
    let (_, log) = collector.terminate();
    let summary = log.lines().find(|l| l.contains("collector stopped")).unwrap_or_default().to_owned();
    assert!(summary.contains("cancelled=1") && summary.contains("cancel_unknown=1"), "{summary}");
}

#[test]
fn heartbeats_are_answered_and_the_agent_is_listed_as_seen() {
    let site = Site::new();
    let collector = site.start(None, None);
    let peer = Peer::new(site.addr, site.key());
    let hb = Message::Heartbeat(sos_shared::protocol::Heartbeat {
        user: "dave".into(),
        host: "desk-7".into(),
        ip: "10.1.2.3".into(),
        pad: "0".repeat(128),
        responder: false,
    });
    peer.send(&hb);
    assert!(matches!(peer.open(&peer.recv_raw(WAIT).expect("heartbeat ack")), Some(Message::HeartbeatAck(_))));
    assert!(eventually(WAIT, || {
        let out = std::process::Command::new(sos_e2e::bin::bin("sos-collector"))
            .args(["agents", "--config"])
            .arg(&collector.config)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("dave@desk-7 (10.1.2.3")
    }));
}

/// `faketime` shifts one process's clock (libfaketime); the test needs it.
fn faketime_available() -> bool {
    let found = std::process::Command::new("faketime").arg("--version").output().is_ok();
    assert!(found || std::env::var_os("CI").is_none(), "CI is set but faketime is not installed (.ci/run installs it)");
    if !found {
        eprintln!("skipping: faketime not installed (set CI=true to make this a failure)");
    }
    found
}

#[test]
fn an_agent_whose_clock_is_ten_minutes_off_still_gets_its_sos_through_once() {
    if !faketime_available() {
        return;
    }
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let collector = site.start(Some(&slack), None);
    let config = site.agent_config();
    for shift in ["+10m", "-10m"] {
        let out = std::process::Command::new("faketime")
            .args(["-f", shift])
            .arg(sos_e2e::bin::bin("sos-agent"))
            .args(["send", "--config"])
            .arg(&config)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "clock {shift}: {err}");
        assert!(err.contains("clock is wrong"), "clock {shift}: the agent did not say its clock is wrong: {err}");
        let id = alert_id_of(&out);
        slack.wait_for_text(WAIT, &id);
    }
    let (_, log) = collector.terminate();
    let summary = log.lines().find(|l| l.contains("collector stopped")).unwrap_or_default().to_owned();
    for expected in ["expired=1", "from_future=1", "time_hints=2", "sos_stored=2"] {
        assert!(summary.contains(expected), "{expected} not in {summary}");
    }
    assert_eq!(slack.received().len(), 2);
}

/// The site's collector config with `[outbox]` settings replaced.
fn outbox_config(site: &Site, slack: &SlackStandIn, outbox: &str) -> String {
    let c = site.collector_config(Some(slack), None);
    let start = c.find("[outbox]\n").unwrap();
    let end = c[start..].find("[notify").map_or(c.len(), |i| start + i);
    format!("{}[outbox]\n{outbox}\n{}", &c[..start], &c[end..])
}

/// libfaketime's multi-threaded preload library, if installed.
fn libfaketime() -> Option<std::path::PathBuf> {
    if !faketime_available() {
        return None;
    }
    let found = [
        "/usr/lib/x86_64-linux-gnu/faketime",
        "/usr/lib/aarch64-linux-gnu/faketime",
        "/usr/lib/faketime",
        "/usr/local/lib/faketime",
    ]
    .iter()
    .map(|d| std::path::Path::new(d).join("libfaketimeMT.so.1"))
    .find(|p| p.exists());
    assert!(found.is_some() || std::env::var_os("CI").is_none(), "CI is set but libfaketimeMT.so.1 is not found");
    found
}

/// A collector whose wall clock is offset by what `clock` says (`+0`, `-1h`, `+2h`), read
/// again on every call; its monotonic clock is the machine's.
fn collector_with_clock(
    site: &Site,
    config: &str,
    lib: &std::path::Path,
    clock: &std::path::Path,
) -> sos_e2e::CollectorProcess {
    std::fs::write(clock, "+0\n").unwrap();
    let path = site.dir.path().join("collector.toml");
    std::fs::write(&path, config).unwrap();
    let mut command = std::process::Command::new(sos_e2e::bin::bin("sos-collector"));
    command
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info,sos_collector=debug")
        .env("LD_PRELOAD", lib)
        .env("FAKETIME_TIMESTAMP_FILE", clock)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env_remove("FAKETIME");
    sos_e2e::CollectorProcess::spawn(command, site.addr, path)
}

#[test]
fn a_clock_stepped_back_an_hour_does_not_hold_back_a_pending_slack_retry() {
    let Some(lib) = libfaketime() else { return };
    let site = Site::new();
    let slack = SlackStandIn::start(vec![Answer::Status(500, "internal_error")]);
    let clock = site.dir.path().join("clock");
    let config = outbox_config(&site, &slack, "first_retry_secs = 5\nmax_retry_secs = 5\nattempt_timeout_secs = 5");
    let collector = collector_with_clock(&site, &config, &lib, &clock);
    let id = alert_id_of(&agent_send(&site.agent_config(), &[]));
    collector.wait_log(WAIT, "delivery failed; will retry");
    // The retry is due in about 5 s; the wall clock goes back an hour before it.
    std::fs::write(&clock, "-1h\n").unwrap();
    let stepped = std::time::Instant::now();
    let post = slack.wait_for_text(WAIT, &id);
    assert!(post.at - stepped < Duration::from_secs(10), "posted {:?} after the step", post.at - stepped);
    assert!(eventually(WAIT, || site.delivery(&id, "slack").is_some_and(|d| d.0 == "delivered")));
}

#[test]
fn a_clock_stepped_forward_two_hours_does_not_give_up_early() {
    let Some(lib) = libfaketime() else { return };
    let site = Site::new();
    let fail = Answer::Status(500, "internal_error");
    let slack = SlackStandIn::start(vec![fail.clone(), fail.clone(), fail]);
    let clock = site.dir.path().join("clock");
    // Give up after an hour (the default); retries every 3 s.
    let config = outbox_config(&site, &slack, "first_retry_secs = 3\nmax_retry_secs = 3\nattempt_timeout_secs = 5");
    let collector = collector_with_clock(&site, &config, &lib, &clock);
    let id = alert_id_of(&agent_send(&site.agent_config(), &[]));
    collector.wait_log(WAIT, "delivery failed; will retry");
    std::fs::write(&clock, "+2h\n").unwrap();
    slack.wait_for_text(Duration::from_secs(30), &id);
    assert!(eventually(WAIT, || site.delivery(&id, "slack").is_some_and(|d| d.0 == "delivered")));
    let (_, log) = collector.terminate();
    assert!(!log.contains("gave up"), "{log}");
}

#[test]
fn a_slack_that_answers_too_late_gets_the_alert_at_most_the_documented_number_of_times() {
    let site = Site::new();
    // Every post is accepted, and answered 2 s later: after the 1 s attempt timeout.
    let slack = SlackStandIn::start(vec![Answer::Slow(Duration::from_secs(2)); 20]);
    let config = outbox_config(&site, &slack, "first_retry_secs = 1\nmax_retry_secs = 2\nattempt_timeout_secs = 1");
    let collector = site.start_with(&config);
    let id = alert_id_of(&agent_send(&site.agent_config(), &[]));
    assert!(
        eventually(Duration::from_secs(45), || site.delivery(&id, "slack").is_some_and(|d| d.0 == "failed")),
        "still {:?} after 45 s: {} posts",
        site.delivery(&id, "slack"),
        slack.received().len()
    );
    let (_, error) = site.delivery(&id, "slack").unwrap();
    assert!(error.unwrap_or_default().contains("outcome unknown"));
    // docs/RELIABILITY.md: a slow channel shows an alert at most 3 times (2 duplicates).
    let posts = slack.received().iter().filter(|r| r.text().contains(&id) && !is_reminder(&r.text())).count();
    assert_eq!(posts, 3, "{:#?}", slack.received());
    let log = collector.wait_log(WAIT, "NOT DELIVERED");
    assert!(log.contains("retrying at a slower pace"), "{log}");
}

#[test]
fn a_storm_message_that_slack_refuses_is_split_and_no_alert_fails() {
    let site = Site::new();
    // Slack answers 429 while the storm arrives, and refuses messages of more than 10 blocks.
    let slack = SlackStandIn::start(vec![Answer::RateLimited(2)]);
    slack.set_max_blocks(10);
    let _collector = site.start(Some(&slack), None);
    let peer = Peer::new(site.addr, site.key());
    let ids: Vec<AlertId> = (0..30).map(|_| AlertId::random()).collect();
    for (i, id) in ids.iter().enumerate() {
        peer.send(&sos(*id, &format!("storm-{i}")));
        assert!(peer.recv_raw(WAIT).is_some(), "no ack for alert {i}");
    }
    let ok = |r: &[sos_e2e::slack::Received], id: &AlertId| {
        r.iter().filter(|x| x.status == 200 && x.text().contains(&id.to_string())).count()
    };
    let all = slack.wait_for(Duration::from_secs(60), "every alert posted", |r| ids.iter().all(|id| ok(r, id) >= 1));
    assert!(all.iter().any(|r| r.status == 400), "no message was refused: the test did not test splitting");
    for id in &ids {
        assert_eq!(ok(&all, id), 1, "alert {id} posted more than once");
        assert!(eventually(WAIT, || site.delivery(&id.to_string(), "slack").is_some_and(|d| d.0 == "delivered")));
    }
}
