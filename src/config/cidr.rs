//! IP networks as the config names them (`server.trusted_proxies`): parsing with the checks that
//! catch a typo before it widens who may spoof client addresses, and membership. Plain values;
//! nothing here reads a request.

use std::net::IpAddr;

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`, or a bare address meaning a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not an IP address")]
    Address(String),
    #[error("prefix length `{0}` is not a number")]
    Prefix(String),
    #[error("prefix length {got} is longer than {max} bits")]
    PrefixTooLong { got: u8, max: u8 },
    #[error("`{0}` has bits set after the prefix (did you mean the network address?)")]
    HostBits(String),
}

impl Cidr {
    /// The prefix length in bits (0 matches every address of its family).
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Parses `addr/prefix` or a bare address. Host bits past the prefix are refused: `10.1.2.3/8`
    /// is more likely a typo than an intent, and a typo here widens who may spoof client addresses.
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| CidrError::Address(a.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| CidrError::Prefix(p.to_string()))?,
            None => max,
        };
        if prefix > max {
            return Err(CidrError::PrefixTooLong { got: prefix, max });
        }
        let c = Cidr { addr, prefix };
        if c.masked(addr) != bits(addr) {
            return Err(CidrError::HostBits(s.to_string()));
        }
        Ok(c)
    }

    fn masked(&self, ip: IpAddr) -> u128 {
        let (width, v) = match ip {
            IpAddr::V4(_) => (32u32, bits(ip)),
            IpAddr::V6(_) => (128u32, bits(ip)),
        };
        let p = u32::from(self.prefix);
        if p == 0 {
            return 0;
        }
        let mask = (!0u128) << (width - p);
        let mask = if width == 32 {
            mask & 0xffff_ffff
        } else {
            mask
        };
        v & mask
    }

    /// Whether `ip` is inside this network. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a
    /// dual-stack socket reports IPv4 peers) match the IPv4 network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        self.masked(ip) == bits(self.addr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}
