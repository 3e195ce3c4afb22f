//! Fuzzes the IP fragment and TCP stream reassemblers with a hostile packet stream: no panic,
//! no hang, memory never above its bound, and everything handed on within the size bounds.
//! Whole frames also go through the shared capture decision with its fragment follower and
//! are routed to reassembly as the pipeline routes them.
#![no_main]

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use libfuzzer_sys::fuzz_target;
use sipnotify_agent::{
    capture::{self, FragmentFollower, SplicedFrame},
    reassembly::{
        Reassembly, ReassemblySettings,
        fragment::{self, DatagramKey, Fragment, FragmentReassembler, FragmentSettings, IpPacket},
        tcp::{self, FlowKey, Segment, TcpReassembler, TcpSettings},
    },
    source_filter::SourceFilter,
};
use sipnotify_common::{Counter, CounterSet, SipConfig};

/// Small bounds, so the fuzzer reaches eviction and every give-up path quickly.
const FRAGMENTS: FragmentSettings = FragmentSettings {
    timeout: Duration::from_secs(30),
    max_datagram_bytes: 4096,
    max_fragments: 16,
    max_datagrams: 64,
    max_total_bytes: 16 << 10,
};
const TCP: TcpSettings = TcpSettings {
    max_message_bytes: 2048,
    reorder_window_bytes: 2048,
    max_early_segments: 8,
    gap_timeout: Duration::from_secs(1),
    idle_timeout: Duration::from_secs(60),
    max_flows: 64,
    max_total_bytes: 32 << 10,
};

/// Reads the fuzz input as a sequence of operations.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.byte()?, self.byte()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes([
            self.byte()?,
            self.byte()?,
            self.byte()?,
            self.byte()?,
        ]))
    }
    fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

fn flow(port: u8) -> FlowKey {
    FlowKey {
        src: SocketAddr::new(
            Ipv4Addr::new(192, 0, 2, 1).into(),
            40_000 + u16::from(port & 3),
        ),
        dst: SocketAddr::new(Ipv4Addr::new(192, 0, 2, 2).into(), 5061),
    }
}

/// Whether `payload` is a NOTIFY after at most four keep-alive CRLFs, as every record handed
/// on must be.
fn is_notify(mut payload: &[u8]) -> bool {
    for _ in 0..4 {
        payload = payload.strip_prefix(b"\r\n").unwrap_or(payload);
    }
    payload.starts_with(b"NOTIFY ")
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut ports = SipConfig::empty();
    ports.watch(5061);
    let mut follower = FragmentFollower::default();
    let mut counts = CounterSet::default();
    let mut stage = Reassembly::new(
        ReassemblySettings {
            fragments: FRAGMENTS,
            tcp: TCP,
        },
        &[5061],
        SourceFilter::default(),
    );
    let mut fragments = FragmentReassembler::new(FRAGMENTS);
    let mut streams = TcpReassembler::new(TCP);
    let mut now = Duration::from_secs(1);
    let mut next_seq = [0u32; 4];
    let mut deliver = |_: &FlowKey, message: &[u8]| {
        assert!(message.starts_with(b"NOTIFY "));
        assert!(message.len() <= TCP.max_message_bytes);
    };
    while let Some(op) = input.byte() {
        match op % 6 {
            // A raw IP packet: parsed, fragments reassembled, TCP inside fed to the streams.
            0 => {
                let Some(len) = input.u16() else { break };
                let packet = input.bytes(usize::from(len));
                let whole = match fragment::parse_ip(packet) {
                    Ok(IpPacket::Fragment(f)) => fragments.push(now, f).map(|d| (d.key, d.payload)),
                    Ok(IpPacket::Whole {
                        src,
                        dst,
                        protocol,
                        payload,
                    }) => Some((
                        DatagramKey {
                            src,
                            dst,
                            protocol,
                            id: 0,
                        },
                        payload.to_vec(),
                    )),
                    Err(_) => None,
                };
                if let Some((key, payload)) = whole {
                    assert!(payload.len() <= 65_535);
                    if key.protocol == 6 {
                        if let Ok(segment) = tcp::parse_segment(key.src, key.dst, &payload) {
                            streams.push(now, segment, &mut deliver);
                        }
                    }
                }
            }
            // A structured fragment, so offsets and ids collide often.
            1 => {
                let (Some(id), Some(offset), Some(len)) = (input.byte(), input.u16(), input.byte())
                else {
                    break;
                };
                let key = DatagramKey {
                    src: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                    dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
                    protocol: 17,
                    id: u32::from(id & 7),
                };
                let fragment = Fragment {
                    key,
                    offset: usize::from(offset & 0x1fff) * 8 % 8192,
                    more: len & 1 == 1,
                    data: input.bytes(usize::from(len) * 4),
                };
                if let Some(datagram) = fragments.push(now, fragment) {
                    assert!(datagram.payload.len() <= FRAGMENTS.max_datagram_bytes);
                }
            }
            // A structured TCP segment on one of four flows.
            2 => {
                let (Some(port), Some(seq), Some(flags), Some(len)) =
                    (input.byte(), input.u32(), input.byte(), input.u16())
                else {
                    break;
                };
                let segment = Segment {
                    key: flow(port),
                    seq,
                    syn: flags & 1 != 0,
                    fin: flags & 2 != 0,
                    rst: flags & 4 == 4 && flags & 8 == 8,
                    payload: input.bytes(usize::from(len % 4096)),
                };
                streams.push(now, segment, &mut deliver);
            }
            // A whole frame through the capture decision, routed as the pipeline routes.
            5 => {
                let Some(len) = input.u16() else { break };
                let frame = input.bytes(usize::from(len));
                let spliced = SplicedFrame::whole(frame);
                let at = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
                let inspected =
                    capture::inspect(
                    &spliced,
                    &ports,
                    &SourceFilter::default(),
                    &mut follower,
                    &mut counts,
                    at,
                    0,
                );
                if let Ok(record) = inspected {
                    assert!(record.payload.len() <= frame.len());
                    // As the pipeline routes: IP packets through reassembly, NOTIFYs on.
                    if record.is_ip_packet() {
                        stage.push_packet(now, &record, &mut |whole| {
                            assert!(is_notify(whole.payload), "{:?}", whole.payload);
                        });
                    } else {
                        assert!(is_notify(record.payload), "{:?}", record.payload);
                    }
                }
                assert_eq!(counts.outcomes(), counts.get(Counter::PacketsSeen));
                assert!(follower.len() <= sipnotify_common::FRAGMENT_MAP_ENTRIES as usize);
            }
            // Time passes.
            3 => {
                let Some(step) = input.byte() else { break };
                now += Duration::from_millis(u64::from(step) * 250);
                fragments.expire(now);
                streams.expire(now, &mut deliver);
                stage.expire(now, &mut |whole| assert!(is_notify(whole.payload)));
            }
            // A segment continuing a flow in order, so framing gets deep.
            _ => {
                let (Some(port), Some(len)) = (input.byte(), input.u16()) else {
                    break;
                };
                let payload = input.bytes(usize::from(len % 4096));
                let next = &mut next_seq[usize::from(port & 3)];
                let segment = Segment {
                    key: flow(port),
                    seq: *next,
                    syn: false,
                    fin: false,
                    rst: false,
                    payload,
                };
                *next = next.wrapping_add(payload.len() as u32);
                streams.push(now, segment, &mut deliver);
            }
        }
        assert!(fragments.memory() <= FRAGMENTS.max_total_bytes);
        assert!(streams.memory() <= TCP.max_total_bytes);
        assert!(stage.memory() <= FRAGMENTS.max_total_bytes + TCP.max_total_bytes);
    }
    streams.finish(&mut deliver);
    assert_eq!(streams.memory(), streams.empty_memory());
});
