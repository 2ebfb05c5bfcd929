//! What every datagram costs: encode and decode (JSON), seal and open (Fernet: AES-128-CBC +
//! HMAC-SHA256), and the structural check that runs before any decryption.
//!
//! `cargo bench -p sos-shared` (divan). Figures: docs/PERFORMANCE.md.

use divan::{black_box, Bencher};
use sos_shared::protocol::{split_datagram, Heartbeat, Sos};
use sos_shared::{unix_now, AlertId, Key, Message, TimeWindow};

fn main() {
    divan::main();
}

fn sos() -> Message {
    Message::Sos(Sos {
        alert_id: AlertId::random(),
        test: false,
        triggered_at: unix_now(),
        attempt: 0,
        user: "alice".into(),
        host: "desk-12.example.com".into(),
        ip: "10.0.0.12".into(),
        location: "Building A, floor 2, reception".into(),
        message: "aggressive visitor at the desk".into(),
        agent: "sos-agent/0.1.0".into(),
    })
}

fn heartbeat() -> Message {
    Message::Heartbeat(Heartbeat {
        user: "alice".into(),
        host: "desk-12".into(),
        ip: "10.0.0.12".into(),
        pad: String::new(),
        responder: false,
    })
}

fn key() -> Key {
    Key::from_base64(&Key::generate()).unwrap()
}

#[divan::bench(args = ["sos", "heartbeat"])]
fn encode(bencher: Bencher, kind: &str) {
    let m = if kind == "sos" { sos() } else { heartbeat() };
    bencher.bench(|| serde_json::to_vec(black_box(&m)).unwrap());
}

#[divan::bench(args = ["sos", "heartbeat"])]
fn decode(bencher: Bencher, kind: &str) {
    let json = serde_json::to_vec(&if kind == "sos" { sos() } else { heartbeat() }).unwrap();
    bencher.bench(|| serde_json::from_slice::<Message>(black_box(&json)).unwrap());
}

#[divan::bench(args = ["sos", "heartbeat"])]
fn seal(bencher: Bencher, kind: &str) {
    let (k, m) = (key(), if kind == "sos" { sos() } else { heartbeat() });
    let now = unix_now();
    bencher.bench(|| k.seal(black_box(&m), now).unwrap());
}

#[divan::bench(args = ["sos", "heartbeat"])]
fn open(bencher: Bencher, kind: &str) {
    let k = key();
    let d = k.seal(&if kind == "sos" { sos() } else { heartbeat() }, unix_now()).unwrap();
    let (_, token) = split_datagram(&d).unwrap();
    let now = unix_now();
    bencher.bench(|| k.open(black_box(token), now, TimeWindow::default()).unwrap());
}

/// A forged datagram with a known key id: the HMAC is all it costs before it is dropped.
#[divan::bench]
fn open_forged(bencher: Bencher) {
    let k = key();
    let mut d = k.seal(&sos(), unix_now()).unwrap();
    let n = d.len();
    d[n - 5] = if d[n - 5] == b'A' { b'B' } else { b'A' };
    let (_, token) = split_datagram(&d).unwrap();
    bencher.bench(|| k.open(black_box(token), unix_now(), TimeWindow::default()).is_err());
}

#[divan::bench]
fn split(bencher: Bencher) {
    let d = key().seal(&sos(), unix_now()).unwrap();
    bencher.bench(|| split_datagram(black_box(&d)).is_ok());
}
