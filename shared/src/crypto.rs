//! Keys, sealing and opening datagrams.
//!
//! Sealing uses the Fernet specification (AES-128-CBC + HMAC-SHA256, timestamped) through the
//! `fernet` crate. Opening verifies the HMAC first and only then applies our own time checks
//! (token age limit and future clock skew, both configurable), so that the clock difference of
//! a rejected token is known to come from a holder of the key and can be logged.

use std::fmt;

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::protocol::{self, KeyId, Message, HEADER_LEN, KEY_ID_LEN, MAX_DATAGRAM};

/// Domain separation for deriving a site key's id.
const KEY_ID_CONTEXT: &[u8] = b"SOS key id v1\0";

/// A Fernet key together with its key id.
///
/// The key material never appears in `Debug` output, logs or errors; only the id does.
#[derive(Clone)]
pub struct Key {
    fernet: fernet::Fernet,
    id: KeyId,
}

/// Why a text is not a usable key. Never contains the text itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not url-safe base64.
    #[error("the key is not url-safe base64 (a key looks like the output of `sos-collector keygen`)")]
    NotBase64,
    /// Decodes to the wrong number of bytes.
    #[error("the key decodes to {0} bytes; a Fernet key is 32 bytes (44 base64 characters)")]
    WrongLength(usize),
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Key {
    /// A new random key in its text form (url-safe base64 of 32 bytes), as `sos-collector
    /// keygen` prints it.
    pub fn generate() -> String {
        fernet::Fernet::generate_key()
    }

    /// Parse a key from its text form. Surrounding white space is ignored and the base64
    /// padding is optional. The key id is derived from the key (see `docs/PROTOCOL.md`).
    ///
    /// # Errors
    /// [`KeyError`] if the text is not base64 of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let trimmed = text.trim().trim_end_matches('=');
        let raw = URL_SAFE_NO_PAD.decode(trimmed).map_err(|_| KeyError::NotBase64)?;
        if raw.len() != 32 {
            return Err(KeyError::WrongLength(raw.len()));
        }
        let fernet = fernet::Fernet::new(&URL_SAFE.encode(&raw)).ok_or(KeyError::NotBase64)?;
        let digest = Sha256::new().chain_update(KEY_ID_CONTEXT).chain_update(&raw).finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Ok(Key { fernet, id: KeyId(id) })
    }

    /// The id sent in clear in every datagram this key seals.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Seal `message` into a datagram stamped with `now` (seconds since the Unix epoch).
    ///
    /// # Errors
    /// [`SealError::TooLarge`] if the datagram would exceed [`MAX_DATAGRAM`]; an SOS is kept
    /// within the limit by [`protocol::Sos::fit_to_datagram`].
    pub fn seal(&self, message: &Message, now: u64) -> Result<Vec<u8>, SealError> {
        let plaintext = serde_json::to_vec(message).map_err(|e| SealError::Encode(e.to_string()))?;
        let len = protocol::sealed_len(plaintext.len());
        if len > MAX_DATAGRAM {
            return Err(SealError::TooLarge(len));
        }
        let token = self.fernet.encrypt_at_time(&plaintext, now);
        let mut datagram = Vec::with_capacity(HEADER_LEN + token.len());
        datagram.extend_from_slice(&protocol::header(self.id));
        datagram.extend_from_slice(token.as_bytes());
        debug_assert_eq!(datagram.len(), len);
        Ok(datagram)
    }

    /// Open a token (the part of a datagram after the header) at time `now`.
    ///
    /// # Errors
    /// - [`OpenError::Unauthenticated`] if the token was not sealed with this key or was altered;
    /// - [`OpenError::Expired`] / [`OpenError::FromFuture`] if it is authentic but its timestamp
    ///   is outside `window`;
    /// - [`OpenError::BadPayload`] if it is authentic but not a v1 message.
    pub fn open(&self, token: &str, now: u64, window: TimeWindow) -> Result<Opened, OpenError> {
        let (plaintext, timestamp) = self.open_raw(token, now, window)?;
        let message = serde_json::from_slice(&plaintext).map_err(|e| OpenError::BadPayload(e.to_string()))?;
        Ok(Opened { message, timestamp })
    }

    /// Verify and decrypt a token, then apply the time checks; the plaintext and timestamp.
    fn open_raw(&self, token: &str, now: u64, window: TimeWindow) -> Result<(Vec<u8>, u64), OpenError> {
        // Time checks are disabled here (no TTL, "now" at the far end of time) so that the
        // HMAC decides first; ours follow with saturating arithmetic.
        let plaintext =
            self.fernet.decrypt_at_time(token, None, u64::MAX - 60).map_err(|_| OpenError::Unauthenticated)?;
        let timestamp = token_timestamp(token).ok_or(OpenError::Unauthenticated)?;
        if timestamp > now.saturating_add(window.max_future_skew_secs) {
            return Err(OpenError::FromFuture { ahead_secs: timestamp - now });
        }
        if now > timestamp.saturating_add(window.ttl_secs) {
            return Err(OpenError::Expired { age_secs: now - timestamp });
        }
        Ok((plaintext, timestamp))
    }

    /// A bare Fernet token of `plaintext` (no datagram header), for enrollment.
    pub(crate) fn seal_bytes(&self, plaintext: &[u8], now: u64) -> String {
        self.fernet.encrypt_at_time(plaintext, now)
    }

    /// Open a bare Fernet token sealed by [`Self::seal_bytes`].
    pub(crate) fn open_bytes(&self, token: &str, now: u64, window: TimeWindow) -> Result<Vec<u8>, OpenError> {
        self.open_raw(token, now, window).map(|(p, _)| p)
    }
}

/// The timestamp of a Fernet token: bytes 1..9 of the decoded token, which the first 12
/// base64 characters hold exactly.
fn token_timestamp(token: &str) -> Option<u64> {
    let head = URL_SAFE.decode(token.get(..12)?).ok()?;
    Some(u64::from_be_bytes(head.get(1..9)?.try_into().ok()?))
}

/// How old or how far ahead a token may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    /// Token age limit: older tokens are rejected as possible replays.
    pub ttl_secs: u64,
    /// How far the sender's clock may be ahead of ours.
    pub max_future_skew_secs: u64,
}

impl Default for TimeWindow {
    fn default() -> Self {
        TimeWindow {
            ttl_secs: protocol::DEFAULT_TOKEN_TTL_SECS,
            max_future_skew_secs: protocol::DEFAULT_MAX_FUTURE_SKEW_SECS,
        }
    }
}

/// An authentic message and the time it was sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The message.
    pub message: Message,
    /// The token's timestamp, seconds since the Unix epoch, by the sender's clock.
    pub timestamp: u64,
}

/// Why a message could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The datagram would be this many bytes, over [`MAX_DATAGRAM`].
    #[error("the sealed datagram would be {0} bytes, over the {MAX_DATAGRAM}-byte limit")]
    TooLarge(usize),
    /// The message could not be encoded as JSON.
    #[error("cannot encode the message: {0}")]
    Encode(String),
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not sealed with this key, or altered on the way.
    #[error("token is not authentic for this key")]
    Unauthenticated,
    /// Authentic but older than the token age limit: a replay or a sender clock behind ours.
    #[error("token is {age_secs} s old, over the age limit (replay, or the sender's clock is behind)")]
    Expired {
        /// How far the token's timestamp is behind our clock.
        age_secs: u64,
    },
    /// Authentic but dated in the future beyond the skew limit: the sender's clock is ahead.
    #[error("token is dated {ahead_secs} s in the future (the sender's clock is ahead)")]
    FromFuture {
        /// How far the token's timestamp is ahead of our clock.
        ahead_secs: u64,
    },
    /// Authentic but not a protocol v1 message.
    #[error("authentic token with an invalid message: {0}")]
    BadPayload(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{split_datagram, Cancel};
    use crate::AlertId;

    const T: u64 = 1_700_000_000;

    fn msg() -> Message {
        Message::Cancel(Cancel {
            alert_id: AlertId::from_u128(42),
            reason: "pressed by accident".into(),
            pad: String::new(),
        })
    }

    fn key() -> Key {
        Key::from_base64(&Key::generate()).unwrap()
    }

    #[test]
    fn seal_then_open_round_trips() {
        let k = key();
        let d = k.seal(&msg(), T).unwrap();
        let (id, token) = split_datagram(&d).unwrap();
        assert_eq!(id, k.id());
        let opened = k.open(token, T + 1, TimeWindow::default()).unwrap();
        assert_eq!(opened.message, msg());
        assert_eq!(opened.timestamp, T);
    }

    #[test]
    fn another_key_cannot_open() {
        let d = key().seal(&msg(), T).unwrap();
        let (_, token) = split_datagram(&d).unwrap();
        assert_eq!(key().open(token, T, TimeWindow::default()), Err(OpenError::Unauthenticated));
    }

    #[test]
    fn time_window_is_enforced_with_the_difference() {
        let k = key();
        let w = TimeWindow { ttl_secs: 100, max_future_skew_secs: 10 };
        let d = k.seal(&msg(), T).unwrap();
        let (_, token) = split_datagram(&d).unwrap();
        assert!(k.open(token, T + 100, w).is_ok());
        assert_eq!(k.open(token, T + 101, w), Err(OpenError::Expired { age_secs: 101 }));
        assert!(k.open(token, T - 10, w).is_ok());
        assert_eq!(k.open(token, T - 11, w), Err(OpenError::FromFuture { ahead_secs: 11 }));
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        let k = key();
        for t in [0, u64::MAX, u64::MAX - 1] {
            let d = k.seal(&msg(), t).unwrap();
            let (_, token) = split_datagram(&d).unwrap();
            assert!(k.open(token, T, TimeWindow::default()).is_err());
            let w = TimeWindow { ttl_secs: u64::MAX, max_future_skew_secs: u64::MAX };
            assert!(k.open(token, T, w).is_ok());
        }
    }

    #[test]
    fn key_parsing_is_lenient_about_padding_and_space_and_says_what_is_wrong() {
        let text = Key::generate();
        let a = Key::from_base64(&text).unwrap();
        let b = Key::from_base64(&format!("  {}\n", text.trim_end_matches('='))).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(Key::from_base64("not base64!").unwrap_err(), KeyError::NotBase64);
        assert_eq!(Key::from_base64("AAAA").unwrap_err(), KeyError::WrongLength(3));
        assert!(!format!("{a:?}").contains(text.trim_end_matches('=')));
    }

    #[test]
    fn every_byte_flip_is_rejected() {
        let k = key();
        let d = k.seal(&msg(), T).unwrap();
        for i in 0..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 0x01;
            let ok = split_datagram(&bad)
                .ok()
                .and_then(|(id, tok)| (id == k.id()).then(|| k.open(tok, T, TimeWindow::default())))
                .is_some_and(|r| r.is_ok());
            // Flipping the low bit of the last base64 character before '=' padding can leave
            // the decoded bytes unchanged; everything else must fail.
            if ok {
                assert!(
                    d[i..].iter().all(|&c| c == b'=') || d[i + 1..].iter().all(|&c| c == b'='),
                    "flip at {i} accepted"
                );
            }
        }
    }
}
