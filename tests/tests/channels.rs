//! End-to-end: the real binaries and real HTTP servers answering as Twilio, Teams, ntfy and a
//! Standard Webhooks receiver (tests/src/standins.rs): each channel's messages within its
//! service's limits, retried as the service asks, given up with the reason shown, its secrets
//! never in the collector's output; the webhook's 410; routing per tier and policy.

use std::time::Duration;

use sos_e2e::process::alert_id_of;
use sos_e2e::site::Site;
use sos_e2e::standins::{Reply, Service, StandIn, INVALID_NUMBER, NTFY_MAX_MESSAGE, TEAMS_MAX_BYTES, TWILIO_MAX_BODY};
use sos_e2e::{agent_send, eventually, CollectorProcess};

const WAIT: Duration = Duration::from_secs(30);
const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TWILIO_TOKEN: &str = "tw1l1oT0kenS3cret";
const NTFY_TOKEN: &str = "tk_ntfyT0kenS3cret";
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A collector config with quick retries and `extra` tables; `outbox` lines go in `[outbox]`.
fn config(site: &Site, outbox: &str, extra: &str) -> String {
    format!(
        "listen = \"{}\"\ndata_dir = \"{}\"\nkey = \"{}\"\nshutdown_grace_secs = 2\n\
         [outbox]\nfirst_retry_secs = 1\nmax_retry_secs = 2\nattempt_timeout_secs = 5\ncoalesce_window_ms = 200\n{outbox}\n{extra}",
        site.addr,
        site.data_dir().display(),
        site.key_text,
    )
}

fn send(site: &Site, args: &[&str]) -> String {
    let out = agent_send(&site.agent_config(), args);
    assert!(out.status.success(), "sos-agent send failed: {}", String::from_utf8_lossy(&out.stderr));
    alert_id_of(&out)
}

/// None of `secrets` in the collector's output so far, nor in `sos-collector alerts`.
fn assert_no_secret(collector: &CollectorProcess, secrets: &[&str]) {
    let log = collector.log();
    let listing = String::from_utf8_lossy(&collector.alerts_cli().stdout).into_owned();
    for s in secrets {
        assert!(!log.contains(s), "the collector's output holds the secret {s:?}:\n{log}");
        assert!(!listing.contains(s), "`alerts` shows the secret {s:?}:\n{listing}");
    }
}

fn twilio() -> StandIn {
    StandIn::start(Service::Twilio { account_sid: SID.into(), auth_token: TWILIO_TOKEN.into() }, vec![])
}

fn sms_table(twilio: &StandIn, to: &str) -> String {
    format!(
        "[notify.sms]\naccount_sid = \"{SID}\"\nauth_token = \"{TWILIO_TOKEN}\"\nfrom = \"+15550000000\"\nto = [{to}]\napi_url = \"{}\"\n",
        twilio.url
    )
}

#[test]
fn sms_goes_to_each_number_once_within_twilios_limits_honouring_429_and_an_invalid_number_fails_alone() {
    let site = Site::new();
    let twilio = twilio();
    // The first request is rate limited for 2 s.
    twilio.script(vec![Reply::twilio(429, 20429, "Too Many Requests", Some(2))]);
    let responders = format!(
        "[[responders]]\nname = \"Sam Lee\"\nphone = \"+1 (555) 000-0001\"\n\
         [[responders]]\nname = \"Kim\"\nphone = \"{INVALID_NUMBER}\"\n\
         [escalation]\nemergency = [ {{ notify = [\"everyone\", \"channel:sms\"] }} ]\n"
    );
    let cfg = config(&site, "", &format!("{}{responders}", sms_table(&twilio, "\"+15550000009\"")));
    let collector = site.start_with(&cfg);
    // A message far over one SMS, in characters outside GSM-7.
    let id = send(&site, &["--message", &"помогите 🚨 ".repeat(400)]);

    // The numbers are sent to at once (one that hangs must not hold up the others): the first
    // request to arrive, whichever number (the invalid one too), is the one answered 429, and
    // that number is tried again once Retry-After has passed.
    let retried = |r: &[sos_e2e::standins::Received]| {
        r.first().is_some_and(|first| r[1..].iter().any(|x| x.form()["To"] == first.form()["To"]))
    };
    let got = twilio.wait_for(WAIT, "an SMS to each valid number and the rate-limited one retried", |r| {
        retried(r)
            && ["+15550000001", "+15550000009"]
                .iter()
                .all(|n| r.iter().any(|x| x.status == 201 && x.form()["To"] == *n))
    });
    let first = &got[0];
    assert_eq!(first.status, 429);
    let limited = first.form()["To"].clone();
    let retry = got[1..].iter().find(|x| x.form()["To"] == limited).unwrap();
    assert!(retry.at.duration_since(first.at) >= Duration::from_millis(1900), "Retry-After: 2 was not honoured");
    // Retried, the number is answered as its own: a valid one is sent, the invalid one refused.
    assert_eq!(retry.status, if limited == INVALID_NUMBER { 400 } else { 201 }, "{limited}");
    for x in got.iter().filter(|x| x.status == 201) {
        let body = &x.form()["Body"];
        assert!(body.contains(&id) && body.contains("SOS"), "{body}");
        assert!(body.chars().count() <= TWILIO_MAX_BODY, "{} characters", body.chars().count());
        // UCS-2: at most 10 segments of 67.
        assert!(body.encode_utf16().count() <= 670, "{} UTF-16 units", body.encode_utf16().count());
    }
    // One SMS per number: the 429 did not make a valid number get it twice.
    for n in ["+15550000001", "+15550000009"] {
        assert_eq!(got.iter().filter(|x| x.status == 201 && x.form()["To"] == n).count(), 1, "{n}");
    }
    assert!(eventually(WAIT, || site.delivery(&id, "sms").is_some_and(|d| d.0 == "delivered")));
    let log = collector.wait_log(WAIT, "NOT DELIVERED to this number");
    assert!(log.contains("21211") && log.contains(INVALID_NUMBER), "{log}");
    assert_no_secret(&collector, &[TWILIO_TOKEN]);
}

#[test]
fn a_channel_that_keeps_failing_is_given_up_with_the_reason_shown() {
    let site = Site::new();
    let twilio = twilio();
    let teams = StandIn::start(Service::Teams, vec![]);
    for s in [&twilio, &teams] {
        s.script(vec![Reply::Status(503, "{\"message\":\"down\"}".into(), Some(1)); 50]);
    }
    let cfg = config(
        &site,
        "give_up_after_secs = 4",
        &format!("{}[notify.teams]\nwebhook_url = \"{}\"\n", sms_table(&twilio, "\"+15550000009\""), teams.url),
    );
    let collector = site.start_with(&cfg);
    let id = send(&site, &[]);
    for ch in ["sms", "teams"] {
        assert!(
            eventually(WAIT, || site.delivery(&id, ch).is_some_and(|d| d.0 == "failed")),
            "{ch}: {:?}",
            site.delivery(&id, ch)
        );
        let (_, error) = site.delivery(&id, ch).unwrap();
        let error = error.unwrap_or_default();
        assert!(error.contains("gave up after") && error.contains("503"), "{ch}: {error}");
    }
    assert!(twilio.received().len() >= 2 && teams.received().len() >= 2, "retried before giving up");
    let listing = String::from_utf8_lossy(&collector.alerts_cli().stdout).into_owned();
    assert!(listing.contains("sms") && listing.contains("failed") && listing.contains("503"), "{listing}");
    assert_no_secret(&collector, &[TWILIO_TOKEN, "t3amsS1gSecret"]);
}

#[test]
fn teams_and_ntfy_carry_hostile_huge_alerts_within_their_limits_with_an_im_responding_action() {
    let site = Site::new();
    let teams = StandIn::start(Service::Teams, vec![Reply::Status(429, String::new(), Some(2))]);
    let ntfy = StandIn::start(Service::Ntfy { token: Some(NTFY_TOKEN.into()) }, vec![]);
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let cfg = config(
        &site,
        "",
        &format!(
            "[notify.teams]\nwebhook_url = \"{}\"\n[notify.ntfy]\nserver = \"{}\"\ntopic = \"sos-e2e\"\ntoken = \"{NTFY_TOKEN}\"\n\
             [http]\nlisten = \"{http}\"\npublic_url = \"http://{http}\"\n",
            teams.url, ntfy.url
        ),
    );
    let collector = site.start_with(&cfg);
    let hostile = format!("[click](https://evil.example) **x** \"}}]}} <at>all</at> {}", "🚨ж".repeat(3000));
    let id = send(&site, &["--message", &hostile]);

    let card = teams.wait_for_text(WAIT, &id);
    assert_eq!(card.status, 202);
    assert!(card.body.len() <= TEAMS_MAX_BYTES, "{} bytes", card.body.len());
    let got = teams.received();
    assert_eq!(got[0].status, 429);
    assert!(card.at.duration_since(got[0].at) >= Duration::from_millis(1900), "Retry-After: 2 was not honoured");
    let v = card.json();
    let content = &v["attachments"][0]["content"];
    assert!(content["body"].as_array().unwrap().iter().all(|b| b["type"] == "RichTextBlock"), "{v}");
    let action = &content["actions"][0];
    assert_eq!(action["title"], "I'm responding");
    assert!(action["url"].as_str().unwrap().starts_with(&format!("http://{http}/ack/")), "{action}");

    let note = ntfy.wait_for_text(WAIT, &id);
    let v = note.json();
    assert_eq!(v["priority"], 5);
    assert!(v["message"].as_str().unwrap().len() <= NTFY_MAX_MESSAGE);
    assert!(v["message"].as_str().unwrap().contains("[click](https://evil.example)"), "shown as typed: {v}");
    assert_eq!(v["actions"][0]["label"], "I'm responding");
    assert!(v["actions"][0]["url"].as_str().unwrap().starts_with(&format!("http://{http}/ack/")), "{v}");
    assert!(eventually(WAIT, || site.delivery(&id, "teams").is_some_and(|d| d.0 == "delivered")
        && site.delivery(&id, "ntfy").is_some_and(|d| d.0 == "delivered")));
    // /metrics counts notifications by channel, the new ones included.
    let metrics = sos_e2e::console::http(http, "GET", "/metrics", "", &[]).body;
    for ch in ["teams", "ntfy"] {
        assert!(metrics.contains(&format!("channel=\"{ch}\",result=\"delivered\"}} 1")), "{ch}:\n{metrics}");
    }
    assert_no_secret(&collector, &[NTFY_TOKEN, "t3amsS1gSecret"]);
}

#[test]
fn the_webhook_is_signed_retried_under_one_id_and_a_410_disables_it_across_restarts_with_a_notice() {
    let site = Site::new();
    let hook = StandIn::start(Service::Webhook { secret: WHSEC.into() }, vec![Reply::Status(500, String::new(), None)]);
    let ntfy = StandIn::start(Service::Ntfy { token: None }, vec![]);
    let cfg = config(
        &site,
        "",
        &format!(
            "[notify.webhook]\nurl = \"{}\"\nsecret = \"{WHSEC}\"\n[notify.ntfy]\nserver = \"{}\"\ntopic = \"admins\"\n",
            hook.url, ntfy.url
        ),
    );
    let collector = site.start_with(&cfg);
    let id = send(&site, &[]);
    // The stand-in verifies every signature independently (401 otherwise): 204 means it verified.
    let got = hook.wait_for(WAIT, "the retry", |r| r.iter().any(|x| x.status == 204));
    let (first, ok) = (&got[0], got.iter().find(|x| x.status == 204).unwrap());
    assert_eq!(first.status, 500);
    assert_eq!(first.headers["webhook-id"], ok.headers["webhook-id"], "the id is stable across retries");
    assert!(ok.headers["webhook-id"].contains(&id));
    assert!(ok.at.duration_since(first.at) >= Duration::from_millis(4900), "the schedule's 5 s");
    let v = ok.json();
    assert_eq!(v["type"], "sos.alert");
    assert_eq!(v["data"]["alert_id"], id.as_str());

    // 410 Gone: disabled, administrators told through the other channels.
    hook.script(vec![Reply::Status(410, String::new(), None)]);
    let second = send(&site, &[]);
    let notice = ntfy.wait_for_text(WAIT, "webhook endpoint disabled");
    assert!(notice.text().contains("410"), "{}", notice.text());
    assert!(eventually(WAIT, || site.delivery(&second, "webhook").is_some_and(|d| d.0 == "failed")));
    let before = hook.received().len();
    let third = send(&site, &[]);
    assert!(eventually(WAIT, || site.delivery(&third, "webhook").is_some_and(|d| d.0 == "failed")));
    let reason = site.delivery(&third, "webhook").unwrap().1.unwrap_or_default();
    assert!(reason.contains("disabled"), "{reason}");
    assert_eq!(hook.received().len(), before, "nothing is sent to a disabled endpoint");
    assert_no_secret(&collector, &[WHSEC, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "h00kPathSecret"]);
    let (status, _) = collector.terminate();
    assert!(status.success());

    // A restart keeps it disabled.
    let collector = site.start_with(&cfg);
    let fourth = send(&site, &[]);
    assert!(eventually(WAIT, || site.delivery(&fourth, "webhook").is_some_and(|d| d.0 == "failed")));
    assert_eq!(hook.received().len(), before);
    // Deleting the file enables it again.
    std::fs::remove_file(site.data_dir().join("webhook.disabled")).unwrap();
    let fifth = send(&site, &[]);
    hook.wait_for_text(WAIT, &fifth);
    drop(collector);
}

#[test]
fn each_tier_and_policy_notifies_only_its_channels() {
    let site = Site::new();
    let twilio = twilio();
    let ntfy = StandIn::start(Service::Ntfy { token: None }, vec![]);
    let cfg = config(
        &site,
        "",
        &format!(
            "{}[notify.ntfy]\nserver = \"{}\"\ntopic = \"sos\"\n\
             [[responders]]\nname = \"Sam\"\nphone = \"+15550000001\"\n\
             [escalation]\nemergency = [ {{ notify = [\"Sam\", \"channel:sms\"], wait_secs = 1 }}, {{ notify = [\"channel:ntfy\"] }} ]\n\
             drill = [ {{ notify = [\"channel:ntfy\"] }} ]\n",
            sms_table(&twilio, ""),
            ntfy.url
        ),
    );
    let _collector = site.start_with(&cfg);
    let drill = send(&site, &["--test"]);
    ntfy.wait_for_text(WAIT, &drill);
    let real = send(&site, &[]);
    // Tier 1: SMS to Sam only; a second later, tier 2: ntfy.
    let sms = twilio.wait_for(WAIT, "the SMS", |r| r.iter().any(|x| x.status == 201));
    // Sam's phone only (tier 1's responder; the reminder when tier 2 fires goes to Sam too).
    assert!(sms.iter().filter(|x| x.status == 201).all(|x| x.form()["To"] == "+15550000001"), "{sms:?}");
    let escalated = ntfy.wait_for_text(WAIT, &real);
    assert!(escalated.text().contains("tier 2"), "{}", escalated.text());
    // The drill never went to SMS.
    assert!(twilio.received().iter().all(|x| !x.form().get("Body").is_some_and(|b| b.contains("DRILL"))));
    assert!(site.delivery(&drill, "sms").is_none());
}
