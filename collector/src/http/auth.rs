//! Accounts, sessions, CSRF and login limits.
//!
//! - Passwords are argon2id hashes (PHC strings) in the store, set with
//!   `sos-collector responders passwd NAME` or through a one-time invitation link (only the
//!   token's SHA-256 is stored). Hashing runs on blocking threads, two at a time at most.
//! - A session is a random 256-bit token in a cookie (HttpOnly, SameSite=Strict, Secure under
//!   TLS or behind a proxy; `__Host-` prefix then); the server keeps only its SHA-256, in memory
//!   (a restart logs everyone out). A login always makes a new token (no fixation); sessions
//!   end after 8 hours idle or 24 hours in all, and at logout.
//! - Every POST carries a CSRF token in its form: the session's, or before login the one of a
//!   pre-session cookie (double submit). Without it: 403.
//! - Logins are limited per source address (a burst of 10, then one per 6 s) and per account
//!   (after 5 wrong passwords in a row, locked for 30 s, doubling up to 15 min).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::Argon2;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Redirect, Response};
use base64::Engine as _;
use sha2::Digest as _;
use tokio::sync::Semaphore;

use super::{Console, Role};
use crate::ratelimit::{Limiter, Rate};

/// The shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;
/// The largest form body accepted.
const MAX_FORM: usize = 16 * 1024;
const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);
const SESSION_MAX: Duration = Duration::from_secs(24 * 3600);
const MAX_SESSIONS: usize = 10_000;
/// Wrong passwords in a row before an account is locked for a while.
const FREE_FAILURES: u32 = 5;
const SOURCE_RATE: Rate = Rate { per_sec: 1.0 / 6.0, burst: 10.0 };

/// Hash `password` with argon2id (the crate's default parameters: 19 MiB, 2 passes).
///
/// # Errors
/// If hashing fails (it does not with valid parameters).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok()).unwrap_or(false)
}

/// A new random token (256 bits, url-safe base64).
pub fn invitation_token() -> String {
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw).expect("the operating system's random source failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// The SHA-256 of a token, hex: what the store and the session table keep.
pub fn token_hash(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Clone)]
struct Session {
    name: String,
    role: Role,
    csrf: String,
    created: Instant,
    used: Instant,
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
}

/// Sessions and login limits.
#[derive(Debug)]
pub struct Auth {
    accounts: HashMap<String, Role>,
    sessions: Mutex<HashMap<String, Session>>,
    sources: Mutex<Limiter<IpAddr>>,
    /// Requests to acknowledge links, per source address ([`super::ack::ACK_RATE`]).
    ack_sources: Mutex<Limiter<IpAddr>>,
    /// Requests per valid acknowledge link (its nonce): a used link replayed in a loop.
    ack_links: Mutex<Limiter<[u8; 16]>>,
    failures: Mutex<HashMap<String, Failures>>,
    hashing: Semaphore,
    /// A hash to verify against when the name is unknown, so that timing does not tell.
    decoy: std::sync::OnceLock<String>,
}

/// What a login attempt came to.
#[derive(Debug)]
pub enum Login {
    /// Logged in: the cookie value of the new session.
    Ok(String),
    /// Wrong name or password.
    Wrong,
    /// Too many attempts: try again after this long.
    Limited(Duration),
}

impl Auth {
    pub fn new(accounts: Vec<(String, Role)>) -> Self {
        Auth {
            accounts: accounts.into_iter().collect(),
            sessions: Mutex::default(),
            sources: Mutex::new(Limiter::new(SOURCE_RATE, 100_000)),
            ack_sources: Mutex::new(Limiter::new(super::ack::ACK_RATE, 100_000)),
            ack_links: Mutex::new(Limiter::new(super::ack::ACK_RATE, 100_000)),
            failures: Mutex::default(),
            hashing: Semaphore::new(2),
            decoy: std::sync::OnceLock::new(),
        }
    }

    /// Whether `source` may make one more request to an acknowledge link now.
    pub fn allow_ack(&self, source: IpAddr) -> bool {
        self.ack_sources.lock().unwrap_or_else(|e| e.into_inner()).allow(source, Instant::now())
    }

    /// Whether one more request with the valid acknowledge link of `nonce` is allowed now.
    pub fn allow_ack_link(&self, nonce: [u8; 16]) -> bool {
        self.ack_links.lock().unwrap_or_else(|e| e.into_inner()).allow(nonce, Instant::now())
    }

    /// Whether `name` is an account the configuration allows.
    pub fn allows(&self, name: &str) -> bool {
        self.accounts.contains_key(name)
    }

    /// Check the source's and the account's limits, then the password (against `stored`, the
    /// account's hash), and open a session on success.
    pub async fn login(&self, source: IpAddr, name: &str, password: &str, stored: Option<String>) -> Login {
        let now = Instant::now();
        if !self.sources.lock().unwrap_or_else(|e| e.into_inner()).allow(source, now) {
            return Login::Limited(Duration::from_secs(6));
        }
        if let Some(until) =
            self.failures.lock().unwrap_or_else(|e| e.into_inner()).get(name).and_then(|f| f.locked_until)
        {
            if until > now {
                return Login::Limited(until - now);
            }
        }
        let role = self.accounts.get(name).copied();
        let phc = match (&role, stored) {
            (Some(_), Some(h)) => h,
            _ => self.decoy.get_or_init(|| hash_password(&invitation_token()).unwrap_or_default()).clone(),
        };
        let ok = {
            let Ok(_permit) = self.hashing.acquire().await else { return Login::Wrong };
            let password = password.to_owned();
            tokio::task::spawn_blocking(move || verify_password(&password, &phc)).await.unwrap_or(false)
        };
        let Some(role) = role.filter(|_| ok) else {
            if role.is_some() {
                let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
                let f = failures.entry(name.to_owned()).or_default();
                f.count += 1;
                if f.count >= FREE_FAILURES {
                    let secs = 30u64 << (f.count - FREE_FAILURES).min(5);
                    f.locked_until = Some(Instant::now() + Duration::from_secs(secs.min(900)));
                }
            }
            return Login::Wrong;
        };
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        Login::Ok(self.open(name, role))
    }

    /// A new session for `name` (a login, or an accepted invitation); its cookie value.
    pub fn open(&self, name: &str, role: Role) -> String {
        let token = invitation_token();
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .retain(|_, s| now.duration_since(s.used) < SESSION_IDLE && now.duration_since(s.created) < SESSION_MAX);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| k.clone()) {
                sessions.remove(&oldest);
            }
        }
        let session = Session { name: name.to_owned(), role, csrf: invitation_token(), created: now, used: now };
        sessions.insert(token_hash(&token), session);
        token
    }

    fn session(&self, token: &str) -> Option<Session> {
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let key = token_hash(token);
        let s = sessions.get_mut(&key)?;
        if now.duration_since(s.used) >= SESSION_IDLE || now.duration_since(s.created) >= SESSION_MAX {
            sessions.remove(&key);
            return None;
        }
        s.used = now;
        Some(s.clone())
    }

    /// End the session whose cookie value is `token`.
    pub fn close(&self, token: &str) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&token_hash(token));
    }

    /// The role of an allowed account.
    pub fn role(&self, name: &str) -> Option<Role> {
        self.accounts.get(name).copied()
    }
}

/// The names of the session and pre-session cookies.
pub fn cookie_names(secure: bool) -> (&'static str, &'static str) {
    if secure {
        ("__Host-sos_session", "__Host-sos_pre")
    } else {
        ("sos_session", "sos_pre")
    }
}

/// The `Set-Cookie` value for `name=value` with the console's attributes; `None`: delete it.
pub fn set_cookie(name: &str, value: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(v) => format!("{name}={v}; Path=/; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// The value of cookie `name` in the request's headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The logged-in person making a request. As an extractor, a request without a valid session
/// is sent to the login page.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The account name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The session's CSRF token, for the forms of the page.
    pub csrf: String,
}

impl Viewer {
    /// The logged-in person, if the request carries a valid session cookie; `None` is not an
    /// error (pages that anyone may open).
    pub fn optional(console: &Console, headers: &HeaderMap) -> Option<Viewer> {
        let (name, _) = cookie_names(console.settings.secure());
        let s = console.auth.session(cookie(headers, name)?)?;
        Some(Viewer { name: s.name, role: s.role, csrf: s.csrf })
    }

    /// Whether this person is an administrator.
    pub fn admin(&self) -> bool {
        self.role == Role::Admin
    }
}

impl FromRequestParts<Arc<Console>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Arc<Console>) -> Result<Self, Self::Rejection> {
        let (name, _) = cookie_names(console.settings.secure());
        let session = cookie(&parts.headers, name).and_then(|t| console.auth.session(t));
        match session {
            Some(s) => Ok(Viewer { name: s.name, role: s.role, csrf: s.csrf }),
            None if parts.method == Method::GET => Err(Redirect::to("/login").into_response()),
            None => Err((StatusCode::FORBIDDEN, "not logged in\n").into_response()),
        }
    }
}

/// The CSRF token a POST to `path` must carry: the session's, or for the login and invitation
/// forms the pre-session cookie's.
fn expected_csrf(console: &Console, path: &str, headers: &HeaderMap) -> Option<String> {
    let (session, pre) = cookie_names(console.settings.secure());
    if path == "/login" || path.starts_with("/invite/") {
        return cookie(headers, pre).filter(|v| v.len() >= 32).map(str::to_owned);
    }
    cookie(headers, session).and_then(|t| console.auth.session(t)).map(|s| s.csrf)
}

/// Refuse (403) every request that is not GET or HEAD unless its urlencoded form carries the
/// right `csrf` field; bodies over 16 KiB are refused (413).
pub async fn csrf_guard(State(console): State<Arc<Console>>, req: Request, next: Next) -> Response {
    // A CSP violation report changes nothing but a counter, and browsers send it without the
    // page's form. An acknowledge link's POST is authorised by its token (see `ack.rs`).
    if matches!(*req.method(), Method::GET | Method::HEAD)
        || req.uri().path() == "/csp-report"
        || req.uri().path().starts_with("/ack/")
    {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request too large\n").into_response();
    };
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    let given = form.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v.as_str());
    let expected = expected_csrf(&console, parts.uri.path(), &parts.headers);
    match (given, expected) {
        (Some(g), Some(e)) if same(g, &e) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        _ => {
            console.metrics.csrf_refused.inc();
            (StatusCode::FORBIDDEN, "missing or wrong CSRF token\n").into_response()
        }
    }
}

/// The client's address for rate limits: the TCP peer, or behind a proxy the last
/// `X-Forwarded-For` entry (the one the proxy added). The header is believed only from a proxy
/// on this host (a loopback peer): anyone who reaches the console's port directly could
/// otherwise name any address and escape the per-source login limit.
pub fn source(console: &Console, parts_headers: &HeaderMap, peer: Option<std::net::SocketAddr>) -> IpAddr {
    let direct = peer.map(|p| p.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if !console.settings.behind_proxy || !direct.is_loopback() {
        return direct;
    }
    parts_headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|ip| ip.trim().parse().ok())
        .unwrap_or(direct)
}
