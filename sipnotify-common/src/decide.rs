//! The capture decision: written once, run by the XDP program, the AF_PACKET reader and the
//! pcap replay.
//!
//! After the header walk ([`crate::net`]) it checks, in this order: the destination port, an
//! empty payload, a TLS or DTLS record start, then, for UDP, `NOTIFY ` after at most
//! [`MAX_LEADING_CRLF`] keep-alive CRLFs, and last whether the source may send NOTIFYs
//! ([`Senders`], `--sip-source`), so only what would be copied pays for that lookup. What cannot be judged from one packet is copied
//! whole from its IP header (flagged [`FLAG_IP_PACKET`]) for user space to reassemble: every
//! TCP segment to a watched port that carries data or opens or closes the flow, the first
//! fragment of a NOTIFY, and the later fragments of the datagrams [`Fragments`] follows. A
//! TCP flow once seen carrying TLS ([`TlsFlows`]) is not copied again.
//! Every packet ends in exactly one [`Decision`], and
//! every [`Skip`] names exactly one outcome [`Counter`]; a [`Capture`] ends in the outcome of
//! its copy ([`Counter::Copied`], [`Counter::RingbufFull`], …), which only the caller knows.
//! That is what keeps `packets_seen` equal to the sum of the outcomes on every source.
//!
//! The checks are bounded (a fixed number of small loads) so the verifier accepts them, and
//! ordered so that the traffic an Asterisk host carries most of, RTP to unwatched ports,
//! costs a port lookup and nothing more.

use crate::{
    Counter, EventHeader, FLAG_FIRST_FRAGMENT, FLAG_IP_PACKET, FLAG_TRUNCATED, FlowKey,
    FragmentKey, MAX_PAYLOAD, NOTIFY_PREFIX, SipConfig,
    net::{self, Bail, Frame, IPPROTO_TCP, IPPROTO_UDP, Location, Transport, Walk},
};

/// Most `\r\n` pairs skipped before `NOTIFY ` (RFC 5626 keep-alives sent in the same
/// datagram). Bounded so the kernel's check is a fixed number of two-byte loads.
pub const MAX_LEADING_CRLF: usize = 4;

/// The first bytes of a TLS record carrying a handshake (content type 22, version 3.x).
pub const TLS_RECORD_START: [u8; 2] = [0x16, 0x03];
/// TLS record content types: change_cipher_spec (20), alert, handshake, application_data (23).
/// A segment of a connection joined mid-stream starts with any of them, not only 22.
pub const TLS_CONTENT_TYPES: core::ops::RangeInclusive<u8> = 0x14..=0x17;
/// The highest TLS record version minor (3.4; TLS 1.3 records still say 3.3).
pub const TLS_MAX_MINOR: u8 = 4;
/// The first bytes of a DTLS record carrying a handshake (content type 22, version 254.x).
pub const DTLS_RECORD_START: [u8; 2] = [0x16, 0xfe];

const TCP_DATA_OFFSET: usize = 12;
/// The TCP header up to and including its flags byte.
const TCP_FLAGS_END: usize = 14;
/// FIN, SYN and RST: a segment with any of them opens or closes a flow, data or not.
const TCP_FIN_SYN_RST: u8 = 0x07;
/// FIN and RST: the flow is closing.
const TCP_FIN_RST: u8 = 0x05;

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

/// The datagrams whose first fragment was copied, so that their later fragments, which carry
/// no port to judge them by, are copied too: an LRU map in the kernel, a bounded table in
/// user space.
pub trait Fragments {
    /// The later fragments of `key` are wanted: its first fragment was just copied.
    fn follow(&mut self, key: &FragmentKey);
    /// Whether the later fragments of `key` are wanted.
    fn followed(&mut self, key: &FragmentKey) -> bool;
}

/// The TCP flows seen carrying TLS, so that their later segments, which start anywhere in a
/// record, are not copied: an LRU map in the kernel, a bounded table in user space. Asked of
/// the same value as [`Fragments`].
pub trait TlsFlows {
    /// `key` carries TLS: its segments are not wanted.
    fn mark_tls(&mut self, key: &FlowKey);
    /// Whether `key` was seen carrying TLS.
    fn is_tls(&mut self, key: &FlowKey) -> bool;
    /// `key` is closing (FIN or RST): a new connection may reuse its ports.
    fn forget_tls(&mut self, key: &FlowKey);
}

/// The networks NOTIFYs may come from (`--sip-source`): an LPM trie in the kernel, the same
/// prefixes in a table in user space. Asked only about what would otherwise be copied.
pub trait Senders {
    /// Whether `addr` (IPv4 in the first four bytes when `ip_version` is 4) may send.
    fn allowed(&self, ip_version: u8, addr: &[u8; 16]) -> bool;
}

/// Every source may send: no `--sip-source` (and the tests that are not about senders).
#[derive(Clone, Copy, Debug, Default)]
pub struct AnySender;

impl Senders for AnySender {
    #[inline(always)]
    fn allowed(&self, _ip_version: u8, _addr: &[u8; 16]) -> bool {
        true
    }
}

/// Why a packet is passed without a record; each maps to one outcome counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not IP, or IP carrying neither UDP nor TCP.
    NotUdpOrTcp,
    /// A non-first IP fragment of a datagram whose first fragment was not copied.
    LaterFragment,
    /// The header walk gave up.
    Bail(Bail),
    /// To a port that is not watched.
    PortNotWatched,
    /// To a watched port, without payload.
    EmptyPayload,
    /// To a watched port, starting like a TLS record.
    TlsRecord,
    /// TCP to a watched port, of a flow seen carrying TLS.
    TlsFlow,
    /// UDP to a watched port, starting like a DTLS record.
    DtlsRecord,
    /// UDP to a watched port, not a NOTIFY.
    NotNotify,
    /// A NOTIFY or a TCP segment to a watched port from a source [`Senders`] refuses.
    SourceNotAllowed,
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
            Skip::TlsFlow => Counter::TlsFlow,
            Skip::DtlsRecord => Counter::DtlsRecord,
            Skip::NotNotify => Counter::NotNotify,
            Skip::SourceNotAllowed => Counter::SourceNotAllowed,
        }
    }
}

/// What to copy: a NOTIFY's UDP payload, or (flagged [`FLAG_IP_PACKET`]) an IP packet for
/// user space to reassemble. Everything the record header needs except the capture time, the
/// interface and how many bytes the frame really holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capture {
    /// Where the datagram is.
    pub location: Location,
    /// Where the copy starts: the UDP payload, or the IP header.
    pub offset: usize,
    /// UDP or TCP source port (zero for a later fragment).
    pub src_port: u16,
    /// UDP or TCP destination port (zero for a later fragment).
    pub dst_port: u16,
    /// Bytes from `offset` the headers claim: the UDP payload length, or the IP packet's.
    pub payload_len: u16,
    /// Source address (IPv4 in the first four bytes).
    pub src_addr: [u8; 16],
    /// Destination address (IPv4 in the first four bytes).
    pub dst_addr: [u8; 16],
}

impl Capture {
    /// Where the copy starts (a UDP payload including any leading CRLFs: the record is the
    /// datagram as sent, and the parser skips them).
    #[inline(always)]
    pub fn payload_offset(&self) -> usize {
        self.offset
    }

    /// Bytes a record carries when `present` bytes follow [`Self::payload_offset`] in the
    /// frame: what the headers claim, at most what is there and at most [`MAX_PAYLOAD`].
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
/// [`Counter::FirstFragments`], [`Counter::NotifyMatched`], …) are reported through `tally`
/// as they are passed; `packets_seen` and the outcome are the caller's to count.
/// `fragments` remembers the datagrams whose first fragment is captured; `senders` says whose
/// NOTIFYs and TCP segments may be copied (a later fragment follows its first fragment's
/// verdict: the followed datagram's key holds its source).
#[inline(always)]
pub fn decide<
    F: Frame + ?Sized,
    P: Ports + ?Sized,
    S: Senders + ?Sized,
    D: Fragments + TlsFlows + ?Sized,
>(
    frame: &F,
    ports: &P,
    senders: &S,
    fragments: &mut D,
    tally: &mut impl FnMut(Counter),
) -> Decision {
    let location = match net::walk(frame) {
        Walk::Found(location) => location,
        Walk::NotUdpOrTcp => return Skip::NotUdpOrTcp.into(),
        Walk::LaterFragment(location) => {
            return decide_later_fragment(frame, location, fragments, tally);
        }
        Walk::Bail(bail) => return Skip::Bail(bail).into(),
    };
    let Some(dst_port) = net::dst_port(frame, &location) else {
        return Skip::Bail(Bail::ShortHeader).into();
    };
    if !ports.is_watched(dst_port) {
        return Skip::PortNotWatched.into();
    }
    let decision = match location.transport {
        Transport::Udp => decide_udp(frame, location, senders, tally),
        Transport::Tcp => decide_tcp(frame, location, senders, fragments, tally),
    };
    if let Decision::Capture(capture) = &decision {
        if location.flags & FLAG_FIRST_FRAGMENT != 0 {
            fragments.follow(&fragment_key(&location, capture.src_addr, capture.dst_addr));
        }
    }
    decision
}

/// A later fragment is copied when its datagram's first fragment was.
#[inline(always)]
fn decide_later_fragment<F: Frame + ?Sized, D: Fragments + ?Sized>(
    frame: &F,
    location: Location,
    fragments: &mut D,
    tally: &mut impl FnMut(Counter),
) -> Decision {
    let Some((src_addr, dst_addr)) = net::addresses(frame, &location) else {
        return Skip::Bail(Bail::ShortHeader).into();
    };
    if !fragments.followed(&fragment_key(&location, src_addr, dst_addr)) {
        return Skip::LaterFragment.into();
    }
    tally(Counter::FragmentsFollowed);
    ip_packet(location, 0, 0, src_addr, dst_addr)
}

#[inline(always)]
fn fragment_key(location: &Location, src_addr: [u8; 16], dst_addr: [u8; 16]) -> FragmentKey {
    FragmentKey {
        src_addr,
        dst_addr,
        id: location.fragment_id,
        ip_version: location.ip_version,
        protocol: match location.transport {
            Transport::Udp => IPPROTO_UDP,
            Transport::Tcp => IPPROTO_TCP,
        },
        _pad: [0; 2],
    }
}

/// The whole IP packet at `location`, for user space to reassemble.
#[inline(always)]
fn ip_packet(
    mut location: Location,
    src_port: u16,
    dst_port: u16,
    src_addr: [u8; 16],
    dst_addr: [u8; 16],
) -> Decision {
    let len = location.ip_end.saturating_sub(location.l3_offset);
    location.flags |= FLAG_IP_PACKET;
    Decision::Capture(Capture {
        location,
        offset: location.l3_offset,
        src_port,
        dst_port,
        payload_len: if len > 0xffff { 0xffff } else { len as u16 },
        src_addr,
        dst_addr,
    })
}

#[inline(always)]
fn decide_udp<F: Frame + ?Sized, S: Senders + ?Sized>(
    frame: &F,
    location: Location,
    senders: &S,
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
    if !senders.allowed(location.ip_version, &src_addr) {
        return Skip::SourceNotAllowed.into();
    }
    // The rest of a fragmented NOTIFY arrives without a UDP header: copy the IP packets and
    // let user space put the datagram together.
    if location.flags & FLAG_FIRST_FRAGMENT != 0 {
        return ip_packet(location, udp.src_port, udp.dst_port, src_addr, dst_addr);
    }
    Decision::Capture(Capture {
        location,
        offset: payload,
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
    if TLS_CONTENT_TYPES.contains(&start[0]) && start[1] == TLS_RECORD_START[1] {
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

/// A TCP segment to a watched port is copied whole when it carries data or opens or closes
/// the flow: a NOTIFY may start anywhere in a stream, so only user space can frame it.
#[inline(always)]
fn decide_tcp<F: Frame + ?Sized, S: Senders + ?Sized, T: TlsFlows + ?Sized>(
    frame: &F,
    location: Location,
    senders: &S,
    flows: &mut T,
    tally: &mut impl FnMut(Counter),
) -> Decision {
    // Ports, sequence and acknowledgement numbers, data offset and flags in one load: every
    // byte used below then has a value on every path the verifier explores.
    let Some(tcp) = frame.load::<TCP_FLAGS_END>(location.l4_offset) else {
        return Skip::Bail(Bail::ShortHeader).into();
    };
    let header_len = usize::from(tcp[TCP_DATA_OFFSET] >> 4) * 4;
    if header_len < 20 {
        return Skip::Bail(Bail::BadIpHeader).into();
    }
    let payload = location.l4_offset + header_len;
    // The IP length, not the frame, says whether there is data: a bare ACK is padded to the
    // Ethernet minimum with bytes that are not payload, and a frame cut short is still
    // copied, flagged truncated.
    let has_data = location.ip_end > payload;
    if !has_data && tcp[TCP_DATA_OFFSET + 1] & TCP_FIN_SYN_RST == 0 {
        return Skip::EmptyPayload.into();
    }
    let Some((src_addr, dst_addr)) = net::addresses(frame, &location) else {
        return Skip::Bail(Bail::ShortHeader).into();
    };
    let flow = FlowKey {
        src_addr,
        dst_addr,
        src_port: u16::from_be_bytes([tcp[0], tcp[1]]),
        dst_port: u16::from_be_bytes([tcp[2], tcp[3]]),
        ip_version: location.ip_version,
        _pad: [0; 3],
    };
    // A flow seen carrying TLS is encrypted to its end: its segments start anywhere in a
    // record, so no later segment could be judged by its first bytes.
    if flows.is_tls(&flow) {
        if tcp[TCP_DATA_OFFSET + 1] & TCP_FIN_RST != 0 {
            flows.forget_tls(&flow);
        }
        return Skip::TlsFlow.into();
    }
    if has_data {
        // The first data byte decides: SIP is text and never starts with a TLS record's
        // content type (0x14–0x17). It is read with the header's last byte, and a frame that
        // ends before it returns early: verifiers reject the code LLVM makes of a one-byte
        // load, or of a failed load whose bytes a later comparison still uses.
        let Some([_, first]) = frame.load::<2>(payload - 1) else {
            return Skip::Bail(Bail::ShortHeader).into();
        };
        if TLS_CONTENT_TYPES.contains(&first) {
            // The version confirms it; a segment too short to hold it is judged by the type.
            // Loaded from the payload itself: a load from the header's last byte that the
            // compiler widens to the bytes before it reads at a negative packet offset.
            let tls = match frame.load::<3>(payload) {
                Some([_, major, minor]) => major == TLS_RECORD_START[1] && minor <= TLS_MAX_MINOR,
                None => true,
            };
            if tls {
                flows.mark_tls(&flow);
                return Skip::TlsRecord.into();
            }
        }
    }
    if !senders.allowed(location.ip_version, &src_addr) {
        return Skip::SourceNotAllowed.into();
    }
    tally(Counter::TcpSegments);
    ip_packet(location, flow.src_port, flow.dst_port, src_addr, dst_addr)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use etherparse::{PacketBuilder, VlanId};
    use sipnotify_testkit::frames;

    use super::*;
    use crate::{CounterSet, FLAG_VLAN};

    /// The datagrams followed and the TLS flows, as plain lists.
    #[derive(Default)]
    struct Followed(Vec<FragmentKey>, Vec<FlowKey>);

    impl Fragments for Followed {
        fn follow(&mut self, key: &FragmentKey) {
            self.0.push(*key);
        }
        fn followed(&mut self, key: &FragmentKey) -> bool {
            self.0.contains(key)
        }
    }

    impl TlsFlows for Followed {
        fn mark_tls(&mut self, key: &FlowKey) {
            self.1.push(*key);
        }
        fn is_tls(&mut self, key: &FlowKey) -> bool {
            self.1.contains(key)
        }
        fn forget_tls(&mut self, key: &FlowKey) {
            self.1.retain(|k| k != key);
        }
    }

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
        let mut followed = Followed::default();
        let decisions = frames
            .iter()
            .map(|frame| {
                counts.add(Counter::PacketsSeen);
                let decision = decide(
                    frame.as_slice(),
                    &config,
                    &AnySender,
                    &mut followed,
                    &mut |c| counts.add(c),
                );
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
        match decide(
            frame,
            &ports(),
            &AnySender,
            &mut Followed::default(),
            &mut |_| {},
        ) {
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
        // On TCP the content type and the version decide, whatever the record type: a
        // connection joined mid-stream starts with application data or an alert.
        for record in [[0x17, 3, 3], [0x15, 3, 1], [0x14, 3, 0], [0x16, 3, 4]] {
            assert_eq!(skip(tcp(5061, &record)), Skip::TlsRecord, "{record:?}");
        }
        for not_tls in [&[0x16, 0xfe, 0xfd, 0, 0][..], b"\x17abc", b"\x13\x03\x03"] {
            assert_ne!(
                captured(&tcp(5061, not_tls)).location.flags & FLAG_IP_PACKET,
                0,
                "{not_tls:?}"
            );
        }
        // Too short to hold a version: the type decides.
        assert_eq!(skip(tcp(5061, b"\x17")), Skip::TlsRecord);
        assert_eq!(skip(udp(5061, &[0x17, 0x03, 0x03, 0, 1])), Skip::TlsRecord);
        // TLS to a port nobody watches is nobody's business.
        assert_eq!(skip(tcp(443, CLIENT_HELLO)), Skip::PortNotWatched);
    }

    /// A TCP segment from `src_port` to 5061; `fin` closes the flow.
    fn tcp_flow(src_port: u16, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        let builder = PacketBuilder::ethernet2(MAC, MAC)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(src_port, 5061, 1, 1000);
        let builder = if fin { builder.fin() } else { builder };
        builder.write(&mut frame, payload).unwrap();
        frame
    }

    #[test]
    fn a_flow_seen_carrying_tls_is_not_copied_again_until_it_closes() {
        let frames = vec![
            tcp_flow(40000, false, CLIENT_HELLO),
            // Encrypted bytes that start anywhere in a record: not looked at.
            tcp_flow(40000, false, b"NOTIFY sip:looks@like SIP/2.0\r\n"),
            tcp_flow(40000, false, &[0x42; 100]),
            // Another connection is judged on its own.
            tcp_flow(40001, false, b"OPTIONS sip:a SIP/2.0\r\n\r\n"),
            tcp_flow(40000, true, b""),
            // The ports reused after the close: SIP again.
            tcp_flow(40000, false, b"OPTIONS sip:a SIP/2.0\r\n\r\n"),
        ];
        let (decisions, counts) = run(&frames);
        let skips: Vec<Option<Skip>> = decisions
            .iter()
            .map(|d| match d {
                Decision::Skip(skip) => Some(*skip),
                Decision::Capture(_) => None,
            })
            .collect();
        assert_eq!(
            skips,
            [
                Some(Skip::TlsRecord),
                Some(Skip::TlsFlow),
                Some(Skip::TlsFlow),
                None,
                Some(Skip::TlsFlow),
                None
            ]
        );
        assert_eq!(counts.get(Counter::TlsFlow), 3);
        assert_eq!(counts.outcomes(), frames.len() as u64);
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
            tcp(5061, b""),
            tcp(5061, b"OPTIONS"),
            tcp(5061, b"O"),
            // Last of its flow: the flow is not copied after it.
            tcp(5061, CLIENT_HELLO),
            arp,
            later,
            cut,
        ];
        let (_, counts) = run(&frames);
        assert_eq!(counts.get(Counter::PacketsSeen), frames.len() as u64);
        assert_eq!(counts.outcomes(), frames.len() as u64);
        let expect = [
            (Counter::Copied, 5),
            (Counter::PortNotWatched, 1),
            (Counter::NotNotify, 1),
            (Counter::EmptyPayload, 2),
            (Counter::TlsRecord, 2),
            (Counter::DtlsRecord, 1),
            (Counter::TcpSegments, 2),
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

    fn tcp_flags(payload: &[u8], syn: bool, fin: bool, rst: bool) -> Vec<u8> {
        let mut frame = Vec::new();
        let mut builder = PacketBuilder::ethernet2(MAC, MAC)
            .ipv6([1; 16], [2; 16], 64)
            .tcp(40000, 5061, 7, 1000);
        if syn {
            builder = builder.syn();
        }
        if fin {
            builder = builder.fin();
        }
        if rst {
            builder = builder.rst();
        }
        builder.write(&mut frame, payload).unwrap();
        frame
    }

    #[test]
    fn tcp_segments_are_copied_whole_from_the_ip_header() {
        let frame = tcp(5061, b"INVITE sip:a@b SIP/2.0\r\n");
        let capture = captured(&frame);
        assert_eq!(capture.payload_offset(), 14, "from the IP header");
        assert_eq!(usize::from(capture.payload_len), frame.len() - 14);
        assert_eq!((capture.src_port, capture.dst_port), (40000, 5061));
        let mut tallies = Vec::new();
        let header = capture.header(frame.len() - 14, 0, 0, &mut |c| tallies.push(c));
        assert_eq!(header.flags, FLAG_IP_PACKET);
        assert!(tallies.is_empty(), "{tallies:?}");
        // Opening and closing a flow is worth a copy; a bare ACK is not.
        for (syn, fin, rst) in [
            (true, false, false),
            (false, true, false),
            (false, false, true),
        ] {
            captured(&tcp_flags(b"", syn, fin, rst));
        }
        assert_eq!(
            skip(tcp_flags(b"", false, false, false)),
            Skip::EmptyPayload
        );
        // One byte, as a client writing in pieces may send, is data.
        captured(&tcp_flags(b"N", false, false, false));
    }

    /// The IPv4 fragments of a UDP datagram to 5061 (id 0x1234): the first `first` payload
    /// bytes in the first fragment, the rest in the second.
    fn fragments(payload: &[u8], first: usize) -> [Vec<u8>; 2] {
        let datagram = frames::udp(5060, 5061, payload);
        let pieces = frames::ipv4_fragments(0x1234, IPPROTO_UDP, &datagram, &[8 + first]);
        [frames::ethernet(&pieces[0]), frames::ethernet(&pieces[1])]
    }

    #[test]
    fn a_fragmented_notify_is_followed_to_its_last_fragment() {
        let mut notify = NOTIFY.to_vec();
        notify.resize(100, b'x');
        let [first, last] = fragments(&notify, 32);
        // The later fragment alone is nobody's: nothing followed it yet.
        assert_eq!(skip(last.clone()), Skip::LaterFragment);

        let mut followed = Followed::default();
        let mut tallies = Vec::new();
        let config = ports();
        let mut decide = |frame: &[u8]| {
            decide(frame, &config, &AnySender, &mut followed, &mut |c| {
                tallies.push(c)
            })
        };
        let Decision::Capture(head) = decide(&first) else {
            panic!("the first fragment is a NOTIFY")
        };
        assert_eq!((head.payload_offset(), head.src_port), (14, 5060));
        assert_ne!(head.location.flags & FLAG_IP_PACKET, 0);
        assert_eq!(usize::from(head.payload_len), first.len() - 14);
        let Decision::Capture(tail) = decide(&last) else {
            panic!("the later fragment is followed")
        };
        assert_eq!(
            (tail.payload_offset(), tail.src_port, tail.dst_port),
            (14, 0, 0)
        );
        assert_eq!(usize::from(tail.payload_len), last.len() - 14);
        assert!(tallies.contains(&Counter::FirstFragments));
        assert!(tallies.contains(&Counter::FragmentsFollowed));

        // A fragmented datagram that is no NOTIFY is not followed.
        let mut invite = b"INVITE sip:a@b SIP/2.0\r\n".to_vec();
        invite.resize(100, b'x');
        let [first, last] = fragments(&invite, 32);
        let mut followed = Followed::default();
        assert_eq!(
            decide_with(&first, &mut followed),
            Decision::Skip(Skip::NotNotify)
        );
        assert_eq!(
            decide_with(&last, &mut followed),
            Decision::Skip(Skip::LaterFragment)
        );
    }

    fn decide_with(frame: &[u8], followed: &mut Followed) -> Decision {
        decide(frame, &ports(), &AnySender, followed, &mut |_| {})
    }

    /// Allows one IPv4 address and counts how often it is asked.
    struct OnlyFrom([u8; 4], core::cell::Cell<u32>);

    impl Senders for OnlyFrom {
        fn allowed(&self, ip_version: u8, addr: &[u8; 16]) -> bool {
            self.1.set(self.1.get() + 1);
            ip_version == 4 && addr[..4] == self.0
        }
    }

    #[test]
    fn only_what_would_be_copied_asks_who_sent_it() {
        // The frames above all come from 10.0.0.1.
        let stranger = OnlyFrom([10, 0, 0, 9], core::cell::Cell::new(0));
        let friend = OnlyFrom([10, 0, 0, 1], core::cell::Cell::new(0));
        let config = ports();
        let decide_from = |senders: &OnlyFrom, frame: &[u8], followed: &mut Followed| {
            decide(frame, &config, senders, followed, &mut |_| {})
        };
        let followed = &mut Followed::default();
        // Traffic that is not copied anyway pays nothing.
        for frame in [
            udp(5060, NOTIFY),
            udp(5061, b"INVITE sip:a@b SIP/2.0\r\n"),
            udp(5061, CLIENT_HELLO),
            tcp(5061, b""),
            tcp(443, b"GET / HTTP/1.1"),
        ] {
            assert!(matches!(
                decide_from(&stranger, &frame, followed),
                Decision::Skip(_)
            ));
        }
        assert_eq!(stranger.1.get(), 0, "no lookup before the NOTIFY match");
        // A NOTIFY and a TCP segment from a stranger are refused, after one lookup each.
        assert_eq!(
            decide_from(&stranger, &udp(5061, NOTIFY), followed),
            Decision::Skip(Skip::SourceNotAllowed)
        );
        assert_eq!(
            decide_from(&stranger, &tcp(5061, NOTIFY), followed),
            Decision::Skip(Skip::SourceNotAllowed)
        );
        assert_eq!(stranger.1.get(), 2);
        assert!(matches!(
            decide_from(&friend, &udp(5061, NOTIFY), followed),
            Decision::Capture(_)
        ));
        assert!(matches!(
            decide_from(&friend, &tcp(5061, NOTIFY), followed),
            Decision::Capture(_)
        ));
        // A fragmented NOTIFY from a stranger: its first fragment is refused, so the later
        // one is not followed either.
        let mut long = NOTIFY.to_vec();
        long.resize(100, b'x');
        let [first, last] = fragments(&long, 32);
        let followed = &mut Followed::default();
        assert_eq!(
            decide_from(&stranger, &first, followed),
            Decision::Skip(Skip::SourceNotAllowed)
        );
        assert_eq!(
            decide_from(&stranger, &last, followed),
            Decision::Skip(Skip::LaterFragment)
        );
        assert_eq!(Skip::SourceNotAllowed.counter(), Counter::SourceNotAllowed);
    }
}
