//! The tray agent's delivery service on paused tokio time: the spool, the not-delivered warning
//! on schedule, the resend after a restart, and no resend after an acknowledgement. A real UDP
//! socket plays the collector.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sos_agent::config::AgentConfig;
use sos_agent::delivery::{Delivery, Report};
use sos_agent::spool::Spool;
use sos_shared::protocol::{split_datagram, AckStatus, SosAck};
use sos_shared::{unix_now, AlertId, Key, Message, TimeWindow};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::time::Instant;

/// A collector that acknowledges SOS only while `answering`; it reports every SOS it sees.
struct Collector {
    addr: String,
    answering: Arc<AtomicBool>,
    seen: UnboundedReceiver<AlertId>,
}

async fn collector(key: Key, answering: bool) -> Collector {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    let answering = Arc::new(AtomicBool::new(answering));
    let (tx, seen) = unbounded_channel();
    let on = answering.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            let Ok((_, token)) = split_datagram(&buf[..n]) else { continue };
            let Ok(opened) = key.open(token, unix_now(), TimeWindow::default()) else { continue };
            let Message::Sos(sos) = opened.message else { continue }; // heartbeats go unanswered
            let _ = tx.send(sos.alert_id);
            if on.load(Ordering::SeqCst) {
                let ack = Message::SosAck(SosAck {
                    alert_id: sos.alert_id,
                    status: AckStatus::Stored,
                    server_time: unix_now(),
                });
                socket.send_to(&key.seal(&ack, unix_now()).unwrap(), from).await.unwrap();
            }
        }
    });
    Collector { addr, answering, seen }
}

type Reports = UnboundedReceiver<(Instant, Report)>;

fn start(key_text: &str, collector: &str, spool: &std::path::Path) -> (Delivery, Reports) {
    let config = AgentConfig::parse(
        &format!(
            "collectors = [\"{collector}\"]\nkey = \"{key_text}\"\nspool_dir = \"{}\"\nwarn_after_secs = 10\nheartbeat_secs = 3600\n",
            spool.display()
        ),
        None,
    )
    .unwrap();
    let (tx, rx) = unbounded_channel();
    let tx = Mutex::new(tx);
    let report = Arc::new(move |r: Report| {
        let _ = tx.lock().unwrap().send((Instant::now(), r));
    });
    (Delivery::start(&tokio::runtime::Handle::current(), &config, report), rx)
}

/// The next report that is not about connectivity.
async fn next(reports: &mut Reports) -> (Instant, Report) {
    loop {
        let r = tokio::time::timeout(Duration::from_secs(3600), reports.recv()).await.expect("no report").unwrap();
        if !matches!(r.1, Report::Connectivity(_)) {
            return r;
        }
    }
}

/// How long, in real time, a test waits for something that takes no time on an idle machine: a
/// bound on failure only, never waited out when all goes well.
const REAL_DEADLINE: Duration = Duration::from_secs(60);

/// Whether the spool empties within [`REAL_DEADLINE`] of real time. The sender is told of a
/// delivery first; the spool entry is removed after, on a blocking thread, which a loaded
/// machine may run long after the report: a test waits for the removal itself.
async fn spool_empties(spool: &std::path::Path) -> bool {
    let deadline = std::time::Instant::now() + REAL_DEADLINE;
    while std::time::Instant::now() < deadline {
        if pending(spool).is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

fn pending(spool: &std::path::Path) -> Vec<AlertId> {
    Spool::open(spool).unwrap().pending().unwrap().into_iter().map(|s| s.alert_id).collect()
}

#[tokio::test(start_paused = true)]
async fn unreachable_collector_spools_warns_after_warn_after_secs_and_delivers_once_when_back() {
    let key_text = Key::generate();
    let key = Key::from_base64(&key_text).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut c = collector(key, false).await;
    let (delivery, mut reports) = start(&key_text, &c.addr, spool.path());

    let pressed = Instant::now();
    let id = delivery.trigger(false, "", None);
    assert!(matches!(next(&mut reports).await.1, Report::Sending { alert_id, .. } if alert_id == id));
    // On disk before anything went out.
    assert_eq!(pending(spool.path()), vec![id]);

    let (at, warning) = next(&mut reports).await;
    assert!(matches!(warning, Report::NotDeliveredYet { alert_id, .. } if alert_id == id), "{warning:?}");
    let after = at - pressed;
    assert!(after >= Duration::from_secs(10) && after < Duration::from_secs(11), "warned after {after:?}");
    assert_eq!(pending(spool.path()), vec![id], "left the spool without an acknowledgement");

    c.answering.store(true, Ordering::SeqCst);
    let (_, delivered) = next(&mut reports).await;
    assert!(matches!(delivered, Report::Delivered { alert_id, .. } if alert_id == id), "{delivered:?}");
    assert!(spool_empties(spool.path()).await);
    // Transmissions stop with the acknowledgement: an hour later nothing more was sent.
    while c.seen.try_recv().is_ok() {}
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(c.seen.try_recv().is_err(), "an acknowledged alert was sent again");
}

#[tokio::test(start_paused = true)]
async fn a_restart_resends_what_was_not_acknowledged_and_nothing_that_was() {
    let key_text = Key::generate();
    let key = Key::from_base64(&key_text).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut silent = collector(key.clone(), false).await;

    // First run: one alert acknowledged by a collector, then one that no collector answers
    // before the agent is stopped.
    let mut live = collector(key.clone(), true).await;
    let (first, mut reports) = start(&key_text, &live.addr, spool.path());
    let acked = first.trigger(false, "acknowledged", None);
    while !matches!(next(&mut reports).await.1, Report::Delivered { .. }) {}
    // The Delivered report comes before the spool entry is removed: stopped in between, the
    // agent would rightly resend it after the restart (the collector deduplicates it). What
    // this test is about is an alert whose delivery was recorded, so wait for the record.
    assert!(spool_empties(spool.path()).await, "the acknowledged alert stayed in the spool");
    first.stop();
    drop((first, reports));
    let (second, reports) = start(&key_text, &silent.addr, spool.path());
    let unacked = second.trigger(false, "not acknowledged", None);
    assert_eq!(silent.seen.recv().await, Some(unacked));
    second.stop();
    drop((second, reports));
    assert_eq!(pending(spool.path()), vec![unacked]);
    while live.seen.try_recv().is_ok() {}

    // Restart: the unacknowledged alert goes out again, with its id; the acknowledged one never.
    let (_third, mut reports) = start(&key_text, &live.addr, spool.path());
    let delivered = loop {
        let r = next(&mut reports).await.1;
        if !matches!(r, Report::Sending { .. }) {
            break r;
        }
    };
    assert!(matches!(delivered, Report::Delivered { alert_id, .. } if alert_id == unacked), "{delivered:?}");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let mut resent = Vec::new();
    while let Ok(id) = live.seen.try_recv() {
        resent.push(id);
    }
    assert!(resent.contains(&unacked));
    assert!(!resent.contains(&acked), "an acknowledged alert was resent after the restart");
    assert!(spool_empties(spool.path()).await);
}

/// A file that is not an alert is set aside and reported once, and an alert spooled by an
/// older agent with a message too long to seal is sent, cut, while a new press is delivered.
/// Real time on two workers: the old code spun on the unsealable alert and starved every other
/// task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_spool_entry_is_set_aside_while_an_overlong_one_and_a_new_press_are_delivered() {
    let key_text = Key::generate();
    let key = Key::from_base64(&key_text).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut overlong = sos_agent::send::new_sos(&sos_agent::identity::Identity::current(), "", "", false);
    overlong.message = "x".repeat(2000);
    std::fs::write(
        spool.path().join(format!("{}.json", overlong.alert_id)),
        serde_json::to_vec(&serde_json::json!({ "sos": overlong })).unwrap(),
    )
    .unwrap();
    std::fs::write(spool.path().join("0000000000000000000000000000000f.json"), b"{\"sos\": tru").unwrap();
    let c = collector(key, true).await;
    let (delivery, mut reports) = start(&key_text, &c.addr, spool.path());
    let id = delivery.trigger(false, "after the poison", None);

    let mut rejected = Vec::new();
    let mut delivered = Vec::new();
    tokio::time::timeout(REAL_DEADLINE, async {
        while !(delivered.contains(&id) && delivered.contains(&overlong.alert_id) && !rejected.is_empty()) {
            match next(&mut reports).await.1 {
                Report::Delivered { alert_id, .. } => delivered.push(alert_id),
                Report::Rejected { alert_id, reason } => rejected.push((alert_id, reason)),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("delivered: {delivered:?}, set aside: {rejected:?}"));
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].1.contains("0000000000000000000000000000000f.json"), "{rejected:?}");
    let aside = Spool::open(spool.path()).unwrap().rejected();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(spool_empties(spool.path()).await);
    // Reported once: later rescans stay quiet about it. Two later rescans are seen to happen
    // (not assumed from a sleep, which a loaded machine can outlast with no rescan at all):
    // each picks up an alert put in the spool after the previous one was delivered. A rescan
    // reports what it set aside before it launches what it found, so a second report of the
    // bad file would come before that alert's delivery.
    for probe in ["first later rescan", "second later rescan"] {
        let sos = sos_agent::send::new_sos(&sos_agent::identity::Identity::current(), "", probe, false);
        Spool::open(spool.path()).unwrap().put(&sos).unwrap();
        tokio::time::timeout(REAL_DEADLINE, async {
            loop {
                match next(&mut reports).await.1 {
                    Report::Delivered { alert_id, .. } if alert_id == sos.alert_id => break,
                    r @ Report::Rejected { .. } => panic!("reported again: {r:?}"),
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the {probe} did not deliver what it found"));
    }
    delivery.stop();
}

/// A spool that cannot be created does not stop the service: the UI is told why, and a press is
/// delivered from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_spool_is_reported_and_alerts_go_out_from_memory() {
    let key_text = Key::generate();
    let key = Key::from_base64(&key_text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), b"").unwrap();
    let c = collector(key, true).await;
    let (delivery, mut reports) = start(&key_text, &c.addr, &dir.path().join("file/spool"));
    let id = delivery.trigger(false, "", None);
    let mut saw_problem = false;
    let mut saw_not_spooled = false;
    tokio::time::timeout(REAL_DEADLINE, async {
        loop {
            match next(&mut reports).await.1 {
                Report::SpoolProblem(Some(_)) => saw_problem = true,
                Report::NotSpooled { alert_id, .. } if alert_id == id => saw_not_spooled = true,
                Report::Delivered { alert_id, .. } if alert_id == id => break,
                _ => {}
            }
        }
    })
    .await
    .expect("not delivered from memory");
    assert!(saw_problem && saw_not_spooled);
    delivery.stop();
}
