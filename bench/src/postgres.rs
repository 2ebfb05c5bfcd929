//! `postgres`: collectors on PostgreSQL (issue 18 §2) under the same loads as on SQLite. Each
//! part on a cluster of its own, fresh: the end-to-end tests' ([`sos_e2e::postgres::PgCluster`]:
//! `initdb` in a temporary directory, an unprivileged user, a free loopback port, `fsync`,
//! `synchronous_commit` and `full_page_writes` on), the collectors connecting over TCP with a
//! password as a site's would.
//!
//! - One collector, `max` load: throughput and ACK latency, the collector's CPU and the
//!   cluster's (every server process: the collector's backend, the WAL writer…), the WAL it
//!   writes per alert, and the fsync of the cluster's disk probed in its data directory.
//! - Two collectors on one database, the agents split between them (half to each), the same
//!   load: the total, and the rows stored against the SOS acknowledged.
//! - `steady` against one collector: ACK p99 against the same run's fsync p99; its rate and
//!   CPU over the whole run, from the start to the last ACK (a collector that falls behind
//!   acknowledges long after the sending stops).
//!
//! Each collector's final counters are printed too: the SOS it stored, the retransmissions it
//! found already stored (each a transaction on its one connection, as a new SOS is), and the
//! SOS it could not acknowledge (its connection busy for too long).
//!
//! The cluster is stopped and removed when its part ends, on error too (its drop), after the
//! collectors (killed on drop, declared after it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use sos_e2e::postgres::PgCluster;

use crate::collector::{Collector, Limits};
use crate::{fraction, max_load, rtts, steady_load, store, totals, Ceiling, Cli};

/// The three parts, each on a fresh cluster.
pub async fn postgres(cli: &Cli, bin: &PathBuf, ceiling: Option<&Ceiling>) -> anyhow::Result<()> {
    let one_rate = one(cli, bin, ceiling).await?;
    two(cli, bin, ceiling, one_rate).await?;
    steady(cli, bin, ceiling).await
}

/// A fresh cluster with the role and database `sos`, started off the runtime's threads.
async fn cluster() -> anyhow::Result<PgCluster> {
    anyhow::ensure!(
        sos_e2e::postgres::available(),
        "PostgreSQL is not installed (initdb, pg_ctl, psql: Debian's postgresql, or PG_BIN)"
    );
    // It panics, with the server's log, if the cluster does not start.
    tokio::task::spawn_blocking(PgCluster::start).await.map_err(|e| anyhow::anyhow!("PostgreSQL did not start: {e}"))
}

/// CPU time the cluster has used so far (user + system): its postmaster with the children it
/// has reaped, and the server processes alive now (the collectors' backends, the WAL writer,
/// the checkpointer…), from /proc.
fn cluster_cpu(data: &Path) -> Duration {
    let postmaster: Option<u32> =
        std::fs::read_to_string(data.join("postmaster.pid")).ok().and_then(|t| t.lines().next()?.trim().parse().ok());
    let Some(postmaster) = postmaster else { return Duration::ZERO };
    // Fields after the command name (in parentheses), from the 3rd: state, ppid, … utime (14th),
    // stime, cutime, cstime (17th).
    let stat = |pid: &str| -> Option<Vec<u64>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some([1, 11, 12, 13, 14].iter().map(|&i| f.get(i).and_then(|x| x.parse().ok()).unwrap_or(0)).collect())
    };
    let mut ticks = stat(&postmaster.to_string()).map_or(0, |f| f[1] + f[2] + f[3] + f[4]);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        if let Some(f) = stat(pid).filter(|f| f[0] == u64::from(postmaster)) {
            ticks += f[1] + f[2];
        }
    }
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// The cluster's WAL position, bytes (`pg_current_wal_lsn()`); `None` if the query fails.
fn wal_position(pg: &PgCluster) -> Option<u64> {
    let out = pg.try_query("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint");
    String::from_utf8(out.stdout).ok()?.trim().parse().ok().filter(|_| out.status.success())
}

/// "stored S, duplicates D, store errors E" from a collector's final counters ([`Collector::stop`]):
/// the SOS it committed, the retransmissions it found already stored (a transaction each too),
/// and the SOS it could not acknowledge (its connection busy too long, or failing).
fn store_counters(c: &mut Collector) -> String {
    let counters = match c.stop() {
        Ok(line) => line,
        Err(e) => return format!("no counters ({e})"),
    };
    let count = |name: &str| -> String {
        counters
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("?")
            .trim_matches(|c: char| !c.is_ascii_digit())
            .to_owned()
    };
    format!(
        "stored {}, duplicates {}, store errors {}",
        count("sos_stored"),
        count("sos_duplicate"),
        count("store_errors")
    )
}

/// One collector on a fresh cluster, `max` load: its SOS/s, for the second part's ratio.
async fn one(cli: &Cli, bin: &PathBuf, ceiling: Option<&Ceiling>) -> anyhow::Result<f64> {
    let pg = cluster().await?;
    let mut c = Collector::start_on_postgres(bin, Limits::Raised, &pg.url(), None)?;
    let secs = Duration::from_secs(cli.secs);
    let window = cli.window;
    let probe = store::FsyncProbe::start(&pg.data_dir())?;
    let wal0 = wal_position(&pg);
    let (cpu0, pg_cpu0) = (c.cpu(), cluster_cpu(&pg.data_dir()));
    let out = max_load(cli.agents, 0, window, &c.key, c.addr, secs).await;
    let (cpu, pg_cpu) = (c.cpu().saturating_sub(cpu0), cluster_cpu(&pg.data_dir()).saturating_sub(pg_cpu0));
    let wal = wal_position(&pg).zip(wal0).map(|(w1, w0)| w1.saturating_sub(w0));
    let fsync = probe.finish();
    let counters = store_counters(&mut c);
    let t = totals(&out, secs);
    let rate = t.acked_in as f64 / secs.as_secs_f64();
    let busy = secs.as_secs_f64() + t.last_ack.saturating_sub(secs).as_secs_f64();
    println!(
        "| postgres: one collector on PostgreSQL, {} agents × {window} outstanding, limits raised | {rate:.0} SOS/s | {} | {} | {} of ceiling; collector CPU {:.0} % of a core, PostgreSQL {:.0} %; collector: {counters}; WAL per alert {}; probe in the cluster's data directory {} |",
        cli.agents,
        t.loss(),
        t.latencies(),
        fraction(rate, ceiling),
        cpu.as_secs_f64() / busy * 100.0,
        pg_cpu.as_secs_f64() / busy * 100.0,
        wal.map_or_else(|| "?".into(), |w| store::size(w as f64 / t.acked.max(1) as f64)),
        store::fsync_summary(&fsync),
    );
    Ok(rate)
}

/// Two collectors on one fresh database with the same key, each agent sending to one of them
/// (half to each), the `max` load in all; the alerts table is counted afterwards.
async fn two(cli: &Cli, bin: &PathBuf, ceiling: Option<&Ceiling>, one_rate: f64) -> anyhow::Result<()> {
    let pg = cluster().await?;
    let mut a = Collector::start_on_postgres(bin, Limits::Raised, &pg.url(), None)?;
    let mut b = Collector::start_on_postgres(bin, Limits::Raised, &pg.url(), Some(&a))?;
    let secs = Duration::from_secs(cli.secs);
    let window = cli.window;
    let half = cli.agents / 2;
    let (cpu_a0, cpu_b0, pg_cpu0) = (a.cpu(), b.cpu(), cluster_cpu(&pg.data_dir()));
    let (mut out, to_b) = tokio::join!(
        max_load(half, 0, window, &a.key, a.addr, secs),
        max_load(cli.agents - half, half, window, &b.key, b.addr, secs),
    );
    let (cpu_a, cpu_b) = (a.cpu() - cpu_a0, b.cpu() - cpu_b0);
    let pg_cpu = cluster_cpu(&pg.data_dir()) - pg_cpu0;
    out.extend(to_b);
    let t = totals(&out, secs);
    let rate = t.acked_in as f64 / secs.as_secs_f64();
    let (counters_a, counters_b) = (store_counters(&mut a), store_counters(&mut b));
    let stored = pg.try_query("SELECT count(*) FROM alerts");
    let stored =
        if stored.status.success() { String::from_utf8_lossy(&stored.stdout).into_owned() } else { "?".into() };
    let busy = secs.as_secs_f64() + t.last_ack.saturating_sub(secs).as_secs_f64();
    println!(
        "| postgres: two collectors on one database, {half} + {} agents × {window} outstanding, limits raised | {rate:.0} SOS/s = {:.2}× one collector | {}; {} alerts in the database | {} | {} of ceiling; collectors' CPU {:.0} % + {:.0} % of a core, PostgreSQL {:.0} %; collectors: {counters_a}; {counters_b} |",
        cli.agents - half,
        rate / one_rate.max(1e-9),
        t.loss(),
        stored.trim(),
        t.latencies(),
        fraction(rate, ceiling),
        cpu_a.as_secs_f64() / busy * 100.0,
        cpu_b.as_secs_f64() / busy * 100.0,
        pg_cpu.as_secs_f64() / busy * 100.0,
    );
    Ok(())
}

/// `steady` against one collector on a fresh cluster, the fsync probed in its data directory.
async fn steady(cli: &Cli, bin: &PathBuf, ceiling: Option<&Ceiling>) -> anyhow::Result<()> {
    let pg = cluster().await?;
    let mut c = Collector::start_on_postgres(bin, Limits::Default, &pg.url(), None)?;
    let n = cli.burst_agents;
    let secs = Duration::from_secs(cli.secs);
    let probe = store::FsyncProbe::start(&pg.data_dir()).context("the fsync probe in the cluster's data directory")?;
    let (cpu0, pg_cpu0) = (c.cpu(), cluster_cpu(&pg.data_dir()));
    let out = steady_load(n, cli.rate, &c.key, c.addr, secs).await;
    let (cpu, pg_cpu) = (c.cpu().saturating_sub(cpu0), cluster_cpu(&pg.data_dir()).saturating_sub(pg_cpu0));
    let fsync = probe.finish();
    let counters = store_counters(&mut c);
    let t = totals(&out, Duration::MAX);
    // The ACKs (and the CPU) go on after the sending stops when the collector falls behind:
    // rates over the whole run, from the start to the last ACK.
    let busy = secs.as_secs_f64() + t.last_ack.saturating_sub(secs).as_secs_f64();
    println!(
        "| postgres steady: {} SOS/s from {n} agents for {} s, one collector on PostgreSQL, default limits | {:.0} SOS/s | {} | {} | {}collector CPU {:.0} % of a core, PostgreSQL {:.0} %; collector: {counters}; same run: {}, ACK p99 = {:.2}× fsync p99, {:.2}× the fsync p99 at any instant ({}) |",
        cli.rate,
        cli.secs,
        t.acked as f64 / busy,
        t.loss(),
        t.latencies(),
        rtts("p99", t.latency.p(0.99), ceiling),
        cpu.as_secs_f64() / busy * 100.0,
        pg_cpu.as_secs_f64() / busy * 100.0,
        store::fsync_summary(&fsync),
        t.latency.p(0.99).as_secs_f64() / fsync.p(0.99).as_secs_f64().max(1e-9),
        t.latency.p(0.99).as_secs_f64() / store::at_any_instant(&fsync).p(0.99).as_secs_f64().max(1e-9),
        crate::ms(store::at_any_instant(&fsync).p(0.99)),
    );
    Ok(())
}
