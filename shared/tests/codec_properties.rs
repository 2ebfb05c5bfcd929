//! Any input decodes to a value or an error, never a panic.

use proptest::prelude::*;
use sos_shared::protocol::{header, split_datagram, MAX_DATAGRAM};
use sos_shared::{Key, Message, TimeWindow};

fn key() -> Key {
    Key::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
        if let Ok((_, token)) = split_datagram(&bytes) {
            let _ = key().open(token, 1_700_000_000, TimeWindow::default());
        }
    }

    #[test]
    fn arbitrary_tokens_behind_a_valid_header_never_panic(token in "[A-Za-z0-9_=-]{0,1200}", now in any::<u64>()) {
        let mut d = header(key().id()).to_vec();
        d.extend_from_slice(token.as_bytes());
        if let Ok((_, t)) = split_datagram(&d) {
            let _ = key().open(t, now, TimeWindow::default());
        }
    }

    #[test]
    fn arbitrary_plaintexts_sealed_with_the_key_never_panic(plain in proptest::collection::vec(any::<u8>(), 0..800)) {
        // Authentic tokens with arbitrary content: the JSON decoder must refuse gracefully.
        let token = fernet::Fernet::new("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
            .encrypt_at_time(&plain, 1_700_000_000);
        let _ = key().open(&token, 1_700_000_000, TimeWindow::default());
        let _ = serde_json::from_slice::<Message>(&plain);
    }

    #[test]
    fn arbitrary_json_never_panics(text in "\\{(\"[a-z_]{1,12}\":(\"[ -~]{0,40}\"|[0-9]{1,25}|true|null|\\[\\]),?){0,8}\\}") {
        let _ = serde_json::from_str::<Message>(&text);
    }

    #[test]
    fn sealed_messages_round_trip(user in "\\PC{0,60}", msg in "\\PC{0,200}", t in 0u64..4_000_000_000) {
        let mut sos = sos_shared::protocol::Sos {
            alert_id: sos_shared::AlertId::random(), test: false, triggered_at: t, attempt: 1,
            user, host: "h".into(), ip: "::1".into(), location: String::new(), message: msg, agent: String::new(),
        };
        sos.fit_to_datagram();
        let m = Message::Sos(sos);
        let d = key().seal(&m, t).unwrap();
        prop_assert!(d.len() <= MAX_DATAGRAM);
        let (_, tok) = split_datagram(&d).unwrap();
        prop_assert_eq!(key().open(tok, t, TimeWindow::default()).unwrap().message, m);
    }
}
