//! Helpers shared by the privileged integration tests: the skip rule, and network namespaces
//! that are removed even when a test fails.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "a module of each test binary; each uses a different subset"
)]

/// Whether privileged tests can run here. When they cannot, prints why; under `CI=true` a
/// skip is a failure, because CI runs as root with the eBPF toolchain installed.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let reason = if unsafe { libc::geteuid() } != 0 {
        Some("not running as root")
    } else if sipnotify_agent::bpf::OBJECT.is_empty() {
        Some("the agent was built without the eBPF object (run `cargo xtask setup`)")
    } else {
        None
    };
    let Some(reason) = reason else {
        return true;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} cannot be skipped in CI: {reason}"
    );
    eprintln!("skipping {test}: {reason}");
    false
}

pub use sipnotify_testkit::*;

/// The agent binary with an empty config file and no `SIPNOTIFY_*` variables, so a test
/// sees only the flags it passes (and not /etc/sipnotify or the caller's environment).
/// Keep the returned file alive while the command runs.
pub fn isolated_agent() -> (std::process::Command, tempfile::NamedTempFile) {
    let config = tempfile::NamedTempFile::new().expect("a temporary config file");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sipnotify-agent"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SIPNOTIFY_") {
            command.env_remove(key);
        }
    }
    command.arg("--config").arg(config.path());
    (command, config)
}

/// The agent under test in `ns`, started with `args`.
pub fn start_agent(ns: &NetNs, args: &[&str]) -> Agent {
    Agent::start(env!("CARGO_BIN_EXE_sipnotify-agent"), ns, args)
}

/// The receiver's MAC, set by a test (`ip link set veth1 address`) so raw frames can be
/// addressed to it.
pub const RECEIVER_MAC: [u8; 6] = [2, 0, 0, 0, 2, 2];
/// [`RECEIVER_MAC`] as `ip` writes it.
pub const RECEIVER_MAC_TEXT: &str = "02:00:00:00:02:02";

/// An 802.1Q-tagged (VLAN 210) frame carrying `payload` to the receiver's :5061. Sent raw:
/// this kernel has no VLAN devices (CONFIG_VLAN_8021Q), so the tag cannot come from a
/// socket, and the receiving stack discards these frames after capture saw them.
pub fn tagged(v6: bool, payload: &[u8]) -> Vec<u8> {
    let eth = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], RECEIVER_MAC)
        .single_vlan(etherparse::VlanId::try_new(210).unwrap());
    let mut frame = Vec::new();
    if v6 {
        let mut src = [0u8; 16];
        src[..2].copy_from_slice(&[0xfd, 0]);
        src[15] = 1;
        let mut dst = src;
        dst[15] = 2;
        eth.ipv6(src, dst, 64)
            .udp(40000, 5061)
            .write(&mut frame, payload)
            .unwrap();
    } else {
        eth.ipv4([10, 200, 0, 1], [10, 200, 0, 2], 64)
            .udp(40000, 5061)
            .write(&mut frame, payload)
            .unwrap();
    }
    frame
}

/// Sends `frame` raw on the calling thread's `veth0`.
pub fn send_raw(frame: &[u8]) {
    // SAFETY: plain socket(2); checked, and closed at the end of this function.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: `fd` is ours.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is valid; family and index are set.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = sipnotify_agent::bpf::interface_index("veth0").unwrap() as i32;
    addr.sll_halen = 6;
    // SAFETY: `frame` and `addr` are valid for the call.
    let sent = unsafe {
        libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        sent,
        frame.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}

/// A UDP socket that lets the stack fragment, whatever the host's path-MTU default.
pub fn fragmenting_socket(bind: &str, v6: bool) -> std::net::UdpSocket {
    let socket = std::net::UdpSocket::bind(bind).unwrap();
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER)
    };
    // IP_PMTUDISC_DONT and IPV6_PMTUDISC_DONT are both 0.
    let dont: libc::c_int = 0;
    // SAFETY: a valid socket and a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            level,
            name,
            (&raw const dont).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    socket
}

/// The capture paths, by the flags that select them.
pub const PATHS: [(&str, &[&str]); 3] = [
    ("native XDP", &["--capture", "xdp", "--xdp-mode", "native"]),
    (
        "generic XDP",
        &["--capture", "xdp", "--xdp-mode", "generic"],
    ),
    ("AF_PACKET", &["--capture", "af-packet"]),
];

/// A NOTIFY for `i` with a 3 000-byte body: larger than the 1 500-byte MTU of the veth pair.
pub fn big_notify(i: u32) -> Vec<u8> {
    let message = String::from_utf8(sipnotify_testkit::genesys_notify(i, "1002", "talk")).unwrap();
    let body = "x".repeat(3000);
    let mut big = message.replace(
        "Content-Length: 0",
        &format!("Content-Length: {}", body.len()),
    );
    big.push_str(&body);
    big.into_bytes()
}
