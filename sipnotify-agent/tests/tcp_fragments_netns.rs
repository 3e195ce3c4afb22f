//! SIP over TCP and NOTIFYs split into IP fragments, live over a veth pair on each capture
//! path (native XDP, generic XDP, AF_PACKET): real sockets in the sending namespace, the
//! agent on the receiving end, and every NOTIFY printed exactly once.
//!
//! - TCP: a client writes NOTIFYs and OPTIONS over IPv4 and IPv6 connections in pieces of
//!   1 to 300 bytes with Nagle off, so messages start mid-segment, span segments and share
//!   them; a server in the receiving namespace reads everything.
//! - Fragments: 3 000-byte NOTIFYs over UDP through a 1 500-byte MTU, which the sending
//!   stack splits into three IPv4 or IPv6 fragments each.

mod support;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use support::{
    PATHS, VethPair, big_notify, call_id, fragmenting_socket, genesys_notify, start_agent,
};

/// NOTIFYs per connection or address family.
const PER_FAMILY: u32 = 150;

fn agent_args<'a>(port: &'a str, path: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--iface",
        "veth1",
        "--port",
        port,
        "--stdout",
        "--no-bridge",
        "--spool",
        "off",
    ];
    args.extend_from_slice(path);
    args
}

/// How many times each Call-ID was printed.
fn printed(stdout: &str) -> BTreeMap<String, u32> {
    let mut seen = BTreeMap::new();
    for line in stdout.lines() {
        let value: serde_json::Value = serde_json::from_str(line).expect("JSON lines");
        let id = value["call_id"].as_str().expect("a call_id").to_owned();
        *seen.entry(id).or_default() += 1;
    }
    seen
}

fn assert_each_once(stdout: &str, sent: std::ops::Range<u32>, path: &str) {
    let seen = printed(stdout);
    let expected: BTreeMap<String, u32> = sent.map(|i| (call_id(i), 1)).collect();
    let missing = expected.keys().filter(|k| !seen.contains_key(*k)).count();
    let twice = seen.values().filter(|&&n| n > 1).count();
    assert_eq!(
        seen, expected,
        "{path}: {missing} missing, {twice} printed more than once"
    );
}

/// Sleeps until `deadline`, so the agent's 1 ms ring poll and the reassembly tick catch up.
fn settle(duration: Duration) {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
}

/// Piece sizes from 1 to 300 bytes, from a fixed-seed generator so a failure reproduces.
struct Pieces(u64);

impl Pieces {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        1 + (self.0 >> 33) as usize % 300
    }
}

/// The stream a client sends: NOTIFYs `first..first + PER_FAMILY`, each followed by an
/// OPTIONS with a body, which the agent must frame by its Content-Length and pass over.
fn stream(first: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in first..first + PER_FAMILY {
        let event = if i % 2 == 0 { "talk" } else { "hold" };
        bytes.extend_from_slice(&genesys_notify(i, "1002", event));
        let body = "NOTIFY sip:not-a-request SIP/2.0\r\n\r\n";
        bytes.extend_from_slice(
            format!(
                "OPTIONS sip:1002@10.200.0.2 SIP/2.0\r\nCall-ID: options-{i}\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    bytes
}

/// Writes `bytes` to `to` in pieces, pausing now and then so the pieces leave as segments of
/// their own rather than coalesced in the send buffer.
fn write_in_pieces(to: &str, bytes: &[u8], seed: u64) {
    let mut socket = TcpStream::connect(to).expect("connect to the SIP server");
    socket.set_nodelay(true).unwrap();
    let mut pieces = Pieces(seed);
    let mut at = 0;
    let mut n = 0;
    while at < bytes.len() {
        let end = (at + pieces.next()).min(bytes.len());
        socket.write_all(&bytes[at..end]).unwrap();
        at = end;
        n += 1;
        if n % 4 == 0 {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A SIP server that reads each connection to its end; returns the bytes each read.
fn serve(listener: TcpListener, connections: usize) -> thread::JoinHandle<Vec<usize>> {
    thread::spawn(move || {
        (0..connections)
            .map(|_| {
                let (mut socket, _) = listener.accept().expect("accept");
                let mut read = Vec::new();
                socket.read_to_end(&mut read).expect("read the stream");
                read.len()
            })
            .collect()
    })
}

#[test]
fn notifies_over_tcp_written_in_pieces_are_printed_once_on_every_path() {
    if !support::privileged("notifies_over_tcp_written_in_pieces_are_printed_once") {
        return;
    }
    for (n, (path, flags)) in PATHS.iter().enumerate() {
        let net = VethPair::new(&format!("tcp{n}"));
        let agent = start_agent(&net.receiver, &agent_args("5060", flags));
        let (v4, v6) = net.receiver.enter(|| {
            (
                TcpListener::bind("10.200.0.2:5060").unwrap(),
                TcpListener::bind("[fd00:200::2]:5060").unwrap(),
            )
        });
        let (server4, server6) = (serve(v4, 1), serve(v6, 1));
        let (stream4, stream6) = (stream(0), stream(PER_FAMILY));
        net.sender.enter(|| {
            thread::scope(|scope| {
                scope.spawn(|| write_in_pieces("10.200.0.2:5060", &stream4, 1));
                scope.spawn(|| write_in_pieces("[fd00:200::2]:5060", &stream6, 2));
            });
        });
        // Capture only observes: the server read every byte.
        assert_eq!(server4.join().unwrap(), [stream4.len()], "{path}");
        assert_eq!(server6.join().unwrap(), [stream6.len()], "{path}");
        settle(Duration::from_millis(500));
        let (stdout, log) = agent.stop_with_log();
        assert_each_once(&stdout, 0..2 * PER_FAMILY, path);
        let summary = log
            .iter()
            .find(|l| l.contains("reassembly finished"))
            .unwrap_or_else(|| panic!("{path}: no reassembly summary in {log:#?}"));
        assert!(
            summary.contains(&format!("over_tcp={}", 2 * PER_FAMILY)),
            "{path}: {summary}"
        );
        assert!(
            !log.iter().any(|l| l.contains("reassembly gave up")),
            "{path}: {log:#?}"
        );
    }
}

/// Waits until the sender has resolved the receiver's IPv4 and IPv6 addresses. Until then
/// the stack queues about a hundred frames per neighbour and drops the rest, and IPv6's first
/// neighbour solicitation in a fresh namespace may go unanswered for a retransmit second.
fn resolve_neighbours(net: &VethPair) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for (addr, target) in [
        ("10.200.0.2:9", "10.200.0.2"),
        ("[fd00:200::2]:9", "fd00:200::2"),
    ] {
        loop {
            net.sender.enter(|| {
                let bind = if addr.starts_with('[') {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                };
                let socket = UdpSocket::bind(bind).unwrap();
                let _ = socket.send_to(b"hello", addr);
            });
            let out = net
                .sender
                .command("ip")
                .args(["neigh", "show", target])
                .output()
                .expect("ip neigh");
            let state = String::from_utf8_lossy(&out.stdout).into_owned();
            if ["REACHABLE", "STALE", "DELAY", "PERMANENT"]
                .iter()
                .any(|s| state.contains(s))
            {
                break;
            }
            assert!(Instant::now() < deadline, "{target} unresolved: {state}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn notifies_split_into_ipv4_and_ipv6_fragments_are_printed_once_on_every_path() {
    if !support::privileged("notifies_split_into_ip_fragments_are_printed_once") {
        return;
    }
    for (n, (path, flags)) in PATHS.iter().enumerate() {
        let net = VethPair::new(&format!("frg{n}"));
        let agent = start_agent(&net.receiver, &agent_args("5061", flags));
        // The receiving stack reassembles every datagram too; read while they arrive.
        let receivers: Vec<_> = ["10.200.0.2:5061", "[fd00:200::2]:5061"]
            .map(|addr| {
                let socket = net.receiver.udp(addr);
                socket
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                thread::spawn(move || {
                    let mut buf = vec![0u8; 65_536];
                    let mut call_ids = Vec::new();
                    while let Ok(len) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                        let id = text.lines().find_map(|l| l.strip_prefix("Call-ID: "));
                        call_ids.push(id.expect("a Call-ID").to_owned());
                    }
                    call_ids
                })
            })
            .into();
        resolve_neighbours(&net);
        net.sender.enter(|| {
            let s4 = fragmenting_socket("10.200.0.1:0", false);
            let s6 = fragmenting_socket("[fd00:200::1]:0", true);
            for i in 0..PER_FAMILY {
                s4.send_to(&big_notify(i), "10.200.0.2:5061").unwrap();
                s6.send_to(&big_notify(PER_FAMILY + i), "[fd00:200::2]:5061")
                    .unwrap();
                // Six frames per turn: well inside veth's 256-frame XDP ring.
                thread::sleep(Duration::from_millis(1));
            }
        });
        // Capture only observes: the receiving stack got every datagram, whole.
        for (family, receiver) in ["IPv4", "IPv6"].into_iter().zip(receivers) {
            let ids = receiver.join().unwrap();
            assert_eq!(ids.len(), PER_FAMILY as usize, "{path}: {family}");
        }
        settle(Duration::from_millis(500));
        let stdout = agent.stop();
        assert_each_once(&stdout, 0..2 * PER_FAMILY, path);
    }
}
