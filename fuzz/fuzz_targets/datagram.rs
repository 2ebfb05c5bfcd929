//! Every datagram the collector can receive: split into header and token, then opened with a
//! fixed key whatever the key id says (so that the fuzzer reaches Fernet and the JSON decoder
//! with inputs whose header it has not guessed). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sos_shared::protocol::split_datagram;
use sos_shared::{Key, TimeWindow};

// The key of the test vectors (bytes 00..1f), so that the seeds from docs/test-vectors open.
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fuzz_target!(|data: &[u8]| {
    let key = Key::from_base64(KEY).unwrap();
    if let Ok((_id, token)) = split_datagram(data) {
        let _ = key.open(token, 1_700_000_000, TimeWindow::default());
        let _ = sos_shared::enroll::EnrollMessage::from_body(token);
    }
    // The token part alone, as if the header had been right.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(opened) = key.open(text, 1_700_000_000, TimeWindow::default()) {
            let _ = opened.message.kind();
        }
    }
});
