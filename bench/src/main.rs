//! `sos-bench`: load for the collector. Simulated agents speak the real protocol, each from its
//! own loopback address, to a real `sos-collector` process started for each scenario on a fresh
//! store; in the same run a plain UDP echo gives the machine's round-trip ceiling, and every
//! result is printed also as a fraction of it (absolute figures drift on shared machines).
//!
//! # Layout
//! - [`load`]: the simulated agents (send plans, retransmission like the real agent, timing) and
//!   the echo.
//! - [`collector`]: the collector process, its CPU time and memory.
//! - here: the scenarios and the report (Markdown rows, for docs/PERFORMANCE.md). `storm` uses
//!   the end-to-end tests' Slack stand-in (which holds posts to Slack's limits and rate) and
//!   SMTP server (`sos-e2e`).
//!
//! - [`responder`]: the responder loop's latencies (pushes) with enrolled hand-made agents.
//! - [`store`]: the disk's fsync in the same run, the ideal durable server, bytes written per
//!   alert, the WAL's size, and the restart after a SIGKILL (`durable`, `crash`).
//! - [`postgres`]: collectors on PostgreSQL (a cluster of the end-to-end tests' own per part):
//!   one and two collectors under `max` load, one under `steady`.
//!
//! Run: `cargo run --release -p sos-bench` (all scenarios), or name some:
//! `cargo run --release -p sos-bench -- burst flood`.

mod collector;
mod load;
mod postgres;
mod responder;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use collector::{Collector, Limits};
use load::{Mode, Outcome, Plan};
use sos_shared::{unix_now, Key, Message};
use tokio::time::Instant;

/// Load for the SOS collector: throughput, loss and ACK latency under bursts, a steady rate,
/// heartbeats from many agents and a garbage flood, against the machine's UDP ceiling.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Scenarios to run, in order (default: all).
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// The collector binary (default: `sos-collector` next to this program).
    #[arg(long)]
    collector_bin: Option<PathBuf>,
    /// Seconds each timed scenario runs (ceiling, max, steady, flood).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Agents for ceiling and max, each with `--window` requests outstanding.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Requests each agent keeps outstanding in ceiling and max.
    #[arg(long, default_value_t = 16)]
    window: u32,
    /// Fully random alert ids, as agents before 2026-12-03 sent, instead of time-ordered ones
    /// (`AlertId::time_ordered`, what agents send now): the store's cost for old agents.
    #[arg(long)]
    random_ids: bool,
    /// Burst: this many agents…
    #[arg(long, default_value_t = 1000)]
    burst_agents: usize,
    /// …each sending this many SOS at once.
    #[arg(long, default_value_t = 10)]
    burst_each: u32,
    /// Steady: SOS per second, from `--burst-agents` agents (at least 1).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    rate: u32,
    /// Heartbeats: this many agents…
    #[arg(long, default_value_t = 50_000)]
    hb_agents: usize,
    /// …each heartbeating every this many seconds (one warm-up round, one measured).
    #[arg(long, default_value_t = 30)]
    hb_interval: u64,
    /// Storm: this many SOS at once (one per agent).
    #[arg(long, default_value_t = 300)]
    storm: usize,
    /// Nat: this many agents behind one address, heartbeating every `--hb-interval`.
    #[arg(long, default_value_t = 5000)]
    nat_agents: usize,
    /// Responder: this many alerts, one after another.
    #[arg(long, default_value_t = 50)]
    alerts: usize,
    /// History: SOS per second (from as many agents) once the history is closed.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    history_rate: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Raw UDP echo round trips on loopback: the ceiling.
    Ceiling,
    /// SOS as fast as acknowledgements come (limits raised): durable-ACK throughput.
    Max,
    /// `--burst-agents` × `--burst-each` SOS at once (default limits).
    Burst,
    /// A steady `--rate` SOS per second (default limits), first against the ideal durable
    /// server of `durable`, then against the collector: ACK p99 against the same run's fsync p99
    /// and against the ideal's.
    Steady,
    /// `--hb-agents` agents heartbeating (collector CPU and memory).
    Heartbeats,
    /// `--storm` SOS at once, each from its own agent, notified on Slack (a stand-in holding
    /// posts to Slack's limits and rate) and email: how long until every alert is on each.
    Storm,
    /// A garbage flood from another address as fast as one thread can send, and an SOS every
    /// 50 ms through it.
    Flood,
    /// The same flood from the probing agent's own address.
    FloodOwn,
    /// The same flood forging the probing agent's address (raw socket: root only).
    FloodForged,
    /// `--nat-agents` agents behind one address heartbeating every `--hb-interval`: none refused.
    Nat,
    /// `--alerts` alerts, one after another, with two enrolled responder desktops and a sender:
    /// press → broadcast on a desk, and respond → the sender's notice.
    Responder,
    /// The same load as `max` against an ideal durable server (same crypto, one append +
    /// fdatasync per batch), then against the collector: the ratio, the bytes the collector
    /// writes per alert, its WAL's largest size, and the disk's fsync in the same run.
    Durable,
    /// `max` load for `--secs`, then SIGKILL and an immediate restart on the same store: the
    /// first ACK after the kill, and nothing lost.
    Crash,
    /// A long history: `max` load for `--secs` (limits raised), every alert then resolved and
    /// delivered (in the store file, the collector stopped), and a steady `--history-rate` SOS/s
    /// for `--secs` on that store: ACK latency while the responder push reads a store whose
    /// newest alerts are mostly closed.
    History,
    /// Collectors on PostgreSQL, each part on a fresh cluster (fsync on): `max` load against
    /// one collector (and the cluster's fsync in the same run), then against two on one database
    /// (half the agents to each), then `steady` against one (ACK p99 against fsync p99).
    Postgres,
}

/// Percentiles of durations.
struct Dist(Vec<Duration>);

impl Dist {
    fn new(mut v: Vec<Duration>) -> Dist {
        v.sort();
        Dist(v)
    }
    fn p(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        self.0[i]
    }
    fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Run `n` agents with `plan` and gather what they saw.
async fn agents(
    n: usize,
    first: usize,
    mode: Mode,
    to: SocketAddr,
    plan: impl Fn(usize) -> Plan,
    deadline: Duration,
) -> Vec<Outcome> {
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tasks.spawn(load::agent(first + i, mode.clone(), to, plan(i), start, deadline));
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(o)) => out.push(o),
            Ok(Err(e)) => eprintln!("an agent could not run: {e} (ulimit -n?)"),
            Err(e) => eprintln!("an agent task failed: {e}"),
        }
    }
    out
}

struct Totals {
    sent: u64,
    acked: u64,
    transmissions: u64,
    latency: Dist,
    /// Acknowledged within [0, until) from the start.
    acked_in: u64,
    last_ack: Duration,
}

impl Totals {
    /// "lost L of N; R retransmissions".
    fn loss(&self) -> String {
        format!("lost {} of {}; {} retransmissions", self.sent - self.acked, self.sent, self.transmissions - self.sent)
    }

    /// "p50 … p99 … p99.9 … max …".
    fn latencies(&self) -> String {
        let l = &self.latency;
        format!("p50 {} p99 {} p99.9 {} max {}", ms(l.p(0.5)), ms(l.p(0.99)), ms(l.p(0.999)), ms(l.max()))
    }
}

fn totals(outcomes: &[Outcome], until: Duration) -> Totals {
    let mut lat = Vec::new();
    let (mut sent, mut tx, mut acked_in, mut last) = (0, 0, 0, Duration::ZERO);
    for o in outcomes {
        sent += o.sent;
        tx += o.transmissions;
        for (at, l) in &o.acked {
            lat.push(*l);
            if *at < until {
                acked_in += 1;
            }
            last = last.max(*at);
        }
    }
    Totals { sent, acked: lat.len() as u64, transmissions: tx, latency: Dist::new(lat), acked_in, last_ack: last }
}

/// What the echo showed: round trips per second at full load, and the idle round trip.
struct Ceiling {
    per_sec: f64,
    idle_rtt: Duration,
}

async fn ceiling(cli: &Cli, len: usize) -> anyhow::Result<Ceiling> {
    let server = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let to = server.local_addr()?;
    load::echo_server(server);
    let secs = Duration::from_secs(cli.secs);
    // Idle: one request at a time, 200 of them.
    let idle = agents(
        1,
        60_000,
        Mode::Echo(len),
        to,
        |_| Plan::Steady { period: Duration::from_millis(5), phase: Duration::ZERO, until: Duration::from_secs(1) },
        Duration::from_secs(5),
    )
    .await;
    let idle = totals(&idle, Duration::MAX);
    let window = cli.window;
    let out = agents(
        cli.agents,
        0,
        Mode::Echo(len),
        to,
        |_| Plan::Window { window, until: secs },
        secs + Duration::from_secs(5),
    )
    .await;
    let t = totals(&out, secs);
    let c = Ceiling { per_sec: t.acked_in as f64 / secs.as_secs_f64(), idle_rtt: idle.latency.p(0.5) };
    println!(
        "| ceiling: UDP echo, {} senders × {} outstanding, {len}-byte datagrams | {:.0} round trips/s | idle RTT p50 {} | p50 {} p99 {} under load | 1.00 |",
        cli.agents,
        cli.window,
        c.per_sec,
        ms(c.idle_rtt),
        ms(t.latency.p(0.5)),
        ms(t.latency.p(0.99)),
    );
    Ok(c)
}

fn fraction(x: f64, ceiling: Option<&Ceiling>) -> String {
    ceiling.map(|c| format!("{:.2}", x / c.per_sec)).unwrap_or_else(|| "—".into())
}

/// `"{what} = N× idle RTT; "` against the `ceiling` scenario's idle round trip, or nothing when
/// `ceiling` did not run in this invocation.
fn rtts(what: &str, d: Duration, ceiling: Option<&Ceiling>) -> String {
    ceiling
        .filter(|c| !c.idle_rtt.is_zero())
        .map(|c| format!("{what} = {:.0}× idle RTT; ", d.as_secs_f64() / c.idle_rtt.as_secs_f64()))
        .unwrap_or_default()
}

/// The `max` load: agents `first..first + n`, each keeping `window` SOS sealed with `key`
/// outstanding to `to` for `secs`, then retransmitting what is unanswered for 30 s more.
async fn max_load(n: usize, first: usize, window: u32, key: &Key, to: SocketAddr, secs: Duration) -> Vec<Outcome> {
    agents(
        n,
        first,
        Mode::Sos(key.clone()),
        to,
        move |_| Plan::Window { window, until: secs },
        secs + Duration::from_secs(30),
    )
    .await
}

/// The `steady` load: `n` agents sending `rate` SOS/s in all, sealed with `key`, to `to` for
/// `secs`, evenly spread (each agent one SOS every `n / rate` s, their phases staggered), then
/// retransmitting what is unanswered for 30 s more.
async fn steady_load(n: usize, rate: u32, key: &Key, to: SocketAddr, secs: Duration) -> Vec<Outcome> {
    let period = Duration::from_secs_f64(n as f64 / f64::from(rate));
    agents(
        n,
        0,
        Mode::Sos(key.clone()),
        to,
        |i| Plan::Steady { period, phase: period.mul_f64(i as f64 / n as f64), until: secs },
        secs + Duration::from_secs(30),
    )
    .await
}

async fn max(cli: &Cli, bin: &PathBuf, ceiling: Option<&Ceiling>) -> anyhow::Result<()> {
    let c = Collector::start(bin, Limits::Raised)?;
    let secs = Duration::from_secs(cli.secs);
    let window = cli.window;
    let cpu0 = c.cpu();
    let out = max_load(cli.agents, 0, window, &c.key, c.addr, secs).await;
    let cpu = c.cpu().saturating_sub(cpu0);
    let t = totals(&out, secs);
    let rate = t.acked_in as f64 / secs.as_secs_f64();
    println!(
        "| max: durable-ACKed SOS, {} agents × {} outstanding, limits raised | {rate:.0} SOS/s | lost {} of {} | p50 {} p99 {} p99.9 {} | {} of ceiling; collector CPU {:.0} % of a core |",
        cli.agents,
        cli.window,
        t.sent - t.acked,
        t.sent,
        ms(t.latency.p(0.5)),
        ms(t.latency.p(0.99)),
        ms(t.latency.p(0.999)),
        fraction(rate, ceiling),
        cpu.as_secs_f64() / (secs.as_secs_f64() + t.last_ack.saturating_sub(secs).as_secs_f64()) * 100.0,
    );
    Ok(())
}

async fn burst(cli: &Cli, bin: &PathBuf, ceiling: Option<&Ceiling>) -> anyhow::Result<()> {
    let c = Collector::start(bin, Limits::Default)?;
    let each = cli.burst_each;
    let out =
        agents(cli.burst_agents, 0, Mode::Sos(c.key.clone()), c.addr, |_| Plan::Burst(each), Duration::from_secs(60))
            .await;
    let t = totals(&out, Duration::MAX);
    let rate = t.acked as f64 / t.last_ack.as_secs_f64().max(1e-9);
    println!(
        "| burst: {} agents × {each} SOS at once, default limits | all ACKed in {} ({rate:.0} SOS/s) | {} | {} | {} of ceiling |",
        cli.burst_agents,
        ms(t.last_ack),
        t.loss(),
        t.latencies(),
        fraction(rate, ceiling),
    );
    Ok(())
}

async fn steady(cli: &Cli, bin: &PathBuf, ceiling: Option<&Ceiling>) -> anyhow::Result<()> {
    let n = cli.burst_agents;
    let secs = Duration::from_secs(cli.secs);
    // The same load against the ideal durable server first: what a group commit on this disk
    // gives at this rate, in the same run (an SOS that arrives during a sync waits for it, then
    // for its own), to compare the collector's ACK p99 with.
    let dir = tempfile::tempdir()?;
    let key = Key::from_base64(&Key::generate())?;
    let probe = store::FsyncProbe::start(dir.path())?;
    let ideal = store::Ideal::start(key.clone(), dir.path())?;
    let out = steady_load(n, cli.rate, &key, ideal.addr, secs).await;
    let syncs = ideal.finish();
    let fsync = probe.finish();
    let t = totals(&out, Duration::MAX);
    let ideal_p99 = t.latency.p(0.99);
    println!(
        "| steady-ideal: the same load against the ideal durable server | {:.0} SOS/s | {} | {} | batch append+fdatasync p50 {} p99 {} (n={}); same run: {}, ACK p99 = {:.2}× fsync p99, {:.2}× the fsync p99 at any instant ({}) |",
        t.acked as f64 / secs.as_secs_f64(),
        t.loss(),
        t.latencies(),
        ms(syncs.p(0.5)),
        ms(syncs.p(0.99)),
        syncs.0.len(),
        store::fsync_summary(&fsync),
        ideal_p99.as_secs_f64() / fsync.p(0.99).as_secs_f64().max(1e-9),
        ideal_p99.as_secs_f64() / store::at_any_instant(&fsync).p(0.99).as_secs_f64().max(1e-9),
        ms(store::at_any_instant(&fsync).p(0.99)),
    );
    let c = Collector::start(bin, Limits::Default)?;
    let probe = store::FsyncProbe::start(c.dir())?;
    let cpu0 = c.cpu();
    let out = steady_load(n, cli.rate, &c.key, c.addr, secs).await;
    let cpu = c.cpu().saturating_sub(cpu0);
    let fsync = probe.finish();
    let t = totals(&out, Duration::MAX);
    println!(
        "| steady: {} SOS/s from {n} agents for {} s, default limits | {:.0} SOS/s | {} | {} | {}collector CPU {:.0} % of a core; same run: {}, ACK p99 = {:.2}× fsync p99, {:.2}× the fsync p99 at any instant ({}), {:.2}× the ideal server's ACK p99 |",
        cli.rate,
        cli.secs,
        t.acked as f64 / secs.as_secs_f64(),
        t.loss(),
        t.latencies(),
        rtts("p99", t.latency.p(0.99), ceiling),
        cpu.as_secs_f64() / secs.as_secs_f64() * 100.0,
        store::fsync_summary(&fsync),
        t.latency.p(0.99).as_secs_f64() / fsync.p(0.99).as_secs_f64().max(1e-9),
        t.latency.p(0.99).as_secs_f64() / store::at_any_instant(&fsync).p(0.99).as_secs_f64().max(1e-9),
        ms(store::at_any_instant(&fsync).p(0.99)),
        t.latency.p(0.99).as_secs_f64() / ideal_p99.as_secs_f64().max(1e-9),
    );
    Ok(())
}

/// Heartbeats from `hb_agents` agents, `hb_agents / 200` sockets (one address each) sending for
/// 200 agents each, as heartbeats from many workstations; each agent once per interval.
async fn heartbeats(cli: &Cli, bin: &PathBuf) -> anyhow::Result<()> {
    const PER_SOCKET: usize = 200;
    let c = Collector::start(bin, Limits::Default)?;
    let interval = Duration::from_secs(cli.hb_interval);
    let sockets = cli.hb_agents.div_ceil(PER_SOCKET);
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + interval * 2;
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..sockets {
        let key = c.key.clone();
        let to = c.addr;
        let agents = PER_SOCKET.min(cli.hb_agents - s * PER_SOCKET);
        tasks.spawn(async move {
            let socket = tokio::net::UdpSocket::bind((load::agent_ip(s), 0)).await?;
            let (mut sent, mut answered) = (0u64, 0u64);
            let mut buf = vec![0u8; 2048];
            let step = interval / agents as u32;
            let mut next = start + interval.mul_f64(s as f64 / sockets as f64 / agents as f64);
            let mut j = 0usize;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {
                        if next >= end { break; }
                        let hb = Message::Heartbeat(sos_shared::protocol::Heartbeat {
                            user: format!("user{j}"),
                            host: format!("ws-{s:03}-{j:03}"),
                            ip: String::new(),
                            pad: String::new(),
                            responder: false,
                        });
                        if let Ok(d) = key.seal(&hb, unix_now()) {
                            let _ = socket.send_to(&d, to).await;
                            sent += 1;
                        }
                        j = (j + 1) % agents;
                        next += step;
                    }
                    r = socket.recv_from(&mut buf) => if r.is_ok() { answered += 1; },
                }
            }
            Ok::<_, std::io::Error>((sent, answered))
        });
    }
    // Round one fills the presence table; round two is measured.
    tokio::time::sleep_until(start + interval).await;
    let cpu0 = c.cpu();
    tokio::time::sleep_until(end).await;
    let cpu = c.cpu().saturating_sub(cpu0);
    let (rss, peak) = c.rss();
    let (mut sent, mut answered) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        if let Ok(Ok((s, a))) = r {
            sent += s;
            answered += a;
        }
    }
    println!(
        "| heartbeats: {} agents every {} s ({:.0}/s) from {sockets} addresses | {} answered of {} | collector RSS {:.1} MB (peak {:.1} MB) | collector CPU {:.1} % of a core (second round) | |",
        cli.hb_agents,
        cli.hb_interval,
        cli.hb_agents as f64 / interval.as_secs_f64(),
        answered,
        sent,
        rss as f64 / 1e6,
        peak as f64 / 1e6,
        cpu.as_secs_f64() / interval.as_secs_f64() * 100.0,
    );
    Ok(())
}

/// Where a flood comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FloodFrom {
    /// Another address (127.0.0.3).
    Elsewhere,
    /// The probing agent's own address (another port).
    Own,
    /// Forged: a raw socket writes the probing agent's address, random ports (root only).
    Forged,
}

/// The probing agent of the flood scenarios.
const PROBE: usize = 61_001;

/// One thread floods with datagrams that carry the site key's id and a random token (they pass
/// the structural checks and fail the HMAC: the worst junk), as fast as it can, from `from`;
/// an agent sends an SOS every 50 ms through it. The same agent's SOS at rest first.
async fn flood(cli: &Cli, bin: &PathBuf, ceiling: Option<&Ceiling>, from: FloodFrom) -> anyhow::Result<()> {
    let c = Collector::start(bin, Limits::Default)?;
    let secs = Duration::from_secs(cli.secs);
    let probe = |until| move |_| Plan::Steady { period: Duration::from_millis(50), phase: Duration::ZERO, until };
    let quiet = agents(1, PROBE, Mode::Sos(c.key.clone()), c.addr, probe(secs), secs + Duration::from_secs(10)).await;
    let quiet = totals(&quiet, Duration::MAX);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let std::net::SocketAddr::V4(to) = c.addr else { anyhow::bail!("the collector listens on IPv4 loopback") };
    let std::net::IpAddr::V4(probe_ip) = load::agent_ip(PROBE) else { anyhow::bail!("agents are IPv4") };
    let sender = match from {
        FloodFrom::Elsewhere => load::Flooder::bound(std::net::Ipv4Addr::new(127, 0, 0, 3))?,
        FloodFrom::Own => load::Flooder::bound(probe_ip)?,
        FloodFrom::Forged => match load::Flooder::forged(probe_ip) {
            Ok(f) => f,
            Err(e) => {
                println!("| flood-forged: skipped ({e}: a raw socket needs root or CAP_NET_RAW) | | | | |");
                return Ok(());
            }
        },
    };
    let flooder =
        {
            let stop = stop.clone();
            let key_id = c.key.id();
            std::thread::spawn(move || -> (u64, Duration) {
                let mut d = sos_shared::protocol::header(key_id).to_vec();
                d.extend((0..300).map(|_| {
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[fastrand::usize(..64)]
                }));
                let t0 = std::time::Instant::now();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if sender.send(&d, to) {
                        n += 1;
                    }
                }
                (n, t0.elapsed())
            })
        };
    let cpu0 = c.cpu();
    let t0 = Instant::now();
    let during = agents(1, PROBE, Mode::Sos(c.key.clone()), c.addr, probe(secs), secs + Duration::from_secs(10)).await;
    let cpu = c.cpu().saturating_sub(cpu0);
    let cpu_secs = t0.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (n, took) = flooder.join().map_err(|_| anyhow::anyhow!("the flood thread panicked"))?;
    let t = totals(&during, Duration::MAX);
    let name = match from {
        FloodFrom::Elsewhere => "flood: garbage from another address",
        FloodFrom::Own => "flood-own: garbage from the agent's own address",
        FloodFrom::Forged => "flood-forged: garbage forging the agent's address",
    };
    println!(
        "| {name} at {:.0} datagrams/s, an SOS every 50 ms | {} of {} SOS ACKed | {} retransmissions | during: p50 {} p99 {} max {}; at rest: p50 {} p99 {} max {} | {}collector CPU {:.0} % of a core during the flood |",
        n as f64 / took.as_secs_f64(),
        t.acked,
        t.sent,
        t.transmissions - t.sent,
        ms(t.latency.p(0.5)),
        ms(t.latency.p(0.99)),
        ms(t.latency.max()),
        ms(quiet.latency.p(0.5)),
        ms(quiet.latency.p(0.99)),
        ms(quiet.latency.max()),
        rtts("max", t.latency.max(), ceiling),
        cpu.as_secs_f64() / cpu_secs.as_secs_f64() * 100.0,
    );
    Ok(())
}

/// `nat_agents` agents behind one address (127.0.0.5), each with its own port as a NAT gives
/// it, heartbeating every `hb_interval` with the site key, for two intervals; the collector's
/// own counters say whether any was refused.
async fn nat(cli: &Cli, bin: &PathBuf) -> anyhow::Result<()> {
    let mut c = Collector::start_with_counters(bin, Limits::Default)?;
    let interval = Duration::from_secs(cli.hb_interval);
    let n = cli.nat_agents;
    let start = Instant::now() + Duration::from_millis(500);
    let end = start + interval * 2;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let key = c.key.clone();
        let to = c.addr;
        tasks.spawn(async move {
            let socket = tokio::net::UdpSocket::bind(("127.0.0.5", 0)).await?;
            let (mut sent, mut answered) = (0u64, 0u64);
            let mut buf = vec![0u8; 2048];
            let mut next = start + interval.mul_f64(i as f64 / n as f64);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {
                        if next >= end { break; }
                        let hb = Message::Heartbeat(sos_shared::protocol::Heartbeat {
                            user: "user".into(),
                            host: format!("ws-{i:05}"),
                            ip: String::new(),
                            pad: String::new(),
                            responder: false,
                        });
                        if let Ok(d) = key.seal(&hb, unix_now()) {
                            let _ = socket.send_to(&d, to).await;
                            sent += 1;
                        }
                        next += interval;
                    }
                    r = socket.recv_from(&mut buf) => if r.is_ok() { answered += 1; },
                }
            }
            Ok::<_, std::io::Error>((sent, answered))
        });
    }
    let (mut sent, mut answered, mut failed) = (0, 0, 0);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok((s, a))) => {
                sent += s;
                answered += a;
            }
            _ => failed += 1,
        }
    }
    let counters = c.stop()?;
    let count = |name: &str| -> u64 {
        counters
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(u64::MAX)
    };
    let refused = count("rate_limited_source").saturating_add(count("rate_limited_agent"));
    println!(
        "| nat: {n} agents behind one address (a port each), a heartbeat every {} s ({:.0}/s) | {answered} answered of {sent} | refused {refused} (rate_limited_source={} rate_limited_agent={}); {failed} agents could not run | | |",
        cli.hb_interval,
        n as f64 / interval.as_secs_f64(),
        count("rate_limited_source"),
        count("rate_limited_agent"),
    );
    Ok(())
}

/// A burst of `--storm` SOS from as many agents, with Slack and email configured (default
/// outbox settings): when the last alert is on Slack and in a mailbox, counted from the burst;
/// how many messages each took, the largest, and whether Slack refused any (it must not).
async fn storm(cli: &Cli, bin: &PathBuf) -> anyhow::Result<()> {
    let slack = sos_e2e::SlackStandIn::start(vec![]);
    let smtp = sos_e2e::SmtpServer::start(vec![]);
    let tables = format!(
        "[notify.slack]\nwebhook_url = \"{}\"\n[notify.email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\ntls = \"none\"\n\
         from = \"sos@example.com\"\nto = [\"security@example.com\"]\n",
        slack.url, smtp.port
    );
    let c = Collector::start_with(bin, Limits::Default, &tables)?;
    let n = cli.storm;
    let begun = std::time::Instant::now();
    let out = agents(n, 0, Mode::Sos(c.key.clone()), c.addr, |_| Plan::Burst(1), Duration::from_secs(30)).await;
    let t = totals(&out, Duration::MAX);
    // Each alert's line in a Slack post's `text` and in an email's body names its id once.
    let on_slack = |r: &[sos_e2e::slack::Received]| -> usize {
        r.iter()
            .filter(|x| x.status == 200)
            .map(|x| x.body["text"].as_str().unwrap_or("").matches("— alert ").count())
            .sum()
    };
    let deadline = std::time::Duration::from_secs(120);
    let posts = slack.wait_for(deadline, "every alert on Slack", |r| on_slack(r) >= t.acked as usize);
    let slack_done = posts.iter().filter(|x| x.status == 200).map(|x| x.at).max().unwrap_or(begun) - begun;
    let mails_done = loop {
        let mails = smtp.accepted_at();
        let alerts: usize = mails.iter().map(|(_, m)| sos_e2e::smtp::unfold(m).matches("Alert id:").count()).sum();
        if alerts >= t.acked as usize {
            break mails.iter().map(|(at, _)| *at).max().unwrap_or(begun) - begun;
        }
        anyhow::ensure!(begun.elapsed() < deadline, "email: {alerts} of {} alerts after {deadline:?}", t.acked);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ok: Vec<_> = posts.iter().filter(|x| x.status == 200).collect();
    let most_blocks = ok.iter().map(|x| x.body["blocks"].as_array().map_or(0, Vec::len)).max().unwrap_or(0);
    let refused = posts.iter().filter(|x| x.status == 400).count();
    let limited = posts.iter().filter(|x| x.status == 429).count();
    println!(
        "| storm: {n} SOS at once, one per agent; Slack stand-in (limits, 1/s) and SMTP | Slack: all {} in {:.2} s, {} posts (≤ {most_blocks} blocks), {refused} refused, {limited} rate-limited | email: all in {:.2} s, {} emails | {} | |",
        t.acked,
        slack_done.as_secs_f64(),
        ok.len(),
        mails_done.as_secs_f64(),
        smtp.accepted().len(),
        t.loss(),
    );
    Ok(())
}

/// The same load as `max` against the ideal durable server, then against the collector, each
/// with the disk's fsync probed in the same run.
async fn durable(cli: &Cli, bin: &PathBuf) -> anyhow::Result<()> {
    let secs = Duration::from_secs(cli.secs);
    let window = cli.window;
    let dir = tempfile::tempdir()?;
    let key = Key::from_base64(&Key::generate())?;
    let probe = store::FsyncProbe::start(dir.path())?;
    let ideal = store::Ideal::start(key.clone(), dir.path())?;
    let out = max_load(cli.agents, 0, window, &key, ideal.addr, secs).await;
    let (bytes, alerts) = (ideal.bytes.load(Ordering::Relaxed), ideal.alerts.load(Ordering::Relaxed));
    let syncs = ideal.finish();
    let fsync = probe.finish();
    let t = totals(&out, secs);
    let ideal_rate = t.acked_in as f64 / secs.as_secs_f64();
    println!(
        "| durable-ideal: same crypto, one append + fdatasync per batch, {} agents × {window} outstanding | {ideal_rate:.0} SOS/s | lost {} of {} | p50 {} p99 {} | written per alert {}; batch append+fdatasync p50 {} p99 {} (n={}); probe {} |",
        cli.agents,
        t.sent - t.acked,
        t.sent,
        ms(t.latency.p(0.5)),
        ms(t.latency.p(0.99)),
        store::size(bytes as f64 / alerts.max(1) as f64),
        ms(syncs.p(0.5)),
        ms(syncs.p(0.99)),
        syncs.0.len(),
        store::fsync_summary(&fsync),
    );
    let c = Collector::start(bin, Limits::Raised)?;
    let probe = store::FsyncProbe::start(c.dir())?;
    let wal = store::SizeWatch::start(c.store_path().with_extension("db-wal"));
    let (w0, d0) = store::written(c.pid());
    let cpu0 = c.cpu();
    let out = max_load(cli.agents, 0, window, &c.key, c.addr, secs).await;
    let cpu = c.cpu().saturating_sub(cpu0);
    let (w1, d1) = store::written(c.pid());
    let wal_peak = wal.finish();
    let fsync = probe.finish();
    let t = totals(&out, secs);
    let rate = t.acked_in as f64 / secs.as_secs_f64();
    let per = |b: u64| store::size(b as f64 / t.acked.max(1) as f64);
    println!(
        "| durable: the collector, same load, limits raised | {rate:.0} SOS/s = {:.2} of the ideal | lost {} of {} | p50 {} p99 {} | written per alert {} (write calls), {} (to the disk); WAL peak {}; store {}; collector CPU {:.0} % of a core; probe {} |",
        rate / ideal_rate.max(1e-9),
        t.sent - t.acked,
        t.sent,
        ms(t.latency.p(0.5)),
        ms(t.latency.p(0.99)),
        per(w1 - w0),
        per(d1 - d0),
        store::size(wal_peak as f64),
        store::size(std::fs::metadata(c.store_path()).map(|m| m.len()).unwrap_or(0) as f64),
        cpu.as_secs_f64() / (secs.as_secs_f64() + t.last_ack.saturating_sub(secs).as_secs_f64()) * 100.0,
        store::fsync_summary(&fsync),
    );
    Ok(())
}

/// `max` load for `--secs`, then SIGKILL and a restart at once on the same store, the load
/// going on (the agents retransmit what the kill left unacknowledged): the time from the kill
/// to the first ACK of a new SOS sent every 5 ms from the kill on.
async fn crash(cli: &Cli, bin: &PathBuf) -> anyhow::Result<()> {
    let mut c = Collector::start(bin, Limits::Raised)?;
    let secs = Duration::from_secs(cli.secs);
    let window = cli.window;
    let wal_path = c.store_path().with_extension("db-wal");
    let wal = store::SizeWatch::start(wal_path.clone());
    // `agents` starts its agents 200 ms after it is called.
    let load_start = Instant::now() + Duration::from_millis(200);
    let load = tokio::spawn(agents(
        cli.agents,
        0,
        Mode::Sos(c.key.clone()),
        c.addr,
        move |_| Plan::Window { window, until: secs * 2 },
        secs * 2 + Duration::from_secs(60),
    ));
    tokio::time::sleep(secs + Duration::from_millis(200)).await;
    let len = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let (wal_at_kill, store_at_kill) = (len(&wal_path), len(&c.store_path()));
    let killed = c.kill_and_restart()?;
    let kill_offset = Instant::now().saturating_duration_since(load_start);
    let killed_at = std::time::SystemTime::now();
    let socket = tokio::net::UdpSocket::bind((load::agent_ip(PROBE + 1), 0)).await?;
    let id = load::new_id();
    let mode = Mode::Sos(c.key.clone());
    let mut buf = vec![0u8; 2048];
    let first = loop {
        anyhow::ensure!(killed.elapsed() < Duration::from_secs(60), "no ACK within 60 s of the restart");
        load::transmit(&socket, &mode, c.addr, id, 0, "bench-crash").await;
        match tokio::time::timeout(Duration::from_millis(5), socket.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) if load::answer(&mode, &buf[..n]) == Some(id) => break killed.elapsed(),
            _ => {}
        }
    };
    let out = load.await?;
    let wal_peak = wal.finish();
    // What the restarted collector said, with its times, to see where a slow start goes.
    eprintln!(
        "crash: killed at {} s after the epoch; the restarted collector's log:",
        killed_at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
    );
    let log = c.log();
    let restarted = log.rfind("NO NOTIFICATION CHANNEL").map_or(log.as_str(), |at| &log[at..]);
    for line in restarted.lines().filter(|l| !l.contains("sos::alert")).take(12) {
        eprintln!("  {line}");
    }
    let t = totals(&out, Duration::MAX);
    // The first ACK the load's agents received after the kill (their retransmissions).
    let first_any = out
        .iter()
        .flat_map(|o| o.acked.iter().map(|(at, _)| *at))
        .filter(|at| *at > kill_offset)
        .min()
        .map_or(Duration::MAX, |at| at - kill_offset);
    // When the agents tried again: the first ACK to one of them cannot come before its
    // retransmission reaches a collector that answers (the first retransmission is 300 ms after
    // the first transmission; what was outstanding at the kill had been sent in the last
    // hundred-odd milliseconds before it).
    let first_retransmission_after = |from: Duration| {
        out.iter()
            .flat_map(|o| o.retransmitted.iter().copied())
            .filter(|at| *at >= from)
            .min()
            .map_or(Duration::MAX, |at| at - kill_offset)
    };
    println!(
        "| crash: SIGKILL after {} s of max load ({} agents × {window}), restarted at once on the same store | first ACK {} after the kill (of a new SOS: {}) | {} | WAL at the kill {} (peak {}), store {} | the agents' first retransmission after the kill {}, and after the new SOS's ACK {} |",
        cli.secs,
        cli.agents,
        ms(first_any),
        ms(first),
        t.loss(),
        store::size(wal_at_kill as f64),
        store::size(wal_peak as f64),
        store::size(store_at_kill as f64),
        ms(first_retransmission_after(kill_offset)),
        ms(first_retransmission_after(kill_offset + first)),
    );
    Ok(())
}

/// A long history, then a steady trickle of SOS: see [`Scenario::History`].
async fn history(cli: &Cli, bin: &PathBuf) -> anyhow::Result<()> {
    let mut c = Collector::start(bin, Limits::Raised)?;
    let secs = Duration::from_secs(cli.secs);
    let filled = totals(&max_load(cli.agents, 0, cli.window, &c.key, c.addr, secs).await, Duration::MAX).acked;
    c.restart_after(|store| {
        rusqlite::Connection::open(store)
            .and_then(|db| {
                db.execute_batch(
                    "BEGIN;
                     UPDATE responses SET state = 'resolved', changed_at_ms = 0;
                     DELETE FROM escalations;
                     UPDATE outbox SET state = 'delivered', delivered_at_ms = 0 WHERE state = 'pending';
                     UPDATE sender_notices SET confirmed_at_ms = 0 WHERE confirmed_at_ms IS NULL;
                     COMMIT;",
                )
            })
            .with_context(|| format!("closing the history of {}", store.display()))
    })?;
    let n = cli.history_rate as usize;
    // Agents other than the history's (a new SOS from each, not a retransmission).
    let period = Duration::from_secs(1);
    let (cpu0, began) = (c.cpu(), Instant::now());
    let out = agents(
        n,
        cli.agents,
        Mode::Sos(c.key.clone()),
        c.addr,
        |i| Plan::Steady { period, phase: period.mul_f64(i as f64 / n as f64), until: secs },
        secs + Duration::from_secs(30),
    )
    .await;
    // What the collector spent meanwhile: the SOS, and the responder push's reads of the store
    // after each of them.
    let cpu = c.cpu().saturating_sub(cpu0).as_secs_f64() / began.elapsed().as_secs_f64();
    let t = totals(&out, Duration::MAX);
    println!(
        "| history: {filled} alerts resolved, then {} SOS/s for {} s | {:.0} SOS/s | {} | {} | store {}; collector CPU {:.0} % of a core |",
        cli.history_rate,
        cli.secs,
        t.acked as f64 / secs.as_secs_f64(),
        t.loss(),
        t.latencies(),
        store::size(std::fs::metadata(c.store_path()).map(|m| m.len()).unwrap_or(0) as f64),
        cpu * 100.0,
    );
    Ok(())
}

/// A thousand agents are a thousand sockets: lift the soft open-files limit to the hard one.
fn raise_fd_limit() {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let l = getrlimit(Resource::Nofile);
        if l.maximum.is_some() && l.current != l.maximum {
            let _ = setrlimit(Resource::Nofile, Rlimit { current: l.maximum, maximum: l.maximum });
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    load::RANDOM_IDS.store(cli.random_ids, std::sync::atomic::Ordering::Relaxed);
    raise_fd_limit();
    let bin = match &cli.collector_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.parent().context("no directory")?.join("sos-collector"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it (cargo build --release) or pass --collector-bin",
        bin.display()
    );
    let scenarios = if cli.scenarios.is_empty() { Scenario::value_variants().to_vec() } else { cli.scenarios.clone() };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        println!("| scenario | throughput | loss | ACK latency | vs the ceiling / cost |");
        println!("|---|---|---|---|---|");
        let len = load::sos_len(&Key::from_base64(&Key::generate())?);
        let mut ceil = None;
        for s in scenarios {
            match s {
                Scenario::Ceiling => ceil = Some(ceiling(&cli, len).await?),
                Scenario::Max => max(&cli, &bin, ceil.as_ref()).await?,
                Scenario::Burst => burst(&cli, &bin, ceil.as_ref()).await?,
                Scenario::Steady => steady(&cli, &bin, ceil.as_ref()).await?,
                Scenario::Heartbeats => heartbeats(&cli, &bin).await?,
                Scenario::Flood => flood(&cli, &bin, ceil.as_ref(), FloodFrom::Elsewhere).await?,
                Scenario::FloodOwn => flood(&cli, &bin, ceil.as_ref(), FloodFrom::Own).await?,
                Scenario::FloodForged => flood(&cli, &bin, ceil.as_ref(), FloodFrom::Forged).await?,
                Scenario::Nat => nat(&cli, &bin).await?,
                Scenario::Storm => storm(&cli, &bin).await?,
                Scenario::Responder => responder::responder(&bin, cli.alerts).await?,
                Scenario::Durable => durable(&cli, &bin).await?,
                Scenario::Crash => crash(&cli, &bin).await?,
                Scenario::History => history(&cli, &bin).await?,
                Scenario::Postgres => postgres::postgres(&cli, &bin, ceil.as_ref()).await?,
            }
        }
        Ok(())
    })
}
