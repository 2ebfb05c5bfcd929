//! The protocol v1 test vectors in docs/test-vectors/v1.json, generated with an independent
//! Fernet implementation (Python `cryptography`): we must open every datagram at its
//! timestamp and encode every message to exactly the same plaintext.

use sos_shared::protocol::{sealed_len, split_datagram, Respond, HEADER_LEN};
use sos_shared::{Key, Message, OpenError, TimeWindow};

fn vectors() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/test-vectors/v1.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("docs/test-vectors/v1.json")).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn every_vector_opens_and_encodes_identically() {
    let v = vectors();
    let key = Key::from_base64(v["key"].as_str().unwrap()).unwrap();
    assert_eq!(key.id().to_string(), v["key_id_hex"].as_str().unwrap());
    let t = v["timestamp"].as_u64().unwrap();
    let header = hex(v["header_hex"].as_str().unwrap());
    let list = v["vectors"].as_array().unwrap();
    assert_eq!(list.len(), 22);
    let mut kinds = std::collections::HashSet::new();
    for vec in list {
        let name = vec["name"].as_str().unwrap();
        let datagram = hex(vec["datagram_hex"].as_str().unwrap());
        let plaintext = vec["plaintext"].as_str().unwrap();
        assert_eq!(&datagram[..HEADER_LEN], &header[..], "{name}: header");
        assert_eq!(datagram.len(), sealed_len(plaintext.len()), "{name}: length formula");
        let (id, token) = split_datagram(&datagram).unwrap();
        assert_eq!(id, key.id(), "{name}");
        let opened = key.open(token, t, TimeWindow::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(opened.timestamp, t, "{name}");
        assert_eq!(serde_json::to_string(&opened.message).unwrap(), plaintext, "{name}: our encoding differs");
        let parsed: Message = serde_json::from_str(plaintext).unwrap();
        assert_eq!(parsed, opened.message, "{name}");
        kinds.insert(opened.message.kind());
        if let Message::Respond(r) = &opened.message {
            // A third-party agent pads like ours: the vector is what `Respond::padded` makes.
            assert_eq!(&Respond::padded(r.alert_id, r.note.clone()), r, "{name}: padding");
        }
    }
    assert_eq!(kinds.len(), 16, "every message kind has a vector: {kinds:?}");
}

#[test]
fn vectors_are_refused_outside_the_time_window_and_when_altered() {
    let v = vectors();
    let key = Key::from_base64(v["key"].as_str().unwrap()).unwrap();
    let t = v["timestamp"].as_u64().unwrap();
    let datagram = hex(v["vectors"][0]["datagram_hex"].as_str().unwrap());
    let (_, token) = split_datagram(&datagram).unwrap();
    let w = TimeWindow::default();
    assert_eq!(key.open(token, t + w.ttl_secs + 1, w), Err(OpenError::Expired { age_secs: w.ttl_secs + 1 }));
    assert_eq!(
        key.open(token, t - w.max_future_skew_secs - 1, w),
        Err(OpenError::FromFuture { ahead_secs: w.max_future_skew_secs + 1 })
    );
    let mut altered = datagram.clone();
    altered[HEADER_LEN + 40] ^= 0x02;
    let (_, token) = split_datagram(&altered).unwrap();
    assert_eq!(key.open(token, t, w), Err(OpenError::Unauthenticated));
}
