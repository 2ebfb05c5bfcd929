//! `responder`: the responder loop's two latencies over real UDP sockets standing in for
//! agents, against a real collector with two responders configured: press → the responder
//! desktop's `alert_broadcast`, and `respond` → the sender's `responder_notice`. The three
//! agents are enrolled with one-time codes (`sos-collector enroll`, then the SPAKE2 exchange).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use sos_shared::enroll::{AgentHandshake, Code, EnrollMessage};
use sos_shared::protocol::{
    split_datagram, BroadcastReceipt, BroadcastState, Heartbeat, NoticeEvent, NoticeReceipt, Respond, Sos, HEADER_LEN,
};
use sos_shared::{unix_now, AlertId, Key, Message, TimeWindow};
use tokio::net::UdpSocket;
use tokio::time::{timeout, Instant};

use crate::collector::{Collector, Limits};
use crate::{ms, Dist};

/// Two responders, each with one desktop.
const RESPONDERS: &str = "[[responders]]\nname = \"Sam Lee\"\nagents = [\"bench-desk-1\"]\n\
                          [[responders]]\nname = \"Kim Park\"\nagents = [\"bench-desk-2\"]\n";

/// A hand-made agent: its socket (connected to the collector) and its own key.
struct Agent {
    socket: UdpSocket,
    key: Key,
}

impl Agent {
    async fn send(&self, m: &Message) -> anyhow::Result<()> {
        self.socket.send(&self.key.seal(m, unix_now())?).await?;
        Ok(())
    }

    /// The next message `want` accepts within `wait`.
    async fn next<T>(&self, wait: Duration, mut want: impl FnMut(Message) -> Option<T>) -> anyhow::Result<T> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 2048];
        loop {
            let n = match timeout(deadline.saturating_duration_since(Instant::now()), self.socket.recv(&mut buf)).await
            {
                Ok(r) => r?,
                Err(_) => bail!("nothing expected within {wait:?}"),
            };
            let Ok((_, token)) = split_datagram(&buf[..n]) else { continue };
            let Ok(o) = self.key.open(token, unix_now(), TimeWindow::default()) else { continue };
            // Confirm every push, as the agent does (else the collector repeats it).
            match &o.message {
                Message::AlertBroadcast(b) => {
                    self.send(&Message::BroadcastReceipt(BroadcastReceipt { alert_id: b.alert_id, seq: b.seq })).await?
                }
                Message::ResponderNotice(n) => {
                    self.send(&Message::NoticeReceipt(NoticeReceipt { alert_id: n.alert_id, event: n.event })).await?
                }
                _ => {}
            }
            if let Some(t) = want(o.message) {
                return Ok(t);
            }
        }
    }

    async fn heartbeat(&self, host: &str, responder: bool) -> anyhow::Result<()> {
        let hb = Message::Heartbeat(Heartbeat {
            user: "bench".into(),
            host: host.into(),
            ip: String::new(),
            pad: "0".repeat(160),
            responder,
        });
        // The collector reloads its registry once a second: until then the key is unknown.
        for _ in 0..20 {
            self.send(&hb).await?;
            if self
                .next(Duration::from_millis(250), |m| matches!(m, Message::HeartbeatAck(_)).then_some(()))
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        bail!("{host}: no heartbeat answer")
    }
}

/// Enroll `name` with a code from `sos-collector enroll`: a socket and the agent's own key.
async fn enroll(bin: &PathBuf, config: &PathBuf, to: SocketAddr, name: &str) -> anyhow::Result<Agent> {
    let out = std::process::Command::new(bin).args(["enroll", "--name", name, "--config"]).arg(config).output()?;
    anyhow::ensure!(out.status.success(), "sos-collector enroll: {}", String::from_utf8_lossy(&out.stderr));
    let code = Code::parse(String::from_utf8(out.stdout)?.trim())?;
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(to).await?;
    let mut buf = vec![0u8; 2048];
    let answer = |buf: &[u8]| -> Option<EnrollMessage> {
        EnrollMessage::from_body(std::str::from_utf8(buf.get(HEADER_LEN..)?).ok()?).ok()
    };
    let (handshake, start) = AgentHandshake::start(&code);
    let challenge = loop {
        socket.send(&start).await?;
        if let Ok(Ok(n)) = timeout(Duration::from_millis(500), socket.recv(&mut buf)).await {
            if let Some(m) = answer(&buf[..n]) {
                break m;
            }
        }
    };
    let (session, finish) = handshake.on_challenge(&challenge, name)?;
    let done = loop {
        socket.send(&finish).await?;
        if let Ok(Ok(n)) = timeout(Duration::from_millis(500), socket.recv(&mut buf)).await {
            if let Some(m) = answer(&buf[..n]) {
                break m;
            }
        }
    };
    let key = Key::from_base64(&session.on_done(&done)?.key)?;
    Ok(Agent { socket, key })
}

/// Run the scenario: `alerts` alerts one after the other.
pub async fn responder(bin: &PathBuf, alerts: usize) -> anyhow::Result<()> {
    let c = Collector::start_with(bin, Limits::Default, RESPONDERS)?;
    let config = c.config_path();
    let sam = enroll(bin, &config, c.addr, "bench-desk-1").await.context("enroll Sam's desk")?;
    let kim = enroll(bin, &config, c.addr, "bench-desk-2").await.context("enroll Kim's desk")?;
    let sender = enroll(bin, &config, c.addr, "bench-reception").await.context("enroll the sender")?;
    sam.heartbeat("desk-1", true).await?;
    kim.heartbeat("desk-2", true).await?;
    sender.heartbeat("reception", false).await?;
    // Presence reaches the store every 2 s: then the desks count as reachable.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let wait = Duration::from_secs(10);
    let (mut to_popup, mut to_notice) = (Vec::new(), Vec::new());
    for i in 0..alerts {
        if i % 20 == 0 {
            // Stay online (the desks' agents heartbeat every 20 s).
            sam.heartbeat("desk-1", true).await?;
            kim.heartbeat("desk-2", true).await?;
            sender.heartbeat("reception", false).await?;
        }
        // One alert at a time, as people press: the previous one's last pushes are over.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let id = AlertId::from_u128(crate::load::new_id());
        let sos = Sos {
            alert_id: id,
            test: false,
            triggered_at: unix_now(),
            attempt: 0,
            user: "alice".into(),
            host: "reception".into(),
            ip: "127.0.0.1".into(),
            location: "Building A, floor 2, reception".into(),
            message: String::new(),
            agent: "sos-bench".into(),
        };
        let pressed = Instant::now();
        sender.send(&Message::Sos(sos)).await?;
        let open = |m: Message| match m {
            Message::AlertBroadcast(b) if b.alert_id == id && b.state == BroadcastState::Open => Some(()),
            _ => None,
        };
        sam.next(wait, open).await.with_context(|| format!("alert {i}: no broadcast on Sam's desk"))?;
        to_popup.push(pressed.elapsed());
        kim.next(wait, open).await.with_context(|| format!("alert {i}: no broadcast on Kim's desk"))?;

        let acknowledged = Instant::now();
        sam.send(&Message::Respond(Respond::padded(id, "on my way".into()))).await?;
        sender
            .next(wait, |m| {
                matches!(m, Message::ResponderNotice(n) if n.alert_id == id && n.event == NoticeEvent::Acknowledged)
                    .then_some(())
            })
            .await
            .with_context(|| format!("alert {i}: no notice for the sender"))?;
        to_notice.push(acknowledged.elapsed());
    }
    let (popup, notice) = (Dist::new(to_popup), Dist::new(to_notice));
    println!(
        "| responder: {alerts} alerts, one every ~200 ms, 2 responder desktops and a sender (enrolled, real UDP) | press → broadcast on a desk: p50 {} p99 {} max {} | respond → sender's notice: p50 {} p99 {} max {} | | |",
        ms(popup.p(0.5)),
        ms(popup.p(0.99)),
        ms(popup.max()),
        ms(notice.p(0.5)),
        ms(notice.p(0.99)),
        ms(notice.max()),
    );
    Ok(())
}
