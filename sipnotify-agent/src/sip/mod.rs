//! Zero-copy SIP NOTIFY parser: one UDP payload in, the fields the bridge needs out.
//!
//! [`parse`] makes a single pass over the header section with [`lines::Headers`], keeps a
//! borrowed slice for each header it needs, and allocates nothing; the payload is untrusted and
//! may not be UTF-8, so it works on bytes and never panics. [`Notify::to_notification`] is the
//! one place that copies (and %-decodes) into the owned [`Notification`].
//!
//! Layers, each usable for any SIP message: `scan` (byte search, character classes), `names`
//! (header names), `lines` (start line, header iterator), `message` (a whole message with
//! its body), `uri` (To/From user extraction), `fields` (CSeq, Event, Via branch, From tag,
//! Content-Length); `error` holds [`ParseError`].

mod error;
mod fields;
pub mod lines;
pub mod message;
pub mod names;
pub mod scan;
pub mod uri;

use memchr::memchr2;

pub use error::ParseError;
pub use lines::{Header, Headers, StartLine, parse_start_line};
pub use message::{Message, parse_message};
pub use scan::is_token;
pub use uri::{Dn, DnBytes, NameAddr, Scheme, UriError, User, dn_of, parse_name_addr, uri_user};

use crate::event::{CaptureMeta, Notification};
use lines::{request_uri_and_version, skip_leading_newlines};
use names::{Known, names_match};
use scan::is_lws;

/// What [`parse`] and [`Notify::to_notification`] are configured with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// Header names (as configured) whose values are copied into
    /// [`Notification::extra_headers`]; matched case-insensitively, compact forms included.
    pub extra_headers: Vec<String>,
    /// Accept a NOTIFY without `X-Genesys-CallUUID` (then `call_uuid` is `None`).
    pub allow_missing_call_uuid: bool,
}

impl ParseOptions {
    /// Options with these extra header names.
    pub fn new(
        extra_headers: impl IntoIterator<Item = impl Into<String>>,
        allow_missing_call_uuid: bool,
    ) -> Self {
        Self {
            extra_headers: extra_headers.into_iter().map(Into::into).collect(),
            allow_missing_call_uuid,
        }
    }
}

/// A parsed NOTIFY, borrowing from the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notify<'a> {
    /// The To user (the agent's DN), still encoded; see [`Dn`].
    pub dn: Dn<'a>,
    /// The Call-ID, trimmed.
    pub call_id: &'a [u8],
    /// `X-Genesys-CallUUID`, trimmed; `None` only with `allow_missing_call_uuid`.
    pub call_uuid: Option<&'a [u8]>,
    /// The event type (before any `;` parameter), as sent.
    pub event: &'a [u8],
    /// The raw From value, parsed only when [`Notify::caller`] asks: the caller is an
    /// opt-in extra, and parsing it eagerly cost about 8 % of every parse.
    from: Option<&'a [u8]>,
    /// The CSeq number.
    pub cseq: u32,
    /// The branch parameter of the top Via, when present.
    pub via_branch: Option<&'a [u8]>,
    /// The Request-URI, unparsed (never used for the DN).
    pub request_uri: &'a [u8],
    /// The body, framed by Content-Length.
    pub body: &'a [u8],
    /// The header section including its closing empty line, rescanned only for extra headers.
    header_section: &'a [u8],
}

/// Records a single-valued header: identical repeats are tolerated (retransmitting proxies
/// and sloppy stacks produce them), different ones make the message ambiguous.
#[inline]
fn single<'a>(slot: &mut Option<&'a [u8]>, value: &'a [u8]) -> Result<(), ParseError> {
    match slot {
        Some(previous) if *previous != value => Err(ParseError::ConflictingHeader),
        Some(_) => Ok(()),
        None => {
            *slot = Some(value);
            Ok(())
        }
    }
}

/// Parses one UDP payload as a Genesys NOTIFY. Zero heap allocations; linear in the payload.
pub fn parse<'a>(payload: &'a [u8], options: &ParseOptions) -> Result<Notify<'a>, ParseError> {
    let start = skip_leading_newlines(payload);
    let rest = &payload[start..];
    if rest.is_empty() {
        return Err(ParseError::Empty);
    }
    if rest.len() >= 4 && rest[..4].eq_ignore_ascii_case(b"SIP/") {
        return Err(ParseError::Response);
    }
    // Methods are case-sensitive (RFC 3261 §7.1): `notify` is an unknown method.
    if !rest.starts_with(b"NOTIFY ") {
        return Err(ParseError::NotNotify);
    }
    // The header scanner finds the request line's end too, so its first block of masks
    // serves the first headers as well.
    let mut headers = Headers::new(payload, start);
    let newline = headers
        .find(start, false)
        .ok_or(ParseError::UnterminatedHeaders)?;
    let line = &payload[start + b"NOTIFY ".len()..newline];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let request_uri = request_uri_and_version(line)?;
    let header_start = newline + 1;
    headers.skip_to(header_start);

    let mut call_id = None;
    let mut to = None;
    let mut from = None;
    let mut via = None;
    let mut event = None;
    let mut cseq = None;
    let mut content_length = None;
    let mut call_uuid = None;
    while let Some(header) = headers.next_classified() {
        let (known, Header { value, .. }) = header?;
        match known {
            Known::CallId => single(&mut call_id, value)?,
            Known::To => single(&mut to, value)?,
            Known::From => single(&mut from, value)?,
            Known::Event => single(&mut event, value)?,
            Known::CSeq => single(&mut cseq, value)?,
            Known::ContentLength => single(&mut content_length, value)?,
            Known::CallUuid => single(&mut call_uuid, value)?,
            // Only the topmost Via matters; later ones are other hops.
            Known::Via => {
                via.get_or_insert(value);
            }
            Known::Ignored | Known::Other => {}
        }
    }
    let body_start = headers
        .body_start()
        .ok_or(ParseError::UnterminatedHeaders)?;
    let body = fields::frame_body(payload, body_start, content_length)?;

    let call_id = call_id
        .filter(|v| !v.is_empty())
        .ok_or(ParseError::MissingCallId)?;
    let dn = dn_of(to.ok_or(ParseError::MissingTo)?).map_err(|e| match e {
        UriError::Malformed => ParseError::BadTo,
        UriError::UnsupportedScheme => ParseError::UnsupportedToScheme,
        UriError::NoUser => ParseError::NoDn,
    })?;
    let cseq = fields::cseq(cseq.ok_or(ParseError::MissingCseq)?)?;
    let event = fields::event_type(event.ok_or(ParseError::MissingEvent)?)?;
    let call_uuid = call_uuid.filter(|v| !v.is_empty());
    if call_uuid.is_none() && !options.allow_missing_call_uuid {
        return Err(ParseError::MissingCallUuid);
    }
    Ok(Notify {
        dn,
        call_id,
        call_uuid,
        event,
        from,
        cseq,
        via_branch: via.and_then(fields::via_branch),
        request_uri,
        body,
        header_section: &payload[header_start..body_start],
    })
}

/// Header bytes as a string: folded line breaks become one space (RFC 3261 §7.3.1) and
/// invalid UTF-8 becomes U+FFFD, so the JSON stays valid.
fn text(value: &[u8]) -> String {
    if memchr2(b'\r', b'\n', value).is_none() {
        return String::from_utf8_lossy(value).into_owned();
    }
    let mut unfolded = Vec::with_capacity(value.len());
    let mut bytes = value.iter().copied().peekable();
    while let Some(byte) = bytes.next() {
        if byte == b'\r' || byte == b'\n' {
            while unfolded.last().is_some_and(|&b| b == b' ' || b == b'\t') {
                unfolded.pop();
            }
            unfolded.push(b' ');
            while bytes.next_if(|&b| is_lws(b)).is_some() {}
        } else {
            unfolded.push(byte);
        }
    }
    String::from_utf8_lossy(&unfolded).into_owned()
}

impl<'a> Notify<'a> {
    /// The From user, when From has a sip/sips/tel URI with a user. A From that cannot be
    /// read gives `None`: the caller is informative and does not cost the notification.
    pub fn caller(&self) -> Option<Dn<'a>> {
        self.from.and_then(|v| dn_of(v).ok())
    }

    /// The From tag (the sender's half of the dialog's identity), when From has one; read on
    /// each call, for de-duplication.
    pub fn from_tag(&self) -> Option<&'a [u8]> {
        self.from.and_then(fields::tag)
    }

    /// The values of the configured extra headers, each with the configured name it matched,
    /// in message order. Rescans the header section (only when extras are configured), which
    /// keeps [`parse`] free of per-option work.
    pub fn extra_headers<'o>(
        &self,
        options: &'o ParseOptions,
    ) -> impl Iterator<Item = (&'o str, &'a [u8])> + 'o
    where
        'a: 'o,
    {
        let wanted = !options.extra_headers.is_empty();
        Headers::new(self.header_section, 0)
            .take_while(move |_| wanted)
            .map_while(Result::ok)
            .flat_map(move |header| {
                options
                    .extra_headers
                    .iter()
                    .filter(move |name| names_match(header.name, name.as_bytes()))
                    .map(move |name| (name.as_str(), header.value))
            })
    }

    /// The owned notification. Repeated extra headers are joined with ", " (RFC 3261 §7.3.1);
    /// they appear under their configured names, in configuration order.
    pub fn to_notification(&self, options: &ParseOptions, meta: CaptureMeta) -> Notification {
        let mut extras: Vec<(String, Option<String>)> = Vec::new();
        for name in &options.extra_headers {
            // Two configured spellings of one header (`i` and `Call-ID`) report it once.
            if !extras
                .iter()
                .any(|(seen, _)| names_match(seen.as_bytes(), name.as_bytes()))
            {
                extras.push((name.clone(), None));
            }
        }
        if !extras.is_empty() {
            for header in Headers::new(self.header_section, 0).map_while(Result::ok) {
                for (name, joined) in &mut extras {
                    if names_match(header.name, name.as_bytes()) {
                        let value = text(header.value);
                        match joined {
                            Some(joined) => {
                                joined.push_str(", ");
                                joined.push_str(&value);
                            }
                            None => *joined = Some(value),
                        }
                    }
                }
            }
        }
        Notification {
            dn: self.dn.to_string_lossy(),
            call_id: text(self.call_id),
            call_uuid: self.call_uuid.map(text),
            event: text(self.event),
            caller: self.caller().map(|dn| dn.to_string_lossy()),
            cseq: self.cseq,
            via_branch: self.via_branch.map(text),
            extra_headers: extras
                .into_iter()
                .filter_map(|(name, value)| Some((name, value?)))
                .collect(),
            meta,
        }
    }
}

#[cfg(test)]
mod tests;
