//! Enrollment messages as the collector handles them: parse, then run the collector's side of
//! the PAKE on a start and check a finish against a real session. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sos_shared::enroll::{AgentHandshake, Code, CollectorSession, EnrollMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else { return };
    let Ok(message) = EnrollMessage::from_body(body) else { return };
    let code = Code::from_parts(message.enrollment(), "ABCDEFGH").unwrap();
    match &message {
        EnrollMessage::EnrollStart { .. } => {
            let _ = CollectorSession::answer(&code, &message);
        }
        EnrollMessage::EnrollFinish { .. } => {
            let (_agent, start) = AgentHandshake::start(&code);
            let (_, body) = sos_shared::protocol::split_datagram(&start).unwrap();
            let start = EnrollMessage::from_body(body).unwrap();
            let session = CollectorSession::answer(&code, &start).unwrap();
            let _ = session.on_finish(&message);
        }
        _ => {}
    }
});
