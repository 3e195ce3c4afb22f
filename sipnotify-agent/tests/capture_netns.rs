//! End to end over a real veth pair, on each capture path (`--capture xdp`, `--capture
//! af-packet`, and `auto` falling back when another XDP program holds the interface): the
//! agent on the receiving end prints every NOTIFY that crosses the wire exactly once (IPv4 and
//! IPv6, untagged and 802.1Q-tagged), and every datagram (NOTIFY or not) still reaches the
//! socket bound on the receiving side: capture observes and never drops.
//! A TLS ClientHello on the watched port is counted, explained in the log and by doctor.

mod support;

use std::{
    collections::BTreeSet,
    net::UdpSocket,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use support::{
    RECEIVER_MAC_TEXT, VethPair, call_id, call_uuid, genesys_notify, send_raw, start_agent, tagged,
};

/// Counts datagrams arriving on `socket` until told to stop.
fn count_received(socket: UdpSocket, done: Arc<AtomicUsize>) -> thread::JoinHandle<usize> {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut received = 0;
        loop {
            match socket.recv(&mut buf) {
                Ok(_) => received += 1,
                Err(_) if done.load(Ordering::Relaxed) == 1 => return received,
                Err(_) => {}
            }
        }
    })
}

const V4: u32 = 300;
const V6: u32 = 100;
const TAGGED: u32 = 100;
const OTHER: u32 = 100;
const NOTIFIES: u32 = V4 + V6 + TAGGED;

/// A veth pair whose receiving end has a fixed MAC, so raw tagged frames can reach it.
fn network(tag: &str) -> VethPair {
    let net = VethPair::new(tag);
    net.receiver
        .ip(&["link", "set", "veth1", "address", RECEIVER_MAC_TEXT]);
    net
}

/// Sends the test traffic, checks the metrics and what every socket received while the
/// agent runs, then stops it and checks that each NOTIFY was printed exactly once.
/// `capture` is the label the counters must carry; `udp_watched` what they must count.
fn send_and_check(net: &VethPair, agent: support::Agent, capture: &str, udp_watched: u32) {
    let done = Arc::new(AtomicUsize::new(0));
    let watched4 = count_received(net.receiver.udp("10.200.0.2:5061"), done.clone());
    let other4 = count_received(net.receiver.udp("10.200.0.2:5060"), done.clone());
    let watched6 = count_received(net.receiver.udp("[fd00:200::2]:5061"), done.clone());

    net.sender.enter(|| {
        let s4 = UdpSocket::bind("10.200.0.1:0").unwrap();
        let s6 = UdpSocket::bind("[fd00:200::1]:0").unwrap();
        for i in 0..NOTIFIES {
            let event = if i % 2 == 0 { "talk" } else { "hold" };
            let mut message = genesys_notify(i, "1002", event);
            if i % 7 == 0 {
                // Keep-alive CRLFs before the request line, in the same datagram.
                message.splice(0..0, *b"\r\n\r\n");
            }
            if i < V4 {
                s4.send_to(&message, "10.200.0.2:5061").unwrap();
            } else if i < V4 + V6 {
                s6.send_to(&message, "[fd00:200::2]:5061").unwrap();
            } else {
                // VLAN 210, IPv4 and IPv6 in turn; the stack discards these after capture.
                send_raw(&tagged(i % 2 == 1, &message));
                send_raw(&tagged(i % 2 == 1, b"OPTIONS sip:x SIP/2.0\r\n\r\n"));
            }
            if i < OTHER {
                // Traffic the agent must ignore: other methods, an unwatched port.
                s4.send_to(
                    b"INVITE sip:1002@10.200.0.2 SIP/2.0\r\n\r\n",
                    "10.200.0.2:5061",
                )
                .unwrap();
                s4.send_to(&message, "10.200.0.2:5060").unwrap();
            }
            if i % 50 == 49 {
                // Stay well inside the receivers' socket buffers.
                thread::sleep(Duration::from_millis(5));
            }
        }
    });

    // Give the 1 ms ring poll and stdout a moment, then stop the agent.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    // The metrics endpoint counts what crossed the wire.
    let (status, health) = net.receiver.http_get("127.0.0.1:9464", "/healthz");
    assert!(status.contains("200"), "{status}: {health}");
    let (_, text) = net.receiver.http_get("127.0.0.1:9464", "/metrics");
    let kernel = |outcome| {
        support::metric(
            &text,
            "sipnotify_kernel_packets_total",
            &[
                ("iface", "veth1"),
                ("capture", capture),
                ("outcome", outcome),
            ],
        )
    };
    let notifies = f64::from(NOTIFIES);
    assert_eq!(kernel("notify_matched"), Some(notifies), "{text}");
    assert_eq!(kernel("copied"), Some(notifies));
    assert_eq!(kernel("udp_watched"), Some(f64::from(udp_watched)));
    assert_eq!(kernel("ringbuf_full"), Some(0.0));
    let outcomes = [
        "not_udp_or_tcp",
        "later_fragments",
        "bail_short_header",
        "bail_bad_ip_header",
        "bail_ext_header_limit",
        "port_not_watched",
        "empty_payload",
        "tls_record",
        "dtls_record",
        "not_notify",
        "scratch_failed",
        "load_failed",
        "copied",
        "ringbuf_full",
    ];
    let sum: f64 = outcomes.iter().map(|o| kernel(o).unwrap_or(0.0)).sum();
    assert_eq!(
        kernel("packets_seen"),
        Some(sum),
        "packets_seen = the outcomes"
    );
    assert_eq!(
        support::metric(&text, "sipnotify_notifications_total", &[]),
        Some(notifies)
    );

    let stdout = agent.stop();
    done.store(1, Ordering::Relaxed);

    assert_eq!(
        watched4.join().unwrap(),
        (V4 + OTHER) as usize,
        "IPv4 :5061"
    );
    assert_eq!(other4.join().unwrap(), OTHER as usize, "IPv4 :5060");
    assert_eq!(watched6.join().unwrap(), V6 as usize, "IPv6 :5061");

    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each stdout line is JSON"))
        .collect();
    assert_eq!(lines.len(), NOTIFIES as usize, "one line per NOTIFY");
    let seen: BTreeSet<String> = lines
        .iter()
        .map(|v| v["call_id"].as_str().unwrap().to_owned())
        .collect();
    let sent: BTreeSet<String> = (0..NOTIFIES).map(call_id).collect();
    assert_eq!(seen, sent);
    for line in &lines {
        let id = line["call_id"].as_str().unwrap();
        let i = u32::from_str_radix(&id[..8], 16).unwrap();
        assert_eq!(line["dn"], "1002");
        assert_eq!(line["call_uuid"], call_uuid(i));
        assert_eq!(line["event"], if i % 2 == 0 { "talk" } else { "hold" });
    }
}

const AGENT: [&str; 7] = [
    "run",
    "--iface",
    "veth1",
    "--port",
    "5061",
    "--stdout",
    "--no-bridge",
];

fn agent_args(extra: &[&'static str]) -> Vec<&'static str> {
    AGENT.iter().chain(extra).copied().collect()
}

#[test]
fn every_notify_is_printed_once_and_every_datagram_is_delivered() {
    if !support::privileged("every_notify_is_printed_once_and_every_datagram_is_delivered") {
        return;
    }
    let net = network("cap");
    let agent = start_agent(&net.receiver, &agent_args(&["--capture", "xdp"]));
    // XDP sees every datagram to the port: the NOTIFYs, the INVITEs and the tagged OPTIONS.
    send_and_check(&net, agent, "xdp", NOTIFIES + OTHER + TAGGED);
}

#[test]
fn af_packet_capture_prints_every_notify_once_and_passes_every_datagram() {
    if !support::privileged("af_packet_capture_prints_every_notify_once") {
        return;
    }
    let net = network("afp");
    let agent = start_agent(&net.receiver, &agent_args(&["--capture", "af-packet"]));
    // The kernel's classic BPF filter shows only the NOTIFYs to the shared decision.
    send_and_check(&net, agent, "af-packet", NOTIFIES);
}

/// `--stdout` alone posts nothing, so it needs no spool: a spool directory that cannot be
/// created (a read-only /var/lib on a rescue system or in a container) does not stop it.
#[test]
fn stdout_alone_needs_no_spool_and_runs_with_an_unwritable_spool_dir() {
    if !support::privileged("stdout_alone_needs_no_spool") {
        return;
    }
    let net = network("ro");
    // `--stdout` alone: AGENT without its `--no-bridge`.
    let args: Vec<&str> = AGENT[..AGENT.len() - 1]
        .iter()
        .copied()
        // Not even root can create a directory in /proc.
        .chain(["--capture", "xdp", "--spool-dir", "/proc/sipnotify-spool"])
        .collect();
    assert_eq!(args[args.len() - 5], "--stdout");
    let agent = start_agent(&net.receiver, &args);
    send_and_check(&net, agent, "xdp", NOTIFIES + OTHER + TAGGED);
}

/// An XDP program that passes everything, standing in for a DDoS filter or Cilium.
static NOOP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sipnotify-noop"));

#[test]
fn auto_falls_back_to_af_packet_when_another_xdp_program_holds_the_interface() {
    if !support::privileged("auto_falls_back_to_af_packet") {
        return;
    }
    let net = network("fbk");
    let mut other = aya::Ebpf::load(NOOP).expect("load the stand-in XDP program");
    let program: &mut aya::programs::Xdp = other
        .program_mut("sipnotify_noop")
        .unwrap()
        .try_into()
        .unwrap();
    program.load().unwrap();
    net.receiver.enter(|| {
        let ifindex = sipnotify_agent::bpf::interface_index("veth1").unwrap();
        program
            .attach_to_if_index(ifindex, aya::programs::XdpMode::Skb)
            .expect("attach the stand-in XDP program");
    });

    // veth's native XDP copies, so `auto` alone would take AF_PACKET first; naming the XDP
    // mode makes it try XDP and meet the other program.
    let mut agent = start_agent(&net.receiver, &agent_args(&["--xdp-mode", "native"]));
    // Not "capturing …": the readiness line start_agent waits for comes after the socket opens.
    let reason = agent.log_line("falling back to AF_PACKET");
    assert!(
        reason.contains("another XDP program"),
        "the fallback names its reason: {reason}"
    );
    send_and_check(&net, agent, "af-packet", NOTIFIES);
    drop(other);
}

/// The bytes a TLS client opens with: rustls's ClientHello for `name`.
fn client_hello(name: &str) -> Vec<u8> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut connection = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello
}

/// A SIP Server whose trunk was switched to TLS: the ClientHello on TCP 5061 is counted by
/// the program, the agent says what it means and what to do, and doctor reports it.
#[test]
fn a_tls_client_hello_on_the_watched_port_is_counted_and_explained() {
    if !support::privileged("a_tls_client_hello_on_the_watched_port_is_counted_and_explained") {
        return;
    }
    let net = VethPair::new("tls");
    let mut agent = start_agent(
        &net.receiver,
        // XDP named: doctor reads the TLS counters of a running agent's program.
        &[
            "run",
            "--iface",
            "veth1",
            "--capture",
            "xdp",
            "--stdout",
            "--no-bridge",
        ],
    );
    let listener = net
        .receiver
        .enter(|| std::net::TcpListener::bind("10.200.0.2:5061").unwrap());
    let hello = client_hello("asterisk.example");
    assert_eq!(&hello[..2], &[0x16, 0x03], "a TLS record");
    net.sender.enter(|| {
        use std::io::Write as _;
        let mut stream = std::net::TcpStream::connect("10.200.0.2:5061").unwrap();
        stream.set_nodelay(true).unwrap();
        stream.write_all(&hello).unwrap();
        // What follows a handshake is encrypted from anywhere in a record: the flow is not
        // copied again, so reassembly never sees it (no gaps to report).
        for chunk in 0..3u8 {
            std::thread::sleep(Duration::from_millis(20));
            stream.write_all(&[chunk; 700]).unwrap();
        }
    });
    let (_accepted, _) = listener.accept().unwrap();

    agent.wait_for_log("port 5061 carries TLS; ", Duration::from_secs(15));
    let warning = agent.log_line("port 5061 carries TLS; ");
    assert!(warning.contains("--hep-listen 127.0.0.1:9060"), "{warning}");
    let (status, metrics) = net.receiver.http_get("127.0.0.1:9464", "/metrics");
    assert!(status.contains("200"), "{status}");
    let tls = support::metric(
        &metrics,
        "sipnotify_kernel_packets_total",
        &[("iface", "veth1"), ("outcome", "tls_record")],
    );
    assert_eq!(tls, Some(1.0), "{metrics}");
    let tls_flow = support::metric(
        &metrics,
        "sipnotify_kernel_packets_total",
        &[("iface", "veth1"), ("outcome", "tls_flow")],
    );
    assert!(tls_flow >= Some(3.0), "{metrics}");
    assert_eq!(
        support::prometheus::sum(&metrics, "sipnotify_reassembly_lost_total"),
        0.0,
        "{metrics}"
    );

    let config = tempfile::NamedTempFile::new().unwrap();
    let doctor = net
        .receiver
        .command(env!("CARGO_BIN_EXE_sipnotify-agent"))
        .arg("--config")
        .arg(config.path())
        .args(["doctor", "--iface", "veth1", "--no-bridge"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&doctor.stdout);
    let row = report
        .lines()
        .skip_while(|l| !l.starts_with("tls on veth1"))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(row.contains("WARN"), "{report}");
    assert!(
        row.contains("1 packets to a watched port started like a TLS"),
        "{report}"
    );
    assert!(
        row.contains("fix: configure the SIP Server's trunk"),
        "{report}"
    );
    agent.stop();
}
