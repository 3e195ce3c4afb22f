//! To / From values: `name-addr` and `addr-spec` (RFC 3261 §20.10, §25.1) and the user part of
//! their sip, sips (RFC 3261 §19.1) or tel (RFC 3966) URI, which becomes the DN or the caller.
//!
//! Everything borrows from the header value. %-decoding and the removal of tel visual
//! separators are deferred to [`Dn::bytes`] / [`Dn::to_string_lossy`], so parsing allocates
//! nothing and decodes exactly once.

use super::scan::{find_any, find_byte, is_lws, trim_lws};

/// Why a To/From value yields no user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum UriError {
    /// Unterminated quoted display name, missing `>`, empty URI, junk after the URI.
    #[error("malformed name-addr or uri")]
    Malformed,
    /// A scheme other than sip, sips or tel.
    #[error("unsupported uri scheme")]
    UnsupportedScheme,
    /// A sip/sips URI without `user@`, or a tel URI without a number.
    #[error("uri has no user part")]
    NoUser,
}

/// A To/From header value split into its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// The display name as written (quotes and escapes kept), if any.
    pub display_name: Option<&'a [u8]>,
    /// The URI, without `<` `>` and surrounding whitespace.
    pub uri: &'a [u8],
    /// The header parameters (`;tag=…`), possibly empty.
    pub params: &'a [u8],
}

/// Index of the `"` that closes the quoted string opening `value[0]`, honouring `\` escapes
/// (a display name may hold `<`, `>`, `;`, `,` and `\"`).
fn closing_quote(value: &[u8]) -> Result<usize, UriError> {
    let mut i = 1;
    while i < value.len() {
        match value[i] {
            b'\\' => i += 2,
            b'"' => return Ok(i),
            _ => i += 1,
        }
    }
    Err(UriError::Malformed)
}

/// What follows the URI may only be header parameters.
fn header_params(rest: &[u8]) -> Result<&[u8], UriError> {
    let params = trim_lws(rest);
    match params.first() {
        None | Some(b';') => Ok(params),
        Some(_) => Err(UriError::Malformed),
    }
}

/// Splits a To/From value. `name-addr` (`["display"] <uri>;params`, the display name quoted or
/// tokens) when a `<` comes before any `;`; otherwise `addr-spec`, whose URI ends at the first
/// `;` (there, parameters belong to the header, RFC 3261 §20), `,`, `?` or whitespace.
pub fn parse_name_addr(value: &[u8]) -> Result<NameAddr<'_>, UriError> {
    let value = trim_lws(value);
    let quoted = value.first() == Some(&b'"');
    let after_display = if quoted { closing_quote(value)? + 1 } else { 0 };
    let rest = &value[after_display..];
    // One scan finds `<` (name-addr) or the end of an addr-spec's URI; only a token display
    // name (`Bob <sip:…>`) needs a second look past its whitespace.
    let first = find_any([b'<', b';', b',', b'?', b' ', b'\t', b'\r', b'\n'], rest);
    let angle = match first {
        Some(i) if rest[i] == b'<' => Some(i),
        Some(i) if is_lws(rest[i]) => rest[i..]
            .iter()
            .position(|&b| b == b'<' || b == b';')
            .map(|j| i + j)
            .filter(|&j| rest[j] == b'<'),
        _ => None,
    };
    match angle {
        Some(lt) => {
            if quoted && !trim_lws(&rest[..lt]).is_empty() {
                return Err(UriError::Malformed);
            }
            let display = trim_lws(&value[..after_display + lt]);
            let inside = &rest[lt + 1..];
            let gt = find_byte(b'>', inside).ok_or(UriError::Malformed)?;
            // Spaces inside the brackets are invalid but harmless (RFC 4475 §3.1.2.14).
            let uri = trim_lws(&inside[..gt]);
            if uri.is_empty() {
                return Err(UriError::Malformed);
            }
            Ok(NameAddr {
                display_name: (!display.is_empty()).then_some(display),
                uri,
                params: header_params(&inside[gt + 1..])?,
            })
        }
        // A quoted display name must be followed by `<uri>`.
        _ if quoted => Err(UriError::Malformed),
        None => {
            let end = first.unwrap_or(rest.len());
            if end == 0 {
                return Err(UriError::Malformed);
            }
            Ok(NameAddr {
                display_name: None,
                uri: &rest[..end],
                params: header_params(&rest[end..])?,
            })
        }
    }
}

/// The URI schemes that carry a user (a DN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `sip:`
    Sip,
    /// `sips:`
    Sips,
    /// `tel:` (RFC 3966)
    Tel,
}

/// The user of a URI, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct User<'a> {
    /// The URI scheme (matched case-insensitively).
    pub scheme: Scheme,
    /// sip/sips: the user before `:password@`, user parameters and %-escapes kept;
    /// tel: the number before its parameters, visual separators kept.
    pub raw: &'a [u8],
}

/// The user of a sip, sips or tel URI.
pub fn uri_user(uri: &[u8]) -> Result<User<'_>, UriError> {
    // Schemes and users are a few bytes long: plain loops beat any setup here.
    let colon = uri
        .iter()
        .position(|&b| b == b':')
        .ok_or(UriError::Malformed)?;
    let (scheme, rest) = (&uri[..colon], &uri[colon + 1..]);
    let scheme = match scheme.len() {
        3 if scheme.eq_ignore_ascii_case(b"sip") => Scheme::Sip,
        4 if scheme.eq_ignore_ascii_case(b"sips") => Scheme::Sips,
        3 if scheme.eq_ignore_ascii_case(b"tel") => Scheme::Tel,
        0 => return Err(UriError::Malformed),
        _ => return Err(UriError::UnsupportedScheme),
    };
    let raw = match scheme {
        Scheme::Tel => &rest[..rest.iter().position(|&b| b == b';').unwrap_or(rest.len())],
        Scheme::Sip | Scheme::Sips => {
            // `@` cannot appear unescaped outside the userinfo, so the first one ends it; the
            // host after it (an IPv6 reference with its colons included) is never looked at.
            // The user ends at the first `:` (a password follows) before the `@`.
            let mut user_end = None;
            let mut at = None;
            for (i, &b) in rest.iter().enumerate() {
                match b {
                    b'@' => {
                        at = Some(i);
                        break;
                    }
                    b':' if user_end.is_none() => user_end = Some(i),
                    _ => {}
                }
            }
            let at = at.ok_or(UriError::NoUser)?;
            &rest[..user_end.unwrap_or(at)]
        }
    };
    if raw.is_empty() {
        return Err(UriError::NoUser);
    }
    Ok(User { scheme, raw })
}

/// RFC 3966 visual separators, dropped from tel numbers.
#[inline]
fn is_visual_separator(byte: u8) -> bool {
    matches!(byte, b'-' | b'.' | b'(' | b')')
}

impl<'a> User<'a> {
    /// The DN this user denotes: for sip/sips the user without user parameters (`;…`); for tel
    /// the number. `NoUser` when nothing is left.
    pub fn dn(&self) -> Result<Dn<'a>, UriError> {
        let tel = self.scheme == Scheme::Tel;
        let raw = if tel {
            self.raw
        } else {
            let params = self.raw.iter().position(|&b| b == b';');
            &self.raw[..params.unwrap_or(self.raw.len())]
        };
        let empty = if tel {
            raw.iter().all(|&b| is_visual_separator(b))
        } else {
            raw.is_empty()
        };
        if empty {
            return Err(UriError::NoUser);
        }
        Ok(Dn { raw, tel })
    }
}

/// The DN (or caller) of a To/From header value.
pub fn dn_of(value: &[u8]) -> Result<Dn<'_>, UriError> {
    uri_user(parse_name_addr(value)?.uri)?.dn()
}

/// A user part ready for output, still encoded: `raw` is borrowed from the datagram and is
/// decoded (once) only when read through [`Dn::bytes`] or [`Dn::to_string_lossy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dn<'a> {
    raw: &'a [u8],
    tel: bool,
}

impl<'a> Dn<'a> {
    /// The bytes as written: %-escapes (sip) or visual separators (tel) included.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Whether [`Dn::bytes`] differs from [`Dn::raw`].
    pub fn needs_decoding(&self) -> bool {
        if self.tel {
            self.raw.iter().any(|&b| is_visual_separator(b))
        } else {
            self.raw.contains(&b'%')
        }
    }

    /// The decoded bytes: `%XX` escapes decoded once (a `%` not followed by two hex digits is
    /// kept as is), or the tel number without visual separators. May hold NUL or non-UTF-8.
    pub fn bytes(&self) -> DnBytes<'a> {
        DnBytes {
            rest: self.raw,
            tel: self.tel,
        }
    }

    /// The decoded DN as a string; invalid UTF-8 becomes U+FFFD.
    pub fn to_string_lossy(&self) -> String {
        if self.needs_decoding() {
            let decoded: Vec<u8> = self.bytes().collect();
            String::from_utf8_lossy(&decoded).into_owned()
        } else {
            String::from_utf8_lossy(self.raw).into_owned()
        }
    }
}

/// Iterator over the decoded bytes of a [`Dn`].
#[derive(Clone, Debug)]
pub struct DnBytes<'a> {
    rest: &'a [u8],
    tel: bool,
}

#[inline]
fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

impl Iterator for DnBytes<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        loop {
            let (&first, tail) = self.rest.split_first()?;
            if self.tel {
                self.rest = tail;
                if is_visual_separator(first) {
                    continue;
                }
                return Some(first);
            }
            if first == b'%' {
                if let [high, low, after @ ..] = tail {
                    if let (Some(high), Some(low)) = (hex_value(*high), hex_value(*low)) {
                        self.rest = after;
                        return Some(high << 4 | low);
                    }
                }
            }
            self.rest = tail;
            return Some(first);
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.rest.len().div_ceil(3), Some(self.rest.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(dn: Dn<'_>) -> Vec<u8> {
        dn.bytes().collect()
    }

    #[test]
    fn name_addr_table() {
        let na = |display: Option<&'static [u8]>, uri: &'static [u8], params: &'static [u8]| {
            Ok(NameAddr {
                display_name: display,
                uri,
                params,
            })
        };
        let cases: &[(&[u8], Result<NameAddr<'static>, UriError>)] = &[
            (
                b"<sip:1002@192.168.210.81>;tag=f90c",
                na(None, b"sip:1002@192.168.210.81", b";tag=f90c"),
            ),
            (
                b"sip:1003@192.168.210.81:5060;tag=31D1",
                na(None, b"sip:1003@192.168.210.81:5060", b";tag=31D1"),
            ),
            (
                b"\"Agent <1002>; x, y\" <sip:1002@h>",
                na(Some(b"\"Agent <1002>; x, y\""), b"sip:1002@h", b""),
            ),
            (
                b"\"a \\\" <sip:evil@x> \\\\\" <sip:good@h>;tag=1",
                na(
                    Some(b"\"a \\\" <sip:evil@x> \\\\\""),
                    b"sip:good@h",
                    b";tag=1",
                ),
            ),
            (b"\"\"<sip:a@h>", na(Some(b"\"\""), b"sip:a@h", b"")),
            (b"Bob <sip:bob@h>", na(Some(b"Bob"), b"sip:bob@h", b"")),
            (
                b"caller<sip:c@h>;tag=3",
                na(Some(b"caller"), b"sip:c@h", b";tag=3"),
            ),
            (b"< sip:t.w@h >", na(None, b"sip:t.w@h", b"")),
            (
                b"sip:v@h ;   tag    = 1918",
                na(None, b"sip:v@h", b";   tag    = 1918"),
            ),
            (b"<sip:a@h>  ", na(None, b"sip:a@h", b"")),
            // name-addr keeps URI parameters (and user parameters) inside the brackets
            (
                b"<sip:+1-212;p=x@h;user=phone>;tag=9",
                na(None, b"sip:+1-212;p=x@h;user=phone", b";tag=9"),
            ),
            (
                b"tel:+1-201-555-0123",
                na(None, b"tel:+1-201-555-0123", b""),
            ),
            (
                b"\"Mr. J. User <sip:j.user@example.com>",
                Err(UriError::Malformed),
            ),
            (b"\"x\\\"", Err(UriError::Malformed)),
            (b"<sip:a@h", Err(UriError::Malformed)),
            (b"<>", Err(UriError::Malformed)),
            (b"\"x\" sip:a@h", Err(UriError::Malformed)),
            (b"\"x\" junk <sip:a@h>", Err(UriError::Malformed)),
            (b"<sip:a@h> junk", Err(UriError::Malformed)),
            (b"<sip:a@h>, <sip:b@h>", Err(UriError::Malformed)),
            (b"sip:a@h, sip:b@h", Err(UriError::Malformed)),
            (b";tag=1", Err(UriError::Malformed)),
            (b"", Err(UriError::Malformed)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_name_addr(input),
                *expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn dn_table() {
        type Case = (&'static [u8], Result<&'static [u8], UriError>);
        let cases: &[Case] = &[
            (b"<sip:1002@192.168.210.81>;tag=f90c", Ok(b"1002")),
            (b"sip:1003@192.168.210.81:5060;tag=31D1", Ok(b"1003")),
            (b"\"Agent; <x>, \\\"q\\\"\" <sip:1002@h>", Ok(b"1002")),
            // schemes: case-insensitive, sips, tel
            (b"SIP:1002@h", Ok(b"1002")),
            (b"<Sips:1002@h>", Ok(b"1002")),
            (
                b"<tel:+1-201-555-0123;phone-context=example.com>",
                Ok(b"+12015550123"),
            ),
            (b"tel:(201)555.0123;ext=1", Ok(b"2015550123")),
            (b"TEL:5551234", Ok(b"5551234")),
            // %-decoding, once
            (b"sip:%75se%72@example.com", Ok(b"user")),
            (b"sip:null-%00-null@example.com", Ok(b"null-\x00-null")),
            (b"sip:a%2541@h", Ok(b"a%41")),
            (b"sip:bad%zz%4@h", Ok(b"bad%zz%4")),
            (b"sip:%3bx@h", Ok(b";x")),
            // user parameters dropped (only inside brackets; outside, `;` ends the URI)
            (b"<sip:+1212;phone-context=x@h;user=phone>", Ok(b"+1212")),
            (b"<sip:u%3Bv;par=u%40example.net@h>", Ok(b"u;v")),
            // password dropped
            (b"<sip:alice:secret@h>", Ok(b"alice")),
            // IPv6 hosts
            (b"<sip:1002@[2001:db8::10]:5070>;tag=1", Ok(b"1002")),
            (b"sip:1002@[2001:db8::10];tag=1", Ok(b"1002")),
            // no user
            (b"<sip:192.168.210.54:5061>", Err(UriError::NoUser)),
            (b"<sip:[2001:db8::10]:5070>", Err(UriError::NoUser)),
            (b"sip:user;par=u%40example.net@h", Err(UriError::NoUser)),
            (b"<sip:@h>", Err(UriError::NoUser)),
            (b"<sip:;p=1@h>", Err(UriError::NoUser)),
            (b"<sip::pw@h>", Err(UriError::NoUser)),
            (b"tel:;phone-context=x", Err(UriError::NoUser)),
            (b"tel:--", Err(UriError::NoUser)),
            // other schemes
            (b"isbn:2983792873", Err(UriError::UnsupportedScheme)),
            (
                b"<http://www.example.com>;tag=3",
                Err(UriError::UnsupportedScheme),
            ),
            (b"<sipx:1002@h>", Err(UriError::UnsupportedScheme)),
            (b"<:1002@h>", Err(UriError::Malformed)),
            (b"<1002>", Err(UriError::Malformed)),
        ];
        for (input, expected) in cases {
            let got = dn_of(input).map(decoded);
            assert_eq!(
                got,
                expected.map(<[u8]>::to_vec),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn raw_user_keeps_user_parameters() {
        let user = uri_user(b"sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(user.raw, b"user;par=u%40example.net");
        assert_eq!(user.scheme, Scheme::Sip);
        assert_eq!(user.dn().unwrap().raw(), b"user");
    }

    #[test]
    fn dn_decoding_is_lazy_and_lossy() {
        let dn = dn_of(b"sip:1002@h").unwrap();
        assert!(!dn.needs_decoding());
        assert_eq!(dn.to_string_lossy(), "1002");
        let dn = dn_of(b"sip:%C3%A9%FF@h").unwrap();
        assert!(dn.needs_decoding());
        assert_eq!(dn.to_string_lossy(), "\u{e9}\u{fffd}");
        let dn = dn_of(b"tel:+1-555").unwrap();
        assert!(
            dn.needs_decoding(),
            "visual separators are dropped from tel numbers"
        );
        assert_eq!(dn.to_string_lossy(), "+1555");
        let dn = dn_of(b"sip:\xff@h").unwrap();
        assert_eq!(dn.to_string_lossy(), "\u{fffd}");
    }
}
