//! Why a payload is not a usable NOTIFY (or, for the header layer, not a SIP message): one
//! `Copy` enum with one reason per variant, its message and its metric label.

/// Declares [`ParseError`] with its message, its metric label and the list of all variants, so
/// the three cannot drift apart.
macro_rules! parse_errors {
    ($($(#[doc = $doc:literal])* $variant:ident => $reason:literal, $message:literal;)+) => {
        /// Why a payload is not a usable NOTIFY (or, for the header layer, not a SIP message).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
        pub enum ParseError {
            $($(#[doc = $doc])* #[error($message)] $variant,)+
        }

        impl ParseError {
            /// Every variant, for registering metric labels up front.
            pub const ALL: &'static [ParseError] = &[$(ParseError::$variant),+];

            /// A snake_case label for metrics.
            pub fn reason(self) -> &'static str {
                match self {
                    $(ParseError::$variant => $reason,)+
                }
            }
        }
    };
}

parse_errors! {
    /// Nothing but CRLFs (a keep-alive) or nothing at all.
    Empty => "empty", "empty payload";
    /// A status line: a response, not a request.
    Response => "response", "response, not a request";
    /// A request whose method is not (exactly, case-sensitively) `NOTIFY`.
    NotNotify => "not_notify", "method is not notify";
    /// Request line not `Method SP Request-URI SP SIP/2.0`.
    BadRequestLine => "bad_request_line", "malformed request line";
    /// Status line not `SIP/2.0 SP 3DIGIT SP reason` (header layer only).
    BadStatusLine => "bad_status_line", "malformed status line";
    /// The datagram ends before the empty line that closes the header section.
    UnterminatedHeaders => "unterminated_headers", "header section not terminated by an empty line";
    /// A header line without a token name and a colon, or a continuation line with nothing to
    /// continue.
    BadHeaderLine => "bad_header_line", "malformed header line";
    /// More header fields than the slots given to `parse_message` (header layer only).
    TooManyHeaders => "too_many_headers", "more headers than slots";
    /// A single-valued header (Call-ID, To, From, CSeq, Event, Content-Length,
    /// X-Genesys-CallUUID) repeated with a different value.
    ConflictingHeader => "conflicting_header", "single-valued header repeated with a different value";
    /// Content-Length not a plain decimal number.
    BadContentLength => "bad_content_length", "malformed content-length";
    /// Content-Length larger than what the datagram holds after the headers.
    ContentLengthExceedsDatagram => "content_length_exceeds_datagram", "content-length exceeds the datagram";
    /// No Call-ID, or an empty one.
    MissingCallId => "missing_call_id", "missing call-id";
    /// No To header.
    MissingTo => "missing_to", "missing to header";
    /// A To value that is not a name-addr or addr-spec.
    BadTo => "bad_to", "malformed to header";
    /// A To URI that is not sip, sips or tel.
    UnsupportedToScheme => "unsupported_to_scheme", "unsupported uri scheme in to header";
    /// A To URI without a user part: there is no DN.
    NoDn => "no_dn", "to uri has no user part";
    /// No CSeq header.
    MissingCseq => "missing_cseq", "missing cseq";
    /// CSeq not `number method`, or a number over 32 bits.
    BadCseq => "bad_cseq", "malformed cseq";
    /// CSeq method other than NOTIFY.
    CseqMethodMismatch => "cseq_method_mismatch", "cseq method is not notify";
    /// No Event header, or an empty one.
    MissingEvent => "missing_event", "missing event header";
    /// An Event value whose type is not a token.
    BadEvent => "bad_event", "malformed event header";
    /// No X-Genesys-CallUUID (or an empty one) while it is required.
    MissingCallUuid => "missing_call_uuid", "missing x-genesys-calluuid";
}
