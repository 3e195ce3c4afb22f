//! Reassembly of what reaches the agent in pieces: IP fragments ([`fragment`]) and SIP
//! messages carried over TCP ([`tcp`]), joined by [`Reassembly`], the pipeline's reassembly
//! stage, into whole NOTIFY records. The pipeline (`crate::pipeline`) routes the IP-packet
//! records here, owns the one instance every source shares, and drives its clock.
//!
//! Both reassemblers are plain, synchronous state machines driven by the pipeline's clock
//! (capture time for a file, monotonic time live), bounded in memory, and they count every
//! piece they give up by reason. Neither panics on hostile input: the fuzz target
//! `fuzz/fuzz_targets/reassembly.rs` holds them to that.

pub mod fragment;
pub mod tcp;

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use sipnotify_common::{
    EventHeader, SipConfig,
    decide::check_payload,
    net::{IPPROTO_TCP, IPPROTO_UDP},
};
use tracing::{info, warn};

use crate::{record::Record, source_filter::SourceFilter};
use fragment::{FragmentReassembler, FragmentSettings, FragmentStats, IpPacket, PacketError};
pub use tcp::Count;
use tcp::{FlowKey, TcpReassembler, TcpSettings, TcpStats};

/// Settings of both reassemblers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReassemblySettings {
    /// IP fragments.
    pub fragments: FragmentSettings,
    /// SIP over TCP.
    pub tcp: TcpSettings,
}

/// What reassembly did, for the summary and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Fragment outcomes.
    pub fragments: FragmentStats,
    /// TCP outcomes.
    pub tcp: TcpStats,
    /// Reassembled UDP datagrams that carried a NOTIFY to a watched port.
    pub fragmented_notifies: u64,
    /// IP packets or TCP headers that could not be read, by reason.
    pub unreadable: BTreeMap<&'static str, u64>,
    /// IP packets (fragments, TCP segments) from a source outside `--sip-source`, refused
    /// before any reassembly work or memory.
    pub source_not_allowed: u64,
}

impl ReassemblyStats {
    /// Logs what reassembly did, if it saw anything: one line for what it put together, and
    /// one warning for what it gave up, with what to check.
    pub fn log(&self) {
        if self.fragmented_notifies + self.tcp.notifies + self.tcp.segments > 0 {
            info!(
                from_fragments = self.fragmented_notifies,
                over_tcp = self.tcp.notifies,
                tcp_segments = self.tcp.segments,
                "reassembly finished"
            );
        }
        if self.source_not_allowed > 0 {
            warn!(
                refused = self.source_not_allowed,
                "reassembly refused IP fragments and TCP segments from sources outside --sip-source"
            );
        }
        if let Some(given_up) = LossReport::default().since_last(self) {
            warn!(
                given_up = %given_up,
                tcp_bytes_skipped = self.tcp.discarded_bytes,
                check = LOSS_CHECK,
                "reassembly gave up on some messages"
            );
        }
    }

    /// Everything given up, by reason (metric labels), zeros included.
    pub fn losses(&self) -> impl Iterator<Item = Count> + '_ {
        self.fragments
            .losses()
            .into_iter()
            .chain(self.tcp.losses())
            .chain(self.unreadable.iter().map(|(r, n)| (*r, *n)))
    }
}

/// What reassembly gave up since the last report, for a log line while capture runs.
#[derive(Debug, Default)]
pub struct LossReport {
    reported: BTreeMap<&'static str, u64>,
}

impl LossReport {
    /// Whether `stats` holds losses not yet reported.
    pub fn pending(&self, stats: &ReassemblyStats) -> bool {
        stats
            .losses()
            .into_iter()
            .any(|(reason, total)| total > self.reported.get(reason).copied().unwrap_or(0))
    }

    /// The losses since the last call, by reason (`tcp_gap=3 fragment_incomplete=1`); `None`
    /// when there are none.
    pub fn since_last(&mut self, stats: &ReassemblyStats) -> Option<String> {
        let mut lines = Vec::new();
        for (reason, total) in stats.losses() {
            let before = self.reported.insert(reason, total).unwrap_or(0);
            if total > before {
                lines.push(format!("{reason}={}", total - before));
            }
        }
        (!lines.is_empty()).then(|| lines.join(" "))
    }
}

/// What an operator can check when reassembly gives up.
pub const LOSS_CHECK: &str = "pieces the capture missed (ringbuf_full in the kernel counters), \
     fragments that never completed, TCP flows beyond the memory bound, or merged segments cut \
     in generic XDP mode (ip_packet_truncated: see the README on GRO)";

/// Turns IP fragments and TCP segments into NOTIFY records.
pub struct Reassembly {
    ports: Box<SipConfig>,
    senders: SourceFilter,
    source_not_allowed: u64,
    fragments: FragmentReassembler,
    tcp: TcpReassembler,
    fragmented_notifies: u64,
    unreadable: BTreeMap<&'static str, u64>,
}

impl Reassembly {
    /// Whether nothing is held (no flow, no pending datagram): nothing can time out.
    pub fn is_empty(&self) -> bool {
        self.fragments.is_empty() && self.tcp.is_empty()
    }

    /// Reassembles for the watched `ports` (TCP and UDP destination ports) what `senders`
    /// may send: the capture decision refuses strangers already, and this stage checks again
    /// what reaches it otherwise (`replay` hands it every packet the decision skipped).
    pub fn new(settings: ReassemblySettings, ports: &[u16], senders: SourceFilter) -> Self {
        let mut config = Box::new(SipConfig::empty());
        for &port in ports {
            config.watch(port);
        }
        Self {
            ports: config,
            senders,
            source_not_allowed: 0,
            fragments: FragmentReassembler::new(settings.fragments),
            tcp: TcpReassembler::new(settings.tcp),
            fragmented_notifies: 0,
            unreadable: BTreeMap::new(),
        }
    }

    /// Feeds one IP packet (`l3` starts at its IP header), received at `now`: a fragment of
    /// any datagram, or a TCP segment (segments to unwatched ports are ignored; whole UDP
    /// datagrams are the capture decision's, not this stage's). Every NOTIFY this completes
    /// goes to `emit`.
    pub fn push_ip(&mut self, now: Duration, l3: &[u8], emit: &mut impl FnMut(&Record<'_>)) {
        let packet = fragment::parse_ip(l3);
        let src = match &packet {
            Ok(IpPacket::Fragment(piece)) => Some(piece.key.src),
            Ok(IpPacket::Whole { src, .. }) => Some(*src),
            Err(_) => None,
        };
        if src.is_some_and(|src| !self.senders.allows(src)) {
            self.source_not_allowed += 1;
            return;
        }
        match packet {
            Ok(IpPacket::Fragment(piece)) => {
                if let Some(datagram) = self.fragments.push(now, piece) {
                    let key = datagram.key;
                    self.upper_layer(now, key.src, key.dst, key.protocol, &datagram.payload, emit);
                }
            }
            Ok(IpPacket::Whole {
                src,
                dst,
                protocol: IPPROTO_TCP,
                payload,
            }) => self.upper_layer(now, src, dst, IPPROTO_TCP, payload, emit),
            // Whole UDP datagrams are the capture decision's; other protocols carry no SIP.
            Ok(IpPacket::Whole { .. }) | Err(PacketError::NotUdpOrTcp) => {}
            Err(err) => *self.unreadable.entry(err.reason()).or_default() += 1,
        }
    }

    /// Feeds one IP-packet record (`sipnotify_common::FLAG_IP_PACKET`; the pipeline routes
    /// them here) as of `now`. A packet the capture cut short cannot be put back: it is
    /// counted as `ip_packet_truncated`, and its flow resynchronises after the gap.
    pub fn push_packet(
        &mut self,
        now: Duration,
        record: &Record<'_>,
        emit: &mut impl FnMut(&Record<'_>),
    ) {
        if record.truncated() {
            *self.unreadable.entry("ip_packet_truncated").or_default() += 1;
        } else {
            self.push_ip(now, record.payload, emit);
        }
    }

    /// Closes what timed out (fragments and idle flows) at `now`.
    pub fn expire(&mut self, now: Duration, emit: &mut impl FnMut(&Record<'_>)) {
        self.fragments.expire(now);
        self.tcp.expire(now, &mut |key, message| {
            emit(&tcp_record(now, key, message))
        });
    }

    /// Gives up every open gap and flow (the capture ended at `now`), handing on the NOTIFYs
    /// that complete, and counts the incomplete datagrams.
    pub fn finish(&mut self, now: Duration, emit: &mut impl FnMut(&Record<'_>)) {
        self.tcp
            .finish(&mut |key, message| emit(&tcp_record(now, key, message)));
        self.fragments.expire(Duration::MAX);
    }

    /// The outcomes so far.
    pub fn stats(&self) -> ReassemblyStats {
        ReassemblyStats {
            fragments: self.fragments.stats().clone(),
            tcp: self.tcp.stats().clone(),
            fragmented_notifies: self.fragmented_notifies,
            unreadable: self.unreadable.clone(),
            source_not_allowed: self.source_not_allowed,
        }
    }

    /// Memory held by both reassemblers.
    pub fn memory(&self) -> usize {
        self.fragments.memory() + self.tcp.memory()
    }

    /// Publishes the counters as metrics (`sipnotify_reassembly_lost_total{reason}`, the TCP
    /// bytes skipped, and the totals of what was put together).
    pub fn export_metrics(&self) {
        let stats = self.stats();
        for (reason, n) in stats.losses() {
            metrics::counter!("sipnotify_reassembly_lost_total", "reason" => reason).absolute(n);
        }
        metrics::counter!("sipnotify_reassembly_discarded_bytes_total")
            .absolute(stats.tcp.discarded_bytes);
        metrics::counter!("sipnotify_reassembled_total", "kind" => "ip_fragments")
            .absolute(stats.fragments.reassembled);
        metrics::counter!("sipnotify_reassembled_total", "kind" => "tcp_notify")
            .absolute(stats.tcp.notifies);
        metrics::gauge!("sipnotify_reassembly_memory_bytes").set(self.memory() as f64);
        metrics::counter!("sipnotify_reassembly_refused_total", "reason" => "source_not_allowed")
            .absolute(stats.source_not_allowed);
    }

    fn upper_layer(
        &mut self,
        now: Duration,
        src: IpAddr,
        dst: IpAddr,
        protocol: u8,
        l4: &[u8],
        emit: &mut impl FnMut(&Record<'_>),
    ) {
        match protocol {
            IPPROTO_UDP => {
                let Some(header) = l4.get(..8) else {
                    *self.unreadable.entry("udp_short_header").or_default() += 1;
                    return;
                };
                let dst_port = u16::from_be_bytes([header[2], header[3]]);
                let claimed = usize::from(u16::from_be_bytes([header[4], header[5]]));
                let payload = &l4[8..claimed.clamp(8, l4.len())];
                // The capture decision's own payload checks (keep-alive CRLFs, TLS/DTLS).
                let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
                if !self.ports.is_watched(dst_port) || check_payload(payload, 0, len).is_err() {
                    return;
                }
                self.fragmented_notifies += 1;
                let mut header = record_header(now, src, dst, payload.len());
                header.src_port = u16::from_be_bytes([l4[0], l4[1]]);
                header.dst_port = dst_port;
                emit(&Record { header, payload });
            }
            IPPROTO_TCP => {
                let segment = match tcp::parse_segment(src, dst, l4) {
                    Ok(segment) => segment,
                    Err(err) => {
                        *self.unreadable.entry(err.reason()).or_default() += 1;
                        return;
                    }
                };
                if !self.ports.is_watched(segment.key.dst.port()) {
                    return;
                }
                self.tcp.push(now, segment, &mut |key, message| {
                    emit(&tcp_record(now, key, message));
                });
            }
            _ => {}
        }
    }
}

fn tcp_record<'a>(now: Duration, key: &FlowKey, message: &'a [u8]) -> Record<'a> {
    let mut header = record_header(now, key.src.ip(), key.dst.ip(), message.len());
    header.src_port = key.src.port();
    header.dst_port = key.dst.port();
    Record {
        header,
        payload: message,
    }
}

/// The record header of a reassembled payload (ports filled in by the caller).
fn record_header(now: Duration, src: IpAddr, dst: IpAddr, len: usize) -> EventHeader {
    let (ip_version, src_addr, dst_addr) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
            a[..4].copy_from_slice(&s.octets());
            b[..4].copy_from_slice(&d.octets());
            (4, a, b)
        }
        (s, d) => (6, v6_octets(s), v6_octets(d)),
    };
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    EventHeader {
        timestamp_ns: u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
        payload_len: len,
        captured_len: len,
        ip_version,
        src_addr,
        dst_addr,
        ..EventHeader::default()
    }
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipnotify_testkit::frames::{self, ipv4_fragments, ipv6, ipv6_fragments, tcp, udp};

    fn big(prefix: &[u8]) -> Vec<u8> {
        let mut payload = prefix.to_vec();
        payload.extend_from_slice(b"NOTIFY sip:1002@192.0.2.2 SIP/2.0\r\n");
        payload.resize(3000, b'x');
        payload
    }

    /// Source, destination, ip version and payload of a record.
    type Delivered = (String, String, u8, Vec<u8>);

    /// Feeds the packets; returns what each record delivered.
    fn run(packets: &[Vec<u8>]) -> Vec<Delivered> {
        run_from(packets, SourceFilter::default()).0
    }

    /// [`run`] with only `senders` allowed; also returns what the stage counted.
    fn run_from(packets: &[Vec<u8>], senders: SourceFilter) -> (Vec<Delivered>, ReassemblyStats) {
        let mut stage = Reassembly::new(ReassemblySettings::default(), &[5061], senders);
        let mut out = Vec::new();
        for packet in packets {
            stage.push_ip(Duration::from_secs(1), packet, &mut |r| {
                let header = r.header;
                out.push((
                    r.src().to_string(),
                    r.dst().to_string(),
                    header.ip_version,
                    r.payload.to_vec(),
                ));
            });
        }
        (out, stage.stats())
    }

    #[test]
    fn pieces_from_outside_the_allowed_senders_are_refused_before_any_work() {
        let message = b"NOTIFY sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n";
        let mut packets = ipv6_fragments(1, 17, &udp(5060, 5061, &big(b"")), &[1232]);
        packets.push(ipv6(6, &tcp(40_000, 5061, 9, true, false, &[])));
        packets.push(ipv6(6, &tcp(40_000, 5061, 10, false, false, message)));
        let pieces = packets.len() as u64;
        // The frames' sender is 2001:db8::1.
        let stranger = SourceFilter::new(vec!["2001:db8::99".parse().unwrap()]);
        let (out, stats) = run_from(&packets, stranger);
        assert!(out.is_empty());
        assert_eq!(stats.source_not_allowed, pieces);
        assert_eq!(stats.fragments.reassembled, 0, "no memory spent on them");
        let friend = SourceFilter::new(vec!["2001:db8::/64".parse().unwrap()]);
        let (out, stats) = run_from(&packets, friend);
        assert_eq!((out.len(), stats.source_not_allowed), (2, 0));
    }

    #[test]
    fn reassembled_datagrams_take_the_capture_decision() {
        // A keep-alive CRLF before the NOTIFY is accepted, as in a whole datagram.
        let notify = big(b"\r\n");
        let out = run(&ipv6_fragments(1, 17, &udp(5060, 5061, &notify), &[1232]));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "[2001:db8::1]:5060");
        assert_eq!(out[0].1, "[2001:db8::2]:5061");
        assert_eq!((out[0].2, &out[0].3), (6, &notify));
        // An unwatched port, and a TLS record start, are not NOTIFYs to hand on.
        assert!(run(&ipv4_fragments(2, 17, &udp(5060, 5062, &big(b"")), &[1480])).is_empty());
        let tls = [&[0x16, 0x03, 0x01][..], &big(b"")].concat();
        assert!(run(&ipv4_fragments(3, 17, &udp(5060, 5061, &tls), &[1480])).is_empty());
    }

    #[test]
    fn tcp_records_carry_the_flow() {
        let message = b"NOTIFY sip:a@b SIP/2.0\r\nContent-Length: 2\r\n\r\nok";
        let packets = [
            ipv6(6, &tcp(40_000, 5061, 9, true, false, &[])),
            ipv6(6, &tcp(40_000, 5061, 10, false, false, &message[..20])),
            ipv6(6, &tcp(40_000, 5061, 30, false, false, &message[20..])),
            // The other direction and other ports are not reassembled.
            ipv6(6, &tcp(5061, 40_000, 10, false, false, message)),
            frames::ipv4(6, &tcp(40_000, 5062, 10, false, false, message)),
        ];
        let out = run(&packets);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].0.as_str(), out[0].1.as_str()),
            ("[2001:db8::1]:40000", "[2001:db8::2]:5061")
        );
        assert_eq!(out[0].3, message);
    }

    #[test]
    fn the_loss_report_counts_what_is_new_since_the_last_line() {
        let mut report = LossReport::default();
        let mut stats = ReassemblyStats::default();
        assert_eq!(report.since_last(&stats), None);
        stats.tcp.gaps = 3;
        stats.fragments.incomplete = 1;
        let line = report.since_last(&stats).unwrap();
        assert!(
            line.contains("tcp_gap=3") && line.contains("fragment_incomplete=1"),
            "{line}"
        );
        assert_eq!(report.since_last(&stats), None, "nothing new");
        stats.tcp.gaps = 5;
        assert_eq!(report.since_last(&stats).as_deref(), Some("tcp_gap=2"));
    }
}
