//! Which address a request is attributed to: the TCP peer, unless that peer is a configured
//! trusted proxy, in which case the rightmost `X-Forwarded-For` entry that is not itself a
//! trusted proxy. It must never believe `X-Forwarded-For` from an untrusted peer.

pub use crate::config::cidr::{Cidr, CidrError};
use http::HeaderMap;
use std::net::IpAddr;

fn trusted(proxies: &[Cidr], ip: IpAddr) -> bool {
    proxies.iter().any(|c| c.contains(ip))
}

/// One `X-Forwarded-For` element: an address, optionally with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_entry(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    // `[::1]` without a port.
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
}

/// The client address for a request that arrived from `peer`.
///
/// Only if `peer` is a trusted proxy is `X-Forwarded-For` read, right to left (each proxy appends
/// the address it saw): trusted proxies are skipped and the first untrusted address wins. An
/// unparsable element stops the walk and the last trusted hop is used: everything to its left
/// was written by someone we do not trust to write it.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[Cidr]) -> IpAddr {
    let peer = peer.to_canonical();
    if proxies.is_empty() || !trusted(proxies, peer) {
        return peer;
    }
    // Several XFF lines are one list, in order (RFC 9110 §5.3).
    let mut entries: Vec<&str> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(v) = v.to_str() else {
            return peer;
        };
        entries.extend(v.split(','));
    }
    let mut current = peer;
    for e in entries.iter().rev() {
        match parse_entry(e) {
            Some(ip) => {
                let ip = ip.to_canonical();
                if !trusted(proxies, ip) {
                    return ip;
                }
                current = ip;
            }
            None => return current,
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.1.1")), "IPv4-mapped peer");
        assert!(!c.contains(ip("::1")));
        let h = Cidr::parse("192.0.2.7").unwrap();
        assert!(h.contains(ip("192.0.2.7")) && !h.contains(ip("192.0.2.8")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert_eq!(
            Cidr::parse("10.1.2.3/8"),
            Err(CidrError::HostBits("10.1.2.3/8".into()))
        );
        assert!(matches!(
            Cidr::parse("10.0.0.0/33"),
            Err(CidrError::PrefixTooLong { got: 33, max: 32 })
        ));
        assert!(Cidr::parse("10.0.0.0/x").is_err());
        assert!(Cidr::parse("proxy.local/32").is_err());
    }

    #[test]
    fn xff_is_ignored_from_untrusted_peers() {
        let proxies = [Cidr::parse("10.0.0.0/8").unwrap()];
        let h = xff(&["203.0.113.9"]);
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &proxies),
            ip("198.51.100.1")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &[]), ip("10.0.0.1"));
    }

    #[test]
    fn rightmost_untrusted_entry_wins() {
        let proxies = [Cidr::parse("10.0.0.0/8").unwrap()];
        // The client forged the first element; our proxies appended the rest.
        let h = xff(&["1.1.1.1, 203.0.113.9", "10.0.0.5"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &proxies), ip("203.0.113.9"));
        let h = xff(&["203.0.113.9:4711"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &proxies), ip("203.0.113.9"));
        let h = xff(&["[2001:db8::1]:443"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &proxies), ip("2001:db8::1"));
    }

    #[test]
    fn garbage_stops_at_the_last_trusted_hop() {
        let proxies = [Cidr::parse("10.0.0.0/8").unwrap()];
        let h = xff(&["203.0.113.9, unknown, 10.0.0.7"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &proxies), ip("10.0.0.7"));
        let h = xff(&["10.0.0.8"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &proxies), ip("10.0.0.8"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &proxies),
            ip("10.0.0.1")
        );
    }
}
