//! The collector's configuration parser on arbitrary text: an error or a config, never a panic,
//! and an error never echoes a secret's value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = sos_collector::Config::parse(text, Some(std::path::Path::new("/nonexistent/collector.toml")));
});
