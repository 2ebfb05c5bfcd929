//! A real SMTP server: the `mailin` library's protocol engine on a real TCP listener.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mailin::{Action, Handler, Response, SessionBuilder};

#[derive(Debug, Default)]
struct State {
    /// Answers to the end of DATA, in order; then 250.
    script: Mutex<VecDeque<u16>>,
    /// Messages accepted (answered 250), as received, with when the end of DATA came.
    accepted: Mutex<Vec<(Instant, String)>>,
    /// Every end of DATA seen, with the code answered.
    attempts: Mutex<Vec<u16>>,
    /// How each connection was treated.
    connections: Mutex<Vec<Conn>>,
    changed: Condvar,
}

#[derive(Debug, Clone)]
struct Mailbox {
    state: Arc<State>,
    data: Vec<u8>,
}

impl Handler for Mailbox {
    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, _to: &[String]) -> Response {
        self.data.clear();
        mailin::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let code = self.state.script.lock().unwrap().pop_front().unwrap_or(250);
        self.state.attempts.lock().unwrap().push(code);
        if code == 250 {
            let text = String::from_utf8_lossy(&self.data).into_owned();
            self.state.accepted.lock().unwrap().push((Instant::now(), text));
        }
        self.state.changed.notify_all();
        if code == 250 {
            mailin::response::OK
        } else {
            Response::custom(code, format!("scripted answer {code}"))
        }
    }
}

/// How the server treats one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conn {
    /// A normal session (the end of DATA answered from the script).
    Normal,
    /// `421 Service not available` instead of the greeting, then close: a server refusing work.
    Greet421,
    /// A normal session until `MAIL FROM`, then silence: the server stops answering mid-session.
    StallAfterMail,
    /// With implicit TLS: plain text where the TLS handshake should be, then close.
    BrokenTls,
}

/// How to start an [`SmtpServer`].
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// The port on 127.0.0.1 (0: a free one).
    pub port: u16,
    /// Answers to the end of DATA, in order; then 250.
    pub data: Vec<u16>,
    /// How to treat each connection, in order; then [`Conn::Normal`].
    pub connections: Vec<Conn>,
    /// Implicit TLS (SMTPS) with the test certificate of `tests/fixtures/tls` (127.0.0.1,
    /// signed by `ca.pem`).
    pub tls: bool,
}

/// The test certificate authority that signed the TLS server's certificate.
pub fn test_ca_file() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls/ca.pem")
}

fn tls_config() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .expect("server.pem")
        .collect::<Result<_, _>>()
        .expect("server.pem");
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("test certificate"),
    )
}

/// The SMTP server, listening on 127.0.0.1.
#[derive(Debug)]
pub struct SmtpServer {
    /// Its port.
    pub port: u16,
    state: Arc<State>,
}

impl SmtpServer {
    /// Start on a free port, answering the end of DATA with `script` in order (e.g. `[451]`),
    /// then 250.
    pub fn start(script: Vec<u16>) -> Self {
        Self::start_with(Setup { data: script, ..Setup::default() })
    }

    /// Start as `setup` says.
    pub fn start_with(setup: Setup) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", setup.port)).expect("bind");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        *state.script.lock().unwrap() = setup.data.into();
        let tls = setup.tls.then(tls_config);
        let st = state.clone();
        let mut plan: VecDeque<Conn> = setup.connections.into();
        std::thread::Builder::new()
            .name("smtp-server".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let st = st.clone();
                    let how = plan.pop_front().unwrap_or(Conn::Normal);
                    st.connections.lock().unwrap().push(how);
                    st.changed.notify_all();
                    let tls = tls.clone();
                    std::thread::spawn(move || connection(stream, how, tls, st));
                }
            })
            .unwrap();
        SmtpServer { port, state }
    }

    /// How each connection so far was treated, in order.
    pub fn connections(&self) -> Vec<Conn> {
        self.state.connections.lock().unwrap().clone()
    }

    /// Wait until `n` connections have been made, up to `timeout`.
    ///
    /// # Panics
    /// On timeout.
    pub fn wait_connections(&self, timeout: Duration, n: usize) {
        let deadline = Instant::now() + timeout;
        let mut conns = self.state.connections.lock().unwrap();
        while conns.len() < n {
            let now = Instant::now();
            assert!(now < deadline, "smtp: timed out waiting for {n} connections; got {conns:?}");
            conns = self.state.changed.wait_timeout(conns, deadline - now).unwrap().0;
        }
    }

    /// Messages accepted so far.
    pub fn accepted(&self) -> Vec<String> {
        self.state.accepted.lock().unwrap().iter().map(|(_, m)| m.clone()).collect()
    }

    /// Messages accepted so far, with when each was accepted.
    pub fn accepted_at(&self) -> Vec<(Instant, String)> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// The codes answered to each end of DATA so far.
    pub fn attempts(&self) -> Vec<u16> {
        self.state.attempts.lock().unwrap().clone()
    }

    /// Wait until a message containing `needle` is accepted, up to `timeout`.
    ///
    /// # Panics
    /// On timeout.
    pub fn wait_for_text(&self, timeout: Duration, needle: &str) -> String {
        let deadline = Instant::now() + timeout;
        let mut got = self.state.accepted.lock().unwrap();
        loop {
            if let Some((_, m)) = got.iter().find(|(_, m)| unfold(m).contains(needle)) {
                return unfold(m);
            }
            let now = Instant::now();
            assert!(now < deadline, "smtp: timed out waiting for a message with {needle:?}; accepted {got:#?}");
            got = self.state.changed.wait_timeout(got, deadline - now).unwrap().0;
        }
    }
}

/// Undo header folding and quoted-printable soft line breaks, so `contains` sees whole values.
pub fn unfold(m: &str) -> String {
    m.replace("=\r\n", "").replace("\r\n ", " ").replace("\r\n\t", " ")
}

fn connection(stream: TcpStream, how: Conn, tls: Option<Arc<rustls::ServerConfig>>, state: Arc<State>) {
    let peer: IpAddr = stream.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    // Each reply leaves in one segment, as from a real server (mailin writes a reply in pieces;
    // with Nagle's algorithm and delayed ACKs each reply would otherwise take ~40 ms).
    let _ = stream.set_nodelay(true);
    let mut stream = stream;
    match (how, tls) {
        (Conn::BrokenTls, _) => {
            let _ = stream.write_all(b"220 sos-test-smtp ESMTP (this should have been a TLS handshake)\r\n");
        }
        (Conn::Greet421, None) => {
            let _ = stream.write_all(b"421 sos-test-smtp Service not available, closing transmission channel\r\n");
        }
        (_, None) => session(stream, peer, how == Conn::StallAfterMail, state),
        (_, Some(config)) => {
            let Ok(conn) = rustls::ServerConnection::new(config) else { return };
            let mut tls = rustls::StreamOwned::new(conn, stream);
            if how == Conn::Greet421 {
                let _ = tls.write_all(b"421 sos-test-smtp Service not available, closing transmission channel\r\n");
                let _ = tls.flush();
                return;
            }
            session(tls, peer, how == Conn::StallAfterMail, state);
        }
    }
}

fn session<S: Read + Write>(stream: S, peer: IpAddr, stall_after_mail: bool, state: Arc<State>) {
    let mut reader = BufReader::new(stream);
    let mailbox = Mailbox { state, data: Vec::new() };
    let builder = SessionBuilder::new("sos-test-smtp");
    let mut session = builder.build(peer, mailbox.clone());
    if session.greeting().write_to(reader.get_mut()).is_err() || reader.get_mut().flush().is_err() {
        return;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if stall_after_mail && line.to_ascii_uppercase().starts_with(b"MAIL FROM") {
            // Say nothing more; hold the connection until the client gives up and closes it.
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
            return;
        }
        let res = session.process(&line);
        let writer = reader.get_mut();
        match res.action {
            Action::Reply => {
                if res.write_to(&mut *writer).is_err() {
                    return;
                }
            }
            Action::Close | Action::UpgradeTls => {
                let _ = res.write_to(&mut *writer);
                let _ = writer.flush();
                return;
            }
            Action::NoReply => {}
        }
        // mailin stays in its DATA state after an error answer to the end of DATA, where a real
        // server is ready for the next command (the client's RSET or QUIT): start a fresh
        // session on this connection, as if after the greeting.
        if res.is_error && line == b".\r\n" {
            session = builder.build(peer, mailbox.clone());
        }
        let _ = writer.flush();
    }
}
