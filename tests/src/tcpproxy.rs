//! A TCP proxy on loopback that can cut a client off from its server the way a dead network
//! path does: a blackhole. Bytes stop flowing both ways, nothing is closed or reset, so the
//! client sees a stall (its queries hang, a new connection is accepted but never greeted) and
//! has to notice by its own timeouts. When the path heals, the held bytes flow on in order, as
//! TCP's retransmissions would deliver them.
//!
//! Between a collector and PostgreSQL: the collector cut off from the database while the
//! others keep it.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
struct State {
    /// Whether bytes are held back (and new connections left without their server).
    blackholed: Mutex<bool>,
    changed: Condvar,
    /// Set on drop: every pump and the acceptor end.
    closing: AtomicBool,
    /// Both ends of every connection, to close them on drop.
    streams: Mutex<Vec<TcpStream>>,
    /// Connections accepted.
    accepted: AtomicU64,
    /// Bytes forwarded, both directions.
    forwarded: AtomicU64,
}

impl State {
    /// Wait while the path is blackholed; false when the proxy is closing.
    fn wait_open(&self) -> bool {
        let mut b = self.blackholed.lock().unwrap();
        while *b && !self.closing.load(Ordering::SeqCst) {
            b = self.changed.wait(b).unwrap();
        }
        !self.closing.load(Ordering::SeqCst)
    }
}

/// A proxy from a port of 127.0.0.1 to `upstream`. Dropping it closes every connection.
#[derive(Debug)]
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    upstream: SocketAddr,
    state: Arc<State>,
}

impl TcpProxy {
    /// Listen on a free port of 127.0.0.1 and forward every connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        std::thread::Builder::new()
            .name("tcp-proxy-accept".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if st.closing.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    st.accepted.fetch_add(1, Ordering::SeqCst);
                    let st = st.clone();
                    std::thread::spawn(move || connect(client, upstream, st));
                }
            })
            .unwrap();
        TcpProxy { addr, upstream, state }
    }

    /// The server behind the proxy.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Stop forwarding, both ways, on every connection and on new ones, without closing any.
    pub fn blackhole(&self) {
        *self.state.blackholed.lock().unwrap() = true;
        self.state.changed.notify_all();
    }

    /// Forward again; held bytes go on in order, new connections reach the server.
    pub fn heal(&self) {
        *self.state.blackholed.lock().unwrap() = false;
        self.state.changed.notify_all();
    }

    /// Whether the path is blackholed now.
    pub fn is_blackholed(&self) -> bool {
        *self.state.blackholed.lock().unwrap()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Bytes forwarded so far, both directions.
    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.state.closing.store(true, Ordering::SeqCst);
        self.state.changed.notify_all();
        for s in self.state.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the acceptor so that it sees `closing`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Connect `client` to `upstream` once the path is open, then pump both ways.
fn connect(client: TcpStream, upstream: SocketAddr, st: Arc<State>) {
    // A blackholed path: the client's connection was accepted, but it reaches nothing yet.
    let _ = client.try_clone().map(|c| st.streams.lock().unwrap().push(c));
    if !st.wait_open() {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = server.try_clone().map(|c| st.streams.lock().unwrap().push(c));
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
    let st2 = st.clone();
    std::thread::spawn(move || pump(client, server, st));
    std::thread::spawn(move || pump(s2, c2, st2));
}

/// Copy `from` to `to` while the path is open. A chunk read while it is blackholed is held
/// until it heals (and nothing more is read, so the sender's buffers fill as on a dead path).
fn pump(mut from: TcpStream, mut to: TcpStream, st: Arc<State>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !st.wait_open() {
            return;
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        if !st.wait_open() || to.write_all(&buf[..n]).is_err() {
            let _ = from.shutdown(Shutdown::Read);
            return;
        }
        st.forwarded.fetch_add(n as u64, Ordering::SeqCst);
    }
}
