//! The agent's send path against real UDP sockets playing collectors.
//!
//! On paused tokio time: the clock moves only when every task is idle, and a datagram waiting
//! on a socket wakes its reader in the turn where the runtime would otherwise have moved the
//! clock, which then stays put. So a retransmission happens only when its backoff has run out
//! with no answer on the way — never because a loaded machine ran the collector or the reader
//! later than the backoff in real time. Counts of transmissions are exact whatever the load.

use std::time::Duration;

use sos_agent::identity::Identity;
use sos_agent::send::{new_sos, SendError};
use sos_agent::Sender;
use sos_shared::backoff::Backoff;
use sos_shared::protocol::{split_datagram, AckStatus, SosAck};
use sos_shared::{unix_now, AlertId, Key, Message, TimeWindow};
use tokio::net::UdpSocket;

/// A collector that ignores the first `drop` SOS it receives, then acknowledges; it reports
/// every (alert id, attempt) it saw.
async fn lossy_collector(key: Key, drop: usize) -> (String, tokio::sync::mpsc::UnboundedReceiver<(AlertId, u32)>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let mut seen = 0;
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            let (_, token) = split_datagram(&buf[..n]).unwrap();
            let Message::Sos(sos) = key.open(token, unix_now(), TimeWindow::default()).unwrap().message else {
                continue;
            };
            let _ = tx.send((sos.alert_id, sos.attempt));
            seen += 1;
            if seen > drop {
                let ack = Message::SosAck(SosAck {
                    alert_id: sos.alert_id,
                    status: AckStatus::Stored,
                    server_time: unix_now(),
                });
                socket.send_to(&key.seal(&ack, unix_now()).unwrap(), from).await.unwrap();
            }
        }
    });
    (addr, rx)
}

fn fast() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_millis(200))
}

#[tokio::test(start_paused = true)]
async fn retransmits_with_the_same_alert_id_until_acknowledged() {
    let key = Key::from_base64(&Key::generate()).unwrap();
    let (addr, mut seen) = lossy_collector(key.clone(), 3).await;
    let sender = Sender::with(key, vec![addr.clone()], fast());
    let sos = new_sos(&Identity::current(), "Lab", "", false);
    let id = sos.alert_id;
    let d = sender.send(sos, Duration::from_secs(10)).await.unwrap();
    assert_eq!(d.alert_id, id);
    assert_eq!(d.collector.to_string(), addr);
    assert_eq!(d.transmissions, 4);
    let mut attempts = Vec::new();
    while let Ok((a, n)) = seen.try_recv() {
        assert_eq!(a, id);
        attempts.push(n);
    }
    assert_eq!(attempts, vec![0, 1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn fails_over_to_a_live_collector_without_waiting_out_the_dead_one() {
    let key = Key::from_base64(&Key::generate()).unwrap();
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap(); // bound, never answers
    let (live, _seen) = lossy_collector(key.clone(), 0).await;
    let sender = Sender::with(key, vec![dead.local_addr().unwrap().to_string(), live.clone()], fast());
    let d = sender.send(new_sos(&Identity::current(), "", "", false), Duration::from_secs(10)).await.unwrap();
    assert_eq!(d.collector.to_string(), live);
    assert!(d.transmissions <= 3, "{d:?}");
    // Not the 10 s deadline: one short wait for the dead one (in tokio time).
    assert!(d.elapsed < Duration::from_secs(1), "{d:?}");
}

#[tokio::test(start_paused = true)]
async fn an_ack_sealed_with_another_key_or_for_another_alert_is_ignored() {
    let key = Key::from_base64(&Key::generate()).unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    let k = key.clone();
    // How many SOS got both wrong answers.
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let other = Key::from_base64(&Key::generate()).unwrap();
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            let (_, token) = split_datagram(&buf[..n]).unwrap();
            let Message::Sos(sos) = k.open(token, unix_now(), TimeWindow::default()).unwrap().message else { continue };
            let wrong_key =
                Message::SosAck(SosAck { alert_id: sos.alert_id, status: AckStatus::Stored, server_time: 0 });
            socket.send_to(&other.seal(&wrong_key, unix_now()).unwrap(), from).await.unwrap();
            let wrong_id =
                Message::SosAck(SosAck { alert_id: AlertId::random(), status: AckStatus::Stored, server_time: 0 });
            socket.send_to(&k.seal(&wrong_id, unix_now()).unwrap(), from).await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let sender = Sender::with(key, vec![addr], fast());
    let err = sender.send(new_sos(&Identity::current(), "", "", false), Duration::from_millis(600)).await.unwrap_err();
    assert!(err.to_string().starts_with("not acknowledged"), "{err}");
    // The wrong answers did reach the sender before it gave up (paused time: each was read
    // before the clock moved on), and did not stop it retransmitting.
    let SendError::NotAcknowledged(n) = err else { unreachable!() };
    assert!(n.transmissions >= 2, "{n:?}");
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), n.transmissions, "{n:?}");
}
