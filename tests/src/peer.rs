//! A raw protocol peer for hand-made datagrams.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sos_shared::protocol::split_datagram;
use sos_shared::{unix_now, Key, Message, TimeWindow};

/// A UDP socket speaking the protocol with a key.
#[derive(Debug)]
pub struct Peer {
    socket: UdpSocket,
    key: Key,
    to: SocketAddr,
}

impl Peer {
    /// A peer talking to `to` with `key`.
    pub fn new(to: SocketAddr, key: Key) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        Peer { socket, key, to }
    }

    /// A peer talking to `to` with `key` from the local address `ip` (any of 127.0.0.0/8 works
    /// on Linux loopback), to stand for another host.
    pub fn from_ip(ip: &str, to: SocketAddr, key: Key) -> Self {
        let socket = UdpSocket::bind((ip, 0)).unwrap();
        Peer { socket, key, to }
    }

    /// The local address it sends from.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    /// Seal and send `message`; returns the datagram sent.
    pub fn send(&self, message: &Message) -> Vec<u8> {
        let d = self.key.seal(message, unix_now()).unwrap();
        self.send_raw(&d);
        d
    }

    /// Send bytes as they are.
    pub fn send_raw(&self, datagram: &[u8]) {
        self.socket.send_to(datagram, self.to).unwrap();
    }

    /// The next datagram received within `timeout`, raw.
    pub fn recv_raw(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 2048];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
            match self.socket.recv_from(&mut buf) {
                Ok((n, _)) => return Some(buf[..n].to_vec()),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None
                }
                Err(_) => continue,
            }
        }
    }

    /// Open a datagram sealed with this peer's key.
    pub fn open(&self, datagram: &[u8]) -> Option<Message> {
        let (id, token) = split_datagram(datagram).ok()?;
        (id == self.key.id()).then_some(())?;
        Some(self.key.open(token, unix_now(), TimeWindow::default()).ok()?.message)
    }
}
