//! The load tool works end to end: `sos-bench` on small numbers starts real collectors (the
//! `sos-collector` built beside it by `cargo test --workspace`), its simulated agents get every
//! SOS acknowledged, and it reports each scenario. (What it measures is recorded in
//! docs/PERFORMANCE.md, never asserted here.)

use std::process::Command;

#[test]
fn sos_bench_runs_every_kind_of_load_and_loses_nothing_on_small_numbers() {
    let out = Command::new(env!("CARGO_BIN_EXE_sos-bench"))
        .args(["ceiling", "max", "burst", "steady", "flood", "flood-own", "nat", "durable", "crash", "history"])
        .args(["--secs", "1", "--agents", "4", "--window", "2", "--burst-agents", "20", "--burst-each", "3"])
        .args(["--rate", "100", "--hb-interval", "5", "--nat-agents", "5000", "--history-rate", "5"])
        .output()
        .expect("run sos-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {name}:")))
            .unwrap_or_else(|| panic!("no {name} row:\n{stdout}"))
    };
    assert!(row("ceiling").contains("round trips/s"), "{stdout}");
    assert!(row("max").contains("lost 0 of "), "{stdout}");
    // 20 agents × 3 at once; 100/s from 20 agents for 1 s is 5 each.
    assert!(row("burst").contains("lost 0 of 60;"), "{stdout}");
    assert!(row("steady").contains("lost 0 of 100;"), "{stdout}");
    // An SOS every 50 ms for 1 s through the flood: all 20 acknowledged.
    assert!(row("flood").contains("| 20 of 20 SOS ACKed |"), "{stdout}");
    // The same from the agent's own address: nothing authentic is dropped for its source.
    assert!(row("flood-own").contains("| 20 of 20 SOS ACKed |"), "{stdout}");
    // 5,000 agents behind one address, a heartbeat each every 5 s (1,000/s): none refused.
    assert!(row("nat").contains("| refused 0 "), "{stdout}");
    // The same run's fsync, the ideal durable server and the collector against it.
    assert!(row("steady").contains("fsync p50 "), "{stdout}");
    assert!(row("steady-ideal").contains("lost 0 of 100;"), "{stdout}");
    assert!(row("durable-ideal").contains("lost 0 of "), "{stdout}");
    assert!(row("durable").contains("of the ideal | lost 0 of "), "{stdout}");
    // Killed under load and restarted: acknowledged again, and every SOS acknowledged in the end.
    assert!(row("crash").contains("first ACK ") && row("crash").contains("| lost 0 of "), "{stdout}");
    assert!(row("crash").contains("the agents' first retransmission after the kill "), "{stdout}");
    // A closed history, then 5 SOS/s from 5 new agents for 1 s: all acknowledged.
    assert!(row("history").contains("alerts resolved") && row("history").contains("lost 0 of 5;"), "{stdout}");
}
