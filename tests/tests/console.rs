//! The web console, end to end: the real collector with `[http]`, a real agent, and Debian's
//! chromium driven through chromium-driver (WebDriver, fantoccini) for what only a browser can
//! show (a page that updates without reload, a script that must not run, the CSP). The rest
//! (CSRF, login limits, headers, TLS, /metrics) over plain HTTP/1.1 and TLS sockets.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use serde_json::json;
use sos_e2e::console::{free_tcp_port, http, metric, parse_metrics, ConsoleSite, Reply, ADMIN, PASSWORD};
use sos_e2e::process::alert_id_of;
use sos_e2e::{agent_send, eventually, Peer};
use sos_shared::protocol::{NoticeEvent, Sos};
use sos_shared::{unix_now, AlertId, Message};

const WAIT: Duration = Duration::from_secs(20);

/// What an agent may send to try to run script in a responder's browser.
const XSS: &str = r#"<script>window.__xss=1</script><img src=x onerror="window.__xss=2;alert(2)">"#;
/// A location a spreadsheet would run as a formula, and markup.
const FORMULA_LOCATION: &str = r#"=HYPERLINK("http://evil.example") <b onmouseover=alert(3)>B</b>"#;

fn agent_config(c: &ConsoleSite) -> PathBuf {
    let p = c.site.agent_config();
    let text = std::fs::read_to_string(&p).unwrap();
    let text = text
        .lines()
        .map(|l| if l.starts_with("location") { format!("location = '{FORMULA_LOCATION}'") } else { l.to_owned() })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&p, text + "\n").unwrap();
    p
}

fn metrics(c: &ConsoleSite) -> Vec<sos_e2e::console::Sample> {
    let r = http(c.http, "GET", "/metrics", "", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    parse_metrics(&r.body).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{}", r.body))
}

#[test]
fn metrics_parse_strictly_and_count_what_happened() {
    let c = ConsoleSite::start("");
    let out = agent_send(&c.site.agent_config(), &["--message", "metrics"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = alert_id_of(&out);
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..3 {
        junk.send_to(b"not an SOS datagram", c.site.addr).unwrap();
    }
    for _ in 0..2 {
        let page = http(c.http, "GET", "/login", "", &[]);
        let (pre, csrf) = (page.cookie("sos_pre").unwrap(), page.csrf().unwrap());
        let r = http(
            c.http,
            "POST",
            "/login",
            &format!("sos_pre={pre}"),
            &[("csrf", &csrf), ("name", ADMIN), ("password", "wrong")],
        );
        assert_eq!(r.status, 401);
    }
    assert!(eventually(WAIT, || c.site.delivery(&id, "slack").is_some_and(|d| d.0 == "delivered")));
    let mut m = Vec::new();
    assert!(
        eventually(WAIT, || {
            m = metrics(&c);
            metric(&m, "sos_datagrams_refused_total", &[("reason", "malformed")]) == Some(3.0)
        }),
        "{m:?}"
    );
    assert_eq!(metric(&m, "sos_alerts_stored_total", &[]), Some(1.0));
    assert!(metric(&m, "sos_datagrams_received_total", &[]).unwrap() >= 4.0);
    assert_eq!(metric(&m, "sos_alerts", &[("type", "emergency"), ("state", "notified")]), Some(1.0));
    let all: f64 = m.iter().filter(|(n, _, _)| n == "sos_alerts").map(|(_, _, v)| v).sum();
    assert_eq!(all, 1.0, "one alert in all");
    assert_eq!(metric(&m, "sos_notifications", &[("channel", "slack"), ("result", "delivered")]), Some(1.0));
    assert_eq!(metric(&m, "sos_notifications", &[("channel", "slack"), ("result", "failed")]), Some(0.0));
    assert_eq!(metric(&m, "sos_console_logins_total", &[("result", "wrong")]), Some(2.0));
    assert_eq!(metric(&m, "sos_store_up", &[]), Some(1.0));
    assert_eq!(metric(&m, "sos_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    assert_eq!(metric(&m, "sos_datagrams_refused_total", &[("reason", "unauthenticated")]), Some(0.0));
}

#[test]
fn a_strict_parser_refuses_what_is_not_the_text_format() {
    for bad in [
        "sos_x 1",
        "# TYPE sos_x counter\nsos_x_total{a=\"1} 2",
        "# TYPE sos_x gauge\nsos_x one",
        "# EOF\n# TYPE a gauge",
    ] {
        assert!(parse_metrics(bad).is_err(), "{bad:?} parsed");
    }
}

#[test]
fn every_post_needs_its_csrf_token_and_logins_are_limited() {
    let c = ConsoleSite::start("");
    let session = c.login();
    let agents = http(c.http, "GET", "/agents", &session, &[]);
    assert_eq!(agents.status, 200);
    let csrf = agents.csrf().expect("the agents page has forms");
    // No token, a wrong one, the right one.
    assert_eq!(http(c.http, "POST", "/agents/enroll", &session, &[("name", "desk")]).status, 403);
    assert_eq!(http(c.http, "POST", "/agents/enroll", &session, &[("name", "desk"), ("csrf", "x")]).status, 403);
    let made = http(c.http, "POST", "/agents/enroll", &session, &[("name", "desk"), ("csrf", &csrf)]);
    assert_eq!(made.status, 200, "{}", made.body);
    assert!(made.body.contains("id=\"enrollment-code\""), "{}", made.body);
    // Logout needs it too, and ends the session.
    assert_eq!(http(c.http, "POST", "/logout", &session, &[]).status, 403);
    assert_eq!(http(c.http, "POST", "/logout", &session, &[("csrf", &csrf)]).status, 303);
    assert_eq!(http(c.http, "GET", "/alerts", &session, &[]).status, 303, "the session ended at logout");
    // A login form without its pre-session cookie.
    assert_eq!(
        http(c.http, "POST", "/login", "", &[("csrf", &csrf), ("name", ADMIN), ("password", PASSWORD)]).status,
        403
    );

    // Session fixation: a cookie set beforehand is never the session's.
    let page = http(c.http, "GET", "/login", "", &[]);
    let (pre, token) = (page.cookie("sos_pre").unwrap(), page.csrf().unwrap());
    let fixed = "sos_session=chosen-by-the-attacker-0123456789abcdefghijklmnop";
    let r = http(
        c.http,
        "POST",
        "/login",
        &format!("sos_pre={pre}; {fixed}"),
        &[("csrf", &token), ("name", ADMIN), ("password", PASSWORD)],
    );
    assert_eq!(r.status, 303);
    assert_ne!(r.cookie("sos_session").as_deref(), Some("chosen-by-the-attacker-0123456789abcdefghijklmnop"));
    assert_eq!(http(c.http, "GET", "/alerts", fixed, &[]).status, 303);

    // Five wrong passwords in a row lock the account: then even the right one is refused.
    let cookie = format!("sos_pre={pre}");
    for i in 0..5 {
        let r = http(
            c.http,
            "POST",
            "/login",
            &cookie,
            &[("csrf", &token), ("name", ADMIN), ("password", &format!("guess {i}"))],
        );
        assert_eq!(r.status, 401, "attempt {i}");
    }
    let r = http(c.http, "POST", "/login", &cookie, &[("csrf", &token), ("name", ADMIN), ("password", PASSWORD)]);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("Too many attempts"), "{}", r.body);
    // And from one source, whatever the name: a burst of 10, then limited.
    let mut limited = false;
    for i in 0..12 {
        let r = http(
            c.http,
            "POST",
            "/login",
            &cookie,
            &[("csrf", &token), ("name", &format!("nobody {i}")), ("password", "x")],
        );
        limited |= r.status == 429;
    }
    assert!(limited, "a source trying many names is limited");
}

#[test]
fn every_page_carries_the_security_headers_and_health_answers() {
    let c = ConsoleSite::start("");
    let session = c.login();
    for (path, cookie) in [("/login", ""), ("/alerts", session.as_str()), ("/nowhere", ""), ("/metrics", "")] {
        let r = http(c.http, "GET", path, cookie, &[]);
        let csp = r.header("content-security-policy").unwrap_or_else(|| panic!("{path}: no CSP"));
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{path}");
        assert_eq!(r.header("strict-transport-security"), None, "{path}: no HSTS over plain HTTP");
    }
    let cookie = http(c.http, "GET", "/login", "", &[]).headers.into_iter().find(|(k, _)| k == "set-cookie").unwrap().1;
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    assert_eq!(http(c.http, "GET", "/healthz", "", &[]).status, 200);
    let ready = http(c.http, "GET", "/readyz", "", &[]);
    assert_eq!(ready.status, 200, "{}", ready.body);
    // A page needs a session.
    assert_eq!(http(c.http, "GET", "/history/export.csv", "", &[]).status, 303);
}

#[test]
fn a_console_that_cannot_start_does_not_stop_the_collector() {
    // Its port is taken: SOS are still acknowledged and notified, and administrators are told.
    let site = sos_e2e::site::Site::new();
    let slack = sos_e2e::SlackStandIn::start(vec![]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = format!(
        "{}\n[http]\nlisten = \"{}\"\nadmins = [\"{ADMIN}\"]\n",
        site.collector_config(Some(&slack), None),
        taken.local_addr().unwrap()
    );
    let collector = site.start_with(&config);
    collector.wait_log(WAIT, "THE WEB CONSOLE DID NOT START");
    slack.wait_for_text(WAIT, "web console");
    let out = agent_send(&site.agent_config(), &["--message", "console down"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    slack.wait_for_text(WAIT, "console down");
}

/// A TLS client (rustls) that trusts the test CA, for one request.
fn https_get(addr: SocketAddr, path: &str) -> String {
    use rustls::pki_types::pem::PemObject as _;
    use std::io::{Read as _, Write as _};
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(fixtures.join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
    write!(tls, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn under_tls_cookies_are_secure_and_hsts_is_sent() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls");
    let c = ConsoleSite::start(&format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        fixtures.join("server.pem").display(),
        fixtures.join("server.key").display()
    ));
    let page = https_get(c.http, "/login");
    let lower = page.to_ascii_lowercase();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(lower.contains("strict-transport-security: max-age="), "{page}");
    let cookie = lower.lines().find(|l| l.starts_with("set-cookie:")).unwrap_or_default().to_owned();
    assert!(cookie.contains("__host-sos_pre=") && cookie.contains("; secure"), "{cookie}");
    // Plain HTTP on the TLS port gets no page.
    let plain = std::panic::catch_unwind(|| http(c.http, "GET", "/login", "", &[]));
    assert!(plain.map(|r| r.status != 200).unwrap_or(true));
}

// ---- the browser ----

/// chromium-driver on a free port, ended on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(name)).find(|p| p.is_file())
}

/// Start chromium-driver, or `None` (skip) when chromium is not installed and CI is not set.
fn driver() -> Option<Driver> {
    let (Some(driver), Some(_)) = (which("chromedriver"), which("chromium")) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but chromium / chromium-driver are not installed (.ci/run installs them)"
        );
        eprintln!("skipped: chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)");
        return None;
    };
    let port = free_tcp_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let d = Driver { child, port };
    assert!(
        eventually(WAIT, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "chromedriver did not listen on port {port}"
    );
    Some(d)
}

async fn browser(driver: &Driver) -> fantoccini::Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": which("chromium").unwrap(),
            // As root (CI) chromium needs --no-sandbox.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a chromium session")
}

/// Record CSP violations the page sees from now on, and mark the page (the mark disappears on
/// reload).
async fn probe(b: &fantoccini::Client) {
    b.execute(
        "window.__marker = 'same page'; window.__violations = window.__violations || [];
         document.addEventListener('securitypolicyviolation', function (e) {
             window.__violations.push(e.violatedDirective + ' ' + e.blockedURI); });
         return true;",
        vec![],
    )
    .await
    .unwrap();
}

/// No script of an agent ran, no alert dialog is open, no CSP violation was seen.
async fn assert_inert(b: &fantoccini::Client, c: &ConsoleSite) {
    let state = b.execute("return [typeof window.__xss, window.__violations || []];", vec![]).await.unwrap();
    assert_eq!(state, json!(["undefined", []]), "agent text ran as script, or the CSP was violated");
    assert!(b.get_alert_text().await.is_err(), "an alert dialog is open: agent text ran as script");
    let m = metrics(c);
    assert_eq!(metric(&m, "sos_console_csp_violations_total", &[]), Some(0.0), "a browser reported a CSP violation");
}

fn screenshot(name: &str, png: &[u8]) {
    // Taken for the README when asked: SOS_SCREENSHOTS=1.
    if std::env::var_os("SOS_SCREENSHOTS").is_some() {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/images").join(name);
        std::fs::write(&p, png).unwrap();
        eprintln!("screenshot: {}", p.display());
    }
}

async fn wait_for<F: FnMut(serde_json::Value) -> bool>(
    b: &fantoccini::Client,
    script: &str,
    mut ok: F,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = b.execute(script, vec![]).await.unwrap();
        if ok(v.clone()) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_an_sos_without_reload_and_agent_text_never_runs() {
    let Some(driver) = driver() else { return };
    let c = ConsoleSite::start("");
    let b = browser(&driver).await;
    let url = c.url();

    // Log in.
    b.goto(&format!("{url}/login")).await.unwrap();
    b.find(Locator::Id("name")).await.unwrap().send_keys(ADMIN).await.unwrap();
    b.find(Locator::Id("password")).await.unwrap().send_keys(PASSWORD).await.unwrap();
    b.find(Locator::Id("login")).await.unwrap().click().await.unwrap();
    b.wait().at_most(WAIT).for_element(Locator::Id("live")).await.unwrap();
    assert!(b.current_url().await.unwrap().path() == "/alerts");
    probe(&b).await;
    let live = wait_for(&b, "return document.getElementById('connection').textContent;", |v| {
        v.as_str().unwrap_or("").starts_with("Live")
    })
    .await;
    assert!(live.as_str().unwrap().starts_with("Live"), "the event stream did not open: {live}");
    assert!(b.find(Locator::Id("sound-warning")).await.unwrap().is_displayed().await.unwrap(), "sound warning shown");
    assert_eq!(b.title().await.unwrap(), "SOS — live alerts");

    // A real agent sends an SOS whose message and location are hostile.
    let config = agent_config(&c);
    let out = tokio::task::spawn_blocking(move || agent_send(&config, &["--message", XSS])).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = alert_id_of(&out);
    let row = b.wait().at_most(WAIT).for_element(Locator::Css(&format!("tr[data-alert-id='{id}']"))).await.unwrap();
    let marker = b.execute("return window.__marker;", vec![]).await.unwrap();
    assert_eq!(marker, json!("same page"), "the page was reloaded");
    assert_eq!(row.find(Locator::Css("td.message")).await.unwrap().text().await.unwrap(), XSS);
    assert_eq!(row.find(Locator::Css("td.location")).await.unwrap().text().await.unwrap(), FORMULA_LOCATION);
    let title = wait_for(&b, "return document.title;", |v| v.as_str().unwrap_or("").starts_with("(1)")).await;
    assert_eq!(title, json!("(1) SOS — live alerts"));

    // Every other field an agent sends, hostile, from a raw protocol peer.
    let peer = Peer::new(c.site.addr, c.site.key());
    let raw_id = AlertId::random();
    peer.send(&Message::Sos(Sos {
        alert_id: raw_id,
        test: false,
        triggered_at: unix_now(),
        attempt: 0,
        user: r#"<img src=x onerror="window.__xss=3">"#.into(),
        host: "<script>window.__xss=4</script>".into(),
        ip: "<svg onload=alert(5)>".into(),
        location: "\"><script>alert(6)</script>".into(),
        message: "line\u{0}\u{7}\u{1b}[31m <iframe src=javascript:alert(7)>".into(),
        agent: "<style>body{display:none}</style>".into(),
    }));
    b.wait().at_most(WAIT).for_element(Locator::Css(&format!("tr[data-alert-id='{raw_id}']"))).await.unwrap();
    wait_for(&b, "return document.title;", |v| v.as_str().unwrap_or("").starts_with("(2)")).await;
    assert_inert(&b, &c).await;

    // Arm the sound: the warning goes away.
    b.find(Locator::Id("arm-sound")).await.unwrap().click().await.unwrap();
    assert!(!b.find(Locator::Id("sound-warning")).await.unwrap().is_displayed().await.unwrap());
    screenshot("console-live.png", &b.screenshot().await.unwrap());

    // Acknowledge it there, on the live page: recorded as the logged-in responder, via the
    // console, with the sender's notice queued.
    let row = b.find(Locator::Css(&format!("tr[data-alert-id='{id}']"))).await.unwrap();
    row.find(Locator::Css("button.ack")).await.unwrap().click().await.unwrap();
    let state = wait_for(
        &b,
        &format!(
            "var r = document.querySelector(\"tr[data-alert-id='{id}'] td.state\"); return r ? r.textContent : '';"
        ),
        |v| v.as_str().unwrap_or("").starts_with("acknowledged"),
    )
    .await;
    assert_eq!(state, json!(format!("acknowledged by {ADMIN}")));
    let title = wait_for(&b, "return document.title;", |v| v.as_str().unwrap_or("").starts_with("(1)")).await;
    assert_eq!(title, json!("(1) SOS — live alerts"), "one alert left unacknowledged");
    let db = c.site.db();
    let (who, via): (String, String) = db
        .query_row("SELECT who, via FROM alert_events WHERE alert_id = ?1 AND kind = 'acknowledged'", [&id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("an acknowledged event in the timeline");
    assert_eq!((who.as_str(), via.as_str()), (ADMIN, "console"));
    let notice: String = db
        .query_row("SELECT responder FROM sender_notices WHERE alert_id = ?1 AND event = 'acknowledged'", [&id], |r| {
            r.get(0)
        })
        .expect("the sender's notice is queued");
    assert_eq!(notice, ADMIN);

    // The alert's page: the payload as text; resolve it with an outcome and a note.
    assert!(eventually(WAIT, || c.site.delivery(&id, "slack").is_some_and(|d| d.0 == "delivered")));
    b.goto(&format!("{url}/alerts/{id}")).await.unwrap();
    probe(&b).await;
    assert_eq!(b.find(Locator::Id("alert-message")).await.unwrap().text().await.unwrap(), XSS);
    b.find(Locator::Id("outcome")).await.unwrap().select_by_value("help given").await.unwrap();
    b.find(Locator::Id("resolve-note")).await.unwrap().send_keys("<b>calm</b> again").await.unwrap();
    b.find(Locator::Id("resolve")).await.unwrap().click().await.unwrap();
    let state = wait_for(&b, "var e = document.getElementById('alert-state'); return e ? e.textContent : '';", |v| {
        v.as_str().unwrap_or("").starts_with("resolved")
    })
    .await;
    assert_eq!(state, json!(format!("resolved by {ADMIN}: help given")));
    probe(&b).await;
    let timeline = b.find(Locator::Id("timeline")).await.unwrap().text().await.unwrap();
    for needle in ["received", "acknowledged (via console)", "resolved (via console)", "<b>calm</b> again"] {
        assert!(timeline.contains(needle), "timeline lacks {needle:?}: {timeline}");
    }
    let state: String = db.query_row("SELECT state FROM responses WHERE alert_id = ?1", [&id], |r| r.get(0)).unwrap();
    assert_eq!(state, "resolved");
    screenshot("console-alert.png", &b.screenshot().await.unwrap());
    b.goto(&format!("{url}/alerts/{raw_id}")).await.unwrap();
    probe(&b).await;
    assert_inert(&b, &c).await;

    // Export, with the browser's session: formulas neutralised, everything there.
    b.goto(&format!("{url}/history")).await.unwrap();
    probe(&b).await;
    let csv = b
        .execute_async(
            "var done = arguments[arguments.length - 1];
             fetch('/history/export.csv').then(function (r) { return r.text(); }).then(done);",
            vec![],
        )
        .await
        .unwrap();
    let csv = csv.as_str().unwrap();
    assert!(csv.contains(&id) && csv.contains(&raw_id.to_string()), "{csv}");
    assert!(csv.contains("\"'=HYPERLINK(\"\"http://evil.example\"\")"), "formula not neutralised: {csv}");
    let json_text = b
        .execute_async(
            "var done = arguments[arguments.length - 1];
             fetch('/history/export.json').then(function (r) { return r.text(); }).then(done);",
            vec![],
        )
        .await
        .unwrap();
    let rows: serde_json::Value = serde_json::from_str(json_text.as_str().unwrap()).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(rows.as_array().unwrap().iter().any(|r| r["message"] == XSS));

    // A state-changing request without its token, from the logged-in browser: 403.
    let status = b
        .execute_async(
            "var done = arguments[arguments.length - 1];
             fetch('/agents/enroll', {method: 'POST', body: new URLSearchParams({name: 'x'})})
                 .then(function (r) { done(r.status); });",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403));
    assert_inert(&b, &c).await;
    b.close().await.unwrap();
}

// ---- acknowledge links (issue 17 §4) ----

/// The next message `peer` receives within `timeout` that `want` accepts (others are skipped).
fn next<T>(peer: &Peer, timeout: Duration, mut want: impl FnMut(Message) -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let d = peer.recv_raw(left)?;
        if let Some(t) = peer.open(&d).and_then(&mut want) {
            return Some(t);
        }
    }
}

/// An SOS from a hand-made sender with the site key, hostile text in it; waits for its SOS-ACK.
fn raise(sender: &Peer) -> AlertId {
    let id = AlertId::random();
    sender.send(&Message::Sos(Sos {
        alert_id: id,
        test: false,
        triggered_at: unix_now(),
        attempt: 0,
        user: "alice".into(),
        host: "reception".into(),
        ip: "10.0.0.12".into(),
        location: FORMULA_LOCATION.into(),
        message: XSS.into(),
        agent: "hand-made".into(),
    }));
    next(sender, WAIT, |m| matches!(m, Message::SosAck(a) if a.alert_id == id).then_some(())).expect("sos_ack");
    id
}

/// (state, acknowledged events, used links) of `id` in the store.
fn ack_state(c: &ConsoleSite, id: AlertId) -> (String, i64, i64) {
    let db = c.site.db();
    let id = id.to_string();
    let state = db.query_row("SELECT state FROM responses WHERE alert_id = ?1", [&id], |r| r.get(0)).unwrap();
    let acks = db
        .query_row("SELECT COUNT(*) FROM alert_events WHERE alert_id = ?1 AND kind = 'acknowledged'", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    let used = db.query_row("SELECT COUNT(*) FROM ack_links_used WHERE alert_id = ?1", [&id], |r| r.get(0)).unwrap();
    (state, acks, used)
}

/// The path of a link (`/ack/TOKEN`).
fn path_of(link: &str) -> &str {
    &link[link.find("/ack/").unwrap()..]
}

fn get(c: &ConsoleSite, path: &str) -> Reply {
    http(c.http, "GET", path, "", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_link_opened_in_the_browser_acknowledges_once_and_the_sender_is_told() {
    let Some(driver) = driver() else { return };
    let c = ConsoleSite::start_linked("");
    let sender = Peer::new(c.site.addr, c.site.key());
    let id = raise(&sender);
    let link = c.slack_ack_link(&id.to_string());

    // A link scanner or an unfurler fetches it: the page, and nothing changes.
    let scanned = get(&c, path_of(&link));
    assert_eq!(scanned.status, 200, "{}", scanned.body);
    assert!(scanned.body.contains("id=\"ack\""), "a confirm button: {}", scanned.body);
    assert_eq!(ack_state(&c, id), ("notified".into(), 0, 0), "a GET changed nothing");

    // A responder opens it, not logged in: the alert as text, a confirm button.
    let b = browser(&driver).await;
    b.goto(&link).await.unwrap();
    probe(&b).await;
    assert_eq!(b.find(Locator::Id("alert-message")).await.unwrap().text().await.unwrap(), XSS);
    assert_eq!(ack_state(&c, id), ("notified".into(), 0, 0), "opening the page changed nothing");
    b.find(Locator::Id("ack-name")).await.unwrap().send_keys("Pat <b>Night</b>").await.unwrap();
    b.find(Locator::Id("ack")).await.unwrap().click().await.unwrap();
    let done = b.wait().at_most(WAIT).for_element(Locator::Id("ack-done")).await.unwrap().text().await.unwrap();
    let who = "Pat <b>Night</b> (via slack link)";
    assert!(done.starts_with(&format!("Acknowledged by {who} at ")), "{done}");
    assert_eq!(ack_state(&c, id), ("acknowledged".into(), 1, 1));
    let (by, via): (String, String) = c
        .site
        .db()
        .query_row(
            "SELECT who, via FROM alert_events WHERE alert_id = ?1 AND kind = 'acknowledged'",
            [id.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((by.as_str(), via.as_str()), (who, "channel_link"));

    // The sender's agent is told someone is coming.
    let notice = next(&sender, WAIT, |m| match m {
        Message::ResponderNotice(n) if n.alert_id == id && n.event == NoticeEvent::Acknowledged => Some(n),
        _ => None,
    })
    .expect("responder_notice pushed to the sender");
    assert_eq!(notice.responder, who);
    // Slack is told who acknowledged, without a link this time.
    let update = c.slack.wait_for_text(WAIT, "Acknowledged by Pat");
    assert!(!update.text().contains("/ack/"), "{}", update.text());

    // The second use: the page says by whom and when; a POST changes nothing.
    b.goto(&link).await.unwrap();
    probe(&b).await;
    let again = b.find(Locator::Id("ack-done")).await.unwrap().text().await.unwrap();
    assert!(again.starts_with(&format!("This link was used already: acknowledged by {who} at ")), "{again}");
    assert!(b.find(Locator::Id("ack")).await.is_err(), "no confirm button on a used link");
    let replay = http(c.http, "POST", path_of(&link), "", &[("name", "Mallory")]);
    assert_eq!(replay.status, 409, "{}", replay.body);
    assert!(replay.body.contains("used already"), "{}", replay.body);
    assert_eq!(ack_state(&c, id), ("acknowledged".into(), 1, 1));
    assert_inert(&b, &c).await;
    screenshot("console-ack-link.png", &b.screenshot().await.unwrap());
    b.close().await.unwrap();
}

#[test]
fn acknowledge_links_refuse_forged_expired_and_replayed_tokens_and_two_posts_at_once_acknowledge_once() {
    let c = ConsoleSite::start_linked("ack_link_ttl_secs = 600");
    let sender = Peer::new(c.site.addr, c.site.key());
    let id = raise(&sender);
    let link = c.slack_ack_link(&id.to_string());
    let path = path_of(&link).to_owned();
    let token = path.trim_start_matches("/ack/").to_owned();

    // Tampered: every position changed in turn is refused (403), nothing changes.
    for i in [0, token.len() / 2, token.len() - 1] {
        let mut t: Vec<char> = token.chars().collect();
        t[i] = if t[i] == 'A' { 'B' } else { 'A' };
        let forged: String = t.into_iter().collect();
        for method in ["GET", "POST"] {
            let r = http(c.http, method, &format!("/ack/{forged}"), "", &[]);
            assert!(r.status == 403 || r.status == 404, "{method} position {i}: {} {}", r.status, r.body);
            assert!(r.body.contains("Nothing was acknowledged"), "{}", r.body);
        }
    }
    // Huge and strange tokens: refused, the console still answers.
    for bad in ["A".repeat(5000), "%3Cscript%3E".into(), "..%2F..%2Fetc%2Fpasswd".into()] {
        let r = http(c.http, "POST", &format!("/ack/{bad}"), "", &[]);
        assert!((400..500).contains(&r.status), "{}: {}", r.status, r.body);
    }
    // Expired: made with the collector's own key an hour ago (valid 10 minutes).
    let links = sos_collector::links::AckLinks::open(&c.site.data_dir(), &c.url(), Duration::from_secs(600)).unwrap();
    let old = links.token_at(&id, "slack", std::time::SystemTime::now() - Duration::from_secs(3600));
    for method in ["GET", "POST"] {
        let r = http(c.http, method, &format!("/ack/{old}"), "", &[]);
        assert_eq!(r.status, 410, "{}", r.body);
        assert!(r.body.contains("expired"), "{}", r.body);
    }
    assert_eq!(ack_state(&c, id), ("notified".into(), 0, 0), "nothing changed");

    // The same link posted eight times at once: exactly one acknowledgement.
    let start = std::sync::Arc::new(std::sync::Barrier::new(8));
    let posts: Vec<_> = (0..8)
        .map(|i| {
            let (start, addr, path) = (start.clone(), c.http, path.clone());
            std::thread::spawn(move || {
                start.wait();
                http(addr, "POST", &path, "", &[("name", &format!("racer {i}"))]).status
            })
        })
        .collect();
    let mut statuses: Vec<u16> = posts.into_iter().map(|t| t.join().unwrap()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 409, 409, 409, 409, 409, 409, 409]);
    assert_eq!(ack_state(&c, id), ("acknowledged".into(), 1, 1));
    let notices: i64 = c
        .site
        .db()
        .query_row(
            "SELECT COUNT(*) FROM sender_notices WHERE alert_id = ?1 AND event = 'acknowledged'",
            [id.to_string()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(notices, 1);
    // Another valid link to the same alert (an email's) now says who acknowledged, and when.
    let email_link = links.token_at(&id, "email", std::time::SystemTime::now());
    let r = http(c.http, "POST", &format!("/ack/{email_link}"), "", &[]);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("Already acknowledged by racer"), "{}", r.body);

    // Counted in /metrics.
    let m = metrics(&c);
    assert_eq!(metric(&m, "sos_console_ack_links_total", &[("result", "acknowledged")]), Some(1.0));
    assert_eq!(metric(&m, "sos_console_ack_links_total", &[("result", "used")]), Some(7.0));
    assert_eq!(metric(&m, "sos_console_ack_links_total", &[("result", "expired")]), Some(2.0));

    // A source that keeps trying is limited (429), as logins are.
    let limited = (0..40).map(|_| get(&c, "/ack/forged").status).filter(|s| *s == 429).count();
    assert!(limited > 0, "no request of 40 was limited");
}
