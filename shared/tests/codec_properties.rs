//! Any input decodes to a value or an error, never a panic.

use proptest::prelude::*;
use sos_shared::protocol::{
    header, split_datagram, AlertBroadcast, BroadcastState, Sos, CUT_MARKER, MAX_DATAGRAM, MAX_IP_TEXT,
};
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

    #[test]
    fn a_fitted_sos_seals_with_every_field_at_its_largest(
        message in "\\PC{0,3000}|[\\x00-\\x1f\"\\\\]{0,2000}|😀{0,1000}",
        location in "\\PC{0,1200}",
        user in "\\PC{0,600}",
        host in "\\PC{0,600}",
        agent in "\\PC{0,300}",
        test in any::<bool>(),
        t in any::<u64>(),
    ) {
        let original = message.clone();
        let mut sos = Sos {
            alert_id: sos_shared::AlertId::random(), test, triggered_at: t, attempt: 0,
            user, host, ip: String::new(), location, message, agent,
        };
        sos.fit_to_datagram();
        // Every field the sender fills in after fitting, at its largest final value: the
        // longest address text there is and the last attempt number.
        sos.ip = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".into();
        prop_assert_eq!(sos.ip.len(), MAX_IP_TEXT);
        sos.attempt = u32::MAX;
        let d = key().seal(&Message::Sos(sos.clone()), u64::MAX / 2);
        prop_assert!(d.is_ok(), "{:?}", d);
        prop_assert!(d.unwrap().len() <= MAX_DATAGRAM);
        // The message is either whole or visibly cut, and what is kept is its beginning.
        if sos.message != original {
            prop_assert!(sos.message.ends_with(CUT_MARKER), "{:?}", sos.message);
            prop_assert!(original.starts_with(&sos.message[..sos.message.len() - CUT_MARKER.len()]));
        }
    }

    #[test]
    fn a_fitted_broadcast_seals_with_the_largest_seq(
        message in "\\PC{0,3000}|[\\x00-\\x1f\"\\\\]{0,2000}|😀{0,1000}",
        location in "\\PC{0,1200}",
        user in "\\PC{0,600}",
        host in "\\PC{0,600}",
        note in "\\PC{0,900}|[\\x00-\\x1f]{0,400}",
        responder in "\\PC{0,300}",
        ip in "[0-9a-f:.]{0,45}",
        test in any::<bool>(),
        reminder in any::<bool>(),
        t in any::<u64>(),
    ) {
        let original = message.clone();
        let mut b = AlertBroadcast {
            alert_id: sos_shared::AlertId::random(), test, triggered_at: t, user, host, ip, location,
            message, state: BroadcastState::Acknowledged, responder, note, seq: 0, reminder,
        };
        b.fit_to_datagram();
        // The collector bumps seq with every change of the alert, after fitting.
        b.seq = u64::MAX;
        let d = key().seal(&Message::AlertBroadcast(b.clone()), u64::MAX / 2);
        prop_assert!(d.is_ok(), "{:?}", d);
        prop_assert!(d.unwrap().len() <= MAX_DATAGRAM);
        if b.message != original {
            prop_assert!(b.message.ends_with(CUT_MARKER), "{:?}", b.message);
            prop_assert!(original.starts_with(&b.message[..b.message.len() - CUT_MARKER.len()]));
        }
    }
}
