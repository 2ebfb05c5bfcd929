//! `/ack/{token}`: the page an acknowledge link in a Slack post or an email opens
//! ([`crate::links`]).
//!
//! - `GET` shows the alert (every agent field as text) and a confirm button, and changes
//!   nothing: mail scanners and chat unfurlers fetch links before anyone clicks.
//! - `POST` acknowledges (via `channel_link`) as the logged-in account if the browser sends a
//!   session, else as "NAME (via CHANNEL link)" with a name typed in, else "via CHANNEL link".
//!   The link's nonce is recorded in the same transaction, so a link acknowledges once.
//! - The POST is authorised by the token, not by a session's CSRF token: whoever opens the link
//!   may not be logged in, and a forged cross-site POST needs the token, which is the authority
//!   itself. A forged POST cannot borrow a logged-in person's name either: the session cookie is
//!   SameSite=Strict, so only a POST from the console's own page carries it (docs/SECURITY.md).
//! - Both are limited per source address, as logins are; a refused token gets a page saying
//!   why and a 4xx, and changes nothing.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use askama::Template;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::auth::Viewer;
use super::pages::{message, page, store_failed, AlertView};
use super::server::Peer;
use super::Console;
use crate::channel::when_utc;
use crate::links::{AckToken, RefusedLink};
use crate::ratelimit::Rate;
use crate::store::console::{LinkAck, LinkUse};
use crate::store::{now_ms, outbox_clock_ms, Transition};

/// Requests to `/ack/…` per source address: a burst of 30 (a scanner fetching every link of a
/// storm's messages), then one every 2 s.
pub const ACK_RATE: Rate = Rate { per_sec: 0.5, burst: 30.0 };
/// The longest name typed in on the page (characters).
const MAX_NAME: usize = 64;
/// The longest note (characters), as on an alert's page.
const MAX_NOTE: usize = 500;

#[derive(Template)]
#[template(path = "ack.html")]
struct AckPage {
    viewer: Option<Viewer>,
    alert: AlertView,
    channel: String,
    expires: String,
    /// Empty while the alert can be acknowledged; else what happened to it.
    done: String,
    /// The logged-in account, if the browser sent its session.
    account: String,
    /// That session's CSRF token: the POST is recorded under the account only with it.
    csrf: String,
}

/// The logged-in person, if the request carries a session (a same-site request: the cookie is
/// SameSite=Strict, so a click from a mail or chat app arrives without it).
fn viewer_of(console: &Console, headers: &HeaderMap) -> Option<Viewer> {
    Viewer::optional(console, headers)
}

/// Check the token (and, for a refused one, the source's limit); the page to answer with when refused.
fn admit(console: &Console, headers: &HeaderMap, peer: Peer, token: &str) -> Result<AckToken, Box<Response>> {
    let source = super::auth::source(console, headers, Some(peer.0));
    let refused = |result: &str| console.metrics.ack_links.get_or_create(&vec![("result", result.to_owned())]).inc();
    let Some(links) = console.links.as_ref() else {
        refused("off");
        return Err(Box::new(message(
            StatusCode::NOT_FOUND,
            None,
            "Acknowledge link",
            "Acknowledge links are not enabled on this collector. Log in to the console to acknowledge.",
        )));
    };
    // Refused tokens are charged to the source's limit, valid ones to their own link's: behind a
    // proxy on another host every responder (and every mail scanner fetching the links) shares
    // one address, and must not be locked out of acknowledging in an incident by junk.
    let verified = links.verify(token, SystemTime::now());
    let allowed = match &verified {
        // A valid link has a budget of its own (a used one replayed in a loop must not queue
        // work on the writer thread that commits SOS).
        Ok(t) => console.auth.allow_ack_link(t.nonce),
        Err(_) => console.auth.allow_ack(source),
    };
    if !allowed {
        refused("limited");
        tracing::warn!(%source, "console: acknowledge link requests limited");
        return Err(Box::new(message(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            "Too many requests",
            "Too many requests from your address. Wait a few seconds and reload this page.",
        )));
    }
    verified.map_err(|e| {
        // The token is not logged: a valid one is an authority.
        tracing::warn!(%source, reason = %e, "console: acknowledge link refused");
        let (status, result, text) = match &e {
            RefusedLink::Malformed => (
                StatusCode::NOT_FOUND,
                "malformed",
                "This is not an acknowledge link of this collector (it may have been cut short when it was \
                 copied). Nothing was acknowledged. Log in to the console to acknowledge."
                    .to_owned(),
            ),
            RefusedLink::Forged => (
                StatusCode::FORBIDDEN,
                "forged",
                "This link's signature does not match: it was altered, or it is not from this collector. \
                 Nothing was acknowledged. Log in to the console to acknowledge."
                    .to_owned(),
            ),
            RefusedLink::Expired { at } => (
                StatusCode::GONE,
                "expired",
                format!(
                    "This link expired at {}. Nothing was acknowledged. Log in to the console to acknowledge.",
                    when_utc(unix_secs(*at))
                ),
            ),
        };
        refused(result);
        Box::new(message(status, None, "Acknowledge link refused", &text))
    })
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The page for `token`'s alert, with `done` (empty: the confirm form is shown).
async fn show(
    console: &Arc<Console>,
    viewer: Option<Viewer>,
    token: &AckToken,
    status: StatusCode,
    done: Option<String>,
) -> Response {
    let (alert_id, nonce) = (token.alert, token.nonce_hex());
    let read = async {
        let alert = console.store.console_alert(alert_id).await?;
        let response = console.store.console_response(alert_id).await?.0;
        Ok::<_, crate::store::StoreError>((alert, response, console.store.link_used(&nonce).await?))
    }
    .await;
    let (alert, response, used) = match read {
        Ok((Some((a, _)), response, used)) => (AlertView::from(&a), response, used),
        Ok((None, ..)) => return message(StatusCode::NOT_FOUND, viewer, "Alert", "There is no such alert."),
        Err(e) => return store_failed(viewer, e),
    };
    let acked_at = response.and_then(|r| r.acknowledged_at_ms).map(|t| format!(" at {}", when_utc(t / 1000)));
    let done = done.unwrap_or_else(|| match used {
        Some((by, at)) => format!("This link was used already: acknowledged by {by} at {}.", when_utc(at / 1000)),
        None if alert.unanswered() => String::new(),
        None if alert.state == "acknowledged" => {
            format!("Already acknowledged by {}{}.", alert.by, acked_at.unwrap_or_default())
        }
        None => format!("This alert is {}: nothing to acknowledge.", alert.state),
    });
    let account = viewer.as_ref().map(|v| v.name.clone()).unwrap_or_default();
    let csrf = viewer.as_ref().map(|v| v.csrf.clone()).unwrap_or_default();
    page(
        status,
        AckPage {
            viewer,
            alert,
            channel: token.channel.clone(),
            expires: when_utc(unix_secs(token.expires)),
            done,
            account,
            csrf,
        },
    )
}

/// `GET /ack/{token}`: the alert and a confirm button. Changes nothing.
pub async fn ack_page(
    State(console): State<Arc<Console>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let t = match admit(&console, &headers, peer, &token) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let viewer = viewer_of(&console, &headers);
    show(&console, viewer, &t, StatusCode::OK, None).await
}

#[derive(Deserialize)]
pub struct AckForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    note: String,
    /// The session's CSRF token, sent by the page when it was shown to a logged-in person.
    #[serde(default)]
    csrf: String,
}

/// Printable text of at most `max` characters, trimmed.
fn clean(text: &str, max: usize) -> String {
    text.trim().chars().filter(|c| !c.is_control() && !invisible(*c)).take(max).collect::<String>().trim().to_owned()
}

/// Format characters that change how the text around them is shown (bidirectional overrides
/// and isolates, zero-width characters): they could hide or reverse "(via slack link)" after a
/// typed name in the sender's toast, Slack and email.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{061C}' | '\u{FEFF}')
}

/// `POST /ack/{token}`: acknowledge, once.
pub async fn ack(
    State(console): State<Arc<Console>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(token): Path<String>,
    Form(f): Form<AckForm>,
) -> Response {
    let t = match admit(&console, &headers, peer, &token) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    // The account's name only with its session's CSRF token (the page shows it to that session):
    // SameSite is per site, so a sibling subdomain holding a link could otherwise post under a
    // logged-in person's name.
    let viewer = viewer_of(&console, &headers).filter(|v| super::auth::same(&f.csrf, &v.csrf));
    let responder = match (&viewer, clean(&f.name, MAX_NAME)) {
        (Some(v), _) => v.name.clone(),
        (None, name) if name.is_empty() => format!("via {} link", t.channel),
        // A typed name is not proof of anything: it says so.
        (None, name) => format!("{name} (via {} link)", t.channel),
    };
    let link = LinkAck {
        nonce: t.nonce_hex(),
        alert: t.alert,
        channel: t.channel.clone(),
        expires_at_ms: unix_secs(t.expires).saturating_mul(1000),
        responder: responder.clone(),
        note: clean(&f.note, MAX_NOTE),
    };
    let (now, clock) = (now_ms(), outbox_clock_ms());
    let done = console.store.acknowledge_by_link(&link, now, clock).await;
    let count = |r: &str| console.metrics.ack_links.get_or_create(&vec![("result", r.to_owned())]).inc();
    match done {
        Ok(LinkUse::Ack(Transition::New { at_ms })) => {
            count("acknowledged");
            console.store.changed(true);
            tracing::info!(alert = %t.alert, channel = %t.channel, %responder, "console: alert acknowledged through a link");
            let text = format!(
                "Acknowledged by {responder} at {}. The person who pressed the button is told that someone is coming.",
                when_utc(at_ms / 1000)
            );
            show(&console, viewer, &t, StatusCode::OK, Some(text)).await
        }
        Ok(LinkUse::Used { by, at_ms }) => {
            count("used");
            let text = format!("This link was used already: acknowledged by {by} at {}.", when_utc(at_ms / 1000));
            show(&console, viewer, &t, StatusCode::CONFLICT, Some(text)).await
        }
        // Someone else acknowledged (or closed) it: the page says who and when.
        Ok(LinkUse::Ack(Transition::Already { .. })) => {
            count("already");
            show(&console, viewer, &t, StatusCode::CONFLICT, None).await
        }
        Ok(LinkUse::Ack(Transition::Closed(_))) => {
            count("closed");
            show(&console, viewer, &t, StatusCode::CONFLICT, None).await
        }
        Ok(LinkUse::Ack(Transition::Unknown)) => {
            message(StatusCode::NOT_FOUND, viewer, "Alert", "There is no such alert.")
        }
        Err(e) => store_failed(viewer, e),
    }
}
