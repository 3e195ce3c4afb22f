//! Who may send what the agent acts on: the networks of `--sip-source` (NOTIFYs) and
//! `--hep-source` (HEP packets), parsed once from the settings.
//!
//! The same prefixes fill the XDP program's LPM trie (`SIP_SENDERS`, keyed by
//! [`sipnotify_common::sender_key`]) and answer [`Senders`] in user space: the AF_PACKET
//! reader and `replay` run the shared capture decision with a [`SourceFilter`], reassembly
//! checks the source of what it puts together, and the HEP source asks
//! [`SourceFilter::allows`] about the sender of each packet and the inner source it carries.
//! A filter with no network allows everyone (the behaviour without the flag).
//!
//! A linear scan: a site lists a handful of SIP Servers, and it runs once per NOTIFY, not per
//! packet; a trie would buy nothing at that size.

use std::{fmt, net::IpAddr, str::FromStr};

use sipnotify_common::{SENDER_KEY_LEN, decide::Senders, sender_key};

/// One network, `ADDR/LEN` or a bare address (a host).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Network {
    addr: IpAddr,
    len: u8,
}

/// A `--sip-source`/`--hep-source` value that is not a network.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// Not an IP address (before the `/`).
    #[error("`{0}` is not an IP address or network such as 192.0.2.10 or 192.0.2.0/24")]
    Address(String),
    /// The prefix length is not a number within the family's width.
    #[error("`{text}`: the prefix length must be 0 to {max}")]
    Length {
        /// The value given.
        text: String,
        /// 32 or 128.
        max: u8,
    },
    /// Bits are set below the prefix: a typo for a host or for the network.
    #[error(
        "`{text}` has bits set after its /{len}: write {network} for the network, or the address alone for one host"
    )]
    HostBits {
        /// The value given.
        text: String,
        /// Its prefix length.
        len: u8,
        /// The network it would be with those bits cleared.
        network: String,
    },
}

impl Network {
    /// The prefix length within the family (`/24` for `192.0.2.0/24`).
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The network's address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix as the LPM trie holds it: its length in [`sender_key`] bits (the version
    /// byte's eight, then the network's), and the key.
    pub fn trie_prefix(&self) -> (u32, [u8; SENDER_KEY_LEN]) {
        let (version, bytes) = octets(self.addr);
        (8 + u32::from(self.len), sender_key(version, &bytes))
    }

    fn contains_key(&self, key: &[u8; SENDER_KEY_LEN]) -> bool {
        let (bits, prefix) = self.trie_prefix();
        let bits = bits as usize;
        let whole = bits / 8;
        if key[..whole] != prefix[..whole] {
            return false;
        }
        let rest = bits % 8;
        rest == 0 || (key[whole] ^ prefix[whole]) & (0xff << (8 - rest)) == 0
    }
}

impl FromStr for Network {
    type Err = NetworkError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr_text, len_text) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .trim()
            .parse()
            .map_err(|_| NetworkError::Address(text.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len_text {
            None => max,
            Some(len) => len
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&len| len <= max)
                .ok_or_else(|| NetworkError::Length {
                    text: text.to_owned(),
                    max,
                })?,
        };
        let network = Network {
            addr: masked(addr, len),
            len,
        };
        if network.addr != addr {
            return Err(NetworkError::HostBits {
                text: text.to_owned(),
                len,
                network: network.to_string(),
            });
        }
        Ok(network)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// `addr` with the bits after the first `len` cleared.
fn masked(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

/// The family and 16 address bytes (IPv4 in the first four) as the capture records hold them.
fn octets(addr: IpAddr) -> (u8, [u8; 16]) {
    match addr {
        IpAddr::V4(v4) => {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            (4, bytes)
        }
        // An IPv4-mapped IPv6 source (a dual-stack socket's view) is the IPv4 host it maps.
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => octets(IpAddr::V4(v4)),
            None => (6, v6.octets()),
        },
    }
}

/// The networks allowed to send; empty allows every source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceFilter {
    networks: Vec<Network>,
}

impl SourceFilter {
    /// A filter allowing `networks` (every source when there is none).
    pub fn new(networks: Vec<Network>) -> Self {
        Self { networks }
    }

    /// Whether no network is listed, so every source is allowed.
    pub fn allows_everyone(&self) -> bool {
        self.networks.is_empty()
    }

    /// The networks listed.
    pub fn networks(&self) -> &[Network] {
        &self.networks
    }

    /// Whether `addr` may send.
    pub fn allows(&self, addr: IpAddr) -> bool {
        let (version, bytes) = octets(addr);
        self.allowed(version, &bytes)
    }
}

impl Senders for SourceFilter {
    fn allowed(&self, ip_version: u8, addr: &[u8; 16]) -> bool {
        if self.networks.is_empty() {
            return true;
        }
        let key = sender_key(ip_version, addr);
        self.networks.iter().any(|net| net.contains_key(&key))
    }
}

impl fmt::Display for SourceFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.networks.is_empty() {
            return f.write_str("any");
        }
        for (i, net) in self.networks.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(nets: &[&str]) -> SourceFilter {
        SourceFilter::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_parse_hosts_and_prefixes_and_name_the_bad_value() {
        let host: Network = "192.0.2.10".parse().unwrap();
        assert_eq!(host.to_string(), "192.0.2.10/32");
        assert_eq!(host.trie_prefix().0, 40);
        let net: Network = " 2001:db8::/32".parse().unwrap();
        assert_eq!((net.prefix_len(), net.trie_prefix().0), (32, 40));
        assert_eq!("0.0.0.0/0".parse::<Network>().unwrap().trie_prefix().0, 8);
        for (bad, says) in [
            ("sipserver", "not an IP address"),
            ("192.0.2.0/33", "0 to 32"),
            ("2001:db8::/129", "0 to 128"),
            ("192.0.2.0/x", "0 to 32"),
            ("192.0.2.10/24", "write 192.0.2.0/24"),
        ] {
            let err = bad.parse::<Network>().unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(err.contains(bad.trim()), "{bad}: {err}");
        }
    }

    #[test]
    fn the_filter_matches_prefixes_of_both_families() {
        let f = filter(&[
            "192.0.2.0/25",
            "198.51.100.7",
            "2001:db8:1::/48",
            "10.0.0.0/7",
        ]);
        for yes in [
            "192.0.2.0",
            "192.0.2.127",
            "198.51.100.7",
            "2001:db8:1:ffff::1",
            "11.255.0.1",
            "::ffff:192.0.2.1",
        ] {
            assert!(f.allows(ip(yes)), "{yes}");
        }
        for no in [
            "192.0.2.128",
            "198.51.100.8",
            "2001:db8:2::1",
            "12.0.0.1",
            "::c000:201",
        ] {
            assert!(!f.allows(ip(no)), "{no}");
        }
        assert!(SourceFilter::default().allows(ip("203.0.113.1")));
        assert_eq!(SourceFilter::default().to_string(), "any");
        assert_eq!(filter(&["192.0.2.0/25"]).to_string(), "192.0.2.0/25");
    }

    #[test]
    fn an_ipv4_network_never_matches_an_ipv6_address_with_the_same_bytes() {
        let f = filter(&["10.0.0.0/8"]);
        let mut v6 = [0u8; 16];
        v6[0] = 10;
        assert!(!f.allowed(6, &v6));
        let mut v4 = [0u8; 16];
        v4[0] = 10;
        assert!(f.allowed(4, &v4));
        // `::/0` is every IPv6 source, not IPv4 ones, and `0.0.0.0/0` the other way round.
        let any6 = filter(&["::/0"]);
        assert!(any6.allowed(6, &v6) && !any6.allowed(4, &v4));
        let any4 = filter(&["0.0.0.0/0"]);
        assert!(!any4.allowed(6, &v6) && any4.allowed(4, &v4));
    }
}
