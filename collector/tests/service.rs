//! The collector library driven in-process: a socket bound on 127.0.0.1:0, a shutdown future.

use std::time::{Duration, Instant};

use sos_collector::Config;
use sos_shared::protocol::{split_datagram, AckStatus, Sos};
use sos_shared::{unix_now, AlertId, Key, Message, TimeWindow};
use tokio::net::UdpSocket;

fn sos(id: AlertId) -> Message {
    Message::Sos(Sos {
        alert_id: id,
        test: false,
        triggered_at: unix_now(),
        attempt: 0,
        user: "u".into(),
        host: "h".into(),
        ip: "127.0.0.1".into(),
        location: "L".into(),
        message: String::new(),
        agent: "test".into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_acknowledged_only_after_it_is_stored_and_shutdown_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::from_base64(&Key::generate()).unwrap();
    // 300 alerts from one socket stand for 300 agents: lift the per-agent limit.
    let security = sos_collector::config::SecuritySettings {
        per_agent: sos_collector::ratelimit::Rate { per_sec: 10_000.0, burst: 10_000.0 },
        ..Default::default()
    };
    let config = Config { data_dir: dir.path().to_path_buf(), key: Some(key.clone()), security, ..Config::default() };
    let db_path = config.database_path();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sos_collector::run(socket, config, async {
        let _ = stop_rx.await;
    }));

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ids: Vec<AlertId> = (0..300).map(|_| AlertId::random()).collect();
    for id in &ids {
        let d = key.seal(&sos(*id), unix_now()).unwrap();
        client.send_to(&d, addr).await.unwrap();
    }
    let mut acked = std::collections::HashSet::new();
    let mut buf = vec![0u8; 2048];
    let mut resent = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < ids.len() {
        match tokio::time::timeout(Duration::from_secs(3), client.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => {
                let (_, token) = split_datagram(&buf[..n]).unwrap();
                let ack = match key.open(token, unix_now(), TimeWindow::default()).unwrap().message {
                    Message::SosAck(ack) => ack,
                    // Nobody can be reached on this collector (no channel but the log, no
                    // responder): each sender is told so by a push, which is not a reply.
                    Message::ResponderNotice(n) if n.event == sos_shared::protocol::NoticeEvent::Unanswered => continue,
                    other => panic!("neither an ack nor a notice: {other:?}"),
                };
                // The first transmission is stored; a retransmission (below) of an alert whose
                // ACK was lost is a duplicate, which is as stored: the collector says so only
                // for an id it has. (The client's socket also receives the unanswered notices
                // pushed to each sender: under the burst its buffer may drop an ACK.)
                match ack.status {
                    AckStatus::Stored => {}
                    AckStatus::Duplicate if resent => {}
                    AckStatus::Duplicate => {
                        panic!("{} acknowledged as a duplicate before any retransmission", ack.alert_id)
                    }
                }
                // An ACK means stored: the alert is in the file now.
                let conn = rusqlite::Connection::open(&db_path).unwrap();
                let n: i64 = conn
                    .query_row("SELECT COUNT(*) FROM alerts WHERE alert_id = ?1", [ack.alert_id.to_string()], |r| {
                        r.get(0)
                    })
                    .unwrap();
                assert_eq!(n, 1);
                acked.insert(ack.alert_id);
            }
            _ => {
                // UDP on loopback may drop under a burst if the receive buffer fills (the
                // pushed notices share it, and this client never confirms them, so they come
                // again); an agent would retransmit, and so do we, until the deadline.
                assert!(Instant::now() < deadline, "{} of {} acknowledged after a minute", acked.len(), ids.len());
                resent = true;
                for id in ids.iter().filter(|i| !acked.contains(i)) {
                    client.send_to(&key.seal(&sos(*id), unix_now()).unwrap(), addr).await.unwrap();
                }
            }
        }
    }
    stop_tx.send(()).unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(15), server).await.unwrap().unwrap().unwrap();
    assert_eq!(stats.sos_stored, 300);
    let conn = rusqlite::Connection::open(&db_path).unwrap();
    let jobs: i64 = conn
        .query_row("SELECT COUNT(*) FROM outbox WHERE channel = 'log' AND kind = 'alert'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jobs, 300);
}
