//! Fuzzes the SIP NOTIFY parser and the header layer: no panic, no out-of-bounds read, no hang,
//! and every accepted message turns into a notification whose JSON parses back.
#![no_main]

use std::{net::Ipv4Addr, time::SystemTime};

use libfuzzer_sys::fuzz_target;
use sipnotify_agent::{
    event::{CaptureMeta, JsonOptions},
    sip::{self, Header, ParseOptions},
};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the CallUUID policy so both paths get explored.
    let allow_missing = data.first().is_some_and(|b| b & 1 == 1);
    let options = ParseOptions::new(["Contact", "m", "X-Genesys-ANI"], allow_missing);
    if let Ok(notify) = sip::parse(data, &options) {
        let meta = CaptureMeta {
            captured_at: SystemTime::UNIX_EPOCH,
            src: (Ipv4Addr::LOCALHOST, 5060).into(),
            dst: (Ipv4Addr::LOCALHOST, 5061).into(),
            iface: None,
        };
        let notification = notify.to_notification(&options, meta);
        assert!(!notification.dn.is_empty());
        assert!(!notification.call_id.is_empty());
        assert!(!notification.event.is_empty());
        assert!(allow_missing || notification.call_uuid.is_some());
        let json = serde_json::to_string(&notification.json(JsonOptions {
            extras: true,
            with_id: true,
        }))
        .expect("a notification always serializes");
        let _: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    }
    let mut slots = [Header::EMPTY; 64];
    if let Ok(message) = sip::parse_message(data, &mut slots) {
        let _ = message.get("Call-ID");
        if let Some(to) = message.get("To") {
            let _ = sip::dn_of(to).map(|dn| dn.to_string_lossy());
        }
    }
});
