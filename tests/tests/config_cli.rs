//! `sos-collector check-config` checks what `run` needs; `run` binds before it creates anything;
//! no error shows a secret's value.

use std::process::{Command, Output, Stdio};

use sos_e2e::bin::bin;

fn collector(args: &[&str], config: &std::path::Path) -> Output {
    Command::new(bin("sos-collector")).args(args).arg("--config").arg(config).stdin(Stdio::null()).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn check_config_checks_the_data_dir_and_says_what_it_did_not_check() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("collector.toml");
    let port = sos_e2e::free_udp_port();
    std::fs::write(&cfg, format!("listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\n")).unwrap();
    let out = collector(&["check-config"], &cfg);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("NO NOTIFICATION CHANNEL") && said.contains("Not checked"), "{said}");
    assert!(said.contains(&dir.path().join("data").display().to_string()), "the resolved data dir: {said}");
    assert!(!dir.path().join("data").exists(), "check-config creates nothing");

    // A data dir that cannot be created (a file stands in its way).
    std::fs::write(dir.path().join("blocker"), "").unwrap();
    std::fs::write(&cfg, format!("listen = \"127.0.0.1:{port}\"\ndata_dir = \"blocker/data\"\n")).unwrap();
    let out = collector(&["check-config"], &cfg);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("blocker"), "{}", text(&out));

    // A number-valued password is not echoed.
    std::fs::write(
        &cfg,
        "[notify.email]\nsmtp_host=\"h\"\nfrom=\"a@b.c\"\nto=[\"x@y.z\"]\nusername=\"u\"\npassword = 987654321\n",
    )
    .unwrap();
    let out = collector(&["check-config"], &cfg);
    assert!(!out.status.success());
    assert!(!text(&out).contains("987654321") && text(&out).contains("notify.email.password"), "{}", text(&out));
}

#[test]
fn run_binds_its_socket_before_creating_files_or_pointing_agents_at_it() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = dir.path().join("collector.toml");
    std::fs::write(&cfg, format!("listen = \"{addr}\"\ndata_dir = \"data\"\n")).unwrap();
    let out = collector(&["run"], &cfg);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains(&addr.to_string()) && said.contains("cannot listen"), "{said}");
    assert!(!said.contains("Point an agent"), "{said}");
    assert!(!dir.path().join("data").exists(), "no data dir, no generated key");
}
