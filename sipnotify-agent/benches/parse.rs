//! Parse benchmark: our zero-copy parser against rsip, ezk-sip-types and the field report's
//! regexes (`shared/seed/sip-notify-parser.py`, in the `regex` crate), each extracting the same
//! four bridge fields (dn, call_id, call_uuid, event) from the same datagrams:
//! - `genesys-539B`: the real Genesys NOTIFY sent to Asterisk (corpus `genesys_log_03`);
//! - `body-2KB`: the same headers plus a dialog-info body, about 2 KB.
//!
//! Goals (issue 3): ours ≤ 200 ns/message, ≥ 6× faster than rsip and ezk, ≥ 10× faster than
//! the regexes. Run: `cargo bench -p sipnotify-agent --bench parse`.

use std::{hint::black_box, path::Path};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sipnotify_agent::sip::{self, ParseOptions};

/// The four fields, owned, as every contender reports them.
type Fields = (String, String, String, String);

fn load_genesys() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus/genesys-notify/genesys_log_03_talk_to_192.168.210.54_5061.sip");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the shared/ corpus must sit beside the repository clone)",
            path.display()
        )
    })
}

/// The Genesys NOTIFY with a Content-Type and an XML body, padded to about 2 KB.
fn with_body(genesys: &[u8]) -> Vec<u8> {
    let head_end = genesys.len() - 2; // drop the empty line's CRLF
    let mut body = String::from(
        "<?xml version=\"1.0\"?>\r\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" \
         version=\"3\" state=\"full\" entity=\"sip:1002@192.168.210.81\">\r\n",
    );
    let mut n = 0;
    while body.len() < 1_400 {
        body.push_str(&format!(
            "  <dialog id=\"640476ED-{n}\" call-id=\"640476ED-F320-46F0-975D-6290F4CB29F6-6\" \
             direction=\"recipient\"><state>confirmed</state></dialog>\r\n"
        ));
        n += 1;
    }
    body.push_str("</dialog-info>\r\n");
    let head = String::from_utf8_lossy(&genesys[..head_end]).replace(
        "Content-Length: 0\r\n",
        &format!("Content-Length: {}\r\n", body.len()),
    );
    format!("{head}Content-Type: application/dialog-info+xml\r\n\r\n{body}").into_bytes()
}

type Borrowed<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a [u8]);

fn ours<'a>(payload: &'a [u8], options: &ParseOptions) -> Option<Borrowed<'a>> {
    let notify = sip::parse(payload, options).ok()?;
    Some((
        notify.dn.raw(),
        notify.call_id,
        notify.call_uuid?,
        notify.event,
    ))
}

fn ours_owned(payload: &[u8], options: &ParseOptions) -> Option<Fields> {
    let (dn, call_id, call_uuid, event) = ours(payload, options)?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Some((text(dn), text(call_id), text(call_uuid), text(event)))
}

fn rsip(payload: &[u8]) -> Option<Fields> {
    use rsip::{
        Header,
        prelude::{HeadersExt, ToTypedHeader, UntypedHeader},
    };
    let request = rsip::Request::try_from(payload).ok()?;
    let dn = request.to_header().ok()?.typed().ok()?.uri.auth?.user;
    let call_id = request.call_id_header().ok()?.value().to_owned();
    let mut call_uuid = None;
    let mut event = None;
    for header in request.headers.iter() {
        match header {
            Header::Event(e) => {
                event = e.value().split(';').next().map(|e| e.trim().to_owned());
            }
            Header::Other(name, value) if name.eq_ignore_ascii_case("X-Genesys-CallUUID") => {
                call_uuid = Some(value.trim().to_owned());
            }
            _ => {}
        }
    }
    Some((dn, call_id, call_uuid?, event?))
}

fn ezk(payload: &[u8]) -> Option<Fields> {
    use ezk_sip_types::{
        Headers, Name,
        header::typed::{CallID, Event, FromTo},
        msg::{Line, MessageLine, PullParser},
        parse::Parse,
        uri::SipUriUserPart,
    };
    const CALL_UUID: Name = Name::custom("X-Genesys-CallUUID", &["x-genesys-calluuid"]);
    let src = bytes::Bytes::copy_from_slice(payload);
    let mut lines = PullParser::new(&src, 0);
    let first = std::str::from_utf8(lines.next()?.ok()?).ok()?;
    let (_, start) = MessageLine::parse(&src)(first).ok()?;
    if !start.is_request() {
        return None;
    }
    let mut headers = Headers::new();
    for line in lines {
        let line = std::str::from_utf8(line.ok()?).ok()?;
        let (_, Line { name, value }) = Line::parse(&src, line).ok()?;
        headers.insert(name, value);
    }
    let to: FromTo = headers.get(Name::TO).ok()?;
    let dn = match to.uri.uri.user_part {
        SipUriUserPart::User(user) => user.to_string(),
        SipUriUserPart::UserPw(user_pw) => user_pw.user.to_string(),
        SipUriUserPart::Empty => return None,
    };
    let call_id = headers.get_named::<CallID>().ok()?.0.to_string();
    let event = headers.get_named::<Event>().ok()?.0;
    let event = event.split(';').next()?.trim().to_owned();
    let call_uuid = headers.get_raw(&CALL_UUID).next()?.trim().to_owned();
    Some((dn, call_id, call_uuid, event))
}

/// The field report's regexes, compiled once.
struct Regexes {
    call_uuid: regex::bytes::Regex,
    to: regex::bytes::Regex,
    call_id: regex::bytes::Regex,
    // The report hard-codes `talk`; reading the event the same way makes the work comparable.
    event: regex::bytes::Regex,
}

impl Regexes {
    fn new() -> Self {
        let re = |pattern: &str| regex::bytes::Regex::new(pattern).expect("valid regex");
        Self {
            call_uuid: re(r"X-Genesys-CallUUID:\s*(\S+)"),
            to: re(r"To:.*<sip:(\d+)@"),
            call_id: re(r"Call-ID:\s*(\S+)"),
            event: re(r"Event:\s*([^;\s]+)"),
        }
    }

    fn extract(&self, payload: &[u8]) -> Option<Fields> {
        let text = |re: &regex::bytes::Regex| -> Option<String> {
            let captures = re.captures(payload)?;
            Some(String::from_utf8_lossy(captures.get(1)?.as_bytes()).into_owned())
        };
        if !payload.starts_with(b"NOTIFY") {
            return None;
        }
        let call_uuid = text(&self.call_uuid)?;
        let dn = text(&self.to)?;
        let call_id = text(&self.call_id)?;
        let event = text(&self.event)?;
        Some((dn, call_id, call_uuid, event))
    }
}

fn bench(c: &mut Criterion) {
    let genesys = load_genesys();
    let body = with_body(&genesys);
    let inputs = [
        (format!("genesys-{}B", genesys.len()), genesys),
        (format!("body-{}B", body.len()), body),
    ];
    let options = ParseOptions::default();
    let regexes = Regexes::new();

    // Every contender must extract the same fields, or the comparison means nothing.
    for (name, payload) in &inputs {
        let expected = ours_owned(payload, &options).expect("ours parses");
        assert_eq!(expected.0, "1002", "{name}");
        assert_eq!(rsip(payload).as_ref(), Some(&expected), "rsip, {name}");
        assert_eq!(ezk(payload).as_ref(), Some(&expected), "ezk, {name}");
        assert_eq!(
            regexes.extract(payload).as_ref(),
            Some(&expected),
            "regex, {name}"
        );
    }

    let mut group = c.benchmark_group("ours");
    for (name, payload) in &inputs {
        group.throughput(Throughput::Bytes(payload.len() as u64));
        group.bench_with_input(BenchmarkId::new("borrowed", name), payload, |b, p| {
            b.iter(|| ours(black_box(p), &options).map(|f| black_box(f).0.len()));
        });
        group.bench_with_input(BenchmarkId::new("owned", name), payload, |b, p| {
            b.iter(|| ours_owned(black_box(p), &options));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("rsip");
    for (name, payload) in &inputs {
        group.throughput(Throughput::Bytes(payload.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), payload, |b, p| {
            b.iter(|| rsip(black_box(p)));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("ezk-sip-types");
    for (name, payload) in &inputs {
        group.throughput(Throughput::Bytes(payload.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), payload, |b, p| {
            b.iter(|| ezk(black_box(p)));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("regex");
    for (name, payload) in &inputs {
        group.throughput(Throughput::Bytes(payload.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), payload, |b, p| {
            b.iter(|| regexes.extract(black_box(p)));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
