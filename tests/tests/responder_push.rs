//! End-to-end: the collector's pushes (issue 16). Hand-made agents on real UDP sockets, enrolled
//! with one-time codes through the real CLIs, against the real collector and its SQLite store:
//! an SOS reaches the responder desktops as `alert_broadcast`, a `respond` acknowledges it and
//! the sender gets its `responder_notice` pushed and in `heartbeat_ack.notices`; nothing
//! forged, replayed or sealed by the wrong agent changes anything.

use std::time::{Duration, Instant};

use sos_e2e::process::enroll_agent;
use sos_e2e::site::Site;
use sos_e2e::{eventually, CollectorProcess, Peer};
use sos_shared::protocol::{
    BroadcastReceipt, BroadcastState, Heartbeat, NoticeEvent, NoticeReceipt, Respond, RespondStatus, Sos,
};
use sos_shared::{unix_now, AlertId, Key, Message};

const WAIT: Duration = Duration::from_secs(20);

fn config(site: &Site) -> String {
    let mut c = site.collector_config(None, None);
    c.push_str(
        "[[responders]]\nname = \"Sam Lee\"\nagents = [\"sam-desk\"]\n\
         [[responders]]\nname = \"Kim Park\"\nagents = [\"kim-desk\"]\n",
    );
    c
}

fn heartbeat(host: &str, responder: bool) -> Message {
    Message::Heartbeat(Heartbeat {
        user: "u".into(),
        host: host.into(),
        ip: String::new(),
        pad: "0".repeat(160),
        responder,
    })
}

fn sos() -> Sos {
    Sos {
        alert_id: AlertId::random(),
        test: false,
        triggered_at: unix_now(),
        attempt: 0,
        user: "alice".into(),
        host: "reception".into(),
        ip: "10.0.0.12".into(),
        location: "Reception".into(),
        message: "aggressive visitor".into(),
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

/// A collector with two responder desktops (Sam's, Kim's) and a sender, all enrolled and
/// online (heartbeats answered, presence written to the store).
struct Loop {
    site: Site,
    collector: CollectorProcess,
    sam: Peer,
    kim: Peer,
    sender: Peer,
    sam_key: Key,
}

fn start() -> Loop {
    let site = Site::new();
    let collector = site.start_with(&config(&site));
    let (_, sam_key) = enroll_agent(&collector, site.dir.path(), "sam-desk");
    let (_, kim_key) = enroll_agent(&collector, site.dir.path(), "kim-desk");
    let (_, sender_key) = enroll_agent(&collector, site.dir.path(), "reception");
    let sam = Peer::new(site.addr, sam_key.clone());
    let kim = Peer::new(site.addr, kim_key);
    let sender = Peer::new(site.addr, sender_key);
    for (peer, host, responder) in [(&sam, "sam-pc", true), (&kim, "kim-pc", true), (&sender, "reception", false)] {
        // The registry reloads once a second: heartbeat until answered.
        assert!(
            eventually(WAIT, || {
                peer.send(&heartbeat(host, responder));
                next(peer, Duration::from_millis(300), |m| matches!(m, Message::HeartbeatAck(_)).then_some(()))
                    .is_some()
            }),
            "no heartbeat answer"
        );
    }
    // The store knows both desks are online (else the alert is "unanswered" at once).
    assert!(eventually(WAIT, || {
        let n: i64 = site
            .db()
            .query_row("SELECT COUNT(*) FROM enrolled WHERE name LIKE '%-desk' AND last_seen_ms IS NOT NULL", [], |r| {
                r.get(0)
            })
            .unwrap();
        n == 2
    }));
    Loop { site, collector, sam, kim, sender, sam_key }
}

fn raise(l: &Loop) -> AlertId {
    let s = sos();
    let id = s.alert_id;
    l.sender.send(&Message::Sos(s));
    next(&l.sender, WAIT, |m| matches!(m, Message::SosAck(a) if a.alert_id == id).then_some(())).expect("sos_ack");
    id
}

fn broadcast_on(desk: &Peer, id: AlertId, state: BroadcastState) -> sos_shared::protocol::AlertBroadcast {
    next(desk, WAIT, |m| match m {
        Message::AlertBroadcast(b) if b.alert_id == id && b.state == state => Some(b),
        _ => None,
    })
    .unwrap_or_else(|| panic!("no {state:?} broadcast"))
}

fn state_of(site: &Site, id: AlertId) -> (String, String) {
    site.db()
        .query_row("SELECT state, by_responder FROM responses WHERE alert_id = ?1", [id.to_string()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
}

fn events(site: &Site, id: AlertId, kind: &str) -> Vec<String> {
    let db = site.db();
    let mut stmt = db.prepare("SELECT who FROM alert_events WHERE alert_id = ?1 AND kind = ?2 ORDER BY at_ms").unwrap();
    stmt.query_map([id.to_string(), kind.to_owned()], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

fn notice_confirmed(site: &Site, id: AlertId) -> bool {
    site.db()
        .query_row(
            "SELECT COUNT(*) FROM sender_notices WHERE alert_id = ?1 AND event = 'acknowledged' AND confirmed_at_ms IS NOT NULL",
            [id.to_string()],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
        == 1
}

#[test]
fn a_broadcast_reaches_both_desks_a_respond_acknowledges_and_the_sender_is_told() {
    let l = start();
    let id = raise(&l);
    // Both desks get the alert, pushed to the address they heartbeat from; it is repeated
    // until confirmed (Kim does not confirm at first: a second push comes).
    let b = broadcast_on(&l.sam, id, BroadcastState::Open);
    assert_eq!((b.user.as_str(), b.message.as_str()), ("alice", "aggressive visitor"));
    l.sam.send(&Message::BroadcastReceipt(BroadcastReceipt { alert_id: id, seq: b.seq }));
    let k = broadcast_on(&l.kim, id, BroadcastState::Open);
    let again = broadcast_on(&l.kim, id, BroadcastState::Open);
    assert_eq!(again.seq, k.seq);
    l.kim.send(&Message::BroadcastReceipt(BroadcastReceipt { alert_id: id, seq: k.seq }));
    assert!(eventually(WAIT, || events(&l.site, id, "popup_shown").len() == 2), "popup_shown recorded once per desk");

    // Sam responds: acknowledged, attributed to the configured name.
    l.sam.send(&Message::Respond(Respond::padded(id, "on my way".into())));
    let status = next(&l.sam, WAIT, |m| match m {
        Message::RespondAck(a) if a.alert_id == id => Some(a.status),
        _ => None,
    });
    assert_eq!(status, Some(RespondStatus::Acknowledged));
    assert_eq!(state_of(&l.site, id), ("acknowledged".into(), "Sam Lee".into()));

    // Kim's popup changes to "Sam Lee is responding".
    let kb = broadcast_on(&l.kim, id, BroadcastState::Acknowledged);
    assert_eq!((kb.responder.as_str(), kb.note.as_str()), ("Sam Lee", "on my way"));
    assert!(kb.seq > k.seq);

    // The sender gets the notice pushed to its address…
    let n = next(&l.sender, WAIT, |m| match m {
        Message::ResponderNotice(n) if n.alert_id == id && n.event == NoticeEvent::Acknowledged => Some(n),
        _ => None,
    })
    .expect("responder_notice pushed");
    assert_eq!(n.responder, "Sam Lee");
    // …and in every heartbeat answer until it confirms it.
    l.sender.send(&heartbeat("reception", false));
    let in_ack = next(&l.sender, WAIT, |m| match m {
        Message::HeartbeatAck(a) => Some(a.notices),
        _ => None,
    })
    .unwrap();
    assert!(in_ack.iter().any(|x| x.alert_id == id && x.responder == "Sam Lee"), "{in_ack:?}");
    l.sender.send(&Message::NoticeReceipt(NoticeReceipt { alert_id: id, event: NoticeEvent::Acknowledged }));
    assert!(eventually(WAIT, || notice_confirmed(&l.site, id)));
    l.sender.send(&heartbeat("reception", false));
    let after = next(&l.sender, WAIT, |m| match m {
        Message::HeartbeatAck(a) => Some(a.notices),
        _ => None,
    })
    .unwrap();
    assert!(!after.iter().any(|x| x.alert_id == id && x.event == NoticeEvent::Acknowledged), "{after:?}");

    // Kim responds too late: already.
    l.kim.send(&Message::Respond(Respond::padded(id, String::new())));
    let status = next(&l.kim, WAIT, |m| match m {
        Message::RespondAck(a) if a.alert_id == id => Some(a.status),
        _ => None,
    });
    assert_eq!(status, Some(RespondStatus::Already));
    assert_eq!(events(&l.site, id, "acknowledged"), ["Sam Lee"]);
}

#[test]
fn respond_from_the_site_key_a_non_responder_a_forger_or_a_replay_changes_nothing() {
    let l = start();
    let id = raise(&l);
    broadcast_on(&l.sam, id, BroadcastState::Open);
    let before = state_of(&l.site, id);
    assert_ne!(before.0, "acknowledged");
    let respond = Message::Respond(Respond::padded(id, "it's me".into()));
    // The site key, the sender's own enrolled key (not a responder desk), a key nobody has.
    let site_peer = Peer::new(l.site.addr, l.site.key());
    let forger = Peer::new(l.site.addr, Key::from_base64(&Key::generate()).unwrap());
    for peer in [&site_peer, &l.sender, &forger] {
        peer.send(&respond);
    }
    l.collector.wait_log(WAIT, "refused respond: not sealed by an enrolled agent listed in a responder's agents");
    for peer in [&site_peer, &forger] {
        assert_eq!(peer.recv_raw(Duration::from_secs(1)), None, "no answer");
    }
    assert!(next(&l.sender, Duration::from_secs(1), |m| matches!(m, Message::RespondAck(_)).then_some(())).is_none());
    assert_eq!(state_of(&l.site, id), before);
    assert!(events(&l.site, id, "acknowledged").is_empty());

    // Sam acknowledges; the same datagram replayed (within the token age limit) changes nothing.
    let datagram = l.sam.send(&respond);
    next(&l.sam, WAIT, |m| {
        matches!(m, Message::RespondAck(a) if a.status == RespondStatus::Acknowledged).then_some(())
    })
    .expect("acknowledged");
    let replayer = Peer::new(l.site.addr, Key::from_base64(&Key::generate()).unwrap());
    replayer.send_raw(&datagram);
    l.sam.send_raw(&datagram);
    // Sam's own retransmission is answered as the first was (its answer may have been lost).
    next(&l.sam, WAIT, |m| {
        matches!(m, Message::RespondAck(a) if a.status == RespondStatus::Acknowledged).then_some(())
    })
    .expect("acknowledged again");
    assert_eq!(events(&l.site, id, "acknowledged"), ["Sam Lee"]);

    // A notice receipt from another agent (Kim's desk) or the site key does not confirm the
    // sender's notice; the notice keeps coming to the sender.
    next(&l.sender, WAIT, |m| matches!(m, Message::ResponderNotice(n) if n.alert_id == id).then_some(()))
        .expect("notice pushed");
    let receipt = Message::NoticeReceipt(NoticeReceipt { alert_id: id, event: NoticeEvent::Acknowledged });
    l.kim.send(&receipt);
    site_peer.send(&receipt);
    next(&l.sender, WAIT, |m| matches!(m, Message::ResponderNotice(n) if n.alert_id == id).then_some(()))
        .expect("notice pushed again: not confirmed by others");
    assert!(!notice_confirmed(&l.site, id));
}

#[test]
fn a_desk_that_moves_gets_the_next_push_at_its_new_address_and_a_flood_of_receipts_and_responds_changes_nothing() {
    let l = start();
    // Sam's desk is behind a NAT that rebinds: its next heartbeat comes from another port.
    let moved = Peer::new(l.site.addr, l.sam_key.clone());
    moved.send(&heartbeat("sam-pc", true));
    next(&moved, WAIT, |m| matches!(m, Message::HeartbeatAck(_)).then_some(())).expect("heartbeat answer");
    let id = raise(&l);
    let b = broadcast_on(&moved, id, BroadcastState::Open);
    // Nothing to the old address (but a late answer to one of its own heartbeats).
    let old = next(&l.sam, Duration::from_millis(300), |m| (!matches!(m, Message::HeartbeatAck(_))).then_some(m));
    assert_eq!(old, None, "nothing to the old address");
    moved.send(&Message::BroadcastReceipt(BroadcastReceipt { alert_id: id, seq: b.seq }));

    // A flood of authentic receipts and responds from Sam's desk, of receipts from the site key,
    // and of forged ones: bounded by the per-agent rate, one acknowledgement, one popup_shown.
    let site_peer = Peer::new(l.site.addr, l.site.key());
    let forger = Peer::new(l.site.addr, Key::from_base64(&Key::generate()).unwrap());
    let respond = Message::Respond(Respond::padded(id, String::new()));
    for i in 0..3000u64 {
        let receipt = Message::BroadcastReceipt(BroadcastReceipt { alert_id: id, seq: i });
        moved.send(&receipt);
        site_peer.send(&Message::NoticeReceipt(NoticeReceipt { alert_id: id, event: NoticeEvent::Acknowledged }));
        forger.send(&respond);
        if i % 10 == 0 {
            moved.send(&respond);
        }
    }
    assert!(eventually(WAIT, || !events(&l.site, id, "acknowledged").is_empty()));
    // The collector still takes alerts and pushes them.
    let second = raise(&l);
    broadcast_on(&l.kim, second, BroadcastState::Open);
    assert_eq!(events(&l.site, id, "acknowledged"), ["Sam Lee"]);
    assert_eq!(events(&l.site, id, "popup_shown").iter().filter(|w| *w == "Sam Lee").count(), 1);
    assert_eq!(forger.recv_raw(Duration::from_millis(300)), None);
    l.collector.wait_log(WAIT, "rate limit: an agent sends more than its limit");
}
