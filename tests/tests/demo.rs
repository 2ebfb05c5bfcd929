//! The README's quick start: `cargo run --release -p sos-e2e --bin sos-demo` runs the real
//! collector on its embedded defaults, enrolls an agent and delivers a TEST SOS to every channel.

use std::process::Command;

use sos_e2e::bin::bin;

#[test]
fn the_quick_start_demo_delivers_a_test_sos_to_every_channel() {
    let out = Command::new(bin("sos-demo")).output().expect("run sos-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sos-demo failed\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}");
    for channel in ["log", "slack", "email"] {
        let line = format!("{channel:<6} delivered after");
        assert!(stdout.contains(&line), "no {line:?} in\n{stdout}");
    }
    assert!(stdout.contains("the agent is enrolled as \"Demo desk\""), "{stdout}");
}
