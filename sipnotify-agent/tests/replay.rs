//! `sipnotify-agent replay` end to end, through the built binary with `--stdout --no-bridge`:
//! the shared corpus captures, a capture cut short, Linux cooked (SLL and SLL2) captures and a
//! pcapng file built here, and the exit codes for files that are not captures.
//!
//! The corpus lives in `shared/corpus/pcaps`, beside the repository clone (here and in CI).

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use etherparse::PacketBuilder;
use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::EnhancedPacketBlock, interface_description::InterfaceDescriptionBlock,
        },
    },
};
use serde_json::Value;
use sipnotify_testkit::{
    TestBridge,
    frames::{sll, sll2},
};

const RETRANSMISSIONS: &str = "genesys_notify_talk_retrans_SYNTHETIC.pcap";

fn pcaps() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/pcaps");
    assert!(
        dir.join(RETRANSMISSIONS).is_file(),
        "capture corpus not found at {}: these tests need the shared/ folder beside the \
         repository clone ($CARGO_MANIFEST_DIR/../../shared/corpus/pcaps)",
        dir.display()
    );
    dir
}

/// Runs `replay FILE --stdout --no-bridge EXTRA…` with an empty config file, so neither
/// /etc/sipnotify nor the caller's SIPNOTIFY_* variables change the outcome.
fn replay(file: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--stdout", "--no-bridge"];
    args.extend_from_slice(extra);
    replay_with(file, &args)
}

/// Runs `replay FILE ARGS…` (no delivery flags added) with an empty config file.
fn replay_with(file: &Path, args: &[&str]) -> Output {
    let (mut command, _config) = support::isolated_agent();
    command.arg("replay").arg(file).args(args).output().unwrap()
}

/// The JSON objects printed on stdout.
fn objects(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The last line of stderr: the one-line error, when there is one.
fn last_line(output: &Output) -> String {
    stderr(output).lines().last().unwrap_or_default().to_owned()
}

#[test]
fn nine_retransmissions_deliver_one_notification() {
    let output = replay(&pcaps().join(RETRANSMISSIONS), &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let objects = objects(&output);
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert_eq!(
        objects[0],
        serde_json::json!({
            "dn": "1002",
            "call_id": "640476ED-F320-46F0-975D-6290F4CB29F6-6@192.168.210.81",
            "call_uuid": "TTL7J9EM750GP936CFL0EOACN8000002",
            "event": "talk",
        })
    );
    let summary = stderr(&output);
    assert!(
        summary.contains("17 packets, 9 NOTIFYs, 1 delivered, 8 duplicates, 0 rejected"),
        "{summary}"
    );
}

#[test]
fn capture_time_drives_de_duplication() {
    // With a 1 s window the copies (0.5 s, then 1 s and more apart in the capture) no longer
    // fall in one window, although the replay takes milliseconds.
    let output = replay(
        &pcaps().join(RETRANSMISSIONS),
        &["--dedup-window", "1s", "--extras"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let objects = objects(&output);
    assert!(objects.len() > 1, "{objects:?}");
    // The first copy's pcap record time (2026-01-01 14:04:28.638 UTC).
    let first = objects[0]["captured_at"].as_f64().unwrap_or_default();
    let expected = 1_767_276_268.638;
    assert!((first - expected).abs() < 0.001, "captured_at {first}");
    assert_eq!(objects[0]["src"], "192.168.210.81:5060");
    assert_eq!(objects[0]["dst"], "192.168.210.54:5061");
}

#[test]
fn the_other_corpus_captures_hold_no_notification() {
    let dir = pcaps();
    let mut seen = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == RETRANSMISSIONS || !name.ends_with(".pcap") {
            continue;
        }
        seen += 1;
        // Their SIP is on 5060: watch it too, so every message reaches the parser.
        let output = replay(&path, &["--port", "5060", "--port", "5061"]);
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        assert!(output.stdout.is_empty(), "{name}: {:?}", objects(&output));
        let summary = stderr(&output);
        assert!(
            summary.contains("0 NOTIFYs, 0 delivered"),
            "{name}: {summary}"
        );
        assert!(!summary.contains("unsupported"), "{name}: {summary}");
    }
    assert!(seen >= 4, "only {seen} other captures in {}", dir.display());
}

/// Byte offsets of the records of a little-endian pcap file.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        offsets.push(at);
        let incl = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16 + incl;
    }
    offsets
}

#[test]
fn a_cut_capture_delivers_what_precedes_the_cut_then_fails() {
    let bytes = fs::read(pcaps().join(RETRANSMISSIONS)).unwrap();
    let offsets = record_offsets(&bytes);
    assert_eq!(offsets.len(), 17);
    // Records 4.. are the NOTIFY copies: cut inside the third copy's data.
    let cut_record = offsets[6];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.pcap");
    fs::write(&path, &bytes[..cut_record + 40]).unwrap();

    let output = replay(&path, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(objects(&output).len(), 1, "the NOTIFY before the cut");
    let error = last_line(&output);
    assert!(error.starts_with("sipnotify: capture `"), "{error}");
    assert!(error.contains("cut.pcap"), "{error}");
    assert!(
        error.contains(&format!("record at byte {cut_record}")),
        "{error}"
    );
    assert!(stderr(&output).contains("6 packets, 2 NOTIFYs, 1 delivered"));
}

#[test]
fn files_that_are_not_captures_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.pcap");
    fs::write(&text, "hello, this is not a capture").unwrap();
    let output = replay(&text, &[]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output).lines().count(),
        1,
        "one line: {}",
        stderr(&output)
    );
    let error = last_line(&output);
    assert!(error.contains("notes.pcap"), "{error}");
    assert!(error.contains("not a pcap or pcapng file"), "{error}");

    let missing = dir.path().join("missing.pcap");
    let output = replay(&missing, &[]);
    assert_eq!(output.status.code(), Some(2));
    let error = last_line(&output);
    assert!(
        error.starts_with("sipnotify: cannot read capture `"),
        "{error}"
    );
    assert!(error.contains("missing.pcap"), "{error}");
    assert!(output.stdout.is_empty());
}

fn notify(call: u32, dn: &str, branch: &str) -> Vec<u8> {
    format!(
        "NOTIFY sip:192.168.210.54:5061 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.168.210.81:5060;branch={branch}\r\n\
         From: <sip:5551234@192.168.210.81>;tag=a{call}\r\n\
         To: <sip:{dn}@192.168.210.54>;tag=b{call}\r\n\
         Call-ID: call-{call}@192.168.210.81\r\n\
         CSeq: 2 NOTIFY\r\n\
         Event: talk\r\n\
         X-Genesys-CallUUID: UUID{call:028}\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// IPv4/UDP 192.168.210.81:5060 → 192.168.210.54:`port`.
fn ipv4_udp(port: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4([192, 168, 210, 81], [192, 168, 210, 54], 64)
        .udp(5060, port)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn ipv6_udp(port: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut src = [0u8; 16];
    src[..2].copy_from_slice(&[0xfd, 0x00]);
    src[15] = 1;
    let mut dst = src;
    dst[15] = 2;
    PacketBuilder::ipv6(src, dst, 64)
        .udp(5060, port)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// The frames of a `tcpdump -i any` capture: two calls, a retransmission 0.5 s later, the
/// same transaction again 40 s later (beyond the 32 s window: delivered again), a NOTIFY to
/// another port, an INVITE, and an IPv6 NOTIFY.
fn cooked_frames(wrap: fn(&[u8], u16) -> Vec<u8>) -> Vec<(Duration, Vec<u8>)> {
    let t = |ms: u64| Duration::from_millis(1_700_000_000_000 + ms);
    vec![
        (
            t(0),
            wrap(&ipv4_udp(5061, &notify(1, "1002", "z9hG4bK-1")), 0x0800),
        ),
        (
            t(500),
            wrap(&ipv4_udp(5061, &notify(1, "1002", "z9hG4bK-1")), 0x0800),
        ),
        (
            t(600),
            wrap(&ipv4_udp(5062, &notify(9, "9999", "z9hG4bK-9")), 0x0800),
        ),
        (
            t(700),
            wrap(
                &ipv4_udp(5061, b"INVITE sip:1002@x SIP/2.0\r\n\r\n"),
                0x0800,
            ),
        ),
        (
            t(800),
            wrap(&ipv6_udp(5061, &notify(2, "1003", "z9hG4bK-2")), 0x86dd),
        ),
        (
            t(40_000),
            wrap(&ipv4_udp(5061, &notify(1, "1002", "z9hG4bK-1")), 0x0800),
        ),
    ]
}

fn write_pcap(path: &Path, datalink: DataLink, frames: &[(Duration, Vec<u8>)]) {
    let header = PcapHeader {
        datalink,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(Vec::new(), header).unwrap();
    for (ts, frame) in frames {
        writer
            .write_packet(&PcapPacket::new(*ts, frame.len() as u32, frame))
            .unwrap();
    }
    fs::write(path, writer.into_writer()).unwrap();
}

fn dns_and_calls(objects: &[Value]) -> Vec<(String, String)> {
    objects
        .iter()
        .map(|o| {
            (
                o["dn"].as_str().unwrap_or_default().to_owned(),
                o["call_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn linux_cooked_captures_yield_their_notifications() {
    let dir = tempfile::tempdir().unwrap();
    for (name, datalink, wrap) in [
        (
            "sll.pcap",
            DataLink::LINUX_SLL,
            sll as fn(&[u8], u16) -> Vec<u8>,
        ),
        ("sll2.pcap", DataLink::LINUX_SLL2, sll2),
    ] {
        let path = dir.path().join(name);
        write_pcap(&path, datalink, &cooked_frames(wrap));
        let output = replay(&path, &["--extras"]);
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        let objects = objects(&output);
        assert_eq!(
            dns_and_calls(&objects),
            [
                ("1002".into(), "call-1@192.168.210.81".into()),
                ("1003".into(), "call-2@192.168.210.81".into()),
                ("1002".into(), "call-1@192.168.210.81".into()),
            ],
            "{name}"
        );
        assert_eq!(objects[1]["src"], "[fd00::1]:5060", "{name}");
        assert!(
            stderr(&output).contains("6 packets, 4 NOTIFYs, 3 delivered, 1 duplicates"),
            "{name}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn pcapng_files_are_read_with_their_timestamp_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ethernet.pcapng");
    let mut writer = PcapNgWriter::new(Vec::new()).unwrap();
    // No if_tsresol option: timestamps are in microseconds.
    writer
        .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0))
        .unwrap();
    let mut ethernet = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    ethernet.extend_from_slice(&ipv4_udp(5061, &notify(7, "2001", "z9hG4bK-7")));
    let micros: u64 = 1_700_000_123_250_000;
    writer
        .write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            // pcap-file 2 writes the raw count it is given: microseconds here.
            timestamp: Duration::from_nanos(micros),
            original_len: ethernet.len() as u32,
            data: ethernet.into(),
            options: vec![],
        })
        .unwrap();
    fs::write(&path, writer.into_inner()).unwrap();

    let output = replay(&path, &["--extras"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let objects = objects(&output);
    assert_eq!(
        dns_and_calls(&objects),
        [("2001".into(), "call-7@192.168.210.81".into())]
    );
    let at = objects[0]["captured_at"].as_f64().unwrap_or_default();
    assert!((at - 1_700_000_123.25).abs() < 0.001, "captured_at {at}");
}

#[test]
fn realtime_speed_reproduces_the_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gap.pcap");
    let frames = vec![
        (
            Duration::from_secs(1_700_000_000),
            sll2(&ipv4_udp(5061, &notify(1, "1002", "z9hG4bK-1")), 0x0800),
        ),
        (
            Duration::from_millis(1_700_000_000_600),
            sll2(&ipv4_udp(5061, &notify(2, "1003", "z9hG4bK-2")), 0x0800),
        ),
    ];
    write_pcap(&path, DataLink::LINUX_SLL2, &frames);
    let started = std::time::Instant::now();
    let output = replay(&path, &["--speed", "realtime"]);
    let took = started.elapsed();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(objects(&output).len(), 2);
    assert!(took >= Duration::from_millis(600), "took {took:?}");
}

async fn replay_async(file: PathBuf, args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        replay_with(&file, &args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_gets_the_notification_once() {
    let bridge = TestBridge::start_default().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    bridge.write_ca_file(&ca).unwrap();
    let file = pcaps().join(RETRANSMISSIONS);

    let output = replay_async(
        file.clone(),
        vec![
            "--bridge-url".into(),
            bridge.url().to_owned(),
            "--ca-file".into(),
            ca.to_string_lossy().into_owned(),
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(output.stdout.is_empty());
    let received = bridge.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0].object["call_uuid"],
        "TTL7J9EM750GP936CFL0EOACN8000002"
    );
    assert!(received[0].idempotency_key.is_some());

    // Without the CA the certificate is untrusted: a configuration error found before
    // reading (exit 2), naming both remedies.
    let output = replay_async(file, vec!["--bridge-url".into(), bridge.url().to_owned()]).await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let error = last_line(&output);
    assert!(
        error.contains("--ca-file PEM") && error.contains("--insecure"),
        "{error}"
    );
    assert_eq!(bridge.received().len(), 1);
}

#[test]
fn a_full_queue_makes_reading_wait_instead_of_dropping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.pcap");
    let frames: Vec<(Duration, Vec<u8>)> = (0..3000u32)
        .map(|i| {
            let payload = notify(i, "1002", &format!("z9hG4bK-{i}"));
            (
                Duration::from_millis(1_700_000_000_000 + u64::from(i)),
                sll2(&ipv4_udp(5061, &payload), 0x0800),
            )
        })
        .collect();
    write_pcap(&path, DataLink::LINUX_SLL2, &frames);
    let output = replay(&path, &["--queue-capacity", "8"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let objects = objects(&output);
    assert_eq!(objects.len(), 3000);
    assert_eq!(objects[2999]["call_id"], "call-2999@192.168.210.81");
}

#[test]
fn an_interrupt_while_the_bridge_is_down_ends_within_the_shutdown_timeout() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (mut command, _config) = support::isolated_agent();
    let child = command
        .arg("replay")
        .arg(pcaps().join(RETRANSMISSIONS))
        .args(["--bridge-url", &format!("https://127.0.0.1:{port}/x")])
        .args(["--shutdown-timeout", "300ms"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Reading takes milliseconds; then delivery retries against the closed port.
    std::thread::sleep(Duration::from_millis(800));
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: signalling our own child process by its id.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let started = std::time::Instant::now();
    let output = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(text.contains("(interrupted)"), "{text}");
    assert!(
        last_line(&output)
            .ends_with("1 notification(s) were still undelivered at the shutdown deadline"),
        "{text}"
    );
}

/// Writes Ethernet `frames` into a pcap at `path`, one millisecond apart.
fn write_ethernet_ms_apart(path: &Path, frames: Vec<Vec<u8>>) {
    let frames: Vec<(Duration, Vec<u8>)> = frames
        .into_iter()
        .enumerate()
        .map(|(i, frame)| (Duration::from_millis(1_700_000_000_000 + i as u64), frame))
        .collect();
    write_pcap(path, DataLink::ETHERNET, &frames);
}

/// `notify` grown past any Ethernet MTU by a padding header.
fn big_notify(call: u32, dn: &str) -> Vec<u8> {
    let small = String::from_utf8(notify(call, dn, &format!("z9hG4bK-{call}"))).unwrap();
    let pad = format!("X-Pad: {}\r\nContent-Length: 0", "p".repeat(3000));
    small.replace("Content-Length: 0", &pad).into_bytes()
}

/// A NOTIFY fragmented over IPv4 (fragments out of order, one repeated) and one over IPv6, a
/// fragmented NOTIFY to an unwatched port, one missing a fragment, and two NOTIFYs written to
/// a TCP connection in pieces (out of order, one retransmitted with an overlap): each
/// watched, complete NOTIFY is delivered exactly once and the incomplete one is counted.
#[test]
fn fragmented_and_tcp_notifies_are_reassembled_and_delivered_once() {
    use sipnotify_testkit::frames::{ethernet, ipv4, ipv4_fragments, ipv6_fragments, tcp, udp};
    let mut frames = Vec::new();
    let v4 = ipv4_fragments(
        77,
        17,
        &udp(5060, 5061, &big_notify(11, "1011")),
        &[1480, 2960],
    );
    for i in [2, 0, 0, 1] {
        frames.push(ethernet(&v4[i]));
    }
    let v6 = ipv6_fragments(
        78,
        17,
        &udp(5060, 5061, &big_notify(12, "1012")),
        &[1232, 2464],
    );
    for i in [1, 2, 0] {
        frames.push(ethernet(&v6[i]));
    }
    let other = ipv4_fragments(79, 17, &udp(5060, 5062, &big_notify(19, "1019")), &[1480]);
    frames.extend(other.iter().map(|p| ethernet(p)));
    let lost = ipv4_fragments(
        80,
        17,
        &udp(5060, 5061, &big_notify(20, "1020")),
        &[1480, 2960],
    );
    frames.extend([&lost[0], &lost[2]].map(|p| ethernet(p)));

    let stream = [notify(13, "1013", "z9hG4bK-13"), big_notify(14, "1014")].concat();
    let isn = 4_000_000_000u32;
    let seg = |from: usize, to: usize| {
        let seq = isn.wrapping_add(1).wrapping_add(from as u32);
        ethernet(&ipv4(
            6,
            &tcp(40_000, 5061, seq, false, false, &stream[from..to]),
        ))
    };
    frames.push(ethernet(&ipv4(
        6,
        &tcp(40_000, 5061, isn, true, false, &[]),
    )));
    for (from, to) in [
        (0, 100),
        (300, 1400),
        (50, 350),
        (1400, 2900),
        (2900, stream.len()),
    ] {
        frames.push(seg(from, to));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pieces.pcap");
    write_ethernet_ms_apart(&path, frames);
    let output = replay(&path, &[]);
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    let mut delivered = dns_and_calls(&objects(&output));
    delivered.sort();
    let expected: Vec<(String, String)> = [11, 12, 13, 14]
        .map(|n| (format!("10{n}"), format!("call-{n}@192.168.210.81")))
        .into();
    assert_eq!(delivered, expected, "{log}");
    assert!(
        log.contains("reassembled: 2 NOTIFYs from IP fragments, 2 NOTIFYs over TCP"),
        "{log}"
    );
    assert!(log.contains("fragment_incomplete 1"), "{log}");
}

/// Hostile senders: the same NOTIFYs (UDP, IP fragments over IPv4 and IPv6, TCP) from
/// 192.0.2.1 and 2001:db8::1 deliver nothing when `--sip-source` names other networks, and
/// are counted as refused; naming their networks delivers them all.
#[test]
fn notifies_from_outside_sip_source_are_refused_in_every_form() {
    use sipnotify_testkit::frames::{ethernet, ipv4, ipv4_fragments, ipv6_fragments, tcp, udp};
    let mut frames = vec![ethernet(&ipv4(
        17,
        &udp(5060, 5061, &notify(1, "1001", "b1")),
    ))];
    let v4 = ipv4_fragments(77, 17, &udp(5060, 5061, &big_notify(2, "1002")), &[1480]);
    let v6 = ipv6_fragments(78, 17, &udp(5060, 5061, &big_notify(3, "1003")), &[1232]);
    frames.extend(v4.iter().chain(&v6).map(|p| ethernet(p)));
    let message = notify(4, "1004", "b4");
    frames.push(ethernet(&ipv4(6, &tcp(40_000, 5061, 9, true, false, &[]))));
    frames.push(ethernet(&ipv4(
        6,
        &tcp(40_000, 5061, 10, false, false, &message),
    )));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("senders.pcap");
    write_ethernet_ms_apart(&path, frames);

    let refused = replay(
        &path,
        &[
            "--sip-source",
            "192.0.2.128/25",
            "--sip-source",
            "2001:db8:1::/48",
        ],
    );
    let log = stderr(&refused);
    assert!(refused.status.success(), "{log}");
    assert!(objects(&refused).is_empty(), "{log}");
    // The UDP NOTIFY, both first fragments and both TCP segments by the decision; the later
    // fragments by reassembly, which replay hands what the decision did not follow.
    assert!(log.contains("refused: 7 NOTIFYs"), "{log}");

    let allowed = replay(
        &path,
        &[
            "--sip-source",
            "192.0.2.0/25",
            "--sip-source",
            "2001:db8::/48",
        ],
    );
    let log = stderr(&allowed);
    let mut delivered: Vec<String> = objects(&allowed)
        .iter()
        .map(|o| o["dn"].as_str().unwrap().to_owned())
        .collect();
    delivered.sort();
    assert_eq!(delivered, ["1001", "1002", "1003", "1004"], "{log}");
    assert!(!log.contains("refused"), "{log}");
}

/// `replay F --stdout` means print, not post: run in a network namespace of its own where
/// something listens on the default bridge address (127.0.0.1:8000), it prints the
/// notification and that listener never sees a connection.
#[test]
fn stdout_alone_makes_no_network_connection() {
    if !support::privileged("stdout_alone_makes_no_network_connection") {
        return;
    }
    let ns = support::NetNs::new("nonet");
    let listener = ns.enter(|| std::net::TcpListener::bind("127.0.0.1:8000").unwrap());
    listener.set_nonblocking(true).unwrap();
    let config = tempfile::NamedTempFile::new().unwrap();
    let mut command = ns.command(env!("CARGO_BIN_EXE_sipnotify-agent"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SIPNOTIFY_") {
            command.env_remove(key);
        }
    }
    let mut child = command
        .arg("--config")
        .arg(config.path())
        .arg("replay")
        .arg(pcaps().join(RETRANSMISSIONS))
        .arg("--stdout")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A replay that posts would retry against the silent listener until stopped.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let connection = listener.accept();
    assert!(
        matches!(&connection, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "replay --stdout connected to the default bridge address: {connection:?}\n{}",
        stderr(&output)
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(objects(&output).len(), 1);
}

/// A capture of a PBX's HEP feed (UDP to 9060) beside the wire: each NOTIFY delivered once,
/// dated and addressed by its HEP chunks, whatever the HEP version; what is not SIP in HEP is
/// counted in the summary.
#[test]
fn hep_datagrams_to_the_hep_port_are_decapsulated_and_replayed() {
    use sipnotify_agent::hep::decode::build;
    let (src, dst) = (
        "192.0.2.1:5090".parse().unwrap(),
        "192.0.2.2:5061".parse().unwrap(),
    );
    let t = |ms: u64| Duration::from_millis(1_700_000_000_000 + ms);
    let v3 = build::V3 {
        time: Some((1_700_000_000, 0)),
        ..build::V3::sip(src, dst, &notify(1, "1002", "z9hG4bK-1"))
    }
    .encode();
    let rtcp = build::V3 {
        payload_type: Some(5),
        ..build::V3::sip(src, dst, b"\x80\xc8")
    }
    .encode();
    let frames = [
        (t(0), sll(&ipv4_udp(9060, &v3), 0x0800)),
        // The same transaction again, in HEPv1: a duplicate.
        (
            t(1),
            sll(
                &ipv4_udp(
                    9060,
                    &build::v12(1, src, dst, (0, 0), &notify(1, "1002", "z9hG4bK-1")),
                ),
                0x0800,
            ),
        ),
        (t(2), sll(&ipv4_udp(9060, &rtcp), 0x0800)),
        (t(3), sll(&ipv4_udp(9060, b"HEP3\xff\xffjunk"), 0x0800)),
        (
            t(4),
            sll(
                &ipv6_udp(
                    9060,
                    &build::v12(
                        2,
                        src,
                        dst,
                        (1_700_000_000, 4_000),
                        &notify(2, "1003", "z9hG4bK-2"),
                    ),
                ),
                0x86dd,
            ),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hep.pcap");
    write_pcap(&path, DataLink::LINUX_SLL, &frames);
    let output = replay(&path, &["--extras"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let delivered = objects(&output);
    assert_eq!(
        dns_and_calls(&delivered),
        [
            ("1002".into(), "call-1@192.168.210.81".into()),
            ("1003".into(), "call-2@192.168.210.81".into()),
        ]
    );
    assert_eq!(delivered[0]["src"], "192.0.2.1:5090");
    assert_eq!(delivered[0]["iface"], "hep");
    let summary = stderr(&output);
    assert!(
        summary.contains("3 NOTIFYs, 2 delivered, 1 duplicates"),
        "{summary}"
    );
    assert!(
        summary.contains("hep datagrams: bad_length 1, not_sip 1, sip 3"),
        "{summary}"
    );
    // Another --hep-port: the datagrams are no HEP to it, and no NOTIFY either.
    let other = replay(&path, &["--hep-port", "9061"]);
    assert!(objects(&other).is_empty(), "{}", stderr(&other));
    // SIP a PBX heard from outside --sip-source (its inner source, 192.0.2.1) is refused.
    let outside = replay(&path, &["--sip-source", "192.0.2.128/25"]);
    let summary = stderr(&outside);
    assert!(objects(&outside).is_empty(), "{summary}");
    assert!(summary.contains("inner_source_not_allowed 3"), "{summary}");
    let inside = replay(&path, &["--sip-source", "192.0.2.0/25"]);
    assert_eq!(objects(&inside).len(), 2, "{}", stderr(&inside));
}
