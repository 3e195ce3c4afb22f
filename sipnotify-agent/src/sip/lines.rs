//! The start line and the header iterator (RFC 3261 §7, §20) of any SIP message, without
//! allocating.
//!
//! [`Headers`] is a single-pass iterator over the header section that yields each field with
//! its folded continuation lines already joined. Values are borrowed slices of the datagram.
//! A folded value keeps its inner CRLF + whitespace (RFC 3261 §7.3.1 says it is equivalent to
//! one SP); consumers treat CR and LF as whitespace.

use super::{
    error::ParseError,
    names::{Known, classify, names_match},
    scan::{block_masks, find_byte, is_token, is_token_byte, trim_lws},
};

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
}
