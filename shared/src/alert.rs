//! Alert identity.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The identity of one SOS: 128 bits chosen when the button is pressed and kept across every
/// retry, every collector and every restart of the agent, so that the collector can recognise a
/// retry and page responders once.
///
/// Agents make them with [`AlertId::time_ordered`]: the press's millisecond in the high 48 bits,
/// 80 random bits below. The random part makes an id unguessable and unique; the time makes ids
/// of one period neighbours, so that a store keyed by alert id appends instead of writing a
/// page at a random place for each alert (docs/PERFORMANCE.md, "A lean store"). A receiver
/// must not rely on either: any 128-bit value is a valid id.
///
/// On the wire and in the store it is 32 lowercase hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlertId(u128);

/// The text was not 32 hexadecimal digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an alert id is 32 hexadecimal digits, got {0:?}")]
pub struct ParseAlertIdError(String);

impl AlertId {
    /// A fresh id from the operating system's random source.
    ///
    /// # Panics
    /// Only if the operating system has no random source at all, in which case no key could
    /// have been generated either.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes).expect("the operating system random source failed");
        AlertId(u128::from_be_bytes(bytes))
    }

    /// A fresh id for a press now: the milliseconds since the Unix epoch in the high 48 bits
    /// (by the workstation's clock, which may be wrong: that only costs the store an append),
    /// and 80 bits from the operating system's random source.
    ///
    /// # Panics
    /// As [`AlertId::random`].
    pub fn time_ordered() -> Self {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Self::time_ordered_at(ms)
    }

    /// [`AlertId::time_ordered`] for a given millisecond (truncated to 48 bits: wraps in the
    /// year 10889).
    pub fn time_ordered_at(unix_ms: u128) -> Self {
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes[6..]).expect("the operating system random source failed");
        let random = u128::from_be_bytes(bytes);
        AlertId((unix_ms & 0xffff_ffff_ffff) << 80 | random)
    }

    /// The id with this exact value, for test vectors and tests.
    pub const fn from_u128(v: u128) -> Self {
        AlertId(v)
    }

    /// The numeric value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Display for AlertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for AlertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AlertId({self})")
    }
}

impl FromStr for AlertId {
    type Err = ParseAlertIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseAlertIdError(s.chars().take(40).collect()));
        }
        u128::from_str_radix(s, 16).map(AlertId).map_err(|_| ParseAlertIdError(s.to_owned()))
    }
}

impl Serialize for AlertId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AlertId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_32_hex_digits() {
        let id = AlertId::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(id.to_string(), "0123456789abcdef0011223344556677");
        assert_eq!(id.to_string().parse::<AlertId>(), Ok(id));
        assert_eq!(AlertId::from_u128(1).to_string().len(), 32);
    }

    #[test]
    fn rejects_wrong_text() {
        assert!("".parse::<AlertId>().is_err());
        assert!("+123456789abcdef0011223344556677".parse::<AlertId>().is_err());
        assert!("0123456789abcdef00112233445566778".parse::<AlertId>().is_err());
        assert!("0123456789abcdef001122334455667g".parse::<AlertId>().is_err());
    }

    #[test]
    fn time_ordered_ids_sort_by_their_millisecond_and_differ_within_one() {
        let a = AlertId::time_ordered_at(1_700_000_000_000);
        let b = AlertId::time_ordered_at(1_700_000_000_000);
        let c = AlertId::time_ordered_at(1_700_000_000_001);
        assert_ne!(a, b);
        assert!(a < c && b < c);
        assert_eq!(a.as_u128() >> 80, 1_700_000_000_000);
        // The text sorts as the number does (fixed width, lowercase hex).
        assert!(a.to_string() < c.to_string() && b.to_string() < c.to_string());
        // Random below the time: 80 bits, never all zero in practice.
        assert_ne!(a.as_u128() & ((1u128 << 80) - 1), 0);
        let now = AlertId::time_ordered();
        assert!(now.as_u128() >> 80 > 1_700_000_000_000);
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(AlertId::random(), AlertId::random());
    }
}
