//! The notification that flows from the parser to the sinks, and its JSON form.
//!
//! The bridge contract is one JSON object per NOTIFY with `dn`, `call_id`, `call_uuid` and
//! `event` (what the bridge reads to attach a call to a WebRTC session); the opt-in extras add the caller, CSeq, capture time, addresses and interface.
//! Stdout and HTTP sinks share this one encoding so `--stdout` shows exactly what the bridge
//! would receive.

use std::{net::SocketAddr, sync::Arc, time::SystemTime};

use serde::{Serialize, Serializer, ser::SerializeMap as _};

/// Where and when a NOTIFY was captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureMeta {
    /// Wall-clock capture time (the kernel timestamp, or the pcap record time on replay).
    pub captured_at: SystemTime,
    /// Sender of the datagram.
    pub src: SocketAddr,
    /// Receiver of the datagram.
    pub dst: SocketAddr,
    /// Interface the frame arrived on, when known.
    pub iface: Option<Arc<str>>,
}

/// One parsed NOTIFY, owned, ready for de-duplication and delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The To user (the agent's DN), %-decoded.
    pub dn: String,
    /// The Call-ID, byte-exact (lossy only where it is not UTF-8).
    pub call_id: String,
    /// `X-Genesys-CallUUID`, trimmed; `None` only when delivery without it is enabled.
    pub call_uuid: Option<String>,
    /// The event type of the Event header, as sent.
    pub event: String,
    /// The From user, when it has one.
    pub caller: Option<String>,
    /// The CSeq number.
    pub cseq: u32,
    /// The branch parameter of the top Via, when present.
    pub via_branch: Option<String>,
    /// Configured extra headers found in the message, under their configured names.
    pub extra_headers: Vec<(String, String)>,
    /// Capture metadata.
    pub meta: CaptureMeta,
}

/// Which optional members the JSON object carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JsonOptions {
    /// Add caller, cseq, captured_at, src, dst and iface.
    pub extras: bool,
    /// Add `id` (the idempotency key), for array-mode bodies.
    pub with_id: bool,
}

/// 64-bit FNV-1a: stable across runs and builds, unlike std's randomly seeded hasher, which
/// matters for keys the bridge compares across agent restarts. Hand-written: six lines.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fnv1a(u64);

impl Fnv1a {
    pub(crate) const fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) const fn finish(self) -> u64 {
        self.0
    }
}

impl Notification {
    /// A key that is the same for every copy of one SIP transaction (retransmissions included)
    /// and differs between transactions: the bridge's `Idempotency-Key`.
    pub fn idempotency_key(&self) -> String {
        let mut hash = Fnv1a::new();
        self.hash_transaction(&mut hash);
        format!("{:016x}-{}", hash.finish(), self.cseq)
    }

    /// Feeds the transaction identity (Call-ID, top Via branch, CSeq) to `hash`.
    pub(crate) fn hash_transaction(&self, hash: &mut Fnv1a) {
        hash.write(self.call_id.as_bytes());
        hash.write(b"\0");
        hash.write(self.via_branch.as_deref().unwrap_or("").as_bytes());
        hash.write(b"\0");
        hash.write(&self.cseq.to_be_bytes());
    }

    /// The JSON object for this notification.
    pub fn json(&self, options: JsonOptions) -> JsonNotification<'_> {
        JsonNotification {
            notification: self,
            options,
        }
    }
}

/// Serializes a [`Notification`] as the bridge object; see [`Notification::json`].
#[derive(Clone, Copy, Debug)]
pub struct JsonNotification<'a> {
    notification: &'a Notification,
    options: JsonOptions,
}

impl Serialize for JsonNotification<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let n = self.notification;
        let mut map = serializer.serialize_map(None)?;
        if self.options.with_id {
            map.serialize_entry("id", &n.idempotency_key())?;
        }
        map.serialize_entry("dn", &n.dn)?;
        map.serialize_entry("call_id", &n.call_id)?;
        map.serialize_entry("call_uuid", &n.call_uuid)?;
        map.serialize_entry("event", &n.event)?;
        if self.options.extras {
            map.serialize_entry("caller", &n.caller)?;
            map.serialize_entry("cseq", &n.cseq)?;
            let captured_at = n
                .meta
                .captured_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            map.serialize_entry("captured_at", &captured_at)?;
            map.serialize_entry("src", &n.meta.src.to_string())?;
            map.serialize_entry("dst", &n.meta.dst.to_string())?;
            map.serialize_entry("iface", &n.meta.iface.as_deref())?;
        }
        for (name, value) in &n.extra_headers {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{net::Ipv4Addr, time::Duration};

    use super::*;

    pub(crate) fn sample() -> Notification {
        Notification {
            dn: "1002".into(),
            call_id: "D6F9-82@192.168.210.81".into(),
            call_uuid: Some("UIVB8J6JE91C53UIM3VI59VHQ400001R".into()),
            event: "talk".into(),
            caller: Some("5551234".into()),
            cseq: 3,
            via_branch: Some("z9hG4bK-1".into()),
            extra_headers: Vec::new(),
            meta: CaptureMeta {
                captured_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_500),
                src: (Ipv4Addr::new(10, 0, 0, 1), 5060).into(),
                dst: (Ipv4Addr::new(10, 0, 0, 2), 5061).into(),
                iface: Some("eth0".into()),
            },
        }
    }

    #[test]
    fn default_object_has_exactly_the_bridge_keys() {
        let json = serde_json::to_string(&sample().json(JsonOptions::default())).unwrap();
        assert_eq!(
            json,
            r#"{"dn":"1002","call_id":"D6F9-82@192.168.210.81","call_uuid":"UIVB8J6JE91C53UIM3VI59VHQ400001R","event":"talk"}"#
        );
    }

    #[test]
    fn extras_and_id_are_opt_in() {
        let n = sample();
        let value = serde_json::to_value(n.json(JsonOptions {
            extras: true,
            with_id: true,
        }))
        .unwrap();
        assert_eq!(value["id"], n.idempotency_key());
        assert_eq!(value["caller"], "5551234");
        assert_eq!(value["cseq"], 3);
        assert_eq!(value["captured_at"], 1.5);
        assert_eq!(value["src"], "10.0.0.1:5060");
        assert_eq!(value["iface"], "eth0");
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        let hash = |bytes: &[u8]| {
            let mut h = Fnv1a::new();
            h.write(bytes);
            h.finish()
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn idempotency_key_identifies_the_transaction() {
        let a = sample();
        let mut retransmission = sample();
        retransmission.meta.captured_at += Duration::from_secs(4);
        assert_eq!(a.idempotency_key(), retransmission.idempotency_key());
        let mut next = sample();
        next.cseq = 4;
        next.via_branch = Some("z9hG4bK-2".into());
        assert_ne!(a.idempotency_key(), next.idempotency_key());
    }
}
