//! Who the client is: the TCP peer, or the address a trusted proxy put in
//! `X-Forwarded-For` (`server.trusted_proxies`).
//!
//! The header is a list, each proxy appending the address it received the
//! request from. Read from the right, the first address that is not a
//! trusted proxy is the client; addresses left of it were written by the
//! client itself and prove nothing. A request from an untrusted peer keeps
//! its TCP address whatever the header says.

use std::net::{IpAddr, SocketAddr};

/// Addresses and CIDR ranges of trusted proxies.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    ranges: Vec<(IpAddr, u8)>,
}

impl TrustedProxies {
    /// Parses `"10.0.0.5"`, `"10.0.0.0/8"`, `"::1"`, `"fd00::/8"`; the error
    /// names the entry. Blank entries are skipped, so that an empty
    /// environment variable (`ROOMCAST__LIMITS__EXEMPT=`) means an empty list.
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        let ranges = entries
            .iter()
            .filter(|entry| !entry.trim().is_empty())
            .map(|entry| {
                let (addr, bits) = match entry.split_once('/') {
                    Some((a, b)) => (a, Some(b)),
                    None => (entry.as_str(), None),
                };
                let ip: IpAddr = addr
                    .trim()
                    .parse()
                    .map_err(|_| format!("{entry:?} is not an address"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits = match bits {
                    None => max,
                    Some(b) => b
                        .trim()
                        .parse::<u8>()
                        .ok()
                        .filter(|b| *b <= max)
                        .ok_or_else(|| format!("{entry:?}: prefix length above {max}"))?,
                };
                Ok((ip, bits))
            })
            .collect::<Result<_, String>>()?;
        Ok(TrustedProxies { ranges })
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.ranges.iter().any(|&(net, bits)| match (canonical(net), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
            _ => false,
        })
    }

    /// The client address of a request from `peer` carrying the
    /// `X-Forwarded-For` values `forwarded` (in header order).
    pub fn client<'a>(&self, peer: Option<SocketAddr>, forwarded: impl Iterator<Item = &'a str>) -> Option<String> {
        self.client_addr(peer, forwarded).map(|c| c.to_string())
    }

    /// [`TrustedProxies::client`], as an address.
    pub fn client_addr<'a>(
        &self,
        peer: Option<SocketAddr>,
        forwarded: impl Iterator<Item = &'a str>,
    ) -> Option<ClientAddr> {
        let peer = peer?;
        if !self.contains(peer.ip()) {
            return Some(ClientAddr::Peer(peer));
        }
        let hops: Vec<&str> = forwarded.flat_map(|v| v.split(',')).map(str::trim).collect();
        let mut client = None;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                break; // garbage: stop believing the header here
            };
            client = Some(ip);
            if !self.contains(ip) {
                break;
            }
        }
        Some(client.map_or(ClientAddr::Peer(peer), ClientAddr::Forwarded))
    }
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

/// An IPv4-mapped IPv6 address as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(net: &[u8], addr: &[u8], bits: u8) -> bool {
    let (whole, rest) = ((bits / 8) as usize, bits % 8);
    if net[..whole] != addr[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        net[whole] & mask == addr[whole] & mask
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

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn ranges_match() {
        let p = proxies(&["10.0.0.0/8", "192.168.1.7", "fd00::/8"]);
        assert!(p.contains("10.1.2.3".parse().unwrap()));
        assert!(p.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!p.contains("11.0.0.1".parse().unwrap()));
        assert!(p.contains("192.168.1.7".parse().unwrap()));
        assert!(!p.contains("192.168.1.8".parse().unwrap()));
        assert!(p.contains("fd12::1".parse().unwrap()));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        let empty = TrustedProxies::parse(&["".into()]).unwrap();
        assert!(!empty.contains("127.0.0.1".parse().unwrap()));
        assert!(TrustedProxies::parse(&["proxy.example".into()]).is_err());
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let p = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        let from = |peer: &str, xff: &[&str]| p.client(Some(peer.parse().unwrap()), xff.iter().copied());
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
