//! The header walk shared by the XDP program and the pcap replay.
//!
//! It finds the UDP header of a frame through Ethernet, up to two VLAN tags, IPv4 (with
//! options) or IPv6 (with a bounded number of extension headers). It is written against the
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

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
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

/// Where the UDP datagram of a frame is, and what the walk learned on the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpLocation {
    /// 4 or 6.
    pub ip_version: u8,
    /// Offset of the IP header.
    pub l3_offset: usize,
    /// Offset of the UDP header.
    pub udp_offset: usize,
    /// `FLAG_VLAN`, `FLAG_QINQ` and `FLAG_FIRST_FRAGMENT` bits (see the crate root).
    pub flags: u16,
    /// TCI of the outermost VLAN tag, zero when untagged.
    pub vlan_tci: u16,
}

impl UdpLocation {
    /// Offset of the UDP payload.
    #[inline(always)]
    pub fn payload_offset(&self) -> usize {
        self.udp_offset + UDP_HLEN
    }
}

/// The result of walking one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// A UDP header (of a whole datagram or of a first fragment) is present.
    Udp(UdpLocation),
    /// Not IP, or IP carrying something other than UDP.
    NotUdp,
    /// A non-first fragment: it has no UDP header.
    LaterFragment,
    /// The walk gave up.
    Bail(Bail),
}

/// Walks the Ethernet frame `frame` to its UDP header.
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
    let located = |ip_version, udp_offset, flags| {
        Walk::Udp(UdpLocation {
            ip_version,
            l3_offset,
            udp_offset,
            flags,
            vlan_tci,
        })
    };
    match ethertype {
        ETH_P_IPV4 => match walk_ipv4(frame, l3_offset) {
            Ok((udp_offset, fragment_flags)) => located(4, udp_offset, flags | fragment_flags),
            Err(walk) => walk,
        },
        ETH_P_IPV6 => match walk_ipv6(frame, l3_offset) {
            Ok((udp_offset, fragment_flags)) => located(6, udp_offset, flags | fragment_flags),
            Err(walk) => walk,
        },
        _ => Walk::NotUdp,
    }
}

/// Returns the UDP header offset and fragment flags, or the walk's verdict.
#[inline(always)]
fn walk_ipv4<F: Frame + ?Sized>(frame: &F, l3: usize) -> Result<(usize, u16), Walk> {
    let Some(ip) = frame.load::<20>(l3) else {
        return Err(Walk::Bail(Bail::ShortHeader));
    };
    let ihl = usize::from(ip[0] & 0x0f);
    if ip[0] >> 4 != 4 || ihl < 5 {
        return Err(Walk::Bail(Bail::BadIpHeader));
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let more_fragments = frag & 0x2000 != 0;
    let fragment_offset = frag & 0x1fff;
    if fragment_offset != 0 {
        return Err(Walk::LaterFragment);
    }
    if ip[9] != IPPROTO_UDP {
        return Err(Walk::NotUdp);
    }
    let udp = l3 + ihl * 4;
    let flags = if more_fragments {
        crate::FLAG_FIRST_FRAGMENT
    } else {
        0
    };
    Ok((udp, flags))
}

/// Returns the UDP header offset and fragment flags, or the walk's verdict.
#[inline(always)]
fn walk_ipv6<F: Frame + ?Sized>(frame: &F, l3: usize) -> Result<(usize, u16), Walk> {
    let Some(ip) = frame.load::<8>(l3) else {
        return Err(Walk::Bail(Bail::ShortHeader));
    };
    if ip[0] >> 4 != 6 {
        return Err(Walk::Bail(Bail::BadIpHeader));
    }
    let mut next_header = ip[6];
    let mut offset = l3 + IPV6_HLEN;
    let mut flags = 0u16;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next_header {
            IPPROTO_UDP => return Ok((offset, flags)),
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let Some(ext) = frame.load::<2>(offset) else {
                    return Err(Walk::Bail(Bail::ShortHeader));
                };
                next_header = ext[0];
                // Hdr Ext Len counts 8-octet units, not including the first 8 octets.
                offset += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let Some(ext) = frame.load::<4>(offset) else {
                    return Err(Walk::Bail(Bail::ShortHeader));
                };
                let frag = u16::from_be_bytes([ext[2], ext[3]]);
                if frag & 0xfff8 != 0 {
                    return Err(Walk::LaterFragment);
                }
                // A fragment header with offset 0 and M clear is an atomic fragment
                // (RFC 6946): the datagram is whole.
                if frag & 1 != 0 {
                    flags |= crate::FLAG_FIRST_FRAGMENT;
                }
                next_header = ext[0];
                offset += 8;
            }
            _ => return Err(Walk::NotUdp),
        }
        if offset >= MAX_HEADER_OFFSET {
            return Err(Walk::Bail(Bail::ExtHeaderLimit));
        }
    }
    if next_header == IPPROTO_UDP {
        Ok((offset, flags))
    } else {
        Err(Walk::Bail(Bail::ExtHeaderLimit))
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

/// Reads the UDP header at `location`.
#[inline(always)]
pub fn udp_header<F: Frame + ?Sized>(frame: &F, location: &UdpLocation) -> Option<UdpHeader> {
    let udp = frame.load::<UDP_HLEN>(location.udp_offset)?;
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
    location: &UdpLocation,
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
