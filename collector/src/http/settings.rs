//! `[http]`: where the console listens, TLS or a reverse proxy in front, who administers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sos_shared::config::ConfigError;

/// `[http]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    behind_proxy: Option<bool>,
    public_url: Option<String>,
    #[serde(default)]
    admins: Vec<String>,
    max_connections: Option<usize>,
    max_live_clients: Option<usize>,
    ack_link_ttl_secs: Option<u64>,
}

/// The console's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// The TCP address of the console, /metrics, /healthz and /readyz.
    pub listen: SocketAddr,
    /// Certificate chain and private key (PEM files): serve HTTPS. `None`: plain HTTP, for
    /// loopback or behind a reverse proxy that terminates TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// A reverse proxy terminates TLS in front of the console: cookies are marked Secure and
    /// HSTS is sent as under TLS, and the client's address for login rate limits is the last
    /// entry of `X-Forwarded-For` (the one the proxy added).
    pub behind_proxy: bool,
    /// The address people reach the console at, for invitation links (default from `listen`).
    pub public_url: String,
    /// `public_url` was set: Slack and email messages carry signed acknowledge links
    /// ([`crate::links::AckLinks`]). Without it nobody off this host could open them.
    pub links: bool,
    /// How long an acknowledge link stays valid (`ack_link_ttl_secs`, default 24 h): long
    /// enough for someone asleep to act on it, short enough that an old message forwarded
    /// around cannot acknowledge a later reading of the same alert's page.
    pub ack_link_ttl: std::time::Duration,
    /// Account names with the administrator role (enrollment codes, revoke, rotate). Every
    /// other account is a responder.
    pub admins: Vec<String>,
    /// The most connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// The most live pages (server-sent event streams) at once; more are answered 503.
    pub max_live_clients: usize,
}

impl HttpSettings {
    /// Whether the browser reaches the console over HTTPS (directly or through the proxy).
    pub fn secure(&self) -> bool {
        self.tls.is_some() || self.behind_proxy
    }
}

impl RawHttp {
    /// Check `[http]`, naming the key and the file on error; `rel` resolves relative paths.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key that is wrong.
    pub fn validate(self, file: Option<&Path>, rel: &dyn Fn(PathBuf) -> PathBuf) -> Result<HttpSettings, ConfigError> {
        let listen_text = self.listen.unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError::at(
                file,
                "http.listen",
                format!("{listen_text:?} is not an IP address and port, e.g. \"127.0.0.1:8080\""),
            )
        })?;
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(c), Some(k)) => Some((rel(c), rel(k))),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::at(file, "http.tls_key", "tls_cert is set but tls_key is not")),
            (None, Some(_)) => {
                return Err(ConfigError::at(file, "http.tls_cert", "tls_key is set but tls_cert is not"))
            }
        };
        let behind_proxy = self.behind_proxy.unwrap_or(false);
        if behind_proxy && tls.is_some() {
            return Err(ConfigError::at(
                file,
                "http.behind_proxy",
                "set either tls_cert/tls_key (the console serves HTTPS) or behind_proxy (a proxy does), not both",
            ));
        }
        let scheme = if tls.is_some() || behind_proxy { "https" } else { "http" };
        let links = self.public_url.is_some();
        let public_url = match self.public_url {
            Some(u)
                if (u.starts_with("https://") || u.starts_with("http://"))
                    && reqwest::Url::parse(&u).is_ok_and(|p| p.host().is_some() && p.query().is_none() && p.fragment().is_none())
                    && u.len() <= 200 =>
            {
                u.trim_end_matches('/').to_owned()
            }
            Some(u) if u.starts_with("https://") || u.starts_with("http://") => {
                return Err(ConfigError::at(
                    file,
                    "http.public_url",
                    format!("{u:?} is not a URL the console can be reached at (a host, no query or fragment, at most 200 characters)"),
                ))
            }
            Some(u) => {
                return Err(ConfigError::at(
                    file,
                    "http.public_url",
                    format!("{u:?} does not start with https:// or http://"),
                ))
            }
            None => format!("{scheme}://{listen}"),
        };
        for (i, a) in self.admins.iter().enumerate() {
            if a.trim().is_empty() || a.chars().count() > 64 || a.chars().any(char::is_control) {
                return Err(ConfigError::at(
                    file,
                    &format!("http.admins[{i}]"),
                    format!("{a:?} is not a name of 1 to 64 printable characters"),
                ));
            }
        }
        let bounded = |key: &str, v: Option<usize>, default: usize, max: usize| match v {
            None => Ok(default),
            Some(v) if (1..=max).contains(&v) => Ok(v),
            Some(v) => Err(ConfigError::at(file, key, format!("{v} is not between 1 and {max}"))),
        };
        Ok(HttpSettings {
            listen,
            tls,
            behind_proxy,
            public_url,
            links,
            ack_link_ttl: std::time::Duration::from_secs(match self.ack_link_ttl_secs {
                None => crate::links::DEFAULT_TTL.as_secs(),
                Some(v) if (60..=7 * 86_400).contains(&v) => v,
                Some(v) => {
                    return Err(ConfigError::at(
                        file,
                        "http.ack_link_ttl_secs",
                        format!("{v} is not between 60 and 604800 (seconds)"),
                    ))
                }
            }),
            admins: self.admins,
            max_connections: bounded("http.max_connections", self.max_connections, 1024, 65_536)?,
            max_live_clients: bounded("http.max_live_clients", self.max_live_clients, 256, 16_384)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HttpSettings, ConfigError> {
        let raw: RawHttp = toml::from_str(text).unwrap();
        raw.validate(None, &|p| p)
    }

    #[test]
    fn acknowledge_links_need_a_public_url_and_their_ttl_is_bounded() {
        let plain = parse("").unwrap();
        assert!(!plain.links, "no public_url: no links");
        assert_eq!(plain.ack_link_ttl, crate::links::DEFAULT_TTL);
        let linked = parse("public_url = \"https://sos.example.org/\"\nack_link_ttl_secs = 3600").unwrap();
        assert!(linked.links);
        assert_eq!(linked.public_url, "https://sos.example.org");
        assert_eq!(linked.ack_link_ttl, std::time::Duration::from_secs(3600));
        for bad in [0, 59, 604_801] {
            let e = parse(&format!("ack_link_ttl_secs = {bad}")).unwrap_err().to_string();
            assert!(e.contains("http.ack_link_ttl_secs") && e.contains("between 60 and 604800"), "{e}");
        }
    }
}
