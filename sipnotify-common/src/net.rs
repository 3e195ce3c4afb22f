//! The header walk shared by the XDP program, the AF_PACKET reader, the capture-file source and
//! the agent's reassembly stage: the program's only IPv4/IPv6 walk, and the agent's.
//!
//! It finds the UDP or TCP header of a frame through Ethernet, up to two VLAN tags, IPv4
//! (with options) or IPv6 (with a bounded number of extension headers); [`walk_ip`] starts at
//! the IP header and also says which part of its datagram a fragment holds, for reassembly. It is written against the
//! [`Frame`] trait so the same code runs on a kernel packet (bounds-checked pointer reads the
//! verifier accepts) and on a byte slice in userspace, where `cargo test` reaches it.
//!
//! The walk is bounded: at most [`MAX_VLAN_TAGS`] tags and [`MAX_IPV6_EXT_HEADERS`] extension
//! headers, and every offset stays below [`MAX_HEADER_OFFSET`], which is what lets the BPF
//! verifier prove each read in range.

/// Most VLAN tags followed (802.1Q, and 802.1ad QinQ on the outside).
pub const MAX_VLAN_TAGS: usize = 2;
/// Most IPv6 extension headers (hop-by-hop, routing, destination options, fragment) followed.
pub const MAX_IPV6_EXT_HEADERS: usize = 4;
/// Every header the walk reads starts below this offset.
pub const MAX_HEADER_OFFSET: usize = 1024;

/// Length of an Ethernet header without VLAN tags.
pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4.
pub const ETH_P_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad (QinQ) service tag.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 hop-by-hop options header.
pub const IPV6_HOPOPTS: u8 = 0;
/// IPv6 routing header.
pub const IPV6_ROUTING: u8 = 43;
/// IPv6 fragment header.
pub const IPV6_FRAGMENT: u8 = 44;
/// IPv6 authentication header.
pub const IPV6_AH: u8 = 51;
/// IPv6 destination options header.
pub const IPV6_DSTOPTS: u8 = 60;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;

/// Read access to the bytes of one frame.
pub trait Frame {
    /// The `N` bytes at `offset`, or `None` if the frame ends before `offset + N`.
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Frame for [u8] {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        let bytes = self.get(offset..end)?;
        bytes.try_into().ok()
    }
}

/// Why the walk stopped before reaching a UDP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bail {
    /// A header runs past the end of the frame.
    ShortHeader,
    /// IPv4 IHL below 5, or the IP version nibble disagrees with the EtherType.
    BadIpHeader,
    /// More IPv6 extension headers than [`MAX_IPV6_EXT_HEADERS`].
    ExtHeaderLimit,
}

/// The transport protocol the walk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP: SIP datagrams, the only ones captured.
    Udp,
    /// TCP: counted (a TLS handshake on a watched port is worth a warning), not captured.
    Tcp,
}

/// Where the transport header of a frame is, and what the walk learned on the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// 4 or 6.
    pub ip_version: u8,
    /// UDP or TCP.
    pub transport: Transport,
    /// Offset of the IP header.
    pub l3_offset: usize,
    /// Offset of the UDP or TCP header.
    pub l4_offset: usize,
    /// Where the IP datagram ends according to its length field (IPv4 total length, IPv6
    /// payload length), which tells a TCP payload from Ethernet padding.
    pub ip_end: usize,
    /// `FLAG_VLAN`, `FLAG_QINQ` and `FLAG_FIRST_FRAGMENT` bits (see the crate root).
    pub flags: u16,
    /// The IP identification of a fragment (IPv4's 16 bits, IPv6's 32), zero otherwise.
    pub fragment_id: u32,
    /// TCI of the outermost VLAN tag, zero when untagged.
    pub vlan_tci: u16,
}

impl Location {
    /// Offset of the UDP payload (meaningful for UDP only).
    #[inline(always)]
    pub fn payload_offset(&self) -> usize {
        self.l4_offset + UDP_HLEN
    }
}

/// The result of walking one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// A UDP or TCP header (of a whole datagram or of a first fragment) is present.
    Found(Location),
    /// Not IP, or IP carrying neither UDP nor TCP.
    NotUdpOrTcp,
    /// A non-first fragment of a UDP or TCP datagram: it has no transport header, so
    /// `l4_offset` is where its share of the datagram starts.
    LaterFragment(Location),
    /// The walk gave up.
    Bail(Bail),
}

/// Walks the Ethernet frame `frame` to its UDP or TCP header.
#[inline(always)]
pub fn walk<F: Frame + ?Sized>(frame: &F) -> Walk {
    let Some(eth) = frame.load::<ETH_HLEN>(0) else {
        return Walk::Bail(Bail::ShortHeader);
    };
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut offset = ETH_HLEN;
    let mut flags = 0u16;
    let mut vlan_tci = 0u16;

    for tag in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // A tag is 2 bytes of TCI followed by the inner EtherType.
        let Some(vlan) = frame.load::<4>(offset) else {
            return Walk::Bail(Bail::ShortHeader);
        };
        if tag == 0 {
            vlan_tci = u16::from_be_bytes([vlan[0], vlan[1]]);
            flags |= crate::FLAG_VLAN;
        } else {
            flags |= crate::FLAG_QINQ;
        }
        ethertype = u16::from_be_bytes([vlan[2], vlan[3]]);
        offset += 4;
    }

    let l3_offset = offset;
    let found = |ip_version, l4: L4| {
        let location = Location {
            ip_version,
            transport: l4.transport,
            l3_offset,
            l4_offset: l4.offset,
            ip_end: l4.ip_end,
            flags: flags | l4.flags,
            vlan_tci,
            fragment_id: l4.fragment_id,
        };
        if l4.later_fragment {
            Walk::LaterFragment(location)
        } else {
            Walk::Found(location)
        }
    };
    match ethertype {
        ETH_P_IPV4 => match walk_ipv4(frame, l3_offset) {
            Ok(l4) => found(4, l4),
            Err(walk) => walk,
        },
        ETH_P_IPV6 => match walk_ipv6(frame, l3_offset) {
            Ok(l4) => found(6, l4),
            Err(walk) => walk,
        },
        _ => Walk::NotUdpOrTcp,
    }
}

/// What an IP walk found.
struct L4 {
    transport: Transport,
    offset: usize,
    ip_end: usize,
    flags: u16,
    fragment_id: u32,
    later_fragment: bool,
    /// Which part of its datagram a fragment holds (for [`walk_ip`]; the program reads none
    /// of it, so none of it reaches its instructions).
    part: Part,
}

/// Where a packet's share of its datagram starts, and where in the datagram it goes.
#[derive(Clone, Copy)]
struct Part {
    /// Offset of the first byte after the IPv4 header or the IPv6 fragment header.
    data: usize,
    /// Fragment offset in bytes; zero when unfragmented.
    offset: usize,
    /// More fragments follow (MF, M).
    more: bool,
    /// Whether the packet has a fragment header (IPv6) or fragment fields set (IPv4).
    fragmented: bool,
}

/// An IP packet as [`walk_ip`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpWalk {
    /// UDP or TCP.
    pub transport: Transport,
    /// Offset of the UDP or TCP header; for a later fragment, of its share of the datagram.
    pub l4_offset: usize,
    /// Where the IP datagram ends according to its length field.
    pub ip_end: usize,
    /// `Some` for a fragment (an atomic IPv6 fragment is whole).
    pub fragment: Option<IpFragment>,
}

/// Which part of its datagram a fragment holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpFragment {
    /// Offset of the fragment's data in the packet: right after the IPv4 header or the IPv6
    /// fragment header.
    pub data_offset: usize,
    /// Where that data goes in the datagram, in bytes.
    pub offset: usize,
    /// More fragments follow.
    pub more: bool,
    /// The identification (IPv4's 16 bits, IPv6's 32).
    pub id: u32,
}

/// Walks the IP packet whose header starts at `l3` in `frame`, IPv4 or IPv6 by its version
/// nibble, with the limits and verdicts of [`walk`]; `Err` holds the verdict when no UDP or
/// TCP header (or later fragment of one) is there.
#[inline(always)]
pub fn walk_ip<F: Frame + ?Sized>(frame: &F, l3: usize) -> Result<IpWalk, Walk> {
    let Some([first]) = frame.load::<1>(l3) else {
        return Err(Walk::Bail(Bail::ShortHeader));
    };
    let l4 = match first >> 4 {
        4 => walk_ipv4(frame, l3)?,
        6 => walk_ipv6(frame, l3)?,
        _ => return Err(Walk::Bail(Bail::BadIpHeader)),
    };
    Ok(IpWalk {
        transport: l4.transport,
        l4_offset: l4.offset,
        ip_end: l4.ip_end,
        fragment: l4.part.fragmented.then_some(IpFragment {
            data_offset: l4.part.data,
            offset: l4.part.offset,
            more: l4.part.more,
            id: l4.fragment_id,
        }),
    })
}

#[inline(always)]
fn transport(protocol: u8) -> Option<Transport> {
    match protocol {
        IPPROTO_UDP => Some(Transport::Udp),
        IPPROTO_TCP => Some(Transport::Tcp),
        _ => None,
    }
}

/// Returns the transport header, or the walk's verdict.
#[inline(always)]
fn walk_ipv4<F: Frame + ?Sized>(frame: &F, l3: usize) -> Result<L4, Walk> {
    let Some(ip) = frame.load::<20>(l3) else {
        return Err(Walk::Bail(Bail::ShortHeader));
    };
    let ihl = usize::from(ip[0] & 0x0f);
    if ip[0] >> 4 != 4 || ihl < 5 {
        return Err(Walk::Bail(Bail::BadIpHeader));
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let more_fragments = frag & 0x2000 != 0;
    let later_fragment = frag & 0x1fff != 0;
    let Some(transport) = transport(ip[9]) else {
        return Err(Walk::NotUdpOrTcp);
    };
    let flags = if more_fragments && !later_fragment {
        crate::FLAG_FIRST_FRAGMENT
    } else {
        0
    };
    let fragment_id = if more_fragments || later_fragment {
        u32::from(u16::from_be_bytes([ip[4], ip[5]]))
    } else {
        0
    };
    Ok(L4 {
        transport,
        offset: l3 + ihl * 4,
        ip_end: l3 + usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        flags,
        fragment_id,
        later_fragment,
        part: Part {
            data: l3 + ihl * 4,
            offset: usize::from(frag & 0x1fff) * 8,
            more: more_fragments,
            fragmented: more_fragments || later_fragment,
        },
    })
}

/// Returns the transport header, or the walk's verdict.
#[inline(always)]
fn walk_ipv6<F: Frame + ?Sized>(frame: &F, l3: usize) -> Result<L4, Walk> {
    let Some(ip) = frame.load::<8>(l3) else {
        return Err(Walk::Bail(Bail::ShortHeader));
    };
    if ip[0] >> 4 != 6 {
        return Err(Walk::Bail(Bail::BadIpHeader));
    }
    let mut next_header = ip[6];
    let mut offset = l3 + IPV6_HLEN;
    let ip_end = offset + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let mut flags = 0u16;
    let mut fragment_id = 0u32;
    let mut later_fragment = false;
    let mut part = Part {
        data: 0,
        offset: 0,
        more: false,
        fragmented: false,
    };
    let found = |transport, offset, flags, fragment_id, later_fragment, part| {
        Ok(L4 {
            transport,
            offset,
            ip_end,
            flags,
            fragment_id,
            later_fragment,
            part,
        })
    };
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next_header {
            IPPROTO_UDP => {
                return found(
                    Transport::Udp,
                    offset,
                    flags,
                    fragment_id,
                    later_fragment,
                    part,
                );
            }
            IPPROTO_TCP => {
                return found(
                    Transport::Tcp,
                    offset,
                    flags,
                    fragment_id,
                    later_fragment,
                    part,
                );
            }
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let Some(ext) = frame.load::<2>(offset) else {
                    return Err(Walk::Bail(Bail::ShortHeader));
                };
                next_header = ext[0];
                // Hdr Ext Len counts 8-octet units, not including the first 8 octets.
                offset += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let Some(ext) = frame.load::<8>(offset) else {
                    return Err(Walk::Bail(Bail::ShortHeader));
                };
                let frag = u16::from_be_bytes([ext[2], ext[3]]);
                // A fragment header with offset 0 and M clear is an atomic fragment
                // (RFC 6946): the datagram is whole.
                later_fragment = frag & 0xfff8 != 0;
                if frag & 1 != 0 && !later_fragment {
                    flags |= crate::FLAG_FIRST_FRAGMENT;
                }
                if later_fragment || frag & 1 != 0 {
                    fragment_id = u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]);
                }
                next_header = ext[0];
                offset += 8;
                part = Part {
                    data: offset,
                    offset: usize::from(frag & 0xfff8),
                    more: frag & 1 != 0,
                    fragmented: later_fragment || frag & 1 != 0,
                };
                if later_fragment {
                    // What follows is the middle of the datagram, not another header.
                    return match transport(next_header) {
                        Some(t) => found(t, offset, flags, fragment_id, true, part),
                        None => Err(Walk::NotUdpOrTcp),
                    };
                }
            }
            _ => return Err(Walk::NotUdpOrTcp),
        }
        if offset >= MAX_HEADER_OFFSET {
            return Err(Walk::Bail(Bail::ExtHeaderLimit));
        }
    }
    match transport(next_header) {
        Some(transport) => found(transport, offset, flags, fragment_id, later_fragment, part),
        None => Err(Walk::Bail(Bail::ExtHeaderLimit)),
    }
}

/// The UDP header fields the program and the replay need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpHeader {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload length according to the UDP length field (saturating at zero).
    pub payload_len: u16,
}

/// Only the destination port (UDP or TCP, same place): the one field a packet for an
/// unwatched port needs, read before the rest so RTP and other traffic pays for two bytes,
/// not eight.
#[inline(always)]
pub fn dst_port<F: Frame + ?Sized>(frame: &F, location: &Location) -> Option<u16> {
    frame
        .load::<2>(location.l4_offset + 2)
        .map(u16::from_be_bytes)
}

/// Reads the UDP header at `location`.
#[inline(always)]
pub fn udp_header<F: Frame + ?Sized>(frame: &F, location: &Location) -> Option<UdpHeader> {
    let udp = frame.load::<UDP_HLEN>(location.l4_offset)?;
    Some(UdpHeader {
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        payload_len: u16::from_be_bytes([udp[4], udp[5]]).saturating_sub(UDP_HLEN as u16),
    })
}

/// Source and destination address, as 16 bytes each (IPv4 in the first four).
#[inline(always)]
pub fn addresses<F: Frame + ?Sized>(
    frame: &F,
    location: &Location,
) -> Option<([u8; 16], [u8; 16])> {
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    if location.ip_version == 4 {
        let a = frame.load::<8>(location.l3_offset + 12)?;
        src[..4].copy_from_slice(&a[..4]);
        dst[..4].copy_from_slice(&a[4..]);
    } else {
        src = frame.load::<16>(location.l3_offset + 8)?;
        dst = frame.load::<16>(location.l3_offset + 24)?;
    }
    Some((src, dst))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use etherparse::{
        IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv6Extensions, Ipv6FragmentHeader,
        Ipv6Header, Ipv6RawExtHeader, PacketBuilder, VlanId,
    };

    use super::*;
    use crate::{FLAG_FIRST_FRAGMENT, FLAG_QINQ, FLAG_VLAN};

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn write(builder: etherparse::PacketBuilderStep<etherparse::UdpHeader>) -> Vec<u8> {
        let mut frame = Vec::new();
        builder.write(&mut frame, b"NOTIFY x").unwrap();
        frame
    }

    fn ipv6(extensions: Ipv6Extensions) -> IpHeaders {
        let header = Ipv6Header {
            hop_limit: 64,
            source: [1; 16],
            destination: [2; 16],
            ..Default::default()
        };
        IpHeaders::Ipv6(header, extensions)
    }

    fn located(frame: &[u8]) -> Location {
        match walk(frame) {
            Walk::Found(location) => location,
            other => panic!("expected UDP, got {other:?}"),
        }
    }

    #[test]
    fn plain_ipv4_udp() {
        let frame = write(
            PacketBuilder::ethernet2(MAC, MAC)
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(1234, 5061),
        );
        let location = located(&frame);
        assert_eq!(
            (location.ip_version, location.l3_offset, location.l4_offset),
            (4, 14, 34)
        );
        assert_eq!(location.payload_offset(), 42);
        assert_eq!(dst_port(frame.as_slice(), &location), Some(5061));
        assert_eq!(
            udp_header(frame.as_slice(), &location),
            Some(UdpHeader {
                src_port: 1234,
                dst_port: 5061,
                payload_len: 8
            })
        );
        let (src, dst) = addresses(frame.as_slice(), &location).unwrap();
        assert_eq!(
            (&src[..4], &dst[..4]),
            (&[10, 0, 0, 1][..], &[10, 0, 0, 2][..])
        );
        assert!(src[4..].iter().chain(&dst[4..]).all(|&b| b == 0));
    }

    #[test]
    fn ipv4_options_move_the_udp_header() {
        let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, [10, 0, 0, 1], [10, 0, 0, 2]).unwrap();
        ip.options = [1; 12][..].try_into().unwrap();
        let frame = write(
            PacketBuilder::ethernet2(MAC, MAC)
                .ip(IpHeaders::Ipv4(ip, Default::default()))
                .udp(1, 5061),
        );
        assert_eq!(located(&frame).l4_offset, 14 + 32);
    }

    #[test]
    fn vlan_tags_shift_the_ip_header() {
        let single = write(
            PacketBuilder::ethernet2(MAC, MAC)
                .single_vlan(VlanId::try_new(7).unwrap())
                .ipv4([1; 4], [2; 4], 64)
                .udp(1, 5061),
        );
        let location = located(&single);
        assert_eq!(
            (location.l3_offset, location.flags, location.vlan_tci),
            (18, FLAG_VLAN, 7)
        );
        let double = write(
            PacketBuilder::ethernet2(MAC, MAC)
                .double_vlan(VlanId::try_new(9).unwrap(), VlanId::try_new(7).unwrap())
                .ipv4([1; 4], [2; 4], 64)
                .udp(1, 5061),
        );
        let location = located(&double);
        assert_eq!(
            (location.l3_offset, location.flags, location.vlan_tci),
            (22, FLAG_VLAN | FLAG_QINQ, 9)
        );
    }

    #[test]
    fn ipv6_extension_headers_are_skipped_by_their_length() {
        let extensions = Ipv6Extensions {
            hop_by_hop_options: Some(Ipv6RawExtHeader::new_raw(IpNumber::UDP, &[0; 14]).unwrap()),
            destination_options: Some(Ipv6RawExtHeader::new_raw(IpNumber::UDP, &[0; 6]).unwrap()),
            ..Default::default()
        };
        let frame = write(
            PacketBuilder::ethernet2(MAC, MAC)
                .ip(ipv6(extensions))
                .udp(1, 5061),
        );
        let location = located(&frame);
        assert_eq!(
            (location.ip_version, location.l4_offset),
            (6, 14 + 40 + 16 + 8)
        );
        let (src, dst) = addresses(frame.as_slice(), &location).unwrap();
        assert_eq!((src, dst), ([1; 16], [2; 16]));
    }

    /// An IPv6 frame with a fragment header, its offset/M field set per RFC 8200 by hand:
    /// etherparse 0.19 writes the M flag into the wrong bit of that field.
    fn ipv6_fragment(offset_units: u16, more: bool) -> Vec<u8> {
        let extensions = Ipv6Extensions {
            fragment: Some(Ipv6FragmentHeader::new(
                IpNumber::UDP,
                IpFragOffset::ZERO,
                false,
                1,
            )),
            ..Default::default()
        };
        let mut frame = write(
            PacketBuilder::ethernet2(MAC, MAC)
                .ip(ipv6(extensions))
                .udp(1, 5061),
        );
        let field = (offset_units << 3) | u16::from(more);
        frame[14 + 40 + 2..14 + 40 + 4].copy_from_slice(&field.to_be_bytes());
        frame
    }

    #[test]
    fn fragments_are_told_apart_and_carry_their_id() {
        let later = |frame: &[u8]| match walk(frame) {
            Walk::LaterFragment(location) => location,
            other => panic!("expected a later fragment, got {other:?}"),
        };
        let first = ipv6_fragment(0, true);
        assert_eq!(located(&first).flags, FLAG_FIRST_FRAGMENT);
        assert_eq!(located(&first).l4_offset, 14 + 40 + 8);
        assert_eq!(located(&first).fragment_id, 1);
        // Offset 0 without M is an atomic fragment (RFC 6946): a whole datagram.
        assert_eq!(located(&ipv6_fragment(0, false)).flags, 0);
        assert_eq!(located(&ipv6_fragment(0, false)).fragment_id, 0);
        let last = later(&ipv6_fragment(3, false));
        assert_eq!(
            (last.fragment_id, last.l4_offset, last.flags),
            (1, 14 + 48, 0)
        );
        assert_eq!(later(&ipv6_fragment(3, true)).transport, Transport::Udp);

        let mut v4 = write(
            PacketBuilder::ethernet2(MAC, MAC)
                .ipv4([1; 4], [2; 4], 64)
                .udp(1, 5061),
        );
        v4[18..20].copy_from_slice(&0xbeefu16.to_be_bytes());
        assert_eq!(located(&v4).fragment_id, 0, "a whole datagram has no id");
        v4[20] |= 0x20; // MF
        assert_eq!(located(&v4).flags, FLAG_FIRST_FRAGMENT);
        assert_eq!(located(&v4).fragment_id, 0xbeef);
        v4[21] = 1; // offset 8 bytes
        let middle = later(&v4);
        assert_eq!((middle.fragment_id, middle.l4_offset), (0xbeef, 14 + 20));
        // A later fragment of something other than UDP or TCP is nobody's business.
        v4[23] = 1;
        assert_eq!(walk(v4.as_slice()), Walk::NotUdpOrTcp);
    }

    #[test]
    fn short_and_malformed_headers_bail_out() {
        let frame = write(
            PacketBuilder::ethernet2(MAC, MAC)
                .ipv4([1; 4], [2; 4], 64)
                .udp(1, 5061),
        );
        for cut in [0, 13, 14, 20, 33] {
            assert_eq!(
                walk(&frame[..cut]),
                Walk::Bail(Bail::ShortHeader),
                "cut at {cut}"
            );
        }
        let mut bad_ihl = frame.clone();
        bad_ihl[14] = 0x44;
        assert_eq!(walk(bad_ihl.as_slice()), Walk::Bail(Bail::BadIpHeader));
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(walk(arp.as_slice()), Walk::NotUdpOrTcp);
    }

    #[test]
    fn too_many_extension_headers_bail_out() {
        // Hand-built: IPv6 with five hop-by-hop style headers chained before UDP.
        let mut frame = std::vec![0u8; 14 + 40 + 5 * 8 + 8];
        frame[12..14].copy_from_slice(&[0x86, 0xdd]);
        frame[14] = 0x60;
        frame[14 + 6] = IPV6_DSTOPTS;
        for i in 0..5 {
            let at = 14 + 40 + i * 8;
            frame[at] = if i == 4 { IPPROTO_UDP } else { IPV6_DSTOPTS };
        }
        assert_eq!(walk(frame.as_slice()), Walk::Bail(Bail::ExtHeaderLimit));
        // Four are within the bound.
        let mut four = frame.clone();
        four[14 + 40 + 3 * 8] = IPPROTO_UDP;
        assert_eq!(located(&four).l4_offset, 14 + 40 + 32);
    }

    #[test]
    fn walk_ip_reads_from_the_ip_header_with_the_same_limits() {
        // Where each fragment's share of the datagram starts, and where it goes.
        let first = ipv6_fragment(0, true);
        let ip = walk_ip(&first[14..], 0).unwrap();
        let part = ip.fragment.unwrap();
        assert_eq!(
            (part.data_offset, part.offset, part.more, part.id),
            (48, 0, true, 1)
        );
        let last = walk_ip(&ipv6_fragment(3, false)[14..], 0).unwrap();
        assert_eq!(last.fragment.map(|f| (f.offset, f.more)), Some((24, false)));
        assert_eq!(
            walk_ip(&ipv6_fragment(0, false)[14..], 0).unwrap().fragment,
            None
        );
        let mut v4 = write(
            PacketBuilder::ethernet2(MAC, MAC)
                .ipv4([1; 4], [2; 4], 64)
                .udp(1, 5061),
        );
        assert_eq!(walk_ip(&v4[14..], 0).unwrap().fragment, None);
        v4[20] = 0x20 | 0x01; // MF, offset 256 units
        let part = walk_ip(&v4[14..], 0).unwrap().fragment.unwrap();
        assert_eq!((part.data_offset, part.offset, part.more), (20, 2048, true));
        // The limits and verdicts of `walk`.
        let mut five = std::vec![0u8; 40 + 5 * 8 + 8];
        five[0] = 0x60;
        five[6] = IPV6_DSTOPTS;
        for i in 0..5 {
            five[40 + i * 8] = if i == 4 { IPPROTO_UDP } else { IPV6_DSTOPTS };
        }
        assert_eq!(
            walk_ip(five.as_slice(), 0),
            Err(Walk::Bail(Bail::ExtHeaderLimit))
        );
        assert_eq!(
            walk_ip(&[0x15u8; 40][..], 0),
            Err(Walk::Bail(Bail::BadIpHeader))
        );
        assert_eq!(walk_ip(&v4[14..20], 0), Err(Walk::Bail(Bail::ShortHeader)));
    }
}
