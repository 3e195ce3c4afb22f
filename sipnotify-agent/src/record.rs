//! What every source hands the pipeline: a [`Record`], the shared [`EventHeader`] (addresses,
//! ports, flags, lengths, a timestamp) plus the payload bytes, and the clock that dates the
//! kernel's records ([`MonotonicClock`]).
//!
//! A record is either a whole NOTIFY (its UDP payload, or a message reassembly put together)
//! or, flagged [`FLAG_IP_PACKET`], an IP packet for the pipeline's reassembly stage. The
//! kernel's records are decoded here with length checks first, since a record that does not
//! match the ABI must be counted and skipped, never read past its end.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use sipnotify_common::{EVENT_HEADER_LEN, EventHeader, FLAG_IP_PACKET};

use crate::event::CaptureMeta;

/// One captured NOTIFY (or IP packet, [`FLAG_IP_PACKET`]) with its capture header.
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

    /// An IP packet (`l3` starts at its IPv4 or IPv6 header) for the reassembly stage, captured
    /// at `timestamp_ns`; its addresses are read from the packet there.
    pub fn ip_packet(l3: &'a [u8], timestamp_ns: u64) -> Self {
        let len = u32::try_from(l3.len()).unwrap_or(u32::MAX);
        Self {
            header: EventHeader {
                timestamp_ns,
                payload_len: len,
                captured_len: len,
                flags: FLAG_IP_PACKET,
                ..EventHeader::default()
            },
            payload: l3,
        }
    }

    /// Whether this is an IP packet for reassembly rather than a whole NOTIFY.
    pub fn is_ip_packet(&self) -> bool {
        self.header.flags & FLAG_IP_PACKET != 0
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

    #[test]
    fn monotonic_timestamps_map_to_now() {
        let clock = MonotonicClock::new();
        let now = clock.wall_time(monotonic_now().as_nanos() as u64);
        let skew = now
            .duration_since(SystemTime::now())
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_millis(50), "skew {skew:?}");
    }

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
}
