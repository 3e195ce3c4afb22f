//! Fuzzes the HEP decoder with hostile datagrams: no panic, no read past the datagram, and
//! every outcome one of the metric labels. The first byte picks whether an auth key is
//! configured; a prefix of structured chunks steers the input into HEPv3's chunk walk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipnotify_agent::hep::{self, HepError};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key: Option<&[u8]> = (mode & 1 == 1).then_some(b"s3cret");
    check(rest, key);
    // The same bytes behind a HEPv3 header whose total matches, so the fuzzer spends its
    // time in the chunk walk rather than on the magic and the length.
    if mode & 2 == 2 && rest.len() + 6 <= usize::from(u16::MAX) {
        let mut packet = b"HEP3".to_vec();
        packet.extend_from_slice(&((rest.len() + 6) as u16).to_be_bytes());
        packet.extend_from_slice(rest);
        check(&packet, key);
    }
});

fn check(datagram: &[u8], key: Option<&[u8]>) {
    match hep::decode(datagram, key) {
        Ok(sip) => {
            assert!(!sip.payload.is_empty());
            let start = sip.payload.as_ptr() as usize - datagram.as_ptr() as usize;
            assert!(start + sip.payload.len() <= datagram.len());
            if key.is_some() {
                assert_eq!(sip.version, 3, "v1/v2 accepted with a key set");
            }
            let _ = hep::header(&sip);
        }
        Err(err) => assert!(HepError::OUTCOMES.contains(&err.outcome())),
    }
}
