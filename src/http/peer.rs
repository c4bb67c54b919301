//! Who the client is: the TCP peer, or the address a trusted proxy put in
//! `X-Forwarded-For` (`server.trusted_proxies`).
//!
//! The header is a list, each proxy appending the address it received the
//! request from. Read from the right, the first address that is not a
//! trusted proxy is the client; addresses left of it were written by the
//! client itself and prove nothing. A request from an untrusted peer keeps
//! its TCP address whatever the header says.

use std::net::{IpAddr, SocketAddr};

use crate::net::{canonical, IpRanges};

/// The client address of a request from `peer` carrying the
/// `X-Forwarded-For` values `forwarded` (in header order), believing only
/// the `trusted` proxies.
pub fn client_addr<'a>(
    trusted: &IpRanges,
    peer: Option<SocketAddr>,
    forwarded: impl Iterator<Item = &'a str>,
) -> Option<ClientAddr> {
    let peer = peer?;
    if !trusted.contains(peer.ip()) {
        return Some(ClientAddr::Peer(peer));
    }
    let hops: Vec<&str> = forwarded.flat_map(|v| v.split(',')).map(str::trim).collect();
    let mut client = None;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            break; // garbage: stop believing the header here
        };
        client = Some(ip);
        if !trusted.contains(ip) {
            break;
        }
    }
    Some(client.map_or(ClientAddr::Peer(peer), ClientAddr::Forwarded))
}

/// The client of a request: its TCP peer, or the address a trusted proxy
/// forwarded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAddr {
    /// The TCP peer (address and port).
    Peer(SocketAddr),
    /// From `X-Forwarded-For`.
    Forwarded(IpAddr),
}

impl ClientAddr {
    /// The address.
    pub fn ip(self) -> IpAddr {
        match self {
            Self::Peer(addr) => canonical(addr.ip()),
            Self::Forwarded(ip) => ip,
        }
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Peer(addr) => addr.fmt(f),
            Self::Forwarded(ip) => ip.fmt(f),
        }
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let p = IpRanges::parse(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap();
        let from = |peer: &str, xff: &[&str]| {
            client_addr(&p, Some(peer.parse().unwrap()), xff.iter().copied()).map(|c| c.to_string())
        };
        // Untrusted peer: the header is ignored.
        assert_eq!(from("203.0.113.9:5000", &["1.2.3.4"]).unwrap(), "203.0.113.9:5000");
        // Trusted peer: the rightmost untrusted hop.
        assert_eq!(
            from("127.0.0.1:5000", &["6.6.6.6, 1.2.3.4, 10.0.0.2"]).unwrap(),
            "1.2.3.4"
        );
        assert_eq!(from("127.0.0.1:5000", &["6.6.6.6", "1.2.3.4"]).unwrap(), "1.2.3.4");
        // No header, or garbage: the peer.
        assert_eq!(from("127.0.0.1:5000", &[]).unwrap(), "127.0.0.1:5000");
        assert_eq!(from("127.0.0.1:5000", &["'; DROP TABLE x"]).unwrap(), "127.0.0.1:5000");
        assert_eq!(from("127.0.0.1:5000", &["1.2.3.4:99"]).unwrap(), "1.2.3.4");
    }
}
