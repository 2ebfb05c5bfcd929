//! Who is pressing the button, and from where.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// The person and the workstation, captured when the button is pressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The login name.
    pub user: String,
    /// The host name.
    pub host: String,
}

impl Identity {
    /// The current user and host. Neither lookup can stop an SOS: a failure reads as empty.
    pub fn current() -> Self {
        Identity {
            user: whoami::fallible::username().unwrap_or_default(),
            host: whoami::fallible::hostname().unwrap_or_default(),
        }
    }
}

/// The local address the operating system would use to reach `collector`: the address of the
/// route, not just any interface. No packet is sent (connecting a UDP socket only picks a route).
/// `None` when there is no route.
pub fn route_ip(collector: SocketAddr) -> Option<IpAddr> {
    let any: IpAddr = match collector {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let s = UdpSocket::bind((any, 0)).ok()?;
    s.connect(collector).ok()?;
    Some(s.local_addr().ok()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_route_is_loopback() {
        assert_eq!(route_ip("127.0.0.1:5000".parse().unwrap()), Some(IpAddr::from([127, 0, 0, 1])));
    }

    #[test]
    fn user_is_known() {
        assert!(!Identity::current().user.is_empty());
    }
}
