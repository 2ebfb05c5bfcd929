//! End-to-end on a real desktop session (Xvfb, a D-Bus session bus, dunst): the tray agent
//! `sos-agent run` against a real collector and the Slack stand-in. Every SOS is fired the way a
//! person fires it: the hotkey pressed through the X server (xdotool), the tray item activated
//! through its StatusNotifierItem D-Bus interface (what a panel does on click), and
//! `sos-agent trigger`. Toasts are observed on the session bus.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sos_e2e::desktop::{self, Desktop, Notify};
use sos_e2e::process::alert_id_of;
use sos_e2e::{eventually, free_udp_port, is_reminder, CollectorProcess, SlackStandIn};
use sos_shared::Key;

const WAIT: Duration = Duration::from_secs(30);

struct Site {
    dir: tempfile::TempDir,
    key: String,
    addr: SocketAddr,
}

impl Site {
    fn new() -> Self {
        let addr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        Site { dir: tempfile::tempdir().unwrap(), key: Key::generate(), addr }
    }

    fn start_collector(&self, slack: &SlackStandIn) -> CollectorProcess {
        CollectorProcess::start(
            self.dir.path(),
            self.addr,
            &format!(
                "listen = \"{}\"\ndata_dir = \"{}\"\nkey = \"{}\"\nshutdown_grace_secs = 1\n\
                 [outbox]\ncoalesce_window_ms = 100\n[notify.slack]\nwebhook_url = \"{}\"\n",
                self.addr,
                self.dir.path().join("data").display(),
                self.key,
                slack.url
            ),
        )
    }

    /// The agent's configuration with plain wording, a single click and no cancel window, so
    /// that each test fires at once and reads "SOS"; `discreet_defaults` tests the defaults.
    fn agent_config(&self) -> PathBuf {
        self.agent_config_with("wording = \"plain\"\ntray_click = \"single\"\ncancel_window_ms = 0\n")
    }

    /// The agent's configuration: the site, then `extra`.
    fn agent_config_with(&self, extra: &str) -> PathBuf {
        let p = self.dir.path().join("agent.toml");
        std::fs::write(
            &p,
            format!(
                "collectors = [\"{}\"]\nkey = \"{}\"\nlocation = \"Front desk\"\nspool_dir = \"{}\"\n\
                 heartbeat_secs = 1\nwarn_after_secs = 2\nfallback = \"Call security 555-0100\"\n{extra}",
                self.addr,
                self.key,
                self.spool().display()
            ),
        )
        .unwrap();
        p
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

fn spooled(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json").map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn me() -> (String, String) {
    (whoami::fallible::username().unwrap_or_default(), whoami::fallible::hostname().unwrap_or_default())
}

#[test]
fn hotkey_tray_click_and_trigger_each_send_an_sos_confirmed_by_a_toast() {
    if !desktop::available() {
        return;
    }
    let desk = Desktop::start();
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let collector = site.start_collector(&slack);
    let agent = desk.start_agent(&site.agent_config(), &site.state());
    agent.wait_log(WAIT, "hotkey registered");
    let item = desk.tray_item_of(agent.pid(), WAIT);
    assert!(eventually(WAIT, || desk.tray_tooltip(&item).contains("ready")), "{}", desk.tray_tooltip(&item));

    // 1. Ctrl+Alt+S, pressed on the X server.
    desk.key("ctrl+alt+s");
    let (user, host) = me();
    let first = slack.wait_for(WAIT, "the hotkey's SOS", |r| r.iter().any(|x| x.status == 200));
    let text = first[0].text();
    assert!(text.contains(&user) && text.contains(&host) && text.contains("Front desk"), "{text}");
    desk.wait_toasts("SOS delivered", 1, WAIT);

    // 2. A click on the tray icon: the panel calls Activate on the StatusNotifierItem.
    desk.click_tray(&item);
    agent.wait_log(WAIT, "source=\"tray click\" test=false");
    assert!(
        eventually(WAIT, || slack.received().iter().filter(|x| x.status == 200).count() >= 2),
        "the click's SOS did not reach Slack\n--- agent:\n{}\n--- collector:\n{}",
        agent.log(),
        collector.log()
    );
    desk.wait_toasts("SOS delivered", 2, WAIT);

    // 3. `sos-agent trigger`, as a desktop shortcut or a USB button would run it.
    let out = desk.trigger(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("running agent"), "trigger did not reach the agent");
    let id = alert_id_of(&out);
    slack.wait_for_text(WAIT, &id);
    desk.wait_toasts("SOS delivered", 3, WAIT);

    // Three distinct alerts, each posted once; the tray says delivered; nothing left spooled.
    // (Accepted posts: one the stand-in refused as too soon after the last is posted again.)
    assert_eq!(slack.received().iter().filter(|r| r.status == 200).count(), 3, "{:#?}", slack.received());
    assert!(eventually(WAIT, || desk.tray_tooltip(&item).contains("delivered at")), "{}", desk.tray_tooltip(&item));
    assert!(eventually(WAIT, || spooled(&site.spool()).is_empty()));
    assert!(
        std::fs::read_to_string(site.state().join("sos/agent.log")).unwrap_or_default().contains("SOS fired"),
        "no log file"
    );

    // 4. A false alarm: the last alert is withdrawn from the command line; responders are told,
    // a toast confirms, and the tray's status line says so.
    let config = site.agent_config();
    let cancel =
        || desk.command(sos_e2e::bin::bin("sos-agent")).arg("cancel").arg("--config").arg(&config).output().unwrap();
    let out = cancel();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id), "cancel did not pick the last alert");
    desk.wait_toasts("Alert cancelled", 1, WAIT);
    let cancelled = slack.wait_for(WAIT, "the cancellation", |r| r.iter().any(|x| x.text().contains("CANCELLED")));
    assert!(cancelled.iter().any(|x| x.text().contains("CANCELLED") && x.text().contains(&id)));
    assert!(eventually(WAIT, || desk.tray_tooltip(&item).contains("cancelled")), "{}", desk.tray_tooltip(&item));
    let again = cancel();
    assert_eq!(again.status.code(), Some(1), "a second cancel has nothing left to cancel");
}

#[test]
fn a_collector_outage_shows_offline_warns_and_delivers_once_when_it_is_back() {
    if !desktop::available() {
        return;
    }
    let desk = Desktop::start();
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let collector = site.start_collector(&slack);
    let agent = desk.start_agent(&site.agent_config(), &site.state());
    let item = desk.tray_item_of(agent.pid(), WAIT);
    assert!(eventually(WAIT, || desk.tray_tooltip(&item).contains("ready")));

    let (status, _) = collector.terminate();
    assert!(status.success());
    assert!(eventually(WAIT, || desk.tray_tooltip(&item).contains("offline")), "{}", desk.tray_tooltip(&item));

    agent.wait_log(WAIT, "hotkey registered");
    desk.key("ctrl+alt+s");
    desk.wait_toasts("NOT delivered yet", 1, WAIT);
    // The warning's body carries the fallback (dbus-monitor prints the body after the summary).
    desk.wait_toasts("Call security 555-0100", 1, WAIT);
    let ids = spooled(&site.spool());
    assert_eq!(ids.len(), 1, "the undelivered alert is not in the spool");
    assert!(eventually(WAIT, || desk.tray_tooltip(&item).contains("NOT delivered")), "{}", desk.tray_tooltip(&item));

    let _back = site.start_collector(&slack);
    desk.wait_toasts("SOS delivered", 1, WAIT);
    slack.wait_for_text(WAIT, &ids[0]);
    assert!(eventually(WAIT, || spooled(&site.spool()).is_empty()));
    assert_eq!(slack.received().iter().filter(|r| r.text().contains(&ids[0]) && !is_reminder(&r.text())).count(), 1);
}

#[test]
fn an_alert_undelivered_when_the_agent_is_killed_is_sent_after_restart_once() {
    if !desktop::available() {
        return;
    }
    let desk = Desktop::start();
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let config = site.agent_config();
    let agent = desk.start_agent(&config, &site.state());
    agent.wait_log(WAIT, "SOS agent running");
    // No collector yet: the alert cannot be delivered.
    let out = desk.trigger(&["--message", "before the crash"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = alert_id_of(&out);
    // Spooled by the alert's own task, off the UI thread.
    assert!(eventually(WAIT, || spooled(&site.spool()) == vec![id.clone()]), "{:?}", spooled(&site.spool()));
    agent.kill();

    let _collector = site.start_collector(&slack);
    let restarted = desk.start_agent(&config, &site.state());
    restarted.wait_log(WAIT, "resending an alert left unacknowledged");
    let post = slack.wait_for_text(WAIT, &id);
    assert!(post.text().contains("before the crash"));
    desk.wait_toasts("SOS delivered", 1, WAIT);
    assert!(eventually(WAIT, || spooled(&site.spool()).is_empty()));
    assert_eq!(slack.received().iter().filter(|r| r.text().contains(&id) && !is_reminder(&r.text())).count(), 1);
}

#[test]
fn a_second_agent_in_the_same_session_refuses_to_start() {
    if !desktop::available() {
        return;
    }
    let desk = Desktop::start();
    let site = Site::new();
    let config = site.agent_config();
    let first = desk.start_agent(&config, &site.state());
    first.wait_log(WAIT, "SOS agent running");
    let out = desk.command(sos_e2e::bin::bin("sos-agent")).args(["run", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_click_during_the_cancel_window_stops_the_sos_and_waiting_it_out_sends_it() {
    if !desktop::available() {
        return;
    }
    let desk = Desktop::start();
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let _collector = site.start_collector(&slack);
    let config = site.agent_config_with("wording = \"plain\"\ntray_click = \"single\"\ncancel_window_ms = 1500\n");
    let agent = desk.start_agent(&config, &site.state());
    agent.wait_log(WAIT, "hotkey registered");
    let item = desk.tray_item_of(agent.pid(), WAIT);

    // An accidental press, cancelled by a click on the icon within the window.
    desk.key("ctrl+alt+s");
    desk.wait_toasts("Sending SOS in 2 s", 1, WAIT);
    desk.click_tray(&item);
    desk.wait_toasts("SOS cancelled", 1, WAIT);
    agent.wait_log(WAIT, "cancelled during its cancel window");

    // A press left alone goes out when the window is over.
    desk.key("ctrl+alt+s");
    desk.wait_toasts("Sending SOS in 2 s", 2, WAIT);
    desk.wait_toasts("SOS delivered", 1, WAIT);
    // The explicit trigger is a barrier: nothing of the cancelled press can arrive after it.
    let out = desk.trigger(&[]);
    slack.wait_for_text(WAIT, &alert_id_of(&out));
    let accepted = slack.received().iter().filter(|r| r.status == 200).count();
    assert_eq!(accepted, 2, "the cancelled press must not have been sent: {:#?}", slack.received());
    assert_eq!(agent.log().matches("SOS fired").count(), 2);
}

#[test]
fn a_hotkey_held_by_another_application_shows_attention_and_the_rest_still_works() {
    if !desktop::available() {
        return;
    }
    let desk = Desktop::start();
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let _collector = site.start_collector(&slack);
    // Another program (here: another agent, in another session on the same display) holds
    // Ctrl+Alt+S first.
    let holder = desk.start_agent(&site.agent_config(), &site.state());
    holder.wait_log(WAIT, "hotkey registered");

    let other_runtime = site.dir.path().join("runtime-2");
    let config = site.dir.path().join("agent-2.toml");
    std::fs::write(&config, std::fs::read_to_string(site.agent_config()).unwrap().replace("/spool", "/spool-2"))
        .unwrap();
    let agent = desk.start_agent_in(&config, &site.dir.path().join("state-2"), &other_runtime);
    let log = agent.wait_log(WAIT, "the hotkey is not available");
    assert!(log.contains("already taken"), "{log}");
    let item = desk.tray_item_of(agent.pid(), WAIT);
    assert!(
        eventually(WAIT, || desk.tray_tooltip(&item).contains("hotkey unavailable")),
        "{}",
        desk.tray_tooltip(&item)
    );

    // The icon and `sos-agent trigger` still send an SOS.
    desk.click_tray(&item);
    agent.wait_log(WAIT, "source=\"tray click\" test=false");
    let out = desk.trigger_in(&other_runtime, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("running agent"), "{}", String::from_utf8_lossy(&out.stderr));
    slack.wait_for_text(WAIT, &alert_id_of(&out));
    let alerts = || {
        slack
            .received()
            .iter()
            .filter(|r| !is_reminder(&r.text()))
            .map(|r| r.text().matches("*SOS from").count())
            .sum::<usize>()
    };
    assert!(eventually(WAIT, || alerts() == 2), "{:#?}", slack.received());
}

/// The agent's toasts: those whose application name is `app`.
fn of(app: &str, notifies: &[Notify]) -> Vec<Notify> {
    notifies.iter().filter(|n| n.app_name == app).cloned().collect()
}

/// Every toast in `toasts` is one notification: the first is new and each later one replaces it
/// by the id the daemon returned. Returns that id.
fn one_notification(toasts: &[Notify]) -> u32 {
    let first = toasts.first().expect("no toast");
    assert_eq!(first.replaces_id, 0, "the first toast of an alert is a new notification: {toasts:#?}");
    let id = first.id.expect("the daemon answered the first toast");
    for t in toasts {
        assert_eq!(t.replaces_id, if std::ptr::eq(t, first) { 0 } else { id }, "{t:#?} does not replace {id}");
        assert_eq!(t.id, Some(id), "{t:#?}: the daemon kept the notification's id");
    }
    id
}

#[test]
fn an_alerts_toasts_replace_one_another_from_the_countdown_to_delivered() {
    if !desktop::available() {
        return;
    }
    let desk = Desktop::start();
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    // No collector yet: the press counts down, goes out, is not delivered, then is.
    let config = site.agent_config_with("wording = \"plain\"\ntray_click = \"single\"\ncancel_window_ms = 1500\n");
    let agent = desk.start_agent(&config, &site.state());
    agent.wait_log(WAIT, "hotkey registered");
    desk.key("ctrl+alt+s");
    desk.wait_toasts("NOT delivered yet", 1, WAIT);
    let _collector = site.start_collector(&slack);
    desk.wait_toasts("SOS delivered", 1, WAIT);
    let toasts = desk.wait_notifies(WAIT, "the daemon's answer to every toast", |n| {
        let sos = of("SOS", n);
        sos.last().is_some_and(|t| t.summary.starts_with("SOS delivered")) && sos.iter().all(|t| t.id.is_some())
    });
    let toasts = of("SOS", &toasts);
    one_notification(&toasts);
    // Nothing of the countdown or the warning is left beside "SOS delivered".
    assert_eq!(desk.toasts_on_screen(), 1, "{toasts:#?}");
    let summaries: Vec<&str> = toasts.iter().map(|t| t.summary.as_str()).collect();
    assert_eq!(
        summaries[..3],
        ["Sending SOS in 2 s", "Sending SOS…", "SOS NOT delivered yet — still trying."],
        "{toasts:#?}"
    );
    slack.wait_for(WAIT, "the SOS", |r| r.iter().any(|x| x.status == 200));
}

#[test]
fn a_stopped_countdown_is_replaced_not_left_on_screen() {
    if !desktop::available() {
        return;
    }
    let desk = Desktop::start();
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let _collector = site.start_collector(&slack);
    let config = site.agent_config_with("wording = \"plain\"\ntray_click = \"single\"\ncancel_window_ms = 20000\n");
    let agent = desk.start_agent(&config, &site.state());
    agent.wait_log(WAIT, "hotkey registered");
    let item = desk.tray_item_of(agent.pid(), WAIT);

    // dunst advertises actions, so the countdown offers one; its text names the icon, never
    // "click here" (a left click only closes a toast under dunst).
    desk.key("ctrl+alt+s");
    let countdown = desk.wait_notifies(WAIT, "the countdown", |n| of("SOS", n).iter().any(|t| t.id.is_some()));
    let countdown = of("SOS", &countdown);
    assert_eq!(countdown[0].actions, vec!["stop", "Stop — don't send"], "{countdown:#?}");
    assert!(countdown[0].body.contains("click the SOS icon") && !countdown[0].body.contains("here"), "{countdown:#?}");
    // The daemon invokes it (as a middle click does): the press is stopped and its toast says so
    // in place of the countdown.
    desk.choose_toast_action();
    agent.wait_log(WAIT, "cancelled during its cancel window");
    let first = desk.wait_notifies(WAIT, "the stop", |n| {
        of("SOS", n).iter().any(|t| t.summary == "SOS cancelled" && t.id.is_some())
    });
    one_notification(&of("SOS", &first));
    assert_eq!(desk.toasts_on_screen(), 1);

    // A second press, stopped from the tray icon: its own notification, replaced in place.
    desk.close_all_toasts();
    assert!(eventually(WAIT, || desk.toasts_on_screen() == 0));
    desk.key("ctrl+alt+s");
    let seen = of("SOS", &first).len();
    desk.wait_notifies(WAIT, "the second countdown", |n| of("SOS", n).len() > seen);
    desk.click_tray(&item);
    let all = desk.wait_notifies(WAIT, "the second stop", |n| {
        of("SOS", n).iter().filter(|t| t.summary == "SOS cancelled" && t.id.is_some()).count() == 2
    });
    let second = one_notification(&of("SOS", &all)[seen..]);
    assert_ne!(second, one_notification(&of("SOS", &first)), "each press its own notification");
    assert_eq!(desk.toasts_on_screen(), 1, "the second press's final state, nothing else");

    // The explicit trigger is a barrier: nothing of the stopped presses was sent.
    let out = desk.trigger(&[]);
    slack.wait_for_text(WAIT, &alert_id_of(&out));
    assert_eq!(slack.received().len(), 1, "{:#?}", slack.received());
}

#[test]
fn discreet_defaults_a_lone_click_sends_nothing_a_double_click_counts_down_and_no_toast_says_sos() {
    if !desktop::available() {
        return;
    }
    let desk = Desktop::start();
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let _collector = site.start_collector(&slack);
    // The defaults: no wording, tray_click or cancel_window_ms.
    let agent = desk.start_agent(&site.agent_config_with(""), &site.state());
    agent.wait_log(WAIT, "hotkey registered");
    let item = desk.tray_item_of(agent.pid(), WAIT);
    assert!(eventually(WAIT, || desk.tray_tooltip(&item).contains("double-click")), "{}", desk.tray_tooltip(&item));

    // One click (reaching for the clock, say) sends nothing, and says how to send.
    desk.click_tray(&item);
    agent.wait_log(WAIT, "a single click on the icon sent nothing");
    desk.wait_toasts("Nothing sent", 1, WAIT);
    desk.close_all_toasts();
    assert!(eventually(WAIT, || desk.toasts_on_screen() == 0));

    // Clicking frantically: the first two clicks are a press; the next two, right after, do not
    // stop it. It waits out the 5 s window, then goes out.
    for _ in 0..4 {
        desk.click_tray(&item);
    }
    desk.wait_toasts("Sending in 5 s", 1, WAIT);
    agent.wait_log(WAIT, "the same press, not a request to stop it");
    // A left click on the countdown toast only closes it (dunst's default): the SOS still goes.
    assert!(eventually(WAIT, || desk.toasts_on_screen() == 1));
    desk.left_click_toast();
    assert!(eventually(WAIT, || desk.toasts_on_screen() == 0), "the click did not close the toast");
    desk.wait_toasts("Received", 1, WAIT);
    slack.wait_for(WAIT, "the SOS", |r| r.iter().any(|x| x.status == 200));
    assert_eq!(agent.log().matches("SOS fired").count(), 1);
    assert!(!agent.log().contains("cancelled during its cancel window"));

    // Nothing on screen names the alarm.
    let toasts = desk.wait_notifies(WAIT, "the answers", |n| n.iter().all(|t| t.id.is_some()));
    assert!(toasts.iter().all(|t| t.app_name == "Assist"), "{toasts:#?}");
    for t in &toasts {
        let text = format!("{} {}", t.summary, t.body).to_lowercase();
        assert!(!text.contains("sos") && !text.contains("help"), "{t:#?}");
    }
    assert!(eventually(WAIT, || desk.tray_tooltip(&item).contains("received at")), "{}", desk.tray_tooltip(&item));
    assert!(!desk.tray_tooltip(&item).contains("SOS"), "{}", desk.tray_tooltip(&item));
}

/// A spool entry that is not an alert, and one whose alert could not be sealed as it is (its
/// message was never fitted): what a damaged disk or an older agent can leave behind.
fn poison_the_spool(spool: &Path) {
    std::fs::create_dir_all(spool).unwrap();
    std::fs::write(spool.join("00000000000000000000000000000bad.json"), b"{\"sos\": trunc").unwrap();
    let unsealable = serde_json::json!({ "sos": {
        "alert_id": "0000000000000000000000000000dead", "test": false, "triggered_at": sos_shared::unix_now(),
        "attempt": 0, "user": "u", "host": "h", "ip": "", "location": "", "message": "x".repeat(2000), "agent": "old"
    }});
    std::fs::write(spool.join("0000000000000000000000000000dead.json"), unsealable.to_string()).unwrap();
}

#[test]
fn a_long_message_through_trigger_and_a_poisoned_spool_never_stop_the_next_press() {
    if !desktop::available() {
        return;
    }
    let desk = Desktop::start();
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let _collector = site.start_collector(&slack);
    poison_the_spool(&site.spool());
    let agent = desk.start_agent(&site.agent_config(), &site.state());
    agent.wait_log(WAIT, "hotkey registered");

    // The entry that is not an alert is set aside and shown; the overlong alert is sent, cut.
    assert!(
        eventually(WAIT, || site.spool().join("rejected/00000000000000000000000000000bad.json").exists()),
        "{}",
        agent.log()
    );
    desk.wait_toasts("can never be sent", 1, WAIT);
    let post = slack.wait_for_text(WAIT, "0000000000000000000000000000dead").text();
    assert!(post.contains("…[cut]"), "{post}");

    // A message far too long for a datagram, handed over by `sos-agent trigger`: cut, marked, sent.
    let long = "x".repeat(5000);
    let out = desk.trigger(&["--message", &long]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("running agent"), "{}", String::from_utf8_lossy(&out.stderr));
    let post = slack.wait_for_text(WAIT, &alert_id_of(&out)).text();
    assert!(post.contains("…[cut]"), "{post}");

    // And the next press goes out too.
    desk.key("ctrl+alt+s");
    assert!(
        eventually(WAIT, || slack.received().iter().map(|r| r.text().matches("*SOS from").count()).sum::<usize>() >= 3),
        "the press after the long message was not delivered\n{}",
        agent.log()
    );
    desk.wait_toasts("SOS delivered", 3, WAIT);
    assert!(eventually(WAIT, || spooled(&site.spool()).is_empty()));
    assert_eq!(agent.log().matches("a spooled alert can never be sent").count(), 1, "{}", agent.log());
}

#[test]
fn with_a_spool_that_cannot_be_created_the_tray_agent_still_delivers_a_hotkey_press() {
    if !desktop::available() {
        return;
    }
    let desk = Desktop::start();
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let _collector = site.start_collector(&slack);
    // A file where the spool's parent directory should be: no directory can be made there,
    // not even by root.
    let blocked = site.dir.path().join("not-a-directory");
    std::fs::write(&blocked, b"").unwrap();
    let config = site.agent_config();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(&site.spool().display().to_string(), &blocked.join("spool").display().to_string()),
    )
    .unwrap();

    let agent = desk.start_agent(&config, &site.state());
    agent.wait_log(WAIT, "hotkey registered");
    let item = desk.tray_item_of(agent.pid(), WAIT);
    assert!(
        eventually(WAIT, || desk.tray_tooltip(&item).contains("cannot be saved on disk")),
        "{}\n--- agent:\n{}",
        desk.tray_tooltip(&item),
        agent.log()
    );
    desk.key("ctrl+alt+s");
    slack.wait_for(WAIT, "the hotkey's SOS", |r| r.iter().any(|x| x.status == 200));
    desk.wait_toasts("SOS delivered", 1, WAIT);
}

#[test]
fn an_alert_left_by_a_failed_send_is_delivered_by_the_running_agent() {
    if !desktop::available() {
        return;
    }
    let desk = Desktop::start();
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let config = site.agent_config();
    let agent = desk.start_agent(&config, &site.state());
    agent.wait_log(WAIT, "SOS agent running");

    // No collector: `send` gives up, and hands the alert to the running agent.
    let out = desk
        .command(sos_e2e::bin::bin("sos-agent"))
        .args(["send", "--timeout", "1", "--message", "from a script", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("taken it over"), "{}", String::from_utf8_lossy(&out.stderr));
    let id = alert_id_of(&out);

    let _collector = site.start_collector(&slack);
    // A bound on failure only (the agent's next retry is due within seconds): no time is promised.
    let post = slack.wait_for_text(WAIT, &id);
    assert!(post.text().contains("from a script"));
    desk.wait_toasts("SOS delivered", 1, WAIT);
    assert!(eventually(WAIT, || spooled(&site.spool()).is_empty()));
    assert_eq!(slack.received().iter().filter(|r| r.text().contains(&id) && !is_reminder(&r.text())).count(), 1);
}

#[test]
fn an_alert_left_in_the_spool_by_a_killed_send_is_picked_up_by_the_running_agent() {
    if !desktop::available() {
        return;
    }
    let desk = Desktop::start();
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let _collector = site.start_collector(&slack);
    let agent = desk.start_agent(&site.agent_config(), &site.state());
    agent.wait_log(WAIT, "SOS agent running");
    // What a `send` killed before its first transmission leaves: an entry nobody holds.
    std::fs::create_dir_all(site.spool()).unwrap();
    let pressed = sos_shared::unix_now() - 3600;
    let entry = serde_json::json!({ "sos": {
        "alert_id": "0123456789abcdef0123456789abcdef", "test": false, "triggered_at": pressed,
        "attempt": 0, "user": "u", "host": "h", "ip": "", "location": "Front desk", "message": "left behind", "agent": "sos-agent"
    }});
    // Written whole under another name, then renamed, as `send` does: the running agent's
    // rescan must never read it half-written (it would set it aside as damaged).
    let partial = site.spool().join("0123456789abcdef0123456789abcdef.partial");
    std::fs::write(&partial, entry.to_string()).unwrap();
    std::fs::rename(&partial, site.spool().join("0123456789abcdef0123456789abcdef.json")).unwrap();
    slack.wait_for_text(WAIT, "0123456789abcdef0123456789abcdef");
    // Its toast says when it was pressed, not only when it arrived.
    desk.wait_toasts("(pressed at", 1, WAIT);
}
