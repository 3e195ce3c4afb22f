//! Whole frames from the userspace sources (AF_PACKET, capture files) through the XDP
//! program's own capture decision (`sipnotify_common::decide`), counted as the program counts,
//! with [`FragmentFollower`] in the place of the program's `SIP_FRAGMENTS` and `SIP_TLS_FLOWS`
//! maps.

use std::collections::{HashMap, HashSet, VecDeque};

use sipnotify_common::{
    Counter, CounterSet, FLAG_IP_PACKET, FRAGMENT_FOLLOW_NS, FRAGMENT_MAP_ENTRIES, FlowKey,
    FragmentKey, SipConfig, TLS_FLOW_MAP_ENTRIES,
    decide::{self, Decision, Fragments, Skip, TlsFlows},
    net::Frame,
};

use crate::record::Record;
use crate::source_filter::SourceFilter;

/// The most bytes [`SplicedFrame`] puts in front of the captured ones: an Ethernet header with
/// one VLAN tag.
const MAX_HEAD: usize = 18;

/// A frame as the header walk expects it: a few synthesised bytes (an Ethernet header for a
/// capture without one, or one with the VLAN tag the NIC stripped put back) followed by the
/// captured bytes.
#[derive(Clone, Copy, Debug)]
pub struct SplicedFrame<'a> {
    head: [u8; MAX_HEAD],
    head_len: usize,
    body: &'a [u8],
}

impl<'a> SplicedFrame<'a> {
    /// The captured bytes as they are.
    pub fn whole(body: &'a [u8]) -> Self {
        Self {
            head: [0; MAX_HEAD],
            head_len: 0,
            body,
        }
    }

    /// `head` (at most 18 bytes; longer is cut) in front of `body`.
    pub fn spliced(head: &[u8], body: &'a [u8]) -> Self {
        let head_len = head.len().min(MAX_HEAD);
        let mut frame = Self {
            head: [0; MAX_HEAD],
            head_len,
            body,
        };
        frame.head[..head_len].copy_from_slice(&head[..head_len]);
        frame
    }

    /// The bytes from `offset` (in frame coordinates) to the end of the frame.
    pub fn tail(&self, offset: usize) -> &'a [u8] {
        offset
            .checked_sub(self.head_len)
            .and_then(|at| self.body.get(at..))
            .unwrap_or_default()
    }
}

impl Frame for SplicedFrame<'_> {
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if let Some(at) = offset.checked_sub(self.head_len) {
            return self.body.load::<N>(at);
        }
        // Starts inside the synthesised head; may run on into the body.
        let mut out = [0u8; N];
        for (i, slot) in out.iter_mut().enumerate() {
            let at = offset.checked_add(i)?;
            *slot = match at.checked_sub(self.head_len) {
                None => self.head[at],
                Some(body_at) => *self.body.get(body_at)?,
            };
        }
        Some(out)
    }
}

/// The datagrams whose first fragment was captured, as the program's `SIP_FRAGMENTS` LRU map
/// keeps them: at most [`FRAGMENT_MAP_ENTRIES`], each for [`FRAGMENT_FOLLOW_NS`]. The oldest
/// goes first when it is full, which for entries that all live 30 s is what LRU would pick
/// too; a map and a queue do that without a cache crate.
#[derive(Debug, Default)]
pub struct FragmentFollower {
    /// The capture time of the frame being decided, in nanoseconds.
    now_ns: u64,
    since: HashMap<FragmentKey, u64>,
    order: VecDeque<(FragmentKey, u64)>,
    /// TCP flows seen carrying TLS, at most [`TLS_FLOW_MAP_ENTRIES`], the oldest marked
    /// going first.
    tls: HashSet<FlowKey>,
    tls_order: VecDeque<FlowKey>,
}

impl FragmentFollower {
    /// Datagrams followed now.
    pub fn len(&self) -> usize {
        self.since.len()
    }

    /// Whether none is followed.
    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

impl Fragments for FragmentFollower {
    fn follow(&mut self, key: &FragmentKey) {
        let limit = FRAGMENT_MAP_ENTRIES as usize;
        while self.since.len() >= limit {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            // A key followed again since has a newer entry further on: keep it.
            if self.since.get(&old) == Some(&at) {
                self.since.remove(&old);
            }
        }
        // Entries replaced by a newer one pile up in the queue; bound it as well.
        if self.order.len() >= 2 * limit {
            let since = &self.since;
            self.order.retain(|(key, at)| since.get(key) == Some(at));
        }
        self.since.insert(*key, self.now_ns);
        self.order.push_back((*key, self.now_ns));
    }

    fn followed(&mut self, key: &FragmentKey) -> bool {
        self.since
            .get(key)
            .is_some_and(|&at| self.now_ns.saturating_sub(at) < FRAGMENT_FOLLOW_NS)
    }
}

impl TlsFlows for FragmentFollower {
    fn mark_tls(&mut self, key: &FlowKey) {
        while self.tls.len() >= TLS_FLOW_MAP_ENTRIES as usize {
            let Some(old) = self.tls_order.pop_front() else {
                break;
            };
            self.tls.remove(&old);
        }
        if self.tls.insert(*key) {
            self.tls_order.push_back(*key);
        }
    }

    fn is_tls(&mut self, key: &FlowKey) -> bool {
        self.tls.contains(key)
    }

    fn forget_tls(&mut self, key: &FlowKey) {
        if self.tls.remove(key) {
            self.tls_order.retain(|k| k != key);
        }
    }
}

/// Runs the capture decision on one frame and counts it in `counts` as the XDP program counts
/// in its map (`packets_seen`, which the agent sums from the program's outcomes), the tallies,
/// and one outcome (`copied` for a record). `fragments` follows fragmented NOTIFYs from their
/// first fragment on, as the program's map does; `senders` is the program's `SIP_SENDERS`.
pub fn inspect<'a>(
    frame: &SplicedFrame<'a>,
    ports: &SipConfig,
    senders: &SourceFilter,
    fragments: &mut FragmentFollower,
    counts: &mut CounterSet,
    timestamp_ns: u64,
    ifindex: u32,
) -> Result<Record<'a>, Skip> {
    counts.add(Counter::PacketsSeen);
    fragments.now_ns = timestamp_ns;
    match decide::decide(frame, ports, senders, fragments, &mut |c| counts.add(c)) {
        Decision::Skip(skip) => {
            counts.add(skip.counter());
            Err(skip)
        }
        Decision::Capture(capture) => {
            let present = frame.tail(capture.payload_offset());
            // The kernel's records stop at MAX_PAYLOAD; a userspace source holds the whole
            // frame. An IP packet for reassembly is kept whole: behind GRO, AF_PACKET sees TCP
            // segments merged up to 64 KiB, and a cut one would leave a gap in its stream.
            let len = if capture.location.flags & FLAG_IP_PACKET != 0 {
                present.len().min(usize::from(capture.payload_len))
            } else {
                capture.captured_len(present.len())
            };
            let header = capture.header(len, timestamp_ns, ifindex, &mut |c| counts.add(c));
            counts.add(Counter::Copied);
            Ok(Record {
                header,
                payload: &present[..len],
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32) -> FragmentKey {
        FragmentKey {
            id,
            ip_version: 4,
            protocol: 17,
            ..FragmentKey::default()
        }
    }

    #[test]
    fn followed_datagrams_expire_and_the_table_stays_bounded() {
        let mut follower = FragmentFollower::default();
        follower.follow(&key(1));
        assert!(follower.followed(&key(1)));
        assert!(!follower.followed(&key(2)));
        follower.now_ns = FRAGMENT_FOLLOW_NS;
        assert!(
            !follower.followed(&key(1)),
            "30 s on, the IP id may be reused"
        );

        let limit = FRAGMENT_MAP_ENTRIES;
        for id in 0..3 * limit {
            follower.follow(&key(id));
            // Following one key over and over must not grow the queue without bound.
            follower.follow(&key(7));
        }
        assert_eq!(follower.len(), limit as usize);
        assert!(follower.order.len() <= 2 * limit as usize);
        assert!(follower.followed(&key(3 * limit - 1)), "the newest stays");
        assert!(follower.followed(&key(7)), "the one followed again stays");
        assert!(!follower.followed(&key(0)), "the oldest went first");
    }

    #[test]
    fn an_ip_packet_is_kept_whole_past_the_kernel_record_limit() {
        // A TCP segment as GRO merges them: larger than any kernel record.
        let payload = vec![b'x'; sipnotify_common::MAX_PAYLOAD * 2];
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 5061, 1, 1000)
            .write(&mut frame, &payload)
            .unwrap();
        let mut ports = SipConfig::empty();
        ports.watch(5061);
        let mut counts = CounterSet::default();
        let spliced = SplicedFrame::whole(&frame);
        let record = inspect(
            &spliced,
            &ports,
            &SourceFilter::default(),
            &mut FragmentFollower::default(),
            &mut counts,
            0,
            0,
        )
        .expect("a TCP segment to a watched port is captured");
        assert_eq!(record.payload, &frame[14..]);
        assert!(!record.truncated());
        assert_eq!(counts.get(Counter::Truncated), 0);
    }
}
