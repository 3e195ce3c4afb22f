//! SIP over TCP: per-flow stream reassembly and message framing (RFC 3261 §18.3).
//!
//! Each direction of a connection is a flow. Its segments are put in sequence order: bytes
//! already seen (retransmissions, overlaps) are trimmed, segments that arrive early wait in a
//! bounded reorder window, and a gap that does not fill within the window or `gap_timeout` is
//! given up: the partial message is dropped and the stream resynchronises on the next SIP start
//! line. The in-order bytes are framed by Content-Length, several messages per segment or one
//! message over many, and every complete `NOTIFY` is handed on whole.
//!
//! Memory is bounded per flow (one message, one reorder window) and in total (the least
//! recently active flow is evicted); idle flows expire. Every flow, message or byte range given
//! up is counted by reason in [`TcpStats`].
//!
//! Hand-written: the stream crates at hand (e.g. smoltcp's assembler) track holes but neither
//! trim overlaps against delivered bytes nor frame SIP, and neither bound memory this way.

use std::{
    collections::{BTreeMap, HashMap},
    mem::size_of,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use memchr::memmem;
use sipnotify_common::NOTIFY_PREFIX;

/// One counted outcome: a metric label and its value.
pub type Count = (&'static str, u64);

/// Bounds and timeouts of the TCP reassembler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSettings {
    /// The largest SIP message (start line, headers and body) framed; a longer one is skipped.
    pub max_message_bytes: usize,
    /// How far ahead of the next expected byte a segment may start and still wait for the
    /// gap before it to fill; also the most early bytes held per flow.
    pub reorder_window_bytes: usize,
    /// The most early segments held per flow.
    pub max_early_segments: usize,
    /// How long a gap may stay open before it is given up. A segment the capture missed never
    /// comes back (the receiver got it), so this stays short.
    pub gap_timeout: Duration,
    /// A flow without segments for this long is closed.
    pub idle_timeout: Duration,
    /// The most flows tracked at once; beyond it the least recently active go.
    pub max_flows: usize,
    /// The most memory all flows may hold together, their table included; beyond it the
    /// least recently active go.
    pub max_total_bytes: usize,
}

impl Default for TcpSettings {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 << 10,
            reorder_window_bytes: 64 << 10,
            max_early_segments: 32,
            gap_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(120),
            max_flows: 4096,
            max_total_bytes: 32 << 20,
        }
    }
}

/// One direction of a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Sender.
    pub src: SocketAddr,
    /// Receiver (the watched port).
    pub dst: SocketAddr,
}

/// What the reassembler needs of a TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// The flow.
    pub key: FlowKey,
    /// Sequence number of the first byte (of the SYN, when `syn`).
    pub seq: u32,
    /// SYN flag.
    pub syn: bool,
    /// FIN flag.
    pub fin: bool,
    /// RST flag.
    pub rst: bool,
    /// The segment's data.
    pub payload: &'a [u8],
}

/// Why a TCP header cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// Fewer bytes than the header claims (or than a minimal header).
    #[error("tcp segment of {0} bytes ends inside its header")]
    ShortHeader(usize),
}

impl SegmentError {
    /// Metric label.
    pub fn reason(self) -> &'static str {
        "tcp_short_header"
    }
}

/// Reads the TCP header in `l4` (sent from `src` to `dst`).
pub fn parse_segment(src: IpAddr, dst: IpAddr, l4: &[u8]) -> Result<Segment<'_>, SegmentError> {
    let Some(header) = l4.get(..20) else {
        return Err(SegmentError::ShortHeader(l4.len()));
    };
    let data_offset = usize::from(header[12] >> 4) * 4;
    if data_offset < 20 {
        return Err(SegmentError::ShortHeader(l4.len()));
    }
    let payload = l4
        .get(data_offset..)
        .ok_or(SegmentError::ShortHeader(l4.len()))?;
    let flags = header[13];
    Ok(Segment {
        key: FlowKey {
            src: SocketAddr::new(src, u16::from_be_bytes([header[0], header[1]])),
            dst: SocketAddr::new(dst, u16::from_be_bytes([header[2], header[3]])),
        },
        seq: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
        fin: flags & 0x01 != 0,
        syn: flags & 0x02 != 0,
        rst: flags & 0x04 != 0,
        payload,
    })
}

/// What the TCP reassembler did, by outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Segments received.
    pub segments: u64,
    /// Complete NOTIFYs handed on.
    pub notifies: u64,
    /// Complete messages of other methods and responses (framed and skipped).
    pub other_messages: u64,
    /// Segments carrying only bytes already received.
    pub retransmissions: u64,
    /// Segments that arrived early and waited for a gap to fill.
    pub out_of_order: u64,
    /// Gaps given up (window full, too many early segments, or `gap_timeout`).
    pub gaps: u64,
    /// Bytes discarded: partial messages at a gap or close, and bytes skipped while
    /// resynchronising.
    pub discarded_bytes: u64,
    /// Times the stream found a start line again after losing its place.
    pub resyncs: u64,
    /// Messages longer than `max_message_bytes`, skipped.
    pub oversized: u64,
    /// Messages with an unreadable or conflicting Content-Length, skipped.
    pub bad_content_length: u64,
    /// Messages without Content-Length, framed as having no body (RFC 3261 requires it on
    /// stream transports).
    pub missing_content_length: u64,
    /// Flows closed (FIN, RST, idle or a new SYN) with part of a message still held.
    pub closed_incomplete: u64,
    /// Flows closed after `idle_timeout`.
    pub expired: u64,
    /// Flows evicted to keep the total memory bound.
    pub evicted: u64,
}

impl TcpStats {
    /// What was given up, by reason (metric labels): gaps, messages and flows. The bytes
    /// they cost are [`Self::discarded_bytes`].
    pub fn losses(&self) -> [Count; 5] {
        [
            ("tcp_gap", self.gaps),
            ("tcp_oversized", self.oversized),
            ("tcp_bad_content_length", self.bad_content_length),
            ("tcp_closed_incomplete", self.closed_incomplete),
            ("tcp_evicted", self.evicted),
        ]
    }
}

/// Bookkeeping charged per flow on top of its buffers, so that many small flows cannot slip
/// past the bound: its boxed state and its LRU entry, twice (B-tree nodes are partly filled).
/// The hash table is charged separately, as allocated. `tests/reassembly_memory.rs` checks
/// the bound on the real heap.
const FLOW_OVERHEAD: usize = size_of::<Flow>() + 2 * size_of::<(u64, FlowKey)>() + 16;
/// One hash table slot: the entry and its control byte.
const TABLE_SLOT: usize = size_of::<(FlowKey, Box<Flow>)>() + 1;
const SEGMENT_OVERHEAD: usize = size_of::<(u32, Vec<u8>)>();
/// While resynchronising, the most bytes of an unfinished line kept to look for a start line.
const MAX_LINE: usize = 1024;
/// A buffer emptied by framing keeps at most this much capacity.
const KEEP_CAPACITY: usize = 4096;

struct Flow {
    /// The sequence number of the next in-order byte.
    next_seq: u32,
    /// In-order bytes not yet framed.
    buf: Vec<u8>,
    /// Early segments: (sequence number, bytes).
    early: Vec<(u32, Vec<u8>)>,
    early_bytes: usize,
    /// Since when a gap has been open.
    gap_since: Option<Duration>,
    /// Looking for a start line (joined mid-stream, or after a gap or a bad message).
    syncing: bool,
    /// Body bytes of an oversized message still to skip.
    skip: usize,
    last_seen: Duration,
    /// Position in the LRU order.
    tick: u64,
    /// Memory charged to this flow.
    held: usize,
}

impl Flow {
    fn new(next_seq: u32, syncing: bool, now: Duration, tick: u64) -> Self {
        Self {
            next_seq,
            buf: Vec::new(),
            early: Vec::new(),
            early_bytes: 0,
            gap_since: None,
            syncing,
            skip: 0,
            last_seen: now,
            tick,
            held: FLOW_OVERHEAD,
        }
    }

    fn cost(&self) -> usize {
        FLOW_OVERHEAD
            + self.buf.capacity()
            + self.early.capacity() * SEGMENT_OVERHEAD
            + self.early.iter().map(|(_, d)| d.capacity()).sum::<usize>()
    }

    /// Signed distance from the next expected byte to `seq` (sequence numbers wrap).
    fn ahead(&self, seq: u32) -> i64 {
        i64::from(seq.wrapping_sub(self.next_seq) as i32)
    }
}

/// Puts SIP messages carried over TCP back together and hands on the NOTIFYs.
pub struct TcpReassembler {
    settings: TcpSettings,
    /// Sized once for twice `max_flows`, so it never grows: a table that grows (or, full of
    /// deleted slots, rehashes into a larger one) briefly holds two copies of itself.
    flows: HashMap<FlowKey, Box<Flow>>,
    /// The most flows at once: `max_flows`, or fewer if the memory bound leaves less room.
    max_flows: usize,
    /// Bytes of the flow table.
    table: usize,
    /// Flows by last activity, least recent first.
    lru: BTreeMap<u64, FlowKey>,
    next_tick: u64,
    memory: usize,
    stats: TcpStats,
}

impl TcpReassembler {
    /// An empty reassembler.
    pub fn new(settings: TcpSettings) -> Self {
        let (flows, max_flows, table) = table_for(
            settings.max_flows,
            settings.max_total_bytes,
            FLOW_OVERHEAD,
            TABLE_SLOT,
        );
        Self {
            settings,
            flows,
            max_flows,
            table,
            lru: BTreeMap::new(),
            next_tick: 0,
            memory: table,
            stats: TcpStats::default(),
        }
    }

    /// The outcomes so far.
    pub fn stats(&self) -> &TcpStats {
        &self.stats
    }

    /// Memory held, the flow table included, as charged against `max_total_bytes`.
    pub fn memory(&self) -> usize {
        self.memory
    }

    /// Memory held with no flow at all (the flow table).
    pub fn empty_memory(&self) -> usize {
        self.table
    }

    /// Whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Flows tracked.
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Adds a segment received at `now`; every NOTIFY it completes goes to `emit`.
    pub fn push(
        &mut self,
        now: Duration,
        segment: Segment<'_>,
        emit: &mut impl FnMut(&FlowKey, &[u8]),
    ) {
        self.expire(now, emit);
        self.stats.segments += 1;
        let key = segment.key;
        if segment.rst {
            self.close(&key, emit, false);
            return;
        }
        let data_seq = if segment.syn {
            segment.seq.wrapping_add(1)
        } else {
            segment.seq
        };
        let window = i64::try_from(self.settings.reorder_window_bytes).unwrap_or(i64::MAX);
        let reused = segment.syn
            && self
                .flows
                .get(&key)
                .is_some_and(|flow| flow.ahead(data_seq).abs() > window);
        if reused {
            // A SYN far from the stream's place: the ports were reused by a new connection.
            self.close(&key, emit, false);
        }
        // A fresh tick for every segment: a new flow must not start on a tick another flow
        // still holds in the LRU order.
        let tick = self.next_tick;
        self.next_tick += 1;
        if !self.flows.contains_key(&key) {
            if self.flows.len() >= self.max_flows {
                self.evict_oldest();
            }
            // Without the SYN the capture joined mid-stream: find a start line first.
            let flow = Box::new(Flow::new(data_seq, !segment.syn, now, tick));
            self.memory += flow.held;
            self.flows.insert(key, flow);
        }
        let settings = self.settings;
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        self.lru.remove(&flow.tick);
        self.lru.insert(tick, key);
        flow.tick = tick;
        flow.last_seen = now;
        let stats = &mut self.stats;
        accept(flow, &settings, stats, now, data_seq, segment.payload);
        frame(flow, &settings, stats, &key, emit);
        let done = segment.fin && flow.early.is_empty();
        let cost = flow.cost();
        self.memory = self.memory - flow.held + cost;
        flow.held = cost;
        if done {
            self.close(&key, emit, false);
        }
        self.enforce_memory();
    }

    /// Closes the flows idle for `idle_timeout`, handing on what their early segments
    /// complete.
    pub fn expire(&mut self, now: Duration, emit: &mut impl FnMut(&FlowKey, &[u8])) {
        while let Some((_, key)) = self.lru.first_key_value() {
            let key = *key;
            let idle = self
                .flows
                .get(&key)
                .map_or(Duration::MAX, |f| now.saturating_sub(f.last_seen));
            if idle < self.settings.idle_timeout {
                break;
            }
            self.stats.expired += 1;
            self.close(&key, emit, true);
        }
    }

    /// Closes every flow (end of a capture), handing on what their early segments complete.
    pub fn finish(&mut self, emit: &mut impl FnMut(&FlowKey, &[u8])) {
        let keys: Vec<FlowKey> = self.lru.values().copied().collect();
        for key in keys {
            self.close(&key, emit, true);
        }
    }

    /// Removes a flow; with `flush`, gaps before its early segments are given up first so
    /// that complete messages behind them are still handed on.
    fn close(&mut self, key: &FlowKey, emit: &mut impl FnMut(&FlowKey, &[u8]), flush: bool) {
        let Some(mut flow) = self.flows.remove(key).map(|f| *f) else {
            return;
        };
        self.lru.remove(&flow.tick);
        self.memory -= flow.held;
        if flush {
            while !flow.early.is_empty() {
                skip_gap(&mut flow, &mut self.stats);
                let now = flow.last_seen;
                drain_early(&mut flow, &mut self.stats, now);
                frame(&mut flow, &self.settings, &mut self.stats, key, emit);
            }
        }
        let partial = flow.buf.len() + flow.early_bytes;
        if partial > 0 && !(flow.syncing && flow.early.is_empty()) {
            self.stats.closed_incomplete += 1;
        }
        self.stats.discarded_bytes += partial as u64;
    }

    fn enforce_memory(&mut self) {
        while self.memory > self.settings.max_total_bytes && self.evict_oldest() {}
    }

    /// Evicts the least recently active flow; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        let Some((_, key)) = self.lru.pop_first() else {
            return false;
        };
        if let Some(flow) = self.flows.remove(&key) {
            self.memory -= flow.held;
            self.stats.evicted += 1;
            self.stats.discarded_bytes += (flow.buf.len() + flow.early_bytes) as u64;
        }
        true
    }
}

/// A hash table that never needs to grow for `max_entries` entries, and how many entries the
/// memory bound leaves room for; returns the table, that entry limit and the table's bytes.
pub(super) fn table_for<K, V>(
    max_entries: usize,
    max_bytes: usize,
    entry_overhead: usize,
    slot: usize,
) -> (HashMap<K, V>, usize, usize) {
    // Twice the entries, so deleted slots are always rehashed in place (hashbrown grows a
    // table more than half full); buckets round up to a power of two above 8/7 of capacity.
    let per_entry = entry_overhead + 5 * slot;
    let limit = max_entries.min(max_bytes / per_entry).max(1);
    let table = HashMap::with_capacity(2 * limit);
    let buckets = (table.capacity() * 8 / 7).next_power_of_two().max(4);
    (table, limit, buckets * slot + 16)
}

/// Puts a segment's bytes in order: appended, trimmed, held early, or dropped.
fn accept(
    flow: &mut Flow,
    settings: &TcpSettings,
    stats: &mut TcpStats,
    now: Duration,
    seq: u32,
    payload: &[u8],
) {
    if !payload.is_empty() {
        let ahead = flow.ahead(seq);
        let window = i64::try_from(settings.reorder_window_bytes).unwrap_or(i64::MAX);
        if ahead <= 0 {
            let seen = usize::try_from(-ahead).unwrap_or(usize::MAX);
            match payload.get(seen..) {
                Some(new) if !new.is_empty() => append(flow, new),
                _ => stats.retransmissions += 1,
            }
        } else if ahead > window {
            // Far beyond the window: what lies between is lost for good.
            stats.gaps += 1;
            stats.discarded_bytes += (flow.buf.len() + flow.early_bytes) as u64;
            flow.buf.clear();
            flow.early.clear();
            flow.early_bytes = 0;
            flow.gap_since = None;
            flow.syncing = true;
            flow.skip = 0;
            flow.next_seq = seq;
            append(flow, payload);
        } else {
            stats.out_of_order += 1;
            flow.early.push((seq, payload.to_vec()));
            flow.early_bytes += payload.len();
            flow.gap_since.get_or_insert(now);
        }
    }
    drain_early(flow, stats, now);
    while !flow.early.is_empty()
        && (flow.early_bytes > settings.reorder_window_bytes
            || flow.early.len() > settings.max_early_segments
            || flow
                .gap_since
                .is_some_and(|since| now.saturating_sub(since) >= settings.gap_timeout))
    {
        skip_gap(flow, stats);
        drain_early(flow, stats, now);
    }
}

fn append(flow: &mut Flow, bytes: &[u8]) {
    flow.buf.extend_from_slice(bytes);
    flow.next_seq = flow
        .next_seq
        .wrapping_add(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
}

/// Moves the early segments that the stream has reached into the buffer.
fn drain_early(flow: &mut Flow, stats: &mut TcpStats, now: Duration) {
    let mut progressed = false;
    while let Some(i) = flow.early.iter().position(|(seq, _)| flow.ahead(*seq) <= 0) {
        let (seq, bytes) = flow.early.swap_remove(i);
        flow.early_bytes -= bytes.len();
        let seen = usize::try_from(-flow.ahead(seq)).unwrap_or(usize::MAX);
        match bytes.get(seen..) {
            Some(new) if !new.is_empty() => {
                append(flow, new);
                progressed = true;
            }
            _ => stats.retransmissions += 1,
        }
    }
    if flow.early.is_empty() {
        flow.gap_since = None;
    } else if progressed {
        flow.gap_since = Some(now);
    }
}

/// Gives up the gap before the earliest early segment: the partial message goes, and the
/// stream resumes at that segment looking for a start line.
fn skip_gap(flow: &mut Flow, stats: &mut TcpStats) {
    let Some(earliest) = flow
        .early
        .iter()
        .map(|(seq, _)| *seq)
        .min_by_key(|seq| flow.ahead(*seq))
    else {
        return;
    };
    stats.gaps += 1;
    stats.discarded_bytes += flow.buf.len() as u64;
    flow.buf.clear();
    flow.next_seq = earliest;
    flow.syncing = true;
    flow.skip = 0;
    flow.gap_since = None;
}

/// Frames the buffered bytes into messages, handing on the NOTIFYs.
fn frame(
    flow: &mut Flow,
    settings: &TcpSettings,
    stats: &mut TcpStats,
    key: &FlowKey,
    emit: &mut impl FnMut(&FlowKey, &[u8]),
) {
    let mut consumed = 0;
    loop {
        let rest = &flow.buf[consumed..];
        if flow.skip > 0 {
            let skipped = flow.skip.min(rest.len());
            stats.discarded_bytes += skipped as u64;
            consumed += skipped;
            flow.skip -= skipped;
            if flow.skip > 0 {
                break;
            }
            continue;
        }
        if flow.syncing {
            match find_start_line(rest) {
                Some(at) => {
                    stats.discarded_bytes += at as u64;
                    stats.resyncs += 1;
                    consumed += at;
                    flow.syncing = false;
                }
                None => {
                    // Keep the unfinished last line: a start line may be completing.
                    let keep = rest
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(rest.len(), |nl| rest.len() - nl - 1);
                    let keep = if keep > MAX_LINE { 0 } else { keep };
                    stats.discarded_bytes += (rest.len() - keep) as u64;
                    consumed += rest.len() - keep;
                    break;
                }
            }
            continue;
        }
        // Keep-alives (RFC 5626 §3.5.1) and stray line ends between messages.
        let blank = rest
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        consumed += blank;
        let rest = &rest[blank..];
        if rest.is_empty() {
            break;
        }
        let Some(line_end) = memchr::memchr(b'\n', rest) else {
            if rest.len() > MAX_LINE {
                flow.syncing = true;
            }
            break;
        };
        if !is_start_line(&rest[..line_end]) {
            flow.syncing = true;
            continue;
        }
        let Some(headers_end) = memmem::find(rest, b"\r\n\r\n").map(|at| at + 4) else {
            if rest.len() > settings.max_message_bytes {
                stats.oversized += 1;
                stats.discarded_bytes += (line_end + 1) as u64;
                flow.syncing = true;
                consumed += line_end + 1;
                continue;
            }
            break;
        };
        let body = match content_length(&rest[..headers_end]) {
            Ok(Some(len)) => len,
            Ok(None) => {
                stats.missing_content_length += 1;
                0
            }
            Err(()) => {
                stats.bad_content_length += 1;
                stats.discarded_bytes += headers_end as u64;
                consumed += headers_end;
                flow.syncing = true;
                continue;
            }
        };
        let total = headers_end.saturating_add(body);
        if total > settings.max_message_bytes {
            // The length is known: skip exactly this message, whatever its body holds.
            stats.oversized += 1;
            stats.discarded_bytes += headers_end as u64;
            consumed += headers_end;
            flow.skip = body;
            continue;
        }
        let Some(message) = rest.get(..total) else {
            break;
        };
        if message.starts_with(NOTIFY_PREFIX) {
            stats.notifies += 1;
            emit(key, message);
        } else {
            stats.other_messages += 1;
        }
        consumed += total;
    }
    flow.buf.drain(..consumed);
    if flow.buf.is_empty() && flow.buf.capacity() > KEEP_CAPACITY {
        flow.buf = Vec::new();
    }
}

/// Where the first start line of `bytes` begins, looking at line starts only.
fn find_start_line(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at < bytes.len() {
        let line_end = memchr::memchr(b'\n', &bytes[at..])? + at;
        if is_start_line(&bytes[at..line_end]) {
            return Some(at);
        }
        at = line_end + 1;
    }
    None
}

/// `Method SP Request-URI SP SIP/2.0` or `SIP/2.0 SP 3DIGIT SP Reason` (without the LF).
fn is_start_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(status) = line.strip_prefix(b"SIP/2.0 ") {
        return status.len() >= 3 && status[..3].iter().all(u8::is_ascii_digit);
    }
    let Some(space) = memchr::memchr(b' ', line) else {
        return false;
    };
    space > 0
        && line[..space].iter().all(u8::is_ascii_uppercase)
        && line.ends_with(b" SIP/2.0")
        && line.len() > space + 9
}

/// The Content-Length of a message head (start line and headers, ending in the blank line):
/// `Ok(None)` when absent, `Err` when unreadable or given twice with different values.
fn content_length(head: &[u8]) -> Result<Option<usize>, ()> {
    let mut found = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let value = line[colon + 1..].trim_ascii();
        if value.is_empty() || value.len() > 9 || !value.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let len = value
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
        if found.is_some_and(|f| f != len) {
            return Err(());
        }
        found = Some(len);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use sipnotify_testkit::frames;

    const T0: Duration = Duration::from_secs(10);

    fn key(port: u16) -> FlowKey {
        FlowKey {
            src: SocketAddr::new(Ipv4Addr::new(192, 0, 2, 1).into(), port),
            dst: SocketAddr::new(Ipv4Addr::new(192, 0, 2, 2).into(), 5061),
        }
    }

    fn notify(n: u32) -> Vec<u8> {
        let body = format!("body of notify {n}\r\n");
        format!(
            "NOTIFY sip:asterisk@192.0.2.2:5061;transport=tcp SIP/2.0\r\n\
             Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK{n}\r\n\
             To: <sip:1002@192.0.2.2>\r\nCall-ID: call-{n}\r\nCSeq: {n} NOTIFY\r\n\
             Event: talk\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn options() -> Vec<u8> {
        b"OPTIONS sip:asterisk@192.0.2.2 SIP/2.0\r\nCall-ID: ping\r\nl: 0\r\n\r\n".to_vec()
    }

    /// One direction of a connection, written as segments.
    struct Sender {
        key: FlowKey,
        isn: u32,
    }

    impl Sender {
        fn syn(&self) -> Segment<'static> {
            Segment {
                key: self.key,
                seq: self.isn,
                syn: true,
                fin: false,
                rst: false,
                payload: &[],
            }
        }

        /// The segment carrying `stream[from..to]`.
        fn data<'a>(&self, stream: &'a [u8], from: usize, to: usize) -> Segment<'a> {
            Segment {
                key: self.key,
                seq: self.isn.wrapping_add(1).wrapping_add(from as u32),
                syn: false,
                fin: false,
                rst: false,
                payload: &stream[from..to],
            }
        }
    }

    type Delivered = Vec<Vec<u8>>;

    fn run(r: &mut TcpReassembler, segments: &[Segment<'_>]) -> Delivered {
        let mut out = Vec::new();
        for segment in segments {
            r.push(T0, *segment, &mut |_, m| out.push(m.to_vec()));
        }
        out
    }

    fn pieces<'a>(s: &Sender, stream: &'a [u8], cuts: &[usize]) -> Vec<Segment<'a>> {
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(stream.len());
        bounds
            .windows(2)
            .map(|w| s.data(stream, w[0], w[1]))
            .collect()
    }

    #[test]
    fn finish_releases_every_flow_opened_without_a_syn() {
        // Found by the fuzzer: a second new flow took the first one's place in the LRU
        // order, so closing all flows left the first one's memory charged.
        let mut r = TcpReassembler::new(TcpSettings::default());
        let mut data = Sender {
            key: key(40_000),
            isn: 7,
        }
        .data(b"x", 0, 1);
        run(&mut r, &[data]);
        data.key = key(40_001);
        run(&mut r, &[data]);
        assert_eq!(r.flows(), 2);
        r.finish(&mut |_, _| {});
        assert_eq!((r.flows(), r.memory()), (0, r.empty_memory()));
    }

    #[test]
    fn every_split_point_delivers_each_notify_once() {
        let stream = [notify(1), options(), b"\r\n\r\n".to_vec(), notify(2)].concat();
        let s = Sender {
            key: key(40_000),
            isn: 1000,
        };
        for cut in 1..stream.len() {
            for reverse in [false, true] {
                let mut r = TcpReassembler::new(TcpSettings::default());
                let mut segments = pieces(&s, &stream, &[cut]);
                if reverse {
                    segments.reverse();
                }
                segments.insert(0, s.syn());
                let out = run(&mut r, &segments);
                assert_eq!(
                    out,
                    vec![notify(1), notify(2)],
                    "cut {cut} reverse {reverse}"
                );
                assert_eq!(r.stats().other_messages, 1);
            }
        }
    }

    #[test]
    fn three_pieces_at_interesting_bytes_in_any_order() {
        let stream = [notify(1), notify(2)].concat();
        let first = notify(1).len();
        let head = memmem::find(&stream, b"\r\n\r\n").unwrap();
        let interesting = [1, 7, head, head + 2, head + 4, first - 1, first, first + 1];
        let s = Sender {
            key: key(40_001),
            isn: u32::MAX - 40,
        };
        for &a in &interesting {
            for b in (a + 1..stream.len()).step_by(13) {
                for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1]] {
                    let p = pieces(&s, &stream, &[a, b]);
                    let mut segments = vec![s.syn()];
                    segments.extend(order.iter().map(|&i| p[i]));
                    let mut r = TcpReassembler::new(TcpSettings::default());
                    let out = run(&mut r, &segments);
                    assert_eq!(out, vec![notify(1), notify(2)], "cuts {a},{b} {order:?}");
                }
            }
        }
    }

    #[test]
    fn retransmitted_and_overlapping_segments_are_trimmed() {
        let stream = [notify(1), notify(2), notify(3)].concat();
        let s = Sender {
            key: key(40_002),
            isn: 7,
        };
        let segments = vec![
            s.syn(),
            s.data(&stream, 0, 100),
            s.data(&stream, 0, 100),
            s.data(&stream, 50, 300),
            s.data(&stream, 400, 500),
            s.data(&stream, 250, 450),
            s.data(&stream, 450, stream.len()),
            s.data(&stream, 0, stream.len()),
        ];
        let mut r = TcpReassembler::new(TcpSettings::default());
        let out = run(&mut r, &segments);
        assert_eq!(out, vec![notify(1), notify(2), notify(3)]);
        assert_eq!(r.stats().retransmissions, 2);
        assert_eq!(r.stats().out_of_order, 1);
    }

    #[test]
    fn a_missing_segment_costs_only_the_message_it_hits() {
        let stream = [notify(1), notify(2), notify(3)].concat();
        let n1 = notify(1).len();
        let n2 = notify(2).len();
        let s = Sender {
            key: key(40_003),
            isn: 0,
        };
        // The bytes n1+10..n1+20 (inside NOTIFY 2) never arrive.
        let segments = vec![
            s.syn(),
            s.data(&stream, 0, n1 + 10),
            s.data(&stream, n1 + 20, n1 + n2 + 5),
            s.data(&stream, n1 + n2 + 5, stream.len()),
        ];
        let mut r = TcpReassembler::new(TcpSettings::default());
        let mut out = run(&mut r, &segments);
        assert_eq!(out, vec![notify(1)], "the gap is still open");
        // The gap times out on the flow's next segment (here a keep-alive).
        let later = T0 + Duration::from_secs(2);
        let keepalive = b"\r\n\r\n";
        let at = s.isn.wrapping_add(1).wrapping_add(stream.len() as u32);
        let seg = Segment {
            seq: at,
            payload: keepalive,
            ..s.data(&stream, 0, 0)
        };
        r.push(later, seg, &mut |_, m| out.push(m.to_vec()));
        assert_eq!(out, vec![notify(1), notify(3)]);
        let stats = r.stats();
        assert_eq!((stats.gaps, stats.resyncs), (1, 1));
        assert!(stats.discarded_bytes > 0);
    }

    #[test]
    fn an_unfilled_gap_is_given_up_when_the_capture_ends() {
        let stream = [notify(1), notify(2)].concat();
        let s = Sender {
            key: key(40_004),
            isn: 99,
        };
        let mut r = TcpReassembler::new(TcpSettings::default());
        let n1 = notify(1).len();
        let mut out = run(
            &mut r,
            &[
                s.syn(),
                s.data(&stream, 0, 30),
                s.data(&stream, n1, stream.len()),
            ],
        );
        assert!(out.is_empty());
        r.finish(&mut |_, m| out.push(m.to_vec()));
        assert_eq!(out, vec![notify(2)]);
        assert_eq!((r.flows(), r.memory()), (0, r.empty_memory()));
        assert_eq!(r.stats().gaps, 1);
    }

    #[test]
    fn joining_mid_stream_resynchronises_on_the_next_start_line() {
        let stream = [notify(1), notify(2)].concat();
        let s = Sender {
            key: key(40_005),
            isn: 5,
        };
        // No SYN; the first segment starts inside NOTIFY 1's headers.
        let mut r = TcpReassembler::new(TcpSettings::default());
        let out = run(&mut r, &pieces(&s, &stream, &[40, 300])[1..]);
        let out: Delivered = out;
        assert_eq!(out, vec![notify(2)]);
        assert_eq!(r.stats().resyncs, 1);
    }

    #[test]
    fn a_flow_that_never_completes_expires_and_is_counted() {
        let stream = notify(1);
        let s = Sender {
            key: key(40_006),
            isn: 1,
        };
        let mut r = TcpReassembler::new(TcpSettings::default());
        assert!(run(&mut r, &[s.syn(), s.data(&stream, 0, 200)]).is_empty());
        assert!(r.memory() > 200);
        let mut out: Delivered = Vec::new();
        r.expire(T0 + Duration::from_secs(119), &mut |_, m| {
            out.push(m.to_vec())
        });
        assert_eq!(r.flows(), 1);
        r.expire(T0 + Duration::from_secs(120), &mut |_, m| {
            out.push(m.to_vec())
        });
        assert!(out.is_empty());
        let stats = r.stats();
        assert_eq!((stats.expired, stats.closed_incomplete), (1, 1));
        assert_eq!((r.flows(), r.memory()), (0, r.empty_memory()));
    }

    #[test]
    fn fin_closes_rst_drops_and_a_new_syn_restarts() {
        let stream = notify(1);
        let s = Sender {
            key: key(40_007),
            isn: 1,
        };
        let mut r = TcpReassembler::new(TcpSettings::default());
        let mut last = s.data(&stream, 100, stream.len());
        last.fin = true;
        assert_eq!(
            run(&mut r, &[s.syn(), s.data(&stream, 0, 100), last]),
            vec![notify(1)]
        );
        assert_eq!(r.flows(), 0);
        let mut rst = s.data(&stream, 0, 0);
        rst.rst = true;
        assert!(run(&mut r, &[s.syn(), s.data(&stream, 0, 100), rst]).is_empty());
        assert_eq!((r.flows(), r.stats().closed_incomplete), (0, 1));
        // A SYN with a far-away sequence number is a new connection on the same ports.
        let again = Sender {
            key: s.key,
            isn: 3_000_000_000,
        };
        let out = run(
            &mut r,
            &[
                s.syn(),
                s.data(&stream, 0, 100),
                again.syn(),
                again.data(&stream, 0, stream.len()),
            ],
        );
        assert_eq!(out, vec![notify(1)]);
    }

    #[test]
    fn bad_and_missing_content_lengths_are_counted() {
        // The bodies end in a line end: with no usable length, the next start line is found
        // at the start of a line.
        let bad = b"NOTIFY sip:a@b SIP/2.0\r\nContent-Length: 12x\r\n\r\nxx\r\n".to_vec();
        let twice = b"NOTIFY sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\nxx\r\n".to_vec();
        let none = b"NOTIFY sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n".to_vec();
        let stream = [bad, twice, none.clone(), notify(4)].concat();
        let s = Sender {
            key: key(40_008),
            isn: 1,
        };
        let mut r = TcpReassembler::new(TcpSettings::default());
        let out = run(&mut r, &[s.syn(), s.data(&stream, 0, stream.len())]);
        assert_eq!(out, vec![none, notify(4)]);
        let stats = r.stats();
        assert_eq!(
            (stats.bad_content_length, stats.missing_content_length),
            (2, 1)
        );
    }

    #[test]
    fn oversized_messages_are_skipped_and_framing_resumes() {
        let settings = TcpSettings {
            max_message_bytes: 300,
            ..TcpSettings::default()
        };
        let big = format!(
            "NOTIFY sip:a@b SIP/2.0\r\nContent-Length: 1000\r\n\r\n{}",
            "x".repeat(1000)
        );
        let endless = format!("NOTIFY sip:a@b SIP/2.0\r\n{}", "X-Pad: y\r\n".repeat(50));
        let small = b"NOTIFY sip:a@b SIP/2.0\r\nl: 0\r\n\r\n".to_vec();
        let stream = [
            big.as_bytes(),
            small.as_slice(),
            endless.as_bytes(),
            small.as_slice(),
        ]
        .concat();
        let s = Sender {
            key: key(40_009),
            isn: 1,
        };
        let mut r = TcpReassembler::new(settings);
        let out = run(
            &mut r,
            &pieces(&s, &stream, &[100, 600, 1100, 1400])
                .into_iter()
                .fold(vec![s.syn()], |mut v, x| {
                    v.push(x);
                    v
                }),
        );
        assert_eq!(out, vec![small.clone(), small]);
        assert_eq!(r.stats().oversized, 2);
    }

    #[test]
    fn ten_thousand_concurrent_flows_stay_within_the_memory_bound() {
        let stream = notify(1);
        let half = stream.len() / 2;
        for (bound, expect_all) in [(1 << 20, false), (64 << 20, true)] {
            let settings = TcpSettings {
                max_total_bytes: bound,
                max_flows: 10_000,
                ..TcpSettings::default()
            };
            let mut r = TcpReassembler::new(settings);
            let mut delivered = 0u32;
            let mut peak = 0;
            for round in 0..2 {
                for port in 0..10_000u16 {
                    let s = Sender {
                        key: key(port),
                        isn: u32::from(port) * 7919,
                    };
                    let segment = if round == 0 {
                        s.data(&stream, 0, half)
                    } else {
                        s.data(&stream, half, stream.len())
                    };
                    let segments = if round == 0 {
                        vec![s.syn(), segment]
                    } else {
                        vec![segment]
                    };
                    for seg in segments {
                        r.push(T0, seg, &mut |_, m| {
                            assert_eq!(m, stream.as_slice());
                            delivered += 1;
                        });
                    }
                    peak = peak.max(r.memory());
                    assert!(r.memory() <= bound, "{} > {bound}", r.memory());
                }
            }
            let stats = r.stats();
            if expect_all {
                assert_eq!((delivered, stats.evicted), (10_000, 0));
                assert!(peak > 10_000 * half, "peak {peak}");
            } else {
                assert!(stats.evicted > 5_000, "{stats:?}");
                // Evicted flows join again mid-message and resynchronise: no false delivery.
                assert!(
                    u64::from(delivered) + stats.evicted >= 10_000,
                    "{delivered} {stats:?}"
                );
            }
        }
    }

    #[test]
    fn parse_segment_reads_etherparse_frames() {
        let l4 = frames::tcp(40_000, 5061, 42, false, true, b"NOTIFY ");
        let src = Ipv4Addr::new(192, 0, 2, 1).into();
        let dst = Ipv4Addr::new(192, 0, 2, 2).into();
        let segment = parse_segment(src, dst, &l4).unwrap();
        assert_eq!(segment.key, key(40_000));
        assert_eq!(
            (segment.seq, segment.syn, segment.fin, segment.rst),
            (42, false, true, false)
        );
        assert_eq!(segment.payload, b"NOTIFY ");
        assert_eq!(
            parse_segment(src, dst, &l4[..19]),
            Err(SegmentError::ShortHeader(19))
        );
        let mut lying = l4.clone();
        lying[12] = 0xf0;
        assert!(parse_segment(src, dst, &lying).is_err());
    }

    #[test]
    fn start_lines() {
        assert!(is_start_line(b"NOTIFY sip:a@b SIP/2.0\r"));
        assert!(is_start_line(b"SIP/2.0 200 OK\r"));
        assert!(!is_start_line(b"Via: SIP/2.0/TCP x\r"));
        assert!(!is_start_line(b"notify sip:a@b SIP/2.0\r"));
        assert!(!is_start_line(b"NOTIFY SIP/2.0"));
        assert_eq!(
            find_start_line(b"junk\r\nmore junk\r\nACK sip:x SIP/2.0\r\n"),
            Some(17)
        );
    }
}
