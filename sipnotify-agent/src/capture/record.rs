//! One captured NOTIFY record: the shared [`EventHeader`] plus the UDP payload, from the live
//! ring buffer or built by the replay.
//!
//! The kernel's records are decoded here with length checks first, since a record that does
//! not match the ABI must be counted and skipped, never read past its end.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::SystemTime,
};

use sipnotify_common::{EVENT_HEADER_LEN, EventHeader};

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
}
