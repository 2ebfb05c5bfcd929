//! Wire protocol v1: the datagram layout, the message kinds, and the constants both sides obey.
//!
//! A datagram is a 12-byte cleartext header followed by a Fernet token in its usual url-safe
//! base64 text form:
//!
//! ```text
//! offset  size  field
//!      0     3  magic "SOS" (0x53 0x4F 0x53)
//!      3     1  protocol version, 0x01
//!      4     8  key id: which key sealed the token
//!     12     n  Fernet token (ASCII), whose plaintext is one JSON object: a [`Message`]
//! ```
//!
//! `docs/PROTOCOL.md` is the full specification.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::AlertId;

/// The first three bytes of every SOS datagram.
pub const MAGIC: [u8; 3] = *b"SOS";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Length of the key id in the header.
pub const KEY_ID_LEN: usize = 8;
/// Length of the cleartext header: magic, version, key id.
pub const HEADER_LEN: usize = MAGIC.len() + 1 + KEY_ID_LEN;
/// The largest datagram either side sends or accepts. Below the IPv6 minimum MTU (1280) less
/// the IPv6 and UDP headers, so an SOS is never fragmented.
pub const MAX_DATAGRAM: usize = 1200;
/// The longest text of an IP address (an IPv6 address ending in an IPv4 one, as
/// `INET6_ADDRSTRLEN` counts it): an SOS is fitted with room for an `ip` this long.
pub const MAX_IP_TEXT: usize = 45;
/// What ends a text field that was cut to fit in a datagram.
pub const CUT_MARKER: &str = "…[cut]";
/// The smallest Fernet token there is (an empty plaintext): 73 bytes encoded as 100 characters.
pub const MIN_TOKEN_LEN: usize = 100;
/// The largest JSON plaintext that still fits in [`MAX_DATAGRAM`] once sealed.
pub const MAX_PLAINTEXT: usize = 831;
/// Default token age limit, seconds: a token older than this is rejected as a possible replay.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 120;
/// Default limit on how far in the future a token's timestamp may be, seconds.
pub const DEFAULT_MAX_FUTURE_SKEW_SECS: u64 = 60;
/// The UDP port the collector listens on by default.
pub const DEFAULT_PORT: u16 = 5000;

/// The smallest request plaintexts whose replies can always be sent (a reply is never larger
/// than its request: docs/PROTOCOL.md 6.3). A request below its minimum gets no reply; senders
/// add a `pad` member to reach it. Each is the smallest plaintext that seals into as many bytes
/// as the largest reply (server times of 10 digits, until the year 2286).
///
/// `sos` → `sos_ack`. An `sos` below it is still stored and notified (an alert is never refused
/// for its size), but its acknowledgement cannot be sent.
pub const MIN_SOS_PLAINTEXT: usize = 96;
/// `cancel` → `cancel_ack`. A smaller `cancel` is not recorded at all.
pub const MIN_CANCEL_PLAINTEXT: usize = 80;
/// `heartbeat` → `heartbeat_ack` without news.
pub const MIN_HEARTBEAT_PLAINTEXT: usize = 48;
/// `heartbeat` → `heartbeat_ack` carrying `new_key` (a rotation). A heartbeat between
/// [`MIN_HEARTBEAT_PLAINTEXT`] and this gets its answer without the key.
pub const MIN_HEARTBEAT_NEW_KEY_PLAINTEXT: usize = 112;
/// Any authentic request refused for its timestamp → `time_hint`.
pub const MIN_TIME_HINT_PLAINTEXT: usize = 64;
/// `respond` → `respond_ack`. A smaller `respond` is not recorded at all (like `cancel`).
pub const MIN_RESPOND_PLAINTEXT: usize = 112;
/// `forward_update` → `forward_update_ack`. A smaller `forward_update` is not recorded at all.
/// A site collector pads `forward_sos` and `forward_update` to at least this (its `cancel` is
/// padded as an agent's), which covers every answer it can get.
pub const MIN_FORWARD_UPDATE_PLAINTEXT: usize = 112;
// Padding a site's requests to it covers the answers to `forward_sos` and `cancel` too.
const _: () =
    assert!(MIN_FORWARD_UPDATE_PLAINTEXT >= MIN_SOS_PLAINTEXT && MIN_FORWARD_UPDATE_PLAINTEXT >= MIN_CANCEL_PLAINTEXT);

/// The length of the datagram that a plaintext of `plaintext_len` bytes seals into.
pub const fn sealed_len(plaintext_len: usize) -> usize {
    // Fernet: version (1) + timestamp (8) + IV (16) + PKCS#7-padded ciphertext + HMAC (32),
    // then base64 with padding.
    let ciphertext = (plaintext_len / 16 + 1) * 16;
    let raw = 1 + 8 + 16 + ciphertext + 32;
    HEADER_LEN + raw.div_ceil(3) * 4
}

/// Which key sealed a datagram: 8 bytes sent in clear so the receiver finds the key without
/// trying them all. For a site key it is derived from the key (see [`crate::Key`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Why a datagram could not even be split into header and token. Such datagrams are counted and
/// dropped without a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than a header and the smallest possible token.
    #[error("datagram of {0} bytes is too short")]
    TooShort(usize),
    /// Longer than [`MAX_DATAGRAM`].
    #[error("datagram of {0} bytes is longer than {MAX_DATAGRAM}")]
    TooLong(usize),
    /// Does not start with "SOS".
    #[error("datagram does not start with the SOS magic")]
    BadMagic,
    /// A protocol version this side does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The token part is not printable ASCII.
    #[error("token is not ASCII")]
    TokenNotAscii,
}

/// Split a datagram into its key id and its Fernet token, checking sizes, magic and version.
///
/// # Errors
/// A [`DecodeError`] naming the first thing that is wrong; nothing here panics on any input.
pub fn split_datagram(datagram: &[u8]) -> Result<(KeyId, &str), DecodeError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(DecodeError::TooLong(datagram.len()));
    }
    if datagram.len() < HEADER_LEN + MIN_TOKEN_LEN {
        return Err(DecodeError::TooShort(datagram.len()));
    }
    if datagram[..3] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if datagram[3] != VERSION {
        return Err(DecodeError::UnsupportedVersion(datagram[3]));
    }
    let mut key_id = [0u8; KEY_ID_LEN];
    key_id.copy_from_slice(&datagram[4..HEADER_LEN]);
    let token = std::str::from_utf8(&datagram[HEADER_LEN..])
        .ok()
        .filter(|t| t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or(DecodeError::TokenNotAscii)?;
    Ok((KeyId(key_id), token))
}

/// The header bytes for a datagram sealed with `key_id`.
pub fn header(key_id: KeyId) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..3].copy_from_slice(&MAGIC);
    h[3] = VERSION;
    h[4..].copy_from_slice(&key_id.0);
    h
}

/// Every message of protocol v1: the JSON object inside the Fernet token, tagged by `kind`.
///
/// Receivers ignore fields they do not know (so senders may add a `pad` field to grow a request),
/// and optional text fields default to empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// Agent → collector: somebody pressed the button.
    Sos(Sos),
    /// Collector → agent: the SOS is durably stored (or was already).
    SosAck(SosAck),
    /// Agent → collector: the sender withdraws an alert (false alarm).
    Cancel(Cancel),
    /// Collector → agent: the cancellation is recorded.
    CancelAck(CancelAck),
    /// Agent → collector: the agent is alive; also asks for news about its alerts.
    Heartbeat(Heartbeat),
    /// Collector → agent: answer to a heartbeat, with any news for the agent.
    HeartbeatAck(HeartbeatAck),
    /// Collector → agent (a push, and inside `heartbeat_ack`): news about the agent's alert
    /// (a responder acknowledged it, resolved it, or nobody has answered yet).
    ResponderNotice(ResponderNotice),
    /// Collector → responder agents (a push): an alert to show on a responder's desktop, or a
    /// change of one already shown.
    AlertBroadcast(AlertBroadcast),
    /// Responder agent → collector: "I'm responding" to an alert.
    Respond(Respond),
    /// Collector → responder agent: what became of a `respond`.
    RespondAck(RespondAck),
    /// Responder agent → collector: an `alert_broadcast` arrived (no reply).
    BroadcastReceipt(BroadcastReceipt),
    /// Agent → collector: a `responder_notice` arrived (no reply).
    NoticeReceipt(NoticeReceipt),
    /// Collector → agent: an authentic request was refused for its timestamp; the collector's
    /// clock, so that the agent can reseal with a corrected time.
    TimeHint(TimeHint),
    /// Site collector → centre (sealed with the site's enrolled key): an alert the site
    /// stored, forwarded with its id and its sender's identity. Answered with `sos_ack`.
    ForwardSos(ForwardSos),
    /// Site collector → centre: the alert was acknowledged or resolved at the site.
    ForwardUpdate(ForwardUpdate),
    /// Centre → site collector: the `forward_update` is recorded.
    ForwardUpdateAck(ForwardUpdateAck),
}

impl Message {
    /// The `kind` tag, for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Sos(_) => "sos",
            Message::SosAck(_) => "sos_ack",
            Message::Cancel(_) => "cancel",
            Message::CancelAck(_) => "cancel_ack",
            Message::Heartbeat(_) => "heartbeat",
            Message::HeartbeatAck(_) => "heartbeat_ack",
            Message::ResponderNotice(_) => "responder_notice",
            Message::AlertBroadcast(_) => "alert_broadcast",
            Message::TimeHint(_) => "time_hint",
            Message::Respond(_) => "respond",
            Message::RespondAck(_) => "respond_ack",
            Message::BroadcastReceipt(_) => "broadcast_receipt",
            Message::NoticeReceipt(_) => "notice_receipt",
            Message::ForwardSos(_) => "forward_sos",
            Message::ForwardUpdate(_) => "forward_update",
            Message::ForwardUpdateAck(_) => "forward_update_ack",
        }
    }
}

/// Somebody pressed the button.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sos {
    /// Fixed when the button was pressed; the same on every retry.
    pub alert_id: AlertId,
    /// A drill: delivered and marked TEST everywhere, never presented as a real emergency.
    #[serde(default)]
    pub test: bool,
    /// When the button was pressed, seconds since the Unix epoch, by the agent's clock.
    pub triggered_at: u64,
    /// 0 for the first transmission, then counts up on each retry.
    #[serde(default)]
    pub attempt: u32,
    /// The login name of the person at the workstation.
    #[serde(default)]
    pub user: String,
    /// The workstation's host name.
    #[serde(default)]
    pub host: String,
    /// The workstation's address on the route to the collector.
    #[serde(default)]
    pub ip: String,
    /// Where the workstation is, as the administrator configured it.
    #[serde(default)]
    pub location: String,
    /// Free text from the sender, if any.
    #[serde(default)]
    pub message: String,
    /// The sending software and its version, e.g. `sos-agent/0.1.0`.
    #[serde(default)]
    pub agent: String,
}

impl Sos {
    /// Shorten the free-text fields, least important first (message, location, user, host,
    /// agent), until the JSON fits in [`MAX_PLAINTEXT`] **with `ip` and `attempt` at their
    /// largest** ([`MAX_IP_TEXT`] characters, `u32::MAX`): filling them in later, per collector
    /// and per retransmission, can never make the SOS too long to seal. Cuts fall on character
    /// boundaries and end with [`CUT_MARKER`], so a reader sees that text is missing.
    pub fn fit_to_datagram(&mut self) {
        cut_fields_to_fit(self, 5, Sos::widest_json_len, |s, field| match field {
            0 => &mut s.message,
            1 => &mut s.location,
            2 => &mut s.user,
            3 => &mut s.host,
            _ => &mut s.agent,
        });
    }

    /// The length of this SOS's JSON with `ip` and `attempt` at their largest.
    fn widest_json_len(&self) -> usize {
        let mut widest = self.clone();
        widest.attempt = u32::MAX;
        if widest.ip.len() < MAX_IP_TEXT {
            widest.ip = "f".repeat(MAX_IP_TEXT);
        }
        serde_json::to_vec(&Message::Sos(widest)).map(|v| v.len()).unwrap_or(usize::MAX)
    }

    /// Make every field safe to show: control characters (which could forge log lines, email
    /// headers or chat formatting) become spaces, except line breaks in `message`, which stay
    /// (normalised to `\n`). Receivers apply this to every SOS before using it.
    pub fn sanitize(&mut self) {
        for field in [&mut self.user, &mut self.host, &mut self.ip, &mut self.location, &mut self.agent] {
            if field.chars().any(char::is_control) {
                *field = field.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
            }
        }
        if self.message.chars().any(|c| c.is_control() && c != '\n') {
            self.message = self
                .message
                .replace("\r\n", "\n")
                .chars()
                .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
                .collect();
        }
    }
}

/// What the collector did with an SOS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Stored now; responders are being notified.
    Stored,
    /// Already stored by an earlier transmission; nobody is notified again.
    Duplicate,
}

/// The SOS is durably stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SosAck {
    /// The alert this acknowledges.
    pub alert_id: AlertId,
    /// Whether this transmission was the first to arrive.
    pub status: AckStatus,
    /// The collector's clock, seconds since the Unix epoch.
    pub server_time: u64,
}

/// The sender withdraws an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The alert to withdraw.
    pub alert_id: AlertId,
    /// Why, in the sender's words; may be empty.
    #[serde(default)]
    pub reason: String,
    /// Filler that brings the request to [`MIN_CANCEL_PLAINTEXT`], so that the `cancel_ack`
    /// fits (replies are never larger than their request). Not sent when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pad: String,
}

impl Cancel {
    /// A cancellation of `alert_id`, padded to [`MIN_CANCEL_PLAINTEXT`].
    pub fn padded(alert_id: AlertId, reason: String) -> Cancel {
        let mut c = Cancel { alert_id, reason, pad: String::new() };
        let len = serde_json::to_vec(&Message::Cancel(c.clone())).map(|v| v.len()).unwrap_or(0);
        if len < MIN_CANCEL_PLAINTEXT {
            // `,"pad":""` costs 9 bytes before the filler itself.
            c.pad = "0".repeat((MIN_CANCEL_PLAINTEXT - len).saturating_sub(9).max(1));
        }
        c
    }
}

/// The cancellation is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelAck {
    /// The alert that is now cancelled.
    pub alert_id: AlertId,
    /// The collector's clock, seconds since the Unix epoch.
    pub server_time: u64,
}

/// The agent is alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The login name of the person at the workstation.
    #[serde(default)]
    pub user: String,
    /// The workstation's host name.
    #[serde(default)]
    pub host: String,
    /// The workstation's address on the route to the collector.
    #[serde(default)]
    pub ip: String,
    /// Filler that makes room for the news a [`HeartbeatAck`] may carry (replies are never
    /// larger than their request).
    #[serde(default)]
    pub pad: String,
    /// This desktop is a responder desktop (agent config `responder = true`): it heartbeats
    /// more often and expects `alert_broadcast` pushes at the address it sends from.
    #[serde(default)]
    pub responder: bool,
}

/// Answer to a heartbeat.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The collector's clock, seconds since the Unix epoch.
    pub server_time: u64,
    /// News about this agent's alerts; dropped first when the reply would outgrow the request.
    #[serde(default)]
    pub notices: Vec<ResponderNotice>,
    /// A new key for this agent (`sos-collector agents rotate`), sent in a reply sealed with
    /// the agent's current key. The agent stores it and seals with it from then on; the
    /// collector accepts the old key until a grace period after the new one is first used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_key: Option<String>,
}

impl fmt::Debug for HeartbeatAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeartbeatAck")
            .field("server_time", &self.server_time)
            .field("notices", &self.notices)
            .field("new_key", &self.new_key.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

/// What a [`ResponderNotice`] tells the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeEvent {
    /// A responder is coming (the default, as notices were before this field existed).
    #[default]
    Acknowledged,
    /// A responder closed the alert.
    Resolved,
    /// Nobody could be reached or nobody answered: the sender should use the fallback.
    Unanswered,
}

/// News for the sender about its alert: pushed to the agent's last authenticated address and
/// repeated in `heartbeat_ack.notices` until the agent sends a [`NoticeReceipt`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponderNotice {
    /// The sender's alert.
    pub alert_id: AlertId,
    /// What happened.
    #[serde(default)]
    pub event: NoticeEvent,
    /// Who (the configured responder name) for `acknowledged` and `resolved`; empty for
    /// `unanswered`.
    pub responder: String,
    /// What they said, may be empty.
    #[serde(default)]
    pub note: String,
    /// When it happened, seconds since the Unix epoch.
    pub at: u64,
}

/// Where an alert shown on responders' desktops stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BroadcastState {
    /// Nobody has acknowledged it yet.
    Open,
    /// A responder is coming (`responder` says who).
    Acknowledged,
    /// The sender cancelled it: somebody must still check in person.
    Cancelled,
    /// A responder closed it (`responder` says who).
    Resolved,
}

/// An alert for a responder's desktop, or a change of one already shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertBroadcast {
    /// The alert.
    pub alert_id: AlertId,
    /// A drill.
    #[serde(default)]
    pub test: bool,
    /// When the button was pressed, seconds since the Unix epoch.
    pub triggered_at: u64,
    /// Who pressed it.
    #[serde(default)]
    pub user: String,
    /// On which workstation.
    #[serde(default)]
    pub host: String,
    /// The workstation's address.
    #[serde(default)]
    pub ip: String,
    /// Where it is.
    #[serde(default)]
    pub location: String,
    /// The sender's text.
    #[serde(default)]
    pub message: String,
    /// Where the alert stands.
    pub state: BroadcastState,
    /// Who acknowledged or resolved it; empty otherwise.
    #[serde(default)]
    pub responder: String,
    /// What they said, may be empty.
    #[serde(default)]
    pub note: String,
    /// Grows with every change of this alert: an agent ignores a broadcast whose `seq` is not
    /// above the last it applied for the alert (pushes may arrive late or twice).
    pub seq: u64,
    /// An escalation reminder: nobody has answered, show the alert again, louder.
    #[serde(default)]
    pub reminder: bool,
}

impl AlertBroadcast {
    /// Shorten the free-text fields, least important first (message, location, user, host,
    /// note, responder), until the JSON fits in [`MAX_PLAINTEXT`] **with `seq` at its largest**
    /// (`u64::MAX`), as [`Sos::fit_to_datagram`] does. Cuts fall on character boundaries and
    /// end with [`CUT_MARKER`].
    pub fn fit_to_datagram(&mut self) {
        cut_fields_to_fit(self, 6, AlertBroadcast::widest_json_len, |b, field| match field {
            0 => &mut b.message,
            1 => &mut b.location,
            2 => &mut b.user,
            3 => &mut b.host,
            4 => &mut b.note,
            _ => &mut b.responder,
        });
        // Only `ip` is left to cut (it is checked when the alert arrives, so this is a limit
        // that a real address never reaches).
        while self.widest_json_len() > MAX_PLAINTEXT && !self.ip.is_empty() {
            let excess = self.widest_json_len() - MAX_PLAINTEXT;
            let mut keep = self.ip.len().saturating_sub(excess);
            while !self.ip.is_char_boundary(keep) {
                keep -= 1;
            }
            self.ip.truncate(keep);
        }
    }

    /// The length of this broadcast's JSON with `seq` at its largest.
    fn widest_json_len(&self) -> usize {
        let mut widest = self.clone();
        widest.seq = u64::MAX;
        serde_json::to_vec(&Message::AlertBroadcast(widest)).map(|v| v.len()).unwrap_or(usize::MAX)
    }
}

/// Cut the first `fields` text fields of `msg` (`field(msg, i)` is the i-th, least important
/// first), each to nothing before the next, until `widest_len(msg)` fits in [`MAX_PLAINTEXT`].
fn cut_fields_to_fit<T>(
    msg: &mut T,
    fields: usize,
    widest_len: fn(&T) -> usize,
    field: fn(&mut T, usize) -> &mut String,
) {
    for i in 0..fields {
        let mut cut = false;
        loop {
            let excess = widest_len(msg).saturating_sub(MAX_PLAINTEXT);
            if excess == 0 {
                return;
            }
            if !cut_to(field(msg, i), excess, cut) {
                break; // nothing left to cut here: the next field
            }
            cut = true;
        }
    }
}

/// Cut about `excess` bytes off the end of `f` and mark it with [`CUT_MARKER`] (`cut`: it ends
/// with the marker already). False when nothing is left to cut.
fn cut_to(f: &mut String, excess: usize, cut: bool) -> bool {
    let body_len = if cut { f.len() - CUT_MARKER.len() } else { f.len() };
    if body_len == 0 {
        return false;
    }
    // JSON may escape a character into up to 6 bytes: cutting `excess` bytes of text removes at
    // least `excess` bytes of JSON; the caller measures again.
    let mut keep = body_len.saturating_sub(excess + if cut { 0 } else { CUT_MARKER.len() });
    while !f.is_char_boundary(keep) {
        keep -= 1;
    }
    f.truncate(keep);
    f.push_str(CUT_MARKER);
    true
}

/// A responder says "I'm responding". Sealed with the responder agent's own key; the collector
/// attributes it to the responder configured for that agent, never to text in the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Respond {
    /// The alert the responder takes.
    pub alert_id: AlertId,
    /// What the responder says, may be empty (e.g. "on my way, 2 minutes").
    #[serde(default)]
    pub note: String,
    /// Filler that brings the request to [`MIN_RESPOND_PLAINTEXT`], so that the `respond_ack`
    /// fits. Not sent when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pad: String,
}

impl Respond {
    /// A `respond` for `alert_id`, padded to [`MIN_RESPOND_PLAINTEXT`]. A note too long for a
    /// datagram is cut (ending with [`CUT_MARKER`]).
    pub fn padded(alert_id: AlertId, note: String) -> Respond {
        let mut r = Respond { alert_id, note, pad: String::new() };
        let len = |r: &Respond| serde_json::to_vec(&Message::Respond(r.clone())).map(|v| v.len()).unwrap_or(0);
        let mut cut = false;
        loop {
            let excess = len(&r).saturating_sub(MAX_PLAINTEXT);
            if excess == 0 || !cut_to(&mut r.note, excess, cut) {
                break;
            }
            cut = true;
        }
        let l = len(&r);
        if l < MIN_RESPOND_PLAINTEXT {
            // `,"pad":""` costs 9 bytes before the filler itself.
            r.pad = "0".repeat((MIN_RESPOND_PLAINTEXT - l).saturating_sub(9).max(1));
        }
        r
    }
}

/// What the collector did with a `respond`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RespondStatus {
    /// This `respond` is the first: the alert is acknowledged by this responder now.
    Acknowledged,
    /// The alert was already acknowledged (by someone else, or by this responder before); the
    /// broadcast says who.
    Already,
    /// The alert is cancelled or resolved.
    Closed,
}

/// Answer to a `respond`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RespondAck {
    /// The alert of the `respond`.
    pub alert_id: AlertId,
    /// What became of it.
    pub status: RespondStatus,
    /// The collector's clock, seconds since the Unix epoch.
    pub server_time: u64,
}

/// A responder agent received an `alert_broadcast`: the collector stops repeating it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastReceipt {
    /// The alert of the broadcast.
    pub alert_id: AlertId,
    /// The `seq` of the broadcast received.
    pub seq: u64,
}

/// An agent received a `responder_notice`: the collector stops repeating it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeReceipt {
    /// The alert of the notice.
    pub alert_id: AlertId,
    /// The event of the notice.
    pub event: NoticeEvent,
}

/// An alert forwarded by a site collector to its centre, sealed with the site's own key (the
/// site enrolled at the centre as a site). The fields of the `sos` the site stored, plus who the
/// sender's key was enrolled as at the site. The site's name is not in it: the centre takes it
/// from the enrollment of the key that sealed the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardSos {
    /// The alert's id, as the sender chose it (the centre deduplicates by it).
    pub alert_id: AlertId,
    /// A drill.
    #[serde(default)]
    pub test: bool,
    /// When the button was pressed, by the sender's clock.
    pub triggered_at: u64,
    /// As in `sos`.
    #[serde(default)]
    pub user: String,
    /// As in `sos`.
    #[serde(default)]
    pub host: String,
    /// As in `sos` (the sender's address on its route to the site).
    #[serde(default)]
    pub ip: String,
    /// As in `sos`.
    #[serde(default)]
    pub location: String,
    /// As in `sos`.
    #[serde(default)]
    pub message: String,
    /// As in `sos` (the sender's software).
    #[serde(default)]
    pub agent: String,
    /// The name the sender's key was enrolled under at the site; empty for a site-key sender.
    #[serde(default)]
    pub sender: String,
    /// The host the sender's key was enrolled on at the site; empty for a site-key sender.
    #[serde(default)]
    pub sender_host: String,
    /// Filler up to [`MIN_FORWARD_UPDATE_PLAINTEXT`]; ignored. Not sent when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pad: String,
}

impl ForwardSos {
    /// The `sos` it carries (`attempt` 0), as the centre stores it.
    pub fn to_sos(&self) -> Sos {
        Sos {
            alert_id: self.alert_id,
            test: self.test,
            triggered_at: self.triggered_at,
            attempt: 0,
            user: self.user.clone(),
            host: self.host.clone(),
            ip: self.ip.clone(),
            location: self.location.clone(),
            message: self.message.clone(),
            agent: self.agent.clone(),
        }
    }

    /// Shorten free text, least important first (message, location, user, host, agent,
    /// sender, sender_host, then ip) until the JSON fits in [`MAX_PLAINTEXT`], then pad it to
    /// [`MIN_FORWARD_UPDATE_PLAINTEXT`].
    pub fn fit_to_datagram(&mut self) {
        self.pad.clear();
        cut_fields_to_fit(self, 7, ForwardSos::json_len, |f, field| match field {
            0 => &mut f.message,
            1 => &mut f.location,
            2 => &mut f.user,
            3 => &mut f.host,
            4 => &mut f.agent,
            5 => &mut f.sender,
            _ => &mut f.sender_host,
        });
        while self.json_len() > MAX_PLAINTEXT && !self.ip.is_empty() {
            let keep = self.ip.len().saturating_sub(self.json_len() - MAX_PLAINTEXT);
            let keep = (0..=keep).rev().find(|k| self.ip.is_char_boundary(*k)).unwrap_or(0);
            self.ip.truncate(keep);
        }
        let len = self.json_len();
        if len < MIN_FORWARD_UPDATE_PLAINTEXT {
            // `,"pad":""` costs 9 bytes before the filler itself.
            self.pad = "0".repeat((MIN_FORWARD_UPDATE_PLAINTEXT - len).saturating_sub(9).max(1));
        }
    }

    fn json_len(&self) -> usize {
        serde_json::to_vec(&Message::ForwardSos(self.clone())).map(|v| v.len()).unwrap_or(usize::MAX)
    }
}

/// What a [`ForwardUpdate`] says happened to an alert at the site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardEvent {
    /// A responder at the site acknowledged it.
    Acknowledged,
    /// A responder at the site resolved it.
    Resolved,
}

/// Site collector → centre: an alert the site forwarded was acknowledged or resolved there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardUpdate {
    /// The forwarded alert.
    pub alert_id: AlertId,
    /// What happened.
    pub event: ForwardEvent,
    /// Who, as the site names its responder.
    pub responder: String,
    /// What they said (for `resolved`: the outcome, then the note); may be empty.
    #[serde(default)]
    pub note: String,
    /// Filler up to [`MIN_FORWARD_UPDATE_PLAINTEXT`]; ignored. Not sent when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pad: String,
}

impl ForwardUpdate {
    /// An update, its text cut to fit a datagram (note first, then responder) and padded to
    /// [`MIN_FORWARD_UPDATE_PLAINTEXT`].
    pub fn padded(alert_id: AlertId, event: ForwardEvent, responder: String, note: String) -> ForwardUpdate {
        let mut u = ForwardUpdate { alert_id, event, responder, note, pad: String::new() };
        let len = |u: &ForwardUpdate| {
            serde_json::to_vec(&Message::ForwardUpdate(u.clone())).map(|v| v.len()).unwrap_or(usize::MAX)
        };
        cut_fields_to_fit(&mut u, 2, len, |u, field| if field == 0 { &mut u.note } else { &mut u.responder });
        let l = len(&u);
        if l < MIN_FORWARD_UPDATE_PLAINTEXT {
            u.pad = "0".repeat((MIN_FORWARD_UPDATE_PLAINTEXT - l).saturating_sub(9).max(1));
        }
        u
    }
}

/// Centre → site collector: a `forward_update` is recorded (or was already, or the alert was
/// closed at the centre before: the site need not send it again in any case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardUpdateAck {
    /// The alert of the update.
    pub alert_id: AlertId,
    /// The update's event.
    pub event: ForwardEvent,
    /// The centre's clock, seconds since the Unix epoch.
    pub server_time: u64,
}

/// The collector refused an authentic token for its timestamp (too old or too far ahead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeHint {
    /// The collector's clock, seconds since the Unix epoch.
    pub server_time: u64,
    /// The timestamp of the refused token: the agent accepts the hint only for a token it
    /// sealed itself recently, so an old hint replayed to it changes nothing.
    pub token_time: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest plaintext that seals into as many bytes as `reply`.
    fn min_request_for(reply: &Message) -> usize {
        let len = serde_json::to_vec(reply).unwrap().len();
        (0..=len).find(|p| sealed_len(*p) >= sealed_len(len)).unwrap()
    }

    #[test]
    fn the_minimum_request_sizes_are_those_of_the_largest_replies() {
        let t = 9_999_999_999; // 10 digits: every server time until 2286
        let id = AlertId::from_u128(u128::MAX);
        let sos_ack = Message::SosAck(SosAck { alert_id: id, status: AckStatus::Duplicate, server_time: t });
        assert_eq!(min_request_for(&sos_ack), MIN_SOS_PLAINTEXT);
        assert_eq!(
            min_request_for(&Message::CancelAck(CancelAck { alert_id: id, server_time: t })),
            MIN_CANCEL_PLAINTEXT
        );
        let ack = HeartbeatAck { server_time: t, notices: Vec::new(), new_key: None };
        assert_eq!(min_request_for(&Message::HeartbeatAck(ack.clone())), MIN_HEARTBEAT_PLAINTEXT);
        let with_key = HeartbeatAck { new_key: Some(crate::Key::generate()), ..ack };
        assert_eq!(min_request_for(&Message::HeartbeatAck(with_key)), MIN_HEARTBEAT_NEW_KEY_PLAINTEXT);
        let hint = Message::TimeHint(TimeHint { server_time: t, token_time: t });
        assert_eq!(min_request_for(&hint), MIN_TIME_HINT_PLAINTEXT);
        let respond_ack = RespondAck { alert_id: id, status: RespondStatus::Acknowledged, server_time: t };
        assert_eq!(min_request_for(&Message::RespondAck(respond_ack)), MIN_RESPOND_PLAINTEXT);
        let update_ack = ForwardUpdateAck { alert_id: id, event: ForwardEvent::Acknowledged, server_time: t };
        assert_eq!(min_request_for(&Message::ForwardUpdateAck(update_ack)), MIN_FORWARD_UPDATE_PLAINTEXT);
    }

    #[test]
    fn forwarded_messages_fit_and_are_padded_for_their_answers() {
        let mut f = ForwardSos {
            alert_id: AlertId::from_u128(u128::MAX),
            test: false,
            triggered_at: 1_700_000_000,
            user: String::new(),
            host: String::new(),
            ip: String::new(),
            location: String::new(),
            message: String::new(),
            agent: String::new(),
            sender: String::new(),
            sender_host: String::new(),
            pad: String::new(),
        };
        f.fit_to_datagram();
        let len = serde_json::to_vec(&Message::ForwardSos(f.clone())).unwrap().len();
        // Every field is always written: even an empty one needs no filler.
        assert!(len >= MIN_FORWARD_UPDATE_PLAINTEXT && f.pad.is_empty(), "{len}");
        f.message = "é".repeat(2000);
        f.sender = "S".repeat(300);
        f.ip = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".into();
        f.fit_to_datagram();
        let len = serde_json::to_vec(&Message::ForwardSos(f.clone())).unwrap().len();
        assert!(len <= MAX_PLAINTEXT, "{len}");
        assert!(f.message.ends_with(CUT_MARKER) && f.pad.is_empty(), "{f:?}");
        assert_eq!(f.to_sos().alert_id, f.alert_id);
        for note in ["", "on my way", &"x".repeat(3000)] {
            let u = ForwardUpdate::padded(AlertId::from_u128(1), ForwardEvent::Resolved, "R".repeat(900), note.into());
            let len = serde_json::to_vec(&Message::ForwardUpdate(u)).unwrap().len();
            assert!((MIN_FORWARD_UPDATE_PLAINTEXT..=MAX_PLAINTEXT).contains(&len), "{len}");
        }
    }

    #[test]
    fn a_padded_cancel_is_just_long_enough_and_an_empty_pad_is_not_sent() {
        for reason in ["", "x", "pressed by accident", &"long reason ".repeat(10)] {
            let c = Message::Cancel(Cancel::padded(AlertId::from_u128(7), reason.into()));
            let len = serde_json::to_vec(&c).unwrap().len();
            assert!(len >= MIN_CANCEL_PLAINTEXT, "{reason:?}: {len}");
            assert!(len < MIN_CANCEL_PLAINTEXT + 16 || reason.len() > 20, "{reason:?}: {len}");
        }
        let plain = Cancel { alert_id: AlertId::from_u128(7), reason: String::new(), pad: String::new() };
        assert!(!serde_json::to_string(&Message::Cancel(plain)).unwrap().contains("pad"));
    }

    #[test]
    fn a_padded_respond_is_just_long_enough_and_a_long_note_is_cut() {
        for note in ["", "x", "on my way, 2 minutes", &"long note ".repeat(10)] {
            let r = Message::Respond(Respond::padded(AlertId::from_u128(u128::MAX), note.into()));
            let len = serde_json::to_vec(&r).unwrap().len();
            assert!(len >= MIN_RESPOND_PLAINTEXT, "{note:?}: {len}");
            assert!(len < MIN_RESPOND_PLAINTEXT + 16 || note.len() > 40, "{note:?}: {len}");
        }
        let r = Respond::padded(AlertId::from_u128(7), "é".repeat(1000));
        assert!(r.note.ends_with(CUT_MARKER), "{r:?}");
        assert!(serde_json::to_vec(&Message::Respond(r)).unwrap().len() <= MAX_PLAINTEXT);
    }

    #[test]
    fn older_notices_and_heartbeats_decode_with_the_new_fields_defaulted() {
        let json = r#"{"kind":"responder_notice","alert_id":"00000000000000000000000000000007",
                       "responder":"Sam","at":5}"#;
        match serde_json::from_str::<Message>(json).unwrap() {
            Message::ResponderNotice(n) => assert_eq!((n.event, n.note.as_str()), (NoticeEvent::Acknowledged, "")),
            other => panic!("decoded as {other:?}"),
        }
        match serde_json::from_str::<Message>(r#"{"kind":"heartbeat","pad":"00"}"#).unwrap() {
            Message::Heartbeat(h) => assert!(!h.responder),
            other => panic!("decoded as {other:?}"),
        }
        let json = r#"{"kind":"notice_receipt","alert_id":"00000000000000000000000000000007","event":"unanswered"}"#;
        let m: Message = serde_json::from_str(json).unwrap();
        assert_eq!(
            m,
            Message::NoticeReceipt(NoticeReceipt { alert_id: AlertId::from_u128(7), event: NoticeEvent::Unanswered })
        );
        assert_eq!(serde_json::to_string(&m).unwrap(), json);
    }

    fn broadcast() -> AlertBroadcast {
        AlertBroadcast {
            alert_id: AlertId::from_u128(7),
            test: false,
            triggered_at: 1_700_000_000,
            user: "alice".into(),
            host: "desk-12".into(),
            ip: "10.0.0.12".into(),
            location: "Reception".into(),
            message: String::new(),
            state: BroadcastState::Open,
            responder: String::new(),
            note: String::new(),
            seq: 1,
            reminder: false,
        }
    }

    #[test]
    fn a_fitted_broadcast_fits_with_the_largest_seq() {
        let mut b = broadcast();
        b.message = "é".repeat(2000);
        b.note = "\u{1}".repeat(40);
        b.responder = "R".repeat(64);
        b.fit_to_datagram();
        b.seq = u64::MAX;
        let len = serde_json::to_vec(&Message::AlertBroadcast(b.clone())).unwrap().len();
        assert!(len <= MAX_PLAINTEXT, "{len}");
        assert!(b.message.ends_with(CUT_MARKER), "{b:?}");
        assert_eq!((b.user.as_str(), b.host.as_str()), ("alice", "desk-12"));
        let mut short = broadcast();
        short.fit_to_datagram();
        assert_eq!(short, broadcast());
    }

    fn sos() -> Sos {
        Sos {
            alert_id: AlertId::from_u128(7),
            test: false,
            triggered_at: 1_700_000_000,
            attempt: 0,
            user: "alice".into(),
            host: "desk-12".into(),
            ip: "10.0.0.12".into(),
            location: "Reception".into(),
            message: String::new(),
            agent: "sos-agent/0.1.0".into(),
        }
    }

    #[test]
    fn sanitize_removes_control_characters_but_keeps_message_lines() {
        let mut s = sos();
        s.user = "eve\nINFO forged".into();
        s.location = "Lab\u{1b}[31m\r".into();
        s.message = "line one\r\nline two\u{7}".into();
        s.sanitize();
        assert_eq!(s.user, "eve INFO forged");
        assert_eq!(s.location, "Lab [31m ");
        assert_eq!(s.message, "line one\nline two ");
        let clean = sos();
        let mut same = clean.clone();
        same.sanitize();
        assert_eq!(same, clean);
    }

    #[test]
    fn max_plaintext_is_the_largest_that_fits() {
        assert!(sealed_len(MAX_PLAINTEXT) <= MAX_DATAGRAM);
        assert!(sealed_len(MAX_PLAINTEXT + 1) > MAX_DATAGRAM);
        assert_eq!(sealed_len(0), HEADER_LEN + MIN_TOKEN_LEN);
    }

    #[test]
    fn long_fields_are_cut_to_fit() {
        let mut s = sos();
        s.message = "é".repeat(2000);
        s.location = "L".repeat(900);
        s.fit_to_datagram();
        let len = serde_json::to_vec(&Message::Sos(s.clone())).unwrap().len();
        assert!(len <= MAX_PLAINTEXT, "{len}");
        assert_eq!(s.user, "alice");
        assert_eq!(s.host, "desk-12");
        assert!(s.message.ends_with(CUT_MARKER) && s.location.ends_with(CUT_MARKER), "{s:?}");
    }

    #[test]
    fn a_fitted_sos_still_fits_with_the_longest_address_and_the_last_attempt() {
        // The bug this guards against: fitted with `ip` empty and `attempt` 0, an SOS grew past
        // the limit once they were filled in, and every seal failed.
        let mut s = sos();
        s.ip = String::new();
        s.message = "x".repeat(700);
        s.fit_to_datagram();
        assert!(s.message.ends_with(CUT_MARKER));
        s.ip = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".into();
        s.attempt = u32::MAX;
        let len = serde_json::to_vec(&Message::Sos(s)).unwrap().len();
        assert!(len <= MAX_PLAINTEXT, "{len}");
    }

    #[test]
    fn short_sos_is_untouched() {
        let mut s = sos();
        s.message = "help".into();
        let before = s.clone();
        s.fit_to_datagram();
        assert_eq!(s, before);
    }

    #[test]
    fn unknown_fields_and_missing_optionals_are_accepted() {
        let json = r#"{"kind":"sos","alert_id":"00000000000000000000000000000007",
                       "triggered_at":5,"pad":"xxxx","future_field":[1,2]}"#;
        let m: Message = serde_json::from_str(json).unwrap();
        match m {
            Message::Sos(s) => {
                assert_eq!(s.alert_id, AlertId::from_u128(7));
                assert!(s.user.is_empty() && !s.test && s.attempt == 0);
            }
            other => panic!("decoded as {other:?}"),
        }
    }

    #[test]
    fn split_checks_magic_version_and_size() {
        let mut d = header(KeyId([1; 8])).to_vec();
        d.extend(std::iter::repeat_n(b'A', MIN_TOKEN_LEN));
        assert_eq!(split_datagram(&d).unwrap().0, KeyId([1; 8]));
        let mut bad = d.clone();
        bad[0] = b'X';
        assert_eq!(split_datagram(&bad), Err(DecodeError::BadMagic));
        let mut bad = d.clone();
        bad[3] = 2;
        assert_eq!(split_datagram(&bad), Err(DecodeError::UnsupportedVersion(2)));
        assert!(matches!(split_datagram(&d[..50]), Err(DecodeError::TooShort(50))));
        let mut long = d.clone();
        long.resize(MAX_DATAGRAM + 1, b'A');
        assert!(matches!(split_datagram(&long), Err(DecodeError::TooLong(_))));
        let mut bad = d;
        bad[HEADER_LEN] = 0xff;
        assert_eq!(split_datagram(&bad), Err(DecodeError::TokenNotAscii));
    }
}
