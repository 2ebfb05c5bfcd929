//! A UDP relay for fault injection between agents and a collector: it loses, duplicates and
//! delays (and so reorders) datagrams, independently in each direction, and can black out.
//!
//! Each client address gets its own upstream socket, so the collector sees one peer per agent
//! and its replies find their way back, as through a NAT.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// What happens to datagrams going one way.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram that is not dropped is delivered twice.
    pub duplicate: f64,
    /// Each copy is delayed by a uniformly random time in this range (so datagrams reorder).
    pub delay: (Duration, Duration),
}

impl Faults {
    /// A perfect link.
    pub const NONE: Faults = Faults { loss: 0.0, duplicate: 0.0, delay: (Duration::ZERO, Duration::ZERO) };
}

/// What the relay did in one direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Datagrams received to relay.
    pub received: u64,
    /// Copies sent on (duplicates included).
    pub sent: u64,
    /// Dropped by chance.
    pub lost: u64,
    /// Dropped because of a blackout.
    pub blacked_out: u64,
    /// Extra copies made.
    pub duplicated: u64,
}

#[derive(Debug, Default)]
struct Shared {
    blackout: AtomicBool,
    /// Agents → collector, collector → agents.
    counts: Mutex<(Counts, Counts)>,
    changed: Condvar,
}

/// The relay. Agents are configured with [`Relay::addr`] as their collector.
#[derive(Debug)]
pub struct Relay {
    /// Where agents send.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Debug, Clone, Copy)]
enum Way {
    Up,
    Down,
}

impl Relay {
    /// Relay to `upstream`, applying `up` to agent → collector datagrams and `down` to the
    /// replies. `seed` makes the chance repeatable (print it when a test fails).
    pub fn start(upstream: SocketAddr, up: Faults, down: Faults, seed: u64) -> Relay {
        let front = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind the relay");
        front.set_nonblocking(true).unwrap();
        let addr = front.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("udp-relay".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(serve(front, upstream, up, down, sh, seed));
            })
            .unwrap();
        Relay { addr, shared }
    }

    /// Drop everything, both ways, until [`Relay::blackout`] is called with `false`.
    pub fn blackout(&self, on: bool) {
        self.shared.blackout.store(on, Ordering::SeqCst);
    }

    /// (agents → collector, collector → agents) so far.
    pub fn counts(&self) -> (Counts, Counts) {
        *self.shared.counts.lock().unwrap()
    }

    /// Wait until `pred` holds for the counts, up to `timeout`.
    ///
    /// # Panics
    /// On timeout.
    pub fn wait_counts(&self, timeout: Duration, what: &str, pred: impl Fn(&Counts, &Counts) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut c = self.shared.counts.lock().unwrap();
        while !pred(&c.0, &c.1) {
            let now = Instant::now();
            assert!(now < deadline, "relay: timed out waiting for {what}; counts {c:?}");
            c = self.shared.changed.wait_timeout(c, deadline - now).unwrap().0;
        }
    }
}

async fn serve(
    front: std::net::UdpSocket,
    upstream: SocketAddr,
    up: Faults,
    down: Faults,
    shared: Arc<Shared>,
    seed: u64,
) {
    let front = Arc::new(UdpSocket::from_std(front).unwrap());
    let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else { continue };
        let data = buf[..n].to_vec();
        let socket = match clients.get(&client) {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind an upstream socket"));
                clients.insert(client, s.clone());
                // Replies from the collector to this client.
                let (front, rng, shared, s2) = (front.clone(), rng.clone(), shared.clone(), s.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        match s2.recv_from(&mut buf).await {
                            Ok((n, from)) if from == upstream => {
                                relay(Way::Down, &down, &rng, &shared, front.clone(), client, buf[..n].to_vec());
                            }
                            // Stray datagrams, or ICMP errors while the collector is down.
                            _ => {}
                        }
                    }
                });
                s
            }
        };
        relay(Way::Up, &up, &rng, &shared, socket, upstream, data);
    }
}

fn relay(
    way: Way,
    faults: &Faults,
    rng: &Mutex<fastrand::Rng>,
    shared: &Shared,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    data: Vec<u8>,
) {
    let (lost, copies, delays) = {
        let mut rng = rng.lock().unwrap();
        let lost = rng.f64() < faults.loss;
        let copies = if rng.f64() < faults.duplicate { 2 } else { 1 };
        let (lo, hi) = faults.delay;
        let delays: Vec<Duration> = (0..copies).map(|_| lo + (hi.saturating_sub(lo)).mul_f64(rng.f64())).collect();
        (lost, copies, delays)
    };
    let blackout = shared.blackout.load(Ordering::SeqCst);
    {
        let mut c = shared.counts.lock().unwrap();
        let c = match way {
            Way::Up => &mut c.0,
            Way::Down => &mut c.1,
        };
        c.received += 1;
        if blackout {
            c.blacked_out += 1;
        } else if lost {
            c.lost += 1;
        } else {
            c.sent += copies;
            c.duplicated += copies - 1;
        }
        shared.changed.notify_all();
    }
    if blackout || lost {
        return;
    }
    for delay in delays {
        let socket = socket.clone();
        let data = data.clone();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let _ = socket.send_to(&data, to).await;
        });
    }
}
