//! A real HTTP server standing in for a Slack incoming webhook.
//!
//! It holds posts to Slack's documented limits as Slack does: a message over them is answered
//! `400 invalid_blocks` (or `msg_too_long`, `no_text`), and a post less than a second after the
//! last accepted one `429 rate_limited` with `Retry-After: 1` (250 ms are allowed for jitter on
//! the way, on a busy test machine). Scripted answers come first.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// How the stand-in answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 200 `ok`, as Slack answers a good post.
    Ok,
    /// Any status with Slack's error body, e.g. `(404, "no_service")`, `(500, "")`.
    Status(u16, &'static str),
    /// 429 `rate_limited` with `Retry-After: secs`.
    RateLimited(u64),
    /// Read the request, then never answer (the connection stays open for a minute).
    Hang,
    /// Accept the post (recorded as 200), but answer only after this long: a slow Slack.
    Slow(Duration),
}

/// Slack's limits for one message, and the least time between two accepted posts.
const MAX_BLOCKS: usize = 50;
const MAX_SECTION_TEXT: usize = 3000;
const MAX_FIELDS: usize = 10;
const MAX_FIELD_TEXT: usize = 2000;
const MAX_HEADER_TEXT: usize = 150;
const MAX_TEXT: usize = 40_000;
const MIN_SPACING: Duration = Duration::from_millis(750);

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// Its JSON body.
    pub body: serde_json::Value,
    /// The status answered (0 for [`Answer::Hang`]).
    pub status: u16,
    /// The webhook's path: collectors sharing the stand-in can each be given their own.
    pub path: String,
}

impl Received {
    /// The whole body as text, for `contains` checks.
    pub fn text(&self) -> String {
        self.body.to_string()
    }
}

#[derive(Debug)]
struct State {
    script: Mutex<VecDeque<Answer>>,
    received: Mutex<Vec<Received>>,
    changed: Condvar,
    /// When the last post was accepted (for the rate limit).
    last_accepted: Mutex<Option<Instant>>,
    /// The most blocks accepted in a message (Slack's 50 unless a test lowers it).
    max_blocks: std::sync::atomic::AtomicUsize,
}

impl Default for State {
    fn default() -> Self {
        State {
            script: Mutex::default(),
            received: Mutex::default(),
            changed: Condvar::new(),
            last_accepted: Mutex::default(),
            max_blocks: MAX_BLOCKS.into(),
        }
    }
}

/// The stand-in: answers from a script, then 200 `ok`.
#[derive(Debug)]
pub struct SlackStandIn {
    /// The webhook URL to configure.
    pub url: String,
    state: Arc<State>,
}

impl SlackStandIn {
    /// Start on a free port of 127.0.0.1, answering `script` in order, then 200 `ok`.
    pub fn start(script: Vec<Answer>) -> Self {
        Self::start_on(0, script)
    }

    /// Start on `port` of 127.0.0.1 (0: a free one), answering `script` in order, then 200 `ok`.
    pub fn start_on(port: u16, script: Vec<Answer>) -> Self {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}/services/T000/B000/XXXX", listener.local_addr().unwrap());
        let state = Arc::new(State::default());
        *state.script.lock().unwrap() = script.into();
        let st = state.clone();
        std::thread::Builder::new()
            .name("slack-stand-in".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    loop {
                        let Ok((stream, _)) = listener.accept().await else { continue };
                        let st = st.clone();
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req| handle(req, st.clone()));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                });
            })
            .unwrap();
        SlackStandIn { url, state }
    }

    /// Refuse messages of more than `n` blocks from now on (`400 invalid_blocks`), as a Slack
    /// that is stricter than its documentation would.
    pub fn set_max_blocks(&self, n: usize) {
        self.state.max_blocks.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Wait until `pred` holds for the requests received, up to `timeout`; returns them.
    ///
    /// # Panics
    /// On timeout, listing what was received.
    pub fn wait_for(&self, timeout: Duration, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut got = self.state.received.lock().unwrap();
        loop {
            if pred(&got) {
                return got.clone();
            }
            let now = Instant::now();
            assert!(now < deadline, "slack stand-in: timed out waiting for {what}; received {got:#?}");
            got = self.state.changed.wait_timeout(got, deadline - now).unwrap().0;
        }
    }

    /// Wait for a request whose body mentions `needle`.
    pub fn wait_for_text(&self, timeout: Duration, needle: &str) -> Received {
        let all = self.wait_for(timeout, needle, |r| r.iter().any(|x| x.status == 200 && x.text().contains(needle)));
        all.into_iter().find(|x| x.status == 200 && x.text().contains(needle)).unwrap()
    }
}

/// Where a message breaks Slack's limits: the error code Slack answers.
fn refusal(body: &serde_json::Value, max_blocks: usize) -> Option<&'static str> {
    let len = |v: &serde_json::Value| v.as_str().map_or(0, |s| s.chars().count());
    let Some(obj) = body.as_object() else { return Some("invalid_payload") };
    let text = len(&body["text"]);
    let blocks = obj.get("blocks").and_then(|b| b.as_array()).cloned().unwrap_or_default();
    if text == 0 && blocks.is_empty() {
        return Some("no_text");
    }
    if text > MAX_TEXT {
        return Some("msg_too_long");
    }
    if blocks.len() > max_blocks {
        return Some("invalid_blocks");
    }
    for b in &blocks {
        let ok = match b["type"].as_str() {
            Some("header") => {
                b["text"]["type"] == "plain_text" && (1..=MAX_HEADER_TEXT).contains(&len(&b["text"]["text"]))
            }
            Some("section") => {
                let fields = b["fields"].as_array().cloned().unwrap_or_default();
                let t = len(&b["text"]["text"]);
                t <= MAX_SECTION_TEXT
                    && (t > 0 || !fields.is_empty())
                    && fields.len() <= MAX_FIELDS
                    && fields.iter().all(|f| (1..=MAX_FIELD_TEXT).contains(&len(&f["text"])))
            }
            _ => false,
        };
        if !ok {
            return Some("invalid_blocks");
        }
    }
    None
}

async fn handle(req: Request<hyper::body::Incoming>, st: Arc<State>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let now = Instant::now();
    let answer = st.script.lock().unwrap().pop_front().unwrap_or_else(|| {
        if let Some(code) = refusal(&json, st.max_blocks.load(std::sync::atomic::Ordering::SeqCst)) {
            return Answer::Status(400, code);
        }
        let mut last = st.last_accepted.lock().unwrap();
        if last.is_some_and(|t| now.duration_since(t) < MIN_SPACING) {
            return Answer::RateLimited(1);
        }
        *last = Some(now);
        Answer::Ok
    });
    let (status, text, retry_after) = match &answer {
        Answer::Ok => (200, "ok", None),
        Answer::Status(s, t) => (*s, *t, None),
        Answer::RateLimited(secs) => (429, "rate_limited", Some(*secs)),
        Answer::Hang => (0, "", None),
        Answer::Slow(_) => (200, "ok", None),
    };
    {
        let mut r = st.received.lock().unwrap();
        r.push(Received { at: now, body: json, status, path });
        st.changed.notify_all();
    }
    match answer {
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return Ok(Response::builder().status(500).body(Full::new(Bytes::new())).unwrap());
        }
        Answer::Slow(d) => tokio::time::sleep(d).await,
        _ => {}
    }
    let mut resp = Response::builder().status(StatusCode::from_u16(status).unwrap());
    if let Some(s) = retry_after {
        resp = resp.header("retry-after", s.to_string());
    }
    Ok(resp.body(Full::new(Bytes::from_static(text.as_bytes()))).unwrap())
}
