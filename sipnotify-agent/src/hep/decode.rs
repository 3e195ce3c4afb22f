//! HEP (Homer Encapsulation Protocol) decoding: one UDP datagram in, the SIP it carries out,
//! or the one reason it carries none.
//!
//! - HEPv3 (`HEP3`, total length, then chunks of vendor/type/length) is walked chunk by
//!   chunk, each length checked against the datagram. Chunk order differs between senders
//!   (Kamailio puts addresses before ports, Asterisk ports first), so chunks are read by type
//!   and never by position. Unknown chunks and vendor chunks are skipped by their length.
//! - HEPv1/v2 (Kamailio `siptrace`'s default, `hep_version = 1`) is a fixed header: version,
//!   header length, family, protocol, ports, addresses, and for v2 a 12-byte time header
//!   (seconds, microseconds little-endian, capture id, two padding bytes, as Kamailio and its
//!   `sipcapture` receiver lay out `struct hep_timehdr`).
//!
//! Hand-written: HEP is a few fixed fields and a type-length walk, and the crates that decode
//! it allocate per packet and accept lengths this decoder must refuse.
//!
//! The IP-protocol field is informational only: Kamailio writes 22 for a message it received
//! over TLS, Asterisk 6. Nothing here depends on it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, SystemTime},
};

/// HEP payload type of SIP.
pub const PAYLOAD_SIP: u8 = 1;

/// A SIP message carried by a HEP datagram, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HepSip<'a> {
    /// 1, 2 or 3.
    pub version: u8,
    /// Where the SIP message came from, if the packet says.
    pub src: Option<SocketAddr>,
    /// Where it went, if the packet says.
    pub dst: Option<SocketAddr>,
    /// IP protocol as the sender wrote it (not to be trusted: 22 is Kamailio's TLS).
    pub ip_proto: Option<u8>,
    /// When the sender saw the message.
    pub time: Option<SystemTime>,
    /// The sender's capture id (chunk 0x000c, or the v2 time header's).
    pub capture_id: Option<u32>,
    /// Correlation id (chunk 0x0011; Asterisk puts the Call-ID there).
    pub correlation: Option<&'a [u8]>,
    /// The SIP message.
    pub payload: &'a [u8],
}

/// Why a datagram carries no SIP to parse. Every variant is a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HepError {
    /// Not a HEP datagram at all (no `HEP3` magic, no version 1/2 header).
    #[error("not a HEP datagram (first byte {0:#04x})")]
    NotHep(u8),
    /// A length in the datagram disagrees with the datagram.
    #[error("HEP lengths disagree with the datagram: {0}")]
    BadLength(&'static str),
    /// An address family other than IPv4/IPv6 in a v1/v2 header, or an address chunk of
    /// the wrong size.
    #[error("HEP address family {0} is not IPv4 or IPv6")]
    BadFamily(u8),
    /// A key is configured and the packet's is missing or different (v1/v2 carry none).
    #[error("HEP auth key missing or wrong")]
    AuthFailed,
    /// The payload is compressed (chunk 0x0010): not decompressed, by design.
    #[error("HEP payload is compressed")]
    Compressed,
    /// A payload of another protocol than SIP.
    #[error("HEP payload type {0} is not SIP")]
    NotSip(u8),
    /// No payload at all: a keep-alive (chunk 0x000d) or an empty packet.
    #[error("HEP packet carries no payload (keep-alive)")]
    KeepAlive,
}

impl HepError {
    /// Every metric label a decode can end with, `sip` first.
    pub const OUTCOMES: [&'static str; 8] = [
        "sip",
        "not_hep",
        "bad_length",
        "bad_family",
        "auth_failed",
        "compressed",
        "not_sip",
        "keepalive",
    ];

    /// The metric label.
    pub fn outcome(self) -> &'static str {
        match self {
            HepError::NotHep(_) => "not_hep",
            HepError::BadLength(_) => "bad_length",
            HepError::BadFamily(_) => "bad_family",
            HepError::AuthFailed => "auth_failed",
            HepError::Compressed => "compressed",
            HepError::NotSip(_) => "not_sip",
            HepError::KeepAlive => "keepalive",
        }
    }
}

/// Decodes one datagram. With `auth_key`, only HEPv3 packets whose 0x000e chunk equals it
/// (compared in constant time) are accepted.
pub fn decode<'a>(datagram: &'a [u8], auth_key: Option<&[u8]>) -> Result<HepSip<'a>, HepError> {
    match datagram {
        [b'H', b'E', b'P', b'3', ..] => decode_v3(datagram, auth_key),
        [version @ (1 | 2), ..] => {
            if auth_key.is_some() {
                // v1/v2 have no place for a key: with a key set, they cannot be trusted.
                return Err(HepError::AuthFailed);
            }
            decode_v12(datagram, *version)
        }
        [first, ..] => Err(HepError::NotHep(*first)),
        [] => Err(HepError::NotHep(0)),
    }
}

/// Bytes of the v1/v2 fixed header before the addresses.
const V12_HEADER: usize = 8;
/// Bytes of the v2 time header (`struct hep_timehdr`: u32, u32, u16, padded to 12).
const V2_TIME: usize = 12;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

fn decode_v12(datagram: &[u8], version: u8) -> Result<HepSip<'_>, HepError> {
    let [_, header_len, family, proto, sp0, sp1, dp0, dp1, ..] = *datagram else {
        return Err(HepError::BadLength("shorter than the HEPv1 header"));
    };
    let addr_len = match family {
        AF_INET => 8,
        AF_INET6 => 32,
        other => return Err(HepError::BadFamily(other)),
    };
    // The header length field covers the fixed header and the addresses, not the v2 time.
    if usize::from(header_len) != V12_HEADER + addr_len {
        return Err(HepError::BadLength("HEPv1/v2 header length field"));
    }
    let addrs = datagram
        .get(V12_HEADER..V12_HEADER + addr_len)
        .ok_or(HepError::BadLength("HEPv1/v2 addresses past the datagram"))?;
    let (src_ip, dst_ip) = if family == AF_INET {
        (
            IpAddr::from(<[u8; 4]>::try_from(&addrs[..4]).unwrap_or_default()),
            IpAddr::from(<[u8; 4]>::try_from(&addrs[4..8]).unwrap_or_default()),
        )
    } else {
        (
            IpAddr::from(<[u8; 16]>::try_from(&addrs[..16]).unwrap_or_default()),
            IpAddr::from(<[u8; 16]>::try_from(&addrs[16..32]).unwrap_or_default()),
        )
    };
    let mut offset = V12_HEADER + addr_len;
    let (mut time, mut capture_id) = (None, None);
    if version == 2 {
        let t = datagram
            .get(offset..offset + V2_TIME)
            .ok_or(HepError::BadLength("HEPv2 time header past the datagram"))?;
        let secs = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
        let micros = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
        time = wall_time(secs, micros);
        capture_id = Some(u32::from(u16::from_le_bytes([t[8], t[9]])));
        offset += V2_TIME;
    }
    let payload = &datagram[offset..];
    if payload.is_empty() {
        return Err(HepError::KeepAlive);
    }
    Ok(HepSip {
        version,
        src: Some(SocketAddr::new(src_ip, u16::from_be_bytes([sp0, sp1]))),
        dst: Some(SocketAddr::new(dst_ip, u16::from_be_bytes([dp0, dp1]))),
        ip_proto: Some(proto),
        time,
        capture_id,
        correlation: None,
        payload,
    })
}

/// `HEP3` + total length.
const V3_HEADER: usize = 6;
/// Vendor, type, length.
const CHUNK_HEADER: usize = 6;

/// What a v3 chunk walk collected.
#[derive(Default)]
struct Chunks<'a> {
    src4: Option<Ipv4Addr>,
    dst4: Option<Ipv4Addr>,
    src6: Option<Ipv6Addr>,
    dst6: Option<Ipv6Addr>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
    ip_proto: Option<u8>,
    secs: Option<u32>,
    micros: Option<u32>,
    payload_type: Option<u8>,
    capture_id: Option<u32>,
    auth_key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    compressed: bool,
    correlation: Option<&'a [u8]>,
}

fn decode_v3<'a>(datagram: &'a [u8], auth_key: Option<&[u8]>) -> Result<HepSip<'a>, HepError> {
    let total = datagram
        .get(4..6)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or(HepError::BadLength("shorter than the HEPv3 header"))?;
    // The total covers the whole packet; a sender may not pad, and a datagram cut short is
    // refused rather than half-read.
    if total < V3_HEADER || total != datagram.len() {
        return Err(HepError::BadLength(
            "HEPv3 total length differs from the datagram",
        ));
    }
    let mut chunks = Chunks::default();
    let mut rest = &datagram[V3_HEADER..];
    while !rest.is_empty() {
        let [v0, v1, t0, t1, l0, l1, ..] = *rest else {
            return Err(HepError::BadLength("HEPv3 chunk header past the datagram"));
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        if len < CHUNK_HEADER {
            // Zero or short lengths would loop forever or read the header as data.
            return Err(HepError::BadLength("HEPv3 chunk shorter than its header"));
        }
        let Some((chunk, next)) = rest.split_at_checked(len) else {
            return Err(HepError::BadLength("HEPv3 chunk past the datagram"));
        };
        rest = next;
        if [v0, v1] != [0, 0] {
            continue; // vendor chunks say nothing this decoder needs
        }
        chunks.take(u16::from_be_bytes([t0, t1]), &chunk[CHUNK_HEADER..])?;
    }
    if let Some(expected) = auth_key {
        match chunks.auth_key {
            Some(got) if constant_time_eq(got, expected) => {}
            _ => return Err(HepError::AuthFailed),
        }
    }
    if chunks.compressed {
        return Err(HepError::Compressed);
    }
    let Some(payload) = chunks.payload.filter(|p| !p.is_empty()) else {
        return Err(HepError::KeepAlive);
    };
    match chunks.payload_type {
        Some(PAYLOAD_SIP) => {}
        // A missing type is not SIP as far as anyone promised.
        other => return Err(HepError::NotSip(other.unwrap_or(0))),
    }
    let (src_ip, dst_ip) = match (chunks.src4, chunks.dst4, chunks.src6, chunks.dst6) {
        (Some(s), Some(d), _, _) => (Some(IpAddr::V4(s)), Some(IpAddr::V4(d))),
        (_, _, Some(s), Some(d)) => (Some(IpAddr::V6(s)), Some(IpAddr::V6(d))),
        (s4, d4, s6, d6) => (
            s4.map(IpAddr::V4).or(s6.map(IpAddr::V6)),
            d4.map(IpAddr::V4).or(d6.map(IpAddr::V6)),
        ),
    };
    Ok(HepSip {
        version: 3,
        src: src_ip.map(|ip| SocketAddr::new(ip, chunks.src_port.unwrap_or(0))),
        dst: dst_ip.map(|ip| SocketAddr::new(ip, chunks.dst_port.unwrap_or(0))),
        ip_proto: chunks.ip_proto,
        time: chunks
            .secs
            .and_then(|s| wall_time(s, chunks.micros.unwrap_or(0))),
        capture_id: chunks.capture_id,
        correlation: chunks.correlation,
        payload,
    })
}

impl<'a> Chunks<'a> {
    /// Records one vendor-0 chunk's value; a fixed-size chunk of another size is refused.
    fn take(&mut self, kind: u16, value: &'a [u8]) -> Result<(), HepError> {
        match kind {
            0x0002 => self.ip_proto = Some(fixed::<1>(value)?[0]),
            0x0003 => self.src4 = Some(Ipv4Addr::from(fixed::<4>(value)?)),
            0x0004 => self.dst4 = Some(Ipv4Addr::from(fixed::<4>(value)?)),
            0x0005 => self.src6 = Some(Ipv6Addr::from(fixed::<16>(value)?)),
            0x0006 => self.dst6 = Some(Ipv6Addr::from(fixed::<16>(value)?)),
            0x0007 => self.src_port = Some(u16::from_be_bytes(fixed(value)?)),
            0x0008 => self.dst_port = Some(u16::from_be_bytes(fixed(value)?)),
            0x0009 => self.secs = Some(u32::from_be_bytes(fixed(value)?)),
            0x000a => self.micros = Some(u32::from_be_bytes(fixed(value)?)),
            0x000b => self.payload_type = Some(fixed::<1>(value)?[0]),
            0x000c => self.capture_id = Some(u32::from_be_bytes(fixed(value)?)),
            0x000e => self.auth_key = Some(value),
            0x000f => self.payload = Some(value),
            0x0010 => self.compressed = true,
            0x0011 => self.correlation = Some(value),
            // 0x0001 family (implied by the address chunks), 0x000d keep-alive timer, and
            // every chunk this receiver has no use for.
            _ => {}
        }
        Ok(())
    }
}

/// A fixed-size chunk value.
fn fixed<const N: usize>(value: &[u8]) -> Result<[u8; N], HepError> {
    value
        .try_into()
        .map_err(|_| HepError::BadLength("HEPv3 fixed-size chunk of the wrong size"))
}

fn wall_time(secs: u32, micros: u32) -> Option<SystemTime> {
    // A zero time means the sender did not say; microseconds past a second are refused.
    (secs != 0 && micros < 1_000_000).then(|| {
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(secs.into())
            + Duration::from_micros(micros.into())
    })
}

/// Equality whose time depends only on the lengths, so the key cannot be guessed byte by
/// byte from response timing. Hand-written: one XOR fold; the length is not secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Builders of HEP datagrams, for tests, the fuzz corpus and the benches.
pub mod build {
    use std::net::{IpAddr, SocketAddr};

    /// The parts of a HEPv3 packet; `None` leaves a chunk out.
    #[derive(Clone, Debug)]
    pub struct V3<'a> {
        /// Source address and port.
        pub src: SocketAddr,
        /// Destination address and port.
        pub dst: SocketAddr,
        /// Seconds and microseconds.
        pub time: Option<(u32, u32)>,
        /// Payload type chunk.
        pub payload_type: Option<u8>,
        /// Capture id chunk.
        pub capture_id: Option<u32>,
        /// Auth key chunk.
        pub auth_key: Option<&'a [u8]>,
        /// Correlation chunk.
        pub correlation: Option<&'a [u8]>,
        /// Payload chunk (0x000f).
        pub payload: &'a [u8],
        /// Put ports before addresses (Asterisk's order) instead of after (Kamailio's).
        pub ports_first: bool,
    }

    impl<'a> V3<'a> {
        /// SIP from `src` to `dst`, no time, no key.
        pub fn sip(src: SocketAddr, dst: SocketAddr, payload: &'a [u8]) -> Self {
            Self {
                src,
                dst,
                time: None,
                payload_type: Some(1),
                capture_id: Some(2001),
                auth_key: None,
                correlation: None,
                payload,
                ports_first: false,
            }
        }

        /// The datagram.
        pub fn encode(&self) -> Vec<u8> {
            let mut out = b"HEP3\0\0".to_vec();
            let v6 = self.src.is_ipv6();
            chunk(&mut out, 0x0001, &[if v6 { 10 } else { 2 }]);
            chunk(&mut out, 0x0002, &[17]);
            let ports = |out: &mut Vec<u8>| {
                chunk(out, 0x0007, &self.src.port().to_be_bytes());
                chunk(out, 0x0008, &self.dst.port().to_be_bytes());
            };
            if self.ports_first {
                ports(&mut out);
            }
            for (ip, v4, v6) in [(self.src.ip(), 3, 5), (self.dst.ip(), 4, 6)] {
                match ip {
                    IpAddr::V4(a) => chunk(&mut out, v4, &a.octets()),
                    IpAddr::V6(a) => chunk(&mut out, v6, &a.octets()),
                }
            }
            if !self.ports_first {
                ports(&mut out);
            }
            if let Some((s, us)) = self.time {
                chunk(&mut out, 0x0009, &s.to_be_bytes());
                chunk(&mut out, 0x000a, &us.to_be_bytes());
            }
            if let Some(t) = self.payload_type {
                chunk(&mut out, 0x000b, &[t]);
            }
            if let Some(id) = self.capture_id {
                chunk(&mut out, 0x000c, &id.to_be_bytes());
            }
            if let Some(key) = self.auth_key {
                chunk(&mut out, 0x000e, key);
            }
            if let Some(c) = self.correlation {
                chunk(&mut out, 0x0011, c);
            }
            chunk(&mut out, 0x000f, self.payload);
            let total = u16::try_from(out.len()).unwrap_or(u16::MAX);
            out[4..6].copy_from_slice(&total.to_be_bytes());
            out
        }
    }

    /// Appends one vendor-0 chunk.
    pub fn chunk(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&kind.to_be_bytes());
        let len = u16::try_from(value.len() + 6).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(value);
    }

    /// A HEPv1 (`version` 1) or v2 (2, with `time`) datagram as Kamailio writes it; both
    /// addresses must be of one family.
    pub fn v12(
        version: u8,
        src: SocketAddr,
        dst: SocketAddr,
        time: (u32, u32),
        payload: &[u8],
    ) -> Vec<u8> {
        let (family, header_len, addrs) = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (2, 16, [&s.octets()[..], &d.octets()[..]].concat()),
            (IpAddr::V6(s), IpAddr::V6(d)) => (10, 40, [&s.octets()[..], &d.octets()[..]].concat()),
            _ => return Vec::new(),
        };
        let mut out = vec![version, header_len, family, 17];
        out.extend_from_slice(&src.port().to_be_bytes());
        out.extend_from_slice(&dst.port().to_be_bytes());
        out.extend_from_slice(&addrs);
        v2_time(&mut out, version, time);
        out.extend_from_slice(payload);
        out
    }

    fn v2_time(out: &mut Vec<u8>, version: u8, (secs, micros): (u32, u32)) {
        if version == 2 {
            out.extend_from_slice(&secs.to_le_bytes());
            out.extend_from_slice(&micros.to_le_bytes());
            out.extend_from_slice(&7u16.to_le_bytes());
            out.extend_from_slice(&[0, 0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{build::V3, *};

    const SIP: &[u8] = b"NOTIFY sip:a@b SIP/2.0\r\n\r\n";

    fn addrs() -> (SocketAddr, SocketAddr) {
        (
            "192.0.2.1:5090".parse().unwrap(),
            "192.0.2.2:5061".parse().unwrap(),
        )
    }

    #[test]
    fn v3_in_either_chunk_order_gives_the_same_message() {
        let (src, dst) = addrs();
        for ports_first in [false, true] {
            let packet = V3 {
                time: Some((1_700_000_000, 250_000)),
                correlation: Some(b"call-1"),
                ports_first,
                ..V3::sip(src, dst, SIP)
            }
            .encode();
            let sip = decode(&packet, None).unwrap();
            assert_eq!(sip.version, 3);
            assert_eq!(sip.src, Some(src));
            assert_eq!(sip.dst, Some(dst));
            assert_eq!(sip.payload, SIP);
            assert_eq!(sip.capture_id, Some(2001));
            assert_eq!(sip.correlation, Some(&b"call-1"[..]));
            assert_eq!(
                sip.time,
                Some(SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_250_000))
            );
        }
    }

    #[test]
    fn v3_ipv6_addresses() {
        let src: SocketAddr = "[2001:db8::1]:5090".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::2]:5061".parse().unwrap();
        let packet = V3::sip(src, dst, SIP).encode();
        let sip = decode(&packet, None).unwrap();
        assert_eq!((sip.src, sip.dst), (Some(src), Some(dst)));
    }

    #[test]
    fn v1_and_v2_fixed_headers() {
        let (src, dst) = addrs();
        let (p1, p2) = (
            build::v12(1, src, dst, (0, 0), SIP),
            build::v12(2, src, dst, (1_700_000_000, 5), SIP),
        );
        let v1 = decode(&p1, None).unwrap();
        assert_eq!(
            (v1.version, v1.src, v1.dst, v1.time),
            (1, Some(src), Some(dst), None)
        );
        assert_eq!(v1.payload, SIP);
        let v2 = decode(&p2, None).unwrap();
        assert_eq!(v2.payload, SIP);
        assert_eq!(v2.capture_id, Some(7));
        assert_eq!(
            v2.time,
            Some(SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_005))
        );
        let (s6, d6): (SocketAddr, SocketAddr) = (
            "[2001:db8::1]:1".parse().unwrap(),
            "[2001:db8::2]:2".parse().unwrap(),
        );
        let p6 = build::v12(2, s6, d6, (1, 0), SIP);
        let v6 = decode(&p6, None).unwrap();
        assert_eq!((v6.src, v6.dst, v6.payload), (Some(s6), Some(d6), SIP));
    }

    #[test]
    fn the_auth_key_is_required_when_set() {
        let (src, dst) = addrs();
        let keyed = V3 {
            auth_key: Some(b"s3cret"),
            ..V3::sip(src, dst, SIP)
        };
        assert!(decode(&keyed.encode(), Some(b"s3cret")).is_ok());
        assert!(decode(&keyed.encode(), None).is_ok());
        let wrong = V3 {
            auth_key: Some(b"s3creT"),
            ..keyed.clone()
        };
        let short = V3 {
            auth_key: Some(b"s3cre"),
            ..keyed.clone()
        };
        let none = V3::sip(src, dst, SIP);
        for packet in [
            wrong.encode(),
            short.encode(),
            none.encode(),
            build::v12(1, src, dst, (0, 0), SIP),
        ] {
            assert_eq!(decode(&packet, Some(b"s3cret")), Err(HepError::AuthFailed));
        }
    }

    /// Each hostile or foreign datagram and the one outcome it must end with.
    #[test]
    fn every_refusal_has_its_reason() {
        let (src, dst) = addrs();
        let good = V3::sip(src, dst, SIP).encode();
        let with_total = |mut p: Vec<u8>, total: u16| {
            p[4..6].copy_from_slice(&total.to_be_bytes());
            p
        };
        let mut zero_chunk = b"HEP3\0\0".to_vec();
        build::chunk(&mut zero_chunk, 0x000f, SIP);
        zero_chunk.extend_from_slice(&[0, 0, 0, 0x0b, 0, 0]);
        let zero_chunk = with_total(zero_chunk.clone(), zero_chunk.len() as u16);
        let mut long_chunk = good.clone();
        let last = long_chunk.len() - SIP.len() - 2;
        long_chunk[last..last + 2].copy_from_slice(&0xffffu16.to_be_bytes());
        let mut compressed = b"HEP3\0\0".to_vec();
        build::chunk(&mut compressed, 0x000b, &[1]);
        build::chunk(&mut compressed, 0x0010, b"\x1f\x8b...");
        let compressed = with_total(compressed.clone(), compressed.len() as u16);
        let mut keepalive = b"HEP3\0\0".to_vec();
        build::chunk(&mut keepalive, 0x000d, &30u16.to_be_bytes());
        let keepalive = with_total(keepalive.clone(), keepalive.len() as u16);
        let mut bad_port = b"HEP3\0\0".to_vec();
        build::chunk(&mut bad_port, 0x0007, &[1, 2, 3]);
        let bad_port = with_total(bad_port.clone(), bad_port.len() as u16);
        let mut garbage = b"HEP3".to_vec();
        garbage.extend_from_slice(&[0, 40]);
        garbage.extend_from_slice(&[0xa5; 34]);
        let mut v1_bad_hl = build::v12(1, src, dst, (0, 0), SIP);
        v1_bad_hl[1] = 200;
        let mut v1_bad_af = build::v12(1, src, dst, (0, 0), SIP);
        v1_bad_af[2] = 7;
        let table: Vec<(&str, Vec<u8>, HepError)> = vec![
            ("empty", vec![], HepError::NotHep(0)),
            ("plain SIP", SIP.to_vec(), HepError::NotHep(b'N')),
            (
                "magic only",
                b"HEP3".to_vec(),
                HepError::BadLength("shorter than the HEPv3 header"),
            ),
            (
                "truncated",
                good[..good.len() - 3].to_vec(),
                HepError::BadLength("HEPv3 total length differs from the datagram"),
            ),
            (
                "huge total",
                with_total(good.clone(), u16::MAX),
                HepError::BadLength("HEPv3 total length differs from the datagram"),
            ),
            (
                "tiny total",
                with_total(b"HEP3\0\0".to_vec(), 3),
                HepError::BadLength("HEPv3 total length differs from the datagram"),
            ),
            (
                "zero-length chunk",
                zero_chunk,
                HepError::BadLength("HEPv3 chunk shorter than its header"),
            ),
            (
                "chunk past the end",
                long_chunk,
                HepError::BadLength("HEPv3 chunk past the datagram"),
            ),
            (
                "header on garbage",
                garbage,
                HepError::BadLength("HEPv3 chunk past the datagram"),
            ),
            (
                "half a chunk header",
                with_total([&good[..], &[0, 0, 0]].concat(), good.len() as u16 + 3),
                HepError::BadLength("HEPv3 chunk header past the datagram"),
            ),
            (
                "wrong-size port",
                bad_port,
                HepError::BadLength("HEPv3 fixed-size chunk of the wrong size"),
            ),
            ("compressed", compressed, HepError::Compressed),
            ("keep-alive", keepalive, HepError::KeepAlive),
            (
                "RTCP",
                V3 {
                    payload_type: Some(5),
                    ..V3::sip(src, dst, SIP)
                }
                .encode(),
                HepError::NotSip(5),
            ),
            (
                "no payload type",
                V3 {
                    payload_type: None,
                    ..V3::sip(src, dst, SIP)
                }
                .encode(),
                HepError::NotSip(0),
            ),
            (
                "v1 cut short",
                vec![1, 16, 2, 17, 0],
                HepError::BadLength("shorter than the HEPv1 header"),
            ),
            (
                "v1 header length",
                v1_bad_hl,
                HepError::BadLength("HEPv1/v2 header length field"),
            ),
            ("v1 family", v1_bad_af, HepError::BadFamily(7)),
            (
                "v1 addresses cut",
                build::v12(1, src, dst, (0, 0), b"")[..12].to_vec(),
                HepError::BadLength("HEPv1/v2 addresses past the datagram"),
            ),
            (
                "v2 time cut",
                build::v12(2, src, dst, (1, 1), b"")[..20].to_vec(),
                HepError::BadLength("HEPv2 time header past the datagram"),
            ),
            (
                "v1 no payload",
                build::v12(1, src, dst, (0, 0), b""),
                HepError::KeepAlive,
            ),
        ];
        for (name, packet, expected) in table {
            assert_eq!(decode(&packet, None), Err(expected), "{name}");
            assert!(HepError::OUTCOMES.contains(&expected.outcome()), "{name}");
        }
    }

    #[test]
    fn vendor_and_unknown_chunks_are_skipped() {
        let (src, dst) = addrs();
        let mut packet = V3::sip(src, dst, SIP).encode();
        packet.extend_from_slice(&[0, 9, 0, 0x0f, 0, 8, 0xde, 0xad]); // vendor 9 "payload"
        build::chunk(&mut packet, 0x0099, b"whatever");
        let total = packet.len() as u16;
        packet[4..6].copy_from_slice(&total.to_be_bytes());
        assert_eq!(decode(&packet, None).unwrap().payload, SIP);
    }
}
