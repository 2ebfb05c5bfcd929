//! The installer files agree with the code: the identity toasts are shown under on Windows and
//! macOS, and the configuration templates each platform installs (with their commented examples
//! switched on) are configurations the binaries accept. The Debian packages themselves are
//! installed for real in `install.rs`, the Windows MSI is built and read back in `msi.rs`; the
//! macOS build cannot run here.

use std::path::{Path, PathBuf};

use sos_agent::toast::APP_ID;

fn installer(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../installer").join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `# key = value` and `# [section]` lines made live: what an administrator gets by uncommenting.
fn uncommented(template: &str) -> String {
    template
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest.split("  #").next().unwrap().to_owned()
            }
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn windows_and_macos_installers_register_the_identity_toasts_use() {
    let wxs = installer("windows/sos-agent.wxs");
    assert!(
        wxs.contains(&format!(r#"<ShortcutProperty Key="System.AppUserModel.ID" Value="{APP_ID}" />"#)),
        "the Start-menu shortcut must carry the AppUserModelID {APP_ID}"
    );
    let plist = installer("macos/Info.plist");
    assert!(
        plist.contains(&format!("<key>CFBundleIdentifier</key>\n  <string>{APP_ID}</string>")),
        "the bundle identifier must be {APP_ID}"
    );
    let launch_agent = installer(&format!("macos/{APP_ID}.plist"));
    assert!(launch_agent.contains("<string>/Applications/SOS.app/Contents/MacOS/sos-agent</string>"));
    assert!(installer("macos/build.sh").contains(r#"app="$root/Applications/SOS.app""#));
}

#[test]
fn every_agent_template_with_its_examples_switched_on_is_a_valid_config() {
    for template in ["debian/agent.toml", "windows/agent.toml", "macos/agent.toml"] {
        let text = uncommented(&installer(template));
        assert!(text.contains("\nlocation = "), "{template}: examples switched on:\n{text}");
        let with_key = format!(
            "{text}\nkey = \"{}\"\nenrollment_file = \"/nonexistent/enrollment.toml\"\n",
            sos_shared::Key::generate()
        );
        let c = sos_agent::AgentConfig::parse(&with_key, Some(Path::new(template)))
            .unwrap_or_else(|e| panic!("{template} with its examples: {e}"));
        assert!(!c.collectors.is_empty() && !c.location.is_empty(), "{template}");
        // The discreet defaults it documents are the code's.
        let defaults = sos_agent::AgentConfig::parse(
            &format!(
                "collectors = [\"h\"]\nkey = \"{}\"\nenrollment_file = \"/nonexistent/enrollment.toml\"\n",
                sos_shared::Key::generate()
            ),
            None,
        )
        .unwrap();
        assert_eq!(
            (c.cancel_window_ms, c.tray_click, c.wording, c.silent),
            (defaults.cancel_window_ms, defaults.tray_click, defaults.wording, defaults.silent),
            "{template}"
        );
    }
}

#[test]
fn the_collector_template_is_a_valid_config_as_shipped_and_with_its_examples() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("collector.key");
    sos_shared::config::write_secret_file(&key, &sos_shared::Key::generate()).unwrap();
    for secret in ["slack.url", "smtp.password", "teams.url", "webhook.url", "twilio.token", "ntfy.token"] {
        sos_shared::config::write_secret_file(&dir.path().join(secret), "https://hooks.slack.com/services/T/B/x")
            .unwrap();
    }
    sos_shared::config::write_secret_file(
        &dir.path().join("webhook.secret"),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
    )
    .unwrap();
    let template = installer("debian/collector.toml").replace("/etc/sos/", &format!("{}/", dir.path().display()));
    let file: PathBuf = dir.path().join("collector.toml");
    let c = sos_collector::config::Config::parse(&template, Some(&file)).unwrap_or_else(|e| panic!("as shipped: {e}"));
    assert_eq!(c.listen.to_string(), "0.0.0.0:5000");
    assert_eq!(c.data_dir, Path::new("/var/lib/sos"));
    let all = sos_collector::config::Config::parse(&uncommented(&template), Some(&file))
        .unwrap_or_else(|e| panic!("with its examples: {e}\n{}", uncommented(&template)));
    assert_eq!(all.channel_names(), vec!["log", "slack", "email", "sms", "teams", "ntfy", "webhook"]);
}
