//! Captured NOTIFY records, from the live XDP ring buffer, an AF_PACKET ring or a pcap file.
//!
//! Every source produces a [`Record`]: the shared [`EventHeader`] plus the UDP payload. The
//! kernel's records are decoded here with length checks first, since a record that does not
//! match the ABI must be counted and skipped, never read past its end. The userspace sources
//! (AF_PACKET, pcap) hand whole frames to [`inspect`], which runs the XDP program's own
//! decision (`sipnotify_common::decide`) and counts it the same way.

pub mod af_packet;
pub mod cbpf;
pub mod live;
pub mod pcap;
pub mod source;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use sipnotify_common::{
    Counter, CounterSet, EVENT_HEADER_LEN, EventHeader, SipConfig,
    decide::{self, Decision, Skip},
    net::Frame,
};

use crate::event::CaptureMeta;

/// One captured UDP payload with its capture header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Capture metadata written by the program (or built by the replay).
    pub header: EventHeader,
    /// The payload bytes (`header.captured_len` of them).
    pub payload: &'a [u8],
}

/// Why a ring-buffer record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than the fixed header.
    #[error("record of {0} bytes is shorter than the {EVENT_HEADER_LEN}-byte header")]
    TooShort(usize),
    /// The header claims more payload than the record holds.
    #[error("record claims {claimed} payload bytes but holds {held}")]
    LengthMismatch {
        /// `captured_len` from the header.
        claimed: u32,
        /// Bytes actually present after the header.
        held: usize,
    },
}

impl RecordError {
    /// Metric label.
    pub fn reason(self) -> &'static str {
        match self {
            RecordError::TooShort(_) => "record_too_short",
            RecordError::LengthMismatch { .. } => "record_length_mismatch",
        }
    }
}

impl<'a> Record<'a> {
    /// Decodes a ring-buffer record.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, RecordError> {
        let Some((head, rest)) = bytes.split_at_checked(EVENT_HEADER_LEN) else {
            return Err(RecordError::TooShort(bytes.len()));
        };
        // SAFETY: `head` is exactly size_of::<EventHeader>() bytes, EventHeader is a
        // #[repr(C)] POD type for which every bit pattern is valid, and read_unaligned copes
        // with the ring's 8-byte (not necessarily 8-aligned from Rust's view) placement.
        let header = unsafe { head.as_ptr().cast::<EventHeader>().read_unaligned() };
        let payload = usize::try_from(header.captured_len)
            .ok()
            .and_then(|len| rest.get(..len))
            .ok_or(RecordError::LengthMismatch {
                claimed: header.captured_len,
                held: rest.len(),
            })?;
        Ok(Self { header, payload })
    }

    /// Source socket address.
    pub fn src(&self) -> SocketAddr {
        SocketAddr::new(
            ip(self.header.ip_version, self.header.src_addr),
            self.header.src_port,
        )
    }

    /// Destination socket address.
    pub fn dst(&self) -> SocketAddr {
        SocketAddr::new(
            ip(self.header.ip_version, self.header.dst_addr),
            self.header.dst_port,
        )
    }

    /// Whether the payload was cut short.
    pub fn truncated(&self) -> bool {
        self.header.flags & sipnotify_common::FLAG_TRUNCATED != 0
    }

    /// The capture metadata for a notification built from this record.
    pub fn meta(&self, captured_at: SystemTime, iface: Option<Arc<str>>) -> CaptureMeta {
        CaptureMeta {
            captured_at,
            src: self.src(),
            dst: self.dst(),
            iface,
        }
    }
}

fn ip(version: u8, bytes: [u8; 16]) -> IpAddr {
    if version == 4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

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

/// Runs the capture decision on one frame and counts it in `counts` as the XDP program counts
/// in its map: `packets_seen`, the tallies, and one outcome (`copied` for a record).
pub fn inspect<'a>(
    frame: &SplicedFrame<'a>,
    ports: &SipConfig,
    counts: &mut CounterSet,
    timestamp_ns: u64,
    ifindex: u32,
) -> Result<Record<'a>, Skip> {
    counts.add(Counter::PacketsSeen);
    match decide::decide(frame, ports, &mut |c| counts.add(c)) {
        Decision::Skip(skip) => {
            counts.add(skip.counter());
            Err(skip)
        }
        Decision::Capture(capture) => {
            let present = frame.tail(capture.payload_offset());
            let len = capture.captured_len(present.len());
            let header = capture.header(len, timestamp_ns, ifindex, &mut |c| counts.add(c));
            counts.add(Counter::Copied);
            Ok(Record {
                header,
                payload: &present[..len],
            })
        }
    }
}

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
///
/// The offset is taken once at start; the daemon's lifetime is far shorter than the drift
/// NTP slewing could introduce between the two clocks in a way that matters for latency.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    /// Wall-clock time at monotonic zero.
    epoch: SystemTime,
}

impl MonotonicClock {
    /// Samples both clocks now.
    pub fn new() -> Self {
        let mono = monotonic_now();
        let wall = SystemTime::now();
        Self {
            epoch: wall.checked_sub(mono).unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    /// Wall-clock time of a `bpf_ktime_get_ns()` timestamp.
    pub fn wall_time(&self, monotonic_ns: u64) -> SystemTime {
        self.epoch + Duration::from_nanos(monotonic_ns)
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

/// CLOCK_MONOTONIC now: the clock `bpf_ktime_get_ns()` reads.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the duration of the call; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_bytes(header: EventHeader, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; EVENT_HEADER_LEN];
        // SAFETY: `bytes` holds EVENT_HEADER_LEN bytes, the size of EventHeader.
        unsafe {
            bytes
                .as_mut_ptr()
                .cast::<EventHeader>()
                .write_unaligned(header)
        };
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn decodes_a_record_and_its_addresses() {
        let mut header = EventHeader {
            captured_len: 9,
            payload_len: 9,
            ip_version: 4,
            src_port: 5060,
            dst_port: 5061,
            ..EventHeader::default()
        };
        header.src_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        header.dst_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let bytes = record_bytes(header, b"NOTIFY x!");
        let record = Record::decode(&bytes).unwrap();
        assert_eq!(record.payload, b"NOTIFY x!");
        assert_eq!(record.src().to_string(), "10.0.0.1:5060");
        assert_eq!(record.dst().to_string(), "10.0.0.2:5061");
        assert!(!record.truncated());
    }

    #[test]
    fn ipv6_addresses_use_all_sixteen_bytes() {
        let header = EventHeader {
            ip_version: 6,
            src_addr: Ipv6Addr::LOCALHOST.octets(),
            dst_port: 5061,
            ..EventHeader::default()
        };
        let bytes = record_bytes(header, b"");
        assert_eq!(Record::decode(&bytes).unwrap().src().to_string(), "[::1]:0");
    }

    #[test]
    fn rejects_short_and_inconsistent_records() {
        assert_eq!(Record::decode(&[0; 10]), Err(RecordError::TooShort(10)));
        let header = EventHeader {
            captured_len: 100,
            ..EventHeader::default()
        };
        let bytes = record_bytes(header, b"NOTIFY ");
        assert_eq!(
            Record::decode(&bytes),
            Err(RecordError::LengthMismatch {
                claimed: 100,
                held: 7
            })
        );
    }

    #[test]
    fn monotonic_timestamps_map_to_now() {
        let clock = MonotonicClock::new();
        let now = clock.wall_time(monotonic_now().as_nanos() as u64);
        let skew = now
            .duration_since(SystemTime::now())
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_millis(50), "skew {skew:?}");
    }
}
