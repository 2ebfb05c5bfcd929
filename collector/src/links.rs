//! Signed acknowledge links (issue 17 §4): a Slack post or an email about an alert carries a
//! link to that alert's acknowledge page, `{public_url}/ack/{token}`.
//!
//! Whoever holds the link may acknowledge the alert (docs/SECURITY.md, "Acknowledge links"),
//! so a link is:
//! - signed: HMAC-SHA256 under a 32-byte key kept next to the store (`ack-link.key`, mode
//!   0600, made on first start, never logged), over the alert, the channel it was sent
//!   through, its expiry and a random nonce. Nothing else can mint one.
//! - expiring: `[http] ack_link_ttl_secs` after it was made (default 24 h).
//! - single-use: the console records the nonce in the store in the same transaction as the
//!   acknowledgement (`store/console.rs`), so a second use changes nothing.
//!
//! The token is `base64url(version ‖ alert ‖ expiry ‖ nonce ‖ channel ‖ mac)`, without padding;
//! it is about 110 characters. Verification is constant-time in the MAC.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use secrecy::{ExposeSecret as _, SecretBox};
use sha2::Sha256;
use sos_shared::AlertId;

use crate::config::Config;

/// The key file's name in the data dir.
pub const KEY_FILE: &str = "ack-link.key";

/// How long a link stays valid unless `[http] ack_link_ttl_secs` says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The longest token [`AckLinks::verify`] looks at, in characters: anything longer is refused
/// before it is decoded.
pub const MAX_TOKEN_LEN: usize = 256;

/// The longest channel name a link carries.
const MAX_CHANNEL_LEN: usize = 32;
/// The token format's version, its first byte.
const VERSION: u8 = 1;
/// Version, alert, expiry, nonce.
const HEAD_LEN: usize = 1 + 16 + 8 + 16;
/// HMAC-SHA256.
const MAC_LEN: usize = 32;
/// Domain separation: this key signs nothing else, but a MAC over bare bytes could be confused
/// with one of another format if the key were ever reused.
const DOMAIN: &[u8] = b"sos ack link\0";

type HmacSha256 = Hmac<Sha256>;

/// Makes and checks acknowledge links. Cheap to clone (the key is shared); its `Debug` shows
/// the public URL and the expiry, never the key.
#[derive(Clone)]
pub struct AckLinks {
    /// Where responders reach the console (`[http] public_url`), without a trailing slash.
    public_url: Arc<str>,
    /// The HMAC key, zeroed when the last clone is dropped.
    key: Arc<SecretBox<[u8; 32]>>,
    /// How long a link is valid after it was made.
    ttl: Duration,
}

impl std::fmt::Debug for AckLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckLinks")
            .field("public_url", &self.public_url)
            .field("key", &"[redacted]")
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Why the link key could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("acknowledge link key {}: {message}", path.display())]
pub struct KeyError {
    /// The key file.
    pub path: PathBuf,
    /// What went wrong (never the key).
    pub message: String,
}

/// Why a token is refused. What the page says; nothing about the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedLink {
    /// Not a token this collector makes (wrong length, not base64url, unknown version, bad
    /// channel name).
    #[error("this is not an acknowledge link")]
    Malformed,
    /// Well formed, but the signature does not match: altered, or made with another key.
    #[error("this link's signature does not match: it was altered or is not from this collector")]
    Forged,
    /// Authentic but past its expiry.
    #[error("this link expired")]
    Expired {
        /// When it expired.
        at: SystemTime,
    },
}

/// A verified token: what the link is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckToken {
    /// The alert to acknowledge.
    pub alert: AlertId,
    /// The channel whose message carried the link (`slack`, `email`…).
    pub channel: String,
    /// When the link stops working.
    pub expires: SystemTime,
    /// Random, unique per link: what the store records when the link is used.
    pub nonce: [u8; 16],
}

impl AckToken {
    /// The nonce as 32 hexadecimal digits, as the store keeps it.
    pub fn nonce_hex(&self) -> String {
        self.nonce.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl AckLinks {
    /// Links for this configuration on `store`: on PostgreSQL the key is the one every collector
    /// on the database shares (the first one makes it), so that a link in a message sent by one
    /// collector works on every collector's console; on SQLite, [`AckLinks::from_config`].
    ///
    /// # Errors
    /// As [`AckLinks::from_config`]; on PostgreSQL, if the database cannot be reached.
    pub async fn from_config_on(config: &Config, store: &crate::store::Store) -> Result<Option<Self>, KeyError> {
        let Some(pg) = store.as_postgres() else { return AckLinks::from_config(config) };
        let Some(http) = config.http.as_ref().filter(|h| h.links) else { return Ok(None) };
        let err = |message: String| KeyError { path: "the PostgreSQL store (table shared_keys)".into(), message };
        let mut fresh = [0u8; 32];
        getrandom::getrandom(&mut fresh).map_err(|e| err(format!("no random source: {e}")))?;
        let key = pg.shared_key(KEY_FILE, fresh).await.map_err(|e| err(e.to_string()))?;
        Ok(Some(AckLinks::new(&http.public_url, key, http.ack_link_ttl)))
    }

    /// Links under `public_url`, signed with `key`, valid for `ttl`.
    pub fn new(public_url: &str, key: [u8; 32], ttl: Duration) -> Self {
        AckLinks {
            public_url: public_url.trim_end_matches('/').into(),
            key: Arc::new(SecretBox::new(Box::new(key))),
            ttl,
        }
    }

    /// Links for this configuration: `None` unless `[http] public_url` is set (without it
    /// nobody outside this host could open them). The key is `data_dir/ack-link.key`, made
    /// (mode 0600) if it does not exist.
    ///
    /// # Errors
    /// If the key file cannot be made or read, is readable by others, or is not a key.
    pub fn from_config(config: &Config) -> Result<Option<Self>, KeyError> {
        let Some(http) = config.http.as_ref().filter(|h| h.links) else { return Ok(None) };
        AckLinks::open(&config.data_dir, &http.public_url, http.ack_link_ttl).map(Some)
    }

    /// Links under `public_url`, valid for `ttl`, signed with the key of the data dir `dir`
    /// (`ack-link.key`, made if it does not exist).
    ///
    /// # Errors
    /// As [`AckLinks::from_config`].
    pub fn open(dir: &Path, public_url: &str, ttl: Duration) -> Result<Self, KeyError> {
        Ok(AckLinks::new(public_url, load_or_make_key(dir)?, ttl))
    }

    /// How long a link is valid after it was made.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The link for `alert` in a message of `channel` (e.g. "slack"): signed, expiring
    /// [`AckLinks::ttl`] from now, single-use. `{public_url}/ack/{token}`.
    pub fn url(&self, alert: &AlertId, channel: &str) -> String {
        self.url_at(alert, channel, SystemTime::now())
    }

    /// The link to put in a message of `channel` about `alert`, if the message asks someone to
    /// act: a new alert, an escalation, a reminder (not an acknowledgement, a resolution or a
    /// cancellation).
    pub fn for_alert(&self, alert: &crate::store::AlertRecord, channel: &str) -> Option<String> {
        let asks = alert.cancellation.is_none()
            && matches!(alert.update, None | Some(crate::store::AlertUpdate::Reminder { .. }));
        asks.then(|| self.url(&alert.alert_id, channel))
    }

    /// [`AckLinks::url`] as if made at `now`.
    pub fn url_at(&self, alert: &AlertId, channel: &str, now: SystemTime) -> String {
        format!("{}/ack/{}", self.public_url, self.token_at(alert, channel, now))
    }

    /// The token of a link made at `now` (the last path segment of [`AckLinks::url`]).
    ///
    /// # Panics
    /// If the operating system has no random source (as [`AlertId::random`]).
    pub fn token_at(&self, alert: &AlertId, channel: &str, now: SystemTime) -> String {
        let mut nonce = [0u8; 16];
        getrandom::getrandom(&mut nonce).expect("the operating system random source failed");
        // A channel name is ours ([a-z0-9_-], short); cut anything else rather than fail a
        // notification over it: such a link verifies as Malformed and the page says so.
        let channel: String = channel.chars().take(MAX_CHANNEL_LEN).collect();
        let expires = unix_secs(now).saturating_add(self.ttl.as_secs());
        let mut bytes = Vec::with_capacity(HEAD_LEN + channel.len() + MAC_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&alert.as_u128().to_be_bytes());
        bytes.extend_from_slice(&expires.to_be_bytes());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(channel.as_bytes());
        let mac = self.mac(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Check `token` at `now`: well formed, signed with this key, not expired. Whether it was
    /// used already is the store's to say.
    ///
    /// # Errors
    /// [`RefusedLink`]: what is wrong with it.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<AckToken, RefusedLink> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(RefusedLink::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| RefusedLink::Malformed)?;
        if bytes.len() < HEAD_LEN + 1 + MAC_LEN || bytes.len() > HEAD_LEN + MAX_CHANNEL_LEN + MAC_LEN {
            return Err(RefusedLink::Malformed);
        }
        let (signed, mac) = bytes.split_at(bytes.len() - MAC_LEN);
        // Constant-time comparison (hmac's verify_slice).
        self.mac(signed).verify_slice(mac).map_err(|_| RefusedLink::Forged)?;
        // Only now is the content ours: look at it.
        if signed[0] != VERSION {
            return Err(RefusedLink::Malformed);
        }
        let alert =
            AlertId::from_u128(u128::from_be_bytes(signed[1..17].try_into().map_err(|_| RefusedLink::Malformed)?));
        let expires_secs = u64::from_be_bytes(signed[17..25].try_into().map_err(|_| RefusedLink::Malformed)?);
        let nonce: [u8; 16] = signed[25..HEAD_LEN].try_into().map_err(|_| RefusedLink::Malformed)?;
        let channel = std::str::from_utf8(&signed[HEAD_LEN..]).map_err(|_| RefusedLink::Malformed)?;
        if channel.is_empty() || !channel.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(RefusedLink::Malformed);
        }
        let expires = UNIX_EPOCH + Duration::from_secs(expires_secs);
        if unix_secs(now) >= expires_secs {
            return Err(RefusedLink::Expired { at: expires });
        }
        Ok(AckToken { alert, channel: channel.to_owned(), expires, nonce })
    }

    /// The MAC state over the domain tag and `bytes`.
    fn mac(&self, bytes: &[u8]) -> HmacSha256 {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = <HmacSha256 as hmac::digest::KeyInit>::new_from_slice(self.key.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC accepts 32-byte keys"));
        mac.update(DOMAIN);
        mac.update(bytes);
        mac
    }
}

/// Seconds since the Unix epoch (0 for a clock set before it).
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Read `dir/ack-link.key`, or make it (32 random bytes, base64, mode 0600) if it is not there.
fn load_or_make_key(dir: &Path) -> Result<[u8; 32], KeyError> {
    let path = dir.join(KEY_FILE);
    let err = |message: String| KeyError { path: path.clone(), message };
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    if !path.exists() {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| err(format!("no random source: {e}")))?;
        let text = secrecy::SecretString::from(format!("{}\n", URL_SAFE_NO_PAD.encode(key)));
        match sos_shared::config::write_secret_file(&path, text.expose_secret()) {
            Ok(()) => {}
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(format!("cannot write a new key: {e}"))),
        }
    }
    let text = secrecy::SecretString::from(sos_shared::config::read_secret_file(&path).map_err(err)?);
    let bytes = URL_SAFE_NO_PAD
        .decode(text.expose_secret())
        .map_err(|_| err("is not a key (32 bytes in unpadded base64url); delete it to make a new one".into()))?;
    bytes
        .try_into()
        .map_err(|_| err("is not a key (32 bytes in unpadded base64url); delete it to make a new one".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> AckLinks {
        AckLinks::new("https://sos.example.org/", [7u8; 32], DEFAULT_TTL)
    }

    fn token_of(url: &str) -> &str {
        url.rsplit('/').next().unwrap()
    }

    const ALERT: AlertId = AlertId::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);

    #[test]
    fn a_link_verifies_and_says_what_it_is_about() {
        let l = links();
        let now = SystemTime::now();
        let url = l.url_at(&ALERT, "slack", now);
        assert!(url.starts_with("https://sos.example.org/ack/"), "{url}");
        let t = l.verify(token_of(&url), now).unwrap();
        assert_eq!(t.alert, ALERT);
        assert_eq!(t.channel, "slack");
        assert_eq!(t.expires, UNIX_EPOCH + Duration::from_secs(unix_secs(now) + DEFAULT_TTL.as_secs()));
        assert_eq!(t.nonce_hex().len(), 32);
        assert!(token_of(&url).len() < 128, "{}", token_of(&url).len());
    }

    #[test]
    fn every_link_has_its_own_nonce() {
        let l = links();
        let now = SystemTime::now();
        let a = l.verify(&l.token_at(&ALERT, "email", now), now).unwrap();
        let b = l.verify(&l.token_at(&ALERT, "email", now), now).unwrap();
        assert_ne!(a.nonce, b.nonce);
    }

    #[test]
    fn changing_any_byte_is_refused() {
        let l = links();
        let now = SystemTime::now();
        let token = l.token_at(&ALERT, "slack", now);
        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                let r = l.verify(&URL_SAFE_NO_PAD.encode(&b), now);
                assert_eq!(r, Err(RefusedLink::Forged), "byte {i} ^ {flip:#x}");
            }
        }
        // Cut or lengthened.
        assert!(l.verify(&URL_SAFE_NO_PAD.encode(&bytes[..bytes.len() - 1]), now).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(l.verify(&URL_SAFE_NO_PAD.encode(&longer), now).is_err());
    }

    #[test]
    fn another_alert_or_channel_or_expiry_does_not_verify_with_the_same_mac() {
        let l = links();
        let now = SystemTime::now();
        let bytes = URL_SAFE_NO_PAD.decode(l.token_at(&ALERT, "slack", now)).unwrap();
        let mac = &bytes[bytes.len() - MAC_LEN..];
        let channel_at = HEAD_LEN;
        // Same MAC, another alert.
        let mut other_alert = bytes.clone();
        other_alert[1..17].copy_from_slice(&AlertId::from_u128(1).as_u128().to_be_bytes());
        assert_eq!(l.verify(&URL_SAFE_NO_PAD.encode(&other_alert), now), Err(RefusedLink::Forged));
        // Same MAC, another channel.
        let mut other_channel = bytes[..channel_at].to_vec();
        other_channel.extend_from_slice(b"email");
        other_channel.extend_from_slice(mac);
        assert_eq!(l.verify(&URL_SAFE_NO_PAD.encode(&other_channel), now), Err(RefusedLink::Forged));
        // Same MAC, a later expiry.
        let mut later = bytes.clone();
        later[17..25].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(l.verify(&URL_SAFE_NO_PAD.encode(&later), now), Err(RefusedLink::Forged));
    }

    #[test]
    fn another_key_is_refused() {
        let now = SystemTime::now();
        let token = links().token_at(&ALERT, "slack", now);
        let other = AckLinks::new("https://sos.example.org", [8u8; 32], DEFAULT_TTL);
        assert_eq!(other.verify(&token, now), Err(RefusedLink::Forged));
    }

    #[test]
    fn a_link_expires_after_its_ttl() {
        let l = AckLinks::new("https://x", [1u8; 32], Duration::from_secs(600));
        let made = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = l.token_at(&ALERT, "email", made);
        assert!(l.verify(&token, made + Duration::from_secs(599)).is_ok());
        let expired_at = made + Duration::from_secs(600);
        assert_eq!(l.verify(&token, expired_at), Err(RefusedLink::Expired { at: expired_at }));
        assert!(matches!(l.verify(&token, made + Duration::from_secs(86_400 * 365)), Err(RefusedLink::Expired { .. })));
        // A clock set before the epoch does not panic.
        assert!(l.verify(&token, UNIX_EPOCH - Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn garbage_is_malformed_and_does_not_panic() {
        let l = links();
        let now = SystemTime::now();
        for t in ["", "a", "!!!!", "ack", &"A".repeat(MAX_TOKEN_LEN + 1), &"A".repeat(100_000), "é€😀", "%2e%2e"] {
            assert_eq!(l.verify(t, now), Err(RefusedLink::Malformed), "{t:.20}");
        }
        // Correctly signed but a channel name the collector never makes.
        let weird = l.token_at(&ALERT, "a/b", now);
        assert_eq!(l.verify(&weird, now), Err(RefusedLink::Malformed));
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let l = AckLinks::new("https://x", [0xabu8; 32], DEFAULT_TTL);
        let shown = format!("{l:?}");
        assert!(shown.contains("redacted") && !shown.contains("171") && !shown.contains("ab, ab"), "{shown}");
        assert!(!shown.contains(&URL_SAFE_NO_PAD.encode([0xabu8; 32])));
    }

    #[test]
    fn the_key_file_is_made_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let a = load_or_make_key(&data).unwrap();
        let b = load_or_make_key(&data).unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(data.join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(data.join(KEY_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = load_or_make_key(&data).unwrap_err().to_string();
            assert!(e.contains("readable by other users"), "{e}");
            std::fs::set_permissions(data.join(KEY_FILE), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(data.join(KEY_FILE), "not a key").unwrap();
        let e = load_or_make_key(&data).unwrap_err().to_string();
        assert!(e.contains("is not a key") && !e.contains("not a key\""), "{e}");
    }
}
