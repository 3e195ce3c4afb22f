//! A whole SIP message (request or response), in the spirit of `httparse`: [`parse_message`]
//! fills caller-provided [`Header`] slots and frames the body by Content-Length. The agent
//! never calls it: the NOTIFY parser (`sip::parse`) walks [`Headers`] itself and keeps only the
//! fields it needs. It stays public because the parse fuzzer (`fuzz/fuzz_targets/parse.rs`)
//! drives the header layer through it with every header kept, and the corpus tests
//! (`tests/sip_corpus.rs`) check the header layer against whole messages of any method.

use super::{
    error::ParseError,
    fields::frame_body,
    lines::{Header, Headers, StartLine, parse_start_line},
    names::{Known, classify},
};

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
    let body = frame_body(buf, body_start, content_length)?;
    Ok(Message {
        start_line,
        headers: &slots[..count],
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
