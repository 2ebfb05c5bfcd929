//! The agent's configuration parser on arbitrary text: an error or a config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = sos_agent::AgentConfig::parse(text, Some(std::path::Path::new("/nonexistent/agent.toml")));
});
