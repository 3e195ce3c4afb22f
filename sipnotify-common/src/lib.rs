//! The contract between the XDP program and the agent.
//!
//! Everything that crosses the kernel/userspace boundary is defined here once: the ring-buffer
//! record header, the configuration the agent writes before attaching, the counter indices and
//! the map names. The header walk in [`net`] and the capture decision in [`decide`] are
//! shared too, so the XDP program, the AF_PACKET reader and the offline `replay` command
//! pick packets and count them in exactly the same way.
//!
//! Every type is `#[repr(C)]` with explicit padding and a compile-time size check, so a change
//! of layout fails the build on both sides instead of corrupting records at run time.
#![no_std]
#![deny(missing_docs)]

pub mod decide;
pub mod net;

use core::mem::{align_of, size_of};

/// Name of the `BPF_MAP_TYPE_RINGBUF` map carrying captured NOTIFYs.
pub const EVENTS_MAP: &str = "SIP_EVENTS";
/// Name of the read-only global holding [`SipConfig`], set when the object is loaded.
pub const CONFIG_GLOBAL: &str = "SIP_CONFIG";
/// Name of the per-CPU array of `u64` counters indexed by [`Counter`].
pub const STATS_MAP: &str = "SIP_STATS";
/// Name of the per-CPU scratch array the program assembles records in.
pub const SCRATCH_MAP: &str = "SIP_SCRATCH";
/// Name of the `BPF_MAP_TYPE_LRU_HASH` map of fragmented datagrams whose first fragment was
/// copied, keyed by [`FragmentKey`], valued by the first fragment's `bpf_ktime_get_ns()`.
pub const FRAGMENTS_MAP: &str = "SIP_FRAGMENTS";
/// Entries of [`FRAGMENTS_MAP`]: datagrams in flight at once. A fragmented NOTIFY completes
/// within a millisecond on a LAN, so even 100 000 NOTIFY/s keep fewer than 200 open; the
/// least recently used entry makes room for a new one.
pub const FRAGMENT_MAP_ENTRIES: u32 = 4096;
/// How long after its first fragment a datagram's later fragments are still copied: Linux's
/// own reassembly timeout (`ipfrag_time`). Older entries belong to an IP ID since reused.
pub const FRAGMENT_FOLLOW_NS: u64 = 30 * 1_000_000_000;
/// Name of the `BPF_MAP_TYPE_LRU_HASH` map of TCP flows to a watched port seen carrying TLS,
/// keyed by [`FlowKey`]: their later segments are not copied (encrypted bytes are no SIP).
pub const TLS_FLOWS_MAP: &str = "SIP_TLS_FLOWS";
/// Entries of [`TLS_FLOWS_MAP`]: TLS connections to the watched ports at once (a trunk keeps
/// a handful); the least recently used makes room for a new one, which is then copied again
/// only until its next record starts a segment.
pub const TLS_FLOW_MAP_ENTRIES: u32 = 4096;
/// Name of the `BPF_MAP_TYPE_LPM_TRIE` map of the networks NOTIFYs may come from
/// (`--sip-source`), keyed by prefix length and [`sender_key`] (`8 + n` bits for a network
/// `/n`), valued by a `u8` that is always 1. The program looks it up only when
/// [`SipConfig::senders_limited`] is set.
pub const SENDERS_MAP: &str = "SIP_SENDERS";
/// Most networks in [`SENDERS_MAP`]: a site's SIP Servers fit in a handful.
pub const MAX_SENDER_PREFIXES: u32 = 256;

/// Bytes of a [`sender_key`]: the IP version, then the address.
pub const SENDER_KEY_LEN: usize = 17;

/// The key an address is looked up by in [`SENDERS_MAP`] and in the agent's own table: the
/// IP version in the first byte, then the address (IPv4 in the next four bytes, the rest
/// zero). One trie with one key size holds both families, and neither family's networks
/// can match the other's addresses: a network `/n` is the prefix `/8+n`.
#[inline(always)]
pub fn sender_key(ip_version: u8, addr: &[u8; 16]) -> [u8; SENDER_KEY_LEN] {
    let mut key = [0u8; SENDER_KEY_LEN];
    key[0] = ip_version;
    if ip_version == 6 {
        let mut i = 0;
        while i < 16 {
            key[1 + i] = addr[i];
            i += 1;
        }
    } else {
        key[1] = addr[0];
        key[2] = addr[1];
        key[3] = addr[2];
        key[4] = addr[3];
    }
    key
}

/// Name of the XDP program in the object file: multi-buffer frames, payload copied with
/// `bpf_xdp_load_bytes` (Linux 5.18 and later, or kernels with that helper backported).
pub const PROGRAM_NAME: &str = "sipnotify_xdp";
/// Name of the same program for kernels without `bpf_xdp_load_bytes`: single-buffer frames,
/// payload copied from the linear area in chunks every verifier from 5.10 on accepts.
pub const LINEAR_PROGRAM_NAME: &str = "sipnotify_lin";

/// Largest UDP payload copied into a record. A jumbo frame (MTU 9000) carries at most 8972
/// bytes of UDP payload over IPv4; longer payloads are cut here and flagged [`FLAG_TRUNCATED`].
pub const MAX_PAYLOAD: usize = 9216;

/// Most ports the agent may watch at once (the contract in the CLI, not a limit of the bitmap).
pub const MAX_PORTS: usize = 16;

/// Default ring-buffer size: 8 MiB holds about 12 000 600-byte NOTIFYs, 12 ms at 1 M/s and
/// over 100 ms at 100 k/s, far more than the agent's 1 ms poll interval needs. The kernel maps
/// the data area twice into the reader, so the agent's RSS grows by twice this size.
pub const DEFAULT_RING_BYTES: u32 = 8 * 1024 * 1024;

/// The payload starts with this (RFC 3261 method names are case-sensitive).
pub const NOTIFY_PREFIX: &[u8; 7] = b"NOTIFY ";

/// The record carries fewer bytes than the UDP payload had.
pub const FLAG_TRUNCATED: u16 = 1 << 0;
/// The frame carried at least one 802.1Q/802.1ad tag.
pub const FLAG_VLAN: u16 = 1 << 1;
/// The frame is the first fragment of a fragmented IP datagram; the rest never reaches XDP as
/// one piece, so the payload is incomplete.
pub const FLAG_FIRST_FRAGMENT: u16 = 1 << 2;
/// The frame carried two VLAN tags (QinQ).
pub const FLAG_QINQ: u16 = 1 << 3;

/// The record's payload is the IP packet, from its IP header on, not a UDP payload: a TCP
/// segment to a watched port, or a fragment of a datagram to a watched port. User space puts
/// these back together (streams, datagrams) before parsing.
pub const FLAG_IP_PACKET: u16 = 1 << 4;

/// Identifies a fragmented datagram (RFC 791, RFC 8200): the key of [`FRAGMENTS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    /// Source address (IPv4 in the first four bytes).
    pub src_addr: [u8; 16],
    /// Destination address (IPv4 in the first four bytes).
    pub dst_addr: [u8; 16],
    /// IP identification: IPv4's 16 bits, or IPv6's 32 from the fragment header.
    pub id: u32,
    /// 4 or 6.
    pub ip_version: u8,
    /// `IPPROTO_UDP` or `IPPROTO_TCP`.
    pub protocol: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FragmentKey>() == 40);
const _: () = assert!(align_of::<FragmentKey>() == 4);

/// Identifies one direction of a TCP connection: the key of [`TLS_FLOWS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address (IPv4 in the first four bytes).
    pub src_addr: [u8; 16],
    /// Destination address (IPv4 in the first four bytes).
    pub dst_addr: [u8; 16],
    /// TCP source port.
    pub src_port: u16,
    /// TCP destination port.
    pub dst_port: u16,
    /// 4 or 6.
    pub ip_version: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(align_of::<FlowKey>() == 2);

/// Header of every ring-buffer record; the UDP payload bytes (or, with [`FLAG_IP_PACKET`],
/// the IP packet) follow it directly.
///
/// Addresses are stored as 16 bytes: an IPv4 address occupies the first four and the rest are
/// zero. Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()` at capture (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// Interface index the frame arrived on.
    pub ifindex: u32,
    /// UDP payload length according to the UDP header (what the sender sent); with
    /// [`FLAG_IP_PACKET`], the IP packet's length according to its IP header.
    pub payload_len: u32,
    /// Number of payload bytes following this header in the record.
    pub captured_len: u32,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// 4 or 6.
    pub ip_version: u8,
    /// Explicit padding; always zero.
    pub _pad0: u8,
    /// Source address (IPv4 in the first four bytes).
    pub src_addr: [u8; 16],
    /// Destination address (IPv4 in the first four bytes).
    pub dst_addr: [u8; 16],
    /// UDP or TCP source port (zero for a later fragment).
    pub src_port: u16,
    /// UDP or TCP destination port (zero for a later fragment).
    pub dst_port: u16,
    /// TCI of the outermost VLAN tag, zero when untagged.
    pub vlan_tci: u16,
    /// Explicit padding; always zero.
    pub _pad1: [u8; 2],
}

/// Size of [`EventHeader`] in bytes.
pub const EVENT_HEADER_LEN: usize = size_of::<EventHeader>();
const _: () = assert!(EVENT_HEADER_LEN == 64);
const _: () = assert!(align_of::<EventHeader>() == 8);

/// Payload room of the scratch record: the power of two above [`MAX_PAYLOAD`], so the program
/// can bound every copy length with a mask (`len & (SCRATCH_PAYLOAD - 1)`), the one form
/// that verifiers from 5.10 on all understand, instead of a range check a compiler may fold.
pub const SCRATCH_PAYLOAD: usize = 16 * 1024;
const _: () = assert!(SCRATCH_PAYLOAD.is_power_of_two() && SCRATCH_PAYLOAD > MAX_PAYLOAD);

/// The per-CPU buffer a record is assembled in before `bpf_ringbuf_output` copies exactly
/// `EVENT_HEADER_LEN + captured_len` bytes of it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventBuffer {
    /// The record header.
    pub header: EventHeader,
    /// Payload bytes; only the first `header.captured_len` (≤ [`MAX_PAYLOAD`]) are meaningful.
    pub payload: [u8; SCRATCH_PAYLOAD],
}
const _: () = assert!(size_of::<EventBuffer>() == EVENT_HEADER_LEN + SCRATCH_PAYLOAD);
// Per-CPU array values are limited to 32 KiB (PCPU_MIN_UNIT_SIZE).
const _: () = assert!(size_of::<EventBuffer>() <= 32 * 1024);

/// Configuration the agent writes into the [`CONFIG_GLOBAL`] global when it loads the program.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SipConfig {
    /// Bit `p` set means UDP destination port `p` is watched: one array lookup and a bit test,
    /// instead of a hash lookup per packet.
    pub port_bitmap: [u64; 1024],
    /// Non-zero when `--sip-source` is set: a NOTIFY (or a TCP segment to a watched port) is
    /// copied only if its source is in [`SENDERS_MAP`]. Zero skips the lookup altogether.
    pub senders_limited: u64,
}
const _: () = assert!(size_of::<SipConfig>() == 8192 + 8);

impl SipConfig {
    /// A configuration watching no port.
    pub const fn empty() -> Self {
        Self {
            port_bitmap: [0; 1024],
            senders_limited: 0,
        }
    }

    /// Adds `port` to the watched set.
    pub fn watch(&mut self, port: u16) {
        self.port_bitmap[usize::from(port >> 6)] |= 1 << (port & 63);
    }

    /// Whether `port` is watched.
    #[inline(always)]
    pub fn is_watched(&self, port: u16) -> bool {
        self.port_bitmap[usize::from(port >> 6)] & (1 << (port & 63)) != 0
    }
}

/// Declares [`Counter`] from one list, so the enum, its index order, [`Counter::ALL`], the
/// metric names and the kinds cannot drift apart: each line is `Variant, "name", Kind`.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident, $name:literal, $kind:ident;)*) => {
        /// Indices into [`STATS_MAP`]. Every packet adds one to exactly one
        /// [`CounterKind::Outcome`] counter, so [`Counter::PacketsSeen`] equals the sum of
        /// the outcomes: userspace sources count it as well, the XDP program leaves it to the
        /// agent to sum (one increment per packet is all an unwatched packet costs there).
        /// [`CounterKind::Tally`] counters annotate packets on their way (a NOTIFY is
        /// matched, then copied).
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Counter {
            /// Number of counters; the size of [`STATS_MAP`].
            pub const COUNT: u32 = [$(Counter::$variant,)*].len() as u32;

            /// All counters in index order.
            pub const ALL: [Counter; Self::COUNT as usize] = [$(Counter::$variant,)*];

            /// The metric-friendly name of the counter.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }

            /// Whether the counter is the total, an outcome or a tally.
            pub const fn kind(self) -> CounterKind {
                match self {
                    $(Counter::$variant => CounterKind::$kind,)*
                }
            }
        }
    };
}

/// What a [`Counter`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    /// Every packet seen.
    Total,
    /// One way a packet leaves the capture decision: each packet has exactly one.
    Outcome,
    /// A note on a packet's way (it also has an outcome).
    Tally,
}

counters! {
    /// Every frame the program saw.
    PacketsSeen, "packets_seen", Total;
    /// Outcome: not IP, or IP carrying neither UDP nor TCP.
    NotUdpOrTcp, "not_udp_or_tcp", Outcome;
    /// Outcome: later fragments of a datagram whose first fragment was not copied (none was
    /// seen, or it was no NOTIFY): they carry no transport header to judge them by.
    LaterFragments, "later_fragments", Outcome;
    /// Outcome: the header walk gave up because a header extends past the end of the frame.
    BailShortHeader, "bail_short_header", Outcome;
    /// Outcome: an IPv4 header with IHL < 5, a version mismatch, or a TCP data offset < 5.
    BailBadIpHeader, "bail_bad_ip_header", Outcome;
    /// Outcome: more IPv6 extension headers than the walk follows.
    BailExtHeaderLimit, "bail_ext_header_limit", Outcome;
    /// Outcome: UDP or TCP to a port that is not watched.
    PortNotWatched, "port_not_watched", Outcome;
    /// Outcome: UDP or TCP to a watched port without payload (a UDP length of 8, a bare ACK
    /// without SYN, FIN or RST).
    EmptyPayload, "empty_payload", Outcome;
    /// Outcome: to a watched port, the payload starts like a TLS record (content type
    /// 0x14–0x17, version 3.0–3.4): the SIP Server talks TLS, which cannot be read. A TCP
    /// flow seen so is remembered, and its later segments are `tls_flow`.
    TlsRecord, "tls_record", Outcome;
    /// Outcome: a TCP segment of a flow already seen carrying TLS (`tls_record`), not copied:
    /// encrypted bytes are no SIP, and would only make reassembly report gaps.
    TlsFlow, "tls_flow", Outcome;
    /// Outcome: UDP to a watched port whose payload starts like a DTLS record (`0x16 0xfe`).
    DtlsRecord, "dtls_record", Outcome;
    /// Outcome: UDP to a watched port whose payload is not a NOTIFY (after at most
    /// [`decide::MAX_LEADING_CRLF`] keep-alive CRLFs).
    NotNotify, "not_notify", Outcome;
    /// Outcome: a NOTIFY, or a TCP segment to a watched port, from a source outside
    /// `--sip-source`: refused, never copied.
    SourceNotAllowed, "source_not_allowed", Outcome;
    /// Outcome: the per-CPU scratch buffer could not be looked up.
    ScratchFailed, "scratch_failed", Outcome;
    /// Outcome: the payload could not be copied from the frame (`bpf_xdp_load_bytes` failed,
    /// or the linear area ended early).
    LoadFailed, "load_failed", Outcome;
    /// Outcome: records written to the ring buffer (or handed on, in userspace).
    Copied, "copied", Outcome;
    /// Outcome: records lost because the ring buffer was full.
    RingbufFull, "ringbuf_full", Outcome;
    /// Tally: UDP datagrams (or first fragments) addressed to a watched port.
    UdpWatched, "udp_watched", Tally;
    /// Tally: of those, payloads starting with `NOTIFY ` (after keep-alive CRLFs).
    NotifyMatched, "notify_matched", Tally;
    /// Tally: records whose payload was cut at [`MAX_PAYLOAD`] or by a short frame.
    Truncated, "truncated", Tally;
    /// Tally: first fragments of fragmented datagrams to a watched port (still inspected).
    FirstFragments, "first_fragments", Tally;
    /// Tally: TCP segments to a watched port copied for stream reassembly (with data, or with
    /// SYN, FIN or RST, which open and close a flow).
    TcpSegments, "tcp_segments", Tally;
    /// Tally: later fragments copied because their datagram's first fragment was.
    FragmentsFollowed, "fragments_followed", Tally;
}

/// Counter values in [`Counter`] index order: what userspace sources (the pcap replay, the
/// AF_PACKET reader) keep, and what the kernel's per-CPU counters sum to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterSet {
    /// One value per counter, indexed by `Counter as usize`.
    pub values: [u64; Counter::COUNT as usize],
}

impl Default for CounterSet {
    fn default() -> Self {
        Self {
            values: [0; Counter::COUNT as usize],
        }
    }
}

impl CounterSet {
    /// Adds one to `counter`.
    #[inline]
    pub fn add(&mut self, counter: Counter) {
        self.values[counter as usize] += 1;
    }

    /// The value of `counter`.
    #[inline]
    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize]
    }

    /// Sets `packets_seen` to the sum of the outcomes, for a source that counts only those:
    /// the XDP program, where that saves an increment on every packet.
    pub fn with_total_from_outcomes(mut self) -> Self {
        self.values[Counter::PacketsSeen as usize] = self.outcomes();
        self
    }

    /// The sum of every [`CounterKind::Outcome`] counter: equal to `packets_seen` when each
    /// packet was counted once.
    pub fn outcomes(&self) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| c.kind() == CounterKind::Outcome)
            .map(|&c| self.get(c))
            .sum()
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]`, every field is plain old data and the padding is explicit, so any
    // bit pattern is a valid value and no byte is uninitialised.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above: a `u64` and an array of `u64`.
    unsafe impl aya::Pod for super::SipConfig {}
    // SAFETY: `#[repr(C)]` byte arrays and integers with explicit padding.
    unsafe impl aya::Pod for super::FragmentKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_bitmap_sets_only_the_given_ports() {
        let mut config = SipConfig::empty();
        for port in [0, 63, 64, 5061, 65535] {
            config.watch(port);
        }
        for port in 0..=u16::MAX {
            let expected = matches!(port, 0 | 63 | 64 | 5061 | 65535);
            assert_eq!(config.is_watched(port), expected, "port {port}");
        }
    }

    #[test]
    fn counter_indices_match_all_and_names_are_unique() {
        for (i, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, i, "{}", counter.name());
            for other in &Counter::ALL[..i] {
                assert_ne!(other.name(), counter.name());
            }
        }
        assert_eq!(Counter::ALL[0].kind(), CounterKind::Total);
    }
}
