//! Local IPC between `sos-agent trigger` (and scripts, desktop shortcuts, USB buttons) and the
//! running tray agent: newline-delimited JSON over a Unix socket or a Windows named pipe,
//! private to the user. One interface for both: [`endpoint`], [`request`], [`Listener`].
//!
//! One request per line, one response per line:
//!
//! ```text
//! → {"cmd":"trigger","test":false,"message":""}
//! ← {"accepted":"0123456789abcdef0123456789abcdef"}
//! → {"cmd":"trigger","test":false,"message":"","alert_id":"0123456789abcdef0123456789abcdef"}
//! ← {"accepted":"0123456789abcdef0123456789abcdef"}   (`sos-agent trigger` picks the id)
//! → {"cmd":"status"}
//! ← {"status":{"state":"ready","detail":"…"}}
//! → {"cmd":"adopt","sos":{…}}                       (a `sos-agent send` that gave up)
//! ← {"accepted":"0123456789abcdef0123456789abcdef"}
//! → {"cmd":"discard","alert_id":"0123456789abcdef0123456789abcdef"}
//! ← {"done":true}                                     (false: it was not being sent here)
//! → {"cmd":"cancelled","alert_id":"0123456789abcdef0123456789abcdef"}
//! ← {"done":true}                                     (`sos-agent cancel` tells the tray)
//! ```
//!
//! The endpoint also makes the agent single-instance: `run` binds it, and a second `run` that
//! finds a live agent there says so and exits.
//!
//! ## Platform-specific
//! - **Linux/BSD/macOS:** `$XDG_RUNTIME_DIR/sos-agent.sock` (a directory only the user can
//!   enter), else `sos-agent.sock` in the agent's data directory, mode 0600. Never a fixed name
//!   in `/tmp`, where another user could squat it and swallow SOS. One agent per
//!   `$XDG_RUNTIME_DIR`, i.e. per user session.
//! - **Windows:** a named pipe `\\.\pipe\sos-agent-<128 random bits>`, a new name at every
//!   start, written to `%LOCALAPPDATA%\sos\agent.pipe` ([`endpoint`]) where `sos-agent
//!   trigger` reads it. The running agent holds `%LOCALAPPDATA%\sos\agent.lock` open with no
//!   sharing: a second agent of the same user cannot open it and exits (one agent per user,
//!   across that user's sessions: Windows pipe names are machine-wide). What keeps other users
//!   out, without unsafe code: they cannot read the user's `%LOCALAPPDATA%` (profile ACL), so
//!   they cannot know the next name and create the pipe first (the agent also creates it with
//!   `first_pipe_instance`, so it never joins a pipe someone else made); the pipe's default
//!   DACL gives full control to the creator owner, LocalSystem and Administrators and only
//!   *read* to Everyone, so another user who lists `\\.\pipe\` and opens it cannot write a
//!   request (a client opens it read-write); remote clients are rejected. Not enforced: an
//!   administrator, or a process of the same user, can trigger (as on Unix); another user may
//!   open the pipe read-only and keep one instance busy (the agent makes a new instance for
//!   every connection, so others are still served). See docs/SECURITY.md.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sos_shared::protocol::Sos;
use sos_shared::AlertId;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader};
use tracing::warn;

/// A request to the running agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Fire the SOS, exactly as the hotkey does.
    Trigger {
        /// A drill.
        #[serde(default)]
        test: bool,
        /// Text for the responders.
        #[serde(default)]
        message: String,
        /// The alert's id, chosen by the caller so that, if it gets no answer and sends the
        /// alert itself, the collector sees one alert, not two.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alert_id: Option<AlertId>,
    },
    /// What state the agent is in.
    Status,
    /// Keep sending this alert, which a `sos-agent send` could not deliver in its time.
    Adopt {
        /// The alert, as spooled (same id, same `triggered_at`).
        sos: Box<Sos>,
    },
    /// Stop sending this alert (`sos-agent spool discard`).
    Discard {
        /// The alert.
        alert_id: AlertId,
    },
    /// This alert was cancelled from the command line (`sos-agent cancel`): the tray says so.
    Cancelled {
        /// The alert.
        alert_id: AlertId,
    },
    /// "I'm responding" to someone's alert (`sos-agent respond`), as the popup's action does;
    /// answered once a collector confirmed it (or a minute passed).
    Respond {
        /// The alert.
        alert_id: AlertId,
        /// A note for the sender and the other responders.
        #[serde(default)]
        note: String,
    },
}

/// The running agent's state, as its tray icon shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `ready`, `sending`, `delivered`, `offline` or `attention`.
    pub state: String,
    /// The same words as the tray tooltip.
    pub detail: String,
}

/// The running agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The SOS is spooled and being sent; its id.
    Accepted(AlertId),
    /// The agent's state.
    Status(Status),
    /// Done (`true`), or nothing to do (`false`).
    Done(bool),
    /// The collector's answer to "I'm responding".
    Responded(sos_shared::protocol::RespondStatus),
    /// The request was not understood.
    Error(String),
}

/// Why the running agent could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// No agent is listening (none runs in this session, or a stale socket file).
    #[error("no sos-agent is running in this session ({0})")]
    NotRunning(String),
    /// The agent did not answer in time or answered nonsense.
    #[error("the running sos-agent did not answer properly: {0}")]
    BadAnswer(String),
}

/// Where the running agent listens: on Unix the socket's path; on Windows the file that holds
/// the current pipe name (module docs, "Platform-specific").
pub fn endpoint() -> PathBuf {
    if cfg!(windows) {
        return crate::paths::data_dir().join("agent.pipe");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("sos-agent.sock"),
        None => crate::paths::data_dir().join("sos-agent.sock"),
    }
}

/// How much one connection may send in all, so that a client cannot make the agent buffer
/// without limit.
const MAX_CONNECTION_BYTES: u64 = 256 * 1024;

/// One request, one answer, on a connected stream (socket or pipe).
async fn exchange<S: AsyncRead + AsyncWrite>(stream: S, req: &Request) -> Result<Response, IpcError> {
    let (read, mut write) = tokio::io::split(stream);
    let mut line = serde_json::to_vec(req).map_err(|e| IpcError::BadAnswer(e.to_string()))?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(|e| IpcError::BadAnswer(e.to_string()))?;
    write.flush().await.map_err(|e| IpcError::BadAnswer(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(read.take(MAX_CONNECTION_BYTES))
        .read_line(&mut answer)
        .await
        .map_err(|e| IpcError::BadAnswer(e.to_string()))?;
    serde_json::from_str(answer.trim()).map_err(|e| IpcError::BadAnswer(format!("{e}: {answer:?}")))
}

/// Answer the requests of one connected client with `handle` until it hangs up or has sent
/// [`MAX_CONNECTION_BYTES`].
async fn serve_connection<S, F, Fut>(stream: S, handle: F)
where
    S: AsyncRead + AsyncWrite,
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read.take(MAX_CONNECTION_BYTES)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(req).await,
            Err(e) => Response::Error(format!("not a request: {e}")),
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        if write.write_all(&out).await.is_err() || write.flush().await.is_err() {
            break;
        }
    }
}

/// Ask the agent listening at `endpoint`, waiting at most `timeout`.
///
/// # Errors
/// [`IpcError::NotRunning`] if nobody listens; [`IpcError::BadAnswer`] otherwise.
pub async fn request(endpoint: &Path, req: &Request, timeout: Duration) -> Result<Response, IpcError> {
    let exchange = async {
        let stream = platform::connect(endpoint).await?;
        exchange(stream, req).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| IpcError::BadAnswer(format!("no answer within {timeout:?}")))?
}

/// The bound endpoint of the running agent, released when this is dropped.
#[derive(Debug)]
pub struct Listener {
    inner: platform::Listener,
}

impl Listener {
    /// Bind `endpoint`, unless a live agent already holds it (then `Ok(None)`). What a crashed
    /// agent left behind (a socket file) is replaced.
    ///
    /// # Errors
    /// If the endpoint cannot be created.
    pub async fn bind(endpoint: &Path) -> std::io::Result<Option<Self>> {
        Ok(platform::Listener::bind(endpoint).await?.map(|inner| Listener { inner }))
    }

    /// Answer requests with `handle` until the task is dropped. Each connection is served in
    /// its own task; a misbehaving client only affects itself.
    pub async fn serve<F, Fut>(self, handle: F)
    where
        F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let mut inner = self.inner;
        loop {
            match inner.accept().await {
                Ok(stream) => {
                    let handle = handle.clone();
                    tokio::spawn(serve_connection(stream, handle));
                }
                Err(e) => {
                    warn!(error = %e, "IPC accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

#[cfg(unix)]
mod platform {
    use super::*;
    use tokio::net::{UnixListener, UnixStream};
    use tracing::debug;

    pub(super) async fn connect(path: &Path) -> Result<UnixStream, IpcError> {
        UnixStream::connect(path).await.map_err(|e| IpcError::NotRunning(format!("{}: {e}", path.display())))
    }

    /// The bound socket. The file is removed when this is dropped.
    #[derive(Debug)]
    pub(super) struct Listener {
        listener: UnixListener,
        path: PathBuf,
    }

    impl Listener {
        pub(super) async fn bind(path: &Path) -> std::io::Result<Option<Self>> {
            if path.exists() {
                if request(path, &Request::Status, Duration::from_secs(2)).await.is_ok() {
                    return Ok(None);
                }
                debug!(path = %path.display(), "removing a stale agent socket");
                std::fs::remove_file(path)?;
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let listener = UnixListener::bind(path)?;
            // Only this user may trigger this user's agent.
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            Ok(Some(Listener { listener, path: path.to_path_buf() }))
        }

        pub(super) async fn accept(&mut self) -> std::io::Result<UnixStream> {
            Ok(self.listener.accept().await?.0)
        }
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(windows)]
mod platform {
    use super::*;
    use std::fs::File;
    use std::os::windows::fs::OpenOptionsExt as _;
    use tokio::net::windows::named_pipe::{ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions};

    /// All instances of the pipe are busy: wait for one.
    const ERROR_PIPE_BUSY: i32 = 231;

    /// The pipe name written in `file`, if it holds one of ours.
    fn pipe_name(file: &Path) -> Result<String, IpcError> {
        let text =
            std::fs::read_to_string(file).map_err(|e| IpcError::NotRunning(format!("{}: {e}", file.display())))?;
        let name = text.trim();
        match name.strip_prefix(r"\\.\pipe\sos-agent-") {
            Some(id) if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(name.to_owned()),
            _ => Err(IpcError::NotRunning(format!("{}: not a pipe name of the agent", file.display()))),
        }
    }

    pub(super) async fn connect(file: &Path) -> Result<NamedPipeClient, IpcError> {
        let name = pipe_name(file)?;
        loop {
            match ClientOptions::new().open(&name) {
                Ok(client) => return Ok(client),
                // Between two instances: the caller's timeout bounds this.
                Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(IpcError::NotRunning(format!("{name}: {e}"))),
            }
        }
    }

    /// The agent's pipe, its next free instance, and the lock that makes it the only agent.
    #[derive(Debug)]
    pub(super) struct Listener {
        /// The instance the next client connects to.
        next: NamedPipeServer,
        /// `\\.\pipe\sos-agent-…`.
        name: String,
        /// `agent.pipe`, which tells clients the name; removed when the agent stops.
        file: PathBuf,
        /// `agent.lock`, open without sharing while this agent runs.
        _lock: File,
    }

    fn new_instance(name: &str, first: bool) -> std::io::Result<NamedPipeServer> {
        ServerOptions::new().first_pipe_instance(first).reject_remote_clients(true).create(name)
    }

    impl Listener {
        pub(super) async fn bind(file: &Path) -> std::io::Result<Option<Self>> {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let lock_path = file.with_extension("lock");
            // No sharing: a second agent of this user cannot open it while we run; it is
            // released when this process ends, however it ends.
            let lock = match std::fs::OpenOptions::new().write(true).create(true).truncate(false).share_mode(0).open(&lock_path) {
                Ok(f) => f,
                Err(e) if e.raw_os_error() == Some(32) /* ERROR_SHARING_VIOLATION */ => return Ok(None),
                Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", lock_path.display()))),
            };
            // A fresh, unguessable name each start: nobody can create it before us.
            let name = format!(r"\\.\pipe\sos-agent-{}", AlertId::random());
            let next = new_instance(&name, true)?;
            let mut tmp = tempfile::NamedTempFile::new_in(file.parent().unwrap_or(Path::new(".")))?;
            std::io::Write::write_all(&mut tmp, name.as_bytes())?;
            tmp.persist(file).map_err(|e| e.error)?;
            Ok(Some(Listener { next, name, file: file.to_path_buf(), _lock: lock }))
        }

        pub(super) async fn accept(&mut self) -> std::io::Result<NamedPipeServer> {
            let connected = self.next.connect().await;
            // The next client needs an instance of its own before this one is handed out (or,
            // if the client left before it was served, thrown away).
            let fresh = new_instance(&self.name, false)?;
            let this = std::mem::replace(&mut self.next, fresh);
            connected.map(|()| this)
        }
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            // Only this agent writes it while it holds the lock.
            let _ = std::fs::remove_file(&self.file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_response_lines_are_as_documented() {
        let t = Request::Trigger { test: false, message: String::new(), alert_id: None };
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"cmd":"trigger","test":false,"message":""}"#);
        let parsed: Request = serde_json::from_str(r#"{"cmd":"trigger"}"#).unwrap();
        assert_eq!(parsed, t);
        let a = Response::Accepted(AlertId::from_u128(1));
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"accepted":"00000000000000000000000000000001"}"#);
    }

    /// On Windows (under Wine in CI: `cargo test --target x86_64-pc-windows-gnu`), the same
    /// test runs over the named pipe.
    #[tokio::test]
    async fn one_agent_per_endpoint_and_requests_are_answered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(if cfg!(windows) { "agent.pipe" } else { "a.sock" });
        let listener = Listener::bind(&path).await.unwrap().expect("first bind");
        let server = tokio::spawn(listener.serve(|req| async move {
            match req {
                Request::Trigger { .. } => Response::Accepted(AlertId::from_u128(7)),
                Request::Status => Response::Status(Status { state: "ready".into(), detail: String::new() }),
                _ => Response::Done(false),
            }
        }));
        assert!(Listener::bind(&path).await.unwrap().is_none(), "a second agent must not bind");
        let r = request(
            &path,
            &Request::Trigger { test: true, message: "x".into(), alert_id: None },
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(r, Response::Accepted(AlertId::from_u128(7)));
        // Every connection gets its own instance (a Windows pipe serves one client each).
        for _ in 0..3 {
            let r = request(&path, &Request::Status, Duration::from_secs(5)).await.unwrap();
            assert!(matches!(r, Response::Status(_)), "{r:?}");
        }
        server.abort();
        let _ = server.await;
        // The listener was dropped with the task: its file is gone, a new agent may bind.
        assert!(!path.exists());
        assert!(matches!(request(&path, &Request::Status, Duration::from_secs(1)).await, Err(IpcError::NotRunning(_))));
        // A stale file (crashed agent) is replaced.
        std::fs::write(&path, b"").unwrap();
        assert!(Listener::bind(&path).await.unwrap().is_some());
    }
}
