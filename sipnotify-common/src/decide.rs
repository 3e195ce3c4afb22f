//! The capture decision: written once, run by the XDP program, the AF_PACKET reader and the
//! pcap replay.
//!
//! After the header walk ([`crate::net`]) it checks, in this order: the destination port, an
//! empty payload, a TLS or DTLS record start, then `NOTIFY ` after at most
//! [`MAX_LEADING_CRLF`] keep-alive CRLFs. Every packet ends in exactly one [`Decision`], and
//! every [`Skip`] names exactly one outcome [`Counter`]; a [`Capture`] ends in the outcome of
//! its copy ([`Counter::Copied`], [`Counter::RingbufFull`], …), which only the caller knows.
//! That is what keeps `packets_seen` equal to the sum of the outcomes on every source.
//!
//! The checks are bounded (a fixed number of small loads) so the verifier accepts them, and
//! ordered so that the traffic an Asterisk host carries most of, RTP to unwatched ports,
//! costs a port lookup and nothing more.

use crate::{
    Counter, EventHeader, FLAG_TRUNCATED, MAX_PAYLOAD, NOTIFY_PREFIX, SipConfig,
    net::{self, Bail, Frame, Location, Transport, Walk},
};

/// Most `\r\n` pairs skipped before `NOTIFY ` (RFC 5626 keep-alives sent in the same
/// datagram). Bounded so the kernel's check is a fixed number of two-byte loads.
pub const MAX_LEADING_CRLF: usize = 4;

/// The first bytes of a TLS record carrying a handshake (content type 22, version 3.x).
pub const TLS_RECORD_START: [u8; 2] = [0x16, 0x03];
/// The first bytes of a DTLS record carrying a handshake (content type 22, version 254.x).
pub const DTLS_RECORD_START: [u8; 2] = [0x16, 0xfe];

const TCP_DATA_OFFSET: usize = 12;

/// The set of watched destination ports. The XDP program reads its configuration through a
/// volatile load, so the test is a trait rather than a [`SipConfig`] method call.
pub trait Ports {
    /// Whether packets to `port` are inspected further.
    fn is_watched(&self, port: u16) -> bool;
}

impl Ports for SipConfig {
    #[inline(always)]
    fn is_watched(&self, port: u16) -> bool {
        SipConfig::is_watched(self, port)
    }
}

/// Why a packet is passed without a record; each maps to one outcome counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not IP, or IP carrying neither UDP nor TCP.
    NotUdpOrTcp,
    /// A non-first IP fragment (no transport header).
    LaterFragment,
    /// The header walk gave up.
    Bail(Bail),
    /// To a port that is not watched.
    PortNotWatched,
    /// To a watched port, without payload.
    EmptyPayload,
    /// To a watched port, starting like a TLS record.
    TlsRecord,
    /// UDP to a watched port, starting like a DTLS record.
    DtlsRecord,
    /// UDP to a watched port, not a NOTIFY.
    NotNotify,
    /// TCP to a watched port, with a payload that is not TLS (not captured).
    TcpSegment,
}

impl Skip {
    /// The outcome counter of this skip.
    #[inline(always)]
    pub const fn counter(self) -> Counter {
        match self {
            Skip::NotUdpOrTcp => Counter::NotUdpOrTcp,
            Skip::LaterFragment => Counter::LaterFragments,
            Skip::Bail(Bail::ShortHeader) => Counter::BailShortHeader,
            Skip::Bail(Bail::BadIpHeader) => Counter::BailBadIpHeader,
            Skip::Bail(Bail::ExtHeaderLimit) => Counter::BailExtHeaderLimit,
            Skip::PortNotWatched => Counter::PortNotWatched,
            Skip::EmptyPayload => Counter::EmptyPayload,
            Skip::TlsRecord => Counter::TlsRecord,
            Skip::DtlsRecord => Counter::DtlsRecord,
            Skip::NotNotify => Counter::NotNotify,
            Skip::TcpSegment => Counter::TcpSegment,
        }
    }
}

/// A NOTIFY to copy: everything the record header needs except the capture time, the
/// interface and how many payload bytes the frame really holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capture {
    /// Where the datagram is.
    pub location: Location,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
    /// UDP payload length according to the UDP header.
    pub payload_len: u16,
    /// Source address (IPv4 in the first four bytes).
    pub src_addr: [u8; 16],
    /// Destination address (IPv4 in the first four bytes).
    pub dst_addr: [u8; 16],
}

impl Capture {
    /// Offset of the payload (including any leading CRLFs: the record is the datagram as
    /// sent, and the parser skips them).
    #[inline(always)]
    pub fn payload_offset(&self) -> usize {
        self.location.payload_offset()
    }

    /// Bytes a record carries when `present` payload bytes follow [`Self::payload_offset`]
    /// in the frame: what UDP claims, at most what is there and at most [`MAX_PAYLOAD`].
    #[inline(always)]
    pub fn captured_len(&self, present: usize) -> usize {
        let claimed = usize::from(self.payload_len);
        let len = if present < claimed { present } else { claimed };
        if len > MAX_PAYLOAD { MAX_PAYLOAD } else { len }
    }

    /// The record header for `captured` payload bytes; flagged (and tallied through `tally`)
    /// as truncated when that is less than UDP claims.
    #[inline(always)]
    pub fn header(
        &self,
        captured: usize,
        timestamp_ns: u64,
        ifindex: u32,
        tally: &mut impl FnMut(Counter),
    ) -> EventHeader {
        let mut flags = self.location.flags;
        if captured < usize::from(self.payload_len) {
            flags |= FLAG_TRUNCATED;
            tally(Counter::Truncated);
        }
        EventHeader {
            timestamp_ns,
            ifindex,
            payload_len: u32::from(self.payload_len),
            captured_len: captured as u32,
            flags,
            ip_version: self.location.ip_version,
            _pad0: 0,
            src_addr: self.src_addr,
            dst_addr: self.dst_addr,
            src_port: self.src_port,
            dst_port: self.dst_port,
            vlan_tci: self.location.vlan_tci,
            _pad1: [0; 2],
        }
    }
}

/// What to do with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Pass it without a record, counted as the skip's outcome.
    Skip(Skip),
    /// Copy it; the copy's result is the outcome.
    Capture(Capture),
}

impl From<Skip> for Decision {
    #[inline(always)]
    fn from(skip: Skip) -> Self {
        Decision::Skip(skip)
    }
}

/// Decides about one Ethernet frame. Tallies ([`Counter::UdpWatched`],
/// [`Counter::FirstFragments`], [`Counter::NotifyMatched`]) are reported through `tally` as
/// they are passed; `packets_seen` and the outcome are the caller's to count.
#[inline(always)]
pub fn decide<F: Frame + ?Sized, P: Ports + ?Sized>(
    frame: &F,
    ports: &P,
    tally: &mut impl FnMut(Counter),
) -> Decision {
    let location = match net::walk(frame) {
        Walk::Found(location) => location,
        Walk::NotUdpOrTcp => return Skip::NotUdpOrTcp.into(),
        Walk::LaterFragment => return Skip::LaterFragment.into(),
        Walk::Bail(bail) => return Skip::Bail(bail).into(),
    };
    let Some(dst_port) = net::dst_port(frame, &location) else {
        return Skip::Bail(Bail::ShortHeader).into();
    };
    if !ports.is_watched(dst_port) {
        return Skip::PortNotWatched.into();
    }
    match location.transport {
        Transport::Udp => decide_udp(frame, location, tally),
        Transport::Tcp => decide_tcp(frame, &location).into(),
    }
}

#[inline(always)]
fn decide_udp<F: Frame + ?Sized>(
    frame: &F,
    location: Location,
    tally: &mut impl FnMut(Counter),
) -> Decision {
    let Some(udp) = net::udp_header(frame, &location) else {
        return Skip::Bail(Bail::ShortHeader).into();
    };
    tally(Counter::UdpWatched);
    if location.flags & crate::FLAG_FIRST_FRAGMENT != 0 {
        tally(Counter::FirstFragments);
    }
    let payload = location.payload_offset();
    // A UDP length of 8 (whatever padding follows), or nothing of the payload in the frame.
    if udp.payload_len == 0 || frame.load::<1>(payload).is_none() {
        return Skip::EmptyPayload.into();
    }
    if let Err(skip) = check_payload(frame, payload, udp.payload_len) {
        return skip.into();
    }
    tally(Counter::NotifyMatched);
    let Some((src_addr, dst_addr)) = net::addresses(frame, &location) else {
        return Skip::Bail(Bail::ShortHeader).into();
    };
    Decision::Capture(Capture {
        location,
        src_port: udp.src_port,
        dst_port: udp.dst_port,
        payload_len: udp.payload_len,
        src_addr,
        dst_addr,
    })
}

/// The checks on a UDP payload of `payload_len` bytes at `payload` in `frame`: a TLS or
/// DTLS record start, then `NOTIFY ` after at most [`MAX_LEADING_CRLF`] keep-alive CRLFs.
/// The frame decision runs it, and so does user space on a datagram it put back together
/// from IP fragments (then `frame` is the payload itself and `payload` is 0).
#[inline(always)]
pub fn check_payload<F: Frame + ?Sized>(
    frame: &F,
    payload: usize,
    payload_len: u16,
) -> Result<(), Skip> {
    let Some(start) = frame.load::<2>(payload) else {
        return Err(Skip::NotNotify);
    };
    if start == TLS_RECORD_START {
        return Err(Skip::TlsRecord);
    }
    if start == DTLS_RECORD_START {
        return Err(Skip::DtlsRecord);
    }
    let Some(skipped) = leading_crlf(frame, payload) else {
        return Err(Skip::NotNotify);
    };
    // The prefix must lie inside what the UDP length claims, not only inside the frame.
    if usize::from(payload_len) < skipped + NOTIFY_PREFIX.len()
        || frame.load::<7>(payload + skipped) != Some(*NOTIFY_PREFIX)
    {
        return Err(Skip::NotNotify);
    }
    Ok(())
}

/// How many bytes of `\r\n` pairs start the payload (at most [`MAX_LEADING_CRLF`] pairs);
/// `None` when there are more, which is no NOTIFY this check accepts.
#[inline(always)]
fn leading_crlf<F: Frame + ?Sized>(frame: &F, payload: usize) -> Option<usize> {
    let mut skipped = 0;
    for _ in 0..MAX_LEADING_CRLF {
        if frame.load::<2>(payload + skipped) != Some(*b"\r\n") {
            return Some(skipped);
        }
        skipped += 2;
    }
    if frame.load::<2>(payload + skipped) == Some(*b"\r\n") {
        return None;
    }
    Some(skipped)
}

#[inline(always)]
fn decide_tcp<F: Frame + ?Sized>(frame: &F, location: &Location) -> Skip {
    let Some([offset_byte]) = frame.load::<1>(location.l4_offset + TCP_DATA_OFFSET) else {
        return Skip::Bail(Bail::ShortHeader);
    };
    let header_len = usize::from(offset_byte >> 4) * 4;
    if header_len < 20 {
        return Skip::Bail(Bail::BadIpHeader);
    }
    let payload = location.l4_offset + header_len;
    // The IP length, not the frame, says where the segment ends: a bare ACK is padded to the
    // Ethernet minimum with bytes that are not payload.
    if location.ip_end <= payload {
        return Skip::EmptyPayload;
    }
    match frame.load::<2>(payload) {
        None => Skip::EmptyPayload,
        Some(TLS_RECORD_START) => Skip::TlsRecord,
        Some(_) => Skip::TcpSegment,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use etherparse::{PacketBuilder, VlanId};

    use super::*;
    use crate::{CounterSet, FLAG_VLAN};

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const NOTIFY: &[u8] = b"NOTIFY sip:a@b SIP/2.0\r\n\r\n";
    /// The first bytes of a real TLS 1.2 ClientHello record.
    const CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];

    fn ports() -> SipConfig {
        let mut config = SipConfig::empty();
        config.watch(5061);
        config
    }

    fn udp(port: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(MAC, MAC)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5060, port)
            .write(&mut frame, payload)
            .unwrap();
        frame
    }

    fn udp6_vlan(port: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(MAC, MAC)
            .single_vlan(VlanId::try_new(210).unwrap())
            .ipv6([1; 16], [2; 16], 64)
            .udp(5060, port)
            .write(&mut frame, payload)
            .unwrap();
        frame
    }

    fn tcp(port: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(MAC, MAC)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, port, 1, 1000)
            .write(&mut frame, payload)
            .unwrap();
        frame
    }

    /// Runs the decision the way the callers count it; returns the decision and the counts.
    fn run(frames: &[Vec<u8>]) -> (Vec<Decision>, CounterSet) {
        let mut counts = CounterSet::default();
        let config = ports();
        let decisions = frames
            .iter()
            .map(|frame| {
                counts.add(Counter::PacketsSeen);
                let decision = decide(frame.as_slice(), &config, &mut |c| counts.add(c));
                match decision {
                    Decision::Skip(skip) => counts.add(skip.counter()),
                    Decision::Capture(capture) => {
                        let present = frame.len() - capture.payload_offset();
                        let len = capture.captured_len(present);
                        capture.header(len, 0, 0, &mut |c| counts.add(c));
                        counts.add(Counter::Copied);
                    }
                }
                decision
            })
            .collect();
        (decisions, counts)
    }

    fn skip(frame: Vec<u8>) -> Skip {
        match run(&[frame]).0[0] {
            Decision::Skip(skip) => skip,
            other => panic!("expected a skip, got {other:?}"),
        }
    }

    fn captured(frame: &[u8]) -> Capture {
        match decide(frame, &ports(), &mut |_| {}) {
            Decision::Capture(capture) => capture,
            other => panic!("expected a capture, got {other:?}"),
        }
    }

    #[test]
    fn a_notify_to_a_watched_port_is_captured_with_its_header() {
        let frame = udp(5061, NOTIFY);
        let capture = captured(&frame);
        assert_eq!(capture.payload_offset(), 42);
        let header = capture.header(capture.captured_len(frame.len() - 42), 7, 3, &mut |_| {
            panic!("no tally for a whole record")
        });
        assert_eq!(
            (header.payload_len, header.captured_len, header.flags),
            (NOTIFY.len() as u32, NOTIFY.len() as u32, 0)
        );
        assert_eq!((header.src_port, header.dst_port), (5060, 5061));
        assert_eq!(&header.src_addr[..4], &[10, 0, 0, 1]);
        assert_eq!((header.timestamp_ns, header.ifindex), (7, 3));

        let tagged = udp6_vlan(5061, NOTIFY);
        let header = captured(&tagged).header(NOTIFY.len(), 0, 0, &mut |_| {});
        assert_eq!(
            (header.ip_version, header.flags, header.vlan_tci),
            (6, FLAG_VLAN, 210)
        );
        assert_eq!(header.dst_addr, [2; 16]);
    }

    #[test]
    fn leading_crlfs_are_skipped_up_to_the_bound() {
        for pairs in 0..=MAX_LEADING_CRLF {
            let mut payload = b"\r\n".repeat(pairs);
            payload.extend_from_slice(NOTIFY);
            let capture = captured(&udp(5061, &payload));
            // The record is the datagram as sent; the parser skips the CRLFs.
            assert_eq!(usize::from(capture.payload_len), payload.len(), "{pairs}");
        }
        let mut too_many = b"\r\n".repeat(MAX_LEADING_CRLF + 1);
        too_many.extend_from_slice(NOTIFY);
        assert_eq!(skip(udp(5061, &too_many)), Skip::NotNotify);
        // A bare keep-alive is not a NOTIFY.
        assert_eq!(skip(udp(5061, b"\r\n\r\n")), Skip::NotNotify);
        assert_eq!(skip(udp(5061, b"\r\nINVITE x")), Skip::NotNotify);
    }

    #[test]
    fn tls_and_dtls_records_are_told_apart_from_sip() {
        assert_eq!(skip(udp(5061, CLIENT_HELLO)), Skip::TlsRecord);
        assert_eq!(skip(tcp(5061, CLIENT_HELLO)), Skip::TlsRecord);
        assert_eq!(skip(udp(5061, &[0x16, 0xfe, 0xfd, 0, 0])), Skip::DtlsRecord);
        // DTLS is a UDP thing: on TCP the same bytes are just a segment.
        assert_eq!(skip(tcp(5061, &[0x16, 0xfe, 0xfd, 0, 0])), Skip::TcpSegment);
        // TLS to a port nobody watches is nobody's business.
        assert_eq!(skip(tcp(443, CLIENT_HELLO)), Skip::PortNotWatched);
        assert_eq!(skip(tcp(5061, NOTIFY)), Skip::TcpSegment);
    }

    #[test]
    fn empty_payloads_are_their_own_outcome() {
        assert_eq!(skip(udp(5061, b"")), Skip::EmptyPayload);
        // A bare ACK padded to the Ethernet minimum is still empty.
        let mut ack = tcp(5061, b"");
        ack.resize(60, 0);
        assert_eq!(skip(ack), Skip::EmptyPayload);
        // Padding the UDP length disowns is no payload either.
        let mut padded = udp(5061, b"");
        padded.extend_from_slice(b"NOTIFY padding!");
        assert_eq!(skip(padded), Skip::EmptyPayload);
    }

    #[test]
    fn the_prefix_must_lie_inside_the_udp_length() {
        // The UDP length says 3 bytes; the frame carries more (padding that looks like SIP).
        let mut frame = udp(5061, b"NOT");
        frame.extend_from_slice(b"IFY sip:a@b SIP/2.0");
        assert_eq!(skip(frame), Skip::NotNotify);
    }

    #[test]
    fn a_short_frame_is_captured_and_flagged_truncated() {
        let mut frame = udp(5061, NOTIFY);
        frame.truncate(frame.len() - 5);
        let capture = captured(&frame);
        let len = capture.captured_len(frame.len() - capture.payload_offset());
        assert_eq!(len, NOTIFY.len() - 5);
        let mut tallies = Vec::new();
        let header = capture.header(len, 0, 0, &mut |c| tallies.push(c));
        assert_eq!(header.flags, FLAG_TRUNCATED);
        assert_eq!(tallies, [Counter::Truncated]);
        let mut big = NOTIFY.to_vec();
        big.resize(MAX_PAYLOAD + 10, b'x');
        let capture = captured(&udp(5061, &big));
        assert_eq!(capture.captured_len(big.len()), MAX_PAYLOAD);
    }

    #[test]
    fn every_packet_has_exactly_one_outcome() {
        let mut arp = udp(5061, NOTIFY);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let mut later = udp(5061, NOTIFY);
        later[21] = 1;
        let mut cut = udp(5061, NOTIFY);
        cut.truncate(20);
        let mut crlf = b"\r\n\r\n".to_vec();
        crlf.extend_from_slice(NOTIFY);
        let frames = vec![
            udp(5061, NOTIFY),
            udp(5061, &crlf),
            udp6_vlan(5061, NOTIFY),
            udp(5060, NOTIFY),
            udp(5061, b"INVITE sip:a@b SIP/2.0\r\n\r\n"),
            udp(5061, b""),
            udp(5061, CLIENT_HELLO),
            udp(5061, &[0x16, 0xfe, 0xfd]),
            tcp(5061, CLIENT_HELLO),
            tcp(5061, b""),
            tcp(5061, b"OPTIONS"),
            arp,
            later,
            cut,
        ];
        let (_, counts) = run(&frames);
        assert_eq!(counts.get(Counter::PacketsSeen), frames.len() as u64);
        assert_eq!(counts.outcomes(), frames.len() as u64);
        let expect = [
            (Counter::Copied, 3),
            (Counter::PortNotWatched, 1),
            (Counter::NotNotify, 1),
            (Counter::EmptyPayload, 2),
            (Counter::TlsRecord, 2),
            (Counter::DtlsRecord, 1),
            (Counter::TcpSegment, 1),
            (Counter::NotUdpOrTcp, 1),
            (Counter::LaterFragments, 1),
            (Counter::BailShortHeader, 1),
            (Counter::NotifyMatched, 3),
            (Counter::UdpWatched, 7),
        ];
        for (counter, n) in expect {
            assert_eq!(counts.get(counter), n, "{}", counter.name());
        }
    }
}
