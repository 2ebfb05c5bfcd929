//! The responder loop on real desktop sessions (Xvfb, a D-Bus session bus, dunst; issue 16).
//!
//! - [`the_agent_takes_pushes_from_a_hand_made_collector`]: one tray agent that is a responder
//!   desktop and a sender, against a collector made by hand in the test (a real UDP socket
//!   sealing with `sos_shared`): broadcasts become critical popups with `respond`, replaced in
//!   place; the `respond` action reaches the collector; a notice about the agent's own alert
//!   becomes "Help is on the way"; forged, replayed and foreign pushes change nothing; a flood
//!   of alerts is no toast storm.
//! - [`hotkey_to_responders_popups_to_help_is_on_the_way`]: the acceptance test of issue 16,
//!   against the real collector: one sender and two responder desktops, each its own session.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sos_e2e::desktop::{self, Desktop, Notify};
use sos_e2e::{eventually, free_udp_port, CollectorProcess};
use sos_shared::protocol::{
    split_datagram, AckStatus, AlertBroadcast, BroadcastState, CancelAck, HeartbeatAck, NoticeEvent, RespondAck,
    RespondStatus, ResponderNotice, SosAck,
};
use sos_shared::{unix_now, AlertId, Key, Message, TimeWindow};

const WAIT: Duration = Duration::from_secs(30);

/// What the hand-made collector has received, with a condition variable to wait on.
#[derive(Default)]
struct Seen {
    messages: Mutex<Vec<(SocketAddr, Message)>>,
    changed: Condvar,
}

/// A collector made by hand: answers heartbeats, SOS, cancels and responds, records every
/// authentic datagram, and pushes what the test tells it to the agent's heartbeat address.
struct HandMade {
    socket: UdpSocket,
    key: Key,
    addr: SocketAddr,
    seen: Arc<Seen>,
    /// The source of the agent's last heartbeat: where pushes go.
    agent: Arc<Mutex<Option<SocketAddr>>>,
    /// Notices carried in every heartbeat_ack.
    ack_notices: Arc<Mutex<Vec<ResponderNotice>>>,
    stop: Arc<AtomicBool>,
}

impl HandMade {
    fn start(key: Key) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let c = HandMade {
            socket: socket.try_clone().unwrap(),
            key: key.clone(),
            addr,
            seen: Arc::default(),
            agent: Arc::default(),
            ack_notices: Arc::default(),
            stop: Arc::default(),
        };
        let (seen, agent, notices, stop) = (c.seen.clone(), c.agent.clone(), c.ack_notices.clone(), c.stop.clone());
        std::thread::spawn(move || {
            socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let Ok((id, token)) = split_datagram(&buf[..n]) else { continue };
                if id != key.id() {
                    continue;
                }
                let Ok(opened) = key.open(token, unix_now(), TimeWindow::default()) else { continue };
                let now = unix_now();
                let reply = match &opened.message {
                    Message::Heartbeat(_) => {
                        *agent.lock().unwrap() = Some(from);
                        let notices = notices.lock().unwrap().clone();
                        Some(Message::HeartbeatAck(HeartbeatAck { server_time: now, notices, new_key: None }))
                    }
                    Message::Sos(s) => Some(Message::SosAck(SosAck {
                        alert_id: s.alert_id,
                        status: AckStatus::Stored,
                        server_time: now,
                    })),
                    Message::Cancel(c) => {
                        Some(Message::CancelAck(CancelAck { alert_id: c.alert_id, server_time: now }))
                    }
                    Message::Respond(r) => Some(Message::RespondAck(RespondAck {
                        alert_id: r.alert_id,
                        status: RespondStatus::Acknowledged,
                        server_time: now,
                    })),
                    _ => None,
                };
                if let Some(r) = reply {
                    let _ = socket.send_to(&key.seal(&r, now).unwrap(), from);
                }
                seen.messages.lock().unwrap().push((from, opened.message));
                seen.changed.notify_all();
            }
        });
        c
    }

    /// Where the agent heartbeats from, once it has.
    fn agent(&self) -> SocketAddr {
        assert!(eventually(WAIT, || self.agent.lock().unwrap().is_some()), "the agent never heartbeat");
        self.agent.lock().unwrap().unwrap()
    }

    /// Push `m` to the agent, sealed with `key` at `at`.
    fn push_with(&self, key: &Key, m: &Message, at: u64) {
        self.socket.send_to(&key.seal(m, at).unwrap(), self.agent()).unwrap();
    }

    /// Push an open broadcast of each of `alerts`, and again (as a collector repeats) those
    /// not confirmed within a second, until all are (a burst can overflow a socket's buffer).
    fn push_until_confirmed(&self, alerts: &[AlertId]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let confirmed =
                |id: &AlertId| self.received(|m| matches!(m, Message::BroadcastReceipt(r) if r.alert_id == *id)) > 0;
            let missing: Vec<&AlertId> = alerts.iter().filter(|id| !confirmed(id)).collect();
            if missing.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "{} broadcasts never confirmed", missing.len());
            for id in missing {
                self.push(&Message::AlertBroadcast(broadcast(*id, 1, BroadcastState::Open)));
            }
            let round = Instant::now() + Duration::from_secs(1);
            let mut m = self.seen.messages.lock().unwrap();
            while Instant::now() < round {
                let before = m.len();
                m = self.seen.changed.wait_timeout(m, round.saturating_duration_since(Instant::now())).unwrap().0;
                if m.len() == before {
                    break;
                }
            }
        }
    }

    fn push(&self, m: &Message) {
        self.push_with(&self.key, m, unix_now());
    }

    /// Wait for the first message received after the first `skip` for which `pick` holds.
    fn wait<T>(&self, what: &str, skip: usize, pick: impl Fn(&Message) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        let mut m = self.seen.messages.lock().unwrap();
        loop {
            if let Some(t) = m.iter().skip(skip).find_map(|(_, x)| pick(x)) {
                return t;
            }
            let now = Instant::now();
            assert!(now < deadline, "the collector did not receive {what}; it got:\n{:#?}", m.iter().skip(skip));
            m = self.seen.changed.wait_timeout(m, deadline - now).unwrap().0;
        }
    }

    /// How many messages it has received so far.
    fn count(&self) -> usize {
        self.seen.messages.lock().unwrap().len()
    }

    fn received(&self, pick: impl Fn(&Message) -> bool) -> usize {
        self.seen.messages.lock().unwrap().iter().filter(|(_, m)| pick(m)).count()
    }
}

impl Drop for HandMade {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn broadcast(alert_id: AlertId, seq: u64, state: BroadcastState) -> AlertBroadcast {
    AlertBroadcast {
        alert_id,
        test: false,
        triggered_at: unix_now(),
        user: "alice".into(),
        host: "desk-7".into(),
        ip: "127.0.0.7".into(),
        location: "Reception".into(),
        message: "a visitor is shouting".into(),
        state,
        responder: String::new(),
        note: String::new(),
        seq,
        reminder: false,
    }
}

fn receipt_of(alert_id: AlertId, seq: u64) -> impl Fn(&Message) -> Option<()> {
    move |m| matches!(m, Message::BroadcastReceipt(r) if r.alert_id == alert_id && r.seq == seq).then_some(())
}

/// A tray agent's configuration in `dir`: plain words, no cancel window, fast heartbeats.
fn agent_config(dir: &std::path::Path, name: &str, collector: SocketAddr, key_line: &str, extra: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "collectors = [\"{collector}\"]\n{key_line}\nlocation = \"{name}'s desk\"\nspool_dir = \"{}\"\n\
             heartbeat_secs = 1\nwarn_after_secs = 5\nfallback = \"Call security 555-0100\"\n\
             wording = \"plain\"\ntray_click = \"single\"\ncancel_window_ms = 0\n{extra}",
            dir.join(format!("{name}-spool")).display()
        ),
    )
    .unwrap();
    p
}

/// Wait until a notification whose summary starts with `start` has been shown (the daemon
/// answered with its id); returns every `Notify` seen.
fn shown(desk: &Desktop, what: &str, start: &str) -> Vec<Notify> {
    desk.wait_notifies(WAIT, what, |n| n.iter().any(|x| x.summary.starts_with(start) && x.id.is_some()))
}

fn with_summary<'a>(n: &'a [Notify], start: &str) -> Vec<&'a Notify> {
    n.iter().filter(|x| x.summary.starts_with(start)).collect()
}

#[test]
fn the_agent_takes_pushes_from_a_hand_made_collector() {
    if !desktop::available() {
        return;
    }
    let desk = Desktop::start();
    let dir = tempfile::tempdir().unwrap();
    let key_text = Key::generate();
    let key = Key::from_base64(&key_text).unwrap();
    let collector = HandMade::start(key.clone());
    let config = agent_config(
        dir.path(),
        "sam",
        collector.addr,
        &format!("key = \"{key_text}\""),
        "responder = true\nresponder_name = \"Sam Lee\"\n",
    );
    let agent = desk.start_agent(&config, &dir.path().join("state"));
    agent.wait_log(WAIT, "hotkey registered");
    let item = desk.tray_item_of(agent.pid(), WAIT);

    // Its heartbeats say it is a responder desktop.
    collector.wait("a responder's heartbeat", 0, |m| matches!(m, Message::Heartbeat(h) if h.responder).then_some(()));

    // 1. A broadcast: a receipt, and a critical popup with "I'm responding" and "Details".
    let a = AlertId::random();
    collector.push(&Message::AlertBroadcast(broadcast(a, 1, BroadcastState::Open)));
    collector.wait("the broadcast's receipt", 0, receipt_of(a, 1));
    let seen = desk.wait_notifies(WAIT, "the popup and its id", |n| {
        with_summary(n, "SOS — alice at Reception").first().is_some_and(|x| x.id.is_some())
    });
    let popup = with_summary(&seen, "SOS — alice at Reception")[0].clone();
    assert_eq!(popup.actions, vec!["respond", "I'm responding", "details", "Details"], "{popup:#?}");
    assert!(popup.body.contains("a visitor is shouting"), "{popup:#?}");
    assert!(desk.notified_critical("SOS — alice at Reception"), "urgency critical");
    let popup_id = popup.id.expect("the daemon's id");
    assert!(eventually(WAIT, || desk.tray_tooltip(&item).contains("1 open alert(s)")), "{}", desk.tray_tooltip(&item));

    // 2. The same broadcast again: confirmed again (the collector may have lost the first
    //    receipt), shown once. Then a forged one (another key), an old one (replayed), and one
    //    for an unknown alert sealed with the wrong key: no receipt, nothing shown. The next
    //    real broadcast's receipt and popup prove they were all handled before it.
    let before = collector.count();
    collector.push(&Message::AlertBroadcast(broadcast(a, 1, BroadcastState::Open)));
    collector.wait("the repeat's receipt", before, receipt_of(a, 1));
    let forged = AlertId::random();
    let other_key = Key::from_base64(&Key::generate()).unwrap();
    collector.push_with(&other_key, &Message::AlertBroadcast(broadcast(forged, 1, BroadcastState::Open)), unix_now());
    let replayed = AlertId::random();
    collector.push_with(
        &key,
        &Message::AlertBroadcast(broadcast(replayed, 1, BroadcastState::Open)),
        unix_now() - 3600,
    );
    let mut hostile = broadcast(AlertId::random(), 1, BroadcastState::Open);
    hostile.user = "<b>mallory</b>".into();
    hostile.message = "<a href=\"http://x\">click</a> & <i>run</i>".into();
    collector.push(&Message::AlertBroadcast(hostile.clone()));
    collector.wait("the hostile broadcast's receipt", before, receipt_of(hostile.alert_id, 1));
    let seen = shown(&desk, "the hostile popup", "SOS — ‹b›mallory");
    let h = with_summary(&seen, "SOS — ‹b›mallory")[0];
    assert!(h.body.contains("&lt;a href") && h.body.contains("&amp; &lt;i&gt;run"), "markup escaped: {h:#?}");
    assert_eq!(with_summary(&seen, "SOS — alice").len(), 1, "a repeat is not shown again: {seen:#?}");
    assert_eq!(
        collector
            .received(|m| matches!(m, Message::BroadcastReceipt(r) if r.alert_id == forged || r.alert_id == replayed)),
        0
    );

    // 3. "I'm responding", chosen on the popup (ActionInvoked on the bus): a respond reaches the
    //    collector, and the popup says so, in place.
    let before = collector.count();
    desk.invoke_action(popup_id, "respond");
    collector.wait("the respond", before, |m| matches!(m, Message::Respond(r) if r.alert_id == a).then_some(()));
    let seen = shown(&desk, "you are responding", "SOS — you are responding");
    let mine = with_summary(&seen, "SOS — you are responding")[0];
    assert_eq!(mine.replaces_id, popup_id, "replaced in place: {seen:#?}");

    // 4. Another alert, acknowledged by someone else, then cancelled: replaced in place each time.
    let b = AlertId::random();
    collector.push(&Message::AlertBroadcast(broadcast(b, 1, BroadcastState::Open)));
    collector.wait("b's receipt", 0, receipt_of(b, 1));
    desk.wait_notifies(WAIT, "b's popup", |n| {
        n.iter().filter(|x| x.summary == "SOS — alice at Reception" && x.id.is_some()).count() == 2
    });
    let mut acked = broadcast(b, 2, BroadcastState::Acknowledged);
    acked.responder = "Kim Park".into();
    collector.push(&Message::AlertBroadcast(acked));
    collector.wait("b's second receipt", 0, receipt_of(b, 2));
    let seen = shown(&desk, "Kim is responding", "Kim Park is responding");
    let first_b = seen.iter().filter(|x| x.summary == "SOS — alice at Reception").nth(1).and_then(|x| x.id);
    let kim = with_summary(&seen, "Kim Park is responding")[0];
    assert_eq!(Some(kim.replaces_id), first_b, "{seen:#?}");
    // Out of order: seq 1 again after seq 2 changes nothing.
    collector.push(&Message::AlertBroadcast(broadcast(b, 1, BroadcastState::Open)));
    collector.push(&Message::AlertBroadcast(broadcast(b, 3, BroadcastState::Cancelled)));
    collector.wait("b's third receipt", 0, receipt_of(b, 3));
    let seen = shown(&desk, "cancelled", "Cancelled by the sender — check in person");
    assert_eq!(with_summary(&seen, "Cancelled by the sender")[0].replaces_id, kim.replaces_id);
    assert_eq!(seen.iter().filter(|x| x.summary == "SOS — alice at Reception").count(), 2, "{seen:#?}");

    // 5. The agent as a sender: Ctrl+Alt+S, then notices. One about an alert it did not send is
    //    neither confirmed nor shown; one about its own becomes "Help is on the way — NAME"
    //    in place of the delivery toast, confirmed each time it comes (pushed, then again in a
    //    heartbeat's answer), shown once.
    desk.key("ctrl+alt+s");
    let mine = collector.wait("the hotkey's SOS", 0, |m| match m {
        Message::Sos(s) => Some(s.alert_id),
        _ => None,
    });
    let seen = desk
        .wait_notifies(WAIT, "delivered", |n| with_summary(n, "SOS delivered").first().is_some_and(|x| x.id.is_some()));
    let delivered = with_summary(&seen, "SOS delivered")[0].id.unwrap();
    let notice = |id, event| ResponderNotice {
        alert_id: id,
        event,
        responder: "Sam Lee".into(),
        note: "2 minutes".into(),
        at: unix_now(),
    };
    let before = collector.count();
    collector.push(&Message::ResponderNotice(notice(a, NoticeEvent::Acknowledged)));
    collector.push(&Message::ResponderNotice(notice(mine, NoticeEvent::Acknowledged)));
    collector.wait("the notice's receipt", before, |m| {
        matches!(m, Message::NoticeReceipt(r) if r.alert_id == mine && r.event == NoticeEvent::Acknowledged)
            .then_some(())
    });
    assert_eq!(collector.received(|m| matches!(m, Message::NoticeReceipt(r) if r.alert_id == a)), 0, "not its alert");
    let seen = shown(&desk, "help is on the way", "Help is on the way — Sam Lee");
    let help = with_summary(&seen, "Help is on the way — Sam Lee")[0];
    assert_eq!(help.replaces_id, delivered, "{seen:#?}");
    assert!(help.body.contains("2 minutes"), "{help:#?}");
    assert!(eventually(WAIT, || desk.tray_tooltip(&item).contains("open alert")), "responder alarm wins the tray");
    // The same notice in heartbeat answers: confirmed again, not shown again.
    let before = collector.count();
    collector.ack_notices.lock().unwrap().push(notice(mine, NoticeEvent::Acknowledged));
    collector.wait("the receipt of the notice in a heartbeat_ack", before, |m| {
        matches!(m, Message::NoticeReceipt(r) if r.alert_id == mine).then_some(())
    });
    collector.ack_notices.lock().unwrap().clear();
    assert_eq!(with_summary(&desk.notifies(), "Help is on the way").len(), 1);

    // 6. A flood: 200 open alerts at once. Every one is confirmed; the screen holds at most
    //    8 popups and one "more open alerts", and the tray counts them all.
    let flood: Vec<AlertId> = (0..200).map(|_| AlertId::random()).collect();
    collector.push_until_confirmed(&flood);
    desk.wait_notifies(WAIT, "more open alerts", |n| n.iter().any(|x| x.summary.contains("more open alert(s)")));
    assert!(
        eventually(WAIT, || desk.tray_tooltip(&item).contains("202 open alert(s)")),
        "{}",
        desk.tray_tooltip(&item)
    );
    let popups = desk.notifies().iter().filter(|x| x.summary.starts_with("SOS — alice") && x.replaces_id == 0).count();
    assert!(popups <= 2 + 8, "one popup per alert, at most 8 at once: {popups}");
    let on_screen = desk.toasts_on_screen();
    assert!(on_screen <= 16, "no toast storm: {on_screen} toasts on screen");
    drop(agent);
}

/// An enrolled desktop: its enrollment file, made with a one-time code from the real collector.
fn enroll(site: &std::path::Path, collector_config: &std::path::Path, addr: SocketAddr, name: &str) -> PathBuf {
    let out = std::process::Command::new(sos_e2e::bin::bin("sos-collector"))
        .args(["enroll", "--name", name, "--config"])
        .arg(collector_config)
        .output()
        .unwrap();
    assert!(out.status.success(), "enroll {name}: {}", String::from_utf8_lossy(&out.stderr));
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let file = site.join(format!("{name}.enrollment.toml"));
    let out = std::process::Command::new(sos_e2e::bin::bin("sos-agent"))
        .args(["enroll", &code, "--collector", &addr.to_string(), "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "sos-agent enroll {name}: {}", String::from_utf8_lossy(&out.stderr));
    file
}

/// The acceptance test of issue 16 (needs the collector's side of the responder loop: the
/// `resp-model` and `resp-push` branches). One sender and two responder desktops, each with
/// its own D-Bus session and notification daemon, one real collector with `[[responders]]`.
#[test]
fn hotkey_to_responders_popups_to_help_is_on_the_way() {
    if !desktop::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let config = format!(
        "listen = \"{addr}\"\ndata_dir = \"{}\"\nkey = \"{}\"\nshutdown_grace_secs = 1\n\
         [[responders]]\nname = \"Sam Lee\"\nagents = [\"sam-desk\"]\n\
         [[responders]]\nname = \"Kim Park\"\nagents = [\"kim-desk\"]\n",
        dir.path().join("data").display(),
        Key::generate()
    );
    let collector = CollectorProcess::start(dir.path(), addr, &config);
    let collector_config = dir.path().join("collector.toml");
    std::fs::write(&collector_config, &config).unwrap();

    let mut desks = Vec::new();
    let mut agents = Vec::new();
    for (name, extra) in [("sender-desk", ""), ("sam-desk", "responder = true\n"), ("kim-desk", "responder = true\n")] {
        let enrollment = enroll(dir.path(), &collector_config, addr, name);
        let cfg =
            agent_config(dir.path(), name, addr, &format!("enrollment_file = \"{}\"", enrollment.display()), extra);
        let desk = Desktop::start();
        let agent = desk.start_agent(&cfg, &dir.path().join(format!("{name}-state")));
        agent.wait_log(WAIT, "hotkey registered");
        agent.wait_log(WAIT, "a collector answers");
        desks.push(desk);
        agents.push(agent);
    }
    let (sender, sam, kim) = (&desks[0], &desks[1], &desks[2]);

    // Hotkey on the sender → a critical popup on both responders' buses.
    sender.key("ctrl+alt+s");
    shown(sender, "delivered", "SOS delivered");
    let popup_on = |d: &Desktop| {
        let seen = d.wait_notifies(WAIT, "the responder popup", |n| {
            with_summary(n, "SOS — ").first().is_some_and(|x| x.id.is_some())
        });
        with_summary(&seen, "SOS — ")[0].clone()
    };
    let sam_popup = popup_on(sam);
    let kim_popup = popup_on(kim);
    assert!(sam_popup.actions.contains(&"respond".to_owned()), "{sam_popup:#?}");
    assert!(sam.notified_critical("SOS — ") && kim.notified_critical("SOS — "));

    // Sam chooses "I'm responding" → the sender reads "Help is on the way — Sam Lee", and Kim's
    // popup is replaced with "Sam Lee is responding".
    sam.invoke_action(sam_popup.id.unwrap(), "respond");
    shown(sender, "help is on the way", "Help is on the way — Sam Lee");
    let seen = shown(kim, "Sam is responding", "Sam Lee is responding");
    assert_eq!(with_summary(&seen, "Sam Lee is responding")[0].replaces_id, kim_popup.id.unwrap(), "{seen:#?}");
    shown(sam, "you are responding", "SOS — you are responding");

    // Cancel on the sender → the responders' popups are replaced: check in person.
    let out = sender
        .command(sos_e2e::bin::bin("sos-agent"))
        .args(["cancel", "--config"])
        .arg(dir.path().join("sender-desk.toml"))
        .env("XDG_STATE_HOME", dir.path().join("sender-desk-state"))
        .env("XDG_DATA_HOME", dir.path().join("sender-desk-state"))
        .output()
        .unwrap();
    assert!(out.status.success(), "cancel: {}", String::from_utf8_lossy(&out.stderr));
    for d in [sam, kim] {
        shown(d, "cancelled", "Cancelled by the sender — check in person");
    }
    drop(collector);
}

/// `sos-agent respond` with no tray agent running: sent directly until the collector answers,
/// and the outcome printed; an id that is not one is refused before anything is sent.
#[test]
fn respond_from_the_command_line_without_a_tray_agent() {
    let dir = tempfile::tempdir().unwrap();
    let key_text = Key::generate();
    let collector = HandMade::start(Key::from_base64(&key_text).unwrap());
    let config =
        agent_config(dir.path(), "cli", collector.addr, &format!("key = \"{key_text}\""), "responder = true\n");
    let runtime_dir = dir.path().join("runtime");
    std::fs::create_dir(&runtime_dir).unwrap();
    let id = AlertId::random();
    let out = std::process::Command::new(sos_e2e::bin::bin("sos-agent"))
        .args(["respond", &id.to_string(), "--note", "on my way", "--config"])
        .arg(&config)
        .env("XDG_RUNTIME_DIR", &runtime_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("You are responding to alert {id}")), "{stdout}");
    collector.wait("the respond", 0, |m| {
        matches!(m, Message::Respond(r) if r.alert_id == id && r.note == "on my way").then_some(())
    });
    let out = std::process::Command::new(sos_e2e::bin::bin("sos-agent"))
        .args(["respond", "not-an-id", "--config"])
        .arg(&config)
        .env("XDG_RUNTIME_DIR", &runtime_dir)
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not an alert id"));
}
