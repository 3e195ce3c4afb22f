//! The XDP program against the real kernel verifier and BPF_PROG_TEST_RUN: for each kind of
//! frame, the verdict is XDP_PASS, the packet is untouched, the ring-buffer record (or its
//! absence) matches byte for byte, and the counters say what happened.
//!
//! Every case runs on both copy paths: `bpf_xdp_load_bytes` (multi-buffer) and the linear
//! copy that older kernels get, forced here so this kernel's verifier and test runs cover it.
//!
//! BPF_PROG_TEST_RUN for XDP (Linux 4.12) with multi-buffer frames (5.18) needs no NIC and
//! no namespace, so these are the first tier of kernel tests.

mod support;

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use etherparse::{
    IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv6Extensions, Ipv6FragmentHeader, Ipv6Header,
    Ipv6RawExtHeader, PacketBuilder, VlanId,
};
use sipnotify_agent::{
    bpf::{self, CopyPath, LoadedProgram, ProgramSettings},
    source_filter::SourceFilter,
};
use sipnotify_common::{
    Counter, CounterSet, EVENT_HEADER_LEN, EVENTS_MAP, EventHeader, FLAG_FIRST_FRAGMENT,
    FLAG_IP_PACKET, FLAG_QINQ, FLAG_TRUNCATED, FLAG_VLAN, MAX_PAYLOAD, STATS_MAP,
};

const XDP_PASS: u32 = 2;
const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const SRC4: [u8; 4] = [192, 168, 210, 81];
const DST4: [u8; 4] = [192, 168, 210, 54];
const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const NOTIFY: &[u8] = b"NOTIFY sip:192.168.210.54:5061 SIP/2.0\r\nCall-ID: abc@host\r\nEvent: talk\r\nX-Genesys-CallUUID: UIVB8J6JE91C53UIM3VI59VHQ400001R\r\nContent-Length: 0\r\n\r\n";

const BOTH: &[CopyPath] = &[CopyPath::LoadBytes, CopyPath::Linear];
/// Frames longer than a page: BPF_PROG_TEST_RUN (like a driver) hands them only to
/// multi-buffer programs.
const MULTI_BUFFER: &[CopyPath] = &[CopyPath::LoadBytes];

/// One freshly loaded program with empty maps, so counters start at zero.
struct Harness {
    loaded: LoadedProgram,
    ring: RingBuf<MapData>,
}

impl Harness {
    /// A harness per copy path in `paths`, or none (with the reason printed) when
    /// privileged tests cannot run here.
    fn each(test: &str, ports: &[u16], paths: &[CopyPath]) -> Vec<Self> {
        Self::each_from(test, ports, &SourceFilter::default(), paths)
    }

    /// [`Self::each`] with the program's sender trie holding `senders`.
    fn each_from(
        test: &str,
        ports: &[u16],
        senders: &SourceFilter,
        paths: &[CopyPath],
    ) -> Vec<Self> {
        if !support::privileged(test) {
            return Vec::new();
        }
        paths
            .iter()
            .map(|&copy| Self::new(ports, senders, copy))
            .collect()
    }

    fn new(ports: &[u16], senders: &SourceFilter, copy: CopyPath) -> Self {
        // Printed first so a failing assertion's output says which path it was.
        eprintln!("copy path: {copy}");
        let settings = ProgramSettings {
            ports: ports.to_vec(),
            ring_bytes: 1 << 20,
            senders: senders.clone(),
        };
        let mut loaded = bpf::load_with(&settings, Some(copy)).expect("load the XDP program");
        assert_eq!(loaded.copy, copy);
        let ring = RingBuf::try_from(loaded.ebpf.take_map(EVENTS_MAP).expect("ring map")).unwrap();
        Self { loaded, ring }
    }

    /// Runs the program once and checks the verdict and that the frame is unchanged.
    fn run(&mut self, frame: &[u8]) {
        let program: &Xdp = self.loaded.program().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(result.return_value, XDP_PASS, "verdict");
        assert_eq!(
            result.data_size_out as usize,
            frame.len(),
            "frame length changed"
        );
        assert!(
            out[..frame.len()] == *frame,
            "the program modified the frame"
        );
    }

    fn records(&mut self) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        while let Some(item) = self.ring.next() {
            records.push(item.to_vec());
        }
        records
    }

    /// The non-zero counters in index order, `packets_seen` summed from the outcomes as
    /// the agent sums it.
    fn counters(&self) -> Vec<(Counter, u64)> {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.loaded.ebpf.map(STATS_MAP).unwrap()).unwrap();
        let mut counts = CounterSet::default();
        for c in Counter::ALL {
            counts.values[c as usize] = map.get(&(c as u32), 0).unwrap().iter().sum();
        }
        let counts = counts.with_total_from_outcomes();
        Counter::ALL
            .iter()
            .map(|&c| (c, counts.get(c)))
            .filter(|&(_, n)| n != 0)
            .collect()
    }
}

fn lo_ifindex() -> u32 {
    bpf::interface_index("lo").unwrap()
}

fn v4(src: [u8; 4], dst: [u8; 4]) -> ([u8; 16], [u8; 16]) {
    let mut s = [0; 16];
    let mut d = [0; 16];
    s[..4].copy_from_slice(&src);
    d[..4].copy_from_slice(&dst);
    (s, d)
}

/// The record the program must write for `payload` (its first `captured` bytes).
fn expected_record(
    ip_version: u8,
    (src_addr, dst_addr): ([u8; 16], [u8; 16]),
    dst_port: u16,
    payload: &[u8],
    captured: usize,
    flags: u16,
    vlan_tci: u16,
) -> (EventHeader, Vec<u8>) {
    let header = EventHeader {
        timestamp_ns: 0,
        ifindex: lo_ifindex(),
        payload_len: payload.len() as u32,
        captured_len: captured as u32,
        flags,
        ip_version,
        src_addr,
        dst_addr,
        src_port: 40000,
        dst_port,
        vlan_tci,
        ..EventHeader::default()
    };
    (header, payload[..captured].to_vec())
}

/// Compares one record byte for byte with the expectation (the timestamp only for being set).
fn assert_record(record: &[u8], (expected, payload): (EventHeader, Vec<u8>)) {
    assert_eq!(
        record.len(),
        EVENT_HEADER_LEN + payload.len(),
        "record length"
    );
    // SAFETY: the record holds at least EVENT_HEADER_LEN bytes (checked above).
    let mut header = unsafe { record.as_ptr().cast::<EventHeader>().read_unaligned() };
    assert_ne!(header.timestamp_ns, 0, "timestamp");
    header.timestamp_ns = 0;
    assert_eq!(header, expected);
    assert!(
        record[EVENT_HEADER_LEN..] == payload[..],
        "payload bytes differ"
    );
}

fn udp4(dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(SRC4, DST4, 64)
        .udp(40000, dst_port);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload).unwrap();
    frame
}

fn udp_over(ip: IpHeaders, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ip(ip)
        .udp(40000, dst_port);
    let mut frame = Vec::new();
    builder.write(&mut frame, payload).unwrap();
    frame
}

use Counter::*;

#[test]
fn ipv4_notify_to_a_watched_port_is_copied() {
    for mut h in Harness::each("ipv4_notify_to_a_watched_port_is_copied", &[5061], BOTH) {
        h.run(&udp4(5061, NOTIFY));
        let records = h.records();
        assert_eq!(records.len(), 1);
        assert_record(
            &records[0],
            expected_record(4, v4(SRC4, DST4), 5061, NOTIFY, NOTIFY.len(), 0, 0),
        );
        assert_eq!(
            h.counters(),
            [
                (PacketsSeen, 1),
                (Copied, 1),
                (UdpWatched, 1),
                (NotifyMatched, 1)
            ]
        );
    }
}

#[test]
fn ipv4_with_options_is_walked_by_ihl() {
    for mut h in Harness::each("ipv4_with_options_is_walked_by_ihl", &[5061], BOTH) {
        let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, SRC4, DST4).unwrap();
        // Eight bytes of options (NOP padding and a timestamp-like filler): IHL 7.
        ip.options = [1, 1, 1, 1, 1, 1, 1, 0][..].try_into().unwrap();
        let frame = udp_over(IpHeaders::Ipv4(ip, Default::default()), 5061, NOTIFY);
        assert_eq!(frame[14] & 0x0f, 7, "IHL");
        h.run(&frame);
        let records = h.records();
        assert_eq!(records.len(), 1);
        assert_record(
            &records[0],
            expected_record(4, v4(SRC4, DST4), 5061, NOTIFY, NOTIFY.len(), 0, 0),
        );
    }
}

fn ipv6_with(extensions: Ipv6Extensions) -> IpHeaders {
    let header = Ipv6Header {
        hop_limit: 64,
        source: SRC6,
        destination: DST6,
        ..Default::default()
    };
    IpHeaders::Ipv6(header, extensions)
}

#[test]
fn ipv6_with_extension_headers_is_walked() {
    for mut h in Harness::each("ipv6_with_extension_headers_is_walked", &[5061], BOTH) {
        let extensions = Ipv6Extensions {
            hop_by_hop_options: Some(Ipv6RawExtHeader::new_raw(IpNumber::UDP, &[0; 6]).unwrap()),
            destination_options: Some(
                Ipv6RawExtHeader::new_raw(
                    IpNumber::UDP,
                    &[1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                )
                .unwrap(),
            ),
            ..Default::default()
        };
        let frame = udp_over(ipv6_with(extensions), 5061, NOTIFY);
        h.run(&frame);
        let records = h.records();
        assert_eq!(records.len(), 1);
        assert_record(
            &records[0],
            expected_record(6, (SRC6, DST6), 5061, NOTIFY, NOTIFY.len(), 0, 0),
        );
    }
}

#[test]
fn vlan_and_qinq_frames_are_walked_and_flagged() {
    for mut h in Harness::each("vlan_and_qinq_frames_are_walked_and_flagged", &[5061], BOTH) {
        let single = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .single_vlan(VlanId::try_new(210).unwrap())
            .ipv4(SRC4, DST4, 64)
            .udp(40000, 5061);
        let mut frame = Vec::new();
        single.write(&mut frame, NOTIFY).unwrap();
        h.run(&frame);

        let double = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .double_vlan(VlanId::try_new(100).unwrap(), VlanId::try_new(210).unwrap())
            .ipv4(SRC4, DST4, 64)
            .udp(40000, 5061);
        let mut frame = Vec::new();
        double.write(&mut frame, NOTIFY).unwrap();
        h.run(&frame);

        let records = h.records();
        assert_eq!(records.len(), 2);
        assert_record(
            &records[0],
            expected_record(
                4,
                v4(SRC4, DST4),
                5061,
                NOTIFY,
                NOTIFY.len(),
                FLAG_VLAN,
                210,
            ),
        );
        assert_record(
            &records[1],
            expected_record(
                4,
                v4(SRC4, DST4),
                5061,
                NOTIFY,
                NOTIFY.len(),
                FLAG_VLAN | FLAG_QINQ,
                100,
            ),
        );
    }
}

#[test]
fn other_ports_and_protocols_are_passed_without_a_record() {
    for mut h in Harness::each("other_ports_and_protocols_are_passed", &[5061], BOTH) {
        h.run(&udp4(5060, NOTIFY));

        let tcp = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv4(SRC4, DST4, 64)
            .tcp(40000, 5062, 1, 1000);
        let mut frame = Vec::new();
        tcp.write(&mut frame, NOTIFY).unwrap();
        h.run(&frame);

        let icmp = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv4(SRC4, DST4, 64)
            .icmpv4_echo_request(1, 1);
        let mut frame = Vec::new();
        icmp.write(&mut frame, b"ping").unwrap();
        h.run(&frame);

        assert!(h.records().is_empty());
        assert_eq!(
            h.counters(),
            [(PacketsSeen, 3), (NotUdpOrTcp, 1), (PortNotWatched, 2)]
        );
    }
}

/// The record of an IP packet: the frame from its IP header on (the first `captured` bytes
/// of `ip_packet`), with the given ports.
fn ip_packet_record(
    ip_version: u8,
    addrs: ([u8; 16], [u8; 16]),
    ports: (u16, u16),
    ip_packet: &[u8],
    captured: usize,
    flags: u16,
) -> (EventHeader, Vec<u8>) {
    let (mut header, payload) = expected_record(
        ip_version,
        addrs,
        ports.1,
        ip_packet,
        captured,
        flags | FLAG_IP_PACKET,
        0,
    );
    header.src_port = ports.0;
    (header, payload)
}

#[test]
fn tcp_segments_to_a_watched_port_are_copied_from_the_ip_header() {
    for mut h in Harness::each("tcp_segments_are_copied", &[5061], BOTH) {
        // A NOTIFY's middle: a stream is not judged by a segment's first bytes.
        let middle = tcp4(5061, b"Call-ID: x\r\nCSeq: 1 NOTIFY\r\n");
        h.run(&middle);
        let syn = {
            let mut frame = Vec::new();
            PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
                .ipv6(SRC6, DST6, 64)
                .tcp(40000, 5061, 1, 1000)
                .syn()
                .write(&mut frame, b"")
                .unwrap();
            frame
        };
        h.run(&syn);
        h.run(&tcp4(5061, b""));
        h.run(&tcp4(5061, CLIENT_HELLO));

        let records = h.records();
        assert_eq!(records.len(), 2);
        assert_record(
            &records[0],
            ip_packet_record(
                4,
                v4(SRC4, DST4),
                (40000, 5061),
                &middle[14..],
                middle.len() - 14,
                0,
            ),
        );
        assert_record(
            &records[1],
            ip_packet_record(
                6,
                (SRC6, DST6),
                (40000, 5061),
                &syn[14..],
                syn.len() - 14,
                0,
            ),
        );
        assert_eq!(
            h.counters(),
            [
                (PacketsSeen, 4),
                (EmptyPayload, 1),
                (TlsRecord, 1),
                (Copied, 2),
                (TcpSegments, 2)
            ]
        );
    }
}

#[test]
fn several_ports_can_be_watched() {
    for mut h in Harness::each("several_ports_can_be_watched", &[5060, 5061, 15061], BOTH) {
        for port in [5060, 5061, 15061, 5062] {
            h.run(&udp4(port, NOTIFY));
        }
        let ports: Vec<u16> = h
            .records()
            .iter()
            .map(|r| u16::from_ne_bytes([r[58], r[59]]))
            .collect();
        assert_eq!(ports, [5060, 5061, 15061]);
    }
}

#[test]
fn only_an_exact_notify_prefix_matches() {
    for mut h in Harness::each("only_an_exact_notify_prefix_matches", &[5061], BOTH) {
        for payload in [
            &b"NOTIFYX sip:a SIP/2.0\r\n\r\n"[..],
            b"notify sip:a SIP/2.0\r\n\r\n",
            b"INVITE sip:a SIP/2.0\r\n\r\n",
            b"NOTIF",
            b"",
        ] {
            h.run(&udp4(5061, payload));
        }
        assert!(h.records().is_empty());
        assert_eq!(
            h.counters(),
            [
                (PacketsSeen, 5),
                (EmptyPayload, 1),
                (NotNotify, 4),
                (UdpWatched, 5)
            ]
        );
    }
}

#[test]
fn a_frame_shorter_than_its_udp_length_is_copied_and_flagged_truncated() {
    for mut h in Harness::each("a_short_frame_is_flagged_truncated", &[5061], BOTH) {
        let mut frame = udp4(5061, NOTIFY);
        let cut = 30;
        frame.truncate(frame.len() - cut);
        h.run(&frame);
        let records = h.records();
        assert_eq!(records.len(), 1);
        assert_record(
            &records[0],
            expected_record(
                4,
                v4(SRC4, DST4),
                5061,
                NOTIFY,
                NOTIFY.len() - cut,
                FLAG_TRUNCATED,
                0,
            ),
        );
        assert_eq!(
            h.counters(),
            [
                (PacketsSeen, 1),
                (Copied, 1),
                (UdpWatched, 1),
                (NotifyMatched, 1),
                (Truncated, 1)
            ]
        );
    }
}

fn jumbo_notify(len: usize) -> Vec<u8> {
    let mut payload = NOTIFY.to_vec();
    payload.resize(len, b'x');
    payload
}

#[test]
fn a_9000_byte_jumbo_payload_is_copied_whole() {
    for mut h in Harness::each(
        "a_9000_byte_jumbo_payload_is_copied_whole",
        &[5061],
        MULTI_BUFFER,
    ) {
        let payload = jumbo_notify(9000);
        h.run(&udp4(5061, &payload));
        let records = h.records();
        assert_eq!(records.len(), 1);
        assert_record(
            &records[0],
            expected_record(4, v4(SRC4, DST4), 5061, &payload, 9000, 0, 0),
        );
    }
}

#[test]
fn a_payload_over_the_limit_is_cut_and_flagged() {
    for mut h in Harness::each(
        "a_payload_over_the_limit_is_cut_and_flagged",
        &[5061],
        MULTI_BUFFER,
    ) {
        let payload = jumbo_notify(MAX_PAYLOAD + 500);
        h.run(&udp4(5061, &payload));
        let records = h.records();
        assert_eq!(records.len(), 1);
        assert_record(
            &records[0],
            expected_record(
                4,
                v4(SRC4, DST4),
                5061,
                &payload,
                MAX_PAYLOAD,
                FLAG_TRUNCATED,
                0,
            ),
        );
        assert!(h.counters().contains(&(Truncated, 1)));
    }
}

#[test]
fn ipv4_fragments_of_a_notify_are_followed_from_the_first() {
    for mut h in Harness::each("ipv4_fragments", &[5061], BOTH) {
        // A later fragment before any first one: nobody's, counted.
        let mut stray = udp4(5061, NOTIFY);
        stray[18..20].copy_from_slice(&9u16.to_be_bytes());
        stray[20] = 0;
        stray[21] = 8;
        h.run(&stray);
        // First fragment: MF set, offset 0, and the frame holds only part of the datagram.
        let mut first_whole = udp4(5061, NOTIFY);
        first_whole[20] |= 0x20;
        let first = first_whole[..14 + 20 + 8 + 64].to_vec();
        h.run(&first);
        // A later fragment of the same datagram: offset 64 bytes (8 units), no UDP header.
        let mut later = udp4(5061, NOTIFY);
        later[20] = 0;
        later[21] = 8;
        h.run(&later);

        let records = h.records();
        assert_eq!(records.len(), 2);
        assert_record(
            &records[0],
            ip_packet_record(
                4,
                v4(SRC4, DST4),
                (40000, 5061),
                &first_whole[14..],
                first.len() - 14,
                FLAG_FIRST_FRAGMENT | FLAG_TRUNCATED,
            ),
        );
        assert_record(
            &records[1],
            ip_packet_record(4, v4(SRC4, DST4), (0, 0), &later[14..], later.len() - 14, 0),
        );
        let counters = h.counters();
        for expected in [
            (FirstFragments, 1),
            (FragmentsFollowed, 1),
            (LaterFragments, 1),
            (Copied, 2),
        ] {
            assert!(counters.contains(&expected), "{expected:?} in {counters:?}");
        }
    }
}

/// An IPv6 frame with a fragment header whose offset/M field is set per RFC 8200 by hand:
/// etherparse 0.19 writes the M flag into the wrong bit of that field.
fn ipv6_fragment(offset_units: u16, more: bool) -> Vec<u8> {
    let extensions = Ipv6Extensions {
        fragment: Some(Ipv6FragmentHeader::new(
            IpNumber::UDP,
            IpFragOffset::ZERO,
            false,
            7,
        )),
        ..Default::default()
    };
    let mut frame = udp_over(ipv6_with(extensions), 5061, NOTIFY);
    let field = (offset_units << 3) | u16::from(more);
    frame[14 + 40 + 2..14 + 40 + 4].copy_from_slice(&field.to_be_bytes());
    frame
}

#[test]
fn ipv6_fragments_of_a_notify_are_followed_from_the_first() {
    for mut h in Harness::each("ipv6_fragments", &[5061], BOTH) {
        let first = ipv6_fragment(0, true);
        let later = ipv6_fragment(8, false);
        h.run(&first);
        h.run(&later);

        let records = h.records();
        assert_eq!(records.len(), 2);
        assert_record(
            &records[0],
            ip_packet_record(
                6,
                (SRC6, DST6),
                (40000, 5061),
                &first[14..],
                first.len() - 14,
                FLAG_FIRST_FRAGMENT,
            ),
        );
        assert_record(
            &records[1],
            ip_packet_record(6, (SRC6, DST6), (0, 0), &later[14..], later.len() - 14, 0),
        );
        let counters = h.counters();
        assert!(counters.contains(&(FirstFragments, 1)), "{counters:?}");
        assert!(counters.contains(&(FragmentsFollowed, 1)), "{counters:?}");
    }
}

#[test]
fn a_frame_cut_inside_its_headers_is_a_counted_bail_out() {
    for mut h in Harness::each("a_frame_cut_inside_its_headers", &[5061], BOTH) {
        let mut frame = udp4(5061, NOTIFY);
        frame.truncate(14 + 10);
        h.run(&frame);
        assert!(h.records().is_empty());
        assert_eq!(h.counters(), [(PacketsSeen, 1), (BailShortHeader, 1)]);
    }
}

/// Every payload length from 7 to 1600 bytes on both paths: the linear copy splits a length
/// into power-of-two chunks, so this reaches every combination of its low 11 bits.
#[test]
fn every_payload_length_is_copied_byte_for_byte() {
    for mut h in Harness::each(
        "every_payload_length_is_copied_byte_for_byte",
        &[5061],
        BOTH,
    ) {
        let full: Vec<u8> = NOTIFY
            .iter()
            .copied()
            .chain((0..2000u32).map(|i| (i * 7 + i / 251) as u8))
            .collect();
        for len in 7..=1600 {
            h.run(&udp4(5061, &full[..len]));
            let records = h.records();
            assert_eq!(records.len(), 1, "length {len}");
            assert_record(
                &records[0],
                expected_record(4, v4(SRC4, DST4), 5061, &full[..len], len, 0, 0),
            );
        }
    }
}

/// The largest payload a single page holds on the linear path, and the same on the other.
#[test]
fn a_payload_filling_a_page_is_copied_whole() {
    for mut h in Harness::each("a_payload_filling_a_page_is_copied_whole", &[5061], BOTH) {
        let payload = jumbo_notify(3000);
        h.run(&udp4(5061, &payload));
        let records = h.records();
        assert_eq!(records.len(), 1);
        assert_record(
            &records[0],
            expected_record(4, v4(SRC4, DST4), 5061, &payload, 3000, 0, 0),
        );
    }
}

/// A program every verifier refuses (`sipnotify-ebpf/src/rejected.rs`).
static REJECTED: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sipnotify-rejected"));

/// A real rejection by this kernel's verifier is reported as one, on either path: the kernel,
/// the program, and the verifier's own last lines; never as a missing permission (that case,
/// a process without capabilities, is in `agent_errors.rs`).
#[test]
fn a_verifier_rejection_names_the_kernel_and_quotes_the_verifier() {
    if !support::privileged("a_verifier_rejection_names_the_kernel_and_quotes_the_verifier") {
        return;
    }
    let settings = ProgramSettings {
        ports: vec![5061],
        ring_bytes: 1 << 20,
        senders: SourceFilter::default(),
    };
    for copy in BOTH.iter().copied() {
        let err = match bpf::load_object(REJECTED, &settings, Some(copy)) {
            Ok(_) => panic!("the verifier accepted an unchecked packet read ({copy})"),
            Err(err) => err,
        };
        let bpf::LoadError::Rejected {
            kernel, log_tail, ..
        } = &err
        else {
            panic!("not reported as a rejection: {err:?}");
        };
        assert!(
            log_tail
                .iter()
                .any(|l| l.contains("invalid access to packet")),
            "{log_tail:?}"
        );
        let text = err.to_string();
        let first = text.lines().next().unwrap_or_default();
        assert_eq!(
            first,
            format!(
                "kernel {kernel} refused the XDP program `{}` ({copy}); the verifier's last lines:",
                copy.program_name()
            )
        );
        assert!(!text.contains("permission"), "{text}");
    }
}

/// The first bytes of a TLS 1.2 ClientHello record, as `openssl s_client` sends it.
const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0xc4, 0x01, 0x00, 0x00, 0xc0, 0x03, 0x03, 0x5a, 0x5a,
];

fn tcp4(dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(SRC4, DST4, 64)
        .tcp(40000, dst_port, 1, 1000);
    let mut frame = Vec::new();
    builder.write(&mut frame, payload).unwrap();
    frame
}

#[test]
fn a_notify_after_leading_crlfs_is_copied_as_sent() {
    for mut h in Harness::each("a_notify_after_leading_crlfs", &[5061], BOTH) {
        let mut payload = b"\r\n\r\n".to_vec();
        payload.extend_from_slice(NOTIFY);
        h.run(&udp4(5061, &payload));
        let mut too_many = b"\r\n".repeat(5);
        too_many.extend_from_slice(NOTIFY);
        h.run(&udp4(5061, &too_many));
        let records = h.records();
        assert_eq!(records.len(), 1);
        assert_record(
            &records[0],
            expected_record(4, v4(SRC4, DST4), 5061, &payload, payload.len(), 0, 0),
        );
        assert_eq!(
            h.counters(),
            [
                (PacketsSeen, 2),
                (NotNotify, 1),
                (Copied, 1),
                (UdpWatched, 2),
                (NotifyMatched, 1)
            ]
        );
    }
}

#[test]
fn a_tls_client_hello_to_the_watched_port_is_counted_as_tls() {
    for mut h in Harness::each("a_tls_client_hello_is_counted_as_tls", &[5061], BOTH) {
        h.run(&tcp4(5061, CLIENT_HELLO));
        h.run(&udp4(5061, CLIENT_HELLO));
        h.run(&udp4(5061, &[0x16, 0xfe, 0xfd, 0, 0, 0, 0]));
        h.run(&tcp4(443, CLIENT_HELLO));
        // The flow of that ClientHello is remembered: its later segments, encrypted from
        // anywhere in a record, are not copied, even one that reads like SIP.
        h.run(&tcp4(5061, &[0x42; 300]));
        h.run(&tcp4(5061, b"NOTIFY sip:1002@x SIP/2.0\r\n\r\n"));
        assert!(h.records().is_empty());
        assert_eq!(
            h.counters(),
            [
                (PacketsSeen, 6),
                (PortNotWatched, 1),
                (TlsRecord, 2),
                (TlsFlow, 2),
                (DtlsRecord, 1),
                (UdpWatched, 2)
            ]
        );
    }
}

#[test]
fn a_flow_joined_mid_stream_is_recognised_by_any_tls_record_type() {
    for mut h in Harness::each("a_flow_joined_mid_stream", &[5061], BOTH) {
        // Application data (23) of TLS 1.2/1.3, then the rest of that flow.
        h.run(&tcp4(5061, &[0x17, 0x03, 0x03, 0x00, 0x20, 0xaa, 0xbb]));
        h.run(&tcp4(5061, &[0x99; 64]));
        assert!(h.records().is_empty());
        assert_eq!(
            h.counters(),
            [(PacketsSeen, 2), (TlsRecord, 1), (TlsFlow, 1)]
        );
    }
}

#[test]
fn every_exit_is_counted_and_the_outcomes_add_up() {
    for mut h in Harness::each("every_exit_is_counted", &[5061], BOTH) {
        let mut later = udp4(5061, NOTIFY);
        later[20] = 0;
        later[21] = 8;
        let mut cut = udp4(5061, NOTIFY);
        cut.truncate(14 + 10);
        let mut arp = udp4(5061, NOTIFY);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let frames = [
            udp4(5061, NOTIFY),
            udp4(5060, NOTIFY),
            udp4(5061, b"INVITE sip:a SIP/2.0\r\n\r\n"),
            udp4(5061, b""),
            udp4(5061, CLIENT_HELLO),
            tcp4(5061, b""),
            tcp4(5061, b"OPTIONS sip:a SIP/2.0\r\n\r\n"),
            later,
            cut,
            arp,
        ];
        for frame in &frames {
            h.run(frame);
        }
        let counters = h.counters();
        // Every frame run is counted exactly once, by its outcome.
        let outcome_sum: u64 = counters
            .iter()
            .filter(|(c, _)| c.kind() == sipnotify_common::CounterKind::Outcome)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(outcome_sum, frames.len() as u64, "{counters:?}");
        for expected in [
            (Copied, 2),
            (PortNotWatched, 1),
            (NotNotify, 1),
            (EmptyPayload, 2),
            (TlsRecord, 1),
            (TcpSegments, 1),
            (LaterFragments, 1),
            (BailShortHeader, 1),
            (NotUdpOrTcp, 1),
        ] {
            assert!(counters.contains(&expected), "{expected:?} in {counters:?}");
        }
    }
}

fn networks(list: &[&str]) -> SourceFilter {
    SourceFilter::new(list.iter().map(|n| n.parse().unwrap()).collect())
}

/// A NOTIFY over UDP (IPv4 and IPv6), a TCP segment, and the two fragments of a NOTIFY.
fn notify_forms() -> [Vec<u8>; 5] {
    [
        udp4(5061, NOTIFY),
        udp_over(ipv6_with(Ipv6Extensions::default()), 5061, NOTIFY),
        tcp4(5061, NOTIFY),
        ipv6_fragment(0, true),
        ipv6_fragment(8, false),
    ]
}

#[test]
fn notifies_from_outside_the_allowed_senders_are_counted_and_never_copied() {
    // SRC4 is 192.168.210.81 and SRC6 fd00::1; the SIP Servers here are elsewhere.
    let strangers = networks(&["192.168.210.0/28", "fd00::100/120"]);
    for mut h in Harness::each_from("senders_refused", &[5061], &strangers, BOTH) {
        // A NOTIFY over UDP (IPv4 and IPv6), a TCP segment, and a fragmented NOTIFY whose
        // later fragment must not be followed either.
        for frame in notify_forms() {
            h.run(&frame);
        }
        // Not NOTIFYs: never looked up, counted as before.
        h.run(&udp4(5061, b"OPTIONS sip:x SIP/2.0\r\n\r\n"));
        h.run(&udp4(5060, NOTIFY));
        assert!(h.records().is_empty(), "nothing from a stranger is copied");
        let counters = h.counters();
        assert_eq!(
            counters,
            [
                (PacketsSeen, 7),
                (LaterFragments, 1),
                (PortNotWatched, 1),
                (NotNotify, 1),
                (SourceNotAllowed, 4),
                (UdpWatched, 4),
                (NotifyMatched, 3),
                (FirstFragments, 1),
            ],
            "{counters:?}"
        );
    }
    // The same frames from the allowed networks are copied as without the list.
    let friends = networks(&["192.168.210.80/28", "fd00::/64"]);
    for mut h in Harness::each_from("senders_allowed", &[5061], &friends, BOTH) {
        for frame in notify_forms() {
            h.run(&frame);
        }
        assert_eq!(h.records().len(), 5);
        let counters = h.counters();
        assert!(counters.contains(&(Copied, 5)), "{counters:?}");
        assert!(!counters.iter().any(|(c, _)| *c == SourceNotAllowed));
    }
}
