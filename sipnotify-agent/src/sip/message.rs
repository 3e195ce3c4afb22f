//! The SIP header layer (RFC 3261 §7, §20): start line, header fields and body framing, for any
//! SIP message, without allocating.
//!
//! Two ways in, in the spirit of `httparse`:
//! - [`Headers`], a single-pass iterator over the header section that yields each field with its
//!   folded continuation lines already joined (the NOTIFY parser uses this and keeps only the
//!   fields it needs);
//! - [`parse_message`], which fills caller-provided [`Header`] slots and frames the body by
//!   Content-Length, for tests and tools that want the whole message.
//!
//! Values are borrowed slices of the datagram. A folded value keeps its inner CRLF + whitespace
//! (RFC 3261 §7.3.1 says it is equivalent to one SP); consumers treat CR and LF as whitespace.

use super::ParseError;

/// Index of the first `needle` in `haystack`. SIP lines and values are short (tens of bytes),
/// where the `memchr` crate's runtime dispatch costs more than the search itself: this inlines
/// into the caller and tests 16 bytes per step with SSE2 (part of the x86-64 baseline), or 8
/// per step with SWAR elsewhere.
#[inline(always)]
pub(crate) fn find_byte(needle: u8, haystack: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        let mut chunks = haystack.chunks_exact(16);
        let mut offset = 0;
        // SAFETY: SSE2 is always available on x86-64; `_mm_set1_epi8` reads no memory.
        let splat = unsafe { _mm_set1_epi8(needle as i8) };
        for chunk in &mut chunks {
            // SAFETY: SSE2 is always available on x86-64, and `chunks_exact(16)` makes
            // `chunk` exactly 16 readable bytes, which is what the unaligned load reads.
            let mask = unsafe {
                let bytes = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
                _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, splat))
            };
            if mask != 0 {
                return Some(offset + mask.trailing_zeros() as usize);
            }
            offset += 16;
        }
        find_byte_swar(needle, chunks.remainder()).map(|i| offset + i)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        find_byte_swar(needle, haystack)
    }
}

/// Index of the first byte of `haystack` that is one of `needles`: [`find_byte`] for a small
/// set (the set is a constant array, so the per-needle compares unroll).
#[inline(always)]
pub(crate) fn find_any<const N: usize>(needles: [u8; N], haystack: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8, _mm_setzero_si128,
        };
        let mut chunks = haystack.chunks_exact(16);
        let mut offset = 0;
        for chunk in &mut chunks {
            // SAFETY: SSE2 is always available on x86-64, and `chunks_exact(16)` makes
            // `chunk` exactly 16 readable bytes, which is what the unaligned load reads.
            let mask = unsafe {
                let bytes = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
                let mut hits = _mm_setzero_si128();
                for needle in needles {
                    let eq = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(needle as i8));
                    hits = _mm_or_si128(hits, eq);
                }
                _mm_movemask_epi8(hits)
            };
            if mask != 0 {
                return Some(offset + mask.trailing_zeros() as usize);
            }
            offset += 16;
        }
        chunks
            .remainder()
            .iter()
            .position(|b| needles.contains(b))
            .map(|i| offset + i)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        haystack.iter().position(|b| needles.contains(b))
    }
}

/// [`find_byte`] without SIMD: eight bytes per step in a `u64`.
#[inline(always)]
fn find_byte_swar(needle: u8, haystack: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let splat = ONES * u64::from(needle);
    let mut chunks = haystack.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        // `chunks_exact(8)` yields 8-byte chunks, so the conversion cannot fail.
        let word = <[u8; 8]>::try_from(chunk).map_or(0, u64::from_le_bytes) ^ splat;
        // A zero byte in `word` is a match. Borrows only run upwards, so the lowest flagged
        // byte is always a true match (and little-endian puts the first byte lowest).
        let found = word.wrapping_sub(ONES) & !word & HIGHS;
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|i| offset + i)
}

/// Whitespace as it may appear inside a (possibly folded) header value.
#[inline]
pub(crate) const fn is_lws(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

/// `value` without leading and trailing linear whitespace (CR and LF included, for folding).
#[inline(always)]
pub(crate) fn trim_lws(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&b| !is_lws(b))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| !is_lws(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// RFC 3261 `token` characters: alphanum and `-.!%*_+`'~`.
static TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        i += 1;
    }
    table
};

/// Whether `byte` may appear in an RFC 3261 `token`.
#[inline(always)]
pub(crate) fn is_token_byte(byte: u8) -> bool {
    TOKEN[usize::from(byte)]
}

/// Whether `bytes` is a non-empty RFC 3261 `token`.
#[inline(always)]
pub(crate) fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| is_token_byte(b))
}

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

/// One header field: its name as written and its value without surrounding whitespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// The field name as written (case and compact form preserved).
    pub name: &'a [u8],
    /// The value, trimmed; folded continuation lines stay inside it with their CRLF.
    pub value: &'a [u8],
}

impl Header<'_> {
    /// An empty slot, to initialise the array passed to [`parse_message`].
    pub const EMPTY: Header<'static> = Header {
        name: b"",
        value: b"",
    };

    /// Whether this header is `name` (case-insensitive, compact forms accepted on both sides).
    pub fn is(&self, name: &str) -> bool {
        names_match(self.name, name.as_bytes())
    }
}

/// The first line of a SIP message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// `Method SP Request-URI SP SIP/2.0`.
    Request {
        /// The method token, case preserved (methods are case-sensitive).
        method: &'a [u8],
        /// The Request-URI, unparsed.
        uri: &'a [u8],
    },
    /// `SIP/2.0 SP Status-Code SP Reason-Phrase`.
    Response {
        /// The three-digit status code.
        code: u16,
        /// The reason phrase, possibly empty, possibly not UTF-8.
        reason: &'a [u8],
    },
}

/// Skips the CRLFs (keep-alives, RFC 5626 §3.5.1) that may precede a start line.
#[inline]
pub(crate) fn skip_leading_newlines(buf: &[u8]) -> usize {
    buf.iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len())
}

/// Splits off the line starting at `start`: returns it without its CRLF or bare LF, and the
/// offset of the next line.
#[inline]
pub(crate) fn line_at(buf: &[u8], start: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(start..)?;
    let newline = find_byte(b'\n', rest)?;
    let line = &rest[..newline];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, start + newline + 1))
}

/// Parses what follows `Method SP` in a request line: `Request-URI SP SIP-Version`.
/// One SP between elements and none at the end (RFC 3261 §7.1; RFC 4475 §3.1.2.9-10 permit
/// rejecting the liberal forms). The version is case-insensitive (§7.1).
#[inline]
pub(crate) fn request_uri_and_version(rest: &[u8]) -> Result<&[u8], ParseError> {
    // The URI ends at the SP, holds only visible characters, and has a scheme (RFC 3986
    // §3.1: a letter first, then a colon), which rules out `<uri>` (RFC 4475 §3.1.2.7).
    let Some(space) = find_byte(b' ', rest) else {
        return Err(ParseError::BadRequestLine);
    };
    let (uri, version) = (&rest[..space], &rest[space + 1..]);
    // No early exit, so this compiles to a few wide compares.
    let visible = uri
        .iter()
        .fold(true, |ok, &b| ok & (b > b' ') & (b != 0x7f));
    let scheme_first = uri.first().is_some_and(u8::is_ascii_alphabetic);
    if !visible || !scheme_first || find_byte(b':', uri).is_none() {
        return Err(ParseError::BadRequestLine);
    }
    if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        return Err(ParseError::BadRequestLine);
    }
    Ok(uri)
}

/// Parses the start line of any SIP message (after skipping leading CRLFs). Returns it and the
/// offset where the header section begins.
pub fn parse_start_line(buf: &[u8]) -> Result<(StartLine<'_>, usize), ParseError> {
    let start = skip_leading_newlines(buf);
    if start == buf.len() {
        return Err(ParseError::Empty);
    }
    let (line, next) = line_at(buf, start).ok_or(ParseError::UnterminatedHeaders)?;
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        return parse_status_line(line).map(|line| (line, next));
    }
    let method_len = line
        .iter()
        .position(|&b| !is_token_byte(b))
        .unwrap_or(line.len());
    if method_len == 0 || line.get(method_len) != Some(&b' ') {
        return Err(ParseError::BadRequestLine);
    }
    let uri = request_uri_and_version(&line[method_len + 1..])?;
    let method = &line[..method_len];
    Ok((StartLine::Request { method, uri }, next))
}

/// `SIP/2.0 SP 3DIGIT SP Reason-Phrase` (the reason may be empty: RFC 4475 §3.1.1.13).
fn parse_status_line(line: &[u8]) -> Result<StartLine<'_>, ParseError> {
    let rest = match line.get(..8) {
        Some(prefix) if prefix.eq_ignore_ascii_case(b"SIP/2.0 ") => &line[8..],
        _ => return Err(ParseError::BadStatusLine),
    };
    match rest {
        [a, b, c, b' ', reason @ ..] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => {
            let code = [a, b, c]
                .iter()
                .fold(0u16, |acc, d| acc * 10 + u16::from(**d - b'0'));
            if code < 100 {
                return Err(ParseError::BadStatusLine);
            }
            Ok(StartLine::Response { code, reason })
        }
        _ => Err(ParseError::BadStatusLine),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    /// The empty line was consumed; the body starts here.
    Done(usize),
    Failed,
}

/// Iterator over the header fields of a message, from a header-section offset to the empty
/// line. Yields each field once, folded lines joined; yields one error and stops on a
/// malformed or unterminated section.
///
/// Line ends and colons are found through bit masks of 64-byte blocks (one SIMD pass per
/// block, each block loaded once since the scan only moves forward), so a header costs a few
/// bit operations rather than a byte loop with an unpredictable exit. Linear overall.
#[derive(Clone, Debug)]
pub struct Headers<'a> {
    buf: &'a [u8],
    pos: usize,
    state: State,
    /// Start of the block whose masks are cached (`usize::MAX`: none yet).
    block: usize,
    /// Bit `i` set: `buf[block + i]` is LF.
    newlines: u64,
    /// Bit `i` set: `buf[block + i]` is `:`.
    colons: u64,
}

/// Bit masks of the LF and `:` bytes of one 64-byte block.
#[inline(always)]
fn block_masks(block: &[u8; 64]) -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        let mut newlines = 0u64;
        let mut colons = 0u64;
        // SAFETY: SSE2 is always available on x86-64; each load reads 16 bytes at offset
        // 0, 16, 32 or 48 of a 64-byte array.
        unsafe {
            let lf = _mm_set1_epi8(b'\n' as i8);
            let colon = _mm_set1_epi8(b':' as i8);
            for i in 0..4 {
                let bytes = _mm_loadu_si128(block.as_ptr().add(16 * i).cast::<__m128i>());
                let lf_bits = _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, lf)) as u16;
                let colon_bits = _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, colon)) as u16;
                newlines |= u64::from(lf_bits) << (16 * i);
                colons |= u64::from(colon_bits) << (16 * i);
            }
        }
        (newlines, colons)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut newlines = 0u64;
        let mut colons = 0u64;
        for (i, &b) in block.iter().enumerate() {
            newlines |= u64::from(b == b'\n') << i;
            colons |= u64::from(b == b':') << i;
        }
        (newlines, colons)
    }
}

impl<'a> Headers<'a> {
    /// Iterates the header section of `buf` starting at `start` (the offset returned by
    /// [`parse_start_line`]).
    pub fn new(buf: &'a [u8], start: usize) -> Self {
        Self {
            buf,
            pos: start,
            state: State::Running,
            block: usize::MAX,
            newlines: 0,
            colons: 0,
        }
    }

    /// Moves to `pos` (forward only), keeping the cached block.
    #[inline]
    pub(crate) fn skip_to(&mut self, pos: usize) {
        self.pos = self.pos.max(pos);
    }

    /// Where the body starts, once the iterator has consumed the empty line that ends the
    /// header section; `None` before that or after an error.
    pub fn body_start(&self) -> Option<usize> {
        match self.state {
            State::Done(at) => Some(at),
            _ => None,
        }
    }

    #[inline]
    fn fail<T>(&mut self, error: ParseError) -> Option<Result<T, ParseError>> {
        self.state = State::Failed;
        Some(Err(error))
    }

    /// Caches the masks of the last, partial block starting at `block`: from the 64 bytes
    /// that end the buffer when it has that many (shifted so bit 0 is `block`; the bits past
    /// the end shift in as zeros), else from a zero-padded copy.
    #[inline(never)]
    fn load_partial_block(&mut self, block: usize) {
        let len = self.buf.len();
        let last: Option<&[u8; 64]> = len
            .checked_sub(64)
            .and_then(|base| self.buf.get(base..))
            .and_then(|tail| tail.try_into().ok());
        match last {
            Some(last) => {
                let shift = block - (len - 64);
                let (newlines, colons) = block_masks(last);
                (self.newlines, self.colons) = (newlines >> shift, colons >> shift);
            }
            None => {
                let mut padded = [0u8; 64];
                let tail = self.buf.get(block..).unwrap_or_default();
                padded[..tail.len()].copy_from_slice(tail);
                (self.newlines, self.colons) = block_masks(&padded);
            }
        }
        self.block = block;
    }

    /// Offset of the first LF (`colon == false`) or `:` at or after `from`.
    #[inline(always)]
    pub(crate) fn find(&mut self, from: usize, colon: bool) -> Option<usize> {
        let mut at = from;
        while at < self.buf.len() {
            let block = at & !63;
            if block != self.block {
                match self.buf.get(block..block + 64) {
                    Some(full) => {
                        let full: &[u8; 64] = full.try_into().unwrap_or(&[0; 64]);
                        (self.newlines, self.colons) = block_masks(full);
                        self.block = block;
                    }
                    None => self.load_partial_block(block),
                }
            }
            let mask = if colon { self.colons } else { self.newlines };
            let ahead = mask >> (at - block);
            if ahead != 0 {
                return Some(at + ahead.trailing_zeros() as usize);
            }
            at = block + 64;
        }
        None
    }

    /// The error for a header line that is not `name: value`: malformed if it ends, else
    /// truncated.
    #[cold]
    fn bad_line<T>(&mut self) -> Option<Result<T, ParseError>> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        self.fail(match find_byte(b'\n', rest) {
            Some(_) => ParseError::BadHeaderLine,
            None => ParseError::UnterminatedHeaders,
        })
    }

    /// A line that starts with LF, CR, SP or HT (or no line at all): the end of the section,
    /// or an error.
    #[cold]
    fn special_line<T>(&mut self, rest: &[u8]) -> Option<Result<T, ParseError>> {
        match rest {
            // The empty line: the header section ends here, whatever follows is body.
            [b'\n', ..] => {
                self.state = State::Done(self.pos + 1);
                None
            }
            [b'\r', b'\n', ..] => {
                self.state = State::Done(self.pos + 2);
                None
            }
            // A continuation line with nothing to continue, or a stray CR.
            [b' ' | b'\t' | b'\r', ..] => self.fail(ParseError::BadHeaderLine),
            // The datagram ends (or ends in a lone CR) before the empty line.
            _ => self.fail(ParseError::UnterminatedHeaders),
        }
    }

    /// The next header with its classification (which `parse` needs anyway, and which lets
    /// the known names skip the token check: they matched a token already).
    #[inline(always)]
    pub(crate) fn next_classified(&mut self) -> Option<Result<(Known, Header<'a>), ParseError>> {
        if self.state != State::Running {
            return None;
        }
        let buf = self.buf;
        let start = self.pos;
        let rest = buf.get(start..).unwrap_or_default();
        // One test for the usual case: a header line starts with none of LF, CR, SP, HT.
        const SPECIAL: u64 = 1 << b'\n' | 1 << b'\r' | 1 << b' ' | 1 << b'\t';
        let first = rest.first().copied().unwrap_or(b'\n');
        if first < 64 && (SPECIAL >> first) & 1 == 1 {
            return self.special_line(rest);
        }

        // The name is what precedes the colon, less the whitespace allowed before it. A colon
        // found past the end of this line leaves a line break in the name, which fails the
        // token check: such a line has no colon, and parsing stops there.
        let Some(colon) = self.find(start, true) else {
            return self.bad_line();
        };
        let mut name_end = colon;
        while name_end > start && matches!(buf.get(name_end - 1), Some(b' ' | b'\t')) {
            name_end -= 1;
        }
        let name = &buf[start..name_end];
        let known = classify(name);
        if known == Known::Other && !is_token(name) {
            return self.bad_line();
        }

        // The value runs to the end of the last line that does not continue on the next one.
        let value_start = colon + 1;
        let mut line_start = value_start;
        let value_end = loop {
            let Some(newline) = self.find(line_start, false) else {
                return self.fail(ParseError::UnterminatedHeaders);
            };
            if matches!(buf.get(newline + 1), Some(b' ' | b'\t')) {
                line_start = newline + 1;
                continue;
            }
            break newline;
        };
        self.pos = value_end + 1;
        Some(Ok((
            known,
            Header {
                name,
                value: trim_lws(&buf[value_start..value_end]),
            },
        )))
    }
}

impl<'a> Iterator for Headers<'a> {
    type Item = Result<Header<'a>, ParseError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.next_classified()
            .map(|header| header.map(|(_, header)| header))
    }
}

/// A whole message read by [`parse_message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'h, 'a> {
    /// The request or status line.
    pub start_line: StartLine<'a>,
    /// The header fields in order, in the caller's slots.
    pub headers: &'h [Header<'a>],
    /// The body, framed by Content-Length when present, else the rest of the datagram.
    pub body: &'a [u8],
}

impl<'a> Message<'_, 'a> {
    /// The value of the first header called `name` (case-insensitive, compact-form aware).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }

    /// The values of every header called `name`, in order.
    pub fn get_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.headers
            .iter()
            .filter(move |h| h.is(name))
            .map(|h| h.value)
    }
}

/// Reads a whole SIP message (request or response) into caller-provided header slots, without
/// allocating; `TooManyHeaders` when the slots run out. The body is framed by Content-Length
/// (RFC 3261 §18.3: bytes past it are ignored; a length past the datagram is an error).
pub fn parse_message<'h, 'a>(
    buf: &'a [u8],
    slots: &'h mut [Header<'a>],
) -> Result<Message<'h, 'a>, ParseError> {
    let (start_line, header_start) = parse_start_line(buf)?;
    let mut headers = Headers::new(buf, header_start);
    let mut count = 0;
    let mut content_length: Option<&[u8]> = None;
    for header in headers.by_ref() {
        let header = header?;
        if classify(header.name) == Known::ContentLength {
            match content_length {
                Some(previous) if previous != header.value => {
                    return Err(ParseError::ConflictingHeader);
                }
                _ => content_length = Some(header.value),
            }
        }
        let slot = slots.get_mut(count).ok_or(ParseError::TooManyHeaders)?;
        *slot = header;
        count += 1;
    }
    let body_start = headers
        .body_start()
        .ok_or(ParseError::UnterminatedHeaders)?;
    let body = super::fields::frame_body(buf, body_start, content_length)?;
    Ok(Message {
        start_line,
        headers: &slots[..count],
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(buf: &[u8]) -> Result<Vec<(String, String)>, ParseError> {
        let mut iter = Headers::new(buf, 0);
        let mut out = Vec::new();
        for header in iter.by_ref() {
            let header = header?;
            out.push((
                String::from_utf8_lossy(header.name).into_owned(),
                String::from_utf8_lossy(header.value).into_owned(),
            ));
        }
        assert!(iter.body_start().is_some());
        Ok(out)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn header_lines_table() {
        type Case = (
            &'static [u8],
            Result<&'static [(&'static str, &'static str)], ParseError>,
        );
        let cases: &[Case] = &[
            (b"A: 1\r\nB: 2\r\n\r\n", Ok(&[("A", "1"), ("B", "2")])),
            // bare LF line ends
            (b"A: 1\nB: 2\n\n", Ok(&[("A", "1"), ("B", "2")])),
            // whitespace before the colon and around the value
            (b"A \t: \t1 \t\r\n\r\n", Ok(&[("A", "1")])),
            // empty value
            (b"A:\r\n\r\n", Ok(&[("A", "")])),
            // folding: SP and HTAB continue the previous header
            (
                b"A: 1\r\n 2\r\n\t3\r\nB: x\r\n\r\n",
                Ok(&[("A", "1\r\n 2\r\n\t3"), ("B", "x")]),
            ),
            // value starting on a continuation line
            (b"To :\r\n sip:a@b\r\n\r\n", Ok(&[("To", "sip:a@b")])),
            // the empty line ends the section: what follows is not read
            (b"A: 1\r\n\r\nB: 2\r\n", Ok(&[("A", "1")])),
            (b"\r\n", Ok(&[])),
            (b"\n", Ok(&[])),
            // errors
            (b"A: 1\r\n", Err(ParseError::UnterminatedHeaders)),
            (b"A: 1", Err(ParseError::UnterminatedHeaders)),
            (b"", Err(ParseError::UnterminatedHeaders)),
            (b"A", Err(ParseError::UnterminatedHeaders)),
            (b" A: 1\r\n\r\n", Err(ParseError::BadHeaderLine)),
            (b"A 1\r\n\r\n", Err(ParseError::BadHeaderLine)),
            (b": 1\r\n\r\n", Err(ParseError::BadHeaderLine)),
            (b"A B: 1\r\n\r\n", Err(ParseError::BadHeaderLine)),
            (b"A\x00: 1\r\n\r\n", Err(ParseError::BadHeaderLine)),
        ];
        for (input, expected) in cases {
            let got = headers_of(input);
            let expected = expected.map(pairs);
            assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn body_start_follows_the_empty_line() {
        let buf = b"A: 1\r\n\r\nbody";
        let mut iter = Headers::new(buf, 0);
        assert!(iter.by_ref().all(|h| h.is_ok()));
        assert_eq!(iter.body_start(), Some(8));
        let buf = b"A: 1\n\nbody";
        let mut iter = Headers::new(buf, 0);
        assert!(iter.by_ref().all(|h| h.is_ok()));
        assert_eq!(iter.body_start(), Some(6));
    }

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

    #[test]
    fn start_line_table() {
        let request =
            |method: &'static [u8], uri: &'static [u8]| StartLine::Request { method, uri };
        let cases: &[(&[u8], Result<StartLine<'static>, ParseError>)] = &[
            (
                b"NOTIFY sip:a@b SIP/2.0\r\n",
                Ok(request(b"NOTIFY", b"sip:a@b")),
            ),
            (
                b"\r\n\r\nINVITE sip:a@b sip/2.0\n",
                Ok(request(b"INVITE", b"sip:a@b")),
            ),
            (
                b"SIP/2.0 200 OK\r\n",
                Ok(StartLine::Response {
                    code: 200,
                    reason: b"OK",
                }),
            ),
            (
                b"SIP/2.0 100 \r\n",
                Ok(StartLine::Response {
                    code: 100,
                    reason: b"",
                }),
            ),
            (
                b"SIP/2.0 4294967301 big\r\n",
                Err(ParseError::BadStatusLine),
            ),
            (b"SIP/2.0 099 low\r\n", Err(ParseError::BadStatusLine)),
            (b"SIP/7.0 200 OK\r\n", Err(ParseError::BadStatusLine)),
            (
                b"INVITE  sip:a@b SIP/2.0\r\n",
                Err(ParseError::BadRequestLine),
            ),
            (
                b"INVITE sip:a@b  SIP/2.0\r\n",
                Err(ParseError::BadRequestLine),
            ),
            (
                b"INVITE sip:a@b SIP/2.0 \r\n",
                Err(ParseError::BadRequestLine),
            ),
            (
                b"INVITE sip:a@b SIP/7.0\r\n",
                Err(ParseError::BadRequestLine),
            ),
            (
                b"INVITE sip:a@b; lr SIP/2.0\r\n",
                Err(ParseError::BadRequestLine),
            ),
            (b"INVITE nouri SIP/2.0\r\n", Err(ParseError::BadRequestLine)),
            (
                b"INVITE <sip:a@b> SIP/2.0\r\n",
                Err(ParseError::BadRequestLine),
            ),
            (
                b"INVITE sip:a@b SIP/2.0",
                Err(ParseError::UnterminatedHeaders),
            ),
            (b"\r\n\r\n", Err(ParseError::Empty)),
            (b"", Err(ParseError::Empty)),
        ];
        for (input, expected) in cases {
            let got = parse_start_line(input).map(|(line, _)| line);
            assert_eq!(&got, expected, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn parse_message_frames_the_body_and_uses_slots() {
        let buf = b"OPTIONS sip:a@b SIP/2.0\r\ni: x\r\nl: 2\r\n\r\nabcdef";
        let mut slots = [Header::EMPTY; 4];
        let message = parse_message(buf, &mut slots).unwrap();
        assert_eq!(message.get("Call-ID"), Some(&b"x"[..]));
        assert_eq!(message.body, b"ab");
        assert_eq!(message.headers.len(), 2);

        let mut one = [Header::EMPTY; 1];
        assert_eq!(
            parse_message(buf, &mut one),
            Err(ParseError::TooManyHeaders)
        );
        let mut slots = [Header::EMPTY; 4];
        assert_eq!(
            parse_message(b"OPTIONS sip:a@b SIP/2.0\r\nl: 9\r\n\r\nab", &mut slots),
            Err(ParseError::ContentLengthExceedsDatagram)
        );
        assert_eq!(
            parse_message(
                b"OPTIONS sip:a@b SIP/2.0\r\nl: 2\r\nl: 3\r\n\r\nabc",
                &mut slots
            ),
            Err(ParseError::ConflictingHeader)
        );
    }

    #[test]
    fn find_any_agrees_with_position() {
        let haystack: Vec<u8> = (0u8..=255).rev().chain(0u8..40).collect();
        let needles = [b';', b',', b'\n', 0x80];
        for start in 0..20 {
            for end in start..haystack.len().min(start + 300) {
                let slice = &haystack[start..end];
                assert_eq!(
                    find_any(needles, slice),
                    slice.iter().position(|b| needles.contains(b)),
                    "{start}..{end}"
                );
            }
        }
    }

    #[test]
    fn find_byte_agrees_with_position() {
        let haystack: Vec<u8> = (0u8..=255).chain(0u8..40).collect();
        type Search = fn(u8, &[u8]) -> Option<usize>;
        let searchers: [(&str, Search); 2] = [("swar", find_byte_swar), ("dispatch", find_byte)];
        for (name, search) in searchers {
            for needle in [0u8, 1, 0x0a, 0x80, 0xff, 0x7f, 39] {
                for start in 0..20 {
                    for end in start..haystack.len().min(start + 70) {
                        let slice = &haystack[start..end];
                        assert_eq!(
                            search(needle, slice),
                            slice.iter().position(|&b| b == needle),
                            "{name} {needle} {start}..{end}"
                        );
                    }
                }
            }
        }
        // Bytes whose subtraction borrows must not produce false matches.
        assert_eq!(
            find_byte(b'\n', b"\x0b\x0b\x01\x0a\x0b\x0b\x0b\x0b"),
            Some(3)
        );
        assert_eq!(
            find_byte(0x01, b"\x02\x00\x01\x00\x00\x00\x00\x00"),
            Some(2)
        );
        assert_eq!(find_byte(0x00, b"\x01\x01\x01\x01\x01\x01\x01\x01"), None);
    }

    #[test]
    fn trim_lws_handles_folding_whitespace() {
        assert_eq!(trim_lws(b" \r\n\t a b \r\n "), b"a b");
        assert_eq!(trim_lws(b" \r\n "), b"");
        assert_eq!(trim_lws(b""), b"");
    }
}
