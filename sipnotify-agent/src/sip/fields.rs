//! Value parsers for the single headers the NOTIFY parser reads besides the To/From users:
//! CSeq, Content-Length (body framing), Event (RFC 6665 §8.2.1), the top Via's branch and
//! the From tag.
//!
//! Each takes a trimmed header value (possibly folded, so CR and LF count as whitespace) and
//! borrows from it.

use super::{
    error::ParseError,
    scan::{find_any, find_byte, is_token, trim_lws},
    uri::parse_name_addr,
};

/// The Content-Length value: `1*DIGIT` without sign or whitespace, overflow checked
/// (RFC 4475 §3.1.2.3-4).
#[inline]
pub(crate) fn content_length(value: &[u8]) -> Result<usize, ParseError> {
    if value.is_empty() {
        return Err(ParseError::BadContentLength);
    }
    value.iter().try_fold(0usize, |acc, &b| {
        if !b.is_ascii_digit() {
            return Err(ParseError::BadContentLength);
        }
        acc.checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(b - b'0')))
            .ok_or(ParseError::BadContentLength)
    })
}

/// The body of a datagram whose header section ends at `body_start`: the Content-Length bytes
/// when the header is present (trailing octets ignored, RFC 4475 §3.1.1.8), else the rest.
/// A length past the end of the datagram is an error (RFC 3261 §18.3, RFC 4475 §3.1.2.2).
pub(crate) fn frame_body<'a>(
    buf: &'a [u8],
    body_start: usize,
    content_length_value: Option<&[u8]>,
) -> Result<&'a [u8], ParseError> {
    let rest = buf.get(body_start..).unwrap_or_default();
    match content_length_value {
        None => Ok(rest),
        Some(value) => {
            let length = content_length(value)?;
            rest.get(..length)
                .ok_or(ParseError::ContentLengthExceedsDatagram)
        }
    }
}

/// CSeq: `1*DIGIT LWS Method`; the number fits in 32 bits and the method is NOTIFY.
pub(crate) fn cseq(value: &[u8]) -> Result<u32, ParseError> {
    let mut number = 0u32;
    let mut digits = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            break;
        }
        number = number
            .checked_mul(10)
            .and_then(|n| n.checked_add(u32::from(b - b'0')))
            .ok_or(ParseError::BadCseq)?;
        digits += 1;
    }
    let rest = &value[digits..];
    let method = trim_lws(rest);
    // Digits, then whitespace, then the method.
    if digits == 0 || method.len() == rest.len() {
        return Err(ParseError::BadCseq);
    }
    if method == b"NOTIFY" {
        return Ok(number);
    }
    Err(if is_token(method) {
        ParseError::CseqMethodMismatch
    } else {
        ParseError::BadCseq
    })
}

/// The event type of an Event value: the token before any `;` parameter, whitespace around it
/// allowed (`talk ; id=1`). An empty value counts as missing.
pub(crate) fn event_type(value: &[u8]) -> Result<&[u8], ParseError> {
    if value.is_empty() {
        return Err(ParseError::MissingEvent);
    }
    let before_params = match value.iter().position(|&b| b == b';') {
        Some(semi) => &value[..semi],
        None => value,
    };
    let event = trim_lws(before_params);
    if is_token(event) {
        Ok(event)
    } else {
        Err(ParseError::BadEvent)
    }
}

/// Splits `value` at top-level `separator` bytes, skipping those inside quoted strings (with
/// backslash escapes), so a quoted parameter value cannot cut a Via in two.
struct SplitOutsideQuotes<'a> {
    rest: Option<&'a [u8]>,
    separator: u8,
}

impl<'a> Iterator for SplitOutsideQuotes<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        let mut quoted = false;
        let mut i = 0;
        while i < rest.len() {
            match rest[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b if b == self.separator && !quoted => {
                    self.rest = Some(&rest[i + 1..]);
                    return Some(&rest[..i]);
                }
                _ => {}
            }
            i += 1;
        }
        self.rest = None;
        Some(rest)
    }
}

fn split_outside_quotes(value: &[u8], separator: u8) -> SplitOutsideQuotes<'_> {
    SplitOutsideQuotes {
        rest: Some(value),
        separator,
    }
}

/// The `branch` parameter of the first via-parm of a Via value (the topmost hop, RFC 3261
/// §8.1.1.7), trimmed; `None` when absent or empty.
pub(crate) fn via_branch(value: &[u8]) -> Option<&[u8]> {
    // Walk the `;`-separated parameters of the first via-parm with one search per step for
    // the bytes that matter (`;`, `,` ending the hop, `"` opening a quoted string); only a
    // quoted string sends us to the quote-tracking byte loop.
    let special = [b';', b',', b'"'];
    let mut at = find_any(special, value)?;
    loop {
        match value[at] {
            b';' => {
                let param_start = at + 1;
                let param_len = find_any(special, &value[param_start..]);
                let param_end = param_len.map_or(value.len(), |len| param_start + len);
                if let Some(branch) = param_value(&value[param_start..param_end], b"branch") {
                    return branch;
                }
                at = param_end;
                if at == value.len() {
                    return None;
                }
            }
            b',' => return None,
            _ => break,
        }
    }
    let first_hop = split_outside_quotes(value, b',').next()?;
    split_outside_quotes(first_hop, b';')
        .skip(1)
        .find_map(|param| param_value(param, b"branch"))
        .flatten()
}

/// The `tag` parameter of a From (or To) value, trimmed; `None` when absent, empty, or when
/// the value does not read as a name-addr or addr-spec. Parameters inside `<…>` belong to the
/// URI and do not count, nor does a `;tag=` inside a quoted display name.
pub(crate) fn tag(value: &[u8]) -> Option<&[u8]> {
    let params = parse_name_addr(value).ok()?.params;
    // `params` is empty or starts with `;`: the first piece is empty.
    split_outside_quotes(params, b';')
        .skip(1)
        .find_map(|param| param_value(param, b"tag"))
        .flatten()
}

/// `Some(value)` when `param` is the parameter `wanted` (`None` inside for an empty value),
/// `None` for any other parameter.
#[inline]
fn param_value<'a>(param: &'a [u8], wanted: &[u8]) -> Option<Option<&'a [u8]>> {
    let (name, value) = match find_byte(b'=', param) {
        Some(eq) => (&param[..eq], &param[eq + 1..]),
        None => (param, &b""[..]),
    };
    if !trim_lws(name).eq_ignore_ascii_case(wanted) {
        return None;
    }
    let value = trim_lws(value);
    Some((!value.is_empty()).then_some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cseq_table() {
        let cases: &[(&[u8], Result<u32, ParseError>)] = &[
            (b"2 NOTIFY", Ok(2)),
            (b"0009 NOTIFY", Ok(9)),
            (b"2\r\n NOTIFY", Ok(2)),
            (b"2 \t NOTIFY", Ok(2)),
            (b"4294967295 NOTIFY", Ok(u32::MAX)),
            (b"4294967296 NOTIFY", Err(ParseError::BadCseq)),
            (b"99999999999999999999999 NOTIFY", Err(ParseError::BadCseq)),
            (b"2NOTIFY", Err(ParseError::BadCseq)),
            (b"2", Err(ParseError::BadCseq)),
            (b"2 ", Err(ParseError::BadCseq)),
            (b"NOTIFY", Err(ParseError::BadCseq)),
            (b"-2 NOTIFY", Err(ParseError::BadCseq)),
            (b"2 NOTIFY extra", Err(ParseError::BadCseq)),
            (b"2 notify", Err(ParseError::CseqMethodMismatch)),
            (b"2 INVITE", Err(ParseError::CseqMethodMismatch)),
            (b"", Err(ParseError::BadCseq)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                cseq(input),
                *expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn event_table() {
        type Case = (&'static [u8], Result<&'static [u8], ParseError>);
        let cases: &[Case] = &[
            (b"talk", Ok(b"talk")),
            (b"hold", Ok(b"hold")),
            (b"talk;id=1", Ok(b"talk")),
            (b"talk ; id = 1", Ok(b"talk")),
            (b"talk\r\n ;id=1", Ok(b"talk")),
            (b"presence.winfo", Ok(b"presence.winfo")),
            (b"Talk", Ok(b"Talk")),
            (b"", Err(ParseError::MissingEvent)),
            (b";id=1", Err(ParseError::BadEvent)),
            (b"talk hold", Err(ParseError::BadEvent)),
            (b"t\xffk", Err(ParseError::BadEvent)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                event_type(input),
                *expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn content_length_table() {
        assert_eq!(content_length(b"0"), Ok(0));
        assert_eq!(content_length(b"00150"), Ok(150));
        for bad in [
            &b""[..],
            b"-999",
            b"+1",
            b"1 2",
            b"abc",
            b"99999999999999999999999999",
        ] {
            assert_eq!(content_length(bad), Err(ParseError::BadContentLength));
        }
    }

    #[test]
    fn frame_body_table() {
        let buf = b"HEADabcdef";
        assert_eq!(frame_body(buf, 4, None), Ok(&b"abcdef"[..]));
        assert_eq!(frame_body(buf, 4, Some(b"3")), Ok(&b"abc"[..]));
        assert_eq!(frame_body(buf, 4, Some(b"6")), Ok(&b"abcdef"[..]));
        assert_eq!(frame_body(buf, 4, Some(b"0")), Ok(&b""[..]));
        assert_eq!(
            frame_body(buf, 4, Some(b"7")),
            Err(ParseError::ContentLengthExceedsDatagram)
        );
        assert_eq!(
            frame_body(buf, 4, Some(b"x")),
            Err(ParseError::BadContentLength)
        );
    }

    #[test]
    fn from_tag_table() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"<sip:1003@192.168.210.81>;tag=A2BB-24", Some(b"A2BB-24")),
            (
                b"sip:1003@192.168.210.81:5060;tag=A2BB-24",
                Some(b"A2BB-24"),
            ),
            (b"\"Bob\" <sip:b@h>;x=1; TAG = t1 ;y", Some(b"t1")),
            // Parameters inside the brackets are the URI's; a quoted `;tag=` is a name.
            (b"<sip:b@h;tag=uri>;tag=real", Some(b"real")),
            (b"\"a;tag=no\" <sip:b@h>", None),
            (b"<sip:b@h;tag=uri>", None),
            (b"<sip:b@h>;tag=", None),
            (b"<sip:b@h>;x=\"q;tag=no\";tag=yes", Some(b"yes")),
            (b"<sip:b@h", None),
            (b"", None),
        ];
        for (input, expected) in cases {
            assert_eq!(tag(input), *expected, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn via_branch_table() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (
                b"SIP/2.0/UDP 192.168.210.81:5060;branch=z9hG4bK-1",
                Some(b"z9hG4bK-1"),
            ),
            (
                b"SIP/2.0/UDP h;rport;branch=z9hG4bK-1;received=1.2.3.4",
                Some(b"z9hG4bK-1"),
            ),
            (b"SIP/2.0/UDP h ; BRANCH = z9hG4bK-1 ", Some(b"z9hG4bK-1")),
            (
                b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw",
                Some(b"390skdjuw"),
            ),
            // the top hop only
            (
                b"SIP/2.0/UDP a;branch=top, SIP/2.0/UDP b;branch=second",
                Some(b"top"),
            ),
            (b"SIP/2.0/UDP a, SIP/2.0/UDP b;branch=second", None),
            // quoted parameter values cannot split the value
            (b"SIP/2.0/UDP a;x=\"1,2;3\\\"\";branch=b1", Some(b"b1")),
            (b"SIP/2.0/UDP [2001:db8::1]:5060;branch=v6", Some(b"v6")),
            (b"SIP/2.0/UDP a;branch=", None),
            (b"SIP/2.0/UDP a;branch", None),
            (b"SIP/2.0/UDP a", None),
            (b"", None),
        ];
        for (input, expected) in cases {
            assert_eq!(
                via_branch(input),
                *expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
