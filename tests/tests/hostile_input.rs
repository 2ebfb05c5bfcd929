//! End-to-end: what the collector does with input it must not trust.

use std::net::SocketAddr;
use std::time::Duration;

use sos_e2e::{free_udp_port, CollectorProcess, Peer};
use sos_shared::protocol::{header, Heartbeat, KeyId, MAX_DATAGRAM};
use sos_shared::{unix_now, Key, Message};

const WAIT: Duration = Duration::from_secs(20);

fn heartbeat(pad: usize) -> Message {
    Message::Heartbeat(Heartbeat {
        user: "probe".into(),
        host: "probe".into(),
        ip: String::new(),
        pad: "p".repeat(pad),
        responder: false,
    })
}

#[test]
fn bad_datagrams_get_no_reply_are_counted_and_do_not_hurt() {
    let dir = tempfile::tempdir().unwrap();
    let key_text = Key::generate();
    let key = Key::from_base64(&key_text).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let collector = CollectorProcess::start(
        dir.path(),
        addr,
        &format!("listen = \"{addr}\"\ndata_dir = \"{}\"\nkey = \"{key_text}\"\n", dir.path().join("d").display()),
    );
    let peer = Peer::new(addr, key.clone());
    let stranger = Peer::new(addr, Key::from_base64(&Key::generate()).unwrap());

    let good = key.seal(&heartbeat(64), unix_now()).unwrap();
    let mut tampered = good.clone();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let truncated = good[..good.len() - 10].to_vec();
    let mut oversized = good.clone();
    oversized.resize(MAX_DATAGRAM + 1, b'A');
    let garbage: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8).collect();
    let mut wrong_version = good.clone();
    wrong_version[3] = 9;
    let mut unknown_key = header(KeyId([9; 8])).to_vec();
    unknown_key.extend_from_slice(&good[12..]);
    let stale = key.seal(&heartbeat(64), unix_now() - 3600).unwrap();
    let future = key.seal(&heartbeat(64), unix_now() + 3600).unwrap();

    for d in [
        &tampered,
        &truncated,
        &oversized,
        &garbage,
        &wrong_version,
        &unknown_key,
        &stale,
        &future,
        &vec![],
        &b"SOS".to_vec(),
    ] {
        peer.send_raw(d);
    }
    stranger.send(&heartbeat(64));
    // A minimal authentic heartbeat (every field is optional): its answer would be larger than
    // it, so it gets none.
    let mut tiny = header(key.id()).to_vec();
    let fernet = fernet::Fernet::new(&key_text).unwrap();
    tiny.extend_from_slice(fernet.encrypt_at_time(br#"{"kind":"heartbeat"}"#, unix_now()).as_bytes());
    peer.send_raw(&tiny);

    // The stale and the future token are authentic, so each gets a time hint (the collector's
    // clock, no larger than the request; the tokens themselves stay refused); the heartbeat
    // gets its answer, proving the collector still serves. Nothing else is answered: the
    // counters below show exactly these three replies were sent.
    let probe = peer.send(&heartbeat(64));
    let mut hints = Vec::new();
    let mut reply = None;
    for _ in 0..3 {
        let r = peer.recv_raw(WAIT).expect("three replies: two time hints and the heartbeat's answer");
        match peer.open(&r) {
            Some(Message::TimeHint(h)) => {
                assert!(r.len() <= stale.len(), "hint larger than its request");
                hints.push(h.token_time as i64 - h.server_time as i64);
            }
            Some(Message::HeartbeatAck(_)) => reply = Some(r),
            other => panic!("unexpected reply {other:?}: something bad was answered"),
        }
    }
    let reply = reply.expect("the heartbeat is answered");
    hints.sort();
    assert!(hints.len() == 2 && (-3610..=-3590).contains(&hints[0]) && (3590..=3610).contains(&hints[1]), "{hints:?}");
    assert!(reply.len() <= probe.len(), "reply {} > request {}", reply.len(), probe.len());
    assert!(stranger.recv_raw(Duration::from_millis(1)).is_none());

    let (status, log) = collector.terminate();
    assert!(status.success(), "{status:?}");
    let summary = log.lines().find(|l| l.contains("collector stopped")).expect("summary line");
    for expected in [
        "received=13",
        "malformed=5",
        "unauthenticated=4",
        "expired=1",
        "from_future=1",
        "replies_suppressed=1",
        "replies_sent=3",
        "time_hints=2",
        "heartbeats=2",
    ] {
        assert!(summary.contains(expected), "{expected} not in {summary}");
    }
    assert!(
        log.contains("clock_difference_secs=-3600") || log.contains("clock_difference_secs=-36"),
        "clock difference not logged:\n{log}"
    );
    assert!(!log.contains(key_text.trim_end_matches('=')), "the key appears in the log");
}

#[test]
fn invalid_config_exits_non_zero_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("collector.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:5000\"\n[notify.email]\nsmtp_host = \"h\"\nfrom = \"a@b.c\"\nto = []\n")
        .unwrap();
    let out = std::process::Command::new(sos_e2e::bin::bin("sos-collector"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("collector.toml") && err.contains("notify.email.to"), "{err}");
}

/// A third-party agent following docs/PROTOCOL.md to the letter: a minimal SOS (required fields
/// only) padded to 112 bytes of plaintext is stored and acknowledged; the same SOS unpadded is
/// stored but its acknowledgement would be larger than it, so none is sent.
#[test]
fn a_minimal_sos_as_the_protocol_document_describes_it() {
    let dir = tempfile::tempdir().unwrap();
    let key_text = Key::generate();
    let key = Key::from_base64(&key_text).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let collector = CollectorProcess::start(
        dir.path(),
        addr,
        &format!("listen = \"{addr}\"\ndata_dir = \"{}\"\nkey = \"{key_text}\"\n", dir.path().join("d").display()),
    );
    let peer = Peer::new(addr, key.clone());
    let fernet = fernet::Fernet::new(&key_text).unwrap();
    let datagram = |plaintext: &str| {
        let mut d = header(key.id()).to_vec();
        d.extend_from_slice(fernet.encrypt_at_time(plaintext.as_bytes(), unix_now()).as_bytes());
        d
    };

    let id = sos_shared::AlertId::random();
    let minimal = format!(r#"{{"kind":"sos","alert_id":"{id}","triggered_at":{}}}"#, unix_now());
    assert!(minimal.len() < 112);
    peer.send_raw(&datagram(&minimal));
    let padded =
        format!(r#"{{"kind":"sos","alert_id":"{id}","triggered_at":{},"pad":"{}"}}"#, unix_now(), "x".repeat(40));
    assert!(padded.len() >= 112);
    peer.send_raw(&datagram(&padded));
    loop {
        let reply = peer.recv_raw(WAIT).expect("the padded SOS is acknowledged");
        match peer.open(&reply) {
            // `stored` or `duplicate`, whichever of the two the store committed first.
            Some(Message::SosAck(ack)) => break assert_eq!(ack.alert_id, id),
            // No channel here: the sender is also told that nobody was reached, a push that
            // may come first (not a reply: no request of its size to answer).
            Some(Message::ResponderNotice(_)) => continue,
            other => panic!("expected sos_ack, got {other:?}"),
        }
    }
    let (_, log) = collector.terminate();
    let summary = log.lines().find(|l| l.contains("collector stopped")).expect("summary line");
    for expected in ["sos_stored=1", "sos_duplicate=1", "replies_suppressed=1", "replies_sent=1"] {
        assert!(summary.contains(expected), "{expected} not in {summary}");
    }
}
