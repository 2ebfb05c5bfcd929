//! The Debian packages, installed for real on this machine: `cargo deb` builds both from the
//! binaries under test, `dpkg -i` installs them, and the installed collector (run the way its
//! unit runs it, as its user) takes an SOS from the installed agent, which the package enrolled
//! with a one-time code. Then an upgrade keeps the local config and the key, `dpkg -r` keeps the
//! data, and `dpkg -P` removes it.
//!
//! This changes the machine (packages, the `sos` system user, /etc/sos, /var/lib/sos), so it
//! runs only under `CI` (a machine of its own, as root) or when asked with
//! `SOS_INSTALL_TEST=1`; otherwise it says so and skips. Under `CI` a missing tool is a failure.
//! Without systemd as PID 1 here, the unit's sandbox itself is checked offline
//! (`systemd-analyze verify` and `security --offline`), not exercised.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sos_e2e::bin::bin;
use sos_e2e::CollectorProcess;

const TOOLS: [&str; 6] =
    ["dpkg", "dpkg-statoverride", "systemd-analyze", "setpriv", "desktop-file-validate", "adduser"];
const UNIT: &str = "/usr/lib/systemd/system/sos-collector.service";

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Whether to run: see the module doc.
fn should_run() -> bool {
    let ci = std::env::var_os("CI").is_some();
    if !ci && std::env::var("SOS_INSTALL_TEST").as_deref() != Ok("1") {
        eprintln!("skipping the package test: it installs and purges packages on this machine; set SOS_INSTALL_TEST=1 (as root) to run it");
        return false;
    }
    let mut missing: Vec<String> = TOOLS.iter().filter(|t| !on_path(t)).map(|t| t.to_string()).collect();
    if !Command::new("cargo").args(["deb", "--version"]).output().is_ok_and(|o| o.status.success()) {
        missing.push("cargo-deb (cargo install cargo-deb --locked)".into());
    }
    if !sos_agent::keys::running_as_root() {
        missing.push("root".into());
    }
    if missing.is_empty() {
        return true;
    }
    assert!(!ci, "CI is set but the package test cannot run: missing {missing:?} (.ci/run installs them)");
    eprintln!("skipping the package test: missing {missing:?}");
    false
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Owner name, group name and permission bits of `path`.
fn stat(path: &str) -> (String, String, u32) {
    let out = run(Command::new("stat").args(["-c", "%U %G %a", path]));
    let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut f = s.split(' ');
    let (u, g, m) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
    (u.to_owned(), g.to_owned(), u32::from_str_radix(m, 8).unwrap())
}

fn owned(u: &str, g: &str, mode: u32) -> (String, String, u32) {
    (u.to_owned(), g.to_owned(), mode)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Purges both packages when the test ends, however it ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "sos-agent", "sos-collector"]).output();
    }
}

/// The unit's `Key=Value` lines (a key may repeat).
fn unit_settings(path: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        if let Some((k, v)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
            map.entry(k.trim().to_owned()).or_default().push(v.trim().to_owned());
        }
    }
    map
}

/// A command run as `user` the way systemd runs a service: that user's ids and groups only, no
/// new privileges, a clean environment.
fn as_user(user: &str, group: &str, program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args([&format!("--reuid={user}"), &format!("--regid={group}"), "--init-groups", "--no-new-privs", "--"])
        .arg(program)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir("/");
    c
}

fn build_packages(out_dir: &Path) -> (PathBuf, PathBuf) {
    // The binaries under test, packaged as they are (no rebuild).
    let target_dir = bin("sos-collector").parent().and_then(Path::parent).unwrap().to_path_buf();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut debs = Vec::new();
    for package in ["sos-collector", "sos-agent"] {
        let out = run(Command::new("cargo")
            .args(["deb", "--no-build", "-p", package, "--output"])
            .arg(out_dir)
            .env("CARGO_TARGET_DIR", &target_dir)
            .current_dir(workspace));
        let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap().trim());
        assert!(deb.is_file(), "cargo deb said it wrote {}", deb.display());
        debs.push(deb);
    }
    (debs[0].clone(), debs[1].clone())
}

#[test]
fn the_packages_install_deliver_an_sos_upgrade_and_purge() {
    if !should_run() {
        return;
    }
    for p in ["sos-agent", "sos-collector"] {
        if installed(p) {
            // A previous run that died half way; this machine is CI's (or the tester asked).
            run(Command::new("dpkg").args(["--purge", p]));
        }
    }
    let work = tempfile::tempdir().unwrap();
    let (collector_deb, agent_deb) = build_packages(work.path());
    let _purge = Purge;

    // ---- The collector package.
    let out = run(Command::new("dpkg").arg("-i").arg(&collector_deb).env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(text(&out).contains("generated the site key"), "{}", text(&out));
    let passwd = run(Command::new("getent").args(["passwd", "sos"]));
    let fields: Vec<String> = String::from_utf8_lossy(&passwd.stdout).trim().split(':').map(str::to_owned).collect();
    assert!(fields[2].parse::<u32>().unwrap() < 1000, "a system user: {fields:?}");
    assert_eq!((fields[5].as_str(), fields[6].as_str()), ("/var/lib/sos", "/usr/sbin/nologin"), "{fields:?}");
    run(Command::new("getent").args(["group", "sos"]));
    assert_eq!(stat("/usr/bin/sos-collector"), owned("root", "root", 0o755));
    assert_eq!(stat("/etc/sos/collector.toml"), owned("root", "sos", 0o640), "config: not world-readable");
    assert_eq!(stat("/etc/sos/collector.key"), owned("sos", "sos", 0o600), "key: the service's alone");
    assert_eq!(stat("/var/lib/sos"), owned("sos", "sos", 0o750));
    assert_eq!(stat(UNIT), owned("root", "root", 0o644));
    let sysctl = std::fs::read_to_string("/usr/lib/sysctl.d/60-sos-collector.conf").unwrap();
    assert!(sysctl.contains("net.core.rmem_max = 33554432"), "{sysctl}");
    let site_key = std::fs::read_to_string("/etc/sos/collector.key").unwrap();
    sos_shared::Key::from_base64(site_key.trim()).expect("the generated key is a key");
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "sos-collector"]));
    assert!(String::from_utf8_lossy(&conffiles.stdout).contains("/etc/sos/collector.toml"));
    assert!(
        std::fs::read_link("/etc/systemd/system/multi-user.target.wants/sos-collector.service").is_ok(),
        "the unit is enabled"
    );

    // The unit: valid, and hardened.
    let verify = run(Command::new("systemd-analyze").args(["verify", UNIT]));
    assert!(!text(&verify).contains("sos-collector"), "systemd-analyze verify complains:\n{}", text(&verify));
    let unit = unit_settings(UNIT);
    for (k, v) in [
        ("User", "sos"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "sos"),
        ("Restart", "on-failure"),
        ("LimitCORE", "0"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(unit.get(k).and_then(|v| v.last()).map(String::as_str), Some(v), "{k} in {UNIT}");
    }
    assert!(!unit.contains_key("ReadWritePaths"), "only the state directory is writable");
    let security = run(Command::new("systemd-analyze").args(["security", "--offline=true", "--no-pager", UNIT]));
    let exposure: f32 = text(&security)
        .lines()
        .find_map(|l| l.split("Overall exposure level for sos-collector.service:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{}", text(&security)));
    assert!(exposure <= 2.0, "systemd-analyze security: exposure {exposure} (OK is below 2.0)");

    // ---- The installed collector, started as its unit starts it.
    let start_pre: Vec<String> = unit["ExecStartPre"][0].split_whitespace().map(str::to_owned).collect();
    let check = run(as_user("sos", "sos", &start_pre[0]).args(&start_pre[1..]));
    assert!(text(&check).contains("OK"), "{}", text(&check));
    let exec: Vec<String> = unit["ExecStart"][0].split_whitespace().map(str::to_owned).collect();
    assert_eq!(exec[0], "/usr/bin/sos-collector");
    assert!(
        std::net::UdpSocket::bind("0.0.0.0:5000").is_ok(),
        "UDP port 5000 (the installed config's) is in use on this machine"
    );
    let mut command = as_user("sos", "sos", &exec[0]);
    command.args(&exec[1..]).env("HOME", "/var/lib/sos");
    let collector =
        CollectorProcess::spawn(command, SocketAddr::from(([127, 0, 0, 1], 5000)), "/etc/sos/collector.toml".into());

    // The CLI refuses to touch the store as another user (root would leave files the service
    // cannot write), and works as the service's user.
    let refused = Command::new("/usr/bin/sos-collector")
        .args(["enroll", "--name", "x", "--config", "/etc/sos/collector.toml"])
        .output()
        .unwrap();
    assert!(!refused.status.success() && text(&refused).contains("sudo -u sos"), "{}", text(&refused));
    let enroll = run(as_user("sos", "sos", "/usr/bin/sos-collector").args([
        "enroll",
        "--name",
        "Desk 7 (package test)",
        "--config",
        "/etc/sos/collector.toml",
    ]));
    let code = String::from_utf8_lossy(&enroll.stdout).trim().to_owned();
    assert_eq!(code.len(), 14, "a code like K7QF-9M2P-XR4C: {code:?}");

    // ---- The agent package, enrolling the machine with the code as a deployment tool would.
    let out = run(Command::new("dpkg")
        .arg("-i")
        .arg(&agent_deb)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("SOS_ENROLL_CODE", &code)
        .env("SOS_COLLECTOR", "127.0.0.1:5000"));
    assert!(text(&out).contains("Enrolled as \"Desk 7 (package test)\""), "{}", text(&out));
    assert_eq!(stat("/usr/bin/sos-agent"), owned("root", "root", 0o755));
    assert_eq!(stat("/etc/sos/agent.toml"), owned("root", "root", 0o644));
    assert_eq!(stat("/etc/sos/enrollment.toml"), owned("root", "root", 0o644), "the machine's, for every user");
    assert_eq!(stat("/etc/xdg/autostart/sos-agent.desktop"), owned("root", "root", 0o644));
    assert!(Path::new("/usr/share/icons/hicolor/scalable/apps/sos-agent.svg").is_file());
    let autostart = std::fs::read_to_string("/etc/xdg/autostart/sos-agent.desktop").unwrap();
    assert!(autostart.contains("\nExec=/usr/bin/sos-agent run"), "{autostart}");
    assert!(autostart.contains("\nTryExec=/usr/bin/sos-agent"), "skipped once the package is removed: {autostart}");
    for desktop in ["/etc/xdg/autostart/sos-agent.desktop", "/usr/share/applications/sos-agent.desktop"] {
        let v = run(Command::new("desktop-file-validate").arg(desktop));
        assert!(text(&v).trim().is_empty(), "{desktop}: {}", text(&v));
    }
    let enrolled = sos_agent::keys::Enrollment::load(Path::new("/etc/sos/enrollment.toml")).unwrap();
    assert_eq!((enrolled.name.as_str(), enrolled.collector.as_str()), ("Desk 7 (package test)", "127.0.0.1:5000"));

    // ---- A desktop user (nobody, with a home of its own) sends a drill with the installed
    // agent: the system-wide config, the user's own over it, and the machine's key.
    let home = work.path().join("home");
    std::fs::create_dir_all(home.join(".config/sos")).unwrap();
    std::fs::write(home.join(".config/sos/agent.toml"), "location = \"Room 2.14, by the window\"\n").unwrap();
    run(Command::new("chown").args(["-R", "nobody:nogroup"]).arg(&home));
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let send = run(as_user("nobody", "nogroup", "/usr/bin/sos-agent")
        .args(["send", "--test", "--message", "package test", "--timeout", "20"])
        .env("HOME", &home));
    let alert_id = sos_e2e::process::alert_id_of(&send);
    assert!(text(&send).contains("acknowledged by"), "{}", text(&send));
    collector.wait_log(Duration::from_secs(10), &format!("alert_id={alert_id}"));
    let alerts = run(as_user("sos", "sos", "/usr/bin/sos-collector").args([
        "alerts",
        "--config",
        "/etc/sos/collector.toml",
        "--limit",
        "5",
    ]));
    let listing = text(&alerts);
    assert!(listing.contains(&alert_id), "{listing}");
    assert!(listing.contains("enrolled as: Desk 7 (package test)"), "attributed to the machine:\n{listing}");
    assert!(listing.contains("Room 2.14, by the window"), "the user's location over the system's:\n{listing}");
    let (status, log) = collector.terminate();
    assert!(status.success(), "the installed collector stops cleanly on SIGTERM: {status}\n{log}");

    // ---- An upgrade (the same package again) keeps the local config and the key.
    let mut local = std::fs::read_to_string("/etc/sos/collector.toml").unwrap();
    local.push_str("\n# a local change that an upgrade must keep\n");
    std::fs::write("/etc/sos/collector.toml", &local).unwrap();
    run(Command::new("dpkg").arg("-i").arg(&collector_deb).env("DEBIAN_FRONTEND", "noninteractive"));
    assert_eq!(std::fs::read_to_string("/etc/sos/collector.toml").unwrap(), local);
    assert_eq!(std::fs::read_to_string("/etc/sos/collector.key").unwrap(), site_key, "the key is never replaced");
    assert_eq!(stat("/etc/sos/collector.toml"), owned("root", "sos", 0o640));

    // ---- Remove: the programs go, the config, the keys and the store stay.
    run(Command::new("dpkg").args(["--remove", "sos-agent", "sos-collector"]));
    for gone in ["/usr/bin/sos-collector", "/usr/bin/sos-agent", UNIT] {
        assert!(!Path::new(gone).exists(), "{gone} is still there after dpkg --remove");
    }
    for kept in [
        "/etc/sos/collector.toml",
        "/etc/sos/collector.key",
        "/etc/sos/agent.toml",
        "/etc/sos/enrollment.toml",
        "/var/lib/sos/sos.db",
        // A conffile; its TryExec makes sessions skip it while the program is absent.
        "/etc/xdg/autostart/sos-agent.desktop",
    ] {
        assert!(Path::new(kept).exists(), "{kept} is gone after dpkg --remove; only a purge deletes it");
    }
    assert_eq!(std::fs::metadata("/var/lib/sos/sos.db").unwrap().uid(), fields[2].parse::<u32>().unwrap());

    // ---- Purge: nothing of ours is left but the user (Debian practice, documented).
    run(Command::new("dpkg").args(["--purge", "sos-agent", "sos-collector"]));
    for gone in [
        "/etc/sos",
        "/var/lib/sos",
        "/etc/xdg/autostart/sos-agent.desktop",
        "/etc/systemd/system/multi-user.target.wants/sos-collector.service",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} is still there after dpkg --purge");
    }
    let overrides = run(Command::new("dpkg-statoverride").arg("--list"));
    assert!(!String::from_utf8_lossy(&overrides.stdout).contains("/etc/sos"), "statoverride left behind");
    assert!(!installed("sos-collector") && !installed("sos-agent"));
    run(Command::new("getent").args(["passwd", "sos"]));
}
