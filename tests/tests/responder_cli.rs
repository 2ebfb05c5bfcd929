//! The responder loop from the collector's command line, against the real binaries and the Slack
//! stand-in: escalation reminds a silent tier; `alerts ack` from another process stops the
//! escalation of the running collector; `alerts show` prints the timeline with the time to
//! acknowledge; resolve, cancel and checked reach Slack; `responders list`; bad names and ids.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sos_e2e::process::alert_id_of;
use sos_e2e::site::Site;
use sos_e2e::{agent_send, SlackStandIn};

const WAIT: Duration = Duration::from_secs(20);

/// Tier 1: Sam and Slack, `wait` s; tier 2: Kim and the log.
fn responders(wait: u64) -> String {
    format!(
        r#"
[[responders]]
name = "Sam Lee"
chat = "<@U0SAM>"
groups = ["security"]
agents = ["sam-desk"]

[[responders]]
name = "Kim Park"
chat = "<@U0KIM>"

[escalation]
emergency = [ {{ notify = ["group:security", "channel:slack"], wait_secs = {wait} }},
              {{ notify = ["Kim Park", "channel:log"] }} ]
"#
    )
}

fn start(site: &Site, slack: &SlackStandIn, wait: u64) -> sos_e2e::CollectorProcess {
    site.start_with(&format!("{}\n{}", site.collector_config(Some(slack), None), responders(wait)))
}

fn collector(site: &Site, args: &[&str]) -> Output {
    Command::new(sos_e2e::bin::bin("sos-collector"))
        .args(args)
        .arg("--config")
        .arg(site.dir.path().join("collector.toml"))
        .stdin(Stdio::null())
        .output()
        .expect("run sos-collector")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The outbox rows of `id`: (channel, kind, tier, state).
fn jobs(site: &Site, id: &str) -> Vec<(String, String, i64, String)> {
    let db = site.db();
    let mut s = db.prepare("SELECT channel, kind, tier, state FROM outbox WHERE alert_id = ?1 ORDER BY id").unwrap();
    s.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().map(Result::unwrap).collect()
}

#[test]
fn an_ack_from_the_command_line_stops_the_running_collectors_escalation() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let _c = start(&site, &slack, 8);
    let out = agent_send(&site.agent_config(), &["--message", "visitor shouting"]);
    assert!(out.status.success(), "{}", text(&out));
    let id = alert_id_of(&out);
    let post = slack.wait_for_text(WAIT, &id).text();
    let posted = std::time::Instant::now();
    assert!(post.contains("<@U0SAM>") && !post.contains("<@U0KIM>"), "tier 1 mentions its responders: {post}");

    let ack = collector(&site, &["alerts", "ack", &id, "--responder", "sam lee", "--note", "on my way"]);
    assert!(ack.status.success(), "{}", text(&ack));
    assert!(text(&ack).contains("acknowledged by Sam Lee"), "{}", text(&ack));
    assert!(posted.elapsed() < Duration::from_secs(8), "the test was too slow to ack within tier 1");
    let acked =
        slack.wait_for(WAIT, "the acknowledgement", |r| r.iter().any(|x| x.text().contains("Acknowledged by Sam Lee")));
    assert!(acked.iter().any(|x| x.text().contains("on my way") && x.text().contains(&id)));

    // Names are checked against the configuration, ids against the store.
    let bad = collector(&site, &["alerts", "ack", &id, "--responder", "Nobody"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("not a configured responder") && text(&bad).contains("\"Sam Lee\""), "{}", text(&bad));
    let bad = collector(&site, &["alerts", "ack", "not-an-id", "--responder", "Sam Lee"]);
    assert!(!bad.status.success() && text(&bad).contains("is not an alert id"), "{}", text(&bad));
    let unknown = "0000000000000000000000000000abcd";
    let bad = collector(&site, &["alerts", "ack", unknown, "--responder", "Sam Lee"]);
    assert!(!bad.status.success() && text(&bad).contains("no alert"), "{}", text(&bad));

    // Well past tier 1's 8 s: nothing of tier 2, no reminder, on Slack or in the store.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(posted.elapsed()));
    let posts: Vec<String> = slack.received().iter().map(|r| r.text()).filter(|t| t.contains(&id)).collect();
    assert!(posts.iter().all(|p| !p.contains("STILL UNANSWERED") && !p.contains("<@U0KIM>")), "{posts:?}");
    assert!(jobs(&site, &id).iter().all(|j| j.2 == 1), "{:?}", jobs(&site, &id));
    let db = site.db();
    let deadlines: i64 = db.query_row("SELECT count(*) FROM escalations", [], |r| r.get(0)).unwrap();
    assert_eq!(deadlines, 0);

    // The timeline, one line per event, with the time to acknowledge.
    let show = collector(&site, &["alerts", "show", &id]);
    assert!(show.status.success(), "{}", text(&show));
    let t = text(&show);
    assert!(t.contains("state:      acknowledged") && t.contains("time to acknowledge: "), "{t}");
    for line in ["received", "notified", "acknowledged"] {
        assert!(t.lines().any(|l| l.contains(&format!(" {line} "))), "{line} in {t}");
    }
    assert!(
        t.lines().any(|l| l.contains("acknowledged")
            && l.contains("Sam Lee")
            && l.contains("command_line")
            && l.contains("on my way")),
        "{t}"
    );

    // Again by the same responder: nothing changes, said plainly; by another: refused.
    let again = collector(&site, &["alerts", "ack", &id, "--responder", "Sam Lee"]);
    assert!(again.status.success() && text(&again).contains("already acknowledged"), "{}", text(&again));
    let other = collector(&site, &["alerts", "ack", &id, "--responder", "Kim Park"]);
    assert!(!other.status.success() && text(&other).contains("already acknowledged by Sam Lee"), "{}", text(&other));

    // Resolve reaches Slack too.
    let res = collector(&site, &["alerts", "resolve", &id, "--responder", "Kim Park", "--outcome", "visitor left"]);
    assert!(res.status.success(), "{}", text(&res));
    slack.wait_for(WAIT, "the resolution", |r| {
        r.iter().any(|x| x.text().contains("Resolved by Kim Park") && x.text().contains("visitor left"))
    });
}

#[test]
fn a_silent_tier_is_reminded_and_the_next_notified_then_a_cancellation_waits_for_a_check() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let c = start(&site, &slack, 2);
    let out = agent_send(&site.agent_config(), &[]);
    let id = alert_id_of(&out);
    slack.wait_for_text(WAIT, &id);
    let reminded = slack.wait_for(WAIT, "the reminder", |r| {
        r.iter().any(|x| x.text().contains("STILL UNANSWERED") && x.text().contains(&id))
    });
    let reminder = reminded.iter().find(|x| x.text().contains("STILL UNANSWERED")).unwrap().text();
    assert!(reminder.contains("<@U0SAM>"), "tier 1's responders are reminded: {reminder}");
    c.wait_log(WAIT, "tier 2 notified");
    let j = jobs(&site, &id);
    assert!(
        j.contains(&("log".into(), "alert".into(), 2, "delivered".into()))
            || j.iter().any(|x| x.0 == "log" && x.2 == 2),
        "{j:?}"
    );

    // The sender cancels: Slack (notified) is told; the alert stays open until checked.
    let cancel = Command::new(sos_e2e::bin::bin("sos-agent"))
        .args(["cancel", "--config"])
        .arg(site.agent_config())
        .arg(&id)
        .env("XDG_RUNTIME_DIR", site.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(cancel.status.success(), "{}", text(&cancel));
    slack.wait_for(WAIT, "the cancellation", |r| {
        r.iter().any(|x| x.text().contains("CANCELLED") && x.text().contains(&id))
    });
    let show = text(&collector(&site, &["alerts", "show", &id]));
    assert!(show.contains("state:      cancelled") && show.contains("NOT ACKNOWLEDGED"), "{show}");
    let checked = collector(&site, &["alerts", "checked", &id, "--responder", "Sam Lee", "--note", "she is fine"]);
    assert!(checked.status.success(), "{}", text(&checked));
    let show = text(&collector(&site, &["alerts", "show", &id]));
    assert!(show.contains("state:      checked") && show.contains("she is fine"), "{show}");
    // Tier 2 (the log and Kim, who has no desktop) reaches nobody: the sender is told plainly.
    for kind in ["notified", "reminded", "unanswered", "cancelled", "checked"] {
        assert!(show.lines().any(|l| l.contains(&format!(" {kind} "))), "{kind} in {show}");
    }
    let db = site.db();
    let notice: String =
        db.query_row("SELECT event FROM sender_notices WHERE alert_id = ?1", [&id], |r| r.get(0)).unwrap();
    assert_eq!(notice, "unanswered");
}

#[test]
fn nobody_answering_after_the_last_tier_reminds_every_tier_again_at_growing_gaps_until_an_ack() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    // Both tiers wait 2 s: tier 2 at 2 s, then rounds past it at 4 s and 8 s (twice the wait).
    let policy = responders(2).replace(r#""channel:log"] }"#, r#""channel:log"], wait_secs = 2 }"#);
    assert!(policy.contains("wait_secs = 2 }"), "{policy}");
    let c = site.start_with(&format!("{}\n{policy}", site.collector_config(Some(&slack), None)));
    let id = alert_id_of(&agent_send(&site.agent_config(), &[]));

    // A round reminds every tier: on Slack (notified by tier 1), Sam and Kim both mentioned.
    let round =
        |t: &str| t.contains(&id) && sos_e2e::is_reminder(t) && t.contains("<@U0SAM>") && t.contains("<@U0KIM>");
    slack.wait_for(Duration::from_secs(60), "two reminder rounds", |r| {
        r.iter().filter(|x| x.status == 200 && round(&x.text())).count() >= 2
    });
    c.wait_log(WAIT, "STILL UNANSWERED after every tier");
    // Each round is due twice the last's wait after the one before (the jobs' dates are when
    // each fired: at or after its deadline), the log notified in each.
    let fired = |tier: i64| -> Vec<(String, i64)> {
        let db = site.db();
        let mut s = db
            .prepare("SELECT channel, created_at_ms FROM outbox WHERE alert_id = ?1 AND tier = ?2 ORDER BY channel")
            .unwrap();
        s.query_map(rusqlite::params![id, tier], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    let (t2, r1, r2) = (fired(2), fired(3), fired(4));
    let channels = |f: &[(String, i64)]| f.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(channels(&r1), ["log", "slack"], "{r1:?}");
    assert_eq!(channels(&r2), ["log", "slack"], "{r2:?}");
    assert!(r1[0].1 - t2[0].1 >= 2_000, "the first round {} ms after tier 2", r1[0].1 - t2[0].1);
    assert!(
        r2[0].1 - r1[0].1 >= 4_000,
        "the second round {} ms after the first: not twice the wait",
        r2[0].1 - r1[0].1
    );

    // An acknowledgement ends the rounds: no deadline is left, the timeline shows them.
    let ack = collector(&site, &["alerts", "ack", &id, "--responder", "Kim Park"]);
    assert!(ack.status.success(), "{}", text(&ack));
    let deadlines: i64 = site.db().query_row("SELECT count(*) FROM escalations", [], |r| r.get(0)).unwrap();
    assert_eq!(deadlines, 0);
    let show = text(&collector(&site, &["alerts", "show", &id]));
    assert!(show.contains("every tier still unanswered after"), "{show}");
}

#[test]
fn responders_list_shows_each_responders_agents_and_whether_they_are_online() {
    let site = Site::new();
    let slack = SlackStandIn::start(vec![]);
    let _c = start(&site, &slack, 60);
    let out = collector(&site, &["responders", "list"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("Sam Lee") && t.contains("groups: security") && t.contains("chat: <@U0SAM>"), "{t}");
    assert!(t.contains("sam-desk") && t.contains("NOT ENROLLED"), "{t}");
    assert!(t.contains("Kim Park") && t.contains("no agents"), "{t}");
}

/// libfaketime's multi-threaded preload library, if installed (as `tests/delivery.rs` finds it).
fn libfaketime() -> Option<std::path::PathBuf> {
    let found = [
        "/usr/lib/x86_64-linux-gnu/faketime",
        "/usr/lib/aarch64-linux-gnu/faketime",
        "/usr/lib/faketime",
        "/usr/local/lib/faketime",
    ]
    .iter()
    .map(|d| std::path::Path::new(d).join("libfaketimeMT.so.1"))
    .find(|p| p.exists());
    assert!(found.is_some() || std::env::var_os("CI").is_none(), "CI is set but libfaketimeMT.so.1 is not found");
    if found.is_none() {
        eprintln!("skipping: libfaketime not installed (set CI=true to make this a failure)");
    }
    found
}

#[test]
fn a_clock_step_neither_fires_a_tier_early_nor_holds_it_back() {
    let Some(lib) = libfaketime() else { return };
    for step in ["+2h", "-1h"] {
        let site = Site::new();
        let slack = SlackStandIn::start(vec![]);
        let clock = site.dir.path().join("clock");
        std::fs::write(&clock, "+0\n").unwrap();
        let path = site.dir.path().join("collector.toml");
        std::fs::write(&path, format!("{}\n{}", site.collector_config(Some(&slack), None), responders(6))).unwrap();
        let mut command = Command::new(sos_e2e::bin::bin("sos-collector"));
        command
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .env("LD_PRELOAD", &lib)
            .env("FAKETIME_TIMESTAMP_FILE", &clock)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env_remove("FAKETIME");
        let _c = sos_e2e::CollectorProcess::spawn(command, site.addr, path);
        // The alert is stored after this instant: tier 2 is due 6 s after it at the earliest.
        let before = std::time::Instant::now();
        let id = alert_id_of(&agent_send(&site.agent_config(), &[]));
        slack.wait_for_text(WAIT, &id);
        std::fs::write(&clock, format!("{step}\n")).unwrap();
        let reminded = slack.wait_for(WAIT, "the reminder", |r| {
            r.iter().any(|x| x.text().contains("STILL UNANSWERED") && x.text().contains(&id))
        });
        let at = reminded.iter().find(|x| x.text().contains("STILL UNANSWERED")).unwrap().at;
        let after = at - before;
        assert!(after >= Duration::from_secs(6), "clock {step}: tier 2 fired {after:?} after the SOS (wait 6 s)");
        assert!(after < Duration::from_secs(14), "clock {step}: tier 2 fired {after:?} after the SOS (wait 6 s)");
    }
}
