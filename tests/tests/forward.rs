//! End-to-end: a site collector forwards to a central one (issue 19 §2). Two real collectors on
//! loopback, the site enrolled at the centre with a one-time code through the real CLIs, the
//! Slack stand-in at the centre, a hand-made sender at the site: an SOS at the site reaches the
//! centre's Slack once, naming the site; one raised while the centre is down for a minute
//! reaches it after its restart, once; an acknowledgement made at the centre reaches the
//! sender. Only an enrolled site may forward, only about its own alerts.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sos_e2e::process::enroll_agent;
use sos_e2e::site::Site;
use sos_e2e::{eventually, CollectorProcess, Peer, SlackStandIn};
use sos_shared::enroll::EnrolledKey;
use sos_shared::protocol::{
    ForwardEvent, ForwardSos, ForwardUpdate, Heartbeat, NoticeEvent, NoticeReceipt, Sos, MAX_DATAGRAM,
};
use sos_shared::{unix_now, AlertId, Key, Message};

const WAIT: Duration = Duration::from_secs(30);

fn collector(config: &Path, args: &[&str]) -> Output {
    Command::new(sos_e2e::bin::bin("sos-collector"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run sos-collector")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn centre_config(centre: &Site, slack: &SlackStandIn) -> String {
    format!("{}[[responders]]\nname = \"Dana Cruz\"\n", centre.collector_config(Some(slack), None))
}

/// A one-time code for a site named `name`, made at the centre (`enroll --site`).
fn site_code(centre: &CollectorProcess, name: &str) -> String {
    let out = collector(&centre.config, &["enroll", "--site", "--name", name]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `sos-collector forward enroll` with the site's config at `config`: the site's enrollment.
fn forward_enroll(config: &Path, code: &str, extra: &[&str]) -> Output {
    let mut args = vec!["forward", "enroll", "--code", code, "--timeout", "20"];
    args.extend_from_slice(extra);
    collector(config, &args)
}

fn read_enrollment(path: &Path) -> (EnrolledKey, Key) {
    let e: EnrolledKey = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let k = Key::from_base64(&e.key).unwrap();
    (e, k)
}

fn sos(message: &str) -> Sos {
    Sos {
        alert_id: AlertId::random(),
        test: false,
        triggered_at: unix_now(),
        attempt: 0,
        user: "alice".into(),
        host: "reception".into(),
        ip: "10.0.0.12".into(),
        location: "Branch A, front desk".into(),
        message: message.into(),
        agent: "hand-made".into(),
    }
}

/// The next message within `timeout` that `want` accepts (others are skipped).
fn next<T>(peer: &Peer, timeout: Duration, mut want: impl FnMut(Message) -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let d = peer.recv_raw(left)?;
        if let Some(t) = peer.open(&d).and_then(&mut want) {
            return Some(t);
        }
    }
}

/// Send `message` until `want` accepts an answer (each try waits `each`), or `tries` are used.
fn ask<T>(
    peer: &Peer,
    message: &Message,
    tries: u32,
    each: Duration,
    mut want: impl FnMut(Message) -> Option<T>,
) -> Option<T> {
    for _ in 0..tries {
        peer.send(message);
        if let Some(t) = next(peer, each, &mut want) {
            return Some(t);
        }
    }
    None
}

/// Raise an SOS at the site from `sender`; returns its id once the site acknowledged it.
fn raise(sender: &Peer, message: &str) -> AlertId {
    let s = sos(message);
    let id = s.alert_id;
    let acked = ask(sender, &Message::Sos(s), 10, Duration::from_secs(2), |m| {
        matches!(m, Message::SosAck(a) if a.alert_id == id).then_some(())
    });
    assert!(acked.is_some(), "the site did not acknowledge the SOS");
    id
}

/// Posts at the centre's Slack that carry `id` and are the alert itself (not an update).
fn alert_posts(slack: &SlackStandIn, id: AlertId) -> Vec<String> {
    slack
        .received()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.text())
        .filter(|t| {
            t.contains(&id.to_string())
                && !t.contains("Acknowledged by")
                && !t.contains("CANCELLED")
                && !sos_e2e::is_reminder(t)
        })
        .collect()
}

fn outbox_state(site: &Site, id: AlertId, channel: &str, kind: &str) -> Option<String> {
    site.db()
        .query_row(
            "SELECT state FROM outbox WHERE alert_id = ?1 AND channel = ?2 AND kind = ?3",
            [id.to_string(), channel.to_owned(), kind.to_owned()],
            |r| r.get(0),
        )
        .ok()
}

#[test]
fn a_site_forwards_to_its_centre_across_an_outage_and_the_centres_ack_reaches_the_sender() {
    // The centre, with Slack and a responder.
    let centre = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let centre_text = centre_config(&centre, &slack);
    let centre_proc = centre.start_with(&centre_text);

    // The site, enrolled at the centre before it starts.
    let site = Site::new();
    let site_text =
        format!("{}[forward]\ncentre = \"{}\"\nheartbeat_secs = 5\n", site.collector_config(None, None), centre.addr);
    let site_config = site.dir.path().join("collector.toml");
    std::fs::write(&site_config, &site_text).unwrap();
    let code = site_code(&centre_proc, "Branch A");
    let out = forward_enroll(&site_config, &code, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let key_file = site.data_dir().join("forward.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the site's key file is private");
    }
    let again = forward_enroll(&site_config, &code, &[]);
    assert!(!again.status.success() && text(&again).contains("enrolled already"), "{}", text(&again));
    let _site_proc = site.start_with(&site_text);
    let sender = Peer::new(site.addr, site.key());

    // 1. An SOS at the site reaches the centre's Slack once, naming the site.
    let first = raise(&sender, "visitor shouting");
    let post = slack.wait_for_text(WAIT, &first.to_string()).text();
    assert!(post.contains("from site Branch A"), "{post}");
    assert!(post.contains("alice") && post.contains("Branch A, front desk"), "{post}");

    // 2. The centre is down for a minute; an SOS raised meanwhile is acknowledged by the site
    //    and reaches the centre after its restart, once.
    let (_, _) = centre_proc.terminate();
    let second = raise(&sender, "during the outage");
    assert!(
        eventually(WAIT, || {
            site
            .db()
            .query_row(
                "SELECT last_error IS NOT NULL FROM outbox WHERE alert_id = ?1 AND channel = 'forward' AND state = 'pending'",
                [second.to_string()],
                |r| r.get::<_, bool>(0)
            )
            .unwrap_or(false)
        }),
        "the site retries the forward while the centre is down"
    );
    std::thread::sleep(Duration::from_secs(60)); // the outage itself
    assert_eq!(outbox_state(&site, second, "forward", "alert").as_deref(), Some("pending"), "never given up");
    let centre_proc = CollectorProcess::start(centre.dir.path(), centre.addr, &centre_text);
    let post = slack.wait_for_text(Duration::from_secs(60), &second.to_string()).text();
    assert!(post.contains("from site Branch A") && post.contains("during the outage"), "{post}");
    assert!(eventually(WAIT, || outbox_state(&site, second, "forward", "alert").as_deref() == Some("delivered")));

    // The centre shows the site.
    let list = collector(&centre_proc.config, &["alerts"]);
    assert!(text(&list).contains("from site: Branch A"), "{}", text(&list));
    let show = collector(&centre_proc.config, &["alerts", "show", &second.to_string()]);
    assert!(text(&show).contains("from site:  Branch A"), "{}", text(&show));

    // 3. An acknowledgement at the centre reaches the sender at the site.
    sender.send(&Message::Heartbeat(Heartbeat {
        user: "alice".into(),
        host: "reception".into(),
        ip: String::new(),
        pad: "0".repeat(160),
        responder: false,
    }));
    let ack = collector(&centre_proc.config, &["alerts", "ack", &second.to_string(), "--responder", "Dana Cruz"]);
    assert!(ack.status.success(), "{}", text(&ack));
    let notice = next(&sender, Duration::from_secs(60), |m| match m {
        Message::ResponderNotice(n) if n.alert_id == second && n.event == NoticeEvent::Acknowledged => Some(n),
        _ => None,
    })
    .expect("the sender got the centre's acknowledgement");
    assert_eq!(notice.responder, "Dana Cruz");
    sender.send(&Message::NoticeReceipt(NoticeReceipt { alert_id: second, event: NoticeEvent::Acknowledged }));
    let (state, by, via): (String, String, String) = site
        .db()
        .query_row(
            "SELECT r.state, r.by_responder, e.via FROM responses r JOIN alert_events e ON e.alert_id = r.alert_id
             WHERE r.alert_id = ?1 AND e.kind = 'acknowledged'",
            [second.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((state.as_str(), by.as_str(), via.as_str()), ("acknowledged", "Dana Cruz", "centre"));

    // The site tells the centre of the acknowledgement it recorded; the centre had it already
    // and posts nothing more. Each alert reached the centre's Slack exactly once.
    assert!(eventually(WAIT, || outbox_state(&site, second, "forward", "acknowledged").as_deref() == Some("delivered")));
    slack.wait_for(WAIT, "the acknowledgement at the centre", |r| {
        r.iter().any(|x| x.text().contains("Acknowledged by Dana Cruz") && x.text().contains(&second.to_string()))
    });
    assert_eq!(alert_posts(&slack, first).len(), 1, "{:?}", alert_posts(&slack, first));
    assert_eq!(alert_posts(&slack, second).len(), 1, "{:?}", alert_posts(&slack, second));
    let acks = slack.received().iter().filter(|r| r.status == 200 && r.text().contains("Acknowledged by")).count();
    assert_eq!(acks, 1);
}

#[test]
fn only_an_enrolled_site_forwards_and_only_about_its_own_alerts() {
    let centre = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let centre_proc = centre.start_with(&centre_config(&centre, &slack));

    // Two sites enrolled (their keys read back from what `forward enroll` wrote).
    let mut sites = Vec::new();
    for name in ["Site A", "Site B"] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("collector.toml");
        std::fs::write(&config, format!("data_dir = \"{}\"\n", dir.path().join("data").display())).unwrap();
        let out = forward_enroll(&config, &site_code(&centre_proc, name), &["--centre", &centre.addr.to_string()]);
        assert!(out.status.success(), "{}", text(&out));
        let (e, key) = read_enrollment(&dir.path().join("data/forward.key"));
        assert_eq!(e.name, name);
        sites.push((dir, Peer::new(centre.addr, key)));
    }
    let (site_a, site_b) = (&sites[0].1, &sites[1].1);
    let listed = collector(&centre_proc.config, &["agents"]);
    assert!(text(&listed).contains("SITE collector"), "{}", text(&listed));

    let forwarded = |message: &str| {
        let mut f = ForwardSos {
            alert_id: AlertId::random(),
            test: false,
            triggered_at: unix_now(),
            user: "bob\u{1b}[31m".into(),
            host: "desk-9".into(),
            ip: "10.1.0.9".into(),
            location: "Site floor 1".into(),
            message: message.into(),
            agent: String::new(),
            sender: "desk-9\nINFO forged".into(),
            sender_host: "desk-9".into(),
            pad: String::new(),
        };
        f.fit_to_datagram();
        f
    };
    let stored = |peer: &Peer, f: &ForwardSos| {
        let id = f.alert_id;
        ask(peer, &Message::ForwardSos(f.clone()), 5, Duration::from_secs(2), |m| match m {
            Message::SosAck(a) if a.alert_id == id => Some(a.status),
            _ => None,
        })
    };

    // A workstation's own key and the site key are not sites: no answer, nothing stored.
    let (_, agent_key) = enroll_agent(&centre_proc, centre.dir.path(), "desk-1");
    let agent = Peer::new(centre.addr, agent_key);
    let plain = Peer::new(centre.addr, centre.key());
    for (who, peer) in [("an enrolled workstation", &agent), ("the site key", &plain)] {
        let f = forwarded("not a site");
        assert!(stored(peer, &f).is_none(), "{who} forwarded an alert");
    }

    // Site A forwards: stored under Site A's name, the sender's fields made safe.
    let f = forwarded("from site A");
    let id = f.alert_id;
    assert_eq!(stored(site_a, &f), Some(sos_shared::protocol::AckStatus::Stored));
    let post = slack.wait_for_text(WAIT, &id.to_string()).text();
    assert!(post.contains("from site Site A") && !post.contains('\u{1b}'), "{post}");
    // Site B cannot take it over: the same id is a duplicate (Site A's stays), and B's
    // acknowledgement or cancellation of A's alert is refused.
    let mut b_copy = forwarded("site B claims it");
    b_copy.alert_id = id;
    assert_eq!(stored(site_b, &b_copy), Some(sos_shared::protocol::AckStatus::Duplicate));
    let update =
        Message::ForwardUpdate(ForwardUpdate::padded(id, ForwardEvent::Acknowledged, "Mallory".into(), String::new()));
    let answered = ask(site_b, &update, 2, Duration::from_secs(2), |m| {
        matches!(m, Message::ForwardUpdateAck(a) if a.alert_id == id).then_some(())
    });
    assert!(answered.is_none(), "site B acknowledged site A's alert");
    let cancel = Message::Cancel(sos_shared::protocol::Cancel::padded(id, "by B".into()));
    let answered = ask(site_b, &cancel, 2, Duration::from_secs(2), |m| {
        matches!(m, Message::CancelAck(a) if a.alert_id == id).then_some(())
    });
    assert!(answered.is_none(), "site B cancelled site A's alert");
    let (site_name, sender, state): (String, String, String) = centre
        .db()
        .query_row(
            "SELECT a.site, a.agent_name, r.state FROM alerts a JOIN responses r ON r.alert_id = a.alert_id
             WHERE a.alert_id = ?1",
            [id.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(site_name, "Site A");
    assert_eq!(sender, "desk-9 INFO forged", "control characters of the payload are neutralised");
    assert_ne!(state, "acknowledged");
    assert!(centre
        .db()
        .query_row("SELECT cancelled_at_ms IS NULL FROM alerts WHERE alert_id = ?1", [id.to_string()], |r| r
            .get::<_, bool>(0))
        .unwrap());

    // Site A's own acknowledgement is recorded, attributed to the site.
    let update =
        Message::ForwardUpdate(ForwardUpdate::padded(id, ForwardEvent::Acknowledged, "Sam".into(), "on my way".into()));
    let answered = ask(site_a, &update, 5, Duration::from_secs(2), |m| {
        matches!(m, Message::ForwardUpdateAck(a) if a.alert_id == id).then_some(())
    });
    assert!(answered.is_some(), "site A's acknowledgement was not answered");
    let by: String = centre
        .db()
        .query_row("SELECT by_responder FROM responses WHERE alert_id = ?1", [id.to_string()], |r| r.get(0))
        .unwrap();
    assert_eq!(by, "Sam (at site Site A)");

    // An oversized datagram with site A's key id, and an update about an alert nobody
    // forwarded, change nothing and are counted.
    let mut big = sos_shared::protocol::header(site_a_key_id(&sites[0].0)).to_vec();
    big.resize(MAX_DATAGRAM + 100, b'A');
    site_a.send_raw(&big);
    let unknown = AlertId::random();
    let update =
        Message::ForwardUpdate(ForwardUpdate::padded(unknown, ForwardEvent::Resolved, "S".into(), String::new()));
    let answered = ask(site_a, &update, 2, Duration::from_secs(1), |m| {
        matches!(m, Message::ForwardUpdateAck(a) if a.alert_id == unknown).then_some(())
    });
    assert!(answered.is_none(), "an update about an unknown alert was answered");

    let (_, log) = centre_proc.terminate();
    // An enrolled workstation and the site key (5 tries each), site B's update and site A's
    // update about an unknown alert (2 tries each).
    assert_eq!(counter(&log, "forward_refused"), 14, "{log}");
    assert!(counter(&log, "malformed") >= 1, "{log}");
}

/// The final value of a counter in the collector's last log line.
fn counter(log: &str, name: &str) -> u64 {
    let prefix = format!("{name}=");
    log.lines()
        .rev()
        .find(|l| l.contains("collector stopped"))
        .and_then(|l| l.split(|c: char| c.is_whitespace() || c == '"').find_map(|w| w.strip_prefix(prefix.as_str())))
        .and_then(|n| n.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .unwrap_or_else(|| panic!("no {name} counter in the log:\n{log}"))
}

fn site_a_key_id(dir: &tempfile::TempDir) -> sos_shared::KeyId {
    read_enrollment(&dir.path().join("data/forward.key")).1.id()
}
