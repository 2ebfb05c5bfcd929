//! Real HTTP servers standing in for Twilio's Messages API, a Microsoft Teams Workflows
//! webhook, an ntfy server and a Standard Webhooks receiver. Each answers as its service
//! documents: its limits, its status codes and error bodies. Scripted answers come first.
//!
//! The webhook receiver verifies every request's signature with its own implementation of
//! Standard Webhooks 1.0 (HMAC-SHA256 over `id.timestamp.body`, `v1,` and base64 in a space
//! separated list, a timestamp within 5 minutes), and answers 401 when it does not verify.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Which service a stand-in answers as.
#[derive(Debug, Clone)]
pub enum Service {
    /// Twilio's Messages API for this account and auth token.
    Twilio {
        /// `AC…`
        account_sid: String,
        /// The auth token it expects (HTTP basic auth).
        auth_token: String,
    },
    /// A Teams Workflows webhook.
    Teams,
    /// An ntfy server; with a token, it requires `Authorization: Bearer <token>`.
    Ntfy {
        /// The access token it expects, if any.
        token: Option<String>,
    },
    /// A Standard Webhooks receiver with this signing secret (`whsec_…`).
    Webhook {
        /// The secret as configured on both sides.
        secret: String,
    },
}

/// How the stand-in answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// As the service would.
    AsService,
    /// This status and body, with `Retry-After` when given.
    Status(u16, String, Option<u64>),
    /// Read the request, then never answer (the connection stays open for a minute).
    Hang,
}

impl Reply {
    /// Twilio's error body: `{code, message, more_info, status}`.
    pub fn twilio(status: u16, code: u32, message: &str, retry_after: Option<u64>) -> Reply {
        let body = json!({"code": code, "message": message,
                          "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status});
        Reply::Status(status, body.to_string(), retry_after)
    }

    /// ntfy's error body: `{code, http, error}`.
    pub fn ntfy(status: u16, code: u32, error: &str, retry_after: Option<u64>) -> Reply {
        Reply::Status(status, json!({"code": code, "http": status, "error": error}).to_string(), retry_after)
    }
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// Its path and query.
    pub path: String,
    /// Its headers, names in lower case.
    pub headers: HashMap<String, String>,
    /// Its body.
    pub body: Vec<u8>,
    /// The status answered (0 for [`Reply::Hang`]).
    pub status: u16,
}

impl Received {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as a form (Twilio's requests).
    pub fn form(&self) -> HashMap<String, String> {
        form(&self.body)
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect()
}

/// `application/x-www-form-urlencoded` decoding.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug)]
struct State {
    service: Service,
    script: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
    changed: Condvar,
}

/// A stand-in: answers from a script, then as its service.
#[derive(Debug)]
pub struct StandIn {
    /// The URL to configure: the webhook URL for Teams and webhooks (with a secret-looking
    /// path and query), the server for ntfy and Twilio.
    pub url: String,
    state: Arc<State>,
}

/// Twilio's limit on a message body, characters.
pub const TWILIO_MAX_BODY: usize = 1600;
/// Teams' limit on a message, bytes.
pub const TEAMS_MAX_BYTES: usize = 28 * 1024;
/// ntfy's message limit, bytes.
pub const NTFY_MAX_MESSAGE: usize = 4096;
/// A number Twilio refuses as invalid (21211), as its magic test number does.
pub const INVALID_NUMBER: &str = "+15005550001";

impl StandIn {
    /// Start on a free port of 127.0.0.1, answering `script` in order, then as `service`.
    pub fn start(service: Service, script: Vec<Reply>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().unwrap();
        let url = match &service {
            Service::Teams => {
                format!("http://{addr}/workflows/abc/triggers/manual/paths/invoke?api-version=1&sig=t3amsS1gSecret")
            }
            Service::Webhook { .. } => format!("http://{addr}/hooks/h00kPathSecret"),
            Service::Ntfy { .. } | Service::Twilio { .. } => format!("http://{addr}"),
        };
        let state = Arc::new(State {
            service,
            script: Mutex::new(script.into()),
            received: Mutex::default(),
            changed: Condvar::new(),
        });
        let st = state.clone();
        std::thread::Builder::new()
            .name("stand-in".into())
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
        StandIn { url, state }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Add answers to the end of the script.
    pub fn script(&self, replies: Vec<Reply>) {
        self.state.script.lock().unwrap().extend(replies);
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
            assert!(now < deadline, "stand-in: timed out waiting for {what}; received {got:#?}");
            got = self.state.changed.wait_timeout(got, deadline - now).unwrap().0;
        }
    }

    /// Wait for an accepted request whose body mentions `needle`.
    pub fn wait_for_text(&self, timeout: Duration, needle: &str) -> Received {
        let ok = |x: &Received| (200..300).contains(&x.status) && x.text().contains(needle);
        let all = self.wait_for(timeout, needle, |r| r.iter().any(ok));
        all.into_iter().find(ok).unwrap()
    }
}

/// The verdict of an independent Standard Webhooks verification.
pub fn verify_webhook(secret: &str, headers: &HashMap<String, String>, body: &[u8], now: i64) -> Result<(), String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|e| format!("bad secret: {e}"))?;
    let id = headers.get("webhook-id").ok_or("no webhook-id")?;
    let ts = headers.get("webhook-timestamp").ok_or("no webhook-timestamp")?;
    let sigs = headers.get("webhook-signature").ok_or("no webhook-signature")?;
    let t: i64 = ts.parse().map_err(|_| "webhook-timestamp is not an integer")?;
    if (now - t).abs() > 300 {
        return Err(format!("webhook-timestamp {t} is more than 5 minutes from {now}"));
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    for s in sigs.split(' ') {
        if let Some(b64) = s.strip_prefix("v1,") {
            if let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(b64) {
                // Constant time is the receiver's duty in production; a test compares plainly.
                if sig.as_slice() == expected.as_slice() {
                    return Ok(());
                }
            }
        }
    }
    Err("no v1 signature verifies".into())
}

/// What the service answers: (status, body).
fn as_service(service: &Service, path: &str, headers: &HashMap<String, String>, body: &[u8]) -> (u16, String) {
    match service {
        Service::Twilio { account_sid, auth_token } => {
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{account_sid}:{auth_token}"))
            );
            let err = |status: u16, code: u32, message: &str| {
                let body = json!({"code": code, "message": message,
                    "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status});
                (status, body.to_string())
            };
            if path != format!("/2010-04-01/Accounts/{account_sid}/Messages.json") {
                return err(404, 20404, "The requested resource was not found");
            }
            if headers.get("authorization") != Some(&want) {
                return err(401, 20003, "Authenticate");
            }
            let f = form(body);
            let to = f.get("To").cloned().unwrap_or_default();
            let text = f.get("Body").cloned().unwrap_or_default();
            if !f.contains_key("From") && !f.contains_key("MessagingServiceSid") {
                return err(400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required");
            }
            let e164 =
                to.starts_with('+') && (8..=16).contains(&to.len()) && to[1..].chars().all(|c| c.is_ascii_digit());
            if !e164 || to == INVALID_NUMBER {
                return err(400, 21211, &format!("Invalid 'To' Phone Number: {to}"));
            }
            if text.is_empty() {
                return err(400, 21602, "Message body is required");
            }
            if text.chars().count() > TWILIO_MAX_BODY {
                return err(400, 21617, "The concatenated message body exceeds the 1600 character limit");
            }
            let sid = format!("SM{:032x}", fastrand::u128(..));
            (201, json!({"sid": sid, "status": "queued", "to": to, "from": f.get("From"), "body": text}).to_string())
        }
        Service::Teams => {
            if body.len() > TEAMS_MAX_BYTES {
                return (413, "{\"error\":{\"code\":\"RequestEntityTooLarge\",\"message\":\"The request content length exceeds 28 KB\"}}".into());
            }
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let card = &v["attachments"][0];
            if v["type"] != "message"
                || card["contentType"] != "application/vnd.microsoft.card.adaptive"
                || card["content"]["type"] != "AdaptiveCard"
            {
                return (400, "{\"error\":{\"code\":\"InvalidRequestContent\",\"message\":\"not a message with an Adaptive Card\"}}".into());
            }
            (202, String::new())
        }
        Service::Ntfy { token } => {
            if let Some(t) = token {
                if headers.get("authorization") != Some(&format!("Bearer {t}")) {
                    return (401, json!({"code": 40101, "http": 401, "error": "unauthorized"}).to_string());
                }
            }
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let Some(topic) = v["topic"].as_str() else {
                return (
                    400,
                    json!({"code": 40010, "http": 400, "error": "invalid request: topic invalid"}).to_string(),
                );
            };
            let message = v["message"].as_str().unwrap_or_default();
            if message.len() > NTFY_MAX_MESSAGE {
                return (413, json!({"code": 41301, "http": 413, "error": "message too large"}).to_string());
            }
            if !v["priority"].is_null() && !(1..=5).contains(&v["priority"].as_i64().unwrap_or(0)) {
                return (400, json!({"code": 40007, "http": 400, "error": "invalid priority"}).to_string());
            }
            if v["actions"].as_array().is_some_and(|a| a.len() > 3) {
                return (400, json!({"code": 40018, "http": 400, "error": "too many actions"}).to_string());
            }
            (
                200,
                json!({"id": format!("{:012x}", fastrand::u64(..) >> 16), "event": "message", "topic": topic,
                         "message": message})
                .to_string(),
            )
        }
        Service::Webhook { secret } => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
            match verify_webhook(secret, headers, body, now) {
                Ok(()) => (204, String::new()),
                Err(e) => (401, e),
            }
        }
    }
}

async fn handle(req: Request<hyper::body::Incoming>, st: Arc<State>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_ascii_lowercase(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    let now = Instant::now();
    let reply = st.script.lock().unwrap().pop_front().unwrap_or(Reply::AsService);
    let path_only = path.split('?').next().unwrap_or("").to_owned();
    let (status, text, retry_after) = match &reply {
        Reply::AsService => {
            let (s, t) = as_service(&st.service, &path_only, &headers, &body);
            (s, t, None)
        }
        Reply::Status(s, t, r) => (*s, t.clone(), *r),
        Reply::Hang => (0, String::new(), None),
    };
    {
        let mut r = st.received.lock().unwrap();
        r.push(Received { at: now, path, headers, body, status });
        st.changed.notify_all();
    }
    if let Reply::Hang = reply {
        tokio::time::sleep(Duration::from_secs(60)).await;
        return Ok(Response::builder().status(500).body(Full::new(Bytes::new())).unwrap());
    }
    let mut resp = Response::builder().status(StatusCode::from_u16(status).unwrap());
    if let Some(s) = retry_after {
        resp = resp.header("retry-after", s.to_string());
    }
    if text.starts_with('{') {
        resp = resp.header("content-type", "application/json");
    }
    Ok(resp.body(Full::new(Bytes::from(text))).unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receiver_verifies_the_published_example() {
        let mut h = HashMap::new();
        h.insert("webhook-id".to_owned(), "msg_p5jXN8AQM9LWM0D4loKWxJek".to_owned());
        h.insert("webhook-timestamp".to_owned(), "1614265330".to_owned());
        h.insert("webhook-signature".to_owned(), "v1,bad v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_owned());
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert_eq!(verify_webhook(secret, &h, br#"{"test": 2432232314}"#, 1_614_265_330), Ok(()));
        assert!(verify_webhook(secret, &h, br#"{"test": 2432232315}"#, 1_614_265_330).is_err());
        assert!(verify_webhook(secret, &h, br#"{"test": 2432232314}"#, 1_614_265_330 + 301).is_err());
        assert_eq!(decode("a%2Bb+c%F0%9F%9A%A8"), "a+b c🚨");
    }
}
