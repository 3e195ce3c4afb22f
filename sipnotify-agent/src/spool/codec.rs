//! The on-disk form of one notification: a small versioned binary encoding.
//!
//! Hand-written rather than serde + a binary format because the record must round-trip every
//! field (capture time to the nanosecond, socket addresses, interface) with no schema crate in
//! the dependency tree, and decoding must never trust a length it has not checked: a spool file
//! is input like any other. The record around it (length, CRC32, id) is in `log.rs`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::event::{CaptureMeta, Notification};

/// Bumped when the layout changes; a record of another version is reported as corrupt.
const VERSION: u8 = 1;

/// Why a payload does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The payload ends before a field does.
    #[error("record ends early at byte {0}")]
    Short(usize),
    /// A layout version this build does not know.
    #[error("unknown record version {0}")]
    Version(u8),
    /// A text field is not UTF-8.
    #[error("a text field is not utf-8")]
    Utf8,
    /// An address family tag other than 4 or 6.
    #[error("unknown address family {0}")]
    Family(u8),
    /// Bytes left over after the last field.
    #[error("{0} bytes after the last field")]
    Trailing(usize),
}

/// Appends the encoding of `n` to `out`.
pub(crate) fn encode(n: &Notification, out: &mut Vec<u8>) {
    out.push(VERSION);
    put_str(out, &n.dn);
    put_str(out, &n.call_id);
    put_opt(out, n.call_uuid.as_deref());
    put_str(out, &n.event);
    put_opt(out, n.caller.as_deref());
    out.extend_from_slice(&n.cseq.to_le_bytes());
    put_opt(out, n.via_branch.as_deref());
    out.extend_from_slice(&(n.extra_headers.len() as u32).to_le_bytes());
    for (name, value) in &n.extra_headers {
        put_str(out, name);
        put_str(out, value);
    }
    // A capture clock before 1970 is not a thing the kernel or a pcap gives us; clamp to 0.
    let since = n
        .meta
        .captured_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    out.extend_from_slice(&since.as_secs().to_le_bytes());
    out.extend_from_slice(&since.subsec_nanos().to_le_bytes());
    put_addr(out, n.meta.src);
    put_addr(out, n.meta.dst);
    put_opt(out, n.meta.iface.as_deref());
}

/// The capture time in nanoseconds since the epoch, as stored in the record header.
pub(crate) fn captured_ns(n: &Notification) -> u64 {
    n.meta
        .captured_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Decodes one payload written by [`encode`].
pub(crate) fn decode(bytes: &[u8]) -> Result<Notification, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let dn = r.string()?;
    let call_id = r.string()?;
    let call_uuid = r.opt()?;
    let event = r.string()?;
    let caller = r.opt()?;
    let cseq = r.u32()?;
    let via_branch = r.opt()?;
    let extras = r.u32()? as usize;
    // Each extra takes at least 8 bytes: a count beyond that is corruption, not an allocation.
    if extras > r.left() / 8 {
        return Err(DecodeError::Short(r.at));
    }
    let mut extra_headers = Vec::with_capacity(extras);
    for _ in 0..extras {
        extra_headers.push((r.string()?, r.string()?));
    }
    let secs = r.u64()?;
    let nanos = r.u32()?;
    let captured_at = SystemTime::UNIX_EPOCH
        .checked_add(Duration::new(secs, nanos.min(999_999_999)))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let src = r.addr()?;
    let dst = r.addr()?;
    let iface = r.opt()?.map(Arc::<str>::from);
    if r.left() > 0 {
        return Err(DecodeError::Trailing(r.left()));
    }
    Ok(Notification {
        dn,
        call_id,
        call_uuid,
        event,
        caller,
        cseq,
        via_branch,
        extra_headers,
        meta: CaptureMeta {
            captured_at,
            src,
            dst,
            iface,
        },
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

fn put_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.left() < n {
            return Err(DecodeError::Short(self.at));
        }
        let slice = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.u32()? as usize;
        let raw = self.take(len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Utf8)
    }

    fn opt(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.string().map(Some),
        }
    }

    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            other => return Err(DecodeError::Family(other)),
        };
        let port = u16::from_le_bytes(self.array()?);
        Ok(SocketAddr::new(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::sample;

    #[test]
    fn every_field_round_trips() {
        let mut n = sample();
        n.extra_headers = vec![("X-Genesys-Foo".into(), "bar".into())];
        n.meta.dst = "[2001:db8::1]:5061".parse().unwrap();
        n.meta.captured_at = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        n.caller = None;
        let mut bytes = Vec::new();
        encode(&n, &mut bytes);
        assert_eq!(decode(&bytes), Ok(n.clone()));
        assert_eq!(captured_ns(&n), 1_700_000_000_123_456_789);
    }

    #[test]
    fn every_truncation_and_bad_byte_is_an_error_not_a_panic() {
        let mut bytes = Vec::new();
        encode(&sample(), &mut bytes);
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "prefix of {len} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(DecodeError::Trailing(1)));
        let mut version = bytes.clone();
        version[0] = 9;
        assert_eq!(decode(&version), Err(DecodeError::Version(9)));
        // Flip every byte in turn: decoding may succeed with other values, but never panics.
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0xff;
            let _ = decode(&flipped);
        }
    }
}
