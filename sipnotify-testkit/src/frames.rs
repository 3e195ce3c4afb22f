//! Test frames built with etherparse: UDP datagrams cut into IPv4 and IPv6 fragments, and TCP
//! segments, as they appear on the wire from layer 3 on, and the link-layer headers in front
//! of them (Ethernet, Linux cooked capture v1 and v2). The one frame builder of the unit
//! tests (`sipnotify-common` and the agent), the replay tests and the live tests; the XDP tests
//! (`tests/xdp_test_run.rs`) edit builder output byte by byte for the cases a builder refuses
//! to make (cut headers, stray fragment offsets).

use etherparse::{
    IpFragOffset, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, TcpHeader, UdpHeader,
};

/// The sender's IPv4 address.
pub const SRC4: [u8; 4] = [192, 0, 2, 1];
/// The receiver's IPv4 address.
pub const DST4: [u8; 4] = [192, 0, 2, 2];
/// The sender's IPv6 address.
pub const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// The receiver's IPv6 address.
pub const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// A UDP header and payload (the bytes that get fragmented).
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let header = UdpHeader {
        source_port: src_port,
        destination_port: dst_port,
        length: u16::try_from(8 + payload.len()).expect("test datagram fits"),
        checksum: 0,
    };
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// The IPv4 fragments of `datagram` cut at `cuts` (byte offsets, multiples of 8).
pub fn ipv4_fragments(id: u16, protocol: u8, datagram: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    pieces(datagram, cuts)
        .map(|(offset, data, more)| {
            let mut header = Ipv4Header::new(
                u16::try_from(data.len()).expect("fits"),
                64,
                IpNumber(protocol),
                SRC4,
                DST4,
            )
            .expect("valid header");
            header.identification = id;
            header.more_fragments = more;
            header.fragment_offset =
                IpFragOffset::try_new(u16::try_from(offset / 8).expect("fits")).expect("fits");
            header.header_checksum = header.calc_header_checksum();
            let mut packet = header.to_bytes().to_vec();
            packet.extend_from_slice(data);
            packet
        })
        .collect()
}

/// The IPv6 fragments of `datagram` cut at `cuts` (byte offsets, multiples of 8).
///
/// The fragment header is written by hand: etherparse 0.19 puts the M flag in bit 7 of the
/// fourth byte and the offset's low bits below it, where RFC 8200 has the offset in the 13
/// high bits of the 16-bit field and M in its lowest bit.
pub fn ipv6_fragments(id: u32, protocol: u8, datagram: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    pieces(datagram, cuts)
        .map(|(offset, data, more)| {
            let word = u16::try_from(offset).expect("fits") | u16::from(more);
            let header = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: u16::try_from(8 + data.len()).expect("fits"),
                next_header: IpNumber::IPV6_FRAGMENTATION_HEADER,
                hop_limit: 64,
                source: SRC6,
                destination: DST6,
            };
            let mut packet = header.to_bytes().to_vec();
            packet.extend_from_slice(&[protocol, 0]);
            packet.extend_from_slice(&word.to_be_bytes());
            packet.extend_from_slice(&id.to_be_bytes());
            packet.extend_from_slice(data);
            packet
        })
        .collect()
}

fn pieces<'a>(
    datagram: &'a [u8],
    cuts: &'a [usize],
) -> impl Iterator<Item = (usize, &'a [u8], bool)> + 'a {
    let bounds: Vec<usize> = std::iter::once(0)
        .chain(cuts.iter().copied())
        .chain(std::iter::once(datagram.len()))
        .collect();
    (0..bounds.len() - 1).map(move |i| {
        let (start, end) = (bounds[i], bounds[i + 1]);
        (start, &datagram[start..end], i + 2 < bounds.len())
    })
}

/// A TCP header (no options) and payload, from port `src_port` to `dst_port`.
pub fn tcp(
    src_port: u16,
    dst_port: u16,
    seq: u32,
    syn: bool,
    fin: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut header = TcpHeader::new(src_port, dst_port, seq, 65_535);
    header.syn = syn;
    header.fin = fin;
    header.ack = !syn;
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// An IPv4 packet carrying `l4` whole.
pub fn ipv4(protocol: u8, l4: &[u8]) -> Vec<u8> {
    ipv4_fragments(0, protocol, l4, &[]).remove(0)
}

/// An IPv6 packet carrying `l4` whole (no extension header).
pub fn ipv6(protocol: u8, l4: &[u8]) -> Vec<u8> {
    let header = Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: u16::try_from(l4.len()).expect("fits"),
        next_header: IpNumber(protocol),
        hop_limit: 64,
        source: SRC6,
        destination: DST6,
    };
    let mut packet = header.to_bytes().to_vec();
    packet.extend_from_slice(l4);
    packet
}

/// An Ethernet frame around the IP packet `l3` (EtherType from its version nibble).
pub fn ethernet(l3: &[u8]) -> Vec<u8> {
    let ethertype: u16 = if l3.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    };
    let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(l3);
    frame
}

/// An Ethernet frame around `l3` with the given EtherType (ARP, a VLAN tag, …).
pub fn ethernet_typed(l3: &[u8], ethertype: u16) -> Vec<u8> {
    let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 1];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(l3);
    frame
}

/// A Linux cooked capture v1 header (incoming, Ethernet device) in front of `l3`, what older
/// `tcpdump -i any` writes.
pub fn sll(l3: &[u8], protocol: u16) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0];
    out.extend_from_slice(&protocol.to_be_bytes());
    out.extend_from_slice(l3);
    out
}

/// A Linux cooked capture v2 header (incoming, ifindex 3, Ethernet device) in front of `l3`,
/// what `tcpdump -i any` writes since libpcap 1.10.
pub fn sll2(l3: &[u8], protocol: u16) -> Vec<u8> {
    let mut out = protocol.to_be_bytes().to_vec();
    out.extend_from_slice(&[0, 0, 0, 0, 0, 3, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
    out.extend_from_slice(l3);
    out
}
