//! What the HTTP channels share: one client setup, `Retry-After`, and errors that never show
//! a URL (webhook URLs carry secrets in their path or query).

use std::time::Duration;

use super::DeliveryError;

/// A client for one channel: every request bounded by `timeout`, no redirects (a redirected
/// webhook is a configuration to fix, and following one would resend the secret elsewhere).
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("sos-collector/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| safe_error(&e))
}

/// `Retry-After` in seconds (the form these services send), at most a day.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(86_400)))
}

/// A reqwest error without its URL: the innermost cause (connection refused, timed out…).
pub(crate) fn safe_error(e: &reqwest::Error) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    // The innermost cause is an I/O or TLS error; reqwest's own message (which names the URL)
    // is only reached when it has no source: say what kind of failure it was instead.
    if std::ptr::addr_eq(cur as *const _, e as *const _) {
        return if e.is_timeout() {
            "timed out".into()
        } else if e.is_connect() {
            "cannot connect".into()
        } else if e.is_body() || e.is_decode() {
            "bad answer body".into()
        } else {
            "request failed".into()
        };
    }
    cur.to_string()
}

/// What a failed request means. `sent_may_show`: whether a request that timed out after it was
/// sent may have been shown (a chat post, an SMS) or is safe to repeat (a signed webhook, whose
/// receiver deduplicates by `webhook-id`).
pub(crate) fn request_failed(what: &str, e: &reqwest::Error, sent_may_show: bool) -> DeliveryError {
    let cause = safe_error(e);
    if e.is_connect() {
        DeliveryError::transient(format!("{what}: cannot connect: {cause}"))
    } else if e.is_timeout() && sent_may_show {
        DeliveryError::Unknown { reason: format!("{what}: no answer in time: {cause}") }
    } else {
        DeliveryError::transient(format!("{what}: request failed: {cause}"))
    }
}

/// At most `max` characters of a service's answer, on one line, for an error message.
pub(crate) fn snippet(body: &str, max: usize) -> String {
    body.chars().take(max).map(|c| if c.is_control() { ' ' } else { c }).collect::<String>().trim().to_owned()
}

/// `s` clipped to at most `max` characters, the last one `…` when clipped.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_never_show_the_url() {
        // A port nothing listens on: a connect error whose Display names the URL.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        crate::install_crypto_provider();
        let c = client(Duration::from_secs(2)).unwrap();
        let url = format!("http://127.0.0.1:{port}/hooks/s3cr3t-path?token=s3cr3t-query");
        let e = c.post(&url).send().await.unwrap_err();
        assert!(e.to_string().contains("s3cr3t"), "reqwest names the URL: {e}");
        let d = request_failed("webhook 127.0.0.1", &e, false).to_string();
        assert!(!d.contains("s3cr3t") && d.contains("cannot connect"), "{d}");
    }

    #[test]
    fn clip_and_snippet_bound_text() {
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
        assert_eq!(snippet("a\nb\u{7}c", 10), "a b c");
    }
}
