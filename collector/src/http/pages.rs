//! The pages and their actions, and the router that puts every path together.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{Html, IntoResponse as _, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::{Deserialize, Serialize};
use sos_shared::AlertId;

use super::auth::{self, cookie, cookie_names, set_cookie, Login, Viewer};
use super::export::{self, Format};
use super::server::{self, Peer};
use super::{ack, live, metrics, Console, Role};
use crate::channel::when_utc;
use crate::store::console::{AlertFilter, ConsoleAlert, STATES};
use crate::store::{now_ms, Delivery, StoreError};

/// Every path of the console.
pub fn router(console: Arc<Console>) -> Router {
    let secure = console.settings.secure();
    Router::new()
        .route("/", get(|| async { Redirect::to("/alerts") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/invite/{token}", get(invite_page).post(invite))
        .route("/alerts", get(live_page))
        .route("/alerts/live", get(live_fragment))
        .route("/alerts/{id}", get(alert_page))
        .route("/alerts/{id}/ack", post(acknowledge))
        .route("/alerts/{id}/resolve", post(resolve))
        .route("/alerts/{id}/checked", post(checked))
        .route("/ack/{token}", get(ack::ack_page).post(ack::ack))
        .route("/events", get(live::events))
        .route("/agents", get(agents_page))
        .route("/agents/enroll", post(enroll))
        .route("/agents/{id}/revoke", post(revoke))
        .route("/agents/{id}/rotate", post(rotate))
        .route("/history", get(history_page))
        .route("/history/export.csv", get(export_csv))
        .route("/history/export.json", get(export_json))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(metrics::healthz))
        .route("/readyz", get(metrics::readyz))
        .route("/csp-report", post(metrics::csp_report))
        .route("/static/console.js", get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }))
        .route("/static/console.css", get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }))
        .fallback(|| async { message(StatusCode::NOT_FOUND, None, "Not found", "There is no such page.") })
        .layer(from_fn_with_state(console.clone(), auth::csrf_guard))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .layer(from_fn(server::request_timeout))
        .layer(from_fn(move |req, next| server::security_headers(secure, req, next)))
        .with_state(console)
}

const CONSOLE_JS: &str = include_str!("static/console.js");
const CONSOLE_CSS: &str = include_str!("static/console.css");

fn asset(ctype: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, ctype), (header::CACHE_CONTROL, "private, max-age=300")], body).into_response()
}

pub(super) fn page(status: StatusCode, t: impl Template) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console: cannot render a page");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render the page\n").into_response()
        }
    }
}

pub(super) fn store_failed(viewer: Option<Viewer>, e: StoreError) -> Response {
    tracing::warn!(error = %e, "console: the store failed");
    message(StatusCode::SERVICE_UNAVAILABLE, viewer, "Store unavailable", &format!("The store cannot be read now: {e}"))
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    viewer: Option<Viewer>,
    title: &'a str,
    text: &'a str,
    code: Option<String>,
}

pub(super) fn message(status: StatusCode, viewer: Option<Viewer>, title: &str, text: &str) -> Response {
    page(status, MessagePage { viewer, title, text, code: None })
}

/// An alert as pages show it; every text field is the agent's, untrusted (askama escapes it).
#[derive(Debug, Clone, Serialize)]
pub struct AlertView {
    pub(super) id: String,
    pub(super) when: String,
    pub(super) triggered: String,
    pub(super) drill: bool,
    pub(super) state: String,
    pub(super) user: String,
    pub(super) host: String,
    pub(super) ip: String,
    pub(super) location: String,
    pub(super) message: String,
    pub(super) agent: String,
    /// The site it was forwarded from (a centre's alert), or empty.
    pub(super) site: String,
    pub(super) source: String,
    pub(super) cancelled: String,
    pub(super) cancel_reason: String,
    pub(super) by: String,
}

impl AlertView {
    /// Nobody acknowledged it yet and it is not withdrawn.
    pub fn unanswered(&self) -> bool {
        self.state == "received" || self.state == "notified"
    }
}

impl From<&ConsoleAlert> for AlertView {
    fn from(a: &ConsoleAlert) -> Self {
        let r = &a.record;
        AlertView {
            id: r.alert_id.to_string(),
            when: when_utc(r.received_at_ms / 1000),
            triggered: when_utc(r.triggered_at),
            drill: r.test,
            state: a.state.clone(),
            user: r.user.clone(),
            host: r.host.clone(),
            ip: r.ip.clone(),
            location: r.location.clone(),
            message: r.message.clone(),
            agent: r.enrolled.as_ref().map(|e| e.name.clone()).unwrap_or_default(),
            site: r.site.clone().unwrap_or_default(),
            source: r.source.clone(),
            cancelled: r.cancellation.as_ref().map(|c| when_utc(c.at_ms / 1000)).unwrap_or_default(),
            cancel_reason: r.cancellation.as_ref().map(|c| c.reason.clone()).unwrap_or_default(),
            by: a.by.clone(),
        }
    }
}

// ---- login, logout, invitations ----

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    viewer: Option<Viewer>,
    csrf: String,
    error: String,
}

/// The pre-session CSRF token of the request, or a new one with the cookie that carries it.
fn pre_session(console: &Console, headers: &HeaderMap) -> (String, Option<String>) {
    let (_, pre) = cookie_names(console.settings.secure());
    match cookie(headers, pre).filter(|v| v.len() >= 32) {
        Some(v) => (v.to_owned(), None),
        None => {
            let t = auth::invitation_token();
            let c = set_cookie(pre, Some(&t), console.settings.secure());
            (t, Some(c))
        }
    }
}

fn with_cookies(mut r: Response, cookies: impl IntoIterator<Item = String>) -> Response {
    for c in cookies {
        if let Ok(v) = c.parse() {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

async fn login_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let (csrf, set) = pre_session(&console, &headers);
    with_cookies(page(StatusCode::OK, LoginPage { viewer: None, csrf, error: String::new() }), set)
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

async fn login(
    State(console): State<Arc<Console>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let source = auth::source(&console, &headers, Some(peer.0));
    let name = f.name.trim().to_owned();
    let stored =
        if console.auth.allows(&name) { console.store.password_hash(&name).await.ok().flatten() } else { None };
    let (csrf, _) = pre_session(&console, &headers);
    let result = console.auth.login(source, &name, &f.password, stored).await;
    let count = |r: &str| console.metrics.logins.get_or_create(&vec![("result", r.to_owned())]).inc();
    match result {
        Login::Ok(token) => {
            count("ok");
            tracing::info!(account = %name, %source, "console: logged in");
            let (session, pre) = cookie_names(console.settings.secure());
            let secure = console.settings.secure();
            with_cookies(
                Redirect::to("/alerts").into_response(),
                [set_cookie(session, Some(&token), secure), set_cookie(pre, None, secure)],
            )
        }
        Login::Wrong => {
            count("wrong");
            tracing::warn!(account = %name, %source, "console: wrong name or password");
            page(StatusCode::UNAUTHORIZED, LoginPage { viewer: None, csrf, error: "Wrong name or password.".into() })
        }
        Login::Limited(wait) => {
            count("limited");
            tracing::warn!(account = %name, %source, "console: login attempts limited");
            let error = format!("Too many attempts. Try again in {} s.", wait.as_secs().max(1));
            page(StatusCode::TOO_MANY_REQUESTS, LoginPage { viewer: None, csrf, error })
        }
    }
}

async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let (session, _) = cookie_names(console.settings.secure());
    if let Some(t) = cookie(&headers, session) {
        console.auth.close(t);
    }
    with_cookies(Redirect::to("/login").into_response(), [set_cookie(session, None, console.settings.secure())])
}

#[derive(Template)]
#[template(path = "invite.html")]
struct InvitePage {
    viewer: Option<Viewer>,
    csrf: String,
    name: String,
    token: String,
    error: String,
}

async fn invitation_name(console: &Arc<Console>, token: &str) -> Option<String> {
    let h = auth::token_hash(token);
    let name = console.store.invitation(&h, now_ms()).await.ok().flatten()?;
    console.auth.allows(&name).then_some(name)
}

async fn invite_page(State(console): State<Arc<Console>>, Path(token): Path<String>, headers: HeaderMap) -> Response {
    let Some(name) = invitation_name(&console, &token).await else {
        return message(StatusCode::NOT_FOUND, None, "Invitation", "This invitation is unknown, used or expired.");
    };
    let (csrf, set) = pre_session(&console, &headers);
    with_cookies(page(StatusCode::OK, InvitePage { viewer: None, csrf, name, token, error: String::new() }), set)
}

#[derive(Deserialize)]
struct InviteForm {
    password: String,
    confirm: String,
}

async fn invite(
    State(console): State<Arc<Console>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    Form(f): Form<InviteForm>,
) -> Response {
    let Some(name) = invitation_name(&console, &token).await else {
        return message(StatusCode::NOT_FOUND, None, "Invitation", "This invitation is unknown, used or expired.");
    };
    let (csrf, _) = pre_session(&console, &headers);
    let error = if f.password != f.confirm {
        "The two passwords differ."
    } else if f.password.chars().count() < auth::MIN_PASSWORD_LEN || f.password.len() > 1024 {
        "The password must be 12 to 1024 characters long."
    } else {
        ""
    };
    if !error.is_empty() {
        return page(StatusCode::BAD_REQUEST, InvitePage { viewer: None, csrf, name, token, error: error.into() });
    }
    let password = f.password;
    let Ok(Ok(hash)) = tokio::task::spawn_blocking(move || auth::hash_password(&password)).await else {
        return message(StatusCode::INTERNAL_SERVER_ERROR, None, "Invitation", "The password could not be hashed.");
    };
    let h = auth::token_hash(&token);
    match console.store.accept_invitation(&h, &hash, now_ms()).await {
        Ok(Some(name)) => {
            let role = console.auth.role(&name).unwrap_or(Role::Responder);
            tracing::info!(account = %name, "console: invitation accepted, password set");
            let token = console.auth.open(&name, role);
            let (session, pre) = cookie_names(console.settings.secure());
            let secure = console.settings.secure();
            with_cookies(
                Redirect::to("/alerts").into_response(),
                [set_cookie(session, Some(&token), secure), set_cookie(pre, None, secure)],
            )
        }
        Ok(None) => message(StatusCode::NOT_FOUND, None, "Invitation", "This invitation is unknown, used or expired."),
        Err(e) => store_failed(None, e),
    }
}

// ---- live alerts ----

/// An enrolled agent found silent.
#[derive(Debug, Clone)]
struct SilentView {
    name: String,
    host: String,
    since: String,
}

#[derive(Template)]
#[template(path = "live.html")]
struct LivePage {
    viewer: Option<Viewer>,
    csrf: String,
    alerts: Vec<AlertView>,
    unacked: usize,
    silent: Vec<SilentView>,
}

#[derive(Template)]
#[template(path = "live_list.html")]
struct LiveList {
    csrf: String,
    alerts: Vec<AlertView>,
    unacked: usize,
    silent: Vec<SilentView>,
}

/// The most open alerts the live page lists.
const LIVE_LIMIT: usize = 200;
/// The live page lists open alerts received within this long (older open ones: the history,
/// state "open"), so that it reads a bounded part of the store however long its history is.
const LIVE_WINDOW_MS: i64 = 7 * 86_400_000;

async fn live_data(console: &Arc<Console>) -> Result<(Vec<AlertView>, usize, Vec<SilentView>), StoreError> {
    let filter =
        AlertFilter { state: Some("open".into()), from_ms: Some(now_ms() - LIVE_WINDOW_MS), ..AlertFilter::default() };
    let store = &console.store;
    let open = store.console_alerts(&filter, None, LIVE_LIMIT).await?;
    let silent = store.silent_agents().await?;
    let agents = store.enrolled_agents().await?;
    {
        {
            let unacked = open.iter().filter(|a| a.state == "received" || a.state == "notified").count();
            // Unanswered first, then the rest, newest first within each.
            let mut open = open;
            open.sort_by_key(|a| !(a.state == "received" || a.state == "notified"));
            let silent = silent
                .into_iter()
                .filter_map(|(id, since)| {
                    let a = agents.iter().find(|a| a.agent_id == id && a.revoked_at_ms.is_none())?;
                    Some(SilentView { name: a.name.clone(), host: a.host.clone(), since: when_utc(since / 1000) })
                })
                .collect();
            Ok((open.iter().map(AlertView::from).collect(), unacked, silent))
        }
    }
}

async fn live_page(State(console): State<Arc<Console>>, viewer: Viewer) -> Response {
    match live_data(&console).await {
        Ok((alerts, unacked, silent)) => {
            let csrf = viewer.csrf.clone();
            page(StatusCode::OK, LivePage { viewer: Some(viewer), csrf, alerts, unacked, silent })
        }
        Err(e) => store_failed(Some(viewer), e),
    }
}

async fn live_fragment(State(console): State<Arc<Console>>, viewer: Viewer) -> Response {
    match live_data(&console).await {
        Ok((alerts, unacked, silent)) => page(StatusCode::OK, LiveList { csrf: viewer.csrf, alerts, unacked, silent }),
        Err(e) => store_failed(Some(viewer), e),
    }
}

// ---- one alert ----

/// One line of an alert's timeline.
#[derive(Debug, Clone)]
struct TimelineEntry {
    when: String,
    what: String,
    who: String,
    note: String,
}

#[derive(Template)]
#[template(path = "alert.html")]
struct AlertPage {
    viewer: Option<Viewer>,
    csrf: String,
    outcome: String,
    note: String,
    outcomes: &'static [&'static str],
    alert: AlertView,
    deliveries: Vec<Delivery>,
    timeline: Vec<TimelineEntry>,
}

fn timeline_of(a: &ConsoleAlert, deliveries: &[Delivery]) -> Vec<TimelineEntry> {
    let r = &a.record;
    let mut t = vec![(
        r.received_at_ms,
        TimelineEntry {
            when: when_utc(r.received_at_ms / 1000),
            what: "received".into(),
            who: r.enrolled.as_ref().map(|e| e.name.clone()).unwrap_or_else(|| r.user.clone()),
            note: String::new(),
        },
    )];
    for d in deliveries {
        if let Some(at) = d.delivered_at_ms {
            t.push((
                at,
                TimelineEntry {
                    when: when_utc(at / 1000),
                    what: format!("notified on {}", d.channel),
                    who: String::new(),
                    note: String::new(),
                },
            ));
        }
    }
    if let Some(c) = &r.cancellation {
        t.push((
            c.at_ms,
            TimelineEntry {
                when: when_utc(c.at_ms / 1000),
                what: "cancelled by the sender".into(),
                who: r.user.clone(),
                note: c.reason.clone(),
            },
        ));
    }
    t.sort_by_key(|(at, _)| *at);
    t.into_iter().map(|(_, e)| e).collect()
}

async fn alert_page(State(console): State<Arc<Console>>, viewer: Viewer, Path(id): Path<String>) -> Response {
    let Ok(alert_id) = id.parse::<AlertId>() else {
        return message(StatusCode::NOT_FOUND, Some(viewer), "Alert", "There is no such alert.");
    };
    let read = async {
        Ok::<_, StoreError>((
            console.store.console_alert(alert_id).await?,
            console.store.console_response(alert_id).await?,
        ))
    }
    .await;
    match read {
        Ok((Some((a, deliveries)), (response, events))) => {
            // The responder loop's timeline; for an alert from before it, what the store shows.
            let timeline = if events.is_empty() {
                timeline_of(&a, &deliveries)
            } else {
                events
                    .into_iter()
                    .map(|e| TimelineEntry {
                        when: when_utc(e.at_ms / 1000),
                        what: format!("{} (via {})", e.kind.replace('_', " "), e.via.replace('_', " ")),
                        who: e.who,
                        note: e.note,
                    })
                    .collect()
            };
            let (outcome, note) = response.map(|r| (r.outcome, r.note)).unwrap_or_default();
            let csrf = viewer.csrf.clone();
            page(
                StatusCode::OK,
                AlertPage {
                    viewer: Some(viewer),
                    csrf,
                    outcome,
                    note,
                    outcomes: OUTCOMES,
                    alert: AlertView::from(&a),
                    deliveries,
                    timeline,
                },
            )
        }
        Ok((None, _)) => message(StatusCode::NOT_FOUND, Some(viewer), "Alert", "There is no such alert."),
        Err(e) => store_failed(Some(viewer), e),
    }
}

/// The outcomes a responder picks from when resolving.
const OUTCOMES: &[&str] = &["help given", "false alarm", "nobody found", "handed to emergency services", "other"];
/// The longest note kept (characters).
const MAX_NOTE: usize = 500;

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    note: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    back: String,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Acknowledge,
    Resolve,
    Check,
}

/// Acknowledge, resolve or mark checked through the responder loop's store (one transaction
/// each: the event, the state, pending pages stopped, the sender's notice), as the logged-in
/// person, via the console.
async fn act(console: Arc<Console>, viewer: Viewer, id: String, f: ActionForm, action: Action) -> Response {
    use crate::store::response::{Response as _, Transition, Via};
    let Ok(alert_id) = id.parse::<AlertId>() else {
        return message(StatusCode::NOT_FOUND, Some(viewer), "Alert", "There is no such alert.");
    };
    let note: String = f.note.trim().chars().filter(|c| !c.is_control()).take(MAX_NOTE).collect();
    let who = viewer.name.clone();
    let store = &console.store;
    let done = match action {
        Action::Acknowledge => store.acknowledge(alert_id, who, Via::Console, note).await,
        Action::Resolve => {
            if !OUTCOMES.contains(&f.outcome.as_str()) {
                return message(StatusCode::BAD_REQUEST, Some(viewer), "Resolve", "Pick an outcome.");
            }
            store.resolve(alert_id, who, Via::Console, f.outcome, note).await
        }
        Action::Check => store.mark_checked(alert_id, who, Via::Console, note).await,
    };
    let back = if f.back == "live" { "/alerts".to_owned() } else { format!("/alerts/{alert_id}") };
    match done {
        Ok(Transition::New { .. }) => {
            tracing::info!(account = %viewer.name, alert = %alert_id, ?action, "console: alert {action:?}");
            Redirect::to(&back).into_response()
        }
        Ok(Transition::Already { by }) => {
            let text = format!("{by} already acknowledged this alert.");
            message(StatusCode::CONFLICT, Some(viewer), "Already acknowledged", &text)
        }
        Ok(Transition::Closed(state)) => {
            let text = format!("This alert is {}: nothing to do.", state.name());
            message(StatusCode::CONFLICT, Some(viewer), "Alert closed", &text)
        }
        Ok(Transition::Unknown) => message(StatusCode::NOT_FOUND, Some(viewer), "Alert", "There is no such alert."),
        Err(e) => store_failed(Some(viewer), e),
    }
}

async fn acknowledge(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    act(console, viewer, id, f, Action::Acknowledge).await
}

async fn resolve(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    act(console, viewer, id, f, Action::Resolve).await
}

async fn checked(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    act(console, viewer, id, f, Action::Check).await
}

// ---- agents ----

#[derive(Debug, Clone)]
struct AgentView {
    id: String,
    name: String,
    host: String,
    state: String,
    seen: String,
    key: String,
}

#[derive(Debug, Clone)]
struct SeenView {
    host: String,
    user: String,
    ip: String,
    key_id: String,
    seen: String,
    online: bool,
}

#[derive(Template)]
#[template(path = "agents.html")]
struct AgentsPage {
    viewer: Option<Viewer>,
    enrolled: Vec<AgentView>,
    seen: Vec<SeenView>,
}

async fn agents_page(State(console): State<Arc<Console>>, viewer: Viewer) -> Response {
    let silent_after = console.config.agent_silent_after.as_millis() as i64;
    let store = &console.store;
    let read = async {
        Ok::<_, StoreError>((store.enrolled_agents().await?, store.agents().await?, store.silent_agents().await?))
    }
    .await;
    let (enrolled, seen, silent) = match read {
        Ok(r) => r,
        Err(e) => return store_failed(Some(viewer), e),
    };
    let now = now_ms();
    let enrolled = enrolled
        .into_iter()
        .map(|a| {
            let state = match (a.revoked_at_ms, a.last_seen_ms) {
                (Some(t), _) => format!("revoked {}", when_utc(t / 1000)),
                (None, None) => "never seen".to_owned(),
                (None, Some(_)) if silent.iter().any(|(id, _)| *id == a.agent_id) => "SILENT".to_owned(),
                (None, Some(t)) if now - t > silent_after => "SILENT".to_owned(),
                (None, Some(_)) => "online".to_owned(),
            };
            let key = match (a.revoked_at_ms, a.rotation_pending_since_ms, a.previous_key_until_ms) {
                (Some(_), _, _) => "revoked".to_owned(),
                (None, Some(t), _) => format!("rotation pending since {}", when_utc(t / 1000)),
                (None, None, Some(t)) if t > now => format!("new key; previous valid until {}", when_utc(t / 1000)),
                _ => "active".to_owned(),
            };
            AgentView {
                seen: a.last_seen_ms.map(|t| when_utc(t / 1000)).unwrap_or_else(|| "never".into()),
                id: a.agent_id,
                name: a.name,
                host: a.host,
                state,
                key: format!("{} ({key})", a.key_id),
            }
        })
        .collect();
    let seen = seen
        .into_iter()
        .rev()
        .map(|s| SeenView {
            online: now - s.last_seen_ms <= silent_after,
            seen: when_utc(s.last_seen_ms / 1000),
            host: s.host,
            user: s.user,
            ip: s.ip,
            key_id: s.key_id,
        })
        .collect();
    page(StatusCode::OK, AgentsPage { viewer: Some(viewer), enrolled, seen })
}

fn admin_only(viewer: &Viewer) -> Option<Response> {
    (!viewer.admin()).then(|| {
        message(
            StatusCode::FORBIDDEN,
            Some(viewer.clone()),
            "Administrators only",
            "Only an administrator can do this.",
        )
    })
}

#[derive(Deserialize)]
struct EnrollForm {
    name: String,
    #[serde(default = "ten")]
    minutes: u64,
}

fn ten() -> u64 {
    10
}

async fn enroll(State(console): State<Arc<Console>>, viewer: Viewer, Form(f): Form<EnrollForm>) -> Response {
    if let Some(r) = admin_only(&viewer) {
        return r;
    }
    let name = f.name.trim().to_owned();
    if name.is_empty() || name.len() > sos_shared::enroll::MAX_NAME_LEN || name.chars().any(char::is_control) {
        let text = format!("The name must be 1 to {} bytes of printable text.", sos_shared::enroll::MAX_NAME_LEN);
        return message(StatusCode::BAD_REQUEST, Some(viewer), "Enrollment", &text);
    }
    if f.minutes == 0 || f.minutes > 7 * 24 * 60 {
        return message(StatusCode::BAD_REQUEST, Some(viewer), "Enrollment", "Minutes must be between 1 and 10080.");
    }
    let ttl = f.minutes as i64 * 60_000;
    match console.store.create_enrollment(&name, ttl, now_ms()).await {
        Ok(code) => {
            tracing::info!(account = %viewer.name, agent = %name, "console: enrollment code made");
            let listen = console.config.listen;
            let text = format!(
                "One-time code for \"{name}\", valid once for {} min. On the workstation run: \
                 sos-agent enroll CODE --collector {listen}",
                f.minutes
            );
            page(
                StatusCode::OK,
                MessagePage {
                    viewer: Some(viewer),
                    title: "Enrollment code",
                    text: &text,
                    code: Some(code.to_string()),
                },
            )
        }
        Err(e) => store_failed(Some(viewer), e),
    }
}

async fn registry_action(console: Arc<Console>, viewer: Viewer, id: String, rotate: bool) -> Response {
    if let Some(r) = admin_only(&viewer) {
        return r;
    }
    let done =
        if rotate { console.store.rotate(&id, now_ms()).await } else { console.store.revoke(&id, now_ms()).await };
    let what = if rotate { "rotate" } else { "revoke" };
    match done {
        Ok(a) => {
            tracing::info!(account = %viewer.name, agent = %a.agent_id, "console: {what}");
            Redirect::to("/agents").into_response()
        }
        Err(crate::registry::RegistryError::Store(e)) => store_failed(Some(viewer), e),
        Err(e) => message(StatusCode::BAD_REQUEST, Some(viewer), "Agents", &format!("Cannot {what}: {e}")),
    }
}

async fn revoke(State(console): State<Arc<Console>>, viewer: Viewer, Path(id): Path<String>) -> Response {
    registry_action(console, viewer, id, false).await
}

async fn rotate(State(console): State<Arc<Console>>, viewer: Viewer, Path(id): Path<String>) -> Response {
    registry_action(console, viewer, id, true).await
}

// ---- history and export ----

/// The history's filters, as the query string carries them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
struct HistoryQuery {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    location: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    state: String,
}

fn day_ms(date: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(&format!("{}T00:00:00Z", date.trim())).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}

impl HistoryQuery {
    fn filter(&self) -> Result<AlertFilter, String> {
        let date = |key: &str, v: &str| -> Result<Option<i64>, String> {
            if v.trim().is_empty() {
                return Ok(None);
            }
            day_ms(v).map(Some).ok_or_else(|| format!("{key}: {v:?} is not a date like 2026-12-31"))
        };
        let test = match self.kind.as_str() {
            "" | "all" => None,
            "emergency" => Some(false),
            "drill" => Some(true),
            other => return Err(format!("type: {other:?} is not emergency, drill or all")),
        };
        let state = match self.state.as_str() {
            "" | "all" => None,
            s if s == "open" || STATES.contains(&s) => Some(s.to_owned()),
            other => return Err(format!("state: {other:?} is not a state")),
        };
        Ok(AlertFilter {
            from_ms: date("from", &self.from)?,
            to_ms: date("to", &self.to)?.map(|t| t + 86_400_000),
            location: Some(self.location.trim().to_owned()).filter(|l| !l.is_empty()),
            test,
            state,
        })
    }
}

#[derive(Template)]
#[template(path = "history.html")]
struct HistoryPage {
    viewer: Option<Viewer>,
    q: HistoryQuery,
    query: String,
    states: &'static [&'static str],
    alerts: Vec<AlertView>,
    limit: usize,
}

/// The most rows the history page shows; the export has them all.
const HISTORY_LIMIT: usize = 500;

async fn history_page(State(console): State<Arc<Console>>, viewer: Viewer, Query(q): Query<HistoryQuery>) -> Response {
    let filter = match q.filter() {
        Ok(f) => f,
        Err(e) => return message(StatusCode::BAD_REQUEST, Some(viewer), "History", &e),
    };
    match console.store.console_alerts(&filter, None, HISTORY_LIMIT).await {
        Ok(rows) => {
            let query = serde_urlencoded::to_string(&q).unwrap_or_default();
            let alerts = rows.iter().map(AlertView::from).collect();
            page(
                StatusCode::OK,
                HistoryPage { viewer: Some(viewer), q, query, states: STATES, alerts, limit: HISTORY_LIMIT },
            )
        }
        Err(e) => store_failed(Some(viewer), e),
    }
}

async fn export_as(console: Arc<Console>, viewer: Viewer, q: HistoryQuery, format: Format) -> Response {
    match q.filter() {
        Ok(filter) => {
            tracing::info!(account = %viewer.name, ?format, "console: history exported");
            export::export(console, filter, format)
        }
        Err(e) => message(StatusCode::BAD_REQUEST, Some(viewer), "Export", &e),
    }
}

async fn export_csv(State(console): State<Arc<Console>>, viewer: Viewer, Query(q): Query<HistoryQuery>) -> Response {
    export_as(console, viewer, q, Format::Csv).await
}

async fn export_json(State(console): State<Arc<Console>>, viewer: Viewer, Query(q): Query<HistoryQuery>) -> Response {
    export_as(console, viewer, q, Format::Json).await
}
