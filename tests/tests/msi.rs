//! The Windows MSI, built from installer/windows with wixl (installer/windows/build.sh) around
//! the real `sos-agent.exe`, read back with msitools: what it installs, where, what starts the
//! agent at logon, and what must never change between versions (the upgrade code and the
//! component GUIDs: an upgrade that does not find its components leaves the old files behind or
//! removes the new ones).
//!
//! Needs `sos-agent.exe` (`cargo build --release --target x86_64-pc-windows-gnu -p sos-agent`)
//! and wixl + msitools; skips without them unless `CI` is set.

use std::path::{Path, PathBuf};
use std::process::Command;

use sos_e2e::wine::windows_bin;

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").iter().flat_map(std::env::split_paths).any(|d| d.join(name).is_file())
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The rows of `table` (tab-separated, without the three header lines).
fn table(msi: &Path, table: &str) -> Vec<Vec<String>> {
    let out = Command::new("msiinfo").args(["export"]).arg(msi).arg(table).output().unwrap();
    assert!(out.status.success(), "msiinfo export {table}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(3)
        .map(|l| l.trim_end_matches('\r').split('\t').map(str::to_owned).collect())
        .collect()
}

fn row<'a>(rows: &'a [Vec<String>], key: &str) -> &'a [String] {
    rows.iter().find(|r| r[0] == key).unwrap_or_else(|| panic!("no row {key} in {rows:?}"))
}

#[test]
fn the_msi_installs_the_agent_per_machine_starts_it_at_logon_and_keeps_its_guids() {
    if !(on_path("wixl") && on_path("msiinfo") && on_path("msiextract") && on_path("msibuild")) {
        assert!(std::env::var_os("CI").is_none(), "wixl or msitools is missing (apt-get install wixl msitools)");
        eprintln!("skipped: wixl or msitools is missing");
        return;
    }
    let exe = windows_bin("sos-agent");
    let dir = tempfile::tempdir().unwrap();
    let msi = dir.path().join("sos-agent.msi");
    let out =
        Command::new(repo().join("installer/windows/build.sh")).arg(exe.parent().unwrap()).arg(&msi).output().unwrap();
    assert!(
        out.status.success(),
        "build.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty(), "unexpected wixl warnings: {}", String::from_utf8_lossy(&out.stderr));

    // Per machine, x64, this version, the upgrade code of every version so far.
    let summary = Command::new("msiinfo").arg("suminfo").arg(&msi).output().unwrap();
    let summary = String::from_utf8_lossy(&summary.stdout);
    assert!(summary.contains("Template: x64;1033"), "{summary}");
    let props = table(&msi, "Property");
    assert_eq!(row(&props, "ALLUSERS")[1], "1", "a per-machine install");
    assert_eq!(row(&props, "ProductVersion")[1], env!("CARGO_PKG_VERSION"));
    assert_eq!(row(&props, "UpgradeCode")[1].to_lowercase(), "{6f3c2a5e-8d41-4b7a-9c0e-52b1d7e4a913}");
    assert_eq!(row(&props, "MsiHiddenProperties")[1], "ENROLL_CODE", "the code must stay out of the MSI log");
    let secure = &row(&props, "SecureCustomProperties")[1];
    assert!(secure.split(';').any(|p| p == "ENROLL_CODE") && secure.split(';').any(|p| p == "COLLECTOR"), "{secure}");

    // The components, their fixed GUIDs and where they go.
    let components = table(&msi, "Component");
    for (id, guid, dir, attributes) in [
        ("AgentExe", "{3B0F8F7E-7A52-4F1E-9D6A-0C1F2E3D4A5B}", "INSTALLFOLDER", "256"),
        ("StartMenuShortcut", "{A7D5C1E2-4F3B-4C8D-8E9F-1A2B3C4D5E6F}", "ProgramMenuFolder", "260"),
        // 64-bit + permanent + never overwritten: the machine's config survives upgrades and
        // uninstalls, like a Debian conffile.
        ("MachineConfig", "{D4F6A8C0-2C4E-4F6A-8B9C-0D1E2F3A4B5C}", "SosDataDir", "400"),
    ] {
        let r = row(&components, id);
        assert_eq!((r[1].as_str(), r[2].as_str(), r[3].as_str()), (guid, dir, attributes), "component {id}");
    }
    assert_eq!(components.len(), 3, "{components:?}");
    let dirs = table(&msi, "Directory");
    assert_eq!(row(&dirs, "INSTALLFOLDER")[1..], ["ProgramFiles64Folder", "SOS"]);
    assert_eq!(row(&dirs, "SosDataDir")[1..], ["CommonAppDataFolder", "sos"]);

    // The files: the exe as built, the config template as committed.
    let files = table(&msi, "File");
    assert_eq!(row(&files, "SosAgentExe")[1..3], ["AgentExe", "sos-agent.exe"]);
    assert_eq!(row(&files, "AgentToml")[1..3], ["MachineConfig", "agent.toml"]);
    let x = dir.path().join("x");
    let out = Command::new("msiextract").arg("-C").arg(&x).arg(&msi).output().unwrap();
    assert!(out.status.success(), "msiextract: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        std::fs::read(x.join("SOS/sos-agent.exe")).unwrap() == std::fs::read(&exe).unwrap(),
        "sos-agent.exe differs"
    );
    assert_eq!(
        std::fs::read_to_string(x.join("sos/agent.toml")).unwrap(),
        std::fs::read_to_string(repo().join("installer/windows/agent.toml")).unwrap()
    );

    // Started at logon for every user: HKLM (root 2) ...\Run; and the Start-menu shortcut with
    // the AppUserModelID toasts need.
    let registry = table(&msi, "Registry");
    let run = registry.iter().find(|r| r[2] == r"Software\Microsoft\Windows\CurrentVersion\Run").expect("a Run entry");
    assert_eq!(
        run[1..],
        [
            "2",
            r"Software\Microsoft\Windows\CurrentVersion\Run",
            "SOS agent",
            r#""[INSTALLFOLDER]sos-agent.exe" run"#,
            "AgentExe"
        ]
    );
    let shortcut = row(&table(&msi, "Shortcut"), "SosShortcut").to_vec();
    assert_eq!(
        shortcut[1..6],
        ["ProgramMenuFolder", "SOS", "StartMenuShortcut", "[INSTALLFOLDER]sos-agent.exe", "run"]
    );
    let aumid = table(&msi, "MsiShortcutProperty");
    assert_eq!(
        row(&aumid, "SosAppUserModelId")[1..],
        ["SosShortcut", "System.AppUserModel.ID", sos_agent::toast::APP_ID]
    );

    // Enrollment at install: the installed exe, deferred, as LocalSystem, its command line
    // hidden from the log (type 18 + 1024 + 2048 + 8192), only with both properties.
    let action = row(&table(&msi, "CustomAction"), "EnrollMachine").to_vec();
    assert_eq!(action[1..4], ["11282", "SosAgentExe", "enroll [ENROLL_CODE] --collector [COLLECTOR] --system"]);
    let sequence = table(&msi, "InstallExecuteSequence");
    assert_eq!(row(&sequence, "EnrollMachine")[1], "ENROLL_CODE AND COLLECTOR AND NOT REMOVE");
}
