//! Floods for the abuse tests: datagrams as fast as one thread can send (or at a set rate) for
//! a bounded time, from a bound socket or with forged source addresses through a raw socket.
//! Loopback only: the destination must be in 127.0.0.0/8.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Makes the next datagram of a flood in the buffer (cleared before each call).
pub type Make = Box<dyn FnMut(&mut fastrand::Rng, &mut Vec<u8>) + Send>;

/// Where a flood's datagrams come from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// A UDP socket bound to this local address (any port).
    Bound(Ipv4Addr),
    /// Forged through a raw socket (needs root or `CAP_NET_RAW`): this source address, and a
    /// random source port per datagram.
    Forged(Ipv4Addr),
}

/// A flood running on its own thread.
#[derive(Debug)]
pub struct Flood {
    sent: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<bool>>,
}

/// What a flood did.
#[derive(Debug, Clone, Copy)]
pub struct FloodEnd {
    /// Datagrams sent.
    pub sent: u64,
    /// For [`Source::Bound`]: whether anything came back to the flooding socket.
    pub answered: bool,
}

impl Flood {
    /// Start flooding `to` from `source` for `duration`, at `rate` datagrams a second or (with
    /// `None`) as fast as one thread can send.
    ///
    /// # Errors
    /// If the socket cannot be made: a raw socket without the privilege is `PermissionDenied`.
    pub fn start(
        source: Source,
        to: SocketAddr,
        duration: Duration,
        rate: Option<u32>,
        mut make: Make,
    ) -> std::io::Result<Flood> {
        let SocketAddr::V4(to) = to else { panic!("floods are IPv4 loopback only") };
        assert!(to.ip().is_loopback(), "floods stay on loopback");
        let sender = match source {
            Source::Bound(ip) => Sender::Bound(UdpSocket::bind((ip, 0))?),
            Source::Forged(ip) => {
                assert!(ip.is_loopback(), "forged sources stay on loopback");
                Sender::Raw(RawSocket::new()?, ip)
            }
        };
        let sent = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (sent, done, stop) = (sent.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(21);
                let mut buf = Vec::with_capacity(1500);
                let t0 = Instant::now();
                let end = t0 + duration;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    if let Some(rate) = rate {
                        // Pace in steps of 10 ms.
                        let due = (t0.elapsed().as_secs_f64() * f64::from(rate)) as u64;
                        if n >= due {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    }
                    buf.clear();
                    make(&mut rng, &mut buf);
                    if sender.send(&mut rng, &buf, to) {
                        n += 1;
                        sent.store(n, Ordering::Relaxed);
                    }
                }
                done.store(true, Ordering::SeqCst);
                sender.answered()
            })
        };
        Ok(Flood { sent, done, stop, thread: Some(thread) })
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Whether it is still flooding.
    pub fn running(&self) -> bool {
        !self.done.load(Ordering::SeqCst)
    }

    /// Wait for the end of its time.
    pub fn join(mut self) -> FloodEnd {
        let answered = self.thread.take().map(|t| t.join().expect("the flood thread panicked")).unwrap_or(false);
        FloodEnd { sent: self.sent(), answered }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Sender {
    Bound(UdpSocket),
    Raw(RawSocket, Ipv4Addr),
}

impl Sender {
    fn send(&self, rng: &mut fastrand::Rng, payload: &[u8], to: SocketAddrV4) -> bool {
        match self {
            Sender::Bound(s) => s.send_to(payload, to).is_ok(),
            Sender::Raw(raw, ip) => raw.send(SocketAddrV4::new(*ip, rng.u16(1024..)), to, payload).is_ok(),
        }
    }

    fn answered(&self) -> bool {
        match self {
            Sender::Bound(s) => {
                let mut buf = [0u8; 2048];
                s.set_nonblocking(true).is_ok() && s.recv_from(&mut buf).is_ok()
            }
            Sender::Raw(..) => false,
        }
    }
}

/// An IPv4 raw socket that writes its own IP and UDP headers (`IPPROTO_RAW`).
#[derive(Debug)]
pub struct RawSocket {
    fd: std::os::fd::OwnedFd,
}

impl RawSocket {
    /// Open one.
    ///
    /// # Errors
    /// `PermissionDenied` without root or `CAP_NET_RAW`.
    #[allow(unsafe_code)] // socket(2); the descriptor is owned at once
    pub fn new() -> std::io::Result<RawSocket> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: socket(2) has no memory-safety preconditions; a valid descriptor is owned.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        Ok(RawSocket { fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) } })
    }

    /// Send `payload` as a UDP datagram from `from` to `to` (UDP checksum 0: none, which IPv4
    /// allows; the kernel fills the IP checksum).
    ///
    /// # Errors
    /// What sendto(2) reports.
    #[allow(unsafe_code)] // sendto(2) on our own buffer and address
    pub fn send(&self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;
        let total = 20 + 8 + payload.len();
        let mut p = Vec::with_capacity(total);
        p.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        p.extend_from_slice(&from.ip().octets());
        p.extend_from_slice(&to.ip().octets());
        let udp_len = 8 + payload.len();
        p.extend_from_slice(&from.port().to_be_bytes());
        p.extend_from_slice(&to.port().to_be_bytes());
        p.extend_from_slice(&[(udp_len >> 8) as u8, udp_len as u8, 0, 0]);
        p.extend_from_slice(payload);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(*to.ip()).to_be() },
            sin_zero: [0; 8],
        };
        // SAFETY: p and addr live across the call; the lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                p.as_ptr().cast(),
                p.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
