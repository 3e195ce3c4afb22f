//! Who may send, and what the agent holds, live over a veth pair on each capture path (native
//! XDP, generic XDP, AF_PACKET), with the bridge stand-in and the spool:
//!
//! - `--sip-source` names the SIP Server (10.200.0.1, fd00:200::1); a host next to it
//!   (10.200.0.66, fd00:200::66) sends the same NOTIFYs over UDP, IPv6, TCP and in IP
//!   fragments. Only the SIP Server's reach the bridge; the others are counted as
//!   `source_not_allowed` and summarised in the log.
//! - Once attached, the agent holds no capability (`CapEff` 0 in `/proc/PID/status`, every
//!   thread), and capture, delivery, the spool and a clean shutdown (which detaches the
//!   program) still work.

mod support;

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::FromRawFd as _,
    thread,
    time::Duration,
};

use sipnotify_testkit::{BridgeOptions, NamespacedBridge};
use support::{
    PATHS, VethPair, big_notify, call_id, fragmenting_socket, genesys_notify, start_agent,
};

/// A TCP connection from `from` (an address of this namespace) to `to`: std cannot bind a
/// client socket before connecting.
fn tcp_from(from: &str, to: &str) -> TcpStream {
    let (from, to): (SocketAddr, SocketAddr) = (from.parse().unwrap(), to.parse().unwrap());
    let socket = TcpListener::bind(from).expect("bind a port");
    let local = socket.local_addr().unwrap();
    drop(socket);
    let family = if from.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket calls on a descriptor owned by the TcpStream made from it.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let bind = socket2_addr(local);
        assert_eq!(
            libc::bind(fd, bind.0.as_ptr().cast(), bind.1),
            0,
            "bind {local}: {}",
            std::io::Error::last_os_error()
        );
        let peer = socket2_addr(to);
        assert_eq!(
            libc::connect(fd, peer.0.as_ptr().cast(), peer.1),
            0,
            "connect {to}: {}",
            std::io::Error::last_os_error()
        );
        stream
    }
}

/// `addr` as a `sockaddr` in a buffer, with its length.
fn socket2_addr(addr: SocketAddr) -> ([u8; 28], libc::socklen_t) {
    let mut buf = [0u8; 28];
    match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in is 16 bytes, inside the 28-byte buffer.
            unsafe {
                buf.as_mut_ptr()
                    .cast::<libc::sockaddr_in>()
                    .write_unaligned(sin)
            };
            (buf, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 is 28 bytes, the buffer's size.
            unsafe {
                buf.as_mut_ptr()
                    .cast::<libc::sockaddr_in6>()
                    .write_unaligned(sin6)
            };
            (buf, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

/// Sends NOTIFY `first` over UDP from `v4`, `first + 1` over IPv6 from `v6`, `first + 2`
/// over TCP from `v4` and `first + 3` in IPv4 fragments from `v4`.
fn send_all_forms(net: &VethPair, first: u32, v4: &str, v6: &str) {
    let listener = net
        .receiver
        .enter(|| TcpListener::bind("10.200.0.2:5061").unwrap());
    let server = thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("accept");
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut socket, &mut read).expect("read");
    });
    net.sender.enter(|| {
        let udp = UdpSocket::bind(format!("{v4}:0")).unwrap();
        udp.send_to(&genesys_notify(first, "1002", "talk"), "10.200.0.2:5061")
            .unwrap();
        let udp6 = UdpSocket::bind(format!("[{v6}]:0")).unwrap();
        udp6.send_to(
            &genesys_notify(first + 1, "1002", "talk"),
            "[fd00:200::2]:5061",
        )
        .unwrap();
        let mut tcp = tcp_from(&format!("{v4}:0"), "10.200.0.2:5061");
        tcp.write_all(&genesys_notify(first + 2, "1002", "talk"))
            .unwrap();
        drop(tcp);
        let fragments = fragmenting_socket(&format!("{v4}:0"), false);
        fragments
            .send_to(&big_notify(first + 3), "10.200.0.2:5061")
            .unwrap();
    });
    server.join().unwrap();
}

/// `CapEff` of every thread of `pid`.
fn thread_cap_eff(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
            sipnotify_agent::caps::parse_cap_eff(&status).expect("a CapEff line")
        })
        .collect()
}

#[test]
fn only_the_sip_server_is_delivered_and_the_agent_holds_no_capability() {
    if !support::privileged("only_the_sip_server_is_delivered") {
        return;
    }
    for (n, (path, flags)) in PATHS.iter().enumerate() {
        let net = VethPair::new(&format!("trust{n}"));
        net.sender
            .ip(&["addr", "add", "10.200.0.66/24", "dev", "veth0"]);
        net.sender.ip(&[
            "-6",
            "addr",
            "add",
            "fd00:200::66/64",
            "dev",
            "veth0",
            "nodad",
        ]);
        let bridge = NamespacedBridge::start(&net.receiver, BridgeOptions::default(), "bridge");
        let mut args = vec!["run", "--iface", "veth1", "--spool", "on"];
        args.extend(bridge.agent_args());
        args.extend([
            "--sip-source",
            "10.200.0.1",
            "--sip-source",
            "fd00:200::1/128",
        ]);
        args.extend_from_slice(flags);
        let mut agent = start_agent(&net.receiver, &args);
        let caps = agent.log_line("capabilities at start");
        assert!(caps.contains("XDP can load and attach"), "{path}: {caps}");
        agent.log_line("all capabilities dropped");
        let held = thread_cap_eff(agent.pid());
        assert!(held.iter().all(|&eff| eff == 0), "{path}: CapEff {held:x?}");

        // Warm the neighbour caches so no frame is queued behind resolution.
        send_all_forms(&net, 100, "10.200.0.66", "fd00:200::66");
        send_all_forms(&net, 0, "10.200.0.1", "fd00:200::1");
        assert!(
            bridge.wait_for(4, Duration::from_secs(10)),
            "{path}: the SIP Server's four NOTIFYs did not arrive"
        );
        thread::sleep(Duration::from_millis(500));
        let (_, log) = agent.stop_with_log();
        let mut delivered: Vec<String> = bridge
            .bridge
            .received()
            .iter()
            .map(|r| r.object["call_id"].as_str().unwrap().to_owned())
            .collect();
        delivered.sort();
        let mut expected: Vec<String> = (0..4).map(call_id).collect();
        expected.sort();
        assert_eq!(delivered, expected, "{path}: {log:#?}");
        let refused = log
            .iter()
            .find(|l| l.contains("sources outside sip_source"))
            .unwrap_or_else(|| panic!("{path}: no refusal summary in {log:#?}"));
        // UDP, IPv6 and the first fragment, plus TCP's SYN, data and FIN segments.
        assert!(refused.contains("refused="), "{path}: {refused}");
        // Shutdown detached the program: the interface has no XDP program left.
        let link = net
            .receiver
            .command("ip")
            .args(["link", "show", "veth1"])
            .output()
            .unwrap();
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(!link.contains("prog/xdp"), "{path}: {link}");
    }
}

/// HEP from outside `--hep-source` is refused whatever it carries, and HEP from inside it
/// carrying SIP from outside `--sip-source` too; each is counted by its outcome and nothing
/// is delivered, while the PBX's own feed of the SIP Server's NOTIFY is.
#[test]
fn hep_from_outside_hep_source_or_carrying_sip_from_outside_sip_source_is_refused() {
    use sipnotify_agent::hep::decode::build;
    if !support::privileged("hep_sources") {
        return;
    }
    let ns = support::NetNs::new("heps");
    let mut agent = start_agent(
        &ns,
        &[
            "run",
            "--hep-listen",
            "127.0.0.1:9060",
            "--hep-source",
            "127.0.0.1",
            "--sip-source",
            "192.0.2.1",
            "--stdout",
            "--spool",
            "off",
            "--metrics-listen",
            "127.0.0.1:9464",
        ],
    );
    // HEP alone needs no capability: the agent says so and holds none.
    let caps = agent.log_line("capabilities at start");
    assert!(caps.contains("CapEff"), "{caps}");
    let dst = "192.0.2.2:5061".parse().unwrap();
    let packet = |i: u32, src: &str| {
        build::V3::sip(
            src.parse().unwrap(),
            dst,
            &genesys_notify(i, "1002", "talk"),
        )
        .encode()
    };
    ns.enter(|| {
        // From 127.0.0.2: outside --hep-source, even with the SIP Server inside.
        let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
        stranger
            .send_to(&packet(1, "192.0.2.1:5060"), "127.0.0.1:9060")
            .unwrap();
        let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // The PBX mirrors SIP from a host outside --sip-source.
        pbx.send_to(&packet(2, "198.51.100.7:5060"), "127.0.0.1:9060")
            .unwrap();
        pbx.send_to(&packet(3, "192.0.2.1:5060"), "127.0.0.1:9060")
            .unwrap();
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let counts = loop {
        let (_, body) = ns.http_get("127.0.0.1:9464", "/metrics");
        let count = |label: &str| {
            support::metric(&body, "sipnotify_hep_packets_total", &[("outcome", label)])
                .unwrap_or(0.0)
        };
        let counts = (
            count("source_not_allowed"),
            count("inner_source_not_allowed"),
            count("sip"),
        );
        if counts == (1.0, 1.0, 1.0) || std::time::Instant::now() > deadline {
            break counts;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(counts, (1.0, 1.0, 1.0));
    let (stdout, log) = agent.stop_with_log();
    let delivered: Vec<&str> = stdout.lines().collect();
    assert_eq!(delivered.len(), 1, "{stdout}");
    assert!(delivered[0].contains(&call_id(3)), "{stdout}");
    assert!(
        log.iter().any(|l| l.contains("hep packets were refused")),
        "{log:#?}"
    );
}
