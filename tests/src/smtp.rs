//! A real SMTP server: the `mailin` library's protocol engine on a real TCP listener.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mailin::{Action, Handler, Response, SessionBuilder};

#[derive(Debug, Default)]
struct State {
    /// Answers to the end of DATA, in order; then 250.
    script: Mutex<VecDeque<u16>>,
    /// Messages accepted (answered 250), as received.
    accepted: Mutex<Vec<String>>,
    /// Every end of DATA seen, with the code answered.
    attempts: Mutex<Vec<u16>>,
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
            self.state.accepted.lock().unwrap().push(text);
        }
        self.state.changed.notify_all();
        if code == 250 {
            mailin::response::OK
        } else {
            Response::custom(code, format!("scripted answer {code}"))
        }
    }
}

/// The SMTP server, listening on a free port of 127.0.0.1.
#[derive(Debug)]
pub struct SmtpServer {
    /// Its port.
    pub port: u16,
    state: Arc<State>,
}

impl SmtpServer {
    /// Start, answering the end of DATA with `script` in order (e.g. `[451]`), then 250.
    pub fn start(script: Vec<u16>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        *state.script.lock().unwrap() = script.into();
        let st = state.clone();
        std::thread::Builder::new()
            .name("smtp-server".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let st = st.clone();
                    std::thread::spawn(move || session(stream, st));
                }
            })
            .unwrap();
        SmtpServer { port, state }
    }

    /// Messages accepted so far.
    pub fn accepted(&self) -> Vec<String> {
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
            if let Some(m) = got.iter().find(|m| unfold(m).contains(needle)) {
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

fn session(stream: TcpStream, state: Arc<State>) {
    let peer: IpAddr = stream.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream);
    let mailbox = Mailbox { state, data: Vec::new() };
    let builder = SessionBuilder::new("sos-test-smtp");
    let mut session = builder.build(peer, mailbox.clone());
    if session.greeting().write_to(&mut writer).is_err() {
        return;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let res = session.process(&line);
        match res.action {
            Action::Reply => {
                if res.write_to(&mut writer).is_err() {
                    return;
                }
            }
            Action::Close | Action::UpgradeTls => {
                let _ = res.write_to(&mut writer);
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
