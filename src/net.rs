//! IP addresses and ranges: `server.trusted_proxies`, `limits.exempt`.

use std::net::IpAddr;

/// An entry of an address list that is not an address or a range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Not an IP address.
    #[error("{0:?} is not an address")]
    NotAnAddress(String),
    /// A prefix length that is not a number up to 32 (IPv4) or 128 (IPv6).
    #[error("{entry:?}: prefix length above {max}")]
    Prefix {
        /// The entry.
        entry: String,
        /// The longest prefix of its family.
        max: u8,
    },
}

/// A set of addresses and CIDR ranges.
#[derive(Debug, Clone, Default)]
pub struct IpRanges {
    ranges: Vec<(IpAddr, u8)>,
}

impl IpRanges {
    /// Parses `"10.0.0.5"`, `"10.0.0.0/8"`, `"::1"`, `"fd00::/8"`; the error
    /// names the entry. Blank entries are skipped, so that an empty
    /// environment variable (`ROOMCAST__LIMITS__EXEMPT=`) means an empty list.
    pub fn parse(entries: &[String]) -> Result<IpRanges, RangeError> {
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
                    .map_err(|_| RangeError::NotAnAddress(entry.clone()))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits = match bits {
                    None => max,
                    Some(b) => b
                        .trim()
                        .parse::<u8>()
                        .ok()
                        .filter(|b| *b <= max)
                        .ok_or_else(|| RangeError::Prefix {
                            entry: entry.clone(),
                            max,
                        })?,
                };
                Ok((ip, bits))
            })
            .collect::<Result<_, RangeError>>()?;
        Ok(IpRanges { ranges })
    }

    /// Whether `ip` is in one of the ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.ranges.iter().any(|&(net, bits)| match (canonical(net), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
            _ => false,
        })
    }
}

/// An IPv4-mapped IPv6 address as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match() {
        let p = IpRanges::parse(&["10.0.0.0/8".into(), "192.168.1.7".into(), "fd00::/8".into()]).unwrap();
        assert!(p.contains("10.1.2.3".parse().unwrap()));
        assert!(p.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!p.contains("11.0.0.1".parse().unwrap()));
        assert!(p.contains("192.168.1.7".parse().unwrap()));
        assert!(!p.contains("192.168.1.8".parse().unwrap()));
        assert!(p.contains("fd12::1".parse().unwrap()));
        assert!(IpRanges::parse(&["10.0.0.0/33".into()]).is_err());
        let empty = IpRanges::parse(&["".into()]).unwrap();
        assert!(!empty.contains("127.0.0.1".parse().unwrap()));
        assert!(IpRanges::parse(&["proxy.example".into()]).is_err());
    }
}
