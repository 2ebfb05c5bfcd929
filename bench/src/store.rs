//! What the store costs: the disk's own fsync in the same run, an ideal durable server to
//! compare the collector with, the bytes the collector writes per alert, how large its WAL
//! grows, and how soon it acknowledges again after a SIGKILL under load.
//!
//! The ideal durable server ([`Ideal`]) does what any durable acknowledger must and nothing
//! more: the same cryptography as the collector (open each SOS, seal its ACK), one `write` of
//! the batch's records and one `fdatasync` per batch of datagrams, and the ACKs only after it.
//! It keeps alert ids in memory to tell a duplicate, as the collector does in its store.

use std::collections::HashSet;
use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sos_shared::protocol::{split_datagram, AckStatus, SosAck};
use sos_shared::{unix_now, Key, Message, TimeWindow};

use crate::Dist;

/// The most datagrams the ideal server takes into one batch (the collector's group commit
/// takes up to 512 alerts).
const IDEAL_BATCH: usize = 512;

/// Times an `fdatasync` of a small append to a file in `dir` every [`FsyncProbe::EVERY`], from
/// its own thread, for as long as it lives: the disk's fsync latency in the same run as a
/// measurement, under the same load.
pub struct FsyncProbe {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Duration>>>,
}

impl FsyncProbe {
    /// How often the probe syncs.
    const EVERY: Duration = Duration::from_millis(20);

    /// Start probing in `dir` (the file is removed when the probe ends).
    pub fn start(dir: &Path) -> anyhow::Result<FsyncProbe> {
        let path = dir.join("fsync-probe");
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new().name("fsync-probe".into()).spawn(move || {
            let mut times = Vec::new();
            let record = [b'x'; 512];
            while !stopping.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                if file.write_all(&record).and_then(|()| file.sync_data()).is_ok() {
                    times.push(t0.elapsed());
                }
                std::thread::sleep(FsyncProbe::EVERY.saturating_sub(t0.elapsed()));
            }
            let _ = std::fs::remove_file(&path);
            times
        })?;
        Ok(FsyncProbe { stop, thread: Some(thread) })
    }

    /// Stop and return the distribution of the syncs.
    pub fn finish(mut self) -> Dist {
        self.stop.store(true, Ordering::Relaxed);
        Dist::new(self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default())
    }
}

impl Drop for FsyncProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// "fsync p50 … p99 … max … (n)".
pub fn fsync_summary(d: &Dist) -> String {
    format!(
        "fsync p50 {} p99 {} max {} (n={})",
        crate::ms(d.p(0.5)),
        crate::ms(d.p(0.99)),
        crate::ms(d.max()),
        d.0.len()
    )
}

/// The probe's syncs as an fsync started at any instant would have seen them: the probe syncs
/// every [`FsyncProbe::EVERY`] but waits for each, so a stall of the disk is one sample however
/// long it lasts, while every SOS that arrives during it waits (the coordinated omission of a
/// closed-loop probe). Corrected as HdrHistogram's `recordValueWithExpectedInterval` does: a
/// sync that took `d` stands also for the syncs that would have started every `EVERY` during
/// it, which would have waited `d - EVERY`, `d - 2 EVERY`, … Compare an open-loop latency (the
/// ACKs of a steady rate) with this, not with the raw samples.
pub fn at_any_instant(d: &Dist) -> Dist {
    let every = FsyncProbe::EVERY;
    let mut v = Vec::with_capacity(d.0.len());
    for &x in &d.0 {
        v.push(x);
        let mut missed = x.saturating_sub(every);
        while missed >= every {
            v.push(missed);
            missed -= every;
        }
    }
    Dist::new(v)
}

/// The ideal durable server: a receiving thread that opens each SOS and seals its ACK, and a
/// writing thread that appends each batch to a file, `fdatasync`s it, then sends the batch's
/// ACKs. Stops when dropped.
pub struct Ideal {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Bytes appended to its file.
    pub bytes: Arc<AtomicU64>,
    /// Alerts made durable (first transmissions).
    pub alerts: Arc<AtomicU64>,
    syncs: Option<std::thread::JoinHandle<Vec<Duration>>>,
}

impl Ideal {
    /// Start it on 127.0.0.1 with `key`, its file in `dir`.
    pub fn start(key: Key, dir: &Path) -> anyhow::Result<Ideal> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let addr = socket.local_addr()?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let sender = socket.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let alerts = Arc::new(AtomicU64::new(0));
        // (record to append, ACK datagram, to whom)
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, Vec<u8>, SocketAddr)>(16 * IDEAL_BATCH);
        let stopping = stop.clone();
        std::thread::Builder::new().name("ideal-recv".into()).spawn(move || {
            let mut buf = vec![0u8; 2048];
            let mut seen: HashSet<u128> = HashSet::new();
            while !stopping.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let Ok((key_id, token)) = split_datagram(&buf[..n]) else { continue };
                if key_id != key.id() {
                    continue;
                }
                let now = unix_now();
                let Ok(opened) = key.open(token, now, TimeWindow::default()) else { continue };
                let Message::Sos(sos) = opened.message else { continue };
                let status = if seen.insert(sos.alert_id.as_u128()) { AckStatus::Stored } else { AckStatus::Duplicate };
                // What is made durable: the SOS as received (sealed), once.
                let record = match status {
                    AckStatus::Stored => buf[..n].to_vec(),
                    AckStatus::Duplicate => Vec::new(),
                };
                let ack = Message::SosAck(SosAck { alert_id: sos.alert_id, status, server_time: now });
                let Ok(ack) = key.seal(&ack, now) else { continue };
                if tx.send((record, ack, from)).is_err() {
                    return;
                }
            }
        })?;
        let file_path = dir.join("ideal.log");
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&file_path)?;
        let (b, a) = (bytes.clone(), alerts.clone());
        let syncs = std::thread::Builder::new().name("ideal-write".into()).spawn(move || {
            let mut times = Vec::new();
            let mut batch = Vec::with_capacity(IDEAL_BATCH);
            let mut out = Vec::new();
            while let Ok(first) = rx.recv() {
                batch.push(first);
                while batch.len() < IDEAL_BATCH {
                    match rx.try_recv() {
                        Ok(x) => batch.push(x),
                        Err(_) => break,
                    }
                }
                out.clear();
                let mut new = 0;
                for (record, _, _) in &batch {
                    if !record.is_empty() {
                        out.extend_from_slice(record);
                        out.push(b'\n');
                        new += 1;
                    }
                }
                if !out.is_empty() {
                    let t0 = Instant::now();
                    if file.write_all(&out).and_then(|()| file.sync_data()).is_err() {
                        return times;
                    }
                    times.push(t0.elapsed());
                    b.fetch_add(out.len() as u64, Ordering::Relaxed);
                    a.fetch_add(new, Ordering::Relaxed);
                }
                for (_, ack, to) in batch.drain(..) {
                    let _ = sender.send_to(&ack, to);
                }
            }
            let _ = std::fs::remove_file(&file_path);
            times
        })?;
        Ok(Ideal { addr, stop, bytes, alerts, syncs: Some(syncs) })
    }

    /// Stop it; the distribution of its batches' append + fdatasync.
    pub fn finish(mut self) -> Dist {
        self.stop.store(true, Ordering::Relaxed);
        Dist::new(self.syncs.take().and_then(|t| t.join().ok()).unwrap_or_default())
    }
}

impl Drop for Ideal {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Samples the size of a file (the collector's WAL) every 20 ms from a thread: its largest.
pub struct SizeWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl SizeWatch {
    /// Watch `path` (absent counts as 0).
    pub fn start(path: PathBuf) -> SizeWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut most = 0;
            while !stopping.load(Ordering::Relaxed) {
                most = most.max(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(20));
            }
            most.max(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0))
        });
        SizeWatch { stop, thread: Some(thread) }
    }

    /// Stop; the largest size seen, bytes.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

/// A process's write counters from /proc/PID/io: (`wchar`: bytes passed to write calls,
/// `write_bytes`: bytes it caused to be sent to the storage layer).
pub fn written(pid: u32) -> (u64, u64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field =
        |name: &str| io.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    (field("wchar:"), field("write_bytes:"))
}

/// Bytes as "12.3 MB" / "1.2 KB".
pub fn size(b: f64) -> String {
    if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.2} KB", b / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_stands_for_the_syncs_it_held_up() {
        let ms = Duration::from_millis;
        let raw = Dist::new(vec![ms(1), ms(100), ms(2)]);
        let any = at_any_instant(&raw);
        assert_eq!(any.0, vec![ms(1), ms(2), ms(20), ms(40), ms(60), ms(80), ms(100)]);
        // Syncs shorter than the interval stand for themselves only.
        assert_eq!(at_any_instant(&Dist::new(vec![ms(19), ms(3)])).0, vec![ms(3), ms(19)]);
    }
}
