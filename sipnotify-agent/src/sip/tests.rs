//! Table tests per parsing rule and property tests for [`super::parse`].

use std::{net::Ipv4Addr, time::SystemTime};

use proptest::prelude::*;

use super::*;

const REQUEST_LINE: &str = "NOTIFY sip:192.168.210.54:5061 SIP/2.0";

/// The header lines of the Genesys NOTIFY to Asterisk (corpus `genesys_log_03`), shortened.
fn base_headers() -> Vec<String> {
    [
        "From: sip:1003@192.168.210.81:5060;tag=A2BB",
        "To: <sip:1002@192.168.210.81>;tag=f90c",
        "Call-ID: 6404-6@192.168.210.81",
        "CSeq: 2 NOTIFY",
        "Content-Length: 0",
        "Via: SIP/2.0/UDP 192.168.210.81:5060;branch=z9hG4bKD150-11",
        "Contact: <sip:1003@192.168.210.81:5060>",
        "Event: talk",
        "Subscription-State: active",
        "Max-Forwards: 70",
        "X-Genesys-CallUUID: TTL7J9EM750GP936CFL0EOACN8000002",
    ]
    .map(String::from)
    .to_vec()
}

fn build(request_line: &str, headers: &[String], body: &str) -> Vec<u8> {
    let mut out = format!("{request_line}\r\n");
    for header in headers {
        out.push_str(header);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

/// The base message with every header named `name` (long name, any case) replaced by `lines`.
fn with(name: &str, lines: &[&str]) -> Vec<u8> {
    with_body(name, lines, "")
}

fn with_body(name: &str, lines: &[&str], body: &str) -> Vec<u8> {
    let mut headers = Vec::new();
    let mut replaced = false;
    for header in base_headers() {
        let header_name = header.split(':').next().unwrap_or_default();
        if header_name.eq_ignore_ascii_case(name) {
            if !replaced {
                headers.extend(lines.iter().map(|l| (*l).to_owned()));
                replaced = true;
            }
        } else {
            headers.push(header);
        }
    }
    if !replaced {
        headers.extend(lines.iter().map(|l| (*l).to_owned()));
    }
    build(REQUEST_LINE, &headers, body)
}

fn base() -> Vec<u8> {
    build(REQUEST_LINE, &base_headers(), "")
}

fn meta() -> CaptureMeta {
    CaptureMeta {
        captured_at: SystemTime::UNIX_EPOCH,
        src: (Ipv4Addr::new(192, 0, 2, 1), 5060).into(),
        dst: (Ipv4Addr::new(192, 0, 2, 2), 5061).into(),
        iface: None,
    }
}

fn parse_default(payload: &[u8]) -> Result<Notify<'_>, ParseError> {
    parse(payload, &ParseOptions::default())
}

fn notification(payload: &[u8], options: &ParseOptions) -> Result<Notification, ParseError> {
    parse(payload, options).map(|n| n.to_notification(options, meta()))
}

fn dn_of_payload(payload: &[u8]) -> Result<String, ParseError> {
    parse_default(payload).map(|n| n.dn.to_string_lossy())
}

fn show(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

#[test]
fn base_message_yields_all_fields() {
    let payload = base();
    let options = ParseOptions::default();
    let n = notification(&payload, &options).unwrap();
    assert_eq!(n.dn, "1002");
    assert_eq!(n.call_id, "6404-6@192.168.210.81");
    assert_eq!(
        n.call_uuid.as_deref(),
        Some("TTL7J9EM750GP936CFL0EOACN8000002")
    );
    assert_eq!(n.event, "talk");
    assert_eq!(n.caller.as_deref(), Some("1003"));
    assert_eq!(n.cseq, 2);
    assert_eq!(n.via_branch.as_deref(), Some("z9hG4bKD150-11"));
    assert!(n.extra_headers.is_empty());
    let notify = parse(&payload, &options).unwrap();
    assert_eq!(notify.request_uri, b"sip:192.168.210.54:5061");
    assert_eq!(notify.body, b"");
    assert_eq!(notify.from_tag(), Some(&b"A2BB"[..]));
}

#[test]
fn request_line_rules() {
    let headers = base_headers();
    let cases: &[(&[u8], Result<(), ParseError>)] = &[
        (b"NOTIFY sip:192.168.210.54:5061 SIP/2.0", Ok(())),
        (b"\r\n\r\nNOTIFY sip:a@b SIP/2.0", Ok(())),
        (b"\n\nNOTIFY sip:a@b SIP/2.0", Ok(())),
        (b"NOTIFY sip:a@b sip/2.0", Ok(())),
        (b"NOTIFY tel:+15551234 SIP/2.0", Ok(())),
        (b"notify sip:a@b SIP/2.0", Err(ParseError::NotNotify)),
        (b"Notify sip:a@b SIP/2.0", Err(ParseError::NotNotify)),
        (b"INVITE sip:a@b SIP/2.0", Err(ParseError::NotNotify)),
        (b"NOTIFYX sip:a@b SIP/2.0", Err(ParseError::NotNotify)),
        (b" NOTIFY sip:a@b SIP/2.0", Err(ParseError::NotNotify)),
        (b"SIP/2.0 200 OK", Err(ParseError::Response)),
        (b"sip/2.0 200 OK", Err(ParseError::Response)),
        (b"\r\nSIP/2.0 481 Gone", Err(ParseError::Response)),
        (b"NOTIFY  sip:a@b SIP/2.0", Err(ParseError::BadRequestLine)),
        (b"NOTIFY sip:a@b  SIP/2.0", Err(ParseError::BadRequestLine)),
        (b"NOTIFY sip:a@b SIP/2.0 ", Err(ParseError::BadRequestLine)),
        (b"NOTIFY sip:a@b SIP/2.1", Err(ParseError::BadRequestLine)),
        (b"NOTIFY sip:a@b", Err(ParseError::BadRequestLine)),
        (b"NOTIFY SIP/2.0", Err(ParseError::BadRequestLine)),
        (b"NOTIFY <sip:a@b> SIP/2.0", Err(ParseError::BadRequestLine)),
        (
            b"NOTIFY sip:a\x00@b SIP/2.0",
            Err(ParseError::BadRequestLine),
        ),
    ];
    for (line, expected) in cases {
        let mut payload = line.to_vec();
        payload.extend_from_slice(b"\r\n");
        for header in &headers {
            payload.extend_from_slice(header.as_bytes());
            payload.extend_from_slice(b"\r\n");
        }
        payload.extend_from_slice(b"\r\n");
        let got = parse_default(&payload).map(|_| ());
        assert_eq!(got, *expected, "{}", show(line));
    }
    for (payload, expected) in [
        (&b""[..], ParseError::Empty),
        (b"\r\n\r\n", ParseError::Empty),
        (b"\n", ParseError::Empty),
        (b"NOTIFY sip:a@b SIP/2.0", ParseError::UnterminatedHeaders),
        (b"NOTIFY", ParseError::NotNotify),
        (b"SIP/", ParseError::Response),
    ] {
        assert_eq!(parse_default(payload), Err(expected), "{}", show(payload));
    }
}

#[test]
fn header_names_case_whitespace_and_compact_forms() {
    let variants: &[(&str, &[&str])] = &[
        ("Call-ID", &["call-id: 6404-6@192.168.210.81"]),
        ("Call-ID", &["CALL-ID : 6404-6@192.168.210.81"]),
        ("Call-ID", &["i: 6404-6@192.168.210.81"]),
        ("Call-ID", &["I:6404-6@192.168.210.81"]),
        ("Call-ID", &["Call-ID \t:\t 6404-6@192.168.210.81 \t"]),
        ("To", &["t: <sip:1002@192.168.210.81>;tag=f90c"]),
        ("To", &["TO :<sip:1002@192.168.210.81>;tag=f90c"]),
        ("From", &["f: sip:1003@192.168.210.81:5060;tag=A2BB"]),
        (
            "Via",
            &["v: SIP/2.0/UDP 192.168.210.81:5060;branch=z9hG4bKD150-11"],
        ),
        ("Event", &["o: talk"]),
        ("Event", &["EVENT: talk"]),
        ("Content-Length", &["l: 0"]),
        ("Content-Length", &["L:0"]),
        ("CSeq", &["cseq: 2 NOTIFY"]),
        ("CSeq", &["CSEQ  :  2 NOTIFY"]),
        (
            "X-Genesys-CallUUID",
            &["x-genesys-calluuid: TTL7J9EM750GP936CFL0EOACN8000002"],
        ),
        // Compact forms of headers the parser ignores are harmless.
        ("Contact", &["m: <sip:1003@192.168.210.81:5060>"]),
        (
            "Subscription-State",
            &["c: text/plain", "k: 100rel", "s: hi"],
        ),
        ("Max-Forwards", &["e: gzip", "u: talk"]),
    ];
    let expected = notification(&base(), &ParseOptions::default()).unwrap();
    for (name, lines) in variants {
        let payload = with(name, lines);
        let got = notification(&payload, &ParseOptions::default());
        assert_eq!(got.as_ref(), Ok(&expected), "{}", show(&payload));
    }
}

#[test]
fn folding_and_bare_lf() {
    let expected = notification(&base(), &ParseOptions::default()).unwrap();
    let variants: &[(&str, &[&str])] = &[
        ("To", &["To:", " <sip:1002@192.168.210.81>;tag=f90c"]),
        ("To", &["To: <sip:1002@192.168.210.81>", "\t;tag=f90c"]),
        ("CSeq", &["CSeq: 2", "  NOTIFY"]),
        ("Call-ID", &["Call-ID:", " 6404-6@192.168.210.81"]),
        ("Event", &["Event:", "\ttalk", " ;id=1"]),
        (
            "Via",
            &[
                "Via: SIP/2.0/UDP",
                " 192.168.210.81:5060",
                " ;branch=z9hG4bKD150-11",
            ],
        ),
        (
            "X-Genesys-CallUUID",
            &[
                "X-Genesys-CallUUID:",
                " TTL7J9EM750GP936CFL0EOACN8000002",
                " ",
            ],
        ),
    ];
    for (name, lines) in variants {
        let payload = with(name, lines);
        let got = notification(&payload, &ParseOptions::default());
        assert_eq!(got.as_ref(), Ok(&expected), "{}", show(&payload));
    }
    // Bare LF everywhere, and mixed line ends.
    let lf: Vec<u8> = base().into_iter().filter(|&b| b != b'\r').collect();
    assert_eq!(
        notification(&lf, &ParseOptions::default()).as_ref(),
        Ok(&expected)
    );
    let mut mixed = base();
    if let Some(at) = mixed.windows(2).position(|w| w == b"\r\n") {
        mixed.remove(at);
    }
    assert_eq!(
        notification(&mixed, &ParseOptions::default()).as_ref(),
        Ok(&expected)
    );
    // A continuation line before any header is malformed.
    let payload = build(REQUEST_LINE, &[" folded: x".to_owned()], "");
    assert_eq!(parse_default(&payload), Err(ParseError::BadHeaderLine));
}

#[test]
fn header_line_errors() {
    for (lines, error) in [
        (&["Garbage without colon"][..], ParseError::BadHeaderLine),
        (&[": no name"], ParseError::BadHeaderLine),
        (&["Bad Name: x"], ParseError::BadHeaderLine),
        (&["Na\u{e9}me: x"], ParseError::BadHeaderLine),
    ] {
        let payload = with("Subscription-State", lines);
        assert_eq!(parse_default(&payload), Err(error), "{}", show(&payload));
    }
    // Every strict prefix of a valid message lacks the closing empty line.
    let payload = base();
    for end in 0..payload.len() {
        assert!(parse_default(&payload[..end]).is_err(), "prefix {end}");
    }
}

#[test]
fn body_and_content_length() {
    let body = "v=0\r\nTo: <sip:9999@evil>\r\nX-Genesys-CallUUID: FROMBODY\r\n";
    let len = body.len();
    // Exact length.
    let exact = format!("Content-Length: {len}");
    let payload = with_body("Content-Length", &[&exact], body);
    let n = parse_default(&payload).unwrap();
    assert_eq!(n.body, body.as_bytes());
    assert_eq!(n.dn.raw(), b"1002");
    assert_eq!(n.call_uuid, Some(&b"TTL7J9EM750GP936CFL0EOACN8000002"[..]));
    // Smaller: extra bytes ignored.
    let payload = with_body("Content-Length", &["Content-Length: 3"], body);
    assert_eq!(parse_default(&payload).unwrap().body, b"v=0");
    // Larger than the datagram.
    let larger = format!("Content-Length: {}", len + 1);
    let payload = with_body("Content-Length", &[&larger], body);
    assert_eq!(
        parse_default(&payload),
        Err(ParseError::ContentLengthExceedsDatagram)
    );
    let payload = with_body("Content-Length", &["l: 99999999999999999999999"], body);
    assert_eq!(parse_default(&payload), Err(ParseError::BadContentLength));
    for bad in [
        "Content-Length: -1",
        "Content-Length: abc",
        "Content-Length:",
    ] {
        let payload = with_body("Content-Length", &[bad], body);
        assert_eq!(
            parse_default(&payload),
            Err(ParseError::BadContentLength),
            "{bad}"
        );
    }
    // Absent: the rest of the datagram is the body.
    let payload = with_body("Content-Length", &[], body);
    assert_eq!(parse_default(&payload).unwrap().body, body.as_bytes());
    // Nothing after the empty line is read as a header.
    let payload = with_body(
        "X-Genesys-CallUUID",
        &[],
        "X-Genesys-CallUUID: FROMBODY\r\n\r\n",
    );
    assert_eq!(parse_default(&payload), Err(ParseError::MissingCallUuid));
    let payload = with_body("To", &[], "To: <sip:1002@h>\r\n\r\n");
    assert_eq!(parse_default(&payload), Err(ParseError::MissingTo));
}

#[test]
fn single_valued_duplicates() {
    let cases: &[(&str, &str, &str)] = &[
        ("Call-ID", "Call-ID: a@h", "i: b@h"),
        ("To", "To: <sip:1002@h>", "t: <sip:1003@h>"),
        ("From", "From: <sip:1@h>", "From: <sip:2@h>"),
        ("CSeq", "CSeq: 2 NOTIFY", "CSeq: 3 NOTIFY"),
        ("Event", "Event: talk", "o: hold"),
        ("Content-Length", "Content-Length: 0", "l: 1"),
        (
            "X-Genesys-CallUUID",
            "X-Genesys-CallUUID: A",
            "x-genesys-calluuid: B",
        ),
    ];
    for (name, first, second) in cases {
        let payload = with(name, &[first, "Max-Forwards: 70", second]);
        assert_eq!(
            parse_default(&payload),
            Err(ParseError::ConflictingHeader),
            "{}",
            show(&payload)
        );
        // Identical repeats (whitespace around the value aside) are tolerated.
        let again = first.replacen(':', ":  ", 1);
        let payload = with(name, &[first, &again]);
        assert!(parse_default(&payload).is_ok(), "{}", show(&payload));
    }
    // Via is multi-valued: the first (topmost) one counts.
    let payload = with(
        "Via",
        &[
            "Via: SIP/2.0/UDP a;branch=top",
            "v: SIP/2.0/UDP b;branch=second",
        ],
    );
    assert_eq!(
        parse_default(&payload).unwrap().via_branch,
        Some(&b"top"[..])
    );
}

#[test]
fn to_header_forms() {
    let cases: &[(&str, Result<&str, ParseError>)] = &[
        ("To: <sip:1002@192.168.210.81>;tag=f90c", Ok("1002")),
        ("To: sip:1003@192.168.210.81:5060;tag=31D1", Ok("1003")),
        (
            r#"To: "Agent <x>; y, \"z\"" <sip:1002@h>;tag=1"#,
            Ok("1002"),
        ),
        ("To: Agent <sip:1002@h>", Ok("1002")),
        ("To: <SIPS:1002@h>", Ok("1002")),
        ("To: sIp:1002@h", Ok("1002")),
        (
            "To: <tel:+1-201-555-0123;phone-context=x>;tag=1",
            Ok("+12015550123"),
        ),
        ("To: tel:(201)555.0123;tag=1", Ok("2015550123")),
        ("To: <sip:%31%30%30%32@h>", Ok("1002")),
        ("To: <sip:a%2531@h>", Ok("a%31")),
        ("To: <sip:100%2@h>", Ok("100%2")),
        ("To: <sip:1002;user-param=x@h;user=phone>", Ok("1002")),
        ("To: <sip:1002:secret@h>", Ok("1002")),
        ("To: <sip:1002@[2001:db8::10]:5070>;tag=1", Ok("1002")),
        ("To: sip:1002@[2001:db8::10];tag=1", Ok("1002")),
        ("To: <sip:%C3%A9@h>", Ok("\u{e9}")),
        ("To: <sip:%FF@h>", Ok("\u{fffd}")),
        // No user: the Request-URI and From are never used instead.
        ("To: <sip:192.168.210.81>;tag=1", Err(ParseError::NoDn)),
        ("To: <sip:[2001:db8::10]:5070>", Err(ParseError::NoDn)),
        ("To: <sip:;x=1@h>", Err(ParseError::NoDn)),
        ("To: sip:1002;p=1@h", Err(ParseError::NoDn)),
        ("To: <tel:;phone-context=x>", Err(ParseError::NoDn)),
        ("To: isbn:2983792873", Err(ParseError::UnsupportedToScheme)),
        (
            "To: <http://example.com/1002>",
            Err(ParseError::UnsupportedToScheme),
        ),
        (
            r#"To: "Mr. J. User <sip:j.user@example.com>"#,
            Err(ParseError::BadTo),
        ),
        ("To: <sip:1002@h", Err(ParseError::BadTo)),
        ("To: <sip:1002@h> <sip:1003@h>", Err(ParseError::BadTo)),
        ("To:", Err(ParseError::BadTo)),
    ];
    for (line, expected) in cases {
        let payload = with("To", &[line]);
        let got = dn_of_payload(&payload);
        assert_eq!(got, expected.map(str::to_owned), "{}", show(&payload));
    }
    let payload = with("To", &[]);
    assert_eq!(parse_default(&payload), Err(ParseError::MissingTo));
    // A Request-URI with a user does not stand in for a To without one.
    let mut headers = base_headers();
    headers[1] = "To: <sip:192.168.210.81>".to_owned();
    let payload = build("NOTIFY sip:1002@192.168.210.54 SIP/2.0", &headers, "");
    assert_eq!(parse_default(&payload), Err(ParseError::NoDn));
}

#[test]
fn from_gives_the_caller() {
    let cases: &[(&[&str], Option<&str>)] = &[
        (&["From: sip:1003@h;tag=1"], Some("1003")),
        (
            &["f: \"Caller, A\" <sip:%35551234@h>;tag=1"],
            Some("5551234"),
        ),
        (&["From: <tel:+1-555-1234>;tag=1"], Some("+15551234")),
        (&["From: <sip:h>;tag=1"], None),
        (&["From: <http://x>;tag=1"], None),
        (&["From: \"unterminated <sip:1@h>"], None),
        (&[], None),
    ];
    for (lines, expected) in cases {
        let payload = with("From", lines);
        let n = notification(&payload, &ParseOptions::default()).unwrap();
        assert_eq!(n.caller.as_deref(), *expected, "{}", show(&payload));
        // The caller never becomes the DN.
        assert_eq!(n.dn, "1002");
    }
}

#[test]
fn via_branch_of_the_top_via() {
    let cases: &[(&[&str], Option<&[u8]>)] = &[
        (
            &["Via: SIP/2.0/UDP h:5060;branch=z9hG4bK1"],
            Some(b"z9hG4bK1"),
        ),
        (
            &["Via: SIP/2.0/UDP h;rport ; branch = z9hG4bK1 ;received=1.2.3.4"],
            Some(b"z9hG4bK1"),
        ),
        (
            &["Via: SIP/2.0/UDP a;branch=one, SIP/2.0/UDP b;branch=two"],
            Some(b"one"),
        ),
        (&["Via: SIP/2.0/UDP a, SIP/2.0/UDP b;branch=two"], None),
        (&["Via: SIP/2.0/UDP h"], None),
        (&[], None),
    ];
    for (lines, expected) in cases {
        let payload = with("Via", lines);
        let n = parse_default(&payload).unwrap();
        assert_eq!(n.via_branch, *expected, "{}", show(&payload));
    }
}

#[test]
fn event_rules() {
    type Case = (&'static [&'static str], Result<&'static [u8], ParseError>);
    let cases: &[Case] = &[
        (&["Event: talk"], Ok(b"talk")),
        (&["Event: hold"], Ok(b"hold")),
        (&["Event: talk;id=1"], Ok(b"talk")),
        (&["Event: talk ; id = 1"], Ok(b"talk")),
        (&["Event:talk;id=\"x;y\""], Ok(b"talk")),
        (&["o: Talk"], Ok(b"Talk")),
        (&["Event: presence.winfo"], Ok(b"presence.winfo")),
        (&["Event:"], Err(ParseError::MissingEvent)),
        (&[], Err(ParseError::MissingEvent)),
        (&["Event: ;id=1"], Err(ParseError::BadEvent)),
        (&["Event: talk now"], Err(ParseError::BadEvent)),
    ];
    for (lines, expected) in cases {
        let payload = with("Event", lines);
        let got = parse_default(&payload).map(|n| n.event);
        assert_eq!(got, *expected, "{}", show(&payload));
    }
}

#[test]
fn cseq_rules() {
    let cases: &[(&[&str], Result<u32, ParseError>)] = &[
        (&["CSeq: 2 NOTIFY"], Ok(2)),
        (&["CSeq: 0009 NOTIFY"], Ok(9)),
        (&["CSeq:4294967295   NOTIFY"], Ok(u32::MAX)),
        (&["CSeq: 4294967296 NOTIFY"], Err(ParseError::BadCseq)),
        (&["CSeq: 2 INVITE"], Err(ParseError::CseqMethodMismatch)),
        (&["CSeq: 2 notify"], Err(ParseError::CseqMethodMismatch)),
        (&["CSeq: NOTIFY"], Err(ParseError::BadCseq)),
        (&["CSeq: 2"], Err(ParseError::BadCseq)),
        (&["CSeq: x2 NOTIFY"], Err(ParseError::BadCseq)),
        (&[], Err(ParseError::MissingCseq)),
    ];
    for (lines, expected) in cases {
        let payload = with("CSeq", lines);
        let got = parse_default(&payload).map(|n| n.cseq);
        assert_eq!(got, *expected, "{}", show(&payload));
    }
}

#[test]
fn call_id_and_call_uuid_rules() {
    let payload = with("Call-ID", &[]);
    assert_eq!(parse_default(&payload), Err(ParseError::MissingCallId));
    let payload = with("Call-ID", &["Call-ID:  "]);
    assert_eq!(parse_default(&payload), Err(ParseError::MissingCallId));
    let payload = with(
        "Call-ID",
        &["Call-ID: \t weird%ZK-!.*_+'@word`~)(><:\\/\"][?}{ "],
    );
    assert_eq!(
        parse_default(&payload).unwrap().call_id,
        b"weird%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    );

    let allow = ParseOptions::new(Vec::<String>::new(), true);
    for lines in [
        &[][..],
        &["X-Genesys-CallUUID:"],
        &["X-Genesys-CallUUID:   "],
    ] {
        let payload = with("X-Genesys-CallUUID", lines);
        assert_eq!(parse_default(&payload), Err(ParseError::MissingCallUuid));
        assert_eq!(parse(&payload, &allow).unwrap().call_uuid, None);
        assert_eq!(notification(&payload, &allow).unwrap().call_uuid, None);
    }
    let payload = with("X-Genesys-CallUUID", &["X-Genesys-CallUUID: \t UUID-1 \t"]);
    assert_eq!(
        parse_default(&payload).unwrap().call_uuid,
        Some(&b"UUID-1"[..])
    );
}

#[test]
fn extra_headers_under_configured_names() {
    let payload = with(
        "Subscription-State",
        &[
            "subscription-state: active;expires=60",
            "X-Genesys-ANI: 5551234",
            "X-Multi: a",
            "x-multi: b,",
            " c",
        ],
    );
    let options = ParseOptions::new(
        [
            "Subscription-State",
            "X-GENESYS-ANI",
            "X-Multi",
            "Contact",
            "m",
            "X-Absent",
        ],
        false,
    );
    let n = notification(&payload, &options).unwrap();
    let expected: Vec<(String, String)> = [
        ("Subscription-State", "active;expires=60"),
        ("X-GENESYS-ANI", "5551234"),
        ("X-Multi", "a, b, c"),
        ("Contact", "<sip:1003@192.168.210.81:5060>"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(n.extra_headers, expected);

    let notify = parse(&payload, &options).unwrap();
    let raw: Vec<(&str, &[u8])> = notify.extra_headers(&options).collect();
    assert!(raw.contains(&("Subscription-State", &b"active;expires=60"[..])));
    assert!(raw.contains(&("m", &b"<sip:1003@192.168.210.81:5060>"[..])));
    assert_eq!(raw.len(), 6, "{raw:?}");
    // Nothing configured: nothing copied.
    let n = notification(&payload, &ParseOptions::default()).unwrap();
    assert!(n.extra_headers.is_empty());
    assert_eq!(notify.extra_headers(&ParseOptions::default()).count(), 0);
}

#[test]
fn non_utf8_becomes_replacement_characters() {
    let mut payload = with("Call-ID", &["Call-ID: id-\u{1}-X@h"]);
    let at = payload.windows(3).position(|w| w == b"-X@").unwrap();
    payload[at + 1] = 0xff;
    let n = notification(&payload, &ParseOptions::default()).unwrap();
    assert_eq!(n.call_id, "id-\u{1}-\u{fffd}@h");
    let json = serde_json::to_string(&n.json(crate::event::JsonOptions::default())).unwrap();
    assert!(
        json.contains("\"call_id\":\"id-\\u0001-\u{fffd}@h\""),
        "{json}"
    );
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["call_id"], "id-\u{1}-\u{fffd}@h");
}

#[test]
fn parse_errors_have_unique_snake_case_reasons_and_lowercase_messages() {
    let mut reasons: Vec<&str> = ParseError::ALL.iter().map(|e| e.reason()).collect();
    assert!(reasons.len() >= 20);
    for error in ParseError::ALL {
        let reason = error.reason();
        assert!(
            reason
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{reason}"
        );
        let message = error.to_string();
        assert_eq!(message, message.to_lowercase(), "{message}");
    }
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), ParseError::ALL.len());
}

// ---- property tests ----

/// The fields a generated NOTIFY must yield.
#[derive(Clone, Debug)]
struct Fields {
    dn: String,
    tel: bool,
    call_id: String,
    call_uuid: String,
    event: String,
    cseq: u32,
    branch: String,
    caller: String,
}

fn fields() -> impl Strategy<Value = Fields> {
    (
        prop_oneof![
            "[0-9]{1,8}".prop_map(|dn| (dn, false)),
            "[A-Za-z0-9+._~ ;@%\u{e9}-]{1,12}".prop_map(|dn| (dn, false)),
            "\\+?[0-9]{1,12}".prop_map(|dn| (dn, true)),
        ],
        "[A-Za-z0-9.!%*_+`'~-]{1,24}(@[a-z0-9.]{1,12})?",
        "[0-9A-V]{32}",
        "[a-z]{1,8}(\\.[a-z]{1,5})?",
        any::<u32>(),
        "z9hG4bK[A-Za-z0-9-]{1,20}",
        "[0-9]{1,8}",
    )
        .prop_map(
            |((dn, tel), call_id, call_uuid, event, cseq, branch, caller)| Fields {
                dn,
                tel,
                call_id,
                call_uuid,
                event,
                cseq,
                branch,
                caller,
            },
        )
}

/// How one header is written: a bag of random bits decides case, compact form, whitespace and
/// folding.
struct Style(u64);

impl Style {
    fn bit(&mut self) -> bool {
        let bit = self.0 & 1 == 1;
        self.0 = self.0.rotate_right(1);
        bit
    }

    fn pick<'s>(&mut self, choices: &[&'s str]) -> &'s str {
        let index = (self.0 % choices.len() as u64) as usize;
        self.0 = self.0.rotate_right(3);
        choices[index]
    }
}

/// %-encodes the bytes a SIP user cannot carry raw, and random others.
fn encode_user(user: &str, style: &mut Style) -> String {
    let mut out = String::new();
    for byte in user.bytes() {
        let must = !(byte.is_ascii_alphanumeric() || b"+._~-".contains(&byte));
        if must || style.bit() {
            let hex = if style.bit() {
                format!("%{byte:02X}")
            } else {
                format!("%{byte:02x}")
            };
            out.push_str(&hex);
        } else {
            out.push(char::from(byte));
        }
    }
    out
}

/// Inserts tel visual separators.
fn separate(number: &str, style: &mut Style) -> String {
    let mut out = String::new();
    for c in number.chars() {
        out.push(c);
        if style.bit() && style.bit() {
            out.push_str(style.pick(&["-", ".", "(", ")"]));
        }
    }
    out
}

fn to_value(f: &Fields, style: &mut Style) -> String {
    let scheme = style.pick(&["sip", "SIP", "Sip", "sips"]);
    if f.tel {
        let number = separate(&f.dn, style);
        let tel = style.pick(&["tel", "TEL"]);
        return match style.pick(&["addr", "name", "display"]) {
            "addr" => format!("{tel}:{number};phone-context=example.com;tag=x1"),
            "name" => format!("<{tel}:{number};phone-context=x>;tag=x1"),
            _ => format!("\"Agent\" <{tel}:{number}>;tag=x1"),
        };
    }
    let user = encode_user(&f.dn, style);
    let host = style.pick(&[
        "192.168.210.81",
        "192.168.210.81:5060",
        "[2001:db8::10]:5070",
    ]);
    match style.pick(&["addr", "name", "quoted", "token", "params"]) {
        "addr" => format!("{scheme}:{user}@{host};tag=f90c"),
        "name" => format!("<{scheme}:{user}@{host}>;tag=f90c"),
        "quoted" => format!(r#""Agent <{user}>; \"x\", y" <{scheme}:{user}@{host}>;tag=f90c"#),
        "token" => format!("Agent Smith<{scheme}:{user}@{host};transport=udp>"),
        _ => format!("<{scheme}:{user};isub=1@{host};user=phone> ; tag = f90c"),
    }
}

fn header_name(long: &str, compact: Option<&str>, style: &mut Style) -> String {
    if let Some(compact) = compact {
        if style.bit() {
            return compact.to_owned();
        }
    }
    long.chars()
        .map(|c| {
            if style.bit() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Writes one header line (possibly folded over several lines) with random cosmetics.
fn header_line(long: &str, compact: Option<&str>, value: &str, style: &mut Style) -> String {
    let name = header_name(long, compact, style);
    let before_colon = style.pick(&["", "", " ", "\t "]);
    let after_colon = style.pick(&["", " ", " ", "  ", "\t", "\r\n ", "\r\n\t"]);
    let trailing = style.pick(&["", "", " ", "\t"]);
    // Folding: a whitespace run inside the value may become CRLF + whitespace, except
    // inside quoted strings, where it would change the display name (harmless, but keep the
    // generator simple).
    let value = if !value.contains('"') && style.bit() {
        value.replacen(' ', "\r\n  ", 1)
    } else {
        value.to_owned()
    };
    format!("{name}{before_colon}:{after_colon}{value}{trailing}")
}

fn render(f: &Fields, seeds: &[u64], order: &[usize], lf_only: bool, body: &str) -> Vec<u8> {
    let style = |i: usize| Style(seeds[i % seeds.len()]);
    let event_params = if seeds[0] & 0x100 == 0 {
        ""
    } else {
        " ; id = 7"
    };
    let lines = [
        header_line("To", Some("t"), &to_value(f, &mut style(0)), &mut style(1)),
        header_line(
            "From",
            Some("f"),
            &format!("\"Caller\" <sip:{}@10.0.0.1>;tag=a1", f.caller),
            &mut style(2),
        ),
        header_line("Call-ID", Some("i"), &f.call_id, &mut style(3)),
        header_line("CSeq", None, &format!("{} NOTIFY", f.cseq), &mut style(4)),
        header_line(
            "Content-Length",
            Some("l"),
            &body.len().to_string(),
            &mut style(5),
        ),
        header_line(
            "Via",
            Some("v"),
            &format!("SIP/2.0/UDP 10.0.0.1:5060;branch={};rport", f.branch),
            &mut style(6),
        ),
        header_line(
            "Event",
            Some("o"),
            &format!("{}{event_params}", f.event),
            &mut style(7),
        ),
        header_line("X-Genesys-CallUUID", None, &f.call_uuid, &mut style(8)),
        header_line("Contact", Some("m"), "<sip:10.0.0.1:5060>", &mut style(9)),
        header_line("Subscription-State", None, "active", &mut style(10)),
        header_line("Max-Forwards", None, "70", &mut style(11)),
        header_line("Content-Type", Some("c"), "text/plain", &mut style(12)),
    ];
    let mut out = String::new();
    if seeds[0] & 0x200 != 0 {
        out.push_str("\r\n");
    }
    out.push_str(REQUEST_LINE);
    out.push_str("\r\n");
    for &i in order {
        out.push_str(&lines[i]);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    if lf_only {
        out = out.replace("\r\n", "\n");
    }
    out.into_bytes()
}

fn expected_dn(f: &Fields) -> String {
    f.dn.clone()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let options = ParseOptions::new(["Contact", "X-Foo"], true);
        if let Ok(n) = parse(&payload, &options) {
            let _ = n.to_notification(&options, meta());
        }
        let mut slots = [Header::EMPTY; 16];
        let _ = parse_message(&payload, &mut slots);
    }

    #[test]
    fn mutated_notify_never_panics(
        f in fields(),
        seeds in proptest::collection::vec(any::<u64>(), 13),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let order: Vec<usize> = (0..12).collect();
        let mut payload = render(&f, &seeds, &order, false, "");
        for (at, byte) in edits {
            let i = at.index(payload.len());
            payload[i] = byte;
        }
        let end = cut.index(payload.len() + 1);
        let options = ParseOptions::new(["Contact", "m", "X-Foo"], false);
        for payload in [&payload[..], &payload[..end]] {
            if let Ok(n) = parse(payload, &options) {
                let _ = n.to_notification(&options, meta());
            }
        }
    }

    #[test]
    fn generated_notify_yields_its_fields(
        f in fields(),
        seeds in proptest::collection::vec(any::<u64>(), 13),
        order in Just((0..12).collect::<Vec<usize>>()).prop_shuffle(),
        lf_only in any::<bool>(),
        body in "[ -~]{0,40}",
    ) {
        let payload = render(&f, &seeds, &order, lf_only, &body);
        let options = ParseOptions::new(["Subscription-State", "max-forwards"], false);
        let parsed = parse(&payload, &options);
        prop_assert!(parsed.is_ok(), "{:?}: {}", parsed, show(&payload));
        let Ok(notify) = parsed else { unreachable!() };
        let n = notify.to_notification(&options, meta());
        prop_assert_eq!(&n.dn, &expected_dn(&f), "{}", show(&payload));
        prop_assert_eq!(&n.call_id, &f.call_id);
        prop_assert_eq!(n.call_uuid.as_deref(), Some(f.call_uuid.as_str()));
        prop_assert_eq!(&n.event, &f.event);
        prop_assert_eq!(n.cseq, f.cseq);
        prop_assert_eq!(n.via_branch.as_deref(), Some(f.branch.as_str()));
        prop_assert_eq!(n.caller.as_deref(), Some(f.caller.as_str()));
        prop_assert_eq!(notify.body, body.as_bytes());
        let expected_extras = vec![
            ("Subscription-State".to_owned(), "active".to_owned()),
            ("max-forwards".to_owned(), "70".to_owned()),
        ];
        prop_assert_eq!(n.extra_headers, expected_extras);
    }
}
