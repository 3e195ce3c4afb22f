//! Header names: compact forms (RFC 3261 §7.3.3), case-insensitive comparison, and the
//! word-wise classification of the names the NOTIFY parser reads.

/// Compact header names (RFC 3261 §7.3.3 and the extensions that registered one), so that
/// `i:` and `Call-ID:` are the same header everywhere.
const COMPACT_FORMS: &[(u8, &str)] = &[
    (b'a', "Accept-Contact"),
    (b'b', "Referred-By"),
    (b'c', "Content-Type"),
    (b'd', "Request-Disposition"),
    (b'e', "Content-Encoding"),
    (b'f', "From"),
    (b'i', "Call-ID"),
    (b'j', "Reject-Contact"),
    (b'k', "Supported"),
    (b'l', "Content-Length"),
    (b'm', "Contact"),
    (b'n', "Identity-Info"),
    (b'o', "Event"),
    (b'r', "Refer-To"),
    (b's', "Subject"),
    (b't', "To"),
    (b'u', "Allow-Events"),
    (b'v', "Via"),
    (b'x', "Session-Expires"),
    (b'y', "Identity"),
];

/// The long form of a header name: compact names are expanded, others returned as they are.
pub fn canonical_name(name: &[u8]) -> &[u8] {
    if let [letter] = name {
        let letter = letter.to_ascii_lowercase();
        if let Some((_, long)) = COMPACT_FORMS.iter().find(|(c, _)| *c == letter) {
            return long.as_bytes();
        }
    }
    name
}

/// Whether two header names denote the same header: case-insensitive, compact forms equal to
/// their long names.
pub fn names_match(a: &[u8], b: &[u8]) -> bool {
    canonical_name(a).eq_ignore_ascii_case(canonical_name(b))
}

/// A lowercase ASCII header name prepared for case-insensitive comparison in 8-byte words:
/// `(word(name) | fold) == word(lower)`, where `fold` has 0x20 exactly at the bytes where
/// `lower` holds a letter. OR-ing 0x20 lowercases a letter, and other bytes must match as
/// they are, so the comparison is exact. Names of 8 bytes or more are covered by full words,
/// the last one realigned to end at the last byte; shorter ones use one zero-padded word.
struct LowerName {
    len: usize,
    words: [u64; 3],
    folds: [u64; 3],
}

impl LowerName {
    const fn new(lower: &[u8]) -> Self {
        let len = lower.len();
        let mut words = [0u64; 3];
        let mut folds = [0u64; 3];
        let count = Self::count(len);
        let mut w = 0;
        while w < count {
            let at = Self::offset(len, w, count);
            let mut i = 0;
            while i < 8 && at + i < len {
                let b = lower[at + i];
                words[w] |= (b as u64) << (8 * i);
                if b.is_ascii_lowercase() {
                    folds[w] |= 0x20 << (8 * i);
                }
                i += 1;
            }
            w += 1;
        }
        Self { len, words, folds }
    }

    /// How many words cover `len` bytes (at least one; names here are at most 24 bytes).
    const fn count(len: usize) -> usize {
        if len <= 8 { 1 } else { len.div_ceil(8) }
    }

    /// Where word `w` of `count` starts.
    const fn offset(len: usize, w: usize, count: usize) -> usize {
        if len >= 8 && w + 1 == count {
            len - 8
        } else {
            8 * w
        }
    }

    #[inline(always)]
    fn matches(&self, name: &[u8]) -> bool {
        if name.len() != self.len {
            return false;
        }
        let count = Self::count(self.len);
        let mut diff = 0u64;
        for w in 0..count {
            let at = Self::offset(self.len, w, count);
            let mut word = [0u8; 8];
            let chunk = &name[at..(at + 8).min(self.len)];
            word[..chunk.len()].copy_from_slice(chunk);
            diff |= (u64::from_le_bytes(word) | self.folds[w]) ^ self.words[w];
        }
        diff == 0
    }
}

/// The headers the NOTIFY parser reads; everything else is [`Known::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Known {
    CallId,
    To,
    From,
    Via,
    Event,
    CSeq,
    ContentLength,
    CallUuid,
    /// A common header the parser ignores (Contact, Max-Forwards, …): recognised only so that
    /// its name needs no token check.
    Ignored,
    Other,
}

/// Classifies a header name with one length switch and one or two word-wise
/// case-insensitive compares: this runs for every header of every datagram.
#[inline(always)]
pub(crate) fn classify(name: &[u8]) -> Known {
    // Built at compile time, so each comparison is one or three word operations.
    const TO: LowerName = LowerName::new(b"to");
    const VIA: LowerName = LowerName::new(b"via");
    const FROM: LowerName = LowerName::new(b"from");
    const CSEQ: LowerName = LowerName::new(b"cseq");
    const EVENT: LowerName = LowerName::new(b"event");
    const CALL_ID: LowerName = LowerName::new(b"call-id");
    const CONTACT: LowerName = LowerName::new(b"contact");
    const MAX_FORWARDS: LowerName = LowerName::new(b"max-forwards");
    const CONTENT_TYPE: LowerName = LowerName::new(b"content-type");
    const CONTENT_LENGTH: LowerName = LowerName::new(b"content-length");
    const CALL_UUID: LowerName = LowerName::new(b"x-genesys-calluuid");
    const SUBSCRIPTION_STATE: LowerName = LowerName::new(b"subscription-state");
    match name.len() {
        // `| 0x20` lowercases ASCII letters; only letters can match the arms.
        1 => match name[0] | 0x20 {
            b'i' => Known::CallId,
            b't' => Known::To,
            b'f' => Known::From,
            b'v' => Known::Via,
            b'o' => Known::Event,
            b'l' => Known::ContentLength,
            _ => Known::Other,
        },
        2 if TO.matches(name) => Known::To,
        3 if VIA.matches(name) => Known::Via,
        4 if FROM.matches(name) => Known::From,
        4 if CSEQ.matches(name) => Known::CSeq,
        5 if EVENT.matches(name) => Known::Event,
        7 if CALL_ID.matches(name) => Known::CallId,
        14 if CONTENT_LENGTH.matches(name) => Known::ContentLength,
        18 if CALL_UUID.matches(name) => Known::CallUuid,
        // What Genesys SIP Server sends besides the fields above.
        7 if CONTACT.matches(name) => Known::Ignored,
        12 if MAX_FORWARDS.matches(name) || CONTENT_TYPE.matches(name) => Known::Ignored,
        18 if SUBSCRIPTION_STATE.matches(name) => Known::Ignored,
        _ => Known::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_case_insensitively_with_compact_forms() {
        for (a, b) in [
            ("i", "Call-ID"),
            ("I", "call-id"),
            ("t", "To"),
            ("f", "FROM"),
            ("v", "via"),
            ("o", "Event"),
            ("l", "Content-Length"),
            ("m", "Contact"),
            ("c", "Content-Type"),
            ("k", "Supported"),
            ("s", "Subject"),
            ("e", "Content-Encoding"),
            ("u", "Allow-Events"),
            ("x-genesys-calluuid", "X-Genesys-CallUUID"),
        ] {
            assert!(names_match(a.as_bytes(), b.as_bytes()), "{a} {b}");
        }
        assert!(!names_match(b"i", b"t"));
        assert!(!names_match(b"q", b"Call-ID"));
        assert!(!names_match(b"To", b"Tox"));
    }

    fn eq_lower(name: &[u8], lower: &[u8]) -> bool {
        LowerName::new(lower).matches(name)
    }

    #[test]
    fn lower_name_comparison_is_exact() {
        for lower in [
            &b"to"[..],
            b"via",
            b"call-id",
            b"content-length",
            b"x-genesys-calluuid",
            b"subscription-state",
            b"12345678",
            b"",
        ] {
            assert!(eq_lower(lower, lower));
            let upper = lower.to_ascii_uppercase();
            assert!(eq_lower(&upper, lower));
            for i in 0..lower.len() {
                for b in 0..=255u8 {
                    let mut name = lower.to_vec();
                    name[i] = b;
                    assert_eq!(
                        eq_lower(&name, lower),
                        name.eq_ignore_ascii_case(lower),
                        "{:?} vs {:?}",
                        String::from_utf8_lossy(&name),
                        String::from_utf8_lossy(lower)
                    );
                }
            }
            let mut longer = lower.to_vec();
            longer.push(b'x');
            assert!(!eq_lower(&longer, lower));
        }
    }

    #[test]
    fn classify_known_headers() {
        use Known::*;
        for (name, known) in [
            (&b"Call-ID"[..], CallId),
            (b"call-id", CallId),
            (b"i", CallId),
            (b"I", CallId),
            (b"TO", To),
            (b"t", To),
            (b"From", From),
            (b"F", From),
            (b"Via", Via),
            (b"v", Via),
            (b"Event", Event),
            (b"o", Event),
            (b"CSeq", CSeq),
            (b"Content-Length", ContentLength),
            (b"L", ContentLength),
            (b"X-Genesys-CallUUID", CallUuid),
            (b"x-genesys-calluuid", CallUuid),
            (b"Contact", Ignored),
            (b"Max-Forwards", Ignored),
            (b"subscription-state", Ignored),
            (b"m", Other),
            (b"Tx", Other),
            (b"\x49", CallId),
            (b"\x09", Other),
            (b"", Other),
        ] {
            assert_eq!(classify(name), known, "{:?}", String::from_utf8_lossy(name));
        }
    }
}
