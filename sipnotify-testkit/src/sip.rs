//! Genesys-like SIP traffic for the tests, the benches and the demo: one NOTIFY per index,
//! with identifiers the receiving side can map back to the index.

/// A Genesys SIP Server `NOTIFY` like the one in the corpus (539 bytes for `i = 0`), with a
/// Call-ID, CSeq and Via branch unique to `i`.
pub fn genesys_notify(i: u32, dn: &str, event: &str) -> Vec<u8> {
    format!(
        "NOTIFY sip:192.168.210.54:5061 SIP/2.0\r\n\
From: sip:1003@192.168.210.81:5060;tag=A2BB77D7-EABF-4274-8BD4-6D98F1BD8715-24\r\n\
To: <sip:{dn}@192.168.210.81>;tag=f90c6227-8e6d-4205-a84d-6eda8248601f\r\n\
Call-ID: {i:08X}-F320-46F0-975D-6290F4CB29F6-6@192.168.210.81\r\n\
CSeq: 2 NOTIFY\r\n\
Content-Length: 0\r\n\
Via: SIP/2.0/UDP 192.168.210.81:5060;branch=z9hG4bKD15025DA-835B-4C9E-9D96-{i:012X}\r\n\
Contact: <sip:1003@192.168.210.81:5060>\r\n\
Event: {event}\r\n\
Subscription-State: active\r\n\
Max-Forwards: 70\r\n\
X-Genesys-CallUUID: {}\r\n\r\n",
        call_uuid(i)
    )
    .into_bytes()
}

/// The CallUUID [`genesys_notify`] puts in message `i`.
pub fn call_uuid(i: u32) -> String {
    format!("TTL7J9EM750GP936CFL0EO{i:010}")
}

/// The Call-ID [`genesys_notify`] puts in message `i`.
pub fn call_id(i: u32) -> String {
    format!("{i:08X}-F320-46F0-975D-6290F4CB29F6-6@192.168.210.81")
}
