//! The web console under test: a site whose collector serves `[http]` with an administrator
//! whose password is set by `sos-collector responders passwd`, and a small HTTP/1.1 client
//! (std sockets) for requests a browser is not needed for.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::bin::bin;
use crate::site::Site;
use crate::{CollectorProcess, SlackStandIn};

/// The administrator the console sites have.
pub const ADMIN: &str = "Ada Admin";
/// Their password.
pub const PASSWORD: &str = "correct horse battery staple";

/// A free TCP port on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a TCP socket on 127.0.0.1")
}

/// A collector with the console on, Slack as its channel, and [`ADMIN`] with [`PASSWORD`].
#[derive(Debug)]
pub struct ConsoleSite {
    /// Key, configs, store.
    pub site: Site,
    /// The Slack stand-in the collector posts to.
    pub slack: SlackStandIn,
    /// The console's address.
    pub http: SocketAddr,
    /// The running collector.
    pub collector: CollectorProcess,
}

impl ConsoleSite {
    /// Start it; `extra_http` is added to the `[http]` table.
    pub fn start(extra_http: &str) -> Self {
        Self::start_for(|_| extra_http.to_owned())
    }

    /// Start it with acknowledge links: `public_url` is the console's address; `extra_http` is
    /// added to the `[http]` table.
    pub fn start_linked(extra_http: &str) -> Self {
        Self::start_for(|http| format!("public_url = \"http://{http}\"\n{extra_http}"))
    }

    /// Start it; `extra_http(listen)` is added to the `[http]` table.
    fn start_for(extra_http: impl FnOnce(SocketAddr) -> String) -> Self {
        let site = Site::new();
        let slack = SlackStandIn::start(vec![]);
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let extra_http = extra_http(http);
        let config = format!(
            "{}\n[http]\nlisten = \"{http}\"\nadmins = [\"{ADMIN}\"]\n{extra_http}\n",
            site.collector_config(Some(&slack), None)
        );
        let path = site.dir.path().join("collector.toml");
        std::fs::write(&path, &config).unwrap();
        set_password(&path, ADMIN, PASSWORD);
        let collector = site.start_with(&config);
        collector.wait_log(Duration::from_secs(10), "console listening");
        ConsoleSite { site, slack, http, collector }
    }

    /// The acknowledge link in the Slack post about `alert_id` (waits for the post).
    pub fn slack_ack_link(&self, alert_id: &str) -> String {
        let post = self.slack.wait_for_text(Duration::from_secs(20), alert_id).text();
        let at = post.find("/ack/").unwrap_or_else(|| panic!("no acknowledge link in the Slack post: {post}"));
        let token: String =
            post[at + 5..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
        format!("{}/ack/{token}", self.url())
    }

    /// The console's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// A session cookie (`name=value`) for [`ADMIN`], through the login form.
    pub fn login(&self) -> String {
        let page = http(self.http, "GET", "/login", "", &[]);
        let pre = page.cookie("sos_pre").expect("the login page sets the pre-session cookie");
        let csrf = page.csrf().expect("the login form has a CSRF field");
        let r = http(
            self.http,
            "POST",
            "/login",
            &format!("sos_pre={pre}"),
            &[("csrf", &csrf), ("name", ADMIN), ("password", PASSWORD)],
        );
        assert_eq!(r.status, 303, "login failed: {}", r.body);
        format!("sos_session={}", r.cookie("sos_session").expect("a session cookie"))
    }
}

/// `sos-collector responders passwd NAME --config CONFIG`, the password on stdin.
pub fn set_password(config: &std::path::Path, name: &str, password: &str) {
    let mut child = Command::new(bin("sos-collector"))
        .args(["responders", "passwd", name, "--config"])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sos-collector responders passwd");
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "responders passwd failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: String,
}

impl Reply {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The value a `Set-Cookie` gives cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .filter_map(|(_, v)| v.split(';').next()?.split_once('='))
            .find(|(k, v)| *k == name && !v.is_empty())
            .map(|(_, v)| v.to_owned())
    }

    /// The first `csrf` hidden field of the page.
    pub fn csrf(&self) -> Option<String> {
        let at = self.body.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
        Some(self.body[at..].split('"').next()?.to_owned())
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One request on a new connection: `form` is sent urlencoded when not empty.
pub fn http(addr: SocketAddr, method: &str, path: &str, cookie: &str, form: &[(&str, &str)]) -> Reply {
    let body = form.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !cookie.is_empty() {
        req.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    if method != "GET" {
        req.push_str(&format!("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let mut s = TcpStream::connect(addr).expect("connect to the console");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the console's answer");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP header block");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    }
    Reply { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// One sample of a Prometheus text exposition: name, labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// Parse the Prometheus / OpenMetrics text format strictly: every line is `# HELP`, `# TYPE`,
/// `# UNIT`, `# EOF` (last), or a sample `name{label="value",...} number`; a sample's family
/// must have been declared by `# TYPE` before it. Anything else is an error naming the line.
///
/// # Errors
/// The first line that does not parse.
pub fn parse_metrics(text: &str) -> Result<Vec<Sample>, String> {
    let mut families: Vec<(String, String)> = Vec::new();
    let mut samples = Vec::new();
    let mut ended = false;
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    for (i, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if ended {
            return Err(bad("after # EOF"));
        }
        if line == "# EOF" {
            ended = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !name_ok(name) {
                return Err(bad("bad metric name"));
            }
            match kind {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    if !["counter", "gauge", "histogram", "summary", "info", "stateset", "unknown", "gaugehistogram"]
                        .contains(&t)
                    {
                        return Err(bad("unknown type"));
                    }
                    families.push((name.to_owned(), t.to_owned()));
                }
                _ => return Err(bad("unknown comment")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad("value is not a number"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').ok_or_else(|| bad("unclosed labels"))?;
                let mut labels = Vec::new();
                let mut s = inner;
                while !s.is_empty() {
                    let (k, after) = s.split_once("=\"").ok_or_else(|| bad("label without =\""))?;
                    if !name_ok(k) {
                        return Err(bad("bad label name"));
                    }
                    let mut v = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => v.push('\n'),
                                Some((_, c @ ('\\' | '"'))) => v.push(c),
                                _ => return Err(bad("bad escape in a label value")),
                            },
                            Some((j, '"')) => break j,
                            Some((_, c)) => v.push(c),
                            None => return Err(bad("unterminated label value")),
                        }
                    };
                    labels.push((k.to_owned(), v));
                    s = &after[end + 1..];
                    s = s.strip_prefix(',').unwrap_or(s);
                }
                (name, labels)
            }
        };
        if !name_ok(name) {
            return Err(bad("bad metric name"));
        }
        let declared = families.iter().any(|(f, t)| {
            name == f
                || (t == "counter" && name.strip_suffix("_total") == Some(f))
                || (t == "counter" && name.strip_suffix("_created") == Some(f))
                || (t == "histogram"
                    && ["_bucket", "_sum", "_count", "_created"].iter().any(|s| name.strip_suffix(s) == Some(f)))
                || (t == "info" && name.strip_suffix("_info") == Some(f))
        });
        if !declared {
            return Err(bad("sample of an undeclared family"));
        }
        samples.push((name.to_owned(), labels, value));
    }
    Ok(samples)
}

/// The value of the sample `name` whose labels include every `(key, value)` of `labels`.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
        .map(|(_, _, v)| *v)
}
