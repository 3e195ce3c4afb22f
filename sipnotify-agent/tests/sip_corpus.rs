//! The SIP parser against the shared corpus: the real Genesys NOTIFYs must yield exactly the
//! fields in `expected.json`, and the 49 RFC 4475 torture messages must all be rejected as
//! NOTIFYs (none is one) while the header layer reads the valid ones as `index.md` lists them.
//!
//! The corpus lives in `shared/corpus`, beside the repository clone (here and in CI).

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::SystemTime,
};

use sipnotify_agent::{
    event::CaptureMeta,
    sip::{self, Header, ParseError, ParseOptions, StartLine, UriError},
};

fn corpus(sub: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus")
        .join(sub);
    assert!(
        dir.is_dir(),
        "SIP corpus not found at {}: these tests need the shared/ folder beside the repository \
         clone ($CARGO_MANIFEST_DIR/../../shared/corpus)",
        dir.display()
    );
    dir
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn meta() -> CaptureMeta {
    CaptureMeta {
        captured_at: SystemTime::UNIX_EPOCH,
        src: (Ipv4Addr::new(192, 168, 210, 81), 5060).into(),
        dst: (Ipv4Addr::new(192, 168, 210, 54), 5061).into(),
        iface: None,
    }
}

#[test]
fn genesys_notifies_yield_the_expected_fields() {
    let dir = corpus("genesys-notify");
    let expected: serde_json::Value =
        serde_json::from_slice(&read(&dir.join("expected.json"))).expect("expected.json parses");
    let expected = expected.as_object().expect("expected.json is an object");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("list genesys-notify")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sip"))
        .collect();
    files.sort();
    assert_eq!(files.len(), expected.len(), "one expectation per message");
    assert!(files.len() >= 9);

    let options = ParseOptions::default();
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("file name");
        let want = &expected[name];
        let payload = read(&path);
        let notification = sip::parse(&payload, &options)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .to_notification(&options, meta());
        // Exactly the four bridge fields, compared through the bridge JSON itself.
        let json = serde_json::to_value(notification.json(Default::default())).expect("json");
        let four: serde_json::Map<String, serde_json::Value> =
            ["dn", "call_id", "call_uuid", "event"]
                .iter()
                .map(|k| ((*k).to_owned(), want[*k].clone()))
                .collect();
        assert_eq!(json, serde_json::Value::Object(four), "{name}");
        assert_eq!(notification.cseq, 2, "{name}");
        assert!(
            notification
                .via_branch
                .as_deref()
                .is_some_and(|b| b.starts_with("z9hG4bK")),
            "{name}"
        );
        assert!(notification.caller.is_some(), "{name}");
        assert_ne!(
            notification.caller.as_deref(),
            Some(notification.dn.as_str()),
            "{name}"
        );
    }
}

/// File stem, Call-ID, and the To user raw and %-decoded.
type Expectation = (
    &'static str,
    &'static [u8],
    Option<(&'static [u8], &'static [u8])>,
);

/// What a generic SIP parser should read from each valid RFC 4475 message, from `index.md`
/// (file, Call-ID, To user raw, To user %-decoded). `None` for the user: the To URI has no
/// sip/sips user.
const RFC4475_VALID: &[Expectation] = &[
    (
        "wsinv",
        b"wsinv.ndaksdj@192.0.2.1",
        Some((b"vivekg", b"vivekg")),
    ),
    (
        "intmeth",
        b"intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
        Some((
            b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*",
            b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/",
        )),
    ),
    (
        "esc01",
        b"esc01.239409asdfakjkn23onasd0-3234",
        Some((b"%75se%72", b"user")),
    ),
    (
        "escnull",
        b"escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd",
        Some((b"null-%00-null", b"null-\x00-null")),
    ),
    (
        "esc02",
        b"esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf",
        Some((b"resource", b"resource")),
    ),
    (
        "lwsdisp",
        b"lwsdisp.1234abcd@funky.example.com",
        Some((b"user", b"user")),
    ),
    (
        "dblreq",
        b"dblreq.0ha0isndaksdj99sdfafnl3lk233412",
        Some((b"j.user", b"j.user")),
    ),
    (
        "semiuri",
        b"semiuri.0ha0isndaksdj",
        Some((b"j_user", b"j_user")),
    ),
    (
        "transports",
        b"transports.kijh4akdnaqjkwendsasfdj",
        Some((b"user", b"user")),
    ),
    (
        "mpart01",
        b"3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..",
        Some((b"kumiko", b"kumiko")),
    ),
    (
        "unreason",
        b"unreason.1234ksdfak3j2erwedfsASdf",
        Some((b"user", b"user")),
    ),
    (
        "noreason",
        b"noreason.asndj203insdf99223ndf",
        Some((b"user", b"user")),
    ),
    (
        "badbranch",
        b"badbranch.sadonfo23i420jv0as0derf3j3n",
        Some((b"user", b"user")),
    ),
    (
        "unkscm",
        b"unkscm.nasdfasser0q239nwsdfasdkl34",
        Some((b"user", b"user")),
    ),
    (
        "novelsc",
        b"novelsc.asdfasser0q239nwsdfasdkl34",
        Some((b"user", b"user")),
    ),
    ("unksm2", b"unksm2.daksdj@hyphenated-host.example.com", None),
    (
        "bext01",
        b"bext01.0ha0isndaksdj",
        Some((b"j_user", b"j_user")),
    ),
    (
        "invut",
        b"invut.0ha0isndaksdjadsfij34n23d",
        Some((b"j.user", b"j.user")),
    ),
    (
        "regaut01",
        b"regaut01.0ha0isndaksdj",
        Some((b"j.user", b"j.user")),
    ),
    (
        "bcast",
        b"bcast.0384840201234ksdfak3j2erwedfsASdf",
        Some((b"user", b"user")),
    ),
    (
        "zeromf",
        b"zeromf.jfasdlfnm2o2l43r5u0asdfas",
        Some((b"user", b"user")),
    ),
    (
        "cparam01",
        b"cparam01.70710@saturn.example.com",
        Some((b"watson", b"watson")),
    ),
    (
        "cparam02",
        b"cparam02.70710@saturn.example.com",
        Some((b"watson", b"watson")),
    ),
    (
        "regescrt",
        b"regescrt.k345asrl3fdbv@192.0.2.1",
        Some((b"user", b"user")),
    ),
    (
        "sdp01",
        b"sdp01.ndaksdj9342dasdd",
        Some((b"j_user", b"j_user")),
    ),
    (
        "inv2543",
        b"inv2543.1717@ift.client.example.com",
        Some((b"+16505552222", b"+16505552222")),
    ),
];

#[test]
fn rfc4475_messages_are_all_rejected_as_notifies() {
    let dir = corpus("rfc4475");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("list rfc4475")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "dat"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 49, "the 49 RFC 4475 messages");
    let options = ParseOptions::new(["Contact"], true);
    for path in &files {
        let payload = read(path);
        let name = path.file_stem().and_then(|n| n.to_str()).expect("name");
        let result = sip::parse(&payload, &options);
        let expected = if payload.starts_with(b"SIP/2.0 ") {
            ParseError::Response
        } else {
            ParseError::NotNotify
        };
        assert_eq!(result.err(), Some(expected), "{name}");
    }
}

#[test]
fn rfc4475_header_layer_reads_the_valid_messages() {
    let dir = corpus("rfc4475");
    for (name, call_id, user) in RFC4475_VALID {
        let payload = read(&dir.join(format!("{name}.dat")));
        let mut slots = [Header::EMPTY; 64];
        let message =
            sip::parse_message(&payload, &mut slots).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(message.get("Call-ID"), Some(*call_id), "{name}");
        let to = message.get("To").unwrap_or_else(|| panic!("{name}: no To"));
        let to_uri = sip::parse_name_addr(to).unwrap_or_else(|e| panic!("{name}: {e}"));
        match user {
            Some((raw, decoded)) => {
                let user = sip::uri_user(to_uri.uri).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(user.raw, *raw, "{name}");
                let dn = user.dn().unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(dn.bytes().collect::<Vec<u8>>(), *decoded, "{name}");
            }
            None => assert_eq!(
                sip::uri_user(to_uri.uri).err(),
                Some(UriError::UnsupportedScheme),
                "{name}"
            ),
        }
    }
}

#[test]
fn rfc4475_special_cases() {
    let dir = corpus("rfc4475");
    let load = |name: &str| read(&dir.join(format!("{name}.dat")));
    let mut slots = [Header::EMPTY; 64];

    // longreq: the index shortens its Call-ID.
    let payload = load("longreq");
    let message = sip::parse_message(&payload, &mut slots).expect("longreq");
    let call_id = message.get("Call-ID").expect("Call-ID");
    assert!(call_id.starts_with(b"longreq.onereallyreallyreallyreallyreallyreallyreallyreal"));
    assert_eq!(
        sip::dn_of(message.get("To").expect("To")).map(|dn| dn.to_string_lossy()),
        Ok("user".to_owned())
    );

    // dblreq: the trailing INVITE after Content-Length: 0 is ignored.
    let payload = load("dblreq");
    let mut slots = [Header::EMPTY; 64];
    let message = sip::parse_message(&payload, &mut slots).expect("dblreq");
    assert_eq!(message.body, b"");
    assert!(matches!(
        message.start_line,
        StartLine::Request {
            method: b"REGISTER",
            ..
        }
    ));

    // mpart01: a binary body framed by Content-Length, NULs included.
    let payload = load("mpart01");
    let mut slots = [Header::EMPTY; 64];
    let message = sip::parse_message(&payload, &mut slots).expect("mpart01");
    assert!(message.body.contains(&0));

    // Invalid messages the header layer itself rejects.
    for (name, error) in [
        ("clerr", ParseError::ContentLengthExceedsDatagram),
        ("ncl", ParseError::BadContentLength),
        ("mcl01", ParseError::ConflictingHeader),
        ("baddn", ParseError::UnterminatedHeaders),
        ("badvers", ParseError::BadRequestLine),
        ("bigcode", ParseError::BadStatusLine),
        ("ltgtruri", ParseError::BadRequestLine),
        ("lwsruri", ParseError::BadRequestLine),
        ("lwsstart", ParseError::BadRequestLine),
        ("trws", ParseError::BadRequestLine),
    ] {
        let payload = load(name);
        let mut slots = [Header::EMPTY; 64];
        assert_eq!(
            sip::parse_message(&payload, &mut slots).err(),
            Some(error),
            "{name}"
        );
    }

    // quotbal: the unterminated display name makes the To unreadable.
    let payload = load("quotbal");
    let mut slots = [Header::EMPTY; 64];
    let message = sip::parse_message(&payload, &mut slots).expect("quotbal frames");
    assert_eq!(
        sip::parse_name_addr(message.get("To").expect("To")).err(),
        Some(UriError::Malformed)
    );
    // insuf: no To at all.
    let payload = load("insuf");
    let mut slots = [Header::EMPTY; 64];
    let message = sip::parse_message(&payload, &mut slots).expect("insuf frames");
    assert_eq!(message.get("To"), None);
    assert_eq!(message.get("Call-ID"), None);
}

/// Each RFC 4475 request turned into a NOTIFY (method and CSeq method rewritten): still no
/// panic, and the messages the RFC calls invalid in ways this parser checks are rejected.
#[test]
fn rfc4475_requests_rewritten_as_notifies() {
    let dir = corpus("rfc4475");
    let options = ParseOptions::new(Vec::<String>::new(), true);
    for entry in fs::read_dir(&dir).expect("list rfc4475") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "dat") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        let payload = read(&path);
        let Some(space) = payload.iter().position(|&b| b == b' ') else {
            continue;
        };
        if payload.starts_with(b"SIP/") {
            continue;
        }
        let method = payload[..space].to_vec();
        let mut rewritten = b"NOTIFY".to_vec();
        rewritten.extend_from_slice(&replace_all(&payload[space..], &method, b"NOTIFY"));
        let result = sip::parse(&rewritten, &options);
        match name.as_str() {
            "clerr" => assert_eq!(result.err(), Some(ParseError::ContentLengthExceedsDatagram)),
            "ncl" => assert_eq!(result.err(), Some(ParseError::BadContentLength)),
            "mcl01" | "multi01" => assert_eq!(result.err(), Some(ParseError::ConflictingHeader)),
            "insuf" => assert_eq!(result.err(), Some(ParseError::MissingCallId)),
            "quotbal" => assert_eq!(result.err(), Some(ParseError::BadTo)),
            "unksm2" => assert_eq!(result.err(), Some(ParseError::UnsupportedToScheme)),
            "scalar02" => assert_eq!(result.err(), Some(ParseError::BadCseq)),
            "mismatch01" | "mismatch02" => {
                assert_eq!(result.err(), Some(ParseError::CseqMethodMismatch));
            }
            _ => {}
        }
    }
}

fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}
