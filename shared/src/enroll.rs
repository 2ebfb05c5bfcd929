//! Enrollment by one-time code: how an agent gets its own key from a code a person reads out.
//!
//! `sos-collector enroll --name NAME` makes a code such as `K7QF-9M2P-XR4C`: the first four
//! characters name the pending enrollment (sent in clear, so the collector finds it), the last
//! eight are a 40-bit secret that never crosses the wire. The two sides run SPAKE2 (RustCrypto's
//! `spake2`, Ed25519 group) with the secret as password, so a captured exchange lets nobody test
//! guesses offline; every online guess costs the attacker one of the few attempts a code has.
//!
//! ```text
//! agent                                             collector
//!   enroll_start    {enrollment, pake: X}        →    looks the code up, counts an attempt
//!                   ←  enroll_challenge {enrollment, pake: Y, confirm: MAC_c}
//!   checks MAC_c (a wrong code fails here)
//!   enroll_finish   {enrollment, host, confirm: MAC_a} →  checks MAC_a, registers the agent
//!                   ←  enroll_done {enrollment, sealed: Fernet(K_wrap, {agent_id, name, key})}
//! ```
//!
//! All four travel as datagrams with the usual header and the reserved key id
//! [`ENROLL_KEY_ID`] (all zero); their body is compact JSON (printable ASCII). Requests are
//! padded to [`ENROLL_REQUEST_LEN`] bytes so that no answer is larger than its request.
//! `docs/PROTOCOL.md` § Enrollment is the normative description, with the key schedule.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};

use crate::protocol::{self, KeyId, HEADER_LEN, KEY_ID_LEN};
use crate::Key;

/// The key id of enrollment datagrams: all zero. No key is ever given this id.
pub const ENROLL_KEY_ID: KeyId = KeyId([0; KEY_ID_LEN]);
/// Every enrollment request (start and finish) is padded to this many bytes, so that the
/// answers, the largest of which is `enroll_done`, are never larger than their request.
pub const ENROLL_REQUEST_LEN: usize = 900;
/// The longest enrolled name, in bytes (UTF-8).
pub const MAX_NAME_LEN: usize = 120;
/// The longest host name an agent reports when it enrolls, in bytes.
pub const MAX_HOST_LEN: usize = 120;
/// Characters of a code: Crockford's base 32 (no I, L, O, U), read aloud without ambiguity.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters that name the enrollment; sent in clear.
const ID_CHARS: usize = 4;
/// Characters of the secret (40 bits); never sent.
const SECRET_CHARS: usize = 8;

/// A one-time enrollment code.
#[derive(Clone, PartialEq, Eq)]
pub struct Code {
    id: String,
    secret: String,
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Code").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Shown to the person who types it: `K7QF-9M2P-XR4C`.
impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.id, &self.secret[..4], &self.secret[4..])
    }
}

/// Why a text is not a code. Never contains the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Wrong number of characters once dashes and spaces are removed.
    #[error("an enrollment code has {expected} characters (like K7QF-9M2P-XR4C); this one has {0}", expected = ID_CHARS + SECRET_CHARS)]
    Length(usize),
    /// A character outside the code alphabet.
    #[error("an enrollment code has only digits and the letters A-Z without I, L, O and U")]
    Character,
}

impl Code {
    /// A new random code.
    pub fn generate() -> Code {
        let mut raw = [0u8; ID_CHARS + SECRET_CHARS];
        getrandom::getrandom(&mut raw).expect("the operating system's random source failed");
        let text: String = raw.iter().map(|b| ALPHABET[usize::from(b & 31)] as char).collect();
        Code { id: text[..ID_CHARS].to_owned(), secret: text[ID_CHARS..].to_owned() }
    }

    /// Parse what a person typed: case, dashes and spaces do not matter, and the letters
    /// O, I and L read as 0, 1 and 1.
    ///
    /// # Errors
    /// [`CodeError`] if it cannot be a code.
    pub fn parse(text: &str) -> Result<Code, CodeError> {
        let mut s = String::new();
        for c in text.chars().filter(|c| *c != '-' && !c.is_whitespace()) {
            let c = match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            };
            if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) {
                return Err(CodeError::Character);
            }
            s.push(c);
        }
        if s.len() != ID_CHARS + SECRET_CHARS {
            return Err(CodeError::Length(s.len()));
        }
        Ok(Code { id: s[..ID_CHARS].to_owned(), secret: s[ID_CHARS..].to_owned() })
    }

    /// A code from the parts the collector stores.
    pub fn from_parts(id: &str, secret: &str) -> Result<Code, CodeError> {
        Code::parse(&format!("{id}{secret}"))
    }

    /// The part sent in clear that names the enrollment.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret part (for the collector's store only).
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

/// Whether `id` looks like the enrollment part of a code (what the collector accepts before
/// any lookup).
pub fn is_enrollment_id(id: &str) -> bool {
    id.len() == ID_CHARS && id.bytes().all(|b| ALPHABET.contains(&b))
}

/// What an enrolled agent receives: its identity and its own key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolledKey {
    /// The agent's id in the collector's registry (16 hex digits).
    pub agent_id: String,
    /// The name the administrator enrolled it under.
    pub name: String,
    /// The agent's Fernet key, url-safe base64.
    pub key: String,
}

impl fmt::Debug for EnrolledKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrolledKey")
            .field("agent_id", &self.agent_id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The body of an enrollment datagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EnrollMessage {
    /// Agent → collector: the agent's SPAKE2 message.
    EnrollStart {
        /// The enrollment part of the code.
        enrollment: String,
        /// SPAKE2 message X, base64url without padding.
        pake: String,
        /// Filler up to [`ENROLL_REQUEST_LEN`].
        #[serde(default)]
        pad: String,
    },
    /// Collector → agent: its SPAKE2 message and proof that it knows the code.
    EnrollChallenge {
        /// The enrollment part of the code.
        enrollment: String,
        /// SPAKE2 message Y, base64url without padding.
        pake: String,
        /// HMAC-SHA256(K_c, "challenge" ‖ enrollment), base64url without padding.
        confirm: String,
    },
    /// Agent → collector: proof that the agent knows the code, and its host name.
    EnrollFinish {
        /// The enrollment part of the code.
        enrollment: String,
        /// The agent's host name, base64url without padding (UTF-8, at most 120 bytes).
        host: String,
        /// HMAC-SHA256(K_a, "finish" ‖ enrollment ‖ host bytes), base64url without padding.
        confirm: String,
        /// Filler up to [`ENROLL_REQUEST_LEN`].
        #[serde(default)]
        pad: String,
    },
    /// Collector → agent: the agent's key, sealed with K_wrap.
    EnrollDone {
        /// The enrollment part of the code.
        enrollment: String,
        /// A Fernet token under K_wrap whose plaintext is the JSON of [`EnrolledKey`].
        sealed: String,
    },
}

impl EnrollMessage {
    /// The enrollment it is about.
    pub fn enrollment(&self) -> &str {
        match self {
            EnrollMessage::EnrollStart { enrollment, .. }
            | EnrollMessage::EnrollChallenge { enrollment, .. }
            | EnrollMessage::EnrollFinish { enrollment, .. }
            | EnrollMessage::EnrollDone { enrollment, .. } => enrollment,
        }
    }

    /// Encode as a datagram; requests are padded to [`ENROLL_REQUEST_LEN`].
    pub fn to_datagram(&self) -> Vec<u8> {
        let mut msg = self.clone();
        let body = serde_json::to_vec(&msg).expect("enrollment messages always encode");
        let fill = ENROLL_REQUEST_LEN.saturating_sub(HEADER_LEN + body.len());
        if let EnrollMessage::EnrollStart { pad, .. } | EnrollMessage::EnrollFinish { pad, .. } = &mut msg {
            *pad = "0".repeat(fill);
        }
        let body = serde_json::to_vec(&msg).expect("enrollment messages always encode");
        let mut d = protocol::header(ENROLL_KEY_ID).to_vec();
        d.extend_from_slice(&body);
        d
    }

    /// Decode the body of an enrollment datagram (the part after the header).
    ///
    /// # Errors
    /// [`EnrollError::Malformed`] on anything that is not an enrollment message.
    pub fn from_body(body: &str) -> Result<Self, EnrollError> {
        let m: EnrollMessage = serde_json::from_str(body).map_err(|_| EnrollError::Malformed)?;
        if !is_enrollment_id(m.enrollment()) {
            return Err(EnrollError::Malformed);
        }
        Ok(m)
    }
}

/// Why an enrollment step failed. Never contains secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollError {
    /// Not a well-formed enrollment message.
    #[error("not a well-formed enrollment message")]
    Malformed,
    /// The other side does not know the same code (or the exchange was tampered with).
    #[error("the code does not match: mistyped, or not the code this collector issued")]
    WrongCode,
}

/// The keys both sides derive from the SPAKE2 secret.
struct SessionKeys {
    confirm_collector: [u8; 32],
    confirm_agent: [u8; 32],
    wrap: Key,
}

impl SessionKeys {
    fn derive(shared: &[u8]) -> SessionKeys {
        let sub = |label: &[u8]| -> [u8; 32] {
            Sha256::new().chain_update(b"SOS enroll v1 ").chain_update(label).chain_update(shared).finalize().into()
        };
        let wrap = Key::from_base64(&URL_SAFE_NO_PAD.encode(sub(b"wrap"))).expect("32 bytes make a key");
        SessionKeys { confirm_collector: sub(b"collector"), confirm_agent: sub(b"agent"), wrap }
    }
}

fn mac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn verify(key: &[u8; 32], parts: &[&[u8]], tag_b64: &str) -> bool {
    let Ok(tag) = URL_SAFE_NO_PAD.decode(tag_b64) else { return false };
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.verify_slice(&tag).is_ok()
}

fn pake_identities(enrollment: &str) -> (Identity, Identity) {
    (
        Identity::new(format!("sos-agent {enrollment}").as_bytes()),
        Identity::new(format!("sos-collector {enrollment}").as_bytes()),
    )
}

/// The agent's side, after sending `enroll_start`.
pub struct AgentHandshake {
    pake: Spake2<Ed25519Group>,
    enrollment: String,
}

impl fmt::Debug for AgentHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentHandshake").field("enrollment", &self.enrollment).finish_non_exhaustive()
    }
}

impl AgentHandshake {
    /// Begin: the handshake and the `enroll_start` datagram to send (and resend, unchanged,
    /// until a challenge comes).
    pub fn start(code: &Code) -> (AgentHandshake, Vec<u8>) {
        let (id_a, id_b) = pake_identities(&code.id);
        let (pake, x) = Spake2::<Ed25519Group>::start_a(&Password::new(code.secret.as_bytes()), &id_a, &id_b);
        let msg = EnrollMessage::EnrollStart {
            enrollment: code.id.clone(),
            pake: URL_SAFE_NO_PAD.encode(x),
            pad: String::new(),
        };
        (AgentHandshake { pake, enrollment: code.id.clone() }, msg.to_datagram())
    }

    /// The enrollment part of the code.
    pub fn enrollment(&self) -> &str {
        &self.enrollment
    }

    /// Take the collector's challenge: check that the collector knows the code, and return the
    /// session and the `enroll_finish` datagram (resent, unchanged, until the key comes).
    ///
    /// # Errors
    /// [`EnrollError::WrongCode`] if the collector's proof does not match (a mistyped code),
    /// [`EnrollError::Malformed`] if `message` is not a challenge for this enrollment.
    pub fn on_challenge(self, message: &EnrollMessage, host: &str) -> Result<(AgentSession, Vec<u8>), EnrollError> {
        let EnrollMessage::EnrollChallenge { enrollment, pake, confirm } = message else {
            return Err(EnrollError::Malformed);
        };
        if *enrollment != self.enrollment {
            return Err(EnrollError::Malformed);
        }
        let y = URL_SAFE_NO_PAD.decode(pake).map_err(|_| EnrollError::Malformed)?;
        let shared = self.pake.finish(&y).map_err(|_| EnrollError::Malformed)?;
        let keys = SessionKeys::derive(&shared);
        if !verify(&keys.confirm_collector, &[b"challenge", enrollment.as_bytes()], confirm) {
            return Err(EnrollError::WrongCode);
        }
        let host: String = truncate_utf8(host, MAX_HOST_LEN);
        let confirm =
            URL_SAFE_NO_PAD.encode(mac(&keys.confirm_agent, &[b"finish", enrollment.as_bytes(), host.as_bytes()]));
        let finish = EnrollMessage::EnrollFinish {
            enrollment: enrollment.clone(),
            host: URL_SAFE_NO_PAD.encode(host.as_bytes()),
            confirm,
            pad: String::new(),
        };
        Ok((AgentSession { keys, enrollment: enrollment.clone() }, finish.to_datagram()))
    }
}

/// The agent's side once the collector proved it knows the code.
pub struct AgentSession {
    keys: SessionKeys,
    enrollment: String,
}

impl fmt::Debug for AgentSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentSession").field("enrollment", &self.enrollment).finish_non_exhaustive()
    }
}

impl AgentSession {
    /// Open `enroll_done`: the agent's key.
    ///
    /// # Errors
    /// [`EnrollError::Malformed`] unless it is an authentic `enroll_done` for this session.
    pub fn on_done(&self, message: &EnrollMessage) -> Result<EnrolledKey, EnrollError> {
        let EnrollMessage::EnrollDone { enrollment, sealed } = message else { return Err(EnrollError::Malformed) };
        if *enrollment != self.enrollment {
            return Err(EnrollError::Malformed);
        }
        let window = crate::TimeWindow { ttl_secs: u64::MAX, max_future_skew_secs: u64::MAX };
        let plain = self.keys.wrap.open_bytes(sealed, crate::unix_now(), window).map_err(|_| EnrollError::Malformed)?;
        let key: EnrolledKey = serde_json::from_slice(&plain).map_err(|_| EnrollError::Malformed)?;
        Key::from_base64(&key.key).map_err(|_| EnrollError::Malformed)?;
        Ok(key)
    }
}

/// The collector's side of one enrollment attempt.
pub struct CollectorSession {
    keys: SessionKeys,
    enrollment: String,
    /// The agent's SPAKE2 message, to recognise a retransmitted `enroll_start`.
    pub start_pake: String,
    /// The `enroll_challenge` datagram, resent unchanged for a retransmitted start.
    pub challenge: Vec<u8>,
}

impl fmt::Debug for CollectorSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectorSession").field("enrollment", &self.enrollment).finish_non_exhaustive()
    }
}

impl CollectorSession {
    /// Answer an `enroll_start` for the pending enrollment whose code is `code`.
    ///
    /// # Errors
    /// [`EnrollError::Malformed`] if `start` is not a usable start for this code.
    pub fn answer(code: &Code, start: &EnrollMessage) -> Result<CollectorSession, EnrollError> {
        let EnrollMessage::EnrollStart { enrollment, pake, .. } = start else { return Err(EnrollError::Malformed) };
        if *enrollment != code.id {
            return Err(EnrollError::Malformed);
        }
        let x = URL_SAFE_NO_PAD.decode(pake).map_err(|_| EnrollError::Malformed)?;
        let (id_a, id_b) = pake_identities(&code.id);
        let (spake, y) = Spake2::<Ed25519Group>::start_b(&Password::new(code.secret.as_bytes()), &id_a, &id_b);
        let shared = spake.finish(&x).map_err(|_| EnrollError::Malformed)?;
        let keys = SessionKeys::derive(&shared);
        let confirm = URL_SAFE_NO_PAD.encode(mac(&keys.confirm_collector, &[b"challenge", enrollment.as_bytes()]));
        let challenge =
            EnrollMessage::EnrollChallenge { enrollment: enrollment.clone(), pake: URL_SAFE_NO_PAD.encode(y), confirm }
                .to_datagram();
        Ok(CollectorSession { keys, enrollment: enrollment.clone(), start_pake: pake.clone(), challenge })
    }

    /// Check an `enroll_finish`: the agent's proof that it knows the code. Returns the host
    /// name it reported.
    ///
    /// # Errors
    /// [`EnrollError::WrongCode`] if the proof does not match, [`EnrollError::Malformed`] if it
    /// is not a finish for this session.
    pub fn on_finish(&self, finish: &EnrollMessage) -> Result<String, EnrollError> {
        let EnrollMessage::EnrollFinish { enrollment, host, confirm, .. } = finish else {
            return Err(EnrollError::Malformed);
        };
        if *enrollment != self.enrollment {
            return Err(EnrollError::Malformed);
        }
        let host = URL_SAFE_NO_PAD.decode(host).map_err(|_| EnrollError::Malformed)?;
        if !verify(&self.keys.confirm_agent, &[b"finish", enrollment.as_bytes(), &host], confirm) {
            return Err(EnrollError::WrongCode);
        }
        let host = String::from_utf8(host).map_err(|_| EnrollError::Malformed)?;
        if host.len() > MAX_HOST_LEN {
            return Err(EnrollError::Malformed);
        }
        Ok(host.chars().map(|c| if c.is_control() { ' ' } else { c }).collect())
    }

    /// The `enroll_done` datagram carrying `key`, sealed for this session only.
    pub fn done(&self, key: &EnrolledKey) -> Vec<u8> {
        let plain = serde_json::to_vec(key).expect("an enrolled key always encodes");
        let sealed = self.keys.wrap.seal_bytes(&plain, crate::unix_now());
        EnrollMessage::EnrollDone { enrollment: self.enrollment.clone(), sealed }.to_datagram()
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::split_datagram;

    fn body(d: &[u8]) -> EnrollMessage {
        let (id, token) = split_datagram(d).unwrap();
        assert_eq!(id, ENROLL_KEY_ID);
        EnrollMessage::from_body(token).unwrap()
    }

    fn enrolled() -> EnrolledKey {
        EnrolledKey {
            agent_id: "0123456789abcdef".into(), name: "Reception — desk 3".repeat(6), key: Key::generate()
        }
    }

    #[test]
    fn codes_print_and_parse_forgivingly() {
        let c = Code::generate();
        let shown = c.to_string();
        assert_eq!(shown.len(), 14);
        assert_eq!(Code::parse(&shown).unwrap(), c);
        assert_eq!(Code::parse(&shown.to_lowercase().replace('-', " ")).unwrap(), c);
        assert_eq!(Code::parse("oooo-iiii-llll").unwrap().to_string(), "0000-1111-1111");
        assert_eq!(Code::parse("ABCD-EFGH").unwrap_err(), CodeError::Length(8));
        assert_eq!(Code::parse("ABCD-EFGH-JKM!").unwrap_err(), CodeError::Character);
        assert!(!format!("{c:?}").contains(c.secret()));
    }

    #[test]
    fn the_right_code_yields_the_key_and_every_message_fits_its_request() {
        let code = Code::generate();
        let (agent, start) = AgentHandshake::start(&code);
        assert_eq!(start.len(), ENROLL_REQUEST_LEN);
        let session = CollectorSession::answer(&code, &body(&start)).unwrap();
        assert!(session.challenge.len() <= start.len());
        let (agent, finish) = agent.on_challenge(&body(&session.challenge), "desk-3").unwrap();
        assert_eq!(finish.len(), ENROLL_REQUEST_LEN);
        assert_eq!(session.on_finish(&body(&finish)).unwrap(), "desk-3");
        let key = enrolled();
        let done = session.done(&key);
        assert!(done.len() <= finish.len(), "{} > {}", done.len(), finish.len());
        assert_eq!(agent.on_done(&body(&done)).unwrap(), key);
    }

    #[test]
    fn a_wrong_code_is_caught_on_both_sides_and_learns_nothing() {
        let code = Code::generate();
        let wrong = Code::from_parts(code.id(), "00000000").unwrap();
        // The agent typed it wrong: the collector's challenge does not verify.
        let (agent, start) = AgentHandshake::start(&wrong);
        let session = CollectorSession::answer(&code, &body(&start)).unwrap();
        assert_eq!(agent.on_challenge(&body(&session.challenge), "h").unwrap_err(), EnrollError::WrongCode);
        // An attacker who skips the check: its finish does not verify at the collector.
        let (attacker, start) = AgentHandshake::start(&wrong);
        let session = CollectorSession::answer(&code, &body(&start)).unwrap();
        let EnrollMessage::EnrollChallenge { enrollment, pake, .. } = body(&session.challenge) else { panic!() };
        let y = URL_SAFE_NO_PAD.decode(pake).unwrap();
        let keys = SessionKeys::derive(&attacker.pake.finish(&y).unwrap());
        let forged = EnrollMessage::EnrollFinish {
            host: URL_SAFE_NO_PAD.encode("h"),
            confirm: URL_SAFE_NO_PAD.encode(mac(&keys.confirm_agent, &[b"finish", enrollment.as_bytes(), b"h"])),
            enrollment,
            pad: String::new(),
        };
        assert_eq!(session.on_finish(&forged).unwrap_err(), EnrollError::WrongCode);
    }

    #[test]
    fn the_host_is_bound_to_the_proof() {
        let code = Code::generate();
        let (agent, start) = AgentHandshake::start(&code);
        let session = CollectorSession::answer(&code, &body(&start)).unwrap();
        let (_, finish) = agent.on_challenge(&body(&session.challenge), "desk-3").unwrap();
        let EnrollMessage::EnrollFinish { enrollment, confirm, pad, .. } = body(&finish) else { panic!() };
        let changed = EnrollMessage::EnrollFinish { enrollment, host: URL_SAFE_NO_PAD.encode("desk-9"), confirm, pad };
        assert_eq!(session.on_finish(&changed).unwrap_err(), EnrollError::WrongCode);
    }

    #[test]
    fn garbage_bodies_are_malformed_not_panics() {
        for b in [
            "",
            "{}",
            "{\"kind\":\"enroll_start\"}",
            "{\"kind\":\"enroll_start\",\"enrollment\":\"abcd\",\"pake\":\"x\"}",
        ] {
            assert_eq!(EnrollMessage::from_body(b).unwrap_err(), EnrollError::Malformed, "{b}");
        }
        let code = Code::generate();
        let start =
            EnrollMessage::EnrollStart { enrollment: code.id().into(), pake: "AAAA".into(), pad: String::new() };
        assert!(CollectorSession::answer(&code, &start).is_err());
    }
}
