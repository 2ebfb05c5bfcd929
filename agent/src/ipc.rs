//! Local IPC between `sos-agent trigger` (and scripts, desktop shortcuts, USB buttons) and the
//! running tray agent: newline-delimited JSON over a Unix socket private to the user.
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
//! The socket also makes the agent single-instance per user session: `run` binds it, and a
//! second `run` that finds a live agent answering on it says so and exits.
//!
//! ## Platform-specific
//! - **Linux/BSD/macOS:** `$XDG_RUNTIME_DIR/sos-agent.sock` (a directory only the user can
//!   enter), else `sos-agent.sock` in the agent's data directory. Never a fixed name in `/tmp`,
//!   where another user could squat it and swallow SOS.
//! - **Windows:** not available yet (a named pipe is planned); `sos-agent trigger` then sends
//!   directly, as `sos-agent send` does.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sos_shared::protocol::Sos;
use sos_shared::AlertId;

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

/// Where the running agent listens.
pub fn socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("sos-agent.sock"),
        None => crate::paths::data_dir().join("sos-agent.sock"),
    }
}

#[cfg(unix)]
pub use unix::{request, Listener};

#[cfg(unix)]
mod unix {
    use super::*;
    use std::future::Future;
    use std::path::Path;
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
    use tokio::net::{UnixListener, UnixStream};
    use tracing::{debug, warn};

    /// How much one connection may send in all, so that a client cannot make the agent buffer
    /// without limit.
    const MAX_CONNECTION_BYTES: u64 = 256 * 1024;

    /// Ask the agent listening on `path`, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`IpcError::NotRunning`] if nobody listens; [`IpcError::BadAnswer`] otherwise.
    pub async fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Response, IpcError> {
        let exchange = async {
            let mut stream = UnixStream::connect(path)
                .await
                .map_err(|e| IpcError::NotRunning(format!("{}: {e}", path.display())))?;
            let mut line = serde_json::to_vec(req).map_err(|e| IpcError::BadAnswer(e.to_string()))?;
            line.push(b'\n');
            stream.write_all(&line).await.map_err(|e| IpcError::BadAnswer(e.to_string()))?;
            let mut answer = String::new();
            BufReader::new(stream).read_line(&mut answer).await.map_err(|e| IpcError::BadAnswer(e.to_string()))?;
            serde_json::from_str(answer.trim()).map_err(|e| IpcError::BadAnswer(format!("{e}: {answer:?}")))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| IpcError::BadAnswer(format!("no answer within {timeout:?}")))?
    }

    /// The bound socket of the running agent. The file is removed when this is dropped.
    #[derive(Debug)]
    pub struct Listener {
        listener: UnixListener,
        path: PathBuf,
    }

    impl Listener {
        /// Bind `path`, unless a live agent already answers there (then `Ok(None)`). A stale
        /// socket file left by a crashed agent is replaced.
        ///
        /// # Errors
        /// If the socket cannot be created.
        pub async fn bind(path: &Path) -> std::io::Result<Option<Self>> {
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

        /// Answer requests with `handle` until the task is dropped. Each connection is served
        /// in its own task; a misbehaving client only affects itself.
        pub async fn serve<F, Fut>(self, handle: F)
        where
            F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = Response> + Send,
        {
            loop {
                let stream = match self.listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        warn!(error = %e, "IPC accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let handle = handle.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read.take(MAX_CONNECTION_BYTES)).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let response = match serde_json::from_str::<Request>(&line) {
                            Ok(req) => handle(req).await,
                            Err(e) => Response::Error(format!("not a request: {e}")),
                        };
                        let mut out = serde_json::to_vec(&response).unwrap_or_default();
                        out.push(b'\n');
                        if write.write_all(&out).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
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

    #[cfg(unix)]
    #[tokio::test]
    async fn one_agent_per_socket_and_requests_are_answered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
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
