//! The agent's command line against a real collector and the Slack stand-in: long messages,
//! what the agent can tell about a collector that does not answer, `status`, `cancel` without a
//! tray agent, and the spool commands.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sos_e2e::process::alert_id_of;
use sos_e2e::site::Site;
use sos_e2e::{agent_send, free_udp_port, SlackStandIn};
use sos_shared::Key;

const WAIT: Duration = Duration::from_secs(20);

/// `sos-agent <args>`, with a private runtime directory so that no tray agent of the person
/// running the tests is reached.
fn agent(site: &Site, args: &[&str]) -> Output {
    let runtime = site.dir.path().join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    Command::new(sos_e2e::bin::bin("sos-agent"))
        .args(args)
        .env("XDG_RUNTIME_DIR", &runtime)
        .stdin(Stdio::null())
        .output()
        .expect("run sos-agent")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A config for `site` that names `collector` and `key` instead.
fn config_with(site: &Site, name: &str, collector: &str, key: &str) -> std::path::PathBuf {
    let p = site.dir.path().join(name);
    std::fs::write(
        &p,
        format!(
            "collectors = [\"{collector}\"]\nkey = \"{key}\"\nspool_dir = \"{}\"\nenrollment_file = \"{}\"\n",
            site.spool_dir().display(),
            site.dir.path().join("enrollment.toml").display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn a_5000_character_message_and_a_700_emoji_message_are_delivered_cut_and_marked() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let _collector = site.start(Some(&slack), None);
    for (message, kept) in [("x".repeat(5000), "xxxxxxxxxxxxxxxxxxxx"), ("😀".repeat(700), "😀😀😀😀😀😀😀😀😀😀")]
    {
        let out = agent_send(&site.agent_config(), &["--message", &message]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("was cut"), "{}", text(&out));
        let post = slack.wait_for_text(WAIT, &alert_id_of(&out)).text();
        assert!(post.contains(kept) && post.contains("…[cut]"), "{post}");
    }
    assert!(site.spooled().is_empty());
}

#[test]
fn a_wrong_key_a_closed_port_and_an_unresolvable_host_each_say_what_they_are() {
    let site = Site::new();
    let _collector = site.start(None, None);
    let addr = site.addr.to_string();
    let closed = format!("127.0.0.1:{}", free_udp_port());
    let cases = [
        (
            "wrong-key.toml",
            addr.as_str(),
            Key::generate(),
            format!("a collector is listening at {addr} but did not answer: usually a wrong key"),
        ),
        ("closed.toml", closed.as_str(), site.key_text.clone(), format!("nothing is listening at {closed}")),
        (
            "unresolvable.toml",
            "no-such-collector.invalid:5000",
            site.key_text.clone(),
            "cannot resolve the collector's name no-such-collector.invalid:5000".to_owned(),
        ),
    ];
    let mut seen = Vec::new();
    for (name, collector, key, expected) in &cases {
        let config = config_with(&site, name, collector, key);
        let out = agent_send(&config, &["--test", "--timeout", "2"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("SOS NOT DELIVERED") && err.contains(expected.as_str()), "{name}: {err}");
        // `status` tells the same story, and that nobody answered.
        let status = agent(&site, &["status", "--config", config.to_str().unwrap()]);
        assert_eq!(status.status.code(), Some(1), "{}", text(&status));
        assert!(text(&status).contains("NO ANSWER") && text(&status).contains(expected.as_str()), "{}", text(&status));
        seen.push(expected.clone());
    }
    seen.dedup();
    assert_eq!(seen.len(), 3);

    // And a collector that answers says so; the key and the spool are described.
    let good = agent(&site, &["status", "--config", site.agent_config().to_str().unwrap()]);
    assert!(good.status.success(), "{}", text(&good));
    let t = text(&good);
    assert!(t.contains("a collector answered") && t.contains("site key") && t.contains("alert(s) waiting"), "{t}");
    assert!(t.contains("tray agent: not reachable"), "{t}");
    // The three alerts that failed wait in the spool, listed by `status`.
    assert_eq!(site.spooled().len(), 3);
}

#[test]
fn cancel_works_without_a_tray_agent_takes_an_id_and_is_recorded() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let _collector = site.start(Some(&slack), None);
    let config = site.agent_config();
    let cfg = config.to_str().unwrap();
    let first = alert_id_of(&agent_send(&config, &[]));
    let last = alert_id_of(&agent_send(&config, &[]));
    slack.wait_for_text(WAIT, &last);

    // No id: the last delivered alert.
    let out = agent(&site, &["cancel", "--config", cfg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("Alert {last} is cancelled")), "{}", text(&out));
    let post = slack.wait_for(WAIT, "the cancellation", |r| r.iter().any(|x| x.text().contains("CANCELLED")));
    let post = post.iter().find(|x| x.text().contains("CANCELLED")).unwrap().text();
    assert!(post.contains("from the command line"), "{post}");
    let record = std::fs::read_to_string(site.spool_dir().join(format!("delivered/{last}.json"))).unwrap();
    assert!(record.contains("\"command_line\""), "{record}");

    // The last one again, a bad id: sentences, non-zero. A second `cancel` never withdraws an
    // earlier alert by itself.
    let out = agent(&site, &["cancel", "--config", cfg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains(&format!("The last delivered alert, {last}, was already cancelled")), "{}", text(&out));
    let out = agent(&site, &["cancel", "--config", cfg, "not-an-id"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("is not an alert id"), "{}", text(&out));
    assert!(!text(&out).contains("Error("), "{}", text(&out));

    // With an id: an earlier one.
    let out = agent(&site, &["cancel", "--config", cfg, &first]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("Alert {first} is cancelled")), "{}", text(&out));
}

#[test]
fn spooled_alerts_are_listed_and_can_be_discarded() {
    let site = Site::new(); // no collector
    let config = site.agent_config();
    let cfg = config.to_str().unwrap();
    let out = agent_send(&config, &["--timeout", "1", "--message", "stuck"]);
    let id = alert_id_of(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing is listening"), "{}", text(&out));
    let list = agent(&site, &["spool", "list", "--config", cfg]);
    assert!(text(&list).contains(&id) && text(&list).contains("\"stuck\""), "{}", text(&list));
    let out = agent(&site, &["spool", "discard", "--config", cfg, &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(site.spooled().is_empty());
    let out = agent(&site, &["spool", "discard", "--config", cfg, &id]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}
