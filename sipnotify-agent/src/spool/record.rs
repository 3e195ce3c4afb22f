//! One spool record on disk: `len u32 | crc32 u32 | id u64 | captured_ns u64 | payload`
//! (little-endian; the CRC covers id, time and payload), parsed without trusting a byte of it.

use super::codec;
use crate::event::Notification;

/// Bytes before the payload.
pub(super) const HEADER: usize = 24;
/// Larger lengths are corruption: a notification is well under 64 KiB.
pub(super) const MAX_PAYLOAD: usize = 256 << 10;

/// One record parsed from a byte slice.
pub(super) enum Parsed {
    Record {
        id: u64,
        captured_ns: u64,
        payload: std::ops::Range<usize>,
        next: usize,
    },
    /// The slice ends inside the record.
    Incomplete,
    /// Not a valid record at this position.
    Corrupt,
}

/// The record at `at` in `bytes`, checked against its length and CRC.
pub(super) fn parse_at(bytes: &[u8], at: usize) -> Parsed {
    let Some(header) = bytes.get(at..at + HEADER) else {
        return Parsed::Incomplete;
    };
    let word = |range: std::ops::Range<usize>| {
        let mut out = [0u8; 8];
        out[..range.len()].copy_from_slice(&header[range]);
        u64::from_le_bytes(out)
    };
    let len = word(0..4) as usize;
    let crc = word(4..8) as u32;
    if len > MAX_PAYLOAD {
        return Parsed::Corrupt;
    }
    let end = at + HEADER + len;
    let Some(body) = bytes.get(at + 8..end) else {
        return Parsed::Incomplete;
    };
    if crc32fast::hash(body) != crc {
        return Parsed::Corrupt;
    }
    Parsed::Record {
        id: word(8..16),
        captured_ns: word(16..24),
        payload: at + HEADER..end,
        next: end,
    }
}

/// Appends record `id` holding `n` to `out`.
pub(super) fn encode_record(id: u64, n: &Notification, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&codec::captured_ns(n).to_le_bytes());
    codec::encode(n, out);
    let len = (out.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The first position from `from` holding a valid record with an id in `min_id..end_id`.
pub(super) fn resync(bytes: &[u8], from: usize, min_id: u64, end_id: u64) -> Option<(usize, u64)> {
    (from..bytes.len().saturating_sub(HEADER - 1)).find_map(|at| match parse_at(bytes, at) {
        Parsed::Record { id, .. } if id >= min_id && id < end_id => Some((at, id)),
        _ => None,
    })
}
