//! IPv4 and IPv6 fragment reassembly, for NOTIFYs larger than the path MTU.
//!
//! Fragments are keyed by (source, destination, protocol, identification) and kept as sorted,
//! non-overlapping pieces until the datagram is whole. Following RFC 5722, a fragment that
//! overlaps another drops the whole datagram, and the datagram's later fragments are discarded
//! until its timeout; an exact duplicate (same place, same bytes) is tolerated. Memory is
//! bounded per datagram (size and fragment count) and in total (the oldest datagram is evicted),
//! and a datagram still incomplete after the timeout is counted and dropped.
//!
//! Hand-written rather than etherparse's `defrag`: that pool merges overlaps instead of dropping
//! the datagram and has no memory bound, and its IPv6 slicer reads past a fragment header into
//! fragment data.

use std::{
    collections::{BTreeMap, HashMap},
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use sipnotify_common::net::{
    self, Bail, IPPROTO_TCP, IPPROTO_UDP, MAX_IPV6_EXT_HEADERS, Transport, Walk,
};

use super::tcp::Count;

/// Bounds and timeout of the fragment reassembler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentSettings {
    /// How long the fragments of a datagram wait for the rest, from its first fragment
    /// (Linux's `ipfrag_time` is 30 s).
    pub timeout: Duration,
    /// The largest datagram reassembled (IP payload bytes).
    pub max_datagram_bytes: usize,
    /// The most fragments one datagram may have.
    pub max_fragments: usize,
    /// The most datagrams pending at once; beyond it the oldest go.
    pub max_datagrams: usize,
    /// The most memory all pending datagrams may hold together, their table included; beyond
    /// it the oldest go.
    pub max_total_bytes: usize,
}

impl Default for FragmentSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_datagram_bytes: 65_535,
            max_fragments: 64,
            max_datagrams: 4096,
            max_total_bytes: 8 << 20,
        }
    }
}

/// What identifies the fragments of one datagram (RFC 791, RFC 8200 §4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DatagramKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// The upper-layer protocol (IPv4 protocol, or the IPv6 fragment header's next header).
    pub protocol: u8,
    /// The identification field (16 bits in IPv4, 32 in IPv6).
    pub id: u32,
}

/// One fragment of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment<'a> {
    /// The datagram it belongs to.
    pub key: DatagramKey,
    /// Offset of `data` in the datagram's payload, in bytes.
    pub offset: usize,
    /// More fragments follow (MF).
    pub more: bool,
    /// The fragment's bytes.
    pub data: &'a [u8],
}

/// An IP packet, split into what reassembly needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpPacket<'a> {
    /// An unfragmented datagram.
    Whole {
        /// Source address.
        src: IpAddr,
        /// Destination address.
        dst: IpAddr,
        /// Upper-layer protocol.
        protocol: u8,
        /// The upper-layer bytes (UDP or TCP header and payload).
        payload: &'a [u8],
    },
    /// One fragment of a datagram.
    Fragment(Fragment<'a>),
}

/// Why an IP packet cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The bytes end inside an IP header.
    #[error("ip packet of {0} bytes ends inside its header")]
    ShortHeader(usize),
    /// Neither IPv4 nor IPv6, or an IPv4 header length below 20 bytes.
    #[error("ip header is malformed (version nibble {0})")]
    BadHeader(u8),
    /// The header claims more bytes than were captured, so the packet cannot be put together.
    #[error("ip packet claims {claimed} bytes but {captured} were captured")]
    Truncated {
        /// Length according to the header.
        claimed: usize,
        /// Bytes present.
        captured: usize,
    },
    /// More IPv6 extension headers than are followed.
    #[error("more than {MAX_IPV6_EXT_HEADERS} ipv6 extension headers")]
    ExtHeaderLimit,
    /// Carrying neither UDP nor TCP: nothing a NOTIFY travels in (not counted as a loss).
    #[error("ip packet carries neither udp nor tcp")]
    NotUdpOrTcp,
}

impl PacketError {
    /// Metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::ShortHeader(_) => "ip_short_header",
            Self::BadHeader(_) => "ip_bad_header",
            Self::Truncated { .. } => "ip_truncated",
            Self::ExtHeaderLimit => "ip_ext_header_limit",
            Self::NotUdpOrTcp => "ip_not_udp_or_tcp",
        }
    }
}

/// Reads an IPv4 or IPv6 packet (`l3` starts at the IP header) with the program's own walk
/// (`sipnotify_common::net::walk_ip`): the same extension headers followed, the same limits.
/// Only UDP and TCP are read (what else would the stage put together); an IPv6 packet with an
/// authentication header is not, as the program does not copy one.
pub fn parse_ip(l3: &[u8]) -> Result<IpPacket<'_>, PacketError> {
    let version = match l3.first() {
        Some(byte) => byte >> 4,
        None => return Err(PacketError::ShortHeader(0)),
    };
    if version != 4 && version != 6 {
        return Err(PacketError::BadHeader(version));
    }
    let ip = match net::walk_ip(l3, 0) {
        Ok(ip) => ip,
        Err(Walk::Bail(Bail::ShortHeader)) => return Err(PacketError::ShortHeader(l3.len())),
        Err(Walk::Bail(Bail::BadIpHeader)) => return Err(PacketError::BadHeader(version)),
        Err(Walk::Bail(Bail::ExtHeaderLimit)) => return Err(PacketError::ExtHeaderLimit),
        Err(_) => return Err(PacketError::NotUdpOrTcp),
    };
    let start = ip.fragment.map_or(ip.l4_offset, |f| f.data_offset);
    if ip.ip_end < start {
        // IPv4 total length below the header length; IPv6 headers past the payload length.
        return Err(match version {
            4 => PacketError::BadHeader(4),
            _ => PacketError::ShortHeader(ip.ip_end),
        });
    }
    let packet = l3.get(..ip.ip_end).ok_or(PacketError::Truncated {
        claimed: ip.ip_end,
        captured: l3.len(),
    })?;
    let (src, dst) = if version == 4 {
        let v4 = |at: usize| IpAddr::V4(Ipv4Addr::new(l3[at], l3[at + 1], l3[at + 2], l3[at + 3]));
        (v4(12), v4(16))
    } else {
        let v6 = |at: usize| {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&l3[at..at + 16]);
            IpAddr::V6(Ipv6Addr::from(octets))
        };
        (v6(8), v6(24))
    };
    let protocol = match ip.transport {
        Transport::Udp => IPPROTO_UDP,
        Transport::Tcp => IPPROTO_TCP,
    };
    Ok(match ip.fragment {
        Some(fragment) => IpPacket::Fragment(Fragment {
            key: DatagramKey {
                src,
                dst,
                protocol,
                id: fragment.id,
            },
            offset: fragment.offset,
            more: fragment.more,
            data: &packet[start..],
        }),
        None => IpPacket::Whole {
            src,
            dst,
            protocol,
            payload: &packet[start..],
        },
    })
}

/// What the fragment reassembler did, by outcome. Every datagram it gives up is counted once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FragmentStats {
    /// Fragments received.
    pub fragments: u64,
    /// Datagrams put back together.
    pub reassembled: u64,
    /// Exact duplicates of a fragment already held (ignored).
    pub duplicates: u64,
    /// Datagrams dropped because two fragments overlapped (RFC 5722).
    pub overlapping: u64,
    /// Fragments of a datagram already dropped, discarded until its timeout.
    pub after_drop: u64,
    /// Datagrams still incomplete when their timeout passed.
    pub incomplete: u64,
    /// Incomplete datagrams evicted to keep the total memory bound.
    pub evicted: u64,
    /// Datagrams dropped for exceeding the size bound.
    pub too_large: u64,
    /// Datagrams dropped for having more fragments than allowed.
    pub too_many_fragments: u64,
    /// Datagrams dropped for inconsistent fragments: a non-last fragment whose length is not a
    /// multiple of 8, an empty one, or two different ends.
    pub inconsistent: u64,
}

impl FragmentStats {
    /// The datagrams given up, by reason (metric labels).
    pub fn losses(&self) -> [Count; 6] {
        [
            ("fragment_overlap", self.overlapping),
            ("fragment_incomplete", self.incomplete),
            ("fragment_evicted", self.evicted),
            ("fragment_too_large", self.too_large),
            ("fragment_too_many", self.too_many_fragments),
            ("fragment_inconsistent", self.inconsistent),
        ]
    }
}

/// A datagram put back together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Addresses, protocol and identification.
    pub key: DatagramKey,
    /// The upper-layer bytes (UDP or TCP header and payload).
    pub payload: Vec<u8>,
}

/// Bookkeeping charged per pending datagram on top of its fragments, so that many tiny
/// fragments cannot slip past the bound: its boxed state and its age-order entry, twice
/// (B-tree nodes are partly filled). The hash table is charged separately, as allocated.
/// `tests/reassembly_memory.rs` checks the bound on the real heap.
const DATAGRAM_OVERHEAD: usize = size_of::<Pending>() + 2 * size_of::<(u64, DatagramKey)>() + 16;
/// One hash table slot: the entry and its control byte.
const TABLE_SLOT: usize = size_of::<(DatagramKey, Box<Pending>)>() + 1;
const PIECE_OVERHEAD: usize = size_of::<(usize, Vec<u8>)>();

struct Pending {
    /// Position in the age order.
    order: u64,
    started: Duration,
    /// `None` once the datagram was dropped: later fragments are discarded until the timeout.
    collecting: Option<Collecting>,
    /// Memory charged to this datagram.
    held: usize,
}

#[derive(Default)]
struct Collecting {
    /// Sorted by offset, never overlapping.
    pieces: Vec<(usize, Vec<u8>)>,
    /// The datagram's length, once the last fragment arrived.
    end: Option<usize>,
    /// Bytes held (no overlaps, so the datagram is whole when this reaches `end`).
    covered: usize,
}

/// Why a datagram is given up.
#[derive(Clone, Copy)]
enum Drop {
    Overlap,
    TooLarge,
    TooMany,
    Inconsistent,
}

/// Puts fragmented IP datagrams back together.
pub struct FragmentReassembler {
    settings: FragmentSettings,
    /// Sized once, so it never grows (see `tcp::table_for`).
    pending: HashMap<DatagramKey, Box<Pending>>,
    /// The most datagrams at once: `max_datagrams`, or fewer if the memory bound leaves less.
    max_datagrams: usize,
    /// Bytes of the table.
    table: usize,
    /// Pending datagrams by age, oldest first.
    order: BTreeMap<u64, DatagramKey>,
    next_order: u64,
    memory: usize,
    stats: FragmentStats,
}

impl FragmentReassembler {
    /// An empty reassembler.
    pub fn new(settings: FragmentSettings) -> Self {
        let (pending, max_datagrams, table) = super::tcp::table_for(
            settings.max_datagrams,
            settings.max_total_bytes,
            DATAGRAM_OVERHEAD,
            TABLE_SLOT,
        );
        Self {
            settings,
            pending,
            max_datagrams,
            table,
            order: BTreeMap::new(),
            next_order: 0,
            memory: table,
            stats: FragmentStats::default(),
        }
    }

    /// Whether no datagram is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The outcomes so far.
    pub fn stats(&self) -> &FragmentStats {
        &self.stats
    }

    /// Memory held, the table included, as charged against `max_total_bytes`.
    pub fn memory(&self) -> usize {
        self.memory
    }

    /// Memory held with nothing pending (the table).
    pub fn empty_memory(&self) -> usize {
        self.table
    }

    /// Datagrams waiting for fragments (including dropped ones waiting out their timeout).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Adds a fragment received at `now`; returns the datagram when it is complete.
    pub fn push(&mut self, now: Duration, fragment: Fragment<'_>) -> Option<Datagram> {
        self.expire(now);
        let datagram = self.add(now, fragment);
        self.enforce_memory();
        datagram
    }

    fn add(&mut self, now: Duration, fragment: Fragment<'_>) -> Option<Datagram> {
        self.stats.fragments += 1;
        let key = fragment.key;
        if !self.pending.contains_key(&key) {
            if self.pending.len() >= self.max_datagrams {
                self.evict_oldest();
            }
            let order = self.next_order;
            self.next_order += 1;
            self.order.insert(order, key);
            self.pending.insert(
                key,
                Box::new(Pending {
                    order,
                    started: now,
                    collecting: Some(Collecting::default()),
                    held: DATAGRAM_OVERHEAD,
                }),
            );
            self.memory += DATAGRAM_OVERHEAD;
        }
        let settings = self.settings;
        let pending = self.pending.get_mut(&key)?;
        let Some(collecting) = pending.collecting.as_mut() else {
            self.stats.after_drop += 1;
            return None;
        };
        match collecting.add(&settings, &fragment) {
            Ok(()) => {}
            Err(Drop::Overlap) if collecting.is_duplicate(&fragment) => {
                self.stats.duplicates += 1;
                return None;
            }
            Err(reason) => {
                self.drop_datagram(&key, reason);
                return None;
            }
        };
        let cost = DATAGRAM_OVERHEAD + collecting.cost();
        self.memory = self.memory - pending.held + cost;
        pending.held = cost;
        if collecting.end == Some(collecting.covered) {
            let payload = collecting.take();
            self.remove(&key);
            self.stats.reassembled += 1;
            return Some(Datagram { key, payload });
        }
        None
    }

    /// Drops the datagrams whose timeout has passed, counting the incomplete ones.
    pub fn expire(&mut self, now: Duration) {
        while let Some((_, key)) = self.order.first_key_value() {
            let key = *key;
            let Some(pending) = self.pending.get(&key) else {
                self.order.pop_first();
                continue;
            };
            if now.saturating_sub(pending.started) < self.settings.timeout {
                break;
            }
            if pending.collecting.is_some() {
                self.stats.incomplete += 1;
            }
            self.remove(&key);
        }
    }

    /// Evicts the oldest datagrams until the memory bound holds again.
    fn enforce_memory(&mut self) {
        while self.memory > self.settings.max_total_bytes && self.evict_oldest() {}
    }

    /// Evicts the oldest datagram (counted when it was still collecting); false when there is
    /// none.
    fn evict_oldest(&mut self) -> bool {
        let Some((_, key)) = self.order.first_key_value() else {
            return false;
        };
        let key = *key;
        if self
            .pending
            .get(&key)
            .is_some_and(|p| p.collecting.is_some())
        {
            self.stats.evicted += 1;
        }
        self.remove(&key);
        true
    }

    /// Gives up a datagram: its memory is released, and its key stays until the timeout so
    /// that its remaining fragments are discarded too.
    fn drop_datagram(&mut self, key: &DatagramKey, reason: Drop) {
        let counter = match reason {
            Drop::Overlap => &mut self.stats.overlapping,
            Drop::TooLarge => &mut self.stats.too_large,
            Drop::TooMany => &mut self.stats.too_many_fragments,
            Drop::Inconsistent => &mut self.stats.inconsistent,
        };
        *counter += 1;
        if let Some(pending) = self.pending.get_mut(key) {
            pending.collecting = None;
            self.memory -= pending.held - DATAGRAM_OVERHEAD;
            pending.held = DATAGRAM_OVERHEAD;
        }
    }

    fn remove(&mut self, key: &DatagramKey) {
        if let Some(pending) = self.pending.remove(key) {
            self.order.remove(&pending.order);
            self.memory -= pending.held;
        }
    }
}

impl Collecting {
    /// Adds a fragment, or says why the datagram must go.
    fn add(&mut self, settings: &FragmentSettings, fragment: &Fragment<'_>) -> Result<(), Drop> {
        let start = fragment.offset;
        let len = fragment.data.len();
        let end = start.checked_add(len).ok_or(Drop::TooLarge)?;
        if end > settings.max_datagram_bytes {
            return Err(Drop::TooLarge);
        }
        if fragment.more && (len == 0 || !len.is_multiple_of(8)) {
            return Err(Drop::Inconsistent);
        }
        match (self.end, fragment.more) {
            (Some(known), false) if known != end => return Err(Drop::Inconsistent),
            (Some(known), true) if end > known => return Err(Drop::Inconsistent),
            (None, false) if self.pieces.last().is_some_and(|(s, d)| s + d.len() > end) => {
                return Err(Drop::Inconsistent);
            }
            _ => {}
        }
        // The first piece starting at or after `start`; the one before must end by `start`,
        // and this one must start at or after `end`.
        let at = self.pieces.partition_point(|(s, _)| *s < start);
        let overlaps_before = at
            .checked_sub(1)
            .and_then(|i| self.pieces.get(i))
            .is_some_and(|(s, d)| s + d.len() > start);
        let overlaps_after = self.pieces.get(at).is_some_and(|(s, _)| *s < end);
        if overlaps_before || overlaps_after {
            return Err(Drop::Overlap);
        }
        if self.pieces.len() >= settings.max_fragments {
            return Err(Drop::TooMany);
        }
        if !fragment.more {
            self.end = Some(end);
        }
        self.pieces.insert(at, (start, fragment.data.to_vec()));
        self.covered += len;
        Ok(())
    }

    /// Heap bytes held.
    fn cost(&self) -> usize {
        self.pieces.capacity() * PIECE_OVERHEAD
            + self.pieces.iter().map(|(_, d)| d.capacity()).sum::<usize>()
    }

    /// Whether the fragment repeats one already held, byte for byte.
    fn is_duplicate(&self, fragment: &Fragment<'_>) -> bool {
        self.pieces
            .binary_search_by_key(&fragment.offset, |(s, _)| *s)
            .is_ok_and(|i| self.pieces[i].1 == fragment.data)
            && (fragment.more || self.end == Some(fragment.offset + fragment.data.len()))
    }

    /// The whole datagram (call when `covered == end`).
    fn take(&mut self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(self.covered);
        for (_, piece) in self.pieces.drain(..) {
            payload.extend_from_slice(&piece);
        }
        payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipnotify_testkit::frames::{ipv4_fragments, ipv6_fragments, udp};

    const UDP: u8 = 17;
    const T0: Duration = Duration::from_secs(1);

    fn notify(len: usize) -> Vec<u8> {
        let mut payload = b"NOTIFY sip:1002@192.0.2.2:5061 SIP/2.0\r\n".to_vec();
        while payload.len() < len {
            payload.push(b'a' + (payload.len() % 26) as u8);
        }
        udp(5060, 5061, &payload)
    }

    fn fragment(packet: &[u8]) -> Fragment<'_> {
        match parse_ip(packet) {
            Ok(IpPacket::Fragment(fragment)) => fragment,
            other => panic!("not a fragment: {other:?}"),
        }
    }

    /// Pushes the packets in order; returns the datagrams that came out.
    fn feed(r: &mut FragmentReassembler, packets: &[Vec<u8>]) -> Vec<Datagram> {
        packets
            .iter()
            .filter_map(|p| r.push(T0, fragment(p)))
            .collect()
    }

    #[test]
    fn every_split_point_and_both_orders_give_the_datagram_once() {
        let datagram = notify(1400);
        for cut in (8..datagram.len()).step_by(8) {
            for v6 in [false, true] {
                let mut packets = if v6 {
                    ipv6_fragments(7, UDP, &datagram, &[cut])
                } else {
                    ipv4_fragments(7, UDP, &datagram, &[cut])
                };
                for reverse in [false, true] {
                    if reverse {
                        packets.reverse();
                    }
                    let mut r = FragmentReassembler::new(FragmentSettings::default());
                    let out = feed(&mut r, &packets);
                    assert_eq!(out.len(), 1, "cut {cut} v6 {v6} reverse {reverse}");
                    assert_eq!(out[0].payload, datagram);
                    assert_eq!(out[0].key.protocol, UDP);
                    assert_eq!((r.pending(), r.memory()), (0, r.empty_memory()));
                }
            }
        }
    }

    #[test]
    fn three_pieces_in_every_order() {
        let datagram = notify(600);
        let packets = ipv4_fragments(9, UDP, &datagram, &[200, 400]);
        for order in [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ] {
            let ordered: Vec<_> = order.iter().map(|&i| packets[i].clone()).collect();
            let mut r = FragmentReassembler::new(FragmentSettings::default());
            let out = feed(&mut r, &ordered);
            assert_eq!(out.len(), 1, "{order:?}");
            assert_eq!(out[0].payload, datagram);
        }
    }

    #[test]
    fn duplicates_are_tolerated_and_the_datagram_comes_out_once() {
        let datagram = notify(1000);
        let p = ipv6_fragments(1, UDP, &datagram, &[504]);
        let mut r = FragmentReassembler::new(FragmentSettings::default());
        let out = feed(
            &mut r,
            &[p[0].clone(), p[0].clone(), p[1].clone(), p[1].clone()],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(r.stats().duplicates, 1);
        // The repeat of the last fragment after completion starts a new datagram that never
        // completes: counted when it expires.
        assert_eq!(r.pending(), 1);
        r.expire(T0 + Duration::from_secs(30));
        assert_eq!(
            (r.stats().incomplete, r.pending(), r.memory()),
            (1, 0, r.empty_memory())
        );
    }

    #[test]
    fn overlap_drops_the_datagram_and_its_later_fragments() {
        let datagram = notify(1000);
        let a = ipv4_fragments(3, UDP, &datagram, &[504]);
        let b = ipv4_fragments(3, UDP, &datagram, &[496]);
        let mut r = FragmentReassembler::new(FragmentSettings::default());
        // 0..504 then 496..: overlapping by 8 bytes, even with identical contents.
        assert!(feed(&mut r, &[a[0].clone(), b[1].clone(), a[1].clone()]).is_empty());
        let stats = r.stats();
        assert_eq!((stats.overlapping, stats.after_drop), (1, 1));
        assert_eq!(r.memory(), r.empty_memory() + DATAGRAM_OVERHEAD);
        // Same offset, different bytes: an overlap too, not a duplicate.
        let mut forged = a[0].clone();
        *forged.last_mut().unwrap() ^= 1;
        let mut r = FragmentReassembler::new(FragmentSettings::default());
        assert!(feed(&mut r, &[a[0].clone(), forged, a[1].clone()]).is_empty());
        assert_eq!(r.stats().overlapping, 1);
    }

    #[test]
    fn a_missing_fragment_is_counted_incomplete_on_expiry() {
        let datagram = notify(1400);
        let p = ipv4_fragments(5, UDP, &datagram, &[400, 800]);
        let mut r = FragmentReassembler::new(FragmentSettings::default());
        assert!(feed(&mut r, &[p[0].clone(), p[2].clone()]).is_empty());
        assert!(r.memory() > 1000);
        r.expire(T0 + Duration::from_secs(29));
        assert_eq!(r.pending(), 1);
        r.expire(T0 + Duration::from_secs(30));
        assert_eq!(
            (r.stats().incomplete, r.pending(), r.memory()),
            (1, 0, r.empty_memory())
        );
        // The missing piece alone, later, is a new datagram, not a late completion.
        assert!(
            r.push(T0 + Duration::from_secs(31), fragment(&p[1]))
                .is_none()
        );
    }

    #[test]
    fn inconsistent_and_oversized_datagrams_are_counted() {
        let datagram = notify(1000);
        let mut r = FragmentReassembler::new(FragmentSettings::default());
        // A non-last fragment of 500 bytes (not a multiple of 8).
        let mut odd = ipv4_fragments(1, UDP, &datagram, &[504]).remove(0);
        odd.truncate(20 + 500);
        odd[2..4].copy_from_slice(&520u16.to_be_bytes());
        assert!(r.push(T0, fragment(&odd)).is_none());
        // Two different ends.
        let p = ipv4_fragments(2, UDP, &datagram, &[504]);
        let q = ipv4_fragments(2, UDP, &datagram[..800], &[504]);
        assert!(feed(&mut r, &[p[1].clone(), q[1].clone()]).is_empty());
        assert_eq!(r.stats().inconsistent, 2);
        let small = FragmentSettings {
            max_datagram_bytes: 512,
            max_fragments: 2,
            ..FragmentSettings::default()
        };
        let mut r = FragmentReassembler::new(small);
        assert!(feed(&mut r, &ipv4_fragments(3, UDP, &datagram, &[504])).is_empty());
        assert!(
            feed(
                &mut r,
                &ipv4_fragments(4, UDP, &datagram[..500], &[8, 16, 24])
            )
            .is_empty()
        );
        assert_eq!((r.stats().too_large, r.stats().too_many_fragments), (1, 1));
    }

    #[test]
    fn total_memory_is_bounded_by_evicting_the_oldest() {
        let settings = FragmentSettings {
            max_total_bytes: 64 << 10,
            ..FragmentSettings::default()
        };
        let mut r = FragmentReassembler::new(settings);
        let datagram = notify(1400);
        for id in 0..10_000u16 {
            let first = ipv4_fragments(id, UDP, &datagram, &[1000]).remove(0);
            assert!(r.push(T0, fragment(&first)).is_none());
            assert!(r.memory() <= settings.max_total_bytes, "{}", r.memory());
        }
        let stats = r.stats();
        assert!(stats.evicted > 9_900, "{stats:?}");
        assert_eq!(stats.evicted + r.pending() as u64, 10_000);
        // The newest datagram still completes.
        let last = ipv4_fragments(9_999, UDP, &datagram, &[1000]).remove(1);
        assert_eq!(
            r.push(T0, fragment(&last)).map(|d| d.payload),
            Some(datagram)
        );
    }

    #[test]
    fn parse_reads_whole_packets_atomic_fragments_and_extension_headers() {
        let datagram = udp(1, 5061, b"NOTIFY x");
        let whole = ipv4_fragments(0, UDP, &datagram, &[]).remove(0);
        assert!(matches!(
            parse_ip(&whole),
            Ok(IpPacket::Whole { protocol: 17, payload, .. }) if payload == datagram.as_slice()
        ));
        // An IPv6 atomic fragment (offset 0, no more fragments) is a whole datagram.
        let atomic = ipv6_fragments(0, UDP, &datagram, &[]).remove(0);
        assert!(matches!(
            parse_ip(&atomic),
            Ok(IpPacket::Whole { protocol: 17, payload, .. }) if payload == datagram.as_slice()
        ));
        // A destination-options header in front of the fragment header is skipped.
        let mut with_ext = ipv6_fragments(0x0102_0304, UDP, &notify(100), &[48]).remove(0);
        let options = [44u8, 0, 1, 4, 0, 0, 0, 0];
        with_ext.splice(40..40, options);
        with_ext[6] = 60;
        let len = u16::from_be_bytes([with_ext[4], with_ext[5]]) + 8;
        with_ext[4..6].copy_from_slice(&len.to_be_bytes());
        let f = fragment(&with_ext);
        assert_eq!(
            (f.key.id, f.offset, f.more, f.data.len()),
            (0x0102_0304, 0, true, 48)
        );
    }

    #[test]
    fn parse_refuses_short_truncated_and_odd_packets() {
        assert_eq!(parse_ip(&[]), Err(PacketError::ShortHeader(0)));
        assert_eq!(parse_ip(&[0x45; 10]), Err(PacketError::ShortHeader(10)));
        assert_eq!(parse_ip(&[0x15; 40]), Err(PacketError::BadHeader(1)));
        let mut packet = ipv4_fragments(0, UDP, &notify(100), &[]).remove(0);
        packet.truncate(60);
        assert!(matches!(
            parse_ip(&packet),
            Err(PacketError::Truncated { .. })
        ));
        let mut loop_v6 = ipv6_fragments(0, UDP, &notify(200), &[]).remove(0);
        loop_v6[6] = 60;
        for at in (40..120).step_by(8) {
            loop_v6[at] = 60;
            loop_v6[at + 1] = 0;
        }
        assert_eq!(parse_ip(&loop_v6), Err(PacketError::ExtHeaderLimit));
    }
}
