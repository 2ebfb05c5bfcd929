//! A real HTTP server standing in for a Slack incoming webhook.

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
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// Its JSON body.
    pub body: serde_json::Value,
    /// The status answered (0 for [`Answer::Hang`]).
    pub status: u16,
}

impl Received {
    /// The whole body as text, for `contains` checks.
    pub fn text(&self) -> String {
        self.body.to_string()
    }
}

#[derive(Debug, Default)]
struct State {
    script: Mutex<VecDeque<Answer>>,
    received: Mutex<Vec<Received>>,
    changed: Condvar,
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

async fn handle(req: Request<hyper::body::Incoming>, st: Arc<State>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let answer = st.script.lock().unwrap().pop_front().unwrap_or(Answer::Ok);
    let (status, text, retry_after) = match &answer {
        Answer::Ok => (200, "ok", None),
        Answer::Status(s, t) => (*s, *t, None),
        Answer::RateLimited(secs) => (429, "rate_limited", Some(*secs)),
        Answer::Hang => (0, "", None),
    };
    {
        let mut r = st.received.lock().unwrap();
        r.push(Received { at: Instant::now(), body: json, status });
        st.changed.notify_all();
    }
    if matches!(answer, Answer::Hang) {
        tokio::time::sleep(Duration::from_secs(60)).await;
        return Ok(Response::builder().status(500).body(Full::new(Bytes::new())).unwrap());
    }
    let mut resp = Response::builder().status(StatusCode::from_u16(status).unwrap());
    if let Some(s) = retry_after {
        resp = resp.header("retry-after", s.to_string());
    }
    Ok(resp.body(Full::new(Bytes::from_static(text.as_bytes()))).unwrap())
}
