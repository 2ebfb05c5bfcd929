//! A third-party agent written from docs/PROTOCOL.md alone: every request kind in its minimal
//! layout (required fields only, as the document lists them), hand-written JSON sealed with an
//! independent Fernet implementation (the `fernet` crate, not `sos_shared::Key::seal`). Padded to
//! the minimum of section 6.3 every request gets its reply; one byte of plaintext less, the
//! reply would be larger than the request, and the collector neither answers nor (for `cancel`)
//! records anything.

use std::net::SocketAddr;
use std::time::Duration;

use sos_collector::store::Db;
use sos_e2e::{free_udp_port, CollectorProcess, Peer};
use sos_shared::protocol::{
    header, sealed_len, KeyId, MIN_CANCEL_PLAINTEXT, MIN_HEARTBEAT_NEW_KEY_PLAINTEXT, MIN_HEARTBEAT_PLAINTEXT,
    MIN_SOS_PLAINTEXT, MIN_TIME_HINT_PLAINTEXT,
};
use sos_shared::{unix_now, AlertId, Key, Message};

const WAIT: Duration = Duration::from_secs(10);
/// Long enough to be sure no reply is coming: replies go out within milliseconds on loopback.
const SILENCE: Duration = Duration::from_secs(2);

/// A peer that seals hand-written JSON with its own Fernet.
struct ThirdParty {
    peer: Peer,
    fernet: fernet::Fernet,
    key_id: KeyId,
}

impl ThirdParty {
    fn new(addr: SocketAddr, key_text: &str) -> Self {
        let key = Key::from_base64(key_text).unwrap();
        ThirdParty { key_id: key.id(), peer: Peer::new(addr, key), fernet: fernet::Fernet::new(key_text).unwrap() }
    }

    /// `json` (which must end with `}`) padded with a `pad` member to exactly `len` bytes.
    fn padded(json: &str, len: usize) -> String {
        let bare = json.len() + r#","pad":"""#.len();
        assert!(len >= bare, "{json} is longer than {len} once padded");
        format!("{},\"pad\":\"{}\"}}", &json[..json.len() - 1], "0".repeat(len - bare))
    }

    /// Seal `plaintext` at `time` and send it; returns the datagram's length.
    fn send_at(&self, plaintext: &str, time: u64) -> usize {
        let mut d = header(self.key_id).to_vec();
        d.extend_from_slice(self.fernet.encrypt_at_time(plaintext.as_bytes(), time).as_bytes());
        assert_eq!(d.len(), sealed_len(plaintext.len()), "section 3.2's formula");
        self.peer.send_raw(&d);
        d.len()
    }

    fn send(&self, plaintext: &str) -> usize {
        self.send_at(plaintext, unix_now())
    }

    /// The reply, opened, if one comes within `wait`; checks that it is no larger than `request`.
    /// Pushes (section 10: here the `unanswered` notice of an alert nobody can be reached for)
    /// are not replies, and are skipped.
    fn reply(&self, request: usize, wait: Duration) -> Option<Message> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let d = self.peer.recv_raw(deadline.checked_duration_since(std::time::Instant::now())?)?;
            let m = self.peer.open(&d).expect("a datagram sealed with our key");
            if matches!(m, Message::ResponderNotice(_) | Message::AlertBroadcast(_)) {
                continue;
            }
            assert!(d.len() <= request, "a {}-byte reply to a {request}-byte request", d.len());
            return Some(m);
        }
    }
}

#[test]
fn every_request_in_its_minimal_layout_gets_its_reply_once_padded_to_the_documented_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let site_text = Key::generate();
    // An enrolled agent with a pending rotation, so that a heartbeat_ack can carry new_key.
    let (agent_text, agent_id) = {
        let mut db = Db::open(&data.join("sos.db")).unwrap();
        let now = sos_collector::store::now_ms();
        let code = db.create_enrollment("Reception", 600_000, now).unwrap();
        let enrolled = db.complete_enrollment(code.id(), "desk-3", now).unwrap().unwrap();
        db.rotate(&enrolled.agent_id, now).unwrap();
        (enrolled.key.clone(), enrolled.agent_id.clone())
    };
    let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let collector = CollectorProcess::start(
        dir.path(),
        addr,
        &format!("listen = \"{addr}\"\ndata_dir = \"{}\"\nkey = \"{site_text}\"\n", data.display()),
    );
    let site = ThirdParty::new(addr, &site_text);
    let now = unix_now();

    // sos: required fields only.
    let id = AlertId::random();
    let sos = format!(r#"{{"kind":"sos","alert_id":"{id}","triggered_at":{now}}}"#);
    let n = site.send(&ThirdParty::padded(&sos, MIN_SOS_PLAINTEXT - 1));
    assert_eq!(site.reply(n, SILENCE), None, "one byte short: no sos_ack (the alert is stored all the same)");
    let n = site.send(&ThirdParty::padded(&sos, MIN_SOS_PLAINTEXT));
    match site.reply(n, WAIT) {
        Some(Message::SosAck(ack)) => assert_eq!(ack.alert_id, id),
        other => panic!("expected sos_ack, got {other:?}"),
    }

    // cancel: required fields only. The document's example: 63 bytes, a 176-byte datagram.
    let cancel = format!(r#"{{"kind":"cancel","alert_id":"{id}"}}"#);
    assert_eq!((cancel.len(), sealed_len(cancel.len())), (63, 176));
    let n = site.send(&cancel);
    assert_eq!(site.reply(n, SILENCE), None, "too small for its cancel_ack");
    let n = site.send(&ThirdParty::padded(&cancel, MIN_CANCEL_PLAINTEXT - 1));
    assert_eq!(site.reply(n, SILENCE), None, "one byte short: no cancel_ack");
    let cancelled = |id: &AlertId| -> Option<i64> {
        let c = rusqlite::Connection::open(data.join("sos.db")).unwrap();
        c.query_row("SELECT cancelled_at_ms FROM alerts WHERE alert_id = ?1", [id.to_string()], |r| r.get(0)).unwrap()
    };
    assert_eq!(cancelled(&id), None, "a cancellation whose acknowledgement cannot be sent is not recorded");
    let n = site.send(&ThirdParty::padded(&cancel, MIN_CANCEL_PLAINTEXT));
    match site.reply(n, WAIT) {
        Some(Message::CancelAck(ack)) => assert_eq!(ack.alert_id, id),
        other => panic!("expected cancel_ack, got {other:?}"),
    }
    assert!(cancelled(&id).is_some());

    // heartbeat: no field is required.
    let heartbeat = r#"{"kind":"heartbeat"}"#;
    let n = site.send(heartbeat);
    assert_eq!(site.reply(n, SILENCE), None, "the bare heartbeat is too small for any answer");
    let n = site.send(&ThirdParty::padded(heartbeat, MIN_HEARTBEAT_PLAINTEXT - 1));
    assert_eq!(site.reply(n, SILENCE), None);
    let n = site.send(&ThirdParty::padded(heartbeat, MIN_HEARTBEAT_PLAINTEXT));
    assert!(matches!(site.reply(n, WAIT), Some(Message::HeartbeatAck(_))));

    // heartbeat of an agent whose key was rotated: answered without the key below 112 bytes,
    // with it from 112 on. The key is offered until the agent uses it, so nothing is lost.
    let agent = ThirdParty::new(addr, &agent_text);
    let n = agent.send(&ThirdParty::padded(heartbeat, MIN_HEARTBEAT_NEW_KEY_PLAINTEXT - 1));
    match agent.reply(n, WAIT) {
        Some(Message::HeartbeatAck(ack)) => assert!(ack.new_key.is_none()),
        other => panic!("expected heartbeat_ack, got {other:?}"),
    }
    let n = agent.send(&ThirdParty::padded(heartbeat, MIN_HEARTBEAT_NEW_KEY_PLAINTEXT));
    let new_key = match agent.reply(n, WAIT) {
        Some(Message::HeartbeatAck(ack)) => ack.new_key.expect("the rotated key"),
        other => panic!("expected heartbeat_ack, got {other:?}"),
    };
    assert_ne!(new_key, agent_text, "agent {agent_id} gets its next key");

    // time_hint: any authentic request refused for its age.
    let stale = now - 3600;
    let old_sos = format!(r#"{{"kind":"sos","alert_id":"{}","triggered_at":{stale}}}"#, AlertId::random());
    let n = site.send_at(&ThirdParty::padded(&old_sos, MIN_TIME_HINT_PLAINTEXT.max(old_sos.len() + 9)), stale);
    match site.reply(n, WAIT) {
        Some(Message::TimeHint(h)) => assert_eq!(h.token_time, stale),
        other => panic!("expected time_hint, got {other:?}"),
    }
    let n = site.send_at(&ThirdParty::padded(heartbeat, MIN_TIME_HINT_PLAINTEXT - 1), stale);
    assert_eq!(site.reply(n, SILENCE), None, "one byte short: no time_hint");
    let n = site.send_at(&ThirdParty::padded(heartbeat, MIN_TIME_HINT_PLAINTEXT), stale);
    assert!(matches!(site.reply(n, WAIT), Some(Message::TimeHint(_))));

    drop(collector);
}

/// Section 8 to the letter: SPAKE2 with the identities and derivations given, JSON bodies after
/// an all-zero key id, requests padded to 900 bytes, byte strings (`pake`, `confirm`, `host`) in
/// base64url without padding, `sealed` a Fernet token with `=` padding.
#[test]
fn enrollment_as_the_protocol_document_describes_it() {
    use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    use hmac::{Hmac, Mac as _};
    use sha2::{Digest as _, Sha256};
    use spake2::{Ed25519Group, Identity, Password, Spake2};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let code = {
        let mut db = Db::open(&data.join("sos.db")).unwrap();
        db.create_enrollment("Reception desk 3", 600_000, sos_collector::store::now_ms()).unwrap().to_string()
    };
    let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let _collector = CollectorProcess::start(
        dir.path(),
        addr,
        &format!("listen = \"{addr}\"\ndata_dir = \"{}\"\nkey = \"{}\"\n", data.display(), Key::generate()),
    );
    let code: String = code.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let (id, secret) = code.split_at(4);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let exchange = |json: &str| -> serde_json::Value {
        let fill = 900 - 12 - json.len() - r#","pad":"""#.len();
        let padded = format!("{},\"pad\":\"{}\"}}", &json[..json.len() - 1], "0".repeat(fill));
        let mut d = b"SOS\x01\0\0\0\0\0\0\0\0".to_vec();
        d.extend_from_slice(padded.as_bytes());
        assert_eq!(d.len(), 900);
        socket.send_to(&d, addr).unwrap();
        let mut buf = [0u8; 2048];
        let n = socket.recv(&mut buf).expect("an answer");
        assert_eq!(&buf[..12], &d[..12], "the same all-zero header");
        serde_json::from_slice(&buf[12..n]).unwrap()
    };
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let (state, pake_a) = Spake2::<Ed25519Group>::start_a(
        &Password::new(secret.as_bytes()),
        &Identity::new(format!("sos-agent {id}").as_bytes()),
        &Identity::new(format!("sos-collector {id}").as_bytes()),
    );
    let challenge = exchange(&format!(r#"{{"kind":"enroll_start","enrollment":"{id}","pake":"{}"}}"#, b64(&pake_a)));
    assert_eq!(challenge["kind"], "enroll_challenge");
    let pake_b = URL_SAFE_NO_PAD.decode(challenge["pake"].as_str().unwrap()).expect("pake: base64url, no padding");
    let k = state.finish(&pake_b).unwrap();
    let derive = |label: &str| -> [u8; 32] {
        Sha256::new().chain_update(b"SOS enroll v1 ").chain_update(label).chain_update(&k).finalize().into()
    };
    let hmac = |key: &[u8; 32], parts: &[&[u8]]| {
        let mut m = <Hmac<Sha256>>::new_from_slice(key).unwrap();
        parts.iter().for_each(|p| m.update(p));
        m.finalize().into_bytes().to_vec()
    };
    let confirm_c = URL_SAFE_NO_PAD.decode(challenge["confirm"].as_str().unwrap()).unwrap();
    assert_eq!(confirm_c, hmac(&derive("collector"), &[b"challenge", id.as_bytes()]), "the collector knows the code");

    let host = "desk-3.example.com";
    let confirm_a = hmac(&derive("agent"), &[b"finish", id.as_bytes(), host.as_bytes()]);
    let done = exchange(&format!(
        r#"{{"kind":"enroll_finish","enrollment":"{id}","host":"{}","confirm":"{}"}}"#,
        b64(host.as_bytes()),
        b64(&confirm_a)
    ));
    assert_eq!(done["kind"], "enroll_done");
    let sealed = done["sealed"].as_str().unwrap();
    let wrap = fernet::Fernet::new(&URL_SAFE.encode(derive("wrap"))).unwrap();
    let plain = wrap.decrypt(sealed).expect("a Fernet token under K_wrap, in its usual text form");
    let enrolled: serde_json::Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(enrolled["name"], "Reception desk 3");
    assert_eq!(enrolled["agent_id"].as_str().unwrap().len(), 16);
    let key_text = enrolled["key"].as_str().unwrap();

    // The new key works at once: a heartbeat sealed with it is answered.
    let agent = ThirdParty::new(addr, key_text);
    let n = agent.send(&ThirdParty::padded(r#"{"kind":"heartbeat"}"#, MIN_HEARTBEAT_PLAINTEXT));
    assert!(matches!(agent.reply(n, WAIT), Some(Message::HeartbeatAck(_))));
    // And the collector recorded the host as sent (decoded), not its encoding.
    let c = rusqlite::Connection::open(data.join("sos.db")).unwrap();
    let stored: String = c.query_row("SELECT host FROM enrolled", [], |r| r.get(0)).unwrap();
    assert_eq!(stored, host);
}
